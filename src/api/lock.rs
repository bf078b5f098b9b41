//! v3lockpb.Lock: etcd's distributed mutex, served by the member.
//!
//! A lock named `n` is held through a key `n/<lease in hex>` attached to the
//! caller's lease (a new lease of 60 s when the request names none). The key
//! with the lowest create revision under `n/` owns the lock; a later caller
//! waits until every key created before its own is deleted (by Unlock, by a
//! revoke or by the lease's expiry). Locking again with the same lease finds
//! the same key. As in etcd 3.5, a wait that ends after the caller's own key
//! was deleted fails (`mutex: session is expired`), and a caller that gives up
//! (cancels, or its connection goes) has its key deleted.
//!
//! Errors are etcd's texts with code Unknown (see [`super::status::unmapped`]).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::concurrency::{
    Kit, by_create, created_at, lease_key, op_delete, op_get, op_put, op_range, prefix, range_kvs,
};
use crate::error::{Error, Result};
use crate::metrics;
use crate::pb::etcdserverpb::{TxnRequest, range_request};
use crate::pb::v3lockpb::lock_server::Lock;
use crate::pb::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use crate::server::EtcdServer;

const SVC: &str = "v3lockpb.Lock";

pub struct LockService {
    kit: Kit,
}

impl LockService {
    pub fn new(s: Arc<EtcdServer>) -> Self {
        LockService { kit: Kit::new(s) }
    }

    async fn lock(&self, r: LockRequest) -> Result<LockResponse> {
        let k = &self.kit;
        let lease = k.session(r.lease).await?;
        let pfx = prefix(&r.name);
        let key = lease_key(&pfx, lease);
        let owner = || op_range(by_create(&pfx, range_request::SortOrder::Ascend, 0));
        // Join the waiters with a key of our own, or find the one this lease
        // already has; learn the owner in the same step.
        let resp = k
            .txn(TxnRequest {
                compare: vec![created_at(&key, 0)],
                success: vec![op_put(&key, Vec::new(), lease), owner()],
                failure: vec![op_get(&key), owner()],
            })
            .await?;
        let my_rev = if resp.succeeded {
            resp.header.as_ref().map(|h| h.revision).unwrap_or_default()
        } else {
            range_kvs(&resp, 0)?
                .first()
                .map(|kv| kv.create_revision)
                .ok_or(Error::SessionExpired)?
        };
        let first = range_kvs(&resp, 1)?.first().map(|kv| kv.create_revision);
        if first.is_none_or(|rev| rev == my_rev) {
            return Ok(LockResponse {
                header: resp.header,
                key,
            });
        }
        let undo = TxnRequest {
            success: vec![op_delete(&key)],
            ..Default::default()
        };
        // Dropped armed when the caller goes away while waiting.
        let cleanup = k.cleanup(undo);
        if let Err(e) = k.wait_deletes(&pfx, my_rev - 1).await {
            cleanup.run().await;
            return Err(e);
        }
        // Our key may have gone with its lease while we waited.
        let now = match k.range(get(&key)).await {
            Ok(now) => now,
            Err(e) => {
                cleanup.run().await;
                return Err(e);
            }
        };
        cleanup.disarm();
        if now.kvs.is_empty() {
            return Err(Error::SessionExpired);
        }
        Ok(LockResponse {
            header: now.header,
            key,
        })
    }

    async fn unlock(&self, r: UnlockRequest) -> Result<UnlockResponse> {
        let d = self.kit.delete(&r.key).await?;
        Ok(UnlockResponse { header: d.header })
    }
}

fn get(key: &[u8]) -> crate::pb::etcdserverpb::RangeRequest {
    crate::pb::etcdserverpb::RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    }
}

/// Runs a unary call of the Lock or Election service, its error unmapped, as
/// etcd returns it (the `msgsize` layer counts the call).
pub(crate) async fn answer<T: prost::Message>(
    svc: &'static str,
    method: &'static str,
    call: impl std::future::Future<Output = Result<T>>,
) -> Result<Response<T>, Status> {
    let _ = (svc, method);
    let r = call
        .await
        .map(Response::new)
        .map_err(super::status::unmapped);
    if let Ok(m) = &r {
        metrics::grpc::sent_bytes(prost::Message::encoded_len(m.get_ref()));
    }
    r
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        answer(SVC, "Lock", LockService::lock(self, req.into_inner())).await
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        answer(SVC, "Unlock", LockService::unlock(self, req.into_inner())).await
    }
}
