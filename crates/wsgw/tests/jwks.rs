//! JWKS: keys selected by `kid` from a URL (a local HTTP server started here) or a file; RSA,
//! EC P-256 and `oct` keys at once; rotation through refresh, on-demand reload (at most once per
//! 10 s), an unreachable endpoint keeping the last good set; combined with the static secret.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::*;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::{Value, json};

// The test keys in tests/keys/, shared with src/auth/test_support.rs (test-only).
const RSA_PRIVATE_PEM: &str = include_str!("keys/rsa_private.pem");
const EC_PRIVATE_PEM: &str = include_str!("keys/ec_private.pem");
const OCT_SECRET: &[u8] = b"jwks-oct-secret-0123456789abcdefghij";

#[derive(Clone, Copy)]
enum Kind {
    Rsa,
    Ec,
    Oct,
}

fn signing(kind: Kind) -> (Algorithm, EncodingKey) {
    match kind {
        Kind::Rsa => (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).unwrap(),
        ),
        Kind::Ec => (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(EC_PRIVATE_PEM.as_bytes()).unwrap(),
        ),
        Kind::Oct => (Algorithm::HS256, EncodingKey::from_secret(OCT_SECRET)),
    }
}

/// The public JWK of `kind` under `kid`.
fn jwk(kind: Kind, kid: &str) -> Value {
    let (alg, key) = signing(kind);
    let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).unwrap()
}

fn set(keys: &[Value]) -> Value {
    json!({ "keys": keys })
}

/// A token for `sub` signed with `kind`'s key, its header naming `kid`.
fn signed(kind: Kind, kid: Option<&str>, sub: &str) -> String {
    let (alg, key) = signing(kind);
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &json!({"sub": sub, "exp": now_s() + 3600}), &key).unwrap()
}

/// What the endpoint answers: a status and a body.
type Doc = Arc<Mutex<(StatusCode, Value)>>;

/// A JWKS endpoint: serves `doc` with `status`, counting fetches.
#[derive(Clone)]
struct Idp {
    doc: Doc,
    fetches: Arc<AtomicUsize>,
    url: String,
}

