//! The scenario engine: a parent that publishes, samples the gateway's /proc figures, prints
//! progress and merges the figures of its workers; workers (in-process, or child processes
//! running the hidden `worker` subcommand) that own a slice of the VUs.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex as AMutex, Semaphore, mpsc, watch};

use crate::figures::{Figures, Seen, SeqTracker};
use crate::scenario::{Kind, PublishVia, Scenario, parse_duration, vus_at};
use crate::summary::{GatewayFigures, Summary};
use crate::vu::{Client, ClientConfig, Incoming};

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Worker processes (0: all VUs in this process). Default: from the scenario, or as many as
    /// `vus_per_worker` needs (in-process when one suffices).
    pub workers: Option<usize>,
    /// Print the one-line progress on stderr every second.
    pub progress: bool,
    /// The binary to run workers with (default: this executable).
    pub worker_exe: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub scenario: Scenario,
    pub worker: usize,
    pub workers: usize,
    pub start_unix_ms: u64,
    pub local_addr: Option<IpAddr>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub worker: usize,
    #[serde(rename = "type")]
    pub kind: String,
    pub figures: Figures,
}

/// Parent → worker: the publisher's last sequence number per channel; the worker settles its
/// accounts, reports "final" and stops.
#[derive(Debug, Serialize, Deserialize)]
pub struct FinalMsg {
    pub last_seqs: BTreeMap<String, u64>,
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub fn user_of(i: u64) -> String {
    format!("lt-{i}")
}

/// The claims of a VU's token. The gateway reads `sub`, `channels` (may subscribe), `publish`
/// (may publish) and `exp`; fields in name order, so the JSON matches the gateway's own signer
/// (`wsgw::auth::sign_hs256`) byte for byte.
#[derive(Serialize)]
struct Claims<'a> {
    channels: &'a [&'a str],
    exp: u64,
    iat: u64,
    publish: &'a [&'a str],
    sub: &'a str,
}

