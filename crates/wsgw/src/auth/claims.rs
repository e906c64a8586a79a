//! The claims of a verified token (or of a connect hook's answer): `sub`, `exp`, `nbf`, `iss`, `aud` and the
//! permission lists, each checked for type and value. A malformed claim rejects the whole token; it must never be
//! silently dropped or coerced into a grant.

use serde_json::{Map, Value};
use wsgw_protocol::validate_channel;

use super::permissions::Permissions;
use super::{AuthError, Inner, invalid};

/// Longest `sub`, in bytes.
pub const MAX_SUB_LEN: usize = 128;

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
pub(super) fn check_claims(claims: &Map<String, Value>, inner: &Inner, now: u64) -> Result<Claims, AuthError> {
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

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::*;
    use serde_json::json;

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
}
