//! broker/redis/keys.rs: every Redis key and pub/sub channel name the gateway uses, in one
//! place (docs/protocol.md, "Keys and channels", lists them for operators).
//!
//! In a Redis Cluster (docs/scaling.md) a channel's keys carry its id-shard as a hash tag right
//! after the prefix (`ws:{6}history:user:42`), as `wsgw_publish` requires, and the keys that
//! belong to no channel (presence, the node registry, sessions, bans, requests, control) carry
//! the fixed tag `{global}`, so the pipelines that write several of them stay in one slot.

use std::borrow::Cow;

pub(super) struct Keys {
    /// `WSGW_REDIS_PREFIX`.
    pub(super) prefix: String,
    /// Prefix of the keys of no channel: `prefix` itself, or `prefix{global}` in a cluster.
    pub(super) global: String,
    /// Redis Cluster: channel keys carry their id-shard's tag.
    pub(super) cluster: bool,
}

impl Keys {
    pub(super) fn new(prefix: &str, cluster: bool) -> Self {
        Self {
            prefix: prefix.to_string(),
            global: if cluster {
                format!("{prefix}{{global}}")
            } else {
                prefix.to_string()
            },
            cluster,
        }
    }

    /// The id-shard of `channel`; `None` with one primary (one sequence).
    pub(super) fn shard_of(&self, channel: &str) -> Option<u16> {
        self.cluster.then(|| wsgw_protocol::shard_of(channel))
    }

    /// The prefix of a shard's keys: `ws:{6}`, or `ws:` for the one sequence.
    pub(super) fn shard_prefix(&self, shard: Option<u16>) -> Cow<'_, str> {
        match shard {
            Some(s) => Cow::Owned(format!("{}{{{s}}}", self.prefix)),
            None => Cow::Borrowed(&self.prefix),
        }
    }

    fn channel_prefix(&self, channel: &str) -> Cow<'_, str> {
        self.shard_prefix(self.shard_of(channel))
    }

    /// The sequence of `shard` (`None`: the one sequence).
    pub(super) fn seq(&self, shard: Option<u16>) -> String {
        format!("{}seq", self.shard_prefix(shard))
    }
    pub(super) fn epoch(&self, shard: Option<u16>) -> String {
        format!("{}epoch", self.shard_prefix(shard))
    }
    pub(super) fn config(&self, shard: Option<u16>) -> String {
        format!("{}config", self.shard_prefix(shard))
    }
    pub(super) fn history(&self, channel: &str) -> String {
        format!("{}history:{channel}", self.channel_prefix(channel))
    }
    pub(super) fn meta(&self, channel: &str) -> String {
        format!("{}meta:{channel}", self.channel_prefix(channel))
    }
    pub(super) fn presence_conn(&self, id: &str) -> String {
        format!("{}presence:conn:{id}", self.global)
    }
    pub(super) fn presence_user(&self, user: &str) -> String {
        format!("{}presence:user:{user}", self.global)
    }
    /// The members of a presence-tracked channel: a sorted set of `{"user_id","connection_id",
    /// "node"}` members scored by their expiry (ms since the epoch).
    pub(super) fn presence_channel(&self, channel: &str) -> String {
        format!("{}presence:channel:{channel}", self.global)
    }
    pub(super) fn nodes(&self) -> String {
        format!("{}nodes", self.global)
    }
    pub(super) fn node(&self, id: &str) -> String {
        format!("{}node:{id}", self.global)
    }
    pub(super) fn session(&self, id: &str) -> String {
        format!("{}session:{id}", self.global)
    }
    pub(super) fn ban(&self, user: &str) -> String {
        format!("{}ban:{user}", self.global)
    }
    pub(super) fn inbound(&self) -> String {
        format!("{}inbound", self.global)
    }
    pub(super) fn control(&self) -> String {
        format!("{}control", self.global)
    }
    pub(super) fn canary(&self, node: &str) -> String {
        format!("{}control:{node}", self.global)
    }
    /// A cluster node's marker channel in `shard` (sharded pub/sub): its `sync` and canary
    /// markers travel through the shard's primary, behind the shard's events.
    pub(super) fn shard_marker(&self, shard: u16, node: &str) -> String {
        format!("{}control:{node}", self.shard_prefix(Some(shard)))
    }
    /// The pub/sub channel of a gateway channel or pattern (sharded pub/sub in a cluster).
    pub(super) fn pubsub(&self, channel: &str) -> String {
        format!("{}{channel}", self.channel_prefix(channel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_keys_carry_the_channels_shard_or_the_global_tag() {
        let one = Keys::new("ws:", false);
        assert_eq!(one.history("user:42"), "ws:history:user:42");
        assert_eq!(one.seq(None), "ws:seq");
        assert_eq!(one.nodes(), "ws:nodes");
        let cluster = Keys::new("ws:", true);
        // The rule docs/backends.md gives backends: user:42 is in shard 6.
        assert_eq!(cluster.history("user:42"), "ws:{6}history:user:42");
        assert_eq!(cluster.meta("user:42"), "ws:{6}meta:user:42");
        assert_eq!(cluster.pubsub("user:42"), "ws:{6}user:42");
        assert_eq!(cluster.seq(Some(6)), "ws:{6}seq");
        assert_eq!(cluster.epoch(Some(0)), "ws:{0}epoch");
        assert_eq!(cluster.nodes(), "ws:{global}nodes");
        assert_eq!(cluster.session("c1"), "ws:{global}session:c1");
        assert_eq!(cluster.control(), "ws:{global}control");
    }
}
