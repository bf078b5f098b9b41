//! Calls that run in their connection's task.
//!
//! hyper hands each HTTP/2 call's future to an executor, which by default
//! spawns it as a task of its own: a call's end then wakes its task, whose
//! response wakes the connection's task to write it, two passes through the
//! scheduler and a task allocated and freed per call. [`Calls`] is the
//! executor of one connection. A call the connection's service marks as
//! short ([`Calls::run_next_here`]) is kept and polled by [`Serving`], the
//! connection's own future, so that its end wakes the connection alone and
//! the responses of the calls that end together go out in one write. Other
//! calls are spawned as before, so they neither wait for the connection nor
//! hold it up.
//!
//! [`Serving`] polls the connection and its kept calls with wakers of its
//! own: a call that answers, or the connection finding more to read, wakes
//! it from inside the task's poll, and such a wake-up makes another pass of
//! that poll rather than waking the task. The runtime would queue a task
//! that wakes itself behind its other tasks and announce it to an idle
//! worker: a futex call and a context switch per call.
//!
//! A pass polls the calls woken since the last one first, then the
//! connection, which writes their answers and reads new calls, then those.
//! The connection and the calls have a waker each: a call woken while it
//! runs (h2 grants an answer's stream send capacity at once and wakes that
//! call's sender, for every unary answer) is polled again in the next pass
//! without another poll of the connection, which has nothing new then.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll, Waker};

use futures::stream::{FuturesUnordered, StreamExt};

type Call = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor of one connection's calls.
#[derive(Clone, Default)]
pub struct Calls(Arc<Shared>);

#[derive(Default)]
struct Shared {
    /// Set by the connection's service for the call it is answering: hyper
    /// hands that call's future over right after the service returns it.
    here: AtomicBool,
    /// Calls handed over and not yet taken by [`Serving`].
    new: parking_lot::Mutex<Vec<Call>>,
}

impl Calls {
    /// The next call handed over runs in the connection's task.
    pub fn run_next_here(&self) {
        self.0.here.store(true, Ordering::Relaxed);
    }

    /// Whether the next call handed over runs in the connection's task.
    pub fn next_is_here(&self) -> bool {
        self.0.here.load(Ordering::Relaxed)
    }
}

impl<F> hyper::rt::Executor<F> for Calls
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        if self.0.here.swap(false, Ordering::Relaxed) {
            self.0.new.lock().push(Box::pin(fut));
        } else {
            tokio::spawn(fut);
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection's future that also runs the calls it keeps.
    pub struct Serving<F> {
        #[pin]
        conn: F,
        calls: Calls,
        running: FuturesUnordered<Call>,
        wake: Arc<WakeState>,
        // The waker the connection sees, and the one its kept calls see.
        conn_waker: Waker,
        calls_waker: Waker,
        hold: super::held_flush::Hold,
    }
}

impl<F> Serving<F> {
    /// `hold` is the hold of the connection's socket: control frames are
    /// held while the calls of a pass run, and flushed before the poll ends.
    pub fn new(conn: F, calls: Calls, hold: super::held_flush::Hold) -> Self {
        let wake = Arc::new(WakeState {
            state: AtomicU8::new(IDLE),
            task: parking_lot::Mutex::new(None),
        });
        let waker = |bit| {
            Waker::from(Arc::new(Wake {
                shared: wake.clone(),
                bit,
            }))
        };
        Serving {
            conn,
            calls,
            running: FuturesUnordered::new(),
            conn_waker: waker(CONN_WOKEN),
            calls_waker: waker(CALLS_WOKEN),
            wake,
            hold,
        }
    }
}

/// Not being polled: a wake-up goes to the task.
const IDLE: u8 = 0;
/// Being polled: a wake-up asks for another pass.
const POLLING: u8 = 1;
/// Being polled, and the connection woken since its last poll.
const CONN_WOKEN: u8 = 2;
/// Being polled, and a kept call woken since the calls' last poll.
const CALLS_WOKEN: u8 = 4;

/// The most passes of one poll. A wake-up at every pass is the runtime's
/// budget for the task running out, which only a yield renews: the task
/// then wakes itself and yields.
const PASSES: usize = 8;

/// Polls the kept calls woken since their last poll (new ones included),
/// each until it waits; the calls' wake-ups so far are this poll's to answer.
fn run_calls(state: &AtomicU8, running: &mut FuturesUnordered<Call>, cx: &mut Context<'_>) {
    state.fetch_and(!CALLS_WOKEN, Ordering::AcqRel);
    while let Poll::Ready(Some(())) = running.poll_next_unpin(cx) {}
}

