//! Integration tests: the real `etcd` binary driven by real clients (Debian's
//! etcdctl, the etcd-client crate), often side by side with Debian's etcd.

mod authz;
mod certs;
mod client;
mod cluster;
mod crash;
mod disk;
mod etcd_import;
mod etcdctl;
mod flags;
mod framing;
mod gateway;
mod glibc_floor;
mod harness;
mod jwt;
mod limits;
mod linearizability;
mod lock;
mod metrics;
mod misc;
mod model;
mod parity;
mod patroni;
mod peer;
mod prometheus;
mod proxy;
mod range_reply;
mod range_stream;
mod restore;
mod security;
mod snapshot_compat;
mod unix;
mod write_path;
