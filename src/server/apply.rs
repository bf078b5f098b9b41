//! The apply loop's state machine: applies committed log entries, in order, in one
//! database transaction per batch that also records the applied index.

use std::sync::Arc;

use prost::Message;
use raft::eraftpb::{Entry, EntryType};

use super::alarm::{Alarms, DISK_FULL};
use super::request::{Applied, InternalRequest, Op};
use crate::auth::AuthOp;
use crate::error::{Error, Result};
use crate::lease::Lessor;
use crate::membership::Cluster;
use crate::mvcc::Store;
use crate::mvcc::writer::{Writer, meta_table};
use crate::pb::etcdserverpb::{
    AlarmRequest, AlarmResponse, AlarmType, CompactionResponse, Compare, DeleteRangeRequest,
    DeleteRangeResponse, LeaseGrantResponse, LeaseRevokeResponse, Member, PutRequest, PutResponse,
    RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse, alarm_request, compare,
    request_op, response_op,
};
use crate::pb::mvccpb::{Event, KeyValue};
use crate::storage::{self, ALARMS, AUTH_ROLES, AUTH_USERS, LEASES, MEMBERS, StorageError};

/// Applies a membership-change entry; may answer a waiting request.
pub type ConfApplier<'a> = dyn FnMut(&redb::WriteTransaction, &Entry) -> Result<Option<(u64, Result<Applied>)>, StorageError>
    + 'a;

/// Receives a batch's (request ID, result) pairs, one for every normal entry
/// with a request and every membership change that answers one.
pub type OnResults<'a> = dyn FnMut(Vec<(u64, Result<Applied>)>) + 'a;

/// What one applied batch produced besides its answers.
pub struct BatchOutcome {
    /// Watch events, in revision order.
    pub events: Vec<Event>,
    pub rev: i64,
}

pub struct Applier {
    pub auth: Arc<crate::auth::AuthStore>,
    pub store: Arc<Store>,
    pub lessor: Arc<Lessor>,
    pub cluster: Arc<Cluster>,
    pub alarms: Arc<Alarms>,
}

fn header(rev: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision: rev,
        ..Default::default()
    })
}

