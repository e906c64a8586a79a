//! broker/redis/link.rs: how the node reaches its Redis primary. A `redis://` / `rediss://` URL
//! names it directly; with Sentinels the node asks them for the primary's address and checks
//! with `ROLE` that it is one. The [`Link`] (client for pub/sub, pool for commands) is swapped
//! whole when the primary moves, so no command reaches the old one through a stale pooled
//! connection. TLS material and credentials are applied here; no error names a password.

use super::pubsub::SubCmd;
use super::*;

/// Where the primary is.
#[derive(Debug, Clone)]
pub enum RedisTarget {
    /// A `redis://…` or `rediss://…` URL (user and password included, if any).
    Url(String),
    /// Sentinels that name the primary.
    Sentinel(SentinelSettings),
    /// Seed URLs of a Redis Cluster (`cluster_link.rs`).
    Cluster(Vec<String>),
}

/// Finding the primary through Redis Sentinel.
#[derive(Clone)]
pub struct SentinelSettings {
    /// `host:port` of each Sentinel.
    pub sentinels: Vec<String>,
    /// The monitored master's name.
    pub master: String,
    /// ACL user and password of the primary.
    pub username: Option<String>,
    pub password: Option<String>,
    /// ACL user and password of the Sentinels.
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
    /// TLS to the Sentinels and the primary.
    pub tls: bool,
}

impl std::fmt::Debug for SentinelSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelSettings")
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("username", &self.username)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

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

impl RedisTls {
    /// The `WSGW_REDIS_CA_FILE`, `…_CLIENT_CERT_FILE`, `…_CLIENT_KEY_FILE` and
    /// `WSGW_REDIS_TLS_INSECURE` settings.
    pub fn from_config(config: &crate::Config) -> Self {
        Self {
            ca_file: config.redis_ca_file.clone(),
            client_cert_file: config.redis_client_cert_file.clone(),
            client_key_file: config.redis_client_key_file.clone(),
            insecure: config.redis_tls_insecure,
        }
    }
}

/// One primary: the client the pub/sub connection dials and the pool commands use.
pub(super) struct Link {
    pub(super) client: redis::Client,
    pub(super) pool: super::pool::Pool,
}

impl Link {
    pub(super) fn new(client: redis::Client, op_timeout: Duration) -> Result<Self, BrokerError> {
        // The pool dials with the same client, TLS material included.
        let pool = super::pool::Pool::builder(super::pool::Manager::new(client.clone()))
            .max_size(64)
            // The connection used last goes out first: under a steady load the same few stay
            // busy, and so proven alive (see `pool`), instead of each idling in turn.
            .queue_mode(deadpool::managed::QueueMode::Lifo)
            .wait_timeout(Some(op_timeout * PATIENT))
            .create_timeout(Some(op_timeout))
            .recycle_timeout(Some(op_timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        Ok(Self { client, pool })
    }
}

/// `user:password@` for a URL, each part percent-encoded.
fn userinfo(user: Option<&str>, password: Option<&str>) -> String {
    fn enc(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }
    match (user, password) {
        (None, None) => String::new(),
        (u, p) => format!("{}:{}@", enc(u.unwrap_or_default()), enc(p.unwrap_or_default())),
    }
}

/// The Redis client for `url`: plain, or TLS with the given material. Error messages name the
/// setting and never the URL (it may carry a password).
pub(super) fn redis_client(url: &str, tls: &RedisTls) -> Result<redis::Client, BrokerError> {
    use redis::IntoConnectionInfo;
    let bad_url = |e: redis::RedisError| BrokerError::Internal(format!("not a usable Redis URL: {e}"));
    if !url.starts_with("rediss://") {
        return redis::Client::open(url).map_err(bad_url);
    }
    // rustls needs a process-wide crypto provider; ring is the one the gateway builds with.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let info = if tls.insecure && !url.contains('#') {
        format!("{url}#insecure").into_connection_info()
    } else {
        url.into_connection_info()
    }
    .map_err(bad_url)?;
    match tls_certificates(tls)? {
        None => redis::Client::open(info).map_err(bad_url),
        Some(certs) => redis::Client::build_with_tls(info, certs)
            .map_err(|e| BrokerError::Internal(format!("Redis TLS certificates: {e}"))),
    }
}

/// The CA and client certificate files of `tls`, read; `None` when neither is set (the
/// system's roots, no client certificate). Shared by the one-primary and the cluster clients.
pub(super) fn tls_certificates(tls: &RedisTls) -> Result<Option<redis::TlsCertificates>, BrokerError> {
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
    Ok((root_cert.is_some() || client_tls.is_some()).then_some(redis::TlsCertificates { client_tls, root_cert }))
}

/// Warns once at start about settings that weaken or do nothing.
pub(super) fn warn_settings(target: &RedisTarget, tls: &RedisTls) {
    let uses_tls = match target {
        RedisTarget::Url(url) => url.starts_with("rediss://"),
        RedisTarget::Sentinel(s) => s.tls,
        RedisTarget::Cluster(seeds) => seeds.iter().any(|u| u.starts_with("rediss://")),
    };
    let tls_set = tls.ca_file.is_some() || tls.client_cert_file.is_some() || tls.insecure;
    if !uses_tls && tls_set {
        warn!("Redis TLS settings are set but the node does not use TLS to Redis: they are ignored");
    }
    if uses_tls && tls.insecure {
        warn!(
            "WSGW_REDIS_TLS_INSECURE is set: the Redis server's certificate is not verified (insecure; for tests only)"
        );
    }
}

impl SentinelSettings {
    fn url(&self, addr: &str, user: Option<&str>, password: Option<&str>) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://{}{addr}", userinfo(user, password))
    }

