//! The errors a request can end with, in etcd's vocabulary. Each variant's text is
//! byte-identical to etcd's (clients match the strings); `api::status` maps them to
//! gRPC status codes in one place.

use crate::storage::StorageError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: member ID already exist")]
    MemberExist,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExist,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: not capable")]
    NotCapable,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// Authenticate on a member whose JWT key can only verify.
    #[error("auth: token signing attempted with verify-only key")]
    VerifyOnly,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: unimplemented")]
    Unimplemented,
    /// A RangeStream asked for an order other than by key, ascending (etcd 3.7).
    #[error("RangeStream does not support custom sort orders")]
    StreamSortOrder,
    /// A RangeStream with min/max mod/create revision filters (etcd 3.7).
    #[error("RangeStream does not support revision filters")]
    StreamRevisionFilter,
    /// An auth error as etcd 3.4's maintenance service returns it: the auth
    /// store's own text, unmapped (gRPC code Unknown).
    #[error("{}", auth_store_text(.0))]
    AuthStore(Box<Error>),
    /// Proclaim or Resign on a leader key that no longer leads (etcd's
    /// concurrency package's text).
    #[error("election: not leader")]
    ElectionNotLeader,
    /// Leader on an election without candidates.
    #[error("election: no leader")]
    ElectionNoLeader,
    /// Proclaim or Resign without a leader key.
    #[error("\"leader\" field must be provided")]
    LeaderKeyMissing,
    /// A lock whose key was deleted (its lease expired) while it waited.
    #[error("mutex: session is expired")]
    SessionExpired,
    /// A malformed request that etcd rejects in the gRPC layer.
    #[error("{0}")]
    InvalidArgument(String),
    /// Storage failed underneath a request; the member stops applying.
    #[error("etcdserver: storage failure: {0}")]
    Storage(String),
    /// A reply over the largest message the member sends (grpc-go's limit,
    /// which etcd sets to `math.MaxInt32`), in grpc-go's words.
    #[error("grpc: trying to send message larger than max ({len} vs. {max})")]
    ReplyTooLarge { len: u64, max: u64 },
}

/// The text etcd's auth store gives an error before its gRPC layer maps it.
fn auth_store_text(e: &Error) -> String {
    match e {
        Error::UserEmpty => "auth: user name is empty".into(),
        Error::UserNotFound => "auth: user not found".into(),
        Error::PermissionDenied => "auth: permission denied".into(),
        Error::InvalidAuthToken => "auth: invalid auth token".into(),
        Error::AuthOldRevision => "auth: revision in header is old".into(),
        other => other.to_string(),
    }
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        Error::Storage(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
