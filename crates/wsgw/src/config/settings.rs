//! The settings table: each setting is declared once, here, with its doc, type, default, env
//! var and how the env var is read. The `settings!` macro derives from it the [`Config`]
//! struct (whose serde attributes make the TOML layer), its `Default`, the env layer
//! (`apply_env`) and [`SETTINGS`], which `tests/config_doc.rs` checks docs/configuration.md
//! against. `Debug` is derived: the secrets are `SecretString`s, which print redacted.
//!
//! Adding a setting is one entry here, one row in docs/configuration.md (the test fails
//! until it is there) and, if it has a flag, one field in `Cli` and one line in `apply_cli`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use ipnet::IpNet;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::env::{BYTES, COUNT, EVENTS, EnvLayer, FRAMES, FRAMES_PER_S_U32, FRAMES_U32, MS, SECS};

/// One setting as docs/configuration.md lists it: its TOML key and its env var.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The TOML key, which is also the [`Config`] field name.
    pub key: &'static str,
    /// The env var, `WSGW_*`.
    pub env: &'static str,
}

/// Declares the settings. Each entry is
/// `#[attrs] field: Type = default, ENV_VAR => reader(args);`, where `reader` is an
/// [`EnvLayer`] method taking the var, the field and `args`.
macro_rules! settings {
    ($(
        $(#[$attr:meta])*
        $name:ident: $ty:ty = $default:expr, $env:ident => $read:ident $(($($arg:expr),*))?;
    )*) => {
        /// The effective gateway configuration. TOML keys are the field names; unknown
        /// keys in the file are rejected. Serializing it redacts the secrets.
        #[derive(Clone, Debug, Serialize, Deserialize)]
        // `default` lets a file set only what it changes; `deny_unknown_fields`
        // turns a typo into an error instead of a silently ignored setting.
        #[serde(default, deny_unknown_fields)]
        pub struct Config {
            $(
                $(#[$attr])*
                ///
                #[doc = concat!("Env `", stringify!($env), "`.")]
                pub $name: $ty,
            )*
        }

        impl Default for Config {
            fn default() -> Self {
                Self { $($name: $default,)* }
            }
        }

        impl Config {
            /// Overrides each field whose env var is set (and not blank).
            pub(super) fn apply_env(&mut self, env: &EnvLayer<'_>) -> Result<(), ConfigError> {
                $( env.$read(stringify!($env), &mut self.$name $($(, $arg)*)?)?; )*
                Ok(())
            }
        }

        /// Every setting, in the order of [`Config`]'s fields.
        pub const SETTINGS: &[Setting] = &[
            $( Setting { key: stringify!($name), env: stringify!($env) }, )*
        ];
    };
}

settings! {
    /// Address the HTTP/WebSocket listener binds (an IP:port; port 0 picks a free one).
    listen: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 8080)),
        WSGW_LISTEN => parse("an IP:port socket address such as 0.0.0.0:8080");
    /// Connections the kernel may hold for the listener before they are accepted (the
    /// `listen(2)` backlog; Linux caps it at `net.core.somaxconn`).
    listen_backlog: u32 = 4096, WSGW_LISTEN_BACKLOG => parse(COUNT);
    /// A second address that serves only `/metrics` (say, a private interface for the scraper);
    /// unset: none. `/metrics` stays on `listen` as well.
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_listen: Option<SocketAddr> = None,
        WSGW_METRICS_LISTEN => opt_parse("an IP:port socket address such as 127.0.0.1:9100");
    /// This node's id in cluster messages; empty means the server derives one
    /// from hostname and pid.
    node_id: String = String::new(), WSGW_NODE_ID => string;
    /// Development mode (true/false/1/0/yes/no in the env).
    dev: bool = false, WSGW_DEV => bool;
    /// HMAC secret for HS256 client tokens. Secret: redacted in `--print-config` and `Debug`.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "super::format::serialize_secret")]
    jwt_secret: Option<SecretString> = None, WSGW_JWT_SECRET => opt;
    /// PEM public key file for RS256/ES256 client tokens; mutually exclusive with `jwt_secret`.
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_public_key_file: Option<PathBuf> = None, WSGW_JWT_PUBLIC_KEY_FILE => opt;
    /// JWKS URL (`http://` or `https://`) whose keys verify tokens that carry a `kid`; fetched
    /// at start, every `jwt_jwks_refresh_s`, and (at most once per 10 s) on an unknown `kid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_jwks_url: Option<String> = None, WSGW_JWT_JWKS_URL => opt;
    /// JWKS file whose keys verify tokens that carry a `kid`; re-read when it changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_jwks_file: Option<PathBuf> = None, WSGW_JWT_JWKS_FILE => opt;
    /// How often `jwt_jwks_url` is fetched again, in seconds.
    jwt_jwks_refresh_s: u64 = 300, WSGW_JWT_JWKS_REFRESH_S => parse(SECS);
    /// Required `aud` claim, if set (unset: not checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_audience: Option<String> = None, WSGW_JWT_AUDIENCE => opt;
    /// Required `iss` claim, if set (unset: not checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_issuer: Option<String> = None, WSGW_JWT_ISSUER => opt;
    /// Clock skew tolerated on `exp`/`nbf`, in seconds.
    jwt_leeway_s: u64 = 5, WSGW_JWT_LEEWAY_S => parse(SECS);
    /// Reject tokens without an `exp` claim.
    jwt_require_exp: bool = true, WSGW_JWT_REQUIRE_EXP => bool;
    /// What a token without an `actions` claim may `request`: `allow` (every action) or `deny`
    /// (none; such a request gets `forbidden`).
    jwt_actions_default: ActionsDefault = ActionsDefault::Allow,
        WSGW_JWT_ACTIONS_DEFAULT => parse("allow or deny");
    /// Key required by the HTTP publish API. Secret: redacted in `--print-config` and `Debug`.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "super::format::serialize_secret")]
    api_key: Option<SecretString> = None, WSGW_API_KEY => opt;
    /// Redis URL for the cluster broker; unset means an in-memory, single-node broker.
    /// Its password is redacted in `--print-config`; `Debug` hides all of it.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "super::format::serialize_url")]
    redis_url: Option<SecretString> = None, WSGW_REDIS_URL => opt;
    /// Seed URLs of a Redis Cluster (comma-separated in the env), instead of `redis_url`: nodes
    /// then spread channels over 16 id-shards and follow them with sharded pub/sub
    /// (docs/scaling.md). Passwords are redacted in `--print-config`; `Debug` hides all of it.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "super::format::serialize_urls")]
    redis_cluster: Option<SecretString> = None, WSGW_REDIS_CLUSTER => opt;
    /// Prefix of every Redis key and channel, so several deployments can share one Redis.
    redis_prefix: String = "ws:".to_owned(), WSGW_REDIS_PREFIX => string;
    /// PEM file of the CA that signs the Redis server's certificate (`rediss://` URLs); unset:
    /// the system's root certificates.
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_ca_file: Option<PathBuf> = None, WSGW_REDIS_CA_FILE => opt;
    /// PEM client certificate for mutual TLS with Redis (together with `redis_client_key_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_client_cert_file: Option<PathBuf> = None, WSGW_REDIS_CLIENT_CERT_FILE => opt;
    /// PEM private key of `redis_client_cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_client_key_file: Option<PathBuf> = None, WSGW_REDIS_CLIENT_KEY_FILE => opt;
    /// Skip verifying the Redis server's certificate. For tests only: every start logs a WARN.
    redis_tls_insecure: bool = false, WSGW_REDIS_TLS_INSECURE => bool;
    /// Sentinels that find the Redis primary (a list of `host:port` in TOML, comma-separated in
    /// the env), instead of `redis_url`; needs `redis_sentinel_master`. On a failover the node
    /// follows the new primary without closing sockets.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    redis_sentinels: Vec<String> = Vec::new(), WSGW_REDIS_SENTINELS => list;
    /// The master name the Sentinels monitor (`sentinel monitor <name> …`).
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_sentinel_master: Option<String> = None, WSGW_REDIS_SENTINEL_MASTER => opt;
    /// ACL user for the primary found through the Sentinels (`redis_url` carries its own).
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_username: Option<String> = None, WSGW_REDIS_USERNAME => opt;
    /// Password for the primary found through the Sentinels. Secret: redacted.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "super::format::serialize_secret")]
    redis_password: Option<SecretString> = None, WSGW_REDIS_PASSWORD => opt;
    /// ACL user for the Sentinels themselves.
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_sentinel_username: Option<String> = None, WSGW_REDIS_SENTINEL_USERNAME => opt;
    /// Password for the Sentinels. Secret: redacted.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "super::format::serialize_secret")]
    redis_sentinel_password: Option<SecretString> = None, WSGW_REDIS_SENTINEL_PASSWORD => opt;
    /// Talk TLS to the Sentinels and to the primary they name (with the CA and client
    /// certificate settings above).
    redis_tls: bool = false, WSGW_REDIS_TLS => bool;
    /// How often the server pings each client, in milliseconds.
    heartbeat_interval_ms: u64 = 30_000, WSGW_HEARTBEAT_INTERVAL_MS => parse(MS);
    /// Silence after which a client is dropped, in milliseconds; must exceed the interval.
    heartbeat_timeout_ms: u64 = 60_000, WSGW_HEARTBEAT_TIMEOUT_MS => parse(MS);
    /// Largest inbound WebSocket message, in bytes.
    max_message_bytes: usize = 65_536, WSGW_MAX_MESSAGE_BYTES => parse(BYTES);
    /// permessage-deflate (RFC 7692) on `/ws`: `on` accepts a client's offer, `off` never does.
    compression: Compression = Compression::Off, WSGW_COMPRESSION => parse("on or off");
    /// With compression on, only text frames at least this long are compressed, in bytes.
    compression_min_bytes: usize = 512, WSGW_COMPRESSION_MIN_BYTES => parse(BYTES);
    /// Largest HTTP publish API request body, in bytes.
    max_publish_bytes: usize = 1_048_576, WSGW_MAX_PUBLISH_BYTES => parse(BYTES);
    /// Maximum concurrent WebSocket connections on this node.
    max_connections: usize = 100_000, WSGW_MAX_CONNECTIONS => parse(COUNT);
    /// How long a TCP connection may take to send a complete HTTP request, or to be upgraded
    /// and welcomed, before it is closed, in milliseconds; `0` = no limit.
    handshake_timeout_ms: u64 = 10_000, WSGW_HANDSHAKE_TIMEOUT_MS => parse(MS);
    /// Maximum concurrent connections per authenticated user on this node; `0` = unlimited.
    max_connections_per_user: usize = 0, WSGW_MAX_CONNECTIONS_PER_USER => parse(COUNT);
    /// Outbound frames queued per socket before the client counts as too slow.
    send_queue: usize = 1024, WSGW_SEND_QUEUE => parse(FRAMES);
    /// Outbound bytes queued per socket before the client counts as too slow (either bound
    /// closes it with 4008); `0` bounds by frames only.
    send_queue_bytes: usize = 4_194_304, WSGW_SEND_QUEUE_BYTES => parse(BYTES);
    /// How long a disconnected session stays resumable, in milliseconds.
    session_ttl_ms: u64 = 120_000, WSGW_SESSION_TTL_MS => parse(MS);
    /// TTL of presence keys and of this node's registry entry (Redis broker), in
    /// milliseconds; refreshed every third of it. `0` derives it: heartbeat timeout + 5 s.
    presence_ttl_ms: u64 = 0, WSGW_PRESENCE_TTL_MS => parse(MS);
    /// Channel patterns (a list of strings in TOML, comma-separated in the env), e.g.
    /// `chat:*,room:*`, whose presence is tracked cluster-wide: subscribers get `join` and
    /// `leave` frames, and `presence` / `GET /api/presence/channels/{channel}` list the members.
    /// Empty: off.
    presence_channels: Vec<String> = Vec::new(), WSGW_PRESENCE_CHANNELS => list;
    /// How often the node publishes a canary on its own control channel to prove its Redis
    /// pub/sub connection alive (three missed: not ready, reconnect), in milliseconds.
    canary_interval_ms: u64 = 2000, WSGW_CANARY_INTERVAL_MS => parse(MS);
    /// How long the node waits after an event reaches its Redis pub/sub connection before it
    /// writes it out, gathering what arrives meanwhile into one write per socket, in
    /// milliseconds (at most 1000, and at most `redis_timeout_ms`; not with `redis_cluster`);
    /// `0` = write at once.
    write_delay_ms: u64 = 0, WSGW_WRITE_DELAY_MS => parse(MS);
    /// The write pace, in milliseconds: a channel whose events from the node's Redis pub/sub
    /// connection each reach at least `write_pace_min_sockets` sockets, and come more often than
    /// 1.5 per pace, is written at most once per pace, what arrives meanwhile in one write per
    /// socket. Other events go out at once. At most 1000; cut to `redis_timeout_ms` when above
    /// it; no effect with `redis_cluster`. `0` = off.
    write_pace_ms: u64 = 50, WSGW_WRITE_PACE_MS => parse(MS);
    /// How many local sockets an event must reach for its channel to be paced by
    /// `write_pace_ms`.
    write_pace_min_sockets: usize = 1000, WSGW_WRITE_PACE_MIN_SOCKETS => parse(COUNT);
    /// Longest a Redis command may take before the caller gets `unavailable` / HTTP 503, in
    /// milliseconds.
    redis_timeout_ms: u64 = 1000, WSGW_REDIS_TIMEOUT_MS => parse(MS);
    /// How long a client `request` may wait for its backend's first (or next streamed)
    /// `response` before the gateway answers `error` `timeout`, in milliseconds.
    request_timeout_ms: u64 = 30_000, WSGW_REQUEST_TIMEOUT_MS => parse(MS);
    /// Requests one socket may have waiting for a backend at once; more get `rate_limited`.
    max_pending_requests: usize = 64, WSGW_MAX_PENDING_REQUESTS => parse(COUNT);
    /// Approximate length the `<prefix>inbound` request stream is trimmed to.
    inbound_maxlen: usize = 100_000, WSGW_INBOUND_MAXLEN => parse(COUNT);
    /// Connect hook (`http://` or `https://`): asked to admit an upgrade that carries no token.
    #[serde(skip_serializing_if = "Option::is_none")]
    hook_connect_url: Option<String> = None, WSGW_HOOK_CONNECT_URL => opt;
    /// Subscribe hook: asked about a subscribe the socket's grants do not allow.
    #[serde(skip_serializing_if = "Option::is_none")]
    hook_subscribe_url: Option<String> = None, WSGW_HOOK_SUBSCRIBE_URL => opt;
    /// Publish hook: asked about (and may rewrite the data of) every client publish.
    #[serde(skip_serializing_if = "Option::is_none")]
    hook_publish_url: Option<String> = None, WSGW_HOOK_PUBLISH_URL => opt;
    /// Disconnect hook: told of every disconnect, in batches.
    #[serde(skip_serializing_if = "Option::is_none")]
    hook_disconnect_url: Option<String> = None, WSGW_HOOK_DISCONNECT_URL => opt;
    /// Longest a hook call may take (waiting for a call slot included), in milliseconds.
    hook_timeout_ms: u64 = 2000, WSGW_HOOK_TIMEOUT_MS => parse(MS);
    /// Hook calls this node makes at once; more wait (within the timeout) for a slot.
    hook_max_concurrent: usize = 256, WSGW_HOOK_MAX_CONCURRENT => parse(COUNT);
    /// Proxies (IPs or CIDRs; a list of strings in TOML, comma-separated in the env) whose
    /// `X-Forwarded-For` is believed: the client address is the rightmost address in it that
    /// is not a trusted proxy. Empty: the TCP peer is the client.
    #[serde(
        serialize_with = "super::format::serialize_networks",
        deserialize_with = "super::format::deserialize_networks"
    )]
    trusted_proxies: Vec<IpNet> = Vec::new(), WSGW_TRUSTED_PROXIES => networks;
    /// Origins a browser WebSocket upgrade may come from (a list of strings in TOML,
    /// comma-separated in the env), e.g. `https://app.example.org` or `https://*.example.org`
    /// (any subdomain, at any depth, not the bare domain). Scheme, host and port are compared
    /// exactly. An upgrade with another `Origin` (including `null`) gets HTTP 403; one without
    /// an `Origin` header is allowed. Empty: every origin is allowed.
    allowed_origins: Vec<String> = Vec::new(), WSGW_ALLOWED_ORIGINS => list;
    /// Sockets one client address may hold on this node; `0` means unlimited.
    max_connections_per_ip: usize = 0, WSGW_MAX_CONNECTIONS_PER_IP => parse(COUNT);
    /// Events kept per channel for replay; `0` disables history.
    history_size: usize = 1000, WSGW_HISTORY_SIZE => parse(EVENTS);
    /// How long channel history is kept, in milliseconds.
    history_ttl_ms: u64 = 3_600_000, WSGW_HISTORY_TTL_MS => parse(MS);
    /// Most events replayed to one client on (re)subscribe.
    max_replay: usize = 1000, WSGW_MAX_REPLAY => parse(EVENTS);
    /// Most topics one connection may subscribe to.
    max_subscriptions: usize = 128, WSGW_MAX_SUBSCRIPTIONS => parse(COUNT);
    /// Most patterns one connection may subscribe to (they count toward `max_subscriptions` too).
    max_patterns: usize = 16, WSGW_MAX_PATTERNS => parse(COUNT);
    /// Most distinct patterns subscribed on this node at once.
    max_patterns_per_node: usize = 10_000, WSGW_MAX_PATTERNS_PER_NODE => parse(COUNT);
    /// Inbound frames per second allowed per connection; `0` turns rate limiting off.
    rate_limit_per_s: u32 = 50, WSGW_RATE_LIMIT_PER_S => parse(FRAMES_PER_S_U32);
    /// Frames a connection may send in a burst above the steady rate.
    rate_limit_burst: u32 = 100, WSGW_RATE_LIMIT_BURST => parse(FRAMES_U32);
    /// Bytes per second one connection may publish (channel, event and data of its `publish`
    /// frames), apart from the frame rate limit; `0` turns it off.
    publish_bytes_per_s: u64 = 65_536, WSGW_PUBLISH_BYTES_PER_S => parse(BYTES);
    /// Rate-limited frames tolerated before the connection is closed with 1008.
    rate_limit_strikes: u32 = 20, WSGW_RATE_LIMIT_STRIKES => parse(FRAMES_U32);
    /// Grace period on shutdown for connections to close, in milliseconds.
    drain_ms: u64 = 5000, WSGW_DRAIN_MS => parse(MS);
    /// WebSocket read buffer per connection, in bytes (the largest share of an idle
    /// socket's memory; client frames are small).
    ws_read_buffer_bytes: usize = 512, WSGW_WS_READ_BUFFER_BYTES => parse(BYTES);
    /// Log filter in `tracing` env-filter syntax, e.g. `info` or `wsgw=debug,info`.
    log: String = "info".to_owned(), WSGW_LOG => string;
    /// Log format: `text` or `json`.
    log_format: LogFormat = LogFormat::Text, WSGW_LOG_FORMAT => parse("text or json");
    /// Async runtime: `multi_thread`, `current_thread` or `per_core`.
    runtime: RuntimeFlavor = RuntimeFlavor::MultiThread,
        WSGW_RUNTIME => parse("multi_thread, current_thread or per_core");
    /// Threads of the `multi_thread` runtime, or runtimes of `per_core`; `0` = one per core.
    worker_threads: usize = 0, WSGW_WORKER_THREADS => parse(COUNT);
    /// Pinning of the runtime threads to CPUs: `auto` pins each to a CPU of its own when
    /// there is a thread for every CPU the node may run on, `on` always pins (round robin),
    /// `off` never does.
    cpu_affinity: CpuAffinity = CpuAffinity::Auto, WSGW_CPU_AFFINITY => parse("auto, on or off");
}

