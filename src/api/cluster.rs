//! etcdserverpb.Cluster: the member list and membership changes, each one Raft
//! configuration change at a time.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use raft::eraftpb::{ConfChange, ConfChangeType};
use tonic::{Request, Response, Status};

use super::unary;
use crate::error::{Error, Result};
use crate::membership;
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use crate::server::{Applied, EtcdServer, Op};

const SVC: &str = "etcdserverpb.Cluster";

pub struct ClusterService {
    pub s: Arc<EtcdServer>,
}

fn cc(kind: ConfChangeType, id: u64, ctx: Option<&Member>) -> ConfChange {
    let mut cc = ConfChange::default();
    cc.set_change_type(kind);
    cc.node_id = id;
    if let Some(m) = ctx {
        cc.context = prost::Message::encode_to_vec(m).into();
    }
    cc
}

fn members_of(a: Applied) -> (Option<Member>, Vec<Member>) {
    match a {
        Applied::Members { member, members } => (member, members),
        _ => (None, vec![]),
    }
}

impl ClusterService {
    /// etcd's --strict-reconfig-check: refuse a change that would leave fewer
    /// started voters than a quorum of the new configuration.
    fn check_quorum_after(&self, add: i64, removed: Option<u64>) -> Result<()> {
        if !self.s.cfg.strict_reconfig_check {
            return Ok(());
        }
        let voters: Vec<Member> = self
            .s
            .cluster
            .members()
            .into_iter()
            .filter(|m| !m.is_learner)
            .collect();
        // As etcd counts: the started voters that stay.
        let started = voters
            .iter()
            .filter(|m| !m.name.is_empty() && Some(m.id) != removed)
            .count() as i64;
        let size = voters.len() as i64 + add;
        let quorum = size / 2 + 1;
        // As etcd: a second member may always join a one-member cluster (how a
        // cluster restored from a snapshot or by --force-new-cluster grows again).
        if add > 0 && started == 1 && size == 2 {
            return Ok(());
        }
        if add > 0 && started < quorum {
            return Err(Error::NotEnoughStartedMembers);
        }
        if add < 0 && started < quorum {
            return Err(Error::NotEnoughStartedMembers);
        }
        Ok(())
    }

    /// Voters (this member included) reachable for at least etcd's health
    /// interval (5 s), and those that are not.
    fn connected_voters(&self) -> (usize, usize) {
        let since = std::time::Instant::now().checked_sub(std::time::Duration::from_secs(5));
        let (mut up, mut down) = (0, 0);
        for m in self
            .s
            .cluster
            .members()
            .into_iter()
            .filter(|m| !m.is_learner)
        {
            let ok = m.id == self.s.cluster.local_id
                || self
                    .s
                    .transport
                    .active_since(m.id)
                    .is_some_and(|t| since.is_none_or(|s| t <= s));
            if ok {
                up += 1;
            } else {
                down += 1;
            }
        }
        (up, down)
    }

