//! hooks/: the backend hooks (`WSGW_HOOK_*_URL`, docs/backends.md "Hooks"): one shared
//! keep-alive HTTP client that asks the app whether a socket may connect, subscribe or publish,
//! and tells it of disconnects (`disconnect.rs`, batched). Every call is bounded (node-wide
//! concurrency, `hook_timeout_ms`, a 64 KiB answer) and fails closed. It never touches a socket:
//! sessions turn its verdicts into frames and close codes.

mod disconnect;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::sync::{Semaphore, watch};
use tracing::warn;
use wsgw_protocol::{CloseCode, ErrorCode};

use crate::auth::{AuthError, Authenticator, Claims};
use crate::config::Config;
use crate::metrics::Metrics;

/// Largest hook answer read, in bytes; a longer one is a failed call.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Longest `reason` from a hook passed on to the client, in bytes.
const MAX_REASON_BYTES: usize = 256;
/// The upgrade request headers a connect hook is shown (when present), lower-cased.
pub const CONNECT_HEADERS: [&str; 4] = ["cookie", "authorization", "origin", "user-agent"];

/// Which hook a call is for (the `hook` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `WSGW_HOOK_CONNECT_URL`.
    Connect,
    /// `WSGW_HOOK_SUBSCRIBE_URL`.
    Subscribe,
    /// `WSGW_HOOK_PUBLISH_URL`.
    Publish,
    /// `WSGW_HOOK_DISCONNECT_URL`.
    Disconnect,
}

impl Hook {
    fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Subscribe => "subscribe",
            Self::Publish => "publish",
            Self::Disconnect => "disconnect",
        }
    }
}

/// Why a hook gave no usable answer. The action it was asked about is refused (`unavailable`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookFailure {
    /// No answer within `hook_timeout_ms` (waiting for a call slot included).
    #[error("hook timed out")]
    Timeout,
    /// Connection refused, reset, DNS, TLS.
    #[error("hook unreachable: {0}")]
    Unreachable(String),
    /// A 5xx answer.
    #[error("hook answered HTTP {0}")]
    ServerError(u16),
    /// Another unexpected status, a body over [`MAX_ANSWER_BYTES`], or JSON of the wrong shape.
    #[error("hook answer unusable: {0}")]
    BadAnswer(String),
}

impl HookFailure {
    /// The `outcome` metric label.
    fn outcome(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Unreachable(_) => "unreachable",
            Self::ServerError(_) => "server_error",
            Self::BadAnswer(_) => "bad_answer",
        }
    }
}

/// What a subscribe or publish hook decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict<T> {
    /// Go ahead (for a publish: with this data instead, if Some).
    Allow(T),
    /// Refused, with the hook's reason if it gave one.
    Deny(Option<String>),
    /// No usable answer: refuse with `unavailable`.
    Unavailable,
}

/// What the connect hook decided about a socket.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectVerdict {
    /// Admit it with these grants.
    Admit(Claims),
    /// Send this error, then close with this code.
    Refuse {
        /// The `error` frame's code.
        code: ErrorCode,
        /// Its message.
        message: String,
        /// The close code.
        close: CloseCode,
    },
}

/// The connect hook's request body: the upgrade's [`CONNECT_HEADERS`] that are present, and
/// the client address (after trusted proxies).
#[derive(Debug, Clone, Serialize)]
pub struct ConnectRequest {
    headers: BTreeMap<&'static str, String>,
    client_addr: String,
}

impl ConnectRequest {
    /// Takes the forwarded headers from an upgrade request. Repeated `cookie` lines are joined
    /// with `; `, other repeated headers with `, ` (as HTTP folds them).
    pub fn new(headers: &HeaderMap, client_ip: IpAddr) -> Self {
        let headers = CONNECT_HEADERS
            .into_iter()
            .filter_map(|name| {
                let values: Vec<String> = headers
                    .get_all(name)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect();
                let sep = if name == "cookie" { "; " } else { ", " };
                (!values.is_empty()).then(|| (name, values.join(sep)))
            })
            .collect();
        Self {
            headers,
            client_addr: client_ip.to_string(),
        }
    }
}

/// One HTTP client and the bounds every hook call shares. Cheap to clone.
#[derive(Clone)]
struct Caller {
    http: reqwest::Client,
    timeout: Duration,
    permits: Arc<Semaphore>,
    metrics: Metrics,
}

impl Caller {
    /// POSTs `body` and reads the answer: the status and at most [`MAX_ANSWER_BYTES`] of body,
    /// all within the timeout. A 5xx is a failure; other statuses are the caller's to judge.
    async fn post(&self, hook: Hook, url: &str, body: &impl Serialize) -> Result<(u16, Bytes), HookFailure> {
        let timer = self
            .metrics
            .hook_duration
            .with_label_values(&[hook.label()])
            .start_timer();
        let call = async {
            // The semaphore is never closed.
            let _permit = self.permits.acquire().await.map_err(|_| HookFailure::Timeout)?;
            let resp = self
                .http
                .post(url)
                .json(body)
                .send()
                .await
                .map_err(|e| HookFailure::Unreachable(error_chain(&e)))?;
            let status = resp.status().as_u16();
            if status >= 500 {
                return Err(HookFailure::ServerError(status));
            }
            Ok((status, read_capped(resp).await?))
        };
        let result = tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or(Err(HookFailure::Timeout));
        timer.observe_duration();
        result
    }

