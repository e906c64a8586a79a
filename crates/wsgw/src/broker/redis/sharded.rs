//! broker/redis/sharded.rs: a node on a Redis Cluster (docs/scaling.md). Channels live in 16
//! id-shards, each one hash slot (`{s}`) with its own sequence, history and sharded pub/sub
//! channels. The node `SSUBSCRIBE`s to the channels its sockets follow, on the cluster
//! connection, which routes each shard's subscriptions to the primary that holds the shard. So
//! each shard's events reach the hub in that shard's id order, the hub keeps one floor per
//! shard, and everything the single-primary broker does with one position it does per shard
//! here: the `sync` marker (published into the shard it syncs), the watermark, and the repair.
//!
//! A shard is interrupted when the node may have missed some of its messages: the cluster
//! connection lost a node connection (which node is not said, so every shard), Redis
//! unsubscribed a channel of it (its slot moved), or its canary stopped coming back. Its live
//! messages are then held while the shard is resubscribed and repaired from its history up to a
//! snapshot, and released after. When the shard's primary changed meanwhile (a failover or a
//! slot migration) nothing proves the new one holds every event the old one acknowledged: its
//! sockets get a `gap`, and the shard's epoch is raised so later replays from before say
//! `recovered:false`.

use std::collections::VecDeque;

use redis::{PushInfo, PushKind, Value};
use wsgw_protocol::ID_SHARDS;

use super::cluster_functions::PrimaryOutcome;
use super::*;

const SHARDS: usize = ID_SHARDS as usize;

/// Messages one interrupted shard may hold while it is repaired; past that they are dropped
/// and the shard is repaired again, from history, once this repair ends.
const MAX_HELD: usize = 100_000;

/// Per shard: what the node has of it.
#[derive(Debug, Default)]
pub(super) struct ShardMarks {
    /// Highest durable id received (or repaired up to), in the shard's sequence.
    pub(super) seen: [Option<EventId>; SHARDS],
    /// Node id of the shard's primary when the node last had the shard whole.
    pub(super) owner: [Option<String>; SHARDS],
}

/// The subscriber loop's view of one shard.
#[derive(Default)]
struct Shard {
    /// Channels subscribed (gateway names).
    listening: HashSet<Arc<str>>,
    /// Some while the shard is being repaired: its messages, in arrival order.
    held: Option<VecDeque<PushInfo>>,
    /// Repair again once this one ends (messages were dropped, or another interruption).
    again: bool,
    /// When its canary (or any marker) last came back.
    last_marker: Option<tokio::time::Instant>,
}

