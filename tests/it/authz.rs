//! Authorization before work, side by side with Debian's etcd 3.4: every RPC of
//! every service called with auth enabled by a caller without a token, with a
//! token that is not valid, and as a user without any role. Each call gets the
//! answer etcd gives (same code, same text) and changes nothing; where we are
//! deliberately stricter than etcd 3.4, the call is refused as the root check
//! refuses it. And an unauthenticated Defragment does not defragment.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_rs::pb::etcdserverpb::auth_client::AuthClient;
use etcd_rs::pb::etcdserverpb::cluster_client::ClusterClient;
use etcd_rs::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcd_rs::pb::etcdserverpb::kv_client::KvClient;
use etcd_rs::pb::etcdserverpb::lease_client::LeaseClient;
use etcd_rs::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_rs::pb::etcdserverpb::watch_client::WatchClient;
use etcd_rs::pb::etcdserverpb::*;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::cluster::Cluster;
use crate::harness::{Server, grpc_channel as channel_at, with_token as req};
use crate::security::{auth_setup, setup_users, sh_ok};

const LEASE: i64 = 7777;
const SECRET: &[u8] = b"/secret";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn channel(srv: &Server) -> Channel {
    channel_at(&srv.endpoint()).await
}

fn status(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// "ok" or the status, as code and text.
fn out<T>(r: Result<tonic::Response<T>, tonic::Status>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(s) => status(&s),
    }
}

async fn token(srv: &Server, user: &str, password: &str) -> String {
    token_at(&srv.endpoint(), user, password).await
}

async fn token_at(endpoint: &str, user: &str, password: &str) -> String {
    let mut a = AuthClient::new(channel_at(endpoint).await);
    a.authenticate(AuthenticateRequest {
        name: user.into(),
        password: password.into(),
    })
    .await
    .expect("authenticate")
    .into_inner()
    .token
}

/// The first message of a server stream, or the status that ended it.
async fn first<T>(
    r: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
) -> Result<T, String> {
    let mut s = r.map_err(|e| status(&e))?.into_inner();
    match tokio::time::timeout(Duration::from_secs(10), s.message()).await {
        Ok(Ok(Some(m))) => Ok(m),
        Ok(Ok(None)) => Err("stream ended".into()),
        Ok(Err(e)) => Err(status(&e)),
        Err(_) => Err("no answer in 10s".into()),
    }
}

