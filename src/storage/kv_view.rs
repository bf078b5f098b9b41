//! One read view of the `kv` table that Ranges share until the next commit.
//!
//! A Range reads its records from a read transaction and the `kv` table
//! opened in it. Beginning the transaction and opening the table cost about
//! as much as reading a few small records; while nothing commits, every
//! Range would open the same snapshot. So the first Range after a commit
//! opens a [`KvView`] and leaves it here, and the next ones share it, until
//! a commit ends it:
//! - the commit of the transaction applied batches share (`held.rs`);
//! - the commit of any other write transaction ([`WriteTxn::commit`]);
//! - a defragmentation putting its new file in place.
//!
//! A view taken from here is never older than the last commit ended before
//! it was asked for: a view is only left here if no commit ended while it was
//! opened, and each commit takes the view out once it has committed, before
//! it lets readers of what it wrote go on (the shared transaction's commit
//! does so under its lock, before clearing `held_open`). A view out of the
//! cache ends with its last Range, so none holds back the pages later
//! commits free.

use std::sync::Arc;

use parking_lot::Mutex;
use redb::{ReadOnlyTable, WriteTransaction};

use super::{Backend, KV, Reader, Result};

/// A read transaction and its `kv` table, opened once.
pub struct KvView {
    // Dropped first: the table before its transaction.
    table: ReadOnlyTable<(u64, u64), &'static [u8]>,
    _reader: Reader,
}

impl KvView {
    /// The `kv` table as of the view's snapshot.
    pub fn table(&self) -> &ReadOnlyTable<(u64, u64), &'static [u8]> {
        &self.table
    }
}

/// The view Ranges share, and the commits that ended views so far.
#[derive(Default)]
struct Shared {
    view: Option<Arc<KvView>>,
    ended: u64,
}

/// Where the shared view is kept.
#[derive(Default)]
pub(super) struct ViewCache(Mutex<Shared>);

impl ViewCache {
    /// The shared view, or, when there is none, the count of views ended
    /// so far, to hand to [`ViewCache::keep`] with the view opened instead.
    fn look(&self) -> std::result::Result<Arc<KvView>, u64> {
        let s = self.0.lock();
        s.view.clone().ok_or(s.ended)
    }

    /// Leaves `view`, opened after [`ViewCache::look`] returned `ended`, to
    /// be shared, unless a commit ended views meanwhile: it might predate
    /// that commit.
    fn keep(&self, ended: u64, view: &Arc<KvView>) {
        let mut s = self.0.lock();
        if s.ended == ended && s.view.is_none() {
            s.view = Some(view.clone());
        }
    }

    /// Ends the shared view: a commit has just changed the file. The view is
    /// dropped outside the lock.
    pub(super) fn end(&self) {
        let old = {
            let mut s = self.0.lock();
            s.ended += 1;
            s.view.take()
        };
        drop(old);
    }
}

impl Backend {
    /// A read view of the `kv` table holding every batch applied so far (the
    /// transaction they share is committed first), shared with the other
    /// Ranges until the next commit.
    pub fn kv_view(&self) -> Result<Arc<KvView>> {
        self.commit_held()?;
        let ended = match self.views.look() {
            Ok(view) => return Ok(view),
            Err(ended) => ended,
        };
        let view = self.open_kv_view()?;
        self.views.keep(ended, &view);
        Ok(view)
    }

    fn open_kv_view(&self) -> Result<Arc<KvView>> {
        let reader = self.begin_read()?;
        let table = reader.open_table(KV)?;
        Ok(Arc::new(KvView {
            table,
            _reader: reader,
        }))
    }
}

/// A write transaction of the backend's own ([`Backend::write`]): its commit
/// ends the shared view of the `kv` table.
pub struct WriteTxn<'a> {
    txn: WriteTransaction,
    views: &'a ViewCache,
}

impl<'a> WriteTxn<'a> {
    pub(super) fn new(txn: WriteTransaction, views: &'a ViewCache) -> Self {
        WriteTxn { txn, views }
    }

    /// Commits, then ends the shared view.
    pub fn commit(self) -> std::result::Result<(), redb::CommitError> {
        let views = self.views;
        let done = self.txn.commit();
        views.end();
        done
    }
}

impl std::ops::Deref for WriteTxn<'_> {
    type Target = WriteTransaction;

    fn deref(&self) -> &WriteTransaction {
        &self.txn
    }
}

impl std::ops::DerefMut for WriteTxn<'_> {
    fn deref_mut(&mut self) -> &mut WriteTransaction {
        &mut self.txn
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::held::MAX_ENTRIES;
    use crate::storage::held::tests::apply;

    fn has(v: &KvView, main: u64) -> bool {
        v.table().get((main, 0)).expect("get").is_some()
    }

    #[test]
    fn ranges_share_a_view_until_a_commit_ends_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let b = Backend::open(dir.path()).expect("open");
        apply(&b, 1, 1);
        let a = b.kv_view().expect("view");
        assert!(has(&a, 1), "the applied batch was committed first");
        let again = b.kv_view().expect("view");
        assert!(Arc::ptr_eq(&a, &again), "no commit since: shared");

        apply(&b, 2, 1);
        let after_apply = b.kv_view().expect("view");
        assert!(!Arc::ptr_eq(&a, &after_apply), "the applied batch ended it");
        assert!(has(&after_apply, 2));
        assert!(!has(&a, 2), "a view taken before stays a snapshot");

        let txn = b.write().expect("write");
        {
            let mut kv = txn.open_table(KV).expect("kv");
            kv.insert((3, 0), b"v".as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
        let after_write = b.kv_view().expect("view");
        assert!(has(&after_write, 3), "another write transaction ended it");

        let shared = b.kv_view().expect("view");
        assert!(Arc::ptr_eq(&after_write, &shared));
        apply(&b, 10, MAX_ENTRIES as u64);
        assert!(
            has(&b.kv_view().expect("view"), 9 + MAX_ENTRIES as u64),
            "a commit of a full shared transaction ended it"
        );
    }

    #[test]
    fn a_view_opened_across_a_commit_is_not_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let b = Backend::open(dir.path()).expect("open");
        let Err(ended) = b.views.look() else {
            panic!("no view yet");
        };
        let opened = b.open_kv_view().expect("view");
        b.views.end();
        b.views.keep(ended, &opened);
        assert!(
            b.views.look().is_err(),
            "opened before a commit ended views"
        );
        let Err(ended) = b.views.look() else {
            panic!("no view yet");
        };
        let opened = b.open_kv_view().expect("view");
        b.views.keep(ended, &opened);
        assert!(Arc::ptr_eq(&opened, &b.kv_view().expect("view")));
    }

    #[test]
    fn a_defragmentation_ends_the_view_of_the_old_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let b = Arc::new(Backend::open(dir.path()).expect("open"));
        apply(&b, 1, 1);
        let before = b.kv_view().expect("view");
        let copy = b.defrag_copy().expect("copy");
        b.defrag_finish(copy).expect("finish");
        assert!(
            b.views.look().is_err(),
            "no Range may keep the replaced file open"
        );
        let after = b.kv_view().expect("view");
        assert!(!Arc::ptr_eq(&before, &after));
        assert!(has(&after, 1));
    }
}
