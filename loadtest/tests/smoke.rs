//! A real smoke run: an in-process gateway, the smoke scenario's engine against it (100 VUs,
//! broadcasts over HTTP for ~5 s), thresholds must pass and nothing may go missing. A second,
//! smaller run spreads its VUs over two worker processes (the built binary).

use std::path::Path;
use std::time::Duration;

use loadtest::{RunOptions, Scenario, run};
use wsgw::{Config, RunningGateway};

/// The gateways here run in this process, whose CPU the stopped-receivers window reads
/// (`server_pids` is ours): that test runs alone, the others side by side. Run together, another
/// test's load made the window run past 10 s, and its threads' exits made it read 0 CPU-s.
static PROCESS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

const SECRET: &str = "loadtest-smoke-secret-0123456789abcdef";
const API_KEY: &str = "loadtest-smoke-key";

async fn gateway() -> RunningGateway {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        node_id: "lt-smoke".into(),
        jwt_secret: Some(SECRET.into()),
        api_key: Some(API_KEY.into()),
        drain_ms: 200,
        ..Config::default()
    };
    RunningGateway::start(config).await.expect("gateway starts")
}

fn scenario(gw: &RunningGateway) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/smoke.toml");
    let mut sc = Scenario::load(&path).expect("smoke.toml");
    sc.target.urls = vec![format!("ws://{}/ws", gw.addr)];
    sc.target.api_url = Some(format!("http://{}", gw.addr));
    sc.target.secret = Some(SECRET.into());
    sc.target.api_key = Some(API_KEY.into());
    sc.target.server_pids = vec![std::process::id()];
    sc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_scenario_passes_against_a_real_gateway() {
    let _shared = PROCESS.read().await;
    let gw = gateway().await;
    let sc = scenario(&gw);
    assert_eq!(sc.max_vus(), 100);
    let opts = RunOptions {
        workers: Some(0),
        progress: true,
        worker_exe: None,
    };
    let s = tokio::time::timeout(Duration::from_secs(15), run(sc, opts))
        .await
        .expect("bounded")
        .expect("runs");
    print!("{}", s.render());
    let f = &s.figures;
    assert_eq!(f.welcomes, 100, "{:?}", f.error_samples);
    assert!(f.published >= 10, "published {}", f.published);
    assert_eq!(f.missing, 0);
    assert_eq!(f.duplicates, 0);
    // Every VU is up before the first publish (publish_delay), so each gets every broadcast.
    assert_eq!(f.delivered, f.published * 100);
    // 5/s from 1.5 s on: the publisher's own rate, not the whole run's (about 3.4/s).
    let achieved = f.publisher_rate_per_s.expect("the publisher's rate");
    let over_run = f.published as f64 / s.duration_s;
    assert!(
        achieved > over_run && achieved <= 5.5,
        "{achieved}/s (over the run {over_run}/s)"
    );
    assert!(f.delivery.count() > 0 && f.connect.count() == 100);
    // The 4 s hold with all 100 VUs up is measured apart from the ramps (a sample a second).
    let g = s.gateway.as_ref().expect("gateway figures");
    let held = g.held_s.expect("a held window");
    assert!((1.0..=5.0).contains(&held), "held {held} s");
    let held_cpu = g.held_cpu_s.expect("CPU while held");
    assert!(held_cpu <= g.cpu_s, "{held_cpu} s while held, {} s in all", g.cpu_s);
    assert!(s.thresholds_ok(), "thresholds: {:?}", s.thresholds);
    assert!(s.checks.iter().all(|c| c.fails == 0), "checks: {:?}", s.checks);
}

/// Runs `sc` with 200 VUs held `hold`, spread over two worker processes (the built binary),
/// within `limit_s` seconds, and prints its summary.
async fn in_two_workers(mut sc: Scenario, hold: &str, limit_s: u64) -> loadtest::Summary {
    sc.stages[0].target = 200;
    sc.stages[1].target = 200;
    sc.stages[1].duration = hold.into();
    let opts = RunOptions {
        workers: Some(2),
        progress: false,
        worker_exe: Some(env!("CARGO_BIN_EXE_wsgw-loadtest").into()),
    };
    let s = tokio::time::timeout(Duration::from_secs(limit_s), run(sc, opts))
        .await
        .expect("bounded")
        .expect("runs");
    print!("{}", s.render());
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_merge_their_figures() {
    let _shared = PROCESS.read().await;
    let gw = gateway().await;
    let s = in_two_workers(scenario(&gw), "3s", 15).await;
    let f = &s.figures;
    assert_eq!(s.workers, 2);
    assert_eq!(f.welcomes, 200, "{:?}", f.error_samples);
    assert_eq!(f.connect.count(), 200, "histograms of both workers merged");
    assert_eq!(f.missing, 0);
    assert_eq!(f.delivered, f.published * 200);
    assert!(s.thresholds_ok(), "thresholds: {:?}", s.thresholds);
}

/// `stop_receivers`: the workers are stopped from the first publish until the gateway is idle,
/// then read everything. The gateway here is in this process, so its pid is ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_receivers_read_every_broadcast_after_the_fan_out_window() {
    let _alone = PROCESS.write().await;
    let gw = gateway().await;
    let mut sc = scenario(&gw);
    sc.workload.rate = 1000.0;
    sc.workload.messages = Some(30);
    sc.workload.publish_when_connected = true;
    sc.workload.stop_receivers = true;
    // No fixed grace: the run must wait for the backlog read after SIGCONT because deliveries
    // are still growing, not because a grace happened to be long enough.
    sc.grace_s = 0.0;
    let s = in_two_workers(sc, "2s", 30).await;
    let f = &s.figures;
    assert_eq!(f.welcomes, 200, "{:?}", f.error_samples);
    assert_eq!(f.published, 30);
    assert_eq!((f.delivered, f.missing, f.duplicates), (30 * 200, 0, 0));
    let window = f.stopped_fanout_s.expect("a fan-out window");
    let cpu = f.stopped_fanout_cpu_s.expect("the gateway's CPU in it");
    assert!(window > 0.0 && window < 10.0, "window {window} s");
    assert!(cpu > 0.0 && cpu <= window * 4.0, "{cpu} CPU-s in {window} s");
    // Nothing was read while the workers were stopped: each delivery waited out the window and
    // the 300 ms of quiet that end it.
    let fastest = f.delivery.quantile(0.0).expect("latencies");
    assert!(fastest >= 250_000, "a frame read {fastest} µs after its publish");
}
