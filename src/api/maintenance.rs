//! etcdserverpb.Maintenance: status, alarms, hashes, defragmentation and snapshots.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::unary;
use crate::config::SERVER_VERSION;
use crate::error::{Error, Result};
use crate::metrics;
use crate::pb::etcdserverpb::maintenance_server::Maintenance;
use crate::pb::etcdserverpb::{
    AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse,
    MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest,
    StatusResponse, alarm_request,
};
use crate::server::{Applied, EtcdServer, Op};
use crate::storage::snapshot;

const SVC: &str = "etcdserverpb.Maintenance";
const CHUNK: usize = 32 * 1024;

pub struct MaintenanceService {
    pub s: Arc<EtcdServer>,
}

fn alarm_name(a: i32) -> &'static str {
    match AlarmType::try_from(a) {
        Ok(AlarmType::Nospace) => "NOSPACE",
        Ok(AlarmType::Corrupt) => "CORRUPT",
        _ => "NONE",
    }
}

impl MaintenanceService {
    async fn alarm(&self, r: AlarmRequest) -> Result<AlarmResponse> {
        match alarm_request::AlarmAction::try_from(r.action) {
            Ok(alarm_request::AlarmAction::Get) | Err(_) => {
                let mut alarms = self.s.alarms.list();
                if r.alarm != AlarmType::None as i32 {
                    alarms.retain(|a| a.alarm == r.alarm);
                }
                if r.member_id != 0 {
                    alarms.retain(|a| a.member_id == r.member_id);
                }
                // etcd 3.4's alarm answers carry no header.
                Ok(AlarmResponse {
                    header: None,
                    alarms,
                })
            }
            _ => match self.s.propose(Op::Alarm(r)).await? {
                Applied::Alarm(mut a) => {
                    a.header = None;
                    Ok(a)
                }
                _ => Err(Error::Storage("unexpected apply result".into())),
            },
        }
    }

    async fn status(&self) -> StatusResponse {
        let in_use = self.s.size_in_use().await;
        let st = &self.s.status;
        StatusResponse {
            header: Some(self.s.header(self.s.store.current_rev())),
            version: SERVER_VERSION.to_string(),
            db_size: self.s.backend.size() as i64,
            leader: st.leader.load(Ordering::Relaxed),
            raft_index: st.commit.load(Ordering::Relaxed),
            raft_term: st.term.load(Ordering::Relaxed),
            raft_applied_index: st.applied.load(Ordering::Relaxed),
            errors: self
                .s
                .alarms
                .list()
                .into_iter()
                .map(|a| format!("memberID:{} alarm:{} ", a.member_id, alarm_name(a.alarm)))
                .collect(),
            db_size_in_use: i64::try_from(in_use).unwrap_or(i64::MAX),
            is_learner: self
                .s
                .cluster
                .get(self.s.member_id())
                .is_some_and(|m| m.is_learner),
            storage_version: "3.5.0".into(),
            db_size_quota: self.s.quota_bytes() as i64,
            downgrade_info: None,
        }
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let r = MaintenanceService::alarm(self, req.into_inner()).await;
        unary(SVC, "Alarm", r)
    }

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        unary(SVC, "Status", Ok(MaintenanceService::status(self).await))
    }

    async fn defragment(
        &self,
        _req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        crate::info!("starting defragment");
        metrics::DEFRAG_INFLIGHT.set(1);
        let start = std::time::Instant::now();
        // As etcd's, the answer carries no header.
        let r = self
            .s
            .defragment()
            .await
            .map(|_| DefragmentResponse { header: None });
        metrics::DEFRAG_INFLIGHT.set(0);
        metrics::BACKEND_DEFRAG.observe(start.elapsed());
        crate::info!("finished defragment", db_size = self.s.backend.size());
        unary(SVC, "Defragment", r)
    }

    async fn hash(&self, _req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let start = std::time::Instant::now();
        let r = self
            .s
            .store
            .hash_kv(0)
            .await
            .map(|(hash, _, rev)| HashResponse {
                header: Some(self.s.header(rev)),
                hash,
            });
        metrics::MVCC_HASH.observe(start.elapsed());
        unary(SVC, "Hash", r)
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let start = std::time::Instant::now();
        let r = self
            .s
            .store
            .hash_kv(req.get_ref().revision)
            .await
            .map(|(hash, compact, rev)| HashKvResponse {
                header: Some(self.s.header(self.s.store.current_rev())),
                hash,
                // etcd answers -1 for a keyspace never compacted.
                compact_revision: if compact > 0 { compact } else { -1 },
                hash_revision: rev,
            });
        metrics::MVCC_HASH_REV.observe(start.elapsed());
        unary(SVC, "HashKV", r)
    }

    type SnapshotStream = ReceiverStream<Result<SnapshotResponse, Status>>;

    async fn snapshot(
        &self,
        _req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let start = std::time::Instant::now();
        let s = self.s.clone();
        let path = s
            .cfg
            .data_dir
            .join("member")
            .join(format!("snapshot-{}.tmp", s.ids.next()));
        let p2 = path.clone();
        let backend = s.backend.clone();
        let size = tokio::task::spawn_blocking(move || snapshot::save(&backend, &p2))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| super::status::to_status(e.into()))?;
        crate::info!("sending database snapshot to client", size = size);
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let res: std::io::Result<()> = async {
                let mut f = tokio::fs::File::open(&path).await?;
                let mut remaining = size;
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let n = f.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    remaining = remaining.saturating_sub(n as u64);
                    let resp = SnapshotResponse {
                        header: Some(s.header(s.store.current_rev())),
                        remaining_bytes: remaining,
                        blob: buf[..n].to_vec(),
                        version: SERVER_VERSION.to_string(),
                    };
                    if tx.send(Ok(resp)).await.is_err() {
                        break;
                    }
                }
                Ok(())
            }
            .await;
            match res {
                Ok(()) => metrics::BACKEND_SNAPSHOT.observe(start.elapsed()),
                Err(e) => {
                    let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                }
            }
            let _ = tokio::fs::remove_file(&path).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = req.into_inner().target_id;
        let r = async {
            // As etcd: only the leader hands leadership over (etcdctl
            // move-leader sends the request to the leader's endpoint), to a
            // voting member.
            let me = self.s.member_id();
            if self.s.status.leader.load(Ordering::Relaxed) != me {
                return Err(Error::NotLeader);
            }
            match self.s.cluster.get(target) {
                Some(m) if !m.is_learner => {}
                _ => return Err(Error::BadLeaderTransferee),
            }
            if target != me {
                self.s.transfer_leader(target).await.map_err(|e| match e {
                    Error::Timeout => Error::LeaderTransferTimeout,
                    e => e,
                })?;
                crate::info!(
                    "leadership moved on request",
                    from = format!("{me:x}"),
                    to = format!("{target:x}")
                );
            }
            // As etcd's, the answer carries no header.
            Ok(MoveLeaderResponse { header: None })
        }
        .await;
        unary(SVC, "MoveLeader", r)
    }

    async fn downgrade(
        &self,
        _req: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        unary::<DowngradeResponse>(SVC, "Downgrade", Err(Error::NotCapable))
    }
}
