//! hub/connection_tick.rs: what the node-wide tick (server.rs) reads of every socket once a
//! second: its last sign of life, its token's expiry, when its earliest backend request is
//! due, and whether its outbox holds an idle queue's memory. They sit together in one small
//! `TickState`, so telling whether a socket needs anything touches one cache line and takes no
//! lock: at 5,000 idle sockets the old walk (a snapshot of every `Arc`, two locks per socket)
//! was a fifth of an idle node's CPU (docs/loadtest.md §1). A registered socket's `TickState`
//! lives in the hub's tick table (tick_table.rs), beside every other socket's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::Connection;
use crate::time::mono_ms;

/// No backend request is waiting.
const NONE_DUE: u64 = u64::MAX;

#[derive(Debug)]
pub(in crate::hub) struct TickState {
    last_seen_ms: AtomicU64,
    /// Token expiry in seconds since the epoch, 0 when the token has none.
    token_exp_s: AtomicU64,
    /// No later than the earliest deadline of the requests waiting on backends (monotonic
    /// ms; `NONE_DUE` when none). It may be earlier than any (an answered request is not
    /// taken out of it): the tick then finds nothing expired and sets it afresh.
    pending_due_ms: AtomicU64,
    /// The outbox's queue has emptied since the tick last looked and may hold memory.
    idle_queue: AtomicBool,
}

impl TickState {
    pub(in crate::hub) fn new() -> Self {
        Self {
            last_seen_ms: AtomicU64::new(mono_ms()),
            token_exp_s: AtomicU64::new(0),
            pending_due_ms: AtomicU64::new(NONE_DUE),
            idle_queue: AtomicBool::new(false),
        }
    }

    /// Takes `other`'s values (a socket moving into the tick table: tick_table.rs).
    pub(in crate::hub) fn copy_from(&self, other: &TickState) {
        for (to, from) in [
            (&self.last_seen_ms, &other.last_seen_ms),
            (&self.token_exp_s, &other.token_exp_s),
            (&self.pending_due_ms, &other.pending_due_ms),
        ] {
            to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.idle_queue
            .store(other.idle_queue.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Whether the tick has anything to do for this socket: close it (silent, token expired),
    /// expire a backend request, or give an idle queue's memory back. Lock-free.
    pub(in crate::hub) fn due(&self, now: TickNow) -> bool {
        self.silent(now)
            || self.token_expired(now)
            || self.pending_due_ms.load(Ordering::Relaxed) <= now.mono_ms
            || self.idle_queue.load(Ordering::Relaxed)
    }

    fn silent(&self, now: TickNow) -> bool {
        now.mono_ms.saturating_sub(self.last_seen_ms.load(Ordering::Relaxed)) > now.silence_ms
    }

    fn token_expired(&self, now: TickNow) -> bool {
        // 0: the token has no expiry.
        match self.token_exp_s.load(Ordering::Relaxed) {
            0 => false,
            exp => exp.saturating_add(now.leeway_s) < now.epoch_s,
        }
    }
}

/// What the tick checks every socket against.
#[derive(Debug, Clone, Copy)]
pub struct TickNow {
    /// Monotonic ms ([`crate::time::mono_ms`]).
    pub mono_ms: u64,
    /// Seconds since the epoch.
    pub epoch_s: u64,
    /// Client silence after which the socket is closed (`heartbeat_timeout_ms`).
    pub silence_ms: u64,
    /// Leeway past a token's expiry (`jwt_leeway_s`).
    pub leeway_s: u64,
}

impl Connection {
    /// Records that the client showed a sign of life.
    pub fn touch(&self) {
        self.tick.last_seen_ms.store(mono_ms(), Ordering::Relaxed);
    }

    /// Sets the token expiry (seconds since the epoch; `None`: never).
    pub fn set_token_exp(&self, exp: Option<u64>) {
        self.tick.token_exp_s.store(exp.unwrap_or(0), Ordering::Relaxed);
    }

    /// The client has been silent for longer than `now.silence_ms`.
    pub fn silent(&self, now: TickNow) -> bool {
        self.tick.silent(now)
    }

    /// The token expired (past the leeway).
    pub fn token_expired(&self, now: TickNow) -> bool {
        self.tick.token_expired(now)
    }

    /// Whether the tick has anything to do for this socket: close it (silent, token expired),
    /// expire a backend request, or give an idle queue's memory back. Lock-free.
    pub fn tick_due(&self, now: TickNow) -> bool {
        self.tick.due(now)
    }

    /// A request waiting on a backend is due at `deadline_ms` (called under the pending lock).
    pub(super) fn pending_due_by(&self, deadline_ms: u64) {
        self.tick.pending_due_ms.fetch_min(deadline_ms, Ordering::Relaxed);
    }

    /// The earliest deadline left after an expiry (called under the pending lock).
    pub(super) fn pending_due_at(&self, deadline_ms: Option<u64>) {
        self.tick
            .pending_due_ms
            .store(deadline_ms.unwrap_or(NONE_DUE), Ordering::Relaxed);
    }

    /// The queue emptied with memory kept (called under the outbox lock): the tick gives it
    /// back if it stays empty. Stored only when not set, so a busy socket does not keep
    /// writing the line the tick reads.
    pub(super) fn note_idle_queue(&self) {
        if !self.tick.idle_queue.load(Ordering::Relaxed) {
            self.tick.idle_queue.store(true, Ordering::Relaxed);
        }
    }

    /// Gives an empty queue's memory back, so an idle socket keeps none (its next frame is
    /// usually written without it). The node-wide tick calls this: a busy socket keeps its
    /// queue between flushes instead of allocating it for every frame.
    pub fn release_idle_queue(&self) {
        if !self.tick.idle_queue.swap(false, Ordering::Relaxed) {
            return;
        }
        let mut ob = self.outbox.lock();
        if ob.queue.is_empty() && !ob.writing {
            ob.queue = std::collections::VecDeque::new();
        } else if ob.queue.capacity() > 0 {
            // In use again, or being written: the flush that empties it notes it again;
            // one in the middle of a write may already have looked.
            self.note_idle_queue();
        }
    }
}