impl Applier {
    /// Loads the in-memory state (key index, leases, members, alarms) from storage.
    pub fn reload(&self) -> Result<(), StorageError> {
        use redb::ReadableTable;
        let leased = self.store.reload()?;
        let txn = self.store.backend().read()?;
        self.lessor.clear();
        let t = txn.open_table(LEASES)?;
        for item in t.iter()? {
            let (k, v) = item?;
            let b: [u8; 8] = v.value().try_into().map_err(|_| StorageError::Decode {
                what: format!("lease/{:x}", k.value()),
                detail: "expected an 8-byte TTL".into(),
            })?;
            self.lessor.restore(k.value(), i64::from_be_bytes(b));
        }
        for (key, lease) in leased {
            self.lessor.attach(&key, lease);
        }
        let t = txn.open_table(MEMBERS)?;
        let mut members = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            members.push(Member::decode(v.value()).map_err(|e| StorageError::Decode {
                what: format!("members/{:x}", k.value()),
                detail: e.to_string(),
            })?);
        }
        self.cluster.replace(members);
        let auth = load_auth(&txn)?;
        self.auth.replace(auth);
        self.alarms.clear();
        let t = txn.open_table(ALARMS)?;
        for item in t.iter()? {
            let (k, v) = item?;
            let (m, a) = k.value();
            self.alarms.restore(m, a, v.value());
        }
        Ok(())
    }

    /// Applies `entries` (skipping any at or below `applied`). Conf-change entries are
    /// handed to `conf`, which applies them to Raft and persists the new conf state.
    ///
    /// The batch is written into the transaction applied batches share
    /// (`storage::held`), committed when a read transaction or another
    /// writer begins, or when it has taken its share of entries. No caller
    /// can see the key index ahead of the database: the index's write lock
    /// is held while the batch is written, and every read of the keyspace
    /// takes its read lock, then commits the shared transaction as its read
    /// transaction begins (the entries are durable in the log already; a
    /// commit that fails ends the member, and a restart applies them
    /// again).
    pub fn apply(
        &self,
        entries: &[Entry],
        applied: u64,
        term: u64,
        conf: &mut ConfApplier,
        answer: &mut OnResults,
    ) -> Result<BatchOutcome, StorageError> {
        // The key index's lock first, then the shared transaction's (the
        // order readers take them in); the transaction is opened before, so
        // that another writer's is not waited for under the index's lock.
        self.store.backend().ready_apply_txn()?;
        let mut st = self.store.lock_for_apply();
        let txn = self.store.backend().apply_txn()?;
        let mut results = Vec::new();
        let mut last = applied;
        let (mut taken, mut bytes) = (0, 0);
        let events;
        let rev;
        {
            let mut w = Writer::new(&txn, &mut st)?;
            for e in entries {
                if e.index <= applied {
                    continue;
                }
                last = e.index;
                taken += 1;
                bytes += e.data.len();
                match e.get_entry_type() {
                    EntryType::EntryNormal => {
                        if e.data.is_empty() {
                            continue;
                        }
                        // From the entry's own buffer: its key and value are copied once.
                        let req = match InternalRequest::decode(e.data.clone()) {
                            Ok(r) => r,
                            Err(err) => {
                                return Err(StorageError::Decode {
                                    what: format!("raft entry {}", e.index),
                                    detail: err.to_string(),
                                });
                            }
                        };
                        let Some(op) = req.op else { continue };
                        let name = crate::metrics::apply::op(op_name(&op));
                        let start = std::time::Instant::now();
                        let res = self.apply_op(&txn, &mut w, op);
                        crate::metrics::apply::observe(
                            name,
                            matches!(res, Ok(_) | Err(Error::Compacted)),
                            start.elapsed(),
                        );
                        if let Err(Error::Storage(detail)) = &res {
                            return Err(StorageError::Db(detail.clone()));
                        }
                        results.push((req.id, res));
                    }
                    EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                        if let Some(r) = conf(&txn, e)? {
                            results.push(r);
                        }
                    }
                }
            }
            events = std::mem::take(&mut w.events);
            rev = w.state().rev;
        }
        answer(results);
        txn.done(taken, bytes, (last, term))?;
        let compactions = std::mem::take(&mut st.compactions);
        drop(st);
        self.store.schedule(compactions);
        Ok(BatchOutcome { events, rev })
    }

    fn apply_op(&self, txn: &redb::WriteTransaction, w: &mut Writer, op: Op) -> Result<Applied> {
        match op {
            Op::Put(p) => {
                self.check_put(w, &p)?;
                w.begin();
                let r = self.put(w, p);
                let rev = w.end();
                r.map(|mut r| {
                    r.header = header(rev);
                    Applied::Put(r)
                })
            }
            Op::DeleteRange(d) => {
                w.begin();
                let r = self.delete(w, &d);
                let rev = w.end();
                r.map(|mut r| {
                    r.header = header(rev);
                    Applied::DeleteRange(r)
                })
            }
            Op::Txn(t) => {
                let path = compare_path(w, &t)?;
                let mut it = path.iter().copied();
                check_txn_puts(self, w, &t, &mut path.iter().copied())?;
                w.begin();
                let r = self.txn(w, &t, &mut it);
                let rev = w.end();
                r.map(|mut r| {
                    r.header = header(rev);
                    Applied::Txn(r)
                })
            }
            Op::Compaction(c) => {
                let (cur, compacted) = (w.state().rev, w.state().compact_rev);
                if c.revision <= compacted {
                    return Err(Error::Compacted);
                }
                if c.revision > cur {
                    return Err(Error::FutureRev);
                }
                let mut meta = meta_table(txn).map_err(Error::from)?;
                w.compact(&mut meta, c.revision)?;
                Ok(Applied::Compaction(CompactionResponse {
                    header: header(cur),
                }))
            }
            Op::LeaseGrant(g) => {
                if self.lessor.exists(g.id) {
                    return Err(Error::LeaseExist);
                }
                let ttl = self.lessor.grant(g.id, g.ttl);
                let mut t = txn.open_table(LEASES).map_err(StorageError::from)?;
                t.insert(g.id, ttl.to_be_bytes().as_slice())
                    .map_err(StorageError::from)?;
                Ok(Applied::LeaseGrant(LeaseGrantResponse {
                    header: header(w.state().rev),
                    id: g.id,
                    ttl,
                    error: String::new(),
                }))
            }
            Op::LeaseRevoke(r) => {
                let Some(keys) = self.lessor.revoke(r.id) else {
                    return Err(Error::LeaseNotFound);
                };
                w.begin();
                for k in keys {
                    w.delete_range(&k, &[])?;
                }
                let rev = w.end();
                let mut t = txn.open_table(LEASES).map_err(StorageError::from)?;
                t.remove(r.id).map_err(StorageError::from)?;
                Ok(Applied::LeaseRevoke(LeaseRevokeResponse {
                    header: header(rev),
                }))
            }
            Op::Alarm(a) => self.alarm(txn, w, &a, false),
            Op::DiskFullAlarm(a) => self.alarm(txn, w, &a, true),
            Op::MemberUpdate(m) => {
                let Some(mut current) = self.cluster.get(m.id) else {
                    return Err(Error::MemberNotFound);
                };
                current.peer_ur_ls = m.peer_ur_ls;
                let mut t = txn.open_table(MEMBERS).map_err(StorageError::from)?;
                t.insert(m.id, current.encode_to_vec().as_slice())
                    .map_err(StorageError::from)?;
                self.cluster.upsert(current);
                Ok(Applied::Members {
                    member: None,
                    members: self.cluster.members(),
                })
            }
            Op::AssignToken(t) => {
                self.auth.assign_token(&t.token, &t.user);
                Ok(Applied::Done)
            }
            Op::AuthEnable(_) => self.auth_op(txn, AuthOp::Enable),
            Op::AuthDisable(_) => self.auth_op(txn, AuthOp::Disable),
            Op::UserAdd(r) => self.auth_op(
                txn,
                AuthOp::UserAdd {
                    name: r.name,
                    hash: r.hashed_password,
                    no_password: r.options.is_some_and(|o| o.no_password),
                },
            ),
            Op::UserDelete(r) => self.auth_op(txn, AuthOp::UserDelete { name: r.name }),
            Op::UserChangePassword(r) => self.auth_op(
                txn,
                AuthOp::UserChangePassword {
                    name: r.name,
                    hash: r.hashed_password,
                },
            ),
            Op::UserGrantRole(r) => self.auth_op(
                txn,
                AuthOp::UserGrantRole {
                    user: r.user,
                    role: r.role,
                },
            ),
            Op::UserRevokeRole(r) => self.auth_op(
                txn,
                AuthOp::UserRevokeRole {
                    name: r.name,
                    role: r.role,
                },
            ),
            Op::RoleAdd(r) => self.auth_op(txn, AuthOp::RoleAdd { name: r.name }),
            Op::RoleDelete(r) => self.auth_op(txn, AuthOp::RoleDelete { name: r.role }),
            Op::RoleGrantPermission(r) => match r.perm {
                Some(perm) => self.auth_op(txn, AuthOp::RoleGrantPermission { name: r.name, perm }),
                None => Err(Error::PermissionNotGiven),
            },
            Op::RoleRevokePermission(r) => self.auth_op(
                txn,
                AuthOp::RoleRevokePermission {
                    name: r.role,
                    key: r.key,
                    range_end: r.range_end,
                },
            ),
            Op::Publish(m) => {
                let mut current = self.cluster.get(m.id).unwrap_or(Member {
                    id: m.id,
                    ..Default::default()
                });
                current.name = m.name;
                current.client_ur_ls = m.client_ur_ls;
                let mut t = txn.open_table(MEMBERS).map_err(StorageError::from)?;
                t.insert(m.id, current.encode_to_vec().as_slice())
                    .map_err(StorageError::from)?;
                self.cluster.upsert(current);
                Ok(Applied::Done)
            }
        }
    }

    /// Applies an auth change and rewrites the auth tables and meta.
    fn auth_op(&self, txn: &redb::WriteTransaction, op: AuthOp) -> Result<Applied> {
        let st = self.auth.apply(&op)?;
        let (users, roles) = crate::auth::AuthStore::encode(&st);
        let mut t = txn.open_table(AUTH_USERS).map_err(StorageError::from)?;
        t.retain(|_, _| false).map_err(StorageError::from)?;
        for (k, v) in &users {
            t.insert(k.as_str(), v.as_slice())
                .map_err(StorageError::from)?;
        }
        let mut t = txn.open_table(AUTH_ROLES).map_err(StorageError::from)?;
        t.retain(|_, _| false).map_err(StorageError::from)?;
        for (k, v) in &roles {
            t.insert(k.as_str(), v.as_slice())
                .map_err(StorageError::from)?;
        }
        let mut meta = meta_table(txn)?;
        storage::put_u64(&mut meta, storage::meta::AUTH_ENABLED, st.enabled as u64)?;
        storage::put_u64(&mut meta, storage::meta::AUTH_REVISION, st.revision)?;
        Ok(Applied::Done)
    }

    fn alarm(
        &self,
        txn: &redb::WriteTransaction,
        w: &Writer,
        a: &AlarmRequest,
        disk_full: bool,
    ) -> Result<Applied> {
        let mut resp = AlarmResponse {
            header: header(w.state().rev),
            alarms: vec![],
        };
        let mut t = txn.open_table(ALARMS).map_err(StorageError::from)?;
        match alarm_request::AlarmAction::try_from(a.action) {
            Ok(alarm_request::AlarmAction::Activate) => {
                if a.alarm == 0 {
                    return Ok(Applied::Alarm(resp));
                }
                let disk_full = disk_full && a.alarm == AlarmType::Nospace as i32;
                let new = if disk_full {
                    self.alarms.activate_disk_full(a.member_id)
                } else {
                    self.alarms.activate(a.member_id, a.alarm)
                };
                if new {
                    let value = if disk_full { DISK_FULL } else { &[] };
                    t.insert((a.member_id, a.alarm), value)
                        .map_err(StorageError::from)?;
                }
                resp.alarms.push(crate::pb::etcdserverpb::AlarmMember {
                    member_id: a.member_id,
                    alarm: a.alarm,
                });
            }
            Ok(alarm_request::AlarmAction::Deactivate) => {
                if self.alarms.deactivate(a.member_id, a.alarm) {
                    t.remove((a.member_id, a.alarm))
                        .map_err(StorageError::from)?;
                    resp.alarms.push(crate::pb::etcdserverpb::AlarmMember {
                        member_id: a.member_id,
                        alarm: a.alarm,
                    });
                }
            }
            _ => resp.alarms = self.alarms.list(),
        }
        Ok(Applied::Alarm(resp))
    }

    /// etcd refuses a put on an unknown lease, and ignore_value/ignore_lease on a
    /// missing key, before anything is written.
    fn check_put(&self, w: &Writer, p: &PutRequest) -> Result<()> {
        if p.lease != 0 && !self.lessor.exists(p.lease) {
            return Err(Error::LeaseNotFound);
        }
        if (p.ignore_value || p.ignore_lease) && w.get(&p.key)?.is_none() {
            return Err(Error::KeyNotFound);
        }
        Ok(())
    }

    fn put(&self, w: &mut Writer, p: PutRequest) -> Result<PutResponse> {
        let need_prev = p.prev_kv || p.ignore_value || p.ignore_lease;
        let prev = if need_prev { w.get(&p.key)? } else { None };
        let value = match (&prev, p.ignore_value) {
            (Some(prev), true) => prev.value.clone(),
            _ => p.value,
        };
        let lease = match (&prev, p.ignore_lease) {
            (Some(prev), true) => prev.lease,
            _ => p.lease,
        };
        w.put(&p.key, value, lease)?;
        self.lessor.attach(&p.key, lease);
        Ok(PutResponse {
            header: None,
            prev_kv: if p.prev_kv { prev } else { None },
        })
    }

    fn delete(&self, w: &mut Writer, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        let deleted = w.delete_range(&d.key, &d.range_end)?;
        for kv in &deleted {
            if kv.lease != 0 {
                self.lessor.detach(&kv.key);
            }
        }
        Ok(DeleteRangeResponse {
            header: None,
            deleted: deleted.len() as i64,
            prev_kvs: if d.prev_kv { deleted } else { vec![] },
        })
    }

    fn txn(
        &self,
        w: &mut Writer,
        t: &TxnRequest,
        path: &mut dyn Iterator<Item = bool>,
    ) -> Result<TxnResponse> {
        let ok = path.next().unwrap_or(false);
        let ops = if ok { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let r = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    let mut resp = w.range(r)?;
                    resp.header = header(w.read_rev());
                    response_op::Response::ResponseRange(resp)
                }
                Some(request_op::Request::RequestPut(p)) => {
                    let mut resp = self.put(w, p.clone())?;
                    resp.header = header(w.read_rev());
                    response_op::Response::ResponsePut(resp)
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    let mut resp = self.delete(w, d)?;
                    resp.header = header(w.read_rev());
                    response_op::Response::ResponseDeleteRange(resp)
                }
                Some(request_op::Request::RequestTxn(nested)) => {
                    let mut resp = self.txn(w, nested, path)?;
                    resp.header = header(w.read_rev());
                    response_op::Response::ResponseTxn(resp)
                }
                None => continue,
            };
            responses.push(ResponseOp { response: Some(r) });
        }
        Ok(TxnResponse {
            header: None,
            succeeded: ok,
            responses,
        })
    }
}

