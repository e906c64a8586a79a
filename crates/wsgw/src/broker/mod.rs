//! broker/: how events get from a publisher to every node's hub, and where history lives.
//! `memory` serves one node with no dependencies (the default); a Redis broker plugs in behind
//! the same trait. A broker never writes to sockets: it hands frames to the hub.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use futures_util::future::BoxFuture;
use serde_json::value::RawValue;
use wsgw_protocol::{EventId, PresenceClient};

pub use memory::MemoryBroker;
pub use redis::RedisBroker;

use crate::hub::{Connection, PresenceEntry};

/// A durable publish.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// Target channel (validated by the caller; never a pattern).
    pub channel: String,
    /// Event name.
    pub event: String,
    /// JSON payload, embedded in the frame as is.
    pub data: Box<RawValue>,
    /// Connection ids that must not receive it (e.g. the publishing socket).
    pub exclude: Vec<String>,
    /// A retried publish with the same key (already checked with
    /// [`validate_idempotency_key`]) within [`IDEMPOTENCY_TTL_MS`] returns the first event's
    /// id and stores nothing. Keys are global (not per channel) and the body is not compared.
    pub idempotency_key: Option<String>,
}

/// How long an idempotency key remembers the id of its first publish: 24 h (the Function's
/// `IDEMPOTENCY_TTL_MS` is the same).
pub const IDEMPOTENCY_TTL_MS: u64 = 86_400_000;

/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// An idempotency key is 1..=256 bytes of printable ASCII without spaces (`!`..=`~`), the
/// same rule `wsgw_publish` applies to its 7th argument.
pub fn validate_idempotency_key(key: &str) -> Result<(), String> {
    if (1..=MAX_IDEMPOTENCY_KEY_LEN).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(format!(
            "an idempotency key must be 1..={MAX_IDEMPOTENCY_KEY_LEN} bytes of printable ASCII without spaces (! to ~)"
        ))
    }
}

/// One event as kept in a channel's history.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Its id.
    pub id: EventId,
    /// The exact frame clients receive.
    pub frame: Utf8Bytes,
    /// Publish time, ms since the epoch.
    pub ts_ms: u64,
    /// Connection ids excluded from it (comma-separated), kept so replays honour them too.
    pub exclude: Option<Arc<str>>,
}

impl StoredEvent {
    /// Whether `connection_id` was excluded from this event.
    pub fn excludes(&self, connection_id: &str) -> bool {
        self.exclude
            .as_deref()
            .is_some_and(|x| x.split(',').any(|c| c == connection_id))
    }
}

/// What part of a channel's history to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryQuery {
    /// Events with id greater than `id`, oldest first, at most `limit`.
    After {
        /// Exclusive lower bound.
        id: EventId,
        /// Most events to return.
        limit: usize,
        /// Inclusive upper bound (a snapshot from [`Broker::sync`]); `None`: the newest.
        until: Option<EventId>,
    },
    /// The newest `n` events at or below `until`, oldest first.
    Last {
        /// How many.
        n: usize,
        /// Inclusive upper bound (a snapshot from [`Broker::sync`]); `None`: the newest.
        until: Option<EventId>,
    },
}

/// A page of history.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    /// Events, oldest first.
    pub events: Vec<StoredEvent>,
    /// For `After`: false when events after the id may have been lost (trimmed, expired, or
    /// the broker's data is younger than the id). Always true for `Last`.
    pub complete: bool,
}

/// Why a broker operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached now (connection refused or lost, timeout, pool); the
    /// caller should answer 503 / `unavailable`.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the input (e.g. `wsgw_publish` refusing its arguments): 400 /
    /// `bad_request`.
    #[error("refused by the broker: {0}")]
    BadRequest(String),
    /// The broker answered with something unexpected (a bug): 500 / `internal`.
    #[error("broker error: {0}")]
    Internal(String),
}

impl BrokerError {
    /// The error code a client gets for it.
    pub fn code(&self) -> wsgw_protocol::ErrorCode {
        match self {
            Self::Unavailable(_) => wsgw_protocol::ErrorCode::Unavailable,
            Self::BadRequest(_) => wsgw_protocol::ErrorCode::BadRequest,
            Self::Internal(_) => wsgw_protocol::ErrorCode::Internal,
        }
    }
}

