//! Gateway nodes serving on a real Redis Cluster (`WSGW_REDIS_CLUSTER`; 3 primaries with one
//! replica each, from `scripts/cluster.sh start 0 --redis-cluster 3`): events of channels on 3
//! shards held by 3 different primaries reach the sockets of two nodes with ids that name their
//! shard; a client that reconnects with one joined cursor gets every missed event once, in
//! order; a single-primary id or a cursor naming one shard says `recovered:false` without an
//! error; kicks, presence and the HTTP API work across nodes; patterns are refused; after the
//! primaries are flushed, each shard's epoch comes back.

use crate::common;

use std::collections::BTreeMap;

use common::cluster::GatewayProc;
use common::redis_cluster::{RedisCluster, owner, redis_cli};
use common::*;
use serde_json::{Value, json};
use wsgw_protocol::{EventId, ShardCursor, shard_of};

/// Three `room:<n>` channels whose shards three different primaries hold.
fn channels_on_three_primaries(cluster: &RedisCluster) -> Vec<String> {
    let mut by_primary: BTreeMap<u16, String> = BTreeMap::new();
    for n in 0..200 {
        let ch = format!("room:{n}");
        let port = owner(cluster, &format!("ws:{{{}}}seq", shard_of(&ch)));
        by_primary.entry(port).or_insert(ch);
        if by_primary.len() == 3 {
            break;
        }
    }
    assert_eq!(by_primary.len(), 3, "the shards spread over 3 primaries");
    by_primary.into_values().collect()
}

async fn start_node(cluster: &RedisCluster, id: &str) -> GatewayProc {
    let seeds = cluster.seeds.join(",");
    GatewayProc::start_env(id, &[("WSGW_REDIS_CLUSTER", seeds.as_str())]).await
}

async fn publish(node: &GatewayProc, channel: &str, n: u64) -> EventId {
    let id = node.publish_n(channel, n).await;
    assert_eq!(id.shard(), Some(shard_of(channel)), "{channel}: {id}");
    id
}

