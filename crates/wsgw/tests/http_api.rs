//! The backend's HTTP API: publishing, kicking users and sockets, presence, history, stats,
//! and the unauthenticated health, readiness and metrics endpoints.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use wsgw::Config;

/// POSTs a raw body with an optional `Authorization: Bearer` key; returns status and JSON body.
async fn post_raw(node: &Node, path: &str, key: Option<&str>, body: impl Into<String>) -> (u16, Value) {
    let mut req = node
        .http
        .post(node.url(path))
        .header("content-type", "application/json")
        .body(body.into());
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.expect("http request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// GETs without any key.
async fn get_public(node: &Node, path: &str) -> (u16, String) {
    let r = node.http.get(node.url(path)).send().await.expect("http request");
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn publish_and_broadcast_need_the_api_key_and_reach_connected_sockets() {
    let node = Node::default().await;
    let (mut alice, _) = node.connect(&token("alice", &[], &[])).await;
    let routes = [
        (
            "/api/publish",
            json!({"channel": "user:alice", "event": "note", "data": {"n": 1}}),
        ),
        ("/api/broadcast", json!({"event": "news", "data": {"n": 2}})),
    ];
    for (path, body) in &routes {
        for key in [None, Some("wrong-key"), Some("")] {
            let (status, resp) = post_raw(&node, path, key, body.to_string()).await;
            assert_eq!(status, 401, "{path} with key {key:?}: {resp}");
            assert_eq!(resp["error"], "unauthorized", "{path} with key {key:?}");
            assert!(resp["message"].is_string(), "{resp}");
        }
    }
    // Nothing was published by the refused calls.
    alice.assert_silent(Duration::from_millis(100)).await;

    let (status, resp) = post_raw(&node, "/api/publish", Some(API_KEY), routes[0].1.to_string()).await;
    assert_eq!(status, 200, "{resp}");
    let id = resp["event_id"].as_str().expect("event_id").to_string();
    let e = alice.expect("event").await;
    assert_eq!(
        (e["channel"].as_str(), e["event"].as_str()),
        (Some("user:alice"), Some("note"))
    );
    assert_eq!(e["data"], json!({"n": 1}));
    assert_eq!(e["event_id"], id.as_str());

    let (status, resp) = post_raw(&node, "/api/broadcast", Some(API_KEY), routes[1].1.to_string()).await;
    assert_eq!(status, 200, "{resp}");
    let e = alice.expect("event").await;
    assert_eq!(
        (e["channel"].as_str(), e["event"].as_str()),
        (Some("broadcast"), Some("news"))
    );
    assert_eq!(e["event_id"], resp["event_id"]);
    assert_ne!(e["event_id"], id.as_str(), "every publish gets its own id");
    node.stop().await;
}

#[tokio::test]
async fn bad_channels_events_and_bodies_are_refused_with_400() {
    let node = Node::default().await;
    let (mut c, _) = node.connect(&token("u", &["*"], &[])).await;
    c.send(json!({"type": "subscribe", "channel": "x:*"})).await;
    c.expect("subscribed").await;

    let bad = [
        (
            json!({"channel": "a b", "event": "e"}).to_string(),
            "space in the channel",
        ),
        (
            json!({"channel": "x:*", "event": "e"}).to_string(),
            "publishing to a pattern",
        ),
        (json!({"channel": "", "event": "e"}).to_string(), "empty channel"),
        (json!({"channel": "x:1", "event": ""}).to_string(), "empty event"),
        (json!({"channel": "x:1"}).to_string(), "no event"),
        ("{\"channel\": \"x:1\", \"event\":".to_string(), "truncated JSON"),
        ("not json".to_string(), "not JSON at all"),
    ];
    for (body, why) in bad {
        let (status, resp) = post_raw(&node, "/api/publish", Some(API_KEY), body).await;
        assert_eq!(status, 400, "{why}: {resp}");
        assert_eq!(resp["error"], "bad_request", "{why}");
        assert!(resp["message"].as_str().is_some_and(|m| !m.is_empty()), "{why}: {resp}");
    }
    let (status, resp) = post_raw(&node, "/api/broadcast", Some(API_KEY), "[1, 2]").await;
    assert_eq!((status, resp["error"].as_str()), (400, Some("bad_request")), "{resp}");

    // None of them reached the pattern subscriber; a good publish does.
    node.publish("x:1", "ok", json!(null)).await;
    assert_eq!(c.expect("event").await["event"], "ok");
    node.stop().await;
}

#[tokio::test]
async fn a_body_over_max_publish_bytes_is_refused_with_413() {
    let node = Node::start(Config {
        max_publish_bytes: 1024,
        ..config()
    })
    .await;
    let (mut c, _) = node.connect(&token("u", &[], &[])).await;

    let body = |text_len: usize| json!({"channel": "user:u", "event": "big", "data": "x".repeat(text_len)}).to_string();
    let big = body(2000);
    assert!(big.len() > 1024);
    let (status, resp) = post_raw(&node, "/api/publish", Some(API_KEY), big).await;
    assert_eq!(status, 413, "{resp}");
    assert_eq!(resp["error"], "too_large");
    let (status, _) = post_raw(&node, "/api/broadcast", Some(API_KEY), body(2000)).await;
    assert_eq!(status, 413);

    let small = body(900);
    assert!(small.len() <= 1024);
    let (status, resp) = post_raw(&node, "/api/publish", Some(API_KEY), small).await;
    assert_eq!(status, 200, "a body under the limit passes: {resp}");
    let e = c.expect("event").await;
    assert_eq!(e["event"], "big");
    assert_eq!(e["data"].as_str().map(str::len), Some(900));
    node.stop().await;
}

#[tokio::test]
async fn without_an_api_key_configured_the_api_is_disabled() {
    let node = Node::start(Config {
        api_key: None,
        ..config()
    })
    .await;
    let publish = json!({"channel": "broadcast", "event": "e"}).to_string();
    for key in [None, Some(API_KEY), Some("anything")] {
        let (status, resp) = post_raw(&node, "/api/publish", key, publish.clone()).await;
        assert_eq!(
            (status, resp["error"].as_str()),
            (401, Some("unauthorized")),
            "{key:?}: {resp}"
        );
    }
    let (status, resp) = node.api_get("/api/stats").await;
    assert_eq!((status, resp["error"].as_str()), (401, Some("unauthorized")), "{resp}");
    let (status, _) = node.api_post("/api/users/u/disconnect", json!({})).await;
    assert_eq!(status, 401);

    // Sockets and the public endpoints still work.
    let (_c, w) = node.connect(&token("u", &[], &[])).await;
    assert_eq!(w["user_id"], "u");
    assert_eq!(get_public(&node, "/health").await.0, 200);
    node.stop().await;
}

#[tokio::test]
async fn disconnecting_a_user_closes_every_socket_of_theirs_with_4004() {
    let node = Node::default().await;
    let (mut alice1, _) = node.connect(&token("alice", &[], &[])).await;
    let (mut alice2, _) = node.connect(&token("alice", &[], &[])).await;
    let (mut bob, _) = node.connect(&token("bob", &[], &[])).await;

    let (status, resp) = node.api_post("/api/users/alice/disconnect", json!({})).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["disconnected"], 2);
    assert_eq!(resp["user_id"], "alice");
    for c in [&mut alice1, &mut alice2] {
        let (code, frames) = c.until_closed().await;
        assert_eq!(code, Some(4004), "frames before the close: {frames:?}");
    }

    // Bob is untouched.
    node.publish("broadcast", "still-here", json!(null)).await;
    assert_eq!(bob.expect("event").await["event"], "still-here");
    assert_eq!(bob.closed, None);

    // Alice has nothing left to disconnect; an unknown user neither.
    wait_until("alice's sockets are gone from presence", || async {
        node.api_get("/api/presence/users/alice").await.1["connections"] == json!([])
    })
    .await;
    let (status, resp) = node.api_post("/api/users/alice/disconnect", json!({})).await;
    assert_eq!((status, resp["disconnected"].as_u64()), (200, Some(0)), "{resp}");
    let (status, resp) = node.api_post("/api/users/nobody/disconnect", json!({})).await;
    assert_eq!((status, resp["disconnected"].as_u64()), (200, Some(0)), "{resp}");
    node.stop().await;
}

#[tokio::test]
async fn a_support_agent_watching_user_alice_is_not_one_of_alices_connections() {
    let node = Node::start(Config {
        max_connections_per_user: 1,
        ..config()
    })
    .await;
    let (mut agent, _) = node.connect(&token("support", &["user:alice"], &[])).await;
    agent.send(json!({"type": "subscribe", "channel": "user:alice"})).await;
    agent.expect("subscribed").await;

    // The per-user cap counts alice's own sockets only.
    let (mut alice, w) = node.connect(&token("alice", &[], &[])).await;
    let alice_id = w["connection_id"].as_str().unwrap().to_string();
    let (status, resp) = node.api_get("/api/presence/users/alice").await;
    assert_eq!(status, 200, "{resp}");
    let ids: Vec<&str> = resp["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["connection_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [alice_id.as_str()], "presence lists alice's socket only: {resp}");

    let (status, resp) = node.api_post("/api/users/alice/disconnect", json!({})).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["disconnected"], 1, "{resp}");
    assert_eq!(alice.until_closed().await.0, Some(4004));
    node.publish("user:alice", "still-watching", json!(null)).await;
    assert_eq!(agent.expect("event").await["event"], "still-watching");
    assert_eq!(agent.closed, None, "the agent was kicked with alice");
    node.stop().await;
}

#[tokio::test]
async fn disconnecting_one_connection_closes_only_that_socket() {
    let node = Node::default().await;
    let (mut first, w1) = node.connect(&token("alice", &[], &[])).await;
    let (mut second, _) = node.connect(&token("alice", &[], &[])).await;
    let id = w1["connection_id"].as_str().unwrap();

    let (status, resp) = node
        .api_post(&format!("/api/connections/{id}/disconnect"), json!({}))
        .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["disconnected"], 1);
    assert_eq!(resp["connection_id"], id);
    assert_eq!(first.until_closed().await.0, Some(4004));

    node.publish("user:alice", "for-the-rest", json!(null)).await;
    assert_eq!(second.expect("event").await["event"], "for-the-rest");

    let (status, resp) = node
        .api_post("/api/connections/no-such-connection/disconnect", json!({}))
        .await;
    assert_eq!(status, 404, "{resp}");
    assert_eq!(resp["error"], "not_found");
    wait_until("the kicked connection is unregistered", || async {
        node.api_post(&format!("/api/connections/{id}/disconnect"), json!({}))
            .await
            .0
            == 404
    })
    .await;
    node.stop().await;
}

