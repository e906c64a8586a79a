//! The per-shard cursor with Redis Cluster ids (`<shard>~<ms>-<seq>`), end to end through the
//! client: what it delivers, what its resume URL carries and what a re-subscribe sends. A
//! stand-in gateway on loopback scripts the frames (no Redis Cluster needed); every wait has a
//! deadline.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use wsgw_client::{Backoff, Client, ClientConfig, EventId, Incoming, ShardCursor, shard_of};

const DEADLINE: Duration = Duration::from_secs(10);

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Accepts one socket; reports the request's `last_event_id` query parameter (raw).
#[expect(clippy::result_large_err, reason = "the handshake callback's type is tungstenite's")]
async fn accept(listener: &TcpListener, urls: &mpsc::UnboundedSender<Option<String>>) -> Ws {
    let (tcp, _) = listener.accept().await.unwrap();
    let urls = urls.clone();
    tokio_tungstenite::accept_hdr_async(tcp, move |req: &Request, resp: Response| {
        let last = req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("last_event_id="))
                .map(str::to_owned)
        });
        urls.send(last).unwrap();
        Ok(resp)
    })
    .await
    .unwrap()
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

fn welcome(n: u32) -> Value {
    json!({"type": "welcome", "connection_id": format!("{n}").repeat(32), "user_id": "u",
        "node": "stand-in", "resumed": false, "recovered": true, "replayed": 0,
        "heartbeat": {"interval_ms": 30000, "timeout_ms": 60000}, "session_ttl_ms": 120000})
}

fn event(channel: &str, id: &str) -> Value {
    json!({"type": "event", "event_id": id, "channel": channel, "event": "e", "data": null, "ts": 1})
}

/// The next `subscribe` frame the client sent.
async fn next_subscribe(ws: &mut Ws) -> Value {
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Text(text) = msg {
            let f: Value = serde_json::from_str(&text).unwrap();
            if f["type"] == "subscribe" {
                return f;
            }
        }
    }
    panic!("the socket ended before a subscribe");
}

async fn next(client: &mut Client) -> Option<Incoming> {
    tokio::time::timeout(DEADLINE, client.next())
        .await
        .expect("something from next() before the deadline")
}

/// The next event's `channel id`.
async fn next_event(client: &mut Client) -> String {
    match next(client).await {
        Some(Incoming::Event {
            channel,
            event_id: Some(id),
            ..
        }) => format!("{channel} {id}"),
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test]
async fn a_cut_catch_up_in_one_shard_resumes_that_shard_only_and_resubscribes_from_it() {
    // The channels' shards: a, room:106: 3; user:42: 6; b: 9.
    for (channel, shard) in [("a", 3), ("room:106", 3), ("user:42", 6), ("b", 9)] {
        assert_eq!(shard_of(channel), shard);
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (urls_tx, mut urls) = mpsc::unbounded_channel();
    let (subs_tx, mut subs) = mpsc::unbounded_channel::<Value>();
    let server = tokio::spawn(async move {
        // First socket: events of three shards, then a catch-up of `a` cut after 1 of 3.
        let mut ws = accept(&listener, &urls_tx).await;
        send(&mut ws, welcome(1)).await;
        for (channel, id) in [("room:106", "3~900-0"), ("user:42", "6~300-0"), ("b", "9~500-0")] {
            send(&mut ws, event(channel, id)).await;
        }
        let sub = next_subscribe(&mut ws).await;
        subs_tx.send(sub.clone()).unwrap();
        send(
            &mut ws,
            json!({"type": "subscribed", "channel": "a", "request_id": sub["request_id"],
                "recovered": true, "replayed": 3}),
        )
        .await;
        send(&mut ws, event("a", "3~150-0")).await;
        send(&mut ws, event("b", "9~501-0")).await;
        while let Some(Ok(_)) = ws.next().await {}

        // Second socket: a new session (nothing restored): `a` is subscribed again.
        let mut ws = accept(&listener, &urls_tx).await;
        send(&mut ws, welcome(2)).await;
        let sub = next_subscribe(&mut ws).await;
        subs_tx.send(sub.clone()).unwrap();
        send(
            &mut ws,
            json!({"type": "subscribed", "channel": "a", "request_id": sub["request_id"],
                "recovered": true, "replayed": 2}),
        )
        .await;
        for (channel, id) in [
            ("a", "3~200-0"),
            ("user:42", "6~301-0"),
            ("room:106", "3~900-0"), // a repeat in shard 3: dropped
            ("a", "3~250-0"),
            ("room:106", "3~901-0"), // above shard 3's old position: the filter ends
        ] {
            send(&mut ws, event(channel, id)).await;
        }
        while let Some(Ok(_)) = ws.next().await {}
    });

    let mut cfg = ClientConfig::new(format!("ws://{addr}/ws"), "t");
    cfg.backoff = Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
        ..Backoff::default()
    };
    let (mut client, _) = Client::connect(cfg).await.unwrap();
    assert_eq!(urls.recv().await.unwrap(), None);
    let from: EventId = "3~100-0".parse().unwrap();
    let reply = client.subscribe("a", None, Some(from)).await.unwrap();
    assert_eq!(reply["replayed"], 3);
    assert_eq!(subs.recv().await.unwrap()["last_event_id"], "3~100-0");
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(next_event(&mut client).await);
    }
    assert_eq!(
        got,
        [
            "room:106 3~900-0",
            "user:42 6~300-0",
            "b 9~500-0",
            "a 3~150-0",
            "b 9~501-0"
        ]
    );
    // Shard 3 waits for its catch-up; the others are at their highest.
    let cursor = client.cursor().unwrap();
    assert_eq!(cursor, "3~150-0,6~300-0,9~501-0");
    assert_eq!(
        cursor.parse::<ShardCursor>().unwrap().get(6),
        Some("6~300-0".parse().unwrap())
    );
    assert_eq!(client.last_event_id(), None, "several shards: no single id");

    client.drop_connection();
    match next(&mut client).await {
        Some(Incoming::Closed {
            will_reconnect: true, ..
        }) => {}
        other => panic!("expected Closed(will_reconnect), got {other:?}"),
    }
    match next(&mut client).await {
        Some(Incoming::Reconnected(w)) => assert!(!w.resumed),
        other => panic!("expected Reconnected, got {other:?}"),
    }
    let resumed_from = tokio::time::timeout(DEADLINE, urls.recv()).await.unwrap().unwrap();
    assert_eq!(resumed_from.as_deref(), Some("3~150-0,6~300-0,9~501-0"));
    // Subscribed again from where its cut catch-up stopped, in its shard.
    let again = tokio::time::timeout(DEADLINE, subs.recv()).await.unwrap().unwrap();
    assert_eq!(
        (again["channel"].as_str(), again["last_event_id"].as_str()),
        (Some("a"), Some("3~150-0"))
    );
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next_event(&mut client).await);
    }
    assert_eq!(got, ["a 3~200-0", "user:42 6~301-0", "a 3~250-0", "room:106 3~901-0"]);
    assert_eq!(client.cursor().as_deref(), Some("3~901-0,6~301-0,9~501-0"));
    client.close().await;
    server.await.unwrap();
}
