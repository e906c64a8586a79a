//! broker/redis/sharded.rs: a node on a Redis Cluster (docs/scaling.md). Channels live in 16
//! id-shards, each one hash slot (`{s}`) with its own sequence, history and sharded pub/sub
//! channels. The node `SSUBSCRIBE`s to the channels its sockets follow, on the cluster
//! connection, which routes each shard's subscriptions to the primary that holds the shard. So
//! each shard's events reach the hub in that shard's id order, the hub keeps one floor per
//! shard, and everything the single-primary broker does with one position it does per shard
//! here: the `sync` marker (published into the shard it syncs), the watermark, and the repair.
//!
//! A shard is interrupted when the node may have missed some of its messages:
//! - the cluster connection lost a node connection (which node is not said, so every shard);
//! - Redis unsubscribed a channel of it (its slot moved);
//! - the client library subscribed to one of its channels again by itself (it reconnected or
//!   refreshed the topology, not always with a word about the lost connection);
//! - a subscription of it was never confirmed by name (the library can take a `sunsubscribe`
//!   Redis pushed on its own for the answer to a request: valkey-io/valkey#1066);
//! - its canary stopped coming back;
//! - a message names, as its channel's previous event (header.rs), one newer than any the node
//!   has of that channel: the node missed it, however that happened. The channel's sockets are
//!   told of a possible `gap` before the message reaches them (a socket may already have passed
//!   the missing id, through another channel of the shard, and a client recovers from the last
//!   id it has).
//!
//! Its live messages are then held while the shard is resubscribed and repaired from its
//! history up to a snapshot, and released after (sharded_repair.rs). When the shard's primary
//! changed meanwhile (a failover or a slot migration) nothing proves the new one holds every
//! event the old one acknowledged: its sockets get a `gap`, and the shard's epoch is raised so
//! later replays from before say `recovered:false`.

use redis::{PushInfo, PushKind, Value};
use wsgw_protocol::ID_SHARDS;

use super::canary::lateness;
use super::held::Held;
use super::*;
use crate::hub::Burst;
use crate::time::now_us;

const SHARDS: usize = ID_SHARDS as usize;

/// The bytes of a pushed message's bulk strings: what holding it keeps in memory, near enough.
fn push_bytes(push: &PushInfo) -> usize {
    push.data
        .iter()
        .map(|v| match v {
            redis::Value::BulkString(b) => b.len(),
            _ => 8,
        })
        .sum()
}

/// Repairs of one shard redone in a row because a channel joined while they ran; past that the
/// shard takes no new channel until its repair is delivered (`Shard::closed_to_joins`).
pub(super) const MAX_JOIN_REDOS: u32 = 2;

/// A `listen` waiting for a shard's repair to end: its channels and its answer.
pub(super) type DeferredListen = (Vec<Arc<str>>, oneshot::Sender<Result<(), BrokerError>>);

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
pub(super) struct Shard {
    /// Channels subscribed (gateway names).
    pub(super) listening: HashSet<Arc<str>>,
    /// Some while the shard is being repaired: its messages, in arrival order.
    pub(super) held: Option<Held<PushInfo>>,
    /// Repair again once this one ends (messages were dropped, or another interruption).
    pub(super) again: bool,
    /// A channel was subscribed since the running repair started: that repair did not read it
    /// (it reads the channels it started with), so what it read is not delivered, and the shard
    /// is repaired again from the same point, its messages still held (sharded_repair.rs).
    pub(super) joined: bool,
    /// When its canary (or any marker) last came back.
    pub(super) last_marker: Option<tokio::time::Instant>,
    /// How late its newest frame was: a shard that far behind gets its canary that much later
    /// (canary.rs).
    pub(super) behind: Duration,
    /// Subscriptions asked for (full pub/sub names) that Redis has not confirmed yet, since
    /// when. Only Redis's confirmation naming the channel proves a subscription: the client
    /// library may have taken a `sunsubscribe` Redis pushed on its own (a slot moved) for the
    /// answer to our request, while the real answer was `MOVED` (valkey-io/valkey#1066).
    pub(super) pending: HashMap<String, tokio::time::Instant>,
    /// The newest event the node has of each channel it follows (live, or from a repair's
    /// history read): a message whose previous event is newer shows a hole. A channel just
    /// subscribed starts at the shard's newest id read once Redis confirmed the subscription:
    /// every later event of it must come live (a socket's catch-up snapshot is taken later
    /// still), so its first message is checked too.
    pub(super) positions: HashMap<Arc<str>, EventId>,
    /// The snapshot the last repair read up to: messages released after it at or below it were
    /// read by that repair, so they arrive below the shard's newest id without being late.
    pub(super) repaired_to: Option<EventId>,
    /// Tries of the running repair that failed so far (sharded_repair.rs, `retry_delay`).
    pub(super) failed_tries: u32,
    /// Repairs redone in a row because a channel joined (`joined`) while they ran.
    pub(super) join_redos: u32,
    /// Listens held back while the shard is closed to joins, answered when its repair is
    /// delivered (sharded_listen.rs, `listen_deferred`).
    pub(super) deferred: Vec<DeferredListen>,
}

