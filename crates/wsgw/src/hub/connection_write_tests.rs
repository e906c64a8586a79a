//! Tests of a socket's writes over real loopback TCP: frames written straight from `push`,
//! partly written, flushed from the queue by another task, and flushed by a burst's end
//! while the socket's task flushes too arrive whole and in order; a slow consumer's dropped
//! queue never leaves half a frame before the close frame.

use std::io::{self, IoSlice};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::write::{COALESCE_BYTES, MAX_BATCH, write_parts};
use super::*;
use crate::ws::frame::OP_TEXT;

/// A connected pair; the server side has a small send buffer, so writes end part-way.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    socket2::SockRef::from(&server).set_send_buffer_size(8192).unwrap();
    (server, client)
}

/// What the session task does: flush, wait until writable or woken, until `done` and empty.
async fn writer(conn: Arc<Connection>, tcp: Arc<TcpStream>, done: Arc<std::sync::atomic::AtomicBool>) {
    loop {
        let (state, close) = conn.flush(&mut Written::default());
        match state {
            Flush::Blocked => {
                tcp.writable().await.unwrap();
                continue;
            }
            Flush::Failed => panic!("write failed"),
            Flush::Done if close.is_some() || done.load(Ordering::Acquire) => return,
            Flush::Done | Flush::Busy => {
                let _ = tokio::time::timeout(Duration::from_millis(20), conn.wait()).await;
            }
        }
    }
}

/// Reads server frames until EOF or `want` payloads: returns their payloads.
async fn read_frames(mut client: TcpStream, want: usize) -> Vec<Vec<u8>> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 1500];
    while out.len() < want {
        // Slow at first, so the server's writes stop part-way.
        if out.len() < 50 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut chunk))
            .await
            .expect("frames stopped coming")
            .unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        loop {
            if buf.len() < 2 {
                break;
            }
            assert_eq!(buf[1] & 0x80, 0, "server frames are not masked");
            let (len, head) = match buf[1] & 0x7F {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                126 => break,
                127 => panic!("no frame here is that long"),
                n => (n as usize, 2),
            };
            if buf.len() < head + len {
                break;
            }
            let opcode = buf[0] & 0x0F;
            out.push([vec![opcode], buf[head..head + len].to_vec()].concat());
            buf.drain(..head + len);
        }
    }
    out
}

fn numbered(i: u64) -> OutFrame {
    // Sizes vary so frame boundaries fall everywhere in a write.
    let pad = "x".repeat((i as usize * 37) % 700);
    OutFrame::event(format!("{i}:{pad}"), EventId::new(i, 0), 0)
}

/// A connection over loopback with its socket's task (`writer`) and a reader of what arrives.
struct Rig {
    conn: Arc<Connection>,
    done: Arc<std::sync::atomic::AtomicBool>,
    writer: tokio::task::JoinHandle<()>,
    reader: tokio::task::JoinHandle<Vec<Vec<u8>>>,
}

impl Rig {
    /// Welcomed and attached; the reader waits for the welcome and `total` frames.
    async fn start(total: u64) -> Rig {
        let (server, client) = pair().await;
        let tcp = Arc::new(server);
        let conn = Connection::new(Arc::from("c"), Arc::from("u"), 100_000, &[]);
        conn.finish_replay(|_| OutFrame::control("w"), Vec::new(), &[], None);
        conn.attach(tcp.clone());
        let conn = Arc::new(conn);
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        Rig {
            writer: tokio::spawn(writer(conn.clone(), tcp, done.clone())),
            reader: tokio::spawn(read_frames(client, total as usize + 1)),
            conn,
            done,
        }
    }

