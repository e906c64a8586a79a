//! Owns the gateway's configuration: one `Config` struct, layered as
//! file (TOML) < env (`WSGW_*`) < flags, then validated as a whole.
//!
//! This module never reads the process environment except through
//! [`EnvSource`], so tests feed a map and stay independent of the machine
//! (and of each other, since tests run in parallel in one process).
//!
//! The doc comments on [`Config`] fields are the configuration reference:
//! each names its TOML key (the field name), its env var and its default.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

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

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines (`text`).
    Text,
    /// One JSON object per line (`json`), for log shippers.
    Json,
}

impl FromStr for LogFormat {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(()),
        }
    }
}

/// Which async runtime the server builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeFlavor {
    /// A single-threaded runtime (`current_thread`).
    CurrentThread,
    /// A work-stealing runtime with `worker_threads` threads (`multi_thread`).
    MultiThread,
}

impl FromStr for RuntimeFlavor {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        // Accept the dashed spelling too: people type it by analogy with flags.
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "current_thread" => Ok(Self::CurrentThread),
            "multi_thread" => Ok(Self::MultiThread),
            _ => Err(()),
        }
    }
}

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

/// Command-line flags. Every setting flag is optional so that an unset flag
/// leaves the env/file value alone.
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(
    name = "wsgw",
    version,
    about = "WebSocket gateway: fans out published events to subscribed WebSocket clients"
)]
pub struct Cli {
    /// TOML config file (otherwise `WSGW_CONFIG`, otherwise none).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Development mode (same as `WSGW_DEV=true`).
    #[arg(long)]
    pub dev: bool,
    /// Print the effective configuration as TOML, secrets redacted, and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Listen address, e.g. 0.0.0.0:8080.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Node id used in cluster messages (default: derived from hostname and pid).
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Redis URL for the cluster broker. Prefer `WSGW_REDIS_URL`: flags are visible in `ps`.
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
    /// Log filter, e.g. `info` or `wsgw=debug,info`.
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
    /// Log format.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Maximum concurrent WebSocket connections.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Runtime worker threads (0 = one per core).
    #[arg(long, value_name = "N")]
    pub worker_threads: Option<usize>,
}

