//! Work that holds the database, beside the Raft loop: the periodic durable
//! commit and a defragmentation's finish run as jobs on threads of their own
//! while the loop goes on with heartbeats and appends and defers applying;
//! a defragmentation's copy runs on a thread of its own while the loop
//! applies; the count of the database's bytes in use runs on a blocking
//! thread of the runtime.

use std::sync::atomic::Ordering;
use std::time::Instant;

use raft::eraftpb::Entry;

use super::{Msg, Node};
use crate::error::Error;
use crate::metrics;
use crate::storage::StorageError;

/// Work that holds the database, run on a thread of its own.
pub(super) enum DbJob {
    /// A durable commit covering batches applied up to `applied`.
    Commit { applied: u64, start: Instant },
    /// The end of a defragmentation: the copy brought up to date and put in
    /// the database's place (`storage::defrag`).
    Defragment,
}

impl Node {
    /// Applies `entries`, or keeps them for later while a job holds the
    /// database (the apply gap then grows, and past etcd's 5,000 entries new
    /// requests are refused with "too many requests").
    pub(super) fn apply_or_defer(&mut self, entries: Vec<Entry>) -> Result<(), StorageError> {
        if self.busy.is_none() {
            return self.apply(entries);
        }
        if let Some(last) = entries.last().map(|e| e.index) {
            let commit = self.status.commit.load(Ordering::Relaxed).max(last);
            self.status.commit.store(commit, Ordering::Relaxed);
        }
        self.deferred.extend(entries);
        Ok(())
    }

    /// Starts `job` on a thread of its own; the Raft loop goes on with
    /// heartbeats and appends, and defers applying until it ends.
    pub(super) fn start_job(&mut self, job: DbJob) {
        let backend = self.backend.clone();
        let wake = self.wake.clone();
        self.job_seq += 1;
        self.job_ending = false;
        self.job_started = Instant::now();
        let seq = self.job_seq;
        let run = match job {
            DbJob::Commit { .. } => std::thread::Builder::new()
                .name("backend-commit".into())
                .spawn(move || {
                    let res = backend.sync();
                    let _ = wake.send(Msg::JobDone(seq));
                    res
                }),
            DbJob::Defragment => {
                let Some(copy) = self.defrag_copied.take() else {
                    return;
                };
                std::thread::Builder::new()
                    .name("defrag-finish".into())
                    .spawn(move || {
                        let res = backend.defrag_finish(copy);
                        let _ = wake.send(Msg::JobDone(seq));
                        res
                    })
            }
        };
        match run {
            Ok(h) => self.busy = Some((job, h)),
            Err(e) => {
                crate::warn!("cannot start a thread for the database", error = e);
                if let DbJob::Defragment = job {
                    for w in self.defrag_waiters.drain(..) {
                        let _ = w.send(Err(Error::Storage(e.to_string())));
                    }
                }
            }
        }
    }

    /// Once the database job is done (or at once with `wait`): records what
    /// it did, answers its callers, applies what was committed meanwhile, and
    /// starts a defragmentation asked for during a commit.
    pub(super) fn finish_job(&mut self, wait: bool) -> Result<(), StorageError> {
        match &self.busy {
            Some((_, h)) if wait || self.job_ending || h.is_finished() => {}
            _ => return Ok(()),
        }
        let Some((job, h)) = self.busy.take() else {
            return Ok(());
        };
        let res = h
            .join()
            .unwrap_or_else(|_| Err(StorageError::Db("database job: the thread panicked".into())));
        match job {
            DbJob::Commit { applied, start } => {
                // A failed durable commit leaves the member unable to
                // persist what it applies: the loop stops.
                res?;
                self.made_durable(applied, start)?;
            }
            DbJob::Defragment => {
                metrics::DB_SIZE.set(self.backend.size() as i64);
                match &res {
                    Ok(()) => crate::info!(
                        "defragment: the new file is in place",
                        applies_held = format!("{:?}", self.job_started.elapsed()),
                        db_size = self.backend.size()
                    ),
                    Err(e) => crate::warn!("defragment failed", error = e),
                }
                for w in self.defrag_waiters.drain(..) {
                    let _ = w.send(res.clone().map_err(Error::from));
                }
            }
        }
        let entries = std::mem::take(&mut self.deferred);
        self.apply(entries)?;
        self.raw.advance_apply_to(self.applied);
        self.answer_reads();
        Ok(())
    }

