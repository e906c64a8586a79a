//! broker/redis/resume.rs: taking a `connection_id` back, from its parked session or from a
//! live socket on another node, and only for the user who owns it.

use super::control::Control;
use super::presence::{ParkedValue, PresenceValue};
use super::*;

impl Inner {
    pub(super) async fn resume(&self, connection_id: &str, user_id: &str) -> Result<Resume, BrokerError> {
        let inner = self;
        timed(inner.s.op_timeout * PATIENT, async move {
            if inner.hub.id_owned_by_other(connection_id, user_id) {
                return Ok(Resume::OwnedByOther);
            }
            // The node that saw the close parks the session from its presence worker, a moment
            // after the client got its close answer. It parks before it deletes the presence
            // key, and we read presence first: so "live for this user, nothing parked" means
            // the park may still be on its way; give it a short while rather than lose topics.
            let settle = tokio::time::Instant::now() + inner.s.op_timeout / 4;
            loop {
                let mut c = inner.conn().await?;
                let (live, parked): (Option<String>, Option<String>) = redis::pipe()
                    .cmd("GET")
                    .arg(inner.keys.presence_conn(connection_id))
                    .cmd("GET")
                    .arg(inner.keys.session(connection_id))
                    .query_async(&mut c)
                    .await
                    .map_err(unavailable)?;
                let live = live.and_then(|v| serde_json::from_str::<PresenceValue>(&v).ok());
                if live.as_ref().is_some_and(|l| l.user_id != user_id) {
                    return Ok(Resume::OwnedByOther);
                }
                return match parked.and_then(|v| serde_json::from_str::<ParkedValue>(&v).ok()) {
                    Some(p) if p.user_id == user_id => {
                        let _: i64 = c.del(inner.keys.session(connection_id)).await.map_err(unavailable)?;
                        Ok(Resume::Topics(p.topics))
                    }
                    Some(_) => Ok(Resume::OwnedByOther),
                    None if live.is_some() && tokio::time::Instant::now() < settle => {
                        // Give the pooled connection back while waiting: a storm of resumes
                        // must not starve the pool.
                        drop(c);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    // Still live on another node (a client back before its old socket was
                    // noticed dead): take the identity and topics over; that node closes it.
                    None => match live {
                        Some(l) => {
                            let payload = serde_json::to_string(&Control::Replace {
                                connection_id: connection_id.into(),
                                node: l.node.clone(),
                            })
                            .map_err(|e| BrokerError::Internal(e.to_string()))?;
                            let _: i64 = c.publish(inner.keys.control(), payload).await.map_err(unavailable)?;
                            let topics = l
                                .channels
                                .into_iter()
                                .filter(|ch| wsgw_protocol::classify(ch).is_explicit())
                                .collect();
                            Ok(Resume::Topics(topics))
                        }
                        None => Ok(Resume::Fresh),
                    },
                };
            }
        })
        .await
    }
}
