//! The exactness checker: pure logic, no I/O. It replays what each logical client saw (across its
//! reconnects) against what was published (read back from the history streams) and reports
//! every breach of the delivery contract in docs/protocol.md ("Exactness", "The cursor a client keeps"):
//!
//! - `duplicate`: an id delivered twice to the app while the client followed the channel;
//! - `out_of_order`: a live event older than one delivered before it (or a catch-up going back);
//! - `gap`: a published event missing inside a covered stretch;
//! - `false_recovered`: a missing event that a `recovered:true` replay (subscribe catch-up,
//!   `history:N`, or a resume) should have brought;
//! - `stalled`: a client still connected at the end never got the newest events of a channel
//!   (when the run ends with one more event on every channel, published after the clients'
//!   last action, this also catches a followed channel whose coverage never started);
//! - `rule_duplicate` (reported, not a server violation): see below.
//! - `unknown_event`: an id that is not in the channel's history.
//! - `lost_delivered` (reported, not a server violation): an id a publisher was acknowledged that
//!   history does not hold (a Redis Cluster primary failed before its replica had it), delivered;
//!   the report says whether the client was told afterwards (a `gap` or `recovered:false`).
//!
//! `rule_duplicate` is a duplicate the client cursor rule lets through while the server kept its
//! per-socket promise: an event passed by the rule's exception for an unfinished catch-up, or a
//! subscribe catch-up on a new socket bringing again what an earlier socket delivered (the rule
//! filters only the resume replay). It is a hole in the rule, reported apart.
//!
//! Coverage of channel C starts at `subscribed` recovered:true (after its `last_event_id`; for
//! `history:N` at its first replayed event; for a plain subscribe or a pattern at the first C event
//! delivered), continues across a resume whose welcome says resumed:true and recovered:true (the
//! connect carried a `last_event_id`, and C is not reached only through a pattern listed in
//! `not_replayed`), and ends at unsubscribe, `recovered:false`, a `gap` frame naming C or a pattern
//! matching it, or a close not followed by a successful resume. After `recovered:false` or a
//! `gap` coverage restarts at the next C event delivered live. For clients still connected at the
//! end it extends to the last event published on C.
//!
//! Ids of a Redis Cluster deployment name their id-shard and are ordered only within it: every
//! comparison here is between ids of one channel (one shard), and a resume's `last_event_id` is
//! a cursor of one id per shard, of which a channel's coverage uses the one of its own shard.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::coverage::*;
pub use super::model::*;

struct Walk<'a> {
    published: &'a Published,
    client: usize,
    entries: &'a [Entry],
    chans: BTreeMap<String, Chan>,
    report: &'a mut Report,
    /// Entry index of the current socket's welcome.
    socket_start: usize,
    /// Lost ids delivered on each channel that the client was not told about since.
    lost_untold: BTreeMap<String, Vec<(usize, Id)>>,
}

/// Checks every client log against what was published.
pub fn check(published: &Published, clients: &[ClientLog]) -> Report {
    let mut report = Report {
        events_published: published.total(),
        ..Report::default()
    };
    for (ci, log) in clients.iter().enumerate() {
        let mut w = Walk {
            published,
            client: ci,
            entries: &log.entries,
            chans: published.channels().map(|c| (c.to_string(), Chan::default())).collect(),
            report: &mut report,
            socket_start: 0,
            lost_untold: BTreeMap::new(),
        };
        let tags = w.run();
        report.tags.push(tags);
    }
    report
}

