//! session.rs: one socket's life: welcome and replay, reading client frames, writing what the
//! hub queued in batches (one flush per batch), and closing with the right code. The socket is
//! owned by this one task; nothing else ever writes to it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use serde_json::Value;
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span, warn};
use wsgw_protocol::{
    ClientFrame, CloseCode, ErrorCode, EventId, HeartbeatInfo, ServerFrame, Welcome, parse_client_frame,
    validate_channel,
};

use crate::auth::{AuthError, Claims};
use crate::broker::{InboundRequest, PublishRequest, Resume};
use crate::gateway::Gateway;
use crate::history::{self, Replay};
use crate::hub::{Connection, OutFrame};
use crate::time::now_us;

/// What the upgrade request carried.
#[derive(Debug)]
pub struct ConnectParams {
    /// The verified token, or why it was refused.
    pub auth: Result<Claims, AuthError>,
    /// `connection_id` query parameter: resume this identity.
    pub connection_id: Option<String>,
    /// `last_event_id` query parameter, unparsed.
    pub last_event_id: Option<String>,
    /// The client's address (from `X-Forwarded-For` when the peer is a trusted proxy).
    pub client_ip: std::net::IpAddr,
}

/// A connection slot, released when dropped (caps the node at `max_connections`).
pub struct Slot(Arc<Gateway>);

impl Slot {
    /// Takes a slot if the node has room.
    pub fn acquire(gw: &Arc<Gateway>) -> Option<Slot> {
        let max = gw.config.max_connections;
        let prev = gw.slots.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if prev >= max {
            gw.slots.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            return None;
        }
        Some(Slot(gw.clone()))
    }
}

/// A per-client-address slot, released when dropped (`max_connections_per_ip`).
pub struct IpSlot(Option<(Arc<Gateway>, std::net::IpAddr)>);

