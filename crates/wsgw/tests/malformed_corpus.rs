//! The corpus of malformed client frames (`tests/corpus/malformed_frames.txt`), sent to a real
//! in-process node over a real socket: every frame is answered with an `error`, the socket stays
//! open, and a bystander keeps receiving events the whole time.

use crate::common;

use common::*;
use serde_json::json;
use wsgw::Config;

const CORPUS: &str = include_str!("corpus/malformed_frames.txt");

fn corpus() -> Vec<&'static str> {
    CORPUS
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect()
}

#[tokio::test]
async fn every_malformed_frame_gets_an_error_and_the_node_keeps_serving_everyone() {
    // The flood controls are off so that they do not decide the outcome: this is about how each
    // malformed frame is answered (a_flooding_client_… covers the limits).
    let node = Node::start(Config {
        rate_limit_per_s: 0,
        rate_limit_strikes: 0,
        ..config()
    })
    .await;
    let (mut fuzzer, _) = node.connect(&token("fuzzer", &["a"], &["a"])).await;
    let (mut bystander, _) = node.connect(&token("bystander", &["news"], &[])).await;
    bystander
        .send(json!({"type": "subscribe", "channel": "news", "request_id": "s"}))
        .await;
    bystander.expect("subscribed").await;

    let lines = corpus();
    assert!(lines.len() >= 50, "the corpus has {} frames", lines.len());
    for (n, line) in lines.iter().enumerate() {
        fuzzer.send_text(line).await;
        let answer = fuzzer
            .next()
            .await
            .unwrap_or_else(|| panic!("the socket ended ({:?}) after frame {n}: {line}", fuzzer.closed));
        assert_eq!(answer["type"], "error", "frame {n}: {line}\nanswer: {answer}");
        assert!(answer["code"].is_string(), "frame {n}: {answer}");

        // The node still serves others after each one.
        node.publish("news", &format!("after-{n}"), json!(null)).await;
        assert_eq!(
            bystander.expect("event").await["event"],
            format!("after-{n}"),
            "after frame {n}"
        );
    }

    // The fuzzed socket itself still works: the largest event id a client can write is a
    // valid, if useless, position (it once overflowed computing its successor).
    fuzzer
        .send(json!({"type": "subscribe", "channel": "a", "request_id": "top",
                     "last_event_id": "18446744073709551615-18446744073709551615"}))
        .await;
    let s = fuzzer.expect("subscribed").await;
    assert_eq!(
        (s["request_id"].as_str(), s["recovered"].as_bool()),
        (Some("top"), Some(false)),
        "{s}"
    );
    fuzzer.send(json!({"type": "ping", "ts": 7})).await;
    assert_eq!(fuzzer.expect("pong").await["ts"], 7);
    node.stop().await;
}
