//! redis.rs: the cluster broker. Durable publishes go through the `wsgw_publish` Redis
//! Function (ids, history stream, pub/sub in one atomic call); one pub/sub connection per node
//! follows local interest; presence and the node registry are TTL keys refreshed in pipelined
//! batches by one task. After any pub/sub interruption the node resubscribes and repairs the
//! gap from history. Never blocks a socket: everything here talks to Redis, then to the hub.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use deadpool_redis::{Pool, Runtime};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use redis::AsyncCommands;
use redis::streams::StreamRangeReply;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};
use wsgw_protocol::{CloseCode, EventId};

use super::memory::HistoryLimits;
use super::{
    Broker, BrokerError, ClusterStats, HistoryPage, HistoryQuery, InboundRequest, PublishRequest, Resume, StoredEvent,
};
use crate::hub::{Connection, Hub, OutFrame, PresenceEntry, ResponseTag};
use crate::metrics::Metrics;
use crate::time::now_ms;

/// How many times the command timeout reads on the connect path (history, resume) and pool
/// waits may take: under a reconnect storm they queue behind each other, and failing them would
/// turn a slow reconnect into lost events.
const PATIENT: u32 = 10;

/// The Redis Function library, loaded with `FUNCTION LOAD REPLACE` at start-up.
pub const FUNCTIONS: &str = include_str!("wsgw.lua");

/// How a node talks to Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://…` URL.
    pub url: String,
    /// Key and channel prefix (`ws:`).
    pub prefix: String,
    /// This node's id.
    pub node_id: String,
    /// History size and TTL passed to `wsgw_publish`.
    pub history: HistoryLimits,
    /// How long a closed connection's identity and topics are kept for resume.
    pub session_ttl_ms: u64,
    /// TTL of presence keys and the node registry entry.
    pub presence_ttl_ms: u64,
    /// How often the node publishes its canary on its own control channel.
    pub canary_interval_ms: u64,
    /// Longest a single Redis command may take before the caller gets `unavailable`.
    pub op_timeout: Duration,
    /// Approximate length the request stream is trimmed to.
    pub inbound_maxlen: usize,
}

