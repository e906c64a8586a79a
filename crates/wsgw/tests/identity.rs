//! Identity the way deployments do it: the default for tokens without `actions`, allowed
//! browser origins, the HS256 secret length, bans.

mod common;

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

/// Runs the binary with `args` and `secret`, and waits for it to exit or become ready.
async fn run_with_secret(secret: &str, args: &[&str]) -> (Option<i32>, String) {
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
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (status.code(), err);
        }
        if let Ok(r) = http.get(format!("http://127.0.0.1:{port}/health")).send().await
            && r.status().is_success()
        {
            let _ = child.kill();
            let _ = child.wait();
            return (None, String::new());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "neither exited nor became ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
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
