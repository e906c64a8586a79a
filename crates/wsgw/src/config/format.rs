//! How the fields whose TOML form is not their Rust type are written and read: secrets are
//! written redacted (so serializing a [`Config`](super::Config) can never leak one), the Redis
//! URL with its password hidden, and trusted proxies as strings, parsed on the way in.

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serializer};

/// Stands in for secrets in `--print-config`. `validate` rejects it as a
/// secret value, so a pasted `--print-config` output fails loudly instead of
/// running with a wrong key.
pub(super) const REDACTED: &str = "<redacted>";

/// The TOML key of the trusted proxies, named by their validation errors.
pub(super) const TRUSTED_PROXIES: &str = "trusted_proxies";

/// The tail of the message for a trusted-proxy entry that does not parse.
const NOT_A_NETWORK: &str = "is not an IP address or CIDR";

/// Why `entry` is not a trusted proxy, e.g. `"nginx" is not an IP address or CIDR`.
pub(super) fn not_a_network(entry: &str) -> String {
    format!("{entry:?} {NOT_A_NETWORK}")
}

/// Whether a TOML error is [`deserialize_networks`] refusing an entry, whose message is then
/// reported as the validation error it is.
pub(super) fn is_not_a_network(message: &str) -> bool {
    message.ends_with(NOT_A_NETWORK)
}

/// Writes a set secret as [`REDACTED`].
pub(super) fn serialize_secret<S: Serializer>(secret: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => s.serialize_str(REDACTED),
        None => s.serialize_none(),
    }
}

/// Writes a URL with its password redacted (see [`redact_url`]).
pub(super) fn serialize_url<S: Serializer>(url: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => s.serialize_str(&redact_url(url.expose_secret())),
        None => s.serialize_none(),
    }
}

/// Writes a comma-separated list of URLs, each with its password redacted.
pub(super) fn serialize_urls<S: Serializer>(urls: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match urls {
        Some(urls) => {
            let each: Vec<String> = urls.expose_secret().split(',').map(|u| redact_url(u.trim())).collect();
            s.serialize_str(&each.join(","))
        }
        None => s.serialize_none(),
    }
}

/// Writes networks as strings, a single address without its prefix length.
pub(super) fn serialize_networks<S: Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(nets.iter().map(crate::proxy::format_net))
}

/// Reads a list of IP addresses or CIDRs.
pub(super) fn deserialize_networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| crate::proxy::parse_net(s).ok_or_else(|| serde::de::Error::custom(not_a_network(s))))
        .collect()
}

/// Hides the password in `scheme://user:password@host/...` (and a bare
/// `scheme://secret@host`, which some Redis clients read as a password), plus
/// `pass=`/`password=` query parameters used by `redis+unix://` URLs.
pub(super) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        // Not a URL we understand: hiding all of it is the safe choice.
        return REDACTED.to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:{REDACTED}{host}"),
                None => format!("{REDACTED}{host}"),
            }
        }
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") => {
                        format!("{k}={REDACTED}")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}{authority}{tail}")
}
