//! A Redis Cluster node that misses a channel's message with no word of it from Redis or the
//! client library (torture_cluster caught such a loss). Each message names its channel's
//! previous durable event, so the next one shows the hole: the channel's sockets get a `gap`
//! first, and the node repairs the shard from history, so they also get the missing event, in
//! order, before the message that showed it. On a real cluster; the lost message is an event
//! stored as `wsgw_publish` stores it (sequence, history, meta), without its `SPUBLISH`.

use crate::common;

use common::cluster::GatewayProc;
use common::redis_cluster::{RedisCluster, owner, redis_cli, two_channels_of_one_shard};
use common::*;
use serde_json::{Value, json};
use wsgw_protocol::{EventId, shard_of};

/// Stores one event of channel ARGV[1] in shard ARGV[2] the way wsgw_publish does, and publishes
/// nothing. KEYS: the shard's sequence, the channel's history, the channel's meta.
const STORE_WITHOUT_PUBLISHING: &str = r#"
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seq = 0
local last = redis.call('GET', KEYS[1])
if last then
  local lms, lseq = string.match(last, '^(%d+)-(%d+)$')
  if tonumber(lms) >= ms then ms, seq = tonumber(lms), tonumber(lseq) + 1 end
end
local id = string.format('%d-%d', ms, seq)
redis.call('SET', KEYS[1], id)
local event_id = ARGV[2] .. '~' .. id
redis.call('XADD', KEYS[2], id, 'f', '{"type":"event","event_id":"' .. event_id .. '","channel":"'
  .. ARGV[1] .. '","event":"lost","data":{},"ts":' .. ms .. '}')
redis.call('HSET', KEYS[3], 'last', id)
return event_id
"#;

fn lose_one(cluster: &RedisCluster, channel: &str) -> EventId {
    let s = shard_of(channel).to_string();
    let keys = [
        format!("ws:{{{s}}}seq"),
        format!("ws:{{{s}}}history:{channel}"),
        format!("ws:{{{s}}}meta:{channel}"),
    ];
    let port = owner(cluster, &keys[0]);
    let out = redis_cli(
        port,
        &[
            "EVAL",
            STORE_WITHOUT_PUBLISHING,
            "3",
            &keys[0],
            &keys[1],
            &keys[2],
            channel,
            &s,
        ],
    );
    out.parse().unwrap_or_else(|_| panic!("the stored event's id: {out:?}"))
}

/// Frames up to and including the event `last`, skipping pings.
async fn frames_until(c: &mut Client, last: EventId) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let f = c.next().await.expect("the socket stays open");
        if f["type"] == "ping" {
            continue;
        }
        let done = f["type"] == "event" && event_id_of(&f) == last;
        got.push(f);
        if done {
            return got;
        }
    }
}

fn kinds(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| match f["type"].as_str() {
            Some("event") => format!("event {}", f["event_id"].as_str().unwrap_or("?")),
            Some("gap") => format!("gap {}", f["channels"]),
            other => format!("{other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_node_never_got_is_told_as_a_gap_and_delivered_from_history() {
    let cluster = RedisCluster::start();
    let seeds = cluster.seeds.join(",");
    let node = GatewayProc::start_env("gw-holes", &[("WSGW_REDIS_CLUSTER", seeds.as_str())]).await;
    let (room, other) = two_channels_of_one_shard();
    let t = token("alice", &["room:*"], &[]);
    let (mut c, _) = node.connect(&t).await;
    c.send(json!({"type": "subscribe", "channel": room, "request_id": 1}))
        .await;
    c.expect("subscribed").await;

    let first = node.publish_n(&room, 1).await;
    assert_eq!(event_id_of(&c.expect("event").await), first);

    let lost = lose_one(&cluster, &room);
    let next = node.publish_n(&room, 3).await;
    assert!(first < lost && lost < next, "{first} {lost} {next}");
    let got = frames_until(&mut c, next).await;
    assert_eq!(
        kinds(&got),
        [
            format!("gap [\"{room}\"]"),
            format!("event {lost}"),
            format!("event {next}")
        ],
        "the gap first, then the missing event from history, then the one that showed it"
    );
    assert_eq!(got[1]["event"], "lost");

    // A socket that also follows another channel of the shard: told too; the repair brings
    // the missing event, and nothing comes twice.
    c.send(json!({"type": "subscribe", "channel": other, "request_id": 2}))
        .await;
    c.expect("subscribed").await;
    let lost = lose_one(&cluster, &room);
    let on_other = node.publish_n(&other, 4).await;
    assert_eq!(event_id_of(&c.expect("event").await), on_other);
    let next = node.publish_n(&room, 5).await;
    let got = frames_until(&mut c, next).await;
    assert_eq!(got[0]["type"], "gap", "told first: {:?}", kinds(&got));
    let events: Vec<EventId> = got.iter().filter(|f| f["type"] == "event").map(event_id_of).collect();
    assert!(
        events == [next] || events == [lost, next],
        "the message that showed the hole, once, perhaps after the missing one: {:?}",
        kinds(&got)
    );

    // The channel flows on as before: no more gaps.
    let later = node.publish_n(&room, 6).await;
    assert_eq!(event_id_of(&c.expect("event").await), later);
    c.assert_silent(std::time::Duration::from_millis(300)).await;
    c.close().await;
}
