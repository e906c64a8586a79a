//! The node's pub/sub connection over plain TCP is read by the node itself
//! (`broker/redis/sub_conn.rs`), against a real redis-server:
//! - frames of every size, sent back to back, arrive whole and in order, however the reads
//!   cut them;
//! - it authenticates: a node given an ACL user and one given only a password (the default
//!   user's) each subscribe as that user and deliver what a backend publishes, and a wrong
//!   password keeps a node from becoming ready;
//! - what it holds while it waits for a subscribe's confirmation is bounded: a flood past the
//!   bound costs a reconnect and a repair from history, not the node's memory or any event;
//! - a node that joined a Redis which had issued no event yet, and lost its connection before
//!   seeing one, still repairs what was published meanwhile.
//!
//! `cargo test -p wsgw --test suite redis_pubsub_reader::`

use crate::common;

use std::time::Duration;

use common::cluster::{
    GatewayProc, RedisServer, fcall_publish, free_port, publish_cmd, pubsub_reconnects, wait_pubsub_reconnect,
};
use common::{DEADLINE, flood, token, wait_until};
use serde_json::json;

/// Event sizes around the reader's buffer (64 KiB, refilled when under 16 KiB free) and far
/// past it.
const SIZES: &[usize] = &[
    0, 1, 100, 16_383, 16_384, 16_385, 65_500, 65_536, 200_000, 900_000, 3, 70_000, 5,
];

#[tokio::test]
async fn frames_of_every_size_sent_back_to_back_arrive_whole_and_in_order() {
    let redis = RedisServer::start().await;
    // No canary for minutes: nothing else arrives on the connection to wake a reader that
    // stopped with bytes left in its socket.
    let node = GatewayProc::start(&redis, "gw-a", &[("WSGW_CANARY_INTERVAL_MS", "600000")]).await;
    let (mut c, _) = node.connect(&token("alice", &[], &[])).await;
    // One pipeline: Redis writes the frames to the node's socket back to back, so its reads
    // cut them anywhere.
    let mut pipe = redis::pipe();
    for (i, n) in SIZES.iter().enumerate() {
        let data = json!({"i": i, "pad": "x".repeat(*n)});
        pipe.add_command(publish_cmd("user:alice", "sized", &data.to_string()));
    }
    let ids: Vec<String> = pipe.query_async(&mut redis.conn().await).await.unwrap();
    for (i, n) in SIZES.iter().enumerate() {
        let e = c.expect("event").await;
        assert_eq!(
            (e["event_id"].as_str(), e["data"]["i"].as_u64()),
            (Some(ids[i].as_str()), Some(i as u64)),
            "event {i} out of order"
        );
        assert_eq!(e["data"]["pad"].as_str().map(str::len), Some(*n), "event {i} cut");
    }
    c.assert_silent(Duration::from_millis(300)).await;
}

const PASSWORD: &str = "gw-secret-password";
const DEFAULT_PASSWORD: &str = "default-secret-password";

/// The `user=` of every pub/sub connection Redis has.
async fn pubsub_users(r: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(r)
        .await
        .unwrap();
    list.lines()
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("user=")).map(str::to_string))
        .collect()
}

/// New connections must now authenticate; `admin` stays in as the default user.
async fn require_password(admin: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", DEFAULT_PASSWORD])
        .query_async(admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_node_authenticates_its_pub_sub_connection_as_the_user_its_url_names() {
    let redis = RedisServer::start().await;
    let mut admin = redis.conn().await;
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "gw", "on", &format!(">{PASSWORD}"), "~*", "&*", "+@all"])
        .query_async(&mut admin)
        .await
        .unwrap();
    require_password(&mut admin).await;

    let as_gw = format!("redis://gw:{PASSWORD}@127.0.0.1:{}", redis.port);
    let as_default = format!("redis://:{DEFAULT_PASSWORD}@127.0.0.1:{}", redis.port);
    let a = GatewayProc::start_env("gw-a", &[("WSGW_REDIS_URL", as_gw.as_str())]).await;
    let b = GatewayProc::start_env("gw-b", &[("WSGW_REDIS_URL", as_default.as_str())]).await;
    wait_until("both nodes' pub/sub connections, one per user", || {
        let mut admin = admin.clone();
        async move {
            let mut users = pubsub_users(&mut admin).await;
            users.sort();
            users == ["default", "gw"]
        }
    })
    .await;

    let (mut on_a, _) = a.connect(&token("alice", &[], &[])).await;
    let (mut on_b, _) = b.connect(&token("alice", &[], &[])).await;
    let id = fcall_publish(&mut admin, "user:alice", "dm", &json!({"n": 1})).await;
    for c in [&mut on_a, &mut on_b] {
        let e = c.expect("event").await;
        assert_eq!(
            (e["event_id"].as_str(), e["data"].clone()),
            (Some(id.as_str()), json!({"n": 1}))
        );
    }
}

