//! Messages written by the Raft loop's own thread.
//!
//! Each peer's connection belongs to its sender task, which the Raft loop
//! hands messages to through a queue. Waking that task costs a hop between
//! threads (the loop writes to the runtime's waker, a worker wakes, polls the
//! task, and writes) on every message of a write's path: the proposal a
//! follower forwards, the leader's append, the followers' answers, the commit
//! that reaches a follower. So when a peer's connection is plain (TCP or a
//! Unix socket, not TLS), up, and its task has nothing queued, a batch of
//! small messages is written by the loop itself, without waiting, into a
//! duplicate of the connection's descriptor.
//!
//! The two writers never interleave: the loop writes only while the task has
//! no message it has not finished writing ([`Direct::queued`] is zero), and
//! counts every message it queues before the task can see it, all under one
//! lock. What the socket does not take at once is queued, as bytes, for the
//! task, ahead of anything queued later. A write that fails drops the batch
//! (Raft sends again) and the descriptor; the task finds the connection
//! broken at its next write and dials again, as it always has.

use std::io::Write;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;

use super::{Out, push_chunks, wire};
use crate::metrics::peer::PeerStats;
use crate::net::Conn;

/// Batches whose log entries hold more bytes than this go through the task:
/// encoding them is copying them, which the loop's thread leaves to a worker.
const MAX_DIRECT_ENTRY_BYTES: usize = 64 << 10;

/// A duplicate of a plain connection's descriptor, non-blocking like the
/// original (they share one open file description).
pub(super) enum Sock {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Sock {
    /// A duplicate of `c`'s descriptor, or None when it cannot be made.
    pub(super) fn of(c: &Conn) -> Option<Sock> {
        let sock = match c {
            Conn::Tcp(s) => Sock::Tcp(s.as_fd().try_clone_to_owned().ok()?.into()),
            Conn::Unix(s) => Sock::Unix(s.as_fd().try_clone_to_owned().ok()?.into()),
        };
        let nonblocking = match &sock {
            Sock::Tcp(s) => s.set_nonblocking(true),
            Sock::Unix(s) => s.set_nonblocking(true),
        };
        nonblocking.ok().map(|_| sock)
    }

    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write(buf),
            Sock::Unix(s) => s.write(buf),
        }
    }
}

/// What the loop's thread shares with one peer's sender task.
#[derive(Default)]
pub(super) struct Direct {
    /// The connection's duplicate while a plain connection is up.
    sock: Mutex<Option<Sock>>,
    /// Items queued for the task that it has not finished with (written or
    /// dropped).
    queued: AtomicUsize,
}

impl Direct {
    /// The task's connection is up: `sock` is its duplicate (None for TLS).
    pub(super) fn connected(&self, sock: Option<Sock>) {
        *self.sock.lock() = sock;
    }

    /// The task's connection is down, or being replaced.
    pub(super) fn disconnected(&self) {
        *self.sock.lock() = None;
    }

    /// The task is done with `n` items it took from the queue.
    pub(super) fn done(&self, n: usize) {
        // Never below zero, whatever the task miscounts: the loop would
        // otherwise write over the task.
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                Some(q.saturating_sub(n))
            });
    }

    /// Sends `msgs`, all for this peer, in order: written here when the
    /// connection allows it, else queued for the task. Returns the messages
    /// that found the queue full.
    pub(super) fn send(
        &self,
        msgs: Vec<Message>,
        tx: &mpsc::Sender<Out>,
        stats: &PeerStats,
    ) -> Vec<Message> {
        let mut sock = self.sock.lock();
        if self.queued.load(Ordering::Acquire) == 0
            && may_write_here(&msgs)
            && let Some(s) = sock.as_mut()
        {
            match write_here(s, &msgs, stats) {
                Written::All => return Vec::new(),
                Written::Part(rest) => {
                    let heartbeat = has_heartbeat(&msgs);
                    self.queued.fetch_add(1, Ordering::AcqRel);
                    let queued = tx.try_send(Out::Raw {
                        bytes: rest,
                        heartbeat,
                        count: msgs.len() as u64,
                    });
                    if queued.is_err() {
                        // The task is gone (an empty queue is never
                        // full): so is the connection.
                        self.queued.fetch_sub(1, Ordering::AcqRel);
                        stats.sent_failures.add(msgs.len() as u64);
                        *sock = None;
                    }
                    return Vec::new();
                }
                Written::Failed => {
                    stats.sent_failures.add(msgs.len() as u64);
                    *sock = None;
                    return Vec::new();
                }
            }
        }
        let mut full = Vec::new();
        for m in msgs {
            self.queued.fetch_add(1, Ordering::AcqRel);
            if let Err(e) = tx.try_send(Out::Msg(m)) {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                if let Out::Msg(m) = e.into_inner() {
                    full.push(m);
                }
            }
        }
        full
    }
}

