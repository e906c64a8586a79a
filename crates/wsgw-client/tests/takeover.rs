//! A client whose connection id a newer socket resumed (close 4010, e.g. a duplicated browser
//! tab) starts a fresh session instead of taking the id back; against a real in-process gateway.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use wsgw::{Config, RunningGateway};
use wsgw_client::{Backoff, Client, ClientConfig, Incoming};

const SECRET: &str = "takeover-test-secret-0123456789abcdefghij";
const API_KEY: &str = "takeover-test-api-key";
const DEADLINE: Duration = Duration::from_secs(10);

fn token(sub: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    wsgw::auth::sign_hs256(SECRET, sub, &["room:*"], &[], Some(now + 3600))
}

async fn next(client: &mut Client) -> Option<Incoming> {
    tokio::time::timeout(DEADLINE, client.next())
        .await
        .expect("something from next() before the deadline")
}

#[tokio::test]
async fn a_client_taken_over_reconnects_with_a_fresh_connection_id() {
    let gw = RunningGateway::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        node_id: "takeover-test".into(),
        jwt_secret: Some(SECRET.into()),
        api_key: Some(API_KEY.into()),
        ..Config::default()
    })
    .await
    .expect("gateway starts");
    let mut cfg = ClientConfig::new(format!("ws://{}/ws", gw.addr), token("ivy"));
    cfg.backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
        ..Backoff::default()
    };
    let (mut client, first) = Client::connect(cfg).await.unwrap();
    client.subscribe("room:1", None, None).await.expect("subscribed");

    // Another socket of the same user resumes the id (what a duplicated tab does).
    let url = format!(
        "ws://{}/ws?token={}&connection_id={}",
        gw.addr,
        token("ivy"),
        first.connection_id
    );
    let (mut other, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("second socket");
    let welcome: Value = match tokio::time::timeout(DEADLINE, other.next()).await.unwrap() {
        Some(Ok(m)) => serde_json::from_str(m.to_text().unwrap()).unwrap(),
        m => panic!("expected the welcome, got {m:?}"),
    };
    assert_eq!(welcome["connection_id"], first.connection_id.as_str());

    match next(&mut client).await {
        Some(Incoming::Closed {
            code: Some(4010),
            will_reconnect: true,
            ..
        }) => {}
        other => panic!("expected Closed 4010 with a reconnect, got {other:?}"),
    }
    let fresh = match next(&mut client).await {
        Some(Incoming::Reconnected(w)) => w,
        other => panic!("expected Reconnected, got {other:?}"),
    };
    assert!(!fresh.resumed, "a fresh session");
    assert_ne!(fresh.connection_id, first.connection_id, "not the taken id");
    assert_eq!(client.connection_id(), fresh.connection_id);

    // The topic is subscribed again on the fresh session: an event on it arrives.
    let r = wsgw::http_client::client()
        .post(format!("http://{}/api/publish", gw.addr))
        .bearer_auth(API_KEY)
        .json(&json!({"channel": "room:1", "event": "msg", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    loop {
        match next(&mut client).await {
            Some(Incoming::Event { channel, event, .. }) if channel == "room:1" => {
                assert_eq!(event, "msg");
                break;
            }
            Some(Incoming::Event { .. }) => continue,
            other => panic!("expected the room:1 event, got {other:?}"),
        }
    }
    drop(other);
}
