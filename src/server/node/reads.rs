//! The loop's side of linearizable reads (`server/read_index.rs` holds the
//! rounds): starting a round, answering the reads whose index is applied,
//! and, on a leader, the followers' read-index requests taken into its own
//! rounds instead of each costing a heartbeat round of its own.

use raft::StateRole;
use raft::eraftpb::{Entry, Message, MessageType};

use super::super::handoff::{Answer, Handoff};
use super::super::read_index::RemoteRead;
use super::Node;

impl Node {
    /// Asks raft-rs for a read index for the reads waiting, unless a round is
    /// in flight (`read_index.rs`). Returns whether it asked.
    pub(super) fn start_read_round(&mut self) -> bool {
        match self.reads.start() {
            Some(ctx) => {
                self.read_round_asked(&ctx);
                self.raw.read_index(ctx);
                true
            }
            None => false,
        }
    }

    /// Answers the reads whose index is applied.
    pub(super) fn answer_reads(&mut self) {
        let answers = self
            .reads
            .answerable(self.applied)
            .into_iter()
            .map(|r| Answer::Read(r, Ok(())))
            .collect();
        Handoff::deliver(Self::answers_via(self.here, &self.handoff), answers);
    }

    /// Takes a follower's read-index request into this leader's next round,
    /// where raft-rs would confirm it with a heartbeat round of its own.
    /// Hands back every other message, and the requests raft-rs answers as
    /// well as this would (a single voter answers at once; one that has not
    /// committed in its term drops them).
    pub(super) fn join_read_round(&mut self, m: Message) -> Option<Message> {
        let raft = &self.raw.raft;
        if m.get_msg_type() != MessageType::MsgReadIndex
            || m.from == 0
            || m.from == self.local_id
            || m.entries.len() != 1
            || raft.state != StateRole::Leader
            || raft.prs().is_singleton()
            || !raft.commit_to_current_term()
        {
            return Some(m);
        }
        self.reads.push_remote(RemoteRead {
            from: m.from,
            ctx: m.entries[0].data.to_vec(),
            term: raft.term,
        });
        None
    }

    /// raft-rs answered the round `ctx` with `index`: this member's reads
    /// wait for it to be applied, and the followers' requests the round took
    /// are answered with it, as raft-rs answers them, while this member is
    /// still the leader of the term they came in.
    pub(super) fn read_round_answered(&mut self, ctx: &[u8], index: u64) {
        let remote = self.reads.answered(ctx, index);
        let raft = &self.raw.raft;
        let msgs: Vec<Message> = remote
            .into_iter()
            .filter(|r| raft.state == StateRole::Leader && r.term == raft.term)
            .map(|r| {
                let mut m = Message::default();
                m.set_msg_type(MessageType::MsgReadIndexResp);
                m.from = self.local_id;
                m.to = r.from;
                m.term = r.term;
                m.index = index;
                m.entries = vec![Entry {
                    data: r.ctx.into(),
                    ..Default::default()
                }]
                .into();
                m
            })
            .collect();
        self.send(msgs);
    }
}