/// The effective gateway configuration. TOML keys are the field names; unknown
/// keys in the file are rejected.
#[derive(Clone, Serialize, Deserialize)]
// `default` lets a file set only what it changes; `deny_unknown_fields`
// turns a typo into an error instead of a silently ignored setting.
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP/WebSocket listener binds (an IP:port; port 0 picks a free one).
    /// Env `WSGW_LISTEN`, flag `--listen`; default `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// This node's id in cluster messages; empty means the server derives one
    /// from hostname and pid. Env `WSGW_NODE_ID`, flag `--node-id`; default empty.
    pub node_id: String,
    /// Development mode. Env `WSGW_DEV` (true/false/1/0/yes/no), flag `--dev`; default `false`.
    pub dev: bool,
    /// HMAC secret for HS256 client tokens. Secret: redacted in `--print-config`.
    /// Env `WSGW_JWT_SECRET`; default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<String>,
    /// PEM public key file for RS256/ES256 client tokens; mutually exclusive with `jwt_secret`.
    /// Env `WSGW_JWT_PUBLIC_KEY_FILE`; default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// Required `aud` claim, if set. Env `WSGW_JWT_AUDIENCE`; default unset (not checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_audience: Option<String>,
    /// Required `iss` claim, if set. Env `WSGW_JWT_ISSUER`; default unset (not checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_issuer: Option<String>,
    /// Clock skew tolerated on `exp`/`nbf`, in seconds. Env `WSGW_JWT_LEEWAY_S`; default `5`.
    pub jwt_leeway_s: u64,
    /// Reject tokens without an `exp` claim. Env `WSGW_JWT_REQUIRE_EXP`; default `true`.
    pub jwt_require_exp: bool,
    /// Key required by the HTTP publish API. Secret: redacted in `--print-config`.
    /// Env `WSGW_API_KEY`; default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Redis URL for the cluster broker; unset means an in-memory, single-node broker.
    /// Its password is redacted in `--print-config`. Env `WSGW_REDIS_URL`, flag `--redis-url`; default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel, so several deployments can share one Redis.
    /// Env `WSGW_REDIS_PREFIX`; default `ws:`.
    pub redis_prefix: String,
    /// How often the server pings each client, in milliseconds.
    /// Env `WSGW_HEARTBEAT_INTERVAL_MS`; default `30000`.
    pub heartbeat_interval_ms: u64,
    /// Silence after which a client is dropped, in milliseconds; must exceed the interval.
    /// Env `WSGW_HEARTBEAT_TIMEOUT_MS`; default `60000`.
    pub heartbeat_timeout_ms: u64,
    /// Largest inbound WebSocket message, in bytes. Env `WSGW_MAX_MESSAGE_BYTES`; default `65536`.
    pub max_message_bytes: usize,
    /// Largest HTTP publish API request body, in bytes. Env `WSGW_MAX_PUBLISH_BYTES`; default `1048576`.
    pub max_publish_bytes: usize,
    /// Maximum concurrent WebSocket connections on this node.
    /// Env `WSGW_MAX_CONNECTIONS`, flag `--max-connections`; default `100000`.
    pub max_connections: usize,
    /// Maximum concurrent connections per authenticated user on this node; `0` = unlimited.
    /// Env `WSGW_MAX_CONNECTIONS_PER_USER`; default `0`.
    pub max_connections_per_user: usize,
    /// Outbound frames queued per socket before the client counts as too slow.
    /// Env `WSGW_SEND_QUEUE`; default `1024`.
    pub send_queue: usize,
    /// How long a disconnected session stays resumable, in milliseconds.
    /// Env `WSGW_SESSION_TTL_MS`; default `120000`.
    pub session_ttl_ms: u64,
    /// TTL of presence keys and of this node's registry entry (Redis broker), in
    /// milliseconds; refreshed every third of it. `0` derives it: heartbeat timeout + 5 s.
    /// Env `WSGW_PRESENCE_TTL_MS`; default `0`.
    pub presence_ttl_ms: u64,
    /// How often the node publishes a canary on its own control channel to prove its Redis
    /// pub/sub connection alive (three missed: not ready, reconnect), in milliseconds.
    /// Env `WSGW_CANARY_INTERVAL_MS`; default `2000`.
    pub canary_interval_ms: u64,
    /// Longest a Redis command may take before the caller gets `unavailable` / HTTP 503, in
    /// milliseconds. Env `WSGW_REDIS_TIMEOUT_MS`; default `1000`.
    pub redis_timeout_ms: u64,
    /// How long a client `request` may wait for its backend's first (or next streamed)
    /// `response` before the gateway answers `error` `timeout`, in milliseconds.
    /// Env `WSGW_REQUEST_TIMEOUT_MS`; default `30000`.
    pub request_timeout_ms: u64,
    /// Requests one socket may have waiting for a backend at once; more get `rate_limited`.
    /// Env `WSGW_MAX_PENDING_REQUESTS`; default `64`.
    pub max_pending_requests: usize,
    /// Approximate length the `<prefix>inbound` request stream is trimmed to.
    /// Env `WSGW_INBOUND_MAXLEN`; default `100000`.
    pub inbound_maxlen: usize,
    /// Proxies (IPs or CIDRs, comma-separated in the env) whose `X-Forwarded-For` is believed:
    /// the client address is the rightmost address in it that is not a trusted proxy.
    /// Env `WSGW_TRUSTED_PROXIES`; default empty (the TCP peer is the client).
    pub trusted_proxies: Vec<String>,
    /// Sockets one client address may hold on this node; `0` means unlimited.
    /// Env `WSGW_MAX_CONNECTIONS_PER_IP`; default `0`.
    pub max_connections_per_ip: usize,
    /// Events kept per channel for replay; `0` disables history.
    /// Env `WSGW_HISTORY_SIZE`; default `1000`.
    pub history_size: usize,
    /// How long channel history is kept, in milliseconds. Env `WSGW_HISTORY_TTL_MS`; default `3600000`.
    pub history_ttl_ms: u64,
    /// Most events replayed to one client on (re)subscribe. Env `WSGW_MAX_REPLAY`; default `1000`.
    pub max_replay: usize,
    /// Most topics one connection may subscribe to. Env `WSGW_MAX_SUBSCRIPTIONS`; default `128`.
    pub max_subscriptions: usize,
    /// Inbound frames per second allowed per connection; `0` turns rate limiting off.
    /// Env `WSGW_RATE_LIMIT_PER_S`; default `50`.
    pub rate_limit_per_s: u32,
    /// Frames a connection may send in a burst above the steady rate.
    /// Env `WSGW_RATE_LIMIT_BURST`; default `100`.
    pub rate_limit_burst: u32,
    /// Rate-limited frames tolerated before the connection is closed with 1008.
    /// Env `WSGW_RATE_LIMIT_STRIKES`; default `20`.
    pub rate_limit_strikes: u32,
    /// Grace period on shutdown for connections to close, in milliseconds.
    /// Env `WSGW_DRAIN_MS`; default `5000`.
    pub drain_ms: u64,
    /// WebSocket read buffer per connection, in bytes. Env `WSGW_WS_READ_BUFFER_BYTES`; default `2048` (the largest share of an idle socket's memory; client frames are small).
    pub ws_read_buffer_bytes: usize,
    /// Log filter in `tracing` env-filter syntax, e.g. `info` or `wsgw=debug,info`.
    /// Env `WSGW_LOG`, flag `--log`; default `info`.
    pub log: String,
    /// Log format: `text` or `json`. Env `WSGW_LOG_FORMAT`, flag `--log-format`; default `text`.
    pub log_format: LogFormat,
    /// Async runtime: `current_thread` or `multi_thread`. Env `WSGW_RUNTIME`; default `multi_thread`.
    pub runtime: RuntimeFlavor,
    /// Worker threads of the `multi_thread` runtime; `0` = one per core.
    /// Env `WSGW_WORKER_THREADS`, flag `--worker-threads`; default `0`.
    pub worker_threads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            node_id: String::new(),
            dev: false,
            jwt_secret: None,
            jwt_public_key_file: None,
            jwt_audience: None,
            jwt_issuer: None,
            jwt_leeway_s: 5,
            jwt_require_exp: true,
            api_key: None,
            redis_url: None,
            redis_prefix: "ws:".to_owned(),
            heartbeat_interval_ms: 30_000,
            heartbeat_timeout_ms: 60_000,
            max_message_bytes: 65_536,
            max_publish_bytes: 1_048_576,
            max_connections: 100_000,
            max_connections_per_user: 0,
            send_queue: 1024,
            session_ttl_ms: 120_000,
            presence_ttl_ms: 0,
            canary_interval_ms: 2000,
            redis_timeout_ms: 1000,
            request_timeout_ms: 30_000,
            max_pending_requests: 64,
            inbound_maxlen: 100_000,
            trusted_proxies: Vec::new(),
            max_connections_per_ip: 0,
            history_size: 1000,
            history_ttl_ms: 3_600_000,
            max_replay: 1000,
            max_subscriptions: 128,
            rate_limit_per_s: 50,
            rate_limit_burst: 100,
            rate_limit_strikes: 20,
            drain_ms: 5000,
            ws_read_buffer_bytes: 2048,
            log: "info".to_owned(),
            log_format: LogFormat::Text,
            runtime: RuntimeFlavor::MultiThread,
            worker_threads: 0,
        }
    }
}

