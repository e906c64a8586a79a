//! engine/proc.rs: the gateway's RSS and CPU time, read from /proc while a scenario runs.

use super::*;

pub(super) fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub(super) fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

#[derive(Default)]
pub(super) struct ProcSampler {
    pids: Vec<u32>,
    cpu0: Vec<Option<f64>>,
    cpu_last: Vec<Option<f64>>,
    rss0: u64,
    rss_peak: u64,
    rss_at_peak_vus: u64,
    peak_vus: u64,
    /// When (and at what total CPU) the most VUs were first all connected, and the last
    /// sample at which they still were: the CPU of holding them, apart from their connects
    /// and closes.
    held_from: Option<(Instant, f64)>,
    held_to: Option<(Instant, f64)>,
}

impl ProcSampler {
    pub(super) fn new(pids: Vec<u32>) -> Self {
        let cpu0: Vec<_> = pids.iter().map(|p| cpu_seconds(*p)).collect();
        let rss0 = pids.iter().filter_map(|p| rss_kib(*p)).sum();
        ProcSampler {
            cpu_last: cpu0.clone(),
            cpu0,
            rss0,
            rss_peak: rss0,
            pids,
            ..Default::default()
        }
    }

    pub(super) fn sample(&mut self, connected: u64) {
        for (i, p) in self.pids.iter().enumerate() {
            if let Some(c) = cpu_seconds(*p) {
                self.cpu_last[i] = Some(c);
            }
        }
        let rss: u64 = self.pids.iter().filter_map(|p| rss_kib(*p)).sum();
        self.rss_peak = self.rss_peak.max(rss);
        let cpu: f64 = self.cpu_last.iter().flatten().sum();
        if connected > self.peak_vus {
            self.held_from = Some((Instant::now(), cpu));
            self.held_to = None;
        } else if connected == self.peak_vus && connected > 0 {
            self.held_to = Some((Instant::now(), cpu));
        }
        if connected >= self.peak_vus && connected > 0 {
            self.peak_vus = connected;
            self.rss_at_peak_vus = rss;
        }
    }

    pub(super) fn figures(&self, delivered: u64) -> Option<GatewayFigures> {
        if self.pids.is_empty() {
            return None;
        }
        // At least a second of holding, or no figure.
        let held = match (self.held_from, self.held_to) {
            (Some((t0, c0)), Some((t1, c1))) if t1.duration_since(t0) >= Duration::from_secs(1) => {
                Some((t1.duration_since(t0).as_secs_f64(), (c1 - c0).max(0.0)))
            }
            _ => None,
        };
        let cpu: f64 = self
            .cpu0
            .iter()
            .zip(&self.cpu_last)
            .filter_map(|(a, b)| Some(b.as_ref()? - a.as_ref()?))
            .sum();
        Some(GatewayFigures {
            pids: self.pids.clone(),
            cpu_s: cpu,
            rss_before_kib: self.rss0,
            rss_peak_kib: self.rss_peak,
            peak_vus: self.peak_vus,
            rss_per_socket_kib: (self.peak_vus > 0)
                .then(|| self.rss_at_peak_vus.saturating_sub(self.rss0) as f64 / self.peak_vus as f64),
            deliveries_per_cpu_s: (cpu > 0.0).then(|| delivered as f64 / cpu),
            held_s: held.map(|h| h.0),
            held_cpu_s: held.map(|h| h.1),
        })
    }
}
