//! broker/redis/repair.rs: after a pub/sub interruption, re-reads from the history streams
//! what the node missed, up to a snapshot, and tells sockets where it cannot prove that
//! nothing is missing (`gap`).

use super::streams::classify;
use super::*;

impl Inner {
    /// Re-reads, after a pub/sub interruption, every event published since the watermark on
    /// the channels this node serves (by name, and those matching its patterns, found by
    /// scanning history keys) and delivers them in id order; sockets drop what they already
    /// have. The read stops at a snapshot `S` taken after resubscribing, so what comes live
    /// next is above it. Channels whose history cannot prove it holds every missed event get a
    /// `gap` frame on their sockets first.
    ///
    /// After a failover (the Sentinels named another primary) nothing can prove that the new
    /// primary holds every event the old one acknowledged: asynchronous replication may have
    /// lost the last ones. So every socket first gets a `gap` for everything it follows, and
    /// the epoch is raised past every id issued before, so a later replay from such an id
    /// says `recovered:false` instead of silently skipping what was lost.
    pub(super) async fn repair(&self) -> Result<(), BrokerError> {
        if self.failover_pending.load(Ordering::Acquire) {
            self.fence_failover().await?;
            self.failover_pending.store(false, Ordering::Release);
        }
        let Some(after) = *self.watermark.lock() else {
            return Ok(());
        };
        let s: Option<String> = timed(self.s.op_timeout * PATIENT, async {
            let mut c = self.conn().await?;
            c.get(self.keys.seq(None)).await.map_err(unavailable)
        })
        .await?;
        let s = s.and_then(|v| v.parse::<EventId>().ok()).unwrap_or_default();
        let mut channels: Vec<Arc<str>> = Vec::new();
        for c in self.hub.interests() {
            if c.contains('*') {
                channels.extend(self.channels_matching(&c).await?);
            } else {
                channels.push(c);
            }
        }
        channels.sort();
        channels.dedup();
        self.redeliver(&channels, after, s).await?;
        // Everything up to the snapshot is now delivered or reported; a Redis that lost its
        // data issues ids from a lower point, and the next repair starts there.
        *self.watermark.lock() = Some(s);
        Ok(())
    }

    /// Re-reads, for `channels`, every event after `after` up to the snapshot `until` and
    /// delivers them in id order (sockets drop what they already have); channels whose history
    /// cannot prove it holds all of them get a `gap` frame first. The single-primary repair's.
    pub(super) async fn redeliver(
        &self,
        channels: &[Arc<str>],
        after: EventId,
        until: EventId,
    ) -> Result<Vec<(Arc<str>, EventId)>, BrokerError> {
        let from: Vec<(Arc<str>, EventId)> = channels.iter().map(|c| (c.clone(), after)).collect();
        let missed = self.read_missed(&from, until).await?;
        Ok(self.deliver_missed(missed))
    }

    /// Reads, for each channel, every event after its own starting id up to the snapshot
    /// `until`, in id order, without delivering any; channels whose history cannot prove it
    /// holds all of them get a `gap` frame now. A Redis Cluster shard's repair
    /// (sharded_repair.rs) starts each channel at the newest event the node has of it, and
    /// delivers what it read only once it knows no channel of the shard joined while it read.
    pub(super) async fn read_missed(
        &self,
        channels: &[(Arc<str>, EventId)],
        until: EventId,
    ) -> Result<Vec<(Arc<str>, StoredEvent)>, BrokerError> {
        let mut events: Vec<(Arc<str>, StoredEvent)> = Vec::new();
        let mut gaps: Vec<Arc<str>> = Vec::new();
        for (ch, after) in channels {
            let after = *after;
            if after == until {
                // Nothing was issued since the channel's position: nothing to read, nothing
                // missed. (A Redis Cluster shard that never issued an id has `0-0` for both,
                // and its history cannot vouch for `0-0`, older than its epoch: without this,
                // every repair told the sockets of a quiet shard's automatic channels of a gap.)
                continue;
            }
            let mut cursor = after;
            loop {
                let query = HistoryQuery::After {
                    id: cursor,
                    limit: 512,
                    until: Some(until),
                };
                let page = timed(self.s.op_timeout * PATIENT, self.history_page(ch, query)).await?;
                if cursor == after && !page.complete {
                    gaps.push(ch.clone());
                }
                let n = page.events.len();
                if let Some(last) = page.events.last() {
                    cursor = last.id;
                }
                events.extend(page.events.into_iter().map(|e| (ch.clone(), e)));
                if n < 512 {
                    break;
                }
            }
        }
        if !gaps.is_empty() {
            let told = self.hub.send_gap(&gaps);
            warn!(
                channels = gaps.len(),
                first = %gaps[0],
                %until,
                sockets = told,
                "repair could not prove some channels complete"
            );
        }
        events.sort_by_key(|(_, e)| e.id);
        Ok(events)
    }

