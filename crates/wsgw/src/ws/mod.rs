//! ws/: wsgw's own WebSocket framing (RFC 6455), server side: the upgrade (`upgrade.rs`), client
//! frames to messages without I/O (`decode.rs`), server frame bytes (`frame.rs`) and one
//! socket's read side (`socket.rs`). Writes are not here: a socket's frames are written by
//! its hub connection (hub/connection.rs), straight from the fan-out when nothing is queued.
//! `scripts/autobahn.sh` checks this code against the Autobahn|Testsuite.

pub mod decode;
pub mod deflate;
pub mod frame;
pub mod socket;
pub mod upgrade;

pub use decode::{Decoder, Incoming, ProtocolError};
pub use socket::{ReadError, WsSocket};
pub use upgrade::{Accept, WsUpgrade};
