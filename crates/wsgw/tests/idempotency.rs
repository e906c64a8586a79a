//! A backend retries a publish whose answer it never got (a timeout, a Redis failover): with the
//! same idempotency key it gets the first event's id back, one event is stored, and a
//! subscribed socket receives it once. The key is global per prefix and shared between
//! `FCALL wsgw_publish` (7th argument) and the HTTP API (`Idempotency-Key`); the body is not
//! compared. Against a real redis-server and gateway process, and against an in-process node
//! with the memory broker.

use crate::common;

use common::cluster::*;
use common::*;
use serde_json::{Value, json};

/// `FCALL wsgw_publish` with all seven arguments (ttl_ms, maxlen and exclude left empty: the
/// defaults); the error text on refusal.
async fn fcall_idem(
    r: &mut redis::aio::MultiplexedConnection,
    channel: &str,
    data: &str,
    key: &str,
) -> Result<String, String> {
    publish_cmd(channel, "e", data)
        .arg("")
        .arg("")
        .arg("")
        .arg(key)
        .query_async(r)
        .await
        .map_err(|e| e.to_string())
}

async fn xlen(r: &mut redis::aio::MultiplexedConnection, channel: &str) -> usize {
    redis::cmd("XLEN")
        .arg(format!("ws:history:{channel}"))
        .query_async(r)
        .await
        .unwrap()
}

