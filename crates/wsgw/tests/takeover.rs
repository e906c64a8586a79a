//! Takeover: a socket whose `connection_id` a newer socket of the same user resumed (a
//! duplicated browser tab copies sessionStorage) is closed with 4010 `replaced`, on one node and
//! across nodes; the newer socket keeps the id and its topics.

use crate::common;

use common::cluster::*;
use common::*;
use serde_json::json;

#[tokio::test]
async fn a_socket_taken_over_on_the_same_node_is_closed_4010_and_the_new_one_keeps_the_id() {
    let node = Node::default().await;
    let t = token("alice", &["room:*"], &[]);
    let (mut first, w) = node.connect(&t).await;
    let id = w["connection_id"].as_str().unwrap().to_string();
    first.send(json!({"type": "subscribe", "channel": "room:1"})).await;
    first.expect("subscribed").await;

    let (mut second, w2) = node.connect_query(&format!("token={t}&connection_id={id}")).await;
    assert_eq!(w2["connection_id"], id.as_str(), "{w2}");

    let (code, _) = first.until_closed().await;
    assert_eq!(code, Some(4010), "the replaced socket gets the takeover code");

    // The newer socket has the id, and a fresh session beside it gets its own id.
    node.publish(&format!("connection:{id}"), "direct", json!(1)).await;
    assert_eq!(second.expect("event").await["event"], "direct");
    let (mut fresh, w3) = node.connect(&t).await;
    assert_ne!(w3["connection_id"], id.as_str());
    fresh.send(json!({"type": "subscribe", "channel": "room:1"})).await;
    fresh.expect("subscribed").await;
    second.send(json!({"type": "subscribe", "channel": "room:1"})).await;
    second.expect("subscribed").await;
    node.publish("room:1", "both", json!(2)).await;
    assert_eq!(second.expect("event").await["event"], "both");
    assert_eq!(fresh.expect("event").await["event"], "both");
    let m = node.metrics().await;
    assert_eq!(
        metric_value(&m, "wsgw_connections_closed_total{reason=\"replaced\"}"),
        Some(1.0),
        "{m}"
    );
    node.stop().await;
}

#[tokio::test]
async fn a_socket_taken_over_from_another_node_is_closed_4010() {
    let redis = RedisServer::start().await;
    let a = GatewayProc::start(&redis, "gw-a", &[]).await;
    let b = GatewayProc::start(&redis, "gw-b", &[]).await;
    let t = token("alice", &["room:*"], &[]);
    let (mut first, w) = a.connect(&t).await;
    let id = w["connection_id"].as_str().unwrap().to_string();
    first.send(json!({"type": "subscribe", "channel": "room:1"})).await;
    first.expect("subscribed").await;

    let (mut second, w2) = b.connect_query(&format!("connection_id={id}&token={t}")).await;
    assert_eq!(
        (w2["resumed"].as_bool(), w2["connection_id"].as_str()),
        (Some(true), Some(id.as_str())),
        "{w2}"
    );
    let (code, _) = first.until_closed().await;
    assert_eq!(code, Some(4010), "the socket on A is closed with the takeover code");

    let mut r = redis.conn().await;
    let ev = fcall_publish(&mut r, &format!("connection:{id}"), "direct", &json!(1)).await;
    assert_eq!(
        second.expect("event").await["event_id"],
        ev.as_str(),
        "the connection channel follows the newer socket"
    );
}
