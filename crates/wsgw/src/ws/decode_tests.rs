use super::*;

/// A masked client frame.
fn client(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xFA, 0x21, 0x3D];
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 65_535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn decode_all(bytes: &[u8], max: usize) -> Result<Vec<Incoming>, ProtocolError> {
    decode_with(Decoder::new(max), bytes)
}

/// Every message `d` decodes from `bytes`, or its first error.
fn decode_with(mut d: Decoder, bytes: &[u8]) -> Result<Vec<Incoming>, ProtocolError> {
    d.feed(bytes);
    let mut out = Vec::new();
    while let Some(m) = d.next_message()? {
        out.push(m);
    }
    Ok(out)
}

#[test]
fn a_text_frame_split_anywhere_decodes_the_same() {
    let wire = client(true, OP_TEXT, "héllo, wörld".as_bytes());
    for cut in 0..wire.len() {
        let mut d = Decoder::new(1024);
        d.feed(&wire[..cut]);
        assert_eq!(d.next_message().unwrap(), None, "cut at {cut}");
        d.feed(&wire[cut..]);
        let text = Bytes::from("héllo, wörld");
        assert_eq!(d.next_message().unwrap(), Some(Incoming::Text(text)));
        assert!(d.is_idle());
        assert_eq!(d.pending.capacity(), 0, "an idle decoder keeps no buffer");
    }
}

#[test]
fn long_lengths_and_fragments_assemble_with_pings_between() {
    let big = vec![b'a'; 70_000];
    let mut wire = client(false, OP_TEXT, &big[..200]);
    wire.extend(client(true, OP_PING, b"p"));
    wire.extend(client(false, OP_CONTINUATION, &big[200..60_000]));
    wire.extend(client(true, OP_CONTINUATION, &big[60_000..]));
    wire.extend(client(true, OP_BINARY, &[0, 1, 2]));
    let got = decode_all(&wire, 100_000).unwrap();
    assert_eq!(
        got,
        vec![
            Incoming::Ping(Bytes::from_static(b"p")),
            Incoming::Text(Bytes::from(big)),
            Incoming::Binary(Bytes::from_static(&[0, 1, 2]))
        ]
    );
}

#[test]
fn protocol_violations_name_their_close_code() {
    let code = |wire: Vec<u8>| decode_all(&wire, 1000).unwrap_err().code;
    let mut unmasked = client(true, OP_TEXT, b"x");
    unmasked[1] &= 0x7F;
    assert_eq!(code(unmasked), 1002);
    assert_eq!(code(client(true, 0x3, b"")), 1002, "reserved opcode");
    let mut rsv = client(true, OP_TEXT, b"x");
    rsv[0] |= 0x20;
    assert_eq!(code(rsv), 1002);
    assert_eq!(code(client(false, OP_PING, b"")), 1002, "fragmented control");
    assert_eq!(code(client(true, OP_PING, &[0; 126])), 1002, "long control");
    assert_eq!(code(client(true, OP_CONTINUATION, b"x")), 1002);
    let mut twice = client(false, OP_TEXT, b"a");
    twice.extend(client(true, OP_TEXT, b"b"));
    assert_eq!(code(twice), 1002);
    assert_eq!(code(client(true, OP_TEXT, &[0xFF])), 1007);
    assert_eq!(code(client(true, OP_CLOSE, &[3])), 1002);
    assert_eq!(code(client(true, OP_CLOSE, &1005u16.to_be_bytes())), 1002);
    let mut bad_reason = 1000u16.to_be_bytes().to_vec();
    bad_reason.push(0xC0);
    assert_eq!(code(client(true, OP_CLOSE, &bad_reason)), 1007);
}

#[test]
fn an_oversized_message_fails_from_its_header() {
    let mut d = Decoder::new(100);
    let wire = client(true, OP_TEXT, &[b'a'; 101]);
    d.feed(&wire[..4]);
    assert_eq!(d.next_message().unwrap_err().code, 1009);
    let mut frags = client(false, OP_TEXT, &[b'a'; 60]);
    frags.extend(client(true, OP_CONTINUATION, &[b'a'; 41]));
    assert_eq!(decode_all(&frags, 100).unwrap_err().code, 1009);
    assert!(decode_all(&client(true, OP_TEXT, &[b'a'; 100]), 100).is_ok());
}

#[test]
fn bad_utf8_in_a_fragment_fails_before_the_message_ends() {
    let mut d = Decoder::new(1000);
    d.feed(&client(false, OP_TEXT, &[b'a', 0xCE]));
    assert_eq!(d.next_message().unwrap(), None, "an incomplete character may continue");
    d.feed(&client(false, OP_CONTINUATION, &[0xBA, 0xFF]));
    assert_eq!(d.next_message().unwrap_err().code, 1007);
    let mut cut = client(false, OP_TEXT, &[0xCE]);
    cut.extend(client(true, OP_CONTINUATION, b""));
    assert_eq!(decode_all(&cut, 1000).unwrap_err().code, 1007);
}

