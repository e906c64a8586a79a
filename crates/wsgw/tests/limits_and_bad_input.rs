//! Bad input and limits: error frames, close codes, and the node staying healthy for others.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use wsgw::Config;

#[tokio::test]
async fn ping_malformed_json_and_unknown_types_get_answers_and_the_socket_stays_open() {
    let node = Node::default().await;
    let (mut c, _) = node.connect(&token("u", &[], &[])).await;
    c.send(json!({"type": "ping", "ts": 123})).await;
    assert_eq!(c.expect("pong").await["ts"], 123);

    c.send_text("{not json").await;
    let e = c.expect("error").await;
    assert_eq!(e["code"], "bad_request");
    assert!(e["message"].as_str().unwrap().contains("malformed JSON"), "{e}");

    c.send(json!({"type": "dance", "request_id": "d1"})).await;
    let e = c.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["request_id"].as_str()),
        (Some("bad_request"), Some("d1"))
    );
    assert!(e["message"].as_str().unwrap().contains("unknown frame type"));

    c.send(json!({"type": "subscribe"})).await;
    assert_eq!(c.expect("error").await["code"], "bad_request", "missing channel");
    c.send(json!({"type": "subscribe", "channel": "bad channel!"})).await;
    assert_eq!(c.expect("error").await["code"], "bad_request", "bad channel name");
    c.send(json!([1, 2, 3])).await;
    assert_eq!(c.expect("error").await["code"], "bad_request", "not an object");
    c.ws.send(tokio_tungstenite::tungstenite::Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(c.expect("error").await["code"], "bad_request", "binary frame");

    // still alive and delivering
    node.publish("user:u", "still-here", json!(null)).await;
    assert_eq!(c.expect("event").await["event"], "still-here");
    node.stop().await;
}

use futures_util::SinkExt;

#[tokio::test]
async fn an_oversized_frame_gets_too_large_and_close_1009_without_hurting_others() {
    let node = Node::start(Config {
        max_message_bytes: 1024,
        ..config()
    })
    .await;
    let (mut big, _) = node.connect(&token("big", &[], &[])).await;
    let (mut bystander, _) = node.connect(&token("ok", &[], &[])).await;
    let payload = json!({"type": "ping", "ts": "x".repeat(5000)});
    big.send(payload).await;
    let (code, frames) = big.until_closed().await;
    assert_eq!(code, Some(1009));
    assert!(
        frames.iter().any(|f| f["type"] == "error" && f["code"] == "too_large"),
        "{frames:?}"
    );

    node.publish("broadcast", "after", json!(null)).await;
    assert_eq!(bystander.expect("event").await["event"], "after");
    node.stop().await;
}

#[tokio::test]
async fn a_flooding_client_is_rate_limited_then_closed_1008_while_others_are_served() {
    let cfg = Config {
        rate_limit_per_s: 5,
        rate_limit_burst: 5,
        rate_limit_strikes: 3,
        ..config()
    };
    let node = Node::start(cfg).await;
    let (mut flood, _) = node.connect(&token("f", &[], &[])).await;
    let (mut calm, _) = node.connect(&token("c", &[], &[])).await;
    for i in 0..20 {
        flood.send(json!({"type": "ping", "ts": i})).await;
    }
    let (code, frames) = flood.until_closed().await;
    assert_eq!(code, Some(1008));
    let pongs = frames.iter().filter(|f| f["type"] == "pong").count();
    let limited = frames
        .iter()
        .filter(|f| f["type"] == "error" && f["code"] == "rate_limited")
        .count();
    assert_eq!(pongs, 5, "the burst of 5 is served: {frames:?}");
    assert_eq!(limited, 3, "three strikes, then the close: {frames:?}");

    calm.send(json!({"type": "ping", "ts": 1})).await;
    assert_eq!(calm.expect("pong").await["ts"], 1);
    let m = node.metrics().await;
    assert_eq!(metric_value(&m, "wsgw_rate_limited_frames_total"), Some(3.0));
    node.stop().await;
}

