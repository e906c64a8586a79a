//! engine/worker.rs: one worker's slice of the VUs, their tokens, and the hidden `worker`
//! subcommand that runs a slice in a child process.

use super::*;

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
        // A VU still trying to connect when the run ends (`fin`) gives up then.
        let permit = tokio::select! {
            p = sh.sem.acquire() => p.expect("semaphore"),
            _ = stop.changed() => return,
            _ = fin.changed() => return,
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
            ca_file: sc.target.ca_file.clone(),
            insecure: sc.target.insecure,
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
                    _ = fin.changed() => return,
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
    // A VU's channels, each with its sequence check: one or a few, so a list is the cheapest map.
    let mut trackers: Vec<(String, SeqTracker)> = Vec::new();
    // client_publish: the first VU of each topic publishes to it.
    let k = w.subscribers_per_topic.max(1);
    let publisher = w.kind == Kind::ClientPublish && topic.is_some() && i.is_multiple_of(k);
    let period = Duration::from_secs_f64((w.topics.max(1) as f64 / w.rate.max(1e-3)).max(0.001));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let pad = "x".repeat(w.payload_bytes);
    let mut my_seq = 0u64;
    let mut final_seqs: Option<Arc<FinalMsg>> = None;
    // The end of the VU (a ramp-down's stop, or the run's end with the publishers' last numbers):
    // one future for the whole loop, so a frame costs no new waiter on either watch.
    let ended = async {
        tokio::select! {
            _ = stop.changed() => None,
            _ = fin.changed() => Some(fin.borrow().clone()),
        }
    };
    tokio::pin!(ended);
    loop {
        tokio::select! {
            biased;
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
                            && let Seen::Duplicate = tracker(&mut trackers, channel).see(seq)
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
            end = &mut ended => {
                final_seqs = end.flatten();
                break;
            }
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

/// The sequence check of `channel` in a VU's list, added on its first event.
fn tracker(trackers: &mut Vec<(String, SeqTracker)>, channel: String) -> &mut SeqTracker {
    let k = match trackers.iter().position(|(c, _)| *c == channel) {
        Some(k) => k,
        None => {
            trackers.push((channel, SeqTracker::default()));
            trackers.len() - 1
        }
    };
    &mut trackers[k].1
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
