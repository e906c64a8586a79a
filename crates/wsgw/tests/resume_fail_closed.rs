//! A resume fails closed: when the node cannot check who owns a `connection_id` (its Redis
//! lookup errors), the asking socket never gets that id, so it cannot receive the owner's
//! `connection:<id>` events or backend responses.

use crate::common;

use common::cluster::*;
use common::*;
use serde_json::json;

#[tokio::test]
async fn a_resume_whose_ownership_lookup_fails_gets_a_fresh_id() {
    let redis = RedisServer::start().await;
    let node = GatewayProc::start(&redis, "gw-a", &[]).await;
    // The intruder asks another node, which has to look the id up in Redis.
    let other = GatewayProc::start(&redis, "gw-b", &[]).await;
    let (mut victim, w) = node.connect(&token("victim", &[], &[])).await;
    let victim_id = w["connection_id"].as_str().unwrap().to_string();

    // The lookup (GET of the presence and parked-session keys) now errors; subscribing still works.
    let mut r = redis.conn().await;
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "default", "-get"])
        .query_async(&mut r)
        .await
        .unwrap();
    let (mut intruder, w) = other
        .connect_query(&format!(
            "token={}&connection_id={victim_id}",
            token("intruder", &[], &[])
        ))
        .await;
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "default", "+get"])
        .query_async(&mut r)
        .await
        .unwrap();
    assert_ne!(w["connection_id"], victim_id.as_str(), "the id was adopted: {w}");
    assert_eq!(w["resumed"], false);

    // An event for the victim's connection channel reaches the victim only.
    let (status, _) = node
        .api_post(
            "/api/publish",
            json!({"channel": format!("connection:{victim_id}"), "event": "private", "data": 1}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(victim.expect("event").await["event"], "private");
    intruder.assert_silent(std::time::Duration::from_millis(300)).await;
}
