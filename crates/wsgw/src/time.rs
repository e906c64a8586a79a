//! time.rs: the two clocks. Event ids, `ts` fields and token expiry are wall-clock by
//! contract. Everything that only measures time passing (heartbeats, request timeouts, parked
//! sessions) uses the runtime's monotonic clock, so a paused-time test drives it.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds on tokio's monotonic clock since the first call in this process (paused and
/// advanced in tests with `tokio::time::pause` / `advance`).
pub fn mono_ms() -> u64 {
    static BASE: OnceLock<tokio::time::Instant> = OnceLock::new();
    let base = *BASE.get_or_init(tokio::time::Instant::now);
    tokio::time::Instant::now().saturating_duration_since(base).as_millis() as u64
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Milliseconds to microseconds, saturating: `ts` values come from outside (stored events,
/// FCALL publishers) and a huge one must not wrap or panic.
pub fn ms_to_us(ms: u64) -> u64 {
    ms.saturating_mul(1000)
}
