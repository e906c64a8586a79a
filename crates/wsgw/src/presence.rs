//! presence.rs: channel presence (`WSGW_PRESENCE_CHANNELS`). Which channels are tracked, and
//! which of this node's sockets are members of which tracked channel, turned into `join` and
//! `leave` changes as sockets subscribe, unsubscribe and close. Pure bookkeeping: the brokers
//! store and deliver what it computes (`broker/memory.rs` in the process,
//! `broker/redis/channel_presence.rs` cluster-wide). Never does I/O, never touches a socket.

use std::collections::HashMap;
use std::sync::Arc;

use indexmap::IndexMap;
use wsgw_protocol::{PresenceClient, ServerFrame, glob_match, validate_channel};

use crate::hub::Connection;

/// Most clients one `presence` answer (or `GET /api/presence/channels/{channel}`) lists; a
/// channel with more members lists this many of them.
pub const MAX_PRESENCE_CLIENTS: usize = 1000;

/// Checks the `WSGW_PRESENCE_CHANNELS` patterns: each must be a valid channel name or pattern.
pub fn validate_patterns(patterns: &[String]) -> Result<(), String> {
    for p in patterns {
        validate_channel(p, true).map_err(|e| format!("{p:?}: {e}"))?;
    }
    Ok(())
}

/// Whether `channel` (a channel name, never a pattern) has its presence tracked.
pub fn is_tracked(patterns: &[String], channel: &str) -> bool {
    !channel.contains('*') && patterns.iter().any(|p| glob_match(p, channel))
}

/// One socket joining or leaving one tracked channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The tracked channel.
    pub channel: Arc<str>,
    /// The socket's connection id.
    pub connection_id: Arc<str>,
    /// The socket's user.
    pub user_id: Arc<str>,
    /// `true`: joined; `false`: left.
    pub joined: bool,
}

impl Change {
    /// The `join` or `leave` frame subscribers of the channel receive.
    pub fn frame(&self) -> String {
        let (channel, user_id, connection_id) = (
            self.channel.to_string(),
            self.user_id.to_string(),
            self.connection_id.to_string(),
        );
        let f = if self.joined {
            ServerFrame::Join {
                channel,
                user_id,
                connection_id,
            }
        } else {
            ServerFrame::Leave {
                channel,
                user_id,
                connection_id,
            }
        };
        f.to_json()
    }

    /// The member as listed, on `node`.
    pub fn client(&self, node: &str) -> PresenceClient {
        PresenceClient {
            user_id: self.user_id.to_string(),
            connection_id: self.connection_id.to_string(),
            node: node.to_owned(),
        }
    }
}

/// One member socket (the latest with its id here) and the tracked channels it is in.
type Memberships = (Arc<Connection>, Vec<Arc<str>>);

/// This node's members of tracked channels. A socket is a member of a tracked channel it is
/// subscribed to by name (a pattern subscription receives `join`/`leave` of the channels it
/// matches but is not a member). Bounded by the hub: one entry per local subscription.
#[derive(Debug, Default)]
pub struct Tracker {
    patterns: Vec<String>,
    /// Each member socket: its user and tracked channels.
    by_conn: HashMap<Arc<str>, Memberships>,
    /// Each tracked channel: its member sockets (connection id → user), in join order.
    by_channel: HashMap<Arc<str>, IndexMap<Arc<str>, Arc<str>>>,
}

impl Tracker {
    /// A tracker for the channels `patterns` match (none: presence is off).
    pub fn new(patterns: Vec<String>) -> Self {
        Self {
            patterns,
            ..Self::default()
        }
    }

    /// Whether any channel is tracked.
    pub fn is_on(&self) -> bool {
        !self.patterns.is_empty()
    }

    /// Brings `conn`'s memberships in line with its subscriptions now; returns the joins and
    /// leaves that takes. A socket replaced by a newer one with its id is left alone (the newer
    /// one's own update takes over the id's memberships).
    pub fn update(&mut self, conn: &Arc<Connection>) -> Vec<Change> {
        self.update_to(conn, &conn.channels())
    }

