//! broker/redis/: the cluster broker. Durable publishes go through the `wsgw_publish` Redis
//! Function (ids, history stream, pub/sub in one atomic call); one pub/sub connection per node
//! follows local interest; presence and the node registry are TTL keys refreshed in pipelined
//! batches by one task. After any pub/sub interruption the node resubscribes and repairs the
//! gap from history. Never blocks a socket: everything here talks to Redis, then to the hub.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
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
use crate::time::{mono_ms, now_ms};

mod bans;
mod canary;
mod channel_presence;
mod clock;
mod cluster_functions;
mod cluster_link;
mod control;
mod head;
mod header;
mod held;
mod keys;
mod link;
mod pace;
mod pool;
mod presence;
mod pubsub;
mod repair;
mod requests;
mod resume;
mod sharded;
mod sharded_listen;
mod sharded_repair;
mod sharded_sync;
mod streams;
mod sub;
mod sub_conn;

use bans::BanCheck;
pub use cluster_functions::{PrimaryOutcome, PrimaryReport, sync_functions};
use keys::Keys;
use link::Link;
pub use link::{RedisTarget, RedisTls, SentinelSettings};
use presence::PresenceCmd;
use pubsub::SubCmd;

/// How many times the command timeout reads on the connect path (history, resume) and pool
/// waits may take: under a reconnect storm they queue behind each other, and failing them would
/// turn a slow reconnect into lost events.
const PATIENT: u32 = 10;

/// The Redis Function library, loaded with `FUNCTION LOAD REPLACE` at start-up.
pub const FUNCTIONS: &str = include_str!("wsgw.lua");

/// How a node talks to Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Where the primary is: a URL, or Sentinels that name it.
    pub target: RedisTarget,
    /// TLS material for `rediss://` (or Sentinels with TLS).
    pub tls: RedisTls,
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
    /// Channel patterns whose presence is tracked (`WSGW_PRESENCE_CHANNELS`).
    pub presence_channels: Vec<String>,
    /// How often the node publishes its canary on its own control channel.
    pub canary_interval_ms: u64,
    /// How long the pub/sub reader gathers events after the first before writing them out
    /// (`WSGW_WRITE_DELAY_MS`); zero: at once. One primary or Sentinel only: the config
    /// refuses it with a Redis Cluster, whose reader does not wait.
    pub write_delay: Duration,
    /// The write pace (`WSGW_WRITE_PACE_MS`, pace.rs): a channel with large fan-outs at more
    /// than 1.5 messages per pace is written at most once per pace; zero: never waits. Like
    /// `write_delay`, the Redis Cluster reader does not wait.
    pub write_pace: Duration,
    /// `WSGW_WRITE_PACE_MIN_SOCKETS`: how many sockets a message must reach to count as a
    /// large fan-out of its channel.
    pub write_pace_min_sockets: usize,
    /// Longest a single Redis command may take before the caller gets `unavailable`.
    pub op_timeout: Duration,
    /// Approximate length the request stream is trimmed to.
    pub inbound_maxlen: usize,
}

struct Inner {
    s: RedisSettings,
    keys: Keys,
    /// Redis Cluster mode: the cluster connection (commands and sharded pub/sub).
    cluster: Option<cluster_link::ClusterLink>,
    /// Redis Cluster mode: per id-shard, the highest durable id received from its sharded
    /// pub/sub, and the shard's primary (its node id) when the node last had it all.
    shards: Mutex<sharded::ShardMarks>,
    /// The primary's client and pool; `None` until it is found, replaced on a failover.
    link: parking_lot::RwLock<Option<Arc<Link>>>,
    /// The primary's `host:port` as the Sentinels last named it (a change is a failover).
    primary_addr: Mutex<Option<String>>,
    hub: Arc<Hub>,
    metrics: Metrics,
    sub_tx: mpsc::UnboundedSender<SubCmd>,
    presence_tx: mpsc::UnboundedSender<PresenceCmd>,
    /// Connects waiting for their ban check (see `bans`).
    ban_tx: mpsc::UnboundedSender<BanCheck>,
    ready: AtomicBool,
    /// The primary moved and the next repair has not yet fenced it (see `repair`).
    failover_pending: AtomicBool,
    /// Highest durable id received from pub/sub: a gap after an outage starts right after it.
    watermark: Mutex<Option<EventId>>,
    /// `sync` calls waiting for their marker to come back on the pub/sub connection, with the
    /// id-shard each one syncs on a Redis Cluster (`None` on a single primary).
    syncs: Mutex<SyncWaiters>,
    next_sync: AtomicU64,
    started_at_ms: u64,
    /// Redis's clock minus this node's, in ms (clock.rs).
    clock_offset_ms: AtomicI64,
}

