//! Light passes: the peer messages of a read-index round and of a steady
//! replication, and the start of a round, stepped on the runtime thread that
//! brought them instead of waking the Raft loop's thread.
//!
//! A linearizable read on a cluster crosses every member: the member that
//! serves it starts a round (a follower asks the leader), the leader sends
//! heartbeats, the followers answer, the leader answers the follower. Each
//! of those messages arrives on a runtime worker; handed to the loop through
//! its channel, each would also wake the loop's thread, which steps it and
//! writes the answer. None of them writes anything durable: stepping one
//! changes no term, vote, commit index or log, and leaves only messages to
//! send and reads to answer. So the worker that received such a message
//! takes the loop's lock with a `try_lock` and runs that pass itself
//! ([`Inbox::deliver`]), as a one-member write runs on its caller's thread
//! (`here.rs`).
//!
//! A write on a cluster crosses members the same way: the leader's append
//! reaches each follower, which makes it durable and answers; the answer that
//! commits it reaches the leader, which applies it and answers the client.
//! Those steps are taken here too, in a steady cluster (no new term, vote or
//! leader, no snapshot) and for bounded work: at most [`HERE_ENTRIES`]
//! entries to append and to apply, each a write that
//! [`Op::bounded`](crate::server::request::Op::bounded) allows, as a
//! one-member write is. A worker then makes the follower's append durable,
//! or applies the leader's commit and answers its callers, without waking the
//! loop's thread and, for the answers, without a hand-off back to a worker.
//!
//! What a step turns out to need beyond that (a new term, a snapshot, more
//! entries or work of unbounded size) is left to the loop, which is woken for
//! it, as is everything while the loop is busy, stopping or failed. A peer's
//! messages are stepped in the order they came: while any event sent to the
//! loop's channel waits there, later ones follow it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;
use prost::Message as _;
use raft::GetEntriesContext;
use raft::eraftpb::{EntryType, Message, MessageType};

use super::{Msg, Node};
use crate::raft::transport::Event;
use crate::server::request::InternalRequest;

/// The most entries a pass on a runtime thread appends, and the most it
/// applies.
const HERE_ENTRIES: u64 = 64;

/// Where the peer transport delivers what it receives.
pub struct Inbox {
    tx: Sender<Msg>,
    node: OnceLock<Weak<Mutex<Option<Node>>>>,
    /// Events sent to the loop's channel that it has not handled yet.
    queued: AtomicUsize,
}

impl Inbox {
    pub fn new(tx: Sender<Msg>) -> Arc<Inbox> {
        Arc::new(Inbox {
            tx,
            node: OnceLock::new(),
            queued: AtomicUsize::new(0),
        })
    }

    /// The loop's state, once it is made: light messages are stepped here
    /// from then on.
    pub fn attach(&self, node: &Arc<Mutex<Option<Node>>>) {
        let _ = self.node.set(Arc::downgrade(node));
    }

    /// Steps the light messages at the front of `ev` here, in one pass,
    /// when the loop is idle; queues the rest for the loop, in order.
    pub fn deliver(&self, ev: Event) {
        let mut ms = match ev {
            Event::Message(m) => vec![m],
            Event::Messages(ms) => ms,
            ev => return self.queue(ev),
        };
        let light = ms.iter().take_while(|m| is_light(m)).count();
        let rest = ms.split_off(light);
        // What could not be stepped here goes back in front of the rest.
        let mut left = match light {
            0 => ms,
            _ => self.step_here(ms).unwrap_or_default(),
        };
        left.extend(rest);
        match left.len() {
            0 => {}
            1 => self.queue(Event::Message(left.remove(0))),
            _ => self.queue(Event::Messages(left)),
        }
    }

