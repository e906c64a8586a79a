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
//! **With a Redis Cluster** (docs/scaling.md, "Beyond one Redis primary") every event id names
//! its id-shard, `<shard>~<ms>-<seq>` (e.g. `6~1732240000123-5`), and ids of different shards are
//! not ordered against each other. A channel lives in one shard ([`shard_of`]), so the client
//! keeps the cursor above once per shard, each with its own catch-ups and filter: an event moves
//! only its own shard's position. A resume sends each shard's id joined with `,` in ascending
//! shard order (`3~1732240000123-5,7~1732240000200-0`, see [`Client::cursor`]); a topic the resume
//! did not restore is subscribed again from its shard's position. Single-primary ids
//! (`<ms>-<seq>`) keep the one plain cursor, exactly as before. The client learns which kind of
//! ids the deployment issues from the ids it receives; the first id of the other kind (after a
//! move to or from a cluster) starts the cursor afresh.
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

mod config;
mod connect;
mod cursor;
mod dispatch;
mod incoming;
mod presence;
mod read;
mod tls;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header::AUTHORIZATION};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::connect::refusal;
use crate::cursor::{Cursor, Subscribe};
use crate::read::{Frame, Silence, read_frame};

use wsgw_protocol::{ClientFrame, ServerFrame};
pub use wsgw_protocol::{CloseCode, Event, EventId, PresenceClient, ShardCursor, Welcome, shard_of};

type Ws = WebSocketStream<tls::Stream>;

pub use config::ClientConfig;
pub use incoming::{ClientError, History, Incoming};
pub use wsgw_protocol::Backoff;

/// A topic the application subscribed to, kept for re-subscribing after a reconnect.
#[derive(Debug, Clone)]
struct Topic {
    channel: String,
    history: Option<u32>,
    last_event_id: Option<EventId>,
}

