//! etcd's backend schema (etcd 3.5): which buckets a bbolt backend holds and
//! how each record is encoded, and the two conversions between it and our
//! tables: [`export`] writes our state as an etcd backend file, and
//! [`import_backend`] reads an etcd backend (a `member/snap/db`, or a
//! snapshot file without its checksum) into our tables.
//!
//! | bucket | key | value |
//! | --- | --- | --- |
//! | `key` | revision: 8-byte main BE, `_`, 8-byte sub BE; `t` appended for a tombstone | `mvccpb.KeyValue` (a tombstone's holds only the key) |
//! | `meta` | `consistent_index`, `term` | 8-byte BE |
//! | | `scheduledCompactRev`, `finishedCompactRev` | a 17-byte revision key |
//! | | `confState` | Raft's `ConfState` as JSON |
//! | `lease` | lease ID, 8-byte BE | `leasepb.Lease` |
//! | `alarm` | `etcdserverpb.AlarmMember` | empty |
//! | `auth` | `authEnabled` (1 byte), `authRevision` (8-byte BE) | |
//! | `authUsers`, `authRoles` | name | `authpb.User`, `authpb.Role` |
//! | `members` | member ID in hex | the member as JSON |
//! | `members_removed` | member ID in hex | `removed` |
//! | `cluster` | `clusterVersion` | e.g. `3.5.0` |

use std::path::Path;

use prost::Message;
use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{
    ALARMS, AUTH_ROLES, AUTH_USERS, Backend, KV, LEASES, MEMBERS, META, StorageError,
    clear_state_machine, get_u64, meta, put_u64,
};
use crate::bbolt::{self, BboltError, Reader};
use crate::pb::etcdserverpb::{AlarmMember, Member};
use crate::pb::mvccpb::KeyValue;

pub const KEY: &[u8] = b"key";
pub const META_BUCKET: &[u8] = b"meta";
pub const LEASE: &[u8] = b"lease";
pub const ALARM: &[u8] = b"alarm";
pub const CLUSTER: &[u8] = b"cluster";
pub const MEMBERS_BUCKET: &[u8] = b"members";
pub const MEMBERS_REMOVED: &[u8] = b"members_removed";
pub const AUTH: &[u8] = b"auth";
pub const AUTH_USERS_BUCKET: &[u8] = b"authUsers";
pub const AUTH_ROLES_BUCKET: &[u8] = b"authRoles";

const CONSISTENT_INDEX: &[u8] = b"consistent_index";
const TERM: &[u8] = b"term";
const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
const CONF_STATE: &[u8] = b"confState";
const AUTH_ENABLED: &[u8] = b"authEnabled";
const AUTH_REVISION: &[u8] = b"authRevision";
const CLUSTER_VERSION: &[u8] = b"clusterVersion";

/// etcd's lease record (`leasepb.Lease`).
#[derive(Clone, PartialEq, Message)]
pub struct LeaseRecord {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

/// A member as etcd stores it in its backend (Go's JSON of `membership.Member`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberJson {
    pub id: u64,
    #[serde(rename = "peerURLs", default)]
    pub peer_urls: Option<Vec<String>>,
    #[serde(rename = "isLearner", default, skip_serializing_if = "is_false")]
    pub is_learner: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(
        rename = "clientURLs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_urls: Option<Vec<String>>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Raft's configuration state as etcd 3.5 stores it (Go's JSON of `raftpb.ConfState`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfStateJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voters: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learners: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voters_outgoing: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learners_next: Option<Vec<u64>>,
    #[serde(default)]
    pub auto_leave: bool,
}

/// etcd's key for a revision: 8-byte main BE, `_`, 8-byte sub BE, and `t`
/// for a tombstone.
pub fn rev_key(main: u64, sub: u64, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&main.to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&sub.to_be_bytes());
    if tombstone {
        k.push(b't');
    }
    k
}

/// Parses etcd's revision key: (main, sub, tombstone).
pub fn parse_rev_key(k: &[u8]) -> Option<(u64, u64, bool)> {
    let tomb = match k.len() {
        17 => false,
        18 if k[17] == b't' => true,
        _ => return None,
    };
    if k[8] != b'_' {
        return None;
    }
    let main = u64::from_be_bytes(k[..8].try_into().ok()?);
    let sub = u64::from_be_bytes(k[9..17].try_into().ok()?);
    Some((main, sub, tomb))
}