/// An HS256 token for `sub`, as the gateway's `WSGW_JWT_SECRET` verifies it.
pub fn sign_hs256(secret: &str, sub: &str, channels: &[&str], publish: &[&str], exp: u64) -> String {
    let claims = Claims {
        channels,
        exp,
        iat: now_us() / 1_000_000,
        publish,
        sub,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing of an in-memory JSON object cannot fail")
}

pub fn topic_of(i: u64, sc: &Scenario) -> Option<String> {
    let w = &sc.workload;
    let k = w.subscribers_per_topic.max(1);
    (matches!(w.kind, Kind::Topic | Kind::ClientPublish) && i / k < w.topics).then(|| format!("lt-topic-{}", i / k))
}

// ---------------------------------------------------------------------------------------------
// Worker

struct Shared {
    figs: std::sync::Mutex<Figures>,
    connected: AtomicU64,
    down: AtomicU64,
    first_down: std::sync::Mutex<Option<Instant>>,
    sem: Semaphore,
    sc: Scenario,
    local_addr: Option<IpAddr>,
    token_exp: u64,
}

impl Shared {
    fn figs(&self) -> std::sync::MutexGuard<'_, Figures> {
        self.figs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn went_down(&self) {
        if self.down.fetch_add(1, Ordering::SeqCst) == 0 {
            let mut f = self.first_down.lock().unwrap();
            f.get_or_insert_with(Instant::now);
        }
    }

    fn came_back(&self) {
        if self.down.fetch_sub(1, Ordering::SeqCst) == 1
            && let Some(t) = self.first_down.lock().unwrap().take()
        {
            let s = t.elapsed().as_secs_f64();
            let mut f = self.figs();
            f.recovery_s = Some(f.recovery_s.map_or(s, |r| r.max(s)));
        }
    }
}

/// A VU's lifecycle signal: 0 run, 1 stop (ramp-down or churn), 2 settle with the final seqs.
type Sig = watch::Receiver<Option<Arc<FinalMsg>>>;

async fn vu_task(i: u64, sh: Arc<Shared>, mut stop: watch::Receiver<bool>, mut fin: Sig) {
    let sc = &sh.sc;
    let w = &sc.workload;
    let topic = topic_of(i, sc);
    let channels: Vec<&str> = if topic.is_some() { vec!["lt-topic-*"] } else { vec![] };
    let publish: Vec<&str> = if w.kind == Kind::ClientPublish {
        vec!["lt-topic-*"]
    } else {
        vec![]
    };
    let secret = sc.target.secret.clone().unwrap_or_default();
    let token = sign_hs256(&secret, &user_of(i), &channels, &publish, sh.token_exp);
    let urls = sc.target.urls.clone();
    let mut attempt = 0u32;
    // Connect (retrying while wanted).
    let (mut client, _welcome) = loop {
        let permit = tokio::select! {
            p = sh.sem.acquire() => p.expect("semaphore"),
            _ = stop.changed() => return,
        };
        let t0 = Instant::now();
        let cfg = ClientConfig {
            urls: urls.clone(),
            url_index: i as usize + attempt as usize,
            token: token.clone(),
            reconnect: w.reconnect,
            backoff: (Duration::from_millis(100), Duration::from_secs(5)),
            read_buffer_bytes: 4096,
            local_addr: sh.local_addr,
            connect_timeout: Duration::from_secs(15),
        };
        let r = Client::connect(cfg).await;
        drop(permit);
        {
            let mut f = sh.figs();
            f.connect_attempts += 1;
            match &r {
                Ok(_) => {
                    f.connect.record(t0.elapsed().as_micros() as u64);
                    f.welcomes += 1;
                }
                Err(e) => {
                    f.connect_failures += 1;
                    if f.error_samples.len() < 5 {
                        f.error_samples.push(format!("connect: {e:#}"));
                    }
                }
            }
        }
        match r {
            Ok(c) => break c,
            Err(_) => {
                attempt += 1;
                let wait = Duration::from_millis((200u64 << attempt.min(5)).min(5000));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = stop.changed() => return,
                }
            }
        }
    };
    sh.connected.fetch_add(1, Ordering::SeqCst);
    let mut up = true;
    let mut is_down = false;
    if let Some(t) = &topic {
        let _ = client.subscribe(t).await;
    }
    let mut trackers: HashMap<String, SeqTracker> = HashMap::new();
    // client_publish: the first VU of each topic publishes to it.
    let k = w.subscribers_per_topic.max(1);
    let publisher = w.kind == Kind::ClientPublish && topic.is_some() && i % k == 0;
    let period = Duration::from_secs_f64((w.topics.max(1) as f64 / w.rate.max(1e-3)).max(0.001));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let pad = "x".repeat(w.payload_bytes);
    let mut my_seq = 0u64;
    let mut final_seqs: Option<Arc<FinalMsg>> = None;
    loop {
        tokio::select! {
            m = client.next() => {
                let Some(m) = m else { break };
                match m {
                    Incoming::Event { channel, data, .. } => {
                        let now = now_us();
                        let mut f = sh.figs();
                        f.delivered += 1;
                        if let Some(sent) = data["sent_us"].as_u64() {
                            f.delivery.record(now.saturating_sub(sent));
                        }
                        if let Some(seq) = data["seq"].as_u64()
                            && let Seen::Duplicate = trackers.entry(channel).or_default().see(seq)
                        {
                            f.duplicates += 1;
                        }
                    }
                    Incoming::Closed { code, reason, will_reconnect } => {
                        let mut f = sh.figs();
                        *f.close_codes.entry(code.map_or("1006".into(), |c| c.to_string())).or_default() += 1;
                        f.unexpected_closes += 1;
                        if f.error_samples.len() < 5 && !reason.is_empty() {
                            f.error_samples.push(format!("close {code:?}: {reason}"));
                        }
                        drop(f);
                        if up {
                            up = false;
                            sh.connected.fetch_sub(1, Ordering::SeqCst);
                            if will_reconnect {
                                is_down = true;
                                sh.went_down();
                            }
                        }
                    }
                    Incoming::Reconnected(welcome, down) => {
                        {
                            let mut f = sh.figs();
                            f.reconnects += 1;
                            f.reconnect.record(down.as_micros() as u64);
                            f.replayed += welcome["replayed"].as_u64().unwrap_or(0);
                            if welcome["recovered"] == false {
                                f.not_recovered += 1;
                            }
                        }
                        if !up {
                            up = true;
                            sh.connected.fetch_add(1, Ordering::SeqCst);
                        }
                        if is_down {
                            is_down = false;
                            sh.came_back();
                        }
                        // The client itself subscribes again to a topic the resume did not restore.
                    }
                    Incoming::ConnectFailed(e) => {
                        let mut f = sh.figs();
                        f.connect_attempts += 1;
                        f.connect_failures += 1;
                        if f.error_samples.len() < 5 {
                            f.error_samples.push(format!("reconnect: {e}"));
                        }
                    }
                    Incoming::Error(v) => sh.figs().error(format!("error frame: {}", v["code"].as_str().unwrap_or("?"))),
                    Incoming::Response(_) | Incoming::Unsubscribed(_) => {}
                }
            }
            _ = tick.tick(), if publisher && up => {
                let t = topic.as_deref().unwrap_or_default();
                let data = json!({"seq": my_seq, "sent_us": now_us(), "pad": pad});
                match client.publish(t, "lt", data).await {
                    Ok(()) => { my_seq += 1; sh.figs().published += 1; }
                    Err(e) => { let mut f = sh.figs(); f.publish_errors += 1; f.error(format!("publish: {e:#}")); }
                }
            }
            _ = stop.changed() => break,
            _ = fin.changed() => { final_seqs = fin.borrow().clone(); break; }
        }
    }
    // Settle: gaps inside what was seen, plus the tail up to the publisher's last number when the
    // VU was still meant to be connected at the end.
    let mut missing = 0;
    for (ch, t) in &trackers {
        let last = final_seqs.as_ref().and_then(|f| f.last_seqs.get(ch).copied());
        missing += t.missing(last);
    }
    sh.figs().missing += missing;
    if up {
        sh.connected.fetch_sub(1, Ordering::SeqCst);
    }
    if is_down && final_seqs.is_none() {
        // Stopped by a ramp-down while still reconnecting: no longer wanted. (At the end it stays
        // counted: the final report's `vus_down` is the VUs that never came back.)
        sh.down.fetch_sub(1, Ordering::SeqCst);
    }
    client.close().await;
}