/// Stands in for secrets in `to_redacted_toml` and `Debug`. `validate` rejects
/// it as a secret value, so a pasted `--print-config` output fails loudly
/// instead of running with a wrong key.
const REDACTED: &str = "<redacted>";

const MS: &str = "a whole number of milliseconds";
const SECS: &str = "a whole number of seconds";
const BYTES: &str = "a whole number of bytes";
const COUNT: &str = "a whole number";
const BOOL: &str = "true, false, 1, 0, yes or no";

impl Config {
    /// Builds the effective config: defaults < file (if `cli.config` is set, or
    /// the `WSGW_CONFIG` env var names one) < env < flags, then [`validate`](Self::validate)s it.
    pub fn load(cli: &Cli, env: &dyn EnvSource) -> Result<Config, ConfigError> {
        let env = EnvLayer(env);
        let file = cli.config.clone().or_else(|| env.raw("WSGW_CONFIG").map(PathBuf::from));
        let mut config = match file {
            Some(path) => Self::from_file(&path)?,
            None => Self::default(),
        };
        config.apply_env(&env)?;
        config.apply_cli(cli);
        config.validate()?;
        Ok(config)
    }

    /// Cross-field checks: heartbeat timeout > interval, sizes > 0, at most one
    /// JWT key source, no empty or placeholder secrets, and so on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Zero here would make the server unusable rather than "unlimited".
        let positive: [(&'static str, u64); 10] = [
            ("request_timeout_ms", self.request_timeout_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("canary_interval_ms", self.canary_interval_ms),
            ("redis_timeout_ms", self.redis_timeout_ms),
            ("max_message_bytes", self.max_message_bytes as u64),
            ("max_publish_bytes", self.max_publish_bytes as u64),
            ("max_connections", self.max_connections as u64),
            ("send_queue", self.send_queue as u64),
            ("max_subscriptions", self.max_subscriptions as u64),
            ("ws_read_buffer_bytes", self.ws_read_buffer_bytes as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0".to_owned()));
            }
        }
        if self.heartbeat_timeout_ms <= self.heartbeat_interval_ms {
            // A timeout no longer than the interval drops healthy clients
            // before their next ping is even due.
            return Err(invalid(
                "heartbeat_timeout_ms",
                format!(
                    "{} must be greater than heartbeat_interval_ms ({})",
                    self.heartbeat_timeout_ms, self.heartbeat_interval_ms
                ),
            ));
        }
        if self.rate_limit_per_s > 0 && self.rate_limit_burst == 0 {
            // A token bucket of size 0 never admits a frame.
            return Err(invalid(
                "rate_limit_burst",
                "must be greater than 0 while rate_limit_per_s is on".to_owned(),
            ));
        }
        if self.jwt_secret.is_some() && self.jwt_public_key_file.is_some() {
            // With both, which algorithm a token may use would be ambiguous.
            return Err(invalid(
                "jwt_secret",
                "set either jwt_secret or jwt_public_key_file, not both".to_owned(),
            ));
        }
        for (key, secret) in [("jwt_secret", &self.jwt_secret), ("api_key", &self.api_key)] {
            match secret.as_deref() {
                Some("") => return Err(invalid(key, "must not be empty".to_owned())),
                Some(REDACTED) => {
                    return Err(invalid(
                        key,
                        format!("is the placeholder {REDACTED:?} from --print-config, not a real secret"),
                    ));
                }
                _ => {}
            }
        }
        if self.runtime == RuntimeFlavor::CurrentThread && self.worker_threads > 0 {
            return Err(invalid(
                "worker_threads",
                format!(
                    "{} only applies to runtime = \"multi_thread\", but runtime is \"current_thread\"",
                    self.worker_threads
                ),
            ));
        }
        for p in &self.trusted_proxies {
            if crate::proxy::Cidr::parse(p).is_none() {
                return Err(invalid(
                    "trusted_proxies",
                    format!("{p:?} is not an IP address or CIDR"),
                ));
            }
        }
        Ok(())
    }

    /// The presence TTL in effect: the configured one, or heartbeat timeout + 5 s.
    pub fn effective_presence_ttl_ms(&self) -> u64 {
        if self.presence_ttl_ms > 0 {
            self.presence_ttl_ms
        } else {
            self.heartbeat_timeout_ms + 5000
        }
    }

    /// The effective config as TOML with secrets (`jwt_secret`, `api_key`, the
    /// `redis_url` password) redacted. Unset optional keys are omitted; apart
    /// from the redacted secrets, the output loads back as a config file.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string(&self.redacted())
            // Only a non-UTF-8 path can fail to serialize; say so rather than panic.
            .unwrap_or_else(|e| format!("# cannot render the configuration as TOML: {e}\n"))
    }

    fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.jwt_secret = c.jwt_secret.map(|_| REDACTED.to_owned());
        c.api_key = c.api_key.map(|_| REDACTED.to_owned());
        c.redis_url = c.redis_url.as_deref().map(redact_url);
        c
    }

    fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    fn apply_env(&mut self, env: &EnvLayer<'_>) -> Result<(), ConfigError> {
        env.parse(
            "WSGW_LISTEN",
            &mut self.listen,
            "an IP:port socket address such as 0.0.0.0:8080",
        )?;
        env.string("WSGW_NODE_ID", &mut self.node_id);
        env.bool("WSGW_DEV", &mut self.dev)?;
        env.opt_string("WSGW_JWT_SECRET", &mut self.jwt_secret);
        if let Some(v) = env.raw("WSGW_JWT_PUBLIC_KEY_FILE") {
            self.jwt_public_key_file = Some(PathBuf::from(v));
        }
        env.opt_string("WSGW_JWT_AUDIENCE", &mut self.jwt_audience);
        env.opt_string("WSGW_JWT_ISSUER", &mut self.jwt_issuer);
        env.parse("WSGW_JWT_LEEWAY_S", &mut self.jwt_leeway_s, SECS)?;
        env.bool("WSGW_JWT_REQUIRE_EXP", &mut self.jwt_require_exp)?;
        env.opt_string("WSGW_API_KEY", &mut self.api_key);
        env.opt_string("WSGW_REDIS_URL", &mut self.redis_url);
        env.string("WSGW_REDIS_PREFIX", &mut self.redis_prefix);
        env.parse("WSGW_HEARTBEAT_INTERVAL_MS", &mut self.heartbeat_interval_ms, MS)?;
        env.parse("WSGW_HEARTBEAT_TIMEOUT_MS", &mut self.heartbeat_timeout_ms, MS)?;
        env.parse("WSGW_MAX_MESSAGE_BYTES", &mut self.max_message_bytes, BYTES)?;
        env.parse("WSGW_MAX_PUBLISH_BYTES", &mut self.max_publish_bytes, BYTES)?;
        env.parse("WSGW_MAX_CONNECTIONS", &mut self.max_connections, COUNT)?;
        env.parse(
            "WSGW_MAX_CONNECTIONS_PER_USER",
            &mut self.max_connections_per_user,
            COUNT,
        )?;
        env.parse("WSGW_SEND_QUEUE", &mut self.send_queue, "a whole number of frames")?;
        env.parse("WSGW_SESSION_TTL_MS", &mut self.session_ttl_ms, MS)?;
        env.parse("WSGW_PRESENCE_TTL_MS", &mut self.presence_ttl_ms, MS)?;
        env.parse("WSGW_CANARY_INTERVAL_MS", &mut self.canary_interval_ms, MS)?;
        env.parse("WSGW_REDIS_TIMEOUT_MS", &mut self.redis_timeout_ms, MS)?;
        env.parse("WSGW_REQUEST_TIMEOUT_MS", &mut self.request_timeout_ms, MS)?;
        env.parse("WSGW_MAX_PENDING_REQUESTS", &mut self.max_pending_requests, COUNT)?;
        env.parse("WSGW_INBOUND_MAXLEN", &mut self.inbound_maxlen, COUNT)?;
        env.parse("WSGW_MAX_CONNECTIONS_PER_IP", &mut self.max_connections_per_ip, COUNT)?;
        if let Some(list) = env.raw("WSGW_TRUSTED_PROXIES") {
            self.trusted_proxies = list
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
        }
        env.parse("WSGW_HISTORY_SIZE", &mut self.history_size, "a whole number of events")?;
        env.parse("WSGW_HISTORY_TTL_MS", &mut self.history_ttl_ms, MS)?;
        env.parse("WSGW_MAX_REPLAY", &mut self.max_replay, "a whole number of events")?;
        env.parse("WSGW_MAX_SUBSCRIPTIONS", &mut self.max_subscriptions, COUNT)?;
        env.parse(
            "WSGW_RATE_LIMIT_PER_S",
            &mut self.rate_limit_per_s,
            "a whole number of frames per second (at most 4294967295)",
        )?;
        env.parse(
            "WSGW_RATE_LIMIT_BURST",
            &mut self.rate_limit_burst,
            "a whole number of frames (at most 4294967295)",
        )?;
        env.parse(
            "WSGW_RATE_LIMIT_STRIKES",
            &mut self.rate_limit_strikes,
            "a whole number of frames (at most 4294967295)",
        )?;
        env.parse("WSGW_DRAIN_MS", &mut self.drain_ms, MS)?;
        env.parse("WSGW_WS_READ_BUFFER_BYTES", &mut self.ws_read_buffer_bytes, BYTES)?;
        env.string("WSGW_LOG", &mut self.log);
        env.parse("WSGW_LOG_FORMAT", &mut self.log_format, "text or json")?;
        env.parse("WSGW_RUNTIME", &mut self.runtime, "current_thread or multi_thread")?;
        env.parse("WSGW_WORKER_THREADS", &mut self.worker_threads, COUNT)?;
        Ok(())
    }

    fn apply_cli(&mut self, cli: &Cli) {
        // `--dev` can only switch dev mode on: a bare flag has no "off" spelling,
        // and its absence must not override env/file.
        if cli.dev {
            self.dev = true;
        }
        if let Some(v) = cli.listen {
            self.listen = v;
        }
        if let Some(v) = &cli.node_id {
            self.node_id.clone_from(v);
        }
        if let Some(v) = &cli.redis_url {
            self.redis_url = Some(v.clone());
        }
        if let Some(v) = &cli.log {
            self.log.clone_from(v);
        }
        if let Some(v) = cli.log_format {
            self.log_format = v;
        }
        if let Some(v) = cli.max_connections {
            self.max_connections = v;
        }
        if let Some(v) = cli.worker_threads {
            self.worker_threads = v;
        }
    }
}

