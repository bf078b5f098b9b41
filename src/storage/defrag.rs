//! Defragmentation by copy, beside a member that goes on serving.
//!
//! etcd's defragmentation holds its database for the whole rewrite: reads
//! and writes wait (etcd issue 9222). Ours rewrites the file in two steps:
//!
//! 1. [`Backend::defrag_copy`]: the `kv` records, read from one read
//!    transaction, are written into a new file beside the database
//!    (`db.redb.defrag`), in order and in paced batches, on a thread of the
//!    lowest CPU and I/O priority, while the member goes on reading,
//!    writing and applying; then those written meanwhile, from newer read
//!    transactions. Compaction's removals wait, so that the
//!    `kv` records only grow: a revision is written once.
//! 2. [`Backend::defrag_finish`], while the Raft loop holds its applies:
//!    the `kv` records written since the copy's read transaction (the
//!    revisions above the last one copied) and every other table again,
//!    whole (leases, members, alarms, auth and the meta record are small);
//!    one durable commit; the new file renamed over the old one (and the
//!    directory synced); the member's handle moved to it. Readers that
//!    began before go on reading the old file, which is gone once they end.
//!
//! A snapshot installed from the leader during the copy replaces the whole
//! state machine: the finish sees it (the backend's rewrite count moved) and
//! the defragmentation fails without touching the database. A crash leaves
//! at most the new file beside the database, which the next open removes.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use redb::{Database, ReadTransaction, ReadableTable, WriteTransaction};

use super::{
    ALARMS, AUTH_ROLES, AUTH_USERS, Backend, KV, LEASES, LOG, MEMBERS, META, Result, StorageError,
};

/// Bytes of records written per transaction of the copy. Each is synced,
/// then the copy pauses as long as the batch took: the copy's syncs come in
/// small parts, so a sync of the member's log waits behind one of them at
/// most, and the copy takes at most half a CPU and of the disk. (At 256 KiB
/// with twice the pause, puts from 10 clients during a defragment of 1 GiB
/// had a p99 of 3.2 ms against 1.3 ms without; at 64 KiB, 1.7-1.9 ms, and
/// the copy took as long.)
const BATCH_BYTES: usize = 64 << 10;

/// A copy made by [`Backend::defrag_copy`], to be finished or dropped.
pub struct Copy {
    /// None once it is the database.
    db: Option<Database>,
    path: PathBuf,
    /// The last `kv` record copied.
    kv_last: Option<(u64, u64)>,
    /// The backend's rewrite count when the copy began.
    rewrites: u64,
    /// Compaction's removals wait until the copy is finished or dropped.
    _hold: CompactionHold,
    /// Records copied so far (for the log).
    pub records: u64,
}

impl Drop for Copy {
    fn drop(&mut self) {
        // A copy never put in place.
        if self.db.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Holds compaction's removals off while it lives.
struct CompactionHold(std::sync::Arc<Backend>);

impl Backend {
    /// The new file of a defragmentation, beside the database.
    pub fn defrag_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".defrag");
        PathBuf::from(p)
    }

    /// Step 1: copies the `kv` records into a new file from one read
    /// transaction. Runs beside the member's reads and writes.
    pub fn defrag_copy(self: &std::sync::Arc<Self>) -> Result<Copy> {
        let hold = hold_compaction(self.clone());
        let rewrites = self.rewrites.load(Ordering::SeqCst);
        let path = self.defrag_path();
        let _ = std::fs::remove_file(&path);
        let db = super::create_file(&path, false)?;
        let mut records = 0;
        let from = self.read()?;
        let mut kv_last = copy_kv(&from, &db, None, &mut records, true)?;
        drop(from);
        // What was written during the copy, copied again from newer read
        // transactions, so that little is left for the finish.
        for _ in 0..3 {
            let from = self.read()?;
            let before = records;
            kv_last = copy_kv(&from, &db, kv_last, &mut records, false)?;
            if records - before < 1_000 {
                break;
            }
        }
        Ok(Copy {
            db: Some(db),
            path,
            kv_last,
            rewrites,
            _hold: hold,
            records,
        })
    }

