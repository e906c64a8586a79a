//! The checker's per-channel state: what a client follows, what it was delivered while it
//! followed, and the stretch of ids it is owed.

use std::collections::{BTreeSet, HashMap};

use super::model::Id;

/// A lower bound of the ids a stretch requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    After(Id),
    From(Id),
}

impl Bound {
    pub fn admits(self, id: Id) -> bool {
        match self {
            Bound::After(b) => id > b,
            Bound::From(b) => id >= b,
        }
    }
    pub fn min(self, other: Bound) -> Bound {
        let key = |b: Bound| match b {
            Bound::After(i) => (i, 1),
            Bound::From(i) => (i, 0),
        };
        if key(other) < key(self) { other } else { self }
    }
}

#[derive(Debug)]
pub struct Recovery {
    pub lo: Bound,
    pub first_live: Option<Id>,
}

#[derive(Debug)]
pub struct Stretch {
    pub start: usize,
    pub from: Bound,
    /// Deliveries in this stretch: (entry, id).
    pub deliveries: Vec<(usize, Id)>,
    pub max_delivered: Option<Id>,
    pub last_live: Option<Id>,
    pub last_catchup: Option<Id>,
    pub recoveries: Vec<Recovery>,
    /// Ranges (exclusive lo, inclusive hi) not required: an unfinished catch-up cut by the end.
    pub exempt: Vec<(Bound, Id)>,
    /// `history:N` on a covered channel: the first catch-up event extends `from` back.
    pub extend_on_catchup: bool,
    /// A catch-up in progress on a covered channel: (its lower bound, live position at its start).
    pub catchup_range: Option<(Bound, Option<Id>)>,
}

impl Stretch {
    pub fn new(start: usize, from: Bound) -> Stretch {
        Stretch {
            start,
            from,
            deliveries: Vec::new(),
            max_delivered: None,
            last_live: None,
            last_catchup: None,
            recoveries: Vec::new(),
            exempt: Vec::new(),
            extend_on_catchup: false,
            catchup_range: None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Pending {
    /// Only a live event may start the stretch (after `recovered:false` or a gap).
    pub live_only: bool,
    /// `history:N`: the stretch is a recovery starting at its first replayed event.
    pub history: bool,
}

/// What a channel's follow period delivered.
#[derive(Clone, Default)]
pub struct Scope {
    /// Every id delivered -> entry of its first delivery (what coverage is checked against).
    pub seen: HashMap<Id, usize>,
    /// The ids a repeat of which is a duplicate -> (entry, the sources active then: exact,
    /// patterns). Dedup ends at unsubscribe: an id leaves when none of its sources is left
    /// (a subscribe under a pattern does not resend what the pattern delivered).
    pub dedup: HashMap<Id, (usize, bool, Vec<String>)>,
}

impl Scope {
    /// Called when sources went away: an id keeps only the sources still there, and leaves
    /// when it has none (a later subscribe to the same name is a new subscription).
    pub fn retain_sources(&mut self, exact: bool, patterns: &BTreeSet<String>) {
        self.dedup.retain(|_, (_, e, ps)| {
            *e &= exact;
            ps.retain(|p| patterns.contains(p));
            *e || !ps.is_empty()
        });
    }
}

#[derive(Default)]
pub struct Chan {
    pub exact: bool,
    pub patterns: BTreeSet<String>,
    /// Ids delivered while followed (reset when the channel is no longer followed).
    pub scope: Option<Scope>,
    pub stretch: Option<Stretch>,
    pub pending: Option<Pending>,
    pub catchup_left: u64,
}

impl Chan {
    pub fn followed(&self) -> bool {
        self.exact || !self.patterns.is_empty()
    }
}
