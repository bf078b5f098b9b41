//! Authorization before work: one table maps every gRPC method to the
//! permission it needs, and one layer in front of all services enforces it.
//!
//! The layer runs before tonic decodes a request, so no handler starts work
//! (a read barrier, a proposal, a hash, a defragmentation) for a caller that
//! may not make the call, and no handler checks anything itself. Checks that
//! depend on the request (the key ranges of a Range, Put, DeleteRange or Txn,
//! the keys attached to a lease, the user or role a management read names) are
//! made on the decoded first message, through [`Authorize`], which each such
//! request type implements. Watch is the one exception: its stream carries many
//! create requests, so the layer hands the resolved caller to the stream and the
//! stream checks each create request with [`watch_create`] before it creates
//! the watcher.
//!
//! What each method needs, and the error a refusal gives, follow etcd 3.4
//! (`IsAdminPermitted` for the root role, `isOpPermitted` for key ranges, a token
//! check for requests that go through its log, the unmapped auth-store errors of
//! its maintenance service), with deliberate exceptions where etcd 3.4 lets any
//! caller act: changing alarms and moving the leader need the root role, nested
//! txns are checked like the outer one, and a lease's time-to-live needs read
//! permission on its keys (the fix of CVE-2023-32082 in later etcd releases).
//! AuthStatus and Downgrade, which etcd 3.4 does not have, need the root role.
//! The Lock and Election services need what their KV operations need, and are
//! refused as etcd's services fail: the error's text with code Unknown, and a
//! refused Observe just ends.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};

use super::{concurrency, kv};
use crate::auth::{AuthStore, Caller};
use crate::error::{Error, Result};
use crate::lease::Lessor;
use crate::pb::etcdserverpb::{
    AlarmRequest, AuthRoleGetRequest, AuthUserGetRequest, DeleteRangeRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest,
    alarm_request, request_op,
};
use crate::pb::v3electionpb::{CampaignRequest, LeaderRequest, ProclaimRequest, ResignRequest};
use crate::pb::v3lockpb::{LockRequest, UnlockRequest};
use crate::server::EtcdServer;

/// What a method needs from its caller once auth is enabled.
#[derive(Clone, Copy)]
pub enum Need {
    /// Nothing: etcd does not even look at the token.
    Nothing,
    /// A valid token if one is given, no permission (etcd resolves the caller
    /// for requests it puts in its log, and refuses a bad token there).
    Caller,
    /// The root role.
    Admin,
    /// The check the decoded request makes ([`Authorize`]).
    Request(Check),
    /// Each message of the stream is checked by the service (Watch).
    PerMessage,
}

/// How a refusal reads.
#[derive(Clone, Copy)]
pub enum Refusal {
    /// etcd's gRPC error (`etcdserver: permission denied`, ...).
    Status,
    /// The auth store's own error, unmapped (`auth: permission denied`, code
    /// Unknown), as etcd 3.4's maintenance service returns it.
    AuthStore,
    /// etcd's gRPC error text with code Unknown, as etcd's Lock and Election
    /// services return what their internal KV calls fail with.
    Unmapped,
    /// No error at all: the stream ends at once without a message, as etcd's
    /// Observe ends when its first read is refused.
    EndStream,
}

/// Decodes a request and checks it; `None` when it does not decode (tonic then
/// refuses it before any handler runs).
pub type Check = fn(&Authz<'_>, &Caller, &[u8]) -> Option<Result<()>>;

/// What the checks of decoded requests read: the auth store, the leases (for
/// the keys attached to them) and the txn size limit.
pub struct Authz<'a> {
    pub auth: &'a AuthStore,
    pub lessor: &'a Lessor,
    pub max_txn_ops: usize,
}

impl<'a> Authz<'a> {
    pub fn of(s: &'a EtcdServer) -> Self {
        Authz {
            auth: &s.auth,
            lessor: &s.lessor,
            max_txn_ops: s.cfg.max_txn_ops,
        }
    }
}

