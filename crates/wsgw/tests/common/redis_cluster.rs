//! A real Redis Cluster for tests: 3 primaries with one replica each, started by
//! `scripts/cluster.sh start 0 --redis-cluster 3` in a run directory of its own and stopped on
//! drop; a lone cluster-enabled redis-server for a test to join to it; and redis-cli helpers to
//! look at it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A Redis Cluster started by scripts/cluster.sh in its own run directory; stopped on drop.
pub struct RedisCluster {
    pub run: PathBuf,
    pub seeds: Vec<String>,
    pub primaries: Vec<u16>,
    pub replicas: Vec<u16>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        // One directory per cluster: tests of one file run in one process, in parallel.
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let run = std::env::temp_dir().join(format!("wsgw-redis-cluster-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run);
        let out = Command::new(root().join("scripts/cluster.sh"))
            .args(["start", "0", "--redis-cluster", "3"])
            .env("WSGW_RUN_DIR", &run)
            .output()
            .expect("scripts/cluster.sh runs");
        let printed = String::from_utf8_lossy(&out.stdout).to_string();
        // Made first, so that a failed check below still stops what was started.
        let mut cluster = RedisCluster {
            run: run.clone(),
            seeds: Vec::new(),
            primaries: Vec::new(),
            replicas: Vec::new(),
        };
        assert!(
            out.status.success(),
            "cluster.sh start 0 --redis-cluster 3 failed:\n{printed}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let state: Value = serde_json::from_str(&std::fs::read_to_string(run.join("cluster.json")).unwrap()).unwrap();
        let rc = &state["redis_cluster"];
        let ports = |k: &str| -> Vec<u16> {
            rc[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["port"].as_u64().unwrap() as u16)
                .collect()
        };
        cluster.seeds = rc["seeds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        cluster.primaries = ports("primaries");
        cluster.replicas = ports("replicas");
        assert_eq!(
            printed.lines().collect::<Vec<_>>(),
            cluster.seeds.iter().map(String::as_str).collect::<Vec<_>>(),
            "stdout is the seed URLs, one per line"
        );
        cluster
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/cluster.sh"))
            .arg("stop")
            .env("WSGW_RUN_DIR", &self.run)
            .output();
        let _ = std::fs::remove_dir_all(&self.run);
    }
}

/// A cluster-enabled redis-server that belongs to no cluster yet (a test joins it with
/// `CLUSTER MEET`): the settings scripts/lib/redis-cluster.sh gives the members, in memory, its
/// `nodes.conf` under the cluster's run directory; killed by pid on drop.
pub struct LoneNode {
    pub port: u16,
    child: Child,
}

impl LoneNode {
    pub fn start(cluster: &RedisCluster) -> LoneNode {
        // A port free now can be taken before redis-server binds it (cluster.sh of a test
        // running beside us picks from the same range): then ours exits, try another.
        for _ in 0..5 {
            let port = cluster_port();
            let dir = cluster.run.join(format!("lone-{port}"));
            std::fs::create_dir_all(&dir).unwrap();
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "2000"])
                .args(["--save", "", "--appendonly", "no", "--dir", dir.to_str().unwrap()])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server runs (scripts/test.sh installs it)");
            let mut node = LoneNode { port, child };
            let ours = format!("process_id:{}", node.child.id());
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = node.child.try_wait() {
                    break;
                }
                if redis_cli(port, &["INFO", "server"]).lines().any(|l| l.trim() == ours) {
                    return node;
                }
                assert!(Instant::now() < deadline, "redis-server on {port} did not come up");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start a lone redis-server on a free port");
    }
}

impl Drop for LoneNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port in 10000..12000 (below the ephemeral range) whose cluster bus port (+10000) is free
/// too, from a start that differs between calls and processes.
fn cluster_port() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let start = (nanos ^ std::process::id()) % 2000;
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    (0..2000)
        .map(|i| 10000 + ((start + i) % 2000) as u16)
        .find(|p| free(*p) && free(*p + 10000))
        .expect("a free port pair")
}

pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Which primary (port) holds `key`, from `CLUSTER KEYSLOT` and `CLUSTER NODES`.
pub fn owner(cluster: &RedisCluster, key: &str) -> u16 {
    let port = cluster.primaries[0];
    let slot: u16 = redis_cli(port, &["CLUSTER", "KEYSLOT", key]).parse().unwrap();
    for line in redis_cli(port, &["CLUSTER", "NODES"]).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if !f[2].contains("master") {
            continue;
        }
        let holds = f[8..].iter().any(|r| {
            let (lo, hi) = r.split_once('-').unwrap_or((r, r));
            matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
        });
        if holds {
            return f[1].split([':', '@']).nth(1).unwrap().parse().unwrap();
        }
    }
    panic!("no primary holds slot {slot}");
}

/// Two channels of one id-shard.
pub fn two_channels_of_one_shard() -> (String, String) {
    use wsgw_protocol::shard_of;
    let a = "room:0".to_string();
    let b = (1..500)
        .map(|n| format!("room:{n}"))
        .find(|c| shard_of(c) == shard_of(&a))
        .expect("another channel in room:0's shard");
    (a, b)
}
