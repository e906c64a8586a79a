//! The end of a torture run, the same over one Redis primary and over a Redis Cluster: stop the
//! load, let the clients settle, wait for the fence events, collect the logs, check them and
//! print the report (panicking on a violation).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::checker::{self, Kind};
use super::explain::explain;
use super::load::Shared;
use super::model::*;
use super::sim::{NOT_CONNECTED, Progress, caught_up};

pub type Progresses = Vec<Arc<std::sync::Mutex<Progress>>>;

/// Stops publishing and the passive load, and lets the clients finish their requests (at most
/// 10 s). After it the clients take no action, so the fence events follow every one.
pub async fn quiesce(shared: &Shared, publishers: Vec<JoinHandle<()>>, progress: &Progresses) {
    shared.stop_publishing.store(true, Ordering::Release);
    for p in publishers {
        p.await.unwrap();
    }
    shared.stop_passive.store(true, Ordering::Release);
    shared.quiesce.store(true, Ordering::Release);
    let settle = Instant::now() + Duration::from_secs(10);
    while Instant::now() < settle
        && progress.iter().any(|p| {
            let p = p.lock().unwrap();
            p.busy || !p.connected
        })
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Last published id per channel.
pub fn last_ids(published: &BTreeMap<String, Vec<Id>>) -> HashMap<String, Id> {
    published
        .iter()
        .filter_map(|(c, ids)| ids.iter().max().map(|&l| (c.clone(), l)))
        .collect()
}

/// Waits (at most 20 s) until every client has the fence events (`last`), prints the drain line
/// and which clients lag, stops everything and collects the clients' logs. Returns the logs and
/// the lagging clients, each with why.
pub async fn drain(
    shared: &Shared,
    progress: &Progresses,
    last: &HashMap<String, Id>,
    passive_frames: &AtomicU64,
    sims: Vec<JoinHandle<ClientLog>>,
    passives: Vec<JoinHandle<()>>,
) -> (Vec<ClientLog>, Vec<(usize, String)>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && caught_up(progress, last) < progress.len() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "  +{:6.1}s drain: {}/{} clients caught up; {} publishes ok, {} failed (expected during faults); \
         passive sockets drained {} frames; \
         slowest live event reached a torture client {} ms after its publish",
        shared.t_us() as f64 / 1e6,
        caught_up(progress, last),
        progress.len(),
        shared.published_ok.load(Ordering::Relaxed),
        shared.publish_errors.load(Ordering::Relaxed),
        passive_frames.load(Ordering::Relaxed),
        shared.max_lag_ms.load(Ordering::Relaxed)
    );
    let lagging: Vec<(usize, String)> = (0..progress.len())
        .filter_map(|i| {
            let why = progress[i].lock().unwrap().behind(last)?;
            println!("    tc{i} not caught up: {why}");
            Some((i, why))
        })
        .collect();
    shared.stop.store(true, Ordering::Release);
    let mut logs = Vec::new();
    for s in sims {
        logs.push(s.await.unwrap());
    }
    for p in passives {
        let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
    }
    (logs, lagging)
}

/// What the run did besides the clients, for the summary line.
pub struct Summary<'a> {
    /// Test name in messages (`torture`, `torture cluster`).
    pub name: &'a str,
    pub seed: u64,
    pub faults: usize,
    /// Appended to the summary line (e.g. what the faults were).
    pub extra: String,
}

