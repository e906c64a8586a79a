//! history.rs: replay by `last_event_id` across a connection's channels, read in bounded
//! batches, merged in id order, capped at `max_replay`, and a client's `history` read of one
//! channel. Decides `recovered`. Never reads without bound and never writes to a socket (the
//! session queues what this returns).
//!
//! Every replay first takes the broker's snapshot `S` ([`Broker::sync`]) and reads history up
//! to `S` only. Events above `S` reach the socket live; events at or below it that the live
//! stream also brings are dropped by id when the socket merges the two
//! ([`crate::hub::Connection::finish_replay`]). That is what keeps each channel gap-free and in
//! order however far the node's pub/sub stream lags behind the history read.

use wsgw_protocol::{EventId, EventIdError};

use crate::broker::{Broker, BrokerError, HistoryQuery, StoredEvent};
use crate::hub::OutFrame;

/// Whether this deployment issues ids like `id`. A broker with one global sequence (memory,
/// one Redis primary) issues `<ms>-<seq>` only, so an id naming an id-shard (`<shard>~<ms>-<seq>`,
/// a Redis Cluster deployment's) is refused as unreadable, the same as any other foreign text.
/// A Redis Cluster deployment takes both: a single-primary id names none of its shards, which
/// the replay reports as not recovered.
pub fn own_id(broker: &dyn Broker, id: EventId) -> Result<EventId, EventIdError> {
    match id.shard() {
        Some(_) if !sharded(broker) => Err(EventIdError(id.to_string())),
        _ => Ok(id),
    }
}

/// Whether the broker spreads channels over id-shards (a Redis Cluster).
fn sharded(broker: &dyn Broker) -> bool {
    broker.shard_of("").is_some()
}

/// A client's `last_event_id` on connect: one id, or in a Redis Cluster deployment a cursor
/// of at most one id per id-shard joined with `,` (docs/protocol.md, "On a Redis Cluster").
pub fn parse_cursor(broker: &dyn Broker, text: &str) -> Result<Vec<EventId>, String> {
    if sharded(broker) && text.contains(',') {
        let cursor: wsgw_protocol::ShardCursor = text.parse().map_err(|e: wsgw_protocol::CursorError| e.to_string())?;
        return Ok(cursor.iter().collect());
    }
    let id = text.parse::<EventId>().and_then(|id| own_id(broker, id));
    id.map(|id| vec![id]).map_err(|e| e.to_string())
}

/// Events read per history call.
pub const REPLAY_BATCH: usize = 256;

/// The outcome of a replay read.
#[derive(Debug, Default)]
pub struct Replay {
    /// Events to send, in id order (per id-shard), each once.
    pub events: Vec<OutFrame>,
    /// False when completeness can't be promised (trimmed, expired, lost, over the cap, or a
    /// channel whose id-shard the client's cursor does not name).
    pub recovered: bool,
    /// The snapshot the replay was read up to, one id per shard read (one in all with one
    /// global sequence); empty when no snapshot was taken.
    pub position: Vec<EventId>,
}

impl Replay {
    /// Nothing to replay and no snapshot (no replay asked for, or it failed).
    pub fn none(recovered: bool) -> Self {
        Self {
            events: Vec::new(),
            recovered,
            position: Vec::new(),
        }
    }
}

/// Only the snapshot: for a subscription (a pattern) that replays nothing but must know from
/// which id on it is exact.
pub async fn position(broker: &dyn Broker, recovered: bool) -> Result<Replay, BrokerError> {
    Ok(Replay {
        events: Vec::new(),
        recovered,
        position: broker.sync(&[]).await?,
    })
}

/// The id-shards `channels` live in, each once (none with one global sequence).
fn shards_of(broker: &dyn Broker, channels: &[&String]) -> Vec<u16> {
    let mut shards: Vec<u16> = channels.iter().filter_map(|c| broker.shard_of(c)).collect();
    shards.sort_unstable();
    shards.dedup();
    shards
}

/// The id of `ids` in `shard` (`None`: the global sequence).
fn in_shard(ids: &[EventId], shard: Option<u16>) -> Option<EventId> {
    ids.iter().find(|i| i.shard() == shard).copied()
}

