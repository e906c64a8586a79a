//! The Redis Cluster side of the torture run (tests/torture_cluster.rs): a cluster connection
//! for publishing with the key rule and for reading history back, the cluster's topology from
//! `CLUSTER NODES`, and its faults: a primary SIGKILLed (its replica is promoted; the killed
//! process is started again and rejoins as a replica), one id-shard's slot migrated to another
//! primary key batch by key batch while publishes go on, and the nodes' pub/sub connections
//! killed.
//!
//! Every process killed here is a `redis-server` of the cluster this run started (scripts/
//! cluster.sh records their pids in cluster.json; a restarted one is this module's child), killed
//! by pid after checking `/proc/<pid>/exe`. All traffic is to 127.0.0.1.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::Value;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tokio::time::Instant;

use super::load::{CHANNELS, Rng, Shared};
use super::model::Id;
use crate::common::redis_cluster::RedisCluster;

/// The id-shard of a channel.
pub fn shard(channel: &str) -> u16 {
    wsgw_protocol::shard_of(channel)
}

/// The keys of a durable publish on `channel` (docs/backends.md, "Publishing into a Redis Cluster").
pub fn keys(channel: &str) -> (String, String) {
    let s = shard(channel);
    (format!("ws:{{{s}}}seq"), format!("ws:{{{s}}}history:{channel}"))
}

/// A cluster client over every node of the cluster (any of them finds the others).
pub fn client(ports: &[u16]) -> ClusterClient {
    let seeds: Vec<String> = ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect();
    redis::cluster::ClusterClientBuilder::new(seeds)
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(Duration::from_secs(2))
        .retries(6)
        .min_retry_wait(50)
        .max_retry_wait(500)
        .build()
        .expect("a cluster client")
}

pub async fn connect(client: &ClusterClient) -> Option<ClusterConnection> {
    tokio::time::timeout(Duration::from_secs(5), client.get_async_connection())
        .await
        .ok()?
        .ok()
}

/// `FCALL wsgw_publish` with the cluster key rule (routed by the keys' slot), with an explicit
/// history TTL and size so nothing is ever trimmed.
pub async fn fcall(c: &mut ClusterConnection, channel: &str, data: &str) -> Result<String, String> {
    let (seq, history) = keys(channel);
    crate::common::cluster::publish_cmd_with((&seq, &history), channel, "tick", data)
        .arg(86_400_000u64)
        .arg(10_000_000u64)
        .query_async::<String>(c)
        .await
        .map_err(|e| e.to_string())
}

