//! Authentication: verifies client JWTs (HS256/RS256/ES256) into [`Claims`] and decides channel [`Permissions`].
//! It must never accept a token it cannot verify with a configured key of the token's exact algorithm, and never let
//! a wildcard grant reach another user's private `user:`/`connection:` channels.
//!
//! This file owns the configuration, the errors and the [`Authenticator`] with its keys (which key may check which
//! algorithm). The claims a token must carry are checked in `claims.rs`, what they grant in `permissions.rs`, and
//! where a token is found on a request (and how `wsgw --dev` and tests sign one) in `request.rs`.

mod claims;
mod permissions;
mod request;
#[cfg(test)]
mod test_support;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};
use wsgw_protocol::{CloseCode, ErrorCode};

use claims::check_claims;
pub use claims::{Claims, MAX_SUB_LEN};
pub use permissions::{Permissions, could_be_private};
pub use request::{SUBPROTOCOL_TOKEN_PREFIX, TokenSource, sign_hs256, token_from_request};
pub use wsgw_protocol::{CONNECTION_PREFIX, USER_PREFIX};

/// Longest token accepted, in bytes. Real tokens are far smaller; the cap bounds the work a client can ask for.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// How tokens are verified. At least one of `secret` and `public_key_pem` must be set.
#[derive(Clone)]
pub struct AuthConfig {
    /// HS256 shared secret (`WSGW_JWT_SECRET`).
    pub secret: Option<String>,
    /// RS256 or ES256 public key PEM (contents of `WSGW_JWT_PUBLIC_KEY_FILE`); RSA vs EC is detected from the PEM.
    pub public_key_pem: Option<Vec<u8>>,
    /// If set, `aud` must equal it (string claim) or contain it (array claim).
    pub audience: Option<String>,
    /// If set, `iss` must equal it.
    pub issuer: Option<String>,
    /// Clock leeway for `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
    /// If true, tokens without `exp` are rejected.
    pub require_exp: bool,
}

// Hand-written so the secret never lands in logs via `{:?}`.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .field(
                "public_key_pem",
                &self.public_key_pem.as_ref().map(|pem| format!("{} bytes", pem.len())),
            )
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway_s", &self.leeway_s)
            .field("require_exp", &self.require_exp)
            .finish()
    }
}

/// Why the authenticator could not be built from its configuration (a startup error).
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// Neither a secret nor a public key was configured.
    #[error("no JWT key configured: set WSGW_JWT_SECRET (HS256) and/or WSGW_JWT_PUBLIC_KEY_FILE (RS256/ES256)")]
    NoKey,
    /// The HS256 secret is the empty string.
    #[error("WSGW_JWT_SECRET is set but empty")]
    EmptySecret,
    /// The public key file could not be read.
    #[error("cannot read JWT public key file {}: {source}", path.display())]
    ReadKeyFile {
        /// The file that was asked for.
        path: PathBuf,
        /// Why reading it failed.
        source: std::io::Error,
    },
    /// The PEM holds a private key where a public key belongs.
    #[error(
        "the JWT public key PEM holds a private key; configure its public half instead \
         (`openssl pkey -in key.pem -pubout`)"
    )]
    PrivateKey,
    /// The PEM is not a usable RSA or EC P-256 public key.
    #[error("the JWT public key PEM is not a usable RSA or EC P-256 public key: {0}")]
    InvalidKey(String),
}

/// Reads the PEM named by `WSGW_JWT_PUBLIC_KEY_FILE`, for [`AuthConfig::public_key_pem`].
pub fn read_public_key_file(path: impl AsRef<Path>) -> Result<Vec<u8>, AuthSetupError> {
    let path = path.as_ref();
    std::fs::read(path).map_err(|source| AuthSetupError::ReadKeyFile {
        path: path.to_owned(),
        source,
    })
}

