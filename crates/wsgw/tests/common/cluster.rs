//! Real processes for cluster tests: a `redis-server` on a free port and `wsgw` binaries
//! pointed at it. Everything started here is killed by PID when its guard drops.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{API_KEY, DEADLINE, SECRET};

/// Waits until a just-started process listens on every one of `ports` (true), or has exited
/// (false: e.g. one of its ports was taken between `free_port` and its bind). `probe` gives the
/// process's pid while it runs and `None` once it has exited ([`running_pid`]); the test fails
/// with `describe()` if neither happens `within`.
pub async fn until_listening(
    mut probe: impl FnMut() -> Option<u32>,
    ports: &[u16],
    within: Duration,
    describe: impl Fn() -> String,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let Some(pid) = probe() else { return false };
        if ports.iter().all(|p| listens(pid, *p)) {
            return true;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", describe());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A child's pid while it runs; `None` once it has exited.
pub fn running_pid(child: &mut Child) -> Option<u32> {
    match child.try_wait() {
        Ok(Some(_)) => None,
        _ => Some(child.id()),
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether process `pid` still has a TCP socket listening on `port`: a LISTEN entry of
/// /proc/net/tcp{,6} on that port whose inode is one of the process's descriptors. Asked of the
/// process itself, not by connecting: the test binaries run beside others (scripts/test.sh runs
/// two at once), and another process may bind the port the moment it is freed (CI saw a connect
/// succeed there). A process that has exited listens on nothing.
pub fn listens(pid: u32, port: u16) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let inodes: std::collections::HashSet<String> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                // sl, local_address (hex ip:port), rem_address, st (0A = LISTEN), …, inode (10th).
                f.len() > 9
                    && f[3] == "0A"
                    && f[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port)
                    && inodes.contains(f[9])
            })
    })
}

/// A connection to `url` that waits for answers as a backend would, up to 10 s. redis-rs's
/// default of 500 ms made a test's publisher fail with `timed out` while both test lanes loaded
/// the machine (seen once in `redis_cluster_repair_join`).
pub async fn patient_conn(url: &str) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("redis connection")
}

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// Set for a persistent server: its data directory (AOF).
    dir: Option<PathBuf>,
    /// Extra arguments (a replica's `--replicaof`), or a Sentinel's config file.
    role: Role,
}

#[derive(Clone)]
enum Role {
    Plain(Vec<String>),
    /// `redis-server <conf> --sentinel`; the config names the master to monitor.
    Sentinel(PathBuf),
}

impl RedisServer {
    /// An in-memory server (`--save "" --appendonly no`).
    pub async fn start() -> RedisServer {
        Self::launch(free_port(), None, Role::Plain(Vec::new())).await
    }

    /// An in-memory replica of the server on `primary_port`.
    pub async fn start_replica(primary_port: u16) -> RedisServer {
        let args = vec!["--replicaof".into(), "127.0.0.1".into(), primary_port.to_string()];
        Self::launch(free_port(), None, Role::Plain(args)).await
    }

    /// A Sentinel (quorum 2) monitoring the primary on `primary_port` as `master`, which
    /// notices a dead primary after 1 s.
    pub async fn start_sentinel(master: &str, primary_port: u16) -> RedisServer {
        let port = free_port();
        let conf = std::env::temp_dir().join(format!("wsgw-sentinel-{}-{port}.conf", std::process::id()));
        std::fs::write(
            &conf,
            format!(
                "sentinel monitor {master} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {master} 1000\n\
                 sentinel failover-timeout {master} 10000\n\
                 sentinel parallel-syncs {master} 1\n"
            ),
        )
        .unwrap();
        Self::launch(port, None, Role::Sentinel(conf)).await
    }

