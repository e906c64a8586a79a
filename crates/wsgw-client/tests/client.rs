//! User stories against a real in-process gateway. Every wait has a deadline; nothing sleeps.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use wsgw::{Config, RunningGateway};
use wsgw_client::{Backoff, Client, ClientConfig, ClientError, EventId, Incoming};

const SECRET: &str = "client-test-secret-0123456789abcdefghij";
const API_KEY: &str = "client-test-api-key";
const DEADLINE: Duration = Duration::from_secs(10);

fn config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        node_id: "client-test".into(),
        jwt_secret: Some(SECRET.into()),
        api_key: Some(API_KEY.into()),
        drain_ms: 200,
        ..Config::default()
    }
}

fn token(sub: &str, channels: &[&str], publish: &[&str]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    wsgw::auth::sign_hs256(SECRET, sub, channels, publish, Some(now + 3600))
}

struct Gw {
    gw: RunningGateway,
    http: reqwest::Client,
}

impl Gw {
    async fn start() -> Gw {
        Gw::start_with(config()).await
    }

    async fn start_with(config: Config) -> Gw {
        Gw {
            gw: RunningGateway::start(config).await.expect("gateway starts"),
            http: wsgw::http_client::client(),
        }
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.gw.addr)
    }

    /// A client config with a short backoff, so reconnects in tests are quick.
    fn client_config(&self, token: String) -> ClientConfig {
        let mut c = ClientConfig::new(self.ws_url(), token);
        c.backoff = Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
            ..Backoff::default()
        };
        c
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("http://{}{}", self.gw.addr, path))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .expect("http request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Publishes through the HTTP API; returns the event id.
    async fn publish(&self, channel: &str, event: &str, data: Value) -> EventId {
        let (status, body) = self
            .post(
                "/api/publish",
                json!({"channel": channel, "event": event, "data": data}),
            )
            .await;
        assert_eq!(status, 200, "publish failed: {body}");
        body["event_id"].as_str().unwrap().parse().unwrap()
    }
}

/// `client.next()` within the deadline.
async fn next(client: &mut Client) -> Option<Incoming> {
    tokio::time::timeout(DEADLINE, client.next())
        .await
        .expect("something from next() before the deadline")
}

