//! The Raft log as raft-rs sees it: an in-memory [`MemStorage`] window over the
//! durable log kept in the log files ([`wal`]: entries and hard state; the conf
//! state and the last installed snapshot's mark are in the database's `meta`).
//! Entries are appended to the files before raft-rs is told they are stable;
//! compaction marks them gone in the files and removes them from memory.

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use raft::storage::MemStorage;
use redb::ReadableTable;

use crate::storage::{self, Backend, LOG, META, StorageError};

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

fn dec<M: PbMessage>(what: &str, b: &[u8]) -> Result<M> {
    M::parse_from_bytes(b).map_err(|e| StorageError::Decode {
        what: what.to_string(),
        detail: e.to_string(),
    })
}

fn enc<M: PbMessage>(m: &M) -> Result<Vec<u8>> {
    m.write_to_bytes().map_err(|e| StorageError::Decode {
        what: "raft message".into(),
        detail: e.to_string(),
    })
}

/// What `--force-new-cluster` did to the log.
#[derive(Debug)]
pub struct ForcedRestart {
    /// Members removed from the membership.
    pub removed: Vec<u64>,
    /// Entries beyond the recorded commit index, kept and committed.
    pub beyond_commit: u64,
    /// The new commit index (the last membership change appended).
    pub commit: u64,
}

pub struct LogStore {
    mem: MemStorage,
    backend: Arc<Backend>,
    wal: wal::Wal,
}

/// Where the log's segments go: `--wal-dir`, else `<data-dir>/member/log`.
pub fn log_dir(data_dir: &Path, wal_dir: Option<&Path>) -> PathBuf {
    match wal_dir {
        Some(d) => d.to_path_buf(),
        None => data_dir.join("member").join("log"),
    }
}

/// Segment size: etcd's 64 MiB, less on a small filesystem (a thirty-second
/// of it, at least 1 MiB), so that preallocation never fills a small disk.
fn segment_size(dir: &Path) -> u64 {
    let probe = if dir.exists() {
        dir
    } else {
        dir.parent().unwrap_or(dir)
    };
    crate::storage::space::filesystem_size(probe)
        .map(|t| (t / 32).clamp(1 << 20, 64 << 20))
        .unwrap_or(64 << 20)
}

/// A log kept in the database's tables (`raft_log`, hard state in `meta`):
/// what bootstrap, `etcdutl snapshot restore`, the import of etcd's data
/// directory and `--force-new-cluster` write, and what earlier versions kept;
/// [`LogStore::load`] moves it into the log files.
struct Staged {
    base: (u64, u64),
    hs: HardState,
    entries: Vec<Entry>,
}

fn snapshot_mark(
    meta: &impl redb::ReadableTable<&'static str, &'static [u8]>,
) -> Result<(u64, u64)> {
    match meta.get(storage::meta::LOG_SNAPSHOT)? {
        Some(v) => {
            let b = v.value();
            if b.len() != 16 {
                return Err(StorageError::Decode {
                    what: "meta/raft_log_snapshot".into(),
                    detail: format!("expected 16 bytes, found {}", b.len()),
                });
            }
            let mut i = [0u8; 8];
            let mut t = [0u8; 8];
            i.copy_from_slice(&b[..8]);
            t.copy_from_slice(&b[8..]);
            Ok((u64::from_be_bytes(i), u64::from_be_bytes(t)))
        }
        None => Ok((0, 0)),
    }
}

fn put_mark(meta: &mut redb::Table<&str, &[u8]>, (index, term): (u64, u64)) -> Result<()> {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&index.to_be_bytes());
    b.extend_from_slice(&term.to_be_bytes());
    meta.insert(storage::meta::LOG_SNAPSHOT, b.as_slice())?;
    Ok(())
}