/// A publish retried (with one idempotency key, so a retry never makes a second event) while
/// the cluster answers 503: a primary's failure pauses the cluster connection's requests while
/// it finds the new topology.
async fn publish_retrying(node: &GatewayProc, channel: &str, n: u64) -> EventId {
    let key = format!("{channel}-{n}-{}", std::process::id());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = wsgw::http_client::client()
            .post(node.url("/api/publish"))
            .bearer_auth(API_KEY)
            .header("idempotency-key", &key)
            .json(&json!({"channel": channel, "event": "e", "data": {"n": n}}))
            .send()
            .await
            .expect("http");
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if status == 200 {
            return body["event_id"].as_str().unwrap().parse().unwrap();
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "{channel}: 503 for 30 s: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_a_redis_cluster_deliver_and_resume_from_one_cursor_across_shards() {
    let cluster = RedisCluster::start();
    let rooms = channels_on_three_primaries(&cluster);
    let a = start_node(&cluster, "gw-a").await;
    let b = start_node(&cluster, "gw-b").await;

    // A resume proves a channel of a shard its cursor does not name (here `broadcast`,
    // `user:alice` and `connection:<id>`, which get no events) quiet only for history from
    // after the shard's data began: let the epochs the nodes set age past the clock margin.
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let newest_epoch = (0..16u16)
        .map(|s| {
            let out = std::process::Command::new("redis-cli")
                .args(["-c", "-p", &cluster.primaries[0].to_string()])
                .args(["GET", &format!("ws:{{{s}}}epoch")])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            text.parse::<u64>()
                .unwrap_or_else(|_| panic!("shard {s} has an epoch: {text:?}"))
        })
        .max()
        .unwrap();
    wait_until("every shard's epoch is older than the clock margin", || async move {
        newest_epoch + wsgw::history::CLOCK_SKEW_MS + 200 < now_ms()
    })
    .await;
    let t = token("alice", &["room:*"], &[]);
    let (mut c, w) = a.connect(&t).await;
    let conn = w["connection_id"].as_str().unwrap().to_string();
    for (i, room) in rooms.iter().enumerate() {
        c.send(json!({"type": "subscribe", "channel": room, "request_id": i}))
            .await;
        c.expect("subscribed").await;
    }
    // Live: published on the other node, through each shard's primary.
    let mut cursor = ShardCursor::default();
    for (i, room) in rooms.iter().enumerate() {
        let id = publish(&b, room, i as u64).await;
        let e = c.expect("event").await;
        assert_eq!((e["channel"].as_str(), event_id_of(&e)), (Some(room.as_str()), id));
        cursor.advance(id);
    }
    // Patterns cannot be followed with sharded pub/sub.
    c.send(json!({"type": "subscribe", "channel": "room:*", "request_id": 9}))
        .await;
    let e = c.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["request_id"].as_u64()),
        (Some("bad_request"), Some(9)),
        "{e}"
    );
    c.close().await;

    // Missed while away: 3 events on each of the 3 shards, interleaved.
    let mut missed: BTreeMap<String, Vec<EventId>> = BTreeMap::new();
    for n in 0..3 {
        for room in &rooms {
            missed
                .entry(room.clone())
                .or_default()
                .push(publish(&b, room, 10 + n).await);
        }
    }
    let joined = cursor.to_string();
    assert_eq!(joined.split(',').count(), 3, "{joined}");
    let (mut c, w) = b
        .connect_query(&format!("token={t}&connection_id={conn}&last_event_id={joined}"))
        .await;
    assert_eq!(
        (w["resumed"].as_bool(), w["recovered"].as_bool(), w["replayed"].as_u64()),
        (Some(true), Some(true), Some(9)),
        "{w}"
    );
    let mut got: BTreeMap<String, Vec<EventId>> = BTreeMap::new();
    for e in c.events(9).await {
        got.entry(e["channel"].as_str().unwrap().to_string())
            .or_default()
            .push(event_id_of(&e));
    }
    assert_eq!(got, missed, "every missed event once, in order per channel");
    let live = publish(&a, &rooms[1], 99).await;
    assert_eq!(event_id_of(&c.expect("event").await), live);
    c.assert_silent(std::time::Duration::from_millis(300)).await;
    c.close().await;

    // A single-primary id names none of the shards: not recovered, no error, live events flow.
    let (mut old, w) = a
        .connect_query(&format!("token={t}&connection_id={conn}&last_event_id=1700000000000-0"))
        .await;
    assert_eq!(
        (w["recovered"].as_bool(), w["replayed"].as_u64()),
        (Some(false), Some(0)),
        "{w}"
    );
    let live = publish(&b, &rooms[2], 100).await;
    let e = old.expect("event").await;
    assert_eq!(event_id_of(&e), live, "{e}");
    old.close().await;

    // One shard's id: that shard's missed events, the others not recovered.
    let before = publish(&b, &rooms[0], 200).await;
    let after0 = publish(&b, &rooms[0], 201).await;
    publish(&b, &rooms[1], 202).await;
    let (mut one, w) = a
        .connect_query(&format!("token={t}&connection_id={conn}&last_event_id={before}"))
        .await;
    assert_eq!(
        (w["recovered"].as_bool(), w["replayed"].as_u64()),
        (Some(false), Some(1)),
        "{w}"
    );
    assert_eq!(event_id_of(&one.expect("event").await), after0);
    one.close().await;

    // Kicks travel to every node; presence and stats see the whole cluster.
    let (mut bob, _) = a.connect(&token("bob", &[], &[])).await;
    let (status, p) = b.api_get("/api/presence/users/bob").await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["connections"].as_array().map(Vec::len), Some(1), "{p}");
    let (status, k) = b.api_post("/api/users/bob/disconnect", json!({})).await;
    assert_eq!(status, 200, "{k}");
    let (code, _) = bob.until_closed().await;
    assert_eq!(code, Some(4004));

    // A ban set on one node refuses the user's connects on the other.
    let (status, body) = b.api_post("/api/bans", json!({"user_id": "eve", "ttl_s": 600})).await;
    assert_eq!(status, 200, "{body}");
    let mut eve = Client::connect(&a.ws_url(&format!("token={}", token("eve", &[], &[])))).await;
    let first = eve.next().await.expect("a first frame");
    assert_eq!(
        (first["type"].as_str(), first["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{first}"
    );

    // A request reaches backends through `ws:{global}inbound`; the answer comes back with
    // SPUBLISH on the shard of `connection:<id>` (docs/backends.md).
    let (mut asker, w) = a.connect(&token("dave", &[], &[])).await;
    let asker_id = w["connection_id"].as_str().unwrap().to_string();
    asker
        .send(json!({"type": "request", "action": "search", "data": {"q": 1}, "request_id": "r1"}))
        .await;
    let port = cluster.primaries[0].to_string();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-c", "-p", &port])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    wait_until("the request is in ws:{global}inbound", || {
        let found = cli(&["XRANGE", "ws:{global}inbound", "-", "+"]).contains(&asker_id);
        async move { found }
    })
    .await;
    let channel = format!("connection:{asker_id}");
    let answer = json!({"type": "response", "request_id": "r1", "ok": true, "data": {"hits": 3}});
    cli(&[
        "SPUBLISH",
        &format!("ws:{{{}}}{channel}", shard_of(&channel)),
        &answer.to_string(),
    ]);
    let r = asker.expect("response").await;
    assert_eq!(
        (r["request_id"].as_str(), r["data"]["hits"].as_u64()),
        (Some("r1"), Some(3)),
        "{r}"
    );

    // 200 sockets connecting at once (their listens batched into one SSUBSCRIBE per shard)
    // each get the event published to their own user channel, spread over all 16 shards.
    let a = std::sync::Arc::new(a);
    let socks = futures_util::future::join_all((0..200).map(|i| {
        let a = a.clone();
        async move { a.connect(&token(&format!("u{i}"), &[], &[])).await.0 }
    }))
    .await;
    let shards: std::collections::BTreeSet<u16> = (0..200).map(|i| shard_of(&format!("user:u{i}"))).collect();
    assert_eq!(shards.len(), 16);
    for i in 0..200 {
        publish(&b, &format!("user:u{i}"), i).await;
    }
    for (i, mut s) in socks.into_iter().enumerate() {
        let e = s.expect("event").await;
        assert_eq!(e["channel"], format!("user:u{i}"), "{e}");
    }
}

