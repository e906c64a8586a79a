//! Authentication: verifies client JWTs (HS256/RS256/ES256) into [`Claims`] and decides channel [`Permissions`].
//! It must never accept a token it cannot verify with a configured key of the token's exact algorithm, and never let
//! a wildcard grant reach another user's private `user:`/`connection:` channels.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use wsgw_protocol::{CloseCode, ErrorCode, glob_match, validate_channel};

/// Longest token accepted, in bytes. Real tokens are far smaller; the cap bounds the work a client can ask for.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Longest `sub`, in bytes.
pub const MAX_SUB_LEN: usize = 128;

pub use wsgw_protocol::{CONNECTION_PREFIX, USER_PREFIX};

/// Prefix of the `Sec-WebSocket-Protocol` item that carries the token (`bearer.<jwt>`). The gateway must never echo
/// this item back as the selected subprotocol.
pub const SUBPROTOCOL_TOKEN_PREFIX: &str = "bearer.";

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
    validation: Validation,
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
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &vk.key, &vk.validation).map_err(jwt_error)?;
        check_claims(&data.claims, &self.inner, now)
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

/// Whether `channel` (a name or a pattern) could be someone's private `user:` or `connection:`
/// channel: only grants name those, never a hook's say-so.
pub fn could_be_private(channel: &str) -> bool {
    could_match_prefixed(channel, USER_PREFIX) || could_match_prefixed(channel, CONNECTION_PREFIX)
}

impl VerifyKey {
    pub(crate) fn new(alg: Algorithm, key: DecodingKey) -> Self {
        let mut validation = Validation::new(alg);
        // jsonwebtoken only checks the signature and algorithm; `check_claims` does the rest so that it controls
        // which failure is `Expired`, treats absent `aud` as we document, and cannot overflow on a huge leeway.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        Self { alg, key, validation }
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

fn jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        // Not produced with our Validation, but if it ever is, it must stay distinguishable.
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::InvalidSignature => invalid("bad signature"),
        ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => invalid("algorithm not accepted"),
        ErrorKind::ImmatureSignature => invalid("token not yet valid (nbf)"),
        ErrorKind::InvalidAudience => invalid("wrong aud"),
        ErrorKind::InvalidIssuer => invalid("wrong iss"),
        ErrorKind::Json(_) => invalid("claims are not a JSON object"),
        _ => invalid("malformed token"),
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What a verified token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user id; the connection is subscribed to `user:<sub>`. 1..=128 bytes of `[A-Za-z0-9_.:@=/-]`.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: Option<u64>,
    /// What the user may subscribe and publish to.
    pub permissions: Permissions,
}

// Claim-by-claim checks. JSON `null` counts as absent for every optional claim. Expiry is checked last: `Expired`
// tells the client to fetch a fresh token and retry, which only helps if nothing else is wrong with it.
fn check_claims(claims: &Map<String, Value>, inner: &Inner, now: u64) -> Result<Claims, AuthError> {
    let exp = numeric_date(claims, "exp")?;
    let nbf = numeric_date(claims, "nbf")?;
    if let Some(issuer) = &inner.issuer
        && claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str())
    {
        return Err(invalid("wrong or missing iss"));
    }
    if let Some(audience) = &inner.audience {
        let ok = match claims.get("aud") {
            Some(Value::String(aud)) => aud == audience,
            Some(Value::Array(auds)) => auds.iter().any(|aud| aud.as_str() == Some(audience.as_str())),
            _ => false,
        };
        if !ok {
            return Err(invalid("wrong or missing aud"));
        }
    }
    let sub = subject(claims.get("sub"))?;
    let permissions = Permissions {
        subscribe: patterns(claims, "channels")?,
        publish: patterns(claims, "publish")?,
        actions: match claims.get("actions") {
            None | Some(Value::Null) => None,
            Some(_) => Some(patterns(claims, "actions")?),
        },
    };
    if exp.is_none() && inner.require_exp {
        return Err(invalid("token has no exp"));
    }
    if let Some(nbf) = nbf
        && nbf > now.saturating_add(inner.leeway_s)
    {
        return Err(invalid("token not yet valid (nbf)"));
    }
    if let Some(exp) = exp
        && exp.saturating_add(inner.leeway_s) < now
    {
        return Err(AuthError::Expired);
    }
    Ok(Claims { sub, exp, permissions })
}

