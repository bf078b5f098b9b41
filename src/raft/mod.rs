//! The Raft log as raft-rs sees it: an in-memory [`MemStorage`] window over the
//! durable log kept in the member's database (`raft_log` table, hard state and conf
//! state in `meta`). Entries are written to the database before raft-rs is told they
//! are stable; compaction removes them from both.

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
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
}

impl LogStore {
    /// A log that starts with `entries` (all committed; etcd bootstraps a new
    /// cluster with one membership change per initial member), or empty for a
    /// member joining an existing cluster.
    pub fn bootstrap_entries(backend: &Arc<Backend>, entries: Vec<Entry>) -> Result<LogStore> {
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
        let mem = MemStorage::new();
        {
            let mut core = mem.wl();
            core.append(&entries)
                .map_err(|e| StorageError::Db(format!("raft log: {e}")))?;
            core.set_hardstate(hs);
        }
        Ok(LogStore {
            mem,
            backend: backend.clone(),
        })
    }

    /// The log as persisted; None when the database holds no Raft state yet.
    pub fn load(backend: &Arc<Backend>) -> Result<Option<LogStore>> {
        let txn = backend.read()?;
        let meta = txn.open_table(META)?;
        let Some(hs) = meta.get(storage::meta::HARD_STATE)? else {
            return Ok(None);
        };
        let mut hs: HardState = dec("meta/raft_hard_state", hs.value())?;
        // Whatever the state machine applied was committed, even when the commit
        // index itself (reported by raft-rs after a local append) was not yet durable.
        if let Some(applied) = storage::get_u64(&meta, storage::meta::APPLIED_INDEX)?
            && applied > hs.commit
        {
            hs.commit = applied;
        }
        let cs: ConfState = match meta.get(storage::meta::CONF_STATE)? {
            Some(v) => dec("meta/raft_conf_state", v.value())?,
            None => ConfState::default(),
        };
        let (snap_index, snap_term) = match meta.get(storage::meta::LOG_SNAPSHOT)? {
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
                (u64::from_be_bytes(i), u64::from_be_bytes(t))
            }
            None => (0, 0),
        };
        let mem = MemStorage::new();
        {
            let mut core = mem.wl();
            let mut snap = Snapshot::default();
            snap.mut_metadata().index = snap_index;
            snap.mut_metadata().term = snap_term;
            snap.mut_metadata().set_conf_state(cs.clone());
            // A log never compacted starts at index 1, which a fresh MemStorage
            // already describes (and would refuse as an out-of-date snapshot).
            if snap_index > 0 {
                core.apply_snapshot(snap)
                    .map_err(|e| StorageError::Db(format!("raft log: {e}")))?;
            }
            let log = txn.open_table(LOG)?;
            let mut ents = Vec::new();
            for (expect, item) in (snap_index + 1..).zip(log.range(snap_index + 1..)?) {
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
                ents.push(e);
            }
            core.append(&ents)
                .map_err(|e| StorageError::Db(format!("raft log: {e}")))?;
            core.set_hardstate(hs);
            core.set_conf_state(cs);
        }
        Ok(Some(LogStore {
            mem,
            backend: backend.clone(),
        }))
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

