//! `Lease.LeaseKeepAlive` answered without tonic's streaming machinery.
//!
//! Go's clientv3 opens a keep-alive stream for every `KeepAliveOnce` (one
//! request, one answer, then a reset), so a stream's set-up counts as much as
//! its messages: tonic's decoder and encoder each take a buffer of their own
//! per stream, and its body boxes twice. Here each request message read from
//! the stream ([`Reader`]) is answered by the lease service's own renewal
//! (`LeaseService::keep_alive_one`), encoded once; the stream ends as tonic
//! ends it: `grpc-status: 0` when the client closes its side (or cancels),
//! the status of the first failure otherwise, with tonic's texts for
//! malformed messages, counted as etcd counts failed keep-alive streams.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use bytes::BytesMut;
use futures::Stream;
use http_body::{Body as _, Frame};
use prost::Message;
use tonic::{Code, Status};

use super::lease::LeaseService;
use crate::pb::etcdserverpb::LeaseKeepAliveRequest;

/// Answers a keep-alive stream, or gives the call back when it is not plain
/// gRPC (tonic then serves it). `limit` is the largest request message.
pub async fn call(
    req: Request,
    limit: usize,
    lease: Arc<LeaseService>,
) -> std::result::Result<Response, Request> {
    if !super::unary::is_plain_grpc(req.headers()) {
        return Err(req);
    }
    let reader = Reader::new(req.into_body(), limit);
    let answers = futures::stream::unfold(Some((reader, lease)), |state| async move {
        let (mut reader, lease) = state?;
        let failed = match reader.next().await {
            Ok(Some(m)) => match LeaseKeepAliveRequest::decode(m) {
                Ok(r) => match lease.keep_alive_one(r.id).await {
                    Ok(resp) => {
                        return Some((
                            Frame::data(super::unary::framed(&resp)),
                            Some((reader, lease)),
                        ));
                    }
                    Err(e) => super::status::to_status(e),
                },
                Err(e) => received(Status::internal(e.to_string())),
            },
            Ok(None) => Status::ok(""),
            Err(st) => received(st),
        };
        let mut trailers = HeaderMap::with_capacity(2);
        // Our statuses' texts are valid header values once percent-encoded.
        let _ = failed.add_header(&mut trailers);
        Some((Frame::trailers(trailers), None))
    });
    let mut resp = Response::new(Body::new(Answers(Box::pin(answers))));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    Ok(resp)
}

/// A request that could not be read, counted as etcd counts them.
fn received(st: Status) -> Status {
    super::count_stream_failure(&st, &crate::metrics::KEEPALIVE_STREAM_RECEIVE_FAILURES);
    st
}

type Frames = Pin<Box<dyn Stream<Item = Frame<Bytes>> + Send>>;

/// The answers' body: the frames of `Frames` as the client takes them.
struct Answers(Frames);

impl http_body::Body for Answers {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Self::Error>>> {
        self.0.as_mut().poll_next(cx).map(|f| f.map(Ok))
    }
}

/// The request messages of a stream, read as tonic reads them.
struct Reader {
    body: Body,
    buf: BytesMut,
    limit: usize,
}

impl Reader {
    fn new(body: Body, limit: usize) -> Reader {
        Reader {
            body,
            buf: BytesMut::new(),
            limit,
        }
    }

