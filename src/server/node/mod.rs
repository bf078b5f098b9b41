//! The member's Raft and apply loop: one OS thread runs the raft-rs `RawNode`, the
//! log storage and the state machine writer. Proposals and read-index requests arrive
//! on a channel; everything that arrived while the previous batch was being made
//! durable is appended together, so concurrent writes share one fsync.
//!
//! The loop's state sits behind a lock, which the loop's thread holds while it
//! works and lets go of while it waits for messages. On a one-member cluster, a
//! write that is alone in flight takes the lock on the runtime thread that
//! received it and is appended, synced, applied and answered there
//! ([`Node::propose_here`]): no thread is woken for it, and none for its answer.
//!
//! The loop's other concerns each have a file here: `jobs.rs` the work that
//! holds the database beside the loop (durable commits, defragmentation),
//! `here.rs` the one-member write path, `light.rs` the read-index rounds'
//! messages, and a steady cluster's appends and their answers (bounded work),
//! stepped on the runtime threads that receive them,
//! `read_quorum.rs` the followers a leader's read-index round asks,
//! `leadership.rs` the transfer of
//! leadership on stop, `lease_expiry.rs` the revocation of expired leases,
//! `disk_alarm.rs` the NOSPACE alarm a member raises for its own disk.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prost::Message;
use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType};
use raft::{RawNode, SnapshotStatus, StateRole};
use tokio::sync::oneshot;

use super::apply::Applier;
use super::handoff::{Answer, Handoff};
use super::read_index::{ReadQueue, ReadRounds};
use super::request::Applied;
use crate::error::{Error, Result};
use crate::membership::Cluster;
use crate::metrics;
use crate::mvcc::watch::WatchHub;
use crate::pb::etcdserverpb::Member;
use crate::raft::transport::{self, Transport};
use crate::raft::{LogStore, PeerStorage};
use crate::storage::space::DiskSpace;
use crate::storage::{Backend, StorageError};

mod disk_alarm;
mod here;
mod jobs;
mod leadership;
mod lease_expiry;
mod light;
mod read_quorum;
mod reads;

pub use light::Inbox;

use jobs::DbJob;

pub type Reply = oneshot::Sender<Result<Applied>>;

pub enum Msg {
    Propose {
        id: u64,
        data: Vec<u8>,
        reply: Option<Reply>,
    },
    /// Reads wait in the read queue (`read_index.rs`), which the loop is not
    /// watching: a linearizable read barrier's wake-up.
    Reads,
    /// Defragments the database: copied on a thread of its own while the
    /// loop goes on applying, then finished as a database job (applies wait
    /// for that step only).
    Defragment(oneshot::Sender<Result<()>>),
    /// A defragmentation's copy has ended.
    DefragCopied,
    /// Freezes the apply loop (a debug aid for watchdog tests).
    Freeze,
    /// A membership change (its `id` names the waiter).
    ConfChange { cc: ConfChange, reply: Reply },
    /// From the peer transport.
    Peer(transport::Event),
    /// Hands leadership to `target` (0: the most caught-up voter).
    TransferLeader(u64, oneshot::Sender<Result<()>>),
    /// Whether a learner's log is close enough to the leader's to be promoted.
    LearnerReady(u64, oneshot::Sender<Result<bool>>),
    /// Stops the loop; a leader first hands leadership to a caught-up voter.
    Stop,
    /// The database job with this number is about to end: the loop wakes
    /// to apply what waited for it (a loop waiting for its next tick would
    /// hold those replies up to a heartbeat interval).
    JobDone(u64),
}

/// Raft facts the request path reads without asking the loop.
#[derive(Debug, Default)]
pub struct RaftStatus {
    pub term: AtomicU64,
    pub leader: AtomicU64,
    pub commit: AtomicU64,
    pub applied: AtomicU64,
    pub is_leader: AtomicBool,
    /// This member may answer a linearizable read from what it has applied,
    /// without a read-index round (`here.rs`, [`Node::may_read_here`]).
    pub reads_here: AtomicBool,
    /// Bumped by the loop on every pass; the watchdog checks that it moves.
    pub heartbeat: AtomicU64,
    pub stopped: AtomicBool,
}

/// Generates request IDs unique to this member (etcd's idutil shape: member bits,
/// then time, then a counter).
#[derive(Debug)]
pub struct IdGen {
    prefix: u64,
    counter: AtomicU64,
}

impl IdGen {
    pub fn new(member_id: u64) -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        IdGen {
            prefix: (member_id & 0xffff) << 48,
            counter: AtomicU64::new((ms & 0xff_ffff_ffff) << 8),
        }
    }

    pub fn next(&self) -> u64 {
        let c = self.counter.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff_ffff;
        self.prefix | c
    }
}