impl Walk<'_> {
    fn run(&mut self) -> Vec<Option<Tag>> {
        let mut tags = vec![None; self.entries.len()];
        let mut pending_subs: HashMap<String, (Option<Id>, Option<u64>)> = HashMap::new();
        let mut connect_last: Option<Cursor> = None;
        let mut had_welcome = false;
        let mut connected = false;
        let mut replay_left = 0u64;
        let entries = self.entries;
        for (i, entry) in entries.iter().enumerate() {
            match &entry.rec {
                Rec::Connect { last_event_id, .. } => connect_last = last_event_id.clone(),
                Rec::ConnectFailed { .. } => {}
                Rec::Closed { .. } => connected = false,
                Rec::Welcome {
                    resumed,
                    recovered,
                    replayed,
                    channels,
                    not_replayed,
                    ..
                } => {
                    pending_subs.clear();
                    replay_left = *replayed;
                    let cont = had_welcome && *resumed && *recovered && connect_last.is_some();
                    self.socket_start = i;
                    self.welcome(i, connect_last.as_ref(), cont, channels, not_replayed);
                    had_welcome = true;
                    connected = true;
                }
                Rec::Subscribe {
                    channel,
                    last_event_id,
                    history,
                } => {
                    pending_subs.insert(channel.clone(), (*last_event_id, *history));
                }
                Rec::SubscribeFailed { channel, .. } => {
                    pending_subs.remove(channel);
                }
                Rec::Subscribed {
                    channel,
                    recovered,
                    replayed,
                } => {
                    let req = pending_subs.remove(channel).unwrap_or((None, None));
                    self.subscribed(i, channel, *recovered, *replayed, req);
                }
                Rec::Unsubscribe { channel } => self.unfollow(i, channel),
                Rec::Unsubscribed { channel, reason } => {
                    if reason.is_some() {
                        self.unfollow(i, channel);
                    }
                }
                Rec::Gap { channels } => self.gap(i, channels),
                Rec::Event { id, channel, fate } => {
                    let tag = if replay_left > 0 {
                        replay_left -= 1;
                        Tag::Replay
                    } else if self.chans.get(channel).is_some_and(|c| c.catchup_left > 0) {
                        Tag::Catchup
                    } else {
                        Tag::Live
                    };
                    if let Some(c) = self.chans.get_mut(channel)
                        && tag == Tag::Catchup
                    {
                        c.catchup_left -= 1;
                    }
                    tags[i] = Some(tag);
                    self.event(i, *id, channel, *fate, tag);
                }
            }
        }
        let end = self.entries.len().saturating_sub(1);
        for (channel, lost) in std::mem::take(&mut self.lost_untold) {
            for (at, id) in lost {
                self.violation(
                    Kind::LostDelivered,
                    &channel,
                    vec![id],
                    at,
                    at,
                    "delivered an event history lost; the client was never told (no gap, no recovered:false)".into(),
                );
            }
        }
        let names: Vec<String> = self.chans.keys().cloned().collect();
        for name in names {
            if !connected {
                self.end_stretch(&name, end, None, false);
                continue;
            }
            let hi = self.published.last(&name);
            let c = &self.chans[&name];
            if c.stretch.is_none()
                && c.followed()
                && let Some(last) = hi
                && let Some(final_at) = self.published.final_at_us
                && self.entries[self.socket_start].t_us < final_at
                && !self.received(&name, last)
            {
                // Coverage never (re)started: not one event reached the client since. The run
                // ends with one more event on every channel, published after the clients' last
                // action (`final_at_us`), so a socket that was open and following the channel
                // then must at least have received it.
                let since = self
                    .entries
                    .iter()
                    .rposition(|e| matches!(e.rec, Rec::Connect { .. }))
                    .unwrap_or(0);
                self.violation(
                    Kind::Stalled,
                    &name,
                    vec![last],
                    end,
                    since,
                    "followed at the end, yet the last event published on it never arrived".into(),
                );
            }
            self.end_stretch(&name, end, hi, true);
        }
        tags
    }

    fn received(&self, channel: &str, id: Id) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(&e.rec, Rec::Event { id: i, channel: c, .. } if *i == id && c == channel))
    }

    fn matching(&self, chan_or_pattern: &str) -> Vec<String> {
        if chan_or_pattern.contains('*') {
            self.chans
                .keys()
                .filter(|c| glob(chan_or_pattern, c))
                .cloned()
                .collect()
        } else if self.chans.contains_key(chan_or_pattern) {
            vec![chan_or_pattern.to_string()]
        } else {
            Vec::new()
        }
    }

    /// The client was told `channel` may have missed events: lost ids it delivered are told.
    fn told(&mut self, i: usize, channel: &str, how: &str) {
        for (at, id) in self.lost_untold.remove(channel).unwrap_or_default() {
            self.violation(
                Kind::LostDelivered,
                channel,
                vec![id],
                at,
                at,
                format!("delivered an event history lost; told at entry {i} ({how})"),
            );
        }
    }

    fn welcome(
        &mut self,
        i: usize,
        connect_last: Option<&Cursor>,
        cont: bool,
        channels: &[String],
        not_replayed: &[String],
    ) {
        let names: Vec<String> = self.chans.keys().cloned().collect();
        for name in names {
            let was = self.chans[&name].followed();
            let exact = channels.contains(&name);
            let patterns: BTreeSet<String> = channels
                .iter()
                .filter(|p| p.contains('*') && glob(p, &name))
                .cloned()
                .collect();
            let c_recovered = cont && (exact || patterns.iter().any(|p| !not_replayed.contains(p)));
            {
                let c = self.chans.get_mut(&name).unwrap();
                c.exact = exact;
                c.patterns = patterns;
                c.catchup_left = 0;
            }
            let now = self.chans[&name].followed();
            if was && now && c_recovered {
                // The resume's position in this channel's shard (none named: the client had
                // received nothing from the shard).
                let shard = self.published.shard(&name);
                let lo = connect_last
                    .and_then(|l| l.get(shard))
                    .unwrap_or(Id::default().in_shard(shard));
                let c = self.chans.get_mut(&name).unwrap();
                if let Some(sc) = c.scope.as_mut() {
                    sc.retain_sources(c.exact, &c.patterns);
                }
                if let Some(s) = c.stretch.as_mut() {
                    s.catchup_range = None;
                    s.extend_on_catchup = false;
                    s.recoveries.push(Recovery {
                        lo: Bound::After(lo),
                        first_live: None,
                    });
                }
                continue;
            }
            if was {
                self.told(i, &name, "a welcome that did not recover it");
            }
            // The close ended the stretch: it required what was delivered before it.
            self.end_stretch(&name, i, None, false);
            let c = self.chans.get_mut(&name).unwrap();
            if !now {
                c.scope = None;
                c.pending = None;
            } else {
                // A new scope: after an unrecovered resume the cursor rule may legitimately
                // deliver an event twice (see the module doc).
                c.scope = Some(Scope::default());
                c.pending = Some(Pending {
                    live_only: !(cont && c_recovered),
                    history: false,
                });
            }
        }
    }

    fn subscribed(&mut self, i: usize, channel: &str, recovered: bool, replayed: u64, req: (Option<Id>, Option<u64>)) {
        if channel.contains('*') {
            for name in self.matching(channel) {
                let c = self.chans.get_mut(&name).unwrap();
                if !c.followed() {
                    c.scope = Some(Scope::default());
                }
                c.patterns.insert(channel.to_string());
                if c.stretch.is_none() && c.pending.is_none() {
                    c.pending = Some(Pending {
                        live_only: !recovered,
                        history: false,
                    });
                }
            }
            return;
        }
        let Some(c) = self.chans.get_mut(channel) else { return };
        if !c.followed() {
            c.scope = Some(Scope::default());
        }
        c.exact = true;
        if !recovered {
            c.catchup_left = replayed;
            self.told(i, channel, "subscribed recovered:false");
            self.end_stretch(channel, i, None, false);
            self.chans.get_mut(channel).unwrap().pending = Some(Pending {
                live_only: true,
                history: false,
            });
            return;
        }
        match req {
            (Some(l), _) => {
                c.catchup_left = replayed;
                c.pending = None;
                let s = c.stretch.get_or_insert_with(|| Stretch::new(i, Bound::After(l)));
                s.catchup_range = Some((Bound::After(l), s.max_delivered));
                s.from = s.from.min(Bound::After(l));
                s.last_catchup = None;
                s.recoveries.push(Recovery {
                    lo: Bound::After(l),
                    first_live: None,
                });
            }
            (None, Some(_)) => {
                c.catchup_left = replayed;
                if replayed > 0 {
                    match c.stretch.as_mut() {
                        Some(s) => {
                            s.extend_on_catchup = true;
                            s.last_catchup = None;
                        }
                        None => {
                            c.pending = Some(Pending {
                                live_only: false,
                                history: true,
                            })
                        }
                    }
                } else if c.stretch.is_none() {
                    if c.scope.as_ref().is_none_or(|s| s.seen.is_empty()) {
                        // Nothing to replay and nothing delivered: the channel was empty, so
                        // every event of it is required from now on.
                        let mut s = Stretch::new(i, Bound::After(Id::default()));
                        s.recoveries.push(Recovery {
                            lo: Bound::After(Id::default()),
                            first_live: None,
                        });
                        c.stretch = Some(s);
                        c.pending = None;
                    } else if c.pending.is_none() {
                        c.pending = Some(Pending {
                            live_only: false,
                            history: false,
                        });
                    }
                }
            }
            (None, None) => {
                if c.stretch.is_none() && c.pending.is_none() {
                    c.pending = Some(Pending {
                        live_only: false,
                        history: false,
                    });
                }
            }
        }
    }

    fn unfollow(&mut self, i: usize, channel: &str) {
        for name in self.matching(channel) {
            let c = self.chans.get_mut(&name).unwrap();
            if channel.contains('*') {
                c.patterns.remove(channel);
            } else {
                c.exact = false;
            }
            if !c.followed() {
                self.told(i, &name, "unsubscribed");
                self.end_stretch(&name, i, None, false);
                let c = self.chans.get_mut(&name).unwrap();
                c.scope = None;
                c.pending = None;
                c.catchup_left = 0;
            } else if let Some(sc) = c.scope.as_mut() {
                sc.retain_sources(c.exact, &c.patterns);
            }
        }
    }

    fn gap(&mut self, i: usize, channels: &[String]) {
        let mut hit = BTreeSet::new();
        for ch in channels {
            hit.extend(self.matching(ch));
        }
        for name in hit {
            if !self.chans[&name].followed() {
                continue;
            }
            self.told(i, &name, "a gap frame");
            self.end_stretch(&name, i, None, false);
            self.chans.get_mut(&name).unwrap().pending = Some(Pending {
                live_only: true,
                history: false,
            });
        }
    }

    fn violation(&mut self, kind: Kind, channel: &str, ids: Vec<Id>, at: usize, since: usize, detail: String) {
        self.report.violations.push(Violation {
            kind,
            client: self.client,
            channel: channel.to_string(),
            ids,
            at,
            since,
            t_us: self.entries[at].t_us,
            detail,
        });
    }

    fn event(&mut self, i: usize, id: Id, channel: &str, fate: Fate, tag: Tag) {
        if !fate.delivered() || !self.chans.contains_key(channel) {
            return;
        }
        if !self.chans[channel].followed() {
            return;
        }
        self.report.deliveries_checked += 1;
        if self.published.is_lost(channel, id) {
            // Acknowledged, then lost with a failed primary: owed to no one. Whether the client
            // is told afterwards is reported with it.
            self.lost_untold.entry(channel.to_string()).or_default().push((i, id));
            return;
        }
        if !self.published.contains(channel, id) {
            self.violation(
                Kind::UnknownEvent,
                channel,
                vec![id],
                i,
                i,
                "delivered an id that is not in the channel's history".into(),
            );
            return;
        }
        let c = self.chans.get_mut(channel).unwrap();
        // What brought the event: a pattern brings only live events (a catch-up, and a resume's
        // replay, come through the channel's name).
        let by_patterns = if tag == Tag::Live || !c.exact {
            c.patterns.iter().cloned().collect()
        } else {
            Vec::new()
        };
        let sources = (c.exact, by_patterns);
        let scope = c.scope.get_or_insert_with(Scope::default);
        if let Some(&(first, _, _)) = scope.dedup.get(&id) {
            // The server dedups per socket. A catch-up on a new socket may bring again what an
            // earlier socket delivered (the cursor rule only filters the resume replay), and
            // the rule's exception may let an old one through: both are the rule's, not the
            // server's.
            let earlier_socket = first < self.socket_start;
            let kind = if fate == Fate::DeliveredExempt || (earlier_socket && tag == Tag::Catchup) {
                Kind::RuleDuplicate
            } else {
                Kind::Duplicate
            };
            let since = c.stretch.as_ref().map_or(first, |s| s.start.min(first));
            self.violation(
                kind,
                channel,
                vec![id],
                i,
                since,
                format!("first delivered at entry {first}"),
            );
            return;
        }
        scope.dedup.insert(id, (i, sources.0, sources.1));
        scope.seen.entry(id).or_insert(i);
        if c.stretch.is_none()
            && let Some(p) = c.pending
            && !(p.live_only && tag != Tag::Live)
        {
            let mut s = Stretch::new(i, Bound::From(id));
            if p.history {
                s.recoveries.push(Recovery {
                    lo: Bound::From(id),
                    first_live: None,
                });
            }
            c.stretch = Some(s);
            c.pending = None;
        }
        let Some(s) = c.stretch.as_mut() else { return };
        let mut misplaced = None;
        // An event passed by the cursor rule's exception finishes a cut catch-up: it is ordered
        // with the catch-up, not with the live stream.
        let order_tag = if fate == Fate::DeliveredExempt {
            Tag::Catchup
        } else {
            tag
        };
        match order_tag {
            Tag::Catchup => {
                if s.extend_on_catchup {
                    s.extend_on_catchup = false;
                    s.from = s.from.min(Bound::From(id));
                    s.catchup_range = Some((Bound::From(id), s.max_delivered));
                    s.recoveries.push(Recovery {
                        lo: Bound::From(id),
                        first_live: None,
                    });
                }
                if let Some(l) = s.last_catchup
                    && id < l
                {
                    misplaced = Some((l, "catch-up went backwards"));
                }
                s.last_catchup = Some(id);
            }
            Tag::Live | Tag::Replay => {
                if let Some(l) = s.last_live
                    && id < l
                {
                    misplaced = Some((l, "older than an event delivered before it"));
                }
                s.last_live = s.last_live.max(Some(id));
                if tag == Tag::Live {
                    s.catchup_range = None;
                    for r in s.recoveries.iter_mut().filter(|r| r.first_live.is_none()) {
                        r.first_live = Some(id);
                    }
                }
            }
        }
        s.max_delivered = s.max_delivered.max(Some(id));
        s.deliveries.push((i, id));
        let since = s.start;
        if let Some((l, why)) = misplaced {
            self.violation(Kind::OutOfOrder, channel, vec![id], i, since, format!("{why} ({l})"));
        }
    }

    /// Ends C's stretch (if any) and reports what it required and did not get. `hi`: the
    /// newest id required (None: the newest delivered); `tail`: the client was connected at the
    /// end, so ids above its newest delivery are `stalled`.
    fn end_stretch(&mut self, channel: &str, at: usize, hi: Option<Id>, tail: bool) {
        let c = self.chans.get_mut(channel).unwrap();
        let Some(mut s) = c.stretch.take() else { return };
        if c.catchup_left > 0
            && let Some((lo, ceiling)) = s.catchup_range
        {
            // A catch-up cut by this end: what it had not brought yet is not required.
            let lo = s.last_catchup.map_or(lo, Bound::After);
            if let Some(ceil) = ceiling.or(s.max_delivered) {
                s.exempt.push((lo, ceil));
            }
        }
        let scope = c.scope.clone().unwrap_or_default();
        let Some(hi) = hi.or(s.max_delivered) else { return };
        let missing: Vec<Id> = self
            .published
            .ids(channel)
            .iter()
            .copied()
            .filter(|&m| s.from.admits(m) && m <= hi)
            .filter(|m| !scope.seen.contains_key(m))
            .filter(|&m| !s.exempt.iter().any(|&(lo, h)| lo.admits(m) && m <= h))
            .collect();
        if missing.is_empty() {
            return;
        }
        // Group by where each missing id became evident: the first delivery after it.
        let mut groups: BTreeMap<(usize, Kind), Vec<Id>> = BTreeMap::new();
        for m in missing {
            let evident = s.deliveries.iter().find(|&&(_, d)| d > m).map(|&(e, _)| e);
            let kind = if tail && s.max_delivered.is_none_or(|d| m > d) {
                Kind::Stalled
            } else if s
                .recoveries
                .iter()
                .any(|r| r.lo.admits(m) && r.first_live.is_none_or(|f| m < f))
            {
                Kind::FalseRecovered
            } else {
                Kind::Gap
            };
            groups.entry((evident.unwrap_or(at), kind)).or_default().push(m);
        }
        for ((e, kind), ids) in groups {
            let n = ids.len();
            let detail = match kind {
                Kind::Stalled => format!("{n} newest event(s) never arrived by the end"),
                Kind::FalseRecovered => format!("{n} event(s) missing after recovered:true"),
                _ => format!("{n} event(s) missing in a covered stretch"),
            };
            self.violation(kind, channel, ids, e, s.start, detail);
        }
    }
}