fn to_frame(e: StoredEvent) -> OutFrame {
    OutFrame::event(e.frame.as_str(), e.id, crate::time::ms_to_us(e.ts_ms))
}

/// Reads every event after the client's position on `channels` (patterns are skipped: they
/// have no history of their own), at most `max_replay` in all: the reads across every channel
/// stop at the cap (plus one, to tell "over" from "exactly"), channel after channel, and a
/// replay cut there is not recovered.
///
/// `after` is the client's `last_event_id`: one id with one global sequence, or a cursor of at
/// most one id per id-shard. A channel is read from the id of its own shard; a channel whose
/// shard the cursor does not name is not replayed, and makes the replay not recovered unless
/// it provably had no event the client could have missed ([`CLOCK_SKEW_MS`]).
pub async fn replay_after(
    broker: &dyn Broker,
    channels: &[String],
    after: &[EventId],
    max_replay: usize,
    connection_id: &str,
) -> Result<Replay, BrokerError> {
    let exact: Vec<&String> = channels.iter().filter(|c| !c.contains('*')).collect();
    let snapshot = broker.sync(&shards_of(broker, &exact)).await?;
    let mut all: Vec<StoredEvent> = Vec::new();
    let mut recovered = true;
    // One budget for the whole replay, not one per channel: a socket restoring many channels
    // reads at most the cap in all. One more than the cap tells "over the cap" apart from
    // "exactly the cap"; a replay that spends it stops early and is not recovered.
    let want = max_replay.saturating_add(1);
    let mut taken = 0usize;
    for channel in exact {
        if taken >= want {
            break;
        }
        let shard = broker.shard_of(channel);
        let Some(s) = in_shard(&snapshot, shard) else {
            recovered = false;
            continue;
        };
        let Some(from) = in_shard(after, shard) else {
            // The cursor names no position in this channel's shard: the client received
            // nothing from it. It missed nothing of this channel if nothing was published
            // there since shortly before the last event it did receive (from any shard).
            if !quiet_since(broker, channel, shard, after, s).await? {
                recovered = false;
            }
            continue;
        };
        if from > s {
            // An id this broker never issued: nothing here can vouch for what followed it.
            recovered = false;
            continue;
        }
        let mut cursor = from;
        loop {
            let limit = REPLAY_BATCH.min(want - taken);
            let page = broker
                .history(
                    channel,
                    HistoryQuery::After {
                        id: cursor,
                        limit,
                        until: Some(s),
                    },
                )
                .await?;
            if cursor == from && !page.complete {
                recovered = false;
            }
            let n = page.events.len();
            if let Some(last) = page.events.last() {
                cursor = last.id;
            }
            taken += n;
            all.extend(page.events);
            if n < limit || taken >= want {
                break;
            }
        }
    }
    all.sort_by_key(|e| e.id);
    all.dedup_by_key(|e| e.id);
    all.retain(|e| !e.excludes(connection_id));
    if all.len() > max_replay {
        all.truncate(max_replay);
        recovered = false;
    }
    Ok(Replay {
        events: all.into_iter().map(to_frame).collect(),
        recovered,
        position: snapshot,
    })
}

/// How far the clocks of a cluster's primaries may disagree, in ms, for `quiet_since`.
pub const CLOCK_SKEW_MS: u64 = 1_000;

/// Whether `channel`, in a shard the cursor `after` does not name, provably had no event
/// since [`CLOCK_SKEW_MS`] before the newest position `after` names (when the client last
/// received something, so was connected and following its channels): its history from then
/// up to the snapshot `s` is complete and empty.
async fn quiet_since(
    broker: &dyn Broker,
    channel: &str,
    shard: Option<u16>,
    after: &[EventId],
    s: EventId,
) -> Result<bool, BrokerError> {
    let (Some(shard), Some(last_ms)) = (shard, after.iter().map(|a| a.ms).max()) else {
        return Ok(false);
    };
    let since = EventId::sharded(shard, last_ms.saturating_sub(CLOCK_SKEW_MS), 0);
    // A shard that issued nothing yet has no newer events either (its snapshot is `0-0`).
    let since = if (s.ms, s.seq) == (0, 0) { since } else { since.min(s) };
    let query = HistoryQuery::After {
        id: since,
        limit: 1,
        until: Some(s),
    };
    let page = broker.history(channel, query).await?;
    Ok(page.complete && page.events.is_empty())
}

