//! The vendored redis crate decodes the common reply shapes by hand (vendor/redis/src/fast_decode.rs,
//! WSGW-PATCH.md "The fast decoder") and leaves the rest to `combine`. Pure logic, so no server:
//! streams of replies of every kind, cut into random pieces the way reads cut them, must decode to
//! exactly what `combine` alone (`redis::parse_redis_value`, one reply at a time) makes of each.

use bytes::BytesMut;
use proptest::prelude::*;
use redis::{Value, ValueCodec, parse_redis_value};
use tokio_util::codec::Decoder;

/// Bytes of one bulk string body: binary, with the line-end bytes RESP must not look into.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        prop::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'a'), Just(b'*')], 0..12),
        Just(b"{\"type\":\"event\",\"channel\":\"user:1\"}".to_vec()),
    ]
}

fn bulk(b: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", b.len()).into_bytes();
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
    out
}

/// One element of an array or push: what the fast decoder takes and what it leaves to `combine`.
fn element() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => body().prop_map(|b| bulk(&b)),
        2 => any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
        1 => Just(b"+OK\r\n".to_vec()),
        1 => "[a-z ]{0,8}".prop_map(|s| format!("+{s}\r\n").into_bytes()),
        1 => Just(b"$-1\r\n".to_vec()),
        1 => Just(b"_\r\n".to_vec()),
        1 => Just(b"-ERR wrong\r\n".to_vec()),
        1 => Just(b",1.5\r\n".to_vec()),
        1 => Just(b"*2\r\n:1\r\n$1\r\nx\r\n".to_vec()),
        1 => Just(b":+7\r\n".to_vec()),
    ]
}

/// One whole reply.
fn reply() -> impl Strategy<Value = Vec<u8>> {
    let kinds = prop_oneof![
        Just("message"),
        Just("pmessage"),
        Just("smessage"),
        Just("subscribe"),
        Just("unsubscribe"),
        Just("ssubscribe"),
        Just("other"),
    ];
    prop_oneof![
        // Pub/sub messages and confirmations, RESP2 (`*`) and RESP3 (`>`).
        4 => (prop::bool::ANY, kinds, prop::collection::vec(element(), 0..4)).prop_map(|(push, kind, rest)| {
            let mut out = format!("{}{}\r\n", if push { '>' } else { '*' }, rest.len() + 1).into_bytes();
            out.extend(bulk(kind.as_bytes()));
            rest.into_iter().for_each(|e| out.extend(e));
            out
        }),
        2 => prop::collection::vec(element(), 0..12).prop_map(|items| {
            let mut out = format!("*{}\r\n", items.len()).into_bytes();
            items.into_iter().for_each(|e| out.extend(e));
            out
        }),
        3 => element(),
        1 => Just(b"*-1\r\n".to_vec()),
        1 => Just(b">0\r\n".to_vec()),
        1 => Just(b">2\r\n:5\r\n$1\r\nx\r\n".to_vec()),
        1 => Just(b"%1\r\n+key\r\n:2\r\n".to_vec()),
    ]
}

/// What `combine` alone makes of one reply.
fn reference(reply: &[u8]) -> Result<Value, String> {
    parse_redis_value(reply).map_err(|e| e.to_string())
}

/// Feeds `stream` to one codec in the pieces `cuts` make; every decoded reply (or the first error).
fn decode_in_pieces(stream: &[u8], cuts: &[usize]) -> Vec<Result<Value, String>> {
    let mut codec = ValueCodec::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&stream.len())) {
        buf.extend_from_slice(&stream[from..to]);
        from = to;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(v)) => out.push(Ok(v)),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decodes_like_combine_whatever_the_reads(
        replies in prop::collection::vec(reply(), 1..12),
        cut_points in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let stream: Vec<u8> = replies.concat();
        let mut cuts: Vec<usize> = cut_points.iter().map(|i| i.index(stream.len() + 1)).collect();
        cuts.sort_unstable();
        let expected: Vec<Result<Value, String>> = replies.iter().map(|r| reference(r)).collect();
        let got = decode_in_pieces(&stream, &cuts);
        // Up to the first error both agree reply for reply; after one, the connection is done.
        let until = expected.iter().position(Result::is_err).map_or(expected.len(), |i| i + 1);
        prop_assert_eq!(got.len(), until);
        for (g, e) in got.iter().zip(&expected) {
            match (g, e) {
                (Ok(g), Ok(e)) => prop_assert_eq!(g, e),
                (Err(_), Err(_)) => {}
                _ => prop_assert!(false, "got {:?}, combine made {:?}", g, e),
            }
        }
    }
}

/// A message cut inside its payload, then a confirmation: the shapes of a pub/sub connection,
/// each delivered whole and once.
#[test]
fn a_message_read_in_two_pieces_then_a_confirmation() {
    let msg = b"*3\r\n$7\r\nmessage\r\n$6\r\nuser:1\r\n$5\r\nhello\r\n";
    let confirm = b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:4\r\n";
    let mut stream = msg.to_vec();
    stream.extend_from_slice(confirm);
    let got = decode_in_pieces(&stream, &[30]);
    assert_eq!(
        got,
        vec![
            Ok(Value::Array(vec![
                Value::BulkString(b"message".to_vec()),
                Value::BulkString(b"user:1".to_vec()),
                Value::BulkString(b"hello".to_vec()),
            ])),
            Ok(Value::Push {
                kind: redis::PushKind::Subscribe,
                data: vec![Value::BulkString(b"ch".to_vec()), Value::Int(4)],
            }),
        ]
    );
}
