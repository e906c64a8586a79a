//! An echo server on wsgw's own WebSocket framing (`wsgw::ws`), for the Autobahn|Testsuite
//! (`scripts/autobahn.sh`). Every text and binary message comes back as it came; messages may
//! be up to 64 MiB. permessage-deflate is always negotiated when offered, and then every echoed
//! message goes compressed when that makes it smaller (so Autobahn's cases 12 and 13 exercise
//! `wsgw::ws::deflate`). Usage: `ws_echo 127.0.0.1:9001`.

use std::sync::Arc;

use axum::http::Method;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wsgw::ws::deflate::{self, Deflate};
use wsgw::ws::frame::Header;
use wsgw::ws::frame::{self, OP_BINARY, OP_CLOSE, OP_TEXT};
use wsgw::ws::upgrade::header_map;
use wsgw::ws::{Accept, Incoming, ReadError, WsSocket};

const MAX_MESSAGE: usize = 64 << 20;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("ws_echo listening on {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            if let Some((tcp, leftover, deflate)) = handshake(tcp).await {
                let ws = WsSocket::new(Arc::new(tcp), leftover.freeze(), MAX_MESSAGE).with_deflate(deflate.is_some());
                echo(ws, deflate).await;
            }
        });
    }
}

/// Reads the upgrade request and answers 101 with the gateway's own upgrade code
/// (`wsgw::ws::Accept`, as a node's direct path does); returns the bytes read past the request
/// and the permessage-deflate settings agreed on.
async fn handshake(mut tcp: TcpStream) -> Option<(TcpStream, BytesMut, Option<Deflate>)> {
    let mut buf = BytesMut::with_capacity(4096);
    let (end, method, headers) = loop {
        if tcp.read_buf(&mut buf).await.ok()? == 0 || buf.len() > 16 * 1024 {
            return None;
        }
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut slots);
        if let httparse::Status::Complete(end) = req.parse(&buf).ok()? {
            let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
            let headers = header_map(req.headers)?;
            break (end, method, headers);
        }
    };
    let accept = Accept::check(&method, &headers).ok()?.deflate(true);
    let deflate = accept.negotiated();
    tcp.write_all(&accept.response_bytes()).await.ok()?;
    let leftover = buf.split_off(end);
    Some((tcp, leftover, deflate))
}

/// A data frame, compressed if deflate was negotiated and that makes it smaller.
fn data_frame(opcode: u8, payload: &[u8], deflate: Option<Deflate>) -> Vec<u8> {
    if let Some(z) = deflate.and_then(|d| deflate::compress(payload, d.window_bits)) {
        let mut out = Header::new(opcode, z.len()).compressed().as_bytes().to_vec();
        out.extend_from_slice(&z);
        return out;
    }
    frame::encode(opcode, payload).to_vec()
}

async fn echo(mut ws: WsSocket, deflate: Option<Deflate>) {
    loop {
        let out = match ws.recv().await {
            Ok(Incoming::Text(t)) => data_frame(OP_TEXT, &t, deflate),
            Ok(Incoming::Binary(b)) => data_frame(OP_BINARY, &b, deflate),
            Ok(Incoming::Ping(p)) => WsSocket::pong(&p).to_vec(),
            Ok(Incoming::Pong) => continue,
            Ok(Incoming::Close(c)) => {
                let payload = c.map(|(code, _)| frame::close_payload(code, "")).unwrap_or_default();
                let _ = ws.write_all(&frame::encode(OP_CLOSE, &payload)).await;
                break;
            }
            Err(ReadError::Protocol(e)) => {
                let _ = ws.send_close(e.code, e.reason).await;
                break;
            }
            Err(ReadError::Gone) => return,
        };
        if ws.write_all(&out).await.is_err() {
            return;
        }
    }
    ws.shutdown();
}
