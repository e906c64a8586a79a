//! metrics.rs: the node's Prometheus registry and the metric handles every part shares.
//! One registry per gateway instance (not a global), so tests can run several in one process.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// All metric handles of one gateway node.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Sockets open now.
    pub connections: IntGauge,
    /// Sockets accepted (authenticated and welcomed).
    pub connections_opened: IntCounter,
    /// Sockets closed, by close reason.
    pub connections_closed: IntCounterVec,
    /// Frames received from clients.
    pub frames_in: IntCounter,
    /// Frames written to clients.
    pub frames_out: IntCounter,
    /// Bytes of frames received from clients.
    pub bytes_in: IntCounter,
    /// Bytes of frames written to clients.
    pub bytes_out: IntCounter,
    /// Durable publishes, by source (`api`, `client`).
    pub publishes: IntCounterVec,
    /// Seconds from publish to the frame being written to a socket.
    pub delivery_latency: Histogram,
    /// Sockets closed because their outgoing queue overflowed.
    pub slow_consumers: IntCounter,
    /// Failed authentications, by reason.
    pub auth_failures: IntCounterVec,
    /// Error frames sent, by code.
    pub errors_sent: IntCounterVec,
    /// Frames refused by the inbound rate limit.
    pub rate_limited: IntCounter,
    /// Events sent from history on connect or subscribe.
    pub replayed_events: IntCounter,
    /// Sockets refused because the node is full.
    pub rejected_full: IntCounter,
    /// Broker operation failures, by operation.
    pub broker_errors: IntCounterVec,
    /// Time to serve an HTTP API call, by route.
    pub http_latency: HistogramVec,
    /// Pub/sub (re)connections to Redis after the first.
    pub redis_reconnects: IntCounter,
    /// 1 while the Redis pub/sub loop is connected and its canary arrives.
    pub redis_up: IntGauge,
    /// Frames from Redis that were not deliverable (malformed, wrong type), dropped.
    pub dropped_frames: IntCounter,
    /// Events re-read from history after a Redis outage and delivered.
    pub repaired_events: IntCounter,
    /// JWKS loads (start, refresh, unknown `kid`, file change) that failed.
    pub jwks_refresh_failures: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric (names prefixed `wsgw_`).
    pub fn new() -> Self {
        let registry = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
            // Names are static and unique, so registration cannot fail.
            r.register(Box::new(m.clone())).expect("metric registered twice");
            m
        }
        let counter = |name: &str, help: &str| reg(&registry, IntCounter::new(name, help).expect("valid metric"));
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let latency_buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        Self {
            connections: reg(
                &registry,
                IntGauge::new("wsgw_connections", "WebSocket connections open now").expect("valid"),
            ),
            connections_opened: counter("wsgw_connections_opened_total", "Connections accepted and welcomed"),
            connections_closed: counter_vec(
                "wsgw_connections_closed_total",
                "Connections closed, by reason",
                &["reason"],
            ),
            frames_in: counter("wsgw_frames_in_total", "Frames received from clients"),
            frames_out: counter("wsgw_frames_out_total", "Frames written to clients"),
            bytes_in: counter("wsgw_bytes_in_total", "Bytes received from clients"),
            bytes_out: counter("wsgw_bytes_out_total", "Bytes written to clients"),
            publishes: counter_vec("wsgw_publishes_total", "Durable publishes, by source", &["source"]),
            delivery_latency: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new("wsgw_delivery_latency_seconds", "Publish to socket write")
                        .buckets(latency_buckets.clone()),
                )
                .expect("valid"),
            ),
            slow_consumers: counter(
                "wsgw_slow_consumer_closes_total",
                "Sockets closed 4008 for queue overflow",
            ),
            auth_failures: counter_vec(
                "wsgw_auth_failures_total",
                "Failed authentications, by reason",
                &["reason"],
            ),
            errors_sent: counter_vec("wsgw_error_frames_total", "Error frames sent, by code", &["code"]),
            rate_limited: counter(
                "wsgw_rate_limited_frames_total",
                "Inbound frames refused by the rate limit",
            ),
            replayed_events: counter("wsgw_replayed_events_total", "Events sent from history"),
            rejected_full: counter("wsgw_rejected_full_total", "Sockets refused with 1013, node full"),
            broker_errors: counter_vec("wsgw_broker_errors_total", "Broker failures, by operation", &["op"]),
            http_latency: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new("wsgw_http_request_seconds", "HTTP API latency").buckets(latency_buckets),
                    &["route"],
                )
                .expect("valid"),
            ),
            redis_reconnects: counter("wsgw_redis_reconnects_total", "Redis pub/sub reconnections"),
            redis_up: reg(
                &registry,
                IntGauge::new("wsgw_redis_up", "Redis pub/sub connected and live").expect("valid"),
            ),
            dropped_frames: counter("wsgw_dropped_frames_total", "Undeliverable frames from Redis, dropped"),
            repaired_events: counter(
                "wsgw_repaired_events_total",
                "Events re-read from history after an outage",
            ),
            jwks_refresh_failures: counter(
                "wsgw_jwks_refresh_failures_total",
                "JWKS loads that failed (the last good key set stays)",
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(8192);
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
