//! hub/core_fanout.rs: fan-outs with per-core runtimes (`WSGW_RUNTIME=per_core`). Each core
//! offers and writes only the sockets it serves. A fan-out does not touch another core's
//! sockets: it finds which cores have a subscriber (a socket's core is in the top bits of its
//! hub key, so no socket is read for it) and sends each of them one job on its lane, a
//! first-in-first-out channel to a task on that core. The task offers the frame to that core's
//! subscribers, written at once, and a lane with several jobs waiting runs them as bursts
//! (burst.rs): one write per socket for all of them.
//!
//! Why: one thread offering to every socket while another writes half of them moved each of
//! those sockets' state between the two cores' caches twice per frame: a fan-out on 2 cores
//! kept 1.4 of them busy for 1.57 times the throughput of one core; this way, 1.8–1.9 for 1.93
//! times (docs/loadtest.md, "One core against two").
//!
//! Order: a fan-out of this hub goes through the lanes, the reader's own core included, and
//! sends its jobs before the next one starts (a pub/sub reader is one task; the memory broker
//! publishes under its lock). So each socket is offered frames in the order their fan-outs
//! began, which is what lets it drop anything at or below its last id. The one exception keeps
//! that order: a fan-out with at most `INLINE_MAX` subscribers whose cores' lanes have run
//! everything they were sent is offered by its caller, as without per-core runtimes (a
//! targeted event then costs no job and no wake-up of another core's thread).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use wsgw_protocol::glob_match;

use super::{Burst, Fanout, Hub, OutFrame, Written};
use crate::metrics::Metrics;
use crate::time::now_us;

/// Which subscribers of a channel a fan-out is for: `Want<&str>` while a caller fans out,
/// `JobKind` (the pattern owned) in a job on a lane.
#[derive(Clone, Copy)]
pub(super) enum Want<P> {
    /// Its exact subscribers (a Redis `message`).
    Exact,
    /// The subscribers of this one pattern (a Redis `pmessage`).
    Pattern(P),
    /// Exact and every matching pattern, once each (`Hub::deliver`).
    All,
}

/// What a job carries: the pattern owned.
type JobKind = Want<Arc<str>>;

impl JobKind {
    fn as_want(&self) -> Want<&str> {
        match self {
            Want::Exact => Want::Exact,
            Want::Pattern(p) => Want::Pattern(p),
            Want::All => Want::All,
        }
    }
}

/// One fan-out's work for one core.
struct CoreJob {
    kind: JobKind,
    channel: Arc<str>,
    frame: OutFrame,
    exclude: Box<[Box<str>]>,
}

/// What a lane carries: fan-outs, and barriers that fire once every lane has run what was
/// sent before them.
enum LaneItem {
    Job(CoreJob),
    Barrier(Arc<Barrier>),
}

/// A `sync` marker's answer, held until every lane has offered what the reader sent before
/// the marker (`Hub::after_fanouts`).
struct Barrier {
    lanes_left: AtomicUsize,
    done: parking_lot::Mutex<Option<oneshot::Sender<()>>>,
}

impl Barrier {
    /// One lane is past it; the last one answers.
    fn pass(&self) {
        if self.lanes_left.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(done) = self.done.lock().take()
        {
            let _ = done.send(());
        }
    }
}

/// Where fan-outs send a core its jobs, and how many it has not run yet.
pub struct CoreLane {
    tx: mpsc::UnboundedSender<LaneItem>,
    pending: Arc<AtomicUsize>,
}

/// A reader or publisher waits (`Hub::cores_caught_up`) while a core has more jobs than this
/// waiting, so a slow core holds back the reader's input (which Redis bounds) or the publisher
/// instead of growing its queue.
const MAX_PENDING: usize = 256;

/// A fan-out with at most this many subscribers, whose cores' lanes are idle, is offered by
/// its caller directly, as without per-core runtimes: a targeted event (one socket, or a user's
/// few) then costs no job, no lane task and no wake-up of another core's thread; the kernel
/// takes most such frames at once, and only what it does not take wakes the socket's task.
const INLINE_MAX: usize = 8;

