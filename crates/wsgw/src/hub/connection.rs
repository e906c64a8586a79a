//! hub/connection.rs: one socket as the hub sees it: its bounded outbox, the dedup floor and
//! replay merge that keep the exactness invariant, and the backend requests it waits on. Never
//! awaits a socket write: an event is written straight to the socket when nothing is queued
//! for it and the kernel takes it whole (`push`); everything else waits in the outbox, which
//! the session's task writes out (`flush`, connection_write.rs), several frames per write. On a socket that negotiated
//! permessage-deflate, a large enough text frame goes compressed: its compressed bytes are
//! computed once per window size and shared by every recipient (`Deflated`).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use wsgw_protocol::{CloseCode, EventId, classify, glob_match};

use super::deflated::DeflateOut;
pub use super::deflated::Deflated;
use crate::time::{mono_ms, now_ms};

#[derive(Debug)]
struct PendingRequest {
    key: String,
    request_id: serde_json::Value,
    deadline_ms: u64,
    timeout_ms: u64,
}

/// What happened to a frame offered to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued (or buffered behind a replay).
    Queued,
    /// Queued into an empty queue without waking the socket's task (the caller asked to
    /// defer): the caller must flush the connection, or wake its task with `wake_writer`.
    Waiting,
    /// Written to the socket at once, whole: this many bytes on the wire (header and payload,
    /// compressed if the socket negotiated compression).
    Sent(usize),
    /// Already sent or queued (same or older event id): dropped on purpose.
    Duplicate,
    /// The queue was full: the connection is now closing with 4008.
    Overflow,
    /// The connection is closing; nothing more is queued.
    Closed,
}

/// A subscribe's catch-up: the channel, and the first id it covers (`last_event_id`'s
/// successor, or a `history` window's first event).
#[derive(Debug, Clone, Copy)]
pub struct CatchUp<'a> {
    /// The channel subscribed to.
    pub channel: &'a str,
    /// Events of it below this id are not what the client asked for.
    pub from: EventId,
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
pub(super) const PENDING: EventId = EventId::new(u64::MAX, u64::MAX);

/// The socket's side of the exactness invariant (docs/protocol.md, "Exactness"): every durable
/// event of every channel it is subscribed to, once, in id order per channel.
///
/// The live stream (the node's one pub/sub connection, the memory broker's lock, an outage
/// repair) reaches a socket in global id order, so one `floor` per socket drops what it already
/// has. A replay breaks that order for one channel only, and only while live frames are held
/// (`replay`): `finish_replay` merges the two runs by id and moves the floor to the broker's
/// snapshot, after which the stream is in global order again. No per-channel state is kept.
pub(super) struct Outbox {
    queue: VecDeque<OutFrame>,
    /// Bytes of text in `queue`.
    bytes: usize,
    /// Highest durable id passed on from the live stream; live events at or below it are ones
    /// the socket already has.
    floor: Option<EventId>,
    /// Pattern subscriptions, each with the snapshot after which it is exact. A durable event
    /// reaching the socket only through patterns passes when one of them covers its id. Empty
    /// on sockets without patterns.
    pub(super) patterns: Vec<(Arc<str>, EventId)>,
    /// Some while a replay is being read: live frames wait here so they merge with the replay.
    replay: Option<Vec<Held>>,
    /// The replay is a `subscribe`'s, not the welcome's: its head need not be the first frame.
    subscribing: bool,
    /// Bytes of text held in `replay`.
    held_bytes: usize,
    /// Room granted on top of the capacity for a replay still being written, so a long replay
    /// does not make the next live frame look like a slow consumer.
    replay_room: usize,
    /// The same room in bytes.
    replay_room_bytes: usize,
    close: Option<CloseCode>,
    /// The socket, once its session serves: events are written straight to it when nothing
    /// is queued.
    wire: Option<Arc<TcpStream>>,
    /// Bytes of the first queued frame (header and payload) already written.
    sent: usize,
    /// The session's task is writing frames it took from the queue (see `Connection::flush`).
    writing: bool,
    /// The queue was dropped while `writing`: the write's end decides what is left of it.
    dropped: bool,
    /// permessage-deflate, if negotiated.
    deflate: DeflateOut,
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

