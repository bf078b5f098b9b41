//! `Lease.LeaseKeepAlive` answered without tonic's streaming machinery.
//!
//! Go's clientv3 opens a keep-alive stream for every `KeepAliveOnce` (one
//! request, one answer, then a reset), so a stream's set-up counts as much as
//! its messages: tonic's decoder and encoder each take a buffer of their own
//! per stream, and its body boxes twice. Here each request message read from
//! the stream ([`super::message::Reader`]) is answered by the lease service's own renewal
//! (`LeaseService::keep_alive_one`), encoded once; the stream ends as tonic
//! ends it: `grpc-status: 0` when the client closes its side (or cancels),
//! the status of the first failure otherwise, with tonic's texts for
//! malformed messages, counted as etcd counts failed keep-alive streams.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use futures::Stream;
use http_body::Frame;
use prost::Message;
use tonic::Status;

use super::lease::LeaseService;
use super::message::{Reader, framed, is_plain_grpc, trailers};
use crate::pb::etcdserverpb::LeaseKeepAliveRequest;

/// Answers a keep-alive stream, or gives the call back when it is not plain
/// gRPC (tonic then serves it). `limit` is the largest request message.
pub async fn call(
    req: Request,
    limit: usize,
    lease: Arc<LeaseService>,
) -> std::result::Result<Response, Request> {
    if !is_plain_grpc(req.headers()) {
        return Err(req);
    }
    let reader = Reader::new(req.into_body(), limit);
    let answers = futures::stream::unfold(Some((reader, lease)), |state| async move {
        let (mut reader, lease) = state?;
        let failed = match reader.next().await {
            Ok(Some(m)) => match LeaseKeepAliveRequest::decode(m) {
                Ok(r) => match lease.keep_alive_one(r.id).await.and_then(|a| framed(&a)) {
                    Ok(data) => return Some((Frame::data(data), Some((reader, lease)))),
                    Err(e) => super::status::to_status(e),
                },
                Err(e) => received(Status::internal(e.to_string())),
            },
            Ok(None) => Status::ok(""),
            Err(st) => received(st),
        };
        Some((Frame::trailers(trailers(&failed)), None))
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
