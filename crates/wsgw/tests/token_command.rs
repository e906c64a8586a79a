//! `wsgw token`: an operator prints a token with the binary, and a node with the same secret
//! takes it with exactly the grants asked for.

use crate::common;

use std::process::Command;

use common::{Node, SECRET, config};
use serde_json::json;

fn wsgw_token(args: &[&str], secret: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgw"));
    cmd.env_clear().arg("token").args(args);
    if let Some(s) = secret {
        cmd.env("WSGW_JWT_SECRET", s);
    }
    cmd.output().expect("wsgw runs")
}

#[tokio::test]
async fn a_printed_token_connects_with_the_grants_it_names() {
    let out = wsgw_token(
        &[
            "--sub",
            "alice",
            "--channels",
            "chat:*,doc:1",
            "--publish",
            "chat:*",
            "--ttl",
            "2h",
        ],
        Some(SECRET),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let node = Node::start(config()).await;
    let (mut c, welcome) = node.connect(&token).await;
    assert_eq!(welcome["user_id"], "alice");
    c.send(json!({"type":"subscribe","channel":"chat:9","request_id":1}))
        .await;
    assert_eq!(c.expect("subscribed").await["channel"], "chat:9");
    c.send(json!({"type":"subscribe","channel":"doc:2","request_id":2}))
        .await;
    assert_eq!(c.expect("error").await["code"], "forbidden");
    c.send(json!({"type":"publish","channel":"chat:9","event":"hi","data":1,"request_id":3}))
        .await;
    // Subscribed to it, the publisher gets its own event and the ack, in either order.
    let mut acked = false;
    while !acked {
        let f = c.next().await.expect("a frame");
        acked = f["type"] == "ack";
        assert!(["ack", "event", "ping"].contains(&f["type"].as_str().unwrap()), "{f}");
    }

    // exp is two hours out.
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&base64_url(payload)).unwrap();
    let ttl = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(ttl, 7200);
}

#[test]
fn without_a_secret_it_refuses_with_the_usage_code() {
    let out = wsgw_token(&["--sub", "alice"], None);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("WSGW_JWT_SECRET"));
    let bad_ttl = wsgw_token(&["--sub", "alice", "--ttl", "soon"], Some(SECRET));
    assert!(!bad_ttl.status.success());
}

/// Decodes unpadded base64url (the JWT payload), without a dependency for one test.
fn base64_url(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        _ => 63,
    };
    let bits: Vec<u8> = s.bytes().map(val).collect();
    bits.chunks(4)
        .flat_map(|q| {
            let n = q.iter().fold(0u32, |acc, v| (acc << 6) | u32::from(*v)) << (6 * (4 - q.len()));
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            bytes[..q.len().saturating_sub(1)].to_vec()
        })
        .collect()
}
