//! The one place that opens, commits and checks the database file.
//!
//! One redb file, `<data-dir>/member/snap/db.redb`, holds the state machine (key-value revisions, leases,
//! members, alarms, auth, and the meta record with the applied index). The state
//! machine and its applied index are always written in the same transaction.

use std::path::{Path, PathBuf};

use parking_lot::RwLock;
use redb::{Database, ReadTransaction, ReadableDatabase, TableDefinition, WriteTransaction};

/// Revision-keyed key-value records: (main, sub) -> flag byte + encoded `mvccpb.KeyValue`.
pub const KV: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("kv");
/// Small named values: applied index, cluster and member IDs, hard state, ...
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The Raft log: index -> encoded `eraftpb.Entry`.
pub const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Leases: ID -> granted TTL (seconds, i64 big-endian).
pub const LEASES: TableDefinition<i64, &[u8]> = TableDefinition::new("lease");
/// Members: ID -> encoded `etcdserverpb.Member`.
pub const MEMBERS: TableDefinition<u64, &[u8]> = TableDefinition::new("members");
/// Active alarms: (member ID, alarm type) -> empty.
pub const ALARMS: TableDefinition<(u64, i32), &[u8]> = TableDefinition::new("alarm");
/// Auth users: name -> encoded `authpb.User` (password as a bcrypt hash).
pub const AUTH_USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("authUsers");
/// Auth roles: name -> encoded `authpb.Role`.
pub const AUTH_ROLES: TableDefinition<&str, &[u8]> = TableDefinition::new("authRoles");

mod held;
mod in_use;
mod kv_view;

pub use held::ApplyTxn;
pub use kv_view::{KvView, WriteTxn};

pub mod meta {
    pub const APPLIED_INDEX: &str = "applied_index";
    pub const CONSISTENT_TERM: &str = "term";
    pub const CLUSTER_ID: &str = "cluster_id";
    pub const MEMBER_ID: &str = "member_id";
    pub const HARD_STATE: &str = "raft_hard_state";
    pub const CONF_STATE: &str = "raft_conf_state";
    /// (index, term) of the last entry removed from the log by compaction.
    pub const LOG_SNAPSHOT: &str = "raft_log_snapshot";
    pub const COMPACT_REV: &str = "compact_rev";
    /// The compaction revision whose records are all gone from the `kv`
    /// table (the background compactor writes it when it finishes).
    pub const FINISHED_COMPACT_REV: &str = "finished_compact_rev";
    pub const CURRENT_REV: &str = "current_rev";
    pub const CLUSTER_VERSION: &str = "cluster_version";
    pub const AUTH_ENABLED: &str = "auth_enabled";
    pub const AUTH_REVISION: &str = "auth_revision";
    /// Set by `etcdutl snapshot restore`: the keyspace did not come from the
    /// Raft log, so the member compacts the log once it has applied the new
    /// cluster's first entries (and clears this), and a member joining later
    /// gets a snapshot instead of a log that lacks the restored data.
    pub const RESTORED: &str = "restored";
    /// Set once the Raft log and hard state live in the log files
    /// (`raft::wal`) rather than in the `raft_log` table and `meta`.
    pub const LOG_IN_FILES: &str = "raft_log_in_files";
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("cannot open data file {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error("data file {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("database error: {0}")]
    Db(String),
    #[error("data record {what} is malformed: {detail}")]
    Decode { what: String, detail: String },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self { StorageError::Db(e.to_string()) }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::StorageError,
    redb::TransactionError,
    redb::TableError,
    redb::CommitError,
    redb::SetDurabilityError
);

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// The database file of one member.
pub struct Backend {
    /// Shared with the read transactions begun on it (see [`Reader`]): a
    /// defragmentation replaces it while they read on.
    db: RwLock<std::sync::Arc<Database>>,
    path: PathBuf,
    /// Replacements of the whole state machine (snapshots installed), which
    /// a defragmentation's copy cannot follow.
    rewrites: std::sync::atomic::AtomicU64,
    /// Set while a defragmentation copies the file: compaction batches wait.
    defragging: std::sync::atomic::AtomicBool,
    /// Held by each compaction batch (see [`Backend::compaction_turn`]).
    compaction: parking_lot::Mutex<()>,
    /// The last [`Backend::size_in_use`] measured, for the quota check.
    in_use: std::sync::atomic::AtomicU64,
    /// Bytes of writes admitted since `in_use` was last measured.
    admitted: std::sync::atomic::AtomicU64,
    /// The last measure of `in_use`; held while one is taken.
    measure: parking_lot::Mutex<in_use::Measure>,
    /// The write transaction applied batches share (`held.rs`).
    held: parking_lot::Mutex<held::Held>,
    /// Set while `held` has a transaction open (or a failure to report):
    /// read transactions commit it first.
    held_open: std::sync::atomic::AtomicBool,
    /// The read view of the `kv` table Ranges share until the next commit
    /// (`kv_view.rs`).
    views: kv_view::ViewCache,
}

impl Backend {
    /// The file's location inside a data directory (etcd keeps its bbolt file at the same place).
    pub fn file_in(data_dir: &Path) -> PathBuf {
        data_dir.join("member").join("snap").join("db.redb")
    }