/// The newest `n` events of one channel (capped at `max_replay`).
pub async fn last_n(
    broker: &dyn Broker,
    channel: &str,
    n: usize,
    max_replay: usize,
    connection_id: &str,
) -> Result<Replay, BrokerError> {
    let shard: Vec<u16> = broker.shard_of(channel).into_iter().collect();
    let snapshot = broker.sync(&shard).await?;
    let page = broker
        .history(
            channel,
            HistoryQuery::Last {
                n: n.min(max_replay),
                until: in_shard(&snapshot, broker.shard_of(channel)),
            },
        )
        .await?;
    let events = page
        .events
        .into_iter()
        .filter(|e| !e.excludes(connection_id))
        .map(to_frame)
        .collect();
    Ok(Replay {
        events,
        recovered: true,
        position: snapshot,
    })
}

/// Events a client `history` read returns when it names no `limit` (capped at `max_replay`).
pub const DEFAULT_HISTORY_LIMIT: usize = 100;

/// The id just below `id`, if there is one.
fn before(id: EventId) -> Option<EventId> {
    match (id.ms, id.seq) {
        (0, 0) => None,
        (ms, 0) => Some(EventId::sharded(id.shard, ms - 1, u64::MAX)),
        (ms, seq) => Some(EventId::sharded(id.shard, ms, seq - 1)),
    }
}