/// What the connection's task's poll is doing, shared by its two wakers.
struct WakeState {
    state: AtomicU8,
    /// The task's waker as of its latest poll.
    task: parking_lot::Mutex<Option<Waker>>,
}

/// The waker of the connection (`bit` [`CONN_WOKEN`]) or of its kept calls
/// ([`CALLS_WOKEN`]). Kept apart because a call wakes itself in the middle
/// of its own poll (h2 hands a stream send capacity at once and wakes the
/// stream's sender, which is that call), and that wake-up needs the calls
/// polled again, not another poll of the connection.
struct Wake {
    shared: Arc<WakeState>,
    bit: u8,
}

impl std::task::Wake for Wake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let s = &self.shared;
        let mut cur = s.state.load(Ordering::Acquire);
        loop {
            if cur == IDLE {
                if let Some(w) = s.task.lock().as_ref() {
                    w.wake_by_ref();
                }
                return;
            }
            if cur & self.bit != 0 {
                return;
            }
            match s.state.compare_exchange_weak(
                cur,
                cur | self.bit,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }
}

impl<F: Future> Future for Serving<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        {
            let mut task = this.wake.task.lock();
            if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let state = &this.wake.state;
        state.store(POLLING, Ordering::Release);
        this.hold.on();
        let mut conn_cx = Context::from_waker(this.conn_waker);
        let mut calls_cx = Context::from_waker(this.calls_waker);
        let mut conn_due = true;
        let mut pass = 1;
        loop {
            // Calls woken since the last pass (an answer from the Raft loop)
            // answer first, so that the connection's poll below writes their
            // answers with whatever else it has to send.
            run_calls(state, this.running, &mut calls_cx);
            if conn_due {
                // The connection's wake-ups so far are this poll's to answer.
                state.fetch_and(!CONN_WOKEN, Ordering::AcqRel);
                // Reads requests, accepts calls, writes what calls have answered.
                if let Poll::Ready(out) = this.conn.as_mut().poll(&mut conn_cx) {
                    this.hold.off();
                    state.store(IDLE, Ordering::Release);
                    return Poll::Ready(out);
                }
                this.running.extend(this.calls.0.new.lock().drain(..));
                run_calls(state, this.running, &mut calls_cx);
            }
            match state.compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    // Control frames held while the calls ran (`held_flush`)
                    // leave in one more pass, the hold off; once only.
                    if !this.hold.off() {
                        return Poll::Pending;
                    }
                    state.store(POLLING, Ordering::Release);
                    conn_due = true;
                }
                Err(now) => {
                    if pass >= PASSES {
                        // A flush still held waits for the task's next poll.
                        this.hold.off();
                        state.store(IDLE, Ordering::Release);
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    conn_due = now & CONN_WOKEN != 0;
                }
            }
            pass += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A task waker that counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A connection future polled `polls` times so far; each poll runs `f`
    /// with its context.
    struct Conn<G: FnMut(&mut Context<'_>)> {
        polls: Arc<AtomicUsize>,
        f: G,
    }

