//! Channel presence (`WSGW_PRESENCE_CHANNELS`): `join`/`leave` frames, the `presence` answer and
//! `GET /api/presence/channels/{channel}`, on one in-process node (memory broker) and on real
//! gateway processes sharing a real redis-server: across nodes, through a SIGKILL of a node and
//! through a Redis restart.

use crate::common;

use std::time::Duration;

use common::cluster::*;
use common::*;
use serde_json::{Value, json};

/// Reads frames until one satisfies `want` (others, pings included, are skipped), within `d`.
async fn until_frame(c: &mut Client, d: Duration, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next_within(left).await {
            Ok(Some(f)) if want(&f) => return f,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("socket ended ({:?}) while waiting for {what}", c.closed),
            Err(()) => panic!("timed out after {d:?} waiting for {what}"),
        }
    }
}

fn presence_frame(ty: &str, channel: &str, user: &str, conn: &str) -> Value {
    json!({"type": ty, "channel": channel, "user_id": user, "connection_id": conn})
}

/// Waits for exactly this `join`/`leave` frame (whole frame compared: no `event_id`, nothing
/// else).
async fn expect_presence(c: &mut Client, ty: &str, channel: &str, user: &str, conn: &str) {
    let want = presence_frame(ty, channel, user, conn);
    let f = until_frame(c, DEADLINE, &format!("{want}"), |f| {
        f["type"] == ty && f["connection_id"] == conn
    })
    .await;
    assert_eq!(f, want);
}

fn id_of(welcome: &Value) -> String {
    welcome["connection_id"].as_str().expect("connection_id").to_string()
}