#[tokio::test]
async fn a_full_node_refuses_with_1013_and_a_user_cap_with_1008() {
    let node = Node::start(Config {
        max_connections: 2,
        max_connections_per_user: 1,
        ..config()
    })
    .await;
    let (_a, _) = node.connect(&token("a", &[], &[])).await;

    let mut again = Client::connect(&node.ws_url(&format!("token={}", token("a", &[], &[])))).await;
    let (code, frames) = again.until_closed().await;
    assert_eq!(code, Some(1008), "second socket of user a: {frames:?}");
    assert_eq!(frames[0]["code"], "forbidden");

    let (b, _) = node.connect(&token("b", &[], &[])).await;
    let mut third = Client::connect(&node.ws_url(&format!("token={}", token("c", &[], &[])))).await;
    let (code, frames) = third.until_closed().await;
    assert_eq!(code, Some(1013), "node full: {frames:?}");
    assert_eq!(frames[0]["type"], "error");

    // a slot frees when someone leaves
    b.close().await;
    let (_c, w) = node.connect(&token("c", &[], &[])).await;
    assert_eq!(w["user_id"], "c");
    let m = node.metrics().await;
    assert_eq!(metric_value(&m, "wsgw_rejected_full_total"), Some(1.0));
    node.stop().await;
}

#[tokio::test]
async fn the_server_pings_and_closes_a_silent_client_with_4000() {
    let node = Node::start(Config {
        heartbeat_interval_ms: 100,
        heartbeat_timeout_ms: 400,
        ..config()
    })
    .await;
    let (mut silent, w) = node.connect(&token("s", &[], &[])).await;
    assert_eq!(w["heartbeat"]["interval_ms"], 100);
    let (mut lively, _) = node.connect(&token("l", &[], &[])).await;

    // the lively client answers every ping; the silent one only reads
    let lively_task = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        while started.elapsed() < Duration::from_millis(1200) {
            if let Some(f) = lively.next().await
                && f["type"] == "ping"
            {
                assert!(f["ts"].is_u64());
                lively.send(json!({"type": "pong"})).await;
            }
        }
        lively
    });
    let (code, frames) = silent.until_closed().await;
    assert_eq!(code, Some(4000));
    assert!(
        frames.iter().any(|f| f["type"] == "ping"),
        "pings came before the close"
    );
    let mut lively = lively_task.await.unwrap();
    assert!(lively.closed.is_none(), "a client that answers stays connected");
    lively.send(json!({"type": "ping", "ts": 5})).await;
    assert_eq!(lively.expect("pong").await["ts"], 5);
    node.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_4008_and_others_keep_receiving() {
    let node = Node::start(Config {
        send_queue: 16,
        ..config()
    })
    .await;
    let (mut slow, _) = node.connect(&token("slow", &[], &[])).await;
    let (mut fast, _) = node.connect(&token("fast", &[], &[])).await;
    // `fast` reads concurrently; `slow` reads nothing until the gateway has given up on it.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            let e = fast.expect("event").await;
            if e["event"] == "end" {
                return got;
            }
            got.push(e["data"]["i"].as_i64().unwrap());
        }
    });
    let big = "x".repeat(60_000);
    let mut published = 0;
    loop {
        node.publish("broadcast", "bulk", json!({"i": published, "pad": big}))
            .await;
        published += 1;
        let m = node.metrics().await;
        if metric_value(&m, "wsgw_slow_consumer_closes_total") == Some(1.0) {
            break;
        }
        assert!(published < 2000, "the slow client was never cut off");
    }
    node.publish("broadcast", "end", json!(null)).await;
    let ids = reader.await.unwrap();
    assert_eq!(
        ids,
        (0..published as i64).collect::<Vec<_>>(),
        "the fast client got everything in order"
    );

    let (code, frames) = slow.until_closed().await;
    assert_eq!(code, Some(4008));
    assert!(
        frames.len() < published,
        "the slow client did not get everything: it must reconnect"
    );
    node.stop().await;
}

