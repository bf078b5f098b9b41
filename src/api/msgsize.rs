//! The gRPC message limit as etcd's gRPC server enforces it: a request message
//! over `--max-request-bytes` plus gRPC's 512 KiB allowance is refused with
//! `ResourceExhausted` and Go's text, `grpc: received message larger than max
//! (N vs. M)`, as soon as its length prefix is read (clients decide by code:
//! `OutOfRange` would read as a compacted or future revision). Each gRPC
//! request's body is read through [`Limited`], in front of every service.
//!
//! The same layer counts the calls for go-grpc-prometheus's `grpc_server_*`
//! families and etcd's byte counters: a call is started when it arrives
//! (before authorization, so refused calls count as etcd's do), each request
//! message is counted by [`Limited`] as its length prefix is read, a unary
//! call is handled when its answer is ready (the code from a trailers-only
//! answer, OK otherwise), a streaming call when its response body ends (the
//! code from its trailers); either is Canceled when the client goes away first.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::Response;
use http_body::Frame;

use crate::metrics::grpc::{self, Kind};

/// Wraps the request body in a [`Limited`] of `max` bytes per message, and
/// counts the call as started; [`end`] counts it as handled with its answer
/// (or the returned [`Pending`], dropped first, as Canceled).
pub fn begin(max: usize, req: Request) -> (Request, Option<Pending>) {
    let rpc = if is_grpc(&req) {
        grpc::lookup(req.uri().path())
    } else {
        None
    };
    let (parts, body) = req.into_parts();
    let Some(rpc) = rpc else {
        let body = Body::new(Limited::new(body, max, None));
        return (Request::from_parts(parts, body), None);
    };
    let start = rpc.start();
    let version = parts
        .headers
        .get("client-api-version")
        .and_then(|v| v.to_str().ok());
    crate::metrics::client_requests::count(version, rpc.kind != Kind::Unary);
    let body = Body::new(Limited::new(body, max, Some(rpc)));
    // A client that goes away before the answer cancels the call.
    let pending = Pending {
        rpc,
        start,
        answered: false,
    };
    (Request::from_parts(parts, body), Some(pending))
}

/// Counts a call [`begin`] started as handled by `resp`.
pub fn end(pending: Option<Pending>, resp: Response) -> Response {
    let Some(mut pending) = pending else {
        return resp;
    };
    pending.answered = true;
    let (rpc, start) = (pending.rpc, pending.start);
    // An answer without a message carries its status in its headers.
    if let Some(code) = status_code(resp.headers()) {
        rpc.handled(code, start);
        return resp;
    }
    if rpc.kind == Kind::Unary {
        rpc.sent();
        rpc.handled(0, start);
        return resp;
    }
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, Body::new(Counted::new(body, rpc, start)))
}

/// A call whose answer is not ready yet: counted as Canceled if dropped so.
pub struct Pending {
    rpc: &'static grpc::Rpc,
    start: Option<std::time::Instant>,
    answered: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.answered {
            self.rpc.handled(1, self.start);
        }
    }
}

fn is_grpc(req: &Request) -> bool {
    req.headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn status_code(h: &axum::http::HeaderMap) -> Option<i32> {
    h.get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Reads gRPC length prefixes out of a body's data frames, across frames.
#[derive(Default)]
struct Prefixes {
    head: [u8; 5],
    head_len: usize,
    remaining: usize,
}

impl Prefixes {
    /// Every message begun has been read whole.
    fn at_boundary(&self) -> bool {
        self.head_len == 0 && self.remaining == 0
    }

    /// Calls `each` with the length of every message whose prefix `data`
    /// completes; stops at the first error.
    fn scan<E>(
        &mut self,
        mut data: &[u8],
        mut each: impl FnMut(usize) -> Result<(), E>,
    ) -> Result<(), E> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                self.remaining -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.head_len).min(data.len());
            self.head[self.head_len..self.head_len + n].copy_from_slice(&data[..n]);
            self.head_len += n;
            data = &data[n..];
            if self.head_len == 5 {
                self.head_len = 0;
                let h = self.head;
                let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
                each(len)?;
                self.remaining = len;
            }
        }
        Ok(())
    }
}

