//! `WSGW_WRITE_DELAY_MS` (docs/configuration.md): a node waits that long after an event reaches
//! its Redis pub/sub connection, and writes what arrived meanwhile to each socket as one burst,
//! in order, once each; a backlog longer than one pass of the reader waits the delay once.
//! Against a real redis-server and real sockets. (A node on a Redis Cluster refuses the
//! setting for now: config/tests.rs.)
//!
//! `cargo test -p wsgw --test suite write_delay::`

use crate::common;

use std::time::{Duration, Instant};

use common::cluster::{GatewayProc, RedisServer, fcall_publish, publish_cmd};
use common::{Client, metric_value, token};
use serde_json::json;

const DELAY_MS: &str = "500";
const DELAY: Duration = Duration::from_millis(500);
const EVENTS: u64 = 6;

/// The node's settings: the delay, and no canary during the test (it travels the same pub/sub
/// connection and would join the burst).
const ENV: [(&str, &str); 2] = [("WSGW_WRITE_DELAY_MS", DELAY_MS), ("WSGW_CANARY_INTERVAL_MS", "600000")];

async fn burst_frames(node: &GatewayProc) -> f64 {
    metric_value(&node.metrics().await, "wsgw_burst_frames_total").unwrap_or(0.0)
}

/// Two sockets of the node, subscribed to `channel`.
async fn two_subscribers(node: &GatewayProc, channel: &str) -> Vec<Client> {
    let mut clients = Vec::new();
    for user in ["alice", "bob"] {
        let (mut c, _) = node.connect(&token(user, &[channel], &[])).await;
        c.send(json!({"type": "subscribe", "channel": channel})).await;
        c.expect("subscribed").await;
        clients.push(c);
    }
    clients
}

/// Every client gets the events `ids` in order, once each, the first no earlier than the delay
/// after `started`; the node wrote them as one burst of `EVENTS` frames.
async fn assert_gathered(node: &GatewayProc, clients: &mut [Client], ids: &[String], started: Instant, before: f64) {
    let published = started.elapsed();
    for c in clients {
        for (i, id) in ids.iter().enumerate() {
            let e = c.expect("event").await;
            if i == 0 {
                let waited = started.elapsed();
                assert!(waited >= DELAY, "the first event came {waited:?} after its publish");
            }
            assert_eq!(
                (e["event_id"].as_str(), e["data"]["n"].as_u64()),
                (Some(id.as_str()), Some(i as u64)),
                "event {i}"
            );
        }
        c.assert_silent(Duration::from_millis(300)).await;
    }
    assert_eq!(
        burst_frames(node).await - before,
        EVENTS as f64,
        "the {EVENTS} events, published within {published:?}, went out as one burst"
    );
}

#[tokio::test]
async fn events_within_the_write_delay_go_out_together_in_order_and_none_before_it() {
    let redis = RedisServer::start().await;
    let node = GatewayProc::start(&redis, "gw-a", &ENV).await;
    let mut clients = two_subscribers(&node, "news").await;
    let before = burst_frames(&node).await;
    let mut r = redis.conn().await;
    let started = Instant::now();
    let mut ids = Vec::new();
    for n in 0..EVENTS {
        ids.push(fcall_publish(&mut r, "news", "tick", &json!({"n": n})).await);
    }
    assert_gathered(&node, &mut clients, &ids, started, before).await;
}

/// More events than one pass of the reader takes (256) reach the node within the first delay,
/// in one pipeline: a subscriber gets them in order, once each, within three delays, since the
/// passes after the first take what waited without waiting the delay again. Five passes, each
/// after its own delay, would take 2.5 s at least.
#[tokio::test]
async fn a_backlog_longer_than_one_pass_waits_the_delay_once() {
    const MANY: u64 = 1200;
    let redis = RedisServer::start().await;
    let node = GatewayProc::start(&redis, "gw-a", &ENV).await;
    let mut c = two_subscribers(&node, "news").await.remove(0);
    let mut pipe = redis::pipe();
    for n in 0..MANY {
        pipe.add_command(publish_cmd("news", "tick", &json!({"n": n}).to_string()));
    }
    let started = Instant::now();
    let ids: Vec<String> = pipe.query_async(&mut redis.conn().await).await.unwrap();
    for (n, id) in ids.iter().enumerate() {
        let e = c.expect("event").await;
        assert_eq!(
            (e["event_id"].as_str(), e["data"]["n"].as_u64()),
            (Some(id.as_str()), Some(n as u64)),
            "event {n}"
        );
    }
    let took = started.elapsed();
    assert!(took < DELAY * 3, "{MANY} events took {took:?} with a {DELAY:?} delay");
    c.assert_silent(Duration::from_millis(300)).await;
}
