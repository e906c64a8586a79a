//! hub/connection_replay.rs: a replay merged into a connection's live stream. While a
//! subscribe or resume reads its replay, live frames are held (`begin_replay`);
//! `finish_replay` merges the two runs by id (per id-shard), each id once, and moves the dedup
//! floors to the broker's snapshot, after which the live stream is in order again (the
//! invariant is stated on `Outbox` in connection.rs).

use std::sync::Arc;

use wsgw_protocol::EventId;

use super::{Connection, Floors, OutFrame, PENDING};

/// A subscribe's catch-up: the channel, and the first id it covers (`last_event_id`'s
/// successor, or a `history` window's first event).
#[derive(Debug, Clone, Copy)]
pub struct CatchUp<'a> {
    /// The channel subscribed to.
    pub channel: &'a str,
    /// Events of it below this id are not what the client asked for.
    pub from: EventId,
}

/// A live frame held back while a replay is read, with what its admission needs later.
pub(super) struct Held {
    pub(super) frame: OutFrame,
    pub(super) channel: Arc<str>,
    pub(super) via_pattern: bool,
}

/// How many times its queue capacity a socket may hold back while a replay is read.
pub(super) const HELD_FACTOR: usize = 8;

impl Connection {
    /// Holds live frames back until [`Connection::finish_replay`] (for a subscribe with replay).
    pub fn begin_replay(&self) {
        let mut ob = self.outbox.lock();
        if ob.replay.is_none() && ob.close.is_none() {
            ob.replay = Some(Vec::new());
            ob.subscribing = true;
            ob.held_bytes = 0;
        }
    }

    /// Forgets the dedup floors (a replay that was asked for could not be read: the client was
    /// told `recovered:false`, and a floor from its `last_event_id` must not hold live events back).
    pub fn clear_floor(&self) {
        self.outbox.lock().floors = Floors::Empty;
    }

