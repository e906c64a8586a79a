//! metrics.rs: the node's Prometheus registry and the metric handles every part shares.
//! One registry per gateway instance (not a global), so tests can run several in one process.

use std::cell::RefCell;
use std::sync::Arc;

use prometheus::proto::MetricType;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// All metric handles of one gateway node.
///
/// Names follow the Prometheus conventions: the base unit last (`_seconds`, `_bytes`), counters
/// end in `_total`, histograms of durations in `_duration_seconds`. `tests/metrics_names.rs`
/// checks every family against these rules.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Every `wsgw_` family registered, with its type, including vectors that have no series yet
    /// (which `/metrics` leaves out).
    families: Arc<[(String, &'static str)]>,
    /// `wsgw_build_info{version}`: always 1, for joining the version onto other series.
    pub build_info: IntGaugeVec,
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
    /// Frames fanned out in bursts (several read from pub/sub at once; hub/burst.rs).
    pub burst_frames: IntCounter,
    /// Pub/sub reader passes that waited for the write pace (broker/redis/pace.rs).
    pub paced_passes: IntCounter,
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
    /// Times the Sentinels named another Redis primary and this node followed it.
    pub redis_failovers: IntCounter,
    /// JWKS loads (start, refresh, unknown `kid`, file change) that failed.
    pub jwks_refresh_failures: IntCounter,
    /// Backend hook calls, by hook (`connect`, `subscribe`, `publish`, `disconnect`) and outcome.
    pub hook_requests: IntCounterVec,
    /// Time a backend hook call took (waiting for a free call slot included), by hook.
    pub hook_duration: HistogramVec,
    /// Disconnects not reported to the disconnect hook because its queue was full.
    pub hook_disconnects_dropped: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric (names prefixed `wsgw_`).
    pub fn new() -> Self {
        let registry = Registering {
            registry: Registry::new(),
            families: RefCell::default(),
        };
        // The process_* collector (CPU seconds, resident memory, open fds, start time), read
        // from /proc; one per registry, so several nodes in one test process each have theirs.
        #[cfg(target_os = "linux")]
        registry
            .registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("process collector registered once");
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registering, m: T) -> T {
            for family in m.collect() {
                r.families
                    .borrow_mut()
                    .push((family.name().to_string(), type_name(family.get_field_type())));
            }
            // Names are static and unique, so registration cannot fail.
            r.registry
                .register(Box::new(m.clone()))
                .expect("metric registered twice");
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
        let build_info = reg(
            &registry,
            IntGaugeVec::new(
                Opts::new("wsgw_build_info", "Always 1; the version of the running gateway"),
                &["version"],
            )
            .expect("valid"),
        );
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Self {
            build_info,
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
            frames_in: counter("wsgw_received_frames_total", "Frames received from clients"),
            frames_out: counter("wsgw_sent_frames_total", "Frames written to clients"),
            burst_frames: counter(
                "wsgw_burst_frames_total",
                "Frames read from Redis pub/sub together with others and fanned out as one burst",
            ),
            paced_passes: counter(
                "wsgw_paced_passes_total",
                "Redis pub/sub reader passes that waited for the write pace (WSGW_WRITE_PACE_MS)",
            ),
            bytes_in: counter("wsgw_received_bytes_total", "Bytes received from clients"),
            bytes_out: counter(
                "wsgw_sent_bytes_total",
                "Bytes of frames written to clients, as on the wire (compressed where negotiated)",
            ),
            publishes: counter_vec("wsgw_publishes_total", "Durable publishes, by source", &["source"]),
            delivery_latency: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new("wsgw_delivery_duration_seconds", "Publish to socket write")
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
                    HistogramOpts::new("wsgw_http_request_duration_seconds", "HTTP API latency")
                        .buckets(latency_buckets.clone()),
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
            redis_failovers: counter(
                "wsgw_redis_failovers_total",
                "Redis primary changes (Sentinel failovers) this node followed",
            ),
            jwks_refresh_failures: counter(
                "wsgw_jwks_refresh_failures_total",
                "JWKS loads that failed (the last good key set stays)",
            ),
            hook_requests: counter_vec(
                "wsgw_hook_requests_total",
                "Backend hook calls, by hook and outcome",
                &["hook", "outcome"],
            ),
            hook_duration: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new("wsgw_hook_duration_seconds", "Backend hook call latency")
                        .buckets(latency_buckets),
                    &["hook"],
                )
                .expect("valid"),
            ),
            hook_disconnects_dropped: counter(
                "wsgw_hook_disconnects_dropped_total",
                "Disconnects not reported to the disconnect hook (queue full)",
            ),
            families: Arc::from(registry.families.take()),
            registry: registry.registry,
        }
    }

    /// Every `wsgw_` family with its type (`counter`, `gauge`, `histogram`, …), including
    /// labelled families that have no series yet and so are not in [`Metrics::render`]'s output.
    pub fn families(&self) -> &[(String, &'static str)] {
        &self.families
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(8192);
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The registry being filled, and the families registered into it so far.
struct Registering {
    registry: Registry,
    families: RefCell<Vec<(String, &'static str)>>,
}

/// A metric type as the text exposition format names it.
fn type_name(t: MetricType) -> &'static str {
    match t {
        MetricType::COUNTER => "counter",
        MetricType::GAUGE => "gauge",
        MetricType::SUMMARY => "summary",
        MetricType::HISTOGRAM => "histogram",
        MetricType::UNTYPED => "untyped",
    }
}
