//! Write coalescing for a client connection's task.
//!
//! A gRPC call that runs in a task of its own (a watch stream, a maintenance
//! call: those [`super::calls`] does not keep in the connection's task)
//! leaves the socket I/O to the connection's task. When a call's
//! response is ready, its task wakes the connection's task, and the runtime
//! runs a task woken that way next on the same thread: with many calls ending
//! together (a Raft batch commits twenty puts at once), the connection then
//! wrote each response with a `writev` of its own, one system call per call,
//! and the client was woken as many times.
//!
//! [`Coalesced`] puts a wake-up of the connection's task behind every task
//! already ready on its thread (the runtime's deferred wake-ups, as
//! `tokio::task::yield_now` uses, run once the thread has nothing else to
//! run) while other calls of the connection are still running
//! ([`InFlight`]): the responses that end together are written together.
//! A call counts from when the connection's task accepts its stream, so the
//! calls read from the socket together, which hyper then runs one task
//! each, are all waited for: a client keeping ten reads in flight on one
//! connection had each answer written on its own, since each read ran
//! whole in its task's first poll and was the only call counted.
//! With one call at a time there is nothing to wait for, and the connection
//! is polled at once (a deferral there cost about a tenth more of the
//! server's CPU per call: the extra pass through the scheduler took two more
//! futex calls and a context switch).
//!
//! [`write_buffer`] lets everything a connection writes between two flushes
//! share one system call. h2 copies a DATA frame's payload into its own
//! write buffer only up to 256 bytes (1 KiB on a socket that takes no
//! vectored writes); a larger payload is kept aside and written out, with
//! the frames buffered before it, before h2 takes the next frame. Written
//! to the socket directly, a watch stream's batch of a hundred events (two
//! DATA frames of 3.5 and 9.6 KiB) took four `sendto` calls, and each
//! Range of a 256-byte value one of its own, however many were ready.
//! Behind a 32 KiB buffer (grpc-go's, etcd's server's, is as large) they
//! go out together when hyper flushes, after it has taken every frame that
//! was ready; a write larger than the buffer goes to the socket directly.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use tokio::io::{AsyncRead, AsyncWrite};

/// The calls of one connection whose responses are not ready yet.
#[derive(Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Counts `svc`'s calls from when the connection accepts each one until
    /// its response is ready (or the call is dropped). Calls that `exec`
    /// keeps in the connection's task ([`super::calls`]) are not counted:
    /// they end inside the connection's own poll, which then writes their
    /// responses together.
    ///
    /// The count must start in the connection's task, as hyper accepts the
    /// stream: a tower service wrapped for hyper is only called when the
    /// call's own task first runs, and a read answered in that same poll
    /// was counted and uncounted at once, so the connection never saw the
    /// calls it had accepted and still had to run, and wrote each answer
    /// on its own.
    pub fn track<S>(&self, svc: S, exec: super::calls::Calls) -> Tracked<S> {
        Tracked {
            svc,
            calls: self.clone(),
            exec,
        }
    }

    fn busy(&self) -> bool {
        self.0.load(Ordering::Acquire) > 0
    }
}

/// One call counted in an [`InFlight`] while it lives.
struct Call(Arc<AtomicUsize>);

impl Call {
    fn start(n: &InFlight) -> Call {
        n.0.fetch_add(1, Ordering::AcqRel);
        Call(n.0.clone())
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A hyper service whose calls are counted in an [`InFlight`].
#[derive(Clone)]
pub struct Tracked<S> {
    svc: S,
    calls: InFlight,
    exec: super::calls::Calls,
}

impl<S, R> hyper::service::Service<R> for Tracked<S>
where
    S: hyper::service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Counted<S::Future>;

    fn call(&self, req: R) -> Self::Future {
        let fut = self.svc.call(req);
        let call = (!self.exec.next_is_here()).then(|| Call::start(&self.calls));
        Counted { fut, call }
    }
}

pin_project_lite::pin_project! {
    /// A call's future, counted until it resolves or is dropped.
    pub struct Counted<F> {
        #[pin]
        fut: F,
        call: Option<Call>,
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = std::task::ready!(this.fut.poll(cx));
        this.call.take();
        Poll::Ready(out)
    }
}

/// A connection's future whose wake-ups, while calls of the connection are in
/// flight, are deferred until the worker thread has run what was ready before.
pub struct Coalesced<F> {
    inner: Pin<Box<F>>,
    calls: InFlight,
    /// Set while a deferral is under way: when it has fired, the next poll
    /// polls `inner`; other wake-ups meanwhile change nothing.
    deferral: Option<Arc<Deferral>>,
}

impl<F: Future> Coalesced<F> {
    pub fn new(inner: F, calls: InFlight) -> Self {
        Coalesced {
            inner: Box::pin(inner),
            calls,
            deferral: None,
        }
    }
}

/// Wakes the task once the runtime runs its deferred wake-ups, and says so.
struct Deferral {
    fired: AtomicBool,
    task: Waker,
}

impl Wake for Deferral {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl<F: Future> Future for Coalesced<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        match &this.deferral {
            Some(d) if !d.fired.load(Ordering::Acquire) => return Poll::Pending,
            Some(_) => this.deferral = None,
            None if !this.calls.busy() => {}
            None => {
                let d = Arc::new(Deferral {
                    fired: AtomicBool::new(false),
                    task: cx.waker().clone(),
                });
                let waker = Waker::from(d.clone());
                let mut dcx = Context::from_waker(&waker);
                let yielded = std::pin::pin!(tokio::task::yield_now());
                if yielded.poll(&mut dcx).is_pending() {
                    this.deferral = Some(d);
                    return Poll::Pending;
                }
            }
        }
        this.inner.as_mut().poll(cx)
    }
}

