//! hub/burst.rs: fan-outs of several frames that were waiting together (a node behind on its
//! pub/sub input). A burst's fan-outs queue each frame without waking anyone; when the burst
//! ends, the fan-out loop writes each socket's frames of the whole burst in one write. That is
//! one write per socket for the burst instead of one write, or one task wake-up, per frame: the
//! batching that lets a node catch up instead of falling further behind. A socket the kernel does
//! not take everything from gets its own task woken, as after any queued frame.
//!
//! One exception: a small fan-out (its first `DIRECT_FANOUT` sockets, hub/mod.rs) writes a
//! socket's first frame of the burst at once when nothing is queued for it, as outside a burst.
//! Targeted events (one socket each) arrive two or three to a read at a few thousand a second,
//! each for another socket: queued, each cost a queue, a second pass over the socket and its
//! queue's memory back, with nothing to batch (docs/loadtest.md, section 19). The socket's later
//! frames of the burst still wait for its end, so a socket that many frames of one burst are for
//! gets one write more than it would with all of them queued, not one per frame.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Connection, Flush, Hub, Written};
use crate::metrics::Metrics;

/// Sockets a burst queued frames for without waking their tasks (all of one core).
pub type FlushBatch = Vec<Arc<Connection>>;

/// At most this many frames in one burst.
const MAX_FRAMES: usize = 64;
/// At most this many bytes of frame text in one burst.
const MAX_BYTES: usize = 1 << 20;
/// At most this many sockets a burst writes a frame to at once (small fan-outs only); past them
/// it queues every frame, so checking the list stays short.
const MAX_WRITTEN_AT_ONCE: usize = 64;
/// At most this many items in one `drain_waiting`.
const MAX_DRAIN: usize = 256;
/// A `drain_waiting` takes no further item after this long, so the pub/sub reader gets back to
/// its commands (a socket's `subscribe` waits for one) even when each fan-out is slow.
const MAX_DRAIN_TIME: Duration = Duration::from_millis(200);

/// The sockets one burst queued frames for, and what it holds.
pub struct Burst {
    waiting: Vec<FlushBatch>,
    /// The sockets it wrote a frame to at once: their later frames wait for its end.
    written: Vec<u64>,
    frames: usize,
    bytes: usize,
    max_frames: usize,
    max_bytes: usize,
}

impl Burst {
    /// Whether a frame of `len` bytes may join: a burst stays a small part of a socket's queue
    /// bounds (a quarter of each), so it never closes a socket that direct writes would not.
    fn has_room(&self, len: usize) -> bool {
        self.frames < self.max_frames && self.bytes.saturating_add(len) <= self.max_bytes
    }

    /// Counts a frame of `len` bytes in.
    fn add(&mut self, len: usize) {
        self.frames += 1;
        self.bytes += len;
    }

    /// Lends a fan-out the sockets this burst wrote to at once ([`may_write_at_once`]); `absorb`
    /// takes them back.
    pub(super) fn lend_written(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.written)
    }

    /// Takes over what one fan-out of the burst queued, and the sockets it wrote to at once.
    pub(super) fn absorb(&mut self, waiting: Vec<FlushBatch>, written: Vec<u64>) {
        self.written = written;
        if self.waiting.len() < waiting.len() {
            self.waiting.resize_with(waiting.len(), Vec::new);
        }
        for (core, batch) in waiting.into_iter().enumerate() {
            self.waiting[core].extend(batch);
        }
    }
}

impl Hub {
    /// Bounds the bursts this hub hands out by the sockets' queue bounds (`send_queue`,
    /// `send_queue_bytes`; 0 bytes: by frames only).
    pub fn with_burst_bounds(mut self, send_queue: usize, send_queue_bytes: usize) -> Self {
        self.burst_bounds = (
            (send_queue / 4).clamp(1, MAX_FRAMES),
            match send_queue_bytes {
                0 => MAX_BYTES,
                b => (b / 4).clamp(1, MAX_BYTES),
            },
        );
        self
    }

    /// A new, empty burst: pass it to the fan-outs of frames that were waiting together, then to
    /// [`Hub::end_burst`].
    pub fn burst(&self) -> Burst {
        Burst {
            waiting: Vec::new(),
            written: Vec::new(),
            frames: 0,
            bytes: 0,
            max_frames: self.burst_bounds.0,
            max_bytes: self.burst_bounds.1,
        }
    }

