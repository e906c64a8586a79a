//! What a token's permission claims grant: which channels (or patterns) a user may subscribe and publish to, and
//! which backend requests it may send. A wildcard must never reach another user's private `user:`/`connection:`
//! channel.

use wsgw_protocol::{CONNECTION_PREFIX, USER_PREFIX, glob_match, validate_channel};

/// Whether `channel` (a name or a pattern) could be someone's private `user:` or `connection:`
/// channel: only grants name those, never a hook's say-so.
pub fn could_be_private(channel: &str) -> bool {
    could_match_prefixed(channel, USER_PREFIX) || could_match_prefixed(channel, CONNECTION_PREFIX)
}

/// Channel permissions from the token's `channels` (subscribe) and `publish` claims: lists of glob patterns where
/// `*` matches any run of bytes.
///
/// The rules:
/// - A permission pattern `P` grants a channel-or-pattern `C` when `glob_match(P, C)`. For a subscription pattern
///   that means `P` matches `C` literally, with `*` in `P` absorbing `*` in `C`; then every channel `C` matches is
///   also matched by `P`, so the grant is sound.
/// - `user:…` and `connection:…` channels are private to their owners (the gateway subscribes each connection to
///   its own `user:<sub>`, `connection:<id>` and `broadcast` by itself). If some `user:` channel could match `C`
///   (e.g. `user:7`, `user:*`, `u*`, `*`), the granting `P` must also have a literal text before its first `*` that
///   starts with `user:`; likewise for `connection:`. So `["*"]` grants every topic but no one's private channel,
///   `["user:*"]` grants all user channels (an admin/support claim), and `*` itself, which could match both kinds,
///   is never granted as a subscription.
/// - Publishing follows the same rules; a publish target is never a pattern.
/// - Names that are not valid channels (see `wsgw_protocol::validate_channel`) are never granted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Patterns from the `channels` claim (absent = empty).
    pub subscribe: Vec<String>,
    /// Patterns from the `publish` claim (absent = empty).
    pub publish: Vec<String>,
    /// Patterns from the `actions` claim: the backend `request` actions allowed. Absent (None)
    /// = every action; present = only those matching.
    pub actions: Option<Vec<String>>,
}

impl Permissions {
    /// May this user subscribe to `channel` (a channel name, or a pattern containing `*`)?
    pub fn can_subscribe(&self, channel: &str) -> bool {
        validate_channel(channel, true).is_ok() && grants(&self.subscribe, channel)
    }

    /// May this user send backend `request`s with this action?
    pub fn can_request(&self, action: &str) -> bool {
        match &self.actions {
            None => true,
            Some(allowed) => allowed.iter().any(|p| glob_match(p, action)),
        }
    }

    /// May this user publish to `channel` (never a pattern)?
    pub fn can_publish(&self, channel: &str) -> bool {
        validate_channel(channel, false).is_ok() && grants(&self.publish, channel)
    }
}

fn grants(patterns: &[String], channel: &str) -> bool {
    let private: Vec<&str> = [USER_PREFIX, CONNECTION_PREFIX]
        .into_iter()
        .filter(|prefix| could_match_prefixed(channel, prefix))
        .collect();
    patterns.iter().any(|pattern| {
        let literal = literal_prefix(pattern);
        glob_match(pattern, channel) && private.iter().all(|prefix| literal.starts_with(prefix))
    })
}

/// The text before the first `*` (all of it if there is none).
fn literal_prefix(pattern: &str) -> &str {
    pattern.find('*').map_or(pattern, |star| &pattern[..star])
}

