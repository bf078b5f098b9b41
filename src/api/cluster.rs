//! etcdserverpb.Cluster: the member list. Membership changes need the peer
//! transport and are refused by a build without it.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::unary;
use crate::error::{Error, Result};
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use crate::server::EtcdServer;

const SVC: &str = "etcdserverpb.Cluster";

pub struct ClusterService {
    pub s: Arc<EtcdServer>,
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        unary(
            SVC,
            "MemberAdd",
            Err::<MemberAddResponse, _>(Error::NotCapable),
        )
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let r = if self.s.cluster.get(req.into_inner().id).is_none() {
            Err(Error::MemberNotFound)
        } else {
            Err(Error::NotCapable)
        };
        unary::<MemberRemoveResponse>(SVC, "MemberRemove", r)
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let r = if self.s.cluster.get(req.into_inner().id).is_none() {
            Err(Error::MemberNotFound)
        } else {
            Err(Error::NotCapable)
        };
        unary::<MemberUpdateResponse>(SVC, "MemberUpdate", r)
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
                header: Some(self.s.header(self.s.store.current_rev())),
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
        let r = if self.s.cluster.get(req.into_inner().id).is_none() {
            Err(Error::MemberNotFound)
        } else {
            Err(Error::MemberNotLearner)
        };
        unary::<MemberPromoteResponse>(SVC, "MemberPromote", r)
    }
}
