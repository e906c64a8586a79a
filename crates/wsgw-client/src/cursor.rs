//! The event cursor a client keeps: what `last_event_id` a resume sends, and which events after
//! that resume the application already has. The rule is docs/protocol.md, "The cursor a client
//! keeps"; the crate docs state it in short.
//!
//! Pure bookkeeping, no I/O: the [`Client`](crate::Client) feeds it every durable event, every
//! `subscribed` answer and every lost socket, in the order they happen.

use std::collections::{HashMap, HashSet};

use wsgw_protocol::EventId;

/// The cursor: the highest id received, the unfinished catch-ups, and the filter that follows a
/// resume which cut a catch-up short.
#[derive(Debug, Default, Clone)]
pub(crate) struct Cursor {
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

impl Cursor {
    /// A cursor starting at `highest` (e.g. an id kept from an earlier session).
    pub(crate) fn new(highest: Option<EventId>) -> Self {
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

    #[test]
    fn without_catch_ups_the_cursor_is_the_highest_id() {
        let mut c = Cursor::new(None);
        assert_eq!(c.resume_id(), None);
        assert_eq!(feed(&mut c, &[("a", 5), ("b", 7), ("a", 9)]), [5, 7, 9]);
        assert_eq!(c.resume_id(), Some(id(9)));
        c.disconnected();
        c.connected();
        assert_eq!(c.resume_id(), Some(id(9)));
        assert_eq!(c.resubscribe_from("a"), Some(id(9)));
        // No filter: everything the resume brings is passed on.
        assert_eq!(feed(&mut c, &[("a", 10), ("b", 11)]), [10, 11]);
        assert_eq!(Cursor::new(Some(id(3))).resume_id(), Some(id(3)));
    }

    #[test]
    fn a_finished_catch_up_leaves_the_highest_id() {
        let mut c = Cursor::new(None);
        feed(&mut c, &[("user", 100)]);
        c.subscribe_sent(1, "room", Some(id(10)), Subscribe::New);
        c.subscribed(Some(1), "room", 3);
        // While the catch-up runs, a resume would start from its position.
        assert_eq!(c.resume_id(), Some(id(10)));
        assert_eq!(feed(&mut c, &[("room", 20), ("room", 30)]), [20, 30]);
        assert_eq!(c.resume_id(), Some(id(30)));
        assert_eq!(feed(&mut c, &[("room", 40)]), [40]);
        assert_eq!(c.resume_id(), Some(id(100)));
        // Live events of the channel afterwards are not catch-up events.
        assert_eq!(feed(&mut c, &[("room", 110)]), [110]);
        assert_eq!(c.resume_id(), Some(id(110)));
    }

    #[test]
    fn a_drop_mid_catch_up_resumes_from_it_and_filters_repeats() {
        let mut c = Cursor::new(None);
        feed(&mut c, &[("user", 100)]);
        c.subscribe_sent(1, "room", Some(id(10)), Subscribe::New);
        c.subscribed(Some(1), "room", 4);
        assert_eq!(feed(&mut c, &[("room", 20)]), [20]);
        assert_eq!(c.resume_id(), Some(id(20)));
        c.disconnected();
        c.disconnected(); // a failed attempt changes nothing
        assert_eq!(c.resume_id(), Some(id(20)));
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
        assert_eq!(c.resume_id(), Some(id(130)));
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
        assert_eq!(c.resume_id(), Some(id(10)));
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
        assert_eq!(c.resume_id(), Some(id(30)));
        c.disconnected();
        c.connected();
        assert_eq!(c.resume_id(), Some(id(30)));
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
        assert_eq!(c.resume_id(), Some(id(30)));
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
        assert_eq!(c.resume_id(), Some(id(20)));
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
        assert_eq!(c.resume_id(), Some(id(5)));
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
        assert_eq!(c.resume_id(), Some(id(100)));
        c.disconnected();
        c.connected();
        assert_eq!(c.resume_id(), Some(id(100)));
        // Once it has delivered one, it continues from there.
        let mut c = Cursor::new(None);
        feed(&mut c, &[("user", 100)]);
        c.subscribe_sent(1, "room", None, Subscribe::New);
        c.subscribed(Some(1), "room", 3);
        feed(&mut c, &[("room", 40)]);
        assert_eq!(c.resume_id(), Some(id(40)));
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
        assert_eq!(c.resume_id(), Some(id(8)));
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
        assert_eq!(c.resume_id(), Some(id(10)));
        c.disconnected();
        c.connected();
        assert_eq!(c.resubscribe_from("room"), Some(id(10)));
        assert_eq!(feed(&mut c, &[("chat", 50), ("room", 50), ("feed", 60)]), [50]);
        // Answered with nothing replayed: no catch-up.
        let mut c = Cursor::new(Some(id(100)));
        c.subscribe_sent(1, "room", Some(id(10)), Subscribe::New);
        c.subscribed(Some(1), "room", 0);
        assert_eq!(c.resume_id(), Some(id(100)));
        c.subscribe_sent(2, "x", Some(id(10)), Subscribe::New);
        c.refused(Some(2));
        assert_eq!(c.resume_id(), Some(id(100)));
    }

    #[test]
    fn leaving_a_channel_ends_its_catch_up() {
        let mut c = Cursor::new(Some(id(100)));
        c.subscribe_sent(1, "room", Some(id(10)), Subscribe::New);
        c.subscribed(Some(1), "room", 5);
        c.unsubscribed("room");
        assert_eq!(c.resume_id(), Some(id(100)));
        // Also during the filter.
        c.subscribe_sent(2, "room", Some(id(10)), Subscribe::New);
        c.subscribed(Some(2), "room", 5);
        c.disconnected();
        c.connected();
        assert_eq!(c.resume_id(), Some(id(10)));
        c.unsubscribed("room");
        assert_eq!(c.resume_id(), Some(id(100)));
        // Repeats of the other channels are still dropped.
        assert_eq!(feed(&mut c, &[("user", 90), ("room", 95), ("user", 101)]), [101]);
    }

    #[test]
    fn patterns_and_other_channels_do_not_count_as_catch_up() {
        let mut c = Cursor::new(Some(id(100)));
        c.subscribe_sent(1, "room:*", Some(id(10)), Subscribe::New);
        c.subscribed(Some(1), "room:*", 3);
        assert_eq!(c.resume_id(), Some(id(100)));
        c.subscribe_sent(2, "room", Some(id(10)), Subscribe::New);
        c.subscribed(Some(2), "room", 1);
        assert_eq!(feed(&mut c, &[("other", 101), ("room", 20)]), [101, 20]);
        assert_eq!(c.resume_id(), Some(id(101)));
    }

    #[test]
    fn with_no_event_received_a_cut_catch_up_still_resumes_from_its_start() {
        let mut c = Cursor::new(None);
        c.subscribe_sent(1, "room", Some(id(10)), Subscribe::New);
        c.subscribed(Some(1), "room", 3);
        assert_eq!(c.resume_id(), Some(id(10)));
        c.disconnected();
        c.connected();
        assert_eq!(c.resume_id(), Some(id(10)));
        assert_eq!(feed(&mut c, &[("room", 20), ("user", 21)]), [20, 21]);
        assert_eq!(c.resume_id(), Some(id(21)));
    }
}
