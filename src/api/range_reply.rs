//! A unary `KV.Range` written from the store straight into its gRPC reply.
//!
//! This layer answers `/etcdserverpb.KV/Range` itself, in front of tonic's
//! KV service: the keys' stored records are the reply's bytes
//! ([`crate::mvcc::encoded`]), so no key is decoded into a message and
//! encoded again. A reply of up to [`WHOLE_KEYS`] keys and [`WHOLE_BYTES`]
//! bytes is built whole; a larger one is streamed: its length is computed
//! by a first walk of the keys, then its bytes are sent as the client takes
//! them, a frame at a time, by a second walk at the same revision in the
//! same read transaction. The member then holds a few frames of a reply of
//! any size, where a reply built as a message is in memory twice (the
//! message, then its encoding).
//!
//! The reply is what tonic would send for the same answer (the same
//! message bytes as prost encodes, `content-type: application/grpc`, the
//! status in the trailers), and its errors are the same statuses. Requests
//! this layer does not answer go on to tonic unchanged: other sort orders
//! and revision filters (their keys are sorted or filtered in memory),
//! compressed, oversized or undecodable messages (tonic refuses them).
//! It runs after the authorization and message-size layers.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use http_body::Frame;
use prost::Message;
use tokio::sync::mpsc;

use super::kv::check_range;
use super::message::{MAX_SEND, first_message, is_plain_grpc, too_large, trailers};
use crate::error::{Error, Result};
use crate::metrics;
use crate::mvcc::encoded::Pinned;
use crate::pb::etcdserverpb::RangeRequest;
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::server::EtcdServer;

const PATH: &str = "/etcdserverpb.KV/Range";

/// The most keys a reply built whole may have.
const WHOLE_KEYS: usize = 1024;
/// The most bytes a reply built whole may have; the keys read for a reply
/// that turns out larger are read again to be streamed.
const WHOLE_BYTES: usize = 1 << 20;
/// The size of a streamed reply's frames, and how many wait for the client.
const FRAME: usize = 64 << 10;
const QUEUED: usize = 4;

/// Answers the unary Range calls it can; gives back every other request.
pub async fn answer(s: &Arc<EtcdServer>, req: Request) -> Result<Response, Request> {
    if req.uri().path() != PATH || !is_plain_grpc(req.headers()) {
        return Err(req);
    }
    let limit = s.cfg.max_request_bytes + super::GRPC_OVERHEAD_BYTES;
    let (parts, body) = req.into_parts();
    let (msg, body) = match first_message(body, limit).await {
        Ok(x) => x,
        // The message limit's refusal, or a broken body.
        Err(e) => return Ok(tonic::Status::from_error(Box::new(e)).into_http()),
    };
    match msg.and_then(|m| RangeRequest::decode(&m[..]).ok()) {
        Some(r) if in_key_order(&r) => Ok(match reply(s, r).await {
            Ok(resp) => resp,
            Err(e) => super::status::to_status(e).into_http(),
        }),
        _ => Err(Request::from_parts(parts, body)),
    }
}

/// A Range whose reply has its keys in key order, as the index walks them:
/// no sort order but by key ascending, no revision filters.
fn in_key_order(r: &RangeRequest) -> bool {
    let order = SortOrder::try_from(r.sort_order).unwrap_or_default();
    let target = SortTarget::try_from(r.sort_target).unwrap_or_default();
    let sorted = order == SortOrder::Descend || target != SortTarget::Key;
    !sorted
        && r.min_mod_revision == 0
        && r.max_mod_revision == 0
        && r.min_create_revision == 0
        && r.max_create_revision == 0
}

