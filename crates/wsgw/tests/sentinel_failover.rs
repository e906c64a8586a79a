//! Redis Sentinel failover under load, against real processes: a primary, a replica and three
//! Sentinels (`redis-server --sentinel`), two gateway processes that find the primary through
//! `WSGW_REDIS_SENTINELS`, the exactness torture clients (subscribe, unsubscribe, catch up,
//! resume), steady sockets that must never be closed, and publishers through HTTP (with
//! `Idempotency-Key`) and through `FCALL wsgw_publish` on whatever primary the Sentinels name.
//! First `SENTINEL FAILOVER`, then a SIGKILL of the new primary. The torture checker then compares
//! what each client delivered with what the final primary's history holds.
//!
//! An event acknowledged by a primary and lost by asynchronous replication is in no history:
//! its deliveries are set aside (and counted) before the check; the clients that missed it
//! must have been told by a `gap` frame or `recovered:false`, which the checker verifies for
//! every event the final primary holds.
//!
//! ```sh
//! cargo test -p wsgw --test suite sentinel_failover:: -- --nocapture
//! ```

use crate::common;
use crate::torture_kit as torture;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::{GatewayProc, RedisServer};
use common::{API_KEY, Client, token};
use tokio::time::Instant;
use torture::checker::{self, Kind};
use torture::load::*;
use torture::model::*;
use torture::sim::{caught_up, spawn_clients};

const MASTER: &str = "wsgw-primary";

/// docs/backends.md, "Publishing through Sentinel": run against the topology when redis-py is there.
const PYTHON_SENTINEL_SNIPPET: &str = r#"import json
import os
import time
import uuid

import redis
from redis.sentinel import Sentinel

sentinels = [(h, int(p)) for h, p in (a.rsplit(':', 1) for a in os.environ['REDIS_SENTINELS'].split(','))]
primary = Sentinel(sentinels, socket_timeout=1).master_for(os.environ.get('REDIS_MASTER', 'wsgw'), socket_timeout=1)
key = str(uuid.uuid4())  # one key per event, made before the first attempt
for attempt in range(10):
    try:
        event_id = primary.fcall('wsgw_publish', 2, 'ws:seq', 'ws:history:user:42',
                                 'user:42', 'note', json.dumps({"text": "hello"}), '', '', '', key)
        break
    except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
        time.sleep(min(0.1 * 2 ** attempt, 2))  # the failover takes a few seconds
else:
    raise RuntimeError('no primary; retry later with the same key')
print(event_id.decode())"#;

