//! Multi-version concurrency control: revisions, the key index, range, put, delete,
//! txn and compaction, as etcd defines them.
//!
//! Every change is a record in the `kv` table keyed by its revision; the in-memory
//! [`index::TreeIndex`] maps keys to revisions. Reads lock the index for reading and
//! read values from a redb read transaction opened under that lock; the apply loop
//! holds the write lock while it writes a batch, and a read transaction begins by
//! committing the batches applied before it (`storage::held`), so a reader never sees
//! an index entry whose record it cannot read.

pub mod encoded;
pub mod index;
mod index_key;
pub mod watch;
pub mod writer;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
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
    /// Compactions applied to the index whose records are still to be removed
    /// from storage; handed to the compactor after their batch (whose write
    /// transaction commits the batches applied before it first).
    pub compactions: Vec<CompactJob>,
    /// The last compaction known complete in storage when the store was opened.
    pub finished_compact_rev: i64,
}

/// The records of revisions up to `rev` that the compacted index no longer
/// names (all but `keep`) leave storage in the background.
#[derive(Debug)]
pub struct CompactJob {
    pub rev: i64,
    pub keep: HashSet<Revision>,
}

/// How the background compactor removes records: at most `batch_limit`
/// records are visited per write transaction, with a pause of `sleep` between
/// two transactions (etcd's --experimental-compaction-batch-limit and
/// --experimental-compaction-sleep-interval), so the apply loop is never held
/// for a whole compaction.
#[derive(Debug, Clone, Copy)]
pub struct CompactionConfig {
    pub batch_limit: usize,
    pub sleep: Duration,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            batch_limit: 1000,
            sleep: Duration::from_millis(10),
        }
    }
}

pub struct Store {
    backend: Arc<Backend>,
    state: RwLock<State>,
    jobs: Mutex<Option<std::sync::mpsc::Sender<CompactJob>>>,
    compactor: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Asks the compactor to stop between two batches.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// The last compaction revision whose records are all gone from storage;
    /// `i64::MIN` once the compactor failed.
    compacted: tokio::sync::watch::Sender<i64>,
}

