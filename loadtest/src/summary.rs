//! The end-of-test summary: k6-like text on stdout, or JSON; thresholds and checks evaluated.

use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;

use crate::figures::{Figures, Hist};
use crate::scenario::Scenario;
use crate::threshold::Threshold;

#[derive(Clone, Debug, Serialize)]
pub struct GatewayFigures {
    pub pids: Vec<u32>,
    pub cpu_s: f64,
    pub rss_before_kib: u64,
    pub rss_peak_kib: u64,
    pub peak_vus: u64,
    pub rss_per_socket_kib: Option<f64>,
    pub deliveries_per_cpu_s: Option<f64>,
    /// How long the most VUs stayed all connected (between two of the once-a-second samples),
    /// and the gateway's CPU over that time: what holding them cost, their connects and closes
    /// apart. None when they were held for less than a second.
    pub held_s: Option<f64>,
    pub held_cpu_s: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ThresholdResult {
    pub threshold: String,
    pub value: Option<f64>,
    pub ok: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub passes: u64,
    pub fails: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub duration_s: f64,
    pub max_vus: u64,
    pub workers: usize,
    pub killed_pid: Option<u32>,
    pub figures: Figures,
    pub gateway: Option<GatewayFigures>,
    pub thresholds: Vec<ThresholdResult>,
    pub checks: Vec<CheckResult>,
}

fn ms(v: Option<u64>) -> Option<f64> {
    v.map(|us| us as f64 / 1000.0)
}

fn trend(h: &Hist, stat: &str) -> Option<f64> {
    match stat {
        "avg" => h.mean().map(|m| m / 1000.0),
        "min" => ms(h.quantile(0.0)),
        "med" | "p50" => ms(h.quantile(0.5)),
        "max" => ms(h.quantile(1.0)),
        p if p.starts_with('p') => {
            let q: f64 = p[1..].parse().ok()?;
            let q = if p.len() > 3 {
                q / 10f64.powi(p.len() as i32 - 1)
            } else {
                q / 100.0
            };
            ms(h.quantile(q))
        }
        _ => None,
    }
}

/// A metric's value for thresholds: times in ms; `percent` asks for a rate × 100.
pub fn metric(f: &Figures, g: Option<&GatewayFigures>, duration_s: f64, name: &str, percent: bool) -> Option<f64> {
    let rate = |num: u64, den: u64| if den == 0 { 0.0 } else { num as f64 * 100.0 / den as f64 };
    let expected = f.delivered.saturating_sub(f.duplicates) + f.missing;
    if let Some((base, stat)) = name.rsplit_once('_') {
        let h = match base {
            "connect" => Some(&f.connect),
            "delivery" => Some(&f.delivery),
            "reconnect" => Some(&f.reconnect),
            _ => None,
        };
        // `connect_failures` shares its prefix with the `connect_*` trend: only known stats
        // (avg, med, p99, …) read the histogram.
        if let Some(v) = h.and_then(|h| trend(h, stat)) {
            return Some(v);
        }
    }
    let ops = f.connect_attempts + f.delivered + f.published;
    Some(match (name, percent) {
        ("errors", true) => rate(f.errors, ops),
        ("errors", false) => f.errors as f64,
        ("missing", true) => rate(f.missing, expected),
        ("missing", false) => f.missing as f64,
        ("duplicates", true) => rate(f.duplicates, expected),
        ("duplicates", false) => f.duplicates as f64,
        ("connect_failures", true) => rate(f.connect_failures, f.connect_attempts),
        ("connect_failures", false) => f.connect_failures as f64,
        ("unexpected_closes", true) => rate(f.unexpected_closes, f.welcomes),
        ("unexpected_closes", false) => f.unexpected_closes as f64,
        ("delivered", _) => f.delivered as f64,
        ("expected", _) => expected as f64,
        ("published", _) => f.published as f64,
        ("publish_errors", _) => f.publish_errors as f64,
        ("reconnects", _) => f.reconnects as f64,
        ("welcomes", _) => f.welcomes as f64,
        ("vus_down", _) => f.vus_down as f64,
        ("not_recovered", _) => f.not_recovered as f64,
        ("recovery_time", _) => f.recovery_s.unwrap_or(0.0) * 1000.0,
        ("msgs_per_s", _) => f.delivered as f64 / duration_s.max(1e-9),
        ("deliveries_per_cpu_s", _) => g?.deliveries_per_cpu_s?,
        ("rss_per_socket_kib", _) => g?.rss_per_socket_kib?,
        ("gateway_cpu_s", _) => g?.cpu_s,
        _ => return None,
    })
}

impl Summary {
    pub fn new(
        sc: &Scenario,
        figures: Figures,
        gateway: Option<GatewayFigures>,
        elapsed: Duration,
        workers: usize,
        killed_pid: Option<u32>,
    ) -> Summary {
        let duration_s = elapsed.as_secs_f64();
        let thresholds = sc
            .thresholds
            .exprs()
            .iter()
            .map(|s| {
                let t = Threshold::parse(s).expect("validated");
                let (ok, value) = t.eval(|m, p| metric(&figures, gateway.as_ref(), duration_s, m, p));
                ThresholdResult {
                    threshold: t.source,
                    value,
                    ok,
                }
            })
            .collect();
        let f = &figures;
        let checks = sc
            .checks
            .iter()
            .map(|c| {
                let (passes, fails) = match c.check.as_str() {
                    "welcome" => (f.welcomes, f.connect_failures),
                    "no_missing" => (f.delivered.saturating_sub(f.duplicates), f.missing),
                    "no_duplicates" => (f.delivered.saturating_sub(f.duplicates), f.duplicates),
                    "no_unexpected_closes" => (f.welcomes.saturating_sub(f.unexpected_closes), f.unexpected_closes),
                    "all_reconnected" => (f.reconnects, f.vus_down),
                    "no_errors" => (f.delivered + f.welcomes, f.errors),
                    other => (0, {
                        eprintln!("unknown check kind {other:?}");
                        1
                    }),
                };
                CheckResult {
                    name: c.name.clone(),
                    passes,
                    fails,
                }
            })
            .collect();
        Summary {
            scenario: sc.name.clone(),
            duration_s,
            max_vus: sc.max_vus(),
            workers,
            killed_pid,
            figures,
            gateway,
            thresholds,
            checks,
        }
    }

