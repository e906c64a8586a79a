//! A backend worker, as a real service would write one: reads client requests from the
//! `ws:inbound` stream with a consumer group, answers with `response` frames published on
//! `ws:connection:<id>`, acknowledges with XACK, and claims entries a crashed worker left
//! behind with XAUTOCLAIM.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

pub const STREAM: &str = "ws:inbound";
pub const GROUP: &str = "workers";

/// One request as a worker reads it.
#[derive(Debug, Clone)]
pub struct Request {
    pub entry_id: String,
    pub fields: HashMap<String, String>,
}

impl Request {
    pub fn connection_id(&self) -> &str {
        &self.fields["connection_id"]
    }
    pub fn action(&self) -> &str {
        &self.fields["action"]
    }
    pub fn request_id(&self) -> Value {
        serde_json::from_str(&self.fields["request_id"]).unwrap()
    }
    pub fn data(&self) -> Value {
        serde_json::from_str(&self.fields["data"]).unwrap()
    }
}

pub async fn create_group(c: &mut MultiplexedConnection) {
    let r: redis::RedisResult<String> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(c)
        .await;
    if let Err(e) = r {
        assert!(e.to_string().contains("BUSYGROUP"), "XGROUP CREATE: {e}");
    }
}

fn parse_entries(v: &redis::Value) -> Vec<Request> {
    // [[id, [k, v, k, v…]], …]
    let mut out = Vec::new();
    if let redis::Value::Array(entries) = v {
        for e in entries {
            let redis::Value::Array(parts) = e else { continue };
            let (Some(id), Some(redis::Value::Array(kv))) = (parts.first(), parts.get(1)) else {
                continue;
            };
            let id: String = redis::from_redis_value_ref(id).unwrap();
            let mut fields = HashMap::new();
            for pair in kv.chunks(2) {
                let k: String = redis::from_redis_value_ref(&pair[0]).unwrap();
                let v: String = redis::from_redis_value_ref(&pair[1]).unwrap();
                fields.insert(k, v);
            }
            out.push(Request { entry_id: id, fields });
        }
    }
    out
}

/// New requests for `consumer` (XREADGROUP … >), waiting up to `block_ms`.
pub async fn read_new(c: &mut MultiplexedConnection, consumer: &str, block_ms: u64) -> Vec<Request> {
    let v: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(10)
        .arg("BLOCK")
        .arg(block_ms)
        .arg("STREAMS")
        .arg(STREAM)
        .arg(">")
        .query_async(c)
        .await
        .unwrap();
    match v {
        redis::Value::Nil => Vec::new(),
        // [[stream, entries]] (RESP2) or a map (RESP3)
        redis::Value::Array(streams) => streams
            .iter()
            .flat_map(|s| match s {
                redis::Value::Array(parts) => parts.get(1).map(parse_entries).unwrap_or_default(),
                _ => Vec::new(),
            })
            .collect(),
        redis::Value::Map(m) => m.iter().flat_map(|(_, entries)| parse_entries(entries)).collect(),
        other => panic!("XREADGROUP: {other:?}"),
    }
}

/// Entries idle for `min_idle_ms` in another consumer's pending list, taken over (XAUTOCLAIM).
pub async fn claim_stale(c: &mut MultiplexedConnection, consumer: &str, min_idle_ms: u64) -> Vec<Request> {
    let v: redis::Value = redis::cmd("XAUTOCLAIM")
        .arg(STREAM)
        .arg(GROUP)
        .arg(consumer)
        .arg(min_idle_ms)
        .arg("0-0")
        .arg("COUNT")
        .arg(10)
        .query_async(c)
        .await
        .unwrap();
    match v {
        redis::Value::Array(parts) => parts.get(1).map(parse_entries).unwrap_or_default(),
        other => panic!("XAUTOCLAIM: {other:?}"),
    }
}

/// Publishes one `response` frame to the asking socket.
pub async fn respond(c: &mut MultiplexedConnection, req: &Request, data: Value, more: bool) {
    let frame = json!({"type": "response", "request_id": req.request_id(), "ok": true, "data": data, "more": more});
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("ws:connection:{}", req.connection_id()))
        .arg(frame.to_string())
        .query_async(c)
        .await
        .unwrap();
}

pub async fn ack(c: &mut MultiplexedConnection, req: &Request) {
    let _: i64 = redis::cmd("XACK")
        .arg(STREAM)
        .arg(GROUP)
        .arg(&req.entry_id)
        .query_async(c)
        .await
        .unwrap();
}

/// A worker task answering `echo` with the request's data and `stream` with three chunks and a
/// final frame. Runs until aborted.
pub fn spawn_worker(mut c: MultiplexedConnection, consumer: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        create_group(&mut c).await;
        loop {
            let mut batch = claim_stale(&mut c, consumer, 300).await;
            batch.extend(read_new(&mut c, consumer, 100).await);
            for req in batch {
                match req.action() {
                    "stream" => {
                        for i in 0..3 {
                            respond(&mut c, &req, json!({"chunk": i}), true).await;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        respond(&mut c, &req, json!({"done": true}), false).await;
                    }
                    _ => respond(&mut c, &req, req.data(), false).await,
                }
                ack(&mut c, &req).await;
            }
        }
    })
}

/// New requests for `consumer`, waiting (with the test deadline) until there is at least one.
pub async fn read_at_least_one(c: &mut MultiplexedConnection, consumer: &str) -> Vec<Request> {
    let deadline = tokio::time::Instant::now() + super::DEADLINE;
    loop {
        let got = read_new(c, consumer, 100).await;
        if !got.is_empty() {
            return got;
        }
        assert!(tokio::time::Instant::now() < deadline, "no request reached {STREAM}");
    }
}