/// Why a token was refused. The message of [`AuthError::Invalid`] is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was presented.
    #[error("missing token")]
    Missing,
    /// Malformed, bad signature, algorithm not accepted, wrong `aud`/`iss`, `nbf` in the future, bad `sub` or
    /// permission claims.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// `exp` has passed (beyond the leeway): the client should get a fresh token.
    #[error("token expired")]
    Expired,
}

impl AuthError {
    /// The code for an `error` frame.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Missing | Self::Invalid(_) => ErrorCode::Unauthorized,
            Self::Expired => ErrorCode::TokenExpired,
        }
    }

    /// The close code when the connection is refused or ended for this reason.
    pub fn close_code(&self) -> CloseCode {
        match self {
            Self::Missing | Self::Invalid(_) => CloseCode::Unauthorized,
            Self::Expired => CloseCode::TokenExpired,
        }
    }

    /// `"missing"`, `"invalid"` or `"expired"`: a metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid(_) => "invalid",
            Self::Expired => "expired",
        }
    }
}

const UNKNOWN_KID: &str = "unknown kid";

fn invalid(message: &str) -> AuthError {
    AuthError::Invalid(message.to_owned())
}

/// Verifies tokens. Cheap to clone (the keys are shared).
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    // One entry per accepted algorithm, each with its own key: the token header only selects among these, so it can
    // never make us check an HS256 MAC keyed with public key bytes (algorithm confusion).
    keys: Vec<VerifyKey>,
    // Keys selected by the token's `kid` (`WSGW_JWT_JWKS_*`); each is tied to one algorithm too.
    jwks: Option<Arc<crate::jwks::Jwks>>,
    audience: Option<String>,
    issuer: Option<String>,
    leeway_s: u64,
    require_exp: bool,
}

/// One verification key and the one algorithm it may be used with.
pub struct VerifyKey {
    alg: Algorithm,
    key: DecodingKey,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithms", &self.accepted_algorithms().collect::<Vec<_>>())
            .field("audience", &self.inner.audience)
            .field("issuer", &self.inner.issuer)
            .field("leeway_s", &self.inner.leeway_s)
            .field("require_exp", &self.inner.require_exp)
            .finish()
    }
}

impl Authenticator {
    /// Builds the verifier. With both a secret and a public key, HS256 tokens are checked with the secret and
    /// RS256/ES256 tokens (whichever the PEM's key type allows) with the public key.
    pub fn new(cfg: &AuthConfig) -> Result<Self, AuthSetupError> {
        Self::with_jwks(cfg, None)
    }

