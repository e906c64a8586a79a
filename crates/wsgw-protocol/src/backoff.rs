//! backoff.rs: reconnect delays: capped exponential backoff with jitter. The one policy type
//! shared by the clients (reconnecting to the gateway) and the gateway (reconnecting to Redis).

use std::time::Duration;

/// Reconnect delays: capped exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The delay before the first retry (before jitter).
    pub initial: Duration,
    /// No delay is ever longer than this.
    pub max: Duration,
    /// Each further attempt waits this many times longer (values below 1 count as 1).
    pub factor: f64,
    /// Random spread as a fraction of the delay: 0.5 gives a delay within ±50 % (clamped to 0..=1).
    pub jitter: f64,
}

impl Default for Backoff {
    /// 500 ms, doubling, capped at 30 s, ±50 % jitter (the browser client's policy).
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            factor: 2.0,
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0 for the first): `initial * factor^attempt`,
    /// capped at `max`, then spread by ± `jitter`, and never above `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, rand::random::<f64>() * 2.0 - 1.0)
    }

    /// `unit` in -1..=1 picks the point in the jitter range.
    fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let max = self.max.as_secs_f64();
        let initial = self.initial.as_secs_f64().min(max);
        let factor = if self.factor.is_finite() && self.factor > 1.0 {
            self.factor
        } else {
            1.0
        };
        let exp = i32::try_from(attempt).unwrap_or(i32::MAX);
        let base = (initial * factor.powi(exp)).min(max);
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let d = base * (1.0 + jitter * unit.clamp(-1.0, 1.0));
        Duration::from_secs_f64(if d.is_finite() { d.clamp(0.0, max) } else { max })
    }

    /// The delay after a "server going away" close (1001, 1012): at once, spread over
    /// `0..initial` so that a drained node's clients do not all come back in the same instant.
    pub fn at_once(&self) -> Duration {
        self.initial.min(self.max).mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[test]
    fn backoff_grows_and_caps() {
        let b = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        assert_eq!(ms(b.delay(0)), 500);
        assert_eq!(ms(b.delay(1)), 1000);
        assert_eq!(ms(b.delay(2)), 2000);
        assert_eq!(ms(b.delay(5)), 16000);
        assert_eq!(ms(b.delay(6)), 30000);
        assert_eq!(ms(b.delay(1000)), 30000);
        assert_eq!(ms(b.delay(u32::MAX)), 30000);
    }

    #[test]
    fn backoff_jitter_bounds() {
        let b = Backoff::default();
        assert_eq!(ms(b.delay_with(0, -1.0)), 250);
        assert_eq!(ms(b.delay_with(0, 1.0)), 750);
        assert_eq!(ms(b.delay_with(3, -1.0)), 2000);
        // never above max, even at the top of the jitter range
        assert_eq!(ms(b.delay_with(20, 1.0)), 30000);
        assert_eq!(ms(b.delay_with(20, -1.0)), 15000);
        for attempt in 0..40 {
            for _ in 0..50 {
                let d = b.delay(attempt);
                let base = (500.0 * 2f64.powi(attempt as i32)).min(30000.0);
                let (lo, hi) = (base * 0.5, (base * 1.5).min(30000.0));
                let got = d.as_secs_f64() * 1000.0;
                assert!(
                    got >= lo - 1e-6 && got <= hi + 1e-6,
                    "attempt {attempt}: {got} not in {lo}..={hi}"
                );
            }
        }
        assert!(b.at_once() < b.initial);
    }

    #[test]
    fn backoff_odd_settings_stay_in_bounds() {
        let b = Backoff {
            initial: Duration::from_secs(60),
            max: Duration::from_secs(1),
            factor: f64::NAN,
            jitter: 7.0,
        };
        for a in [0, 1, 100] {
            assert!(b.delay(a) <= Duration::from_secs(1));
        }
        let zero = Backoff {
            initial: Duration::ZERO,
            ..Backoff::default()
        };
        assert_eq!(zero.delay(10), Duration::ZERO);
        let shrinking = Backoff {
            factor: 0.5,
            jitter: 0.0,
            ..Backoff::default()
        };
        assert_eq!(ms(shrinking.delay(3)), 500);
    }
}
