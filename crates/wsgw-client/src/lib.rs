//! wsgw-client: a Rust client for the wsgw WebSocket gateway, for backends, tests and load tests.
//!
//! One [`Client`] owns one WebSocket. There is no background task: everything happens inside the
//! `async` calls of its owner. [`Client::next`] reads the next thing from the gateway, answers the
//! gateway's heartbeat pings, remembers the highest `event_id` seen and, when the socket drops,
//! reconnects with backoff, resuming the connection (`connection_id` + `last_event_id`) so that no
//! event is lost. The wire contract is `docs/protocol.md` in the repository.
//!
//! Keep calling [`Client::next`] (at least once per heartbeat interval, 30 s by default): the
//! gateway closes sockets that stay silent longer than the heartbeat timeout.
//!
//! # The cursor
//!
//! [`Client::last_event_id`] is what the next resume sends: the highest `event_id` received,
//! except while a catch-up is unfinished. A `subscribed` answer with `replayed: N > 0` starts a
//! catch-up of that channel: the next N durable events on it are older events (older, possibly,
//! than events already received on other channels). If the socket drops before all N arrived,
//! the client resumes from the lowest of its highest id and, for each unfinished catch-up, the
//! last catch-up id received (the subscribe's `last_event_id` before the first one). After that
//! welcome it drops every event at or below the old highest id (the application has those),
//! except, on a channel whose catch-up was cut, those above its last catch-up id, and those of
//! channels subscribed since; the first event above the old highest id ends this filter. A `history` preview cut before its first event is
//! not repeated. A topic the resume did not restore is subscribed again from where the
//! application's events of it end. So the application sees every event of its channels once, in
//! order per channel (docs/protocol.md, "The cursor a client keeps").
//!
//! When the gateway cannot prove that a live socket missed nothing (after a Redis outage), it
//! says so with [`Incoming::Gap`]: reload the state of those channels from your backend.
//!
//! ```no_run
//! use wsgw_client::{Client, ClientConfig, Incoming};
//!
//! # async fn run() -> Result<(), wsgw_client::ClientError> {
//! let config = ClientConfig::new("ws://127.0.0.1:8080/ws", "<jwt>");
//! let (mut client, welcome) = Client::connect(config).await?;
//! println!("connected as {} on {}", welcome.connection_id, welcome.node);
//! client.subscribe("project:42", None, None).await?;
//! let id = client.publish("project:42", "hello", serde_json::json!({"text": "hi"}), true).await?;
//! println!("published {id}");
//! while let Some(incoming) = client.next().await {
//!     match incoming {
//!         Incoming::Event { channel, event, data, .. } => println!("{channel} {event} {data}"),
//!         Incoming::Closed { code, will_reconnect, .. } => println!("closed {code:?}, retry: {will_reconnect}"),
//!         other => println!("{other:?}"),
//!     }
//! }
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cursor;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header::AUTHORIZATION};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::cursor::{Cursor, Subscribe};

pub use wsgw_protocol::{CloseCode, EventId, Welcome};

type Ws = WebSocketStream<TcpStream>;

/// Reconnect delays: capped exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The delay before the first retry (before jitter).
    pub initial: Duration,
    /// No delay is ever longer than this.
    pub max: Duration,
    /// Each further attempt waits this many times longer (values below 1 count as 1).
    pub factor: f64,
    /// Random spread as a fraction of the delay: 0.5 gives a delay within ±50 % (clamped to 0..=1).
    pub jitter: f64,
}

impl Default for Backoff {
    /// 500 ms, doubling, capped at 30 s, ±50 % jitter (the browser client's policy).
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            factor: 2.0,
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0 for the first): `initial * factor^attempt`,
    /// capped at `max`, then spread by ± `jitter`, and never above `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, rand::random::<f64>() * 2.0 - 1.0)
    }

    /// `unit` in -1..=1 picks the point in the jitter range.
    fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let max = self.max.as_secs_f64();
        let initial = self.initial.as_secs_f64().min(max);
        let factor = if self.factor.is_finite() && self.factor > 1.0 {
            self.factor
        } else {
            1.0
        };
        let exp = i32::try_from(attempt).unwrap_or(i32::MAX);
        let base = (initial * factor.powi(exp)).min(max);
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let d = base * (1.0 + jitter * unit.clamp(-1.0, 1.0));
        Duration::from_secs_f64(if d.is_finite() { d.clamp(0.0, max) } else { max })
    }

    /// The delay after a "server going away" close (1001, 1012): at once, spread over
    /// `0..initial` so that a drained node's clients do not all come back in the same instant.
    fn at_once(&self) -> Duration {
        self.initial.min(self.max).mul_f64(rand::random::<f64>())
    }
}