/// The auth store as persisted.
pub fn load_auth(txn: &redb::ReadTransaction) -> Result<crate::auth::State, StorageError> {
    use redb::ReadableTable;
    let mut auth = crate::auth::State::default();
    {
        let meta = txn.open_table(crate::storage::META)?;
        auth.enabled = storage::get_u64(&meta, storage::meta::AUTH_ENABLED)?.unwrap_or(0) == 1;
        auth.revision = storage::get_u64(&meta, storage::meta::AUTH_REVISION)?.unwrap_or(1);
    }
    let t = txn.open_table(AUTH_USERS)?;
    for item in t.iter()? {
        let (k, v) = item?;
        let u = crate::pb::authpb::User::decode(v.value()).map_err(|e| StorageError::Decode {
            what: format!("authUsers/{}", k.value()),
            detail: e.to_string(),
        })?;
        auth.users.insert(k.value().to_string(), u);
    }
    let t = txn.open_table(AUTH_ROLES)?;
    for item in t.iter()? {
        let (k, v) = item?;
        let r = crate::pb::authpb::Role::decode(v.value()).map_err(|e| StorageError::Decode {
            what: format!("authRoles/{}", k.value()),
            detail: e.to_string(),
        })?;
        auth.roles.insert(k.value().to_string(), r);
    }
    Ok(auth)
}