    /// Drops what is queued, except the rest of a frame already partly written (the close
    /// frame that follows must not land inside it).
    fn drop_queue(&mut self) {
        if self.writing {
            self.dropped = true;
        }
        let keep = if self.sent > 0 && !self.writing {
            self.queue.pop_front()
        } else {
            None
        };
        self.queue.clear();
        self.bytes = 0;
        if let Some(f) = keep {
            self.bytes = f.payload.len();
            self.queue.push_back(f);
        }
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
    pub(super) key: u64,
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
    /// Bytes the queue may hold (`WSGW_SEND_QUEUE_BYTES`).
    capacity_bytes: usize,
    pub(super) outbox: Mutex<Outbox>,
    /// Wakes the socket's task when something is queued or a close is requested.
    wake: Notify,
    /// Wakes only on a close request: a write stuck on a full socket waits on this one, so it
    /// never consumes a wake-up meant for the task's main loop.
    close_wake: Notify,
    /// The per-core runtime the session runs on (`WSGW_RUNTIME=per_core`), whose flusher
    /// writes what a fan-out queued.
    core: u16,
    pub(super) channels: Mutex<Vec<Arc<str>>>,
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
            last_seen_ms: AtomicU64::new(mono_ms()),
            token_exp_s: AtomicU64::new(0),
            capacity: capacity.max(1),
            capacity_bytes: usize::MAX,
            outbox: Mutex::new(Outbox {
                queue: VecDeque::new(),
                bytes: 0,
                floor: last_event_id,
                patterns: Vec::new(),
                replay: Some(Vec::new()),
                subscribing: false,
                held_bytes: 0,
                replay_room: 0,
                replay_room_bytes: 0,
                close: None,
                wire: None,
                sent: 0,
                writing: false,
                dropped: false,
                deflate: DeflateOut::default(),
            }),
            wake: Notify::new(),
            close_wake: Notify::new(),
            core: crate::cores::current().unwrap_or(0) as u16,
            channels: Mutex::new(Vec::new()),
            pending: Mutex::new(Vec::new()),
            replaced: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Bounds the queue by bytes as well as frames (`WSGW_SEND_QUEUE_BYTES`; 0: frames only).
    pub fn with_byte_capacity(mut self, bytes: usize) -> Self {
        self.capacity_bytes = if bytes == 0 { usize::MAX } else { bytes };
        self
    }

    /// Compresses text frames of at least `min_bytes` with a `window`-bit window (the
    /// socket negotiated permessage-deflate). Set before the session serves.
    pub fn with_deflate(mut self, window: u8, min_bytes: usize) -> Self {
        self.outbox.get_mut().deflate = DeflateOut {
            window: window.clamp(9, 15),
            min_bytes: u32::try_from(min_bytes).unwrap_or(u32::MAX),
        };
        self
    }

    /// Records that the client showed a sign of life.
    pub fn touch(&self) {
        self.last_seen_ms.store(mono_ms(), Ordering::Relaxed);
    }

    /// Last sign of life, on the monotonic clock ([`crate::time::mono_ms`]).
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

    /// How many topics and patterns it subscribed to itself (what `WSGW_MAX_SUBSCRIPTIONS` caps).
    pub fn topic_count(&self) -> usize {
        self.channels
            .lock()
            .iter()
            .filter(|c| classify(c).is_explicit())
            .count()
    }

    /// How many patterns it subscribed to (what `WSGW_MAX_PATTERNS` caps).
    pub fn pattern_count(&self) -> usize {
        self.channels.lock().iter().filter(|c| c.contains('*')).count()
    }

    /// Whether this connection is subscribed to exactly `channel`.
    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.channels.lock().iter().any(|c| &**c == channel)
    }

