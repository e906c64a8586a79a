//! presence.rs: channel presence on the wire: one member of a tracked channel, as the
//! `presence` answer lists it (the `join`, `leave` and `presence` frames themselves are
//! variants of [`ServerFrame`](crate::ServerFrame) and [`ClientFrame`](crate::ClientFrame)).

use serde::{Deserialize, Serialize};

/// One socket subscribed to a presence-tracked channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PresenceClient {
    /// Its user (the token's `sub`).
    pub user_id: String,
    /// Its connection id.
    pub connection_id: String,
    /// The gateway node holding it.
    pub node: String,
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::{ClientFrame, ServerFrame, parse_client_frame, parse_server_frame};

    #[test]
    fn presence_frames_go_both_ways() {
        let ask = ClientFrame::Presence {
            channel: "chat:1".into(),
            request_id: Value::from("p1"),
        };
        assert_eq!(
            ask.to_json(),
            r#"{"type":"presence","channel":"chat:1","request_id":"p1"}"#
        );
        assert_eq!(parse_client_frame(&ask.to_json()).unwrap(), ask);
        // Without its request_id: a known type with a missing field (bad_request).
        let (err, _) = parse_client_frame(r#"{"type":"presence","channel":"chat:1"}"#).unwrap_err();
        assert!(matches!(err, crate::FrameError::Invalid { .. }), "{err:?}");

        let answer = ServerFrame::Presence {
            channel: "chat:1".into(),
            request_id: Value::from("p1"),
            clients: vec![PresenceClient {
                user_id: "alice".into(),
                connection_id: "c1".into(),
                node: "gw-a".into(),
            }],
        };
        assert_eq!(
            answer.to_json(),
            r#"{"type":"presence","channel":"chat:1","request_id":"p1","clients":[{"user_id":"alice","connection_id":"c1","node":"gw-a"}]}"#
        );
        assert_eq!(parse_server_frame(&answer.to_json()).unwrap(), answer);

        for (frame, text) in [
            (
                ServerFrame::Join {
                    channel: "chat:1".into(),
                    user_id: "alice".into(),
                    connection_id: "c1".into(),
                },
                r#"{"type":"join","channel":"chat:1","user_id":"alice","connection_id":"c1"}"#,
            ),
            (
                ServerFrame::Leave {
                    channel: "chat:1".into(),
                    user_id: "alice".into(),
                    connection_id: "c1".into(),
                },
                r#"{"type":"leave","channel":"chat:1","user_id":"alice","connection_id":"c1"}"#,
            ),
        ] {
            assert_eq!(frame.to_json(), text);
            assert_eq!(parse_server_frame(text).unwrap(), frame);
        }
    }
}
