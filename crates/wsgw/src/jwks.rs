//! jwks.rs: JWT verification keys from a JWKS (`WSGW_JWT_JWKS_URL` or `WSGW_JWT_JWKS_FILE`),
//! selected by `kid`. The set is loaded at start, refreshed in the background (the URL every
//! `WSGW_JWT_JWKS_REFRESH_S`, the file whenever it changes, looked at every second) and, for an
//! unknown `kid`, re-loaded on demand at most once per [`ON_DEMAND_INTERVAL`] (the start load
//! does not count). A failed load keeps the last good set (counted in
//! `wsgw_jwks_refresh_failures_total`, and logged). Each key is tied to one algorithm: its `alg`,
//! or the one its type implies (RSA: RS256, EC P-256: ES256, `oct`: HS256); other keys are
//! skipped, so a token can never pick how its key is used.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::{Mutex, RwLock};
use prometheus::IntCounter;
use serde_json::Value;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::auth::VerifyKey;

/// Shortest time between two on-demand loads for unknown `kid`s.
pub const ON_DEMAND_INTERVAL: Duration = Duration::from_secs(10);
/// How often the file's metadata is looked at for a change.
const FILE_POLL: Duration = Duration::from_secs(1);
/// Largest JWKS document read, in bytes.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Longest a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the key set comes from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// An `http://` or `https://` URL.
    Url(String),
    /// A local file.
    File(PathBuf),
}

/// The live key set. Cheap to read from every verification.
pub struct Jwks {
    source: JwksSource,
    keys: RwLock<Arc<HashMap<String, Arc<VerifyKey>>>>,
    /// When the last on-demand load started (None: never).
    last_on_demand: Mutex<Option<Instant>>,
    /// One load at a time.
    loading: tokio::sync::Mutex<()>,
    failures: IntCounter,
    http: reqwest::Client,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<String> = self.keys.read().keys().cloned().collect();
        kids.sort();
        f.debug_struct("Jwks")
            .field("source", &self.source)
            .field("kids", &kids)
            .finish()
    }
}

