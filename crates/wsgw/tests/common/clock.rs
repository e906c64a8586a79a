//! A process whose wall clock runs ahead or behind: libfaketime (Debian's `faketime` package,
//! which scripts/test.sh installs) preloaded with a fixed offset. The monotonic clock is left
//! alone, so timers and timeouts behave as usual.

use std::path::PathBuf;

/// The environment that shifts a child's wall clock by `offset` (libfaketime's syntax: `-30s`,
/// `+2s`).
pub fn offset_env(offset: &str) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), libfaketime().display().to_string()),
        ("FAKETIME".into(), offset.into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

/// `libfaketime.so.1` under the multiarch library directory (`/usr/lib/<triplet>/faketime/`).
fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib").ok().and_then(|dirs| {
        dirs.filter_map(Result::ok)
            .map(|d| d.path().join("faketime/libfaketime.so.1"))
            .find(|p| p.exists())
    });
    found.expect("libfaketime is installed (scripts/test.sh installs Debian's faketime package)")
}
