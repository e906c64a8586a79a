//! A client reads a channel's history over its socket (`history` frame): the newest N, or
//! page by page after an id; with the permission a subscribe needs; capped at `max_replay`;
//! `recovered:false` once trimming took events after `since`; without the events excluded for
//! it. A read never touches the socket's subscriptions: the events come inside the answer.
//! Single node (in-process, memory broker) and a cluster on a real redis-server.

use crate::common;

use std::time::Duration;

use common::cluster::*;
use common::*;
use serde_json::{Value, json};

/// Sends a `history` frame and returns its answer (`history` or `error`).
async fn history(c: &mut Client, channel: &str, since: Option<&str>, limit: Option<u64>, rid: &str) -> Value {
    let mut f = json!({"type": "history", "channel": channel, "request_id": rid});
    if let Some(s) = since {
        f["since"] = json!(s);
    }
    if let Some(n) = limit {
        f["limit"] = json!(n);
    }
    c.send(f).await;
    loop {
        let a = c.next().await.expect("an answer before the socket ends");
        if a["type"] == "ping" {
            continue;
        }
        assert_eq!(a["request_id"], rid, "the answer to {rid}: {a}");
        return a;
    }
}

/// The event ids of a `history` answer, in the order given.
fn ids(answer: &Value) -> Vec<String> {
    assert_eq!(answer["type"], "history", "{answer}");
    answer["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["event_id"].as_str().expect("event_id").to_owned())
        .collect()
}

fn strs(ids: &[String]) -> Vec<String> {
    ids.to_vec()
}

#[tokio::test]
async fn a_client_reads_the_newest_events_then_pages_forward_and_its_subscription_stays_untouched() {
    let node = Node::default().await;
    let (mut sub, _) = node.connect(&token("sub", &["chat:*"], &[])).await;
    sub.send(json!({"type": "subscribe", "channel": "chat:1"})).await;
    sub.expect("subscribed").await;
    let mut published = Vec::new();
    for i in 0..7 {
        published.push(node.publish("chat:1", "msg", json!({"i": i, "z": [1, 2.5]})).await);
    }
    node.publish("chat:2", "other", json!(null)).await;
    let live = sub.events(7).await;

    let (mut reader, _) = node.connect(&token("reader", &["chat:*"], &[])).await;
    // The newest 3, oldest first, each the exact frame a subscriber received.
    let a = history(&mut reader, "chat:1", None, Some(3), "h1").await;
    assert_eq!(ids(&a), strs(&published[4..]));
    assert_eq!(a["channel"], "chat:1");
    assert_eq!(a["recovered"], true);
    assert_eq!(a["events"].as_array().unwrap(), &live[4..].to_vec());
    // No limit: everything (the default, 100, is more than there is).
    let a = history(&mut reader, "chat:1", None, None, "h2").await;
    assert_eq!(ids(&a), published);

    // Paging: the oldest 3 after an id, then after the last one returned, until it runs dry.
    let mut pages = Vec::new();
    let mut since = published[0].clone();
    loop {
        let a = history(&mut reader, "chat:1", Some(&since), Some(3), "p").await;
        assert_eq!(a["recovered"], true, "{a}");
        let page = ids(&a);
        let Some(last) = page.last().cloned() else { break };
        pages.push(page);
        since = last;
    }
    assert_eq!(
        pages,
        vec![published[1..4].to_vec(), published[4..7].to_vec()],
        "two pages of 3 after the first event, then an empty one"
    );

    // A read: no event frame follows the answer, and the reader did not become a subscriber.
    reader.assert_silent(Duration::from_millis(200)).await;
    let next = node.publish("chat:1", "msg", json!("after")).await;
    let e = sub.expect("event").await;
    assert_eq!(e["event_id"], next.as_str());
    reader.assert_silent(Duration::from_millis(200)).await;

    // A subscriber's read leaves its live stream as it was: no repeat of what the answer holds.
    let a = history(&mut sub, "chat:1", Some(&published[2]), None, "s1").await;
    assert_eq!(ids(&a).len(), 5);
    sub.assert_silent(Duration::from_millis(200)).await;
    let newer = node.publish("chat:1", "msg", json!("newer")).await;
    let e = sub.expect("event").await;
    assert_eq!(e["event_id"], newer.as_str());
    node.stop().await;
}

#[tokio::test]
async fn history_needs_what_a_subscribe_needs() {
    let node = Node::default().await;
    node.publish("secret:1", "x", json!(1)).await;
    let mine = node.publish("user:alice", "dm", json!(1)).await;
    let (mut c, _) = node.connect(&token("alice", &["chat:*"], &[])).await;

    let a = history(&mut c, "secret:1", None, None, "f1").await;
    assert_eq!(
        (a["type"].as_str(), a["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{a}"
    );
    let a = history(&mut c, "control", None, None, "f2").await;
    assert_eq!(
        (a["type"].as_str(), a["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{a}"
    );
    let a = history(&mut c, "chat:*", None, None, "f3").await;
    assert_eq!(
        (a["type"].as_str(), a["code"].as_str()),
        (Some("error"), Some("bad_request")),
        "{a}"
    );
    let a = history(&mut c, "bad name", None, None, "f4").await;
    assert_eq!(
        (a["type"].as_str(), a["code"].as_str()),
        (Some("error"), Some("bad_request")),
        "{a}"
    );
    // A bad `since` is a bad frame; the request_id still comes back.
    let a = history(&mut c, "chat:1", Some("nope"), None, "f5").await;
    assert_eq!(
        (a["type"].as_str(), a["code"].as_str()),
        (Some("error"), Some("bad_request")),
        "{a}"
    );
    // Its own user channel is one it is in without subscribing: readable.
    let a = history(&mut c, "user:alice", None, None, "ok").await;
    assert_eq!(ids(&a), vec![mine]);
    // Nothing was acted on for the refused reads, and the socket stays open.
    c.send(json!({"type": "ping", "ts": 1})).await;
    c.expect("pong").await;
    node.stop().await;
}

#[tokio::test]
async fn limit_is_capped_at_max_replay_and_recovered_turns_false_once_trimmed() {
    let node = Node::start(wsgw::Config {
        max_replay: 3,
        history_size: 4,
        ..config()
    })
    .await;
    let mut published = Vec::new();
    for i in 0..6 {
        published.push(node.publish("chat:1", "msg", json!(i)).await);
    }
    let (mut c, _) = node.connect(&token("reader", &["chat:*"], &[])).await;
    // Kept: the last 4. Asked for 10: the newest 3 (max_replay).
    let a = history(&mut c, "chat:1", None, Some(10), "c1").await;
    assert_eq!(ids(&a), strs(&published[3..]));
    // Without a limit too (the default, 100, is capped as well).
    let a = history(&mut c, "chat:1", None, None, "c2").await;
    assert_eq!(ids(&a), strs(&published[3..]));
    // After the newest trimmed event: complete, and the oldest 3 after it.
    let a = history(&mut c, "chat:1", Some(&published[1]), Some(10), "c3").await;
    assert_eq!((ids(&a), &a["recovered"]), (strs(&published[2..5]), &json!(true)));
    // After an older one: the events in between are gone, and the answer says so.
    let a = history(&mut c, "chat:1", Some(&published[0]), Some(2), "c4").await;
    assert_eq!((ids(&a), &a["recovered"]), (strs(&published[2..4]), &json!(false)));
    // `limit: 0` returns nothing but still answers `recovered`.
    let a = history(&mut c, "chat:1", Some(&published[0]), Some(0), "c5").await;
    assert_eq!((ids(&a), &a["recovered"]), (vec![], &json!(false)));
    node.stop().await;
}

#[tokio::test]
async fn events_excluded_for_a_connection_are_not_in_its_history() {
    let node = Node::default().await;
    let (mut a, wa) = node.connect(&token("a", &["chat:*"], &["chat:*"])).await;
    let (mut b, _) = node.connect(&token("b", &["chat:*"], &[])).await;
    let mut all = Vec::new();
    let mut a_sees = Vec::new();
    for i in 0..6 {
        let id = if i % 2 == 0 {
            node.publish("chat:1", "msg", json!(i)).await
        } else {
            // A's own publish without echo: excluded for A, in replays and reads too.
            a.send(json!({"type": "publish", "channel": "chat:1", "event": "m", "data": i, "echo": false, "request_id": i}))
                .await;
            a.expect("ack").await["event_id"].as_str().unwrap().to_owned()
        };
        if i % 2 == 0 {
            a_sees.push(id.clone());
        }
        all.push(id);
    }
    // And one excluded for A through the HTTP API.
    let (status, body) = node
        .api_post(
            "/api/publish",
            json!({"channel": "chat:1", "event": "m", "data": 6, "exclude": [wa["connection_id"]]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    all.push(body["event_id"].as_str().unwrap().to_owned());

    assert_eq!(ids(&history(&mut b, "chat:1", None, None, "b").await), all);
    assert_eq!(ids(&history(&mut a, "chat:1", None, None, "a1").await), a_sees);
    // The limit counts what A may see: the newest 2 of its events, however many are skipped.
    assert_eq!(
        ids(&history(&mut a, "chat:1", None, Some(2), "a2").await),
        strs(&a_sees[1..])
    );
    let a2 = history(&mut a, "chat:1", Some(&all[0]), Some(1), "a3").await;
    assert_eq!(ids(&a2), vec![a_sees[1].clone()]);
    node.stop().await;
}

#[tokio::test]
async fn cluster_history_reads_redis_on_any_node() {
    let redis = RedisServer::start().await;
    let env = [("WSGW_HISTORY_SIZE", "4"), ("WSGW_MAX_REPLAY", "3")];
    let a = GatewayProc::start(&redis, "gw-a", &env).await;
    let b = GatewayProc::start(&redis, "gw-b", &env).await;
    let (mut pubr, wp) = a.connect(&token("pub", &["room:*"], &["room:*"])).await;
    let (mut reader, _) = b.connect(&token("reader", &["room:*"], &[])).await;

    let mut published = Vec::new();
    let mut pub_sees = Vec::new();
    for i in 0..6 {
        let echo = i % 3 != 2;
        pubr.send(
            json!({"type": "publish", "channel": "room:1", "event": "m", "data": i, "echo": echo, "request_id": i}),
        )
        .await;
        let id = pubr.expect("ack").await["event_id"].as_str().unwrap().to_owned();
        if echo {
            pub_sees.push(id.clone());
        }
        published.push(id);
    }
    assert_eq!(wp["node"], "gw-a");

    // Newest N, capped at WSGW_MAX_REPLAY (3), read on another node.
    let h = history(&mut reader, "room:1", None, Some(2), "n").await;
    assert_eq!((ids(&h), &h["recovered"]), (strs(&published[4..]), &json!(true)));
    let h = history(&mut reader, "room:1", None, Some(50), "cap").await;
    assert_eq!(ids(&h), strs(&published[3..]));
    // Paging after an id that is still kept (the last trimmed one, published[1]).
    let h = history(&mut reader, "room:1", Some(&published[1]), Some(2), "p1").await;
    assert_eq!((ids(&h), &h["recovered"]), (strs(&published[2..4]), &json!(true)));
    let h = history(&mut reader, "room:1", Some(&published[3]), Some(2), "p2").await;
    assert_eq!((ids(&h), &h["recovered"]), (strs(&published[4..6]), &json!(true)));
    let h = history(&mut reader, "room:1", Some(&published[5]), Some(2), "p3").await;
    assert_eq!((ids(&h), &h["recovered"]), (vec![], &json!(true)));
    // Trimmed past `since`: recovered:false, with what is still kept.
    let h = history(&mut reader, "room:1", Some(&published[0]), None, "t").await;
    assert_eq!((ids(&h), &h["recovered"]), (strs(&published[2..5]), &json!(false)));
    // The publisher's events without echo are not in its own reads.
    // Kept: published[2..6]; of those, 2 and 5 went out without echo.
    let kept: Vec<String> = pub_sees
        .iter()
        .filter(|id| published[2..].contains(id))
        .cloned()
        .collect();
    assert_eq!(kept, strs(&published[3..5]));
    let h = history(&mut pubr, "room:1", None, None, "x").await;
    assert_eq!(ids(&h), kept);
    let h = history(&mut reader, "room:1", Some(&published[1]), None, "y").await;
    assert_eq!(ids(&h), strs(&published[2..5]), "the reader sees them");
    // Forbidden as a subscribe would be.
    let h = history(&mut reader, "secret:1", None, None, "f").await;
    assert_eq!(
        (h["type"].as_str(), h["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{h}"
    );
    reader.assert_silent(Duration::from_millis(200)).await;
}