/// How much a connection buffers before it writes to its socket.
pub const WRITE_BUFFER: usize = 32 * 1024;

/// A client connection's socket behind its write buffer (see the module's
/// text): writes are copied until the buffer is full or hyper flushes.
/// Reads pass through.
pub fn write_buffer<S: AsyncRead + AsyncWrite>(s: S) -> tokio::io::BufWriter<S> {
    tokio::io::BufWriter::with_capacity(WRITE_BUFFER, s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use tokio::io::ReadBuf;

    /// A socket that counts the writes it is given.
    struct Counting {
        writes: usize,
        bytes: Vec<u8>,
    }

    impl AsyncRead for Counting {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.writes += 1;
            this.bytes.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.writes += 1;
            let mut n = 0;
            for b in bufs {
                this.bytes.extend_from_slice(b);
                n += b.len();
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn frames_written_between_flushes_share_one_write() {
        use tokio::io::AsyncWriteExt;
        let mut w = write_buffer(Counting {
            writes: 0,
            bytes: Vec::new(),
        });
        // As h2 writes a batch: small frames copied into its buffer, then
        // frame headers chained to payloads larger than its threshold.
        let small = [7u8; 40];
        let header = [0u8; 9];
        let payload = vec![1u8; 9_636];
        w.write_all(&small).await.expect("write");
        for _ in 0..2 {
            let bufs = [io::IoSlice::new(&header), io::IoSlice::new(&payload)];
            let n = w.write_vectored(&bufs).await.expect("write");
            assert_eq!(n, header.len() + payload.len());
        }
        assert_eq!(
            w.get_ref().writes,
            0,
            "nothing reaches the socket before a flush"
        );
        w.flush().await.expect("flush");
        assert_eq!(w.get_ref().writes, 1);
        assert_eq!(w.get_ref().bytes.len(), 40 + 2 * (9 + 9_636));
        // A write larger than the buffer is not copied: it goes out at once.
        let big = vec![2u8; WRITE_BUFFER + 1];
        w.write_all(&big).await.expect("write");
        assert_eq!(w.get_ref().writes, 2);
        assert_eq!(
            w.get_ref().bytes.len(),
            40 + 2 * (9 + 9_636) + WRITE_BUFFER + 1
        );
    }

    #[tokio::test]
    async fn the_inner_future_completes_after_deferrals() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let calls = InFlight::default();
        let _call = Call::start(&calls);
        let task = tokio::spawn(Coalesced::new(
            async move { rx.await.unwrap_or(0) + 1 },
            calls.clone(),
        ));
        tokio::task::yield_now().await;
        tx.send(41).expect("receiver alive");
        assert_eq!(task.await.expect("task ran"), 42);
    }

    #[test]
    fn outside_a_runtime_the_deferral_fires_at_once() {
        let calls = InFlight::default();
        let call = Call::start(&calls);
        let mut f = Coalesced::new(async { 7 }, calls.clone());
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        // yield_now wakes at once outside a runtime: the first poll defers,
        // the second finds the deferral fired and polls the inner future.
        assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
        assert_eq!(Pin::new(&mut f).poll(&mut cx), Poll::Ready(7));
        drop(call);
        assert!(!calls.busy());
    }

    /// A service answering 7 at the first poll.
    struct Seven;

    impl hyper::service::Service<()> for Seven {
        type Response = u32;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<u32, Self::Error>>;

        fn call(&self, _: ()) -> Self::Future {
            std::future::ready(Ok(7))
        }
    }

    #[test]
    fn a_call_is_counted_from_when_the_connection_accepts_it() {
        use hyper::service::Service;
        let calls = InFlight::default();
        let svc = calls.track(Seven, super::super::calls::Calls::default());
        let fut = svc.call(());
        assert!(calls.busy(), "counted before its future first runs");
        let mut fut = std::pin::pin!(fut);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(7))));
        assert!(!calls.busy(), "uncounted once its response is ready");
        let dropped = svc.call(());
        assert!(calls.busy());
        drop(dropped);
        assert!(!calls.busy(), "uncounted when dropped unfinished");
    }

    #[test]
    fn a_call_kept_in_the_connections_task_is_not_counted() {
        use hyper::service::Service;
        let calls = InFlight::default();
        let exec = super::super::calls::Calls::default();
        let svc = calls.track(Seven, exec.clone());
        exec.run_next_here();
        let _kept = svc.call(());
        assert!(!calls.busy());
    }

    #[test]
    fn with_no_call_in_flight_the_connection_is_polled_at_once() {
        let mut f = Coalesced::new(async { 7 }, InFlight::default());
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(Pin::new(&mut f).poll(&mut cx), Poll::Ready(7));
    }
}
