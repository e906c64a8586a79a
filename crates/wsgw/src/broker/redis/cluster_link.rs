//! broker/redis/cluster_link.rs: how a node reaches a Redis Cluster (`WSGW_REDIS_CLUSTER`).
//! One cluster connection (RESP3, one multiplexed connection per primary, following `MOVED`
//! and topology changes) carries both the commands, routed by their keys' slot, and the
//! sharded subscriptions, whose messages arrive on its push channel. [`Conn`] is what every
//! command of the broker runs on, in either mode. Also the cluster's setup: the Function on
//! every primary, each id-shard's epoch and defaults, and which primary holds a shard.

use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, PushInfo, RedisFuture, Value};

use wsgw_protocol::ID_SHARDS;

use super::cluster_functions::PrimaryOutcome;
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
        if let Some(certs) = super::link::tls_certificates(tls)? {
            b = b.certs(certs);
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

/// The cluster's node id of the primary that holds `key`'s slot now. Asked with a script keyed
/// by `key`: a node that does not hold the slot (a replica, another primary) answers `MOVED`, and
/// the client follows it. `CLUSTER MYID` routed by slot is not enough: while the connection to
/// the slot's primary is being replaced, the client library sends it to any node it is still
/// connected to, which answers with its own id, and the repair took that for a new primary (a
/// `gap` on every shard, and the epoch raised, after each pub/sub kill).
pub(super) async fn owner_of(conn: &mut ClusterConnection, key: &str) -> Result<String, BrokerError> {
    redis::cmd("EVAL")
        .arg("return redis.call('CLUSTER', 'MYID')")
        .arg(1)
        .arg(key)
        .query_async(conn)
        .await
        .map_err(unavailable)
}

impl Inner {
    /// Loads the Function on every primary, and per shard records the epoch and history
    /// defaults, the newest id issued (repairs start after it) and the shard's primary.
    pub(super) async fn prepare_cluster(&self) -> Result<(), BrokerError> {
        let RedisTarget::Cluster(seeds) = &self.s.target else {
            return Err(BrokerError::Internal("not in Redis Cluster mode".into()));
        };
        let reports = sync_functions(seeds, &self.s.tls, self.s.op_timeout).await?;
        if let Some(r) = reports.iter().find(|r| matches!(r.outcome, PrimaryOutcome::Failed(_))) {
            return Err(unavailable(format!(
                "the wsgw Function could not be loaded on {}: {:?}",
                r.addr, r.outcome
            )));
        }
        let mut c = self.conn().await?;
        for s in 0..ID_SHARDS {
            let shard = Some(s);
            let seq: Option<String> = timed(self.s.op_timeout * 3, async {
                redis::pipe()
                    .add_command(self.record_epoch(shard))
                    .ignore()
                    .cmd("HSET")
                    .arg(self.keys.config(shard))
                    .arg("history_ttl_ms")
                    .arg(self.s.history.ttl_ms)
                    .arg("history_size")
                    .arg(self.s.history.size)
                    .ignore()
                    .cmd("GET")
                    .arg(self.keys.seq(shard))
                    .query_async::<(Option<String>,)>(&mut c)
                    .await
                    .map(|(s,)| s)
                    .map_err(unavailable)
            })
            .await?;
            let owner = self.owner_of(s).await?;
            let mut marks = self.shards.lock();
            if marks.seen[s as usize].is_none() {
                marks.seen[s as usize] = seq.and_then(|v| v.parse::<EventId>().ok()).map(|id| id.in_shard(shard));
            }
            marks.owner[s as usize].get_or_insert(owner);
        }
        Ok(())
    }

    pub(super) async fn owner_of(&self, shard: u16) -> Result<String, BrokerError> {
        let mut conn = self.cluster_conn()?;
        let key = self.keys.seq(Some(shard));
        timed(self.s.op_timeout * PATIENT, cluster_link::owner_of(&mut conn, &key)).await
    }

    /// `wsgw functions --watch` inside the node: a primary that joins later gets the Function
    /// within about 10 s of getting slots.
    pub(super) async fn watch_functions(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let RedisTarget::Cluster(seeds) = &self.s.target else {
            return;
        };
        let mut every = tokio::time::interval(Duration::from_secs(10));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = every.tick() => {}
            }
            match sync_functions(seeds, &self.s.tls, self.s.op_timeout).await {
                Ok(reports) => {
                    for r in reports.iter().filter(|r| r.outcome != PrimaryOutcome::Present) {
                        info!(primary = %r.addr, outcome = ?r.outcome, "wsgw Function on a cluster primary");
                    }
                }
                Err(e) => warn!(error = %e, "could not list the cluster's primaries"),
            }
        }
    }
}
