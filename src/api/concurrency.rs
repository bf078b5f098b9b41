//! What etcd's client-side concurrency package does (sessions on a lease, the
//! oldest key under a prefix, waiting until older keys are deleted), done
//! inside the member for the Lock and Election services. Every step is a call
//! of the same code the KV and Lease services run (linearizable ranges, txns
//! and deletes through the Raft log, lease grants), and waiting follows the
//! store's event broadcast as watch streams do.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;

use super::kv::KvService;
use super::lease::LeaseService;
use crate::error::{Error, Result};
use crate::pb::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest, PutRequest, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse, compare,
    range_request, request_op, response_op,
};
use crate::pb::mvccpb::{Event, KeyValue, event::EventType};
use crate::server::EtcdServer;

/// The TTL of the lease a Lock, Campaign, Proclaim or Resign without a lease
/// is given (etcd's default session TTL, in seconds).
pub const SESSION_TTL: i64 = 60;

/// Events read from storage at a time when a wait catches up.
const HISTORY_CHUNK: usize = 1000;

/// The range end that makes `key` a prefix (etcd's `GetPrefixRangeEnd`): the
/// key with its last byte below 0xff incremented and what follows dropped;
/// `[0]` (every key from `key` on) when all its bytes are 0xff.
pub fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The prefix of a lock's or election's keys: its name and a slash.
pub fn prefix(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

/// The key a session with `lease` holds under `pfx`: the lease ID in lowercase
/// hexadecimal, as Go's `%x` prints it (a minus sign before a negative one).
pub fn lease_key(pfx: &[u8], lease: i64) -> Vec<u8> {
    let hex = if lease < 0 {
        format!("-{:x}", (lease as i128).unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    let mut k = pfx.to_vec();
    k.extend_from_slice(hex.as_bytes());
    k
}

/// A range over `pfx` that answers its oldest (`Ascend`) or newest
/// (`Descend`) key by create revision, with creations up to `max_create` (0:
/// any).
pub fn by_create(pfx: &[u8], order: range_request::SortOrder, max_create: i64) -> RangeRequest {
    RangeRequest {
        key: pfx.to_vec(),
        range_end: prefix_end(pfx),
        limit: 1,
        sort_order: order as i32,
        sort_target: range_request::SortTarget::Create as i32,
        max_create_revision: max_create,
        ..Default::default()
    }
}

/// A compare that holds when `key` was created at `rev` (0: does not exist).
pub fn created_at(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

pub fn op_put(key: &[u8], value: Vec<u8>, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value,
            lease,
            ..Default::default()
        })),
    }
}

pub fn op_range(r: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(r)),
    }
}

pub fn op_get(key: &[u8]) -> RequestOp {
    op_range(RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    })
}

pub fn op_delete(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: key.to_vec(),
                ..Default::default()
            },
        )),
    }
}

/// The keys of the `i`-th response of a txn, which must be a range.
pub fn range_kvs(r: &TxnResponse, i: usize) -> Result<&[KeyValue]> {
    match r.responses.get(i) {
        Some(ResponseOp {
            response: Some(response_op::Response::ResponseRange(rr)),
        }) => Ok(&rr.kvs),
        _ => Err(Error::Storage("txn answered without its range".into())),
    }
}

/// The member's KV and lease code, called as the services call it.
#[derive(Clone)]
pub struct Kit {
    pub s: Arc<EtcdServer>,
    kv: Arc<KvService>,
    lease: Arc<LeaseService>,
}

impl Kit {
    pub fn new(s: Arc<EtcdServer>) -> Self {
        Kit {
            kv: Arc::new(KvService { s: s.clone() }),
            lease: Arc::new(LeaseService {
                s: s.clone(),
                leader: parking_lot::Mutex::new(None),
            }),
            s,
        }
    }

    /// The lease of a session: `lease` itself (etcd neither checks nor keeps
    /// it alive), or a new lease of [`SESSION_TTL`] when it is 0.
    pub async fn session(&self, lease: i64) -> Result<i64> {
        if lease != 0 {
            return Ok(lease);
        }
        let g = self
            .lease
            .grant(LeaseGrantRequest {
                ttl: SESSION_TTL,
                id: 0,
            })
            .await?;
        Ok(g.id)
    }

    /// A linearizable range.
    pub async fn range(&self, r: RangeRequest) -> Result<RangeResponse> {
        self.kv.do_range(r).await
    }

    pub async fn txn(&self, t: TxnRequest) -> Result<TxnResponse> {
        self.kv.do_txn(t).await
    }

