//! etcdserverpb.KV: validation as etcd's gRPC layer does it, then reads served
//! locally (after a read barrier unless serializable) and writes proposed.

use std::collections::HashSet;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{fill, unary};
use crate::error::{Error, Result};
use crate::metrics;
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::etcdserverpb::{
    AlarmType, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
    request_op,
};
use crate::server::{Applied, EtcdServer, Op};

pub struct KvService {
    pub s: Arc<EtcdServer>,
}

const SVC: &str = "etcdserverpb.KV";

pub fn check_range(r: &RangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

pub fn check_put(r: &PutRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(r: &DeleteRangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

/// Validates a txn: op counts, every op, and no key written twice in one branch.
pub fn check_txn(r: &TxnRequest, max_ops: usize) -> Result<()> {
    // Nested txns share the budget: they may use what this level leaves over.
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len());
    if ops > max_ops {
        return Err(Error::TooManyOps);
    }
    for c in &r.compare {
        if c.key.is_empty() {
            return Err(Error::EmptyKey);
        }
    }
    for op in r.success.iter().chain(r.failure.iter()) {
        match &op.request {
            Some(request_op::Request::RequestRange(x)) => check_range(x)?,
            Some(request_op::Request::RequestPut(x)) => check_put(x)?,
            Some(request_op::Request::RequestDeleteRange(x)) => check_delete(x)?,
            Some(request_op::Request::RequestTxn(x)) => check_txn(x, max_ops - ops)?,
            None => return Err(Error::KeyNotFound),
        }
    }
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

type Interval = (Vec<u8>, Vec<u8>);

/// Puts and deletes of one branch (nested txns included) as (dels, puts).
fn branch_writes(ops: &[RequestOp]) -> Result<(Vec<Interval>, HashSet<Vec<u8>>)> {
    let mut dels = Vec::new();
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => {
                dels.push((d.key.clone(), d.range_end.clone()));
            }
            Some(request_op::Request::RequestPut(p)) if !puts.insert(p.key.clone()) => {
                return Err(Error::DuplicateKey);
            }
            Some(request_op::Request::RequestTxn(t)) => {
                let (sd, sp) = branch_writes(&t.success)?;
                let (fd, fp) = branch_writes(&t.failure)?;
                // Only one nested branch runs, so they may overlap each other, not us.
                for k in sp.union(&fp) {
                    if puts.contains(k) {
                        return Err(Error::DuplicateKey);
                    }
                }
                puts.extend(sp);
                puts.extend(fp);
                dels.extend(sd);
                dels.extend(fd);
            }
            _ => {}
        }
    }
    Ok((dels, puts))
}

fn in_interval(key: &[u8], (start, end): &Interval) -> bool {
    if end.is_empty() {
        key == start.as_slice()
    } else if end.as_slice() == [0] {
        key >= start.as_slice()
    } else {
        key >= start.as_slice() && key < end.as_slice()
    }
}

fn check_intervals(ops: &[RequestOp]) -> Result<()> {
    let (dels, puts) = branch_writes(ops)?;
    for k in &puts {
        if dels.iter().any(|d| in_interval(k, d)) {
            return Err(Error::DuplicateKey);
        }
    }
    Ok(())
}

fn txn_is_read_only(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(r.failure.iter())
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(_)) => true,
            Some(request_op::Request::RequestTxn(t)) => txn_is_read_only(t),
            _ => false,
        })
}

/// What one branch of a txn does, as etcd's mvcc counts it: its puts (and
/// their key and value bytes) and ranges; the deletes come from the answer.
struct TxnOps {
    ops: usize,
    puts: u64,
    put_bytes: u64,
    ranges: u64,
}

impl TxnOps {
    fn of(ops: &[crate::pb::etcdserverpb::RequestOp]) -> TxnOps {
        use crate::pb::etcdserverpb::request_op::Request as R;
        let mut t = TxnOps {
            ops: ops.len(),
            puts: 0,
            put_bytes: 0,
            ranges: 0,
        };
        for op in ops {
            match &op.request {
                Some(R::RequestPut(p)) => {
                    t.puts += 1;
                    t.put_bytes += (p.key.len() + p.value.len()) as u64;
                }
                Some(R::RequestRange(_)) => t.ranges += 1,
                _ => {}
            }
        }
        t
    }

    /// Counts the branch that ran, answered by `resp`.
    fn count(&self, resp: &TxnResponse) {
        use crate::pb::etcdserverpb::response_op::Response as R;
        // etcd counts a write transaction of more than one operation.
        if self.ops > 1 {
            metrics::MVCC_TXN.inc();
        }
        metrics::MVCC_PUT.add(self.puts);
        metrics::MVCC_TOTAL_PUT_SIZE.add(self.put_bytes as i64);
        metrics::MVCC_RANGE.add(self.ranges);
        let deleted: i64 = resp
            .responses
            .iter()
            .filter_map(|r| match &r.response {
                Some(R::ResponseDeleteRange(d)) => Some(d.deleted.max(0)),
                _ => None,
            })
            .sum();
        metrics::MVCC_DELETE.add(deleted as u64);
    }
}