/// A control message on `<prefix>control`, seen by every node.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "control", rename_all = "snake_case")]
enum Control {
    KickUser {
        user_id: String,
    },
    KickConnection {
        connection_id: String,
    },
    /// A newer socket of the same user resumed this connection id on another node; only the
    /// node that held the old socket acts (the new one may already hold the id itself).
    Replace {
        connection_id: String,
        node: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct PresenceValue {
    user_id: String,
    node: String,
    connected_at: u64,
    channels: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ParkedValue {
    user_id: String,
    topics: Vec<String>,
}

enum SubCmd {
    Listen(Vec<Arc<str>>, oneshot::Sender<Result<(), BrokerError>>),
    Unlisten(Vec<Arc<str>>),
}

enum PresenceCmd {
    Connected(Arc<Connection>),
    Disconnected {
        id: Arc<str>,
        user_id: Arc<str>,
        topics: Vec<String>,
        park: bool,
    },
    Leave(oneshot::Sender<()>),
}

struct Keys {
    prefix: String,
}

impl Keys {
    fn seq(&self) -> String {
        format!("{}seq", self.prefix)
    }
    fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }
    fn config(&self) -> String {
        format!("{}config", self.prefix)
    }
    fn history(&self, channel: &str) -> String {
        format!("{}history:{channel}", self.prefix)
    }
    fn meta(&self, channel: &str) -> String {
        format!("{}meta:{channel}", self.prefix)
    }
    fn presence_conn(&self, id: &str) -> String {
        format!("{}presence:conn:{id}", self.prefix)
    }
    fn presence_user(&self, user: &str) -> String {
        format!("{}presence:user:{user}", self.prefix)
    }
    fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }
    fn node(&self, id: &str) -> String {
        format!("{}node:{id}", self.prefix)
    }
    fn session(&self, id: &str) -> String {
        format!("{}session:{id}", self.prefix)
    }
    fn inbound(&self) -> String {
        format!("{}inbound", self.prefix)
    }
    fn control(&self) -> String {
        format!("{}control", self.prefix)
    }
    fn canary(&self, node: &str) -> String {
        format!("{}control:{node}", self.prefix)
    }
    /// The pub/sub channel of a gateway channel or pattern.
    fn pubsub(&self, channel: &str) -> String {
        format!("{}{channel}", self.prefix)
    }
}

struct Inner {
    s: RedisSettings,
    keys: Keys,
    client: redis::Client,
    pool: Pool,
    hub: Arc<Hub>,
    metrics: Metrics,
    sub_tx: mpsc::UnboundedSender<SubCmd>,
    presence_tx: mpsc::UnboundedSender<PresenceCmd>,
    ready: AtomicBool,
    /// Highest durable id received from pub/sub: a gap after an outage starts right after it.
    watermark: Mutex<Option<EventId>>,
    /// `sync` calls waiting for their marker to come back on the pub/sub connection.
    syncs: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next_sync: AtomicU64,
    started_at_ms: u64,
}

/// The Redis-backed broker. Cheap to share; its tasks stop when `shutdown` fires.
pub struct RedisBroker {
    inner: Arc<Inner>,
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

async fn timed<T>(d: Duration, f: impl Future<Output = Result<T, BrokerError>>) -> Result<T, BrokerError> {
    tokio::time::timeout(d, f)
        .await
        .map_err(|_| BrokerError::Unavailable("redis did not answer in time".into()))?
}

impl RedisBroker {
    /// Connects, loads the Functions, and starts the pub/sub and presence tasks. Retries the
    /// first connection for a few seconds (Redis may start alongside the gateway).
    pub async fn start(
        s: RedisSettings,
        hub: Arc<Hub>,
        metrics: Metrics,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<Self>, BrokerError> {
        let client =
            redis::Client::open(s.url.as_str()).map_err(|e| BrokerError::Internal(format!("WSGW_REDIS_URL: {e}")))?;
        let pool = deadpool_redis::Config::from_url(s.url.clone())
            .builder()
            .map_err(|e| BrokerError::Internal(e.to_string()))?
            .max_size(64)
            .wait_timeout(Some(s.op_timeout * PATIENT))
            .create_timeout(Some(s.op_timeout))
            .recycle_timeout(Some(s.op_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        let (sub_tx, sub_rx) = mpsc::unbounded_channel();
        let (presence_tx, presence_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            keys: Keys {
                prefix: s.prefix.clone(),
            },
            s,
            client,
            pool,
            hub,
            metrics,
            sub_tx,
            presence_tx,
            ready: AtomicBool::new(false),
            watermark: Mutex::new(None),
            syncs: Mutex::new(HashMap::new()),
            next_sync: AtomicU64::new(0),
            started_at_ms: now_ms(),
        });
        let mut attempt = 0u32;
        loop {
            match inner.prepare().await {
                Ok(()) => break,
                Err(e) if attempt < 20 => {
                    attempt += 1;
                    warn!(error = %e, attempt, "redis not reachable yet");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        }
        tokio::spawn(inner.clone().subscriber(sub_rx, shutdown.clone()));
        tokio::spawn(inner.clone().presence_worker(presence_rx, shutdown));
        // Serve only once the pub/sub connection is live: a node is never green but deaf.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !inner.ready.load(Ordering::Acquire) {
            if tokio::time::Instant::now() > deadline {
                return Err(unavailable("redis pub/sub did not come up within 10 s"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Arc::new(Self { inner }))
    }
}

impl Inner {
    async fn conn(&self) -> Result<deadpool_redis::Connection, BrokerError> {
        self.pool.get().await.map_err(unavailable)
    }

    /// Loads the Functions and records the epoch and the history defaults.
    async fn prepare(&self) -> Result<(), BrokerError> {
        timed(self.s.op_timeout * 3, async {
            let mut c = self.conn().await?;
            let _: String = redis::cmd("FUNCTION")
                .arg("LOAD")
                .arg("REPLACE")
                .arg(FUNCTIONS)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            let _: () = redis::pipe()
                .cmd("SET")
                .arg(self.keys.epoch())
                .arg(now_ms())
                .arg("NX")
                .ignore()
                .cmd("HSET")
                .arg(self.keys.config())
                .arg("history_ttl_ms")
                .arg(self.s.history.ttl_ms)
                .arg("history_size")
                .arg(self.s.history.size)
                .ignore()
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            // Repairs after an outage start after the newest id issued when we (re)joined, so a
            // node that has not yet seen an event on its channels still repairs the gap.
            let seq: Option<String> = c.get(self.keys.seq()).await.map_err(unavailable)?;
            if let Some(id) = seq.and_then(|s| s.parse::<EventId>().ok()) {
                let mut w = self.watermark.lock();
                if w.is_none() {
                    *w = Some(id);
                }
            }
            Ok(())
        })
        .await
    }

    fn redis_names(&self, channels: &[Arc<str>]) -> (Vec<String>, Vec<String>) {
        let mut exact = Vec::new();
        let mut patterns = Vec::new();
        for c in channels {
            if c.contains('*') {
                patterns.push(self.keys.pubsub(c));
            } else {
                exact.push(self.keys.pubsub(c));
            }
        }
        (exact, patterns)
    }

    /// The pub/sub loop: connect, subscribe to everything the hub needs, repair the gap since
    /// the last event seen, then deliver; on any failure or a missing canary, start over.
    async fn subscriber(
        self: Arc<Self>,
        mut cmds: mpsc::UnboundedReceiver<SubCmd>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(100);
        let mut first = true;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let session = self.clone().subscriber_session(&mut cmds, &mut shutdown, first).await;
            if self.ready.swap(false, Ordering::AcqRel) {
                // It was up: a new outage starts the backoff from the bottom again.
                backoff = Duration::from_millis(100);
            }
            self.metrics.redis_up.set(0);
            match session {
                Ok(true) => return,
                Ok(false) => backoff = Duration::from_millis(100),
                Err(e) => warn!(error = %e, "redis pub/sub failed"),
            }
            first = false;
            // Markers sent on the old connection will not come back: fail their waiters now.
            self.syncs.lock().clear();
            self.metrics.redis_reconnects.inc();
            // Capped exponential backoff with jitter, so a cluster does not reconnect in step.
            let jitter = Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1));
            let wait = backoff + jitter;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            // Refuse listens while down instead of letting them wait.
            let until = tokio::time::Instant::now() + wait;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    _ = shutdown.changed() => return,
                    cmd = cmds.recv() => match cmd {
                        None => return,
                        Some(SubCmd::Listen(_, tx)) => { let _ = tx.send(Err(unavailable("redis pub/sub is reconnecting"))); }
                        Some(SubCmd::Unlisten(_)) => {}
                    },
                }
            }
        }
    }

    /// One pub/sub connection's life. Ok(true): shut down; Ok(false): reconnect now.
    async fn subscriber_session(
        self: Arc<Self>,
        cmds: &mut mpsc::UnboundedReceiver<SubCmd>,
        shutdown: &mut watch::Receiver<bool>,
        first: bool,
    ) -> Result<bool, BrokerError> {
        if !first {
            // A Redis that restarted without persistence lost the Functions, the epoch and the
            // history defaults: put them back before anyone publishes.
            self.prepare().await?;
        }
        let pubsub = timed(self.s.op_timeout, async {
            self.client.get_async_pubsub().await.map_err(unavailable)
        })
        .await?;
        let (mut sink, mut stream) = pubsub.split();
        let control = self.keys.control();
        let canary = self.keys.canary(&self.s.node_id);
        timed(self.s.op_timeout, async {
            sink.subscribe(&[control.as_str(), canary.as_str()])
                .await
                .map_err(unavailable)
        })
        .await?;
        let (exact, patterns) = self.redis_names(&self.hub.interests());
        for chunk in exact.chunks(512) {
            timed(self.s.op_timeout * 4, async {
                sink.subscribe(chunk).await.map_err(unavailable)
            })
            .await?;
        }
        for chunk in patterns.chunks(512) {
            timed(self.s.op_timeout * 4, async {
                sink.psubscribe(chunk).await.map_err(unavailable)
            })
            .await?;
        }
        // What this connection is subscribed to: a `listen` for one of these is answered at
        // once (its SUBSCRIBE was confirmed before this task got to the listen).
        let mut listening: HashSet<Arc<str>> = self.hub.interests().into_iter().collect();
        if !first {
            // Live messages queue up in the stream meanwhile; sockets drop what they already have.
            self.repair().await?;
            info!("redis pub/sub back; gap repaired");
        }
        self.ready.store(true, Ordering::Release);
        self.metrics.redis_up.set(1);
        let canary_every = Duration::from_millis(self.s.canary_interval_ms.max(10));
        let mut canary_tick = tokio::time::interval(canary_every);
        canary_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_canary = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return Ok(true),
                msg = stream.next() => {
                    let Some(msg) = msg else { return Err(unavailable("pub/sub connection closed")) };
                    if msg.get_channel_name() == canary {
                        last_canary = tokio::time::Instant::now();
                        let sync = msg.get_payload_bytes().strip_prefix(b"sync:");
                        if let Some(n) = sync.and_then(|n| std::str::from_utf8(n).ok()?.parse::<u64>().ok())
                            && let Some(tx) = self.syncs.lock().remove(&n)
                        {
                            let _ = tx.send(());
                        }
                    } else if msg.get_channel_name() == control {
                        self.on_control(msg.get_payload_bytes());
                    } else {
                        self.on_message(&msg);
                    }
                }
                cmd = cmds.recv() => match cmd {
                    None => return Ok(true),
                    Some(SubCmd::Listen(channels, tx)) => {
                        // A reconnect storm brings thousands of listens at once: subscribe every
                        // listen already waiting in one command instead of one round trip each.
                        let mut all = channels;
                        let mut waiters = vec![tx];
                        let mut deferred = None;
                        while all.len() < 4096 {
                            match cmds.try_recv() {
                                Ok(SubCmd::Listen(more, t)) => {
                                    all.extend(more);
                                    waiters.push(t);
                                }
                                Ok(other) => {
                                    deferred = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        all.retain(|c| !listening.contains(c));
                        all.sort();
                        all.dedup();
                        let (exact, patterns) = self.redis_names(&all);
                        let r = timed(self.s.op_timeout * 2, async {
                            if !exact.is_empty() { sink.subscribe(&exact).await.map_err(unavailable)?; }
                            if !patterns.is_empty() { sink.psubscribe(&patterns).await.map_err(unavailable)?; }
                            Ok(())
                        }).await;
                        let failed = r.is_err();
                        for t in waiters {
                            let _ = t.send(r.clone());
                        }
                        if failed {
                            return Err(unavailable("subscribe failed"));
                        }
                        listening.extend(all);
                        if let Some(SubCmd::Unlisten(channels)) = deferred {
                            self.unlisten_now(&mut sink, channels, &mut listening).await?;
                        }
                    }
                    Some(SubCmd::Unlisten(channels)) => self.unlisten_now(&mut sink, channels, &mut listening).await?,
                },
                _ = canary_tick.tick() => {
                    if last_canary.elapsed() > canary_every * 3 + self.s.op_timeout {
                        warn!("canary missing on the pub/sub connection: reconnecting");
                        return Ok(false);
                    }
                    let me = self.clone();
                    let channel = canary.clone();
                    tokio::spawn(async move {
                        let r = timed(me.s.op_timeout, async {
                            let mut c = me.conn().await?;
                            let _: i64 = c.publish(&channel, "canary").await.map_err(unavailable)?;
                            Ok(())
                        })
                        .await;
                        if let Err(e) = r {
                            debug!(error = %e, "canary publish failed");
                        }
                    });
                }
            }
        }
    }

    async fn unlisten_now(
        &self,
        sink: &mut redis::aio::PubSubSink,
        channels: Vec<Arc<str>>,
        listening: &mut HashSet<Arc<str>>,
    ) -> Result<(), BrokerError> {
        // Commands run in order, so a channel re-subscribed since is still wanted.
        let gone: Vec<Arc<str>> = channels
            .into_iter()
            .filter(|c| !self.hub.has_interest(c) && listening.remove(c))
            .collect();
        let (exact, patterns) = self.redis_names(&gone);
        timed(self.s.op_timeout, async {
            if !exact.is_empty() {
                sink.unsubscribe(&exact).await.map_err(unavailable)?;
            }
            if !patterns.is_empty() {
                sink.punsubscribe(&patterns).await.map_err(unavailable)?;
            }
            Ok(())
        })
        .await
    }

    fn on_control(&self, payload: &[u8]) {
        match serde_json::from_slice::<Control>(payload) {
            Ok(Control::KickUser { user_id }) => {
                self.hub.close_user(&user_id, CloseCode::Kicked);
            }
            Ok(Control::KickConnection { connection_id }) => {
                if let Some(c) = self.hub.connection(&connection_id) {
                    c.close(CloseCode::Kicked);
                }
            }
            Ok(Control::Replace { connection_id, node }) => {
                if node == self.s.node_id
                    && let Some(c) = self.hub.connection(&connection_id)
                {
                    c.replace();
                }
            }
            Err(e) => debug!(error = %e, "ignored control message"),
        }
    }

    /// A frame from Redis: strip the routing header, read only what routing and dedup need,
    /// and hand the very same bytes to the hub.
    fn on_message(&self, msg: &redis::Msg) {
        let Some(channel) = msg.get_channel_name().strip_prefix(self.keys.prefix.as_str()) else {
            return;
        };
        let Some((frame, exclude)) = self.parse_frame(channel, msg.get_payload_bytes()) else {
            self.metrics.dropped_frames.inc();
            return;
        };
        if let Some(id) = frame.event_id {
            let mut w = self.watermark.lock();
            if w.is_none_or(|w| id > w) {
                *w = Some(id);
            }
        }
        let excluded: Vec<&str> = exclude.as_deref().map(|x| x.split(',').collect()).unwrap_or_default();
        if msg.from_pattern() {
            let Ok(pattern) = msg.get_pattern::<String>() else {
                return;
            };
            let Some(pattern) = pattern.strip_prefix(self.keys.prefix.as_str()) else {
                return;
            };
            self.hub.deliver_pattern(pattern, channel, &frame, &excluded);
        } else {
            self.hub.deliver_exact(channel, &frame, &excluded);
        }
    }

    fn parse_frame(&self, channel: &str, payload: &[u8]) -> Option<(OutFrame, Option<String>)> {
        let (exclude, body) = match payload.strip_prefix(b"#x:") {
            Some(rest) => {
                let nl = rest.iter().position(|b| *b == b'\n')?;
                (
                    Some(String::from_utf8(rest[..nl].to_vec()).ok()?),
                    &payload[3 + nl + 1..],
                )
            }
            None => (None, payload),
        };
        // Cow, not &str: JSON encoders may escape characters (cjson writes `/` as `\/`).
        #[derive(Deserialize)]
        struct Head<'a> {
            #[serde(rename = "type", borrow)]
            kind: Cow<'a, str>,
            #[serde(default)]
            event_id: Option<EventId>,
            #[serde(default, borrow)]
            channel: Option<Cow<'a, str>>,
            #[serde(default)]
            ts: Option<u64>,
            #[serde(default)]
            request_id: Option<serde_json::Value>,
            #[serde(default)]
            more: bool,
        }
        let head: Head<'_> = serde_json::from_slice(body).ok()?;
        let mut response = None;
        match head.kind.as_ref() {
            // An event must name the channel it travels on, so a frame can't be smuggled
            // onto another channel's subscribers.
            "event" if head.channel.as_deref() == Some(channel) => {}
            // Backend answers to requests, only to the one connection that asked.
            "response" if channel.starts_with("connection:") => {
                let key = head.request_id.as_ref().map(|v| v.to_string())?;
                response = Some(Arc::new(ResponseTag { key, more: head.more }));
            }
            _ => return None,
        }
        let text = Utf8Bytes::try_from(bytes::Bytes::copy_from_slice(body)).ok()?;
        let published_us = head.ts.map_or(0, |ms| ms * 1000);
        Some((
            OutFrame {
                text,
                event_id: head.event_id,
                published_us,
                response,
            },
            exclude,
        ))
    }

    /// Re-reads, after a pub/sub interruption, every event published since the watermark on
    /// the channels this node serves (by name, and those matching its patterns, found by
    /// scanning history keys) and delivers them in id order; sockets drop what they already
    /// have. The read stops at a snapshot `S` taken after resubscribing, so what comes live
    /// next is above it. Channels whose history cannot prove it holds every missed event get a
    /// `gap` frame on their sockets first.
    async fn repair(&self) -> Result<(), BrokerError> {
        let Some(after) = *self.watermark.lock() else {
            return Ok(());
        };
        let s: Option<String> = timed(self.s.op_timeout * PATIENT, async {
            let mut c = self.conn().await?;
            c.get(self.keys.seq()).await.map_err(unavailable)
        })
        .await?;
        let s = s.and_then(|v| v.parse::<EventId>().ok()).unwrap_or_default();
        let mut channels: Vec<Arc<str>> = Vec::new();
        for c in self.hub.interests() {
            if c.contains('*') {
                channels.extend(self.channels_matching(&c).await?);
            } else {
                channels.push(c);
            }
        }
        channels.sort();
        channels.dedup();
        let mut events: Vec<(Arc<str>, StoredEvent)> = Vec::new();
        let mut gaps: Vec<Arc<str>> = Vec::new();
        for ch in &channels {
            let mut cursor = after;
            loop {
                let query = HistoryQuery::After {
                    id: cursor,
                    limit: 512,
                    until: Some(s),
                };
                let page = timed(self.s.op_timeout * PATIENT, self.history_page(ch, query)).await?;
                if cursor == after && !page.complete {
                    gaps.push(ch.clone());
                }
                let n = page.events.len();
                if let Some(last) = page.events.last() {
                    cursor = last.id;
                }
                events.extend(page.events.into_iter().map(|e| (ch.clone(), e)));
                if n < 512 {
                    break;
                }
            }
        }
        if !gaps.is_empty() {
            let told = self.hub.send_gap(&gaps);
            warn!(
                channels = gaps.len(),
                sockets = told,
                "repair could not prove some channels complete"
            );
        }
        events.sort_by_key(|(_, e)| e.id);
        for (ch, e) in events {
            let excluded: Vec<&str> = e.exclude.as_deref().map(|x| x.split(',').collect()).unwrap_or_default();
            let frame = OutFrame {
                text: e.frame.clone(),
                event_id: Some(e.id),
                published_us: e.ts_ms * 1000,
                response: None,
            };
            let n = self.hub.deliver(&ch, &frame, &excluded);
            self.metrics.repaired_events.inc_by(n as u64);
        }
        // Everything up to the snapshot is now delivered or reported; a Redis that lost its
        // data issues ids from a lower point, and the next repair starts there.
        *self.watermark.lock() = Some(s);
        Ok(())
    }

    /// Channels with history (or a history record) that `pattern` matches. Our `*` matches any
    /// run of bytes, as Redis's glob does, and channel names hold no other glob character.
    async fn channels_matching(&self, pattern: &str) -> Result<Vec<Arc<str>>, BrokerError> {
        let mut found = Vec::new();
        for (kind, strip) in [
            (self.keys.history(pattern), self.keys.history("")),
            (self.keys.meta(pattern), self.keys.meta("")),
        ] {
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = timed(self.s.op_timeout * PATIENT, async {
                    let mut c = self.conn().await?;
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&kind)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await
                        .map_err(unavailable)
                })
                .await?;
                found.extend(
                    keys.iter()
                        .filter_map(|k| k.strip_prefix(strip.as_str()).map(Arc::from)),
                );
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(found)
    }

    /// Applies queued presence changes in one pipeline, and refreshes every local socket's
    /// keys plus the node registry on a node-wide tick.
    async fn presence_worker(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<PresenceCmd>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let refresh = Duration::from_millis((self.s.presence_ttl_ms / 3).max(50));
        let mut tick = tokio::time::interval(refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { return };
                    let mut batch = vec![cmd];
                    while batch.len() < 1000 {
                        match rx.try_recv() {
                            Ok(c) => batch.push(c),
                            Err(_) => break,
                        }
                    }
                    let mut leave = None;
                    let mut pipe = redis::pipe();
                    for cmd in batch {
                        match cmd {
                            PresenceCmd::Connected(c) => self.add_presence(&mut pipe, &c),
                            PresenceCmd::Disconnected { id, user_id, topics, park } => {
                                // Parked before the presence goes: `resume` relies on that order.
                                if park && self.s.session_ttl_ms > 0 {
                                    let v = serde_json::to_string(&ParkedValue { user_id: user_id.to_string(), topics }).unwrap_or_default();
                                    pipe.cmd("SET").arg(self.keys.session(&id)).arg(v).arg("PX").arg(self.s.session_ttl_ms).ignore();
                                }
                                pipe.cmd("DEL").arg(self.keys.presence_conn(&id)).ignore();
                                pipe.cmd("ZREM").arg(self.keys.presence_user(&user_id)).arg(&*id).ignore();
                            }
                            PresenceCmd::Leave(tx) => leave = Some(tx),
                        }
                    }
                    self.run_pipe(pipe).await;
                    if let Some(tx) = leave {
                        self.leave().await;
                        let _ = tx.send(());
                        return;
                    }
                }
                _ = tick.tick() => self.refresh_all().await,
                // The gateway sends `Leave` (via `shutdown()`) before this fires; stopping here
                // also covers a gateway dropped without a clean leave.
                _ = shutdown.changed() => return,
            }
        }
    }

