//! A torture client: one logical client across its reconnects. It subscribes, unsubscribes,
//! catches up with `last_event_id` and `history:N`, resumes on random nodes, and follows the
//! client cursor rule of the exactness spec exactly. It logs every action and frame for the
//! checker, and what it delivered to its "app".
//!
//! On a Redis Cluster (`Shared::sharded`) ids name their id-shard and the rule applies per shard,
//! as the JS client does: one cursor position per shard, a cut catch-up lowers its channel's
//! shard only, the resume id joins the shards' positions with `,`, the filter after a resume
//! ends shard by shard, a subscribe's `last_event_id` is an id of the channel's own shard, and
//! there are no patterns.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::checker::glob;
use super::load::{CHANNELS, Rng, Shared, Ws};
use super::model::*;

/// What the drain phase looks at.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub connected: bool,
    pub busy: bool,
    pub subs: Vec<String>,
    /// Newest id received per channel.
    pub newest: HashMap<String, Id>,
}

/// `Progress::behind` of a client that has no connection (the drain's check matches it).
pub const NOT_CONNECTED: &str = "not connected";

impl Progress {
    /// None when every channel the client follows got `last[channel]`; else why not.
    pub fn behind(&self, last: &HashMap<String, Id>) -> Option<String> {
        if !self.connected {
            return Some(NOT_CONNECTED.into());
        }
        if self.busy {
            return Some("a subscribe/unsubscribe is unanswered".into());
        }
        let lagging: Vec<String> = last
            .iter()
            .filter(|(ch, l)| {
                let follows = self.subs.iter().any(|s| s == *ch || (s.contains('*') && glob(s, ch)));
                follows && self.newest.get(*ch).is_none_or(|n| n < *l)
            })
            .map(|(ch, l)| format!("{ch} (has {:?}, last {l})", self.newest.get(ch).map(Id::to_string)))
            .collect();
        (!lagging.is_empty()).then(|| format!("behind on {}", lagging.join(", ")))
    }
}

struct Catchup {
    remaining: u64,
    last: Option<Id>,
}

/// The cursor rule's filter after a resume: per shard, until the first event of that shard
/// above its old position.
struct Filter {
    old_cursor: Cursor,
    exempt: HashMap<String, Id>,
    /// Channels subscribed since the welcome: all their events, catch-ups included, are new to
    /// the app, so the filter leaves them alone.
    new: BTreeSet<String>,
}

enum Pending {
    Sub {
        req: u64,
        channel: String,
        last_event_id: Option<Id>,
    },
    Unsub {
        req: u64,
    },
}

enum End {
    Stop,
    Reconnect,
}

pub struct Sim {
    token: String,
    rng: Rng,
    shared: Arc<Shared>,
    progress: Arc<std::sync::Mutex<Progress>>,
    log: ClientLog,
    /// Per shard, the highest id received.
    cursor: Cursor,
    connection_id: Option<String>,
    subs: BTreeSet<String>,
    last_on: HashMap<String, Id>,
    held: VecDeque<Id>,
    catchup: HashMap<String, Catchup>,
    filter: Option<Filter>,
    /// Resume parameters, fixed at the disconnect and reused until a welcome.
    plan: Option<(Option<Cursor>, Option<Filter>)>,
    pending: Option<Pending>,
    /// When (ms since the Unix epoch) the current socket's welcome came.
    welcome_ms: u64,
    next_req: u64,
    todo: VecDeque<(String, Option<Id>)>,
    outbox: Vec<String>,
}

impl Sim {
    pub fn new(
        name: &str,
        token: String,
        seed: u64,
        shared: Arc<Shared>,
        progress: Arc<std::sync::Mutex<Progress>>,
    ) -> Sim {
        Sim {
            token,
            rng: Rng::new(seed),
            shared,
            progress,
            log: ClientLog::new(name),
            cursor: Cursor::default(),
            connection_id: None,
            subs: BTreeSet::new(),
            last_on: HashMap::new(),
            held: VecDeque::new(),
            catchup: HashMap::new(),
            filter: None,
            plan: None,
            pending: None,
            welcome_ms: 0,
            next_req: 0,
            todo: VecDeque::new(),
            outbox: Vec::new(),
        }
    }

    /// The id-shard of a channel's ids (`None`: the one global sequence).
    fn shard(&self, channel: &str) -> Option<u16> {
        self.shared.sharded.then(|| wsgw_protocol::shard_of(channel))
    }

