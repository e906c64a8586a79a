//! Property tests (proptest, stable Rust) of what the gateway reads from clients: client frames,
//! channel and pattern names, and event ids. Each property holds for every input: no panic, and
//! nothing invalid accepted. Case counts stay modest so `cargo test` stays fast; a failing case
//! is shrunk and printed, and proptest records its seed under `proptest-regressions/`.

use proptest::prelude::*;
use serde_json::{Value, json};
use wsgw_protocol::{
    ChannelKind, ClientFrame, EventId, MAX_CHANNEL_LEN, classify, glob_intersects, glob_match, is_reserved,
    parse_client_frame, validate_channel, validate_publish,
};

fn cases(n: u32) -> ProptestConfig {
    let default = ProptestConfig::default();
    ProptestConfig {
        // A fixed seed, so the suite is the same on every run; `PROPTEST_RNG_SEED=<n>` explores
        // others (CONTRIBUTING.md).
        rng_seed: match std::env::var_os("PROPTEST_RNG_SEED") {
            Some(_) => default.rng_seed,
            None => proptest::test_runner::RngSeed::Fixed(20_261_201),
        },
        cases: n,
        // No files written next to the sources on failure from a read-only checkout.
        failure_persistence: None,
        ..default
    }
}

/// Arbitrary JSON, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects shaped like client frames: a known or unknown `type`, and fields that are right,
/// wrong-typed or missing.
fn frame_like() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        Just("subscribe"),
        Just("unsubscribe"),
        Just("publish"),
        Just("request"),
        Just("ping"),
        Just("pong"),
        Just("refresh"),
        Just("history"),
        Just("presence"),
        Just("welcome"),
        Just(""),
    ];
    let field = prop_oneof![
        Just("channel"),
        Just("request_id"),
        Just("last_event_id"),
        Just("history"),
        Just("event"),
        Just("data"),
        Just("echo"),
        Just("action"),
        Just("ts"),
        Just("token"),
        Just("since"),
        Just("limit"),
    ];
    let id_text = prop_oneof![
        "[0-9]{1,22}(-[0-9]{1,22})?",
        ".{0,10}",
        Just("18446744073709551615-18446744073709551615".to_owned())
    ];
    let value = prop_oneof![
        json_value(),
        id_text.prop_map(Value::from),
        "[a-z:*]{0,10}".prop_map(Value::from)
    ];
    (kind, prop::collection::btree_map(field, value, 0..6)).prop_map(|(kind, fields)| {
        let mut obj: serde_json::Map<String, Value> = fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        obj.insert("type".to_owned(), Value::from(kind));
        Value::Object(obj)
    })
}

/// Mangles text the way a broken or hostile client would: cut, byte flips, inserted junk.
fn mangled(text: String) -> impl Strategy<Value = String> {
    let len = text.len();
    (0..=len, 0..=len, ".{0,4}").prop_map(move |(a, b, junk)| {
        let (a, b) = (a.min(b), a.max(b));
        let mut bytes = text.as_bytes().to_vec();
        bytes.splice(a..b, junk.bytes());
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Accepted frames re-serialize and re-parse to the same frame.
fn round_trips(frame: &ClientFrame) {
    let again = parse_client_frame(&frame.to_json()).unwrap_or_else(|e| panic!("{frame:?} re-parses: {e:?}"));
    assert_eq!(&again, frame);
}

proptest! {
    #![proptest_config(cases(400))]

    #[test]
    fn any_text_parses_or_is_refused_without_panic(text in ".{0,200}") {
        if let Ok(frame) = parse_client_frame(&text) {
            round_trips(&frame);
        }
    }

    #[test]
    fn frame_shaped_json_parses_or_is_refused_and_round_trips(v in frame_like()) {
        let text = v.to_string();
        match parse_client_frame(&text) {
            Ok(frame) => {
                round_trips(&frame);
                // Whatever was accepted has the type it said.
                prop_assert_eq!(v["type"].as_str(), Some(type_of(&frame)));
            }
            Err((_, request_id)) => {
                // The error echoes the frame's own request_id (as the text reads: serde_json's
                // float parsing may differ from the generated value in the last bit), never
                // anything else.
                let sent: Value = serde_json::from_str(&text).expect("valid JSON");
                prop_assert_eq!(request_id.as_ref(), sent.get("request_id"));
            }
        }
    }

    #[test]
    fn mangled_frames_never_panic(text in frame_like().prop_map(|v| v.to_string()).prop_flat_map(mangled)) {
        if let Ok(frame) = parse_client_frame(&text) {
            round_trips(&frame);
        }
    }

    #[test]
    fn an_accepted_last_event_id_is_a_valid_event_id(v in frame_like()) {
        if let Ok(ClientFrame::Subscribe { last_event_id: Some(id), .. }) = parse_client_frame(&v.to_string()) {
            let text = v["last_event_id"].as_str().expect("a string id");
            prop_assert_eq!(text.parse::<EventId>(), Ok(id));
        }
    }
}

fn type_of(frame: &ClientFrame) -> &'static str {
    match frame {
        ClientFrame::Subscribe { .. } => "subscribe",
        ClientFrame::Unsubscribe { .. } => "unsubscribe",
        ClientFrame::Publish { .. } => "publish",
        ClientFrame::Request { .. } => "request",
        ClientFrame::Ping { .. } => "ping",
        ClientFrame::Pong {} => "pong",
        ClientFrame::Refresh { .. } => "refresh",
        ClientFrame::History { .. } => "history",
        ClientFrame::Presence { .. } => "presence",
    }
}

/// Channel-ish names: the valid alphabet, `*`, and a few bytes that are never valid.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z:*]{0,12}",
        2 => "(control|user|connection|broadcast)[:*a-z]{0,6}",
        1 => "[A-Za-z0-9_.:@=/*\\- #%\u{e9}\u{0}]{0,20}",
        1 => "[a-z]{250,260}",
    ]
}

