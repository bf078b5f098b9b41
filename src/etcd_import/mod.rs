//! Starting on a data directory that etcd wrote: its backend
//! (`member/snap/db`, bbolt), its write-ahead log (`member/wal/*.wal`) and
//! snapshot files (`member/snap/*.snap`) become this member's database, as
//! etcd would restart from them: the backend as of its consistent index, the
//! log entries after the newest snapshot (committed ones not yet in the
//! backend are applied by the Raft loop once the member runs), the hard
//! state, the membership, and the member and cluster IDs.
//!
//! etcd's files are only read. The database is written under a temporary
//! name and renamed into place once complete, so a crash during the import
//! leaves no database and the next start imports again. Anything that cannot
//! be imported stops the member with the file and the reason.

pub mod entry;
pub mod pb;
pub mod snap;
pub mod wal;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::storage::etcd_schema::{ImportedMeta, import_backend};
use crate::storage::{self, Backend, LOG, META, StorageError};

/// Why etcd's data directory cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Wal(#[from] wal::WalError),
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("{0}")]
    Storage(#[from] StorageError),
}

fn file_err(path: &Path, detail: impl ToString) -> ImportError {
    ImportError::File {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

/// What an import found and wrote.
#[derive(Debug, Clone)]
pub struct Imported {
    pub member_id: u64,
    pub cluster_id: u64,
    pub backend: PathBuf,
    pub snapshot: Option<PathBuf>,
    pub wal_files: Vec<PathBuf>,
    /// The backend's consistent index: entries above it are applied on start.
    pub consistent_index: u64,
    /// The revision of the backend.
    pub revision: u64,
    pub commit_index: u64,
    pub last_index: u64,
    pub term: u64,
    /// Where a torn WAL tail was cut (file, offset).
    pub cut: Option<(PathBuf, u64)>,
    /// v2-store requests in the log (no counterpart here).
    pub v2_skipped: u64,
}

/// etcd's backend file in a data directory.
pub fn bbolt_file(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("snap").join("db")
}

/// etcd's WAL directory: `--wal-dir` when etcd ran with one, else
/// `member/wal` in the data directory.
pub fn wal_dir(data_dir: &Path, wal_dir: Option<&Path>) -> PathBuf {
    wal_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| data_dir.join("member").join("wal"))
}

/// Whether `data_dir` (or `waldir`) holds etcd's files: its backend or a WAL
/// file.
pub fn has_etcd_files(data_dir: &Path, waldir: &Path) -> bool {
    bbolt_file(data_dir).exists() || wal::list(waldir).is_ok_and(|names| !names.is_empty())
}

/// Where the database is built before it is renamed into place.
fn temp_file(data_dir: &Path) -> PathBuf {
    let mut p = Backend::file_in(data_dir).into_os_string();
    p.push(".import");
    PathBuf::from(p)
}

/// Imports etcd's files when `data_dir` holds them and no database of ours;
/// None when there is nothing to import. `wal` is `--wal-dir`.
pub fn import_if_present(
    data_dir: &Path,
    wal: Option<&Path>,
    bcrypt_cost: u32,
) -> Result<Option<Imported>, ImportError> {
    let ours = Backend::file_in(data_dir);
    let waldir = wal_dir(data_dir, wal);
    if std::fs::metadata(&ours).is_ok_and(|m| m.len() > 0) || !has_etcd_files(data_dir, &waldir) {
        return Ok(None);
    }
    let tmp = temp_file(data_dir);
    // A database left by an import that did not finish: start over.
    if tmp.exists() {
        std::fs::remove_file(&tmp).map_err(|e| file_err(&tmp, e))?;
    }
    let r = import(data_dir, &waldir, &tmp, bcrypt_cost);
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map(Some)
}

fn import(
    data_dir: &Path,
    waldir: &Path,
    tmp: &Path,
    bcrypt_cost: u32,
) -> Result<Imported, ImportError> {
    let waldir = waldir.to_path_buf();
    let db = bbolt_file(data_dir);
    if !db.exists() {
        return Err(file_err(
            &db,
            "missing: etcd's backend must be beside its WAL to import the member",
        ));
    }
    if !wal::list(&waldir).is_ok_and(|n| !n.is_empty()) {
        return Err(file_err(
            &waldir,
            "no WAL files: etcd's log must be beside its backend to import the member",
        ));
    }
    // The log first: a damaged one stops the import before anything is written.
    let wal_snaps = wal::valid_snapshots(&waldir)?;
    let snapdir = data_dir.join("member").join("snap");
    let snapshot =
        snap::newest_matching(&snapdir, &wal_snaps).map_err(|e| file_err(&snapdir, e))?;
    let start = match &snapshot {
        Some(s) => pb::WalSnapshot {
            index: s.index,
            term: s.term,
            conf_state: None,
        },
        None => pb::WalSnapshot::default(),
    };
    let log = wal::read_all(&waldir, &start)?;
    let member_id = log.metadata.node_id;
    let cluster_id = log.metadata.cluster_id;
    if member_id == 0 || cluster_id == 0 {
        return Err(file_err(
            &waldir,
            "the WAL's metadata names no member or cluster ID",
        ));
    }
    let last_index = log.entries.last().map(|e| e.index).unwrap_or(start.index);
    let hs = &log.hard_state;
    if hs.commit > last_index {
        return Err(file_err(
            &waldir,
            format!(
                "the hard state's commit index {} is beyond the last entry {last_index}",
                hs.commit
            ),
        ));
    }
    let mut conv = entry::Converter::new(bcrypt_cost);
    let mut ours = Vec::with_capacity(log.entries.len());
    for e in &log.entries {
        ours.push(
            conv.convert(e).map_err(|d| {
                file_err(&waldir, format!("entry {} (term {}): {d}", e.index, e.term))
            })?,
        );
    }

    let be = Backend::open_path(tmp)?;
    let meta = import_backend(&db, &be).map_err(|e| {
        if e.to_string().contains(&*db.to_string_lossy()) {
            ImportError::Storage(e)
        } else {
            file_err(&db, e)
        }
    })?;
    let ci = meta.consistent_index;
    if ci < start.index {
        return Err(file_err(
            &db,
            format!(
                "the backend's consistent index {ci} is below the snapshot's index {}",
                start.index
            ),
        ));
    }
    if ci > last_index {
        return Err(file_err(
            &db,
            format!(
                "the backend's consistent index {ci} is beyond the WAL's last entry {last_index}"
            ),
        ));
    }
    let conf_state = conf_state_at(&meta, snapshot.as_ref(), &log.entries, ci)
        .map_err(|d| file_err(&waldir, d))?;
    let term_at_ci = log
        .entries
        .iter()
        .find(|e| e.index == ci)
        .map(|e| e.term)
        .unwrap_or(if ci == start.index {
            start.term
        } else {
            meta.term
        });
    write_raft_state(
        &be,
        member_id,
        cluster_id,
        &start,
        hs,
        &conf_state,
        ci,
        term_at_ci,
        &ours,
    )?;
    drop(be);
    finish(data_dir, tmp)?;
    Ok(Imported {
        member_id,
        cluster_id,
        backend: db,
        snapshot: snapshot.map(|s| s.path),
        wal_files: log.files,
        consistent_index: ci,
        revision: meta.revision,
        commit_index: hs.commit.max(ci),
        last_index,
        term: hs.term,
        cut: log.cut,
        v2_skipped: conv.v2_skipped,
    })
}

/// The membership as of the backend's consistent index: as the backend
/// records it (etcd 3.5 and later), else the snapshot's with the membership
/// changes after it applied.
fn conf_state_at(
    meta: &ImportedMeta,
    snapshot: Option<&snap::SnapInfo>,
    entries: &[pb::Entry],
    ci: u64,
) -> Result<raft::eraftpb::ConfState, String> {
    if let Some(cs) = &meta.conf_state {
        if cs.voters_outgoing.as_ref().is_some_and(|v| !v.is_empty())
            || cs.learners_next.as_ref().is_some_and(|v| !v.is_empty())
        {
            return Err(
                "the backend is in a joint-consensus membership change, not supported".into(),
            );
        }
        return Ok(raft::eraftpb::ConfState {
            voters: cs.voters.clone().unwrap_or_default(),
            learners: cs.learners.clone().unwrap_or_default(),
            ..Default::default()
        });
    }
    let base = snapshot.map(|s| s.conf_state.clone()).unwrap_or_default();
    if !base.voters_outgoing.is_empty() || !base.learners_next.is_empty() {
        return Err("the snapshot is in a joint-consensus membership change, not supported".into());
    }
    let mut voters: BTreeSet<u64> = base.voters.into_iter().collect();
    let mut learners: BTreeSet<u64> = base.learners.into_iter().collect();
    for e in entries.iter().filter(|e| e.index <= ci) {
        if e.r#type != pb::ENTRY_CONF_CHANGE {
            continue;
        }
        let cc = pb::ConfChange::decode(&e.data[..]).map_err(|err| {
            format!(
                "entry {}: membership change does not decode: {err}",
                e.index
            )
        })?;
        match cc.r#type {
            pb::CC_ADD_NODE => {
                learners.remove(&cc.node_id);
                voters.insert(cc.node_id);
            }
            pb::CC_ADD_LEARNER_NODE if !voters.contains(&cc.node_id) => {
                learners.insert(cc.node_id);
            }
            pb::CC_REMOVE_NODE => {
                voters.remove(&cc.node_id);
                learners.remove(&cc.node_id);
            }
            _ => {}
        }
    }
    Ok(raft::eraftpb::ConfState {
        voters: voters.into_iter().collect(),
        learners: learners.into_iter().collect(),
        ..Default::default()
    })
}

