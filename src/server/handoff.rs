//! Answers from the Raft loop thread to the requests waiting in the async
//! runtime, delivered through the runtime's I/O driver.
//!
//! A oneshot completed from a thread outside the runtime schedules its task on
//! the runtime's shared queue and wakes a worker, which, having found that task,
//! wakes another worker to look for more: with one request at a time, two
//! workers wake per answer. Here the loop queues its answers and writes one
//! byte to a socket the runtime polls. The worker that owns the I/O driver
//! wakes on it and runs [`dispatch`], which completes the oneshots from inside
//! the runtime, so their tasks run next on that worker and no other worker is
//! woken for them. Only a batch's single answer takes this way
//! ([`Handoff::deliver`]): several answers are better sent directly, waking
//! workers that share their tasks.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

use super::request::Applied;
use crate::error::Result;

/// One answer: a sender and what it is to receive.
pub enum Answer {
    Applied(oneshot::Sender<Result<Applied>>, Result<Applied>),
    Read(oneshot::Sender<Result<()>>, Result<()>),
}

impl Answer {
    fn send(self) {
        match self {
            Answer::Applied(tx, v) => {
                let _ = tx.send(v);
            }
            Answer::Read(tx, v) => {
                let _ = tx.send(v);
            }
        }
    }
}

/// The loop's side: an answer is queued, then [`Handoff::flush`] wakes the
/// runtime for it.
pub struct Handoff {
    queue: parking_lot::Mutex<Vec<Answer>>,
    /// Set from a flush that wrote the byte until [`dispatch`] takes the queue.
    armed: AtomicBool,
    /// Written by the loop thread (non-blocking); `None` once the runtime's end
    /// has gone, when answers are sent directly.
    wake: parking_lot::Mutex<Option<UnixStream>>,
}

impl Handoff {
    /// A hand-off whose dispatcher runs on `rt`. Fails when a socket pair
    /// cannot be made or registered with the runtime.
    pub fn start(rt: &tokio::runtime::Handle) -> std::io::Result<Arc<Handoff>> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        let rx = {
            let _guard = rt.enter();
            // SAFETY: `rx` is a `UnixStream` owned by the `AsyncFd` for its whole
            // life: its descriptor is open from here until the `AsyncFd` drops
            // it (after deregistering), nothing else can close or replace it,
            // and `as_raw_fd` returns that same descriptor every time.
            unsafe { AsyncFd::register_with_interest(rx, tokio::io::Interest::READABLE) }
                .map_err(std::io::Error::from)?
        };
        let h = Arc::new(Handoff {
            queue: parking_lot::Mutex::new(Vec::new()),
            armed: AtomicBool::new(false),
            wake: parking_lot::Mutex::new(Some(tx)),
        });
        rt.spawn(dispatch(Arc::downgrade(&h), rx));
        Ok(h)
    }

    /// Delivers a batch's answers: a single one through `handoff` when there is
    /// one, several (or any without a hand-off) directly from this thread.
    pub fn deliver(handoff: Option<&Handoff>, answers: Vec<Answer>) {
        match handoff {
            Some(h) if answers.len() == 1 => {
                h.queue.lock().extend(answers);
                h.flush();
            }
            _ => {
                for a in answers {
                    a.send();
                }
            }
        }
    }

    /// Wakes the dispatcher for what was queued, unless a wake-up is pending.
    fn flush(&self) {
        let mut wake = self.wake.lock();
        if let Some(s) = wake.as_mut() {
            if self.armed.swap(true, Ordering::SeqCst) {
                return;
            }
            match s.write(&[1]) {
                Ok(_) => return,
                // A byte is unread already: the dispatcher will run.
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => *wake = None,
            }
        }
        // The runtime's end is gone: answer from this thread.
        drop(wake);
        close(self);
    }
}

/// Completes the queued answers each time the loop writes its byte; ends
/// when the hand-off has been dropped with the loop.
///
/// The loop writes one byte per wake-up and no other until this task has reset
/// `armed`, so after one read of that byte the socket is empty: its readiness
/// is cleared without a second read to see it so.
async fn dispatch(h: Weak<Handoff>, rx: AsyncFd<UnixStream>) {
    let mut buf = [0u8; 64];
    loop {
        let Ok(mut ready) = rx.readable().await else {
            break;
        };
        match ready.get_inner().read(&mut buf) {
            Ok(0) => break,
            Ok(_) => ready.clear_ready(),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                ready.clear_ready();
                continue;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        let Some(h) = h.upgrade() else {
            return;
        };
        h.armed.store(false, Ordering::SeqCst);
        let answers = std::mem::take(&mut *h.queue.lock());
        for a in answers {
            a.send();
        }
    }
    if let Some(h) = h.upgrade() {
        close(&h);
    }
}

/// Nothing reads the socket any more: what is queued and every later answer
/// go directly.
fn close(h: &Handoff) {
    *h.wake.lock() = None;
    for a in std::mem::take(&mut *h.queue.lock()) {
        a.send();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_answer() -> (Answer, oneshot::Receiver<Result<()>>) {
        let (tx, rx) = oneshot::channel();
        (Answer::Read(tx, Ok(())), rx)
    }

    #[test]
    fn answers_arrive_through_the_runtime_and_directly_once_it_is_gone() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let h = Handoff::start(rt.handle()).expect("hand-off");
        // One at a time, through the dispatcher.
        for _ in 0..200 {
            let (a, rx) = read_answer();
            Handoff::deliver(Some(&h), vec![a]);
            let got = rt.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(10), rx).await
            });
            assert!(got.expect("answered in time").expect("answered").is_ok());
        }
        // Several at once, sent directly.
        let (answers, rxs): (Vec<_>, Vec<_>) = (0..3).map(|_| read_answer()).unzip();
        Handoff::deliver(Some(&h), answers);
        for mut rx in rxs {
            assert!(rx.try_recv().expect("answered at once").is_ok());
        }
        // The dispatcher ends with its runtime; later answers go directly.
        drop(rt);
        let (a, mut rx) = read_answer();
        Handoff::deliver(Some(&h), vec![a]);
        assert!(rx.try_recv().expect("answered without the runtime").is_ok());
        let (a, mut rx) = read_answer();
        Handoff::deliver(Some(&h), vec![a]);
        assert!(rx.try_recv().expect("answered without the runtime").is_ok());
    }
}
