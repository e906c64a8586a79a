//! Unit tests of the hub: fan-out, dedup through patterns, catch-ups, users and parked sessions.

use wsgw_protocol::EventId;

use super::*;

fn ev(id: u64, text: &str) -> OutFrame {
    OutFrame::event(text, EventId::new(id, 0), 0)
}

fn drain(c: &Connection) -> (Vec<String>, Option<CloseCode>) {
    let mut out = Vec::new();
    let close = c.take_batch(&mut out);
    (out.into_iter().map(|f| f.text().to_owned()).collect(), close)
}

fn live(hub: &Hub, id: &str, cap: usize) -> Arc<Connection> {
    let c = hub.register(Connection::new(Arc::from(id), Arc::from("u"), cap, &[]));
    c.finish_replay(|_| OutFrame::control("welcome"), vec![], &[], None);
    c
}

#[test]
fn replay_then_buffered_live_in_order_without_duplicates() {
    let c = Connection::new(Arc::from("c1"), Arc::from("u"), 100, &[EventId::new(1, 0)]);
    // live events arrive while history is being read; 3 is also in history
    assert_eq!(c.push(ev(3, "e3"), "t", false), Push::Queued);
    assert_eq!(c.push(ev(4, "e4"), "t", false), Push::Queued);
    let n = c.finish_replay(
        |_| OutFrame::control("welcome"),
        vec![ev(2, "e2"), ev(3, "e3")],
        &[EventId::new(3, 0)],
        None,
    );
    assert_eq!(n, 2);
    assert_eq!(c.push(ev(4, "e4"), "t", false), Push::Duplicate);
    assert_eq!(c.push(ev(5, "e5"), "t", false), Push::Queued);
    assert_eq!(drain(&c).0, ["welcome", "e2", "e3", "e4", "e5"]);
}

#[test]
fn overflow_closes_with_4008_and_drops_the_queue() {
    let hub = Hub::new("n".into(), Metrics::new());
    let c = live(&hub, "c1", 2);
    drain(&c);
    hub.subscribe(&c, "t");
    assert_eq!(c.push(ev(1, "a"), "t", false), Push::Queued);
    assert_eq!(hub.deliver("t", &ev(2, "b"), &[]), 1);
    assert_eq!(
        hub.deliver("t", &ev(3, "c"), &[]),
        0,
        "third frame overflows a queue of 2"
    );
    let (frames, close) = drain(&c);
    assert_eq!(close, Some(CloseCode::SlowConsumer));
    assert!(frames.is_empty());
}

#[test]
fn pattern_and_exact_subscriber_gets_one_copy() {
    let hub = Hub::new("n".into(), Metrics::new());
    let a = live(&hub, "a", 10);
    let b = live(&hub, "b", 10);
    assert!(hub.subscribe(&a, "project:1"));
    assert!(hub.subscribe(&a, "project:*"));
    assert!(!hub.subscribe(&b, "project:*"));
    assert_eq!(hub.deliver("project:1", &OutFrame::control("x"), &[]), 2);
    assert_eq!(drain(&a).0, ["welcome", "x"]);
    assert_eq!(hub.deliver("project:1", &OutFrame::control("y"), &["b"]), 1);
    assert!(!hub.unsubscribe(&a, "project:*"));
    assert!(hub.unsubscribe(&b, "project:*"), "last subscriber leaves the pattern");
    assert_eq!(hub.remove(&a), vec![Arc::<str>::from("project:1")]);
}

fn on(id: u64, channel: &str) -> OutFrame {
    ev(id, &format!("{channel}#{id}"))
}

#[test]
fn a_catch_up_on_one_channel_never_drops_older_live_events_of_another() {
    // The socket has chat:1 up to 10; pub/sub lags, so chat:1 events 11..=14 are still on
    // their way when a subscribe to doc:9 reads history up to the snapshot 15.
    let hub = Hub::new("n".into(), Metrics::new());
    let c = live(&hub, "c", 100);
    hub.subscribe(&c, "chat:1");
    assert_eq!(c.push(on(10, "chat:1"), "chat:1", false), Push::Queued);
    drain(&c);
    c.begin_replay();
    hub.subscribe(&c, "doc:9");
    // The broker's sync lets the lagging events through before the snapshot is used.
    for id in 11..=14 {
        assert_eq!(c.push(on(id, "chat:1"), "chat:1", false), Push::Queued);
    }
    let n = c.finish_replay(
        |n| OutFrame::control(format!("subscribed:{n}")),
        vec![on(3, "doc:9"), on(15, "doc:9")],
        &[EventId::new(15, 0)],
        Some(CatchUp {
            channel: "doc:9",
            from: EventId::new(3, 0),
        }),
    );
    assert_eq!(n, 2);
    assert_eq!(c.push(on(15, "doc:9"), "doc:9", false), Push::Duplicate);
    assert_eq!(c.push(on(16, "chat:1"), "chat:1", false), Push::Queued);
    assert_eq!(
        drain(&c).0,
        [
            "subscribed:2",
            "doc:9#3",
            "chat:1#11",
            "chat:1#12",
            "chat:1#13",
            "chat:1#14",
            "doc:9#15",
            "chat:1#16"
        ]
    );
}

