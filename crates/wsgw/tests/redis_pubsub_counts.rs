//! The gateway's single-primary pub/sub connection over `rediss://` or a Unix socket (redis-rs's
//! `aio::PubSub`; over plain TCP the node reads it itself, `broker/redis/sub_conn.rs`) keeps no
//! name per subscription: `vendor/redis` counts them from the count each confirmation ends with, to know
//! how many confirmations a zero-argument `UNSUBSCRIBE` or `PUNSUBSCRIBE` is answered with
//! (WSGW-PATCH.md). A miscount shows here: a count too high leaves the unsubscribe waiting for
//! confirmations that never come, one too low hands a confirmation left over to the next
//! command. Against a real redis-server, in RESP2 and RESP3.

use crate::common;

use std::time::Duration;

use common::cluster::RedisServer;
use futures_util::StreamExt;
use redis::AsyncCommands;

const WAIT: Duration = Duration::from_secs(5);

async fn within<T>(what: &str, f: impl std::future::Future<Output = redis::RedisResult<T>>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(r) => r.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => panic!("{what}: no answer within {WAIT:?}"),
    }
}

/// A zero-argument `UNSUBSCRIBE` (or `PUNSUBSCRIBE`) with `PING <marker>` sent right behind it:
/// both complete, and the ping gets its own answer (in subscribed mode RESP2 answers
/// `["pong", marker]`).
async fn unsubscribe_all_then_ping(sink: &redis::aio::PubSubSink, protocol: &str, patterns: bool, marker: &str) {
    let (mut unsub, mut ping) = (sink.clone(), sink.clone());
    let none = Vec::<String>::new();
    let (u, p) = tokio::join!(
        within(marker, async move {
            if patterns {
                unsub.punsubscribe(none).await
            } else {
                unsub.unsubscribe(none).await
            }
        }),
        within("ping", ping.ping_message::<redis::Value>(marker)),
    );
    let ((), v) = (u, p);
    assert!(
        format!("{v:?}").contains(marker),
        "{protocol}: PING {marker} got another command's answer: {v:?}"
    );
}

#[tokio::test]
async fn zero_argument_unsubscribes_wait_for_exactly_their_confirmations() {
    let redis = RedisServer::start().await;
    for protocol in ["resp2", "resp3"] {
        let url = format!("redis://127.0.0.1:{}/?protocol={protocol}", redis.port);
        let client = redis::Client::open(url).unwrap();
        let mut publisher = client.get_multiplexed_async_connection().await.unwrap();
        let (mut sink, mut stream) = client.get_async_pubsub().await.unwrap().split();

        within("subscribe a b", sink.subscribe(&["a", "b"])).await;
        within("psubscribe p*", sink.psubscribe("p*")).await;
        // Already subscribed: Redis confirms it, and the count stays at 3.
        within("subscribe a again", sink.subscribe("a")).await;
        within("subscribe c d", sink.subscribe(&["c", "d"])).await;

        // Four channels: four confirmations, the last one leaving the pattern's 1 in the count.
        // A command sent right behind it gets its own answer, not a confirmation left over.
        unsubscribe_all_then_ping(&sink, protocol, false, "after-channels").await;
        within("subscribe e", sink.subscribe("e")).await;

        for (channel, body) in [("a", "to a"), ("pq", "to pq"), ("e", "to e")] {
            let _: i64 = within("publish", publisher.publish(channel, body)).await;
        }
        let mut got = Vec::new();
        while got.len() < 2 {
            let msg = tokio::time::timeout(WAIT, stream.next())
                .await
                .unwrap_or_else(|_| panic!("{protocol}: messages missing; got {got:?}"))
                .expect("the stream is open");
            got.push((msg.get_channel_name().to_string(), msg.get_payload::<String>().unwrap()));
        }
        let want = [("pq".to_string(), "to pq".to_string()), ("e".into(), "to e".into())];
        assert_eq!(
            got, want,
            "{protocol}: only the pattern and the channel subscribed after"
        );

        // One pattern: one confirmation; the channel `e` stays. Then `e`, then nothing left of
        // either kind: Redis still answers with one confirmation each.
        unsubscribe_all_then_ping(&sink, protocol, true, "after-patterns").await;
        unsubscribe_all_then_ping(&sink, protocol, false, "after-e").await;
        unsubscribe_all_then_ping(&sink, protocol, false, "nothing-left").await;
        unsubscribe_all_then_ping(&sink, protocol, true, "no-pattern-left").await;
    }
}
