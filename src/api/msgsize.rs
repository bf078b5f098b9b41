//! The gRPC message limit as etcd's gRPC server enforces it: a request message
//! over `--max-request-bytes` plus gRPC's 512 KiB allowance is refused with
//! `ResourceExhausted` and Go's text, `grpc: received message larger than max
//! (N vs. M)`, as soon as its length prefix is read (clients decide by code:
//! `OutOfRange` would read as a compacted or future revision). Each gRPC
//! request's body is read through [`Limited`], in front of every service.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http_body::Frame;

/// Wraps each request body in a [`Limited`] of `max` bytes per message.
pub async fn layer(State(max): State<usize>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let body = Body::new(Limited::new(body, max));
    next.run(Request::from_parts(parts, body)).await
}

/// A gRPC request body whose messages may not exceed `max` bytes.
pub struct Limited {
    inner: Body,
    max: usize,
    /// The length prefix being read (flag byte and four length bytes).
    head: [u8; 5],
    head_len: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
}

impl Limited {
    pub fn new(inner: Body, max: usize) -> Self {
        Limited {
            inner,
            max,
            head: [0; 5],
            head_len: 0,
            remaining: 0,
        }
    }

    /// Follows the message boundaries through `data`.
    fn scan(&mut self, mut data: &[u8]) -> Result<(), tonic::Status> {
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
                if len > self.max {
                    return Err(tonic::Status::resource_exhausted(format!(
                        "grpc: received message larger than max ({len} vs. {})",
                        self.max
                    )));
                }
                self.remaining = len;
            }
        }
        Ok(())
    }
}

impl http_body::Body for Limited {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        Poll::Ready(match frame {
            Some(Ok(f)) => match f.data_ref().cloned() {
                Some(d) => match self.scan(&d) {
                    Ok(()) => Some(Ok(f)),
                    Err(st) => Some(Err(Box::new(st))),
                },
                None => Some(Ok(f)),
            },
            Some(Err(e)) => Some(Err(Box::new(e))),
            None => None,
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(b'x', len));
        m
    }

    #[test]
    fn messages_over_the_limit_are_refused_at_their_prefix() {
        let mut l = Limited::new(Body::empty(), 10);
        let mut two = message(10);
        two.extend(message(3));
        // Split anywhere, even inside a length prefix.
        for cut in [1, 3, 7, 15, two.len()] {
            let mut l2 = Limited::new(Body::empty(), 10);
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