/// POSTs `body` to `url` with the API key and, when given, an `Idempotency-Key` header.
async fn post(url: String, body: Value, key: Option<&str>) -> (u16, Value) {
    let mut req = wsgw::http_client::client().post(url).bearer_auth(API_KEY).json(&body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let r = req.send().await.expect("http");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// The socket's next event is `id` (`data` given), and then the marker: nothing in between.
async fn receives_once(c: &mut Client, id: &str, data: Value, marker: &str) {
    let e = c.expect("event").await;
    assert_eq!((e["event_id"].as_str(), &e["data"]), (Some(id), &data), "{e}");
    let e = c.expect("event").await;
    assert_eq!(
        e["event_id"].as_str(),
        Some(marker),
        "the retries delivered nothing: {e}"
    );
}

#[tokio::test]
async fn fcall_retried_with_the_same_key_stores_one_event_and_http_shares_the_key() {
    let redis = RedisServer::start().await;
    let gw = GatewayProc::start(&redis, "gw-a", &[]).await;
    let mut r = redis.conn().await;
    let (mut alice, _) = gw.connect(&token("alice", &[], &[])).await;

    let first = fcall_idem(&mut r, "user:alice", r#"{"n":1}"#, "order-42")
        .await
        .expect("first publish");
    let again = fcall_idem(&mut r, "user:alice", r#"{"n":1}"#, "order-42")
        .await
        .expect("retry");
    assert_eq!(again, first, "a retry returns the first id");
    // The body is not compared.
    let other_body = fcall_idem(&mut r, "user:alice", r#"{"n":2}"#, "order-42")
        .await
        .expect("same key, other body");
    assert_eq!(other_body, first);
    assert_eq!(xlen(&mut r, "user:alice").await, 1, "one event stored");
    let ttl: i64 = redis::cmd("PTTL")
        .arg("ws:idem:order-42")
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(
        (86_000_000..=86_400_000).contains(&ttl),
        "the key lives 24 h: PTTL {ttl}"
    );

    // HTTP with the key a backend used in FCALL: the same id, on /api/publish and on
    // /api/broadcast alike (keys are global, not per channel).
    let (status, body) = post(
        gw.url("/api/publish"),
        json!({"channel": "user:alice", "event": "e", "data": {"n": 3}}),
        Some("order-42"),
    )
    .await;
    assert_eq!(
        (status, body["event_id"].as_str()),
        (200, Some(first.as_str())),
        "{body}"
    );
    let (status, body) = post(
        gw.url("/api/broadcast"),
        json!({"event": "e", "data": {"n": 4}}),
        Some("order-42"),
    )
    .await;
    assert_eq!(
        (status, body["event_id"].as_str()),
        (200, Some(first.as_str())),
        "{body}"
    );
    assert_eq!(xlen(&mut r, "user:alice").await, 1);
    assert_eq!(xlen(&mut r, "broadcast").await, 0, "the broadcast retry stored nothing");

    // HTTP first, then FCALL with its key.
    let (status, body) = post(
        gw.url("/api/publish"),
        json!({"channel": "user:alice", "event": "e", "data": {"n": 5}}),
        Some("order-43"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let second = body["event_id"].as_str().unwrap().to_string();
    assert_ne!(second, first, "another key is another event");
    let retried = fcall_idem(&mut r, "user:alice", r#"{"n":6}"#, "order-43")
        .await
        .unwrap();
    assert_eq!(retried, second);
    assert_eq!(xlen(&mut r, "user:alice").await, 2);

    let marker = fcall_publish(&mut r, "user:alice", "mark", &json!(0)).await;
    receives_once(&mut alice, &first, json!({"n": 1}), &second).await;
    let e = alice.expect("event").await;
    assert_eq!(e["event_id"].as_str(), Some(marker.as_str()), "{e}");
}

#[tokio::test]
async fn a_bad_idempotency_key_is_refused_before_anything_is_written() {
    let redis = RedisServer::start().await;
    let mut r = redis.conn().await;
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(include_str!("../src/broker/redis/wsgw.lua"))
        .query_async(&mut r)
        .await
        .expect("FUNCTION LOAD");
    let long = "k".repeat(257);
    for key in ["", "has space", "tab\there", "é", "nul\0", long.as_str()] {
        let e = fcall_idem(&mut r, "room:1", "1", key).await.expect_err(key);
        assert!(e.contains("idempotency_key must be"), "key {key:?}: {e}");
    }
    let keys: Vec<String> = redis::cmd("KEYS").arg("ws:*").query_async(&mut r).await.unwrap();
    assert!(keys.is_empty(), "a refused publish wrote {keys:?}");
    // The longest key and every visible ASCII character pass.
    let edge = "k".repeat(256);
    fcall_idem(&mut r, "room:1", "1", &edge).await.expect("256 bytes");
    let visible: String = (b'!'..=b'~').map(char::from).collect();
    fcall_idem(&mut r, "room:1", "1", &visible)
        .await
        .expect("visible ASCII");
    assert_eq!(xlen(&mut r, "room:1").await, 2);

    // Over HTTP the same rule is a 400, and nothing is stored either.
    let gw = GatewayProc::start(&redis, "gw-a", &[]).await;
    for key in ["", "has space", long.as_str()] {
        let (status, body) = post(
            gw.url("/api/publish"),
            json!({"channel": "room:2", "event": "e"}),
            Some(key),
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_request")),
            "{key:?}: {body}"
        );
    }
    assert_eq!(xlen(&mut r, "room:2").await, 0);
}

#[tokio::test]
async fn the_memory_broker_keeps_idempotency_keys_too() {
    let node = Node::default().await;
    let (mut alice, _) = node.connect(&token("alice", &[], &[])).await;

    let (status, body) = post(
        node.url("/api/publish"),
        json!({"channel": "user:alice", "event": "e", "data": {"n": 1}}),
        Some("order-42"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let first = body["event_id"].as_str().unwrap().to_string();
    for (path, body) in [
        (
            "/api/publish",
            json!({"channel": "user:alice", "event": "e", "data": {"n": 1}}),
        ),
        (
            "/api/publish",
            json!({"channel": "user:alice", "event": "e", "data": {"n": 2}}),
        ),
        ("/api/broadcast", json!({"event": "e", "data": {"n": 3}})),
    ] {
        let (status, b) = post(node.url(path), body, Some("order-42")).await;
        assert_eq!(
            (status, b["event_id"].as_str()),
            (200, Some(first.as_str())),
            "{path}: {b}"
        );
    }
    let (status, body) = post(
        node.url("/api/publish"),
        json!({"channel": "user:alice", "event": "e"}),
        Some("bad key"),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "{body}");

    let (_, history) = node.api_get("/api/history/user:alice").await;
    assert_eq!(history["events"].as_array().unwrap().len(), 1, "{history}");
    let (_, history) = node.api_get("/api/history/broadcast").await;
    assert_eq!(history["events"].as_array().unwrap().len(), 0, "{history}");

    let marker = node.publish("user:alice", "mark", json!(0)).await;
    receives_once(&mut alice, &first, json!({"n": 1}), &marker).await;
}

// The retry snippets of docs/backends.md, byte for byte.

const REDIS_CLI_RETRY_SNIPPET: &str = r#"redis-cli FCALL wsgw_publish 2 ws:seq ws:history:user:42 user:42 note '{"text":"hello"}' '' '' '' order-42-shipped"#;

const PYTHON_RETRY_SNIPPET: &str = r#"import json
import os
import time
import uuid

import redis

r = redis.Redis(host=os.environ.get("REDIS_HOST", "localhost"), port=int(os.environ.get("REDIS_PORT", "6379")))
key = str(uuid.uuid4())  # one key per event, made before the first attempt
for attempt in range(6):
    try:
        event_id = r.fcall('wsgw_publish', 2, 'ws:seq', 'ws:history:user:42',
                           'user:42', 'note', json.dumps({"text": "hello"}), '', '', '', key)
        break
    except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
        time.sleep(0.1 * 2 ** attempt)  # stored or not: the same key makes the retry safe
else:
    raise RuntimeError('Redis stayed unavailable; retry later with the same key')
print(event_id.decode())"#;

/// Runs `program` on a file holding `snippet` (or `bash -c` with `redis-cli` bound to `port`
/// when `program` is `sh`); its trimmed stdout.
fn run(program: &str, snippet: &str, port: u16) -> String {
    // The snippet's file, removed once it ran.
    let mut file = None;
    let mut cmd = if program == "sh" {
        let mut c = std::process::Command::new("bash");
        c.arg("-c").arg(format!(
            "redis-cli() {{ command redis-cli -p {port} \"$@\"; }}\n{snippet}\n"
        ));
        c
    } else {
        let path = std::env::temp_dir().join(format!("wsgw-idem-{}-{}.py", std::process::id(), free_port()));
        std::fs::write(&path, format!("{snippet}\n")).unwrap();
        let mut c = std::process::Command::new(program);
        c.arg(&path);
        file = Some(path);
        c
    };
    let out = cmd
        .env("REDIS_HOST", "127.0.0.1")
        .env("REDIS_PORT", port.to_string())
        .output()
        .expect("runs");
    if let Some(path) = file {
        let _ = std::fs::remove_file(path);
    }
    assert!(
        out.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn the_retry_snippets_in_the_docs_store_one_event() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/backends.md")).unwrap();
    for snippet in [REDIS_CLI_RETRY_SNIPPET, PYTHON_RETRY_SNIPPET] {
        assert!(doc.contains(snippet), "docs/backends.md no longer contains:\n{snippet}");
    }
    let redis = RedisServer::start().await;
    let gw = GatewayProc::start(&redis, "gw-a", &[]).await;
    let mut r = redis.conn().await;
    let (mut user42, _) = gw.connect(&token("42", &[], &[])).await;

    let first = run("sh", REDIS_CLI_RETRY_SNIPPET, redis.port);
    let again = run("sh", REDIS_CLI_RETRY_SNIPPET, redis.port);
    assert_eq!(again, first, "run twice, the same id");
    assert_eq!(xlen(&mut r, "user:42").await, 1);
    let e = user42.expect("event").await;
    assert_eq!(e["event_id"].as_str(), Some(first.as_str()), "{e}");

    let python = std::process::Command::new("python3")
        .args(["-c", "import redis"])
        .output()
        .is_ok_and(|o| o.status.success());
    if python {
        let id = run("python3", PYTHON_RETRY_SNIPPET, redis.port);
        let e = user42.expect("event").await;
        assert_eq!(e["event_id"].as_str(), Some(id.as_str()), "{e}");
        let keys: Vec<String> = redis::cmd("KEYS").arg("ws:idem:*").query_async(&mut r).await.unwrap();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert_eq!(xlen(&mut r, "user:42").await, 2);
    } else {
        eprintln!("note: python3 has no `redis` module (pip install redis): the Python snippet was not run");
    }
}