/// Calls every RPC of every service once, as `token`'s caller, with requests
/// that would change the cluster if they were carried out. Returns each call's
/// outcome.
async fn probe(
    srv: &Server,
    token: Option<&str>,
    member: u64,
    peer: &str,
) -> Vec<(&'static str, String)> {
    let ch = channel(srv).await;
    let mut kv = KvClient::new(ch.clone());
    let mut lease = LeaseClient::new(ch.clone());
    let mut cluster = ClusterClient::new(ch.clone());
    let mut mt = MaintenanceClient::new(ch.clone());
    let mut auth = AuthClient::new(ch.clone());
    let t = token;
    let mut o: Vec<(&'static str, String)> = Vec::new();

    let range = RangeRequest {
        key: SECRET.to_vec(),
        ..Default::default()
    };
    o.push(("KV/Range", out(kv.range(req(range, t)).await)));
    let put = PutRequest {
        key: SECRET.to_vec(),
        value: b"changed".to_vec(),
        ..Default::default()
    };
    o.push(("KV/Put", out(kv.put(req(put.clone(), t)).await)));
    let del = DeleteRangeRequest {
        key: SECRET.to_vec(),
        ..Default::default()
    };
    o.push(("KV/DeleteRange", out(kv.delete_range(req(del, t)).await)));
    let txn = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Greater as i32,
            target: CompareTarget::Version as i32,
            key: SECRET.to_vec(),
            target_union: Some(TargetUnion::Version(0)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(put)),
        }],
        failure: vec![],
    };
    o.push(("KV/Txn", out(kv.txn(req(txn, t)).await)));
    let compact = CompactionRequest {
        revision: 1_000_000,
        physical: false,
    };
    o.push(("KV/Compact", out(kv.compact(req(compact, t)).await)));

    // Watch: the stream opens; the create request is refused in it.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: SECRET.to_vec(),
                ..Default::default()
            },
        )),
    })
    .await
    .expect("queue watch create");
    let w = WatchClient::new(ch.clone())
        .watch(req(ReceiverStream::new(rx), t))
        .await;
    let watch = match first(w).await {
        Ok(r) => format!(
            "created={} canceled={} id={} reason={}",
            r.created, r.canceled, r.watch_id, r.cancel_reason
        ),
        Err(e) => e,
    };
    drop(tx);
    o.push(("Watch/Watch", watch));

    // An existing ID: granting it again would fail anyway.
    let grant = LeaseGrantRequest { ttl: 60, id: LEASE };
    o.push((
        "Lease/LeaseGrant",
        out(lease.lease_grant(req(grant, t)).await),
    ));
    let revoke = LeaseRevokeRequest { id: LEASE };
    o.push((
        "Lease/LeaseRevoke",
        out(lease.lease_revoke(req(revoke, t)).await),
    ));
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(LeaseKeepAliveRequest { id: LEASE })
        .await
        .expect("queue keep-alive");
    let ka = lease
        .lease_keep_alive(req(ReceiverStream::new(rx), t))
        .await;
    o.push((
        "Lease/LeaseKeepAlive",
        match first(ka).await {
            Ok(r) => format!("ok id={}", r.id),
            Err(e) => e,
        },
    ));
    drop(tx);
    let ttl = LeaseTimeToLiveRequest {
        id: LEASE,
        keys: true,
    };
    o.push((
        "Lease/LeaseTimeToLive",
        out(lease.lease_time_to_live(req(ttl, t)).await),
    ));
    o.push((
        "Lease/LeaseLeases",
        out(lease.lease_leases(req(LeaseLeasesRequest {}, t)).await),
    ));

    let add = MemberAddRequest {
        peer_ur_ls: vec!["http://127.0.0.1:1".into()],
        is_learner: false,
    };
    o.push((
        "Cluster/MemberAdd",
        out(cluster.member_add(req(add, t)).await),
    ));
    let remove = MemberRemoveRequest { id: member };
    o.push((
        "Cluster/MemberRemove",
        out(cluster.member_remove(req(remove, t)).await),
    ));
    let update = MemberUpdateRequest {
        id: member,
        peer_ur_ls: vec![peer.to_string()],
    };
    o.push((
        "Cluster/MemberUpdate",
        out(cluster.member_update(req(update, t)).await),
    ));
    o.push((
        "Cluster/MemberList",
        out(cluster
            .member_list(req(MemberListRequest::default(), t))
            .await),
    ));
    let promote = MemberPromoteRequest { id: member };
    o.push((
        "Cluster/MemberPromote",
        out(cluster.member_promote(req(promote, t)).await),
    ));

    let get = AlarmRequest {
        action: alarm_request::AlarmAction::Get as i32,
        member_id: 0,
        alarm: AlarmType::None as i32,
    };
    o.push(("Maintenance/Alarm(get)", out(mt.alarm(req(get, t)).await)));
    let activate = AlarmRequest {
        action: alarm_request::AlarmAction::Deactivate as i32,
        member_id: member,
        alarm: AlarmType::Nospace as i32,
    };
    o.push((
        "Maintenance/Alarm(deactivate)",
        out(mt.alarm(req(activate, t)).await),
    ));
    o.push((
        "Maintenance/Status",
        out(mt.status(req(StatusRequest {}, t)).await),
    ));
    o.push((
        "Maintenance/Defragment",
        out(mt.defragment(req(DefragmentRequest {}, t)).await),
    ));
    o.push((
        "Maintenance/Hash",
        out(mt.hash(req(HashRequest {}, t)).await),
    ));
    o.push((
        "Maintenance/HashKV",
        out(mt.hash_kv(req(HashKvRequest { revision: 0 }, t)).await),
    ));
    let snap = mt.snapshot(req(SnapshotRequest {}, t)).await;
    o.push((
        "Maintenance/Snapshot",
        match first(snap).await {
            Ok(_) => "ok".into(),
            Err(e) => e,
        },
    ));
    let mv = MoveLeaderRequest { target_id: member };
    o.push((
        "Maintenance/MoveLeader",
        out(mt.move_leader(req(mv, t)).await),
    ));
    let down = DowngradeRequest {
        action: 0,
        version: "3.4.0".into(),
    };
    o.push((
        "Maintenance/Downgrade",
        out(mt.downgrade(req(down, t)).await),
    ));

    o.push((
        "Auth/AuthEnable",
        out(auth.auth_enable(req(AuthEnableRequest {}, t)).await),
    ));
    o.push((
        "Auth/AuthDisable",
        out(auth.auth_disable(req(AuthDisableRequest {}, t)).await),
    ));
    o.push((
        "Auth/AuthStatus",
        out(auth.auth_status(req(AuthStatusRequest {}, t)).await),
    ));
    let authn = AuthenticateRequest {
        name: "root".into(),
        password: "wrong".into(),
    };
    o.push((
        "Auth/Authenticate",
        out(auth.authenticate(req(authn, t)).await),
    ));
    let user_add = AuthUserAddRequest {
        name: "mallory".into(),
        password: "pw".into(),
        ..Default::default()
    };
    o.push(("Auth/UserAdd", out(auth.user_add(req(user_add, t)).await)));
    let user_get = AuthUserGetRequest {
        name: "root".into(),
    };
    o.push(("Auth/UserGet", out(auth.user_get(req(user_get, t)).await)));
    o.push((
        "Auth/UserList",
        out(auth.user_list(req(AuthUserListRequest {}, t)).await),
    ));
    let user_del = AuthUserDeleteRequest {
        name: "alice".into(),
    };
    o.push((
        "Auth/UserDelete",
        out(auth.user_delete(req(user_del, t)).await),
    ));
    let passwd = AuthUserChangePasswordRequest {
        name: "root".into(),
        password: "owned".into(),
        ..Default::default()
    };
    o.push((
        "Auth/UserChangePassword",
        out(auth.user_change_password(req(passwd, t)).await),
    ));
    let grant_role = AuthUserGrantRoleRequest {
        user: "bob".into(),
        role: "root".into(),
    };
    o.push((
        "Auth/UserGrantRole",
        out(auth.user_grant_role(req(grant_role, t)).await),
    ));
    let revoke_role = AuthUserRevokeRoleRequest {
        name: "alice".into(),
        role: "app".into(),
    };
    o.push((
        "Auth/UserRevokeRole",
        out(auth.user_revoke_role(req(revoke_role, t)).await),
    ));
    let role_add = AuthRoleAddRequest {
        name: "evil".into(),
    };
    o.push(("Auth/RoleAdd", out(auth.role_add(req(role_add, t)).await)));
    let role_get = AuthRoleGetRequest {
        role: "root".into(),
    };
    o.push(("Auth/RoleGet", out(auth.role_get(req(role_get, t)).await)));
    o.push((
        "Auth/RoleList",
        out(auth.role_list(req(AuthRoleListRequest {}, t)).await),
    ));
    let role_del = AuthRoleDeleteRequest { role: "app".into() };
    o.push((
        "Auth/RoleDelete",
        out(auth.role_delete(req(role_del, t)).await),
    ));
    let perm = AuthRoleGrantPermissionRequest {
        name: "app".into(),
        perm: Some(etcd_rs::pb::authpb::Permission {
            perm_type: 2,
            key: vec![0],
            range_end: vec![0],
        }),
    };
    o.push((
        "Auth/RoleGrantPermission",
        out(auth.role_grant_permission(req(perm, t)).await),
    ));
    let unperm = AuthRoleRevokePermissionRequest {
        role: "app".into(),
        key: b"/app/".to_vec(),
        range_end: b"/app0".to_vec(),
    };
    o.push((
        "Auth/RoleRevokePermission",
        out(auth.role_revoke_permission(req(unperm, t)).await),
    ));
    o
}