    /// Asks the Sentinels, in order, for the primary's address and checks with `ROLE` that the
    /// server there is a primary (a Sentinel may not have noticed a failover yet). Returns the
    /// client for it and its `host:port`.
    pub(super) async fn primary(
        &self,
        tls: &RedisTls,
        op_timeout: Duration,
    ) -> Result<(redis::Client, String), BrokerError> {
        let mut last = String::from("no sentinel configured");
        for sentinel in &self.sentinels {
            let url = self.url(
                sentinel,
                self.sentinel_username.as_deref(),
                self.sentinel_password.as_deref(),
            );
            let asked = timed(op_timeout, async {
                let client = redis_client(&url, tls)?;
                let mut c = client.get_multiplexed_async_connection().await.map_err(unavailable)?;
                let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(&self.master)
                    .query_async(&mut c)
                    .await
                    .map_err(unavailable)?;
                addr.ok_or_else(|| unavailable(format!("sentinel does not know master {:?}", self.master)))
            })
            .await;
            let (host, port) = match asked {
                Ok(a) => a,
                Err(e) => {
                    last = format!("sentinel {sentinel}: {e}");
                    debug!(%sentinel, error = %e, "sentinel did not answer");
                    continue;
                }
            };
            let addr = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let url = self.url(&addr, self.username.as_deref(), self.password.as_deref());
            let client = redis_client(&url, tls)?;
            let role = timed(op_timeout, async {
                let mut c = client.get_multiplexed_async_connection().await.map_err(unavailable)?;
                let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut c).await.map_err(unavailable)?;
                Ok(match role.first() {
                    Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                    Some(redis::Value::SimpleString(s)) => s.clone(),
                    _ => String::new(),
                })
            })
            .await;
            match role {
                Ok(r) if r == "master" => return Ok((client, addr)),
                Ok(r) => last = format!("sentinel {sentinel} names {addr}, which is a {r:?}, not a primary"),
                Err(e) => last = format!("primary {addr} named by sentinel {sentinel}: {e}"),
            }
        }
        Err(unavailable(last))
    }
}

