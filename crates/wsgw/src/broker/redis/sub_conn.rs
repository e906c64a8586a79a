//! broker/redis/sub_conn.rs: the pub/sub connection, read by the node's pub/sub task itself.
//!
//! Over plain TCP the node reads Redis's RESP2 pub/sub replies straight from the socket into a
//! buffer of its own and hands each message's bytes to the hub, in the task that fans them out.
//! The redis crate's `PubSub` reads in a task of its own, builds a `Value` and a `Msg` per
//! message and passes it over a channel, which wakes the fan-out task a second time
//! (docs/loadtest.md, section 13). `rediss://` and Unix sockets keep the crate's reader
//! (`Sub::Crate`): its TLS set-up is not repeated here.
//!
//! Commands go one at a time: `command` writes one (UN)(P)SUBSCRIBE and reads until Redis has
//! confirmed each of its names, holding the messages that arrive meanwhile for the next reads,
//! in order.
//!
//! What is held is bounded (held.rs: `MAX_HELD` messages, `MAX_HELD_BYTES` bytes). Past
//! either bound the connection drops what it holds and ends, as if Redis had cut it: the
//! session reconnects and repairs from history everything above the watermark, which no
//! dropped message had passed (repair.rs). So a flood while the node is busy costs a repair,
//! never the node's memory and never an event.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::ops::Range;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::ready;
use tokio::net::TcpStream;

use super::held::{MAX_HELD, MAX_HELD_BYTES};
use super::*;

/// A bulk string longer than this ends the connection (a frame is far smaller: `WSGW_MAX_*`).
const MAX_BULK: usize = 64 << 20;
/// Replies `Sub::hold_while` reads before it lets its work run again.
const HOLD_BATCH: usize = 256;
/// Free room kept in the read buffer before each read.
const READ_ROOM: usize = 16 << 10;

/// One pub/sub message: its channel, its pattern when it came through a PSUBSCRIBE, and its
/// payload.
pub(super) enum PubMsg {
    /// Read here: ranges of the bytes read.
    Read {
        buf: Bytes,
        channel: Range<usize>,
        pattern: Option<Range<usize>>,
        payload: Range<usize>,
    },
    /// From the redis crate's reader (`Sub::Crate`).
    Crate(redis::Msg),
}

impl PubMsg {
    /// The channel's name; empty when it is not UTF-8 (never one of ours).
    pub(super) fn channel_name(&self) -> &str {
        match self {
            PubMsg::Read { buf, channel, .. } => std::str::from_utf8(&buf[channel.clone()]).unwrap_or(""),
            PubMsg::Crate(m) => m.get_channel_name(),
        }
    }

    pub(super) fn payload(&self) -> &[u8] {
        match self {
            PubMsg::Read { buf, payload, .. } => &buf[payload.clone()],
            PubMsg::Crate(m) => m.get_payload_bytes(),
        }
    }

    /// The bytes holding it keeps in memory: its reply's, read here; its parts', from the crate.
    fn bytes(&self) -> usize {
        match self {
            PubMsg::Read { buf, .. } => buf.len(),
            PubMsg::Crate(m) => m.get_channel_name().len() + m.get_payload_bytes().len(),
        }
    }

    /// Whether it came through a PSUBSCRIBE (a `pmessage`).
    pub(super) fn is_pmessage(&self) -> bool {
        match self {
            PubMsg::Read { pattern, .. } => pattern.is_some(),
            PubMsg::Crate(m) => m.from_pattern(),
        }
    }

    /// The pattern it matched, for a PSUBSCRIBE's message; `None` also when that is not UTF-8.
    pub(super) fn pattern(&self) -> Option<Cow<'_, str>> {
        match self {
            PubMsg::Read { buf, pattern, .. } => {
                let p = pattern.clone()?;
                std::str::from_utf8(&buf[p]).ok().map(Cow::Borrowed)
            }
            PubMsg::Crate(m) => m
                .from_pattern()
                .then(|| m.get_pattern::<String>().ok().map(Cow::Owned))?,
        }
    }
}

/// What one reply of the connection was.
#[derive(Debug, PartialEq)]
enum Reply {
    /// A `message` or `pmessage`: ranges of the reply's bytes.
    Message {
        channel: Range<usize>,
        pattern: Option<Range<usize>>,
        payload: Range<usize>,
    },
    /// A (un)(p)subscribe confirmation, one per name.
    Confirm,
    /// `+OK` and any other reply this connection does not act on.
    Other,
    /// `-ERR …`.
    Error(String),
}

/// Reads one line ending in CRLF from `at`: its content and where the next begins.
fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let end = rest.iter().position(|&b| b == b'\n')?;
    let content = rest[..end].strip_suffix(b"\r")?;
    Some((content, at + end + 1))
}

