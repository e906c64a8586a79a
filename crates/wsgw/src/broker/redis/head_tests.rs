use proptest::prelude::*;
use proptest::sample::{Index, select};

use super::*;

fn serde(body: &str) -> Option<Head<'_>> {
    serde_json::from_str(body).ok()
}

/// Frames as the Function, the HTTP API and channel presence write them, and a few a backend
/// could write by hand: the quick pass must read every one of them itself.
const WRITTEN: &[&str] = &[
    r#"{"type":"event","event_id":"1700000000000-7","channel":"room:1","event":"msg","data":{"text":"hi"},"ts":1700000000000}"#,
    r#"{"type":"event","event_id":"3~1700000000000-0","channel":"user:42","event":"m","data":[1,-2.5,3e7,0,-0.0,1E-9,true,false,null,"x"],"ts":0}"#,
    r#"{"type":"event","event_id":"17-0","channel":"c","data":{"a":{"b":[{"c":"\"q\" \\ \/ \b\f\n\r\t \u00e9\ud83d\ude00"}]}},"ts":17}"#,
    r#"{"type":"event","event_id":null,"channel":"c","data":"é ✓ 😀","ts":null,"more":false}"#,
    "{ \"type\" : \"join\" ,\n \"channel\":\"room:1\",\t\"data\":{}, \"ts\":5 }\r\n",
    r#"{"type":"leave","channel":"room:1","data":{"user":"u","conn":"c-1"}}"#,
    r#"{"channel":"room:1","type":"event","data":[],"more":true}"#,
    r#"{"type":"event","channel":"","data":{}}"#,
    r#"{"type":"ping"}"#,
    r#"{"type":"event","channel":"connection:0b9f7a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b","data":"a string longer than a few words, to be read eight bytes at a time","ts":1}"#,
];

/// Frames the quick pass hands to serde_json, each for a reason of its own.
const LEFT_TO_SERDE: &[&str] = &[
    r#"{"type":"event","channel":"a\/b","data":{}}"#, // an escape in a field read
    r#"{"type":"ev\u0065nt","channel":"c","data":{}}"#, // the same in `type`
    r#"{"typ\u0065":"event","channel":"c"}"#,         // an escape in a key
    r#"{"type":"event","data":{"k\u0065y":1},"channel":"c"}"#, // in a nested key
    r#"{"type":"event","type":"event","channel":"c"}"#, // a repeated field
    r#"{"type":"response","request_id":"r-1","more":true}"#, // a request id
    r#"{"type":"event","channel":"c","ts":1.5}"#,     // a fraction where a u64 goes
    r#"{"type":"event","channel":"c","ts":-1}"#,
    r#"{"type":"event","channel":"c","ts":18446744073709551616}"#,
    r#"{"type":"event","channel":"c","ts":01}"#,
    r#"{"type":"event","channel":"c","event_id":"x-1"}"#, // not an event id
    r#"{"type":"event","channel":"c","more":null}"#,
    r#"{"type":"event","channel":"c","data":{}} x"#, // text after the object
    r#"{"type":"event","channel":"c","data":{},}"#,  // a trailing comma
    r#"{"type":"event","channel":"c","data":[1,]}"#,
    r#"{"type":"event","channel":"c","data":"\x"}"#, // an unknown escape
    r#"{"type":"event","channel":"c","data":"\u12g4"}"#,
    r#"{"type":"event","channel":"c","data":nul}"#,
    r#"{"type":"event","channel":"c","data":-}"#,
    r#"{"type":"event","channel":"c","data":1.}"#,
    r#"{"type":"event","channel":"c","data":1e}"#,
    r#"{"type":"event","channel":"c","data":01}"#, // a leading zero
    r#"{"type":"event","channel":"c","data":[-00]}"#,
    r#"{"channel":"c"}"#, // no type
    "{}",
    "[\"event\"]", // serde reads a struct from an array too
    "",
    "\"event\"",
    "{\"type\":\"event\",\"data\":\"a\u{1}b\"}", // a raw control character
];

#[test]
fn the_quick_pass_reads_what_gateways_and_backends_write_as_serde_does() {
    for body in WRITTEN {
        let quick = quick(body);
        assert!(quick.is_some(), "the quick pass gave up on {body}");
        assert_eq!(quick, serde(body), "{body}");
    }
    let head = quick(WRITTEN[1]).unwrap();
    assert_eq!(head.event_id, Some("3~1700000000000-0".parse().unwrap()));
    assert_eq!(head.channel.as_deref(), Some("user:42"));
    assert_eq!((head.kind.as_ref(), head.ts, head.more), ("event", Some(0), false));
}

