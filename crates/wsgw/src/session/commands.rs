//! session/commands.rs: the client's frames (subscribe with replay, unsubscribe, publish,
//! request, refresh, history, ping) checked against the token and answered on the socket.

use std::sync::Arc;

use serde_json::Value;
use tracing::warn;
use wsgw_protocol::{
    ClientFrame, CloseCode, ErrorCode, EventId, PublishError, ServerFrame, encode_history, parse_client_frame,
    validate_channel, validate_publish,
};

use super::{Session, error_frame};
use crate::broker::{InboundRequest, PublishRequest};
use crate::history::{self, Replay};
use crate::hub::{CatchUp, OutFrame};

/// Longest `request_id` echoed back, in bytes of compact JSON text.
pub(crate) const MAX_REQUEST_ID_BYTES: usize = 256;
/// Longest ping `ts` echoed back in the `pong`, in bytes of compact JSON text.
pub(crate) const MAX_PING_TS_BYTES: usize = 64;

/// Length of `v` as compact JSON text.
fn json_len(v: &Value) -> usize {
    serde_json::to_string(v).map_or(usize::MAX, |s| s.len())
}

/// Whether a `request_id` is small enough to be echoed.
fn echoable_request_id(v: &Value) -> bool {
    json_len(v) <= MAX_REQUEST_ID_BYTES
}

fn frame_request_id(frame: &ClientFrame) -> Option<&Value> {
    match frame {
        ClientFrame::Subscribe { request_id, .. }
        | ClientFrame::Unsubscribe { request_id, .. }
        | ClientFrame::Publish { request_id, .. }
        | ClientFrame::Refresh { request_id, .. } => request_id.as_ref(),
        ClientFrame::Request { request_id, .. }
        | ClientFrame::History { request_id, .. }
        | ClientFrame::Presence { request_id, .. } => Some(request_id),
        ClientFrame::Ping { .. } | ClientFrame::Pong {} => None,
    }
}

/// The `request_id` of a frame refused before parsing (rate limit), when it has an echoable one.
fn probe_request_id(text: &str) -> Option<Value> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default)]
        request_id: Option<Value>,
    }
    serde_json::from_str::<Probe>(text)
        .ok()?
        .request_id
        .filter(echoable_request_id)
}

impl Session {
    pub(super) async fn on_text(&mut self, text: &str) {
        if !self.limiter.admit() {
            self.rate_limited(probe_request_id(text));
            return;
        }
        let frame = match parse_client_frame(text) {
            Ok(f) => f,
            Err((e, request_id)) => {
                self.send_error(
                    ErrorCode::BadRequest,
                    e.to_string(),
                    request_id.filter(echoable_request_id),
                );
                return;
            }
        };
        if let Some(rid) = frame_request_id(&frame)
            && !echoable_request_id(rid)
        {
            let msg = format!("request_id longer than {MAX_REQUEST_ID_BYTES} bytes of JSON");
            return self.send_error(ErrorCode::BadRequest, msg, None);
        }
        if let ClientFrame::Ping { ts: Some(ts) } = &frame
            && json_len(ts) > MAX_PING_TS_BYTES
        {
            let msg = format!("ping ts longer than {MAX_PING_TS_BYTES} bytes of JSON");
            return self.send_error(ErrorCode::BadRequest, msg, None);
        }
        match frame {
            ClientFrame::Ping { ts } => self.send(ServerFrame::Pong { ts }),
            ClientFrame::Pong {} => {}
            ClientFrame::Subscribe {
                channel,
                request_id,
                last_event_id,
                history,
            } => self.subscribe(channel, request_id, last_event_id, history).await,
            ClientFrame::Unsubscribe { channel, request_id } => self.unsubscribe(channel, request_id),
            ClientFrame::Publish {
                channel,
                event,
                data,
                request_id,
                echo,
            } => self.publish(channel, event, data, request_id, echo).await,
            ClientFrame::Request {
                action,
                data,
                request_id,
            } => Box::pin(self.request(action, data, request_id)).await,
            ClientFrame::Refresh { token, request_id } => self.refresh(&token, request_id).await,
            ClientFrame::History {
                channel,
                since,
                limit,
                request_id,
            } => self.history(channel, since, limit, request_id).await,
            ClientFrame::Presence { channel, request_id } => self.presence(channel, request_id).await,
        }
    }

    fn is_automatic(&self, channel: &str) -> bool {
        wsgw_protocol::is_automatic(channel, &self.claims.sub, &self.conn.id)
    }