impl Idp {
    async fn start(doc: Value) -> Idp {
        let doc = Arc::new(Mutex::new((StatusCode::OK, doc)));
        let fetches = Arc::new(AtomicUsize::new(0));
        async fn serve(State((doc, fetches)): State<(Doc, Arc<AtomicUsize>)>) -> axum::response::Response {
            fetches.fetch_add(1, Ordering::SeqCst);
            let (status, body) = doc.lock().clone();
            (status, axum::Json(body)).into_response()
        }
        let app = axum::Router::new()
            .route("/jwks.json", axum::routing::get(serve))
            .with_state((doc.clone(), fetches.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Idp { doc, fetches, url }
    }

    fn set(&self, doc: Value) {
        self.doc.lock().1 = doc;
    }

    fn fail(&self) {
        self.doc.lock().0 = StatusCode::INTERNAL_SERVER_ERROR;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

async fn accepted(node: &Node, token: &str) -> bool {
    let mut c = Client::connect(&node.ws_url(&format!("token={token}"))).await;
    let first = c.next().await;
    match first {
        Some(f) if f["type"] == "welcome" => true,
        Some(f) => {
            assert_eq!(f["code"], "unauthorized", "{f}");
            let (code, _) = c.until_closed().await;
            assert_eq!(code, Some(4001));
            false
        }
        None => panic!("closed without a frame: {:?}", c.closed),
    }
}

async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn jwks_config(url: &str, refresh_s: u64) -> wsgw::Config {
    wsgw::Config {
        jwt_jwks_url: Some(url.to_owned()),
        jwt_jwks_refresh_s: refresh_s,
        ..config()
    }
}

#[tokio::test]
async fn rsa_ec_and_oct_keys_are_selected_by_kid_next_to_the_static_secret() {
    let idp = Idp::start(set(&[jwk(Kind::Rsa, "r1"), jwk(Kind::Ec, "e1"), jwk(Kind::Oct, "o1")])).await;
    let node = Node::start(jwks_config(&idp.url, 300)).await;
    assert!(accepted(&node, &signed(Kind::Rsa, Some("r1"), "a")).await);
    assert!(accepted(&node, &signed(Kind::Ec, Some("e1"), "b")).await);
    assert!(accepted(&node, &signed(Kind::Oct, Some("o1"), "c")).await);
    // No kid: the static secret.
    assert!(accepted(&node, &token("d", &[], &[])).await);
    assert!(
        !accepted(&node, &signed(Kind::Rsa, None, "e")).await,
        "no kid: never a JWKS key"
    );
    // A kid with the wrong key or algorithm.
    assert!(!accepted(&node, &signed(Kind::Ec, Some("r1"), "f")).await);
    assert!(!accepted(&node, &signed(Kind::Oct, Some("e1"), "g")).await);
    let static_with_kid = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("r1".into());
        jsonwebtoken::encode(
            &h,
            &json!({"sub": "h", "exp": now_s() + 3600}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    assert!(
        !accepted(&node, &static_with_kid).await,
        "a kid is checked against the JWKS only"
    );
    // An unknown kid: unauthorized, 4001.
    assert!(!accepted(&node, &signed(Kind::Rsa, Some("nope"), "i")).await);
    node.stop().await;
}

#[tokio::test]
async fn an_unknown_kid_reloads_the_set_at_most_once_per_10_s_and_the_start_fetch_does_not_count() {
    let idp = Idp::start(set(&[jwk(Kind::Rsa, "r1")])).await;
    let node = Node::start(jwks_config(&idp.url, 300)).await;
    assert_eq!(idp.fetches(), 1, "fetched at start");
    // A key rotated in is accepted on first sight.
    idp.set(set(&[jwk(Kind::Rsa, "r1"), jwk(Kind::Ec, "e2")]));
    assert!(accepted(&node, &signed(Kind::Ec, Some("e2"), "a")).await);
    assert_eq!(idp.fetches(), 2);
    // Within 10 s, another unknown kid does not fetch again.
    idp.set(set(&[jwk(Kind::Rsa, "r1"), jwk(Kind::Ec, "e2"), jwk(Kind::Oct, "o3")]));
    assert!(!accepted(&node, &signed(Kind::Oct, Some("o3"), "b")).await);
    assert!(!accepted(&node, &signed(Kind::Oct, Some("zz"), "c")).await);
    assert_eq!(idp.fetches(), 2);
    node.stop().await;
}

#[tokio::test]
async fn a_refresh_frame_with_a_key_rotated_in_since_the_last_load_is_accepted() {
    let idp = Idp::start(set(&[jwk(Kind::Rsa, "r1")])).await;
    let node = Node::start(jwks_config(&idp.url, 300)).await;
    let (mut c, _) = node.connect(&signed(Kind::Rsa, Some("r1"), "a")).await;
    idp.set(set(&[jwk(Kind::Rsa, "r1"), jwk(Kind::Ec, "e2")]));
    c.send(json!({"type": "refresh", "token": signed(Kind::Ec, Some("e2"), "a"), "request_id": "f"}))
        .await;
    let ack = c.expect("ack").await;
    assert_eq!(ack["request_id"], "f", "{ack}");
    node.stop().await;
}

#[tokio::test]
async fn a_refresh_drops_removed_keys_and_an_unreachable_endpoint_keeps_the_last_good_set() {
    let idp = Idp::start(set(&[jwk(Kind::Rsa, "r1"), jwk(Kind::Ec, "e1")])).await;
    let node = Node::start(jwks_config(&idp.url, 1)).await;
    assert!(accepted(&node, &signed(Kind::Rsa, Some("r1"), "a")).await);
    idp.set(set(&[jwk(Kind::Ec, "e1")]));
    let seen = idp.fetches();
    eventually("a refresh", async || idp.fetches() > seen).await;
    assert!(
        !accepted(&node, &signed(Kind::Rsa, Some("r1"), "a")).await,
        "removed from the set"
    );

    idp.fail();
    eventually("a failed refresh counted", async || {
        metric_value(&node.metrics().await, "wsgw_jwks_refresh_failures_total").unwrap_or(0.0) >= 1.0
    })
    .await;
    assert!(
        accepted(&node, &signed(Kind::Ec, Some("e1"), "b")).await,
        "last good set kept"
    );
    node.stop().await;
}

#[tokio::test]
async fn a_jwks_file_is_read_again_when_it_changes() {
    let path = std::env::temp_dir().join(format!("wsgw-jwks-test-{}.json", std::process::id()));
    std::fs::write(&path, set(&[jwk(Kind::Oct, "o1")]).to_string()).unwrap();
    let node = Node::start(wsgw::Config {
        jwt_secret: None,
        jwt_jwks_file: Some(path.clone()),
        ..config()
    })
    .await;
    assert!(accepted(&node, &signed(Kind::Oct, Some("o1"), "a")).await);
    assert!(
        !accepted(&node, &signed(Kind::Oct, None, "a")).await,
        "no static key: a kid is needed"
    );
    // Use up the on-demand reload (one per 10 s), so only the change check can find the new key.
    assert!(!accepted(&node, &signed(Kind::Oct, Some("unknown"), "a")).await);
    std::fs::write(&path, set(&[jwk(Kind::Rsa, "rotated-r2")]).to_string()).unwrap();
    let started = tokio::time::Instant::now();
    eventually("the new file read", async || {
        accepted(&node, &signed(Kind::Rsa, Some("rotated-r2"), "b")).await
    })
    .await;
    assert!(started.elapsed() <= Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(!accepted(&node, &signed(Kind::Oct, Some("o1"), "a")).await);
    node.stop().await;
    let _ = std::fs::remove_file(&path);
}
