//! Exactness torture test: real redis-server (AOF, appendfsync always) and 3 real gateway
//! processes (one of them with per-core runtimes); torture clients that subscribe, unsubscribe, catch up and resume on random nodes;
//! publishers (FCALL and HTTP); passive sockets for fan-out; faults on a schedule (node SIGKILL,
//! Redis killed and restarted from its AOF, pub/sub connections killed, Redis paused). Then a
//! checker compares what each client delivered with what the history streams hold.
//!
//! ```sh
//! cargo test -p wsgw --test suite torture::torture_exactness -- --nocapture   # ~60 s of chaos
//! WSGW_TORTURE_SECS=600 WSGW_TORTURE_SEED=7 cargo test --release -p wsgw --test suite torture::torture_exactness -- --nocapture
//! cargo test -p wsgw --test suite torture_kit::checker_tests                  # the checker's unit tests
//! ```
//! Also: `WSGW_TORTURE_CLIENTS` (24), `WSGW_TORTURE_PASSIVE` (200), `WSGW_TORTURE_RATE` (events/s, 150);
//! `WSGW_TORTURE_EXPLAIN_ALL=1` prints the history of the first violation of every kind;
//! `WSGW_TORTURE_DUMP=1` writes every client's whole log to the temporary directory.
//!
//! tests/torture_cluster.rs runs the same clients and checker over a real 3-primary Redis
//! Cluster, with faults of its own (primary SIGKILL and failover, slot migration).

use crate::common;
use crate::torture_kit as torture;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use common::cluster::{GatewayProc, RedisServer};
use common::metric_value;
use tokio::time::Instant;
use torture::finish;
use torture::load::*;
use torture::model::*;
use torture::sim::spawn_clients;

const NODES: usize = 3;

/// NODE_ENV, plus quiet node logs (the faults make them warn a lot) unless WSGW_TEST_LOG is set.
/// The node in slot 1 runs `WSGW_RUNTIME=per_core` with two runtimes, so the checker covers
/// sockets spread over per-core runtimes as well as the default work-stealing runtime. The node
/// in slot 2 gathers its pub/sub input for `WSGW_WRITE_DELAY_MS=20` before writing it out. The
/// node in slot 0 paces its channels (`WSGW_WRITE_PACE_MS=200`, every fan-out counting as
/// large): the busy channels (about 20 events a second each) and the patterns, above 1.5
/// events per 200 ms, go out at most once per 200 ms, several events per burst.
fn node_env(slot: usize) -> Vec<(&'static str, &'static str)> {
    let mut env = NODE_ENV.to_vec();
    if slot == 0 {
        env.extend([("WSGW_WRITE_PACE_MS", "200"), ("WSGW_WRITE_PACE_MIN_SOCKETS", "1")]);
    }
    if slot == 1 {
        env.extend([("WSGW_RUNTIME", "per_core"), ("WSGW_WORKER_THREADS", "2")]);
    }
    if slot == 2 {
        env.push(("WSGW_WRITE_DELAY_MS", "20"));
    }
    if std::env::var("WSGW_TEST_LOG").is_err() {
        env.push(("WSGW_LOG", "error"));
    }
    env
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    PubsubKill,
    NodeKill,
    PauseAll,
    RedisRestart,
    PauseWrite,
}

const SCHEDULE: [Fault; 8] = [
    Fault::PubsubKill,
    Fault::NodeKill,
    Fault::PauseAll,
    Fault::RedisRestart,
    Fault::PauseWrite,
    Fault::NodeKill,
    Fault::PubsubKill,
    Fault::RedisRestart,
];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Cluster {
    redis: RedisServer,
    nodes: Vec<GatewayProc>,
    lives: Vec<u32>,
}

async fn redis_cmd(redis: &RedisServer, cmd: redis::Cmd) -> String {
    let Some(mut c) = redis_conn(&redis.url()).await else {
        return "no connection".into();
    };
    match tokio::time::timeout(Duration::from_secs(3), cmd.query_async::<redis::Value>(&mut c)).await {
        Ok(Ok(v)) => format!("{v:?}"),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "timed out".into(),
    }
}