// Could some channel starting with `prefix` match `channel`? Without `*` only if it starts with the prefix itself;
// with one, the first `*` can absorb whatever of the prefix its literal head does not cover, so it suffices that
// the head and the prefix agree on their common length.
fn could_match_prefixed(channel: &str, prefix: &str) -> bool {
    let head = literal_prefix(channel);
    head.starts_with(prefix) || (channel.contains('*') && prefix.starts_with(head))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn patterns_grant_channels_and_narrower_patterns() {
        let p = perms(&["project:*", "news", "a*c*e"], &["chat:*"]);
        assert!(p.can_subscribe("project:42"));
        assert!(p.can_subscribe("project:1*"), "a narrower pattern");
        assert!(p.can_subscribe("project:*"), "the same pattern");
        assert!(!p.can_subscribe("project*"), "a broader pattern");
        assert!(!p.can_subscribe("projects:1"));
        assert!(p.can_subscribe("news"));
        assert!(!p.can_subscribe("news:1"));
        assert!(p.can_subscribe("abcde"));
        assert!(!p.can_subscribe("bad channel"));
        assert!(p.can_publish("chat:1"));
        assert!(!p.can_publish("chat:*"), "publish targets are never patterns");
        assert!(
            !p.can_publish("project:42"),
            "subscribe rights do not give publish rights"
        );
        assert!(!Permissions::default().can_subscribe("news"));
    }

    #[test]
    fn a_wildcard_grants_every_topic_but_no_one_elses_private_channel() {
        let p = perms(&["*"], &["*"]);
        assert!(p.can_subscribe("news"));
        assert!(p.can_subscribe("project:*"));
        assert!(p.can_subscribe("broadcast"));
        for private in [
            "user:bob",
            "connection:abc",
            "user:*",
            "connection:*",
            "u*",
            "user*",
            "c*",
            "conn*",
            "*",
            "*:bob",
            "us*er:x",
            "connection:a*",
        ] {
            assert!(!p.can_subscribe(private), "{private}");
        }
        assert!(!p.can_publish("user:bob"));
        assert!(!p.can_publish("connection:abc"));
        assert!(p.can_publish("users"), "only the exact prefixes are private");
        assert!(p.can_publish("user"));
        assert!(p.can_subscribe("x*"), "cannot match a private channel");

        let sloppy = perms(&["u*", "user*", "us*:*"], &[]);
        assert!(
            !sloppy.can_subscribe("user:bob"),
            "the literal head must start with `user:`"
        );
    }

    #[test]
    fn explicit_private_prefix_patterns_grant_private_channels() {
        let support = perms(&["user:*", "connection:*"], &["user:*"]);
        assert!(support.can_subscribe("user:bob"));
        assert!(support.can_subscribe("user:*"));
        assert!(support.can_subscribe("user:b*"));
        assert!(support.can_subscribe("connection:abc"));
        assert!(
            !support.can_subscribe("u*"),
            "`u*` also matches topics like `umbrella`, which `user:*` does not cover"
        );
        assert!(
            !support.can_subscribe("*"),
            "could match both kinds; no single pattern grants that"
        );
        assert!(!support.can_subscribe("news"));
        assert!(support.can_publish("user:bob"));
        assert!(!support.can_publish("connection:abc"));

        let one_user = perms(&["user:bob"], &[]);
        assert!(one_user.can_subscribe("user:bob"));
        assert!(!one_user.can_subscribe("user:bobby"));
        assert!(!one_user.can_subscribe("user:*"));

        let teams = perms(&["user:team-*"], &[]);
        assert!(teams.can_subscribe("user:team-7"));
        assert!(!teams.can_subscribe("user:alice"));
    }

    #[test]
    fn could_match_prefixed_is_exact_about_which_patterns_reach_private_channels() {
        for (channel, user) in [
            ("user:x", true),
            ("user:*", true),
            ("u*", true),
            ("user*", true),
            ("*", true),
            ("*x", true),
            ("us*r", true),
            ("user", false),
            ("users:*", false),
            ("x*", false),
            ("news", false),
            ("c*", false),
        ] {
            assert_eq!(could_match_prefixed(channel, USER_PREFIX), user, "{channel}");
        }
        assert!(could_match_prefixed("conn*", CONNECTION_PREFIX));
        assert!(!could_match_prefixed("user:*", CONNECTION_PREFIX));
    }
}
