//! Unit tests of the checker: it must catch a planted gap, duplicate, reorder and a false
//! `recovered:true`, and stay quiet on the legitimate cases around them.

use std::collections::BTreeMap;

use super::checker::{Kind, check, glob};
use super::explain::explain;
use super::model::*;

fn id(n: u64) -> Id {
    Id::new(n, 0)
}

/// `t:a` got 1..=n, `t:b` got 101..=100+m, `t:1`/`t:10` get what the test says.
fn published(chans: &[(&str, &[u64])]) -> Published {
    let mut m = BTreeMap::new();
    for (c, ids) in chans {
        m.insert(c.to_string(), ids.iter().map(|&n| id(n)).collect());
    }
    Published::new(m)
}

/// A tiny builder for one client's log.
struct L(ClientLog, u64);

impl L {
    fn new() -> L {
        let mut l = L(ClientLog::new("c0"), 0);
        l.connect(None, None);
        l.welcome(false, true, 0, &[]);
        l
    }
    fn push(&mut self, r: Rec) -> &mut Self {
        self.1 += 1000;
        self.0.push(self.1, r);
        self
    }
    fn connect(&mut self, cid: Option<&str>, last: Option<u64>) -> &mut Self {
        self.push(Rec::Connect {
            node: "n".into(),
            connection_id: cid.map(Into::into),
            last_event_id: last.map(|n| Cursor::one(id(n))),
        })
    }
    fn welcome(&mut self, resumed: bool, recovered: bool, replayed: u64, chans: &[&str]) -> &mut Self {
        self.push(Rec::Welcome {
            connection_id: "x".into(),
            resumed,
            recovered,
            replayed,
            channels: chans.iter().map(|c| c.to_string()).collect(),
            not_replayed: vec![],
        })
    }
    fn sub(&mut self, ch: &str, last: Option<u64>, history: Option<u64>, recovered: bool, replayed: u64) -> &mut Self {
        self.push(Rec::Subscribe {
            channel: ch.into(),
            last_event_id: last.map(id),
            history,
        });
        self.push(Rec::Subscribed {
            channel: ch.into(),
            recovered,
            replayed,
        })
    }
    fn plain(&mut self, ch: &str) -> &mut Self {
        self.sub(ch, None, None, true, 0)
    }
    fn ev(&mut self, ch: &str, ids: &[u64]) -> &mut Self {
        for &n in ids {
            self.push(Rec::Event {
                id: id(n),
                channel: ch.into(),
                fate: Fate::Delivered,
            });
        }
        self
    }
    fn ev_fate(&mut self, ch: &str, n: u64, fate: Fate) -> &mut Self {
        self.push(Rec::Event {
            id: id(n),
            channel: ch.into(),
            fate,
        })
    }
    fn close(&mut self) -> &mut Self {
        self.push(Rec::Closed { why: "test".into() })
    }
    fn log(&self) -> ClientLog {
        self.0.clone()
    }
}

fn kinds(p: &Published, logs: &[ClientLog]) -> Vec<(Kind, Vec<u64>)> {
    let r = check(p, logs);
    // The printer must cope with whatever the checker reports.
    for v in &r.violations {
        assert!(!explain(&r, v, p, logs).is_empty());
    }
    let mut out: Vec<(Kind, Vec<u64>)> = r
        .violations
        .iter()
        .map(|v| (v.kind, v.ids.iter().map(|i| i.ms).collect()))
        .collect();
    out.sort();
    out
}

#[test]
fn a_clean_run_has_no_violation() {
    let p = published(&[("t:a", &[1, 2, 3, 4, 5]), ("t:b", &[6, 7])]);
    let mut l = L::new();
    l.plain("t:a").ev("t:a", &[2, 3, 4, 5]);
    let r = check(&p, &[l.log()]);
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert_eq!(r.deliveries_checked, 4);
    assert_eq!(r.events_published, 7);
}

#[test]
fn catches_a_planted_gap() {
    let p = published(&[("t:a", &[1, 2, 3, 4, 5])]);
    let mut l = L::new();
    l.plain("t:a").ev("t:a", &[1, 2, 4, 5]);
    assert_eq!(kinds(&p, &[l.log()]), vec![(Kind::Gap, vec![3])]);
}

