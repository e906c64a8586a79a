//! Scenario files (TOML): target, stages, workload, thresholds, checks and an optional kill.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub target: Target,
    pub stages: Vec<Stage>,
    #[serde(default)]
    pub workload: Workload,
    /// name -> list of expressions, or a flat list (k6 style: `thresholds = ["connect_p99 < 200ms"]`).
    #[serde(default)]
    pub thresholds: Thresholds,
    #[serde(default)]
    pub checks: Vec<Check>,
    #[serde(default)]
    pub kill: Option<Kill>,
    /// Seconds to wait after the last stage for in-flight deliveries (default 3).
    #[serde(default = "default_grace")]
    pub grace_s: f64,
}

fn default_grace() -> f64 {
    3.0
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    #[serde(default)]
    pub urls: Vec<String>,
    /// A `scripts/cluster.sh` state file: node URLs, pids, redis, secret and API key come from it.
    #[serde(default)]
    pub cluster_json: Option<String>,
    #[serde(default)]
    pub api_url: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub redis_url: Option<String>,
    #[serde(default)]
    pub redis_prefix: Option<String>,
    #[serde(default)]
    pub server_pids: Vec<u32>,
    /// Source addresses to bind sockets to, one per worker (round-robin). Empty: automatic.
    #[serde(default)]
    pub source_addrs: Vec<String>,
    /// Handshakes in flight at once, per worker (default 256).
    #[serde(default)]
    pub connect_concurrency: Option<usize>,
    /// VUs per worker process at most (default 15000).
    #[serde(default)]
    pub vus_per_worker: Option<usize>,
    /// Worker processes; default: as many as needed for `vus_per_worker`, or 0 (in-process) when one is enough.
    #[serde(default)]
    pub workers: Option<usize>,
    /// For `wss://` URLs: a PEM file of the CA certificates to trust instead of the system's roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// For `wss://` URLs: accept any server certificate (self-signed test certificates only).
    #[serde(default)]
    pub insecure: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub duration: String,
    pub target: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    #[default]
    Idle,
    Broadcast,
    User,
    Topic,
    ClientPublish,
    Churn,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum PublishVia {
    #[default]
    Http,
    Fcall,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    #[serde(default)]
    pub kind: Kind,
    /// Messages per second in all (publisher side).
    #[serde(default = "default_rate")]
    pub rate: f64,
    #[serde(default)]
    pub publish_via: PublishVia,
    #[serde(default = "default_payload")]
    pub payload_bytes: usize,
    /// Topic workloads: number of topics, and VUs subscribed to each.
    #[serde(default = "default_topics")]
    pub topics: u64,
    #[serde(default = "default_subs")]
    pub subscribers_per_topic: u64,
    /// Churn: VUs closed and reconnected per second.
    #[serde(default)]
    pub churn_per_s: f64,
    /// Publishing starts this long after the start (default "0s").
    #[serde(default)]
    pub publish_delay: Option<String>,
    /// After `publish_delay`, publishing also waits until every VU the stages want is welcomed
    /// (as workers report it, once a second), for at most 30 s; the schedule then starts from
    /// there. Without it, a socket welcomed after the first publishes never sees them, and
    /// `missing` (holes after the first event a socket saw) cannot tell.
    #[serde(default)]
    pub publish_when_connected: bool,
    /// Publishing stops this long before the end of the last stage (default "0s").
    #[serde(default)]
    pub publish_stop_before_end: Option<String>,
    /// Stop after this many publishes.
    #[serde(default)]
    pub messages: Option<u64>,
    /// VUs reconnect (with connection_id and last_event_id) after an unexpected close.
    #[serde(default = "yes")]
    pub reconnect: bool,
    /// Fan-out throughput with the load client out of the way (engine/stopped.rs): the worker
    /// processes are stopped (`SIGSTOP`) from the first publish until the gateway is idle
    /// again, then resumed to read and check everything. Needs worker processes and the
    /// gateway pids; delivery latencies then include the stop.
    #[serde(default)]
    pub stop_receivers: bool,
}

fn yes() -> bool {
    true
}
fn default_rate() -> f64 {
    10.0
}
fn default_payload() -> usize {
    100
}
fn default_topics() -> u64 {
    10
}
fn default_subs() -> u64 {
    10
}

impl Default for Workload {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Thresholds {
    #[default]
    None,
    List(Vec<String>),
    Map(std::collections::BTreeMap<String, Vec<String>>),
}

impl Thresholds {
    pub fn exprs(&self) -> Vec<String> {
        match self {
            Thresholds::None => vec![],
            Thresholds::List(l) => l.clone(),
            Thresholds::Map(m) => m.values().flatten().cloned().collect(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub name: String,
    /// welcome | no_missing | no_duplicates | no_unexpected_closes | all_reconnected | no_errors
    pub check: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kill {
    /// Seconds after the start.
    pub after_s: f64,
    /// 1-based index of the node in `target.server_pids` / cluster.json's nodes.
    #[serde(default = "one")]
    pub node: usize,
    /// Or an explicit pid.
    #[serde(default)]
    pub pid: Option<u32>,
}

fn one() -> usize {
    1
}

/// "500ms", "2s", "1m30s", "1h", "1.5s", or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    if let Ok(n) = s.parse::<f64>() {
        return Ok(Duration::from_secs_f64(n));
    }
    let mut total = 0.0;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let v: f64 = num.parse().with_context(|| format!("bad duration {s:?}"))?;
        num.clear();
        total += v * match unit.as_str() {
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => bail!("bad duration unit {unit:?} in {s:?}"),
        };
        any = true;
    }
    if !num.is_empty() || !any {
        bail!("bad duration {s:?} (want e.g. 30s, 500ms, 1m30s)");
    }
    Ok(Duration::from_secs_f64(total))
}

impl Scenario {
    pub fn from_toml(text: &str) -> Result<Scenario> {
        let s: Scenario = toml::from_str(text)?;
        s.validate()?;
        Ok(s)
    }

    pub fn load(path: &Path) -> Result<Scenario> {
        let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let mut s = Scenario::from_toml(&text).with_context(|| format!("parse {}", path.display()))?;
        if s.name.is_empty() {
            s.name = path
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        Ok(s)
    }

    pub fn validate(&self) -> Result<()> {
        if self.stages.is_empty() {
            bail!("at least one [[stages]] entry is needed");
        }
        for st in &self.stages {
            parse_duration(&st.duration)?;
        }
        for t in self.thresholds.exprs() {
            crate::threshold::Threshold::parse(&t)?;
        }
        if self.workload.rate <= 0.0 && !matches!(self.workload.kind, Kind::Idle | Kind::Churn) {
            bail!("workload.rate must be > 0");
        }
        Ok(())
    }

    /// Fills urls, pids, redis, secret and API key from `cluster_json` where not set explicitly.
    pub fn resolve_cluster(&mut self, base: &Path) -> Result<()> {
        let Some(cj) = self.target.cluster_json.clone() else {
            return Ok(());
        };
        let p = base.join(&cj);
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!(
                "read {} (start the cluster with scripts/cluster.sh start N)",
                p.display()
            )
        })?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let nodes = v["nodes"].as_array().context("cluster.json: no nodes")?;
        let t = &mut self.target;
        if t.urls.is_empty() {
            t.urls = nodes
                .iter()
                .filter_map(|n| n["port"].as_u64())
                .map(|p| format!("ws://127.0.0.1:{p}/ws"))
                .collect();
        }
        if t.server_pids.is_empty() {
            t.server_pids = nodes
                .iter()
                .filter_map(|n| n["pid"].as_u64())
                .map(|p| p as u32)
                .collect();
        }
        if t.api_url.is_none() {
            t.api_url = nodes.first().and_then(|n| n["url"].as_str()).map(String::from);
        }
        if t.redis_url.is_none() {
            t.redis_url = v["redis"]["url"].as_str().map(String::from);
        }
        if t.secret.is_none() {
            t.secret = v["jwt_secret"].as_str().map(String::from);
        }
        if t.api_key.is_none() {
            t.api_key = v["api_key"].as_str().map(String::from);
        }
        Ok(())
    }

    pub fn stage_durations(&self) -> Vec<(Duration, u64)> {
        self.stages
            .iter()
            .map(|s| (parse_duration(&s.duration).unwrap_or_default(), s.target))
            .collect()
    }

    pub fn total_duration(&self) -> Duration {
        self.stage_durations().iter().map(|(d, _)| *d).sum()
    }

    pub fn max_vus(&self) -> u64 {
        self.stages.iter().map(|s| s.target).max().unwrap_or(0)
    }

    /// The VU target at time `t` since the start: linear interpolation within each stage, starting
    /// from 0 VUs (k6's ramping-vus executor with startVUs = 0); the last target after the end.
    pub fn target_at(&self, t: Duration) -> u64 {
        vus_at(&self.stage_durations(), t)
    }
}

pub fn vus_at(stages: &[(Duration, u64)], t: Duration) -> u64 {
    let mut from = 0u64;
    let mut start = Duration::ZERO;
    for &(d, to) in stages {
        if t < start + d {
            let f = (t - start).as_secs_f64() / d.as_secs_f64();
            return (from as f64 + (to as f64 - from as f64) * f).round() as u64;
        }
        start += d;
        from = to;
    }
    from
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5s3").is_err());
    }

    #[test]
    fn stage_interpolation() {
        let s = |d: u64, t: u64| (Duration::from_secs(d), t);
        let st = [s(10, 100), s(20, 100), s(10, 0)];
        let at = |secs: f64| vus_at(&st, Duration::from_secs_f64(secs));
        assert_eq!(at(0.0), 0);
        assert_eq!(at(5.0), 50);
        assert_eq!(at(9.99), 100);
        assert_eq!(at(10.0), 100);
        assert_eq!(at(25.0), 100);
        assert_eq!(at(35.0), 50);
        assert_eq!(at(40.0), 0);
        assert_eq!(at(1000.0), 0);
        // Ramp between two non-zero targets, then a step (zero-length stage is skipped).
        let st = [s(10, 200), s(10, 400), s(0, 10), s(5, 10)];
        assert_eq!(vus_at(&st, Duration::from_secs(15)), 300);
        assert_eq!(vus_at(&st, Duration::from_secs(21)), 10);
        assert_eq!(vus_at(&st, Duration::from_secs(99)), 10);
    }

    #[test]
    fn every_shipped_scenario_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let s = Scenario::load(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
                assert!(s.max_vus() > 0, "{}", p.display());
                assert!(!s.thresholds.exprs().is_empty(), "{} has no thresholds", p.display());
                n += 1;
            }
        }
        for name in [
            "smoke",
            "1k",
            "10k",
            "50k-cluster",
            "broadcast-storm",
            "reconnect-storm",
        ] {
            assert!(dir.join(format!("{name}.toml")).exists(), "{name}.toml missing");
        }
        assert!(n >= 6);
        let rs = Scenario::load(&dir.join("reconnect-storm.toml")).unwrap();
        assert!(rs.kill.is_some());
        assert_eq!(Scenario::load(&dir.join("smoke.toml")).unwrap().max_vus(), 100);
    }

    #[test]
    fn cluster_json_fills_target() {
        let dir = std::env::temp_dir().join(format!("wsgw-lt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("cluster.json"),
            r#"{"url":"wss://127.0.0.1:1/ws","redis":{"port":7,"pid":1,"url":"redis://127.0.0.1:7"},
               "nodes":[{"id":"gw-1","port":11,"pid":101,"url":"http://127.0.0.1:11"},
                        {"id":"gw-2","port":12,"pid":102,"url":"http://127.0.0.1:12"}],
               "jwt_secret":"sec","api_key":"key"}"#,
        )
        .unwrap();
        let mut s = Scenario::from_toml(
            "[target]\ncluster_json = \"cluster.json\"\n[[stages]]\nduration = \"1s\"\ntarget = 2\n",
        )
        .unwrap();
        s.resolve_cluster(&dir).unwrap();
        assert_eq!(s.target.urls, ["ws://127.0.0.1:11/ws", "ws://127.0.0.1:12/ws"]);
        assert_eq!(s.target.server_pids, [101, 102]);
        assert_eq!(s.target.redis_url.as_deref(), Some("redis://127.0.0.1:7"));
        assert_eq!(s.target.secret.as_deref(), Some("sec"));
        assert_eq!(s.target.api_key.as_deref(), Some("key"));
        assert_eq!(s.target.api_url.as_deref(), Some("http://127.0.0.1:11"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
