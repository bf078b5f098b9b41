//! Leadership transfer on stop: a leader with caught-up followers hands
//! leadership to the one whose log matches its own the furthest, so the
//! cluster does not wait an election timeout.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use raft::StateRole;

use super::{Msg, Node};

impl Node {
    /// The voter (not us) whose log matches ours the furthest.
    pub(super) fn best_transferee(&self) -> Option<u64> {
        let voters = self.raw.raft.prs().conf().voters().ids();
        self.raw
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != self.local_id && voters.contains(**id))
            .max_by_key(|(_, pr)| pr.matched)
            .map(|(id, _)| *id)
    }

    /// On stop, a leader with caught-up followers moves leadership first, so the
    /// cluster does not wait an election timeout.
    pub(super) fn hand_off_leadership(&mut self, rx: &Receiver<Msg>) {
        if !self.status.is_leader.load(Ordering::Relaxed) || self.transport.is_none() {
            return;
        }
        let Some(target) = self.best_transferee() else {
            return;
        };
        crate::info!(
            "leader is stopping; transferring leadership",
            transferee = format!("{target:x}")
        );
        self.raw.transfer_leader(target);
        let deadline = Instant::now() + self.election_timeout * 2;
        while Instant::now() < deadline {
            let _ = self.on_ready();
            if self.raw.raft.state != StateRole::Leader {
                crate::info!("leadership transferred", transferee = format!("{target:x}"));
                return;
            }
            if let Ok(Msg::Peer(ev)) = rx.recv_timeout(self.heartbeat) {
                let _ = self.handle(Msg::Peer(ev));
            }
            self.raw.tick();
        }
        crate::warn!("leadership transfer did not complete before stopping");
    }
}
