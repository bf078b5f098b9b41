//! Prometheus metrics under etcd's names, help texts, types, labels and
//! buckets, so existing dashboards and alerts work unchanged.
//!
//! Everything is a process-wide static made of atomics: counting on a request
//! path is an atomic add on a handle resolved once (no lock, no allocation).
//! [`render`] writes the text exposition format as Go's client library does
//! (values formatted as Go's `strconv.FormatFloat(v, 'g', -1, 64)`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub mod apply;
pub mod grpc;
pub mod peer;
mod process;

pub use process::init_process;

pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

pub struct Gauge(AtomicI64);

impl Gauge {
    pub const fn new() -> Self {
        Gauge(AtomicI64::new(0))
    }
    pub const fn starting_at(v: i64) -> Self {
        Gauge(AtomicI64::new(v))
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn add(&self, v: i64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Gauge {
    fn default() -> Self {
        Self::new()
    }
}

/// The most buckets any of etcd's histograms has (lease TTLs: 24).
const MAX_BUCKETS: usize = 24;

/// `prometheus.ExponentialBuckets(start, 2, N)`.
pub const fn exp2<const N: usize>(start: f64) -> [f64; N] {
    let mut b = [0.0; N];
    let mut v = start;
    let mut i = 0;
    while i < N {
        b[i] = v;
        v *= 2.0;
        i += 1;
    }
    b
}

/// `prometheus.DefBuckets`, go-grpc-prometheus's handling-time buckets.
pub static DEF_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
pub static MS1_14: [f64; 14] = exp2::<14>(0.001);
static DEFRAG_BUCKETS: [f64; 13] = exp2::<13>(0.1);
static BACKEND_SNAPSHOT_BUCKETS: [f64; 17] = exp2::<17>(0.01);
static HASH_BUCKETS: [f64; 15] = exp2::<15>(0.01);
static INDEX_PAUSE_BUCKETS: [f64; 14] = exp2::<14>(0.5);
static DB_PAUSE_BUCKETS: [f64; 13] = exp2::<13>(1.0);
static DB_TOTAL_BUCKETS: [f64; 14] = exp2::<14>(100.0);
static LEASE_TTL_BUCKETS: [f64; 24] = exp2::<24>(1.0);
/// etcd's buckets for a snapshot's save, send and receive: 0.1 s to 51.2 s.
pub static SNAP_DB_SAVE_BUCKETS: [f64; 10] = exp2::<10>(0.1);
pub static RTT_BUCKETS: [f64; 16] = exp2::<16>(0.0001);

/// A histogram with fixed bucket bounds: an atomic count per bucket, the
/// total count and the sum (an `f64` updated with compare-and-swap).
pub struct Histogram {
    bounds: &'static [f64],
    counts: [AtomicU64; MAX_BUCKETS],
    total: AtomicU64,
    sum_bits: AtomicU64,
}

impl Histogram {
    pub const fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: [const { AtomicU64::new(0) }; MAX_BUCKETS],
            total: AtomicU64::new(0),
            sum_bits: AtomicU64::new(0),
        }
    }

    pub fn observe_value(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some((f64::from_bits(b) + v).to_bits())
            });
    }

    pub fn observe(&self, d: Duration) {
        self.observe_value(d.as_secs_f64());
    }

    /// Observes in milliseconds (etcd's compaction histograms).
    pub fn observe_ms(&self, d: Duration) {
        self.observe_value(d.as_secs_f64() * 1000.0);
    }

    pub fn count(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub(crate) fn samples(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{}\"}} {cum}",
                go_float(*b)
            );
        }
        let total = self.total.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let sum = go_float(f64::from_bits(self.sum_bits.load(Ordering::Relaxed)));
        if labels.is_empty() {
            let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {total}");
        } else {
            let _ = writeln!(
                out,
                "{name}_sum{{{labels}}} {sum}\n{name}_count{{{labels}}} {total}"
            );
        }
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        self.samples(out, name, "");
    }
}

