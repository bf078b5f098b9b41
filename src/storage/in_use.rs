//! The space the state machine takes in the database file, as etcd's
//! quota and its `etcd_mvcc_db_total_size_in_use_in_bytes` count it.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::{ALARMS, AUTH_ROLES, AUTH_USERS, Backend, KV, LEASES, MEMBERS, META, Result};

/// When the space in use was last measured, and how long that took.
#[derive(Default)]
pub(super) struct Measure {
    started: Option<Instant>,
    took: Duration,
}

impl Backend {
    /// Bytes of the pages the state machine's tables fill: what etcd's
    /// in-use size counts (bbolt's pages less its free list). The file's
    /// free pages, and the pages freed by recent commits that redb reuses
    /// only after a durable one, are not counted; neither is the Raft log,
    /// which etcd keeps in its WAL, outside bbolt.
    ///
    /// The measure walks every page of the tables from a read transaction:
    /// it holds up no writer, but on a large database it takes seconds, so
    /// it never runs on the Raft loop (see [`Backend::in_use_due`]).
    /// Concurrent callers share one walk: a caller that waited for another's
    /// takes its figure when that walk began after the call.
    pub fn size_in_use(&self) -> u64 {
        let asked = Instant::now();
        let mut last = self.measure.lock();
        if last.started.is_some_and(|s| s >= asked) {
            return self.in_use.load(Relaxed);
        }
        let started = Instant::now();
        // What was admitted before this measure is in it (or in the writes
        // queued behind it, which the next measure sees).
        let admitted = self.admitted.load(Relaxed);
        let n = self.tables_in_use().unwrap_or_else(|_| self.size());
        self.in_use.store(n, Relaxed);
        let _ = self
            .admitted
            .fetch_update(Relaxed, Relaxed, |a| Some(a.saturating_sub(admitted)));
        *last = Measure {
            started: Some(started),
            took: started.elapsed(),
        };
        n
    }

    /// Whether a periodic measure of the space in use is due: once a second,
    /// and no more than 2% of one thread's time (a walk of a large database
    /// takes seconds). False while a measure is under way.
    pub fn in_use_due(&self) -> bool {
        self.measure.try_lock().is_some_and(|m| {
            m.started
                .is_none_or(|s| s.elapsed() >= (m.took * 50).max(Duration::from_secs(1)))
        })
    }

    fn tables_in_use(&self) -> Result<u64> {
        use redb::ReadableTableMetadata;
        fn filled(s: redb::TableStats) -> u64 {
            s.stored_bytes() + s.metadata_bytes() + s.fragmented_bytes()
        }
        let r = self.read()?;
        Ok(filled(r.open_table(KV)?.stats()?)
            + filled(r.open_table(META)?.stats()?)
            + filled(r.open_table(LEASES)?.stats()?)
            + filled(r.open_table(MEMBERS)?.stats()?)
            + filled(r.open_table(ALARMS)?.stats()?)
            + filled(r.open_table(AUTH_USERS)?.stats()?)
            + filled(r.open_table(AUTH_ROLES)?.stats()?))
    }

    /// Counts `bytes` of a write admitted under the quota, until the next
    /// measure of the space in use includes it.
    pub fn note_admitted(&self, bytes: u64) {
        self.admitted
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// The space in use as last measured (when the metrics are scraped or a
    /// status asks, and once a second while the writes come within half of
    /// the quota: see `EtcdServer::size_in_use` and `Node::measure_in_use`),
    /// plus the writes admitted since: a quota check between two measures
    /// does not let a burst of writes through unseen.
    pub fn estimated_in_use(&self) -> u64 {
        self.in_use
            .load(Relaxed)
            .saturating_add(self.admitted.load(Relaxed))
    }

    /// The space in use as last measured.
    pub fn last_in_use(&self) -> u64 {
        self.in_use.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes 1,000-byte values under keys `0..n` in one commit, synced or not.
    fn put(b: &Backend, n: u64, durable: bool) {
        let mut txn = b.write().expect("write");
        if !durable {
            txn.set_durability(redb::Durability::None)
                .expect("durability");
        }
        {
            let mut kv = txn.open_table(KV).expect("kv");
            for main in 0..n {
                kv.insert((main, 0), [b'v'; 1000].as_slice())
                    .expect("insert");
            }
        }
        txn.commit().expect("commit");
    }

    #[test]
    fn pages_freed_by_unsynced_commits_are_not_in_use() {
        let dir = tempfile::tempdir().expect("temp dir");
        let b = Backend::open(dir.path()).expect("open");
        put(&b, 700, true);
        let first = b.size_in_use();
        assert!(first >= 700_000, "700 KB of records measured as {first}");
        // The same records rewritten: each unsynced commit frees the pages
        // of the one before, which redb reuses only after a synced one.
        for _ in 0..20 {
            put(&b, 700, false);
        }
        let allocated = {
            let w = b.write().expect("write");
            let s = w.stats().expect("stats");
            s.allocated_pages() * s.page_size() as u64
        };
        let again = b.size_in_use();
        assert!(
            allocated > 2 * first,
            "the file's allocated pages did not grow ({allocated} against {first}): nothing tested"
        );
        assert_eq!(again, first, "the same records measured again");
    }

    #[test]
    fn a_measure_is_due_once_a_second_and_admitted_writes_count_until_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let b = Backend::open(dir.path()).expect("open");
        // Measured at open.
        assert!(!b.in_use_due(), "due right after a measure");
        let base = b.estimated_in_use();
        b.note_admitted(5_000);
        assert_eq!(b.estimated_in_use(), base + 5_000);
        put(&b, 5, true);
        let measured = b.size_in_use();
        assert!(
            measured > base,
            "5 records measured as {measured} from {base}"
        );
        assert_eq!(
            b.estimated_in_use(),
            measured,
            "admitted bytes counted twice"
        );
        std::thread::sleep(Duration::from_millis(1_050));
        assert!(b.in_use_due(), "not due a second after the last measure");
    }
}
