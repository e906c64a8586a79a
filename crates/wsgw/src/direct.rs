//! direct.rs: the upgrade path without hyper. A new connection's first bytes are read here,
//! within its handshake deadline (handshake.rs). A complete `GET /ws` WebSocket upgrade that
//! passes every check is answered 101 here and its session started: no hyper connection
//! state, no routing, no task waiting for the upgrade. Anything else goes to hyper with the
//! bytes read so far put back, and is answered exactly as it would be without this path:
//! another path or method, plain HTTP, a refusal (bad upgrade headers, a foreign origin, a
//! malformed query), a request with a body, a head over `HEAD_MAX` bytes or with more than
//! `MAX_HEADERS` headers, or anything httparse does not parse.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use axum::http::{HeaderMap, Method};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::handshake::GatedIo;
use crate::node::Gateway;
use crate::ws::Accept;
use crate::ws::upgrade::header_map;
use crate::ws_open::{WsQuery, prepare};

/// A head longer than this goes to hyper (which allows far longer ones).
pub const HEAD_MAX: usize = 8 * 1024;
/// A head with more headers than this goes to hyper.
pub const MAX_HEADERS: usize = 64;

/// Serves `io`'s upgrade if it is a plain `/ws` one; otherwise gives `io` back, with what was
/// read put back in front of it, for hyper. `None`: upgraded, or the connection ended (or
/// missed its handshake deadline) before a complete head.
pub async fn serve(mut io: GatedIo, addr: SocketAddr, gw: &Arc<Gateway>) -> Option<GatedIo> {
    let mut buf = BytesMut::with_capacity(1024);
    let (len, headers, query) = loop {
        if buf.capacity() == buf.len() {
            buf.reserve(1024);
        }
        match io.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        match parse(&buf) {
            Head::Partial if buf.len() < HEAD_MAX => continue,
            Head::Ws { len, headers, query } => break (len, headers, query),
            Head::Partial | Head::Other => return Some(io.put_back(buf.freeze())),
        }
    };
    let Ok(accept) = Accept::check(&Method::GET, &headers) else {
        return Some(io.put_back(buf.freeze()));
    };
    let peer = io.peer(addr);
    let Ok((accept, start)) = prepare(gw, &peer, query, &headers, accept).await else {
        return Some(io.put_back(buf.freeze()));
    };
    let leftover = buf.split_off(len).freeze();
    drop((buf, headers));
    io.write_all(&accept.response_bytes()).await.ok()?;
    // A task of its own, sized by the socket's future alone (this one ends here).
    tokio::spawn(start.run(leftover));
    None
}

/// What a connection's first bytes are.
#[derive(Debug)]
enum Head {
    /// Not a complete head yet.
    Partial,
    /// A complete `GET /ws` HTTP/1.1 head without a body: its length, headers and query.
    Ws {
        len: usize,
        headers: HeaderMap,
        query: WsQuery,
    },
    /// Anything else: hyper's.
    Other,
}

fn parse(buf: &[u8]) -> Head {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Other,
    };
    ws_head(&req)
        .map(|(headers, query)| Head::Ws { len, headers, query })
        .unwrap_or(Head::Other)
}

fn ws_head(req: &httparse::Request<'_, '_>) -> Option<(HeaderMap, WsQuery)> {
    if req.method != Some("GET") || req.version != Some(1) {
        return None;
    }
    let (path, query) = req.path?.split_once('?').unwrap_or((req.path?, ""));
    if path != "/ws" {
        return None;
    }
    let headers = header_map(req.headers)?;
    // A body, and how hyper frames or refuses it, stays hyper's.
    if headers.contains_key(CONTENT_LENGTH) || headers.contains_key(TRANSFER_ENCODING) {
        return None;
    }
    // As axum's `Query` reads it; a query it refuses is refused by hyper's path.
    let query = serde_urlencoded::from_str(query).ok()?;
    Some((headers, query))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /ws?token=abc&last_event_id=1-2 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn is_ws(head: &[u8]) -> bool {
        matches!(parse(head), Head::Ws { .. })
    }

    #[test]
    fn a_ws_upgrade_head_is_taken_with_its_length_headers_and_query() {
        let mut bytes = UPGRADE.as_bytes().to_vec();
        bytes.extend_from_slice(b"\x81\x80");
        let Head::Ws { len, headers, query } = parse(&bytes) else {
            panic!("not taken: {:?}", parse(&bytes));
        };
        assert_eq!(len, UPGRADE.len(), "the frame bytes after the head are not part of it");
        assert_eq!(headers["sec-websocket-version"], "13");
        assert_eq!(query.token.as_deref(), Some("abc"));
        assert_eq!(query.last_event_id.as_deref(), Some("1-2"));
    }

    #[test]
    fn every_prefix_of_a_head_is_partial() {
        for n in 0..UPGRADE.len() {
            assert!(matches!(parse(&UPGRADE.as_bytes()[..n]), Head::Partial), "{n} bytes");
        }
    }

    #[test]
    fn other_requests_are_left_to_hyper() {
        let cases = [
            UPGRADE.replacen("GET /ws?", "GET /wsx?", 1),
            UPGRADE.replacen("GET /ws?", "GET /ws/?", 1),
            UPGRADE.replacen("GET ", "POST ", 1),
            UPGRADE.replacen("HTTP/1.1", "HTTP/1.0", 1),
            UPGRADE.replacen("Host: x\r\n", "Host: x\r\nContent-Length: 0\r\n", 1),
            UPGRADE.replacen("Host: x\r\n", "Host: x\r\nTransfer-Encoding: chunked\r\n", 1),
            // axum's Query refuses a repeated field; hyper's path answers that.
            UPGRADE.replacen("token=abc", "token=abc&token=def", 1),
            "GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
            "\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03".to_owned(),
        ];
        for case in cases {
            assert!(matches!(parse(case.as_bytes()), Head::Other), "taken: {case:?}");
        }
        let many: String = (0..MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
        let many = UPGRADE.replacen("Host: x\r\n", &format!("Host: x\r\n{many}"), 1);
        assert!(matches!(parse(many.as_bytes()), Head::Other), "too many headers");
        assert!(is_ws(
            UPGRADE.replacen("?token=abc&last_event_id=1-2", "", 1).as_bytes()
        ));
    }
}
