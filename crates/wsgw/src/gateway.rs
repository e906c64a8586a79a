//! gateway.rs: one node's shared state and its life: start on a listener, the node-wide tick
//! (heartbeats, token expiry, history expiry), and the graceful drain. The binary passes a
//! signal as the shutdown future; tests pass one they control.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};
use wsgw_protocol::{CloseCode, ErrorCode, ServerFrame};

use crate::auth::{AuthConfig, AuthSetupError, Authenticator, read_public_key_file};
use crate::broker::memory::HistoryLimits;
use crate::broker::redis::RedisSettings;
use crate::broker::{Broker, BrokerError, MemoryBroker, RedisBroker};
use crate::config::Config;
use crate::hub::{Hub, OutFrame};
use crate::metrics::Metrics;
use crate::time::now_ms;

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// JWT settings are unusable.
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    /// The configuration is not servable (e.g. no JWT key outside dev mode).
    #[error("{0}")]
    Config(String),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The broker could not be reached or prepared.
    #[error("broker: {0}")]
    Broker(#[from] BrokerError),
}

/// Everything a node's sessions and API handlers share.
pub struct Gateway {
    /// Effective configuration.
    pub config: Config,
    /// This node's id.
    pub node_id: String,
    /// Local sockets and subscriptions.
    pub hub: Arc<Hub>,
    /// Where events travel.
    pub broker: Arc<dyn Broker>,
    memory: Option<Arc<MemoryBroker>>,
    /// Stops the broker's background tasks once the node has drained.
    stop: watch::Sender<bool>,
    /// Token verification.
    pub auth: Authenticator,
    /// Metric handles.
    pub metrics: Metrics,
    /// Connection slots taken (see `session::Slot`).
    pub slots: AtomicUsize,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub proxies: crate::proxy::TrustedProxies,
    /// Sockets per client address (only tracked when a per-address cap is set).
    pub per_ip: parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    draining: AtomicBool,
    /// Start time, ms since the epoch.
    pub started_at_ms: u64,
    /// `--dev`: the printed token, also filled into the demo page.
    pub dev_token: Option<String>,
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "wsgw".into());
    format!("{host}-{}", std::process::id())
}

impl Gateway {
    /// Builds a node from its configuration (memory broker unless a Redis URL is set; with
    /// one, connects, loads the Redis Functions and waits for the pub/sub loop).
    pub async fn new(config: Config) -> Result<Arc<Self>, StartError> {
        if config.jwt_secret.is_none() && config.jwt_public_key_file.is_none() {
            return Err(StartError::Config(
                "no JWT key configured: set WSGW_JWT_SECRET or WSGW_JWT_PUBLIC_KEY_FILE (or run `wsgw --dev`)".into(),
            ));
        }
        let public_key_pem = match &config.jwt_public_key_file {
            Some(path) => Some(read_public_key_file(path)?),
            None => None,
        };
        let auth = Authenticator::new(&AuthConfig {
            secret: config.jwt_secret.clone(),
            public_key_pem,
            audience: config.jwt_audience.clone(),
            issuer: config.jwt_issuer.clone(),
            leeway_s: config.jwt_leeway_s,
            require_exp: config.jwt_require_exp,
        })?;
        let node_id = if config.node_id.is_empty() {
            default_node_id()
        } else {
            config.node_id.clone()
        };
        let metrics = Metrics::new();
        let hub = Arc::new(Hub::new(node_id.clone(), metrics.clone()));
        let limits = HistoryLimits {
            size: config.history_size,
            ttl_ms: config.history_ttl_ms,
        };
        let (stop, stop_rx) = watch::channel(false);
        let (broker, memory): (Arc<dyn Broker>, Option<Arc<MemoryBroker>>) = match &config.redis_url {
            None => {
                let m = Arc::new(MemoryBroker::new(hub.clone(), limits, config.session_ttl_ms));
                (m.clone(), Some(m))
            }
            Some(url) => {
                let settings = RedisSettings {
                    url: url.clone(),
                    prefix: config.redis_prefix.clone(),
                    node_id: node_id.clone(),
                    history: limits,
                    session_ttl_ms: config.session_ttl_ms,
                    presence_ttl_ms: config.effective_presence_ttl_ms(),
                    canary_interval_ms: config.canary_interval_ms,
                    op_timeout: Duration::from_millis(config.redis_timeout_ms),
                    inbound_maxlen: config.inbound_maxlen,
                };
                (
                    RedisBroker::start(settings, hub.clone(), metrics.clone(), stop_rx).await?,
                    None,
                )
            }
        };
        let proxies = crate::proxy::TrustedProxies::new(&config.trusted_proxies);
        // `--dev` hands out one permissive token (printed, and filled into the demo page).
        let dev_token = match (&config.jwt_secret, config.dev) {
            (Some(secret), true) => {
                let exp = now_ms() / 1000 + 24 * 3600;
                Some(crate::auth::sign_hs256(secret, "dev-user", &["*"], &["*"], Some(exp)))
            }
            _ => None,
        };
        Ok(Arc::new(Self {
            config,
            node_id,
            hub,
            broker,
            memory,
            stop,
            auth,
            metrics,
            slots: AtomicUsize::new(0),
            proxies,
            per_ip: parking_lot::Mutex::new(std::collections::HashMap::new()),
            draining: AtomicBool::new(false),
            started_at_ms: now_ms(),
            dev_token,
        }))
    }

