//! broker/redis/keys.rs: every Redis key and pub/sub channel name the gateway uses, in one
//! place (docs/protocol.md, "Keys and channels", lists them for operators).

pub(super) struct Keys {
    pub(super) prefix: String,
}

impl Keys {
    pub(super) fn seq(&self) -> String {
        format!("{}seq", self.prefix)
    }
    pub(super) fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }
    pub(super) fn config(&self) -> String {
        format!("{}config", self.prefix)
    }
    pub(super) fn history(&self, channel: &str) -> String {
        format!("{}history:{channel}", self.prefix)
    }
    pub(super) fn meta(&self, channel: &str) -> String {
        format!("{}meta:{channel}", self.prefix)
    }
    pub(super) fn presence_conn(&self, id: &str) -> String {
        format!("{}presence:conn:{id}", self.prefix)
    }
    pub(super) fn presence_user(&self, user: &str) -> String {
        format!("{}presence:user:{user}", self.prefix)
    }
    /// The members of a presence-tracked channel: a sorted set of `{"user_id","connection_id",
    /// "node"}` members scored by their expiry (ms since the epoch).
    pub(super) fn presence_channel(&self, channel: &str) -> String {
        format!("{}presence:channel:{channel}", self.prefix)
    }
    pub(super) fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }
    pub(super) fn node(&self, id: &str) -> String {
        format!("{}node:{id}", self.prefix)
    }
    pub(super) fn session(&self, id: &str) -> String {
        format!("{}session:{id}", self.prefix)
    }
    pub(super) fn ban(&self, user: &str) -> String {
        format!("{}ban:{user}", self.prefix)
    }
    pub(super) fn inbound(&self) -> String {
        format!("{}inbound", self.prefix)
    }
    pub(super) fn control(&self) -> String {
        format!("{}control", self.prefix)
    }
    pub(super) fn canary(&self, node: &str) -> String {
        format!("{}control:{node}", self.prefix)
    }
    /// The pub/sub channel of a gateway channel or pattern.
    pub(super) fn pubsub(&self, channel: &str) -> String {
        format!("{}{channel}", self.prefix)
    }
}
