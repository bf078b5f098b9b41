//! Model-based test of the MVCC store: random sequences of puts, deletes, txns,
//! compactions, lease grants and revokes (a revoke stands for a lease expiring) and
//! member restarts are applied to a real member, driven in-process through the
//! library, and to a plain in-memory model of etcd's semantics. After every case,
//! every revision from the compaction point to the current one must read back
//! exactly as the model says, and older revisions must fail as compacted.
//!
//! Cases default to 32; `PROPTEST_CASES` and `PROPTEST_RNG_SEED` override the count
//! and fix the seed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestCaseError, TestRunner};

use etcd_rs::config::Config;
use etcd_rs::error::Error;
use etcd_rs::pb::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest,
    PutRequest, RangeRequest, RangeResponse, RequestOp, TxnRequest, compare, request_op,
    response_op,
};
use etcd_rs::pb::mvccpb::KeyValue;
use etcd_rs::server::{Applied, EtcdServer, Op};

/// The key space: small, with shared prefixes so ranges cover several keys.
const KEYS: [&str; 6] = ["a", "a/1", "a/2", "b", "b/1", "c"];
/// Prefixes used for range reads, deletes and compares.
const PREFIXES: [&str; 3] = ["a", "a/", "b"];
/// Few distinct values, so value compares sometimes hold.
const VALUES: [&str; 4] = ["x", "y", "z", "w"];
/// Lease IDs the operations pick from; grants and revokes make them come and go.
const LEASES: [i64; 3] = [0x11, 0x22, 0x33];

fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A set of keys as etcd names one: a key and a range end.
#[derive(Clone, Debug)]
enum Span {
    Key(usize),
    Prefix(usize),
    /// `[KEYS[a], KEYS[b])`, empty when `b <= a`.
    Between(usize, usize),
    /// Every key from `KEYS[a]` on (range end `\0`).
    From(usize),
    /// Every key (key `\0`, range end `\0`).
    All,
}

impl Span {
    fn bounds(&self) -> (Vec<u8>, Vec<u8>) {
        match *self {
            Span::Key(i) => (KEYS[i].as_bytes().to_vec(), vec![]),
            Span::Prefix(i) => {
                let p = PREFIXES[i].as_bytes();
                (p.to_vec(), prefix_end(p))
            }
            Span::Between(a, b) => (KEYS[a].as_bytes().to_vec(), KEYS[b].as_bytes().to_vec()),
            Span::From(a) => (KEYS[a].as_bytes().to_vec(), vec![0]),
            Span::All => (vec![0], vec![0]),
        }
    }
}

/// etcd's interval rule: no end = one key; end `\0` = from the key on.
fn in_span(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        key == start
    } else if end == [0] {
        key >= start
    } else {
        key >= start && key < end
    }
}

#[derive(Clone, Debug)]
enum CmpTarget {
    Value(usize),
    Version(i64),
    Create(i64),
    Mod(i64),
    Lease(i64),
}

#[derive(Clone, Debug)]
struct Cmp {
    span: Span,
    target: CmpTarget,
    /// compare::CompareResult as i32 (Equal, Greater, Less, NotEqual).
    result: i32,
}

#[derive(Clone, Debug)]
enum TxnOp {
    Put {
        key: usize,
        value: usize,
        lease: i64,
        prev_kv: bool,
    },
    Delete {
        span: Span,
        prev_kv: bool,
    },
    Range(Span),
}

#[derive(Clone, Debug)]
enum MOp {
    Put {
        key: usize,
        value: usize,
        lease: i64,
        prev_kv: bool,
    },
    Delete {
        span: Span,
        prev_kv: bool,
    },
    Txn {
        compares: Vec<Cmp>,
        success: Vec<TxnOp>,
        failure: Vec<TxnOp>,
    },
    /// Compacts at `1 + pick % (current + 1)` (any existing revision, or one past)
    /// or, when `near_head`, at one of the last three revisions or one past.
    Compact {
        pick: u32,
        near_head: bool,
    },
    LeaseGrant(i64),
    LeaseRevoke(i64),
    /// Stops the member and starts it again on the same data directory.
    Restart,
}

