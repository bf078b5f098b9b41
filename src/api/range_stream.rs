//! `KV.RangeStream` (etcd 3.7): a Range answered as a stream of chunks, all at
//! one revision, so that a large result never sits whole in the member's
//! memory nor in one gRPC message.
//!
//! As etcd: the revision is pinned when the stream starts (the requested one,
//! or the current one); each chunk carries a disjoint, ordered slice of the
//! keys; only the last chunk carries the header (the revision current at the
//! start), `more` and `count` (every key in the range, also those beyond the
//! limit); a chunk's size adapts toward `--max-request-bytes`, starting at 10
//! keys. Orders other than by key ascending and revision filters are refused
//! with `Unimplemented`. Merging all chunks gives what Range answers.

use std::sync::Arc;

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::kv::check_range;
use crate::error::{Error, Result};
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::{RangeRequest, RangeResponse, RangeStreamResponse};
use crate::server::EtcdServer;

/// Keys in the first chunk.
const FIRST_CHUNK: usize = 10;

pub type RangeStream = ReceiverStream<std::result::Result<RangeStreamResponse, Status>>;

/// etcd's checks of a RangeStream request: those of Range, then the options a
/// stream cannot honour.
pub fn check(r: &RangeRequest) -> Result<()> {
    check_range(r)?;
    let order = SortOrder::try_from(r.sort_order).unwrap_or_default();
    let target = SortTarget::try_from(r.sort_target).unwrap_or_default();
    if !(order == SortOrder::None || (target == SortTarget::Key && order == SortOrder::Ascend)) {
        return Err(Error::StreamSortOrder);
    }
    if r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0
    {
        return Err(Error::StreamRevisionFilter);
    }
    Ok(())
}

/// Serves one RangeStream call: checks and the read barrier before the
/// stream starts (their errors are the call's status), then the chunks from
/// a task, at most one chunk waiting on a slow client.
pub async fn serve(
    s: &Arc<EtcdServer>,
    r: RangeRequest,
) -> std::result::Result<RangeStream, Status> {
    let start = async {
        check(&r)?;
        if !r.serializable {
            s.read_barrier().await?;
        }
        let (cur, compact) = s.store.revs();
        let rev = if r.revision > 0 { r.revision } else { cur };
        if rev > cur {
            return Err(Error::FutureRev);
        }
        if rev < compact {
            return Err(Error::Compacted);
        }
        Ok((cur, rev))
    }
    .await;
    let (header_rev, rev) = match start {
        Ok(v) => v,
        Err(e) => return Err(super::status::to_status(e)),
    };
    let (tx, rx) = mpsc::channel(1);
    let s = s.clone();
    tokio::spawn(async move {
        if let Err(e) = send_chunks(&s, &r, header_rev, rev, &tx).await {
            let _ = tx.send(Err(super::status::to_status(e))).await;
        }
    });
    Ok(ReceiverStream::new(rx))
}

type Sender = mpsc::Sender<std::result::Result<RangeStreamResponse, Status>>;

/// Sends the chunks; returns early, without error, when the client is gone.
async fn send_chunks(
    s: &EtcdServer,
    r: &RangeRequest,
    header_rev: i64,
    rev: i64,
    tx: &Sender,
) -> Result<()> {
    let header = || Some(s.header(header_rev));
    if r.count_only {
        let count = s.store.count_at((&r.key, &r.range_end), rev)?;
        let out = RangeResponse {
            header: header(),
            count: count as i64,
            ..Default::default()
        };
        let _ = tx.send(Ok(chunk(out))).await;
        return Ok(());
    }
    let total = if r.limit > 0 {
        r.limit as usize
    } else {
        usize::MAX
    };
    let target = s.cfg.max_request_bytes;
    let mut limit = FIRST_CHUNK.min(total);
    let mut from = r.key.clone();
    let mut sent = 0usize;
    loop {
        let (kvs, more) = s
            .store
            .range_chunk((&from, &r.range_end), rev, limit, r.keys_only)?;
        sent += kvs.len();
        let done = !more || sent == total;
        let next = match (more, kvs.last()) {
            (true, Some(kv)) => {
                let mut k = kv.key.clone();
                k.push(0);
                k
            }
            _ => Vec::new(),
        };
        let mut out = RangeResponse {
            kvs,
            ..Default::default()
        };
        let size = out.encoded_len();
        if done {
            let rest = if more {
                s.store.count_at((&next, &r.range_end), rev)?
            } else {
                0
            };
            out.header = header();
            out.more = more;
            out.count = (sent + rest) as i64;
        }
        if tx.send(Ok(chunk(out))).await.is_err() || done {
            return Ok(());
        }
        from = next;
        limit = next_limit(limit, size, target).min(total - sent);
    }
}

fn chunk(out: RangeResponse) -> RangeStreamResponse {
    RangeStreamResponse {
        range_response: Some(out),
    }
}

/// The next chunk's key count: doubled while chunks stay under half the
/// target size, halved while they exceed twice it, never zero.
fn next_limit(last: usize, size: usize, target: usize) -> usize {
    let next = if size < target / 2 {
        last.saturating_mul(2)
    } else if size > target.saturating_mul(2) {
        last / 2
    } else {
        last
    };
    next.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_moves_toward_the_target() {
        assert_eq!(next_limit(10, 100, 1000), 20);
        assert_eq!(next_limit(10, 600, 1000), 10);
        assert_eq!(next_limit(10, 2001, 1000), 5);
        assert_eq!(next_limit(1, 5000, 1000), 1);
        assert_eq!(next_limit(usize::MAX, 0, 1000), usize::MAX);
    }

    #[test]
    fn options_a_stream_cannot_honour_are_refused() {
        let base = RangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        };
        assert!(check(&base).is_ok());
        let by_key = RangeRequest {
            sort_order: SortOrder::Ascend as i32,
            sort_target: SortTarget::Key as i32,
            ..base.clone()
        };
        assert!(check(&by_key).is_ok());
        let desc = RangeRequest {
            sort_order: SortOrder::Descend as i32,
            ..base.clone()
        };
        assert!(matches!(check(&desc), Err(Error::StreamSortOrder)));
        let by_mod = RangeRequest {
            sort_order: SortOrder::Ascend as i32,
            sort_target: SortTarget::Mod as i32,
            ..base.clone()
        };
        assert!(matches!(check(&by_mod), Err(Error::StreamSortOrder)));
        let filtered = RangeRequest {
            min_mod_revision: 2,
            ..base.clone()
        };
        assert!(matches!(check(&filtered), Err(Error::StreamRevisionFilter)));
        let empty = RangeRequest::default();
        assert!(matches!(check(&empty), Err(Error::EmptyKey)));
    }
}
