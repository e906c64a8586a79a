//! A browser asks, a backend answers: requests through the `ws:inbound` stream, responses on
//! the asking connection's channel, streaming, crashed workers, timeouts, permissions.

use crate::common;

use std::time::Duration;

use common::cluster::*;
use common::worker::*;
use common::*;
use serde_json::json;

#[tokio::test]
async fn a_request_on_one_node_is_answered_by_a_backend_and_only_that_socket_sees_the_answer() {
    let redis = RedisServer::start().await;
    let a = GatewayProc::start(&redis, "gw-a", &[]).await;
    let b = GatewayProc::start(&redis, "gw-b", &[]).await;
    let t = token("u", &["doc:*"], &[]);
    let (mut asking, w) = a.connect(&t).await;
    let (mut same_user_elsewhere, _) = b.connect(&t).await;

    // Look at what a backend receives before answering it.
    let mut r = redis.conn().await;
    create_group(&mut r).await;
    asking
        .send(json!({"type": "request", "action": "search", "data": {"q": "rust"}, "request_id": "r1"}))
        .await;
    let reqs = read_at_least_one(&mut r, "inspector").await;
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(req.connection_id(), w["connection_id"].as_str().unwrap());
    assert_eq!(
        (req.fields["user_id"].as_str(), req.fields["node"].as_str()),
        ("u", "gw-a")
    );
    assert_eq!(
        (req.action(), req.request_id(), req.data()),
        ("search", json!("r1"), json!({"q": "rust"}))
    );
    let claims: serde_json::Value = serde_json::from_str(&req.fields["claims"]).unwrap();
    assert_eq!(
        (claims["sub"].clone(), claims["channels"].clone()),
        (json!("u"), json!(["doc:*"]))
    );

    respond(&mut r, req, json!({"hits": 3}), false).await;
    ack(&mut r, req).await;
    let resp = asking.expect("response").await;
    assert_eq!(
        (
            resp["request_id"].clone(),
            resp["ok"].clone(),
            resp["data"]["hits"].clone()
        ),
        (json!("r1"), json!(true), json!(3))
    );
    same_user_elsewhere.assert_silent(Duration::from_millis(150)).await;
}

#[tokio::test]
async fn a_streamed_answer_arrives_in_order() {
    let redis = RedisServer::start().await;
    let a = GatewayProc::start(&redis, "gw-a", &[]).await;
    let worker = spawn_worker(redis.conn().await, "w1");
    let (mut c, _) = a.connect(&token("s", &[], &[])).await;
    c.send(json!({"type": "request", "action": "stream", "data": null, "request_id": 7}))
        .await;
    let mut chunks = Vec::new();
    loop {
        let f = c.expect("response").await;
        assert_eq!(f["request_id"], 7);
        chunks.push(f["data"].clone());
        if f["more"] != true {
            break;
        }
    }
    assert_eq!(
        chunks,
        [
            json!({"chunk": 0}),
            json!({"chunk": 1}),
            json!({"chunk": 2}),
            json!({"done": true})
        ]
    );
    worker.abort();
}

#[tokio::test]
async fn a_request_a_crashed_worker_took_is_claimed_and_answered_by_another() {
    let redis = RedisServer::start().await;
    let a = GatewayProc::start(&redis, "gw-a", &[]).await;
    let (mut c, _) = a.connect(&token("c", &[], &[])).await;
    let mut r = redis.conn().await;
    create_group(&mut r).await;
    c.send(json!({"type": "request", "action": "echo", "data": {"n": 1}, "request_id": "x"}))
        .await;
    // Worker 1 takes the request and dies before answering or acknowledging it.
    let taken = read_at_least_one(&mut r, "crashy").await;
    assert_eq!(taken.len(), 1);
    c.assert_silent(Duration::from_millis(100)).await;
    // Worker 2 claims what has been idle too long and answers it.
    let worker = spawn_worker(redis.conn().await, "w2");
    let resp = c.expect("response").await;
    assert_eq!(
        (resp["request_id"].clone(), resp["data"].clone()),
        (json!("x"), json!({"n": 1}))
    );
    // The worker answers, then acknowledges: wait for the acknowledgement to land.
    wait_until("nothing is left unacknowledged", || {
        let mut r = r.clone();
        async move {
            let pending: redis::Value = redis::cmd("XPENDING")
                .arg(STREAM)
                .arg(GROUP)
                .query_async(&mut r)
                .await
                .unwrap();
            matches!(&pending, redis::Value::Array(p) if p[0] == redis::Value::Int(0))
        }
    })
    .await;
    worker.abort();
}