impl IpSlot {
    /// Takes a slot for `ip` if it is under the cap (always, when there is no cap).
    pub fn acquire(gw: &Arc<Gateway>, ip: std::net::IpAddr) -> Option<IpSlot> {
        let cap = gw.config.max_connections_per_ip;
        if cap == 0 {
            return Some(IpSlot(None));
        }
        let mut counts = gw.per_ip.lock();
        let n = counts.entry(ip).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(IpSlot(Some((gw.clone(), ip))))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some((gw, ip)) = self.0.take() {
            let mut counts = gw.per_ip.lock();
            if let Some(n) = counts.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&ip);
                }
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.slots.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

fn error_frame(code: ErrorCode, message: impl Into<String>, request_id: Option<Value>) -> OutFrame {
    OutFrame::control(ServerFrame::error(code, message, request_id).to_json())
}

/// Sends one frame and a close, then waits briefly for the client's close so the frames are
/// not lost to a TCP reset. Used before a connection is registered.
async fn refuse(mut ws: WebSocket, gw: &Gateway, frame: Option<ServerFrame>, code: CloseCode) {
    if let Some(f) = frame {
        if let ServerFrame::Error { code, .. } = &f {
            gw.metrics.errors_sent.with_label_values(&[code.as_str()]).inc();
        }
        let _ = ws.feed(Message::Text(f.to_json().into())).await;
    }
    close_socket(&mut ws, code, code.reason()).await;
    gw.metrics.connections_closed.with_label_values(&[code.reason()]).inc();
}

async fn close_socket(ws: &mut WebSocket, code: CloseCode, reason: &'static str) {
    let frame = CloseFrame {
        code: code.code(),
        reason: Utf8Bytes::from_static(reason),
    };
    // A slow consumer's socket may need a while to take the close frame; give it some.
    let sent = tokio::time::timeout(Duration::from_secs(5), ws.send(Message::Close(Some(frame)))).await;
    if matches!(sent, Ok(Ok(()))) {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(msg)) = ws.recv().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// Runs one upgraded socket to its end.
pub async fn run(mut ws: WebSocket, gw: Arc<Gateway>, params: ConnectParams) {
    let mut params = params;
    let auth = std::mem::replace(&mut params.auth, Err(AuthError::Missing));
    let claims = match auth {
        Ok(c) => c,
        Err(e) => {
            gw.metrics.auth_failures.with_label_values(&[e.label()]).inc();
            debug!(client_ip = %params.client_ip, reason = e.label(), "refused token");
            let frame = ServerFrame::error(e.code(), e.to_string(), None);
            Box::pin(refuse(ws, &gw, Some(frame), e.close_code())).await;
            return;
        }
    };
    if gw.is_draining() {
        Box::pin(refuse(ws, &gw, None, CloseCode::Restart)).await;
        return;
    }
    let per_user = gw.config.max_connections_per_user;
    if per_user > 0 && gw.hub.user_connection_count(&claims.sub) >= per_user {
        let msg = format!("user already has {per_user} connections");
        refuse(
            ws,
            &gw,
            Some(ServerFrame::error(ErrorCode::Forbidden, msg, None)),
            CloseCode::Policy,
        )
        .await;
        return;
    }
    let Some(slot) = Slot::acquire(&gw) else {
        gw.metrics.rejected_full.inc();
        let frame = ServerFrame::error(ErrorCode::Unavailable, "node is full, try another node later", None);
        Box::pin(refuse(ws, &gw, Some(frame), CloseCode::TryAgainLater)).await;
        return;
    };
    // Held until the socket ends.
    let Some(_ip_slot) = IpSlot::acquire(&gw, params.client_ip) else {
        let msg = format!("too many connections from {}", params.client_ip);
        Box::pin(refuse(
            ws,
            &gw,
            Some(ServerFrame::error(ErrorCode::Forbidden, msg, None)),
            CloseCode::Policy,
        ))
        .await;
        return;
    };
    let span = info_span!(
        "conn",
        connection_id = tracing::field::Empty,
        user_id = %claims.sub,
        node = %gw.node_id,
        client_ip = %params.client_ip
    );
    // Boxed so the connect-time state (replay, welcome) does not stay in every idle socket's
    // task for its whole life: a future is as big as its biggest state.
    let session = Box::pin(Session::open(gw.clone(), claims, params, slot).instrument(span.clone())).await;
    if let Some(session) = session {
        // By reference: an async fn keeps its arguments for its whole life, so moving the
        // socket into `serve` would hold two copies of it in every idle task.
        session.serve(&mut ws).instrument(span).await;
    }
}

struct Session {
    gw: Arc<Gateway>,
    conn: Arc<Connection>,
    claims: Claims,
    limiter: RateLimiter,
    /// Topics to park at the end instead of the socket's own (a resume that failed to start).
    park_topics: Option<Vec<String>>,
    _slot: Slot,
}

fn valid_connection_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Session {
    async fn open(gw: Arc<Gateway>, claims: Claims, params: ConnectParams, slot: Slot) -> Option<Session> {
        let mut notices: Vec<OutFrame> = Vec::new();
        // An unreadable last_event_id means a replay was wanted but can't be done: say so with
        // an error after the welcome and `recovered:false`, rather than refusing the socket.
        let mut unreadable_last_id = false;
        let last_event_id = match params.last_event_id.as_deref().map(str::parse::<EventId>) {
            Some(Ok(id)) => Some(id),
            Some(Err(e)) => {
                notices.push(error_frame(ErrorCode::BadRequest, e.to_string(), None));
                unreadable_last_id = true;
                None
            }
            None => None,
        };
        let mut resumed_topics = None;
        let mut id: Option<String> = None;
        if let Some(wanted) = params.connection_id {
            if !valid_connection_id(&wanted) {
                notices.push(error_frame(
                    ErrorCode::BadRequest,
                    "connection_id must be 1..=64 of [A-Za-z0-9_-]",
                    None,
                ));
            } else if let Some(live) = gw.hub.connection(&wanted).filter(|c| *c.user_id == *claims.sub) {
                // The same client again before its old socket was noticed dead: take over the
                // identity and topics; `register` closes the old socket.
                resumed_topics = Some(live.topics());
                id = Some(wanted);
            } else {
                match gw.broker.resume(&wanted, &claims.sub).await {
                    Ok(Resume::Topics(topics)) => {
                        resumed_topics = Some(topics);
                        id = Some(wanted);
                    }
                    Ok(Resume::Fresh) => id = Some(wanted),
                    Ok(Resume::OwnedByOther) => {
                        notices.push(error_frame(
                            ErrorCode::Forbidden,
                            "connection_id belongs to another user",
                            None,
                        ));
                    }
                    Err(e) => {
                        // Ownership could not be checked: never adopt the id (it may be someone
                        // else's); the client gets a fresh one and `resumed:false`.
                        warn!(error = %e, "resume lookup failed");
                    }
                }
            }
        }
        let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        tracing::Span::current().record("connection_id", id.as_str());
        let conn = Connection::new(
            Arc::from(id.as_str()),
            Arc::from(claims.sub.as_str()),
            gw.config.send_queue,
            last_event_id,
        );
        conn.set_token_exp(claims.exp);
        let conn = gw.hub.register(conn);

        let mut channels = vec![
            "broadcast".to_string(),
            format!("user:{}", claims.sub),
            format!("connection:{id}"),
        ];
        let resumed = resumed_topics.is_some();
        let mut restored = Vec::new();
        for t in resumed_topics.unwrap_or_default() {
            // A resumed topic is re-checked against the token presented now.
            if claims.permissions.can_subscribe(&t) {
                restored.push(t.clone());
                channels.push(t);
            }
        }
        for c in &channels {
            gw.hub.subscribe(&conn, c);
        }
        // Every channel, not only those new to this node: `listen` resolves once the node's
        // subscription is confirmed, which a replay's snapshot must come after.
        let all: Vec<Arc<str>> = channels.iter().map(|c| Arc::from(c.as_str())).collect();
        if let Err(e) = gw.broker.listen(&all).await {
            warn!(error = %e, "broker listen failed on connect");
            gw.metrics.broker_errors.with_label_values(&["listen"]).inc();
            let released = gw.hub.remove(&conn);
            gw.broker.unlisten(&released);
            // Not registered as open: count the close here.
            conn.close_with(
                error_frame(
                    ErrorCode::Unavailable,
                    "gateway cannot reach its broker; try again later",
                    None,
                ),
                CloseCode::TryAgainLater,
            );
            // A resume took the parked session: park its topics again, so a later resume
            // gets them (or, if that write fails too, `resumed:false`), never none.
            let session = Session::closing(gw, conn, claims, slot);
            return Some(session.with_park(resumed.then_some(restored)));
        }
        let patterns: Vec<String> = restored.iter().filter(|t| t.contains('*')).cloned().collect();
        let replay = match last_event_id {
            None if patterns.is_empty() => Ok(Replay::none(!unreadable_last_id)),
            // Restored patterns need the snapshot they are exact from.
            None => history::position(gw.broker.as_ref(), !unreadable_last_id).await,
            Some(after) => history::replay_after(gw.broker.as_ref(), &channels, after, gw.config.max_replay, &id).await,
        }
        .unwrap_or_else(|e| {
            warn!(error = %e, "history read failed on connect");
            gw.metrics.broker_errors.with_label_values(&["history"]).inc();
            conn.clear_floor();
            Replay::none(false)
        });
        let not_replayed = if last_event_id.is_some() { patterns } else { Vec::new() };
        let welcome = |replayed: u64| {
            let w = ServerFrame::Welcome(Welcome {
                connection_id: id,
                user_id: claims.sub.clone(),
                node: gw.node_id.clone(),
                resumed,
                recovered: replay.recovered,
                replayed,
                heartbeat: HeartbeatInfo {
                    interval_ms: gw.config.heartbeat_interval_ms,
                    timeout_ms: gw.config.heartbeat_timeout_ms,
                },
                session_ttl_ms: gw.config.session_ttl_ms,
                channels: restored,
                not_replayed,
            });
            OutFrame::control(w.to_json())
        };
        let n = conn.finish_replay(welcome, replay.events, replay.position, None);
        gw.metrics.replayed_events.inc_by(n as u64);
        for f in notices {
            conn.push_control(f);
        }
        gw.metrics.connections.inc();
        gw.metrics.connections_opened.inc();
        gw.broker.connected(&conn);
        let limiter = RateLimiter::new(
            gw.config.rate_limit_per_s,
            gw.config.rate_limit_burst,
            gw.config.rate_limit_strikes,
        );
        Some(Session {
            gw,
            conn,
            claims,
            limiter,
            park_topics: None,
            _slot: slot,
        })
    }

    fn closing(gw: Arc<Gateway>, conn: Arc<Connection>, claims: Claims, slot: Slot) -> Session {
        gw.metrics.connections.inc();
        let limiter = RateLimiter::new(0, 0, 0);
        Session {
            gw,
            conn,
            claims,
            limiter,
            park_topics: None,
            _slot: slot,
        }
    }

    fn with_park(mut self, topics: Option<Vec<String>>) -> Session {
        self.park_topics = topics;
        self
    }

    async fn serve(mut self, ws: &mut WebSocket) {
        let mut batch: Vec<OutFrame> = Vec::new();
        // The loop ends with why, and the close code to send (None: the socket is gone or the
        // client closed first).
        let (reason, code): (&'static str, Option<CloseCode>) = loop {
            let close = self.conn.take_batch(&mut batch);
            if !batch.is_empty() {
                let conn = self.conn.clone();
                let written = tokio::select! {
                    r = write_batch(ws, &mut batch, &self.gw) => r,
                    // A socket stuck on a full TCP buffer must still notice its close request.
                    _ = stuck_after_close(&conn) => false,
                };
                if !written {
                    if let Some(code) = self.conn.close_requested() {
                        break (code.reason(), Some(code));
                    }
                    break ("write_error", None);
                }
            }
            if let Some(code) = close {
                break (code.reason(), Some(code));
            }
            tokio::select! {
                _ = self.conn.wait() => {}
                msg = ws.recv() => match msg {
                    None => break ("client_gone", None),
                    Some(Err(e)) => {
                        if is_too_large(&e) {
                            self.send_error(ErrorCode::TooLarge, format!("message larger than {} bytes", self.gw.config.max_message_bytes), None);
                            self.conn.close(CloseCode::TooBig);
                            continue;
                        }
                        break ("read_error", None);
                    }
                    Some(Ok(msg)) => {
                        self.conn.touch();
                        match msg {
                            Message::Text(text) => {
                                self.gw.metrics.frames_in.inc();
                                self.gw.metrics.bytes_in.inc_by(text.len() as u64);
                                Box::pin(self.on_text(&text)).await;
                            }
                            Message::Binary(b) => {
                                self.gw.metrics.frames_in.inc();
                                self.gw.metrics.bytes_in.inc_by(b.len() as u64);
                                if self.limiter.admit() {
                                    self.send_error(ErrorCode::BadRequest, "binary frames are not supported; send JSON text", None);
                                } else {
                                    self.rate_limited();
                                }
                            }
                            Message::Close(_) => break ("client_closed", None),
                            Message::Ping(_) | Message::Pong(_) => {}
                        }
                    }
                }
            }
        };
        // Unregister (and park for resume) before the client can see the close, so that a
        // client reconnecting at once finds its session parked.
        self.finish(reason);
        match code {
            Some(code) => Box::pin(close_socket(ws, code, code.reason())).await,
            // Sends tungstenite's queued answer to the client's close.
            None => {
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.flush()).await;
            }
        }
    }

    fn finish(mut self, reason: &'static str) {
        let gw = &self.gw;
        let topics = self.park_topics.take().unwrap_or_else(|| self.conn.topics());
        let replaced = self.conn.is_replaced();
        let released = gw.hub.remove(&self.conn);
        gw.broker.unlisten(&released);
        if !replaced {
            // A kicked client must not get its subscriptions back by resuming.
            let park = reason != CloseCode::Kicked.reason();
            gw.broker.disconnected(&self.conn, topics, park);
        }
        gw.metrics.connections.dec();
        gw.metrics.connections_closed.with_label_values(&[reason]).inc();
        debug!(reason, "closed");
    }

    fn send(&self, frame: ServerFrame) {
        if let ServerFrame::Error { code, .. } = &frame {
            self.gw.metrics.errors_sent.with_label_values(&[code.as_str()]).inc();
        }
        self.conn.push_control(OutFrame::control(frame.to_json()));
    }

    fn send_error(&self, code: ErrorCode, message: impl Into<String>, request_id: Option<Value>) {
        self.send(ServerFrame::error(code, message, request_id));
    }

    fn rate_limited(&mut self) {
        self.gw.metrics.rate_limited.inc();
        if self.limiter.strike() {
            self.send_error(ErrorCode::RateLimited, "rate limit exceeded repeatedly; closing", None);
            self.conn.close(CloseCode::Policy);
        } else {
            self.send_error(ErrorCode::RateLimited, "too many frames; slow down", None);
        }
    }

    async fn on_text(&mut self, text: &str) {
        if !self.limiter.admit() {
            self.rate_limited();
            return;
        }
        let frame = match parse_client_frame(text) {
            Ok(f) => f,
            Err((e, request_id)) => {
                self.send_error(ErrorCode::BadRequest, e.to_string(), request_id);
                return;
            }
        };
        match frame {
            ClientFrame::Ping { ts } => self.send(ServerFrame::Pong { ts }),
            ClientFrame::Pong {} => {}
            ClientFrame::Subscribe {
                channel,
                request_id,
                last_event_id,
                history,
            } => self.subscribe(channel, request_id, last_event_id, history).await,
            ClientFrame::Unsubscribe { channel, request_id } => self.unsubscribe(channel, request_id),
            ClientFrame::Publish {
                channel,
                event,
                data,
                request_id,
                echo,
            } => self.publish(channel, event, data, request_id, echo).await,
            ClientFrame::Request {
                action,
                data,
                request_id,
            } => Box::pin(self.request(action, data, request_id)).await,
            ClientFrame::Refresh { token, request_id } => self.refresh(&token, request_id),
        }
    }

    fn is_automatic(&self, channel: &str) -> bool {
        channel == "broadcast"
            || channel == format!("user:{}", self.claims.sub)
            || channel == format!("connection:{}", self.conn.id)
    }

    async fn subscribe(
        &mut self,
        channel: String,
        request_id: Option<Value>,
        last_event_id: Option<EventId>,
        history: Option<u32>,
    ) {
        if let Err(e) = validate_channel(&channel, true) {
            return self.send_error(ErrorCode::BadRequest, e.to_string(), request_id);
        }
        if wsgw_protocol::is_reserved(&channel) {
            return self.send_error(
                ErrorCode::Forbidden,
                format!("{channel} is reserved for the gateway"),
                request_id,
            );
        }
        let subscribed = |recovered: bool, replayed: u64, request_id: Option<Value>| ServerFrame::Subscribed {
            channel: channel.clone(),
            request_id,
            recovered,
            replayed,
        };
        if self.is_automatic(&channel) || self.conn.is_subscribed(&channel) {
            return self.send(subscribed(true, 0, request_id));
        }
        if !self.claims.permissions.can_subscribe(&channel) {
            return self.send_error(
                ErrorCode::Forbidden,
                format!("token does not allow subscribing to {channel}"),
                request_id,
            );
        }
        let topics = self.conn.channels().len().saturating_sub(3);
        if topics >= self.gw.config.max_subscriptions {
            let msg = format!("subscription limit of {} reached", self.gw.config.max_subscriptions);
            return self.send_error(ErrorCode::BadRequest, msg, request_id);
        }
        self.conn.begin_replay();
        let gw = self.gw.clone();
        let first = gw.hub.subscribe(&self.conn, &channel);
        // Always through the broker, also when another socket here already listens: its
        // subscription may not be confirmed yet, and a replay's snapshot must come after it.
        let chans = [Arc::<str>::from(channel.as_str())];
        if let Err(e) = gw.broker.listen(&chans).await {
            gw.metrics.broker_errors.with_label_values(&["listen"]).inc();
            if gw.hub.unsubscribe(&self.conn, &channel) || first {
                gw.broker.unlisten(&chans);
            }
            let err = ServerFrame::error(ErrorCode::Unavailable, e.to_string(), request_id);
            self.conn
                .finish_replay(|_| OutFrame::control(err.to_json()), Vec::new(), None, None);
            return;
        }
        let is_pattern = channel.contains('*');
        let wants_replay = last_event_id.is_some() || history.is_some();
        let broker = gw.broker.as_ref();
        let replay = if is_pattern {
            // Patterns have no history of their own, but need the snapshot they are exact from.
            history::position(broker, !wants_replay).await
        } else if let Some(after) = last_event_id {
            let chans = std::slice::from_ref(&channel);
            history::replay_after(broker, chans, after, gw.config.max_replay, &self.conn.id).await
        } else if let Some(n) = history {
            history::last_n(broker, &channel, n as usize, gw.config.max_replay, &self.conn.id).await
        } else {
            Ok(Replay::none(true))
        };
        let replay = match replay {
            Ok(r) => r,
            Err(e) if is_pattern => {
                // Without its snapshot a pattern cannot be exact: refuse it.
                gw.metrics.broker_errors.with_label_values(&["history"]).inc();
                if gw.hub.unsubscribe(&self.conn, &channel) {
                    gw.broker.unlisten(&chans);
                }
                let err = ServerFrame::error(ErrorCode::Unavailable, e.to_string(), request_id);
                self.conn
                    .finish_replay(|_| OutFrame::control(err.to_json()), Vec::new(), None, None);
                return;
            }
            Err(e) => {
                warn!(error = %e, "history read failed on subscribe");
                gw.metrics.broker_errors.with_label_values(&["history"]).inc();
                Replay::none(false)
            }
        };
        let recovered = replay.recovered;
        let head = |replayed: u64| OutFrame::control(subscribed(recovered, replayed, request_id).to_json());
        let catch_up = (!is_pattern).then_some(channel.as_str());
        let n = self.conn.finish_replay(head, replay.events, replay.position, catch_up);
        gw.metrics.replayed_events.inc_by(n as u64);
        // Presence lists the topics (a resume on another node takes them from there).
        gw.broker.connected(&self.conn);
    }

    fn unsubscribe(&mut self, channel: String, request_id: Option<Value>) {
        if self.is_automatic(&channel) {
            return self.send_error(
                ErrorCode::BadRequest,
                format!("{channel} is automatic and cannot be left"),
                request_id,
            );
        }
        if self.gw.hub.unsubscribe(&self.conn, &channel) {
            self.gw.broker.unlisten(&[Arc::from(channel.as_str())]);
        }
        self.gw.broker.connected(&self.conn);
        self.send(ServerFrame::Unsubscribed {
            channel,
            request_id,
            reason: None,
        });
    }

    async fn publish(
        &mut self,
        channel: String,
        event: String,
        data: Value,
        request_id: Option<Value>,
        echo: Option<bool>,
    ) {
        if let Err(e) = validate_channel(&channel, false) {
            return self.send_error(ErrorCode::BadRequest, e.to_string(), request_id);
        }
        if wsgw_protocol::is_reserved(&channel) {
            return self.send_error(
                ErrorCode::Forbidden,
                format!("{channel} is reserved for the gateway"),
                request_id,
            );
        }
        if event.is_empty() || event.len() > 128 {
            return self.send_error(ErrorCode::BadRequest, "event must be 1..=128 bytes", request_id);
        }
        if !self.claims.permissions.can_publish(&channel) {
            return self.send_error(
                ErrorCode::Forbidden,
                format!("token does not allow publishing to {channel}"),
                request_id,
            );
        }
        let Ok(data) = serde_json::value::to_raw_value(&data) else {
            return self.send_error(ErrorCode::BadRequest, "data is not serialisable", request_id);
        };
        let exclude = if echo == Some(false) {
            vec![self.conn.id.to_string()]
        } else {
            Vec::new()
        };
        let req = PublishRequest {
            channel,
            event,
            data,
            exclude,
        };
        match self.gw.broker.publish(req).await {
            Ok(id) => {
                self.gw.metrics.publishes.with_label_values(&["client"]).inc();
                self.send(ServerFrame::Ack {
                    request_id,
                    event_id: Some(id),
                });
            }
            Err(e) => {
                self.gw.metrics.broker_errors.with_label_values(&["publish"]).inc();
                self.send_error(ErrorCode::Unavailable, e.to_string(), request_id);
            }
        }
    }

    async fn request(&mut self, action: String, data: Value, request_id: Value) {
        let rid = Some(request_id.clone());
        if action.is_empty() || action.len() > 128 || validate_channel(&action, false).is_err() {
            return self.send_error(
                ErrorCode::BadRequest,
                "action must be 1..=128 of [A-Za-z0-9_.:@=/-]",
                rid,
            );
        }
        if !self.claims.permissions.can_request(&action) {
            return self.send_error(
                ErrorCode::Forbidden,
                format!("token does not allow action {action}"),
                rid,
            );
        }
        let cfg = &self.gw.config;
        if !self
            .conn
            .add_pending(request_id.clone(), cfg.request_timeout_ms, cfg.max_pending_requests)
        {
            let msg = format!("{} requests already wait for an answer", cfg.max_pending_requests);
            return self.send_error(ErrorCode::RateLimited, msg, rid);
        }
        let p = &self.claims.permissions;
        let claims = serde_json::json!({
            "sub": self.claims.sub,
            "exp": self.claims.exp,
            "channels": p.subscribe,
            "publish": p.publish,
            "actions": p.actions,
        });
        let req = InboundRequest {
            connection_id: self.conn.id.to_string(),
            user_id: self.claims.sub.clone(),
            node: self.gw.node_id.clone(),
            request_id: request_id.to_string(),
            action,
            data: data.to_string(),
            claims: claims.to_string(),
        };
        if let Err(e) = self.gw.broker.request(req).await {
            if self.gw.broker.kind() != "memory" {
                // Single-node mode has no backends by design; that is not a broker failure.
                self.gw.metrics.broker_errors.with_label_values(&["request"]).inc();
            }
            self.conn.drop_pending(&request_id);
            self.send_error(ErrorCode::Unavailable, e.to_string(), rid);
        }
    }

    fn refresh(&mut self, token: &str, request_id: Option<Value>) {
        let claims = match self.gw.auth.verify(token) {
            Ok(c) if c.sub == self.claims.sub => c,
            Ok(_) => {
                self.gw
                    .metrics
                    .auth_failures
                    .with_label_values(&["refresh_sub_mismatch"])
                    .inc();
                let f = error_frame(ErrorCode::Unauthorized, "refresh token is for another user", request_id);
                self.conn.close_with(f, CloseCode::Unauthorized);
                return;
            }
            Err(e) => {
                self.gw.metrics.auth_failures.with_label_values(&[e.label()]).inc();
                self.conn
                    .close_with(error_frame(e.code(), e.to_string(), request_id), e.close_code());
                return;
            }
        };
        self.conn.set_token_exp(claims.exp);
        for ch in self.conn.channels() {
            if !self.is_automatic(&ch) && !claims.permissions.can_subscribe(&ch) {
                if self.gw.hub.unsubscribe(&self.conn, &ch) {
                    self.gw.broker.unlisten(std::slice::from_ref(&ch));
                }
                self.send(ServerFrame::Unsubscribed {
                    channel: ch.to_string(),
                    request_id: None,
                    reason: Some("forbidden by the refreshed token".into()),
                });
            }
        }
        self.claims = claims;
        self.send(ServerFrame::Ack {
            request_id,
            event_id: None,
        });
    }
}

/// Resolves when a pending write should be abandoned: at once for a slow consumer (its queue
/// is gone anyway), after a grace period for other closes (so a last error frame still goes out).
/// Waits on the close signal only, never on the queue's wake-ups, which belong to the main loop.
async fn stuck_after_close(conn: &Connection) {
    if conn.wait_close().await != CloseCode::SlowConsumer {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Writes a batch with one flush. Returns false when the socket failed.
async fn write_batch(ws: &mut WebSocket, batch: &mut Vec<OutFrame>, gw: &Gateway) -> bool {
    let mut bytes = 0u64;
    let n = batch.len() as u64;
    let mut stamps: Vec<u64> = Vec::new();
    for f in batch.drain(..) {
        bytes += f.text.len() as u64;
        if f.published_us > 0 {
            stamps.push(f.published_us);
        }
        if ws.feed(Message::Text(f.text)).await.is_err() {
            return false;
        }
    }
    if ws.flush().await.is_err() {
        return false;
    }
    gw.metrics.frames_out.inc_by(n);
    gw.metrics.bytes_out.inc_by(bytes);
    if !stamps.is_empty() {
        let now = now_us();
        for s in stamps {
            gw.metrics.delivery_latency.observe(now.saturating_sub(s) as f64 / 1e6);
        }
    }
    true
}

fn is_too_large(e: &axum::Error) -> bool {
    use std::error::Error as _;
    let mut source: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<tungstenite::Error>() {
            return matches!(t, tungstenite::Error::Capacity(_));
        }
        source = s.source();
    }
    false
}

/// Token bucket for inbound frames, plus a strike count for repeated abuse.
struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    strikes: u32,
    max_strikes: u32,
    first_strike: Option<Instant>,
}

impl RateLimiter {
    fn new(per_s: u32, burst: u32, max_strikes: u32) -> Self {
        let burst = f64::from(burst.max(per_s).max(1));
        Self {
            rate: f64::from(per_s),
            burst,
            tokens: burst,
            last: Instant::now(),
            strikes: 0,
            max_strikes,
            first_strike: None,
        }
    }

    /// Takes a token; false when the client is over its rate.
    fn admit(&mut self) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Records a refused frame; true when the client has been refused too often (close 1008).
    /// Strikes are counted over a 10 s window.
    fn strike(&mut self) -> bool {
        let now = Instant::now();
        match self.first_strike {
            Some(t) if now.duration_since(t) < Duration::from_secs(10) => self.strikes += 1,
            _ => {
                self.first_strike = Some(now);
                self.strikes = 1;
            }
        }
        self.max_strikes > 0 && self.strikes >= self.max_strikes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn token_bucket_refills_over_time() {
        let mut l = RateLimiter::new(10, 20, 3);
        assert_eq!((0..25).filter(|_| l.admit()).count(), 20, "burst of 20");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!((0..25).filter(|_| l.admit()).count(), 5, "10/s for half a second");
        assert!(!l.strike());
        assert!(!l.strike());
        assert!(l.strike(), "third strike within 10 s closes");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!l.strike(), "strikes expire");
    }

    #[test]
    fn connection_ids_are_checked() {
        assert!(valid_connection_id("abc-DEF_123"));
        assert!(!valid_connection_id(""));
        assert!(!valid_connection_id("a b"));
        assert!(!valid_connection_id(&"a".repeat(65)));
    }
}
