//! A channel subscribed while its id-shard is being repaired. Killing a Redis Cluster node's
//! pub/sub connections makes it hold each shard's messages and read what it missed from history
//! (sharded_repair.rs). The running repair reads only the channels it started with. Had it
//! delivered what it read, a socket's floor for the shard would have passed the new channel's
//! events that the next repair brings, and they would have been dropped as already sent: a
//! socket told `subscribed` with `recovered:true` would miss events (the cluster torture test
//! caught that once, as `false_recovered` after its pub/sub kill).
//!
//! Here, on a real cluster with one gateway: rounds of `CLIENT KILL TYPE pubsub` on every
//! primary, each with a catch-up subscribe to the shard's second channel a few ms after, under a
//! steady publisher on both channels. Every event of both channels that the socket followed is
//! checked against what was published: in order, once, none missing unless a `gap` named its
//! channel first.

use crate::common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::{GatewayProc, patient_conn, pubsub_reconnects};
use common::redis_cluster::{RedisCluster, owner, redis_cli, two_channels_of_one_shard};
use common::*;
use serde_json::{Value, json};
use wsgw_protocol::{EventId, shard_of};

const ROUNDS: u64 = 24;
/// An upper bound on the publisher's events, whatever the machine's speed.
const MAX_PUBLISHED: u64 = 60_000;

/// Reads frames until `done` says the last one ends the step, keeping every frame but pings.
async fn read_until(w: &mut Client, log: &mut Vec<Value>, mut done: impl FnMut(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no end of the step in time");
        let Ok(f) = w.next_within(Duration::from_millis(50)).await else {
            continue;
        };
        let f = f.expect("the socket stays open");
        if f["type"] == "ping" {
            continue;
        }
        let end = done(&f);
        log.push(f);
        if end {
            return;
        }
    }
}

/// Checks the socket's frames against what was published on `channel` (in publish order):
/// from a `subscribed` with `recovered:true`, every event after `from` (the catch-up's start)
/// comes, in order, once, unless a `gap` naming the channel came first. Returns violations, each
/// with the frames before it.
fn check(channel: &str, frames: &[Value], published: &[EventId], catch_ups: &[Option<EventId>]) -> Vec<String> {
    let index: HashMap<EventId, usize> = published.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut bad = Vec::new();
    // Index in `published` of the next event due; None: not checked until an event comes.
    let mut due: Option<usize> = None;
    let mut gap = false;
    let mut rounds = catch_ups.iter();
    for (at, f) in frames.iter().enumerate() {
        let seen = bad.len();
        match f["type"].as_str() {
            Some("subscribed") if f["channel"] == channel => {
                let from = rounds.next().copied().flatten();
                due = match (f["recovered"].as_bool(), from) {
                    (Some(true), Some(from)) => Some(index[&from] + 1),
                    _ => None,
                };
                gap = false;
            }
            Some("gap") if f["channels"].as_array().is_some_and(|c| c.iter().any(|c| c == channel)) => {
                gap = true;
            }
            Some("event") if f["channel"] == channel => {
                let id = event_id_of(f);
                let Some(&i) = index.get(&id) else {
                    bad.push(format!("{channel}: {id} was never published"));
                    continue;
                };
                match due {
                    Some(d) if i < d => bad.push(format!("{channel}: {id} again or out of order")),
                    Some(d) if i > d && !gap => bad.push(format!(
                        "{channel}: {} missing before {id}, with no gap",
                        published[d..i]
                            .iter()
                            .map(|e| e.to_string())
                            .collect::<Vec<_>>()
                            .join(" ")
                    )),
                    _ => {}
                }
                due = Some(i + 1);
                gap = false;
            }
            _ => {}
        }
        if bad.len() > seen {
            let before = frames[at.saturating_sub(16)..=at].iter().map(brief);
            let said = format!(
                "{}\n    after: {}",
                bad.pop().unwrap_or_default(),
                before.collect::<Vec<_>>().join(", ")
            );
            bad.push(said);
        }
    }
    bad
}