impl Config {
    /// The backend hook URLs, each with its TOML key.
    pub fn hook_urls(&self) -> [(&'static str, Option<&String>); 4] {
        [
            ("hook_connect_url", self.hook_connect_url.as_ref()),
            ("hook_subscribe_url", self.hook_subscribe_url.as_ref()),
            ("hook_publish_url", self.hook_publish_url.as_ref()),
            ("hook_disconnect_url", self.hook_disconnect_url.as_ref()),
        ]
    }
}

/// `FromStr` for a setting's enum, from its words: ASCII case and surrounding spaces ignored;
/// any other word is an error (the caller names the setting and the words it takes).
macro_rules! from_words {
    ($t:ty { $($word:literal => $v:ident),+ $(,)? }) => {
        impl FromStr for $t {
            type Err = ();

            fn from_str(s: &str) -> Result<Self, ()> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($word => Ok(Self::$v),)+
                    _ => Err(()),
                }
            }
        }
    };
}

/// What a token without an `actions` claim may request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionsDefault {
    /// Every action (`allow`).
    Allow,
    /// No action (`deny`).
    Deny,
}

from_words!(ActionsDefault { "allow" => Allow, "deny" => Deny });

/// Whether `/ws` negotiates permessage-deflate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Accept a client's permessage-deflate offer (`on`).
    On,
    /// Never negotiate it (`off`).
    Off,
}