// ---------------------------------------------------------------------------
// The model

/// Every revision's full key -> KeyValue map; `revs[r]` is the state at revision r
/// (`revs[0]` is unused; revision 1 is the empty store).
#[derive(Clone, Debug)]
pub struct Model {
    revs: Vec<BTreeMap<Vec<u8>, KeyValue>>,
    compact: i64,
    leases: BTreeSet<i64>,
}

/// What a request produced, reduced to what the model can predict.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Err(Error),
    Put {
        rev: i64,
        prev_kv: Option<KeyValue>,
    },
    Delete {
        rev: i64,
        deleted: i64,
        prev_kvs: Vec<KeyValue>,
    },
    Txn {
        rev: i64,
        succeeded: bool,
        responses: Vec<TxnOutcome>,
    },
    Compact {
        rev: i64,
    },
    Lease {
        rev: i64,
    },
}

#[derive(Clone, Debug, PartialEq)]
enum TxnOutcome {
    Range {
        kvs: Vec<KeyValue>,
        count: i64,
        more: bool,
    },
    Put {
        prev_kv: Option<KeyValue>,
    },
    Delete {
        deleted: i64,
        prev_kvs: Vec<KeyValue>,
    },
}

/// One modifying request in progress: a working copy of the current state.
struct Write {
    state: BTreeMap<Vec<u8>, KeyValue>,
    rev: i64,
    changed: bool,
}

impl Write {
    fn put(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> Option<KeyValue> {
        let prev = self.state.get(key).cloned();
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: prev.as_ref().map(|p| p.create_revision).unwrap_or(self.rev),
            mod_revision: self.rev,
            version: prev.as_ref().map(|p| p.version).unwrap_or(0) + 1,
            value,
            lease,
        };
        self.state.insert(key.to_vec(), kv);
        self.changed = true;
        prev
    }

    fn delete(&mut self, span: &Span) -> Vec<KeyValue> {
        let (start, end) = span.bounds();
        let doomed: Vec<Vec<u8>> = self
            .state
            .keys()
            .filter(|k| in_span(k, &start, &end))
            .cloned()
            .collect();
        let mut out = Vec::new();
        for k in doomed {
            if let Some(kv) = self.state.remove(&k) {
                out.push(kv);
            }
        }
        if !out.is_empty() {
            self.changed = true;
        }
        out
    }
}

impl Default for Model {
    fn default() -> Self {
        Model::new()
    }
}

impl Model {
    pub fn new() -> Model {
        Model {
            revs: vec![BTreeMap::new(), BTreeMap::new()],
            compact: 0,
            leases: BTreeSet::new(),
        }
    }

    pub fn current(&self) -> i64 {
        (self.revs.len() - 1) as i64
    }

    fn state(&self) -> &BTreeMap<Vec<u8>, KeyValue> {
        &self.revs[self.revs.len() - 1]
    }

    fn begin(&self) -> Write {
        Write {
            state: self.state().clone(),
            rev: self.current() + 1,
            changed: false,
        }
    }

    /// Ends a modifying request: one new revision if anything changed.
    fn commit(&mut self, w: Write) -> i64 {
        if w.changed {
            self.revs.push(w.state);
        }
        self.current()
    }

    /// The keys of `span` at the current state, in key order.
    fn range_now(state: &BTreeMap<Vec<u8>, KeyValue>, span: &Span) -> Vec<KeyValue> {
        let (start, end) = span.bounds();
        state
            .values()
            .filter(|kv| in_span(&kv.key, &start, &end))
            .cloned()
            .collect()
    }

    /// The keys in `[start, end)` at revision `rev`.
    pub fn range_at(&self, rev: i64, start: &[u8], end: &[u8]) -> Vec<KeyValue> {
        self.revs[rev as usize]
            .values()
            .filter(|kv| in_span(&kv.key, start, end))
            .cloned()
            .collect()
    }

    fn compare(&self, c: &Cmp) -> bool {
        let kvs = Model::range_now(self.state(), &c.span);
        if kvs.is_empty() {
            if matches!(c.target, CmpTarget::Value(_)) {
                return false;
            }
            return compare_kv(c, &KeyValue::default());
        }
        kvs.iter().all(|kv| compare_kv(c, kv))
    }