impl Store {
    /// Rebuilds the key index from the `kv` table. Also returns the live keys that
    /// are attached to a lease, for the lessor.
    ///
    /// A compaction whose records were not all removed yet (the member stopped
    /// meanwhile) is resumed in the background.
    pub fn open(
        backend: Arc<Backend>,
        cfg: CompactionConfig,
    ) -> Result<(Store, LeasedKeys), StorageError> {
        let (mut st, leased) = Self::scan(&backend)?;
        let resume = Self::resume(&mut st);
        let (compacted, _) = tokio::sync::watch::channel(st.finished_compact_rev);
        let (tx, rx) = std::sync::mpsc::channel();
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let backend = backend.clone();
            let compacted = compacted.clone();
            let stopping = stopping.clone();
            std::thread::Builder::new()
                .name("compactor".into())
                .spawn(move || compactor(backend, cfg, rx, compacted, stopping))
                .map_err(|e| StorageError::Db(format!("cannot start the compactor: {e}")))?
        };
        let store = Store {
            backend,
            state: RwLock::new(st),
            jobs: Mutex::new(Some(tx)),
            compactor: Mutex::new(Some(thread)),
            stopping,
            compacted,
        };
        store.schedule(resume.into_iter().collect());
        Ok((store, leased))
    }

    /// Rebuilds the index from storage after the state machine was replaced (a
    /// snapshot from the leader).
    pub fn reload(&self) -> Result<LeasedKeys, StorageError> {
        let (mut st, leased) = Self::scan(&self.backend)?;
        let resume = Self::resume(&mut st);
        let finished = st.finished_compact_rev;
        *self.state.write() = st;
        self.compacted.send_modify(|d| {
            if *d != i64::MIN {
                *d = (*d).max(finished);
            }
        });
        self.schedule(resume.into_iter().collect());
        Ok(leased)
    }

    /// The index as scanned from storage names every record still stored; a
    /// compaction at the stored compaction revision makes it the index the
    /// compaction left, and the records it drops are removed again.
    pub(crate) fn resume(st: &mut State) -> Option<CompactJob> {
        if st.compact_rev <= 0 || st.finished_compact_rev >= st.compact_rev {
            return None;
        }
        let keep = st.index.compact(st.compact_rev);
        Some(CompactJob {
            rev: st.compact_rev,
            keep,
        })
    }

    /// Hands compactions committed to the index to the background compactor.
    pub fn schedule(&self, jobs: Vec<CompactJob>) {
        let tx = self.jobs.lock();
        for job in jobs {
            if let Some(tx) = tx.as_ref()
                && tx.send(job).is_err()
            {
                crate::error!("the compactor has stopped");
            }
        }
    }

    /// Stops the background compactor after its current batch and waits for
    /// it (it holds the database open). A compaction left unfinished is
    /// resumed when the store opens again.
    pub fn stop_compactor(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.jobs.lock().take();
        if let Some(t) = self.compactor.lock().take()
            && t.join().is_err()
        {
            crate::error!("the compactor panicked");
        }
    }

    /// Waits until the records of every compaction applied so far are gone
    /// from storage (a physical compaction).
    pub async fn wait_compacted(&self) -> Result<()> {
        let mut rx = self.compacted.subscribe();
        loop {
            let target = self.compact_rev();
            let done = *rx.borrow_and_update();
            if done == i64::MIN {
                return Err(Error::Storage("the compactor failed".into()));
            }
            if done >= target {
                return Ok(());
            }
            if rx.changed().await.is_err() {
                return Err(Error::Stopped);
            }
        }
    }

    fn scan(backend: &Backend) -> Result<(State, LeasedKeys), StorageError> {
        Self::scan_txn(&*backend.read()?)
    }

    /// The index and revisions the records in `txn` make, and the leased keys.
    pub(crate) fn scan_txn(
        txn: &redb::ReadTransaction,
    ) -> Result<(State, LeasedKeys), StorageError> {
        let mut st = State::default();
        let mut leased: std::collections::HashMap<Vec<u8>, i64> = Default::default();
        {
            let meta = txn.open_table(META)?;
            st.compact_rev =
                storage::get_u64(&meta, storage::meta::COMPACT_REV)?.unwrap_or(0) as i64;
            st.finished_compact_rev =
                storage::get_u64(&meta, storage::meta::FINISHED_COMPACT_REV)?.unwrap_or(0) as i64;
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
        // A revision raised without a record (`etcdutl snapshot restore
        // --bump-revision`).
        {
            let meta = txn.open_table(META)?;
            if let Some(cur) = storage::get_u64(&meta, storage::meta::CURRENT_REV)? {
                st.rev = st.rev.max(cur as i64);
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
        self.state.read().index.live()
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
        let _open = crate::metrics::Held::new(&crate::metrics::DB_OPEN_READ_TXNS);
        let table = txn.open_table(KV).map_err(StorageError::from)?;
        range_at(&table, &st.index, st.rev, st.compact_rev, req)
    }

    /// One chunk of a streamed Range at revision `rev`: at most `limit` keys
    /// of `[from, end)` live at `rev`, in key order, and whether more follow.
    /// Checked against the current and compacted revisions as a Range is, so
    /// a compaction past `rev` between two chunks ends a stream with etcd's
    /// error.
    pub fn range_chunk(
        &self,
        (from, end): (&[u8], &[u8]),
        rev: i64,
        limit: usize,
        keys_only: bool,
    ) -> Result<(Vec<KeyValue>, bool)> {
        let (found, more, txn) = {
            let st = self.state.read();
            check_rev(rev, st.rev, st.compact_rev)?;
            let mut found = Vec::with_capacity(limit.min(1024));
            let mut more = false;
            st.index.range(from, end, rev, |_, v| {
                if found.len() == limit {
                    more = true;
                    return false;
                }
                found.push(v);
                true
            });
            // The read transaction is a snapshot: records the index named
            // stay readable in it after the lock is released.
            (found, more, self.backend.read()?)
        };
        let table = txn.open_table(KV).map_err(StorageError::from)?;
        let mut kvs = Vec::with_capacity(found.len());
        for v in found {
            let Some((mut kv, false)) = read_kv(&table, v.modified)? else {
                return Err(Error::Storage(format!(
                    "kv revision {}/{} named by the index is missing",
                    v.modified.main, v.modified.sub
                )));
            };
            if keys_only {
                kv.value.clear();
            }
            kvs.push(kv);
        }
        Ok((kvs, more))
    }

    /// The number of keys of `[from, end)` live at `rev`.
    pub fn count_at(&self, (from, end): (&[u8], &[u8]), rev: i64) -> Result<usize> {
        let st = self.state.read();
        check_rev(rev, st.rev, st.compact_rev)?;
        Ok(st.index.count(from, end, rev))
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
    /// It waits for the compactor, so that the hash does not depend on how far
    /// a compaction has progressed.
    pub async fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64)> {
        let (txn, rev, compact, keep) = loop {
            self.wait_compacted().await?;
            let st = self.state.read();
            let (cur, compact) = (st.rev, st.compact_rev);
            let rev = if rev <= 0 { cur } else { rev };
            if rev > cur {
                return Err(Error::FutureRev);
            }
            if rev < compact {
                return Err(Error::Compacted);
            }
            // Under the read lock no compaction can be applied; one applied
            // since the wait sends us back to waiting.
            if *self.compacted.borrow() >= compact {
                // As etcd: below the compaction revision only what the index
                // keeps at `rev` counts (when it keeps anything).
                let keep = if compact > 0 {
                    st.index.keep(rev)
                } else {
                    Default::default()
                };
                break (self.backend.read()?, rev, compact, keep);
            }
        };
        let table = txn.open_table(KV).map_err(StorageError::from)?;
        // etcd's hash: CRC-32C of the bucket name `key`, then of each record's
        // key and value as etcd stores them (`storage::etcd_schema`).
        let mut h: u32 = crc32c::crc32c(storage::etcd_schema::KEY);
        for item in table
            .range(..=(rev as u64, u64::MAX))
            .map_err(StorageError::from)?
        {
            let (k, v) = item.map_err(StorageError::from)?;
            let (main, sub) = k.value();
            if main as i64 <= compact
                && !keep.is_empty()
                && !keep.contains(&Revision::new(main as i64, sub as i64))
            {
                continue;
            }
            let record = v.value();
            if let Some((&LIVE, value)) = record.split_first() {
                h = crc32c::crc32c_append(h, &storage::etcd_schema::rev_key(main, sub, false));
                h = crc32c::crc32c_append(h, value);
            } else {
                let (key, value) = storage::etcd_schema::etcd_kv((main, sub), record)?;
                h = crc32c::crc32c_append(h, &key);
                h = crc32c::crc32c_append(h, &value);
            }
        }
        Ok((h, compact, rev))
    }
}

/// The background compactor: removes the records of each compaction in
/// batches, one write transaction per batch.
fn compactor(
    backend: Arc<Backend>,
    cfg: CompactionConfig,
    jobs: std::sync::mpsc::Receiver<CompactJob>,
    compacted: tokio::sync::watch::Sender<i64>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
) {
    let limit = cfg.batch_limit.max(1);
    for job in jobs {
        let start = std::time::Instant::now();
        match compact_job(&backend, limit, cfg.sleep, &job, &stopping) {
            Ok(None) => return,
            Ok(Some(removed)) => {
                crate::metrics::MVCC_DB_COMPACTION_TOTAL.observe_ms(start.elapsed());
                crate::metrics::MVCC_DB_COMPACTION_LAST.set(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64),
                );
                crate::info!(
                    "finished scheduled compaction",
                    compact_revision = job.rev,
                    removed = removed,
                    took = format!("{:?}", start.elapsed())
                );
                compacted.send_modify(|d| {
                    if *d != i64::MIN {
                        *d = (*d).max(job.rev);
                    }
                });
            }
            Err(e) => {
                crate::error!("compaction failed", compact_revision = job.rev, error = e);
                compacted.send_replace(i64::MIN);
                return;
            }
        }
    }
}

fn compact_job(
    backend: &Backend,
    limit: usize,
    sleep: Duration,
    job: &CompactJob,
    stopping: &std::sync::atomic::AtomicBool,
) -> Result<Option<u64>, StorageError> {
    let end = (job.rev as u64, u64::MAX);
    let mut from = (0u64, 0u64);
    let mut removed = 0u64;
    loop {
        if stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(None);
        }
        // A defragmentation's copy holds removals off.
        let Some(turn) = backend.compaction_turn() else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let batch = std::time::Instant::now();
        let mut txn = backend.write()?;
        let mut next = None;
        {
            let mut table = txn.open_table(KV)?;
            let mut doomed = Vec::new();
            for (seen, item) in table.range(from..=end)?.enumerate() {
                let (k, _) = item?;
                let key = k.value();
                if seen == limit {
                    next = Some(key);
                    break;
                }
                // Tombstones are never kept: a generation that ended at or
                // before the compaction revision is gone.
                if !job
                    .keep
                    .contains(&Revision::new(key.0 as i64, key.1 as i64))
                {
                    doomed.push(key);
                }
            }
            for k in &doomed {
                table.remove(*k)?;
            }
            removed += doomed.len() as u64;
            crate::metrics::MVCC_COMPACTED_KEYS.add(doomed.len() as u64);
        }
        // A batch is made durable by the member's next durable commit (a
        // compaction lost in a crash is resumed when the store opens); the
        // last one is made durable at once, so that a finished compaction stays
        // finished.
        if next.is_some() {
            txn.set_durability(redb::Durability::None)?;
        } else {
            let mut meta = txn.open_table(META)?;
            storage::put_u64(
                &mut meta,
                storage::meta::FINISHED_COMPACT_REV,
                job.rev as u64,
            )?;
        }
        txn.commit()?;
        drop(turn);
        // One batch holds the write lock as etcd's pause does.
        crate::metrics::MVCC_DB_COMPACTION_PAUSE.observe_ms(batch.elapsed());
        match next {
            Some(k) => {
                from = k;
                std::thread::sleep(sleep);
            }
            None => return Ok(Some(removed)),
        }
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
/// etcd's refusals of a read at `rev` given the current and compacted revisions.
fn check_rev(rev: i64, cur: i64, compact: i64) -> Result<()> {
    if rev > cur {
        return Err(Error::FutureRev);
    }
    if rev < compact {
        return Err(Error::Compacted);
    }
    Ok(())
}

pub(crate) fn range_at<T: ReadableTable<(u64, u64), &'static [u8]>>(
    table: &T,
    index: &TreeIndex,
    cur: i64,
    compact: i64,
    req: &RangeRequest,
) -> Result<RangeResponse> {
    let rev = if req.revision <= 0 { cur } else { req.revision };
    check_rev(rev, cur, compact)?;
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