async fn reply(s: &Arc<EtcdServer>, r: RangeRequest) -> Result<Response> {
    check_range(&r)?;
    if !r.serializable {
        s.read_barrier().await?;
    }
    metrics::MVCC_RANGE.inc();
    let pinned = s.store.pin_range(&r, WHOLE_KEYS)?;
    let mut head = Vec::with_capacity(64);
    // The header (field 1) comes first, `more` (3) and `count` (4) after
    // the keys, as prost and etcd order them.
    let header = s.header(pinned.header_rev);
    prost::encoding::message::encode(1, &header, &mut head);
    let mut tail = Vec::with_capacity(16);
    if pinned.more {
        prost::encoding::bool::encode(3, &true, &mut tail);
    }
    if pinned.count > 0 {
        prost::encoding::int64::encode(4, &(pinned.count as i64), &mut tail);
    }
    if pinned.n <= WHOLE_KEYS {
        let mut buf = Vec::with_capacity(5 + head.len() + 256 * pinned.n + tail.len());
        buf.extend_from_slice(&[0; 5]);
        buf.extend_from_slice(&head);
        if pinned.write(&mut pinned.walk(), &mut buf, WHOLE_BYTES)? {
            buf.extend_from_slice(&tail);
            let len = buf.len() - 5;
            let prefix = u32::try_from(len).map_err(|_| too_large(len as u64))?;
            buf[1..5].copy_from_slice(&prefix.to_be_bytes());
            metrics::grpc::sent_bytes(len);
            let (tx, rx) = mpsc::channel(2);
            // The channel has room for both frames.
            let _ = tx.try_send(Frame::data(Bytes::from(buf)));
            let _ = tx.try_send(Frame::trailers(status_trailers(None)));
            return Ok(response(rx));
        }
    }
    // Too large to build whole: its length first, off the async workers.
    let (pinned, kvs) = tokio::task::spawn_blocking(move || {
        let kvs = pinned.kvs_len();
        (pinned, kvs)
    })
    .await
    .map_err(|e| Error::Storage(format!("a range's reader failed: {e}")))?;
    let len = head.len() as u64 + kvs? + tail.len() as u64;
    if len > MAX_SEND {
        return Err(too_large(len));
    }
    metrics::grpc::sent_bytes(len as usize);
    let mut first = Vec::with_capacity(FRAME + 5);
    first.push(0);
    first.extend_from_slice(&(len as u32).to_be_bytes());
    first.extend_from_slice(&head);
    let (tx, rx) = mpsc::channel(QUEUED);
    tokio::spawn(stream(pinned, first, tail, 5 + len, tx));
    Ok(response(rx))
}

/// Sends a streamed reply: `first` (its prefix and header), the keys a
/// frame at a time as the client takes them, `tail`, then the status. A
/// failure after the first frame (a compaction past the revision) ends the
/// reply with that status: the client sees the error, not a short message.
/// Stops when the client is gone.
async fn stream(
    pinned: Pinned,
    first: Vec<u8>,
    tail: Vec<u8>,
    total: u64,
    tx: mpsc::Sender<Frame<Bytes>>,
) {
    let mut walk = pinned.walk();
    let mut buf = first;
    let mut sent = 0u64;
    let status = loop {
        let done = match pinned.write(&mut walk, &mut buf, FRAME) {
            Ok(done) => done,
            Err(e) => break Some(e),
        };
        if done {
            buf.extend_from_slice(&tail);
        }
        sent += buf.len() as u64;
        let frame = std::mem::replace(&mut buf, Vec::with_capacity(FRAME + 1024));
        if tx.send(Frame::data(Bytes::from(frame))).await.is_err() {
            return;
        }
        if done {
            break (sent != total).then(|| {
                Error::Storage(format!(
                    "a range's reply came to {sent} bytes, not the {total} announced"
                ))
            });
        }
    };
    let _ = tx.send(Frame::trailers(status_trailers(status))).await;
}

/// The trailers of a reply: `grpc-status` 0, or the error's status.
fn status_trailers(e: Option<Error>) -> HeaderMap {
    let status = match e {
        None => tonic::Status::ok(""),
        Some(e) => super::status::to_status(e),
    };
    trailers(&status)
}

fn response(rx: mpsc::Receiver<Frame<Bytes>>) -> Response {
    let mut resp = Response::new(Body::new(Reply { rx }));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    resp
}

/// A reply's body: the frames its writer queues, as the client takes them.
struct Reply {
    rx: mpsc::Receiver<Frame<Bytes>>,
}

impl http_body::Body for Reply {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|f| f.map(Ok))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ranges_in_key_order_are_answered_here() {
        let base = RangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        };
        assert!(in_key_order(&base));
        let by_key = RangeRequest {
            sort_order: SortOrder::Ascend as i32,
            sort_target: SortTarget::Key as i32,
            ..base.clone()
        };
        assert!(in_key_order(&by_key));
        for (order, target) in [
            (SortOrder::Descend, SortTarget::Key),
            (SortOrder::None, SortTarget::Mod),
            (SortOrder::Ascend, SortTarget::Value),
        ] {
            let r = RangeRequest {
                sort_order: order as i32,
                sort_target: target as i32,
                ..base.clone()
            };
            assert!(!in_key_order(&r), "{order:?} {target:?}");
        }
        let filtered = RangeRequest {
            max_create_revision: 9,
            ..base.clone()
        };
        assert!(!in_key_order(&filtered));
    }
}