/// A streaming call's response body: counts each message sent and the call's
/// end.
pub struct Counted {
    inner: Body,
    rpc: &'static grpc::Rpc,
    start: Option<std::time::Instant>,
    prefixes: Prefixes,
    done: bool,
}

impl Counted {
    fn new(inner: Body, rpc: &'static grpc::Rpc, start: Option<std::time::Instant>) -> Self {
        Counted {
            inner,
            rpc,
            start,
            prefixes: Prefixes::default(),
            done: false,
        }
    }

    fn finish(&mut self, code: i32) {
        if !self.done {
            self.done = true;
            self.rpc.handled(code, self.start);
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        // The client went away before the end: the handler sees a canceled
        // context, as in etcd.
        self.finish(1);
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    let rpc = self.rpc;
                    let _ = self.prefixes.scan::<()>(d, |len| {
                        rpc.sent();
                        grpc::sent_bytes(len);
                        Ok(())
                    });
                } else if let Some(t) = f.trailers_ref() {
                    let code = status_code(t).unwrap_or(0);
                    self.finish(code);
                }
            }
            Some(Err(_)) => self.finish(2),
            None => self.finish(0),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A gRPC request body whose messages may not exceed `max` bytes.
///
/// The body of a call that takes one request message (unary or server
/// streaming) ends with that message. tonic hands such a request to its
/// service only once the body has ended, and a client that sends its end of
/// stream in a frame of its own (tonic's and hyper's clients do) would
/// otherwise hold the call back until that frame is read, often one more
/// wake-up of the connection later. etcd's server does not wait for it either,
/// and ignores what a client sends after the message, as tonic does.
///
/// The client's end of stream is still read: at once when it has come by
/// the time the body is dropped ([`read_at_hand`]), else by a task when it
/// comes ([`drain`]). A request stream dropped open is reset by h2, which
/// forgets a reset stream after a second or fifty newer ones; a frame for a
/// forgotten stream is an error h2 counts against the connection for its
/// whole life, and past 1,024 of them it closes the connection
/// (`ENHANCE_YOUR_CALM`) with every call in flight on it. A busy client
/// whose end-of-stream frames sometimes came late (puts from ten clients on
/// one connection while a defragment loaded the disk) lost its connection
/// that way twice a minute.
pub struct Limited {
    inner: Body,
    max: usize,
    prefixes: Prefixes,
    /// The method whose request messages are counted.
    rpc: Option<&'static grpc::Rpc>,
    /// The call takes one request message.
    single: bool,
    /// Messages whose prefix has been read.
    messages: usize,
    /// The one message of a `single` call has been read whole.
    ended: bool,
}

impl Limited {
    pub fn new(inner: Body, max: usize, rpc: Option<&'static grpc::Rpc>) -> Self {
        Limited {
            inner,
            max,
            prefixes: Prefixes::default(),
            rpc,
            single: rpc.is_some_and(|r| r.kind != Kind::BidiStream),
            messages: 0,
            ended: false,
        }
    }

