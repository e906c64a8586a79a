//! config.rs: how a client reaches the gateway and behaves when its socket drops.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::Backoff;

/// How to reach the gateway and how to behave when the socket drops.
#[derive(Clone)]
pub struct ClientConfig {
    /// The gateway's WebSocket address, e.g. `ws://127.0.0.1:8080/ws` or
    /// `wss://gw.example.com/ws` (TLS with rustls; see `ca_file` and `insecure`).
    pub url: String,
    /// Other gateway nodes to fail over to, e.g. the rest of a cluster. Default empty.
    ///
    /// Reconnects go round-robin over `url`, then `fallback_urls`, in order: the client moves to
    /// the next address after a reconnect attempt fails (the node is down or refuses), after the
    /// node closes the socket with 1001 (going away) or 1012 (restart), and after the socket is
    /// lost without a close frame (the node died, or the network to it failed). It keeps its
    /// `connection_id` and `last_event_id`, so a cluster that shares sessions resumes it on the
    /// other node. [`Client::connect`](crate::Client::connect) itself uses `url` only.
    pub fallback_urls: Vec<String>,
    /// The JWT, sent as `Authorization: Bearer <token>`.
    pub token: String,
    /// Whether [`Client::next`](crate::Client::next) reconnects after the socket drops (by the close-code policy).
    /// Default `true`.
    pub reconnect: bool,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// The WebSocket read buffer, in bytes. Default 4096: small, as load tests open tens of
    /// thousands of clients.
    pub read_buffer_bytes: usize,
    /// Bind the TCP socket to this source address before connecting (e.g. `127.0.0.2`, … when a
    /// load test runs out of ephemeral ports on one address).
    pub local_addr: Option<IpAddr>,
    /// How long one connection attempt may take: DNS, TCP, the WebSocket handshake and the
    /// `welcome`. Default 10 s.
    pub connect_timeout: Duration,
    /// How long `subscribe`, `unsubscribe`, `publish` and `refresh` wait for their answer.
    /// Default 10 s.
    pub call_timeout: Duration,
    /// For `wss://`: trust the CA certificates in this PEM file instead of the system's roots
    /// (e.g. the CA that signed a test or internal gateway's certificate). Read on first use and
    /// kept for the process's later clients with the same path. Default none.
    pub ca_file: Option<PathBuf>,
    /// For `wss://`: accept any server certificate, without checking who signed it or for which
    /// name (self-signed test certificates only: it gives up TLS's protection against a man in
    /// the middle). Default `false`.
    pub insecure: bool,
}

impl ClientConfig {
    /// A config with the defaults: reconnect on, default backoff, 4 KiB read buffer, 10 s timeouts.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            fallback_urls: Vec::new(),
            token: token.into(),
            reconnect: true,
            backoff: Backoff::default(),
            read_buffer_bytes: 4096,
            local_addr: None,
            connect_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(10),
            ca_file: None,
            insecure: false,
        }
    }
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("fallback_urls", &self.fallback_urls)
            .field("token", &"<redacted>")
            .field("reconnect", &self.reconnect)
            .field("backoff", &self.backoff)
            .field("read_buffer_bytes", &self.read_buffer_bytes)
            .field("local_addr", &self.local_addr)
            .field("connect_timeout", &self.connect_timeout)
            .field("call_timeout", &self.call_timeout)
            .field("ca_file", &self.ca_file)
            .field("insecure", &self.insecure)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_redacts_token() {
        let c = ClientConfig::new("ws://127.0.0.1:1/ws", "secret-token");
        assert!(c.reconnect);
        assert!(c.fallback_urls.is_empty());
        assert_eq!(c.read_buffer_bytes, 4096);
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.backoff, Backoff::default());
        assert_eq!(c.ca_file, None);
        assert!(!c.insecure);
        assert!(!format!("{c:?}").contains("secret-token"));
    }
}