    pub async fn delete(&self, key: &[u8]) -> Result<DeleteRangeResponse> {
        self.kv
            .do_delete(DeleteRangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })
            .await
    }

    /// The oldest key under `pfx` and the header of the read.
    pub async fn oldest(&self, pfx: &[u8]) -> Result<(Option<ResponseHeader>, Option<KeyValue>)> {
        let r = self
            .range(by_create(pfx, range_request::SortOrder::Ascend, 0))
            .await?;
        Ok((r.header, r.kvs.into_iter().next()))
    }

    /// Waits until no key under `pfx` created at or before `max_create` is
    /// left (etcd's `waitDeletes`): repeatedly, the newest such key, then its
    /// deletion. Answers the header of the last read.
    pub async fn wait_deletes(&self, pfx: &[u8], max_create: i64) -> Result<ResponseHeader> {
        loop {
            let r = self
                .range(by_create(
                    pfx,
                    range_request::SortOrder::Descend,
                    max_create,
                ))
                .await?;
            let header = r.header.unwrap_or_default();
            let Some(kv) = r.kvs.into_iter().next() else {
                return Ok(header);
            };
            self.wait_delete(&kv.key, header.revision).await?;
        }
    }

    /// Waits for a deletion of `key` at or after revision `from`.
    async fn wait_delete(&self, key: &[u8], from: i64) -> Result<()> {
        let mut events = Events::new(&self.s, key.to_vec(), Vec::new(), from);
        loop {
            let (_, batch) = events.next().await?;
            if batch.iter().any(|e| e.r#type == EventType::Delete as i32) {
                return Ok(());
            }
        }
    }

    /// Deletes `key` in the background when dropped armed: what a Lock or a
    /// Campaign the caller gave up on leaves behind, as etcd cleans it up.
    pub fn cleanup(&self, undo: TxnRequest) -> Cleanup {
        Cleanup {
            kit: Some(self.clone()),
            undo: Some(undo),
        }
    }
}

/// An undo run in the background unless disarmed (see [`Kit::cleanup`]).
pub struct Cleanup {
    kit: Option<Kit>,
    undo: Option<TxnRequest>,
}

impl Cleanup {
    pub fn disarm(mut self) {
        self.kit = None;
    }

    /// Runs the undo now (after a failure) and waits for it; its own failure
    /// is of no interest to the caller, who gets the first error.
    pub async fn run(mut self) {
        if let (Some(kit), Some(undo)) = (self.kit.take(), self.undo.take()) {
            let _ = kit.txn(undo).await;
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let (Some(kit), Some(undo)) = (self.kit.take(), self.undo.take())
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = kit.txn(undo).await;
            });
        }
    }
}

/// The events on a key range from a revision on, as a watcher of it would
/// receive them: history from storage first, then the store's broadcast
/// (subscribed before history is read, so nothing falls in between; a
/// receiver that lags catches up from storage again).
pub struct Events {
    s: Arc<EtcdServer>,
    sub: tokio::sync::broadcast::Receiver<Arc<crate::mvcc::watch::EventBatch>>,
    key: Vec<u8>,
    end: Vec<u8>,
    /// The next revision to deliver.
    next: i64,
}

impl Events {
    pub fn new(s: &Arc<EtcdServer>, key: Vec<u8>, end: Vec<u8>, from: i64) -> Self {
        let sub = s.hub.subscribe();
        let next = if from > 0 {
            from
        } else {
            s.store.current_rev() + 1
        };
        Events {
            s: s.clone(),
            sub,
            key,
            end,
            next,
        }
    }

    fn matches(&self, e: &Event) -> bool {
        let Some(kv) = &e.kv else { return false };
        if kv.mod_revision < self.next {
            return false;
        }
        let k = kv.key.as_slice();
        match self.end.as_slice() {
            [] => k == self.key.as_slice(),
            [0] => k >= self.key.as_slice(),
            end => k >= self.key.as_slice() && k < end,
        }
    }

    /// The next non-empty batch of events, with the revision its watch
    /// response's header carries. Fails as a watch is cancelled: when the
    /// revisions it needs were compacted.
    pub async fn next(&mut self) -> Result<(i64, Vec<Event>)> {
        loop {
            let (cur, compacted) = self.s.store.revs();
            if self.next <= cur {
                if self.next < compacted {
                    return Err(Error::Compacted);
                }
                let (events, last) = self.s.store.history(self.next, cur, HISTORY_CHUNK)?;
                let mine: Vec<Event> = events.into_iter().filter(|e| self.matches(e)).collect();
                self.next = last + 1;
                if !mine.is_empty() {
                    return Ok((last, mine));
                }
                continue;
            }
            match self.sub.recv().await {
                Ok(b) if b.resync || b.rev < self.next => {}
                Ok(b) => {
                    let mine: Vec<Event> = b
                        .events
                        .iter()
                        .filter(|e| self.matches(e))
                        .cloned()
                        .collect();
                    self.next = b.rev + 1;
                    if !mine.is_empty() {
                        return Ok((b.rev, mine));
                    }
                }
                // Behind the broadcast: catch up from storage.
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return Err(Error::Stopped),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_are_etcds() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn lease_keys_are_hex_as_go_prints_them() {
        assert_eq!(lease_key(b"n/", 0x390da237fa645f0f), b"n/390da237fa645f0f");
        assert_eq!(lease_key(b"n/", 10), b"n/a");
        assert_eq!(lease_key(b"/", -26), b"/-1a");
        assert_eq!(lease_key(b"", i64::MIN), b"-8000000000000000");
    }
}
