//! etcdserverpb.Lease: grants and revokes go through Raft; keep-alives renew the
//! leader's in-memory deadline.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use parking_lot::Mutex;
use tonic::transport::Channel;

use crate::pb::etcdserverpb::lease_client::LeaseClient;
use std::time::Instant;

use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::{fill, unary};
use crate::error::{Error, Result};
use crate::lease::MAX_LEASE_TTL;
use crate::metrics;
use crate::pb::etcdserverpb::lease_server::Lease;
use crate::pb::etcdserverpb::{
    AlarmType, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::server::{Applied, EtcdServer, Op};

const SVC: &str = "etcdserverpb.Lease";

pub struct LeaseService {
    pub s: Arc<EtcdServer>,
    /// A client on the current leader, for requests a follower forwards.
    pub leader: Mutex<Option<(u64, LeaseClient<Channel>)>>,
}

impl LeaseService {
    pub(crate) async fn grant(&self, mut r: LeaseGrantRequest) -> Result<LeaseGrantResponse> {
        if r.ttl > MAX_LEASE_TTL {
            return Err(Error::LeaseTtlTooLarge);
        }
        if self.s.alarms.has(AlarmType::Nospace) {
            return Err(Error::NoSpace);
        }
        super::quota_check(&self.s, 64).await?;
        if r.id == 0 {
            r.id = (self.s.ids.next() & (i64::MAX as u64)) as i64;
        }
        metrics::LEASES_GRANTED.inc();
        metrics::LEASE_TTL.observe_value(r.ttl as f64);
        match self.s.propose(Op::LeaseGrant(r)).await? {
            Applied::LeaseGrant(mut g) => {
                fill(&self.s, &mut g.header);
                Ok(g)
            }
            _ => Err(Error::Storage("unexpected apply result".into())),
        }
    }

    async fn revoke(&self, r: LeaseRevokeRequest) -> Result<LeaseRevokeResponse> {
        metrics::LEASES_REVOKED.inc();
        match self.s.propose(Op::LeaseRevoke(r)).await? {
            Applied::LeaseRevoke(mut g) => {
                fill(&self.s, &mut g.header);
                Ok(g)
            }
            _ => Err(Error::Storage("unexpected apply result".into())),
        }
    }

    async fn ttl(
        &self,
        r: LeaseTimeToLiveRequest,
        token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    ) -> Result<LeaseTimeToLiveResponse> {
        if !self.s.status.is_leader.load(Ordering::Relaxed) {
            let mut c = self.leader_client().await?;
            let mut req = Request::new(r);
            if let Some(t) = token {
                req.metadata_mut().insert("token", t);
            }
            return c
                .lease_time_to_live(req)
                .await
                .map(|r| r.into_inner())
                .map_err(|_| Error::LeaderChanged);
        }
        self.s.read_barrier().await?;
        let header = Some(self.s.header(self.s.store.current_rev()));
        Ok(match self.s.lessor.get(r.id) {
            Some(l) => LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: l.remaining(Instant::now()),
                granted_ttl: l.ttl,
                keys: if r.keys {
                    l.keys.into_iter().collect()
                } else {
                    vec![]
                },
            },
            None => LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: -1,
                ..Default::default()
            },
        })
    }

    /// A lease client on the leader's client URL (keep-alives and TTLs are the
    /// leader's business, as in etcd, which forwards them the same way).
    async fn leader_client(&self) -> Result<LeaseClient<Channel>> {
        let leader = self.s.status.leader.load(Ordering::Relaxed);
        if leader == 0 {
            return Err(Error::NoLeader);
        }
        if let Some((id, c)) = self.leader.lock().clone()
            && id == leader
        {
            return Ok(c);
        }
        let url = self
            .s
            .cluster
            .get(leader)
            .and_then(|m| m.client_ur_ls.first().cloned())
            .ok_or(Error::NoLeader)?;
        let ch = if crate::net::is_unix(&url) {
            // A unix:// client URL: the leader's socket file.
            let path = crate::net::host_port(&url).to_string();
            tonic::transport::Endpoint::from_static("http://localhost")
                .connect_timeout(Duration::from_secs(2))
                .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                    let path = path.clone();
                    async move {
                        tokio::net::UnixStream::connect(path)
                            .await
                            .map(hyper_util::rt::TokioIo::new)
                    }
                }))
                .await
                .map_err(|_| Error::NoLeader)?
        } else {
            Channel::from_shared(url)
                .map_err(|_| Error::NoLeader)?
                .connect_timeout(Duration::from_secs(2))
                .connect()
                .await
                .map_err(|_| Error::NoLeader)?
        };
        let c = LeaseClient::new(ch);
        *self.leader.lock() = Some((leader, c.clone()));
        Ok(c)
    }

    pub(super) async fn keep_alive_one(&self, id: i64) -> Result<LeaseKeepAliveResponse> {
        if !self.s.status.is_leader.load(Ordering::Relaxed) {
            let mut c = self.leader_client().await?;
            let req = tokio_stream::once(LeaseKeepAliveRequest { id });
            let mut out = c
                .lease_keep_alive(req)
                .await
                .map_err(|_| Error::LeaderChanged)?
                .into_inner();
            return match out.message().await {
                Ok(Some(r)) => Ok(r),
                _ => Err(Error::LeaderChanged),
            };
        }
        let ttl = self.s.lessor.renew(id).unwrap_or(0);
        if ttl > 0 {
            metrics::LEASES_RENEWED.inc();
        }
        Ok(LeaseKeepAliveResponse {
            header: Some(self.s.header(self.s.store.current_rev())),
            id,
            ttl,
        })
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        unary(SVC, "LeaseGrant", self.grant(req.into_inner()).await)
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        unary(SVC, "LeaseRevoke", self.revoke(req.into_inner()).await)
    }

    type LeaseKeepAliveStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>,
    >;

    /// Answers each keep-alive as the response stream is polled for it: the
    /// stream reads the next request itself, with no task or queue between.
    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let this = LeaseService {
            s: self.s.clone(),
            leader: Mutex::new(None),
        };
        let answers = futures::stream::unfold(Some((req.into_inner(), this)), |state| async move {
            let (mut input, this) = state?;
            let r = match input.next().await? {
                Ok(r) => r,
                Err(e) => {
                    super::count_stream_failure(
                        &e,
                        &crate::metrics::KEEPALIVE_STREAM_RECEIVE_FAILURES,
                    );
                    return Some((Err(e), None));
                }
            };
            match this.keep_alive_one(r.id).await {
                Ok(resp) => Some((Ok(resp), Some((input, this)))),
                Err(e) => Some((Err(super::status::to_status(e)), None)),
            }
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        // A follower asks the leader on the caller's behalf, with the caller's token.
        let token = req.metadata().get("token").cloned();
        unary(
            SVC,
            "LeaseTimeToLive",
            self.ttl(req.into_inner(), token).await,
        )
    }

    async fn lease_leases(
        &self,
        _req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let r = async {
            self.s.read_barrier().await?;
            Ok(LeaseLeasesResponse {
                header: Some(self.s.header(self.s.store.current_rev())),
                leases: self
                    .s
                    .lessor
                    .ids()
                    .into_iter()
                    .map(|id| LeaseStatus { id })
                    .collect(),
            })
        }
        .await;
        unary(SVC, "LeaseLeases", r)
    }
}
