//! broker/redis/head.rs: the top-level fields of a pub/sub frame's JSON that routing and dedup
//! read (`type`, `event_id`, `channel`, `ts`, `request_id`, `more`). Pure parsing, unit-tested
//! here against serde_json.
//!
//! serde_json decides what a frame says: [`read`] gives exactly what `serde_json::from_str`
//! gives for [`Head`]. A hand-written pass comes first, because serde took about 7% of a node's
//! CPU at 2,000 targeted messages a second (docs/loadtest.md). It reads the frames the Function
//! and the HTTP API write, one pass over the bytes, checking the whole text against the JSON
//! grammar as it skips `data`. Whatever it is not sure of (an escape in a field it reads or in
//! any key, a repeated field, a `request_id`, deep nesting, anything not JSON) goes to serde_json.

use std::borrow::Cow;

use serde::Deserialize;
use wsgw_protocol::EventId;

/// The fields of a frame the node reads. Cow, not &str: JSON encoders may escape characters
/// (cjson writes `/` as `\/`).
#[derive(Debug, Deserialize, PartialEq)]
pub(super) struct Head<'a> {
    #[serde(rename = "type", borrow)]
    pub(super) kind: Cow<'a, str>,
    #[serde(default)]
    pub(super) event_id: Option<EventId>,
    #[serde(default, borrow)]
    pub(super) channel: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(super) ts: Option<u64>,
    #[serde(default)]
    pub(super) request_id: Option<serde_json::Value>,
    #[serde(default)]
    pub(super) more: bool,
}

/// A frame's head, or `None` where serde_json would not read one.
pub(super) fn read(body: &str) -> Option<Head<'_>> {
    match quick(body) {
        Some(head) => Some(head),
        None => serde_json::from_str(body).ok(),
    }
}

/// How deep `data` may nest before the quick pass leaves the frame to serde_json (which skips a
/// field it does not read at any depth, without recursing).
const MAX_DEPTH: u32 = 64;

/// The quick pass: `Some` only when the text is JSON and the head is certain; `None` means
/// "ask serde_json", never "invalid".
fn quick(body: &str) -> Option<Head<'_>> {
    let mut s = Scan { text: body, at: 0 };
    s.space();
    s.eat(b'{')?;
    let (mut kind, mut event_id, mut channel, mut ts, mut more) = (None, None, None, None, None);
    s.space();
    if s.peek() == Some(b'}') {
        return None; // no `type`: serde_json rejects it
    }
    loop {
        let key = s.plain_str()?;
        s.space();
        s.eat(b':')?;
        s.space();
        match key {
            "type" => set_once(&mut kind, s.plain_str()?)?,
            "event_id" => set_once(&mut event_id, s.null_or(|s| s.plain_str()?.parse().ok())?)?,
            "channel" => set_once(&mut channel, s.null_or(|s| s.plain_str().map(Cow::Borrowed))?)?,
            "ts" => set_once(&mut ts, s.null_or(Scan::plain_u64)?)?,
            "more" => set_once(&mut more, s.boolean()?)?,
            "request_id" => return None,
            _ => s.value(0)?,
        }
        s.space();
        match s.next()? {
            b',' => s.space(),
            b'}' => break,
            _ => return None,
        }
    }
    s.space();
    if s.at != body.len() {
        return None;
    }
    Some(Head {
        kind: Cow::Borrowed(kind?),
        event_id: event_id.flatten(),
        channel: channel.flatten(),
        ts: ts.flatten(),
        request_id: None,
        more: more.unwrap_or(false),
    })
}

/// A field seen twice is serde_json's to judge (it rejects a repeated known field).
fn set_once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

/// A cursor over the frame. Every method returns `None` for "not sure", and leaves the cursor
/// wherever it stopped (the caller then gives up on the whole frame).
struct Scan<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.next()? == b).then_some(())
    }

    fn space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let end = self.at + word.len();
        (self.text.as_bytes().get(self.at..end)? == word.as_bytes()).then(|| self.at = end)
    }

    /// `null` as `Some(None)`; anything else through `f`.
    fn null_or<T>(&mut self, f: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.peek() == Some(b'n') {
            self.literal("null")?;
            return Some(None);
        }
        f(self).map(Some)
    }

    fn boolean(&mut self) -> Option<bool> {
        match self.peek()? {
            b't' => self.literal("true").map(|()| true),
            b'f' => self.literal("false").map(|()| false),
            _ => None,
        }
    }

    /// A string with no escape, borrowed from the frame; `None` for anything else.
    fn plain_str(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        self.at = string_stop(self.text.as_bytes(), start)?;
        self.eat(b'"')?;
        // The quote is ASCII, so both ends are character boundaries.
        Some(&self.text[start..self.at - 1])
    }

    /// Any string, escapes checked as serde_json checks the strings it skips.
    fn skip_str(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            self.at = string_stop(self.text.as_bytes(), self.at)?;
            match self.next()? {
                b'"' => return Some(()),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        for _ in 0..4 {
                            self.next()?.is_ascii_hexdigit().then_some(())?;
                        }
                    }
                    _ => return None,
                },
                _ => return None, // a control character
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        self.at - start
    }

    /// A number by the JSON grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn skip_number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek()? {
            b'0' => {
                self.at += 1;
                if self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    return None;
                }
            }
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            (self.digits() > 0).then_some(())?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            (self.digits() > 0).then_some(())?;
        }
        Some(())
    }

    /// A whole number that fits a `u64`, written without sign, fraction, exponent or leading
    /// zero: what serde_json reads into a `u64`.
    fn plain_u64(&mut self) -> Option<u64> {
        let start = self.at;
        self.skip_number()?;
        let text = &self.text[start..self.at];
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    }

    /// Any JSON value, checked and skipped.
    fn value(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => self.skip_str(),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            b'-' | b'0'..=b'9' => self.skip_number(),
            open @ (b'{' | b'[') => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                self.at += 1;
                self.space();
                let close = if open == b'{' { b'}' } else { b']' };
                if self.peek() == Some(close) {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    if open == b'{' {
                        self.plain_str()?;
                        self.space();
                        self.eat(b':')?;
                        self.space();
                    }
                    self.value(depth + 1)?;
                    self.space();
                    match self.next()? {
                        b',' => self.space(),
                        b if b == close => return Some(()),
                        _ => return None,
                    }
                }
            }
            _ => None,
        }
    }
}

/// The first quote, backslash or control character at or after `from`: where a string's plain
/// run stops. Eight bytes at a time: a frame's longest strings are its payload's.
fn string_stop(bytes: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // Bytes equal to zero, or below 0x20, have their high bit set here (with false positives
    // only past a true one, which the byte loop below never reaches).
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let below_space = |x: u64| x.wrapping_sub(ONES * 0x20) & !x & HIGH;
    let mut at = from;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let word = u64::from_ne_bytes(chunk.try_into().ok()?);
        if zero(word ^ (ONES * u64::from(b'"'))) | zero(word ^ (ONES * u64::from(b'\\'))) | below_space(word) != 0 {
            break;
        }
        at += 8;
    }
    let rest = bytes.get(at..)?;
    rest.iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|i| at + i)
}

#[cfg(test)]
#[path = "head_tests.rs"]
mod tests;