    /// A server that keeps its data in an AOF under a fresh directory, so it can be killed and
    /// restarted with its data.
    pub async fn start_persistent() -> RedisServer {
        let dir = std::env::temp_dir().join(format!("wsgw-redis-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        Self::launch(free_port(), Some(dir), Role::Plain(Vec::new())).await
    }

    async fn launch(port: u16, dir: Option<PathBuf>, role: Role) -> RedisServer {
        // A port picked free can be taken by someone else before redis-server binds it; then
        // redis-server exits and another process answers on that port. Check who answers, and
        // try another port (except on a restart, which must keep its port).
        let mut port = port;
        for _ in 0..5 {
            let mut server = Self::spawn(port, dir.clone(), role.clone());
            if server.wait_ready().await {
                return server;
            }
            server.child.take().map(|mut c| c.kill().and_then(|_| c.wait()));
            port = free_port();
        }
        panic!("could not start redis-server on a free port");
    }

    fn spawn(port: u16, dir: Option<PathBuf>, role: Role) -> RedisServer {
        let mut cmd = Command::new("redis-server");
        match &role {
            Role::Sentinel(conf) => {
                cmd.arg(conf).arg("--sentinel");
            }
            Role::Plain(args) => {
                cmd.args(args);
            }
        }
        cmd.arg("--port")
            .arg(port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("");
        match &dir {
            _ if matches!(role, Role::Sentinel(_)) => {}
            Some(d) => {
                cmd.arg("--appendonly")
                    .arg("yes")
                    .arg("--appendfsync")
                    .arg("always")
                    .arg("--dir")
                    .arg(d);
            }
            None => {
                // A replica's full sync still writes an RDB file: keep it out of the checkout.
                cmd.arg("--appendonly")
                    .arg("no")
                    .arg("--dir")
                    .arg(std::env::temp_dir())
                    .arg("--dbfilename")
                    .arg(format!("wsgw-test-{port}.rdb"));
            }
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test.sh installs it)");
        RedisServer {
            port,
            child: Some(child),
            dir,
            role,
        }
    }

    /// True once our own redis-server answers on the port (its `process_id` is our child's);
    /// false if it exited (port taken).
    async fn wait_ready(&mut self) -> bool {
        let client = redis::Client::open(self.url()).unwrap();
        let pid = self.child.as_ref().map(|c| c.id()).unwrap_or(0);
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                return false;
            }
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                let info: redis::RedisResult<String> = redis::cmd("INFO").arg("server").query_async(&mut c).await;
                if let Ok(info) = info {
                    let ours = format!("process_id:{pid}");
                    if info.lines().any(|l| l.trim() == ours) {
                        return true;
                    }
                    // Someone else's Redis: ours will fail to bind and exit; the loop sees it.
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "redis-server did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        patient_conn(&self.url()).await
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port (and data directory).
    pub async fn restart(&mut self) {
        self.kill();
        let mut again = Self::launch(self.port, self.dir.take(), self.role.clone()).await;
        self.child = again.child.take();
        self.dir = again.dir.take();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
        if let Role::Sentinel(conf) = &self.role {
            let _ = std::fs::remove_file(conf);
        }
        let _ = std::fs::remove_file(std::env::temp_dir().join(format!("wsgw-test-{}.rdb", self.port)));
    }
}

/// A `wsgw` process.
pub struct GatewayProc {
    pub port: u16,
    pub node_id: String,
    child: Option<Child>,
}

impl GatewayProc {
    /// Starts the real binary against `redis` with test secrets and fast timers, plus `env`.
    pub async fn start(redis: &RedisServer, node_id: &str, env: &[(&str, &str)]) -> GatewayProc {
        let url = redis.url();
        let mut all = vec![("WSGW_REDIS_URL", url.as_str())];
        all.extend_from_slice(env);
        Self::start_env(node_id, &all).await
    }

    /// Starts the real binary with test secrets and fast timers, plus `env` (which says how
    /// to reach Redis: `WSGW_REDIS_URL` or the Sentinel settings).
    ///
    /// The port is picked free (`bind(0)`) and released, so another process can take it before
    /// the node binds it: the node then exits with `AddrInUse`. CI saw a node of another test,
    /// with the same node id, bind that port first and answer this one's readiness check; when
    /// that test ended, this one's requests were refused. So a node is ready only once its own
    /// process listens on the port, and a node that exited is started again on another port.
    pub async fn start_env(node_id: &str, env: &[(&str, &str)]) -> GatewayProc {
        for _ in 0..5 {
            let mut g = Self::spawn(free_port(), node_id, env);
            if g.wait_own_listener().await {
                g.wait_ready().await;
                return g;
            }
        }
        panic!("{node_id}: could not start wsgw on a free port");
    }

    fn spawn(port: u16, node_id: &str, env: &[(&str, &str)]) -> GatewayProc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgw"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("WSGW_LISTEN", format!("127.0.0.1:{port}"))
            .env("WSGW_NODE_ID", node_id)
            .env("WSGW_JWT_SECRET", SECRET)
            .env("WSGW_API_KEY", API_KEY)
            .env("WSGW_DRAIN_MS", "200")
            .env("WSGW_CANARY_INTERVAL_MS", "200")
            .env("WSGW_REDIS_TIMEOUT_MS", "500")
            .env(
                "WSGW_LOG",
                std::env::var("WSGW_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            );
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.stdout(Stdio::null()).spawn().expect("wsgw binary starts");
        GatewayProc {
            port,
            node_id: node_id.into(),
            child: Some(child),
        }
    }

    /// True once this node's own process listens on its port; false if it exited first (the
    /// port was taken). A node listens once its broker is up, which may take as long as the
    /// node itself allows: up to 21 tries to link and prepare (each bounded by Redis timeouts,
    /// 250 ms apart), then 10 s for its pub/sub connection. CI saw a node started just after a
    /// Redis Cluster primary's failover not listen within 15 s (torture_cluster, 2026-12-06).
    async fn wait_own_listener(&mut self) -> bool {
        let (port, node_id) = (self.port, self.node_id.clone());
        let child = &mut self.child;
        let up = until_listening(
            || running_pid(child.as_mut()?),
            &[port],
            Duration::from_secs(45),
            || format!("{node_id} never listened on {port}"),
        )
        .await;
        if !up {
            self.child = None;
        }
        up
    }

    /// Waits until the node answers `/ready` with 200 (again, after an outage).
    pub async fn wait_ready(&self) {
        let url = self.url("/ready");
        let http = wsgw::http_client::client();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            assert!(
                listens(self.pid(), self.port),
                "{} no longer listens on {}",
                self.node_id,
                self.port
            );
            if let Ok(r) = http.get(&url).send().await
                && r.status().as_u16() == 200
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never became ready",
                self.node_id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://127.0.0.1:{}/ws?{}", self.port, query)
    }

    pub async fn connect(&self, token: &str) -> (super::Client, serde_json::Value) {
        self.connect_query(&format!("token={token}")).await
    }

    pub async fn connect_query(&self, query: &str) -> (super::Client, serde_json::Value) {
        let mut c = super::Client::connect(&self.ws_url(query)).await;
        let w = c.expect("welcome").await;
        (c, w)
    }

    pub async fn api_post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = wsgw::http_client::client()
            .post(self.url(path))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .expect("http");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Publishes `{"n": n}` as event `e` on `channel` through the HTTP API; the event's id.
    pub async fn publish_n(&self, channel: &str, n: u64) -> wsgw_protocol::EventId {
        let body = serde_json::json!({"channel": channel, "event": "e", "data": {"n": n}});
        let (status, body) = self.api_post("/api/publish", body).await;
        assert_eq!(status, 200, "{body}");
        super::event_id_of(&body)
    }

    pub async fn api_get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = wsgw::http_client::client()
            .get(self.url(path))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("http");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn metrics(&self) -> String {
        wsgw::http_client::client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// SIGKILL: the node vanishes without cleaning up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `FCALL wsgw_publish` of `event` with `data` (JSON text) on `channel`, under the default
/// prefix; the optional arguments (ttl, maxlen, exclude, idempotency key) can follow as `arg`s.
pub fn publish_cmd(channel: &str, event: &str, data: &str) -> redis::Cmd {
    publish_cmd_with(("ws:seq", &format!("ws:history:{channel}")), channel, event, data)
}

/// `FCALL wsgw_publish` with the given sequence and history keys (on a Redis Cluster, those of
/// the channel's id-shard: docs/backends.md).
pub fn publish_cmd_with((seq, history): (&str, &str), channel: &str, event: &str, data: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg("wsgw_publish")
        .arg(2)
        .arg(seq)
        .arg(history)
        .arg(channel)
        .arg(event)
        .arg(data);
    cmd
}

/// Durable publish the way a backend does it: `FCALL wsgw_publish` on a plain Redis client.
pub async fn fcall_publish(
    c: &mut redis::aio::MultiplexedConnection,
    channel: &str,
    event: &str,
    data: &serde_json::Value,
) -> String {
    publish_cmd(channel, event, &data.to_string())
        .query_async(c)
        .await
        .expect("FCALL wsgw_publish")
}

/// How many times the node's pub/sub connection has ended (`wsgw_redis_reconnects_total`).
pub async fn pubsub_reconnects(node: &GatewayProc) -> f64 {
    super::metric_value(&node.metrics().await, "wsgw_redis_reconnects_total").unwrap_or(0.0)
}

/// Waits until the node's pub/sub connection has ended more than `before` times. Unlike a
/// `/ready` 503, which lasts only until the node is back (about 100 ms after a killed link,
/// easy for a poller on a loaded machine to miss), the count stays.
pub async fn wait_pubsub_reconnect(node: &GatewayProc, before: f64, what: &str) {
    super::wait_until(what, || async { pubsub_reconnects(node).await > before }).await;
}

/// Waits until the node answers `/ready` with 503.
pub async fn wait_not_ready(node: &GatewayProc, what: &str) {
    let http = wsgw::http_client::client();
    let url = node.url("/ready");
    super::wait_until(what, || {
        let (http, url) = (http.clone(), url.clone());
        async move { http.get(url).send().await.is_ok_and(|r| r.status().as_u16() == 503) }
    })
    .await;
}
