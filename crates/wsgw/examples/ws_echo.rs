//! An echo server on wsgw's own WebSocket framing (`wsgw::ws`), for the Autobahn|Testsuite
//! (`scripts/autobahn.sh`). Every text and binary message comes back as it came; messages may
//! be up to 64 MiB. Usage: `ws_echo 127.0.0.1:9001`.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wsgw::ws::frame::{self, OP_BINARY, OP_CLOSE, OP_TEXT};
use wsgw::ws::upgrade::accept_key;
use wsgw::ws::{Incoming, ReadError, WsSocket};

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
            if let Some((tcp, leftover)) = handshake(tcp).await {
                echo(WsSocket::new(Arc::new(tcp), leftover.freeze(), MAX_MESSAGE)).await;
            }
        });
    }
}

/// Reads the upgrade request and answers 101; returns the bytes read past the request.
async fn handshake(mut tcp: TcpStream) -> Option<(TcpStream, BytesMut)> {
    let mut buf = BytesMut::with_capacity(4096);
    let end = loop {
        if tcp.read_buf(&mut buf).await.ok()? == 0 || buf.len() > 16 * 1024 {
            return None;
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let key = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim().to_owned())
    })?;
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key.as_bytes())
    );
    tcp.write_all(answer.as_bytes()).await.ok()?;
    let leftover = buf.split_off(end);
    Some((tcp, leftover))
}

async fn echo(mut ws: WsSocket) {
    loop {
        let out = match ws.recv().await {
            Ok(Incoming::Text(t)) => frame::encode(OP_TEXT, &t),
            Ok(Incoming::Binary(b)) => frame::encode(OP_BINARY, &b),
            Ok(Incoming::Ping(p)) => WsSocket::pong(&p),
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