#[tokio::test]
async fn presence_lists_a_users_connections_until_they_leave() {
    let node = Node::default().await;
    let (status, resp) = node.api_get("/api/presence/users/carol").await;
    assert_eq!(status, 200);
    assert_eq!(resp, json!({"user_id": "carol", "connections": []}));

    let before = now_s() * 1000;
    let (c1, w1) = node.connect(&token("carol", &[], &[])).await;
    let (c2, w2) = node.connect(&token("carol", &[], &[])).await;
    let (_dave, _) = node.connect(&token("dave", &[], &[])).await;
    let after = (now_s() + 1) * 1000;

    let (status, resp) = node.api_get("/api/presence/users/carol").await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["user_id"], "carol");
    let conns = resp["connections"].as_array().expect("connections");
    let mut ids: Vec<&str> = conns.iter().map(|c| c["connection_id"].as_str().unwrap()).collect();
    ids.sort();
    let mut want = vec![
        w1["connection_id"].as_str().unwrap(),
        w2["connection_id"].as_str().unwrap(),
    ];
    want.sort();
    assert_eq!(ids, want, "exactly carol's two sockets: {resp}");
    for c in conns {
        assert_eq!(c["node"], "test-node");
        let at = c["connected_at"].as_u64().expect("connected_at in ms");
        assert!(
            (before..=after).contains(&at),
            "connected_at {at} not in [{before}, {after}]"
        );
    }

    let gone = w1["connection_id"].clone();
    c1.close().await;
    wait_until("the closed socket leaves presence", || async {
        let conns = node.api_get("/api/presence/users/carol").await.1["connections"].clone();
        conns
            .as_array()
            .is_some_and(|a| a.len() == 1 && a[0]["connection_id"] != gone)
    })
    .await;
    c2.close().await;
    wait_until("carol is offline", || async {
        node.api_get("/api/presence/users/carol").await.1["connections"] == json!([])
    })
    .await;
    node.stop().await;
}