/// A float as Go's `strconv.FormatFloat(v, 'g', -1, 64)` writes it, which is
/// how Prometheus' Go client writes sample values and bucket bounds.
pub fn go_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if v == 0.0 {
        return "0".into();
    }
    // Shortest round-trip digits, as `{:e}` gives them: "1.5e-7".
    let e = format!("{v:e}");
    let Some((mant, exp)) = e.split_once('e') else {
        return e;
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mant}e{sign}{:02}", exp.abs());
    }
    format!("{v}")
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, v: i64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {}", go_float(v as f64));
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {}", go_float(v as f64));
}

// etcdserver
pub static HAS_LEADER: Gauge = Gauge::new();
pub static IS_LEADER: Gauge = Gauge::new();
pub static IS_LEARNER: Gauge = Gauge::new();
pub static LEADER_CHANGES: Counter = Counter::new();
pub static HEARTBEAT_SEND_FAILURES: Counter = Counter::new();
pub static SLOW_APPLY: Counter = Counter::new();
pub static SNAPSHOT_APPLY_IN_PROGRESS: Gauge = Gauge::new();
pub static PROPOSALS_COMMITTED: Gauge = Gauge::new();
pub static PROPOSALS_APPLIED: Gauge = Gauge::new();
pub static PROPOSALS_PENDING: Gauge = Gauge::new();
pub static PROPOSALS_FAILED: Counter = Counter::new();
pub static SLOW_READ_INDEXES: Counter = Counter::new();
pub static READ_INDEXES_FAILED: Counter = Counter::new();
pub static LEASE_EXPIRED: Counter = Counter::new();
pub static QUOTA_BACKEND_BYTES: Gauge = Gauge::new();
pub static LEARNER_PROMOTE_SUCCESSES: Counter = Counter::new();
/// `etcd_network_server_stream_failures_total{Type="receive",API=...}`: a
/// client's Watch or LeaseKeepAlive stream that failed with an error other
/// than the client going away (etcd counts sends too; ours go through a
/// queue, whose only failure is the client gone, which etcd does not count).
pub static WATCH_STREAM_RECEIVE_FAILURES: Counter = Counter::new();
pub static KEEPALIVE_STREAM_RECEIVE_FAILURES: Counter = Counter::new();
/// `etcd_server_learner_promote_failures{Reason=...}`, etcd's one reason.
pub static LEARNER_PROMOTE_NOT_READY: Counter = Counter::new();
pub static SERVER_ID: AtomicU64 = AtomicU64::new(0);
pub static HEALTH_SUCCESS: Counter = Counter::new();
pub static HEALTH_FAILURES: Counter = Counter::new();
// healthchecks (etcd 3.5.x /livez and /readyz)
/// `etcd_server_healthcheck{type,name}` and
/// `etcd_server_healthchecks_total{type,name,status}`: (type, name) pairs.
pub const HEALTH_CHECKS: [(&str, &str); 5] = [
    ("livez", "serializable_read"),
    ("readyz", "data_corruption"),
    ("readyz", "linearizable_read"),
    ("readyz", "non_learner"),
    ("readyz", "serializable_read"),
];
/// Per check: [last result (1 ok, 0 failed, -1 never run), successes, errors].
pub static HEALTH_CHECK_STATE: [[AtomicI64; 3]; HEALTH_CHECKS.len()] = [const {
    [
        const { AtomicI64::new(-1) },
        const { AtomicI64::new(0) },
        const { AtomicI64::new(0) },
    ]
}; HEALTH_CHECKS.len()];

/// Records one run of a /livez or /readyz check.
pub fn health_check(kind: &str, name: &str, ok: bool) {
    if let Some(i) = HEALTH_CHECKS
        .iter()
        .position(|(k, n)| *k == kind && *n == name)
    {
        let s = &HEALTH_CHECK_STATE[i];
        s[0].store(ok as i64, Ordering::Relaxed);
        s[if ok { 1 } else { 2 }].fetch_add(1, Ordering::Relaxed);
    }
}

// disk
pub static WAL_FSYNC: Histogram = Histogram::new(&MS1_14);
pub static WAL_WRITE: Histogram = Histogram::new(&MS1_14);
pub static WAL_WRITE_BYTES: Gauge = Gauge::new();
pub static BACKEND_COMMIT: Histogram = Histogram::new(&MS1_14);
pub static BACKEND_DEFRAG: Histogram = Histogram::new(&DEFRAG_BUCKETS);
pub static BACKEND_SNAPSHOT: Histogram = Histogram::new(&BACKEND_SNAPSHOT_BUCKETS);
pub static DEFRAG_INFLIGHT: Gauge = Gauge::new();
pub static SNAP_DB_SAVE: Histogram = Histogram::new(&SNAP_DB_SAVE_BUCKETS);
pub static SNAP_DB_FSYNC: Histogram = Histogram::new(&MS1_14);

