//! Every integration test of the `wsgw` crate, in one binary: each file of this directory is
//! one module of it (`#[path]`, so the files stay where they are), and `common/` is the harness
//! they share. One binary builds and links once where 43 did each (crates/wsgw/Cargo.toml sets
//! `autotests = false`). `cargo test -p wsgw --test suite exactness::` runs one file's tests;
//! scripts/lib/test-lanes.sh runs each file's tests as a group of their own, as before.

mod common;
/// The torture tests' kit (tests/torture/: the model, the load and its clients, the faults on a
/// Redis Cluster, the checker and its unit tests), shared by torture.rs, torture_cluster.rs and
/// sentinel_failover.rs.
#[path = "torture"]
mod torture_kit {
    pub mod checker;
    #[cfg(test)]
    mod checker_tests;
    pub mod cluster;
    pub mod coverage;
    pub mod explain;
    pub mod finish;
    pub mod load;
    pub mod model;
    pub mod sim;
}

#[path = "broker_input.rs"]
mod broker_input;
#[path = "channel_presence.rs"]
mod channel_presence;
#[path = "client_history.rs"]
mod client_history;
#[path = "cluster_fanout.rs"]
mod cluster_fanout;
#[path = "cluster_outage.rs"]
mod cluster_outage;
#[path = "cluster_presence.rs"]
mod cluster_presence;
#[path = "cluster_requests.rs"]
mod cluster_requests;
#[path = "cluster_user_connections.rs"]
mod cluster_user_connections;
#[path = "config_doc.rs"]
mod config_doc;
#[path = "connect_and_deliver.rs"]
mod connect_and_deliver;
#[path = "exactness.rs"]
mod exactness;
#[path = "handshake.rs"]
mod handshake;
#[path = "history_expiry.rs"]
mod history_expiry;
#[path = "hooks.rs"]
mod hooks;
#[path = "http_api.rs"]
mod http_api;
#[path = "idempotency.rs"]
mod idempotency;
#[path = "identity.rs"]
mod identity;
#[path = "jwks.rs"]
mod jwks;
#[path = "limits_and_bad_input.rs"]
mod limits_and_bad_input;
#[path = "malformed_corpus.rs"]
mod malformed_corpus;
#[path = "metrics_names.rs"]
mod metrics_names;
#[path = "per_core.rs"]
mod per_core;
#[path = "redis_cluster.rs"]
mod redis_cluster;
#[path = "redis_cluster_functions.rs"]
mod redis_cluster_functions;
#[path = "redis_cluster_gateway.rs"]
mod redis_cluster_gateway;
#[path = "redis_cluster_grow.rs"]
mod redis_cluster_grow;
#[path = "redis_cluster_holes.rs"]
mod redis_cluster_holes;
#[path = "redis_cluster_repair_churn.rs"]
mod redis_cluster_repair_churn;
#[path = "redis_cluster_repair_join.rs"]
mod redis_cluster_repair_join;
#[path = "redis_cluster_replies.rs"]
mod redis_cluster_replies;
#[path = "redis_codec.rs"]
mod redis_codec;
#[path = "redis_pubsub_counts.rs"]
mod redis_pubsub_counts;
#[path = "redis_tls.rs"]
mod redis_tls;
#[path = "replay.rs"]
mod replay;
#[path = "resume_fail_closed.rs"]
mod resume_fail_closed;
#[path = "sentinel_failover.rs"]
mod sentinel_failover;
#[path = "shutdown_and_binary.rs"]
mod shutdown_and_binary;
#[path = "takeover.rs"]
mod takeover;
#[path = "token_command.rs"]
mod token_command;
#[path = "token_properties.rs"]
mod token_properties;
#[path = "torture.rs"]
mod torture;
#[path = "torture_cluster.rs"]
mod torture_cluster;
#[path = "upgrade_paths.rs"]
mod upgrade_paths;