/// The next event (anything else fails the test).
async fn next_event(client: &mut Client) -> (String, String, Option<EventId>, Value) {
    match next(client).await {
        Some(Incoming::Event {
            channel,
            event,
            event_id,
            data,
            ..
        }) => (channel, event, event_id, data),
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test]
async fn connects_and_gets_a_welcome() {
    let gw = Gw::start().await;
    let (client, welcome) = Client::connect(gw.client_config(token("alice", &[], &[])))
        .await
        .expect("connects");
    assert_eq!(welcome.user_id, "alice");
    assert_eq!(welcome.node, "client-test");
    assert!(!welcome.resumed);
    assert_eq!(welcome.connection_id.len(), 32);
    assert_eq!(client.connection_id(), welcome.connection_id);
    assert_eq!(client.node(), "client-test");
    assert!(client.is_connected());
    assert_eq!(client.last_event_id(), None);
    client.close().await;
}

#[tokio::test]
async fn receives_an_event_published_through_the_http_api() {
    let gw = Gw::start().await;
    let (mut client, _) = Client::connect(gw.client_config(token("bob", &[], &[]))).await.unwrap();
    let id = gw.publish("user:bob", "hello", json!({"n": 1})).await;
    let (channel, event, event_id, data) = next_event(&mut client).await;
    assert_eq!((channel.as_str(), event.as_str()), ("user:bob", "hello"));
    assert_eq!(event_id, Some(id));
    assert_eq!(data, json!({"n": 1}));
    assert_eq!(client.last_event_id(), Some(id));
    client.close().await;
}

#[tokio::test]
async fn subscribe_and_publish_round_trip() {
    let gw = Gw::start().await;
    let (mut client, _) = Client::connect(gw.client_config(token("carol", &["project:*"], &["project:*"])))
        .await
        .unwrap();
    let subscribed = client.subscribe("project:7", None, None).await.expect("subscribed");
    assert_eq!(subscribed["channel"], "project:7");
    assert_eq!(subscribed["replayed"], 0);
    let id = client
        .publish("project:7", "msg", json!({"text": "hi"}), true)
        .await
        .expect("ack");
    let (channel, event, event_id, data) = next_event(&mut client).await;
    assert_eq!((channel.as_str(), event.as_str()), ("project:7", "msg"));
    assert_eq!(event_id, Some(id));
    assert_eq!(data, json!({"text": "hi"}));
    assert_eq!(client.topics().collect::<Vec<_>>(), ["project:7"]);

    // echo: false gets the ack only; an event published after it shows nothing came in between.
    let quiet = client.publish("project:7", "quiet", Value::Null, false).await.unwrap();
    let loud = gw.publish("project:7", "loud", Value::Null).await;
    assert!(loud > quiet);
    let (_, event, event_id, _) = next_event(&mut client).await;
    assert_eq!((event.as_str(), event_id), ("loud", Some(loud)));

    // Refusals are errors, and the refused topic is not kept.
    match client.subscribe("secret:1", None, None).await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, "forbidden"),
        other => panic!("expected forbidden, got {other:?}"),
    }
    match client.publish("other:1", "x", Value::Null, true).await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, "forbidden"),
        other => panic!("expected forbidden, got {other:?}"),
    }
    assert_eq!(client.topics().collect::<Vec<_>>(), ["project:7"]);

    // History on subscribe: the last 3 events of the channel, oldest first, without the one
    // this socket published with echo: false.
    client.unsubscribe("project:7").await.expect("unsubscribed");
    let s = client.subscribe("project:7", Some(3), None).await.unwrap();
    assert_eq!(s["replayed"], 2);
    let (_, e1, id1, _) = next_event(&mut client).await;
    let (_, e2, id2, _) = next_event(&mut client).await;
    assert_eq!(
        (e1.as_str(), id1, e2.as_str(), id2),
        ("msg", Some(id), "loud", Some(loud))
    );
    client.close().await;
}

#[tokio::test]
async fn requests_are_answered_through_next() {
    // Single-node mode has no backend: the answer is an `unavailable` error carrying the id.
    let gw = Gw::start().await;
    let (mut client, _) = Client::connect(gw.client_config(token("erin", &[], &[])))
        .await
        .unwrap();
    client
        .request("search", json!({"q": "rust"}), json!("q1"))
        .await
        .unwrap();
    match next(&mut client).await {
        Some(Incoming::Error { code, request_id, .. }) => {
            assert_eq!(code, "unavailable");
            assert_eq!(request_id, Some(json!("q1")));
        }
        other => panic!("expected an error, got {other:?}"),
    }
    client.close().await;
}