#[tokio::test]
async fn refresh_extends_a_socket_past_its_first_token_and_expiry_closes_4003() {
    let node = Node::start(Config {
        jwt_leeway_s: 0,
        heartbeat_interval_ms: 100,
        heartbeat_timeout_ms: 5000,
        ..config()
    })
    .await;
    let short = wsgw::auth::sign_hs256(SECRET, "r", &["doc:*"], &[], Some(now_s() + 2));
    let (mut c, _) = node.connect(&short).await;
    c.send(json!({"type": "subscribe", "channel": "doc:1"})).await;
    c.expect("subscribed").await;
    // the new token no longer allows doc:*, only note:*
    let longer = wsgw::auth::sign_hs256(SECRET, "r", &["note:*"], &[], Some(now_s() + 3600));
    c.send(json!({"type": "refresh", "token": longer, "request_id": "t"}))
        .await;
    let un = c.expect("unsubscribed").await;
    assert_eq!(un["channel"], "doc:1");
    assert_eq!(c.expect("ack").await["request_id"], "t");

    // outlive the first token
    let mut expired = Client::connect(&node.ws_url(&format!("token={short}"))).await;
    expired.expect("welcome").await;
    let (code, frames) = expired.until_closed().await;
    assert_eq!(code, Some(4003), "a socket whose token lapses is closed");
    assert!(frames.iter().any(|f| f["code"] == "token_expired"));
    c.send(json!({"type": "ping", "ts": 1})).await;
    assert_eq!(c.expect("pong").await["ts"], 1, "the refreshed socket is still open");

    // a bad refresh closes 4001
    c.send(json!({"type": "refresh", "token": "garbage"})).await;
    let (code, frames) = c.until_closed().await;
    assert_eq!(code, Some(4001));
    assert_eq!(frames.last().unwrap()["code"], "unauthorized");
    node.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_per_address_cap_counts_real_clients() {
    let node = Node::start(Config {
        trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
        max_connections_per_ip: 1,
        ..config()
    })
    .await;
    let url = node.ws_url(&format!("token={}", token("a", &[], &[])));
    let (mut first, _) = Client::connect_with(&url, &[("x-forwarded-for", "198.51.100.1")]).await;
    first.expect("welcome").await;
    let (mut other_client, _) = Client::connect_with(&url, &[("x-forwarded-for", "198.51.100.2")]).await;
    other_client.expect("welcome").await;
    let (mut same_client, _) = Client::connect_with(&url, &[("x-forwarded-for", "198.51.100.1")]).await;
    let (code, frames) = same_client.until_closed().await;
    assert_eq!(code, Some(1008), "{frames:?}");
    assert!(
        frames[0]["message"].as_str().unwrap().contains("198.51.100.1"),
        "{frames:?}"
    );
    // A forged first hop does not help: the proxy appended the real address last.
    let (mut forged, _) = Client::connect_with(&url, &[("x-forwarded-for", "10.9.9.9, 198.51.100.1")]).await;
    assert_eq!(forged.until_closed().await.0, Some(1008));
    node.stop().await;

    // Without trust the header is ignored: every socket here comes from 127.0.0.1.
    let node = Node::start(Config {
        max_connections_per_ip: 1,
        ..config()
    })
    .await;
    let url = node.ws_url(&format!("token={}", token("a", &[], &[])));
    let (mut one, _) = Client::connect_with(&url, &[("x-forwarded-for", "198.51.100.1")]).await;
    one.expect("welcome").await;
    let (mut two, _) = Client::connect_with(&url, &[("x-forwarded-for", "198.51.100.2")]).await;
    assert_eq!(two.until_closed().await.0, Some(1008));
    node.stop().await;
}

#[tokio::test]
async fn echoed_values_are_capped_and_rate_limited_errors_carry_the_request_id() {
    let node = Node::default().await;
    let (mut c, _) = node.connect(&token("u", &["news"], &[])).await;
    // 256 bytes of JSON text (254 characters and two quotes) is echoed.
    let ok_id = "i".repeat(254);
    c.send(json!({"type": "subscribe", "channel": "news", "request_id": ok_id}))
        .await;
    assert_eq!(c.expect("subscribed").await["request_id"], ok_id.as_str());
    // 257 bytes is refused and not echoed, on a valid frame and on an invalid one alike.
    let long_id = "i".repeat(255);
    c.send(json!({"type": "subscribe", "channel": "news", "request_id": long_id}))
        .await;
    let e = c.expect("error").await;
    assert_eq!(e["code"], "bad_request", "{e}");
    assert!(e.get("request_id").is_none_or(Value::is_null), "not echoed: {e}");
    c.send(json!({"type": "dance", "request_id": long_id})).await;
    let e = c.expect("error").await;
    assert_eq!(e["code"], "bad_request", "{e}");
    assert!(e.get("request_id").is_none_or(Value::is_null), "not echoed: {e}");
    // A ping ts of 64 bytes is echoed, 65 is refused.
    let ts = "t".repeat(62);
    c.send(json!({"type": "ping", "ts": ts})).await;
    assert_eq!(c.expect("pong").await["ts"], ts.as_str());
    c.send(json!({"type": "ping", "ts": "t".repeat(63)})).await;
    let e = c.expect("error").await;
    assert_eq!(e["code"], "bad_request", "{e}");
    assert!(!e.to_string().contains(&"t".repeat(63)), "not echoed: {e}");
    node.stop().await;

    let node = Node::start(Config {
        rate_limit_per_s: 1,
        rate_limit_burst: 1,
        rate_limit_strikes: 100,
        ..config()
    })
    .await;
    let (mut c, _) = node.connect(&token("u", &["news"], &[])).await;
    c.send(json!({"type": "ping", "ts": 1})).await;
    c.send(json!({"type": "subscribe", "channel": "news", "request_id": "r2"}))
        .await;
    c.send(json!({"type": "unsubscribe", "channel": "news", "request_id": {"n": 3}}))
        .await;
    assert_eq!(c.expect("pong").await["ts"], 1);
    let e = c.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), &e["request_id"]),
        (Some("rate_limited"), &json!("r2"))
    );
    let e = c.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), &e["request_id"]),
        (Some("rate_limited"), &json!({"n": 3}))
    );
    node.stop().await;
}