/// Everything a refused call could have changed, as root sees it.
async fn state(srv: &Server, root: &str) -> BTreeMap<&'static str, String> {
    let ch = channel(srv).await;
    let t = Some(root);
    let mut s = BTreeMap::new();
    let all = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    let r = KvClient::new(ch.clone())
        .range(req(all, t))
        .await
        .expect("range")
        .into_inner();
    let kvs: Vec<_> = r
        .kvs
        .iter()
        .map(|k| (k.key.clone(), k.value.clone(), k.mod_revision, k.lease))
        .collect();
    s.insert("keys", format!("{kvs:?}"));
    s.insert("revision", format!("{:?}", r.header.map(|h| h.revision)));
    let mut mt = MaintenanceClient::new(ch.clone());
    let h = mt
        .hash_kv(req(HashKvRequest { revision: 0 }, t))
        .await
        .expect("hashkv")
        .into_inner();
    s.insert("hash", format!("{} {}", h.hash, h.compact_revision));
    let alarms = mt
        .alarm(req(
            AlarmRequest {
                action: alarm_request::AlarmAction::Get as i32,
                member_id: 0,
                alarm: AlarmType::None as i32,
            },
            t,
        ))
        .await
        .expect("alarms")
        .into_inner()
        .alarms;
    s.insert("alarms", format!("{alarms:?}"));
    let members = ClusterClient::new(ch.clone())
        .member_list(req(MemberListRequest::default(), t))
        .await
        .expect("members")
        .into_inner()
        .members;
    s.insert("members", format!("{members:?}"));
    let mut lease = LeaseClient::new(ch.clone());
    let leases = lease
        .lease_leases(req(LeaseLeasesRequest {}, t))
        .await
        .expect("leases")
        .into_inner()
        .leases;
    s.insert("leases", format!("{leases:?}"));
    let ttl = lease
        .lease_time_to_live(req(
            LeaseTimeToLiveRequest {
                id: LEASE,
                keys: true,
            },
            t,
        ))
        .await
        .expect("ttl")
        .into_inner();
    s.insert("lease keys", format!("{:?} {}", ttl.keys, ttl.granted_ttl));
    let mut auth = AuthClient::new(ch.clone());
    let users = auth
        .user_list(req(AuthUserListRequest {}, t))
        .await
        .expect("users")
        .into_inner()
        .users;
    let mut u = Vec::new();
    for name in users {
        let roles = auth
            .user_get(req(AuthUserGetRequest { name: name.clone() }, t))
            .await
            .expect("user")
            .into_inner()
            .roles;
        u.push((name, roles));
    }
    s.insert("users", format!("{u:?}"));
    let roles = auth
        .role_list(req(AuthRoleListRequest {}, t))
        .await
        .expect("roles")
        .into_inner()
        .roles;
    let mut r = Vec::new();
    for role in roles {
        let perm = auth
            .role_get(req(AuthRoleGetRequest { role: role.clone() }, t))
            .await
            .expect("role")
            .into_inner()
            .perm;
        r.push((role, perm));
    }
    s.insert("roles", format!("{r:?}"));
    // Root's password is unchanged and auth still on.
    let still = AuthClient::new(ch)
        .authenticate(AuthenticateRequest {
            name: "root".into(),
            password: "pw".into(),
        })
        .await
        .map(|_| ())
        .map_err(|e| status(&e));
    s.insert("root login", format!("{still:?}"));
    s
}

