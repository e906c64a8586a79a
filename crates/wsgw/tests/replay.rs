//! Event ids, history and replay on one node: nothing lost, nothing duplicated, and an honest
//! `recovered` flag when completeness can't be promised.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use serde_json::{Value, json};
use wsgw::Config;
use wsgw_protocol::EventId;

fn id_of(e: &Value) -> EventId {
    e["event_id"]
        .as_str()
        .expect("durable event has an id")
        .parse()
        .expect("valid id")
}

#[tokio::test]
async fn a_client_that_missed_events_gets_exactly_those_in_order_then_live_ones() {
    let node = Node::default().await;
    let t = token("m", &["room:*"], &[]);
    let (mut c, w) = node.connect(&t).await;
    let conn = w["connection_id"].as_str().unwrap().to_string();
    c.send(json!({"type": "subscribe", "channel": "room:1"})).await;
    c.expect("subscribed").await;
    node.publish("user:m", "seen", json!(0)).await;
    let last = c.expect("event").await["event_id"].as_str().unwrap().to_string();
    c.close().await;

    // Three events on three of its channels while it is away, and one for somebody else.
    let mut missed = Vec::new();
    missed.push(node.publish("user:m", "a", json!(1)).await);
    missed.push(node.publish("broadcast", "b", json!(2)).await);
    node.publish("user:other", "not-yours", json!(0)).await;
    missed.push(node.publish("room:1", "c", json!(3)).await);

    let (mut c, w) = node
        .connect_query(&format!("token={t}&connection_id={conn}&last_event_id={last}"))
        .await;
    assert_eq!(
        (w["resumed"].as_bool(), w["recovered"].as_bool(), w["replayed"].as_u64()),
        (Some(true), Some(true), Some(3))
    );
    let got: Vec<String> = c
        .events(3)
        .await
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, missed);
    let live = node.publish("room:1", "live", json!(4)).await;
    assert_eq!(c.expect("event").await["event_id"], live.as_str());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_while_a_publisher_hammers_loses_and_repeats_nothing() {
    let node = Arc::new(Node::default().await);
    let t = token("h", &[], &[]);
    let (mut c, _) = node.connect(&t).await;
    node.publish("broadcast", "seq", json!(-1)).await;
    let start = c.expect("event").await;
    c.close().await;

    let total = 400i64;
    let reconnect_at = Arc::new(AtomicBool::new(false));
    let publisher = {
        let node = node.clone();
        let reconnect_at = reconnect_at.clone();
        tokio::spawn(async move {
            for i in 0..total {
                // alternate channels: ids are global, so order must hold across them
                let channel = if i % 2 == 0 { "broadcast" } else { "user:h" };
                node.publish(channel, "seq", json!(i)).await;
                if i == total / 3 {
                    reconnect_at.store(true, Ordering::Release);
                }
            }
        })
    };
    wait_until("a third has been published", || {
        let r = reconnect_at.clone();
        async move { r.load(Ordering::Acquire) }
    })
    .await;
    let (mut c, w) = node
        .connect_query(&format!(
            "token={t}&last_event_id={}",
            start["event_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(w["recovered"], true);
    let mut events = Vec::new();
    while events.len() < total as usize {
        match c.next_within(std::time::Duration::from_secs(10)).await {
            Ok(Some(f)) if f["type"] == "event" => events.push(f),
            Ok(Some(_)) => {}
            other => {
                let seqs: Vec<i64> = events.iter().map(|e| e["data"].as_i64().unwrap()).collect();
                let conns: Vec<_> = node
                    .gw
                    .gateway
                    .hub
                    .connections()
                    .iter()
                    .map(|c| (c.id.to_string(), c.queued()))
                    .collect();
                panic!(
                    "stuck after {} events ({other:?}); publisher finished: {}; server queues: {conns:?}; last seqs: {:?}",
                    events.len(),
                    publisher.is_finished(),
                    &seqs[seqs.len().saturating_sub(5)..]
                );
            }
        }
    }
    publisher.await.unwrap();
    let seqs: Vec<i64> = events.iter().map(|e| e["data"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        (0..total).collect::<Vec<_>>(),
        "every event once, in publish order"
    );
    let ids: Vec<EventId> = events.iter().map(id_of).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids strictly increase");
    c.assert_silent(std::time::Duration::from_millis(100)).await;
    Arc::try_unwrap(node).ok().expect("publisher finished").stop().await;
}

#[tokio::test]
async fn trimmed_history_and_the_replay_cap_report_recovered_false() {
    let node = Node::start(Config {
        history_size: 3,
        max_replay: 100,
        ..config()
    })
    .await;
    let t = token("t", &[], &[]);
    let (mut c, _) = node.connect(&t).await;
    node.publish("user:t", "x", json!(0)).await;
    let last = c.expect("event").await["event_id"].as_str().unwrap().to_string();
    c.close().await;
    let mut ids = Vec::new();
    for i in 1..=10 {
        ids.push(node.publish("user:t", "x", json!(i)).await);
    }
    let (mut c, w) = node.connect_query(&format!("token={t}&last_event_id={last}")).await;
    assert_eq!(w["recovered"], false, "7 of the 10 were trimmed");
    assert_eq!(w["replayed"], 3);
    let got: Vec<String> = c
        .events(3)
        .await
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, ids[7..], "what history still holds is sent, in order");
    node.stop().await;

    let node = Node::start(Config {
        history_size: 100,
        max_replay: 4,
        ..config()
    })
    .await;
    let (mut c, _) = node.connect(&t).await;
    node.publish("user:t", "x", json!(0)).await;
    let last = c.expect("event").await["event_id"].as_str().unwrap().to_string();
    c.close().await;
    let mut ids = Vec::new();
    for i in 1..=10 {
        ids.push(node.publish("user:t", "x", json!(i)).await);
    }
    let (mut c, w) = node.connect_query(&format!("token={t}&last_event_id={last}")).await;
    assert_eq!(
        (w["recovered"].as_bool(), w["replayed"].as_u64()),
        (Some(false), Some(4)),
        "capped at max_replay"
    );
    let got: Vec<String> = c
        .events(4)
        .await
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, ids[..4]);
    node.stop().await;
}

#[tokio::test]
async fn ids_from_another_server_life_or_garbage_are_not_recovered() {
    let node = Node::default().await;
    let t = token("o", &[], &[]);
    let (_c, w) = node.connect_query(&format!("token={t}&last_event_id=1000-0")).await;
    assert_eq!(
        w["recovered"], false,
        "an id from before this node started: history is gone"
    );
    let (mut c, w) = node.connect_query(&format!("token={t}&last_event_id=banana")).await;
    assert_eq!(w["recovered"], false);
    assert_eq!(c.expect("error").await["code"], "bad_request");
    node.stop().await;
}

/// A Redis Cluster deployment's id (`<shard>~<ms>-<seq>`) means nothing to a node without one:
/// unreadable, as on connect, in a subscribe's `last_event_id` and in a `history` read.
#[tokio::test]
async fn an_id_naming_an_id_shard_is_refused_where_no_cluster_issues_them() {
    let node = Node::default().await;
    let t = token("s", &["doc:*"], &[]);
    let (mut c, w) = node.connect_query(&format!("token={t}&last_event_id=3~1000-0")).await;
    assert_eq!(w["recovered"], false);
    let e = c.expect("error").await;
    assert_eq!(e["code"], "bad_request", "{e}");
    assert!(e["message"].as_str().unwrap().contains("3~1000-0"), "{e}");
    c.send(json!({"type": "subscribe", "channel": "doc:1", "last_event_id": "3~1000-0", "request_id": 1}))
        .await;
    let e = c.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["request_id"].as_u64()),
        (Some("bad_request"), Some(1)),
        "{e}"
    );
    c.send(json!({"type": "history", "channel": "doc:1", "since": "3~1000-0", "request_id": 2}))
        .await;
    let e = c.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["request_id"].as_u64()),
        (Some("bad_request"), Some(2)),
        "{e}"
    );
    // The socket still serves.
    c.send(json!({"type": "subscribe", "channel": "doc:1", "request_id": 3}))
        .await;
    c.expect("subscribed").await;
    let id = node.publish("doc:1", "edit", json!(1)).await;
    assert_eq!(c.expect("event").await["event_id"], id.as_str());
    node.stop().await;
}

