//! Identity the way deployments do it: the default for tokens without `actions`, allowed
//! browser origins, the HS256 secret length, bans.

use crate::common;

use common::cluster::*;
use common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A token with no `actions` claim.
fn no_actions(sub: &str) -> String {
    token(sub, &[], &[])
}

fn with_actions(sub: &str, actions: &[&str]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": sub, "exp": now_s() + 3600, "actions": actions}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn request_answer(c: &mut Client, action: &str, id: &str) -> serde_json::Value {
    c.send(json!({"type": "request", "action": action, "data": null, "request_id": id}))
        .await;
    loop {
        let f = c.next().await.expect("an answer");
        if f["request_id"] == id {
            return f;
        }
    }
}

#[tokio::test]
async fn actions_default_deny_refuses_requests_from_tokens_without_actions_single_node() {
    let node = Node::start(wsgw::Config {
        jwt_actions_default: wsgw::config::ActionsDefault::Deny,
        request_timeout_ms: 300,
        ..config()
    })
    .await;
    let (mut c, _) = node.connect(&no_actions("u")).await;
    let e = request_answer(&mut c, "search", "r1").await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{e}"
    );
    // A token that lists the action is not refused by the default.
    let (mut c, _) = node.connect(&with_actions("u", &["search"])).await;
    let e = request_answer(&mut c, "search", "r2").await;
    assert_ne!(e["code"], "forbidden", "{e}");
    node.stop().await;

    // `allow` (the default) keeps today's behaviour.
    let node = Node::start(wsgw::Config {
        request_timeout_ms: 300,
        ..config()
    })
    .await;
    let (mut c, _) = node.connect(&no_actions("u")).await;
    let e = request_answer(&mut c, "search", "r3").await;
    assert_ne!(e["code"], "forbidden", "{e}");
    node.stop().await;
}

#[tokio::test]
async fn actions_default_deny_refuses_requests_from_tokens_without_actions_in_a_cluster() {
    let redis = RedisServer::start().await;
    let a = GatewayProc::start(
        &redis,
        "gw-a",
        &[("WSGW_JWT_ACTIONS_DEFAULT", "deny"), ("WSGW_REQUEST_TIMEOUT_MS", "300")],
    )
    .await;
    let (mut c, _) = a.connect(&no_actions("u")).await;
    let e = request_answer(&mut c, "search", "r1").await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{e}"
    );
    let (mut c, _) = a.connect(&with_actions("u", &["search"])).await;
    let e = request_answer(&mut c, "search", "r2").await;
    assert_eq!(e["code"], "timeout", "allowed, so it waits for a backend: {e}");
}

/// The upgrade's HTTP status: 101 when it succeeds.
async fn upgrade_status(node: &Node, origin: Option<&str>) -> u16 {
    let mut req = node
        .ws_url(&format!("token={}", token("u", &[], &[])))
        .into_client_request()
        .unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    match tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(req))
        .await
        .expect("in time")
    {
        Ok((_ws, resp)) => resp.status().as_u16(),
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("upgrade failed otherwise: {e}"),
    }
}

#[tokio::test]
async fn upgrades_from_origins_not_listed_get_403_before_the_upgrade() {
    let node = Node::start(wsgw::Config {
        allowed_origins: vec!["https://app.example.org".into(), "https://*.example.com".into()],
        ..config()
    })
    .await;
    for (origin, want) in [
        (Some("https://app.example.org"), 101),
        (Some("https://a.b.example.com"), 101),
        (None, 101),
        (Some("https://example.com"), 403),
        (Some("http://app.example.org"), 403),
        (Some("https://app.example.org:444"), 403),
        (Some("https://evil.org"), 403),
        (Some("null"), 403),
    ] {
        assert_eq!(upgrade_status(&node, origin).await, want, "{origin:?}");
    }
    node.stop().await;

    // Unset: everything allowed, as before.
    let node = Node::default().await;
    assert_eq!(upgrade_status(&node, Some("null")).await, 101);
    assert_eq!(upgrade_status(&node, Some("https://evil.org")).await, 101);
    node.stop().await;
}

