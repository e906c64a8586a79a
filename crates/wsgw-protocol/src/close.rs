//! WebSocket close codes the gateway uses, and what a client should do on each.

/// A close code sent by the gateway (RFC 6455 codes plus wsgw's 4xxx codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseCode {
    /// 1000: normal closure.
    Normal = 1000,
    /// 1001: the server is going away.
    GoingAway = 1001,
    /// 1008: policy violation (rate limit exceeded repeatedly, per-user connection cap).
    Policy = 1008,
    /// 1009: a message was larger than `max_message_bytes`.
    TooBig = 1009,
    /// 1011: internal error.
    Internal = 1011,
    /// 1012: the server is restarting (graceful drain); reconnect at once, with jitter.
    Restart = 1012,
    /// 1013: try again later (node full).
    TryAgainLater = 1013,
    /// 4000: no frame from the client within the heartbeat timeout.
    HeartbeatTimeout = 4000,
    /// 4001: bad or missing token.
    Unauthorized = 4001,
    /// 4003: token expired.
    TokenExpired = 4003,
    /// 4004: kicked by the server API; do not reconnect automatically.
    Kicked = 4004,
    /// 4008: slow consumer, the outgoing queue overflowed; reconnect with `last_event_id`.
    SlowConsumer = 4008,
    /// 4010: a newer socket resumed this `connection_id` (e.g. a duplicated browser tab that
    /// copied it); start a fresh session, without that id.
    Replaced = 4010,
}

impl CloseCode {
    /// The numeric code.
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// A short machine-friendly name, used as a metric label and close reason.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::GoingAway => "going_away",
            Self::Policy => "policy_violation",
            Self::TooBig => "message_too_big",
            Self::Internal => "internal_error",
            Self::Restart => "server_restart",
            Self::TryAgainLater => "try_again_later",
            Self::HeartbeatTimeout => "heartbeat_timeout",
            Self::Unauthorized => "unauthorized",
            Self::TokenExpired => "token_expired",
            Self::Kicked => "kicked",
            Self::SlowConsumer => "slow_consumer",
            Self::Replaced => "replaced",
        }
    }

    /// Looks a numeric code up.
    pub fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            1000 => Self::Normal,
            1001 => Self::GoingAway,
            1008 => Self::Policy,
            1009 => Self::TooBig,
            1011 => Self::Internal,
            1012 => Self::Restart,
            1013 => Self::TryAgainLater,
            4000 => Self::HeartbeatTimeout,
            4001 => Self::Unauthorized,
            4003 => Self::TokenExpired,
            4004 => Self::Kicked,
            4008 => Self::SlowConsumer,
            4010 => Self::Replaced,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for c in [
            1000, 1001, 1008, 1009, 1011, 1012, 1013, 4000, 4001, 4003, 4004, 4008, 4010,
        ] {
            assert_eq!(CloseCode::from_code(c).unwrap().code(), c);
        }
        assert_eq!(CloseCode::from_code(4999), None);
    }
}
