//! Handshakes are bounded: a TCP connection that sends nothing, or half a request, is closed
//! after `WSGW_HANDSHAKE_TIMEOUT_MS`, and pending handshakes count toward the connection caps.

use crate::common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsgw::Config;

/// Reads until the server closes the connection; returns how long that took, or None if it
/// stayed open for `within`.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = tokio::time::Instant::now();
    let mut buf = [0u8; 1024];
    let read_to_end = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_to_end).await.ok()?;
    Some(start.elapsed())
}

#[tokio::test]
async fn a_connection_that_sends_nothing_or_half_a_request_is_closed_after_the_timeout() {
    let node = Node::start(Config {
        handshake_timeout_ms: 300,
        ..config()
    })
    .await;
    let mut silent = TcpStream::connect(node.addr()).await.unwrap();
    let mut half = TcpStream::connect(node.addr()).await.unwrap();
    half.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websock")
        .await
        .unwrap();
    let t = closed_within(&mut silent, Duration::from_secs(5)).await;
    assert!(t.is_some(), "a silent connection is closed");
    assert!(
        t.unwrap() >= Duration::from_millis(250),
        "not before the timeout: {t:?}"
    );
    assert!(
        closed_within(&mut half, Duration::from_secs(5)).await.is_some(),
        "half a request is closed"
    );

    // A welcomed socket is not closed by the handshake timer.
    let (mut c, _) = node.connect(&token("u", &[], &[])).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.send(serde_json::json!({"type": "ping", "ts": 1})).await;
    assert_eq!(c.expect("pong").await["ts"], 1);

    // A plain HTTP keep-alive connection that completed a request is not closed either.
    let mut http = TcpStream::connect(node.addr()).await.unwrap();
    let get = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    http.write_all(get).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = http.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    http.write_all(get).await.unwrap();
    let n = http.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "still served"
    );
    node.stop().await;
}

#[tokio::test]
async fn pending_handshakes_count_toward_the_node_and_address_caps() {
    let node = Node::start(Config {
        handshake_timeout_ms: 2000,
        max_connections: 2,
        ..config()
    })
    .await;
    let idle: Vec<TcpStream> = vec![
        TcpStream::connect(node.addr()).await.unwrap(),
        TcpStream::connect(node.addr()).await.unwrap(),
    ];
    wait_until("both idle connections are accepted", || async {
        node.gw.gateway.slots.load(std::sync::atomic::Ordering::Acquire) == 2
    })
    .await;
    let mut refused = Client::connect(&node.ws_url(&format!("token={}", token("a", &[], &[])))).await;
    let (code, frames) = refused.until_closed().await;
    assert_eq!(code, Some(1013), "the node is full of pending handshakes: {frames:?}");
    assert_eq!(frames[0]["code"], "unavailable");
    // Once they go, the slots are free again.
    drop(idle);
    wait_until("the idle connections' slots are released", || async {
        node.gw.gateway.slots.load(std::sync::atomic::Ordering::Acquire) == 0
    })
    .await;
    let (_ok, w) = node.connect(&token("a", &[], &[])).await;
    assert_eq!(w["user_id"], "a");
    node.stop().await;

    let node = Node::start(Config {
        handshake_timeout_ms: 2000,
        max_connections_per_ip: 1,
        ..config()
    })
    .await;
    let mut idle = TcpStream::connect(node.addr()).await.unwrap();
    wait_until("the idle connection is accepted", || async {
        node.gw.gateway.per_ip.lock().values().sum::<usize>() == 1
    })
    .await;
    let mut refused = Client::connect(&node.ws_url(&format!("token={}", token("a", &[], &[])))).await;
    let (code, _) = refused.until_closed().await;
    assert_eq!(
        code,
        Some(1008),
        "the address's one slot is held by a pending handshake"
    );
    // The pending handshake times out, and the address can connect again.
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await.is_some());
    wait_until("the address's slot is released", || async {
        node.gw.gateway.per_ip.lock().is_empty()
    })
    .await;
    let (_ok, w) = node.connect(&token("a", &[], &[])).await;
    assert_eq!(w["user_id"], "a");
    node.stop().await;
}
