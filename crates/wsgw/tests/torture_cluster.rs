//! Exactness torture test over a real Redis Cluster: 3 primaries with one replica each
//! (`scripts/cluster.sh start 0 --redis-cluster 3`, AOF on, node timeout 2 s) and 3 real gateway
//! processes on it (`WSGW_REDIS_CLUSTER`; one of them with per-core runtimes). The torture
//! clients of tests/torture.rs subscribe, unsubscribe, catch up by `last_event_id` and
//! `history:N` and resume on random nodes, keeping the client cursor per id-shard (ids
//! `<shard>~<ms>-<seq>`, the resume id one position per shard joined with `,`), without patterns
//! (a cluster refuses them). Publishers: `FCALL wsgw_publish` through a cluster connection with
//! the key rule (`ws:{s}seq ws:{s}history:<channel>`, s = CRC-32 of the channel mod 16), and the
//! HTTP API of random nodes; the 16 channels fall into 14 id-shards spread over all 3 primaries.
//! Faults on a schedule: a primary SIGKILLed (its replica is promoted, the killed process is
//! started again and rejoins as a replica), one busy channel's id-shard slot migrated to another
//! primary key batch by key batch while publishes go on, a gateway node SIGKILLed and started
//! again, and every pub/sub connection killed. Then the checker compares what each client
//! delivered with the history streams, read from the primary that holds each of them now.
//! A failover or a migration makes the gateway send `gap` frames (coverage ends there), and an
//! event the old primary acknowledged but its replica never got is no one's due: the checker
//! reports deliveries of such events apart (`lost_delivered`), not as violations.
//!
//! ```sh
//! cargo test -p wsgw --test suite torture_cluster:: -- --nocapture          # ~60 s of chaos
//! WSGW_TORTURE_SECS=180 WSGW_TORTURE_SEED=7 cargo test --release -p wsgw --test suite torture_cluster:: -- --nocapture
//! ```
//! The knobs of tests/torture.rs (`WSGW_TORTURE_SECS`, `_SEED`, `_CLIENTS`, `_PASSIVE`, `_RATE`,
//! `_EXPLAIN_ALL`, `_DUMP`) apply; a `WSGW_TORTURE_CLUSTER_<KNOB>` variable overrides its
//! `WSGW_TORTURE_<KNOB>` for this test only. `WSGW_TORTURE_CLUSTER_MIGRATE_BATCH`: keys per
//! `MIGRATE` of a slot migration (default: 1 to 3, drawn for each).

use crate::common;
// Shared with tests/torture.rs; the single-primary parts (its publishers, its Redis reads) are
// not used here.
use crate::torture_kit as torture;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use common::cluster::GatewayProc;
use common::redis_cluster::RedisCluster;
use tokio::time::Instant;
use torture::cluster::{self as rc, Procs};
use torture::finish;
use torture::load::*;
use torture::model::*;
use torture::sim::spawn_clients;

const NODES: usize = 3;

/// `WSGW_TORTURE_CLUSTER_<knob>`, else `WSGW_TORTURE_<knob>`, else `default`.
fn knob(name: &str, default: u64) -> u64 {
    [format!("WSGW_TORTURE_CLUSTER_{name}"), format!("WSGW_TORTURE_{name}")]
        .iter()
        .find_map(|k| std::env::var(k).ok().and_then(|v| v.parse().ok()))
        .unwrap_or(default)
}

/// NODE_ENV and the cluster's seeds, plus quiet node logs (the faults make them warn a lot)
/// unless WSGW_TEST_LOG is set. The node in slot 1 runs per-core runtimes.
fn node_env(slot: usize, seeds: &str) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> = NODE_ENV.iter().map(|&(k, v)| (k, v.to_string())).collect();
    env.push(("WSGW_REDIS_CLUSTER", seeds.to_string()));
    if slot == 1 {
        env.extend([("WSGW_RUNTIME", "per_core".into()), ("WSGW_WORKER_THREADS", "2".into())]);
    }
    if std::env::var("WSGW_TEST_LOG").is_err() {
        env.push(("WSGW_LOG", "error".into()));
    }
    env
}

async fn start_node(slot: usize, id: &str, seeds: &str) -> GatewayProc {
    let env = node_env(slot, seeds);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    GatewayProc::start_env(id, &env).await
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    PrimaryKill,
    SlotMigration,
    NodeKill,
    PubsubKill,
}