    /// Installs a snapshot received from the leader: the state machine is replaced
    /// and the log restarts after the snapshot's index, in one durable transaction.
    pub fn install_snapshot(&self, snap: &Snapshot) -> Result<()> {
        let meta = snap.get_metadata();
        let mut txn = self.backend.write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        crate::storage::snapshot::load(&txn, &snap.data)?;
        {
            let mut log = txn.open_table(LOG)?;
            log.retain(|_, _| false)?;
            let mut m = txn.open_table(META)?;
            let mut b = Vec::with_capacity(16);
            b.extend_from_slice(&meta.index.to_be_bytes());
            b.extend_from_slice(&meta.term.to_be_bytes());
            m.insert(storage::meta::LOG_SNAPSHOT, b.as_slice())?;
            m.insert(
                storage::meta::CONF_STATE,
                enc(meta.get_conf_state())?.as_slice(),
            )?;
            storage::put_u64(&mut m, storage::meta::APPLIED_INDEX, meta.index)?;
            let mut hs = self.mem.rl().hard_state().clone();
            hs.commit = hs.commit.max(meta.index);
            hs.term = hs.term.max(meta.term);
            m.insert(storage::meta::HARD_STATE, enc(&hs)?.as_slice())?;
        }
        txn.commit()?;
        self.mem
            .wl()
            .apply_snapshot(snap.clone())
            .map_err(|e| StorageError::Db(format!("raft log: {e}")))
    }

    pub fn first_index(&self) -> u64 {
        raft::Storage::first_index(&self.mem).unwrap_or(1)
    }

    /// Writes new entries and the hard state into `txn`; call [`Self::stable`] once
    /// the transaction has committed.
    pub fn write(
        &self,
        txn: &redb::WriteTransaction,
        entries: &[Entry],
        hs: Option<&HardState>,
    ) -> Result<()> {
        if let Some(first) = entries.first() {
            let mut log = txn.open_table(LOG)?;
            // A new leader may overwrite an uncommitted tail.
            let stale: Vec<u64> = log
                .range(first.index..)?
                .map(|r| r.map(|(k, _)| k.value()))
                .collect::<std::result::Result<_, _>>()?;
            for k in stale {
                log.remove(k)?;
            }
            for e in entries {
                log.insert(e.index, enc(e)?.as_slice())?;
            }
        }
        if let Some(hs) = hs {
            let mut meta = txn.open_table(META)?;
            meta.insert(storage::meta::HARD_STATE, enc(hs)?.as_slice())?;
        }
        Ok(())
    }

    /// Makes committed writes visible to raft-rs.
    pub fn stable(&self, entries: &[Entry], hs: Option<&HardState>) -> Result<()> {
        let mut core = self.mem.wl();
        core.append(entries)
            .map_err(|e| StorageError::Db(format!("raft log: {e}")))?;
        if let Some(hs) = hs {
            core.set_hardstate(hs.clone());
        }
        Ok(())
    }

    /// Records a new conf state (inside the apply transaction).
    pub fn write_conf_state(&self, txn: &redb::WriteTransaction, cs: &ConfState) -> Result<()> {
        let mut meta = txn.open_table(META)?;
        meta.insert(storage::meta::CONF_STATE, enc(cs)?.as_slice())?;
        self.mem.wl().set_conf_state(cs.clone());
        Ok(())
    }

    /// Drops entries before `index` (all applied and durable) from memory and disk.
    pub fn compact(&self, txn: &redb::WriteTransaction, index: u64) -> Result<()> {
        let first = self.first_index();
        if index <= first {
            return Ok(());
        }
        let term = raft::Storage::term(&self.mem, index - 1)
            .map_err(|e| StorageError::Db(format!("raft log: {e}")))?;
        {
            let mut log = txn.open_table(LOG)?;
            for i in first..index {
                log.remove(i)?;
            }
            let mut meta = txn.open_table(META)?;
            let mut b = Vec::with_capacity(16);
            b.extend_from_slice(&(index - 1).to_be_bytes());
            b.extend_from_slice(&term.to_be_bytes());
            meta.insert(storage::meta::LOG_SNAPSHOT, b.as_slice())?;
        }
        Ok(())
    }

    /// Applies a compaction committed by [`Self::compact`] to the in-memory window.
    pub fn compacted(&self, index: u64) -> Result<()> {
        let mut core = self.mem.wl();
        // Keep the term of the last compacted entry answerable.
        core.compact(index)
            .map_err(|e| StorageError::Db(format!("raft log: {e}")))
    }
}
mod snapshot;
pub mod transport;
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
