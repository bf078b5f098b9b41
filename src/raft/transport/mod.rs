//! The peer transport: Raft messages between members over TCP on the peer URLs.
//!
//! Each member keeps one outbound connection per peer and accepts inbound ones on
//! `--listen-peer-urls`. A connection starts with a handshake naming the cluster and
//! both members; a peer of another cluster, or a connection meant for another
//! member, is refused with a log line. After the handshake the stream carries
//! encoded `eraftpb.Message`s in chunks of at most 1 MiB. A snapshot's message
//! announces the length of its body, which follows in chunks of its own, read
//! from the leader's file and written to one by the follower a chunk at a time
//! (see [`super::snapshot_file`]); the messages queued meanwhile go between
//! them, so the follower keeps hearing the leader. A lost
//! connection is re-dialled with backoff; messages sent meanwhile are dropped, which
//! Raft tolerates, and the peer is reported unreachable.
//!
//! Small messages for a plain connection whose sender task is idle are
//! written by the Raft loop's thread itself (`direct.rs`), saving the hop
//! to a runtime worker on every step of a write's path.
//!
//! The same port answers a cluster-info request, which a member joining an
//! existing cluster (`--initial-cluster-state existing`) uses to learn the cluster
//! ID and members, and a HashKV request, which a restarting member asks its
//! peers with `--experimental-initial-corrupt-check` (etcd's `/members/hashkv`):
//! both sides of these one-off requests are in `requests.rs`.
//!
//! What a peer may cost is bounded: at most [`MAX_HANDSHAKING`] connections at a
//! time may be in their (TLS and member) handshake, each for at most
//! [`HANDSHAKE_TIMEOUT`]; after it, a member keeps one inbound connection per
//! known peer (a newer one replaces the older, as etcd's streams do); a message
//! may not exceed [`Limits`]. A connection that sends anything else than
//! well-formed chunks of well-formed messages from the member it named is closed,
//! with a log line naming its address. Received bytes are decoded by
//! [`super::wire`], never by the `protobuf` 2 crate.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prost::bytes::Bytes;
use raft::eraftpb::{Message, MessageType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::wire::{self, WireError};
use crate::net::{Conn, Listener, Remote};
use crate::pb::etcdserverpb::Member;

mod direct;
mod requests;

use direct::{Direct, Sock};

pub use requests::{PeerHashError, fetch_cluster, fetch_hash_kv};

const MAGIC: &[u8; 8] = b"ETCDRSP1";
const KIND_RAFT: u8 = b'R';
const KIND_INFO: u8 = b'I';
const KIND_HASH: u8 = b'H';
const OK: u8 = 0;
const WRONG_CLUSTER: u8 = 1;
const WRONG_MEMBER: u8 = 2;
const UNKNOWN_SENDER: u8 = 3;
// Answers to a HashKV request.
const FUTURE_REV: u8 = 4;
const COMPACTED: u8 = 5;
const FAILED: u8 = 6;
/// Largest HashKV answer read from a peer (the message is a few dozen bytes).
const MAX_HASH_ANSWER: usize = 4096;
const QUEUE: usize = 4096;
/// Messages (snapshots above all) travel in chunks of at most this many bytes.
const CHUNK: usize = 1 << 20;
/// The most log entry bytes raft-rs puts in one append (`max_size_per_msg`); it
/// exceeds it by at most one entry.
pub const MAX_SIZE_PER_MSG: u64 = 1 << 20;
/// Connections accepted at once that have not finished their handshake (or are
/// being answered a cluster-info request); more are closed at once.
pub const MAX_HANDSHAKING: usize = 64;
/// Time a connection has for the TLS handshake and the member handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest cluster-info answer a joining member reads.
const MAX_INFO: usize = 16 << 20;

/// The largest messages a peer may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Any message but a snapshot.
    pub message: usize,
    /// A snapshot message (the whole state machine).
    pub snapshot: usize,
}

impl Limits {
    /// Bounds for a member with `--max-request-bytes` `max_request` and the
    /// backend quota `quota` (`None`: no quota).
    ///
    /// Every entry is a request of at most `max_request` bytes plus a few bytes
    /// of framing, and an append holds entries up to [`MAX_SIZE_PER_MSG`] plus at
    /// most one more, so `MAX_SIZE_PER_MSG + 4 × max_request` lets every
    /// legitimate message through with room to spare (7 MiB by default). A
    /// snapshot holds the keyspace, which the quota bounds (the database file
    /// holds the same records and more): twice the quota, or 16 GiB without one.
    pub fn new(max_request: usize, quota: Option<u64>) -> Limits {
        let message = (MAX_SIZE_PER_MSG as usize).saturating_add(max_request.saturating_mul(4));
        let snapshot = quota
            .unwrap_or(8 << 30)
            .saturating_mul(2)
            .try_into()
            .unwrap_or(usize::MAX);
        Limits {
            message,
            snapshot: snapshot.max(message),
        }
    }
}