    /// Step 2: brings the copy up to the database's last commit, makes it
    /// durable and puts it in the database's place. The caller holds every
    /// write but compaction's (held off by the copy) until it returns.
    pub fn defrag_finish(&self, mut copy: Copy) -> Result<()> {
        if self.rewrites.load(Ordering::SeqCst) != copy.rewrites {
            return Err(StorageError::Db(
                "defragment: the state machine was replaced by a snapshot meanwhile".into(),
            ));
        }
        let Some(db) = &copy.db else {
            return Err(StorageError::Db("defragment: the copy is gone".into()));
        };
        // Held until the new file is in place: no applied batch may open a
        // transaction on the old one meanwhile (the caller holds them off
        // too).
        let _held = self.held_committed()?;
        let from = self.begin_read()?;
        let mut records = 0;
        copy_kv(&from, db, copy.kv_last, &mut records, false)?;
        copy.records += records;
        let mut txn = db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        copy_small_tables(&from, &txn)?;
        txn.commit()?;
        drop(from);
        std::fs::rename(&copy.path, &self.path).map_err(|e| StorageError::Open {
            path: self.path.clone(),
            detail: format!("defragment: cannot put the new file in place: {e}"),
        })?;
        // The file in place is the database from now on, whatever follows:
        // the member must not go on writing a file its path no longer names.
        if let Some(db) = copy.db.take() {
            let old = std::mem::replace(&mut *self.db.write(), std::sync::Arc::new(db));
            // Ranges read the new file from now on: a view of the old one
            // would keep it open.
            self.views.end();
            // Closed once its last reader ends; closing writes and syncs
            // the old file, which nobody waits for.
            let _ = std::thread::Builder::new()
                .name("defrag-close".into())
                .spawn(move || drop(old));
        }
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StorageError::Open {
                    path: dir.to_path_buf(),
                    detail: format!("defragment: cannot sync the directory: {e}"),
                })?;
        }
        Ok(())
    }
}

/// Lowers the calling thread to the lowest CPU priority (nice 19) and the
/// lowest best-effort I/O priority, for the copy: when the CPUs or the disk
/// are contended, the member's own requests, its Raft loop and its log's
/// syncs go first, and the copy takes what they leave (nice 19 still gets a
/// share, so a copy under full load slows down but ends). A refusal (a
/// sandbox without the calls) leaves the thread as it was.
pub fn lower_thread_priority() {
    // SAFETY: gettid(2), setpriority(2) and ioprio_set(2) take plain integers
    // and touch no memory of ours; on Linux a thread id names the one thread,
    // so only the calling thread changes.
    unsafe {
        let tid = thread_id();
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
        // IOPRIO_WHO_PROCESS = 1; IOPRIO_CLASS_BE (2) << 13, level 7.
        let _ = libc::syscall(libc::SYS_ioprio_set, 1, tid, (2 << 13) | 7);
    }
}

/// The calling thread's id, by the system call: glibc's `gettid` wrapper
/// came with glibc 2.30, newer than the oldest glibc the release binaries
/// run on (`packaging/binaries`).
fn thread_id() -> libc::pid_t {
    // SAFETY: gettid(2) takes no argument and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t }
}

fn hold_compaction(b: std::sync::Arc<Backend>) -> CompactionHold {
    b.defragging.store(true, Ordering::SeqCst);
    // A compaction batch in progress ends before the copy begins; the next
    // one waits for the flag to drop.
    drop(b.compaction.lock());
    CompactionHold(b)
}

impl Drop for CompactionHold {
    fn drop(&mut self) {
        self.0.defragging.store(false, Ordering::SeqCst);
    }
}

/// Copies the `kv` records after `after` (all when None) from `from` into
/// `to`, in batches (with `pace`, each followed by a pause as long). Returns the last
/// record copied (or `after`).
fn copy_kv(
    from: &ReadTransaction,
    to: &Database,
    after: Option<(u64, u64)>,
    records: &mut u64,
    pace: bool,
) -> Result<Option<(u64, u64)>> {
    let src = from.open_table(KV)?;
    let mut last = after;
    let mut iter = match after {
        Some(k) => src.range((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded))?,
        None => src.range::<(u64, u64)>(..)?,
    };
    loop {
        // Each batch is made durable as it goes, so that the finish, which
        // holds the applies, does not wait for the whole file to reach the
        // disk.
        let start = std::time::Instant::now();
        let mut txn = to.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        let mut bytes = 0;
        let mut n = 0u64;
        {
            let mut dst = txn.open_table(KV)?;
            for item in iter.by_ref() {
                let (k, v) = item?;
                let key = k.value();
                let value = v.value();
                dst.insert(key, value)?;
                last = Some(key);
                n += 1;
                bytes += 16 + value.len();
                if bytes >= BATCH_BYTES {
                    break;
                }
            }
        }
        txn.commit()?;
        *records += n;
        if bytes < BATCH_BYTES {
            return Ok(last);
        }
        if pace {
            std::thread::sleep(start.elapsed());
        }
    }
}

