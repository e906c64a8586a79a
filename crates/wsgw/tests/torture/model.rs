//! What the checker reads: event ids, what was published, and each logical client's log of
//! actions and frames.

use std::collections::BTreeMap;
use std::fmt;

/// An event id: `<ms>-<seq>` from one global sequence (single primary), or `<shard>~<ms>-<seq>`
/// from one id-shard's sequence (Redis Cluster). Ordered numerically within a shard; ids of
/// different shards are only grouped by shard (their order means nothing), so the checker and
/// the clients compare ids of one channel, or of one shard, only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id {
    /// The id-shard that issued it; `None` for the one global sequence.
    pub shard: Option<u16>,
    pub ms: u64,
    pub seq: u64,
}

impl Id {
    /// An id of the one global sequence.
    pub const fn new(ms: u64, seq: u64) -> Id {
        Id { shard: None, ms, seq }
    }

    /// The same position in the sequence of `shard`.
    pub const fn in_shard(self, shard: Option<u16>) -> Id {
        Id { shard, ..self }
    }

    /// `<ms>-<seq>`, a bare `<ms>`, or `<shard>~<ms>-<seq>`.
    pub fn parse(s: &str) -> Option<Id> {
        if let Some((shard, rest)) = s.split_once('~') {
            let id = Id::parse(rest).filter(|i| i.shard.is_none())?;
            return Some(id.in_shard(Some(shard.parse().ok()?)));
        }
        match s.split_once('-') {
            Some((ms, seq)) => Some(Id::new(ms.parse().ok()?, seq.parse().ok()?)),
            None => Some(Id::new(s.parse().ok()?, 0)),
        }
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = self.shard {
            write!(f, "{s}~")?;
        }
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A resume cursor (`last_event_id` of a connect): per id-shard one id, in shard order. With one
/// global sequence it holds one id of no shard, and prints as that id; in a Redis Cluster it
/// prints as the ids joined with `,` (`wsgw_protocol::ShardCursor`'s form).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor(pub std::collections::BTreeMap<Option<u16>, Id>);

impl Cursor {
    /// A cursor of one id.
    pub fn one(id: Id) -> Cursor {
        Cursor(std::iter::once((id.shard, id)).collect())
    }

    /// The position it names in `shard`.
    pub fn get(&self, shard: Option<u16>) -> Option<Id> {
        self.0.get(&shard).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, id) in self.0.values().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{id}")?;
        }
        Ok(())
    }
}

/// What became of an event frame the client received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Handed to the app.
    Delivered,
    /// Handed to the app through the cursor rule's exception for an unfinished catch-up.
    DeliveredExempt,
    /// Dropped by the cursor rule after a resume (id <= old cursor).
    Filtered,
    /// Dropped: the client does not follow the channel (an event in flight after unsubscribe).
    Unfollowed,
}

impl Fate {
    pub fn delivered(self) -> bool {
        matches!(self, Fate::Delivered | Fate::DeliveredExempt)
    }
}

/// One thing a client did or saw.
#[derive(Clone, Debug, PartialEq)]
pub enum Rec {
    /// Action: open a socket (a resume when `connection_id` is set).
    Connect {
        node: String,
        connection_id: Option<String>,
        last_event_id: Option<Cursor>,
    },
    /// The socket could not be opened, or was refused before a welcome.
    ConnectFailed {
        why: String,
    },
    Welcome {
        connection_id: String,
        resumed: bool,
        recovered: bool,
        replayed: u64,
        channels: Vec<String>,
        not_replayed: Vec<String>,
    },
    /// The socket ended (closed by the server, dropped, or closed by the client to reconnect).
    Closed {
        why: String,
    },
    /// Action.
    Subscribe {
        channel: String,
        last_event_id: Option<Id>,
        history: Option<u64>,
    },
    Subscribed {
        channel: String,
        recovered: bool,
        replayed: u64,
    },
    /// An `error` answer to a subscribe.
    SubscribeFailed {
        channel: String,
        code: String,
    },
    /// Action.
    Unsubscribe {
        channel: String,
    },
    Unsubscribed {
        channel: String,
        reason: Option<String>,
    },
    Gap {
        channels: Vec<String>,
    },
    Event {
        id: Id,
        channel: String,
        fate: Fate,
    },
}

#[derive(Clone, Debug)]
pub struct Entry {
    /// Microseconds since the run began.
    pub t_us: u64,
    pub rec: Rec,
}

#[derive(Clone, Debug, Default)]
pub struct ClientLog {
    pub name: String,
    pub entries: Vec<Entry>,
}

impl ClientLog {
    pub fn new(name: &str) -> ClientLog {
        ClientLog {
            name: name.into(),
            entries: Vec::new(),
        }
    }

