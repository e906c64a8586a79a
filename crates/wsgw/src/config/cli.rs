//! The command-line flags. Each setting flag overrides the file and the env (see
//! `Config::apply_cli`); `tests/config_doc.rs` checks that docs/configuration.md names
//! the same flag for each setting.

use std::net::SocketAddr;
use std::path::PathBuf;

use secrecy::SecretString;

use super::{Config, LogFormat};

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
    pub redis_url: Option<SecretString>,
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
    /// A subcommand instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What the binary can do besides serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Print a token signed with the configured `WSGW_JWT_SECRET` (HS256), then exit.
    Token(TokenArgs),
    /// Load the `wsgw` Redis Function library on every primary of the Redis Cluster whose seed
    /// URLs `WSGW_REDIS_CLUSTER` names (comma-separated), where it is missing or differs.
    Functions(FunctionsArgs),
}

/// `wsgw functions` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct FunctionsArgs {
    /// Keep checking, every `--interval-s` seconds, until SIGINT or SIGTERM: a primary that
    /// joins later gets the library within that time of serving slots.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between checks with `--watch` (1..=3600).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval_s: u64,
}

/// `wsgw token` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    pub sub: String,
    /// Channel patterns the user may subscribe to (comma-separated, or the flag repeated).
    #[arg(long, value_delimiter = ',')]
    pub channels: Vec<String>,
    /// Channel patterns the user may publish to (comma-separated, or the flag repeated).
    #[arg(long, value_delimiter = ',')]
    pub publish: Vec<String>,
    /// Request actions the user may send (comma-separated); without it, no `actions` claim.
    #[arg(long, value_delimiter = ',')]
    pub actions: Option<Vec<String>>,
    /// How long the token is valid: 90s, 15m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = crate::token::parse_ttl)]
    pub ttl: std::time::Duration,
}

impl Config {
    /// Applies the flags that were given; an absent flag leaves the env/file value alone.
    pub(super) fn apply_cli(&mut self, cli: &Cli) {
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
