//! k6-style thresholds: `"<metric> <op> <value>[unit]"`, e.g. `connect_p99 < 200ms`,
//! `errors < 0.1%`, `missing == 0`.

use anyhow::{Result, bail};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Op {
    pub fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Gt => a > b,
            Op::Ge => a >= b,
            Op::Eq => a == b,
            Op::Ne => a != b,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Unit {
    /// A plain number (a count, or a duration in ms for time metrics).
    None,
    /// A duration; the value is stored in ms.
    Time,
    /// A percentage: the metric is taken as a rate (e.g. errors per operation) times 100.
    Percent,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Threshold {
    pub source: String,
    pub metric: String,
    pub op: Op,
    pub value: f64,
    pub unit: Unit,
}

impl Threshold {
    pub fn parse(s: &str) -> Result<Threshold> {
        let ops = [
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<", Op::Lt),
            (">", Op::Gt),
        ];
        let Some((pos, len, op)) = ops
            .iter()
            .filter_map(|(t, op)| s.find(t).map(|p| (p, t.len(), *op)))
            .min_by_key(|(p, l, _)| (*p, usize::MAX - l))
        else {
            bail!("threshold {s:?}: no comparison (<, <=, >, >=, ==, !=)");
        };
        let metric = s[..pos].trim();
        let rhs = s[pos + len..].trim();
        if metric.is_empty() || !metric.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("threshold {s:?}: bad metric name {metric:?}");
        }
        let split = rhs
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+' || c == 'e'))
            .unwrap_or(rhs.len());
        let (num, unit) = (rhs[..split].trim(), rhs[split..].trim());
        let n: f64 = num
            .parse()
            .map_err(|_| anyhow::anyhow!("threshold {s:?}: bad number {num:?}"))?;
        let (value, unit) = match unit {
            "" => (n, Unit::None),
            "%" => (n, Unit::Percent),
            "us" | "µs" => (n / 1000.0, Unit::Time),
            "ms" => (n, Unit::Time),
            "s" => (n * 1000.0, Unit::Time),
            "m" => (n * 60_000.0, Unit::Time),
            _ => bail!("threshold {s:?}: unknown unit {unit:?} (ms, s, us, %)"),
        };
        Ok(Threshold {
            source: s.trim().to_string(),
            metric: metric.to_string(),
            op,
            value,
            unit,
        })
    }

    /// Evaluates against a metric lookup: `get(metric, percent)` returns the metric's value
    /// (ms for time metrics; a percentage when `percent`). A missing metric fails.
    pub fn eval(&self, get: impl Fn(&str, bool) -> Option<f64>) -> (bool, Option<f64>) {
        match get(&self.metric, self.unit == Unit::Percent) {
            Some(v) if v.is_finite() => (self.op.holds(v, self.value), Some(v)),
            other => (false, other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_ops() {
        let t = Threshold::parse("connect_p99 < 200ms").unwrap();
        assert_eq!(
            (t.metric.as_str(), t.op, t.value, t.unit),
            ("connect_p99", Op::Lt, 200.0, Unit::Time)
        );
        let t = Threshold::parse("delivery_p95<=1.5s").unwrap();
        assert_eq!((t.op, t.value, t.unit), (Op::Le, 1500.0, Unit::Time));
        let t = Threshold::parse("errors < 0.1%").unwrap();
        assert_eq!((t.op, t.value, t.unit), (Op::Lt, 0.1, Unit::Percent));
        let t = Threshold::parse("missing == 0").unwrap();
        assert_eq!((t.op, t.value, t.unit), (Op::Eq, 0.0, Unit::None));
        let t = Threshold::parse("deliveries_per_cpu_s >= 20000").unwrap();
        assert_eq!((t.op, t.value), (Op::Ge, 20000.0));
        let t = Threshold::parse("reconnect_time != 500us").unwrap();
        assert_eq!((t.op, t.value), (Op::Ne, 0.5));
        assert_eq!(Threshold::parse("x > 2m").unwrap().value, 120_000.0);
        for bad in ["connect_p99 200ms", "< 5", "a b < 5", "x < fast", "x < 5 parsecs"] {
            assert!(Threshold::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn evaluates() {
        let get = |m: &str, pct: bool| match (m, pct) {
            ("connect_p99", false) => Some(150.0),
            ("errors", true) => Some(0.05),
            ("errors", false) => Some(3.0),
            ("missing", false) => Some(0.0),
            _ => None,
        };
        let ok = |s: &str| Threshold::parse(s).unwrap().eval(get).0;
        assert!(ok("connect_p99 < 200ms"));
        assert!(!ok("connect_p99 < 0.1s"));
        assert!(ok("errors < 0.1%"));
        assert!(!ok("errors < 0.01%"));
        assert!(!ok("errors == 0"));
        assert!(ok("missing == 0"));
        assert!(!ok("nonexistent < 1"), "unknown metrics fail");
        assert_eq!(Threshold::parse("errors <= 3").unwrap().eval(get), (true, Some(3.0)));
    }
}