    fn apply(&mut self, op: &MOp) -> Outcome {
        match op {
            MOp::Put {
                key,
                value,
                lease,
                prev_kv,
            } => {
                if *lease != 0 && !self.leases.contains(lease) {
                    return Outcome::Err(Error::LeaseNotFound);
                }
                let mut w = self.begin();
                let prev = w.put(
                    KEYS[*key].as_bytes(),
                    VALUES[*value].as_bytes().to_vec(),
                    *lease,
                );
                let rev = self.commit(w);
                Outcome::Put {
                    rev,
                    prev_kv: if *prev_kv { prev } else { None },
                }
            }
            MOp::Delete { span, prev_kv } => {
                let mut w = self.begin();
                let deleted = w.delete(span);
                let rev = self.commit(w);
                Outcome::Delete {
                    rev,
                    deleted: deleted.len() as i64,
                    prev_kvs: if *prev_kv { deleted } else { vec![] },
                }
            }
            MOp::Txn {
                compares,
                success,
                failure,
            } => {
                let ok = compares.iter().all(|c| self.compare(c));
                let ops = if ok { success } else { failure };
                for o in ops {
                    if let TxnOp::Put { lease, .. } = o
                        && *lease != 0
                        && !self.leases.contains(lease)
                    {
                        return Outcome::Err(Error::LeaseNotFound);
                    }
                }
                let mut w = self.begin();
                let mut responses = Vec::new();
                for o in ops {
                    responses.push(match o {
                        TxnOp::Put {
                            key,
                            value,
                            lease,
                            prev_kv,
                        } => {
                            let prev = w.put(
                                KEYS[*key].as_bytes(),
                                VALUES[*value].as_bytes().to_vec(),
                                *lease,
                            );
                            TxnOutcome::Put {
                                prev_kv: if *prev_kv { prev } else { None },
                            }
                        }
                        TxnOp::Delete { span, prev_kv } => {
                            let deleted = w.delete(span);
                            TxnOutcome::Delete {
                                deleted: deleted.len() as i64,
                                prev_kvs: if *prev_kv { deleted } else { vec![] },
                            }
                        }
                        TxnOp::Range(span) => {
                            let kvs = Model::range_now(&w.state, span);
                            TxnOutcome::Range {
                                count: kvs.len() as i64,
                                kvs,
                                more: false,
                            }
                        }
                    });
                }
                let rev = self.commit(w);
                Outcome::Txn {
                    rev,
                    succeeded: ok,
                    responses,
                }
            }
            MOp::Compact { pick, near_head } => {
                let rev = self.compact_target(*pick, *near_head);
                if rev <= self.compact {
                    return Outcome::Err(Error::Compacted);
                }
                if rev > self.current() {
                    return Outcome::Err(Error::FutureRev);
                }
                self.compact = rev;
                Outcome::Compact {
                    rev: self.current(),
                }
            }
            MOp::LeaseGrant(id) => {
                if !self.leases.insert(*id) {
                    return Outcome::Err(Error::LeaseExist);
                }
                Outcome::Lease {
                    rev: self.current(),
                }
            }
            MOp::LeaseRevoke(id) => {
                if !self.leases.remove(id) {
                    return Outcome::Err(Error::LeaseNotFound);
                }
                let mut w = self.begin();
                let attached: Vec<Vec<u8>> = w
                    .state
                    .values()
                    .filter(|kv| kv.lease == *id)
                    .map(|kv| kv.key.clone())
                    .collect();
                for k in attached {
                    w.state.remove(&k);
                    w.changed = true;
                }
                let rev = self.commit(w);
                Outcome::Lease { rev }
            }
            MOp::Restart => Outcome::Lease {
                rev: self.current(),
            },
        }
    }

    fn compact_target(&self, pick: u32, near_head: bool) -> i64 {
        let cur = self.current();
        if near_head {
            (cur + 1 - (pick as i64) % 4).max(1)
        } else {
            1 + (pick as i64) % (cur + 1)
        }
    }
}