/// Runs the Python snippet (if redis-py is installed) and returns the id it printed.
fn run_python_snippet(sentinel_ports: &[u16]) -> Option<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/backends.md")).unwrap();
    assert!(
        doc.contains(PYTHON_SENTINEL_SNIPPET),
        "docs/backends.md no longer contains:\n{PYTHON_SENTINEL_SNIPPET}"
    );
    let has_redis_py = std::process::Command::new("python3")
        .args(["-c", "import redis"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_redis_py {
        eprintln!("note: python3 has no `redis` module (pip install redis): the Sentinel snippet was not run");
        return None;
    }
    let list: Vec<String> = sentinel_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let out = std::process::Command::new("python3")
        .args(["-c", PYTHON_SENTINEL_SNIPPET])
        .env("REDIS_SENTINELS", list.join(","))
        .env("REDIS_MASTER", MASTER)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "snippet failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap().trim().to_string())
}

async fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> Option<T> {
    let mut c = redis_conn(&format!("redis://127.0.0.1:{port}")).await?;
    tokio::time::timeout(Duration::from_secs(2), cmd.query_async::<T>(&mut c))
        .await
        .ok()?
        .ok()
}

/// The primary's port as the first answering Sentinel names it.
async fn named_primary(sentinels: &[RedisServer]) -> Option<u16> {
    let mut cmd = redis::cmd("SENTINEL");
    cmd.arg("GET-MASTER-ADDR-BY-NAME").arg(MASTER);
    for s in sentinels {
        if let Some((_, port)) = query::<Option<(String, u16)>>(s.port, &cmd).await.flatten() {
            return Some(port);
        }
    }
    None
}

/// Waits until `cond` holds, or panics with `what` after `secs`.
async fn wait_for<F, Fut>(what: &str, secs: u64, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every Sentinel names the primary on `port`, sees one healthy replica and both other
/// Sentinels, and the primary streams to its replica: ready for a failover.
async fn topology_settled(sentinels: &[RedisServer], port: u16) -> bool {
    let info: Option<String> = query(port, redis::cmd("INFO").arg("replication")).await;
    if !info.is_some_and(|i| i.contains("role:master") && i.contains("state=online")) {
        return false;
    }
    for s in sentinels {
        let mut replicas = redis::cmd("SENTINEL");
        replicas.arg("REPLICAS").arg(MASTER);
        let mut peers = redis::cmd("SENTINEL");
        peers.arg("SENTINELS").arg(MASTER);
        let r: Option<Vec<HashMap<String, String>>> = query(s.port, &replicas).await;
        let p: Option<Vec<HashMap<String, String>>> = query(s.port, &peers).await;
        let healthy = r.is_some_and(|r| r.iter().any(|x| x.get("flags").is_some_and(|f| f == "slave")));
        if !healthy || p.is_none_or(|p| p.len() < 2) || named_primary(std::slice::from_ref(s)).await != Some(port) {
            return false;
        }
    }
    true
}

/// Ready, and has followed `n` failovers.
async fn node_followed(node: &GatewayProc, n: f64) -> bool {
    let ready = wsgw::http_client::client()
        .get(node.url("/ready"))
        .send()
        .await
        .is_ok_and(|r| r.status().as_u16() == 200);
    ready && common::metric_value(&node.metrics().await, "wsgw_redis_failovers_total").is_some_and(|v| v >= n)
}

/// What a publisher saw that a user must never see (anything but success or a clear 503),
/// and the events whose publish was acknowledged.
#[derive(Default)]
struct Wrong(Mutex<Vec<String>>, Mutex<Vec<(String, Id)>>);

/// `POST /api/publish` with an `Idempotency-Key`, retried with the same key until it is stored.
async fn http_publisher(seed: u64, shared: Arc<Shared>, wrong: Arc<Wrong>) {
    let mut rng = Rng::new(seed);
    let http = wsgw::http_client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let mut n = 0u64;
    while !shared.stop_publishing.load(Ordering::Acquire) {
        n += 1;
        let body = serde_json::json!({"channel": rng.channel(), "event": "tick", "data": {"p": "h", "n": n}});
        for _ in 0..200 {
            let Some((_, port)) = shared.random_node(&mut rng) else {
                break;
            };
            let r = http
                .post(format!("http://127.0.0.1:{port}/api/publish"))
                .bearer_auth(API_KEY)
                .header("Idempotency-Key", format!("h-{seed}-{n}"))
                .json(&body)
                .send()
                .await;
            let status = r.as_ref().map(|r| r.status().as_u16());
            match status {
                Ok(200) => {
                    let v: serde_json::Value = r.unwrap().json().await.unwrap_or_default();
                    if let Some(id) = v["event_id"].as_str().and_then(Id::parse) {
                        wrong
                            .1
                            .lock()
                            .unwrap()
                            .push((body["channel"].as_str().unwrap().into(), id));
                    }
                    shared.published_ok.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(503) | Err(_) => shared.publish_errors.fetch_add(1, Ordering::Relaxed),
                Ok(other) => {
                    wrong.0.lock().unwrap().push(format!("HTTP {other} on publish {n}"));
                    break;
                }
            };
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(8)).await;
    }
}

/// A backend publishing straight to Redis: asks the Sentinels for the primary, and on any
/// error asks again and retries with the same idempotency key (the 7th argument).
async fn fcall_publisher(seed: u64, sentinel_ports: Vec<u16>, shared: Arc<Shared>, wrong: Arc<Wrong>) {
    let mut rng = Rng::new(seed);
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    let mut n = 0u64;
    let mut ask = redis::cmd("SENTINEL");
    ask.arg("GET-MASTER-ADDR-BY-NAME").arg(MASTER);
    while !shared.stop_publishing.load(Ordering::Acquire) {
        n += 1;
        let channel = rng.channel();
        for attempt in 0..200 {
            if conn.is_none() {
                let s = sentinel_ports[attempt % sentinel_ports.len()];
                if let Some(Some((host, port))) = query::<Option<(String, u16)>>(s, &ask).await {
                    conn = redis_conn(&format!("redis://{host}:{port}")).await;
                }
            }
            let Some(c) = conn.as_mut() else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let call = redis::cmd("FCALL")
                .arg("wsgw_publish")
                .arg(2)
                .arg("ws:seq")
                .arg(format!("ws:history:{channel}"))
                .arg(channel)
                .arg("tick")
                .arg(format!("{{\"p\":\"f\",\"n\":{n}}}"))
                .arg(86_400_000u64)
                .arg(10_000_000u64)
                .arg("")
                .arg(format!("f-{seed}-{n}"))
                .query_async::<String>(c)
                .await;
            match call {
                Ok(id) => {
                    if let Some(id) = Id::parse(&id) {
                        wrong.1.lock().unwrap().push((channel.to_string(), id));
                    }
                    shared.published_ok.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) if e.to_string().contains("wsgw_publish:") => {
                    wrong.0.lock().unwrap().push(format!("FCALL refused its input: {e}"));
                    break;
                }
                Err(_) => {
                    shared.publish_errors.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(8)).await;
    }
}

/// A socket that must outlive both failovers: subscribes to one channel and reads until told
/// to stop. Returns how it ended (None: still open) and the newest id it got.
async fn steady(i: usize, port: u16, shared: Arc<Shared>) -> (Option<String>, Option<Id>, usize) {
    let t = token(&format!("steady{i}"), &["t:*"], &[]);
    let mut c = Client::connect(&format!("ws://127.0.0.1:{port}/ws?token={t}")).await;
    c.expect("welcome").await;
    let channel = CHANNELS[i % CHANNELS.len()];
    c.send(serde_json::json!({"type": "subscribe", "channel": channel}))
        .await;
    let (mut newest, mut gaps) = (None, 0);
    while !shared.stop.load(Ordering::Acquire) {
        match c.next_within(Duration::from_millis(200)).await {
            Err(()) => {}
            Ok(None) => return (Some(format!("{:?}", c.closed)), newest, gaps),
            Ok(Some(f)) if f["type"] == "event" => newest = f["event_id"].as_str().and_then(Id::parse).max(newest),
            Ok(Some(f)) if f["type"] == "gap" => gaps += 1,
            Ok(Some(_)) => {}
        }
    }
    (None, newest, gaps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_and_primary_kill_lose_nothing_silently() {
    let seed = 20_261_201u64;
    let primary = RedisServer::start().await;
    let replica = RedisServer::start_replica(primary.port).await;
    let mut redis = [primary, replica];
    let mut sentinels = Vec::new();
    for _ in 0..3 {
        sentinels.push(RedisServer::start_sentinel(MASTER, redis[0].port).await);
    }
    let first = redis[0].port;
    wait_for("the Sentinels to see the replica and each other", 30, || {
        topology_settled(&sentinels, first)
    })
    .await;

    let list = sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect::<Vec<_>>()
        .join(",");
    // The torture test's settings (torture/load.rs), through the Sentinels.
    let mut env = NODE_ENV.to_vec();
    env.push(("WSGW_REDIS_SENTINEL_MASTER", MASTER));
    env.push(("WSGW_REDIS_SENTINELS", &list));
    let nodes = vec![
        GatewayProc::start_env("gw-a", &env).await,
        GatewayProc::start_env("gw-b", &env).await,
    ];
    let shared = Arc::new(Shared::new(
        nodes.iter().map(|n| (n.node_id.clone(), n.port)).collect(),
        false,
    ));
    let wrong = Arc::new(Wrong::default());

    let steadies: Vec<_> = (0..16)
        .map(|i| tokio::spawn(steady(i, nodes[i % 2].port, shared.clone())))
        .collect();
    let passive_frames = Arc::new(AtomicU64::new(0));
    let passives = spawn_passives(40, &shared, &passive_frames);
    let (sims, progress) = spawn_clients(12, seed, &shared);
    let sentinel_ports: Vec<u16> = sentinels.iter().map(|s| s.port).collect();
    let snippet_ports = sentinel_ports.clone();
    let publishers = vec![
        tokio::spawn(http_publisher(seed ^ 1, shared.clone(), wrong.clone())),
        tokio::spawn(http_publisher(seed ^ 2, shared.clone(), wrong.clone())),
        tokio::spawn(fcall_publisher(seed ^ 3, sentinel_ports, shared.clone(), wrong.clone())),
    ];
    let say = |what: &str| println!("  +{:6.1}s {what}", shared.t_us() as f64 / 1e6);

    tokio::time::sleep(Duration::from_secs(5)).await;
    say(&format!(
        "{} publishes so far; SENTINEL FAILOVER",
        shared.published_ok.load(Ordering::Relaxed)
    ));
    let failover: Option<String> = query(sentinels[0].port, redis::cmd("SENTINEL").arg("FAILOVER").arg(MASTER)).await;
    assert_eq!(failover.as_deref(), Some("OK"), "SENTINEL FAILOVER accepted");
    wait_for("the Sentinels to name the replica", 30, || async {
        named_primary(&sentinels).await.is_some_and(|p| p != first)
    })
    .await;
    for n in &nodes {
        wait_for(&format!("{} to follow the failover", n.node_id), 30, || {
            node_followed(n, 1.0)
        })
        .await;
    }
    let second = named_primary(&sentinels).await.unwrap();
    say(&format!("nodes follow the new primary on port {second}"));

    tokio::time::sleep(Duration::from_secs(4)).await;
    wait_for("the old primary to replicate from the new one", 30, || {
        topology_settled(&sentinels, second)
    })
    .await;
    say("SIGKILL of the primary");
    redis.iter_mut().find(|r| r.port == second).unwrap().kill();
    wait_for("the Sentinels to promote the other server", 40, || async {
        named_primary(&sentinels).await.is_some_and(|p| p == first)
    })
    .await;
    for n in &nodes {
        wait_for(&format!("{} to follow the second failover", n.node_id), 30, || {
            node_followed(n, 2.0)
        })
        .await;
    }
    say("nodes follow the primary back on its first port");
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Drain, as the torture test does: stop publishing, let clients settle, publish one fence
    // event per channel, and wait until every live client has it.
    shared.stop_publishing.store(true, Ordering::Release);
    for p in publishers {
        p.await.unwrap();
    }
    shared.stop_passive.store(true, Ordering::Release);
    shared.quiesce.store(true, Ordering::Release);
    let settle = Instant::now() + Duration::from_secs(10);
    while Instant::now() < settle && progress.iter().any(|p| p.lock().unwrap().busy) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut r = redis_conn(&format!("redis://127.0.0.1:{first}"))
        .await
        .expect("final primary");
    if let Some(id) = tokio::task::spawn_blocking(move || run_python_snippet(&snippet_ports))
        .await
        .unwrap()
    {
        let stored: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg("ws:history:user:42")
            .arg(&id)
            .arg(&id)
            .query_async(&mut r)
            .await
            .unwrap();
        assert_eq!(
            stored.len(),
            1,
            "the snippet's event {id} is on the primary the Sentinels name"
        );
    }
    let final_at_us = shared.t_us();
    for ch in CHANNELS {
        fcall(&mut r, ch, "{\"fence\":true}").await.expect("fence publish");
    }
    let last: HashMap<String, Id> = read_published(&mut r)
        .await
        .into_iter()
        .filter_map(|(c, ids)| ids.last().map(|&l| (c, l)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && caught_up(&progress, &last) < progress.len() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, p) in progress.iter().enumerate() {
        if let Some(why) = p.lock().unwrap().behind(&last) {
            println!("    tc{i} not caught up: {why}");
        }
    }
    let steady_deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < steady_deadline && steadies.iter().any(|s| !s.is_finished()) {
        // Steady sockets stop with everything else; give them the fence first.
        if caught_up(&progress, &last) == progress.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    shared.stop.store(true, Ordering::Release);
    let mut logs = Vec::new();
    for s in sims {
        logs.push(s.await.unwrap());
    }
    let mut steady_gaps = 0;
    for (i, s) in steadies.into_iter().enumerate() {
        let (closed, newest, gaps) = s.await.unwrap();
        let channel = CHANNELS[i % CHANNELS.len()];
        assert_eq!(closed, None, "steady socket {i} was closed by a failover");
        assert_eq!(
            newest,
            last.get(channel).copied(),
            "steady socket {i} got {channel}'s last event"
        );
        steady_gaps += gaps;
    }
    for p in passives {
        let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
    }
    let acked = wrong.1.lock().unwrap().clone();
    let wrong = wrong.0.lock().unwrap().clone();
    assert!(
        wrong.is_empty(),
        "publishers saw errors other than `unavailable`: {wrong:?}"
    );

    // Check. Deliveries of events no history holds (acknowledged, then lost by asynchronous
    // replication) are set aside: the new primary never had them.
    let mut published = Published::new(read_published(&mut r).await);
    published.final_at_us = Some(final_at_us);
    let mut lost = std::collections::BTreeSet::new();
    for log in &mut logs {
        log.entries.retain(|e| match &e.rec {
            Rec::Event { id, channel, .. } if !published.contains(channel, *id) => {
                lost.insert(*id);
                false
            }
            _ => true,
        });
    }
    let acked_lost = acked.iter().filter(|(c, id)| !published.contains(c, *id)).count();
    let report = checker::check(&published, &logs);
    let fatal: Vec<&checker::Violation> = report
        .violations
        .iter()
        .filter(|v| v.kind != Kind::RuleDuplicate)
        .collect();
    println!(
        "sentinel failover: {} events in history, {} deliveries checked, {} publishes ok ({} retried errors), \
         {} acknowledged publishes not in the final history, {} of them delivered to torture clients before \
         being lost, {} gap frames on steady sockets, {} violations",
        report.events_published,
        report.deliveries_checked,
        shared.published_ok.load(Ordering::Relaxed),
        shared.publish_errors.load(Ordering::Relaxed),
        acked_lost,
        lost.len(),
        steady_gaps,
        fatal.len()
    );
    for v in fatal.iter().take(5) {
        println!(
            "  {}: {} on {} at +{:.3}s ids {:?}: {}",
            v.kind,
            logs[v.client].name,
            v.channel,
            v.t_us as f64 / 1e6,
            v.ids.iter().take(4).map(Id::to_string).collect::<Vec<_>>(),
            v.detail
        );
    }
    assert!(
        fatal.is_empty(),
        "{} exactness violations across the failovers",
        fatal.len()
    );
    assert!(report.deliveries_checked > 1000, "the run delivered events");
}