/// The seam between the hub and where events travel.
pub trait Broker: Send + Sync + 'static {
    /// `memory` or `redis`.
    fn kind(&self) -> &'static str;

    /// Durable publish: assigns the next global id, keeps the event in the channel's history
    /// and delivers it to every subscriber in the cluster.
    fn publish(&self, req: PublishRequest) -> BoxFuture<'_, Result<EventId, BrokerError>>;

    /// Reads a channel's history.
    fn history<'a>(&'a self, channel: &'a str, query: HistoryQuery) -> BoxFuture<'a, Result<HistoryPage, BrokerError>>;

    /// Starts listening to channels (or patterns) that just got their first local subscriber;
    /// resolves once events published from now on will reach the hub.
    fn listen<'a>(&'a self, channels: &'a [Arc<str>]) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Stops listening to channels that lost their last local subscriber.
    fn unlisten(&self, channels: &[Arc<str>]);

    /// The id-shard `channel` lives in (a Redis Cluster's, docs/scaling.md); `None` where the
    /// broker keeps one global sequence.
    fn shard_of(&self, _channel: &str) -> Option<u16> {
        None
    }

    /// The replay snapshot: returns the newest id issued so far (`S`), and resolves only once
    /// every event up to `S` on a channel this node listens to has been handed to the hub. A
    /// replay reads history up to `S` after this, so replay and live stream meet without a gap
    /// or an overlap that could reorder a channel. With one global sequence that is one id and
    /// `shards` is ignored; with id-shards, one id per shard in `shards` (each shard's sequence
    /// is its own).
    fn sync<'a>(&'a self, shards: &'a [u16]) -> BoxFuture<'a, Result<Vec<EventId>, BrokerError>>;

    /// Whether the broker can serve now (feeds `/ready`).
    fn is_ready(&self) -> bool;

    /// A socket was welcomed, or its subscriptions changed: (re)write its presence (fire and
    /// forget; batched).
    fn connected(&self, conn: &Arc<Connection>);

    /// A socket closed: drop its presence and, when `park` is set, keep its identity and
    /// topics for `session_ttl` so a client can resume them (fire and forget).
    fn disconnected(&self, conn: &Arc<Connection>, topics: Vec<String>, park: bool);

    /// Takes back a parked session for `connection_id` if `user_id` owns it.
    fn resume<'a>(&'a self, connection_id: &'a str, user_id: &'a str) -> BoxFuture<'a, Result<Resume, BrokerError>>;

    /// Connections of a user, cluster-wide where the broker knows the cluster.
    fn presence<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Vec<PresenceEntry>, BrokerError>>;

    /// Members of a presence-tracked channel (the caller checked it is tracked), cluster-wide
    /// where the broker knows the cluster; at most [`crate::presence::MAX_PRESENCE_CLIENTS`].
    /// The `join`/`leave` frames come from `connected` and `disconnected`, which bring a
    /// socket's memberships in line with its subscriptions.
    fn channel_presence<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<Vec<PresenceClient>, BrokerError>>;

    /// Nodes and connections across the cluster.
    fn cluster(&self) -> BoxFuture<'_, Result<ClusterStats, BrokerError>>;

    /// Closes every socket of a user with 4004, on every node. Returns how many were known.
    fn kick_user<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<usize, BrokerError>>;

    /// Closes one socket with 4004, wherever it is. Returns whether it was known.
    fn kick_connection<'a>(&'a self, connection_id: &'a str) -> BoxFuture<'a, Result<bool, BrokerError>>;

    /// Bans a user for `ttl_s` seconds (cluster-wide where the broker knows the cluster: a
    /// key with that TTL) and closes their sockets with 4004 everywhere. Returns how many
    /// sockets were known.
    /// (The defaults, for test doubles, fail: a broker that cannot tell refuses connects.)
    fn ban<'a>(&'a self, _user_id: &'a str, _ttl_s: u64) -> BoxFuture<'a, Result<usize, BrokerError>> {
        Box::pin(async { Err(BrokerError::Internal("this broker keeps no bans".into())) })
    }

    /// Lifts a ban. Returns whether there was one.
    fn unban<'a>(&'a self, _user_id: &'a str) -> BoxFuture<'a, Result<bool, BrokerError>> {
        Box::pin(async { Err(BrokerError::Internal("this broker keeps no bans".into())) })
    }

    /// Whether a user is banned now (checked on every connect).
    fn is_banned<'a>(&'a self, _user_id: &'a str) -> BoxFuture<'a, Result<bool, BrokerError>> {
        Box::pin(async { Err(BrokerError::Internal("this broker keeps no bans".into())) })
    }

    /// Hands a client `request` to the backends (the `<prefix>inbound` stream). Resolves once
    /// it is stored; the answer comes back as `response` frames on `connection:<id>`.
    fn request(&self, req: InboundRequest) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Clean leave at shutdown: removes this node's presence and registry entries.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

/// A client `request` on its way to the backends.
#[derive(Debug, Clone)]
pub struct InboundRequest {
    /// The asking socket: backends answer on `connection:<connection_id>`.
    pub connection_id: String,
    /// The token's `sub`.
    pub user_id: String,
    /// The node holding the socket.
    pub node: String,
    /// The client's `request_id`, as JSON text.
    pub request_id: String,
    /// What the backend should do.
    pub action: String,
    /// The payload, as JSON text.
    pub data: String,
    /// What a backend needs to authorise: sub, channels, publish, actions, exp (JSON text).
    pub claims: String,
}

/// The outcome of a `connection_id` resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Parked by the same user: its topics.
    Topics(Vec<String>),
    /// Unknown or expired: a fresh session under that id.
    Fresh,
    /// Live or parked for another user: the id must not be taken.
    OwnedByOther,
}

/// Cluster-wide figures.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClusterStats {
    /// Live nodes.
    pub nodes: usize,
    /// Sockets across live nodes.
    pub connections: usize,
    /// The nodes' ids.
    pub node_ids: Vec<String>,
}