/// How to reach the gateway and how to behave when the socket drops.
#[derive(Clone)]
pub struct ClientConfig {
    /// The gateway's WebSocket address, e.g. `ws://127.0.0.1:8080/ws` (no query; `wss` is not
    /// supported).
    pub url: String,
    /// Other gateway nodes to fail over to, e.g. the rest of a cluster. Default empty.
    ///
    /// Reconnects go round-robin over `url`, then `fallback_urls`, in order: the client moves to
    /// the next address after a reconnect attempt fails (the node is down or refuses), after the
    /// node closes the socket with 1001 (going away) or 1012 (restart), and after the socket is
    /// lost without a close frame (the node died, or the network to it failed). It keeps its
    /// `connection_id` and `last_event_id`, so a cluster that shares sessions resumes it on the
    /// other node. [`Client::connect`] itself uses `url` only.
    pub fallback_urls: Vec<String>,
    /// The JWT, sent as `Authorization: Bearer <token>`.
    pub token: String,
    /// Whether [`Client::next`] reconnects after the socket drops (by the close-code policy).
    /// Default `true`.
    pub reconnect: bool,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// The WebSocket read buffer, in bytes. Default 4096: small, as load tests open tens of
    /// thousands of clients.
    pub read_buffer_bytes: usize,
    /// Bind the TCP socket to this source address before connecting (e.g. `127.0.0.2`, … when a
    /// load test runs out of ephemeral ports on one address).
    pub local_addr: Option<IpAddr>,
    /// How long one connection attempt may take: DNS, TCP, the WebSocket handshake and the
    /// `welcome`. Default 10 s.
    pub connect_timeout: Duration,
    /// How long `subscribe`, `unsubscribe`, `publish` and `refresh` wait for their answer.
    /// Default 10 s.
    pub call_timeout: Duration,
}

impl ClientConfig {
    /// A config with the defaults: reconnect on, default backoff, 4 KiB read buffer, 10 s timeouts.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            fallback_urls: Vec::new(),
            token: token.into(),
            reconnect: true,
            backoff: Backoff::default(),
            read_buffer_bytes: 4096,
            local_addr: None,
            connect_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("fallback_urls", &self.fallback_urls)
            .field("token", &"<redacted>")
            .field("reconnect", &self.reconnect)
            .field("backoff", &self.backoff)
            .field("read_buffer_bytes", &self.read_buffer_bytes)
            .field("local_addr", &self.local_addr)
            .field("connect_timeout", &self.connect_timeout)
            .field("call_timeout", &self.call_timeout)
            .finish()
    }
}

/// Something the gateway sent, or something that happened to the connection.
#[derive(Debug, Clone)]
pub enum Incoming {
    /// An event of a channel the connection is in.
    Event {
        /// The channel it was published on.
        channel: String,
        /// The event name.
        event: String,
        /// The durable event's id (absent for ephemeral events).
        event_id: Option<EventId>,
        /// The payload.
        data: Value,
        /// Publish time, ms since the epoch.
        ts: u64,
    },
    /// A backend's answer to [`Client::request`] (one of several when `more` is true).
    Response {
        /// The request's id, as given to [`Client::request`].
        request_id: Value,
        /// Whether the backend succeeded.
        ok: bool,
        /// The payload (`null` when absent).
        data: Value,
        /// `true`: a chunk of a streamed answer; more frames follow.
        more: bool,
        /// The backend's error, when `ok` is false.
        error: Option<Value>,
    },
    /// An `error` frame that answers none of this client's waiting calls: e.g. a refused
    /// [`Client::request`] (`unavailable`, `timeout`, …), or a topic that could not be
    /// subscribed again after a reconnect.
    Error {
        /// The error code (`forbidden`, `unavailable`, `timeout`, …).
        code: String,
        /// A human-readable explanation.
        message: String,
        /// The request id it answers, if any.
        request_id: Option<Value>,
    },
    /// The gateway cannot prove that this (live, still open) socket missed no event of these
    /// channels and patterns: after a Redis outage their history no longer held everything
    /// published meanwhile. Reload their state from your backend; events keep coming.
    Gap {
        /// The channels and patterns concerned.
        channels: Vec<String>,
        /// Always `false`.
        recovered: bool,
    },
    /// The gateway removed a subscription by itself (e.g. after a token refresh).
    Unsubscribed {
        /// The topic or pattern.
        channel: String,
        /// Why.
        reason: Option<String>,
    },
    /// The client reconnected (after `Closed` with `will_reconnect`); its welcome. Replayed
    /// events follow.
    Reconnected(Box<Welcome>),
    /// The socket closed, or a reconnect attempt failed; `will_reconnect` says whether the client
    /// tries again (by policy). `code` is the close code, `None` for a network failure.
    Closed {
        /// The WebSocket close code, if the gateway sent one.
        code: Option<u16>,
        /// The close reason, or what went wrong.
        reason: String,
        /// Whether [`Client::next`] will reconnect.
        will_reconnect: bool,
    },
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection or the WebSocket handshake failed.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The socket is closed (or closed while waiting for the answer).
    #[error("connection closed ({code:?}): {reason}")]
    Closed {
        /// The close code, if the gateway sent one.
        code: Option<u16>,
        /// The close reason, or what went wrong.
        reason: String,
    },
    /// The gateway answered with an `error` frame (e.g. `unauthorized` at connect, `forbidden`
    /// on subscribe).
    #[error("refused by the gateway: {code}: {message}")]
    Refused {
        /// The error code.
        code: String,
        /// The gateway's explanation.
        message: String,
    },
    /// No answer in time.
    #[error("no answer from the gateway in time")]
    Timeout,
    /// The gateway sent something this client cannot read.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// A topic the application subscribed to, kept for re-subscribing after a reconnect.
#[derive(Debug, Clone)]
struct Topic {
    channel: String,
    history: Option<u32>,
    last_event_id: Option<EventId>,
}

/// What one read from the socket gave.
enum Step {
    Frame(Value),
    /// The socket is gone; `Incoming::Closed` is already queued.
    Lost {
        code: Option<u16>,
        reason: String,
    },
}

/// A failed connection attempt.
struct Failure {
    kind: FailKind,
    close_code: Option<u16>,
    reason: String,
    /// The `error` frame the gateway sent before closing, if any.
    error: Option<(String, String)>,
}

enum FailKind {
    Connect,
    Timeout,
    Closed,
    Protocol,
}

impl Failure {
    fn new(kind: FailKind, reason: impl Into<String>) -> Self {
        Self {
            kind,
            close_code: None,
            reason: reason.into(),
            error: None,
        }
    }

