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

/// Whether a channel name is reserved for the gateway itself: `control` and `control:*` carry
/// the cluster's control messages and canaries on Redis (`<prefix>control…`), so clients and
/// backends may neither publish nor subscribe to them.
pub fn is_reserved(name: &str) -> bool {
    name == "control" || name.starts_with("control:")
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