    /// Like [`new`](Self::new), plus a JWKS: a token with a `kid` is checked against the JWKS
    /// key of that `kid` only, one without a `kid` against the static keys only.
    pub fn with_jwks(cfg: &AuthConfig, jwks: Option<Arc<crate::jwks::Jwks>>) -> Result<Self, AuthSetupError> {
        let mut keys = Vec::with_capacity(2);
        match cfg.secret.as_deref() {
            None => {}
            Some("") => return Err(AuthSetupError::EmptySecret),
            Some(secret) => keys.push(VerifyKey::new(
                Algorithm::HS256,
                DecodingKey::from_secret(secret.as_bytes()),
            )),
        }
        if let Some(pem) = &cfg.public_key_pem {
            let (alg, key) = parse_public_key(pem)?;
            keys.push(VerifyKey::new(alg, key));
        }
        if keys.is_empty() && jwks.is_none() {
            return Err(AuthSetupError::NoKey);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                keys,
                jwks,
                audience: cfg.audience.clone(),
                issuer: cfg.issuer.clone(),
                leeway_s: cfg.leeway_s,
                require_exp: cfg.require_exp,
            }),
        })
    }

    /// The algorithms tokens may use (`"HS256"`, `"RS256"`, `"ES256"`), for the startup log.
    pub fn accepted_algorithms(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.inner.keys.iter().map(|k| alg_name(k.alg))
    }

    /// Verifies `token` (signature, algorithm, `aud`, `iss`, `nbf`, `exp`) and extracts its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.verify_at(token, unix_now())
    }

    /// [`verify`](Self::verify), except that a `kid` missing from the JWKS first reloads the
    /// set (at most once per 10 s; see `jwks.rs`), so a key rotated in is accepted at once.
    pub async fn verify_fresh(&self, token: &str) -> Result<Claims, AuthError> {
        match self.verify(token) {
            Err(AuthError::Invalid(reason)) if reason == UNKNOWN_KID => match &self.inner.jwks {
                Some(jwks) if jwks.reload_for_unknown_kid().await => self.verify(token),
                _ => Err(AuthError::Invalid(reason)),
            },
            other => other,
        }
    }

    fn verify_at(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(invalid("token too long"));
        }
        // `alg: none` and algorithms jsonwebtoken does not know fail to parse here already.
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed token"))?;
        let jwks_key;
        let vk = match (&header.kid, &self.inner.jwks) {
            (Some(kid), Some(jwks)) => {
                jwks_key = jwks.key(kid).ok_or_else(|| invalid(UNKNOWN_KID))?;
                if jwks_key.alg != header.alg {
                    return Err(AuthError::Invalid(format!(
                        "algorithm {:?} not accepted for this kid",
                        header.alg
                    )));
                }
                &*jwks_key
            }
            _ => self.inner.keys.iter().find(|k| k.alg == header.alg).ok_or_else(|| {
                match self.inner.keys.is_empty() {
                    true => invalid("token has no kid"),
                    false => AuthError::Invalid(format!("algorithm {:?} not accepted", header.alg)),
                }
            })?,
        };
        // The signature is checked over `header.payload`, then the payload is read once: what
        // `jsonwebtoken::decode` does, without decoding the header twice more and the claims
        // twice (our `Validation` checks nothing but the signature and algorithm anyway).
        let (message, signature) = token.rsplit_once('.').ok_or_else(|| invalid("malformed token"))?;
        let (_, payload) = message.rsplit_once('.').ok_or_else(|| invalid("malformed token"))?;
        if !jsonwebtoken::crypto::verify(signature, message.as_bytes(), &vk.key, vk.alg).map_err(jwt_error)? {
            return Err(invalid("bad signature"));
        }
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| invalid("malformed token"))?;
        let claims: Map<String, Value> =
            serde_json::from_slice(&payload).map_err(|_| invalid("claims are not a JSON object"))?;
        check_claims(&claims, &self.inner, now)
    }
}

impl Authenticator {
    /// The grants a connect hook answered (`user_id`, `channels`, `publish`, `actions`,
    /// `expires_at`), checked exactly like a token's `sub`, `channels`, `publish`, `actions` and
    /// `exp`: the same patterns, the same private-channel rules, the same expiry leeway. `iss`,
    /// `aud`, `nbf` and `jwt_require_exp` are about tokens and do not apply.
    pub fn hook_claims(&self, answer: &Map<String, Value>) -> Result<Claims, AuthError> {
        let renamed = [
            ("user_id", "sub"),
            ("expires_at", "exp"),
            ("channels", "channels"),
            ("publish", "publish"),
            ("actions", "actions"),
        ];
        let claims: Map<String, Value> = renamed
            .into_iter()
            .filter_map(|(from, to)| answer.get(from).map(|v| (to.to_owned(), v.clone())))
            .collect();
        let rules = Inner {
            keys: Vec::new(),
            jwks: None,
            audience: None,
            issuer: None,
            leeway_s: self.inner.leeway_s,
            require_exp: false,
        };
        check_claims(&claims, &rules, unix_now())
    }
}

impl VerifyKey {
    /// Only the signature and the algorithm are checked with the key (`verify_at`);
    /// `check_claims` does the rest, so that it controls which failure is `Expired`, treats an
    /// absent `aud` as we document, and cannot overflow on a huge leeway.
    pub(crate) fn new(alg: Algorithm, key: DecodingKey) -> Self {
        Self { alg, key }
    }
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        _ => "other",
    }
}