    fn into_error(self) -> ClientError {
        if let Some((code, message)) = self.error {
            return ClientError::Refused { code, message };
        }
        match self.kind {
            FailKind::Connect => ClientError::Connect(self.reason),
            FailKind::Timeout => ClientError::Timeout,
            FailKind::Closed => ClientError::Closed {
                code: self.close_code,
                reason: self.reason,
            },
            FailKind::Protocol => ClientError::Protocol(self.reason),
        }
    }
}

/// A connection to the gateway, reconnecting as needed. See the [crate docs](crate).
pub struct Client {
    cfg: ClientConfig,
    /// The address in use: 0 is `cfg.url`, `i` is `cfg.fallback_urls[i - 1]`.
    url_index: usize,
    ws: Option<Ws>,
    connection_id: String,
    node: String,
    /// How long the gateway may stay silent before the socket counts as dead.
    silence: Option<Duration>,
    /// What a resume sends as `last_event_id`, and the events after it the application has.
    cursor: Cursor,
    topics: Vec<Topic>,
    queue: VecDeque<Incoming>,
    /// Re-subscribes sent after a reconnect: (request id, channel).
    resubscribing: Vec<(u64, String)>,
    next_rid: u64,
    /// Bumped by `set_token`; `token_used` is the generation the current socket connected with.
    token_gen: u64,
    token_used: u64,
    attempt: u32,
    reconnect_at: Option<Instant>,
    finished: bool,
    last_close: (Option<u16>, String),
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url())
            .field("connected", &self.ws.is_some())
            .field("connection_id", &self.connection_id)
            .field("node", &self.node)
            .field("last_event_id", &self.cursor.resume_id())
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects and waits for the welcome. Does not retry: a refused or failed first connection
    /// is an error (`Refused` when the gateway sent an `error` frame, e.g. `unauthorized`).
    pub async fn connect(config: ClientConfig) -> Result<(Client, Welcome), ClientError> {
        let mut client = Client {
            cfg: config,
            url_index: 0,
            ws: None,
            connection_id: String::new(),
            node: String::new(),
            silence: None,
            cursor: Cursor::new(None),
            topics: Vec::new(),
            queue: VecDeque::new(),
            resubscribing: Vec::new(),
            next_rid: 0,
            token_gen: 0,
            token_used: 0,
            attempt: 0,
            reconnect_at: None,
            finished: false,
            last_close: (None, String::from("not connected")),
        };
        let welcome = client.attempt().await.map_err(Failure::into_error)?;
        Ok((client, welcome))
    }

