//! The one-member paths, where the Raft loop's thread is not woken:
//! - writes: on a one-member cluster, a write of bounded work that is alone
//!   in flight is appended, synced, applied and answered on the runtime
//!   thread that received it, which takes the loop's lock with a `try_lock`
//!   (`EtcdServer::propose`);
//! - linearizable reads: a leader that is the only voter answers a read once
//!   everything committed is applied, without a read-index round
//!   (`EtcdServer::read_barrier`). No other member can commit an entry or
//!   become leader without this one's vote, and this one stops answering
//!   reads so before its vote leaves; a round on a single voter would
//!   return the commit index at once all the same.

use std::sync::atomic::Ordering;

use raft::StateRole;

use super::{Msg, Node, Reply};

impl Node {
    /// Proposes `data` and, when this member is the only one and has nothing
    /// else in flight, makes it durable, applies it and answers `reply` here,
    /// on the caller's thread: a single client's write then crosses no
    /// thread on its way (the loop's thread would be woken to take it, and
    /// the caller's woken again for the answer). Hands the proposal back
    /// when it must go through the loop.
    pub fn propose_here(
        &mut self,
        id: u64,
        data: Vec<u8>,
        reply: Reply,
    ) -> std::result::Result<(), (Vec<u8>, Reply)> {
        if !self.may_run_here() {
            return Err((data, reply));
        }
        self.handle(Msg::Propose {
            id,
            data,
            reply: Some(reply),
        });
        self.here = true;
        let res = self.on_ready();
        self.here = false;
        match res {
            Ok(()) => self.disk_alarm(),
            // The loop stops with it at its next pass.
            Err(e) => self.failed = Some(e),
        }
        if self.failed.is_some() || self.raw.has_ready() || self.removed {
            // What is left is the loop's: wake it.
            let _ = self.wake.send(Msg::Reads);
        }
        Ok(())
    }

    /// Whether a proposal may be made durable and applied on the caller's
    /// thread: this member is the leader and the only member, no proposal is
    /// waiting, and no database job or deferred entry holds applies back.
    fn may_run_here(&self) -> bool {
        self.writes_alone
            && self.may_work_here()
            && self.waiters.is_empty()
            && self.pending_compact.is_none()
            && self.raw.raft.state == StateRole::Leader
            && self.raw.raft.prs().iter().count() == 1
    }
}

impl Node {
    /// Publishes whether [`Node::may_read_here`] holds, for the request path
    /// (a store only when it changed: this runs at the end of every ready).
    pub(super) fn publish_reads_here(&self) {
        let may = self.may_read_here();
        if self.status.reads_here.load(Ordering::Relaxed) != may {
            self.status.reads_here.store(may, Ordering::SeqCst);
        }
    }

    /// Whether a linearizable read may be answered from what is applied, with
    /// no read-index round: this member is the leader and the only voter
    /// (learners do not vote), it has committed an entry of its term (etcd's
    /// and raft-rs's condition for a read index), no membership change waits
    /// to be applied, and the loop is neither frozen nor stopping.
    fn may_read_here(&self) -> bool {
        let raft = &self.raw.raft;
        self.failed.is_none()
            && !self.frozen
            && !self.removed
            && !self.stop_requested
            && raft.state == StateRole::Leader
            && raft.prs().is_singleton()
            && raft.prs().conf().voters().contains(self.local_id)
            && raft.commit_to_current_term()
            && raft.pending_conf_index <= self.applied
    }
}
