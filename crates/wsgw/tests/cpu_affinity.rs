//! `WSGW_CPU_AFFINITY` on the real binary and a real redis-server: what an operator sees in
//! `/proc/<pid>/task/*/status` (`Cpus_allowed_list`). `auto` with a runtime thread for every CPU
//! pins each to a CPU of its own; `auto` with fewer threads than CPUs and `off` leave the mask
//! alone; `per_core`'s runtime threads pin too. Each node still delivers.

use crate::common;

use std::time::Duration;

use common::cluster::*;
use common::*;
use serde_json::json;

/// A CPU list as the kernel prints it (`0-3,6`).
fn parse_cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

/// `Cpus_allowed_list` of a `/proc/.../status` file.
fn allowed_in(status_path: &str) -> Vec<usize> {
    let status = std::fs::read_to_string(status_path).unwrap_or_default();
    let line = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list");
    parse_cpu_list(&line["Cpus_allowed_list:".len()..])
}

/// Every thread of `pid` named one of `names`, with the CPUs it may run on.
fn threads_named(pid: u32, names: &[&str]) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the node's threads") {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if names.contains(&comm.trim()) {
            out.push(allowed_in(&format!("{}/status", dir.display())));
        }
    }
    out
}

/// Waits (up to 10 s) until the runtime threads' masks satisfy `ok`; returns the last masks.
async fn masks_until(pid: u32, names: &[&str], ok: impl Fn(&[Vec<usize>]) -> bool) -> Vec<Vec<usize>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let masks = threads_named(pid, names);
        if ok(&masks) || tokio::time::Instant::now() > deadline {
            return masks;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One socket subscribes and gets a published event: the node serves while pinned.
async fn delivers(gw: &GatewayProc) {
    let (mut c, _) = gw.connect(&token("aff", &["room"], &[])).await;
    c.send(json!({"type": "subscribe", "channel": "room"})).await;
    c.expect("subscribed").await;
    let (status, body) = gw
        .api_post("/api/publish", json!({"channel": "room", "event": "n", "data": 7}))
        .await;
    assert_eq!(status, 200, "{body}");
    let got = c.events(1).await;
    assert_eq!(got[0]["data"], 7);
    assert_eq!(got[0]["event_id"], body["event_id"]);
}

/// `want` of the threads each pinned to a CPU of `cpus`, no two on one CPU while there are
/// CPUs to spare. Other threads of that name (the blocking pool's, which tokio names like its
/// workers) may keep the whole mask.
fn pinned_apart(masks: &[Vec<usize>], want: usize, cpus: &[usize]) -> bool {
    if cpus.len() == 1 {
        return masks.len() >= want && masks.iter().all(|m| m == cpus);
    }
    let mut pinned: Vec<usize> = masks.iter().filter(|m| m.len() == 1).map(|m| m[0]).collect();
    let count = pinned.len();
    pinned.sort_unstable();
    pinned.dedup();
    count == want
        && pinned.len() == want.min(cpus.len())
        && pinned.iter().all(|c| cpus.contains(c))
        && masks.iter().all(|m| m.len() == 1 || m == cpus)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_pins_one_worker_per_cpu_and_off_or_fewer_workers_do_not() {
    let cpus = allowed_in("/proc/self/status");
    assert!(!cpus.is_empty());
    let redis = RedisServer::start().await;
    let n = cpus.len().to_string();

    // `auto` (the default) with a worker for every CPU: each worker on a CPU of its own.
    let gw = GatewayProc::start(&redis, "aff-auto", &[("WSGW_WORKER_THREADS", n.as_str())]).await;
    delivers(&gw).await;
    let workers = ["tokio-rt-worker"];
    let masks = masks_until(gw.pid(), &workers, |m| pinned_apart(m, cpus.len(), &cpus)).await;
    assert!(
        pinned_apart(&masks, cpus.len(), &cpus),
        "auto, {n} workers on CPUs {cpus:?}: {masks:?}"
    );
    drop(gw);

    // `off`: every worker keeps the whole mask.
    let env = [("WSGW_WORKER_THREADS", n.as_str()), ("WSGW_CPU_AFFINITY", "off")];
    let gw = GatewayProc::start(&redis, "aff-off", &env).await;
    delivers(&gw).await;
    let masks = threads_named(gw.pid(), &workers);
    assert!(masks.len() >= cpus.len(), "off: {masks:?}");
    assert!(masks.iter().all(|m| *m == cpus), "off: {masks:?}, want {cpus:?} each");
    drop(gw);

    // `auto` with fewer workers than CPUs leaves them to the kernel; `on` pins them anyway.
    if cpus.len() >= 2 {
        let gw = GatewayProc::start(&redis, "aff-few", &[("WSGW_WORKER_THREADS", "1")]).await;
        delivers(&gw).await;
        let masks = threads_named(gw.pid(), &workers);
        assert!(
            !masks.is_empty() && masks.iter().all(|m| *m == cpus),
            "auto, 1 worker on CPUs {cpus:?}: {masks:?}"
        );
        drop(gw);

        let env = [("WSGW_WORKER_THREADS", "1"), ("WSGW_CPU_AFFINITY", "on")];
        let gw = GatewayProc::start(&redis, "aff-on", &env).await;
        delivers(&gw).await;
        let masks = masks_until(gw.pid(), &workers, |m| pinned_apart(m, 1, &cpus)).await;
        assert!(pinned_apart(&masks, 1, &cpus), "on, 1 worker: {masks:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_core_runtimes_pin_to_a_cpu_each() {
    let cpus = allowed_in("/proc/self/status");
    let redis = RedisServer::start().await;
    let n = cpus.len().to_string();
    let env = [("WSGW_RUNTIME", "per_core"), ("WSGW_WORKER_THREADS", n.as_str())];
    let gw = GatewayProc::start(&redis, "aff-pc", &env).await;
    delivers(&gw).await;
    // The main thread (named after the binary) runs the first runtime, wsgw-core-N the others.
    let mut names = vec!["wsgw".to_owned()];
    names.extend((1..cpus.len()).map(|i| format!("wsgw-core-{i}")));
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let masks = masks_until(gw.pid(), &names, |m| pinned_apart(m, cpus.len(), &cpus)).await;
    assert!(
        pinned_apart(&masks, cpus.len(), &cpus),
        "per_core on CPUs {cpus:?}: {masks:?}"
    );
}

#[test]
fn cpu_lists_parse_as_the_kernel_prints_them() {
    assert_eq!(parse_cpu_list("0-1\n"), vec![0, 1]);
    assert_eq!(parse_cpu_list("0,2-4,7"), vec![0, 2, 3, 4, 7]);
    assert_eq!(parse_cpu_list("3"), vec![3]);
}