    /// The next thing from the gateway.
    ///
    /// Answers the gateway's pings itself, tracks [`last_event_id`](Self::last_event_id) (the
    /// cursor, see [the crate docs](crate#the-cursor)) and the connection id. When the socket
    /// drops and the policy allows, it yields `Closed { will_reconnect: true }`, waits (backoff),
    /// reconnects with `connection_id` + `last_event_id`, re-subscribes the topics the welcome's
    /// `channels` did not restore (with `last_event_id`), and yields `Reconnected(welcome)`;
    /// replayed events follow, without those the application already got. Each failed attempt
    /// yields another `Closed`. Returns `None` once closed for good.
    ///
    /// Policy: 1000, 4001 and 4004 are final; 4003 is final unless a new token was set with
    /// [`set_token`](Self::set_token); 1001 and 1012 reconnect at once (with a little jitter);
    /// everything else (including network failures) backs off. With `reconnect: false` every
    /// close is final.
    ///
    /// With [`fallback_urls`](ClientConfig::fallback_urls), a failed attempt, a 1001/1012 close
    /// and a socket lost without a close frame move the client to the next address
    /// (round-robin), keeping the connection id and `last_event_id`.
    ///
    /// Cancel-safe: it can be used in `tokio::select!`; a cancelled reconnect starts over.
    pub async fn next(&mut self) -> Option<Incoming> {
        loop {
            if let Some(incoming) = self.queue.pop_front() {
                return Some(incoming);
            }
            if self.finished {
                return None;
            }
            if self.ws.is_none() {
                let Some(at) = self.reconnect_at else {
                    self.finished = true;
                    return None;
                };
                tokio::time::sleep_until(at).await;
                match self.attempt().await {
                    Ok(welcome) => return Some(Incoming::Reconnected(Box::new(welcome))),
                    Err(f) => {
                        if let Some((code, message)) = f.error {
                            self.queue.push_back(Incoming::Error {
                                code,
                                message,
                                request_id: None,
                            });
                        }
                        // That node is down or refuses: try the next address.
                        self.rotate();
                        self.lost(f.close_code, f.reason, false);
                        continue;
                    }
                }
            }
            if let Step::Frame(frame) = self.read_step().await
                && let Some(incoming) = self.dispatch(frame)
            {
                return Some(incoming);
            }
        }
    }

    /// Subscribes to a topic or pattern and waits for `subscribed` (returned as JSON, with
    /// `recovered` and `replayed`); events arriving meanwhile are kept for [`next`](Self::next).
    /// `last_event_id` replays the channel's events after that id first; otherwise `history`
    /// sends its last N events first.
    ///
    /// The topic is remembered and subscribed again after a reconnect. When the socket is down
    /// (or drops before the answer) this returns `Closed`, but the topic is still subscribed on
    /// the next reconnect. A refusal (`Refused`, e.g. `forbidden`) forgets it.
    pub async fn subscribe(
        &mut self,
        channel: &str,
        history: Option<u32>,
        last_event_id: Option<EventId>,
    ) -> Result<Value, ClientError> {
        let topic = Topic {
            channel: channel.to_owned(),
            history,
            last_event_id,
        };
        let kind = match self.topics.iter_mut().find(|t| t.channel == channel) {
            Some(t) => {
                *t = topic;
                Subscribe::Same
            }
            None => {
                self.topics.push(topic);
                Subscribe::New
            }
        };
        let rid = self.rid();
        let mut frame = json!({"type": "subscribe", "channel": channel, "request_id": rid});
        if let Some(id) = last_event_id {
            frame["last_event_id"] = Value::from(id.to_string());
        } else if let Some(n) = history {
            frame["history"] = Value::from(n);
        }
        self.send(frame).await?;
        self.cursor.subscribe_sent(rid, channel, last_event_id, kind);
        let reply = self.answer(rid).await?;
        match reply["type"].as_str() {
            Some("subscribed") => {
                let replayed = reply["replayed"].as_u64().unwrap_or(0);
                self.cursor.subscribed(Some(rid), channel, replayed);
                Ok(reply)
            }
            _ => {
                self.cursor.refused(Some(rid));
                self.topics.retain(|t| t.channel != channel);
                Err(refusal(&reply))
            }
        }
    }

    /// Leaves a topic or pattern and waits for `unsubscribed`.
    pub async fn unsubscribe(&mut self, channel: &str) -> Result<(), ClientError> {
        self.topics.retain(|t| t.channel != channel);
        self.cursor.unsubscribed(channel);
        let rid = self.rid();
        let reply = self
            .call(
                json!({"type": "unsubscribe", "channel": channel, "request_id": rid}),
                rid,
            )
            .await?;
        match reply["type"].as_str() {
            Some("unsubscribed") => Ok(()),
            _ => Err(refusal(&reply)),
        }
    }

