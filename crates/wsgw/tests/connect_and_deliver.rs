//! Connecting (every token source, every auth failure) and who receives what.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn a_client_with_a_query_token_is_welcomed_with_its_identity() {
    let node = Node::default().await;
    let (_c, w) = node.connect(&token("42", &[], &[])).await;
    assert_eq!(w["user_id"], "42");
    assert_eq!(w["node"], "test-node");
    assert_eq!(w["resumed"], false);
    assert_eq!(w["recovered"], true);
    assert_eq!(w["replayed"], 0);
    assert_eq!(w["heartbeat"]["interval_ms"], 30000);
    assert_eq!(w["heartbeat"]["timeout_ms"], 60000);
    assert!(w["connection_id"].as_str().unwrap().len() >= 16);
    node.stop().await;
}

#[tokio::test]
async fn tokens_are_read_from_the_header_and_the_subprotocol_too() {
    let node = Node::default().await;
    let t = token("7", &[], &[]);
    let (mut c, proto) = Client::connect_with(&node.ws_url(""), &[("authorization", &format!("Bearer {t}"))]).await;
    assert_eq!(c.expect("welcome").await["user_id"], "7");
    assert_eq!(proto, None, "no subprotocol asked, none answered");

    let offer = format!("wsgw.v1, bearer.{t}");
    let (mut c2, proto) = Client::connect_with(&node.ws_url(""), &[("sec-websocket-protocol", &offer)]).await;
    assert_eq!(
        proto.as_deref(),
        Some("wsgw.v1"),
        "the server answers wsgw.v1, never the token"
    );
    assert_eq!(c2.expect("welcome").await["user_id"], "7");
    drop(c);
    node.stop().await;
}

#[tokio::test]
async fn bad_missing_and_expired_tokens_get_an_error_frame_then_4001_or_4003() {
    let node = Node::default().await;
    let cases = [
        ("".to_string(), "unauthorized", 4001),
        ("token=not.a.jwt".to_string(), "unauthorized", 4001),
        (
            format!(
                "token={}",
                wsgw::auth::sign_hs256("wrong-secret", "1", &[], &[], Some(now_s() + 60))
            ),
            "unauthorized",
            4001,
        ),
        (
            format!(
                "token={}",
                wsgw::auth::sign_hs256(SECRET, "1", &[], &[], Some(now_s() - 3600))
            ),
            "token_expired",
            4003,
        ),
    ];
    for (query, code, close) in cases {
        let mut c = Client::connect(&node.ws_url(&query)).await;
        let (got_close, frames) = c.until_closed().await;
        assert_eq!(frames.len(), 1, "{query}: one frame then close, got {frames:?}");
        assert_eq!(frames[0]["type"], "error");
        assert_eq!(frames[0]["code"], code, "{query}");
        assert_eq!(got_close, Some(close), "{query}");
    }
    let m = node.metrics().await;
    assert_eq!(
        metric_value(&m, "wsgw_auth_failures_total{reason=\"missing\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&m, "wsgw_auth_failures_total{reason=\"invalid\"}"),
        Some(2.0)
    );
    assert_eq!(
        metric_value(&m, "wsgw_auth_failures_total{reason=\"expired\"}"),
        Some(1.0)
    );
    node.stop().await;
}

#[tokio::test]
async fn user_connection_and_broadcast_channels_reach_exactly_their_sockets() {
    let node = Node::default().await;
    let (mut alice1, w1) = node.connect(&token("alice", &[], &[])).await;
    let (mut alice2, _) = node.connect(&token("alice", &[], &[])).await;
    let (mut bob, _) = node.connect(&token("bob", &[], &[])).await;

    node.publish("user:alice", "note", json!({"n": 1})).await;
    for c in [&mut alice1, &mut alice2] {
        let e = c.expect("event").await;
        assert_eq!(
            (e["channel"].as_str(), e["event"].as_str(), e["data"]["n"].as_i64()),
            (Some("user:alice"), Some("note"), Some(1))
        );
        assert!(e["event_id"].is_string() && e["ts"].is_u64());
    }

    let conn = w1["connection_id"].as_str().unwrap();
    node.publish(&format!("connection:{conn}"), "only-you", json!(null))
        .await;
    assert_eq!(alice1.expect("event").await["event"], "only-you");

    node.publish("broadcast", "all", json!(null)).await;
    for c in [&mut alice1, &mut alice2, &mut bob] {
        assert_eq!(c.expect("event").await["event"], "all");
    }
    // bob got nothing before the broadcast, alice2 nothing addressed to alice1's connection
    alice2.assert_silent(Duration::from_millis(100)).await;
    bob.assert_silent(Duration::from_millis(100)).await;
    node.stop().await;
}

#[tokio::test]
async fn topics_and_patterns_need_permission_and_stop_after_unsubscribe() {
    let node = Node::default().await;
    let (mut c, _) = node.connect(&token("u1", &["project:*"], &[])).await;
    let (mut other, _) = node.connect(&token("u2", &["project:*"], &[])).await;

    c.send(json!({"type": "subscribe", "channel": "project:1", "request_id": "r1"}))
        .await;
    let s = c.expect("subscribed").await;
    assert_eq!(
        (
            s["channel"].as_str(),
            s["request_id"].as_str(),
            s["recovered"].as_bool()
        ),
        (Some("project:1"), Some("r1"), Some(true))
    );

    c.send(json!({"type": "subscribe", "channel": "secret:1", "request_id": 2}))
        .await;
    let e = c.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["request_id"].as_i64()),
        (Some("forbidden"), Some(2))
    );

    c.send(json!({"type": "subscribe", "channel": "user:u2"})).await;
    assert_eq!(
        c.expect("error").await["code"],
        "forbidden",
        "other users' channels are private"
    );

    other.send(json!({"type": "subscribe", "channel": "project:*"})).await;
    other.expect("subscribed").await;

    node.publish("project:1", "changed", json!({"v": 1})).await;
    assert_eq!(c.expect("event").await["data"]["v"], 1);
    assert_eq!(other.expect("event").await["channel"], "project:1");
    node.publish("project:2", "changed", json!({"v": 2})).await;
    assert_eq!(
        other.expect("event").await["channel"],
        "project:2",
        "pattern matches any project"
    );

    c.send(json!({"type": "unsubscribe", "channel": "project:1", "request_id": "u"}))
        .await;
    assert_eq!(c.expect("unsubscribed").await["request_id"], "u");
    node.publish("project:1", "changed", json!({"v": 3})).await;
    assert_eq!(other.expect("event").await["data"]["v"], 3);
    c.assert_silent(Duration::from_millis(100)).await;
    node.stop().await;
}

