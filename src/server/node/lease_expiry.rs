//! Lease expiry: the leader proposes the revocation of each lease past its
//! deadline, once every five seconds at most while it is being revoked.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use prost::Message;

use super::Node;
use crate::metrics;
use crate::pb::etcdserverpb::LeaseRevokeRequest;
use crate::server::request::{InternalRequest, Op};

impl Node {
    pub(super) fn expire_leases(&mut self) {
        if !self.status.is_leader.load(Ordering::Relaxed) {
            return;
        }
        let now = Instant::now();
        self.revoking
            .retain(|_, t| now.duration_since(*t) < Duration::from_secs(5));
        for id in self.applier.lessor.expired(now) {
            if self.revoking.contains_key(&id) {
                continue;
            }
            self.revoking.insert(id, now);
            let req = InternalRequest {
                id: self.ids.next(),
                op: Some(Op::LeaseRevoke(LeaseRevokeRequest { id })),
            };
            if self.raw.propose(vec![], req.encode_to_vec()).is_ok() {
                metrics::PROPOSALS_PENDING.add(1);
                metrics::LEASE_EXPIRED.inc();
            }
        }
    }
}
