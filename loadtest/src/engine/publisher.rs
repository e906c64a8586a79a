//! engine/publisher.rs: the parent's publisher: the workload's events through the HTTP API or
//! `FCALL wsgw_publish`, paced and counted.

use super::*;

#[derive(Default)]
pub(super) struct PubState {
    pub(super) next: HashMap<String, u64>,
    pub(super) last_ok: BTreeMap<String, u64>,
    /// When the first publish started, and when the last one was answered.
    pub(super) first_sent: Option<Instant>,
    pub(super) last_answered: Option<Instant>,
    /// With `stop_receivers`: the fan-out window, or why there is none.
    pub(super) window: Option<std::result::Result<Window, String>>,
}

impl PubState {
    /// The rate of `published` publishes since the first one started, to the last answer
    /// (`Figures::publisher_rate_per_s`).
    pub(super) fn rate_per_s(&self, published: u64) -> Option<f64> {
        let window = self
            .last_answered?
            .saturating_duration_since(self.first_sent?)
            .as_secs_f64();
        (published > 1 && window > 0.0).then(|| (published - 1) as f64 / window)
    }
}

pub(super) enum Sink {
    Http(reqwest::Client, String, String),
    Fcall(redis::aio::MultiplexedConnection, String),
}

impl Sink {
    pub(super) async fn publish(&self, channel: &str, data: &Value) -> Result<()> {
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

pub(super) async fn publisher(
    sc: Scenario,
    start: Instant,
    state: Arc<AMutex<PubState>>,
    counts: Arc<(AtomicU64, AtomicU64)>,
    errs: Arc<std::sync::Mutex<Vec<String>>>,
    mut connected: watch::Receiver<u64>,
    receivers: Option<Receivers>,
) -> Result<()> {
    let w = &sc.workload;
    if !matches!(w.kind, Kind::Broadcast | Kind::User | Kind::Topic) {
        return Ok(());
    }
    let sink = Arc::new(match w.publish_via {
        PublishVia::Http => Sink::Http(
            {
                // reqwest is built without a TLS crypto provider: ring, as everywhere here.
                let _ = rustls::crypto::ring::default_provider().install_default();
                reqwest::Client::new()
            },
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
    let mut end = start + sc.total_duration().saturating_sub(stop_before);
    let pad = "x".repeat(w.payload_bytes);
    let period = Duration::from_secs_f64(1.0 / w.rate);
    let mut next = start + delay;
    if w.publish_when_connected {
        tokio::time::sleep_until(next.into()).await;
        let wanted = || vus_at(&stages, start.elapsed());
        let waited = tokio::time::timeout(Duration::from_secs(30), connected.wait_for(|&c| c >= wanted()))
            .await
            .is_ok_and(|r| r.is_ok());
        if !waited {
            eprintln!(
                "publishing although only {} of {} VUs are welcomed after 30 s",
                *connected.borrow(),
                wanted()
            );
        }
        let now = Instant::now();
        end += now - next;
        next = now;
    }
    let sem = Arc::new(Semaphore::new(64));
    // One publish in flight per channel, so they land in the order of their numbers. Concurrent
    // HTTP publishes to one channel land in any order on a busy machine, and a socket welcomed
    // between two that crossed sees the earlier number but not the later one: a hole that
    // `missing` would count though the gateway lost nothing.
    let mut in_order: HashMap<String, Arc<AMutex<()>>> = HashMap::new();
    let mut n = 0u64;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let topics_used = w
        .topics
        .min(sc.max_vus().div_ceil(w.subscribers_per_topic.max(1)))
        .max(1);
    let mut stopped = None;
    while next < end && w.messages.is_none_or(|m| n < m) {
        tokio::time::sleep_until(next.into()).await;
        next += period;
        if let (Some(r), 0) = (&receivers, n) {
            match Stopped::stop(r) {
                Ok(s) => stopped = Some(s),
                Err(e) => {
                    state.lock().await.window = Some(Err(format!("{e:#}")));
                    return Err(e);
                }
            }
        }
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
            st.first_sent.get_or_insert_with(Instant::now);
            let e = st.next.entry(channel.clone()).or_default();
            *e += 1;
            *e - 1
        };
        let turn = in_order.entry(channel.clone()).or_default().clone().lock_owned().await;
        let permit = sem.clone().acquire_owned().await?;
        let (sink, state, counts, errs, pad) = (sink.clone(), state.clone(), counts.clone(), errs.clone(), pad.clone());
        tokio::spawn(async move {
            let data = json!({"seq": seq, "sent_us": now_us(), "pad": pad});
            let mut r = sink.publish(&channel, &data).await;
            if r.is_err() {
                r = sink.publish(&channel, &data).await;
            }
            drop((permit, turn));
            match r {
                Ok(()) => {
                    counts.0.fetch_add(1, Ordering::Relaxed);
                    let mut st = state.lock().await;
                    st.last_answered = Some(Instant::now());
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
    if let Some(s) = stopped {
        state.lock().await.window = Some(s.finish().await.map_err(|e| format!("{e:#}")));
    }
    Ok(())
}
