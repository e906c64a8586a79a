//! Publishing into a real Redis Cluster: 3 primaries with one replica each, started by
//! `scripts/cluster.sh start 0 --redis-cluster 3`. Checks the topology and the Function on every
//! node, then the backend rule of docs/backends.md ("Publishing into a Redis Cluster") with its
//! redis-cli, Python, Node and Go snippets: each event lands in its channel's id-shard (id
//! `<shard>~<ms>-<seq>`, history stream and sharded pub/sub channel with the shard's hash tag, on
//! the primary holding it), shards spread over all 3 primaries, ids rise within a shard, and
//! keys of another shard are refused with nothing stored.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::redis_cluster::{RedisCluster, owner, redis_cli, root};
use common::{node_path_with_redis, stdout_of};
use redis::{AsyncCommands, PushKind, Value as RedisValue};
use serde_json::Value;
use wsgw_protocol::{EventId, ShardCursor, shard_of};

const REDIS_CLI_SNIPPET: &str =
    r#"redis-cli -c FCALL wsgw_publish 2 'ws:{6}seq' 'ws:{6}history:user:42' user:42 note '{"text":"hello"}'"#;

const PYTHON_SNIPPET: &str = r#"import json
import os
import zlib

from redis.cluster import RedisCluster


def wsgw_keys(channel, prefix='ws:'):
    shard = zlib.crc32(channel.encode()) % 16
    return [f'{prefix}{{{shard}}}seq', f'{prefix}{{{shard}}}history:{channel}']


r = RedisCluster.from_url(os.environ.get('REDIS_CLUSTER_URL', 'redis://localhost:7000'))
event_id = r.fcall('wsgw_publish', 2, *wsgw_keys('user:42'), 'user:42', 'note', json.dumps({"text": "hello"}))
print(event_id.decode())"#;

const NODE_SNIPPET: &str = r#"const { createCluster } = require('redis');
const { crc32 } = require('node:zlib');

function wsgwKeys(channel, prefix = 'ws:') {
  const shard = crc32(channel) % 16;
  return [`${prefix}{${shard}}seq`, `${prefix}{${shard}}history:${channel}`];
}

async function main() {
  const cluster = createCluster({ rootNodes: [{ url: process.env.REDIS_CLUSTER_URL || 'redis://localhost:7000' }] });
  await cluster.connect();
  // Routed by the first key: node-redis v4's cluster.fCall() picks a random node instead.
  const keys = wsgwKeys('user:42');
  const eventId = await cluster.sendCommand(keys[0], false, [
    'FCALL', 'wsgw_publish', '2', ...keys, 'user:42', 'note', JSON.stringify({ text: 'hello' }),
  ]);
  console.log(eventId);
  await cluster.quit();
}

main();"#;

const GO_SNIPPET: &str = r#"package main

import (
	"fmt"
	"hash/crc32"
	"os"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/mna/redisc"
)

func wsgwKeys(channel, prefix string) []string {
	shard := crc32.ChecksumIEEE([]byte(channel)) % 16
	return []string{fmt.Sprintf("%s{%d}seq", prefix, shard), fmt.Sprintf("%s{%d}history:%s", prefix, shard, channel)}
}

func main() {
	addr := os.Getenv("REDIS_CLUSTER_ADDR")
	if addr == "" {
		addr = "localhost:7000"
	}
	cluster := &redisc.Cluster{StartupNodes: []string{addr}}
	defer cluster.Close()
	if err := cluster.Refresh(); err != nil {
		panic(err)
	}
	keys := wsgwKeys("user:42", "ws:")
	conn := cluster.Get()
	defer conn.Close()
	// On the primary that holds the keys' slot; MOVED and ASK (a slot being moved) are followed.
	if err := redisc.BindConn(conn, keys...); err != nil {
		panic(err)
	}
	rc, err := redisc.RetryConn(conn, 3, 100*time.Millisecond)
	if err != nil {
		panic(err)
	}
	id, err := redis.String(rc.Do("FCALL", "wsgw_publish", 2, keys[0], keys[1], "user:42", "note", `{"text":"hello"}`))
	if err != nil {
		panic(err)
	}
	fmt.Println(id)
}"#;

fn run(program: &str, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap_or_else(|e| panic!("{program} runs: {e}"))
}

fn write_temp(ext: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("wsgw-cluster-snippet-{}.{ext}", std::process::id()));
    std::fs::write(&path, format!("{text}\n")).unwrap();
    path
}

