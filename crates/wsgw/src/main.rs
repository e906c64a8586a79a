//! The `wsgw` binary: flags -> Config -> runtime -> serve until SIGTERM/SIGINT. All logic
//! lives in the library; this file only wires the process to it.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tracing::{info, warn};
use wsgw::config::{
    Cli, Command, Config, ExposeSecret, FunctionsArgs, LogFormat, ProcessEnv, RuntimeFlavor, TokenArgs,
};
use wsgw::limits::{RESERVED_FDS, raise_nofile_limit};

/// Exit code for configuration errors (BSD `EX_USAGE`).
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match Config::load(&cli, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wsgw: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if cli.print_config {
        print!("{}", config.to_redacted_toml());
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Token(args)) = &cli.command {
        return print_token(&config, args);
    }
    init_logging(&config);
    if let Some(Command::Functions(args)) = &cli.command {
        return functions(&config, args);
    }
    let dev = if config.dev {
        Some(prepare_dev(&mut config))
    } else {
        None
    };

    // Runtime threads: the multi-thread runtime's workers, or the per-core runtimes.
    let threads = match (config.runtime, config.worker_threads) {
        (RuntimeFlavor::CurrentThread, _) => 1,
        (_, 0) => std::thread::available_parallelism().map_or(1, |n| n.get()),
        (_, n) => n,
    };
    let mut builder = match config.runtime {
        RuntimeFlavor::CurrentThread | RuntimeFlavor::PerCore => tokio::runtime::Builder::new_current_thread(),
        RuntimeFlavor::MultiThread => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(threads);
            b
        }
    };
    let cpus = wsgw::affinity::allowed_cpus();
    let pinning = wsgw::affinity::wanted(config.cpu_affinity, threads, &cpus)
        .then(|| Arc::new(wsgw::affinity::Pinning::new(cpus.clone())));
    if let Some(p) = &pinning {
        info!(
            threads,
            ?cpus,
            "runtime threads pinned to a CPU each (WSGW_CPU_AFFINITY)"
        );
        let p = p.clone();
        builder.on_thread_park(move || p.pin_current_once());
    } else {
        info!(threads, ?cpus, "runtime threads not pinned (WSGW_CPU_AFFINITY)");
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wsgw: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // `per_core`: this thread's runtime is the first core's; the others get one each.
    let cores = match config.runtime {
        RuntimeFlavor::PerCore => match wsgw::cores::CoreRuntimes::start(threads - 1, pinning.clone()) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("wsgw: cannot start the per-core runtimes: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let handles = cores.as_ref().map(|c| c.handles().to_vec());
    runtime.block_on(async move {
        // Spawned, not run by `block_on` itself: on the multi-thread runtime `block_on`'s future
        // runs on this thread, outside the workers, so its accept loop would hand every new
        // connection to a worker across threads (a wake-up each). On a worker, the connection's
        // task starts on the thread that accepted it. The single-threaded flavours run both on
        // this thread anyway.
        let served = match tokio::spawn(run(config, dev, handles)).await {
            Ok(served) => served,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => {
                eprintln!("wsgw: the server task ended: {e}");
                return ExitCode::FAILURE;
            }
        };
        match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e @ wsgw::StartError::Config(_)) | Err(e @ wsgw::StartError::Auth(_)) => {
                eprintln!("wsgw: {e}");
                ExitCode::from(EXIT_USAGE)
            }
            Err(e) => {
                eprintln!("wsgw: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `wsgw token`: a token this node (and every node with the same secret) accepts.
fn print_token(config: &Config, args: &TokenArgs) -> ExitCode {
    let Some(secret) = &config.jwt_secret else {
        eprintln!(
            "wsgw token: no WSGW_JWT_SECRET configured; it signs HS256 tokens with that secret (tokens for a \
             public key come from the identity provider that holds the private key)"
        );
        return ExitCode::from(EXIT_USAGE);
    };
    let req = wsgw::token::TokenRequest {
        sub: args.sub.clone(),
        channels: args.channels.clone(),
        publish: args.publish.clone(),
        actions: args.actions.clone(),
        ttl: args.ttl,
        audience: config.jwt_audience.clone(),
        issuer: config.jwt_issuer.clone(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    println!("{}", wsgw::token::sign(secret.expose_secret().as_bytes(), &req, now));
    ExitCode::SUCCESS
}

/// `wsgw functions`: the Function library on every primary of a Redis Cluster. Prints one line
/// per primary (`<host:port> present|loaded|failed: <why>`; with `--watch`, only changes and
/// failures). Exit 0: on every primary; 1: a primary failed or no seed answered; 64: no seeds.
fn functions(config: &Config, args: &FunctionsArgs) -> ExitCode {
    let seeds = config.redis_cluster_seeds();
    if seeds.is_empty() {
        eprintln!("wsgw functions: set WSGW_REDIS_CLUSTER to the cluster's seed URLs, comma-separated");
        return ExitCode::from(EXIT_USAGE);
    }
    let tls = wsgw::broker::redis::RedisTls::from_config(config);
    let timeout = std::time::Duration::from_millis(config.redis_timeout_ms);
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        eprintln!("wsgw functions: could not start a runtime");
        return ExitCode::FAILURE;
    };
    rt.block_on(async {
        use wsgw::broker::redis::{PrimaryOutcome, sync_functions};
        let mut every = tokio::time::interval(std::time::Duration::from_secs(args.interval_s));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop = std::pin::pin!(shutdown_signal());
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = &mut stop => return ExitCode::SUCCESS,
            }
            let ok = match sync_functions(&seeds, &tls, timeout).await {
                Ok(reports) => {
                    if reports.is_empty() {
                        eprintln!("wsgw functions: no primary of the cluster serves slots yet");
                    }
                    for r in &reports {
                        match &r.outcome {
                            PrimaryOutcome::Present if args.watch => {}
                            PrimaryOutcome::Present => println!("{} present", r.addr),
                            PrimaryOutcome::Loaded => println!("{} loaded", r.addr),
                            PrimaryOutcome::Failed(e) => println!("{} failed: {e}", r.addr),
                        }
                    }
                    !reports.is_empty() && !reports.iter().any(|r| matches!(r.outcome, PrimaryOutcome::Failed(_)))
                }
                Err(e) => {
                    eprintln!("wsgw functions: no seed answered: {e}");
                    false
                }
            };
            if !args.watch {
                return if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE };
            }
        }
    })
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

struct DevInfo {
    api_key: String,
}

/// `--dev`: memory broker, a random secret and API key unless given, and a token to paste.
fn prepare_dev(config: &mut Config) -> DevInfo {
    fn random_hex(bytes: usize) -> String {
        (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
    }
    warn!("dev mode: random secrets, memory broker, permissive token; not for production");
    config.redis_url = None;
    config.redis_cluster = None;
    config.redis_sentinels.clear();
    config.jwt_secret.get_or_insert_with(|| random_hex(32).into());
    let api_key = config
        .api_key
        .get_or_insert_with(|| random_hex(16).into())
        .expose_secret()
        .to_owned();
    DevInfo { api_key }
}

/// Serves until a signal. `cores`: the other runtimes of `per_core`, each to accept on a
/// listener of its own beside this one.
async fn run(
    mut config: Config,
    dev: Option<DevInfo>,
    cores: Option<Vec<tokio::runtime::Handle>>,
) -> Result<(), wsgw::StartError> {
    match raise_nofile_limit() {
        Ok(l) => {
            info!(before = l.before, soft = l.soft, hard = l.hard, "open-files limit");
            let room = l.soft.saturating_sub(RESERVED_FDS);
            if config.max_connections as u64 > room {
                // Refusing with 1013 at the cap beats failing accept() with EMFILE.
                info!(
                    max_connections = config.max_connections,
                    sockets_possible = room,
                    "max_connections exceeds what the open-files limit allows; capping it there"
                );
                config.max_connections = room as usize;
            }
        }
        Err(e) => warn!(error = %e, "cannot read or raise the open-files limit"),
    }
    // Configuration errors first, so they are reported as such even if the port is busy.
    let (listen, backlog) = (config.listen, config.listen_backlog);
    let gateway = wsgw::Gateway::new(config).await?;
    let listener = match &cores {
        Some(_) => tokio::net::TcpListener::from_std(wsgw::cores::first_reuseport_listener(listen, backlog)?)?,
        None => wsgw::server::bind(listen, backlog)?,
    };
    let addr = listener.local_addr()?;
    let runtimes = cores.as_ref().map_or(1, |c| c.len() + 1);
    info!(%addr, node = %gateway.node_id, broker = gateway.broker.kind(), runtimes, "listening");
    if let Some(dev) = dev {
        let host = if addr.ip().is_unspecified() {
            format!("127.0.0.1:{}", addr.port())
        } else {
            addr.to_string()
        };
        let token = gateway.dev_token.clone().unwrap_or_default();
        println!("wsgw dev mode (not for production)");
        println!("  demo page:\n    http://{host}/");
        println!("  token (user dev-user, may subscribe/publish to every topic, 24 h):\n    {token}");
        println!("  connect:\n    websocat 'ws://{host}/ws?token={token}'");
        println!(
            "  publish:\n    curl -s -H 'Authorization: Bearer {}' -H 'Content-Type: application/json' \\\n      -d '{{\"channel\":\"broadcast\",\"event\":\"hello\",\"data\":{{\"text\":\"hi\"}}}}' http://{host}/api/publish",
            dev.api_key
        );
    }
    let cores = cores.unwrap_or_default();
    wsgw::server::serve_on_cores(listener, &cores, gateway, shutdown_signal()).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM; only ctrl-c stops the node");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT"),
    }
}
