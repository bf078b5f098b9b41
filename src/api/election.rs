//! v3electionpb.Election: etcd's leader election, served by the member.
//!
//! A candidate in election `e` is a key `e/<lease in hex>` attached to its
//! lease (a new lease of 60 s when the request names none), whose value is
//! the candidate's proclamation. The key with the lowest create revision
//! under `e/` leads. Campaign waits until every older candidate's key is
//! deleted; Proclaim rewrites the leader's value and Resign deletes its key,
//! both only while the key still has the create revision of the leader key
//! (else Proclaim fails with `election: not leader` and Resign does nothing).
//! Leader reads the oldest key; Observe streams the leader's value, then every
//! change of it, then the next leader's, until the caller goes away (or a
//! read fails: the stream then ends without error, as etcd's does).
//!
//! Errors are etcd's texts with code Unknown (see [`super::status::unmapped`]).

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::concurrency::{
    Events, Kit, created_at, lease_key, op_delete, op_get, op_put, prefix, prefix_end, range_kvs,
};
use super::lock::answer;
use crate::error::{Error, Result};
use crate::pb::etcdserverpb::TxnRequest;
use crate::pb::mvccpb::event::EventType;
use crate::pb::v3electionpb::election_server::Election;
use crate::pb::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use crate::server::EtcdServer;

const SVC: &str = "v3electionpb.Election";

pub struct ElectionService {
    kit: Kit,
}

/// Replaces the value of `key` (attached to `lease`) if it was created at `rev`.
fn proclaim_txn(key: &[u8], rev: i64, lease: i64, value: Vec<u8>) -> TxnRequest {
    TxnRequest {
        compare: vec![created_at(key, rev)],
        success: vec![op_put(key, value, lease)],
        failure: vec![],
    }
}

/// Deletes `key` if it was created at `rev`.
fn resign_txn(key: &[u8], rev: i64) -> TxnRequest {
    TxnRequest {
        compare: vec![created_at(key, rev)],
        success: vec![op_delete(key)],
        failure: vec![],
    }
}

impl ElectionService {
    pub fn new(s: Arc<EtcdServer>) -> Self {
        ElectionService { kit: Kit::new(s) }
    }

    async fn campaign(&self, r: CampaignRequest) -> Result<CampaignResponse> {
        let k = &self.kit;
        let lease = k.session(r.lease).await?;
        let pfx = prefix(&r.name);
        let key = lease_key(&pfx, lease);
        let resp = k
            .txn(TxnRequest {
                compare: vec![created_at(&key, 0)],
                success: vec![op_put(&key, r.value.clone(), lease)],
                failure: vec![op_get(&key)],
            })
            .await?;
        let mut rev = resp.header.as_ref().map(|h| h.revision).unwrap_or_default();
        if !resp.succeeded {
            // This lease is a candidate already: take its key over, with the
            // value asked for now.
            let kv = range_kvs(&resp, 0)?
                .first()
                .cloned()
                .ok_or(Error::ElectionNotLeader)?;
            rev = kv.create_revision;
            if kv.value != r.value {
                let p = k
                    .txn(proclaim_txn(&key, rev, lease, r.value.clone()))
                    .await
                    .and_then(|p| {
                        if p.succeeded {
                            Ok(())
                        } else {
                            Err(Error::ElectionNotLeader)
                        }
                    });
                if let Err(e) = p {
                    let _ = k.txn(resign_txn(&key, rev)).await;
                    return Err(e);
                }
            }
        }
        // Withdrawn when the caller goes away while waiting; after any other
        // failure the key stays, as in etcd.
        let cleanup = k.cleanup(resign_txn(&key, rev));
        let waited = k.wait_deletes(&pfx, rev - 1).await;
        cleanup.disarm();
        waited?;
        Ok(CampaignResponse {
            header: resp.header,
            leader: Some(LeaderKey {
                name: r.name,
                key,
                rev,
                lease,
            }),
        })
    }