pub struct NodeConfig {
    pub id: u64,
    pub heartbeat: Duration,
    /// The longest time between two durable commits of the database.
    pub backend_commit_interval: Duration,
    /// The most entries applied between two durable commits of the database.
    pub backend_commit_limit: u64,
    pub election_ticks: usize,
    pub applied: u64,
    pub snapshot_count: u64,
    pub single_voter: bool,
    /// `--pre-vote`: a candidate first asks whether it could win, so a member
    /// cut off from the others does not raise the term by campaigning.
    pub pre_vote: bool,
    /// When set, the loop freezes once this file exists (a watchdog test aid).
    pub freeze_file: Option<std::path::PathBuf>,
    /// The backend quota (`u64::MAX` when none): the loop keeps the measure
    /// of the space in use current once the writes come within half of it.
    pub quota_bytes: u64,
}

pub struct Node {
    raw: RawNode<PeerStorage>,
    transport: Option<Arc<Transport>>,
    cluster: Arc<Cluster>,
    local_id: u64,
    election_timeout: Duration,
    /// Set once this member has been removed from the cluster.
    removed: bool,
    campaign_pending: bool,
    log: LogStore,
    applier: Applier,
    backend: Arc<Backend>,
    hub: Arc<WatchHub>,
    status: Arc<RaftStatus>,
    ids: Arc<IdGen>,
    /// The loop's own channel, for database job threads to wake it.
    wake: Sender<Msg>,
    heartbeat: Duration,
    waiters: HashMap<u64, Reply>,
    reads: ReadRounds,
    /// Reads may be waiting in the queue with no wake-up coming.
    reads_due: bool,
    applied: u64,
    compact_threshold: u64,
    compact_keep: u64,
    pending_compact: Option<u64>,
    /// The keyspace was restored from a snapshot (`etcdutl snapshot restore`)
    /// and the log not yet compacted: see [`crate::storage::meta::RESTORED`].
    compact_restored: bool,
    revoking: HashMap<i64, Instant>,
    last_size_check: Instant,
    /// The count of the bytes in use, while it runs: it walks every page of
    /// the tables, which takes seconds on a large database.
    in_use_count: Option<tokio::task::JoinHandle<()>>,
    quota_bytes: u64,
    /// The runtime whose blocking threads count the bytes in use (none is
    /// made for each count).
    rt: Option<tokio::runtime::Handle>,
    frozen: bool,
    freeze_file: Option<std::path::PathBuf>,
    persisted_term_vote: (u64, u64),
    /// The applied index the database has made durable, and when: apply
    /// transactions commit without a sync, and every
    /// `backend_commit_interval` one durable commit covers them (the log
    /// keeps every entry above it, which a restart applies again).
    durable_applied: u64,
    last_durable: Instant,
    /// `--backend-batch-interval`.
    backend_commit_interval: Duration,
    /// `--backend-batch-limit`: a durable commit starts at the first tick
    /// after this many entries were applied since the last one, whatever the
    /// interval. The in-memory log window keeps every entry above the last
    /// durable commit, so this bounds it.
    backend_commit_limit: u64,
    /// Work that holds the database on a thread of its own (a durable
    /// commit, a defragmentation), the callers of a defragmentation, and the
    /// committed entries waiting for the database.
    busy: Option<(DbJob, std::thread::JoinHandle<Result<(), StorageError>>)>,
    /// The number of the latest database job, and whether its thread has
    /// said it is ending (it is then joined without waiting on it).
    job_seq: u64,
    job_ending: bool,
    defrag_waiters: Vec<oneshot::Sender<Result<()>>>,
    /// A defragmentation's copy in progress, and one made, waiting for the
    /// database job that finishes it.
    defrag_copying:
        Option<std::thread::JoinHandle<Result<crate::storage::defrag::Copy, StorageError>>>,
    defrag_copied: Option<crate::storage::defrag::Copy>,
    /// When the current database job started.
    job_started: Instant,
    deferred: Vec<Entry>,
    disk: Arc<DiskSpace>,
    /// When this member last proposed raising or lifting its NOSPACE alarm.
    last_disk_alarm: Option<Instant>,
    /// How answers to proposals and read barriers reach the runtime (sent
    /// directly without one).
    handoff: Option<Arc<Handoff>>,
    /// When the next tick is due.
    next_tick: Instant,
    /// Proposals handled so far, and whether the loop's latest pass that
    /// took any took a single one (writes come one at a time).
    proposals_seen: u64,
    writes_alone: bool,
    /// A `Stop` arrived and a database job it waited for ended cleanly.
    stop_requested: bool,
    /// A batch is being run by [`Node::propose_here`] on a runtime thread:
    /// its answers are sent directly.
    here: bool,
    /// An error of a batch run by [`Node::propose_here`], which stops the
    /// loop at its next pass.
    failed: Option<StorageError>,
    /// Where the peer transport delivers, when its light messages may be
    /// stepped on runtime threads (`light.rs`).
    inbox: Option<Arc<Inbox>>,
    /// Messages held until the end of a light pass (`light.rs`), which sends
    /// them together: one write to each peer.
    outbox: Option<Vec<raft::eraftpb::Message>>,
    /// Where a read-index round's heartbeats go (`read_quorum.rs`).
    read_quorum: read_quorum::ReadQuorum,
}

