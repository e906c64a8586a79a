//! The load tool signs its VUs' tokens itself (it does not link the gateway): they must be the
//! tokens the gateway's own signer makes, and the gateway must accept them.

use std::time::{SystemTime, UNIX_EPOCH};

use loadtest::engine::sign_hs256;
use wsgw::auth::{AuthConfig, Authenticator};

const SECRET: &str = "loadtest-token-secret-0123456789abcdef";

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn tokens_match_the_gateways_signer_byte_for_byte() {
    let exp = now_s() + 3600;
    for (channels, publish) in [
        (vec![], vec![]),
        (vec!["lt-topic-*"], vec![]),
        (vec!["lt-topic-*"], vec!["lt-topic-*"]),
    ] {
        // `iat` is the current second: retry if the two calls straddle a second boundary.
        let (ours, theirs) = (0..5)
            .map(|_| {
                let ours = sign_hs256(SECRET, "lt-7", &channels, &publish, exp);
                let theirs = wsgw::auth::sign_hs256(SECRET, "lt-7", &channels, &publish, Some(exp));
                (ours, theirs)
            })
            .find(|(a, b)| a == b)
            .expect("same token within five tries");
        assert_eq!(ours, theirs);
    }
}

#[test]
fn the_gateway_accepts_the_tokens() {
    let auth = Authenticator::new(&AuthConfig {
        secret: Some(SECRET.into()),
        public_key_pem: None,
        audience: None,
        issuer: None,
        leeway_s: 0,
        require_exp: true,
    })
    .expect("authenticator");
    let exp = now_s() + 3600;
    let claims = auth
        .verify(&sign_hs256(SECRET, "lt-3", &["lt-topic-*"], &["lt-topic-*"], exp))
        .expect("valid token");
    assert_eq!((claims.sub.as_str(), claims.exp), ("lt-3", Some(exp)));
    assert!(claims.permissions.can_subscribe("lt-topic-4"));
    assert!(claims.permissions.can_publish("lt-topic-4"));
    assert!(!claims.permissions.can_subscribe("other"));
    let claims = auth
        .verify(&sign_hs256(SECRET, "lt-4", &[], &[], exp))
        .expect("valid token");
    assert!(!claims.permissions.can_subscribe("lt-topic-0"));
    assert!(!claims.permissions.can_publish("lt-topic-0"));
    assert!(auth.verify(&sign_hs256("other-secret", "lt-5", &[], &[], exp)).is_err());
}
