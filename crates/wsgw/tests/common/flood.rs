//! A flood on a node's Redis pub/sub connection while the node is stopped (`SIGSTOP`), for the
//! tests of what the node holds in memory meanwhile (broker/redis/held.rs): junk on the node's
//! control channel (read and ignored, so it costs no fan-out) with events of a socket's channel
//! among it, then a `subscribe` that reaches the node with the flood still ahead of its
//! confirmation.

use serde_json::{Value, json};

use super::Client;
use super::cluster::publish_cmd;

/// Messages of junk, and their size: 343 MiB in all, over five times the 64 MiB the node holds,
/// so that the bound is passed even when the node reads a few of its drains (256 messages or
/// 200 ms each) before the subscribe reaches its pub/sub task.
pub const JUNK_MESSAGES: usize = 3000;
pub const JUNK_BYTES: usize = 120_000;
/// Events of the reader's channel among the junk.
pub const EVENTS: usize = 20;

/// A `/proc/<pid>/status` figure in KiB (`VmRSS`, `VmHWM`: the peak).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

pub fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(ok.success(), "kill {sig} {pid}");
}

/// Lets Redis queue without limit for pub/sub clients (it cuts one 32 MB behind by default), so
/// only the node's own bound acts.
pub async fn unlimited_pubsub_output(admin: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "client-output-buffer-limit", "pubsub 0 0 0"])
        .query_async(admin)
        .await
        .unwrap();
}

/// Stops node `pid`, has Redis queue the junk for it with `EVENTS` events on `channel` among
/// it, sends `joiner`'s subscribe to `later`, and lets the node go on. The events' ids.
pub async fn flood_stopped_node(
    admin: &mut redis::aio::MultiplexedConnection,
    pid: u32,
    channel: &str,
    joiner: &mut Client,
    later: &str,
) -> Vec<String> {
    signal(pid, "-STOP");
    let junk = "x".repeat(JUNK_BYTES);
    let mut ids = Vec::new();
    for n in 0..EVENTS {
        let mut pipe = redis::pipe();
        for _ in 0..JUNK_MESSAGES / EVENTS {
            pipe.cmd("PUBLISH").arg("ws:control").arg(&junk).ignore();
        }
        pipe.add_command(publish_cmd(channel, "e", &json!({"n": n}).to_string()));
        let (id,): (String,) = pipe.query_async(admin).await.unwrap();
        ids.push(id);
    }
    joiner.send(json!({"type": "subscribe", "channel": later})).await;
    signal(pid, "-CONT");
    ids
}

/// The ids of the next `n` events on `reader`, which must get nothing but events (and pings):
/// no `gap`, since history holds them all.
pub async fn only_events(reader: &mut Client, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        let f: Value = reader.next().await.expect("the reader's socket stays open");
        match f["type"].as_str() {
            Some("event") => got.push(f["event_id"].as_str().unwrap().to_string()),
            Some("ping") => {}
            _ => panic!("only events were expected (no gap: history holds them all), got {f}"),
        }
    }
    got
}

/// Asserts that node `pid`'s peak memory grew by less than 140 MiB since `rss_before_kib`,
/// with 343 MiB queued for it.
pub fn assert_memory_bounded(pid: u32, rss_before_kib: u64) {
    let grew_mib = status_kib(pid, "VmHWM").saturating_sub(rss_before_kib) / 1024;
    assert!(
        grew_mib < 140,
        "the node's peak memory grew by {grew_mib} MiB for {} MiB queued: held messages are bounded at 64 MiB",
        (JUNK_MESSAGES * JUNK_BYTES) >> 20
    );
}