#[test]
fn a_future_last_event_id_does_not_hold_live_events_back() {
    let c = Connection::new(Arc::from("c"), Arc::from("u"), 100, &[EventId::new(1_000, 0)]);
    c.finish_replay(|_| OutFrame::control("welcome"), vec![], &[EventId::new(20, 0)], None);
    assert_eq!(c.push(on(21, "t"), "t", false), Push::Queued);
    assert_eq!(drain(&c).0, ["welcome", "t#21"]);
}

#[test]
fn a_pattern_is_exact_from_its_snapshot_and_a_catch_up_skips_what_it_brought() {
    let hub = Hub::new("n".into(), Metrics::new());
    let c = live(&hub, "c", 100);
    c.begin_replay();
    hub.subscribe(&c, "t:*");
    // Lagging events from before the snapshot reach the socket through the new pattern.
    assert_eq!(c.push(on(4, "t:1"), "t:1", true), Push::Queued);
    c.finish_replay(
        |_| OutFrame::control("psubscribed"),
        vec![],
        &[EventId::new(5, 0)],
        None,
    );
    for id in 6..=8 {
        assert_eq!(c.push(on(id, "t:1"), "t:1", true), Push::Queued);
    }
    assert_eq!(drain(&c).0, ["welcome", "psubscribed", "t:1#6", "t:1#7", "t:1#8"]);
    // Now t:1 by name, from id 2: 3..=5 are missing, 6..=8 came through the pattern.
    c.begin_replay();
    hub.subscribe(&c, "t:1");
    let replay = (3..=9).map(|id| on(id, "t:1")).collect();
    let n = c.finish_replay(
        |n| OutFrame::control(format!("subscribed:{n}")),
        replay,
        &[EventId::new(9, 0)],
        Some(CatchUp {
            channel: "t:1",
            from: EventId::new(3, 0),
        }),
    );
    assert_eq!(n, 4);
    assert_eq!(drain(&c).0, ["subscribed:4", "t:1#3", "t:1#4", "t:1#5", "t:1#9"]);
}

#[test]
fn a_users_connections_are_its_own_sockets_not_the_listeners_of_its_channel() {
    let hub = Hub::new("n".into(), Metrics::new());
    let alice = hub.register(Connection::new(Arc::from("a1"), Arc::from("alice"), 10, &[]));
    let agent = hub.register(Connection::new(Arc::from("s1"), Arc::from("support"), 10, &[]));
    hub.subscribe(&agent, "user:alice");
    assert_eq!(hub.user_connection_count("alice"), 1);
    assert_eq!(hub.presence("alice").len(), 1);
    assert_eq!(hub.presence("alice")[0].connection_id, "a1");
    assert_eq!(hub.close_user("alice", CloseCode::Kicked), 1);
    assert!(
        agent.close(CloseCode::Kicked),
        "the agent watching user:alice was not kicked"
    );
    // A resumed id replaces the old socket in the index; removal empties it.
    let again = hub.register(Connection::new(Arc::from("a1"), Arc::from("alice"), 10, &[]));
    assert_eq!(hub.user_connection_count("alice"), 1);
    hub.remove(&alice);
    assert_eq!(
        hub.user_connection_count("alice"),
        1,
        "the stale socket leaves no trace"
    );
    hub.remove(&again);
    assert_eq!(hub.user_connection_count("alice"), 0);
    assert!(hub.users.read().get("alice").is_none());
}