/// One of our key-value records as etcd stores it: its key and value in the
/// `key` bucket. A tombstone's value holds only the key, as etcd's does.
pub fn etcd_kv(rev: (u64, u64), record: &[u8]) -> Result<(Vec<u8>, Vec<u8>), StorageError> {
    match record.first() {
        Some(0) => Ok((rev_key(rev.0, rev.1, false), record[1..].to_vec())),
        _ => {
            let (kv, tomb) = crate::mvcc::decode_record(rev, record)?;
            if tomb {
                let only_key = KeyValue {
                    key: kv.key,
                    ..Default::default()
                };
                Ok((rev_key(rev.0, rev.1, true), only_key.encode_to_vec()))
            } else {
                Ok((rev_key(rev.0, rev.1, false), kv.encode_to_vec()))
            }
        }
    }
}

fn db_err(e: BboltError) -> StorageError {
    match e {
        BboltError::Io { path, detail } => StorageError::Open { path, detail },
        BboltError::Corrupt { path, page, detail } => StorageError::Corrupt {
            path,
            detail: match page {
                Some(p) => format!("page {p}: {detail}"),
                None => detail,
            },
        },
        BboltError::Usage { path, detail } => StorageError::Corrupt { path, detail },
    }
}

impl From<BboltError> for StorageError {
    fn from(e: BboltError) -> Self {
        db_err(e)
    }
}

/// Writes the state committed in `txn` to `path` as an etcd 3.5 backend;
/// returns the file's size.
pub fn export(txn: &redb::ReadTransaction, path: &Path) -> Result<u64, StorageError> {
    let mut w = bbolt::Writer::create(path)?;
    let meta_t = txn.open_table(META)?;

    // alarm: keys are encoded AlarmMembers, sorted as bytes.
    w.bucket(ALARM)?;
    let mut alarms = Vec::new();
    for item in txn.open_table(ALARMS)?.iter()? {
        let (k, _) = item?;
        let (member_id, alarm) = k.value();
        alarms.push(AlarmMember { member_id, alarm }.encode_to_vec());
    }
    alarms.sort();
    alarms.dedup();
    for a in &alarms {
        w.put(a, b"")?;
    }

    w.bucket(AUTH)?;
    let enabled = get_u64(&meta_t, meta::AUTH_ENABLED)?.unwrap_or(0) == 1;
    w.put(AUTH_ENABLED, &[u8::from(enabled)])?;
    let auth_rev = get_u64(&meta_t, meta::AUTH_REVISION)?.unwrap_or(1);
    w.put(AUTH_REVISION, &auth_rev.to_be_bytes())?;

    w.bucket(AUTH_ROLES_BUCKET)?;
    for item in txn.open_table(AUTH_ROLES)?.iter()? {
        let (k, v) = item?;
        w.put(k.value().as_bytes(), v.value())?;
    }
    w.bucket(AUTH_USERS_BUCKET)?;
    for item in txn.open_table(AUTH_USERS)?.iter()? {
        let (k, v) = item?;
        w.put(k.value().as_bytes(), v.value())?;
    }

    w.bucket(CLUSTER)?;
    w.put(CLUSTER_VERSION, crate::config::CLUSTER_VERSION.as_bytes())?;

    w.bucket(KEY)?;
    for item in txn.open_table(KV)?.iter()? {
        let (k, v) = item?;
        let (key, value) = etcd_kv(k.value(), v.value())?;
        w.put(&key, &value)?;
    }

    // lease: 8-byte BE IDs; IDs are positive, negative ones sort last as bytes.
    w.bucket(LEASE)?;
    let leases = txn.open_table(LEASES)?;
    for item in leases.range(0i64..)?.chain(leases.range(..0i64)?) {
        let (k, v) = item?;
        let id = k.value();
        let ttl: [u8; 8] = v.value().try_into().map_err(|_| StorageError::Decode {
            what: format!("lease/{id:x}"),
            detail: "expected an 8-byte TTL".into(),
        })?;
        let rec = LeaseRecord {
            id,
            ttl: i64::from_be_bytes(ttl),
            remaining_ttl: 0,
        };
        w.put(&id.to_be_bytes(), &rec.encode_to_vec())?;
    }

    w.bucket(MEMBERS_BUCKET)?;
    let mut members = Vec::new();
    for item in txn.open_table(MEMBERS)?.iter()? {
        let (k, v) = item?;
        let m = Member::decode(v.value()).map_err(|e| StorageError::Decode {
            what: format!("members/{:x}", k.value()),
            detail: e.to_string(),
        })?;
        let json = MemberJson {
            id: m.id,
            peer_urls: Some(m.peer_ur_ls),
            is_learner: m.is_learner,
            name: m.name,
            client_urls: (!m.client_ur_ls.is_empty()).then_some(m.client_ur_ls),
        };
        let value = serde_json::to_vec(&json).map_err(|e| StorageError::Db(e.to_string()))?;
        members.push((format!("{:x}", m.id), value));
    }
    members.sort();
    for (k, v) in &members {
        w.put(k.as_bytes(), v)?;
    }
    w.bucket(MEMBERS_REMOVED)?;

    w.bucket(META_BUCKET)?;
    if let Some(cs) = meta_t.get(meta::CONF_STATE)? {
        use protobuf::Message as _;
        let cs = raft::eraftpb::ConfState::parse_from_bytes(cs.value()).map_err(|e| {
            StorageError::Decode {
                what: "meta/raft_conf_state".into(),
                detail: e.to_string(),
            }
        })?;
        let json = ConfStateJson {
            voters: Some(cs.voters.clone()),
            learners: (!cs.learners.is_empty()).then(|| cs.learners.clone()),
            voters_outgoing: (!cs.voters_outgoing.is_empty()).then(|| cs.voters_outgoing.clone()),
            learners_next: (!cs.learners_next.is_empty()).then(|| cs.learners_next.clone()),
            auto_leave: cs.auto_leave,
        };
        let value = serde_json::to_vec(&json).map_err(|e| StorageError::Db(e.to_string()))?;
        w.put(CONF_STATE, &value)?;
    }
    let applied = get_u64(&meta_t, meta::APPLIED_INDEX)?.unwrap_or(0);
    w.put(CONSISTENT_INDEX, &applied.to_be_bytes())?;
    let compact = get_u64(&meta_t, meta::COMPACT_REV)?.unwrap_or(0);
    let finished = get_u64(&meta_t, meta::FINISHED_COMPACT_REV)?.unwrap_or(0);
    if finished > 0 {
        w.put(FINISHED_COMPACT, &rev_key(finished, 0, false))?;
    }
    if compact > 0 {
        w.put(SCHEDULED_COMPACT, &rev_key(compact, 0, false))?;
    }
    let term = get_u64(&meta_t, meta::CONSISTENT_TERM)?.unwrap_or(0);
    w.put(TERM, &term.to_be_bytes())?;
    Ok(w.finish()?)
}