fn read_staged(backend: &Backend) -> Result<Option<Staged>> {
    let txn = backend.read()?;
    let meta = txn.open_table(META)?;
    let Some(hs) = meta.get(storage::meta::HARD_STATE)? else {
        return Ok(None);
    };
    let hs: HardState = dec("meta/raft_hard_state", hs.value())?;
    let base = snapshot_mark(&meta)?;
    let log = txn.open_table(LOG)?;
    let mut entries = Vec::new();
    for (expect, item) in (base.0 + 1..).zip(log.range(base.0 + 1..)?) {
        let (k, v) = item?;
        let e: Entry = dec(&format!("raft_log/{}", k.value()), v.value())?;
        if e.index != expect || k.value() != e.index {
            return Err(StorageError::Corrupt {
                path: backend.path().to_path_buf(),
                detail: format!(
                    "raft log has a gap: expected entry {expect}, found {} (key {})",
                    e.index,
                    k.value()
                ),
            });
        }
        entries.push(e);
    }
    Ok(Some(Staged { base, hs, entries }))
}

impl LogStore {
    /// A log that starts with `entries` (all committed; etcd bootstraps a new
    /// cluster with one membership change per initial member), or empty for a
    /// member joining an existing cluster.
    pub fn bootstrap_entries(
        backend: &Arc<Backend>,
        dir: &Path,
        entries: Vec<Entry>,
    ) -> Result<LogStore> {
        let mut hs = HardState::default();
        if let Some(last) = entries.last() {
            hs.term = last.term;
            hs.commit = last.index;
        }
        let mut txn = backend.write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        {
            let mut log = txn.open_table(LOG)?;
            for e in &entries {
                log.insert(e.index, enc(e)?.as_slice())?;
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(
                storage::meta::CONF_STATE,
                enc(&ConfState::default())?.as_slice(),
            )?;
            meta.insert(storage::meta::HARD_STATE, enc(&hs)?.as_slice())?;
        }
        txn.commit()?;
        Self::load(backend, dir)?.ok_or_else(|| StorageError::Db("raft log: not written".into()))
    }

    /// The log as persisted; None when the member holds no Raft state yet.
    /// A log still in the database's tables is moved into the log files first.
    pub fn load(backend: &Arc<Backend>, dir: &Path) -> Result<Option<LogStore>> {
        // Snapshot files a stop left behind, sent or received.
        if let Some(snap_dir) = backend.path().parent() {
            snapshot_file::remove_stale(snap_dir, std::time::Duration::ZERO);
        }
        let (applied, cs, mark, in_files) = {
            let txn = backend.read()?;
            let meta = txn.open_table(META)?;
            let applied = storage::get_u64(&meta, storage::meta::APPLIED_INDEX)?.unwrap_or(0);
            let cs: ConfState = match meta.get(storage::meta::CONF_STATE)? {
                Some(v) => dec("meta/raft_conf_state", v.value())?,
                None => ConfState::default(),
            };
            let in_files = storage::get_u64(&meta, storage::meta::LOG_IN_FILES)?.is_some();
            (applied, cs, snapshot_mark(&meta)?, in_files)
        };
        let size = segment_size(dir);
        let (wal, mut base, mut hs, mut entries) = if let Some(st) = read_staged(backend)? {
            let wal = wal::Wal::create(dir, size, st.base, &st.hs, &st.entries)?;
            // The files are durable: the tables can go.
            let mut txn = backend.write()?;
            txn.set_durability(redb::Durability::Immediate)?;
            {
                let mut log = txn.open_table(LOG)?;
                log.retain(|_, _| false)?;
                let mut meta = txn.open_table(META)?;
                meta.remove(storage::meta::HARD_STATE)?;
                storage::put_u64(&mut meta, storage::meta::LOG_IN_FILES, 1)?;
            }
            txn.commit()?;
            (wal, st.base, st.hs, st.entries)
        } else if in_files {
            if !wal::Wal::exists(dir)? {
                return Err(StorageError::Corrupt {
                    path: dir.to_path_buf(),
                    detail: format!(
                        "the database {} says the Raft log is in this directory, but it holds no log segment (was --wal-dir changed?)",
                        backend.path().display()
                    ),
                });
            }
            let (wal, l) = wal::Wal::open(dir, size)?;
            if let Some((path, offset, dropped)) = &l.cut {
                crate::warn!(
                    "cut a torn record at the end of the Raft log (a write a crash interrupted, never acknowledged)",
                    path = path.display().to_string(),
                    offset = *offset,
                    bytes = *dropped
                );
            }
            (wal, l.base, l.hard_state, l.entries)
        } else {
            if wal::Wal::exists(dir)? {
                return Err(StorageError::Corrupt {
                    path: dir.to_path_buf(),
                    detail: format!(
                        "the directory holds a Raft log, but the database {} has no member state; refusing to start a new member beside it (remove the directory to start anew)",
                        backend.path().display()
                    ),
                });
            }
            return Ok(None);
        };
        // A snapshot installed after the files last recorded one: the log
        // restarts after it (keeping what follows when it matches).
        if mark.0 > base.0 {
            let at = mark.0 - base.0;
            let matches = entries
                .get(at as usize - 1)
                .is_some_and(|e| e.index == mark.0 && e.term == mark.1);
            if matches {
                entries.drain(..at as usize);
            } else {
                entries.clear();
            }
            base = mark;
            hs.term = hs.term.max(mark.1);
        }
        let last = entries.last().map(|e| e.index).unwrap_or(base.0);
        if applied > last {
            return Err(StorageError::Corrupt {
                path: dir.to_path_buf(),
                detail: format!(
                    "the Raft log ends at entry {last}, but the database {} has applied entries up to {applied}",
                    backend.path().display()
                ),
            });
        }
        // Whatever the state machine applied was committed, even when the commit
        // index itself (reported by raft-rs after a local append) was not yet durable.
        hs.commit = hs.commit.max(applied).max(base.0);
        let mem = MemStorage::new();
        {
            let mut core = mem.wl();
            // A log never compacted starts at index 1, which a fresh MemStorage
            // already describes (and would refuse as an out-of-date snapshot).
            if base.0 > 0 {
                let mut snap = Snapshot::default();
                snap.mut_metadata().index = base.0;
                snap.mut_metadata().term = base.1;
                snap.mut_metadata().set_conf_state(cs.clone());
                core.apply_snapshot(snap)
                    .map_err(|e| StorageError::Db(format!("raft log: {e}")))?;
            }
            core.append(&entries)
                .map_err(|e| StorageError::Db(format!("raft log: {e}")))?;
            core.set_hardstate(hs);
            core.set_conf_state(cs);
        }
        Ok(Some(LogStore {
            mem,
            backend: backend.clone(),
            wal,
        }))
    }

    /// Puts a log kept in the files back into the database's tables, where
    /// [`Self::force_new_cluster`] rewrites it (the next [`Self::load`] moves
    /// it back). Nothing to do when there is no log or it is staged already.
    pub fn stage(backend: &Arc<Backend>, dir: &Path) -> Result<()> {
        {
            let txn = backend.read()?;
            let meta = txn.open_table(META)?;
            if meta.get(storage::meta::HARD_STATE)?.is_some()
                || storage::get_u64(&meta, storage::meta::LOG_IN_FILES)?.is_none()
            {
                return Ok(());
            }
        }
        let Some(store) = Self::load(backend, dir)? else {
            return Ok(());
        };
        let hs = store.mem.rl().hard_state().clone();
        let first = raft::Storage::first_index(&store.mem).unwrap_or(1);
        let base_term = raft::Storage::term(&store.mem, first - 1).unwrap_or(0);
        let mut txn = backend.write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        {
            let mut log = txn.open_table(LOG)?;
            log.retain(|_, _| false)?;
            let last = raft::Storage::last_index(&store.mem).unwrap_or(0);
            if last >= first {
                let ents = raft::Storage::entries(
                    &store.mem,
                    first,
                    last + 1,
                    None,
                    raft::GetEntriesContext::empty(false),
                )
                .map_err(|e| StorageError::Db(format!("raft log: {e}")))?;
                for e in &ents {
                    log.insert(e.index, enc(e)?.as_slice())?;
                }
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(storage::meta::HARD_STATE, enc(&hs)?.as_slice())?;
            put_mark(&mut meta, (first - 1, base_term))?;
        }
        txn.commit()?;
        Ok(())
    }

    /// `--force-new-cluster`, as etcd does it: on a member that has a log,
    /// committed membership changes are appended that remove every other
    /// member (and add this one if the membership lacks it). Once applied, the member is a one-member cluster
    /// with all its data and its cluster ID. Returns the member IDs removed, or
    /// `None` when the database holds no Raft state yet (a new member: the flag
    /// has no effect).
    pub fn force_new_cluster(
        backend: &Arc<Backend>,
        local: &crate::pb::etcdserverpb::Member,
    ) -> Result<Option<ForcedRestart>> {
        use prost::Message as _;
        use raft::eraftpb::{ConfChange, ConfChangeType, EntryType};
        let mut txn = backend.write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        let out = {
            let mut meta = txn.open_table(META)?;
            let Some(hs) = meta
                .get(storage::meta::HARD_STATE)?
                .map(|v| v.value().to_vec())
            else {
                return Ok(None);
            };
            let mut hs: HardState = dec("meta/raft_hard_state", &hs)?;
            let applied = storage::get_u64(&meta, storage::meta::APPLIED_INDEX)?.unwrap_or(0);
            hs.commit = hs.commit.max(applied);
            let cs: ConfState = match meta.get(storage::meta::CONF_STATE)? {
                Some(v) => dec("meta/raft_conf_state", v.value())?,
                None => ConfState::default(),
            };
            let mut ids: std::collections::BTreeSet<u64> = cs
                .voters
                .iter()
                .chain(cs.learners.iter())
                .chain(cs.voters_outgoing.iter())
                .chain(cs.learners_next.iter())
                .copied()
                .collect();
            let mut log = txn.open_table(LOG)?;
            // etcd discards the entries beyond the commit index its WAL records.
            // Here a commit index that only moved is written without a sync
            // (the raft loop syncs the hard state when its term or vote
            // changes), so a crash can lose it while the entries themselves
            // are durable: they are kept, and committed
            // with the membership changes (a write whose client did not hear
            // the outcome may survive; an acknowledged one is never dropped).
            let last = match log.last()? {
                Some((k, _)) => k.value().max(hs.commit),
                None => hs.commit,
            };
            let beyond = last - hs.commit;
            hs.commit = last;
            // Membership changes not applied yet count too.
            for item in log.range(applied + 1..=hs.commit)? {
                let (k, v) = item?;
                let e: Entry = dec(&format!("raft_log/{}", k.value()), v.value())?;
                if e.get_entry_type() != EntryType::EntryConfChange {
                    continue;
                }
                let cc: ConfChange = dec(&format!("raft_log/{}", k.value()), &e.data)?;
                match cc.get_change_type() {
                    ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                        ids.insert(cc.node_id);
                    }
                    ConfChangeType::RemoveNode => {
                        ids.remove(&cc.node_id);
                    }
                }
            }
            let mut changes = Vec::new();
            // Add this member first: the set of voters must never become empty.
            if !ids.contains(&local.id) {
                let mut cc = ConfChange::default();
                cc.set_change_type(ConfChangeType::AddNode);
                cc.node_id = local.id;
                cc.context = local.encode_to_vec().into();
                changes.push(cc);
            }
            let removed: Vec<u64> = ids.iter().copied().filter(|id| *id != local.id).collect();
            for id in &removed {
                let mut cc = ConfChange::default();
                cc.set_change_type(ConfChangeType::RemoveNode);
                cc.node_id = *id;
                changes.push(cc);
            }
            let mut index = hs.commit;
            for cc in changes {
                index += 1;
                let mut e = Entry::default();
                e.set_entry_type(EntryType::EntryConfChange);
                e.term = hs.term;
                e.index = index;
                e.data = enc(&cc)?.into();
                log.insert(index, enc(&e)?.as_slice())?;
            }
            hs.commit = index;
            meta.insert(storage::meta::HARD_STATE, enc(&hs)?.as_slice())?;
            ForcedRestart {
                removed,
                beyond_commit: beyond,
                commit: index,
            }
        };
        txn.commit()?;
        Ok(Some(out))
    }

    /// The handle raft-rs reads from.
    pub fn storage(&self) -> PeerStorage {
        PeerStorage {
            mem: self.mem.clone(),
            backend: self.backend.clone(),
            snapshots: Default::default(),
        }
    }

    /// Installs a snapshot received from the leader: the state machine is
    /// replaced in one durable transaction, then the log files start over
    /// after the snapshot's index (a crash in between is resolved by
    /// [`Self::load`], which finds the newer snapshot mark in the database).
    pub fn install_snapshot(&mut self, snap: &Snapshot) -> Result<()> {
        let meta = snap.get_metadata();
        let mut txn = self.backend.write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        match snapshot_file::local_path(&snap.data) {
            // Received in chunks into a file (see `transport`).
            Some(path) => {
                let opened = std::fs::File::open(&path).and_then(|f| {
                    let len = f.metadata()?.len();
                    Ok((f, len))
                });
                let (f, len) = opened.map_err(|e| StorageError::Open {
                    path,
                    detail: format!("received snapshot: {e}"),
                })?;
                crate::storage::snapshot::load_from(&txn, f, len)?;
            }
            None => crate::storage::snapshot::load(&txn, &snap.data)?,
        }
        {
            let mut log = txn.open_table(LOG)?;
            log.retain(|_, _| false)?;
            let mut m = txn.open_table(META)?;
            put_mark(&mut m, (meta.index, meta.term))?;
            m.insert(
                storage::meta::CONF_STATE,
                enc(meta.get_conf_state())?.as_slice(),
            )?;
            storage::put_u64(&mut m, storage::meta::APPLIED_INDEX, meta.index)?;
            m.remove(storage::meta::HARD_STATE)?;
            storage::put_u64(&mut m, storage::meta::LOG_IN_FILES, 1)?;
        }
        txn.commit()?;
        snapshot_file::discard(&snap.data);
        self.backend.note_rewrite();
        let mut hs = self.mem.rl().hard_state().clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        self.wal.reset((meta.index, meta.term), &hs)?;
        self.mem
            .wl()
            .apply_snapshot(snap.clone())
            .map_err(|e| StorageError::Db(format!("raft log: {e}")))
    }

    pub fn first_index(&self) -> u64 {
        raft::Storage::first_index(&self.mem).unwrap_or(1)
    }

    /// Appends new entries and the hard state to the log files (durable on
    /// return with `sync`), then shows them to raft-rs.
    pub fn append(&mut self, entries: &[Entry], hs: Option<&HardState>, sync: bool) -> Result<()> {
        self.wal.append(entries, hs, sync)?;
        let mut core = self.mem.wl();
        core.append(entries)
            .map_err(|e| StorageError::Db(format!("raft log: {e}")))?;
        if let Some(hs) = hs {
            core.set_hardstate(hs.clone());
        }
        Ok(())
    }

    /// Makes everything appended so far durable.
    pub fn sync(&self) -> Result<()> {
        self.wal.sync()
    }

    /// Records a new conf state (inside the apply transaction).
    pub fn write_conf_state(&self, txn: &redb::WriteTransaction, cs: &ConfState) -> Result<()> {
        let mut meta = txn.open_table(META)?;
        meta.insert(storage::meta::CONF_STATE, enc(cs)?.as_slice())?;
        self.mem.wl().set_conf_state(cs.clone());
        Ok(())
    }

    /// Drops entries before `index` (all applied) from memory and marks them
    /// gone in the log files; segments whose entries are all at or below
    /// `durable_applied` (the applied index the database has made durable)
    /// are deleted.
    pub fn compact(&mut self, index: u64, durable_applied: u64) -> Result<()> {
        let first = self.first_index();
        if index <= first {
            return Ok(());
        }
        let term = raft::Storage::term(&self.mem, index - 1)
            .map_err(|e| StorageError::Db(format!("raft log: {e}")))?;
        self.wal.compact(index - 1, term, durable_applied)?;
        // Keep the term of the last compacted entry answerable.
        self.mem
            .wl()
            .compact(index)
            .map_err(|e| StorageError::Db(format!("raft log: {e}")))
    }

    /// Deletes segments the database no longer needs now that it has made
    /// entries up to `durable_applied` durable.
    pub fn release(&mut self, durable_applied: u64) -> Result<()> {
        let compacted = self.first_index().saturating_sub(1);
        self.wal.release(durable_applied.min(compacted))
    }
}
mod snapshot;
pub mod snapshot_file;
pub mod transport;
pub mod wal;
pub mod wire;

/// What raft-rs reads: the in-memory log window, and snapshots made from the
/// state machine at its applied index.
#[derive(Clone)]
pub struct PeerStorage {
    mem: MemStorage,
    backend: Arc<Backend>,
    snapshots: snapshot::SnapshotMaker,
}

impl raft::Storage for PeerStorage {
    fn initial_state(&self) -> raft::Result<raft::RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: raft::GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        self.snapshots.take(request_index, &self.mem, &self.backend)
    }
}