impl KvService {
    /// etcd refuses writes that add data once NOSPACE is raised, and raises it when a
    /// write would take the database over its quota.
    async fn check_space(&self, cost: usize) -> Result<()> {
        if self.s.alarms.has(AlarmType::Nospace) {
            return Err(Error::NoSpace);
        }
        super::quota_check(&self.s, cost).await
    }

    pub(crate) async fn do_range(&self, r: RangeRequest) -> Result<RangeResponse> {
        check_range(&r)?;
        if !r.serializable {
            self.s.read_barrier().await?;
        }
        metrics::MVCC_RANGE.inc();
        let mut resp = self.s.store.range(&r)?;
        fill(&self.s, &mut resp.header);
        Ok(resp)
    }

    async fn do_put(&self, r: PutRequest) -> Result<PutResponse> {
        check_put(&r)?;
        self.check_space(r.key.len() + r.value.len()).await?;
        metrics::MVCC_PUT.inc();
        metrics::MVCC_TOTAL_PUT_SIZE.add((r.key.len() + r.value.len()) as i64);
        match self.s.propose(Op::Put(r)).await? {
            Applied::Put(mut p) => {
                fill(&self.s, &mut p.header);
                Ok(p)
            }
            _ => Err(Error::Storage("unexpected apply result".into())),
        }
    }

    pub(crate) async fn do_delete(&self, r: DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        check_delete(&r)?;
        match self.s.propose(Op::DeleteRange(r)).await? {
            Applied::DeleteRange(mut p) => {
                // As etcd's mvcc: deleted keys.
                metrics::MVCC_DELETE.add(p.deleted.max(0) as u64);
                fill(&self.s, &mut p.header);
                Ok(p)
            }
            _ => Err(Error::Storage("unexpected apply result".into())),
        }
    }

    pub(crate) async fn do_txn(&self, r: TxnRequest) -> Result<TxnResponse> {
        check_txn(&r, self.s.cfg.max_txn_ops)?;
        if !txn_is_read_only(&r) {
            let cost = prost::Message::encoded_len(&r);
            self.check_space(cost).await?;
        }
        let branches = [TxnOps::of(&r.failure), TxnOps::of(&r.success)];
        match self.s.propose(Op::Txn(r)).await? {
            Applied::Txn(mut p) => {
                branches[p.succeeded as usize].count(&p);
                // Only the outer header carries the cluster, member and term, as
                // in etcd; the responses inside a txn carry just the revision.
                fill(&self.s, &mut p.header);
                Ok(p)
            }
            _ => Err(Error::Storage("unexpected apply result".into())),
        }
    }

    async fn do_compact(&self, r: CompactionRequest) -> Result<CompactionResponse> {
        let physical = r.physical;
        match self.s.propose(Op::Compaction(r)).await? {
            Applied::Compaction(mut p) => {
                // As etcd: a physical compaction answers once its records are
                // gone from storage.
                if physical {
                    self.s.store.wait_compacted().await?;
                }
                fill(&self.s, &mut p.header);
                Ok(p)
            }
            _ => Err(Error::Storage("unexpected apply result".into())),
        }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        unary(SVC, "Range", self.do_range(req.into_inner()).await)
    }

    type RangeStreamStream = super::range_stream::RangeStream;

    async fn range_stream(
        &self,
        req: Request<RangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        super::range_stream::serve(&self.s, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        unary(SVC, "Put", self.do_put(req.into_inner()).await)
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        unary(SVC, "DeleteRange", self.do_delete(req.into_inner()).await)
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        unary(SVC, "Txn", self.do_txn(req.into_inner()).await)
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        unary(SVC, "Compact", self.do_compact(req.into_inner()).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::RequestOp;

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn del(k: &str, e: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: k.into(),
                    range_end: e.into(),
                    ..Default::default()
                },
            )),
        }
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let t = TxnRequest {
            success: vec![put("a"), put("a")],
            ..Default::default()
        };
        assert_eq!(check_txn(&t, 128), Err(Error::DuplicateKey));
        let t = TxnRequest {
            success: vec![put("b"), del("a", "c")],
            ..Default::default()
        };
        assert_eq!(check_txn(&t, 128), Err(Error::DuplicateKey));
        let t = TxnRequest {
            success: vec![put("a")],
            failure: vec![put("a")],
            ..Default::default()
        };
        assert_eq!(check_txn(&t, 128), Ok(()));
        let t = TxnRequest {
            success: vec![put("a"), put("b")],
            ..Default::default()
        };
        assert_eq!(check_txn(&t, 1), Err(Error::TooManyOps));
    }
}