/// Evaluates every compare of a txn, nested ones included, before anything is
/// written (as etcd does): the branch taken at each level, in execution order.
fn compare_path(w: &Writer, t: &TxnRequest) -> Result<Vec<bool>> {
    let mut out = Vec::new();
    fn walk(w: &Writer, t: &TxnRequest, out: &mut Vec<bool>) -> Result<()> {
        let mut ok = true;
        for c in &t.compare {
            if !apply_compare(w, c)? {
                ok = false;
                break;
            }
        }
        out.push(ok);
        let ops = if ok { &t.success } else { &t.failure };
        for op in ops {
            if let Some(request_op::Request::RequestTxn(n)) = &op.request {
                walk(w, n, out)?;
            }
        }
        Ok(())
    }
    walk(w, t, &mut out)?;
    Ok(out)
}

fn check_txn_puts(
    a: &Applier,
    w: &Writer,
    t: &TxnRequest,
    path: &mut dyn Iterator<Item = bool>,
) -> Result<()> {
    let ok = path.next().unwrap_or(false);
    let ops: &[RequestOp] = if ok { &t.success } else { &t.failure };
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestPut(p)) => a.check_put(w, p)?,
            Some(request_op::Request::RequestTxn(n)) => check_txn_puts(a, w, n, path)?,
            Some(request_op::Request::RequestRange(r)) => {
                if r.revision > w.read_rev() {
                    return Err(Error::FutureRev);
                }
                if r.revision > 0 && r.revision < w.state().compact_rev {
                    return Err(Error::Compacted);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// etcd's name for an applied request (`etcd_server_apply_duration_seconds`).
fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Put(_) => "Put",
        Op::DeleteRange(_) => "DeleteRange",
        Op::Txn(_) => "Txn",
        Op::Compaction(_) => "Compaction",
        Op::LeaseGrant(_) => "LeaseGrant",
        Op::LeaseRevoke(_) => "LeaseRevoke",
        Op::Alarm(_) | Op::DiskFullAlarm(_) => "Alarm",
        Op::Publish(_) => "ClusterMemberAttrSet",
        Op::AssignToken(_) => "Authenticate",
        Op::AuthEnable(_) => "AuthEnable",
        Op::AuthDisable(_) => "AuthDisable",
        Op::UserAdd(_) => "AuthUserAdd",
        Op::UserDelete(_) => "AuthUserDelete",
        Op::UserChangePassword(_) => "AuthUserChangePassword",
        Op::UserGrantRole(_) => "AuthUserGrantRole",
        Op::UserRevokeRole(_) => "AuthUserRevokeRole",
        Op::RoleAdd(_) => "AuthRoleAdd",
        Op::RoleDelete(_) => "AuthRoleDelete",
        Op::RoleGrantPermission(_) => "AuthRoleGrantPermission",
        Op::RoleRevokePermission(_) => "AuthRoleRevokePermission",
        _ => "unknown",
    }
}