    /// Lets the task finish, then checks the welcome and `numbered(1..=total)`, whole and in
    /// order.
    async fn all_arrived_in_order(self, total: u64) {
        self.done.store(true, Ordering::Release);
        self.conn.wake_writer();
        self.writer.await.unwrap();
        let frames = self.reader.await.unwrap();
        assert_eq!(frames.len() as u64, total + 1);
        assert_eq!(frames[0], [&[OP_TEXT][..], b"w"].concat(), "the welcome first");
        for (i, f) in frames[1..].iter().enumerate() {
            let want = numbered(i as u64 + 1);
            assert_eq!(&f[1..], want.payload(), "frame {}", i + 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_partial_and_queued_writes_arrive_whole_and_in_order() {
    let total = 3000u64;
    let rig = Rig::start(total).await;
    let conn = rig.conn.clone();
    let mut sent_directly = 0;
    for i in 1..=total {
        match conn.push(numbered(i), "t", false) {
            Push::Sent(_) => sent_directly += 1,
            Push::Queued => {}
            other => panic!("push {i}: {other:?}"),
        }
        if i % 100 == 0 {
            tokio::task::yield_now().await;
        }
        if i > total / 2 && i % 10 == 0 {
            // The second half more slowly: the queue drains, and pushes find it empty.
            drained(&conn).await;
        }
    }
    rig.all_arrived_in_order(total).await;
    assert!(sent_directly > 0, "some frames went straight to the socket");
    assert!(sent_directly < total, "some frames waited in the queue");
}

/// A burst's end (burst.rs): frames queued without waking the socket's task (`Push::Waiting`)
/// and written by the fan-out side's flushes, while the socket's own task flushes too whenever
/// it is woken. The two never write at once (`Busy`), so the frames arrive whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_flush_and_the_sockets_task_never_interleave_frames() {
    let total = 3000u64;
    let rig = Rig::start(total).await;
    let conn = rig.conn.clone();
    let mut waiting = 0;
    for i in 1..=total {
        match conn.offer(Cow::Owned(numbered(i)), "t", false, false, true) {
            Push::Waiting => {
                waiting += 1;
                match conn.flush(&mut Written::default()).0 {
                    Flush::Done | Flush::Busy => {}
                    Flush::Blocked | Flush::Failed => conn.wake_writer(),
                }
            }
            Push::Queued => {}
            other => panic!("offer {i}: {other:?}"),
        }
        if i % 7 == 0 {
            // The socket's task flushes at the same time as this side.
            conn.wake_writer();
        }
        if i % 100 == 0 {
            tokio::task::yield_now().await;
        }
        if i > total / 2 && i % 10 == 0 {
            // The second half more slowly: the queue drains, and offers find it empty.
            drained(&conn).await;
        }
    }
    rig.all_arrived_in_order(total).await;
    assert!(waiting > 0, "frames were queued for this side to flush");
}

/// Waits (with a deadline) until nothing is queued.
async fn drained(conn: &Connection) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while conn.queued().0 > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the queue never drained");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumers_close_frame_never_lands_inside_a_frame() {
    for round in 0..8 {
        let (server, client) = pair().await;
        let tcp = Arc::new(server);
        let conn = attached_with(tcp.clone(), 60);
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let w = tokio::spawn(writer(conn.clone(), tcp.clone(), done));
        drained(&conn).await;
        // The client reads nothing yet: the queue overflows while frames are being written.
        let mut overflowed = false;
        for i in 1..=10_000 {
            if conn.push(numbered(i), "t", false) == Push::Overflow {
                overflowed = true;
                break;
            }
            if i % 7 == 0 {
                tokio::task::yield_now().await;
            }
        }
        assert!(overflowed, "round {round}: the queue overflowed");
        tokio::time::timeout(Duration::from_secs(10), w).await.unwrap().unwrap();
        // What the session does next: the rest of a partly written frame, then the close frame.
        let reader = tokio::spawn(read_frames(client, usize::MAX));
        loop {
            match conn.flush(&mut Written::default()).0 {
                Flush::Done => break,
                Flush::Blocked => tcp.writable().await.unwrap(),
                Flush::Failed => panic!("write failed"),
                Flush::Busy => tokio::task::yield_now().await,
            }
        }
        conn.detach();
        let close = crate::ws::frame::encode(crate::ws::frame::OP_CLOSE, &4008u16.to_be_bytes());
        let mut rest = &close[..];
        while !rest.is_empty() {
            tcp.writable().await.unwrap();
            if let Ok(n) = tcp.try_write(rest) {
                rest = &rest[n..];
            }
        }
        socket2::SockRef::from(&*tcp)
            .shutdown(std::net::Shutdown::Write)
            .unwrap();
        let frames = reader.await.unwrap();
        let (last, events) = frames.split_last().expect("frames");
        assert_eq!(
            last[0],
            crate::ws::frame::OP_CLOSE,
            "round {round}: the close frame comes last, whole"
        );
        assert_eq!(events[0], [&[OP_TEXT][..], b"w"].concat(), "the welcome first");
        for (next, f) in (1u64..).zip(&events[1..]) {
            let text = std::str::from_utf8(&f[1..]).expect("whole text frames");
            let id: u64 = text.split(':').next().unwrap().parse().unwrap();
            assert_eq!(id, next, "round {round}: in order, none repeated");
        }
    }
}

fn attached_with(tcp: Arc<TcpStream>, cap: usize) -> Arc<Connection> {
    let c = Connection::new(Arc::from("c"), Arc::from("u"), cap, &[]);
    c.finish_replay(|_| OutFrame::control("w"), Vec::new(), &[], None);
    c.attach(tcp);
    Arc::new(c)
}

#[tokio::test]
async fn a_busy_socket_keeps_its_queue_between_flushes_and_the_tick_gives_an_idle_ones_back() {
    let (server, client) = pair().await;
    let tcp = Arc::new(server);
    let conn = Connection::new(Arc::from("c"), Arc::from("u"), 100, &[]);
    conn.finish_replay(|_| OutFrame::control("w"), Vec::new(), &[], None);
    conn.attach(tcp);
    let capacity = || conn.outbox.lock().queue.capacity();
    let now = || TickNow {
        mono_ms: crate::time::mono_ms(),
        epoch_s: 0,
        silence_ms: 60_000,
        leeway_s: 0,
    };
    assert!(!conn.tick_due(now()), "a fresh socket needs nothing from the tick");
    for i in 1..=3 {
        assert_eq!(
            conn.offer(Cow::Owned(numbered(i)), "t", false, false, false),
            Push::Queued
        );
    }
    assert_eq!(conn.flush(&mut Written::default()).0, Flush::Done);
    assert!(capacity() > 0, "the queue's memory stays for the next frames");
    assert!(
        conn.tick_due(now()),
        "an emptied queue with memory is the tick's to give back"
    );
    assert_eq!(
        conn.offer(Cow::Owned(numbered(4)), "t", false, false, false),
        Push::Queued
    );
    conn.release_idle_queue();
    assert!(capacity() > 0, "a queue with frames in it is kept");
    assert_eq!(conn.flush(&mut Written::default()).0, Flush::Done);
    assert!(conn.tick_due(now()), "still held after a release that found frames");
    conn.release_idle_queue();
    assert_eq!(capacity(), 0, "an idle socket keeps no queue memory");
    assert!(!conn.tick_due(now()), "nothing left for the tick");
    let frames = read_frames(client, 5).await;
    assert_eq!(frames.len(), 5, "the welcome and the four frames");
}

/// Small pieces go out copied into one `send` (as many as fit in `COALESCE_BYTES`), large ones
/// with `writev`; either way, across writes the kernel takes only part of, the bytes arrive as
/// given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_and_vectored_writes_send_every_piece_in_order() {
    let (server, mut client) = pair().await;
    let pieces: Vec<Vec<u8>> = (0..120u32)
        .map(|i| {
            let len = match i % 9 {
                0 => COALESCE_BYTES + 1000,
                1 => 3,
                2 => COALESCE_BYTES / 3,
                _ => 150 + i as usize,
            };
            (0..len).map(|j| (i as usize * 7 + j) as u8).collect()
        })
        .collect();
    let expected = pieces.concat();
    let total = expected.len();
    let reader = tokio::spawn(async move {
        let mut got = Vec::with_capacity(total);
        let mut chunk = vec![0u8; 16384];
        while got.len() < total {
            let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut chunk))
                .await
                .expect("bytes stopped coming")
                .unwrap();
            assert!(n > 0, "closed early");
            got.extend_from_slice(&chunk[..n]);
        }
        got
    });
    let mut at = 0;
    while at < total {
        // What is left, as the flush loop hands it over: up to MAX_BATCH pieces, the first
        // one's written part skipped.
        let mut bufs = Vec::new();
        let mut skip = at;
        for p in &pieces {
            if skip >= p.len() {
                skip -= p.len();
            } else if bufs.len() < MAX_BATCH {
                bufs.push(IoSlice::new(&p[skip..]));
                skip = 0;
            }
        }
        match write_parts(&server, &bufs) {
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => server.writable().await.unwrap(),
            Err(e) => panic!("write failed: {e}"),
        }
    }
    let got = reader.await.unwrap();
    assert_eq!(got.len(), total);
    assert!(got == expected, "the bytes arrived out of order");
}

