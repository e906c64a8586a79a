//! broker/redis/channel_presence.rs: presence of tracked channels (`WSGW_PRESENCE_CHANNELS`),
//! cluster-wide. Each member is an entry of `<prefix>presence:channel:<channel>`, scored by its
//! expiry and written, refreshed and removed by the presence task (`presence.rs`) along with
//! the socket presence. `join` and `leave` travel as ephemeral frames (no `event_id`) on the
//! channel's own pub/sub channel. On a Redis Cluster the sets carry `{global}` (one slot, so
//! the presence task's batches stay one pipeline) and the frames go apart, `SPUBLISH`ed into
//! the channel's shard, one pipeline per shard, after the stores. A dead node's entries stop
//! being refreshed: once they have expired, every node with members in the channel tries to
//! remove them, and the one whose removal succeeds sends their `leave`. Never blocks a socket.

use wsgw_protocol::PresenceClient;

use super::*;
use crate::presence::{Change, MAX_PRESENCE_CLIENTS, Tracker};

/// Expired entries one channel gives up per tick (a dead node's thousands go in a few ticks).
const REAP_BATCH: usize = 200;

/// Removes a member only if it is still expired (it may have been refreshed since it was read):
/// KEYS[1] the channel's set, ARGV[1] the member, ARGV[2] now. Returns 1 when removed.
const REAP_ONE: &str = "local s = redis.call('ZSCORE', KEYS[1], ARGV[1]) \
     if s and tonumber(s) <= tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end return 0";

impl Inner {
    /// The member as stored: the very `clients` entry a `presence` answer lists.
    fn presence_member(&self, c: &Change) -> String {
        serde_json::to_string(&c.client(&self.s.node_id)).unwrap_or_default()
    }

    /// Queues the stores of `changes` on `pipe` (the presence task's batch) and, with one
    /// primary, their frames too; on a Redis Cluster the frames are returned, for
    /// [`Self::send_frames`] once the batch has run.
    pub(super) fn channel_changes(&self, pipe: &mut redis::Pipeline, changes: &[Change]) -> Vec<(Arc<str>, String)> {
        let mut apart = Vec::new();
        let ttl = self.s.presence_ttl_ms;
        for c in changes {
            let key = self.keys.presence_channel(&c.channel);
            if c.joined {
                pipe.cmd("ZADD")
                    .arg(&key)
                    .arg(self.redis_now_ms() + ttl)
                    .arg(self.presence_member(c))
                    .ignore();
                // Outlives its entries by a TTL, so that the dead ones are still there to reap.
                pipe.cmd("PEXPIRE").arg(&key).arg(ttl * 2).ignore();
            } else {
                pipe.cmd("ZREM").arg(&key).arg(self.presence_member(c)).ignore();
            }
            if self.keys.cluster {
                apart.push((c.channel.clone(), c.frame()));
            } else {
                pipe.cmd("PUBLISH")
                    .arg(self.keys.pubsub(&c.channel))
                    .arg(c.frame())
                    .ignore();
            }
        }
        apart
    }

    /// Publishes presence frames on their channels: one pipeline with one primary; on a Redis
    /// Cluster one per shard (`SPUBLISH` into the shard's slot), the shards at once.
    pub(super) async fn send_frames(&self, frames: Vec<(Arc<str>, String)>) {
        let mut by_shard: HashMap<Option<u16>, redis::Pipeline> = HashMap::new();
        for (channel, frame) in frames {
            let shard = self.keys.shard_of(&channel);
            let command = if shard.is_some() { "SPUBLISH" } else { "PUBLISH" };
            by_shard
                .entry(shard)
                .or_insert_with(redis::pipe)
                .cmd(command)
                .arg(self.keys.pubsub(&channel))
                .arg(frame)
                .ignore();
        }
        futures_util::future::join_all(by_shard.into_values().map(|pipe| self.run_pipe(pipe))).await;
    }

