//! Unit tests of a socket's outbox: its bounds, the replay merge and the order of a subscribe's frames.

use bytes::Bytes;

use super::*;
use crate::ws::frame::OP_TEXT;

fn frame(id: u64, bytes: usize) -> OutFrame {
    OutFrame::event("x".repeat(bytes), EventId::new(id, 0), 0)
}

fn live(cap: usize, cap_bytes: usize) -> Connection {
    let c = Connection::new(Arc::from("c"), Arc::from("u"), cap, &[]).with_byte_capacity(cap_bytes);
    c.finish_replay(|_| OutFrame::control("w"), Vec::new(), &[], None);
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
    OutFrame::event(text, EventId::new(id, 0), 0)
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
        &[EventId::new(6, 0)],
        None,
    );
    assert_eq!(texts(&c), ["e1", "e4", "e6", "subscribed", "t:9 e7", "e8"]);

    // A catch-up of t:13 after `unsubscribe t:13` skips exactly what the pattern brought.
    c.begin_replay();
    let history = vec![ev(4, "e4"), ev(6, "e6"), ev(8, "e8")];
    let n = c.finish_replay(
        |n| OutFrame::control(format!("subscribed t:13 replayed={n}")),
        history,
        &[EventId::new(8, 0)],
        Some(CatchUp {
            channel: "t:13",
            from: EventId::new(4, 0),
        }),
    );
    assert_eq!(n, 2);
    assert_eq!(texts(&c), ["subscribed t:13 replayed=2", "e4", "e6"]);

    // The welcome stays first whatever its replay held.
    let c = Connection::new(Arc::from("c"), Arc::from("u"), 100, &[]);
    c.push(ev(3, "e3"), "t", false);
    c.finish_replay(
        |_| OutFrame::control("welcome"),
        Vec::new(),
        &[EventId::new(3, 0)],
        None,
    );
    assert_eq!(texts(&c), ["welcome", "e3"]);
}

#[test]
fn a_gap_found_while_the_welcome_is_replayed_follows_the_welcome() {
    // A shard repair names the resumed socket's channel before its welcome is queued: the gap
    // is in the live stream, so it stays before the live event that followed it, after the
    // replayed (older) ones.
    let c = Connection::new(Arc::from("c"), Arc::from("u"), 100, &[EventId::new(2, 0)]);
    assert_eq!(c.push_gap(OutFrame::control("gap")), Push::Queued);
    c.push(ev(5, "e5"), "t", false);
    c.finish_replay(
        |_| OutFrame::control("welcome"),
        vec![ev(3, "e3"), ev(4, "e4")],
        &[EventId::new(4, 0)],
        None,
    );
    assert_eq!(texts(&c), ["welcome", "e3", "e4", "gap", "e5"]);

    // After the welcome, a subscribe's replay holds events only: its answers go straight out.
    c.begin_replay();
    c.push(ev(6, "e6"), "t", false);
    assert_eq!(c.push_control(OutFrame::control("pong")), Push::Queued);
    c.finish_replay(|_| OutFrame::control("subscribed"), Vec::new(), &[], None);
    assert_eq!(texts(&c), ["pong", "subscribed", "e6"]);
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

/// Server frames read off a client's socket: (RSV1, opcode, payload).
fn parse_frames(mut b: &[u8]) -> Vec<(bool, u8, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 10 || (b.len() >= 2 && b[1] < 126) {
        let (rsv1, opcode) = (b[0] & 0x40 != 0, b[0] & 0x0F);
        let (len, at) = match b[1] & 0x7F {
            126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        if b.len() < at + len {
            break;
        }
        out.push((rsv1, opcode, b[at..at + len].to_vec()));
        b = &b[at + len..];
    }
    out
}

/// A JSON-ish text of `n` bytes that compresses well, different for each `seed`.
fn json_text(n: usize, seed: u64) -> String {
    let mut s = String::new();
    let mut i = seed;
    while s.len() < n {
        s.push_str(&format!(
            r#"{{"id":{i},"status":"shipped","sku":"SKU-{}"}},"#,
            i * 7919 % 10007
        ));
        i += 1;
    }
    s.truncate(n);
    s
}

#[tokio::test]
async fn compressed_frames_are_shared_per_window_and_survive_partial_writes() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(listener.local_addr().unwrap()).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    // A small send buffer, so frames go out in pieces.
    socket2::SockRef::from(&server).set_send_buffer_size(4096).unwrap();
    let c = live(100_000, 0).with_deflate(12, 512);
    c.attach(Arc::new(server));
    let other = live(100, 0).with_deflate(12, 512);
    let plain = live(100, 0);

    // As a fan-out gives it: one cache, cloned to every recipient.
    let big = OutFrame::control(json_text(40_000, 1)).with_deflate_cache();
    let mut partial = 0;
    let mut sent = vec![big.text().to_owned()];
    assert_eq!(
        other.offer(Cow::Borrowed(&big), "ch", false, false, false),
        Push::Queued
    );
    assert_eq!(
        plain.offer(Cow::Borrowed(&big), "ch", false, false, false),
        Push::Queued
    );
    c.offer(Cow::Borrowed(&big), "ch", false, true, false);
    // Enough frames (big, small, pongs) that the kernel takes some of them in pieces.
    for i in 0..400u64 {
        let f = match i % 4 {
            0 => OutFrame::control(json_text(3000 + i as usize, i)),
            1 => OutFrame::control(json_text(100, i)),
            2 => OutFrame::raw(crate::ws::frame::OP_PONG, Bytes::from(vec![b'p'; 600])),
            _ => OutFrame::control(json_text(20_000, i)),
        };
        if f.opcode == OP_TEXT {
            sent.push(f.text().to_owned());
        }
        c.offer(Cow::Owned(f), "ch", false, true, false);
        partial += usize::from(c.outbox.lock().sent > 0);
    }
    // The other socket with the same window uses the bytes this one computed.
    let shared = big
        .deflated
        .as_ref()
        .unwrap()
        .get(OP_TEXT, big.payload(), 12)
        .unwrap()
        .clone();
    let mut q = Vec::new();
    other.take_batch(&mut q);
    assert_eq!(
        q[0].wire(12).as_ptr(),
        shared.as_ptr(),
        "one compressed frame for both sockets"
    );
    assert!(shared.len() < big.payload().len() / 4);
    assert_eq!(shared[0], 0xC1, "FIN, RSV1 (compressed) and text");
    assert_eq!(
        &shared[4..],
        &crate::ws::deflate::compress(big.payload(), 12).unwrap()[..]
    );
    // A socket without deflate writes it plain: the shared whole frame, header included.
    let mut q = Vec::new();
    plain.take_batch(&mut q);
    assert_eq!(q[0].wire(0), crate::ws::frame::encode(OP_TEXT, big.payload()));
    assert_eq!(
        q[0].wire(0).as_ptr(),
        big.wire(0).as_ptr(),
        "one buffer for every clone"
    );

    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut written = Written::default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (state, _) = c.flush(&mut written);
        partial += usize::from(c.outbox.lock().sent > 0);
        if let Ok(Ok(n)) = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            tokio::io::AsyncReadExt::read(&mut client, &mut buf),
        )
        .await
        {
            got.extend_from_slice(&buf[..n]);
        }
        if state == Flush::Done && c.queued().0 == 0 && parse_frames(&got).len() == 401 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "frames did not all arrive");
    }
    assert!(partial > 0, "no frame was written in pieces");
    let frames = parse_frames(&got);
    let mut texts = Vec::new();
    for (rsv1, opcode, payload) in frames {
        if opcode == crate::ws::frame::OP_PONG {
            assert!(!rsv1, "a pong is never compressed");
            continue;
        }
        if rsv1 {
            texts.push(String::from_utf8(crate::ws::deflate::inflate(&payload, 1 << 20).unwrap().to_vec()).unwrap());
        } else {
            assert!(payload.len() < 512, "a {}-byte text frame went plain", payload.len());
            texts.push(String::from_utf8(payload).unwrap());
        }
    }
    assert_eq!(texts, sent);
}