#[tokio::test]
async fn history_returns_the_last_events_or_those_after_an_id() {
    let node = Node::default().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(node.publish("room:1", "msg", json!({"n": n})).await);
    }
    node.publish("room:2", "elsewhere", json!(null)).await;

    let ns = |body: &Value| -> Vec<i64> {
        body["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["data"]["n"].as_i64().unwrap())
            .collect()
    };

    let (status, all) = node.api_get("/api/history/room:1").await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["channel"], "room:1");
    assert_eq!(all["recovered"], true);
    assert_eq!(ns(&all), vec![0, 1, 2, 3, 4], "oldest first, other channels left out");
    let e = &all["events"][4];
    assert_eq!(
        (e["type"].as_str(), e["channel"].as_str(), e["event"].as_str()),
        (Some("event"), Some("room:1"), Some("msg"))
    );
    assert_eq!(e["event_id"], ids[4].as_str());

    let (status, last) = node.api_get("/api/history/room:1?limit=2").await;
    assert_eq!(status, 200);
    assert_eq!(ns(&last), vec![3, 4], "the last two");

    let (status, since) = node.api_get(&format!("/api/history/room:1?since={}", ids[1])).await;
    assert_eq!(status, 200, "{since}");
    assert_eq!(ns(&since), vec![2, 3, 4], "only events after the id");
    assert_eq!(since["recovered"], true);
    let got: Vec<&str> = since["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids[2..].iter().map(String::as_str).collect::<Vec<_>>());

    let (status, since_last) = node.api_get(&format!("/api/history/room:1?since={}", ids[4])).await;
    assert_eq!(
        (status, since_last["events"].clone(), since_last["recovered"].clone()),
        (200, json!([]), json!(true))
    );

    let (status, empty) = node.api_get("/api/history/room:never").await;
    assert_eq!(
        (status, empty["events"].clone(), empty["recovered"].clone()),
        (200, json!([]), json!(true))
    );

    for bad in [
        "/api/history/room:1?since=yesterday",
        "/api/history/room:1?since=12-x",
        // A Redis Cluster deployment's id, on a node without one.
        "/api/history/room:1?since=3~12-0",
        "/api/history/a%20b",
        "/api/history/room:*",
    ] {
        let (status, resp) = node.api_get(bad).await;
        assert_eq!(
            (status, resp["error"].as_str()),
            (400, Some("bad_request")),
            "{bad}: {resp}"
        );
    }
    node.stop().await;
}