#[test]
fn what_the_quick_pass_is_not_sure_of_is_serdes_to_read() {
    for body in LEFT_TO_SERDE {
        assert_eq!(quick(body), None, "the quick pass read {body}");
        assert_eq!(read(body), serde(body), "{body}");
    }
    // Some of them serde_json reads: the fallback is not only for rejects.
    let escaped = read(LEFT_TO_SERDE[0]).expect("serde_json reads an escaped channel");
    assert_eq!(escaped.channel.as_deref(), Some("a/b"));
    let response = read(LEFT_TO_SERDE[5]).expect("serde_json reads a response");
    assert_eq!(response.request_id, Some(serde_json::json!("r-1")));
    assert!(response.more);
}

#[test]
fn nesting_past_the_quick_limit_is_left_to_serde() {
    let deep = |n: usize| format!(r#"{{"type":"event","data":{}1{}}}"#, "[".repeat(n), "]".repeat(n));
    let shallow = deep(MAX_DEPTH as usize);
    assert!(quick(&shallow).is_some());
    let deeper = deep(MAX_DEPTH as usize + 1);
    assert_eq!(quick(&deeper), None);
    assert!(read(&deeper).is_some(), "serde_json reads it");
    let deepest = deep(1000);
    assert!(read(&deepest).is_some(), "serde_json skips a field at any depth");
}

/// What a mutation may put into a frame: JSON's punctuation, escapes, digits, the letters of its
/// literals, whitespace, a control character and characters of 2 to 4 bytes.
const ALPHABET: &[char] = &[
    '{', '}', '[', ']', '"', ':', ',', '\\', '/', 'u', '0', '1', '9', '.', 'e', 'E', '-', '+', 't', 'f', 'n', 'l', ' ',
    '\n', '\u{1}', 'é', '✓', '😀', 'a',
];

fn mutate(base: &str, edits: &[(Index, u8, char)]) -> String {
    let mut chars: Vec<char> = base.chars().collect();
    for (at, op, c) in edits {
        let i = at.index(chars.len() + 1);
        match op {
            0 => chars.insert(i, *c),
            1 if i < chars.len() => {
                chars.remove(i);
            }
            _ if i < chars.len() => chars[i] = *c,
            _ => chars.push(*c),
        }
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// The property the node relies on: whatever the text, the head read is serde_json's, and
    /// the quick pass, when it answers, answers as serde_json does.
    #[test]
    fn any_text_reads_as_serde_json_reads_it(
        base in select(WRITTEN.iter().chain(LEFT_TO_SERDE).copied().collect::<Vec<_>>()),
        edits in prop::collection::vec((any::<Index>(), 0u8..3, select(ALPHABET)), 0..4),
    ) {
        let body = mutate(base, &edits);
        if let Some(quick) = quick(&body) {
            prop_assert_eq!(Some(quick), serde(&body), "quick pass on {}", body);
        }
        prop_assert_eq!(read(&body), serde(&body), "{}", body);
    }

    /// `data` built like JSON, from pieces that are JSON or nearly: numbers with and without
    /// leading zeros, fractions or exponents, strings with any escape, literals and misspelled
    /// ones, arrays and objects, some with a trailing comma.
    #[test]
    fn any_data_reads_as_serde_json_reads_it(data in nearly_json()) {
        let body = format!(r#"{{"type":"event","channel":"c","data":{data}}}"#);
        if let Some(quick) = quick(&body) {
            prop_assert_eq!(Some(quick), serde(&body), "quick pass on {}", body);
        }
        prop_assert_eq!(read(&body), serde(&body), "{}", body);
    }
}

fn nearly_json() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        r"-?(0|[1-9][0-9]{0,3}|0[0-9])(\.[0-9]{0,2})?([eE][+-]?[0-9]{0,2})?",
        r#""([a-z\u{e9}]|\\[\"\\/bfnrtux]|\\u[0-9a-fA-G]{0,4})*""#,
        select(vec!["true", "false", "null", "nul", "tru", "\"\"", "\"\\\""]).prop_map(String::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        let items = prop::collection::vec(inner, 0..4);
        prop_oneof![
            (items.clone(), any::<bool>()).prop_map(|(v, comma)| format!(
                "[{}{}]",
                v.join(","),
                if comma { "," } else { "" }
            )),
            (items, r#""[a-z]{0,2}""#, any::<bool>()).prop_map(|(v, key, colon)| {
                let sep = if colon { ":" } else { " " };
                let fields: Vec<String> = v.iter().map(|x| format!("{key}{sep}{x}")).collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}
