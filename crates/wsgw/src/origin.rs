//! origin.rs: the `WSGW_ALLOWED_ORIGINS` check on browser WebSocket upgrades. An entry is
//! `scheme://host[:port]`, or `scheme://*.domain[:port]` for any subdomain of `domain` at any
//! depth (never `domain` itself). Scheme, host and port are compared exactly (hosts without
//! regard to case; an omitted port is the scheme's default, which is how browsers send it).

/// A parsed allow-list. Empty allows every origin.
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins(Vec<Entry>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    scheme: String,
    /// Exact host, or (with `wildcard`) the domain whose subdomains match.
    host: String,
    wildcard: bool,
    port: u16,
}

struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

fn parse(text: &str) -> Option<Origin> {
    let (scheme, rest) = text.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" | "ws" => 80,
        "https" | "wss" => 443,
        _ => return None,
    };
    // An origin has no path, query, fragment or user info.
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (addr, after) = v6.split_once(']')?;
        let port = match after {
            "" => default_port,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        (format!("[{}]", addr.to_ascii_lowercase()), port)
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host.to_ascii_lowercase(), port.parse().ok()?),
            None => (rest.to_ascii_lowercase(), default_port),
        }
    };
    if host.is_empty() || host.contains(':') && !host.starts_with('[') {
        return None;
    }
    Some(Origin { scheme, host, port })
}

impl AllowedOrigins {
    /// Parses the configured entries; `Err` names the first one that is not an origin.
    pub fn new(entries: &[String]) -> Result<Self, String> {
        entries
            .iter()
            .map(|e| {
                let bad = || format!("{e:?} is not an origin such as https://app.example.org or https://*.example.org");
                let o = parse(e.trim()).ok_or_else(bad)?;
                let (host, wildcard) = match o.host.strip_prefix("*.") {
                    Some(domain) if !domain.is_empty() && !domain.contains('*') => (domain.to_owned(), true),
                    Some(_) => return Err(bad()),
                    None if o.host.contains('*') => return Err(bad()),
                    None => (o.host, false),
                };
                Ok(Entry {
                    scheme: o.scheme,
                    host,
                    wildcard,
                    port: o.port,
                })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether an upgrade carrying this `Origin` header value (None: no header) may proceed.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else {
            // Not a browser (browsers always send Origin on WebSocket upgrades).
            return true;
        };
        if self.0.is_empty() {
            return true;
        }
        // `null` (sandboxed frames, file: pages) and anything unparsable never match.
        let Some(o) = parse(origin.trim()) else {
            return false;
        };
        self.0.iter().any(|e| {
            e.scheme == o.scheme
                && e.port == o.port
                && if e.wildcard {
                    o.host
                        .strip_suffix(e.host.as_str())
                        .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.'))
                } else {
                    e.host == o.host
                }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowedOrigins {
        AllowedOrigins::new(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn scheme_host_and_port_are_compared_exactly() {
        let a = list(&["https://app.example.org", "http://localhost:3000"]);
        assert!(a.allows(Some("https://app.example.org")));
        assert!(a.allows(Some("https://APP.example.org:443")));
        assert!(a.allows(Some("http://localhost:3000")));
        assert!(!a.allows(Some("http://app.example.org")));
        assert!(!a.allows(Some("https://app.example.org:8443")));
        assert!(!a.allows(Some("http://localhost:3001")));
        assert!(!a.allows(Some("http://localhost")));
        assert!(!a.allows(Some("https://app.example.org.evil.com")));
        assert!(!a.allows(Some("https://evilapp.example.org")));
    }

    #[test]
    fn a_wildcard_matches_subdomains_at_any_depth_but_not_the_domain() {
        let a = list(&["https://*.example.org"]);
        assert!(a.allows(Some("https://a.example.org")));
        assert!(a.allows(Some("https://a.b.c.example.org")));
        assert!(!a.allows(Some("https://example.org")));
        assert!(!a.allows(Some("https://badexample.org")));
        assert!(!a.allows(Some("http://a.example.org")));
        assert!(!a.allows(Some("https://a.example.org:8443")));
    }

    #[test]
    fn null_and_garbage_are_refused_and_no_header_is_allowed() {
        let a = list(&["https://app.example.org"]);
        assert!(!a.allows(Some("null")));
        assert!(!a.allows(Some("")));
        assert!(!a.allows(Some("https://app.example.org/path")));
        assert!(a.allows(None));
        assert!(
            AllowedOrigins::default().allows(Some("null")),
            "unset allows everything"
        );
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in [
            "app.example.org",
            "ftp://x",
            "https://",
            "https://a.*.org",
            "https://*.",
            "https://x/y",
        ] {
            let err = AllowedOrigins::new(&[bad.to_string()]).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }
}