fn valid_char(b: u8, pattern: bool) -> bool {
    b.is_ascii_alphanumeric() || b"_.:@=/-".contains(&b) || (pattern && b == b'*')
}

proptest! {
    #![proptest_config(cases(600))]

    #[test]
    fn validate_channel_accepts_exactly_the_documented_names(s in name(), pattern in any::<bool>()) {
        let want = !s.is_empty() && s.len() <= MAX_CHANNEL_LEN && s.bytes().all(|b| valid_char(b, pattern));
        let got = validate_channel(&s, pattern);
        prop_assert_eq!(got.is_ok(), want, "{:?} pattern={} -> {:?}", s, pattern, got);
        if let Ok(kind) = got {
            prop_assert_eq!(kind, classify(&s));
            prop_assert_eq!(kind == ChannelKind::Pattern, s.contains('*'));
        }
    }

    #[test]
    fn a_published_channel_is_valid_not_a_pattern_and_not_reserved(s in name(), event in ".{0,130}") {
        if validate_publish(&s, &event).is_ok() {
            prop_assert!(validate_channel(&s, false).is_ok());
            prop_assert!(!s.contains('*'));
            prop_assert!(!is_reserved(&s));
            prop_assert!(!event.is_empty() && event.len() <= 128);
        }
    }

    #[test]
    fn glob_match_is_glob_intersects_with_a_literal(p in "[ab:*]{0,8}", t in "[ab:]{0,8}") {
        prop_assert_eq!(glob_match(&p, &t), glob_intersects(&p, &t), "{:?} vs {:?}", p, t);
        prop_assert_eq!(glob_match(&t, &t), true);
        prop_assert!(glob_match("*", &t));
    }

    #[test]
    fn glob_intersects_is_symmetric_and_witnessed(a in "[ab*]{0,6}", b in "[ab*]{0,6}", w in "[ab]{0,8}") {
        prop_assert_eq!(glob_intersects(&a, &b), glob_intersects(&b, &a));
        // A string both match proves the intersection.
        if glob_match(&a, &w) && glob_match(&b, &w) {
            prop_assert!(glob_intersects(&a, &b), "{:?} and {:?} both match {:?}", a, b, w);
        }
    }

    #[test]
    fn a_pattern_that_is_not_reserved_matches_no_reserved_channel(p in "[cao:ntrl*]{1,10}", t in "[a-z:]{0,6}") {
        // Every channel the pattern matches: when one of them is reserved, so is the pattern.
        for candidate in [t.clone(), format!("control{t}"), format!("control:{t}"), "control".to_owned()] {
            if glob_match(&p, &candidate) && is_reserved(&candidate) {
                prop_assert!(is_reserved(&p), "{:?} matches reserved {:?} but is not reserved", p, candidate);
            }
        }
    }
}

/// Any u64, with the edges (0, 1, u64::MAX - 1, u64::MAX) often.
fn edgy_u64() -> impl Strategy<Value = u64> {
    prop_oneof![3 => any::<u64>(), 1 => prop::sample::select(vec![0, 1, u64::MAX - 1, u64::MAX])]
}

proptest! {
    #![proptest_config(cases(600))]

    #[test]
    fn event_ids_round_trip(ms in edgy_u64(), seq in edgy_u64()) {
        let id = EventId::new(ms, seq);
        prop_assert_eq!(id.to_string().parse::<EventId>(), Ok(id));
        prop_assert_eq!(serde_json::from_value::<EventId>(json!(id.to_string())).ok(), Some(id));
        // The successor never panics, even at the very top.
        prop_assert!(id.next() >= id);
    }

    #[test]
    fn any_text_is_an_event_id_only_in_the_documented_form(s in "[0-9-]{0,44}|.{0,24}") {
        if let Ok(id) = s.parse::<EventId>() {
            let (ms, seq) = s.split_once('-').unwrap_or((&s, "0"));
            let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
            prop_assert!(digits(ms) && digits(seq), "{:?} accepted", s);
            prop_assert_eq!((ms.parse::<u64>().ok(), seq.parse::<u64>().ok()), (Some(id.ms), Some(id.seq)));
            prop_assert!(id.next() >= id);
        }
    }
}