    fn add_presence(&self, pipe: &mut redis::Pipeline, c: &Connection) {
        let ttl = self.s.presence_ttl_ms;
        let value = PresenceValue {
            user_id: c.user_id.to_string(),
            node: self.s.node_id.clone(),
            connected_at: c.connected_at_ms,
            channels: c.channels().iter().map(|s| s.to_string()).collect(),
        };
        let v = serde_json::to_string(&value).unwrap_or_default();
        let user_key = self.keys.presence_user(&c.user_id);
        pipe.cmd("SET")
            .arg(self.keys.presence_conn(&c.id))
            .arg(v)
            .arg("PX")
            .arg(ttl)
            .ignore();
        pipe.cmd("ZADD").arg(&user_key).arg(now_ms() + ttl).arg(&*c.id).ignore();
        pipe.cmd("PEXPIRE").arg(&user_key).arg(ttl).ignore();
    }

    async fn run_pipe(&self, pipe: redis::Pipeline) {
        let r = timed(self.s.op_timeout * 2, async {
            let mut c = self.conn().await?;
            let _: () = pipe.query_async(&mut c).await.map_err(unavailable)?;
            Ok(())
        })
        .await;
        if let Err(e) = r {
            self.metrics.broker_errors.with_label_values(&["presence"]).inc();
            debug!(error = %e, "presence update failed");
        }
    }