    async fn add(&self, r: MemberAddRequest) -> Result<MemberAddResponse> {
        if r.peer_ur_ls.is_empty() {
            return Err(Error::InvalidArgument(
                "etcdserver: member peer URLs must be given".into(),
            ));
        }
        for m in self.s.cluster.members() {
            if m.peer_ur_ls.iter().any(|u| r.peer_ur_ls.contains(u)) {
                return Err(Error::PeerUrlExist);
            }
        }
        if !r.is_learner {
            self.check_quorum_after(1, None)?;
        }
        if self.s.cfg.strict_reconfig_check && self.connected_voters().1 > 0 {
            // As etcd: every voter must have been reachable for a while.
            return Err(Error::Unhealthy);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // As etcd: a member added at runtime gets an ID from its URLs, the
        // cluster token and the time.
        let id = membership::member_id(
            &r.peer_ur_ls,
            &format!("{}{now}", self.s.cfg.initial_cluster_token),
        );
        let m = Member {
            id,
            name: String::new(),
            peer_ur_ls: r.peer_ur_ls.clone(),
            client_ur_ls: vec![],
            is_learner: r.is_learner,
        };
        let kind = if r.is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        let (member, members) = members_of(self.s.conf_change(cc(kind, id, Some(&m))).await?);
        Ok(MemberAddResponse {
            // etcd's cluster answers carry no revision.
            header: Some(self.s.header(0)),
            member: member.or(Some(m)),
            members,
        })
    }

    async fn remove(&self, r: MemberRemoveRequest) -> Result<MemberRemoveResponse> {
        let Some(m) = self.s.cluster.get(r.id) else {
            return Err(Error::MemberNotFound);
        };
        if !m.is_learner {
            self.check_quorum_after(-1, Some(r.id))?;
            // As etcd: a member that is down may go; otherwise the voters
            // left must keep a quorum of members that are up.
            let up =
                r.id == self.s.cluster.local_id || self.s.transport.active_since(r.id).is_some();
            if self.s.cfg.strict_reconfig_check && up {
                let (active, down) = self.connected_voters();
                let voters = active + down;
                if active - 1 < 1 + (voters - 1) / 2 {
                    return Err(Error::Unhealthy);
                }
            }
        }
        let (_, members) = members_of(
            self.s
                .conf_change(cc(ConfChangeType::RemoveNode, r.id, None))
                .await?,
        );
        Ok(MemberRemoveResponse {
            // etcd's cluster answers carry no revision.
            header: Some(self.s.header(0)),
            members,
        })
    }

    async fn update(&self, r: MemberUpdateRequest) -> Result<MemberUpdateResponse> {
        if self.s.cluster.get(r.id).is_none() {
            return Err(Error::MemberNotFound);
        }
        for m in self.s.cluster.members() {
            if m.id != r.id && m.peer_ur_ls.iter().any(|u| r.peer_ur_ls.contains(u)) {
                return Err(Error::PeerUrlExist);
            }
        }
        let m = Member {
            id: r.id,
            peer_ur_ls: r.peer_ur_ls,
            ..Default::default()
        };
        let (_, members) = members_of(self.s.propose(Op::MemberUpdate(m)).await?);
        Ok(MemberUpdateResponse {
            // etcd's cluster answers carry no revision.
            header: Some(self.s.header(0)),
            members,
        })
    }

    async fn promote(&self, r: MemberPromoteRequest) -> Result<MemberPromoteResponse> {
        let Some(m) = self.s.cluster.get(r.id) else {
            return Err(Error::MemberNotFound);
        };
        if !m.is_learner {
            return Err(Error::MemberNotLearner);
        }
        let leader = self.s.status.is_leader.load(Ordering::Relaxed);
        if leader && !self.s.learner_ready(r.id).await? {
            crate::metrics::LEARNER_PROMOTE_NOT_READY.inc();
            return Err(Error::LearnerNotReady);
        }
        let (_, members) = members_of(
            self.s
                .conf_change(cc(ConfChangeType::AddNode, r.id, Some(&m)))
                .await?,
        );
        if leader {
            crate::metrics::LEARNER_PROMOTE_SUCCESSES.inc();
        }
        Ok(MemberPromoteResponse {
            // etcd's cluster answers carry no revision.
            header: Some(self.s.header(0)),
            members,
        })
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        unary(SVC, "MemberAdd", self.add(req.into_inner()).await)
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        unary(SVC, "MemberRemove", self.remove(req.into_inner()).await)
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        unary(SVC, "MemberUpdate", self.update(req.into_inner()).await)
    }

    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let r: Result<MemberListResponse> = async {
            if req.into_inner().linearizable {
                self.s.read_barrier().await?;
            }
            Ok(MemberListResponse {
                // etcd's cluster answers carry no revision.
                header: Some(self.s.header(0)),
                members: self.s.cluster.members(),
            })
        }
        .await;
        unary(SVC, "MemberList", r)
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        unary(SVC, "MemberPromote", self.promote(req.into_inner()).await)
    }
}
