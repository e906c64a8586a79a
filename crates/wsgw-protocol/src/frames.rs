//! JSON frames between clients and the gateway.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::EventId;
use crate::PresenceClient;

/// A frame a client sends to the gateway. Both ways: the gateway parses it
/// ([`parse_client_frame`]), clients build it ([`ClientFrame::to_json`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Subscribe to a topic or pattern.
    Subscribe {
        /// Channel name, or a pattern containing `*`.
        channel: String,
        /// Echoed in the answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<Value>,
        /// Replay this channel's events after this id first.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_event_id: Option<EventId>,
        /// Send the channel's last N events first.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        history: Option<u32>,
    },
    /// Leave a topic or pattern.
    Unsubscribe {
        /// Channel name or pattern, as subscribed.
        channel: String,
        /// Echoed in the answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<Value>,
    },
    /// Publish an event (durable: it gets an `event_id`).
    Publish {
        /// Target channel (no patterns).
        channel: String,
        /// Event name.
        event: String,
        /// Any JSON payload.
        #[serde(default)]
        data: Value,
        /// Echoed in the `ack`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<Value>,
        /// `false`: do not deliver the event back to the publishing socket.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        echo: Option<bool>,
    },
    /// A request for a backend (forwarded; see the protocol's section 6).
    Request {
        /// What the backend should do.
        action: String,
        /// Any JSON payload.
        #[serde(default)]
        data: Value,
        /// Correlates the backend's `response` frames.
        request_id: Value,
    },
    /// Application-level ping; answered with `pong`.
    Ping {
        /// Echoed in the `pong`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ts: Option<Value>,
    },
    /// Answer to the server's `ping`; counts as liveness.
    Pong {},
    /// Read a channel's history (a read: subscriptions and the cursor stay as they are).
    History {
        /// Channel name (no patterns).
        channel: String,
        /// Events after this id (the oldest `limit` of them); absent: the newest `limit`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<EventId>,
        /// Most events to return (at most the gateway's `max_replay`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        /// Echoed in the answer.
        request_id: Value,
    },
    /// Who is in a channel tracked for presence (`WSGW_PRESENCE_CHANNELS`); allowed where a
    /// subscribe would be. Answered with a `presence` frame.
    Presence {
        /// Channel name (no patterns).
        channel: String,
        /// Echoed in the answer.
        request_id: Value,
    },
    /// Replace the connection's token.
    Refresh {
        /// The new JWT.
        token: String,
        /// Echoed in the `ack`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<Value>,
    },
}

impl ClientFrame {
    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

const CLIENT_TYPES: &[&str] = &[
    "subscribe",
    "unsubscribe",
    "publish",
    "request",
    "ping",
    "pong",
    "refresh",
    "history",
    "presence",
];

/// Why a client frame was refused; maps to an `error` frame.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    /// Not JSON at all.
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// JSON, but no string `type` or not an object.
    #[error("frame must be a JSON object with a string \"type\"")]
    MissingType,
    /// A `type` the gateway does not know.
    #[error("unknown frame type {0:?}")]
    UnknownType(String),
    /// A known type with missing or ill-typed fields.
    #[error("invalid {kind} frame: {message}")]
    Invalid {
        /// The frame's type.
        kind: String,
        /// What serde said.
        message: String,
    },
}

/// Parses a client text frame. On failure also returns the frame's `request_id`, when one
/// could be read, so that the error frame can echo it.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, (FrameError, Option<Value>)> {
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(frame) => Ok(frame),
        Err(first) => {
            let value: Value = match serde_json::from_str(text) {
                Ok(v) => v,
                Err(e) => return Err((FrameError::Malformed(e.to_string()), None)),
            };
            let request_id = value.get("request_id").cloned();
            let Some(kind) = value.get("type").and_then(Value::as_str) else {
                return Err((FrameError::MissingType, request_id));
            };
            if !CLIENT_TYPES.contains(&kind) {
                let kind: String = kind.chars().take(64).collect();
                return Err((FrameError::UnknownType(kind), request_id));
            }
            Err((
                FrameError::Invalid {
                    kind: kind.to_owned(),
                    message: first.to_string(),
                },
                request_id,
            ))
        }
    }
}

/// The error codes of `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Bad or missing token.
    Unauthorized,
    /// The token expired.
    TokenExpired,
    /// The token does not allow this.
    Forbidden,
    /// Malformed or invalid frame.
    BadRequest,
    /// Frame larger than `max_message_bytes`.
    TooLarge,
    /// Inbound rate limit exceeded.
    RateLimited,
    /// No such thing.
    NotFound,
    /// The gateway failed; not the client's fault.
    Internal,
    /// A backend did not answer a `request` in time.
    Timeout,
    /// The gateway cannot do it now (broker unavailable).
    Unavailable,
    /// A code this version does not know (a newer gateway): read as this, never sent.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The wire name (`bad_request`, …); also used as a metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::TokenExpired => "token_expired",
            Self::Forbidden => "forbidden",
            Self::BadRequest => "bad_request",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::NotFound => "not_found",
            Self::Internal => "internal",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::Unknown => "unknown",
        }
    }
}

