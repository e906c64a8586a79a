//! node.rs: one node's shared state (configuration, hub, broker, authenticator, metrics) and
//! its admission counters (connection slots, per-address slots). It never serves: serving,
//! draining and the tick live in `server.rs`, which depends on this module, never the reverse.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::auth::{AuthConfig, AuthSetupError, Authenticator, read_public_key_file};
use crate::broker::memory::HistoryLimits;
use crate::broker::redis::{RedisSettings, RedisTarget, SentinelSettings};
use crate::broker::{Broker, BrokerError, MemoryBroker, RedisBroker};
use crate::config::{Config, ExposeSecret};
use crate::hub::Hub;
use crate::jwks::{Jwks, JwksSource};
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
    /// Connection slots taken (see [`Slot`]).
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
    /// Origins browser upgrades may come from (`allowed_origins`).
    pub origins: crate::origin::AllowedOrigins,
    /// The backend hooks (`WSGW_HOOK_*`); each is off without its URL.
    pub hooks: crate::hooks::Hooks,
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
        if config.jwt_secret.is_none()
            && config.jwt_public_key_file.is_none()
            && config.jwt_jwks_url.is_none()
            && config.jwt_jwks_file.is_none()
        {
            return Err(StartError::Config(
                "no JWT key configured: set WSGW_JWT_SECRET or WSGW_JWT_PUBLIC_KEY_FILE (or run `wsgw --dev`)".into(),
            ));
        }
        let public_key_pem = match &config.jwt_public_key_file {
            Some(path) => Some(read_public_key_file(path)?),
            None => None,
        };
        let metrics = Metrics::new();
        let (stop, stop_rx) = watch::channel(false);
        let jwks_source = match (&config.jwt_jwks_url, &config.jwt_jwks_file) {
            (Some(url), _) => Some(JwksSource::Url(url.clone())),
            (None, Some(path)) => Some(JwksSource::File(path.clone())),
            (None, None) => None,
        };
        let jwks = match jwks_source {
            Some(source) => Some(
                Jwks::start(
                    source,
                    Duration::from_secs(config.jwt_jwks_refresh_s),
                    metrics.jwks_refresh_failures.clone(),
                    stop_rx.clone(),
                )
                .await
                .map_err(StartError::Config)?,
            ),
            None => None,
        };
        let auth = Authenticator::with_jwks(
            &AuthConfig {
                secret: config.jwt_secret.as_ref().map(|s| s.expose_secret().to_owned()),
                public_key_pem,
                audience: config.jwt_audience.clone(),
                issuer: config.jwt_issuer.clone(),
                leeway_s: config.jwt_leeway_s,
                require_exp: config.jwt_require_exp,
            },
            jwks,
        )?;
        let node_id = if config.node_id.is_empty() {
            default_node_id()
        } else {
            config.node_id.clone()
        };
        crate::presence::validate_patterns(&config.presence_channels)
            .map_err(|reason| StartError::Config(format!("presence_channels: {reason}")))?;
        let hub =
            Hub::new(node_id.clone(), metrics.clone()).with_burst_bounds(config.send_queue, config.send_queue_bytes);
        let hub = Arc::new(match config.compression {
            crate::config::Compression::On => hub.with_compression(config.compression_min_bytes),
            crate::config::Compression::Off => hub,
        });
        let limits = HistoryLimits {
            size: config.history_size,
            ttl_ms: config.history_ttl_ms,
        };
        let seeds = config.redis_cluster_seeds();
        let target = match (&config.redis_url, config.redis_sentinels.is_empty()) {
            _ if !seeds.is_empty() => Some(RedisTarget::Cluster(seeds)),
            (Some(url), _) => Some(RedisTarget::Url(url.expose_secret().to_owned())),
            (None, false) => Some(RedisTarget::Sentinel(SentinelSettings {
                sentinels: config.redis_sentinels.clone(),
                master: config.redis_sentinel_master.clone().unwrap_or_default(),
                username: config.redis_username.clone(),
                password: config.redis_password.as_ref().map(|p| p.expose_secret().to_owned()),
                sentinel_username: config.redis_sentinel_username.clone(),
                sentinel_password: config
                    .redis_sentinel_password
                    .as_ref()
                    .map(|p| p.expose_secret().to_owned()),
                tls: config.redis_tls,
            })),
            (None, true) => None,
        };
        let (broker, memory): (Arc<dyn Broker>, Option<Arc<MemoryBroker>>) = match target {
            None => {
                let m = Arc::new(
                    MemoryBroker::new(hub.clone(), limits, config.session_ttl_ms)
                        .with_presence_channels(config.presence_channels.clone()),
                );
                (m.clone(), Some(m))
            }
            Some(target) => {
                let settings = RedisSettings {
                    target,
                    tls: crate::broker::redis::RedisTls::from_config(&config),
                    prefix: config.redis_prefix.clone(),
                    node_id: node_id.clone(),
                    history: limits,
                    session_ttl_ms: config.session_ttl_ms,
                    presence_ttl_ms: config.effective_presence_ttl_ms(),
                    presence_channels: config.presence_channels.clone(),
                    canary_interval_ms: config.canary_interval_ms,
                    write_delay: Duration::from_millis(config.write_delay_ms),
                    write_pace: Duration::from_millis(config.effective_write_pace_ms()),
                    write_pace_min_sockets: config.write_pace_min_sockets,
                    op_timeout: Duration::from_millis(config.redis_timeout_ms),
                    inbound_maxlen: config.inbound_maxlen,
                };
                (
                    RedisBroker::start(settings, hub.clone(), metrics.clone(), stop_rx).await?,
                    None,
                )
            }
        };
        let hooks = crate::hooks::Hooks::start(&config, &node_id, metrics.clone(), stop.subscribe())
            .map_err(StartError::Config)?;
        let proxies = crate::proxy::TrustedProxies::new(&config.trusted_proxies);
        let origins = crate::origin::AllowedOrigins::new(&config.allowed_origins)
            .map_err(|reason| StartError::Config(format!("allowed_origins: {reason}")))?;
        // `--dev` hands out one permissive token (printed, and filled into the demo page).
        let dev_token = match (&config.jwt_secret, config.dev) {
            (Some(secret), true) => {
                let exp = now_ms() / 1000 + 24 * 3600;
                Some(crate::auth::sign_hs256(
                    secret.expose_secret(),
                    "dev-user",
                    &["*"],
                    &["*"],
                    Some(exp),
                ))
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
            origins,
            hooks,
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

    /// Starts the drain: `/ready` fails and new sockets are refused with 1012 from now on.
    pub(crate) fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Stops the broker's background tasks (after the sessions have ended).
    pub(crate) fn stop_broker(&self) {
        let _ = self.stop.send(true);
    }

    /// Periodic housekeeping that is not per socket: parked sessions, the memory history.
    pub(crate) fn expire(&self) {
        self.hub.expire_parked();
        if let Some(m) = &self.memory {
            m.expire();
        }
    }
}

/// A connection slot, released when dropped (caps the node at `max_connections`).
pub struct Slot(Arc<Gateway>);

impl Slot {
    /// Takes a slot if the node has room.
    pub fn acquire(gw: &Arc<Gateway>) -> Option<Slot> {
        let max = gw.config.max_connections;
        let prev = gw.slots.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if prev >= max {
            gw.slots.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            return None;
        }
        Some(Slot(gw.clone()))
    }
}

/// A per-client-address slot, released when dropped (`max_connections_per_ip`).
pub struct IpSlot(Option<(Arc<Gateway>, std::net::IpAddr)>);

impl IpSlot {
    /// Takes a slot for `ip` if it is under the cap (always, when there is no cap).
    pub fn acquire(gw: &Arc<Gateway>, ip: std::net::IpAddr) -> Option<IpSlot> {
        let cap = gw.config.max_connections_per_ip;
        if cap == 0 {
            return Some(IpSlot(None));
        }
        let mut counts = gw.per_ip.lock();
        let n = counts.entry(ip).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(IpSlot(Some((gw.clone(), ip))))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some((gw, ip)) = self.0.take() {
            let mut counts = gw.per_ip.lock();
            if let Some(n) = counts.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&ip);
                }
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.slots.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}