/// Runs one worker's slice: VUs `worker, worker + workers, ...` below the stage target.
pub async fn run_worker(
    spec: WorkerSpec,
    mut ctrl: mpsc::UnboundedReceiver<FinalMsg>,
    out: mpsc::UnboundedSender<Report>,
) -> Result<()> {
    let sc = spec.scenario.clone();
    let stages = sc.stage_durations();
    let total = sc.total_duration();
    let (n, me) = (spec.workers.max(1) as u64, spec.worker as u64);
    let start_wall = spec.start_unix_ms;
    let now_ms = now_us() / 1000;
    let start = Instant::now() + Duration::from_millis(start_wall.saturating_sub(now_ms));
    tokio::time::sleep_until(start.into()).await;
    let sh = Arc::new(Shared {
        figs: Default::default(),
        connected: AtomicU64::new(0),
        down: AtomicU64::new(0),
        first_down: Default::default(),
        sem: Semaphore::new(sc.target.connect_concurrency.unwrap_or(256)),
        local_addr: spec.local_addr,
        token_exp: SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3 * 3600,
        sc,
    });
    let (fin_tx, fin_rx) = watch::channel::<Option<Arc<FinalMsg>>>(None);
    let mut vus: Vec<(watch::Sender<bool>, tokio::task::JoinHandle<()>)> = Vec::new();
    let mut stopped = Vec::new();
    let churn = if sh.sc.workload.kind == Kind::Churn {
        sh.sc.workload.churn_per_s / n as f64
    } else {
        0.0
    };
    let mut churn_acc = 0.0;
    let mut rng = 0x1234_5678_9abc_def1u64 ^ me;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last_report = Instant::now();
    let hard_deadline = start + total + Duration::from_secs_f64(sh.sc.grace_s) + Duration::from_secs(60);
    let report = |kind: &str, sh: &Shared, target: u64| {
        let mut f = sh.figs().clone();
        f.vus_connected = sh.connected.load(Ordering::SeqCst);
        f.vus_down = sh.down.load(Ordering::SeqCst);
        f.vus_target = target;
        let _ = out.send(Report {
            worker: spec.worker,
            kind: kind.into(),
            figures: f,
        });
    };
    let mut my_target = 0;
    let final_msg = loop {
        tokio::select! {
            _ = tick.tick() => {}
            m = ctrl.recv() => break m,
        }
        if Instant::now() > hard_deadline {
            break None;
        }
        let t = start.elapsed();
        let target = vus_at(&stages, t.min(total));
        my_target = if target > me { (target - me).div_ceil(n) } else { 0 } as usize;
        while vus.len() < my_target {
            let i = me + vus.len() as u64 * n;
            let (tx, rx) = watch::channel(false);
            vus.push((tx, tokio::spawn(vu_task(i, sh.clone(), rx, fin_rx.clone()))));
        }
        while vus.len() > my_target {
            let (tx, h) = vus.pop().expect("non-empty");
            let _ = tx.send(true);
            stopped.push(h);
        }
        if churn > 0.0 && !vus.is_empty() {
            churn_acc += churn * 0.1;
            while churn_acc >= 1.0 {
                churn_acc -= 1.0;
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let slot = (rng % vus.len() as u64) as usize;
                let i = me + slot as u64 * n;
                let (tx, rx) = watch::channel(false);
                let old = std::mem::replace(
                    &mut vus[slot],
                    (tx, tokio::spawn(vu_task(i, sh.clone(), rx, fin_rx.clone()))),
                );
                let _ = old.0.send(true);
                stopped.push(old.1);
            }
        }
        stopped.retain(|h| !h.is_finished());
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            report("progress", &sh, my_target as u64);
        }
    };
    let _ = fin_tx.send(Some(Arc::new(final_msg.unwrap_or(FinalMsg {
        last_seqs: BTreeMap::new(),
    }))));
    let settle = async {
        for (_, h) in vus.drain(..) {
            let _ = h.await;
        }
        for h in stopped.drain(..) {
            let _ = h.await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(15), settle).await;
    report("final", &sh, my_target as u64);
    Ok(())
}