    fn rec(&mut self, r: Rec) {
        let t = self.shared.t_us();
        self.log.push(t, r);
    }

    fn publish_progress(&self, connected: bool) {
        let mut p = self.progress.lock().unwrap();
        p.connected = connected;
        p.busy = self.pending.is_some();
        p.subs = self.subs.iter().cloned().collect();
    }

    /// Marks the client busy before an action, unless the drain has begun. Checked and set
    /// under the progress lock, which the drain reads after raising `quiesce`: either the drain
    /// sees this client busy (and waits for the answer), or the client sees `quiesce` and does
    /// not act. Without it an action decided just before the drain began could race the fence
    /// events (a pattern's snapshot taken after a fence legitimately leaves the fence out).
    fn claim_action(&self) -> bool {
        let mut p = self.progress.lock().unwrap();
        if self.shared.quiesce.load(Ordering::Acquire) {
            return false;
        }
        p.busy = true;
        true
    }

    /// Runs until the shared stop flag; returns the log.
    pub async fn run(mut self) -> ClientLog {
        // A few subscriptions to start with.
        for _ in 0..2 {
            let ch = CHANNELS[self.rng.below(CHANNELS.len() as u64) as usize].to_string();
            self.todo.push_back((ch, None));
        }
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                break;
            }
            let Some(mut ws) = self.connect().await else {
                let pause = 100 + self.rng.below(300);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                continue;
            };
            let end = self.session(&mut ws).await;
            self.publish_progress(false);
            self.disconnected();
            if matches!(end, End::Stop) {
                break;
            }
            let pause = self.rng.below(200);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        self.log
    }

    /// Fixes the resume parameters (cursor rule) once per disconnect.
    fn disconnected(&mut self) {
        self.pending = None;
        self.outbox.clear();
        let mut unfinished: HashMap<String, Id> = self
            .catchup
            .drain()
            .filter_map(|(ch, c)| c.last.map(|l| (ch, l)))
            .collect();
        if let Some(f) = self.filter.take() {
            for (ch, l) in f.exempt {
                unfinished.entry(ch).or_insert(l);
            }
        }
        // Per shard: the lowest of its cursor position and its channels' unfinished catch-ups.
        let mut last = self.cursor.clone();
        for &l in unfinished.values() {
            let p = last.0.entry(l.shard).or_insert(l);
            *p = (*p).min(l);
        }
        let filter = (!self.cursor.is_empty()).then(|| Filter {
            old_cursor: self.cursor.clone(),
            exempt: unfinished,
            new: BTreeSet::new(),
        });
        self.plan = Some(((!last.is_empty()).then_some(last), filter));
    }

    async fn connect(&mut self) -> Option<Ws> {
        let node = self.shared.random_node(&mut self.rng)?;
        let last = self.plan.as_ref().and_then(|p| p.0.clone());
        let mut url = format!("ws://127.0.0.1:{}/ws?token={}", node.1, self.token);
        if let Some(c) = &self.connection_id {
            url.push_str(&format!("&connection_id={c}"));
        }
        if let Some(l) = &last {
            url.push_str(&format!("&last_event_id={l}"));
        }
        self.rec(Rec::Connect {
            node: node.0.clone(),
            connection_id: self.connection_id.clone(),
            last_event_id: last,
        });
        let ws = match tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(url)).await {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => {
                self.rec(Rec::ConnectFailed { why: e.to_string() });
                return None;
            }
            Err(_) => {
                self.rec(Rec::ConnectFailed {
                    why: "connect timed out".into(),
                });
                return None;
            }
        };
        let mut ws = ws;
        let mut why = String::from("ended before the welcome");
        loop {
            let msg = match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Err(_) => {
                    why = "no welcome in 10 s".into();
                    break;
                }
                Ok(m) => m,
            };
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or_default();
                    match v["type"].as_str() {
                        Some("welcome") => {
                            self.welcome(&v);
                            return Some(ws);
                        }
                        Some("error") => why = format!("error {}", v["code"]),
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    why = format!("{why}; close {:?}", f.map(|f| u16::from(f.code)));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    why = format!("{why}: {e}");
                    break;
                }
                None => break,
            }
        }
        self.rec(Rec::ConnectFailed { why });
        None
    }

    fn welcome(&mut self, v: &Value) {
        let strings = |k: &str| -> Vec<String> {
            v[k].as_array()
                .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
                .unwrap_or_default()
        };
        let channels = strings("channels");
        let resumed = v["resumed"].as_bool().unwrap_or(false);
        self.rec(Rec::Welcome {
            connection_id: v["connection_id"].as_str().unwrap_or("").into(),
            resumed,
            recovered: v["recovered"].as_bool().unwrap_or(false),
            replayed: v["replayed"].as_u64().unwrap_or(0),
            channels: channels.clone(),
            not_replayed: strings("not_replayed"),
        });
        self.connection_id = v["connection_id"].as_str().map(String::from);
        self.welcome_ms = now_ms();
        let (_, filter) = self.plan.take().unwrap_or((None, None));
        self.filter = filter;
        self.catchup.clear();
        let now: BTreeSet<String> = if resumed {
            channels.into_iter().collect()
        } else {
            BTreeSet::new()
        };
        // Topics the resume did not bring back: subscribe again from where the app's events of
        // that topic end: its catch-up position if one was cut, otherwise the cursor.
        for lost in self.subs.difference(&now) {
            let cut = self.filter.as_ref().and_then(|f| f.exempt.get(lost).copied());
            let last = if lost.contains('*') {
                None
            } else {
                cut.or(self.cursor.get(self.shard(lost)))
            };
            self.todo.push_back((lost.clone(), last));
        }
        self.subs = now;
        self.publish_progress(true);
    }

    async fn session(&mut self, ws: &mut Ws) -> End {
        let mut next_action = Instant::now() + Duration::from_millis(50 + self.rng.below(300));
        loop {
            let can_act = self.pending.is_none() && !self.shared.quiesce.load(Ordering::Acquire);
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => self.frame(&t),
                    Some(Ok(Message::Close(f))) => {
                        self.rec(Rec::Closed { why: format!("server close {:?}", f.map(|f| u16::from(f.code))) });
                        return End::Reconnect;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        self.rec(Rec::Closed { why: format!("socket error: {e}") });
                        return End::Reconnect;
                    }
                    None => {
                        self.rec(Rec::Closed { why: "socket ended".into() });
                        return End::Reconnect;
                    }
                },
                _ = tokio::time::sleep_until(next_action), if can_act => {
                    next_action = Instant::now() + Duration::from_millis(50 + self.rng.below(450));
                    if self.claim_action() {
                        if let Some(end) = self.act(ws).await {
                            // Still marked busy: the session's end publishes the progress.
                            return end;
                        }
                        self.publish_progress(true);
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            for text in std::mem::take(&mut self.outbox) {
                if ws.send(Message::Text(text.into())).await.is_err() {
                    self.rec(Rec::Closed {
                        why: "send failed".into(),
                    });
                    return End::Reconnect;
                }
            }
            if self.shared.stop.load(Ordering::Acquire) {
                return End::Stop;
            }
        }
    }

    fn follows(&self, ch: &str) -> bool {
        self.subs.iter().any(|s| s == ch || (s.contains('*') && glob(s, ch)))
    }

    fn frame(&mut self, text: &str) {
        let v: Value = serde_json::from_str(text).unwrap_or_default();
        let req = v["request_id"].as_u64();
        let matches_pending = |p: &Option<Pending>| match p {
            Some(Pending::Sub { req: r, .. } | Pending::Unsub { req: r }) => Some(*r) == req,
            None => false,
        };
        match v["type"].as_str().unwrap_or("") {
            "event" => {
                let (Some(id), Some(ch)) = (v["event_id"].as_str().and_then(Id::parse), v["channel"].as_str()) else {
                    return;
                };
                // Publish-to-delivery lag of live events (catch-ups and replays are old by nature).
                // In a cluster a shard's position can be far behind the others, so what is above
                // it need not be live: there, only events published after the welcome count.
                let live =
                    |ts: &u64| !self.shared.sharded || (*ts >= self.welcome_ms && !self.catchup.contains_key(ch));
                if let Some(ts) = v["ts"]
                    .as_u64()
                    .filter(|ts| live(ts) && self.cursor.get(id.shard).is_none_or(|c| id > c))
                {
                    let now = now_ms();
                    self.shared
                        .max_lag_ms
                        .fetch_max(now.saturating_sub(ts), Ordering::Relaxed);
                }
                self.event(id, ch);
            }
            "subscribed" => {
                let ch = v["channel"].as_str().unwrap_or("").to_string();
                let recovered = v["recovered"].as_bool().unwrap_or(false);
                let replayed = v["replayed"].as_u64().unwrap_or(0);
                let mut from = None;
                if matches_pending(&self.pending)
                    && let Some(Pending::Sub { last_event_id, .. }) = self.pending.take()
                {
                    from = last_event_id;
                }
                self.rec(Rec::Subscribed {
                    channel: ch.clone(),
                    recovered,
                    replayed,
                });
                if let Some(f) = self.filter.as_mut() {
                    f.new.insert(ch.clone());
                }
                if replayed > 0 {
                    self.catchup.insert(
                        ch.clone(),
                        Catchup {
                            remaining: replayed,
                            last: from,
                        },
                    );
                }
                self.subs.insert(ch);
            }
            "unsubscribed" => {
                let ch = v["channel"].as_str().unwrap_or("").to_string();
                let reason = v["reason"].as_str().map(String::from);
                if matches_pending(&self.pending) {
                    self.pending = None;
                }
                self.rec(Rec::Unsubscribed {
                    channel: ch.clone(),
                    reason: reason.clone(),
                });
                if reason.is_some() {
                    self.subs.remove(&ch);
                }
            }
            "error" if matches_pending(&self.pending) => {
                if let Some(Pending::Sub { channel, .. }) = self.pending.take() {
                    let code = v["code"].as_str().unwrap_or("").to_string();
                    self.rec(Rec::SubscribeFailed { channel, code });
                }
            }
            "gap" => {
                let channels = v["channels"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
                    .unwrap_or_default();
                self.rec(Rec::Gap { channels });
            }
            "ping" => self.outbox.push(json!({"type": "pong"}).to_string()),
            _ => {}
        }
        self.publish_progress(true);
    }

    /// The cursor rule, then delivery to the app.
    fn event(&mut self, id: Id, ch: &str) {
        let p = self.cursor.0.entry(id.shard).or_insert(id);
        *p = (*p).max(id);
        let in_catchup = self.catchup.contains_key(ch);
        if let Some(c) = self.catchup.get_mut(ch) {
            c.remaining -= 1;
            c.last = Some(id);
            if c.remaining == 0 {
                self.catchup.remove(ch);
            }
        }
        let mut fate = Fate::Delivered;
        // A catch-up of a subscribe sent after the welcome is not part of the resume replay:
        // the filter must not drop it (its events are older than the cursor by nature).
        if let Some(f) = self.filter.as_mut().filter(|f| !in_catchup && !f.new.contains(ch))
            && let Some(old) = f.old_cursor.get(id.shard)
        {
            if id > old {
                // The filter of this shard ends (with one global sequence: the whole filter).
                f.old_cursor.0.remove(&id.shard);
                f.exempt.retain(|_, c| c.shard != id.shard);
                if f.old_cursor.is_empty() {
                    self.filter = None;
                }
            } else if let Some(c) = f.exempt.get_mut(ch)
                && id > *c
            {
                *c = id;
                fate = Fate::DeliveredExempt;
            } else {
                fate = Fate::Filtered;
            }
        }
        if fate.delivered() && !self.follows(ch) {
            fate = Fate::Unfollowed;
        }
        self.rec(Rec::Event {
            id,
            channel: ch.to_string(),
            fate,
        });
        if fate.delivered() {
            self.last_on.insert(ch.to_string(), id);
            self.held.push_back(id);
            if self.held.len() > 300 {
                self.held.pop_front();
            }
        }
        let mut p = self.progress.lock().unwrap();
        let n = p.newest.entry(ch.to_string()).or_default();
        *n = (*n).max(id);
    }

    fn send(&mut self, v: Value) {
        self.outbox.push(v.to_string());
    }

    fn subscribe(&mut self, channel: String, last_event_id: Option<Id>, history: Option<u64>) {
        self.next_req += 1;
        let req = self.next_req;
        let mut f = json!({"type": "subscribe", "channel": channel, "request_id": req});
        if let Some(l) = last_event_id {
            f["last_event_id"] = json!(l.to_string());
        } else if let Some(n) = history {
            f["history"] = json!(n);
        }
        self.rec(Rec::Subscribe {
            channel: channel.clone(),
            last_event_id,
            history,
        });
        self.pending = Some(Pending::Sub {
            req,
            channel,
            last_event_id,
        });
        self.send(f);
    }

    /// One random action. Some(end) when the session should end.
    async fn act(&mut self, ws: &mut Ws) -> Option<End> {
        if let Some((ch, last)) = self.todo.pop_front() {
            if !self.subs.contains(&ch) {
                self.subscribe(ch, last, None);
            }
            return None;
        }
        let roll = self.rng.below(100);
        let topics: Vec<String> = self.subs.iter().cloned().collect();
        match roll {
            0..=27 if topics.len() < 6 => {
                let free: Vec<&str> = CHANNELS.iter().copied().filter(|c| !self.subs.contains(*c)).collect();
                if free.is_empty() {
                    return None;
                }
                let ch = free[self.rng.below(free.len() as u64) as usize].to_string();
                match self.rng.below(10) {
                    // An older id it holds: the last one on that channel, or any recent one (of
                    // the channel's shard: ids of other shards are no position in it).
                    0..=3 => {
                        let shard = self.shard(&ch);
                        let held: Vec<Id> = self.held.iter().copied().filter(|i| i.shard == shard).collect();
                        let last = match self.last_on.get(&ch) {
                            Some(&l) if self.rng.below(2) == 0 => Some(l),
                            _ if !held.is_empty() => Some(held[self.rng.below(held.len() as u64) as usize]),
                            _ => None,
                        };
                        self.subscribe(ch, last, None);
                    }
                    4..=6 => {
                        let n = 1 + self.rng.below(30);
                        self.subscribe(ch, None, Some(n));
                    }
                    _ => self.subscribe(ch, None, None),
                }
            }
            // No patterns on a Redis Cluster (sharded pub/sub has none).
            28..=34 if !self.shared.sharded => {
                let p = if self.rng.below(5) == 0 { "t:*" } else { "t:1*" };
                if !self.subs.contains(p) && topics.len() < 6 {
                    self.subscribe(p.to_string(), None, None);
                }
            }
            35..=56 if !topics.is_empty() => {
                let ch = topics[self.rng.below(topics.len() as u64) as usize].clone();
                self.next_req += 1;
                let req = self.next_req;
                self.rec(Rec::Unsubscribe { channel: ch.clone() });
                self.subs.remove(&ch);
                self.catchup.remove(&ch);
                if let Some(f) = self.filter.as_mut() {
                    f.exempt.remove(&ch);
                    f.new.remove(&ch);
                }
                self.pending = Some(Pending::Unsub { req });
                self.send(json!({"type": "unsubscribe", "channel": ch, "request_id": req}));
            }
            57..=62 => {
                // Reconnect to a random node and resume.
                if self.rng.below(2) == 0 {
                    let _ = ws.close(None).await;
                    let deadline = Instant::now() + Duration::from_secs(2);
                    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, ws.next()).await {
                        if let Message::Text(t) = msg {
                            self.frame(&t);
                        }
                    }
                    self.rec(Rec::Closed {
                        why: "client closed to reconnect".into(),
                    });
                } else {
                    self.rec(Rec::Closed {
                        why: "client dropped the socket to reconnect".into(),
                    });
                }
                return Some(End::Reconnect);
            }
            _ => {}
        }
        None
    }
}