    /// Hands `ev` to the loop, counted until it is handled.
    fn queue(&self, ev: Event) {
        self.queued.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(Msg::Peer(ev)).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The loop took an event from its channel (under its lock).
    pub(super) fn handled(&self) {
        self.queued.fetch_sub(1, Ordering::SeqCst);
    }

    /// Steps `m`, light messages of one peer in order, here in one pass,
    /// or hands them back for the loop.
    fn step_here(&self, m: Vec<Message>) -> Option<Vec<Message>> {
        if self.queued.load(Ordering::SeqCst) != 0 {
            return Some(m);
        }
        let Some(node) = self.node.get().and_then(Weak::upgrade) else {
            return Some(m);
        };
        let Some(mut guard) = node.try_lock() else {
            return Some(m);
        };
        // Again under the lock: an event queued meanwhile from the same peer
        // is stepped first, by the loop.
        if self.queued.load(Ordering::SeqCst) != 0 {
            return Some(m);
        }
        match guard.as_mut() {
            Some(n) => n.step_here(m),
            None => Some(m),
        }
    }
}

/// The messages a runtime thread may step: those of a read-index round,
/// which change nothing durable while the cluster is steady, and those of a
/// steady replication (a leader's append, a follower's answer accepting
/// one). A refused append can make the leader look for a snapshot: the loop
/// steps it.
fn is_light(m: &Message) -> bool {
    match m.get_msg_type() {
        MessageType::MsgHeartbeat
        | MessageType::MsgHeartbeatResponse
        | MessageType::MsgReadIndex
        | MessageType::MsgReadIndexResp
        | MessageType::MsgAppend => true,
        MessageType::MsgAppendResponse => !m.reject,
        _ => false,
    }
}

impl Node {
    /// Steps a peer's light messages on the caller's thread in one pass,
    /// or hands them back for the loop.
    fn step_here(&mut self, ms: Vec<Message>) -> Option<Vec<Message>> {
        if !self.may_work_here() {
            return Some(ms);
        }
        self.light_pass(|n| {
            for m in ms {
                n.step_peer(m);
            }
        });
        None
    }

    /// Starts a read-index round for the reads queued, on the caller's
    /// thread. False when the loop must be woken for them instead.
    pub fn start_reads_here(&mut self) -> bool {
        if !self.may_work_here() {
            return false;
        }
        self.light_pass(|_| {});
        true
    }

    /// Whether work of the loop's may run on a caller's thread (a light
    /// pass, a one-member write): the loop has nothing pending, and it is
    /// neither failed, frozen, stopping, removed, nor holding applies back.
    pub(super) fn may_work_here(&self) -> bool {
        self.failed.is_none()
            && !self.frozen
            && !self.removed
            && !self.stop_requested
            && !self.campaign_pending
            && self.busy.is_none()
            && self.deferred.is_empty()
            && !self.raw.has_ready()
    }

