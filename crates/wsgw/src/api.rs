//! api.rs: the HTTP surface: `/ws` upgrades, the backend API under `/api` (API-key
//! authenticated), and the unauthenticated `/health`, `/ready`, `/metrics`. Errors become
//! HTTP answers in one place (`AppError`). Never holds a hub lock across an await.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use wsgw_protocol::{EventId, validate_channel};

use crate::broker::{BrokerError, HistoryQuery, PublishRequest};
use crate::config::ExposeSecret;
use crate::node::Gateway;

/// An API failure, turned into a JSON body `{"error": code, "message": …}` with its status.
#[derive(Debug)]
pub enum AppError {
    /// 400.
    BadRequest(String),
    /// 401.
    Unauthorized(&'static str),
    /// 404.
    NotFound(String),
    /// 500: the gateway or its broker failed (a bug); not the caller's fault.
    Internal(String),
    /// 503: the broker is unreachable; callers may retry.
    Unavailable(String),
    /// Status decided by axum's body extractor (413 for oversized bodies).
    Body(BytesRejection),
}

impl From<BrokerError> for AppError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::BadRequest(_) => Self::BadRequest(e.to_string()),
            BrokerError::Internal(_) => Self::Internal(e.to_string()),
            BrokerError::Unavailable(_) => Self::Unavailable(e.to_string()),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
            Self::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m.to_string()),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
            Self::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", m),
            Self::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
            Self::Body(r) => {
                let status = r.status();
                let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "too_large"
                } else {
                    "bad_request"
                };
                (status, code, r.body_text())
            }
        };
        (status, Json(json!({ "error": code, "message": message }))).into_response()
    }
}

type ApiResult = Result<Response, AppError>;

/// All routes of a node.
pub fn router(gw: Arc<Gateway>) -> Router {
    let api = Router::new()
        .route("/publish", post(publish))
        .route("/broadcast", post(broadcast))
        .route("/users/{id}/disconnect", post(disconnect_user))
        .route("/bans", post(ban))
        .route("/bans/{id}", axum::routing::delete(unban))
        .route("/connections/{id}/disconnect", post(disconnect_connection))
        .route("/presence/users/{id}", get(presence))
        .route("/presence/channels/{channel}", get(channel_presence))
        .route("/history/{channel}", get(history))
        .route("/stats", get(stats))
        .layer(DefaultBodyLimit::max(gw.config.max_publish_bytes))
        .route_layer(middleware::from_fn_with_state(gw.clone(), require_api_key));
    let mut router = Router::new()
        .route("/ws", get(crate::ws_open::ws_upgrade))
        .route("/wsgw.js", get(client_js))
        .route("/health", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .nest("/api", api);
    if gw.config.dev {
        router = router.route("/", get(demo_page)).route("/dev/stats", get(dev_stats));
    }
    router.with_state(gw)
}

/// The routes of `metrics_listen`: `/metrics` alone.
pub fn metrics_router(gw: Arc<Gateway>) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(gw)
}

/// The browser client (clients/js/wsgw.js), served so pages can `import` it from the node.
// A symlink to clients/js/wsgw.js (the package the JS tests run), so the crate holds what it serves.
const CLIENT_JS: &str = include_str!("../assets/wsgw.js");
const DEMO_HTML: &str = include_str!("../assets/demo.html");

async fn client_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            // Pages on other origins `import` it (docs/client-js.md): a public, credential-free file.
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        CLIENT_JS,
    )
        .into_response()
}

/// `--dev` only: a page to connect, subscribe, publish and watch the node, with the dev token
/// filled in (dev mode is open by design; see `wsgw --dev`).
async fn demo_page(State(gw): State<Arc<Gateway>>) -> Response {
    let token = gw.dev_token.as_deref().unwrap_or("");
    let html = DEMO_HTML.replace("__WSGW_DEV_TOKEN__", token);
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

/// `--dev` only: this node's figures for the demo page, without an API key.
async fn dev_stats(State(gw): State<Arc<Gateway>>) -> Response {
    let hub = gw.hub.stats();
    Json(json!({
        "node": gw.node_id,
        "connections": hub.connections,
        "channels": hub.channels,
        "frames_out": gw.metrics.frames_out.get(),
    }))
    .into_response()
}

/// Compares without an early exit, so response timing does not reveal how much of a key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_api_key(State(gw): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    let Some(key) = gw.config.api_key.as_ref().map(ExposeSecret::expose_secret) else {
        return AppError::Unauthorized("the HTTP API is disabled: set WSGW_API_KEY").into_response();
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(p) if constant_time_eq(p.as_bytes(), key.as_bytes()) => {
            let route = req.uri().path().split('/').nth(1).unwrap_or("").to_owned();
            let timer = gw
                .metrics
                .http_latency
                .with_label_values(&[route.as_str()])
                .start_timer();
            let resp = next.run(req).await;
            timer.observe_duration();
            resp
        }
        _ => AppError::Unauthorized("missing or wrong API key (Authorization: Bearer <key>)").into_response(),
    }
}