#[tokio::test]
async fn a_wrong_password_keeps_a_node_from_becoming_ready() {
    let redis = RedisServer::start().await;
    let mut admin = redis.conn().await;
    require_password(&mut admin).await;
    let url = format!("redis://:wrong-password@127.0.0.1:{}", redis.port);
    let port = free_port();
    let mut node = std::process::Command::new(env!("CARGO_BIN_EXE_wsgw"))
        .env("WSGW_LISTEN", format!("127.0.0.1:{port}"))
        .env("WSGW_REDIS_URL", &url)
        .env("WSGW_JWT_SECRET", common::SECRET)
        .env("WSGW_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Either it gives up, or it stays up without saying it is ready: never ready.
    let deadline = tokio::time::Instant::now() + DEADLINE.min(Duration::from_secs(5));
    while tokio::time::Instant::now() < deadline {
        if node.try_wait().unwrap().is_some() {
            break;
        }
        let ready = wsgw::http_client::client()
            .get(format!("http://127.0.0.1:{port}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        assert!(!ready, "a node with a wrong Redis password said it was ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = node.kill();
    let out = node.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("wrong-password"), "the password was logged: {log}");
}

#[tokio::test]
async fn a_flood_while_a_subscribe_waits_costs_a_repair_not_memory_or_events() {
    let redis = RedisServer::start().await;
    let mut admin = redis.conn().await;
    flood::unlimited_pubsub_output(&mut admin).await;
    // No canary for minutes, and a subscribe may wait 10 s for its confirmation behind 200 MB:
    // the node's only reason to reconnect is the bound.
    let node = GatewayProc::start(
        &redis,
        "gw-a",
        &[("WSGW_CANARY_INTERVAL_MS", "600000"), ("WSGW_REDIS_TIMEOUT_MS", "5000")],
    )
    .await;
    let (mut reader, _) = node.connect(&token("alice", &["news"], &[])).await;
    reader.send(json!({"type": "subscribe", "channel": "news"})).await;
    reader.expect("subscribed").await;
    let (mut joiner, _) = node.connect(&token("bob", &["later"], &[])).await;
    let before = pubsub_reconnects(&node).await;
    let rss_before = flood::status_kib(node.pid(), "VmRSS");

    let ids = flood::flood_stopped_node(&mut admin, node.pid(), "news", &mut joiner, "later").await;
    assert_eq!(
        flood::only_events(&mut reader, ids.len()).await,
        ids,
        "every event once, in order"
    );
    joiner.expect("subscribed").await;
    flood::assert_memory_bounded(node.pid(), rss_before);
    wait_pubsub_reconnect(&node, before, "the node to drop what it held and reconnect").await;
    reader.assert_silent(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_first_outage_before_any_event_was_issued_still_repairs_what_was_published() {
    let redis = RedisServer::start().await;
    let mut admin = redis.conn().await;
    let node = GatewayProc::start(&redis, "gw-a", &[("WSGW_CANARY_INTERVAL_MS", "600000")]).await;
    let (mut reader, _) = node.connect(&token("alice", &["news"], &[])).await;
    reader.send(json!({"type": "subscribe", "channel": "news"})).await;
    reader.expect("subscribed").await;
    let before = pubsub_reconnects(&node).await;
    flood::unlimited_pubsub_output(&mut admin).await;

    // The node stops. 27 MiB of junk fill the socket's buffers (a few MB on loopback), so the
    // events behind them stay in Redis's output buffer for the connection, which the kill then
    // throws away.
    flood::signal(node.pid(), "-STOP");
    let junk = "x".repeat(flood::JUNK_BYTES);
    let mut pipe = redis::pipe();
    for _ in 0..240 {
        pipe.cmd("PUBLISH").arg("ws:control").arg(&junk).ignore();
    }
    let _: () = pipe.query_async(&mut admin).await.unwrap();
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(fcall_publish(&mut admin, "news", "e", &json!({"n": n})).await);
    }
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(killed, 1, "the node's one pub/sub connection");
    flood::signal(node.pid(), "-CONT");

    assert_eq!(
        reader.event_ids(ids.len()).await,
        ids,
        "every event once, in order, without a gap"
    );
    wait_pubsub_reconnect(&node, before, "the node to reconnect").await;
    reader.assert_silent(Duration::from_millis(300)).await;
}
