//! What the Redis broker does with bad input: `wsgw_publish` refuses it before writing
//! anything, a live-only event (maxlen 0) makes a replay across it not recovered, and the
//! gateway tells the client's fault (400 / `bad_request`) from a bug (500 / `internal`) and
//! from a Redis it cannot reach (503 / `unavailable`).

use crate::common;

use common::cluster::*;
use common::*;
use serde_json::{Value, json};

const LUA: &str = include_str!("../src/broker/redis/wsgw.lua");

async fn load_functions(r: &mut redis::aio::MultiplexedConnection) {
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(LUA)
        .query_async(r)
        .await
        .expect("FUNCTION LOAD");
}

/// FCALL wsgw_publish with every argument given; the error text on refusal.
async fn fcall(
    r: &mut redis::aio::MultiplexedConnection,
    channel: &str,
    data: &str,
    ttl_ms: &str,
    maxlen: &str,
) -> Result<String, String> {
    publish_cmd(channel, "e", data)
        .arg(ttl_ms)
        .arg(maxlen)
        .query_async(r)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn wsgw_publish_refuses_bad_ttl_maxlen_and_non_standard_json_before_writing_anything() {
    let redis = RedisServer::start().await;
    let mut r = redis.conn().await;
    load_functions(&mut r).await;

    for ttl in ["0", "-1", "1.5", "1e3", "abc", " 10", "0x10", "9999999999999999999"] {
        let e = fcall(&mut r, "room:1", "1", ttl, "10").await.expect_err(ttl);
        assert!(e.contains("ttl_ms must be a positive integer"), "ttl {ttl:?}: {e}");
    }
    for maxlen in ["-1", "1.5", "1e3", "x", "+3"] {
        let e = fcall(&mut r, "room:1", "1", "60000", maxlen).await.expect_err(maxlen);
        assert!(
            e.contains("maxlen must be a non-negative integer"),
            "maxlen {maxlen:?}: {e}"
        );
    }
    // cjson takes all of these; JSON does not.
    for data in [
        "NaN",
        "-nan",
        r#"{"a":NaN}"#,
        r#"{"a":Infinity}"#,
        r#"[-Infinity]"#,
        r#"{"a":-inf}"#,
        r#"{"a":0x10}"#,
        r#"{"a":01}"#,
        r#"{"a":+1}"#,
        r#"[1.]"#,
    ] {
        let e = fcall(&mut r, "room:1", data, "60000", "10").await.expect_err(data);
        assert!(e.contains("data is not valid JSON"), "data {data}: {e}");
    }
    let keys: Vec<String> = redis::cmd("KEYS").arg("ws:*").query_async(&mut r).await.unwrap();
    assert!(keys.is_empty(), "a refused publish wrote {keys:?}");

    // Standard JSON, strings that merely look like the refused tokens, and good numbers pass.
    for data in [
        r#"{"a":[1,-2.5e-3,0,-0,0.0,1E5,1e400,null,true,false],"NaN":"0x10 Infinity","q\"":"\\"}"#,
        r#""NaN""#,
        " [ ] ",
        "-0.5",
    ] {
        fcall(&mut r, "room:1", data, "60000", "10").await.expect(data);
    }
}

#[tokio::test]
async fn a_live_only_event_makes_a_replay_across_it_not_recovered() {
    let redis = RedisServer::start().await;
    let gw = GatewayProc::start(&redis, "gw-a", &[]).await;
    let mut r = redis.conn().await;
    let first = fcall_publish(&mut r, "user:alice", "kept", &json!(1)).await;
    let live = fcall(&mut r, "user:alice", "2", "60000", "0")
        .await
        .expect("live-only publish");
    let third = fcall_publish(&mut r, "user:alice", "kept", &json!(3)).await;
    let len: usize = redis::cmd("XLEN")
        .arg("ws:history:user:alice")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(len, 2, "the live-only event is not stored");

    let t = token("alice", &[], &[]);
    let (mut c, w) = gw.connect_query(&format!("token={t}&last_event_id={first}")).await;
    assert_eq!(
        w["recovered"], false,
        "the live-only event {live} is lost to this replay: {w}"
    );
    let e = c.expect("event").await;
    assert_eq!(e["event_id"], third.as_str());

    // From the live-only event on, nothing is missing.
    let (mut c, w) = gw.connect_query(&format!("token={t}&last_event_id={live}")).await;
    assert_eq!(w["recovered"], true, "{w}");
    assert_eq!(c.expect("event").await["event_id"], third.as_str());
}

/// A history is trimmed back to `maxlen` once it holds an eighth more (at most 64), not on every
/// publish. It always keeps at least the last `maxlen` events, records the newest one it removed,
/// and a replay is recovered exactly when it starts inside what is kept.
#[tokio::test]
async fn history_is_trimmed_in_steps_and_replays_know_exactly_what_was_removed() {
    let redis = RedisServer::start().await;
    let gw = GatewayProc::start(&redis, "gw-a", &[]).await;
    let mut r = redis.conn().await;
    // maxlen 16: slack 2, so the stream grows to 18 and is trimmed back to 16 at the 19th.
    let mut ids = Vec::new();
    let mut lens = Vec::new();
    for i in 0..40 {
        let id = fcall(&mut r, "room:t", &i.to_string(), "60000", "16")
            .await
            .expect("publish");
        ids.push(id);
        let len: usize = redis::cmd("XLEN")
            .arg("ws:history:room:t")
            .query_async(&mut r)
            .await
            .unwrap();
        lens.push(len);
    }
    let expected: Vec<usize> = (1..=40usize)
        .scan(0usize, |len, _| {
            *len += 1;
            if *len > 18 {
                *len = 16;
            }
            Some(*len)
        })
        .collect();
    assert_eq!(lens, expected, "lengths after each publish");
    // What the last trim left, and the newest event it removed.
    let first_kept = 40 - lens[39];
    let kept: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("ws:history:room:t")
        .arg("-")
        .arg("+")
        .query_async(&mut r)
        .await
        .unwrap();
    let kept: Vec<&str> = kept.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(kept, ids[first_kept..].iter().map(String::as_str).collect::<Vec<_>>());
    let trimmed: String = redis::cmd("HGET")
        .arg("ws:meta:room:t")
        .arg("trimmed")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(trimmed, ids[first_kept - 1], "the newest removed id is recorded");

    let t = token("alice", &["room:*"], &[]);
    // From the newest removed id on, nothing is missing: every kept event comes back.
    let (mut c, w) = gw.connect(&t).await;
    assert_eq!(w["type"], "welcome");
    c.send(json!({"type": "subscribe", "channel": "room:t", "last_event_id": ids[first_kept - 1]}))
        .await;
    let sub = c.expect("subscribed").await;
    assert_eq!(
        (sub["recovered"].as_bool(), sub["replayed"].as_u64()),
        (Some(true), Some((40 - first_kept) as u64)),
        "{sub}"
    );
    let got: Vec<Value> = c.events(40 - first_kept).await;
    let got: Vec<&str> = got.iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    assert_eq!(got, ids[first_kept..].iter().map(String::as_str).collect::<Vec<_>>());
    // From one before it, the removed event is missing: not recovered.
    let (mut c, _) = gw.connect(&t).await;
    c.send(json!({"type": "subscribe", "channel": "room:t", "last_event_id": ids[first_kept - 2]}))
        .await;
    let sub = c.expect("subscribed").await;
    assert_eq!(sub["recovered"], false, "{sub}");
}

/// POSTs a raw JSON body to `/api/publish`.
async fn post_publish(gw: &GatewayProc, body: &str) -> (u16, Value) {
    let r = wsgw::http_client::client()
        .post(gw.url("/api/publish"))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("http");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn broker_errors_are_bad_request_internal_or_unavailable_by_cause() {
    let mut redis = RedisServer::start().await;
    let gw = GatewayProc::start(&redis, "gw-a", &[]).await;

    // A lone surrogate is valid JSON text to the gateway's parser but not to Redis's cjson:
    // the Function refuses the input, which is the caller's fault.
    let (status, body) = post_publish(&gw, r#"{"channel":"room:1","event":"e","data":{"x":"\ud800"}}"#).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "{body}");

    let (mut c, _) = gw.connect(&token("alice", &[], &["room:1"])).await;

    // The Function is gone: a bug in the deployment, not the caller's fault nor an outage.
    let mut r = redis.conn().await;
    let _: () = redis::cmd("FUNCTION").arg("FLUSH").query_async(&mut r).await.unwrap();
    let (status, body) = post_publish(&gw, r#"{"channel":"room:1","event":"e","data":1}"#).await;
    assert_eq!((status, body["error"].as_str()), (500, Some("internal")), "{body}");
    c.send(json!({"type": "publish", "channel": "room:1", "event": "e", "data": 1, "request_id": 1}))
        .await;
    let e = c.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["request_id"].as_i64()),
        (Some("internal"), Some(1)),
        "{e}"
    );

    // Redis gone: unavailable.
    redis.kill();
    let (status, body) = post_publish(&gw, r#"{"channel":"room:1","event":"e","data":1}"#).await;
    assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")), "{body}");
}

/// A figure from `INFO <section>`.
async fn info_field(r: &mut redis::aio::MultiplexedConnection, section: &str, field: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg(section).query_async(r).await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn one_resume_reads_at_most_max_replay_events_across_all_its_channels() {
    let redis = RedisServer::start().await;
    let gw = GatewayProc::start(&redis, "gw-a", &[("WSGW_MAX_REPLAY", "50")]).await;
    let mut r = redis.conn().await;
    let t = token("alice", &["room:*"], &[]);
    let (mut alice, w) = gw.connect(&t).await;
    let id = w["connection_id"].as_str().unwrap().to_string();
    for i in 0..20 {
        alice
            .send(json!({"type": "subscribe", "channel": format!("room:{i}")}))
            .await;
        alice.expect("subscribed").await;
    }
    alice.close().await;
    let start = fcall_publish(&mut r, "other", "mark", &json!(0)).await;
    // 600 events of ~1 KiB across the 20 channels.
    let fat = json!({ "pad": "x".repeat(1000) });
    for _ in 0..30 {
        for i in 0..20 {
            fcall_publish(&mut r, &format!("room:{i}"), "e", &fat).await;
        }
    }

    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut r).await.unwrap();
    let before = info_field(&mut r, "stats", "total_net_output_bytes").await;
    let (mut alice, w) = gw
        .connect_query(&format!("connection_id={id}&token={t}&last_event_id={start}"))
        .await;
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(
        (w["recovered"].as_bool(), w["replayed"].as_u64()),
        (Some(false), Some(50)),
        "{w}"
    );
    assert_eq!(alice.events(50).await.len(), 50);
    let sent = info_field(&mut r, "stats", "total_net_output_bytes").await - before;
    // 51 events (the cap and one to tell "over") are ~52 KB; every channel's 30 would be 600.
    assert!(
        sent < 100_000,
        "redis sent {sent} bytes for a replay capped at 50 events"
    );
}

/// Calls of one command since the last `CONFIG RESETSTAT`.
async fn calls(r: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(r).await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .map_or(0, |v| v.split(',').next().unwrap().parse().unwrap())
}

#[tokio::test]
async fn presence_is_written_at_most_once_per_socket_per_tick_however_often_it_subscribes() {
    let redis = RedisServer::start().await;
    // No frame rate limit: the socket churns as fast as it can.
    let gw = GatewayProc::start(&redis, "gw-a", &[("WSGW_RATE_LIMIT_PER_S", "0")]).await;
    let mut r = redis.conn().await;
    let (mut c, w) = gw.connect(&token("alice", &["room:*"], &[])).await;
    let id = w["connection_id"].as_str().unwrap().to_string();
    wait_until("the welcome's presence is written", || {
        let mut r = r.clone();
        let key = format!("ws:presence:conn:{id}");
        async move {
            let n: i64 = redis::cmd("EXISTS").arg(&key).query_async(&mut r).await.unwrap();
            n == 1
        }
    })
    .await;
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut r).await.unwrap();
    let started = std::time::Instant::now();
    for i in 0..500 {
        let ch = format!("room:{}", i % 7);
        c.send(json!({"type": "subscribe", "channel": ch})).await;
        c.expect("subscribed").await;
        c.send(json!({"type": "unsubscribe", "channel": ch})).await;
        c.expect("unsubscribed").await;
    }
    // One presence worker applies changes in order: once a later socket's welcome is in
    // Redis, every change before it has been applied.
    let (_bob, w) = gw.connect(&token("bob", &[], &[])).await;
    let bob_key = format!("ws:presence:conn:{}", w["connection_id"].as_str().unwrap());
    wait_until("bob's presence is written", || {
        let mut r = r.clone();
        let key = bob_key.clone();
        async move {
            let n: i64 = redis::cmd("EXISTS").arg(&key).query_async(&mut r).await.unwrap();
            n == 1
        }
    })
    .await;
    let sets = calls(&mut r, "set").await;
    // Bob's welcome is one SET. The default presence tick is over 20 s: each node-wide
    // refresh in here adds at most alice's, bob's and the epoch's; never one write per
    // subscription change.
    let ticks = started.elapsed().as_secs() / 20 + 1;
    assert!(
        sets <= 1 + 3 * ticks,
        "{sets} SETs for 1000 subscription changes of one socket"
    );
}