#[tokio::test]
async fn subscribe_can_catch_up_a_topic_by_id_or_by_count() {
    let node = Node::default().await;
    let first = node.publish("doc:9", "edit", json!(1)).await;
    let second = node.publish("doc:9", "edit", json!(2)).await;
    let third = node.publish("doc:9", "edit", json!(3)).await;

    let (mut c, _) = node.connect(&token("d", &["doc:*"], &[])).await;
    c.send(json!({"type": "subscribe", "channel": "doc:9", "last_event_id": first, "request_id": 1}))
        .await;
    let s = c.expect("subscribed").await;
    assert_eq!(
        (s["recovered"].as_bool(), s["replayed"].as_u64()),
        (Some(true), Some(2))
    );
    let got: Vec<Value> = c.events(2).await.iter().map(|e| e["event_id"].clone()).collect();
    assert_eq!(got, [json!(second), json!(third)]);

    let (mut c2, _) = node.connect(&token("d2", &["doc:*"], &[])).await;
    c2.send(json!({"type": "subscribe", "channel": "doc:9", "history": 2}))
        .await;
    let s = c2.expect("subscribed").await;
    assert_eq!(s["replayed"], 2);
    let got: Vec<Value> = c2.events(2).await.iter().map(|e| e["data"].clone()).collect();
    assert_eq!(got, [json!(2), json!(3)], "the last two, oldest first");
    let live = node.publish("doc:9", "edit", json!(4)).await;
    assert_eq!(c.expect("event").await["event_id"], live.as_str());
    assert_eq!(c2.expect("event").await["event_id"], live.as_str());
    node.stop().await;
}
