//! Event ids: `<ms>-<seq>`, the Redis stream id form, ordered numerically; in a Redis Cluster
//! deployment `<shard>~<ms>-<seq>`, naming the id-shard that issued it (see `shard.rs`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An event id: `<ms>-<seq>` from one global sequence, or `<shard>~<ms>-<seq>` from one
/// id-shard's sequence.
///
/// Ordering is numeric on `(shard, ms, seq)`, so `"9-0" < "10-0"` even though the strings sort
/// the other way. Ids of one shard (or of none) are ordered by their sequence; the order between
/// ids of different shards means nothing beyond grouping them by shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    /// The id-shard that issued it, or [`EventId::UNSHARDED`] for the global sequence.
    pub shard: u16,
    /// Milliseconds since the Unix epoch at which the id was issued.
    pub ms: u64,
    /// Sequence within that millisecond.
    pub seq: u64,
}

/// Why a string is not an [`EventId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid event id {0:?}: expected <ms>-<seq>, e.g. 1700000000000-0")]
pub struct EventIdError(pub String);

impl Default for EventId {
    /// `0-0`, below every id of the global sequence.
    fn default() -> Self {
        Self::new(0, 0)
    }
}

impl EventId {
    /// The `shard` of an id from the global sequence (single-primary deployments).
    pub const UNSHARDED: u16 = u16::MAX;

    /// Builds an id of the global sequence from its two parts.
    pub const fn new(ms: u64, seq: u64) -> Self {
        Self {
            shard: Self::UNSHARDED,
            ms,
            seq,
        }
    }

    /// Builds an id of id-shard `shard` (below [`crate::ID_SHARDS`]).
    pub const fn sharded(shard: u16, ms: u64, seq: u64) -> Self {
        Self { shard, ms, seq }
    }

    /// The id-shard that issued it; `None` for the global sequence.
    pub const fn shard(self) -> Option<u16> {
        if self.shard == Self::UNSHARDED {
            None
        } else {
            Some(self.shard)
        }
    }

    /// The same position in the sequence of `shard` (`None`: the global one).
    pub const fn in_shard(self, shard: Option<u16>) -> Self {
        Self {
            shard: match shard {
                Some(s) => s,
                None => Self::UNSHARDED,
            },
            ms: self.ms,
            seq: self.seq,
        }
    }

    /// The smallest id that is strictly greater than `self`; `u64::MAX-u64::MAX`, which has
    /// none, is its own successor (a client can send it as `last_event_id`: saturate, never
    /// overflow).
    pub const fn next(self) -> Self {
        if self.seq == u64::MAX {
            if self.ms == u64::MAX {
                return self;
            }
            Self {
                shard: self.shard,
                ms: self.ms + 1,
                seq: 0,
            }
        } else {
            Self {
                shard: self.shard,
                ms: self.ms,
                seq: self.seq + 1,
            }
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(shard) = self.shard() {
            write!(f, "{shard}~")?;
        }
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for EventId {
    type Err = EventIdError;

    /// `<ms>-<seq>` (or a bare `<ms>`), or `<shard>~<ms>-<seq>` with the shard in canonical
    /// decimal, as the Function writes it. Whether a deployment takes sharded ids is the
    /// gateway's call, not the parser's.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || EventIdError(s.chars().take(64).collect());
        if let Some((shard, rest)) = s.split_once('~') {
            let canonical = !shard.is_empty()
                && shard.len() <= 2
                && shard.bytes().all(|b| b.is_ascii_digit())
                && (shard == "0" || !shard.starts_with('0'));
            let shard: u16 = if canonical {
                shard.parse().map_err(|_| err())?
            } else {
                return Err(err());
            };
            if shard >= crate::ID_SHARDS || !rest.contains('-') || rest.contains('~') {
                return Err(err());
            }
            return Ok(rest.parse::<EventId>().map_err(|_| err())?.in_shard(Some(shard)));
        }
        let (ms, seq) = match s.split_once('-') {
            Some((ms, seq)) => (ms, seq),
            // Redis accepts a bare `<ms>` as `<ms>-0`; so do we.
            None => (s, "0"),
        };
        let digits = |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(err());
        }
        Ok(Self::new(
            ms.parse().map_err(|_| err())?,
            seq.parse().map_err(|_| err())?,
        ))
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        let id: EventId = "1700000000000-7".parse().unwrap();
        assert_eq!(id, EventId::new(1_700_000_000_000, 7));
        assert_eq!(id.to_string(), "1700000000000-7");
        assert_eq!("42".parse::<EventId>().unwrap(), EventId::new(42, 0));
    }

    #[test]
    fn orders_numerically_not_lexically() {
        let a: EventId = "9-5".parse().unwrap();
        let b: EventId = "10-0".parse().unwrap();
        assert!(a < b);
        assert!(EventId::new(10, 1) > EventId::new(10, 0));
        assert_eq!(EventId::new(3, u64::MAX).next(), EventId::new(4, 0));
    }

    #[test]
    fn sharded_ids_name_their_shard_and_order_within_it() {
        let id: EventId = "6~1732240000123-5".parse().unwrap();
        assert_eq!(id, EventId::sharded(6, 1_732_240_000_123, 5));
        assert_eq!(id.shard(), Some(6));
        assert_eq!(id.to_string(), "6~1732240000123-5");
        assert_eq!(id.next(), EventId::sharded(6, 1_732_240_000_123, 6));
        assert_eq!(EventId::new(1, 0).shard(), None);
        assert_eq!(EventId::default().to_string(), "0-0");
        assert!(EventId::sharded(3, 9, 5) < EventId::sharded(3, 10, 0));
        for bad in [
            "16~1-0", "06~1-0", "+6~1-0", "6~1", "~1-0", "6~", "6~1-0~2", "6~a-0", " 6~1-0", "1~2~3-4",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "-",
            "a-1",
            "1-",
            "-1",
            "1-2-3",
            "1 -2",
            "999999999999999999999999-0",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad} accepted");
        }
    }
}