fn compare_kv(c: &Cmp, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ord: Ordering = match &c.target {
        CmpTarget::Value(v) => kv.value.as_slice().cmp(VALUES[*v].as_bytes()),
        CmpTarget::Version(v) => kv.version.cmp(v),
        CmpTarget::Create(v) => kv.create_revision.cmp(v),
        CmpTarget::Mod(v) => kv.mod_revision.cmp(v),
        CmpTarget::Lease(v) => kv.lease.cmp(v),
    };
    match compare::CompareResult::try_from(c.result) {
        Ok(compare::CompareResult::Equal) => ord == Ordering::Equal,
        Ok(compare::CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(compare::CompareResult::Greater) => ord == Ordering::Greater,
        Ok(compare::CompareResult::Less) => ord == Ordering::Less,
        Err(_) => unreachable!("generated compare results are valid"),
    }
}

// ---------------------------------------------------------------------------
// Requests for the real member

fn put_request(key: usize, value: usize, lease: i64, prev_kv: bool) -> PutRequest {
    PutRequest {
        key: KEYS[key].as_bytes().to_vec(),
        value: VALUES[value].as_bytes().to_vec(),
        lease,
        prev_kv,
        ..Default::default()
    }
}

fn delete_request(span: &Span, prev_kv: bool) -> DeleteRangeRequest {
    let (key, range_end) = span.bounds();
    DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    }
}

fn range_request(span: &Span, revision: i64) -> RangeRequest {
    let (key, range_end) = span.bounds();
    RangeRequest {
        key,
        range_end,
        revision,
        ..Default::default()
    }
}

fn compare_request(c: &Cmp) -> Compare {
    use compare::{CompareTarget as T, TargetUnion as U};
    let (key, range_end) = c.span.bounds();
    let (target, union) = match &c.target {
        CmpTarget::Value(v) => (T::Value, U::Value(VALUES[*v].as_bytes().to_vec())),
        CmpTarget::Version(v) => (T::Version, U::Version(*v)),
        CmpTarget::Create(v) => (T::Create, U::CreateRevision(*v)),
        CmpTarget::Mod(v) => (T::Mod, U::ModRevision(*v)),
        CmpTarget::Lease(v) => (T::Lease, U::Lease(*v)),
    };
    Compare {
        result: c.result,
        target: target as i32,
        key,
        range_end,
        target_union: Some(union),
    }
}

fn txn_op_request(o: &TxnOp) -> RequestOp {
    let r = match o {
        TxnOp::Put {
            key,
            value,
            lease,
            prev_kv,
        } => request_op::Request::RequestPut(put_request(*key, *value, *lease, *prev_kv)),
        TxnOp::Delete { span, prev_kv } => {
            request_op::Request::RequestDeleteRange(delete_request(span, *prev_kv))
        }
        TxnOp::Range(span) => request_op::Request::RequestRange(range_request(span, 0)),
    };
    RequestOp { request: Some(r) }
}

fn request(op: &MOp, model: &Model) -> Option<Op> {
    Some(match op {
        MOp::Put {
            key,
            value,
            lease,
            prev_kv,
        } => Op::Put(put_request(*key, *value, *lease, *prev_kv)),
        MOp::Delete { span, prev_kv } => Op::DeleteRange(delete_request(span, *prev_kv)),
        MOp::Txn {
            compares,
            success,
            failure,
        } => Op::Txn(TxnRequest {
            compare: compares.iter().map(compare_request).collect(),
            success: success.iter().map(txn_op_request).collect(),
            failure: failure.iter().map(txn_op_request).collect(),
        }),
        MOp::Compact { pick, near_head } => Op::Compaction(CompactionRequest {
            revision: model.compact_target(*pick, *near_head),
            physical: false,
        }),
        MOp::LeaseGrant(id) => Op::LeaseGrant(LeaseGrantRequest { id: *id, ttl: 3600 }),
        MOp::LeaseRevoke(id) => Op::LeaseRevoke(LeaseRevokeRequest { id: *id }),
        MOp::Restart => return None,
    })
}

fn rev_of(h: &Option<etcd_rs::pb::etcdserverpb::ResponseHeader>) -> i64 {
    h.as_ref().map(|h| h.revision).unwrap_or(-1)
}

