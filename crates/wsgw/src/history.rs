//! history.rs: replay by `last_event_id` across a connection's channels, read in bounded
//! batches, merged in id order, capped at `max_replay`. Decides `recovered`. Never reads
//! without bound and never writes to a socket (the session queues what this returns).

use wsgw_protocol::EventId;

use crate::broker::{Broker, BrokerError, HistoryQuery, StoredEvent};
use crate::hub::OutFrame;

/// Events read per history call.
pub const REPLAY_BATCH: usize = 256;

/// The outcome of a replay read.
#[derive(Debug, Default)]
pub struct Replay {
    /// Events to send, in id order, each once.
    pub events: Vec<OutFrame>,
    /// False when completeness can't be promised (trimmed, expired, lost, or over the cap).
    pub recovered: bool,
}

fn to_frame(e: StoredEvent) -> OutFrame {
    OutFrame {
        text: e.frame,
        event_id: Some(e.id),
        published_us: e.ts_ms * 1000,
        response: None,
    }
}

/// Reads every event after `after` on `channels` (patterns are skipped: they have no history
/// of their own), at most `max_replay` in all.
pub async fn replay_after(
    broker: &dyn Broker,
    channels: &[String],
    after: EventId,
    max_replay: usize,
    connection_id: &str,
) -> Result<Replay, BrokerError> {
    let mut all: Vec<StoredEvent> = Vec::new();
    let mut recovered = true;
    for channel in channels.iter().filter(|c| !c.contains('*')) {
        let mut cursor = after;
        let mut taken = 0usize;
        // One more than the cap tells "over the cap" apart from "exactly the cap".
        let want = max_replay + 1;
        loop {
            let limit = REPLAY_BATCH.min(want - taken);
            let page = broker
                .history(channel, HistoryQuery::After { id: cursor, limit })
                .await?;
            if cursor == after && !page.complete {
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
    })
}

/// The newest `n` events of one channel (capped at `max_replay`).
pub async fn last_n(
    broker: &dyn Broker,
    channel: &str,
    n: usize,
    max_replay: usize,
    connection_id: &str,
) -> Result<Replay, BrokerError> {
    let page = broker
        .history(channel, HistoryQuery::Last { n: n.min(max_replay) })
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
    })
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
        for i in 0..600 {
            ids.push(publish(&b, if i % 3 == 0 { "a" } else { "b" }).await);
        }
        let chans = vec!["a".to_string(), "b".to_string(), "p:*".to_string()];
        let r = replay_after(&b, &chans, start, 1000, "c").await.unwrap();
        assert!(r.recovered);
        let got: Vec<EventId> = r.events.iter().filter_map(|e| e.event_id).collect();
        assert_eq!(got, ids);

        let r = replay_after(&b, &chans, start, 100, "c").await.unwrap();
        assert!(!r.recovered, "600 events do not fit a cap of 100");
        let got: Vec<EventId> = r.events.iter().filter_map(|e| e.event_id).collect();
        assert_eq!(got, ids[..100]);
    }
}
