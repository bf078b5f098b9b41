//! Unary gRPC calls answered without tonic's server machinery.
//!
//! For a unary call tonic decodes the request through its streaming decoder
//! (a buffer of its own per call), boxes the handler's future, encodes the
//! answer through its streaming encoder (another buffer), builds the
//! trailers from a status and boxes the body twice. [`call`] does what the
//! call needs: it reads the request's one message, decodes it, runs the
//! handler (the service's own method, so the answer is the same), and
//! answers with the encoded message and `grpc-status: 0`, or with the
//! handler's status as tonic sends it (a trailers-only response).
//!
//! What it does not take (a compressed or oversized message, a body that
//! ends before its message, a message that does not decode) goes on to
//! tonic with the bytes read so far replayed, so tonic refuses it in its
//! own words. It runs behind the front steps, as tonic would.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use http_body::Frame;
use tonic::Status;
use tonic::metadata::MetadataMap;

use super::message::{first_message, framed, is_plain_grpc};

/// Answers `req` with `handler`, or gives it back (with its body intact)
/// when it is not a plain call whose message decodes; `limit` is the
/// largest message tonic would take.
pub async fn call<M, R, H, Fut>(
    req: Request,
    limit: usize,
    handler: H,
) -> std::result::Result<Response, Request>
where
    M: prost::Message + Default,
    R: prost::Message,
    H: FnOnce(tonic::Request<M>) -> Fut,
    Fut: Future<Output = std::result::Result<tonic::Response<R>, Status>>,
{
    if !is_plain_grpc(req.headers()) {
        return Err(req);
    }
    let (parts, body) = req.into_parts();
    let (msg, body) = match first_message(body, limit).await {
        Ok(x) => x,
        // A broken body, or the message limit's refusal: as tonic answers.
        Err(e) => return Ok(Status::from_error(Box::new(e)).into_http()),
    };
    let Some(m) = msg.and_then(|m| M::decode(m).ok()) else {
        return Err(Request::from_parts(parts, body));
    };
    let request = tonic::Request::from_parts(
        MetadataMap::from_headers(parts.headers),
        parts.extensions,
        m,
    );
    Ok(match handler(request).await {
        Ok(resp) => answer(resp),
        Err(status) => status.into_http(),
    })
}

/// A name made once: a `&str` name is copied into a new buffer at each insert.
const GRPC_STATUS: header::HeaderName = header::HeaderName::from_static("grpc-status");

/// An answer as tonic sends a unary call's: `content-type`, the handler's
/// metadata, the message, then `grpc-status: 0` (a message over etcd's send
/// limit is refused with etcd's error, as [`super::range_reply`] refuses it).
fn answer<R: prost::Message>(resp: tonic::Response<R>) -> Response {
    let (metadata, msg, extensions) = resp.into_parts();
    let data = match framed(&msg) {
        Ok(d) => d,
        Err(e) => return super::status::to_status(e).into_http(),
    };
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
    let mut r = Response::new(Body::new(Answer {
        data: Some(data),
        trailers: Some(trailers),
    }));
    *r.headers_mut() = metadata.into_headers();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    *r.extensions_mut() = extensions;
    r
}

/// A unary answer's body: one message, then the trailers.
struct Answer {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Self::Error>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::{PutRequest, PutResponse, ResponseHeader};
    use http_body::Body as _;
    use prost::Message;

    fn framed(m: &impl Message) -> Vec<u8> {
        super::framed(m).expect("small message").to_vec()
    }

    fn grpc(body: Body) -> Request {
        let mut r = Request::new(body);
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        r
    }

    async fn collect(mut b: Body) -> (Vec<u8>, Option<HeaderMap>) {
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut b).poll_frame(cx)).await {
            match f.expect("frame").into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        (data, trailers)
    }

    fn put() -> PutRequest {
        PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_call_is_answered_with_its_message_then_status_zero() {
        // The message split over two frames.
        let bytes = framed(&put());
        let (a, b) = bytes.split_at(3);
        let chunks: Vec<std::result::Result<Bytes, std::io::Error>> =
            vec![Ok(Bytes::copy_from_slice(a)), Ok(Bytes::copy_from_slice(b))];
        let body = Body::from_stream(futures::stream::iter(chunks));
        let mut req = grpc(body);
        req.headers_mut()
            .insert("token", HeaderValue::from_static("t"));
        let resp = call(req, 1 << 20, |r: tonic::Request<PutRequest>| async move {
            assert_eq!(r.get_ref().key, b"k");
            assert_eq!(
                r.metadata().get("token").map(|v| v.as_bytes()),
                Some(&b"t"[..])
            );
            Ok(tonic::Response::new(PutResponse {
                header: Some(ResponseHeader {
                    revision: 7,
                    ..Default::default()
                }),
                prev_kv: None,
            }))
        })
        .await
        .unwrap_or_else(|_| panic!("answered"));
        assert_eq!(
            resp.headers().get(header::CONTENT_TYPE),
            Some(&HeaderValue::from_static("application/grpc"))
        );
        let (data, trailers) = collect(resp.into_body()).await;
        assert_eq!(data[0], 0);
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        assert_eq!(len, data.len() - 5);
        let got = PutResponse::decode(&data[5..]).expect("decodes");
        assert_eq!(got.header.map(|h| h.revision), Some(7));
        let t = trailers.expect("trailers");
        assert_eq!(t.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
        assert_eq!(t.len(), 1);
    }

    #[tokio::test]
    async fn a_failed_call_is_answered_with_its_status_in_the_headers() {
        let req = grpc(Body::from(framed(&put())));
        let resp = call(req, 1 << 20, |_: tonic::Request<PutRequest>| async {
            Err::<tonic::Response<PutResponse>, _>(Status::invalid_argument(
                "etcdserver: key is not provided",
            ))
        })
        .await
        .unwrap_or_else(|_| panic!("answered"));
        let h = resp.headers();
        assert_eq!(h.get("grpc-status").map(|v| v.as_bytes()), Some(&b"3"[..]));
        assert!(h.get("grpc-message").is_some());
    }

    #[tokio::test]
    async fn what_is_not_taken_goes_on_with_its_bytes_intact() {
        let run = |req: Request| async move {
            call(req, 1 << 20, |_: tonic::Request<PutRequest>| async {
                Ok(tonic::Response::new(PutResponse::default()))
            })
            .await
        };
        // Compressed, by header and by flag; undecodable; cut short; too large.
        let bytes = framed(&put());
        let mut flagged = bytes.clone();
        flagged[0] = 1;
        let mut cut = bytes.clone();
        cut.truncate(bytes.len() - 1);
        let garbage = vec![0, 0, 0, 0, 2, 0xff, 0xff];
        let mut gz = grpc(Body::from(bytes.clone()));
        gz.headers_mut()
            .insert("grpc-encoding", HeaderValue::from_static("gzip"));
        for (req, sent) in [
            (gz, bytes.clone()),
            (grpc(Body::from(flagged.clone())), flagged),
            (grpc(Body::from(garbage.clone())), garbage),
            (grpc(Body::from(cut.clone())), cut),
        ] {
            match run(req).await {
                Ok(_) => panic!("taken"),
                Err(back) => assert_eq!(collect(back.into_body()).await.0, sent),
            }
        }
        let big = grpc(Body::from(bytes.clone()));
        match call(big, 3, |_: tonic::Request<PutRequest>| async {
            Ok(tonic::Response::new(PutResponse::default()))
        })
        .await
        {
            Ok(_) => panic!("taken"),
            Err(back) => assert_eq!(collect(back.into_body()).await.0, bytes),
        }
    }
}