    /// Follows the message boundaries through `data`.
    fn scan(&mut self, data: &[u8]) -> Result<(), tonic::Status> {
        let (max, rpc) = (self.max, self.rpc);
        let messages = &mut self.messages;
        self.prefixes.scan(data, |len| {
            *messages += 1;
            if len > max {
                return Err(tonic::Status::resource_exhausted(format!(
                    "grpc: received message larger than max ({len} vs. {max})"
                )));
            }
            if let Some(rpc) = rpc {
                rpc.received(len);
            }
            Ok(())
        })
    }
}

impl http_body::Body for Limited {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        Poll::Ready(match frame {
            Some(Ok(f)) => match f.data_ref().cloned() {
                Some(d) => match self.scan(&d) {
                    Ok(()) => {
                        self.ended =
                            self.single && self.messages == 1 && self.prefixes.at_boundary();
                        Some(Ok(f))
                    }
                    Err(st) => Some(Err(Box::new(st))),
                },
                None => Some(Ok(f)),
            },
            Some(Err(e)) => Some(Err(Box::new(e))),
            None => None,
        })
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// How long a request stream whose message has been read may wait for the
/// client's end of stream (see [`Limited`]) before it is reset.
const END_OF_STREAM_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Drop for Limited {
    fn drop(&mut self) {
        if !self.ended
            || http_body::Body::is_end_stream(&self.inner)
            || read_at_hand(&mut self.inner)
        {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let body = std::mem::replace(&mut self.inner, Body::empty());
            rt.spawn(drain(body));
        }
    }
}

/// Reads the frames of `body` already received, without waiting: true when
/// nothing is left to wait for (the body ended, or it carries more data or
/// failed, and is dropped at once as [`drain`] would), false when its end
/// has not come yet. A client that sends its end of stream in a frame of its
/// own, right after the message (tonic's and hyper's clients do), has most
/// often sent it by the time the answer is ready: no task is spawned then.
/// At most [`AT_HAND_FRAMES`] frames are read here: a client that keeps
/// sending empty frames is left to [`drain`] and its deadline.
fn read_at_hand(body: &mut Body) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    for _ in 0..AT_HAND_FRAMES {
        match http_body::Body::poll_frame(Pin::new(&mut *body), &mut cx) {
            Poll::Pending => return false,
            Poll::Ready(Some(Ok(f))) if f.data_ref().is_none_or(|d| d.is_empty()) => {}
            Poll::Ready(_) => return true,
        }
    }
    false
}

/// The most frames [`read_at_hand`] reads: an empty one, then the end of
/// stream or trailers, with room to spare.
const AT_HAND_FRAMES: usize = 4;

/// Reads what is left of a request body, up to its end, and drops it. A body
/// that has not ended within [`END_OF_STREAM_WAIT`], or that carries more
/// data (a client breaking the call's one-message rule), is dropped at once:
/// only an empty end of stream, or trailers, are waited for. The stream stays
/// open meanwhile and counts against the connection's concurrent streams
/// (`--max-concurrent-streams`), which bounds these tasks per connection.
async fn drain(mut body: Body) {
    let read = async {
        while let Some(frame) =
            std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut body), cx)).await
        {
            match frame {
                Ok(f) if f.data_ref().is_none_or(|d| d.is_empty()) => {}
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(END_OF_STREAM_WAIT, read).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use http_body::Body as _;

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(b'x', len));
        m
    }

    /// A body that yields `chunks` and then never ends, as a client that has
    /// not sent its end of stream yet.
    fn open_body(chunks: Vec<Vec<u8>>) -> Body {
        let s = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, axum::Error>(Bytes::from(c))),
        )
        .chain(futures::stream::pending());
        Body::from_stream(s)
    }

    fn poll(l: &mut Limited) -> Poll<Option<Vec<u8>>> {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        Pin::new(l)
            .poll_frame(&mut cx)
            .map(|f| f.map(|f| f.expect("frame").into_data().expect("data").to_vec()))
    }

    #[tokio::test]
    async fn a_request_dropped_before_its_end_of_stream_is_read_to_its_end() {
        let put = grpc::lookup("/etcdserverpb.KV/Put").expect("Put");
        let m = message(5);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, axum::Error>>(4);
        tx.send(Ok(Bytes::from(m.clone()))).await.expect("send");
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut l = Limited::new(body, 100, Some(put));
        assert_eq!(poll(&mut l), Poll::Ready(Some(m)));
        assert!(l.is_end_stream());
        drop(l);
        // The client's end of stream has not come: the stream is still read,
        // so that h2 does not reset it.
        tokio::task::yield_now().await;
        assert!(
            !tx.is_closed(),
            "the request stream was dropped before its end"
        );
        // An empty frame is taken, then the end of stream ends the reading.
        tx.send(Ok(Bytes::new())).await.expect("send");
        drop(tx);
        wait_for_no_task().await;

        // More data after the message: the stream is dropped (and reset) at once.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, axum::Error>>(4);
        tx.send(Ok(Bytes::from(message(5)))).await.expect("send");
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut l = Limited::new(body, 100, Some(put));
        assert!(matches!(poll(&mut l), Poll::Ready(Some(_))));
        drop(l);
        tx.send(Ok(Bytes::from_static(b"more")))
            .await
            .expect("send");
        tokio::time::timeout(std::time::Duration::from_secs(10), tx.closed())
            .await
            .expect("the drain stopped at data after the message");
        wait_for_no_task().await;
    }

    #[tokio::test]
    async fn a_request_whose_end_of_stream_came_is_read_to_its_end_without_a_task() {
        let put = grpc::lookup("/etcdserverpb.KV/Put").expect("Put");
        let m = message(5);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, axum::Error>>(4);
        tx.send(Ok(Bytes::from(m.clone()))).await.expect("send");
        // The client's end of stream, an empty frame then the end, came
        // right after the message (tonic's and hyper's clients send it so).
        tx.send(Ok(Bytes::new())).await.expect("send");
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut l = Limited::new(body, 100, Some(put));
        assert_eq!(poll(&mut l), Poll::Ready(Some(m)));
        drop(tx);
        drop(l);
        assert_eq!(
            alive_tasks(),
            0,
            "a task was spawned to read an end that had come"
        );
    }

    #[tokio::test]
    async fn a_request_that_keeps_sending_empty_frames_is_left_to_the_drain() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let put = grpc::lookup("/etcdserverpb.KV/Put").expect("Put");
        let m = message(5);
        // The message, then a thousand empty frames at hand, then nothing.
        let pulled = std::sync::Arc::new(AtomicUsize::new(0));
        let p = pulled.clone();
        let frames = futures::stream::iter(
            std::iter::once(Bytes::from(m.clone()))
                .chain(std::iter::repeat_n(Bytes::new(), 1000))
                .map(Ok::<_, axum::Error>),
        )
        .inspect(move |_| {
            p.fetch_add(1, Ordering::SeqCst);
        })
        .chain(futures::stream::pending());
        let mut l = Limited::new(Body::from_stream(frames), 100, Some(put));
        assert_eq!(poll(&mut l), Poll::Ready(Some(m)));
        drop(l);
        assert_eq!(
            pulled.load(Ordering::SeqCst),
            1 + AT_HAND_FRAMES,
            "the drop read more than its bound"
        );
        assert_eq!(alive_tasks(), 1, "the rest is left to the drain task");
    }

    /// The spawned tasks alive on the test's runtime.
    fn alive_tasks() -> usize {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    }

    /// Waits until no spawned task is left on the test's runtime.
    async fn wait_for_no_task() {
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while alive_tasks() > 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the drain ended with the stream");
    }

    #[test]
    fn a_single_message_call_ends_with_its_message() {
        let put = grpc::lookup("/etcdserverpb.KV/Put").expect("Put");
        let m = message(7);
        // The message in two frames, its end of stream not sent.
        let mut l = Limited::new(
            open_body(vec![m[..3].to_vec(), m[3..].to_vec()]),
            100,
            Some(put),
        );
        assert_eq!(poll(&mut l), Poll::Ready(Some(m[..3].to_vec())));
        assert!(!l.is_end_stream());
        assert_eq!(poll(&mut l), Poll::Ready(Some(m[3..].to_vec())));
        assert!(l.is_end_stream());
        assert_eq!(poll(&mut l), Poll::Ready(None));

        // A second message in the same frame: the body goes on as sent.
        let mut two = message(2);
        two.extend(message(1));
        let mut l = Limited::new(open_body(vec![two.clone()]), 100, Some(put));
        assert_eq!(poll(&mut l), Poll::Ready(Some(two)));
        assert!(poll(&mut l).is_pending());

        // A stream's body waits for its end.
        let watch = grpc::lookup("/etcdserverpb.Watch/Watch").expect("Watch");
        let mut l = Limited::new(open_body(vec![m.clone()]), 100, Some(watch));
        assert_eq!(poll(&mut l), Poll::Ready(Some(m)));
        assert!(poll(&mut l).is_pending());
    }

    #[test]
    fn messages_over_the_limit_are_refused_at_their_prefix() {
        let mut l = Limited::new(Body::empty(), 10, None);
        let mut two = message(10);
        two.extend(message(3));
        // Split anywhere, even inside a length prefix.
        for cut in [1, 3, 7, 15, two.len()] {
            let mut l2 = Limited::new(Body::empty(), 10, None);
            assert!(l2.scan(&two[..cut]).is_ok());
            assert!(l2.scan(&two[cut..]).is_ok());
        }
        let big = message(11);
        let e = l.scan(&big[..5]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            e.message(),
            "grpc: received message larger than max (11 vs. 10)"
        );
    }
}
