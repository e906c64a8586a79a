//! wsgw-protocol: the wire types of the wsgw WebSocket gateway (frames, event ids, close
//! codes, channel names). Pure data and validation; this crate never does I/O.
//!
//! The contract these types implement is `docs/protocol.md` in the repository.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backoff;
mod channel;
mod close;
mod event_id;
mod frames;
mod presence;
mod shard;

pub use backoff::Backoff;
pub use channel::{
    BROADCAST, CONNECTION_PREFIX, ChannelError, ChannelKind, MAX_CHANNEL_LEN, MAX_EVENT_NAME_LEN, PublishError,
    USER_PREFIX, classify, connection, glob_intersects, glob_match, is_automatic, is_reserved, user, validate_channel,
    validate_publish,
};
pub use close::CloseCode;
pub use event_id::{EventId, EventIdError};
pub use frames::{
    ClientFrame, ErrorCode, Event, EventFrame, FrameError, HeartbeatInfo, ServerFrame, Welcome, encode_event,
    encode_history, parse_client_frame, parse_server_frame,
};
pub use presence::PresenceClient;
pub use shard::{CursorError, ID_SHARDS, MAX_CURSOR_LEN, ShardCursor, shard_of};