/// Why an inbound peer connection ended.
#[derive(Debug, thiserror::Error)]
enum PeerError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("chunk of {0} bytes exceeds the limit of {CHUNK} bytes")]
    Chunk(usize),
    #[error("invalid chunk flag {0}")]
    Flag(u8),
    #[error("message exceeds the limit of {0} bytes")]
    TooLarge(usize),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("message from {from:x} to {to:x} on the connection of member {peer:x}")]
    Misrouted { from: u64, to: u64, peer: u64 },
    #[error("snapshot: {0}")]
    Snapshot(&'static str),
}

/// Chunk flags: a message's chunk, more to come or its last; a snapshot
/// body's chunk, more to come or its last.
const MORE: u8 = 0;
const LAST: u8 = 1;
const BODY_MORE: u8 = 2;
const BODY_LAST: u8 = 3;

/// The most messages that arrived together delivered as one batch.
const MAX_BATCH: usize = 64;

/// Whether `buffered` begins with a whole message in one chunk that is not
/// a snapshot: reading it takes no wait, so it joins the batch being
/// received.
pub(crate) fn whole_message_at(buffered: &[u8]) -> bool {
    let Some((head, rest)) = buffered.split_first_chunk::<5>() else {
        return false;
    };
    let n = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    head[4] == LAST
        && n <= rest.len()
        && wire::leading_msg_type(&rest[..n]) != Some(MessageType::MsgSnapshot as u64)
}

/// Appends `msg` as chunks: `[len u32 BE][last u8][bytes]`.
fn push_chunks(buf: &mut Vec<u8>, msg: &[u8]) {
    let mut chunks = msg.chunks(CHUNK).peekable();
    if chunks.peek().is_none() {
        buf.extend_from_slice(&0u32.to_be_bytes());
        buf.push(LAST);
        return;
    }
    while let Some(c) = chunks.next() {
        buf.extend_from_slice(&(c.len() as u32).to_be_bytes());
        buf.push(if chunks.peek().is_none() { LAST } else { MORE });
        buf.extend_from_slice(c);
    }
}

/// What the transport reports back to the Raft loop.
pub enum Event {
    Message(Message),
    /// Messages from one peer that arrived together, in order: the Raft
    /// loop steps them in one pass, so what they make it send leaves in one
    /// write to each peer.
    Messages(Vec<Message>),
    Unreachable(u64),
    SnapshotDone(u64, bool),
}

pub type Deliver = Arc<dyn Fn(Event) + Send + Sync>;

/// A peer connection, plain or TLS.
pub trait PeerIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> PeerIo for T {}
type Stream = Box<dyn PeerIo>;

/// TLS for peer connections (`--peer-cert-file` and friends, or peer auto TLS).
#[derive(Clone)]
pub struct PeerTls {
    pub server: Arc<crate::tls::ServerTls>,
    pub client: Arc<rustls::ClientConfig>,
}

struct Peer {
    urls: Vec<String>,
    tx: mpsc::Sender<Out>,
    /// What the Raft loop's thread shares with the peer's sender task.
    direct: Arc<Direct>,
}

/// What the sender task is given to write, in order.
enum Out {
    Msg(Message),
    /// The framed rest of `count` messages the Raft loop's thread began to
    /// write itself (see `direct.rs`).
    Raw {
        bytes: Vec<u8>,
        heartbeat: bool,
        count: u64,
    },
}

impl Out {
    fn is_heartbeat(&self) -> bool {
        match self {
            Out::Msg(m) => m.get_msg_type() == MessageType::MsgHeartbeat,
            Out::Raw { heartbeat, .. } => *heartbeat,
        }
    }

    fn is_snapshot(&self) -> bool {
        matches!(self, Out::Msg(m) if m.get_msg_type() == MessageType::MsgSnapshot)
    }

    fn messages(&self) -> u64 {
        match self {
            Out::Msg(_) => 1,
            Out::Raw { count, .. } => *count,
        }
    }

    /// Appends what goes on the wire.
    fn frame(&self, buf: &mut Vec<u8>) {
        match self {
            Out::Msg(m) => {
                if let Ok(bytes) = wire::encode(m) {
                    push_chunks(buf, &bytes);
                }
            }
            Out::Raw { bytes, .. } => buf.extend_from_slice(bytes),
        }
    }

    /// Drops it unsent: a snapshot's file goes too.
    fn discard(self) {
        if let Out::Msg(m) = self {
            discard_file(&m);
        }
    }
}

pub struct Transport {
    pub cluster_id: u64,
    pub local_id: u64,
    deliver: Deliver,
    peers: Mutex<HashMap<u64, Peer>>,
    rt: tokio::runtime::Handle,
    /// Members for cluster-info requests.
    members: Mutex<Vec<Member>>,
    /// Members learned when joining, reachable before the log replay names them.
    seed: Mutex<Vec<Member>>,
    tls: Option<PeerTls>,
    /// The store HashKV requests are answered from.
    store: Mutex<Option<Arc<crate::mvcc::Store>>>,
    limits: Limits,
    /// Where snapshots received in chunks are written (beside the database);
    /// None refuses them.
    snap_dir: Mutex<Option<std::path::PathBuf>>,
    /// Permits for connections in their handshake.
    handshaking: Arc<Semaphore>,
    /// The inbound connection of each peer: its number, and what closes it.
    inbound: Mutex<HashMap<u64, (u64, oneshot::Sender<()>)>>,
    next_conn: AtomicU64,
    /// When a refused connection was last logged (one line per burst).
    refused_logged: Mutex<Option<Instant>>,
    /// Since when each peer has been reachable without interruption (etcd's
    /// transport `ActiveSince`); absent while it is not.
    active: Mutex<HashMap<u64, Instant>>,
}

