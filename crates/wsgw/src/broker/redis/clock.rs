//! broker/redis/clock.rs: Redis's clock. Whatever is compared across nodes in Redis is dated by
//! it, never by a node's own clock, so nodes whose clocks disagree still agree:
//! - event ids, the epoch and history expiry: Redis's `TIME`, read where the decision is made
//!   (`wsgw_publish`, `epoch_cmd`, [`redis_time_ms`]);
//! - presence expiry times (the sorted sets' scores): the node's clock plus its measured offset
//!   to Redis's ([`Inner::redis_now_ms`]), measured at each (re)join and presence refresh.

use super::*;

/// Redis's clock (`TIME`), in ms.
pub(super) async fn redis_time_ms(c: &mut cluster_link::Conn) -> Result<u64, BrokerError> {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(c).await.map_err(unavailable)?;
    Ok(s.saturating_mul(1000).saturating_add(us / 1000))
}

impl Inner {
    /// Redis's clock as this node reckons it: its own plus the offset last measured.
    pub(super) fn redis_now_ms(&self) -> u64 {
        now_ms().saturating_add_signed(self.clock_offset_ms.load(Ordering::Relaxed))
    }

    /// Measures the offset of Redis's clock from this node's (half a round trip's error).
    /// On failure the last one stays.
    pub(super) async fn measure_redis_clock(&self) {
        let r = timed(self.s.op_timeout, async {
            let mut c = self.conn().await?;
            let before = now_ms();
            let redis = redis_time_ms(&mut c).await?;
            let after = now_ms();
            Ok(redis as i64 - (before / 2 + after / 2) as i64)
        })
        .await;
        match r {
            Ok(offset) => {
                let was = self.clock_offset_ms.swap(offset, Ordering::Relaxed);
                if offset.abs() > CLOCK_WARN_MS && was.abs() <= CLOCK_WARN_MS {
                    warn!(
                        offset_ms = offset,
                        "this node's clock and Redis's disagree; presence is dated by Redis's"
                    );
                }
            }
            Err(e) => debug!(error = %e, "could not read Redis's clock"),
        }
    }
}

/// An offset past which the node says so, once: its own clock is off (NTP).
const CLOCK_WARN_MS: i64 = 1000;
