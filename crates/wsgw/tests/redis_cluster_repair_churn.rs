//! A shard repaired while its channels keep being subscribed. A channel that joins a shard
//! while the shard's repair runs makes that repair start over (it did not read the new
//! channel: sharded_repair.rs), with the shard's live messages still held. Under a steady
//! stream of subscribes to one shard, say a reconnect storm, the repair could start over and
//! over, and a socket following the shard would get nothing until the stream stopped. After
//! two such redos the shard takes no new channel until its repair is delivered
//! (`Shard::closed_to_joins`): those subscribes wait for it, and are answered then.
//!
//! Here, on a real cluster with one gateway: four sockets subscribe and unsubscribe, in turn,
//! channels of `room:0`'s shard, each a channel new to the node, while the pub/sub connections
//! of every primary are killed. An event published on `room:0` after the kill must reach the
//! socket that follows it while the subscribes go on, and every subscribe must be answered.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::cluster::{GatewayProc, pubsub_reconnects};
use common::redis_cluster::{RedisCluster, redis_cli};
use common::*;
use serde_json::{Value, json};
use wsgw_protocol::shard_of;

const CHURNERS: usize = 4;
/// How long the subscribes go on after the kill at least; they also go on until the event came.
const CHURN_AFTER_KILL: Duration = Duration::from_millis(1500);
/// How long the event published after the kill may take to reach its socket.
const WITHIN: Duration = Duration::from_secs(3);
/// An upper bound on each churner's subscribes, whatever the machine's speed.
const MAX_ROUNDS: u64 = 20_000;

/// The next frame other than a ping, each within `DEADLINE`.
async fn next_frame(c: &mut Client) -> Value {
    loop {
        let f = c.next().await.expect("the socket stays open");
        if f["type"] != "ping" {
            return f;
        }
    }
}

/// The next answer to a request: a frame other than a ping, an event, or a `gap` (which the
/// faults bring to any socket, for its own `user:` and `connection:` channels too).
async fn next_answer(c: &mut Client) -> Value {
    loop {
        let f = next_frame(c).await;
        if f["type"] != "event" && f["type"] != "gap" {
            return f;
        }
    }
}

/// Subscribes and unsubscribes `channels` in turn until `stop`; counts subscribes answered
/// `subscribed` in `ok` and with an `error` frame in `refused`.
async fn churn(
    mut c: Client,
    channels: Vec<String>,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
) {
    for round in 0..MAX_ROUNDS {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let ch = &channels[round as usize % channels.len()];
        c.send(json!({"type": "subscribe", "channel": ch, "request_id": round}))
            .await;
        let f = next_answer(&mut c).await;
        match f["type"].as_str() {
            Some("subscribed") if f["request_id"] == round => ok.fetch_add(1, Ordering::Relaxed),
            Some("error") if f["request_id"] == round => {
                refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            _ => panic!("subscribe {ch} answered with {f}"),
        };
        c.send(json!({"type": "unsubscribe", "channel": ch, "request_id": format!("u{round}")}))
            .await;
        let f = next_answer(&mut c).await;
        assert!(
            f["type"] == "unsubscribed" && f["channel"] == ch.as_str(),
            "unsubscribe {ch} answered with {f}"
        );
    }
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_repair_ends_while_its_channels_keep_being_subscribed() {
    let cluster = RedisCluster::start();
    let seeds = cluster.seeds.join(",");
    // Four sockets stand for a storm of many: their frame rate is not limited.
    let env = [("WSGW_REDIS_CLUSTER", seeds.as_str()), ("WSGW_RATE_LIMIT_PER_S", "0")];
    let node = Arc::new(GatewayProc::start_env("gw-churn", &env).await);
    let a = "room:0".to_string();
    let same_shard: Vec<String> = (1..20_000)
        .map(|n| format!("room:{n}"))
        .filter(|c| shard_of(c) == shard_of(&a))
        .take(CHURNERS * 50)
        .collect();
    assert_eq!(same_shard.len(), CHURNERS * 50, "enough channels in room:0's shard");

    let (mut w, _) = node.connect(&token("alice", &["room:*"], &[])).await;
    w.send(json!({"type": "subscribe", "channel": a, "request_id": "a"}))
        .await;
    let f = next_frame(&mut w).await;
    assert_eq!(f["type"], "subscribed", "{f}");
    let before = node.publish_n(&a, 1).await;
    let f = next_frame(&mut w).await;
    assert_eq!(event_id_of(&f), before, "the first event arrives: {f}");

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut churners = Vec::new();
    for (i, channels) in same_shard.chunks(50).enumerate() {
        let (c, _) = node.connect(&token(&format!("churn{i}"), &["room:*"], &[])).await;
        let (stop, ok, refused) = (stop.clone(), ok.clone(), refused.clone());
        churners.push(tokio::spawn(churn(c, channels.to_vec(), stop, ok, refused)));
    }
    // The subscribes are under way before the kill.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while ok.load(Ordering::Relaxed) < 20 {
        assert!(tokio::time::Instant::now() < deadline, "the churners subscribe");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reconnects = pubsub_reconnects(&node).await;
    let primaries = cluster.primaries.clone();
    tokio::task::spawn_blocking(move || {
        for p in primaries {
            redis_cli(p, &["CLIENT", "KILL", "TYPE", "pubsub"]);
        }
    })
    .await
    .unwrap();
    let killed_at = tokio::time::Instant::now();
    let ok_at_kill = ok.load(Ordering::Relaxed);
    let after = node.publish_n(&a, 2).await;

    // The event published after the kill reaches `alice` while the subscribes go on: in order,
    // after a `gap` at most.
    let got = loop {
        let Ok(f) = tokio::time::timeout_at(killed_at + WITHIN, next_frame(&mut w)).await else {
            panic!(
                "the event published after the kill did not come within {WITHIN:?}, while {} subscribes were answered",
                ok.load(Ordering::Relaxed) - ok_at_kill
            );
        };
        match f["type"].as_str() {
            Some("gap") => continue,
            Some("event") => break event_id_of(&f),
            _ => panic!("unexpected frame {f}"),
        }
    };
    let took = killed_at.elapsed();
    assert_eq!(got, after, "the event after the kill, and nothing else");
    let ok_by_then = ok.load(Ordering::Relaxed) - ok_at_kill;

    tokio::time::sleep_until(killed_at + CHURN_AFTER_KILL).await;
    stop.store(true, Ordering::Relaxed);
    for c in churners {
        tokio::time::timeout(DEADLINE, c)
            .await
            .expect("each churner ends")
            .expect("each subscribe answered");
    }
    let killed = pubsub_reconnects(&node).await - reconnects;
    let (ok, refused) = (ok.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
    eprintln!(
        "event after the kill in {took:?}; {ok_by_then} subscribes answered by then; {ok} subscribed, {refused} refused in all; {killed} pub/sub connections lost"
    );
    assert!(killed >= 1.0, "the kill reached the node's pub/sub connections");
    assert!(ok - ok_at_kill >= 100, "the subscribes went on after the kill");
    assert!(refused * 10 <= ok, "at most one subscribe in ten refused");
    w.close().await;
}