/// The hidden `worker` subcommand: spec on the first stdin line, reports as JSON lines on stdout,
/// the final message on the next stdin line; stdin EOF (the parent died) ends the process.
pub fn worker_main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        let spec: WorkerSpec = serde_json::from_str(&lines.next_line().await?.context("no spec on stdin")?)?;
        let (ctrl_tx, ctrl_rx) = mpsc::unbounded_channel();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Report>();
        tokio::spawn(async move {
            let mut finishing = false;
            loop {
                match lines.next_line().await {
                    Ok(Some(l)) => {
                        if let Ok(m) = serde_json::from_str::<FinalMsg>(&l) {
                            finishing = true;
                            let _ = ctrl_tx.send(m);
                        }
                    }
                    // The parent closes stdin once it has the final report: not a death.
                    _ if finishing => return,
                    _ => {
                        eprintln!("wsgw-loadtest worker: parent gone (stdin closed), exiting");
                        std::process::exit(3);
                    }
                }
            }
        });
        let writer = tokio::spawn(async move {
            let mut stdout = tokio::io::stdout();
            while let Some(r) = out_rx.recv().await {
                let mut line = serde_json::to_string(&r)?;
                line.push('\n');
                stdout.write_all(line.as_bytes()).await?;
                stdout.flush().await?;
            }
            Ok::<_, anyhow::Error>(())
        });
        run_worker(spec, ctrl_rx, out_tx).await?;
        writer.await??;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Gateway figures from /proc

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

