//! Printing a violation as the smallest history that shows it: the expected ids around it and
//! the client's actions and frames that concern the channel.

use std::fmt::Write;

use super::checker::{Report, Tag, Violation, glob};
use super::model::*;

fn concerns(rec: &Rec, channel: &str) -> bool {
    let hits = |c: &str| c == channel || (c.contains('*') && glob(c, channel));
    match rec {
        Rec::Connect { .. } | Rec::ConnectFailed { .. } | Rec::Welcome { .. } | Rec::Closed { .. } => true,
        Rec::Subscribe { channel: c, .. }
        | Rec::Subscribed { channel: c, .. }
        | Rec::SubscribeFailed { channel: c, .. }
        | Rec::Unsubscribe { channel: c }
        | Rec::Unsubscribed { channel: c, .. } => hits(c),
        Rec::Gap { channels } => channels.iter().any(|c| hits(c)),
        Rec::Event { channel: c, .. } => c == channel,
    }
}

pub fn line(e: &Entry, tag: Option<Tag>) -> String {
    let t = format!("+{:>8.3}s", e.t_us as f64 / 1e6);
    let body = match &e.rec {
        Rec::Connect {
            node,
            connection_id,
            last_event_id,
        } => format!(
            "CONNECT {node} connection_id={} last_event_id={}",
            connection_id.as_deref().unwrap_or("-"),
            last_event_id.as_ref().map_or("-".into(), |c| c.to_string())
        ),
        Rec::ConnectFailed { why } => format!("connect failed: {why}"),
        Rec::Welcome {
            connection_id,
            resumed,
            recovered,
            replayed,
            channels,
            not_replayed,
        } => format!(
            "<- welcome {connection_id} resumed={resumed} recovered={recovered} replayed={replayed} channels={channels:?}{}",
            if not_replayed.is_empty() {
                String::new()
            } else {
                format!(" not_replayed={not_replayed:?}")
            }
        ),
        Rec::Closed { why } => format!("CLOSED ({why})"),
        Rec::Subscribe {
            channel,
            last_event_id,
            history,
        } => format!(
            "-> subscribe {channel}{}{}",
            last_event_id.map_or(String::new(), |i| format!(" last_event_id={i}")),
            history.map_or(String::new(), |n| format!(" history={n}"))
        ),
        Rec::Subscribed {
            channel,
            recovered,
            replayed,
        } => format!("<- subscribed {channel} recovered={recovered} replayed={replayed}"),
        Rec::SubscribeFailed { channel, code } => format!("<- error {code} (subscribe {channel})"),
        Rec::Unsubscribe { channel } => format!("-> unsubscribe {channel}"),
        Rec::Unsubscribed { channel, reason } => format!("<- unsubscribed {channel} reason={reason:?}"),
        Rec::Gap { channels } => format!("<- gap {channels:?}"),
        Rec::Event { id, channel, fate } => {
            let tag = match tag {
                Some(Tag::Replay) => " [replay]",
                Some(Tag::Catchup) => " [catch-up]",
                _ => "",
            };
            let fate = match fate {
                Fate::Delivered => "",
                Fate::DeliveredExempt => " (passed the catch-up exception)",
                Fate::Filtered => " (dropped by the resume filter)",
                Fate::Unfollowed => " (dropped: not followed)",
            };
            format!("<- event {channel} {id}{tag}{fate}")
        }
    };
    format!("{t}  {body}")
}