    async fn proclaim(&self, r: ProclaimRequest) -> Result<ProclaimResponse> {
        let l = r.leader.ok_or(Error::LeaderKeyMissing)?;
        let k = &self.kit;
        let lease = k.session(l.lease).await?;
        let resp = k.txn(proclaim_txn(&l.key, l.rev, lease, r.value)).await?;
        if !resp.succeeded {
            return Err(Error::ElectionNotLeader);
        }
        Ok(ProclaimResponse {
            header: resp.header,
        })
    }

    async fn resign(&self, r: ResignRequest) -> Result<ResignResponse> {
        let l = r.leader.ok_or(Error::LeaderKeyMissing)?;
        let k = &self.kit;
        k.session(l.lease).await?;
        let resp = k.txn(resign_txn(&l.key, l.rev)).await?;
        Ok(ResignResponse {
            header: resp.header,
        })
    }

    async fn leader(&self, r: LeaderRequest) -> Result<LeaderResponse> {
        let (header, kv) = self.kit.oldest(&prefix(&r.name)).await?;
        let kv = kv.ok_or(Error::ElectionNoLeader)?;
        Ok(LeaderResponse {
            header,
            kv: Some(kv),
        })
    }
}

/// Streams an election's leaders to `out` until the receiver goes or a read
/// fails (etcd's `observe`).
async fn observe(kit: Kit, name: Vec<u8>, out: mpsc::Sender<Result<LeaderResponse, Status>>) {
    let pfx = prefix(&name);
    loop {
        let Ok((header, kv)) = kit.oldest(&pfx).await else {
            return;
        };
        let (mut header, kv) = match kv {
            Some(kv) => (header.unwrap_or_default(), kv),
            None => {
                // No leader yet: wait for the first key put under the prefix.
                let from = header.as_ref().map(|h| h.revision).unwrap_or_default();
                let mut events = Events::new(&kit.s, pfx.clone(), prefix_end(&pfx), from);
                let first = loop {
                    let Ok((_, batch)) = events.next().await else {
                        return;
                    };
                    if let Some(kv) = batch
                        .into_iter()
                        .find(|e| e.r#type == EventType::Put as i32)
                        .and_then(|e| e.kv)
                    {
                        break kv;
                    }
                };
                (kit.s.header(first.mod_revision), first)
            }
        };
        let key = kv.key.clone();
        if out
            .send(Ok(LeaderResponse {
                header: Some(header),
                kv: Some(kv),
            }))
            .await
            .is_err()
        {
            return;
        }
        // Every new value of this leader's key, until it is deleted.
        let mut events = Events::new(&kit.s, key, Vec::new(), header.revision + 1);
        'leader: loop {
            let Ok((rev, batch)) = events.next().await else {
                return;
            };
            header = kit.s.header(rev);
            for e in batch {
                if e.r#type == EventType::Delete as i32 {
                    break 'leader;
                }
                let msg = LeaderResponse {
                    header: Some(header),
                    kv: e.kv,
                };
                if out.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        answer(
            SVC,
            "Campaign",
            ElectionService::campaign(self, req.into_inner()),
        )
        .await
    }

    async fn proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        answer(
            SVC,
            "Proclaim",
            ElectionService::proclaim(self, req.into_inner()),
        )
        .await
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        answer(
            SVC,
            "Leader",
            ElectionService::leader(self, req.into_inner()),
        )
        .await
    }

    type ObserveStream = ReceiverStream<Result<LeaderResponse, Status>>;

    async fn observe(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let name = req.into_inner().name;
        let (tx, rx) = mpsc::channel(16);
        let kit = self.kit.clone();
        tokio::spawn(async move {
            let gone = tx.clone();
            tokio::select! {
                _ = observe(kit, name, tx) => {}
                _ = gone.closed() => {}
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        answer(
            SVC,
            "Resign",
            ElectionService::resign(self, req.into_inner()),
        )
        .await
    }
}
