//! broker/redis/canary.rs: when a canary that has not come back means a cut pub/sub
//! connection. A node that is behind on its pub/sub (a burst still in its socket's buffers,
//! not yet read) gets its canary as late as the frames around it. So the allowance grows by how
//! late the newest frame was (now minus its `ts`), up to [`MAX_BEHIND`]: a slow node catches up
//! instead of reconnecting, which would throw its backlog away and re-read history under load.
//! A connection that is silent, or that hears only frames published just now elsewhere (a
//! primary cut off from the one the node publishes its canary to), is still caught.

use std::time::Duration;

use tokio::time::Instant;

use crate::time::now_us;

/// The most a frame's lateness adds to the canary's allowance.
pub(super) const MAX_BEHIND: Duration = Duration::from_secs(60);

/// How late a frame published at `published_us` (wall clock, µs; 0 when unknown) is at `now_us`.
pub(super) fn lateness(published_us: u64, now_us: u64) -> Duration {
    if published_us == 0 {
        return Duration::ZERO;
    }
    Duration::from_micros(now_us.saturating_sub(published_us)).min(MAX_BEHIND)
}

/// One pub/sub connection's canary: when it last came back, and how late the newest frame was.
pub(super) struct CanaryWatch {
    last: Instant,
    behind: Duration,
}

impl CanaryWatch {
    pub(super) fn new() -> Self {
        Self {
            last: Instant::now(),
            behind: Duration::ZERO,
        }
    }

    /// The canary (or a `sync` marker on its channel) came back.
    pub(super) fn canary(&mut self) {
        self.last = Instant::now();
    }

    /// A frame published at `published_us` (0: unknown) arrived.
    pub(super) fn frame(&mut self, published_us: u64) {
        if published_us != 0 {
            self.behind = lateness(published_us, now_us());
        }
    }

    /// Whether the canary is missing: not back within `late`, plus how far behind the connection is.
    pub(super) fn missing(&self, late: Duration) -> bool {
        self.last.elapsed() > late + self.behind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_adds_its_lateness_up_to_the_cap() {
        assert_eq!(lateness(0, 5_000_000), Duration::ZERO);
        assert_eq!(lateness(1_000_000, 4_500_000), Duration::from_millis(3500));
        // A frame from the future (clocks apart) adds nothing.
        assert_eq!(lateness(9_000_000, 4_500_000), Duration::ZERO);
        assert_eq!(lateness(1, u64::MAX), MAX_BEHIND);
    }

    #[tokio::test(start_paused = true)]
    async fn the_canary_is_missing_only_past_the_allowance_and_the_lateness() {
        let late = Duration::from_secs(7);
        let mut w = CanaryWatch::new();
        tokio::time::advance(Duration::from_secs(8)).await;
        assert!(w.missing(late));
        // The newest frame was published 5 s ago: the node is 5 s behind.
        w.frame(now_us() - 5_000_000);
        assert!(!w.missing(late));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(w.missing(late));
        w.canary();
        assert!(!w.missing(late));
    }
}
