//! broker/redis/presence.rs: which sockets live where. Presence keys per connection and per
//! user, the node registry, parked sessions, written in pipelined batches by one task and
//! refreshed on a node-wide tick; and the cluster-wide reads of them. Channel presence
//! (`channel_presence.rs`) rides on the same batches and tick.

use super::*;
use crate::presence::Tracker;

/// A connection's presence value (`<prefix>presence:conn:<id>`), as read back (written by
/// `presence_json`).
#[derive(Debug, Deserialize)]
pub(super) struct PresenceValue {
    pub(super) user_id: String,
    pub(super) node: String,
    pub(super) connected_at: u64,
    pub(super) channels: Vec<String>,
}

/// The same value as written: borrowed from the connection, so the refresh of every socket's
/// presence copies no field into a `String` of its own before the JSON.
#[derive(Serialize)]
struct PresenceValueOut<'a> {
    user_id: &'a str,
    node: &'a str,
    connected_at: u64,
    channels: Names<'a>,
}

/// Channel names serialized as a JSON array of strings.
struct Names<'a>(&'a [Arc<str>]);

impl Serialize for Names<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|c| &**c))
    }
}

/// `c`'s presence value, JSON.
fn presence_json(c: &Connection, node: &str) -> Vec<u8> {
    c.with_channels(|channels| {
        serde_json::to_vec(&PresenceValueOut {
            user_id: &c.user_id,
            node,
            connected_at: c.connected_at_ms,
            channels: Names(channels),
        })
    })
    .unwrap_or_default()
}

pub(super) enum PresenceCmd {
    /// A socket connected or changed its subscriptions; with its presence-tracked channels as
    /// they were then (each listened to already: see `Tracker::update_to`).
    Connected(Arc<Connection>, Vec<Arc<str>>),
    Disconnected {
        /// The socket's hub key (an id can pass to a newer socket; a key cannot).
        key: u64,
        id: Arc<str>,
        user_id: Arc<str>,
        topics: Vec<String>,
        park: bool,
    },
    Leave(oneshot::Sender<()>),
}

#[derive(Debug, Serialize, Deserialize)]
/// A closed connection's identity and topics, parked for a resume (`<prefix>session:<id>`).
pub(super) struct ParkedValue {
    pub(super) user_id: String,
    pub(super) topics: Vec<String>,
}