fn parse_public_key(pem: &[u8]) -> Result<(Algorithm, DecodingKey), AuthSetupError> {
    let text = std::str::from_utf8(pem).map_err(|_| AuthSetupError::InvalidKey("not PEM text".to_owned()))?;
    let label = text
        .split_once("-----BEGIN ")
        .and_then(|(_, rest)| rest.split_once("-----"))
        .map(|(label, _)| label)
        .ok_or_else(|| AuthSetupError::InvalidKey("no `-----BEGIN ...-----` line".to_owned()))?;
    // jsonwebtoken would happily take an RSA private key's DER and then fail every verification.
    if label.contains("PRIVATE") {
        return Err(AuthSetupError::PrivateKey);
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        // from_rsa_pem only checks the ASN.1 framing; extracting n and e proves the key itself decodes.
        Jwk::from_decoding_key(&key, Some(Algorithm::RS256))
            .map_err(|e| AuthSetupError::InvalidKey(format!("bad RSA key: {e}")))?;
        return Ok((Algorithm::RS256, key));
    }
    let key = DecodingKey::from_ec_pem(pem).map_err(|e| AuthSetupError::InvalidKey(e.to_string()))?;
    // Building an ES256 verifier decodes the point on P-256, so a P-384 (or otherwise wrong) key fails at startup
    // instead of on every token. The empty signature just makes the probe return Ok(false).
    jsonwebtoken::crypto::verify("", b"", &key, Algorithm::ES256)
        .map_err(|_| AuthSetupError::InvalidKey("EC key is not on curve P-256 (ES256)".to_owned()))?;
    Ok((Algorithm::ES256, key))
}

