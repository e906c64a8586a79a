//! hub/direct.rs: how much of a fan-out is written straight from the fan-out loop. The first
//! `DIRECT_FANOUT` sockets always are (when nothing is queued for them). Past those, a fan-out
//! of the Redis pub/sub readers writes directly for up to [`DIRECT_CAP`]: such a reader bursts
//! when frames wait behind the one it fans out (burst.rs), which is how it batches when behind.
//! Any other fan-out (the memory broker's, a repair's) has no such batching, so it writes
//! directly only for as long as the hub was idle between fan-outs before it, up to
//! [`DIRECT_CAP`]; the rest is queued for the sockets' own tasks. Either way a fan-out larger
//! than the cap spreads its writes over the sockets' tasks, and so over every worker thread.

use std::time::{Duration, Instant};

/// The most one fan-out may spend writing directly past the first sockets.
pub(super) const DIRECT_CAP: Duration = Duration::from_millis(60);

/// The hub's idle time not yet spent on direct writes.
pub(super) struct DirectBudget {
    spare: Duration,
    last_end: Instant,
}

impl DirectBudget {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            spare: Duration::ZERO,
            last_end: now,
        }
    }

    /// A fan-out begins at `now`: how long it may write directly (past the first sockets).
    pub(super) fn begin(&mut self, now: Instant) -> Duration {
        self.spare = (self.spare + now.saturating_duration_since(self.last_end)).min(DIRECT_CAP);
        self.spare
    }

    /// A fan-out that began at `started` ended at `now`: its time is paid from the budget.
    pub(super) fn end(&mut self, started: Instant, now: Instant) {
        self.spare = self.spare.saturating_sub(now.saturating_duration_since(started));
        self.last_end = self.last_end.max(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn an_idle_gap_buys_direct_writes_up_to_the_cap() {
        let t0 = Instant::now();
        let mut b = DirectBudget::new(t0);
        // 30 ms idle: the fan-out may write directly for 30 ms.
        assert_eq!(b.begin(t0 + 30 * MS), 30 * MS);
        b.end(t0 + 30 * MS, t0 + 40 * MS);
        // 20 ms left, plus 100 ms idle, capped.
        assert_eq!(b.begin(t0 + 140 * MS), DIRECT_CAP);
    }

    #[test]
    fn back_to_back_fan_outs_get_nothing_once_the_budget_is_spent() {
        let t0 = Instant::now();
        let mut b = DirectBudget::new(t0);
        let mut at = t0 + 5 * MS;
        assert_eq!(b.begin(at), 5 * MS);
        // Each fan-out takes 20 ms and the next begins as it ends: a node that is behind.
        for _ in 0..3 {
            b.end(at, at + 20 * MS);
            at += 20 * MS;
            assert_eq!(b.begin(at), Duration::ZERO);
        }
    }
}