    /// Hands `first`, then every item already waiting behind it, to `handle`. `next` says what
    /// waits: `Some(Some(item))`, `Some(None)` when the source ended, `None` when nothing does.
    /// Several items together (the node is behind) go in bursts of the bounds above, each ended
    /// (written) before the next begins; `len` is an item's frame size. Returns after at most
    /// `MAX_DRAIN` items or `MAX_DRAIN_TIME`, so the caller's other work is not starved; false
    /// when the source ended.
    pub fn drain_waiting<T>(
        &self,
        first: T,
        mut next: impl FnMut() -> Option<Option<T>>,
        len: impl Fn(&T) -> usize,
        mut handle: impl FnMut(T, Option<&mut Burst>),
    ) -> bool {
        let mut burst: Option<Burst> = None;
        let mut item = first;
        let mut handled = 0;
        let started = Instant::now();
        loop {
            handled += 1;
            let more = if handled < MAX_DRAIN && started.elapsed() < MAX_DRAIN_TIME {
                next()
            } else {
                None
            };
            if more.is_some() && burst.is_none() {
                burst = Some(self.burst());
            }
            if let Some(b) = burst.as_mut() {
                let n = len(&item);
                if b.frames > 0 && !b.has_room(n) {
                    self.end_burst(std::mem::replace(b, self.burst()));
                }
                b.add(n);
            }
            handle(item, burst.as_mut());
            match more {
                Some(Some(waiting)) => item = waiting,
                end => {
                    if let Some(b) = burst {
                        self.end_burst(b);
                    }
                    return end.is_none();
                }
            }
        }
    }

    /// Writes what a burst queued: each socket's frames in one write. A socket whose kernel
    /// buffer is full gets its task woken.
    ///
    /// All from this thread: splitting a burst of thousands of sockets into a share per worker
    /// thread (a task each) cost more CPU and latency on 2 cores (docs/loadtest.md, "Bursts").
    /// With per-core runtimes each core runs its own bursts (core_fanout.rs).
    pub fn end_burst(&self, burst: Burst) {
        self.metrics.burst_frames.inc_by(burst.frames as u64);
        for sockets in &burst.waiting {
            flush_all(sockets, &self.metrics);
        }
    }
}

/// Whether a burst that wrote at once to the sockets `written` may write a frame to socket `key`
/// at once: only its first of the burst, and only while the list is short.
pub(super) fn may_write_at_once(written: &[u64], key: u64) -> bool {
    written.len() < MAX_WRITTEN_AT_ONCE && !written.contains(&key)
}

/// Writes each socket's queue and counts the writes in the metrics.
fn flush_all(sockets: &[Arc<Connection>], metrics: &Metrics) {
    let mut written = Written::default();
    for c in sockets {
        flush_or_wake(c, &mut written);
    }
    written.record(metrics);
}

