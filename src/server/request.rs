//! What travels through the Raft log: one [`InternalRequest`] per entry, and what
//! applying it produced.

use crate::pb::etcdserverpb::{
    AlarmRequest, AlarmResponse, AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest,
    AuthRoleDeleteRequest, AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest,
    AuthUserAddRequest, AuthUserChangePasswordRequest, AuthUserDeleteRequest,
    AuthUserGrantRoleRequest, AuthUserRevokeRoleRequest, CompactionRequest, CompactionResponse,
    DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, Member, PutRequest, PutResponse, TxnRequest,
    TxnResponse,
};

#[derive(Clone, PartialEq, prost::Message)]
pub struct InternalRequest {
    /// Names the waiter on the proposing member.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(
        oneof = "Op",
        tags = "2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23"
    )]
    pub op: Option<Op>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Op {
    #[prost(message, tag = "2")]
    Put(PutRequest),
    #[prost(message, tag = "3")]
    DeleteRange(DeleteRangeRequest),
    #[prost(message, tag = "4")]
    Txn(TxnRequest),
    #[prost(message, tag = "5")]
    Compaction(CompactionRequest),
    #[prost(message, tag = "6")]
    LeaseGrant(LeaseGrantRequest),
    #[prost(message, tag = "7")]
    LeaseRevoke(LeaseRevokeRequest),
    #[prost(message, tag = "8")]
    Alarm(AlarmRequest),
    /// A member announces its name and client URLs.
    #[prost(message, tag = "9")]
    Publish(Member),
    /// New peer URLs for a member.
    #[prost(message, tag = "10")]
    MemberUpdate(Member),
    #[prost(message, tag = "11")]
    AuthEnable(AuthEnableRequest),
    #[prost(message, tag = "12")]
    AuthDisable(AuthDisableRequest),
    /// `hashed_password` is set; `password` is always empty in the log.
    #[prost(message, tag = "13")]
    UserAdd(AuthUserAddRequest),
    #[prost(message, tag = "14")]
    UserDelete(AuthUserDeleteRequest),
    /// `hashed_password` is set; `password` is always empty in the log.
    #[prost(message, tag = "15")]
    UserChangePassword(AuthUserChangePasswordRequest),
    #[prost(message, tag = "16")]
    UserGrantRole(AuthUserGrantRoleRequest),
    #[prost(message, tag = "17")]
    UserRevokeRole(AuthUserRevokeRoleRequest),
    #[prost(message, tag = "18")]
    RoleAdd(AuthRoleAddRequest),
    #[prost(message, tag = "19")]
    RoleDelete(AuthRoleDeleteRequest),
    #[prost(message, tag = "20")]
    RoleGrantPermission(AuthRoleGrantPermissionRequest),
    #[prost(message, tag = "21")]
    RoleRevokePermission(AuthRoleRevokePermissionRequest),
    /// A simple token for a user who authenticated on the proposing member.
    #[prost(message, tag = "22")]
    AssignToken(AssignToken),
    /// A member raises NOSPACE because its disk is full (an Activate
    /// request); it lifts the alarm itself with an ordinary Deactivate once
    /// space is freed.
    #[prost(message, tag = "23")]
    DiskFullAlarm(AlarmRequest),
}

impl Op {
    /// Whether applying this takes a bounded amount of work: a put, a
    /// single-key delete, a lease grant, or a transaction of single-key
    /// operations and compares. Such a write may be applied on a runtime
    /// thread (`Node::propose_here`); a range delete, a lease revoke (which
    /// deletes the lease's keys) or a compaction goes through the Raft loop.
    pub fn bounded(&self) -> bool {
        match self {
            Op::Put(_) | Op::LeaseGrant(_) => true,
            Op::DeleteRange(d) => d.range_end.is_empty(),
            Op::Txn(t) => txn_bounded(t),
            _ => false,
        }
    }
}

fn txn_bounded(t: &TxnRequest) -> bool {
    use crate::pb::etcdserverpb::request_op::Request;
    t.compare.iter().all(|c| c.range_end.is_empty())
        && t.success
            .iter()
            .chain(&t.failure)
            .all(|op| match &op.request {
                Some(Request::RequestRange(r)) => r.range_end.is_empty(),
                Some(Request::RequestPut(_)) | None => true,
                Some(Request::RequestDeleteRange(d)) => d.range_end.is_empty(),
                Some(Request::RequestTxn(t)) => txn_bounded(t),
            })
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AssignToken {
    #[prost(string, tag = "1")]
    pub user: String,
    #[prost(string, tag = "2")]
    pub token: String,
}

/// The result of applying one request.
#[derive(Debug, Clone)]
pub enum Applied {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    Alarm(AlarmResponse),
    /// A membership change: the member it concerned and the members after it.
    Members {
        member: Option<Member>,
        members: Vec<Member>,
    },
    Done,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::{RangeRequest, RequestOp, request_op::Request};

    fn put() -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest::default())),
        }
    }

    fn delete(range_end: &[u8]) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: b"a".to_vec(),
                range_end: range_end.to_vec(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn only_writes_of_bounded_work_are_bounded() {
        assert!(Op::Put(PutRequest::default()).bounded());
        assert!(Op::DeleteRange(DeleteRangeRequest::default()).bounded());
        assert!(
            !Op::DeleteRange(DeleteRangeRequest {
                range_end: b"\0".to_vec(),
                ..Default::default()
            })
            .bounded()
        );
        assert!(!Op::LeaseRevoke(LeaseRevokeRequest::default()).bounded());
        assert!(!Op::Compaction(CompactionRequest::default()).bounded());
        let single = TxnRequest {
            success: vec![put(), delete(b"")],
            failure: vec![RequestOp {
                request: Some(Request::RequestRange(RangeRequest::default())),
            }],
            ..Default::default()
        };
        assert!(Op::Txn(single.clone()).bounded());
        let nested = TxnRequest {
            failure: vec![RequestOp {
                request: Some(Request::RequestTxn(TxnRequest {
                    success: vec![delete(b"z")],
                    ..Default::default()
                })),
            }],
            ..single
        };
        assert!(!Op::Txn(nested).bounded());
    }
}