#[test]
fn a_repair_gap_names_channels_and_patterns_once_per_socket() {
    let hub = Hub::new("n".into(), Metrics::new());
    let a = live(&hub, "a", 10);
    let b = live(&hub, "b", 10);
    drain(&a);
    drain(&b);
    hub.subscribe(&a, "t:1");
    hub.subscribe(&a, "t:*");
    hub.subscribe(&b, "t:*");
    assert_eq!(hub.send_gap(&[Arc::from("t:1"), Arc::from("t:2")]), 2);
    assert_eq!(
        drain(&a).0,
        [r#"{"type":"gap","channels":["t:1","t:*"],"recovered":false}"#]
    );
    assert_eq!(drain(&b).0, [r#"{"type":"gap","channels":["t:*"],"recovered":false}"#]);
}

#[test]
fn a_history_window_is_not_preceded_by_older_held_events_of_its_channel() {
    // pub/sub lags: events 5 and 6 of doc:9 are still on their way when `history:2` reads
    // the newest two (7, 8) up to the snapshot 8.
    let hub = Hub::new("n".into(), Metrics::new());
    let c = live(&hub, "c", 100);
    drain(&c);
    c.begin_replay();
    hub.subscribe(&c, "doc:9");
    for id in 5..=8 {
        assert_eq!(c.push(on(id, "doc:9"), "doc:9", false), Push::Queued);
    }
    let n = c.finish_replay(
        |n| OutFrame::control(format!("subscribed:{n}")),
        vec![on(7, "doc:9"), on(8, "doc:9")],
        &[EventId::new(8, 0)],
        Some(CatchUp {
            channel: "doc:9",
            from: EventId::new(7, 0),
        }),
    );
    assert_eq!(n, 2);
    assert_eq!(drain(&c).0, ["subscribed:2", "doc:9#7", "doc:9#8"]);
}

#[test]
fn a_fan_out_shares_one_compression_cache_only_when_compression_is_on() {
    let on = Hub::new("n".into(), Metrics::new()).with_compression(10);
    let off = Hub::new("n".into(), Metrics::new());
    for (hub, shared) in [(&on, true), (&off, false)] {
        let a = live(hub, "a", 10);
        let b = live(hub, "b", 10);
        drain(&a);
        drain(&b);
        hub.subscribe(&a, "t");
        hub.subscribe(&b, "t");
        hub.deliver("t", &ev(1, "a payload long enough"), &[]);
        hub.deliver("t", &ev(2, "short"), &[]);
        let (mut fa, mut fb) = (Vec::new(), Vec::new());
        a.take_batch(&mut fa);
        b.take_batch(&mut fb);
        if shared {
            let (ca, cb) = (fa[0].deflated.as_ref().unwrap(), fb[0].deflated.as_ref().unwrap());
            assert!(Arc::ptr_eq(ca, cb), "both recipients share one cache");
        } else {
            assert!(fa[0].deflated.is_none() && fb[0].deflated.is_none());
        }
        // Below compression_min_bytes: no cache.
        assert!(fa[1].deflated.is_none() && fb[1].deflated.is_none());
    }
}

fn sev(shard: u16, ms: u64, text: &str) -> OutFrame {
    OutFrame::event(text, EventId::sharded(shard, ms, 0), 0)
}

/// Ids of different id-shards are not ordered against each other: a resume's replay over two
/// shards merges with the live events held meanwhile shard by shard, each id once, and the
/// floors that follow drop repeats per shard only.
#[test]
fn a_replay_over_two_shards_merges_per_shard() {
    // The client's cursor: shard 3 at 100, shard 7 at 5 (far lower ids in another sequence).
    let c = Connection::new(
        Arc::from("c1"),
        Arc::from("u"),
        100,
        &[EventId::sharded(3, 100, 0), EventId::sharded(7, 5, 0)],
    );
    // Live while the replay is read: shard 7 at 8 (also replayed), shard 3 at 103, shard 7 at 9.
    assert_eq!(c.push(sev(7, 8, "b8"), "b", false), Push::Queued);
    assert_eq!(c.push(sev(3, 103, "a103"), "a", false), Push::Queued);
    assert_eq!(c.push(sev(7, 9, "b9"), "b", false), Push::Queued);
    // The replay, up to the snapshot (shard 3 at 102, shard 7 at 8), sorted by id.
    let n = c.finish_replay(
        |_| OutFrame::control("welcome"),
        vec![
            sev(3, 101, "a101"),
            sev(3, 102, "a102"),
            sev(7, 6, "b6"),
            sev(7, 8, "b8"),
        ],
        &[EventId::sharded(3, 102, 0), EventId::sharded(7, 8, 0)],
        None,
    );
    assert_eq!(n, 4);
    let (frames, _) = drain(&c);
    assert_eq!(frames, ["welcome", "b6", "b8", "a101", "a102", "a103", "b9"]);
    // Repeats are dropped per shard; a low id of one shard is not held back by another's floor.
    assert_eq!(c.push(sev(3, 103, "a103"), "a", false), Push::Duplicate);
    assert_eq!(c.push(sev(7, 9, "b9"), "b", false), Push::Duplicate);
    assert_eq!(c.push(sev(7, 10, "b10"), "b", false), Push::Queued);
    assert_eq!(c.push(sev(12, 1, "c1"), "c", false), Push::Queued);
    assert_eq!(c.push(sev(3, 104, "a104"), "a", false), Push::Queued);
    assert_eq!(drain(&c).0, ["b10", "c1", "a104"]);
}

/// A client's floor from `last_event_id` holds back only its own shard's older live events.
#[test]
fn a_cursor_floor_holds_back_only_its_shard() {
    let c = Connection::new(Arc::from("c1"), Arc::from("u"), 100, &[EventId::sharded(3, 100, 0)]);
    c.finish_replay(|_| OutFrame::control("welcome"), vec![], &[], None);
    assert_eq!(c.push(sev(3, 99, "old"), "a", false), Push::Duplicate);
    assert_eq!(c.push(sev(4, 1, "other"), "b", false), Push::Queued);
    assert_eq!(drain(&c).0, ["welcome", "other"]);
}
