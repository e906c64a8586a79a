//! Channel names and glob patterns.

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 256;

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// Empty, or longer than [`MAX_CHANNEL_LEN`] bytes.
    #[error("channel must be 1..=256 bytes long")]
    Length,
    /// A byte outside `[A-Za-z0-9_.:@=/-]` (and `*` in patterns).
    #[error("channel may only contain A-Z a-z 0-9 _ . : @ = / - (and * in patterns)")]
    Charset,
}

/// What kind of channel a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// `broadcast`: every connection.
    Broadcast,
    /// `user:<id>`: every connection of one user.
    User,
    /// `connection:<id>`: one connection.
    Connection,
    /// Anything else without `*`: a topic.
    Topic,
    /// A subscription pattern (contains `*`).
    Pattern,
}

impl ChannelKind {
    /// Whether a client subscribes to it explicitly (a topic or a pattern), as opposed to the
    /// automatic `broadcast`, `user:` and `connection:` channels.
    pub const fn is_explicit(self) -> bool {
        matches!(self, Self::Topic | Self::Pattern)
    }
}

/// Checks a channel name (`allow_pattern`: whether `*` is allowed) and returns its kind.
pub fn validate_channel(name: &str, allow_pattern: bool) -> Result<ChannelKind, ChannelError> {
    if name.is_empty() || name.len() > MAX_CHANNEL_LEN {
        return Err(ChannelError::Length);
    }
    let ok = name.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(b, b'_' | b'.' | b':' | b'@' | b'=' | b'/' | b'-')
            || (allow_pattern && b == b'*')
    });
    if !ok {
        return Err(ChannelError::Charset);
    }
    Ok(classify(name))
}

/// The channel every connection is in.
pub const BROADCAST: &str = "broadcast";

/// Prefix of a user's channel (`user:<sub>`).
pub const USER_PREFIX: &str = "user:";

/// Prefix of a connection's channel (`connection:<id>`).
pub const CONNECTION_PREFIX: &str = "connection:";

/// Longest event name, in bytes.
pub const MAX_EVENT_NAME_LEN: usize = 128;

/// The channel of one user: `user:<sub>`.
pub fn user(sub: &str) -> String {
    format!("{USER_PREFIX}{sub}")
}

/// The channel of one connection: `connection:<id>`.
pub fn connection(id: &str) -> String {
    format!("{CONNECTION_PREFIX}{id}")
}

/// Whether `channel` is one of the three channels a connection is in without subscribing:
/// `broadcast`, its user's and its own.
pub fn is_automatic(channel: &str, sub: &str, connection_id: &str) -> bool {
    channel == BROADCAST
        || channel.strip_prefix(USER_PREFIX) == Some(sub)
        || channel.strip_prefix(CONNECTION_PREFIX) == Some(connection_id)
}

/// Whether a channel name, or any channel a pattern could match, is reserved for the gateway
/// itself: `control` and `control:*` carry the cluster's control messages and canaries on
/// Redis (`<prefix>control…`), so clients and backends may neither publish nor subscribe to
/// them.
pub fn is_reserved(name: &str) -> bool {
    if name.contains('*') {
        return glob_intersects(name, "control") || glob_intersects(name, "control:*");
    }
    name == "control" || name.starts_with("control:")
}

/// Why a publish target or event name was refused (the one check the socket and the HTTP API
/// share).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Not a valid channel name (patterns are not publish targets).
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// `control` or `control:*`.
    #[error("{0} is reserved for the gateway")]
    Reserved(String),
    /// The event name is empty or too long.
    #[error("event must be 1..=128 bytes")]
    EventName,
}

/// Checks a publish's channel and event name.
pub fn validate_publish(channel: &str, event: &str) -> Result<(), PublishError> {
    validate_channel(channel, false)?;
    if is_reserved(channel) {
        return Err(PublishError::Reserved(channel.to_owned()));
    }
    if event.is_empty() || event.len() > MAX_EVENT_NAME_LEN {
        return Err(PublishError::EventName);
    }
    Ok(())
}

