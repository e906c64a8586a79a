//! http_client.rs: how HTTP clients are built (JWKS, hooks, and the tests' calls to the API).
//! reqwest is built without a TLS crypto provider (feature `rustls-no-provider`), so ring is the
//! only one compiled (aws-lc is not); these install ring as rustls's process default first. An
//! error from that means a provider is installed already, which serves as well.

/// A reqwest client builder, with ring installed as the TLS crypto provider.
pub fn builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// A reqwest client with default settings (see [`builder`]).
pub fn client() -> reqwest::Client {
    builder().build().expect("a default HTTP client builds")
}
