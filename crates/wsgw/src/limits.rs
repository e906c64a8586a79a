//! limits.rs: the process's open-files limit, raised to the hard limit at start-up, because
//! every socket is a file descriptor.

use rlimit::Resource;

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