/// Reduces what the member answered to an [`Outcome`].
fn outcome(res: Result<Applied, Error>) -> Outcome {
    match res {
        Err(e) => Outcome::Err(e),
        Ok(Applied::Put(p)) => Outcome::Put {
            rev: rev_of(&p.header),
            prev_kv: p.prev_kv,
        },
        Ok(Applied::DeleteRange(d)) => Outcome::Delete {
            rev: rev_of(&d.header),
            deleted: d.deleted,
            prev_kvs: d.prev_kvs,
        },
        Ok(Applied::Txn(t)) => Outcome::Txn {
            rev: rev_of(&t.header),
            succeeded: t.succeeded,
            responses: t
                .responses
                .into_iter()
                .map(|r| match r.response {
                    Some(response_op::Response::ResponseRange(r)) => TxnOutcome::Range {
                        kvs: r.kvs,
                        count: r.count,
                        more: r.more,
                    },
                    Some(response_op::Response::ResponsePut(p)) => {
                        TxnOutcome::Put { prev_kv: p.prev_kv }
                    }
                    Some(response_op::Response::ResponseDeleteRange(d)) => TxnOutcome::Delete {
                        deleted: d.deleted,
                        prev_kvs: d.prev_kvs,
                    },
                    other => panic!("unexpected txn response {other:?}"),
                })
                .collect(),
        },
        Ok(Applied::Compaction(c)) => Outcome::Compact {
            rev: rev_of(&c.header),
        },
        Ok(Applied::LeaseGrant(g)) => Outcome::Lease {
            rev: rev_of(&g.header),
        },
        Ok(Applied::LeaseRevoke(r)) => Outcome::Lease {
            rev: rev_of(&r.header),
        },
        Ok(other) => panic!("unexpected apply result {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Comparing the member's history with the model

/// Compares every readable revision of a store (through `read`) with the model:
/// from the compaction revision to the current one, all keys and a few prefix and
/// single-key ranges; below the compaction revision every read must fail as
/// compacted, and one past the current revision as a future revision.
pub fn compare_history(
    read: &dyn Fn(&RangeRequest) -> Result<RangeResponse, Error>,
    model: &Model,
) -> Result<(), String> {
    let cur = model.current();
    let head = read(&range_request(&Span::All, 0)).map_err(|e| format!("range: {e}"))?;
    let got_cur = rev_of(&head.header);
    if got_cur != cur {
        return Err(format!(
            "current revision: store has {got_cur}, model has {cur}"
        ));
    }
    let first = model.compact.max(1);
    let mut spans = vec![Span::All, Span::Key(0), Span::Key(4)];
    spans.extend((0..PREFIXES.len()).map(Span::Prefix));
    for rev in first..=cur {
        for span in &spans {
            let req = range_request(span, rev);
            let got = read(&req).map_err(|e| format!("range {span:?} at {rev}: {e}"))?;
            let want = model.range_at(rev, &req.key, &req.range_end);
            if got.kvs != want || got.count != want.len() as i64 {
                return Err(format!(
                    "range {span:?} at revision {rev}:\n store: count {} {:?}\n model: {:?}",
                    got.count, got.kvs, want
                ));
            }
        }
    }
    for rev in 1..model.compact {
        match read(&range_request(&Span::All, rev)) {
            Err(Error::Compacted) => {}
            other => {
                return Err(format!(
                    "range at compacted revision {rev} (compacted at {}): {other:?}",
                    model.compact
                ));
            }
        }
    }
    match read(&range_request(&Span::All, cur + 1)) {
        Err(Error::FutureRev) => Ok(()),
        other => Err(format!("range at future revision {}: {other:?}", cur + 1)),
    }
}

// ---------------------------------------------------------------------------
// The in-process member

struct Member {
    dir: tempfile::TempDir,
    server: Option<Arc<EtcdServer>>,
}

impl Member {
    async fn start() -> Member {
        etcd_rs::log::set_level(etcd_rs::log::Level::Error);
        let dir = tempfile::tempdir().expect("temp dir");
        let mut m = Member { dir, server: None };
        m.boot().await;
        m
    }

    fn config(&self) -> Config {
        Config {
            data_dir: self.dir.path().join("data"),
            // Compact the Raft log every few entries, so restarts also load a
            // compacted log.
            snapshot_count: 8,
            ..Default::default()
        }
    }

    async fn boot(&mut self) {
        let server = EtcdServer::start(self.config()).expect("start the member");
        let deadline = Instant::now() + Duration::from_secs(10);
        while server
            .status
            .leader
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
        {
            assert!(Instant::now() < deadline, "no leader after 10s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Everything committed before the restart is applied before anything is read.
        server.read_barrier().await.expect("read barrier");
        self.server = Some(server);
    }

    fn server(&self) -> &Arc<EtcdServer> {
        self.server.as_ref().expect("member running")
    }

    async fn restart(&mut self) {
        self.shutdown();
        self.boot().await;
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop().expect("stop the member");
            assert_eq!(
                Arc::strong_count(&s),
                1,
                "the member is still referenced after stop"
            );
        }
    }

    fn read(&self, req: &RangeRequest) -> Result<RangeResponse, Error> {
        self.server().store.range(req)
    }

    /// Applies `op` to the member and to the model; returns both outcomes.
    async fn apply(&mut self, op: &MOp, model: &mut Model) -> (Outcome, Outcome) {
        let req = request(op, model);
        let want = model.apply(op);
        let got = match req {
            Some(req) => outcome(self.server().propose(req).await),
            None => {
                self.restart().await;
                Outcome::Lease {
                    rev: self.server().store.current_rev(),
                }
            }
        };
        (got, want)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = s.stop();
        }
    }
}

// ---------------------------------------------------------------------------
// Strategies

fn span() -> impl Strategy<Value = Span> {
    let n = KEYS.len();
    prop_oneof![
        4 => (0..n).prop_map(Span::Key),
        2 => (0..PREFIXES.len()).prop_map(Span::Prefix),
        1 => (0..n, 0..n).prop_map(|(a, b)| Span::Between(a, b)),
        1 => (0..n).prop_map(Span::From),
        1 => Just(Span::All),
    ]
}

fn lease_choice() -> impl Strategy<Value = i64> {
    prop_oneof![3 => Just(0i64), 2 => proptest::sample::select(LEASES.to_vec())]
}

fn cmp() -> impl Strategy<Value = Cmp> {
    let target = prop_oneof![
        (0..VALUES.len()).prop_map(CmpTarget::Value),
        (0i64..4).prop_map(CmpTarget::Version),
        (0i64..20).prop_map(CmpTarget::Create),
        (0i64..20).prop_map(CmpTarget::Mod),
        prop_oneof![Just(0i64), proptest::sample::select(LEASES.to_vec())]
            .prop_map(CmpTarget::Lease),
    ];
    let span = prop_oneof![
        3 => (0..KEYS.len()).prop_map(Span::Key),
        1 => (0..PREFIXES.len()).prop_map(Span::Prefix),
    ];
    (span, target, 0i32..4).prop_map(|(span, target, result)| Cmp {
        span,
        target,
        result,
    })
}

fn txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        3 => (0..KEYS.len(), 0..VALUES.len(), lease_choice(), any::<bool>()).prop_map(
            |(key, value, lease, prev_kv)| TxnOp::Put { key, value, lease, prev_kv }
        ),
        2 => (span(), any::<bool>()).prop_map(|(span, prev_kv)| TxnOp::Delete { span, prev_kv }),
        2 => span().prop_map(TxnOp::Range),
    ]
}

/// Keeps a branch valid as etcd's API requires: no key put twice, and no key both
/// put and deleted.
fn valid_branch(ops: Vec<TxnOp>) -> Vec<TxnOp> {
    let mut out: Vec<TxnOp> = Vec::new();
    let mut puts: BTreeSet<usize> = BTreeSet::new();
    let mut dels: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for o in ops {
        match &o {
            TxnOp::Put { key, .. } => {
                let k = KEYS[*key].as_bytes();
                if puts.contains(key) || dels.iter().any(|(s, e)| in_span(k, s, e)) {
                    continue;
                }
                puts.insert(*key);
            }
            TxnOp::Delete { span, .. } => {
                let (s, e) = span.bounds();
                if puts.iter().any(|k| in_span(KEYS[*k].as_bytes(), &s, &e)) {
                    continue;
                }
                dels.push((s, e));
            }
            TxnOp::Range(_) => {}
        }
        out.push(o);
    }
    out
}

fn mop() -> impl Strategy<Value = MOp> {
    let branch = || proptest::collection::vec(txn_op(), 0..4).prop_map(valid_branch);
    prop_oneof![
        8 => (0..KEYS.len(), 0..VALUES.len(), lease_choice(), any::<bool>()).prop_map(
            |(key, value, lease, prev_kv)| MOp::Put { key, value, lease, prev_kv }
        ),
        3 => (span(), any::<bool>()).prop_map(|(span, prev_kv)| MOp::Delete { span, prev_kv }),
        5 => (proptest::collection::vec(cmp(), 0..3), branch(), branch()).prop_map(
            |(compares, success, failure)| MOp::Txn { compares, success, failure }
        ),
        2 => (any::<u32>(), any::<bool>())
            .prop_map(|(pick, near_head)| MOp::Compact { pick, near_head }),
        2 => proptest::sample::select(LEASES.to_vec()).prop_map(MOp::LeaseGrant),
        2 => proptest::sample::select(LEASES.to_vec()).prop_map(MOp::LeaseRevoke),
        2 => Just(MOp::Restart),
    ]
}

// ---------------------------------------------------------------------------
// Tests

async fn run_case(ops: &[MOp]) -> Result<(), TestCaseError> {
    let mut m = Member::start().await;
    let mut model = Model::new();
    for (i, op) in ops.iter().enumerate() {
        let (got, want) = m.apply(op, &mut model).await;
        prop_assert_eq!(got, want, "op #{} {:?}", i, op);
    }
    compare_history(&|r| m.read(r), &model).map_err(TestCaseError::fail)?;
    // The same history must survive a restart.
    m.restart().await;
    compare_history(&|r| m.read(r), &model)
        .map_err(|e| TestCaseError::fail(format!("after restart: {e}")))?;
    Ok(())
}

#[test]
fn mvcc_matches_model() {
    let mut cfg = PtConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        cfg.cases = 32;
    }
    cfg.failure_persistence = None;
    cfg.max_shrink_iters = 256;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut runner = TestRunner::new(cfg);
    let result = runner.run(&proptest::collection::vec(mop(), 1..40), |ops| {
        rt.block_on(run_case(&ops))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A fixed history whose semantics are asserted directly: a multi-write txn is one
/// revision, deletes and revokes that remove nothing do not bump the revision.
#[test]
fn model_fixed_history() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut m = Member::start().await;
        let mut model = Model::new();
        let ops = fixed_ops();
        let mut revs = Vec::new();
        for op in &ops {
            let (got, want) = m.apply(op, &mut model).await;
            assert_eq!(got, want, "{op:?}");
            revs.push(model.current());
        }
        // put a, put b (leased), txn of two puts, delete of nothing, grant, revoke
        // with one key, revoke of an unknown lease, compaction at 3.
        assert_eq!(revs, vec![1, 2, 3, 4, 5, 5, 5, 6, 6, 6]);
        compare_history(&|r| m.read(r), &model).expect("history matches");
    });
}