impl Inner {
    /// The current link, if the primary has been found.
    pub(super) fn link(&self) -> Result<Arc<Link>, BrokerError> {
        self.link
            .read()
            .clone()
            .ok_or_else(|| unavailable("no Redis primary known yet"))
    }

    /// Finds the primary. With a URL the link is made once; with Sentinels it is made again when
    /// they name another address. Returns true when the primary moved (a failover).
    pub(super) async fn relink(&self) -> Result<bool, BrokerError> {
        // A moved primary also sets `failover_pending`, which the next repair clears. The last
        // primary's address is kept apart from the link, which `+switch-master` drops.
        match &self.s.target {
            RedisTarget::Url(url) => {
                if self.link.read().is_none() {
                    let client = redis_client(url, &self.s.tls)?;
                    *self.link.write() = Some(Arc::new(Link::new(client, self.s.op_timeout)?));
                }
                Ok(false)
            }
            // The cluster connection follows the cluster itself (`cluster_link.rs`).
            RedisTarget::Cluster(_) => Ok(false),
            RedisTarget::Sentinel(sentinel) => {
                let (client, addr) = sentinel.primary(&self.s.tls, self.s.op_timeout).await?;
                let before = self.primary_addr.lock().clone();
                if before.as_deref() == Some(addr.as_str()) && self.link.read().is_some() {
                    return Ok(false);
                }
                let link = Arc::new(Link::new(client, self.s.op_timeout)?);
                let moved = before.is_some_and(|b| b != addr);
                if moved {
                    self.failover_pending.store(true, Ordering::Release);
                    warn!(primary = %addr, "redis primary moved (failover): following it");
                } else {
                    info!(primary = %addr, "redis primary found through the sentinels");
                }
                *self.primary_addr.lock() = Some(addr);
                *self.link.write() = Some(link);
                Ok(moved)
            }
        }
    }

    /// Follows the Sentinels' `+switch-master` announcements (on one Sentinel at a time, the
    /// next one when it fails): on a switch of our master the node drops its link at once, so
    /// nothing more is written to the old primary, and its pub/sub loop reconnects to the new
    /// one. Without the announcement the node still notices a failover when the old primary
    /// closes its connections or stops answering.
    pub(super) async fn watch_sentinels(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let RedisTarget::Sentinel(sentinel) = &self.s.target else {
            return;
        };
        let mut next = 0usize;
        loop {
            let addr = &sentinel.sentinels[next % sentinel.sentinels.len()];
            next = next.wrapping_add(1);
            let url = sentinel.url(
                addr,
                sentinel.sentinel_username.as_deref(),
                sentinel.sentinel_password.as_deref(),
            );
            let follow = async {
                let client = redis_client(&url, &self.s.tls)?;
                let mut pubsub = timed(self.s.op_timeout, async {
                    client.get_async_pubsub().await.map_err(unavailable)
                })
                .await?;
                pubsub.subscribe("+switch-master").await.map_err(unavailable)?;
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    // `<master name> <old ip> <old port> <new ip> <new port>`
                    let payload = String::from_utf8_lossy(msg.get_payload_bytes()).into_owned();
                    if payload.split(' ').next() == Some(sentinel.master.as_str()) {
                        warn!(%payload, "sentinel announced +switch-master: leaving the old primary");
                        *self.link.write() = None;
                        let _ = self.sub_tx.send(SubCmd::Reconnect);
                    }
                }
                Err::<(), _>(unavailable("sentinel pub/sub connection closed"))
            };
            tokio::select! {
                r = follow => if let Err(e) = r {
                    debug!(sentinel = %addr, error = %e, "not following +switch-master on this sentinel");
                },
                _ = shutdown.changed() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::userinfo;

    #[test]
    fn userinfo_percent_encodes_what_a_url_cannot_hold() {
        assert_eq!(userinfo(None, None), "");
        assert_eq!(userinfo(None, Some("p@ss:w/rd")), ":p%40ss%3Aw%2Frd@");
        assert_eq!(userinfo(Some("app"), Some("x y")), "app:x%20y@");
    }
}
