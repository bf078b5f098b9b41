//! What one client connection may hold: a cap on open connections per
//! member, a deadline for a new connection's first byte (a client that
//! connects and sends nothing is closed), and the HTTP/2 settings from etcd's
//! flags (`--max-concurrent-streams`, `--grpc-keepalive-interval`,
//! `--grpc-keepalive-timeout`: a client that stops answering pings, such as
//! the far end of a half-open TCP connection, is closed).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioTimer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a new connection may stay silent before its first byte (after the
/// TLS handshake, which has the same limit).
pub const FIRST_BYTE_DEADLINE: Duration = Duration::from_secs(10);

/// File descriptors kept for everything but client connections (database,
/// peers, logs).
const RESERVED_FDS: u64 = 256;

/// Per-connection settings from the flags, and the member's connection cap.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_streams: u32,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    connections: Arc<Semaphore>,
}

impl Limits {
    pub fn new(cfg: &crate::config::Config) -> Limits {
        Limits {
            max_streams: cfg.max_concurrent_streams,
            keepalive_interval: cfg.grpc_keepalive_interval,
            keepalive_timeout: cfg.grpc_keepalive_timeout,
            connections: Arc::new(Semaphore::new(max_connections(raise_fd_limit()))),
        }
    }

    /// A place for one more connection, if the member has one.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.connections.clone().try_acquire_owned().ok()
    }

    /// An HTTP/1.1 and HTTP/2 connection builder with these settings.
    pub fn builder(
        &self,
        calls: super::calls::Calls,
    ) -> hyper_util::server::conn::auto::Builder<super::calls::Calls> {
        let mut b = hyper_util::server::conn::auto::Builder::new(calls);
        let mut h2 = b.http2();
        // As etcd's gRPC server: no `date` in HTTP/2 responses (the HTTP
        // router's answers over HTTP/2 add their own, as Go's HTTP server
        // does: `dispatch::Connection`).
        h2.max_concurrent_streams(self.max_streams)
            .auto_date_header(false);
        if !self.keepalive_interval.is_zero() {
            h2.timer(TokioTimer::new())
                .keep_alive_interval(self.keepalive_interval)
                .keep_alive_timeout(if self.keepalive_timeout.is_zero() {
                    // Go's gRPC: a zero timeout is its 20 s default.
                    Duration::from_secs(20)
                } else {
                    self.keepalive_timeout
                });
        }
        b
    }
}

/// Client connections a member accepts at once, for a file descriptor limit.
fn max_connections(fd_limit: u64) -> usize {
    fd_limit.saturating_sub(RESERVED_FDS).max(64) as usize
}

/// Raises the soft limit on open files to the hard one, as Go programs (etcd
/// among them) do at start; returns the limit in force.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass,
    // which lives on this stack frame for the duration of both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// A connection that fails with `TimedOut` when its first byte does not come
/// within the deadline; after that byte it is the stream itself.
pub struct FirstByte<S> {
    inner: S,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> FirstByte<S> {
    pub fn new(inner: S, within: Duration) -> Self {
        FirstByte {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstByte<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.deadline = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within the first-byte deadline",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstByte<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn connection_cap_follows_the_fd_limit() {
        assert_eq!(max_connections(20_000), 19_744);
        assert_eq!(max_connections(100), 64);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_connections_time_out_and_talkers_do_not() {
        let (client, server) = tokio::io::duplex(64);
        let mut s = FirstByte::new(server, Duration::from_secs(10));
        let mut buf = [0u8; 8];
        let e = s.read(&mut buf).await.expect_err("deadline");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(client);

        let (mut client, server) = tokio::io::duplex(64);
        let mut s = FirstByte::new(server, Duration::from_secs(10));
        client.write_all(b"x").await.expect("write");
        assert_eq!(s.read(&mut buf).await.expect("first byte"), 1);
        // Past the deadline, silence is the HTTP layer's business.
        let read = tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf)).await;
        assert!(read.is_err(), "no deadline after the first byte");
    }
}