#[test]
fn a_gaps_explanation_names_the_clients_node_and_who_else_got_the_event() {
    let p = published(&[("t:a", &[1, 2, 3, 4, 5])]);
    let on = |name: &str, node: &str, ids: &[u64]| {
        let mut l = L(ClientLog::new(name), 0);
        l.push(Rec::Connect {
            node: node.into(),
            connection_id: None,
            last_event_id: None,
        });
        l.welcome(false, true, 0, &[]);
        l.plain("t:a").ev("t:a", ids);
        l.log()
    };
    let logs = [on("c0", "gw-1", &[1, 2, 4, 5]), on("c1", "gw-2", &[1, 2, 3, 4, 5])];
    let r = check(&p, &logs);
    assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
    let text = explain(&r, &r.violations[0], &p, &logs);
    assert!(
        text.contains("3-0 was delivered to 1 other client(s): [c1@gw-2]; c0 was on gw-1"),
        "{text}"
    );
}

#[test]
fn catches_a_planted_duplicate() {
    let p = published(&[("t:a", &[1, 2, 3])]);
    let mut l = L::new();
    l.plain("t:a").ev("t:a", &[1, 2, 2, 3]);
    assert_eq!(kinds(&p, &[l.log()]), vec![(Kind::Duplicate, vec![2])]);
}

#[test]
fn catches_a_planted_reorder() {
    let p = published(&[("t:a", &[1, 2, 3, 4])]);
    let mut l = L::new();
    l.plain("t:a").ev("t:a", &[1, 3, 2, 4]);
    assert_eq!(kinds(&p, &[l.log()]), vec![(Kind::OutOfOrder, vec![2])]);
}

#[test]
fn catches_a_false_recovered_subscribe() {
    let p = published(&[("t:a", &[1, 2, 3, 4, 5])]);
    let mut l = L::new();
    // Replay after 1 should bring 2 and 3; it brings only 3.
    l.sub("t:a", Some(1), None, true, 1).ev("t:a", &[3, 4, 5]);
    assert_eq!(kinds(&p, &[l.log()]), vec![(Kind::FalseRecovered, vec![2])]);
}

#[test]
fn catches_a_false_recovered_resume() {
    let p = published(&[("t:a", &[1, 2, 3, 4, 5])]);
    let mut l = L::new();
    l.plain("t:a").ev("t:a", &[1, 2]).close();
    l.connect(Some("x"), Some(2))
        .welcome(true, true, 1, &["t:a"])
        .ev("t:a", &[4, 5]);
    assert_eq!(kinds(&p, &[l.log()]), vec![(Kind::FalseRecovered, vec![3])]);
}

#[test]
fn a_good_resume_and_the_resume_filter_are_clean() {
    let p = published(&[("t:a", &[1, 2, 3, 4, 5])]);
    let mut l = L::new();
    l.plain("t:a").ev("t:a", &[1, 2, 3]).close();
    // Resumed from 2 (an unfinished catch-up elsewhere): 3 is dropped by the filter.
    l.connect(Some("x"), Some(2)).welcome(true, true, 3, &["t:a"]);
    l.ev_fate("t:a", 3, Fate::Filtered).ev("t:a", &[4, 5]);
    let r = check(&p, &[l.log()]);
    assert!(r.violations.is_empty(), "{:?}", r.violations);
}

#[test]
fn coverage_ends_at_a_gap_frame_unsubscribe_and_unrecovered_resume() {
    let p = published(&[("t:a", &(1..=20).collect::<Vec<_>>())]);
    let mut l = L::new();
    l.plain("t:a").ev("t:a", &[1, 2]);
    l.push(Rec::Gap {
        channels: vec!["t:*".into()],
    });
    l.ev("t:a", &[5, 6]);
    l.push(Rec::Unsubscribe { channel: "t:a".into() });
    l.plain("t:a").ev("t:a", &[9, 10]).close();
    l.connect(Some("x"), Some(10)).welcome(true, false, 0, &["t:a"]);
    l.ev("t:a", &[13, 14]).close();
    // Not resumed: nothing more is required.
    l.connect(Some("x"), Some(14)).welcome(false, true, 0, &[]);
    let r = check(&p, &[l.log()]);
    assert!(r.violations.is_empty(), "{:?}", r.violations);
}

#[test]
fn resubscribing_with_an_older_id_replays_again_without_a_duplicate() {
    let p = published(&[("t:a", &[1, 2, 3, 4, 5])]);
    let mut l = L::new();
    l.plain("t:a").ev("t:a", &[1, 2, 3]);
    l.push(Rec::Unsubscribe { channel: "t:a".into() });
    l.sub("t:a", Some(1), None, true, 2).ev("t:a", &[2, 3, 4, 5]);
    let r = check(&p, &[l.log()]);
    assert!(r.violations.is_empty(), "{:?}", r.violations);
}

