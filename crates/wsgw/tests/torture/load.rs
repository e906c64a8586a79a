//! The load around the torture clients: a seeded PRNG, the shared node list and flags,
//! publishers (FCALL and HTTP) and passive fan-out sockets.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::model::Id;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The gateways' settings under torture: history never trims or expires during the run (so any
/// replay may be complete), and heartbeats never get in the way.
pub const NODE_ENV: &[(&str, &str)] = &[
    ("WSGW_HISTORY_SIZE", "1000000"),
    ("WSGW_HISTORY_TTL_MS", "86400000"),
    ("WSGW_MAX_REPLAY", "1000000"),
    ("WSGW_RATE_LIMIT_PER_S", "0"),
    ("WSGW_HEARTBEAT_INTERVAL_MS", "10000"),
    ("WSGW_HEARTBEAT_TIMEOUT_MS", "120000"),
    ("WSGW_PRESENCE_TTL_MS", "30000"),
];

/// The channels published to; the first four are the busy ones.
pub const CHANNELS: [&str; 16] = [
    "t:0", "t:1", "t:2", "t:3", "t:4", "t:5", "t:6", "t:7", "t:8", "t:9", "t:10", "t:11", "t:12", "t:13", "t:14",
    "t:15",
];

/// SplitMix64: small, seeded, good enough for choosing actions.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A channel, busy ones twice as likely as all the others together.
    pub fn channel(&mut self) -> &'static str {
        let r = self.below(36);
        if r < 24 {
            CHANNELS[(r / 6) as usize]
        } else {
            CHANNELS[4 + (r - 24) as usize]
        }
    }
}

/// What every task shares: where the nodes are and the phase flags.
pub struct Shared {
    pub epoch: Instant,
    /// The nodes serve on a Redis Cluster: ids name their id-shard, no patterns.
    pub sharded: bool,
    /// Redis Cluster runs: every (channel, id) a publisher was given back, to tell events a
    /// failed primary acknowledged and lost from unknown ones.
    pub acked: Mutex<Vec<(String, Id)>>,
    /// Redis Cluster runs: why publishes failed, with how many times.
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// Per node slot: (node id, port) while it runs.
    pub nodes: Mutex<Vec<Option<(String, u16)>>>,
    /// Torture clients stop taking actions (they keep reading and reconnecting).
    pub quiesce: AtomicBool,
    /// Everything stops.
    pub stop: AtomicBool,
    pub stop_publishing: AtomicBool,
    pub stop_passive: AtomicBool,
    pub published_ok: AtomicU64,
    pub publish_errors: AtomicU64,
    /// Longest time from publish (`ts`) to a torture client receiving the event, in ms.
    pub max_lag_ms: AtomicU64,
}

impl Shared {
    pub fn new(nodes: Vec<(String, u16)>, sharded: bool) -> Shared {
        Shared {
            epoch: Instant::now(),
            sharded,
            acked: Mutex::new(Vec::new()),
            errors: Mutex::new(BTreeMap::new()),
            nodes: Mutex::new(nodes.into_iter().map(Some).collect()),
            quiesce: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            stop_publishing: AtomicBool::new(false),
            stop_passive: AtomicBool::new(false),
            published_ok: AtomicU64::new(0),
            publish_errors: AtomicU64::new(0),
            max_lag_ms: AtomicU64::new(0),
        }
    }

    pub fn t_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    pub fn random_node(&self, rng: &mut Rng) -> Option<(String, u16)> {
        let live: Vec<(String, u16)> = self.nodes.lock().unwrap().iter().flatten().cloned().collect();
        if live.is_empty() {
            return None;
        }
        Some(live[rng.below(live.len() as u64) as usize].clone())
    }

    pub fn set_node(&self, slot: usize, node: Option<(String, u16)>) {
        self.nodes.lock().unwrap()[slot] = node;
    }

    /// Notes why a publish failed (Redis Cluster runs only), digits folded so that one kind of
    /// error is counted once.
    pub fn failed(&self, why: &str) {
        if self.sharded {
            let mut kind = String::new();
            for c in why.chars().take(400) {
                if !(c.is_ascii_digit() && kind.ends_with('#')) {
                    kind.push(if c.is_ascii_digit() { '#' } else { c });
                }
            }
            *self.errors.lock().unwrap().entry(kind).or_default() += 1;
        }
    }

    /// Notes an id a publisher was given (Redis Cluster runs only).
    pub fn acknowledged(&self, channel: &str, id: Option<Id>) {
        if let (true, Some(id)) = (self.sharded, id) {
            self.acked.lock().unwrap().push((channel.to_string(), id));
        }
    }
}

pub async fn redis_conn(url: &str) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).ok()?;
    tokio::time::timeout(Duration::from_secs(2), client.get_multiplexed_async_connection())
        .await
        .ok()?
        .ok()
}

/// `FCALL wsgw_publish` with an explicit history TTL and size, so nothing is ever trimmed.
pub async fn fcall(c: &mut redis::aio::MultiplexedConnection, channel: &str, data: &str) -> Result<String, String> {
    let call = redis::cmd("FCALL")
        .arg("wsgw_publish")
        .arg(2)
        .arg("ws:seq")
        .arg(format!("ws:history:{channel}"))
        .arg(channel)
        .arg("tick")
        .arg(data)
        .arg(86_400_000u64)
        .arg(10_000_000u64)
        .query_async::<String>(c)
        .await;
    call.map_err(|e| e.to_string())
}