/// Writes a socket's queue from the caller's thread; wakes its task for what the kernel does not
/// take.
fn flush_or_wake(c: &Arc<Connection>, written: &mut Written) {
    match c.flush(written).0 {
        Flush::Done | Flush::Busy => {}
        Flush::Blocked | Flush::Failed => c.wake_writer(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::{TcpListener, TcpStream};
    use wsgw_protocol::EventId;

    use super::*;
    use crate::hub::direct::DirectBudget;
    use crate::hub::test_wire::read_texts;
    use crate::hub::{DIRECT_FANOUT, OutFrame};

    const MANY: usize = 500;

    /// A socket on `hub`, subscribed to `t`, with the client end of its TCP connection.
    async fn socket(hub: &Hub, id: &str) -> (Arc<Connection>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let c = Connection::new(Arc::from(id), Arc::from("u"), 100, &[]);
        c.finish_replay(|_| OutFrame::control("w"), Vec::new(), &[], None);
        c.attach(Arc::new(server));
        assert_eq!(c.flush(&mut Written::default()).0, Flush::Done, "the welcome");
        let c = hub.register(c);
        hub.subscribe(&c, "t");
        (c, client)
    }

    /// `n` sockets on `hub`, each subscribed to `t`, with their clients.
    async fn sockets(hub: &Hub, n: usize) -> Vec<(Arc<Connection>, TcpStream)> {
        let mut all = Vec::new();
        for i in 0..n {
            all.push(socket(hub, &format!("s{i}")).await);
        }
        all
    }

    /// How many of `sockets` have frames queued.
    fn queued(sockets: &[(Arc<Connection>, TcpStream)]) -> usize {
        sockets.iter().filter(|(c, _)| c.queued().0 > 0).count()
    }

    #[tokio::test]
    async fn a_burst_queues_every_frame_and_its_end_writes_them_all_in_order() {
        let metrics = Metrics::new();
        let hub = Hub::new("n".into(), metrics.clone()).with_burst_bounds(1024, 0);
        let (a, mut ca) = socket(&hub, "a").await;
        let (b, mut cb) = socket(&hub, "b").await;
        let mut burst = hub.burst();
        for id in 1..=3 {
            let text = format!("e{id}");
            burst.add(text.len());
            let f = OutFrame::event(text, EventId::new(id, 0), 0);
            assert_eq!(hub.deliver_exact("t", &f, &[], Some(&mut burst)), 2);
        }
        // A small fan-out: the first event went out at once, the other two wait in each queue.
        assert_eq!(a.queued(), (2, false));
        assert_eq!(b.queued(), (2, false));
        assert_eq!(read_texts(&mut ca, 2).await, ["w", "e1"]);
        assert_eq!(read_texts(&mut cb, 2).await, ["w", "e1"]);
        hub.end_burst(burst);
        assert_eq!(a.queued().0, 0, "written from the burst's end");
        assert_eq!(b.queued().0, 0);
        assert_eq!(read_texts(&mut ca, 2).await, ["e2", "e3"]);
        assert_eq!(read_texts(&mut cb, 2).await, ["e2", "e3"]);
        assert_eq!(metrics.frames_out.get(), 6);
        assert_eq!(metrics.burst_frames.get(), 3);
        // Repeats are still dropped, one fan-out or a burst.
        let mut burst = hub.burst();
        let again = OutFrame::event("e3", EventId::new(3, 0), 0);
        assert_eq!(hub.deliver_exact("t", &again, &[], Some(&mut burst)), 0);
        hub.end_burst(burst);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_to_many_sockets_reaches_each_in_order() {
        let metrics = Metrics::new();
        let hub = Hub::new("n".into(), metrics.clone()).with_burst_bounds(1024, 0);
        let mut sockets = sockets(&hub, MANY).await;
        let mut burst = hub.burst();
        for id in 1..=2 {
            let text = format!("e{id}");
            burst.add(text.len());
            let f = OutFrame::event(text, EventId::new(id, 0), 0);
            assert_eq!(hub.deliver_exact("t", &f, &[], Some(&mut burst)), MANY);
        }
        hub.end_burst(burst);
        for (_, client) in sockets.iter_mut() {
            assert_eq!(read_texts(client, 3).await, ["w", "e1", "e2"]);
        }
        assert_eq!(metrics.frames_out.get(), 2 * MANY as u64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_targeted_events_writes_each_sockets_first_one_at_once() {
        let hub = Hub::new("n".into(), Metrics::new()).with_burst_bounds(1024, 0);
        let (a, mut ca) = socket(&hub, "a").await;
        let (b, mut cb) = socket(&hub, "b").await;
        hub.subscribe(&a, "user:a");
        hub.subscribe(&b, "user:b");
        let mut burst = hub.burst();
        for (id, to) in [(1, "user:a"), (2, "user:b"), (3, "user:a"), (4, "user:a")] {
            let f = OutFrame::event(format!("e{id}"), EventId::new(id, 0), 0);
            burst.add(f.payload().len());
            assert_eq!(hub.deliver_exact(to, &f, &[], Some(&mut burst)), 1);
        }
        // Each socket's first event is on its way; a's later two wait for the burst's end.
        assert_eq!(a.queued(), (2, false));
        assert_eq!(b.queued(), (0, false));
        assert_eq!(read_texts(&mut ca, 2).await, ["w", "e1"]);
        assert_eq!(read_texts(&mut cb, 2).await, ["w", "e2"]);
        hub.end_burst(burst);
        assert_eq!(a.queued(), (0, false));
        assert_eq!(read_texts(&mut ca, 2).await, ["e3", "e4"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_to_many_sockets_writes_at_once_to_the_first_few_only() {
        const SOCKETS: usize = 100;
        let hub = Hub::new("n".into(), Metrics::new()).with_burst_bounds(1024, 0);
        let mut sockets = sockets(&hub, SOCKETS).await;
        let mut burst = hub.burst();
        let f = OutFrame::event("e1", EventId::new(1, 0), 0);
        burst.add(2);
        assert_eq!(hub.deliver_exact("t", &f, &[], Some(&mut burst)), SOCKETS);
        assert_eq!(
            queued(&sockets),
            SOCKETS - DIRECT_FANOUT,
            "the first sockets got it at once"
        );
        let f = OutFrame::event("e2", EventId::new(2, 0), 0);
        burst.add(2);
        assert_eq!(hub.deliver_exact("t", &f, &[], Some(&mut burst)), SOCKETS);
        assert_eq!(
            queued(&sockets),
            SOCKETS,
            "a second frame waits for the burst's end everywhere"
        );
        hub.end_burst(burst);
        assert_eq!(queued(&sockets), 0);
        for (_, client) in sockets.iter_mut() {
            assert_eq!(read_texts(client, 3).await, ["w", "e1", "e2"]);
        }
    }

    #[test]
    fn a_burst_writes_at_once_to_a_bounded_list_of_sockets() {
        let written: Vec<u64> = (0..MAX_WRITTEN_AT_ONCE as u64).collect();
        assert!(may_write_at_once(&written[..1], 7));
        assert!(
            !may_write_at_once(&written[..8], 7),
            "its second frame of the burst waits"
        );
        assert!(!may_write_at_once(&written, 1000), "past the bound, every frame waits");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_readers_fan_out_writes_directly_though_the_hub_was_never_idle() {
        const SOCKETS: usize = 200;
        let hub = Hub::new("n".into(), Metrics::new()).with_burst_bounds(1024, 0);
        let mut sockets = sockets(&hub, SOCKETS).await;
        // A hub with nothing left of its idle-time budget (direct.rs).
        let spent = || *hub.direct.lock() = DirectBudget::new(Instant::now() + Duration::from_secs(60));
        spent();
        let f = OutFrame::event("e1", EventId::new(1, 0), 0);
        assert_eq!(hub.deliver_exact("t", &f, &[], None), SOCKETS);
        assert_eq!(queued(&sockets), 0, "the pub/sub reader's fan-out wrote every socket");
        // Any other fan-out pays from that budget: past the first sockets, it queues.
        spent();
        let f = OutFrame::event("e2", EventId::new(2, 0), 0);
        assert_eq!(hub.deliver("t", &f, &[]), SOCKETS);
        assert_eq!(queued(&sockets), SOCKETS - DIRECT_FANOUT);
        for (c, client) in sockets.iter_mut() {
            c.flush(&mut Written::default());
            assert_eq!(read_texts(client, 3).await, ["w", "e1", "e2"]);
        }
    }

    #[test]
    fn a_drain_stops_at_its_item_cap_or_its_time_cap_with_items_still_waiting() {
        let hub = Hub::new("n".into(), Metrics::new());
        // Quick items, more than the cap waiting: MAX_DRAIN of them, and the source stays open.
        let mut handled = 0;
        assert!(hub.drain_waiting(0, || Some(Some(0)), |_| 1, |_, _| handled += 1));
        assert_eq!(handled, MAX_DRAIN);
        // Slow items (each fan-out 50 ms): the time cap ends the drain long before the item
        // cap (MAX_DRAIN of them would take 12.8 s); a loaded machine only makes it fewer.
        let mut handled = 0;
        let slow = |_, _: Option<&mut Burst>| {
            handled += 1;
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(hub.drain_waiting(0, || Some(Some(0)), |_| 1, slow));
        assert!(handled >= 2, "the cap is 200 ms: {handled} items");
        assert!(handled <= 6, "{handled} items of 50 ms in a drain capped at 200 ms");
        // The source's end is reported.
        assert!(!hub.drain_waiting(0, || Some(None), |_| 1, |_, _| {}));
    }

    #[test]
    fn a_burst_holds_a_quarter_of_a_sockets_queue_bounds_at_most() {
        let hub = Hub::new("n".into(), Metrics::new()).with_burst_bounds(8, 4000);
        let mut burst = hub.burst();
        assert!(burst.has_room(1000));
        burst.add(1000);
        assert!(!burst.has_room(1), "a quarter of 4,000 bytes");
        let mut burst = hub.burst();
        burst.add(1);
        assert!(burst.has_room(1));
        burst.add(1);
        assert!(!burst.has_room(1), "a quarter of 8 frames");
        let big = Hub::new("n".into(), Metrics::new()).with_burst_bounds(100_000, 0);
        let mut burst = big.burst();
        (0..MAX_FRAMES).for_each(|_| burst.add(10));
        assert!(!burst.has_room(10), "never more than {MAX_FRAMES} frames");
    }
}