    /// Durable publish; waits for the `ack` and returns the event's id. With `echo: false` this
    /// socket does not receive its own event even when subscribed to the channel.
    pub async fn publish(
        &mut self,
        channel: &str,
        event: &str,
        data: Value,
        echo: bool,
    ) -> Result<EventId, ClientError> {
        let rid = self.rid();
        let frame = json!({"type": "publish", "channel": channel, "event": event, "data": data,
            "echo": echo, "request_id": rid});
        let reply = self.call(frame, rid).await?;
        match reply["type"].as_str() {
            Some("ack") => reply["event_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| ClientError::Protocol(format!("ack without a readable event_id: {reply}"))),
            _ => Err(refusal(&reply)),
        }
    }

    /// Sends a backend request; the answers come through [`next`](Self::next) as
    /// [`Incoming::Response`] (or [`Incoming::Error`], e.g. `unavailable` in single-node mode).
    ///
    /// Use non-integer request ids (e.g. strings): the client numbers its own calls with integers.
    pub async fn request(&mut self, action: &str, data: Value, request_id: Value) -> Result<(), ClientError> {
        self.send(json!({"type": "request", "action": action, "data": data, "request_id": request_id}))
            .await
    }

    /// Sets the token used by later reconnects. After it, a 4003 (token expired) close
    /// reconnects instead of being final. It does not change the current connection's token;
    /// [`refresh`](Self::refresh) does both.
    pub fn set_token(&mut self, token: String) {
        self.cfg.token = token;
        self.token_gen += 1;
    }

    /// Replaces the token of the live connection (`refresh` frame, waits for the `ack`) and of
    /// later reconnects.
    pub async fn refresh(&mut self, token: String) -> Result<(), ClientError> {
        self.set_token(token.clone());
        let rid = self.rid();
        let reply = self
            .call(json!({"type": "refresh", "token": token, "request_id": rid}), rid)
            .await?;
        match reply["type"].as_str() {
            Some("ack") => {
                self.token_used = self.token_gen;
                Ok(())
            }
            _ => Err(refusal(&reply)),
        }
    }

    /// What the next resume sends as `last_event_id`: the highest `event_id` received (numeric
    /// order), or lower while a catch-up is unfinished (see [the crate docs](crate#the-cursor)).
    pub fn last_event_id(&self) -> Option<EventId> {
        self.cursor.resume_id()
    }

    /// The connection id (of the current or last connection), used to resume the session.
    pub fn connection_id(&self) -> &str {
        &self.connection_id
    }

    /// The gateway node of the current (or last) connection.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The address the client is connected to (or will try next): `url` or one of
    /// `fallback_urls`.
    pub fn url(&self) -> &str {
        match self.url_index {
            0 => &self.cfg.url,
            i => self.cfg.fallback_urls.get(i - 1).unwrap_or(&self.cfg.url),
        }
    }

    /// Whether a socket is open right now.
    pub fn is_connected(&self) -> bool {
        self.ws.is_some()
    }

    /// The topics and patterns this client keeps subscribed across reconnects.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.topics.iter().map(|t| t.channel.as_str())
    }

