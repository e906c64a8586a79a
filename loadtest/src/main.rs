//! wsgw-loadtest: k6-style scenarios against a running wsgw gateway (see docs/loadtest.md).
//!
//! ```text
//! wsgw-loadtest run loadtest/scenarios/smoke.toml [overrides] [--json out.json]
//! wsgw-loadtest idle|broadcast ...   (the earlier one-shot commands, now built-in scenarios)
//! ```
//!
//! Exit codes: 0 pass, 99 thresholds crossed (as k6), 1 the run itself failed.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use loadtest::engine::{RunOptions, run, worker_main};
use loadtest::scenario::{Kind, Scenario, Stage, Thresholds, Workload};
use loadtest::summary::Summary;

#[derive(Parser)]
#[command(
    name = "wsgw-loadtest",
    about = "k6-style load generator and meter for the wsgw gateway"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario file (TOML).
    Run {
        /// The scenario file, e.g. loadtest/scenarios/smoke.toml.
        scenario: PathBuf,
        #[command(flatten)]
        o: Overrides,
    },
    /// Hold N idle sockets and report the gateway's RSS per socket (built-in scenario).
    Idle {
        #[command(flatten)]
        common: Common,
        /// How long to hold the sockets once all are open, in seconds.
        #[arg(long, default_value_t = 10)]
        hold_s: u64,
    },
    /// N sockets receive M broadcasts published through the HTTP API (or `FCALL` with --redis-url) at R per second (built-in scenario).
    Broadcast {
        #[command(flatten)]
        common: Common,
        /// The gateway's HTTP base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        api: String,
        /// The gateway's API key.
        #[arg(long)]
        api_key: String,
        /// Broadcasts to publish.
        #[arg(long, default_value_t = 50)]
        messages: u64,
        /// Broadcasts per second.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Payload padding in bytes.
        #[arg(long, default_value_t = 100)]
        payload_bytes: usize,
        /// Publish with `FCALL wsgw_publish` on the `broadcast` channel into this Redis (the
        /// backend path) instead of POST /api/broadcast, so a gateway slow to answer HTTP while
        /// it fans out does not slow the publisher down.
        #[arg(long)]
        redis_url: Option<String>,
        /// Measure the gateway's fan-out throughput alone: the worker processes holding the
        /// sockets are stopped (SIGSTOP) from the first publish until the gateway is idle, then
        /// resumed to read and check every delivery. Needs --server-pid; one worker unless
        /// --workers says otherwise. Use a --rate above what the gateway can fan out, and few
        /// enough --messages that they fit in the sockets' receive buffers.
        #[arg(long)]
        stop_receivers: bool,
    },
    /// Internal: a worker process (spec on stdin, reports on stdout).
    #[command(hide = true)]
    Worker,
}

#[derive(Args, Default)]
struct Overrides {
    /// Node WebSocket URL(s), comma-separated (replaces target.urls).
    #[arg(long, value_delimiter = ',')]
    url: Vec<String>,
    /// HS256 secret (the gateway's WSGW_JWT_SECRET).
    #[arg(long)]
    secret: Option<String>,
    /// HTTP base URL of the node that takes HTTP publishes.
    #[arg(long)]
    api_url: Option<String>,
    #[arg(long)]
    api_key: Option<String>,
    #[arg(long)]
    redis_url: Option<String>,
    /// Gateway pids (comma-separated) for CPU and RSS from /proc.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// A cluster.json to read urls, pids, redis, secret and API key from.
    #[arg(long)]
    cluster_json: Option<String>,
    /// Scale every stage target so the largest becomes this many VUs.
    #[arg(long)]
    vus: Option<u64>,
    /// Publish rate override (msgs/s).
    #[arg(long)]
    rate: Option<f64>,
    /// How the publisher publishes (replaces workload.publish_via): through the HTTP API, or
    /// `FCALL wsgw_publish` into Redis.
    #[arg(long, value_enum)]
    publish_via: Option<loadtest::scenario::PublishVia>,
    /// Worker processes (0 = in this process).
    #[arg(long)]
    workers: Option<usize>,
    /// VUs per worker process at most (default 15000).
    #[arg(long)]
    vus_per_worker: Option<usize>,
    /// Write the merged summary as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    tls: Tls,
}

