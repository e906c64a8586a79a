//! engine/stopped.rs: fan-out throughput with the receivers stopped (`workload.stop_receivers`,
//! `broadcast --stop-receivers`). The worker processes holding the sockets get `SIGSTOP`
//! before the first publish, so while the gateway fans out they use no CPU at all: the kernel
//! takes the frames into the sockets' receive buffers. Once every publish is answered and the
//! gateway has gone idle, they get `SIGCONT`, read everything and check it as usual. The
//! window runs from the first publish to the gateway's last busy moment, so its length is how
//! fast the gateway alone fans out, on whatever cores it is given, with no load client
//! competing for them.

use super::*;

/// The gateway's CPU is read this often. A reading counts as busy when the gateway ran more
/// than its idle share (measured over `IDLE` before the workers stop, with the same readings)
/// plus a tenth of the time since the last reading, or of `POLL` if that was shorter: 10% of one
/// core over its idle level. Relative to the idle level, because a gateway's idle trickle
/// (heartbeats; the readings themselves when the gateway runs in this process, as in the smoke
/// test) must not look busy; a rate, because on a loaded machine the readings come late.
const POLL: Duration = Duration::from_millis(5);
const BUSY_SHARE: f64 = 0.10;
const IDLE: Duration = Duration::from_millis(100);
/// The gateway is idle after this long without a busy poll.
const QUIET: Duration = Duration::from_millis(300);
/// The longest wait for the gateway to go idle.
const LONGEST: Duration = Duration::from_secs(120);

/// The processes to stop and the gateways to watch.
#[derive(Clone, Debug, Default)]
pub(super) struct Receivers {
    pub(super) workers: Vec<u32>,
    pub(super) servers: Vec<u32>,
}

/// The fan-out window: from the first publish to the gateway's last busy poll.
#[derive(Clone, Copy, Debug)]
pub(super) struct Window {
    pub(super) seconds: f64,
    pub(super) cpu_s: f64,
}

/// CPU time of the gateways' threads since the meter started, from /proc/<pid>/task/*/schedstat
/// (nanoseconds on a CPU, so finer than /proc/<pid>/stat's 10 ms ticks). Summed per thread
/// from one reading to the next: a sum over the threads alive at each reading would go back
/// when a thread exits (tokio's blocking threads do after 10 s idle), and lose what it ran.
struct CpuMeter {
    pids: Vec<u32>,
    /// Each thread's CPU (ns) at the last reading, by (pid, tid).
    last: HashMap<(u32, u64), u64>,
    total: Duration,
}

impl CpuMeter {
    fn start(pids: &[u32]) -> CpuMeter {
        let mut m = CpuMeter {
            pids: pids.to_vec(),
            last: HashMap::new(),
            total: Duration::ZERO,
        };
        m.read();
        m.total = Duration::ZERO;
        m
    }

    /// Reads every thread again; returns the CPU run since the start. A thread that exited
    /// since the last reading loses at most what it ran after it.
    fn read(&mut self) -> Duration {
        let mut now = HashMap::with_capacity(self.last.len());
        for &pid in &self.pids {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for t in tasks.flatten() {
                let Some(tid) = t.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
                    continue;
                };
                let ns = std::fs::read_to_string(t.path().join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
                if let Some(ns) = ns {
                    now.insert((pid, tid), ns);
                }
            }
        }
        for (k, ns) in &now {
            let before = self.last.get(k).copied().unwrap_or(0);
            self.total += Duration::from_nanos(ns.saturating_sub(before));
        }
        self.last = now;
        self.total
    }
}

/// Whether every thread of `pid` is stopped (state `T` in /proc/<pid>/task/*/stat), or the
/// process is gone. `kill` returns once the signal is sent; each thread stops on its own way
/// back to user space, and on a loaded machine that can be after the first publish.
fn all_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        // The state follows the command name, which is in parentheses and may hold spaces.
        .all(|stat| {
            matches!(
                stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()),
                Some('T' | 't')
            )
        })
}

/// The longest wait for the stopped workers' threads to have stopped.
const STOPPING: Duration = Duration::from_secs(5);

fn signal(pids: &[u32], sig: &str) -> Result<()> {
    for pid in pids {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        anyhow::ensure!(ok, "kill {sig} {pid} failed");
    }
    Ok(())
}

/// Stopped receivers, and where the window started. Dropping it resumes them, so an error
/// on the way never leaves a worker stopped.
pub(super) struct Stopped {
    r: Receivers,
    from: Instant,
    cpu: CpuMeter,
    /// The gateways' CPU per wall second while idle, before the workers stopped.
    idle_share: f64,
    resumed: bool,
}

impl Stopped {
    /// Stops the workers; the window starts now.
    pub(super) fn stop(r: &Receivers) -> Result<Stopped> {
        anyhow::ensure!(
            !r.workers.is_empty(),
            "stop_receivers needs the sockets in worker processes (workers >= 1)"
        );
        anyhow::ensure!(
            !r.servers.is_empty(),
            "stop_receivers needs the gateway pids (--server-pid) to tell when the fan-out ends"
        );
        let mut idle = CpuMeter::start(&r.servers);
        let t0 = Instant::now();
        while t0.elapsed() < IDLE {
            std::thread::sleep(POLL);
            idle.read();
        }
        let idle_share = idle.read().as_secs_f64() / t0.elapsed().as_secs_f64();
        let cpu = CpuMeter::start(&r.servers);
        signal(&r.workers, "-STOP")?;
        let deadline = Instant::now() + STOPPING;
        while !r.workers.iter().all(|p| all_stopped(*p)) {
            if Instant::now() > deadline {
                let _ = signal(&r.workers, "-CONT");
                anyhow::bail!("the workers had not all stopped {STOPPING:?} after SIGSTOP");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(Stopped {
            r: r.clone(),
            from: Instant::now(),
            cpu,
            idle_share,
            resumed: false,
        })
    }

    /// Waits until the gateways are idle, resumes the workers and returns the window.
    pub(super) async fn finish(mut self) -> Result<Window> {
        let (mut last, mut last_at) = (self.cpu.read(), Instant::now());
        let (mut busy_at, mut busy_cpu) = (last_at, last);
        let deadline = Instant::now() + LONGEST;
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while busy_at.elapsed() < QUIET && Instant::now() < deadline {
            poll.tick().await;
            let (now, at) = (self.cpu.read(), Instant::now());
            let over = at
                .duration_since(last_at)
                .max(POLL)
                .mul_f64(self.idle_share + BUSY_SHARE);
            if now.saturating_sub(last) > over {
                (busy_at, busy_cpu) = (at, now);
            }
            (last, last_at) = (now, at);
        }
        self.resume()?;
        anyhow::ensure!(
            busy_at.elapsed() >= QUIET,
            "the gateway did not go idle within {LONGEST:?} of the publishes"
        );
        Ok(Window {
            seconds: busy_at.saturating_duration_since(self.from).as_secs_f64(),
            cpu_s: busy_cpu.as_secs_f64(),
        })
    }

    fn resume(&mut self) -> Result<()> {
        self.resumed = true;
        signal(&self.r.workers, "-CONT")
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if !self.resumed {
            let _ = signal(&self.r.workers, "-CONT");
        }
    }
}