    async fn subscribe(
        &mut self,
        channel: String,
        request_id: Option<Value>,
        last_event_id: Option<EventId>,
        history: Option<u32>,
    ) {
        if let Err(e) = validate_channel(&channel, true) {
            return self.send_error(ErrorCode::BadRequest, e.to_string(), request_id);
        }
        if let Some(Err(e)) = last_event_id.map(|id| history::own_id(self.gw.broker.as_ref(), id)) {
            return self.send_error(ErrorCode::BadRequest, e.to_string(), request_id);
        }
        if wsgw_protocol::is_reserved(&channel) {
            return self.send_error(
                ErrorCode::Forbidden,
                format!("{channel} is reserved for the gateway"),
                request_id,
            );
        }
        let subscribed = |recovered: bool, replayed: u64, request_id: Option<Value>| ServerFrame::Subscribed {
            channel: channel.clone(),
            request_id,
            recovered,
            replayed,
        };
        if self.is_automatic(&channel) || self.conn.is_subscribed(&channel) {
            return self.send(subscribed(true, 0, request_id));
        }
        // The grants, or else the subscribe hook (which sends the refusal itself).
        if !self.may_subscribe(&channel, &request_id).await {
            return;
        }
        let topics = self.conn.topic_count();
        if topics >= self.gw.config.max_subscriptions {
            let msg = format!("subscription limit of {} reached", self.gw.config.max_subscriptions);
            return self.send_error(ErrorCode::BadRequest, msg, request_id);
        }
        if channel.contains('*') && self.gw.broker.shard_of(&channel).is_some() {
            // Sharded pub/sub has no PSUBSCRIBE (docs/scaling.md).
            let msg = "patterns are not available on a Redis Cluster deployment";
            return self.send_error(ErrorCode::BadRequest, msg, request_id);
        }
        if channel.contains('*') {
            let cfg = &self.gw.config;
            if self.conn.pattern_count() >= cfg.max_patterns {
                let msg = format!("pattern limit of {} per connection reached", cfg.max_patterns);
                return self.send_error(ErrorCode::BadRequest, msg, request_id);
            }
            if !self.gw.hub.pattern_fits(&channel, cfg.max_patterns_per_node) {
                let msg = format!("this node has {} distinct patterns already", cfg.max_patterns_per_node);
                return self.send_error(ErrorCode::BadRequest, msg, request_id);
            }
        }
        self.conn.begin_replay();
        let gw = self.gw.clone();
        let first = gw.hub.subscribe(&self.conn, &channel);
        // Always through the broker, also when another socket here already listens: its
        // subscription may not be confirmed yet, and a replay's snapshot must come after it.
        let chans = [Arc::<str>::from(channel.as_str())];
        if let Err(e) = gw.broker.listen(&chans).await {
            gw.metrics.broker_errors.with_label_values(&["listen"]).inc();
            if gw.hub.unsubscribe(&self.conn, &channel) || first {
                gw.broker.unlisten(&chans);
            }
            let err = ServerFrame::error(ErrorCode::Unavailable, e.to_string(), request_id);
            self.conn
                .finish_replay(|_| OutFrame::control(err.to_json()), Vec::new(), &[], None);
            return;
        }
        let is_pattern = channel.contains('*');
        let wants_replay = last_event_id.is_some() || history.is_some();
        let broker = gw.broker.as_ref();
        let replay = if is_pattern {
            // Patterns have no history of their own, but need the snapshot they are exact from.
            history::position(broker, !wants_replay).await
        } else if let Some(after) = last_event_id {
            let chans = std::slice::from_ref(&channel);
            history::replay_after(broker, chans, &[after], gw.config.max_replay, &self.conn.id).await
        } else if let Some(n) = history {
            history::last_n(broker, &channel, n as usize, gw.config.max_replay, &self.conn.id).await
        } else {
            Ok(Replay::none(true))
        };
        let replay = match replay {
            Ok(r) => r,
            Err(e) if is_pattern => {
                // Without its snapshot a pattern cannot be exact: refuse it.
                gw.metrics.broker_errors.with_label_values(&["history"]).inc();
                if gw.hub.unsubscribe(&self.conn, &channel) {
                    gw.broker.unlisten(&chans);
                }
                let err = ServerFrame::error(ErrorCode::Unavailable, e.to_string(), request_id);
                self.conn
                    .finish_replay(|_| OutFrame::control(err.to_json()), Vec::new(), &[], None);
                return;
            }
            Err(e) => {
                warn!(error = %e, "history read failed on subscribe");
                gw.metrics.broker_errors.with_label_values(&["history"]).inc();
                Replay::none(false)
            }
        };
        let recovered = replay.recovered;
        let head = |replayed: u64| OutFrame::control(subscribed(recovered, replayed, request_id).to_json());
        // Where the catch-up starts: live frames of the channel from before it are not sent.
        let from = match (last_event_id, history) {
            _ if is_pattern => None,
            // An id of another sequence than the channel's starts nothing (not recovered).
            (Some(after), _) => (after.shard() == gw.broker.shard_of(&channel)).then(|| after.next()),
            (None, Some(_)) => replay
                .events
                .first()
                .and_then(|f| f.event_id)
                .or(replay.position.first().map(|p| p.next())),
            (None, None) => None,
        };
        let catch_up = from.map(|from| CatchUp {
            channel: channel.as_str(),
            from,
        });
        let n = self
            .conn
            .finish_replay(head, replay.events, replay.position.as_slice(), catch_up);
        gw.metrics.replayed_events.inc_by(n as u64);
        // Presence lists the topics (a resume on another node takes them from there).
        gw.broker.connected(&self.conn);
    }

