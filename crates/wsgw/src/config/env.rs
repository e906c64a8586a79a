//! The env layer: where `WSGW_*` values come from ([`EnvSource`]) and the shared rules for
//! reading them ([`EnvLayer`]). Which variable sets which field is declared once, in the
//! settings table (`settings.rs`); this file only knows how each kind of value is read.

use std::collections::HashMap;
use std::str::FromStr;

use ipnet::IpNet;

use super::ConfigError;
use super::format::{TRUSTED_PROXIES, not_a_network};

/// Where env values come from: the process ([`ProcessEnv`]) or a map in tests.
pub trait EnvSource {
    /// The value of `key`, or `None` if it is not set.
    fn get(&self, key: &str) -> Option<String>;
}

/// The real process environment; the only place `std::env` is consulted.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        // Non-UTF-8 values are treated as unset rather than mangled; every
        // WSGW_* value is ASCII in practice.
        std::env::var(key).ok()
    }
}

impl EnvSource for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

// What a value of the wrong shape should have looked like, for the `Env` error message.
pub(super) const MS: &str = "a whole number of milliseconds";
pub(super) const SECS: &str = "a whole number of seconds";
pub(super) const BYTES: &str = "a whole number of bytes";
pub(super) const COUNT: &str = "a whole number";
pub(super) const FRAMES: &str = "a whole number of frames";
pub(super) const EVENTS: &str = "a whole number of events";
pub(super) const FRAMES_U32: &str = "a whole number of frames (at most 4294967295)";
pub(super) const FRAMES_PER_S_U32: &str = "a whole number of frames per second (at most 4294967295)";
pub(super) const BOOL: &str = "true, false, 1, 0, yes or no";

/// Env lookups with the module's shared rules: empty (or all-blank) values
/// count as unset, and parse errors name the variable and the expected shape.
/// Every method leaves its slot alone when the variable is unset.
pub(super) struct EnvLayer<'a>(pub(super) &'a dyn EnvSource);

impl EnvLayer<'_> {
    pub(super) fn raw(&self, var: &str) -> Option<String> {
        self.0.get(var).filter(|v| !v.trim().is_empty())
    }

    /// A free-form string, taken as is.
    pub(super) fn string(&self, var: &'static str, slot: &mut String) -> Result<(), ConfigError> {
        if let Some(v) = self.raw(var) {
            *slot = v;
        }
        Ok(())
    }

    /// An optional string-like value (text, path, secret), taken as is.
    pub(super) fn opt<T: From<String>>(&self, var: &'static str, slot: &mut Option<T>) -> Result<(), ConfigError> {
        if let Some(v) = self.raw(var) {
            *slot = Some(T::from(v));
        }
        Ok(())
    }

    /// A typed value (number, address, enum) parsed with `FromStr`.
    pub(super) fn parse<T: FromStr>(
        &self,
        var: &'static str,
        slot: &mut T,
        expected: &'static str,
    ) -> Result<(), ConfigError> {
        if let Some(value) = self.raw(var) {
            // Typed values tolerate stray whitespace from shell quoting or .env files.
            *slot = value
                .trim()
                .parse()
                .map_err(|_| ConfigError::Env { var, value, expected })?;
        }
        Ok(())
    }

    /// An optional typed value (an address, say) parsed with `FromStr`.
    pub(super) fn opt_parse<T: FromStr>(
        &self,
        var: &'static str,
        slot: &mut Option<T>,
        expected: &'static str,
    ) -> Result<(), ConfigError> {
        if let Some(value) = self.raw(var) {
            let parsed = value.trim().parse().map_err(|_| ConfigError::Env {
                var,
                value: value.clone(),
                expected,
            })?;
            *slot = Some(parsed);
        }
        Ok(())
    }

    pub(super) fn bool(&self, var: &'static str, slot: &mut bool) -> Result<(), ConfigError> {
        if let Some(value) = self.raw(var) {
            *slot = match value.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => {
                    return Err(ConfigError::Env {
                        var,
                        value,
                        expected: BOOL,
                    });
                }
            };
        }
        Ok(())
    }

    /// A comma-separated list of strings; entries are trimmed and blank ones skipped.
    pub(super) fn list(&self, var: &'static str, slot: &mut Vec<String>) -> Result<(), ConfigError> {
        if let Some(list) = self.raw(var) {
            *slot = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
        }
        Ok(())
    }

    /// Comma-separated IP addresses or CIDRs; blank entries are skipped.
    pub(super) fn networks(&self, var: &'static str, slot: &mut Vec<IpNet>) -> Result<(), ConfigError> {
        if let Some(list) = self.raw(var) {
            *slot = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    crate::proxy::parse_net(s).ok_or_else(|| ConfigError::Invalid {
                        key: TRUSTED_PROXIES,
                        reason: not_a_network(s),
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        Ok(())
    }
}
