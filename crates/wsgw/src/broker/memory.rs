//! memory.rs: the single-node broker. Ids, history and fan-out live in this process; nothing
//! survives a restart (a client resuming with an id from before the start gets
//! `recovered:false`). Publishes are serialised by one lock so ids reach sockets in order.
//! Idempotency keys live in this process too: 24 h each, at most
//! [`MAX_IDEMPOTENCY_KEYS`], the oldest dropped first.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use wsgw_protocol::{EventId, PresenceClient, encode_event};

use super::{
    Broker, BrokerError, ClusterStats, HistoryPage, HistoryQuery, IDEMPOTENCY_TTL_MS, InboundRequest, PublishRequest,
    Resume, StoredEvent,
};
use crate::hub::{Connection, Hub, OutFrame, PresenceEntry};
use crate::presence::{Change, Tracker};
use crate::time::{now_ms, now_us};

/// History limits.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    /// Events kept per channel.
    pub size: usize,
    /// A channel's events are dropped this long after they were published.
    pub ttl_ms: u64,
}

#[derive(Default)]
struct ChannelHistory {
    events: VecDeque<StoredEvent>,
    /// Newest id removed by trimming or expiry: replays from before it are incomplete.
    trimmed_upto: Option<EventId>,
}

/// Most idempotency keys the memory broker remembers; past it, the oldest is forgotten early
/// (a retry with it then publishes again).
pub const MAX_IDEMPOTENCY_KEYS: usize = 100_000;

/// Idempotency keys and the id of their first publish, for [`IDEMPOTENCY_TTL_MS`] and at most
/// `cap` keys. Every key lives equally long and is never refreshed, so insertion order is
/// expiry order: one queue serves both limits.
struct IdempotencyKeys {
    ids: HashMap<String, EventId>,
    /// Keys oldest first, with when they were stored (ms since the epoch).
    order: VecDeque<(String, u64)>,
    cap: usize,
}

