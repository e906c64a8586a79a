//! Redis Cluster id-shards (docs/scaling.md, "Beyond one Redis primary"; docs/backends.md,
//! "Publishing into a Redis Cluster"): the shard a channel belongs to, event ids that name their
//! shard (`<shard>~<ms>-<seq>`), and the cursor a client keeps across shards (for each shard the
//! highest id received from it, joined with `,`). Ids of one shard are ordered; ids of different
//! shards are not.
//!
//! A sharded id is an [`EventId`] whose `shard` is set. Gateway nodes do not read from a Redis
//! Cluster yet; these are the formats they and the clients will share, fixed with the Function
//! (`wsgw.lua`), which already issues such ids.

use std::fmt;
use std::str::FromStr;

use crate::EventId;

/// How many id-shards channels are spread over. Part of the id and key format: never changes.
pub const ID_SHARDS: u16 = 16;

/// The longest cursor text accepted: every shard named, each with the longest id.
pub const MAX_CURSOR_LEN: usize = ID_SHARDS as usize * (2 + 1 + 20 + 1 + 20 + 1);

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`), one table lookup per byte.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

fn crc32(bytes: &[u8]) -> u32 {
    !bytes
        .iter()
        .fold(!0u32, |c, &b| (c >> 8) ^ CRC_TABLE[((c ^ b as u32) & 0xFF) as usize])
}

/// The id-shard of `channel`: the CRC-32 of its name, modulo [`ID_SHARDS`].
pub fn shard_of(channel: &str) -> u16 {
    (crc32(channel.as_bytes()) % ID_SHARDS as u32) as u16
}

/// Why a string is not a [`ShardCursor`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cursor {0:?}: expected <shard>~<ms>-<seq>[,<shard>~<ms>-<seq>…], one per shard, shards 0-15")]
pub struct CursorError(pub String);

/// A client's position in every id-shard it has received events from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardCursor {
    /// Sharded ids, by shard.
    positions: [Option<EventId>; ID_SHARDS as usize],
}

impl ShardCursor {
    /// The position in `shard` (a sharded id), if the cursor names it.
    pub fn get(&self, shard: u16) -> Option<EventId> {
        self.positions.get(shard as usize).copied().flatten()
    }

    /// Moves the cursor to `id` if that is further in its shard. Returns whether it moved; an
    /// id of no shard never moves it.
    pub fn advance(&mut self, id: EventId) -> bool {
        let Some(slot) = id.shard().and_then(|s| self.positions.get_mut(s as usize)) else {
            return false;
        };
        if slot.is_some_and(|p| p >= id) {
            return false;
        }
        *slot = Some(id);
        true
    }

    /// Whether it names no shard.
    pub fn is_empty(&self) -> bool {
        self.positions.iter().all(Option::is_none)
    }

    /// The positions it names, by shard.
    pub fn iter(&self) -> impl Iterator<Item = EventId> + '_ {
        self.positions.iter().flatten().copied()
    }
}

impl fmt::Display for ShardCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, id) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{id}")?;
        }
        Ok(())
    }
}

impl FromStr for ShardCursor {
    type Err = CursorError;

    /// One `<shard>~<ms>-<seq>` per shard, joined with `,`; a single one is a cursor naming that
    /// shard only. A shard named twice, an empty part or an over-long text is refused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CursorError(s.chars().take(64).collect());
        if s.is_empty() || s.len() > MAX_CURSOR_LEN {
            return Err(err());
        }
        let mut cursor = ShardCursor::default();
        for part in s.split(',') {
            let id: EventId = part.parse().map_err(|_| err())?;
            let Some(shard) = id.shard() else {
                return Err(err());
            };
            if cursor.get(shard).is_some() {
                return Err(err());
            }
            cursor.advance(id);
        }
        Ok(cursor)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn shards_match_zlib_crc32_and_the_function() {
        // zlib.crc32(b"user:42") == 1684999558, and what wsgw.lua answered for these channels.
        assert_eq!(crc32(b"user:42"), 1_684_999_558);
        assert_eq!(crc32(b""), 0);
        for (channel, shard) in [("user:42", 6), ("a", 3), ("b", 9), ("orders:42", 5), ("room/x", 0)] {
            assert_eq!(shard_of(channel), shard, "{channel}");
        }
    }

    #[test]
    fn ids_name_their_shard_and_only_canonical_ones_parse() {
        let id: EventId = "6~1732240000123-5".parse().unwrap();
        assert_eq!(id, EventId::sharded(6, 1_732_240_000_123, 5));
        assert_eq!(id.to_string(), "6~1732240000123-5");
        for bad in [
            "", "~1-0", "6~", "16~1-0", "06~1-0", "+6~1-0", "6~1", "6~a-0", "6~1-0~2", " 6~1-0",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_cursor_keeps_the_highest_id_per_shard() {
        let mut c: ShardCursor = "3~1732240000123-5,7~1732240000200-0".parse().unwrap();
        assert_eq!(c.get(3), Some(EventId::sharded(3, 1_732_240_000_123, 5)));
        assert_eq!(c.get(4), None);
        assert!(!c.advance("3~1732240000123-4".parse().unwrap()), "older in shard 3");
        assert!(c.advance("3~1732240000124-0".parse().unwrap()));
        assert!(c.advance("0~5-0".parse().unwrap()), "a shard it did not name");
        assert!(!c.advance(EventId::new(9, 9)), "an id of no shard");
        assert_eq!(c.to_string(), "0~5-0,3~1732240000124-0,7~1732240000200-0");
        let single: ShardCursor = "7~1-0".parse().unwrap();
        assert_eq!(single.iter().count(), 1, "a single id names its shard only");
        for bad in ["", ",", "3~1-0,", "3~1-0,3~2-0", "1732240000123-5", "3~1-0;7~1-0"] {
            assert!(bad.parse::<ShardCursor>().is_err(), "{bad:?} accepted");
        }
        assert!(ShardCursor::default().is_empty());
    }

    proptest! {
        #[test]
        fn cursors_round_trip(ids in proptest::collection::vec((0u16..ID_SHARDS, any::<u64>(), any::<u64>()), 1..40)) {
            let mut c = ShardCursor::default();
            for (shard, ms, seq) in &ids {
                c.advance(EventId::sharded(*shard, *ms, *seq));
            }
            let text = c.to_string();
            prop_assert!(text.len() <= MAX_CURSOR_LEN);
            prop_assert_eq!(text.parse::<ShardCursor>().unwrap(), c.clone());
            for shard in 0..ID_SHARDS {
                let max = ids.iter().filter(|(s, _, _)| *s == shard).map(|(_, ms, seq)| EventId::sharded(shard, *ms, *seq)).max();
                prop_assert_eq!(c.get(shard), max);
            }
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<ShardCursor>();
            let _ = s.parse::<EventId>();
        }
    }
}
