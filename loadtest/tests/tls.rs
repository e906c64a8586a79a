//! The load tool over `wss://`: the built `wsgw-loadtest` binary against an in-process gateway
//! behind a real nginx TLS terminator (openssl-made CA and certificate; see
//! crates/wsgw-client/tests/support/tls_front.rs). With `--ca-file` every socket connects and
//! every broadcast arrives; with `--insecure` too; with the wrong CA every connect fails and
//! says why. Every run is bounded in time.

#[path = "../../crates/wsgw-client/tests/support/tls_front.rs"]
mod tls_front;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tls_front::TlsFront;
use wsgw::{Config, RunningGateway};

const SECRET: &str = "loadtest-tls-secret-0123456789abcdefghijk";
const API_KEY: &str = "loadtest-tls-key";

async fn gateway() -> RunningGateway {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        node_id: "lt-tls".into(),
        jwt_secret: Some(SECRET.into()),
        api_key: Some(API_KEY.into()),
        drain_ms: 200,
        ..Config::default()
    };
    RunningGateway::start(config).await.expect("gateway starts")
}

/// Runs `wsgw-loadtest <args> --json <file>` (at most 60 s); its exit code, the summary JSON
/// (Null when none was written) and its stdout + stderr.
async fn loadtest(args: &[String], dir: &Path, name: &str) -> (i32, Value, String) {
    let json = dir.join(format!("{name}.json"));
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsgw-loadtest"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .expect("the run ends within 60 s")
        .expect("wsgw-loadtest runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = std::fs::read(&json)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), summary, text)
}

fn broadcast_args(front: &TlsFront, gw: &RunningGateway, tls: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "broadcast",
        "--url",
        &front.wss_url(),
        "--api",
        &format!("http://{}", gw.addr),
        "--api-key",
        API_KEY,
        "--secret",
        SECRET,
        "--connections",
        "300",
        "--messages",
        "10",
        "--rate",
        "10",
        "--timeout-s",
        "20",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(tls.iter().map(|s| s.to_string()));
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_over_wss_through_nginx_with_the_ca_file() {
    let gw = gateway().await;
    let front = TlsFront::start(gw.addr);
    let ca = front.path("ca.pem").display().to_string();
    let args = broadcast_args(&front, &gw, &["--ca-file", &ca]);
    let (code, s, out) = loadtest(&args, &front.dir, "ca-file").await;
    println!("{out}");
    let f = &s["figures"];
    assert_eq!(code, 0, "thresholds pass (missing == 0, connect_failures == 0): {out}");
    assert_eq!(f["welcomes"], 300, "{out}");
    assert_eq!(f["connect_failures"], 0, "{out}");
    assert_eq!(f["missing"], 0, "{out}");
    assert_eq!(f["duplicates"], 0, "{out}");
    assert_eq!(f["published"], 10, "{out}");
    assert_eq!(f["delivered"], 3000, "every socket got every broadcast: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_run_over_wss_with_insecure_and_refused_with_the_wrong_ca() {
    let gw = gateway().await;
    let front = TlsFront::start(gw.addr);
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/smoke.toml");
    let run = |tls: &[&str], vus: &str| {
        let mut a: Vec<String> = vec![
            "run".into(),
            scenario.display().to_string(),
            "--url".into(),
            front.wss_url(),
            "--api-url".into(),
            format!("http://{}", gw.addr),
            "--api-key".into(),
            API_KEY.into(),
            "--secret".into(),
            SECRET.into(),
            "--vus".into(),
            vus.into(),
            "--workers".into(),
            "0".into(),
            "--quiet".into(),
        ];
        a.extend(tls.iter().map(|s| s.to_string()));
        a
    };

    // --insecure: the self-signed test certificate is accepted. (The exit code may be 99 on a
    // loaded machine for the smoke scenario's latency thresholds; the figures are what count.)
    let (_, s, out) = loadtest(&run(&["--insecure"], "100"), &front.dir, "insecure").await;
    println!("{out}");
    let f = &s["figures"];
    assert_eq!(f["welcomes"], 100, "{out}");
    assert_eq!(f["connect_failures"], 0, "{out}");
    assert_eq!(f["missing"], 0, "{out}");
    assert!(f["published"].as_u64().unwrap_or(0) > 0, "{out}");

    // The wrong CA (through the idle command): no socket connects, and the samples say why.
    let other = front.path("other-ca.pem").display().to_string();
    let idle: Vec<String> = [
        "idle",
        "--url",
        &front.wss_url(),
        "--secret",
        SECRET,
        "--connections",
        "20",
        "--hold-s",
        "1",
        "--ca-file",
        &other,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let t0 = std::time::Instant::now();
    let (code, s, out) = loadtest(&idle, &front.dir, "wrong-ca").await;
    // The VUs that never connected stop with the run (they do not hold its end for 15 s).
    assert!(t0.elapsed() < Duration::from_secs(14), "took {:?}", t0.elapsed());
    let f = &s["figures"];
    assert_ne!(code, 0, "{out}");
    assert_eq!(f["welcomes"], 0, "{out}");
    assert!(f["connect_failures"].as_u64().unwrap_or(0) >= 20, "{out}");
    let samples = f["error_samples"].to_string();
    assert!(
        samples.contains("certificate"),
        "the failures name the certificate: {samples}"
    );
}