    async fn refresh_all(&self) {
        let ttl = self.s.presence_ttl_ms;
        for chunk in self.hub.connections().chunks(500) {
            let mut pipe = redis::pipe();
            for c in chunk {
                self.add_presence(&mut pipe, c);
            }
            self.run_pipe(pipe).await;
        }
        let stats = self.hub.stats();
        let mut pipe = redis::pipe();
        let node_key = self.keys.node(&self.s.node_id);
        pipe.cmd("ZADD")
            .arg(self.keys.nodes())
            .arg(now_ms() + ttl)
            .arg(&self.s.node_id)
            .ignore();
        pipe.cmd("HSET")
            .arg(&node_key)
            .arg("connections")
            .arg(stats.connections)
            .arg("subscriptions")
            .arg(stats.channels)
            .arg("started_at")
            .arg(self.started_at_ms)
            .arg("version")
            .arg(env!("CARGO_PKG_VERSION"))
            .ignore();
        pipe.cmd("PEXPIRE").arg(&node_key).arg(ttl).ignore();
        // The shared set dies with the last node too.
        pipe.cmd("PEXPIRE").arg(self.keys.nodes()).arg(ttl).ignore();
        // After a FLUSHALL the epoch comes back with the current time, so older ids replay
        // as not recovered.
        pipe.cmd("SET").arg(self.keys.epoch()).arg(now_ms()).arg("NX").ignore();
        self.run_pipe(pipe).await;
    }

