//! Story: an app whose auth is a session cookie, not a JWT, plugs into wsgw through the backend
//! hooks (docs/backends.md, "Hooks"). A small real HTTP backend on 127.0.0.1 answers the hooks;
//! real WebSocket clients connect to a real gateway. The backend admits sockets by cookie with
//! grants, decides subscribes the grants do not cover, vets and rewrites client publishes, and
//! hears of every disconnect. When it is down, slow or failing, the gateway fails closed.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use common::*;
use parking_lot::Mutex;
use serde_json::{Value, json};
use wsgw::Config;

/// Every hook call the backend received: (path, body).
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(&'static str, Value)>>>);

impl Seen {
    fn calls(&self, path: &str) -> Vec<Value> {
        self.0
            .lock()
            .iter()
            .filter(|(p, _)| *p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// Waits (deadline: [`DEADLINE`]) until a call to `path` matches `pred`; returns its body.
    async fn wait_for(&self, path: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(b) = self.calls(path).into_iter().find(|b| pred(b)) {
                return b;
            }
            assert!(
                Instant::now() < deadline,
                "no {path} call matched: {:?}",
                self.calls(path)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn grants(user: &str, expires_at: i64) -> Value {
    json!({
        "user_id": user,
        "channels": ["room:*"],
        "publish": ["room:*"],
        "actions": [],
        "expires_at": expires_at,
    })
}

/// The connect hook: the cookie names the case.
async fn connect_hook(State(seen): State<Seen>, Json(body): Json<Value>) -> Response {
    seen.0.lock().push(("connect", body.clone()));
    let cookie = body["headers"]["cookie"].as_str().unwrap_or("").to_owned();
    let later = now_s() as i64 + 3600;
    if cookie.contains("session=alice") {
        Json(grants("alice", later)).into_response()
    } else if cookie.contains("session=slow") {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Json(grants("slow", later)).into_response()
    } else if cookie.contains("session=boom") {
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    } else if cookie.contains("session=badgrants") {
        Json(json!({"user_id": "alice", "channels": ["not a channel!"]})).into_response()
    } else if cookie.contains("session=expired") {
        Json(grants("alice", now_s() as i64 - 3600)).into_response()
    } else if cookie.contains("session=banned") {
        StatusCode::FORBIDDEN.into_response()
    } else {
        StatusCode::UNAUTHORIZED.into_response()
    }
}

/// The subscribe hook: the channel names the case.
async fn subscribe_hook(State(seen): State<Seen>, Json(body): Json<Value>) -> Response {
    seen.0.lock().push(("subscribe", body.clone()));
    match body["channel"].as_str().unwrap_or("") {
        "secret:ok" => Json(json!({"allow": true})).into_response(),
        "secret:403" => StatusCode::FORBIDDEN.into_response(),
        "secret:boom" => StatusCode::BAD_GATEWAY.into_response(),
        _ => Json(json!({"allow": false, "reason": "not in this room"})).into_response(),
    }
}

/// The publish hook: the event names the case.
async fn publish_hook(State(seen): State<Seen>, Json(body): Json<Value>) -> Response {
    seen.0.lock().push(("publish", body.clone()));
    match body["event"].as_str().unwrap_or("") {
        "plain" => Json(json!({"allow": true})).into_response(),
        "rewrite" => {
            Json(json!({"allow": true, "data": {"text": "[redacted]", "by": body["user_id"]}})).into_response()
        }
        "nope" => Json(json!({"allow": false, "reason": "no swearing"})).into_response(),
        "forbid" => StatusCode::FORBIDDEN.into_response(),
        "big" => Json(json!({"allow": true, "data": "x".repeat(5000)})).into_response(),
        // Over the 64 KiB answer cap: not read, a failed call.
        "huge" => Json(json!({"allow": true, "data": "x".repeat(70_000)})).into_response(),
        _ => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

async fn disconnect_hook(State(seen): State<Seen>, Json(body): Json<Value>) -> Response {
    seen.0.lock().push(("disconnect", body));
    StatusCode::NO_CONTENT.into_response()
}

/// The app's backend, on an ephemeral loopback port.
async fn start_backend() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .route("/connect", post(connect_hook))
        .route("/subscribe", post(subscribe_hook))
        .route("/publish", post(publish_hook))
        .route("/disconnect", post(disconnect_hook))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

/// A gateway with every hook pointed at `backend`, and a 500 ms hook timeout.
fn hooked_config(backend: SocketAddr) -> Config {
    Config {
        hook_connect_url: Some(format!("http://{backend}/connect")),
        hook_subscribe_url: Some(format!("http://{backend}/subscribe")),
        hook_publish_url: Some(format!("http://{backend}/publish")),
        hook_disconnect_url: Some(format!("http://{backend}/disconnect")),
        hook_timeout_ms: 500,
        max_message_bytes: 4096,
        ..config()
    }
}

/// Connects without a token, with these headers, and returns the client.
async fn connect_cookie(node: &Node, cookie: &str) -> Client {
    let headers = [("cookie", cookie), ("user-agent", "hooks-test/1.0")];
    Client::connect_with(&node.ws_url(""), &headers).await.0
}

/// The one error frame and the close code a refused upgrade gets.
async fn refused(mut c: Client) -> (Value, Option<u16>) {
    let (code, frames) = c.until_closed().await;
    assert_eq!(frames.len(), 1, "one error frame, then the close: {frames:?}");
    (frames[0].clone(), code)
}

fn metric(text: &str, hook: &str, outcome: &str) -> f64 {
    let series = format!("wsgw_hook_requests_total{{hook=\"{hook}\",outcome=\"{outcome}\"}}");
    metric_value(text, &series).unwrap_or(0.0)
}

#[tokio::test]
async fn a_cookie_admits_a_socket_with_the_hooks_grants_and_they_work_like_a_tokens() {
    let (backend, seen) = start_backend().await;
    let node = Node::start(hooked_config(backend)).await;

    let mut alice = connect_cookie(&node, "theme=dark; session=alice").await;
    let w = alice.expect("welcome").await;
    assert_eq!(w["user_id"], "alice");
    let call = seen.calls("connect").pop().expect("the connect hook was asked");
    assert_eq!(
        call,
        json!({
            "headers": {"cookie": "theme=dark; session=alice", "user-agent": "hooks-test/1.0"},
            "client_addr": "127.0.0.1",
        }),
        "the present headers, lower-cased, and the client address"
    );

    // The grants are the socket's permissions: room:* to subscribe and publish.
    alice
        .send(json!({"type": "subscribe", "channel": "room:1", "request_id": 1}))
        .await;
    assert_eq!(alice.expect("subscribed").await["channel"], "room:1");
    alice
        .send(json!({"type": "publish", "channel": "room:1", "event": "plain", "data": {"n": 1}, "request_id": 2}))
        .await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let f = alice.next().await.expect("ack and event");
        if f["type"] != "ping" {
            got.push(f);
        }
    }
    let event = got.iter().find(|f| f["type"] == "event").expect("own event delivered");
    assert_eq!(event["data"], json!({"n": 1}));
    assert!(got.iter().any(|f| f["type"] == "ack" && f["request_id"] == 2));
    // Publishing outside the grants is still forbidden, without asking the publish hook.
    let before = seen.calls("publish").len();
    alice
        .send(json!({"type": "publish", "channel": "lobby", "event": "plain", "data": 1, "request_id": 3}))
        .await;
    let err = alice.expect("error").await;
    assert_eq!(
        (err["code"].as_str(), err["request_id"].as_i64()),
        (Some("forbidden"), Some(3))
    );
    assert_eq!(seen.calls("publish").len(), before);

    // A socket with a token never asks the connect hook.
    let calls = seen.calls("connect").len();
    let (_t, w) = node.connect(&token("tok", &[], &[])).await;
    assert_eq!(w["user_id"], "tok");
    assert_eq!(seen.calls("connect").len(), calls);

    let m = node.metrics().await;
    assert_eq!(metric(&m, "connect", "ok"), 1.0);
    assert!(m.contains("wsgw_hook_duration_seconds_bucket{hook=\"connect\""), "{m}");
    assert!(
        m.contains("wsgw_hook_duration_seconds_count{hook=\"publish\"} 1"),
        "{m}"
    );
    node.stop().await;
}

#[tokio::test]
async fn a_refusing_connect_hook_means_unauthorized_and_4001_and_bad_grants_are_refused_like_a_bad_token() {
    let (backend, seen) = start_backend().await;
    let node = Node::start(hooked_config(backend)).await;

    for cookie in ["session=nobody", "session=banned", "session=badgrants"] {
        let (err, code) = refused(connect_cookie(&node, cookie).await).await;
        assert_eq!(err["code"], "unauthorized", "{cookie}: {err}");
        assert_eq!(code, Some(4001), "{cookie}");
    }
    // No cookie at all: still no token, so the hook decides (and refuses).
    let (err, code) = refused(Client::connect(&node.ws_url("")).await).await;
    assert_eq!((err["code"].as_str(), code), (Some("unauthorized"), Some(4001)));
    assert_eq!(seen.calls("connect").last().unwrap()["headers"], json!({}));
    // Grants that expired are an expired token.
    let (err, code) = refused(connect_cookie(&node, "session=expired").await).await;
    assert_eq!((err["code"].as_str(), code), (Some("token_expired"), Some(4003)));
    // A token that is present but bad is not the hook's business: refused as today.
    let calls = seen.calls("connect").len();
    let (err, code) = refused(Client::connect(&node.ws_url("token=not.a.jwt")).await).await;
    assert_eq!((err["code"].as_str(), code), (Some("unauthorized"), Some(4001)));
    assert_eq!(seen.calls("connect").len(), calls);

    let m = node.metrics().await;
    assert_eq!(metric(&m, "connect", "deny"), 4.0, "401, 403, no cookie, expired");
    assert_eq!(metric(&m, "connect", "bad_answer"), 1.0);
    assert_eq!(metric_value(&m, "wsgw_connections"), Some(0.0));
    node.stop().await;
}

#[tokio::test]
async fn a_connect_hook_that_is_down_slow_or_failing_refuses_with_unavailable_and_1013() {
    let (backend, _seen) = start_backend().await;
    // Slow (past the 500 ms timeout) and 500.
    let node = Node::start(hooked_config(backend)).await;
    let started = Instant::now();
    let (err, code) = refused(connect_cookie(&node, "session=slow").await).await;
    assert_eq!((err["code"].as_str(), code), (Some("unavailable"), Some(1013)));
    let waited = started.elapsed();
    assert!(
        (Duration::from_millis(500)..Duration::from_secs(3)).contains(&waited),
        "refused at the timeout, not at the answer: {waited:?}"
    );
    let (err, code) = refused(connect_cookie(&node, "session=boom").await).await;
    assert_eq!((err["code"].as_str(), code), (Some("unavailable"), Some(1013)));
    let m = node.metrics().await;
    assert_eq!(metric(&m, "connect", "timeout"), 1.0);
    assert_eq!(metric(&m, "connect", "server_error"), 1.0);
    node.stop().await;

    // Down: nothing listens on the hook's port.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let node = Node::start(hooked_config(dead_addr)).await;
    let (err, code) = refused(connect_cookie(&node, "session=alice").await).await;
    assert_eq!((err["code"].as_str(), code), (Some("unavailable"), Some(1013)));
    assert_eq!(metric(&node.metrics().await, "connect", "unreachable"), 1.0);
    node.stop().await;

    // A slow hook holds up only the socket it is about: with a 2 s timeout, others connect,
    // subscribe and get events meanwhile.
    let node = Node::start(Config {
        hook_timeout_ms: 2000,
        ..hooked_config(backend)
    })
    .await;
    let started = Instant::now();
    let mut waiting = Vec::new();
    for _ in 0..3 {
        waiting.push(connect_cookie(&node, "session=slow").await);
    }
    let (mut other, _) = node.connect(&token("tom", &["room:*"], &[])).await;
    other.send(json!({"type": "subscribe", "channel": "room:2"})).await;
    other.expect("subscribed").await;
    node.publish("room:2", "tick", json!(1)).await;
    other.expect("event").await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "another socket waited for the slow hook: {took:?}"
    );
    for mut c in waiting {
        assert!(
            c.next_within(Duration::ZERO).await.is_err(),
            "still waiting for its hook"
        );
    }
    drop(other);
    node.stop().await;

    // Without the setting, a socket without a token gets today's answer.
    let node = Node::default().await;
    let (err, code) = refused(connect_cookie(&node, "session=alice").await).await;
    assert_eq!((err["code"].as_str(), code), (Some("unauthorized"), Some(4001)));
    assert!(!node.metrics().await.contains("wsgw_hook_requests_total{"));
    node.stop().await;
}

#[tokio::test]
async fn the_subscribe_hook_decides_what_the_grants_do_not_cover() {
    let (backend, seen) = start_backend().await;
    let node = Node::start(hooked_config(backend)).await;
    let (mut c, w) = node.connect(&token("sam", &["room:*"], &[])).await;
    let conn_id = w["connection_id"].clone();

    c.send(json!({"type": "subscribe", "channel": "secret:ok", "request_id": "a"}))
        .await;
    assert_eq!(c.expect("subscribed").await["request_id"], "a");
    assert_eq!(
        seen.calls("subscribe"),
        vec![json!({"user_id": "sam", "connection_id": conn_id, "channel": "secret:ok"})]
    );
    // The subscription is real: an event on it arrives.
    node.publish("secret:ok", "hello", json!(1)).await;
    assert_eq!(c.expect("event").await["channel"], "secret:ok");

    for (channel, code) in [
        ("secret:no", "forbidden"),
        ("secret:403", "forbidden"),
        ("secret:boom", "unavailable"),
    ] {
        c.send(json!({"type": "subscribe", "channel": channel, "request_id": channel}))
            .await;
        let err = c.expect("error").await;
        assert_eq!(
            (err["code"].as_str(), err["request_id"].as_str()),
            (Some(code), Some(channel))
        );
    }
    let calls = seen.calls("subscribe").len();
    assert_eq!(calls, 4);
    // Granted channels, reserved channels and others' private channels never reach the hook.
    c.send(json!({"type": "subscribe", "channel": "room:1", "request_id": 1}))
        .await;
    assert_eq!(c.expect("subscribed").await["channel"], "room:1");
    for channel in ["control", "user:bob", "connection:x"] {
        c.send(json!({"type": "subscribe", "channel": channel, "request_id": 2}))
            .await;
        assert_eq!(c.expect("error").await["code"], "forbidden", "{channel}");
    }
    assert_eq!(seen.calls("subscribe").len(), calls);
    let m = node.metrics().await;
    assert_eq!(metric(&m, "subscribe", "ok"), 1.0);
    assert_eq!(metric(&m, "subscribe", "deny"), 2.0);
    assert_eq!(metric(&m, "subscribe", "server_error"), 1.0);
    node.stop().await;
}

#[tokio::test]
async fn history_and_presence_are_allowed_where_a_subscribe_is_hook_included() {
    let (backend, seen) = start_backend().await;
    let cfg = Config {
        presence_channels: vec!["secret:*".into()],
        ..hooked_config(backend)
    };
    let node = Node::start(cfg).await;
    let id = node.publish("secret:ok", "old", json!(1)).await;
    let (mut c, _) = node.connect(&token("sam", &["room:*"], &[])).await;

    // Not subscribed: the hook is asked, and its yes lets the client read.
    c.send(json!({"type": "history", "channel": "secret:ok", "request_id": "h1"}))
        .await;
    let h = c.expect("history").await;
    assert_eq!(
        (h["request_id"].as_str(), h["events"][0]["event_id"].as_str()),
        (Some("h1"), Some(id.as_str()))
    );
    c.send(json!({"type": "presence", "channel": "secret:ok", "request_id": "p1"}))
        .await;
    assert_eq!(c.expect("presence").await["request_id"], "p1");
    assert_eq!(seen.calls("subscribe").len(), 2);

    // The hook's no (with its reason) and its failure, for both frames.
    for ty in ["history", "presence"] {
        c.send(json!({"type": ty, "channel": "secret:no", "request_id": ty}))
            .await;
        let err = c.expect("error").await;
        assert_eq!(
            (err["code"].as_str(), err["message"].as_str()),
            (Some("forbidden"), Some("not in this room"))
        );
        c.send(json!({"type": ty, "channel": "secret:boom", "request_id": ty}))
            .await;
        assert_eq!(c.expect("error").await["code"], "unavailable");
    }
    assert_eq!(seen.calls("subscribe").len(), 6);

    // Subscribed through the hook: reading the channel asks it no more.
    c.send(json!({"type": "subscribe", "channel": "secret:ok", "request_id": "s"}))
        .await;
    assert_eq!(c.expect("subscribed").await["request_id"], "s");
    assert_eq!(c.expect("join").await["user_id"], "sam");
    c.send(json!({"type": "history", "channel": "secret:ok", "request_id": "h2"}))
        .await;
    assert_eq!(c.expect("history").await["request_id"], "h2");
    c.send(json!({"type": "presence", "channel": "secret:ok", "request_id": "p2"}))
        .await;
    assert_eq!(c.expect("presence").await["clients"][0]["user_id"], "sam");
    assert_eq!(seen.calls("subscribe").len(), 7);

    // Others' private channels never reach the hook.
    c.send(json!({"type": "history", "channel": "user:bob", "request_id": "x"}))
        .await;
    assert_eq!(c.expect("error").await["code"], "forbidden");
    assert_eq!(seen.calls("subscribe").len(), 7);
    node.stop().await;
}

#[tokio::test]
async fn the_publish_hook_passes_rewrites_or_refuses_each_client_publish() {
    let (backend, seen) = start_backend().await;
    let node = Node::start(hooked_config(backend)).await;
    let (mut publisher, w) = node.connect(&token("pat", &[], &["room:*"])).await;
    let conn_id = w["connection_id"].clone();
    let (mut listener, _) = node.connect(&token("lin", &["room:*"], &[])).await;
    listener.send(json!({"type": "subscribe", "channel": "room:1"})).await;
    listener.expect("subscribed").await;

    let publish = |event: &str, rid: u64| json!({"type": "publish", "channel": "room:1", "event": event, "data": {"text": "hi"}, "request_id": rid});
    publisher.send(publish("plain", 1)).await;
    assert_eq!(publisher.expect("ack").await["request_id"], 1);
    let e = listener.expect("event").await;
    assert_eq!(
        (e["event"].as_str(), &e["data"]),
        (Some("plain"), &json!({"text": "hi"}))
    );
    assert_eq!(
        seen.calls("publish")[0],
        json!({"user_id": "pat", "connection_id": conn_id, "channel": "room:1", "event": "plain", "data": {"text": "hi"}})
    );

    publisher.send(publish("rewrite", 2)).await;
    assert_eq!(publisher.expect("ack").await["request_id"], 2);
    let e = listener.expect("event").await;
    assert_eq!(
        e["data"],
        json!({"text": "[redacted]", "by": "pat"}),
        "the hook's data replaces the client's"
    );

    for (event, rid, code) in [
        ("nope", 3, "forbidden"),
        ("forbid", 4, "forbidden"),
        ("big", 5, "too_large"),
        ("unavailable", 6, "unavailable"),
        ("huge", 8, "unavailable"),
    ] {
        publisher.send(publish(event, rid)).await;
        let err = publisher.expect("error").await;
        assert_eq!(
            (err["code"].as_str(), err["request_id"].as_u64()),
            (Some(code), Some(rid)),
            "{event}"
        );
        if event == "nope" {
            assert_eq!(err["message"], "no swearing", "the hook's reason is passed on");
        }
    }
    // None of the refused publishes was delivered: the next event the listener sees is this one.
    publisher.send(publish("plain", 7)).await;
    assert_eq!(publisher.expect("ack").await["request_id"], 7);
    let e = listener.expect("event").await;
    assert_eq!(e["event"], "plain");
    let m = node.metrics().await;
    assert_eq!(
        metric(&m, "publish", "ok"),
        4.0,
        "plain, rewrite, big (allowed, then too large), plain"
    );
    assert_eq!(metric(&m, "publish", "deny"), 2.0);
    assert_eq!(metric(&m, "publish", "server_error"), 1.0);
    assert_eq!(metric(&m, "publish", "bad_answer"), 1.0, "the answer over 64 KiB");
    node.stop().await;
}

#[tokio::test]
async fn the_disconnect_hook_hears_of_each_close_within_5_s() {
    let (backend, seen) = start_backend().await;
    let node = Node::start(hooked_config(backend)).await;
    let (a, wa) = node.connect(&token("ann", &[], &[])).await;
    let (mut b, wb) = node.connect(&token("bob", &[], &[])).await;
    let (mut k, wk) = node.connect(&token("kim", &[], &[])).await;
    let ids = [&wa, &wb, &wk].map(|w| w["connection_id"].as_str().unwrap().to_owned());

    let closed_at = Instant::now();
    a.close().await;
    b.ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: 4100.into(),
        reason: "moving on".into(),
    }))
    .await
    .unwrap();
    let (status, _) = node
        .api_post(&format!("/api/connections/{}/disconnect", ids[2]), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(k.until_closed().await.0, Some(4004));
    drop(b);

    let mut reports = Vec::new();
    for (id, user, code) in [(&ids[0], "ann", 1000), (&ids[1], "bob", 4100), (&ids[2], "kim", 4004)] {
        let batch = seen
            .wait_for("disconnect", |b| {
                b["disconnects"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|r| r["connection_id"] == **id))
            })
            .await;
        assert_eq!(batch["node"], "test-node");
        let report = batch["disconnects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["connection_id"] == **id)
            .unwrap()
            .clone();
        assert_eq!(report, json!({"connection_id": id, "user_id": user, "code": code}));
        reports.push(report);
    }
    assert!(closed_at.elapsed() < Duration::from_secs(5), "told within 5 s");
    assert!(metric(&node.metrics().await, "disconnect", "ok") >= 1.0);

    // A node that stops sends what is queued before it returns: the drain's 1012 too.
    let (mut d, wd) = node.connect(&token("dee", &[], &[])).await;
    let reader = tokio::spawn(async move { d.until_closed().await.0 });
    node.stop().await;
    assert_eq!(reader.await.unwrap(), Some(1012));
    let id = wd["connection_id"].clone();
    let last = seen.calls("disconnect");
    let report = last
        .iter()
        .flat_map(|b| b["disconnects"].as_array().unwrap().iter())
        .find(|r| r["connection_id"] == id);
    assert_eq!(
        report,
        Some(&json!({"connection_id": id, "user_id": "dee", "code": 1012})),
        "sent before stop returned"
    );
}
