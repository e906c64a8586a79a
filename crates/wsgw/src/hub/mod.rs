//! hub/: this node's sockets and who listens to what (connection registry, channel and
//! pattern index, fan-out into each socket's bounded outbox, parked sessions). Never awaits:
//! a fan-out offers one shared frame to each socket, which writes it at once without blocking
//! (the first `DIRECT_FANOUT` sockets, and more as `direct.rs` allows, when nothing is queued
//! for them) or queues it for the socket's own task.

mod burst;
mod connection;
mod core_fanout;
mod deflated;
mod direct;
mod floors;
mod prefetch;
mod subscribers;
#[cfg(test)]
mod test_wire;
mod tick_table;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use wsgw_protocol::{CloseCode, glob_match};

pub use burst::Burst;
pub use burst::FlushBatch;
use connection::PENDING;
pub use connection::{CatchUp, Connection, Flush, OutFrame, Push, ResponseTag, TickNow, Written};
pub use core_fanout::CoreLane;
use core_fanout::{CORE_SHIFT, Want, core_of};
use direct::{DIRECT_CAP, DirectBudget};
use subscribers::Subscribers;
use tick_table::TickTable;

use crate::metrics::Metrics;
use crate::time::{mono_ms, now_us};

/// How many sockets of one fan-out always may get the frame written straight from the fan-out
/// loop; past them, as far as `direct.rs` allows, and the rest are queued for their own tasks. A
/// fan-out runs on one thread: written directly with nothing to batch them, broadcasts to
/// thousands of sockets at a high rate keep one core busy with their writes while the others
/// idle, and fall behind their input (measured before bursts: the pub/sub connection was dropped
/// for its output buffer; 50 broadcasts a second to 5,000 sockets took 2.3 times the CPU with a
/// p99 of 3 s). Queued, the writes spread over every worker thread and batch several frames per
/// write when sockets lag; a reader that is behind bursts (burst.rs). Small fan-outs (a user's
/// own channel, a small room) save the task wake-up per delivery.
const DIRECT_FANOUT: usize = 16;

/// What one fan-out did: sockets offered the frame, those that accepted it, and how many of
/// them got it written at once.
#[derive(Default)]
struct Tally {
    offered: usize,
    delivered: usize,
    sent: u64,
    /// Bytes on the wire of the frames written at once.
    sent_bytes: u64,
    /// In a burst: by core, the sockets it queued for without waking their tasks.
    waiting: Vec<FlushBatch>,
    /// When the fan-out began, and how long it may keep writing directly past the first
    /// `DIRECT_FANOUT` sockets (see `direct.rs`); `budgeted` when that is paid from the hub's
    /// idle-time budget.
    started: Option<Instant>,
    budgeted: bool,
    allowed: Duration,
    direct_open: bool,
    /// Part of a burst (burst.rs): queue without waking; the burst's end writes. Only a small
    /// fan-out's first frame for a socket is written at once.
    burst: bool,
    /// In a burst: the sockets it already wrote a frame to at once, lent by the burst.
    written: Vec<u64>,
}

/// Which fan-out a tally is for, which decides how far it writes directly.
#[derive(Clone, Copy)]
enum Fanout {
    /// Part of a burst: queues, and the burst's end writes, except a small fan-out's first
    /// frame for a socket (burst.rs).
    Burst,
    /// A pub/sub reader's frame that found nothing waiting behind it. Such a reader bursts
    /// when it falls behind, so each of its fan-outs may write directly for up to
    /// `DIRECT_CAP` of its own.
    Reader,
    /// Any other (a memory-broker publish, a repair): direct writes past the first sockets
    /// are paid from the hub's idle time (`direct.rs`), so that a node publishing faster than
    /// it writes queues, and its sockets' tasks write several frames at once.
    Budgeted,
}

