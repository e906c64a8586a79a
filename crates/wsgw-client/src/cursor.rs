//! The event cursor a client keeps: what `last_event_id` a resume sends, and which events after
//! that resume the application already has. The rule is docs/protocol.md, "The cursor a client
//! keeps"; the crate docs state it in short.
//!
//! The rule is about one id sequence. A single-primary deployment has one (`<ms>-<seq>`); a Redis
//! Cluster deployment has one per id-shard (`<shard>~<ms>-<seq>`), ids of different shards are not
//! ordered, and every event of a channel is in its shard (`shard_of`). So [`Cursor`] keeps one
//! [`SeqCursor`] (the rule, unchanged) per sequence and routes to it: an event by its id's shard,
//! a subscribe and its answers by its channel's shard. The resume sends each sequence's id,
//! joined with `,` in ascending shard order (one plain id for a single-primary deployment).
//!
//! Pure bookkeeping, no I/O: the [`Client`](crate::Client) feeds it every durable event, every
//! `subscribed` answer and every lost socket, in the order they happen.

use std::collections::{BTreeMap, HashMap, HashSet};

use wsgw_protocol::{EventId, shard_of};

/// The client's cursor: one [`SeqCursor`] per id sequence, by id-shard (`None`: the global
/// sequence of a single-primary deployment).
///
/// Which kind of ids the deployment issues is learnt from the ids it sends (an initial cursor, a
/// received event, or a subscribe's `last_event_id` before either); until then channels go to
/// `None`. The first id of the other kind (the first event of a cluster deployment, or a
/// deployment moved to or from a cluster) starts the positions afresh, since a position in one
/// kind of sequence means nothing in the other: subscribes in flight and unfinished catch-ups
/// carry over to their channel's shard, without a position.
#[derive(Debug, Default, Clone)]
pub(crate) struct Cursor {
    /// By id-shard; a `BTreeMap`, so in ascending shard order (`None` first).
    shards: BTreeMap<Option<u16>, SeqCursor>,
    /// Whether ids name their shard; `None` until an id has told.
    sharded: Option<bool>,
}

impl Cursor {
    /// A cursor starting at `initial` (e.g. one kept from an earlier session): an id, or a
    /// cluster cursor (`3~…,7~…`), split per shard. Unreadable parts are left out.
    pub(crate) fn new(initial: Option<&str>) -> Self {
        let mut cursor = Self::default();
        let Some(text) = initial else {
            return cursor;
        };
        if !text.contains('~') {
            if let Ok(id) = text.parse::<EventId>() {
                cursor.sharded = Some(false);
                cursor.shards.insert(None, SeqCursor::new(Some(id)));
            }
            return cursor;
        }
        cursor.sharded = Some(true);
        for id in text.split(',').filter_map(|part| part.parse::<EventId>().ok()) {
            // Not a cluster id: no position in any shard.
            if let Some(shard) = id.shard() {
                let s = cursor.at(Some(shard));
                s.highest = s.highest.max(Some(id));
            }
        }
        cursor
    }

    /// What the next resume sends as `last_event_id`, one id per sequence in ascending shard
    /// order: at most one (an unsharded id) for a single-primary deployment.
    pub(crate) fn resume_ids(&self) -> Vec<EventId> {
        let sharded = self.sharded == Some(true);
        self.shards
            .iter()
            .filter(|(shard, _)| shard.is_some() == sharded)
            .filter_map(|(_, s)| s.resume_id())
            .collect()
    }

    /// What the next resume sends as `last_event_id`, as text: the [`resume_ids`](Self::resume_ids)
    /// joined with `,`.
    pub(crate) fn resume_id(&self) -> Option<String> {
        let ids = self.resume_ids();
        (!ids.is_empty()).then(|| ids.iter().map(EventId::to_string).collect::<Vec<_>>().join(","))
    }

    /// The `last_event_id` for subscribing to `channel` again after a reconnect, when the
    /// resumed session did not restore it: where the application's events of that channel end,
    /// in the channel's shard.
    pub(crate) fn resubscribe_from(&self, channel: &str) -> Option<EventId> {
        self.shards.get(&self.key(channel))?.resubscribe_from(channel)
    }

    /// A durable event arrived. Returns whether the application gets it: `false` for an event it
    /// already has (only while the filter after a resume is on in the id's shard).
    pub(crate) fn event(&mut self, channel: &str, id: EventId) -> bool {
        self.learn(id);
        self.at(id.shard()).event(channel, id)
    }

    /// A `subscribe` frame went out with `request_id`; `from` is its `last_event_id`. Only an id
    /// of `channel`'s sequence is a position in it.
    pub(crate) fn subscribe_sent(&mut self, request_id: u64, channel: &str, from: Option<EventId>, kind: Subscribe) {
        if self.sharded.is_none()
            && let Some(from) = from
        {
            self.learn(from);
        }
        let key = self.key(channel);
        let from = from.filter(|id| id.shard() == key);
        self.at(key).subscribe_sent(request_id, channel, from, kind);
    }