/// Publishes through `FCALL wsgw_publish` on the cluster at `per_s` events/s until told to stop,
/// noting each id it is given.
pub async fn fcall_publisher(name: String, client: ClusterClient, per_s: f64, seed: u64, shared: Arc<Shared>) {
    let mut rng = Rng::new(seed);
    let mut conn = None;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_s));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    while !shared.stop_publishing.load(Ordering::Acquire) {
        tick.tick().await;
        if conn.is_none() {
            conn = connect(&client).await;
        }
        let Some(c) = conn.as_mut() else {
            shared.failed("FCALL: no cluster connection");
            shared.publish_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        n += 1;
        let data = format!("{{\"p\":\"{name}\",\"n\":{n}}}");
        let channel = rng.channel();
        match tokio::time::timeout(Duration::from_secs(5), fcall(c, channel, &data)).await {
            Ok(Ok(id)) => {
                shared.acknowledged(channel, Id::parse(&id));
                shared.published_ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                shared.failed(&format!("FCALL: {e}"));
                shared.publish_errors.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                shared.failed("FCALL: no answer in 5 s");
                shared.publish_errors.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
    }
}

/// Reads every channel's history stream back from the primary holding it: the ground truth of
/// what was published. The streams hold plain `<ms>-<seq>` ids; the frames they store carry the
/// same id naming the channel's shard, which is checked.
pub async fn read_published(c: &mut ClusterConnection) -> BTreeMap<String, Vec<Id>> {
    let mut out = BTreeMap::new();
    for ch in CHANNELS {
        let s = shard(ch);
        let (_, key) = keys(ch);
        let mut ids = Vec::new();
        let mut start = "-".to_string();
        loop {
            let batch: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(5000)
                .query_async(c)
                .await
                .expect("XRANGE");
            let n = batch.len();
            for (id, fields) in &batch {
                let plain = Id::parse(id).filter(|i| i.shard.is_none()).expect("a plain stream id");
                let id = plain.in_shard(Some(s));
                let frame = fields.get("f").map(String::as_str).unwrap_or_default();
                assert!(
                    frame.contains(&format!("\"event_id\":\"{id}\"")),
                    "{key} entry {plain}: the stored frame names another id: {frame}"
                );
                ids.push(id);
            }
            match batch.last() {
                Some((last, _)) if n == 5000 => start = format!("({last}"),
                _ => break,
            }
        }
        out.insert(ch.to_string(), ids);
    }
    out
}

/// A command to the node on `port`, on a connection of its own (at most 3 s in all).
pub async fn node_cmd(port: u16, cmd: &redis::Cmd) -> Result<Value, String> {
    let run = async {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).map_err(|e| e.to_string())?;
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        cmd.query_async::<Value>(&mut c).await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(Duration::from_secs(3), run).await {
        Ok(r) => r,
        Err(_) => Err("timed out".into()),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::Int(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub id: String,
    pub port: u16,
    pub primary: bool,
    /// Flagged `fail`, `fail?` or disconnected.
    pub down: bool,
    /// A replica's primary.
    pub primary_id: Option<String>,
    /// Slot ranges served (primaries).
    pub slots: Vec<(u16, u16)>,
}

impl NodeInfo {
    pub fn holds(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(lo, hi)| lo <= slot && slot <= hi)
    }
}

fn parse_nodes(text: &str) -> Vec<NodeInfo> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let port = f[1].split(['@', ',']).next()?.rsplit_once(':')?.1.parse().ok()?;
            let flags: Vec<&str> = f[2].split(',').collect();
            let slots = f[8..]
                .iter()
                .filter(|r| !r.starts_with('['))
                .filter_map(|r| {
                    let (lo, hi) = r.split_once('-').unwrap_or((r, r));
                    Some((lo.parse().ok()?, hi.parse().ok()?))
                })
                .collect();
            Some(NodeInfo {
                id: f[0].to_string(),
                port,
                primary: flags.contains(&"master"),
                down: flags.iter().any(|x| matches!(*x, "fail" | "fail?" | "noaddr")) || f[7] != "connected",
                primary_id: (f[3] != "-").then(|| f[3].to_string()),
                slots,
            })
        })
        .collect()
}

/// The cluster's processes, by port: what scripts/cluster.sh started, and what this run
/// restarted (its children, killed when this drops).
pub struct Procs {
    /// Every node's port, the pid running it now, and its data directory.
    pub nodes: BTreeMap<u16, (u32, PathBuf)>,
    children: HashMap<u16, Child>,
    /// Shards whose slot was migrated, and primary kills, for the summary.
    pub primary_kills: usize,
    pub migrations: usize,
    pub pubsub_kills: usize,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, mut c) in self.children.drain() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The file `redis-server` in PATH runs (on Debian a link to `redis-check-rdb`).
fn redis_exe() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find_map(|d| std::fs::canonicalize(d.join("redis-server")).ok())
}

/// Whether `pid` runs the `redis-server` binary (not a reused pid, not a zombie).
fn is_redis(pid: u32) -> bool {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    exe.is_some_and(|e| Some(e) == redis_exe())
}