    /// Closes this socket (4010) because a newer one took its connection id over.
    pub fn replace(&self) {
        self.replaced.store(true, Ordering::Release);
        self.close(CloseCode::Replaced);
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
            deadline_ms: mono_ms().saturating_add(timeout_ms),
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
                p[pos].deadline_ms = mono_ms().saturating_add(p[pos].timeout_ms);
            } else {
                p.swap_remove(pos);
            }
        }
    }

    /// Offers a live frame published on `channel`, reaching this socket through its exact
    /// subscription or (`via_pattern`) only through patterns. Never blocks on the socket.
    pub fn push(&self, frame: OutFrame, channel: &str, via_pattern: bool) -> Push {
        self.offer(frame, channel, via_pattern, true, false)
    }

    /// `push`, written straight to the socket only if `direct` (and nothing is queued). With
    /// `defer`, a frame queued into an empty queue does not wake the socket's task
    /// (`Push::Waiting`): a per-core flusher writes it (`WSGW_RUNTIME=per_core`).
    pub fn offer(&self, mut frame: OutFrame, channel: &str, via_pattern: bool, direct: bool, defer: bool) -> Push {
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
            let len = frame.payload.len();
            if held.len() >= self.capacity.saturating_mul(HELD_FACTOR)
                || (!held.is_empty()
                    && ob.held_bytes.saturating_add(len) > self.capacity_bytes.saturating_mul(HELD_FACTOR))
            {
                return self.overflow(ob);
            }
            ob.held_bytes += len;
            let Some(held) = ob.replay.as_mut() else {
                return Push::Closed;
            };
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
        if ob.queue.len() >= self.capacity + ob.replay_room || self.over_bytes(&ob, &frame, ob.replay_room_bytes) {
            return self.overflow(ob);
        }
        let was_empty = ob.queue.is_empty();
        if was_empty
            && direct
            && !ob.writing
            && let Some(tcp) = ob.wire.as_deref()
        {
            // Nothing queued: straight to the socket, without waking its task.
            ob.deflate.prepare(&mut frame);
            let (header, payload) = frame.wire(ob.deflate.window);
            let total = header.as_bytes().len() + payload.len();
            let bufs = [IoSlice::new(header.as_bytes()), IoSlice::new(payload)];
            match tcp.try_write_vectored(&bufs) {
                Ok(n) if n == total => return Push::Sent(total),
                // The kernel took part of it: the task writes the rest when it can.
                Ok(n) => ob.sent = n,
                // Would block, or failed: the task finds out which.
                Err(_) => {}
            }
        }
        ob.bytes += frame.payload.len();
        ob.queue.push_back(frame);
        drop(ob);
        if was_empty {
            if defer {
                return Push::Waiting;
            }
            self.wake.notify_one();
        }
        Push::Queued
    }

    /// Wakes the socket's task to write its queue (after a `Push::Waiting` that no flusher
    /// could finish).
    pub fn wake_writer(&self) {
        self.wake.notify_one();
    }

    /// The per-core runtime this connection's session runs on (0 outside `per_core`).
    pub fn core(&self) -> usize {
        self.core as usize
    }

    /// Queues a control frame (answer, error, ping) even during a replay: control frames are
    /// not ordered against events. Still bounded by the queue.
    pub fn push_control(&self, frame: OutFrame) -> Push {
        let mut ob = self.outbox.lock();
        if ob.close.is_some() {
            return Push::Closed;
        }
        if ob.queue.len() >= self.capacity || self.over_bytes(&ob, &frame, 0) {
            return self.overflow(ob);
        }
        let was_empty = ob.queue.is_empty();
        ob.bytes += frame.payload.len();
        ob.queue.push_back(frame);
        drop(ob);
        if was_empty {
            self.wake.notify_one();
        }
        Push::Queued
    }

    /// Whether queuing `frame` would take the queue over its byte bound (plus `room`). A frame
    /// larger than the bound still goes into an empty queue.
    fn over_bytes(&self, ob: &Outbox, frame: &OutFrame, room: usize) -> bool {
        !ob.queue.is_empty() && ob.bytes.saturating_add(frame.payload.len()) > self.capacity_bytes.saturating_add(room)
    }

    fn overflow(&self, mut ob: parking_lot::MutexGuard<'_, Outbox>) -> Push {
        ob.drop_queue();
        ob.replay = None;
        ob.held_bytes = 0;
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
            ob.subscribing = true;
            ob.held_bytes = 0;
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
    ///   the broker's `sync` saw every live event up to it reach the hub. So once
    ///   merged, the floor moves to `position` and the live stream is in global order again.
    /// - `catch_up` names the one channel of a subscribe catch-up. Its replayed events may be
    ///   older than what the socket already has on other channels (that is the catch-up); the
    ///   ones its patterns already brought are skipped, and held live frames of that channel
    ///   from before the catch-up's start are dropped (the client asked to start there).
    /// - Patterns subscribed in this replay become exact after `position`. For a subscribe
    ///   without a catch-up (a pattern's, which only takes the snapshot), the held frames at or
    ///   below `position` go before `head`: they came through what the socket already followed,
    ///   so after a pattern's `subscribed` frame every event is one the pattern covers. A client
    ///   that later drops the channel's name and keeps the pattern then keeps exactly the events
    ///   the gateway counts as the pattern's (a catch-up skips those, and only those).
    pub fn finish_replay(
        &self,
        head: impl FnOnce(u64) -> OutFrame,
        replayed: Vec<OutFrame>,
        position: Option<EventId>,
        catch_up: Option<CatchUp<'_>>,
    ) -> usize {
        let channel = catch_up.map(|c| c.channel);
        let mut ob = self.outbox.lock();
        let Some(held) = ob.replay.take() else {
            // Closed (overflow) while replaying: nothing to do.
            return 0;
        };
        ob.held_bytes = 0;
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
        let mut held = held.into_iter().peekable();
        if ob.subscribing
            && catch_up.is_none()
            && let Some(s) = position
        {
            while let Some(h) = held.next_if(|h| h.frame.event_id.is_none_or(|id| id <= s)) {
                if h.frame
                    .event_id
                    .is_none_or(|id| ob.admit(id, &h.channel, h.via_pattern))
                {
                    ob.queue.push_back(h.frame);
                }
            }
        }
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
            if let Some(c) = catch_up
                && *h.channel == *c.channel
                && id < c.from
                && covered.is_none_or(|s| id <= s)
            {
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
        ob.bytes = ob.queue.iter().map(|f| f.payload.len()).sum();
        ob.replay_room_bytes = ob.bytes;
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
            ob.drop_queue();
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
            ob.bytes += last.payload.len();
            ob.queue.push_back(last);
        }
        self.close(code)
    }

    /// `close_with` that replaces a close requested meanwhile: a connect-time ban refusal wins
    /// over the ban's own kick echoed back on pub/sub while the socket was being checked.
    pub fn refuse_with(&self, last: OutFrame, code: CloseCode) {
        {
            let mut ob = self.outbox.lock();
            ob.bytes += last.payload.len();
            ob.queue.push_back(last);
            ob.replay = None;
            ob.close = Some(code);
        }
        self.wake.notify_one();
        self.close_wake.notify_one();
    }

    /// Moves everything queued into `out`; returns the close request, if any (tests: a socket
    /// without a session).
    #[cfg(test)]
    pub fn take_batch(&self, out: &mut Vec<OutFrame>) -> Option<CloseCode> {
        let mut ob = self.outbox.lock();
        out.extend(ob.queue.drain(..));
        ob.bytes = 0;
        ob.sent = 0;
        ob.replay_room = 0;
        ob.replay_room_bytes = 0;
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

#[path = "out_frame.rs"]
mod out_frame;
pub use out_frame::{OutFrame, ResponseTag};

#[path = "connection_write.rs"]
mod write;
pub use write::{Flush, Written};

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "connection_write_tests.rs"]
mod write_tests;
