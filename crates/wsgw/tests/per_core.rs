//! `WSGW_RUNTIME=per_core` on the real binary and a real redis-server: one `SO_REUSEPORT`
//! listener per runtime on the one port, sockets served on every runtime, every event delivered
//! once and in order to every socket, a second node refused on that port, and a drain that
//! closes every runtime's sockets with 1012.

use crate::common;

use std::time::Duration;

use common::cluster::*;
use common::*;
use serde_json::json;

const SOCKETS: usize = 40;
const EVENTS: usize = 30;

/// Listening TCP sockets on 127.0.0.1:`port` (from /proc/net/tcp, state 0A).
fn listeners_on(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == local && f[3] == "0A"
        })
        .count()
}

/// CPU time (ns) of the thread named `name` in process `pid`, from its schedstat.
fn thread_cpu_ns(pid: u32, name: &str) -> u64 {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the node's threads") {
        let dir = task.unwrap().path();
        if std::fs::read_to_string(dir.join("comm")).unwrap_or_default().trim() == name {
            let stat = std::fs::read_to_string(dir.join("schedstat")).expect("schedstat");
            return stat.split_whitespace().next().and_then(|n| n.parse().ok()).expect("ns");
        }
    }
    panic!("no thread named {name} in process {pid}");
}

/// A second `per_core` node started on a port the first holds exits 1 with "in use" instead of
/// sharing the port (and its connects) through `SO_REUSEPORT`.
async fn second_node_on_the_port_is_refused(redis: &RedisServer, port: u16) {
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_wsgw"))
        .env_clear()
        .env("WSGW_LISTEN", format!("127.0.0.1:{port}"))
        .env("WSGW_REDIS_URL", redis.url())
        .env("WSGW_JWT_SECRET", SECRET)
        .env("WSGW_API_KEY", API_KEY)
        .env("WSGW_RUNTIME", "per_core")
        .env("WSGW_WORKER_THREADS", "2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("wsgw runs");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if tokio::time::Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second per_core node on port {port} was still running after 20 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(second.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    assert!(stderr.contains("is in use by another socket"), "stderr:\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_core_runtimes_share_the_port_deliver_every_event_in_order_and_drain_together() {
    let redis = RedisServer::start().await;
    let env = [("WSGW_RUNTIME", "per_core"), ("WSGW_WORKER_THREADS", "2")];
    let mut gw = GatewayProc::start(&redis, "pc-1", &env).await;
    assert_eq!(listeners_on(gw.port), 2, "one listener per runtime on port {}", gw.port);
    second_node_on_the_port_is_refused(&redis, gw.port).await;
    assert_eq!(listeners_on(gw.port), 2, "still only the first node's listeners");
    let before = thread_cpu_ns(gw.pid(), "wsgw-core-1");

    let mut clients = Vec::with_capacity(SOCKETS);
    for i in 0..SOCKETS {
        let (mut c, w) = gw.connect(&token(&format!("u{i}"), &["room"], &[])).await;
        assert_eq!(w["node"], "pc-1");
        c.send(json!({"type": "subscribe", "channel": "room"})).await;
        c.expect("subscribed").await;
        clients.push(c);
    }
    let mut ids = Vec::with_capacity(EVENTS);
    for n in 0..EVENTS {
        let (status, body) = gw
            .api_post("/api/publish", json!({"channel": "room", "event": "n", "data": n}))
            .await;
        assert_eq!(status, 200, "{body}");
        ids.push(body["event_id"].as_str().expect("event_id").to_owned());
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let got: Vec<(String, u64)> = c
            .events(EVENTS)
            .await
            .iter()
            .map(|e| (e["event_id"].as_str().unwrap().to_owned(), e["data"].as_u64().unwrap()))
            .collect();
        let want: Vec<(String, u64)> = ids.iter().cloned().zip(0..EVENTS as u64).collect();
        assert_eq!(got, want, "socket {i}: every event once, in order");
    }
    // The kernel spread the connects over both listeners: the second runtime did real work
    // (handshakes, reads, writes of about half the sockets), not just its idle wake-ups.
    let used = thread_cpu_ns(gw.pid(), "wsgw-core-1") - before;
    assert!(used > 1_000_000, "wsgw-core-1 used {used} ns serving {SOCKETS} sockets");

    let stopping = tokio::task::spawn_blocking(move || gw.terminate());
    for (i, c) in clients.iter_mut().enumerate() {
        let (code, frames) = tokio::time::timeout(Duration::from_secs(10), c.until_closed())
            .await
            .expect("closed in time");
        assert_eq!(code, Some(1012), "socket {i}; frames before the close: {frames:?}");
    }
    assert_eq!(stopping.await.unwrap(), Some(0), "the node exits 0 after the drain");
}