    /// Opens (or creates) the database in `data_dir`. Every page's checksum is verified
    /// on open, so a damaged file stops the member with a precise message instead of
    /// being trusted.
    pub fn open(data_dir: &Path) -> Result<Backend> {
        Self::open_path(&Self::file_in(data_dir))
    }

    /// Opens (or creates) the database file at `path` (an import builds one
    /// under a temporary name).
    pub fn open_path(path: &Path) -> Result<Backend> {
        let path = path.to_path_buf();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StorageError::Open {
                path: dir.to_path_buf(),
                detail: e.to_string(),
            })?;
        }
        let existed = std::fs::metadata(&path)
            .map(|m| m.len() > 0)
            .unwrap_or(false);
        let db = create_file(&path, existed)?;
        let backend = Backend {
            db: RwLock::new(std::sync::Arc::new(db)),
            path,
            rewrites: Default::default(),
            defragging: Default::default(),
            compaction: Default::default(),
            in_use: std::sync::atomic::AtomicU64::new(0),
            admitted: std::sync::atomic::AtomicU64::new(0),
            measure: Default::default(),
            held: Default::default(),
            held_open: Default::default(),
            views: Default::default(),
        };
        // A defragmentation's copy that a crash left behind.
        let _ = std::fs::remove_file(backend.defrag_path());
        // Make sure every table exists so readers never see "table does not exist".
        let txn = backend.write()?;
        {
            txn.open_table(KV)?;
            txn.open_table(META)?;
            txn.open_table(LOG)?;
            txn.open_table(LEASES)?;
            txn.open_table(MEMBERS)?;
            txn.open_table(ALARMS)?;
            txn.open_table(AUTH_USERS)?;
            txn.open_table(AUTH_ROLES)?;
        }
        txn.commit()?;
        backend.size_in_use();
        Ok(backend)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A consistent read-only view of every batch applied so far (the
    /// transaction applied batches share is committed first).
    pub fn read(&self) -> Result<Reader> {
        self.commit_held()?;
        self.begin_read()
    }

    /// A read transaction of the last commit, the shared transaction of
    /// applied batches left as it is.
    fn begin_read(&self) -> Result<Reader> {
        let db = self.db.read().clone();
        let txn = db.begin_read()?;
        Ok(Reader { txn, _db: db })
    }

    /// A write transaction of its own, begun after the transaction applied
    /// batches share is committed (the lock is held until it has begun, so
    /// that no batch opens another in between).
    pub fn write(&self) -> Result<WriteTxn<'_>> {
        let _held = self.held_committed()?;
        let txn = self.db.read().begin_write()?;
        Ok(WriteTxn::new(txn, &self.views))
    }

