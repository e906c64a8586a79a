//! hub.rs: this node's sockets and who listens to what (connection registry, channel and
//! pattern index, fan-out into each socket's bounded outbox). Never awaits: fan-out only
//! pushes shared frames into queues, and the socket's own task writes them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::ws::Utf8Bytes;
use indexmap::IndexMap;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;
use wsgw_protocol::{CloseCode, EventId, classify, glob_match};

use crate::metrics::Metrics;
use crate::time::now_ms;

/// A frame ready to be written: shared text plus what ordering and latency need.
#[derive(Clone, Debug)]
pub struct OutFrame {
    /// The JSON text, shared by every recipient.
    pub text: Utf8Bytes,
    /// Set for durable events; used to drop duplicates.
    pub event_id: Option<EventId>,
    /// Publish time in µs since the epoch (0 for control frames): feeds the latency histogram.
    pub published_us: u64,
    /// Set for a backend's `response` frame: which request it answers.
    pub response: Option<Arc<ResponseTag>>,
}

/// Which client request a backend `response` frame answers.
#[derive(Debug)]
pub struct ResponseTag {
    /// The request's `request_id`, as compact JSON text.
    pub key: String,
    /// More `response` frames for the same request will follow (a streamed answer).
    pub more: bool,
}

#[derive(Debug)]
struct PendingRequest {
    key: String,
    request_id: serde_json::Value,
    deadline_ms: u64,
    timeout_ms: u64,
}

impl OutFrame {
    /// A control frame (welcome, ack, error …): no id, no latency measurement.
    pub fn control(text: impl Into<Utf8Bytes>) -> Self {
        Self {
            text: text.into(),
            event_id: None,
            published_us: 0,
            response: None,
        }
    }
}

/// What happened to a frame offered to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued (or buffered behind a replay).
    Queued,
    /// Already sent or queued (same or older event id): dropped on purpose.
    Duplicate,
    /// The queue was full: the connection is now closing with 4008.
    Overflow,
    /// The connection is closing; nothing more is queued.
    Closed,
}

/// A live frame held back while a replay is read, with what its admission needs later.
struct Held {
    frame: OutFrame,
    channel: Arc<str>,
    via_pattern: bool,
}

/// How many times its queue capacity a socket may hold back while a replay is read.
const HELD_FACTOR: usize = 8;

/// `since` of a pattern whose subscription is still being confirmed: nothing passes yet.
const PENDING: EventId = EventId::new(u64::MAX, u64::MAX);

/// The socket's side of the exactness invariant (docs/protocol.md, "Exactness"): every durable
/// event of every channel it is subscribed to, once, in id order per channel.
///
/// The live stream (the node's one pub/sub connection, the memory broker's lock, an outage
/// repair) reaches a socket in global id order, so one `floor` per socket drops what it already
/// has. A replay breaks that order for one channel only, and only while live frames are held
/// (`replay`): `finish_replay` merges the two runs by id and moves the floor to the broker's
/// snapshot, after which the stream is in global order again. No per-channel state is kept.
struct Outbox {
    queue: VecDeque<OutFrame>,
    /// Highest durable id passed on from the live stream; live events at or below it are ones
    /// the socket already has.
    floor: Option<EventId>,
    /// Pattern subscriptions, each with the snapshot after which it is exact. A durable event
    /// reaching the socket only through patterns passes when one of them covers its id. Empty
    /// on sockets without patterns.
    patterns: Vec<(Arc<str>, EventId)>,
    /// Some while a replay is being read: live frames wait here so they merge with the replay.
    replay: Option<Vec<Held>>,
    /// Room granted on top of the capacity for a replay still being written, so a long replay
    /// does not make the next live frame look like a slow consumer.
    replay_room: usize,
    close: Option<CloseCode>,
}

impl Outbox {
    /// Whether a durable live event is new to this socket; moves the floor.
    fn admit(&mut self, id: EventId, channel: &str, via_pattern: bool) -> bool {
        if self.floor.is_some_and(|f| id <= f) {
            return false;
        }
        self.floor = Some(id);
        !via_pattern
            || self
                .patterns
                .iter()
                .any(|(p, since)| *since < id && glob_match(p, channel))
    }

    /// The earliest snapshot from which a pattern of this socket covers `channel`.
    fn covered_since(&self, channel: &str) -> Option<EventId> {
        self.patterns
            .iter()
            .filter(|(p, since)| *since != PENDING && glob_match(p, channel))
            .map(|(_, since)| *since)
            .min()
    }
}