    /// A read of one channel's history, allowed where a subscribe would be. It leaves the
    /// socket as it is (subscriptions, dedup, catch-ups): the events travel inside the answer,
    /// not as `event` frames, so the client's cursor never sees them.
    async fn history(&mut self, channel: String, since: Option<EventId>, limit: Option<u32>, request_id: Value) {
        let rid = Some(request_id.clone());
        if let Err(e) = validate_channel(&channel, true) {
            return self.send_error(ErrorCode::BadRequest, e.to_string(), rid);
        }
        if let Some(Err(e)) = since.map(|id| history::own_id(self.gw.broker.as_ref(), id)) {
            return self.send_error(ErrorCode::BadRequest, e.to_string(), rid);
        }
        if wsgw_protocol::is_reserved(&channel) {
            let msg = format!("{channel} is reserved for the gateway");
            return self.send_error(ErrorCode::Forbidden, msg, rid);
        }
        if channel.contains('*') {
            let msg = "patterns have no history of their own; ask for one channel";
            return self.send_error(ErrorCode::BadRequest, msg, rid);
        }
        let denied = || format!("token does not allow reading the history of {channel}");
        if !self.is_automatic(&channel) && !self.may_read(&channel, &rid, denied).await {
            return;
        }
        let cfg = &self.gw.config;
        let limit = limit
            .map_or(history::DEFAULT_HISTORY_LIMIT, |n| n as usize)
            .min(cfg.max_replay);
        // Excluded events are skipped, but a run of them is walked through at most as far as a
        // channel's history reaches.
        let scan = cfg.history_size.saturating_add(limit);
        let broker = self.gw.broker.as_ref();
        match history::read(broker, &channel, since, limit, scan, &self.conn.id).await {
            Ok((events, recovered)) => {
                let raw: Vec<&serde_json::value::RawValue> = events
                    .iter()
                    .filter_map(|e| match serde_json::from_str(e.frame.as_str()) {
                        Ok(r) => Some(r),
                        Err(err) => {
                            warn!(event_id = %e.id, error = %err, "history holds an unreadable event frame");
                            None
                        }
                    })
                    .collect();
                let text = encode_history(&channel, &request_id, &raw, recovered);
                self.conn.push_control(OutFrame::control(text));
            }
            Err(e) => {
                self.gw.metrics.broker_errors.with_label_values(&["history"]).inc();
                self.send_error(e.code(), e.to_string(), rid);
            }
        }
    }

    fn unsubscribe(&mut self, channel: String, request_id: Option<Value>) {
        if self.is_automatic(&channel) {
            return self.send_error(
                ErrorCode::BadRequest,
                format!("{channel} is automatic and cannot be left"),
                request_id,
            );
        }
        if self.gw.hub.unsubscribe(&self.conn, &channel) {
            self.gw.broker.unlisten(&[Arc::from(channel.as_str())]);
        }
        self.gw.broker.connected(&self.conn);
        self.send(ServerFrame::Unsubscribed {
            channel,
            request_id,
            reason: None,
        });
    }