/// `(user_id, connection_id, node)` of a `clients` list, sorted.
fn clients(v: &Value) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = v
        .as_array()
        .unwrap_or_else(|| panic!("a clients list: {v}"))
        .iter()
        .map(|c| {
            assert_eq!(c.as_object().unwrap().len(), 3, "{c}");
            (
                c["user_id"].as_str().unwrap().to_string(),
                c["connection_id"].as_str().unwrap().to_string(),
                c["node"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn member(user: &str, conn: &str, node: &str) -> (String, String, String) {
    (user.into(), conn.into(), node.into())
}

async fn subscribe(c: &mut Client, channel: &str) {
    c.send(json!({"type": "subscribe", "channel": channel, "request_id": channel}))
        .await;
    let f = until_frame(c, DEADLINE, "subscribed", |f| f["request_id"] == channel).await;
    assert_eq!(f["type"], "subscribed", "{f}");
}

/// The `clients` of a client `presence` answer.
async fn ask(c: &mut Client, channel: &str, rid: &str) -> Value {
    c.send(json!({"type": "presence", "channel": channel, "request_id": rid}))
        .await;
    until_frame(c, DEADLINE, "the presence answer", |f| f["request_id"] == rid).await
}

async fn http_clients(node: &GatewayProc, channel: &str) -> Vec<(String, String, String)> {
    let (status, body) = node.api_get(&format!("/api/presence/channels/{channel}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["channel"], channel);
    clients(&body["clients"])
}

#[tokio::test]
async fn one_node_with_the_memory_broker_sends_join_and_leave_and_lists_members() {
    let node = Node::start(wsgw::Config {
        presence_channels: vec!["chat:*".into()],
        ..config()
    })
    .await;
    let (mut alice, wa) = node.connect(&token("alice", &["chat:*"], &["chat:*"])).await;
    let (mut bob, wb) = node.connect(&token("bob", &["chat:*", "news"], &[])).await;
    let (a, b) = (id_of(&wa), id_of(&wb));

    subscribe(&mut bob, "chat:1").await;
    expect_presence(&mut bob, "join", "chat:1", "bob", &b).await;
    subscribe(&mut alice, "chat:1").await;
    expect_presence(&mut alice, "join", "chat:1", "alice", &a).await;
    expect_presence(&mut bob, "join", "chat:1", "alice", &a).await;

    let answer = ask(&mut bob, "chat:1", "p1").await;
    assert_eq!(answer["type"], "presence", "{answer}");
    assert_eq!(answer["channel"], "chat:1");
    assert_eq!(
        clients(&answer["clients"]),
        [member("alice", &a, "test-node"), member("bob", &b, "test-node")]
    );
    let (status, body) = node.api_get("/api/presence/channels/chat:1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(clients(&body["clients"]), clients(&answer["clients"]));

    // Presence frames carry no id: the next durable event is delivered as usual, and history
    // holds only it.
    alice
        .send(json!({"type": "publish", "channel": "chat:1", "event": "msg", "data": 1}))
        .await;
    let ev = until_frame(&mut bob, DEADLINE, "the event", |f| f["type"] == "event").await;
    assert!(ev["event_id"].is_string(), "{ev}");
    let (_, history) = node.api_get("/api/history/chat:1").await;
    assert_eq!(history["events"].as_array().unwrap().len(), 1, "{history}");

    // Not tracked: bad_request (socket and HTTP); not allowed: forbidden, with the request_id.
    let e = ask(&mut bob, "news", "p2").await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("bad_request")),
        "{e}"
    );
    let (status, body) = node.api_get("/api/presence/channels/news").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "{body}");
    let (mut carol, _) = node.connect(&token("carol", &["news"], &[])).await;
    let e = ask(&mut carol, "chat:1", "p3").await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{e}"
    );

    alice
        .send(json!({"type": "unsubscribe", "channel": "chat:1", "request_id": "u"}))
        .await;
    expect_presence(&mut bob, "leave", "chat:1", "alice", &a).await;
    subscribe(&mut alice, "chat:1").await;
    expect_presence(&mut bob, "join", "chat:1", "alice", &a).await;
    alice.close().await;
    expect_presence(&mut bob, "leave", "chat:1", "alice", &a).await;
    let answer = ask(&mut bob, "chat:1", "p4").await;
    assert_eq!(clients(&answer["clients"]), [member("bob", &b, "test-node")]);
    node.stop().await;
}

#[tokio::test]
async fn members_on_two_nodes_see_each_other_join_and_leave() {
    let redis = RedisServer::start().await;
    let env = [("WSGW_PRESENCE_CHANNELS", "chat:*,room:*")];
    let a = GatewayProc::start(&redis, "gw-a", &env).await;
    let b = GatewayProc::start(&redis, "gw-b", &env).await;
    let (mut alice, wa) = a.connect(&token("alice", &["chat:*"], &["chat:*"])).await;
    let (mut bob, wb) = b.connect(&token("bob", &["chat:*", "news"], &[])).await;
    let (mut watcher, _) = b.connect(&token("watcher", &["chat:*"], &[])).await;
    let (ida, idb) = (id_of(&wa), id_of(&wb));

    // A pattern subscriber hears the channels it matches, without being listed itself.
    subscribe(&mut watcher, "chat:*").await;
    subscribe(&mut bob, "chat:1").await;
    expect_presence(&mut bob, "join", "chat:1", "bob", &idb).await;
    subscribe(&mut alice, "chat:1").await;
    expect_presence(&mut bob, "join", "chat:1", "alice", &ida).await;
    expect_presence(&mut watcher, "join", "chat:1", "bob", &idb).await;
    expect_presence(&mut watcher, "join", "chat:1", "alice", &ida).await;

    let both = [member("alice", &ida, "gw-a"), member("bob", &idb, "gw-b")];
    let answer = ask(&mut bob, "chat:1", "p1").await;
    assert_eq!(answer["type"], "presence", "{answer}");
    assert_eq!(clients(&answer["clients"]), both);
    assert_eq!(http_clients(&a, "chat:1").await, both, "node A answers for the cluster");
    let (status, _) = wsgw::http_client::client()
        .get(a.url("/api/presence/channels/chat:1"))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 401, "the route needs the API key");

    let e = ask(&mut bob, "news", "p2").await;
    assert_eq!(
        (e["code"].as_str(), &e["request_id"]),
        (Some("bad_request"), &json!("p2")),
        "{e}"
    );
    let e = ask(&mut bob, "room:1", "p3").await;
    assert_eq!(
        (e["code"].as_str(), &e["request_id"]),
        (Some("forbidden"), &json!("p3")),
        "{e}"
    );

    // Durable events still flow, once, with ids; no presence frame is in history.
    alice
        .send(json!({"type": "publish", "channel": "chat:1", "event": "msg", "data": 1, "request_id": "m"}))
        .await;
    let ev = until_frame(&mut bob, DEADLINE, "the event", |f| f["type"] == "event").await;
    assert!(ev["event_id"].is_string(), "{ev}");
    let (_, history) = b.api_get("/api/history/chat:1").await;
    assert_eq!(history["events"].as_array().unwrap().len(), 1, "{history}");

    alice
        .send(json!({"type": "unsubscribe", "channel": "chat:1", "request_id": "u"}))
        .await;
    expect_presence(&mut bob, "leave", "chat:1", "alice", &ida).await;
    expect_presence(&mut watcher, "leave", "chat:1", "alice", &ida).await;
    assert_eq!(http_clients(&b, "chat:1").await, [member("bob", &idb, "gw-b")]);

    subscribe(&mut alice, "chat:1").await;
    expect_presence(&mut bob, "join", "chat:1", "alice", &ida).await;
    alice.close().await;
    expect_presence(&mut bob, "leave", "chat:1", "alice", &ida).await;
    assert_eq!(http_clients(&a, "chat:1").await, [member("bob", &idb, "gw-b")]);
    // The watcher's pattern changed no presence: that batch was empty, not a broker error.
    for node in [&a, &b] {
        let errors = metric_value(&node.metrics().await, r#"wsgw_broker_errors_total{op="presence"}"#);
        assert_eq!(errors.unwrap_or(0.0), 0.0, "{}", node.node_id);
    }
}

#[tokio::test]
async fn a_sigkilled_nodes_members_leave_once_the_presence_ttl_passes() {
    let redis = RedisServer::start().await;
    let env = [("WSGW_PRESENCE_CHANNELS", "chat:*"), ("WSGW_PRESENCE_TTL_MS", "1500")];
    let mut a = GatewayProc::start(&redis, "gw-a", &env).await;
    let b = GatewayProc::start(&redis, "gw-b", &env).await;
    let (mut alice, wa) = a.connect(&token("alice", &["chat:*"], &[])).await;
    let (mut alice2, wa2) = a.connect(&token("alice", &["chat:*"], &[])).await;
    let (mut bob, wb) = b.connect(&token("bob", &["chat:*"], &[])).await;
    let (ida, ida2, idb) = (id_of(&wa), id_of(&wa2), id_of(&wb));
    subscribe(&mut bob, "chat:1").await;
    subscribe(&mut alice, "chat:1").await;
    expect_presence(&mut bob, "join", "chat:1", "alice", &ida).await;
    subscribe(&mut bob, "chat:2").await;
    subscribe(&mut alice2, "chat:2").await;
    expect_presence(&mut bob, "join", "chat:2", "alice", &ida2).await;
    wait_until("both channels list alice's sockets", || async {
        http_clients(&b, "chat:1").await.len() == 2 && http_clients(&b, "chat:2").await.len() == 2
    })
    .await;

    let killed = tokio::time::Instant::now();
    a.kill();
    drop((alice, alice2));
    // Nobody tells anyone: B notices A's entries expired (1.5 s) and sends their leave.
    let mut left = Vec::new();
    while left.len() < 2 {
        let f = until_frame(&mut bob, Duration::from_secs(8), "leave", |f| f["type"] == "leave").await;
        left.push((f["channel"].as_str().unwrap().to_string(), f.clone()));
    }
    left.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(left[0].1, presence_frame("leave", "chat:1", "alice", &ida));
    assert_eq!(left[1].1, presence_frame("leave", "chat:2", "alice", &ida2));
    assert!(
        killed.elapsed() >= Duration::from_millis(1000),
        "leave only after the TTL, took {:?}",
        killed.elapsed()
    );
    assert_eq!(http_clients(&b, "chat:1").await, [member("bob", &idb, "gw-b")]);
    assert_eq!(http_clients(&b, "chat:2").await, [member("bob", &idb, "gw-b")]);
    // Once, not on every tick.
    bob.assert_silent(Duration::from_millis(1200)).await;
}

#[tokio::test]
async fn the_member_list_is_right_again_after_redis_restarts_empty() {
    let mut redis = RedisServer::start().await;
    let env = [("WSGW_PRESENCE_CHANNELS", "chat:*"), ("WSGW_PRESENCE_TTL_MS", "3000")];
    let a = GatewayProc::start(&redis, "gw-a", &env).await;
    let b = GatewayProc::start(&redis, "gw-b", &env).await;
    let (mut alice, wa) = a.connect(&token("alice", &["chat:*"], &[])).await;
    let (mut bob, wb) = b.connect(&token("bob", &["chat:*"], &[])).await;
    let (ida, idb) = (id_of(&wa), id_of(&wb));
    subscribe(&mut alice, "chat:1").await;
    subscribe(&mut bob, "chat:1").await;
    let both = [member("alice", &ida, "gw-a"), member("bob", &idb, "gw-b")];
    wait_until("both listed", || async { http_clients(&b, "chat:1").await == both }).await;

    // Without persistence: every key is gone when it comes back.
    redis.restart().await;
    let r = redis.conn().await;
    a.wait_ready().await;
    b.wait_ready().await;
    wait_until("the nodes wrote their members again", || async {
        let n: i64 = redis::cmd("ZCARD")
            .arg("ws:presence:channel:chat:1")
            .query_async(&mut r.clone())
            .await
            .unwrap();
        n == 2
    })
    .await;
    assert_eq!(http_clients(&a, "chat:1").await, both);
    assert_eq!(http_clients(&b, "chat:1").await, both);

    // And it keeps following changes, once B's pub/sub is back (an event through A shows it).
    wait_until("A publishes again", || async {
        a.api_post("/api/publish", json!({"channel": "chat:1", "event": "e", "data": 1}))
            .await
            .0
            == 200
    })
    .await;
    until_frame(&mut bob, DEADLINE, "the event", |f| f["type"] == "event").await;
    alice.close().await;
    expect_presence(&mut bob, "leave", "chat:1", "alice", &ida).await;
    assert_eq!(http_clients(&a, "chat:1").await, [member("bob", &idb, "gw-b")]);
    let answer = ask(&mut bob, "chat:1", "p").await;
    assert_eq!(clients(&answer["clients"]), [member("bob", &idb, "gw-b")]);
}

#[tokio::test]
async fn a_socket_taken_over_on_another_node_is_listed_once_on_its_new_node() {
    let redis = RedisServer::start().await;
    let env = [("WSGW_PRESENCE_CHANNELS", "chat:*"), ("WSGW_PRESENCE_TTL_MS", "1500")];
    let a = GatewayProc::start(&redis, "gw-a", &env).await;
    let b = GatewayProc::start(&redis, "gw-b", &env).await;
    let t = token("alice", &["chat:*"], &[]);
    let (mut alice, wa) = a.connect(&t).await;
    let (mut bob, wb) = b.connect(&token("bob", &["chat:*"], &[])).await;
    let (ida, idb) = (id_of(&wa), id_of(&wb));
    subscribe(&mut bob, "chat:1").await;
    subscribe(&mut alice, "chat:1").await;
    expect_presence(&mut bob, "join", "chat:1", "alice", &ida).await;

    // The same id opens on B while A still holds it: A closes its socket as replaced.
    let (mut again, w) = b.connect_query(&format!("connection_id={ida}&token={t}")).await;
    assert_eq!(w["connection_id"], ida.as_str(), "{w}");
    subscribe(&mut again, "chat:1").await;
    let moved = [member("alice", &ida, "gw-b"), member("bob", &idb, "gw-b")];
    wait_until("alice is listed on B only", || async {
        http_clients(&a, "chat:1").await == moved
    })
    .await;
    // And stays so past a TTL (A's entry is not written again, nobody announces her leave).
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(http_clients(&b, "chat:1").await, moved);
    while let Ok(Some(f)) = bob.next_within(Duration::from_millis(100)).await {
        assert!(
            !(f["type"] == "leave" && f["connection_id"] == ida.as_str()),
            "a takeover is not a leave: {f}"
        );
    }
}

/// On a real Redis Cluster (3 primaries with replicas): members on two nodes, on channels of two
/// shards held by different primaries, see each other join and leave; the sets are on the
/// `{global}` slot and the frames travel as sharded messages of each channel's shard; a SIGKILLed
/// node's members leave once the TTL passes.
#[tokio::test]
async fn members_on_two_nodes_of_a_redis_cluster_see_each_other_join_and_leave() {
    use common::redis_cluster::{RedisCluster, owner};
    let cluster = RedisCluster::start();
    // Two channels whose shards two different primaries hold.
    let shard_owner = |ch: &str| owner(&cluster, &format!("ws:{{{}}}seq", wsgw_protocol::shard_of(ch)));
    let first = "chat:0".to_string();
    let second = (1..200)
        .map(|n| format!("chat:{n}"))
        .find(|ch| shard_owner(ch) != shard_owner(&first))
        .expect("a channel on another primary");
    let seeds = cluster.seeds.join(",");
    let env = [
        ("WSGW_REDIS_CLUSTER", seeds.as_str()),
        ("WSGW_PRESENCE_CHANNELS", "chat:*"),
        ("WSGW_PRESENCE_TTL_MS", "1500"),
    ];
    let mut a = GatewayProc::start_env("gw-a", &env).await;
    let b = GatewayProc::start_env("gw-b", &env).await;
    let (mut alice, wa) = a.connect(&token("alice", &["chat:*"], &["chat:*"])).await;
    let (mut bob, wb) = b.connect(&token("bob", &["chat:*"], &[])).await;
    let (ida, idb) = (id_of(&wa), id_of(&wb));

    for ch in [&first, &second] {
        subscribe(&mut bob, ch).await;
        expect_presence(&mut bob, "join", ch, "bob", &idb).await;
        subscribe(&mut alice, ch).await;
        expect_presence(&mut alice, "join", ch, "alice", &ida).await;
        expect_presence(&mut bob, "join", ch, "alice", &ida).await;
        let both = [member("alice", &ida, "gw-a"), member("bob", &idb, "gw-b")];
        let answer = ask(&mut bob, ch, &format!("p-{ch}")).await;
        assert_eq!(clients(&answer["clients"]), both, "{answer}");
        assert_eq!(http_clients(&a, ch).await, both);
    }
    // The members live on the `{global}` slot.
    let global = owner(&cluster, "ws:{global}nodes");
    let n = common::redis_cluster::redis_cli(global, &["ZCARD", &format!("ws:{{global}}presence:channel:{first}")]);
    assert_eq!(n, "2");

    alice
        .send(json!({"type": "unsubscribe", "channel": first, "request_id": "u"}))
        .await;
    expect_presence(&mut bob, "leave", &first, "alice", &ida).await;
    assert_eq!(http_clients(&b, &first).await, [member("bob", &idb, "gw-b")]);

    // Node A dies: nobody tells anyone; B reaps alice's entry on `second` after the TTL.
    a.kill();
    drop(alice);
    let left = until_frame(&mut bob, Duration::from_secs(10), "leave", |f| f["type"] == "leave").await;
    assert_eq!(left, presence_frame("leave", &second, "alice", &ida));
    assert_eq!(http_clients(&b, &second).await, [member("bob", &idb, "gw-b")]);
}

/// Node B's clock runs 10 s ahead of Redis's and node A's (libfaketime). Presence expiry times
/// are dated by Redis's clock, so through three of B's reaps (a 3 s TTL: one a second) B tells
/// bob of no `leave` for alice, who is live on A, and B lists her on the channel, under her user
/// and A in the node registry.
#[tokio::test]
async fn a_node_whose_clock_runs_ahead_does_not_take_live_members_of_another_for_gone() {
    let redis = RedisServer::start().await;
    let env = [("WSGW_PRESENCE_CHANNELS", "chat:*"), ("WSGW_PRESENCE_TTL_MS", "3000")];
    let a = GatewayProc::start(&redis, "gw-a", &env).await;
    let skew = common::clock::offset_env("+10s");
    let mut env_b = env.to_vec();
    env_b.extend(skew.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let b = GatewayProc::start(&redis, "gw-b", &env_b).await;
    let (mut alice, wa) = a.connect(&token("alice", &["chat:*"], &[])).await;
    let (mut bob, wb) = b.connect(&token("bob", &["chat:*"], &[])).await;
    let (ida, idb) = (id_of(&wa), id_of(&wb));
    subscribe(&mut bob, "chat:1").await;
    expect_presence(&mut bob, "join", "chat:1", "bob", &idb).await;
    subscribe(&mut alice, "chat:1").await;
    expect_presence(&mut bob, "join", "chat:1", "alice", &ida).await;

    bob.assert_silent(Duration::from_millis(3500)).await;
    let both = [member("alice", &ida, "gw-a"), member("bob", &idb, "gw-b")];
    assert_eq!(http_clients(&b, "chat:1").await, both);
    let (status, user) = b.api_get("/api/presence/users/alice").await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["connections"].as_array().map(Vec::len), Some(1), "{user}");
    let (_, stats) = b.api_get("/api/stats").await;
    assert_eq!(stats["cluster"]["nodes"], 2, "{stats}");
    drop(alice);
}