/// One socket as the hub sees it. The session task owns the socket itself.
pub struct Connection {
    key: u64,
    /// The connection id (its `connection:<id>` channel).
    pub id: Arc<str>,
    /// The token's `sub`.
    pub user_id: Arc<str>,
    /// When the socket was welcomed, ms since the epoch.
    pub connected_at_ms: u64,
    last_seen_ms: AtomicU64,
    /// Token expiry in seconds since the epoch, 0 when the token has none.
    token_exp_s: AtomicU64,
    capacity: usize,
    outbox: Mutex<Outbox>,
    /// Wakes the socket's task when something is queued or a close is requested.
    wake: Notify,
    /// Wakes only on a close request: a write stuck on a full socket waits on this one, so it
    /// never consumes a wake-up meant for the task's main loop.
    close_wake: Notify,
    channels: Mutex<Vec<Arc<str>>>,
    /// Requests sent to backends and not fully answered yet.
    pending: Mutex<Vec<PendingRequest>>,
    /// Set when a newer socket took this connection id over (here or on another node): its
    /// end must not touch the id's presence or parked session, which now belong to the new one.
    replaced: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .finish()
    }
}

impl Connection {
    /// A connection in replay mode: live frames are held back until [`Connection::finish_replay`].
    pub fn new(id: Arc<str>, user_id: Arc<str>, capacity: usize, last_event_id: Option<EventId>) -> Self {
        let now = now_ms();
        Self {
            key: 0,
            id,
            user_id,
            connected_at_ms: now,
            last_seen_ms: AtomicU64::new(now),
            token_exp_s: AtomicU64::new(0),
            capacity: capacity.max(1),
            outbox: Mutex::new(Outbox {
                queue: VecDeque::new(),
                floor: last_event_id,
                patterns: Vec::new(),
                replay: Some(Vec::new()),
                replay_room: 0,
                close: None,
            }),
            wake: Notify::new(),
            close_wake: Notify::new(),
            channels: Mutex::new(Vec::new()),
            pending: Mutex::new(Vec::new()),
            replaced: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Records that the client showed a sign of life.
    pub fn touch(&self) {
        self.last_seen_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Last sign of life, ms since the epoch.
    pub fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }

    /// Sets the token expiry (seconds since the epoch; `None`: never).
    pub fn set_token_exp(&self, exp: Option<u64>) {
        self.token_exp_s.store(exp.unwrap_or(0), Ordering::Relaxed);
    }

    /// Token expiry, seconds since the epoch.
    pub fn token_exp(&self) -> Option<u64> {
        match self.token_exp_s.load(Ordering::Relaxed) {
            0 => None,
            s => Some(s),
        }
    }

    /// Channels and patterns this connection is in.
    pub fn channels(&self) -> Vec<Arc<str>> {
        self.channels.lock().clone()
    }

    /// The topics and patterns it subscribed to itself (what a resume restores).
    pub fn topics(&self) -> Vec<String> {
        self.channels
            .lock()
            .iter()
            .filter(|c| classify(c).is_explicit())
            .map(|c| c.to_string())
            .collect()
    }

    /// Whether this connection is subscribed to exactly `channel`.
    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.channels.lock().iter().any(|c| &**c == channel)
    }

    /// Closes this socket because a newer one took its connection id over.
    pub fn replace(&self) {
        self.replaced.store(true, Ordering::Release);
        self.close(CloseCode::Normal);
    }

    /// Whether a newer socket took this connection id over.
    pub fn is_replaced(&self) -> bool {
        self.replaced.load(Ordering::Acquire)
    }

    /// Records a request sent to the backends; false when `limit` are already waiting.
    pub fn add_pending(&self, request_id: serde_json::Value, timeout_ms: u64, limit: usize) -> bool {
        let mut p = self.pending.lock();
        let key = request_id.to_string();
        p.retain(|r| r.key != key);
        if p.len() >= limit {
            return false;
        }
        p.push(PendingRequest {
            key,
            request_id,
            deadline_ms: now_ms() + timeout_ms,
            timeout_ms,
        });
        true
    }

    /// Forgets a request (e.g. it could not be sent).
    pub fn drop_pending(&self, request_id: &serde_json::Value) {
        let key = request_id.to_string();
        self.pending.lock().retain(|r| r.key != key);
    }

    /// Removes and returns the requests whose backend has not answered in time.
    pub fn expire_pending(&self, now_ms: u64) -> Vec<serde_json::Value> {
        let mut p = self.pending.lock();
        if p.is_empty() {
            return Vec::new();
        }
        let mut expired = Vec::new();
        p.retain(|r| {
            if r.deadline_ms <= now_ms {
                expired.push(r.request_id.clone());
                false
            } else {
                true
            }
        });
        expired
    }

    fn response_seen(&self, tag: &ResponseTag) {
        let mut p = self.pending.lock();
        if let Some(pos) = p.iter().position(|r| r.key == tag.key) {
            if tag.more {
                // A streamed answer is alive: each chunk restarts the wait for the next.
                p[pos].deadline_ms = now_ms() + p[pos].timeout_ms;
            } else {
                p.swap_remove(pos);
            }
        }
    }

    /// Offers a live frame published on `channel`, reaching this socket through its exact
    /// subscription or (`via_pattern`) only through patterns. Never blocks on the socket.
    pub fn push(&self, frame: OutFrame, channel: &str, via_pattern: bool) -> Push {
        if let Some(tag) = &frame.response {
            self.response_seen(tag);
        }
        let mut ob = self.outbox.lock();
        if ob.close.is_some() {
            return Push::Closed;
        }
        if let Some(held) = ob.replay.as_mut() {
            // Held by the server, not by a slow reader: a replay waits for the node's pub/sub
            // stream to pass its snapshot, so it may hold that lag's worth of frames. Bounded
            // all the same (and by the broker's sync timeout in time).
            if held.len() >= self.capacity.saturating_mul(HELD_FACTOR) {
                return self.overflow(ob);
            }
            held.push(Held {
                frame,
                channel: Arc::from(channel),
                via_pattern,
            });
            return Push::Queued;
        }
        if let Some(id) = frame.event_id
            && !ob.admit(id, channel, via_pattern)
        {
            return Push::Duplicate;
        }
        if ob.queue.len() >= self.capacity + ob.replay_room {
            return self.overflow(ob);
        }
        let was_empty = ob.queue.is_empty();
        ob.queue.push_back(frame);
        drop(ob);
        if was_empty {
            self.wake.notify_one();
        }
        Push::Queued
    }

    /// Queues a control frame (answer, error, ping) even during a replay: control frames are
    /// not ordered against events. Still bounded by the queue.
    pub fn push_control(&self, frame: OutFrame) -> Push {
        let mut ob = self.outbox.lock();
        if ob.close.is_some() {
            return Push::Closed;
        }
        if ob.queue.len() >= self.capacity {
            return self.overflow(ob);
        }
        let was_empty = ob.queue.is_empty();
        ob.queue.push_back(frame);
        drop(ob);
        if was_empty {
            self.wake.notify_one();
        }
        Push::Queued
    }

    fn overflow(&self, mut ob: parking_lot::MutexGuard<'_, Outbox>) -> Push {
        ob.queue.clear();
        ob.replay = None;
        ob.close = Some(CloseCode::SlowConsumer);
        drop(ob);
        self.wake.notify_one();
        self.close_wake.notify_one();
        Push::Overflow
    }

    /// Holds live frames back until [`Connection::finish_replay`] (for a subscribe with replay).
    pub fn begin_replay(&self) {
        let mut ob = self.outbox.lock();
        if ob.replay.is_none() && ob.close.is_none() {
            ob.replay = Some(Vec::new());
        }
    }

    /// Forgets the dedup floor (a replay that was asked for could not be read: the client was
    /// told `recovered:false`, and a floor from its `last_event_id` must not hold live events back).
    pub fn clear_floor(&self) {
        self.outbox.lock().floor = None;
    }

    /// Ends a replay: queues `head` (the welcome or subscribed frame), then the replayed events
    /// merged with the live ones held meanwhile, in id order, each id once. Returns how many
    /// replayed events were queued.
    ///
    /// - `replayed` is sorted by id and was read up to the broker's snapshot `position`, after
    ///   [`crate::broker::Broker::sync`] saw every live event up to it reach the hub. So once
    ///   merged, the floor moves to `position` and the live stream is in global order again.
    /// - `channel` names the one channel of a subscribe catch-up. Its replayed events may be
    ///   older than what the socket already has on other channels (that is the catch-up); the
    ///   ones its patterns already brought are skipped.
    /// - Patterns subscribed in this replay become exact after `position`.
    pub fn finish_replay(
        &self,
        head: impl FnOnce(u64) -> OutFrame,
        replayed: Vec<OutFrame>,
        position: Option<EventId>,
        channel: Option<&str>,
    ) -> usize {
        let mut ob = self.outbox.lock();
        let Some(held) = ob.replay.take() else {
            // Closed (overflow) while replaying: nothing to do.
            return 0;
        };
        if ob.close.is_some() {
            return 0;
        }
        if let Some(s) = position {
            // A floor above the snapshot came from a client's id the broker never issued.
            if ob.floor.is_some_and(|f| f > s) {
                ob.floor = Some(s);
            }
        }
        let settle = position.or(ob.floor).unwrap_or_default();
        for (_, since) in ob.patterns.iter_mut() {
            if *since == PENDING {
                *since = settle;
            }
        }
        let before = ob.floor;
        let covered = channel.and_then(|c| ob.covered_since(c));
        let replayed: Vec<OutFrame> = replayed
            .into_iter()
            .filter(|f| {
                let id = f.event_id.unwrap_or_default();
                !(covered.is_some_and(|s| id > s) && before.is_some_and(|l| id <= l))
            })
            .collect();
        ob.queue.push_back(head(replayed.len() as u64));
        let mut replayed = replayed.into_iter().peekable();
        let mut sent_replayed = 0;
        let mut last: Option<EventId> = None;
        for h in held {
            let Some(id) = h.frame.event_id else {
                ob.queue.push_back(h.frame);
                continue;
            };
            if !ob.admit(id, &h.channel, h.via_pattern) {
                continue;
            }
            while let Some(r) = replayed.next_if(|r| r.event_id.is_some_and(|rid| rid <= id)) {
                if r.event_id != Some(id) && r.event_id > last {
                    last = r.event_id;
                    sent_replayed += 1;
                    ob.queue.push_back(r);
                } else if r.event_id == Some(id) {
                    sent_replayed += 1;
                }
            }
            if Some(id) > last {
                last = Some(id);
                ob.queue.push_back(h.frame);
            }
        }
        for r in replayed {
            if r.event_id > last {
                last = r.event_id;
                sent_replayed += 1;
                ob.queue.push_back(r);
            }
        }
        ob.floor = ob.floor.max(last).max(position);
        ob.replay_room = ob.queue.len();
        drop(ob);
        self.wake.notify_one();
        sent_replayed
    }

    /// Asks the session to close the socket with `code` after what is queued (for 4008 the
    /// queue is dropped first). Returns false if it was already closing.
    pub fn close(&self, code: CloseCode) -> bool {
        let mut ob = self.outbox.lock();
        if ob.close.is_some() {
            return false;
        }
        if code == CloseCode::SlowConsumer {
            ob.queue.clear();
        }
        ob.replay = None;
        ob.close = Some(code);
        drop(ob);
        self.wake.notify_one();
        self.close_wake.notify_one();
        true
    }

    /// Queues a last frame, then closes.
    pub fn close_with(&self, last: OutFrame, code: CloseCode) -> bool {
        {
            let mut ob = self.outbox.lock();
            if ob.close.is_some() {
                return false;
            }
            ob.queue.push_back(last);
        }
        self.close(code)
    }

    /// Moves everything queued into `out`; returns the close request, if any.
    pub fn take_batch(&self, out: &mut Vec<OutFrame>) -> Option<CloseCode> {
        let mut ob = self.outbox.lock();
        out.extend(ob.queue.drain(..));
        ob.replay_room = 0;
        if ob.queue.capacity() > 64 && ob.queue.is_empty() {
            // A burst grew the queue; give the memory back so idle sockets stay small.
            ob.queue.shrink_to(8);
        }
        ob.close
    }

    /// Frames waiting for the socket's task, and whether a replay holds live frames back
    /// (for stats and diagnostics).
    pub fn queued(&self) -> (usize, bool) {
        let ob = self.outbox.lock();
        (ob.queue.len(), ob.replay.is_some())
    }

    /// The close requested, if any (without taking anything from the queue).
    pub fn close_requested(&self) -> Option<CloseCode> {
        self.outbox.lock().close
    }

    /// Waits until something is queued or a close is requested.
    pub async fn wait(&self) {
        self.wake.notified().await
    }

    /// Waits until a close is requested (returns at once if one already is).
    pub async fn wait_close(&self) -> CloseCode {
        loop {
            if let Some(code) = self.close_requested() {
                return code;
            }
            self.close_wake.notified().await;
        }
    }
}

/// A connection's identity and topics kept after a disconnect, for `connection_id` resume.
#[derive(Debug, Clone)]
struct Parked {
    user_id: Arc<str>,
    topics: Vec<String>,
    expires_ms: u64,
}

type Subscribers = IndexMap<u64, Arc<Connection>>;

/// One connection of a user, as presence reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PresenceEntry {
    /// The connection id.
    pub connection_id: String,
    /// The node holding it.
    pub node: String,
    /// When it was welcomed, ms since the epoch.
    pub connected_at: u64,
}