/// Publishes through `FCALL wsgw_publish` at `per_s` events/s until told to stop.
pub async fn fcall_publisher(name: String, redis_url: String, per_s: f64, seed: u64, shared: Arc<Shared>) {
    let mut rng = Rng::new(seed);
    let mut conn = None;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_s));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    while !shared.stop_publishing.load(Ordering::Acquire) {
        tick.tick().await;
        if conn.is_none() {
            conn = redis_conn(&redis_url).await;
        }
        let Some(c) = conn.as_mut() else {
            shared.publish_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        n += 1;
        let data = format!("{{\"p\":\"{name}\",\"n\":{n}}}");
        match tokio::time::timeout(Duration::from_secs(3), fcall(c, rng.channel(), &data)).await {
            Ok(Ok(_)) => {
                shared.published_ok.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                shared.publish_errors.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
    }
}

/// Publishes through `POST /api/publish` on random nodes.
pub async fn http_publisher(name: String, per_s: f64, seed: u64, shared: Arc<Shared>) {
    let mut rng = Rng::new(seed);
    let http = wsgw::http_client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_s));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    while !shared.stop_publishing.load(Ordering::Acquire) {
        tick.tick().await;
        let Some((_, port)) = shared.random_node(&mut rng) else {
            continue;
        };
        n += 1;
        let channel = rng.channel();
        let body = serde_json::json!({"channel": channel, "event": "tick", "data": {"p": name, "n": n}});
        let r = http
            .post(format!("http://127.0.0.1:{port}/api/publish"))
            .bearer_auth(crate::common::API_KEY)
            .json(&body)
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => {
                if shared.sharded {
                    let v: serde_json::Value = r.json().await.unwrap_or_default();
                    shared.acknowledged(channel, v["event_id"].as_str().and_then(Id::parse));
                }
                shared.published_ok.fetch_add(1, Ordering::Relaxed)
            }
            r => {
                if shared.sharded {
                    let why = match r {
                        Ok(r) => format!("HTTP {}: {}", r.status().as_u16(), r.text().await.unwrap_or_default()),
                        Err(e) => format!("HTTP request: {e}"),
                    };
                    shared.failed(&why);
                }
                shared.publish_errors.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// Starts `n` passive sockets (tokens for `t:*`) that count the frames they drain.
pub fn spawn_passives(n: usize, shared: &Arc<Shared>, frames: &Arc<AtomicU64>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let t = crate::common::token(&format!("p{i}"), &["t:*"], &[]);
            tokio::spawn(passive(i, t, shared.clone(), frames.clone()))
        })
        .collect()
}

/// A passive socket: subscribes to busy channels (and sometimes a pattern), then just drains
/// its socket, answering pings. Reconnects (fresh) when its socket ends.
pub async fn passive(i: usize, token: String, shared: Arc<Shared>, frames: Arc<AtomicU64>) {
    let mut rng = Rng::new(0xABCD ^ i as u64);
    let mut subs = vec![CHANNELS[i % 4], CHANNELS[(i + 1) % 4]];
    if i.is_multiple_of(5) && !shared.sharded {
        subs.push("t:1*");
    }
    while !shared.stop_passive.load(Ordering::Acquire) {
        let Some((_, port)) = shared.random_node(&mut rng) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let url = format!("ws://127.0.0.1:{port}/ws?token={token}");
        let Ok(Ok((mut ws, _))) =
            tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(url)).await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut ok = true;
        for s in &subs {
            let f = format!("{{\"type\":\"subscribe\",\"channel\":\"{s}\"}}");
            ok &= ws.send(Message::Text(f.into())).await.is_ok();
        }
        while ok && !shared.stop_passive.load(Ordering::Acquire) {
            match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
                Err(_) => {}
                Ok(Some(Ok(Message::Text(t)))) => {
                    frames.fetch_add(1, Ordering::Relaxed);
                    if t.starts_with("{\"type\":\"ping\"") {
                        ok = ws.send(Message::Text("{\"type\":\"pong\"}".into())).await.is_ok();
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(_) => ok = false,
            }
        }
        if !ok {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Reads every channel's history stream back: the ground truth of what was published.
pub async fn read_published(c: &mut redis::aio::MultiplexedConnection) -> BTreeMap<String, Vec<Id>> {
    let mut out = BTreeMap::new();
    for ch in CHANNELS {
        let key = format!("ws:history:{ch}");
        let mut ids = Vec::new();
        let mut start = "-".to_string();
        loop {
            let batch: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(5000)
                .query_async(c)
                .await
                .expect("XRANGE");
            let n = batch.len();
            for (id, _) in &batch {
                ids.push(Id::parse(id).expect("stream id"));
            }
            match batch.last() {
                Some((last, _)) if n == 5000 => start = format!("({last}"),
                _ => break,
            }
        }
        out.insert(ch.to_string(), ids);
    }
    out
}
