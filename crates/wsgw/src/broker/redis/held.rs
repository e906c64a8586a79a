//! broker/redis/held.rs: the messages a Redis Cluster shard holds while it is repaired
//! (sharded_repair.rs), bounded by count. Past the bound the shard drops every message until the
//! repair ends and releases none: the next repair reads the shard's history from this one's
//! snapshot and brings them all, in order. Releasing only the newer ones would let them pass the
//! dropped ones by id, and the sockets' floors would then drop those when the repair brings them.

use std::collections::VecDeque;

pub(super) struct Held<T> {
    messages: VecDeque<T>,
    cap: usize,
    dropped: bool,
}

impl<T> Held<T> {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            messages: VecDeque::new(),
            cap,
            dropped: false,
        }
    }

    /// Holds `m`; false when it was dropped (the bound was reached, now or before).
    pub(super) fn push(&mut self, m: T) -> bool {
        if !self.dropped && self.messages.len() >= self.cap {
            self.messages = VecDeque::new();
            self.dropped = true;
        }
        if self.dropped {
            return false;
        }
        self.messages.push_back(m);
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
        let mut h = Held::new(3);
        assert!(h.push(1) && h.push(2) && h.push(3));
        assert_eq!(h.release(), Some(VecDeque::from([1, 2, 3])));
    }

    #[test]
    fn past_the_bound_nothing_more_is_held_and_nothing_is_released() {
        let mut h = Held::new(3);
        for m in 1..=3 {
            assert!(h.push(m));
        }
        assert!(!h.push(4), "the fourth is over the bound");
        assert!(
            !h.push(5),
            "and every later one is dropped too, not held past the dropped"
        );
        assert_eq!(h.release(), None);
    }
}