fn fixed_ops() -> Vec<MOp> {
    vec![
        MOp::LeaseGrant(LEASES[0]),
        MOp::Put {
            key: 0,
            value: 0,
            lease: 0,
            prev_kv: false,
        },
        MOp::Put {
            key: 3,
            value: 1,
            lease: LEASES[0],
            prev_kv: true,
        },
        MOp::Txn {
            compares: vec![Cmp {
                span: Span::Key(0),
                target: CmpTarget::Version(1),
                result: compare::CompareResult::Equal as i32,
            }],
            success: vec![
                TxnOp::Put {
                    key: 0,
                    value: 2,
                    lease: 0,
                    prev_kv: true,
                },
                TxnOp::Put {
                    key: 5,
                    value: 3,
                    lease: 0,
                    prev_kv: false,
                },
                TxnOp::Range(Span::All),
            ],
            failure: vec![],
        },
        MOp::Put {
            key: 1,
            value: 1,
            lease: 0,
            prev_kv: false,
        },
        MOp::Delete {
            span: Span::Key(2),
            prev_kv: true,
        },
        MOp::LeaseGrant(LEASES[1]),
        MOp::LeaseRevoke(LEASES[0]),
        MOp::LeaseRevoke(LEASES[2]),
        MOp::Compact {
            pick: 2,
            near_head: false,
        },
    ]
}

