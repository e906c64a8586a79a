//! wsgw-loadtest: opens many real WebSocket connections to a running gateway and measures
//! what users size deployments by: memory per idle socket and, for broadcasts, deliveries per
//! gateway CPU-second and delivery latency. Every run is bounded in count and time.
//!
//! The gateway's figures come from /proc of its pid (`--server-pid`), so run it on the same
//! machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use tokio::sync::{Mutex, Semaphore};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Parser)]
#[command(name = "wsgw-loadtest", about = "Load generator and meter for the wsgw gateway")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Hold N idle sockets and report the gateway's RSS per socket.
    Idle {
        #[command(flatten)]
        common: Common,
        /// How long to hold the sockets once all are open, in seconds.
        #[arg(long, default_value_t = 10)]
        hold_s: u64,
    },
    /// N sockets receive M broadcasts published through the HTTP API at R per second.
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
    },
}

#[derive(Args)]
struct Common {
    /// WebSocket URL(s) of the gateway nodes, comma-separated; sockets are spread round-robin.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// HS256 secret to sign one token per socket (sub = lt-<n>).
    #[arg(long)]
    secret: String,
    /// Sockets to open (one process holds at most ~19k: the open-files limit).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// The gateway processes' pids (comma-separated), for RSS and CPU from /proc.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Give up after this many seconds in all.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// VmRSS of a process, KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
}

/// User + system CPU seconds of a process (clock ticks of 1/100 s on Linux).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &s[s.rfind(')').context("stat format")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn ws_config() -> WebSocketConfig {
    // Small buffers: the load generator must not need more memory than the gateway.
    WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0)
}

/// Opens `n` sockets, each waiting for its welcome. Returns them in order.
async fn open_all(c: &Common) -> Result<Vec<Ws>> {
    let sem = Arc::new(Semaphore::new(c.concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(c.connections);
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3 * 3600;
    for i in 0..c.connections {
        let sem = sem.clone();
        let token = wsgw::auth::sign_hs256(&c.secret, &format!("lt-{i}"), &[], &[], Some(exp));
        let urls: Vec<&str> = c.url.split(',').collect();
        let url = format!("{}?token={token}", urls[i % urls.len()]);
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true).await?;
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.contains("\"welcome\"") => Ok::<Ws, anyhow::Error>(ws),
                other => bail!("expected welcome, got {other:?}"),
            }
        }));
    }
    let mut out = Vec::with_capacity(c.connections);
    for (i, t) in tasks.into_iter().enumerate() {
        out.push(t.await?.with_context(|| format!("socket {i}"))?);
        if (i + 1) % 5000 == 0 {
            eprintln!("  {} sockets open ({:.1}s)", i + 1, started.elapsed().as_secs_f64());
        }
    }
    eprintln!(
        "  {} sockets open in {:.1}s",
        out.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

fn total_rss(pids: &[u32]) -> Result<Option<u64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    Ok(Some(pids.iter().map(|p| rss_kib(*p)).sum::<Result<u64>>()?))
}

fn total_cpu(pids: &[u32]) -> Result<Option<f64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    Ok(Some(pids.iter().map(|p| cpu_seconds(*p)).sum::<Result<f64>>()?))
}

async fn idle(c: Common, hold_s: u64) -> Result<()> {
    let before = total_rss(&c.server_pid)?;
    let socks = open_all(&c).await?;
    // Keep reading (pings) so the sockets stay healthy while held.
    let closed = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for mut ws in socks {
        let closed = closed.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
            closed.fetch_add(1, Ordering::Relaxed);
        }));
    }
    tokio::time::sleep(Duration::from_secs(hold_s)).await;
    let closed = closed.load(Ordering::Relaxed);
    println!(
        "connections held: {} for {hold_s}s, closed early: {closed}",
        c.connections
    );
    if let (Some(after), Some(before)) = (total_rss(&c.server_pid)?, before) {
        let per = (after.saturating_sub(before)) as f64 / c.connections as f64;
        println!("gateway RSS: {before} KiB before, {after} KiB with sockets: {per:.2} KiB per idle socket");
    }
    for r in readers {
        r.abort();
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn broadcast(
    c: Common,
    api: String,
    api_key: String,
    messages: u64,
    rate: f64,
    payload_bytes: usize,
) -> Result<()> {
    let socks = open_all(&c).await?;
    let n = socks.len() as u64;
    let received = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::<u32>::with_capacity((n * messages) as usize)));
    let mut readers = Vec::new();
    for mut ws in socks {
        let received = received.clone();
        let latencies = latencies.clone();
        readers.push(tokio::spawn(async move {
            let mut mine = Vec::with_capacity(messages as usize);
            let mut seen = 0u64;
            while seen < messages {
                let Some(Ok(m)) = ws.next().await else { break };
                let Message::Text(t) = m else { continue };
                let v: serde_json::Value = match serde_json::from_str(&t) {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                if v["type"] != "event" {
                    continue;
                }
                if let Some(sent) = v["data"]["sent_us"].as_u64() {
                    mine.push(now_us().saturating_sub(sent).min(u32::MAX as u64) as u32);
                }
                seen += 1;
                received.fetch_add(1, Ordering::Relaxed);
            }
            latencies.lock().await.extend(mine);
            ws
        }));
    }
    let http = reqwest::Client::new();
    let cpu0 = total_cpu(&c.server_pid)?;
    let t0 = Instant::now();
    let pad = "x".repeat(payload_bytes);
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut next = tokio::time::Instant::now();
    for i in 0..messages {
        tokio::time::sleep_until(next).await;
        next += period;
        let body = serde_json::json!({"event": "bench", "data": {"i": i, "sent_us": now_us(), "pad": pad}});
        let r = http
            .post(format!("{api}/api/broadcast"))
            .bearer_auth(&api_key)
            .json(&body)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("publish {i}: HTTP {}", r.status());
        }
    }
    let expected = n * messages;
    let deadline = Instant::now() + Duration::from_secs(c.timeout_s);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = total_cpu(&c.server_pid)?;
    let got = received.load(Ordering::Relaxed);
    for r in readers {
        r.abort();
    }
    let mut lat = latencies.lock().await.clone();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        lat[((lat.len() - 1) as f64 * p) as usize] as f64 / 1000.0
    };
    println!(
        "sockets: {n}, broadcasts: {messages} at {rate}/s, deliveries: {got} of {expected} expected ({} missing)",
        expected - got.min(expected)
    );
    println!(
        "delivery latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        let cpu = b - a;
        println!(
            "gateway CPU: {cpu:.2} s over {elapsed:.1} s wall; {:.0} deliveries per gateway CPU-second ({:.2} us CPU per delivery)",
            got as f64 / cpu,
            cpu * 1e6 / got as f64
        );
    }
    if got < expected {
        bail!("{} deliveries missing", expected - got);
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Idle { common, hold_s } => {
                let t = common.timeout_s;
                tokio::time::timeout(Duration::from_secs(t + hold_s), idle(common, hold_s)).await?
            }
            Cmd::Broadcast {
                common,
                api,
                api_key,
                messages,
                rate,
                payload_bytes,
            } => {
                let t = common.timeout_s;
                tokio::time::timeout(
                    Duration::from_secs(t * 2),
                    broadcast(common, api, api_key, messages, rate, payload_bytes),
                )
                .await?
            }
        }
    })
}
