//! `wsgw functions` against a real Redis Cluster (3 primaries with replicas, from
//! `scripts/cluster.sh start 0 --redis-cluster 3`): one pass reports the library on every
//! primary and reloads it where it went missing; `--watch`, at its default interval, puts it
//! on a primary that joins later (`redis-cli --cluster add-node`, then a reshard) within 30 s of
//! that primary getting slots, and a backend's `FCALL wsgw_publish` then works in them.

use crate::common;

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::redis_cluster::{RedisCluster, owner, redis_cli};
use wsgw_protocol::{EventId, shard_of};

fn functions(seeds: &[String], args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgw"));
    cmd.arg("functions")
        .args(args)
        .env("WSGW_REDIS_CLUSTER", seeds.join(","))
        .env("WSGW_LOG", "warn");
    cmd
}

fn lines(out: &Output) -> Vec<String> {
    let mut l: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
    l.sort();
    l
}

fn has_library(port: u16) -> bool {
    redis_cli(port, &["FUNCTION", "LIST", "LIBRARYNAME", "wsgw"]).contains("wsgw_publish")
}

/// A port in 10000..12000 whose cluster bus port (+10000) is free too.
fn cluster_port() -> u16 {
    (10000..12000)
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok() && TcpListener::bind(("127.0.0.1", *p + 10000)).is_ok())
        .expect("a free port pair")
}

/// Processes this test started, killed on drop (by pid).
struct Owned(Vec<Child>);

impl Drop for Owned {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

#[test]
fn wsgw_functions_keeps_the_library_on_every_primary_including_one_that_joins_later() {
    let cluster = RedisCluster::start();
    let addr = |p: &u16| format!("127.0.0.1:{p}");

    // Usage: no seeds is exit 64.
    let out = functions(&[], &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");

    // One pass: cluster.sh loaded it everywhere.
    let out = functions(&cluster.seeds, &[]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut want: Vec<String> = cluster
        .primaries
        .iter()
        .map(|p| format!("{} present", addr(p)))
        .collect();
    want.sort();
    assert_eq!(lines(&out), want);

    // Gone from one primary: the next pass loads it there only.
    let lost = cluster.primaries[1];
    assert_eq!(redis_cli(lost, &["FUNCTION", "DELETE", "wsgw"]), "OK");
    assert!(!has_library(lost));
    let out = functions(&cluster.seeds, &[]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(lines(&out).contains(&format!("{} loaded", addr(&lost))), "{out:?}");
    assert_eq!(
        lines(&out).iter().filter(|l| l.ends_with(" present")).count(),
        2,
        "{out:?}"
    );
    assert!(has_library(lost));

    // The watcher, at its default interval, then a primary that joins later.
    let mut owned = Owned(Vec::new());
    owned.0.push(
        functions(&cluster.seeds, &["--watch"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let port = cluster_port();
    let dir = cluster.run.join("joined");
    std::fs::create_dir_all(&dir).unwrap();
    owned.0.push(
        Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--cluster-enabled",
                "yes",
            ])
            .args(["--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"])
            .args(["--save", "", "--appendonly", "no", "--dir", dir.to_str().unwrap()])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the new redis-server", Duration::from_secs(10), || {
        redis_cli(port, &["PING"]) == "PONG"
    });
    // Joined with CLUSTER MEET: unlike `redis-cli --cluster add-node`, which copies the
    // Functions over, nothing brings the library along.
    let seed = cluster.primaries[0];
    assert_eq!(
        redis_cli(port, &["CLUSTER", "MEET", "127.0.0.1", &seed.to_string()]),
        "OK"
    );
    let new_id = redis_cli(port, &["CLUSTER", "MYID"]);
    wait_for("every primary to know the new node", Duration::from_secs(20), || {
        cluster
            .primaries
            .iter()
            .all(|p| redis_cli(*p, &["CLUSTER", "NODES"]).contains(&new_id))
    });

    // The id-shard whose hash-tag slot is nearest the start of its owner's range: moving that
    // many slots (the lowest ones) from that owner gives the new primary this shard.
    let slot_of = |key: &str| -> u16 { redis_cli(seed, &["CLUSTER", "KEYSLOT", key]).parse().unwrap() };
    let range_start = |p: u16| -> u16 {
        let nodes = redis_cli(seed, &["CLUSTER", "NODES"]);
        let line = nodes.lines().find(|l| l.contains(&format!("127.0.0.1:{p}@"))).unwrap();
        let first = line.split_whitespace().nth(8).unwrap();
        first.split('-').next().unwrap().parse().unwrap()
    };
    let (shard, from, count) = (0..16u16)
        .map(|s| {
            let key = format!("ws:{{{s}}}seq");
            let from = owner(&cluster, &key);
            (s, from, slot_of(&key) - range_start(from) + 1)
        })
        .min_by_key(|(_, _, count)| *count)
        .unwrap();
    let from_id = redis_cli(from, &["CLUSTER", "MYID"]);
    // Nobody gave it the library while it had no slots (the watcher skips those).
    assert!(
        !has_library(port),
        "a primary that joined with CLUSTER MEET has no library yet"
    );
    let reshard_at = Instant::now();
    let reshard = Command::new("redis-cli")
        .args([
            "--cluster",
            "reshard",
            &addr(&seed),
            "--cluster-from",
            &from_id,
            "--cluster-to",
            &new_id,
        ])
        .args(["--cluster-slots", &count.to_string(), "--cluster-yes"])
        .output()
        .unwrap();
    assert!(reshard.status.success(), "{reshard:?}");
    let resharded = reshard_at.elapsed();
    let key = format!("ws:{{{shard}}}seq");
    assert_eq!(owner(&cluster, &key), port, "shard {shard} moved to the new primary");

    // Within 30 s of getting slots, the new primary has the library.
    let took = wait_for("the library on the new primary", Duration::from_secs(30), || {
        has_library(port)
    });
    eprintln!("{count} slots resharded in {resharded:?}; the library on the new primary {took:?} later");
    let mut ports = cluster.primaries.clone();
    ports.extend(&cluster.replicas);
    ports.push(port);
    wait_for("cluster_state:ok on every node", Duration::from_secs(20), || {
        ports
            .iter()
            .all(|p| redis_cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
    });

    // And a backend's publish into the moved shard works.
    let channel = (0..)
        .map(|i| format!("room:{i}"))
        .find(|c| shard_of(c) == shard)
        .unwrap();
    let out = Command::new("redis-cli")
        .args([
            "-c",
            "-h",
            "127.0.0.1",
            "-p",
            &seed.to_string(),
            "FCALL",
            "wsgw_publish",
            "2",
        ])
        .args([key.clone(), format!("ws:{{{shard}}}history:{channel}"), channel.clone()])
        .args(["note", r#"{"text":"hello"}"#])
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let parsed: EventId = id
        .parse()
        .unwrap_or_else(|_| panic!("an event id of shard {shard}, not {id:?} ({out:?})"));
    assert_eq!(parsed.shard(), Some(shard), "{id}");
}