/// Heartbeat settings announced in `welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatInfo {
    /// The server pings this often.
    pub interval_ms: u64,
    /// Silence longer than this closes the connection with 4000.
    pub timeout_ms: u64,
}

/// The first frame of every authenticated connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// This connection's id (its `connection:<id>` channel).
    pub connection_id: String,
    /// The token's `sub`.
    pub user_id: String,
    /// The gateway node serving the socket.
    pub node: String,
    /// Whether a previous connection's identity and topics were restored.
    pub resumed: bool,
    /// `false` when the replay cannot promise completeness.
    pub recovered: bool,
    /// How many events were replayed after this frame.
    pub replayed: u64,
    /// Heartbeat settings.
    pub heartbeat: HeartbeatInfo,
    /// How long the identity and topics are kept after a disconnect.
    pub session_ttl_ms: u64,
    /// Topics restored by a resume (empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Restored patterns whose events were not replayed (patterns have no history of their
    /// own): `recovered` does not cover the channels reached only through them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_replayed: Vec<String>,
}

/// A frame the gateway sends to a client (all but `event`, which is encoded once per
/// publish by [`encode_event`]).
///
/// Both ways: the gateway serializes it; clients parse any frame they receive with
/// [`parse_server_frame`]. The gateway encodes `event` frames once per publish with
/// [`encode_event`] and forwards `response` frames as backends wrote them; the variants for
/// both are here so that clients read every frame through this one type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// First frame after a successful connect.
    Welcome(Welcome),
    /// A published event.
    Event(Event),
    /// A backend's answer to a client `request`.
    Response {
        /// The request's `request_id`.
        request_id: Value,
        /// Whether the backend succeeded.
        #[serde(default)]
        ok: bool,
        /// The answer's payload.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<Value>,
        /// The backend's error, when `ok` is false.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<Value>,
        /// More `response` frames for the same request follow.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        more: bool,
    },
    /// Answer to `subscribe`.
    Subscribed {
        /// The channel or pattern.
        channel: String,
        /// Echo of the request's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<Value>,
        /// `false` when the requested replay cannot be complete.
        recovered: bool,
        /// Events replayed after this frame.
        replayed: u64,
    },
    /// Answer to a client `history` frame.
    History {
        /// The channel read.
        channel: String,
        /// Echo of the request's id.
        request_id: Value,
        /// The events, in id order, each the exact frame a subscriber receives.
        events: Vec<EventFrame>,
        /// `false` when events after `since` may have been lost (trimmed, expired, lost).
        recovered: bool,
    },
    /// A live socket may have missed events on these channels or patterns (an outage repair
    /// could not prove otherwise). The socket stays open; the client reloads their state.
    Gap {
        /// The channels and patterns concerned.
        channels: Vec<String>,
        /// Always `false`.
        recovered: bool,
    },
    /// Answer to `unsubscribe`, or notice that a subscription was removed.
    Unsubscribed {
        /// The channel or pattern.
        channel: String,
        /// Echo of the request's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<Value>,
        /// Why the server removed it, when the client did not ask.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Acknowledges a `publish` or `refresh`.
    Ack {
        /// Echo of the request's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<Value>,
        /// The published event's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<EventId>,
    },
    /// Something the client sent was refused.
    Error {
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
        /// Echo of the request's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<Value>,
    },
    /// A socket subscribed to a presence-tracked channel (ephemeral: no `event_id`, never
    /// replayed or kept in history).
    Join {
        /// The channel joined.
        channel: String,
        /// The joining socket's user (its token's `sub`).
        user_id: String,
        /// The joining socket's connection id.
        connection_id: String,
    },
    /// A socket left a presence-tracked channel: it unsubscribed, closed, or its node died
    /// (sent once the node's presence TTL ran out). Ephemeral, like `join`.
    Leave {
        /// The channel left.
        channel: String,
        /// The leaving socket's user.
        user_id: String,
        /// The leaving socket's connection id.
        connection_id: String,
    },
    /// Answer to a client `presence` frame: the channel's members, cluster-wide.
    Presence {
        /// The channel asked about.
        channel: String,
        /// Echo of the request's id.
        request_id: Value,
        /// The sockets subscribed to it (at most the gateway's cap, see docs/protocol.md).
        clients: Vec<PresenceClient>,
    },
    /// Server heartbeat.
    Ping {
        /// Server time, ms since the epoch.
        ts: u64,
    },
    /// Answer to a client `ping`.
    Pong {
        /// Echo of the client's `ts`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ts: Option<Value>,
    },
}

