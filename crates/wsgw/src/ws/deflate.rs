//! ws/deflate.rs: permessage-deflate (RFC 7692): choosing an offer from `Sec-WebSocket-Extensions`,
//! compressing one server message, inflating one client message within a size bound. Both
//! directions run without context takeover, so nothing is kept between messages: a compressed
//! server frame is the same bytes for every socket with the same window, and an idle socket holds
//! no compression state. Never allocates more than the caller's bound for a client's message.

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::decode::ProtocolError;

/// The extension's token.
pub const NAME: &str = "permessage-deflate";

/// The four bytes a sync flush ends with, removed from each message (RFC 7692 §7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// An accepted offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// The LZ77 window the server compresses with (9..=15).
    pub window_bits: u8,
    /// The client asked for `server_max_window_bits`: the answer names it.
    window_requested: bool,
}

impl Deflate {
    /// The `Sec-WebSocket-Extensions` answer: both sides without context takeover.
    pub fn response(&self) -> String {
        let mut r = format!("{NAME}; server_no_context_takeover; client_no_context_takeover");
        if self.window_requested {
            r.push_str(&format!("; server_max_window_bits={}", self.window_bits));
        }
        r
    }
}

/// The first acceptable `permessage-deflate` offer among the `Sec-WebSocket-Extensions` header
/// values, or `None` (the socket then runs uncompressed). An offer with an unknown or repeated
/// parameter, or a window the server cannot honour, is declined and the next one tried.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Deflate> {
    values.into_iter().flat_map(|v| v.split(',')).find_map(accept_offer)
}

fn accept_offer(offer: &str) -> Option<Deflate> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut accepted = Deflate {
        window_bits: 15,
        window_requested: false,
    };
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(v)) => {
                accepted.window_bits = window_bits(v).filter(|b| *b >= 9)?;
                accepted.window_requested = true;
            }
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                window_bits(v)?;
            }
            _ => return None,
        }
        seen.push(name);
    }
    Some(accepted)
}

/// A quoted-string value's content (RFC 7692 §7.1: the same token, quoted or not).
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(v),
    }
}

/// 8..=15 written as plain digits (no sign, no leading zero).
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

/// `payload` compressed as one message with a `window_bits` window, or `None` if that is not
/// smaller (the frame then goes plain).
pub fn compress(payload: &[u8], window_bits: u8) -> Option<Bytes> {
    let mut c = Compress::new_with_window_bits(Compression::default(), false, window_bits);
    // A sync flush never makes the output much larger than the input; anything at least as
    // long as the input is not worth sending.
    let mut out = Vec::with_capacity(payload.len() + 16);
    loop {
        let consumed = c.total_in() as usize;
        c.compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)
            .ok()?;
        if c.total_in() as usize == payload.len() && out.len() < out.capacity() {
            break;
        }
        if out.len() >= payload.len() + TAIL.len() {
            return None;
        }
        out.reserve(256);
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    (out.len() < payload.len()).then(|| Bytes::from(out))
}

/// Output is grown at most this much at a time, so a bound far above a message's size is
/// never allocated up front.
const INFLATE_STEP: usize = 16 * 1024;

