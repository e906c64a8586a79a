//! hub/: this node's sockets and who listens to what (connection registry, channel and
//! pattern index, fan-out into each socket's bounded outbox, parked sessions). Never awaits:
//! fan-out only pushes shared frames into queues, and the socket's own task writes them.

mod connection;
mod subscribers;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use wsgw_protocol::{CloseCode, glob_match};

use connection::PENDING;
pub use connection::{CatchUp, Connection, OutFrame, Push, ResponseTag};
use subscribers::Subscribers;

use crate::metrics::Metrics;
use crate::time::mono_ms;

/// A connection's identity and topics kept after a disconnect, for `connection_id` resume.
#[derive(Debug, Clone)]
struct Parked {
    user_id: Arc<str>,
    topics: Vec<String>,
    expires_ms: u64,
}

/// One connection of a user, as presence reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PresenceEntry {
    /// The connection id.
    pub connection_id: String,
    /// The node holding it.
    pub node: String,
    /// When it was welcomed, ms since the epoch.
    pub connected_at: u64,
}

/// Figures of this node's hub.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct HubStats {
    /// Sockets registered.
    pub connections: usize,
    /// Distinct channels with at least one local subscriber.
    pub channels: usize,
    /// Distinct patterns with at least one local subscriber.
    pub patterns: usize,
    /// Sessions parked for resume.
    pub parked_sessions: usize,
}

/// This node's sockets and their subscriptions.
pub struct Hub {
    node_id: String,
    next_key: AtomicU64,
    conns: RwLock<HashMap<Arc<str>, Arc<Connection>>>,
    channels: RwLock<HashMap<Arc<str>, Subscribers>>,
    patterns: RwLock<Vec<(Arc<str>, Subscribers)>>,
    /// Each user's sockets, by the socket's own `sub` (never by who listens to `user:<id>`).
    users: RwLock<HashMap<Arc<str>, Subscribers>>,
    parked: Mutex<HashMap<Arc<str>, Parked>>,
    metrics: Metrics,
}

