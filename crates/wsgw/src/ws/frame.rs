//! ws/frame.rs: the bytes of server frames (RFC 6455 §5.2). A server frame is never masked, so
//! an event's frame is the same bytes for every recipient: its payload is shared and only the
//! 2–10 byte header is written next to it.

use bytes::{BufMut, Bytes, BytesMut};

/// Continuation frame.
pub const OP_CONTINUATION: u8 = 0x0;
/// Text frame.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame.
pub const OP_PING: u8 = 0x9;
/// Pong frame.
pub const OP_PONG: u8 = 0xA;

/// The header of one unmasked, final server frame.
#[derive(Clone, Copy)]
pub struct Header {
    bytes: [u8; 10],
    len: u8,
}

impl Header {
    /// The header of a final frame of `opcode` carrying `payload_len` bytes.
    pub fn new(opcode: u8, payload_len: usize) -> Self {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | (opcode & 0x0F);
        let len = if payload_len < 126 {
            bytes[1] = payload_len as u8;
            2
        } else if payload_len <= u16::MAX as usize {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        };
        Self { bytes, len }
    }

    /// Sets RSV1 (a permessage-deflate compressed message).
    pub fn compressed(mut self) -> Self {
        self.bytes[0] |= 0x40;
        self
    }

    /// The header's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// A whole final frame (header and payload) in one buffer.
pub fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    encode_with(Header::new(opcode, payload.len()), payload)
}

/// `header` (made for `payload`, e.g. [`Header::compressed`]) and `payload` in one buffer.
pub fn encode_with(header: Header, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(header.as_bytes().len() + payload.len());
    out.put_slice(header.as_bytes());
    out.put_slice(payload);
    out.freeze()
}

/// A close frame's payload: the code, then the reason (cut to fit a control frame's 125
/// bytes, at a character boundary).
pub fn close_payload(code: u16, reason: &str) -> Bytes {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = BytesMut::with_capacity(2 + cut);
    out.put_u16(code);
    out.put_slice(&reason.as_bytes()[..cut]);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_use_the_shortest_length_form() {
        assert_eq!(Header::new(OP_TEXT, 5).as_bytes(), [0x81, 5]);
        assert_eq!(Header::new(OP_TEXT, 125).as_bytes(), [0x81, 125]);
        assert_eq!(Header::new(OP_BINARY, 126).as_bytes(), [0x82, 126, 0, 126]);
        assert_eq!(Header::new(OP_TEXT, 65_535).as_bytes(), [0x81, 126, 0xFF, 0xFF]);
        assert_eq!(
            Header::new(OP_TEXT, 65_536).as_bytes(),
            [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
        assert_eq!(Header::new(OP_TEXT, 3).compressed().as_bytes(), [0xC1, 3]);
    }

    #[test]
    fn a_frame_is_its_header_then_its_payload() {
        assert_eq!(&encode(OP_PONG, b"hi")[..], [0x8A, 2, b'h', b'i']);
    }

    #[test]
    fn close_reasons_fit_a_control_frame() {
        let p = close_payload(1000, &"é".repeat(100));
        assert!(p.len() <= 125);
        assert_eq!(&p[..2], [0x03, 0xE8]);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
    }
}
