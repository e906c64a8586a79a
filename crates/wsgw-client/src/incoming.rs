//! incoming.rs: what a client hands the application (frames and connection events), and why
//! a call failed.

use serde_json::Value;

use crate::{Event, EventId, Welcome};

/// A channel's history, as [`Client::history`](crate::Client::history) returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// The events, in id order, each as a subscriber receives it.
    pub events: Vec<Event>,
    /// `false` when events after `since` may have been lost (trimmed or expired): reload that
    /// state from your backend. Always `true` without `since`.
    pub recovered: bool,
}

/// Something the gateway sent, or something that happened to the connection.
#[derive(Debug, Clone)]
pub enum Incoming {
    /// An event of a channel the connection is in.
    Event {
        /// The channel it was published on.
        channel: String,
        /// The event name.
        event: String,
        /// The durable event's id (absent for ephemeral events).
        event_id: Option<EventId>,
        /// The payload.
        data: Value,
        /// Publish time, ms since the epoch.
        ts: u64,
    },
    /// A backend's answer to [`Client::request`](crate::Client::request) (one of several when `more` is true).
    Response {
        /// The request's id, as given to [`Client::request`](crate::Client::request).
        request_id: Value,
        /// Whether the backend succeeded.
        ok: bool,
        /// The payload (`null` when absent).
        data: Value,
        /// `true`: a chunk of a streamed answer; more frames follow.
        more: bool,
        /// The backend's error, when `ok` is false.
        error: Option<Value>,
    },
    /// An `error` frame that answers none of this client's waiting calls: e.g. a refused
    /// [`Client::request`](crate::Client::request) (`unavailable`, `timeout`, …), or a topic that could not be
    /// subscribed again after a reconnect.
    Error {
        /// The error code (`forbidden`, `unavailable`, `timeout`, …).
        code: String,
        /// A human-readable explanation.
        message: String,
        /// The request id it answers, if any.
        request_id: Option<Value>,
    },
    /// The gateway cannot prove that this (live, still open) socket missed no event of these
    /// channels and patterns: after a Redis outage their history no longer held everything
    /// published meanwhile. Reload their state from your backend; events keep coming.
    Gap {
        /// The channels and patterns concerned.
        channels: Vec<String>,
        /// Always `false`.
        recovered: bool,
    },
    /// A socket subscribed to a presence-tracked channel this connection follows (by name or
    /// through a pattern). Ephemeral: no event id, never replayed; treat `Join` and `Leave` as
    /// set updates keyed by `connection_id` (see docs/protocol.md, "Channel presence").
    Join {
        /// The channel.
        channel: String,
        /// The joining socket's user.
        user_id: String,
        /// The joining socket's connection id.
        connection_id: String,
    },
    /// A socket left a presence-tracked channel (unsubscribed, closed, or its node died).
    Leave {
        /// The channel.
        channel: String,
        /// The leaving socket's user.
        user_id: String,
        /// The leaving socket's connection id.
        connection_id: String,
    },
    /// The gateway removed a subscription by itself (e.g. after a token refresh).
    Unsubscribed {
        /// The topic or pattern.
        channel: String,
        /// Why.
        reason: Option<String>,
    },
    /// The client reconnected (after `Closed` with `will_reconnect`); its welcome. Replayed
    /// events follow.
    Reconnected(Box<Welcome>),
    /// The socket closed, or a reconnect attempt failed; `will_reconnect` says whether the client
    /// tries again (by policy). `code` is the close code, `None` for a network failure.
    Closed {
        /// The WebSocket close code, if the gateway sent one.
        code: Option<u16>,
        /// The close reason, or what went wrong.
        reason: String,
        /// Whether [`Client::next`](crate::Client::next) will reconnect.
        will_reconnect: bool,
    },
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection, the TLS handshake (`wss://`) or the WebSocket handshake failed.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The socket is closed (or closed while waiting for the answer).
    #[error("connection closed ({code:?}): {reason}")]
    Closed {
        /// The close code, if the gateway sent one.
        code: Option<u16>,
        /// The close reason, or what went wrong.
        reason: String,
    },
    /// The gateway answered with an `error` frame (e.g. `unauthorized` at connect, `forbidden`
    /// on subscribe).
    #[error("refused by the gateway: {code}: {message}")]
    Refused {
        /// The error code.
        code: String,
        /// The gateway's explanation.
        message: String,
    },
    /// No answer in time.
    #[error("no answer from the gateway in time")]
    Timeout,
    /// The gateway sent something this client cannot read.
    #[error("protocol error: {0}")]
    Protocol(String),
}
