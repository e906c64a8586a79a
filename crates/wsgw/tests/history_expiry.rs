//! A channel's history that expired and began again (`WSGW_HISTORY_TTL_MS`): a cursor from
//! before the expiry cannot be replayed, and the client must be told so (`recovered:false`), not
//! handed the new events as if nothing had been missed. Real expiry, with a 2 s TTL.

use crate::common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use serde_json::json;

const TTL_MS: &str = "2000";

/// Waits until none of `keys` exists any more (Redis expired them).
async fn wait_expired(r: &mut redis::aio::MultiplexedConnection, keys: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let n: i64 = redis::cmd("EXISTS").arg(keys).query_async(r).await.unwrap();
        if n == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{keys:?} did not expire");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client that saw `seen` last misses two events; the history expires (`expire_keys`); a new
/// event begins it again. Resuming from `seen` must say `recovered:false`, send what history
/// holds, then live events; a cursor taken after that is complete again.
async fn missed_across_an_expiry(gw: &GatewayProc, r: &mut redis::aio::MultiplexedConnection, expire_keys: &[&str]) {
    let t = token("u1", &[], &[]);
    let (mut c, _) = gw.connect(&t).await;
    let seen = fcall_publish(r, "user:u1", "seen", &json!(0)).await;
    assert_eq!(c.expect("event").await["event_id"], seen.as_str());
    c.close().await;
    fcall_publish(r, "user:u1", "missed", &json!(1)).await;
    fcall_publish(r, "user:u1", "missed", &json!(2)).await;
    wait_expired(r, expire_keys).await;
    let after = fcall_publish(r, "user:u1", "after", &json!(3)).await;

    let (mut c, w) = gw.connect_query(&format!("token={t}&last_event_id={seen}")).await;
    assert_eq!(
        w["recovered"], false,
        "two events expired unseen: the replay cannot be complete ({w})"
    );
    assert_eq!(c.expect("event").await["event_id"], after.as_str());
    let live = fcall_publish(r, "user:u1", "live", &json!(4)).await;
    assert_eq!(c.expect("event").await["event_id"], live.as_str());
    c.close().await;

    let missed = fcall_publish(r, "user:u1", "missed", &json!(5)).await;
    let (mut c, w) = gw.connect_query(&format!("token={t}&last_event_id={live}")).await;
    assert_eq!(w["recovered"], true, "a cursor inside the new history: {w}");
    assert_eq!(c.expect("event").await["event_id"], missed.as_str());
    c.close().await;
}

#[tokio::test]
async fn a_cursor_older_than_an_expired_history_is_not_recovered() {
    let redis = RedisServer::start().await;
    let gw = GatewayProc::start(&redis, "gw-a", &[("WSGW_HISTORY_TTL_MS", TTL_MS)]).await;
    let mut r = redis.conn().await;
    // The stream expires after one TTL; its meta, which outlives it, is still there.
    missed_across_an_expiry(&gw, &mut r, &["ws:history:user:u1"]).await;
    // Both expire (two TTLs of silence): nothing at all is left of the channel.
    missed_across_an_expiry(&gw, &mut r, &["ws:history:user:u1", "ws:meta:user:u1"]).await;
}

/// The same expiry, with the node's clock 30 s behind Redis's (libfaketime): once the channel's
/// meta expired too, only the id's age tells, and by Redis's clock it is older than two TTLs.
#[tokio::test]
async fn a_node_whose_clock_runs_behind_does_not_vouch_for_an_expired_history() {
    let redis = RedisServer::start().await;
    let mut env: Vec<(&str, &str)> = vec![("WSGW_HISTORY_TTL_MS", TTL_MS)];
    let skew = clock::offset_env("-30s");
    env.extend(skew.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let gw = GatewayProc::start(&redis, "gw-a", &env).await;
    let mut r = redis.conn().await;
    let t = token("u1", &[], &[]);
    let (mut c, _) = gw.connect(&t).await;
    let seen = fcall_publish(&mut r, "user:u1", "seen", &json!(0)).await;
    assert_eq!(c.expect("event").await["event_id"], seen.as_str());
    c.close().await;
    fcall_publish(&mut r, "user:u1", "missed", &json!(1)).await;
    wait_expired(&mut r, &["ws:history:user:u1", "ws:meta:user:u1"]).await;

    let (mut c, w) = gw.connect_query(&format!("token={t}&last_event_id={seen}")).await;
    assert_eq!(
        (&w["recovered"], &w["replayed"]),
        (&json!(false), &json!(0)),
        "an event expired unseen: the replay cannot be complete ({w})"
    );
    let live = fcall_publish(&mut r, "user:u1", "live", &json!(2)).await;
    assert_eq!(c.expect("event").await["event_id"], live.as_str());
}
