//! Multi-version concurrency control: revisions, the key index, range, put, delete,
//! txn and compaction, as etcd defines them.
//!
//! Every change is a record in the `kv` table keyed by its revision; the in-memory
//! [`index::TreeIndex`] maps keys to revisions. Reads lock the index for reading and
//! read values from a redb read transaction opened under that lock; the apply loop
//! holds the write lock from the first change of a batch until its commit, so a reader
//! never sees an index entry whose record is not committed.

pub mod index;
pub mod watch;
pub mod writer;

use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use prost::Message;
use redb::ReadableTable;

use crate::error::{Error, Result};
use crate::pb::etcdserverpb::{RangeRequest, RangeResponse, range_request};
use crate::pb::mvccpb::{Event, KeyValue, event::EventType};
use crate::storage::{self, Backend, KV, META, StorageError};
pub use index::{Revision, TreeIndex, Visible};

const TOMBSTONE: u8 = 1;
const LIVE: u8 = 0;

/// A record's bytes: one flag byte (live or tombstone), then the encoded `KeyValue`.
pub fn encode_record(kv: &KeyValue, tombstone: bool) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1 + kv.encoded_len());
    buf.push(if tombstone { TOMBSTONE } else { LIVE });
    // Encoding into a Vec cannot fail: it grows as needed.
    let _ = kv.encode(&mut buf);
    buf
}

pub fn decode_record(rev: (u64, u64), bytes: &[u8]) -> Result<(KeyValue, bool), StorageError> {
    let bad = |detail: String| StorageError::Decode {
        what: format!("kv revision {}/{}", rev.0, rev.1),
        detail,
    };
    let (flag, rest) = bytes
        .split_first()
        .ok_or_else(|| bad("empty record".into()))?;
    let kv = KeyValue::decode(rest).map_err(|e| bad(e.to_string()))?;
    match *flag {
        LIVE => Ok((kv, false)),
        TOMBSTONE => Ok((kv, true)),
        f => Err(bad(format!("unknown record flag {f}"))),
    }
}

pub fn rev_key(r: Revision) -> (u64, u64) {
    (r.main as u64, r.sub as u64)
}

/// Live keys attached to a lease: (key, lease ID).
pub type LeasedKeys = Vec<(Vec<u8>, i64)>;

/// The index and the revision counters, guarded together.
#[derive(Debug, Default)]
pub struct State {
    pub index: TreeIndex,
    /// The last committed main revision.
    pub rev: i64,
    /// The revision of the last compaction (0 when none).
    pub compact_rev: i64,
}

pub struct Store {
    backend: Arc<Backend>,
    state: RwLock<State>,
}

impl Store {
    /// Rebuilds the key index from the `kv` table. Also returns the live keys that
    /// are attached to a lease, for the lessor.
    pub fn open(backend: Arc<Backend>) -> Result<(Store, LeasedKeys), StorageError> {
        let (st, leased) = Self::scan(&backend)?;
        Ok((
            Store {
                backend,
                state: RwLock::new(st),
            },
            leased,
        ))
    }

    /// Rebuilds the index from storage after the state machine was replaced (a
    /// snapshot from the leader).
    pub fn reload(&self) -> Result<LeasedKeys, StorageError> {
        let (st, leased) = Self::scan(&self.backend)?;
        *self.state.write() = st;
        Ok(leased)
    }

    fn scan(backend: &Backend) -> Result<(State, LeasedKeys), StorageError> {
        let mut st = State::default();
        let mut leased: std::collections::HashMap<Vec<u8>, i64> = Default::default();
        let txn = backend.read()?;
        {
            let meta = txn.open_table(META)?;
            st.compact_rev =
                storage::get_u64(&meta, storage::meta::COMPACT_REV)?.unwrap_or(0) as i64;
            let kv = txn.open_table(KV)?;
            for item in kv.iter()? {
                let (k, v) = item?;
                let key = k.value();
                let (rec, tomb) = decode_record(key, v.value())?;
                let rev = Revision::new(key.0 as i64, key.1 as i64);
                let created = Revision::new(rec.create_revision, 0);
                if tomb || rec.lease == 0 {
                    leased.remove(&rec.key);
                } else {
                    leased.insert(rec.key.clone(), rec.lease);
                }
                st.index.restore(&rec.key, rev, created, rec.version, tomb);
                if rev.main > st.rev {
                    st.rev = rev.main;
                }
            }
        }
        // etcd starts at revision 1 on an empty store.
        if st.rev < 1 {
            st.rev = 1;
        }
        if st.rev < st.compact_rev {
            st.rev = st.compact_rev;
        }
        Ok((st, leased.into_iter().collect()))
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    pub fn current_rev(&self) -> i64 {
        self.state.read().rev
    }

    pub fn compact_rev(&self) -> i64 {
        self.state.read().compact_rev
    }

    pub fn revs(&self) -> (i64, i64) {
        let st = self.state.read();
        (st.rev, st.compact_rev)
    }

    pub fn key_count(&self) -> usize {
        self.state.read().index.len()
    }

    /// The write lock, held by the apply loop for one batch.
    pub fn lock_for_apply(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write()
    }

    pub fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read()
    }

