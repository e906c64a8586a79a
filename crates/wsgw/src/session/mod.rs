//! session/: one socket's life: welcome and replay (`open.rs`), reading client frames and
//! answering them (`commands.rs`), writing out what the hub queued (several frames per write),
//! and closing with the right code. This task alone reads the socket; writes go through the
//! hub connection's outbox (hub/connection.rs), which also writes events straight from the
//! fan-out when nothing is queued.

mod commands;
mod hooked;
mod open;
mod presence;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tracing::{Instrument, debug, info_span};
use wsgw_protocol::{CloseCode, ErrorCode, ServerFrame};

use crate::auth::{AuthError, Claims};
use crate::hub::{Connection, Flush, OutFrame, Written};
use crate::limits::{ByteLimiter, RateLimiter};
use crate::node::{Gateway, IpSlot, Slot};
use crate::ws::frame::{self as wsframe, OP_PONG, OP_TEXT};
use crate::ws::{Incoming, ReadError, WsSocket};

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
    /// The connection's handshake (its deadline, and the slots it holds until upgraded).
    pub handshake: Option<Arc<crate::handshake::Handshake>>,
    /// No token, and a connect hook to ask: what it is shown.
    pub connect_hook: Option<crate::hooks::ConnectRequest>,
    /// The permessage-deflate window negotiated at the upgrade, if any.
    pub deflate_window: Option<u8>,
}

fn error_frame(code: ErrorCode, message: impl Into<String>, request_id: Option<Value>) -> OutFrame {
    OutFrame::control(ServerFrame::error(code, message, request_id).to_json())
}

/// Sends one frame and a close, then waits briefly for the client's close so the frames are
/// not lost to a TCP reset. Used before a connection is registered.
async fn refuse(mut ws: WsSocket, gw: &Gateway, frame: Option<ServerFrame>, code: CloseCode) {
    if let Some(f) = frame {
        if let ServerFrame::Error { code, .. } = &f {
            gw.metrics.errors_sent.with_label_values(&[code.as_str()]).inc();
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            ws.write_all(&wsframe::encode(OP_TEXT, f.to_json().as_bytes())),
        )
        .await;
    }
    close_socket(&mut ws, code.code(), code.reason()).await;
    gw.metrics.connections_closed.with_label_values(&[code.reason()]).inc();
}

