//! Redis goes away and comes back: sockets stay open, nothing durable is lost or repeated.

use crate::common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::flood::signal;
use common::*;
use redis::AsyncCommands;
use serde_json::json;
use wsgw_protocol::EventId;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_drops_no_socket_and_loses_no_durable_event() {
    let mut redis = RedisServer::start_persistent().await;
    let a = GatewayProc::start(&redis, "gw-a", &[]).await;
    let b = GatewayProc::start(&redis, "gw-b", &[]).await;
    let (mut c1, _) = a.connect(&token("u1", &[], &[])).await;
    let (mut c2, _) = b.connect(&token("u2", &[], &[])).await;
    {
        let mut r = redis.conn().await;
        let id = fcall_publish(&mut r, "broadcast", "e0", &json!(0)).await;
        assert_eq!(c1.expect("event").await["event_id"], id.as_str());
        assert_eq!(c2.expect("event").await["event_id"], id.as_str());
    }
    // Concurrent API publishes leave node A with many pooled command connections, idle when
    // Redis dies.
    let burst = futures_util::future::join_all((0..32).map(|i| {
        a.api_post(
            "/api/publish",
            json!({"channel": "user:u1", "event": "burst", "data": i}),
        )
    }))
    .await;
    assert!(burst.iter().all(|(status, _)| *status == 200), "{burst:?}");
    assert_eq!(c1.events(32).await.len(), 32);

    redis.kill();
    // The nodes notice and say so.
    wait_not_ready(&a, "node A reports not ready").await;
    // Publishing through the API fails fast with 503 instead of hanging.
    let started = Instant::now();
    let (status, body) = a
        .api_post(
            "/api/publish",
            json!({"channel": "broadcast", "event": "lost", "data": 1}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "503 took {:?}",
        started.elapsed()
    );

    // Redis comes back with its data; a backend publishes at once, before the nodes have
    // resubscribed: exactly the window a real outage leaves.
    redis.restart().await;
    let mut r = redis.conn().await;
    let mut expected_c1 = Vec::new();
    let mut expected_c2 = Vec::new();
    for i in 1..=6 {
        let channel = if i % 2 == 0 { "broadcast" } else { "user:u1" };
        let id = fcall_publish(&mut r, channel, "during", &json!(i)).await;
        expected_c1.push(id.clone());
        if channel == "broadcast" {
            expected_c2.push(id);
        }
    }
    assert_eq!(
        c1.event_ids(expected_c1.len()).await,
        expected_c1,
        "node A repaired the gap, in order, once"
    );
    assert_eq!(c2.event_ids(expected_c2.len()).await, expected_c2, "node B too");

    // Live delivery resumes, and nothing is repeated.
    a.wait_ready().await;
    b.wait_ready().await;
    let live = fcall_publish(&mut r, "broadcast", "live", &json!(7)).await;
    assert_eq!(c1.expect("event").await["event_id"], live.as_str());
    assert_eq!(c2.expect("event").await["event_id"], live.as_str());
    // Node A's pooled command connections died with Redis: no API publish after the restart
    // may land on one of them.
    for i in 0..32 {
        let (status, body) = a
            .api_post(
                "/api/publish",
                json!({"channel": "broadcast", "event": "api", "data": i}),
            )
            .await;
        assert_eq!(status, 200, "API publish {i} after the restart: {body}");
        let id = body["event_id"].as_str().unwrap().to_string();
        assert_eq!(c1.expect("event").await["event_id"], id.as_str());
        assert_eq!(c2.expect("event").await["event_id"], id.as_str());
    }
    c1.assert_silent(Duration::from_millis(200)).await;
    assert!(c1.closed.is_none() && c2.closed.is_none(), "no socket was dropped");
    let m = a.metrics().await;
    assert!(metric_value(&m, "wsgw_redis_reconnects_total").unwrap() >= 1.0);
}

#[tokio::test]
async fn a_pubsub_connection_killed_by_redis_is_replaced_and_the_gap_repaired() {
    let redis = RedisServer::start().await;
    let a = GatewayProc::start(&redis, "gw-a", &[]).await;
    let (mut c, _) = a.connect(&token("k", &[], &[])).await;
    let mut r = redis.conn().await;
    let first = fcall_publish(&mut r, "user:k", "e", &json!(0)).await;
    assert_eq!(c.expect("event").await["event_id"], first.as_str());

    // What a failover or a proxy does to a subscriber: its connection vanishes.
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(killed >= 1);
    let mut ids = Vec::new();
    for i in 1..=5 {
        ids.push(fcall_publish(&mut r, "user:k", "e", &json!(i)).await);
    }
    let got: Vec<String> = c
        .events(5)
        .await
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, ids);
    a.wait_ready().await;
    let live = fcall_publish(&mut r, "user:k", "e", &json!(6)).await;
    assert_eq!(c.expect("event").await["event_id"], live.as_str());
    assert!(c.closed.is_none());
}