// RFC 7519 NumericDate: seconds, possibly fractional; fractions are dropped.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, AuthError> {
    let bad = || AuthError::Invalid(format!("`{name}` must be a non-negative number"));
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(secs), _) => Ok(Some(secs)),
            // `as` saturates, so absurdly large dates become u64::MAX rather than wrapping.
            (None, Some(secs)) if secs.is_finite() && secs >= 0.0 => Ok(Some(secs as u64)),
            _ => Err(bad()),
        },
        Some(_) => Err(bad()),
    }
}

fn subject(value: Option<&Value>) -> Result<String, AuthError> {
    let sub = match value {
        Some(Value::String(sub)) => sub.clone(),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
        None | Some(Value::Null) => return Err(invalid("missing sub")),
        Some(_) => return Err(invalid("`sub` must be a string or an integer")),
    };
    // `sub` becomes the channel `user:<sub>`, so it must be a valid channel suffix.
    if sub.len() > MAX_SUB_LEN || validate_channel(&sub, false).is_err() {
        return Err(invalid("`sub` must be 1..=128 bytes of [A-Za-z0-9_.:@=/-]"));
    }
    Ok(sub)
}

// A malformed pattern rejects the whole token: silently dropping it would hide the issuer's bug.
fn patterns(claims: &Map<String, Value>, name: &str) -> Result<Vec<String>, AuthError> {
    let bad = || AuthError::Invalid(format!("`{name}` must be a list of channel patterns"));
    match claims.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(p) if validate_channel(p, true).is_ok() => Ok(p.clone()),
                _ => Err(bad()),
            })
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// Channel permissions from the token's `channels` (subscribe) and `publish` claims: lists of glob patterns where
/// `*` matches any run of bytes.
///
/// The rules:
/// - A permission pattern `P` grants a channel-or-pattern `C` when `glob_match(P, C)`. For a subscription pattern
///   that means `P` matches `C` literally, with `*` in `P` absorbing `*` in `C`; then every channel `C` matches is
///   also matched by `P`, so the grant is sound.
/// - `user:…` and `connection:…` channels are private to their owners (the gateway subscribes each connection to
///   its own `user:<sub>`, `connection:<id>` and `broadcast` by itself). If some `user:` channel could match `C`
///   (e.g. `user:7`, `user:*`, `u*`, `*`), the granting `P` must also have a literal text before its first `*` that
///   starts with `user:`; likewise for `connection:`. So `["*"]` grants every topic but no one's private channel,
///   `["user:*"]` grants all user channels (an admin/support claim), and `*` itself, which could match both kinds,
///   is never granted as a subscription.
/// - Publishing follows the same rules; a publish target is never a pattern.
/// - Names that are not valid channels (see `wsgw_protocol::validate_channel`) are never granted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Patterns from the `channels` claim (absent = empty).
    pub subscribe: Vec<String>,
    /// Patterns from the `publish` claim (absent = empty).
    pub publish: Vec<String>,
    /// Patterns from the `actions` claim: the backend `request` actions allowed. Absent (None)
    /// = every action; present = only those matching.
    pub actions: Option<Vec<String>>,
}

impl Permissions {
    /// May this user subscribe to `channel` (a channel name, or a pattern containing `*`)?
    pub fn can_subscribe(&self, channel: &str) -> bool {
        validate_channel(channel, true).is_ok() && grants(&self.subscribe, channel)
    }

    /// May this user send backend `request`s with this action?
    pub fn can_request(&self, action: &str) -> bool {
        match &self.actions {
            None => true,
            Some(allowed) => allowed.iter().any(|p| glob_match(p, action)),
        }
    }

    /// May this user publish to `channel` (never a pattern)?
    pub fn can_publish(&self, channel: &str) -> bool {
        validate_channel(channel, false).is_ok() && grants(&self.publish, channel)
    }
}