#[tokio::test]
async fn resumes_after_a_network_drop_without_losing_or_repeating_events() {
    let gw = Gw::start().await;
    let (mut client, first) = Client::connect(gw.client_config(token("dave", &["room:*"], &["room:*"])))
        .await
        .unwrap();
    client.subscribe("room:1", None, None).await.unwrap();
    let before = client.publish("room:1", "before", Value::Null, true).await.unwrap();
    let (_, _, id, _) = next_event(&mut client).await;
    assert_eq!(id, Some(before));
    assert_eq!(client.last_event_id(), Some(before));

    client.drop_connection();
    assert!(!client.is_connected());
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(gw.publish("user:dave", "missed", json!({"n": n})).await);
    }

    match next(&mut client).await {
        Some(Incoming::Closed {
            code: None,
            will_reconnect: true,
            ..
        }) => {}
        other => panic!("expected Closed(will_reconnect), got {other:?}"),
    }
    match next(&mut client).await {
        Some(Incoming::Reconnected(w)) => {
            assert!(w.resumed, "resumed: {w:?}");
            assert_eq!(w.replayed, 3);
            assert_eq!(w.connection_id, first.connection_id);
            assert_eq!(w.channels, ["room:1"]);
        }
        other => panic!("expected Reconnected, got {other:?}"),
    }
    for (n, want) in ids.iter().enumerate() {
        let (channel, event, id, data) = next_event(&mut client).await;
        assert_eq!((channel.as_str(), event.as_str()), ("user:dave", "missed"));
        assert_eq!(id, Some(*want));
        assert_eq!(data, json!({"n": n}));
    }
    // The topic subscribed before the drop still delivers, and nothing else came in between
    // (no duplicates of the replayed events).
    let after = gw.publish("room:1", "after", Value::Null).await;
    let (channel, event, id, _) = next_event(&mut client).await;
    assert_eq!((channel.as_str(), event.as_str(), id), ("room:1", "after", Some(after)));
    assert_eq!(client.last_event_id(), Some(after));
    client.close().await;
}

/// A `subscribe` catch-up of 40 events older than the cursor, cut by a network drop after 10
/// of them; events are published while the client is away. After the automatic reconnect the
/// application has every event of the channel once, in order, and nothing twice elsewhere.
/// `session_ttl_ms: 0` turns resume off, so the topic is subscribed again instead of restored.
async fn a_catch_up_cut_by_a_drop(session_ttl_ms: u64) {
    let gw = Gw::start_with(Config {
        session_ttl_ms,
        ..config()
    })
    .await;
    let resumes = session_ttl_ms > 0;
    let (mut client, first) = Client::connect(gw.client_config(token("lena", &["room:*"], &[])))
        .await
        .unwrap();
    let start = gw.publish("room:big", "old", json!(0)).await;
    let mut room = Vec::new();
    for n in 1..=40 {
        room.push(gw.publish("room:big", "old", json!(n)).await);
    }
    // The cursor moves past all of them on another channel.
    let u1 = gw.publish("user:lena", "mine", json!(1)).await;
    assert_eq!(next_event(&mut client).await.2, Some(u1));
    let subscribed = client.subscribe("room:big", None, Some(start)).await.unwrap();
    assert_eq!(subscribed["replayed"], 40, "{subscribed}");
    let mut seen_room = Vec::new();
    let mut seen_user = vec![u1];
    for _ in 0..10 {
        let (channel, _, id, _) = next_event(&mut client).await;
        assert_eq!(channel, "room:big");
        seen_room.push(id.unwrap());
    }
    assert_eq!(seen_room, room[..10]);
    // A resume now would start from the catch-up's position, not from u1.
    assert_eq!(client.last_event_id(), Some(room[9]));

    // The other 30 catch-up events are in flight (or in the socket's buffer): all lost.
    client.drop_connection();
    let u2 = gw.publish("user:lena", "mine", json!(2)).await;
    let live = gw.publish("room:big", "new", json!(41)).await;
    room.push(live);
    match next(&mut client).await {
        Some(Incoming::Closed {
            code: None,
            will_reconnect: true,
            ..
        }) => {}
        other => panic!("expected Closed(will_reconnect), got {other:?}"),
    }
    match next(&mut client).await {
        Some(Incoming::Reconnected(w)) => {
            assert_eq!(w.resumed, resumes, "{w:?}");
            assert!(w.recovered, "{w:?}");
            if resumes {
                assert_eq!(w.connection_id, first.connection_id);
                assert_eq!(w.channels, ["room:big"]);
            }
        }
        other => panic!("expected Reconnected, got {other:?}"),
    }
    // Once both new events are in, a marker: anything still pending (a late repeat) comes
    // before it.
    let mut marker = None;
    while marker.is_none_or(|m| seen_user.last() != Some(&m)) {
        let (channel, _, id, _) = next_event(&mut client).await;
        match channel.as_str() {
            "room:big" => seen_room.push(id.unwrap()),
            "user:lena" => seen_user.push(id.unwrap()),
            other => panic!("an event on {other}"),
        }
        if marker.is_none() && seen_room.contains(&live) && seen_user.contains(&u2) {
            marker = Some(gw.publish("user:lena", "marker", Value::Null).await);
        }
    }
    let marker = marker.unwrap();
    assert_eq!(seen_room, room, "room:big: every event once, in order");
    assert_eq!(seen_user, [u1, u2, marker], "user:lena: no repeats");
    assert_eq!(client.last_event_id(), Some(marker));
    client.close().await;
}