/// The pid `scripts/cluster.sh` recorded for the Redis process on `port`.
fn redis_pid(cluster: &RedisCluster, port: u16) -> u32 {
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(cluster.run.join("cluster.json")).unwrap()).unwrap();
    let rc = &state["redis_cluster"];
    rc["primaries"]
        .as_array()
        .unwrap()
        .iter()
        .chain(rc["replicas"].as_array().unwrap())
        .find(|n| n["port"].as_u64() == Some(port as u64))
        .and_then(|n| n["pid"].as_u64())
        .unwrap_or_else(|| panic!("no pid recorded for port {port}")) as u32
}

/// A primary SIGKILLed while its shards are followed: its replica takes over, no socket is
/// closed, the sockets following its shards get a `gap` frame (the old primary may have
/// acknowledged events it never replicated), and only those; the other shards' events keep
/// flowing, every one of them, in order; after the failover its shards' events flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_failover_keeps_every_socket_and_reports_gaps_only_for_its_shards() {
    let cluster = RedisCluster::start();
    let rooms = channels_on_three_primaries(&cluster);
    let a = start_node(&cluster, "gw-a").await;
    let b = start_node(&cluster, "gw-b").await;
    let t = token("carol", &["room:*"], &[]);
    let (mut c, w) = a.connect(&t).await;
    let conn = w["connection_id"].as_str().unwrap().to_string();
    for (i, room) in rooms.iter().enumerate() {
        c.send(json!({"type": "subscribe", "channel": room, "request_id": i}))
            .await;
        c.expect("subscribed").await;
    }
    let before = publish(&b, &rooms[0], 0).await;
    assert_eq!(event_id_of(&c.expect("event").await), before);
    let victim = owner(&cluster, &format!("ws:{{{}}}seq", shard_of(&rooms[0])));
    let victim_shards: Vec<u16> = (0..16u16)
        .filter(|s| owner(&cluster, &format!("ws:{{{s}}}seq")) == victim)
        .collect();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &redis_pid(&cluster, victim).to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // Another primary's shard, throughout the failover: every event, in order.
    let mut sent = Vec::new();
    for n in 0..20 {
        sent.push(publish_retrying(&b, &rooms[1], n).await);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The killed primary's shard publishes again once its replica took over.
    let after = publish_retrying(&b, &rooms[0], 1).await;
    let mut got = Vec::new();
    let mut gap_named = Vec::new();
    let mut after_seen = false;
    while got.len() < sent.len() || !after_seen {
        let f = c
            .next()
            .await
            .unwrap_or_else(|| panic!("socket closed: {:?}", c.closed));
        match f["type"].as_str() {
            Some("event") if f["channel"] == rooms[1].as_str() => got.push(event_id_of(&f)),
            Some("event") if f["channel"] == rooms[0].as_str() && event_id_of(&f) == after => after_seen = true,
            Some("event") => {}
            Some("gap") => {
                for ch in f["channels"].as_array().unwrap() {
                    gap_named.push(ch.as_str().unwrap().to_string());
                }
            }
            Some("ping") => {}
            other => panic!("unexpected {other:?}: {f}"),
        }
    }
    assert_eq!(got, sent, "the other shard lost or reordered nothing");
    assert!(
        gap_named.contains(&rooms[0]),
        "the killed primary's shard is reported: {gap_named:?}"
    );
    for ch in &gap_named {
        assert!(
            victim_shards.contains(&shard_of(ch)),
            "{ch} (shard {}) is not on the killed primary (shards {victim_shards:?})",
            shard_of(ch)
        );
    }
    // A resume from before the failover cannot vouch for the killed primary's shard: the old
    // primary may have acknowledged events its replica never got.
    let mut cursor = ShardCursor::default();
    cursor.advance(before);
    cursor.advance(*sent.last().unwrap());
    c.close().await;
    let (_c, w) = b
        .connect_query(&format!("token={t}&connection_id={conn}&last_event_id={cursor}"))
        .await;
    assert_eq!(
        (w["resumed"].as_bool(), w["recovered"].as_bool()),
        (Some(true), Some(false)),
        "{w}"
    );
}

