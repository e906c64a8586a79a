//! Several gateway processes on one real redis-server behave as one gateway.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::cluster::*;
use common::*;
use serde_json::{Value, json};
use wsgw_protocol::EventId;

#[tokio::test]
async fn publishes_from_redis_http_and_plain_publish_reach_exactly_the_right_sockets_on_every_node() {
    let redis = RedisServer::start().await;
    let a = GatewayProc::start(&redis, "gw-a", &[]).await;
    let b = GatewayProc::start(&redis, "gw-b", &[]).await;
    let (mut alice_a, wa) = a.connect(&token("alice", &[], &[])).await;
    let (mut alice_b, _) = b.connect(&token("alice", &[], &[])).await;
    let (mut bob_b, _) = b.connect(&token("bob", &[], &[])).await;
    let (mut carol_a, _) = a.connect(&token("carol", &["project:*"], &[])).await;
    assert_eq!(wa["node"], "gw-a");
    carol_a.send(json!({"type": "subscribe", "channel": "project:1"})).await;
    carol_a.expect("subscribed").await;

    // 1. A backend calls the Redis Function directly.
    let mut r = redis.conn().await;
    let id = fcall_publish(&mut r, "user:alice", "dm", &json!({"text": "hi"})).await;
    for c in [&mut alice_a, &mut alice_b] {
        let e = c.expect("event").await;
        assert_eq!(
            (e["event_id"].as_str(), e["channel"].as_str()),
            (Some(id.as_str()), Some("user:alice"))
        );
        assert_eq!(e["data"]["text"], "hi");
    }

    // 2. HTTP publish on node B reaches a subscriber on node A.
    let (status, body) = b
        .api_post(
            "/api/publish",
            json!({"channel": "project:1", "event": "edit", "data": 7}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let e = carol_a.expect("event").await;
    assert_eq!(
        (e["event_id"].clone(), e["data"].clone()),
        (body["event_id"].clone(), json!(7))
    );

    // 3. Plain PUBLISH of an event frame without id: live for everyone, never in history.
    let frame = json!({"type": "event", "channel": "broadcast", "event": "blink", "data": null, "ts": 1});
    let _: i64 = redis::cmd("PUBLISH")
        .arg("ws:broadcast")
        .arg(frame.to_string())
        .query_async(&mut r)
        .await
        .unwrap();
    for c in [&mut alice_a, &mut alice_b, &mut bob_b, &mut carol_a] {
        let e = c.expect("event").await;
        assert_eq!(e["event"], "blink");
        assert!(e.get("event_id").is_none(), "ephemeral: {e}");
    }
    let (_, hist) = a.api_get("/api/history/broadcast").await;
    assert_eq!(hist["events"], json!([]), "plain PUBLISH is not kept");

    // 4. Garbage, and an event claiming another channel, are dropped and counted.
    let _: i64 = redis::cmd("PUBLISH")
        .arg("ws:broadcast")
        .arg("not json")
        .query_async(&mut r)
        .await
        .unwrap();
    let smuggled = json!({"type": "event", "channel": "user:bob", "event": "x", "data": 1});
    let _: i64 = redis::cmd("PUBLISH")
        .arg("ws:broadcast")
        .arg(smuggled.to_string())
        .query_async(&mut r)
        .await
        .unwrap();
    let marker = fcall_publish(&mut r, "broadcast", "marker", &json!(null)).await;
    for c in [&mut alice_a, &mut alice_b, &mut bob_b, &mut carol_a] {
        assert_eq!(
            c.expect("event").await["event_id"],
            marker.as_str(),
            "nothing before the marker"
        );
    }
    let m = a.metrics().await;
    assert_eq!(metric_value(&m, "wsgw_dropped_frames_total"), Some(2.0));

    // Nobody got what was not theirs.
    bob_b.assert_silent(Duration::from_millis(100)).await;
    alice_a.assert_silent(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn an_exclusion_list_is_honoured_on_every_node_and_never_shown() {
    let redis = RedisServer::start().await;
    let a = GatewayProc::start(&redis, "gw-a", &[]).await;
    let b = GatewayProc::start(&redis, "gw-b", &[]).await;
    let (mut x_a, wx) = a.connect(&token("x", &[], &[])).await;
    let (mut y_b, wy) = b.connect(&token("y", &[], &[])).await;
    let (mut z_b, _) = b.connect(&token("z", &[], &[])).await;
    let skip = format!(
        "{},{}",
        wx["connection_id"].as_str().unwrap(),
        wy["connection_id"].as_str().unwrap()
    );
    let mut r = redis.conn().await;
    let _: String = redis::cmd("FCALL")
        .arg("wsgw_publish")
        .arg(2)
        .arg("ws:seq")
        .arg("ws:history:broadcast")
        .arg("broadcast")
        .arg("chat")
        .arg("{\"m\":1}")
        .arg(3_600_000)
        .arg(100)
        .arg(&skip)
        .query_async(&mut r)
        .await
        .unwrap();
    let e = z_b.expect("event").await;
    assert_eq!(e["data"]["m"], 1);
    assert!(
        !e.to_string().contains(wx["connection_id"].as_str().unwrap()),
        "no trace of the exclusion list: {e}"
    );
    let id = fcall_publish(&mut r, "broadcast", "after", &json!(null)).await;
    assert_eq!(
        x_a.expect("event").await["event_id"],
        id.as_str(),
        "x skipped the excluded event"
    );
    assert_eq!(
        y_b.expect("event").await["event_id"],
        id.as_str(),
        "y skipped the excluded event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reconnects_to_another_node_gets_what_it_missed_in_order_while_a_publisher_hammers() {
    let redis = RedisServer::start().await;
    let a = GatewayProc::start(&redis, "gw-a", &[]).await;
    let b = GatewayProc::start(&redis, "gw-b", &[]).await;
    let t = token("h", &[], &[]);
    let (mut c, _) = a.connect(&t).await;
    let mut r = redis.conn().await;
    fcall_publish(&mut r, "user:h", "seq", &json!(-1)).await;
    let last = c.expect("event").await["event_id"].as_str().unwrap().to_string();
    c.close().await;

    let total = 300i64;
    let halfway = Arc::new(AtomicBool::new(false));
    let publisher = {
        let halfway = halfway.clone();
        let mut r = redis.conn().await;
        tokio::spawn(async move {
            for i in 0..total {
                let channel = if i % 2 == 0 { "broadcast" } else { "user:h" };
                fcall_publish(&mut r, channel, "seq", &json!(i)).await;
                // Someone else's events interleave and must not show up.
                fcall_publish(&mut r, "user:other", "noise", &json!(i)).await;
                if i == total / 2 {
                    halfway.store(true, Ordering::Release);
                }
            }
        })
    };
    wait_until("half the events are published", || {
        let h = halfway.clone();
        async move { h.load(Ordering::Acquire) }
    })
    .await;
    let (mut c, w) = b.connect_query(&format!("token={t}&last_event_id={last}")).await;
    assert_eq!(
        (w["node"].as_str(), w["recovered"].as_bool()),
        (Some("gw-b"), Some(true))
    );
    let events = c.events(total as usize).await;
    publisher.await.unwrap();
    let seqs: Vec<i64> = events.iter().map(|e| e["data"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        (0..total).collect::<Vec<_>>(),
        "each missed and live event once, in order"
    );
    let ids: Vec<EventId> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    c.assert_silent(Duration::from_millis(200)).await;
}

async fn missed_and_reconnect(node: &GatewayProc, redis: &RedisServer, n: usize) -> (Value, Vec<Value>) {
    let t = token("trim", &[], &[]);
    let (mut c, _) = node.connect(&t).await;
    let mut r = redis.conn().await;
    fcall_publish(&mut r, "user:trim", "x", &json!(0)).await;
    let last = c.expect("event").await["event_id"].as_str().unwrap().to_string();
    c.close().await;
    for i in 1..=n {
        fcall_publish(&mut r, "user:trim", "x", &json!(i)).await;
    }
    let (mut c, w) = node.connect_query(&format!("token={t}&last_event_id={last}")).await;
    let replayed = w["replayed"].as_u64().unwrap() as usize;
    let evs = c.events(replayed).await;
    (w, evs)
}

#[tokio::test]
async fn recovered_is_false_after_trimming_and_after_redis_lost_its_data() {
    let redis = RedisServer::start().await;
    let a = GatewayProc::start(&redis, "gw-a", &[("WSGW_HISTORY_SIZE", "3")]).await;
    let (w, evs) = missed_and_reconnect(&a, &redis, 2).await;
    assert_eq!(
        (w["recovered"].as_bool(), w["replayed"].as_u64()),
        (Some(true), Some(2)),
        "within history: complete"
    );
    assert_eq!(
        evs.iter().map(|e| e["data"].as_i64().unwrap()).collect::<Vec<_>>(),
        [1, 2]
    );

    let (w, evs) = missed_and_reconnect(&a, &redis, 5).await;
    assert_eq!(
        (w["recovered"].as_bool(), w["replayed"].as_u64()),
        (Some(false), Some(3)),
        "2 of 5 trimmed"
    );
    assert_eq!(
        evs.iter().map(|e| e["data"].as_i64().unwrap()).collect::<Vec<_>>(),
        [3, 4, 5]
    );

    // Redis loses everything: an id from before is not recoverable.
    let t = token("trim", &[], &[]);
    let (mut c, _) = a.connect(&t).await;
    let mut r = redis.conn().await;
    fcall_publish(&mut r, "user:trim", "x", &json!("before")).await;
    let last = c.expect("event").await["event_id"].as_str().unwrap().to_string();
    c.close().await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut r).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await; // a new epoch must be a later millisecond
    fcall_publish(&mut r, "user:trim", "x", &json!("after")).await;
    let (mut c, w) = a.connect_query(&format!("token={t}&last_event_id={last}")).await;
    assert_eq!(w["recovered"], false, "history after {last} may be gone");
    assert_eq!(c.expect("event").await["data"], "after", "what is there is still sent");
}
