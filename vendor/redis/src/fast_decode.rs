//! wsgw patch: a hand-written decoder for the replies a pub/sub connection lives on.
//!
//! `ValueCodec` runs every reply through the `combine` parser, which costs almost as much as
//! reading the reply from the socket: a profile of a gateway node taking 2,000 pub/sub messages
//! a second put 11% of its CPU in `decode_stream` (and 14% in `recv`). Almost every reply on
//! such a connection is one of a few plain shapes: a pub/sub message or confirmation (an array or RESP3 push of bulk strings
//! and one integer), a bulk string, an integer or a simple string. This module decodes those
//! shapes straight from the buffer and answers `Fallback` for anything else, so `combine` still
//! decides every other reply, every malformed one and every error.
//!
//! It is used only between replies, never in the middle of one `combine` has started; an
//! incomplete reply is left in the buffer (`Incomplete`) and decoded again, from its start,
//! once more bytes arrived. That costs a few header scans, not a copy: a bulk string's body is
//! skipped by its length.

use crate::parser::get_push_kind;
use crate::types::Value;

/// Arrays and pushes with more elements than this go to `combine`: rescanning a long,
/// incomplete array on every read would cost more than it saves.
const MAX_ELEMENTS: usize = 8;

#[derive(Debug, PartialEq)]
pub(crate) enum Fast {
    /// A complete reply, and how many bytes it took.
    Done(Value, usize),
    /// A reply of a handled shape whose end has not arrived yet: nothing consumed.
    Incomplete,
    /// Not a shape handled here (or not well formed): let `combine` decode it.
    Fallback,
}

/// A line of the reply.
enum Line<'a> {
    /// Its content, and the offset after its `\r\n`.
    Done(&'a [u8], usize),
    /// Not complete yet.
    Incomplete,
    /// Ended by a lone `\n`, which is no line end in RESP: `combine` decides what that is.
    Odd,
}

/// The `\r\n`-terminated line at `at`.
fn line(buf: &[u8], at: usize) -> Line<'_> {
    let Some(rest) = buf.get(at..) else {
        return Line::Incomplete;
    };
    match rest.iter().position(|b| *b == b'\n') {
        None => Line::Incomplete,
        Some(nl) if nl > 0 && rest[nl - 1] == b'\r' => Line::Done(&rest[..nl - 1], at + nl + 1),
        Some(_) => Line::Odd,
    }
}

/// A strict decimal integer: an optional `-` and 1 to 18 digits.
fn int(digits: &[u8]) -> Option<i64> {
    let (neg, d) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if d.is_empty() || d.len() > 18 || !d.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = d.iter().fold(0i64, |n, b| n * 10 + i64::from(b - b'0'));
    Some(if neg { -n } else { n })
}

/// What `item` found at one offset.
enum Item {
    Value(Value, usize),
    Incomplete,
    Fallback,
}

/// One bulk string, integer or simple string at `at`.
fn item(buf: &[u8], at: usize) -> Item {
    let Some(&kind) = buf.get(at) else {
        return Item::Incomplete;
    };
    let (text, next) = match line(buf, at + 1) {
        Line::Done(text, next) => (text, next),
        Line::Incomplete => return Item::Incomplete,
        Line::Odd => return Item::Fallback,
    };
    match kind {
        b'$' => {
            let Some(len) = int(text).and_then(|n| usize::try_from(n).ok()) else {
                return Item::Fallback;
            };
            let end = next + len;
            match buf.get(end..end + 2) {
                None => Item::Incomplete,
                Some(b"\r\n") => Item::Value(Value::BulkString(buf[next..end].to_vec()), end + 2),
                Some(_) => Item::Fallback,
            }
        }
        b':' => match int(text) {
            Some(n) => Item::Value(Value::Int(n), next),
            None => Item::Fallback,
        },
        b'+' => match std::str::from_utf8(text) {
            Ok("OK") => Item::Value(Value::Okay, next),
            Ok(s) => Item::Value(Value::SimpleString(s.to_owned()), next),
            Err(_) => Item::Fallback,
        },
        _ => Item::Fallback,
    }
}

/// Decodes the reply at the start of `buf` if it has one of the shapes this module handles.
pub(crate) fn decode(buf: &[u8]) -> Fast {
    let Some(&kind) = buf.first() else {
        return Fast::Incomplete;
    };
    if kind != b'*' && kind != b'>' {
        return match item(buf, 0) {
            Item::Value(v, n) => Fast::Done(v, n),
            Item::Incomplete => Fast::Incomplete,
            Item::Fallback => Fast::Fallback,
        };
    }
    let (text, mut at) = match line(buf, 1) {
        Line::Done(text, at) => (text, at),
        Line::Incomplete => return Fast::Incomplete,
        Line::Odd => return Fast::Fallback,
    };
    let Some(len) = int(text) else {
        return Fast::Fallback;
    };
    // Null and empty arrays and pushes, and long ones, are `combine`'s.
    let len = match usize::try_from(len) {
        Ok(n) if (1..=MAX_ELEMENTS).contains(&n) => n,
        _ => return Fast::Fallback,
    };
    let mut items = Vec::with_capacity(len);
    for _ in 0..len {
        match item(buf, at) {
            Item::Value(v, next) => {
                items.push(v);
                at = next;
            }
            Item::Incomplete => return Fast::Incomplete,
            Item::Fallback => return Fast::Fallback,
        }
    }
    if kind == b'*' {
        return Fast::Done(Value::Array(items), at);
    }
    let mut items = items.into_iter();
    let push_kind = match items.next() {
        Some(Value::BulkString(k)) => match String::from_utf8(k) {
            Ok(k) => k,
            Err(_) => return Fast::Fallback,
        },
        Some(Value::SimpleString(k)) => k,
        _ => return Fast::Fallback,
    };
    Fast::Done(
        Value::Push {
            kind: get_push_kind(push_kind),
            data: items.collect(),
        },
        at,
    )
}
