//! Story: an operator points Prometheus and the shipped Grafana dashboard at a node. The node
//! says which version it runs (`wsgw_build_info`) and how much memory and CPU it uses
//! (`process_*`), every `wsgw_` metric is named by the Prometheus conventions (so a new,
//! misnamed metric fails here), and the dashboard and the metrics table in docs/operations.md
//! name only metrics the node really exports.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use serde_json::{Value, json};

/// Base units; when a name carries one, it comes last (before `_total` on a counter).
const BASE_UNITS: &[&str] = &["seconds", "bytes", "ratio"];
/// Units Prometheus names do not use: durations are `_seconds`, sizes `_bytes`.
const NON_BASE_UNITS: &[&str] = &[
    "ms",
    "us",
    "ns",
    "millis",
    "milliseconds",
    "micros",
    "microseconds",
    "nanoseconds",
    "minutes",
    "hours",
    "kb",
    "kib",
    "mb",
    "mib",
    "percent",
];
/// Words that say a metric measures a duration; such a histogram ends in `_duration_seconds`.
const DURATION_WORDS: &[&str] = &["latency", "duration", "time", "elapsed", "seconds"];

/// Why the metric family `name` of type `kind` breaks the naming rules, if it does.
fn naming_violation(name: &str, kind: &str) -> Option<String> {
    let words: Vec<&str> = name.split('_').collect();
    let bad = |why: &str| Some(format!("{name} ({kind}): {why}"));
    if kind == "counter" && !name.ends_with("_total") {
        return bad("a counter ends in `_total`");
    }
    if kind != "counter" && name.ends_with("_total") {
        return bad("only counters end in `_total`");
    }
    if let Some(unit) = words.iter().find(|w| NON_BASE_UNITS.contains(w)) {
        return bad(&format!("`{unit}` is not a base unit (use `_seconds` or `_bytes`)"));
    }
    // The unit is the last word, or the last before a counter's `_total`.
    let unit_at = words.len() - 1 - usize::from(kind == "counter");
    for (i, w) in words.iter().enumerate() {
        if BASE_UNITS.contains(w) && i != unit_at {
            return bad(&format!("the unit `{w}` comes last"));
        }
    }
    if (kind == "histogram" || kind == "summary")
        && words.iter().any(|w| DURATION_WORDS.contains(w))
        && !name.ends_with("_duration_seconds")
    {
        return bad("a histogram of durations ends in `_duration_seconds`");
    }
    None
}

/// `(family, type)` for every `# TYPE` line of a Prometheus text exposition.
fn families_in(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.trim().to_string()))
        .collect()
}

/// The metric family a series name belongs to (`x_bucket`, `x_count`, `x_sum` → `x` for a
/// histogram `x`), if `families` has it.
fn family_of<'a>(series: &'a str, families: &BTreeMap<String, String>) -> Option<&'a str> {
    if families.contains_key(series) {
        return Some(series);
    }
    ["_bucket", "_count", "_sum"]
        .iter()
        .filter_map(|s| series.strip_suffix(s))
        .find(|base| families.get(*base).is_some_and(|k| k == "histogram" || k == "summary"))
}

/// Every metric-like identifier (`wsgw_…`, `process_…`) in `text`.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        .filter(|t| t.starts_with("wsgw_") || t.starts_with("process_"))
        .map(str::to_string)
        .collect()
}