impl Inner {
    /// Applies queued presence changes in one pipeline, and refreshes every local socket's
    /// keys plus the node registry on a node-wide tick.
    pub(super) async fn presence_worker(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<PresenceCmd>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let refresh = Duration::from_millis((self.s.presence_ttl_ms / 3).max(50));
        // Sockets whose presence was written since they connected, and when first. At most one
        // presence write per socket per tick, however often it subscribes: the first at once
        // (the welcome), every later change rides on the node-wide refresh, which writes each
        // socket's current topics well within the key's TTL (3 ticks).
        // By hub key, `mono_ms` values: 16 bytes a slot, for every socket of the node.
        let mut written: HashMap<u64, u64> = HashMap::new();
        // This node's members of presence-tracked channels (`channel_presence.rs`).
        let mut tracker = Tracker::new(self.s.presence_channels.clone());
        let mut tick = tokio::time::interval(refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { return };
                    let mut batch = vec![cmd];
                    while batch.len() < 1000 {
                        match rx.try_recv() {
                            Ok(c) => batch.push(c),
                            Err(_) => break,
                        }
                    }
                    let mut leave = None;
                    let mut pipe = redis::pipe();
                    let mut changes = Vec::new();
                    for cmd in batch {
                        match cmd {
                            PresenceCmd::Connected(c, channels) => {
                                changes.extend(tracker.update_to(&c, &channels));
                                if let std::collections::hash_map::Entry::Vacant(e) = written.entry(c.key()) {
                                    e.insert(mono_ms());
                                    self.add_presence(&mut pipe, &c);
                                }
                            }
                            PresenceCmd::Disconnected { key, id, user_id, topics, park } => {
                                written.remove(&key);
                                changes.extend(tracker.remove(&id));
                                // Parked before the presence goes: `resume` relies on that order.
                                if park && self.s.session_ttl_ms > 0 {
                                    let v = serde_json::to_string(&ParkedValue { user_id: user_id.to_string(), topics }).unwrap_or_default();
                                    pipe.cmd("SET").arg(self.keys.session(&id)).arg(v).arg("PX").arg(self.s.session_ttl_ms).ignore();
                                }
                                pipe.cmd("DEL").arg(self.keys.presence_conn(&id)).ignore();
                                pipe.cmd("ZREM").arg(self.keys.presence_user(&user_id)).arg(&*id).ignore();
                            }
                            PresenceCmd::Leave(tx) => {
                                changes.extend(tracker.remove_all());
                                leave = Some(tx);
                            }
                        }
                    }
                    let apart = self.channel_changes(&mut pipe, &changes);
                    self.run_pipe(pipe).await;
                    self.send_frames(apart).await;
                    if let Some(tx) = leave {
                        self.leave().await;
                        let _ = tx.send(());
                        return;
                    }
                }
                _ = tick.tick() => {
                    self.refresh_all(&mut written, refresh).await;
                    self.refresh_channels(&mut tracker).await;
                }
                // The gateway sends `Leave` (via `shutdown()`) before this fires; stopping here
                // also covers a gateway dropped without a clean leave.
                _ = shutdown.changed() => return,
            }
        }
    }

    pub(super) fn add_presence(&self, pipe: &mut redis::Pipeline, c: &Connection) {
        let ttl = self.s.presence_ttl_ms;
        let v = presence_json(c, &self.s.node_id);
        let user_key = self.keys.presence_user(&c.user_id);
        pipe.cmd("SET")
            .arg(self.keys.presence_conn(&c.id))
            .arg(v)
            .arg("PX")
            .arg(ttl)
            .ignore();
        pipe.cmd("ZADD")
            .arg(&user_key)
            .arg(self.redis_now_ms() + ttl)
            .arg(&*c.id)
            .ignore();
        pipe.cmd("PEXPIRE").arg(&user_key).arg(ttl).ignore();
    }

    pub(super) async fn run_pipe(&self, pipe: redis::Pipeline) {
        if pipe.is_empty() {
            // A batch that changed nothing (a socket's presence already written this tick): the
            // redis crate refuses an empty pipeline, and that is no broker error.
            return;
        }
        let r = timed(self.s.op_timeout * 2, async {
            let mut c = self.conn().await?;
            let _: () = pipe.query_async(&mut c).await.map_err(unavailable)?;
            Ok(())
        })
        .await;
        if let Err(e) = r {
            self.metrics.broker_errors.with_label_values(&["presence"]).inc();
            debug!(error = %e, "presence update failed");
        }
    }

    /// Rewrites every local socket's presence (except those first written less than a tick
    /// ago) and the node registry.
    pub(super) async fn refresh_all(&self, written: &mut HashMap<u64, u64>, tick: Duration) {
        self.measure_redis_clock().await;
        let ttl = self.s.presence_ttl_ms;
        let conns = self.hub.connections();
        let live: HashSet<u64> = conns.iter().map(|c| c.key()).collect();
        written.retain(|key, _| live.contains(key));
        let now = mono_ms();
        let tick_ms = tick.as_millis() as u64;
        let due: Vec<&Arc<Connection>> = conns
            .iter()
            .filter(|c| {
                written
                    .get(&c.key())
                    .is_none_or(|at| now.saturating_sub(*at) >= tick_ms)
            })
            .collect();
        for chunk in due.chunks(500) {
            let mut pipe = redis::pipe();
            for c in chunk {
                self.add_presence(&mut pipe, c);
            }
            self.run_pipe(pipe).await;
        }
        let stats = self.hub.stats();
        let mut pipe = redis::pipe();
        let node_key = self.keys.node(&self.s.node_id);
        pipe.cmd("ZADD")
            .arg(self.keys.nodes())
            .arg(self.redis_now_ms() + ttl)
            .arg(&self.s.node_id)
            .ignore();
        pipe.cmd("HSET")
            .arg(&node_key)
            .arg("connections")
            .arg(stats.connections)
            .arg("subscriptions")
            .arg(stats.channels)
            .arg("started_at")
            .arg(self.started_at_ms)
            .arg("version")
            .arg(env!("CARGO_PKG_VERSION"))
            .ignore();
        pipe.cmd("PEXPIRE").arg(&node_key).arg(ttl).ignore();
        // The shared set dies with the last node too.
        pipe.cmd("PEXPIRE").arg(self.keys.nodes()).arg(ttl).ignore();
        // After a FLUSHALL the epoch comes back past every id issued before (epoch_cmd), so
        // older ids replay as not recovered. A cluster's epochs are per shard, each in its
        // shard's slot: one command each, the shards at once.
        if !self.keys.cluster {
            pipe.add_command(self.record_epoch(None)).ignore();
        }
        self.run_pipe(pipe).await;
        if self.keys.cluster {
            let epochs = (0..wsgw_protocol::ID_SHARDS).map(|s| {
                let mut pipe = redis::pipe();
                pipe.add_command(self.record_epoch(Some(s))).ignore();
                self.run_pipe(pipe)
            });
            futures_util::future::join_all(epochs).await;
        }
    }

    pub(super) async fn leave(&self) {
        let mut pipe = redis::pipe();
        for c in self.hub.connections() {
            pipe.cmd("DEL").arg(self.keys.presence_conn(&c.id)).ignore();
            pipe.cmd("ZREM")
                .arg(self.keys.presence_user(&c.user_id))
                .arg(&*c.id)
                .ignore();
        }
        pipe.cmd("ZREM").arg(self.keys.nodes()).arg(&self.s.node_id).ignore();
        pipe.cmd("DEL").arg(self.keys.node(&self.s.node_id)).ignore();
        self.run_pipe(pipe).await;
    }

    pub(super) async fn presence(&self, user_id: &str) -> Result<Vec<PresenceEntry>, BrokerError> {
        let inner = self;
        timed(inner.s.op_timeout, async move {
            let mut c = inner.conn().await?;
            let ids = live_members(&mut c, &inner.keys.presence_user(user_id), inner.redis_now_ms()).await?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let keys: Vec<String> = ids.iter().map(|id| inner.keys.presence_conn(id)).collect();
            let values: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            Ok(ids
                .into_iter()
                .zip(values)
                .filter_map(|(id, v)| {
                    let v: PresenceValue = serde_json::from_str(&v?).ok()?;
                    Some(PresenceEntry {
                        connection_id: id,
                        node: v.node,
                        connected_at: v.connected_at,
                    })
                })
                .collect())
        })
        .await
    }

    pub(super) async fn cluster(&self) -> Result<ClusterStats, BrokerError> {
        let inner = self;
        timed(inner.s.op_timeout, async move {
            let mut c = inner.conn().await?;
            let ids = live_members(&mut c, &inner.keys.nodes(), inner.redis_now_ms()).await?;
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.cmd("HGET").arg(inner.keys.node(id)).arg("connections");
            }
            let counts: Vec<Option<usize>> = if ids.is_empty() {
                Vec::new()
            } else {
                pipe.query_async(&mut c).await.map_err(unavailable)?
            };
            let mut node_ids: Vec<String> = ids;
            // This node counts itself live even before its first registry refresh lands.
            let mut connections: usize = counts.into_iter().flatten().sum();
            if !node_ids.contains(&inner.s.node_id) {
                node_ids.push(inner.s.node_id.clone());
                connections += inner.hub.connection_count();
            }
            let set: HashSet<&String> = node_ids.iter().collect();
            Ok(ClusterStats {
                nodes: set.len(),
                connections,
                node_ids,
            })
        })
        .await
    }
}

