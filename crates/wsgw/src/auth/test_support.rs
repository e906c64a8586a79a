//! Test-only fixtures shared by the auth unit tests: a secret, RSA and EC key pairs, a fixed clock, and helpers
//! that build an authenticator and sign tokens with them.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

use super::{AuthConfig, AuthError, Authenticator, Claims, Permissions};

pub(super) const SECRET: &str = "test-secret-of-a-reasonable-length";

// Generated once with `openssl genpkey` / `openssl pkey -pubout`; test-only keys. The private
// ones are files in tests/keys/, which tests/jwks.rs reads too.
pub(super) const RSA_PRIVATE_PEM: &str = include_str!("../../tests/keys/rsa_private.pem");
pub(super) const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAmkile2dcxeqcreLJdY8F
rBYrvxGMTk9mmm4HTVzxqW/2CHd/gI+8dkkiZOXM3Wa7sPpf4QIyAaR/3gW8f0DV
Pbh9ZeizZowaf7p0LsGPgJyPYxjWwq5Hm6wxxmU9jz98zp3qf/CUzotuMwDly6Rn
XyRVzfyLwQonoOsrnjWsSBEcM8wNnpHAsHB1lMt1Jv8w76NbgnHEmhILN+xhxJqq
X4HRxwGp5Sten2tqg+e8KlgHzdoH4D3xG537wQ4ieuRU4xR/MVuG/wwuMx1WXfiG
64+iW+vl+NMSIFYlPEYMcj/nt+0NdHU8s2xVVJXh2oQ+lb8jsvJdMyXmbO4PmBKG
KQIDAQAB
-----END PUBLIC KEY-----
";
pub(super) const EC_PRIVATE_PEM: &str = include_str!("../../tests/keys/ec_private.pem");
pub(super) const EC_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEW8//gy7LbzxW1vX2uPmIWucq6Ana
8dE9WxCVejWsJGCx2/H0LCOHIIzqS7aIbdWYYnJBPNWD/nglTHuE0+mptg==
-----END PUBLIC KEY-----
";
pub(super) const EC_P384_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEi08dJ/bbGrSrSmLUl9wSFm1bMbPl++kX
qqht0dpwELOlLtlVNHb/MFk4CXedp6IxH+udo/HiICqwG4AHd8/yX4drlxAzKf8O
eRwnS3Y+eza3Yf2QEN1VTwL/dyagV+Tl
-----END PUBLIC KEY-----
";

/// The gateway's fixed clock for stories that care about time.
pub(super) const NOW: u64 = 1_800_000_000;

pub(super) fn config() -> AuthConfig {
    AuthConfig {
        secret: Some(SECRET.to_owned()),
        public_key_pem: None,
        audience: None,
        issuer: None,
        leeway_s: 30,
        require_exp: false,
    }
}

pub(super) fn key_config(pem: &str) -> AuthConfig {
    AuthConfig {
        secret: None,
        public_key_pem: Some(pem.as_bytes().to_vec()),
        ..config()
    }
}

pub(super) fn authenticator(cfg: AuthConfig) -> Authenticator {
    Authenticator::new(&cfg).expect("test config is valid")
}

pub(super) fn sign(alg: Algorithm, key: &EncodingKey, claims: Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, key).expect("test signing works")
}

pub(super) fn hs(claims: Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()), claims)
}

pub(super) fn perms(subscribe: &[&str], publish: &[&str]) -> Permissions {
    Permissions {
        subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        publish: publish.iter().map(|s| s.to_string()).collect(),
        actions: None,
    }
}

pub(super) fn invalid_msg(result: Result<Claims, AuthError>) -> String {
    match result {
        Err(AuthError::Invalid(msg)) => msg,
        other => panic!("expected Invalid, got {other:?}"),
    }
}