impl IdempotencyKeys {
    fn new(cap: usize) -> Self {
        Self {
            ids: HashMap::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    /// Forgets the keys older than the TTL at `now_ms`.
    fn expire(&mut self, now_ms: u64) {
        while let Some((key, at)) = self.order.front() {
            if at.saturating_add(IDEMPOTENCY_TTL_MS) > now_ms {
                break;
            }
            self.ids.remove(key);
            self.order.pop_front();
        }
    }

    /// The first id published with `key`, if it is still remembered at `now_ms`.
    fn get(&mut self, key: &str, now_ms: u64) -> Option<EventId> {
        self.expire(now_ms);
        self.ids.get(key).copied()
    }

    /// Remembers `key` → `id` (the caller checked it was not there).
    fn insert(&mut self, key: String, id: EventId, now_ms: u64) {
        self.ids.insert(key.clone(), id);
        self.order.push_back((key, now_ms));
        while self.order.len() > self.cap {
            if let Some((old, _)) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
    }
}

struct State {
    last_id: EventId,
    channels: HashMap<String, ChannelHistory>,
    /// Newest id of any channel whose whole history (and trim record) was dropped.
    forgotten_upto: Option<EventId>,
    /// Checked and written under the same lock as the publish, so two racing retries with
    /// one key store one event.
    idempotency: IdempotencyKeys,
}

/// The in-process broker.
pub struct MemoryBroker {
    hub: Arc<Hub>,
    limits: HistoryLimits,
    session_ttl_ms: u64,
    /// When this broker started: ids older than this were issued by something we don't hold.
    epoch_ms: u64,
    state: Mutex<State>,
    /// Banned users and when their ban ends, ms since the epoch (node-local).
    bans: Mutex<HashMap<String, u64>>,
    /// Members of presence-tracked channels (all of them: this is the only node).
    presence: Mutex<Tracker>,
}

impl MemoryBroker {
    /// A broker delivering into `hub`.
    pub fn new(hub: Arc<Hub>, limits: HistoryLimits, session_ttl_ms: u64) -> Self {
        let epoch_ms = now_ms();
        Self {
            hub,
            limits,
            session_ttl_ms,
            epoch_ms,
            state: Mutex::new(State {
                last_id: EventId::new(epoch_ms, 0),
                channels: HashMap::new(),
                forgotten_upto: None,
                idempotency: IdempotencyKeys::new(MAX_IDEMPOTENCY_KEYS),
            }),
            bans: Mutex::new(HashMap::new()),
            presence: Mutex::new(Tracker::default()),
        }
    }

    /// Tracks the presence of the channels `patterns` match (`WSGW_PRESENCE_CHANNELS`).
    pub fn with_presence_channels(self, patterns: Vec<String>) -> Self {
        *self.presence.lock() = Tracker::new(patterns);
        self
    }

    /// Sends each `join`/`leave` to the channel's subscribers on this node: ephemeral frames
    /// without an id, so no floor or cursor is touched.
    fn announce(&self, changes: Vec<Change>) {
        for c in changes {
            self.hub.deliver(&c.channel, &OutFrame::control(c.frame()), &[]);
        }
    }

    /// Drops events older than the history TTL. Called by the node's periodic tick.
    pub fn expire(&self) {
        let cutoff = now_ms().saturating_sub(self.limits.ttl_ms);
        let mut st = self.state.lock();
        let mut forgotten = st.forgotten_upto;
        st.channels.retain(|_, h| {
            while h.events.front().is_some_and(|e| e.ts_ms < cutoff) {
                if let Some(e) = h.events.pop_front() {
                    h.trimmed_upto = Some(e.id);
                }
            }
            if h.events.is_empty() {
                forgotten = forgotten.max(h.trimmed_upto);
                return false;
            }
            true
        });
        st.forgotten_upto = forgotten;
        st.idempotency.expire(now_ms());
    }

    fn publish_now(&self, req: PublishRequest) -> EventId {
        let mut st = self.state.lock();
        let ms = now_ms();
        // A retry: the first publish's id, and nothing stored or delivered again.
        if let Some(key) = &req.idempotency_key
            && let Some(first) = st.idempotency.get(key, ms)
        {
            return first;
        }
        let id = if ms > st.last_id.ms {
            EventId::new(ms, 0)
        } else {
            st.last_id.next()
        };
        st.last_id = id;
        if let Some(key) = req.idempotency_key.clone() {
            st.idempotency.insert(key, id, ms);
        }
        let text = encode_event(Some(id), &req.channel, &req.event, &req.data, id.ms);
        let frame = Utf8Bytes::from(text);
        let size = self.limits.size;
        if size > 0 {
            let h = st.channels.entry(req.channel.clone()).or_default();
            let exclude = (!req.exclude.is_empty()).then(|| Arc::from(req.exclude.join(",").as_str()));
            h.events.push_back(StoredEvent {
                id,
                frame: frame.clone(),
                ts_ms: ms,
                exclude,
            });
            while h.events.len() > size {
                if let Some(e) = h.events.pop_front() {
                    h.trimmed_upto = Some(e.id);
                }
            }
        }
        // Delivered under the lock: two publishes can't overtake each other on the way to a
        // socket, which is what lets a socket drop anything at or below its last id.
        let out = OutFrame::event(frame.as_str(), id, now_us());
        let exclude: Vec<&str> = req.exclude.iter().map(String::as_str).collect();
        self.hub.deliver(&req.channel, &out, &exclude);
        id
    }

    fn read(&self, channel: &str, query: HistoryQuery) -> HistoryPage {
        let st = self.state.lock();
        let h = st.channels.get(channel);
        match query {
            HistoryQuery::Last { n, until } => {
                let events = h.map_or_else(Vec::new, |h| {
                    let end = until.map_or(h.events.len(), |u| h.events.partition_point(|e| e.id <= u));
                    let skip = end.saturating_sub(n);
                    h.events.range(skip..end).cloned().collect()
                });
                HistoryPage { events, complete: true }
            }
            HistoryQuery::After { id, limit, until } => {
                let complete = self.limits.size > 0
                    && id.ms >= self.epoch_ms
                    && id <= st.last_id
                    && match h {
                        Some(h) => h.trimmed_upto.is_none_or(|t| t <= id),
                        None => st.forgotten_upto.is_none_or(|t| t <= id),
                    };
                let events = h.map_or_else(Vec::new, |h| {
                    let start = h.events.partition_point(|e| e.id <= id);
                    h.events
                        .iter()
                        .skip(start)
                        .take_while(|e| until.is_none_or(|u| e.id <= u))
                        .take(limit)
                        .cloned()
                        .collect()
                });
                HistoryPage { events, complete }
            }
        }
    }
}

impl Broker for MemoryBroker {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn publish(&self, req: PublishRequest) -> BoxFuture<'_, Result<EventId, BrokerError>> {
        let id = self.publish_now(req);
        Box::pin(async move {
            // With per-core runtimes the fan-out runs on the cores' lanes: a publisher faster
            // than they are waits here rather than growing their queues.
            self.hub.cores_caught_up().await;
            Ok(id)
        })
    }

    fn history<'a>(&'a self, channel: &'a str, query: HistoryQuery) -> BoxFuture<'a, Result<HistoryPage, BrokerError>> {
        let page = self.read(channel, query);
        Box::pin(async move { Ok(page) })
    }

    fn sync<'a>(&'a self, _shards: &'a [u16]) -> BoxFuture<'a, Result<Vec<EventId>, BrokerError>> {
        // Publishes reach the hub under the same lock that issues ids: everything up to the
        // last id issued is offered to its sockets, or (per-core runtimes) sent to their
        // cores' lanes, which the barrier waits out.
        let last = self.state.lock().last_id;
        let (done, answered) = tokio::sync::oneshot::channel();
        self.hub.after_fanouts(done);
        Box::pin(async move {
            answered
                .await
                .map_err(|_| BrokerError::Unavailable("the node is stopping".into()))?;
            Ok(vec![last])
        })
    }

    fn listen<'a>(&'a self, _channels: &'a [Arc<str>]) -> BoxFuture<'a, Result<(), BrokerError>> {
        // The hub is the only subscriber registry a single node needs.
        Box::pin(async { Ok(()) })
    }

    fn unlisten(&self, _channels: &[Arc<str>]) {}

    fn is_ready(&self) -> bool {
        true
    }

    fn connected(&self, conn: &Arc<Connection>) {
        let changes = self.presence.lock().update(conn);
        self.announce(changes);
    }

    fn disconnected(&self, conn: &Arc<Connection>, topics: Vec<String>, park: bool) {
        let changes = self.presence.lock().remove(&conn.id);
        self.announce(changes);
        if park && self.session_ttl_ms > 0 {
            self.hub.park(conn, topics, self.session_ttl_ms);
        }
    }

    fn resume<'a>(&'a self, connection_id: &'a str, user_id: &'a str) -> BoxFuture<'a, Result<Resume, BrokerError>> {
        let r = if self.hub.id_owned_by_other(connection_id, user_id) {
            Resume::OwnedByOther
        } else {
            match self.hub.unpark(connection_id, user_id) {
                Some(topics) => Resume::Topics(topics),
                None => Resume::Fresh,
            }
        };
        Box::pin(async move { Ok(r) })
    }

