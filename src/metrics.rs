//! Prometheus metrics under etcd's names, so existing dashboards and alerts work.
//! Everything is a process-wide static; [`render`] writes the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parking_lot::Mutex;

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

/// etcd's disk histograms: 14 exponential buckets from 1 ms to 8.192 s.
const BUCKETS: usize = 14;

pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
    total: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub const fn new() -> Self {
        Histogram {
            counts: [const { AtomicU64::new(0) }; BUCKETS],
            total: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn bound(i: usize) -> f64 {
        0.001 * (1u64 << i) as f64
    }

    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        for i in 0..BUCKETS {
            if s <= Self::bound(i) {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for i in 0..BUCKETS {
            cum += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cum}", Self::bound(i));
        }
        let total = self.total.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {total}");
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

pub static HAS_LEADER: Gauge = Gauge::new();
pub static IS_LEADER: Gauge = Gauge::new();
pub static LEADER_CHANGES: Counter = Counter::new();
pub static PROPOSALS_COMMITTED: Gauge = Gauge::new();
pub static PROPOSALS_APPLIED: Gauge = Gauge::new();
pub static PROPOSALS_PENDING: Gauge = Gauge::new();
pub static PROPOSALS_FAILED: Counter = Counter::new();
pub static WAL_FSYNC: Histogram = Histogram::new();
pub static BACKEND_COMMIT: Histogram = Histogram::new();
pub static DB_SIZE: Gauge = Gauge::new();
pub static DB_SIZE_IN_USE: Gauge = Gauge::new();
pub static KEYS_TOTAL: Gauge = Gauge::new();
pub static MVCC_PUT: Counter = Counter::new();
pub static MVCC_DELETE: Counter = Counter::new();
pub static MVCC_COMPACTED_KEYS: Counter = Counter::new();
pub static MVCC_RANGE: Counter = Counter::new();
pub static MVCC_TXN: Counter = Counter::new();
pub static WATCHERS: Gauge = Gauge::new();
pub static WATCH_STREAMS: Gauge = Gauge::new();
pub static LEASES_GRANTED: Counter = Counter::new();
pub static LEASES_REVOKED: Counter = Counter::new();
pub static SLOW_APPLY: Counter = Counter::new();
pub static SERVER_ID: AtomicU64 = AtomicU64::new(0);

/// (grpc_type, grpc_service, grpc_method, grpc_code)
type HandledKey = (&'static str, &'static str, &'static str, &'static str);
/// (grpc_type, grpc_service, grpc_method)
type StartedKey = (&'static str, &'static str, &'static str);

static GRPC: Mutex<BTreeMap<HandledKey, u64>> = Mutex::new(BTreeMap::new());
static GRPC_STARTED: Mutex<BTreeMap<StartedKey, u64>> = Mutex::new(BTreeMap::new());

/// gRPC code names as go-grpc-prometheus prints them.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// Counts one started call.
pub fn grpc_started(kind: &'static str, service: &'static str, method: &'static str) {
    *GRPC_STARTED
        .lock()
        .entry((kind, service, method))
        .or_default() += 1;
}

/// Counts one finished call.
pub fn grpc_handled(
    kind: &'static str,
    service: &'static str,
    method: &'static str,
    code: tonic::Code,
) {
    *GRPC
        .lock()
        .entry((kind, service, method, code_name(code)))
        .or_default() += 1;
}

fn proc_stats(out: &mut String) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command name (which may contain spaces) start after ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as f64;
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime is field 14 and stime 15 of stat; `f` starts at field 3.
    let cpu = (get(11) + get(12)) / ticks;
    let vsize = get(20);
    let rss = get(21) * page;
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu}"
    );
    let _ = writeln!(
        out,
        "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}"
    );
    let _ = writeln!(
        out,
        "# TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes {vsize}"
    );
    let _ = writeln!(out, "# TYPE process_open_fds gauge\nprocess_open_fds {fds}");
}

fn gauge(out: &mut String, name: &str, help: &str, v: i64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

/// The whole exposition.
pub fn render(server_version: &str, cluster_version: &str) -> String {
    let mut out = String::with_capacity(8192);
    gauge(
        &mut out,
        "etcd_server_has_leader",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        HAS_LEADER.get(),
    );
    gauge(
        &mut out,
        "etcd_server_is_leader",
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        IS_LEADER.get(),
    );
    counter(
        &mut out,
        "etcd_server_leader_changes_seen_total",
        "The number of leader changes seen.",
        LEADER_CHANGES.get(),
    );
    gauge(
        &mut out,
        "etcd_server_proposals_committed_total",
        "The total number of consensus proposals committed.",
        PROPOSALS_COMMITTED.get(),
    );
    gauge(
        &mut out,
        "etcd_server_proposals_applied_total",
        "The total number of consensus proposals applied.",
        PROPOSALS_APPLIED.get(),
    );
    gauge(
        &mut out,
        "etcd_server_proposals_pending",
        "The current number of pending proposals to commit.",
        PROPOSALS_PENDING.get(),
    );
    counter(
        &mut out,
        "etcd_server_proposals_failed_total",
        "The total number of failed proposals seen.",
        PROPOSALS_FAILED.get(),
    );
    counter(
        &mut out,
        "etcd_server_slow_apply_total",
        "The total number of slow apply requests (likely overloaded from slow disk).",
        SLOW_APPLY.get(),
    );
    let _ = writeln!(
        out,
        "# HELP etcd_server_version Which version is running. 1 for 'server_version' label with current version.\n# TYPE etcd_server_version gauge\netcd_server_version{{server_version=\"{server_version}\"}} 1"
    );
    let _ = writeln!(
        out,
        "# HELP etcd_cluster_version Which version is running. 1 for 'cluster_version' label with current cluster version\n# TYPE etcd_cluster_version gauge\netcd_cluster_version{{cluster_version=\"{cluster_version}\"}} 1"
    );
    let _ = writeln!(
        out,
        "# HELP etcd_server_id Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.\n# TYPE etcd_server_id gauge\netcd_server_id{{server_id=\"{:x}\"}} 1",
        SERVER_ID.load(Ordering::Relaxed)
    );
    WAL_FSYNC.render(
        &mut out,
        "etcd_disk_wal_fsync_duration_seconds",
        "The latency distributions of fsync called by WAL.",
    );
    BACKEND_COMMIT.render(
        &mut out,
        "etcd_disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend.",
    );
    gauge(
        &mut out,
        "etcd_mvcc_db_total_size_in_bytes",
        "Total size of the underlying database physically allocated in bytes.",
        DB_SIZE.get(),
    );
    gauge(
        &mut out,
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "Total size of the underlying database logically in use in bytes.",
        DB_SIZE_IN_USE.get(),
    );
    gauge(
        &mut out,
        "etcd_debugging_mvcc_keys_total",
        "Total number of keys.",
        KEYS_TOTAL.get(),
    );
    counter(
        &mut out,
        "etcd_mvcc_put_total",
        "Total number of puts seen by this member.",
        MVCC_PUT.get(),
    );
    counter(
        &mut out,
        "etcd_mvcc_delete_total",
        "Total number of deletes seen by this member.",
        MVCC_DELETE.get(),
    );
    counter(
        &mut out,
        "etcd_debugging_mvcc_db_compaction_keys_total",
        "Total number of db keys compacted.",
        MVCC_COMPACTED_KEYS.get(),
    );
    counter(
        &mut out,
        "etcd_mvcc_range_total",
        "Total number of ranges seen by this member.",
        MVCC_RANGE.get(),
    );
    counter(
        &mut out,
        "etcd_mvcc_txn_total",
        "Total number of txns seen by this member.",
        MVCC_TXN.get(),
    );
    gauge(
        &mut out,
        "etcd_debugging_mvcc_watcher_total",
        "Total number of watchers.",
        WATCHERS.get(),
    );
    gauge(
        &mut out,
        "etcd_debugging_mvcc_watch_stream_total",
        "Total number of watch streams.",
        WATCH_STREAMS.get(),
    );
    counter(
        &mut out,
        "etcd_debugging_lease_granted_total",
        "The total number of granted leases.",
        LEASES_GRANTED.get(),
    );
    counter(
        &mut out,
        "etcd_debugging_lease_revoked_total",
        "The total number of revoked leases.",
        LEASES_REVOKED.get(),
    );
    let _ = writeln!(
        out,
        "# HELP grpc_server_started_total Total number of RPCs started on the server.\n# TYPE grpc_server_started_total counter"
    );
    for ((kind, svc, method), n) in GRPC_STARTED.lock().iter() {
        let _ = writeln!(
            out,
            "grpc_server_started_total{{grpc_method=\"{method}\",grpc_service=\"{svc}\",grpc_type=\"{kind}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP grpc_server_handled_total Total number of RPCs completed on the server, regardless of success or failure.\n# TYPE grpc_server_handled_total counter"
    );
    for ((kind, svc, method, code), n) in GRPC.lock().iter() {
        let _ = writeln!(
            out,
            "grpc_server_handled_total{{grpc_code=\"{code}\",grpc_method=\"{method}\",grpc_service=\"{svc}\",grpc_type=\"{kind}\"}} {n}"
        );
    }
    proc_stats(&mut out);
    out
}