/// Starts `n` torture clients (`tc0`, `tc1`, …, tokens for `t:*`), seeded from `seed`; returns
/// their tasks (each ends with its log) and their progress for the drain phase.
pub fn spawn_clients(
    n: u64,
    seed: u64,
    shared: &Arc<Shared>,
) -> (
    Vec<tokio::task::JoinHandle<ClientLog>>,
    Vec<Arc<std::sync::Mutex<Progress>>>,
) {
    let mut sims = Vec::new();
    let mut progress = Vec::new();
    for i in 0..n {
        let p = Arc::new(std::sync::Mutex::new(Progress::default()));
        let name = format!("tc{i}");
        let token = crate::common::token(&name, &["t:*"], &[]);
        let sim = Sim::new(
            &name,
            token,
            seed.wrapping_mul(1_000_003).wrapping_add(i),
            shared.clone(),
            p.clone(),
        );
        sims.push(tokio::spawn(sim.run()));
        progress.push(p);
    }
    (sims, progress)
}

/// How many clients got the last event of every channel they follow.
pub fn caught_up(progress: &[Arc<std::sync::Mutex<Progress>>], last: &HashMap<String, Id>) -> usize {
    progress
        .iter()
        .filter(|p| p.lock().unwrap().behind(last).is_none())
        .count()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
