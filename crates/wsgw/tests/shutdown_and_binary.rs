//! Stopping a node (in-process and the real `wsgw` binary on SIGTERM), the binary's
//! configuration errors, and `wsgw --dev`.

use crate::common;

use std::net::TcpListener as StdTcpListener;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::{listens, until_listening};
use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use wsgw::Config;

const BIN: &str = env!("CARGO_BIN_EXE_wsgw");

#[tokio::test]
async fn stopping_a_node_closes_its_sockets_with_1012_and_fails_readiness_meanwhile() {
    let node = Node::start(Config {
        drain_ms: 300,
        ..config()
    })
    .await;
    let (mut a, _) = node.connect(&token("a", &[], &[])).await;
    let (mut b, _) = node.connect(&token("b", &[], &[])).await;
    let (http, ready_url) = (node.http.clone(), node.url("/ready"));
    let node_ws_url = node.ws_url(&format!("token={}", token("late", &[], &[])));
    let (status, _) = node.api_get("/ready").await;
    assert_eq!(status, 200);

    // The clients do not read yet, so they keep the drain busy (the server waits for their
    // answer to its close) while we look at /ready.
    let stopping = tokio::spawn(node.gw.stop());
    wait_until("/ready answers 503 while draining", || async {
        match http.get(&ready_url).send().await {
            Ok(r) if r.status().as_u16() == 503 => {
                let body: Value = r.json().await.unwrap();
                assert_eq!(
                    (body["ready"].as_bool(), body["draining"].as_bool()),
                    (Some(false), Some(true)),
                    "{body}"
                );
                true
            }
            _ => false,
        }
    })
    .await;
    // A socket arriving during the drain is turned away with 1012 too, so it reconnects elsewhere.
    let mut late = Client::connect(&node_ws_url).await;
    assert_eq!(late.until_closed().await, (Some(1012), vec![]));

    for c in [&mut a, &mut b] {
        let (code, frames) = c.until_closed().await;
        assert_eq!(code, Some(1012), "frames before the close: {frames:?}");
    }
    let stopped = tokio::time::timeout(DEADLINE, stopping)
        .await
        .expect("stop returns in time");
    stopped.expect("stop task").expect("clean stop");
}

#[tokio::test]
async fn stopping_an_idle_node_returns_promptly() {
    // The other tests here take ports from the kernel's ephemeral range (`free_port`); this
    // node listens below it. Whether it still listens is asked of this process (`listens`), not
    // by connecting: another process may bind the freed port (CI saw that).
    let gw = start_below_the_ephemeral_range(Config {
        drain_ms: 300,
        ..config()
    })
    .await;
    let addr = gw.addr;
    assert!(listens(std::process::id(), addr.port()), "listening before stop");
    tokio::time::timeout(DEADLINE, gw.stop())
        .await
        .expect("stop returns in time")
        .expect("clean stop");
    assert!(
        !listens(std::process::id(), addr.port()),
        "the listener is closed after stop"
    );
}