#[tokio::test]
async fn a_new_client_during_an_outage_is_told_to_come_back_later() {
    let mut redis = RedisServer::start().await;
    let a = GatewayProc::start(&redis, "gw-a", &[]).await;
    redis.kill();
    wait_not_ready(&a, "node A reports not ready").await;
    let mut c = Client::connect(&a.ws_url(&format!("token={}", token("late", &[], &[])))).await;
    let (code, frames) = c.until_closed().await;
    assert_eq!(code, Some(1013), "{frames:?}");
    assert!(frames.iter().any(|f| f["code"] == "unavailable"), "{frames:?}");
}

/// A TCP proxy to Redis that can silently stop forwarding on the connections it already has
/// (sockets stay open, bytes go nowhere): what a failover behind a proxy or a dead NAT entry
/// does to a long-lived pub/sub connection. New connections work normally.
struct Blackhole {
    port: u16,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Blackhole {
    async fn start(upstream: u16) -> Blackhole {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let generation = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let g = generation.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let born = g.load(Ordering::Acquire);
                let g = g.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let g2 = g.clone();
                    // Keep the sockets open but drop every byte once the generation moved on.
                    let up = tokio::spawn(async move {
                        let mut buf = vec![0u8; 16384];
                        while let Ok(n) = cr.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            if g2.load(Ordering::Acquire) == born && sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                    let mut buf = vec![0u8; 16384];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if g.load(Ordering::Acquire) == born && cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = up.await;
                });
            }
        });
        Blackhole { port, generation, task }
    }

    /// Existing connections go silent.
    fn swallow_existing(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_pubsub_goes_silently_deaf_notices_by_its_canary_and_recovers() {
    let redis = RedisServer::start().await;
    let proxy = Blackhole::start(redis.port).await;
    let url = format!("redis://127.0.0.1:{}", proxy.port);
    let a = GatewayProc::start(&redis, "gw-a", &[("WSGW_REDIS_URL", url.as_str())]).await;
    let (mut c, _) = a.connect(&token("d", &[], &[])).await;
    let mut r = redis.conn().await; // straight to Redis, like any backend
    let first = fcall_publish(&mut r, "user:d", "e", &json!(0)).await;
    assert_eq!(c.expect("event").await["event_id"], first.as_str());

    proxy.swallow_existing();
    let mut ids = Vec::new();
    for i in 1..=3 {
        ids.push(fcall_publish(&mut r, "user:d", "e", &json!(i)).await);
    }
    // Green but deaf is not allowed: the missing canary takes the node out of rotation...
    wait_not_ready(&a, "the deaf node reports not ready").await;
    // ...and it reconnects, resubscribes and repairs what it missed.
    let got: Vec<String> = c
        .events(3)
        .await
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, ids);
    a.wait_ready().await;
    let live = fcall_publish(&mut r, "user:d", "e", &json!(4)).await;
    assert_eq!(c.expect("event").await["event_id"], live.as_str());
    assert!(c.closed.is_none());
}

/// Redis loses its data (a restart without persistence) while a client is away, with one event
/// it missed. Whichever clock runs behind, the resume says `recovered:false`: the new data's
/// epoch is past every id issued before, so nothing vouches for what followed the client's id.
/// `ids_ahead_ms`: the lost Redis issued ids this far ahead of the clock (its own clock ran
/// ahead of the one that replaces it).
async fn lost_events_are_not_vouched_for(node_env: &[(String, String)], ids_ahead_ms: u64) {
    let mut redis = RedisServer::start().await;
    let env: Vec<(&str, &str)> = node_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let node = GatewayProc::start(&redis, "gw-a", &env).await;
    let t = token("skew", &[], &[]);
    let (c, _) = node.connect(&t).await;
    let seen = seen_then_missed(&redis, c, ids_ahead_ms).await;

    redis.restart().await;
    let mut r = redis.conn().await;
    // The node comes back first: it records the new data's epoch and sequence before anyone
    // publishes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: u32 = redis::cmd("EXISTS")
            .arg("ws:epoch")
            .arg("ws:seq")
            .query_async(&mut r)
            .await
            .unwrap();
        if n == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node did not prepare the restarted Redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    resume_says_not_recovered(&node, &mut r, &t, seen).await;
}

