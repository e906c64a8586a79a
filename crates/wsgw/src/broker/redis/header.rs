//! broker/redis/header.rs: the header line a pub/sub message may carry before its frame
//! (wsgw.lua): `#x:<ids>\n`, the connection ids the event must not reach, and in a Redis Cluster
//! `~<ms>-<seq>` as its last element, the channel's previous durable event, by which a node tells
//! it missed a message (sharded.rs). Pure parsing, unit-tested here.

use wsgw_protocol::EventId;

/// What a message's header line says.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Header<'a> {
    /// Comma-separated connection ids, if any.
    pub(super) exclude: Option<&'a str>,
    /// The channel's previous durable event, without its shard (the caller knows the shard).
    pub(super) prev: Option<EventId>,
}

impl<'a> Header<'a> {
    /// The excluded connection ids.
    pub(super) fn excluded(&self) -> Vec<&'a str> {
        self.exclude.map(|x| x.split(',').collect()).unwrap_or_default()
    }
}

/// Splits a message into its header and its frame; `None` for a header line without its end
/// or not UTF-8. An unreadable `~` element is ignored: the message is still delivered.
pub(super) fn split(payload: &[u8]) -> Option<(Header<'_>, &[u8])> {
    let Some(rest) = payload.strip_prefix(b"#x:") else {
        return Some((Header::default(), payload));
    };
    let nl = rest.iter().position(|b| *b == b'\n')?;
    let line = std::str::from_utf8(&rest[..nl]).ok()?;
    let body = &rest[nl + 1..];
    let (ids, prev) = match line.rfind('~') {
        Some(i) => (line[..i].trim_end_matches(','), line[i + 1..].parse().ok()),
        None => (line, None),
    };
    let exclude = (!ids.is_empty()).then_some(ids);
    Some((Header { exclude, prev }, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> EventId {
        s.parse().unwrap()
    }

    #[test]
    fn headers_split_into_exclude_list_previous_event_and_frame() {
        let plain = split(b"{\"type\":\"event\"}").unwrap();
        assert_eq!(plain, (Header::default(), &b"{\"type\":\"event\"}"[..]));

        let (h, body) = split(b"#x:c1,c2\n{}").unwrap();
        assert_eq!(h.exclude, Some("c1,c2"));
        assert_eq!(h.prev, None);
        assert_eq!(h.excluded(), ["c1", "c2"]);
        assert_eq!(body, b"{}");

        let (h, body) = split(b"#x:~1700000000000-3\n{}").unwrap();
        assert_eq!((h.exclude, h.prev), (None, Some(id("1700000000000-3"))));
        assert!(h.excluded().is_empty());
        assert_eq!(body, b"{}");

        let (h, _) = split(b"#x:c1,c2,~17-0\n{}").unwrap();
        assert_eq!((h.exclude, h.prev), (Some("c1,c2"), Some(id("17-0"))));
        assert_eq!(h.excluded(), ["c1", "c2"]);
    }

    #[test]
    fn a_broken_header_drops_the_message_and_a_broken_previous_id_is_ignored() {
        assert_eq!(split(b"#x:c1"), None, "no end of line");
        assert_eq!(split(b"#x:\xff\n{}"), None, "not UTF-8");
        let (h, body) = split(b"#x:c1,~nonsense\n{}").unwrap();
        assert_eq!((h.exclude, h.prev), (Some("c1"), None));
        assert_eq!(body, b"{}");
    }
}
