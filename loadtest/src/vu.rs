//! The VU's socket, behind the same shape as `wsgw_client::Client` (connect / next / subscribe /
//! publish / close) so it can move onto that crate: tokio-tungstenite with a small read buffer,
//! optional source address, and reconnect with `connection_id` + `last_event_id` (capped
//! exponential backoff with jitter, rotating over the node URLs).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub struct ClientConfig {
    /// Node URLs; the VU starts at `url_index` and moves to the next one on each reconnect.
    pub urls: Vec<String>,
    pub url_index: usize,
    pub token: String,
    pub reconnect: bool,
    /// Initial and maximum backoff.
    pub backoff: (Duration, Duration),
    pub read_buffer_bytes: usize,
    pub local_addr: Option<IpAddr>,
    pub connect_timeout: Duration,
}

#[derive(Debug)]
pub enum Incoming {
    Event {
        channel: String,
        event: String,
        event_id: Option<String>,
        data: Value,
        ts: Option<u64>,
    },
    Response(Value),
    Error(Value),
    Unsubscribed(Value),
    Subscribed(Value),
    /// A new socket was welcomed after a close; carries the welcome and how long the VU was down.
    Reconnected(Value, Duration),
    /// A reconnect attempt failed.
    ConnectFailed(String),
    Closed {
        code: Option<u16>,
        reason: String,
        will_reconnect: bool,
    },
}

type Ws = WebSocketStream<TcpStream>;

pub struct Client {
    cfg: ClientConfig,
    ws: Option<Ws>,
    pub connection_id: Option<String>,
    last_event_id: Option<(u64, u64)>,
    attempt: u32,
    down_since: Option<Instant>,
    rng: u64,
}

fn parse_event_id(s: &str) -> Option<(u64, u64)> {
    let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

async fn open(url: &str, local: Option<IpAddr>, read_buf: usize) -> Result<Ws> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| anyhow!("{url}: only ws:// URLs are supported (no TLS in the load generator)"))?;
    let hostport = rest.split(['/', '?']).next().unwrap_or(rest);
    let addr: SocketAddr = tokio::net::lookup_host(hostport)
        .await?
        .next()
        .with_context(|| format!("resolve {hostport}"))?;
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = local {
        sock.bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("bind {ip}"))?;
    }
    let stream = sock.connect(addr).await?;
    stream.set_nodelay(true)?;
    let cfg = WebSocketConfig::default()
        .read_buffer_size(read_buf)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(cfg)).await?;
    Ok(ws)
}

impl Client {
    /// Connects and waits for the welcome.
    pub async fn connect(cfg: ClientConfig) -> Result<(Client, Value)> {
        let mut c = Client {
            rng: 0x9e37_79b9_7f4a_7c15 ^ (cfg.url_index as u64).wrapping_mul(0x2545_f491_4f6c_dd1d),
            cfg,
            ws: None,
            connection_id: None,
            last_event_id: None,
            attempt: 0,
            down_since: None,
        };
        let w = c.dial().await?;
        Ok((c, w))
    }

    fn url(&self) -> String {
        let base = &self.cfg.urls[self.cfg.url_index % self.cfg.urls.len()];
        let sep = if base.contains('?') { '&' } else { '?' };
        let mut u = format!("{base}{sep}token={}", self.cfg.token);
        if let Some(id) = &self.connection_id {
            u.push_str(&format!("&connection_id={id}"));
        }
        if let Some((ms, seq)) = self.last_event_id {
            u.push_str(&format!("&last_event_id={ms}-{seq}"));
        }
        u
    }

