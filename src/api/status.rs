//! The one place where errors become gRPC statuses, with etcd's codes and texts.

use tonic::{Code, Status};

use crate::error::Error;

pub fn code_of(e: &Error) -> Code {
    use Error::*;
    match e {
        EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
        | RequestTooLarge | AuthFailed | UserEmpty | InvalidArgument(_) => Code::InvalidArgument,
        Compacted | FutureRev | LeaseTtlTooLarge => Code::OutOfRange,
        NoSpace | TooManyRequests | ReplyTooLarge { .. } => Code::ResourceExhausted,
        LeaseNotFound | MemberNotFound => Code::NotFound,
        LeaseExist | MemberExist | PeerUrlExist | NotLeader | AuthNotEnabled | MemberNotLearner
        | LearnerNotReady | BadLeaderTransferee => Code::FailedPrecondition,
        LeaderTransferTimeout => Code::DeadlineExceeded,
        Unhealthy | NoLeader | LeaderChanged | Timeout | Stopped | NotCapable => Code::Unavailable,
        Corrupt => Code::DataLoss,
        PermissionDenied => Code::PermissionDenied,
        InvalidAuthToken => Code::Unauthenticated,
        RootUserNotExist | RootRoleNotExist | UserAlreadyExist | UserNotFound
        | RoleAlreadyExist | RoleNotFound | RoleNotGranted | PermissionNotGranted => {
            Code::FailedPrecondition
        }
        RoleEmpty | PermissionNotGiven | InvalidAuthMgmt | AuthOldRevision => Code::InvalidArgument,
        // etcd 3.4 maps no gRPC code to NotEnoughStartedMembers.
        VerifyOnly | AuthStore(_) | NotEnoughStartedMembers => Code::Unknown,
        ElectionNotLeader | ElectionNoLeader | LeaderKeyMissing | SessionExpired => Code::Unknown,
        Unimplemented | StreamSortOrder | StreamRevisionFilter => Code::Unimplemented,
        Storage(_) => Code::Internal,
    }
}

pub fn to_status(e: Error) -> Status {
    Status::new(code_of(&e), e.to_string())
}

/// An error of the Lock and Election services. etcd runs them as clients of
/// its own KV and lease services and returns what those calls fail with as a
/// plain error: every code becomes Unknown, the text stays.
pub fn unmapped(e: Error) -> Status {
    Status::new(Code::Unknown, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_and_codes_match_etcd() {
        let s = to_status(Error::Compacted);
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let s = to_status(Error::NoSpace);
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.message(), "etcdserver: mvcc: database space exceeded");
        assert_eq!(to_status(Error::LeaseNotFound).code(), Code::NotFound);
        assert_eq!(
            to_status(Error::NoLeader).message(),
            "etcdserver: no leader"
        );
    }
}
