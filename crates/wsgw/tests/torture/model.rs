//! What the checker reads: event ids, what was published, and each logical client's log of
//! actions and frames.

use std::collections::BTreeMap;
use std::fmt;

/// An event id `<ms>-<seq>`, ordered numerically.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id(pub u64, pub u64);

impl Id {
    pub fn parse(s: &str) -> Option<Id> {
        match s.split_once('-') {
            Some((ms, seq)) => Some(Id(ms.parse().ok()?, seq.parse().ok()?)),
            None => Some(Id(s.parse().ok()?, 0)),
        }
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
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
        last_event_id: Option<Id>,
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
            final_at_us: None,
        }
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