/// The core a hub key belongs to (see `Hub::register`).
pub(super) fn core_of(key: u64) -> usize {
    (key >> CORE_SHIFT) as usize
}

/// Where a socket's core sits in its hub key: below it, 2^48 sockets per process.
pub(super) const CORE_SHIFT: u32 = 48;

impl Hub {
    /// Starts the fan-out task of per-core runtime `core` on `rt`, the runtime whose sockets
    /// have that core (`crate::cores::current`). Returns its lane.
    pub fn spawn_core_fanout(self: &Arc<Self>, core: usize, rt: &Handle) -> CoreLane {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        rt.spawn(run_lane(Arc::downgrade(self), core, rx, pending.clone()));
        CoreLane { tx, pending }
    }

    /// From now on every fan-out goes through `lanes[core]`. Set once, before sockets connect;
    /// later calls are ignored.
    pub fn use_core_fanouts(&self, lanes: Vec<CoreLane>) {
        let _ = self.lanes.set(lanes);
    }

    /// Sends one fan-out to each core with a subscriber; returns how many subscribers it found
    /// (before exclusions and duplicates, which each core drops). `None`: the caller offers it
    /// itself, as without per-core runtimes, because it has at most `INLINE_MAX` subscribers
    /// and their cores' lanes have nothing left to run (so nothing sent before can come after).
    pub(super) fn to_cores(
        &self,
        lanes: &[CoreLane],
        want: Want<&str>,
        channel: &str,
        frame: &OutFrame,
        exclude: &[&str],
    ) -> Option<usize> {
        let (mut found, mut cores) = (0, 0u64);
        let mut note = |key: &u64| {
            found += 1;
            cores |= 1 << (core_of(*key) % 64);
        };
        {
            let chans = self.channels.read();
            let exact = chans.get(channel);
            if !matches!(want, Want::Pattern(_)) {
                exact.iter().flat_map(|s| s.iter()).for_each(|(k, _)| note(k));
            }
            if !matches!(want, Want::Exact) {
                let pats = self.patterns.read();
                for (p, subs) in pats.iter() {
                    let wanted = match want {
                        Want::Pattern(one) => &**p == one,
                        _ => glob_match(p, channel),
                    };
                    if wanted {
                        subs.iter().for_each(|(k, _)| note(k));
                    }
                }
            }
        }
        if found == 0 {
            return Some(0);
        }
        let idle = |(core, lane): (usize, &CoreLane)| {
            cores & (1 << (core % 64)) == 0 || lane.pending.load(Ordering::Acquire) == 0
        };
        if found <= INLINE_MAX && lanes.iter().enumerate().all(idle) {
            return None;
        }
        let kind: JobKind = match want {
            Want::Exact => Want::Exact,
            Want::Pattern(p) => Want::Pattern(Arc::from(p)),
            Want::All => Want::All,
        };
        let frame = self.shared(frame).into_owned();
        let channel: Arc<str> = Arc::from(channel);
        let exclude: Box<[Box<str>]> = exclude.iter().map(|e| Box::from(*e)).collect();
        for (core, lane) in lanes.iter().enumerate() {
            if cores & (1 << (core % 64)) == 0 {
                continue;
            }
            let job = CoreJob {
                kind: kind.clone(),
                channel: channel.clone(),
                frame: frame.clone(),
                exclude: exclude.clone(),
            };
            lane.pending.fetch_add(1, Ordering::Relaxed);
            if lane.tx.send(LaneItem::Job(job)).is_err() {
                // The core is stopping, and its sockets with it.
                lane.pending.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Some(found)
    }

    /// Answers `done` once every fan-out begun before this call has been offered to its
    /// sockets: at once without per-core runtimes, else when every lane has run what it was
    /// sent before. A reader calls it for a `sync` marker: the marker proves that every event
    /// published before it has reached the reader, and a replay's snapshot relies on those
    /// events being in each socket's queue (or held by its replay) when the sync returns.
    pub fn after_fanouts(&self, done: oneshot::Sender<()>) {
        let Some(lanes) = self.lanes.get() else {
            let _ = done.send(());
            return;
        };
        let barrier = Arc::new(Barrier {
            lanes_left: AtomicUsize::new(lanes.len()),
            done: parking_lot::Mutex::new(Some(done)),
        });
        for lane in lanes {
            if let Err(mpsc::error::SendError(LaneItem::Barrier(b))) = lane.tx.send(LaneItem::Barrier(barrier.clone()))
            {
                // A stopping core runs nothing more: nothing to wait for there.
                b.pass();
            }
        }
    }

    /// Waits while a core has more than `MAX_PENDING` jobs waiting (only with per-core
    /// runtimes). A pub/sub reader calls it between reads, the memory broker after a publish.
    pub async fn cores_caught_up(&self) {
        let Some(lanes) = self.lanes.get() else { return };
        // A lane whose runtime has stopped runs nothing more: it holds nobody back.
        let behind = |l: &CoreLane| l.pending.load(Ordering::Relaxed) > MAX_PENDING && !l.tx.is_closed();
        while lanes.iter().any(behind) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Runs one job on core `core`: its subscribers there, offered and written at once, or
    /// queued into `burst`.
    fn run_job(&self, core: usize, job: CoreJob, mut burst: Option<&mut Burst>) {
        let mut tally = self.tally(Fanout::from_reader(burst.is_some()));
        if let Some(b) = burst.as_deref_mut() {
            tally.written = b.lend_written();
        }
        let exclude: Vec<&str> = job.exclude.iter().map(|e| &**e).collect();
        self.fan(
            job.kind.as_want(),
            &job.channel,
            &job.frame,
            &exclude,
            &mut tally,
            Some(core),
        );
        self.record(&job.frame, tally, burst);
    }
}

/// A core's lane: runs its jobs in order, those waiting together as bursts. A barrier ends
/// the burst before it, so it passes once what came before is written (or queued for a
/// socket's task), not merely offered.
async fn run_lane(hub: Weak<Hub>, core: usize, mut rx: mpsc::UnboundedReceiver<LaneItem>, pending: Arc<AtomicUsize>) {
    let mut barrier: Option<Arc<Barrier>> = None;
    loop {
        let first = match rx.recv().await {
            Some(LaneItem::Job(job)) => job,
            Some(LaneItem::Barrier(b)) => {
                b.pass();
                continue;
            }
            None => return,
        };
        let Some(hub) = hub.upgrade() else { return };
        let mut ran = 0;
        let open = hub.drain_waiting(
            first,
            || match rx.try_recv() {
                Ok(LaneItem::Job(job)) => Some(Some(job)),
                Ok(LaneItem::Barrier(b)) => {
                    // Nothing more in this drain: its burst ends first.
                    barrier = Some(b);
                    None
                }
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => Some(None),
            },
            |job| job.frame.payload().len(),
            |job, burst| {
                ran += 1;
                hub.run_job(core, job, burst);
            },
        );
        // Release: a fan-out that reads 0 here and then offers inline comes after these writes.
        pending.fetch_sub(ran, Ordering::Release);
        if let Some(b) = barrier.take() {
            b.pass();
        }
        if !open {
            return;
        }
    }
}

impl Written {
    /// Counts these writes in the metrics (frames, bytes, delivery latency) and clears them.
    pub fn record(&mut self, m: &Metrics) {
        if self.frames == 0 {
            return;
        }
        m.frames_out.inc_by(self.frames);
        m.bytes_out.inc_by(self.bytes);
        if !self.stamps.is_empty() {
            let now = now_us();
            let local = m.delivery_latency.local();
            for s in self.stamps.drain(..) {
                local.observe(now.saturating_sub(s) as f64 / 1e6);
            }
            local.flush();
        }
        self.frames = 0;
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::net::{TcpListener, TcpStream};
    use wsgw_protocol::EventId;

    use super::*;
    use crate::hub::test_wire::read_texts;
    use crate::hub::{Connection, Flush};

    /// `n` single-threaded runtimes, each on a thread marked as its core (as `cores.rs` does).
    struct Cores {
        handles: Vec<Handle>,
        stops: Vec<tokio::sync::oneshot::Sender<()>>,
    }

    impl Cores {
        fn start(n: usize) -> Self {
            let (mut handles, mut stops) = (Vec::new(), Vec::new());
            for core in 0..n {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                handles.push(rt.handle().clone());
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                stops.push(stop);
                std::thread::spawn(move || {
                    crate::cores::set_current(core);
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                });
            }
            Cores { handles, stops }
        }
    }

    impl Drop for Cores {
        fn drop(&mut self) {
            for s in self.stops.drain(..) {
                let _ = s.send(());
            }
        }
    }

    /// A socket served by core `core` (created on its thread), registered and on channel `t`
    /// (and pattern `p*` for `s0`), with the client end of its TCP connection.
    async fn socket(hub: &Arc<Hub>, cores: &Cores, core: usize, id: String) -> (Arc<Connection>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let server = listener.accept().await.unwrap().0.into_std().unwrap();
        let hub = hub.clone();
        let c = cores.handles[core]
            .spawn(async move {
                // Registered with this core's reactor, as the core's listener would have it.
                let server = TcpStream::from_std(server).unwrap();
                server.writable().await.unwrap();
                let c = hub.register(Connection::new(Arc::from(id.as_str()), Arc::from("u"), 1000, &[]));
                hub.subscribe(&c, "t");
                if id == "s0" {
                    // Exact from the connect's snapshot, as a resumed pattern is.
                    hub.subscribe(&c, "p*");
                }
                c.finish_replay(|_| OutFrame::control("w"), Vec::new(), &[EventId::new(0, 0)], None);
                c.attach(Arc::new(server));
                assert_eq!(c.flush(&mut Written::default()).0, Flush::Done, "the welcome");
                c
            })
            .await
            .unwrap();
        (c, client)
    }

    /// A hub with two cores' lanes and `n` sockets, `s0`, `s1` … alternately on cores 0 and 1.
    async fn on_two_cores(n: usize) -> (Cores, Arc<Hub>, Vec<(Arc<Connection>, TcpStream)>) {
        let cores = Cores::start(2);
        let hub = Arc::new(Hub::new("n".into(), Metrics::new()).with_burst_bounds(1000, 0));
        let lanes = (0..2).map(|k| hub.spawn_core_fanout(k, &cores.handles[k])).collect();
        hub.use_core_fanouts(lanes);
        let mut sockets = Vec::new();
        for i in 0..n {
            sockets.push(socket(&hub, &cores, i % 2, format!("s{i}")).await);
        }
        (cores, hub, sockets)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_core_writes_its_own_sockets_every_frame_in_order() {
        const SOCKETS: usize = 60;
        const EVENTS: u64 = 40;
        let (_cores, hub, mut sockets) = on_two_cores(SOCKETS).await;
        for (i, (c, _)) in sockets.iter().enumerate() {
            assert_eq!(core_of(c.key()), i % 2, "a socket's key names its core");
        }
        // A lone subscriber on core 1 only (and `s0`'s pattern on core 0 only).
        hub.subscribe(&sockets[1].0, "solo");
        // From a thread that is neither core: the exact path, the `deliver` path and the
        // pattern path interleaved, as a reader and a repair would.
        for id in 1..=EVENTS {
            let f = OutFrame::event(format!("e{id}"), EventId::new(id, 0), 0);
            let found = match id % 3 {
                0 => hub.deliver("t", &f, &[]),
                _ => hub.deliver_exact("t", &f, &[], None),
            };
            assert_eq!(found, SOCKETS, "event {id}");
        }
        // A sync marker's answer waits until every lane has offered what came before it.
        let (done, answered) = oneshot::channel();
        hub.after_fanouts(done);
        tokio::time::timeout(Duration::from_secs(10), answered)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            hub.metrics.frames_out.get(),
            SOCKETS as u64 * EVENTS,
            "all offered and written by then"
        );
        let solo = OutFrame::event("solo", EventId::new(EVENTS + 1, 0), 0);
        assert_eq!(hub.deliver_exact("solo", &solo, &[], None), 1);
        let pat = OutFrame::event("pat", EventId::new(EVENTS + 2, 0), 0);
        assert_eq!(hub.deliver_pattern("p*", "px", &pat, &[], None), 1);
        assert_eq!(hub.deliver_exact("nobody", &pat, &[], None), 0);
        let want: Vec<String> = std::iter::once("w".to_string())
            .chain((1..=EVENTS).map(|id| format!("e{id}")))
            .collect();
        for (i, (_, client)) in sockets.iter_mut().enumerate() {
            let extra = match i {
                0 => vec!["pat".to_string()],
                1 => vec!["solo".to_string()],
                _ => vec![],
            };
            let got = read_texts(client, want.len() + extra.len()).await;
            assert_eq!(got[..want.len()], want[..], "socket {i}");
            assert_eq!(got[want.len()..], extra[..], "socket {i}");
        }
        // Every job ran: nothing holds a reader back.
        let deadline = Instant::now() + Duration::from_secs(10);
        while hub
            .lanes
            .get()
            .unwrap()
            .iter()
            .any(|l| l.pending.load(Ordering::Relaxed) > 0)
        {
            assert!(Instant::now() < deadline, "jobs left on a lane");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::timeout(Duration::from_secs(5), hub.cores_caught_up())
            .await
            .unwrap();
        assert_eq!(hub.metrics.frames_out.get(), SOCKETS as u64 * EVENTS + 2);
    }

    /// A targeted event (one subscriber) is offered by its caller when its core's lane is idle,
    /// and waits its turn on the lane when that lane still has fan-outs to run: a socket gets
    /// the broadcasts and its own events in the order they were published either way.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_fan_out_is_offered_inline_only_behind_an_idle_lane() {
        const SOCKETS: usize = 60;
        const EVENTS: u64 = 200;
        let (_cores, hub, mut sockets) = on_two_cores(SOCKETS).await;
        // One socket per core with a channel of its own.
        hub.subscribe(&sockets[0].0, "solo");
        hub.subscribe(&sockets[1].0, "solo");
        let mut want = vec![vec!["w".to_string()]; 2];
        for id in 1..=EVENTS {
            let text = format!("e{id}");
            let f = OutFrame::event(&text, EventId::new(id, 0), 0);
            if id % 4 == 0 {
                assert_eq!(hub.deliver_exact("solo", &f, &[], None), 2, "event {id}");
            } else {
                hub.deliver_exact("t", &f, &[], None);
            }
            want.iter_mut().for_each(|w| w.push(text.clone()));
        }
        for (i, w) in want.iter().enumerate() {
            assert_eq!(read_texts(&mut sockets[i].1, w.len()).await, *w, "socket {i}");
        }
        // Once the lanes are idle, a targeted event is written before its fan-out returns.
        let (done, answered) = oneshot::channel();
        hub.after_fanouts(done);
        answered.await.unwrap();
        let before = hub.metrics.frames_out.get();
        let f = OutFrame::event("last", EventId::new(EVENTS + 1, 0), 0);
        assert_eq!(hub.deliver_exact("solo", &f, &[], None), 2, "accepted by both, inline");
        assert_eq!(hub.metrics.frames_out.get(), before + 2, "written by the caller");
        for (_, client) in sockets.iter_mut().take(2) {
            assert_eq!(read_texts(client, 1).await, ["last"]);
        }
    }
}
