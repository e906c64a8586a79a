//! limits.rs: limits that are not part of a socket's protocol state: the process's open-files
//! limit, raised to the hard limit at start-up because every socket is a file descriptor, and
//! the per-socket token bucket for inbound frames.

use std::time::Duration;

use rlimit::Resource;
use tokio::time::Instant;

/// Soft and hard `RLIMIT_NOFILE` after trying to raise the soft one to the hard one.
#[derive(Debug, Clone, Copy)]
pub struct FileLimit {
    /// The soft limit before raising it.
    pub before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Raises the soft open-files limit to the hard limit. Never lowers it.
pub fn raise_nofile_limit() -> std::io::Result<FileLimit> {
    let (before, hard) = Resource::NOFILE.get()?;
    if before < hard {
        Resource::NOFILE.set(hard, hard)?;
    }
    let (soft, hard) = Resource::NOFILE.get()?;
    Ok(FileLimit { before, soft, hard })
}

/// File descriptors a node needs beyond its sockets (listener, logs, broker connections…).
pub const RESERVED_FDS: u64 = 64;

/// Token bucket for inbound frames, plus a strike count for repeated abuse.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    strikes: u32,
    max_strikes: u32,
    first_strike: Option<Instant>,
}

impl RateLimiter {
    pub fn new(per_s: u32, burst: u32, max_strikes: u32) -> Self {
        let burst = f64::from(burst.max(per_s).max(1));
        Self {
            rate: f64::from(per_s),
            burst,
            tokens: burst,
            last: Instant::now(),
            strikes: 0,
            max_strikes,
            first_strike: None,
        }
    }

    /// Takes a token; false when the client is over its rate.
    pub fn admit(&mut self) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Records a refused frame; true when the client has been refused too often (close 1008).
    /// Strikes are counted over a 10 s window.
    pub fn strike(&mut self) -> bool {
        let now = Instant::now();
        match self.first_strike {
            Some(t) if now.duration_since(t) < Duration::from_secs(10) => self.strikes += 1,
            _ => {
                self.first_strike = Some(now);
                self.strikes = 1;
            }
        }
        self.max_strikes > 0 && self.strikes >= self.max_strikes
    }
}

/// Byte budget per second (client publish volume): refills at `per_s` bytes per second and
/// holds at most one second's worth. A publish larger than the bucket passes when the bucket is
/// full and leaves it in debt, so the average stays at `per_s` whatever the frame sizes.
pub struct ByteLimiter {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl ByteLimiter {
    /// `per_s` = 0 turns the limit off.
    pub fn new(per_s: u64) -> Self {
        Self {
            rate: per_s as f64,
            tokens: per_s as f64,
            last: Instant::now(),
        }
    }

    /// Takes `n` bytes; false (nothing taken) when the client is over its volume.
    pub fn admit(&mut self, n: usize) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        let n = n as f64;
        if self.tokens >= n.min(self.rate) {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_byte_budget_refills_and_big_frames_leave_debt() {
        let mut l = ByteLimiter::new(1000);
        assert!(l.admit(600));
        assert!(l.admit(400));
        assert!(!l.admit(1), "one second's worth spent");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(l.admit(500));
        assert!(!l.admit(1));
        // A frame larger than the bucket passes when it is full, then costs its size.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(l.admit(3000));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!l.admit(1), "still 1000 bytes in debt");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(l.admit(1000));
        assert!(ByteLimiter::new(0).admit(usize::MAX), "0 turns it off");
    }

    #[tokio::test(start_paused = true)]
    async fn token_bucket_refills_over_time() {
        let mut l = RateLimiter::new(10, 20, 3);
        assert_eq!((0..25).filter(|_| l.admit()).count(), 20, "burst of 20");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!((0..25).filter(|_| l.admit()).count(), 5, "10/s for half a second");
        assert!(!l.strike());
        assert!(!l.strike());
        assert!(l.strike(), "third strike within 10 s closes");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!l.strike(), "strikes expire");
    }
}