fn enc<M: protobuf::Message>(m: &M) -> Result<Vec<u8>, StorageError> {
    m.write_to_bytes()
        .map_err(|e| StorageError::Db(e.to_string()))
}

#[allow(clippy::too_many_arguments)]
fn write_raft_state(
    be: &Backend,
    member_id: u64,
    cluster_id: u64,
    start: &pb::WalSnapshot,
    hs: &pb::HardState,
    cs: &raft::eraftpb::ConfState,
    ci: u64,
    term_at_ci: u64,
    entries: &[raft::eraftpb::Entry],
) -> Result<(), StorageError> {
    let mut txn = be.write()?;
    txn.set_durability(redb::Durability::Immediate)?;
    {
        let mut meta = txn.open_table(META)?;
        storage::put_u64(&mut meta, storage::meta::MEMBER_ID, member_id)?;
        storage::put_u64(&mut meta, storage::meta::CLUSTER_ID, cluster_id)?;
        storage::put_u64(&mut meta, storage::meta::APPLIED_INDEX, ci)?;
        storage::put_u64(&mut meta, storage::meta::CONSISTENT_TERM, term_at_ci)?;
        let h = raft::eraftpb::HardState {
            term: hs.term,
            vote: hs.vote,
            commit: hs.commit.max(ci),
            ..Default::default()
        };
        meta.insert(storage::meta::HARD_STATE, enc(&h)?.as_slice())?;
        meta.insert(storage::meta::CONF_STATE, enc(cs)?.as_slice())?;
        if start.index > 0 {
            let mut b = Vec::with_capacity(16);
            b.extend_from_slice(&start.index.to_be_bytes());
            b.extend_from_slice(&start.term.to_be_bytes());
            meta.insert(storage::meta::LOG_SNAPSHOT, b.as_slice())?;
        }
        meta.remove(storage::meta::RESTORED)?;
        let mut log = txn.open_table(LOG)?;
        log.retain(|_, _| false)?;
        for e in entries {
            log.insert(e.index, enc(e)?.as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// Makes the database durable and puts it in place.
fn finish(data_dir: &Path, tmp: &Path) -> Result<(), ImportError> {
    let dest = Backend::file_in(data_dir);
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| file_err(tmp, e))?;
    std::fs::rename(tmp, &dest).map_err(|e| file_err(&dest, e))?;
    if let Some(dir) = dest.parent() {
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| file_err(dir, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(index: u64, r#type: i32, node_id: u64) -> pb::Entry {
        pb::Entry {
            r#type: pb::ENTRY_CONF_CHANGE,
            term: 2,
            index,
            data: pb::ConfChange {
                id: 0,
                r#type,
                node_id,
                context: vec![],
            }
            .encode_to_vec(),
        }
    }

    #[test]
    fn membership_at_the_consistent_index() {
        let snap = snap::SnapInfo {
            path: PathBuf::from("s.snap"),
            index: 4,
            term: 2,
            conf_state: pb::ConfState {
                voters: vec![1],
                ..Default::default()
            },
        };
        let entries = vec![
            cc(5, pb::CC_ADD_NODE, 2),
            cc(6, pb::CC_ADD_LEARNER_NODE, 3),
            cc(7, pb::CC_REMOVE_NODE, 1),
            cc(8, pb::CC_ADD_NODE, 3),
        ];
        let meta = ImportedMeta::default();
        let at7 = conf_state_at(&meta, Some(&snap), &entries, 7).expect("conf state");
        assert_eq!((at7.voters, at7.learners), (vec![2], vec![3]));
        let at8 = conf_state_at(&meta, Some(&snap), &entries, 8).expect("conf state");
        assert_eq!((at8.voters, at8.learners), (vec![2, 3], vec![]));
        // etcd 3.5 records it in the backend: that one is used.
        let meta = ImportedMeta {
            conf_state: serde_json::from_str(r#"{"voters":[9]}"#).ok(),
            ..Default::default()
        };
        let cs = conf_state_at(&meta, Some(&snap), &entries, 8).expect("conf state");
        assert_eq!(cs.voters, vec![9]);
    }
}