/// What one read from the socket gave.
enum Step {
    Frame(Frame),
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
    silence: Option<Silence>,
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
    /// 4010 (taken over by a newer socket with the same connection id) reconnects at once as a
    /// fresh session, without that connection id;
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
                // Boxed: a reconnect is rare, and its future (TLS, handshake) would make every
                // `next` future several KiB.
                match Box::pin(self.attempt()).await {
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
    /// sends its last N events first. With a Redis Cluster, `last_event_id` is an id of the
    /// channel's id-shard ([`shard_of`]); one of another shard (or of no shard) starts no replay
    /// there, and the cursor takes no position from it.
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
        let frame = ClientFrame::Subscribe {
            channel: channel.to_owned(),
            request_id: Some(rid.into()),
            last_event_id,
            history: if last_event_id.is_some() { None } else { history },
        };
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
                ClientFrame::Unsubscribe {
                    channel: channel.to_owned(),
                    request_id: Some(rid.into()),
                },
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
        let frame = ClientFrame::Publish {
            channel: channel.to_owned(),
            event: event.to_owned(),
            data,
            request_id: Some(rid.into()),
            echo: Some(echo),
        };
        let reply = self.call(frame, rid).await?;
        match reply["type"].as_str() {
            Some("ack") => reply["event_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| ClientError::Protocol(format!("ack without a readable event_id: {reply}"))),
            _ => Err(refusal(&reply)),
        }
    }

    /// Reads a channel's history without subscribing to it (the `history` frame) and waits for
    /// the answer. Without `since`: the newest `limit` events; with it: the oldest `limit`
    /// events after that id (page forward with the last event's id; a short page is the end).
    /// `limit: None` takes the gateway's default (100); either way the gateway caps it at its
    /// `max_replay`. Events excluded for this connection (its own `echo: false` publishes) are
    /// left out.
    ///
    /// A read: the events come back here, not through [`next`](Self::next); the cursor
    /// ([`last_event_id`](Self::last_event_id)) and the subscriptions stay as they are.
    /// Refusals are `Refused` with the code a subscribe would get (`forbidden`, `bad_request`
    /// for a pattern or an invalid name), or `unavailable` when the broker cannot be read.
    pub async fn history(
        &mut self,
        channel: &str,
        since: Option<EventId>,
        limit: Option<u32>,
    ) -> Result<History, ClientError> {
        let rid = self.rid();
        let frame = ClientFrame::History {
            channel: channel.to_owned(),
            since,
            limit,
            request_id: rid.into(),
        };
        let reply = self.call(frame, rid).await?;
        if reply["type"] != "history" {
            return Err(refusal(&reply));
        }
        match serde_json::from_value::<ServerFrame>(reply) {
            Ok(ServerFrame::History { events, recovered, .. }) => Ok(History {
                events: events
                    .into_iter()
                    .map(|e| Event {
                        event_id: e.event_id,
                        channel: e.channel,
                        event: e.event,
                        data: e.data,
                        ts: e.ts,
                    })
                    .collect(),
                recovered,
            }),
            Ok(_) => Err(ClientError::Protocol(String::from("a history answer of another type"))),
            Err(e) => Err(ClientError::Protocol(format!("unreadable history answer: {e}"))),
        }
    }

    /// Sends a backend request; the answers come through [`next`](Self::next) as
    /// [`Incoming::Response`] (or [`Incoming::Error`], e.g. `unavailable` in single-node mode).
    ///
    /// Use non-integer request ids (e.g. strings): the client numbers its own calls with integers.
    pub async fn request(&mut self, action: &str, data: Value, request_id: Value) -> Result<(), ClientError> {
        self.send(ClientFrame::Request {
            action: action.to_owned(),
            data,
            request_id,
        })
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
            .call(
                ClientFrame::Refresh {
                    token,
                    request_id: Some(rid.into()),
                },
                rid,
            )
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
    ///
    /// With a Redis Cluster the resume sends one id per id-shard, which one `EventId` cannot
    /// hold: this is that id while the cursor names one shard only, and `None` once it names
    /// several. [`cursor`](Self::cursor) is the full cursor, in every deployment.
    pub fn last_event_id(&self) -> Option<EventId> {
        match self.cursor.resume_ids()[..] {
            [id] => Some(id),
            _ => None,
        }
    }

    /// What the next resume sends as `last_event_id`, as text: the same id as
    /// [`last_event_id`](Self::last_event_id) with single-primary ids (`1732240000123-5`); with a
    /// Redis Cluster, for each id-shard the client has a position in, that shard's id (the
    /// highest received, or lower while a catch-up in that shard is unfinished), joined with `,`
    /// in ascending shard order (`3~1732240000123-5,7~1732240000200-0`; parse it with
    /// [`ShardCursor`] to read one shard's). `None` before any event.
    pub fn cursor(&self) -> Option<String> {
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
        if code == Some(4010) {
            // Taken over: a newer socket resumed this connection id (a copy of this client's
            // state elsewhere). Resuming it again would take it back and start a tug of war:
            // start a fresh session instead (the topics are subscribed again from the cursor).
            self.connection_id.clear();
        }
        if will_reconnect {
            if was_open && matches!(code, None | Some(1001 | 1012)) {
                // The node went away (or died, or the network to it failed): come back on the
                // next address.
                self.rotate();
            }
            let delay = if was_open && matches!(code, Some(1001 | 1012 | 4010)) {
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
    async fn send(&mut self, frame: ClientFrame) -> Result<(), ClientError> {
        let Some(ws) = self.ws.as_mut() else {
            return Err(self.closed_error());
        };
        if let Err(e) = ws.send(Message::text(frame.to_json())).await {
            self.lost(None, format!("send failed: {e}"), true);
            return Err(self.closed_error());
        }
        Ok(())
    }

    /// Sends a frame and waits for the answer carrying `rid`; other frames are queued.
    async fn call(&mut self, frame: ClientFrame, rid: u64) -> Result<Value, ClientError> {
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
                Ok(Step::Frame(Frame::Event(e))) => {
                    if let Some(incoming) = self.event(e) {
                        self.queue.push_back(incoming);
                    }
                }
                Ok(Step::Frame(Frame::Other(f))) => {
                    let answers = f.get("request_id").and_then(Value::as_u64) == Some(rid)
                        && matches!(
                            f["type"].as_str(),
                            Some("subscribed" | "unsubscribed" | "ack" | "history" | "presence" | "error")
                        );
                    if answers {
                        return Ok(f);
                    }
                    if let Some(incoming) = self.dispatch(Frame::Other(f)) {
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
            match read_frame(ws, self.silence.as_mut()).await {
                Ok(frame) => {
                    if let Frame::Other(f) = &frame
                        && f["type"] == "ping"
                    {
                        if let Err(e) = ws.send(Message::text(ClientFrame::Pong {}.to_json())).await {
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
}