/// The tick's ping goes straight to an idle socket: no queue taken (so nothing for the next
/// tick to give back), the shared frame not copied. Behind a queued frame it waits its turn.
#[tokio::test]
async fn a_control_frame_sent_to_an_idle_socket_is_written_at_once_and_queues_behind_others() {
    let (server, client) = pair().await;
    let conn = Connection::new(Arc::from("c"), Arc::from("u"), 100, &[]);
    conn.finish_replay(|_| OutFrame::control("w"), Vec::new(), &[], None);
    conn.attach(Arc::new(server));
    assert_eq!(conn.flush(&mut Written::default()).0, Flush::Done, "the welcome");
    conn.release_idle_queue();
    let ping = OutFrame::control(r#"{"type":"ping"}"#);
    assert!(matches!(conn.send_control(&ping), Push::Sent(_)));
    assert_eq!(conn.outbox.lock().queue.capacity(), 0, "no queue taken for it");
    assert_eq!(
        conn.offer(Cow::Owned(numbered(1)), "t", false, false, false),
        Push::Queued
    );
    assert_eq!(conn.send_control(&ping), Push::Queued, "behind the queued event");
    assert_eq!(conn.flush(&mut Written::default()).0, Flush::Done);
    let frames = read_frames(client, 4).await;
    let text = |t: &[u8]| [&[OP_TEXT][..], t].concat();
    assert_eq!(frames.len(), 4);
    assert_eq!(frames[0], text(b"w"));
    assert_eq!(frames[1], text(br#"{"type":"ping"}"#));
    assert_eq!(frames[2], text(numbered(1).payload()));
    assert_eq!(frames[3], text(br#"{"type":"ping"}"#), "in order after the event");
}