    async fn publish(
        &mut self,
        channel: String,
        event: String,
        data: Value,
        request_id: Option<Value>,
        echo: Option<bool>,
    ) {
        match validate_publish(&channel, &event) {
            Ok(()) => {}
            // Over the socket a reserved channel is a permission matter (docs/protocol.md).
            Err(e @ PublishError::Reserved(_)) => {
                return self.send_error(ErrorCode::Forbidden, e.to_string(), request_id);
            }
            Err(e) => return self.send_error(ErrorCode::BadRequest, e.to_string(), request_id),
        }
        if !self.claims.permissions.can_publish(&channel) {
            return self.send_error(
                ErrorCode::Forbidden,
                format!("token does not allow publishing to {channel}"),
                request_id,
            );
        }
        let Ok(data) = serde_json::value::to_raw_value(&data) else {
            return self.send_error(ErrorCode::BadRequest, "data is not serialisable", request_id);
        };
        let volume = channel.len() + event.len() + data.get().len();
        if !self.publish_limiter.admit(volume) {
            self.gw.metrics.rate_limited.inc();
            let msg = format!(
                "publish volume over {} bytes per second; slow down",
                self.gw.config.publish_bytes_per_s
            );
            return self.send_error(ErrorCode::RateLimited, msg, request_id);
        }
        let Some(data) = self.publish_hook(&channel, &event, data, &request_id).await else {
            return;
        };
        let exclude = if echo == Some(false) {
            vec![self.conn.id.to_string()]
        } else {
            Vec::new()
        };
        let req = PublishRequest {
            channel,
            event,
            data,
            exclude,
            idempotency_key: None,
        };
        match self.gw.broker.publish(req).await {
            Ok(id) => {
                self.gw.metrics.publishes.with_label_values(&["client"]).inc();
                self.send(ServerFrame::Ack {
                    request_id,
                    event_id: Some(id),
                });
            }
            Err(e) => {
                if !matches!(e, crate::broker::BrokerError::BadRequest(_)) {
                    self.gw.metrics.broker_errors.with_label_values(&["publish"]).inc();
                }
                self.send_error(e.code(), e.to_string(), request_id);
            }
        }
    }

    async fn request(&mut self, action: String, data: Value, request_id: Value) {
        let rid = Some(request_id.clone());
        if action.is_empty() || action.len() > 128 || validate_channel(&action, false).is_err() {
            return self.send_error(
                ErrorCode::BadRequest,
                "action must be 1..=128 of [A-Za-z0-9_.:@=/-]",
                rid,
            );
        }
        let actions = &self.claims.permissions.actions;
        let denied_by_default =
            actions.is_none() && self.gw.config.jwt_actions_default == crate::config::ActionsDefault::Deny;
        if denied_by_default || !self.claims.permissions.can_request(&action) {
            return self.send_error(
                ErrorCode::Forbidden,
                format!("token does not allow action {action}"),
                rid,
            );
        }
        let cfg = &self.gw.config;
        if !self
            .conn
            .add_pending(request_id.clone(), cfg.request_timeout_ms, cfg.max_pending_requests)
        {
            let msg = format!("{} requests already wait for an answer", cfg.max_pending_requests);
            return self.send_error(ErrorCode::RateLimited, msg, rid);
        }
        let p = &self.claims.permissions;
        let claims = serde_json::json!({
            "sub": self.claims.sub,
            "exp": self.claims.exp,
            "channels": p.subscribe,
            "publish": p.publish,
            "actions": p.actions,
        });
        let req = InboundRequest {
            connection_id: self.conn.id.to_string(),
            user_id: self.claims.sub.clone(),
            node: self.gw.node_id.clone(),
            request_id: request_id.to_string(),
            action,
            data: data.to_string(),
            claims: claims.to_string(),
        };
        if let Err(e) = self.gw.broker.request(req).await {
            if self.gw.broker.kind() != "memory" {
                // Single-node mode has no backends by design; that is not a broker failure.
                self.gw.metrics.broker_errors.with_label_values(&["request"]).inc();
            }
            self.conn.drop_pending(&request_id);
            self.send_error(ErrorCode::Unavailable, e.to_string(), rid);
        }
    }

    async fn refresh(&mut self, token: &str, request_id: Option<Value>) {
        // `verify_fresh`: a token signed with a key rotated into the JWKS since the last load is
        // accepted here too.
        let claims = match self.gw.auth.verify_fresh(token).await {
            Ok(c) if c.sub == self.claims.sub => c,
            Ok(_) => {
                self.gw
                    .metrics
                    .auth_failures
                    .with_label_values(&["refresh_sub_mismatch"])
                    .inc();
                let f = error_frame(ErrorCode::Unauthorized, "refresh token is for another user", request_id);
                self.conn.close_with(f, CloseCode::Unauthorized);
                return;
            }
            Err(e) => {
                self.gw.metrics.auth_failures.with_label_values(&[e.label()]).inc();
                self.conn
                    .close_with(error_frame(e.code(), e.to_string(), request_id), e.close_code());
                return;
            }
        };
        self.conn.set_token_exp(claims.exp);
        for ch in self.conn.channels() {
            if !self.is_automatic(&ch) && !claims.permissions.can_subscribe(&ch) {
                if self.gw.hub.unsubscribe(&self.conn, &ch) {
                    self.gw.broker.unlisten(std::slice::from_ref(&ch));
                }
                self.send(ServerFrame::Unsubscribed {
                    channel: ch.to_string(),
                    request_id: None,
                    reason: Some("forbidden by the refreshed token".into()),
                });
            }
        }
        self.claims = claims;
        self.send(ServerFrame::Ack {
            request_id,
            event_id: None,
        });
    }
}