// mvcc
pub static DB_SIZE: Gauge = Gauge::new();
pub static DB_SIZE_IN_USE: Gauge = Gauge::new();
pub static DB_OPEN_READ_TXNS: Gauge = Gauge::new();
pub static KEYS_TOTAL: Gauge = Gauge::new();
pub static MVCC_PUT: Counter = Counter::new();
pub static MVCC_DELETE: Counter = Counter::new();
pub static MVCC_RANGE: Counter = Counter::new();
pub static MVCC_TXN: Counter = Counter::new();
pub static MVCC_TOTAL_PUT_SIZE: Gauge = Gauge::new();
pub static MVCC_COMPACTED_KEYS: Counter = Counter::new();
pub static MVCC_CURRENT_REV: Gauge = Gauge::new();
pub static MVCC_COMPACT_REV: Gauge = Gauge::starting_at(-1);
pub static MVCC_DB_COMPACTION_LAST: Gauge = Gauge::new();
pub static MVCC_INDEX_COMPACTION_PAUSE: Histogram = Histogram::new(&INDEX_PAUSE_BUCKETS);
pub static MVCC_DB_COMPACTION_PAUSE: Histogram = Histogram::new(&DB_PAUSE_BUCKETS);
pub static MVCC_DB_COMPACTION_TOTAL: Histogram = Histogram::new(&DB_TOTAL_BUCKETS);
pub static MVCC_HASH: Histogram = Histogram::new(&HASH_BUCKETS);
pub static MVCC_HASH_REV: Histogram = Histogram::new(&HASH_BUCKETS);
pub static WATCHERS: Gauge = Gauge::new();
pub static SLOW_WATCHERS: Gauge = Gauge::new();
pub static WATCH_STREAMS: Gauge = Gauge::new();
pub static EVENTS_TOTAL: Counter = Counter::new();
pub static PENDING_EVENTS: Gauge = Gauge::new();
pub static AUTH_REVISION: Gauge = Gauge::new();

/// One more in a gauge while it lives (an open read transaction, a watcher
/// catching up).
pub struct Held(&'static Gauge);

impl Held {
    pub fn new(g: &'static Gauge) -> Self {
        g.add(1);
        Held(g)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.add(-1);
    }
}

// lease
pub static LEASES_GRANTED: Counter = Counter::new();
pub static LEASES_REVOKED: Counter = Counter::new();
pub static LEASES_RENEWED: Counter = Counter::new();
pub static LEASE_TTL: Histogram = Histogram::new(&LEASE_TTL_BUCKETS);

/// `--metrics extensive`: serve `grpc_server_handling_seconds`.
static EXTENSIVE: AtomicBool = AtomicBool::new(false);

pub fn set_extensive(on: bool) {
    EXTENSIVE.store(on, Ordering::Relaxed);
}

pub fn extensive() -> bool {
    EXTENSIVE.load(Ordering::Relaxed)
}

/// The start of a measured operation when histograms of its kind are served.
pub fn clock() -> Option<Instant> {
    extensive().then(Instant::now)
}

/// Label values are written as Go's client escapes them.
fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `etcd_server_client_requests_total{type,client_api_version}`: the versions
/// clients send in the `client-api-version` metadata. A fixed set of slots
/// keeps counting lock-free; any other value is counted under its first
/// [`MAX_CLIENT_VERSION`] bytes in a shared slot map, filled under a lock only
/// the first time a version is seen.
pub mod client_requests {
    use super::*;

    const KNOWN: [&str; 9] = [
        "3.0", "3.1", "3.2", "3.3", "3.4", "3.5", "3.6", "3.7", "unknown",
    ];
    /// [unary, stream] per known version.
    static COUNTS: [[AtomicU64; 2]; KNOWN.len()] =
        [const { [const { AtomicU64::new(0) }, const { AtomicU64::new(0) }] }; KNOWN.len()];
    static OTHER: OnceLock<parking_lot::Mutex<HashMap<(String, bool), u64>>> = OnceLock::new();

    /// Counts one call (`stream` for streaming methods) from a client that sent
    /// `version` (None: no metadata, etcd's "unknown").
    pub fn count(version: Option<&str>, stream: bool) {
        let v = version.unwrap_or("unknown");
        match KNOWN.iter().position(|k| *k == v) {
            Some(i) => {
                COUNTS[i][stream as usize].fetch_add(1, Ordering::Relaxed);
            }
            None => {
                let v: String = v.chars().take(32).collect();
                *OTHER
                    .get_or_init(Default::default)
                    .lock()
                    .entry((v, stream))
                    .or_default() += 1;
            }
        }
    }

    pub(super) fn render(out: &mut String) {
        let name = "etcd_server_client_requests_total";
        let mut rows = String::new();
        for (i, v) in KNOWN.iter().enumerate() {
            for (s, kind) in ["unary", "stream"].iter().enumerate() {
                let n = COUNTS[i][s].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        rows,
                        "{name}{{client_api_version=\"{v}\",type=\"{kind}\"}} {}",
                        go_float(n as f64)
                    );
                }
            }
        }
        if let Some(o) = OTHER.get() {
            for ((v, s), n) in o.lock().iter() {
                let kind = if *s { "stream" } else { "unary" };
                let _ = writeln!(
                    rows,
                    "{name}{{client_api_version=\"{}\",type=\"{kind}\"}} {}",
                    escape(v),
                    go_float(*n as f64)
                );
            }
        }
        if !rows.is_empty() {
            header(
                out,
                name,
                "The total number of client requests per client version.",
                "counter",
            );
            out.push_str(&rows);
        }
    }
}

