//! broker/redis/held.rs: pub/sub messages held in memory, bounded by count and by bytes.
//!
//! `Holding`: what the single-primary pub/sub connection (sub.rs, either reader) read while the
//! node waited for a command's confirmations, repaired a gap or waited for a core, for its next
//! reads. Past either bound it drops every held message and the connection ends, as if Redis had
//! cut it: the session reconnects and repairs from history everything above the watermark,
//! which no dropped message had passed (repair.rs). So a flood while the node is busy costs a
//! repair, never the node's memory and never an event.
//!
//! `Held`: the messages a Redis Cluster shard holds while it is repaired (sharded_repair.rs).
//! Past either bound the shard drops every message until the repair ends and releases none: the
//! next repair reads the shard's history from this one's snapshot and brings them all, in order.
//! Releasing only the newer ones would let them pass the dropped ones by id, and the sockets'
//! floors would then drop those when the repair brings them.

use std::collections::VecDeque;

use tracing::warn;

use super::sub_conn::PubMsg;
use super::{BrokerError, unavailable};

/// Messages a connection or an interrupted shard may hold while the node does other work
/// (a repair, a command's confirmations). Past this (or `MAX_HELD_BYTES`), a shard drops them
/// and is repaired again, from history, once this repair ends; the single-primary pub/sub
/// connection (sub.rs, either reader) drops them and ends, and its reconnect repairs from
/// history.
pub(super) const MAX_HELD: usize = 100_000;
/// Bytes of held messages, likewise: twice Redis's default `client-output-buffer-limit` for
/// pub/sub clients (32 MB), past which Redis itself would have dropped the connection.
pub(super) const MAX_HELD_BYTES: usize = 64 << 20;

/// Messages held for a pub/sub connection's next reads, in order, and how it ended meanwhile.
pub(super) struct Holding {
    queue: VecDeque<PubMsg>,
    /// The bytes of the held messages.
    bytes: usize,
    /// At most this many messages, and bytes of them (`MAX_HELD`, `MAX_HELD_BYTES`).
    cap: (usize, usize),
    /// How the connection ended while messages were held: told after them. Also set when the
    /// held messages went past `cap`: then none is left to tell first.
    ended: Option<BrokerError>,
}

impl Default for Holding {
    fn default() -> Self {
        Self::with_cap((MAX_HELD, MAX_HELD_BYTES))
    }
}

impl Holding {
    pub(super) fn with_cap(cap: (usize, usize)) -> Self {
        Self {
            queue: VecDeque::new(),
            bytes: 0,
            cap,
            ended: None,
        }
    }

    /// Holds `m` for the next reads, within the bounds. Past one, drops every held message and
    /// ends the connection; after that, drops `m`.
    pub(super) fn hold(&mut self, m: PubMsg) {
        if self.ended.is_some() {
            return;
        }
        self.bytes += m.bytes();
        self.queue.push_back(m);
        let (count, bytes) = self.cap;
        if self.queue.len() > count || self.bytes > bytes {
            warn!(
                messages = self.queue.len(),
                bytes = self.bytes,
                "redis pub/sub: more messages arrived while the node was busy than it holds; dropping them and reconnecting to repair from history"
            );
            self.queue = VecDeque::new();
            self.bytes = 0;
            self.ended = Some(unavailable("redis pub/sub: held messages over their bound"));
        }
    }

    /// The connection ended (`e`), told after the messages held before.
    pub(super) fn end(&mut self, e: BrokerError) {
        self.ended.get_or_insert(e);
    }

    /// Whether no message is held.
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether the connection ended: nothing more is held.
    pub(super) fn has_ended(&self) -> bool {
        self.ended.is_some()
    }

    /// The next held message, else how the connection ended (once), else `None`.
    pub(super) fn next(&mut self) -> Option<Result<PubMsg, BrokerError>> {
        if let Some(m) = self.queue.pop_front() {
            self.bytes -= m.bytes();
            return Some(Ok(m));
        }
        self.ended.take().map(Err)
    }

    /// (messages, bytes) held.
    #[cfg(test)]
    pub(super) fn size(&self) -> (usize, usize) {
        (self.queue.len(), self.bytes)
    }
}

pub(super) struct Held<T> {
    messages: VecDeque<T>,
    bytes: usize,
    cap: usize,
    cap_bytes: usize,
    dropped: bool,
}

impl<T> Held<T> {
    /// At most `cap` messages and `cap_bytes` bytes of them.
    pub(super) fn new(cap: usize, cap_bytes: usize) -> Self {
        Self {
            messages: VecDeque::new(),
            bytes: 0,
            cap,
            cap_bytes,
            dropped: false,
        }
    }

    /// Holds `m`, of `bytes` bytes; false when it was dropped (a bound was reached, now or
    /// before).
    pub(super) fn push(&mut self, m: T, bytes: usize) -> bool {
        if !self.dropped && (self.messages.len() >= self.cap || self.bytes.saturating_add(bytes) > self.cap_bytes) {
            self.messages = VecDeque::new();
            self.bytes = 0;
            self.dropped = true;
        }
        if self.dropped {
            return false;
        }
        self.messages.push_back(m);
        self.bytes += bytes;
        true
    }

    /// How many messages are held.
    pub(super) fn len(&self) -> usize {
        self.messages.len()
    }

    /// The held messages in arrival order, or `None` if any was dropped: then none is released
    /// and the shard must be repaired again.
    pub(super) fn release(self) -> Option<VecDeque<T>> {
        (!self.dropped).then_some(self.messages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_messages_come_out_in_order_while_under_the_bound() {
        let mut h = Held::new(3, 100);
        assert!(h.push(1, 10) && h.push(2, 10) && h.push(3, 80));
        assert_eq!(h.release(), Some(VecDeque::from([1, 2, 3])));
    }

    #[test]
    fn past_the_bound_nothing_more_is_held_and_nothing_is_released() {
        let mut h = Held::new(3, 1000);
        for m in 1..=3 {
            assert!(h.push(m, 1));
        }
        assert!(!h.push(4, 1), "the fourth is over the bound");
        assert!(
            !h.push(5, 1),
            "and every later one is dropped too, not held past the dropped"
        );
        assert_eq!(h.release(), None);
    }

    #[test]
    fn past_the_byte_bound_nothing_more_is_held_and_nothing_is_released() {
        let mut h = Held::new(1000, 100);
        assert!(h.push(1, 60) && h.push(2, 40), "exactly at the bound is held");
        assert!(!h.push(3, 1), "one byte past it is not");
        assert!(!h.push(4, 0), "nor anything after");
        assert_eq!(h.release(), None);
    }
}