fn number(digits: &[u8]) -> Result<i64, BrokerError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| unavailable("redis pub/sub: bad RESP length"))
}

/// An array element: a bulk string's range (`None` for an integer or a nil), and where the
/// next element begins.
type Element = (Option<Range<usize>>, usize);

/// One element of an array reply: a bulk string's range, or `None` for an integer or a nil.
/// `Ok(None)` from the outer Option means more bytes are needed.
fn element(buf: &[u8], at: usize) -> Result<Option<Element>, BrokerError> {
    let Some((head, next)) = line(buf, at) else {
        return Ok(None);
    };
    match head.first() {
        Some(b'$') => {
            let n = number(&head[1..])?;
            if n < 0 {
                return Ok(Some((None, next)));
            }
            let n = n as usize;
            if n > MAX_BULK {
                return Err(unavailable("redis pub/sub: bulk string too long"));
            }
            if buf.len() < next + n + 2 {
                return Ok(None);
            }
            if &buf[next + n..next + n + 2] != b"\r\n" {
                return Err(unavailable("redis pub/sub: bad RESP bulk string"));
            }
            Ok(Some((Some(next..next + n), next + n + 2)))
        }
        Some(b':') => Ok(Some((None, next))),
        _ => Err(unavailable("redis pub/sub: unexpected RESP type")),
    }
}

/// Parses the first complete reply of `buf`: the reply and its length, or `None` when it is
/// not all there yet.
fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, BrokerError> {
    let Some((head, mut at)) = line(buf, 0) else {
        return Ok(None);
    };
    match head.first() {
        Some(b'*') => {}
        Some(b'+') => return Ok(Some((Reply::Other, at))),
        Some(b'-') => {
            let text = String::from_utf8_lossy(&head[1..]).into_owned();
            return Ok(Some((Reply::Error(text), at)));
        }
        _ => return Err(unavailable("redis pub/sub: unexpected RESP reply")),
    }
    let n = number(&head[1..])?;
    if !(1..=4).contains(&n) {
        return Err(unavailable("redis pub/sub: unexpected array length"));
    }
    let mut parts: [Option<Range<usize>>; 4] = Default::default();
    for part in parts.iter_mut().take(n as usize) {
        let Some((range, next)) = element(buf, at)? else {
            return Ok(None);
        };
        *part = range;
        at = next;
    }
    let kind = parts[0].clone().map(|r| &buf[r]);
    let reply = match (kind, n) {
        (Some(b"message"), 3) => Reply::Message {
            channel: parts[1].clone().unwrap_or_default(),
            pattern: None,
            payload: parts[2].clone().unwrap_or_default(),
        },
        (Some(b"pmessage"), 4) => Reply::Message {
            pattern: Some(parts[1].clone().unwrap_or_default()),
            channel: parts[2].clone().unwrap_or_default(),
            payload: parts[3].clone().unwrap_or_default(),
        },
        (Some(b"subscribe" | b"psubscribe" | b"unsubscribe" | b"punsubscribe"), 3) => Reply::Confirm,
        _ => Reply::Other,
    };
    Ok(Some((reply, at)))
}

/// Appends one command in RESP to `out`.
fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// A pub/sub connection over plain TCP, read by its owner.
pub(super) struct SubConn {
    stream: TcpStream,
    buf: BytesMut,
    /// Messages read while a command waited for its confirmations, or while the node did other
    /// work (`Sub::hold_while`).
    held: VecDeque<PubMsg>,
    /// The bytes of the held messages' replies.
    held_bytes: usize,
    /// At most this many messages, and bytes of them, are held (`MAX_HELD`, `MAX_HELD_BYTES`).
    hold_cap: (usize, usize),
    /// How the connection ended while messages were being held: told after them. Also set
    /// when the held messages went past `hold_cap`: then none is left to tell first.
    ended: Option<BrokerError>,
}

impl SubConn {
    /// Connects to `info`'s address when it is plain TCP (`None` otherwise) and authenticates.
    pub(super) async fn connect(info: &redis::ConnectionInfo) -> Option<Result<Self, BrokerError>> {
        let redis::ConnectionAddr::Tcp(host, port) = info.addr() else {
            return None;
        };
        Some(Self::open(host, *port, info.redis_settings()).await)
    }

