//! ws_open.rs: `/ws`, from a checked upgrade request to a running session. The same steps
//! serve a request that came through axum (`ws_upgrade`) and one read directly off its
//! connection (direct.rs): the origin check, the token, the subprotocol and compression
//! choices, and the session's parameters.

use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpStream;

use crate::auth::{AuthError, token_from_request};
use crate::handshake::Peer;
use crate::node::Gateway;
use crate::session::{self, ConnectParams};
use crate::ws::{Accept, WsSocket, WsUpgrade};

/// `/ws`'s query parameters.
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    /// A token, unless the request carries one in a header.
    pub token: Option<String>,
    /// Resume this identity.
    pub connection_id: Option<String>,
    /// Replay from after this id.
    pub last_event_id: Option<String>,
}

/// An accepted socket's session, ready to run once the 101 is out.
pub struct Start {
    gw: Arc<Gateway>,
    stream: Arc<TcpStream>,
    params: ConnectParams,
}

impl Start {
    /// The session, reading first the bytes the client sent after its request (`leftover`).
    pub fn run(self, leftover: Bytes) -> impl Future<Output = ()> + Send + 'static {
        let deflate = self.params.deflate_window.is_some();
        let ws = WsSocket::new(self.stream, leftover, self.gw.config.max_message_bytes).with_deflate(deflate);
        session::run(ws, self.gw, self.params)
    }
}

/// The `/ws` route (axum).
pub async fn ws_upgrade(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Query(q): Query<WsQuery>,
    headers: HeaderMap,
    upgrade: WsUpgrade,
) -> Response {
    let (accept, upgrading) = upgrade.into_parts();
    match prepare(&gw, &peer, q, &headers, accept).await {
        Ok((accept, start)) => upgrading.respond(accept, move |leftover| start.run(leftover)),
        Err(refusal) => refusal,
    }
}

/// Everything between a checked upgrade request and its 101: the answer (`Accept` with the
/// subprotocol and compression chosen) and the session to start. The only refusal here is
/// the origin's (403); a bad or missing token is refused after the upgrade, by the session,
/// with an error frame and a close code.
pub async fn prepare(
    gw: &Arc<Gateway>,
    peer: &Peer,
    q: WsQuery,
    headers: &HeaderMap,
    accept: Accept,
) -> Result<(Accept, Start), Response> {
    // Before anything else, so a page from a foreign origin never gets a socket (CSWSH).
    let origin = headers.get(header::ORIGIN).map(|v| v.to_str().unwrap_or("null"));
    if !gw.origins.allows(origin) {
        let body = json!({ "error": "forbidden", "message": "origin not allowed" });
        return Err((StatusCode::FORBIDDEN, Json(body)).into_response());
    }
    let auth = match token_from_request(headers, q.token.as_deref()) {
        Some((token, _)) => gw.auth.verify_fresh(&token).await,
        None => Err(AuthError::Missing),
    };
    let accept = accept
        .protocols(&["wsgw.v1"])
        .deflate(gw.config.compression == crate::config::Compression::On);
    let client_ip = gw.proxies.client_ip(peer.addr.ip(), headers);
    // No token at all: the connect hook, if there is one, decides (after the upgrade, so that a
    // refusal is an error frame and a close code like a token's).
    let connect_hook = (matches!(auth, Err(AuthError::Missing)) && gw.hooks.has_connect())
        .then(|| crate::hooks::ConnectRequest::new(headers, client_ip));
    let params = ConnectParams {
        auth,
        connection_id: q.connection_id.filter(|s| !s.is_empty()),
        last_event_id: q.last_event_id.filter(|s| !s.is_empty()),
        client_ip,
        handshake: Some(peer.handshake.clone()),
        connect_hook,
        deflate_window: accept.negotiated().map(|d| d.window_bits),
    };
    let start = Start {
        gw: gw.clone(),
        stream: peer.stream.clone(),
        params,
    };
    Ok((accept, start))
}
