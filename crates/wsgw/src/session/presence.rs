//! session/presence.rs: the client's `presence` frame: who is in a presence-tracked channel,
//! allowed where a subscribe would be. A read: the socket's subscriptions and floor stay as
//! they are. (The `join`/`leave` frames come from the broker, see `crate::presence`.)

use serde_json::Value;
use wsgw_protocol::{ErrorCode, ServerFrame, validate_channel};

use super::Session;
use crate::hub::OutFrame;

impl Session {
    pub(super) async fn presence(&mut self, channel: String, request_id: Value) {
        let rid = Some(request_id.clone());
        if let Err(e) = validate_channel(&channel, false) {
            return self.send_error(ErrorCode::BadRequest, e.to_string(), rid);
        }
        let automatic = wsgw_protocol::is_automatic(&channel, &self.claims.sub, &self.conn.id);
        if !automatic && wsgw_protocol::is_reserved(&channel) {
            let msg = format!("{channel} is reserved for the gateway");
            return self.send_error(ErrorCode::Forbidden, msg, rid);
        }
        let denied = || format!("token does not allow seeing who is in {channel}");
        if !automatic && !self.may_read(&channel, &rid, denied).await {
            return;
        }
        if !crate::presence::is_tracked(&self.gw.config.presence_channels, &channel) {
            let msg = format!("presence is not tracked on {channel} (see WSGW_PRESENCE_CHANNELS)");
            return self.send_error(ErrorCode::BadRequest, msg, rid);
        }
        match self.gw.broker.channel_presence(&channel).await {
            Ok(clients) => {
                let answer = ServerFrame::Presence {
                    channel,
                    request_id,
                    clients,
                };
                self.conn.push_control(OutFrame::control(answer.to_json()));
            }
            Err(e) => {
                self.gw.metrics.broker_errors.with_label_values(&["presence"]).inc();
                self.send_error(e.code(), e.to_string(), rid);
            }
        }
    }
}
