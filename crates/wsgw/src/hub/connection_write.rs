//! hub/connection_write.rs: how a connection's outbox reaches its socket. `push` writes an event
//! straight from the fan-out when nothing is queued (see connection.rs); `Connection::flush`,
//! called by the session's task, writes the queue out, up to 32 frames per write (one `send` of
//! them copied into one buffer, or a `writev` of large ones). The frames
//! are taken under the outbox lock and written without it, so a fan-out never waits on one
//! socket's syscall; meanwhile the outbox is marked `writing` and nothing else writes to the
//! socket (a second flush answers `Busy`), so frames never interleave. A burst's end
//! (burst.rs) also calls `flush`, for the sockets the burst queued frames for.

use std::io::{self, IoSlice};
use std::sync::Arc;

use tokio::net::TcpStream;
use wsgw_protocol::CloseCode;

use super::{Connection, OutFrame};

/// What the socket's task wrote in one [`Connection::flush`]: for the metrics.
#[derive(Debug, Default)]
pub struct Written {
    /// Frames written whole.
    pub frames: u64,
    /// Their bytes on the wire (headers and payloads, compressed where the socket negotiated
    /// compression).
    pub bytes: u64,
    /// Publish times (µs) of the events among them.
    pub stamps: Vec<u64>,
}

/// Where a [`Connection::flush`] left the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Everything queued is written.
    Done,
    /// The kernel took no more: wait until the socket is writable.
    Blocked,
    /// The socket failed.
    Failed,
    /// Another flush is writing to the socket right now; it writes the rest of the queue, or
    /// wakes the socket's task if it cannot.
    Busy,
}

/// How many frames one write takes at most.
pub(super) const MAX_BATCH: usize = 32;

/// Up to this many bytes, the frames of one write are copied into one buffer and sent with one
/// `send`, which costs the kernel less than a `writev` of them (one buffer to import, no iovec
/// array; docs/loadtest.md, "One send per burst"). Larger frames go out with `writev`: copying
/// them would gain nothing.
pub(super) const COALESCE_BYTES: usize = 64 * 1024;