fn apply_compare(w: &Writer, c: &Compare) -> Result<bool> {
    let target =
        compare::CompareTarget::try_from(c.target).unwrap_or(compare::CompareTarget::Version);
    if matches!(
        target,
        compare::CompareTarget::Create
            | compare::CompareTarget::Mod
            | compare::CompareTarget::Version
    ) {
        // The key index holds these: no record is read.
        return Ok(compare_visible(w, c, target));
    }
    let req = crate::pb::etcdserverpb::RangeRequest {
        key: c.key.clone(),
        range_end: c.range_end.clone(),
        ..Default::default()
    };
    let kvs = match w.range(&req) {
        Ok(r) => r.kvs,
        Err(Error::Storage(s)) => return Err(Error::Storage(s)),
        Err(_) => return Ok(false),
    };
    if kvs.is_empty() {
        if target == compare::CompareTarget::Value {
            return Ok(false);
        }
        return Ok(compare_kv(c, target, &KeyValue::default()));
    }
    Ok(kvs.iter().all(|kv| compare_kv(c, target, kv)))
}

/// A compare of a revision or version, from the key index: true when every
/// key live in the range passes, or, with none, when an absent key (all zero)
/// would.
fn compare_visible(w: &Writer, c: &Compare, target: compare::CompareTarget) -> bool {
    let mut any = false;
    let mut all = true;
    w.visible(&c.key, &c.range_end, |v| {
        any = true;
        let kv = KeyValue {
            create_revision: v.created.main,
            mod_revision: v.modified.main,
            version: v.version,
            ..Default::default()
        };
        all = compare_kv(c, target, &kv);
        all
    });
    if any {
        all
    } else {
        compare_kv(c, target, &KeyValue::default())
    }
}

fn compare_kv(c: &Compare, target: compare::CompareTarget, kv: &KeyValue) -> bool {
    use compare::{CompareTarget as T, TargetUnion as U};
    use std::cmp::Ordering;
    let ord: Ordering = match target {
        T::Value => {
            let v: &[u8] = match &c.target_union {
                Some(U::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(v)
        }
        T::Create => kv.create_revision.cmp(&match c.target_union {
            Some(U::CreateRevision(r)) => r,
            _ => 0,
        }),
        T::Mod => kv.mod_revision.cmp(&match c.target_union {
            Some(U::ModRevision(r)) => r,
            _ => 0,
        }),
        T::Version => kv.version.cmp(&match c.target_union {
            Some(U::Version(r)) => r,
            _ => 0,
        }),
        T::Lease => kv.lease.cmp(&match c.target_union {
            Some(U::Lease(r)) => r,
            _ => 0,
        }),
    };
    match compare::CompareResult::try_from(c.result) {
        Ok(compare::CompareResult::Equal) => ord == Ordering::Equal,
        Ok(compare::CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(compare::CompareResult::Greater) => ord == Ordering::Greater,
        Ok(compare::CompareResult::Less) => ord == Ordering::Less,
        Err(_) => true,
    }
}