/// The shard a sharded channel name (`<prefix>{s}…`) is in, and the rest of the name.
fn split_shard<'a>(prefix: &str, name: &'a str) -> Option<(u16, &'a str)> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('{')?;
    let (tag, rest) = rest.split_once('}')?;
    let canonical = (1..=2).contains(&tag.len())
        && tag.bytes().all(|b| b.is_ascii_digit())
        && (tag == "0" || !tag.starts_with('0'));
    let shard: u16 = if canonical { tag.parse().ok()? } else { return None };
    (shard < ID_SHARDS).then_some((shard, rest))
}

fn text(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

impl Keys {
    /// The node's marker channel in `shard`: `sync` and canary markers travel through the
    /// shard's primary, behind the shard's events.
    pub(super) fn shard_marker(&self, shard: u16, node: &str) -> String {
        format!("{}control:{node}", self.shard_prefix(Some(shard)))
    }
}

impl Inner {
    fn cluster_conn(&self) -> Result<redis::cluster_async::ClusterConnection, BrokerError> {
        self.cluster
            .as_ref()
            .map(|c| c.conn.clone())
            .ok_or_else(|| BrokerError::Internal("not in Redis Cluster mode".into()))
    }

    /// Loads the Function on every primary, and per shard records the epoch and history
    /// defaults, the newest id issued (repairs start after it) and the shard's primary.
    pub(super) async fn prepare_cluster(&self) -> Result<(), BrokerError> {
        let RedisTarget::Cluster(seeds) = &self.s.target else {
            return Err(BrokerError::Internal("not in Redis Cluster mode".into()));
        };
        let reports = sync_functions(seeds, &self.s.tls, self.s.op_timeout).await?;
        if let Some(r) = reports.iter().find(|r| matches!(r.outcome, PrimaryOutcome::Failed(_))) {
            return Err(unavailable(format!(
                "the wsgw Function could not be loaded on {}: {:?}",
                r.addr, r.outcome
            )));
        }
        let mut c = self.conn().await?;
        for s in 0..ID_SHARDS {
            let shard = Some(s);
            let seq: Option<String> = timed(self.s.op_timeout * 3, async {
                redis::pipe()
                    .cmd("SET")
                    .arg(self.keys.epoch(shard))
                    .arg(now_ms())
                    .arg("NX")
                    .ignore()
                    .cmd("HSET")
                    .arg(self.keys.config(shard))
                    .arg("history_ttl_ms")
                    .arg(self.s.history.ttl_ms)
                    .arg("history_size")
                    .arg(self.s.history.size)
                    .ignore()
                    .cmd("GET")
                    .arg(self.keys.seq(shard))
                    .query_async::<(Option<String>,)>(&mut c)
                    .await
                    .map(|(s,)| s)
                    .map_err(unavailable)
            })
            .await?;
            let owner = self.owner_of(s).await?;
            let mut marks = self.shards.lock();
            if marks.seen[s as usize].is_none() {
                marks.seen[s as usize] = seq.and_then(|v| v.parse::<EventId>().ok()).map(|id| id.in_shard(shard));
            }
            marks.owner[s as usize].get_or_insert(owner);
        }
        Ok(())
    }

    async fn owner_of(&self, shard: u16) -> Result<String, BrokerError> {
        let mut conn = self.cluster_conn()?;
        let key = self.keys.seq(Some(shard));
        timed(self.s.op_timeout * PATIENT, cluster_link::owner_of(&mut conn, &key)).await
    }

    /// `wsgw functions --watch` inside the node: a primary that joins later gets the Function
    /// within about 10 s of getting slots.
    pub(super) async fn watch_functions(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let RedisTarget::Cluster(seeds) = &self.s.target else {
            return;
        };
        let mut every = tokio::time::interval(Duration::from_secs(10));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = every.tick() => {}
            }
            match sync_functions(seeds, &self.s.tls, self.s.op_timeout).await {
                Ok(reports) => {
                    for r in reports.iter().filter(|r| r.outcome != PrimaryOutcome::Present) {
                        info!(primary = %r.addr, outcome = ?r.outcome, "wsgw Function on a cluster primary");
                    }
                }
                Err(e) => warn!(error = %e, "could not list the cluster's primaries"),
            }
        }
    }

    /// The snapshot of each shard in `shards`: its newest id, once every event up to it on
    /// this node's channels of that shard has reached the hub (its marker came back behind them).
    pub(super) async fn sync_shards(&self, shards: &[u16]) -> Result<Vec<EventId>, BrokerError> {
        if !self.ready.load(Ordering::Acquire) {
            return Err(unavailable("redis cluster pub/sub is not connected"));
        }
        let each = shards.iter().map(|&s| self.sync_shard(s));
        futures_util::future::try_join_all(each).await
    }

    async fn sync_shard(&self, shard: u16) -> Result<EventId, BrokerError> {
        let n = self.next_sync.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.syncs.lock().insert(n, tx);
        let patient = self.s.op_timeout * PATIENT;
        let r = async {
            // Both keys carry the shard's tag: one slot, one primary, in this order.
            let seq: Option<String> = timed(patient, async {
                let mut c = self.conn().await?;
                let (seq, _): (Option<String>, i64) = redis::pipe()
                    .cmd("GET")
                    .arg(self.keys.seq(Some(shard)))
                    .cmd("SPUBLISH")
                    .arg(self.keys.shard_marker(shard, &self.s.node_id))
                    .arg(format!("sync:{n}"))
                    .query_async(&mut c)
                    .await
                    .map_err(unavailable)?;
                Ok(seq)
            })
            .await?;
            match tokio::time::timeout(patient, rx).await {
                Ok(Ok(())) => Ok(seq
                    .and_then(|v| v.parse::<EventId>().ok())
                    .unwrap_or_default()
                    .in_shard(Some(shard))),
                _ => Err(unavailable("redis cluster pub/sub did not catch up in time")),
            }
        }
        .await;
        self.syncs.lock().remove(&n);
        r
    }

    /// `SSUBSCRIBE` to `channels` (all of one shard: one slot), in chunks.
    async fn ssubscribe(&self, names: &[String]) -> Result<(), BrokerError> {
        let mut conn = self.cluster_conn()?;
        for chunk in names.chunks(512) {
            timed(self.s.op_timeout * 2, async {
                conn.ssubscribe(chunk).await.map_err(unavailable)
            })
            .await?;
        }
        Ok(())
    }

    /// The subscriber loop of a cluster node (see the module doc).
    pub(super) async fn sharded_subscriber(
        self: Arc<Self>,
        mut cmds: mpsc::UnboundedReceiver<SubCmd>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let Some(mut pushes) = self.cluster.as_ref().and_then(|c| c.pushes.lock().take()) else {
            return;
        };
        let mut shards: Vec<Shard> = (0..SHARDS).map(|_| Shard::default()).collect();
        // Control messages (kicks) on plain pub/sub, which a cluster forwards to every node;
        // the node's marker channel in every shard.
        loop {
            let r = async {
                let mut conn = self.cluster_conn()?;
                timed(self.s.op_timeout * 2, async {
                    conn.subscribe(self.keys.control()).await.map_err(unavailable)
                })
                .await?;
                for s in 0..ID_SHARDS {
                    self.ssubscribe(&[self.keys.shard_marker(s, &self.s.node_id)]).await?;
                }
                Ok::<(), BrokerError>(())
            }
            .await;
            match r {
                Ok(()) => break,
                Err(e) => {
                    warn!(error = %e, "redis cluster subscriptions failed; retrying");
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
        let now = tokio::time::Instant::now();
        for sh in shards.iter_mut() {
            sh.last_marker = Some(now);
        }
        self.ready.store(true, Ordering::Release);
        self.metrics.redis_up.set(1);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(u16, Result<(), BrokerError>)>();
        let canary_every = Duration::from_millis(self.s.canary_interval_ms.max(10));
        let mut canary_tick = tokio::time::interval(canary_every);
        canary_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                push = pushes.recv() => {
                    let Some(push) = push else { return };
                    self.on_push(push, &mut shards, &done_tx);
                }
                cmd = cmds.recv() => match cmd {
                    None => return,
                    Some(SubCmd::Listen(channels, tx)) => {
                        let r = self.listen_sharded(channels, &mut shards).await;
                        let _ = tx.send(r);
                    }
                    Some(SubCmd::Unlisten(channels)) => self.unlisten_sharded(channels, &mut shards).await,
                    Some(SubCmd::Reconnect) => {}
                },
                done = done_rx.recv() => {
                    let Some((s, r)) = done else { return };
                    self.repair_done(s, r, &mut shards, &done_tx);
                }
                _ = canary_tick.tick() => {
                    let late = canary_every * 3 + self.s.op_timeout;
                    for s in 0..ID_SHARDS {
                        let sh = &mut shards[s as usize];
                        if sh.held.is_none() && sh.last_marker.is_some_and(|t| t.elapsed() > late) {
                            warn!(shard = s, "canary missing on the shard's pub/sub: repairing it");
                            self.start_repair(s, &mut shards, &done_tx);
                        }
                    }
                    let me = self.clone();
                    tokio::spawn(async move {
                        for s in 0..ID_SHARDS {
                            let r = timed(me.s.op_timeout, async {
                                let mut c = me.conn().await?;
                                let _: i64 = redis::cmd("SPUBLISH")
                                    .arg(me.keys.shard_marker(s, &me.s.node_id))
                                    .arg("canary")
                                    .query_async(&mut c)
                                    .await
                                    .map_err(unavailable)?;
                                Ok(())
                            })
                            .await;
                            if let Err(e) = r {
                                debug!(shard = s, error = %e, "canary publish failed");
                            }
                        }
                    });
                }
            }
        }
    }

    fn on_push(
        self: &Arc<Self>,
        push: PushInfo,
        shards: &mut [Shard],
        done: &mpsc::UnboundedSender<(u16, Result<(), BrokerError>)>,
    ) {
        match push.kind {
            PushKind::Disconnection => {
                // Which node's connection went is not said: every shard may have missed messages.
                warn!("redis cluster connection lost a node: repairing every shard");
                self.metrics.redis_reconnects.inc();
                for s in 0..ID_SHARDS {
                    self.start_repair(s, shards, done);
                }
            }
            PushKind::Message => {
                if push.data.first().and_then(text) == Some(self.keys.control().as_bytes())
                    && let Some(payload) = push.data.get(1).and_then(text)
                {
                    self.on_control(payload);
                }
            }
            PushKind::SMessage | PushKind::SUnsubscribe => {
                let Some(name) = push
                    .data
                    .first()
                    .and_then(text)
                    .and_then(|n| std::str::from_utf8(n).ok())
                else {
                    return;
                };
                let Some((s, channel)) = split_shard(&self.keys.prefix, name) else {
                    return;
                };
                if push.kind == PushKind::SUnsubscribe {
                    // Redis unsubscribes a slot's channels when the slot moves: not ours to lose.
                    let ours = shards[s as usize].listening.contains(channel)
                        || name == self.keys.shard_marker(s, &self.s.node_id);
                    if ours {
                        warn!(
                            shard = s,
                            "redis unsubscribed a channel (its slot moved): repairing the shard"
                        );
                        self.start_repair(s, shards, done);
                    }
                    return;
                }
                let sh = &mut shards[s as usize];
                if let Some(held) = sh.held.as_mut() {
                    if held.len() < MAX_HELD {
                        held.push_back(push);
                    } else {
                        held.clear();
                        sh.again = true;
                    }
                    return;
                }
                self.on_smessage(s, channel, &push, sh);
            }
            _ => {}
        }
    }

    /// A sharded message of shard `s` on `channel` (the name after the shard's prefix).
    fn on_smessage(&self, s: u16, channel: &str, push: &PushInfo, sh: &mut Shard) {
        let Some(payload) = push.data.get(1).and_then(text) else {
            return;
        };
        if channel.strip_prefix("control:") == Some(self.s.node_id.as_str()) {
            sh.last_marker = Some(tokio::time::Instant::now());
            let sync = payload.strip_prefix(b"sync:");
            if let Some(n) = sync.and_then(|n| std::str::from_utf8(n).ok()?.parse::<u64>().ok())
                && let Some(tx) = self.syncs.lock().remove(&n)
            {
                let _ = tx.send(());
            }
            return;
        }
        let Some((frame, exclude)) = self.parse_frame(channel, payload) else {
            self.metrics.dropped_frames.inc();
            return;
        };
        if let Some(id) = frame.event_id {
            if id.shard() != Some(s) {
                // A frame on a shard's channel must carry that shard's id.
                self.metrics.dropped_frames.inc();
                return;
            }
            let mut marks = self.shards.lock();
            let seen = &mut marks.seen[s as usize];
            if seen.is_none_or(|w| id > w) {
                *seen = Some(id);
            }
        }
        let excluded: Vec<&str> = exclude.as_deref().map(|x| x.split(',').collect()).unwrap_or_default();
        self.hub.deliver_exact(channel, &frame, &excluded);
    }

    async fn listen_sharded(&self, channels: Vec<Arc<str>>, shards: &mut [Shard]) -> Result<(), BrokerError> {
        let mut by_shard: HashMap<u16, Vec<Arc<str>>> = HashMap::new();
        for c in channels {
            if c.contains('*') {
                return Err(BrokerError::BadRequest(
                    "patterns are not available on a Redis Cluster deployment".into(),
                ));
            }
            let s = wsgw_protocol::shard_of(&c);
            if !shards[s as usize].listening.contains(&c) {
                by_shard.entry(s).or_default().push(c);
            }
        }
        for (s, mut chans) in by_shard {
            chans.sort();
            chans.dedup();
            let names: Vec<String> = chans.iter().map(|c| self.keys.pubsub(c)).collect();
            self.ssubscribe(&names).await?;
            shards[s as usize].listening.extend(chans);
        }
        Ok(())
    }

    async fn unlisten_sharded(&self, channels: Vec<Arc<str>>, shards: &mut [Shard]) {
        let mut by_shard: HashMap<u16, Vec<String>> = HashMap::new();
        for c in channels {
            let s = wsgw_protocol::shard_of(&c);
            if !self.hub.has_interest(&c) && shards[s as usize].listening.remove(&c) {
                by_shard.entry(s).or_default().push(self.keys.pubsub(&c));
            }
        }
        let Ok(mut conn) = self.cluster_conn() else { return };
        for names in by_shard.values() {
            let r = timed(self.s.op_timeout, async {
                conn.sunsubscribe(names).await.map_err(unavailable)
            })
            .await;
            if let Err(e) = r {
                debug!(error = %e, "sunsubscribe failed");
            }
        }
    }

    /// Holds shard `s`'s messages and repairs it in the background; a repair already running
    /// runs once more after.
    fn start_repair(
        self: &Arc<Self>,
        s: u16,
        shards: &mut [Shard],
        done: &mpsc::UnboundedSender<(u16, Result<(), BrokerError>)>,
    ) {
        let sh = &mut shards[s as usize];
        if sh.held.is_some() {
            sh.again = true;
            return;
        }
        sh.held = Some(VecDeque::new());
        let channels: Vec<Arc<str>> = sh.listening.iter().cloned().collect();
        let me = self.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let r = me.repair_shard(s, channels).await;
            let _ = done.send((s, r));
        });
    }

    fn repair_done(
        self: &Arc<Self>,
        s: u16,
        r: Result<(), BrokerError>,
        shards: &mut [Shard],
        done: &mpsc::UnboundedSender<(u16, Result<(), BrokerError>)>,
    ) {
        let sh = &mut shards[s as usize];
        if let Err(e) = r {
            warn!(shard = s, error = %e, "shard repair failed; retrying");
            let channels: Vec<Arc<str>> = sh.listening.iter().cloned().collect();
            let me = self.clone();
            let done = done.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let r = me.repair_shard(s, channels).await;
                let _ = done.send((s, r));
            });
            return;
        }
        let held = sh.held.take().unwrap_or_default();
        sh.last_marker = Some(tokio::time::Instant::now());
        for push in held {
            let Some(name) = push
                .data
                .first()
                .and_then(text)
                .and_then(|n| std::str::from_utf8(n).ok())
            else {
                continue;
            };
            if let Some((_, channel)) = split_shard(&self.keys.prefix, name) {
                self.on_smessage(s, channel, &push, sh);
            }
        }
        if std::mem::take(&mut sh.again) {
            self.start_repair(s, shards, done);
        }
    }

    /// Resubscribes shard `s`, fences a changed primary, and delivers what the node missed of
    /// its channels from history, up to a snapshot taken after the resubscription.
    async fn repair_shard(&self, s: u16, channels: Vec<Arc<str>>) -> Result<(), BrokerError> {
        let mut names: Vec<String> = channels.iter().map(|c| self.keys.pubsub(c)).collect();
        names.push(self.keys.shard_marker(s, &self.s.node_id));
        self.ssubscribe(&names).await?;
        let owner = self.owner_of(s).await?;
        let (after, before) = {
            let marks = self.shards.lock();
            (marks.seen[s as usize], marks.owner[s as usize].clone())
        };
        let seq: Option<String> = timed(self.s.op_timeout * PATIENT, async {
            let mut c = self.conn().await?;
            c.get(self.keys.seq(Some(s))).await.map_err(unavailable)
        })
        .await?;
        let snapshot = seq
            .and_then(|v| v.parse::<EventId>().ok())
            .unwrap_or_default()
            .in_shard(Some(s));
        if before.as_deref().is_some_and(|b| b != owner) {
            self.fence_shard(s, after, &channels).await?;
        }
        let mut gaps: Vec<Arc<str>> = Vec::new();
        let mut events: Vec<(Arc<str>, StoredEvent)> = Vec::new();
        if let Some(after) = after {
            for ch in &channels {
                let mut cursor = after;
                loop {
                    let query = HistoryQuery::After {
                        id: cursor,
                        limit: 512,
                        until: Some(snapshot),
                    };
                    let page = timed(self.s.op_timeout * PATIENT, self.history_page(ch, query)).await?;
                    if cursor == after && !page.complete {
                        gaps.push(ch.clone());
                    }
                    let n = page.events.len();
                    if let Some(last) = page.events.last() {
                        cursor = last.id;
                    }
                    events.extend(page.events.into_iter().map(|e| (ch.clone(), e)));
                    if n < 512 {
                        break;
                    }
                }
            }
        }
        if !gaps.is_empty() {
            let told = self.hub.send_gap(&gaps);
            warn!(
                shard = s,
                channels = gaps.len(),
                sockets = told,
                "repair could not prove some channels complete"
            );
        }
        events.sort_by_key(|(_, e)| e.id);
        for (ch, e) in events {
            let excluded: Vec<&str> = e.exclude.as_deref().map(|x| x.split(',').collect()).unwrap_or_default();
            let frame = OutFrame::event(e.frame.clone(), e.id, crate::time::ms_to_us(e.ts_ms));
            let n = self.hub.deliver(&ch, &frame, &excluded);
            self.metrics.repaired_events.inc_by(n as u64);
        }
        let mut marks = self.shards.lock();
        let seen = &mut marks.seen[s as usize];
        if seen.is_none_or(|w| snapshot > w) {
            *seen = Some(snapshot);
        }
        marks.owner[s as usize] = Some(owner);
        Ok(())
    }

    /// Another primary holds shard `s` now: what the old one acknowledged may be lost. Its
    /// sockets are told, and the shard's epoch is raised past every id seen, so a replay from
    /// before says `recovered:false`.
    async fn fence_shard(&self, s: u16, seen: Option<EventId>, channels: &[Arc<str>]) -> Result<(), BrokerError> {
        const RAISE: &str = "local c = tonumber(redis.call('GET', KEYS[1]) or '0') \
            local n = tonumber(ARGV[1]) \
            local t = redis.call('TIME') \
            local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
            if now > n then n = now end \
            if n > c then redis.call('SET', KEYS[1], n) else n = c end \
            return n";
        let seen_ms = seen.map_or(0, |w| w.ms.saturating_add(1));
        let epoch: u64 = timed(self.s.op_timeout * PATIENT, async {
            let mut c = self.conn().await?;
            redis::cmd("EVAL")
                .arg(RAISE)
                .arg(1)
                .arg(self.keys.epoch(Some(s)))
                .arg(seen_ms)
                .query_async(&mut c)
                .await
                .map_err(super::streams::classify)
        })
        .await?;
        let told = self.hub.send_gap(channels);
        warn!(
            shard = s,
            epoch,
            sockets = told,
            "another primary holds the shard (failover or slot migration): its sockets were told of a possible gap"
        );
        self.metrics.redis_failovers.inc();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_channel_names_split_into_shard_and_channel() {
        assert_eq!(split_shard("ws:", "ws:{6}user:42"), Some((6, "user:42")));
        assert_eq!(split_shard("ws:", "ws:{15}a{b}"), Some((15, "a{b}")));
        assert_eq!(split_shard("ws:", "ws:{16}x"), None);
        assert_eq!(split_shard("ws:", "ws:{global}control"), None);
        assert_eq!(split_shard("ws:", "other:{1}x"), None);
        assert_eq!(split_shard("ws:", "ws:user:42"), None);
    }
}
