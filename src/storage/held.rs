//! The write transaction that applied batches share.
//!
//! The Raft log makes applied entries durable; the database's commits of
//! applied batches are not synced. Such a commit still costs about as much
//! as applying a one-put batch, so batches are applied into one transaction
//! that stays open ([`Backend::apply_txn`]) and is committed when something
//! else needs the database:
//! - a read transaction ([`Backend::read`]): it must see every batch the key
//!   index names;
//! - another write transaction ([`Backend::write`]; redb has one at a time),
//!   the periodic durable commit among them;
//! - the shared transaction has taken [`MAX_ENTRIES`] entries or
//!   [`MAX_BYTES`] bytes of them (its pages are held in memory).
//!
//! Lock order: the key index's lock (`mvcc::Store::lock_for_apply`, or a
//! reader's), then `held`. A commit that fails leaves the database behind
//! the key index: every later transaction is refused with that error, and
//! the member stops at its next apply.

use std::sync::atomic::Ordering;

use parking_lot::MutexGuard;
use redb::WriteTransaction;

use super::{Backend, Result, StorageError};

/// Entries the shared transaction takes before it is committed.
pub const MAX_ENTRIES: usize = 1_000;
/// Bytes of entries the shared transaction takes before it is committed.
pub const MAX_BYTES: usize = 4 << 20;

/// The shared transaction and what it has taken since it began.
#[derive(Default)]
pub(super) struct Held {
    txn: Option<WriteTransaction>,
    entries: usize,
    bytes: usize,
    /// The last applied entry's index and the term it was applied in,
    /// written to `meta` by the commit (once per commit, not per batch).
    applied: Option<(u64, u64)>,
    /// Why a commit of applied batches failed.
    failed: Option<String>,
}

/// The shared transaction, lent to one applied batch.
pub struct ApplyTxn<'a> {
    backend: &'a Backend,
    held: MutexGuard<'a, Held>,
    done: bool,
}

impl std::ops::Deref for ApplyTxn<'_> {
    type Target = WriteTransaction;

    fn deref(&self) -> &WriteTransaction {
        // `apply_txn` puts a transaction in place before lending it.
        self.held
            .txn
            .as_ref()
            .expect("an ApplyTxn always holds a transaction")
    }
}

impl ApplyTxn<'_> {
    /// Ends the batch: it took `entries` entries of `bytes` bytes, the last
    /// of them `applied` = (index, term). The transaction is committed when
    /// it has taken its share, else kept for the next batch; whenever it
    /// commits, the last batch's `applied` goes into `meta` with it.
    pub fn done(mut self, entries: usize, bytes: usize, applied: (u64, u64)) -> Result<()> {
        self.done = true;
        self.held.entries += entries;
        self.held.bytes += bytes;
        self.held.applied = Some(applied);
        if self.held.entries >= MAX_ENTRIES || self.held.bytes >= MAX_BYTES {
            return self.backend.commit_locked(&mut self.held);
        }
        self.backend.held_open.store(true, Ordering::Release);
        Ok(())
    }
}

impl Drop for ApplyTxn<'_> {
    fn drop(&mut self) {
        if !self.done {
            // A batch that failed half-way: its writes cannot be told apart
            // from the earlier batches', which the key index already names.
            // The member stops (the error is its apply's); nothing commits
            // the transaction.
            self.held.txn = None;
            self.held.failed = Some("a batch of applied entries failed half-way".into());
            self.backend.held_open.store(true, Ordering::Release);
        }
    }
}

impl Backend {
    /// Opens the shared transaction if none is open, before the caller
    /// takes the key index's write lock: a transaction of another writer
    /// (a compaction's batch) is waited for without holding readers up.
    pub fn ready_apply_txn(&self) -> Result<()> {
        self.ensure_open(&mut self.held.lock())
    }

