//! A `/ws` upgrade is read off the connection and answered without hyper when it is a plain
//! one (src/direct.rs); everything else reaches hyper with nothing lost. These tests speak raw
//! TCP, so they control how the bytes arrive: a head in single bytes, a head followed by a
//! frame in one write, heads the direct path leaves to hyper, plain HTTP in pieces.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsgw::Config;

fn upgrade_head(query: &str, extra_headers: &str) -> String {
    format!(
        "GET /ws?{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    )
}

/// A masked client text frame.
fn client_text(text: &str) -> Vec<u8> {
    let mask = [7u8, 1, 9, 3];
    assert!(text.len() < 126);
    let mut out = vec![0x81, 0x80 | text.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads the HTTP answer's head (through the blank line) within the deadline.
async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(DEADLINE, async {
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "closed mid-head: {head:?}");
            head.push(byte[0]);
        }
    })
    .await
    .expect("an answer within the deadline");
    String::from_utf8(head).unwrap()
}

/// Reads one unmasked server text frame and parses it as JSON.
async fn read_frame(tcp: &mut TcpStream) -> Value {
    tokio::time::timeout(DEADLINE, async {
        let mut h = [0u8; 2];
        tcp.read_exact(&mut h).await.unwrap();
        assert_eq!(h[0], 0x81, "a final text frame");
        let len = match h[1] {
            126 => usize::from(tcp.read_u16().await.unwrap()),
            127 => usize::try_from(tcp.read_u64().await.unwrap()).unwrap(),
            n => usize::from(n),
        };
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload).await.unwrap();
        serde_json::from_slice(&payload).unwrap()
    })
    .await
    .expect("a frame within the deadline")
}

#[tokio::test]
async fn a_head_in_single_bytes_and_a_head_with_a_frame_behind_it_both_open() {
    let node = Node::default().await;
    let query = format!("token={}", token("u", &[], &[]));

    let mut slow = TcpStream::connect(node.addr()).await.unwrap();
    slow.set_nodelay(true).unwrap();
    for b in upgrade_head(&query, "").bytes() {
        slow.write_all(&[b]).await.unwrap();
    }
    let head = read_head(&mut slow).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    // hyper dates its answers; the direct path does not: this one was answered directly.
    assert!(!head.to_ascii_lowercase().contains("\r\ndate:"), "{head}");
    assert_eq!(read_frame(&mut slow).await["type"], "welcome");

    let mut eager = TcpStream::connect(node.addr()).await.unwrap();
    let mut bytes = upgrade_head(&query, "").into_bytes();
    bytes.extend(client_text(r#"{"type":"ping","ts":7}"#));
    eager.write_all(&bytes).await.unwrap();
    assert!(read_head(&mut eager).await.starts_with("HTTP/1.1 101 "));
    assert_eq!(read_frame(&mut eager).await["type"], "welcome");
    let pong = read_frame(&mut eager).await;
    assert_eq!((&pong["type"], &pong["ts"]), (&"pong".into(), &7.into()), "{pong}");
    node.stop().await;
}

#[tokio::test]
async fn requests_the_direct_path_leaves_to_hyper_are_answered_as_before() {
    let node = Node::start(Config {
        allowed_origins: vec!["https://app.example".into()],
        ..config()
    })
    .await;
    let query = format!("token={}", token("u", &[], &[]));

    // A head past the direct path's 8 KiB (a long cookie): hyper upgrades it.
    let cookie = format!("Cookie: pad={}\r\n", "a".repeat(10_000));
    let mut long = TcpStream::connect(node.addr()).await.unwrap();
    long.write_all(upgrade_head(&query, &cookie).as_bytes()).await.unwrap();
    let head = read_head(&mut long).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("\r\ndate:"),
        "hyper's answer: {head}"
    );
    assert_eq!(read_frame(&mut long).await["type"], "welcome");

    // Refusals come from hyper's path, with their status and headers.
    let mut old = TcpStream::connect(node.addr()).await.unwrap();
    let v12 = upgrade_head(&query, "").replace("Version: 13", "Version: 12");
    old.write_all(v12.as_bytes()).await.unwrap();
    let head = read_head(&mut old).await;
    assert!(head.starts_with("HTTP/1.1 426 "), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("sec-websocket-version: 13"),
        "{head}"
    );
    let mut foreign = TcpStream::connect(node.addr()).await.unwrap();
    let evil = upgrade_head(&query, "Origin: https://evil.example\r\n");
    foreign.write_all(evil.as_bytes()).await.unwrap();
    let head = read_head(&mut foreign).await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    let allowed = upgrade_head(&query, "Origin: https://app.example\r\n");
    let mut ok = TcpStream::connect(node.addr()).await.unwrap();
    ok.write_all(allowed.as_bytes()).await.unwrap();
    assert!(read_head(&mut ok).await.starts_with("HTTP/1.1 101 "));

    // Plain HTTP in two pieces, then a second request on the same connection.
    let mut http = TcpStream::connect(node.addr()).await.unwrap();
    http.set_nodelay(true).unwrap();
    http.write_all(b"GET /hea").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    http.write_all(b"lth HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let head = read_head(&mut http).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .expect("a content-length")
        .parse()
        .unwrap();
    let mut body = vec![0u8; len];
    http.read_exact(&mut body).await.unwrap();
    http.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut http).await.starts_with("HTTP/1.1 200 "), "kept alive");
    node.stop().await;
}