    impl<G: FnMut(&mut Context<'_>) + Unpin> Future for Conn<G> {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            (self.f)(cx);
            Poll::Pending
        }
    }

    /// Polls `s` once, as its task would be; the task's waker, to count
    /// its wake-ups after.
    fn poll_once<G: FnMut(&mut Context<'_>) + Unpin>(s: &mut Serving<Conn<G>>) -> Arc<Count> {
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let r = Pin::new(s).poll(&mut Context::from_waker(&waker));
        assert!(r.is_pending(), "the connection does not end");
        count
    }

    #[test]
    fn a_kept_call_runs_in_the_connections_poll_and_a_spawned_one_does_not() {
        use hyper::rt::Executor;
        let calls = Calls::default();
        let ran = Arc::new(AtomicBool::new(false));
        calls.run_next_here();
        assert!(calls.next_is_here());
        let r = ran.clone();
        calls.execute(async move { r.store(true, Ordering::SeqCst) });
        assert!(!calls.next_is_here(), "the mark is for one call only");
        assert!(!ran.load(Ordering::SeqCst), "kept, not run yet");

        let polls = Arc::new(AtomicUsize::new(0));
        let mut s = Serving::new(
            Conn {
                polls: polls.clone(),
                f: |_: &mut Context<'_>| {},
            },
            calls.clone(),
            super::super::held_flush::Hold::default(),
        );
        let count = poll_once(&mut s);
        assert!(ran.load(Ordering::SeqCst), "the connection's poll ran it");
        assert_eq!(count.0.load(Ordering::SeqCst), 0);

        // Unmarked, a call is spawned: inside a runtime it runs there.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let (tx, rx) = std::sync::mpsc::channel();
        rt.block_on(async {
            calls.execute(async move { tx.send(7).expect("receiver") });
            tokio::task::yield_now().await;
        });
        assert_eq!(rx.try_recv(), Ok(7));
        assert!(s.running.is_empty(), "the spawned call is not kept");
    }

    #[test]
    fn a_wake_up_during_the_poll_is_another_pass_not_a_task_wake_up() {
        let polls = Arc::new(AtomicUsize::new(0));
        let mut first = true;
        let mut s = Serving::new(
            Conn {
                polls: polls.clone(),
                f: move |cx: &mut Context<'_>| {
                    if std::mem::take(&mut first) {
                        cx.waker().wake_by_ref();
                    }
                },
            },
            Calls::default(),
            super::super::held_flush::Hold::default(),
        );
        let count = poll_once(&mut s);
        assert_eq!(polls.load(Ordering::SeqCst), 2, "polled again at once");
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "the task was not woken");
    }

    #[test]
    fn a_call_that_wakes_itself_is_polled_again_without_another_poll_of_the_connection() {
        use hyper::rt::Executor;
        let calls = Calls::default();
        let call_polls = Arc::new(AtomicUsize::new(0));
        let c = call_polls.clone();
        calls.run_next_here();
        // As h2 does when it grants a stream send capacity at once: the
        // call's own waker is woken while the call is being polled.
        calls.execute(std::future::poll_fn(move |cx| {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        }));
        let polls = Arc::new(AtomicUsize::new(0));
        let mut s = Serving::new(
            Conn {
                polls: polls.clone(),
                f: |_: &mut Context<'_>| {},
            },
            calls,
            super::super::held_flush::Hold::default(),
        );
        let count = poll_once(&mut s);
        assert_eq!(call_polls.load(Ordering::SeqCst), 2, "the call ran again");
        assert!(s.running.is_empty(), "and ended");
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "the connection was polled once"
        );
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "the task was not woken");
    }

    #[test]
    fn a_wake_up_after_the_poll_wakes_the_task() {
        let polls = Arc::new(AtomicUsize::new(0));
        let kept: Arc<parking_lot::Mutex<Option<Waker>>> = Arc::default();
        let k = kept.clone();
        let mut s = Serving::new(
            Conn {
                polls: polls.clone(),
                f: move |cx: &mut Context<'_>| *k.lock() = Some(cx.waker().clone()),
            },
            Calls::default(),
            super::super::held_flush::Hold::default(),
        );
        let count = poll_once(&mut s);
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        let w = kept.lock().take().expect("the connection kept its waker");
        std::thread::spawn(move || w.wake())
            .join()
            .expect("waking thread");
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the task was woken");
        assert_eq!(polls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_flush_held_during_the_poll_goes_out_in_one_more_pass_before_it_ends() {
        use super::super::held_flush::Hold;
        let hold = Hold::default();
        let h = hold.clone();
        let pong = [0, 0, 8, 6, 1, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        let flushed = Arc::new(AtomicUsize::new(0));
        let f = flushed.clone();
        let polls = Arc::new(AtomicUsize::new(0));
        let mut s = Serving::new(
            Conn {
                polls: polls.clone(),
                f: move |_: &mut Context<'_>| {
                    if !h.holds(&pong) {
                        f.fetch_add(1, Ordering::SeqCst);
                    }
                },
            },
            Calls::default(),
            hold.clone(),
        );
        let count = poll_once(&mut s);
        assert_eq!(polls.load(Ordering::SeqCst), 2, "one pass more");
        assert_eq!(flushed.load(Ordering::SeqCst), 1, "flushed in that pass");
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "the task was not woken");
        assert!(!hold.off(), "nothing held after the poll");
    }

    #[test]
    fn a_connection_that_always_wakes_itself_yields_after_a_bounded_number_of_passes() {
        let polls = Arc::new(AtomicUsize::new(0));
        let mut s = Serving::new(
            Conn {
                polls: polls.clone(),
                f: |cx: &mut Context<'_>| cx.waker().wake_by_ref(),
            },
            Calls::default(),
            super::super::held_flush::Hold::default(),
        );
        let count = poll_once(&mut s);
        assert_eq!(polls.load(Ordering::SeqCst), PASSES);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "it yields, woken");
    }
}