#[test]
fn a_subscribe_catch_up_under_a_pattern_brings_older_events() {
    let p = published(&[("t:1", &[1, 2, 3, 4, 5, 6, 7]), ("t:10", &[8])]);
    let mut l = L::new();
    l.plain("t:1*").ev("t:1", &[5, 6]).ev("t:10", &[8]);
    l.sub("t:1", Some(2), None, true, 2).ev("t:1", &[3, 4]).ev("t:1", &[7]);
    let r = check(&p, &[l.log()]);
    assert!(r.violations.is_empty(), "{:?}", r.violations);

    let mut l = L::new();
    l.plain("t:1*").ev("t:1", &[5, 6]).ev("t:10", &[8]);
    l.sub("t:1", Some(2), None, true, 1).ev("t:1", &[4]).ev("t:1", &[7]);
    assert_eq!(kinds(&p, &[l.log()]), vec![(Kind::FalseRecovered, vec![3])]);
}

#[test]
fn history_starts_at_its_first_replayed_event() {
    let p = published(&[("t:a", &[1, 2, 3, 4, 5, 6])]);
    let mut l = L::new();
    l.sub("t:a", None, Some(2), true, 2).ev("t:a", &[3, 4, 5, 6]);
    assert!(check(&p, &[l.log()]).violations.is_empty());
    let mut l = L::new();
    l.sub("t:a", None, Some(3), true, 3).ev("t:a", &[3, 4, 6]);
    assert_eq!(kinds(&p, &[l.log()]), vec![(Kind::FalseRecovered, vec![5])]);
}

#[test]
fn the_tail_must_arrive_for_connected_clients_only() {
    let p = published(&[("t:a", &[1, 2, 3, 4, 5])]);
    let mut l = L::new();
    l.plain("t:a").ev("t:a", &[1, 2, 3]);
    assert_eq!(kinds(&p, &[l.log()]), vec![(Kind::Stalled, vec![4, 5])]);
    l.close();
    assert!(check(&p, &[l.log()]).violations.is_empty());
    // Subscribed, still connected, and nothing ever came, though the last event was published
    // after the subscription.
    let mut l = L::new();
    l.plain("t:a");
    let mut p = p;
    assert!(check(&p, &[l.log()]).violations.is_empty());
    p.final_at_us = Some(l.1 + 1);
    assert_eq!(kinds(&p, &[l.log()]), vec![(Kind::Stalled, vec![5])]);
}

#[test]
fn unknown_ids_and_rule_duplicates_are_reported() {
    let p = published(&[("t:a", &[1, 2, 3])]);
    let mut l = L::new();
    l.plain("t:a")
        .ev("t:a", &[1, 2, 99, 3])
        .ev_fate("t:a", 3, Fate::DeliveredExempt);
    assert_eq!(
        kinds(&p, &[l.log()]),
        vec![(Kind::UnknownEvent, vec![99]), (Kind::RuleDuplicate, vec![3])]
    );
}

#[test]
fn a_catch_up_repeating_what_an_earlier_socket_delivered_is_the_rules_duplicate() {
    let p = published(&[("t:1", &[1, 2, 3, 4])]);
    let mut l = L::new();
    l.plain("t:1*").plain("t:1").ev("t:1", &[1, 2]).close();
    l.connect(Some("x"), Some(2)).welcome(true, true, 0, &["t:1*", "t:1"]);
    l.push(Rec::Unsubscribe { channel: "t:1".into() });
    l.sub("t:1", None, Some(3), true, 2).ev("t:1", &[2]).ev("t:1", &[3, 4]);
    assert_eq!(kinds(&p, &[l.log()]), vec![(Kind::RuleDuplicate, vec![2])]);
    // On the same socket it is the server's.
    let mut l = L::new();
    l.plain("t:1*").plain("t:1").ev("t:1", &[1, 2]);
    l.push(Rec::Unsubscribe { channel: "t:1".into() });
    l.sub("t:1", None, Some(3), true, 1).ev("t:1", &[2]).ev("t:1", &[3, 4]);
    assert_eq!(kinds(&p, &[l.log()]), vec![(Kind::Duplicate, vec![2])]);
}

