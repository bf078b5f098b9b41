//! gRPC messages over HTTP bodies, for the calls answered in front of tonic
//! (authorization, Range replies, unary calls, keep-alive streams): which
//! requests are plain gRPC, the first message of a request with its body
//! replayed, a stream's messages one after another as tonic reads them, a
//! message framed with its prefix, and the trailers of a status.
//!
//! Every read is bounded: a message longer than its limit is not buffered
//! (the reader stops at its prefix), so a request holds at most the limit,
//! its prefix and one HTTP/2 frame.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, header};
use bytes::{BufMut, BytesMut};
use http_body::{Body as _, Frame};
use tonic::{Code, Status};

use crate::error::{Error, Result};

/// The largest message etcd's gRPC server sends (grpc-go's limit, set to
/// `math.MaxInt32` by etcd).
pub const MAX_SEND: u64 = i32::MAX as u64;

/// The error for an answer of `len` bytes, over [`MAX_SEND`].
pub fn too_large(len: u64) -> Error {
    Error::ReplyTooLarge { len, max: MAX_SEND }
}

/// gRPC with protobuf messages, uncompressed.
pub fn is_plain_grpc(h: &HeaderMap) -> bool {
    let ct = h.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes);
    matches!(ct, Some(b"application/grpc" | b"application/grpc+proto"))
        && h.get("grpc-encoding")
            .is_none_or(|e| e.as_bytes() == b"identity")
}

/// A message with its gRPC prefix (uncompressed, its length); refused over
/// [`MAX_SEND`], as etcd refuses it.
pub fn framed(m: &impl prost::Message) -> Result<Bytes> {
    let len = m.encoded_len();
    let prefix = u32::try_from(len)
        .ok()
        .filter(|&n| u64::from(n) <= MAX_SEND)
        .ok_or_else(|| too_large(len as u64))?;
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(prefix);
    // The buffer has room for the message.
    let _ = m.encode(&mut buf);
    Ok(buf.freeze())
}

/// The trailers that end a call with `status`.
pub fn trailers(status: &Status) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(2);
    // Our statuses' texts are valid header values once percent-encoded.
    let _ = status.add_header(&mut h);
    h
}

/// Reads a request body to the end of its first gRPC message. Returns the
/// message (None when it is compressed, larger than `limit` or incomplete)
/// and a body that replays what was read, then the rest. A message that
/// comes in one frame is not copied.
pub async fn first_message(
    mut body: Body,
    limit: usize,
) -> std::result::Result<(Option<Bytes>, Body), axum::Error> {
    let mut read = BytesMut::new();
    let mut first: Option<Bytes> = None;
    loop {
        let have: &[u8] = first.as_deref().unwrap_or(&read);
        if let Some(head) = have.get(..5) {
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if head[0] != 0 || len > limit {
                break;
            }
            if have.len() >= 5 + len {
                let all = match first.take() {
                    Some(b) => b,
                    None => std::mem::take(&mut read).freeze(),
                };
                let msg = all.slice(5..5 + len);
                return Ok((Some(msg), Body::new(Replay::new(all, body))));
            }
        }
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        let Some(frame) = frame else { break };
        let Ok(data) = frame?.into_data() else {
            // Trailers: the body has ended.
            break;
        };
        match first.take() {
            None if read.is_empty() => first = Some(data),
            None => read.extend_from_slice(&data),
            Some(b) => {
                read.extend_from_slice(&b);
                read.extend_from_slice(&data);
            }
        }
    }
    let all = first.unwrap_or_else(|| read.freeze());
    Ok((None, Body::new(Replay::new(all, body))))
}

/// A body that yields `head`, then the frames of `rest`.
struct Replay {
    head: Option<Bytes>,
    rest: Body,
}

impl Replay {
    fn new(head: Bytes, rest: Body) -> Replay {
        Replay {
            head: (!head.is_empty()).then_some(head),
            rest,
        }
    }
}

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Self::Error>>> {
        if let Some(h) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(h))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.rest.is_end_stream()
    }
}

/// The request messages of a stream, read as tonic reads them.
pub struct Reader {
    body: Body,
    buf: BytesMut,
    limit: usize,
}

impl Reader {
    pub fn new(body: Body, limit: usize) -> Reader {
        Reader {
            body,
            buf: BytesMut::new(),
            limit,
        }
    }

    /// The next message; None at the end of the stream (the client closed
    /// its side, or cancelled); the status tonic would fail with otherwise.
    pub async fn next(&mut self) -> std::result::Result<Option<Bytes>, Status> {
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
    use crate::pb::etcdserverpb::LeaseKeepAliveRequest;
    use prost::Message;

    fn framed_vec(m: &impl Message) -> Vec<u8> {
        framed(m).expect("small message").to_vec()
    }

    fn body(chunks: Vec<Vec<u8>>) -> Body {
        let chunks: Vec<std::result::Result<Bytes, std::io::Error>> =
            chunks.into_iter().map(|c| Ok(Bytes::from(c))).collect();
        Body::from_stream(futures::stream::iter(chunks))
    }

    fn id(m: Bytes) -> i64 {
        LeaseKeepAliveRequest::decode(m).expect("decodes").id
    }

    #[test]
    fn a_message_is_framed_with_its_length() {
        let m = LeaseKeepAliveRequest { id: 300 };
        let f = framed(&m).expect("small message");
        assert_eq!(f[0], 0);
        assert_eq!(
            u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize,
            f.len() - 5
        );
        assert_eq!(id(f.slice(5..)), 300);
    }

    #[test]
    fn only_plain_grpc_is_plain() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        assert!(is_plain_grpc(&h));
        h.insert("grpc-encoding", HeaderValue::from_static("gzip"));
        assert!(!is_plain_grpc(&h));
        h.insert("grpc-encoding", HeaderValue::from_static("identity"));
        assert!(is_plain_grpc(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc-web"),
        );
        assert!(!is_plain_grpc(&h));
    }

    #[tokio::test]
    async fn the_first_message_is_read_and_the_body_replayed_whole() {
        let a = framed_vec(&LeaseKeepAliveRequest { id: 1 });
        let b = framed_vec(&LeaseKeepAliveRequest { id: 2 });
        let mut all = a.clone();
        all.extend_from_slice(&b);
        // In one frame, and split over frames at every point.
        for cut in 0..all.len() {
            let (x, y) = all.split_at(cut);
            let chunks = [x, y]
                .into_iter()
                .filter(|c| !c.is_empty())
                .map(<[u8]>::to_vec)
                .collect();
            let (m, replay) = first_message(body(chunks), 1 << 20).await.expect("reads");
            assert_eq!(m.map(id), Some(1), "cut at {cut}");
            let replayed = axum::body::to_bytes(replay, usize::MAX)
                .await
                .expect("replays");
            assert_eq!(&replayed[..], &all[..], "cut at {cut}");
        }
        // Over the limit: no message, the bytes still replayed.
        let (m, replay) = first_message(body(vec![a.clone()]), 1)
            .await
            .expect("reads");
        assert!(m.is_none());
        let replayed = axum::body::to_bytes(replay, usize::MAX)
            .await
            .expect("replays");
        assert_eq!(&replayed[..], &a[..]);
    }

    #[tokio::test]
    async fn messages_are_read_across_and_within_frames() {
        let a = framed_vec(&LeaseKeepAliveRequest { id: 1 });
        let b = framed_vec(&LeaseKeepAliveRequest { id: 2 });
        let c = framed_vec(&LeaseKeepAliveRequest { id: 3 });
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
        let ok = framed_vec(&LeaseKeepAliveRequest { id: 1 });
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