    pub fn thresholds_ok(&self) -> bool {
        self.thresholds.iter().all(|t| t.ok)
    }

    pub fn metric(&self, name: &str, percent: bool) -> Option<f64> {
        metric(&self.figures, self.gateway.as_ref(), self.duration_s, name, percent)
    }

    /// The k6-like text summary.
    pub fn render(&self) -> String {
        let f = &self.figures;
        let mut o = String::new();
        let dots = |name: &str| format!("{name} {}", ".".repeat(28usize.saturating_sub(name.len())));
        let _ = writeln!(
            o,
            "\n  scenario: {}  ({} max VUs, {} worker process(es), {:.1}s)\n",
            self.scenario,
            self.max_vus,
            if self.workers == 0 { 1 } else { self.workers },
            self.duration_s
        );
        for c in &self.checks {
            let mark = if c.fails == 0 { '✓' } else { '✗' };
            let _ = writeln!(o, "     {mark} {}  ({} ✓ / {} ✗)", c.name, c.passes, c.fails);
        }
        if !self.checks.is_empty() {
            o.push('\n');
        }
        let trend_line = |o: &mut String, name: &str, h: &Hist| {
            let v = |s: &str| trend(h, s).map_or("-".into(), |x| format!("{x:.2}ms"));
            let _ = writeln!(
                o,
                "     {}: avg={} min={} med={} p(90)={} p(95)={} p(99)={} max={}  count={}",
                dots(name),
                v("avg"),
                v("min"),
                v("med"),
                v("p90"),
                v("p95"),
                v("p99"),
                v("max"),
                h.count()
            );
        };
        trend_line(&mut o, "connect_time", &f.connect);
        trend_line(&mut o, "delivery_latency", &f.delivery);
        if f.reconnect.count() > 0 {
            trend_line(&mut o, "reconnect_time", &f.reconnect);
        }
        let rate = |n: u64| n as f64 / self.duration_s.max(1e-9);
        let expected = f.delivered.saturating_sub(f.duplicates) + f.missing;
        let mut line = |name: &str, val: String| {
            let _ = writeln!(o, "     {}: {val}", dots(name));
        };
        line("vus_max", self.max_vus.to_string());
        line(
            "welcomes",
            format!("{} of {} connect attempts", f.welcomes, f.connect_attempts),
        );
        line("connect_failures", f.connect_failures.to_string());
        let achieved = f
            .publisher_rate_per_s
            .map(|r| format!("; the publisher {r:.1}/s while publishing"))
            .unwrap_or_default();
        line(
            "published",
            format!("{}  ({:.1}/s{achieved})", f.published, rate(f.published)),
        );
        line("delivered", format!("{}  ({:.1}/s)", f.delivered, rate(f.delivered)));
        line("expected", expected.to_string());
        line("missing", f.missing.to_string());
        line("duplicates", f.duplicates.to_string());
        line("errors", f.errors.to_string());
        line("unexpected_closes", f.unexpected_closes.to_string());
        if !f.close_codes.is_empty() {
            line("close_codes", format!("{:?}", f.close_codes));
        }
        if f.reconnects > 0 || f.recovery_s.is_some() {
            line(
                "reconnects",
                format!(
                    "{} (replayed {}, not recovered {})",
                    f.reconnects, f.replayed, f.not_recovered
                ),
            );
            line(
                "recovery_time",
                f.recovery_s
                    .map_or("-".into(), |s| format!("{s:.2}s until all VUs were back")),
            );
            line("vus_down_at_end", f.vus_down.to_string());
        }
        if let Some(p) = self.killed_pid {
            line("killed_pid", p.to_string());
        }
        if let Some(g) = &self.gateway {
            line("gateway_cpu", format!("{:.2}s (pids {:?})", g.cpu_s, g.pids));
            if let Some(d) = g.deliveries_per_cpu_s {
                line("deliveries_per_cpu_s", format!("{d:.0}"));
            }
            line(
                "gateway_rss",
                format!("{} KiB before, {} KiB peak", g.rss_before_kib, g.rss_peak_kib),
            );
            if let (Some(h), Some(c)) = (g.held_s, g.held_cpu_s) {
                line(
                    "gateway_cpu_while_held",
                    format!("{c:.2}s over {h:.1}s with {} VUs connected", g.peak_vus),
                );
            }
            if let Some(r) = g.rss_per_socket_kib {
                line("rss_per_socket", format!("{r:.2} KiB ({} sockets)", g.peak_vus));
            }
        }
        for e in &f.error_samples {
            line("error_sample", e.clone());
        }
        if !self.thresholds.is_empty() {
            let _ = writeln!(o, "\n  thresholds:");
            for t in &self.thresholds {
                let mark = if t.ok { '✓' } else { '✗' };
                let v = t.value.map_or("n/a".into(), |v| format!("{v:.3}"));
                let _ = writeln!(o, "     {mark} {}  (value {v})", t.threshold);
            }
        }
        let _ = writeln!(
            o,
            "\n  result: {}",
            if self.thresholds_ok() {
                "PASS"
            } else {
                "FAIL (thresholds crossed)"
            }
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_that_share_a_trend_prefix_are_counters() {
        let f = Figures {
            connect_attempts: 1000,
            connect_failures: 2,
            ..Figures::default()
        };
        assert_eq!(metric(&f, None, 1.0, "connect_failures", false), Some(2.0));
        assert_eq!(metric(&f, None, 1.0, "connect_failures", true), Some(0.2));
    }
}