    pub fn push(&mut self, t_us: u64, rec: Rec) {
        self.entries.push(Entry { t_us, rec });
    }
}

/// Every event published, per channel, in id order (read back from the history streams).
#[derive(Clone, Debug, Default)]
pub struct Published {
    per_channel: BTreeMap<String, Vec<Id>>,
    /// Ids a publisher was given (the publish succeeded) that history does not hold: acknowledged
    /// by a Redis Cluster primary that failed before its replica had them. Not owed to anyone;
    /// delivering one is reported apart (`lost_delivered`), not as an unknown event.
    lost: BTreeMap<String, Vec<Id>>,
    /// When (µs since the run began) the last event of every channel was published, if the
    /// run ended that way after the clients' last action.
    pub final_at_us: Option<u64>,
}

impl Published {
    pub fn new(per_channel: BTreeMap<String, Vec<Id>>) -> Published {
        let mut per_channel = per_channel;
        for ids in per_channel.values_mut() {
            ids.sort();
            ids.dedup();
        }
        Published {
            per_channel,
            lost: BTreeMap::new(),
            final_at_us: None,
        }
    }

    /// Records what publishers were acknowledged: every acknowledged id history does not hold
    /// is lost.
    pub fn set_acknowledged(&mut self, acked: &[(String, Id)]) {
        self.lost.clear();
        for (channel, id) in acked {
            if !self.contains(channel, *id) {
                self.lost.entry(channel.clone()).or_default().push(*id);
            }
        }
        for ids in self.lost.values_mut() {
            ids.sort();
            ids.dedup();
        }
    }

    pub fn is_lost(&self, channel: &str, id: Id) -> bool {
        self.lost.get(channel).is_some_and(|l| l.binary_search(&id).is_ok())
    }

    /// How many acknowledged events history does not hold.
    pub fn lost_total(&self) -> u64 {
        self.lost.values().map(|v| v.len() as u64).sum()
    }

    /// The id-shard of a channel's events (`None`: the one global sequence, or nothing published).
    pub fn shard(&self, channel: &str) -> Option<u16> {
        self.ids(channel).first().and_then(|i| i.shard)
    }

    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.per_channel.keys().map(String::as_str)
    }

    pub fn ids(&self, channel: &str) -> &[Id] {
        self.per_channel.get(channel).map_or(&[], Vec::as_slice)
    }

    pub fn contains(&self, channel: &str, id: Id) -> bool {
        self.ids(channel).binary_search(&id).is_ok()
    }

    pub fn last(&self, channel: &str) -> Option<Id> {
        self.ids(channel).last().copied()
    }

    pub fn total(&self) -> u64 {
        self.per_channel.values().map(|v| v.len() as u64).sum()
    }
}

// What the checker reports.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Duplicate,
    OutOfOrder,
    Gap,
    FalseRecovered,
    Stalled,
    UnknownEvent,
    RuleDuplicate,
    LostDelivered,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Duplicate => "duplicate",
            Kind::OutOfOrder => "out_of_order",
            Kind::Gap => "gap",
            Kind::FalseRecovered => "false_recovered",
            Kind::Stalled => "stalled",
            Kind::UnknownEvent => "unknown_event",
            Kind::RuleDuplicate => "rule_duplicate",
            Kind::LostDelivered => "lost_delivered",
        })
    }
}

#[derive(Clone, Debug)]
pub struct Violation {
    pub kind: Kind,
    pub client: usize,
    pub channel: String,
    /// The ids concerned: missing ones, or the repeated / misplaced one.
    pub ids: Vec<Id>,
    /// Entry index (in that client's log) where the violation became evident.
    pub at: usize,
    /// Entry index where the coverage stretch concerned began (for the printed history).
    pub since: usize,
    pub t_us: u64,
    pub detail: String,
}

/// How the checker read each event entry: replay after a welcome, subscribe catch-up, or live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    Replay,
    Catchup,
    Live,
}

#[derive(Debug, Default)]
pub struct Report {
    pub violations: Vec<Violation>,
    pub deliveries_checked: u64,
    pub events_published: u64,
    /// Per client, per entry: the tag of an event entry.
    pub tags: Vec<Vec<Option<Tag>>>,
}

impl Kind {
    /// A breach of the delivery contract by the server (the others are reported, not counted).
    pub fn fatal(self) -> bool {
        !matches!(self, Kind::RuleDuplicate | Kind::LostDelivered)
    }
}

impl Report {
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        let mut m = BTreeMap::new();
        for v in &self.violations {
            *m.entry(v.kind).or_insert(0) += 1;
        }
        m
    }
}

/// Glob match: `*` matches any run of bytes, including `:` and none.
pub fn glob(pattern: &str, s: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), s.as_bytes());
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}