impl Procs {
    /// The processes of `cluster` as its cluster.json records them; each node's data directory
    /// from `CONFIG GET dir`.
    pub async fn of(cluster: &RedisCluster) -> Procs {
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(cluster.run.join("cluster.json")).unwrap()).unwrap();
        let mut nodes = BTreeMap::new();
        for role in ["primaries", "replicas"] {
            for n in state["redis_cluster"][role].as_array().unwrap() {
                let port = n["port"].as_u64().unwrap() as u16;
                let pid = n["pid"].as_u64().unwrap() as u32;
                let dir = node_cmd(port, redis::cmd("CONFIG").arg("GET").arg("dir"))
                    .await
                    .expect("CONFIG GET dir");
                let dir = match dir {
                    Value::Array(v) if v.len() == 2 => text(&v[1]),
                    Value::Map(m) if m.len() == 1 => text(&m[0].1),
                    other => panic!("CONFIG GET dir on {port}: {other:?}"),
                };
                nodes.insert(port, (pid, PathBuf::from(dir)));
            }
        }
        Procs {
            nodes,
            children: HashMap::new(),
            primary_kills: 0,
            migrations: 0,
            pubsub_kills: 0,
        }
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.keys().copied().collect()
    }

    /// `CLUSTER NODES` as the first node that answers sees it.
    pub async fn topology(&self) -> Option<Vec<NodeInfo>> {
        for &port in self.nodes.keys() {
            if let Ok(v) = node_cmd(port, redis::cmd("CLUSTER").arg("NODES")).await {
                let nodes = parse_nodes(&text(&v));
                if !nodes.is_empty() {
                    return Some(nodes);
                }
            }
        }
        None
    }

    /// The slot of a key.
    pub async fn keyslot(&self, key: &str) -> u16 {
        for &port in self.nodes.keys() {
            if let Ok(Value::Int(n)) = node_cmd(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).await {
                return n as u16;
            }
        }
        panic!("no node answers CLUSTER KEYSLOT");
    }

    /// Whether every node answers, says `cluster_state:ok`, and sees one healthy primary for
    /// each slot of the torture channels' shards.
    pub async fn healthy(&self, slots: &[u16]) -> bool {
        for &port in self.nodes.keys() {
            match node_cmd(port, redis::cmd("CLUSTER").arg("INFO")).await {
                Ok(v) if text(&v).contains("cluster_state:ok") => {}
                _ => return false,
            }
            let Ok(v) = node_cmd(port, redis::cmd("CLUSTER").arg("NODES")).await else {
                return false;
            };
            let nodes = parse_nodes(&text(&v));
            let ok = slots
                .iter()
                .all(|&s| nodes.iter().filter(|n| n.primary && !n.down && n.holds(s)).count() == 1);
            if !ok {
                return false;
            }
        }
        true
    }

    /// Waits (at most `within`) until [`Procs::healthy`]; returns how long it took.
    pub async fn wait_healthy(&self, slots: &[u16], within: Duration) -> Result<Duration, String> {
        let t0 = Instant::now();
        while t0.elapsed() < within {
            if self.healthy(slots).await {
                return Ok(t0.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("the cluster was not healthy within {within:?}"))
    }

    fn kill(&mut self, port: u16) -> Result<u32, String> {
        let (pid, _) = self.nodes[&port].clone();
        if let Some(mut c) = self.children.remove(&port) {
            let _ = c.kill();
            let _ = c.wait();
            return Ok(pid);
        }
        if !is_redis(pid) {
            return Err(format!("pid {pid} (port {port}) is not a redis-server"));
        }
        let st = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .map_err(|e| e.to_string())?;
        if !st.success() {
            return Err(format!("kill -KILL {pid} failed"));
        }
        // scripts/cluster.sh started it (not our child): wait until it is gone.
        for _ in 0..100 {
            if !is_redis(pid) {
                return Ok(pid);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("pid {pid} still runs after SIGKILL"))
    }

    /// Starts the node on `port` again, with the arguments scripts/lib/redis-cluster.sh gives it
    /// and its own data directory (nodes.conf and AOF), and waits until it answers.
    async fn restart(&mut self, port: u16) -> Result<u32, String> {
        let (_, dir) = self.nodes[&port].clone();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "2000", "--save", "", "--appendonly", "yes"])
            .arg("--dir")
            .arg(&dir)
            .args(["--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let pid = child.id();
        self.children.insert(port, child);
        self.nodes.insert(port, (pid, dir));
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if node_cmd(port, &redis::cmd("PING")).await.is_ok() {
                return Ok(pid);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("redis-server on {port} did not answer within 10 s"))
    }

    /// SIGKILLs a primary whose replica is in sync, waits for the replica's promotion, and
    /// starts the killed process again (it rejoins as a replica of the promoted one).
    pub async fn kill_primary(&mut self, rng: &mut Rng, slots: &[u16]) -> String {
        let Some(topo) = self.topology().await else {
            return "primary kill skipped: no node answers CLUSTER NODES".into();
        };
        let mut candidates = Vec::new();
        for p in topo.iter().filter(|n| n.primary && !n.down && !n.slots.is_empty()) {
            let has_replica = topo.iter().any(|r| r.primary_id.as_deref() == Some(&p.id) && !r.down);
            let info = node_cmd(p.port, redis::cmd("INFO").arg("replication")).await;
            let in_sync = info.is_ok_and(|v| text(&v).contains("state=online"));
            if has_replica && in_sync {
                candidates.push(p.clone());
            }
        }
        if candidates.is_empty() {
            return "primary kill skipped: no primary has a replica in sync".into();
        }
        let victim = candidates[rng.below(candidates.len() as u64) as usize].clone();
        let served: Vec<String> = CHANNELS
            .iter()
            .filter(|c| {
                let slot = slots[CHANNELS.iter().position(|x| x == *c).unwrap()];
                victim.holds(slot)
            })
            .map(|c| c.to_string())
            .collect();
        let pid = match self.kill(victim.port) {
            Ok(pid) => pid,
            Err(e) => return format!("primary kill of :{} failed: {e}", victim.port),
        };
        self.primary_kills += 1;
        let t0 = Instant::now();
        let mut promoted = None;
        while t0.elapsed() < Duration::from_secs(20) && promoted.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(topo) = self.topology().await {
                let slot = victim.slots[0].0;
                promoted = topo
                    .iter()
                    .find(|n| n.primary && !n.down && n.port != victim.port && n.holds(slot))
                    .map(|n| n.port);
            }
        }
        let failover_ms = t0.elapsed().as_millis();
        let restarted = match self.restart(victim.port).await {
            Ok(pid) => format!("restarted as pid {pid}"),
            Err(e) => format!("restart failed: {e}"),
        };
        match promoted {
            Some(p) => format!(
                "primary :{} (pid {pid}, shards of {}) SIGKILLed; replica :{p} promoted after {failover_ms} ms; \
                 old primary {restarted} (rejoins as a replica)",
                victim.port,
                served.join(" ")
            ),
            None => format!(
                "primary :{} (pid {pid}) SIGKILLed; NO replica promoted within {failover_ms} ms; {restarted}",
                victim.port
            ),
        }
    }

    /// Moves the slot of `shard`'s hash tag from its primary to another one while publishes go
    /// on: IMPORTING on the target, MIGRATING on the source, the slot's keys `MIGRATE`d in
    /// batches of `batch` (a pause between batches), then `SETSLOT NODE` on every primary,
    /// target and source first.
    pub async fn migrate_slot(&mut self, rng: &mut Rng, shard: u16, batch: usize) -> String {
        let slot = self.keyslot(&format!("ws:{{{shard}}}seq")).await;
        let Some(topo) = self.topology().await else {
            return "slot migration skipped: no node answers CLUSTER NODES".into();
        };
        let Some(source) = topo.iter().find(|n| n.primary && !n.down && n.holds(slot)).cloned() else {
            return format!("slot migration skipped: no healthy primary holds slot {slot}");
        };
        let targets: Vec<&NodeInfo> = topo
            .iter()
            .filter(|n| n.primary && !n.down && !n.slots.is_empty() && n.id != source.id)
            .collect();
        if targets.is_empty() {
            return "slot migration skipped: no other primary".into();
        }
        let target = targets[rng.below(targets.len() as u64) as usize].clone();
        let others: Vec<u16> = topo
            .iter()
            .filter(|n| n.primary && !n.down && n.id != source.id && n.id != target.id)
            .map(|n| n.port)
            .collect();
        self.migrations += 1;
        let t0 = Instant::now();
        let setslot = |state: &str, id: &str| {
            let mut c = redis::cmd("CLUSTER");
            c.arg("SETSLOT").arg(slot).arg(state).arg(id);
            c
        };
        if let Err(e) = node_cmd(target.port, &setslot("IMPORTING", &source.id)).await {
            return format!("slot {slot} migration: IMPORTING on :{} failed: {e}", target.port);
        }
        if let Err(e) = node_cmd(source.port, &setslot("MIGRATING", &target.id)).await {
            return format!("slot {slot} migration: MIGRATING on :{} failed: {e}", source.port);
        }
        let mut moved = 0usize;
        let mut batches = 0usize;
        let mut notes: BTreeSet<String> = BTreeSet::new();
        let mut stuck = None;
        while t0.elapsed() < Duration::from_secs(20) && batches < 500 {
            let listed = node_cmd(
                source.port,
                redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(batch),
            )
            .await;
            let keys: Vec<String> = match listed {
                Ok(Value::Array(v)) => v.iter().map(text).collect(),
                Ok(other) => {
                    stuck = Some(format!("GETKEYSINSLOT answered {other:?}"));
                    break;
                }
                Err(e) => {
                    stuck = Some(format!("GETKEYSINSLOT failed: {e}"));
                    break;
                }
            };
            if keys.is_empty() {
                break;
            }
            let migrate = |replace: bool| {
                let mut c = redis::cmd("MIGRATE");
                c.arg("127.0.0.1").arg(target.port).arg("").arg(0).arg(5000);
                if replace {
                    c.arg("REPLACE");
                }
                c.arg("KEYS").arg(&keys);
                c
            };
            match node_cmd(source.port, &migrate(false)).await {
                Ok(_) => {}
                Err(e) if e.contains("BUSYKEY") => {
                    // The target has a key of that name already: written there (through an
                    // ASK redirect) while the source still had its own.
                    notes.insert(format!("BUSYKEY for one of {keys:?}: migrated with REPLACE"));
                    if let Err(e) = node_cmd(source.port, &migrate(true)).await {
                        stuck = Some(format!("MIGRATE REPLACE failed: {e}"));
                        break;
                    }
                }
                Err(e) => {
                    stuck = Some(format!("MIGRATE failed: {e}"));
                    break;
                }
            }
            moved += keys.len();
            batches += 1;
            // Publishes meanwhile meet a half-moved slot.
            tokio::time::sleep(Duration::from_millis(150 + rng.below(150))).await;
        }
        // The slot is the target's: target and source first, then every other primary.
        let mut owners = vec![target.port, source.port];
        owners.extend(others);
        for port in owners {
            if let Err(e) = node_cmd(port, &setslot("NODE", &target.id)).await {
                notes.insert(format!("SETSLOT NODE on :{port} failed: {e}"));
            }
        }
        let channels: Vec<&str> = CHANNELS
            .iter()
            .copied()
            .filter(|c| super::cluster::shard(c) == shard)
            .collect();
        let mut out = format!(
            "slot {slot} (shard {{{shard}}}: {}) migrated :{} -> :{} in {} ms, {moved} keys in {batches} batches of <= {batch}",
            channels.join(" "),
            source.port,
            target.port,
            t0.elapsed().as_millis()
        );
        if let Some(s) = stuck {
            out.push_str(&format!("; STOPPED EARLY: {s}"));
        }
        for n in notes {
            out.push_str(&format!("; {n}"));
        }
        out
    }

    /// `CLIENT KILL TYPE pubsub` on every primary: every node's sharded subscriptions drop.
    pub async fn kill_pubsub(&mut self) -> String {
        let Some(topo) = self.topology().await else {
            return "pub/sub kill skipped: no node answers CLUSTER NODES".into();
        };
        self.pubsub_kills += 1;
        let mut said = Vec::new();
        for p in topo.iter().filter(|n| n.primary && !n.down) {
            let r = node_cmd(p.port, redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub")).await;
            said.push(format!(
                ":{} -> {}",
                p.port,
                r.map_or_else(|e| format!("error: {e}"), |v| text(&v))
            ));
        }
        format!("CLIENT KILL TYPE pubsub on every primary ({})", said.join(", "))
    }
}