fn grants(patterns: &[String], channel: &str) -> bool {
    let private: Vec<&str> = [USER_PREFIX, CONNECTION_PREFIX]
        .into_iter()
        .filter(|prefix| could_match_prefixed(channel, prefix))
        .collect();
    patterns.iter().any(|pattern| {
        let literal = literal_prefix(pattern);
        glob_match(pattern, channel) && private.iter().all(|prefix| literal.starts_with(prefix))
    })
}

/// The text before the first `*` (all of it if there is none).
fn literal_prefix(pattern: &str) -> &str {
    pattern.find('*').map_or(pattern, |star| &pattern[..star])
}

// Could some channel starting with `prefix` match `channel`? Without `*` only if it starts with the prefix itself;
// with one, the first `*` can absorb whatever of the prefix its literal head does not cover, so it suffices that
// the head and the prefix agree on their common length.
fn could_match_prefixed(channel: &str, prefix: &str) -> bool {
    let head = literal_prefix(channel);
    head.starts_with(prefix) || (channel.contains('*') && prefix.starts_with(head))
}

/// Where the token came from on a WebSocket upgrade request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <jwt>`.
    Header,
    /// A `bearer.<jwt>` item of `Sec-WebSocket-Protocol` (browsers cannot set headers on WebSockets).
    Subprotocol,
    /// The `token` query parameter.
    Query,
}

/// Extracts the token, in order of preference: `Authorization: Bearer <jwt>` (scheme case-insensitive);
/// `Sec-WebSocket-Protocol: wsgw.v1, bearer.<jwt>` (comma-separated list, any order, whitespace tolerant); the
/// `token` query parameter value (already URL-decoded, passed in). Empty tokens count as absent.
pub fn token_from_request(headers: &HeaderMap, query_token: Option<&str>) -> Option<(String, TokenSource)> {
    let bearer = headers
        .get_all(AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(bearer_token);
    if let Some(token) = bearer {
        return Some((token.to_owned(), TokenSource::Header));
    }
    let subprotocol = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|item| {
            item.trim()
                .strip_prefix(SUBPROTOCOL_TOKEN_PREFIX)
                .filter(|t| !t.is_empty())
        });
    if let Some(token) = subprotocol {
        return Some((token.to_owned(), TokenSource::Subprotocol));
    }
    query_token
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| (t.to_owned(), TokenSource::Query))
}

fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(|c: char| c.is_ascii_whitespace())?;
    Some(rest.trim()).filter(|t| scheme.eq_ignore_ascii_case("bearer") && !t.is_empty())
}