    async fn open(host: &str, port: u16, settings: &redis::RedisConnectionInfo) -> Result<Self, BrokerError> {
        let stream = TcpStream::connect((host, port)).await.map_err(unavailable)?;
        stream.set_nodelay(true).map_err(unavailable)?;
        let mut conn = SubConn {
            stream,
            buf: BytesMut::with_capacity(READ_ROOM * 4),
            held: VecDeque::new(),
            held_bytes: 0,
            hold_cap: (MAX_HELD, MAX_HELD_BYTES),
            ended: None,
        };
        if let Some(password) = settings.password() {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = settings.username() {
                args.push(user.as_bytes());
            }
            args.push(password.as_bytes());
            conn.command(&args, 1).await?;
        }
        Ok(conn)
    }

    /// Sends `cmd` with `names` as one command, as the crate's reader does (the callers size
    /// it), and waits until each name is confirmed.
    pub(super) async fn names(&mut self, cmd: &str, names: &[String]) -> Result<(), BrokerError> {
        let mut args: Vec<&[u8]> = Vec::with_capacity(names.len() + 1);
        args.push(cmd.as_bytes());
        args.extend(names.iter().map(|n| n.as_bytes()));
        self.command(&args, names.len()).await
    }

    /// Writes one command, then reads until `replies` confirmations (or, for AUTH, one `+OK`)
    /// came; messages read meanwhile are held, in order.
    async fn command(&mut self, args: &[&[u8]], replies: usize) -> Result<(), BrokerError> {
        let mut out = Vec::new();
        encode(&mut out, args);
        self.write_all(&out).await?;
        let mut left = replies;
        while left > 0 {
            match std::future::poll_fn(|cx| self.poll_reply(cx)).await? {
                Got::Message(m) => self.hold(m),
                Got::Confirm => left -= 1,
                Got::Error(e) => return Err(unavailable(format!("redis pub/sub: {e}"))),
            }
        }
        Ok(())
    }

    async fn write_all(&mut self, mut out: &[u8]) -> Result<(), BrokerError> {
        while !out.is_empty() {
            self.stream.writable().await.map_err(unavailable)?;
            match self.stream.try_write(out) {
                Ok(0) => return Err(unavailable("redis pub/sub connection closed")),
                Ok(n) => out = &out[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok(())
    }

    /// Holds `m` for the next reads, within `hold_cap`. Past it, drops every held message and
    /// ends the connection (`ended`); after that, drops `m`.
    fn hold(&mut self, m: PubMsg) {
        if self.ended.is_some() {
            return;
        }
        self.held_bytes += m.bytes();
        self.held.push_back(m);
        let (count, bytes) = self.hold_cap;
        if self.held.len() > count || self.held_bytes > bytes {
            warn!(
                messages = self.held.len(),
                bytes = self.held_bytes,
                "redis pub/sub: more messages arrived while the node was busy than it holds; dropping them and reconnecting to repair from history"
            );
            self.held = VecDeque::new();
            self.held_bytes = 0;
            self.ended = Some(unavailable("redis pub/sub: held messages over their bound"));
        }
    }

    /// The next message: one held, one already read, or one read now.
    pub(super) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<PubMsg, BrokerError>> {
        if let Some(m) = self.held.pop_front() {
            self.held_bytes -= m.bytes();
            return Poll::Ready(Ok(m));
        }
        if let Some(e) = self.ended.take() {
            return Poll::Ready(Err(e));
        }
        loop {
            match ready!(self.poll_reply(cx))? {
                Got::Message(m) => return Poll::Ready(Ok(m)),
                // A confirmation outside `command` (none is expected): nothing waits for it.
                Got::Confirm => {}
                Got::Error(e) => return Poll::Ready(Err(unavailable(format!("redis pub/sub: {e}")))),
            }
        }
    }

    /// Reads what the socket holds into the buffer. A read that leaves room in the buffer took
    /// everything there was, so it also clears the socket's readiness (as nginx does): the next
    /// wait goes to epoll instead of to one more `recv` that would only say `EAGAIN`, which was
    /// a second `recv` per message. Data that came after the read has set the readiness again
    /// by then (tokio clears only the readiness it saw before the read).
    fn read(&mut self) -> std::io::Result<usize> {
        let room = self.buf.capacity() - self.buf.len();
        let (stream, buf) = (&self.stream, &mut self.buf);
        let mut got = 0;
        let r = stream.try_io(tokio::io::Interest::READABLE, || {
            got = stream.try_read_buf(buf)?;
            if got > 0 && got < room {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            Ok(got)
        });
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && got > 0 => Ok(got),
            r => r,
        }
    }

    /// The next reply, read from the buffer or else from the socket.
    fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<Result<Got, BrokerError>> {
        loop {
            if let Some((reply, len)) = parse(&self.buf)? {
                let got = match reply {
                    Reply::Message {
                        channel,
                        pattern,
                        payload,
                    } => Got::Message(PubMsg::Read {
                        buf: self.buf.split_to(len).freeze(),
                        channel,
                        pattern,
                        payload,
                    }),
                    Reply::Confirm | Reply::Other => {
                        self.buf.advance(len);
                        Got::Confirm
                    }
                    Reply::Error(e) => {
                        self.buf.advance(len);
                        Got::Error(e)
                    }
                };
                return Poll::Ready(Ok(got));
            }
            if self.buf.capacity() - self.buf.len() < READ_ROOM {
                self.buf.reserve(READ_ROOM);
            }
            ready!(self.stream.poll_read_ready(cx)).map_err(unavailable)?;
            match self.read() {
                Ok(0) => return Poll::Ready(Err(unavailable("redis pub/sub connection closed"))),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(unavailable(e))),
            }
        }
    }
}

/// A reply as `SubConn` hands it on.
enum Got {
    Message(PubMsg),
    /// A confirmation, `+OK`, or another reply this connection does not act on.
    Confirm,
    Error(String),
}

/// A change to what the pub/sub connection follows.
#[derive(Clone, Copy)]
pub(super) enum Change {
    Subscribe,
    Psubscribe,
    Unsubscribe,
    Punsubscribe,
}

impl Change {
    fn command(self) -> &'static str {
        match self {
            Change::Subscribe => "SUBSCRIBE",
            Change::Psubscribe => "PSUBSCRIBE",
            Change::Unsubscribe => "UNSUBSCRIBE",
            Change::Punsubscribe => "PUNSUBSCRIBE",
        }
    }
}

/// The node's pub/sub connection: read here over plain TCP, by the redis crate otherwise.
pub(super) enum Sub {
    Own(SubConn),
    Crate(redis::aio::PubSubSink, redis::aio::PubSubStream),
}

impl Sub {
    pub(super) async fn connect(client: &redis::Client) -> Result<Self, BrokerError> {
        if let Some(conn) = SubConn::connect(client.get_connection_info()).await {
            return Ok(Sub::Own(conn?));
        }
        let (sink, stream) = client.get_async_pubsub().await.map_err(unavailable)?.split();
        Ok(Sub::Crate(sink, stream))
    }

