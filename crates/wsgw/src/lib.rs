//! wsgw: a WebSocket gateway. Browsers keep sockets open to any node; backends publish
//! events that every node holding an interested socket delivers, with ids, history and
//! gap-free replay on reconnect. See `docs/` in the repository.
#![forbid(unsafe_code)]

pub mod affinity;
pub mod api;
pub mod auth;
pub mod broker;
pub mod config;
pub mod cores;
pub mod direct;
pub mod handshake;
pub mod history;
pub mod hooks;
pub mod http_client;
pub mod hub;
pub mod jwks;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod origin;
pub mod presence;
pub mod proxy;
pub mod server;
pub mod session;
pub mod time;
pub mod token;
pub mod ws;
pub mod ws_open;

pub use config::Config;
pub use node::{Gateway, StartError};
pub use server::{RunningGateway, serve};