impl ServerFrame {
    /// Shorthand for an `error` frame.
    pub fn error(code: ErrorCode, message: impl Into<String>, request_id: Option<Value>) -> Self {
        Self::Error {
            code,
            message: message.into(),
            request_id,
        }
    }

    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{\"type\":\"error\",\"code\":\"internal\"}"))
    }
}

/// Parses any frame the gateway sends.
pub fn parse_server_frame(text: &str) -> Result<ServerFrame, serde_json::Error> {
    serde_json::from_str(text)
}

/// The fields of an `event` frame (the `event` variant of [`ServerFrame`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Absent for ephemeral events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<EventId>,
    /// The channel it was published on.
    pub channel: String,
    /// Event name.
    pub event: String,
    /// Payload.
    #[serde(default)]
    pub data: Value,
    /// Publish time, ms since the epoch.
    #[serde(default)]
    pub ts: u64,
}

/// An `event` frame as clients receive it; used to read frames that arrive from a broker
/// or a backend, and by clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventFrame {
    /// Always `"event"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Absent for ephemeral events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<EventId>,
    /// The channel it was published on.
    pub channel: String,
    /// Event name.
    pub event: String,
    /// Payload.
    #[serde(default)]
    pub data: Value,
    /// Publish time, ms since the epoch.
    #[serde(default)]
    pub ts: u64,
}

/// Encodes an `event` frame. `data` must be valid JSON text (it is embedded as is).
pub fn encode_event(event_id: Option<EventId>, channel: &str, event: &str, data: &RawValue, ts: u64) -> String {
    #[derive(Serialize)]
    struct Out<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        event_id: Option<EventId>,
        channel: &'a str,
        event: &'a str,
        data: &'a RawValue,
        ts: u64,
    }
    let out = Out {
        kind: "event",
        event_id,
        channel,
        event,
        data,
        ts,
    };
    serde_json::to_string(&out).unwrap_or_default()
}

