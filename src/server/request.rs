//! What travels through the Raft log: one [`InternalRequest`] per entry, and what
//! applying it produced.

use crate::pb::etcdserverpb::{
    AlarmRequest, AlarmResponse, CompactionRequest, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, Member, PutRequest, PutResponse, TxnRequest, TxnResponse,
};

#[derive(Clone, PartialEq, prost::Message)]
pub struct InternalRequest {
    /// Names the waiter on the proposing member.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(oneof = "Op", tags = "2, 3, 4, 5, 6, 7, 8, 9, 10")]
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