/// What `jsonwebtoken::crypto::verify` can fail on: a signature that is not base64url, or a key
/// that cannot verify the algorithm.
fn jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => invalid("algorithm not accepted"),
        _ => invalid("malformed token"),
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use jsonwebtoken::EncodingKey;
    use serde_json::json;

    #[test]
    fn a_valid_hs256_token_yields_its_claims_and_permissions() {
        let auth = authenticator(config());
        let exp = unix_now() + 3600;
        let token = sign_hs256(SECRET, "alice", &["project:*", "news"], &["chat:1"], Some(exp));

        let claims = auth.verify(&token).expect("valid token");

        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.exp, Some(exp));
        assert_eq!(claims.permissions, perms(&["project:*", "news"], &["chat:1"]));
        assert!(claims.permissions.can_subscribe("project:42"));
        assert!(claims.permissions.can_publish("chat:1"));
        assert!(!claims.permissions.can_publish("news"));
    }

    #[test]
    fn a_token_signed_with_another_secret_or_tampered_with_is_invalid() {
        let auth = authenticator(config());
        let forged = sign_hs256("someone-elses-secret", "alice", &["*"], &[], None);
        assert_eq!(invalid_msg(auth.verify(&forged)), "bad signature");

        // Swap in a payload that grants more, keeping the original signature.
        let genuine = sign_hs256(SECRET, "alice", &[], &[], None);
        let greedy = sign_hs256("x", "alice", &["*"], &["*"], None);
        let g: Vec<&str> = genuine.split('.').collect();
        let p: Vec<&str> = greedy.split('.').collect();
        let tampered = format!("{}.{}.{}", g[0], p[1], g[2]);
        assert_eq!(invalid_msg(auth.verify(&tampered)), "bad signature");
    }

    #[test]
    fn garbage_is_invalid_and_nothing_is_missing() {
        let auth = authenticator(config());
        assert_eq!(auth.verify(""), Err(AuthError::Missing));
        assert_eq!(auth.verify("   "), Err(AuthError::Missing));
        for garbage in [
            "abc",
            "a.b.c",
            "a.b",
            "....",
            "eyJhbGciOiJIUzI1NiJ9.!!!.sig",
            "Bearer x",
        ] {
            assert!(matches!(auth.verify(garbage), Err(AuthError::Invalid(_))), "{garbage}");
        }
        assert_eq!(
            invalid_msg(auth.verify(&"a".repeat(MAX_TOKEN_LEN + 1))),
            "token too long"
        );

        // Claims that are valid JSON but not an object.
        let header = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"; // {"alg":"HS256","typ":"JWT"}
        let signed = |payload: &str| {
            let message = format!("{header}.{payload}");
            let sig = jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &EncodingKey::from_secret(SECRET.as_bytes()),
                Algorithm::HS256,
            )
            .expect("sign");
            format!("{message}.{sig}")
        };
        // [1,2,3]
        assert_eq!(
            invalid_msg(auth.verify(&signed("WzEsMiwzXQ"))),
            "claims are not a JSON object"
        );
        // Signed, but not base64url without padding: {"sub":"a"} padded, and not base64 at all.
        for payload in ["eyJzdWIiOiJhIn0=", "!!!", "eyJzdWIiOiJhIn0.x"] {
            assert_eq!(
                invalid_msg(auth.verify(&signed(payload))),
                "malformed token",
                "{payload}"
            );
        }
        assert_eq!(
            auth.verify(&signed("eyJzdWIiOiJhIn0")).expect("the same, unpadded").sub,
            "a"
        );

        let err = auth.verify("abc").expect_err("invalid");
        assert_eq!(
            (err.code(), err.close_code(), err.label()),
            (ErrorCode::Unauthorized, CloseCode::Unauthorized, "invalid")
        );
        let missing = AuthError::Missing;
        assert_eq!(
            (missing.code(), missing.close_code().code(), missing.label()),
            (ErrorCode::Unauthorized, 4001, "missing")
        );
        assert_eq!(AuthError::Expired.close_code().code(), 4003);
    }

    #[test]
    fn alg_none_and_other_algorithms_are_invalid() {
        let auth = authenticator(config());
        // {"alg":"none","typ":"JWT"} . {"sub":"alice","channels":["*"]} . (no signature)
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImNoYW5uZWxzIjpbIioiXX0.";
        assert!(matches!(auth.verify(none), Err(AuthError::Invalid(_))));

        let hs512 = sign(
            Algorithm::HS512,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            json!({"sub": "alice"}),
        );
        assert_eq!(invalid_msg(auth.verify(&hs512)), "algorithm HS512 not accepted");

        // A valid RS256 token is no good when only the secret is configured.
        let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).expect("rsa key");
        let rs256 = sign(Algorithm::RS256, &rsa, json!({"sub": "alice"}));
        assert_eq!(invalid_msg(auth.verify(&rs256)), "algorithm RS256 not accepted");
    }

    #[test]
    fn rs256_and_es256_tokens_verify_with_the_configured_public_key() {
        let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).expect("rsa key");
        let ec = EncodingKey::from_ec_pem(EC_PRIVATE_PEM.as_bytes()).expect("ec key");
        let claims = json!({"sub": "alice", "channels": ["news"], "exp": NOW + 60});

        let rsa_auth = authenticator(key_config(RSA_PUBLIC_PEM));
        assert_eq!(rsa_auth.accepted_algorithms().collect::<Vec<_>>(), ["RS256"]);
        let rs = rsa_auth
            .verify_at(&sign(Algorithm::RS256, &rsa, claims.clone()), NOW)
            .expect("RS256 verifies");
        assert_eq!((rs.sub.as_str(), rs.exp), ("alice", Some(NOW + 60)));
        assert!(rs.permissions.can_subscribe("news"));
        assert_eq!(
            rsa_auth.verify_at(&sign(Algorithm::RS256, &rsa, claims.clone()), NOW + 1000),
            Err(AuthError::Expired)
        );

        let ec_auth = authenticator(key_config(EC_PUBLIC_PEM));
        assert_eq!(ec_auth.accepted_algorithms().collect::<Vec<_>>(), ["ES256"]);
        assert!(
            ec_auth
                .verify_at(&sign(Algorithm::ES256, &ec, claims.clone()), NOW)
                .is_ok()
        );

        // Each key only serves its own algorithm.
        assert!(matches!(
            rsa_auth.verify_at(&sign(Algorithm::ES256, &ec, claims.clone()), NOW),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            ec_auth.verify_at(&sign(Algorithm::RS256, &rsa, claims.clone()), NOW),
            Err(AuthError::Invalid(_))
        ));
        let ps256 = sign(Algorithm::PS256, &rsa, claims.clone());
        assert!(matches!(rsa_auth.verify_at(&ps256, NOW), Err(AuthError::Invalid(_))));
        let hs = hs(claims.clone());
        assert_eq!(
            invalid_msg(rsa_auth.verify_at(&hs, NOW)),
            "algorithm HS256 not accepted"
        );
    }

    #[test]
    fn with_both_a_secret_and_a_key_either_kind_of_token_is_accepted() {
        let auth = authenticator(AuthConfig {
            public_key_pem: Some(EC_PUBLIC_PEM.as_bytes().to_vec()),
            ..config()
        });
        assert_eq!(auth.accepted_algorithms().collect::<Vec<_>>(), ["HS256", "ES256"]);
        let ec = EncodingKey::from_ec_pem(EC_PRIVATE_PEM.as_bytes()).expect("ec key");
        assert!(
            auth.verify_at(&sign(Algorithm::ES256, &ec, json!({"sub": "ec-user"})), NOW)
                .is_ok()
        );
        assert!(auth.verify_at(&hs(json!({"sub": "hs-user"})), NOW).is_ok());
    }

    #[test]
    fn an_hs256_token_keyed_with_the_public_key_pem_is_rejected() {
        // The classic algorithm-confusion forgery: the attacker knows the public key and uses it as an HMAC secret.
        let forged = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(RSA_PUBLIC_PEM.as_bytes()),
            json!({"sub": "mallory", "channels": ["*"]}),
        );
        let key_only = authenticator(key_config(RSA_PUBLIC_PEM));
        assert_eq!(
            invalid_msg(key_only.verify_at(&forged, NOW)),
            "algorithm HS256 not accepted"
        );

        let both = authenticator(AuthConfig {
            public_key_pem: Some(RSA_PUBLIC_PEM.as_bytes().to_vec()),
            ..config()
        });
        assert_eq!(invalid_msg(both.verify_at(&forged, NOW)), "bad signature");
    }

    #[test]
    fn misconfiguration_is_reported_at_startup() {
        let none = AuthConfig {
            secret: None,
            ..config()
        };
        assert!(matches!(Authenticator::new(&none), Err(AuthSetupError::NoKey)));
        let empty = AuthConfig {
            secret: Some(String::new()),
            ..config()
        };
        assert!(matches!(Authenticator::new(&empty), Err(AuthSetupError::EmptySecret)));
        for private in [RSA_PRIVATE_PEM, EC_PRIVATE_PEM] {
            assert!(matches!(
                Authenticator::new(&key_config(private)),
                Err(AuthSetupError::PrivateKey)
            ));
        }
        for bad in [
            "",
            "not a pem",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            EC_P384_PUBLIC_PEM,
        ] {
            let err = Authenticator::new(&key_config(bad)).expect_err(bad);
            assert!(matches!(err, AuthSetupError::InvalidKey(_)), "{bad}: {err:?}");
        }
        let p384 = Authenticator::new(&key_config(EC_P384_PUBLIC_PEM)).expect_err("P-384");
        assert!(p384.to_string().contains("P-256"), "{p384}");

        let err = read_public_key_file("/nonexistent/wsgw-key.pem").expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/wsgw-key.pem"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let cfg = config();
        assert!(!format!("{cfg:?}").contains(SECRET));
        let auth = authenticator(cfg);
        let shown = format!("{auth:?}");
        assert!(!shown.contains(SECRET) && shown.contains("HS256"), "{shown}");
    }
}