    /// Serves a Range at the committed state.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        let st = self.state.read();
        let txn = self.backend.read()?;
        let table = txn.open_table(KV).map_err(StorageError::from)?;
        range_at(&table, &st.index, st.rev, st.compact_rev, req)
    }

    /// The live value of `key` just before revision `rev` (an event's prev_kv).
    pub fn prev_kv(&self, key: &[u8], rev: Revision) -> Result<Option<KeyValue>> {
        let st = self.state.read();
        let Some(prev) = st.index.before(key, rev) else {
            return Ok(None);
        };
        let txn = self.backend.read()?;
        let table = txn.open_table(KV).map_err(StorageError::from)?;
        Ok(read_kv(&table, prev)?.map(|(kv, _)| kv))
    }

    /// Events with revisions in `[from, to]`, in order, at most about `max` of them
    /// (a revision's events are never split). Returns the events and the last revision
    /// covered.
    pub fn history(&self, from: i64, to: i64, max: usize) -> Result<(Vec<Event>, i64)> {
        let txn = self.backend.read()?;
        let table = txn.open_table(KV).map_err(StorageError::from)?;
        let mut out = Vec::new();
        let mut last = from - 1;
        for item in table
            .range((from as u64, 0)..=(to as u64, u64::MAX))
            .map_err(StorageError::from)?
        {
            let (k, v) = item.map_err(StorageError::from)?;
            let key = k.value();
            if out.len() >= max && key.0 as i64 != last {
                break;
            }
            let (kv, tomb) = decode_record(key, v.value())?;
            last = key.0 as i64;
            out.push(Event {
                r#type: if tomb {
                    EventType::Delete
                } else {
                    EventType::Put
                } as i32,
                kv: Some(kv),
                prev_kv: None,
            });
        }
        if out.len() < max {
            last = to;
        }
        Ok((out, last))
    }

    /// etcd's HashKV: a CRC-32C over every stored revision up to `rev` (0 = current).
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64)> {
        let (cur, compact) = self.revs();
        let rev = if rev <= 0 { cur } else { rev };
        if rev > cur {
            return Err(Error::FutureRev);
        }
        if rev < compact {
            return Err(Error::Compacted);
        }
        let txn = self.backend.read()?;
        let table = txn.open_table(KV).map_err(StorageError::from)?;
        let mut h: u32 = 0;
        for item in table
            .range(..=(rev as u64, u64::MAX))
            .map_err(StorageError::from)?
        {
            let (k, v) = item.map_err(StorageError::from)?;
            let (main, sub) = k.value();
            h = crc32c::crc32c_append(h, &main.to_be_bytes());
            h = crc32c::crc32c_append(h, &sub.to_be_bytes());
            h = crc32c::crc32c_append(h, v.value());
        }
        Ok((h, compact, rev))
    }
}

pub(crate) fn read_kv<T: ReadableTable<(u64, u64), &'static [u8]>>(
    table: &T,
    rev: Revision,
) -> Result<Option<(KeyValue, bool)>, StorageError> {
    let key = rev_key(rev);
    match table.get(key)? {
        Some(v) => Ok(Some(decode_record(key, v.value())?)),
        None => Ok(None),
    }
}

/// The Range algorithm shared by reads and by Txn reads inside the apply loop.
pub(crate) fn range_at<T: ReadableTable<(u64, u64), &'static [u8]>>(
    table: &T,
    index: &TreeIndex,
    cur: i64,
    compact: i64,
    req: &RangeRequest,
) -> Result<RangeResponse> {
    let rev = if req.revision <= 0 { cur } else { req.revision };
    if rev > cur {
        return Err(Error::FutureRev);
    }
    if rev < compact {
        return Err(Error::Compacted);
    }
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let sort_order = range_request::SortOrder::try_from(req.sort_order).unwrap_or_default();
    let sort_target = range_request::SortTarget::try_from(req.sort_target).unwrap_or_default();
    let mut fetch_limit = if sort_order != range_request::SortOrder::None || filtered {
        0
    } else {
        req.limit.max(0) as usize
    };
    if fetch_limit > 0 {
        fetch_limit += 1;
    }
    let mut total = 0usize;
    let mut found: Vec<Visible> = Vec::new();
    index.range(&req.key, &req.range_end, rev, |_, v| {
        total += 1;
        if !req.count_only && (fetch_limit == 0 || found.len() < fetch_limit) {
            found.push(v);
        }
        true
    });
    let mut resp = RangeResponse {
        header: Some(crate::pb::etcdserverpb::ResponseHeader {
            revision: cur,
            ..Default::default()
        }),
        count: total as i64,
        ..Default::default()
    };
    if req.count_only {
        return Ok(resp);
    }
    let mut kvs = Vec::with_capacity(found.len());
    for v in found {
        match read_kv(table, v.modified)? {
            Some((kv, false)) => kvs.push(kv),
            Some((_, true)) | None => {
                // The index says live, storage disagrees: the store is inconsistent.
                return Err(Error::Storage(format!(
                    "kv revision {}/{} named by the index is missing",
                    v.modified.main, v.modified.sub
                )));
            }
        }
    }
    if filtered {
        kvs.retain(|kv| {
            (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
        });
    }
    use range_request::{SortOrder as O, SortTarget as T};
    let order = match (sort_target, sort_order) {
        (T::Key, O::Ascend) => O::None,
        (t, O::None) if t != T::Key => O::Ascend,
        (_, o) => o,
    };
    if order != O::None {
        let cmp = |a: &KeyValue, b: &KeyValue| match sort_target {
            T::Key => a.key.cmp(&b.key),
            T::Version => a.version.cmp(&b.version),
            T::Create => a.create_revision.cmp(&b.create_revision),
            T::Mod => a.mod_revision.cmp(&b.mod_revision),
            T::Value => a.value.cmp(&b.value),
        };
        if order == O::Descend {
            kvs.sort_by(|a, b| cmp(b, a));
        } else {
            kvs.sort_by(cmp);
        }
    }
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        resp.more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    resp.kvs = kvs;
    Ok(resp)
}
