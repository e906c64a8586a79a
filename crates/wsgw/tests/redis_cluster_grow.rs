//! A gateway node on a real Redis Cluster (`WSGW_REDIS_CLUSTER`; 3 primaries with one replica
//! each, from `scripts/cluster.sh start 0 --redis-cluster 3`) puts the `wsgw` Function library
//! on a primary that joins later with `CLUSTER MEET` within 30 s of that primary getting slots
//! (a reshard with `redis-cli --cluster reshard`), with no `wsgw functions` running: the node's
//! own watcher (`watch_functions`, every 10 s) does it. Then a backend's `FCALL wsgw_publish`
//! on the new primary, and a publish through the node's HTTP API, reach a socket subscribed to
//! a channel of an id-shard that moved there, and one that was subscribed before the move.
//!
//! The join is a bare `CLUSTER MEET`, not `redis-cli --cluster add-node`: add-node copies the
//! Functions to the new node itself, which would leave the node's watcher nothing to do.

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::GatewayProc;
use common::redis_cluster::{LoneNode, RedisCluster, owner, redis_cli};
use common::*;
use serde_json::{Value, json};
use wsgw_protocol::{EventId, shard_of};

fn has_library(port: u16) -> bool {
    redis_cli(port, &["FUNCTION", "LIST", "LIBRARYNAME", "wsgw"]).contains("wsgw_publish")
}

