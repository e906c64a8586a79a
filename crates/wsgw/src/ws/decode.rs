//! ws/decode.rs: client frames to messages (RFC 6455 §5), without I/O. Bytes read from the
//! socket are fed in; complete messages come out. What a client may send is bounded: a message
//! (all its fragments) by `max_message` bytes, checked from the frame header before its payload
//! is buffered; a compressed one (permessage-deflate, RSV1 on its first frame) by the same bound
//! again once inflated. Every protocol error names the close code the connection must end with.

use bytes::{Buf, Bytes, BytesMut};

use super::frame::{OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT};

/// A complete message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A text message (valid UTF-8).
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping: answer with a pong carrying the same payload.
    Ping(Bytes),
    /// A pong (ignored beyond being a sign of life).
    Pong,
    /// A close frame: its code and reason, if it had them.
    Close(Option<(u16, String)>),
}

/// Why the connection must end: the close code to send, and a short reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolError {
    /// 1002 (protocol error), 1007 (invalid payload) or 1009 (message too big).
    pub code: u16,
    /// What was wrong.
    pub reason: &'static str,
}

impl ProtocolError {
    const fn protocol(reason: &'static str) -> Self {
        Self { code: 1002, reason }
    }
    const fn invalid(reason: &'static str) -> Self {
        Self { code: 1007, reason }
    }
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.reason, self.code)
    }
}

impl std::error::Error for ProtocolError {}

/// A fragmented message being assembled.
struct Partial {
    opcode: u8,
    data: Vec<u8>,
    /// How much of `data` is known to be valid UTF-8 (text only): checked as fragments arrive,
    /// so a bad sequence fails at once.
    checked: usize,
    /// RSV1 was set on the first frame: `data` is deflated (checked once inflated).
    compressed: bool,
}

/// The decoder of one connection.
pub struct Decoder {
    max_message: usize,
    /// Read bytes not yet decoded: empty (and unallocated) between frames on an idle socket.
    pending: BytesMut,
    partial: Option<Box<Partial>>,
    /// A close frame was decoded: nothing after it is read.
    closed: bool,
    /// permessage-deflate was negotiated: RSV1 may mark a data message as compressed.
    deflate: bool,
}

impl Decoder {
    /// A decoder accepting messages up to `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message,
            pending: BytesMut::new(),
            partial: None,
            closed: false,
            deflate: false,
        }
    }

    /// Accepts compressed messages (permessage-deflate was negotiated for this socket).
    pub fn with_deflate(mut self, on: bool) -> Self {
        self.deflate = on;
        self
    }

    /// Adds bytes read from the socket.
    pub fn feed(&mut self, data: &[u8]) {
        if !self.closed {
            self.pending.extend_from_slice(data);
        }
    }

    /// Whether nothing is buffered (no partial frame, no partial message).
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.partial.is_none()
    }

    /// The next complete message, `None` when more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Incoming>, ProtocolError> {
        loop {
            let Some(frame) = self.next_frame()? else {
                return Ok(None);
            };
            if let Some(msg) = self.on_frame(frame)? {
                return Ok(Some(msg));
            }
        }
    }

    /// Splits one complete frame off `pending`, unmasked.
    fn next_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        if self.closed || self.pending.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (self.pending[0], self.pending[1]);
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        let compressed = b0 & 0x40 != 0;
        if b0 & 0x30 != 0 {
            return Err(ProtocolError::protocol("reserved bits set"));
        }
        if compressed && !(self.deflate && matches!(opcode, OP_TEXT | OP_BINARY)) {
            // Only the first frame of a data message may carry RSV1, and only once negotiated.
            return Err(ProtocolError::protocol("reserved bits set"));
        }
        if b1 & 0x80 == 0 {
            return Err(ProtocolError::protocol("client frames must be masked"));
        }
        let control = opcode & 0x08 != 0;
        match opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
            _ => return Err(ProtocolError::protocol("reserved opcode")),
        }
        let (len, header) = match b1 & 0x7F {
            126 => {
                if self.pending.len() < 4 {
                    return Ok(None);
                }
                (u16::from_be_bytes([self.pending[2], self.pending[3]]) as u64, 4)
            }
            127 => {
                if self.pending.len() < 10 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.pending[2..10]);
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    return Err(ProtocolError::protocol("frame length has its top bit set"));
                }
                (len, 10)
            }
            n => (n as u64, 2),
        };
        if control && (!fin || len > 125) {
            return Err(ProtocolError::protocol(
                "control frames must be final and at most 125 bytes",
            ));
        }
        if !control {
            let so_far = self.partial.as_ref().map_or(0, |p| p.data.len()) as u64;
            if so_far.saturating_add(len) > self.max_message as u64 {
                return Err(ProtocolError {
                    code: 1009,
                    reason: "message too big",
                });
            }
        }
        let len = len as usize;
        let total = header + 4 + len;
        if self.pending.len() < total {
            // Room for the rest of this frame at once, rather than growing read by read.
            self.pending.reserve(total - self.pending.len());
            return Ok(None);
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&self.pending[header..header + 4]);
        self.pending.advance(header + 4);
        let mut payload = self.pending.split_to(len);
        if self.pending.is_empty() {
            // Give the buffer back: an idle socket keeps no read memory.
            self.pending = BytesMut::new();
        }
        unmask(&mut payload, mask);
        Ok(Some(Frame {
            fin,
            opcode,
            compressed,
            payload: payload.freeze(),
        }))
    }

    fn on_frame(&mut self, f: Frame) -> Result<Option<Incoming>, ProtocolError> {
        match f.opcode {
            OP_PING => Ok(Some(Incoming::Ping(f.payload))),
            OP_PONG => Ok(Some(Incoming::Pong)),
            OP_CLOSE => {
                self.closed = true;
                self.pending = BytesMut::new();
                parse_close(&f.payload).map(|c| Some(Incoming::Close(c)))
            }
            OP_CONTINUATION => {
                let Some(p) = self.partial.as_mut() else {
                    return Err(ProtocolError::protocol("continuation without a message to continue"));
                };
                p.data.extend_from_slice(&f.payload);
                if p.opcode == OP_TEXT && !p.compressed {
                    check_utf8(&p.data, &mut p.checked, f.fin)?;
                }
                if !f.fin {
                    return Ok(None);
                }
                let Some(p) = self.partial.take() else {
                    return Ok(None);
                };
                if p.compressed {
                    return self.inflated(p.opcode, &p.data).map(Some);
                }
                Ok(Some(message(p.opcode, Bytes::from(p.data))))
            }
            opcode => {
                if self.partial.is_some() {
                    return Err(ProtocolError::protocol("new message before the previous one ended"));
                }
                if f.fin && f.compressed {
                    return self.inflated(opcode, &f.payload).map(Some);
                }
                if f.fin {
                    if opcode == OP_TEXT && std::str::from_utf8(&f.payload).is_err() {
                        return Err(ProtocolError::invalid("text is not valid UTF-8"));
                    }
                    return Ok(Some(message(opcode, f.payload)));
                }
                let mut p = Box::new(Partial {
                    opcode,
                    data: f.payload.to_vec(),
                    checked: 0,
                    compressed: f.compressed,
                });
                if opcode == OP_TEXT && !f.compressed {
                    check_utf8(&p.data, &mut p.checked, false)?;
                }
                self.partial = Some(p);
                Ok(None)
            }
        }
    }
}