impl Fanout {
    fn from_reader(in_burst: bool) -> Self {
        if in_burst { Fanout::Burst } else { Fanout::Reader }
    }
}

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
    /// What the node-wide tick reads of each socket in `conns`, side by side (tick_table.rs).
    ticks: Arc<TickTable>,
    channels: RwLock<HashMap<Arc<str>, Subscribers>>,
    patterns: RwLock<Vec<(Arc<str>, Subscribers)>>,
    /// Each user's sockets, by the socket's own `sub` (never by who listens to `user:<id>`).
    users: RwLock<HashMap<Arc<str>, Subscribers>>,
    parked: Mutex<HashMap<Arc<str>, Parked>>,
    metrics: Metrics,
    /// `compression_min_bytes` when compression is on: a fan-out of a text frame this long
    /// gives it one compressed-forms cache that every recipient shares.
    compress_from: Option<usize>,
    /// With per-core runtimes, each core's fan-out lane (see core_fanout.rs).
    lanes: std::sync::OnceLock<Vec<CoreLane>>,
    direct: Mutex<DirectBudget>,
    /// The most frames and bytes one burst may hold (burst.rs).
    burst_bounds: (usize, usize),
}

impl Hub {
    /// An empty hub for node `node_id`.
    pub fn new(node_id: String, metrics: Metrics) -> Self {
        Self {
            node_id,
            next_key: AtomicU64::new(1),
            conns: RwLock::new(HashMap::new()),
            ticks: Arc::default(),
            channels: RwLock::new(HashMap::new()),
            patterns: RwLock::new(Vec::new()),
            users: RwLock::new(HashMap::new()),
            parked: Mutex::new(HashMap::new()),
            metrics,
            compress_from: None,
            lanes: std::sync::OnceLock::new(),
            direct: Mutex::new(DirectBudget::new(Instant::now())),
            burst_bounds: (1, 1),
        }
    }

    /// Shares compressed forms of text frames of at least `min_bytes` across each fan-out
    /// (compression is on).
    pub fn with_compression(mut self, min_bytes: usize) -> Self {
        self.compress_from = Some(min_bytes);
        self
    }