/// A request whose permission depends on its contents.
pub trait Authorize: prost::Message + Default {
    fn authorize(&self, s: &Authz<'_>, c: &Caller) -> Result<()>;
}

fn check<T: Authorize>(s: &Authz<'_>, c: &Caller, msg: &[u8]) -> Option<Result<()>> {
    T::decode(msg).ok().map(|r| r.authorize(s, c))
}

/// Every gRPC method served on the client port, and what it needs.
pub const TABLE: &[(&str, Need, Refusal)] = &[
    (
        "/etcdserverpb.KV/Range",
        Need::Request(check::<RangeRequest>),
        Refusal::Status,
    ),
    (
        "/etcdserverpb.KV/RangeStream",
        Need::Request(check::<RangeRequest>),
        Refusal::Status,
    ),
    (
        "/etcdserverpb.KV/Put",
        Need::Request(check::<PutRequest>),
        Refusal::Status,
    ),
    (
        "/etcdserverpb.KV/DeleteRange",
        Need::Request(check::<DeleteRangeRequest>),
        Refusal::Status,
    ),
    (
        "/etcdserverpb.KV/Txn",
        Need::Request(check::<TxnRequest>),
        Refusal::Status,
    ),
    ("/etcdserverpb.KV/Compact", Need::Caller, Refusal::Status),
    (
        "/etcdserverpb.Watch/Watch",
        Need::PerMessage,
        Refusal::Status,
    ),
    (
        "/etcdserverpb.Lease/LeaseGrant",
        Need::Caller,
        Refusal::Status,
    ),
    (
        "/etcdserverpb.Lease/LeaseRevoke",
        Need::Request(check::<LeaseRevokeRequest>),
        Refusal::Status,
    ),
    (
        "/etcdserverpb.Lease/LeaseKeepAlive",
        Need::Nothing,
        Refusal::Status,
    ),
    (
        "/etcdserverpb.Lease/LeaseTimeToLive",
        Need::Request(check::<LeaseTimeToLiveRequest>),
        Refusal::Status,
    ),
    (
        "/etcdserverpb.Lease/LeaseLeases",
        Need::Nothing,
        Refusal::Status,
    ),
    (
        "/etcdserverpb.Cluster/MemberAdd",
        Need::Admin,
        Refusal::Status,
    ),
    (
        "/etcdserverpb.Cluster/MemberRemove",
        Need::Admin,
        Refusal::Status,
    ),
    (
        "/etcdserverpb.Cluster/MemberUpdate",
        Need::Admin,
        Refusal::Status,
    ),
    (
        "/etcdserverpb.Cluster/MemberList",
        Need::Nothing,
        Refusal::Status,
    ),
    (
        "/etcdserverpb.Cluster/MemberPromote",
        Need::Admin,
        Refusal::Status,
    ),
    (
        "/etcdserverpb.Maintenance/Alarm",
        Need::Request(check::<AlarmRequest>),
        Refusal::AuthStore,
    ),
    (
        "/etcdserverpb.Maintenance/Status",
        Need::Nothing,
        Refusal::Status,
    ),
    (
        "/etcdserverpb.Maintenance/Defragment",
        Need::Admin,
        Refusal::AuthStore,
    ),
    (
        "/etcdserverpb.Maintenance/Hash",
        Need::Admin,
        Refusal::AuthStore,
    ),
    (
        "/etcdserverpb.Maintenance/HashKV",
        Need::Admin,
        Refusal::AuthStore,
    ),
    (
        "/etcdserverpb.Maintenance/Snapshot",
        Need::Admin,
        Refusal::AuthStore,
    ),
    (
        "/etcdserverpb.Maintenance/MoveLeader",
        Need::Admin,
        Refusal::AuthStore,
    ),
    (
        "/etcdserverpb.Maintenance/Downgrade",
        Need::Admin,
        Refusal::AuthStore,
    ),
    (
        "/etcdserverpb.Auth/AuthEnable",
        Need::Admin,
        Refusal::Status,
    ),
    (
        "/etcdserverpb.Auth/AuthDisable",
        Need::Admin,
        Refusal::Status,
    ),
    (
        "/etcdserverpb.Auth/AuthStatus",
        Need::Admin,
        Refusal::Status,
    ),
    (
        "/etcdserverpb.Auth/Authenticate",
        Need::Nothing,
        Refusal::Status,
    ),
    ("/etcdserverpb.Auth/UserAdd", Need::Admin, Refusal::Status),
    (
        "/etcdserverpb.Auth/UserGet",
        Need::Request(check::<AuthUserGetRequest>),
        Refusal::Status,
    ),
    ("/etcdserverpb.Auth/UserList", Need::Admin, Refusal::Status),
    (
        "/etcdserverpb.Auth/UserDelete",
        Need::Admin,
        Refusal::Status,
    ),
    (
        "/etcdserverpb.Auth/UserChangePassword",
        Need::Admin,
        Refusal::Status,
    ),
    (
        "/etcdserverpb.Auth/UserGrantRole",
        Need::Admin,
        Refusal::Status,
    ),
    (
        "/etcdserverpb.Auth/UserRevokeRole",
        Need::Admin,
        Refusal::Status,
    ),
    ("/etcdserverpb.Auth/RoleAdd", Need::Admin, Refusal::Status),
    (
        "/etcdserverpb.Auth/RoleGet",
        Need::Request(check::<AuthRoleGetRequest>),
        Refusal::Status,
    ),
    ("/etcdserverpb.Auth/RoleList", Need::Admin, Refusal::Status),
    (
        "/etcdserverpb.Auth/RoleDelete",
        Need::Admin,
        Refusal::Status,
    ),
    (
        "/etcdserverpb.Auth/RoleGrantPermission",
        Need::Admin,
        Refusal::Status,
    ),
    (
        "/etcdserverpb.Auth/RoleRevokePermission",
        Need::Admin,
        Refusal::Status,
    ),
    (
        "/v3lockpb.Lock/Lock",
        Need::Request(check::<LockRequest>),
        Refusal::Unmapped,
    ),
    (
        "/v3lockpb.Lock/Unlock",
        Need::Request(check::<UnlockRequest>),
        Refusal::Unmapped,
    ),
    (
        "/v3electionpb.Election/Campaign",
        Need::Request(check::<CampaignRequest>),
        Refusal::Unmapped,
    ),
    (
        "/v3electionpb.Election/Proclaim",
        Need::Request(check::<ProclaimRequest>),
        Refusal::Unmapped,
    ),
    (
        "/v3electionpb.Election/Leader",
        Need::Request(check::<LeaderRequest>),
        Refusal::Unmapped,
    ),
    (
        "/v3electionpb.Election/Observe",
        Need::Request(check::<LeaderRequest>),
        Refusal::EndStream,
    ),
    (
        "/v3electionpb.Election/Resign",
        Need::Request(check::<ResignRequest>),
        Refusal::Unmapped,
    ),
    (
        "/grpc.health.v1.Health/Check",
        Need::Nothing,
        Refusal::Status,
    ),
    (
        "/grpc.health.v1.Health/Watch",
        Need::Nothing,
        Refusal::Status,
    ),
];

type Rule = (&'static str, Need, Refusal);

static BY_PATH: LazyLock<HashMap<&'static str, Rule>> =
    LazyLock::new(|| TABLE.iter().map(|&rule| (rule.0, rule)).collect());

/// The table's row for `path`; `None` for a method not in the table.
pub fn need(path: &str) -> Option<Rule> {
    BY_PATH.get(path).copied()
}

/// The caller of a stream whose messages are checked one by one, as the layer
/// resolved it (a bad token is an error for each message, as in etcd).
#[derive(Debug, Clone)]
pub struct Resolved(pub Result<Caller>);

/// The caller from the `token` metadata (or `authorization`, as the HTTP
/// gateway sends it), else the client certificate's common name.
fn caller(s: &EtcdServer, req: &Request) -> Result<Caller> {
    let h = req.headers();
    let token = h
        .get("token")
        .or_else(|| h.get("authorization"))
        .and_then(|v| v.to_str().ok());
    let cn = req
        .extensions()
        .get::<super::PeerCn>()
        .map(|c| c.0.as_str());
    s.auth.caller(token, cn)
}

/// The one authorization step in front of every gRPC service (see
/// `front.rs`): the request to pass on, or the answer that refuses it.
pub async fn admit(s: &Arc<EtcdServer>, mut req: Request) -> Result<Request, Response> {
    let Some((_, need, refusal)) = need(req.uri().path()) else {
        if !is_grpc(&req) {
            // A plain HTTP request for a path nothing serves: Go's answer.
            return Err((
                axum::http::StatusCode::NOT_FOUND,
                [
                    (
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; charset=utf-8",
                    ),
                    (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                ],
                "404 page not found\n",
            )
                .into_response());
        }
        // Fail closed: a method nobody classified is not served.
        return Err(tonic::Status::unimplemented("").into_http());
    };
    if !s.auth.enabled() {
        if let Need::PerMessage = need {
            req.extensions_mut().insert(Resolved(Ok(Caller::Anyone)));
        }
        return Ok(req);
    }
    let verdict = match need {
        Need::Nothing => Ok(()),
        Need::Caller => caller(s, &req).map(|_| ()),
        Need::Admin => caller(s, &req).and_then(|c| s.auth.check_admin(&c)),
        Need::PerMessage => {
            let who = caller(s, &req);
            req.extensions_mut().insert(Resolved(who));
            Ok(())
        }
        Need::Request(chk) => match caller(s, &req) {
            Err(e) => Err(e),
            Ok(c) => {
                let limit = s.cfg.max_request_bytes + super::GRPC_OVERHEAD_BYTES;
                let (parts, body) = req.into_parts();
                let (first, body) = match super::message::first_message(body, limit).await {
                    Ok(x) => x,
                    // The message limit's refusal, or a broken body.
                    Err(e) => return Err(deny(tonic::Status::from_error(Box::new(e)))),
                };
                req = Request::from_parts(parts, body);
                match first.as_deref().and_then(|m| chk(&Authz::of(s), &c, m)) {
                    Some(r) => r,
                    // Undecodable: tonic refuses it the same way.
                    None => Ok(()),
                }
            }
        },
    };
    Err(match (verdict, refusal) {
        (Ok(()), _) => return Ok(req),
        (Err(e), Refusal::Status) => deny(super::status::to_status(e)),
        (Err(e), Refusal::AuthStore) => {
            deny(super::status::to_status(Error::AuthStore(Box::new(e))))
        }
        (Err(e), Refusal::Unmapped) => deny(super::status::unmapped(e)),
        (Err(_), Refusal::EndStream) => deny(tonic::Status::new(tonic::Code::Ok, "")),
    })
}

/// Whether a request is a gRPC call (by its content type, as gRPC servers tell).
fn is_grpc(req: &Request) -> bool {
    req.headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Answers a refused call (the `msgsize` layer in front counts it as the
/// service would have).
fn deny(st: tonic::Status) -> Response {
    st.into_http()
}

/// The service and method names in `path`.
#[cfg(test)]
fn names(path: &'static str) -> Option<(&'static str, &'static str)> {
    path.trim_start_matches('/').split_once('/')
}

// As etcd, a KV request is validated before its permissions are checked.

impl Authorize for RangeRequest {
    fn authorize(&self, s: &Authz<'_>, c: &Caller) -> Result<()> {
        kv::check_range(self)?;
        s.auth.check(c, false, &self.key, &self.range_end)
    }
}

/// As etcd: writing a key with a lease needs write permission on the keys
/// already attached to it (whoever may write them may revoke the lease).
fn lease_keys(s: &Authz<'_>, c: &Caller, lease: i64, write: bool) -> Result<()> {
    if lease == 0 {
        return Ok(());
    }
    if let Some(l) = s.lessor.get(lease) {
        for k in &l.keys {
            s.auth.check(c, write, k, &[])?;
        }
    }
    Ok(())
}

impl Authorize for PutRequest {
    fn authorize(&self, s: &Authz<'_>, c: &Caller) -> Result<()> {
        kv::check_put(self)?;
        s.auth.check(c, true, &self.key, &[])?;
        lease_keys(s, c, self.lease, true)?;
        if self.prev_kv {
            s.auth.check(c, false, &self.key, &[])?;
        }
        Ok(())
    }
}

impl Authorize for DeleteRangeRequest {
    fn authorize(&self, s: &Authz<'_>, c: &Caller) -> Result<()> {
        kv::check_delete(self)?;
        s.auth.check(c, true, &self.key, &self.range_end)?;
        if self.prev_kv {
            s.auth.check(c, false, &self.key, &self.range_end)?;
        }
        Ok(())
    }
}

fn ops(s: &Authz<'_>, c: &Caller, ops: &[RequestOp]) -> Result<()> {
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                s.auth.check(c, false, &r.key, &r.range_end)?
            }
            Some(request_op::Request::RequestPut(p)) => s.auth.check(c, true, &p.key, &[])?,
            Some(request_op::Request::RequestDeleteRange(d)) => {
                if d.prev_kv {
                    s.auth.check(c, false, &d.key, &d.range_end)?;
                }
                s.auth.check(c, true, &d.key, &d.range_end)?;
            }
            Some(request_op::Request::RequestTxn(t)) => txn(s, c, t)?,
            None => {}
        }
    }
    Ok(())
}

/// Every compare needs read permission, every op its own, in both branches.
fn txn(s: &Authz<'_>, c: &Caller, t: &TxnRequest) -> Result<()> {
    for cmp in &t.compare {
        s.auth.check(c, false, &cmp.key, &cmp.range_end)?;
    }
    ops(s, c, &t.success)?;
    ops(s, c, &t.failure)
}

impl Authorize for TxnRequest {
    fn authorize(&self, s: &Authz<'_>, c: &Caller) -> Result<()> {
        kv::check_txn(self, s.max_txn_ops)?;
        txn(s, c, self)
    }
}

impl Authorize for LeaseRevokeRequest {
    /// Revoking deletes the lease's keys: write permission on each.
    fn authorize(&self, s: &Authz<'_>, c: &Caller) -> Result<()> {
        lease_keys(s, c, self.id, true)
    }
}

impl Authorize for LeaseTimeToLiveRequest {
    /// The answer can name the lease's keys: read permission on each.
    fn authorize(&self, s: &Authz<'_>, c: &Caller) -> Result<()> {
        lease_keys(s, c, self.id, false)
    }
}

impl Authorize for AlarmRequest {
    /// Listing alarms is open (health checks do it); changing them is not.
    fn authorize(&self, s: &Authz<'_>, c: &Caller) -> Result<()> {
        if self.action == alarm_request::AlarmAction::Get as i32 {
            Ok(())
        } else {
            s.auth.check_admin(c)
        }
    }
}

impl Authorize for AuthUserGetRequest {
    /// The root role, or the user reading themself (as etcd, by name).
    fn authorize(&self, s: &Authz<'_>, c: &Caller) -> Result<()> {
        match (s.auth.check_admin(c), c) {
            (Err(_), Caller::User(u)) if *u == self.name => Ok(()),
            (r, _) => r,
        }
    }
}

impl Authorize for AuthRoleGetRequest {
    /// The root role, or a user reading one of their roles.
    fn authorize(&self, s: &Authz<'_>, c: &Caller) -> Result<()> {
        match (s.auth.check_admin(c), c) {
            (Err(_), Caller::User(u))
                if s.auth.user(u).is_some_and(|x| x.roles.contains(&self.role)) =>
            {
                Ok(())
            }
            (r, _) => r,
        }
    }
}

// The Lock and Election services act on keys under a name: `name/` and its
// prefix range. etcd makes their KV calls as the caller; the permissions
// those calls need are checked here, before any work (etcd grants the
// session lease of a request without a lease first, then fails).

/// A new candidate or waiter under `name` with `lease`: read permission on
/// the prefix (the owner lookup and the wait) and write permission on its key
/// (on the whole prefix when the lease, hence the key, is yet unknown), and the
/// permission writing a key with that lease needs.
fn join(s: &Authz<'_>, c: &Caller, name: &[u8], lease: i64) -> Result<()> {
    let pfx = concurrency::prefix(name);
    let end = concurrency::prefix_end(&pfx);
    s.auth.check(c, false, &pfx, &end)?;
    if lease == 0 {
        return s.auth.check(c, true, &pfx, &end);
    }
    s.auth
        .check(c, true, &concurrency::lease_key(&pfx, lease), &[])?;
    lease_keys(s, c, lease, true)
}

impl Authorize for LockRequest {
    fn authorize(&self, s: &Authz<'_>, c: &Caller) -> Result<()> {
        join(s, c, &self.name, self.lease)
    }
}

impl Authorize for CampaignRequest {
    fn authorize(&self, s: &Authz<'_>, c: &Caller) -> Result<()> {
        join(s, c, &self.name, self.lease)
    }
}

impl Authorize for UnlockRequest {
    /// A delete of the key.
    fn authorize(&self, s: &Authz<'_>, c: &Caller) -> Result<()> {
        DeleteRangeRequest {
            key: self.key.clone(),
            ..Default::default()
        }
        .authorize(s, c)
    }
}

impl Authorize for LeaderRequest {
    /// A read of the prefix (Leader, and Observe, which also watches it).
    fn authorize(&self, s: &Authz<'_>, c: &Caller) -> Result<()> {
        let pfx = concurrency::prefix(&self.name);
        s.auth.check(c, false, &pfx, &concurrency::prefix_end(&pfx))
    }
}

/// A txn comparing the leader key, then writing it: read and write permission
/// on it, and for a put the permission writing a key with its lease needs.
/// Without a leader key the service answers its own error.
fn leader_key(
    s: &Authz<'_>,
    c: &Caller,
    l: Option<&crate::pb::v3electionpb::LeaderKey>,
    put: bool,
) -> Result<()> {
    let Some(l) = l else { return Ok(()) };
    if l.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    s.auth.check(c, false, &l.key, &[])?;
    s.auth.check(c, true, &l.key, &[])?;
    if put {
        lease_keys(s, c, l.lease, true)?;
    }
    Ok(())
}

impl Authorize for ProclaimRequest {
    fn authorize(&self, s: &Authz<'_>, c: &Caller) -> Result<()> {
        leader_key(s, c, self.leader.as_ref(), true)
    }
}

impl Authorize for ResignRequest {
    fn authorize(&self, s: &Authz<'_>, c: &Caller) -> Result<()> {
        leader_key(s, c, self.leader.as_ref(), false)
    }
}

/// A watch's create request: read permission on its range. The error is etcd's
/// cancel reason, the full gRPC status text.
pub fn watch_create(s: &EtcdServer, who: &Resolved, c: &WatchCreateRequest) -> Result<(), String> {
    let key: &[u8] = if c.key.is_empty() { &[0] } else { &c.key };
    who.0
        .clone()
        .and_then(|who| s.auth.check(&who, false, key, &c.range_end))
        .map_err(|e| {
            let st = super::status::to_status(e);
            format!("rpc error: code = {:?} desc = {}", st.code(), st.message())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every method the generated servers route is in the table, and the table
    /// names no method that does not exist: a new RPC cannot be served without
    /// a decision on what it needs.
    #[test]
    fn every_method_is_in_the_table() {
        let generated = [
            include_str!("../pb/etcdserverpb.rs"),
            include_str!("../pb/v3lockpb.rs"),
            include_str!("../pb/v3electionpb.rs"),
        ];
        let mut served: Vec<&str> = generated
            .iter()
            .flat_map(|g| g.split('"'))
            .filter(|s| {
                ["/etcdserverpb.", "/v3lockpb.", "/v3electionpb."]
                    .iter()
                    .any(|p| s.starts_with(p))
                    && s.matches('/').count() == 2
            })
            .collect();
        served.sort();
        served.dedup();
        assert!(served.len() >= 48, "found only {served:?}");
        for m in &served {
            assert!(need(m).is_some(), "{m} is not in the authorization table");
        }
        for (p, _, _) in TABLE {
            assert!(
                served.contains(p) || p.starts_with("/grpc.health.v1.Health/"),
                "{p} is in the table but not served"
            );
            assert!(names(p).is_some());
        }
        assert_eq!(BY_PATH.len(), TABLE.len(), "a method is in the table twice");
    }

    #[test]
    fn watch_cancel_reasons_are_etcds() {
        let st = super::super::status::to_status(Error::UserEmpty);
        assert_eq!(
            format!("rpc error: code = {:?} desc = {}", st.code(), st.message()),
            "rpc error: code = InvalidArgument desc = etcdserver: user name is empty"
        );
    }
}