/// What an etcd backend says about the member and cluster beyond the
/// state our tables hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportedMeta {
    /// The last Raft index applied to the backend (`meta/consistent_index`).
    pub consistent_index: u64,
    /// The term of that entry (`meta/term`; etcd 3.4 does not record it: 0).
    pub term: u64,
    /// The Raft configuration (`meta/confState`; etcd 3.5 and later).
    pub conf_state: Option<ConfStateJson>,
    /// Members (`members`), in etcd's encoding's order.
    pub members: Vec<Member>,
    /// IDs of removed members (`members_removed`).
    pub removed_members: Vec<u64>,
    /// `cluster/clusterVersion`.
    pub cluster_version: Option<String>,
    /// The cluster ID: never in the backend (etcd keeps it in its WAL);
    /// `None` here, for the caller that reads the WAL to fill in.
    pub cluster_id: Option<u64>,
    /// The newest revision of the key-value store.
    pub revision: u64,
    /// The scheduled compaction revision (0: never compacted).
    pub compact_revision: u64,
    /// Key-value records imported (every revision of every key).
    pub kv_records: u64,
}

fn decode_err(what: String, detail: impl std::fmt::Display) -> StorageError {
    StorageError::Decode {
        what,
        detail: detail.to_string(),
    }
}

fn be_u64(what: &str, v: &[u8]) -> Result<u64, StorageError> {
    v.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| decode_err(what.into(), format!("expected 8 bytes, found {}", v.len())))
}

/// Reads the etcd backend `bbolt_file` (checked as `bbolt check` does) into
/// `target`'s tables, replacing their state (the Raft log is left alone),
/// in one transaction; `meta` gets `applied_index` (the consistent index),
/// `term`, the compaction revisions and auth's flag and revision.
pub fn import_backend(bbolt_file: &Path, target: &Backend) -> Result<ImportedMeta, StorageError> {
    let reader = Reader::open(bbolt_file)?;
    reader.check()?;
    import_reader(&reader, target)
}