#[tokio::test]
async fn clients_publish_where_their_token_allows_and_can_skip_their_own_echo() {
    let node = Node::default().await;
    let (mut a, _) = node.connect(&token("a", &["chat:*"], &["chat:*"])).await;
    let (mut b, _) = node.connect(&token("b", &["chat:*"], &[])).await;
    for c in [&mut a, &mut b] {
        c.send(json!({"type": "subscribe", "channel": "chat:1"})).await;
        c.expect("subscribed").await;
    }
    a.send(json!({"type": "publish", "channel": "chat:1", "event": "msg", "data": {"text": "hi"}, "request_id": 9}))
        .await;
    let mut got_ack = None;
    let mut got_event = None;
    for _ in 0..2 {
        let f = a.next().await.unwrap();
        match f["type"].as_str() {
            Some("ack") => got_ack = Some(f),
            Some("event") => got_event = Some(f),
            _ => panic!("unexpected {f}"),
        }
    }
    let ack = got_ack.unwrap();
    assert_eq!(ack["request_id"], 9);
    assert_eq!(
        got_event.unwrap()["event_id"],
        ack["event_id"],
        "the echo carries the acked id"
    );
    assert_eq!(b.expect("event").await["event_id"], ack["event_id"]);

    a.send(json!({"type": "publish", "channel": "chat:1", "event": "msg", "data": 2, "echo": false, "request_id": 10}))
        .await;
    assert_eq!(a.expect("ack").await["request_id"], 10);
    assert_eq!(b.expect("event").await["data"], 2);
    a.assert_silent(Duration::from_millis(100)).await;

    b.send(json!({"type": "publish", "channel": "chat:1", "event": "msg", "data": 3, "request_id": 11}))
        .await;
    let e = b.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["request_id"].as_i64()),
        (Some("forbidden"), Some(11))
    );
    node.stop().await;
}

#[tokio::test]
async fn a_resumed_connection_id_keeps_its_topics() {
    let node = Node::default().await;
    let t = token("r", &["room:*"], &[]);
    let (mut c, w) = node.connect(&t).await;
    let id = w["connection_id"].as_str().unwrap().to_string();
    c.send(json!({"type": "subscribe", "channel": "room:5"})).await;
    c.expect("subscribed").await;
    c.close().await;

    let (mut c, w) = node.connect_query(&format!("token={t}&connection_id={id}")).await;
    assert_eq!(w["resumed"], true);
    assert_eq!(w["connection_id"], id.as_str());
    assert_eq!(w["channels"], json!(["room:5"]));
    node.publish("room:5", "back", json!(null)).await;
    assert_eq!(c.expect("event").await["event"], "back");

    // someone else cannot take the identity over
    let (_, w2) = node
        .connect_query(&format!("token={}&connection_id={id}", token("mallory", &["*"], &[])))
        .await;
    assert_ne!(w2["connection_id"], id.as_str());
    assert_eq!(w2["resumed"], false);
    node.stop().await;
}
