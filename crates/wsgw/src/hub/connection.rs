//! hub/connection.rs: one socket as the hub sees it: its bounded outbox and the dedup floors
//! that keep the exactness invariant. Never awaits a socket write: an event is written straight
//! to the socket when nothing is queued for it and the kernel takes it whole (`push`);
//! everything else waits in the outbox, which the session's task writes out (`flush`,
//! connection_write.rs), several frames per write. On a socket that negotiated
//! permessage-deflate, a large enough text frame goes compressed: its compressed bytes are
//! computed once per window size and shared by every recipient (`Deflated`). A replay's merge
//! into the live stream is in connection_replay.rs, the backend requests a socket waits on in
//! connection_requests.rs.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use wsgw_protocol::{CloseCode, EventId, classify, glob_match};

use super::deflated::DeflateOut;
pub use super::deflated::Deflated;
use super::floors::Floors;
use crate::time::now_ms;

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

/// `since` of a pattern whose subscription is still being confirmed: nothing passes yet.
pub(super) const PENDING: EventId = EventId::new(u64::MAX, u64::MAX);

/// The socket's side of the exactness invariant (docs/protocol.md, "Exactness"): every durable
/// event of every channel it is subscribed to, once, in id order per channel.
///
/// The live stream (the node's one pub/sub connection, the memory broker's lock, an outage
/// repair) reaches a socket in id order within each id-shard (a single-primary deployment has
/// one sequence), so one floor per shard (`floors`) drops what it already has. A replay breaks
/// that order for one channel only, and only while live frames are held (`replay`):
/// `finish_replay` merges the two runs by id and moves the floors to the broker's snapshot,
/// after which the stream is in order again. No per-channel state is kept.
pub(super) struct Outbox {
    queue: VecDeque<OutFrame>,
    /// Bytes of text in `queue`.
    bytes: usize,
    /// Highest durable id passed on from the live stream, per shard; live events at or below
    /// their shard's floor are ones the socket already has.
    pub(super) floors: Floors,
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
        if self.floors.of(id).is_some_and(|f| id <= f) {
            return false;
        }
        self.floors.raise(id);
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
            self.bytes = f.payload().len();
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

/// Writes `frame` straight to the socket, without waking its task, when nothing is being
/// written: `Some(bytes)` when the kernel took all of it. Otherwise the caller queues it, and
/// what the kernel took of it is recorded (`sent`) for the task to write the rest.
fn write_now(ob: &mut Outbox, frame: &mut Cow<'_, OutFrame>) -> Option<usize> {
    if ob.writing {
        return None;
    }
    let tcp = ob.wire.as_deref()?;
    if ob.deflate.wants_cache(frame) {
        ob.deflate.prepare(frame.to_mut());
    }
    let wire = frame.wire(ob.deflate.window);
    let total = wire.len();
    // `send(2)` on the socket itself, not through tokio's `try_write`: a fan-out never waits for
    // writability, so it need not read the socket's readiness, one more cache line per socket
    // (`Registration::try_io` was 3.9% of a node's CPU at 20 broadcasts a second to 5,000
    // sockets). A would-block leaves tokio's readiness as it was: the task's next write sees the
    // would-block itself, and only then waits.
    match socket2::SockRef::from(tcp).send(wire) {
        Ok(n) if n == total => Some(total),
        // The kernel took part of it: the task writes the rest when it can.
        Ok(n) => {
            ob.sent = n;
            None
        }
        // Would block, or failed: the task finds out which.
        Err(_) => None,
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
    /// What the node-wide tick reads (connection_tick.rs), in the hub's table once the socket is
    /// registered (tick_table.rs).
    pub(in crate::hub) tick: TickRef,
    capacity: usize,
    /// Bytes the queue may hold (`WSGW_SEND_QUEUE_BYTES`).
    capacity_bytes: usize,
    pub(super) outbox: Mutex<Outbox>,
    /// Wakes the socket's task when something is queued or a close is requested.
    wake: Notify,
    /// Wakes only on a close request: a write stuck on a full socket waits on this one, so it
    /// never consumes a wake-up meant for the task's main loop.
    close_wake: Notify,
    /// The per-core runtime the session runs on (`WSGW_RUNTIME=per_core`), whose fan-out lane
    /// offers it every frame (hub/core_fanout.rs).
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
    /// The socket's key in the hub: unique for the process's life, unlike its id, which a
    /// resume can pass to a newer socket.
    pub fn key(&self) -> u64 {
        self.key
    }

    /// A connection in replay mode: live frames are held back until [`Connection::finish_replay`].
    /// `last_event_id`: the client's position, at most one id per shard.
    pub fn new(id: Arc<str>, user_id: Arc<str>, capacity: usize, last_event_id: &[EventId]) -> Self {
        let now = now_ms();
        Self {
            key: 0,
            id,
            user_id,
            connected_at_ms: now,
            tick: TickRef::own(),
            capacity: capacity.max(1),
            capacity_bytes: usize::MAX,
            outbox: Mutex::new(Outbox {
                queue: VecDeque::new(),
                bytes: 0,
                floors: Floors::at(last_event_id),
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

    /// Channels and patterns this connection is in.
    pub fn channels(&self) -> Vec<Arc<str>> {
        self.channels.lock().clone()
    }

    /// `f` of the channels and patterns this connection is in, read in place (under the lock,
    /// so `f` must not block).
    pub fn with_channels<R>(&self, f: impl FnOnce(&[Arc<str>]) -> R) -> R {
        f(&self.channels.lock())
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

    /// Offers a live frame published on `channel`, reaching this socket through its exact
    /// subscription or (`via_pattern`) only through patterns. Never blocks on the socket.
    pub fn push(&self, frame: OutFrame, channel: &str, via_pattern: bool) -> Push {
        self.offer(Cow::Owned(frame), channel, via_pattern, true, false)
    }

    /// `push`, written straight to the socket only if `direct` (and nothing is queued). With
    /// `defer`, a frame queued into an empty queue does not wake the socket's task
    /// (`Push::Waiting`): the burst's end (burst.rs) writes it. A fan-out
    /// lends its frame: it is cloned only when queued, so a frame written straight to the
    /// socket costs no reference count on the shared payload.
    pub fn offer(
        &self,
        mut frame: Cow<'_, OutFrame>,
        channel: &str,
        via_pattern: bool,
        direct: bool,
        defer: bool,
    ) -> Push {
        if let Some(tag) = &frame.response {
            self.response_seen(tag);
        }
        let mut ob = self.outbox.lock();
        if ob.close.is_some() {
            return Push::Closed;
        }
        if ob.replay.is_some() {
            return self.hold(ob, frame.into_owned(), channel, via_pattern);
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
            && let Some(total) = write_now(&mut ob, &mut frame)
        {
            return Push::Sent(total);
        }
        ob.bytes += frame.payload().len();
        ob.queue.push_back(frame.into_owned());
        drop(ob);
        if was_empty {
            if defer {
                return Push::Waiting;
            }
            self.wake.notify_one();
        }
        Push::Queued
    }

    /// Wakes the socket's task to write its queue (after a `Push::Waiting` that the burst's end
    /// could not finish).
    pub fn wake_writer(&self) {
        self.wake.notify_one();
    }

    /// Asks the CPU for the lines `offer` reads first (hub/prefetch.rs): the queue's limits,
    /// the outbox's lock and first fields, and `wake`, which the compiler places right after
    /// the outbox today, beside its last fields (the close and `writing` flags). Field order is
    /// the compiler's, so this is a hint in layout as well: another order costs only the gain.
    #[inline(always)]
    pub(super) fn warm(&self) {
        super::prefetch::line(&self.capacity);
        super::prefetch::line(&self.outbox);
        super::prefetch::line(&self.wake);
    }

    /// The per-core runtime this connection's session runs on (0 outside `per_core`).
    pub fn core(&self) -> usize {
        self.core as usize
    }

    /// Queues a control frame (answer, error, ping, gap) even during a subscribe's replay:
    /// control frames are not ordered against events. Before the welcome (a connect's replay)
    /// it is held and follows the welcome, which is always the first frame. Still bounded by the
    /// queue.
    pub fn push_control(&self, frame: OutFrame) -> Push {
        self.queue_control(Cow::Owned(frame), false, false)
    }

    /// `push_control`, written straight to the socket when nothing is queued for it (the
    /// tick's shared ping): no wake-up of its task, and no queue to allocate and give back.
    pub fn send_control(&self, frame: &OutFrame) -> Push {
        self.queue_control(Cow::Borrowed(frame), false, true)
    }

    /// Queues a `gap` frame in order with the live events: during any replay it is held with
    /// them, so it reaches the client after the events the node passed on before it and before
    /// the ones after (a client recovers from the last id it has when the `gap` comes).
    pub fn push_gap(&self, frame: OutFrame) -> Push {
        self.queue_control(Cow::Owned(frame), true, false)
    }

    /// Queues a frame without an id; `in_order`: held with the live events during any replay,
    /// else only during the welcome's; `direct`: written at once when nothing is queued.
    fn queue_control(&self, mut frame: Cow<'_, OutFrame>, in_order: bool, direct: bool) -> Push {
        let mut ob = self.outbox.lock();
        if ob.close.is_some() {
            return Push::Closed;
        }
        if (in_order || !ob.subscribing) && ob.replay.is_some() {
            return self.hold(ob, frame.into_owned(), "", false);
        }
        if ob.queue.len() >= self.capacity || self.over_bytes(&ob, &frame, 0) {
            return self.overflow(ob);
        }
        let was_empty = ob.queue.is_empty();
        if was_empty
            && direct
            && let Some(total) = write_now(&mut ob, &mut frame)
        {
            return Push::Sent(total);
        }
        ob.bytes += frame.payload().len();
        ob.queue.push_back(frame.into_owned());
        drop(ob);
        if was_empty {
            self.wake.notify_one();
        }
        Push::Queued
    }

    /// Holds a frame back until the replay being read ends (`finish_replay`).
    ///
    /// Held by the server, not by a slow reader: a replay waits for the node's pub/sub stream
    /// to pass its snapshot, so it may hold that lag's worth of frames. Bounded all the same
    /// (and by the broker's sync timeout in time).
    fn hold(
        &self,
        mut ob: parking_lot::MutexGuard<'_, Outbox>,
        frame: OutFrame,
        channel: &str,
        via_pattern: bool,
    ) -> Push {
        let len = frame.payload().len();
        let Some(held) = ob.replay.as_ref() else {
            return Push::Closed;
        };
        if held.len() >= self.capacity.saturating_mul(HELD_FACTOR)
            || (!held.is_empty() && ob.held_bytes.saturating_add(len) > self.capacity_bytes.saturating_mul(HELD_FACTOR))
        {
            return self.overflow(ob);
        }
        ob.held_bytes += len;
        if let Some(held) = ob.replay.as_mut() {
            held.push(Held {
                frame,
                channel: Arc::from(channel),
                via_pattern,
            });
        }
        Push::Queued
    }

    /// Whether queuing `frame` would take the queue over its byte bound (plus `room`). A frame
    /// larger than the bound still goes into an empty queue.
    fn over_bytes(&self, ob: &Outbox, frame: &OutFrame, room: usize) -> bool {
        !ob.queue.is_empty()
            && ob.bytes.saturating_add(frame.payload().len()) > self.capacity_bytes.saturating_add(room)
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
            ob.bytes += last.payload().len();
            ob.queue.push_back(last);
        }
        self.close(code)
    }

    /// `close_with` that replaces a close requested meanwhile: a connect-time ban refusal wins
    /// over the ban's own kick echoed back on pub/sub while the socket was being checked.
    pub fn refuse_with(&self, last: OutFrame, code: CloseCode) {
        {
            let mut ob = self.outbox.lock();
            ob.bytes += last.payload().len();
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

#[path = "connection_replay.rs"]
mod replay;
pub use replay::CatchUp;
use replay::{HELD_FACTOR, Held};

#[path = "connection_requests.rs"]
mod requests;
use requests::PendingRequest;

#[path = "connection_tick.rs"]
mod tick;
use super::tick_table::TickRef;
pub use tick::TickNow;
pub(super) use tick::TickState;

#[path = "connection_write.rs"]
mod write;
pub use write::{Flush, Written};

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "connection_write_tests.rs"]
mod write_tests;