    /// Runs `step`, then what the loop's pass would, when the step proved
    /// light: a round for the reads queued, entries appended and committed
    /// ones applied (bounded work, [`Node::bounded_here`]), the messages
    /// sent, the reads answered. Anything else the step left is the loop's:
    /// it is woken.
    fn light_pass(&mut self, step: impl FnOnce(&mut Node)) {
        let ss = self.raw.raft.soft_state();
        let hs = self.raw.raft.hard_state();
        step(self);
        let mut started = self.start_read_round();
        let raft = &self.raw.raft;
        let now = raft.hard_state();
        let light = raft.soft_state() == ss
            && (now.term, now.vote) == (hs.term, hs.vote)
            && raft.raft_log.unstable.snapshot.is_none()
            && self.bounded_here();
        if light {
            self.here = true;
            // What both readies send leaves in one write to each peer: the
            // answers of the round that ended (a heartbeat's answer, a
            // follower's read index) with the next round's start.
            self.outbox = Some(Vec::new());
            let mut res = self.on_ready();
            // The reads queued while the round that just ended was in flight.
            if res.is_ok() && self.start_read_round() {
                started = true;
                res = self.on_ready();
            }
            let held = self.outbox.take().unwrap_or_default();
            self.send(held);
            self.here = false;
            match res {
                // Entries appended here may have taken the disk under its
                // low mark: NOSPACE is proposed now, as at the end of the
                // loop's pass (the loop is woken for the proposal).
                Ok(()) => self.disk_alarm(),
                // The loop stops with it at its next pass.
                Err(e) => self.failed = Some(e),
            }
        }
        // A round that ended at once (a single voter) leaves the queue
        // watched with no wake-up to come.
        let reads_left = started && !self.reads.in_flight();
        if !light || reads_left || self.failed.is_some() || self.removed || self.raw.has_ready() {
            let _ = self.wake.send(Msg::Reads);
        }
    }
}

impl Node {
    /// Whether the entries a pass would append and apply take bounded work:
    /// at most [`HERE_ENTRIES`] of each, and every committed one a write of
    /// bounded work (an empty entry, a leader's first of its term, included);
    /// a membership change, a range delete or a compaction is the loop's.
    /// The committed ones are decoded here and again by the apply: a few
    /// hundred nanoseconds per small write, against the wake-ups of the
    /// loop's thread and of a worker for the answer that the pass saves.
    fn bounded_here(&self) -> bool {
        let log = &self.raw.raft.raft_log;
        if log.unstable_entries().len() as u64 > HERE_ENTRIES {
            return false;
        }
        let (from, to) = (self.applied + 1, log.committed + 1);
        if to <= from {
            return true;
        }
        if to - from > HERE_ENTRIES {
            return false;
        }
        let Ok(entries) = log.slice(from, to, None, GetEntriesContext::empty(false)) else {
            return false;
        };
        entries.iter().all(|e| {
            e.get_entry_type() == EntryType::EntryNormal
                && (e.data.is_empty()
                    || InternalRequest::decode(e.data.clone())
                        .ok()
                        .and_then(|r| r.op)
                        .is_some_and(|op| op.bounded()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(t: MessageType) -> Message {
        let mut m = Message::default();
        m.set_msg_type(t);
        m
    }

    #[test]
    fn only_the_messages_of_a_read_round_and_of_replication_are_light() {
        for t in [
            MessageType::MsgHeartbeat,
            MessageType::MsgHeartbeatResponse,
            MessageType::MsgReadIndex,
            MessageType::MsgReadIndexResp,
            MessageType::MsgAppend,
            MessageType::MsgAppendResponse,
        ] {
            assert!(is_light(&msg(t)), "{t:?}");
        }
        let mut refused = msg(MessageType::MsgAppendResponse);
        refused.reject = true;
        assert!(!is_light(&refused));
        for t in [
            MessageType::MsgRequestVote,
            MessageType::MsgRequestPreVote,
            MessageType::MsgSnapshot,
            MessageType::MsgTimeoutNow,
            MessageType::MsgTransferLeader,
        ] {
            assert!(!is_light(&msg(t)), "{t:?}");
        }
    }

    #[test]
    fn without_the_loops_state_every_event_is_queued_and_counted_until_handled() {
        let (tx, rx) = std::sync::mpsc::channel();
        let inbox = Inbox::new(tx);
        inbox.deliver(Event::Message(msg(MessageType::MsgHeartbeat)));
        inbox.deliver(Event::Unreachable(7));
        assert_eq!(inbox.queued.load(Ordering::SeqCst), 2);
        let got: Vec<Msg> = rx.try_iter().collect();
        assert!(matches!(
            got.as_slice(),
            [
                Msg::Peer(Event::Message(m)),
                Msg::Peer(Event::Unreachable(7))
            ] if m.get_msg_type() == MessageType::MsgHeartbeat
        ));
        inbox.handled();
        inbox.handled();
        assert_eq!(inbox.queued.load(Ordering::SeqCst), 0);
        // Messages that arrived together stay together, in order, and
        // count as one event.
        inbox.deliver(Event::Messages(vec![
            msg(MessageType::MsgHeartbeat),
            msg(MessageType::MsgRequestVote),
            msg(MessageType::MsgReadIndexResp),
        ]));
        assert_eq!(inbox.queued.load(Ordering::SeqCst), 1);
        let got: Vec<Msg> = rx.try_iter().collect();
        let [Msg::Peer(Event::Messages(ms))] = got.as_slice() else {
            panic!("one batch expected");
        };
        let types: Vec<MessageType> = ms.iter().map(Message::get_msg_type).collect();
        assert_eq!(
            types,
            [
                MessageType::MsgHeartbeat,
                MessageType::MsgRequestVote,
                MessageType::MsgReadIndexResp
            ]
        );
        inbox.handled();
        // A loop that has stopped: nothing is counted for it.
        drop(rx);
        inbox.deliver(Event::Unreachable(7));
        assert_eq!(inbox.queued.load(Ordering::SeqCst), 0);
    }
}
