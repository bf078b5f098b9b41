//! The peer transport: Raft messages between members over TCP on the peer URLs.
//!
//! Each member keeps one outbound connection per peer and accepts inbound ones on
//! `--listen-peer-urls`. A connection starts with a handshake naming the cluster and
//! both members; a peer of another cluster, or a connection meant for another
//! member, is refused with a log line. After the handshake the stream carries
//! encoded `eraftpb.Message`s in chunks of at most 1 MiB (a snapshot spans many). A lost
//! connection is re-dialled with backoff; messages sent meanwhile are dropped, which
//! Raft tolerates, and the peer is reported unreachable.
//!
//! The same port answers a cluster-info request, which a member joining an
//! existing cluster (`--initial-cluster-state existing`) uses to learn the cluster
//! ID and members, and a HashKV request, which a restarting member asks its
//! peers with `--experimental-initial-corrupt-check` (etcd's `/members/hashkv`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prost::Message as _;
use protobuf::Message as PbMessage;
use raft::eraftpb::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::pb::etcdserverpb::{HashKvResponse, Member, MemberListResponse, ResponseHeader};

const MAGIC: &[u8; 8] = b"ETCDRSP1";
const KIND_RAFT: u8 = b'R';
const KIND_INFO: u8 = b'I';
const KIND_HASH: u8 = b'H';
const OK: u8 = 0;
const WRONG_CLUSTER: u8 = 1;
const WRONG_MEMBER: u8 = 2;
const FUTURE_REV: u8 = 3;
const COMPACTED: u8 = 4;
const FAILED: u8 = 5;
/// Largest frame accepted (a snapshot travels in one frame).
const MAX_FRAME: usize = 1 << 31;
const QUEUE: usize = 4096;
/// Messages (snapshots above all) travel in chunks of at most this many bytes.
const CHUNK: usize = 1 << 20;

/// Appends `msg` as chunks: `[len u32 BE][last u8][bytes]`.
fn push_chunks(buf: &mut Vec<u8>, msg: &[u8]) {
    let mut chunks = msg.chunks(CHUNK).peekable();
    if chunks.peek().is_none() {
        buf.extend_from_slice(&0u32.to_be_bytes());
        buf.push(1);
        return;
    }
    while let Some(c) = chunks.next() {
        buf.extend_from_slice(&(c.len() as u32).to_be_bytes());
        buf.push(chunks.peek().is_none() as u8);
        buf.extend_from_slice(c);
    }
}

/// `msg` as it travels: encoded, in chunks (None if it does not encode).
pub fn frame(msg: &Message) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    push_chunks(&mut buf, &msg.write_to_bytes().ok()?);
    Some(buf)
}

/// What the transport reports back to the Raft loop.
pub enum Event {
    Message(Message),
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
    tx: mpsc::Sender<Message>,
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
}

async fn read_u64<S: AsyncRead + Unpin + ?Sized>(s: &mut S) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b).await?;
    Ok(u64::from_be_bytes(b))
}

/// What a connection to the peer port asks for, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello {
    /// Raft messages follow: the sender's cluster, its ID, the member it meant.
    Raft { cluster: u64, from: u64, to: u64 },
    /// The cluster ID and the members.
    Info,
    /// The HashKV at `rev`, asked by a member of `cluster`.
    Hash { cluster: u64, rev: i64 },
}

/// Reads the handshake that opens a connection to the peer port.
pub async fn read_hello<S: AsyncRead + Unpin + ?Sized>(s: &mut S) -> std::io::Result<Hello> {
    let mut magic = [0u8; 9];
    s.read_exact(&mut magic).await?;
    if &magic[..8] != MAGIC {
        return Err(std::io::Error::other("not an etcd-rs peer"));
    }
    match magic[8] {
        KIND_HASH => {
            let cluster = read_u64(s).await?;
            let rev = read_u64(s).await? as i64;
            Ok(Hello::Hash { cluster, rev })
        }
        KIND_INFO => Ok(Hello::Info),
        _ => {
            let cluster = read_u64(s).await?;
            let from = read_u64(s).await?;
            let to = read_u64(s).await?;
            Ok(Hello::Raft { cluster, from, to })
        }
    }
}

