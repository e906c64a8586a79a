//! hub/core_flush.rs: fan-out writes with per-core runtimes (`WSGW_RUNTIME=per_core`). A
//! fan-out does not wake each socket's task for the frames it queued: it hands each core one
//! list of those sockets, and that core's flusher task writes their queues. That is one hop
//! between threads per core and fan-out instead of one task wake-up per socket, and the writes
//! run on the thread that owns the sockets. A socket the flusher cannot finish (its TCP buffer
//! is full) gets its own task woken, which waits until the socket is writable.

use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::burst::flush_or_wake;
use super::{Connection, Hub, Written};
use crate::metrics::Metrics;
use crate::time::now_us;

/// The sockets of one core that one fan-out queued frames for.
pub type FlushBatch = Vec<Arc<Connection>>;

impl Hub {
    /// Starts a flusher on per-core runtime `core` (for the sockets that runtime serves).
    /// Returns where fan-outs send it their batches.
    pub fn spawn_core_flusher(&self, core: &Handle) -> mpsc::UnboundedSender<FlushBatch> {
        let (tx, rx) = mpsc::unbounded_channel();
        core.spawn(flusher(self.metrics.clone(), rx));
        tx
    }

    /// From now on fan-outs queue without waking sockets' tasks and hand each core's sockets
    /// to `flushers[core]`. Set once, before sockets connect; later calls are ignored.
    pub fn use_core_flushers(&self, flushers: Vec<mpsc::UnboundedSender<FlushBatch>>) {
        let _ = self.flushers.set(flushers);
    }

    /// Whether fan-outs defer their writes to the cores' flushers.
    pub(super) fn defers_writes(&self) -> bool {
        self.flushers.get().is_some()
    }

    /// Hands what one fan-out queued (`waiting[core]`) to each core's flusher. The channels are
    /// unbounded, but bounded in effect: a socket is sent only when a frame lands in its empty
    /// queue, so a lagging flusher holds about one entry per socket at most.
    pub(super) fn hand_to_cores(&self, waiting: Vec<FlushBatch>) {
        let Some(flushers) = self.flushers.get() else {
            waiting.iter().flatten().for_each(|c| c.wake_writer());
            return;
        };
        for (core, batch) in waiting.into_iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            if let Err(mpsc::error::SendError(batch)) = flushers[core.min(flushers.len() - 1)].send(batch) {
                // The core is stopping: its sockets' own tasks write what is queued.
                batch.iter().for_each(|c| c.wake_writer());
            }
        }
    }
}

/// One core's flusher: writes the queues of the sockets it is handed, several frames per
/// write, and wakes the task of any socket it could not finish.
async fn flusher(metrics: Metrics, mut rx: mpsc::UnboundedReceiver<FlushBatch>) {
    let mut written = Written::default();
    while let Some(batch) = rx.recv().await {
        for c in batch {
            flush_or_wake(&c, &mut written);
        }
        written.record(&metrics);
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
