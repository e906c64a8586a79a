//! hub/deflated.rs: permessage-deflate on the write side: a frame's compressed forms, shared by
//! every recipient of a fan-out (`Deflated`), and what one socket's outbox keeps to use them
//! (`DeflateOut`, a few bytes). Never compresses a frame twice for the same window.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::connection::OutFrame;
use crate::ws::deflate;
use crate::ws::frame::{self, Header};

/// A frame's permessage-deflate forms, one per window size (9..=15), each computed the first
/// time a socket with that window writes the frame, then shared: a fan-out compresses once,
/// and a partly written frame's bytes never change. Each form is the whole compressed frame,
/// header (RSV1 set) and payload in one buffer, like the uncompressed one.
#[derive(Debug, Default)]
pub struct Deflated {
    by_window: [OnceLock<Option<Bytes>>; 7],
}

impl Deflated {
    /// The frame of `opcode` whose payload is `payload` compressed with a `window`-bit window,
    /// or `None` if compressing does not make the payload smaller.
    pub fn get(&self, opcode: u8, payload: &[u8], window: u8) -> Option<&Bytes> {
        let slot = &self.by_window[usize::from(window.clamp(9, 15) - 9)];
        slot.get_or_init(|| {
            let z = deflate::compress(payload, window.clamp(9, 15))?;
            Some(frame::encode_with(Header::new(opcode, z.len()).compressed(), &z))
        })
        .as_ref()
    }
}

/// What one socket does with permessage-deflate: its window (0 = not negotiated) and the size
/// from which a text frame is compressed.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct DeflateOut {
    pub(super) window: u8,
    pub(super) min_bytes: u32,
}

impl DeflateOut {
    /// Gives `f` a compressed-forms cache if it is a text frame this socket compresses and
    /// the fan-out did not give it one.
    pub(super) fn prepare(self, f: &mut OutFrame) {
        if self.wants_cache(f) {
            f.deflated = Some(Arc::default());
        }
    }

    /// Whether [`prepare`](Self::prepare) would give `f` a cache.
    pub(super) fn wants_cache(self, f: &OutFrame) -> bool {
        self.window != 0 && f.deflated.is_none() && f.compressible(self.min_bytes as usize)
    }
}