    /// A `subscribed` answer: `replayed > 0` starts a catch-up of `channel`.
    pub(crate) fn subscribed(&mut self, request_id: Option<u64>, channel: &str, replayed: u64) {
        let key = self.key(channel);
        self.at(key).subscribed(request_id, channel, replayed);
    }

    /// An `error` answer to a call (a refused subscribe starts nothing).
    pub(crate) fn refused(&mut self, request_id: Option<u64>) {
        self.shards.values_mut().for_each(|s| s.refused(request_id));
    }

    /// The channel was left (by the application or by the server): its catch-up ends.
    pub(crate) fn unsubscribed(&mut self, channel: &str) {
        if let Some(s) = self.shards.get_mut(&self.key(channel)) {
            s.unsubscribed(channel);
        }
    }

    /// The socket is gone (see [`SeqCursor::disconnected`]), in every sequence.
    pub(crate) fn disconnected(&mut self) {
        self.shards.values_mut().for_each(SeqCursor::disconnected);
    }

    /// A new socket was welcomed: frames sent before it are not in flight any more.
    pub(crate) fn connected(&mut self) {
        self.shards.values_mut().for_each(SeqCursor::connected);
    }

    /// The sequence `channel`'s ids are in.
    fn key(&self, channel: &str) -> Option<u16> {
        (self.sharded == Some(true)).then(|| shard_of(channel))
    }

    fn at(&mut self, key: Option<u16>) -> &mut SeqCursor {
        self.shards.entry(key).or_default()
    }

    /// Notes the kind of `id`; on a change, starts the positions afresh (see [`Cursor`]).
    fn learn(&mut self, id: EventId) {
        let sharded = id.shard().is_some();
        let was = self.sharded.replace(sharded);
        // Before any id, channels went to `None`: the home of unsharded ids already.
        if was == Some(sharded) || (was.is_none() && !sharded) {
            return;
        }
        for s in std::mem::take(&mut self.shards).into_values() {
            for p in s.pending {
                let key = self.key(&p.channel);
                self.at(key).pending.push(Pending { from: None, ..p });
            }
            for (channel, c) in s.catchups {
                let key = self.key(&channel);
                self.at(key).catchups.insert(channel, CatchUp { last: None, ..c });
            }
        }
    }
}

/// The cursor of one id sequence (the global one, or one id-shard's): the highest id received,
/// the unfinished catch-ups, and the filter that follows a resume which cut a catch-up short.
#[derive(Debug, Default, Clone)]
struct SeqCursor {
    /// The highest `event_id` received.
    highest: Option<EventId>,
    /// Unfinished catch-ups on the current socket, by channel: a `subscribed` with `replayed: N`
    /// said the next N durable events of that channel are older ones.
    catchups: HashMap<String, CatchUp>,
    /// `subscribe` frames sent on the current socket and not answered yet.
    pending: Vec<Pending>,
    /// Set by a lost socket that cut a catch-up short; ends at the first event above `old`.
    filter: Option<Filter>,
}

#[derive(Debug, Clone)]
struct CatchUp {
    /// Catch-up events still to come.
    remaining: u64,
    /// The last catch-up event received, or the subscribe's `last_event_id` before the first one
    /// (`None` for a `history` catch-up that has delivered nothing yet).
    last: Option<EventId>,
}

/// What a `subscribe` is, for the cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Subscribe {
    /// The application subscribes to a channel it did not follow: whatever the catch-up brings
    /// is new to it.
    New,
    /// The client subscribes again, after a reconnect, to a topic the resume did not restore:
    /// the application has its events up to the subscribe's `last_event_id`.
    Again,
    /// The channel is subscribed on the socket already: the gateway replays nothing.
    Same,
}

#[derive(Debug, Clone)]
struct Pending {
    request_id: u64,
    channel: String,
    /// The subscribe's `last_event_id`.
    from: Option<EventId>,
    kind: Subscribe,
}

#[derive(Debug, Clone)]
struct Filter {
    /// The cursor when the socket dropped. `None`: no event had been received.
    old: Option<EventId>,
    /// Channels whose catch-up was cut short: the application has their events up to this id and
    /// none of those between it and `old`.
    behind: HashMap<String, EventId>,
    /// Channels the application subscribed to since: all their events are new to it.
    new: HashSet<String>,
}

impl SeqCursor {
    /// A cursor starting at `highest` (e.g. an id kept from an earlier session).
    fn new(highest: Option<EventId>) -> Self {
        Self {
            highest,
            ..Self::default()
        }
    }

    /// What the next resume sends as `last_event_id`: the highest id received, lowered to the
    /// position of every unfinished catch-up.
    pub(crate) fn resume_id(&self) -> Option<EventId> {
        self.behind().values().min().copied().or(self.highest)
    }

    /// The `last_event_id` for subscribing to `channel` again after a reconnect, when the
    /// resumed session did not restore it: where the application's events of that channel end.
    pub(crate) fn resubscribe_from(&self, channel: &str) -> Option<EventId> {
        self.filter
            .as_ref()
            .and_then(|f| f.behind.get(channel).copied())
            .or(self.highest)
    }

