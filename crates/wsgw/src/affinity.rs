//! affinity.rs: `WSGW_CPU_AFFINITY`. Which CPUs the runtime threads are pinned to, and the
//! pinning itself.
//!
//! A thread the kernel moves between CPUs arrives on a core whose caches hold none of its
//! sockets, and every move is a wake-up across cores. With `auto` (the default) the node pins
//! each runtime thread to a CPU of its own when it has a thread for every CPU it may run on (its
//! affinity mask when it starts), so the node owns those CPUs; with fewer threads than CPUs
//! (a CPU quota, or `WSGW_WORKER_THREADS` below the core count) the kernel keeps placing them.
//! A thread pins itself the first time it parks (the runtime's park hook) or, for a per-core
//! runtime, when its thread starts. docs/loadtest.md, section 18, has the measurements.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

use crate::config::CpuAffinity;

thread_local! {
    /// Set once this thread has pinned itself (or tried to).
    static PINNED: Cell<bool> = const { Cell::new(false) };
}

/// The CPUs the calling thread may run on, in ascending order (empty if the mask cannot be
/// read).
pub fn allowed_cpus() -> Vec<usize> {
    let Ok(set) = sched_getaffinity(Pid::from_raw(0)) else {
        return Vec::new();
    };
    (0..CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect()
}

/// Whether `threads` runtime threads are pinned to `cpus` under `mode`.
pub fn wanted(mode: CpuAffinity, threads: usize, cpus: &[usize]) -> bool {
    match mode {
        CpuAffinity::Off => false,
        CpuAffinity::On => !cpus.is_empty(),
        CpuAffinity::Auto => !cpus.is_empty() && threads >= cpus.len(),
    }
}

/// Hands each runtime thread the next CPU, round robin over the CPUs the node may run on.
#[derive(Debug)]
pub struct Pinning {
    cpus: Vec<usize>,
    next: AtomicUsize,
}

impl Pinning {
    /// A pinning over `cpus` (the node's affinity mask at start).
    pub fn new(cpus: Vec<usize>) -> Self {
        Self {
            cpus,
            next: AtomicUsize::new(0),
        }
    }

    /// The CPU the `n`th thread to pin itself gets.
    pub fn cpu_for(&self, n: usize) -> Option<usize> {
        (!self.cpus.is_empty()).then(|| self.cpus[n % self.cpus.len()])
    }

    /// Pins the calling thread to the next CPU, the first time it is called on this thread.
    /// A failure (a sandbox that forbids it) is logged once per thread and the thread stays
    /// where the kernel puts it.
    pub fn pin_current_once(&self) {
        if PINNED.with(|p| p.replace(true)) {
            return;
        }
        let Some(cpu) = self.cpu_for(self.next.fetch_add(1, Ordering::Relaxed)) else {
            return;
        };
        let mut set = CpuSet::new();
        let result = set.set(cpu).and_then(|()| sched_setaffinity(Pid::from_raw(0), &set));
        match result {
            Ok(()) => tracing::debug!(cpu, "runtime thread pinned"),
            Err(e) => tracing::warn!(cpu, error = %e, "could not pin a runtime thread to its CPU"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_pins_only_with_a_thread_for_every_cpu() {
        assert!(wanted(CpuAffinity::Auto, 2, &[0, 1]));
        assert!(wanted(CpuAffinity::Auto, 4, &[0, 1]));
        assert!(wanted(CpuAffinity::Auto, 1, &[3]));
        // A CPU quota or WSGW_WORKER_THREADS below the core count: the kernel places them.
        assert!(!wanted(CpuAffinity::Auto, 2, &[0, 1, 2, 3]));
        assert!(!wanted(CpuAffinity::Auto, 1, &[0, 1]));
        assert!(!wanted(CpuAffinity::Auto, 2, &[]));
    }

    #[test]
    fn on_and_off_ignore_the_counts() {
        assert!(wanted(CpuAffinity::On, 1, &[0, 1, 2, 3]));
        assert!(!wanted(CpuAffinity::On, 1, &[]));
        assert!(!wanted(CpuAffinity::Off, 2, &[0, 1]));
    }

    #[test]
    fn threads_get_the_allowed_cpus_round_robin() {
        let p = Pinning::new(vec![2, 5, 7]);
        let got: Vec<_> = (0..5).filter_map(|n| p.cpu_for(n)).collect();
        assert_eq!(got, vec![2, 5, 7, 2, 5]);
        assert_eq!(Pinning::new(Vec::new()).cpu_for(0), None);
    }

    #[test]
    fn a_thread_pins_itself_once_to_an_allowed_cpu() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty(), "the test thread's mask lists no CPU");
        let last = *cpus.last().unwrap();
        let p = std::sync::Arc::new(Pinning::new(vec![last]));
        let q = p.clone();
        let seen = std::thread::spawn(move || {
            q.pin_current_once();
            q.pin_current_once();
            allowed_cpus()
        })
        .join()
        .unwrap();
        assert_eq!(seen, vec![last]);
        // The second call on that thread took no CPU.
        assert_eq!(p.next.load(Ordering::Relaxed), 1);
    }
}
