//! Redis goes away and comes back: sockets stay open, nothing durable is lost or repeated.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_drops_no_socket_and_loses_no_durable_event() {
    let mut redis = RedisServer::start_persistent().await;
    let a = GatewayProc::start(&redis, "gw-a", &[]).await;
    let b = GatewayProc::start(&redis, "gw-b", &[]).await;
    let (mut c1, _) = a.connect(&token("u1", &[], &[])).await;
    let (mut c2, _) = b.connect(&token("u2", &[], &[])).await;
    {
        let mut r = redis.conn().await;
        let id = fcall_publish(&mut r, "broadcast", "e0", &json!(0)).await;
        assert_eq!(c1.expect("event").await["event_id"], id.as_str());
        assert_eq!(c2.expect("event").await["event_id"], id.as_str());
    }

    redis.kill();
    // The nodes notice and say so.
    let http = reqwest::Client::new();
    wait_until("node A reports not ready", || {
        let http = http.clone();
        let url = a.url("/ready");
        async move { http.get(url).send().await.map(|r| r.status().as_u16() == 503).unwrap_or(false) }
    })
    .await;
    // Publishing through the API fails fast with 503 instead of hanging.
    let started = Instant::now();
    let (status, body) = a.api_post("/api/publish", json!({"channel": "broadcast", "event": "lost", "data": 1})).await;
    assert_eq!(status, 503, "{body}");
    assert!(started.elapsed() < Duration::from_secs(3), "503 took {:?}", started.elapsed());

    // Redis comes back with its data; a backend publishes at once, before the nodes have
    // resubscribed: exactly the window a real outage leaves.
    redis.restart().await;
    let mut r = redis.conn().await;
    let mut expected_c1 = Vec::new();
    let mut expected_c2 = Vec::new();
    for i in 1..=6 {
        let channel = if i % 2 == 0 { "broadcast" } else { "user:u1" };
        let id = fcall_publish(&mut r, channel, "during", &json!(i)).await;
        expected_c1.push(id.clone());
        if channel == "broadcast" {
            expected_c2.push(id);
        }
    }
    let got1: Vec<String> =
        c1.events(expected_c1.len()).await.iter().map(|e| e["event_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(got1, expected_c1, "node A repaired the gap, in order, once");
    let got2: Vec<String> =
        c2.events(expected_c2.len()).await.iter().map(|e| e["event_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(got2, expected_c2, "node B too");

    // Live delivery resumes, and nothing is repeated.
    a.wait_ready().await;
    b.wait_ready().await;
    let live = fcall_publish(&mut r, "broadcast", "live", &json!(7)).await;
    assert_eq!(c1.expect("event").await["event_id"], live.as_str());
    assert_eq!(c2.expect("event").await["event_id"], live.as_str());
    c1.assert_silent(Duration::from_millis(200)).await;
    assert!(c1.closed.is_none() && c2.closed.is_none(), "no socket was dropped");
    let m = a.metrics().await;
    assert!(metric_value(&m, "wsgw_redis_reconnects_total").unwrap() >= 1.0);
}

#[tokio::test]
async fn a_pubsub_connection_killed_by_redis_is_replaced_and_the_gap_repaired() {
    let redis = RedisServer::start().await;
    let a = GatewayProc::start(&redis, "gw-a", &[]).await;
    let (mut c, _) = a.connect(&token("k", &[], &[])).await;
    let mut r = redis.conn().await;
    let first = fcall_publish(&mut r, "user:k", "e", &json!(0)).await;
    assert_eq!(c.expect("event").await["event_id"], first.as_str());

    // What a failover or a proxy does to a subscriber: its connection vanishes.
    let killed: i64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut r).await.unwrap();
    assert!(killed >= 1);
    let mut ids = Vec::new();
    for i in 1..=5 {
        ids.push(fcall_publish(&mut r, "user:k", "e", &json!(i)).await);
    }
    let got: Vec<String> = c.events(5).await.iter().map(|e| e["event_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(got, ids);
    a.wait_ready().await;
    let live = fcall_publish(&mut r, "user:k", "e", &json!(6)).await;
    assert_eq!(c.expect("event").await["event_id"], live.as_str());
    assert!(c.closed.is_none());
}

#[tokio::test]
async fn a_new_client_during_an_outage_is_told_to_come_back_later() {
    let mut redis = RedisServer::start().await;
    let a = GatewayProc::start(&redis, "gw-a", &[]).await;
    redis.kill();
    let http = reqwest::Client::new();
    wait_until("node A reports not ready", || {
        let http = http.clone();
        let url = a.url("/ready");
        async move { http.get(url).send().await.map(|r| r.status().as_u16() == 503).unwrap_or(false) }
    })
    .await;
    let mut c = Client::connect(&a.ws_url(&format!("token={}", token("late", &[], &[])))).await;
    let (code, frames) = c.until_closed().await;
    assert_eq!(code, Some(1013), "{frames:?}");
    assert!(frames.iter().any(|f| f["code"] == "unavailable"), "{frames:?}");
}
