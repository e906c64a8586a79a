//! broker/redis/sharded_repair.rs: a Redis Cluster shard's repair (see sharded.rs): its live
//! messages are held while it is resubscribed, a changed primary is fenced, and what the node
//! missed of its channels is delivered from the shard's history up to a snapshot; then the held
//! messages follow.

use super::held::{Held, MAX_HELD, MAX_HELD_BYTES};
use super::sharded::{RepairDone, Repaired, Shard, Took, sharded_name};
use super::*;

impl Inner {
    /// Holds shard `s`'s messages and repairs it in the background; a repair already running
    /// runs once more after.
    pub(super) fn start_repair(self: &Arc<Self>, s: u16, shards: &mut [Shard], done: &RepairDone) {
        self.drop_syncs(s);
        let sh = &mut shards[s as usize];
        if sh.held.is_some() {
            sh.again = true;
            return;
        }
        sh.held = Some(Held::new(MAX_HELD, MAX_HELD_BYTES));
        self.spawn_repair(s, sh, done, Duration::ZERO);
    }

    /// The next repair of shard `s` reads its history from `from`, if that is earlier than the
    /// shard's newest id.
    pub(super) fn read_from(&self, s: u16, from: EventId) {
        let mut marks = self.shards.lock();
        let seen = &mut marks.seen[s as usize];
        *seen = seen.map(|w| w.min(from));
    }