/// Checks the logs against what was published and prints the report; panics on a violation,
/// and when a client was never welcomed or was not connected when the drain ended: its log
/// checks little or nothing, and a run of such clients must not pass as "0 violations".
pub fn check_and_report(s: &Summary<'_>, published: &Published, logs: &[ClientLog], lagging: Vec<(usize, String)>) {
    let seed = s.seed;
    let faults = s.faults;
    let final_at_us = published.final_at_us.unwrap_or(u64::MAX);
    let report = checker::check(published, logs);
    // Lagging clients' logs are always written; every client's with WSGW_TORTURE_DUMP set.
    let dump: Vec<usize> = if std::env::var("WSGW_TORTURE_DUMP").is_ok() {
        (0..logs.len()).collect()
    } else {
        lagging.iter().map(|(i, _)| *i).collect()
    };
    for i in dump {
        let path = std::env::temp_dir().join(format!("wsgw-torture-{seed}-{}.log", logs[i].name));
        let text: Vec<String> = logs[i]
            .entries
            .iter()
            .zip(&report.tags[i])
            .map(|(e, t)| super::explain::line(e, *t))
            .collect();
        std::fs::write(&path, text.join("\n")).unwrap();
        println!("    {}'s whole log: {}", logs[i].name, path.display());
    }
    // The fences must follow every client's last action and its answer (see
    // `Sim::claim_action`): a subscribe or unsubscribe, or an answer to one, after them would
    // make `stalled` a fault of this harness, not the gateway's.
    for log in logs {
        let late = log.entries.iter().find(|e| {
            e.t_us > final_at_us
                && matches!(
                    e.rec,
                    Rec::Subscribe { .. }
                        | Rec::Subscribed { .. }
                        | Rec::SubscribeFailed { .. }
                        | Rec::Unsubscribe { .. }
                )
        });
        assert!(
            late.is_none(),
            "{} logged a subscribe or unsubscribe, or its answer, after the fence events: sent after the \
             drain began (a harness fault) or unanswered through the drain's 10 s wait: {late:?}",
            log.name
        );
    }
    let never: Vec<&str> = logs
        .iter()
        .filter(|l| !l.entries.iter().any(|e| matches!(e.rec, Rec::Welcome { .. })))
        .map(|l| l.name.as_str())
        .collect();
    assert!(
        never.is_empty(),
        "{} (seed {seed}): {} of {} clients were never welcomed: {never:?} (their logs are above)",
        s.name,
        never.len(),
        logs.len()
    );
    let cut_off: Vec<&str> = lagging
        .iter()
        .filter(|(_, why)| why == NOT_CONNECTED)
        .map(|(i, _)| logs[*i].name.as_str())
        .collect();
    assert!(
        cut_off.is_empty(),
        "{} (seed {seed}): {cut_off:?} had no connection when the drain's 20 s ended",
        s.name
    );
    let reconnects: usize = logs
        .iter()
        .map(|l| {
            l.entries
                .iter()
                .filter(|e| matches!(e.rec, Rec::Welcome { .. }))
                .count()
                .saturating_sub(1)
        })
        .sum();
    let counts = report.counts();
    let first_of = |kind: Kind| {
        report
            .violations
            .iter()
            .filter(|v| v.kind == kind)
            .min_by_key(|v| v.t_us)
    };
    let show = |v: &checker::Violation| {
        format!(
            "{}: {} on {} at +{:.3}s, ids {:?}{}: {}",
            v.kind,
            logs[v.client].name,
            v.channel,
            v.t_us as f64 / 1e6,
            v.ids.iter().take(4).map(Id::to_string).collect::<Vec<_>>(),
            if v.ids.len() > 4 { " ..." } else { "" },
            v.detail
        )
    };
    // Duplicates that the client cursor rule lets through are the rule's, not the server's.
    if let Some(v) = first_of(Kind::RuleDuplicate) {
        println!(
            "note: {} duplicate(s) let through by the client cursor rule (not counted as violations); first: {}",
            counts[&Kind::RuleDuplicate],
            show(v)
        );
        if std::env::var("WSGW_TORTURE_EXPLAIN_ALL").is_ok() {
            println!("\nFIRST RULE DUPLICATE: {}", explain(&report, v, published, logs));
        }
    }
    // Events a failed primary acknowledged and lost, delivered before the failover.
    if let Some(v) = first_of(Kind::LostDelivered) {
        let untold: Vec<&checker::Violation> = report
            .violations
            .iter()
            .filter(|v| v.kind == Kind::LostDelivered && v.detail.contains("never told"))
            .collect();
        println!(
            "note: {} delivery(ies) of {} event(s) acknowledged and then lost by a failed primary (not counted as \
             violations), {} never followed by a gap or recovered:false; first: {}",
            counts[&Kind::LostDelivered],
            published.lost_total(),
            untold.len(),
            show(untold.first().copied().unwrap_or(v))
        );
    }
    let fatal: Vec<&checker::Violation> = report.violations.iter().filter(|v| v.kind.fatal()).collect();
    let name = s.name;
    if fatal.is_empty() {
        println!(
            "{name}: {} events published, {} deliveries checked, {} faults injected, {} client reconnects, \
             0 violations (seed {seed}){}",
            report.events_published, report.deliveries_checked, faults, reconnects, s.extra
        );
        return;
    }
    let first = fatal.iter().min_by_key(|v| (v.t_us, v.client, v.at)).unwrap();
    println!("\nFIRST VIOLATION: {}", explain(&report, first, published, logs));
    println!("First violation of each kind:");
    for kind in counts.keys().filter(|k| k.fatal()) {
        let v = first_of(*kind).unwrap();
        println!("  {}", show(v));
        if std::env::var("WSGW_TORTURE_EXPLAIN_ALL").is_ok() && !std::ptr::eq(v, *first) {
            println!("\n  FIRST {}", explain(&report, v, published, logs));
        }
    }
    let missing: usize = fatal
        .iter()
        .filter(|v| matches!(v.kind, Kind::Gap | Kind::FalseRecovered | Kind::Stalled))
        .map(|v| v.ids.len())
        .sum();
    let summary: Vec<String> = counts
        .iter()
        .filter(|(k, _)| k.fatal())
        .map(|(k, n)| format!("{k}: {n}"))
        .collect();
    panic!(
        "{name} (seed {seed}): {} violations [{}] ({missing} events missing in all) over {} events published, \
         {} deliveries checked, {faults} faults, {reconnects} client reconnects{}",
        fatal.len(),
        summary.join(", "),
        report.events_published,
        report.deliveries_checked,
        s.extra
    );
}