/// TLS for `wss://` URLs.
#[derive(Args, Default)]
struct Tls {
    /// For wss:// URLs: trust the CA certificates in this PEM file (instead of the system's roots).
    #[arg(long, value_name = "FILE")]
    ca_file: Option<String>,
    /// For wss:// URLs: accept any server certificate (self-signed test certificates only).
    #[arg(long)]
    insecure: bool,
}

impl Tls {
    fn apply(&self, t: &mut loadtest::scenario::Target) {
        if self.ca_file.is_some() {
            t.ca_file.clone_from(&self.ca_file);
        }
        if self.insecure {
            t.insecure = true;
        }
    }
}

#[derive(Args)]
struct Common {
    /// WebSocket URL(s) of the gateway nodes, comma-separated; sockets are spread round-robin.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// HS256 secret to sign one token per socket (sub = `lt-<n>`).
    #[arg(long)]
    secret: String,
    /// Sockets to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Handshakes in flight at once (per worker).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// The gateway processes' pids (comma-separated), for RSS and CPU from /proc.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Give up waiting for deliveries this long after the last stage (seconds).
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    /// Worker processes (default: one per 15000 sockets, in-process below that).
    #[arg(long)]
    workers: Option<usize>,
    /// Write the merged summary as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    tls: Tls,
}

fn apply(sc: &mut Scenario, o: &Overrides) -> Result<()> {
    let t = &mut sc.target;
    if let Some(c) = &o.cluster_json {
        t.cluster_json = Some(c.clone());
    }
    if !o.url.is_empty() {
        t.urls = o.url.clone();
    }
    macro_rules! set {
        ($f:ident) => {
            if o.$f.is_some() {
                t.$f = o.$f.clone();
            }
        };
    }
    set!(secret);
    set!(api_url);
    set!(api_key);
    set!(redis_url);
    if !o.server_pid.is_empty() {
        t.server_pids = o.server_pid.clone();
    }
    o.tls.apply(t);
    if o.vus_per_worker.is_some() {
        t.vus_per_worker = o.vus_per_worker;
    }
    if let Some(v) = o.vus {
        let max = sc.max_vus().max(1);
        for s in &mut sc.stages {
            s.target = (s.target as f64 * v as f64 / max as f64).round() as u64;
        }
    }
    if let Some(r) = o.rate {
        sc.workload.rate = r;
    }
    if let Some(via) = o.publish_via {
        sc.workload.publish_via = via;
    }
    Ok(())
}

fn finish(s: &Summary, json: Option<&PathBuf>) -> Result<i32> {
    print!("{}", s.render());
    if let Some(p) = json {
        std::fs::write(p, serde_json::to_string_pretty(s)?)?;
        eprintln!("summary written to {}", p.display());
    }
    Ok(if s.thresholds_ok() { 0 } else { 99 })
}