    async fn leave(&self) {
        let mut pipe = redis::pipe();
        for c in self.hub.connections() {
            pipe.cmd("DEL").arg(self.keys.presence_conn(&c.id)).ignore();
            pipe.cmd("ZREM")
                .arg(self.keys.presence_user(&c.user_id))
                .arg(&*c.id)
                .ignore();
        }
        pipe.cmd("ZREM").arg(self.keys.nodes()).arg(&self.s.node_id).ignore();
        pipe.cmd("DEL").arg(self.keys.node(&self.s.node_id)).ignore();
        self.run_pipe(pipe).await;
    }

    async fn history_page(&self, channel: &str, query: HistoryQuery) -> Result<HistoryPage, BrokerError> {
        let mut c = self.conn().await?;
        match query {
            HistoryQuery::Last { n, until } => {
                let end = until.map_or_else(|| "+".to_string(), |u| u.to_string());
                let reply: StreamRangeReply = c
                    .xrevrange_count(self.keys.history(channel), end, "-", n)
                    .await
                    .map_err(unavailable)?;
                let mut events = stream_events(reply);
                events.reverse();
                Ok(HistoryPage { events, complete: true })
            }
            HistoryQuery::After { id, limit, until } => {
                type Reply = (
                    StreamRangeReply,
                    (Option<String>, Option<String>),
                    Option<u64>,
                    Option<String>,
                );
                let (reply, meta, epoch, seq): Reply = redis::pipe()
                    .cmd("XRANGE")
                    .arg(self.keys.history(channel))
                    .arg(format!("({id}"))
                    .arg(until.map_or_else(|| "+".to_string(), |u| u.to_string()))
                    .arg("COUNT")
                    .arg(limit)
                    .cmd("HMGET")
                    .arg(self.keys.meta(channel))
                    .arg("trimmed")
                    .arg("last")
                    .cmd("GET")
                    .arg(self.keys.epoch())
                    .cmd("GET")
                    .arg(self.keys.seq())
                    .query_async(&mut c)
                    .await
                    .map_err(unavailable)?;
                let events = stream_events(reply);
                let trimmed = meta.0.and_then(|s| s.parse::<EventId>().ok());
                let last = meta.1.and_then(|s| s.parse::<EventId>().ok());
                // An id newer than any this Redis issued comes from another Redis (or its lost
                // past): nothing here can vouch for what followed it.
                let issued = until.or_else(|| seq.and_then(|s| s.parse::<EventId>().ok()));
                let complete = self.s.history.size > 0
                    && issued.is_some_and(|last_issued| id <= last_issued)
                    && recoverable(
                        id,
                        epoch,
                        trimmed,
                        last,
                        events.is_empty(),
                        now_ms(),
                        self.s.history.ttl_ms,
                    );
                Ok(HistoryPage { events, complete })
            }
        }
    }
}

/// Whether every event after `after` on a channel is still in its history.
///
/// - the Redis data began after `after` (epoch newer, or missing after a FLUSHALL): no;
/// - trimming removed an id newer than `after`: no;
/// - the stream expired but the meta shows a newer last event: no;
/// - meta gone too: it outlives the stream by a TTL, so its absence proves no event for
///   2×TTL; only then is an older `after` unknowable.
fn recoverable(
    after: EventId,
    epoch_ms: Option<u64>,
    trimmed: Option<EventId>,
    last: Option<EventId>,
    stream_empty: bool,
    now_ms: u64,
    ttl_ms: u64,
) -> bool {
    let Some(epoch) = epoch_ms else { return false };
    if epoch > after.ms {
        return false;
    }
    if trimmed.is_some_and(|t| t > after) {
        return false;
    }
    match last {
        Some(l) => !(stream_empty && l > after),
        None => after.ms + 2 * ttl_ms >= now_ms,
    }
}

fn stream_events(reply: StreamRangeReply) -> Vec<StoredEvent> {
    reply
        .ids
        .into_iter()
        .filter_map(|e| {
            let id: EventId = e.id.parse().ok()?;
            let frame: Vec<u8> = e.get("f")?;
            let exclude: Option<String> = e.get("x");
            Some(StoredEvent {
                id,
                frame: Utf8Bytes::try_from(bytes::Bytes::from(frame)).ok()?,
                ts_ms: id.ms,
                exclude: exclude.map(|x| Arc::from(x.as_str())),
            })
        })
        .collect()
}

impl Broker for RedisBroker {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn publish(&self, req: PublishRequest) -> BoxFuture<'_, Result<EventId, BrokerError>> {
        let inner = &self.inner;
        Box::pin(timed(inner.s.op_timeout, async move {
            let mut c = inner.conn().await?;
            let id: String = redis::cmd("FCALL")
                .arg("wsgw_publish")
                .arg(2)
                .arg(inner.keys.seq())
                .arg(inner.keys.history(&req.channel))
                .arg(&req.channel)
                .arg(&req.event)
                .arg(req.data.get())
                .arg(inner.s.history.ttl_ms)
                .arg(inner.s.history.size)
                .arg(req.exclude.join(","))
                .query_async(&mut c)
                .await
                .map_err(|e| match e.kind() {
                    redis::ErrorKind::Server(_) => BrokerError::Internal(e.to_string()),
                    _ => unavailable(e),
                })?;
            id.parse()
                .map_err(|e: wsgw_protocol::EventIdError| BrokerError::Internal(e.to_string()))
        }))
    }