    /// True once shutdown has begun: `/ready` fails and new sockets are refused with 1012.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether the node should receive traffic.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.broker.is_ready()
    }
}

/// Serves `/ws`, the API, `/health`, `/ready` and `/metrics` on `listener` until `shutdown`
/// resolves, then drains: refuses new sockets, closes open ones with 1012 in batches over
/// `drain_ms`, and returns once they are gone.
pub async fn serve(
    listener: TcpListener,
    gw: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let ticker = tokio::spawn(tick(gw.clone(), stop_rx));
    let app = crate::api::router(gw.clone());
    let listener = listener.tap_io(|tcp| {
        // Small frames must not wait for Nagle: batching is done by the writer.
        let _ = tcp.set_nodelay(true);
    });
    let gw_signal = gw.clone();
    // Sockets outlive axum's connection tracking once upgraded, so drain them ourselves. Axum
    // is told to stop only after the drain: until then it keeps accepting, so `/ready` answers
    // 503 and new sockets are refused with 1012 instead of finding the port closed.
    let signal = async move {
        shutdown.await;
        info!("shutdown requested: draining");
        gw_signal.draining.store(true, Ordering::Release);
        drain(&gw_signal).await;
    };
    let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(signal)
        .await;
    let _ = stop_tx.send(true);
    let _ = ticker.await;
    // Sessions have ended: remove what is left of this node's presence, then stop the broker.
    gw.broker.shutdown().await;
    let _ = gw.stop.send(true);
    served?;
    info!("stopped");
    Ok(())
}

async fn drain(gw: &Gateway) {
    let conns = gw.hub.connections();
    let steps = 10usize;
    let pause = Duration::from_millis(gw.config.drain_ms / steps as u64);
    let chunk = conns.len().div_ceil(steps).max(1);
    info!(
        connections = conns.len(),
        drain_ms = gw.config.drain_ms,
        "closing sockets with 1012"
    );
    for part in conns.chunks(chunk) {
        for c in part {
            c.close(CloseCode::Restart);
        }
        tokio::time::sleep(pause).await;
    }
    // Sockets that connected during the drain, then the wait for every session to end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while gw.slots.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
        for c in gw.hub.connections() {
            c.close(CloseCode::Restart);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = gw.slots.load(Ordering::Acquire);
    if left > 0 {
        warn!(left, "sessions still open after the drain");
    }
}

/// The node-wide tick: one timer for every socket's heartbeat and token expiry, rather than a
/// timer per socket.
async fn tick(gw: Arc<Gateway>, mut stop: watch::Receiver<bool>) {
    let interval = gw.config.heartbeat_interval_ms.max(1);
    let period = Duration::from_millis((interval / 4).clamp(20, 1000));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_ping = now_ms() + interval;
    let mut next_expire = now_ms();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let now = now_ms();
        let ping = if now >= next_ping {
            next_ping = now + interval;
            Some(OutFrame::control(ServerFrame::Ping { ts: now }.to_json()))
        } else {
            None
        };
        let timeout = gw.config.heartbeat_timeout_ms;
        let now_s = now / 1000;
        for c in gw.hub.connections() {
            if now.saturating_sub(c.last_seen_ms()) > timeout {
                c.close(CloseCode::HeartbeatTimeout);
                continue;
            }
            if c.token_exp().is_some_and(|exp| exp + gw.config.jwt_leeway_s < now_s) {
                let err = ServerFrame::error(ErrorCode::TokenExpired, "token expired; refresh it and reconnect", None);
                gw.metrics
                    .errors_sent
                    .with_label_values(&[ErrorCode::TokenExpired.as_str()])
                    .inc();
                c.close_with(OutFrame::control(err.to_json()), CloseCode::TokenExpired);
                continue;
            }
            if let Some(p) = &ping
                && c.push_control(p.clone()) == crate::hub::Push::Overflow
            {
                gw.metrics.slow_consumers.inc();
            }
            for request_id in c.expire_pending(now) {
                let err = ServerFrame::error(ErrorCode::Timeout, "no backend answered in time", Some(request_id));
                gw.metrics
                    .errors_sent
                    .with_label_values(&[ErrorCode::Timeout.as_str()])
                    .inc();
                c.push_control(OutFrame::control(err.to_json()));
            }
        }
        if now >= next_expire {
            next_expire = now + 1000;
            gw.hub.expire_parked();
            if let Some(m) = &gw.memory {
                m.expire();
            }
        }
    }
}

/// A gateway started on a real listener in this process (tests, embedding).
pub struct RunningGateway {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its shared state.
    pub gateway: Arc<Gateway>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), StartError>>,
}

impl RunningGateway {
    /// Binds `config.listen` (port 0 picks a free one) and serves until stopped.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let gateway = Gateway::new(config).await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(serve(listener, gateway.clone(), async move {
            let _ = rx.await;
        }));
        Ok(Self {
            addr,
            gateway,
            stop: Some(tx),
            task,
        })
    }

    /// Triggers the graceful shutdown and waits for it to finish.
    pub async fn stop(mut self) -> Result<(), StartError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(StartError::Config(format!("gateway task failed: {e}"))),
        }
    }
}