    fn presence<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Vec<PresenceEntry>, BrokerError>> {
        let p = self.hub.presence(user_id);
        Box::pin(async move { Ok(p) })
    }

    fn channel_presence<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<Vec<PresenceClient>, BrokerError>> {
        let node = self.hub.node_id();
        let clients = self
            .presence
            .lock()
            .members(channel)
            .iter()
            .map(|c| c.client(node))
            .collect();
        Box::pin(async move { Ok(clients) })
    }

    fn cluster(&self) -> BoxFuture<'_, Result<ClusterStats, BrokerError>> {
        let stats = ClusterStats {
            nodes: 1,
            connections: self.hub.connection_count(),
            node_ids: vec![self.hub.node_id().to_string()],
        };
        Box::pin(async move { Ok(stats) })
    }

    fn kick_user<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<usize, BrokerError>> {
        let n = self.hub.close_user(user_id, wsgw_protocol::CloseCode::Kicked);
        Box::pin(async move { Ok(n) })
    }

    fn ban<'a>(&'a self, user_id: &'a str, ttl_s: u64) -> BoxFuture<'a, Result<usize, BrokerError>> {
        let until = now_ms().saturating_add(ttl_s.saturating_mul(1000));
        {
            let mut bans = self.bans.lock();
            let now = now_ms();
            bans.retain(|_, end| *end > now);
            bans.insert(user_id.to_owned(), until);
        }
        let n = self.hub.close_user(user_id, wsgw_protocol::CloseCode::Kicked);
        Box::pin(async move { Ok(n) })
    }

    fn unban<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<bool, BrokerError>> {
        let now = now_ms();
        let was = self.bans.lock().remove(user_id).is_some_and(|end| end > now);
        Box::pin(async move { Ok(was) })
    }

    fn is_banned<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<bool, BrokerError>> {
        let now = now_ms();
        let banned = self.bans.lock().get(user_id).is_some_and(|end| *end > now);
        Box::pin(async move { Ok(banned) })
    }

    fn kick_connection<'a>(&'a self, connection_id: &'a str) -> BoxFuture<'a, Result<bool, BrokerError>> {
        let found = self
            .hub
            .connection(connection_id)
            .is_some_and(|c| c.close(wsgw_protocol::CloseCode::Kicked));
        Box::pin(async move { Ok(found) })
    }

    fn request(&self, _req: InboundRequest) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async {
            Err(BrokerError::Unavailable(
                "no backend can be reached: requests need the Redis broker (WSGW_REDIS_URL)".into(),
            ))
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use serde_json::value::RawValue;

    fn broker(size: usize) -> MemoryBroker {
        let hub = Arc::new(Hub::new("n".into(), Metrics::new()));
        MemoryBroker::new(hub, HistoryLimits { size, ttl_ms: 60_000 }, 0)
    }

    fn publish(b: &MemoryBroker, channel: &str) -> EventId {
        b.publish_now(PublishRequest {
            channel: channel.into(),
            event: "e".into(),
            data: RawValue::from_string("1".into()).unwrap(),
            exclude: vec![],
            idempotency_key: None,
        })
    }

    #[test]
    fn an_idempotency_key_is_forgotten_after_24_hours() {
        let mut keys = IdempotencyKeys::new(10);
        let t0 = 1_700_000_000_000;
        keys.insert("k".into(), EventId::new(t0, 0), t0);
        assert_eq!(keys.get("k", t0 + IDEMPOTENCY_TTL_MS - 1), Some(EventId::new(t0, 0)));
        assert_eq!(keys.get("k", t0 + IDEMPOTENCY_TTL_MS), None);
        assert!(keys.ids.is_empty() && keys.order.is_empty());
    }

    #[test]
    fn past_the_cap_the_oldest_idempotency_key_is_dropped_first() {
        let mut keys = IdempotencyKeys::new(3);
        let t0 = 1_700_000_000_000;
        for i in 0..5u64 {
            keys.insert(format!("k{i}"), EventId::new(t0 + i, 0), t0 + i);
        }
        assert_eq!(keys.ids.len(), 3);
        assert_eq!(keys.get("k0", t0 + 5), None);
        assert_eq!(keys.get("k1", t0 + 5), None);
        assert_eq!(keys.get("k2", t0 + 5), Some(EventId::new(t0 + 2, 0)));
        assert_eq!(keys.get("k4", t0 + 5), Some(EventId::new(t0 + 4, 0)));
    }

    #[test]
    fn a_retried_key_returns_the_first_id_and_stores_nothing() {
        let b = broker(10);
        let req = |data: &str| PublishRequest {
            channel: "a".into(),
            event: "e".into(),
            data: RawValue::from_string(data.into()).unwrap(),
            exclude: vec![],
            idempotency_key: Some("order-7".into()),
        };
        let first = b.publish_now(req("1"));
        assert_eq!(b.publish_now(req("2")), first, "the body is not compared");
        let other = publish(&b, "a");
        assert!(other > first);
        let page = b.read("a", HistoryQuery::Last { n: 10, until: None });
        assert_eq!(page.events.iter().map(|e| e.id).collect::<Vec<_>>(), [first, other]);
    }

    #[test]
    fn ids_grow_across_channels() {
        let b = broker(10);
        let ids: Vec<EventId> = (0..50)
            .map(|i| publish(&b, if i % 2 == 0 { "a" } else { "b" }))
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn trimming_past_the_id_makes_replay_incomplete() {
        let b = broker(3);
        let first = publish(&b, "a");
        let ids: Vec<EventId> = (0..5).map(|_| publish(&b, "a")).collect();
        let page = b.read(
            "a",
            HistoryQuery::After {
                id: first,
                limit: 100,
                until: None,
            },
        );
        assert!(!page.complete, "events after {first} were trimmed");
        assert_eq!(page.events.iter().map(|e| e.id).collect::<Vec<_>>(), ids[2..]);
        let page = b.read(
            "a",
            HistoryQuery::After {
                id: ids[1],
                limit: 100,
                until: None,
            },
        );
        assert!(page.complete);
        assert_eq!(page.events.len(), 3);
        // an untouched channel is complete even though global ids moved on
        assert!(
            b.read(
                "quiet",
                HistoryQuery::After {
                    id: first,
                    limit: 10,
                    until: None
                }
            )
            .complete
        );
    }

    #[test]
    fn ids_from_before_start_or_from_the_future_are_not_recoverable() {
        let b = broker(3);
        let id = publish(&b, "a");
        assert!(
            !b.read(
                "a",
                HistoryQuery::After {
                    id: EventId::new(1, 0),
                    limit: 10,
                    until: None,
                }
            )
            .complete
        );
        assert!(
            !b.read(
                "a",
                HistoryQuery::After {
                    id: EventId::new(id.ms + 10_000, 0),
                    limit: 10,
                    until: None,
                }
            )
            .complete
        );
    }
}