    /// Delivers what [`Inner::read_missed`] read, in its (id) order; returns the newest id
    /// delivered per channel.
    pub(super) fn deliver_missed(&self, events: Vec<(Arc<str>, StoredEvent)>) -> Vec<(Arc<str>, EventId)> {
        // Sorted: each channel's last event is its newest.
        let mut newest: HashMap<Arc<str>, EventId> = HashMap::new();
        for (ch, e) in &events {
            newest.insert(ch.clone(), e.id);
        }
        for (ch, e) in events {
            let excluded: Vec<&str> = e.exclude.as_deref().map(|x| x.split(',').collect()).unwrap_or_default();
            let frame = OutFrame::event(e.frame.as_str(), e.id, crate::time::ms_to_us(e.ts_ms));
            let n = self.hub.deliver(&ch, &frame, &excluded);
            self.metrics.repaired_events.inc_by(n as u64);
        }
        newest.into_iter().collect()
    }

    /// Raises the epoch key `key` (ms) past `seen` and the primary's clock; returns it. A
    /// replay from an id issued before then says `recovered:false`. `seq`: the single
    /// primary's sequence, moved up to the epoch (see [`epoch_cmd`]).
    pub(super) async fn raise_epoch(
        &self,
        key: String,
        seq: Option<String>,
        seen: Option<EventId>,
    ) -> Result<u64, BrokerError> {
        timed(self.s.op_timeout * PATIENT, async {
            let mut c = self.conn().await?;
            epoch_cmd(key, seq, seen, EpochWrite::Raise)
                .query_async(&mut c)
                .await
                .map_err(classify)
        })
        .await
    }

    /// The script that records the epoch of `shard` (`None`: the single primary, whose
    /// sequence it also starts) past the newest id this node saw of it ([`epoch_cmd`]).
    pub(super) fn record_epoch(&self, shard: Option<u16>) -> redis::Cmd {
        let (seen, seq) = match shard {
            None => (*self.watermark.lock(), Some(self.keys.seq(None))),
            Some(s) => (self.shards.lock().seen[s as usize], None),
        };
        epoch_cmd(self.keys.epoch(shard), seq, seen, EpochWrite::Record)
    }

    /// Raises the epoch (ms) past the newest id this node saw and the new primary's clock, and
    /// tells every local socket that what it follows may have a gap.
    async fn fence_failover(&self) -> Result<(), BrokerError> {
        let seen = *self.watermark.lock();
        let epoch = self
            .raise_epoch(self.keys.epoch(None), Some(self.keys.seq(None)), seen)
            .await?;
        let interests = self.hub.interests();
        let told = self.hub.send_gap(&interests);
        warn!(
            epoch,
            sockets = told,
            "redis failover: every socket told of a possible gap; replays from before it say recovered:false"
        );
        self.metrics.redis_failovers.inc();
        Ok(())
    }