    /// Closes with 1000 (waiting briefly for the gateway's answer); no reconnect.
    pub async fn close(mut self) {
        self.finished = true;
        if let Some(mut ws) = self.ws.take() {
            let frame = CloseFrame {
                code: WsCloseCode::Normal,
                reason: "bye".into(),
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                if ws.close(Some(frame)).await.is_ok() {
                    while let Some(Ok(_)) = ws.next().await {}
                }
            })
            .await;
        }
    }

    /// For tests and load tests: drops the TCP connection without a close frame (a network
    /// drop). The next [`next`](Self::next) yields `Closed { code: None, .. }` and reconnects
    /// (when `reconnect` is on), to the next of the `fallback_urls` when there are any.
    pub fn drop_connection(&mut self) {
        if let Some(ws) = self.ws.take() {
            drop(ws);
            self.lost(None, String::from("connection dropped by the client"), true);
        }
    }

    // ---- internals ----

    fn rid(&mut self) -> u64 {
        self.next_rid += 1;
        self.next_rid
    }

    /// Moves to the next address (round-robin over `url` and `fallback_urls`).
    fn rotate(&mut self) {
        self.url_index = (self.url_index + 1) % (self.cfg.fallback_urls.len() + 1);
    }

    /// The socket is gone: queue `Closed` and decide whether and when to reconnect.
    fn lost(&mut self, code: Option<u16>, reason: String, was_open: bool) {
        self.ws = None;
        self.silence = None;
        self.cursor.disconnected();
        let will_reconnect = !self.finished
            && self.cfg.reconnect
            && match code {
                Some(1000 | 4001 | 4004) => false,
                Some(4003) => self.token_gen > self.token_used,
                _ => true,
            };
        if will_reconnect {
            if was_open && matches!(code, None | Some(1001 | 1012)) {
                // The node went away (or died, or the network to it failed): come back on the
                // next address.
                self.rotate();
            }
            let delay = if was_open && matches!(code, Some(1001 | 1012)) {
                self.cfg.backoff.at_once()
            } else {
                let d = self.cfg.backoff.delay(self.attempt);
                self.attempt = self.attempt.saturating_add(1);
                d
            };
            self.reconnect_at = Some(Instant::now() + delay);
        } else {
            self.reconnect_at = None;
            self.finished = true;
        }
        self.last_close = (code, reason.clone());
        self.queue.push_back(Incoming::Closed {
            code,
            reason,
            will_reconnect,
        });
    }

    fn closed_error(&self) -> ClientError {
        ClientError::Closed {
            code: self.last_close.0,
            reason: self.last_close.1.clone(),
        }
    }

    /// Sends one frame on the live socket.
    async fn send(&mut self, frame: Value) -> Result<(), ClientError> {
        let Some(ws) = self.ws.as_mut() else {
            return Err(self.closed_error());
        };
        if let Err(e) = ws.send(Message::text(frame.to_string())).await {
            self.lost(None, format!("send failed: {e}"), true);
            return Err(self.closed_error());
        }
        Ok(())
    }

    /// Sends a frame and waits for the answer carrying `rid`; other frames are queued.
    async fn call(&mut self, frame: Value, rid: u64) -> Result<Value, ClientError> {
        self.send(frame).await?;
        self.answer(rid).await
    }

    /// Waits for the answer carrying `rid` to a frame sent; other frames are queued.
    async fn answer(&mut self, rid: u64) -> Result<Value, ClientError> {
        let deadline = Instant::now() + self.cfg.call_timeout;
        loop {
            if self.ws.is_none() {
                return Err(self.closed_error());
            }
            match tokio::time::timeout_at(deadline, self.read_step()).await {
                Err(_) => return Err(ClientError::Timeout),
                Ok(Step::Lost { code, reason }) => return Err(ClientError::Closed { code, reason }),
                Ok(Step::Frame(f)) => {
                    let answers = f.get("request_id").and_then(Value::as_u64) == Some(rid)
                        && matches!(
                            f["type"].as_str(),
                            Some("subscribed" | "unsubscribed" | "ack" | "error")
                        );
                    if answers {
                        return Ok(f);
                    }
                    if let Some(incoming) = self.dispatch(f) {
                        self.queue.push_back(incoming);
                    }
                }
            }
        }
    }

    /// Reads the next frame from the live socket, answering pings. Cancel-safe.
    async fn read_step(&mut self) -> Step {
        loop {
            let Some(ws) = self.ws.as_mut() else {
                return Step::Lost {
                    code: self.last_close.0,
                    reason: self.last_close.1.clone(),
                };
            };
            match read_frame(ws, self.silence).await {
                Ok(frame) => {
                    if frame["type"] == "ping" {
                        if let Err(e) = ws.send(Message::text(r#"{"type":"pong"}"#)).await {
                            self.lost(None, format!("send failed: {e}"), true);
                        }
                        continue;
                    }
                    return Step::Frame(frame);
                }
                Err((code, reason)) => {
                    self.lost(code, reason.clone(), true);
                    return Step::Lost { code, reason };
                }
            }
        }
    }

    /// Turns a frame that answers no waiting call into what `next` yields (or nothing).
    fn dispatch(&mut self, f: Value) -> Option<Incoming> {
        let rid = f.get("request_id").cloned();
        let internal = rid
            .as_ref()
            .and_then(Value::as_u64)
            .and_then(|r| self.resubscribing.iter().position(|(x, _)| *x == r));
        match f["type"].as_str()? {
            "event" => {
                let e: wsgw_protocol::EventFrame = serde_json::from_value(f).ok()?;
                if let Some(id) = e.event_id
                    && !self.cursor.event(&e.channel, id)
                {
                    return None; // the application has it: a resume's replay after a cut catch-up
                }
                Some(Incoming::Event {
                    channel: e.channel,
                    event: e.event,
                    event_id: e.event_id,
                    data: e.data,
                    ts: e.ts,
                })
            }
            "response" => Some(Incoming::Response {
                request_id: rid.unwrap_or(Value::Null),
                ok: f["ok"].as_bool().unwrap_or(false),
                data: f.get("data").cloned().unwrap_or(Value::Null),
                more: f["more"].as_bool().unwrap_or(false),
                error: f.get("error").filter(|e| !e.is_null()).cloned(),
            }),
            "error" => {
                self.cursor.refused(rid.as_ref().and_then(Value::as_u64));
                if let Some(i) = internal {
                    // A topic that could not be subscribed again after a reconnect.
                    let (_, channel) = self.resubscribing.swap_remove(i);
                    self.topics.retain(|t| t.channel != channel);
                }
                Some(Incoming::Error {
                    code: f["code"].as_str().unwrap_or("unknown").to_owned(),
                    message: f["message"].as_str().unwrap_or_default().to_owned(),
                    request_id: rid,
                })
            }
            "unsubscribed" if rid.is_none() => {
                let channel = f["channel"].as_str()?.to_owned();
                self.topics.retain(|t| t.channel != channel);
                self.cursor.unsubscribed(&channel);
                Some(Incoming::Unsubscribed {
                    channel,
                    reason: f["reason"].as_str().map(str::to_owned),
                })
            }
            "subscribed" => {
                // A re-subscribe after a reconnect, or the late answer to a timed-out subscribe.
                if let Some(i) = internal {
                    self.resubscribing.swap_remove(i);
                }
                if let Some(channel) = f["channel"].as_str() {
                    let replayed = f["replayed"].as_u64().unwrap_or(0);
                    self.cursor
                        .subscribed(rid.as_ref().and_then(Value::as_u64), channel, replayed);
                }
                None
            }
            "gap" => Some(Incoming::Gap {
                channels: f["channels"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|c| c.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default(),
                recovered: f["recovered"].as_bool().unwrap_or(false),
            }),
            // Late answers to timed-out calls, pongs, unknown types.
            _ => None,
        }
    }

    /// One connection attempt: TCP, handshake, welcome. On success the socket is live and the
    /// topics the welcome did not restore are being subscribed again.
    async fn attempt(&mut self) -> Result<Welcome, Failure> {
        let token_gen = self.token_gen;
        let timeout = self.cfg.connect_timeout;
        let (ws, welcome) = match tokio::time::timeout(timeout, self.open()).await {
            Ok(r) => r?,
            Err(_) => return Err(Failure::new(FailKind::Timeout, "connect timed out")),
        };
        self.ws = Some(ws);
        self.token_used = token_gen;
        self.attempt = 0;
        self.reconnect_at = None;
        self.connection_id.clone_from(&welcome.connection_id);
        self.node.clone_from(&welcome.node);
        self.silence = Some(Duration::from_millis(
            welcome
                .heartbeat
                .interval_ms
                .saturating_add(welcome.heartbeat.timeout_ms),
        ));
        self.resubscribing.clear();
        self.cursor.connected();
        let missing: Vec<Topic> = self
            .topics
            .iter()
            .filter(|t| !welcome.channels.contains(&t.channel))
            .cloned()
            .collect();
        for t in missing {
            let rid = self.rid();
            let mut frame = json!({"type": "subscribe", "channel": t.channel, "request_id": rid});
            // From where the application's events of the topic end (the cursor, or the catch-up
            // position of a topic whose catch-up the lost socket cut short).
            let from = self.cursor.resubscribe_from(&t.channel).or(t.last_event_id);
            if let Some(id) = from {
                frame["last_event_id"] = Value::from(id.to_string());
            } else if let Some(n) = t.history {
                frame["history"] = Value::from(n);
            }
            if self.send(frame).await.is_err() {
                break; // `Closed` is queued; `next` reports it after the welcome.
            }
            self.cursor.subscribe_sent(rid, &t.channel, from, Subscribe::Again);
            self.resubscribing.push((rid, t.channel));
        }
        Ok(welcome)
    }

    async fn open(&self) -> Result<(Ws, Welcome), Failure> {
        let mut url = self.url().to_owned();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        if !self.connection_id.is_empty() {
            url.push(sep);
            url.push_str("connection_id=");
            url.push_str(&self.connection_id);
            sep = '&';
        }
        if let Some(id) = self.cursor.resume_id() {
            url.push(sep);
            url.push_str(&format!("last_event_id={id}"));
        }
        let connect_err = |e: &dyn std::fmt::Display| Failure::new(FailKind::Connect, e.to_string());
        let mut request = url.as_str().into_client_request().map_err(|e| connect_err(&e))?;
        let bearer = HeaderValue::from_str(&format!("Bearer {}", self.cfg.token)).map_err(|e| connect_err(&e))?;
        request.headers_mut().insert(AUTHORIZATION, bearer);
        let uri = request.uri();
        let port = match uri.scheme_str() {
            Some("ws") => uri.port_u16().unwrap_or(80),
            Some(other) => return Err(connect_err(&format!("unsupported scheme {other}: (use ws://)"))),
            None => return Err(connect_err(&"url has no scheme")),
        };
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let stream = tcp_connect(host, port, self.cfg.local_addr).await?;
        let config = WebSocketConfig::default()
            .read_buffer_size(self.cfg.read_buffer_bytes)
            .write_buffer_size(0);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(|e| match e {
                tungstenite::Error::Http(resp) => connect_err(&format!("handshake refused: HTTP {}", resp.status())),
                other => connect_err(&format!("handshake failed: {other}")),
            })?;
        let mut error = None;
        loop {
            match read_frame(&mut ws, None).await {
                Ok(f) => match f["type"].as_str() {
                    Some("welcome") => {
                        let welcome: Welcome = serde_json::from_value(f)
                            .map_err(|e| Failure::new(FailKind::Protocol, format!("unreadable welcome: {e}")))?;
                        return Ok((ws, welcome));
                    }
                    Some("error") => {
                        error = Some((
                            f["code"].as_str().unwrap_or("unknown").to_owned(),
                            f["message"].as_str().unwrap_or_default().to_owned(),
                        ));
                    }
                    Some("ping") => {
                        let _ = ws.send(Message::text(r#"{"type":"pong"}"#)).await;
                    }
                    _ => {}
                },
                Err((code, reason)) => {
                    return Err(Failure {
                        kind: FailKind::Closed,
                        close_code: code,
                        reason,
                        error,
                    });
                }
            }
        }
    }
}

/// The `Refused` error for an `error` answer (or `Protocol` for anything else).
fn refusal(reply: &Value) -> ClientError {
    match reply["type"].as_str() {
        Some("error") => ClientError::Refused {
            code: reply["code"].as_str().unwrap_or("unknown").to_owned(),
            message: reply["message"].as_str().unwrap_or_default().to_owned(),
        },
        _ => ClientError::Protocol(format!("unexpected answer: {reply}")),
    }
}

/// Resolves `host` and connects, from `local` when given (only addresses of its family).
async fn tcp_connect(host: &str, port: u16, local: Option<IpAddr>) -> Result<TcpStream, Failure> {
    let fail = |e: String| Failure::new(FailKind::Connect, e);
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| fail(format!("cannot resolve {host}: {e}")))?;
    let mut last = format!("no usable address for {host}");
    for addr in addrs {
        if local.is_some_and(|l| l.is_ipv4() != addr.is_ipv4()) {
            continue;
        }
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        };
        let result = async {
            let socket = socket?;
            if let Some(ip) = local {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            socket.connect(addr).await
        }
        .await;
        match result {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    Err(fail(last))
}

/// Reads the next JSON text frame. `Err((close code, reason))` when the socket ended, or stayed
/// silent longer than `silence`. Cancel-safe.
async fn read_frame(ws: &mut Ws, silence: Option<Duration>) -> Result<Value, (Option<u16>, String)> {
    loop {
        let msg = match silence {
            Some(d) => match tokio::time::timeout(d, ws.next()).await {
                Ok(m) => m,
                Err(_) => {
                    return Err((
                        None,
                        String::from("no frame from the gateway within the heartbeat timeout"),
                    ));
                }
            },
            None => ws.next().await,
        };
        match msg {
            Some(Ok(Message::Text(text))) => {
                if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(&text) {
                    return Ok(v);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                // Send our half of the closing handshake (tungstenite queued it).
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.flush()).await;
                return Err(match frame {
                    Some(f) => (Some(u16::from(f.code)), f.reason.as_str().to_owned()),
                    None => (None, String::from("closed without a code")),
                });
            }
            Some(Ok(_)) => {} // binary, WebSocket ping/pong (tungstenite answers pings)
            Some(Err(e)) => return Err((None, format!("connection lost: {e}"))),
            None => return Err((None, String::from("connection lost"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[test]
    fn backoff_grows_and_caps() {
        let b = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        assert_eq!(ms(b.delay(0)), 500);
        assert_eq!(ms(b.delay(1)), 1000);
        assert_eq!(ms(b.delay(2)), 2000);
        assert_eq!(ms(b.delay(5)), 16000);
        assert_eq!(ms(b.delay(6)), 30000);
        assert_eq!(ms(b.delay(1000)), 30000);
        assert_eq!(ms(b.delay(u32::MAX)), 30000);
    }

    #[test]
    fn backoff_jitter_bounds() {
        let b = Backoff::default();
        assert_eq!(ms(b.delay_with(0, -1.0)), 250);
        assert_eq!(ms(b.delay_with(0, 1.0)), 750);
        assert_eq!(ms(b.delay_with(3, -1.0)), 2000);
        // never above max, even at the top of the jitter range
        assert_eq!(ms(b.delay_with(20, 1.0)), 30000);
        assert_eq!(ms(b.delay_with(20, -1.0)), 15000);
        for attempt in 0..40 {
            for _ in 0..50 {
                let d = b.delay(attempt);
                let base = (500.0 * 2f64.powi(attempt as i32)).min(30000.0);
                let (lo, hi) = (base * 0.5, (base * 1.5).min(30000.0));
                let got = d.as_secs_f64() * 1000.0;
                assert!(
                    got >= lo - 1e-6 && got <= hi + 1e-6,
                    "attempt {attempt}: {got} not in {lo}..={hi}"
                );
            }
        }
        assert!(b.at_once() < b.initial);
    }

    #[test]
    fn backoff_odd_settings_stay_in_bounds() {
        let b = Backoff {
            initial: Duration::from_secs(60),
            max: Duration::from_secs(1),
            factor: f64::NAN,
            jitter: 7.0,
        };
        for a in [0, 1, 100] {
            assert!(b.delay(a) <= Duration::from_secs(1));
        }
        let zero = Backoff {
            initial: Duration::ZERO,
            ..Backoff::default()
        };
        assert_eq!(zero.delay(10), Duration::ZERO);
        let shrinking = Backoff {
            factor: 0.5,
            jitter: 0.0,
            ..Backoff::default()
        };
        assert_eq!(ms(shrinking.delay(3)), 500);
    }

    #[test]
    fn config_defaults_and_redacts_token() {
        let c = ClientConfig::new("ws://127.0.0.1:1/ws", "secret-token");
        assert!(c.reconnect);
        assert!(c.fallback_urls.is_empty());
        assert_eq!(c.read_buffer_bytes, 4096);
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.backoff, Backoff::default());
        assert!(!format!("{c:?}").contains("secret-token"));
    }
}