/// Signs an HS256 token with `sub`, `channels`, `publish`, `iat` and optionally `exp` (used by `wsgw --dev` to
/// print a ready-made token, and by tests).
pub fn sign_hs256(secret: &str, sub: &str, channels: &[&str], publish: &[&str], exp: Option<u64>) -> String {
    let mut claims = Map::new();
    claims.insert("sub".to_owned(), Value::from(sub));
    claims.insert("channels".to_owned(), Value::from(channels.to_vec()));
    claims.insert("publish".to_owned(), Value::from(publish.to_vec()));
    claims.insert("iat".to_owned(), Value::from(unix_now()));
    if let Some(exp) = exp {
        claims.insert("exp".to_owned(), Value::from(exp));
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing of an in-memory JSON object cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    const SECRET: &str = "test-secret-of-a-reasonable-length";

    // Generated once with `openssl genpkey` / `openssl pkey -pubout`; test-only keys.
    const RSA_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
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
    const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAmkile2dcxeqcreLJdY8F
rBYrvxGMTk9mmm4HTVzxqW/2CHd/gI+8dkkiZOXM3Wa7sPpf4QIyAaR/3gW8f0DV
Pbh9ZeizZowaf7p0LsGPgJyPYxjWwq5Hm6wxxmU9jz98zp3qf/CUzotuMwDly6Rn
XyRVzfyLwQonoOsrnjWsSBEcM8wNnpHAsHB1lMt1Jv8w76NbgnHEmhILN+xhxJqq
X4HRxwGp5Sten2tqg+e8KlgHzdoH4D3xG537wQ4ieuRU4xR/MVuG/wwuMx1WXfiG
64+iW+vl+NMSIFYlPEYMcj/nt+0NdHU8s2xVVJXh2oQ+lb8jsvJdMyXmbO4PmBKG
KQIDAQAB
-----END PUBLIC KEY-----
";
    const EC_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgwus6hf+YD0UfG5q1
FqdMrzgklcKZldypRnzrY4p8QOihRANCAARbz/+DLstvPFbW9fa4+Yha5yroCdrx
0T1bEJV6NawkYLHb8fQsI4cgjOpLtoht1ZhickE81YP+eCVMe4TT6am2
-----END PRIVATE KEY-----
";
    const EC_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEW8//gy7LbzxW1vX2uPmIWucq6Ana
8dE9WxCVejWsJGCx2/H0LCOHIIzqS7aIbdWYYnJBPNWD/nglTHuE0+mptg==
-----END PUBLIC KEY-----
";
    const EC_P384_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEi08dJ/bbGrSrSmLUl9wSFm1bMbPl++kX
qqht0dpwELOlLtlVNHb/MFk4CXedp6IxH+udo/HiICqwG4AHd8/yX4drlxAzKf8O
eRwnS3Y+eza3Yf2QEN1VTwL/dyagV+Tl
-----END PUBLIC KEY-----
";

    /// The gateway's fixed clock for stories that care about time.
    const NOW: u64 = 1_800_000_000;

    fn config() -> AuthConfig {
        AuthConfig {
            secret: Some(SECRET.to_owned()),
            public_key_pem: None,
            audience: None,
            issuer: None,
            leeway_s: 30,
            require_exp: false,
        }
    }

    fn key_config(pem: &str) -> AuthConfig {
        AuthConfig {
            secret: None,
            public_key_pem: Some(pem.as_bytes().to_vec()),
            ..config()
        }
    }

    fn authenticator(cfg: AuthConfig) -> Authenticator {
        Authenticator::new(&cfg).expect("test config is valid")
    }

    fn sign(alg: Algorithm, key: &EncodingKey, claims: Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), &claims, key).expect("test signing works")
    }

    fn hs(claims: Value) -> String {
        sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()), claims)
    }

    fn perms(subscribe: &[&str], publish: &[&str]) -> Permissions {
        Permissions {
            subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            publish: publish.iter().map(|s| s.to_string()).collect(),
            actions: None,
        }
    }

    #[test]
    fn the_actions_claim_limits_backend_requests() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let auth = authenticator(config());
        let open = auth.verify(&hs(json!({"sub": "a", "exp": now + 60}))).unwrap();
        assert!(open.permissions.can_request("anything"), "no claim: every action");
        let limited = auth
            .verify(&hs(
                json!({"sub": "a", "exp": now + 60, "actions": ["search", "chat:*"]}),
            ))
            .unwrap();
        assert!(limited.permissions.can_request("search"));
        assert!(limited.permissions.can_request("chat:send"));
        assert!(!limited.permissions.can_request("delete"));
        assert!(
            auth.verify(&hs(json!({"sub": "a", "exp": now + 60, "actions": "search"})))
                .is_err()
        );
    }

    fn invalid_msg(result: Result<Claims, AuthError>) -> String {
        match result {
            Err(AuthError::Invalid(msg)) => msg,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

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
    fn absent_or_null_permission_claims_mean_no_permissions() {
        let auth = authenticator(config());
        let claims = auth
            .verify_at(&hs(json!({"sub": "bob", "channels": null})), NOW)
            .expect("valid");
        assert_eq!(claims.permissions, Permissions::default());
        assert!(!claims.permissions.can_subscribe("news"));
    }

    #[test]
    fn a_numeric_sub_becomes_its_decimal_string_but_other_subs_must_be_channel_safe() {
        let auth = authenticator(config());
        assert_eq!(
            auth.verify_at(&hs(json!({"sub": 42})), NOW).map(|c| c.sub),
            Ok("42".to_owned())
        );
        assert_eq!(
            auth.verify_at(&hs(json!({"sub": -7})), NOW).map(|c| c.sub),
            Ok("-7".to_owned())
        );
        assert_eq!(
            auth.verify_at(&hs(json!({"sub": "a@b.c/d=e:f_g-h"})), NOW)
                .map(|c| c.sub)
                .as_deref(),
            Ok("a@b.c/d=e:f_g-h")
        );

        for bad in [
            json!({}),
            json!({"sub": null}),
            json!({"sub": ""}),
            json!({"sub": "has space"}),
            json!({"sub": "star*"}),
            json!({"sub": "é"}),
            json!({"sub": 1.5}),
            json!({"sub": true}),
            json!({"sub": ["alice"]}),
            json!({"sub": "x".repeat(129)}),
        ] {
            assert!(
                matches!(auth.verify_at(&hs(bad.clone()), NOW), Err(AuthError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(auth.verify_at(&hs(json!({"sub": "x".repeat(128)})), NOW).is_ok());
    }

    #[test]
    fn permission_claims_of_the_wrong_type_make_the_token_invalid() {
        let auth = authenticator(config());
        for bad in [
            json!({"sub": "a", "channels": "news"}),
            json!({"sub": "a", "channels": ["news", 7]}),
            json!({"sub": "a", "channels": ["bad channel"]}),
            json!({"sub": "a", "publish": {"news": true}}),
            json!({"sub": "a", "publish": [""]}),
            json!({"sub": "a", "exp": "tomorrow"}),
            json!({"sub": "a", "nbf": -1}),
        ] {
            assert!(
                matches!(auth.verify_at(&hs(bad.clone()), NOW), Err(AuthError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_expired_token_is_expired_unless_the_leeway_covers_it() {
        let auth = authenticator(config()); // leeway 30 s
        let token = hs(json!({"sub": "alice", "exp": NOW - 10}));
        assert_eq!(auth.verify_at(&token, NOW).map(|c| c.exp), Ok(Some(NOW - 10)));
        assert!(auth.verify_at(&token, NOW + 20).is_ok(), "10 s late, 30 s leeway");
        assert_eq!(auth.verify_at(&token, NOW + 21), Err(AuthError::Expired));

        let old = sign_hs256(SECRET, "alice", &[], &[], Some(unix_now() - 3600));
        let err = auth.verify(&old).expect_err("expired");
        assert_eq!(
            (err.code(), err.close_code(), err.label()),
            (ErrorCode::TokenExpired, CloseCode::TokenExpired, "expired")
        );
    }

    #[test]
    fn a_huge_leeway_or_exp_does_not_overflow() {
        let auth = authenticator(AuthConfig {
            leeway_s: u64::MAX,
            ..config()
        });
        assert!(
            auth.verify_at(&hs(json!({"sub": "a", "exp": 0, "nbf": u64::MAX})), NOW)
                .is_ok()
        );
        let auth = authenticator(config());
        assert!(auth.verify_at(&hs(json!({"sub": "a", "exp": u64::MAX})), NOW).is_ok());
        assert!(auth.verify_at(&hs(json!({"sub": "a", "exp": 1e300})), NOW).is_ok());
        assert_eq!(
            auth.verify_at(&hs(json!({"sub": "a", "exp": 12.9})), NOW)
                .map(|c| c.exp),
            Err(AuthError::Expired)
        );
        assert_eq!(
            auth.verify_at(&hs(json!({"sub": "a", "exp": (NOW as f64) + 0.5})), NOW)
                .map(|c| c.exp),
            Ok(Some(NOW))
        );
    }

    #[test]
    fn a_token_used_before_its_nbf_is_invalid() {
        let auth = authenticator(config());
        let token = hs(json!({"sub": "alice", "nbf": NOW + 100}));
        assert_eq!(invalid_msg(auth.verify_at(&token, NOW)), "token not yet valid (nbf)");
        assert!(auth.verify_at(&token, NOW + 70).is_ok(), "within leeway");
    }

    #[test]
    fn a_wrong_aud_or_iss_makes_the_token_invalid_even_if_it_also_expired() {
        let auth = authenticator(AuthConfig {
            audience: Some("wsgw".to_owned()),
            issuer: Some("https://auth.example".to_owned()),
            ..config()
        });
        let good = json!({"sub": "a", "aud": "wsgw", "iss": "https://auth.example"});
        assert!(auth.verify_at(&hs(good), NOW).is_ok());
        let in_list = json!({"sub": "a", "aud": ["other", "wsgw"], "iss": "https://auth.example"});
        assert!(auth.verify_at(&hs(in_list), NOW).is_ok());

        for bad in [
            json!({"sub": "a", "aud": "other", "iss": "https://auth.example"}),
            json!({"sub": "a", "aud": ["other"], "iss": "https://auth.example"}),
            json!({"sub": "a", "iss": "https://auth.example"}),
            json!({"sub": "a", "aud": "wsgw", "iss": "https://evil.example"}),
            json!({"sub": "a", "aud": "wsgw"}),
            json!({"sub": "a", "aud": "wsgw", "iss": ["https://auth.example"]}),
            json!({"sub": "a", "aud": "other", "iss": "https://auth.example", "exp": NOW - 1000}),
        ] {
            assert!(
                matches!(auth.verify_at(&hs(bad.clone()), NOW), Err(AuthError::Invalid(_))),
                "{bad}"
            );
        }

        // Without a configured audience, `aud` is not looked at.
        let lax = authenticator(config());
        assert!(lax.verify_at(&hs(json!({"sub": "a", "aud": "anything"})), NOW).is_ok());
    }

    #[test]
    fn require_exp_rejects_tokens_that_never_expire() {
        let token = hs(json!({"sub": "alice"}));
        let strict = authenticator(AuthConfig {
            require_exp: true,
            ..config()
        });
        assert_eq!(invalid_msg(strict.verify_at(&token, NOW)), "token has no exp");
        assert!(
            strict
                .verify_at(&hs(json!({"sub": "alice", "exp": NOW + 60})), NOW)
                .is_ok()
        );

        let lax = authenticator(config());
        assert_eq!(lax.verify_at(&token, NOW).map(|c| c.exp), Ok(None));
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
        let payload = "WzEsMiwzXQ"; // [1,2,3]
        let message = format!("{header}.{payload}");
        let sig = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
            Algorithm::HS256,
        )
        .expect("sign");
        assert!(matches!(
            auth.verify(&format!("{message}.{sig}")),
            Err(AuthError::Invalid(_))
        ));

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

    #[test]
    fn the_token_comes_from_the_header_then_the_subprotocol_then_the_query() {
        let mut headers = HeaderMap::new();
        assert_eq!(token_from_request(&headers, None), None);
        assert_eq!(
            token_from_request(&headers, Some("q")),
            Some(("q".to_owned(), TokenSource::Query))
        );
        assert_eq!(token_from_request(&headers, Some("  ")), None);

        headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("wsgw.v1, bearer.s.s.s"),
        );
        assert_eq!(
            token_from_request(&headers, Some("q")),
            Some(("s.s.s".to_owned(), TokenSource::Subprotocol))
        );

        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer h.h.h"));
        assert_eq!(
            token_from_request(&headers, Some("q")),
            Some(("h.h.h".to_owned(), TokenSource::Header))
        );

        // Another scheme is not a bearer token, so the next source is used.
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic dXNlcjpwYXNz"));
        assert_eq!(
            token_from_request(&headers, None),
            Some(("s.s.s".to_owned(), TokenSource::Subprotocol))
        );
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer   "));
        assert_eq!(
            token_from_request(&headers, None),
            Some(("s.s.s".to_owned(), TokenSource::Subprotocol))
        );
        headers.insert(AUTHORIZATION, HeaderValue::from_static("  bearer \t h.h.h  "));
        assert_eq!(
            token_from_request(&headers, None),
            Some(("h.h.h".to_owned(), TokenSource::Header))
        );
    }

    #[test]
    fn the_subprotocol_list_is_parsed_in_any_order_and_across_header_lines() {
        let with = |values: &[&'static str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(v));
            }
            token_from_request(&headers, None).map(|(token, _)| token)
        };
        assert_eq!(with(&["bearer.t1,wsgw.v1"]).as_deref(), Some("t1"));
        assert_eq!(with(&["  wsgw.v1 ,   bearer.t2  "]).as_deref(), Some("t2"));
        assert_eq!(with(&["wsgw.v1", "bearer.t3"]).as_deref(), Some("t3"));
        assert_eq!(with(&["wsgw.v1, bearer., bearer.t4"]).as_deref(), Some("t4"));
        assert_eq!(with(&["wsgw.v1"]), None);
        assert_eq!(with(&["wsgw.v1, Bearer.t5, xbearer.t6"]), None);
    }

    #[test]
    fn patterns_grant_channels_and_narrower_patterns() {
        let p = perms(&["project:*", "news", "a*c*e"], &["chat:*"]);
        assert!(p.can_subscribe("project:42"));
        assert!(p.can_subscribe("project:1*"), "a narrower pattern");
        assert!(p.can_subscribe("project:*"), "the same pattern");
        assert!(!p.can_subscribe("project*"), "a broader pattern");
        assert!(!p.can_subscribe("projects:1"));
        assert!(p.can_subscribe("news"));
        assert!(!p.can_subscribe("news:1"));
        assert!(p.can_subscribe("abcde"));
        assert!(!p.can_subscribe("bad channel"));
        assert!(p.can_publish("chat:1"));
        assert!(!p.can_publish("chat:*"), "publish targets are never patterns");
        assert!(
            !p.can_publish("project:42"),
            "subscribe rights do not give publish rights"
        );
        assert!(!Permissions::default().can_subscribe("news"));
    }

    #[test]
    fn a_wildcard_grants_every_topic_but_no_one_elses_private_channel() {
        let p = perms(&["*"], &["*"]);
        assert!(p.can_subscribe("news"));
        assert!(p.can_subscribe("project:*"));
        assert!(p.can_subscribe("broadcast"));
        for private in [
            "user:bob",
            "connection:abc",
            "user:*",
            "connection:*",
            "u*",
            "user*",
            "c*",
            "conn*",
            "*",
            "*:bob",
            "us*er:x",
            "connection:a*",
        ] {
            assert!(!p.can_subscribe(private), "{private}");
        }
        assert!(!p.can_publish("user:bob"));
        assert!(!p.can_publish("connection:abc"));
        assert!(p.can_publish("users"), "only the exact prefixes are private");
        assert!(p.can_publish("user"));
        assert!(p.can_subscribe("x*"), "cannot match a private channel");

        let sloppy = perms(&["u*", "user*", "us*:*"], &[]);
        assert!(
            !sloppy.can_subscribe("user:bob"),
            "the literal head must start with `user:`"
        );
    }

    #[test]
    fn explicit_private_prefix_patterns_grant_private_channels() {
        let support = perms(&["user:*", "connection:*"], &["user:*"]);
        assert!(support.can_subscribe("user:bob"));
        assert!(support.can_subscribe("user:*"));
        assert!(support.can_subscribe("user:b*"));
        assert!(support.can_subscribe("connection:abc"));
        assert!(
            !support.can_subscribe("u*"),
            "`u*` also matches topics like `umbrella`, which `user:*` does not cover"
        );
        assert!(
            !support.can_subscribe("*"),
            "could match both kinds; no single pattern grants that"
        );
        assert!(!support.can_subscribe("news"));
        assert!(support.can_publish("user:bob"));
        assert!(!support.can_publish("connection:abc"));

        let one_user = perms(&["user:bob"], &[]);
        assert!(one_user.can_subscribe("user:bob"));
        assert!(!one_user.can_subscribe("user:bobby"));
        assert!(!one_user.can_subscribe("user:*"));

        let teams = perms(&["user:team-*"], &[]);
        assert!(teams.can_subscribe("user:team-7"));
        assert!(!teams.can_subscribe("user:alice"));
    }

    #[test]
    fn could_match_prefixed_is_exact_about_which_patterns_reach_private_channels() {
        for (channel, user) in [
            ("user:x", true),
            ("user:*", true),
            ("u*", true),
            ("user*", true),
            ("*", true),
            ("*x", true),
            ("us*r", true),
            ("user", false),
            ("users:*", false),
            ("x*", false),
            ("news", false),
            ("c*", false),
        ] {
            assert_eq!(could_match_prefixed(channel, USER_PREFIX), user, "{channel}");
        }
        assert!(could_match_prefixed("conn*", CONNECTION_PREFIX));
        assert!(!could_match_prefixed("user:*", CONNECTION_PREFIX));
    }
}
