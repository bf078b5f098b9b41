//! The peer port's one-off requests, beside the Raft streams: the
//! cluster-info request a member joining an existing cluster makes (the
//! cluster ID and members), and the HashKV request a restarting member makes
//! of its peers with `--experimental-initial-corrupt-check` (etcd's
//! `/members/hashkv`). Both sides: the answers, given by [`Transport`] after
//! the request's magic and kind, and the requests' clients.

use std::time::Duration;

use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    COMPACTED, FAILED, FUTURE_REV, KIND_HASH, KIND_INFO, MAGIC, MAX_HASH_ANSWER, MAX_INFO, OK,
    PeerTls, Stream, Transport, WRONG_CLUSTER, read_u64, tls_connect,
};
use crate::pb::etcdserverpb::{HashKvResponse, MemberListResponse, ResponseHeader};

impl Transport {
    /// Answers a cluster-info request (a member joining the cluster asks
    /// it): the cluster ID and the members, as a length-prefixed
    /// `MemberListResponse`.
    pub(super) async fn answer_info(&self, s: &mut Stream) -> std::io::Result<()> {
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
        s.write_all(&bytes).await
    }

    /// Answers a peer's HashKV request: `[cluster u64][revision i64]`, then
    /// a status byte and, when OK, a length-prefixed `HashKvResponse`.
    pub(super) async fn answer_hash(&self, s: &mut Stream) -> std::io::Result<()> {
        let cluster = read_u64(s).await?;
        let rev = read_u64(s).await? as i64;
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
}

/// A connection to the peer URL `u` for a one-off request.
async fn connect_once(u: &str, tls: &Option<PeerTls>) -> std::io::Result<Stream> {
    let s = tokio::time::timeout(Duration::from_secs(2), crate::net::connect(u))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    match (tls, crate::net::is_tls(u)) {
        (Some(tls), true) => tls_connect(tls, u, s).await,
        _ => Ok(Box::new(s)),
    }
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
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_HASH_ANSWER {
        return Err(PeerHashError::Failed(format!(
            "peer {u} answered {len} bytes, more than a hash takes"
        )));
    }
    let mut buf = vec![0u8; len];
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
        let ask = async {
            let mut s = connect_once(u, &tls).await?;
            s.write_all(MAGIC).await?;
            s.write_all(&[KIND_INFO]).await?;
            let mut len = [0u8; 4];
            s.read_exact(&mut len).await?;
            let len = u32::from_be_bytes(len) as usize;
            if len > MAX_INFO {
                return Err(std::io::Error::other(format!(
                    "cluster information of {len} bytes exceeds the limit of {MAX_INFO}"
                )));
            }
            let mut buf = vec![0u8; len];
            s.read_exact(&mut buf).await?;
            MemberListResponse::decode(buf.as_slice()).map_err(std::io::Error::other)
        };
        let r = match tokio::time::timeout(Duration::from_secs(10), ask).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::other("peer did not answer within 10s")),
        };
        match r {
            Ok(r) => return Ok(r),
            Err(e) => last = e,
        }
    }
    Err(last)
}