    /// A durable event arrived. Returns whether the application gets it: `false` for an event it
    /// already has (only while the filter after a resume is on).
    pub(crate) fn event(&mut self, channel: &str, id: EventId) -> bool {
        if let Some(c) = self.catchups.get_mut(channel) {
            c.last = c.last.max(Some(id));
            c.remaining = c.remaining.saturating_sub(1);
            if c.remaining == 0 {
                self.catchups.remove(channel);
            }
        }
        if let Some(f) = self.filter.as_mut()
            && !f.new.contains(channel)
        {
            if Some(id) > f.old {
                // The resume's replay has passed the old cursor: nothing older can repeat.
                self.filter = None;
            } else {
                match f.behind.get_mut(channel) {
                    Some(b) if id > *b => *b = id,
                    _ => return false,
                }
            }
        }
        if Some(id) > self.highest {
            self.highest = Some(id);
        }
        true
    }

    /// A `subscribe` frame went out with `request_id`; `from` is its `last_event_id`.
    pub(crate) fn subscribe_sent(&mut self, request_id: u64, channel: &str, from: Option<EventId>, kind: Subscribe) {
        self.pending.retain(|p| p.request_id != request_id);
        self.pending.push(Pending {
            request_id,
            channel: channel.to_owned(),
            from,
            kind,
        });
    }

    /// A `subscribed` answer: `replayed > 0` starts a catch-up of `channel`.
    pub(crate) fn subscribed(&mut self, request_id: Option<u64>, channel: &str, replayed: u64) {
        let pending = self.take_pending(request_id);
        if let Some(f) = self.filter.as_mut()
            && pending.as_ref().is_some_and(|p| p.kind == Subscribe::New)
        {
            // Its catch-up may be older than the old cursor; the filter must not take it.
            f.new.insert(channel.to_owned());
        }
        let from = pending.and_then(|p| p.from);
        if replayed > 0 && !channel.contains('*') {
            self.catchups.insert(
                channel.to_owned(),
                CatchUp {
                    remaining: replayed,
                    last: from,
                },
            );
        }
    }

    /// An `error` answer to a call (a refused subscribe starts nothing).
    pub(crate) fn refused(&mut self, request_id: Option<u64>) {
        self.take_pending(request_id);
    }

    /// The channel was left (by the application or by the server): its catch-up ends.
    pub(crate) fn unsubscribed(&mut self, channel: &str) {
        self.catchups.remove(channel);
        self.pending.retain(|p| p.channel != channel);
        // The filter stays: repeats of other channels may still be on their way.
        if let Some(f) = self.filter.as_mut() {
            f.behind.remove(channel);
            f.new.remove(channel);
        }
    }

    /// The socket is gone. Unfinished catch-ups become the filter the next socket's events pass
    /// through. Calling it again (failed reconnect attempts) changes nothing.
    pub(crate) fn disconnected(&mut self) {
        let behind = self.behind();
        self.catchups.clear();
        self.pending.clear();
        self.filter = (!behind.is_empty()).then_some(Filter {
            old: self.highest,
            behind,
            new: HashSet::new(),
        });
    }

    /// A new socket was welcomed: frames sent before it are not in flight any more.
    pub(crate) fn connected(&mut self) {
        self.pending.clear();
    }

    fn take_pending(&mut self, request_id: Option<u64>) -> Option<Pending> {
        let i = self.pending.iter().position(|p| Some(p.request_id) == request_id)?;
        Some(self.pending.swap_remove(i))
    }

