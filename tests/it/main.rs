//! Integration tests: the real `etcd` binary driven by real clients (Debian's
//! etcdctl, the etcd-client crate), often side by side with Debian's etcd.

mod harness;