/// Copies every table but `kv` from `from` into `to`.
fn copy_small_tables(from: &ReadTransaction, to: &WriteTransaction) -> Result<()> {
    copy_table(from, to, META)?;
    copy_table(from, to, LEASES)?;
    copy_table(from, to, MEMBERS)?;
    copy_table(from, to, ALARMS)?;
    copy_table(from, to, AUTH_USERS)?;
    copy_table(from, to, AUTH_ROLES)?;
    copy_table(from, to, LOG)?;
    Ok(())
}

/// Replaces `to`'s table `def` with `from`'s.
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &ReadTransaction,
    to: &WriteTransaction,
    def: redb::TableDefinition<K, V>,
) -> Result<()> {
    let src = from.open_table(def)?;
    let mut dst = to.open_table(def)?;
    dst.retain(|_, _| false)?;
    for item in src.iter()? {
        let (k, v) = item?;
        dst.insert(k.value(), v.value())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use redb::ReadableTable as _;

    use super::*;

    fn put(b: &Backend, from: u64, to: u64, value: &[u8]) {
        let txn = b.write().expect("write");
        {
            let mut kv = txn.open_table(KV).expect("kv");
            for main in from..to {
                kv.insert((main, 0), value).expect("insert");
            }
            let mut meta = txn.open_table(META).expect("meta");
            super::super::put_u64(&mut meta, super::super::meta::APPLIED_INDEX, to).expect("meta");
        }
        txn.commit().expect("commit");
    }

    fn records(txn: &ReadTransaction) -> Vec<(u64, u64)> {
        let kv = txn.open_table(KV).expect("kv");
        kv.iter()
            .expect("iter")
            .map(|i| i.expect("record").0.value())
            .collect()
    }

    #[test]
    fn a_copy_follows_writes_made_during_it_and_readers_keep_the_old_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let b = Arc::new(Backend::open(dir.path()).expect("open"));
        put(&b, 1, 5_000, &[7; 300]);
        // Free pages for the copy to leave behind.
        let txn = b.write().expect("write");
        txn.open_table(KV)
            .expect("kv")
            .retain(|(main, _), _| main % 4 == 0)
            .expect("retain");
        txn.commit().expect("commit");
        let old_reader = b.read().expect("read");
        let before = records(&old_reader);
        let size_before = b.size();

        let copy = b.defrag_copy().expect("copy");
        assert!(
            b.compaction_turn().is_none(),
            "compaction goes on during a copy"
        );
        // Written after the copy's read transaction, before the finish.
        put(&b, 5_000, 5_100, b"late");
        b.defrag_finish(copy).expect("finish");
        assert!(
            b.compaction_turn().is_some(),
            "compaction held after the copy"
        );
        assert!(
            !b.defrag_path().exists(),
            "the new file left beside the database"
        );

        let now = b.read().expect("read");
        let mut want = before.clone();
        want.extend((5_000..5_100).map(|m| (m, 0)));
        assert_eq!(records(&now), want);
        let meta = now.open_table(META).expect("meta");
        assert_eq!(
            super::super::get_u64(&meta, super::super::meta::APPLIED_INDEX).expect("meta"),
            Some(5_100)
        );
        // A reader of the old file reads on.
        assert_eq!(records(&old_reader), before);
        drop(old_reader);
        assert!(
            b.size() < size_before / 2,
            "defragmented from {size_before} to {} bytes",
            b.size()
        );

        // And the file opens again, as it was left.
        drop((now, meta));
        drop(b);
        let b = Backend::open(dir.path()).expect("reopen");
        assert_eq!(records(&b.read().expect("read")), want);
    }

    #[test]
    fn the_copys_thread_yields_the_cpu_and_the_disk_and_no_other_thread_does() {
        fn priorities() -> (i32, i64) {
            // SAFETY: as in lower_thread_priority: integer arguments only.
            unsafe {
                let tid = super::thread_id();
                let nice = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
                let io = libc::syscall(libc::SYS_ioprio_get, 1, tid);
                (nice, io)
            }
        }
        let before = priorities();
        let lowered = std::thread::spawn(|| {
            lower_thread_priority();
            priorities()
        })
        .join()
        .expect("thread");
        assert_eq!(lowered, (19, (2 << 13) | 7), "nice 19, best-effort level 7");
        assert_eq!(priorities(), before, "the calling thread only");
    }

    #[test]
    fn a_snapshot_installed_during_a_copy_fails_the_defragment() {
        let dir = tempfile::tempdir().expect("temp dir");
        let b = Arc::new(Backend::open(dir.path()).expect("open"));
        put(&b, 1, 100, b"v");
        let copy = b.defrag_copy().expect("copy");
        b.note_rewrite();
        assert!(b.defrag_finish(copy).is_err());
        assert!(!b.defrag_path().exists());
        assert_eq!(records(&b.read().expect("read")).len(), 99);
    }
}
