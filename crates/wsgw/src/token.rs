//! token.rs: `wsgw token`: an HS256 token signed with the node's own secret, for operators and
//! for trying the gateway out (docs/configuration.md, "Tokens for operators"). Never used on
//! the serving path.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

/// What `wsgw token` puts in a token.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    /// `sub`: the user id.
    pub sub: String,
    /// `channels`: patterns the user may subscribe to.
    pub channels: Vec<String>,
    /// `publish`: patterns the user may publish to.
    pub publish: Vec<String>,
    /// `actions`: patterns of the requests the user may send (`None`: no claim).
    pub actions: Option<Vec<String>>,
    /// How long the token is valid.
    pub ttl: Duration,
    /// `aud`, when the node checks one.
    pub audience: Option<String>,
    /// `iss`, when the node checks one.
    pub issuer: Option<String>,
}

/// Reads a duration such as `90`, `90s`, `15m`, `1h` or `7d` (whole units).
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration such as 90s, 15m, 1h or 7d"))?;
    let secs = match unit {
        "" | "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .filter(|s| *s > 0)
    .ok_or_else(|| format!("{s:?}: expected a positive duration such as 90s, 15m, 1h or 7d"))?;
    Ok(Duration::from_secs(secs))
}

/// Signs `req` with `secret` (HS256), issued at `now_s`.
pub fn sign(secret: &[u8], req: &TokenRequest, now_s: u64) -> String {
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::from(req.sub.as_str()));
    claims.insert("channels".into(), Value::from(req.channels.clone()));
    claims.insert("publish".into(), Value::from(req.publish.clone()));
    if let Some(actions) = &req.actions {
        claims.insert("actions".into(), Value::from(actions.clone()));
    }
    claims.insert("iat".into(), Value::from(now_s));
    claims.insert("exp".into(), Value::from(now_s.saturating_add(req.ttl.as_secs())));
    if let Some(aud) = &req.audience {
        claims.insert("aud".into(), Value::from(aud.as_str()));
    }
    if let Some(iss) = &req.issuer {
        claims.insert("iss".into(), Value::from(iss.as_str()));
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("HS256 signing of an in-memory JSON object cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("7d").unwrap(), Duration::from_secs(604_800));
        for bad in ["", "h", "0", "1x", "-1h", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
