//! Across nodes, a user's connections are the sockets whose token's `sub` is that user, never
//! the sockets that listen to `user:<id>` (a support agent watching it).

use crate::common;

use common::cluster::*;
use common::*;
use serde_json::json;

#[tokio::test]
async fn kicking_alice_on_one_node_leaves_an_agent_watching_her_channel_on_another() {
    let redis = RedisServer::start().await;
    let a = GatewayProc::start(&redis, "gw-a", &[]).await;
    let b = GatewayProc::start(&redis, "gw-b", &[]).await;
    let (mut agent, _) = b.connect(&token("support", &["user:alice"], &[])).await;
    agent.send(json!({"type": "subscribe", "channel": "user:alice"})).await;
    agent.expect("subscribed").await;
    let (mut alice_b, w) = b.connect(&token("alice", &[], &[])).await;
    let alice_b_id = w["connection_id"].as_str().unwrap().to_string();
    let (mut alice_a, _) = a.connect(&token("alice", &[], &[])).await;

    wait_until("the cluster lists alice's two sockets", || async {
        a.api_get("/api/presence/users/alice").await.1["connections"]
            .as_array()
            .is_some_and(|c| c.len() == 2)
    })
    .await;
    let (_, body) = a.api_get("/api/presence/users/alice").await;
    assert!(
        body["connections"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["connection_id"] == alice_b_id.as_str()),
        "{body}"
    );

    let (status, resp) = a.api_post("/api/users/alice/disconnect", json!({})).await;
    assert_eq!(status, 200, "{resp}");
    for c in [&mut alice_a, &mut alice_b] {
        assert_eq!(c.until_closed().await.0, Some(4004));
    }
    let mut r = redis.conn().await;
    fcall_publish(&mut r, "user:alice", "still-watching", &json!(null)).await;
    assert_eq!(agent.expect("event").await["event"], "still-watching");
    assert_eq!(agent.closed, None, "the agent on node B was kicked with alice");
}
