//! The VU's connection: a thin layer over [`wsgw_client::Client`], the project's Rust client
//! (small read buffer, optional source address, reconnect with `connection_id` +
//! `last_event_id`, capped exponential backoff with jitter, failover over the scenario's node
//! URLs). It adds what the engine's figures need: how long the VU was down before a reconnect,
//! and the difference between the socket closing and a reconnect attempt failing.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};
use wsgw_client::Backoff;

pub struct ClientConfig {
    /// Node URLs; the VU connects to `urls[url_index % len]` and fails over to the others, in
    /// order (round-robin), when that node goes away.
    pub urls: Vec<String>,
    pub url_index: usize,
    pub token: String,
    pub reconnect: bool,
    /// Initial and maximum backoff.
    pub backoff: (Duration, Duration),
    pub read_buffer_bytes: usize,
    pub local_addr: Option<IpAddr>,
    pub connect_timeout: Duration,
    /// For `wss://`: the CA file to trust, and whether to accept any certificate.
    pub ca_file: Option<String>,
    pub insecure: bool,
}

impl ClientConfig {
    fn into_client_config(self) -> wsgw_client::ClientConfig {
        let n = self.urls.len().max(1);
        let start = self.url_index % n;
        let mut urls = self.urls.into_iter().cycle().skip(start).take(n);
        let url = urls.next().unwrap_or_default();
        let mut c = wsgw_client::ClientConfig::new(url, self.token);
        c.fallback_urls = urls.collect();
        c.reconnect = self.reconnect;
        c.backoff = Backoff {
            initial: self.backoff.0,
            max: self.backoff.1,
            ..Backoff::default()
        };
        c.read_buffer_bytes = self.read_buffer_bytes;
        c.local_addr = self.local_addr;
        c.connect_timeout = self.connect_timeout;
        c.ca_file = self.ca_file.map(Into::into);
        c.insecure = self.insecure;
        c
    }
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
    /// A new socket was welcomed after a close; carries the welcome and how long the VU was down.
    Reconnected(Value, Duration),
    /// A reconnect attempt failed.
    ConnectFailed(String),
    /// The open socket closed.
    Closed {
        code: Option<u16>,
        reason: String,
        will_reconnect: bool,
    },
}

pub struct Client {
    inner: wsgw_client::Client,
    /// Set while the VU has no socket (since the close).
    down_since: Option<Instant>,
}

impl Client {
    /// Connects to `urls[url_index]` and waits for the welcome (no retry).
    pub async fn connect(cfg: ClientConfig) -> Result<(Client, Value)> {
        let (inner, welcome) = wsgw_client::Client::connect(cfg.into_client_config()).await?;
        let welcome = serde_json::to_value(&welcome)?;
        Ok((
            Client {
                inner,
                down_since: None,
            },
            welcome,
        ))
    }

    /// The connection id (of the current or last connection).
    pub fn connection_id(&self) -> &str {
        self.inner.connection_id()
    }

    /// The next message. `None` once closed without reconnect. Cancel-safe (the client's
    /// `next` is; a reconnect in progress simply starts over).
    pub async fn next(&mut self) -> Option<Incoming> {
        loop {
            let incoming = self.inner.next().await?;
            if let Some(m) = self.translate(incoming) {
                return Some(m);
            }
        }
    }

    /// What the load tool makes of a client message; `None` for what it ignores (presence
    /// `join`/`leave`).
    fn translate(&mut self, incoming: wsgw_client::Incoming) -> Option<Incoming> {
        Some(match incoming {
            wsgw_client::Incoming::Join { .. } | wsgw_client::Incoming::Leave { .. } => return None,
            wsgw_client::Incoming::Event {
                channel,
                event,
                event_id,
                data,
                ts,
            } => Incoming::Event {
                channel,
                event,
                event_id: event_id.map(|id| id.to_string()),
                data,
                ts: Some(ts),
            },
            wsgw_client::Incoming::Response {
                request_id,
                ok,
                data,
                more,
                error,
            } => Incoming::Response(
                json!({"request_id": request_id, "ok": ok, "data": data, "more": more, "error": error}),
            ),
            wsgw_client::Incoming::Error {
                code,
                message,
                request_id,
            } => Incoming::Error(json!({"code": code, "message": message, "request_id": request_id})),
            wsgw_client::Incoming::Unsubscribed { channel, reason } => {
                Incoming::Unsubscribed(json!({"channel": channel, "reason": reason}))
            }
            // The gateway cannot vouch for these channels after an outage: counted as an error.
            wsgw_client::Incoming::Gap { channels, .. } => Incoming::Error(json!({
                "code": "gap",
                "message": format!("possible gap on {}", channels.join(", ")),
            })),
            wsgw_client::Incoming::Reconnected(welcome) => {
                let down = self.down_since.take().map_or(Duration::ZERO, |t| t.elapsed());
                Incoming::Reconnected(serde_json::to_value(&*welcome).unwrap_or(Value::Null), down)
            }
            wsgw_client::Incoming::Closed {
                code,
                reason,
                will_reconnect,
            } => {
                if self.down_since.is_some() {
                    // Already down: a reconnect attempt failed.
                    Incoming::ConnectFailed(match code {
                        Some(c) => format!("{reason} ({c})"),
                        None => reason,
                    })
                } else {
                    self.down_since = Some(Instant::now());
                    Incoming::Closed {
                        code,
                        reason,
                        will_reconnect,
                    }
                }
            }
        })
    }

    /// Subscribes and waits for the answer; the client subscribes again after a reconnect when
    /// the resumed session did not restore the topic.
    pub async fn subscribe(&mut self, channel: &str) -> Result<()> {
        self.inner.subscribe(channel, None, None).await?;
        Ok(())
    }

    /// Durable publish; waits for the ack.
    pub async fn publish(&mut self, channel: &str, event: &str, data: Value) -> Result<()> {
        self.inner.publish(channel, event, data, true).await?;
        Ok(())
    }

    /// Drops the socket as a network failure would (no close frame); reconnects if enabled.
    pub fn drop_connection(&mut self) {
        self.inner.drop_connection();
    }

    /// Closes cleanly (1000) and stops reconnecting.
    pub async fn close(self) {
        self.inner.close().await;
    }
}
