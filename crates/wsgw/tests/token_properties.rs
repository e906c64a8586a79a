//! Property tests (proptest) of token verification, through the gateway's own authenticator
//! (`Gateway::new` from a `Config`, as a node builds it): random text, mangled tokens, tokens
//! signed with another key or another algorithm, and tokens with arbitrary claims. Nothing
//! panics, and nothing is accepted that was not signed with the node's key and valid.

use crate::common;

use std::sync::Arc;

use common::{SECRET, config, now_s};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use wsgw::Gateway;
use wsgw::auth::Claims;

fn cases(n: u32) -> ProptestConfig {
    let default = ProptestConfig::default();
    ProptestConfig {
        // A fixed seed, so the suite is the same on every run; `PROPTEST_RNG_SEED=<n>` explores
        // others (CONTRIBUTING.md).
        rng_seed: match std::env::var_os("PROPTEST_RNG_SEED") {
            Some(_) => default.rng_seed,
            None => proptest::test_runner::RngSeed::Fixed(20_261_201),
        },
        cases: n,
        failure_persistence: None,
        ..default
    }
}

/// One gateway (memory broker) per test binary: only its authenticator is used.
fn gateway() -> Arc<Gateway> {
    static GW: std::sync::OnceLock<Arc<Gateway>> = std::sync::OnceLock::new();
    GW.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(Gateway::new(config()))
            .expect("a memory node")
    })
    .clone()
}

fn verify(token: &str) -> Result<Claims, wsgw::auth::AuthError> {
    gateway().auth.verify(token)
}

fn sign(claims: &Value, key: &[u8], alg: Algorithm) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(key)).unwrap()
}

/// base64url without padding, as JWTs use it.
fn b64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn good_claims() -> Value {
    json!({"sub": "alice", "exp": now_s() + 3600, "channels": ["news:*"], "publish": ["chat"]})
}

/// Claim values of every JSON type, with the edges of numeric dates.
fn claim_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(vec![0u64, 1, u64::MAX, i64::MAX as u64, now_s() + 3600]).prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-z*:_ .@\\u{0}-]{0,140}".prop_map(Value::from),
        prop::collection::vec("[a-z*:]{0,10}", 0..4).prop_map(Value::from),
        prop::collection::vec(any::<i64>(), 0..3).prop_map(Value::from),
    ]
}

fn claims_object() -> impl Strategy<Value = Value> {
    let key = prop::sample::select(vec![
        "sub", "exp", "nbf", "iat", "channels", "publish", "actions", "aud", "iss", "jti",
    ]);
    prop::collection::btree_map(key, claim_value(), 0..8)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect::<Map<_, _>>()))
}

/// What the gateway documents for an accepted token.
fn assert_sound(claims: &Claims) {
    assert!(
        (1..=128).contains(&claims.sub.len())
            && claims
                .sub
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:@=/-".contains(&b)),
        "accepted sub {:?}",
        claims.sub
    );
    if let Some(exp) = claims.exp {
        assert!(exp.saturating_add(5) >= now_s(), "accepted an expired token: exp {exp}");
    }
}

proptest! {
    #![proptest_config(cases(300))]

    #[test]
    fn random_text_is_never_a_token(text in ".{0,300}") {
        prop_assert!(verify(&text).is_err());
    }

    #[test]
    fn random_three_part_tokens_are_refused(h in claims_object(), p in claims_object(), sig in prop::collection::vec(any::<u8>(), 0..64)) {
        let token = format!("{}.{}.{}", b64(h.to_string().as_bytes()), b64(p.to_string().as_bytes()), b64(&sig));
        prop_assert!(verify(&token).is_err());
    }

    #[test]
    fn a_mangled_token_is_refused_or_says_exactly_what_was_signed(
        cut_a in 0usize..400, cut_b in 0usize..400, junk in "[A-Za-z0-9_.=-]{0,6}"
    ) {
        let token = sign(&good_claims(), SECRET.as_bytes(), Algorithm::HS256);
        let original = verify(&token).expect("the unmangled token is valid");
        let (a, b) = (cut_a.min(token.len()), cut_b.min(token.len()));
        let (a, b) = (a.min(b), a.max(b));
        let mangled = format!("{}{}{}", &token[..a], junk, &token[b..]);
        if let Ok(claims) = verify(&mangled) {
            // Only an edit that changes nothing signed (say, the same bytes put back) may pass.
            prop_assert_eq!(claims, original.clone());
        }
    }

    #[test]
    fn any_claims_signed_with_another_key_or_algorithm_are_refused(
        claims in claims_object(),
        key in prop::collection::vec(any::<u8>(), 1..48),
        alg in prop::sample::select(vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]),
    ) {
        prop_assume!(!(key == SECRET.as_bytes() && alg == Algorithm::HS256));
        prop_assert!(verify(&sign(&claims, &key, alg)).is_err());
        // The node's own secret with another HMAC algorithm is refused too.
        if alg != Algorithm::HS256 {
            prop_assert!(verify(&sign(&claims, SECRET.as_bytes(), alg)).is_err());
        }
    }

    #[test]
    fn alg_none_is_refused_whatever_the_claims(claims in claims_object(), alg in "(none|None|NONE|nOnE|)") {
        let header = json!({"alg": alg, "typ": "JWT"});
        let token = format!("{}.{}.", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        prop_assert!(verify(&token).is_err());
    }

    #[test]
    fn arbitrary_claims_signed_with_the_key_never_panic_and_pass_only_when_sound(claims in claims_object()) {
        if let Ok(c) = verify(&sign(&claims, SECRET.as_bytes(), Algorithm::HS256)) {
            assert_sound(&c);
        }
    }
}

#[test]
fn the_forging_helper_encodes_base64url_like_jwts() {
    assert_eq!(b64(b"hello"), "aGVsbG8");
    assert_eq!(b64(&[0xfb, 0xff]), "-_8");
    let token = sign(&good_claims(), SECRET.as_bytes(), Algorithm::HS256);
    let header = token.split('.').next().unwrap();
    assert_eq!(b64(&[0u8; 0]), "");
    assert!(verify(&token).is_ok());
    assert_eq!(b64(br#"{"typ":"JWT","alg":"HS256"}"#), header);
}