/// The smallest history showing `v`.
pub fn explain(report: &Report, v: &Violation, published: &Published, clients: &[ClientLog]) -> String {
    let log = &clients[v.client];
    let tags = &report.tags[v.client];
    let mut out = String::new();
    let at_t = log.entries.get(v.at).map_or(0, |e| e.t_us);
    let _ = writeln!(
        out,
        "{} on {} for client {} at +{:.3}s: {}",
        v.kind,
        v.channel,
        log.name,
        at_t as f64 / 1e6,
        v.detail
    );
    let shown: Vec<String> = v.ids.iter().take(8).map(Id::to_string).collect();
    let more = if v.ids.len() > 8 {
        format!(" (+{} more)", v.ids.len() - 8)
    } else {
        String::new()
    };
    let _ = writeln!(out, "  ids: {}{more}", shown.join(", "));
    // Expected ids around the first one, marked with what this client delivered.
    let delivered: std::collections::HashSet<Id> = log.entries[v.since.min(v.at)..=v.at.min(log.entries.len() - 1)]
        .iter()
        .filter_map(|e| match &e.rec {
            Rec::Event { id, channel, fate } if *channel == v.channel && fate.delivered() => Some(*id),
            _ => None,
        })
        .collect();
    let ids = published.ids(&v.channel);
    if let Some(&first) = v.ids.first() {
        let pos = ids.partition_point(|&i| i < first);
        let lo = pos.saturating_sub(4);
        let hi = (pos + 5).min(ids.len());
        let _ = writeln!(
            out,
            "  published on {} around it (#index id: delivered in this stretch?):",
            v.channel
        );
        for (k, id) in ids.iter().enumerate().take(hi).skip(lo) {
            let mark = if v.ids.contains(id) {
                "<== concerned"
            } else if delivered.contains(id) {
                "delivered"
            } else {
                "-"
            };
            let _ = writeln!(out, "    #{k:<6} {id}  {mark}");
        }
    }
    if let Some(&first) = v.ids.first() {
        let _ = writeln!(out, "  {}", who_got(first, &v.channel, v.client, v.at, clients));
    }
    // The client's entries about this channel, from the stretch's start to just after it.
    let end = (v.at + 1..log.entries.len())
        .filter(|&k| concerns(&log.entries[k].rec, &v.channel))
        .take(4)
        .last()
        .unwrap_or(v.at);
    // Start a little before the stretch: the last few actions and frames (not events) that
    // concern the channel show how it came to be followed.
    let start = (0..v.since.min(v.at))
        .rev()
        .filter(|&k| {
            let e = &log.entries[k].rec;
            !matches!(e, Rec::Event { .. }) && concerns(e, &v.channel)
        })
        .take(3)
        .last()
        .unwrap_or(v.since.min(v.at));
    let rel: Vec<usize> = (start..=end)
        .filter(|&k| concerns(&log.entries[k].rec, &v.channel))
        .collect();
    let _ = writeln!(
        out,
        "  {}'s actions and frames about {} (from just before the stretch; {} lines):",
        log.name,
        v.channel,
        rel.len()
    );
    let print = |out: &mut String, k: usize| {
        let marker = if k == v.at { "  <== evident here" } else { "" };
        let _ = writeln!(out, "    {}{marker}", line(&log.entries[k], tags[k]));
    };
    if rel.len() <= 45 {
        for &k in &rel {
            print(&mut out, k);
        }
    } else {
        for &k in &rel[..6] {
            print(&mut out, k);
        }
        let _ = writeln!(out, "    ... {} lines ...", rel.len() - 6 - 36);
        for &k in &rel[rel.len() - 36..] {
            print(&mut out, k);
        }
    }
    out
}

/// The node a client was connected to at entry `k` (its last `Connect` up to it).
fn node_at(log: &ClientLog, k: usize) -> &str {
    log.entries[..(k + 1).min(log.entries.len())]
        .iter()
        .rev()
        .find_map(|e| match &e.rec {
            Rec::Connect { node, .. } => Some(node.as_str()),
            _ => None,
        })
        .unwrap_or("?")
}

/// Which other clients delivered `id` of `channel`, each with its node then, and the node
/// `client` was on at its entry `at`: whether a node lost the event for all its sockets or one
/// socket lost it.
fn who_got(id: Id, channel: &str, client: usize, at: usize, clients: &[ClientLog]) -> String {
    let got: Vec<String> = clients
        .iter()
        .enumerate()
        .filter(|(n, _)| *n != client)
        .filter_map(|(_, log)| {
            let k = log.entries.iter().position(|e| {
                matches!(&e.rec, Rec::Event { id: i, channel: c, fate } if *i == id && c == channel && fate.delivered())
            })?;
            Some(format!("{}@{}", log.name, node_at(log, k)))
        })
        .collect();
    let log = &clients[client];
    format!(
        "{id} was delivered to {} other client(s): [{}]; {} was on {}",
        got.len(),
        got.join(" "),
        log.name,
        node_at(log, at)
    )
}