async fn read_u64<S: AsyncRead + Unpin + ?Sized>(s: &mut S) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b).await?;
    Ok(u64::from_be_bytes(b))
}

/// host:port of a URL such as `http://10.0.0.1:2380` (for a `unix://` URL,
/// the name of its socket file).
pub fn host_port(url: &str) -> String {
    crate::net::host_port(url).to_string()
}

/// A TLS connection to the peer URL `u` over `s`, verified for the URL's host.
async fn tls_connect(tls: &PeerTls, u: &str, s: Conn) -> std::io::Result<Stream> {
    let name = rustls::pki_types::ServerName::try_from(crate::net::host(u).to_string())
        .map_err(std::io::Error::other)?;
    let c = tokio_rustls::TlsConnector::from(tls.client.clone());
    Ok(Box::new(c.connect(name, s).await?))
}

impl Transport {
    pub fn new(
        cluster_id: u64,
        local_id: u64,
        deliver: Deliver,
        rt: tokio::runtime::Handle,
        tls: Option<PeerTls>,
        limits: Limits,
    ) -> Arc<Self> {
        Arc::new(Transport {
            cluster_id,
            local_id,
            deliver,
            peers: Mutex::new(HashMap::new()),
            rt,
            members: Mutex::new(Vec::new()),
            seed: Mutex::new(Vec::new()),
            tls,
            store: Mutex::new(None),
            limits,
            snap_dir: Mutex::new(None),
            handshaking: Arc::new(Semaphore::new(MAX_HANDSHAKING)),
            inbound: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            refused_logged: Mutex::new(None),
            active: Mutex::new(HashMap::new()),
        })
    }

    /// The directory snapshots received from the leader are written to.
    pub fn set_snapshot_dir(&self, dir: std::path::PathBuf) {
        *self.snap_dir.lock() = Some(dir);
    }

    /// The store that answers peers' HashKV requests.
    pub fn set_store(&self, store: Arc<crate::mvcc::Store>) {
        *self.store.lock() = Some(store);
    }

    /// Members fetched from the cluster when joining it: they stay reachable while
    /// this member replays a log that does not name them yet.
    pub fn seed(self: &Arc<Self>, members: Vec<Member>) {
        *self.seed.lock() = members.clone();
        self.set_members(&members);
    }

    /// Makes the peer set match `members` (all but this member), plus the seed.
    pub fn set_members(self: &Arc<Self>, members: &[Member]) {
        *self.members.lock() = members.to_vec();
        let mut members = members.to_vec();
        for m in self.seed.lock().iter() {
            if !members.iter().any(|x| x.id == m.id) {
                members.push(m.clone());
            }
        }
        let members = &members;
        let mut peers = self.peers.lock();
        peers.retain(|id, _| members.iter().any(|m| m.id == *id));
        for m in members {
            if m.id == self.local_id {
                continue;
            }
            if let Some(p) = peers.get_mut(&m.id) {
                if p.urls != m.peer_ur_ls {
                    // Re-dial at the new address.
                    peers.remove(&m.id);
                } else {
                    continue;
                }
            }
            let (tx, rx) = mpsc::channel(QUEUE);
            let direct = Arc::new(Direct::default());
            peers.insert(
                m.id,
                Peer {
                    urls: m.peer_ur_ls.clone(),
                    tx,
                    direct: direct.clone(),
                },
            );
            let this = self.clone();
            let urls = m.peer_ur_ls.clone();
            let id = m.id;
            self.rt
                .spawn(async move { this.sender(id, urls, rx, direct).await });
        }
    }