/// [`import_backend`] from an open reader (for a snapshot file, whose
/// checksum follows the database).
pub fn import_reader(reader: &Reader, target: &Backend) -> Result<ImportedMeta, StorageError> {
    let mut txn = target.write()?;
    txn.set_durability(redb::Durability::Immediate)?;
    let imported = import_into(reader, &txn)?;
    txn.commit()?;
    Ok(imported)
}

/// The buckets etcd 3.4 to 3.6 write; any other is refused (an unknown schema).
const KNOWN: &[&[u8]] = &[
    KEY,
    META_BUCKET,
    LEASE,
    ALARM,
    CLUSTER,
    MEMBERS_BUCKET,
    MEMBERS_REMOVED,
    AUTH,
    AUTH_USERS_BUCKET,
    AUTH_ROLES_BUCKET,
];

/// [`import_backend`] into an open write transaction (not committed here).
pub fn import_txn(reader: &Reader, txn: &WriteTransaction) -> Result<ImportedMeta, StorageError> {
    import_into(reader, txn)
}

fn import_into(reader: &Reader, txn: &WriteTransaction) -> Result<ImportedMeta, StorageError> {
    let path = reader.path().to_path_buf();
    let corrupt = |detail: String| StorageError::Corrupt {
        path: path.clone(),
        detail,
    };
    let names = reader.bucket_names()?;
    if !names.iter().any(|n| n == KEY) || !names.iter().any(|n| n == META_BUCKET) {
        return Err(corrupt(
            "not an etcd backend (no `key` or `meta` bucket)".into(),
        ));
    }
    if let Some(n) = names.iter().find(|n| !KNOWN.contains(&n.as_slice())) {
        // etcd 3.6 adds no bucket of its own; anything else is not etcd's.
        return Err(corrupt(format!(
            "unknown bucket {:?} (not etcd's schema)",
            String::from_utf8_lossy(n)
        )));
    }
    let mut out = ImportedMeta::default();
    // What an etcd backend does not carry stays: the Raft log's keys, this
    // member's and its cluster's identity, the cluster version.
    clear_state_machine(
        txn,
        &[
            meta::CLUSTER_ID,
            meta::MEMBER_ID,
            meta::HARD_STATE,
            meta::CONF_STATE,
            meta::LOG_SNAPSHOT,
            meta::CLUSTER_VERSION,
            meta::RESTORED,
            meta::LOG_IN_FILES,
        ],
    )?;
    let mut kv = txn.open_table(KV)?;
    let mut meta_t = txn.open_table(META)?;
    let mut leases = txn.open_table(LEASES)?;
    let mut members = txn.open_table(MEMBERS)?;
    let mut alarms = txn.open_table(ALARMS)?;
    let mut users = txn.open_table(AUTH_USERS)?;
    let mut roles = txn.open_table(AUTH_ROLES)?;

    for name in &names {
        let Some(bucket) = reader.bucket(name)? else {
            continue;
        };
        let bname = String::from_utf8_lossy(name).into_owned();
        reader.for_each(&bucket, |e| {
            if e.is_bucket {
                return Err(BboltError::Corrupt {
                    path: reader.path().to_path_buf(),
                    page: None,
                    detail: format!("unexpected nested bucket in {bname}"),
                });
            }
            import_entry(
                name,
                e.key,
                e.value,
                &mut out,
                Tables {
                    kv: &mut kv,
                    meta: &mut meta_t,
                    leases: &mut leases,
                    members: &mut members,
                    alarms: &mut alarms,
                    users: &mut users,
                    roles: &mut roles,
                },
            )
            .map_err(|err| BboltError::Corrupt {
                path: reader.path().to_path_buf(),
                page: None,
                detail: format!("{bname}: {err}"),
            })
        })?;
    }
    put_u64(&mut meta_t, meta::APPLIED_INDEX, out.consistent_index)?;
    put_u64(&mut meta_t, meta::CONSISTENT_TERM, out.term)?;
    if out.compact_revision > 0 {
        put_u64(&mut meta_t, meta::COMPACT_REV, out.compact_revision)?;
    }
    Ok(out)
}