/// One socket on one node following one channel (the first of `channels_on_three_primaries`),
/// with one event received, and the shard's primary and its replica.
struct Followed {
    room: String,
    /// The channel's sharded pub/sub name.
    name: String,
    node: GatewayProc,
    socket: Client,
    /// The shard's primary, and its replica.
    old: u16,
    new: u16,
    /// Last, so it stops after the node and the socket.
    cluster: RedisCluster,
}

impl Followed {
    async fn start(user: &str) -> Followed {
        let cluster = RedisCluster::start();
        let room = channels_on_three_primaries(&cluster).remove(0);
        let shard = shard_of(&room);
        let node = start_node(&cluster, "gw-a").await;
        let (mut socket, _) = node.connect(&token(user, &["room:*"], &[])).await;
        socket
            .send(json!({"type": "subscribe", "channel": room, "request_id": 1}))
            .await;
        socket.expect("subscribed").await;
        let first = publish(&node, &room, 0).await;
        assert_eq!(event_id_of(&socket.expect("event").await), first);
        let old = owner(&cluster, &format!("ws:{{{shard}}}seq"));
        let new = *cluster
            .replicas
            .iter()
            .find(|&&r| redis_cli(r, &["INFO", "replication"]).contains(&format!("master_port:{old}")))
            .expect("the primary has a replica");
        let f = Followed {
            name: format!("ws:{{{shard}}}{room}"),
            cluster,
            room,
            node,
            socket,
            old,
            new,
        };
        assert_eq!(f.subscribers(old), 1, "the node is subscribed on the primary");
        f
    }

    /// The node's subscriptions to the channel on the Redis node on `port`.
    fn subscribers(&self, port: u16) -> u32 {
        let out = redis_cli(port, &["PUBSUB", "SHARDNUMSUB", &self.name]);
        out.lines()
            .last()
            .and_then(|n| n.trim().parse::<u32>().ok())
            .unwrap_or(0)
    }

    /// The events the socket gets up to the last of `sent` (gaps and pings aside) are `sent`:
    /// each once, in order.
    async fn expect_exactly(&mut self, sent: &[EventId]) {
        let mut got = Vec::new();
        while got.last() != sent.last() {
            let f = self
                .socket
                .next()
                .await
                .unwrap_or_else(|| panic!("socket closed after {got:?}: {:?}", self.socket.closed));
            match f["type"].as_str() {
                Some("event") => got.push(event_id_of(&f)),
                Some("gap" | "ping") => {}
                other => panic!("unexpected {other:?}: {f}"),
            }
        }
        assert_eq!(got, sent, "every event after the failover, once, in order");
    }
}