async fn inject(f: Fault, cl: &mut Cluster, shared: &Shared, rng: &mut Rng) -> String {
    match f {
        Fault::PubsubKill => {
            let mut cmd = redis::cmd("CLIENT");
            cmd.arg("KILL").arg("TYPE").arg("pubsub");
            format!("CLIENT KILL TYPE pubsub -> {}", redis_cmd(&cl.redis, cmd).await)
        }
        Fault::PauseAll | Fault::PauseWrite => {
            let ms = 300 + rng.below(900);
            let mode = if matches!(f, Fault::PauseAll) { "ALL" } else { "WRITE" };
            let mut cmd = redis::cmd("CLIENT");
            cmd.arg("PAUSE").arg(ms).arg(mode);
            format!("CLIENT PAUSE {ms} {mode} -> {}", redis_cmd(&cl.redis, cmd).await)
        }
        Fault::RedisRestart => {
            cl.redis.kill();
            let down = 300 + rng.below(1200);
            tokio::time::sleep(Duration::from_millis(down)).await;
            cl.redis.restart().await;
            format!("redis SIGKILLed, restarted from its AOF after {down} ms")
        }
        Fault::NodeKill => {
            let slot = rng.below(NODES as u64) as usize;
            shared.set_node(slot, None);
            let old = cl.nodes[slot].node_id.clone();
            cl.nodes[slot].kill();
            let down = 300 + rng.below(1200);
            tokio::time::sleep(Duration::from_millis(down)).await;
            cl.lives[slot] += 1;
            let id = format!("gw-{slot}.{}", cl.lives[slot]);
            cl.nodes[slot] = GatewayProc::start(&cl.redis, &id, &node_env(slot)).await;
            shared.set_node(slot, Some((id.clone(), cl.nodes[slot].port)));
            format!("node {old} SIGKILLed, {id} up after {down} ms")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torture_exactness_under_chaos() {
    let secs = env_u64("WSGW_TORTURE_SECS", 60);
    let seed = env_u64("WSGW_TORTURE_SEED", 20_261_201);
    let n_clients = env_u64("WSGW_TORTURE_CLIENTS", 24);
    let n_passive = env_u64("WSGW_TORTURE_PASSIVE", 200);
    let rate = env_u64("WSGW_TORTURE_RATE", 150).max(3) as f64;
    println!(
        "torture: seed={seed} chaos={secs}s clients={n_clients} passive={n_passive} rate={rate}/s \
         (WSGW_TORTURE_SEED, WSGW_TORTURE_SECS to change)"
    );
    let mut rng = Rng::new(seed);
    let redis = RedisServer::start_persistent().await;
    let mut nodes = Vec::new();
    for i in 0..NODES {
        nodes.push(GatewayProc::start(&redis, &format!("gw-{i}.0"), &node_env(i)).await);
    }
    let shared = Arc::new(Shared::new(
        nodes.iter().map(|n| (n.node_id.clone(), n.port)).collect(),
        false,
    ));
    let mut cl = Cluster {
        redis,
        nodes,
        lives: vec![0; NODES],
    };
    let redis_url = cl.redis.url();

    let passive_frames = Arc::new(AtomicU64::new(0));
    let passives = spawn_passives(n_passive as usize, &shared, &passive_frames);
    let (sims, progress) = spawn_clients(n_clients, seed, &shared);
    let publishers = vec![
        tokio::spawn(fcall_publisher(
            "f1".into(),
            redis_url.clone(),
            rate * 0.35,
            seed ^ 1,
            shared.clone(),
        )),
        tokio::spawn(fcall_publisher(
            "f2".into(),
            redis_url.clone(),
            rate * 0.35,
            seed ^ 2,
            shared.clone(),
        )),
        tokio::spawn(http_publisher("h1".into(), rate * 0.3, seed ^ 3, shared.clone())),
    ];

    // Chaos: faults spread over the run.
    let start = Instant::now();
    let chaos_end = start + Duration::from_secs(secs);
    let n_faults = (secs / 7).max(SCHEDULE.len() as u64).min(secs.max(1));
    let spacing = Duration::from_secs(secs) / (n_faults as u32 + 1);
    let mut faults = 0;
    for k in 0..n_faults {
        let at = start + spacing * (k as u32 + 1);
        if at >= chaos_end {
            break;
        }
        tokio::time::sleep_until(at).await;
        let f = SCHEDULE[k as usize % SCHEDULE.len()];
        let what = inject(f, &mut cl, &shared, &mut rng).await;
        faults += 1;
        println!("  +{:6.1}s fault {faults}: {what}", shared.t_us() as f64 / 1e6);
    }
    tokio::time::sleep_until(chaos_end).await;

    // Drain: stop publishing and the passive load, let the clients finish their requests,
    // publish one fence event per channel, and wait until every live client has it.
    finish::quiesce(&shared, publishers, &progress).await;
    let mut r = redis_conn(&redis_url).await.expect("redis at the end");
    let final_at_us = shared.t_us();
    for ch in CHANNELS {
        fcall(&mut r, ch, "{\"fence\":true}").await.expect("fence publish");
    }
    let last = finish::last_ids(&read_published(&mut r).await);
    let (logs, lagging) = finish::drain(&shared, &progress, &last, &passive_frames, sims, passives).await;
    // The paced node's passes did wait (since its last start): the check below covers them.
    let paced = metric_value(&cl.nodes[0].metrics().await, "wsgw_paced_passes_total").unwrap_or(0.0);
    println!("  node {} paced {paced} passes", cl.nodes[0].node_id);
    assert!(paced > 0.0, "the node with WSGW_WRITE_PACE_MS paced no pass");

    // Check.
    let mut published = Published::new(read_published(&mut r).await);
    published.final_at_us = Some(final_at_us);
    let summary = finish::Summary {
        name: "torture",
        seed,
        faults,
        extra: String::new(),
    };
    finish::check_and_report(&summary, &published, &logs, lagging);
}
