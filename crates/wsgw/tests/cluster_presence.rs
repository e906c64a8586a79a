//! Presence, the node registry, cluster-wide kicks and resume, on real gateway processes sharing
//! one real redis-server; and the backend snippets of docs/backends.md, run for real.

use crate::common;

use std::process::{Command, Output};
use std::time::Duration;

use common::cluster::*;
use common::*;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

/// Like `wait_until`, with a deadline of our own (for waits that include a TTL running out).
async fn wait_within<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + deadline;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < until,
            "timed out after {deadline:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn exists(r: &MultiplexedConnection, key: &str) -> bool {
    let n: i64 = redis::cmd("EXISTS").arg(key).query_async(&mut r.clone()).await.unwrap();
    n > 0
}

async fn get(r: &MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(&mut r.clone()).await.unwrap()
}

async fn pttl(r: &MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(&mut r.clone()).await.unwrap()
}

async fn zscore(r: &MultiplexedConnection, key: &str, member: &str) -> Option<f64> {
    redis::cmd("ZSCORE")
        .arg(key)
        .arg(member)
        .query_async(&mut r.clone())
        .await
        .unwrap()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The connection ids and nodes that `GET /api/presence/users/{user}` lists on `node`.
async fn presence(node: &GatewayProc, user: &str) -> Vec<(String, String)> {
    let (status, body) = node.api_get(&format!("/api/presence/users/{user}")).await;
    assert_eq!(status, 200, "{body}");
    body["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| {
            (
                c["connection_id"].as_str().unwrap().to_string(),
                c["node"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `cluster.nodes` and `cluster.connections` of `GET /api/stats` on `node`.
async fn cluster_figures(node: &GatewayProc) -> (u64, u64) {
    let (status, body) = node.api_get("/api/stats").await;
    assert_eq!(status, 200, "{body}");
    (
        body["cluster"]["nodes"].as_u64().unwrap(),
        body["cluster"]["connections"].as_u64().unwrap(),
    )
}

fn id_of(welcome: &Value) -> String {
    welcome["connection_id"].as_str().expect("connection_id").to_string()
}

#[tokio::test]
async fn a_connection_shows_up_in_presence_with_ttls_on_every_node_and_is_gone_when_it_closes() {
    let redis = RedisServer::start().await;
    let ttl = [("WSGW_PRESENCE_TTL_MS", "30000")];
    let a = GatewayProc::start(&redis, "gw-a", &ttl).await;
    let b = GatewayProc::start(&redis, "gw-b", &ttl).await;
    let r = redis.conn().await;
    let before = now_ms();
    let (alice, w) = a.connect(&token("alice", &[], &[])).await;
    let id = id_of(&w);
    let conn_key = format!("ws:presence:conn:{id}");
    let user_key = "ws:presence:user:alice";

    // Node B answers for the whole cluster.
    wait_until("node B lists alice's connection on gw-a", || async {
        presence(&b, "alice").await == [(id.clone(), "gw-a".to_string())]
    })
    .await;

    let value: Value = serde_json::from_str(&get(&r, &conn_key).await.expect("presence value")).unwrap();
    assert_eq!(
        (value["user_id"].as_str(), value["node"].as_str()),
        (Some("alice"), Some("gw-a")),
        "{value}"
    );
    let connected_at = value["connected_at"].as_u64().expect("connected_at");
    assert!(
        (before.saturating_sub(1000)..=now_ms()).contains(&connected_at),
        "{value}"
    );
    let mut channels: Vec<&str> = value["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    channels.sort_unstable();
    assert_eq!(channels, ["broadcast", &format!("connection:{id}"), "user:alice"]);
    let t = pttl(&r, &conn_key).await;
    assert!(t > 0 && t <= 30_000, "presence:conn PTTL {t}");
    let t = pttl(&r, user_key).await;
    assert!(t > 0 && t <= 30_000, "presence:user PTTL {t}");
    let score = zscore(&r, user_key, &id)
        .await
        .expect("the user's sorted set holds the id");
    assert!(
        score as u64 > now_ms() && score as u64 <= now_ms() + 30_000,
        "scored by expiry: {score}"
    );
    let (_, body) = b.api_get("/api/presence/users/alice").await;
    assert_eq!(body["connections"][0]["connected_at"], connected_at);

    alice.close().await;
    wait_until("alice's presence keys are deleted", || async {
        !exists(&r, &conn_key).await && zscore(&r, user_key, &id).await.is_none()
    })
    .await;
    assert_eq!(presence(&b, "alice").await, [], "nobody left on B's view");
    assert_eq!(presence(&a, "alice").await, [], "nobody left on A's view");
}

#[tokio::test]
async fn a_node_killed_with_sigkill_leaves_nothing_behind_once_its_ttls_pass() {
    let redis = RedisServer::start().await;
    // Refreshed every 500 ms.
    let ttl = [("WSGW_PRESENCE_TTL_MS", "1500")];
    let mut a = GatewayProc::start(&redis, "gw-a", &ttl).await;
    let b = GatewayProc::start(&redis, "gw-b", &ttl).await;
    let r = redis.conn().await;
    let (alice_a, wa) = a.connect(&token("alice", &[], &[])).await;
    let (mut bob_b, wb) = b.connect(&token("bob", &[], &[])).await;
    let alice_key = format!("ws:presence:conn:{}", id_of(&wa));

    wait_until("B sees two nodes and two connections", || async {
        cluster_figures(&b).await == (2, 2)
    })
    .await;
    wait_until("alice's presence is written", || async { exists(&r, &alice_key).await }).await;
    assert!(exists(&r, "ws:node:gw-a").await);
    let score = zscore(&r, "ws:nodes", "gw-a").await.expect("gw-a registered");
    assert!(score as u64 <= now_ms() + 1500, "scored by expiry: {score}");

    a.kill();
    // Nobody cleans up for A: only the TTLs (1.5 s) and readers trimming the sorted sets do.
    wait_within("everything of gw-a is gone", Duration::from_secs(6), || async {
        cluster_figures(&b).await == (1, 1)
            && zscore(&r, "ws:nodes", "gw-a").await.is_none()
            && !exists(&r, "ws:node:gw-a").await
            && !exists(&r, &alice_key).await
            && !exists(&r, "ws:presence:user:alice").await
            && presence(&b, "alice").await.is_empty()
    })
    .await;
    drop(alice_a);
    let (_, stats) = b.api_get("/api/stats").await;
    assert_eq!(stats["cluster"]["node_ids"], json!(["gw-b"]), "{stats}");
    assert_eq!(
        presence(&b, "bob").await,
        [(id_of(&wb), "gw-b".to_string())],
        "B's own sockets stay present"
    );

    // The surviving node still delivers, from Redis and from its HTTP API.
    let mut r2 = redis.conn().await;
    let id = fcall_publish(&mut r2, "broadcast", "still-here", &json!(1)).await;
    assert_eq!(bob_b.expect("event").await["event_id"], id.as_str());
    let (status, body) = b
        .api_post("/api/publish", json!({"channel": "user:bob", "event": "dm", "data": 2}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(bob_b.expect("event").await["event_id"], body["event_id"]);
}

#[tokio::test]
async fn a_node_stopped_with_sigterm_removes_its_keys_at_once_and_parks_its_sessions() {
    let redis = RedisServer::start().await;
    // A TTL long enough that only the clean leave can explain keys vanishing.
    let ttl = [("WSGW_PRESENCE_TTL_MS", "60000")];
    let mut a = GatewayProc::start(&redis, "gw-a", &ttl).await;
    let b = GatewayProc::start(&redis, "gw-b", &ttl).await;
    let r = redis.conn().await;
    let t = token("alice", &["room:*"], &[]);
    let (mut alice, w) = a.connect(&t).await;
    let id = id_of(&w);
    alice.send(json!({"type": "subscribe", "channel": "room:7"})).await;
    alice.expect("subscribed").await;
    let conn_key = format!("ws:presence:conn:{id}");
    wait_until("both nodes and alice are registered", || async {
        // (cluster.connections would lag here: node figures are refreshed every TTL / 3.)
        cluster_figures(&b).await.0 == 2 && exists(&r, &conn_key).await && exists(&r, "ws:node:gw-a").await
    })
    .await;

    let stopping = tokio::task::spawn_blocking(move || {
        let code = a.terminate();
        (a, code)
    });
    let (code, _) = alice.until_closed().await;
    assert_eq!(code, Some(1012), "the drain asks clients to reconnect elsewhere");
    let (_a, exit) = stopping.await.unwrap();
    assert_eq!(exit, Some(0), "SIGTERM exits 0");

    // Checked at once: with a 60 s TTL only the node's own clean leave removes these.
    assert!(!exists(&r, "ws:node:gw-a").await, "node hash deleted");
    assert_eq!(zscore(&r, "ws:nodes", "gw-a").await, None, "node left the registry");
    assert!(!exists(&r, &conn_key).await, "presence deleted");
    assert_eq!(zscore(&r, "ws:presence:user:alice", &id).await, None);
    assert_eq!(cluster_figures(&b).await, (1, 0));
    assert_eq!(presence(&b, "alice").await, []);

    // The session was parked, so the client picks it up on the other node.
    let (_alice, w) = b.connect_query(&format!("connection_id={id}&token={t}")).await;
    assert_eq!(
        (w["resumed"].as_bool(), w["connection_id"].as_str()),
        (Some(true), Some(id.as_str())),
        "{w}"
    );
    assert_eq!(w["channels"], json!(["room:7"]));
}

#[tokio::test]
async fn the_api_of_one_node_kicks_sockets_on_every_node() {
    let redis = RedisServer::start().await;
    let a = GatewayProc::start(&redis, "gw-a", &[]).await;
    let b = GatewayProc::start(&redis, "gw-b", &[]).await;
    let (mut alice_a, _) = a.connect(&token("alice", &[], &[])).await;
    let (mut alice_b, _) = b.connect(&token("alice", &[], &[])).await;
    let (mut bob_a, wbob) = a.connect(&token("bob", &["room:*"], &[])).await;
    let (mut carol_a, wcarol) = a.connect(&token("carol", &[], &[])).await;
    bob_a.send(json!({"type": "subscribe", "channel": "room:1"})).await;
    bob_a.expect("subscribed").await;
    wait_until("B sees both of alice's sockets", || async {
        presence(&b, "alice").await.len() == 2
    })
    .await;

    // A user, everywhere.
    let (status, body) = b.api_post("/api/users/alice/disconnect", json!({})).await;
    assert_eq!((status, body["disconnected"].as_u64()), (200, Some(2)), "{body}");
    assert_eq!(alice_a.until_closed().await.0, Some(4004), "alice on A kicked");
    assert_eq!(alice_b.until_closed().await.0, Some(4004), "alice on B kicked");
    let mut r = redis.conn().await;
    let id = fcall_publish(&mut r, "broadcast", "after-kick", &json!(null)).await;
    assert_eq!(
        bob_a.expect("event").await["event_id"],
        id.as_str(),
        "bob is still connected"
    );
    assert_eq!(
        carol_a.expect("event").await["event_id"],
        id.as_str(),
        "carol is still connected"
    );
    wait_until("alice is gone from presence", || async {
        presence(&b, "alice").await.is_empty()
    })
    .await;

    // One connection that lives on A, through B.
    let bob_id = id_of(&wbob);
    wait_until("bob's presence is known", || async {
        presence(&b, "bob").await.len() == 1
    })
    .await;
    let (status, body) = b
        .api_post(&format!("/api/connections/{bob_id}/disconnect"), json!({}))
        .await;
    assert_eq!((status, body["disconnected"].as_u64()), (200, Some(1)), "{body}");
    assert_eq!(bob_a.until_closed().await.0, Some(4004));
    let id = fcall_publish(&mut r, "broadcast", "after-second-kick", &json!(null)).await;
    assert_eq!(
        carol_a.expect("event").await["event_id"],
        id.as_str(),
        "carol is still connected"
    );
    assert_eq!(presence(&b, "carol").await, [(id_of(&wcarol), "gw-a".to_string())]);

    // A kicked session is not parked: resuming it brings back no topics.
    let (_bob, w) = b
        .connect_query(&format!(
            "connection_id={bob_id}&token={}",
            token("bob", &["room:*"], &[])
        ))
        .await;
    assert_eq!(w["resumed"], false, "{w}");
    assert!(w.get("channels").is_none_or(|c| c == &json!([])), "{w}");

    let (status, body) = b
        .api_post("/api/connections/no-such-connection/disconnect", json!({}))
        .await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "{body}");
}

#[tokio::test]
async fn a_client_resumes_its_connection_and_topics_on_another_node_and_nobody_else_can() {
    let redis = RedisServer::start().await;
    let a = GatewayProc::start(&redis, "gw-a", &[]).await;
    let b = GatewayProc::start(&redis, "gw-b", &[]).await;
    let t = token("alice", &["room:*"], &[]);
    let (mut alice, w) = a.connect(&t).await;
    let id = id_of(&w);
    assert_eq!(w["resumed"], false);
    alice.send(json!({"type": "subscribe", "channel": "room:1"})).await;
    alice.expect("subscribed").await;
    // Presence is written in batches a moment after the welcome; a resume racing that first
    // write finds nothing to take over (protocol.md, "Doubtful answers"). The client here
    // resumes after its connection is known cluster-wide, as one does after a real drop.
    wait_until("gw-b sees alice's connection on gw-a", || async {
        presence(&b, "alice").await == [(id.clone(), "gw-a".to_string())]
    })
    .await;
    alice.close().await;

    let (mut alice, w) = b.connect_query(&format!("connection_id={id}&token={t}")).await;
    assert_eq!(
        (w["resumed"].as_bool(), w["connection_id"].as_str(), w["node"].as_str()),
        (Some(true), Some(id.as_str()), Some("gw-b")),
        "{w}"
    );
    assert_eq!(w["channels"], json!(["room:1"]));
    let mut r = redis.conn().await;
    let ev = fcall_publish(&mut r, "room:1", "msg", &json!({"text": "welcome back"})).await;
    let e = alice.expect("event").await;
    assert_eq!(
        (e["event_id"].as_str(), e["channel"].as_str()),
        (Some(ev.as_str()), Some("room:1"))
    );
    let ev = fcall_publish(&mut r, &format!("connection:{id}"), "direct", &json!(1)).await;
    assert_eq!(
        alice.expect("event").await["event_id"],
        ev.as_str(),
        "its connection channel followed it"
    );

    // Another user presenting the id, on the node holding it and on the other one.
    let b_id = id.clone();
    wait_until("the cluster knows the connection lives on B", || async {
        presence(&b, "alice").await == [(b_id.clone(), "gw-b".to_string())]
    })
    .await;
    let mallory = token("mallory", &["room:*"], &[]);
    for node in [&b, &a] {
        let (mut m, w) = node.connect_query(&format!("connection_id={id}&token={mallory}")).await;
        assert_eq!(w["resumed"], false, "{w}");
        assert_ne!(w["connection_id"], id.as_str(), "a fresh id on {}", node.node_id);
        assert!(w.get("channels").is_none_or(|c| c == &json!([])), "{w}");
        let err = m.expect("error").await;
        assert_eq!(err["code"], "forbidden", "{err}");
    }
    let ev = fcall_publish(&mut r, &format!("connection:{id}"), "direct", &json!(2)).await;
    assert_eq!(
        alice.expect("event").await["event_id"],
        ev.as_str(),
        "alice keeps her connection"
    );
}

// The snippets of docs/backends.md, byte for byte. The test fails if the doc drifts from them.

/// Run through `sh` with `redis-cli` pointed at the test's Redis.
const REDIS_CLI_SNIPPET: &str =
    r#"redis-cli FCALL wsgw_publish 2 ws:seq ws:history:broadcast broadcast hello '{"text":"hi"}'"#;

const REDIS_CLI_EPHEMERAL_SNIPPET: &str = r#"redis-cli PUBLISH ws:user:42 '{"type":"event","channel":"user:42","event":"typing","data":{"user":"7"},"ts":1732240000000}'"#;

const PYTHON_SNIPPET: &str = r#"import json
import os

import redis

r = redis.Redis(host=os.environ.get("REDIS_HOST", "localhost"), port=int(os.environ.get("REDIS_PORT", "6379")))
event_id = r.fcall('wsgw_publish', 2, 'ws:seq', 'ws:history:user:42', 'user:42', 'note', json.dumps({"text": "hello"}))
print(event_id.decode())"#;

const NODE_SNIPPET: &str = r#"const { createClient } = require('redis');

async function main() {
  const client = createClient({ url: process.env.REDIS_URL || 'redis://localhost:6379' });
  await client.connect();
  const eventId = await client.fCall('wsgw_publish', {
    keys: ['ws:seq', 'ws:history:user:42'],
    arguments: ['user:42', 'note', JSON.stringify({ text: 'hello' })],
  });
  console.log(eventId);
  await client.quit();
}

main();"#;

const CURL_SNIPPET: &str = r#"curl -s -H "Authorization: Bearer $WSGW_API_KEY" -H 'Content-Type: application/json' \
  -d '{"channel":"user:42","event":"note","data":{"text":"hello"}}' \
  "$WSGW_URL/api/publish""#;

/// Runs a shell snippet with `redis-cli` bound to `port`, and the given env (bash: dash does not
/// allow a function named `redis-cli`).
fn sh(snippet: &str, port: u16, env: &[(&str, String)]) -> Output {
    let script = format!("redis-cli() {{ command redis-cli -p {port} \"$@\"; }}\n{snippet}\n");
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(script);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("bash runs")
}

/// Whether `program -e/-c check` succeeds, i.e. the client library is installed.
fn has(program: &str, flag: &str, check: &str) -> bool {
    Command::new(program)
        .arg(flag)
        .arg(check)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run_script(program: &str, ext: &str, snippet: &str, env: &[(&str, String)]) -> String {
    let path = std::env::temp_dir().join(format!("wsgw-backends-{}-{}.{ext}", std::process::id(), free_port()));
    std::fs::write(&path, format!("{snippet}\n")).unwrap();
    let mut cmd = Command::new(program);
    cmd.arg(&path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output();
    let _ = std::fs::remove_file(&path);
    stdout_of(program, &out.unwrap_or_else(|e| panic!("{program} runs: {e}")))
}

#[tokio::test]
async fn the_backend_snippets_in_the_docs_publish_for_real() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/backends.md"))
        .expect("docs/backends.md exists");
    for (name, snippet) in [
        ("redis-cli", REDIS_CLI_SNIPPET),
        ("redis-cli PUBLISH", REDIS_CLI_EPHEMERAL_SNIPPET),
        ("python", PYTHON_SNIPPET),
        ("node", NODE_SNIPPET),
        ("curl", CURL_SNIPPET),
    ] {
        assert!(
            doc.contains(snippet),
            "docs/backends.md no longer contains the {name} snippet:\n{snippet}"
        );
    }

    let redis = RedisServer::start().await;
    let a = GatewayProc::start(&redis, "gw-a", &[]).await;
    let (mut user42, _) = a.connect(&token("42", &[], &[])).await;
    let port = redis.port;

    let id = stdout_of("redis-cli FCALL", &sh(REDIS_CLI_SNIPPET, port, &[]));
    let e = user42.expect("event").await;
    assert_eq!(e["event_id"], id.as_str(), "redis-cli printed the id: {id}");
    assert_eq!(
        (e["channel"].as_str(), e["event"].as_str(), e["data"].clone()),
        (Some("broadcast"), Some("hello"), json!({"text": "hi"}))
    );

    let receivers = stdout_of("redis-cli PUBLISH", &sh(REDIS_CLI_EPHEMERAL_SNIPPET, port, &[]));
    assert_eq!(receivers, "1", "one gateway node listens to ws:user:42");
    let e = user42.expect("event").await;
    assert_eq!(
        (e["event"].as_str(), e.get("event_id")),
        (Some("typing"), None),
        "ephemeral: {e}"
    );

    let note = |e: &Value| (e["channel"].clone(), e["event"].clone(), e["data"].clone());
    let expected = (json!("user:42"), json!("note"), json!({"text": "hello"}));

    if has("python3", "-c", "import redis") {
        let env = [
            ("REDIS_HOST", "127.0.0.1".to_string()),
            ("REDIS_PORT", port.to_string()),
        ];
        let id = run_script("python3", "py", PYTHON_SNIPPET, &env);
        let e = user42.expect("event").await;
        assert_eq!(
            (e["event_id"].as_str(), note(&e)),
            (Some(id.as_str()), expected.clone())
        );
    } else {
        eprintln!("note: python3 has no `redis` module (pip install redis): the Python snippet was not run");
    }

    if let Some(node_path) = node_path_with_redis() {
        let env = [("REDIS_URL", redis.url()), ("NODE_PATH", node_path)];
        let id = run_script("node", "js", NODE_SNIPPET, &env);
        let e = user42.expect("event").await;
        assert_eq!(
            (e["event_id"].as_str(), note(&e)),
            (Some(id.as_str()), expected.clone())
        );
    } else {
        eprintln!("note: node cannot require('redis') (npm install redis@4): the Node snippet was not run");
    }

    if Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let env = [("WSGW_API_KEY", API_KEY.to_string()), ("WSGW_URL", a.url(""))];
        let body: Value = serde_json::from_str(&stdout_of("curl", &sh(CURL_SNIPPET, port, &env))).expect("JSON answer");
        let e = user42.expect("event").await;
        assert_eq!(
            (e["event_id"].clone(), note(&e)),
            (body["event_id"].clone(), expected.clone())
        );
    } else {
        eprintln!("note: curl is not installed: the HTTP snippet was not run");
    }

    // Reserved and malformed publishes are refused by the Function itself.
    for (channel, history) in [("control", "ws:history:control"), ("room:1", "ws:history:room:2")] {
        let mut r = redis.conn().await;
        let refused: redis::RedisResult<String> = redis::cmd("FCALL")
            .arg("wsgw_publish")
            .arg(2)
            .arg("ws:seq")
            .arg(history)
            .arg(channel)
            .arg("x")
            .arg("{}")
            .query_async(&mut r)
            .await;
        assert!(refused.is_err(), "{channel} on {history}: {refused:?}");
    }
    user42.assert_silent(Duration::from_millis(100)).await;
}