    fn history<'a>(&'a self, channel: &'a str, query: HistoryQuery) -> BoxFuture<'a, Result<HistoryPage, BrokerError>> {
        // Replays sit on the connect path: a slow read beats a `recovered:false`, so history
        // reads are patient where publishes fail fast.
        Box::pin(timed(
            self.inner.s.op_timeout * PATIENT,
            self.inner.history_page(channel, query),
        ))
    }

    fn listen<'a>(&'a self, channels: &'a [Arc<str>]) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            if channels.is_empty() {
                return Ok(());
            }
            if !self.inner.ready.load(Ordering::Acquire) {
                return Err(unavailable("redis pub/sub is not connected"));
            }
            let (tx, rx) = oneshot::channel();
            self.inner
                .sub_tx
                .send(SubCmd::Listen(channels.to_vec(), tx))
                .map_err(unavailable)?;
            match tokio::time::timeout(self.inner.s.op_timeout * 2, rx).await {
                Ok(Ok(r)) => r,
                _ => Err(unavailable("subscribe not confirmed in time")),
            }
        })
    }

    fn sync(&self) -> BoxFuture<'_, Result<EventId, BrokerError>> {
        let inner = &self.inner;
        Box::pin(async move {
            if !inner.ready.load(Ordering::Acquire) {
                return Err(unavailable("redis pub/sub is not connected"));
            }
            let n = inner.next_sync.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            inner.syncs.lock().insert(n, tx);
            let patient = inner.s.op_timeout * PATIENT;
            let r = async {
                // The marker is published after the snapshot is read, so it reaches our pub/sub
                // connection after every event up to the snapshot.
                let seq: Option<String> = timed(patient, async {
                    let mut c = inner.conn().await?;
                    let (seq, _): (Option<String>, i64) = redis::pipe()
                        .cmd("GET")
                        .arg(inner.keys.seq())
                        .cmd("PUBLISH")
                        .arg(inner.keys.canary(&inner.s.node_id))
                        .arg(format!("sync:{n}"))
                        .query_async(&mut c)
                        .await
                        .map_err(unavailable)?;
                    Ok(seq)
                })
                .await?;
                match tokio::time::timeout(patient, rx).await {
                    Ok(Ok(())) => Ok(seq.and_then(|v| v.parse::<EventId>().ok()).unwrap_or_default()),
                    _ => Err(unavailable("redis pub/sub did not catch up in time")),
                }
            }
            .await;
            inner.syncs.lock().remove(&n);
            r
        })
    }

    fn unlisten(&self, channels: &[Arc<str>]) {
        if !channels.is_empty() {
            let _ = self.inner.sub_tx.send(SubCmd::Unlisten(channels.to_vec()));
        }
    }

    fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    fn connected(&self, conn: &Arc<Connection>) {
        let _ = self.inner.presence_tx.send(PresenceCmd::Connected(conn.clone()));
    }

    fn disconnected(&self, conn: &Arc<Connection>, topics: Vec<String>, park: bool) {
        let _ = self.inner.presence_tx.send(PresenceCmd::Disconnected {
            id: conn.id.clone(),
            user_id: conn.user_id.clone(),
            topics,
            park,
        });
    }

    fn resume<'a>(&'a self, connection_id: &'a str, user_id: &'a str) -> BoxFuture<'a, Result<Resume, BrokerError>> {
        let inner = &self.inner;
        Box::pin(timed(inner.s.op_timeout * PATIENT, async move {
            if inner.hub.id_owned_by_other(connection_id, user_id) {
                return Ok(Resume::OwnedByOther);
            }
            // The node that saw the close parks the session from its presence worker, a moment
            // after the client got its close answer. It parks before it deletes the presence
            // key, and we read presence first: so "live for this user, nothing parked" means
            // the park may still be on its way; give it a short while rather than lose topics.
            let settle = tokio::time::Instant::now() + inner.s.op_timeout / 4;
            loop {
                let mut c = inner.conn().await?;
                let (live, parked): (Option<String>, Option<String>) = redis::pipe()
                    .cmd("GET")
                    .arg(inner.keys.presence_conn(connection_id))
                    .cmd("GET")
                    .arg(inner.keys.session(connection_id))
                    .query_async(&mut c)
                    .await
                    .map_err(unavailable)?;
                let live = live.and_then(|v| serde_json::from_str::<PresenceValue>(&v).ok());
                if live.as_ref().is_some_and(|l| l.user_id != user_id) {
                    return Ok(Resume::OwnedByOther);
                }
                return match parked.and_then(|v| serde_json::from_str::<ParkedValue>(&v).ok()) {
                    Some(p) if p.user_id == user_id => {
                        let _: i64 = c.del(inner.keys.session(connection_id)).await.map_err(unavailable)?;
                        Ok(Resume::Topics(p.topics))
                    }
                    Some(_) => Ok(Resume::OwnedByOther),
                    None if live.is_some() && tokio::time::Instant::now() < settle => {
                        // Give the pooled connection back while waiting: a storm of resumes
                        // must not starve the pool.
                        drop(c);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    // Still live on another node (a client back before its old socket was
                    // noticed dead): take the identity and topics over; that node closes it.
                    None => match live {
                        Some(l) => {
                            let payload = serde_json::to_string(&Control::Replace {
                                connection_id: connection_id.into(),
                                node: l.node.clone(),
                            })
                            .map_err(|e| BrokerError::Internal(e.to_string()))?;
                            let _: i64 = c.publish(inner.keys.control(), payload).await.map_err(unavailable)?;
                            let topics = l
                                .channels
                                .into_iter()
                                .filter(|ch| wsgw_protocol::classify(ch).is_explicit())
                                .collect();
                            Ok(Resume::Topics(topics))
                        }
                        None => Ok(Resume::Fresh),
                    },
                };
            }
        }))
    }

    fn presence<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Vec<PresenceEntry>, BrokerError>> {
        let inner = &self.inner;
        Box::pin(timed(inner.s.op_timeout, async move {
            let mut c = inner.conn().await?;
            let key = inner.keys.presence_user(user_id);
            let (_, ids): ((), Vec<String>) = redis::pipe()
                .cmd("ZREMRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(now_ms())
                .ignore()
                .cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut c)
                .await
                .map(|ids: (Vec<String>,)| ((), ids.0))
                .map_err(unavailable)?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let keys: Vec<String> = ids.iter().map(|id| inner.keys.presence_conn(id)).collect();
            let values: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            Ok(ids
                .into_iter()
                .zip(values)
                .filter_map(|(id, v)| {
                    let v: PresenceValue = serde_json::from_str(&v?).ok()?;
                    Some(PresenceEntry {
                        connection_id: id,
                        node: v.node,
                        connected_at: v.connected_at,
                    })
                })
                .collect())
        }))
    }

    fn cluster(&self) -> BoxFuture<'_, Result<ClusterStats, BrokerError>> {
        let inner = &self.inner;
        Box::pin(timed(inner.s.op_timeout, async move {
            let mut c = inner.conn().await?;
            let key = inner.keys.nodes();
            let (ids,): (Vec<String>,) = redis::pipe()
                .cmd("ZREMRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(now_ms())
                .ignore()
                .cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.cmd("HGET").arg(inner.keys.node(id)).arg("connections");
            }
            let counts: Vec<Option<usize>> = if ids.is_empty() {
                Vec::new()
            } else {
                pipe.query_async(&mut c).await.map_err(unavailable)?
            };
            let mut node_ids: Vec<String> = ids;
            // This node counts itself live even before its first registry refresh lands.
            let mut connections: usize = counts.into_iter().flatten().sum();
            if !node_ids.contains(&inner.s.node_id) {
                node_ids.push(inner.s.node_id.clone());
                connections += inner.hub.connection_count();
            }
            let set: HashSet<&String> = node_ids.iter().collect();
            Ok(ClusterStats {
                nodes: set.len(),
                connections,
                node_ids,
            })
        }))
    }

    fn kick_user<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<usize, BrokerError>> {
        Box::pin(async move {
            let known = self.presence(user_id).await?.len();
            self.inner.hub.close_user(user_id, CloseCode::Kicked);
            self.send_control(&Control::KickUser {
                user_id: user_id.to_string(),
            })
            .await?;
            Ok(known)
        })
    }

    fn kick_connection<'a>(&'a self, connection_id: &'a str) -> BoxFuture<'a, Result<bool, BrokerError>> {
        Box::pin(async move {
            let local = self
                .inner
                .hub
                .connection(connection_id)
                .is_some_and(|c| c.close(CloseCode::Kicked));
            let known = {
                let inner = &self.inner;
                timed(inner.s.op_timeout, async {
                    let mut c = inner.conn().await?;
                    let n: i64 = c
                        .exists(inner.keys.presence_conn(connection_id))
                        .await
                        .map_err(unavailable)?;
                    Ok(n > 0)
                })
                .await?
            };
            self.send_control(&Control::KickConnection {
                connection_id: connection_id.to_string(),
            })
            .await?;
            Ok(local || known)
        })
    }

    fn request(&self, req: InboundRequest) -> BoxFuture<'_, Result<(), BrokerError>> {
        let inner = &self.inner;
        Box::pin(timed(inner.s.op_timeout, async move {
            let mut c = inner.conn().await?;
            let _: String = redis::cmd("XADD")
                .arg(inner.keys.inbound())
                .arg("MAXLEN")
                .arg("~")
                .arg(inner.s.inbound_maxlen)
                .arg("*")
                .arg("connection_id")
                .arg(&req.connection_id)
                .arg("user_id")
                .arg(&req.user_id)
                .arg("node")
                .arg(&req.node)
                .arg("request_id")
                .arg(&req.request_id)
                .arg("action")
                .arg(&req.action)
                .arg("data")
                .arg(&req.data)
                .arg("claims")
                .arg(&req.claims)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            Ok(())
        }))
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            if self.inner.presence_tx.send(PresenceCmd::Leave(tx)).is_ok() {
                let _ = tokio::time::timeout(self.inner.s.op_timeout * 3, rx).await;
            }
        })
    }
}

