//! Linearizable reads (etcd's read index): the reads waiting for a round,
//! the round in flight, and the reads whose index is known, waiting for it
//! to be applied.
//!
//! A read barrier puts its answer channel in the [`ReadQueue`] instead of
//! sending it down the Raft loop's channel, and wakes the loop only when the
//! loop is not already going to look: while a round is in flight the loop
//! takes the queue when the round ends, so a busy member wakes its Raft thread
//! once per round, not once per read, and sends one heartbeat round per batch
//! (etcd's read loop also keeps one round in flight; its heartbeats go to as
//! many followers as a quorum needs, `node/read_quorum.rs`). The loop "arms" the
//! queue when it finds it empty; the next read then wakes it.
//!
//! [`ReadRounds`] is the loop's side. raft-rs drops a read-index request while
//! there is no leader or the leader has not committed in its term yet, and a
//! request to a leader that died is lost: rounds unanswered are asked again
//! every [`RETRY`], and rounds whose callers all gave up are dropped.
//!
//! On a leader, the followers' read-index requests join its own rounds
//! ([`ReadRounds::push_remote`]): raft-rs would send a heartbeat to every
//! follower for each request, so each member's rounds would cost all the
//! others a wake-up; joined, one heartbeat round confirms the leadership for
//! the leader's reads and the followers' together. The index a follower gets
//! is the leader's commit index when the round began, after its request came
//! (what raft-rs would answer, or later), confirmed by a quorum after it came.
//! A leader that steps down forgets them: the followers ask again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::error::{Error, Result};

pub type ReadWaiter = oneshot::Sender<Result<()>>;

#[derive(Default)]
pub struct ReadQueue {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    waiting: Vec<ReadWaiter>,
    /// The loop will look at the queue without being woken.
    watched: bool,
    /// The loop has stopped: nothing queued would ever be answered.
    closed: bool,
}

impl ReadQueue {
    /// Queues a read. Ok(true) when the caller must wake the loop for it;
    /// Err(Stopped) once the loop has stopped.
    pub fn push(&self, r: ReadWaiter) -> Result<bool> {
        let mut g = self.inner.lock();
        if g.closed {
            return Err(Error::Stopped);
        }
        g.waiting.push(r);
        let wake = !g.watched;
        g.watched = true;
        Ok(wake)
    }

    /// The reads waiting, all of them. When there are none, the next read
    /// wakes the loop.
    pub fn take(&self) -> Vec<ReadWaiter> {
        let mut g = self.inner.lock();
        if g.waiting.is_empty() {
            g.watched = false;
        }
        std::mem::take(&mut g.waiting)
    }

    /// Refuses reads from now on and returns those still waiting.
    pub fn close(&self) -> Vec<ReadWaiter> {
        let mut g = self.inner.lock();
        g.closed = true;
        std::mem::take(&mut g.waiting)
    }
}

/// How often unanswered rounds are asked again (etcd's interval).
pub const RETRY: Duration = Duration::from_millis(500);

/// The most followers' requests that wait for a leader's next round.
pub const MAX_REMOTE: usize = 1024;

/// A follower's read-index request that a leader's round answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRead {
    /// The follower that asked.
    pub from: u64,
    /// The follower's context, returned with the index.
    pub ctx: Vec<u8>,
    /// The leader's term when the request came: the answer goes only in it.
    pub term: u64,
}

/// The reads one round answers.
#[derive(Default)]
struct Round {
    local: Vec<ReadWaiter>,
    remote: Vec<RemoteRead>,
}

/// The Raft loop's side of linearizable reads.
pub struct ReadRounds {
    queue: std::sync::Arc<ReadQueue>,
    /// Followers' requests waiting for the next round (leader only).
    remote: Vec<RemoteRead>,
    /// Rounds asked of raft-rs, by their context; one at a time, but a round
    /// asked again stays here until answered or abandoned.
    in_flight: HashMap<Vec<u8>, Round>,
    /// Rounds answered: their reads wait for the index to be applied.
    ready: Vec<(u64, Vec<ReadWaiter>)>,
    seq: u64,
    last_retry: Instant,
}

impl Default for ReadRounds {
    fn default() -> Self {
        ReadRounds {
            queue: Default::default(),
            remote: Vec::new(),
            in_flight: HashMap::new(),
            ready: Vec::new(),
            seq: 0,
            last_retry: Instant::now(),
        }
    }
}

