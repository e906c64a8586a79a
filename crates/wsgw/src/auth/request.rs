//! Where a token travels: taken from a WebSocket upgrade request (`Authorization` header, `bearer.` subprotocol
//! item or `token` query parameter), and signed as HS256 for `wsgw --dev` and tests. Never verifies anything.

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

use super::unix_now;

/// Prefix of the `Sec-WebSocket-Protocol` item that carries the token (`bearer.<jwt>`). The gateway must never echo
/// this item back as the selected subprotocol.
pub const SUBPROTOCOL_TOKEN_PREFIX: &str = "bearer.";

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
}