#[derive(Default)]
struct ProcSampler {
    pids: Vec<u32>,
    cpu0: Vec<Option<f64>>,
    cpu_last: Vec<Option<f64>>,
    rss0: u64,
    rss_peak: u64,
    rss_at_peak_vus: u64,
    peak_vus: u64,
}

impl ProcSampler {
    fn new(pids: Vec<u32>) -> Self {
        let cpu0: Vec<_> = pids.iter().map(|p| cpu_seconds(*p)).collect();
        let rss0 = pids.iter().filter_map(|p| rss_kib(*p)).sum();
        ProcSampler {
            cpu_last: cpu0.clone(),
            cpu0,
            rss0,
            rss_peak: rss0,
            pids,
            ..Default::default()
        }
    }

    fn sample(&mut self, connected: u64) {
        for (i, p) in self.pids.iter().enumerate() {
            if let Some(c) = cpu_seconds(*p) {
                self.cpu_last[i] = Some(c);
            }
        }
        let rss: u64 = self.pids.iter().filter_map(|p| rss_kib(*p)).sum();
        self.rss_peak = self.rss_peak.max(rss);
        if connected >= self.peak_vus && connected > 0 {
            self.peak_vus = connected;
            self.rss_at_peak_vus = rss;
        }
    }

    fn figures(&self, delivered: u64) -> Option<GatewayFigures> {
        if self.pids.is_empty() {
            return None;
        }
        let cpu: f64 = self
            .cpu0
            .iter()
            .zip(&self.cpu_last)
            .filter_map(|(a, b)| Some(b.as_ref()? - a.as_ref()?))
            .sum();
        Some(GatewayFigures {
            pids: self.pids.clone(),
            cpu_s: cpu,
            rss_before_kib: self.rss0,
            rss_peak_kib: self.rss_peak,
            peak_vus: self.peak_vus,
            rss_per_socket_kib: (self.peak_vus > 0)
                .then(|| self.rss_at_peak_vus.saturating_sub(self.rss0) as f64 / self.peak_vus as f64),
            deliveries_per_cpu_s: (cpu > 0.0).then(|| delivered as f64 / cpu),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Publisher (parent side)

#[derive(Default)]
struct PubState {
    next: HashMap<String, u64>,
    last_ok: BTreeMap<String, u64>,
}

enum Sink {
    Http(reqwest::Client, String, String),
    Fcall(redis::aio::MultiplexedConnection, String),
}

impl Sink {
    async fn publish(&self, channel: &str, data: &Value) -> Result<()> {
        match self {
            Sink::Http(http, api, key) => {
                let (path, body) = if channel == "broadcast" {
                    ("/api/broadcast", json!({"event": "lt", "data": data}))
                } else {
                    ("/api/publish", json!({"channel": channel, "event": "lt", "data": data}))
                };
                let r = http
                    .post(format!("{api}{path}"))
                    .bearer_auth(key)
                    .json(&body)
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "HTTP {}", r.status());
                Ok(())
            }
            Sink::Fcall(con, prefix) => {
                let mut con = con.clone();
                let _: String = redis::cmd("FCALL")
                    .arg("wsgw_publish")
                    .arg(2)
                    .arg(format!("{prefix}seq"))
                    .arg(format!("{prefix}history:{channel}"))
                    .arg(channel)
                    .arg("lt")
                    .arg(data.to_string())
                    .query_async(&mut con)
                    .await?;
                Ok(())
            }
        }
    }
}

async fn publisher(
    sc: Scenario,
    start: Instant,
    state: Arc<AMutex<PubState>>,
    counts: Arc<(AtomicU64, AtomicU64)>,
    errs: Arc<std::sync::Mutex<Vec<String>>>,
) -> Result<()> {
    let w = &sc.workload;
    if !matches!(w.kind, Kind::Broadcast | Kind::User | Kind::Topic) {
        return Ok(());
    }
    let sink = Arc::new(match w.publish_via {
        PublishVia::Http => Sink::Http(
            reqwest::Client::new(),
            sc.target
                .api_url
                .clone()
                .context("target.api_url is needed to publish over HTTP")?,
            sc.target
                .api_key
                .clone()
                .context("target.api_key is needed to publish over HTTP")?,
        ),
        PublishVia::Fcall => {
            let url = sc
                .target
                .redis_url
                .clone()
                .context("target.redis_url is needed for publish_via = fcall")?;
            let con = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
            Sink::Fcall(con, sc.target.redis_prefix.clone().unwrap_or_else(|| "ws:".into()))
        }
    });
    let stages = sc.stage_durations();
    let delay = w
        .publish_delay
        .as_deref()
        .map(parse_duration)
        .transpose()?
        .unwrap_or_default();
    let stop_before = w
        .publish_stop_before_end
        .as_deref()
        .map(parse_duration)
        .transpose()?
        .unwrap_or_default();
    let end = start + sc.total_duration().saturating_sub(stop_before);
    let pad = "x".repeat(w.payload_bytes);
    let period = Duration::from_secs_f64(1.0 / w.rate);
    let mut next = start + delay;
    let sem = Arc::new(Semaphore::new(64));
    let mut n = 0u64;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let topics_used = w
        .topics
        .min(sc.max_vus().div_ceil(w.subscribers_per_topic.max(1)))
        .max(1);
    while next < end && w.messages.is_none_or(|m| n < m) {
        tokio::time::sleep_until(next.into()).await;
        next += period;
        let channel = match w.kind {
            Kind::Broadcast => "broadcast".to_string(),
            Kind::User => {
                let vus = vus_at(&stages, start.elapsed()).max(1);
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                format!("user:{}", user_of(rng % vus))
            }
            _ => format!("lt-topic-{}", n % topics_used),
        };
        n += 1;
        let seq = {
            let mut st = state.lock().await;
            let e = st.next.entry(channel.clone()).or_default();
            *e += 1;
            *e - 1
        };
        let permit = sem.clone().acquire_owned().await?;
        let (sink, state, counts, errs, pad) = (sink.clone(), state.clone(), counts.clone(), errs.clone(), pad.clone());
        tokio::spawn(async move {
            let data = json!({"seq": seq, "sent_us": now_us(), "pad": pad});
            let mut r = sink.publish(&channel, &data).await;
            if r.is_err() {
                r = sink.publish(&channel, &data).await;
            }
            drop(permit);
            match r {
                Ok(()) => {
                    counts.0.fetch_add(1, Ordering::Relaxed);
                    let mut st = state.lock().await;
                    let e = st.last_ok.entry(channel).or_insert(seq);
                    *e = (*e).max(seq);
                }
                Err(e) => {
                    counts.1.fetch_add(1, Ordering::Relaxed);
                    let mut v = errs.lock().unwrap();
                    if v.len() < 3 {
                        v.push(format!("publish: {e:#}"));
                    }
                }
            }
        });
    }
    // Wait for the in-flight publishes.
    let _ = sem.acquire_many(64).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Parent

enum WorkerHandle {
    Local(mpsc::UnboundedSender<FinalMsg>, tokio::task::JoinHandle<Result<()>>),
    Proc(tokio::process::ChildStdin, Box<tokio::process::Child>),
}

fn fmt_ms(us: Option<u64>) -> String {
    us.map_or("-".into(), |v| format!("{:.1}ms", v as f64 / 1000.0))
}

/// Runs a scenario to the end and returns the merged summary (thresholds evaluated).
pub async fn run(sc: Scenario, opts: RunOptions) -> Result<Summary> {
    sc.validate()?;
    anyhow::ensure!(
        !sc.target.urls.is_empty(),
        "no target urls (set target.urls or target.cluster_json)"
    );
    anyhow::ensure!(
        sc.target.secret.is_some(),
        "no target.secret (the gateway's WSGW_JWT_SECRET)"
    );
    let max_vus = sc.max_vus();
    let per = sc.target.vus_per_worker.unwrap_or(15_000).max(1) as u64;
    let workers = opts.workers.or(sc.target.workers).unwrap_or(if max_vus > per {
        max_vus.div_ceil(per) as usize
    } else {
        0
    });
    if workers == 0 && max_vus > per {
        eprintln!("warning: {max_vus} VUs in one process may exceed the open-files limit; use workers");
    }
    let slots = workers.max(1);
    // Source addresses: explicit, or 127.0.0.(2+k) when one destination would get > 25k sockets.
    let per_dest = max_vus / sc.target.urls.len() as u64;
    let loopback = sc
        .target
        .urls
        .iter()
        .all(|u| u.contains("127.0.0.1") || u.contains("localhost"));
    let source = |k: usize| -> Option<IpAddr> {
        if !sc.target.source_addrs.is_empty() {
            return sc.target.source_addrs[k % sc.target.source_addrs.len()].parse().ok();
        }
        (per_dest > 25_000 && loopback).then(|| IpAddr::from([127, 0, 0, 2 + (k % 250) as u8]))
    };
    let total = sc.total_duration();
    let start_unix_ms = now_us() / 1000 + if workers > 0 { 700 } else { 100 };
    let start = Instant::now() + Duration::from_millis(start_unix_ms.saturating_sub(now_us() / 1000));
    let (rep_tx, mut rep_rx) = mpsc::unbounded_channel::<Report>();
    let mut handles = Vec::new();
    for k in 0..slots {
        let spec = WorkerSpec {
            scenario: sc.clone(),
            worker: k,
            workers: slots,
            start_unix_ms,
            local_addr: source(k),
        };
        if workers == 0 {
            let (ctx, crx) = mpsc::unbounded_channel();
            handles.push(WorkerHandle::Local(
                ctx,
                tokio::spawn(run_worker(spec, crx, rep_tx.clone())),
            ));
        } else {
            let exe = match &opts.worker_exe {
                Some(p) => p.clone(),
                None => std::env::current_exe()?,
            };
            let mut child = tokio::process::Command::new(exe)
                .arg("worker")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("spawn worker")?;
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let mut line = serde_json::to_string(&spec)?;
            line.push('\n');
            stdin.write_all(line.as_bytes()).await?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let tx = rep_tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    match serde_json::from_str::<Report>(&l) {
                        Ok(r) => {
                            let _ = tx.send(r);
                        }
                        Err(e) => eprintln!("worker {k}: bad report: {e}"),
                    }
                }
            });
            handles.push(WorkerHandle::Proc(stdin, Box::new(child)));
        }
    }
    drop(rep_tx);
    let mut proc = ProcSampler::new(sc.target.server_pids.clone());
    let pub_state = Arc::new(AMutex::new(PubState::default()));
    let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let pub_errs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let pub_task = tokio::spawn(publisher(
        sc.clone(),
        start,
        pub_state.clone(),
        counts.clone(),
        pub_errs.clone(),
    ));
    let mut latest: Vec<Option<Figures>> = vec![None; slots];
    let merge = |latest: &[Option<Figures>]| {
        let mut m = Figures::default();
        latest.iter().flatten().for_each(|f| m.merge(f));
        m
    };
    let mut killed = None;
    let kill_at = sc.kill.as_ref().map(|k| start + Duration::from_secs_f64(k.after_s));
    let mut tick = tokio::time::interval_at((start + Duration::from_secs(1)).into(), Duration::from_secs(1));
    let mut prev_delivered = 0;
    let end = start + total;
    // Stages.
    while Instant::now() < end {
        tokio::select! {
            r = rep_rx.recv() => match r {
                Some(r) => latest[r.worker] = Some(r.figures),
                None => break,
            },
            _ = tick.tick() => {
                let m = merge(&latest);
                proc.sample(m.vus_connected);
                if opts.progress {
                    let t = start.elapsed().as_secs_f64();
                    eprintln!(
                        "[{t:6.1}s] VUs {}/{}  down {}  recv {}/s  delivery p99 {}  connect p99 {}  published {}  errors {}  missing-so-far {}",
                        m.vus_connected, vus_at(&sc.stage_durations(), start.elapsed()), m.vus_down,
                        m.delivered - prev_delivered.min(m.delivered), fmt_ms(m.delivery.quantile(0.99)),
                        fmt_ms(m.connect.quantile(0.99)), counts.0.load(Ordering::Relaxed) + m.published,
                        m.errors + m.connect_failures + counts.1.load(Ordering::Relaxed), m.missing
                    );
                }
                prev_delivered = m.delivered;
                if let (Some(at), None) = (kill_at, killed) && Instant::now() >= at {
                    let k = sc.kill.as_ref().expect("kill");
                    let pid = k.pid.or_else(|| sc.target.server_pids.get(k.node.saturating_sub(1)).copied());
                    if let Some(pid) = pid {
                        eprintln!("kill: SIGKILL to gateway pid {pid}");
                        let st = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                        if st.is_ok_and(|s| s.success()) { killed = Some(pid); } else { eprintln!("kill {pid} failed"); killed = Some(0); }
                    } else {
                        eprintln!("kill: no pid for node {}", k.node);
                        killed = Some(0);
                    }
                }
            }
        }
    }
    // Grace: let the publisher finish and the last deliveries land.
    let _ = tokio::time::timeout(Duration::from_secs(30), pub_task).await;
    let grace_end = Instant::now() + Duration::from_secs_f64(sc.grace_s);
    while Instant::now() < grace_end {
        tokio::select! {
            r = rep_rx.recv() => if let Some(r) = r { latest[r.worker] = Some(r.figures) },
            _ = tokio::time::sleep_until(grace_end.into()) => {}
        }
    }
    let last_seqs = pub_state.lock().await.last_ok.clone();
    let mut finals: Vec<Option<Figures>> = vec![None; slots];
    for h in &mut handles {
        let msg = FinalMsg {
            last_seqs: last_seqs.clone(),
        };
        match h {
            WorkerHandle::Local(tx, _) => {
                let _ = tx.send(msg);
            }
            WorkerHandle::Proc(stdin, _) => {
                let mut line = serde_json::to_string(&msg)?;
                line.push('\n');
                let _ = stdin.write_all(line.as_bytes()).await;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while finals.iter().any(Option::is_none) && Instant::now() < deadline {
        match tokio::time::timeout_at(deadline.into(), rep_rx.recv()).await {
            Ok(Some(r)) if r.kind == "final" => finals[r.worker] = Some(r.figures),
            Ok(Some(r)) => latest[r.worker] = Some(r.figures),
            _ => break,
        }
    }
    let mut lost_workers = 0;
    for (k, f) in finals.iter_mut().enumerate() {
        if f.is_none() {
            lost_workers += 1;
            *f = latest[k].take();
        }
    }
    for h in handles {
        match h {
            WorkerHandle::Local(_, j) => {
                let _ = tokio::time::timeout(Duration::from_secs(5), j).await;
            }
            WorkerHandle::Proc(stdin, mut child) => {
                drop(stdin);
                if tokio::time::timeout(Duration::from_secs(5), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
        }
    }
    let mut figs = merge(&finals);
    figs.published += counts.0.load(Ordering::Relaxed);
    figs.publish_errors += counts.1.load(Ordering::Relaxed);
    figs.errors += counts.1.load(Ordering::Relaxed);
    for e in pub_errs.lock().unwrap().iter() {
        if figs.error_samples.len() < 5 {
            figs.error_samples.push(e.clone());
        }
    }
    if lost_workers > 0 {
        figs.error(format!("{lost_workers} worker(s) sent no final report"));
    }
    proc.sample(0);
    let gateway = proc.figures(figs.delivered);
    Ok(Summary::new(
        &sc,
        figs,
        gateway,
        start.elapsed(),
        slots,
        killed.filter(|p| *p != 0),
    ))
}