/// A manual failover (`CLUSTER FAILOVER` on a replica) of a followed shard: the old primary,
/// a replica now, unsubscribes the shard's channels, and the node resubscribes them. Its client
/// library's slot map can still name the old primary, and a replica accepts `SSUBSCRIBE`: a
/// subscription left there gets the shard's messages late, through the cluster bus, and loses
/// those sent while that link is down. So the node ends up subscribed on the new primary, and
/// every event published after the failover reaches the socket once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_manual_failover_the_node_is_subscribed_on_the_new_primary() {
    let mut f = Followed::start("dave").await;
    assert_eq!(redis_cli(f.new, &["CLUSTER", "FAILOVER"]), "OK");
    wait_until("the replica takes over", || async {
        redis_cli(f.new, &["ROLE"]).starts_with("master")
    })
    .await;
    wait_until("the node is subscribed on the new primary", || async {
        f.subscribers(f.new) == 1
    })
    .await;
    let mut sent = Vec::new();
    for n in 1..=20 {
        sent.push(publish_retrying(&f.node, &f.room, n).await);
    }
    f.expect_exactly(&sent).await;
}

/// A redis-server this test started again; killed when dropped.
struct Restarted(std::process::Child);

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A followed shard's primary SIGKILLed, its replica promoted, and the old primary started
/// again at once (it rejoins as a replica, as in the torture test). The node's client library
/// may still map the shard to the old primary's address when it resubscribes, and a replica
/// accepts `SSUBSCRIBE`: the node must end up subscribed on the new primary, and every event
/// published after reaches the socket once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_primary_is_killed_and_restarted_the_node_is_subscribed_on_the_new_primary() {
    let mut f = Followed::start("erin").await;
    let dir = redis_cli(f.old, &["CONFIG", "GET", "dir"])
        .lines()
        .last()
        .unwrap()
        .to_string();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &redis_pid(&f.cluster, f.old).to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while !redis_cli(f.new, &["ROLE"]).starts_with("master") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replica was not promoted in 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _restarted = Restarted(
        std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &f.old.to_string()])
            .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "2000", "--save", "", "--appendonly", "yes"])
            .args(["--dir", &dir, "--daemonize", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts"),
    );
    let mut sent = Vec::new();
    for n in 1..=30 {
        sent.push(publish_retrying(&f.node, &f.room, n).await);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    wait_until("the node is subscribed on the new primary", || async {
        f.subscribers(f.new) >= 1
    })
    .await;
    sent.push(publish_retrying(&f.node, &f.room, 31).await);
    f.expect_exactly(&sent).await;
}

/// A FLUSHALL of every primary (the data is gone; the Function stays): each shard's epoch comes
/// back within a presence refresh, so replays from ids issued after it are exact again, and
/// one from before it says `recovered:false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_every_primary_is_flushed_each_shards_epoch_comes_back() {
    let cluster = RedisCluster::start();
    let room = channels_on_three_primaries(&cluster).remove(0);
    let seeds = cluster.seeds.join(",");
    let node = GatewayProc::start_env(
        "gw-a",
        &[("WSGW_REDIS_CLUSTER", seeds.as_str()), ("WSGW_PRESENCE_TTL_MS", "900")],
    )
    .await;
    let before = publish(&node, &room, 1).await;
    for &port in &cluster.primaries {
        assert_eq!(common::redis_cluster::redis_cli(port, &["FLUSHALL"]), "OK");
    }
    let epoch_of = |s: u16| {
        let key = format!("ws:{{{s}}}epoch");
        common::redis_cluster::redis_cli(owner(&cluster, &key), &["GET", &key])
    };
    wait_until("every shard's epoch is written again", || {
        let all = (0..16u16).all(|s| !epoch_of(s).is_empty());
        async move { all }
    })
    .await;
    // Ids issued after the flush replay exactly (the epoch is older than them)...
    let first = publish(&node, &room, 2).await;
    let second = publish(&node, &room, 3).await;
    let t = token("alice", &["room:*"], &[]);
    let (mut c, _) = node.connect(&t).await;
    c.send(json!({"type": "subscribe", "channel": room, "last_event_id": first.to_string(), "request_id": 1}))
        .await;
    let s = c.expect("subscribed").await;
    assert_eq!(
        (s["recovered"].as_bool(), s["replayed"].as_u64()),
        (Some(true), Some(1)),
        "{s}"
    );
    assert_eq!(event_id_of(&c.expect("event").await), second);
    // ...and one from before it does not.
    c.send(json!({"type": "unsubscribe", "channel": room, "request_id": 2}))
        .await;
    c.expect("unsubscribed").await;
    c.send(json!({"type": "subscribe", "channel": room, "last_event_id": before.to_string(), "request_id": 3}))
        .await;
    let s = c.expect("subscribed").await;
    assert_eq!(s["recovered"].as_bool(), Some(false), "{s}");
}