#[test]
fn the_tick_finds_a_socket_once_a_backend_request_is_due_and_not_after_it_expired() {
    let c = live(10, 0);
    let at = |mono_ms| TickNow {
        mono_ms,
        epoch_s: 0,
        silence_ms: u64::MAX,
        leeway_s: 0,
    };
    let start = crate::time::mono_ms();
    assert!(!c.tick_due(at(start)));
    assert!(c.add_pending(serde_json::json!(1), 5_000, 4));
    assert!(c.add_pending(serde_json::json!(2), 1_000, 4));
    assert!(!c.tick_due(at(start)), "nothing due yet");
    assert!(c.expire_pending(start).is_empty());
    // Deadlines are at least `timeout` after `start` (and less than a second more).
    assert!(c.tick_due(at(start + 2_000)), "the earlier request is due");
    assert_eq!(c.expire_pending(start + 2_000), vec![serde_json::json!(2)]);
    assert!(!c.tick_due(at(start + 2_000)), "the later one is not due yet");
    assert!(c.tick_due(at(start + 10_000)));
    // An answered request leaves its deadline behind: the tick looks once, finds nothing.
    c.drop_pending(&serde_json::json!(1));
    assert!(c.tick_due(at(start + 10_000)));
    assert!(c.expire_pending(start + 10_000).is_empty());
    assert!(!c.tick_due(at(u64::MAX - 1)), "nothing waits any more");
}

#[test]
fn the_tick_finds_a_silent_socket_and_an_expired_token() {
    let c = live(10, 0);
    let now = crate::time::mono_ms();
    let at = |mono_ms, epoch_s| TickNow {
        mono_ms,
        epoch_s,
        silence_ms: 60_000,
        leeway_s: 30,
    };
    assert!(!c.tick_due(at(now, 1_000)));
    assert!(
        c.tick_due(at(now + 60_001, 1_000)),
        "silent for longer than the timeout"
    );
    c.set_token_exp(Some(1_000));
    assert!(!c.tick_due(at(now, 1_030)), "inside the leeway");
    assert!(c.tick_due(at(now, 1_031)));
    c.touch();
    assert!(!c.silent(at(crate::time::mono_ms(), 0)));
}

#[test]
fn a_gap_found_during_a_subscribes_replay_stays_between_the_live_events_around_it() {
    // A live hole seen after e6 and before e8 reached the hub, while a catch-up read e5 and e7.
    let c = Connection::new(Arc::from("c"), Arc::from("u"), 100, &[]);
    c.finish_replay(|_| OutFrame::control("welcome"), Vec::new(), &[], None);
    c.begin_replay();
    c.push(ev(6, "e6"), "a", false);
    assert_eq!(c.push_gap(OutFrame::control("gap")), Push::Queued);
    c.push(ev(8, "e8"), "a", false);
    // Answers are not ordered against events: they go straight out.
    assert_eq!(c.push_control(OutFrame::control("pong")), Push::Queued);
    let catch_up = CatchUp {
        channel: "b",
        from: EventId::new(5, 0),
    };
    c.finish_replay(
        |_| OutFrame::control("subscribed"),
        vec![ev(5, "e5"), ev(7, "e7")],
        &[EventId::new(8, 0)],
        Some(catch_up),
    );
    assert_eq!(
        texts(&c),
        ["welcome", "pong", "subscribed", "e5", "e6", "e7", "gap", "e8"]
    );
}