    /// Repairs held shard `s` in the background, after `delay`.
    fn spawn_repair(self: &Arc<Self>, s: u16, sh: &mut Shard, done: &RepairDone, delay: Duration) {
        // Each channel followed now, with the newest event the node has of it.
        let channels: Vec<(Arc<str>, Option<EventId>)> = sh
            .listening
            .iter()
            .map(|c| (c.clone(), sh.positions.get(c).copied()))
            .collect();
        // This repair reads every channel followed now; one subscribed later sets it again.
        sh.joined = false;
        // The repair subscribes to all of them again: each is proven by its confirmation.
        let now = tokio::time::Instant::now();
        let names = channels.iter().map(|(c, _)| self.keys.pubsub(c));
        let marker = self.keys.shard_marker(s, &self.s.node_id);
        sh.pending.extend(names.chain([marker]).map(|n| (n, now)));
        let me = self.clone();
        let done = done.clone();
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let r = me.repair_shard(s, channels).await;
            let _ = done.send((s, r));
        });
    }

    /// A repair of shard `s` ended. Unless a channel of the shard was subscribed meanwhile
    /// (then it runs again from the same point: see `Shard::joined`), what it read is delivered
    /// in id order, the shard's position moves to its snapshot, and the held messages follow.
    pub(super) fn repair_done(
        self: &Arc<Self>,
        s: u16,
        r: Result<Repaired, BrokerError>,
        shards: &mut [Shard],
        done: &RepairDone,
    ) {
        let sh = &mut shards[s as usize];
        // What the repair subscribed to gets its full time to be confirmed from now.
        let now = tokio::time::Instant::now();
        sh.pending.values_mut().for_each(|t| *t = now);
        let repaired = match r {
            Ok(repaired) => repaired,
            Err(e) => {
                // Right after a pub/sub kill the client library has not resubscribed yet, and
                // the canary reaches no one: about 9 shards of 16 failed so once per round of
                // redis_cluster_repair_join, each a warning and a 500 ms wait while their
                // messages were held. The first tries come sooner, and only a repair still
                // failing after them is worth a warning (the rest are at `debug`).
                sh.failed_tries += 1;
                let tries = sh.failed_tries;
                if tries == QUIET_TRIES {
                    warn!(shard = s, error = %e, tries, "shard repair keeps failing; retrying every 500 ms at most");
                } else {
                    debug!(shard = s, error = %e, tries, "shard repair failed; retrying");
                }
                self.spawn_repair(s, sh, done, retry_delay(tries));
                return;
            }
        };
        if sh.failed_tries >= QUIET_TRIES {
            info!(
                shard = s,
                failed_tries = sh.failed_tries,
                "shard repair succeeded after failed tries"
            );
        }
        sh.failed_tries = 0;
        debug!(
            shard = s,
            events = repaired.events.len(),
            snapshot = %repaired.snapshot,
            joined = sh.joined,
            held = sh.held.as_ref().map_or(0, Held::len),
            "shard repair read"
        );
        if sh.joined {
            // Nothing it read was delivered and the shard's position did not move: the next
            // repair reads every channel, the new one too, from where this one started. After
            // `MAX_JOIN_REDOS` of these, new channels wait for it (`Shard::closed_to_joins`).
            sh.again = false;
            sh.join_redos += 1;
            self.spawn_repair(s, sh, done, Duration::ZERO);
            return;
        }
        sh.join_redos = 0;
        // What the repair delivered of each channel it still follows.
        for (channel, id) in self.deliver_missed(repaired.events) {
            if let Some(c) = sh.listening.get(&channel) {
                let have = sh.positions.entry(c.clone()).or_insert(id);
                *have = (*have).max(id);
            }
        }
        {
            let mut marks = self.shards.lock();
            let seen = &mut marks.seen[s as usize];
            if seen.is_none_or(|w| repaired.snapshot > w) {
                *seen = Some(repaired.snapshot);
            }
        }
        sh.repaired_to = Some(repaired.snapshot);
        sh.last_marker = Some(tokio::time::Instant::now());
        let Some(held) = sh.held.take().and_then(Held::release) else {
            // Messages were dropped: none is released, the next repair brings them all.
            sh.again = false;
            self.start_repair(s, shards, done);
            return;
        };
        for push in held {
            if let Some((_, _, channel)) = sharded_name(&self.keys.prefix, &push)
                && self.on_smessage(s, channel, &push, sh, None, false) != Took::Delivered
            {
                // A hole this repair did not cover (it read from past the missing event, or the
                // event went missing after its snapshot): the sockets were told; repair again.
                sh.again = true;
            }
        }
        if std::mem::take(&mut sh.again) {
            self.start_repair(s, shards, done);
        }
    }

    /// Resubscribes shard `s`, fences a changed primary, and reads what the node missed of its
    /// channels from history, up to a snapshot taken after the resubscription; `repair_done`
    /// delivers it.
    async fn repair_shard(&self, s: u16, channels: Vec<(Arc<str>, Option<EventId>)>) -> Result<Repaired, BrokerError> {
        let mut names: Vec<String> = channels.iter().map(|(c, _)| self.keys.pubsub(c)).collect();
        names.push(self.keys.shard_marker(s, &self.s.node_id));
        self.ssubscribe(&names).await?;
        let (after, before) = {
            let marks = self.shards.lock();
            (marks.seen[s as usize], marks.owner[s as usize].clone())
        };
        let snapshot = self.shard_seq(s, self.s.op_timeout * PATIENT).await?;
        debug!(shard = s, after = ?after, %snapshot, channels = channels.len(), "shard resubscribed");
        // Every later event comes only through the subscription, so it must be on the primary
        // the snapshot came from. One on a replica (a stale slot map: a replica accepts
        // SSUBSCRIBE, and a restarted old primary is one) gets the primary's messages through
        // the cluster bus, and loses those sent while its link is down. The `GET` above, if a
        // replica took it, answered MOVED and refreshed the client's slot map: the retry
        // (repair_done) subscribes on the primary.
        if self.publish_canary(s).await? == 0 {
            return Err(unavailable("the shard's subscription is not on its primary"));
        }
        let owner = self.owner_of(s).await?;
        if before.as_deref().is_some_and(|b| b != owner) {
            let names: Vec<Arc<str>> = channels.iter().map(|(c, _)| c.clone()).collect();
            self.fence_shard(s, after, &names).await?;
        }
        let from: Vec<(Arc<str>, EventId)> = channels
            .into_iter()
            .filter_map(|(c, at)| read_start(after, at, snapshot).map(|from| (c, from)))
            .collect();
        let events = self.read_missed(&from, snapshot).await?;
        if let Some(after) = after {
            self.passed_over(&events, after);
        }
        self.shards.lock().owner[s as usize] = Some(owner);
        Ok(Repaired { events, snapshot })
    }

    /// Events a repair read at or below `after`, the newest id the node had of their shard, are
    /// ones it never got while later events of the shard reached the sockets: their floors
    /// passed them, so those channels' sockets are told of a gap (the events still go out, to
    /// sockets whose floor is below them).
    fn passed_over(&self, events: &[(Arc<str>, StoredEvent)], after: EventId) {
        let mut passed: Vec<Arc<str>> = events
            .iter()
            .filter(|(_, e)| e.id <= after)
            .map(|(c, _)| c.clone())
            .collect();
        if passed.is_empty() {
            return;
        }
        passed.sort();
        passed.dedup();
        let told = self.hub.send_gap(&passed);
        warn!(
            channels = passed.len(),
            first = %passed[0],
            %after,
            sockets = told,
            "a repair found events the node never got behind later ones of their shard: their sockets were told of a possible gap"
        );
    }

    /// Publishes this node's canary on shard `s`'s marker channel; the answer is how many
    /// subscribers took it on the shard's primary (ours, or 0: it is not there).
    ///
    /// From a script: a plain `SPUBLISH` sent where the client's slot map points runs on a
    /// replica too (Redis serves sharded pub/sub there) and counts that replica's subscribers.
    /// After a manual failover the old primary is such a replica, and the node's subscription
    /// left on it passed for one on the primary, for good (`redis_cluster_gateway.rs`, the
    /// manual failover, failed about 1 run in 10). A script without `no-writes` counts as a
    /// write, so a replica answers MOVED and it runs on the primary, as `owner_of` does;
    /// `allow-oom` keeps it running, as `SPUBLISH` does, on a primary out of memory.
    pub(super) async fn publish_canary(&self, s: u16) -> Result<i64, BrokerError> {
        timed(self.s.op_timeout, async {
            let mut c = self.conn().await?;
            redis::cmd("EVAL")
                .arg("#!lua flags=allow-oom\nreturn redis.call('SPUBLISH', KEYS[1], ARGV[1])")
                .arg(1)
                .arg(self.keys.shard_marker(s, &self.s.node_id))
                .arg("canary")
                .query_async(&mut c)
                .await
                .map_err(unavailable)
        })
        .await
    }

    /// No subscriber took shard `s`'s canary on its primary: the node's subscription to it is
    /// on a replica (a stale slot map) or gone, without a word from the client library. Messages
    /// a replica's resync skipped may already be passed by id, so the shard's sockets are told
    /// of a possible gap, and the shard is resubscribed and repaired (the repair checks the same).
    pub(super) fn subscription_strayed(self: &Arc<Self>, s: u16, shards: &mut [Shard], done: &RepairDone) {
        let sh = &shards[s as usize];
        if sh.held.is_some() {
            return;
        }
        let channels: Vec<Arc<str>> = sh.listening.iter().cloned().collect();
        let told = self.hub.send_gap(&channels);
        warn!(
            shard = s,
            sockets = told,
            "the shard's canary reached no subscriber on its primary: its sockets were told of a possible gap; repairing the shard"
        );
        self.start_repair(s, shards, done);
    }

    /// Another primary holds shard `s` now: what the old one acknowledged may be lost. Its
    /// sockets are told, and the shard's epoch is raised past every id seen, so a replay from
    /// before says `recovered:false`.
    async fn fence_shard(&self, s: u16, seen: Option<EventId>, channels: &[Arc<str>]) -> Result<(), BrokerError> {
        let epoch = self.raise_epoch(self.keys.epoch(Some(s)), None, seen).await?;
        let told = self.hub.send_gap(channels);
        warn!(
            shard = s,
            epoch,
            sockets = told,
            "another primary holds the shard (failover or slot migration): its sockets were told of a possible gap"
        );
        self.metrics.redis_failovers.inc();
        Ok(())
    }

    /// Channels of shard `s` whose subscription Redis has not confirmed within `late` may have
    /// missed events while the rest of the shard flowed, so the hub may already have passed
    /// them by id: their sockets get a `gap`, and the shard is resubscribed and repaired.
    pub(super) fn check_unconfirmed(self: &Arc<Self>, s: u16, late: Duration, shards: &mut [Shard], done: &RepairDone) {
        let sh = &shards[s as usize];
        if !sh.pending.values().any(|t| t.elapsed() > late) {
            return;
        }
        let unconfirmed: Vec<Arc<str>> = sh
            .listening
            .iter()
            .filter(|c| sh.pending.contains_key(&self.keys.pubsub(c)))
            .cloned()
            .collect();
        let told = self.hub.send_gap(&unconfirmed);
        warn!(
            shard = s,
            channels = unconfirmed.len(),
            sockets = told,
            "redis never confirmed some subscriptions: their sockets were told of a possible gap; repairing the shard"
        );
        self.start_repair(s, shards, done);
    }
}