impl Shard {
    /// Whether a channel new to this shard waits for its repair to end. Each channel that joins
    /// while a repair runs makes that repair start over (`joined`): under a steady stream of
    /// subscribes to one shard, its messages would stay held until the stream stopped. After
    /// `MAX_JOIN_REDOS` redos the next repair runs with new channels held back.
    pub(super) fn closed_to_joins(&self) -> bool {
        self.held.is_some() && self.join_redos >= MAX_JOIN_REDOS
    }
}

/// What a shard's repair read: the events the node missed of the channels it repaired (in id
/// order, not delivered yet), and the snapshot it read up to.
pub(super) struct Repaired {
    pub(super) events: Vec<(Arc<str>, StoredEvent)>,
    pub(super) snapshot: EventId,
}

/// What `on_smessage` did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Took {
    /// Delivered, or not an event of a followed channel.
    Delivered,
    /// It showed a hole after `have`, the newest event the node has of its channel; the
    /// channel's sockets were told of a possible gap.
    Hole { have: EventId },
}

/// A repair's outcome, sent back to the subscriber loop.
pub(super) type RepairDone = mpsc::UnboundedSender<(u16, Result<Repaired, BrokerError>)>;

/// The shard a sharded channel name (`<prefix>{s}…`) is in, and the rest of the name.
pub(super) fn split_shard<'a>(prefix: &str, name: &'a str) -> Option<(u16, &'a str)> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('{')?;
    let (tag, rest) = rest.split_once('}')?;
    let canonical = (1..=2).contains(&tag.len())
        && tag.bytes().all(|b| b.is_ascii_digit())
        && (tag == "0" || !tag.starts_with('0'));
    let shard: u16 = if canonical { tag.parse().ok()? } else { return None };
    (shard < ID_SHARDS).then_some((shard, rest))
}

/// The full name a sharded push is about (its first element), its shard, and the channel in it.
pub(super) fn sharded_name<'a>(prefix: &str, push: &'a PushInfo) -> Option<(&'a str, u16, &'a str)> {
    let name = std::str::from_utf8(push.data.first().and_then(text)?).ok()?;
    let (s, channel) = split_shard(prefix, name)?;
    Some((name, s, channel))
}

