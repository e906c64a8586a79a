//! Test-only fixtures shared by the auth unit tests: a secret, RSA and EC key pairs, a fixed clock, and helpers
//! that build an authenticator and sign tokens with them.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

use super::{AuthConfig, AuthError, Authenticator, Claims, Permissions};

pub(super) const SECRET: &str = "test-secret-of-a-reasonable-length";

// Generated once with `openssl genpkey` / `openssl pkey -pubout`; test-only keys.
pub(super) const RSA_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCaSKV7Z1zF6pyt
4sl1jwWsFiu/EYxOT2aabgdNXPGpb/YId3+Aj7x2SSJk5czdZruw+l/hAjIBpH/e
Bbx/QNU9uH1l6LNmjBp/unQuwY+AnI9jGNbCrkebrDHGZT2PP3zOnep/8JTOi24z
AOXLpGdfJFXN/IvBCieg6yueNaxIERwzzA2ekcCwcHWUy3Um/zDvo1uCccSaEgs3
7GHEmqpfgdHHAanlK16fa2qD57wqWAfN2gfgPfEbnfvBDiJ65FTjFH8xW4b/DC4z
HVZd+Ibrj6Jb6+X40xIgViU8RgxyP+e37Q10dTyzbFVUleHahD6VvyOy8l0zJeZs
7g+YEoYpAgMBAAECggEAN5UlfQRbcXgY8zJJhv88OWeRYhgV1p6XZdpu6gmqjHLo
DdvTRQNDj8/AQt5hRIA+7T7+bMdIMbxMTrX9V1EJod9F2gGQJEkkQNDxC2kzZE/C
/p4TvPZhmO1bz1Bo8aMbOSq+MVKAobqsvFY983Qqw6WI/hlWVfjtFvWydKB8jUeB
BvgkRp5yvb8j4hfzpxiRSuEto/W+QwGjGYNpGR7Xhf8K7vfzhhhfFXK1SjeZ3bF4
z3Ir4h0wavuRtBhjZG1esoXRyizaHgFrHEF188ZXks8qYBL9j9/YV6XC1AJBkBOU
MgPyQ+oZ11JFzRmq9HjVf+OlVCkKPQnAsa7z4+5yawKBgQDYyFW9/oHPCsMc4uve
1CiMDZPG9Vg/Ve1nkjvgRHLhpWWZY3zO587/1zuDYoVbO6AXzdbeGWG73hQiAFzQ
5X+8xNXyyJUMXnjTX1GgvcofLKaLcUyUZ1o4tlfR+2gWWwSznHtxlYkTtfMvNydB
YZCSY8wIcFcYggkQJFMkwnkLGwKBgQC2MdvcSK3XX5Su+PhnP/FZxtXX0T81CI2Y
RCjtqTTN9ddyOoj5yEKZzOaHNjxhNhH5hVE7ZJp8KQISWtorHw8cCqgsjLNqHCuf
P3T3Vb5Pch1uKiEMnE4Lrjmbic308BUYGuZuBjOOW9dC+Vki2obpFb2uthT9I/U5
9IkCiaHkCwKBgDkQ46FUMg+yoZIlGjpaVyInINOrGkPx9sDg+eobmrJTu98ZFW3S
D+fBXOVFNh3CIG6jvQBSZivyVhJtTgGfqHSkzD1RGAtdgykBWpeZ3m8+bckfVi1q
15E+Tvfz2n6oDyDI/KX121PY/d9cAXVwnYIryzYdfI/zCze4mDqBByQpAoGAG7Ee
Uq/1RDvx1FphHwhX/aY8EG5sZfoj01XgxqamMPvBwEnnUde/T7MWAs0ahkf6mWtK
+nUDCgYNm46VhGJXIJL6FrNX/bPEaZLyizlMELUuhfT/SvRi5GGZvetHE4h+HEjS
ZzyoD2YkJLjTdHm0ca7tQqXIMOWLO0DQpkMXCRsCgYAHBCEcaPv56OZdPRq1/RVT
LbW5e50rmqsS9iqjam7tag4cbgBVzZ3QDjPNkWGcTFD9q8u5ErsYxX15ZZ5qRrW9
q+1Lpa+DPWyPw0JMjLi9l83t+9fygjtXs7mtBxl5CY5WOQU60kS5JqTiqb6F2cED
Ol+vb8aySb5Wfn0KpaFshQ==
-----END PRIVATE KEY-----
";
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
pub(super) const EC_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgwus6hf+YD0UfG5q1
FqdMrzgklcKZldypRnzrY4p8QOihRANCAARbz/+DLstvPFbW9fa4+Yha5yroCdrx
0T1bEJV6NawkYLHb8fQsI4cgjOpLtoht1ZhickE81YP+eCVMe4TT6am2
-----END PRIVATE KEY-----
";
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