    fn count(&self, hook: Hook, outcome: &str) {
        self.metrics
            .hook_requests
            .with_label_values(&[hook.label(), outcome])
            .inc();
    }

    /// Counts a failure and logs it (at most what the backend's error says).
    fn failed(&self, hook: Hook, f: &HookFailure) {
        self.count(hook, f.outcome());
        warn!(hook = hook.label(), error = %f, "backend hook failed; refusing (fail closed)");
    }
}

/// The error and its sources in one line: reqwest's own message hides "connection refused".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn read_capped(mut resp: reqwest::Response) -> Result<Bytes, HookFailure> {
    let too_large = || HookFailure::BadAnswer(format!("answer larger than {MAX_ANSWER_BYTES} bytes"));
    if resp.content_length().is_some_and(|n| n > MAX_ANSWER_BYTES as u64) {
        return Err(too_large());
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| HookFailure::Unreachable(error_chain(&e)))?
    {
        if buf.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// A subscribe or publish hook's `{"allow":…,"reason"?:…,"data"?:…}`.
#[derive(Deserialize)]
struct Decision {
    #[serde(default)]
    allow: bool,
    #[serde(default)]
    reason: Option<String>,
    /// Present (even `null`) = replace the publish's data.
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// A reason short enough to show the client, cut at a character boundary.
fn short_reason(mut reason: String) -> String {
    if reason.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

#[derive(Serialize)]
struct SubscribeRequest<'a> {
    user_id: &'a str,
    connection_id: &'a str,
    channel: &'a str,
}

#[derive(Serialize)]
struct PublishRequest<'a> {
    user_id: &'a str,
    connection_id: &'a str,
    channel: &'a str,
    event: &'a str,
    data: &'a RawValue,
}

/// The node's backend hooks. Without a URL, a hook is off and nothing changes.
pub struct Hooks {
    caller: Caller,
    connect_url: Option<String>,
    subscribe_url: Option<String>,
    publish_url: Option<String>,
    disconnects: Option<disconnect::Queue>,
}

impl Hooks {
    /// Builds the client and, with a disconnect URL, starts the task that sends disconnects
    /// (it stops when `stop` turns true, after a last flush).
    pub fn start(
        config: &Config,
        node_id: &str,
        metrics: Metrics,
        stop: watch::Receiver<bool>,
    ) -> Result<Self, String> {
        let timeout = Duration::from_millis(config.hook_timeout_ms);
        let http = crate::http_client::builder()
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(config.hook_max_concurrent)
            // A redirect is an unexpected answer, not something to follow blindly.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the hook HTTP client: {e}"))?;
        let caller = Caller {
            http,
            timeout,
            permits: Arc::new(Semaphore::new(config.hook_max_concurrent)),
            metrics,
        };
        let disconnects = config
            .hook_disconnect_url
            .clone()
            .map(|url| disconnect::Queue::start(caller.clone(), url, node_id.to_owned(), stop));
        Ok(Self {
            caller,
            connect_url: config.hook_connect_url.clone(),
            subscribe_url: config.hook_subscribe_url.clone(),
            publish_url: config.hook_publish_url.clone(),
            disconnects,
        })
    }

    /// Whether an upgrade without a token is asked about (`WSGW_HOOK_CONNECT_URL` is set).
    pub fn has_connect(&self) -> bool {
        self.connect_url.is_some()
    }

    /// Asks the connect hook about an upgrade without a token. A 200 answer's grants are checked
    /// like a token's claims (see [`Authenticator::hook_claims`]).
    pub async fn connect(&self, req: &ConnectRequest, auth: &Authenticator) -> ConnectVerdict {
        let refuse = |code, message: &str, close| ConnectVerdict::Refuse {
            code,
            message: message.to_owned(),
            close,
        };
        let unavailable = || {
            refuse(
                ErrorCode::Unavailable,
                "cannot check the connection with the backend; try again later",
                CloseCode::TryAgainLater,
            )
        };
        let Some(url) = &self.connect_url else {
            return refuse(ErrorCode::Unauthorized, "missing token", CloseCode::Unauthorized);
        };
        let hook = Hook::Connect;
        let body = match self.caller.post(hook, url, req).await {
            Ok((200, body)) => body,
            Ok((401 | 403, _)) => {
                self.caller.count(hook, "deny");
                return refuse(
                    ErrorCode::Unauthorized,
                    "refused by the backend",
                    CloseCode::Unauthorized,
                );
            }
            Ok((status, _)) => {
                self.caller
                    .failed(hook, &HookFailure::BadAnswer(format!("HTTP {status}")));
                return unavailable();
            }
            Err(f) => {
                self.caller.failed(hook, &f);
                return unavailable();
            }
        };
        let grants: Map<String, Value> = match serde_json::from_slice(&body) {
            Ok(g) => g,
            Err(e) => {
                self.caller.failed(hook, &HookFailure::BadAnswer(e.to_string()));
                return unavailable();
            }
        };
        match auth.hook_claims(&grants) {
            Ok(claims) => {
                self.caller.count(hook, "ok");
                ConnectVerdict::Admit(claims)
            }
            Err(AuthError::Expired) => {
                self.caller.count(hook, "deny");
                refuse(ErrorCode::TokenExpired, "grants expired", CloseCode::TokenExpired)
            }
            Err(e) => {
                // As a token with these claims would be: refused, 4001. The detail is the
                // backend's bug, so it goes to the log, not to the client.
                self.caller.count(hook, "bad_answer");
                warn!(error = %e, "connect hook answered invalid grants");
                refuse(
                    ErrorCode::Unauthorized,
                    "the backend's grants are invalid",
                    CloseCode::Unauthorized,
                )
            }
        }
    }

    /// Asks the subscribe hook about `channel`; None when there is no subscribe hook.
    pub async fn subscribe(&self, user_id: &str, connection_id: &str, channel: &str) -> Option<Verdict<()>> {
        let url = self.subscribe_url.as_deref()?;
        let body = SubscribeRequest {
            user_id,
            connection_id,
            channel,
        };
        Some(match self.decide(Hook::Subscribe, url, &body).await {
            Verdict::Allow(_) => Verdict::Allow(()),
            Verdict::Deny(r) => Verdict::Deny(r),
            Verdict::Unavailable => Verdict::Unavailable,
        })
    }

    /// Asks the publish hook about a client publish; None when there is no publish hook.
    /// `Allow(Some(data))`: publish with this data instead.
    pub async fn publish(
        &self,
        user_id: &str,
        connection_id: &str,
        channel: &str,
        event: &str,
        data: &RawValue,
    ) -> Option<Verdict<Option<Box<RawValue>>>> {
        let url = self.publish_url.as_deref()?;
        let body = PublishRequest {
            user_id,
            connection_id,
            channel,
            event,
            data,
        };
        Some(self.decide(Hook::Publish, url, &body).await)
    }

    async fn decide(&self, hook: Hook, url: &str, body: &impl Serialize) -> Verdict<Option<Box<RawValue>>> {
        let decision = match self.caller.post(hook, url, body).await {
            Ok((200, body)) => serde_json::from_slice::<Decision>(&body)
                .map_err(|e| HookFailure::BadAnswer(format!("not {{\"allow\":bool}}: {e}"))),
            Ok((401 | 403, _)) => {
                self.caller.count(hook, "deny");
                return Verdict::Deny(None);
            }
            Ok((status, _)) => Err(HookFailure::BadAnswer(format!("HTTP {status}"))),
            Err(f) => Err(f),
        };
        match decision {
            Ok(d) if d.allow => {
                self.caller.count(hook, "ok");
                Verdict::Allow(d.data)
            }
            Ok(d) => {
                self.caller.count(hook, "deny");
                Verdict::Deny(d.reason.map(short_reason))
            }
            Err(f) => {
                self.caller.failed(hook, &f);
                Verdict::Unavailable
            }
        }
    }

    /// Tells the disconnect hook (if any) that a socket ended with `code`. Never waits: a full
    /// queue drops the report and counts it (`wsgw_hook_disconnects_dropped_total`).
    pub fn disconnected(&self, connection_id: &str, user_id: &str, code: u16) {
        if let Some(q) = &self.disconnects {
            q.push(connection_id, user_id, code);
        }
    }

    /// Sends what the disconnect queue still holds and waits for the sends in flight (at most
    /// about one hook timeout). Called once the node's sessions have ended.
    pub async fn flush(&self) {
        if let Some(q) = &self.disconnects {
            q.flush(self.caller.timeout + Duration::from_secs(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_requests_carry_the_present_headers_lower_cased_and_the_address() {
        let mut h = HeaderMap::new();
        h.append("Cookie", "a=1".parse().unwrap());
        h.append("cookie", "b=2".parse().unwrap());
        h.append("User-Agent", "t/1".parse().unwrap());
        h.append("x-other", "no".parse().unwrap());
        let req = ConnectRequest::new(&h, "10.0.0.7".parse().unwrap());
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"headers": {"cookie": "a=1; b=2", "user-agent": "t/1"}, "client_addr": "10.0.0.7"})
        );
    }

    #[test]
    fn a_decision_tells_absent_data_from_null_data() {
        let d: Decision = serde_json::from_str(r#"{"allow":true}"#).unwrap();
        assert!(d.allow && d.data.is_none());
        let d: Decision = serde_json::from_str(r#"{"allow":true,"data":null}"#).unwrap();
        assert_eq!(d.data.unwrap().get(), "null");
        let d: Decision = serde_json::from_str(r#"{}"#).unwrap();
        assert!(!d.allow, "no allow is a refusal");
    }

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        let r = short_reason("é".repeat(200));
        assert!(r.len() <= MAX_REASON_BYTES && r.chars().all(|c| c == 'é'));
    }
}
