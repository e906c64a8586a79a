//! presence.rs: asking who is in a presence-tracked channel (the `presence` frame). The
//! `join`/`leave` frames arrive through `next` (`dispatch.rs`).

use super::*;
use crate::PresenceClient;

impl Client {
    /// Lists the sockets subscribed to a presence-tracked channel (`WSGW_PRESENCE_CHANNELS`),
    /// cluster-wide, at most 1000; and waits for the answer. The connection need not be
    /// subscribed, but must be allowed to: otherwise `Refused` with `forbidden`. A channel the
    /// gateway does not track, a pattern or an invalid name: `bad_request`.
    pub async fn presence(&mut self, channel: &str) -> Result<Vec<PresenceClient>, ClientError> {
        let rid = self.rid();
        let frame = ClientFrame::Presence {
            channel: channel.to_owned(),
            request_id: rid.into(),
        };
        let reply = self.call(frame, rid).await?;
        if reply["type"] != "presence" {
            return Err(refusal(&reply));
        }
        match serde_json::from_value::<ServerFrame>(reply) {
            Ok(ServerFrame::Presence { clients, .. }) => Ok(clients),
            Ok(_) => Err(ClientError::Protocol(String::from("a presence answer of another type"))),
            Err(e) => Err(ClientError::Protocol(format!("unreadable presence answer: {e}"))),
        }
    }
}