    /// The next message; None at the end of the stream (the client closed
    /// its side, or cancelled); the status tonic would fail with otherwise.
    async fn next(&mut self) -> std::result::Result<Option<Bytes>, Status> {
        loop {
            if let Some(head) = self.buf.get(..5) {
                match head[0] {
                    0 => {}
                    1 => {
                        return Err(Status::internal(
                            "protocol error: received message with compressed-flag but no grpc-encoding was specified",
                        ));
                    }
                    f => {
                        return Err(Status::internal(format!(
                            "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1), while sending request"
                        )));
                    }
                }
                let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
                if len > self.limit {
                    return Err(Status::out_of_range(format!(
                        "Error, decoded message length too large: found {len} bytes, the limit is: {} bytes",
                        self.limit
                    )));
                }
                if self.buf.len() >= 5 + len {
                    let m = self.buf.split_to(5 + len).freeze();
                    return Ok(Some(m.slice(5..)));
                }
            }
            let frame = std::future::poll_fn(|cx| Pin::new(&mut self.body).poll_frame(cx)).await;
            match frame {
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(Status::internal("Unexpected EOF decoding stream.")),
                Some(Err(e)) => {
                    let st = Status::from_error(Box::new(e));
                    return if st.code() == Code::Cancelled {
                        Ok(None)
                    } else {
                        Err(st)
                    };
                }
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => self.buf.extend_from_slice(&d),
                    // Trailers end the stream.
                    Err(_) => return Ok(None),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(m: &impl Message) -> Vec<u8> {
        super::super::unary::framed(m).to_vec()
    }

    fn body(chunks: Vec<Vec<u8>>) -> Body {
        let chunks: Vec<std::result::Result<Bytes, std::io::Error>> =
            chunks.into_iter().map(|c| Ok(Bytes::from(c))).collect();
        Body::from_stream(futures::stream::iter(chunks))
    }

    fn id(m: Bytes) -> i64 {
        LeaseKeepAliveRequest::decode(m).expect("decodes").id
    }

    #[tokio::test]
    async fn messages_are_read_across_and_within_frames() {
        let a = framed(&LeaseKeepAliveRequest { id: 1 });
        let b = framed(&LeaseKeepAliveRequest { id: 2 });
        let c = framed(&LeaseKeepAliveRequest { id: 3 });
        // a split in two; b and c in one frame.
        let mut bc = b.clone();
        bc.extend_from_slice(&c);
        let mut r = Reader::new(body(vec![a[..3].to_vec(), a[3..].to_vec(), bc]), 1 << 20);
        assert_eq!(r.next().await.ok().flatten().map(id), Some(1));
        assert_eq!(r.next().await.ok().flatten().map(id), Some(2));
        assert_eq!(r.next().await.ok().flatten().map(id), Some(3));
        assert!(matches!(r.next().await, Ok(None)), "the end of the stream");
    }

    #[tokio::test]
    async fn malformed_streams_fail_as_tonic_fails_them() {
        let ok = framed(&LeaseKeepAliveRequest { id: 1 });
        let mut compressed = ok.clone();
        compressed[0] = 1;
        let mut bad_flag = ok.clone();
        bad_flag[0] = 7;
        let cut = ok[..ok.len() - 1].to_vec();
        for (bytes, limit, code, text) in [
            (
                compressed,
                1 << 20,
                Code::Internal,
                "protocol error: received message with compressed-flag but no grpc-encoding was specified".to_string(),
            ),
            (
                bad_flag,
                1 << 20,
                Code::Internal,
                "protocol error: received message with invalid compression flag: 7 (valid flags are 0 and 1), while sending request".to_string(),
            ),
            (
                cut,
                1 << 20,
                Code::Internal,
                "Unexpected EOF decoding stream.".to_string(),
            ),
            (
                ok.clone(),
                1,
                Code::OutOfRange,
                format!(
                    "Error, decoded message length too large: found {} bytes, the limit is: 1 bytes",
                    ok.len() - 5
                ),
            ),
        ] {
            let mut r = Reader::new(body(vec![bytes]), limit);
            match r.next().await {
                Err(st) => {
                    assert_eq!(st.code(), code, "{text}");
                    assert_eq!(st.message(), text);
                }
                Ok(m) => panic!("read {m:?}, expected {text}"),
            }
        }
    }

    #[tokio::test]
    async fn an_empty_stream_ends_at_once() {
        let mut r = Reader::new(Body::empty(), 1 << 20);
        assert!(matches!(r.next().await, Ok(None)));
    }
}