fn builtin(c: &Common, kind: Kind, hold_s: f64) -> Scenario {
    let ramp_s = (c.connections as f64 / 2000.0).ceil().max(1.0);
    Scenario {
        name: format!("{kind:?}").to_lowercase(),
        stages: vec![
            Stage {
                duration: format!("{ramp_s}s"),
                target: c.connections as u64,
            },
            Stage {
                duration: format!("{hold_s}s"),
                target: c.connections as u64,
            },
        ],
        workload: Workload {
            kind,
            ..Default::default()
        },
        grace_s: 3.0,
        ..Default::default()
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Cmd::Worker = cli.cmd {
        return worker_main();
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let code = rt.block_on(async move {
        match cli.cmd {
            Cmd::Run { scenario, o } => {
                let mut sc = Scenario::load(&scenario)?;
                apply(&mut sc, &o)?;
                sc.resolve_cluster(&std::env::current_dir()?)?;
                let opts = RunOptions {
                    workers: o.workers,
                    progress: !o.quiet,
                    worker_exe: None,
                };
                let s = run(sc, opts).await?;
                finish(&s, o.json.as_ref())
            }
            Cmd::Idle { common, hold_s } => {
                let mut sc = builtin(&common, Kind::Idle, hold_s as f64);
                sc.thresholds = Thresholds::List(vec!["connect_failures == 0".into(), "unexpected_closes == 0".into()]);
                fill(&mut sc, &common, None, None);
                let s = run(
                    sc,
                    RunOptions {
                        workers: common.workers,
                        progress: true,
                        worker_exe: None,
                    },
                )
                .await?;
                let f = &s.figures;
                println!(
                    "connections held: {} for {hold_s}s, closed early: {}",
                    f.welcomes, f.unexpected_closes
                );
                if let Some(g) = &s.gateway
                    && let Some(per) = g.rss_per_socket_kib
                {
                    println!(
                        "gateway RSS: {} KiB before, {} KiB with sockets: {per:.2} KiB per idle socket",
                        g.rss_before_kib, g.rss_peak_kib
                    );
                }
                finish(&s, common.json.as_ref())
            }
            Cmd::Broadcast {
                common,
                api,
                api_key,
                messages,
                rate,
                payload_bytes,
                redis_url,
                stop_receivers,
            } => {
                let hold = messages as f64 / rate + 1.0;
                let mut sc = builtin(&common, Kind::Broadcast, hold);
                sc.workload.rate = rate;
                sc.workload.messages = Some(messages);
                sc.workload.payload_bytes = payload_bytes;
                sc.workload.publish_when_connected = true;
                sc.workload.stop_receivers = stop_receivers;
                sc.workload.publish_delay = Some(format!(
                    "{}s",
                    loadtest::scenario::parse_duration(&sc.stages[0].duration)?.as_secs_f64() + 1.0
                ));
                sc.grace_s = (common.timeout_s as f64).min(10.0);
                sc.thresholds = Thresholds::List(vec!["missing == 0".into(), "connect_failures == 0".into()]);
                fill(&mut sc, &common, Some(api), Some(api_key));
                if let Some(url) = redis_url {
                    sc.target.redis_url = Some(url);
                    sc.workload.publish_via = loadtest::scenario::PublishVia::Fcall;
                }
                let s = run(
                    sc,
                    RunOptions {
                        workers: common.workers.or(stop_receivers.then_some(1)),
                        progress: true,
                        worker_exe: None,
                    },
                )
                .await?;
                let f = &s.figures;
                let pct = |q: &str| s.metric(&format!("delivery_{q}"), false).unwrap_or(f64::NAN);
                let achieved = f.publisher_rate_per_s.unwrap_or(f64::NAN);
                println!(
                    "sockets: {}, broadcasts: {} at {rate}/s ({achieved:.1}/s achieved), deliveries: {} ({} missing, {} duplicates)",
                    f.welcomes, f.published, f.delivered, f.missing, f.duplicates
                );
                println!(
                    "delivery latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
                    pct("p50"),
                    pct("p90"),
                    pct("p99"),
                    pct("max")
                );
                if let Some(g) = &s.gateway
                    && g.cpu_s > 0.0
                {
                    println!(
                        "gateway CPU: {:.2} s; {:.0} deliveries per gateway CPU-second ({:.2} us CPU per delivery)",
                        g.cpu_s,
                        f.delivered as f64 / g.cpu_s,
                        g.cpu_s * 1e6 / f.delivered.max(1) as f64
                    );
                }
                if stop_receivers {
                    let (Some(secs), Some(cpu)) = (f.stopped_fanout_s, f.stopped_fanout_cpu_s) else {
                        eprintln!("error: no fan-out window was measured: {:?}", f.error_samples);
                        finish(&s, common.json.as_ref())?;
                        return Ok(1);
                    };
                    println!(
                        "fan-out with the receivers stopped: {} deliveries in {secs:.3} s: {:.0} per second; gateway CPU {cpu:.3} s in it ({:.2} cores busy on average)",
                        f.delivered,
                        f.delivered as f64 / secs,
                        cpu / secs
                    );
                }
                finish(&s, common.json.as_ref())
            }
            Cmd::Worker => unreachable!(),
        }
    })?;
    std::process::exit(code);
}

fn fill(sc: &mut Scenario, c: &Common, api: Option<String>, key: Option<String>) {
    sc.target.urls = c.url.split(',').map(String::from).collect();
    sc.target.secret = Some(c.secret.clone());
    sc.target.server_pids = c.server_pid.clone();
    sc.target.connect_concurrency = Some(c.concurrency);
    sc.target.api_url = api;
    sc.target.api_key = key;
    c.tls.apply(&mut sc.target);
}