    /// Queues messages for their peers; never blocks.
    pub fn send(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        // Each peer's messages, in order.
        let mut groups: Vec<(u64, Vec<Message>)> = Vec::new();
        for m in msgs {
            match groups.iter_mut().find(|(to, _)| *to == m.to) {
                Some((_, g)) => g.push(m),
                None => groups.push((m.to, vec![m])),
            }
        }
        let peers = self.peers.lock();
        for (to, group) in groups {
            let Some(p) = peers.get(&to) else {
                (self.deliver)(Event::Unreachable(to));
                continue;
            };
            let stats = crate::metrics::peer::of(to);
            let full = p.direct.send(group, &p.tx, &stats);
            if full.is_empty() {
                continue;
            }
            // Dropped: the peer's queue is full.
            for m in full {
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    discard_file(&m);
                    (self.deliver)(Event::SnapshotDone(to, false));
                }
                stats.sent_failures.inc();
                if m.get_msg_type() == MessageType::MsgHeartbeat {
                    crate::metrics::HEARTBEAT_SEND_FAILURES.inc();
                }
            }
            (self.deliver)(Event::Unreachable(to));
        }
    }

    /// A connection to `url`, and for a plain one, a duplicate of its
    /// descriptor for the Raft loop's own writes.
    async fn connect(&self, url: &str) -> std::io::Result<(Stream, Option<Sock>)> {
        let s = crate::net::connect(url).await?;
        match (&self.tls, crate::net::is_tls(url)) {
            (Some(tls), true) => Ok((tls_connect(tls, url, s).await?, None)),
            (None, true) => Err(std::io::Error::other(
                "peer URL is https but no peer TLS is configured",
            )),
            _ => {
                let sock = Sock::of(&s);
                Ok((Box::new(s), sock))
            }
        }
    }

    async fn dial(&self, to: u64, urls: &[String]) -> std::io::Result<(Stream, Option<Sock>)> {
        let mut last = std::io::Error::other("no peer URL");
        for u in urls {
            match self.connect(u).await {
                Ok((mut s, sock)) => {
                    let mut hello = Vec::with_capacity(33);
                    hello.extend_from_slice(MAGIC);
                    hello.push(KIND_RAFT);
                    hello.extend_from_slice(&self.cluster_id.to_be_bytes());
                    hello.extend_from_slice(&self.local_id.to_be_bytes());
                    hello.extend_from_slice(&to.to_be_bytes());
                    s.write_all(&hello).await?;
                    let mut ans = [0u8; 1];
                    s.read_exact(&mut ans).await?;
                    match ans[0] {
                        OK => return Ok((s, sock)),
                        WRONG_CLUSTER => {
                            last = std::io::Error::other(format!(
                                "peer {u} belongs to another cluster"
                            ))
                        }
                        UNKNOWN_SENDER => {
                            last = std::io::Error::other(format!(
                                "peer {u} does not know member {:x} (yet)",
                                self.local_id
                            ))
                        }
                        _ => last = std::io::Error::other(format!("peer {u} is not member {to:x}")),
                    }
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Since when the peer `id` has been reachable, if it is now.
    pub fn active_since(&self, id: u64) -> Option<Instant> {
        self.active.lock().get(&id).copied()
    }

    async fn sender(
        self: Arc<Self>,
        to: u64,
        urls: Vec<String>,
        mut rx: mpsc::Receiver<Out>,
        direct: Arc<Direct>,
    ) {
        // The Raft loop's thread writes no more into a connection this task
        // has let go of, whatever way it ends.
        struct Disconnect(Arc<Direct>);
        impl Drop for Disconnect {
            fn drop(&mut self) {
                self.0.disconnected();
            }
        }
        let _disconnect = Disconnect(direct.clone());
        let mut backoff = Duration::from_millis(50);
        let mut warned = false;
        let stats = crate::metrics::peer::of(to);
        'outer: loop {
            direct.disconnected();
            let mut stream = match self.dial(to, &urls).await {
                Ok((s, sock)) => {
                    direct.connected(sock);
                    stats.connected();
                    self.active.lock().entry(to).or_insert_with(Instant::now);
                    backoff = Duration::from_millis(50);
                    if warned {
                        crate::info!("peer became active", peer_id = format!("{to:x}"));
                    }
                    warned = false;
                    s
                }
                Err(e) => {
                    self.active.lock().remove(&to);
                    if !warned {
                        crate::warn!(
                            "cannot reach peer",
                            peer_id = format!("{to:x}"),
                            error = crate::tls::handshake_error_text(&e, false)
                        );
                        warned = true;
                    }
                    stats.disconnected();
                    // Drop what queued up meanwhile; Raft resends.
                    let mut snap_failed = false;
                    while let Ok(o) = rx.try_recv() {
                        stats.sent_failures.add(o.messages());
                        if o.is_snapshot() {
                            stats.snapshot_send_dropped();
                            snap_failed = true;
                        }
                        o.discard();
                        direct.done(1);
                    }
                    if snap_failed {
                        (self.deliver)(Event::SnapshotDone(to, false));
                    }
                    (self.deliver)(Event::Unreachable(to));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    if !self.peers.lock().contains_key(&to) {
                        return;
                    }
                    continue;
                }
            };
            let mut buf = Vec::new();
            loop {
                let Some(m) = rx.recv().await else { return };
                buf.clear();
                let mut batch = vec![m];
                while batch.len() < 256 {
                    match rx.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
                let taken = batch.len();
                // Snapshots in files go after the rest, streamed.
                let (files, rest): (Vec<_>, Vec<_>) = batch
                    .into_iter()
                    .partition(|o| matches!(o, Out::Msg(m) if is_file_snapshot(m)));
                batch = rest;
                let is_snap = batch.iter().any(Out::is_snapshot);
                let snap_start = is_snap.then(|| stats.snapshot_send_started());
                let encode = |buf: &mut Vec<u8>| {
                    for o in &batch {
                        o.frame(buf);
                    }
                };
                off_worker(is_snap, || encode(&mut buf));
                let written = stream.write_all(&buf).await;
                if written.is_err() {
                    direct.disconnected();
                }
                // The snapshots in files still count as queued: the loop's
                // thread writes nothing until they are streamed.
                direct.done(taken - files.len());
                if let Err(e) = written {
                    direct.done(files.len());
                    if !files.is_empty() {
                        stats.sent_failures.add(files.len() as u64);
                        files.into_iter().for_each(Out::discard);
                        (self.deliver)(Event::SnapshotDone(to, false));
                    }
                    stats
                        .sent_failures
                        .add(batch.iter().map(Out::messages).sum());
                    stats.disconnected();
                    crate::warn!(
                        "lost connection to peer",
                        peer_id = format!("{to:x}"),
                        error = e
                    );
                    if let Some(start) = snap_start {
                        stats.snapshot_send_done(start, false);
                        (self.deliver)(Event::SnapshotDone(to, false));
                    }
                    (self.deliver)(Event::Unreachable(to));
                    continue 'outer;
                }
                stats.sent_bytes.add(buf.len() as u64);
                if batch.iter().any(Out::is_heartbeat) {
                    stats.heartbeat_sent();
                }
                if let Some(start) = snap_start {
                    stats.snapshot_send_done(start, true);
                    (self.deliver)(Event::SnapshotDone(to, true));
                }
                let mut files = files.into_iter().filter_map(|o| match o {
                    Out::Msg(m) => Some(m),
                    Out::Raw { .. } => None,
                });
                while let Some(m) = files.next() {
                    let start = stats.snapshot_send_started();
                    let streamed = self
                        .stream_snapshot(&mut stream, to, m, &mut rx, &stats, &direct)
                        .await;
                    if streamed.is_err() {
                        direct.disconnected();
                    }
                    direct.done(1);
                    if let Err(e) = streamed {
                        stats.snapshot_send_done(start, false);
                        files.for_each(|m| {
                            direct.done(1);
                            discard_file(&m);
                        });
                        stats.sent_failures.inc();
                        stats.disconnected();
                        crate::warn!(
                            "lost connection to peer while sending a snapshot",
                            peer_id = format!("{to:x}"),
                            error = e
                        );
                        (self.deliver)(Event::SnapshotDone(to, false));
                        (self.deliver)(Event::Unreachable(to));
                        continue 'outer;
                    }
                    stats.snapshot_send_done(start, true);
                    (self.deliver)(Event::SnapshotDone(to, true));
                }
            }
        }
    }

    /// Sends the snapshot in the file `m` names: the message, its data
    /// replaced by the body's length, then the body in chunks read from the
    /// file one at a time, with the messages queued meanwhile (heartbeats
    /// among them) sent between them. The file is removed after.
    async fn stream_snapshot(
        &self,
        s: &mut Stream,
        to: u64,
        mut m: Message,
        rx: &mut mpsc::Receiver<Out>,
        stats: &crate::metrics::peer::PeerStats,
        direct: &Direct,
    ) -> std::io::Result<()> {
        let Some(path) = super::snapshot_file::local_path(&m.get_snapshot().data) else {
            return Err(std::io::Error::other("snapshot names no file"));
        };
        let sent = async {
            let mut f = tokio::fs::File::open(&path).await?;
            let len = f.metadata().await?.len();
            m.mut_snapshot().data = super::snapshot_file::streamed(len).into();
            let mut buf = Vec::with_capacity(CHUNK + 5);
            push_chunks(&mut buf, &wire::encode(&m).map_err(std::io::Error::other)?);
            s.write_all(&buf).await?;
            stats.sent_bytes.add(buf.len() as u64);
            let mut left = len;
            loop {
                let n = left.min(CHUNK as u64) as usize;
                left -= n as u64;
                buf.clear();
                buf.extend_from_slice(&(n as u32).to_be_bytes());
                buf.push(if left == 0 { BODY_LAST } else { BODY_MORE });
                buf.resize(5 + n, 0);
                f.read_exact(&mut buf[5..]).await?;
                s.write_all(&buf).await?;
                stats.sent_bytes.add(buf.len() as u64);
                if left == 0 {
                    return Ok(());
                }
                buf.clear();
                let mut heartbeat = false;
                let mut taken = 0;
                while let Ok(o) = rx.try_recv() {
                    taken += 1;
                    if matches!(&o, Out::Msg(m) if is_file_snapshot(m)) {
                        // One snapshot at a time: Raft asks again.
                        o.discard();
                        (self.deliver)(Event::SnapshotDone(to, false));
                        continue;
                    }
                    heartbeat |= o.is_heartbeat();
                    o.frame(&mut buf);
                }
                let written = if buf.is_empty() {
                    Ok(())
                } else {
                    s.write_all(&buf).await
                };
                if written.is_err() {
                    direct.disconnected();
                }
                direct.done(taken);
                written?;
                if !buf.is_empty() {
                    stats.sent_bytes.add(buf.len() as u64);
                }
                if heartbeat {
                    stats.heartbeat_sent();
                }
            }
        }
        .await;
        let _ = std::fs::remove_file(&path);
        sent
    }

    /// Accepts peer connections until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: Listener) {
        loop {
            let Ok((s, addr)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Ok(permit) = self.handshaking.clone().try_acquire_owned() else {
                self.log_refused(addr);
                drop(s);
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let shaken = tokio::time::timeout(HANDSHAKE_TIMEOUT, this.handshake(s, addr)).await;
                drop(permit);
                match shaken {
                    Ok(Ok(Some((s, from)))) => this.run_inbound(s, from, addr).await,
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => crate::debug!("peer connection closed", remote = addr, error = e),
                    Err(_) => crate::debug!("peer handshake timed out", remote = addr),
                }
            });
        }
    }

    fn log_refused(&self, addr: Remote) {
        let mut last = self.refused_logged.lock();
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            crate::warn!(
                "too many peer connections in their handshake; refusing more",
                remote = addr,
                limit = MAX_HANDSHAKING
            );
        }
    }

    /// The TLS handshake (with the peer's certificate verified) and the member
    /// handshake; nothing is answered before both passed. Returns the stream
    /// and the peer's member ID when Raft messages follow, `None` when the
    /// connection was answered (cluster info) or refused.
    async fn handshake(&self, s: Conn, addr: Remote) -> std::io::Result<Option<(Stream, u64)>> {
        let mut s: Stream = match &self.tls {
            Some(tls) => match crate::tls::accept(&tls.server, s).await {
                Ok(s) => {
                    let leaf = s.get_ref().1.peer_certificates().and_then(|c| c.first());
                    if let Err(why) = tls.server.admits(leaf) {
                        crate::warn!("rejected peer connection", remote = addr, error = why);
                        return Ok(None);
                    }
                    Box::new(s)
                }
                Err((server_name, e)) => {
                    crate::tls::log_handshake_failure(&addr, &server_name, &e);
                    return Ok(None);
                }
            },
            None => Box::new(s),
        };
        let mut magic = [0u8; 9];
        s.read_exact(&mut magic).await?;
        if &magic[..8] != MAGIC {
            crate::warn!(
                "rejected peer connection",
                remote = addr,
                error = "not an etcd-rs peer"
            );
            return Ok(None);
        }
        if magic[8] == KIND_HASH {
            self.answer_hash(&mut s).await?;
            return Ok(None);
        }
        if magic[8] == KIND_INFO {
            self.answer_info(&mut s).await?;
            return Ok(None);
        }
        if magic[8] != KIND_RAFT {
            crate::warn!(
                "rejected peer connection",
                remote = addr,
                error = "unknown request kind"
            );
            return Ok(None);
        }
        let cluster = read_u64(&mut s).await?;
        let from = read_u64(&mut s).await?;
        let to = read_u64(&mut s).await?;
        if cluster != self.cluster_id {
            crate::warn!(
                "rejected connection from a peer of another cluster",
                remote = addr,
                remote_peer_id = format!("{from:x}"),
                remote_cluster_id = format!("{cluster:x}"),
                local_cluster_id = format!("{:x}", self.cluster_id)
            );
            s.write_all(&[WRONG_CLUSTER]).await?;
            return Ok(None);
        }
        if to != self.local_id {
            crate::warn!(
                "rejected connection meant for another member",
                remote = addr,
                remote_peer_id = format!("{from:x}"),
                intended_member_id = format!("{to:x}"),
                local_member_id = format!("{:x}", self.local_id)
            );
            s.write_all(&[WRONG_MEMBER]).await?;
            return Ok(None);
        }
        if !self.peers.lock().contains_key(&from) {
            // As etcd: a sender this member does not know (yet) is turned away;
            // a member just added retries until its addition is applied here.
            crate::warn!(
                "rejected connection from an unknown member",
                remote = addr,
                remote_peer_id = format!("{from:x}")
            );
            s.write_all(&[UNKNOWN_SENDER]).await?;
            return Ok(None);
        }
        s.write_all(&[OK]).await?;
        Ok(Some((s, from)))
    }

    /// Receives `from`'s messages until the connection ends or a newer one of
    /// the same peer replaces it.
    async fn run_inbound(&self, s: Stream, from: u64, addr: Remote) {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (stop, stopped) = oneshot::channel();
        if let Some((_, old)) = self.inbound.lock().insert(from, (conn, stop)) {
            let _ = old.send(());
        }
        let r = tokio::select! {
            r = self.receive(s, from) => Some(r),
            _ = stopped => None,
        };
        if let Some(Err(e)) = &r {
            // A peer closing its stream is not a failure; a broken one is.
            let clean =
                matches!(e, PeerError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof);
            if !clean {
                crate::metrics::peer::of(from).received_failures.inc();
            }
        }
        {
            let mut inbound = self.inbound.lock();
            if inbound.get(&from).is_some_and(|(c, _)| *c == conn) {
                inbound.remove(&from);
            }
        }
        match r {
            None => crate::debug!(
                "peer connection replaced by a newer one",
                remote = addr,
                remote_peer_id = format!("{from:x}")
            ),
            Some(Err(PeerError::Io(e))) => crate::debug!(
                "peer connection closed",
                remote = addr,
                remote_peer_id = format!("{from:x}"),
                error = e
            ),
            Some(Err(e)) => crate::warn!(
                "closed peer connection that sent invalid data",
                remote = addr,
                remote_peer_id = format!("{from:x}"),
                error = e
            ),
            Some(Ok(())) => {}
        }
    }

    /// Reads messages: each arrives as one or more chunks
    /// (`[len u32 BE][last u8][bytes]`), the last one flagged.
    async fn receive(&self, s: Stream, from: u64) -> Result<(), PeerError> {
        let stats = crate::metrics::peer::of(from);
        // When a snapshot that is still arriving started to.
        let mut snap: Option<Instant> = None;
        let res = self.receive_messages(s, from, &stats, &mut snap).await;
        if let Some(start) = snap {
            stats.snapshot_receive_done(start, false);
        }
        res
    }

    async fn receive_messages(
        &self,
        s: Stream,
        from: u64,
        stats: &crate::metrics::peer::PeerStats,
        snap: &mut Option<Instant>,
    ) -> Result<(), PeerError> {
        let mut s = tokio::io::BufReader::with_capacity(256 * 1024, s);
        let mut buf: Vec<u8> = Vec::new();
        let mut limit = self.limits.message;
        // A snapshot whose body is arriving in chunks, between which other
        // messages come.
        let mut incoming: Option<Incoming> = None;
        let mut body = Vec::new();
        // Whether the message being received is a snapshot's.
        let mut snapshot_msg = false;
        // Messages received, not yet delivered: only while the next one is
        // whole in the buffer (never a snapshot, never a chunk of one).
        let mut batch: Vec<Message> = Vec::new();
        loop {
            let mut head = [0u8; 5];
            s.read_exact(&mut head).await?;
            let n = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
            if n > CHUNK {
                return Err(PeerError::Chunk(n));
            }
            let last = match head[4] {
                MORE => false,
                LAST => true,
                BODY_MORE | BODY_LAST => {
                    let Some(inc) = incoming.as_mut() else {
                        return Err(PeerError::Snapshot(
                            "a body chunk with no snapshot announced",
                        ));
                    };
                    if n as u64 > inc.left {
                        return Err(PeerError::Snapshot("a body longer than announced"));
                    }
                    body.resize(n, 0);
                    s.read_exact(&mut body).await?;
                    stats.received_bytes.add(5 + n as u64);
                    inc.file.write_all(&body).await?;
                    inc.left -= n as u64;
                    if head[4] == BODY_MORE {
                        continue;
                    }
                    if inc.left != 0 {
                        return Err(PeerError::Snapshot("a body shorter than announced"));
                    }
                    let Some(mut inc) = incoming.take() else {
                        continue;
                    };
                    inc.file.flush().await?;
                    let m = inc.received();
                    if let Some(start) = snap.take() {
                        stats.snapshot_receive_done(start, true);
                    }
                    (self.deliver)(Event::Message(m));
                    continue;
                }
                f => return Err(PeerError::Flag(f)),
            };
            if buf.len() + n > limit {
                return Err(PeerError::TooLarge(limit));
            }
            let start = buf.len();
            buf.resize(start + n, 0);
            s.read_exact(&mut buf[start..]).await?;
            stats.received_bytes.add(5 + n as u64);
            if start == 0 && wire::leading_msg_type(&buf) == Some(MessageType::MsgSnapshot as u64) {
                if incoming.is_some() {
                    return Err(PeerError::Snapshot(
                        "a snapshot while another one's body arrives",
                    ));
                }
                limit = self.limits.snapshot;
                snapshot_msg = true;
                *snap = Some(stats.snapshot_receive_started());
            }
            if !last {
                continue;
            }
            let len = buf.len();
            let bytes = Bytes::from(std::mem::take(&mut buf));
            // A snapshot sent whole is a large message; one streamed, and
            // the messages between its body's chunks, are small.
            let m = off_worker(std::mem::take(&mut snapshot_msg), || wire::decode(bytes))?;
            if len > self.limits.message && m.get_msg_type() != MessageType::MsgSnapshot {
                return Err(PeerError::TooLarge(self.limits.message));
            }
            if m.from != from || m.to != self.local_id {
                return Err(PeerError::Misrouted {
                    from: m.from,
                    to: m.to,
                    peer: from,
                });
            }
            limit = self.limits.message;
            if m.get_msg_type() == MessageType::MsgSnapshot {
                let data = &m.get_snapshot().data;
                if super::snapshot_file::looks_local(data) {
                    // Only this process names its own files.
                    return Err(PeerError::Snapshot("data that names a local file"));
                }
                if let Some(body_len) = super::snapshot_file::streamed_len(data) {
                    if body_len > self.limits.snapshot as u64 {
                        return Err(PeerError::TooLarge(self.limits.snapshot));
                    }
                    let Some(dir) = self.snap_dir.lock().clone() else {
                        return Err(PeerError::Snapshot("no directory to receive snapshots in"));
                    };
                    // The receive goes on until the body's last chunk.
                    incoming = Some(Incoming::create(&dir, m, body_len).await?);
                    continue;
                }
                if let Some(start) = snap.take() {
                    stats.snapshot_receive_done(start, true);
                }
            }
            if m.get_msg_type() == MessageType::MsgHeartbeatResponse {
                stats.heartbeat_answered();
            }
            // Messages already read behind this one go with it.
            batch.push(m);
            if batch.len() < MAX_BATCH && whole_message_at(s.buffer()) {
                continue;
            }
            let ev = if batch.len() == 1 {
                Event::Message(batch.remove(0))
            } else {
                Event::Messages(std::mem::take(&mut batch))
            };
            (self.deliver)(ev);
        }
    }
}

/// A snapshot whose body is being written to a file as it arrives; the
/// file is removed unless the snapshot is handed to the Raft loop.
struct Incoming {
    msg: Option<Message>,
    path: std::path::PathBuf,
    file: tokio::io::BufWriter<tokio::fs::File>,
    /// Body bytes still to come.
    left: u64,
}

impl Incoming {
    async fn create(dir: &std::path::Path, msg: Message, len: u64) -> std::io::Result<Incoming> {
        super::snapshot_file::remove_stale(dir, super::snapshot_file::STALE);
        let path = super::snapshot_file::new_path(dir, false);
        let file = tokio::fs::File::create(&path).await?;
        Ok(Incoming {
            msg: Some(msg),
            path,
            file: tokio::io::BufWriter::with_capacity(CHUNK, file),
            left: len,
        })
    }

    /// The snapshot message, its data naming the file (which stays).
    fn received(mut self) -> Message {
        let mut m = self.msg.take().unwrap_or_default();
        m.mut_snapshot().data = super::snapshot_file::local(&self.path).into();
        m
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if self.msg.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether `m` is a snapshot whose data names a file of this process.
fn is_file_snapshot(m: &Message) -> bool {
    m.get_msg_type() == MessageType::MsgSnapshot
        && super::snapshot_file::local_path(&m.get_snapshot().data).is_some()
}

/// Removes the file a snapshot message that will not be sent names.
fn discard_file(m: &Message) {
    if m.get_msg_type() == MessageType::MsgSnapshot {
        super::snapshot_file::discard(&m.get_snapshot().data);
    }
}

/// Runs `f`, a copy of a whole snapshot when `heavy` (hundreds of MB, a
/// tenth of a second and more), off the async worker: the tasks queued
/// behind the caller (the other peers' heartbeats among them) move to
/// another worker meanwhile. A single-threaded runtime runs it in place.
fn off_worker<T>(heavy: bool, f: impl FnOnce() -> T) -> T {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if heavy && multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_request_limit_and_the_quota() {
        let l = Limits::new(1_572_864, Some(2 << 30));
        assert_eq!(l.message, 7 << 20);
        assert_eq!(l.snapshot, 4 << 30);
        let l = Limits::new(1024, None);
        assert_eq!(l.message, (1 << 20) + 4096);
        assert_eq!(l.snapshot, 16 << 30);
    }

    #[test]
    fn large_messages_travel_in_chunks() {
        let msg: Vec<u8> = (0..(2 * CHUNK + 10)).map(|i| i as u8).collect();
        let mut buf = Vec::new();
        push_chunks(&mut buf, &msg);
        let mut rest = buf.as_slice();
        let mut got = Vec::new();
        let mut flags = Vec::new();
        while !rest.is_empty() {
            let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            flags.push(rest[4]);
            got.extend_from_slice(&rest[5..5 + n]);
            rest = &rest[5 + n..];
        }
        assert_eq!(flags, vec![0, 0, 1]);
        assert_eq!(got, msg);
        let mut empty = Vec::new();
        push_chunks(&mut empty, &[]);
        assert_eq!(empty, vec![0, 0, 0, 0, 1]);
    }

    fn encoded(t: MessageType) -> Vec<u8> {
        let mut m = Message::default();
        m.set_msg_type(t);
        m.to = 2;
        m.from = 1;
        m.term = 3;
        wire::encode(&m).expect("encodes")
    }

    #[test]
    fn only_a_whole_message_read_already_joins_a_batch() {
        let mut two = Vec::new();
        push_chunks(&mut two, &encoded(MessageType::MsgHeartbeat));
        push_chunks(&mut two, &encoded(MessageType::MsgReadIndexResp));
        assert!(whole_message_at(&two));
        let first = 5 + encoded(MessageType::MsgHeartbeat).len();
        assert!(whole_message_at(&two[first..]));
        // Not all of it read yet: the receive waits, so the batch goes.
        assert!(!whole_message_at(&two[first..two.len() - 1]));
        assert!(!whole_message_at(&two[first..first + 4]));
        assert!(!whole_message_at(&[]));
        // A chunk that is not a message's last.
        let mut more = two[first..].to_vec();
        more[4] = MORE;
        assert!(!whole_message_at(&more));
        // A snapshot, and a snapshot body's chunk, never join.
        let mut snap = Vec::new();
        push_chunks(&mut snap, &encoded(MessageType::MsgSnapshot));
        assert!(!whole_message_at(&snap));
        let mut body = two[first..].to_vec();
        body[4] = BODY_LAST;
        assert!(!whole_message_at(&body));
    }
}