    /// Channels with history (or a history record) that `pattern` matches. Our `*` matches any
    /// run of bytes, as Redis's glob does, and channel names hold no other glob character.
    pub(super) async fn channels_matching(&self, pattern: &str) -> Result<Vec<Arc<str>>, BrokerError> {
        let mut found = Vec::new();
        for (kind, strip) in [
            (self.keys.history(pattern), self.keys.history("")),
            (self.keys.meta(pattern), self.keys.meta("")),
        ] {
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = timed(self.s.op_timeout * PATIENT, async {
                    let mut c = self.conn().await?;
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&kind)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await
                        .map_err(unavailable)
                })
                .await?;
                found.extend(
                    keys.iter()
                        .filter_map(|k| k.strip_prefix(strip.as_str()).map(Arc::from)),
                );
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(found)
    }
}

/// How [`epoch_cmd`] writes the epoch key.
#[derive(Clone, Copy)]
enum EpochWrite {
    /// Where there is none: the Redis's data begins now (a new Redis, or one that lost its
    /// data). Also past the one there when the sequence shows that this Redis lost ids.
    Record,
    /// Past the one there (a failover's fence).
    Raise,
}

/// Writes the epoch key `key` (ms) as `how` says, to the later of Redis's clock and the
/// millisecond after `seen` (the newest id this node saw), and returns the epoch in place.
/// Redis's clock, not the node's: the ids issued before come from it, and a node whose clock
/// runs behind would date the new data before what was lost, so a replay from a lost id would
/// say `recovered:true`. Past `seen`, because a Redis whose clock runs behind the one that
/// issued those ids (another host) would do the same.
///
/// With `seq` (the single primary's sequence key):
/// - a sequence older than `seen` means this Redis lost ids this node saw (restarted without
///   persistence, flushed, or a replica that had not got them), whoever wrote the epoch since
///   (`wsgw_publish`, a node that saw less): `Record` then raises the epoch past `seen` too;
/// - a sequence that does not exist, or is before the epoch, moves up to `<epoch>-0`, so every
///   id issued next is at or past the epoch (an id before it could never be replayed).
///
/// (A Redis Cluster shard's sequence stays absent until its first id: that absence tells its
/// repair nothing was issued.)
fn epoch_cmd(key: String, seq: Option<String>, seen: Option<EventId>, how: EpochWrite) -> redis::Cmd {
    const WRITE: &str = "local n = 0 \
        local wms, wseq = string.match(ARGV[1], '^(%d+)-(%d+)$') \
        if wms then wms, wseq = tonumber(wms), tonumber(wseq); n = wms + 1 end \
        local t = redis.call('TIME') \
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
        if now > n then n = now end \
        local lms, lseq \
        if KEYS[2] then \
          lms, lseq = string.match(redis.call('GET', KEYS[2]) or '', '^(%d+)-(%d+)$') \
          if lms then lms, lseq = tonumber(lms), tonumber(lseq) end \
        end \
        local lost = wms ~= nil and lms ~= nil and (lms < wms or (lms == wms and lseq < wseq)) \
        local c = tonumber(redis.call('GET', KEYS[1]) or '-1') \
        if c >= 0 and (c >= n or (ARGV[2] == 'record' and not lost)) then \
          n = c \
        else \
          redis.call('SET', KEYS[1], n) \
        end \
        if KEYS[2] and (lms == nil or lms < n) then \
          redis.call('SET', KEYS[2], string.format('%d-0', n)) \
        end \
        return n";
    let how = match how {
        EpochWrite::Record => "record",
        EpochWrite::Raise => "raise",
    };
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(WRITE).arg(1 + usize::from(seq.is_some())).arg(key);
    if let Some(seq) = seq {
        cmd.arg(seq);
    }
    // `<ms>-<seq>`, without a Redis Cluster id's shard.
    cmd.arg(seen.map_or_else(String::new, |id| format!("{}-{}", id.ms, id.seq)))
        .arg(how);
    cmd
}