#[tokio::test]
async fn unanswered_requests_time_out_and_disallowed_actions_are_refused() {
    let redis = RedisServer::start().await;
    let a = GatewayProc::start(&redis, "gw-a", &[("WSGW_REQUEST_TIMEOUT_MS", "300")]).await;
    let t = wsgw::auth::sign_hs256(SECRET, "t", &[], &[], Some(now_s() + 3600));
    let (mut c, _) = a.connect(&t).await;
    c.send(json!({"type": "request", "action": "slow", "data": null, "request_id": 42}))
        .await;
    let e = c.expect("error").await;
    assert_eq!(
        (e["code"].clone(), e["request_id"].clone()),
        (json!("timeout"), json!(42))
    );

    // a token whose `actions` claim allows only `search`
    let limited = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "t", "exp": now_s() + 3600, "actions": ["search"]}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (mut c, _) = a.connect(&limited).await;
    c.send(json!({"type": "request", "action": "delete", "data": null, "request_id": "d"}))
        .await;
    let e = c.expect("error").await;
    assert_eq!(
        (e["code"].clone(), e["request_id"].clone()),
        (json!("forbidden"), json!("d"))
    );
    c.send(json!({"type": "request", "action": "bad action!", "data": null, "request_id": "b"}))
        .await;
    assert_eq!(c.expect("error").await["code"], "bad_request");
}

#[tokio::test]
async fn a_chat_message_published_without_echo_reaches_everyone_else_on_every_node() {
    let redis = RedisServer::start().await;
    let a = GatewayProc::start(&redis, "gw-a", &[]).await;
    let b = GatewayProc::start(&redis, "gw-b", &[]).await;
    let t = |u: &str| token(u, &["chat:*"], &["chat:*"]);
    let (mut sender, ws) = a.connect(&t("s")).await;
    let sender_id = ws["connection_id"].as_str().unwrap().to_string();
    let (mut same_node, _) = a.connect(&t("p")).await;
    let (mut other_node, _) = b.connect(&t("q")).await;
    for c in [&mut sender, &mut same_node, &mut other_node] {
        c.send(json!({"type": "subscribe", "channel": "chat:1"})).await;
        c.expect("subscribed").await;
    }
    let mut r = redis.conn().await;
    fcall_publish(&mut r, "user:s", "before", &json!(null)).await;
    let last = sender.expect("event").await["event_id"].as_str().unwrap().to_string();
    sender.send(json!({"type": "publish", "channel": "chat:1", "event": "msg", "data": "hi", "echo": false, "request_id": 1})).await;
    let ack = sender.expect("ack").await;
    for c in [&mut same_node, &mut other_node] {
        let e = c.expect("event").await;
        assert_eq!(e["event_id"], ack["event_id"]);
        assert!(
            !e.to_string().contains("exclude") && !e.to_string().contains("#x"),
            "{e}"
        );
    }
    sender.assert_silent(Duration::from_millis(150)).await;
    // A replay honours the exclusion too: the sender resumes from before its message...
    sender.close().await;
    let (mut resumed, w) = a
        .connect_query(&format!(
            "token={}&connection_id={sender_id}&last_event_id={last}",
            t("s")
        ))
        .await;
    assert_eq!(
        (w["resumed"].as_bool(), w["replayed"].as_u64()),
        (Some(true), Some(0)),
        "{w}"
    );
    resumed.assert_silent(Duration::from_millis(100)).await;
    // ...while another socket of the same user does get it from history.
    let (mut other_socket, _) = a.connect(&t("s")).await;
    other_socket
        .send(json!({"type": "subscribe", "channel": "chat:1", "history": 10}))
        .await;
    assert_eq!(other_socket.expect("subscribed").await["replayed"], 1);
    assert_eq!(other_socket.expect("event").await["event_id"], ack["event_id"]);
}

#[tokio::test]
async fn the_python_example_worker_answers_requests() {
    if !std::process::Command::new("python3")
        .args(["-c", "import redis"])
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("note: python3 with redis-py is not installed (scripts/test.sh installs it): example not run");
        return;
    }
    let redis = RedisServer::start().await;
    let a = GatewayProc::start(&redis, "gw-a", &[]).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/worker.py");
    let mut worker = std::process::Command::new("python3")
        .arg(script)
        .env("WSGW_REDIS_URL", redis.url())
        .env("WSGW_WORKER_RUN_FOR_S", "30")
        .spawn()
        .expect("python worker starts");
    let (mut c, _) = a.connect(&token("py", &[], &[])).await;
    c.send(json!({"type": "request", "action": "echo", "data": {"hello": "python"}, "request_id": 1}))
        .await;
    let resp = c.expect("response").await;
    c.send(json!({"type": "request", "action": "stream", "data": null, "request_id": 2}))
        .await;
    let mut chunks = Vec::new();
    loop {
        let f = c.expect("response").await;
        chunks.push(f["data"].clone());
        if f["more"] != true {
            break;
        }
    }
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(
        (resp["request_id"].clone(), resp["data"].clone()),
        (json!(1), json!({"hello": "python"}))
    );
    assert_eq!(
        chunks,
        [
            json!({"chunk": 0}),
            json!({"chunk": 1}),
            json!({"chunk": 2}),
            json!({"done": true})
        ]
    );
}
