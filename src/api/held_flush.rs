//! Control frames held back for the answers of the calls read with them.
//!
//! Go's gRPC client sends a PING (its estimate of the connection's bandwidth)
//! and a WINDOW_UPDATE in front of a call's request whenever it has received
//! data, so nearly every call of a client that waits for each answer arrives
//! with a PING that h2 must acknowledge. h2 reads everything the socket has,
//! then flushes what it has to send, the PING's acknowledgement, before
//! hyper even takes the call: one `sendto` for 17 bytes, and a second for
//! the answer when the call ends a moment later in the same poll of the
//! connection's future ([`super::calls::Serving`]). Each `sendto` on a
//! loopback or LAN socket also wakes the client once more.
//!
//! [`HeldFlush`] sits on the connection's socket, above its write buffer.
//! While [`Hold`] is on (during a poll of the connection's future), a flush
//! whose buffered bytes are HTTP/2 control frames only (PING, WINDOW_UPDATE,
//! SETTINGS) is held: the flush reports pending, and the connection's
//! future makes one more pass, with the hold off, before its poll ends.
//! The calls kept in that future run in between, and an answer they give
//! leaves in the same write as the frames held, which then flushes at once.
//! No frame waits longer than the poll that wrote it; anything else written
//! (HEADERS, DATA, RST_STREAM, GOAWAY, HTTP/1.1) is flushed as before.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, BufWriter, ReadBuf};

/// Flushes pass.
const OFF: u8 = 0;
/// A flush of control frames only is held.
const ON: u8 = 1;
/// A flush was held: the connection owes one more pass with the hold off.
const HELD: u8 = 2;

/// One connection's hold, shared by its socket and its future.
#[derive(Clone, Default)]
pub struct Hold(Arc<AtomicU8>);

impl Hold {
    /// Holds flushes of control frames from now on.
    pub fn on(&self) {
        self.0.store(ON, Ordering::Relaxed);
    }

    /// Lets flushes pass; whether one was held since [`Hold::on`] (the
    /// connection must then be polled once more to flush it).
    pub fn off(&self) -> bool {
        self.0.swap(OFF, Ordering::Relaxed) == HELD
    }

    /// Whether a flush of `buffered` is held now. A flush that is not
    /// held writes the frames held before it too: no pass is owed then.
    pub(super) fn holds(&self, buffered: &[u8]) -> bool {
        let state = self.0.load(Ordering::Relaxed);
        if state == OFF {
            return false;
        }
        let held = control_frames_only(buffered);
        let next = if held { HELD } else { ON };
        if next != state {
            self.0.store(next, Ordering::Relaxed);
        }
        held
    }
}

const FRAME_HEADER: usize = 9;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;

/// Whether `b` is one or more whole HTTP/2 frames, each a SETTINGS, PING or
/// WINDOW_UPDATE frame of its proper length.
fn control_frames_only(b: &[u8]) -> bool {
    let mut rest = b;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let Some(head) = rest.get(..FRAME_HEADER) else {
            return false;
        };
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let proper = match head[3] {
            SETTINGS => len % 6 == 0,
            PING => len == 8,
            WINDOW_UPDATE => len == 4,
            _ => false,
        };
        if !proper {
            return false;
        }
        let Some(after) = rest.get(FRAME_HEADER + len..) else {
            return false;
        };
        rest = after;
    }
    true
}

/// A connection's buffered socket whose flushes of control frames only may
/// be held (see the module's text).
pub struct HeldFlush<S> {
    inner: BufWriter<S>,
    hold: Hold,
}

impl<S> HeldFlush<S> {
    pub fn new(inner: BufWriter<S>, hold: Hold) -> Self {
        HeldFlush { inner, hold }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeldFlush<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeldFlush<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
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

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.hold.holds(this.inner.buffer()) {
            // The connection's future polls again with the hold off before
            // its poll ends (`Serving`): no wake-up is owed.
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn only_whole_control_frames_of_their_proper_length_count() {
        let pong = frame(PING, 1, 0, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let window = frame(WINDOW_UPDATE, 0, 0, &34u32.to_be_bytes());
        let ack = frame(SETTINGS, 1, 0, &[]);
        let both = [pong.clone(), window.clone(), ack.clone()].concat();
        assert!(control_frames_only(&pong));
        assert!(control_frames_only(&both));
        let headers = frame(0x1, 4, 1, &[0x88]);
        let data = frame(0x0, 1, 1, &[0, 0, 0, 0, 0]);
        assert!(!control_frames_only(&[pong.clone(), headers].concat()));
        assert!(!control_frames_only(&[window.clone(), data].concat()));
        assert!(!control_frames_only(&pong[..pong.len() - 1]), "cut short");
        assert!(
            !control_frames_only(&frame(PING, 1, 0, &[0; 9])),
            "bad length"
        );
        assert!(!control_frames_only(&frame(0x7, 0, 0, &[0; 8])), "GOAWAY");
        assert!(!control_frames_only(b"HTTP/1.1 200 OK\r\n\r\n"));
        assert!(!control_frames_only(&[]));
    }

    fn write(s: &mut HeldFlush<Vec<u8>>, b: &[u8]) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let r = Pin::new(s).poll_write(&mut cx, b);
        assert!(matches!(r, Poll::Ready(Ok(n)) if n == b.len()));
    }

    fn flush(s: &mut HeldFlush<Vec<u8>>) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(s).poll_flush(&mut cx) {
            Poll::Ready(r) => {
                r.expect("flush");
                true
            }
            Poll::Pending => false,
        }
    }

    #[test]
    fn a_held_pong_leaves_with_the_answer_written_after_it() {
        let hold = Hold::default();
        let mut s = HeldFlush::new(BufWriter::new(Vec::new()), hold.clone());
        let pong = frame(PING, 1, 0, &[9; 8]);
        let answer = [frame(0x1, 4, 1, &[0x88]), frame(0x0, 1, 1, &[0; 5])].concat();

        hold.on();
        write(&mut s, &pong);
        assert!(!flush(&mut s), "held while the hold is on");
        assert!(s.inner.get_ref().is_empty(), "nothing written");
        write(&mut s, &answer);
        assert!(flush(&mut s), "an answer is flushed at once");
        assert_eq!(*s.inner.get_ref(), [pong, answer].concat());
        assert!(!hold.off(), "the frames held left with the answer");
    }

    #[test]
    fn with_the_hold_off_control_frames_flush_at_once() {
        let hold = Hold::default();
        let mut s = HeldFlush::new(BufWriter::new(Vec::new()), hold.clone());
        let window = frame(WINDOW_UPDATE, 0, 0, &7u32.to_be_bytes());
        hold.on();
        write(&mut s, &window);
        assert!(!flush(&mut s));
        assert!(hold.off());
        assert!(flush(&mut s), "the pass after the hold flushes");
        assert_eq!(*s.inner.get_ref(), window);
        assert!(!hold.off(), "nothing held since");
    }
}