fn has_heartbeat(msgs: &[Message]) -> bool {
    msgs.iter()
        .any(|m| m.get_msg_type() == MessageType::MsgHeartbeat)
}

/// Small messages only: no snapshot, few entry bytes.
fn may_write_here(msgs: &[Message]) -> bool {
    let mut bytes = 0usize;
    for m in msgs {
        if m.get_msg_type() == MessageType::MsgSnapshot {
            return false;
        }
        bytes += m.entries.iter().map(|e| e.data.len()).sum::<usize>();
        if bytes > MAX_DIRECT_ENTRY_BYTES {
            return false;
        }
    }
    true
}

enum Written {
    All,
    /// The socket took only part: the rest, framed, still to be written.
    Part(Vec<u8>),
    Failed,
}

fn write_here(s: &mut Sock, msgs: &[Message], stats: &PeerStats) -> Written {
    let mut buf = Vec::new();
    for m in msgs {
        let Ok(bytes) = wire::encode(m) else {
            continue;
        };
        push_chunks(&mut buf, &bytes);
    }
    let mut off = 0;
    while off < buf.len() {
        match s.write(&buf[off..]) {
            Ok(0) => return Written::Failed,
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(_) => return Written::Failed,
        }
    }
    stats.sent_bytes.add(off as u64);
    if off < buf.len() {
        return Written::Part(buf.split_off(off));
    }
    if has_heartbeat(msgs) {
        stats.heartbeat_sent();
    }
    Written::All
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(t: MessageType, entry_bytes: usize) -> Message {
        let mut m = Message::default();
        m.set_msg_type(t);
        m.to = 2;
        m.from = 1;
        if entry_bytes > 0 {
            m.entries.push(raft::eraftpb::Entry {
                data: vec![7u8; entry_bytes].into(),
                ..Default::default()
            });
        }
        m
    }

    #[test]
    fn snapshots_and_large_appends_go_through_the_task() {
        assert!(may_write_here(&[msg(MessageType::MsgAppend, 300)]));
        assert!(may_write_here(&[msg(MessageType::MsgHeartbeat, 0)]));
        assert!(!may_write_here(&[msg(MessageType::MsgSnapshot, 0)]));
        assert!(!may_write_here(&[msg(
            MessageType::MsgAppend,
            MAX_DIRECT_ENTRY_BYTES + 1
        )]));
        let many: Vec<_> = (0..3)
            .map(|_| msg(MessageType::MsgAppend, MAX_DIRECT_ENTRY_BYTES / 2))
            .collect();
        assert!(!may_write_here(&many));
    }

    /// A pair of connected Unix sockets: one as the loop's duplicate, the
    /// other read by the test.
    fn pair() -> (Sock, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("socket pair");
        a.set_nonblocking(true).expect("non-blocking");
        (Sock::Unix(a), b)
    }

    /// A `Direct` connected to one end of a socket pair (the other end
    /// returned to read), the peer's counters under `id`, and the sender
    /// task's queue of `cap` items.
    fn connected(
        id: u64,
        cap: usize,
    ) -> (
        Direct,
        std::os::unix::net::UnixStream,
        std::sync::Arc<crate::metrics::peer::PeerStats>,
        mpsc::Sender<Out>,
        mpsc::Receiver<Out>,
    ) {
        let (sock, peer) = pair();
        let d = Direct::default();
        d.connected(Some(sock));
        let (tx, rx) = mpsc::channel(cap);
        (d, peer, crate::metrics::peer::of(id), tx, rx)
    }

    fn read_all(r: &mut std::os::unix::net::UnixStream, n: usize) -> Vec<u8> {
        use std::io::Read;
        let mut out = vec![0u8; n];
        r.read_exact(&mut out).expect("read");
        out
    }

    fn framed(msgs: &[Message]) -> Vec<u8> {
        let mut buf = Vec::new();
        for m in msgs {
            push_chunks(&mut buf, &wire::encode(m).expect("encode"));
        }
        buf
    }

    #[test]
    fn an_idle_connection_is_written_at_once_and_a_busy_one_queues() {
        let (d, mut peer, stats, tx, mut rx) = connected(0xd1ec7001, 16);
        let batch = vec![
            msg(MessageType::MsgAppend, 300),
            msg(MessageType::MsgHeartbeat, 0),
        ];
        let want = framed(&batch);
        assert!(d.send(batch, &tx, &stats).is_empty());
        assert!(rx.try_recv().is_err(), "written here, nothing queued");
        assert_eq!(read_all(&mut peer, want.len()), want);
        assert_eq!(stats.sent_bytes.get(), want.len() as u64);

        // While the task has something, the loop queues behind it.
        d.queued.store(1, Ordering::Release);
        assert!(
            d.send(vec![msg(MessageType::MsgAppend, 10)], &tx, &stats)
                .is_empty()
        );
        assert!(matches!(rx.try_recv(), Ok(Out::Msg(_))));
        assert_eq!(d.queued.load(Ordering::Acquire), 2);
        d.done(2);
        assert_eq!(d.queued.load(Ordering::Acquire), 0);
        d.done(5);
        assert_eq!(d.queued.load(Ordering::Acquire), 0, "never below zero");

        // Down: everything is queued.
        d.disconnected();
        assert!(
            d.send(vec![msg(MessageType::MsgHeartbeat, 0)], &tx, &stats)
                .is_empty()
        );
        assert!(matches!(rx.try_recv(), Ok(Out::Msg(_))));
    }

    #[test]
    fn what_the_socket_does_not_take_is_queued_whole_and_first() {
        let (d, mut peer, stats, tx, mut rx) = connected(0xd1ec7002, 64);
        // More than a Unix socket's buffer takes without a reader.
        let batch: Vec<_> = (0..40)
            .map(|_| msg(MessageType::MsgAppend, 60 << 10))
            .collect();
        // Many small appends add up: send them one batch at a time under
        // the entry-bytes bound, as the loop would.
        let mut want = Vec::new();
        let mut queued_rest = false;
        for m in batch {
            want.extend_from_slice(&framed(std::slice::from_ref(&m)));
            assert!(d.send(vec![m], &tx, &stats).is_empty());
            if d.queued.load(Ordering::Acquire) > 0 {
                queued_rest = true;
            }
        }
        assert!(queued_rest, "the socket's buffer filled up");
        // The queue holds first the unwritten rest of one batch, then whole
        // messages; written in that order after what the socket took, the
        // stream is exactly the batches in order.
        let mut stream = Vec::new();
        let taken = stats.sent_bytes.get() as usize;
        stream.extend_from_slice(&read_all(&mut peer, taken));
        let mut first = true;
        while let Ok(o) = rx.try_recv() {
            match o {
                Out::Raw { bytes, .. } => {
                    assert!(first, "the rest of a batch comes first");
                    stream.extend_from_slice(&bytes);
                }
                Out::Msg(m) => stream.extend_from_slice(&framed(&[m])),
            }
            first = false;
        }
        assert_eq!(stream.len(), want.len());
        assert!(stream == want, "the bytes are the batches in order");
    }

    #[test]
    fn a_broken_connection_drops_the_batch_and_its_descriptor() {
        let (sock, peer) = pair();
        drop(peer);
        let d = Direct::default();
        d.connected(Some(sock));
        let stats = crate::metrics::peer::of(0xd1ec7003);
        let (tx, mut rx) = mpsc::channel(16);
        assert!(
            d.send(vec![msg(MessageType::MsgHeartbeat, 0)], &tx, &stats)
                .is_empty()
        );
        assert_eq!(stats.sent_failures.get(), 1);
        assert!(d.sock.lock().is_none());
        assert!(rx.try_recv().is_err());
        // The next batch waits for the task, which dials again.
        assert!(
            d.send(vec![msg(MessageType::MsgHeartbeat, 0)], &tx, &stats)
                .is_empty()
        );
        assert!(matches!(rx.try_recv(), Ok(Out::Msg(_))));
    }
}
