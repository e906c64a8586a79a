//! Channel presence through the Rust client, against a real in-process gateway: `join` and
//! `leave` come out of `next`, `presence()` lists the members, refusals are typed.

use std::time::Duration;

use wsgw::{Config, RunningGateway};
use wsgw_client::{Client, ClientConfig, ClientError, Incoming, PresenceClient};

const SECRET: &str = "client-test-secret-0123456789abcdefghij";
const DEADLINE: Duration = Duration::from_secs(10);

fn token(sub: &str, channels: &[&str]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    wsgw::auth::sign_hs256(SECRET, sub, channels, &[], Some(now + 3600))
}

/// The next `join` or `leave`, as (joined, channel, user, connection), skipping other messages.
async fn next_presence(c: &mut Client) -> (bool, String, String, String) {
    tokio::time::timeout(DEADLINE, async {
        loop {
            match c.next().await.expect("open") {
                Incoming::Join {
                    channel,
                    user_id,
                    connection_id,
                } => return (true, channel, user_id, connection_id),
                Incoming::Leave {
                    channel,
                    user_id,
                    connection_id,
                } => return (false, channel, user_id, connection_id),
                _ => continue,
            }
        }
    })
    .await
    .expect("a presence frame in time")
}

#[tokio::test]
async fn join_leave_and_the_member_list_reach_the_application() {
    let gw = RunningGateway::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        node_id: "client-test".into(),
        jwt_secret: Some(SECRET.into()),
        drain_ms: 200,
        presence_channels: vec!["room:*".into()],
        ..Config::default()
    })
    .await
    .expect("gateway starts");
    let url = format!("ws://{}/ws", gw.addr);
    let (mut bob, _) = Client::connect(ClientConfig::new(url.clone(), token("bob", &["room:*", "news"])))
        .await
        .unwrap();
    bob.subscribe("room:1", None, None).await.unwrap();
    let me = bob.connection_id().to_string();
    assert_eq!(
        next_presence(&mut bob).await,
        (true, "room:1".into(), "bob".into(), me.clone())
    );

    let (mut ann, _) = Client::connect(ClientConfig::new(url, token("ann", &["room:*"])))
        .await
        .unwrap();
    ann.subscribe("room:1", None, None).await.unwrap();
    let ann_id = ann.connection_id().to_string();
    assert_eq!(
        next_presence(&mut bob).await,
        (true, "room:1".into(), "ann".into(), ann_id.clone())
    );
    let mut members = bob.presence("room:1").await.expect("presence");
    members.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    let at = |user: &str, id: &str| PresenceClient {
        user_id: user.into(),
        connection_id: id.into(),
        node: "client-test".into(),
    };
    assert_eq!(members, vec![at("ann", &ann_id), at("bob", &me)]);

    ann.close().await;
    assert_eq!(
        next_presence(&mut bob).await,
        (false, "room:1".into(), "ann".into(), ann_id)
    );
    assert_eq!(bob.presence("room:1").await.unwrap(), vec![at("bob", &me)]);

    for (channel, want) in [("news", "bad_request"), ("secret:1", "forbidden")] {
        match bob.presence(channel).await {
            Err(ClientError::Refused { code, .. }) => assert_eq!(code, want, "{channel}"),
            other => panic!("{channel}: expected {want}, got {other:?}"),
        }
    }
    gw.stop().await.expect("clean stop");
}
