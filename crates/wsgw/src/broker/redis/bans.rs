//! broker/redis/bans.rs: the ban check every connect makes, batched. One task pipelines an
//! `EXISTS <prefix>ban:<user>` for every connect waiting, so a connect storm costs one pool
//! checkout and one round trip per batch, not per socket, and a connect waiting on it holds a
//! small message instead of a Redis command's future (about 13 KB each, which raised the
//! node's RSS for good after a storm).

use super::*;

/// Most checks one pipeline carries.
const MAX_BATCH: usize = 512;

/// One connect's question: is this user banned?
pub(super) struct BanCheck {
    key: String,
    reply: oneshot::Sender<Result<bool, BrokerError>>,
}

impl Inner {
    /// Whether `user_id` is banned now. Waits for its batch: at most twice the command timeout
    /// (the batch before it, then its own).
    pub(super) async fn is_banned(&self, user_id: &str) -> Result<bool, BrokerError> {
        let (reply, answer) = oneshot::channel();
        let check = BanCheck {
            key: self.keys.ban(user_id),
            reply,
        };
        self.ban_tx
            .send(check)
            .map_err(|_| unavailable("the ban check has stopped"))?;
        timed(self.s.op_timeout * 2, async {
            answer.await.map_err(|_| unavailable("the ban check has stopped"))?
        })
        .await
    }

    /// Answers waiting checks a batch at a time until the node shuts down.
    pub(super) async fn ban_checker(
        self: Arc<Self>,
        mut checks: mpsc::UnboundedReceiver<BanCheck>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut batch = Vec::with_capacity(16);
        loop {
            tokio::select! {
                n = checks.recv_many(&mut batch, MAX_BATCH) => if n == 0 { return },
                _ = shutdown.changed() => return,
            }
            let found = timed(self.s.op_timeout, async {
                let mut c = self.conn().await?;
                let mut pipe = redis::pipe();
                for check in &batch {
                    pipe.exists(&check.key);
                }
                let found: Vec<i64> = pipe.query_async(&mut c).await.map_err(unavailable)?;
                if found.len() != batch.len() {
                    return Err(BrokerError::Internal(format!(
                        "{} answers to {} ban checks",
                        found.len(),
                        batch.len()
                    )));
                }
                Ok(found)
            })
            .await;
            match found {
                Ok(found) => {
                    for (check, n) in batch.drain(..).zip(found) {
                        let _ = check.reply.send(Ok(n > 0));
                    }
                }
                Err(e) => {
                    for check in batch.drain(..) {
                        let _ = check.reply.send(Err(e.clone()));
                    }
                }
            }
            if batch.capacity() > 64 {
                // A storm's batch is gone: give its room back.
                batch = Vec::with_capacity(16);
            }
        }
    }
}