    async fn dial(&mut self) -> Result<Value> {
        let url = self.url();
        let fut = async {
            let mut ws = open(&url, self.cfg.local_addr, self.cfg.read_buffer_bytes).await?;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t)?;
                        match v["type"].as_str() {
                            Some("welcome") => return Ok::<_, anyhow::Error>((ws, v)),
                            Some("error") => bail!("refused: {}", v["code"].as_str().unwrap_or("?")),
                            _ => continue,
                        }
                    }
                    Some(Ok(Message::Close(f))) => bail!("closed before welcome: {:?}", f.map(|f| u16::from(f.code))),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.into()),
                    None => bail!("closed before welcome"),
                }
            }
        };
        let (ws, welcome) = tokio::time::timeout(self.cfg.connect_timeout, fut)
            .await
            .map_err(|_| anyhow!("connect timeout"))??;
        self.connection_id = welcome["connection_id"].as_str().map(String::from);
        self.ws = Some(ws);
        Ok(welcome)
    }

    fn jitter(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The next message. `None` once closed without reconnect. Cancel-safe between frames:
    /// a reconnect in progress simply starts over.
    pub async fn next(&mut self) -> Option<Incoming> {
        loop {
            let Some(ws) = self.ws.as_mut() else {
                if !self.cfg.reconnect {
                    return None;
                }
                let (lo, hi) = self.cfg.backoff;
                let exp = lo.as_secs_f64() * 2f64.powi(self.attempt.min(16) as i32);
                let wait = exp.min(hi.as_secs_f64()) * (0.5 + self.jitter() * 0.5);
                tokio::time::sleep(Duration::from_secs_f64(wait)).await;
                self.attempt += 1;
                self.cfg.url_index += 1;
                match self.dial().await {
                    Ok(w) => {
                        self.attempt = 0;
                        let down = self.down_since.take().map_or(Duration::ZERO, |t| t.elapsed());
                        return Some(Incoming::Reconnected(w, down));
                    }
                    Err(e) => return Some(Incoming::ConnectFailed(format!("{e:#}"))),
                }
            };
            let msg = ws.next().await;
            let (code, reason) = match msg {
                Some(Ok(Message::Text(t))) => {
                    let Ok(v) = serde_json::from_str::<Value>(&t) else {
                        continue;
                    };
                    match v["type"].as_str().unwrap_or("") {
                        "event" => {
                            let event_id = v["event_id"].as_str().map(String::from);
                            if let Some(id) = event_id.as_deref().and_then(parse_event_id)
                                && self.last_event_id.is_none_or(|l| id > l)
                            {
                                self.last_event_id = Some(id);
                            }
                            let mut v = v;
                            return Some(Incoming::Event {
                                channel: v["channel"].as_str().unwrap_or("").to_string(),
                                event: v["event"].as_str().unwrap_or("").to_string(),
                                ts: v["ts"].as_u64(),
                                data: v["data"].take(),
                                event_id,
                            });
                        }
                        "ping" => {
                            let _ = ws.send(Message::text(r#"{"type":"pong"}"#)).await;
                            continue;
                        }
                        "response" => return Some(Incoming::Response(v)),
                        "error" => return Some(Incoming::Error(v)),
                        "unsubscribed" => return Some(Incoming::Unsubscribed(v)),
                        "subscribed" => return Some(Incoming::Subscribed(v)),
                        _ => continue,
                    }
                }
                Some(Ok(Message::Close(f))) => (f.as_ref().map(|f| u16::from(f.code)), f.map(|f| f.reason.to_string())),
                Some(Ok(_)) => continue,
                Some(Err(e)) => (None, Some(e.to_string())),
                None => (None, None),
            };
            self.ws = None;
            self.down_since = Some(Instant::now());
            // 1000 (taken over) and 4004 (kicked) and auth failures: do not reconnect.
            let will_reconnect = self.cfg.reconnect && !matches!(code, Some(1000 | 4001 | 4003 | 4004));
            if !will_reconnect {
                self.cfg.reconnect = false;
            }
            return Some(Incoming::Closed {
                code,
                reason: reason.unwrap_or_default(),
                will_reconnect,
            });
        }
    }

    async fn send(&mut self, v: Value) -> Result<()> {
        let ws = self.ws.as_mut().context("not connected")?;
        ws.send(Message::text(v.to_string())).await?;
        Ok(())
    }

    pub async fn subscribe(&mut self, channel: &str) -> Result<()> {
        self.send(json!({"type": "subscribe", "channel": channel})).await
    }

    pub async fn publish(&mut self, channel: &str, event: &str, data: Value) -> Result<()> {
        self.send(json!({"type": "publish", "channel": channel, "event": event, "data": data}))
            .await
    }

    /// Drops the socket as a network failure would (no close frame); reconnects if enabled.
    pub fn drop_connection(&mut self) {
        self.ws = None;
        self.down_since = Some(Instant::now());
    }

    /// Closes cleanly (1000) and stops reconnecting.
    pub async fn close(mut self) {
        self.cfg.reconnect = false;
        if let Some(mut ws) = self.ws.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
        }
    }
}