#[test]
fn close_frames_carry_code_and_reason_and_end_decoding() {
    let mut p = 4001u16.to_be_bytes().to_vec();
    p.extend_from_slice(b"bye");
    let mut wire = client(true, OP_CLOSE, &p);
    wire.extend(client(true, OP_TEXT, b"after"));
    assert_eq!(
        decode_all(&wire, 1000).unwrap(),
        vec![Incoming::Close(Some((4001, "bye".into())))]
    );
    assert_eq!(
        decode_all(&client(true, OP_CLOSE, b""), 1000).unwrap(),
        vec![Incoming::Close(None)]
    );
}

#[test]
fn allowed_close_codes() {
    for ok in [1000, 1001, 1003, 1007, 1011, 1012, 1014, 3000, 4999] {
        assert!(close_code_allowed(ok), "{ok}");
    }
    for bad in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65_535] {
        assert!(!close_code_allowed(bad), "{bad}");
    }
}

/// A client frame with RSV1 set.
fn rsv1(mut frame: Vec<u8>) -> Vec<u8> {
    frame[0] |= 0x40;
    frame
}

fn decode_deflate(bytes: &[u8], max: usize) -> Result<Vec<Incoming>, ProtocolError> {
    decode_with(Decoder::new(max).with_deflate(true), bytes)
}

#[test]
fn compressed_messages_are_inflated_whole_or_fragmented() {
    let text = "ünïcode text, ".repeat(50);
    let z = crate::ws::deflate::compress(text.as_bytes(), 15).unwrap();
    let one = rsv1(client(true, OP_TEXT, &z));
    assert_eq!(
        decode_deflate(&one, 4096).unwrap(),
        [Incoming::Text(Bytes::from(text.clone()))]
    );
    // Fragmented: RSV1 on the first frame only; the cut may fall inside a character's bytes
    // of the compressed stream (UTF-8 is checked after inflating).
    let (a, b) = z.split_at(z.len() / 2);
    let mut wire = rsv1(client(false, OP_TEXT, a));
    wire.extend(client(true, OP_CONTINUATION, b));
    assert_eq!(
        decode_deflate(&wire, 4096).unwrap(),
        [Incoming::Text(Bytes::from(text))]
    );
    let bin = vec![7u8; 3000];
    let z = crate::ws::deflate::compress(&bin, 15).unwrap();
    assert_eq!(
        decode_deflate(&rsv1(client(true, OP_BINARY, &z)), 4096).unwrap(),
        [Incoming::Binary(Bytes::from(bin))]
    );
}

#[test]
fn rsv1_is_allowed_only_where_deflate_allows_it() {
    let z = crate::ws::deflate::compress(&[b'a'; 300], 15).unwrap();
    // Not negotiated.
    assert_eq!(
        decode_all(&rsv1(client(true, OP_TEXT, &z)), 4096).unwrap_err().code,
        1002
    );
    // On a control frame.
    assert_eq!(
        decode_deflate(&rsv1(client(true, OP_PING, b"x")), 4096)
            .unwrap_err()
            .code,
        1002
    );
    // On a continuation frame.
    let mut wire = client(false, OP_TEXT, b"ab");
    wire.extend(rsv1(client(true, OP_CONTINUATION, b"cd")));
    assert_eq!(decode_deflate(&wire, 4096).unwrap_err().code, 1002);
    // RSV2 / RSV3 never.
    let mut f = client(true, OP_TEXT, b"x");
    f[0] |= 0x20;
    assert_eq!(decode_deflate(&f, 4096).unwrap_err().code, 1002);
    // Uncompressed messages still pass on a deflate socket.
    assert_eq!(
        decode_deflate(&client(true, OP_TEXT, b"plain"), 4096).unwrap(),
        [Incoming::Text(Bytes::from_static(b"plain"))]
    );
}

#[test]
fn inflated_size_and_content_are_checked() {
    // A bomb: 10 MB of zeros in a few KB, against a 64 KiB limit.
    let z = crate::ws::deflate::compress(&vec![0u8; 10 << 20], 15).unwrap();
    assert!(z.len() < 65_536);
    assert_eq!(
        decode_deflate(&rsv1(client(true, OP_BINARY, &z)), 65_536)
            .unwrap_err()
            .code,
        1009
    );
    // Not deflate data.
    let junk = rsv1(client(true, OP_TEXT, &[0xFF, 0xFE, 0xFD]));
    assert_eq!(decode_deflate(&junk, 4096).unwrap_err().code, 1007);
    // Inflates to invalid UTF-8.
    let z = crate::ws::deflate::compress(&[0xC3u8; 400], 15).unwrap();
    assert_eq!(
        decode_deflate(&rsv1(client(true, OP_TEXT, &z)), 4096).unwrap_err().code,
        1007
    );
}