from_words!(Compression { "on" => On, "off" => Off });

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines (`text`).
    Text,
    /// One JSON object per line (`json`), for log shippers.
    Json,
}

from_words!(LogFormat { "text" => Text, "json" => Json });

/// Whether the runtime threads are pinned to CPUs (affinity.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuAffinity {
    /// Pinned when there is a runtime thread for every CPU the node may run on.
    Auto,
    /// Always pinned, round robin over the CPUs the node may run on.
    On,
    /// Never pinned: the kernel moves the threads.
    Off,
}

from_words!(CpuAffinity { "auto" => Auto, "on" => On, "off" => Off });

/// Which async runtime the server builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeFlavor {
    /// A single-threaded runtime (`current_thread`).
    CurrentThread,
    /// A work-stealing runtime with `worker_threads` threads (`multi_thread`).
    MultiThread,
    /// One single-threaded runtime per core (`worker_threads` of them), each accepting on its
    /// own `SO_REUSEPORT` listener and running the sockets it accepted (`per_core`).
    PerCore,
}

impl FromStr for RuntimeFlavor {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        // Accept the dashed spelling too: people type it by analogy with flags.
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "current_thread" => Ok(Self::CurrentThread),
            "multi_thread" => Ok(Self::MultiThread),
            "per_core" => Ok(Self::PerCore),
            _ => Err(()),
        }
    }
}