impl fmt::Debug for Config {
    // Hand-written so that `debug!(?config)` cannot leak secrets. The
    // exhaustive destructuring makes adding a field without listing it here
    // a compile error.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Config {
            listen,
            node_id,
            dev,
            jwt_secret,
            jwt_public_key_file,
            jwt_audience,
            jwt_issuer,
            jwt_leeway_s,
            jwt_require_exp,
            api_key,
            redis_url,
            redis_prefix,
            heartbeat_interval_ms,
            heartbeat_timeout_ms,
            max_message_bytes,
            max_publish_bytes,
            max_connections,
            max_connections_per_user,
            send_queue,
            session_ttl_ms,
            presence_ttl_ms,
            canary_interval_ms,
            redis_timeout_ms,
            request_timeout_ms,
            max_pending_requests,
            inbound_maxlen,
            trusted_proxies,
            max_connections_per_ip,
            history_size,
            history_ttl_ms,
            max_replay,
            max_subscriptions,
            rate_limit_per_s,
            rate_limit_burst,
            rate_limit_strikes,
            drain_ms,
            ws_read_buffer_bytes,
            log,
            log_format,
            runtime,
            worker_threads,
        } = self;
        let hide = |s: &Option<String>| s.as_ref().map(|_| REDACTED);
        f.debug_struct("Config")
            .field("listen", listen)
            .field("node_id", node_id)
            .field("dev", dev)
            .field("jwt_secret", &hide(jwt_secret))
            .field("jwt_public_key_file", jwt_public_key_file)
            .field("jwt_audience", jwt_audience)
            .field("jwt_issuer", jwt_issuer)
            .field("jwt_leeway_s", jwt_leeway_s)
            .field("jwt_require_exp", jwt_require_exp)
            .field("api_key", &hide(api_key))
            .field("redis_url", &redis_url.as_deref().map(redact_url))
            .field("redis_prefix", redis_prefix)
            .field("heartbeat_interval_ms", heartbeat_interval_ms)
            .field("heartbeat_timeout_ms", heartbeat_timeout_ms)
            .field("max_message_bytes", max_message_bytes)
            .field("max_publish_bytes", max_publish_bytes)
            .field("max_connections", max_connections)
            .field("max_connections_per_user", max_connections_per_user)
            .field("send_queue", send_queue)
            .field("session_ttl_ms", session_ttl_ms)
            .field("presence_ttl_ms", presence_ttl_ms)
            .field("canary_interval_ms", canary_interval_ms)
            .field("redis_timeout_ms", redis_timeout_ms)
            .field("request_timeout_ms", request_timeout_ms)
            .field("max_pending_requests", max_pending_requests)
            .field("inbound_maxlen", inbound_maxlen)
            .field("trusted_proxies", trusted_proxies)
            .field("max_connections_per_ip", max_connections_per_ip)
            .field("history_size", history_size)
            .field("history_ttl_ms", history_ttl_ms)
            .field("max_replay", max_replay)
            .field("max_subscriptions", max_subscriptions)
            .field("rate_limit_per_s", rate_limit_per_s)
            .field("rate_limit_burst", rate_limit_burst)
            .field("rate_limit_strikes", rate_limit_strikes)
            .field("drain_ms", drain_ms)
            .field("ws_read_buffer_bytes", ws_read_buffer_bytes)
            .field("log", log)
            .field("log_format", log_format)
            .field("runtime", runtime)
            .field("worker_threads", worker_threads)
            .finish()
    }
}

