//! `wss://` for real: an in-process gateway behind a real nginx that terminates TLS with a
//! certificate from a private CA (made by openssl). The client trusts that CA through
//! `ca_file`, refuses a certificate from another CA with an error that names the certificate,
//! and accepts anything with `insecure`. Every wait has a deadline.

#[path = "support/tls_front.rs"]
mod tls_front;

use std::time::Duration;

use serde_json::json;
use tls_front::TlsFront;
use wsgw::{Config, RunningGateway};
use wsgw_client::{Client, ClientConfig, ClientError, Incoming};

const SECRET: &str = "client-tls-test-secret-0123456789abcdefgh";
const API_KEY: &str = "client-tls-test-api-key";
const DEADLINE: Duration = Duration::from_secs(10);

async fn gateway() -> RunningGateway {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        node_id: "client-tls".into(),
        jwt_secret: Some(SECRET.into()),
        api_key: Some(API_KEY.into()),
        drain_ms: 200,
        ..Config::default()
    };
    RunningGateway::start(config).await.expect("gateway starts")
}

fn token(sub: &str, channels: &[&str]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    wsgw::auth::sign_hs256(SECRET, sub, channels, &[], Some(now + 3600))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_through_nginx_with_the_ca_file_welcomes_subscribes_and_delivers() {
    let gw = gateway().await;
    let front = TlsFront::start(gw.addr);
    let mut cfg = ClientConfig::new(front.wss_url(), token("alice", &["news"]));
    cfg.ca_file = Some(front.path("ca.pem"));
    let (mut client, welcome) = tokio::time::timeout(DEADLINE, Client::connect(cfg))
        .await
        .expect("bounded")
        .expect("connects over wss:// with the CA file");
    assert_eq!(welcome.user_id, "alice");
    assert_eq!(welcome.node, "client-tls");
    tokio::time::timeout(DEADLINE, client.subscribe("news", None, None))
        .await
        .expect("bounded")
        .expect("subscribes");
    // The event goes in through the gateway's plain HTTP API, and out through nginx's TLS.
    let r = wsgw::http_client::client()
        .post(format!("http://{}/api/publish", gw.addr))
        .bearer_auth(API_KEY)
        .json(&json!({"channel": "news", "event": "headline", "data": {"n": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    match tokio::time::timeout(DEADLINE, client.next()).await.expect("bounded") {
        Some(Incoming::Event {
            channel, event, data, ..
        }) => {
            assert_eq!((channel.as_str(), event.as_str()), ("news", "headline"));
            assert_eq!(data, json!({"n": 1}));
        }
        other => panic!("expected the event, got {other:?}"),
    }
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_the_wrong_ca_fails_naming_the_certificate_and_insecure_connects() {
    let gw = gateway().await;
    let front = TlsFront::start(gw.addr);
    let mut cfg = ClientConfig::new(front.wss_url(), token("bob", &[]));
    cfg.reconnect = false;
    cfg.ca_file = Some(front.path("other-ca.pem"));
    let err = tokio::time::timeout(DEADLINE, Client::connect(cfg.clone()))
        .await
        .expect("bounded")
        .expect_err("a certificate from another CA is refused");
    let text = err.to_string();
    assert!(matches!(err, ClientError::Connect(_)), "{err:?}");
    assert!(text.contains("certificate"), "the error names the certificate: {text}");
    assert!(text.contains("UnknownIssuer"), "and why: {text}");

    // A CA file that does not exist is named too.
    let mut missing = cfg.clone();
    missing.ca_file = Some(front.path("no-such-ca.pem"));
    let err = Client::connect(missing).await.expect_err("no CA file");
    assert!(err.to_string().contains("no-such-ca.pem"), "{err}");

    // insecure: any certificate (the self-signed test one here) is accepted.
    let mut insecure = cfg;
    insecure.ca_file = None;
    insecure.insecure = true;
    let (client, welcome) = tokio::time::timeout(DEADLINE, Client::connect(insecure))
        .await
        .expect("bounded")
        .expect("connects with insecure");
    assert_eq!(welcome.user_id, "bob");
    client.close().await;
}