/// Redis's clock, in ms.
async fn redis_ms(r: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(r).await.unwrap();
    s * 1000 + us / 1000
}

/// Publishes one event `c` (user `skew`) gets, `ids_ahead_ms` ahead of Redis's clock, closes
/// `c`, and publishes one more it misses; returns the id `c` has.
async fn seen_then_missed(redis: &RedisServer, mut c: Client, ids_ahead_ms: u64) -> EventId {
    let mut r = redis.conn().await;
    if ids_ahead_ms > 0 {
        let ahead = EventId::new(redis_ms(&mut r).await + ids_ahead_ms, 0);
        let _: () = r.set("ws:seq", ahead.to_string()).await.unwrap();
    }
    fcall_publish(&mut r, "user:skew", "x", &json!("seen")).await;
    let seen = c.expect("event").await["event_id"].as_str().unwrap().parse().unwrap();
    c.close().await;
    fcall_publish(&mut r, "user:skew", "x", &json!("lost")).await;
    seen
}

/// Once Redis's clock is past `seen`, publishes an event (its history is then newer than
/// `seen`, as after a long outage), and resumes user `skew` (token `t`) from `seen`: the event
/// after it was lost, so `recovered:false`, and what is there is still sent.
async fn resume_says_not_recovered(
    node: &GatewayProc,
    r: &mut redis::aio::MultiplexedConnection,
    t: &str,
    seen: EventId,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if redis_ms(r).await > seen.ms {
            break;
        }
        assert!(Instant::now() < deadline, "Redis's clock did not pass {seen}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = fcall_publish(r, "user:skew", "x", &json!("after")).await;
    assert!(after.parse::<EventId>().unwrap() > seen, "{after} after {seen}");

    // The node has prepared the restarted Redis; it serves again once it has repaired.
    node.wait_ready().await;
    let (mut c, w) = node.connect_query(&format!("token={t}&last_event_id={seen}")).await;
    assert_eq!(
        w["recovered"], false,
        "the event after {seen} was lost with Redis's data: {w}"
    );
    assert_eq!(c.expect("event").await["data"], "after", "what is there is still sent");
}

#[tokio::test]
async fn a_node_whose_clock_runs_behind_does_not_vouch_for_events_redis_lost() {
    lost_events_are_not_vouched_for(&clock::offset_env("-30s"), 0).await;
}

#[tokio::test]
async fn a_redis_back_with_its_clock_behind_the_lost_ids_does_not_vouch_for_them() {
    // Ahead by more than the node takes to come back, so the node records the epoch while
    // Redis's clock is still before the client's id.
    lost_events_are_not_vouched_for(&[], 8000).await;
}

#[tokio::test]
async fn a_node_that_saw_ids_redis_lost_moves_the_epoch_another_node_wrote_past_them() {
    let mut redis = RedisServer::start().await;
    let y = GatewayProc::start(&redis, "gw-y", &[]).await;
    let t = token("skew", &[], &[]);
    let (c, _) = y.connect(&t).await;
    let (mut watcher, _) = y.connect(&token("watch", &[], &[])).await;
    let seen = seen_then_missed(&redis, c, 8000).await;

    // Node Y sleeps through the restart, so node X, which never saw those ids, is first to
    // write the new data's epoch: from Redis's clock, before the lost ids.
    signal(y.pid(), "-STOP");
    redis.restart().await;
    let _x = GatewayProc::start(&redis, "gw-x", &[]).await;
    let mut r = redis.conn().await;
    let epoch: u64 = r.get("ws:epoch").await.unwrap();
    assert!(epoch <= seen.ms, "X's epoch {epoch} is before {seen}");
    signal(y.pid(), "-CONT");
    // Y is back once it has repaired: the watcher's channel cannot be proven complete.
    assert_eq!(watcher.expect("gap").await["type"], "gap");
    resume_says_not_recovered(&y, &mut r, &t, seen).await;
}