/// The comparison must notice a store that disagrees with the model.
#[test]
fn model_comparison_catches_planted_bugs() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut m = Member::start().await;
        let mut model = Model::new();
        for op in &fixed_ops() {
            let (got, want) = m.apply(op, &mut model).await;
            assert_eq!(got, want, "{op:?}");
        }
        let read = |r: &RangeRequest| m.read(r);
        compare_history(&read, &model).expect("the true model matches");

        // A wrong value at one revision.
        let mut wrong = model.clone();
        let last = wrong.revs.len() - 1;
        if let Some(kv) = wrong.revs[last].values_mut().next() {
            kv.value = b"planted".to_vec();
        }
        assert!(compare_history(&read, &wrong).is_err(), "wrong value");

        // A wrong version at an older revision.
        let mut wrong = model.clone();
        let kv = wrong.revs[4].get_mut(b"a".as_slice()).expect("key a at 4");
        kv.version += 1;
        assert!(compare_history(&read, &wrong).is_err(), "wrong version");

        // A delete of nothing that bumps the revision.
        let mut wrong = model.clone();
        let cur = wrong.state().clone();
        wrong.revs.push(cur);
        assert!(compare_history(&read, &wrong).is_err(), "extra revision");

        // A lease revoke that leaves its key behind.
        let mut wrong = model.clone();
        let kept = wrong.revs[5]
            .get(b"b".as_slice())
            .cloned()
            .expect("key b at 5");
        let n = wrong.revs.len();
        wrong.revs[n - 1].insert(b"b".to_vec(), kept);
        assert!(compare_history(&read, &wrong).is_err(), "kept key");

        // A compaction point the store does not have.
        let mut wrong = model.clone();
        wrong.compact = 1;
        assert!(compare_history(&read, &wrong).is_err(), "compaction point");
        let mut wrong = model.clone();
        wrong.compact = 5;
        assert!(compare_history(&read, &wrong).is_err(), "compaction point");
    });
}