impl ReadRounds {
    /// Where read barriers queue their reads.
    pub fn queue(&self) -> std::sync::Arc<ReadQueue> {
        self.queue.clone()
    }

    /// Whether a round is in flight.
    pub fn in_flight(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// A follower's read-index request, for the next round (leader only). A
    /// request asked again while it waits is taken once, and at most
    /// [`MAX_REMOTE`] wait: more are dropped, as raft-rs drops requests it
    /// cannot serve, and their followers ask again.
    pub fn push_remote(&mut self, r: RemoteRead) {
        if self.remote.len() < MAX_REMOTE && !self.remote.contains(&r) {
            self.remote.push(r);
        }
    }

    /// Forgets the followers' requests (the member is no longer leader).
    pub fn drop_remote(&mut self) {
        self.remote.clear();
        self.in_flight.retain(|_, r| {
            r.remote.clear();
            !r.local.is_empty()
        });
    }

    /// Starts a round for the reads waiting, unless one is in flight: returns
    /// the context to ask raft-rs's read index with.
    pub fn start(&mut self) -> Option<Vec<u8>> {
        if self.in_flight() {
            return None;
        }
        let local = self.queue.take();
        if local.is_empty() && self.remote.is_empty() {
            return None;
        }
        let remote = std::mem::take(&mut self.remote);
        self.seq += 1;
        let ctx = self.seq.to_be_bytes().to_vec();
        self.in_flight.insert(ctx.clone(), Round { local, remote });
        Some(ctx)
    }

    /// raft-rs's answer to the round `ctx`: its reads may go once `index` is
    /// applied; the followers' requests it took are returned, to be answered
    /// with `index` now.
    pub fn answered(&mut self, ctx: &[u8], index: u64) -> Vec<RemoteRead> {
        match self.in_flight.remove(ctx) {
            Some(r) => {
                if !r.local.is_empty() {
                    self.ready.push((index, r.local));
                }
                r.remote
            }
            None => Vec::new(),
        }
    }

    /// The reads that may go now that `applied` is applied.
    pub fn answerable(&mut self, applied: u64) -> Vec<ReadWaiter> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.ready.len() {
            if self.ready[i].0 <= applied {
                out.extend(self.ready.swap_remove(i).1);
            } else {
                i += 1;
            }
        }
        out
    }

    /// The contexts of the rounds to ask again, once every [`RETRY`]; rounds
    /// whose callers all gave up are dropped.
    pub fn due_for_retry(&mut self, now: Instant) -> Vec<Vec<u8>> {
        if now.duration_since(self.last_retry) < RETRY {
            return Vec::new();
        }
        self.last_retry = now;
        self.in_flight.retain(|_, r| {
            r.local.retain(|w| !w.is_closed());
            !r.local.is_empty() || !r.remote.is_empty()
        });
        self.in_flight.keys().cloned().collect()
    }

