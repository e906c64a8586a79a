//! Every integration test of the `wsgw` crate, in one binary: each file of this directory is
//! one module of it, and `common/` is the harness they share. One binary builds and links once where 43 did each (crates/wsgw/Cargo.toml sets
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

mod broker_input;
mod channel_presence;
mod client_history;
mod cluster_fanout;
mod cluster_outage;
mod cluster_presence;
mod cluster_requests;
mod cluster_user_connections;
mod config_doc;
mod connect_and_deliver;
mod cpu_affinity;
mod exactness;
mod handshake;
mod history_expiry;
mod hooks;
mod http_api;
mod idempotency;
mod identity;
mod jwks;
mod limits_and_bad_input;
mod malformed_corpus;
mod metrics_names;
mod per_core;
mod redis_cluster;
mod redis_cluster_functions;
mod redis_cluster_gateway;
mod redis_cluster_grow;
mod redis_cluster_holes;
mod redis_cluster_repair_churn;
mod redis_cluster_repair_join;
mod redis_cluster_replies;
mod redis_codec;
mod redis_pubsub_counts;
mod redis_pubsub_reader;
mod redis_tls;
mod replay;
mod resume_fail_closed;
mod sentinel_failover;
mod shutdown_and_binary;
mod takeover;
mod token_command;
mod token_properties;
mod torture;
mod torture_cluster;
mod upgrade_paths;
mod write_delay;
mod write_pace;