/// A frame in a few words, for a violation's context.
fn brief(f: &Value) -> String {
    let ch = f["channel"].as_str().unwrap_or("");
    match f["type"].as_str().unwrap_or("?") {
        "event" => format!("{ch} {}", f["event_id"].as_str().unwrap_or("?")),
        "subscribed" => format!(
            "subscribed {ch} recovered={} replayed={}",
            f["recovered"], f["replayed"]
        ),
        "gap" => format!("gap {}", f["channels"]),
        other => format!("{other} {ch}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_subscribed_during_its_shards_repair_misses_nothing() {
    let cluster = RedisCluster::start();
    let seeds = cluster.seeds.join(",");
    let node = Arc::new(GatewayProc::start_env("gw-join", &[("WSGW_REDIS_CLUSTER", seeds.as_str())]).await);
    let (a, b) = two_channels_of_one_shard();
    let t = token("alice", &["room:*"], &[]);
    let (mut w, _) = node.connect(&t).await;
    let mut log = Vec::new();
    w.send(json!({"type": "subscribe", "channel": a, "request_id": "a"}))
        .await;
    read_until(&mut w, &mut log, |f| f["type"] == "subscribed").await;
    // Where the first round catches `b` up from.
    let mut cursor = node.publish_n(&b, 0).await;

    let published: Arc<Mutex<Vec<(bool, EventId)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // `FCALL wsgw_publish` on the shard's primary, as a backend does, about 1,000 a second.
    let s = shard_of(&a);
    let keys = move |c: &str| [format!("ws:{{{s}}}seq"), format!("ws:{{{s}}}history:{c}")];
    let primary = owner(&cluster, &keys(&a)[0]);
    let mut redis = patient_conn(&format!("redis://127.0.0.1:{primary}")).await;
    let publisher = {
        let (published, stop, a, b) = (published.clone(), stop.clone(), a.clone(), b.clone());
        tokio::spawn(async move {
            for n in 1..=MAX_PUBLISHED {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let on_b = n % 2 == 0;
                let channel = if on_b { &b } else { &a };
                let id: String = redis::cmd("FCALL")
                    .arg("wsgw_publish")
                    .arg(2)
                    .arg(&keys(channel)[..])
                    .arg(channel)
                    .arg("e")
                    .arg(format!("{{\"n\":{n}}}"))
                    .query_async(&mut redis)
                    .await
                    .expect("FCALL wsgw_publish");
                published.lock().unwrap().push((on_b, id.parse().expect("an event id")));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let reconnects = pubsub_reconnects(&node).await;
    let mut catch_ups = Vec::new();
    for round in 0..ROUNDS {
        let primaries = cluster.primaries.clone();
        let kill = tokio::task::spawn_blocking(move || {
            for p in primaries {
                redis_cli(p, &["CLIENT", "KILL", "TYPE", "pubsub"]);
            }
        });
        // 0 to 12 ms after the kill: while the node's repairs run, or just before.
        tokio::time::sleep(Duration::from_millis(round * 7 % 13)).await;
        let sub = json!({"type": "subscribe", "channel": b, "request_id": round, "last_event_id": cursor.to_string()});
        w.send(sub).await;
        catch_ups.push(Some(cursor));
        kill.await.unwrap();
        read_until(&mut w, &mut log, |f| f["type"] == "subscribed" && f["channel"] == b).await;
        // Live events of both channels for a while, then `b` is dropped again.
        let until = tokio::time::Instant::now() + Duration::from_millis(150);
        read_until(&mut w, &mut log, |_| tokio::time::Instant::now() >= until).await;
        w.send(json!({"type": "unsubscribe", "channel": b})).await;
        read_until(&mut w, &mut log, |f| f["type"] == "unsubscribed" && f["channel"] == b).await;
        if let Some(last) = log.iter().rev().find(|f| f["type"] == "event" && f["channel"] == b) {
            cursor = event_id_of(last);
        }
    }
    stop.store(true, Ordering::Relaxed);
    publisher.await.expect("the publisher ran to its end");
    let last = node.publish_n(&a, 0).await;
    read_until(&mut w, &mut log, |f| f["type"] == "event" && event_id_of(f) == last).await;

    let published = published.lock().unwrap().clone();
    let on = |want_b: bool| -> Vec<EventId> {
        published
            .iter()
            .filter(|(on_b, _)| *on_b == want_b)
            .map(|(_, id)| *id)
            .collect()
    };
    let (mut on_a, mut on_b) = (on(false), on(true));
    on_a.push(last);
    on_b.insert(0, catch_ups[0].unwrap());
    let mut bad = check(&a, &log, &on_a, &[None]);
    bad.extend(check(&b, &log, &on_b, &catch_ups));
    let count = |ty: &str| log.iter().filter(|f| f["type"] == ty).count();
    let recovered = log
        .iter()
        .filter(|f| f["type"] == "subscribed" && f["channel"] == b && f["recovered"] == true)
        .count();
    let killed = pubsub_reconnects(&node).await - reconnects;
    eprintln!(
        "{} events published, {} delivered, {} gaps, {recovered} of {ROUNDS} catch-ups recovered, {killed} pub/sub connections lost",
        published.len(),
        count("event"),
        count("gap")
    );
    assert!(bad.is_empty(), "{} violations:\n{}", bad.len(), bad.join("\n"));
    assert!(killed >= 1.0, "the kills reached the node's pub/sub connections");
    assert!(
        recovered > 0,
        "some catch-up was recovered, so the check above checked something"
    );
    w.close().await;
}
