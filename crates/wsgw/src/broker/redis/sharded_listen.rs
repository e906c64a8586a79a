//! broker/redis/sharded_listen.rs: a Redis Cluster node's subscriptions (see sharded.rs):
//! `SSUBSCRIBE` and `SUNSUBSCRIBE` per shard, each new channel pending until Redis confirms it by
//! name, and starting at the shard's newest id so its first message is checked for a hole.

use super::sharded::Shard;
use super::*;

impl Inner {
    /// `SSUBSCRIBE` to `channels` (all of one shard: one slot), in chunks.
    pub(super) async fn ssubscribe(&self, names: &[String]) -> Result<(), BrokerError> {
        let mut conn = self.cluster_conn()?;
        for chunk in names.chunks(512) {
            timed(self.s.op_timeout * 2, async {
                conn.ssubscribe(chunk).await.map_err(unavailable)
            })
            .await?;
        }
        Ok(())
    }

    /// `SSUBSCRIBE`s to the channels not yet followed: one command per shard, all shards at once.
    /// They count as followed once the command succeeds; each stays pending until Redis
    /// confirms it by name (`check_unconfirmed`).
    pub(super) async fn listen_sharded(
        &self,
        channels: Vec<Arc<str>>,
        shards: &mut [Shard],
    ) -> Result<(), BrokerError> {
        let mut by_shard: HashMap<u16, Vec<Arc<str>>> = HashMap::new();
        for c in channels {
            let s = wsgw_protocol::shard_of(&c);
            if !shards[s as usize].listening.contains(&c) {
                by_shard.entry(s).or_default().push(c);
            }
        }
        let now = tokio::time::Instant::now();
        let mut batches = Vec::with_capacity(by_shard.len());
        for (s, mut chans) in by_shard {
            chans.sort();
            chans.dedup();
            let names: Vec<String> = chans.iter().map(|c| self.keys.pubsub(c)).collect();
            let pending = &mut shards[s as usize].pending;
            pending.extend(names.iter().map(|n| (n.clone(), now)));
            batches.push((s, chans, names));
        }
        let each = batches.into_iter().map(|(s, chans, names)| async move {
            let r = self.ssubscribe(&names).await;
            // Where the new channels' positions start (see `Shard::positions`); without it their
            // first message is not checked for a hole.
            let at = match r {
                Ok(()) => self.shard_seq(s, self.s.op_timeout).await.ok(),
                Err(_) => None,
            };
            (s, chans, names, r, at)
        });
        let mut failed = None;
        for (s, chans, names, r, at) in futures_util::future::join_all(each).await {
            let sh = &mut shards[s as usize];
            match r {
                Ok(()) => {
                    debug!(shard = s, channels = ?chans, at = ?at, held = sh.held.is_some(), "listened");
                    if let Some(at) = at {
                        for c in &chans {
                            sh.positions.entry(c.clone()).or_insert(at);
                        }
                    }
                    if sh.held.is_some() {
                        // Subscribed during a repair that does not read it, on a connection that
                        // may be gone or on a replica: events after its socket's snapshot may
                        // reach neither. That repair's reads pass over it: if they were delivered,
                        // other channels' events would raise the shard's socket floors past the
                        // ones of this channel the next repair brings.
                        sh.joined = true;
                    }
                    sh.listening.extend(chans);
                }
                Err(e) => {
                    for n in &names {
                        sh.pending.remove(n);
                    }
                    failed = Some(e);
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Answers the listens held back while shard `s` was closed to joins, once it no longer
    /// is. A channel whose sockets all left meanwhile is not subscribed: its unlisten came
    /// first and found nothing to undo.
    pub(super) async fn listen_deferred(&self, s: u16, shards: &mut [Shard]) {
        let sh = &mut shards[s as usize];
        if sh.deferred.is_empty() || sh.closed_to_joins() {
            return;
        }
        let waiters = std::mem::take(&mut sh.deferred);
        let all: Vec<Arc<str>> = waiters
            .iter()
            .flat_map(|(c, _)| c.iter().filter(|c| self.hub.has_interest(c)).cloned())
            .collect();
        debug!(
            shard = s,
            listens = waiters.len(),
            channels = all.len(),
            "listens held back for the shard's repair"
        );
        let r = self.listen_sharded(all, shards).await;
        for (_, t) in waiters {
            let _ = t.send(r.clone());
        }
    }

    pub(super) async fn unlisten_sharded(&self, channels: Vec<Arc<str>>, shards: &mut [Shard]) {
        let mut by_shard: HashMap<u16, Vec<String>> = HashMap::new();
        for c in channels {
            let s = wsgw_protocol::shard_of(&c);
            if !self.hub.has_interest(&c) && shards[s as usize].listening.remove(&c) {
                let name = self.keys.pubsub(&c);
                shards[s as usize].pending.remove(&name);
                shards[s as usize].positions.remove(&c);
                by_shard.entry(s).or_default().push(name);
            }
        }
        let Ok(mut conn) = self.cluster_conn() else { return };
        for names in by_shard.values() {
            let r = timed(self.s.op_timeout, async {
                conn.sunsubscribe(names).await.map_err(unavailable)
            })
            .await;
            if let Err(e) = r {
                debug!(error = %e, "sunsubscribe failed");
            }
        }
    }
}
