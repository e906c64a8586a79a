//! wsgw-loadtest: a k6-style load test tool for the wsgw gateway. Scenarios (TOML) describe
//! stages of VUs, a workload, thresholds and checks; the engine runs them in this process or
//! spread over worker processes and merges their figures. See docs/loadtest.md.

pub mod engine;
pub mod figures;
pub mod scenario;
pub mod summary;
pub mod threshold;
pub mod vu;

pub use engine::{RunOptions, run};
pub use scenario::Scenario;
pub use summary::Summary;