/// Figures of this node's hub.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct HubStats {
    /// Sockets registered.
    pub connections: usize,
    /// Distinct channels with at least one local subscriber.
    pub channels: usize,
    /// Distinct patterns with at least one local subscriber.
    pub patterns: usize,
    /// Sessions parked for resume.
    pub parked_sessions: usize,
}

/// This node's sockets and their subscriptions.
pub struct Hub {
    node_id: String,
    next_key: AtomicU64,
    conns: RwLock<HashMap<Arc<str>, Arc<Connection>>>,
    channels: RwLock<HashMap<Arc<str>, Subscribers>>,
    patterns: RwLock<Vec<(Arc<str>, Subscribers)>>,
    parked: Mutex<HashMap<Arc<str>, Parked>>,
    metrics: Metrics,
}

impl Hub {
    /// An empty hub for node `node_id`.
    pub fn new(node_id: String, metrics: Metrics) -> Self {
        Self {
            node_id,
            next_key: AtomicU64::new(1),
            conns: RwLock::new(HashMap::new()),
            channels: RwLock::new(HashMap::new()),
            patterns: RwLock::new(Vec::new()),
            parked: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Registers a new connection. If its id is already live here (a client resuming before
    /// the old socket was noticed dead), the old socket is closed (1000) and replaced.
    pub fn register(&self, mut conn: Connection) -> Arc<Connection> {
        conn.key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(conn);
        let old = self.conns.write().insert(conn.id.clone(), conn.clone());
        if let Some(old) = old {
            old.replace();
            self.unsubscribe_all(&old);
        }
        conn
    }

    /// Removes a connection and all its subscriptions. Returns the channels and patterns that
    /// no local connection listens to any more (for the broker to release).
    pub fn remove(&self, conn: &Arc<Connection>) -> Vec<Arc<str>> {
        {
            let mut conns = self.conns.write();
            if conns.get(&conn.id).is_some_and(|c| Arc::ptr_eq(c, conn)) {
                conns.remove(&conn.id);
            }
        }
        self.unsubscribe_all(conn)
    }

    fn unsubscribe_all(&self, conn: &Arc<Connection>) -> Vec<Arc<str>> {
        let channels = std::mem::take(&mut *conn.channels.lock());
        channels.into_iter().filter(|c| self.unindex(conn, c)).collect()
    }

    /// The number of connections registered.
    pub fn connection_count(&self) -> usize {
        self.conns.read().len()
    }

    /// Connections of one user on this node.
    pub fn user_connection_count(&self, user_id: &str) -> usize {
        let key = format!("user:{user_id}");
        self.channels.read().get(key.as_str()).map_or(0, |s| s.len())
    }

    /// Adds `conn` to `channel` (or pattern). Returns true when it is the first local
    /// subscriber (the broker must start listening), false also when already subscribed.
    pub fn subscribe(&self, conn: &Arc<Connection>, channel: &str) -> bool {
        {
            let mut chans = conn.channels.lock();
            if chans.iter().any(|c| &**c == channel) {
                return false;
            }
            chans.push(Arc::from(channel));
        }
        if channel.contains('*') {
            // Exact from the snapshot its replay takes (`finish_replay`); nothing passes before.
            conn.outbox.lock().patterns.push((Arc::from(channel), PENDING));
            let mut pats = self.patterns.write();
            if let Some((_, subs)) = pats.iter_mut().find(|(p, _)| &**p == channel) {
                subs.insert(conn.key, conn.clone());
                false
            } else {
                let mut subs = IndexMap::new();
                subs.insert(conn.key, conn.clone());
                pats.push((Arc::from(channel), subs));
                true
            }
        } else {
            let mut chans = self.channels.write();
            match chans.get_mut(channel) {
                Some(subs) => {
                    subs.insert(conn.key, conn.clone());
                    false
                }
                None => {
                    let mut subs = IndexMap::new();
                    subs.insert(conn.key, conn.clone());
                    chans.insert(Arc::from(channel), subs);
                    true
                }
            }
        }
    }

    /// Removes `conn` from `channel`. Returns true when no local subscriber is left.
    pub fn unsubscribe(&self, conn: &Arc<Connection>, channel: &str) -> bool {
        {
            let mut chans = conn.channels.lock();
            let Some(pos) = chans.iter().position(|c| &**c == channel) else {
                return false;
            };
            chans.swap_remove(pos);
        }
        if channel.contains('*') {
            conn.outbox.lock().patterns.retain(|(p, _)| &**p != channel);
        }
        self.unindex(conn, channel)
    }

    fn unindex(&self, conn: &Arc<Connection>, channel: &str) -> bool {
        if channel.contains('*') {
            let mut pats = self.patterns.write();
            if let Some(pos) = pats.iter().position(|(p, _)| &**p == channel) {
                pats[pos].1.swap_remove(&conn.key);
                if pats[pos].1.is_empty() {
                    pats.swap_remove(pos);
                    return true;
                }
            }
            false
        } else {
            let mut chans = self.channels.write();
            if let Some(subs) = chans.get_mut(channel) {
                subs.swap_remove(&conn.key);
                if subs.is_empty() {
                    chans.remove(channel);
                    return true;
                }
            }
            false
        }
    }

    /// Whether any local connection listens to `channel` (exactly or by pattern).
    pub fn has_interest(&self, channel: &str) -> bool {
        if channel.contains('*') {
            return self.patterns.read().iter().any(|(p, _)| &**p == channel);
        }
        self.channels.read().contains_key(channel)
    }

    /// Every channel and pattern with a local subscriber.
    pub fn interests(&self) -> Vec<Arc<str>> {
        let mut all: Vec<Arc<str>> = self.channels.read().keys().cloned().collect();
        all.extend(self.patterns.read().iter().map(|(p, _)| p.clone()));
        all
    }

    /// Fans a frame published on `channel` out to every local subscriber (exact and pattern),
    /// except the connection ids in `exclude`. Returns how many accepted it.
    pub fn deliver(&self, channel: &str, frame: &OutFrame, exclude: &[&str]) -> usize {
        let mut delivered = 0;
        let chans = self.channels.read();
        let exact = chans.get(channel);
        if let Some(subs) = exact {
            for c in subs.values() {
                self.offer(c, channel, false, frame, exclude, &mut delivered);
            }
        }
        let pats = self.patterns.read();
        if !pats.is_empty() {
            // A socket subscribed both exactly and by pattern(s) gets the frame once.
            let mut seen: HashSet<u64> = HashSet::new();
            for (_, subs) in pats.iter().filter(|(p, _)| glob_match(p, channel)) {
                for (key, c) in subs {
                    if exact.is_some_and(|e| e.contains_key(key)) || !seen.insert(*key) {
                        continue;
                    }
                    self.offer(c, channel, true, frame, exclude, &mut delivered);
                }
            }
        }
        delivered
    }

    /// Delivers to the exact subscribers of `channel` only (a Redis `message`).
    pub fn deliver_exact(&self, channel: &str, frame: &OutFrame, exclude: &[&str]) -> usize {
        let chans = self.channels.read();
        let Some(subs) = chans.get(channel) else { return 0 };
        let mut delivered = 0;
        for c in subs.values() {
            self.offer(c, channel, false, frame, exclude, &mut delivered);
        }
        delivered
    }

    /// Delivers to the subscribers of one pattern (a Redis `pmessage` for `channel`), skipping
    /// sockets that also hold an exact subscription (they get the `message`).
    pub fn deliver_pattern(&self, pattern: &str, channel: &str, frame: &OutFrame, exclude: &[&str]) -> usize {
        let chans = self.channels.read();
        let exact = chans.get(channel);
        let pats = self.patterns.read();
        let Some((_, subs)) = pats.iter().find(|(p, _)| &**p == pattern) else {
            return 0;
        };
        let mut delivered = 0;
        for (key, c) in subs {
            if exact.is_some_and(|e| e.contains_key(key)) {
                continue;
            }
            self.offer(c, channel, true, frame, exclude, &mut delivered);
        }
        delivered
    }

    fn offer(
        &self,
        c: &Arc<Connection>,
        channel: &str,
        via_pattern: bool,
        frame: &OutFrame,
        exclude: &[&str],
        delivered: &mut usize,
    ) {
        if !exclude.is_empty() && exclude.contains(&&*c.id) {
            return;
        }
        match c.push(frame.clone(), channel, via_pattern) {
            Push::Queued => *delivered += 1,
            Push::Overflow => self.metrics.slow_consumers.inc(),
            Push::Duplicate | Push::Closed => {}
        }
    }

    /// Tells every socket following one of `channels` (by name, or through a pattern that
    /// matches it) that events may be missing there: one `gap` frame per socket, naming its
    /// channels and patterns. For repairs that cannot prove a live socket missed nothing.
    pub fn send_gap(&self, channels: &[Arc<str>]) -> usize {
        let mut per_conn: HashMap<u64, (Arc<Connection>, Vec<String>)> = HashMap::new();
        let mut note = |c: &Arc<Connection>, name: &str| {
            let names = &mut per_conn.entry(c.key).or_insert_with(|| (c.clone(), Vec::new())).1;
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        };
        {
            let chans = self.channels.read();
            let pats = self.patterns.read();
            for ch in channels {
                if let Some(subs) = chans.get(ch) {
                    subs.values().for_each(|c| note(c, ch));
                }
                for (p, subs) in pats.iter().filter(|(p, _)| glob_match(p, ch)) {
                    subs.values().for_each(|c| note(c, p));
                }
            }
        }
        let n = per_conn.len();
        for (_, (c, names)) in per_conn {
            let frame = wsgw_protocol::ServerFrame::Gap {
                channels: names,
                recovered: false,
            };
            c.push_control(OutFrame::control(frame.to_json()));
        }
        n
    }

    /// A snapshot of every connection (for the node-wide heartbeat tick and the drain).
    pub fn connections(&self) -> Vec<Arc<Connection>> {
        self.conns.read().values().cloned().collect()
    }

    /// One connection by id.
    pub fn connection(&self, id: &str) -> Option<Arc<Connection>> {
        self.conns.read().get(id).cloned()
    }

    /// Connections of one user on this node.
    pub fn user_connections(&self, user_id: &str) -> Vec<Arc<Connection>> {
        let key = format!("user:{user_id}");
        self.channels
            .read()
            .get(key.as_str())
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Presence entries of one user on this node.
    pub fn presence(&self, user_id: &str) -> Vec<PresenceEntry> {
        self.user_connections(user_id)
            .into_iter()
            .map(|c| PresenceEntry {
                connection_id: c.id.to_string(),
                node: self.node_id.clone(),
                connected_at: c.connected_at_ms,
            })
            .collect()
    }

    /// Closes every connection of `user_id` with `code`; returns how many.
    pub fn close_user(&self, user_id: &str, code: CloseCode) -> usize {
        self.user_connections(user_id).iter().filter(|c| c.close(code)).count()
    }

    /// Keeps a closed connection's topics for `ttl_ms` so a client can resume them.
    pub fn park(&self, conn: &Connection, topics: Vec<String>, ttl_ms: u64) {
        let parked = Parked {
            user_id: conn.user_id.clone(),
            topics,
            expires_ms: now_ms() + ttl_ms,
        };
        self.parked.lock().insert(conn.id.clone(), parked);
    }

    /// Takes a parked session back if it exists, has not expired and belongs to `user_id`.
    pub fn unpark(&self, id: &str, user_id: &str) -> Option<Vec<String>> {
        let mut parked = self.parked.lock();
        let p = parked.get(id)?;
        if &*p.user_id != user_id || p.expires_ms < now_ms() {
            return None;
        }
        parked.remove(id).map(|p| p.topics)
    }

    /// Whether `id` is live here or parked for a different user (a resume must not take it).
    pub fn id_owned_by_other(&self, id: &str, user_id: &str) -> bool {
        if let Some(c) = self.conns.read().get(id) {
            return &*c.user_id != user_id;
        }
        let now = now_ms();
        self.parked
            .lock()
            .get(id)
            .is_some_and(|p| p.expires_ms >= now && &*p.user_id != user_id)
    }

    /// Drops parked sessions whose time has passed.
    pub fn expire_parked(&self) {
        let now = now_ms();
        self.parked.lock().retain(|_, p| p.expires_ms >= now);
    }

    /// Figures for stats and the node registry.
    pub fn stats(&self) -> HubStats {
        HubStats {
            connections: self.conns.read().len(),
            channels: self.channels.read().len(),
            patterns: self.patterns.read().len(),
            parked_sessions: self.parked.lock().len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: u64, text: &str) -> OutFrame {
        OutFrame {
            text: Utf8Bytes::from(text.to_owned()),
            event_id: Some(EventId::new(id, 0)),
            published_us: 0,
            response: None,
        }
    }

    fn drain(c: &Connection) -> (Vec<String>, Option<CloseCode>) {
        let mut out = Vec::new();
        let close = c.take_batch(&mut out);
        (out.into_iter().map(|f| f.text.to_string()).collect(), close)
    }

    fn live(hub: &Hub, id: &str, cap: usize) -> Arc<Connection> {
        let c = hub.register(Connection::new(Arc::from(id), Arc::from("u"), cap, None));
        c.finish_replay(|_| OutFrame::control("welcome"), vec![], None, None);
        c
    }

    #[test]
    fn replay_then_buffered_live_in_order_without_duplicates() {
        let c = Connection::new(Arc::from("c1"), Arc::from("u"), 100, Some(EventId::new(1, 0)));
        // live events arrive while history is being read; 3 is also in history
        assert_eq!(c.push(ev(3, "e3"), "t", false), Push::Queued);
        assert_eq!(c.push(ev(4, "e4"), "t", false), Push::Queued);
        let n = c.finish_replay(
            |_| OutFrame::control("welcome"),
            vec![ev(2, "e2"), ev(3, "e3")],
            Some(EventId::new(3, 0)),
            None,
        );
        assert_eq!(n, 2);
        assert_eq!(c.push(ev(4, "e4"), "t", false), Push::Duplicate);
        assert_eq!(c.push(ev(5, "e5"), "t", false), Push::Queued);
        assert_eq!(drain(&c).0, ["welcome", "e2", "e3", "e4", "e5"]);
    }

    #[test]
    fn overflow_closes_with_4008_and_drops_the_queue() {
        let hub = Hub::new("n".into(), Metrics::new());
        let c = live(&hub, "c1", 2);
        drain(&c);
        hub.subscribe(&c, "t");
        assert_eq!(c.push(ev(1, "a"), "t", false), Push::Queued);
        assert_eq!(hub.deliver("t", &ev(2, "b"), &[]), 1);
        assert_eq!(
            hub.deliver("t", &ev(3, "c"), &[]),
            0,
            "third frame overflows a queue of 2"
        );
        let (frames, close) = drain(&c);
        assert_eq!(close, Some(CloseCode::SlowConsumer));
        assert!(frames.is_empty());
    }

    #[test]
    fn pattern_and_exact_subscriber_gets_one_copy() {
        let hub = Hub::new("n".into(), Metrics::new());
        let a = live(&hub, "a", 10);
        let b = live(&hub, "b", 10);
        assert!(hub.subscribe(&a, "project:1"));
        assert!(hub.subscribe(&a, "project:*"));
        assert!(!hub.subscribe(&b, "project:*"));
        assert_eq!(hub.deliver("project:1", &OutFrame::control("x"), &[]), 2);
        assert_eq!(drain(&a).0, ["welcome", "x"]);
        assert_eq!(hub.deliver("project:1", &OutFrame::control("y"), &["b"]), 1);
        assert!(!hub.unsubscribe(&a, "project:*"));
        assert!(hub.unsubscribe(&b, "project:*"), "last subscriber leaves the pattern");
        assert_eq!(hub.remove(&a), vec![Arc::<str>::from("project:1")]);
    }

    fn on(id: u64, channel: &str) -> OutFrame {
        ev(id, &format!("{channel}#{id}"))
    }

    #[test]
    fn a_catch_up_on_one_channel_never_drops_older_live_events_of_another() {
        // The socket has chat:1 up to 10; pub/sub lags, so chat:1 events 11..=14 are still on
        // their way when a subscribe to doc:9 reads history up to the snapshot 15.
        let hub = Hub::new("n".into(), Metrics::new());
        let c = live(&hub, "c", 100);
        hub.subscribe(&c, "chat:1");
        assert_eq!(c.push(on(10, "chat:1"), "chat:1", false), Push::Queued);
        drain(&c);
        c.begin_replay();
        hub.subscribe(&c, "doc:9");
        // The broker's sync lets the lagging events through before the snapshot is used.
        for id in 11..=14 {
            assert_eq!(c.push(on(id, "chat:1"), "chat:1", false), Push::Queued);
        }
        let n = c.finish_replay(
            |n| OutFrame::control(format!("subscribed:{n}")),
            vec![on(3, "doc:9"), on(15, "doc:9")],
            Some(EventId::new(15, 0)),
            Some("doc:9"),
        );
        assert_eq!(n, 2);
        assert_eq!(c.push(on(15, "doc:9"), "doc:9", false), Push::Duplicate);
        assert_eq!(c.push(on(16, "chat:1"), "chat:1", false), Push::Queued);
        assert_eq!(
            drain(&c).0,
            [
                "subscribed:2",
                "doc:9#3",
                "chat:1#11",
                "chat:1#12",
                "chat:1#13",
                "chat:1#14",
                "doc:9#15",
                "chat:1#16"
            ]
        );
    }

    #[test]
    fn a_future_last_event_id_does_not_hold_live_events_back() {
        let c = Connection::new(Arc::from("c"), Arc::from("u"), 100, Some(EventId::new(1_000, 0)));
        c.finish_replay(|_| OutFrame::control("welcome"), vec![], Some(EventId::new(20, 0)), None);
        assert_eq!(c.push(on(21, "t"), "t", false), Push::Queued);
        assert_eq!(drain(&c).0, ["welcome", "t#21"]);
    }

    #[test]
    fn a_pattern_is_exact_from_its_snapshot_and_a_catch_up_skips_what_it_brought() {
        let hub = Hub::new("n".into(), Metrics::new());
        let c = live(&hub, "c", 100);
        c.begin_replay();
        hub.subscribe(&c, "t:*");
        // Lagging events from before the snapshot reach the socket through the new pattern.
        assert_eq!(c.push(on(4, "t:1"), "t:1", true), Push::Queued);
        c.finish_replay(|_| OutFrame::control("psubscribed"), vec![], Some(EventId::new(5, 0)), None);
        for id in 6..=8 {
            assert_eq!(c.push(on(id, "t:1"), "t:1", true), Push::Queued);
        }
        assert_eq!(drain(&c).0, ["welcome", "psubscribed", "t:1#6", "t:1#7", "t:1#8"]);
        // Now t:1 by name, from id 2: 3..=5 are missing, 6..=8 came through the pattern.
        c.begin_replay();
        hub.subscribe(&c, "t:1");
        let replay = (3..=9).map(|id| on(id, "t:1")).collect();
        let n = c.finish_replay(
            |n| OutFrame::control(format!("subscribed:{n}")),
            replay,
            Some(EventId::new(9, 0)),
            Some("t:1"),
        );
        assert_eq!(n, 4);
        assert_eq!(drain(&c).0, ["subscribed:4", "t:1#3", "t:1#4", "t:1#5", "t:1#9"]);
    }

    #[test]
    fn a_repair_gap_names_channels_and_patterns_once_per_socket() {
        let hub = Hub::new("n".into(), Metrics::new());
        let a = live(&hub, "a", 10);
        let b = live(&hub, "b", 10);
        drain(&a);
        drain(&b);
        hub.subscribe(&a, "t:1");
        hub.subscribe(&a, "t:*");
        hub.subscribe(&b, "t:*");
        assert_eq!(hub.send_gap(&[Arc::from("t:1"), Arc::from("t:2")]), 2);
        assert_eq!(
            drain(&a).0,
            [r#"{"type":"gap","channels":["t:1","t:*"],"recovered":false}"#]
        );
        assert_eq!(drain(&b).0, [r#"{"type":"gap","channels":["t:*"],"recovered":false}"#]);
    }
}

