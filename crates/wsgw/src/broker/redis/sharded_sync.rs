//! broker/redis/sharded_sync.rs: a Redis Cluster shard's snapshot for a replay (see sharded.rs):
//! its newest id, returned once the node's marker, published behind it into the shard, came back
//! through the node's own subscription.

use super::*;

impl Inner {
    /// The snapshot of each shard in `shards`: its newest id, once every event up to it on
    /// this node's channels of that shard has reached the hub (its marker came back behind them).
    pub(super) async fn sync_shards(&self, shards: &[u16]) -> Result<Vec<EventId>, BrokerError> {
        if !self.ready.load(Ordering::Acquire) {
            return Err(unavailable("redis cluster pub/sub is not connected"));
        }
        let each = shards.iter().map(|&s| self.sync_shard(s));
        futures_util::future::try_join_all(each).await
    }

    async fn sync_shard(&self, shard: u16) -> Result<EventId, BrokerError> {
        let deadline = tokio::time::Instant::now() + self.s.op_timeout * PATIENT;
        let mut wait = Duration::from_millis(10);
        loop {
            let n = self.next_sync.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            self.syncs.lock().insert(n, (Some(shard), tx));
            let r = self.sync_once(shard, n, rx, deadline).await;
            self.syncs.lock().remove(&n);
            debug!(shard, n, snapshot = ?r, "sync");
            match r {
                Ok(Some(seq)) => return Ok(seq),
                // No subscriber took the marker on the primary (the node's subscription is being
                // replaced), or the shard was interrupted after one took it (`drop_syncs`): that
                // marker may never come back. A new one (its own number: the old one, if a
                // replica's subscription still brings it, vouches only for its own snapshot),
                // after a short wait, instead of waiting out the patience for nothing.
                Ok(None) if tokio::time::Instant::now() + wait < deadline => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(200));
                }
                Ok(None) => return Err(unavailable("redis cluster pub/sub did not catch up in time")),
                Err(e) => return Err(e),
            }
        }
    }

    /// Shard `s` was interrupted: markers of its syncs still on their way may have gone with the
    /// connection. Their waiters try again with new ones (held behind the shard's repair).
    pub(super) fn drop_syncs(&self, s: u16) {
        self.syncs.lock().retain(|_, (shard, _)| *shard != Some(s));
    }

    /// One try of `sync_shard`: reads the shard's newest id and publishes marker `n` behind it,
    /// then waits until `deadline` for the marker. `None`: no subscriber on the primary took it,
    /// or the shard was interrupted before it came back.
    async fn sync_once(
        &self,
        shard: u16,
        n: u64,
        rx: oneshot::Receiver<()>,
        deadline: tokio::time::Instant,
    ) -> Result<Option<EventId>, BrokerError> {
        let patience = deadline.saturating_duration_since(tokio::time::Instant::now());
        // Both keys carry the shard's tag: one slot, one primary, in this order.
        let (seq, taken): (Option<String>, i64) = timed(patience, async {
            let mut c = self.conn().await?;
            redis::pipe()
                .cmd("GET")
                .arg(self.keys.seq(Some(shard)))
                .cmd("SPUBLISH")
                .arg(self.keys.shard_marker(shard, &self.s.node_id))
                .arg(format!("sync:{n}"))
                .query_async(&mut c)
                .await
                .map_err(unavailable)
        })
        .await?;
        if taken == 0 {
            return Ok(None);
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(())) => Ok(Some(
                seq.and_then(|v| v.parse::<EventId>().ok())
                    .unwrap_or_default()
                    .in_shard(Some(shard)),
            )),
            Ok(Err(_)) => Ok(None),
            Err(_) => Err(unavailable("redis cluster pub/sub did not catch up in time")),
        }
    }

    /// Shard `s`'s newest id (`0-0` if it never issued one), read from its primary.
    pub(super) async fn shard_seq(&self, s: u16, patience: Duration) -> Result<EventId, BrokerError> {
        let seq: Option<String> = timed(patience, async {
            let mut c = self.conn().await?;
            c.get(self.keys.seq(Some(s))).await.map_err(unavailable)
        })
        .await?;
        Ok(seq
            .and_then(|v| v.parse::<EventId>().ok())
            .unwrap_or_default()
            .in_shard(Some(s)))
    }
}
