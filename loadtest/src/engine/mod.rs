//! engine/: the scenario engine: a parent that publishes (`publisher.rs`), samples the
//! gateway's /proc figures (`proc.rs`), prints progress and merges the figures of its workers;
//! workers (`worker.rs`: in-process, or child processes running the hidden `worker`
//! subcommand) own a slice of the VUs.

mod proc;
mod publisher;
mod stopped;
mod worker;

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

use proc::ProcSampler;
use publisher::{PubState, publisher};
use stopped::{Receivers, Stopped, Window};
pub use worker::{run_worker, sign_hs256, topic_of, user_of, worker_main};

/// How often the grace checks whether deliveries still grow (workers report once a second).
const GRACE_STEP: Duration = Duration::from_millis(1500);
/// How long past `grace_s` a run waits while they do.
const GRACE_GROWING: Duration = Duration::from_secs(30);

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
    let mut worker_pids = Vec::new();
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
            worker_pids.extend(child.id());
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
    let (connected_tx, connected_rx) = watch::channel(0u64);
    let receivers = sc.workload.stop_receivers.then(|| Receivers {
        workers: worker_pids,
        servers: sc.target.server_pids.clone(),
    });
    let pub_task = tokio::spawn(publisher(
        sc.clone(),
        start,
        pub_state.clone(),
        counts.clone(),
        pub_errs.clone(),
        connected_rx,
        receivers,
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
                connected_tx.send_replace(m.vus_connected);
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
    // Grace: let the publisher finish (still told how many VUs are welcomed, as it may be
    // waiting for them) and the last deliveries land.
    let pub_wait = if sc.workload.publish_when_connected { 60 } else { 30 };
    let pub_deadline = Instant::now() + Duration::from_secs(pub_wait);
    tokio::pin!(pub_task);
    loop {
        tokio::select! {
            _ = &mut pub_task => break,
            _ = tokio::time::sleep_until(pub_deadline.into()) => break,
            r = rep_rx.recv() => match r {
                Some(r) => {
                    latest[r.worker] = Some(r.figures);
                    connected_tx.send_replace(merge(&latest).vus_connected);
                }
                None => break,
            },
        }
    }
    // The grace, then on while the workers' reports still show deliveries growing (a backlog
    // being read, as after `stop_receivers`), for at most GRACE_GROWING more.
    let grace_end = Instant::now() + Duration::from_secs_f64(sc.grace_s);
    let last_end = grace_end + GRACE_GROWING;
    let (mut mark, mut closed) = ((Instant::now(), merge(&latest).delivered), false);
    loop {
        let next = (mark.0 + GRACE_STEP).min(last_end);
        while Instant::now() < next && !closed {
            tokio::select! {
                r = rep_rx.recv() => match r {
                    Some(r) => latest[r.worker] = Some(r.figures),
                    None => closed = true,
                },
                _ = tokio::time::sleep_until(next.into()) => {}
            }
        }
        let delivered = merge(&latest).delivered;
        if closed || next >= last_end || (next >= grace_end && delivered == mark.1) {
            break;
        }
        mark = (next, delivered);
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
    figs.publisher_rate_per_s = pub_state.lock().await.rate_per_s(counts.0.load(Ordering::Relaxed));
    match pub_state.lock().await.window.take() {
        Some(Ok(w)) => {
            figs.stopped_fanout_s = Some(w.seconds);
            figs.stopped_fanout_cpu_s = Some(w.cpu_s);
        }
        Some(Err(e)) => figs.error(format!("stop_receivers: {e}")),
        None if sc.workload.stop_receivers => figs.error("stop_receivers: no fan-out window (nothing published)"),
        None => {}
    }
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