pub(super) fn text(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

impl Inner {
    pub(super) fn cluster_conn(&self) -> Result<redis::cluster_async::ClusterConnection, BrokerError> {
        self.cluster
            .as_ref()
            .map(|c| c.conn.clone())
            .ok_or_else(|| BrokerError::Internal("not in Redis Cluster mode".into()))
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
                    let marker = self.keys.shard_marker(s, &self.s.node_id);
                    shards[s as usize]
                        .pending
                        .insert(marker.clone(), tokio::time::Instant::now());
                    self.ssubscribe(&[marker]).await?;
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
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(u16, Result<Repaired, BrokerError>)>();
        // Shards whose canary no subscriber took on the shard's primary (see `publish_canary`).
        let (stray_tx, mut stray_rx) = mpsc::unbounded_channel::<u16>();
        let canary_every = Duration::from_millis(self.s.canary_interval_ms.max(10));
        let mut canary_tick = tokio::time::interval(canary_every);
        canary_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A command that waited while the pushes were drained: handled before the next drain, so
        // a node behind on its pub/sub still answers a `subscribe` within one drain.
        let mut waiting: Option<SubCmd> = None;
        loop {
            let cmd = match waiting.take() {
                Some(cmd) => cmd,
                None => tokio::select! {
                    _ = shutdown.changed() => return,
                    push = pushes.recv() => {
                        let Some(push) = push else {
                            self.ready.store(false, Ordering::Release);
                            self.metrics.redis_up.set(0);
                            return;
                        };
                        // With every push already waiting behind it: several messages make bursts.
                        let open = self.hub.drain_waiting(
                            push,
                            || match pushes.try_recv() {
                                Ok(more) => Some(Some(more)),
                                Err(mpsc::error::TryRecvError::Empty) => None,
                                Err(mpsc::error::TryRecvError::Disconnected) => Some(None),
                            },
                            |p| p.data.get(1).and_then(text).map_or(0, <[u8]>::len),
                            |p, burst| self.on_push(p, &mut shards, &done_tx, burst),
                        );
                        if !open {
                            self.ready.store(false, Ordering::Release);
                            self.metrics.redis_up.set(0);
                            return;
                        }
                        // With per-core runtimes: no further reading while a core is far behind.
                        self.hub.cores_caught_up().await;
                        waiting = cmds.try_recv().ok();
                        continue;
                    }
                    cmd = cmds.recv() => match cmd {
                        None => return,
                        Some(cmd) => cmd,
                    },
                    done = done_rx.recv() => {
                        let Some((s, r)) = done else { return };
                        self.repair_done(s, r, &mut shards, &done_tx);
                        self.listen_deferred(s, &mut shards).await;
                        continue;
                    }
                    Some(s) = stray_rx.recv() => {
                        self.subscription_strayed(s, &mut shards, &done_tx);
                        continue;
                    }
                    _ = canary_tick.tick() => {
                        let late = canary_every * 3 + self.s.op_timeout;
                        for s in 0..ID_SHARDS {
                            let sh = &mut shards[s as usize];
                            let late = late + sh.behind;
                            if sh.held.is_none() && sh.last_marker.is_some_and(|t| t.elapsed() > late) {
                                warn!(shard = s, "canary missing on the shard's pub/sub: repairing it");
                                self.start_repair(s, &mut shards, &done_tx);
                            } else if sh.held.is_none() {
                                self.check_unconfirmed(s, late, &mut shards, &done_tx);
                            }
                        }
                        let (me, strays) = (self.clone(), stray_tx.clone());
                        tokio::spawn(async move {
                            for s in 0..ID_SHARDS {
                                match me.publish_canary(s).await {
                                    Ok(0) => {
                                        let _ = strays.send(s);
                                    }
                                    Ok(_) => {}
                                    Err(e) => debug!(shard = s, error = %e, "canary publish failed"),
                                }
                            }
                        });
                        continue;
                    }
                },
            };
            self.on_cmd(cmd, &mut cmds, &mut shards).await;
        }
    }

    /// A `listen`, `unlisten` or `reconnect` for the cluster reader.
    async fn on_cmd(&self, cmd: SubCmd, cmds: &mut mpsc::UnboundedReceiver<SubCmd>, shards: &mut [Shard]) {
        match cmd {
            SubCmd::Listen(channels, tx) => {
                // A reconnect storm brings thousands of listens at once: every listen
                // already waiting goes out in one SSUBSCRIBE per shard, the shards at once.
                let mut waiters = vec![(channels, tx)];
                let mut count = waiters[0].0.len();
                let mut deferred = None;
                while count < 4096 {
                    match cmds.try_recv() {
                        Ok(SubCmd::Listen(more, t)) => {
                            count += more.len();
                            waiters.push((more, t));
                        }
                        Ok(other) => {
                            deferred = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let (patterns, exact): (Vec<_>, Vec<_>) = waiters
                    .into_iter()
                    .partition(|(c, _)| c.iter().any(|c| c.contains('*')));
                for (_, t) in patterns {
                    let msg = "patterns are not available on a Redis Cluster deployment";
                    let _ = t.send(Err(BrokerError::BadRequest(msg.into())));
                }
                // A listen that would add a channel to a shard closed to joins waits for that
                // shard's repair (`Shard::closed_to_joins`, `listen_deferred`).
                let mut now = Vec::with_capacity(exact.len());
                for (chans, t) in exact {
                    let closed = chans.iter().find_map(|c| {
                        let s = wsgw_protocol::shard_of(c);
                        let sh = &shards[s as usize];
                        (sh.closed_to_joins() && !sh.listening.contains(c)).then_some(s)
                    });
                    match closed {
                        Some(s) => shards[s as usize].deferred.push((chans, t)),
                        None => now.push((chans, t)),
                    }
                }
                if !now.is_empty() {
                    let all: Vec<Arc<str>> = now.iter().flat_map(|(c, _)| c.iter().cloned()).collect();
                    let r = self.listen_sharded(all, shards).await;
                    for (_, t) in now {
                        let _ = t.send(r.clone());
                    }
                }
                if let Some(SubCmd::Unlisten(channels)) = deferred {
                    self.unlisten_sharded(channels, shards).await;
                }
            }
            SubCmd::Unlisten(channels) => self.unlisten_sharded(channels, shards).await,
            SubCmd::Reconnect => {}
        }
    }

    fn on_push(self: &Arc<Self>, push: PushInfo, shards: &mut [Shard], done: &RepairDone, burst: Option<&mut Burst>) {
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
            PushKind::SSubscribe => {
                let Some((name, s, channel)) = sharded_name(&self.keys.prefix, &push) else {
                    return;
                };
                if shards[s as usize].pending.remove(name).is_some() {
                    debug!(shard = s, channel, "subscription confirmed");
                    return;
                }
                // Not asked for: the client library subscribed again by itself, on a new
                // connection or after a topology refresh. Messages may have been lost in
                // between, with no word of it (it does not always push a `Disconnection`).
                if self.follows(&shards[s as usize], s, name, channel) {
                    warn!(
                        shard = s,
                        "the redis client subscribed again by itself (reconnect or topology refresh): repairing the shard"
                    );
                    self.start_repair(s, shards, done);
                }
            }
            PushKind::SMessage | PushKind::SUnsubscribe => {
                let Some((name, s, channel)) = sharded_name(&self.keys.prefix, &push) else {
                    return;
                };
                if push.kind == PushKind::SUnsubscribe {
                    // Redis unsubscribes a slot's channels when the slot moves: not ours to lose.
                    if self.follows(&shards[s as usize], s, name, channel) {
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
                    let bytes = push_bytes(&push);
                    if !held.push(push, bytes) {
                        sh.again = true;
                    }
                    return;
                }
                if let Took::Hole { have } = self.on_smessage(s, channel, &push, sh, burst, true) {
                    // The repair reads the shard's history from the newest event the node has of
                    // this channel: the missing one comes before this message.
                    self.read_from(s, have);
                    self.start_repair(s, shards, done);
                    let sh = &mut shards[s as usize];
                    let bytes = push_bytes(&push);
                    if let Some(held) = sh.held.as_mut()
                        && !held.push(push, bytes)
                    {
                        sh.again = true;
                    }
                }
            }
            _ => {}
        }
    }

    /// Whether `name` (`channel` in shard `s`) is one of the node's subscriptions: a channel it
    /// follows, or its marker.
    fn follows(&self, sh: &Shard, s: u16, name: &str, channel: &str) -> bool {
        sh.listening.contains(channel) || name == self.keys.shard_marker(s, &self.s.node_id)
    }

    /// A sharded message of shard `s` on `channel` (the name after the shard's prefix). When it
    /// shows a hole (its channel's previous event is newer than the newest the node has of it),
    /// the channel's sockets are told of a possible gap first; then it is delivered, unless
    /// `hold` (the caller holds it for the repair).
    pub(super) fn on_smessage(
        &self,
        s: u16,
        channel: &str,
        push: &PushInfo,
        sh: &mut Shard,
        burst: Option<&mut Burst>,
        hold: bool,
    ) -> Took {
        let Some(payload) = push.data.get(1).and_then(text) else {
            return Took::Delivered;
        };
        if channel.strip_prefix("control:") == Some(self.s.node_id.as_str()) {
            sh.last_marker = Some(tokio::time::Instant::now());
            let sync = payload.strip_prefix(b"sync:");
            if let Some(n) = sync.and_then(|n| std::str::from_utf8(n).ok()?.parse::<u64>().ok())
                && let Some((_, tx)) = self.syncs.lock().remove(&n)
            {
                debug!(shard = s, n, "sync marker back");
                // Answered once what came before it is offered on every core.
                self.hub.after_fanouts(tx);
            }
            return Took::Delivered;
        }
        let Some((frame, header)) = self.parse_frame(channel, payload) else {
            self.metrics.dropped_frames.inc();
            return Took::Delivered;
        };
        let mut took = Took::Delivered;
        if frame.published_us != 0 {
            sh.behind = lateness(frame.published_us, now_us());
        }
        if let Some(id) = frame.event_id {
            if id.shard() != Some(s) {
                // A frame on a shard's channel must carry that shard's id.
                self.metrics.dropped_frames.inc();
                return Took::Delivered;
            }
            let prev = header.prev.map(|p| p.in_shard(Some(s)));
            let newest = self.shards.lock().seen[s as usize];
            match sh.positions.get_mut(channel) {
                Some(have) => {
                    // New to the node, yet older than an event of the shard it already passed
                    // on: it came over another path than the shard's other channels (a second
                    // connection, a replica), and the sockets' floors may have passed it.
                    let late = id > *have && newest.is_some_and(|w| id < w) && sh.repaired_to.is_none_or(|r| id > r);
                    if prev.is_some_and(|p| p > *have) || late {
                        took = Took::Hole { have: *have };
                        let told = self.hub.send_gap(&[Arc::from(channel)]);
                        warn!(
                            shard = s,
                            channel,
                            sockets = told,
                            late,
                            "a message names an earlier event of its channel that the node never got, or came after a newer event of its shard: its sockets were told of a possible gap; repairing the shard"
                        );
                        if hold {
                            return took;
                        }
                    }
                    *have = (*have).max(id);
                }
                None => {
                    if let Some(c) = sh.listening.get(channel) {
                        sh.positions.insert(c.clone(), id);
                    }
                }
            }
            let mut marks = self.shards.lock();
            let seen = &mut marks.seen[s as usize];
            if seen.is_none_or(|w| id > w) {
                *seen = Some(id);
            }
        }
        self.hub.deliver_exact(channel, &frame, &header.excluded(), burst);
        took
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