    /// Sends `change` for `names`, returning once Redis confirmed each name.
    pub(super) async fn change(&mut self, change: Change, names: &[String]) -> Result<(), BrokerError> {
        let sink = match self {
            Sub::Own(c) => return c.names(change.command(), names).await,
            Sub::Crate(sink, _) => sink,
        };
        match change {
            Change::Subscribe => sink.subscribe(names).await,
            Change::Psubscribe => sink.psubscribe(names).await,
            Change::Unsubscribe => sink.unsubscribe(names).await,
            Change::Punsubscribe => sink.punsubscribe(names).await,
        }
        .map_err(unavailable)
    }

    /// The next message; an error when the connection ended.
    pub(super) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<PubMsg, BrokerError>> {
        match self {
            Sub::Own(c) => c.poll_next(cx),
            Sub::Crate(_, stream) => match ready!(stream.poll_next_unpin(cx)) {
                Some(m) => Poll::Ready(Ok(PubMsg::Crate(m))),
                None => Poll::Ready(Err(unavailable("pub/sub connection closed"))),
            },
        }
    }

    /// Runs `work` while reading the connection's messages into memory, where the next
    /// `poll_next`s find them. The redis crate's reader does that in its own task; without it,
    /// messages would pile up in Redis's output buffer for this connection while the node repairs
    /// a gap or waits for a core, and past its `client-output-buffer-limit` Redis would drop the
    /// connection.
    pub(super) async fn hold_while<T>(&mut self, work: impl Future<Output = T>) -> T {
        let Sub::Own(c) = self else {
            return work.await;
        };
        let mut work = std::pin::pin!(work);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = work.as_mut().poll(cx) {
                return Poll::Ready(v);
            }
            // At most this many replies per wake-up, so `work` is polled again soon.
            for _ in 0..HOLD_BATCH {
                if c.ended.is_some() {
                    return Poll::Pending;
                }
                match c.poll_reply(cx) {
                    Poll::Ready(Ok(Got::Message(m))) => c.hold(m),
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => c.ended = Some(e),
                    Poll::Pending => return Poll::Pending,
                }
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await
    }

    /// A message already waiting, without waiting for one: `Some(Err)` when the connection ended.
    pub(super) fn try_next(&mut self) -> Option<Result<PubMsg, BrokerError>> {
        use futures_util::FutureExt;
        std::future::poll_fn(|cx| self.poll_next(cx)).now_or_never()
    }
}

#[cfg(test)]
#[path = "sub_conn_tests.rs"]
mod tests;