/// Runs the binary with `args` and `secret`, and waits for it to exit or to listen: `(None, "")`
/// once its own process listens. A port taken between `free_port` and the bind is tried again on
/// another.
async fn run_with_secret(secret: &str, args: &[&str]) -> (Option<i32>, String) {
    for _ in 0..5 {
        let port = free_port();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wsgw"))
            .env_clear()
            .env("WSGW_LISTEN", format!("127.0.0.1:{port}"))
            .env("WSGW_JWT_SECRET", secret)
            .env("WSGW_API_KEY", API_KEY)
            .env("WSGW_LOG", "warn")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let up = until_listening(
            || running_pid(&mut child),
            &[port],
            DEADLINE,
            || String::from("neither exited nor listened"),
        )
        .await;
        if up {
            let _ = child.kill();
            let _ = child.wait();
            return (None, String::new());
        }
        let status = child.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        if !err.contains("Address already in use") {
            return (status.code(), err);
        }
    }
    panic!("no free port in 5 tries");
}

#[tokio::test]
async fn an_hs256_secret_shorter_than_32_bytes_is_refused_at_start_except_in_dev_mode() {
    let (code, err) = run_with_secret("only-31-bytes-0123456789abcdefg", &[]).await;
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("WSGW_JWT_SECRET"), "{err}");
    let (code, err) = run_with_secret("exactly-32-bytes-0123456789abcde", &[]).await;
    assert_eq!(code, None, "a 32-byte secret starts: {err}");
    let (code, err) = run_with_secret("short", &["--dev"]).await;
    assert_eq!(code, None, "--dev accepts a short secret: {err}");
}

async fn api_delete(http: &reqwest::Client, url: String, key: &str) -> u16 {
    http.delete(url)
        .bearer_auth(key)
        .send()
        .await
        .expect("http")
        .status()
        .as_u16()
}

/// A connect attempt that must be refused: the error frame's code and the close code.
async fn refused(url: &str) -> (String, Option<u16>) {
    let mut c = Client::connect(url).await;
    let (code, frames) = c.until_closed().await;
    let err = frames.iter().find(|f| f["type"] == "error").expect("an error frame");
    (err["code"].as_str().unwrap().to_owned(), code)
}

