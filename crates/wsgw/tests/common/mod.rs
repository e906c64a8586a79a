//! Shared test harness: a real gateway on a real port, real WebSocket clients, real HTTP.
//! Every wait has a deadline; nothing sleeps to "let things settle".
#![allow(dead_code)]

pub mod clock;
pub mod cluster;
pub mod flood;
pub mod redis_cluster;
pub mod worker;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wsgw::{Config, RunningGateway};

pub const SECRET: &str = "test-secret-0123456789abcdefghijklmnop";
pub const API_KEY: &str = "test-api-key";
/// How long any single expectation may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A config for tests: loopback, ephemeral port, known secrets.
pub fn config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        node_id: "test-node".into(),
        jwt_secret: Some(SECRET.into()),
        api_key: Some(API_KEY.into()),
        drain_ms: 200,
        ..Config::default()
    }
}

pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token for `sub` allowed to subscribe to `channels` and publish to `publish`, valid 1 h.
pub fn token(sub: &str, channels: &[&str], publish: &[&str]) -> String {
    wsgw::auth::sign_hs256(SECRET, sub, channels, publish, Some(now_s() + 3600))
}

pub struct Node {
    pub gw: RunningGateway,
    pub http: reqwest::Client,
}

impl Node {
    pub async fn start(config: Config) -> Node {
        let gw = RunningGateway::start(config).await.expect("gateway starts");
        Node {
            gw,
            http: wsgw::http_client::client(),
        }
    }

    pub async fn default() -> Node {
        Self::start(config()).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.gw.addr
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws?{}", self.gw.addr, query)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.gw.addr, path)
    }

    /// Connects with `?token=` and returns the client and its welcome frame.
    pub async fn connect(&self, token: &str) -> (Client, Value) {
        self.connect_query(&format!("token={token}")).await
    }

    pub async fn connect_query(&self, query: &str) -> (Client, Value) {
        let mut c = Client::connect(&self.ws_url(query)).await;
        let w = c.expect("welcome").await;
        (c, w)
    }

    pub async fn api_post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .expect("http request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn api_get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("http request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Publishes durably through the HTTP API and returns the event id.
    pub async fn publish(&self, channel: &str, event: &str, data: Value) -> String {
        let (status, body) = self
            .api_post(
                "/api/publish",
                json!({"channel": channel, "event": event, "data": data}),
            )
            .await;
        assert_eq!(status, 200, "publish failed: {body}");
        body["event_id"].as_str().expect("event_id").to_string()
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        self.gw.stop().await.expect("clean stop");
    }
}

/// Reads a counter's value from Prometheus text (`name{labels} value`).
/// The `event_id` of a frame or an HTTP publish answer.
pub fn event_id_of(v: &Value) -> wsgw_protocol::EventId {
    v["event_id"]
        .as_str()
        .expect("an event id")
        .parse()
        .expect("a valid id")
}

pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a client observed when its socket ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    Closed(u16),
    ClosedWithoutCode,
    Dropped,
}

pub struct Client {
    pub ws: Ws,
    /// Close code once the server closed.
    pub closed: Option<Ended>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        Client { ws, closed: None }
    }

    /// Connects with extra headers (e.g. `Authorization`, `Sec-WebSocket-Protocol`).
    pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> (Client, Option<String>) {
        let mut req = url.into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                axum::http::HeaderValue::from_str(v).unwrap(),
            );
        }
        let (ws, resp) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect in time")
            .expect("connect");
        let proto = resp
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_string());
        (Client { ws, closed: None }, proto)
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string().into())).await.expect("send");
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws.send(Message::Text(s.to_string().into())).await.expect("send");
    }

    /// The next JSON frame, or None when the socket ended (see `closed`). Panics after the deadline.
    pub async fn next(&mut self) -> Option<Value> {
        self.next_within(DEADLINE)
            .await
            .expect("a frame or close before the deadline")
    }

    /// Like `next`, but returns Err(()) on timeout instead of panicking.
    pub async fn next_within(&mut self, d: Duration) -> Result<Option<Value>, ()> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            if self.closed.is_some() {
                return Ok(None);
            }
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(()),
                Ok(m) => m,
            };
            match msg {
                Some(Ok(Message::Text(t))) => return Ok(Some(serde_json::from_str(&t).expect("server sends JSON"))),
                Some(Ok(Message::Close(frame))) => {
                    self.closed = Some(match frame {
                        Some(f) => Ended::Closed(u16::from(f.code)),
                        None => Ended::ClosedWithoutCode,
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    self.closed.get_or_insert(Ended::Dropped);
                }
            }
        }
    }

    /// The next frame of type `ty`, skipping server pings. Panics on anything else.
    pub async fn expect(&mut self, ty: &str) -> Value {
        loop {
            let f = self
                .next()
                .await
                .unwrap_or_else(|| panic!("socket ended ({:?}) while waiting for {ty}", self.closed));
            if f["type"] == "ping" && ty != "ping" {
                continue;
            }
            assert_eq!(f["type"], ty, "expected a {ty} frame, got {f}");
            return f;
        }
    }

    /// The next `n` event frames (skipping pings).
    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.expect("event").await);
        }
        out
    }

    /// The ids of the next `n` event frames (skipping pings).
    pub async fn event_ids(&mut self, n: usize) -> Vec<String> {
        let events = self.events(n).await;
        events
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Reads until the server closes; returns the close code. Frames before it are returned too.
    pub async fn until_closed(&mut self) -> (Option<u16>, Vec<Value>) {
        let mut frames = Vec::new();
        while let Some(f) = self.next().await {
            frames.push(f);
        }
        let code = match self.closed {
            Some(Ended::Closed(c)) => Some(c),
            _ => None,
        };
        (code, frames)
    }

    /// Asserts that nothing but pings arrives for `d` (used after a negative delivery check;
    /// the positive check on another socket bounds how long a wrong delivery could take).
    pub async fn assert_silent(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Err(()) => return,
                Ok(Some(f)) if f["type"] == "ping" => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: WsCloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
        // Wait for the server's close answer so the server has unregistered us.
        let _ = tokio::time::timeout(DEADLINE, async { while let Some(Ok(_)) = self.ws.next().await {} }).await;
    }
}

/// Waits until `cond` holds, polling, failing after the deadline.
pub async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The trimmed stdout of a finished command; fails the test with its output if it failed.
pub fn stdout_of(what: &str, out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A `NODE_PATH` under which `node` finds node-redis, if anywhere: `crates/wsgw/tests/node`
/// (which `scripts/test.sh` installs), a global install (then empty), or the one
/// `scripts/bench-uws.sh` installs. For the tests that run the Node snippets of the docs.
pub fn node_path_with_redis() -> Option<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        Some(root.join("tests/node/node_modules")),
        None,
        Some(root.join("../../loadtest/peers/uws/node_modules")),
    ];
    candidates.into_iter().find_map(|dir| {
        let path = dir.map(|d| d.display().to_string()).unwrap_or_default();
        std::process::Command::new("node")
            .args(["-e", "require('redis')"])
            .env("NODE_PATH", &path)
            .output()
            .is_ok_and(|o| o.status.success())
            .then_some(path)
    })
}