    /// Makes every commit so far durable: an empty transaction committed
    /// with a sync (the commits of applied batches are not synced).
    pub fn sync(&self) -> Result<()> {
        let mut txn = self.write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        txn.commit()?;
        Ok(())
    }

    /// Size of the file on disk, in bytes.
    pub fn size(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// Marks the state machine replaced as a whole (a snapshot installed).
    pub fn note_rewrite(&self) {
        self.rewrites
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// A compaction batch's turn to remove records: held for the batch;
    /// None while a defragmentation copies the file (the batch waits).
    pub fn compaction_turn(&self) -> Option<parking_lot::MutexGuard<'_, ()>> {
        let turn = self.compaction.lock();
        (!self.defragging.load(std::sync::atomic::Ordering::SeqCst)).then_some(turn)
    }
}

/// A read transaction, and the database it reads: a file a defragmentation
/// replaced stays open until its last reader ends.
pub struct Reader {
    // Dropped first: a transaction ends before its database closes.
    txn: ReadTransaction,
    _db: std::sync::Arc<Database>,
}

impl std::ops::Deref for Reader {
    type Target = ReadTransaction;

    fn deref(&self) -> &ReadTransaction {
        &self.txn
    }
}

/// Opens (or creates) a database file with the member's settings; with
/// `check`, every page's checksum is verified first.
fn create_file(path: &Path, check: bool) -> Result<Database> {
    let mut builder = Database::builder();
    // The kernel page cache holds the file too; a small cache of our own keeps
    // the resident set small.
    builder.set_cache_size(8 << 20);
    builder.set_check_integrity_on_open(check);
    builder.create(path).map_err(|e| match e {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(d)) => StorageError::Corrupt {
            path: path.to_path_buf(),
            detail: d,
        },
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => StorageError::Open {
            path: path.to_path_buf(),
            detail: io.to_string(),
        },
        other => StorageError::Corrupt {
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    })
}

/// Empties the state machine in `txn`: the key space, leases, members,
/// alarms, users and roles, and every `meta` key except those in `keep_meta`
/// (the Raft log's keys and this member's identity, which a restore or an
/// import leaves in place). The Raft log table is not touched.
pub fn clear_state_machine(txn: &WriteTransaction, keep_meta: &[&str]) -> Result<()> {
    txn.open_table(KV)?.retain(|_, _| false)?;
    txn.open_table(META)?
        .retain(|k, _| keep_meta.contains(&k))?;
    txn.open_table(LEASES)?.retain(|_, _| false)?;
    txn.open_table(MEMBERS)?.retain(|_, _| false)?;
    txn.open_table(ALARMS)?.retain(|_, _| false)?;
    txn.open_table(AUTH_USERS)?.retain(|_, _| false)?;
    txn.open_table(AUTH_ROLES)?.retain(|_, _| false)?;
    Ok(())
}

/// Reads a u64 meta value.
pub fn get_u64<T: redb::ReadableTable<&'static str, &'static [u8]>>(
    table: &T,
    key: &str,
) -> Result<Option<u64>> {
    match table.get(key)? {
        Some(v) => {
            let b: [u8; 8] = v.value().try_into().map_err(|_| StorageError::Decode {
                what: format!("meta/{key}"),
                detail: "expected 8 bytes".into(),
            })?;
            Ok(Some(u64::from_be_bytes(b)))
        }
        None => Ok(None),
    }
}

pub fn put_u64(table: &mut redb::Table<&str, &[u8]>, key: &str, v: u64) -> Result<()> {
    table.insert(key, v.to_be_bytes().as_slice())?;
    Ok(())
}
pub mod defrag;
pub mod etcd_schema;
pub mod etcd_snapshot;
pub mod snapshot;
pub mod space;