/// The Redis-backed broker. Cheap to share; its tasks stop when `shutdown` fires.
pub struct RedisBroker {
    inner: Arc<Inner>,
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// Waiting `sync` calls by marker number: the id-shard each syncs (`None` on a single
/// primary) and where to say its marker came back.
type SyncWaiters = HashMap<u64, (Option<u16>, oneshot::Sender<()>)>;

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
        link::warn_settings(&s.target, &s.tls);
        let (sub_tx, sub_rx) = mpsc::unbounded_channel();
        let (presence_tx, presence_rx) = mpsc::unbounded_channel();
        let (ban_tx, ban_rx) = mpsc::unbounded_channel();
        let cluster = match &s.target {
            RedisTarget::Cluster(seeds) => {
                let mut attempt = 0u32;
                loop {
                    match cluster_link::connect(seeds, &s.tls, s.op_timeout).await {
                        Ok(link) => break Some(link),
                        Err(e) if attempt < 20 => {
                            attempt += 1;
                            warn!(error = %e, attempt, "redis cluster not reachable yet");
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            _ => None,
        };
        let inner = Arc::new(Inner {
            keys: Keys::new(&s.prefix, cluster.is_some()),
            cluster,
            shards: Mutex::new(sharded::ShardMarks::default()),
            s,
            link: parking_lot::RwLock::new(None),
            primary_addr: Mutex::new(None),
            hub,
            metrics,
            sub_tx,
            presence_tx,
            ban_tx,
            ready: AtomicBool::new(false),
            failover_pending: AtomicBool::new(false),
            watermark: Mutex::new(None),
            syncs: Mutex::new(HashMap::new()),
            next_sync: AtomicU64::new(0),
            started_at_ms: now_ms(),
            clock_offset_ms: AtomicI64::new(0),
        });
        let mut attempt = 0u32;
        loop {
            let found = match inner.relink().await {
                Ok(_) => inner.prepare().await,
                Err(e) => Err(e),
            };
            match found {
                Ok(()) => break,
                Err(e) if attempt < 20 => {
                    attempt += 1;
                    warn!(error = %e, attempt, "redis not reachable yet");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        }
        if inner.cluster.is_some() {
            tokio::spawn(inner.clone().sharded_subscriber(sub_rx, shutdown.clone()));
            tokio::spawn(inner.clone().watch_functions(shutdown.clone()));
        } else {
            tokio::spawn(inner.clone().subscriber(sub_rx, shutdown.clone()));
        }
        tokio::spawn(inner.clone().watch_sentinels(shutdown.clone()));
        tokio::spawn(inner.clone().ban_checker(ban_rx, shutdown.clone()));
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
    async fn conn(&self) -> Result<cluster_link::Conn, BrokerError> {
        if let Some(c) = &self.cluster {
            return Ok(cluster_link::Conn::Cluster(c.conn.clone()));
        }
        let pool = self.link()?.pool.clone();
        pool.get()
            .await
            .map(|c| cluster_link::Conn::Pooled(pool::Pooled(c)))
            .map_err(unavailable)
    }

    /// Loads the Functions and records the epoch and the history defaults.
    async fn prepare(&self) -> Result<(), BrokerError> {
        self.measure_redis_clock().await;
        if self.cluster.is_some() {
            return self.prepare_cluster().await;
        }
        timed(self.s.op_timeout * 3, async {
            let mut c = self.conn().await?;
            let _: String = redis::cmd("FUNCTION")
                .arg("LOAD")
                .arg("REPLACE")
                .arg(FUNCTIONS)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            // Repairs after an outage start after the newest id issued when we (re)joined, so a
            // node that has not yet seen an event on its channels still repairs the gap. A Redis
            // that has issued none yet starts its sequence at `<epoch>-0` (epoch_cmd), below
            // every id it will issue: without a newest id, a first outage before the first event
            // seen here would repair nothing, and an id before the epoch would prove nothing
            // complete.
            let (seq,): (Option<String>,) = redis::pipe()
                .add_command(self.record_epoch(None))
                .ignore()
                .cmd("HSET")
                .arg(self.keys.config(None))
                .arg("history_ttl_ms")
                .arg(self.s.history.ttl_ms)
                .arg("history_size")
                .arg(self.s.history.size)
                .ignore()
                .cmd("GET")
                .arg(self.keys.seq(None))
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
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
}

impl Broker for RedisBroker {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn publish(&self, req: PublishRequest) -> BoxFuture<'_, Result<EventId, BrokerError>> {
        Box::pin(self.inner.publish(req))
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
        Box::pin(self.inner.listen(channels))
    }

    fn shard_of(&self, channel: &str) -> Option<u16> {
        self.inner.keys.shard_of(channel)
    }

    fn sync<'a>(&'a self, shards: &'a [u16]) -> BoxFuture<'a, Result<Vec<EventId>, BrokerError>> {
        Box::pin(async move {
            if self.inner.cluster.is_some() {
                self.inner.sync_shards(shards).await
            } else {
                Ok(vec![self.inner.sync().await?])
            }
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
        // The channels now, not when the presence task gets to it (`Tracker::update_to`).
        let tracked = &self.inner.s.presence_channels;
        let channels = if tracked.is_empty() {
            Vec::new()
        } else {
            conn.channels()
        };
        let _ = self
            .inner
            .presence_tx
            .send(PresenceCmd::Connected(conn.clone(), channels));
    }

    fn disconnected(&self, conn: &Arc<Connection>, topics: Vec<String>, park: bool) {
        let _ = self.inner.presence_tx.send(PresenceCmd::Disconnected {
            key: conn.key(),
            id: conn.id.clone(),
            user_id: conn.user_id.clone(),
            topics,
            park,
        });
    }

    fn resume<'a>(&'a self, connection_id: &'a str, user_id: &'a str) -> BoxFuture<'a, Result<Resume, BrokerError>> {
        Box::pin(self.inner.resume(connection_id, user_id))
    }

    fn presence<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Vec<PresenceEntry>, BrokerError>> {
        Box::pin(self.inner.presence(user_id))
    }

    fn channel_presence<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Vec<wsgw_protocol::PresenceClient>, BrokerError>> {
        Box::pin(self.inner.channel_presence(channel))
    }

    fn cluster(&self) -> BoxFuture<'_, Result<ClusterStats, BrokerError>> {
        Box::pin(self.inner.cluster())
    }

    fn kick_user<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<usize, BrokerError>> {
        Box::pin(self.inner.kick_user(user_id))
    }

    fn kick_connection<'a>(&'a self, connection_id: &'a str) -> BoxFuture<'a, Result<bool, BrokerError>> {
        Box::pin(self.inner.kick_connection(connection_id))
    }

    fn ban<'a>(&'a self, user_id: &'a str, ttl_s: u64) -> BoxFuture<'a, Result<usize, BrokerError>> {
        Box::pin(self.inner.ban(user_id, ttl_s))
    }

    fn unban<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<bool, BrokerError>> {
        Box::pin(self.inner.unban(user_id))
    }

    fn is_banned<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<bool, BrokerError>> {
        Box::pin(self.inner.is_banned(user_id))
    }

    fn request(&self, req: InboundRequest) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(self.inner.request(req))
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
