//! Raft snapshots for followers that fell behind the log, made off the Raft
//! loop thread.
//!
//! raft-rs asks its storage for a snapshot from inside the loop. Writing the
//! state machine out takes time in proportion to the key space; done there,
//! it would hold back heartbeats and appends to every follower for as long
//! (with a large key space, long enough for an election). So the first ask
//! starts a thread that writes the snapshot from one read transaction (a
//! consistent view of the applied state; writes go on meanwhile) and
//! answers "temporarily unavailable"; raft-rs asks again on the follower's
//! next heartbeat response and gets the finished snapshot. The snapshot is
//! a file ([`super::snapshot_file`]): the message raft-rs hands the
//! transport names it, and the transport sends it in chunks.

use std::sync::Arc;

use parking_lot::Mutex;
use raft::eraftpb::Snapshot;
use raft::storage::MemStorage;

use crate::storage::Backend;

/// How long a finished snapshot waits to be taken.
const KEEP_UNTAKEN: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Default)]
enum State {
    #[default]
    Idle,
    Building,
    Ready(Snapshot),
}

/// The one snapshot being made (or made and not yet taken).
#[derive(Clone, Default)]
pub struct SnapshotMaker {
    state: Arc<Mutex<State>>,
}

fn unavailable() -> raft::Error {
    raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable)
}

impl SnapshotMaker {
    /// A snapshot at an applied index of at least `request_index`, if one is
    /// ready; otherwise starts making one (unless under way) and answers
    /// "temporarily unavailable".
    pub fn take(
        &self,
        request_index: u64,
        mem: &MemStorage,
        backend: &Arc<Backend>,
    ) -> raft::Result<Snapshot> {
        let mut st = self.state.lock();
        match std::mem::take(&mut *st) {
            State::Ready(s) if s.get_metadata().index >= request_index => return Ok(s),
            State::Building => {
                *st = State::Building;
                return Err(unavailable());
            }
            State::Ready(old) => super::snapshot_file::discard(&old.data),
            State::Idle => {}
        }
        *st = State::Building;
        drop(st);
        let (me, mem, backend) = (self.clone(), mem.clone(), backend.clone());
        let started = std::thread::Builder::new()
            .name("raft-snapshot".into())
            .spawn(move || {
                let Some(snap) = make(&mem, &backend) else {
                    *me.state.lock() = State::Idle;
                    return;
                };
                let index = snap.get_metadata().index;
                *me.state.lock() = State::Ready(snap);
                // A snapshot nobody takes (the follower caught up otherwise,
                // or left) is not held for ever.
                std::thread::sleep(KEEP_UNTAKEN);
                let mut st = me.state.lock();
                if matches!(&*st, State::Ready(s) if s.get_metadata().index == index)
                    && let State::Ready(s) = std::mem::take(&mut *st)
                {
                    super::snapshot_file::discard(&s.data);
                }
            });
        if let Err(e) = started {
            crate::warn!("cannot start a thread to make a snapshot", error = e);
            *self.state.lock() = State::Idle;
        }
        Err(unavailable())
    }
}

/// Writes the state machine out to a file at its applied index, with that
/// index's term and the membership; the snapshot's data names the file.
fn make(mem: &MemStorage, backend: &Backend) -> Option<Snapshot> {
    let t0 = std::time::Instant::now();
    let dir = backend.path().parent()?;
    super::snapshot_file::remove_stale(dir, super::snapshot_file::STALE);
    let path = super::snapshot_file::new_path(dir, true);
    let (applied, size) = match crate::storage::snapshot::save_for_raft(backend, &path) {
        Ok(v) => v,
        Err(e) => {
            crate::warn!("cannot make a snapshot", error = e);
            let _ = std::fs::remove_file(&path);
            return None;
        }
    };
    // The log may have been compacted past `applied` meanwhile: then the
    // next ask makes a newer snapshot.
    let (Ok(term), Ok(state)) = (
        raft::Storage::term(mem, applied),
        raft::Storage::initial_state(mem),
    ) else {
        let _ = std::fs::remove_file(&path);
        return None;
    };
    crate::info!(
        "made a snapshot for a follower",
        index = applied,
        size = size,
        took = format!("{:?}", t0.elapsed())
    );
    let mut snap = Snapshot {
        data: super::snapshot_file::local(&path).into(),
        ..Default::default()
    };
    let meta = snap.mut_metadata();
    meta.index = applied;
    meta.term = term;
    meta.set_conf_state(state.conf_state);
    Some(snap)
}
