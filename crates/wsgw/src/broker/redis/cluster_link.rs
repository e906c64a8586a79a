//! broker/redis/cluster_link.rs: how a node reaches a Redis Cluster (`WSGW_REDIS_CLUSTER`).
//! One cluster connection (RESP3, one multiplexed connection per primary, following `MOVED`
//! and topology changes) carries both the commands, routed by their keys' slot, and the
//! sharded subscriptions, whose messages arrive on its push channel. [`Conn`] is what every
//! command of the broker runs on, in either mode.

use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, PushInfo, RedisFuture, Value};

use super::*;

/// A command connection: a pooled one to the one primary, or the cluster connection.
pub(super) enum Conn {
    Pooled(pool::Pooled),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Pooled(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Pooled(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Pooled(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// The cluster connection and the receiving end of its pushes (sharded messages, control
/// messages, subscription changes, lost node connections), which the subscriber task takes.
pub(super) struct ClusterLink {
    pub(super) conn: ClusterConnection,
    pub(super) pushes: Mutex<Option<mpsc::UnboundedReceiver<PushInfo>>>,
}

/// `redis://host:port` seeds with RESP3 (sharded pub/sub arrives as pushes), credentials and
/// TLS material as in single-primary mode. Error messages never name a URL (it may carry a
/// password).
pub(super) async fn connect(
    seeds: &[String],
    tls: &RedisTls,
    op_timeout: Duration,
) -> Result<ClusterLink, BrokerError> {
    use redis::IntoConnectionInfo;
    let bad_url = |e: redis::RedisError| BrokerError::Internal(format!("not a usable WSGW_REDIS_CLUSTER URL: {e}"));
    let infos = seeds
        .iter()
        .map(|s| s.as_str().into_connection_info().map_err(bad_url))
        .collect::<Result<Vec<_>, _>>()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut b = redis::cluster::ClusterClientBuilder::new(infos)
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(tx)
        .connection_timeout(op_timeout)
        .response_timeout(op_timeout * PATIENT)
        .retries(3);
    if seeds.iter().any(|s| s.starts_with("rediss://")) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        if tls.insecure {
            b = b.danger_accept_invalid_hostnames(true);
        }
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
            _ => None,
        };
        if root_cert.is_some() || client_tls.is_some() {
            b = b.certs(redis::TlsCertificates { client_tls, root_cert });
        }
    }
    let client = b.build().map_err(bad_url)?;
    let conn = timed(op_timeout * 3, async {
        client.get_async_connection().await.map_err(unavailable)
    })
    .await?;
    Ok(ClusterLink {
        conn,
        pushes: Mutex::new(Some(rx)),
    })
}

/// The cluster's node id of the primary that holds `key`'s slot now.
pub(super) async fn owner_of(conn: &mut ClusterConnection, key: &str) -> Result<String, BrokerError> {
    use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
        key,
        SlotAddr::Master,
    )));
    let v = conn
        .route_command(redis::cmd("CLUSTER").arg("MYID").clone(), route)
        .await
        .map_err(unavailable)?;
    redis::from_redis_value(v).map_err(|e| BrokerError::Internal(e.to_string()))
}
