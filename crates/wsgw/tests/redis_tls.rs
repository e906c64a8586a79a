//! Redis the way production runs it: a real `redis-server` speaking only TLS, with an ACL user,
//! and real `wsgw` processes in front of it. A node serves through `rediss://user:pass@…` with
//! a private CA; a certificate that does not verify keeps it from starting, with an error that
//! names the problem; the insecure switch says so in its log; the password shows up nowhere.
//! Over TLS the redis crate reads the pub/sub connection, and what the node holds from it while
//! busy is bounded as over plain TCP (tests/redis_pubsub_reader.rs).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::cluster::{free_port, running_pid, until_listening};
use common::{API_KEY, Client, DEADLINE, SECRET, flood, token};
use serde_json::{Value, json};

const PASSWORD: &str = "pw-7c1e9d2b-never-in-a-log";

/// A scratch directory with a CA, a server certificate it signed (for 127.0.0.1), and a second,
/// unrelated CA.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn make() -> Certs {
        let dir = std::env::temp_dir().join(format!("wsgw-tls-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl runs (scripts/test.sh installs it)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for ca in ["ca", "other-ca"] {
            run(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=wsgw test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
            ]);
        }
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ]);
        Certs { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `spawn(port)` on a loopback port picked free and returns once that process itself
/// listens there. A port taken by another process between the probe and the bind makes the
/// server exit; then another port is tried (5 tries).
async fn on_free_port(what: &str, mut spawn: impl FnMut(u16) -> Child) -> (u16, Child) {
    for _ in 0..5 {
        let port = free_port();
        let mut child = spawn(port);
        if until_listening(
            || running_pid(&mut child),
            &[port],
            DEADLINE,
            || format!("{what} never listened"),
        )
        .await
        {
            return (port, child);
        }
    }
    panic!("{what}: no free loopback port in 5 tries");
}

/// A redis-server that only speaks TLS and knows the ACL user `gw`.
struct TlsRedis {
    port: u16,
    child: Child,
}

impl TlsRedis {
    async fn start(certs: &Certs) -> TlsRedis {
        let (port, child) = on_free_port("TLS redis-server", |port| {
            Command::new("redis-server")
                .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--tls-cert-file",
                    &certs.path("server.pem"),
                    "--tls-key-file",
                    &certs.path("server.key"),
                ])
                .args(["--tls-ca-cert-file", &certs.path("ca.pem"), "--tls-auth-clients", "no"])
                .args(["--save", "", "--appendonly", "no"])
                // The default user is off: only the ACL user gets in.
                .args(["--user", "default", "off"])
                .args(["--user", "gw", "on", &format!(">{PASSWORD}"), "~*", "&*", "+@all"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server runs")
        })
        .await;
        TlsRedis { port, child }
    }

    fn url(&self) -> String {
        format!("rediss://gw:{PASSWORD}@127.0.0.1:{}/", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `wsgw` process with its stderr captured to a file (to search its log lines).
struct Node {
    port: u16,
    child: Child,
    log: PathBuf,
}

impl Node {
    /// A node that should come up: spawned, and waited for until its own process listens. A
    /// port taken by another process between the probe and the bind makes the node exit with
    /// `Address already in use`; then it starts again on another (5 tries).
    async fn start(redis_url: &str, env: &[(&str, &str)], log_dir: &Path) -> Node {
        for _ in 0..5 {
            let mut node = Node::spawn(redis_url, env, log_dir);
            let log = node.log.clone();
            let up = until_listening(
                || running_pid(&mut node.child),
                &[node.port],
                Duration::from_secs(20),
                || {
                    format!(
                        "the node never listened; log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    )
                },
            )
            .await;
            if up {
                return node;
            }
            let log = node.log_text();
            assert!(log.contains("Address already in use"), "the node exited; log:\n{log}");
        }
        panic!("no free loopback port in 5 tries");
    }

    fn spawn(redis_url: &str, env: &[(&str, &str)], log_dir: &Path) -> Node {
        let port = free_port();
        let log = log_dir.join(format!("node-{port}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgw"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("WSGW_LISTEN", format!("127.0.0.1:{port}"))
            .env("WSGW_NODE_ID", format!("tls-{port}"))
            .env("WSGW_REDIS_URL", redis_url)
            .env("WSGW_JWT_SECRET", SECRET)
            .env("WSGW_API_KEY", API_KEY)
            .env("WSGW_DRAIN_MS", "200")
            // Every level: the password must not show up even in debug lines.
            .env("WSGW_LOG", "debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("wsgw runs");
        Node { port, child, log }
    }

    /// Subscribes a socket to `chat:1` and another to the pattern `chat:*`, publishes
    /// `{"n": n}` on `chat:1` over HTTP and returns the event the first received, which the
    /// second got too: Redis's pool and pub/sub (`message` and `pmessage`) work for this node.
    async fn publish_reaches_a_subscriber(&self, n: u64) -> Value {
        let t = token("alice", &["chat:*"], &["chat:*"]);
        let mut subscribed = Vec::new();
        for channel in ["chat:1", "chat:*"] {
            let mut c = Client::connect(&format!("ws://127.0.0.1:{}/ws?token={t}", self.port)).await;
            c.expect("welcome").await;
            c.send(json!({"type":"subscribe","channel":channel,"request_id":1}))
                .await;
            c.expect("subscribed").await;
            subscribed.push(c);
        }
        let r = wsgw::http_client::client()
            .post(self.url("/api/publish"))
            .bearer_auth(API_KEY)
            .json(&json!({"channel":"chat:1","event":"hi","data":{"n":n}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let e = subscribed[0].expect("event").await;
        let by_pattern = subscribed[1].expect("event").await;
        assert_eq!(by_pattern, e, "the pattern's subscriber got another frame");
        e
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn wait_ready(&self) {
        let http = wsgw::http_client::client();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(self.url("/ready")).send().await
                && r.status().as_u16() == 200
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node never became ready; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the process to exit; returns its status code.
    async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get_text(url: &str, auth: bool) -> String {
    let mut req = wsgw::http_client::client().get(url);
    if auth {
        req = req.bearer_auth(API_KEY);
    }
    req.send().await.expect("http").text().await.unwrap()
}

#[tokio::test]
async fn a_node_serves_through_rediss_with_an_acl_user_and_never_shows_the_password() {
    let certs = Certs::make();
    let redis = TlsRedis::start(&certs).await;
    let ca = certs.path("ca.pem");
    let node = Node::start(&redis.url(), &[("WSGW_REDIS_CA_FILE", ca.as_str())], &certs.dir).await;
    node.wait_ready().await;

    // A socket subscribed on the node gets an event published through it: pool and pub/sub
    // both went through TLS as the ACL user.
    assert_eq!(node.publish_reaches_a_subscriber(1).await["data"]["n"], 1);

    // The password appears in no log line (debug level), no stats, no metrics, no printed config.
    let stats = get_text(&node.url("/api/stats"), true).await;
    let metrics = get_text(&node.url("/metrics"), false).await;
    let printed = Command::new(env!("CARGO_BIN_EXE_wsgw"))
        .arg("--print-config")
        .env_clear()
        .env("WSGW_REDIS_URL", redis.url())
        .env("WSGW_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&printed.stdout).to_string() + &String::from_utf8_lossy(&printed.stderr);
    assert!(printed.contains("rediss://"), "--print-config shows the URL: {printed}");
    for (what, text) in [
        ("log", node.log_text()),
        ("stats", stats),
        ("metrics", metrics),
        ("--print-config", printed),
    ] {
        assert!(!text.contains(PASSWORD), "the Redis password appears in the {what}");
    }
}

#[tokio::test]
async fn a_server_certificate_that_does_not_verify_keeps_the_node_from_starting() {
    let certs = Certs::make();
    let redis = TlsRedis::start(&certs).await;
    let wrong_ca = certs.path("other-ca.pem");
    let mut node = Node::spawn(&redis.url(), &[("WSGW_REDIS_CA_FILE", wrong_ca.as_str())], &certs.dir);
    let code = node.wait_exit(Duration::from_secs(30)).await;
    let log = node.log_text();
    assert!(
        matches!(code, Some(c) if c != 0),
        "the node exits with an error, got {code:?}; log:\n{log}"
    );
    let lower = log.to_lowercase();
    assert!(
        lower.contains("certificate") || lower.contains("unknownissuer"),
        "the error names the certificate problem:\n{log}"
    );
    assert!(!log.contains(PASSWORD));
}

#[tokio::test]
async fn the_insecure_switch_connects_without_a_ca_and_says_so() {
    let certs = Certs::make();
    let redis = TlsRedis::start(&certs).await;
    let node = Node::start(&redis.url(), &[("WSGW_REDIS_TLS_INSECURE", "1")], &certs.dir).await;
    node.wait_ready().await;
    let log = node.log_text();
    assert!(
        log.lines().any(|l| l.contains("WARN") && l.contains("insecure")),
        "a WARN line says insecure:\n{log}"
    );
    assert!(!log.contains(PASSWORD));
}

/// A Sentinel that speaks only TLS, asks for a password, and monitors `primary` over TLS as
/// the ACL user `gw`.
struct TlsSentinel {
    port: u16,
    child: Child,
}

const SENTINEL_PASSWORD: &str = "sentinel-pw-5f0a-never-in-a-log";

impl TlsSentinel {
    async fn start(certs: &Certs, primary: &TlsRedis) -> TlsSentinel {
        let (port, child) = on_free_port("TLS sentinel", |port| Self::spawn(certs, primary, port)).await;
        TlsSentinel { port, child }
    }

    fn spawn(certs: &Certs, primary: &TlsRedis, port: u16) -> Child {
        let conf = certs.dir.join(format!("sentinel-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port 0\ntls-port {port}\nbind 127.0.0.1\n\
                 tls-cert-file {cert}\ntls-key-file {key}\ntls-ca-cert-file {ca}\n\
                 tls-auth-clients no\ntls-replication yes\n\
                 requirepass {SENTINEL_PASSWORD}\n\
                 sentinel monitor main 127.0.0.1 {primary} 1\n\
                 sentinel auth-user main gw\nsentinel auth-pass main {PASSWORD}\n",
                cert = certs.path("server.pem"),
                key = certs.path("server.key"),
                ca = certs.path("ca.pem"),
                primary = primary.port,
            ),
        )
        .unwrap();
        Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel runs")
    }
}

impl Drop for TlsSentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_node_finds_a_tls_primary_through_a_tls_sentinel_with_passwords_it_never_shows() {
    let certs = Certs::make();
    let redis = TlsRedis::start(&certs).await;
    let sentinel = TlsSentinel::start(&certs, &redis).await;
    let ca = certs.path("ca.pem");
    let sentinels = format!("127.0.0.1:{}", sentinel.port);
    let env = [
        ("WSGW_REDIS_SENTINELS", sentinels.as_str()),
        ("WSGW_REDIS_SENTINEL_MASTER", "main"),
        ("WSGW_REDIS_USERNAME", "gw"),
        ("WSGW_REDIS_PASSWORD", PASSWORD),
        ("WSGW_REDIS_SENTINEL_PASSWORD", SENTINEL_PASSWORD),
        ("WSGW_REDIS_TLS", "1"),
        ("WSGW_REDIS_CA_FILE", ca.as_str()),
    ];
    // Node::start sets WSGW_REDIS_URL; blank means unset.
    let node = Node::start("", &env, &certs.dir).await;
    node.wait_ready().await;

    assert_eq!(node.publish_reaches_a_subscriber(2).await["data"]["n"], 2);

    let log = node.log_text();
    assert!(
        log.contains("redis primary found through the sentinels"),
        "the log says how the primary was found:\n{log}"
    );
    let mut print = Command::new(env!("CARGO_BIN_EXE_wsgw"));
    print.arg("--print-config").env_clear().env("WSGW_JWT_SECRET", SECRET);
    for (k, v) in env {
        print.env(k, v);
    }
    let printed = print.output().unwrap();
    let printed = String::from_utf8_lossy(&printed.stdout).to_string() + &String::from_utf8_lossy(&printed.stderr);
    assert!(printed.contains("redis_sentinels"), "{printed}");
    let stats = get_text(&node.url("/api/stats"), true).await;
    let metrics = get_text(&node.url("/metrics"), false).await;
    for (what, text) in [
        ("log", log),
        ("stats", stats),
        ("metrics", metrics),
        ("--print-config", printed),
    ] {
        for secret in [PASSWORD, SENTINEL_PASSWORD] {
            assert!(!text.contains(secret), "a Redis password appears in the {what}");
        }
    }
}

#[tokio::test]
async fn over_tls_a_flood_while_a_subscribe_waits_costs_a_repair_not_memory_or_events() {
    let certs = Certs::make();
    let redis = TlsRedis::start(&certs).await;
    let ca = certs.path("ca.pem");
    // No canary for minutes, and a subscribe may wait 10 s for its confirmation behind 200 MB:
    // the node's only reason to reconnect is the bound.
    let env = [
        ("WSGW_REDIS_CA_FILE", ca.as_str()),
        ("WSGW_CANARY_INTERVAL_MS", "600000"),
        ("WSGW_REDIS_TIMEOUT_MS", "5000"),
        ("WSGW_LOG", "warn"),
    ];
    let node = Node::start(&redis.url(), &env, &certs.dir).await;
    node.wait_ready().await;
    let admin_url = format!("rediss://gw:{PASSWORD}@127.0.0.1:{}/#insecure", redis.port);
    let mut admin = redis::Client::open(admin_url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    flood::unlimited_pubsub_output(&mut admin).await;
    let ws = |sub: &str, channel: &str| {
        let t = token(sub, &[channel], &[]);
        format!("ws://127.0.0.1:{}/ws?token={t}", node.port)
    };
    let mut reader = Client::connect(&ws("alice", "news")).await;
    reader.expect("welcome").await;
    reader.send(json!({"type": "subscribe", "channel": "news"})).await;
    reader.expect("subscribed").await;
    let mut joiner = Client::connect(&ws("bob", "later")).await;
    joiner.expect("welcome").await;
    let pid = node.child.id();
    let rss_before = flood::status_kib(pid, "VmRSS");

    let ids = flood::flood_stopped_node(&mut admin, pid, "news", &mut joiner, "later").await;
    assert_eq!(
        flood::only_events(&mut reader, ids.len()).await,
        ids,
        "every event once, in order"
    );
    joiner.expect("subscribed").await;
    flood::assert_memory_bounded(pid, rss_before);
    let log = node.log_text();
    assert!(
        log.contains("dropping them and reconnecting to repair from history"),
        "the node said nothing of dropping what it held; log:\n{log}"
    );
    reader.assert_silent(Duration::from_millis(300)).await;
}