/// Sends a close frame (nothing else may be writing), waits briefly for the client's, then
/// ends the TCP connection from this side.
async fn close_socket(ws: &mut WsSocket, code: u16, reason: &str) {
    // A slow consumer's socket may need a while to take the close frame; give it some.
    let sent = tokio::time::timeout(Duration::from_secs(5), ws.send_close(code, reason)).await;
    if matches!(sent, Ok(Ok(()))) {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(msg) = ws.recv().await {
                if matches!(msg, Incoming::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    ws.shutdown();
}

/// Runs one upgraded socket to its end.
pub fn run(ws: WsSocket, gw: Arc<Gateway>, params: ConnectParams) -> impl Future<Output = ()> {
    // Admission (token or connect hook, refusals, slots, open with its replay and welcome) runs
    // boxed: a task is as big as its future's biggest state, so only what serving needs (the
    // socket, the session, the span, the address slot) stays in every idle socket's task. Not an
    // `async fn`: its arguments would stay in the future for its whole life. Measured with
    // `size_of_val`: the socket's future went from 4,344 to 1,560 bytes.
    let admitted = Box::pin(admit(ws, gw, params));
    async move {
        let Some((mut ws, session, span, _ip_slot)) = admitted.await else {
            return;
        };
        // By reference: an async fn keeps its arguments for its whole life, so moving the
        // socket into `serve` would hold two copies of it in every idle task.
        session.serve(&mut ws).instrument(span).await;
    }
}

/// Everything before serving: the refusals (each closes the socket), the slots, and
/// `Session::open`. None when the socket was refused or closed.
async fn admit(
    ws: WsSocket,
    gw: Arc<Gateway>,
    params: ConnectParams,
) -> Option<(WsSocket, Session, tracing::Span, IpSlot)> {
    let mut params = params;
    // Upgraded: the handshake's deadline and the slots it held end here. From now on the
    // gateway, not the client, decides how soon the welcome or the refusal goes out, and the
    // session takes slots of its own below (a refused socket holds none while it closes).
    if let Some(h) = params.handshake.take() {
        h.finish();
    }
    let auth = std::mem::replace(&mut params.auth, Err(AuthError::Missing));
    // Slots taken before asking the connect hook (so that waiting sockets are bounded too).
    let mut held = None;
    let claims = match (auth, params.connect_hook.take()) {
        (Ok(c), _) => c,
        (Err(AuthError::Missing), Some(req)) => match Box::pin(hooked::admit(&gw, &req, params.client_ip)).await {
            Ok((claims, slots)) => {
                held = Some(slots);
                claims
            }
            Err(refusal) => {
                let (frame, code) = *refusal;
                Box::pin(refuse(ws, &gw, frame, code)).await;
                return None;
            }
        },
        (Err(e), _) => {
            gw.metrics.auth_failures.with_label_values(&[e.label()]).inc();
            debug!(client_ip = %params.client_ip, reason = e.label(), "refused token");
            let frame = ServerFrame::error(e.code(), e.to_string(), None);
            Box::pin(refuse(ws, &gw, Some(frame), e.close_code())).await;
            return None;
        }
    };
    if gw.is_draining() {
        Box::pin(refuse(ws, &gw, None, CloseCode::Restart)).await;
        return None;
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
        return None;
    }
    // The IP slot is held until the socket ends.
    let (slot, ip_slot) = match held {
        Some(slots) => slots,
        None => match take_slots(&gw, params.client_ip) {
            Ok(slots) => slots,
            Err(refusal) => {
                let (frame, code) = *refusal;
                Box::pin(refuse(ws, &gw, frame, code)).await;
                return None;
            }
        },
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
    let session = Box::pin(Session::open(gw.clone(), claims, params, slot).instrument(span.clone())).await?;
    Some((ws, session, span, ip_slot))
}

/// A refusal before the socket is registered: the error frame (if any) and the close code.
type Refusal = Box<(Option<ServerFrame>, CloseCode)>;

/// A connection slot and a slot for the client's address, or the refusal when the node or the
/// address is full.
fn take_slots(gw: &Arc<Gateway>, client_ip: std::net::IpAddr) -> Result<(Slot, IpSlot), Refusal> {
    let Some(slot) = Slot::acquire(gw) else {
        gw.metrics.rejected_full.inc();
        let frame = ServerFrame::error(ErrorCode::Unavailable, "node is full, try another node later", None);
        return Err(Box::new((Some(frame), CloseCode::TryAgainLater)));
    };
    let Some(ip_slot) = IpSlot::acquire(gw, client_ip) else {
        let msg = format!("too many connections from {client_ip}");
        let frame = ServerFrame::error(ErrorCode::Forbidden, msg, None);
        return Err(Box::new((Some(frame), CloseCode::Policy)));
    };
    Ok((slot, ip_slot))
}

struct Session {
    gw: Arc<Gateway>,
    conn: Arc<Connection>,
    claims: Claims,
    limiter: RateLimiter,
    /// Client publish volume (`WSGW_PUBLISH_BYTES_PER_S`).
    publish_limiter: ByteLimiter,
    /// Topics to park at the end instead of the socket's own (a resume that failed to start).
    /// Boxed: rare, and it keeps a socket's task one 128-byte step smaller (see the test below).
    #[expect(
        clippy::box_collection,
        reason = "a second allocation in a rare case keeps every idle task smaller"
    )]
    park_topics: Option<Box<Vec<String>>>,
    _slot: Slot,
}

impl Session {
    fn closing(gw: Arc<Gateway>, conn: Arc<Connection>, claims: Claims, slot: Slot) -> Session {
        gw.metrics.connections.inc();
        let limiter = RateLimiter::new(0, 0, 0);
        Session {
            gw,
            conn,
            claims,
            limiter,
            publish_limiter: ByteLimiter::new(0),
            park_topics: None,
            _slot: slot,
        }
    }

    fn with_park(mut self, topics: Option<Vec<String>>) -> Session {
        self.park_topics = topics.map(Box::new);
        self
    }

    /// Serves the socket until it closes. Not an `async fn`: one keeps a second copy of each
    /// argument it takes by value (`self`, 240 bytes) in its future beside the first, and every
    /// idle socket's task holds this future; an `async move` block uses `self` where it was
    /// captured (see the test below).
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` would keep a second copy of `self` in every idle socket's task"
    )]
    fn serve(mut self, ws: &mut WsSocket) -> impl Future<Output = ()> {
        async move {
            // From now on events are written straight to the socket when nothing is queued.
            self.conn.attach(ws.stream().clone());
            // The client's own close code, when it closed first (1005: its close had none).
            let mut client_code = None;
            // A protocol error's close code (1002, 1007), sent once the loop ends.
            let mut broken = None;
            // The loop ends with why, and the close code to send (None: the socket is gone, the
            // client closed first or broke the protocol).
            let (reason, code): (&'static str, Option<CloseCode>) = loop {
                let (state, close) = self.flush();
                match state {
                    // Busy: a core's flusher is writing; it wakes this task if it cannot finish.
                    Flush::Done | Flush::Busy => {}
                    Flush::Blocked => {
                        // Boxed, like every rare wait below: an idle socket's task then keeps room
                        // only for the main loop's wait.
                        if Box::pin(writable_or_closing(ws, &self.conn)).await {
                            continue;
                        }
                        if let Some(code) = self.conn.close_requested() {
                            break (code.reason(), Some(code));
                        }
                        break ("write_error", None);
                    }
                    Flush::Failed => {
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
                        Err(ReadError::Gone) => break ("client_gone", None),
                        Err(ReadError::Protocol(e)) => {
                            if e.code == 1009 {
                                self.send_error(ErrorCode::TooLarge, format!("message larger than {} bytes", self.gw.config.max_message_bytes), None);
                                self.conn.close(CloseCode::TooBig);
                                continue;
                            }
                            debug!(error = %e, "protocol error");
                            broken = Some(e);
                            break ("read_error", None);
                        }
                        Ok(msg) => {
                            self.conn.touch();
                            match msg {
                                Incoming::Text(bytes) => {
                                    self.gw.metrics.frames_in.inc();
                                    self.gw.metrics.bytes_in.inc_by(bytes.len() as u64);
                                    let text = std::str::from_utf8(&bytes).unwrap_or_default();
                                    Box::pin(self.on_text(text)).await;
                                }
                                Incoming::Binary(b) => {
                                    self.gw.metrics.frames_in.inc();
                                    self.gw.metrics.bytes_in.inc_by(b.len() as u64);
                                    if self.limiter.admit() {
                                        self.send_error(ErrorCode::BadRequest, "binary frames are not supported; send JSON text", None);
                                    } else {
                                        self.rate_limited(None);
                                    }
                                }
                                Incoming::Close(f) => {
                                    client_code = Some(f.map_or(1005, |(code, _)| code));
                                    break ("client_closed", None);
                                }
                                Incoming::Ping(payload) => {
                                    self.conn.push_control(OutFrame::raw(OP_PONG, payload));
                                }
                                Incoming::Pong => {}
                            }
                        }
                    }
                }
            };
            // What the disconnect hook is told; 1006: no close frame either way.
            let close_code = code.map(CloseCode::code).or(client_code).unwrap_or(1006);
            // Unregister (and park for resume) before the client can see the close, so that a
            // client reconnecting at once finds its session parked.
            let conn = self.conn.clone();
            self.finish(reason, close_code);
            // What is left of a partly written frame goes out before the close frame.
            let whole = code.is_none()
                || matches!(
                    Box::pin(tokio::time::timeout(Duration::from_secs(5), flush_rest(&conn, ws))).await,
                    Ok(true)
                );
            conn.detach();
            match (code, client_code, broken) {
                (Some(code), _, _) if whole => Box::pin(close_socket(ws, code.code(), code.reason())).await,
                // Answers the client's close with its own code (none if it gave none).
                (None, Some(c), _) => Box::pin(answer_close(ws, c)).await,
                (None, None, Some(e)) => Box::pin(close_socket(ws, e.code, e.reason)).await,
                _ => ws.shutdown(),
            }
        }
    }

    /// Writes out what is queued and counts it.
    fn flush(&self) -> (Flush, Option<CloseCode>) {
        let mut written = Written::default();
        let r = self.conn.flush(&mut written);
        written.record(&self.gw.metrics);
        r
    }

    fn finish(mut self, reason: &'static str, close_code: u16) {
        let gw = &self.gw;
        let topics = self.park_topics.take().map_or_else(|| self.conn.topics(), |t| *t);
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
        gw.hooks.disconnected(&self.conn.id, &self.claims.sub, close_code);
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

    /// Refuses a frame over the rate limit, echoing its `request_id` (if it has one that may
    /// be echoed).
    fn rate_limited(&mut self, request_id: Option<Value>) {
        self.gw.metrics.rate_limited.inc();
        if self.limiter.strike() {
            self.send_error(
                ErrorCode::RateLimited,
                "rate limit exceeded repeatedly; closing",
                request_id,
            );
            self.conn.close(CloseCode::Policy);
        } else {
            self.send_error(ErrorCode::RateLimited, "too many frames; slow down", request_id);
        }
    }
}

/// Writes out what is still queued (the rest of a partly written frame); false if the
/// socket failed.
async fn flush_rest(conn: &Connection, ws: &WsSocket) -> bool {
    loop {
        match conn.flush(&mut Written::default()).0 {
            Flush::Done => return true,
            Flush::Failed => return false,
            // A core's flusher is in the middle of one write: let it finish.
            Flush::Busy => tokio::task::yield_now().await,
            Flush::Blocked => {
                if ws.stream().writable().await.is_err() {
                    return false;
                }
            }
        }
    }
}

/// Answers a client's close with its own code (none if it gave none: 1005), then shuts down.
async fn answer_close(ws: &WsSocket, code: u16) {
    let payload = if code == 1005 {
        bytes::Bytes::new()
    } else {
        wsframe::close_payload(code, "")
    };
    let frame = wsframe::encode(wsframe::OP_CLOSE, &payload);
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.write_all(&frame)).await;
    ws.shutdown();
}

/// Whether a blocked socket became writable; false once a close was requested and the socket
/// stayed stuck (a socket stuck on a full TCP buffer must still notice its close request).
async fn writable_or_closing(ws: &WsSocket, conn: &Connection) -> bool {
    tokio::select! {
        r = ws.stream().writable() => r.is_ok(),
        _ = stuck_after_close(conn) => false,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn returned_size<A, B, C, R>(_: impl FnOnce(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// Every idle socket's task holds this future, and tokio allocates a task in steps of 128
    /// bytes (its cell is cache-line aligned): at 1,184 bytes it took 1,280, at 1,056 it took
    /// 1,152 (0.3 KiB less RSS per idle socket, measured). Rare waits (a blocked write, the
    /// close) are boxed so that it keeps room only for the main loop's wait. `Session::serve`
    /// is an `async move` block, not an `async fn`, which kept `self` twice: 792 bytes, a task
    /// of 896 (0.29 KiB less RSS per idle socket, measured; docs/loadtest.md §1).
    #[test]
    fn an_idle_sockets_future_stays_below_the_next_128_byte_step() {
        let size = returned_size(run);
        assert!(size <= 800, "the socket's future is {size} bytes");
    }
}
