//! broker/redis/: the cluster broker. Durable publishes go through the `wsgw_publish` Redis
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

mod channel_presence;
mod control;
mod keys;
mod presence;
mod pubsub;
mod repair;
mod requests;
mod resume;
mod streams;

use keys::Keys;
use presence::PresenceCmd;
use pubsub::SubCmd;

/// How many times the command timeout reads on the connect path (history, resume) and pool
/// waits may take: under a reconnect storm they queue behind each other, and failing them would
/// turn a slow reconnect into lost events.
const PATIENT: u32 = 10;

/// The Redis Function library, loaded with `FUNCTION LOAD REPLACE` at start-up.
pub const FUNCTIONS: &str = include_str!("wsgw.lua");

/// TLS material for a `rediss://` URL.
#[derive(Debug, Clone, Default)]
pub struct RedisTls {
    /// PEM file of the CA that signs the server's certificate (otherwise the system's roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate, for mutual TLS.
    pub client_cert_file: Option<std::path::PathBuf>,
    /// PEM key of the client certificate.
    pub client_key_file: Option<std::path::PathBuf>,
    /// Accept any server certificate (tests only; logged as a warning).
    pub insecure: bool,
}

/// The Redis client for `url`: plain, or TLS with the given material. Error messages name the
/// setting and never the URL (it may carry a password).
fn redis_client(url: &str, tls: &RedisTls) -> Result<redis::Client, BrokerError> {
    use redis::IntoConnectionInfo;
    let bad_url =
        |e: redis::RedisError| BrokerError::Internal(format!("WSGW_REDIS_URL is not a usable Redis URL: {e}"));
    let is_tls = url.starts_with("rediss://");
    if !is_tls {
        if tls.ca_file.is_some() || tls.client_cert_file.is_some() || tls.insecure {
            warn!("Redis TLS settings are set but WSGW_REDIS_URL is not rediss://: they are ignored");
        }
        return redis::Client::open(url).map_err(bad_url);
    }
    // rustls needs a process-wide crypto provider; ring is the one the gateway builds with.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let info = if tls.insecure && !url.contains('#') {
        warn!(
            "WSGW_REDIS_TLS_INSECURE is set: the Redis server's certificate is not verified (insecure; for tests only)"
        );
        format!("{url}#insecure").into_connection_info()
    } else {
        url.into_connection_info()
    }
    .map_err(bad_url)?;
    let read = |path: &std::path::Path, var: &str| {
        std::fs::read(path).map_err(|e| BrokerError::Internal(format!("{var} {}: {e}", path.display())))
    };
    let root_cert = tls
        .ca_file
        .as_deref()
        .map(|p| read(p, "WSGW_REDIS_CA_FILE"))
        .transpose()?;
    let client_tls = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert, "WSGW_REDIS_CLIENT_CERT_FILE")?,
            client_key: read(key, "WSGW_REDIS_CLIENT_KEY_FILE")?,
        }),
        (None, None) => None,
        _ => {
            return Err(BrokerError::Internal(
                "WSGW_REDIS_CLIENT_CERT_FILE and WSGW_REDIS_CLIENT_KEY_FILE must be set together".into(),
            ));
        }
    };
    if root_cert.is_none() && client_tls.is_none() {
        return redis::Client::open(info).map_err(bad_url);
    }
    redis::Client::build_with_tls(info, redis::TlsCertificates { client_tls, root_cert })
        .map_err(|e| BrokerError::Internal(format!("Redis TLS certificates: {e}")))
}

/// How a node talks to Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://…` or `rediss://…` URL (user and password included, if any).
    pub url: String,
    /// TLS material for a `rediss://` URL.
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
    /// Longest a single Redis command may take before the caller gets `unavailable`.
    pub op_timeout: Duration,
    /// Approximate length the request stream is trimmed to.
    pub inbound_maxlen: usize,
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
        let client = redis_client(&s.url, &s.tls)?;
        // The pool dials with the same connection info, TLS material included.
        let manager = deadpool_redis::Manager::new(client.get_connection_info().clone())
            .map_err(|e| BrokerError::Internal(format!("WSGW_REDIS_URL: {e}")))?;
        let pool = Pool::builder(manager)
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

    fn sync(&self) -> BoxFuture<'_, Result<EventId, BrokerError>> {
        Box::pin(self.inner.sync())
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