/// The whole exposition.
pub fn render(server_version: &str, cluster_version: &str) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let o = &mut out;
    header(
        o,
        "etcd_cluster_version",
        "Which version is running. 1 for 'cluster_version' label with current cluster version",
        "gauge",
    );
    let _ = writeln!(
        o,
        "etcd_cluster_version{{cluster_version=\"{cluster_version}\"}} 1"
    );
    gauge(
        o,
        "etcd_debugging_auth_revision",
        "The current revision of auth store.",
        AUTH_REVISION.get(),
    );
    counter(
        o,
        "etcd_debugging_lease_granted_total",
        "The total number of granted leases.",
        LEASES_GRANTED.get(),
    );
    counter(
        o,
        "etcd_debugging_lease_renewed_total",
        "The number of renewed leases seen by the leader.",
        LEASES_RENEWED.get(),
    );
    counter(
        o,
        "etcd_debugging_lease_revoked_total",
        "The total number of revoked leases.",
        LEASES_REVOKED.get(),
    );
    LEASE_TTL.render(
        o,
        "etcd_debugging_lease_ttl_total",
        "Bucketed histogram of lease TTLs.",
    );
    gauge(
        o,
        "etcd_debugging_mvcc_compact_revision",
        "The revision of the last compaction in store.",
        MVCC_COMPACT_REV.get(),
    );
    gauge(
        o,
        "etcd_debugging_mvcc_current_revision",
        "The current revision of store.",
        MVCC_CURRENT_REV.get(),
    );
    gauge(
        o,
        "etcd_debugging_mvcc_db_compaction_last",
        "The unix time of the last db compaction. Resets to 0 on start.",
        MVCC_DB_COMPACTION_LAST.get(),
    );
    counter(
        o,
        "etcd_debugging_mvcc_db_compaction_keys_total",
        "Total number of db keys compacted.",
        MVCC_COMPACTED_KEYS.get(),
    );
    MVCC_DB_COMPACTION_PAUSE.render(
        o,
        "etcd_debugging_mvcc_db_compaction_pause_duration_milliseconds",
        "Bucketed histogram of db compaction pause duration.",
    );
    MVCC_DB_COMPACTION_TOTAL.render(
        o,
        "etcd_debugging_mvcc_db_compaction_total_duration_milliseconds",
        "Bucketed histogram of db compaction total duration.",
    );
    gauge(
        o,
        "etcd_debugging_mvcc_db_total_size_in_bytes",
        "Total size of the underlying database physically allocated in bytes.",
        DB_SIZE.get(),
    );
    counter(
        o,
        "etcd_debugging_mvcc_delete_total",
        "Total number of deletes seen by this member.",
        MVCC_DELETE.get(),
    );
    counter(
        o,
        "etcd_debugging_mvcc_events_total",
        "Total number of events sent by this member.",
        EVENTS_TOTAL.get(),
    );
    MVCC_INDEX_COMPACTION_PAUSE.render(
        o,
        "etcd_debugging_mvcc_index_compaction_pause_duration_milliseconds",
        "Bucketed histogram of index compaction pause duration.",
    );
    gauge(
        o,
        "etcd_debugging_mvcc_keys_total",
        "Total number of keys.",
        KEYS_TOTAL.get(),
    );
    gauge(
        o,
        "etcd_debugging_mvcc_pending_events_total",
        "Total number of pending events to be sent.",
        PENDING_EVENTS.get(),
    );
    counter(
        o,
        "etcd_debugging_mvcc_put_total",
        "Total number of puts seen by this member.",
        MVCC_PUT.get(),
    );
    counter(
        o,
        "etcd_debugging_mvcc_range_total",
        "Total number of ranges seen by this member.",
        MVCC_RANGE.get(),
    );
    gauge(
        o,
        "etcd_debugging_mvcc_slow_watcher_total",
        "Total number of unsynced slow watchers.",
        SLOW_WATCHERS.get(),
    );
    gauge(
        o,
        "etcd_debugging_mvcc_total_put_size_in_bytes",
        "The total size of put kv pairs seen by this member.",
        MVCC_TOTAL_PUT_SIZE.get(),
    );
    counter(
        o,
        "etcd_debugging_mvcc_txn_total",
        "Total number of txns seen by this member.",
        MVCC_TXN.get(),
    );
    gauge(
        o,
        "etcd_debugging_mvcc_watch_stream_total",
        "Total number of watch streams.",
        WATCH_STREAMS.get(),
    );
    gauge(
        o,
        "etcd_debugging_mvcc_watcher_total",
        "Total number of watchers.",
        WATCHERS.get(),
    );
    counter(
        o,
        "etcd_debugging_server_lease_expired_total",
        "The total number of expired leases.",
        LEASE_EXPIRED.get(),
    );
    BACKEND_COMMIT.render(
        o,
        "etcd_disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend.",
    );
    BACKEND_DEFRAG.render(
        o,
        "etcd_disk_backend_defrag_duration_seconds",
        "The latency distribution of backend defragmentation.",
    );
    BACKEND_SNAPSHOT.render(
        o,
        "etcd_disk_backend_snapshot_duration_seconds",
        "The latency distribution of backend snapshots.",
    );
    gauge(
        o,
        "etcd_disk_defrag_inflight",
        "Whether or not defrag is active on the member. 1 means active, 0 means not.",
        DEFRAG_INFLIGHT.get(),
    );
    WAL_FSYNC.render(
        o,
        "etcd_disk_wal_fsync_duration_seconds",
        "The latency distributions of fsync called by WAL.",
    );
    gauge(
        o,
        "etcd_disk_wal_write_bytes_total",
        "Total number of bytes written in WAL.",
        WAL_WRITE_BYTES.get(),
    );
    WAL_WRITE.render(
        o,
        "etcd_disk_wal_write_duration_seconds",
        "The latency distributions of write called by WAL.",
    );
    gauge(
        o,
        "etcd_mvcc_db_open_read_transactions",
        "The number of currently open read transactions",
        DB_OPEN_READ_TXNS.get(),
    );
    gauge(
        o,
        "etcd_mvcc_db_total_size_in_bytes",
        "Total size of the underlying database physically allocated in bytes.",
        DB_SIZE.get(),
    );
    gauge(
        o,
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "Total size of the underlying database logically in use in bytes.",
        DB_SIZE_IN_USE.get(),
    );
    counter(
        o,
        "etcd_mvcc_delete_total",
        "Total number of deletes seen by this member.",
        MVCC_DELETE.get(),
    );
    MVCC_HASH.render(
        o,
        "etcd_mvcc_hash_duration_seconds",
        "The latency distribution of storage hash operation.",
    );
    MVCC_HASH_REV.render(
        o,
        "etcd_mvcc_hash_rev_duration_seconds",
        "The latency distribution of storage hash by revision operation.",
    );
    counter(
        o,
        "etcd_mvcc_put_total",
        "Total number of puts seen by this member.",
        MVCC_PUT.get(),
    );
    counter(
        o,
        "etcd_mvcc_range_total",
        "Total number of ranges seen by this member.",
        MVCC_RANGE.get(),
    );
    counter(
        o,
        "etcd_mvcc_txn_total",
        "Total number of txns seen by this member.",
        MVCC_TXN.get(),
    );
    counter(
        o,
        "etcd_network_client_grpc_received_bytes_total",
        "The total number of bytes received from grpc clients.",
        grpc::RECEIVED_BYTES.get(),
    );
    counter(
        o,
        "etcd_network_client_grpc_sent_bytes_total",
        "The total number of bytes sent to grpc clients.",
        grpc::SENT_BYTES.get(),
    );
    peer::render(o);
    let stream_failures = [
        ("lease-keepalive", &KEEPALIVE_STREAM_RECEIVE_FAILURES),
        ("watch", &WATCH_STREAM_RECEIVE_FAILURES),
    ];
    if stream_failures.iter().any(|(_, c)| c.get() > 0) {
        let name = "etcd_network_server_stream_failures_total";
        header(
            o,
            name,
            "The total number of stream failures from the local server.",
            "counter",
        );
        for (api, c) in stream_failures {
            if c.get() > 0 {
                let _ = writeln!(
                    o,
                    "{name}{{API=\"{api}\",Type=\"receive\"}} {}",
                    go_float(c.get() as f64)
                );
            }
        }
    }
    // etcd_server_*
    apply::render(o);
    client_requests::render(o);
    gauge(
        o,
        "etcd_server_has_leader",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        HAS_LEADER.get(),
    );
    counter(
        o,
        "etcd_server_health_failures",
        "The total number of failed health checks",
        HEALTH_FAILURES.get(),
    );
    counter(
        o,
        "etcd_server_health_success",
        "The total number of successful health checks",
        HEALTH_SUCCESS.get(),
    );
    {
        let mut rows = String::new();
        for (i, (kind, check)) in HEALTH_CHECKS.iter().enumerate() {
            let v = HEALTH_CHECK_STATE[i][0].load(Ordering::Relaxed);
            if v >= 0 {
                let _ = writeln!(
                    rows,
                    "etcd_server_healthcheck{{name=\"{check}\",type=\"{kind}\"}} {v}"
                );
            }
        }
        if !rows.is_empty() {
            header(
                o,
                "etcd_server_healthcheck",
                "The result of each kind of healthcheck.",
                "gauge",
            );
            o.push_str(&rows);
        }
        let mut rows = String::new();
        for (i, (kind, check)) in HEALTH_CHECKS.iter().enumerate() {
            for (j, status) in [(2, "error"), (1, "success")] {
                let v = HEALTH_CHECK_STATE[i][j].load(Ordering::Relaxed);
                if v > 0 {
                    let _ = writeln!(
                        rows,
                        "etcd_server_healthchecks_total{{name=\"{check}\",status=\"{status}\",type=\"{kind}\"}} {v}"
                    );
                }
            }
        }
        if !rows.is_empty() {
            header(
                o,
                "etcd_server_healthchecks_total",
                "The total number of each kind of healthcheck.",
                "counter",
            );
            o.push_str(&rows);
        }
    }
    counter(
        o,
        "etcd_server_heartbeat_send_failures_total",
        "The total number of leader heartbeat send failures (likely overloaded from slow disk).",
        HEARTBEAT_SEND_FAILURES.get(),
    );
    header(
        o,
        "etcd_server_id",
        "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
        "gauge",
    );
    let _ = writeln!(
        o,
        "etcd_server_id{{server_id=\"{:x}\"}} 1",
        SERVER_ID.load(Ordering::Relaxed)
    );
    gauge(
        o,
        "etcd_server_is_leader",
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        IS_LEADER.get(),
    );
    gauge(
        o,
        "etcd_server_is_learner",
        "Whether or not this member is a learner. 1 if is, 0 otherwise.",
        IS_LEARNER.get(),
    );
    counter(
        o,
        "etcd_server_leader_changes_seen_total",
        "The number of leader changes seen.",
        LEADER_CHANGES.get(),
    );
    if LEARNER_PROMOTE_NOT_READY.get() > 0 {
        let name = "etcd_server_learner_promote_failures";
        header(
            o,
            name,
            "The total number of failed learner promotions (likely learner not ready) while this member is leader.",
            "counter",
        );
        let _ = writeln!(
            o,
            "{name}{{Reason=\"{}\"}} {}",
            escape(&crate::error::Error::LearnerNotReady.to_string()),
            go_float(LEARNER_PROMOTE_NOT_READY.get() as f64)
        );
    }
    counter(
        o,
        "etcd_server_learner_promote_successes",
        "The total number of successful learner promotions while this member is leader.",
        LEARNER_PROMOTE_SUCCESSES.get(),
    );
    gauge(
        o,
        "etcd_server_proposals_applied_total",
        "The total number of consensus proposals applied.",
        PROPOSALS_APPLIED.get(),
    );
    gauge(
        o,
        "etcd_server_proposals_committed_total",
        "The total number of consensus proposals committed.",
        PROPOSALS_COMMITTED.get(),
    );
    counter(
        o,
        "etcd_server_proposals_failed_total",
        "The total number of failed proposals seen.",
        PROPOSALS_FAILED.get(),
    );
    gauge(
        o,
        "etcd_server_proposals_pending",
        "The current number of pending proposals to commit.",
        PROPOSALS_PENDING.get().max(0),
    );
    gauge(
        o,
        "etcd_server_quota_backend_bytes",
        "Current backend storage quota size in bytes.",
        QUOTA_BACKEND_BYTES.get(),
    );
    counter(
        o,
        "etcd_server_read_indexes_failed_total",
        "The total number of failed read indexes seen.",
        READ_INDEXES_FAILED.get(),
    );
    counter(
        o,
        "etcd_server_slow_apply_total",
        "The total number of slow apply requests (likely overloaded from slow disk).",
        SLOW_APPLY.get(),
    );
    counter(
        o,
        "etcd_server_slow_read_indexes_total",
        "The total number of pending read indexes not in sync with leader's or timed out read index requests.",
        SLOW_READ_INDEXES.get(),
    );
    gauge(
        o,
        "etcd_server_snapshot_apply_in_progress_total",
        "1 if the server is applying the incoming snapshot. 0 if none.",
        SNAPSHOT_APPLY_IN_PROGRESS.get(),
    );
    header(
        o,
        "etcd_server_version",
        "Which version is running. 1 for 'server_version' label with current version.",
        "gauge",
    );
    let _ = writeln!(
        o,
        "etcd_server_version{{server_version=\"{server_version}\"}} 1"
    );
    SNAP_DB_FSYNC.render(
        o,
        "etcd_snap_db_fsync_duration_seconds",
        "The latency distributions of fsyncing .snap.db file",
    );
    SNAP_DB_SAVE.render(
        o,
        "etcd_snap_db_save_total_duration_seconds",
        "The total latency distributions of v3 snapshot save",
    );
    grpc::render(o);
    process::proc_stats(o);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_written_as_go_writes_them() {
        assert_eq!(go_float(2147483648.0), "2.147483648e+09");
        assert_eq!(go_float(8388608.0), "8.388608e+06");
        assert_eq!(go_float(524288.0), "524288");
        assert_eq!(go_float(0.0001), "0.0001");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_float(8.192), "8.192");
        assert_eq!(go_float(24576.0), "24576");
        assert_eq!(go_float(1e21), "1e+21");
        assert_eq!(go_float(0.0), "0");
        assert_eq!(go_float(u64::MAX as f64), "1.8446744073709552e+19");
    }

    #[test]
    fn buckets_are_etcds() {
        assert_eq!(MS1_14[13], 8.192);
        assert_eq!(LEASE_TTL_BUCKETS[23], 8388608.0);
        let h = Histogram::new(&MS1_14);
        h.observe(Duration::from_micros(1500));
        h.observe(Duration::from_secs(20));
        let mut s = String::new();
        h.render(&mut s, "x", "y");
        assert!(s.contains("x_bucket{le=\"0.001\"} 0\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"0.002\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"8.192\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 2\n"), "{s}");
        assert!(s.contains("x_count 2\n"), "{s}");
    }
}
