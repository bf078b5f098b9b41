//! etcd-rs: a wire-compatible etcd v3 server. See ARCHITECTURE.md for the map.

#[macro_use]
pub mod log;

pub mod api;
pub mod auth;
pub mod bbolt;
pub mod config;
pub mod error;
pub mod etcd_import;
#[doc(hidden)]
pub mod fuzzing;
pub mod lease;
pub mod membership;
pub mod metrics;
pub mod mvcc;
pub mod net;
pub mod pb;
pub mod raft;
pub mod server;
pub mod storage;
pub mod systemd;
pub mod tls;