/// Every sharded pub/sub message until `want` arrived or 10 s passed, by channel.
async fn collect(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
    want: usize,
) -> BTreeMap<String, Vec<String>> {
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.values().map(Vec::len).sum::<usize>() < want {
        let Ok(Some(push)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            break;
        };
        if push.kind != PushKind::SMessage {
            continue;
        }
        let text = |v: &RedisValue| match v {
            RedisValue::BulkString(b) => String::from_utf8_lossy(b).to_string(),
            other => format!("{other:?}"),
        };
        got.entry(text(&push.data[0])).or_default().push(text(&push.data[1]));
    }
    got
}

/// A message's previous event, from its header line if it has one, and its frame.
fn split_header(m: &str) -> (Option<&str>, &str) {
    match m.strip_prefix("#x:~") {
        Some(rest) => {
            let (prev, frame) = rest.split_once('\n').expect("a header line ends");
            (Some(prev), frame)
        }
        None => (None, m),
    }
}

/// The `event_id` of each message's frame. A message after a channel's first carries the
/// header line `#x:~<previous id>` (docs/backends.md): each one here names the message before
/// it, without its shard.
fn ids_of(messages: &[String]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for m in messages {
        let (prev, frame) = split_header(m);
        let id = serde_json::from_str::<Value>(frame).unwrap()["event_id"]
            .as_str()
            .unwrap()
            .to_string();
        if let Some(before) = ids.last() {
            let before = before.split_once('~').expect("a cluster id").1;
            assert_eq!(prev, Some(before), "the previous event named in the header of {m}");
        }
        ids.push(id);
    }
    ids
}