    /// Closes the queue (the loop stops) and returns every read not answered.
    pub fn close(&mut self) -> Vec<ReadWaiter> {
        let mut out = self.queue.close();
        self.remote.clear();
        out.extend(self.in_flight.drain().flat_map(|(_, r)| r.local));
        out.extend(self.ready.drain(..).flat_map(|(_, b)| b));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_read_the_loop_does_not_expect_wakes_it() {
        let q = ReadQueue::default();
        let (a, _ra) = oneshot::channel();
        let (b, _rb) = oneshot::channel();
        assert!(q.push(a).unwrap(), "the first read wakes the loop");
        assert!(!q.push(b).unwrap(), "the loop is already coming");
        assert_eq!(q.take().len(), 2);
        let (c, _rc) = oneshot::channel();
        assert!(
            !q.push(c).unwrap(),
            "taken but not found empty: still watched"
        );
        assert_eq!(q.take().len(), 1);
        assert!(q.take().is_empty());
        let (d, _rd) = oneshot::channel();
        assert!(q.push(d).unwrap(), "found empty: the next read wakes it");
        assert_eq!(q.close().len(), 1);
        let (e, _re) = oneshot::channel();
        assert!(matches!(q.push(e), Err(Error::Stopped)));
    }

    fn read(q: &ReadQueue) -> oneshot::Receiver<Result<()>> {
        let (tx, rx) = oneshot::channel();
        q.push(tx).unwrap();
        rx
    }

    #[test]
    fn one_round_at_a_time_and_reads_go_once_applied() {
        let mut r = ReadRounds::default();
        let q = r.queue();
        assert!(r.start().is_none(), "nothing waits");
        let _a = read(&q);
        let _b = read(&q);
        let first = r.start().expect("two reads wait");
        let _c = read(&q);
        assert!(r.start().is_none(), "a round is in flight");
        r.answered(b"unknown", 1);
        assert!(r.in_flight());
        r.answered(&first, 7);
        assert!(!r.in_flight());
        assert!(r.answerable(6).is_empty(), "index 7 not applied yet");
        assert_eq!(r.answerable(7).len(), 2);
        let second = r.start().expect("the read that waited");
        assert_ne!(first, second);
        r.answered(&second, 7);
        assert_eq!(r.answerable(9).len(), 1);
        assert!(r.answerable(9).is_empty());
    }

    fn remote(from: u64, ctx: &[u8]) -> RemoteRead {
        RemoteRead {
            from,
            ctx: ctx.to_vec(),
            term: 3,
        }
    }

    #[test]
    fn followers_requests_join_the_next_round_and_are_answered_with_it() {
        let mut r = ReadRounds::default();
        let q = r.queue();
        r.push_remote(remote(2, b"a"));
        let first = r
            .start()
            .expect("a follower's request alone starts a round");
        let _local = read(&q);
        r.push_remote(remote(3, b"b"));
        assert!(r.start().is_none(), "a round is in flight");
        assert_eq!(r.answered(&first, 5), vec![remote(2, b"a")]);
        assert!(r.answerable(9).is_empty(), "the round had no read here");
        let second = r.start().expect("the requests that came during the first");
        assert_eq!(r.answered(&second, 6), vec![remote(3, b"b")]);
        assert_eq!(r.answerable(6).len(), 1);
        assert!(r.answered(&second, 6).is_empty(), "answered once");
    }

    #[test]
    fn followers_requests_waiting_are_bounded_and_taken_once() {
        let mut r = ReadRounds::default();
        r.push_remote(remote(2, b"a"));
        r.push_remote(remote(2, b"a"));
        for i in 0..2 * MAX_REMOTE as u64 {
            r.push_remote(remote(3, &i.to_be_bytes()));
        }
        let ctx = r.start().unwrap();
        let answered = r.answered(&ctx, 1);
        assert_eq!(answered.len(), MAX_REMOTE);
        assert_eq!(answered.iter().filter(|x| x.from == 2).count(), 1);
    }

    #[test]
    fn a_leader_that_steps_down_forgets_followers_requests() {
        let mut r = ReadRounds::default();
        let q = r.queue();
        r.push_remote(remote(2, b"a"));
        let only_remote = r.start().unwrap();
        r.drop_remote();
        assert!(
            !r.in_flight(),
            "a round of followers' requests only is gone"
        );
        assert!(r.answered(&only_remote, 4).is_empty());
        let _local = read(&q);
        r.push_remote(remote(2, b"b"));
        let mixed = r.start().unwrap();
        r.push_remote(remote(3, b"c"));
        r.drop_remote();
        assert!(r.in_flight(), "this member's reads still wait");
        assert!(r.answered(&mixed, 4).is_empty());
        assert_eq!(r.answerable(4).len(), 1);
        assert!(r.start().is_none(), "the waiting request went too");
    }

    #[test]
    fn rounds_are_retried_and_abandoned_ones_dropped() {
        let mut r = ReadRounds::default();
        let q = r.queue();
        let kept = read(&q);
        let ctx = r.start().unwrap();
        let now = Instant::now();
        assert!(r.due_for_retry(now).is_empty(), "not yet due");
        let later = now + RETRY * 2;
        assert_eq!(r.due_for_retry(later), vec![ctx.clone()]);
        assert!(r.due_for_retry(later).is_empty(), "once per interval");
        drop(kept);
        assert!(r.due_for_retry(later + RETRY * 2).is_empty());
        assert!(!r.in_flight(), "its only caller gave up");
        let _a = read(&q);
        let ctx = r.start().unwrap();
        r.answered(&ctx, 3);
        let _b = read(&q);
        r.start().unwrap();
        let _c = read(&q);
        assert_eq!(r.close().len(), 3, "queued, in flight and ready");
    }
}