impl RedisBroker {
    async fn send_control(&self, msg: &Control) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let payload = serde_json::to_string(msg).map_err(|e| BrokerError::Internal(e.to_string()))?;
        timed(inner.s.op_timeout, async {
            let mut c = inner.conn().await?;
            let _: i64 = c.publish(inner.keys.control(), payload).await.map_err(unavailable)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_rules() {
        let l = EventId::new(1_000_000, 0);
        let now = 1_000_500;
        let ttl = 1000;
        assert!(recoverable(
            l,
            Some(999_000),
            None,
            Some(EventId::new(1_000_100, 0)),
            false,
            now,
            ttl
        ));
        assert!(
            !recoverable(l, None, None, None, true, now, ttl),
            "epoch gone: data was lost"
        );
        assert!(
            !recoverable(l, Some(1_000_001), None, None, true, now, ttl),
            "redis data began after the id"
        );
        assert!(
            !recoverable(l, Some(1), Some(EventId::new(1_000_010, 0)), None, false, now, ttl),
            "trimmed past it"
        );
        assert!(
            recoverable(l, Some(1), Some(EventId::new(999_999, 0)), None, false, now, ttl),
            "trimmed before it"
        );
        assert!(
            !recoverable(l, Some(1), None, Some(EventId::new(1_000_200, 0)), true, now, ttl),
            "expired after it"
        );
        assert!(
            recoverable(l, Some(1), None, None, true, now, ttl),
            "no meta, recent id: nothing happened"
        );
        assert!(
            !recoverable(l, Some(1), None, None, true, 1_000_000 + 5 * ttl, ttl),
            "no meta, old id: unknowable"
        );
    }
}