#[tokio::test]
async fn a_ban_closes_the_users_sockets_and_refuses_connects_until_lifted_single_node() {
    let node = Node::default().await;
    let t = token("mallory", &[], &[]);
    let (mut a, _) = node.connect(&t).await;
    let (mut b, _) = node.connect(&t).await;
    let (mut other, _) = node.connect(&token("alice", &[], &[])).await;

    // Bad input and a missing API key.
    for body in [
        json!({"user_id": "mallory", "ttl_s": 0}),
        json!({"user_id": "mallory", "ttl_s": 2_592_001}),
        json!({"user_id": "mallory"}),
        json!({"user_id": "", "ttl_s": 60}),
    ] {
        assert_eq!(node.api_post("/api/bans", body.clone()).await.0, 400, "{body}");
    }
    let unauth = node
        .http
        .post(node.url("/api/bans"))
        .json(&json!({"user_id": "mallory", "ttl_s": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status().as_u16(), 401);
    assert_eq!(
        api_delete(&node.http, node.url("/api/bans/mallory"), "wrong").await,
        401
    );
    assert_eq!(
        api_delete(&node.http, node.url("/api/bans/mallory"), API_KEY).await,
        404,
        "no ban yet"
    );

    let (status, body) = node
        .api_post("/api/bans", json!({"user_id": "mallory", "ttl_s": 2_592_000}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(a.until_closed().await.0, Some(4004));
    assert_eq!(b.until_closed().await.0, Some(4004));
    assert_eq!(
        refused(&node.ws_url(&format!("token={t}"))).await,
        ("forbidden".to_owned(), Some(1008))
    );
    // Others are untouched.
    other.send(json!({"type": "ping", "ts": 1})).await;
    other.expect("pong").await;

    assert_eq!(
        api_delete(&node.http, node.url("/api/bans/mallory"), API_KEY).await,
        200
    );
    let (_c, w) = node.connect(&t).await;
    assert_eq!(w["type"], "welcome");
    assert_eq!(
        api_delete(&node.http, node.url("/api/bans/mallory"), API_KEY).await,
        404
    );

    // A ban ends by itself after its TTL.
    assert_eq!(
        node.api_post("/api/bans", json!({"user_id": "eve", "ttl_s": 1}))
            .await
            .0,
        200
    );
    let eve = token("eve", &[], &[]);
    assert_eq!(refused(&node.ws_url(&format!("token={eve}"))).await.1, Some(1008));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut c = Client::connect(&node.ws_url(&format!("token={eve}"))).await;
        match c.next().await {
            Some(f) if f["type"] == "welcome" => break,
            _ => assert!(tokio::time::Instant::now() < deadline, "the ban never ended"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    node.stop().await;
}

#[tokio::test]
async fn a_ban_on_one_node_holds_on_every_node_of_the_cluster() {
    let redis = RedisServer::start().await;
    let a = GatewayProc::start(&redis, "gw-a", &[]).await;
    let b = GatewayProc::start(&redis, "gw-b", &[]).await;
    let t = token("mallory", &[], &[]);
    let (mut on_a, _) = a.connect(&t).await;
    let (mut on_b, _) = b.connect(&t).await;
    let (mut other, _) = b.connect(&token("alice", &[], &[])).await;

    assert_eq!(
        a.api_post("/api/bans", json!({"user_id": "mallory", "ttl_s": 0}))
            .await
            .0,
        400
    );
    let (status, body) = a
        .api_post("/api/bans", json!({"user_id": "mallory", "ttl_s": 600}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(on_a.until_closed().await.0, Some(4004));
    assert_eq!(on_b.until_closed().await.0, Some(4004));
    for node in [&a, &b] {
        assert_eq!(
            refused(&node.ws_url(&format!("token={t}"))).await,
            ("forbidden".to_owned(), Some(1008))
        );
    }
    other.send(json!({"type": "ping", "ts": 1})).await;
    other.expect("pong").await;
    // The key carries the ban's TTL.
    let mut r = redis.conn().await;
    let ttl: i64 = redis::cmd("TTL")
        .arg("ws:ban:mallory")
        .query_async(&mut r)
        .await
        .unwrap();
    assert!((1..=600).contains(&ttl), "{ttl}");

    // Lifted on the other node.
    let http = wsgw::http_client::client();
    assert_eq!(api_delete(&http, b.url("/api/bans/mallory"), API_KEY).await, 200);
    assert_eq!(api_delete(&http, a.url("/api/bans/mallory"), API_KEY).await, 404);
    let (_c, w) = a.connect(&t).await;
    assert_eq!(w["type"], "welcome");
}

/// Connects arriving together have their ban checks answered in shared batches (one pipeline
/// for all waiting): each connect still gets its own user's answer.
#[tokio::test]
async fn connects_arriving_together_each_get_their_own_users_ban_answer() {
    let redis = RedisServer::start().await;
    let node = GatewayProc::start(&redis, "gw-a", &[]).await;
    let banned = |i: usize| i % 7 == 3;
    for i in (0..60).filter(|&i| banned(i)) {
        let (status, body) = node
            .api_post("/api/bans", json!({"user_id": format!("u{i}"), "ttl_s": 600}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    for round in 0..3 {
        let outcomes = futures_util::future::join_all((0..60).map(|i| {
            let url = node.ws_url(&format!("token={}", token(&format!("u{i}"), &[], &[])));
            async move {
                let mut c = Client::connect(&url).await;
                let first = c.next().await.expect("a first frame");
                (i, first)
            }
        }))
        .await;
        for (i, first) in outcomes {
            if banned(i) {
                assert_eq!(first["type"], "error", "round {round}, u{i}: {first}");
                assert_eq!(first["code"], "forbidden", "round {round}, u{i}: {first}");
            } else {
                assert_eq!(first["type"], "welcome", "round {round}, u{i}: {first}");
                assert_eq!(first["user_id"], format!("u{i}"), "round {round}");
            }
        }
    }
}
