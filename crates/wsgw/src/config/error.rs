//! Why a configuration could not be loaded.

use std::path::PathBuf;

/// Why a configuration could not be loaded. Every message names the
/// variable, flag or file key at fault, so it can be shown to operators as is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An env var held a value of the wrong shape.
    #[error("{var}={value}: expected {expected}")]
    Env {
        /// The variable, e.g. `WSGW_HEARTBEAT_INTERVAL_MS`.
        var: &'static str,
        /// The value as found.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file named by `--config` or `WSGW_CONFIG`.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("invalid config file {}: {source}", path.display())]
    Parse {
        /// The file named by `--config` or `WSGW_CONFIG`.
        path: PathBuf,
        /// The TOML error, which names the key and position.
        source: toml::de::Error,
    },
    /// The merged configuration is inconsistent.
    #[error("invalid configuration: {key}: {reason}")]
    Invalid {
        /// The TOML key (field name) at fault.
        key: &'static str,
        /// What is wrong and what is expected.
        reason: String,
    },
}