/// A member with the guides' users (root, alice with role app on /app/), user
/// bob without any role, user carol who may only write under /w/, auth on, and
/// /secret written with lease LEASE.
fn prepared(reference: bool) -> (Server, u64, String) {
    let srv = if reference {
        Server::start_reference(&[])
    } else {
        Server::start(&[])
    };
    sh_ok(&srv, None, &["user", "add", "bob:pw"]);
    setup_users(&srv);
    // carol may only write under /w/.
    let root = Some("root:pw");
    sh_ok(&srv, root, &["role", "add", "wo"]);
    sh_ok(
        &srv,
        root,
        &[
            "role",
            "grant-permission",
            "wo",
            "--prefix=true",
            "write",
            "/w/",
        ],
    );
    sh_ok(&srv, root, &["user", "add", "carol:pw"]);
    sh_ok(&srv, root, &["user", "grant-role", "carol", "wo"]);
    rt().block_on(async {
        let root = token(&srv, "root", "pw").await;
        let ch = channel(&srv).await;
        LeaseClient::new(ch.clone())
            .lease_grant(req(
                LeaseGrantRequest {
                    ttl: 600,
                    id: LEASE,
                },
                Some(&root),
            ))
            .await
            .expect("grant");
        let put = PutRequest {
            key: SECRET.to_vec(),
            value: b"v".to_vec(),
            lease: LEASE,
            ..Default::default()
        };
        KvClient::new(ch.clone())
            .put(req(put, Some(&root)))
            .await
            .expect("put");
        let m = ClusterClient::new(ch)
            .member_list(req(MemberListRequest::default(), Some(&root)))
            .await
            .expect("members")
            .into_inner()
            .members;
        let m = m.first().expect("one member").clone();
        let peer = m.peer_ur_ls.first().cloned().unwrap_or_default();
        (srv, m.id, peer)
    })
}