/// Polls `cond` every 100 ms until it holds; fails at `deadline`. Returns when it held.
async fn wait_for(what: &str, deadline: Instant, mut cond: impl FnMut() -> bool) -> Instant {
    loop {
        if cond() {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The next event frame of `c`. A `gap` frame naming `channel` may come first: a socket that
/// followed the channel while its shard moved is told of a possible gap, since another primary
/// holds the shard now (docs/scaling.md).
async fn next_event(c: &mut Client, channel: &str) -> Value {
    loop {
        let f = c.next().await.unwrap_or_else(|| panic!("socket ended: {:?}", c.closed));
        match f["type"].as_str() {
            Some("event") => return f,
            Some("ping") => {}
            Some("gap")
                if f["channels"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|ch| ch == channel)) => {}
            _ => panic!("expected an event of {channel}, got {f}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_node_loads_the_function_on_a_primary_that_joins_later_and_delivers_from_it() {
    let cluster = RedisCluster::start();
    let seeds = cluster.seeds.join(",");
    let node = GatewayProc::start_env("gw-grow", &[("WSGW_REDIS_CLUSTER", seeds.as_str())]).await;
    let seed = cluster.primaries[0];
    let addr = |p: u16| format!("127.0.0.1:{p}");

    // The id-shard whose hash-tag slot is nearest the start of its owner's range: moving that
    // many slots (the lowest ones) from that owner gives the new primary this shard.
    let slot_of = |key: &str| -> u16 { redis_cli(seed, &["CLUSTER", "KEYSLOT", key]).parse().unwrap() };
    let range_start = |p: u16| -> u16 {
        let nodes = redis_cli(seed, &["CLUSTER", "NODES"]);
        let line = nodes.lines().find(|l| l.contains(&format!("{}@", addr(p)))).unwrap();
        let first = line.split_whitespace().nth(8).unwrap();
        first.split('-').next().unwrap().parse().unwrap()
    };
    let (shard, from, count) = (0..16u16)
        .map(|s| {
            let key = format!("ws:{{{s}}}seq");
            let from = owner(&cluster, &key);
            (s, from, slot_of(&key) - range_start(from) + 1)
        })
        .min_by_key(|(_, _, count)| *count)
        .unwrap();
    let channel = (0..)
        .map(|i| format!("room:{i}"))
        .find(|c| shard_of(c) == shard)
        .unwrap();

    // A socket following the channel before its shard moves.
    let t = token("alice", &["room:*"], &[]);
    let (mut before, _) = node.connect(&t).await;
    before
        .send(json!({"type": "subscribe", "channel": channel, "request_id": 1}))
        .await;
    before.expect("subscribed").await;

    // A fourth primary, joined with CLUSTER MEET only: nothing brings the library along.
    let joined = LoneNode::start(&cluster);
    let port = joined.port;
    assert_eq!(
        redis_cli(port, &["CLUSTER", "MEET", "127.0.0.1", &seed.to_string()]),
        "OK"
    );
    let new_id = redis_cli(port, &["CLUSTER", "MYID"]);
    wait_for(
        "every primary to know the new node",
        Instant::now() + Duration::from_secs(20),
        || {
            cluster.primaries.iter().all(|p| {
                redis_cli(*p, &["CLUSTER", "NODES"])
                    .lines()
                    .any(|l| l.starts_with(&new_id) && !l.contains("handshake"))
            })
        },
    )
    .await;
    // A MIGRATE into it (the shard's slot holds the node's epoch and config keys) is refused
    // with CLUSTERDOWN until it sees the cluster up itself.
    wait_for(
        "cluster_state:ok on the new node",
        Instant::now() + Duration::from_secs(20),
        || redis_cli(port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"),
    )
    .await;
    // The node's watcher skips a primary without slots: no backend call can reach it yet.
    assert!(
        !has_library(port),
        "a primary joined with CLUSTER MEET has no library yet"
    );

    // Slots for it. The 30 s run from the reshard's start, before its first slot moves.
    let from_id = redis_cli(from, &["CLUSTER", "MYID"]);
    let reshard_start = Instant::now();
    let reshard = Command::new("redis-cli")
        .args(["--cluster", "reshard", &addr(seed)])
        .args(["--cluster-from", &from_id, "--cluster-to", &new_id])
        .args(["--cluster-slots", &count.to_string(), "--cluster-yes"])
        .output()
        .unwrap();
    let reshard_end = Instant::now();
    assert!(reshard.status.success(), "{reshard:?}");
    let key = format!("ws:{{{shard}}}seq");
    assert_eq!(owner(&cluster, &key), port, "shard {shard} moved to the new primary");

    let loaded = wait_for(
        "the library on the new primary",
        reshard_start + Duration::from_secs(30),
        || has_library(port),
    )
    .await;
    eprintln!(
        "{count} slots (shard {shard}) resharded in {:?}; the library on the new primary {:?} after \
         the reshard began, {:?} after it ended",
        reshard_end - reshard_start,
        loaded - reshard_start,
        loaded.saturating_duration_since(reshard_end),
    );

    let mut ports = cluster.primaries.clone();
    ports.extend(&cluster.replicas);
    ports.push(port);
    wait_for(
        "cluster_state:ok on every node",
        Instant::now() + Duration::from_secs(20),
        || {
            ports
                .iter()
                .all(|p| redis_cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        },
    )
    .await;

    // A socket that subscribes after the move.
    let (mut after, _) = node.connect(&t).await;
    after
        .send(json!({"type": "subscribe", "channel": channel, "request_id": 2}))
        .await;
    after.expect("subscribed").await;

    // A backend's publish, run by the Function on the new primary.
    let out = Command::new("redis-cli")
        .args(["-c", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["FCALL", "wsgw_publish", "2"])
        .args([key.clone(), format!("ws:{{{shard}}}history:{channel}"), channel.clone()])
        .args(["note", r#"{"text":"hello"}"#])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let id: EventId = text
        .parse()
        .unwrap_or_else(|_| panic!("an event id of shard {shard}, not {text:?} ({out:?})"));
    assert_eq!(id.shard(), Some(shard), "{id}");
    // The socket that subscribed after the move gets it with nothing before it; the one that
    // followed the channel through the move may be told of a possible gap first.
    let e = after.expect("event").await;
    assert_eq!(
        (e["channel"].as_str(), event_id_of(&e)),
        (Some(channel.as_str()), id),
        "{e}"
    );
    assert_eq!(e["data"]["text"], "hello", "{e}");
    let e = next_event(&mut before, &channel).await;
    assert_eq!(
        (e["channel"].as_str(), event_id_of(&e)),
        (Some(channel.as_str()), id),
        "{e}"
    );

    // And one through the node's HTTP API, which runs the same Function there.
    let (status, body) = node
        .api_post(
            "/api/publish",
            json!({"channel": channel, "event": "e", "data": {"n": 2}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id2: EventId = body["event_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(id2.shard(), Some(shard), "{id2}");
    for c in [&mut after, &mut before] {
        let e = c.expect("event").await;
        assert_eq!(event_id_of(&e), id2, "{e}");
    }
    after.close().await;
    before.close().await;
}