#[tokio::test]
async fn stats_count_the_open_sockets() {
    let node = Node::default().await;
    let count = |body: &Value| {
        (
            body["node"]["connections"].as_u64(),
            body["cluster"]["connections"].as_u64(),
        )
    };

    let (status, s) = node.api_get("/api/stats").await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(count(&s), (Some(0), Some(0)));
    assert_eq!(s["node"]["id"], "test-node");
    assert_eq!(s["node"]["draining"], false);

    let (a, _) = node.connect(&token("a", &[], &[])).await;
    let (_b, _) = node.connect(&token("b", &[], &[])).await;
    let (_c, _) = node.connect(&token("b", &[], &[])).await;
    let (_, s) = node.api_get("/api/stats").await;
    assert_eq!(count(&s), (Some(3), Some(3)), "{s}");

    a.close().await;
    wait_until("stats count the closed socket out", || async {
        count(&node.api_get("/api/stats").await.1) == (Some(2), Some(2))
    })
    .await;
    node.stop().await;
}

#[tokio::test]
async fn health_and_readiness_answer_without_a_key() {
    let node = Node::default().await;
    let (status, body) = get_public(&node, "/health").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["status"], "ok");

    let (status, body) = get_public(&node, "/ready").await;
    assert_eq!(status, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["draining"], false);
    node.stop().await;
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_move_with_traffic() {
    let node = Node::default().await;
    let r = node.http.get(node.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let ctype = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    let m = r.text().await.unwrap();
    for series in [
        "wsgw_connections",
        "wsgw_connections_opened_total",
        "wsgw_received_frames_total",
        "wsgw_sent_frames_total",
    ] {
        assert_eq!(metric_value(&m, series), Some(0.0), "{series} starts at 0");
    }
    assert!(m.contains("# TYPE wsgw_connections gauge"), "{m}");
    assert!(m.contains("# TYPE wsgw_delivery_duration_seconds histogram"), "{m}");

    // One refused token, one client that pings, receives three API publishes and leaves.
    let mut bad = Client::connect(&node.ws_url("token=not.a.jwt")).await;
    assert_eq!(bad.until_closed().await.0, Some(4001));
    let (mut c, _) = node.connect(&token("m", &[], &[])).await;
    wait_until("the open socket is counted", || async {
        metric_value(&node.metrics().await, "wsgw_connections") == Some(1.0)
    })
    .await;
    c.send(json!({"type": "ping", "ts": 1})).await;
    c.expect("pong").await;
    for n in 0..3 {
        node.publish("user:m", "tick", json!({"n": n})).await;
    }
    assert_eq!(c.events(3).await.len(), 3);
    c.close().await;

    wait_until("the closed socket is counted", || async {
        let m = node.metrics().await;
        metric_value(&m, "wsgw_connections") == Some(0.0)
            && metric_value(&m, "wsgw_connections_closed_total{reason=\"client_closed\"}") == Some(1.0)
    })
    .await;
    let m = node.metrics().await;
    let v = |series: &str| metric_value(&m, series).unwrap_or_else(|| panic!("{series} missing from:\n{m}"));
    assert_eq!(
        v("wsgw_connections_opened_total"),
        1.0,
        "the refused token was never opened"
    );
    assert_eq!(v("wsgw_auth_failures_total{reason=\"invalid\"}"), 1.0);
    assert_eq!(v("wsgw_publishes_total{source=\"api\"}"), 3.0);
    assert_eq!(v("wsgw_received_frames_total"), 1.0, "the ping");
    assert!(v("wsgw_sent_frames_total") >= 5.0, "welcome, pong and three events");
    assert!(v("wsgw_sent_bytes_total") > 0.0);
    assert_eq!(
        v("wsgw_delivery_duration_seconds_count"),
        3.0,
        "one observation per delivered event"
    );
    assert_eq!(v("wsgw_delivery_duration_seconds_bucket{le=\"+Inf\"}"), 3.0);
    assert_eq!(
        v("wsgw_delivery_duration_seconds_bucket{le=\"5\"}"),
        3.0,
        "delivered well within 5 s"
    );
    assert_eq!(v("wsgw_slow_consumer_closes_total"), 0.0);
    node.stop().await;
}

#[tokio::test]
async fn the_browser_client_is_served_and_the_demo_page_only_in_dev_mode() {
    let node = Node::default().await;
    let js = node.http.get(node.url("/wsgw.js")).send().await.unwrap();
    assert_eq!(js.status().as_u16(), 200);
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    // A page on another origin can `import` it.
    assert_eq!(js.headers()["access-control-allow-origin"], "*");
    assert!(js.text().await.unwrap().contains("export class WsgwClient"));
    assert_eq!(
        node.http.get(node.url("/")).send().await.unwrap().status().as_u16(),
        404,
        "no demo outside --dev"
    );
    assert_eq!(
        node.http
            .get(node.url("/dev/stats"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    node.stop().await;

    let node = Node::start(wsgw::Config { dev: true, ..config() }).await;
    let page = node.http.get(node.url("/")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("import { WsgwClient } from '/wsgw.js'"));
    let token = page
        .split("id=\"token\" class=\"wide\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let (_c, w) = node.connect(token).await;
    assert_eq!(w["user_id"], "dev-user", "the demo page's token works");
    let stats: serde_json::Value = node
        .http
        .get(node.url("/dev/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["connections"], 1);
    node.stop().await;
}