/// Calls where we refuse what etcd 3.4 lets any caller do: changing alarms and
/// moving the leader need the root role (etcd 3.4 checks neither); AuthStatus and
/// Downgrade, which etcd 3.4 does not have, need the root role; a lease's
/// time-to-live names its keys, so it needs read permission on them (the fix of
/// CVE-2023-32082 in later etcd releases).
const STRICTER: &[&str] = &[
    "Maintenance/Alarm(deactivate)",
    "Maintenance/MoveLeader",
    "Maintenance/Downgrade",
    "Auth/AuthStatus",
    "Lease/LeaseTimeToLive",
];

/// A caller: who, its token on ours and on etcd, and the root check's refusals.
type Probe<'a> = (&'a str, Option<&'a str>, Option<&'a str>, [&'a str; 2]);

#[test]
fn every_rpc_without_permission_is_refused_as_etcd_refuses_it() {
    let (ours, our_member, our_peer) = prepared(false);
    let (etcd, etcd_member, etcd_peer) = prepared(true);
    rt().block_on(async {
        let our_root = token(&ours, "root", "pw").await;
        let etcd_root = token(&etcd, "root", "pw").await;
        let our_before = state(&ours, &our_root).await;
        let etcd_before = state(&etcd, &etcd_root).await;
        let our_bob = token(&ours, "bob", "pw").await;
        let etcd_bob = token(&etcd, "bob", "pw").await;
        // Each caller, and how the root check refuses it: etcd's gRPC error, and
        // the auth store's own error etcd 3.4's maintenance service returns.
        let callers: [Probe; 3] = [
            (
                "no token",
                None,
                None,
                [
                    "InvalidArgument: etcdserver: user name is empty",
                    "Unknown: auth: user name is empty",
                ],
            ),
            (
                "invalid token",
                Some("bogus.1"),
                Some("bogus.1"),
                [
                    "Unauthenticated: etcdserver: invalid auth token",
                    "Unknown: auth: invalid auth token",
                ],
            ),
            (
                "user without roles",
                Some(our_bob.as_str()),
                Some(etcd_bob.as_str()),
                [
                    "PermissionDenied: etcdserver: permission denied",
                    "Unknown: auth: permission denied",
                ],
            ),
        ];
        let mut differences = Vec::new();
        let mut calls = 0;
        for (who, our_token, etcd_token, refusal) in &callers {
            let a = probe(&ours, *our_token, our_member, &our_peer).await;
            let b = probe(&etcd, *etcd_token, etcd_member, &etcd_peer).await;
            assert_eq!(a.len(), b.len());
            for ((method, got), (_, want)) in a.iter().zip(b.iter()) {
                calls += 1;
                eprintln!("{who:20} {method:32} ours: {got}\n{:53} etcd: {want}", "");
                // Only the member IDs differ between the two.
                let want = want.replace(&format!("{etcd_member}"), &format!("{our_member}"));
                let expected = if STRICTER.contains(method) {
                    let maintenance = method.starts_with("Maintenance/");
                    refusal[usize::from(maintenance)].to_string()
                } else {
                    want
                };
                if *got != expected {
                    differences.push(format!(
                        "{who}: {method}: ours {got:?}, expected {expected:?}"
                    ));
                }
            }
        }
        assert!(
            differences.is_empty(),
            "{} of {calls} calls differ:\n{}",
            differences.len(),
            differences.join("\n")
        );
        // Raising an alarm, which etcd 3.4 lets anyone do (so not on etcd).
        let mut mt = MaintenanceClient::new(channel(&ours).await);
        for (who, our_token, _, refusal) in &callers {
            let raise = AlarmRequest {
                action: alarm_request::AlarmAction::Activate as i32,
                member_id: our_member,
                alarm: AlarmType::Nospace as i32,
            };
            let got = out(mt.alarm(req(raise, *our_token)).await);
            assert_eq!(got, refusal[1], "{who} raising an alarm");
        }
        // No call changed anything, on either server.
        assert_eq!(state(&ours, &our_root).await, our_before, "ours changed");
        assert_eq!(state(&etcd, &etcd_root).await, etcd_before, "etcd changed");
    });
}

fn put_op(key: &str, prev_kv: bool) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            prev_kv,
            ..Default::default()
        })),
    }
}