/// Whether two glob patterns (`*` matches any run of bytes) match at least one common string.
pub fn glob_intersects(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    // reach[i][j]: some string brings `a` to position i and `b` to position j at once.
    let mut reach = vec![vec![false; b.len() + 1]; a.len() + 1];
    reach[0][0] = true;
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            if !reach[i][j] {
                continue;
            }
            let (ca, cb) = (a.get(i), b.get(j));
            if ca == Some(&b'*') {
                reach[i + 1][j] = true; // the star matches nothing more
            }
            if cb == Some(&b'*') {
                reach[i][j + 1] = true;
            }
            match (ca, cb) {
                (Some(b'*'), Some(b'*')) => {}
                // A star consumes one byte that the other side spells out.
                (Some(b'*'), Some(&c)) if c != b'*' => reach[i][j + 1] = true,
                (Some(&c), Some(b'*')) if c != b'*' => reach[i + 1][j] = true,
                (Some(x), Some(y)) if x == y => reach[i + 1][j + 1] = true,
                _ => {}
            }
        }
    }
    reach[a.len()][b.len()]
}

/// The kind of an already valid channel name.
pub fn classify(name: &str) -> ChannelKind {
    if name.contains('*') {
        ChannelKind::Pattern
    } else if name == "broadcast" {
        ChannelKind::Broadcast
    } else if name.starts_with("user:") {
        ChannelKind::User
    } else if name.starts_with("connection:") {
        ChannelKind::Connection
    } else {
        ChannelKind::Topic
    }
}

/// Glob match where `*` matches any run of bytes (including none). Linear time in practice:
/// classic two-pointer matching with one backtrack point.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_names() {
        assert_eq!(validate_channel("project:42", false), Ok(ChannelKind::Topic));
        assert_eq!(validate_channel("user:7", false), Ok(ChannelKind::User));
        assert_eq!(validate_channel("broadcast", false), Ok(ChannelKind::Broadcast));
        assert_eq!(validate_channel("connection:ab", false), Ok(ChannelKind::Connection));
        assert_eq!(validate_channel("project:*", true), Ok(ChannelKind::Pattern));
        assert_eq!(validate_channel("project:*", false), Err(ChannelError::Charset));
        assert_eq!(validate_channel("", false), Err(ChannelError::Length));
        assert_eq!(validate_channel(&"a".repeat(257), false), Err(ChannelError::Length));
        assert_eq!(validate_channel("a b", false), Err(ChannelError::Charset));
        assert_eq!(validate_channel("é", false), Err(ChannelError::Charset));
    }

    #[test]
    fn reserved_names_and_patterns_that_could_reach_them() {
        for r in [
            "control",
            "control:node-1",
            "cont*",
            "*",
            "c*l",
            "control*",
            "*:node-1",
            "*trol",
        ] {
            assert!(is_reserved(r), "{r}");
        }
        for ok in ["controls", "project:*", "contr", "user:*", "x*", "control-*"] {
            assert!(!is_reserved(ok), "{ok}");
        }
    }

    #[test]
    fn glob_intersection() {
        assert!(glob_intersects("a*", "*b"));
        assert!(glob_intersects("a*c", "abc"));
        assert!(!glob_intersects("a*c", "abd"));
        assert!(!glob_intersects("ab", "a"));
        assert!(glob_intersects("*", ""));
        assert!(!glob_intersects("x*", "y*"));
    }

    #[test]
    fn automatic_channels_and_publish_checks() {
        assert!(is_automatic(BROADCAST, "u", "c"));
        assert!(is_automatic(&user("u"), "u", "c"));
        assert!(is_automatic(&connection("c"), "u", "c"));
        assert!(!is_automatic("user:v", "u", "c"));
        assert_eq!(validate_publish("chat:1", "msg"), Ok(()));
        assert_eq!(
            validate_publish("control:x", "msg"),
            Err(PublishError::Reserved("control:x".into()))
        );
        assert_eq!(
            validate_publish("chat:*", "msg"),
            Err(PublishError::Channel(ChannelError::Charset))
        );
        assert_eq!(validate_publish("chat:1", ""), Err(PublishError::EventName));
        assert_eq!(
            validate_publish("chat:1", &"e".repeat(129)),
            Err(PublishError::EventName)
        );
    }

    #[test]
    fn globs() {
        assert!(glob_match("project:*", "project:42"));
        assert!(glob_match("project:*", "project:"));
        assert!(!glob_match("project:*", "projects:1"));
        assert!(glob_match("*", "anything:at/all"));
        assert!(glob_match("a*c*e", "abcde"));
        assert!(!glob_match("a*c*e", "abcdf"));
        assert!(glob_match("agent:7", "agent:7"));
        assert!(!glob_match("agent:7", "agent:70"));
        // a subscription pattern is covered by a permission pattern that matches it literally
        assert!(glob_match("project:*", "project:1*"));
        assert!(!glob_match("project:1*", "project:*"));
    }
}
