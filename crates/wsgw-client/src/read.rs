//! read.rs: reading one frame from the socket. `event` frames, the frequent kind, are read
//! straight into their fields; every other frame as JSON. The heartbeat's silence deadline is one
//! timer per socket, moved only when it fires, not set again for every frame.

use std::pin::Pin;

use tokio::time::Sleep;

use super::*;

/// One frame from the gateway.
pub(crate) enum Frame {
    /// An `event` frame.
    Event(Event),
    /// Any other frame (or an `event` frame written in another order), as JSON.
    Other(Value),
}

/// How the gateway writes every `event` frame (`encode_event`): its type first.
const EVENT_HEAD: &str = r#"{"type":"event","#;

/// Parses a text frame; `None` for text that is not a JSON object.
pub(crate) fn parse_frame(text: &str) -> Option<Frame> {
    if text.starts_with(EVENT_HEAD)
        && let Ok(e) = serde_json::from_str::<Event>(text)
    {
        return Some(Frame::Event(e));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Some(Frame::Other(v)),
        _ => None,
    }
}

/// The deadline for hearing from the gateway: `limit` after the last frame.
pub(crate) struct Silence {
    limit: Duration,
    heard: Instant,
    timer: Pin<Box<Sleep>>,
}

impl Silence {
    pub(crate) fn new(limit: Duration) -> Silence {
        let heard = Instant::now();
        Silence {
            limit,
            heard,
            timer: Box::pin(tokio::time::sleep_until(heard + limit)),
        }
    }

    /// A frame arrived.
    fn heard(&mut self) {
        self.heard = Instant::now();
    }

    /// Ends once `limit` has passed since the last frame. Cancel-safe.
    async fn passed(&mut self) {
        loop {
            self.timer.as_mut().await;
            let due = self.heard + self.limit;
            if Instant::now() >= due {
                return;
            }
            self.timer.as_mut().reset(due);
        }
    }
}

/// Reads the next JSON text frame. `Err((close code, reason))` when the socket ended, or stayed
/// silent past `silence`. Cancel-safe.
pub(crate) async fn read_frame(ws: &mut Ws, mut silence: Option<&mut Silence>) -> Result<Frame, (Option<u16>, String)> {
    loop {
        let msg = match silence.as_deref_mut() {
            Some(s) => {
                let msg = tokio::select! {
                    biased;
                    m = ws.next() => Some(m),
                    () = s.passed() => None,
                };
                let Some(msg) = msg else {
                    return Err((
                        None,
                        String::from("no frame from the gateway within the heartbeat timeout"),
                    ));
                };
                s.heard();
                msg
            }
            None => ws.next().await,
        };
        match msg {
            Some(Ok(Message::Text(text))) => {
                if let Some(frame) = parse_frame(&text) {
                    return Ok(frame);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                // Send our half of the closing handshake (tungstenite queued it).
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.flush()).await;
                return Err(match frame {
                    Some(f) => (Some(u16::from(f.code)), f.reason.as_str().to_owned()),
                    None => (None, String::from("closed without a code")),
                });
            }
            Some(Ok(_)) => {} // binary, WebSocket ping/pong (tungstenite answers pings)
            Some(Err(e)) => return Err((None, format!("connection lost: {e}"))),
            None => return Err((None, String::from("connection lost"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_frame_is_read_into_its_fields() {
        let text = r#"{"type":"event","event_id":"1700000000000-3","channel":"c","event":"e","data":{"seq":7},"ts":5}"#;
        let Some(Frame::Event(e)) = parse_frame(text) else {
            panic!("not read as an event")
        };
        assert_eq!(e.channel, "c");
        assert_eq!(e.event, "e");
        assert_eq!(e.event_id, Some("1700000000000-3".parse().unwrap()));
        assert_eq!(e.data["seq"], 7);
        assert_eq!(e.ts, 5);
    }

    #[test]
    fn other_frames_and_other_orders_are_read_as_json() {
        let Some(Frame::Other(v)) = parse_frame(r#"{"type":"ping"}"#) else {
            panic!("ping not read")
        };
        assert_eq!(v["type"], "ping");
        // An event written in another order still arrives, through the JSON path.
        let Some(Frame::Other(v)) = parse_frame(r#"{"channel":"c","type":"event","event":"e"}"#) else {
            panic!("reordered event not read")
        };
        assert_eq!(v["channel"], "c");
        // The head of an event but not its fields: read as JSON, then skipped as unknown.
        assert!(matches!(
            parse_frame(r#"{"type":"event","channel":5}"#),
            Some(Frame::Other(_))
        ));
        assert!(parse_frame("[1,2]").is_none());
        assert!(parse_frame("not json").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn silence_passes_only_limit_after_the_last_frame() {
        let mut s = Silence::new(Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(6)).await;
        s.heard();
        // Due at 16 s, not at 10 s: the timer fires at 10 s and is moved.
        let start = Instant::now();
        s.passed().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(10));
    }
}