    /// [`Tracker::update`] to `channels`, the socket's subscriptions when its session asked for
    /// the update. A Redis node's presence task runs later: by then the socket may be in a
    /// channel its node does not listen to yet, and a `join` sent for it would reach no socket
    /// of that node, the joining one included.
    pub fn update_to(&mut self, conn: &Arc<Connection>, channels: &[Arc<str>]) -> Vec<Change> {
        if !self.is_on() || conn.is_replaced() {
            return Vec::new();
        }
        let now: Vec<Arc<str>> = channels
            .iter()
            .filter(|c| is_tracked(&self.patterns, c))
            .cloned()
            .collect();
        let mut changes = Vec::new();
        let before = match self.by_conn.get(&conn.id) {
            Some((known, chans)) if known.user_id == conn.user_id => chans.clone(),
            // The id now belongs to another user's socket: the old one left everything.
            Some(_) => {
                changes = self.remove(&conn.id);
                Vec::new()
            }
            None => Vec::new(),
        };
        for ch in before.iter().filter(|c| !now.contains(c)) {
            self.unindex(ch, &conn.id);
            changes.push(self.change(ch, &conn.id, &conn.user_id, false));
        }
        for ch in now.iter().filter(|c| !before.contains(c)) {
            self.by_channel
                .entry(ch.clone())
                .or_default()
                .insert(conn.id.clone(), conn.user_id.clone());
            changes.push(self.change(ch, &conn.id, &conn.user_id, true));
        }
        if now.is_empty() {
            self.by_conn.remove(&conn.id);
        } else {
            self.by_conn.insert(conn.id.clone(), (conn.clone(), now));
        }
        changes
    }

    /// A socket closed: it leaves every tracked channel it was in.
    pub fn remove(&mut self, connection_id: &str) -> Vec<Change> {
        let Some((id, (conn, chans))) = self.by_conn.remove_entry(connection_id) else {
            return Vec::new();
        };
        chans
            .iter()
            .map(|ch| {
                self.unindex(ch, &id);
                self.change(ch, &id, &conn.user_id, false)
            })
            .collect()
    }

    /// Drops the members replaced by a newer socket with their id that is not `live` here: a
    /// socket taken over on another node closes without a disconnect of its own (one closed
    /// otherwise is removed by its disconnect, which may still be on its way). Returns them as
    /// leaves.
    pub fn remove_replaced(&mut self, live: impl Fn(&str) -> bool) -> Vec<Change> {
        let gone: Vec<Arc<str>> = self
            .by_conn
            .iter()
            .filter(|(id, (conn, _))| conn.is_replaced() && !live(id))
            .map(|(id, _)| id.clone())
            .collect();
        gone.iter().flat_map(|id| self.remove(id)).collect()
    }

    /// Every member leaves (the node shuts down).
    pub fn remove_all(&mut self) -> Vec<Change> {
        let ids: Vec<Arc<str>> = self.by_conn.keys().cloned().collect();
        ids.iter().flat_map(|id| self.remove(id)).collect()
    }

    /// Members of `channel` on this node, at most [`MAX_PRESENCE_CLIENTS`], as joins.
    pub fn members(&self, channel: &str) -> Vec<Change> {
        self.by_channel
            .get(channel)
            .into_iter()
            .flat_map(|m| m.iter())
            .take(MAX_PRESENCE_CLIENTS)
            .map(|(id, user)| Change {
                channel: Arc::from(channel),
                connection_id: id.clone(),
                user_id: user.clone(),
                joined: true,
            })
            .collect()
    }

    /// Every membership on this node, as joins.
    pub fn all(&self) -> Vec<Change> {
        self.by_channel
            .iter()
            .flat_map(|(ch, m)| {
                m.iter().map(move |(id, user)| Change {
                    channel: ch.clone(),
                    connection_id: id.clone(),
                    user_id: user.clone(),
                    joined: true,
                })
            })
            .collect()
    }

    /// The tracked channels this node has members in.
    pub fn channels(&self) -> Vec<Arc<str>> {
        self.by_channel.keys().cloned().collect()
    }

    fn unindex(&mut self, channel: &str, id: &str) {
        if let Some(m) = self.by_channel.get_mut(channel) {
            m.shift_remove(id);
            if m.is_empty() {
                self.by_channel.remove(channel);
            }
        }
    }