impl Decoder {
    /// A compressed message, inflated (within `max_message`) and, for text, checked.
    fn inflated(&self, opcode: u8, data: &[u8]) -> Result<Incoming, ProtocolError> {
        let data = super::deflate::inflate(data, self.max_message)?;
        if opcode == OP_TEXT && std::str::from_utf8(&data).is_err() {
            return Err(ProtocolError::invalid("text is not valid UTF-8"));
        }
        Ok(message(opcode, data))
    }
}

struct Frame {
    fin: bool,
    opcode: u8,
    /// RSV1: the message this frame starts is compressed.
    compressed: bool,
    payload: Bytes,
}

fn message(opcode: u8, data: Bytes) -> Incoming {
    if opcode == OP_TEXT {
        Incoming::Text(data)
    } else {
        Incoming::Binary(data)
    }
}

/// Validates the UTF-8 of `data` from `checked` on. An incomplete character at the end is
/// fine until the message's last fragment.
fn check_utf8(data: &[u8], checked: &mut usize, last: bool) -> Result<(), ProtocolError> {
    match std::str::from_utf8(&data[*checked..]) {
        Ok(_) => *checked = data.len(),
        Err(e) => {
            if e.error_len().is_some() || last {
                return Err(ProtocolError::invalid("text is not valid UTF-8"));
            }
            *checked += e.valid_up_to();
        }
    }
    Ok(())
}

/// A close frame's payload: empty, or a valid code and a UTF-8 reason.
fn parse_close(p: &[u8]) -> Result<Option<(u16, String)>, ProtocolError> {
    match p.len() {
        0 => Ok(None),
        1 => Err(ProtocolError::protocol("close payload of one byte")),
        _ => {
            let code = u16::from_be_bytes([p[0], p[1]]);
            if !close_code_allowed(code) {
                return Err(ProtocolError::protocol("close code not allowed"));
            }
            let reason =
                std::str::from_utf8(&p[2..]).map_err(|_| ProtocolError::invalid("close reason is not UTF-8"))?;
            Ok(Some((code, reason.to_owned())))
        }
    }
}

/// Codes a peer may send (RFC 6455 §7.4 and the IANA registry): not 1004–1006 or 1015, nothing
/// below 1000, nothing unassigned below 3000, nothing from 5000.
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;