fn repo_file(rel: &str) -> String {
    let path = format!("{}/../../{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A node with some traffic behind it, so labelled families have series in `/metrics`: an
/// accepted socket that pings, is refused a channel and gets published events, a refused
/// token, and API calls.
async fn node_with_traffic() -> (Node, String) {
    let node = Node::default().await;
    let mut bad = Client::connect(&node.ws_url("token=not.a.jwt")).await;
    assert_eq!(bad.until_closed().await.0, Some(4001));
    let (mut c, _) = node.connect(&token("m", &[], &[])).await;
    c.send(json!({"type": "ping", "ts": 1})).await;
    c.expect("pong").await;
    c.send(json!({"type": "subscribe", "channel": "secret", "request_id": "r1"}))
        .await;
    assert_eq!(c.expect("error").await["code"], "forbidden");
    node.publish("user:m", "tick", json!({"n": 1})).await;
    assert_eq!(c.events(1).await.len(), 1);
    c.close().await;
    wait_until("the closed socket is counted", || async {
        metric_value(&node.metrics().await, "wsgw_connections") == Some(0.0)
    })
    .await;
    let m = node.metrics().await;
    (node, m)
}

#[test]
fn the_naming_rules_refuse_the_old_names_and_accept_conventional_ones() {
    for (name, kind) in [
        ("wsgw_bytes_in_total", "counter"),
        ("wsgw_bytes_out_total", "counter"),
        ("wsgw_http_request_seconds", "histogram"),
        ("wsgw_delivery_latency_seconds", "histogram"),
        ("wsgw_publishes", "counter"),
        ("wsgw_connections_total", "gauge"),
        ("wsgw_hook_latency_ms", "histogram"),
        ("wsgw_queue_wait_time", "histogram"),
        ("wsgw_seconds_since_start", "gauge"),
    ] {
        assert!(
            naming_violation(name, kind).is_some(),
            "{name} ({kind}) should be refused"
        );
    }
    for (name, kind) in [
        ("wsgw_received_bytes_total", "counter"),
        ("wsgw_sent_frames_total", "counter"),
        ("wsgw_http_request_duration_seconds", "histogram"),
        ("wsgw_delivery_duration_seconds", "histogram"),
        ("wsgw_frame_size_bytes", "histogram"),
        ("wsgw_connections", "gauge"),
        ("wsgw_build_info", "gauge"),
        ("wsgw_redis_up", "gauge"),
    ] {
        assert_eq!(naming_violation(name, kind), None);
    }
}

#[tokio::test]
async fn metrics_say_the_version_and_the_process_memory_and_cpu() {
    let node = Node::default().await;
    let m = node.metrics().await;
    let build_info = format!("wsgw_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    assert_eq!(metric_value(&m, &build_info), Some(1.0), "{build_info} in:\n{m}");
    assert!(m.contains("# TYPE wsgw_build_info gauge"), "{m}");
    let rss = metric_value(&m, "process_resident_memory_bytes").expect("process_resident_memory_bytes");
    assert!(rss > 0.0, "resident memory {rss}");
    for series in [
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "process_virtual_memory_bytes",
        "process_start_time_seconds",
    ] {
        assert!(metric_value(&m, series).is_some(), "{series} missing from:\n{m}");
    }
    assert!(metric_value(&m, "process_open_fds").unwrap() > 0.0);
    node.stop().await;
}

#[tokio::test]
async fn every_wsgw_metric_follows_the_prometheus_naming_rules() {
    let (node, m) = node_with_traffic().await;
    let scraped = families_in(&m);
    let declared: BTreeMap<String, String> = node
        .gw
        .gateway
        .metrics
        .families()
        .iter()
        .map(|(n, k)| (n.clone(), k.to_string()))
        .collect();
    // The rules, over the whole scrape and over families that have no series yet.
    let violations: Vec<String> = scraped
        .iter()
        .chain(declared.iter())
        .filter(|(n, _)| n.starts_with("wsgw_"))
        .filter_map(|(n, k)| naming_violation(n, k))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(violations.is_empty(), "misnamed metrics:\n{}", violations.join("\n"));
    // The scrape is not vacuous: counters, gauges and both histograms are in it, and every
    // wsgw_ family it holds is a declared one.
    for name in [
        "wsgw_connections",
        "wsgw_received_frames_total",
        "wsgw_sent_bytes_total",
        "wsgw_auth_failures_total",
        "wsgw_error_frames_total",
        "wsgw_delivery_duration_seconds",
        "wsgw_http_request_duration_seconds",
    ] {
        assert!(scraped.contains_key(name), "{name} not in /metrics:\n{m}");
    }
    for (name, kind) in scraped.iter().filter(|(n, _)| n.starts_with("wsgw_")) {
        assert_eq!(declared.get(name), Some(kind), "{name} scraped but not declared");
    }
    node.stop().await;
}

#[tokio::test]
async fn the_dashboard_and_the_docs_name_only_exported_metrics() {
    let (node, m) = node_with_traffic().await;
    let mut exported = families_in(&m);
    for (n, k) in node.gw.gateway.metrics.families() {
        exported.insert(n.clone(), k.to_string());
    }

    // deploy/grafana/dashboard.json: every series a query reads exists.
    let dashboard: Value = serde_json::from_str(&repo_file("deploy/grafana/dashboard.json")).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap_or_default().to_string());
        }
    }
    for q in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        exprs.push(q["definition"].as_str().unwrap_or_default().to_string());
    }
    let unknown: Vec<String> = metric_names_in(&exprs.join("\n"))
        .into_iter()
        .filter(|s| family_of(s, &exported).is_none())
        .collect();
    assert!(
        unknown.is_empty(),
        "the dashboard reads metrics the node does not export: {unknown:?}"
    );
    // It shows memory and CPU.
    assert!(
        exprs.iter().any(|e| e.contains("process_resident_memory_bytes")),
        "no memory panel"
    );
    assert!(
        exprs.iter().any(|e| e.contains("rate(process_cpu_seconds_total")),
        "no CPU panel"
    );

    // docs/operations.md: the metrics table lists exactly the wsgw_ families, and every metric
    // the page names elsewhere (alerts, prose) exists.
    let ops = repo_file("docs/operations.md");
    let table: BTreeSet<String> = ops
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(name, _)| name.to_string())
        .filter(|n| n.starts_with("wsgw_") || n.starts_with("process_"))
        .collect();
    let declared: BTreeSet<String> = node
        .gw
        .gateway
        .metrics
        .families()
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    let undocumented: Vec<&String> = declared.difference(&table).collect();
    assert!(
        undocumented.is_empty(),
        "not in the operations.md metrics table: {undocumented:?}"
    );
    let unknown: Vec<String> = metric_names_in(&ops)
        .into_iter()
        .filter(|s| s.ends_with("_total") || s.ends_with("_seconds") || s.ends_with("_bytes") || table.contains(s))
        .filter(|s| family_of(s, &exported).is_none())
        .collect();
    assert!(
        unknown.is_empty(),
        "operations.md names metrics the node does not export: {unknown:?}"
    );
    node.stop().await;
}