    /// On the node-wide tick: rewrites this node's entries (announcing again, with `join`,
    /// any that Redis lost in a restart or that another node reaped while this one could not
    /// refresh), then reaps the expired entries of the channels this node has members in.
    pub(super) async fn refresh_channels(&self, tracker: &mut Tracker) {
        if !tracker.is_on() {
            return;
        }
        let ttl = self.s.presence_ttl_ms;
        // A socket taken over from another node: its id lives on there, and that node announced
        // it with its own entries. Ours go without a `leave`, which would read as the id leaving.
        let gone = tracker.remove_replaced(|id| self.hub.connection(id).is_some());
        if !gone.is_empty() {
            let mut pipe = redis::pipe();
            for c in &gone {
                pipe.cmd("ZREM")
                    .arg(self.keys.presence_channel(&c.channel))
                    .arg(self.presence_member(c))
                    .ignore();
            }
            self.run_pipe(pipe).await;
        }
        let all = tracker.all();
        for chunk in all.chunks(500) {
            let mut pipe = redis::pipe();
            for c in chunk {
                let key = self.keys.presence_channel(&c.channel);
                pipe.cmd("ZADD")
                    .arg(&key)
                    .arg(self.redis_now_ms() + ttl)
                    .arg(self.presence_member(c));
                pipe.cmd("PEXPIRE").arg(&key).arg(ttl * 2).ignore();
            }
            let Some(added) = self.query_pipe::<Vec<i64>>(pipe).await else {
                return;
            };
            let again: Vec<(Arc<str>, String)> = chunk
                .iter()
                .zip(added)
                .filter(|(_, n)| *n == 1)
                .map(|(c, _)| (c.channel.clone(), c.frame()))
                .collect();
            if !again.is_empty() {
                debug!(again = again.len(), "channel presence written again");
                self.send_frames(again).await;
            }
        }
        self.reap_channels(&tracker.channels()).await;
    }

    /// Removes expired entries of `channels` and sends their `leave`.
    async fn reap_channels(&self, channels: &[Arc<str>]) {
        let now = self.redis_now_ms();
        for chunk in channels.chunks(500) {
            let mut pipe = redis::pipe();
            for ch in chunk {
                pipe.cmd("ZRANGEBYSCORE")
                    .arg(self.keys.presence_channel(ch))
                    .arg("-inf")
                    .arg(now)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(REAP_BATCH);
            }
            let Some(expired) = self.query_pipe::<Vec<Vec<String>>>(pipe).await else {
                return;
            };
            let mut pipe = redis::pipe();
            let mut candidates = Vec::new();
            for (ch, members) in chunk.iter().zip(expired) {
                for m in members {
                    pipe.cmd("EVAL")
                        .arg(REAP_ONE)
                        .arg(1)
                        .arg(self.keys.presence_channel(ch))
                        .arg(&m)
                        .arg(now);
                    candidates.push((ch.clone(), m));
                }
            }
            if candidates.is_empty() {
                continue;
            }
            let Some(removed) = self.query_pipe::<Vec<i64>>(pipe).await else {
                return;
            };
            let mut frames = Vec::new();
            for ((ch, m), _) in candidates.into_iter().zip(removed).filter(|(_, n)| *n == 1) {
                let Ok(gone) = serde_json::from_str::<PresenceClient>(&m) else {
                    continue;
                };
                debug!(channel = %ch, connection_id = %gone.connection_id, node = %gone.node, "presence expired");
                let leave = Change {
                    channel: ch.clone(),
                    connection_id: Arc::from(gone.connection_id),
                    user_id: Arc::from(gone.user_id),
                    joined: false,
                };
                frames.push((ch, leave.frame()));
            }
            self.send_frames(frames).await;
        }
    }

    /// A pipeline whose answers matter; `None` (counted, logged) when Redis failed it.
    async fn query_pipe<T: redis::FromRedisValue>(&self, pipe: redis::Pipeline) -> Option<T> {
        let r = timed(self.s.op_timeout * 2, async {
            let mut c = self.conn().await?;
            pipe.query_async(&mut c).await.map_err(unavailable)
        })
        .await;
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.metrics.broker_errors.with_label_values(&["presence"]).inc();
                debug!(error = %e, "channel presence update failed");
                None
            }
        }
    }

    /// The live members of `channel` across the cluster (expired entries are not listed).
    pub(super) async fn channel_presence(&self, channel: &str) -> Result<Vec<PresenceClient>, BrokerError> {
        timed(self.s.op_timeout, async {
            let mut c = self.conn().await?;
            let members: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(self.keys.presence_channel(channel))
                .arg(self.redis_now_ms())
                .arg("+inf")
                .arg("LIMIT")
                .arg(0)
                .arg(MAX_PRESENCE_CLIENTS)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            Ok(members.iter().filter_map(|m| serde_json::from_str(m).ok()).collect())
        })
        .await
    }
}