    /// The write transaction applied batches share (see the module's doc).
    /// The caller holds the key index's write lock.
    pub fn apply_txn(&self) -> Result<ApplyTxn<'_>> {
        let mut held = self.held.lock();
        self.ensure_open(&mut held)?;
        Ok(ApplyTxn {
            backend: self,
            held,
            done: false,
        })
    }

    fn ensure_open(&self, held: &mut Held) -> Result<()> {
        if let Some(f) = &held.failed {
            return Err(StorageError::Db(f.clone()));
        }
        if held.txn.is_none() {
            let mut txn = self.db.read().begin_write()?;
            txn.set_durability(redb::Durability::None)?;
            held.txn = Some(txn);
        }
        Ok(())
    }

    /// Commits the shared transaction, if one is open.
    pub(super) fn commit_held(&self) -> Result<()> {
        if !self.held_open.load(Ordering::Acquire) {
            return Ok(());
        }
        self.commit_locked(&mut self.held.lock())
    }

    /// Commits the shared transaction, `held` being its lock.
    pub(super) fn commit_locked(&self, held: &mut Held) -> Result<()> {
        if let Some(f) = &held.failed {
            return Err(StorageError::Db(f.clone()));
        }
        let Some(txn) = held.txn.take() else {
            self.held_open.store(false, Ordering::Release);
            return Ok(());
        };
        held.entries = 0;
        held.bytes = 0;
        let applied = held.applied.take();
        if let Err(e) = Self::mark_applied(&txn, applied).and_then(|()| Ok(txn.commit()?)) {
            held.failed = Some(format!("a commit of applied entries failed: {e}"));
            return Err(e);
        }
        // The shared view of the `kv` table predates this commit.
        self.views.end();
        // Cleared once the commit is done, never before: a reader that finds
        // it clear begins its read transaction after the commit, and finds
        // no view shared from before it.
        self.held_open.store(false, Ordering::Release);
        Ok(())
    }

    /// Writes the applied index and term into `meta`, the state they
    /// describe being in the same transaction.
    fn mark_applied(txn: &WriteTransaction, applied: Option<(u64, u64)>) -> Result<()> {
        if let Some((index, term)) = applied {
            let mut meta = txn.open_table(super::META)?;
            super::put_u64(&mut meta, super::meta::APPLIED_INDEX, index)?;
            super::put_u64(&mut meta, super::meta::CONSISTENT_TERM, term)?;
        }
        Ok(())
    }

    /// The lock of the shared transaction, committed: no applied batch can
    /// start another while it is held.
    pub(super) fn held_committed(&self) -> Result<MutexGuard<'_, Held>> {
        let mut held = self.held.lock();
        self.commit_locked(&mut held)?;
        Ok(held)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // What was applied reaches the file (the log has it too, and a
        // restart would apply it again).
        let _ = self.commit_held();
    }
}

#[cfg(test)]
pub(super) mod tests {
    use redb::ReadableTableMetadata as _;

    use super::*;
    use crate::storage::KV;

    /// Applies one batch of `n` records from `from` into the shared transaction.
    pub(in crate::storage) fn apply(b: &Backend, from: u64, n: u64) {
        let txn = b.apply_txn().expect("apply txn");
        {
            let mut kv = txn.open_table(KV).expect("kv");
            for main in from..from + n {
                kv.insert((main, 0), b"v".as_slice()).expect("insert");
            }
        }
        txn.done(n as usize, n as usize, (from + n, 1))
            .expect("done");
    }

    fn count(b: &Backend) -> u64 {
        let r = b.read().expect("read");
        let kv = r.open_table(KV).expect("kv");
        kv.len().expect("len")
    }

    fn open(b: &Backend) -> bool {
        b.held.lock().txn.is_some()
    }

    #[test]
    fn batches_share_a_transaction_that_every_read_commits_first() {
        let dir = tempfile::tempdir().expect("temp dir");
        let b = Backend::open(dir.path()).expect("open");
        apply(&b, 1, 3);
        apply(&b, 4, 3);
        assert!(open(&b), "the batches' transaction was committed at once");
        assert_eq!(count(&b), 6, "a read missed applied batches");
        assert!(!open(&b), "the read left the transaction open");
        apply(&b, 7, 1);
        // A writer of its own commits it first, and sees it.
        let w = b.write().expect("write");
        assert_eq!(w.open_table(KV).expect("kv").len().expect("len"), 7);
        drop(w);
        assert_eq!(count(&b), 7);
    }

    #[test]
    fn the_transaction_is_committed_once_it_has_taken_its_share() {
        let dir = tempfile::tempdir().expect("temp dir");
        let b = Backend::open(dir.path()).expect("open");
        apply(&b, 1, MAX_ENTRIES as u64 - 1);
        assert!(open(&b));
        apply(&b, MAX_ENTRIES as u64, 1);
        assert!(!open(&b), "kept past {MAX_ENTRIES} entries");
        let r = b.begin_read().expect("read");
        assert_eq!(
            r.open_table(KV).expect("kv").len().expect("len"),
            MAX_ENTRIES as u64
        );
    }

    #[test]
    fn a_batch_that_fails_half_way_refuses_every_later_transaction() {
        let dir = tempfile::tempdir().expect("temp dir");
        let b = Backend::open(dir.path()).expect("open");
        apply(&b, 1, 2);
        {
            let txn = b.apply_txn().expect("apply txn");
            txn.open_table(KV)
                .expect("kv")
                .insert((3, 0), b"half".as_slice())
                .expect("insert");
            // Dropped without `done`: the batch failed.
        }
        assert!(b.read().is_err(), "a read after a failed batch");
        assert!(b.write().is_err(), "a write after a failed batch");
        assert!(b.apply_txn().is_err(), "a batch after a failed batch");
    }

    #[test]
    fn a_closed_database_keeps_what_was_applied() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let b = Backend::open(dir.path()).expect("open");
            apply(&b, 1, 5);
            assert!(open(&b));
        }
        let b = Backend::open(dir.path()).expect("open again");
        assert_eq!(count(&b), 5);
    }
}