thread_local! {
    /// The frames one flush is writing: shared by every socket of the thread.
    static BATCH: std::cell::RefCell<Vec<OutFrame>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The bytes of one coalesced write: shared by every socket of the thread, at most
    /// `COALESCE_BYTES` (and one frame) long.
    static WIRE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One write of `frames` (each the shared whole frame, compressed for a `window`-bit deflate
/// window when the socket negotiated one), the first `skip` bytes already written.
fn write_frames(tcp: &TcpStream, frames: &[OutFrame], skip: usize, window: u8) -> io::Result<usize> {
    let mut bufs = [IoSlice::new(&[]); MAX_BATCH];
    let mut k = 0;
    let mut skip = skip;
    for f in frames {
        let wire = f.wire(window);
        if skip >= wire.len() {
            skip -= wire.len();
        } else {
            bufs[k] = IoSlice::new(&wire[skip..]);
            k += 1;
            skip = 0;
        }
    }
    write_parts(tcp, &bufs[..k])
}

/// Writes `bufs` without blocking: one piece with `send`; several small ones copied into one
/// buffer, as many as fit in `COALESCE_BYTES`, with one `send` (the caller's loop writes the
/// rest); large ones with `writev`. Returns the bytes the kernel took, from the start of `bufs`.
pub(super) fn write_parts(tcp: &TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    match bufs {
        [one] => tcp.try_write(one),
        [first, second, ..] if first.len() + second.len() <= COALESCE_BYTES => WIRE.with(|w| {
            let mut w = w.borrow_mut();
            w.clear();
            for part in bufs {
                if w.len() + part.len() > COALESCE_BYTES {
                    break;
                }
                w.extend_from_slice(part);
            }
            tcp.try_write(&w)
        }),
        _ => tcp.try_write_vectored(bufs),
    }
}

impl Connection {
    /// Lets `push` write events straight to `tcp` (the session serves from now on).
    pub fn attach(&self, tcp: Arc<TcpStream>) {
        self.outbox.lock().wire = Some(tcp);
    }

    /// Ends direct writes (the session is ending) and lets the socket go.
    pub fn detach(&self) {
        self.outbox.lock().wire = None;
    }

    /// Writes what is queued, several frames per write, without blocking. Returns where the
    /// queue was left and the close request, if any (meaningful once `Done`). The frames are
    /// taken under the lock (clones sharing the payloads, into `batch`) and written without
    /// it, so a fan-out never waits on this socket's write; meanwhile the outbox is marked
    /// `writing`, so nothing else writes to the socket. The batch is the thread's (the flush
    /// never awaits), so an idle socket keeps none.
    pub fn flush(&self, written: &mut Written) -> (Flush, Option<CloseCode>) {
        BATCH.with(|b| self.flush_with(&mut b.borrow_mut(), written))
    }

    fn flush_with(&self, batch: &mut Vec<OutFrame>, written: &mut Written) -> (Flush, Option<CloseCode>) {
        loop {
            let (tcp, skip, window) = {
                let mut ob = self.outbox.lock();
                let Some(tcp) = ob.wire.clone() else {
                    return (Flush::Failed, ob.close);
                };
                if ob.writing {
                    return (Flush::Busy, ob.close);
                }
                if ob.queue.is_empty() {
                    ob.replay_room = 0;
                    ob.replay_room_bytes = 0;
                    // The queue keeps its memory for the next frames: the node-wide tick gives
                    // it back once the socket is idle (`release_idle_queue`).
                    if ob.queue.capacity() > 0 {
                        self.note_idle_queue();
                    }
                    return (Flush::Done, ob.close);
                }
                batch.clear();
                let deflate = ob.deflate;
                if deflate.window != 0 {
                    // Fixed before a frame's first byte goes out: `sent` counts these bytes.
                    ob.queue.iter_mut().take(MAX_BATCH).for_each(|f| deflate.prepare(f));
                }
                batch.extend(ob.queue.iter().take(MAX_BATCH).cloned());
                ob.writing = true;
                (tcp, ob.sent, deflate.window)
            };
            let r = write_frames(&tcp, batch, skip, window);
            let mut ob = self.outbox.lock();
            ob.writing = false;
            let (wrote, failed) = match r {
                Ok(n) => (n, None),
                Err(e) => (0, Some(e)),
            };
            let mut n = skip + wrote;
            if std::mem::take(&mut ob.dropped) {
                // The queue was dropped meanwhile (a slow consumer): keep only the rest of a
                // frame left unfinished, so the close frame does not land inside it. That
                // includes a write the kernel took nothing of (`WouldBlock`) after an earlier
                // one had sent the first frame in part.
                ob.queue.clear();
                ob.bytes = 0;
                ob.sent = 0;
                for f in batch.drain(..) {
                    let len = f.wire_len(window);
                    if n < len {
                        // A frame not begun goes with the rest of the queue.
                        if n > 0 {
                            ob.sent = n;
                            ob.bytes = f.payload().len();
                            ob.queue.push_back(f);
                        }
                        break;
                    }
                    n -= len;
                }
                if failed.is_none() {
                    continue;
                }
            }
            if let Some(e) = failed {
                batch.clear();
                let state = if e.kind() == io::ErrorKind::WouldBlock {
                    Flush::Blocked
                } else {
                    Flush::Failed
                };
                return (state, ob.close);
            }
            ob.sent = 0;
            for f in batch.drain(..) {
                let len = f.wire_len(window);
                if n < len {
                    ob.sent = n;
                    break;
                }
                n -= len;
                ob.queue.pop_front();
                ob.bytes = ob.bytes.saturating_sub(f.payload().len());
                written.frames += 1;
                written.bytes += len as u64;
                if f.published_us > 0 {
                    written.stamps.push(f.published_us);
                }
            }
        }
    }
}