impl Hub {
    /// An empty hub for node `node_id`.
    pub fn new(node_id: String, metrics: Metrics) -> Self {
        Self {
            node_id,
            next_key: AtomicU64::new(1),
            conns: RwLock::new(HashMap::new()),
            channels: RwLock::new(HashMap::new()),
            patterns: RwLock::new(Vec::new()),
            users: RwLock::new(HashMap::new()),
            parked: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Registers a new connection. If its id is already live here (a client resuming before
    /// the old socket was noticed dead), the old socket is closed (4010) and replaced.
    pub fn register(&self, mut conn: Connection) -> Arc<Connection> {
        conn.key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(conn);
        let old = self.conns.write().insert(conn.id.clone(), conn.clone());
        {
            let mut users = self.users.write();
            if let Some(old) = &old {
                unindex_user(&mut users, old);
            }
            users
                .entry(conn.user_id.clone())
                .or_default()
                .insert(conn.key, conn.clone());
        }
        if let Some(old) = old {
            old.replace();
            self.unsubscribe_all(&old);
        }
        conn
    }

    /// Removes a connection and all its subscriptions. Returns the channels and patterns that
    /// no local connection listens to any more (for the broker to release).
    pub fn remove(&self, conn: &Arc<Connection>) -> Vec<Arc<str>> {
        {
            let mut conns = self.conns.write();
            if conns.get(&conn.id).is_some_and(|c| Arc::ptr_eq(c, conn)) {
                conns.remove(&conn.id);
            }
        }
        unindex_user(&mut self.users.write(), conn);
        self.unsubscribe_all(conn)
    }

    fn unsubscribe_all(&self, conn: &Arc<Connection>) -> Vec<Arc<str>> {
        let channels = std::mem::take(&mut *conn.channels.lock());
        channels.into_iter().filter(|c| self.unindex(conn, c)).collect()
    }

    /// The number of connections registered.
    pub fn connection_count(&self) -> usize {
        self.conns.read().len()
    }

    /// Connections of one user (sockets whose token's `sub` is `user_id`) on this node.
    pub fn user_connection_count(&self, user_id: &str) -> usize {
        self.users.read().get(user_id).map_or(0, |s| s.len())
    }

    /// Adds `conn` to `channel` (or pattern). Returns true when it is the first local
    /// subscriber (the broker must start listening), false also when already subscribed.
    pub fn subscribe(&self, conn: &Arc<Connection>, channel: &str) -> bool {
        let is_pattern = channel.contains('*');
        // One allocation of the name per node, shared by the index and every socket's list.
        let known = if is_pattern {
            self.patterns
                .read()
                .iter()
                .find(|(p, _)| &**p == channel)
                .map(|(p, _)| p.clone())
        } else {
            self.channels.read().get_key_value(channel).map(|(k, _)| k.clone())
        };
        let name = known.unwrap_or_else(|| Arc::from(channel));
        {
            let mut chans = conn.channels.lock();
            if chans.iter().any(|c| &**c == channel) {
                return false;
            }
            chans.push(name.clone());
        }
        if is_pattern {
            // Exact from the snapshot its replay takes (`finish_replay`); nothing passes before.
            conn.outbox.lock().patterns.push((name.clone(), PENDING));
            let mut pats = self.patterns.write();
            if let Some((_, subs)) = pats.iter_mut().find(|(p, _)| &**p == channel) {
                subs.insert(conn.key, conn.clone());
                false
            } else {
                let mut subs = Subscribers::default();
                subs.insert(conn.key, conn.clone());
                pats.push((name, subs));
                true
            }
        } else {
            let mut chans = self.channels.write();
            match chans.get_mut(channel) {
                Some(subs) => {
                    subs.insert(conn.key, conn.clone());
                    false
                }
                None => {
                    let mut subs = Subscribers::default();
                    subs.insert(conn.key, conn.clone());
                    chans.insert(name, subs);
                    true
                }
            }
        }
    }

    /// Removes `conn` from `channel`. Returns true when no local subscriber is left.
    pub fn unsubscribe(&self, conn: &Arc<Connection>, channel: &str) -> bool {
        {
            let mut chans = conn.channels.lock();
            let Some(pos) = chans.iter().position(|c| &**c == channel) else {
                return false;
            };
            chans.swap_remove(pos);
        }
        if channel.contains('*') {
            conn.outbox.lock().patterns.retain(|(p, _)| &**p != channel);
        }
        self.unindex(conn, channel)
    }

    fn unindex(&self, conn: &Arc<Connection>, channel: &str) -> bool {
        if channel.contains('*') {
            let mut pats = self.patterns.write();
            if let Some(pos) = pats.iter().position(|(p, _)| &**p == channel) {
                pats[pos].1.swap_remove(&conn.key);
                if pats[pos].1.is_empty() {
                    pats.swap_remove(pos);
                    return true;
                }
            }
            false
        } else {
            let mut chans = self.channels.write();
            if let Some(subs) = chans.get_mut(channel) {
                subs.swap_remove(&conn.key);
                if subs.is_empty() {
                    chans.remove(channel);
                    return true;
                }
            }
            false
        }
    }

    /// Whether any local connection listens to `channel` (exactly or by pattern).
    pub fn has_interest(&self, channel: &str) -> bool {
        if channel.contains('*') {
            return self.patterns.read().iter().any(|(p, _)| &**p == channel);
        }
        self.channels.read().contains_key(channel)
    }

    /// Whether a subscribe to `pattern` fits under `max` distinct patterns on this node (a
    /// pattern the node already has always fits).
    pub fn pattern_fits(&self, pattern: &str, max: usize) -> bool {
        let pats = self.patterns.read();
        pats.len() < max || pats.iter().any(|(p, _)| &**p == pattern)
    }

    /// Every channel and pattern with a local subscriber.
    pub fn interests(&self) -> Vec<Arc<str>> {
        let mut all: Vec<Arc<str>> = self.channels.read().keys().cloned().collect();
        all.extend(self.patterns.read().iter().map(|(p, _)| p.clone()));
        all
    }

    /// Fans a frame published on `channel` out to every local subscriber (exact and pattern),
    /// except the connection ids in `exclude`. Returns how many accepted it.
    pub fn deliver(&self, channel: &str, frame: &OutFrame, exclude: &[&str]) -> usize {
        let mut delivered = 0;
        let chans = self.channels.read();
        let exact = chans.get(channel);
        if let Some(subs) = exact {
            for c in subs.values() {
                self.offer(c, channel, false, frame, exclude, &mut delivered);
            }
        }
        let pats = self.patterns.read();
        if !pats.is_empty() {
            // A socket subscribed both exactly and by pattern(s) gets the frame once.
            let mut seen: HashSet<u64> = HashSet::new();
            for (_, subs) in pats.iter().filter(|(p, _)| glob_match(p, channel)) {
                for (key, c) in subs.iter() {
                    if exact.is_some_and(|e| e.contains_key(key)) || !seen.insert(*key) {
                        continue;
                    }
                    self.offer(c, channel, true, frame, exclude, &mut delivered);
                }
            }
        }
        delivered
    }

    /// Delivers to the exact subscribers of `channel` only (a Redis `message`).
    pub fn deliver_exact(&self, channel: &str, frame: &OutFrame, exclude: &[&str]) -> usize {
        let chans = self.channels.read();
        let Some(subs) = chans.get(channel) else { return 0 };
        let mut delivered = 0;
        for c in subs.values() {
            self.offer(c, channel, false, frame, exclude, &mut delivered);
        }
        delivered
    }

    /// Delivers to the subscribers of one pattern (a Redis `pmessage` for `channel`).
    pub fn deliver_pattern(&self, pattern: &str, channel: &str, frame: &OutFrame, exclude: &[&str]) -> usize {
        let chans = self.channels.read();
        let exact = chans.get(channel);
        let pats = self.patterns.read();
        let Some((_, subs)) = pats.iter().find(|(p, _)| &**p == pattern) else {
            return 0;
        };
        let mut delivered = 0;
        for (key, c) in subs.iter() {
            // A socket with an exact subscription gets the channel's `message` too, except for
            // events published before the node's SUBSCRIBE took effect: those come only as this
            // `pmessage`. Durable events are offered anyway (the socket's floor drops the second
            // copy); ephemeral ones have no id to deduplicate, so they wait for the `message`.
            if frame.event_id.is_none() && exact.is_some_and(|e| e.contains_key(key)) {
                continue;
            }
            self.offer(c, channel, true, frame, exclude, &mut delivered);
        }
        delivered
    }

    fn offer(
        &self,
        c: &Arc<Connection>,
        channel: &str,
        via_pattern: bool,
        frame: &OutFrame,
        exclude: &[&str],
        delivered: &mut usize,
    ) {
        if !exclude.is_empty() && exclude.contains(&&*c.id) {
            return;
        }
        match c.push(frame.clone(), channel, via_pattern) {
            Push::Queued => *delivered += 1,
            Push::Overflow => self.metrics.slow_consumers.inc(),
            Push::Duplicate | Push::Closed => {}
        }
    }

    /// Tells every socket following one of `channels` (by name, or through a pattern that
    /// matches it) that events may be missing there: one `gap` frame per socket, naming its
    /// channels and patterns. For repairs that cannot prove a live socket missed nothing.
    pub fn send_gap(&self, channels: &[Arc<str>]) -> usize {
        let mut per_conn: HashMap<u64, (Arc<Connection>, Vec<String>)> = HashMap::new();
        let mut note = |c: &Arc<Connection>, name: &str| {
            let names = &mut per_conn.entry(c.key).or_insert_with(|| (c.clone(), Vec::new())).1;
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        };
        {
            let chans = self.channels.read();
            let pats = self.patterns.read();
            for ch in channels {
                if let Some(subs) = chans.get(ch) {
                    subs.values().for_each(|c| note(c, ch));
                }
                for (p, subs) in pats.iter().filter(|(p, _)| glob_match(p, ch)) {
                    subs.values().for_each(|c| note(c, p));
                }
            }
        }
        let n = per_conn.len();
        for (_, (c, names)) in per_conn {
            let frame = wsgw_protocol::ServerFrame::Gap {
                channels: names,
                recovered: false,
            };
            c.push_control(OutFrame::control(frame.to_json()));
        }
        n
    }

    /// A snapshot of every connection (for the node-wide heartbeat tick and the drain).
    pub fn connections(&self) -> Vec<Arc<Connection>> {
        self.conns.read().values().cloned().collect()
    }

    /// One connection by id.
    pub fn connection(&self, id: &str) -> Option<Arc<Connection>> {
        self.conns.read().get(id).cloned()
    }

    /// Connections of one user (by each socket's own `sub`) on this node.
    pub fn user_connections(&self, user_id: &str) -> Vec<Arc<Connection>> {
        self.users
            .read()
            .get(user_id)
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Presence entries of one user on this node.
    pub fn presence(&self, user_id: &str) -> Vec<PresenceEntry> {
        self.user_connections(user_id)
            .into_iter()
            .map(|c| PresenceEntry {
                connection_id: c.id.to_string(),
                node: self.node_id.clone(),
                connected_at: c.connected_at_ms,
            })
            .collect()
    }

    /// Closes every connection of `user_id` with `code`; returns how many.
    pub fn close_user(&self, user_id: &str, code: CloseCode) -> usize {
        self.user_connections(user_id).iter().filter(|c| c.close(code)).count()
    }

    /// Keeps a closed connection's topics for `ttl_ms` so a client can resume them.
    pub fn park(&self, conn: &Connection, topics: Vec<String>, ttl_ms: u64) {
        let parked = Parked {
            user_id: conn.user_id.clone(),
            topics,
            expires_ms: mono_ms().saturating_add(ttl_ms),
        };
        self.parked.lock().insert(conn.id.clone(), parked);
    }

    /// Takes a parked session back if it exists, has not expired and belongs to `user_id`.
    pub fn unpark(&self, id: &str, user_id: &str) -> Option<Vec<String>> {
        let mut parked = self.parked.lock();
        let p = parked.get(id)?;
        if &*p.user_id != user_id || p.expires_ms < mono_ms() {
            return None;
        }
        parked.remove(id).map(|p| p.topics)
    }

    /// Whether `id` is live here or parked for a different user (a resume must not take it).
    pub fn id_owned_by_other(&self, id: &str, user_id: &str) -> bool {
        if let Some(c) = self.conns.read().get(id) {
            return &*c.user_id != user_id;
        }
        let now = mono_ms();
        self.parked
            .lock()
            .get(id)
            .is_some_and(|p| p.expires_ms >= now && &*p.user_id != user_id)
    }

    /// Drops parked sessions whose time has passed.
    pub fn expire_parked(&self) {
        let now = mono_ms();
        self.parked.lock().retain(|_, p| p.expires_ms >= now);
    }

    /// Figures for stats and the node registry.
    pub fn stats(&self) -> HubStats {
        HubStats {
            connections: self.conns.read().len(),
            channels: self.channels.read().len(),
            patterns: self.patterns.read().len(),
            parked_sessions: self.parked.lock().len(),
        }
    }
}

/// Drops `conn` from its user's entry (no-op when it is not there).
fn unindex_user(users: &mut HashMap<Arc<str>, Subscribers>, conn: &Connection) {
    if let Some(subs) = users.get_mut(&conn.user_id) {
        subs.swap_remove(&conn.key);
        if subs.is_empty() {
            users.remove(&conn.user_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::extract::ws::Utf8Bytes;
    use wsgw_protocol::EventId;

    use super::*;

    fn ev(id: u64, text: &str) -> OutFrame {
        OutFrame {
            text: Utf8Bytes::from(text.to_owned()),
            event_id: Some(EventId::new(id, 0)),
            published_us: 0,
            response: None,
        }
    }

    fn drain(c: &Connection) -> (Vec<String>, Option<CloseCode>) {
        let mut out = Vec::new();
        let close = c.take_batch(&mut out);
        (out.into_iter().map(|f| f.text.to_string()).collect(), close)
    }

    fn live(hub: &Hub, id: &str, cap: usize) -> Arc<Connection> {
        let c = hub.register(Connection::new(Arc::from(id), Arc::from("u"), cap, None));
        c.finish_replay(|_| OutFrame::control("welcome"), vec![], None, None);
        c
    }

    #[test]
    fn replay_then_buffered_live_in_order_without_duplicates() {
        let c = Connection::new(Arc::from("c1"), Arc::from("u"), 100, Some(EventId::new(1, 0)));
        // live events arrive while history is being read; 3 is also in history
        assert_eq!(c.push(ev(3, "e3"), "t", false), Push::Queued);
        assert_eq!(c.push(ev(4, "e4"), "t", false), Push::Queued);
        let n = c.finish_replay(
            |_| OutFrame::control("welcome"),
            vec![ev(2, "e2"), ev(3, "e3")],
            Some(EventId::new(3, 0)),
            None,
        );
        assert_eq!(n, 2);
        assert_eq!(c.push(ev(4, "e4"), "t", false), Push::Duplicate);
        assert_eq!(c.push(ev(5, "e5"), "t", false), Push::Queued);
        assert_eq!(drain(&c).0, ["welcome", "e2", "e3", "e4", "e5"]);
    }

    #[test]
    fn overflow_closes_with_4008_and_drops_the_queue() {
        let hub = Hub::new("n".into(), Metrics::new());
        let c = live(&hub, "c1", 2);
        drain(&c);
        hub.subscribe(&c, "t");
        assert_eq!(c.push(ev(1, "a"), "t", false), Push::Queued);
        assert_eq!(hub.deliver("t", &ev(2, "b"), &[]), 1);
        assert_eq!(
            hub.deliver("t", &ev(3, "c"), &[]),
            0,
            "third frame overflows a queue of 2"
        );
        let (frames, close) = drain(&c);
        assert_eq!(close, Some(CloseCode::SlowConsumer));
        assert!(frames.is_empty());
    }

    #[test]
    fn pattern_and_exact_subscriber_gets_one_copy() {
        let hub = Hub::new("n".into(), Metrics::new());
        let a = live(&hub, "a", 10);
        let b = live(&hub, "b", 10);
        assert!(hub.subscribe(&a, "project:1"));
        assert!(hub.subscribe(&a, "project:*"));
        assert!(!hub.subscribe(&b, "project:*"));
        assert_eq!(hub.deliver("project:1", &OutFrame::control("x"), &[]), 2);
        assert_eq!(drain(&a).0, ["welcome", "x"]);
        assert_eq!(hub.deliver("project:1", &OutFrame::control("y"), &["b"]), 1);
        assert!(!hub.unsubscribe(&a, "project:*"));
        assert!(hub.unsubscribe(&b, "project:*"), "last subscriber leaves the pattern");
        assert_eq!(hub.remove(&a), vec![Arc::<str>::from("project:1")]);
    }

    fn on(id: u64, channel: &str) -> OutFrame {
        ev(id, &format!("{channel}#{id}"))
    }

    #[test]
    fn a_catch_up_on_one_channel_never_drops_older_live_events_of_another() {
        // The socket has chat:1 up to 10; pub/sub lags, so chat:1 events 11..=14 are still on
        // their way when a subscribe to doc:9 reads history up to the snapshot 15.
        let hub = Hub::new("n".into(), Metrics::new());
        let c = live(&hub, "c", 100);
        hub.subscribe(&c, "chat:1");
        assert_eq!(c.push(on(10, "chat:1"), "chat:1", false), Push::Queued);
        drain(&c);
        c.begin_replay();
        hub.subscribe(&c, "doc:9");
        // The broker's sync lets the lagging events through before the snapshot is used.
        for id in 11..=14 {
            assert_eq!(c.push(on(id, "chat:1"), "chat:1", false), Push::Queued);
        }
        let n = c.finish_replay(
            |n| OutFrame::control(format!("subscribed:{n}")),
            vec![on(3, "doc:9"), on(15, "doc:9")],
            Some(EventId::new(15, 0)),
            Some(CatchUp {
                channel: "doc:9",
                from: EventId::new(3, 0),
            }),
        );
        assert_eq!(n, 2);
        assert_eq!(c.push(on(15, "doc:9"), "doc:9", false), Push::Duplicate);
        assert_eq!(c.push(on(16, "chat:1"), "chat:1", false), Push::Queued);
        assert_eq!(
            drain(&c).0,
            [
                "subscribed:2",
                "doc:9#3",
                "chat:1#11",
                "chat:1#12",
                "chat:1#13",
                "chat:1#14",
                "doc:9#15",
                "chat:1#16"
            ]
        );
    }

    #[test]
    fn a_future_last_event_id_does_not_hold_live_events_back() {
        let c = Connection::new(Arc::from("c"), Arc::from("u"), 100, Some(EventId::new(1_000, 0)));
        c.finish_replay(
            |_| OutFrame::control("welcome"),
            vec![],
            Some(EventId::new(20, 0)),
            None,
        );
        assert_eq!(c.push(on(21, "t"), "t", false), Push::Queued);
        assert_eq!(drain(&c).0, ["welcome", "t#21"]);
    }

    #[test]
    fn a_pattern_is_exact_from_its_snapshot_and_a_catch_up_skips_what_it_brought() {
        let hub = Hub::new("n".into(), Metrics::new());
        let c = live(&hub, "c", 100);
        c.begin_replay();
        hub.subscribe(&c, "t:*");
        // Lagging events from before the snapshot reach the socket through the new pattern.
        assert_eq!(c.push(on(4, "t:1"), "t:1", true), Push::Queued);
        c.finish_replay(
            |_| OutFrame::control("psubscribed"),
            vec![],
            Some(EventId::new(5, 0)),
            None,
        );
        for id in 6..=8 {
            assert_eq!(c.push(on(id, "t:1"), "t:1", true), Push::Queued);
        }
        assert_eq!(drain(&c).0, ["welcome", "psubscribed", "t:1#6", "t:1#7", "t:1#8"]);
        // Now t:1 by name, from id 2: 3..=5 are missing, 6..=8 came through the pattern.
        c.begin_replay();
        hub.subscribe(&c, "t:1");
        let replay = (3..=9).map(|id| on(id, "t:1")).collect();
        let n = c.finish_replay(
            |n| OutFrame::control(format!("subscribed:{n}")),
            replay,
            Some(EventId::new(9, 0)),
            Some(CatchUp {
                channel: "t:1",
                from: EventId::new(3, 0),
            }),
        );
        assert_eq!(n, 4);
        assert_eq!(drain(&c).0, ["subscribed:4", "t:1#3", "t:1#4", "t:1#5", "t:1#9"]);
    }

    #[test]
    fn a_users_connections_are_its_own_sockets_not_the_listeners_of_its_channel() {
        let hub = Hub::new("n".into(), Metrics::new());
        let alice = hub.register(Connection::new(Arc::from("a1"), Arc::from("alice"), 10, None));
        let agent = hub.register(Connection::new(Arc::from("s1"), Arc::from("support"), 10, None));
        hub.subscribe(&agent, "user:alice");
        assert_eq!(hub.user_connection_count("alice"), 1);
        assert_eq!(hub.presence("alice").len(), 1);
        assert_eq!(hub.presence("alice")[0].connection_id, "a1");
        assert_eq!(hub.close_user("alice", CloseCode::Kicked), 1);
        assert!(
            agent.close(CloseCode::Kicked),
            "the agent watching user:alice was not kicked"
        );
        // A resumed id replaces the old socket in the index; removal empties it.
        let again = hub.register(Connection::new(Arc::from("a1"), Arc::from("alice"), 10, None));
        assert_eq!(hub.user_connection_count("alice"), 1);
        hub.remove(&alice);
        assert_eq!(
            hub.user_connection_count("alice"),
            1,
            "the stale socket leaves no trace"
        );
        hub.remove(&again);
        assert_eq!(hub.user_connection_count("alice"), 0);
        assert!(hub.users.read().get("alice").is_none());
    }

    #[test]
    fn a_repair_gap_names_channels_and_patterns_once_per_socket() {
        let hub = Hub::new("n".into(), Metrics::new());
        let a = live(&hub, "a", 10);
        let b = live(&hub, "b", 10);
        drain(&a);
        drain(&b);
        hub.subscribe(&a, "t:1");
        hub.subscribe(&a, "t:*");
        hub.subscribe(&b, "t:*");
        assert_eq!(hub.send_gap(&[Arc::from("t:1"), Arc::from("t:2")]), 2);
        assert_eq!(
            drain(&a).0,
            [r#"{"type":"gap","channels":["t:1","t:*"],"recovered":false}"#]
        );
        assert_eq!(drain(&b).0, [r#"{"type":"gap","channels":["t:*"],"recovered":false}"#]);
    }

    #[test]
    fn a_history_window_is_not_preceded_by_older_held_events_of_its_channel() {
        // pub/sub lags: events 5 and 6 of doc:9 are still on their way when `history:2` reads
        // the newest two (7, 8) up to the snapshot 8.
        let hub = Hub::new("n".into(), Metrics::new());
        let c = live(&hub, "c", 100);
        drain(&c);
        c.begin_replay();
        hub.subscribe(&c, "doc:9");
        for id in 5..=8 {
            assert_eq!(c.push(on(id, "doc:9"), "doc:9", false), Push::Queued);
        }
        let n = c.finish_replay(
            |n| OutFrame::control(format!("subscribed:{n}")),
            vec![on(7, "doc:9"), on(8, "doc:9")],
            Some(EventId::new(8, 0)),
            Some(CatchUp {
                channel: "doc:9",
                from: EventId::new(7, 0),
            }),
        );
        assert_eq!(n, 2);
        assert_eq!(drain(&c).0, ["subscribed:2", "doc:9#7", "doc:9#8"]);
    }
}