impl Jwks {
    /// Loads the set once and starts refreshing it until `stop` turns true. A file that cannot
    /// be read or parsed at start is an error; a URL that cannot be fetched at start is logged
    /// and counted, and retried by the refresh (and by the first unknown `kid`).
    pub async fn start(
        source: JwksSource,
        refresh: Duration,
        failures: IntCounter,
        mut stop: watch::Receiver<bool>,
    ) -> Result<Arc<Self>, String> {
        let http = crate::http_client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build the JWKS HTTP client: {e}"))?;
        let jwks = Arc::new(Self {
            source: source.clone(),
            keys: RwLock::new(Arc::new(HashMap::new())),
            last_on_demand: Mutex::new(None),
            loading: tokio::sync::Mutex::new(()),
            failures,
            http,
        });
        match (&source, jwks.load().await) {
            (_, Ok(())) => {}
            (JwksSource::File(path), Err(e)) => return Err(format!("JWKS file {}: {e}", path.display())),
            (JwksSource::Url(_), Err(_)) => {} // counted and logged by `load`
        }
        let weak = Arc::downgrade(&jwks);
        let (period, file_stamp) = match &source {
            JwksSource::Url(_) => (refresh.max(Duration::from_secs(1)), None),
            JwksSource::File(path) => (FILE_POLL, Some(stamp(path))),
        };
        tokio::spawn(async move {
            let mut last_stamp = file_stamp;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = stop.changed() => return,
                }
                if *stop.borrow() {
                    return;
                }
                let Some(jwks) = Weak::upgrade(&weak) else { return };
                if let JwksSource::File(path) = &jwks.source {
                    let now = stamp(path);
                    if Some(&now) == last_stamp.as_ref() {
                        continue;
                    }
                    last_stamp = Some(now);
                }
                let _ = jwks.load().await;
            }
        });
        Ok(jwks)
    }

    /// The key for `kid`, if the current set has it.
    pub fn key(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        self.keys.read().get(kid).cloned()
    }

    /// An unknown `kid` was presented: loads the set again unless that was done less than
    /// [`ON_DEMAND_INTERVAL`] ago. Returns whether it loaded a set.
    pub async fn reload_for_unknown_kid(&self) -> bool {
        {
            let mut last = self.last_on_demand.lock();
            if last.is_some_and(|t| t.elapsed() < ON_DEMAND_INTERVAL) {
                return false;
            }
            *last = Some(Instant::now());
        }
        self.load().await.is_ok()
    }

    /// Reads and installs the set; on failure keeps the last good one.
    async fn load(&self) -> Result<(), String> {
        let _one = self.loading.lock().await;
        let result = match &self.source {
            JwksSource::Url(url) => self.fetch(url).await,
            JwksSource::File(path) => tokio::fs::read(path).await.map_err(|e| e.to_string()),
        }
        .and_then(|body| parse_set(&body));
        match result {
            Ok(keys) => {
                let mut kids: Vec<&String> = keys.keys().collect();
                kids.sort();
                info!(source = ?self.source, ?kids, "JWKS loaded");
                *self.keys.write() = Arc::new(keys);
                Ok(())
            }
            Err(e) => {
                self.failures.inc();
                warn!(source = ?self.source, error = %e, "JWKS load failed; keeping the last good key set");
                Err(e)
            }
        }
    }

    async fn fetch(&self, url: &str) -> Result<Vec<u8>, String> {
        let mut resp = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        // Read by chunks, so an oversized document is refused before it is all in memory.
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("document over {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// What says a file changed: its modification time and length (None when unreadable).
fn stamp(path: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    std::fs::metadata(path)
        .ok()
        .and_then(|m| Some((m.modified().ok()?, m.len())))
}

/// Parses a JWKS document into verification keys by `kid`. A key that is not usable here (no
/// `kid`, `use: enc`, an algorithm other than RS256/ES256/HS256, a curve other than P-256, or an
/// `alg` that does not fit its type) is skipped; a document that is not a JWKS is an error.
pub fn parse_set(body: &[u8]) -> Result<HashMap<String, Arc<VerifyKey>>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Some(list) = doc.get("keys").and_then(Value::as_array) else {
        return Err("not a JWKS (no `keys` array)".to_owned());
    };
    let mut keys = HashMap::new();
    for item in list {
        let Ok(jwk) = serde_json::from_value::<Jwk>(item.clone()) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else { continue };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let implied = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
            AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
            _ => continue,
        };
        let alg = match jwk.common.key_algorithm {
            None => implied,
            Some(KeyAlgorithm::RS256) => Algorithm::RS256,
            Some(KeyAlgorithm::ES256) => Algorithm::ES256,
            Some(KeyAlgorithm::HS256) => Algorithm::HS256,
            Some(_) => continue,
        };
        if alg != implied {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else { continue };
        keys.insert(kid, Arc::new(VerifyKey::new(alg, key)));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_tied_to_their_type_and_unusable_ones_are_skipped() {
        let oct = |kid: &str, alg: Option<&str>| {
            let mut k = json!({"kty": "oct", "kid": kid, "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"});
            if let Some(a) = alg {
                k["alg"] = json!(a);
            }
            k
        };
        let doc = json!({"keys": [
            oct("a", None),
            oct("b", Some("HS256")),
            oct("c", Some("RS256")),      // alg does not fit the key type
            oct("d", Some("HS512")),      // not accepted
            {"kty": "oct", "k": "eHh4"},  // no kid
            {"kty": "oct", "kid": "e", "use": "enc", "k": "eHh4"},
            {"kty": "weird", "kid": "f"},
        ]});
        let keys = parse_set(doc.to_string().as_bytes()).unwrap();
        let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        assert_eq!(kids, ["a", "b"]);
        assert!(parse_set(b"{}").is_err());
        assert!(parse_set(b"nope").is_err());
    }
}
