//! hub/floors.rs: a socket's dedup floors, one per id-shard it has durable events from (see the
//! invariant on `Outbox` in connection.rs). A single-primary deployment has one sequence, so a
//! socket keeps at most one floor and no allocation; in a Redis Cluster deployment ids of
//! different shards are not ordered against each other, so each shard gets its own.

use wsgw_protocol::EventId;

/// Highest durable id per shard (`EventId::shard`), each shard at most once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) enum Floors {
    #[default]
    Empty,
    One(EventId),
    Many(Vec<EventId>),
}

impl Floors {
    /// Floors at the given ids (a client's `last_event_id`, one id per shard).
    pub(super) fn at(ids: &[EventId]) -> Self {
        let mut f = Self::Empty;
        for id in ids {
            f.raise(*id);
        }
        f
    }

    /// The floor of `id`'s shard.
    pub(super) fn of(&self, id: EventId) -> Option<EventId> {
        match self {
            Self::Empty => None,
            Self::One(f) => (f.shard == id.shard).then_some(*f),
            Self::Many(v) => v.iter().find(|f| f.shard == id.shard).copied(),
        }
    }

    /// Moves the floor of `id`'s shard up to `id` (never down).
    pub(super) fn raise(&mut self, id: EventId) {
        match self {
            Self::Empty => *self = Self::One(id),
            Self::One(f) if f.shard == id.shard => *f = (*f).max(id),
            Self::One(f) => *self = Self::Many(vec![*f, id]),
            Self::Many(v) => match v.iter_mut().find(|f| f.shard == id.shard) {
                Some(f) => *f = (*f).max(id),
                None => v.push(id),
            },
        }
    }

    /// Moves the floor of `id`'s shard down to `id` if it is above.
    pub(super) fn cap(&mut self, id: EventId) {
        match self {
            Self::Empty => {}
            Self::One(f) => {
                if f.shard == id.shard && *f > id {
                    *f = id;
                }
            }
            Self::Many(v) => {
                for f in v.iter_mut().filter(|f| f.shard == id.shard && **f > id) {
                    *f = id;
                }
            }
        }
    }

    /// Every floor.
    pub(super) fn iter(&self) -> impl Iterator<Item = EventId> + '_ {
        let (one, many) = match self {
            Self::Empty => (None, &[][..]),
            Self::One(f) => (Some(*f), &[][..]),
            Self::Many(v) => (None, v.as_slice()),
        };
        one.into_iter().chain(many.iter().copied())
    }

    /// Any one floor (a single-primary socket's only one).
    pub(super) fn first(&self) -> Option<EventId> {
        match self {
            Self::Empty => None,
            Self::One(f) => Some(*f),
            Self::Many(v) => v.first().copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_floor_per_shard_each_only_rising() {
        let mut f = Floors::default();
        assert_eq!(f.of(EventId::new(1, 0)), None);
        f.raise(EventId::new(5, 0));
        assert_eq!(f, Floors::One(EventId::new(5, 0)), "one sequence: no allocation");
        f.raise(EventId::new(4, 0));
        assert_eq!(f.of(EventId::new(9, 9)), Some(EventId::new(5, 0)), "never down");
        f.raise(EventId::sharded(3, 1, 0));
        f.raise(EventId::sharded(7, 100, 0));
        f.raise(EventId::sharded(3, 2, 0));
        assert_eq!(f.of(EventId::sharded(3, 0, 0)), Some(EventId::sharded(3, 2, 0)));
        assert_eq!(f.of(EventId::sharded(7, 0, 0)), Some(EventId::sharded(7, 100, 0)));
        assert_eq!(f.of(EventId::sharded(8, 0, 0)), None, "a shard it has nothing from");
        assert_eq!(f.of(EventId::new(0, 0)), Some(EventId::new(5, 0)));
    }

    #[test]
    fn cap_lowers_only_its_own_shard() {
        let mut f = Floors::at(&[EventId::sharded(1, 50, 0), EventId::sharded(2, 50, 0)]);
        f.cap(EventId::sharded(1, 10, 0));
        f.cap(EventId::sharded(2, 60, 0));
        f.cap(EventId::sharded(3, 1, 0));
        assert_eq!(f.of(EventId::sharded(1, 0, 0)), Some(EventId::sharded(1, 10, 0)));
        assert_eq!(f.of(EventId::sharded(2, 0, 0)), Some(EventId::sharded(2, 50, 0)));
        assert_eq!(f.of(EventId::sharded(3, 0, 0)), None);
        let mut one = Floors::at(&[EventId::new(9, 0)]);
        one.cap(EventId::new(3, 0));
        assert_eq!(one.first(), Some(EventId::new(3, 0)));
    }
}