/// The members of a sorted set scored by expiry time (ms, Redis's clock) that have not expired
/// at `now`, after removing the expired ones (the per-user index, the node registry).
async fn live_members(c: &mut super::cluster_link::Conn, key: &str, now: u64) -> Result<Vec<String>, BrokerError> {
    let (ids,): (Vec<String>,) = redis::pipe()
        .cmd("ZREMRANGEBYSCORE")
        .arg(key)
        .arg("-inf")
        .arg(now)
        .ignore()
        .cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(c)
        .await
        .map_err(unavailable)?;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn presence_value_is_the_connections_fields_and_channels() {
        let hub = Hub::new("n".into(), Metrics::new());
        let c = hub.register(Connection::new(Arc::from("c1"), Arc::from("u\"1"), 10, &[]));
        hub.subscribe(&c, "room:1");
        hub.subscribe(&c, "user:*");
        let json = presence_json(&c, "gw-1");
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "user_id": "u\"1",
                "node": "gw-1",
                "connected_at": c.connected_at_ms,
                "channels": ["room:1", "user:*"],
            })
        );
        let back: PresenceValue = serde_json::from_slice(&json).unwrap();
        assert_eq!((back.user_id.as_str(), back.node.as_str()), ("u\"1", "gw-1"));
        assert_eq!(back.connected_at, c.connected_at_ms);
        assert_eq!(back.channels, ["room:1", "user:*"]);
    }
}