fn invalid(key: &'static str, reason: String) -> ConfigError {
    ConfigError::Invalid { key, reason }
}

/// Hides the password in `scheme://user:password@host/...` (and a bare
/// `scheme://secret@host`, which some Redis clients read as a password), plus
/// `pass=`/`password=` query parameters used by `redis+unix://` URLs.
fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        // Not a URL we understand: hiding all of it is the safe choice.
        return REDACTED.to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:{REDACTED}{host}"),
                None => format!("{REDACTED}{host}"),
            }
        }
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") => {
                        format!("{k}={REDACTED}")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}{authority}{tail}")
}

/// Env lookups with the module's shared rules: empty (or all-blank) values
/// count as unset, and parse errors name the variable and the expected shape.
struct EnvLayer<'a>(&'a dyn EnvSource);

impl EnvLayer<'_> {
    fn raw(&self, var: &str) -> Option<String> {
        self.0.get(var).filter(|v| !v.trim().is_empty())
    }

    fn string(&self, var: &str, slot: &mut String) {
        if let Some(v) = self.raw(var) {
            *slot = v;
        }
    }

    fn opt_string(&self, var: &str, slot: &mut Option<String>) {
        if let Some(v) = self.raw(var) {
            *slot = Some(v);
        }
    }

    fn parse<T: FromStr>(&self, var: &'static str, slot: &mut T, expected: &'static str) -> Result<(), ConfigError> {
        if let Some(value) = self.raw(var) {
            // Typed values tolerate stray whitespace from shell quoting or .env files.
            *slot = value
                .trim()
                .parse()
                .map_err(|_| ConfigError::Env { var, value, expected })?;
        }
        Ok(())
    }

    fn bool(&self, var: &'static str, slot: &mut bool) -> Result<(), ConfigError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// A config file unique to this test run, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(contents: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "wsgw-config-test-{}-{}.toml",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let path = std::env::temp_dir().join(name);
            std::fs::write(&path, contents).unwrap();
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn cli_with_file(file: &TempFile) -> Cli {
        Cli {
            config: Some(file.0.clone()),
            ..Cli::default()
        }
    }

    #[test]
    fn with_nothing_set_the_defaults_apply() {
        let c = Config::load(&Cli::default(), &env(&[])).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.node_id, "");
        assert!(!c.dev);
        assert_eq!(c.jwt_secret, None);
        assert_eq!(c.jwt_leeway_s, 5);
        assert!(c.jwt_require_exp);
        assert_eq!(c.redis_url, None);
        assert_eq!(c.redis_prefix, "ws:");
        assert_eq!((c.heartbeat_interval_ms, c.heartbeat_timeout_ms), (30_000, 60_000));
        assert_eq!((c.max_message_bytes, c.max_publish_bytes), (65_536, 1_048_576));
        assert_eq!((c.max_connections, c.max_connections_per_user), (100_000, 0));
        assert_eq!((c.send_queue, c.session_ttl_ms), (1024, 120_000));
        assert_eq!(
            (c.history_size, c.history_ttl_ms, c.max_replay),
            (1000, 3_600_000, 1000)
        );
        assert_eq!(c.max_subscriptions, 128);
        assert_eq!(
            (c.rate_limit_per_s, c.rate_limit_burst, c.rate_limit_strikes),
            (50, 100, 20)
        );
        assert_eq!((c.drain_ms, c.ws_read_buffer_bytes), (5000, 2048));
        assert_eq!(c.log, "info");
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.runtime, RuntimeFlavor::MultiThread);
        assert_eq!(c.worker_threads, 0);
    }

    #[test]
    fn env_overrides_the_file_and_the_file_overrides_defaults() {
        let file = TempFile::new(
            "listen = \"127.0.0.1:9000\"\nlog = \"debug\"\nheartbeat_interval_ms = 1000\n\
             heartbeat_timeout_ms = 5000\nlog_format = \"json\"\n",
        );
        let c = Config::load(
            &cli_with_file(&file),
            &env(&[("WSGW_LOG", "warn"), ("WSGW_HEARTBEAT_TIMEOUT_MS", "9000")]),
        )
        .unwrap();
        assert_eq!(c.log, "warn");
        assert_eq!(c.heartbeat_timeout_ms, 9000);
        assert_eq!(c.heartbeat_interval_ms, 1000);
        assert_eq!(c.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.max_replay, 1000, "keys absent from the file keep their defaults");
    }

    #[test]
    fn flags_override_env() {
        let cli = Cli::try_parse_from([
            "wsgw",
            "--listen",
            "127.0.0.1:1",
            "--log",
            "trace",
            "--log-format",
            "json",
            "--max-connections",
            "7",
            "--worker-threads",
            "2",
            "--node-id",
            "n1",
            "--redis-url",
            "redis://r:6379",
            "--dev",
        ])
        .unwrap();
        let e = env(&[
            ("WSGW_LISTEN", "127.0.0.1:2"),
            ("WSGW_LOG", "warn"),
            ("WSGW_LOG_FORMAT", "text"),
            ("WSGW_MAX_CONNECTIONS", "8"),
            ("WSGW_WORKER_THREADS", "3"),
            ("WSGW_NODE_ID", "n2"),
            ("WSGW_REDIS_URL", "redis://other:6379"),
            ("WSGW_DEV", "no"),
            ("WSGW_SEND_QUEUE", "16"),
        ]);
        let c = Config::load(&cli, &e).unwrap();
        assert_eq!(c.listen, "127.0.0.1:1".parse().unwrap());
        assert_eq!(c.log, "trace");
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.max_connections, 7);
        assert_eq!(c.worker_threads, 2);
        assert_eq!(c.node_id, "n1");
        assert_eq!(c.redis_url.as_deref(), Some("redis://r:6379"));
        assert!(c.dev);
        assert_eq!(c.send_queue, 16, "env still applies where no flag was given");

        // Absent flags leave env alone.
        let c = Config::load(&Cli::default(), &e).unwrap();
        assert_eq!((c.log.as_str(), c.max_connections, c.dev), ("warn", 8, false));
    }

    #[test]
    fn a_bad_number_names_the_variable_and_what_was_expected() {
        let err = Config::load(&Cli::default(), &env(&[("WSGW_HEARTBEAT_INTERVAL_MS", "abc")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "WSGW_HEARTBEAT_INTERVAL_MS=abc: expected a whole number of milliseconds"
        );
        let err = Config::load(&Cli::default(), &env(&[("WSGW_RATE_LIMIT_PER_S", "-1")])).unwrap_err();
        assert!(
            err.to_string().starts_with("WSGW_RATE_LIMIT_PER_S=-1: expected"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_log_format_names_the_choices() {
        let err = Config::load(&Cli::default(), &env(&[("WSGW_LOG_FORMAT", "xml")])).unwrap_err();
        assert_eq!(err.to_string(), "WSGW_LOG_FORMAT=xml: expected text or json");
        // Case does not matter for enum values from env.
        let c = Config::load(&Cli::default(), &env(&[("WSGW_LOG_FORMAT", "JSON")])).unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        // The flag is checked by clap.
        assert!(Cli::try_parse_from(["wsgw", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn an_unknown_toml_key_is_an_error_naming_the_key_and_file() {
        let file = TempFile::new("listen = \"127.0.0.1:9000\"\nheartbeat_intervl_ms = 10\n");
        let err = Config::load(&cli_with_file(&file), &env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("heartbeat_intervl_ms"), "{msg}");
        assert!(msg.contains(&file.0.display().to_string()), "{msg}");
    }

    #[test]
    fn a_heartbeat_timeout_not_above_the_interval_is_rejected() {
        let e = env(&[("WSGW_HEARTBEAT_INTERVAL_MS", "60000")]);
        let err = Config::load(&Cli::default(), &e).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    key: "heartbeat_timeout_ms",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("heartbeat_interval_ms"), "{err}");

        let mut c = Config::default();
        c.heartbeat_timeout_ms = c.heartbeat_interval_ms + 1;
        c.validate().unwrap();
    }

    #[test]
    fn other_cross_field_checks() {
        let bad = |f: fn(&mut Config), key: &str| {
            let mut c = Config::default();
            f(&mut c);
            match c.validate() {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key),
                other => panic!("expected {key} to be rejected, got {other:?}"),
            }
        };
        bad(|c| c.max_message_bytes = 0, "max_message_bytes");
        bad(|c| c.send_queue = 0, "send_queue");
        bad(|c| c.rate_limit_burst = 0, "rate_limit_burst");
        bad(
            |c| {
                c.jwt_secret = Some("s".into());
                c.jwt_public_key_file = Some("k.pem".into());
            },
            "jwt_secret",
        );
        bad(|c| c.api_key = Some(String::new()), "api_key");
        bad(|c| c.jwt_secret = Some(REDACTED.into()), "jwt_secret");
        bad(
            |c| {
                c.runtime = RuntimeFlavor::CurrentThread;
                c.worker_threads = 2;
            },
            "worker_threads",
        );
        // Rate limiting off makes a zero burst irrelevant.
        let c = Config {
            rate_limit_per_s: 0,
            rate_limit_burst: 0,
            ..Config::default()
        };
        c.validate().unwrap();
    }

    #[test]
    fn redacted_toml_hides_secrets_and_loads_back() {
        let e = env(&[
            ("WSGW_JWT_SECRET", "hunter2-jwt"),
            ("WSGW_API_KEY", "hunter2-api"),
            ("WSGW_REDIS_URL", "redis://app:hunter2-redis@redis.internal:6379/0"),
            ("WSGW_JWT_AUDIENCE", "clients"),
        ]);
        let c = Config::load(&Cli::default(), &e).unwrap();
        let out = c.to_redacted_toml();
        assert!(!out.contains("hunter2"), "{out}");
        assert!(out.contains("jwt_secret = \"<redacted>\""), "{out}");
        assert!(out.contains("redis://app:<redacted>@redis.internal:6379/0"), "{out}");
        assert!(out.contains("jwt_audience = \"clients\""), "{out}");
        assert!(out.contains("runtime = \"multi_thread\""), "{out}");
        assert!(
            !format!("{c:?}").contains("hunter2"),
            "Debug must not leak secrets either"
        );

        // Apart from the secrets, the output is a valid config file.
        let back: Config = toml::from_str(&out).unwrap();
        assert_eq!(back.listen, c.listen);
        assert_eq!(back.jwt_audience, c.jwt_audience);
        assert_eq!(back.runtime, c.runtime);
        assert!(
            back.validate().is_err(),
            "placeholder secrets must not pass as real ones"
        );
    }

    #[test]
    fn redis_url_redaction_covers_the_common_shapes() {
        assert_eq!(redact_url("redis://localhost:6379"), "redis://localhost:6379");
        assert_eq!(redact_url("redis://:pw@h:6379"), "redis://:<redacted>@h:6379");
        assert_eq!(redact_url("rediss://u:p:w@h/1"), "rediss://u:<redacted>@h/1");
        assert_eq!(redact_url("redis://pw@h"), "redis://<redacted>@h");
        assert_eq!(
            redact_url("redis+unix:///run/redis.sock?db=1&pass=pw"),
            "redis+unix:///run/redis.sock?db=1&pass=<redacted>"
        );
        assert_eq!(redact_url("not a url"), REDACTED);
    }

    #[test]
    fn wsgw_config_picks_the_file_unless_a_flag_names_another() {
        let from_env = TempFile::new("node_id = \"from-env-file\"\n");
        let from_flag = TempFile::new("node_id = \"from-flag-file\"\n");
        let e = env(&[("WSGW_CONFIG", from_env.0.to_str().unwrap())]);
        assert_eq!(Config::load(&Cli::default(), &e).unwrap().node_id, "from-env-file");
        assert_eq!(
            Config::load(&cli_with_file(&from_flag), &e).unwrap().node_id,
            "from-flag-file"
        );
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let path = std::env::temp_dir().join("wsgw-config-test-does-not-exist.toml");
        let e = env(&[("WSGW_CONFIG", path.to_str().unwrap())]);
        let err = Config::load(&Cli::default(), &e).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
        assert!(
            err.to_string().contains("wsgw-config-test-does-not-exist.toml"),
            "{err}"
        );
    }

    #[test]
    fn empty_env_values_count_as_unset_and_booleans_accept_common_spellings() {
        let c = Config::load(
            &Cli::default(),
            &env(&[("WSGW_LOG", ""), ("WSGW_MAX_REPLAY", " "), ("WSGW_JWT_SECRET", "")]),
        )
        .unwrap();
        assert_eq!((c.log.as_str(), c.max_replay, c.jwt_secret), ("info", 1000, None));

        for (value, want) in [
            ("true", true),
            ("1", true),
            ("YES", true),
            ("false", false),
            ("0", false),
            ("no", false),
        ] {
            let c = Config::load(&Cli::default(), &env(&[("WSGW_JWT_REQUIRE_EXP", value)])).unwrap();
            assert_eq!(c.jwt_require_exp, want, "{value}");
        }
        let err = Config::load(&Cli::default(), &env(&[("WSGW_DEV", "maybe")])).unwrap_err();
        assert_eq!(err.to_string(), "WSGW_DEV=maybe: expected true, false, 1, 0, yes or no");
    }

    #[test]
    fn runtime_flavor_from_env() {
        let e = env(&[("WSGW_RUNTIME", "current-thread")]);
        assert_eq!(
            Config::load(&Cli::default(), &e).unwrap().runtime,
            RuntimeFlavor::CurrentThread
        );
        let err = Config::load(&Cli::default(), &env(&[("WSGW_RUNTIME", "tokio")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "WSGW_RUNTIME=tokio: expected current_thread or multi_thread"
        );
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["wsgw", "--config", "x.toml", "--print-config"]).unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("x.toml")));
        assert!(cli.print_config && !cli.dev && cli.listen.is_none());
    }
}