const SCHEDULE: [Fault; 8] = [
    Fault::PrimaryKill,
    Fault::SlotMigration,
    Fault::NodeKill,
    Fault::PubsubKill,
    Fault::SlotMigration,
    Fault::PrimaryKill,
    Fault::NodeKill,
    Fault::SlotMigration,
];

struct Cluster {
    procs: Procs,
    nodes: Vec<GatewayProc>,
    lives: Vec<u32>,
    seeds: String,
    /// The slot of each of CHANNELS' shards.
    slots: Vec<u16>,
    /// Keys per MIGRATE (None: 1 to 3, drawn per migration).
    migrate_batch: Option<usize>,
}

async fn inject(f: Fault, cl: &mut Cluster, shared: &Shared, rng: &mut Rng) -> String {
    match f {
        Fault::PrimaryKill => cl.procs.kill_primary(rng, &cl.slots).await,
        Fault::SlotMigration => {
            // Any channel's shard (t:8 and t:11 share one, t:9 and t:10 another), in batches of
            // 1 to 3 keys: a batch boundary may fall between a channel's history and its meta.
            let ch = CHANNELS[rng.below(CHANNELS.len() as u64) as usize];
            let batch = cl.migrate_batch.unwrap_or_else(|| 1 + rng.below(3) as usize);
            cl.procs.migrate_slot(rng, rc::shard(ch), batch).await
        }
        Fault::PubsubKill => cl.procs.kill_pubsub().await,
        Fault::NodeKill => {
            let slot = rng.below(NODES as u64) as usize;
            shared.set_node(slot, None);
            let old = cl.nodes[slot].node_id.clone();
            cl.nodes[slot].kill();
            let down = 300 + rng.below(1200);
            tokio::time::sleep(Duration::from_millis(down)).await;
            cl.lives[slot] += 1;
            let id = format!("gw-{slot}.{}", cl.lives[slot]);
            cl.nodes[slot] = start_node(slot, &id, &cl.seeds).await;
            shared.set_node(slot, Some((id.clone(), cl.nodes[slot].port)));
            format!("node {old} SIGKILLed, {id} up after {down} ms")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torture_exactness_cluster() {
    let secs = knob("SECS", 60);
    let seed = knob("SEED", 20_261_202);
    let n_clients = knob("CLIENTS", 24);
    let n_passive = knob("PASSIVE", 200);
    let rate = knob("RATE", 150).max(3) as f64;
    let migrate_batch = Some(knob("MIGRATE_BATCH", 0) as usize).filter(|&b| b > 0);
    println!(
        "torture cluster: seed={seed} chaos={secs}s clients={n_clients} passive={n_passive} rate={rate}/s \
         (WSGW_TORTURE_SEED, WSGW_TORTURE_SECS to change; WSGW_TORTURE_CLUSTER_* for this test only)"
    );
    let mut rng = Rng::new(seed);
    let redis = RedisCluster::start();
    // Declared after the cluster: what it restarted is killed before the cluster is stopped.
    let procs = Procs::of(&redis).await;
    let ports = procs.ports();
    let seeds = ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut slots = Vec::new();
    for ch in CHANNELS {
        slots.push(procs.keyslot(&rc::keys(ch).0).await);
    }
    // Where the channels' shards are: every primary must hold some.
    let topo = procs.topology().await.expect("the cluster's topology");
    let mut spread: Vec<String> = Vec::new();
    for p in topo.iter().filter(|n| n.primary) {
        let chans: Vec<String> = CHANNELS
            .iter()
            .zip(&slots)
            .filter(|(_, s)| p.holds(**s))
            .map(|(c, _)| format!("{c}{{{}}}", rc::shard(c)))
            .collect();
        assert!(
            !chans.is_empty(),
            "primary :{} holds none of the channels' shards",
            p.port
        );
        spread.push(format!(":{} {}", p.port, chans.join(" ")));
    }
    println!("  channels{{shard}} by primary: {}", spread.join("; "));

    let mut nodes = Vec::new();
    for i in 0..NODES {
        nodes.push(start_node(i, &format!("gw-{i}.0"), &seeds).await);
    }
    let start_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let shared = Arc::new(Shared::new(
        nodes.iter().map(|n| (n.node_id.clone(), n.port)).collect(),
        true,
    ));
    let mut cl = Cluster {
        procs,
        nodes,
        lives: vec![0; NODES],
        seeds,
        slots,
        migrate_batch,
    };
    let client = rc::client(&ports);

    let passive_frames = Arc::new(AtomicU64::new(0));
    let passives = spawn_passives(n_passive as usize, &shared, &passive_frames);
    let (sims, progress) = spawn_clients(n_clients, seed, &shared);
    let publishers = vec![
        tokio::spawn(rc::fcall_publisher(
            "f1".into(),
            client.clone(),
            rate * 0.35,
            seed ^ 1,
            shared.clone(),
        )),
        tokio::spawn(rc::fcall_publisher(
            "f2".into(),
            client.clone(),
            rate * 0.35,
            seed ^ 2,
            shared.clone(),
        )),
        tokio::spawn(http_publisher("h1".into(), rate * 0.3, seed ^ 3, shared.clone())),
    ];

    // Chaos: faults spread over the run, one at a time.
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

    // Drain: stop publishing and the passive load, let the clients finish their requests, wait
    // for a healthy cluster, publish one fence event per channel, and wait until every live
    // client has it.
    finish::quiesce(&shared, publishers, &progress).await;
    let took = cl.procs.wait_healthy(&cl.slots, Duration::from_secs(30)).await;
    let mut r = rc::connect(&client).await.expect("a cluster connection at the end");
    let final_at_us = shared.t_us();
    for ch in CHANNELS {
        let mut tries = 0;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), rc::fcall(&mut r, ch, "{\"fence\":true}")).await {
                Ok(Ok(id)) => {
                    shared.acknowledged(ch, Id::parse(&id));
                    break;
                }
                other => {
                    tries += 1;
                    assert!(
                        tries < 20,
                        "fence publish on {ch} failed 20 times (cluster healthy: {took:?}): {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
    let last = finish::last_ids(&rc::read_published(&mut r).await);
    let (logs, lagging) = finish::drain(&shared, &progress, &last, &passive_frames, sims, passives).await;

    // Check.
    let mut published = Published::new(rc::read_published(&mut r).await);
    published.final_at_us = Some(final_at_us);
    published.set_acknowledged(&shared.acked.lock().unwrap());
    // Events history holds that no publisher was told of: the publish timed out, or failed
    // after writing (see the errors below).
    let acked: std::collections::HashSet<(String, Id)> = shared.acked.lock().unwrap().iter().cloned().collect();
    let unacked: Vec<String> = published
        .channels()
        .flat_map(|c| published.ids(c).iter().map(move |&id| (c.to_string(), id)))
        .filter(|k| !acked.contains(k))
        .map(|(c, id)| format!("{c} {id} (+{:.1}s)", id.ms.saturating_sub(start_ms) as f64 / 1e3))
        .collect();
    println!(
        "  {} events in history that no publisher was told of{}",
        unacked.len(),
        if unacked.is_empty() {
            String::new()
        } else {
            format!(" (first: {})", unacked[..unacked.len().min(5)].join(", "))
        }
    );
    for (why, n) in shared.errors.lock().unwrap().iter() {
        println!("  publish failed {n}x: {why}");
    }
    // How much of the run was exact coverage rather than told losses: resumes (and how many
    // named more than one shard and came back recovered), `gap` frames, catch-up subscribes.
    let (mut resumes, mut multi_shard_recovered, mut recovered, mut gaps, mut catchups) = (0, 0, 0, 0, 0);
    for log in &logs {
        let mut shards = 0;
        for e in &log.entries {
            match &e.rec {
                Rec::Connect { last_event_id, .. } => shards = last_event_id.as_ref().map_or(0, |c| c.0.len()),
                Rec::Welcome {
                    resumed: true,
                    recovered: r,
                    ..
                } => {
                    resumes += 1;
                    recovered += usize::from(*r);
                    multi_shard_recovered += usize::from(*r && shards > 1);
                }
                Rec::Gap { .. } => gaps += 1,
                Rec::Subscribed {
                    recovered: true,
                    replayed,
                    ..
                } if *replayed > 0 => catchups += 1,
                _ => {}
            }
        }
    }
    println!(
        "  {resumes} resumes, {recovered} recovered:true ({multi_shard_recovered} with a cursor naming several \
         shards); {catchups} subscribe catch-ups recovered:true; {gaps} gap frames"
    );
    let summary = finish::Summary {
        name: "torture cluster",
        seed,
        faults,
        extra: format!(
            "; {} primary kills, {} slot migrations, {} pub/sub kills; {} acknowledged events lost",
            cl.procs.primary_kills,
            cl.procs.migrations,
            cl.procs.pubsub_kills,
            published.lost_total()
        ),
    };
    finish::check_and_report(&summary, &published, &logs, lagging);
}
