//! agentguard as a library: the binary (`main.rs`, the CLI) and the benches
//! build on it. Module names are those of the files; see main.rs for the
//! reading order.

pub mod approvals;
pub mod audit;
pub mod bpfsys;
pub mod cgroup;
pub mod config;
pub mod control;
pub mod credentials;
pub mod daemon;
pub mod decide;
pub mod exec;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod mysql;
pub mod net;
pub mod perms;
pub mod pg;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod redirect;
pub mod redis;
pub mod refusals;
pub mod sandbox;
pub mod socket_kinds;
pub mod unixguard;
