//! Linearizable reads waiting for the Raft loop's next read-index round.
//!
//! A read barrier puts its answer channel here instead of sending it down the
//! loop's channel, and wakes the loop only when the loop is not already going
//! to look: while a round is in flight the loop takes the queue when the round
//! ends, so a busy member wakes its Raft thread once per round, not once per
//! read. The loop "arms" the queue when it finds it empty; the next read then
//! wakes it.

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
}
