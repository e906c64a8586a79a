//! dispatch.rs: what the client does with a frame that answers no waiting call: events through
//! the cursor (dropping what the application already has), responses, errors, server-side
//! unsubscribes, late `subscribed` answers (catch-up bookkeeping), `gap` frames, and the
//! presence `join`/`leave` frames.

use super::*;

impl Client {
    /// Turns a frame that answers no waiting call into what `next` yields (or nothing).
    pub(crate) fn dispatch(&mut self, f: Frame) -> Option<Incoming> {
        let f = match f {
            Frame::Event(e) => return self.event(e),
            Frame::Other(f) => f,
        };
        let rid = f.get("request_id").cloned();
        let internal = rid
            .as_ref()
            .and_then(Value::as_u64)
            .and_then(|r| self.resubscribing.iter().position(|(x, _)| *x == r));
        // Unknown frame types (a newer gateway) are skipped.
        match serde_json::from_value::<ServerFrame>(f).ok()? {
            ServerFrame::Event(e) => self.event(e),
            ServerFrame::Response {
                request_id,
                ok,
                data,
                error,
                more,
            } => Some(Incoming::Response {
                request_id,
                ok,
                data: data.unwrap_or(Value::Null),
                more,
                error: error.filter(|e| !e.is_null()),
            }),
            ServerFrame::Error { code, message, .. } => {
                self.cursor.refused(rid.as_ref().and_then(Value::as_u64));
                if let Some(i) = internal {
                    // A topic that could not be subscribed again after a reconnect.
                    let (_, channel) = self.resubscribing.swap_remove(i);
                    self.topics.retain(|t| t.channel != channel);
                }
                Some(Incoming::Error {
                    code: code.as_str().to_owned(),
                    message,
                    request_id: rid,
                })
            }
            ServerFrame::Unsubscribed {
                channel,
                request_id: None,
                reason,
            } => {
                self.topics.retain(|t| t.channel != channel);
                self.cursor.unsubscribed(&channel);
                Some(Incoming::Unsubscribed { channel, reason })
            }
            ServerFrame::Subscribed { channel, replayed, .. } => {
                // A re-subscribe after a reconnect, or the late answer to a timed-out subscribe.
                if let Some(i) = internal {
                    self.resubscribing.swap_remove(i);
                }
                self.cursor
                    .subscribed(rid.as_ref().and_then(Value::as_u64), &channel, replayed);
                None
            }
            ServerFrame::Gap { channels, recovered } => Some(Incoming::Gap { channels, recovered }),
            ServerFrame::Join {
                channel,
                user_id,
                connection_id,
            } => Some(Incoming::Join {
                channel,
                user_id,
                connection_id,
            }),
            ServerFrame::Leave {
                channel,
                user_id,
                connection_id,
            } => Some(Incoming::Leave {
                channel,
                user_id,
                connection_id,
            }),
            // Late answers to timed-out calls, pongs, welcomes.
            _ => None,
        }
    }

    /// An event, unless the application already has it (a resume's replay after a cut
    /// catch-up).
    pub(crate) fn event(&mut self, e: Event) -> Option<Incoming> {
        if let Some(id) = e.event_id
            && !self.cursor.event(&e.channel, id)
        {
            return None;
        }
        Some(Incoming::Event {
            channel: e.channel,
            event: e.event,
            event_id: e.event_id,
            data: e.data,
            ts: e.ts,
        })
    }
}