#[tokio::test]
async fn a_catch_up_cut_by_a_drop_is_completed_by_the_resume_without_repeats() {
    a_catch_up_cut_by_a_drop(120_000).await;
}

#[tokio::test]
async fn a_catch_up_cut_by_a_drop_is_completed_by_the_resubscribe_without_repeats() {
    a_catch_up_cut_by_a_drop(0).await;
}

type StandInWs = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A stand-in gateway on a free port: it accepts one socket, sends a welcome with `heartbeat`
/// (interval, timeout in ms), then runs `then` on it. Returns its URL and its task.
async fn stand_in<F, Fut>(heartbeat: (u64, u64), then: F) -> (String, tokio::task::JoinHandle<()>)
where
    F: FnOnce(StandInWs) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let welcome = json!({"type": "welcome", "connection_id": "0".repeat(32), "user_id": "u",
            "node": "stand-in", "resumed": false, "recovered": true, "replayed": 0,
            "heartbeat": {"interval_ms": heartbeat.0, "timeout_ms": heartbeat.1}, "session_ttl_ms": 120000});
        ws.send(Message::text(welcome.to_string())).await.unwrap();
        then(ws).await;
    });
    (format!("ws://{addr}/ws"), server)
}

#[tokio::test]
async fn a_gap_frame_is_surfaced() {
    // Only an outage repair in cluster mode sends `gap`: a stand-in gateway sends one.
    let (url, server) = stand_in((30000, 60000), |mut ws| async move {
        for frame in [
            json!({"type": "gap", "channels": ["room:1", "room:*"], "recovered": false}),
            json!({"type": "event", "event_id": "5-0", "channel": "room:1", "event": "e", "data": 1, "ts": 5}),
        ] {
            ws.send(Message::text(frame.to_string())).await.unwrap();
        }
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    let (mut client, _) = Client::connect(ClientConfig::new(url, "t")).await.unwrap();
    match next(&mut client).await {
        Some(Incoming::Gap { channels, recovered }) => {
            assert_eq!(channels, ["room:1", "room:*"]);
            assert!(!recovered);
        }
        other => panic!("expected Gap, got {other:?}"),
    }
    // The socket stays open and events keep coming.
    assert_eq!(next_event(&mut client).await.2, Some("5-0".parse().unwrap()));
    client.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn frames_keep_the_socket_alive_and_silence_past_the_heartbeat_timeout_ends_it() {
    // A stand-in gateway with a 1 s silence limit (interval + timeout) sends an event every
    // 250 ms for 3 s, then stays silent with the socket open.
    let (url, server) = stand_in((500, 500), |mut ws| async move {
        let mut pace = tokio::time::interval(Duration::from_millis(250));
        for seq in 1..=12 {
            pace.tick().await;
            let event = json!({"type": "event", "event_id": format!("{seq}-0"), "channel": "room:1",
                "event": "e", "data": seq, "ts": 5});
            ws.send(Message::text(event.to_string())).await.unwrap();
        }
        // Silent from here; the socket stays open until the client leaves.
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    let mut config = ClientConfig::new(url, "t");
    config.reconnect = false;
    let (mut client, _) = Client::connect(config).await.unwrap();
    for seq in 1..=12u64 {
        let (_, _, id, data) = next_event(&mut client).await;
        assert_eq!((id, data), (Some(format!("{seq}-0").parse().unwrap()), json!(seq)));
    }
    let silent_since = tokio::time::Instant::now();
    match next(&mut client).await {
        Some(Incoming::Closed {
            code,
            reason,
            will_reconnect,
        }) => {
            assert_eq!((code, will_reconnect), (None, false));
            assert!(reason.contains("heartbeat timeout"), "{reason}");
        }
        other => panic!("expected Closed after the silence, got {other:?}"),
    }
    assert!(
        silent_since.elapsed() >= Duration::from_millis(700),
        "closed before the silence limit"
    );
    assert!(next(&mut client).await.is_none());
    server.await.unwrap();
}

#[tokio::test]
async fn a_topic_not_restored_is_subscribed_again_with_last_event_id() {
    // A fresh gateway at the same address has no parked session: the client re-subscribes.
    let gw = Gw::start().await;
    let addr = gw.gw.addr;
    let mut cfg = gw.client_config(token("frank", &["room:*"], &[]));
    cfg.backoff.initial = Duration::from_millis(20);
    let (mut client, _) = Client::connect(cfg).await.unwrap();
    client.subscribe("room:2", None, None).await.unwrap();
    let first = gw.publish("room:2", "one", Value::Null).await;
    assert_eq!(next_event(&mut client).await.2, Some(first));

    let stopping = tokio::spawn(gw.gw.stop());
    match next(&mut client).await {
        Some(Incoming::Closed { code: Some(1012), .. }) => {}
        other => panic!("expected Closed 1012, got {other:?}"),
    }
    stopping.await.unwrap().expect("clean stop");
    let gw2 = Gw {
        gw: RunningGateway::start(Config {
            listen: addr,
            ..config()
        })
        .await
        .expect("restart on the same port"),
        http: wsgw::http_client::client(),
    };
    // Attempts may fail (Closed) until the new gateway listens; then it reconnects.
    loop {
        match next(&mut client).await {
            Some(Incoming::Closed {
                will_reconnect: true, ..
            }) => continue,
            Some(Incoming::Reconnected(w)) => {
                assert!(!w.resumed);
                assert!(w.channels.is_empty());
                break;
            }
            other => panic!("expected Reconnected, got {other:?}"),
        }
    }
    // The re-subscribe is in flight; a publish after its answer reaches the client. Publish
    // until one arrives (the subscription becomes live at an unknown moment; no sleeps).
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let id = gw2.publish("room:2", "two", Value::Null).await;
        if let Ok(Some(Incoming::Event { event_id, channel, .. })) =
            tokio::time::timeout(Duration::from_millis(200), client.next()).await
        {
            assert_eq!(channel, "room:2");
            assert!(event_id.unwrap() <= id);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the topic never came back");
    }
    client.close().await;
}

#[tokio::test]
async fn a_bad_token_is_refused() {
    let gw = Gw::start().await;
    let bad = wsgw::auth::sign_hs256("wrong-secret", "mallory", &[], &[], Some(u64::MAX / 2));
    match Client::connect(gw.client_config(bad)).await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, "unauthorized"),
        Err(ClientError::Closed { code: Some(4001), .. }) => {}
        other => panic!("expected a refusal, got {:?}", other.map(|(_, w)| w)),
    }
}

#[tokio::test]
async fn a_kick_is_final() {
    let gw = Gw::start().await;
    let (mut client, _) = Client::connect(gw.client_config(token("gina", &[], &[])))
        .await
        .unwrap();
    let (status, body) = gw.post("/api/users/gina/disconnect", json!({})).await;
    assert_eq!(status, 200, "{body}");
    match next(&mut client).await {
        Some(Incoming::Closed {
            code: Some(4004),
            will_reconnect: false,
            ..
        }) => {}
        other => panic!("expected Closed 4004, got {other:?}"),
    }
    assert!(next(&mut client).await.is_none());
    assert!(next(&mut client).await.is_none());
    assert!(matches!(
        client.publish("x", "y", Value::Null, true).await,
        Err(ClientError::Closed { code: Some(4004), .. })
    ));
}

#[tokio::test]
async fn a_drain_reconnects_and_keeps_trying_while_the_gateway_is_gone() {
    let gw = Gw::start().await;
    let (mut client, _) = Client::connect(gw.client_config(token("hank", &[], &[])))
        .await
        .unwrap();
    let stopping = tokio::spawn(gw.gw.stop());
    match next(&mut client).await {
        Some(Incoming::Closed {
            code: Some(1012),
            will_reconnect: true,
            ..
        }) => {}
        other => panic!("expected Closed 1012, got {other:?}"),
    }
    stopping.await.unwrap().expect("clean stop");
    // The gateway is gone: the attempt fails and the client says it will try again.
    match next(&mut client).await {
        Some(Incoming::Closed {
            code: None,
            will_reconnect: true,
            ..
        }) => {}
        other => panic!("expected a failed attempt, got {other:?}"),
    }
    client.close().await;
}

#[tokio::test]
async fn fails_over_to_a_fallback_url_when_its_node_stops() {
    let a = RunningGateway::start(Config {
        node_id: "node-a".into(),
        ..config()
    })
    .await
    .expect("gateway A starts");
    let b = Gw {
        gw: RunningGateway::start(Config {
            node_id: "node-b".into(),
            ..config()
        })
        .await
        .expect("gateway B starts"),
        http: wsgw::http_client::client(),
    };
    let mut cfg = b.client_config(token("kate", &[], &[]));
    cfg.url = format!("ws://{}/ws", a.addr);
    cfg.fallback_urls = vec![b.ws_url()];
    let (mut client, welcome) = Client::connect(cfg).await.expect("connects to A");
    assert_eq!(welcome.node, "node-a");
    assert_eq!(client.url(), format!("ws://{}/ws", a.addr));
    let stopping = tokio::spawn(a.stop());
    match next(&mut client).await {
        Some(Incoming::Closed {
            code: Some(1012),
            will_reconnect: true,
            ..
        }) => {}
        other => panic!("expected Closed 1012, got {other:?}"),
    }
    match next(&mut client).await {
        Some(Incoming::Reconnected(w)) => {
            assert_eq!(w.node, "node-b");
            assert_eq!(w.user_id, "kate");
        }
        other => panic!("expected Reconnected on B, got {other:?}"),
    }
    stopping.await.unwrap().expect("A stops cleanly");
    assert_eq!(client.node(), "node-b");
    assert_eq!(client.url(), b.ws_url());
    // And it works on B.
    let id = b.publish("user:kate", "hi", Value::Null).await;
    assert_eq!(next_event(&mut client).await.2, Some(id));
    // A network drop moves on round-robin: to A, which is gone (a failed attempt), then B again.
    client.drop_connection();
    assert!(matches!(
        next(&mut client).await,
        Some(Incoming::Closed {
            code: None,
            will_reconnect: true,
            ..
        })
    ));
    assert!(matches!(
        next(&mut client).await,
        Some(Incoming::Closed {
            code: None,
            will_reconnect: true,
            ..
        })
    ));
    match next(&mut client).await {
        Some(Incoming::Reconnected(w)) => assert_eq!(w.node, "node-b"),
        other => panic!("expected Reconnected on B again, got {other:?}"),
    }
    client.close().await;
}

#[tokio::test]
async fn without_reconnect_a_drop_is_final() {
    let gw = Gw::start().await;
    let mut cfg = gw.client_config(token("ivy", &[], &[]));
    cfg.reconnect = false;
    let (mut client, _) = Client::connect(cfg).await.unwrap();
    client.drop_connection();
    assert!(matches!(
        next(&mut client).await,
        Some(Incoming::Closed {
            will_reconnect: false,
            ..
        })
    ));
    assert!(next(&mut client).await.is_none());
}

#[tokio::test]
async fn binds_to_a_local_address() {
    let gw = Gw::start().await;
    let mut cfg = gw.client_config(token("jack", &[], &[]));
    cfg.local_addr = Some("127.0.0.2".parse().unwrap());
    cfg.read_buffer_bytes = 1024;
    let (mut client, welcome) = Client::connect(cfg).await.expect("connects from 127.0.0.2");
    assert_eq!(welcome.user_id, "jack");
    let id = gw.publish("user:jack", "hi", Value::Null).await;
    assert_eq!(next_event(&mut client).await.2, Some(id));
    client.close().await;
}

#[tokio::test]
async fn an_unreachable_gateway_is_a_connect_error() {
    // Bind then drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = ClientConfig::new(format!("ws://127.0.0.1:{port}/ws"), "t");
    assert!(matches!(Client::connect(cfg).await, Err(ClientError::Connect(_))));
}

#[test]
fn client_and_its_futures_are_send() {
    // The load tool runs one tokio task per client.
    fn send<T: Send>(_: &T) {}
    fn check(mut c: Client) {
        send(&c);
        send(&c.next());
        send(&c.subscribe("a", None, None));
        send(&c.publish("a", "b", Value::Null, true));
        send(&c.close());
    }
    let _ = check;
}

#[tokio::test]
async fn history_reads_a_channel_without_touching_the_cursor_or_the_subscriptions() {
    let gw = Gw::start().await;
    let (mut client, _) = Client::connect(gw.client_config(token("hana", &["doc:*"], &["doc:*"])))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(gw.publish("doc:1", "edit", json!({"v": i})).await);
    }
    // This socket's own publish without echo is not in its reads.
    let quiet = client.publish("doc:1", "quiet", Value::Null, false).await.unwrap();
    let cursor = client.last_event_id();

    let newest = client.history("doc:1", None, Some(2)).await.expect("history");
    assert!(newest.recovered);
    let got: Vec<Option<EventId>> = newest.events.iter().map(|e| e.event_id).collect();
    assert_eq!(got, vec![Some(ids[3]), Some(ids[4])]);
    assert_eq!(
        (newest.events[1].channel.as_str(), newest.events[1].event.as_str()),
        ("doc:1", "edit")
    );
    assert_eq!(newest.events[1].data, json!({"v": 4}));

    // Paging forward from the first event: two pages, then an empty one.
    let mut pages = Vec::new();
    let mut since = ids[0];
    loop {
        let page = client.history("doc:1", Some(since), Some(2)).await.unwrap();
        assert!(page.recovered);
        let Some(last) = page.events.last().and_then(|e| e.event_id) else {
            break;
        };
        pages.push(page.events.iter().filter_map(|e| e.event_id).collect::<Vec<_>>());
        since = last;
    }
    assert_eq!(pages, vec![ids[1..3].to_vec(), ids[3..5].to_vec()]);
    assert!(!pages.concat().contains(&quiet));

    // Refused like a subscribe.
    match client.history("secret:1", None, None).await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, "forbidden"),
        other => panic!("expected forbidden, got {other:?}"),
    }
    match client.history("doc:*", None, None).await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, "bad_request"),
        other => panic!("expected bad_request, got {other:?}"),
    }

    // A read: the cursor did not move, no topic was added, and the next thing next() yields is
    // a live event of the user's own channel, not one of the events read.
    assert_eq!(client.last_event_id(), cursor);
    assert_eq!(client.topics().count(), 0);
    let live = gw.publish("user:hana", "ping", json!(1)).await;
    let (channel, _, event_id, _) = next_event(&mut client).await;
    assert_eq!((channel.as_str(), event_id), ("user:hana", Some(live)));
    client.close().await;
}