    /// The channels whose events the application has only up to an id below the cursor, and
    /// that id. Every other channel is complete up to the cursor.
    fn behind(&self) -> HashMap<String, EventId> {
        let mut out = self.filter.as_ref().map(|f| f.behind.clone()).unwrap_or_default();
        let new = |channel: &String| self.filter.as_ref().is_some_and(|f| f.new.contains(channel));
        // A subscribe in flight when the socket drops may or may not have started a catch-up:
        // it counts as one that delivered nothing yet.
        let starts = self.catchups.iter().map(|(ch, c)| (ch, c.last, new(ch))).chain(
            self.pending
                .iter()
                .filter(|p| p.kind != Subscribe::Same && !self.catchups.contains_key(&p.channel))
                .map(|p| (&p.channel, p.from, p.kind == Subscribe::New)),
        );
        for (channel, start, new) in starts {
            // A `history` preview cut before its first event is not repeated.
            let Some(start) = start else { continue };
            // What the application had of the channel apart from this catch-up.
            let base = match &self.filter {
                Some(f) if !new => f.behind.get(channel).copied().or(f.old),
                _ => None,
            };
            let have = base.max(Some(start)).unwrap_or(start);
            if self.highest.is_none_or(|h| have < h) {
                out.insert(channel.clone(), have);
            } else {
                out.remove(channel);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> EventId {
        EventId::new(ms, 0)
    }

    /// Feeds events; returns the ids the application gets.
    fn feed(c: &mut Cursor, events: &[(&str, u64)]) -> Vec<u64> {
        events
            .iter()
            .filter(|(ch, ms)| c.event(ch, id(*ms)))
            .map(|(_, ms)| *ms)
            .collect()
    }

    /// A cursor starting at the single-primary id `ms-0`.
    fn start(ms: u64) -> Cursor {
        Cursor::new(Some(&id(ms).to_string()))
    }

    /// What a single-primary cursor's resume sends: one id at most, and as text that id exactly.
    fn resume(c: &Cursor) -> Option<EventId> {
        let ids = c.resume_ids();
        assert!(ids.len() <= 1 && ids.iter().all(|i| i.shard().is_none()), "{ids:?}");
        assert_eq!(c.resume_id(), ids.first().map(EventId::to_string));
        ids.first().copied()
    }

    #[test]
    fn without_catch_ups_the_cursor_is_the_highest_id() {
        let mut c = Cursor::new(None);
        assert_eq!(resume(&c), None);
        assert_eq!(feed(&mut c, &[("a", 5), ("b", 7), ("a", 9)]), [5, 7, 9]);
        assert_eq!(resume(&c), Some(id(9)));
        c.disconnected();
        c.connected();
        assert_eq!(resume(&c), Some(id(9)));
        assert_eq!(c.resubscribe_from("a"), Some(id(9)));
        // No filter: everything the resume brings is passed on.
        assert_eq!(feed(&mut c, &[("a", 10), ("b", 11)]), [10, 11]);
        assert_eq!(resume(&start(3)), Some(id(3)));
    }

    #[test]
    fn a_finished_catch_up_leaves_the_highest_id() {
        let mut c = Cursor::new(None);
        feed(&mut c, &[("user", 100)]);
        c.subscribe_sent(1, "room", Some(id(10)), Subscribe::New);
        c.subscribed(Some(1), "room", 3);
        // While the catch-up runs, a resume would start from its position.
        assert_eq!(resume(&c), Some(id(10)));
        assert_eq!(feed(&mut c, &[("room", 20), ("room", 30)]), [20, 30]);
        assert_eq!(resume(&c), Some(id(30)));
        assert_eq!(feed(&mut c, &[("room", 40)]), [40]);
        assert_eq!(resume(&c), Some(id(100)));
        // Live events of the channel afterwards are not catch-up events.
        assert_eq!(feed(&mut c, &[("room", 110)]), [110]);
        assert_eq!(resume(&c), Some(id(110)));
    }

    #[test]
    fn a_drop_mid_catch_up_resumes_from_it_and_filters_repeats() {
        let mut c = Cursor::new(None);
        feed(&mut c, &[("user", 100)]);
        c.subscribe_sent(1, "room", Some(id(10)), Subscribe::New);
        c.subscribed(Some(1), "room", 4);
        assert_eq!(feed(&mut c, &[("room", 20)]), [20]);
        assert_eq!(resume(&c), Some(id(20)));
        c.disconnected();
        c.disconnected(); // a failed attempt changes nothing
        assert_eq!(resume(&c), Some(id(20)));
        c.connected();
        assert_eq!(c.resubscribe_from("room"), Some(id(20)));
        assert_eq!(c.resubscribe_from("user"), Some(id(100)));
        // The resume replays everything after 20 on every channel, in id order.
        let got = feed(
            &mut c,
            &[
                ("room", 30),
                ("other", 35),
                ("room", 40),
                ("room", 50),
                ("user", 100),
                ("user", 120),
                ("room", 130),
            ],
        );
        assert_eq!(got, [30, 40, 50, 120, 130]);
        assert_eq!(resume(&c), Some(id(130)));
        // The filter has ended: a later catch-up's older events pass.
        c.subscribe_sent(2, "new", Some(id(1)), Subscribe::New);
        c.subscribed(Some(2), "new", 1);
        assert_eq!(feed(&mut c, &[("new", 2)]), [2]);
    }

    #[test]
    fn the_filter_ends_at_the_first_event_above_the_old_cursor() {
        let mut c = Cursor::new(None);
        feed(&mut c, &[("user", 100)]);
        c.subscribe_sent(1, "room", Some(id(10)), Subscribe::New);
        c.subscribed(Some(1), "room", 2);
        c.disconnected();
        c.connected();
        assert_eq!(resume(&c), Some(id(10)));
        assert_eq!(feed(&mut c, &[("user", 50), ("room", 60), ("room", 10)]), [60]);
        assert_eq!(feed(&mut c, &[("x", 101), ("user", 50)]), [101, 50]);
    }

    #[test]
    fn a_second_drop_during_the_filter_keeps_what_it_learned() {
        let mut c = Cursor::new(None);
        feed(&mut c, &[("user", 100)]);
        c.subscribe_sent(1, "room", Some(id(10)), Subscribe::New);
        c.subscribed(Some(1), "room", 5);
        feed(&mut c, &[("room", 20)]);
        c.disconnected();
        c.connected();
        assert_eq!(feed(&mut c, &[("room", 30), ("user", 40)]), [30]);
        assert_eq!(resume(&c), Some(id(30)));
        c.disconnected();
        c.connected();
        assert_eq!(resume(&c), Some(id(30)));
        assert_eq!(
            feed(&mut c, &[("room", 30), ("user", 40), ("room", 45), ("user", 100)]),
            [45]
        );
        assert_eq!(feed(&mut c, &[("user", 101)]), [101]);
    }

    #[test]
    fn a_resubscribe_catch_up_during_the_filter_adds_no_repeat() {
        // The session was not restored: "room" is subscribed again from where its events end,
        // "chat" (complete up to the cursor) from the cursor.
        let mut c = Cursor::new(None);
        feed(&mut c, &[("chat", 90), ("user", 100)]);
        c.subscribe_sent(1, "room", Some(id(10)), Subscribe::New);
        c.subscribed(Some(1), "room", 5);
        feed(&mut c, &[("room", 20)]);
        c.disconnected();
        c.connected();
        let room_from = c.resubscribe_from("room");
        let chat_from = c.resubscribe_from("chat");
        assert_eq!((room_from, chat_from), (Some(id(20)), Some(id(100))));
        c.subscribe_sent(2, "room", room_from, Subscribe::Again);
        c.subscribe_sent(3, "chat", chat_from, Subscribe::Again);
        // The welcome's replay (automatic channels, after 20): the old user event repeats.
        assert_eq!(feed(&mut c, &[("user", 100)]), Vec::<u64>::new());
        c.subscribed(Some(2), "room", 3);
        assert_eq!(feed(&mut c, &[("room", 30)]), [30]);
        // Dropped again before the rest: the catch-up of "room" goes on from 30.
        assert_eq!(resume(&c), Some(id(30)));
        c.disconnected();
        c.connected();
        assert_eq!(c.resubscribe_from("room"), Some(id(30)));
        assert_eq!(c.resubscribe_from("chat"), Some(id(100)));
    }

    #[test]
    fn a_channel_subscribed_while_the_filter_is_on_is_not_filtered() {
        let mut c = Cursor::new(None);
        feed(&mut c, &[("user", 100)]);
        c.subscribe_sent(1, "room", Some(id(10)), Subscribe::New);
        c.subscribed(Some(1), "room", 4);
        c.disconnected();
        c.connected();
        // The resume's replay is quiet (nothing above the old cursor yet); the application
        // subscribes to a new channel with history.
        c.subscribe_sent(3, "news", None, Subscribe::New);
        c.subscribed(Some(3), "news", 3);
        assert_eq!(feed(&mut c, &[("user", 50), ("news", 20), ("room", 25)]), [20, 25]);
        // Cut again: the news catch-up goes on from 20, "room" from 25.
        assert_eq!(resume(&c), Some(id(20)));
        c.disconnected();
        c.connected();
        assert_eq!(
            feed(&mut c, &[("news", 20), ("room", 22), ("news", 30), ("room", 30)]),
            [30, 30]
        );
        // A subscribe in flight to a new channel while the filter is on, cut by a drop.
        let mut c = Cursor::new(None);
        feed(&mut c, &[("user", 100)]);
        c.subscribe_sent(1, "room", Some(id(50)), Subscribe::New);
        c.subscribed(Some(1), "room", 4);
        c.disconnected();
        c.connected();
        c.subscribe_sent(2, "news", Some(id(5)), Subscribe::New);
        assert_eq!(resume(&c), Some(id(5)));
        c.disconnected();
        c.connected();
        assert_eq!(feed(&mut c, &[("news", 6), ("room", 40), ("room", 60)]), [6, 60]);
    }

    #[test]
    fn a_history_catch_up_cut_before_its_first_event_is_not_repeated() {
        let mut c = Cursor::new(None);
        feed(&mut c, &[("user", 100)]);
        c.subscribe_sent(1, "room", None, Subscribe::New);
        c.subscribed(Some(1), "room", 3);
        assert_eq!(resume(&c), Some(id(100)));
        c.disconnected();
        c.connected();
        assert_eq!(resume(&c), Some(id(100)));
        // Once it has delivered one, it continues from there.
        let mut c = Cursor::new(None);
        feed(&mut c, &[("user", 100)]);
        c.subscribe_sent(1, "room", None, Subscribe::New);
        c.subscribed(Some(1), "room", 3);
        feed(&mut c, &[("room", 40)]);
        assert_eq!(resume(&c), Some(id(40)));
        c.disconnected();
        c.connected();
        assert_eq!(
            feed(&mut c, &[("room", 40), ("room", 50), ("user", 100), ("user", 110)]),
            [50, 110]
        );
    }

    #[test]
    fn several_catch_ups_resume_from_the_lowest() {
        let mut c = Cursor::new(None);
        feed(&mut c, &[("user", 100)]);
        c.subscribe_sent(1, "a", Some(id(10)), Subscribe::New);
        c.subscribed(Some(1), "a", 2);
        c.subscribe_sent(2, "b", Some(id(5)), Subscribe::New);
        c.subscribed(Some(2), "b", 2);
        feed(&mut c, &[("a", 20), ("b", 8)]);
        assert_eq!(resume(&c), Some(id(8)));
        c.disconnected();
        c.connected();
        let got = feed(
            &mut c,
            &[
                ("b", 9),
                ("a", 15),
                ("a", 20),
                ("a", 30),
                ("b", 40),
                ("user", 100),
                ("a", 101),
            ],
        );
        assert_eq!(got, [9, 30, 40, 101]);
    }

    #[test]
    fn a_subscribe_in_flight_when_the_socket_drops_counts_as_a_catch_up() {
        let mut c = Cursor::new(None);
        feed(&mut c, &[("user", 100)]);
        c.subscribe_sent(1, "room", Some(id(10)), Subscribe::New);
        // Not fresh (already subscribed: the server replays nothing), or no id: no effect.
        c.subscribe_sent(2, "chat", Some(id(5)), Subscribe::Same);
        c.subscribe_sent(3, "feed", None, Subscribe::New);
        assert_eq!(resume(&c), Some(id(10)));
        c.disconnected();
        c.connected();
        assert_eq!(c.resubscribe_from("room"), Some(id(10)));
        assert_eq!(feed(&mut c, &[("chat", 50), ("room", 50), ("feed", 60)]), [50]);
        // Answered with nothing replayed: no catch-up.
        let mut c = start(100);
        c.subscribe_sent(1, "room", Some(id(10)), Subscribe::New);
        c.subscribed(Some(1), "room", 0);
        assert_eq!(resume(&c), Some(id(100)));
        c.subscribe_sent(2, "x", Some(id(10)), Subscribe::New);
        c.refused(Some(2));
        assert_eq!(resume(&c), Some(id(100)));
    }

    #[test]
    fn leaving_a_channel_ends_its_catch_up() {
        let mut c = start(100);
        c.subscribe_sent(1, "room", Some(id(10)), Subscribe::New);
        c.subscribed(Some(1), "room", 5);
        c.unsubscribed("room");
        assert_eq!(resume(&c), Some(id(100)));
        // Also during the filter.
        c.subscribe_sent(2, "room", Some(id(10)), Subscribe::New);
        c.subscribed(Some(2), "room", 5);
        c.disconnected();
        c.connected();
        assert_eq!(resume(&c), Some(id(10)));
        c.unsubscribed("room");
        assert_eq!(resume(&c), Some(id(100)));
        // Repeats of the other channels are still dropped.
        assert_eq!(feed(&mut c, &[("user", 90), ("room", 95), ("user", 101)]), [101]);
    }

    #[test]
    fn patterns_and_other_channels_do_not_count_as_catch_up() {
        let mut c = start(100);
        c.subscribe_sent(1, "room:*", Some(id(10)), Subscribe::New);
        c.subscribed(Some(1), "room:*", 3);
        assert_eq!(resume(&c), Some(id(100)));
        c.subscribe_sent(2, "room", Some(id(10)), Subscribe::New);
        c.subscribed(Some(2), "room", 1);
        assert_eq!(feed(&mut c, &[("other", 101), ("room", 20)]), [101, 20]);
        assert_eq!(resume(&c), Some(id(101)));
    }

    #[test]
    fn with_no_event_received_a_cut_catch_up_still_resumes_from_its_start() {
        let mut c = Cursor::new(None);
        c.subscribe_sent(1, "room", Some(id(10)), Subscribe::New);
        c.subscribed(Some(1), "room", 3);
        assert_eq!(resume(&c), Some(id(10)));
        c.disconnected();
        c.connected();
        assert_eq!(resume(&c), Some(id(10)));
        assert_eq!(feed(&mut c, &[("room", 20), ("user", 21)]), [20, 21]);
        assert_eq!(resume(&c), Some(id(21)));
    }

    // ---- Redis Cluster ids: one sequence per id-shard ----

    // Channels and their shards (wsgw_protocol::shard_of, the first test checks them).
    const A: &str = "a"; // shard 3
    const A2: &str = "room:106"; // shard 3
    const B: &str = "b"; // shard 9
    const B2: &str = "room:10"; // shard 9
    const U: &str = "user:42"; // shard 6
    const R0: &str = "room:1"; // shard 0
    const R12: &str = "room:103"; // shard 12

    fn sid(text: &str) -> EventId {
        text.parse().unwrap()
    }

    /// Feeds events with cluster ids; returns the ids the application gets.
    fn feed_sharded<'a>(c: &mut Cursor, events: &[(&str, &'a str)]) -> Vec<&'a str> {
        events
            .iter()
            .filter(|(ch, i)| c.event(ch, sid(i)))
            .map(|(_, i)| *i)
            .collect()
    }

    #[test]
    fn the_test_channels_are_in_the_shards_the_tests_expect() {
        for (channel, shard) in [(A, 3), (A2, 3), (B, 9), (B2, 9), (U, 6), (R0, 0), (R12, 12)] {
            assert_eq!(shard_of(channel), shard, "{channel}");
        }
    }

    #[test]
    fn interleaved_events_of_three_shards_give_the_highest_of_each_in_shard_order() {
        let mut c = Cursor::new(None);
        let events = [
            (R12, "12~500-0"),
            (B, "9~700-3"),
            (A, "3~900-0"),
            (B2, "9~700-10"), // 700-10 > 700-3: numeric, not as strings
            (R12, "12~600-0"),
            (A2, "3~899-0"), // lower in its own shard
        ];
        assert_eq!(
            feed_sharded(&mut c, &events).len(),
            6,
            "every event is new to the application"
        );
        assert_eq!(c.resume_id().as_deref(), Some("3~900-0,9~700-10,12~600-0"));
        assert_eq!(
            c.resume_ids(),
            [sid("3~900-0"), sid("9~700-10"), sid("12~600-0")],
            "ascending shard numbers, not strings"
        );
        assert_eq!(
            c.resume_id()
                .unwrap()
                .parse::<wsgw_protocol::ShardCursor>()
                .unwrap()
                .get(9),
            Some(sid("9~700-10"))
        );
        c.disconnected();
        c.connected();
        assert_eq!(c.resume_id().as_deref(), Some("3~900-0,9~700-10,12~600-0"));
    }

    #[test]
    fn a_lower_id_in_another_shard_changes_nothing() {
        let mut c = Cursor::new(None);
        assert_eq!(
            feed_sharded(&mut c, &[(U, "6~2000-0"), (A, "3~5-0")]),
            ["6~2000-0", "3~5-0"]
        );
        assert_eq!(
            c.resume_id().as_deref(),
            Some("3~5-0,6~2000-0"),
            "shard 6 stays where it is"
        );
        feed_sharded(&mut c, &[(R0, "0~1-0"), (A, "3~4-0")]);
        assert_eq!(c.resume_id().as_deref(), Some("0~1-0,3~5-0,6~2000-0"));
        // Nor does it end another shard's filter after a resume.
        c.subscribe_sent(1, A2, Some(sid("3~1-0")), Subscribe::New);
        c.subscribed(Some(1), A2, 3);
        c.disconnected();
        c.connected();
        assert_eq!(c.resume_id().as_deref(), Some("0~1-0,3~1-0,6~2000-0"));
        assert_eq!(
            feed_sharded(&mut c, &[(U, "6~2001-0"), (A, "3~5-0"), (A2, "3~2-0"), (A, "3~6-0")]),
            ["6~2001-0", "3~2-0", "3~6-0"]
        );
    }

    #[test]
    fn a_catch_up_cut_short_in_one_shard_lowers_that_shard_only() {
        let mut c = Cursor::new(None);
        feed_sharded(&mut c, &[(A2, "3~900-0"), (U, "6~300-0"), (B, "9~500-0")]);
        c.subscribe_sent(1, A, Some(sid("3~100-0")), Subscribe::New);
        assert_eq!(c.resume_id().as_deref(), Some("3~100-0,6~300-0,9~500-0"), "in flight");
        c.subscribed(Some(1), A, 3);
        // The catch-up's first of 3, and a live event of shard 9 meanwhile.
        assert_eq!(feed_sharded(&mut c, &[(A, "3~150-0"), (B, "9~501-0")]).len(), 2);
        assert_eq!(c.resume_id().as_deref(), Some("3~150-0,6~300-0,9~501-0"));
        c.disconnected();
        c.disconnected(); // a failed attempt changes nothing
        c.connected();
        assert_eq!(c.resume_id().as_deref(), Some("3~150-0,6~300-0,9~501-0"));
        assert_eq!(c.resubscribe_from(A), Some(sid("3~150-0")));
        assert_eq!(c.resubscribe_from(A2), Some(sid("3~900-0")));
        assert_eq!(c.resubscribe_from(B), Some(sid("9~501-0")));
        // The resume replays each shard after its id: shard 3's filter goes on while shard 6
        // passes its old position, and ends at shard 3's first event above its old cursor.
        let got = feed_sharded(
            &mut c,
            &[
                (A, "3~150-0"),  // a repeat of the catch-up
                (A, "3~200-0"),  // the rest of the catch-up
                (U, "6~301-0"),  // new in shard 6
                (A2, "3~900-0"), // a repeat in shard 3
                (A, "3~250-0"),  // the rest of the catch-up
                (A2, "3~901-0"), // above shard 3's old position: ends its filter
                (B, "9~502-0"),
                (A, "3~120-0"), // the filter has ended: passed on
            ],
        );
        assert_eq!(got, ["3~200-0", "6~301-0", "3~250-0", "3~901-0", "9~502-0", "3~120-0"]);
        assert_eq!(c.resume_id().as_deref(), Some("3~901-0,6~301-0,9~502-0"));
    }

    #[test]
    fn a_topic_is_subscribed_again_from_its_own_shards_position() {
        let mut c = Cursor::new(None);
        c.subscribe_sent(1, A, Some(sid("3~100-0")), Subscribe::New);
        c.subscribed(Some(1), A, 2);
        feed_sharded(
            &mut c,
            &[(A, "3~150-0"), (A2, "3~900-0"), (U, "6~300-0"), (B, "9~500-0")],
        );
        c.disconnected();
        c.connected();
        assert_eq!(
            c.resubscribe_from(A),
            Some(sid("3~150-0")),
            "where its cut catch-up stopped"
        );
        assert_eq!(c.resubscribe_from(U), Some(sid("6~300-0")), "its shard's highest");
        assert_eq!(c.resubscribe_from(B2), Some(sid("9~500-0")));
        assert_eq!(
            c.resubscribe_from(R0),
            None,
            "shard 0 has no position: the topic's own options"
        );
        // A subscribe's id of another shard (or of no shard) is no position in the channel's.
        c.subscribe_sent(2, R12, Some(sid("6~5-0")), Subscribe::Again);
        c.subscribe_sent(3, R0, Some(id(5)), Subscribe::Again);
        c.subscribed(Some(2), R12, 2);
        c.subscribed(Some(3), R0, 2);
        assert_eq!(c.resume_id().as_deref(), Some("3~150-0,6~300-0,9~500-0"));
    }

    #[test]
    fn an_initial_joined_cursor_is_split_per_shard() {
        let mut c = Cursor::new(Some("9~5-0,3~7-1"));
        assert_eq!(
            c.resume_id().as_deref(),
            Some("3~7-1,9~5-0"),
            "sent back in shard order"
        );
        assert_eq!(c.resubscribe_from(B), Some(sid("9~5-0")));
        assert_eq!(c.resubscribe_from(U), None);
        assert_eq!(feed_sharded(&mut c, &[(A, "3~7-0"), (U, "6~1-0")]).len(), 2);
        assert_eq!(
            c.resume_id().as_deref(),
            Some("3~7-1,6~1-0,9~5-0"),
            "3~7-0 does not lower shard 3"
        );
        // A subscribe from the channel's shard position catches up from it.
        c.subscribe_sent(1, B, c.resubscribe_from(B), Subscribe::New);
        c.subscribed(Some(1), B, 2);
        feed_sharded(&mut c, &[(B, "9~5-1"), (B2, "9~80-0")]);
        assert_eq!(c.resume_id().as_deref(), Some("3~7-1,6~1-0,9~5-1"));
        // A single cluster id names that shard only; unreadable parts are left out.
        assert_eq!(Cursor::new(Some("7~1-0")).resume_id().as_deref(), Some("7~1-0"));
        assert_eq!(
            Cursor::new(Some("3~1-0,x,2-0,3~2-0")).resume_id().as_deref(),
            Some("3~2-0")
        );
        assert_eq!(Cursor::new(Some("nope")).resume_id(), None);
        assert_eq!(Cursor::new(Some("17-3")).resume_ids(), [EventId::new(17, 3)]);
    }

    #[test]
    fn a_catch_up_started_before_any_id_lands_in_its_channels_shard() {
        // A `history` preview sent before the first id: the ids tell the kind afterwards.
        let mut c = Cursor::new(None);
        c.subscribe_sent(1, U, None, Subscribe::New);
        c.subscribed(Some(1), U, 3);
        feed_sharded(&mut c, &[(U, "6~10-0"), (R0, "0~50-0"), (A, "3~40-0")]);
        assert_eq!(c.resume_id().as_deref(), Some("0~50-0,3~40-0,6~10-0"));
        // A subscribe's cluster id before any event names the shard its catch-up resumes in.
        let mut c = Cursor::new(None);
        c.subscribe_sent(1, A, Some(sid("3~100-0")), Subscribe::New);
        c.subscribed(Some(1), A, 2);
        c.disconnected();
        c.connected();
        assert_eq!(c.resume_id().as_deref(), Some("3~100-0"));
    }

    #[test]
    fn single_primary_ids_keep_one_plain_cursor_and_a_change_of_kind_starts_afresh() {
        let mut c = Cursor::new(None);
        assert_eq!(feed(&mut c, &[("a", 5), ("user:42", 7), ("b", 6)]), [5, 7, 6]);
        assert_eq!(c.resume_id().as_deref(), Some("7-0"));
        assert_eq!(c.resume_ids(), [id(7)]);
        assert_eq!(
            c.resubscribe_from("room:1"),
            Some(id(7)),
            "one sequence for every channel"
        );
        // A subscribe in flight, then the deployment moves to a cluster: positions start afresh,
        // the subscribe is carried over to its channel's shard without a position.
        c.subscribe_sent(1, A, Some(id(3)), Subscribe::New);
        assert_eq!(feed_sharded(&mut c, &[(U, "6~1-0")]), ["6~1-0"]);
        c.subscribed(Some(1), A, 2);
        assert_eq!(c.resume_id().as_deref(), Some("6~1-0"));
        assert_eq!(c.resubscribe_from("b"), None);
        feed_sharded(&mut c, &[(A, "3~4-0")]);
        assert_eq!(c.resume_id().as_deref(), Some("3~4-0,6~1-0"));
        // And back: a plain id starts the plain cursor afresh.
        assert_eq!(feed(&mut c, &[("a", 2)]), [2]);
        assert_eq!(c.resume_id().as_deref(), Some("2-0"));
    }
}
