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
//! What is held is bounded (held.rs, `Holding`). `sub.rs` chooses between this reader and the
//! crate's, and holds messages while the node does other work.

use std::borrow::Cow;
use std::ops::Range;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::ready;
use tokio::net::TcpStream;

use super::held::Holding;
use super::*;

/// A bulk string longer than this ends the connection (a frame is far smaller: `WSGW_MAX_*`).
const MAX_BULK: usize = 64 << 20;
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
    pub(super) fn bytes(&self) -> usize {
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
    pub(super) holding: Holding,
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
            holding: Holding::default(),
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
                Got::Message(m) => self.holding.hold(m),
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

    /// The next message: one held, one already read, or one read now.
    pub(super) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<PubMsg, BrokerError>> {
        if let Some(held) = self.holding.next() {
            return Poll::Ready(held);
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
    pub(super) fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<Result<Got, BrokerError>> {
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
pub(super) enum Got {
    Message(PubMsg),
    /// A confirmation, `+OK`, or another reply this connection does not act on.
    Confirm,
    Error(String),
}

#[cfg(test)]
#[path = "sub_conn_tests.rs"]
mod tests;