struct Tables<'a, 'b> {
    kv: &'a mut redb::Table<'b, (u64, u64), &'static [u8]>,
    meta: &'a mut redb::Table<'b, &'static str, &'static [u8]>,
    leases: &'a mut redb::Table<'b, i64, &'static [u8]>,
    members: &'a mut redb::Table<'b, u64, &'static [u8]>,
    alarms: &'a mut redb::Table<'b, (u64, i32), &'static [u8]>,
    users: &'a mut redb::Table<'b, &'static str, &'static [u8]>,
    roles: &'a mut redb::Table<'b, &'static str, &'static [u8]>,
}

fn import_entry(
    bucket: &[u8],
    k: &[u8],
    v: &[u8],
    out: &mut ImportedMeta,
    t: Tables<'_, '_>,
) -> Result<(), StorageError> {
    let key_name = || String::from_utf8_lossy(k).into_owned();
    match bucket {
        KEY => {
            let (main, sub, tomb) = parse_rev_key(k)
                .ok_or_else(|| decode_err(format!("key {k:02x?}"), "not a revision key"))?;
            let mut rec =
                KeyValue::decode(v).map_err(|e| decode_err(format!("revision {main}/{sub}"), e))?;
            if rec.key.is_empty() && !tomb {
                // etcdutl's `--bump-revision` marker: a revision without a key.
                out.revision = out.revision.max(main);
                put_u64(t.meta, meta::CURRENT_REV, out.revision)?;
                return Ok(());
            }
            if tomb {
                rec.mod_revision = main as i64;
            }
            t.kv.insert(
                (main, sub),
                crate::mvcc::encode_record(&rec, tomb).as_slice(),
            )?;
            out.revision = out.revision.max(main);
            out.kv_records += 1;
        }
        META_BUCKET => match k {
            CONSISTENT_INDEX => out.consistent_index = be_u64("meta/consistent_index", v)?,
            TERM => out.term = be_u64("meta/term", v)?,
            SCHEDULED_COMPACT => {
                let (main, _, _) = parse_rev_key(v).ok_or_else(|| {
                    decode_err("meta/scheduledCompactRev".into(), "not a revision")
                })?;
                out.compact_revision = main;
            }
            FINISHED_COMPACT => {
                let (main, _, _) = parse_rev_key(v).ok_or_else(|| {
                    decode_err("meta/finishedCompactRev".into(), "not a revision")
                })?;
                put_u64(t.meta, meta::FINISHED_COMPACT_REV, main)?;
            }
            CONF_STATE => {
                out.conf_state = Some(
                    serde_json::from_slice(v)
                        .map_err(|e| decode_err("meta/confState".into(), e))?,
                );
            }
            // etcd 3.6's storage version and anything else: not ours to keep.
            _ => {}
        },
        LEASE => {
            let l = LeaseRecord::decode(v).map_err(|e| decode_err(format!("lease {k:02x?}"), e))?;
            t.leases.insert(l.id, l.ttl.to_be_bytes().as_slice())?;
        }
        ALARM => {
            let a = AlarmMember::decode(k).map_err(|e| decode_err("alarm".into(), e))?;
            t.alarms.insert((a.member_id, a.alarm), b"".as_slice())?;
        }
        AUTH => match k {
            AUTH_ENABLED => {
                put_u64(t.meta, meta::AUTH_ENABLED, u64::from(v.first() == Some(&1)))?;
            }
            AUTH_REVISION => put_u64(t.meta, meta::AUTH_REVISION, be_u64("auth/authRevision", v)?)?,
            _ => {}
        },
        AUTH_USERS_BUCKET | AUTH_ROLES_BUCKET => {
            let name = std::str::from_utf8(k)
                .map_err(|_| decode_err(format!("{k:02x?}"), "name is not UTF-8"))?;
            if bucket == AUTH_USERS_BUCKET {
                crate::pb::authpb::User::decode(v)
                    .map_err(|e| decode_err(format!("authUsers/{name}"), e))?;
                t.users.insert(name, v)?;
            } else {
                crate::pb::authpb::Role::decode(v)
                    .map_err(|e| decode_err(format!("authRoles/{name}"), e))?;
                t.roles.insert(name, v)?;
            }
        }
        MEMBERS_BUCKET => {
            let m: MemberJson = serde_json::from_slice(v)
                .map_err(|e| decode_err(format!("members/{}", key_name()), e))?;
            let member = Member {
                id: m.id,
                name: m.name,
                peer_ur_ls: m.peer_urls.unwrap_or_default(),
                client_ur_ls: m.client_urls.unwrap_or_default(),
                is_learner: m.is_learner,
            };
            t.members
                .insert(member.id, member.encode_to_vec().as_slice())?;
            out.members.push(member);
        }
        MEMBERS_REMOVED => {
            let id = std::str::from_utf8(k)
                .ok()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .ok_or_else(|| {
                    decode_err(format!("members_removed/{}", key_name()), "not a hex ID")
                })?;
            out.removed_members.push(id);
        }
        CLUSTER if k == CLUSTER_VERSION => {
            out.cluster_version = Some(String::from_utf8_lossy(v).into_owned());
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_keys_as_etcd_writes_them() {
        let k = rev_key(5, 1, true);
        assert_eq!(k.len(), 18);
        assert_eq!(k[8], b'_');
        assert_eq!(parse_rev_key(&k), Some((5, 1, true)));
        assert_eq!(parse_rev_key(&rev_key(7, 0, false)), Some((7, 0, false)));
        assert_eq!(parse_rev_key(b"short"), None);
    }

    /// A database Debian's etcd 3.4 wrote (the fuzz seed: keys `a` twice,
    /// `b` put and deleted, `c` with a lease, a user and a role).
    #[test]
    fn imports_what_etcd_3_4_wrote() -> Result<(), StorageError> {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/bbolt/etcd34.db");
        let tmp = tempfile::tempdir().map_err(|e| StorageError::Db(e.to_string()))?;
        let backend = Backend::open(tmp.path())?;
        let got = import_backend(&file, &backend)?;
        assert_eq!(got.revision, 6);
        assert_eq!(got.kv_records, 5);
        assert_eq!(got.compact_revision, 0);
        assert!(got.consistent_index > 0);
        assert_eq!(got.members.len(), 1);
        assert_eq!(got.members[0].name, "default");
        assert_eq!(got.cluster_version.as_deref(), Some("3.4.0"));
        assert_eq!(got.cluster_id, None);
        let txn = backend.read()?;
        assert_eq!(txn.open_table(LEASES)?.iter()?.count(), 1);
        assert_eq!(txn.open_table(AUTH_USERS)?.iter()?.count(), 1);
        assert_eq!(txn.open_table(AUTH_ROLES)?.iter()?.count(), 1);
        let meta_t = txn.open_table(META)?;
        assert_eq!(
            get_u64(&meta_t, meta::APPLIED_INDEX)?,
            Some(got.consistent_index)
        );
        let (st, leased) = crate::mvcc::Store::scan_txn(&txn)?;
        assert_eq!(st.rev, 6);
        assert_eq!(st.index.live(), 2);
        assert_eq!(leased.len(), 1);
        // Exported again, the key bucket is byte for byte etcd's.
        let out = tmp.path().join("again.db");
        export(&txn, &out)?;
        type Pairs = Vec<(Vec<u8>, Vec<u8>)>;
        let key_bucket = |f: &Path| -> Result<Pairs, StorageError> {
            let r = Reader::open(f)?;
            r.check()?;
            let b = r
                .bucket(KEY)?
                .ok_or_else(|| StorageError::Db("no key bucket".into()))?;
            let mut v = Vec::new();
            r.for_each(&b, |e| {
                v.push((e.key.to_vec(), e.value.to_vec()));
                Ok(())
            })?;
            Ok(v)
        };
        assert_eq!(key_bucket(&out)?, key_bucket(&file)?);
        Ok(())
    }

    #[test]
    fn member_json_as_go_encodes_it() -> Result<(), serde_json::Error> {
        let m = MemberJson {
            id: 0x8e9e05c52164694d,
            peer_urls: Some(vec!["http://localhost:2380".into()]),
            is_learner: false,
            name: "default".into(),
            client_urls: Some(vec!["http://localhost:2379".into()]),
        };
        assert_eq!(
            serde_json::to_string(&m)?,
            r#"{"id":10276657743932975437,"peerURLs":["http://localhost:2380"],"name":"default","clientURLs":["http://localhost:2379"]}"#
        );
        let back: MemberJson = serde_json::from_str(r#"{"id":1,"peerURLs":null}"#)?;
        assert_eq!(back.peer_urls, None);
        Ok(())
    }
}