#[test]
fn dedup_ends_at_unsubscribe_but_not_for_what_a_remaining_pattern_delivered() {
    let p = published(&[("t:1", &[1, 2, 3, 4, 5])]);
    // 1 and 2 came through the exact subscription alone: after its unsubscribe they may come again.
    let mut l = L::new();
    l.plain("t:1").ev("t:1", &[1, 2]).plain("t:1*").ev("t:1", &[3]);
    l.push(Rec::Unsubscribe { channel: "t:1".into() });
    l.sub("t:1", None, Some(5), true, 2)
        .ev("t:1", &[1, 2])
        .ev("t:1", &[4, 5]);
    assert!(check(&p, &[l.log()]).violations.is_empty());
    // 3 came while the pattern was there too: sending it again is a duplicate.
    let mut l = L::new();
    l.plain("t:1").ev("t:1", &[1, 2]).plain("t:1*").ev("t:1", &[3]);
    l.push(Rec::Unsubscribe { channel: "t:1".into() });
    l.sub("t:1", None, Some(5), true, 3)
        .ev("t:1", &[1, 2, 3])
        .ev("t:1", &[4, 5]);
    assert_eq!(kinds(&p, &[l.log()]), vec![(Kind::Duplicate, vec![3])]);
    // A catch-up under the pattern came through the name: dedup for it ends at unsubscribe too.
    let mut l = L::new();
    l.plain("t:1*")
        .ev("t:1", &[3])
        .sub("t:1", Some(1), None, true, 1)
        .ev("t:1", &[2]);
    l.push(Rec::Unsubscribe { channel: "t:1".into() });
    l.sub("t:1", Some(1), None, true, 1).ev("t:1", &[2]).ev("t:1", &[4, 5]);
    assert!(check(&p, &[l.log()]).violations.is_empty());
    // Unless that pattern was unsubscribed meanwhile: subscribing it again is a new subscription.
    let mut l = L::new();
    l.plain("t:1").ev("t:1", &[1, 2]).plain("t:1*").ev("t:1", &[3]);
    l.push(Rec::Unsubscribe { channel: "t:1*".into() });
    l.plain("t:1*");
    l.push(Rec::Unsubscribe { channel: "t:1".into() });
    l.sub("t:1", None, Some(5), true, 3)
        .ev("t:1", &[1, 2, 3])
        .ev("t:1", &[4, 5]);
    assert!(check(&p, &[l.log()]).violations.is_empty());
}

#[test]
fn a_cut_catch_up_under_a_pattern_finishes_after_the_resume() {
    let p = published(&[("t:1", &[1, 2, 3, 4, 5, 6, 7])]);
    let mut l = L::new();
    l.plain("t:1*").ev("t:1", &[5, 6]);
    l.sub("t:1", Some(1), None, true, 3).ev("t:1", &[2]).close();
    // Resumed from 2 (the catch-up's position); old cursor 6.
    l.connect(Some("x"), Some(2)).welcome(true, true, 5, &["t:1*", "t:1"]);
    for n in 3..=6 {
        l.ev_fate("t:1", n, Fate::DeliveredExempt);
    }
    l.ev("t:1", &[7]);
    // 3 and 4 finish the catch-up in order; 5 and 6 are the rule's repeats.
    assert_eq!(
        kinds(&p, &[l.log()]),
        vec![(Kind::RuleDuplicate, vec![5]), (Kind::RuleDuplicate, vec![6])]
    );
}

#[test]
fn glob_matches_any_run_including_colons() {
    assert!(glob("t:1*", "t:1"));
    assert!(glob("t:1*", "t:15"));
    assert!(!glob("t:1*", "t:2"));
    assert!(glob("t:*", "t:a:b"));
    assert!(glob("*:1", "t:x:1"));
    assert!(!glob("t:*x", "t:y"));
}

// Redis Cluster ids: `<shard>~<ms>-<seq>`, ordered only within a shard.

fn sid(shard: u16, n: u64) -> Id {
    Id::new(n, 0).in_shard(Some(shard))
}

fn sharded(chans: &[(&str, u16, &[u64])]) -> Published {
    let mut m = BTreeMap::new();
    for (c, s, ids) in chans {
        m.insert(c.to_string(), ids.iter().map(|&n| sid(*s, n)).collect());
    }
    Published::new(m)
}

impl L {
    fn sev(&mut self, ch: &str, shard: u16, ids: &[u64]) -> &mut Self {
        for &n in ids {
            self.push(Rec::Event {
                id: sid(shard, n),
                channel: ch.into(),
                fate: Fate::Delivered,
            });
        }
        self
    }
    fn resume(&mut self, positions: &[(u16, u64)]) -> &mut Self {
        self.push(Rec::Connect {
            node: "n".into(),
            connection_id: Some("x".into()),
            last_event_id: Some(Cursor(positions.iter().map(|&(s, n)| (Some(s), sid(s, n))).collect())),
        })
    }
}