/// A client's `history` read of one channel (no patterns). Without `since`: the newest `limit`
/// events; with it: the oldest `limit` after it. In id order, without the events excluded for
/// `connection_id`. The read goes on past excluded events so that they do not shorten the
/// answer, but looks at no more than `scan` events in all. The flag is the broker's `complete`
/// for `since` (the replay rules), and `true` without `since`.
///
/// A read, unlike a replay: no snapshot is taken, and nothing of the socket changes.
pub async fn read(
    broker: &dyn Broker,
    channel: &str,
    since: Option<EventId>,
    limit: usize,
    scan: usize,
    connection_id: &str,
) -> Result<(Vec<StoredEvent>, bool), BrokerError> {
    let mut kept: Vec<StoredEvent> = Vec::new();
    let mut scanned = 0usize;
    let Some(since) = since else {
        // Newest first, page by page downwards; each page is oldest first.
        let mut until = None;
        while kept.len() < limit && scanned < scan {
            let n = (limit - kept.len()).min(REPLAY_BATCH);
            let page = broker.history(channel, HistoryQuery::Last { n, until }).await?;
            let got = page.events.len();
            scanned += got;
            until = page.events.first().and_then(|e| before(e.id));
            let mut older: Vec<StoredEvent> = page.events.into_iter().filter(|e| !e.excludes(connection_id)).collect();
            older.append(&mut kept);
            kept = older;
            if got < n || until.is_none() {
                break;
            }
        }
        return Ok((kept, true));
    };
    let mut cursor = since;
    let mut recovered = None;
    loop {
        // At least one event is asked for, also for `limit: 0`: the first page says `complete`.
        let n = (limit - kept.len()).clamp(1, REPLAY_BATCH);
        let page = broker
            .history(
                channel,
                HistoryQuery::After {
                    id: cursor,
                    limit: n,
                    until: None,
                },
            )
            .await?;
        recovered.get_or_insert(page.complete);
        let got = page.events.len();
        scanned += got;
        if let Some(last) = page.events.last() {
            cursor = last.id;
        }
        let room = limit - kept.len();
        kept.extend(
            page.events
                .into_iter()
                .filter(|e| !e.excludes(connection_id))
                .take(room),
        );
        if got < n || kept.len() >= limit || scanned >= scan {
            break;
        }
    }
    Ok((kept, recovered.unwrap_or(true)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::value::RawValue;

    use super::*;
    use crate::broker::memory::HistoryLimits;
    use crate::broker::{MemoryBroker, PublishRequest};
    use crate::hub::Hub;
    use crate::metrics::Metrics;

    async fn publish(b: &MemoryBroker, channel: &str) -> EventId {
        let req = PublishRequest {
            channel: channel.into(),
            event: "e".into(),
            data: RawValue::from_string("{}".into()).unwrap(),
            exclude: vec![],
            idempotency_key: None,
        };
        b.publish(req).await.unwrap()
    }

    #[tokio::test]
    async fn merges_channels_in_id_order_and_caps() {
        let hub = Arc::new(Hub::new("n".into(), Metrics::new()));
        let b = MemoryBroker::new(
            hub,
            HistoryLimits {
                size: 1000,
                ttl_ms: 60_000,
            },
            0,
        );
        let start = publish(&b, "x").await;
        let mut ids = Vec::new();
        // The channels one after the other: a capped replay reads channel after channel.
        for i in 0..600 {
            ids.push(publish(&b, if i < 200 { "a" } else { "b" }).await);
        }
        let chans = vec!["a".to_string(), "b".to_string(), "p:*".to_string()];
        let r = replay_after(&b, &chans, &[start], 1000, "c").await.unwrap();
        assert!(r.recovered);
        let got: Vec<EventId> = r.events.iter().filter_map(|e| e.event_id).collect();
        assert_eq!(got, ids);

        let r = replay_after(&b, &chans, &[start], 100, "c").await.unwrap();
        assert!(!r.recovered, "600 events do not fit a cap of 100");
        let got: Vec<EventId> = r.events.iter().filter_map(|e| e.event_id).collect();
        assert_eq!(got, ids[..100]);
    }

    #[tokio::test]
    async fn huge_caps_and_timestamps_saturate() {
        let hub = Arc::new(Hub::new("n".into(), Metrics::new()));
        let b = MemoryBroker::new(
            hub,
            HistoryLimits {
                size: 10,
                ttl_ms: 60_000,
            },
            0,
        );
        let start = publish(&b, "x").await;
        let id = publish(&b, "a").await;
        // `max_replay + 1` must not overflow.
        let r = replay_after(&b, &["a".to_string()], &[start], usize::MAX, "c")
            .await
            .unwrap();
        assert!(r.recovered);
        assert_eq!(r.events.iter().filter_map(|e| e.event_id).collect::<Vec<_>>(), vec![id]);
        // `ts * 1000` must not overflow either.
        let f = to_frame(StoredEvent {
            id,
            frame: "{}".into(),
            ts_ms: u64::MAX,
            exclude: None,
        });
        assert_eq!(f.published_us, u64::MAX);
    }

    #[tokio::test]
    async fn a_history_read_pages_both_ways() {
        let hub = Arc::new(Hub::new("n".into(), Metrics::new()));
        let b = MemoryBroker::new(
            hub,
            HistoryLimits {
                size: 1000,
                ttl_ms: 60_000,
            },
            0,
        );
        let start = publish(&b, "x").await;
        let mut ids = Vec::new();
        for _ in 0..10 {
            ids.push(publish(&b, "a").await);
        }
        publish(&b, "x").await;
        let got = |r: (Vec<StoredEvent>, bool)| (r.0.iter().map(|e| e.id).collect::<Vec<_>>(), r.1);

        let r = read(&b, "a", None, 3, 100, "c").await.unwrap();
        assert_eq!(got(r), (ids[7..].to_vec(), true));
        let r = read(&b, "a", Some(start), 3, 100, "c").await.unwrap();
        assert_eq!(got(r), (ids[..3].to_vec(), true));
        let r = read(&b, "a", Some(ids[6]), 10, 100, "c").await.unwrap();
        assert_eq!(got(r), (ids[7..].to_vec(), true));
        // `limit: 0` reads nothing but still answers `recovered`.
        let r = read(&b, "a", Some(start), 0, 100, "c").await.unwrap();
        assert_eq!(got(r), (vec![], true));
        let r = read(&b, "a", None, 0, 100, "c").await.unwrap();
        assert_eq!(got(r), (vec![], true));
        assert_eq!(before(EventId::new(5, 0)), Some(EventId::new(4, u64::MAX)));
        assert_eq!(before(EventId::new(5, 3)), Some(EventId::new(5, 2)));
        assert_eq!(before(EventId::new(0, 0)), None);
    }
}
