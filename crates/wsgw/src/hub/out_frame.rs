//! hub/out_frame.rs: a frame as the hub hands it to sockets: one shared encoded frame (header
//! and payload in one buffer, and the payload's compressed forms) for every recipient, plus what
//! ordering, latency and backend answers need; and the bytes it takes on a socket's wire.

use std::sync::Arc;

use bytes::Bytes;
use wsgw_protocol::EventId;

use super::Deflated;
use crate::ws::frame::{self, OP_TEXT};

/// A frame ready to be written: its shared bytes plus what ordering and latency need.
#[derive(Clone, Debug)]
pub struct OutFrame {
    /// The whole uncompressed frame, header and payload (a text frame's JSON) in one buffer,
    /// built once and shared by every recipient: server frames are not masked, so the bytes
    /// are the same for every socket, and a frame written alone goes out in one `send`
    /// (compressed forms likewise, in `deflated`).
    whole: Bytes,
    /// The header's length in `whole` (2–10 bytes).
    head: u8,
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
    pub fn control(text: impl AsRef<[u8]>) -> Self {
        Self::raw(OP_TEXT, text)
    }

    /// A durable event's text frame.
    pub fn event(text: impl AsRef<[u8]>, id: EventId, published_us: u64) -> Self {
        Self {
            event_id: Some(id),
            published_us,
            ..Self::control(text)
        }
    }

    /// A frame of another opcode (a pong). The payload is copied once, behind its header.
    pub fn raw(opcode: u8, payload: impl AsRef<[u8]>) -> Self {
        let payload = payload.as_ref();
        let whole = frame::encode(opcode, payload);
        Self {
            head: (whole.len() - payload.len()) as u8,
            whole,
            opcode,
            event_id: None,
            published_us: 0,
            response: None,
            deflated: None,
        }
    }

    /// The payload (without the header), shared by every clone.
    pub fn payload(&self) -> &[u8] {
        &self.whole[usize::from(self.head)..]
    }

    /// Whether compression applies to this frame (a text frame of at least `min_bytes`).
    pub fn compressible(&self, min_bytes: usize) -> bool {
        self.opcode == OP_TEXT && self.payload().len() >= min_bytes
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
        std::str::from_utf8(self.payload()).unwrap_or_default()
    }

    /// How many bytes this frame takes on the wire (header and payload) for `window`.
    pub(super) fn wire_len(&self, window: u8) -> usize {
        self.wire(window).len()
    }

    /// The whole frame written to a socket with deflate window `window` (0 = none): the shared
    /// uncompressed frame, or its shared compressed form for that window.
    pub(super) fn wire(&self, window: u8) -> &[u8] {
        if window != 0
            && let Some(d) = &self.deflated
            && let Some(z) = d.get(self.opcode, self.payload(), window)
        {
            return z;
        }
        &self.whole
    }
}
