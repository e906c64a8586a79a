//! broker/redis/held.rs: the bounds on pub/sub messages held in memory, and the messages a
//! Redis Cluster shard holds while it is repaired (sharded_repair.rs), bounded by count and by
//! bytes. Past either bound the shard drops every message until the repair ends and releases
//! none: the next repair reads the shard's history from this one's
//! snapshot and brings them all, in order. Releasing only the newer ones would let them pass the
//! dropped ones by id, and the sockets' floors would then drop those when the repair brings them.

use std::collections::VecDeque;

/// Messages a connection or an interrupted shard may hold while the node does other work
/// (a repair, a command's confirmations). Past this (or `MAX_HELD_BYTES`), a shard drops them
/// and is repaired again, from history, once this repair ends; the plain pub/sub connection
/// (sub_conn.rs) drops them and ends, and its reconnect repairs from history.
pub(super) const MAX_HELD: usize = 100_000;
/// Bytes of held messages, likewise: twice Redis's default `client-output-buffer-limit` for
/// pub/sub clients (32 MB), past which Redis itself would have dropped the connection.
pub(super) const MAX_HELD_BYTES: usize = 64 << 20;

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