    /// Ends a replay: queues `head` (the welcome or subscribed frame), then the replayed events
    /// merged with the live ones held meanwhile, in id order within each id-shard, each id
    /// once. Returns how many replayed events were queued.
    ///
    /// - `replayed` is sorted by id and was read up to the broker's snapshot `position` (one id
    ///   per shard; a single-primary broker has one), after the broker's `sync` saw every live
    ///   event up to it reach the hub. So once merged, each shard's floor moves to its snapshot
    ///   and the live stream is in order again.
    /// - `catch_up` names the one channel of a subscribe catch-up. Its replayed events may be
    ///   older than what the socket already has on other channels (that is the catch-up); the
    ///   ones its patterns already brought are skipped, and held live frames of that channel
    ///   from before the catch-up's start are dropped (the client asked to start there).
    /// - Patterns subscribed in this replay become exact after `position`. For a subscribe
    ///   without a catch-up (a pattern's, which only takes the snapshot), the held frames at or
    ///   below `position` go before `head`: they came through what the socket already followed,
    ///   so after a pattern's `subscribed` frame every event is one the pattern covers. A client
    ///   that later drops the channel's name and keeps the pattern then keeps exactly the events
    ///   the gateway counts as the pattern's (a catch-up skips those, and only those).
    pub fn finish_replay(
        &self,
        head: impl FnOnce(u64) -> OutFrame,
        replayed: Vec<OutFrame>,
        position: &[EventId],
        catch_up: Option<CatchUp<'_>>,
    ) -> usize {
        let channel = catch_up.map(|c| c.channel);
        let mut ob = self.outbox.lock();
        let Some(held) = ob.replay.take() else {
            // Closed (overflow) while replaying: nothing to do.
            return 0;
        };
        ob.held_bytes = 0;
        if ob.close.is_some() {
            return 0;
        }
        // A floor above the snapshot came from a client's id the broker never issued.
        for s in position {
            ob.floors.cap(*s);
        }
        let settle = position.first().copied().or(ob.floors.first()).unwrap_or_default();
        for (_, since) in ob.patterns.iter_mut() {
            if *since == PENDING {
                *since = settle;
            }
        }
        let covered = channel.and_then(|c| ob.covered_since(c));
        let replayed: Vec<OutFrame> = replayed
            .into_iter()
            .filter(|f| {
                let id = f.event_id.unwrap_or_default();
                !(covered.is_some_and(|s| id > s) && ob.floors.of(id).is_some_and(|l| id <= l))
            })
            .collect();
        let snapshot_of = |id: EventId| position.iter().find(|p| p.shard == id.shard).copied();
        let mut held = held.into_iter().peekable();
        if ob.subscribing && catch_up.is_none() && !position.is_empty() {
            while let Some(h) = held.next_if(|h| {
                h.frame
                    .event_id
                    .is_none_or(|id| snapshot_of(id).is_some_and(|s| id <= s))
            }) {
                if h.frame
                    .event_id
                    .is_none_or(|id| ob.admit(id, &h.channel, h.via_pattern))
                {
                    ob.queue.push_back(h.frame);
                }
            }
        }
        ob.queue.push_back(head(replayed.len() as u64));
        let mut replayed = Runs::new(replayed);
        let mut sent_replayed = 0;
        // The last id queued, per shard: ids of one shard go out rising.
        let mut last = Floors::default();
        let newer = |last: &Floors, id: EventId| last.of(id).is_none_or(|l| id > l);
        // Held frames without an id (a `gap`, answers) go out just before the next held event
        // that goes out, after the replayed events older than it: a `gap` stays between the
        // events the node passed on before it and those after.
        let mut controls: Vec<OutFrame> = Vec::new();
        for h in held {
            let Some(id) = h.frame.event_id else {
                controls.push(h.frame);
                continue;
            };
            if !ob.admit(id, &h.channel, h.via_pattern) {
                continue;
            }
            if let Some(c) = catch_up
                && *h.channel == *c.channel
                && id < c.from
                && covered.is_none_or(|s| id <= s)
            {
                continue;
            }
            while let Some((rid, r)) = replayed.next_up_to(id) {
                if rid != id && newer(&last, rid) {
                    last.raise(rid);
                    sent_replayed += 1;
                    ob.queue.push_back(r);
                } else if rid == id {
                    sent_replayed += 1;
                }
            }
            ob.queue.extend(controls.drain(..));
            if newer(&last, id) {
                last.raise(id);
                ob.queue.push_back(h.frame);
            }
        }
        for (rid, r) in replayed.rest() {
            if newer(&last, rid) {
                last.raise(rid);
                sent_replayed += 1;
                ob.queue.push_back(r);
            }
        }
        ob.queue.extend(controls);
        for id in last.iter().chain(position.iter().copied()) {
            ob.floors.raise(id);
        }
        ob.replay_room = ob.queue.len();
        ob.bytes = ob.queue.iter().map(|f| f.payload().len()).sum();
        ob.replay_room_bytes = ob.bytes;
        drop(ob);
        self.wake.notify_one();
        sent_replayed
    }
}

/// Replayed events split by shard, each run in id order: a held live event merges only with
/// the replayed events of its own shard.
struct Runs {
    runs: Vec<std::collections::VecDeque<(EventId, OutFrame)>>,
}

impl Runs {
    fn new(replayed: Vec<OutFrame>) -> Self {
        let mut runs: Vec<std::collections::VecDeque<(EventId, OutFrame)>> = Vec::new();
        for f in replayed {
            let id = f.event_id.unwrap_or_default();
            match runs
                .iter_mut()
                .find(|r| r.front().is_some_and(|(first, _)| first.shard == id.shard))
            {
                Some(run) => run.push_back((id, f)),
                None => runs.push([(id, f)].into()),
            }
        }
        Self { runs }
    }

    /// The next replayed event of `id`'s shard, if it is at or below `id`.
    fn next_up_to(&mut self, id: EventId) -> Option<(EventId, OutFrame)> {
        let run = self
            .runs
            .iter_mut()
            .find(|r| r.front().is_some_and(|(first, _)| first.shard == id.shard))?;
        if run.front().is_some_and(|(rid, _)| *rid <= id) {
            run.pop_front()
        } else {
            None
        }
    }

    /// What is left, shard by shard.
    fn rest(self) -> impl Iterator<Item = (EventId, OutFrame)> {
        self.runs.into_iter().flatten()
    }
}