/// The revision survives a restart even when compaction removed every record of
/// the newest revisions (a delete's tombstone), later writes continue from it, and
/// keys attached to a lease before a restart are deleted when it is revoked.
#[test]
fn model_restart_keeps_revision_and_leases() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut m = Member::start().await;
        let mut model = Model::new();
        let put = |key| MOp::Put {
            key,
            value: 1,
            lease: 0,
            prev_kv: false,
        };
        let ops = vec![
            put(0),
            put(3),
            MOp::Delete {
                span: Span::Prefix(0),
                prev_kv: false,
            },
            MOp::Delete {
                span: Span::Key(3),
                prev_kv: false,
            },
            // Compacts at the current revision (5): no record is left.
            MOp::Compact {
                pick: 1,
                near_head: true,
            },
            // Later entries (even failing ones) make the compaction durable.
            MOp::LeaseRevoke(LEASES[0]),
            MOp::LeaseGrant(LEASES[0]),
            MOp::Restart,
            MOp::Restart,
            put(5),
            MOp::Restart,
            // Keys attached to a lease before a restart go with it when it is revoked.
            MOp::Put {
                key: 1,
                value: 2,
                lease: LEASES[0],
                prev_kv: false,
            },
            MOp::Restart,
            MOp::LeaseRevoke(LEASES[0]),
        ];
        for op in &ops {
            let (got, want) = m.apply(op, &mut model).await;
            assert_eq!(got, want, "{op:?}");
            compare_history(&|r| m.read(r), &model).expect("history matches");
        }
        assert_eq!(model.current(), 8);
    });
}
