//! session/open.rs: a socket's first moments: the `connection_id` resume (never adopting an id
//! whose ownership is in doubt), subscribing its channels, the connect-time replay, and the
//! `welcome`.

use std::sync::Arc;

use tracing::warn;
use wsgw_protocol::{CloseCode, ErrorCode, EventId, HeartbeatInfo, ServerFrame, Welcome};

use super::{ConnectParams, Session, error_frame};
use crate::auth::Claims;
use crate::broker::Resume;
use crate::history::{self, Replay};
use crate::hub::{Connection, OutFrame};
use crate::limits::{ByteLimiter, RateLimiter};
use crate::node::{Gateway, Slot};

fn valid_connection_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Session {
    pub(super) async fn open(gw: Arc<Gateway>, claims: Claims, params: ConnectParams, slot: Slot) -> Option<Session> {
        let mut notices: Vec<OutFrame> = Vec::new();
        // An unreadable last_event_id means a replay was wanted but can't be done: say so with
        // an error after the welcome and `recovered:false`, rather than refusing the socket.
        let mut unreadable_last_id = false;
        let parsed = params
            .last_event_id
            .as_deref()
            .map(|s| history::parse_cursor(gw.broker.as_ref(), s));
        let last_event_id: Option<Vec<EventId>> = match parsed {
            Some(Ok(ids)) => Some(ids),
            Some(Err(e)) => {
                notices.push(error_frame(ErrorCode::BadRequest, e, None));
                unreadable_last_id = true;
                None
            }
            None => None,
        };
        let mut resumed_topics = None;
        let mut id: Option<String> = None;
        if let Some(wanted) = params.connection_id {
            if !valid_connection_id(&wanted) {
                notices.push(error_frame(
                    ErrorCode::BadRequest,
                    "connection_id must be 1..=64 of [A-Za-z0-9_-]",
                    None,
                ));
            } else if let Some(live) = gw.hub.connection(&wanted).filter(|c| *c.user_id == *claims.sub) {
                // The same client again before its old socket was noticed dead: take over the
                // identity and topics; `register` closes the old socket.
                resumed_topics = Some(live.topics());
                id = Some(wanted);
            } else {
                match gw.broker.resume(&wanted, &claims.sub).await {
                    Ok(Resume::Topics(topics)) => {
                        resumed_topics = Some(topics);
                        id = Some(wanted);
                    }
                    Ok(Resume::Fresh) => id = Some(wanted),
                    Ok(Resume::OwnedByOther) => {
                        notices.push(error_frame(
                            ErrorCode::Forbidden,
                            "connection_id belongs to another user",
                            None,
                        ));
                    }
                    Err(e) => {
                        // Ownership could not be checked: never adopt the id (it may be someone
                        // else's); the client gets a fresh one and `resumed:false`.
                        warn!(error = %e, "resume lookup failed");
                    }
                }
            }
        }
        // A v4 UUID from the thread's CSPRNG (rand's `ThreadRng`, seeded from the OS), not
        // `Uuid::new_v4`, which asks the kernel (`getrandom`) once per connect.
        let id = id.unwrap_or_else(|| {
            uuid::Builder::from_random_bytes(rand::random())
                .into_uuid()
                .simple()
                .to_string()
        });
        tracing::Span::current().record("connection_id", id.as_str());
        let conn = Connection::new(
            Arc::from(id.as_str()),
            Arc::from(claims.sub.as_str()),
            gw.config.send_queue,
            last_event_id.as_deref().unwrap_or_default(),
        )
        .with_byte_capacity(gw.config.send_queue_bytes);
        let conn = match params.deflate_window {
            Some(window) => conn.with_deflate(window, gw.config.compression_min_bytes),
            None => conn,
        };
        conn.set_token_exp(claims.exp);
        let conn = gw.hub.register(conn);
        // The ban check comes after `register`: a ban set after this check kicks the socket
        // (the kick follows the ban key), and one set before it is seen here. Checked before
        // `register`, a ban landing in between would miss the socket. A check that fails
        // refuses (fail closed).
        let banned = match gw.broker.is_banned(&claims.sub).await {
            Ok(false) => None,
            Ok(true) => Some((ErrorCode::Forbidden, "user is banned", CloseCode::Policy)),
            Err(e) => {
                warn!(error = %e, "ban check failed on connect");
                Some((
                    ErrorCode::Unavailable,
                    "cannot check bans; try again later",
                    CloseCode::TryAgainLater,
                ))
            }
        };
        if let Some((code, message, close)) = banned {
            let released = gw.hub.remove(&conn);
            gw.broker.unlisten(&released);
            conn.refuse_with(error_frame(code, message, None), close);
            // A resume may have taken the parked session: park it again unless the user is banned.
            let park = (code != ErrorCode::Forbidden).then_some(resumed_topics).flatten();
            return Some(Session::closing(gw, conn, claims, slot).with_park(park));
        }

        let mut channels = vec![
            wsgw_protocol::BROADCAST.to_string(),
            wsgw_protocol::user(&claims.sub),
            wsgw_protocol::connection(&id),
        ];
        let resumed = resumed_topics.is_some();
        let mut restored = Vec::new();
        for t in resumed_topics.unwrap_or_default() {
            // A resumed topic is re-checked against the token presented now.
            if claims.permissions.can_subscribe(&t) {
                restored.push(t.clone());
                channels.push(t);
            }
        }
        for c in &channels {
            gw.hub.subscribe(&conn, c);
        }
        // Every channel, not only those new to this node: `listen` resolves once the node's
        // subscription is confirmed, which a replay's snapshot must come after.
        let all: Vec<Arc<str>> = channels.iter().map(|c| Arc::from(c.as_str())).collect();
        if let Err(e) = gw.broker.listen(&all).await {
            warn!(error = %e, "broker listen failed on connect");
            gw.metrics.broker_errors.with_label_values(&["listen"]).inc();
            let released = gw.hub.remove(&conn);
            gw.broker.unlisten(&released);
            // Not registered as open: count the close here.
            conn.close_with(
                error_frame(
                    ErrorCode::Unavailable,
                    "gateway cannot reach its broker; try again later",
                    None,
                ),
                CloseCode::TryAgainLater,
            );
            // A resume took the parked session: park its topics again, so a later resume
            // gets them (or, if that write fails too, `resumed:false`), never none.
            let session = Session::closing(gw, conn, claims, slot);
            return Some(session.with_park(resumed.then_some(restored)));
        }
        let patterns: Vec<String> = restored.iter().filter(|t| t.contains('*')).cloned().collect();
        let replay = match &last_event_id {
            None if patterns.is_empty() => Ok(Replay::none(!unreadable_last_id)),
            // Restored patterns need the snapshot they are exact from.
            None => history::position(gw.broker.as_ref(), !unreadable_last_id).await,
            Some(after) => history::replay_after(gw.broker.as_ref(), &channels, after, gw.config.max_replay, &id).await,
        }
        .unwrap_or_else(|e| {
            warn!(error = %e, "history read failed on connect");
            gw.metrics.broker_errors.with_label_values(&["history"]).inc();
            conn.clear_floor();
            Replay::none(false)
        });
        let not_replayed = if last_event_id.is_some() { patterns } else { Vec::new() };
        let welcome = |replayed: u64| {
            let w = ServerFrame::Welcome(Welcome {
                connection_id: id,
                user_id: claims.sub.clone(),
                node: gw.node_id.clone(),
                resumed,
                recovered: replay.recovered,
                replayed,
                heartbeat: HeartbeatInfo {
                    interval_ms: gw.config.heartbeat_interval_ms,
                    timeout_ms: gw.config.heartbeat_timeout_ms,
                },
                session_ttl_ms: gw.config.session_ttl_ms,
                channels: restored,
                not_replayed,
            });
            OutFrame::control(w.to_json())
        };
        let n = conn.finish_replay(welcome, replay.events, replay.position.as_slice(), None);
        gw.metrics.replayed_events.inc_by(n as u64);
        for f in notices {
            conn.push_control(f);
        }
        gw.metrics.connections.inc();
        gw.metrics.connections_opened.inc();
        gw.broker.connected(&conn);
        let gw_publish_bytes_per_s = gw.config.publish_bytes_per_s;
        let limiter = RateLimiter::new(
            gw.config.rate_limit_per_s,
            gw.config.rate_limit_burst,
            gw.config.rate_limit_strikes,
        );
        Some(Session {
            gw,
            conn,
            claims,
            limiter,
            publish_limiter: ByteLimiter::new(gw_publish_bytes_per_s),
            park_topics: None,
            _slot: slot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_are_checked() {
        assert!(valid_connection_id("abc-DEF_123"));
        assert!(!valid_connection_id(""));
        assert!(!valid_connection_id("a b"));
        assert!(!valid_connection_id(&"a".repeat(65)));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 500, failure_persistence: None, rng_seed: proptest::test_runner::RngSeed::Fixed(20_261_201), ..Default::default() })]

        /// A `connection_id` from the query string is accepted exactly when documented, and an
        /// accepted one always names a plain `connection:` channel (no pattern, nothing reserved).
        #[test]
        fn connection_ids_accepted_are_exactly_the_documented_ones(id in "[A-Za-z0-9_*:. %\u{e9}-]{0,70}") {
            let documented = (1..=64).contains(&id.len())
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            proptest::prop_assert_eq!(valid_connection_id(&id), documented, "{:?}", id);
            if documented {
                let channel = wsgw_protocol::connection(&id);
                proptest::prop_assert_eq!(
                    wsgw_protocol::validate_channel(&channel, false),
                    Ok(wsgw_protocol::ChannelKind::Connection)
                );
                proptest::prop_assert!(!wsgw_protocol::is_reserved(&channel));
            }
        }
    }
}
