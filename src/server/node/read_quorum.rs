//! A read-index round's heartbeats go to a quorum, not to every follower.
//!
//! raft-rs confirms a leader's read index with a heartbeat carrying the
//! round's context to every follower, and the round ends once a quorum
//! (the leader's own acknowledgement included) has answered: on three
//! members, the first follower's answer. The other follower's heartbeat and
//! its answer, which comes after the round ended, cost both members a
//! message each way per round, a third of the peer messages of a cluster
//! that serves linearizable reads. So the round's first heartbeats go only to
//! as many followers as a quorum needs: the one that answered a round first
//! the last time, then the others raft-rs deems recently active, in order,
//! until the leader and they make a quorum (`ProgressTracker::has_quorum`,
//! which counts voters only, in both halves of a joint configuration).
//! Learners get none: they count in no quorum.
//!
//! Nothing else changes: the heartbeats of every tick go to every member
//! and carry the context of the round in flight (raft-rs's
//! `bcast_heartbeat`), so a round whose follower does not answer ends with
//! the other followers' answers to the next tick's heartbeats, and a
//! follower that answers first [`MISSES`] rounds in a row is taken for the
//! rounds after (a follower that died costs the reads at most that many
//! heartbeat intervals, once); a round asked again (`read_index.rs`) goes to
//! every follower.

use std::collections::HashSet;

use raft::eraftpb::{Message, MessageType};

use super::Node;

/// The state of the narrowing, on the leader.
#[derive(Default)]
pub(super) struct ReadQuorum {
    /// The context of the round just asked of raft-rs, whose first
    /// heartbeats are still to be sent.
    pending: Option<Vec<u8>>,
    /// The context of the latest round narrowed until a follower answers
    /// it (empty after).
    latest: Vec<u8>,
    /// The follower the rounds go to first (0: none yet).
    fast: u64,
    /// Rounds in a row another follower answered first.
    misses: u8,
}

/// Rounds in a row another follower answers first before it takes the
/// place of the one the rounds go to: a tick's heartbeat carries the round's
/// context to every follower, so one round's first answer can come from any
/// of them by chance.
const MISSES: u8 = 2;

impl Node {
    /// A round was just asked of raft-rs with `ctx`.
    pub(super) fn read_round_asked(&mut self, ctx: &[u8]) {
        if self.raw.raft.state == raft::StateRole::Leader {
            self.read_quorum.pending = Some(ctx.to_vec());
        }
    }

    /// A round is asked again (`read_index.rs`): its heartbeats go to every
    /// follower.
    pub(super) fn read_round_asked_again(&mut self) {
        self.read_quorum.pending = None;
    }

    /// Keeps, of the heartbeats in `msgs` that start the round just asked,
    /// those to the followers a quorum needs (see the module's text).
    pub(super) fn narrow_read_heartbeats(&mut self, msgs: &mut Vec<Message>) {
        let Some(ctx) = self.read_quorum.pending.as_deref() else {
            return;
        };
        let starts =
            |m: &Message| m.get_msg_type() == MessageType::MsgHeartbeat && m.context[..] == *ctx;
        if !msgs.iter().any(starts) {
            return;
        }
        let targets = self.read_quorum_targets();
        let ctx = self.read_quorum.pending.take().unwrap_or_default();
        if let Some(targets) = targets {
            // The first heartbeat of the round to each follower left out; a
            // tick's heartbeat in the same batch carries the same context
            // and still goes.
            let mut dropped = Vec::new();
            msgs.retain(|m| {
                let first = m.get_msg_type() == MessageType::MsgHeartbeat
                    && m.context[..] == ctx[..]
                    && !targets.contains(&m.to);
                if first && !dropped.contains(&m.to) {
                    dropped.push(m.to);
                    return false;
                }
                true
            });
        }
        self.read_quorum.latest = ctx;
    }

    /// The members the round's heartbeats go to, this leader among them:
    /// the fastest follower first, then the recently active ones, until
    /// they make a quorum; None when only every member does (or none is
    /// needed).
    fn read_quorum_targets(&self) -> Option<Vec<u64>> {
        let prs = self.raw.raft.prs();
        let me = self.local_id;
        let fast = self.read_quorum.fast;
        let learners = prs.conf().learners();
        let mut order: Vec<u64> = prs
            .iter()
            .filter(|(id, pr)| **id != me && pr.recent_active && !learners.contains(id))
            .map(|(id, _)| *id)
            .collect();
        order.sort_unstable_by_key(|id| (*id != fast, *id));
        // raft-rs's own hasher, taken from `has_quorum`'s signature.
        let mut quorum = HashSet::default();
        quorum.insert(me);
        for id in order {
            if prs.has_quorum(&quorum) {
                break;
            }
            quorum.insert(id);
        }
        let everyone = quorum.len() == prs.iter().count();
        (prs.has_quorum(&quorum) && !everyone).then(|| quorum.into_iter().collect())
    }

    /// Notes which follower answers the latest round first.
    pub(super) fn note_read_heartbeat_answer(&mut self, m: &Message) {
        let q = &mut self.read_quorum;
        if m.get_msg_type() == MessageType::MsgHeartbeatResponse
            && !m.context.is_empty()
            && m.context[..] == q.latest[..]
        {
            q.latest.clear();
            if m.from == q.fast {
                q.misses = 0;
            } else {
                q.misses += 1;
                if q.fast == 0 || q.misses >= MISSES {
                    q.fast = m.from;
                    q.misses = 0;
                }
            }
        }
    }
}
