//! ws/upgrade.rs: the HTTP side of opening a socket (RFC 6455 §4.2): checks the upgrade
//! request, answers 101 with the accept key, the chosen subprotocol and, when enabled, the
//! permessage-deflate answer (ws/deflate.rs chooses the offer), and hands the upgraded
//! connection's bytes (whatever the HTTP layer read past the request) to the socket.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::io::AsyncReadExt as _;

use super::deflate::{self, Deflate};

/// The GUID every accept key is derived with (RFC 6455 §1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// At most this much of what the HTTP layer buffered past the request is kept.
const MAX_LEFTOVER: usize = 1 << 20;

/// A checked upgrade request (an axum extractor). Refusals are plain HTTP errors.
pub struct WsUpgrade {
    accept: HeaderValue,
    offered: Option<HeaderValue>,
    protocol: Option<HeaderValue>,
    /// The client's `Sec-WebSocket-Extensions` values.
    extensions: Vec<HeaderValue>,
    deflate: Option<Deflate>,
    on_upgrade: OnUpgrade,
}

fn refuse(status: StatusCode, message: &'static str) -> Response {
    (status, message).into_response()
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The `Sec-WebSocket-Accept` value for a client's key.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        if parts.method != Method::GET {
            return Err(refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket upgrade must be a GET",
            ));
        }
        if !has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "Connection header did not include 'upgrade'",
            ));
        }
        if !has_token(&parts.headers, header::UPGRADE, "websocket") {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "Upgrade header did not include 'websocket'",
            ));
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            let mut r = refuse(StatusCode::UPGRADE_REQUIRED, "Sec-WebSocket-Version must be 13");
            r.headers_mut()
                .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            return Err(r);
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY).filter(|k| !k.is_empty()) else {
            return Err(refuse(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key header missing"));
        };
        let Ok(accept) = HeaderValue::from_str(&accept_key(key.as_bytes())) else {
            return Err(refuse(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key"));
        };
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(refuse(
                StatusCode::UPGRADE_REQUIRED,
                "this connection cannot be upgraded",
            ));
        };
        Ok(Self {
            accept,
            offered: parts.headers.get(header::SEC_WEBSOCKET_PROTOCOL).cloned(),
            protocol: None,
            extensions: parts
                .headers
                .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .cloned()
                .collect(),
            deflate: None,
            on_upgrade,
        })
    }
}

impl WsUpgrade {
    /// Picks the first of the client's offered subprotocols that is in `supported`.
    pub fn protocols(mut self, supported: &[&'static str]) -> Self {
        self.protocol = self
            .offered
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').map(str::trim).find(|p| supported.contains(p)))
            .and_then(|p| HeaderValue::from_str(p).ok());
        self
    }

    /// Accepts the client's first acceptable permessage-deflate offer, if `enabled`.
    pub fn deflate(mut self, enabled: bool) -> Self {
        self.deflate = if enabled {
            deflate::negotiate(self.extensions.iter().filter_map(|v| v.to_str().ok()))
        } else {
            None
        };
        self
    }

    /// The permessage-deflate settings agreed on, if any.
    pub fn negotiated(&self) -> Option<Deflate> {
        self.deflate
    }

    /// Answers 101 and, once the connection is upgraded, runs `then` with the bytes the
    /// client sent after its request (usually none) on a task of its own.
    pub fn on_upgrade<F, Fut>(self, then: F) -> Response
    where
        F: FnOnce(Bytes) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            // A task of its own, sized by the socket's future alone (this one ends here).
            tokio::spawn(then(leftover(upgraded)));
        });
        let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let h = r.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::SEC_WEBSOCKET_ACCEPT, self.accept);
        if let Some(p) = self.protocol {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
        }
        if let Some(v) = self.deflate.and_then(|d| HeaderValue::from_str(&d.response()).ok()) {
            h.insert(header::SEC_WEBSOCKET_EXTENSIONS, v);
        }
        r
    }
}

/// What the HTTP layer read past the request, taken without waiting. The socket itself is
/// read directly afterwards (the listener's stream is shared, see handshake.rs).
fn leftover(upgraded: hyper::upgrade::Upgraded) -> Bytes {
    let mut io = TokioIo::new(upgraded);
    let mut out = BytesMut::new();
    let mut buf = [0u8; 4096];
    while out.len() < MAX_LEFTOVER {
        match io.read(&mut buf).now_or_never() {
            Some(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_accept_key_of_the_rfc_example() {
        assert_eq!(
            super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