fn raft_err(e: raft::Error) -> StorageError {
    StorageError::Db(format!("raft: {e}"))
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: NodeConfig,
        log: LogStore,
        applier: Applier,
        backend: Arc<Backend>,
        hub: Arc<WatchHub>,
        status: Arc<RaftStatus>,
        ids: Arc<IdGen>,
        wake: Sender<Msg>,
        transport: Option<Arc<Transport>>,
        disk: Arc<DiskSpace>,
    ) -> Result<Node, StorageError> {
        let rc = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks.max(2),
            // A follower ignores (pre-)votes while it heard from the leader within
            // election_tick ticks. Timing out no earlier than one tick after that
            // keeps the first candidate from being ignored by peers whose ticks run
            // slightly behind its own, which would delay the election by a whole
            // extra timeout.
            min_election_tick: cfg.election_ticks.max(2) + 1,
            max_election_tick: 2 * cfg.election_ticks.max(2),
            heartbeat_tick: 1,
            applied: cfg.applied,
            max_size_per_msg: crate::raft::transport::MAX_SIZE_PER_MSG,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: cfg.pre_vote,
            ..Default::default()
        };
        rc.validate().map_err(raft_err)?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut raw = RawNode::new(&rc, log.storage(), &logger).map_err(raft_err)?;
        if cfg.single_voter {
            // Nobody to wait for: take leadership at once.
            raw.campaign().map_err(raft_err)?;
        }
        let threshold = cfg.snapshot_count.clamp(2, 10_000);
        let compact_restored = {
            let txn = backend.read()?;
            let meta = txn
                .open_table(crate::storage::META)
                .map_err(StorageError::from)?;
            crate::storage::get_u64(&meta, crate::storage::meta::RESTORED)?.is_some()
        };
        status.applied.store(cfg.applied, Ordering::Relaxed);
        let cluster = applier.cluster.clone();
        if let Some(t) = &transport {
            t.set_members(&cluster.members());
        }
        Ok(Node {
            raw,
            transport,
            cluster,
            local_id: cfg.id,
            election_timeout: cfg.heartbeat * cfg.election_ticks as u32,
            removed: false,
            campaign_pending: false,
            log,
            applier,
            backend,
            hub,
            status,
            ids,
            wake,
            heartbeat: cfg.heartbeat,
            backend_commit_interval: cfg.backend_commit_interval,
            backend_commit_limit: cfg.backend_commit_limit.max(1),
            waiters: HashMap::new(),
            reads: ReadRounds::default(),
            reads_due: false,
            applied: cfg.applied,
            compact_threshold: threshold,
            compact_keep: (threshold / 2).clamp(1, 5_000),
            pending_compact: None,
            compact_restored,
            revoking: HashMap::new(),
            last_size_check: Instant::now(),
            in_use_count: None,
            quota_bytes: cfg.quota_bytes,
            rt: tokio::runtime::Handle::try_current().ok(),
            frozen: false,
            freeze_file: cfg.freeze_file,
            persisted_term_vote: (u64::MAX, u64::MAX),
            durable_applied: cfg.applied,
            last_durable: Instant::now(),
            busy: None,
            job_seq: 0,
            job_ending: false,
            defrag_waiters: Vec::new(),
            defrag_copying: None,
            defrag_copied: None,
            job_started: Instant::now(),
            deferred: Vec::new(),
            disk,
            last_disk_alarm: None,
            handoff: None,
            next_tick: Instant::now() + cfg.heartbeat,
            proposals_seen: 0,
            writes_alone: true,
            stop_requested: false,
            here: false,
            failed: None,
            inbox: None,
            outbox: None,
            read_quorum: Default::default(),
        })
    }

    /// Where linearizable reads wait for the loop.
    pub fn read_queue(&self) -> Arc<ReadQueue> {
        self.reads.queue()
    }

    /// Sends the answers to proposals and read barriers through `h`.
    pub fn set_handoff(&mut self, h: Arc<Handoff>) {
        self.handoff = Some(h);
    }

    /// The peer transport delivers through `inbox`, which counts the events
    /// the loop has yet to handle.
    pub fn set_inbox(&mut self, inbox: Arc<Inbox>) {
        self.inbox = Some(inbox);
    }

    /// Runs the loop on the calling thread until stopped; an error means the
    /// member can no longer apply safely. The node is shared with
    /// [`Node::propose_here`]: the loop holds it while it works and lets go
    /// of it while it waits for messages. When the loop ends it takes the
    /// node out, so nothing runs it any more.
    /// With `yield_to_worker` (a runtime of one worker, which shares its one
    /// CPU with this thread), a write that wakes the loop lets the worker
    /// run first: woken, this thread would take the CPU from the worker
    /// while it still decodes the writes that came with that one, and sync
    /// each of them alone.
    pub fn run(
        shared: Arc<Mutex<Option<Node>>>,
        rx: Receiver<Msg>,
        yield_to_worker: bool,
    ) -> Result<(), StorageError> {
        // Marks the loop stopped even when it panics, so the process notices.
        struct StoppedOnDrop(Option<Arc<RaftStatus>>);
        impl Drop for StoppedOnDrop {
            fn drop(&mut self) {
                if let Some(s) = &self.0 {
                    s.reads_here.store(false, Ordering::SeqCst);
                    s.stopped.store(true, Ordering::SeqCst);
                }
            }
        }
        let _stopped = StoppedOnDrop(shared.lock().as_ref().map(|n| n.status.clone()));
        let mut res = Ok(());
        // A write run on a caller's thread moves neither the next tick nor
        // the reads' due mark: the wait is reckoned at the end of a pass.
        let mut timeout = match shared.lock().as_ref() {
            Some(n) => n.wait_for_next(),
            None => return Ok(()),
        };
        let taken = loop {
            let first = rx.recv_timeout(timeout);
            if yield_to_worker && matches!(first, Ok(Msg::Propose { .. })) {
                std::thread::yield_now();
            }
            let mut guard = shared.lock();
            let Some(node) = guard.as_mut() else {
                return Ok(());
            };
            match node.pass(first, &rx) {
                Ok(true) => timeout = node.wait_for_next(),
                // Taken out before the lock goes: no write runs on the
                // caller's thread after this.
                Ok(false) => break guard.take(),
                Err(e) => {
                    res = Err(e);
                    break guard.take();
                }
            }
        };
        let Some(mut node) = taken else {
            return res;
        };
        while res.is_ok() && node.busy.is_some() {
            res = node.finish_job(true);
        }
        if res.is_ok() && node.applied > node.durable_applied {
            // A restart then has nothing to apply again.
            res = node.commit_backend();
        }
        node.status.reads_here.store(false, Ordering::SeqCst);
        node.status.stopped.store(true, Ordering::SeqCst);
        for (_, w) in node.waiters.drain() {
            let _ = w.send(Err(Error::Stopped));
        }
        for r in node.reads.close() {
            let _ = r.send(Err(Error::Stopped));
        }
        res
    }

    /// How long the loop may wait for its next message.
    fn wait_for_next(&self) -> Duration {
        if self.reads_due {
            Duration::ZERO
        } else {
            self.next_tick.saturating_duration_since(Instant::now())
        }
    }

    /// One pass of the loop: `first` (what the wait for a message gave), the
    /// messages queued behind it, the tick when due, then the batch made
    /// durable, applied and answered. Returns false to stop.
    fn pass(
        &mut self,
        first: std::result::Result<Msg, RecvTimeoutError>,
        rx: &Receiver<Msg>,
    ) -> Result<bool, StorageError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        self.status.heartbeat.fetch_add(1, Ordering::Relaxed);
        let proposals_before = self.proposals_seen;
        match first {
            Ok(m) => {
                if !self.handle(m) {
                    self.stop(rx);
                    return Ok(false);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(false),
        }
        while let Ok(m) = rx.try_recv() {
            if !self.handle(m) {
                self.stop(rx);
                return Ok(false);
            }
        }
        // Writes that arrive together are left to this loop, which makes
        // them durable together; one at a time may run on the caller's
        // thread again once a pass of the loop took a single one.
        match self.proposals_seen - proposals_before {
            0 => {}
            1 => self.writes_alone = true,
            _ => self.writes_alone = false,
        }
        if self.frozen {
            // Deliberately stuck: the watchdog must notice and restart us.
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        self.start_read_round();
        if Instant::now() >= self.next_tick {
            self.raw.tick();
            self.next_tick += self.heartbeat;
            if self.next_tick < Instant::now() {
                self.next_tick = Instant::now() + self.heartbeat;
            }
            self.expire_leases();
            if self.applied > self.durable_applied
                && (self.last_durable.elapsed() >= self.backend_commit_interval
                    || self.applied - self.durable_applied >= self.backend_commit_limit)
                && self.busy.is_none()
            {
                self.start_job(DbJob::Commit {
                    applied: self.applied,
                    start: Instant::now(),
                });
            }
            // Waiters whose callers gave up (timed out, or went away)
            // wait for entries that may never come: a proposal lost with
            // a leader change is answered by its caller's timeout.
            self.waiters.retain(|_, w| !w.is_closed());
            if self.freeze_file.as_ref().is_some_and(|f| f.exists()) {
                crate::warn!("apply loop frozen by the debug switch");
                self.frozen = true;
                self.status.reads_here.store(false, Ordering::SeqCst);
            }
            for ctx in self.reads.due_for_retry(Instant::now()) {
                self.read_round_asked_again();
                self.raw.read_index(ctx);
            }
            if self.last_size_check.elapsed() >= Duration::from_secs(1) {
                self.last_size_check = Instant::now();
                self.disk.check();
                metrics::DB_SIZE.set(self.backend.size() as i64);
                self.measure_in_use();
                metrics::KEYS_TOTAL.set(self.applier.store.key_count() as i64);
                let me = self.raw.raft.id;
                metrics::IS_LEARNER.set(self.raw.raft.prs().conf().learners().contains(&me) as i64);
            }
        }
        self.finish_job(false)?;
        self.defrag_step();
        self.on_ready()?;
        if self.removed {
            return Ok(false);
        }
        // The round that ended in this ready lets the reads that waited
        // for it go now, not at the next wake-up.
        self.reads_due = false;
        if self.start_read_round() {
            self.on_ready()?;
            if self.removed {
                return Ok(false);
            }
            // A round that ended at once (a single voter) leaves the queue
            // watched without a wake-up to come: look again without waiting.
            self.reads_due = !self.reads.in_flight();
        }
        self.disk_alarm();
        Ok(true)
    }

    /// After a `Stop` was handled: a leader first hands leadership to a
    /// caught-up voter.
    fn stop(&mut self, rx: &Receiver<Msg>) {
        if self.stop_requested {
            self.hand_off_leadership(rx);
        }
    }

    /// Returns false to stop.
    fn handle(&mut self, m: Msg) -> bool {
        match m {
            Msg::Propose { id, data, reply } => {
                if self.status.leader.load(Ordering::Relaxed) == 0 {
                    metrics::PROPOSALS_FAILED.inc();
                    if let Some(r) = reply {
                        let _ = r.send(Err(Error::NoLeader));
                    }
                    return true;
                }
                self.proposals_seen += 1;
                match self.raw.propose(vec![], data) {
                    Ok(()) => {
                        metrics::PROPOSALS_PENDING.add(1);
                        if let Some(r) = reply {
                            self.waiters.insert(id, r);
                        }
                    }
                    Err(_) => {
                        metrics::PROPOSALS_FAILED.inc();
                        if let Some(r) = reply {
                            let _ = r.send(Err(Error::NoLeader));
                        }
                    }
                }
            }
            // start_read_round takes the queue.
            Msg::Reads => {}
            // Started by defrag_step; one in progress answers every caller.
            Msg::Defragment(r) => self.defrag_waiters.push(r),
            // Its thread is joined by defrag_step.
            Msg::DefragCopied => {}
            Msg::Freeze => {
                self.frozen = true;
                self.status.reads_here.store(false, Ordering::SeqCst);
            }
            // A late word from a job already joined is ignored.
            Msg::JobDone(seq) => self.job_ending = self.busy.is_some() && seq == self.job_seq,
            Msg::ConfChange { mut cc, reply } => {
                if self.status.leader.load(Ordering::Relaxed) == 0 {
                    let _ = reply.send(Err(Error::NoLeader));
                } else if self.raw.raft.has_pending_conf() {
                    let _ = reply.send(Err(Error::Unhealthy));
                } else {
                    let id = self.ids.next();
                    cc.id = id;
                    match self.raw.propose_conf_change(vec![], cc) {
                        Ok(()) => {
                            self.waiters.insert(id, reply);
                        }
                        Err(_) => {
                            let _ = reply.send(Err(Error::NoLeader));
                        }
                    }
                }
            }
            Msg::Peer(ev) => {
                if let Some(inbox) = &self.inbox {
                    inbox.handled();
                }
                match ev {
                    transport::Event::Message(m) => self.step_peer(m),
                    transport::Event::Messages(ms) => {
                        for m in ms {
                            self.step_peer(m);
                        }
                    }
                    transport::Event::Unreachable(id) => self.raw.report_unreachable(id),
                    transport::Event::SnapshotDone(id, ok) => self.raw.report_snapshot(
                        id,
                        if ok {
                            SnapshotStatus::Finish
                        } else {
                            SnapshotStatus::Failure
                        },
                    ),
                }
            }
            Msg::TransferLeader(target, reply) => {
                let target = if target == 0 {
                    self.best_transferee()
                } else {
                    Some(target)
                };
                match target {
                    Some(t) if self.status.is_leader.load(Ordering::Relaxed) => {
                        self.raw.transfer_leader(t);
                        let _ = reply.send(Ok(()));
                    }
                    Some(_) => {
                        let _ = reply.send(Err(Error::NotLeader));
                    }
                    None => {
                        let _ = reply.send(Err(Error::MemberNotFound));
                    }
                }
            }
            Msg::LearnerReady(id, reply) => {
                let r = if !self.status.is_leader.load(Ordering::Relaxed) {
                    Err(Error::NotLeader)
                } else {
                    let commit = self.raw.raft.raft_log.committed;
                    match self.raw.raft.prs().get(id) {
                        // etcd: a learner is ready once it has 90% of the leader's log.
                        Some(pr) => Ok(pr.matched as f64 >= commit as f64 * 0.9),
                        None => Err(Error::MemberNotFound),
                    }
                };
                let _ = reply.send(r);
            }
            Msg::Stop => {
                self.stop_requested = self.finish_job(true).is_ok();
                return false;
            }
        }
        true
    }

    /// Steps a peer's message (a follower's read-index request joins this
    /// leader's next round instead).
    fn step_peer(&mut self, m: raft::eraftpb::Message) {
        self.note_read_heartbeat_answer(&m);
        if let Some(m) = self.join_read_round(m) {
            let _ = self.raw.step(m);
        }
    }

    fn send(&mut self, mut msgs: Vec<raft::eraftpb::Message>) {
        self.narrow_read_heartbeats(&mut msgs);
        if let Some(held) = self.outbox.as_mut() {
            held.append(&mut msgs);
            return;
        }
        if let Some(t) = &self.transport {
            t.send(msgs);
        }
    }

    fn on_ready(&mut self) -> Result<(), StorageError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        if let Some(ss) = rd.ss() {
            let was_leader = self.status.is_leader.load(Ordering::Relaxed);
            let prev_leader = self.status.leader.swap(ss.leader_id, Ordering::Relaxed);
            let is_leader = ss.raft_state == StateRole::Leader;
            if !is_leader {
                // Before any message of this ready goes (a vote granted to
                // another member among them).
                self.status.reads_here.store(false, Ordering::SeqCst);
                self.reads.drop_remote();
            }
            self.status.is_leader.store(is_leader, Ordering::Relaxed);
            metrics::HAS_LEADER.set((ss.leader_id != 0) as i64);
            metrics::IS_LEADER.set(is_leader as i64);
            if ss.leader_id != prev_leader && ss.leader_id != 0 {
                metrics::LEADER_CHANGES.inc();
                crate::info!(
                    "raft leader elected",
                    leader = format!("{:x}", ss.leader_id),
                    term = self.raw.raft.term
                );
            }
            if is_leader && !was_leader {
                // No lease may expire early because leadership moved.
                self.applier.lessor.refresh_all();
            }
            if was_leader && !is_leader {
                for (_, w) in self.waiters.drain() {
                    let _ = w.send(Err(Error::LeaderChanged));
                }
            }
        }
        self.status
            .term
            .store(self.raw.raft.term, Ordering::Relaxed);
        self.send(rd.take_messages());
        if !rd.snapshot().is_empty() {
            // Installing replaces the database: a job holding it ends first.
            self.finish_job(true)?;
            let snap = rd.snapshot().clone();
            let index = snap.get_metadata().index;
            crate::info!(
                "applying snapshot from leader",
                snapshot_index = index,
                size = crate::raft::snapshot_file::local_path(&snap.data)
                    .and_then(|p| std::fs::metadata(p).ok())
                    .map_or(snap.data.len() as u64, |m| m.len())
            );
            metrics::SNAPSHOT_APPLY_IN_PROGRESS.set(1);
            let start = Instant::now();
            let installed = self
                .log
                .install_snapshot(&snap)
                .and_then(|_| self.applier.reload());
            metrics::SNAPSHOT_APPLY_IN_PROGRESS.set(0);
            installed?;
            metrics::SNAP_DB_SAVE.observe(start.elapsed());
            // Watchers missed the events the snapshot covers: they catch up from
            // the new store.
            self.hub.resync(self.applier.store.current_rev());
            self.applied = index;
            self.durable_applied = index;
            self.status.applied.store(index, Ordering::Release);
            if let Some(t) = &self.transport {
                t.set_members(&self.cluster.members());
            }
        }
        let committed = rd.take_committed_entries();
        self.apply_or_defer(committed)?;
        if self.removed {
            // raft-rs no longer tracks this member (a removed leader would panic
            // in advance); the loop stops now.
            return Ok(());
        }
        for rs in rd.take_read_states() {
            self.read_round_answered(&rs.request_ctx, rs.index);
        }
        // Reads whose index is applied go before this ready's entries are
        // written: they do not wait for a sync of entries committed after them.
        self.answer_reads();
        let entries = rd.take_entries();
        let hs = rd.hs().cloned();
        if !entries.is_empty() || hs.is_some() {
            // Term and vote must be durable before anyone hears of them; a commit
            // index alone can be recomputed after a crash.
            let durable = !entries.is_empty()
                || hs
                    .as_ref()
                    .map(|h| (h.term, h.vote) != self.persisted_term_vote)
                    .unwrap_or(false);
            if let Some(h) = &hs {
                self.persisted_term_vote = (h.term, h.vote);
            }
            // Entries from a leader are written whatever the space left (a
            // member cannot refuse them and stay in step), but a batch that
            // takes the disk under the low mark raises NOSPACE at once.
            let bytes: usize = entries.iter().map(|e| e.data.len()).sum();
            if bytes > 0 {
                self.disk.admit(0, bytes as u64);
            }
            let start = Instant::now();
            self.log.append(&entries, hs.as_ref(), durable)?;
            let took = start.elapsed();
            if durable {
                metrics::WAL_FSYNC.observe(took);
            }
            metrics::WAL_WRITE.observe(took);
            metrics::WAL_WRITE_BYTES.add(
                entries
                    .iter()
                    .map(|e| protobuf::Message::compute_size(e) as i64)
                    .sum::<i64>(),
            );
        }
        // Compacting a restored keyspace's log writes to the database:
        // not while a job holds it.
        let may_compact = self.busy.is_none() || !self.compact_restored;
        if let Some(ci) = self.pending_compact.take_if(|_| may_compact) {
            if self.compact_restored {
                self.commit_backend()?;
            }
            // The log keeps every entry the database has not made durable:
            // a restart applies them again.
            let first = self.log.first_index();
            self.log
                .compact(ci.min(self.durable_applied + 1), self.durable_applied)?;
            if self.log.first_index() > first {
                // At debug level: under load a log of the default
                // --snapshot-count compacts every 5,000 entries.
                crate::debug!(
                    "compacted Raft logs",
                    compact_index = self.log.first_index() - 1
                );
            }
            if self.compact_restored {
                // The log must forget the bootstrap entries for good before
                // the mark that the keyspace is not in the log goes.
                self.log.sync()?;
                let mut txn = self.backend.write()?;
                txn.set_durability(redb::Durability::Immediate)?;
                {
                    let mut meta = txn
                        .open_table(crate::storage::META)
                        .map_err(StorageError::from)?;
                    meta.remove(crate::storage::meta::RESTORED)
                        .map_err(StorageError::from)?;
                }
                txn.commit()?;
                self.compact_restored = false;
            }
        }
        self.send(rd.take_persisted_messages());
        // Applied progress is reported separately (entries wait while a
        // defragmentation holds the database).
        let mut light = self.raw.advance_append(rd);
        if let Some(c) = light.commit_index() {
            self.status.commit.store(c, Ordering::Relaxed);
        }
        self.send(light.take_messages());
        self.apply_or_defer(light.take_committed_entries())?;
        if self.removed {
            return Ok(());
        }
        self.raw.advance_apply_to(self.applied);
        if self.campaign_pending {
            self.campaign_pending = false;
            let _ = self.raw.campaign();
        }
        self.answer_reads();
        self.publish_reads_here();
        Ok(())
    }

    /// Where answers go: through the hand-off, or directly when the batch
    /// runs on a runtime thread (`here`).
    fn answers_via(here: bool, handoff: &Option<Arc<Handoff>>) -> Option<&Handoff> {
        if here { None } else { handoff.as_deref() }
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), StorageError> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        let commit = self.status.commit.load(Ordering::Relaxed).max(last);
        self.status.commit.store(commit, Ordering::Relaxed);
        metrics::PROPOSALS_COMMITTED.set(commit as i64);
        let term = self.raw.raft.term;
        let start = Instant::now();
        let raw = &mut self.raw;
        let log = &self.log;
        let cluster = &self.cluster;
        let local_id = self.local_id;
        let mut removed = false;
        let mut members_changed = false;
        let mut conf = |txn: &redb::WriteTransaction,
                        e: &Entry|
         -> Result<Option<(u64, Result<Applied>)>, StorageError> {
            let decode_err = |err: protobuf::ProtobufError| StorageError::Decode {
                what: format!("raft entry {}", e.index),
                detail: err.to_string(),
            };
            if e.get_entry_type() == EntryType::EntryConfChangeV2 {
                let cc = ConfChangeV2::parse_from_bytes(&e.data).map_err(decode_err)?;
                let cs = raw.apply_conf_change(&cc).map_err(raft_err)?;
                log.write_conf_state(txn, &cs)?;
                return Ok(None);
            }
            let cc = ConfChange::parse_from_bytes(&e.data).map_err(decode_err)?;
            let cs = match raw.apply_conf_change(&cc) {
                Ok(cs) => cs,
                Err(err) => {
                    crate::warn!("refused membership change", error = err);
                    return Ok(Some((cc.id, Err(Error::Unhealthy))));
                }
            };
            log.write_conf_state(txn, &cs)?;
            let mut t = txn
                .open_table(crate::storage::MEMBERS)
                .map_err(StorageError::from)?;
            let ctx = Member::decode(&cc.context[..]).unwrap_or_default();
            let member = match cc.get_change_type() {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    let learner = cc.get_change_type() == ConfChangeType::AddLearnerNode;
                    let mut m = cluster.get(cc.node_id).unwrap_or(Member {
                        id: cc.node_id,
                        ..ctx.clone()
                    });
                    if !ctx.peer_ur_ls.is_empty() && m.peer_ur_ls.is_empty() {
                        m.peer_ur_ls = ctx.peer_ur_ls.clone();
                    }
                    m.is_learner = learner;
                    t.insert(m.id, m.encode_to_vec().as_slice())
                        .map_err(StorageError::from)?;
                    cluster.upsert(m.clone());
                    crate::info!(
                        "added member",
                        member_id = format!("{:x}", m.id),
                        peer_urls = m.peer_ur_ls.join(","),
                        learner = learner
                    );
                    Some(m)
                }
                ConfChangeType::RemoveNode => {
                    t.remove(cc.node_id).map_err(StorageError::from)?;
                    let m = cluster.remove(cc.node_id);
                    crate::info!("removed member", member_id = format!("{:x}", cc.node_id));
                    if cc.node_id == local_id {
                        removed = true;
                    }
                    m
                }
            };
            members_changed = true;
            Ok(Some((
                cc.id,
                Ok(Applied::Members {
                    member,
                    members: cluster.members(),
                }),
            )))
        };
        let handoff = Self::answers_via(self.here, &self.handoff);
        let waiters = &mut self.waiters;
        let mut answer = |results: Vec<(u64, Result<Applied>)>| {
            let answers = results
                .into_iter()
                .filter_map(|(id, res)| {
                    metrics::PROPOSALS_PENDING.add(-1);
                    waiters.remove(&id).map(|w| Answer::Applied(w, res))
                })
                .collect();
            Handoff::deliver(handoff, answers);
        };
        let out = self
            .applier
            .apply(&entries, self.applied, term, &mut conf, &mut answer)?;
        if members_changed {
            if let Some(t) = &self.transport {
                t.set_members(&self.cluster.members());
            }
            let voters = self.raw.raft.prs().conf().voters().ids();
            if voters.len() == 1
                && voters.contains(self.local_id)
                && self.raw.raft.state != StateRole::Leader
            {
                // raft-rs refuses to campaign before advance_apply.
                self.campaign_pending = true;
            }
        }
        if removed {
            crate::warn!("the member has been permanently removed from the cluster");
            self.removed = true;
            self.status.reads_here.store(false, Ordering::SeqCst);
        }
        metrics::BACKEND_COMMIT.observe(start.elapsed());
        if start.elapsed() > Duration::from_millis(100) {
            metrics::SLOW_APPLY.inc();
        }
        self.applied = self.applied.max(last);
        // Release: a read that sees this index sees the key index it names
        // (`EtcdServer::read_barrier`).
        self.status.applied.store(self.applied, Ordering::Release);
        metrics::PROPOSALS_APPLIED.set(self.applied as i64);
        self.hub.publish(out.events, out.rev);
        if metrics::PROPOSALS_PENDING.get() < 0 {
            metrics::PROPOSALS_PENDING.set(0);
        }
        let first = self.log.first_index();
        if self.applied >= first + self.compact_threshold {
            self.pending_compact = Some(self.applied + 1 - self.compact_keep);
        } else if self.compact_restored && self.applied > first {
            // A restored keyspace is not in the log: drop the log up to the last
            // applied entry (one entry stays, so the log is never empty), and a
            // member that joins later receives a snapshot.
            self.pending_compact = Some(self.applied);
        }
        Ok(())
    }
}