/// A client's compressed message inflated with a fresh inflater. More than `max` bytes of
/// output is 1009 (and never more than `max + 1` bytes are allocated); bad data is 1007.
pub fn inflate(data: &[u8], max: usize) -> Result<Bytes, ProtocolError> {
    let too_big = ProtocolError {
        code: 1009,
        reason: "message too big",
    };
    let bad = ProtocolError {
        code: 1007,
        reason: "invalid compressed data",
    };
    let mut d = Decompress::new_with_window_bits(false, 15);
    let mut out: Vec<u8> = Vec::new();
    for chunk in [data, &TAIL[..]] {
        let start = d.total_in();
        loop {
            if out.len() == out.capacity() {
                out.reserve_exact(INFLATE_STEP.min(max + 1 - out.len()));
            }
            let before = (d.total_in(), d.total_out());
            let pos = (d.total_in() - start) as usize;
            let status = d
                .decompress_vec(&chunk[pos..], &mut out, FlushDecompress::Sync)
                .map_err(|_| bad)?;
            if out.len() > max {
                return Err(too_big);
            }
            if status == Status::StreamEnd {
                return Ok(Bytes::from(out));
            }
            let room = out.len() < out.capacity();
            if (d.total_in() - start) as usize == chunk.len() && room {
                break;
            }
            if (d.total_in(), d.total_out()) == before && room {
                return Err(bad);
            }
        }
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(s: &str) -> Option<Deflate> {
        negotiate([s])
    }

    #[test]
    fn a_plain_offer_is_answered_without_context_takeover() {
        let d = offer("permessage-deflate").unwrap();
        assert_eq!(d.window_bits, 15);
        assert_eq!(
            d.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        let d = offer("permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!(d.window_bits, 15);
        assert!(offer("permessage-deflate; client_max_window_bits=10; client_no_context_takeover").is_some());
        assert!(offer("permessage-deflate; server_no_context_takeover").is_some());
    }

    #[test]
    fn server_max_window_bits_is_honoured_from_9_to_15() {
        for bits in 9..=15u8 {
            let d = offer(&format!("permessage-deflate; server_max_window_bits={bits}")).unwrap();
            assert_eq!(d.window_bits, bits);
            assert!(d.response().ends_with(&format!("; server_max_window_bits={bits}")));
        }
        assert_eq!(
            offer("permessage-deflate; server_max_window_bits=\"10\"")
                .unwrap()
                .window_bits,
            10
        );
    }

    #[test]
    fn bad_offers_are_declined_and_the_next_one_taken() {
        for bad in [
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=x",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; foo",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(offer(bad), None, "{bad}");
        }
        let d = negotiate([
            "foo, permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits=12, permessage-deflate",
        ])
        .unwrap();
        assert_eq!(d.window_bits, 12);
        assert_eq!(negotiate(Vec::<&str>::new()), None);
    }

    #[test]
    fn compressed_messages_inflate_back_for_every_window() {
        let text = br#"{"type":"event","channel":"orders","data":{"id":1,"items":["a","b","c"]}}"#.repeat(40);
        for bits in 9..=15 {
            let z = compress(&text, bits).unwrap();
            assert!(z.len() < text.len() / 4, "{bits}: {}", z.len());
            assert!(!z.ends_with(&TAIL));
            assert_eq!(inflate(&z, text.len()).unwrap(), &text[..]);
        }
        // Incompressible or tiny payloads stay plain.
        assert_eq!(compress(b"ab", 15), None);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        assert_eq!(compress(&noise, 15), None);
        // An empty message: an empty stored block.
        assert_eq!(inflate(&[0x00], 10).unwrap(), &b""[..]);
        assert_eq!(inflate(&[0x02, 0x00], 10).unwrap(), &b""[..]);
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_bound() {
        let zeros = vec![0u8; 50 << 20];
        let z = compress(&zeros, 15).unwrap();
        assert!(z.len() < 100_000);
        let err = inflate(&z, 65_536).unwrap_err();
        assert_eq!(err.code, 1009);
        // Exactly at the bound is fine.
        let z = compress(&zeros[..65_536], 15).unwrap();
        assert_eq!(inflate(&z, 65_536).unwrap().len(), 65_536);
        assert_eq!(inflate(&z, 65_535).unwrap_err().code, 1009);
    }

    #[test]
    fn garbage_is_invalid_payload() {
        assert_eq!(inflate(&[0xFF, 0xFF, 0xFF, 0xFF], 1000).unwrap_err().code, 1007);
        assert_eq!(inflate(b"\x07not deflate at all", 1000).unwrap_err().code, 1007);
    }
}