    /// `frame` as the recipients of one fan-out get it: with a cache for its compressed bytes
    /// when compression is on and it qualifies, so it is compressed once, not per socket.
    fn shared<'a>(&self, frame: &'a OutFrame) -> std::borrow::Cow<'a, OutFrame> {
        match self.compress_from {
            Some(min) if frame.deflated.is_none() && frame.compressible(min) => {
                std::borrow::Cow::Owned(frame.with_deflate_cache())
            }
            _ => std::borrow::Cow::Borrowed(frame),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Registers a new connection. If its id is already live here (a client resuming before
    /// the old socket was noticed dead), the old socket is closed (4010) and replaced.
    pub fn register(&self, mut conn: Connection) -> Arc<Connection> {
        // The socket's core rides in the key's top bits: a per-core fan-out finds which cores
        // have subscribers without reading a socket (core_fanout.rs).
        conn.key = self.next_key.fetch_add(1, Ordering::Relaxed) | (conn.core() as u64) << CORE_SHIFT;
        conn.tick = self.ticks.take(conn.key, &conn.tick);
        let conn = Arc::new(conn);
        self.ticks.bind(&conn);
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
            old.tick.unlist();
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
        conn.tick.unlist();
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
    /// except the connection ids in `exclude`. Returns how many accepted it (with per-core
    /// runtimes, how many subscribers it was sent to).
    pub fn deliver(&self, channel: &str, frame: &OutFrame, exclude: &[&str]) -> usize {
        self.deliver_to(Want::All, channel, frame, exclude, Fanout::Budgeted, None)
    }

    /// Delivers to the exact subscribers of `channel` only (a Redis `message`), as part of
    /// `burst` if given (burst.rs).
    pub fn deliver_exact(&self, channel: &str, frame: &OutFrame, exclude: &[&str], burst: Option<&mut Burst>) -> usize {
        let fanout = Fanout::from_reader(burst.is_some());
        self.deliver_to(Want::Exact, channel, frame, exclude, fanout, burst)
    }

    /// Delivers to the subscribers of one pattern (a Redis `pmessage` for `channel`), as part
    /// of `burst` if given (burst.rs).
    pub fn deliver_pattern(
        &self,
        pattern: &str,
        channel: &str,
        frame: &OutFrame,
        exclude: &[&str],
        burst: Option<&mut Burst>,
    ) -> usize {
        let fanout = Fanout::from_reader(burst.is_some());
        self.deliver_to(Want::Pattern(pattern), channel, frame, exclude, fanout, burst)
    }

    /// A fan-out to the subscribers `want` names: through the cores' lanes with per-core
    /// runtimes (core_fanout.rs), unless it is small enough to offer here.
    fn deliver_to(
        &self,
        want: Want<&str>,
        channel: &str,
        frame: &OutFrame,
        exclude: &[&str],
        fanout: Fanout,
        mut burst: Option<&mut Burst>,
    ) -> usize {
        if let Some(lanes) = self.lanes.get()
            && let Some(found) = self.to_cores(lanes, want, channel, frame, exclude)
        {
            return found;
        }
        let frame = &*self.shared(frame);
        let mut delivered = self.tally(fanout);
        if let Some(b) = burst.as_deref_mut() {
            delivered.written = b.lend_written();
        }
        self.fan(want, channel, frame, exclude, &mut delivered, None);
        self.record(frame, delivered, burst)
    }

    /// Offers `frame` to the subscribers `want` names, or with `only`, to those on that core.
    fn fan(
        &self,
        want: Want<&str>,
        channel: &str,
        frame: &OutFrame,
        exclude: &[&str],
        tally: &mut Tally,
        only: Option<usize>,
    ) {
        match want {
            Want::Exact => self.fan_exact(channel, frame, exclude, tally, only),
            Want::Pattern(p) => self.fan_pattern(p, channel, frame, exclude, tally, only),
            Want::All => self.fan_all(channel, frame, exclude, tally, only),
        }
    }

    /// Offers `frame` to the exact and pattern subscribers of `channel` (each once), or with
    /// `only`, to those on that core.
    fn fan_all(&self, channel: &str, frame: &OutFrame, exclude: &[&str], tally: &mut Tally, only: Option<usize>) {
        let skip = |key: &u64| only.is_some_and(|k| core_of(*key) != k);
        let chans = self.channels.read();
        let exact = chans.get(channel);
        if let Some(subs) = exact {
            prefetch::for_each_warmed(subs.iter(), |key, c| {
                if !skip(key) {
                    self.offer(c, channel, false, frame, exclude, tally);
                }
            });
        }
        let pats = self.patterns.read();
        if !pats.is_empty() {
            // A socket subscribed both exactly and by pattern(s) gets the frame once.
            let mut seen: HashSet<u64> = HashSet::new();
            for (_, subs) in pats.iter().filter(|(p, _)| glob_match(p, channel)) {
                for (key, c) in subs.iter() {
                    if skip(key) || exact.is_some_and(|e| e.contains_key(key)) || !seen.insert(*key) {
                        continue;
                    }
                    self.offer(c, channel, true, frame, exclude, tally);
                }
            }
        }
    }

    /// Offers `frame` to the exact subscribers of `channel`, or with `only`, to those on that
    /// core.
    fn fan_exact(&self, channel: &str, frame: &OutFrame, exclude: &[&str], tally: &mut Tally, only: Option<usize>) {
        let chans = self.channels.read();
        let Some(subs) = chans.get(channel) else { return };
        prefetch::for_each_warmed(subs.iter(), |key, c| {
            if only.is_none_or(|k| core_of(*key) == k) {
                self.offer(c, channel, false, frame, exclude, tally);
            }
        });
    }

    /// Offers `frame`, published on `channel`, to the subscribers of `pattern`, or with
    /// `only`, to those on that core.
    fn fan_pattern(
        &self,
        pattern: &str,
        channel: &str,
        frame: &OutFrame,
        exclude: &[&str],
        tally: &mut Tally,
        only: Option<usize>,
    ) {
        let chans = self.channels.read();
        let exact = chans.get(channel);
        let pats = self.patterns.read();
        let Some((_, subs)) = pats.iter().find(|(p, _)| &**p == pattern) else {
            return;
        };
        prefetch::for_each_warmed(subs.iter(), |key, c| {
            if only.is_some_and(|k| core_of(*key) != k) {
                return;
            }
            // A socket with an exact subscription gets the channel's `message` too, except for
            // events published before the node's SUBSCRIBE took effect: those come only as this
            // `pmessage`. Durable events are offered anyway (the socket's floor drops the second
            // copy); ephemeral ones have no id to deduplicate, so they wait for the `message`.
            if frame.event_id.is_none() && exact.is_some_and(|e| e.contains_key(key)) {
                return;
            }
            self.offer(c, channel, true, frame, exclude, tally);
        });
    }

    /// A fan-out's tally, with its share of direct writes (see `direct.rs`); none in a burst,
    /// whose end writes.
    fn tally(&self, kind: Fanout) -> Tally {
        if let Fanout::Burst = kind {
            return Tally {
                burst: true,
                ..Tally::default()
            };
        }
        let now = Instant::now();
        let budgeted = matches!(kind, Fanout::Budgeted);
        Tally {
            started: Some(now),
            // A reader's own time, not the hub's: a reader that falls behind bursts instead.
            allowed: if budgeted {
                self.direct.lock().begin(now)
            } else {
                DIRECT_CAP
            },
            budgeted,
            direct_open: true,
            ..Tally::default()
        }
    }

    /// Counts the frames `offer` wrote straight to sockets (once per fan-out, not per socket);
    /// returns how many sockets accepted the frame.
    fn record(&self, frame: &OutFrame, tally: Tally, burst: Option<&mut Burst>) -> usize {
        if let Some(started) = tally.started.filter(|_| tally.budgeted) {
            self.direct.lock().end(started, Instant::now());
        }
        if let Some(burst) = burst {
            burst.absorb(tally.waiting, tally.written);
        }
        if tally.sent > 0 {
            let m = &self.metrics;
            m.frames_out.inc_by(tally.sent);
            m.bytes_out.inc_by(tally.sent_bytes);
            if frame.published_us > 0 {
                let latency = now_us().saturating_sub(frame.published_us) as f64 / 1e6;
                if tally.sent == 1 {
                    // A targeted delivery: a local histogram would cost an allocation and a pass
                    // over every bucket for one observation.
                    m.delivery_latency.observe(latency);
                } else {
                    let local = m.delivery_latency.local();
                    for _ in 0..tally.sent {
                        local.observe(latency);
                    }
                    local.flush();
                }
            }
        }
        tally.delivered
    }

    fn offer(
        &self,
        c: &Arc<Connection>,
        channel: &str,
        via_pattern: bool,
        frame: &OutFrame,
        exclude: &[&str],
        delivered: &mut Tally,
    ) {
        if !exclude.is_empty() && exclude.contains(&&*c.id) {
            return;
        }
        // The clock is read once every 64 sockets.
        if delivered.direct_open
            && delivered.offered.is_multiple_of(64)
            && delivered.started.is_some_and(|s| s.elapsed() > delivered.allowed)
        {
            delivered.direct_open = false;
        }
        let direct = if delivered.burst {
            // A small fan-out writes a socket's first frame of the burst at once, as outside a
            // burst; the burst's end writes that socket's later frames, all in one write.
            delivered.offered < DIRECT_FANOUT && burst::may_write_at_once(&delivered.written, c.key)
        } else {
            delivered.offered < DIRECT_FANOUT || delivered.direct_open
        };
        delivered.offered += 1;
        match c.offer(Cow::Borrowed(frame), channel, via_pattern, direct, delivered.burst) {
            Push::Queued => delivered.delivered += 1,
            Push::Waiting => {
                delivered.delivered += 1;
                let core = c.core();
                if delivered.waiting.len() <= core {
                    delivered.waiting.resize_with(core + 1, Vec::new);
                }
                delivered.waiting[core].push(c.clone());
            }
            Push::Sent(bytes) => {
                if delivered.burst {
                    delivered.written.push(c.key);
                }
                delivered.delivered += 1;
                delivered.sent += 1;
                delivered.sent_bytes += bytes as u64;
            }
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
            c.push_gap(OutFrame::control(frame.to_json()));
        }
        n
    }

    /// A snapshot of every connection (for the node-wide heartbeat tick and the drain).
    pub fn connections(&self) -> Vec<Arc<Connection>> {
        self.conns.read().values().cloned().collect()
    }

    /// The node-wide tick's sockets: those whose key `ping` picks and those with something due
    /// at `now` (`Connection::tick_due`), read from the tick table without touching the others
    /// (between pings, most need nothing).
    pub fn tick_walk(&self, now: TickNow, ping: impl FnMut(u64) -> bool) -> Vec<Arc<Connection>> {
        self.ticks.walk(now, ping)
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
mod tests;