    fn change(&self, channel: &Arc<str>, id: &Arc<str>, user: &Arc<str>, joined: bool) -> Change {
        Change {
            channel: channel.clone(),
            connection_id: id.clone(),
            user_id: user.clone(),
            joined,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;
    use crate::metrics::Metrics;

    fn summary(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| format!("{}{}:{}", if c.joined { '+' } else { '-' }, c.channel, c.connection_id))
            .collect()
    }

    #[test]
    fn subscriptions_become_joins_and_leaves_of_tracked_channels_only() {
        let hub = Hub::new("n".into(), Metrics::new());
        let mut t = Tracker::new(vec!["chat:*".into()]);
        let a = hub.register(Connection::new(Arc::from("a"), Arc::from("alice"), 10, &[]));
        hub.subscribe(&a, "chat:1");
        hub.subscribe(&a, "news");
        hub.subscribe(&a, "chat:*");
        assert_eq!(summary(&t.update(&a)), ["+chat:1:a"], "not news, not the pattern");
        assert!(t.update(&a).is_empty(), "nothing changed");
        hub.subscribe(&a, "chat:2");
        hub.unsubscribe(&a, "chat:1");
        assert_eq!(summary(&t.update(&a)), ["-chat:1:a", "+chat:2:a"]);
        assert_eq!(t.members("chat:2").len(), 1);
        assert!(t.members("chat:1").is_empty());
        assert_eq!(summary(&t.remove("a")), ["-chat:2:a"]);
        assert!(t.remove("a").is_empty());
        assert!(t.channels().is_empty());
        assert_eq!(
            Change {
                channel: Arc::from("chat:1"),
                connection_id: Arc::from("a"),
                user_id: Arc::from("alice"),
                joined: false
            }
            .frame(),
            r#"{"type":"leave","channel":"chat:1","user_id":"alice","connection_id":"a"}"#
        );
    }

    #[test]
    fn an_update_follows_the_channels_its_session_saw_not_a_later_subscribe() {
        let hub = Hub::new("n".into(), Metrics::new());
        let mut t = Tracker::new(vec!["chat:*".into()]);
        let a = hub.register(Connection::new(Arc::from("a"), Arc::from("alice"), 10, &[]));
        // The welcome asked for an update with no channel; before the presence task got to it,
        // the socket began subscribing to chat:1 (its node not listening to it yet).
        let at_welcome = a.channels();
        hub.subscribe(&a, "chat:1");
        assert!(
            t.update_to(&a, &at_welcome).is_empty(),
            "no join before the node listens"
        );
        // The subscribe's own update, once listened to, sends the join.
        assert_eq!(summary(&t.update_to(&a, &a.channels())), ["+chat:1:a"]);
        // An id taken by another user: the old one leaves, the new one joins.
        let b = hub.register(Connection::new(Arc::from("a"), Arc::from("bob"), 10, &[]));
        hub.subscribe(&b, "chat:2");
        assert_eq!(summary(&t.update_to(&b, &b.channels())), ["-chat:1:a", "+chat:2:a"]);
    }

    #[test]
    fn only_a_socket_replaced_and_gone_from_the_hub_is_dropped_without_its_disconnect() {
        let hub = Hub::new("n".into(), Metrics::new());
        let mut t = Tracker::new(vec!["chat:*".into()]);
        let a = hub.register(Connection::new(Arc::from("a"), Arc::from("alice"), 10, &[]));
        let b = hub.register(Connection::new(Arc::from("b"), Arc::from("bob"), 10, &[]));
        hub.subscribe(&a, "chat:1");
        hub.subscribe(&b, "chat:1");
        t.update(&a);
        t.update(&b);
        // b closed normally: its disconnect (maybe still queued) sends its leave, not this.
        hub.remove(&b);
        // a's id was taken over (here, on this node: the newer socket is live).
        let a2 = hub.register(Connection::new(Arc::from("a"), Arc::from("alice"), 10, &[]));
        let live = |id: &str| hub.connection(id).is_some();
        assert!(t.remove_replaced(live).is_empty());
        hub.remove(&a2);
        let live = |id: &str| hub.connection(id).is_some();
        assert_eq!(summary(&t.remove_replaced(live)), ["-chat:1:a"]);
        assert_eq!(summary(&t.remove("b")), ["-chat:1:b"]);
    }

    #[test]
    fn presence_off_tracks_nothing_and_patterns_are_checked() {
        let hub = Hub::new("n".into(), Metrics::new());
        let mut t = Tracker::new(Vec::new());
        let a = hub.register(Connection::new(Arc::from("a"), Arc::from("alice"), 10, &[]));
        hub.subscribe(&a, "chat:1");
        assert!(t.update(&a).is_empty());
        assert!(validate_patterns(&["chat:*".into(), "room:*:live".into()]).is_ok());
        assert!(validate_patterns(&["bad channel".into()]).is_err());
        assert!(is_tracked(&["chat:*".into()], "chat:1"));
        assert!(!is_tracked(&["chat:*".into()], "chat:*"));
    }
}