/// Failed tries of one shard repair logged at `debug` before a warning.
const QUIET_TRIES: u32 = 5;

/// How long a shard repair waits before its next try after `tries` failed ones: 20 ms,
/// doubling, at most 500 ms (20 + 40 + 80 + 160 ms before the warning).
fn retry_delay(tries: u32) -> Duration {
    Duration::from_millis(20u64.saturating_mul(1 << tries.saturating_sub(1).min(5)).min(500))
}

/// Where a shard repair reads a channel from: the newest event the node has of it (`at`), or
/// of the shard (`after`), whichever is older, so an event of it lost while the shard's other
/// channels flowed is read too. `None`: nothing to read (the node never had the shard).
///
/// A channel subscribed before its shard issued any id has position `0-0`, which no history
/// vouches for (it is older than every epoch): it is read from the shard's position instead,
/// and a loss of its first events is still seen by the next message's hole check.
pub(super) fn read_start(after: Option<EventId>, at: Option<EventId>, snapshot: EventId) -> Option<EventId> {
    let at = at.filter(|a| (a.ms, a.seq) != (0, 0));
    match (after, at) {
        (Some(after), Some(at)) => Some(after.min(at)),
        (Some(after), None) => Some(after),
        // Subscribed before the node had any event of the shard: every later one is due.
        (None, Some(at)) => Some(at.min(snapshot)),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> EventId {
        EventId::sharded(6, ms, 0)
    }

    #[test]
    fn a_failing_repair_retries_sooner_first() {
        let ms: Vec<u128> = (1..=8).map(|t| retry_delay(t).as_millis()).collect();
        assert_eq!(ms, [20, 40, 80, 160, 320, 500, 500, 500]);
    }

    #[test]
    fn a_channel_is_read_from_its_own_position_when_it_is_behind_the_shard() {
        assert_eq!(read_start(Some(id(50)), Some(id(40)), id(90)), Some(id(40)));
        assert_eq!(read_start(Some(id(50)), Some(id(70)), id(90)), Some(id(50)));
        assert_eq!(read_start(Some(id(50)), None, id(90)), Some(id(50)));
        assert_eq!(read_start(None, Some(id(95)), id(90)), Some(id(90)));
        assert_eq!(read_start(None, Some(id(30)), id(90)), Some(id(30)));
        assert_eq!(read_start(None, None, id(90)), None);
        let never = EventId::sharded(6, 0, 0);
        assert_eq!(read_start(Some(id(50)), Some(never), id(90)), Some(id(50)));
        assert_eq!(read_start(None, Some(never), id(90)), None);
    }
}
