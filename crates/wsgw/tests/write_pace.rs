//! `WSGW_WRITE_PACE_MS` (docs/configuration.md): a channel whose events reach at least
//! `WSGW_WRITE_PACE_MIN_SOCKETS` sockets and come more often than 1.5 per pace gets at most one
//! write pass per pace: its next event waits until the pace has passed since the last pass
//! began, and what arrives meanwhile goes out with it as one burst, in order, once each. An
//! event that reaches fewer sockets goes out at once. Against a real redis-server and real
//! sockets. (Which rates are paced is unit-tested in `broker/redis/pace.rs`.)
//!
//! `cargo test -p wsgw --test suite write_pace::`

use crate::common;

use std::time::{Duration, Instant};

use common::cluster::{GatewayProc, RedisServer, fcall_publish};
use common::{Client, metric_value, token};
use serde_json::json;

const PACE: Duration = Duration::from_millis(1000);

/// The pace (the longest there is, for the most room in the assertion that a small fan-out is
/// not held; a pace is cut to `WSGW_REDIS_TIMEOUT_MS`, 500 for test nodes, so that goes up
/// too), two sockets make a fan-out large, and no canary during the test (it travels the same
/// pub/sub connection).
const ENV: [(&str, &str); 4] = [
    ("WSGW_WRITE_PACE_MS", "1000"),
    ("WSGW_REDIS_TIMEOUT_MS", "1000"),
    ("WSGW_WRITE_PACE_MIN_SOCKETS", "2"),
    ("WSGW_CANARY_INTERVAL_MS", "600000"),
];

async fn burst_frames(node: &GatewayProc) -> f64 {
    metric_value(&node.metrics().await, "wsgw_burst_frames_total").unwrap_or(0.0)
}

async fn subscriber(node: &GatewayProc, user: &str, channel: &str) -> Client {
    let (mut c, _) = node.connect(&token(user, &[channel], &[])).await;
    c.send(json!({"type": "subscribe", "channel": channel})).await;
    c.expect("subscribed").await;
    c
}

/// The next event on `c`, checked to be `id` with `data.n == n`.
async fn expect_event(c: &mut Client, id: &str, n: u64) {
    let e = c.expect("event").await;
    assert_eq!(
        (e["event_id"].as_str(), e["data"]["n"].as_u64()),
        (Some(id), Some(n)),
        "event {n}"
    );
}

/// Two events on `news`, each awaited by every client: the second's pass measures the channel
/// at a few ms per event, so from then on it is paced. Returns when the second was published
/// (its pass began after that).
async fn make_news_fast(r: &mut redis::aio::MultiplexedConnection, clients: &mut [&mut Client]) -> Instant {
    let mut published = Instant::now();
    for n in 0..2 {
        published = Instant::now();
        let id = fcall_publish(r, "news", "tick", &json!({"n": n})).await;
        for c in clients.iter_mut() {
            expect_event(c, &id, n).await;
        }
    }
    published
}

#[tokio::test]
async fn a_fast_channels_events_wait_out_the_pace_and_go_out_together() {
    let redis = RedisServer::start().await;
    let node = GatewayProc::start(&redis, "gw-a", &ENV).await;
    let mut alice = subscriber(&node, "alice", "news").await;
    let mut bob = subscriber(&node, "bob", "news").await;
    let mut r = redis.conn().await;
    let t1 = make_news_fast(&mut r, &mut [&mut alice, &mut bob]).await;
    let before = burst_frames(&node).await;
    let mut ids = Vec::new();
    for n in 2..7 {
        ids.push(fcall_publish(&mut r, "news", "tick", &json!({"n": n})).await);
    }
    for c in [&mut alice, &mut bob] {
        for (i, id) in ids.iter().enumerate() {
            expect_event(c, id, i as u64 + 2).await;
            if i == 0 {
                let waited = t1.elapsed();
                assert!(
                    waited >= PACE,
                    "the next event came {waited:?} after the last pass's publish"
                );
            }
        }
        c.assert_silent(Duration::from_millis(300)).await;
    }
    assert_eq!(
        burst_frames(&node).await - before,
        5.0,
        "the 5 events that came within the pace went out as one burst"
    );
    let paced = metric_value(&node.metrics().await, "wsgw_paced_passes_total");
    assert_eq!(paced, Some(1.0), "one pass waited for the pace");
}

#[tokio::test]
async fn a_small_fan_out_is_never_held_and_does_not_end_the_pace() {
    let redis = RedisServer::start().await;
    let node = GatewayProc::start(&redis, "gw-a", &ENV).await;
    let mut alice = subscriber(&node, "alice", "news").await;
    let mut bob = subscriber(&node, "bob", "news").await;
    let mut carol = subscriber(&node, "carol", "solo").await;
    let mut r = redis.conn().await;
    let t1 = make_news_fast(&mut r, &mut [&mut alice, &mut bob]).await;
    // Within the pace of that pass: carol's events reach one socket each, so however fast
    // they come, none is held.
    for n in 0..3 {
        let solo = fcall_publish(&mut r, "solo", "tick", &json!({"n": n})).await;
        expect_event(&mut carol, &solo, n).await;
    }
    let took = t1.elapsed();
    assert!(
        took < PACE,
        "3 one-socket events took {took:?} from the last large pass's publish"
    );
    // The large pass still paces the next large one.
    let next = fcall_publish(&mut r, "news", "tick", &json!({"n": 2})).await;
    expect_event(&mut alice, &next, 2).await;
    let waited = t1.elapsed();
    assert!(
        waited >= PACE,
        "the next large event came {waited:?} after the last pass's publish"
    );
    expect_event(&mut bob, &next, 2).await;
    for c in [&mut alice, &mut bob, &mut carol] {
        c.assert_silent(Duration::from_millis(300)).await;
    }
}
