//! hub/out_frame.rs: a frame as the hub hands it to sockets: one shared payload (and its
//! compressed forms) for every recipient, plus what ordering, latency and backend answers need;
//! and the header-and-payload bytes it takes on a socket's wire.

use std::sync::Arc;

use bytes::Bytes;
use wsgw_protocol::EventId;

use super::Deflated;
use crate::ws::frame::{Header, OP_TEXT};

/// A frame ready to be written: its shared payload plus what ordering and latency need.
#[derive(Clone, Debug)]
pub struct OutFrame {
    /// The payload (a text frame's JSON), shared by every recipient. Server frames are not
    /// masked, so only a 2–10 byte header is written next to it.
    pub payload: Bytes,
    /// The frame's opcode: text, except for pongs.
    pub opcode: u8,
    /// Set for durable events; used to drop duplicates.
    pub event_id: Option<EventId>,
    /// Publish time in µs since the epoch (0 for control frames): feeds the latency histogram.
    pub published_us: u64,
    /// Set for a backend's `response` frame: which request it answers.
    pub response: Option<Arc<ResponseTag>>,
    /// The payload's compressed forms, shared by every clone: set on text frames at least
    /// `compression_min_bytes` long when compression is on, `None` otherwise.
    pub deflated: Option<Arc<Deflated>>,
}

/// Which client request a backend `response` frame answers.
#[derive(Debug)]
pub struct ResponseTag {
    /// The request's `request_id`, as compact JSON text.
    pub key: String,
    /// More `response` frames for the same request will follow (a streamed answer).
    pub more: bool,
}

impl OutFrame {
    /// A control frame (welcome, ack, error …): no id, no latency measurement.
    pub fn control(text: impl Into<Bytes>) -> Self {
        Self::raw(OP_TEXT, text.into())
    }

    /// A durable event's text frame.
    pub fn event(text: impl Into<Bytes>, id: EventId, published_us: u64) -> Self {
        Self {
            event_id: Some(id),
            published_us,
            ..Self::control(text)
        }
    }

    /// A frame of another opcode (a pong).
    pub fn raw(opcode: u8, payload: Bytes) -> Self {
        Self {
            payload,
            opcode,
            event_id: None,
            published_us: 0,
            response: None,
            deflated: None,
        }
    }

    /// Whether compression applies to this frame (a text frame of at least `min_bytes`).
    pub fn compressible(&self, min_bytes: usize) -> bool {
        self.opcode == OP_TEXT && self.payload.len() >= min_bytes
    }

    /// This frame with a fresh compressed-forms cache, to be cloned to every recipient.
    pub fn with_deflate_cache(&self) -> Self {
        Self {
            deflated: Some(Arc::default()),
            ..self.clone()
        }
    }

    /// The payload as text (empty if it is not UTF-8).
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.payload).unwrap_or_default()
    }

    /// How many bytes this frame takes on the wire (header and payload) for `window`.
    pub(super) fn wire_len(&self, window: u8) -> usize {
        let (h, p) = self.wire(window);
        h.as_bytes().len() + p.len()
    }

    /// The header and payload written to a socket with deflate window `window` (0 = none).
    pub(super) fn wire(&self, window: u8) -> (Header, &Bytes) {
        if window != 0
            && let Some(d) = &self.deflated
            && let Some(z) = d.get(&self.payload, window)
        {
            return (Header::new(self.opcode, z.len()).compressed(), z);
        }
        (Header::new(self.opcode, self.payload.len()), &self.payload)
    }
}