    /// Starts a count of the bytes in use on one of the runtime's blocking
    /// threads when one is due (see [`Backend::in_use_due`]) and the writes
    /// admitted since the last come within half of the quota: the quota
    /// check then finds a current measure, and need not take one itself
    /// before it refuses a write. Further from the quota, the measure is
    /// taken when asked for (`EtcdServer::size_in_use`: a scrape of the
    /// metrics, a status), and the walk of every page of the tables, about
    /// 2% of a thread's time under a stream of writes, is not made for no
    /// one.
    pub(super) fn measure_in_use(&mut self) {
        if self.in_use_count.as_ref().is_some_and(|t| !t.is_finished())
            || self.backend.estimated_in_use() < self.quota_bytes / 2
            || !self.backend.in_use_due()
        {
            return;
        }
        let b = self.backend.clone();
        let count = move || {
            let start = Instant::now();
            let n = b.size_in_use();
            crate::debug!(
                "counted the database's bytes in use",
                bytes = n,
                took_ms = start.elapsed().as_millis() as u64
            );
        };
        match &self.rt {
            Some(rt) => self.in_use_count = Some(rt.spawn_blocking(count)),
            // A node made outside a runtime (none is): a thread of its own
            // (a count under way makes the next one not due).
            None => {
                let _ = std::thread::Builder::new()
                    .name("db-in-use".into())
                    .spawn(count);
            }
        }
    }

    /// Moves a defragmentation on: starts its copy when one is asked for,
    /// takes the copy once made, and finishes it as a database job when the
    /// database is free.
    pub(super) fn defrag_step(&mut self) {
        if self
            .defrag_copying
            .as_ref()
            .is_some_and(|h| h.is_finished())
            && let Some(h) = self.defrag_copying.take()
        {
            let res = h.join().unwrap_or_else(|_| {
                Err(StorageError::Db(
                    "defragment: the copy's thread panicked".into(),
                ))
            });
            match res {
                Ok(copy) => {
                    crate::info!(
                        "defragment: copied the database, finishing",
                        records = copy.records
                    );
                    self.defrag_copied = Some(copy);
                }
                Err(e) => {
                    crate::warn!("defragment failed", error = e);
                    for w in self.defrag_waiters.drain(..) {
                        let _ = w.send(Err(Error::from(e.clone())));
                    }
                }
            }
        }
        if self.defrag_copied.is_some() && self.busy.is_none() {
            self.start_job(DbJob::Defragment);
            return;
        }
        let idle = self.defrag_copying.is_none()
            && self.defrag_copied.is_none()
            && !matches!(self.busy, Some((DbJob::Defragment, _)));
        if idle && !self.defrag_waiters.is_empty() {
            let backend = self.backend.clone();
            let wake = self.wake.clone();
            let run = std::thread::Builder::new()
                .name("defrag-copy".into())
                .spawn(move || {
                    crate::storage::defrag::lower_thread_priority();
                    let res = backend.defrag_copy();
                    let _ = wake.send(Msg::DefragCopied);
                    res
                });
            match run {
                Ok(h) => self.defrag_copying = Some(h),
                Err(e) => {
                    crate::warn!("cannot start a thread for the database", error = e);
                    for w in self.defrag_waiters.drain(..) {
                        let _ = w.send(Err(Error::Storage(e.to_string())));
                    }
                }
            }
        }
    }

    /// Makes every applied batch durable in the database, then lets the log
    /// delete the segments it no longer needs.
    pub(super) fn commit_backend(&mut self) -> Result<(), StorageError> {
        let start = Instant::now();
        self.backend.sync()?;
        self.made_durable(self.applied, start)
    }

    /// Records a durable commit (begun at `start`) covering the batches
    /// applied up to `applied`.
    pub(super) fn made_durable(
        &mut self,
        applied: u64,
        start: Instant,
    ) -> Result<(), StorageError> {
        metrics::BACKEND_COMMIT.observe(start.elapsed());
        self.durable_applied = applied;
        self.last_durable = Instant::now();
        self.log.release(applied)
    }
}
