//! Listeners and connections for client, peer and metrics URLs: TCP for
//! `http://` and `https://`, Unix domain sockets for `unix://` and `unixs://`.
//!
//! As etcd does, a Unix URL names its socket file by the URL's `host:port`
//! part, relative to the member's working directory (`unix://localhost:2379`
//! listens on the file `localhost:2379`); `unixs://` is TLS over such a socket,
//! with the host part as the TLS server name. A peer or metrics listener
//! removes a stale socket file before binding; a client listener does not (an
//! existing file makes it fail with "address already in use", as etcd's
//! does). A listener removes its socket file when it is dropped.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// True for `unix://` and `unixs://` URLs.
pub fn is_unix(url: &str) -> bool {
    url.starts_with("unix://") || url.starts_with("unixs://")
}

/// True for URLs whose connections are TLS (`https://`, `unixs://`).
pub fn is_tls(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("unixs://")
}

/// host:port of a URL such as `http://10.0.0.1:2380` (for a Unix URL, the
/// name of its socket file).
pub fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.split('/').next().unwrap_or(rest)
}

/// The host part of a URL (the TLS server name a dialler checks).
pub fn host(url: &str) -> &str {
    let hp = host_port(url);
    hp.rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(hp)
        .trim_start_matches('[')
        .trim_end_matches(']')
}

/// Where a connection comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remote {
    Tcp(SocketAddr),
    /// A Unix socket's client, which has no address of its own.
    Unix,
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Remote::Tcp(a) => a.fmt(f),
            Remote::Unix => f.write_str("@"),
        }
    }
}

/// A bound listener, TCP or Unix.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        path: PathBuf,
    },
}

impl Listener {
    /// Binds the socket file `path`; with `remove_stale`, a file already there
    /// is removed first.
    pub fn bind_unix(path: impl Into<PathBuf>, remove_stale: bool) -> io::Result<Listener> {
        let path = path.into();
        if remove_stale {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let listener = UnixListener::bind(&path)?;
        Ok(Listener::Unix { listener, path })
    }

    /// The next connection, with TCP_NODELAY set on TCP ones.
    pub async fn accept(&self) -> io::Result<(Conn, Remote)> {
        match self {
            Listener::Tcp(l) => {
                let (s, a) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Conn::Tcp(s), Remote::Tcp(a)))
            }
            Listener::Unix { listener, .. } => {
                let (s, _) = listener.accept().await?;
                Ok((Conn::Unix(s), Remote::Unix))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Dials the host:port (TCP) or socket file (Unix) of `url`.
pub async fn connect(url: &str) -> io::Result<Conn> {
    if is_unix(url) {
        Ok(Conn::Unix(UnixStream::connect(host_port(url)).await?))
    } else {
        let s = TcpStream::connect(host_port(url)).await?;
        s.set_nodelay(true)?;
        Ok(Conn::Tcp(s))
    }
}

/// A connection, TCP or Unix.
#[derive(Debug)]
pub enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Tcp(s) => s.is_write_vectored(),
            Conn::Unix(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_urls_name_their_socket_file_by_host_and_port() {
        assert!(is_unix("unix://localhost:2379"));
        assert!(is_unix("unixs://localhost:2379"));
        assert!(!is_unix("http://localhost:2379"));
        assert!(is_tls("unixs://a:1") && is_tls("https://a:1"));
        assert!(!is_tls("unix://a:1") && !is_tls("http://a:1"));
        assert_eq!(host_port("unix://localhost:2379"), "localhost:2379");
        assert_eq!(host("unixs://localhost:2379"), "localhost");
        assert_eq!(host("https://[::1]:2379"), "::1");
    }

    #[tokio::test]
    async fn stale_socket_files_are_removed_only_when_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m:1");
        std::fs::write(&path, b"").expect("stale file");
        let e = Listener::bind_unix(&path, false).expect_err("file in the way");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        let l = Listener::bind_unix(&path, true).expect("bind over the stale file");
        let (c, s) = tokio::join!(UnixStream::connect(&path), l.accept());
        c.expect("connect");
        assert_eq!(s.expect("accept").1, Remote::Unix);
        drop(l);
        assert!(!path.exists(), "socket file removed with its listener");
    }
}
