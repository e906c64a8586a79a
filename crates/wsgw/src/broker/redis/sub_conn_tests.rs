use proptest::prelude::*;

use super::*;
use crate::broker::redis::held::Holding;

fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

fn message(channel: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = b"*3\r\n".to_vec();
    bulk(&mut out, b"message");
    bulk(&mut out, channel);
    bulk(&mut out, payload);
    out
}

fn pmessage(pattern: &[u8], channel: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = b"*4\r\n".to_vec();
    bulk(&mut out, b"pmessage");
    bulk(&mut out, pattern);
    bulk(&mut out, channel);
    bulk(&mut out, payload);
    out
}

/// A message read: channel, pattern, payload.
type Read = (Vec<u8>, Option<Vec<u8>>, Vec<u8>);

/// Parses `bytes` as `poll_reply` would: (channel, pattern, payload) per message, and the
/// number of other replies.
fn read_all(bytes: &[u8]) -> Result<(Vec<Read>, usize), BrokerError> {
    let mut at = 0;
    let mut msgs = Vec::new();
    let mut others = 0;
    while let Some((reply, len)) = parse(&bytes[at..])? {
        let b = &bytes[at..at + len];
        match reply {
            Reply::Message {
                channel,
                pattern,
                payload,
            } => msgs.push((b[channel].to_vec(), pattern.map(|p| b[p].to_vec()), b[payload].to_vec())),
            _ => others += 1,
        }
        at += len;
    }
    assert_eq!(at, bytes.len(), "a complete reply was left unread");
    Ok((msgs, others))
}

#[test]
fn reads_messages_pmessages_and_confirmations() {
    let mut bytes = b"*3\r\n$9\r\nsubscribe\r\n$6\r\nws:c:1\r\n:1\r\n".to_vec();
    bytes.extend(message(b"ws:c:1", b"{\"type\":\"event\"}\r\nwith a CRLF inside"));
    bytes.extend(pmessage(b"ws:room:*", b"ws:room:1", b""));
    bytes.extend(b"+OK\r\n");
    let (msgs, others) = read_all(&bytes).unwrap();
    assert_eq!(others, 2);
    assert_eq!(
        msgs,
        vec![
            (
                b"ws:c:1".to_vec(),
                None,
                b"{\"type\":\"event\"}\r\nwith a CRLF inside".to_vec()
            ),
            (b"ws:room:1".to_vec(), Some(b"ws:room:*".to_vec()), Vec::new()),
        ]
    );
    // A PING's answer in subscribed mode: read, and not taken for a message.
    assert!(matches!(
        parse(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"),
        Ok(Some((Reply::Other, 20)))
    ));
    assert!(matches!(
        parse(b"*3\r\n$12\r\npunsubscribe\r\n$1\r\nx\r\n:0\r\n"),
        Ok(Some((Reply::Confirm, _)))
    ));
}

#[test]
fn an_error_reply_is_read_as_one() {
    let (reply, len) = parse(b"-WRONGPASS invalid username-password pair\r\n*1")
        .unwrap()
        .unwrap();
    assert_eq!(reply, Reply::Error("WRONGPASS invalid username-password pair".into()));
    assert_eq!(len, 43);
}

#[test]
fn bad_input_ends_the_connection_instead_of_being_guessed() {
    for bad in [
        &b"$5\r\nhello\r\n"[..],
        b"*9\r\n",
        b"*x\r\n",
        b"*3\r\n$7\r\nmessage\r\n$-5x\r\n",
        b"*3\r\n$7\r\nmessage\r\n$1\r\nab\r\n",
        b"*3\r\n$7\r\nmessage\r\n$99999999999\r\n",
        b"*3\r\n$7\r\nmessage\r\n%1\r\n",
    ] {
        assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn a_message_with_an_empty_channel_is_read() {
    let (msgs, _) = read_all(&message(b"", b"x")).unwrap();
    assert_eq!(msgs, vec![(Vec::new(), None, b"x".to_vec())]);
}

proptest! {
    /// Any cut of a stream of replies: everything before the cut that is complete is read,
    /// and the reply it cuts waits for more bytes (`Ok(None)`), never an error.
    #[test]
    fn every_prefix_waits_for_the_rest(
        msgs in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..20), prop::collection::vec(any::<u8>(), 0..300), any::<bool>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = Vec::new();
        for (channel, payload, pattern) in &msgs {
            bytes.extend(if *pattern { pmessage(b"ws:*", channel, payload) } else { message(channel, payload) });
        }
        let (read, _) = read_all(&bytes).unwrap();
        prop_assert_eq!(read.len(), msgs.len());
        for (got, (channel, payload, pattern)) in read.iter().zip(&msgs) {
            prop_assert_eq!(&got.0, channel);
            prop_assert_eq!(&got.2, payload);
            prop_assert_eq!(got.1.is_some(), *pattern);
        }
        let cut = cut.index(bytes.len());
        let mut at = 0;
        while let Some((_, len)) = parse(&bytes[at..cut]).unwrap() {
            at += len;
        }
        prop_assert!(at <= cut);
    }
}

/// A `message` on `ws:c` as the connection reads it.
fn read_message(payload: &[u8]) -> PubMsg {
    let bytes = message(b"ws:c", payload);
    let Some((
        Reply::Message {
            channel,
            pattern,
            payload,
        },
        _,
    )) = parse(&bytes).unwrap()
    else {
        panic!("not read as a message");
    };
    PubMsg::Read {
        buf: Bytes::from(bytes),
        channel,
        pattern,
        payload,
    }
}

/// The payload of `Holding::next`'s message.
fn next_payload(h: &mut Holding) -> Option<Result<Vec<u8>, BrokerError>> {
    h.next().map(|r| r.map(|m| m.payload().to_vec()))
}

#[test]
fn held_messages_come_out_in_order_within_their_bounds() {
    let one = message(b"ws:c", b"1").len();
    // Exactly at both bounds: 3 messages, and their bytes.
    let mut h = Holding::with_cap((3, 3 * one));
    for p in [b"1", b"2", b"3"] {
        h.hold(read_message(p));
    }
    for p in [b"1", b"2", b"3"] {
        assert_eq!(next_payload(&mut h).unwrap().unwrap(), p.to_vec());
    }
    assert!(
        next_payload(&mut h).is_none(),
        "nothing more: the reader goes to the socket"
    );
    assert_eq!(h.size(), (0, 0));
}

#[test]
fn past_either_bound_the_held_messages_are_dropped_and_the_connection_ends() {
    let one = message(b"ws:c", b"1").len();
    for (what, cap) in [("count", (2, 1 << 20)), ("bytes", (100, 2 * one))] {
        let mut h = Holding::with_cap(cap);
        for p in [b"1", b"2", b"3", b"4"] {
            h.hold(read_message(p));
        }
        assert!(
            matches!(next_payload(&mut h), Some(Err(_))),
            "{what}: the first read after the bound is the connection's end, not a held message"
        );
        assert_eq!(h.size(), (0, 0), "{what}: nothing stays held");
        assert!(next_payload(&mut h).is_none(), "{what}: the end is told once");
    }
}

#[test]
fn an_end_is_told_after_the_messages_held_before_it() {
    let mut h = Holding::default();
    h.hold(read_message(b"1"));
    h.end(unavailable("closed"));
    h.hold(read_message(b"after the end"));
    assert_eq!(next_payload(&mut h).unwrap().unwrap(), b"1".to_vec());
    assert!(matches!(next_payload(&mut h), Some(Err(_))));
    assert!(next_payload(&mut h).is_none());
}