async fn ready(State(gw): State<Arc<Gateway>>) -> Response {
    let body = json!({
        "ready": gw.is_ready(),
        "draining": gw.is_draining(),
        "broker": gw.broker.kind(),
        "broker_ready": gw.broker.is_ready(),
    });
    let status = if gw.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        gw.metrics.render(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct PublishBody {
    channel: String,
    event: String,
    #[serde(default = "null_data")]
    data: Box<RawValue>,
    #[serde(default)]
    exclude: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct BroadcastBody {
    event: String,
    #[serde(default = "null_data")]
    data: Box<RawValue>,
    #[serde(default)]
    exclude: Vec<String>,
}

fn null_data() -> Box<RawValue> {
    RawValue::from_string("null".into()).unwrap_or_else(|_| unreachable!("null is JSON"))
}

fn parse_body<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, AppError> {
    let body = body.map_err(AppError::Body)?;
    serde_json::from_slice(&body).map_err(|e| AppError::BadRequest(format!("invalid JSON body: {e}")))
}

/// The `Idempotency-Key` header: absent, or one valid key (docs/protocol.md, section 8).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, AppError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(v) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(AppError::BadRequest("more than one Idempotency-Key header".into()));
    }
    // Bytes outside visible ASCII fail `to_str`: refused below, like an empty key.
    let key = v.to_str().unwrap_or_default();
    crate::broker::validate_idempotency_key(key).map_err(AppError::BadRequest)?;
    Ok(Some(key.to_owned()))
}

async fn do_publish(
    gw: &Gateway,
    channel: String,
    event: String,
    data: Box<RawValue>,
    exclude: Vec<String>,
    idempotency_key: Option<String>,
) -> ApiResult {
    // Over HTTP every refused publish, a reserved channel included, is a 400 (docs/protocol.md).
    wsgw_protocol::validate_publish(&channel, &event).map_err(|e| AppError::BadRequest(e.to_string()))?;
    let id = gw
        .broker
        .publish(PublishRequest {
            channel,
            event,
            data,
            exclude,
            idempotency_key,
        })
        .await
        .inspect_err(|_| {
            gw.metrics.broker_errors.with_label_values(&["publish"]).inc();
        })?;
    gw.metrics.publishes.with_label_values(&["api"]).inc();
    Ok(Json(json!({ "event_id": id })).into_response())
}

async fn publish(State(gw): State<Arc<Gateway>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let b: PublishBody = parse_body(body)?;
    let key = idempotency_key(&headers)?;
    do_publish(&gw, b.channel, b.event, b.data, b.exclude, key).await
}

async fn broadcast(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let b: BroadcastBody = parse_body(body)?;
    let key = idempotency_key(&headers)?;
    do_publish(&gw, wsgw_protocol::BROADCAST.into(), b.event, b.data, b.exclude, key).await
}

async fn disconnect_user(State(gw): State<Arc<Gateway>>, Path(id): Path<String>) -> ApiResult {
    let n = gw.broker.kick_user(&id).await?;
    Ok(Json(json!({ "user_id": id, "disconnected": n })).into_response())
}

/// Longest ban, in seconds (30 days).
pub const MAX_BAN_TTL_S: u64 = 2_592_000;

#[derive(Debug, Deserialize)]
struct BanBody {
    user_id: String,
    ttl_s: u64,
}

async fn ban(State(gw): State<Arc<Gateway>>, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let body: BanBody = parse_body(body)?;
    if !(1..=MAX_BAN_TTL_S).contains(&body.ttl_s) {
        return Err(AppError::BadRequest(format!("ttl_s must be 1..={MAX_BAN_TTL_S}")));
    }
    if body.user_id.is_empty()
        || body.user_id.len() > crate::auth::MAX_SUB_LEN
        || validate_channel(&body.user_id, false).is_err()
    {
        return Err(AppError::BadRequest(
            "user_id must be 1..=128 bytes of [A-Za-z0-9_.:@=/-]".into(),
        ));
    }
    let n = gw.broker.ban(&body.user_id, body.ttl_s).await?;
    Ok(Json(json!({ "user_id": body.user_id, "ttl_s": body.ttl_s, "disconnected": n })).into_response())
}

async fn unban(State(gw): State<Arc<Gateway>>, Path(id): Path<String>) -> ApiResult {
    if gw.broker.unban(&id).await? {
        Ok(Json(json!({ "user_id": id, "unbanned": true })).into_response())
    } else {
        Err(AppError::NotFound(format!("no ban for user {id}")))
    }
}

async fn disconnect_connection(State(gw): State<Arc<Gateway>>, Path(id): Path<String>) -> ApiResult {
    if gw.broker.kick_connection(&id).await? {
        Ok(Json(json!({ "connection_id": id, "disconnected": 1 })).into_response())
    } else {
        Err(AppError::NotFound(format!("no connection {id}")))
    }
}

async fn presence(State(gw): State<Arc<Gateway>>, Path(id): Path<String>) -> ApiResult {
    let connections = gw.broker.presence(&id).await?;
    Ok(Json(json!({ "user_id": id, "connections": connections })).into_response())
}

/// Members of a presence-tracked channel (`WSGW_PRESENCE_CHANNELS`), cluster-wide.
async fn channel_presence(State(gw): State<Arc<Gateway>>, Path(channel): Path<String>) -> ApiResult {
    validate_channel(&channel, false).map_err(|e| AppError::BadRequest(e.to_string()))?;
    if !crate::presence::is_tracked(&gw.config.presence_channels, &channel) {
        return Err(AppError::BadRequest(format!(
            "presence is not tracked on {channel} (see WSGW_PRESENCE_CHANNELS)"
        )));
    }
    let clients = gw.broker.channel_presence(&channel).await?;
    Ok(Json(json!({ "channel": channel, "clients": clients })).into_response())
}

#[derive(Debug, Deserialize)]
struct HistoryParams {
    since: Option<String>,
    limit: Option<usize>,
}

async fn history(
    State(gw): State<Arc<Gateway>>,
    Path(channel): Path<String>,
    Query(p): Query<HistoryParams>,
) -> ApiResult {
    validate_channel(&channel, false).map_err(|e| AppError::BadRequest(e.to_string()))?;
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    let query = match p.since.as_deref() {
        Some(s) => {
            let id: EventId = s
                .parse()
                .and_then(|id| crate::history::own_id(gw.broker.as_ref(), id))
                .map_err(|e: wsgw_protocol::EventIdError| AppError::BadRequest(e.to_string()))?;
            HistoryQuery::After { id, limit, until: None }
        }
        None => HistoryQuery::Last { n: limit, until: None },
    };
    let page = gw.broker.history(&channel, query).await?;
    let events: Vec<serde_json::Value> = page
        .events
        .iter()
        .filter_map(|e| serde_json::from_str(e.frame.as_str()).ok())
        .collect();
    Ok(Json(json!({ "channel": channel, "events": events, "recovered": page.complete })).into_response())
}

async fn stats(State(gw): State<Arc<Gateway>>) -> ApiResult {
    let hub = gw.hub.stats();
    let cluster = gw.broker.cluster().await?;
    Ok(Json(json!({
        "node": {
            "id": gw.node_id,
            "connections": hub.connections,
            "channels": hub.channels,
            "patterns": hub.patterns,
            "parked_sessions": hub.parked_sessions,
            "started_at": gw.started_at_ms,
            "version": env!("CARGO_PKG_VERSION"),
            "broker": gw.broker.kind(),
            "draining": gw.is_draining(),
        },
        "cluster": {
            "nodes": cluster.nodes,
            "connections": cluster.connections,
            "node_ids": cluster.node_ids,
        },
    }))
    .into_response())
}