/// Starts a gateway on a loopback port below the kernel's ephemeral range, so that no `bind(0)`
/// or outgoing connect in this process can be given it. A port that was free when probed may be
/// taken by the time the gateway binds it (CI saw `AddrInUse` once): the next one is tried.
async fn start_below_the_ephemeral_range(config: Config) -> wsgw::RunningGateway {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let low: u16 = range
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(32768);
    let start = 1024 + (std::process::id() % 4000) as u16;
    let mut last = None;
    for port in (start..low)
        .filter(|p| StdTcpListener::bind(("127.0.0.1", *p)).is_ok())
        .take(20)
    {
        let listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        match wsgw::RunningGateway::start(Config {
            listen,
            ..config.clone()
        })
        .await
        {
            Ok(gw) => return gw,
            Err(e) => last = Some(e),
        }
    }
    panic!("no port below the ephemeral range could be bound: {last:?}")
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The binary with an empty environment (so the developer's `WSGW_*` don't leak in) plus `vars`.
fn wsgw(args: &[&str], vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// Runs `cmd` to its end (within `DEADLINE`) and checks it exited with `code` and a message
/// on stderr naming each of `names`.
async fn exits_with(mut cmd: Command, code: i32, names: &[&str]) {
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("wsgw exits")
        .expect("run wsgw");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr:\n{stderr}");
    for name in names {
        assert!(stderr.contains(name), "the message names {name:?}:\n{stderr}");
    }
}

fn sigterm(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {pid} failed");
}

/// A running `wsgw` process: terminated (SIGTERM, then SIGKILL) when dropped, so no process
/// outlives its test even when an assertion fails. Keeps stderr for failure messages.
struct Running {
    child: Child,
    stderr: Arc<Mutex<String>>,
    base: String,
}

impl Running {
    fn spawn(mut cmd: Command, port: u16) -> Running {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn wsgw");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Running {
            child,
            stderr,
            base: format!("127.0.0.1:{port}"),
        }
    }

    /// Starts the binary from `cmd_for(ports)` on `N` loopback ports picked free, and returns
    /// once its own process listens on every one. A port taken by another process between the
    /// probe and the bind makes the binary exit with `Address already in use`; then it starts
    /// again on other ports (5 tries).
    async fn start<const N: usize>(cmd_for: impl Fn([u16; N]) -> Command) -> (Running, [u16; N]) {
        Self::start_picking(free_port, cmd_for).await
    }

    /// [`Running::start`], with the ports of each try from `pick`.
    async fn start_picking<const N: usize>(
        mut pick: impl FnMut() -> u16,
        cmd_for: impl Fn([u16; N]) -> Command,
    ) -> (Running, [u16; N]) {
        for _ in 0..5 {
            let ports: [u16; N] = std::array::from_fn(|_| pick());
            let mut r = Running::spawn(cmd_for(ports), ports[0]);
            let stderr = r.stderr.clone();
            let child = &mut r.child;
            let up = until_listening(
                || match child.try_wait() {
                    Ok(Some(_)) => None,
                    _ => child.id(),
                },
                &ports,
                Duration::from_secs(10),
                || format!("wsgw never listened on {ports:?}; stderr:\n{}", stderr.lock().unwrap()),
            )
            .await;
            if up {
                return (r, ports);
            }
            // It exited. Its stderr is read by a task: give that a moment to reach the end.
            let until = tokio::time::Instant::now() + Duration::from_secs(2);
            while !r.stderr().contains("Address already in use") && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(
                r.stderr().contains("Address already in use"),
                "wsgw exited early; stderr:\n{}",
                r.stderr()
            );
        }
        panic!("no free loopback ports in 5 tries");
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("still running")
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until `/health` answers 200.
    async fn healthy(&mut self, http: &reqwest::Client) {
        let url = format!("http://{}/health", self.base);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = http.get(&url).send().await
                && r.status().as_u16() == 200
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("wsgw exited early with {status}; stderr:\n{}", self.stderr());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "wsgw never became healthy; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn exit_status(&mut self) -> std::process::ExitStatus {
        match tokio::time::timeout(DEADLINE, self.child.wait()).await {
            Ok(status) => status.expect("wait for wsgw"),
            Err(_) => panic!("wsgw did not exit in time; stderr:\n{}", self.stderr()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        for _ in 0..100 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.start_kill();
        let _ = self.child.try_wait();
    }
}

#[tokio::test]
async fn the_binary_drains_on_sigterm_and_exits_0() {
    let (mut server, [port]) = Running::start(|[port]| {
        wsgw(
            &[],
            &[
                ("WSGW_LISTEN", format!("127.0.0.1:{port}").as_str()),
                ("WSGW_JWT_SECRET", SECRET),
                ("WSGW_API_KEY", API_KEY),
                ("WSGW_DRAIN_MS", "300"),
                ("WSGW_NODE_ID", "bin-node"),
            ],
        )
    })
    .await;
    let listen = format!("127.0.0.1:{port}");
    let http = wsgw::http_client::client();
    server.healthy(&http).await;

    let mut c = Client::connect(&format!("ws://{listen}/ws?token={}", token("sig", &[], &[]))).await;
    let w = c.expect("welcome").await;
    assert_eq!(
        (w["user_id"].as_str(), w["node"].as_str()),
        (Some("sig"), Some("bin-node"))
    );

    sigterm(server.pid());
    let (code, frames) = c.until_closed().await;
    assert_eq!(
        code,
        Some(1012),
        "frames before the close: {frames:?}; stderr:\n{}",
        server.stderr()
    );
    let status = server.exit_status().await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", server.stderr());
}

/// A port another process listens on: the binary names the error and exits 1 (the systemd
/// unit's `Restart=on-failure` tries again) rather than run without a listener. Given that port
/// first, `Running::start_picking` starts it again on another port, the path every test's start
/// takes when a port is taken between its probe and the bind.
#[tokio::test]
async fn a_taken_port_makes_the_binary_exit_1_and_the_start_moves_to_another_port() {
    let held = StdTcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().port();
    let cmd_for = |[port]: [u16; 1]| {
        wsgw(
            &[],
            &[
                ("WSGW_LISTEN", format!("127.0.0.1:{port}").as_str()),
                ("WSGW_JWT_SECRET", SECRET),
                ("WSGW_API_KEY", API_KEY),
            ],
        )
    };
    exits_with(cmd_for([taken]), 1, &["wsgw: listener: Address already in use"]).await;

    let mut picks = Vec::new();
    let (mut server, [port]) = Running::start_picking(
        || {
            let p = if picks.is_empty() { taken } else { free_port() };
            picks.push(p);
            p
        },
        cmd_for,
    )
    .await;
    assert_eq!(picks.len(), 2, "one try on the taken port, one on another: {picks:?}");
    assert_eq!((picks[0], picks[1]), (taken, port));
    assert_ne!(port, taken);
    server.healthy(&wsgw::http_client::client()).await;
    assert!(listens(server.pid(), port), "the node itself listens on {port}");
    drop(held);
}

#[tokio::test]
async fn the_binary_refuses_to_start_without_a_jwt_secret() {
    let cmd = wsgw(&[], &[("WSGW_LISTEN", "127.0.0.1:0"), ("WSGW_API_KEY", API_KEY)]);
    exits_with(cmd, 64, &["WSGW_JWT_SECRET"]).await;
}

#[tokio::test]
async fn the_binary_names_a_variable_with_a_bad_value() {
    let cmd = wsgw(
        &[],
        &[
            ("WSGW_LISTEN", "127.0.0.1:0"),
            ("WSGW_JWT_SECRET", SECRET),
            ("WSGW_HEARTBEAT_INTERVAL_MS", "abc"),
        ],
    );
    exits_with(cmd, 64, &["WSGW_HEARTBEAT_INTERVAL_MS", "abc"]).await;
}

/// Reads stdout lines until `last` matches one; returns them all.
async fn lines_until(out: &mut BufReader<ChildStdout>, last: impl Fn(&str) -> bool, stderr: &Running) -> Vec<String> {
    let mut lines = Vec::new();
    let read = async {
        loop {
            let mut line = String::new();
            if out.read_line(&mut line).await.expect("read stdout") == 0 {
                return false;
            }
            let done = last(&line);
            lines.push(line.trim_end().to_string());
            if done {
                return true;
            }
        }
    };
    let found = tokio::time::timeout(Duration::from_secs(10), read).await;
    assert!(
        matches!(found, Ok(true)),
        "stdout ended early: {lines:?}; stderr:\n{}",
        stderr.stderr()
    );
    lines
}

#[tokio::test]
async fn dev_mode_prints_a_working_token_and_api_key() {
    let (mut dev, [port]) = Running::start(|[port]| {
        wsgw(
            &["--dev"],
            &[
                ("WSGW_LISTEN", format!("127.0.0.1:{port}").as_str()),
                ("WSGW_DRAIN_MS", "300"),
            ],
        )
    })
    .await;
    let listen = format!("127.0.0.1:{port}");
    let mut stdout = BufReader::new(dev.child.stdout.take().unwrap());
    let lines = lines_until(&mut stdout, |l| l.contains("/api/publish"), &dev).await;
    let text = lines.join("\n");

    // The token is printed on the line after its heading, and again in the connect example.
    let heading = lines
        .iter()
        .position(|l| l.contains("token"))
        .unwrap_or_else(|| panic!("no token line:\n{text}"));
    let token = lines.get(heading + 1).map(|l| l.trim().to_string()).unwrap_or_default();
    assert_eq!(token.split('.').count(), 3, "a JWT after the token heading:\n{text}");
    assert!(text.contains(&format!("ws://{listen}/ws?token={token}")), "{text}");
    let key = text
        .split("Authorization: Bearer ")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap_or_else(|| panic!("no Authorization header in the curl line:\n{text}"))
        .to_string();
    assert!(!key.is_empty() && !key.contains(' '), "{key:?}");

    let http = wsgw::http_client::client();
    dev.healthy(&http).await;
    let mut c = Client::connect(&format!("ws://{listen}/ws?token={token}")).await;
    let w = c.expect("welcome").await;
    assert_eq!(w["user_id"], "dev-user");

    let r = http
        .post(format!("http://{listen}/api/publish"))
        .bearer_auth(&key)
        .json(&json!({"channel": "broadcast", "event": "hello", "data": {"text": "hi"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let event_id = r.json::<Value>().await.unwrap()["event_id"].clone();
    let e = c.expect("event").await;
    assert_eq!(
        (e["channel"].as_str(), e["event"].as_str()),
        (Some("broadcast"), Some("hello"))
    );
    assert_eq!(e["data"]["text"], "hi");
    assert_eq!(e["event_id"], event_id);

    // The dev token may subscribe and publish anywhere.
    c.send(json!({"type": "subscribe", "channel": "any:thing", "request_id": 1}))
        .await;
    c.expect("subscribed").await;
    c.send(json!({"type": "publish", "channel": "any:thing", "event": "mine", "echo": false, "request_id": 2}))
        .await;
    assert_eq!(c.expect("ack").await["request_id"], 2);

    sigterm(dev.pid());
    assert_eq!(c.until_closed().await.0, Some(1012));
    assert_eq!(dev.exit_status().await.code(), Some(0), "stderr:\n{}", dev.stderr());
}

#[tokio::test]
async fn dev_mode_listens_on_loopback_unless_told_otherwise() {
    let listen_of = |out: std::process::Output| {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(0),
            "stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("listen = "))
            .unwrap_or_else(|| panic!("no listen line:\n{stdout}"))
            .to_owned()
    };
    let out = wsgw(&["--dev", "--print-config"], &[])
        .output()
        .await
        .expect("run wsgw");
    assert_eq!(listen_of(out), "\"127.0.0.1:8080\"");
    let out = wsgw(&["--dev", "--print-config"], &[("WSGW_LISTEN", "0.0.0.0:8080")])
        .output()
        .await
        .expect("run wsgw");
    assert_eq!(listen_of(out), "\"0.0.0.0:8080\"", "WSGW_LISTEN wins");
    let out = wsgw(&["--dev", "--print-config", "--listen", "0.0.0.0:9000"], &[])
        .output()
        .await
        .expect("run wsgw");
    assert_eq!(listen_of(out), "\"0.0.0.0:9000\"", "--listen wins");
}

#[tokio::test]
async fn the_binary_serves_metrics_on_wsgw_metrics_listen_and_only_metrics() {
    let (mut server, [port, metrics_port]) = Running::start(|[port, metrics_port]| {
        wsgw(
            &[],
            &[
                ("WSGW_LISTEN", format!("127.0.0.1:{port}").as_str()),
                ("WSGW_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}").as_str()),
                ("WSGW_JWT_SECRET", SECRET),
                ("WSGW_API_KEY", API_KEY),
                ("WSGW_DRAIN_MS", "300"),
            ],
        )
    })
    .await;
    let listen = format!("127.0.0.1:{port}");
    let metrics = format!("127.0.0.1:{metrics_port}");
    let http = wsgw::http_client::client();
    server.healthy(&http).await;

    let r = http.get(format!("http://{metrics}/metrics")).send().await;
    let r = r.unwrap_or_else(|e| panic!("no /metrics on {metrics}: {e}; stderr:\n{}", server.stderr()));
    assert_eq!(r.status().as_u16(), 200);
    let body = r.text().await.unwrap();
    assert!(body.contains("wsgw_"), "Prometheus text:\n{body}");
    // The metrics address serves nothing else: no sockets, no API.
    for path in ["/ws", "/api/stats", "/health"] {
        let r = http.get(format!("http://{metrics}{path}")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404, "{path} on the metrics address");
    }
    // And the main address keeps /metrics.
    let r = http.get(format!("http://{listen}/metrics")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);

    let pid = server.pid();
    assert!(listens(pid, metrics_port), "the metrics listener before stop");
    sigterm(pid);
    assert_eq!(
        server.exit_status().await.code(),
        Some(0),
        "stderr:\n{}",
        server.stderr()
    );
    assert!(!listens(pid, metrics_port), "the metrics listener is closed after stop");
}