/// Reads one Raft message, sent as one or more chunks (the last one flagged),
/// using `buf` for its bytes.
pub async fn read_message<S: AsyncRead + Unpin + ?Sized>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<Message> {
    buf.clear();
    loop {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await?;
        let n = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if n > CHUNK || buf.len() + n > MAX_FRAME {
            return Err(std::io::Error::other("frame too large"));
        }
        let start = buf.len();
        buf.resize(start + n, 0);
        s.read_exact(&mut buf[start..]).await?;
        if head[4] != 0 {
            break;
        }
    }
    let parsed = Message::parse_from_bytes(buf);
    buf.clear();
    parsed.map_err(|e| std::io::Error::other(format!("bad raft message: {e}")))
}

/// host:port of a URL such as `http://10.0.0.1:2380`.
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.split('/').next().unwrap_or(rest).to_string()
}

impl Transport {
    pub fn new(
        cluster_id: u64,
        local_id: u64,
        deliver: Deliver,
        rt: tokio::runtime::Handle,
        tls: Option<PeerTls>,
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
        })
    }

    /// The store that answers peers' HashKV requests.
    pub fn set_store(&self, store: Arc<crate::mvcc::Store>) {
        *self.store.lock() = Some(store);
    }

    /// Answers a peer's HashKV request: `[cluster u64][revision i64]`, then
    /// a status byte and, when OK, a length-prefixed `HashKvResponse`.
    async fn answer_hash(&self, s: &mut Stream, cluster: u64, rev: i64) -> std::io::Result<()> {
        if cluster != self.cluster_id {
            s.write_all(&[WRONG_CLUSTER]).await?;
            return Ok(());
        }
        let Some(store) = self.store.lock().clone() else {
            s.write_all(&[FAILED]).await?;
            return Ok(());
        };
        match store.hash_kv(rev).await {
            Ok((hash, compact, rev)) => {
                let resp = HashKvResponse {
                    header: Some(ResponseHeader {
                        cluster_id: self.cluster_id,
                        member_id: self.local_id,
                        revision: store.current_rev(),
                        ..Default::default()
                    }),
                    hash,
                    compact_revision: compact,
                    hash_revision: rev,
                };
                let bytes = resp.encode_to_vec();
                s.write_all(&[OK]).await?;
                s.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
                s.write_all(&bytes).await
            }
            Err(crate::error::Error::FutureRev) => s.write_all(&[FUTURE_REV]).await,
            Err(crate::error::Error::Compacted) => s.write_all(&[COMPACTED]).await,
            Err(_) => s.write_all(&[FAILED]).await,
        }
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
            peers.insert(
                m.id,
                Peer {
                    urls: m.peer_ur_ls.clone(),
                    tx,
                },
            );
            let this = self.clone();
            let urls = m.peer_ur_ls.clone();
            let id = m.id;
            self.rt
                .spawn(async move { this.sender(id, urls, rx).await });
        }
    }

    /// Queues messages for their peers; never blocks.
    pub fn send(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let peers = self.peers.lock();
        for m in msgs {
            let to = m.to;
            match peers.get(&to) {
                Some(p) => {
                    if p.tx.try_send(m).is_err() {
                        (self.deliver)(Event::Unreachable(to));
                    }
                }
                None => (self.deliver)(Event::Unreachable(to)),
            }
        }
    }

    async fn connect(&self, url: &str) -> std::io::Result<Stream> {
        let hp = host_port(url);
        let s = TcpStream::connect(&hp).await?;
        s.set_nodelay(true)?;
        match (&self.tls, url.starts_with("https://")) {
            (Some(tls), true) => {
                let host = hp.rsplit_once(':').map(|(h, _)| h).unwrap_or(&hp);
                let host = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string();
                let name =
                    rustls::pki_types::ServerName::try_from(host).map_err(std::io::Error::other)?;
                let c = tokio_rustls::TlsConnector::from(tls.client.clone());
                Ok(Box::new(c.connect(name, s).await?))
            }
            (None, true) => Err(std::io::Error::other(
                "peer URL is https but no peer TLS is configured",
            )),
            _ => Ok(Box::new(s)),
        }
    }

    async fn dial(&self, to: u64, urls: &[String]) -> std::io::Result<Stream> {
        let mut last = std::io::Error::other("no peer URL");
        for u in urls {
            match self.connect(u).await {
                Ok(mut s) => {
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
                        OK => return Ok(s),
                        WRONG_CLUSTER => {
                            last = std::io::Error::other(format!(
                                "peer {u} belongs to another cluster"
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

    async fn sender(self: Arc<Self>, to: u64, urls: Vec<String>, mut rx: mpsc::Receiver<Message>) {
        let mut backoff = Duration::from_millis(50);
        let mut warned = false;
        'outer: loop {
            let mut stream = match self.dial(to, &urls).await {
                Ok(s) => {
                    backoff = Duration::from_millis(50);
                    if warned {
                        crate::info!("peer became active", peer_id = format!("{to:x}"));
                    }
                    warned = false;
                    s
                }
                Err(e) => {
                    if !warned {
                        crate::warn!("cannot reach peer", peer_id = format!("{to:x}"), error = e);
                        warned = true;
                    }
                    // Drop what queued up meanwhile; Raft resends.
                    let mut snap_failed = false;
                    while let Ok(m) = rx.try_recv() {
                        snap_failed |= m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot;
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
                let is_snap = m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot;
                buf.clear();
                let mut batch = vec![m];
                while batch.len() < 256 {
                    match rx.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
                for m in &batch {
                    let Ok(bytes) = m.write_to_bytes() else {
                        continue;
                    };
                    push_chunks(&mut buf, &bytes);
                }
                if let Err(e) = stream.write_all(&buf).await {
                    crate::warn!(
                        "lost connection to peer",
                        peer_id = format!("{to:x}"),
                        error = e
                    );
                    if is_snap {
                        (self.deliver)(Event::SnapshotDone(to, false));
                    }
                    (self.deliver)(Event::Unreachable(to));
                    continue 'outer;
                }
                if is_snap
                    || batch
                        .iter()
                        .any(|m| m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot)
                {
                    (self.deliver)(Event::SnapshotDone(to, true));
                }
            }
        }
    }

    /// Accepts peer connections until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((s, addr)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = s.set_nodelay(true);
            let this = self.clone();
            tokio::spawn(async move {
                let s: Stream = match &this.tls {
                    Some(tls) => {
                        let acc = tls.server.acceptor();
                        match tokio::time::timeout(Duration::from_secs(10), acc.accept(s)).await {
                            Ok(Ok(s)) => {
                                let leaf =
                                    s.get_ref().1.peer_certificates().and_then(|c| c.first());
                                if let Err(why) = tls.server.admits(leaf) {
                                    crate::warn!(
                                        "rejected peer connection",
                                        remote = addr,
                                        error = why
                                    );
                                    return;
                                }
                                Box::new(s)
                            }
                            Ok(Err(e)) => {
                                crate::warn!("rejected peer connection", remote = addr, error = e);
                                return;
                            }
                            Err(_) => return,
                        }
                    }
                    None => Box::new(s),
                };
                if let Err(e) = this.inbound(s).await {
                    crate::debug!("peer connection closed", remote = addr, error = e);
                }
            });
        }
    }

    async fn inbound(&self, mut s: Stream) -> std::io::Result<()> {
        let (cluster, from, to) = match read_hello(&mut s).await? {
            Hello::Raft { cluster, from, to } => (cluster, from, to),
            Hello::Hash { cluster, rev } => return self.answer_hash(&mut s, cluster, rev).await,
            Hello::Info => {
                let members = self.members.lock().clone();
                let resp = MemberListResponse {
                    header: Some(ResponseHeader {
                        cluster_id: self.cluster_id,
                        member_id: self.local_id,
                        ..Default::default()
                    }),
                    members,
                };
                let bytes = resp.encode_to_vec();
                s.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
                s.write_all(&bytes).await?;
                return Ok(());
            }
        };
        if cluster != self.cluster_id {
            crate::warn!(
                "rejected connection from a peer of another cluster",
                remote_peer_id = format!("{from:x}"),
                remote_cluster_id = format!("{cluster:x}"),
                local_cluster_id = format!("{:x}", self.cluster_id)
            );
            s.write_all(&[WRONG_CLUSTER]).await?;
            return Ok(());
        }
        if to != self.local_id {
            crate::warn!(
                "rejected connection meant for another member",
                remote_peer_id = format!("{from:x}"),
                intended_member_id = format!("{to:x}"),
                local_member_id = format!("{:x}", self.local_id)
            );
            s.write_all(&[WRONG_MEMBER]).await?;
            return Ok(());
        }
        s.write_all(&[OK]).await?;
        let mut s = tokio::io::BufReader::with_capacity(256 * 1024, s);
        let mut buf = Vec::new();
        loop {
            let m = read_message(&mut s, &mut buf).await?;
            (self.deliver)(Event::Message(m));
        }
    }
}

/// A connection to the peer URL `u` for a one-off request.
async fn connect_once(u: &str, tls: &Option<PeerTls>) -> std::io::Result<Stream> {
    let tcp = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(host_port(u)))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    Ok(match (tls, u.starts_with("https://")) {
        (Some(tls), true) => {
            let hp = host_port(u);
            let host = hp.rsplit_once(':').map(|(h, _)| h).unwrap_or(&hp);
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let name =
                rustls::pki_types::ServerName::try_from(host).map_err(std::io::Error::other)?;
            let c = tokio_rustls::TlsConnector::from(tls.client.clone());
            Box::new(c.connect(name, tcp).await?)
        }
        _ => Box::new(tcp),
    })
}

/// Why a peer gave no hash.
#[derive(Debug, thiserror::Error)]
pub enum PeerHashError {
    /// The peer has not reached the revision yet.
    #[error("{}", crate::error::Error::FutureRev)]
    FutureRev,
    /// The peer has compacted the revision away.
    #[error("{}", crate::error::Error::Compacted)]
    Compacted,
    #[error("{0}")]
    Failed(String),
}

/// Asks the member at the peer URL `u` for its HashKV at `rev`.
pub async fn fetch_hash_kv(
    u: &str,
    cluster_id: u64,
    rev: i64,
    tls: &Option<PeerTls>,
) -> Result<HashKvResponse, PeerHashError> {
    let io = |e: std::io::Error| PeerHashError::Failed(e.to_string());
    let mut s = connect_once(u, tls).await.map_err(io)?;
    let mut req = Vec::with_capacity(25);
    req.extend_from_slice(MAGIC);
    req.push(KIND_HASH);
    req.extend_from_slice(&cluster_id.to_be_bytes());
    req.extend_from_slice(&rev.to_be_bytes());
    s.write_all(&req).await.map_err(io)?;
    let mut status = [0u8; 1];
    s.read_exact(&mut status).await.map_err(io)?;
    match status[0] {
        OK => {}
        FUTURE_REV => return Err(PeerHashError::FutureRev),
        COMPACTED => return Err(PeerHashError::Compacted),
        WRONG_CLUSTER => {
            return Err(PeerHashError::Failed(format!(
                "peer {u} belongs to another cluster"
            )));
        }
        _ => {
            return Err(PeerHashError::Failed(format!(
                "peer {u} could not compute its hash"
            )));
        }
    }
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.map_err(io)?;
    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await.map_err(io)?;
    HashKvResponse::decode(buf.as_slice()).map_err(|e| PeerHashError::Failed(e.to_string()))
}

/// Asks the members at `urls` for the cluster ID and member list (for joining).
pub async fn fetch_cluster(
    urls: &[String],
    tls: Option<PeerTls>,
) -> std::io::Result<MemberListResponse> {
    let mut last = std::io::Error::other("no peer to ask");
    for u in urls {
        let r: std::io::Result<MemberListResponse> = async {
            let mut s = connect_once(u, &tls).await?;
            s.write_all(MAGIC).await?;
            s.write_all(&[KIND_INFO]).await?;
            let mut len = [0u8; 4];
            s.read_exact(&mut len).await?;
            let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
            s.read_exact(&mut buf).await?;
            MemberListResponse::decode(buf.as_slice()).map_err(std::io::Error::other)
        }
        .await;
        match r {
            Ok(r) => return Ok(r),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