/// Encodes a `history` answer around event frames kept as they are stored (each embedded as
/// is, so the events carry exactly the bytes a subscriber receives).
pub fn encode_history(channel: &str, request_id: &Value, events: &[&RawValue], recovered: bool) -> String {
    #[derive(Serialize)]
    struct Out<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        request_id: &'a Value,
        events: &'a [&'a RawValue],
        recovered: bool,
    }
    let out = Out {
        kind: "history",
        channel,
        request_id,
        events,
        recovered,
    };
    serde_json::to_string(&out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_client_frames() {
        let f = parse_client_frame(
            r#"{"type":"subscribe","channel":"project:1","request_id":7,"last_event_id":"5-1","extra":true}"#,
        )
        .unwrap();
        assert_eq!(
            f,
            ClientFrame::Subscribe {
                channel: "project:1".into(),
                request_id: Some(Value::from(7)),
                last_event_id: Some(EventId::new(5, 1)),
                history: None
            }
        );
        assert_eq!(parse_client_frame(r#"{"type":"pong"}"#).unwrap(), ClientFrame::Pong {});
    }

    #[test]
    fn classifies_bad_frames() {
        assert!(matches!(
            parse_client_frame("{nope").unwrap_err().0,
            FrameError::Malformed(_)
        ));
        assert_eq!(parse_client_frame("[1]").unwrap_err().0, FrameError::MissingType);
        let (e, rid) = parse_client_frame(r#"{"type":"dance","request_id":"r1"}"#).unwrap_err();
        assert_eq!(e, FrameError::UnknownType("dance".into()));
        assert_eq!(rid, Some(Value::from("r1")));
        assert!(matches!(
            parse_client_frame(r#"{"type":"subscribe"}"#).unwrap_err().0,
            FrameError::Invalid { .. }
        ));
        assert!(matches!(
            parse_client_frame(r#"{"type":"subscribe","channel":"a","last_event_id":"x"}"#)
                .unwrap_err()
                .0,
            FrameError::Invalid { .. }
        ));
    }

    #[test]
    fn encodes_events_and_server_frames() {
        let data = RawValue::from_string("{\"a\":1}".into()).unwrap();
        let text = encode_event(Some(EventId::new(10, 2)), "user:1", "hello", &data, 99);
        assert_eq!(
            text,
            r#"{"type":"event","event_id":"10-2","channel":"user:1","event":"hello","data":{"a":1},"ts":99}"#
        );
        let parsed: EventFrame = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed.event_id, Some(EventId::new(10, 2)));
        let eph = encode_event(None, "broadcast", "x", &data, 1);
        assert!(!eph.contains("event_id"));
        let err = ServerFrame::error(ErrorCode::RateLimited, "slow down", None).to_json();
        assert_eq!(err, r#"{"type":"error","code":"rate_limited","message":"slow down"}"#);
    }

    #[test]
    fn frames_go_both_ways() {
        let sub = ClientFrame::Subscribe {
            channel: "doc:9".into(),
            request_id: Some(Value::from(1)),
            last_event_id: Some(EventId::new(5, 0)),
            history: None,
        };
        assert_eq!(
            sub.to_json(),
            r#"{"type":"subscribe","channel":"doc:9","request_id":1,"last_event_id":"5-0"}"#
        );
        assert_eq!(parse_client_frame(&sub.to_json()).unwrap(), sub);
        assert_eq!(ClientFrame::Pong {}.to_json(), r#"{"type":"pong"}"#);

        let data = RawValue::from_string("[1]".into()).unwrap();
        let text = encode_event(Some(EventId::new(7, 1)), "doc:9", "e", &data, 7);
        let ServerFrame::Event(e) = parse_server_frame(&text).unwrap() else {
            panic!("an event")
        };
        assert_eq!(
            (e.event_id, e.channel.as_str(), e.data.clone()),
            (Some(EventId::new(7, 1)), "doc:9", serde_json::json!([1]))
        );
        for f in [
            ServerFrame::Gap {
                channels: vec!["t:*".into()],
                recovered: false,
            },
            ServerFrame::Subscribed {
                channel: "a".into(),
                request_id: None,
                recovered: true,
                replayed: 3,
            },
            ServerFrame::Pong { ts: None },
            ServerFrame::Ping { ts: 5 },
        ] {
            assert_eq!(parse_server_frame(&f.to_json()).unwrap(), f);
        }
        let history = ServerFrame::History {
            channel: "doc:9".into(),
            request_id: Value::from("h1"),
            events: vec![EventFrame {
                kind: "event".into(),
                event_id: Some(EventId::new(7, 1)),
                channel: "doc:9".into(),
                event: "e".into(),
                data: serde_json::json!([1]),
                ts: 7,
            }],
            recovered: false,
        };
        assert_eq!(parse_server_frame(&history.to_json()).unwrap(), history);
        let r = parse_server_frame(r#"{"type":"response","request_id":"r","ok":true,"data":1}"#).unwrap();
        assert!(matches!(
            r,
            ServerFrame::Response {
                ok: true,
                more: false,
                ..
            }
        ));
    }

    #[test]
    fn history_frames_go_both_ways() {
        let full = ClientFrame::History {
            channel: "doc:9".into(),
            since: Some(EventId::new(5, 0)),
            limit: Some(20),
            request_id: Value::from("h1"),
        };
        assert_eq!(
            full.to_json(),
            r#"{"type":"history","channel":"doc:9","since":"5-0","limit":20,"request_id":"h1"}"#
        );
        assert_eq!(parse_client_frame(&full.to_json()).unwrap(), full);
        let bare = ClientFrame::History {
            channel: "doc:9".into(),
            since: None,
            limit: None,
            request_id: Value::from(3),
        };
        assert_eq!(bare.to_json(), r#"{"type":"history","channel":"doc:9","request_id":3}"#);
        assert_eq!(parse_client_frame(&bare.to_json()).unwrap(), bare);
        // A known type with a bad field, or without its request_id: bad_request, not unknown.
        for bad in [
            r#"{"type":"history","channel":"a","limit":-1,"request_id":1}"#,
            r#"{"type":"history","channel":"a"}"#,
        ] {
            assert!(matches!(
                parse_client_frame(bad).unwrap_err().0,
                FrameError::Invalid { .. }
            ));
        }

        // The gateway embeds stored frames byte for byte; clients read them as `EventFrame`s.
        let stored = encode_event(
            Some(EventId::new(7, 1)),
            "doc:9",
            "e",
            &RawValue::from_string(r#"{"z":1,"a":2.50}"#.into()).unwrap(),
            7,
        );
        let raw: &RawValue = serde_json::from_str(&stored).unwrap();
        let text = encode_history("doc:9", &Value::from("h1"), &[raw], true);
        assert_eq!(
            text,
            format!(r#"{{"type":"history","channel":"doc:9","request_id":"h1","events":[{stored}],"recovered":true}}"#)
        );
        let ServerFrame::History {
            channel,
            request_id,
            events,
            recovered,
        } = parse_server_frame(&text).unwrap()
        else {
            panic!("a history answer")
        };
        assert_eq!(
            (channel.as_str(), request_id, recovered),
            ("doc:9", Value::from("h1"), true)
        );
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].kind.as_str(), events[0].event_id),
            ("event", Some(EventId::new(7, 1)))
        );
        let empty = encode_history("a", &Value::from(1), &[], false);
        assert_eq!(
            parse_server_frame(&empty).unwrap(),
            ServerFrame::History {
                channel: "a".into(),
                request_id: Value::from(1),
                events: vec![],
                recovered: false,
            }
        );
    }
}
