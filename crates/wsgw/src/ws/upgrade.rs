//! ws/upgrade.rs: the HTTP side of opening a socket (RFC 6455 §4.2): checks the upgrade
//! request, answers 101 with the accept key, the chosen subprotocol and, when enabled, the
//! permessage-deflate answer (ws/deflate.rs chooses the offer), and hands the upgraded
//! connection's bytes (whatever the HTTP layer read past the request) to the socket. The
//! checks and the answer (`Accept`) serve both ways a request arrives: through axum
//! (`WsUpgrade`) and read directly off the connection (crate::direct).

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

/// A checked upgrade request: what the 101 answers (the accept key, the subprotocol, the
/// permessage-deflate answer). Refusals are plain HTTP errors. Both ways a request arrives
/// build it: axum's (`WsUpgrade`) and the direct one (crate::direct).
pub struct Accept {
    accept: HeaderValue,
    offered: Option<HeaderValue>,
    protocol: Option<HeaderValue>,
    /// The client's `Sec-WebSocket-Extensions` values.
    extensions: Vec<HeaderValue>,
    deflate: Option<Deflate>,
}

/// A checked upgrade request that arrived through axum (an extractor): an [`Accept`] and
/// the connection hyper hands over after the 101.
pub struct WsUpgrade {
    accept: Accept,
    on_upgrade: Upgrading,
}

/// The connection hyper hands over once it has sent the 101.
pub struct Upgrading(OnUpgrade);

/// Why an upgrade request is refused: a plain HTTP answer.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    message: &'static str,
    /// Answer `Sec-WebSocket-Version: 13` (the version we speak) too.
    versions: bool,
}

fn refuse(status: StatusCode, message: &'static str) -> Refusal {
    Refusal {
        status,
        message,
        versions: false,
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut r = (self.status, self.message).into_response();
        if self.versions {
            r.headers_mut()
                .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        r
    }
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A parsed request head's headers as a `HeaderMap`; `None` if a name or value is not one
/// `http` accepts.
pub fn header_map(parsed: &[httparse::Header<'_>]) -> Option<HeaderMap> {
    let mut headers = HeaderMap::with_capacity(parsed.len());
    for h in parsed {
        let name = header::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        headers.append(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    Some(headers)
}

/// The `Sec-WebSocket-Accept` value for a client's key.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

impl Accept {
    /// Checks an upgrade request's method and headers (RFC 6455 §4.2.1).
    pub fn check(method: &Method, headers: &HeaderMap) -> Result<Self, Refusal> {
        if method != Method::GET {
            return Err(refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket upgrade must be a GET",
            ));
        }
        if !has_token(headers, header::CONNECTION, "upgrade") {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "Connection header did not include 'upgrade'",
            ));
        }
        if !has_token(headers, header::UPGRADE, "websocket") {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "Upgrade header did not include 'websocket'",
            ));
        }
        if headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
            return Err(Refusal {
                versions: true,
                ..refuse(StatusCode::UPGRADE_REQUIRED, "Sec-WebSocket-Version must be 13")
            });
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).filter(|k| !k.is_empty()) else {
            return Err(refuse(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key header missing"));
        };
        let Ok(accept) = HeaderValue::from_str(&accept_key(key.as_bytes())) else {
            return Err(refuse(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key"));
        };
        Ok(Self {
            accept,
            offered: headers.get(header::SEC_WEBSOCKET_PROTOCOL).cloned(),
            protocol: None,
            extensions: headers
                .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .cloned()
                .collect(),
            deflate: None,
        })
    }

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

    /// The 101's headers.
    fn headers(self) -> impl Iterator<Item = (header::HeaderName, HeaderValue)> {
        let fixed = [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (header::SEC_WEBSOCKET_ACCEPT, self.accept),
        ];
        let protocol = self.protocol.map(|p| (header::SEC_WEBSOCKET_PROTOCOL, p));
        let extensions = self
            .deflate
            .and_then(|d| HeaderValue::from_str(&d.response()).ok())
            .map(|v| (header::SEC_WEBSOCKET_EXTENSIONS, v));
        fixed.into_iter().chain(protocol).chain(extensions)
    }

    /// The whole 101 (status line, headers, blank line), for a connection written directly.
    pub fn response_bytes(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
        for (name, value) in self.headers() {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Refusal> {
        let accept = Accept::check(&parts.method, &parts.headers)?;
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(refuse(
                StatusCode::UPGRADE_REQUIRED,
                "this connection cannot be upgraded",
            ));
        };
        Ok(Self {
            accept,
            on_upgrade: Upgrading(on_upgrade),
        })
    }
}

impl WsUpgrade {
    /// The checked request, and what answers it.
    pub fn into_parts(self) -> (Accept, Upgrading) {
        (self.accept, self.on_upgrade)
    }
}

impl Upgrading {
    /// Answers 101 with `accept` and, once the connection is upgraded, runs `then` with the
    /// bytes the client sent after its request (usually none) on a task of its own.
    pub fn respond<F, Fut>(self, accept: Accept, then: F) -> Response
    where
        F: FnOnce(Bytes) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.0;
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            // A task of its own, sized by the socket's future alone (this one ends here).
            tokio::spawn(then(leftover(upgraded)));
        });
        let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
        r.headers_mut().extend(accept.headers());
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
