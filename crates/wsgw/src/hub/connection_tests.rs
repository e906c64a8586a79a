//! Unit tests of a socket's outbox: its bounds, the replay merge and the order of a subscribe's frames.

use super::*;

fn frame(id: u64, bytes: usize) -> OutFrame {
    OutFrame::event("x".repeat(bytes), EventId::new(id, 0), 0)
}

fn live(cap: usize, cap_bytes: usize) -> Connection {
    let c = Connection::new(Arc::from("c"), Arc::from("u"), cap, None).with_byte_capacity(cap_bytes);
    c.finish_replay(|_| OutFrame::control("w"), Vec::new(), None, None);
    let mut out = Vec::new();
    c.take_batch(&mut out);
    c
}

#[test]
fn the_queue_is_bounded_by_bytes_as_well_as_frames() {
    // Few frames, many bytes: the byte bound closes it with 4008.
    let c = live(1000, 4000);
    for id in 1..=4 {
        assert_eq!(c.push(frame(id, 1000), "t", false), Push::Queued);
    }
    assert_eq!(c.push(frame(5, 1000), "t", false), Push::Overflow);
    assert_eq!(c.close_requested(), Some(CloseCode::SlowConsumer));

    // Control frames count against the same bytes.
    let c = live(1000, 4000);
    assert_eq!(c.push(frame(1, 3500), "t", false), Push::Queued);
    assert_eq!(c.push_control(OutFrame::control("y".repeat(600))), Push::Overflow);

    // Draining the queue frees its bytes; a frame bigger than the bound fits an empty queue.
    let c = live(1000, 4000);
    for id in 1..=4 {
        c.push(frame(id, 1000), "t", false);
    }
    let mut out = Vec::new();
    c.take_batch(&mut out);
    assert_eq!(c.push(frame(5, 9000), "t", false), Push::Queued);
    assert_eq!(c.close_requested(), None);

    // The frame bound still holds on its own.
    let c = live(2, 1 << 20);
    c.push(frame(1, 10), "t", false);
    c.push(frame(2, 10), "t", false);
    assert_eq!(c.push(frame(3, 10), "t", false), Push::Overflow);
}

fn texts(c: &Connection) -> Vec<String> {
    let mut out = Vec::new();
    c.take_batch(&mut out);
    out.into_iter().map(|f| f.text().to_owned()).collect()
}

fn ev(id: u64, text: &str) -> OutFrame {
    OutFrame::event(text.to_owned(), EventId::new(id, 0), 0)
}

#[test]
fn after_a_patterns_subscribed_frame_only_events_it_covers_arrive() {
    // The socket follows t:13 by name and subscribes t:*. Events of t:13 up to the
    // pattern's snapshot (6) came through the name: they go out before `subscribed`.
    let c = live(100, 1 << 20);
    assert_eq!(c.push(ev(1, "e1"), "t:13", false), Push::Queued);
    c.begin_replay();
    c.outbox.lock().patterns.push((Arc::from("t:*"), PENDING));
    c.push(ev(4, "e4"), "t:13", false);
    c.push(ev(5, "t:9 e5"), "t:9", true);
    c.push(ev(6, "e6"), "t:13", false);
    c.push(ev(7, "t:9 e7"), "t:9", true);
    c.push(ev(8, "e8"), "t:13", false);
    c.finish_replay(
        |_| OutFrame::control("subscribed"),
        Vec::new(),
        Some(EventId::new(6, 0)),
        None,
    );
    assert_eq!(texts(&c), ["e1", "e4", "e6", "subscribed", "t:9 e7", "e8"]);

    // A catch-up of t:13 after `unsubscribe t:13` skips exactly what the pattern brought.
    c.begin_replay();
    let history = vec![ev(4, "e4"), ev(6, "e6"), ev(8, "e8")];
    let n = c.finish_replay(
        |n| OutFrame::control(format!("subscribed t:13 replayed={n}")),
        history,
        Some(EventId::new(8, 0)),
        Some(CatchUp {
            channel: "t:13",
            from: EventId::new(4, 0),
        }),
    );
    assert_eq!(n, 2);
    assert_eq!(texts(&c), ["subscribed t:13 replayed=2", "e4", "e6"]);

    // The welcome stays first whatever its replay held.
    let c = Connection::new(Arc::from("c"), Arc::from("u"), 100, None);
    c.push(ev(3, "e3"), "t", false);
    c.finish_replay(
        |_| OutFrame::control("welcome"),
        Vec::new(),
        Some(EventId::new(3, 0)),
        None,
    );
    assert_eq!(texts(&c), ["welcome", "e3"]);
}

#[test]
fn frames_held_during_a_replay_are_bounded_by_eight_times_the_bytes() {
    let c = live(1000, 1000);
    c.begin_replay();
    for id in 1..=8 {
        assert_eq!(c.push(frame(id, 1000), "t", false), Push::Queued, "held {id}");
    }
    assert_eq!(c.push(frame(9, 1000), "t", false), Push::Overflow);
    assert_eq!(c.close_requested(), Some(CloseCode::SlowConsumer));
}