#[tokio::test]
async fn backends_publish_into_a_redis_cluster_by_the_documented_shard_rule() {
    let doc = std::fs::read_to_string(root().join("docs/backends.md")).unwrap();
    for (name, snippet) in [
        ("redis-cli", REDIS_CLI_SNIPPET),
        ("python", PYTHON_SNIPPET),
        ("node", NODE_SNIPPET),
        ("go", GO_SNIPPET),
    ] {
        assert!(
            doc.contains(snippet),
            "docs/backends.md no longer contains the {name} snippet:\n{snippet}"
        );
    }
    assert!(
        doc.contains("### Publishing into a Redis Cluster"),
        "the section's heading"
    );

    let cluster = RedisCluster::start();

    // 3 primaries, each with one replica, and the Function on all 6.
    assert_eq!((cluster.primaries.len(), cluster.replicas.len()), (3, 3));
    let nodes = redis_cli(cluster.primaries[0], &["CLUSTER", "NODES"]);
    for r in &cluster.replicas {
        let line = nodes
            .lines()
            .find(|l| l.contains(&format!(":{r}@")))
            .expect("replica listed");
        let master = line.split_whitespace().nth(3).unwrap();
        let primary = nodes
            .lines()
            .find(|l| l.starts_with(master))
            .expect("its primary is listed");
        assert!(primary.contains("master"), "replica {r} follows a primary: {primary}");
    }
    for port in cluster.primaries.iter().chain(&cluster.replicas) {
        let libs = redis_cli(*port, &["FUNCTION", "LIST", "LIBRARYNAME", "wsgw"]);
        assert!(
            libs.contains("wsgw_publish"),
            "the Function on 127.0.0.1:{port}: {libs}"
        );
    }

    // One channel per primary (shards are spread over all three), plus user:42 of the snippets.
    let mut by_primary: BTreeMap<u16, String> = BTreeMap::new();
    for i in 0..200 {
        let ch = format!("room:{i}");
        let tag = format!("{{{}}}", shard_of(&ch));
        by_primary.entry(owner(&cluster, &tag)).or_insert(ch);
    }
    assert_eq!(
        by_primary.len(),
        3,
        "the 16 id-shards cover all 3 primaries: {by_primary:?}"
    );
    let mut channels: Vec<String> = by_primary.values().cloned().collect();
    channels.push("user:42".into());

    // A subscriber on each channel's sharded pub/sub channel, through the cluster.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let client = redis::cluster::ClusterClientBuilder::new(cluster.seeds.clone())
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(tx)
        .build()
        .unwrap();
    let mut sub = client.get_async_connection().await.expect("cluster connection");
    for ch in &channels {
        let s = shard_of(ch);
        sub.ssubscribe(format!("ws:{{{s}}}{ch}")).await.expect("SSUBSCRIBE");
    }
    let mut conn = client.get_async_connection().await.unwrap();

    // 5 events on each channel, through the cluster connection: ids of the channel's shard,
    // rising, each in the shard's history stream on the primary that holds the shard.
    let mut published: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for round in 0..5 {
        for ch in &channels {
            let s = shard_of(ch);
            let id: String = redis::cmd("FCALL")
                .arg("wsgw_publish")
                .arg(2)
                .arg(format!("ws:{{{s}}}seq"))
                .arg(format!("ws:{{{s}}}history:{ch}"))
                .arg(ch)
                .arg("tick")
                .arg(format!("{{\"round\":{round}}}"))
                .query_async(&mut conn)
                .await
                .expect("FCALL wsgw_publish");
            published.entry(ch.clone()).or_default().push(id);
        }
    }
    // A client's cursor over all of them: the newest id of each shard.
    let mut cursor = ShardCursor::default();
    for (ch, ids) in &published {
        let s = shard_of(ch);
        let parsed: Vec<EventId> = ids
            .iter()
            .map(|id| id.parse().unwrap_or_else(|e| panic!("{ch}: {e}")))
            .collect();
        assert!(
            parsed.iter().all(|p| p.shard() == Some(s)),
            "{ch}: ids name shard {s}: {ids:?}"
        );
        assert!(parsed.windows(2).all(|w| w[0] < w[1]), "{ch}: ids rise: {ids:?}");
        parsed.iter().for_each(|p| {
            cursor.advance(*p);
        });
        let key = format!("ws:{{{s}}}history:{ch}");
        let held = owner(&cluster, &key);
        let stream = redis_cli(held, &["XRANGE", &key, "-", "+"]);
        for id in ids {
            let plain = id.split_once('~').unwrap().1;
            assert!(
                stream.contains(plain),
                "{key} on 127.0.0.1:{held} holds {plain}: {stream}"
            );
            assert!(
                stream.contains(&format!("\"event_id\":\"{id}\"")),
                "the stored frame carries {id}"
            );
        }
    }
    let shards: BTreeSet<u16> = channels.iter().map(|c| shard_of(c)).collect();
    assert_eq!(
        cursor.iter().filter_map(|p| p.shard()).collect::<BTreeSet<_>>(),
        shards,
        "one position per shard: {cursor}"
    );
    assert_eq!(cursor.to_string().parse::<ShardCursor>().unwrap(), cursor);
    let got = collect(&mut rx, channels.len() * 5).await;
    for (ch, ids) in &published {
        let s = shard_of(ch);
        let frames = got.get(&format!("ws:{{{s}}}{ch}")).cloned().unwrap_or_default();
        assert_eq!(
            &ids_of(&frames),
            ids,
            "{ch}: every event once, in order, on its sharded channel"
        );
    }

    // Keys of another shard: refused with the right ones named, nothing stored.
    let wrong: redis::RedisResult<String> = redis::cmd("FCALL")
        .arg("wsgw_publish")
        .arg(2)
        .arg("ws:{5}seq")
        .arg("ws:{5}history:user:42")
        .arg("user:42")
        .arg("note")
        .arg("{}")
        .query_async(&mut conn)
        .await;
    let e = wrong.expect_err("a wrong shard is refused").to_string();
    assert!(
        e.contains("channel user:42 is in id-shard 6; keys must be ws:{6}seq ws:{6}history:user:42"),
        "{e}"
    );
    let _: () = conn.del("ws:{5}history:user:42").await.unwrap();

    // The snippets: each prints an id of shard 6 that reaches user:42's sharded channel.
    let mut snippet_ids = Vec::new();
    let seed_port = cluster.primaries[0];
    let script = format!("redis-cli() {{ command redis-cli -p {seed_port} \"$@\"; }}\n{REDIS_CLI_SNIPPET}\n");
    snippet_ids.push(stdout_of("redis-cli -c FCALL", &run("bash", &["-c", &script], &[])));
    let env = [("REDIS_CLUSTER_URL", cluster.seeds[1].clone())];
    if run("python3", &["-c", "from redis.cluster import RedisCluster"], &[])
        .status
        .success()
    {
        let path = write_temp("py", PYTHON_SNIPPET);
        snippet_ids.push(stdout_of("python3", &run("python3", &[path.to_str().unwrap()], &env)));
        let _ = std::fs::remove_file(path);
    } else {
        eprintln!("note: python3 has no `redis` module (pip install redis): the Python snippet was not run");
    }
    if let Some(node_path) = node_path_with_redis() {
        let path = write_temp("js", NODE_SNIPPET);
        let env = [env[0].clone(), ("NODE_PATH", node_path)];
        snippet_ids.push(stdout_of("node", &run("node", &[path.to_str().unwrap()], &env)));
        let _ = std::fs::remove_file(path);
    } else {
        eprintln!("note: node cannot require('redis') (npm install redis@4): the Node snippet was not run");
    }
    // Go in GOPATH mode on the Debian packages of redigo and redisc (no module proxy needed).
    let go_cache = std::env::temp_dir().join("wsgw-go-build-cache");
    let go_env = [
        ("GO111MODULE", "off".to_string()),
        ("GOPATH", "/usr/share/gocode".to_string()),
        ("GOFLAGS", String::new()),
        ("GOCACHE", go_cache.display().to_string()),
    ];
    let go_ready = Command::new("go")
        .args(["list", "github.com/gomodule/redigo/redis", "github.com/mna/redisc"])
        .envs(go_env.clone())
        .output()
        .is_ok_and(|o| o.status.success());
    if go_ready {
        let dir = std::env::temp_dir().join(format!("wsgw-cluster-snippet-{}-go", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("main.go");
        std::fs::write(&path, format!("{GO_SNIPPET}\n")).unwrap();
        let mut env = go_env.to_vec();
        env.push(("REDIS_CLUSTER_ADDR", format!("127.0.0.1:{}", cluster.primaries[2])));
        let started = std::time::Instant::now();
        snippet_ids.push(stdout_of(
            "go run main.go",
            &run("go", &["run", path.to_str().unwrap()], &env),
        ));
        eprintln!("the Go snippet ran in {:?} (go run, build included)", started.elapsed());
        let _ = std::fs::remove_dir_all(dir);
    } else {
        eprintln!(
            "note: no `go` with redigo and redisc under /usr/share/gocode (apt-get install golang-go \
             golang-github-gomodule-redigo-dev golang-github-mna-redisc-dev): the Go snippet was not run"
        );
    }
    let got = collect(&mut rx, snippet_ids.len()).await;
    let frames = got.get("ws:{6}user:42").cloned().unwrap_or_default();
    assert_eq!(
        ids_of(&frames),
        snippet_ids,
        "each snippet's printed id, on user:42's sharded channel"
    );
    let distinct: BTreeSet<&String> = snippet_ids.iter().collect();
    assert_eq!(distinct.len(), snippet_ids.len());
    let history = "ws:{6}history:user:42";
    let held = owner(&cluster, history);
    let stream = redis_cli(held, &["XRANGE", history, "-", "+"]);
    for id in &snippet_ids {
        assert!(
            stream.contains(&format!("\"event_id\":\"{id}\"")),
            "{history} on 127.0.0.1:{held} holds the snippet's event {id}: {stream}"
        );
        assert!(id.starts_with("6~"), "user:42 is in shard 6: {id}");
        let message = &frames[snippet_ids.iter().position(|x| x == id).unwrap()];
        let frame: Value = serde_json::from_str(split_header(message).1).unwrap();
        assert_eq!(
            (&frame["channel"], &frame["event"], &frame["data"]),
            (
                &Value::from("user:42"),
                &Value::from("note"),
                &serde_json::json!({"text": "hello"})
            )
        );
    }
}

/// While a shard's slot migrates, the Function's undeclared keys (the channel's meta) may be on
/// the target already: a publish on the source then fails whole, storing nothing (no id taken,
/// no stream entry), instead of failing after half of its writes.
#[tokio::test]
async fn a_publish_during_a_slot_migration_fails_whole_or_not_at_all() {
    let cluster = RedisCluster::start();
    let channel = "t:8";
    let s = shard_of(channel);
    let (seq, hist, meta) = (
        format!("ws:{{{s}}}seq"),
        format!("ws:{{{s}}}history:{channel}"),
        format!("ws:{{{s}}}meta:{channel}"),
    );
    let fcall = |port: u16| {
        redis_cli(
            port,
            // History TTL and size given, as the gateway gives them: no config read first.
            &[
                "FCALL",
                "wsgw_publish",
                "2",
                &seq,
                &hist,
                channel,
                "e",
                r#"{"n":1}"#,
                "3600000",
                "1000",
            ],
        )
    };
    let source = owner(&cluster, &seq);
    let target = *cluster.primaries.iter().find(|p| **p != source).unwrap();
    let first = fcall(source);
    assert!(first.starts_with(&format!("{s}~")), "{first}");
    let slot = redis_cli(source, &["CLUSTER", "KEYSLOT", &seq]);
    let (source_id, target_id) = (
        redis_cli(source, &["CLUSTER", "MYID"]),
        redis_cli(target, &["CLUSTER", "MYID"]),
    );
    assert_eq!(
        redis_cli(target, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source_id]),
        "OK"
    );
    assert_eq!(
        redis_cli(source, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target_id]),
        "OK"
    );
    // Only the meta has moved so far.
    let port = target.to_string();
    let moved = redis_cli(source, &["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS", &meta]);
    assert_eq!(moved, "OK");
    let before = (redis_cli(source, &["GET", &seq]), redis_cli(source, &["XLEN", &hist]));
    let refused = fcall(source);
    assert!(
        !refused.starts_with(&format!("{s}~")),
        "refused, not published: {refused}"
    );
    assert_eq!(
        (redis_cli(source, &["GET", &seq]), redis_cli(source, &["XLEN", &hist])),
        before,
        "nothing stored by the refused call ({refused})"
    );
}