fn del_op(key: &str, prev_kv: bool) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: key.into(),
                prev_kv,
                ..Default::default()
            },
        )),
    }
}

/// KV calls whose permission depends on more than the key: prev_kv needs read
/// permission, a lease needs write permission on the keys already attached to
/// it, a txn needs each op's permission. carol may only write under /w/.
async fn key_probe(srv: &Server, t: Option<&str>) -> Vec<(&'static str, String)> {
    let ch = channel(srv).await;
    let mut kv = KvClient::new(ch.clone());
    let mut o: Vec<(&'static str, String)> = Vec::new();
    let put = |key: &str, prev_kv: bool, lease: i64| PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        prev_kv,
        lease,
        ..Default::default()
    };
    o.push(("put", out(kv.put(req(put("/w/a", false, 0), t)).await)));
    o.push((
        "put prev_kv",
        out(kv.put(req(put("/w/a", true, 0), t)).await),
    ));
    o.push((
        "put with a lease on /secret",
        out(kv.put(req(put("/w/b", false, LEASE), t)).await),
    ));
    let range = RangeRequest {
        key: b"/w/a".to_vec(),
        ..Default::default()
    };
    o.push(("range", out(kv.range(req(range, t)).await)));
    let del = |prev_kv: bool| DeleteRangeRequest {
        key: b"/w/a".to_vec(),
        prev_kv,
        ..Default::default()
    };
    o.push((
        "delete prev_kv",
        out(kv.delete_range(req(del(true), t)).await),
    ));
    o.push(("delete", out(kv.delete_range(req(del(false), t)).await)));
    let txn = |success: Vec<RequestOp>| TxnRequest {
        success,
        ..Default::default()
    };
    o.push((
        "txn put",
        out(kv.txn(req(txn(vec![put_op("/w/c", false)]), t)).await),
    ));
    o.push((
        "txn delete prev_kv",
        out(kv.txn(req(txn(vec![del_op("/w/c", true)]), t)).await),
    ));
    o.push((
        "txn delete",
        out(kv.txn(req(txn(vec![del_op("/w/c", false)]), t)).await),
    ));
    let nested = RequestOp {
        request: Some(request_op::Request::RequestTxn(txn(vec![del_op(
            "/secret", false,
        )]))),
    };
    o.push(("nested txn", out(kv.txn(req(txn(vec![nested]), t)).await)));
    o
}

#[test]
fn key_permissions_follow_etcd() {
    let (ours, _, _) = prepared(false);
    let (etcd, _, _) = prepared(true);
    rt().block_on(async {
        let a = key_probe(&ours, Some(&token(&ours, "carol", "pw").await)).await;
        let b = key_probe(&etcd, Some(&token(&etcd, "carol", "pw").await)).await;
        let mut differences = Vec::new();
        for ((call, got), (_, want)) in a.iter().zip(b.iter()) {
            eprintln!("{call:30} ours: {got}\n{:30} etcd: {want}", "");
            // etcd 3.4 does not check the ops of a nested txn: carol would
            // delete /secret, which she may not write.
            let want = if *call == "nested txn" {
                "PermissionDenied: etcdserver: permission denied"
            } else {
                want.as_str()
            };
            if got != want {
                differences.push(format!("{call}: ours {got:?}, expected {want:?}"));
            }
        }
        assert!(differences.is_empty(), "{}", differences.join("\n"));
        // The refused nested txn did not delete /secret on ours.
        let root = token(&ours, "root", "pw").await;
        let r = KvClient::new(channel(&ours).await)
            .range(req(
                RangeRequest {
                    key: SECRET.to_vec(),
                    ..Default::default()
                },
                Some(&root),
            ))
            .await
            .expect("range")
            .into_inner();
        assert_eq!(r.count, 1, "/secret is gone");
    });
}

async fn db_size(srv: &Server) -> i64 {
    MaintenanceClient::new(channel(srv).await)
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .db_size
}

