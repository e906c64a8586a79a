//! proxy.rs: who the client is when the gateway sits behind a load balancer. The TCP peer is
//! the client unless it is a trusted proxy; then `X-Forwarded-For` is read right to left and
//! the first address that is not a trusted proxy is the client. Never trusts the header from
//! an untrusted peer (anyone can send it).

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Parses a trusted-proxy entry: `a.b.c.d`, `a.b.c.d/n`, an IPv6 address or `addr/n`
/// (surrounding whitespace ignored). A single address is the network of just that address.
pub fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    match s.split_once('/') {
        Some((addr, prefix)) => IpNet::new(addr.parse().ok()?, prefix.parse().ok()?).ok(),
        None => s.parse::<IpAddr>().ok().map(IpNet::from),
    }
}

/// An entry as [`parse_net`] reads it back: a single address without its prefix length.
pub fn format_net(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// The trusted proxies of a node.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// From the configured networks.
    pub fn new(nets: &[IpNet]) -> Self {
        Self(nets.to_vec())
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request from `peer` with these headers.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        // Every proxy appends the address it saw, so read from the right and stop at the first
        // hop we do not trust: everything left of it could be forged by the client.
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>();
        for hop in hops.iter().rev().flat_map(|v| v.rsplit(',')) {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !self.trusts(ip) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_match_their_networks() {
        let c = parse_net("10.1.0.0/16").unwrap();
        assert!(c.contains(&ip("10.1.200.3")));
        assert!(!c.contains(&ip("10.2.0.1")));
        assert!(parse_net("127.0.0.1").unwrap().contains(&ip("127.0.0.1")));
        assert!(parse_net("::1").unwrap().contains(&ip("::1")));
        assert!(parse_net("0.0.0.0/0").unwrap().contains(&ip("8.8.8.8")));
        assert_eq!(parse_net("10.0.0.0/33"), None);
        assert_eq!(parse_net("nonsense"), None);
    }

    #[test]
    fn entries_are_written_back_as_they_are_read() {
        for entry in ["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8", "10.1.2.3/8"] {
            assert_eq!(format_net(&parse_net(entry).unwrap()), entry);
        }
        assert!(!parse_net("10.0.0.1").unwrap().contains(&ip("::ffff:10.0.0.1")));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let t = TrustedProxies::new(&[parse_net("127.0.0.1").unwrap(), parse_net("10.0.0.0/8").unwrap()]);
        let lb: IpAddr = "127.0.0.1".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(
            t.client_ip(stranger, &headers("1.2.3.4")),
            stranger,
            "untrusted peer: header ignored"
        );
        assert_eq!(
            t.client_ip(lb, &headers("198.51.100.7")),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // A client forging a first hop cannot hide behind it: the rightmost untrusted wins.
        assert_eq!(
            t.client_ip(lb, &headers("6.6.6.6, 198.51.100.7, 10.0.0.5")),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(t.client_ip(lb, &HeaderMap::new()), lb, "no header: the proxy itself");
    }
}
