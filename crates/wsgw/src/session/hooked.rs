//! session/hooked.rs: where a session asks the backend hooks (hooks/): admitting a socket that
//! came without a token, a subscribe its grants do not allow, and each client publish. Turns
//! their verdicts into the documented frames and close codes; never admits a reserved or
//! private channel on a hook's word.

use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;
use wsgw_protocol::{CloseCode, ErrorCode, ServerFrame};

use super::{Refusal, Session, take_slots};
use crate::auth::Claims;
use crate::hooks::{ConnectRequest, ConnectVerdict, Verdict};
use crate::node::{Gateway, IpSlot, Slot};

/// Admits an upgrade without a token through the connect hook. The slots are taken before the
/// call, so sockets waiting for the hook count toward `max_connections` and the per-address cap.
pub(super) async fn admit(
    gw: &Arc<Gateway>,
    req: &ConnectRequest,
    client_ip: std::net::IpAddr,
) -> Result<(Claims, (Slot, IpSlot)), Refusal> {
    if gw.is_draining() {
        return Err(Box::new((None, CloseCode::Restart)));
    }
    let slots = take_slots(gw, client_ip)?;
    match gw.hooks.connect(req, &gw.auth).await {
        ConnectVerdict::Admit(claims) => Ok((claims, slots)),
        ConnectVerdict::Refuse { code, message, close } => {
            Err(Box::new((Some(ServerFrame::error(code, message, None)), close)))
        }
    }
}

impl Session {
    /// Whether the socket may subscribe to `channel` (valid, not reserved, not yet subscribed):
    /// its grants allow it, or else the subscribe hook does. When not, the error is sent here.
    pub(super) async fn may_subscribe(&self, channel: &str, request_id: &Option<Value>) -> bool {
        let denied = || format!("token does not allow subscribing to {channel}");
        self.allowed_where_subscribe_is(channel, request_id, denied).await
    }

    /// Whether the socket may read `channel` (its history or presence: valid, not reserved, not
    /// automatic): it follows the channel by name (a grant or the hook let it in), its grants
    /// allow it, or else the subscribe hook does. When not, the error is sent here, with
    /// `denied` as the message unless the hook gave a reason.
    pub(super) async fn may_read(
        &self,
        channel: &str,
        request_id: &Option<Value>,
        denied: impl FnOnce() -> String,
    ) -> bool {
        self.conn.is_subscribed(channel) || self.allowed_where_subscribe_is(channel, request_id, denied).await
    }

    async fn allowed_where_subscribe_is(
        &self,
        channel: &str,
        request_id: &Option<Value>,
        denied: impl FnOnce() -> String,
    ) -> bool {
        if self.claims.permissions.can_subscribe(channel) {
            return true;
        }
        let forbidden = |reason: Option<String>| {
            let msg = reason.unwrap_or_else(denied);
            self.send_error(ErrorCode::Forbidden, msg, request_id.clone());
            false
        };
        // Someone's private channel is only ever reached through a grant.
        if crate::auth::could_be_private(channel) {
            return forbidden(None);
        }
        let hooks = &self.gw.hooks;
        match hooks.subscribe(&self.claims.sub, &self.conn.id, channel).await {
            None => forbidden(None),
            Some(Verdict::Allow(())) => true,
            Some(Verdict::Deny(reason)) => forbidden(reason),
            Some(Verdict::Unavailable) => {
                let msg = "cannot check the subscription with the backend; try again later";
                self.send_error(ErrorCode::Unavailable, msg, request_id.clone());
                false
            }
        }
    }

    /// Runs a client publish (already allowed by the grants) past the publish hook: the data to
    /// publish, the hook's replacement if it gave one, or None when refused (error sent here).
    pub(super) async fn publish_hook(
        &self,
        channel: &str,
        event: &str,
        data: Box<RawValue>,
        request_id: &Option<Value>,
    ) -> Option<Box<RawValue>> {
        let hooks = &self.gw.hooks;
        let verdict = hooks
            .publish(&self.claims.sub, &self.conn.id, channel, event, &data)
            .await;
        match verdict {
            None | Some(Verdict::Allow(None)) => Some(data),
            Some(Verdict::Allow(Some(replaced))) => {
                // The replacement may not be larger than what a client could have sent.
                let max = self.gw.config.max_message_bytes;
                if replaced.get().len() > max {
                    let msg = format!("data from the publish hook is larger than {max} bytes");
                    self.send_error(ErrorCode::TooLarge, msg, request_id.clone());
                    return None;
                }
                Some(replaced)
            }
            Some(Verdict::Deny(reason)) => {
                let msg = reason.unwrap_or_else(|| format!("publishing to {channel} refused by the backend"));
                self.send_error(ErrorCode::Forbidden, msg, request_id.clone());
                None
            }
            Some(Verdict::Unavailable) => {
                let msg = "cannot check the publish with the backend; try again later";
                self.send_error(ErrorCode::Unavailable, msg, request_id.clone());
                None
            }
        }
    }
}