#[test]
fn unauthenticated_defragment_does_not_defragment() {
    let (srv, _, _) = prepared(false);
    rt().block_on(async {
        let root = token(&srv, "root", "pw").await;
        let bob = token(&srv, "bob", "pw").await;
        let ch = channel(&srv).await;
        let mut kv = KvClient::new(ch.clone());
        // Free pages to give back: write 4 MB, delete it, compact.
        for i in 0..400 {
            let put = PutRequest {
                key: format!("/app/big/{i:04}").into_bytes(),
                value: vec![b'x'; 10_000],
                ..Default::default()
            };
            kv.put(req(put, Some(&root))).await.expect("put");
        }
        let del = DeleteRangeRequest {
            key: b"/app/big/".to_vec(),
            range_end: b"/app/big0".to_vec(),
            ..Default::default()
        };
        let rev = kv
            .delete_range(req(del, Some(&root)))
            .await
            .expect("delete")
            .into_inner()
            .header
            .map(|h| h.revision)
            .unwrap_or(0);
        let compact = CompactionRequest {
            revision: rev,
            physical: true,
        };
        kv.compact(req(compact, Some(&root)))
            .await
            .expect("compact");
        let before = db_size(&srv).await;
        assert!(before > 4_000_000, "db is only {before} bytes");

        let mut mt = MaintenanceClient::new(ch);
        for (token, refusal) in [
            (None, "Unknown: auth: user name is empty"),
            (Some("bogus.1"), "Unknown: auth: invalid auth token"),
            (Some(bob.as_str()), "Unknown: auth: permission denied"),
        ] {
            let r = mt.defragment(req(DefragmentRequest {}, token)).await;
            assert_eq!(out(r), refusal);
            assert_eq!(db_size(&srv).await, before, "defragmented for {token:?}");
        }
        assert!(
            !srv.log().contains("defragment"),
            "a refused defragment started:\n{}",
            srv.log()
        );

        // The same measures see a defragmentation root asks for.
        let r = mt.defragment(req(DefragmentRequest {}, Some(&root))).await;
        assert_eq!(out(r), "ok");
        let after = db_size(&srv).await;
        assert!(after < before / 2, "root's defragment: {before} -> {after}");
        assert!(srv.log().contains("finished defragment"));
    });
}

/// A follower asks the leader for a lease's time-to-live on the caller's
/// behalf: the caller's permission on the lease's keys decides, on both.
#[test]
fn lease_time_to_live_on_a_follower_is_checked_for_the_caller() {
    let c = Cluster::start(3, &[]);
    let leader = c.wait_leader(&[0, 1, 2], Duration::from_secs(20));
    let follower = (leader + 1) % 3;
    let m = &c.members[leader];
    m.ctl_ok(&["user", "add", "bob:pw"]);
    for args in auth_setup(&["user", "add", "alice:pw"]) {
        m.ctl_ok(&args);
    }
    let (lead_ep, follow_ep) = (m.endpoint(), c.members[follower].endpoint());
    c.rt.block_on(async {
        let alice = token_at(&lead_ep, "alice", "pw").await;
        let ch = channel_at(&lead_ep).await;
        LeaseClient::new(ch.clone())
            .lease_grant(req(
                LeaseGrantRequest {
                    ttl: 600,
                    id: LEASE,
                },
                Some(&alice),
            ))
            .await
            .expect("grant");
        let put = PutRequest {
            key: b"/app/x".to_vec(),
            value: b"v".to_vec(),
            lease: LEASE,
            ..Default::default()
        };
        KvClient::new(ch)
            .put(req(put, Some(&alice)))
            .await
            .expect("put");
        let mut lease = LeaseClient::new(channel_at(&follow_ep).await);
        let ttl = LeaseTimeToLiveRequest {
            id: LEASE,
            keys: true,
        };
        // The follower applies the put soon; until then it may not know the key.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = lease
                .lease_time_to_live(req(ttl, Some(&alice)))
                .await
                .map(|r| r.into_inner().keys);
            match r {
                Ok(keys) if keys == vec![b"/app/x".to_vec()] => break,
                other => assert!(
                    tokio::time::Instant::now() < deadline,
                    "alice's time-to-live on a follower: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let bob = token_at(&follow_ep, "bob", "pw").await;
        assert_eq!(
            out(lease.lease_time_to_live(req(ttl, Some(&bob))).await),
            "PermissionDenied: etcdserver: permission denied"
        );
        assert_eq!(
            out(lease.lease_time_to_live(req(ttl, None)).await),
            "InvalidArgument: etcdserver: user name is empty"
        );
    });
}