#[tokio::test]
async fn patterns_are_capped_per_socket_and_per_node() {
    let node = Node::start(Config {
        max_patterns: 2,
        max_patterns_per_node: 3,
        ..config()
    })
    .await;
    let (mut a, _) = node.connect(&token("a", &["*"], &[])).await;
    let (mut b, _) = node.connect(&token("b", &["*"], &[])).await;
    for (i, p) in ["p1:*", "p2:*"].iter().enumerate() {
        a.send(json!({"type": "subscribe", "channel": p, "request_id": i}))
            .await;
        assert_eq!(a.expect("subscribed").await["channel"], *p);
    }
    // A third pattern on one socket is over WSGW_MAX_PATTERNS; a plain topic still fits.
    a.send(json!({"type": "subscribe", "channel": "p3:*", "request_id": "a3"}))
        .await;
    let e = a.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["request_id"].as_str()),
        (Some("bad_request"), Some("a3"))
    );
    a.send(json!({"type": "subscribe", "channel": "plain"})).await;
    assert_eq!(a.expect("subscribed").await["channel"], "plain");
    // The node holds 2 distinct patterns: one more fits, a fourth does not, a known one does.
    b.send(json!({"type": "subscribe", "channel": "p3:*"})).await;
    assert_eq!(b.expect("subscribed").await["channel"], "p3:*");
    b.send(json!({"type": "subscribe", "channel": "p4:*", "request_id": "b4"}))
        .await;
    let e = b.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["request_id"].as_str()),
        (Some("bad_request"), Some("b4"))
    );
    b.send(json!({"type": "subscribe", "channel": "p1:*"})).await;
    assert_eq!(b.expect("subscribed").await["channel"], "p1:*");
    // `*` crosses `:`.
    node.publish("p1:x:y", "deep", json!(null)).await;
    assert_eq!(a.expect("event").await["event"], "deep");
    node.stop().await;
}

#[tokio::test]
async fn client_publish_volume_is_limited_in_bytes_apart_from_the_frame_rate() {
    let node = Node::start(Config {
        publish_bytes_per_s: 1000,
        ..config()
    })
    .await;
    let (mut c, _) = node.connect(&token("u", &[], &["chat"])).await;
    let data = "d".repeat(600);
    c.send(json!({"type": "publish", "channel": "chat", "event": "e", "data": data, "request_id": 1}))
        .await;
    assert_eq!(c.expect("ack").await["request_id"], 1);
    // Far under the frame rate limit, but over 1000 bytes in the second.
    c.send(json!({"type": "publish", "channel": "chat", "event": "e", "data": data, "request_id": 2}))
        .await;
    let e = c.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), &e["request_id"]),
        (Some("rate_limited"), &json!(2))
    );
    // Small frames that publish nothing still pass.
    c.send(json!({"type": "ping", "ts": 5})).await;
    assert_eq!(c.expect("pong").await["ts"], 5);
    // The budget refills: within a few seconds the same publish is accepted again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut n = 3;
    loop {
        c.send(json!({"type": "publish", "channel": "chat", "event": "e", "data": data, "request_id": n}))
            .await;
        let f = c.next().await.expect("an answer");
        if f["type"] == "ack" {
            break;
        }
        assert_eq!(f["code"], "rate_limited", "{f}");
        assert!(tokio::time::Instant::now() < deadline, "the budget never refilled");
        tokio::time::sleep(Duration::from_millis(100)).await;
        n += 1;
    }
    node.stop().await;
}
