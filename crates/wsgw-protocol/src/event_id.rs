//! Event ids: `<ms>-<seq>`, the Redis stream id form, ordered numerically.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A globally monotonic event id, `<ms>-<seq>`.
///
/// Ordering is numeric on `(ms, seq)`, so `"9-0" < "10-0"` even though the strings sort
/// the other way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId {
    /// Milliseconds since the Unix epoch at which the id was issued.
    pub ms: u64,
    /// Sequence within that millisecond.
    pub seq: u64,
}

/// Why a string is not an [`EventId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid event id {0:?}: expected <ms>-<seq>, e.g. 1700000000000-0")]
pub struct EventIdError(pub String);

impl EventId {
    /// Builds an id from its two parts.
    pub const fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
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
                ms: self.ms + 1,
                seq: 0,
            }
        } else {
            Self {
                ms: self.ms,
                seq: self.seq + 1,
            }
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for EventId {
    type Err = EventIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || EventIdError(s.chars().take(64).collect());
        let (ms, seq) = match s.split_once('-') {
            Some((ms, seq)) => (ms, seq),
            // Redis accepts a bare `<ms>` as `<ms>-0`; so do we.
            None => (s, "0"),
        };
        let digits = |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(err());
        }
        Ok(Self {
            ms: ms.parse().map_err(|_| err())?,
            seq: seq.parse().map_err(|_| err())?,
        })
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
