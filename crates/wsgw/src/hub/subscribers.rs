//! The sockets of one channel, pattern or user on this node. Most of those sets hold one socket
//! (every socket has its own `connection:<id>` channel, and most users one socket), so one
//! subscriber is kept inline and a map is allocated only for a second one: an idle socket's
//! index entries then cost no heap beyond the hub's own tables. The map is boxed so that those
//! tables' slots stay small (24 bytes, not 80: about 250 bytes per idle socket).

use std::sync::Arc;

use indexmap::IndexMap;

use super::Connection;

/// Sockets by their hub key, in no particular order.
#[derive(Default)]
pub(super) enum Subscribers {
    #[default]
    Empty,
    One(u64, Arc<Connection>),
    Many(Box<IndexMap<u64, Arc<Connection>>>),
}

impl Subscribers {
    /// Adds (or replaces) the socket under `key`.
    pub fn insert(&mut self, key: u64, conn: Arc<Connection>) {
        match self {
            Self::Empty => *self = Self::One(key, conn),
            Self::One(k, c) if *k == key => *c = conn,
            Self::One(..) => {
                let Self::One(k, c) = std::mem::take(self) else {
                    unreachable!("matched One above")
                };
                let mut map = IndexMap::with_capacity(2);
                map.insert(k, c);
                map.insert(key, conn);
                *self = Self::Many(Box::new(map));
            }
            Self::Many(map) => {
                map.insert(key, conn);
            }
        }
    }

    /// Drops the socket under `key`, if there.
    pub fn swap_remove(&mut self, key: &u64) {
        match self {
            Self::One(k, _) if k == key => *self = Self::Empty,
            Self::Many(map) => {
                map.swap_remove(key);
                if map.is_empty() {
                    *self = Self::Empty;
                }
            }
            _ => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Self::Empty)
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Empty => 0,
            Self::One(..) => 1,
            Self::Many(map) => map.len(),
        }
    }

    pub fn contains_key(&self, key: &u64) -> bool {
        match self {
            Self::Empty => false,
            Self::One(k, _) => k == key,
            Self::Many(map) => map.contains_key(key),
        }
    }

    /// Each socket with its key.
    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Arc<Connection>)> + Clone {
        let (one, many) = match self {
            Self::Empty => (None, None),
            Self::One(k, c) => (Some((k, c)), None),
            Self::Many(map) => (None, Some(map.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// Each socket.
    pub fn values(&self) -> impl Iterator<Item = &Arc<Connection>> {
        self.iter().map(|(_, c)| c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_is_three_words() {
        assert_eq!(std::mem::size_of::<Subscribers>(), 24);
    }

    fn conn(id: &str) -> Arc<Connection> {
        Arc::new(Connection::new(Arc::from(id), Arc::from("u"), 8, &[]))
    }

    fn keys(s: &Subscribers) -> Vec<u64> {
        let mut k: Vec<u64> = s.iter().map(|(k, _)| *k).collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn one_inline_then_a_map_then_empty_again() {
        let mut s = Subscribers::default();
        assert!(s.is_empty());
        s.insert(1, conn("a"));
        assert!(matches!(s, Subscribers::One(1, _)));
        s.insert(1, conn("a2"));
        assert_eq!(s.values().map(|c| c.id.to_string()).collect::<Vec<_>>(), ["a2"]);
        s.insert(2, conn("b"));
        s.insert(3, conn("c"));
        assert_eq!(keys(&s), [1, 2, 3]);
        assert_eq!(s.len(), 3);
        assert!(s.contains_key(&2) && !s.contains_key(&4));
        s.swap_remove(&2);
        s.swap_remove(&9);
        assert_eq!(keys(&s), [1, 3]);
        s.swap_remove(&1);
        s.swap_remove(&3);
        assert!(s.is_empty());
        assert_eq!(s.iter().count(), 0);
        s.insert(5, conn("e"));
        s.swap_remove(&6);
        assert_eq!(keys(&s), [5]);
        s.swap_remove(&5);
        assert!(s.is_empty());
    }
}