#[test]
fn sharded_ids_print_and_parse_and_a_cursor_joins_them_in_shard_order() {
    assert_eq!(
        Id::parse("6~1732240000123-5"),
        Some(sid(6, 1_732_240_000_123).next_seq(5))
    );
    assert_eq!(sid(12, 7).to_string(), "12~7-0");
    assert_eq!(Id::parse("3~4~5-0"), None);
    let c = Cursor([sid(12, 1), sid(3, 9)].into_iter().map(|i| (i.shard, i)).collect());
    assert_eq!(c.to_string(), "3~9-0,12~1-0");
    assert_eq!(Cursor::one(id(5)).to_string(), "5-0");
}

impl Id {
    fn next_seq(self, seq: u64) -> Id {
        Id { seq, ..self }
    }
}

#[test]
fn a_resume_is_checked_against_the_position_of_each_channels_own_shard() {
    // `t:x` in shard 9 has much higher ids than `t:y` in shard 3: comparing across shards would
    // take 3~4 as older than the resume's position and call its loss a plain gap.
    let p = sharded(&[("t:x", 9, &[100, 101, 102, 103]), ("t:y", 3, &[1, 2, 3, 4, 5])]);
    let mut l = L::new();
    l.plain("t:x").plain("t:y");
    l.sev("t:x", 9, &[100, 101]).sev("t:y", 3, &[1, 2, 3]).close();
    l.resume(&[(3, 3), (9, 101)]).welcome(true, true, 3, &["t:x", "t:y"]);
    l.sev("t:x", 9, &[102, 103]).sev("t:y", 3, &[5]);
    assert_eq!(kinds(&p, &[l.log()]), vec![(Kind::FalseRecovered, vec![4])]);
    // Complete: clean, whatever the numeric order of the shards' ids.
    let mut l = L::new();
    l.plain("t:x").plain("t:y");
    l.sev("t:x", 9, &[100, 101]).sev("t:y", 3, &[1, 2, 3]).close();
    l.resume(&[(3, 3), (9, 101)]).welcome(true, true, 4, &["t:x", "t:y"]);
    l.sev("t:y", 3, &[4]).sev("t:x", 9, &[102, 103]).sev("t:y", 3, &[5]);
    let r = check(&p, &[l.log()]);
    assert!(r.violations.is_empty(), "{:?}", r.violations);
}

#[test]
fn a_resume_naming_no_position_in_a_channels_shard_owes_all_of_its_stretch() {
    // `t:y` (shard 3) was empty when subscribed with history: every event of it is owed. The
    // client received nothing from shard 3, so its cursor names shard 9 only; the resume says
    // recovered (the gateway found shard 3's channel quiet), yet 3~1 never comes.
    let p = sharded(&[("t:x", 9, &[100, 101]), ("t:y", 3, &[1, 2])]);
    let mut l = L::new();
    l.plain("t:x").sub("t:y", None, Some(5), true, 0);
    l.sev("t:x", 9, &[100]).close();
    l.resume(&[(9, 100)]).welcome(true, true, 1, &["t:x", "t:y"]);
    l.sev("t:x", 9, &[101]).sev("t:y", 3, &[2]);
    assert_eq!(kinds(&p, &[l.log()]), vec![(Kind::FalseRecovered, vec![1])]);
}

#[test]
fn an_acknowledged_event_a_failover_lost_is_reported_apart_with_whether_the_client_was_told() {
    let mut p = sharded(&[("t:x", 9, &[1, 2, 4])]);
    p.set_acknowledged(&[("t:x".into(), sid(9, 2)), ("t:x".into(), sid(9, 3))]);
    assert_eq!(p.lost_total(), 1);
    let mut l = L::new();
    l.plain("t:x").sev("t:x", 9, &[1, 2, 3]);
    l.push(Rec::Gap {
        channels: vec!["t:x".into()],
    });
    l.sev("t:x", 9, &[4]);
    let r = check(&p, &[l.log()]);
    assert_eq!(kinds(&p, &[l.log()]), vec![(Kind::LostDelivered, vec![3])]);
    assert!(r.violations[0].detail.contains("told at entry"), "{:?}", r.violations);
    assert!(!Kind::LostDelivered.fatal());
    // Never told: still not the server's breach of exactness, but said so.
    let mut l = L::new();
    l.plain("t:x").sev("t:x", 9, &[1, 2, 3, 4]);
    let r = check(&p, &[l.log()]);
    assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
    assert!(r.violations[0].detail.contains("never told"), "{:?}", r.violations);
}
