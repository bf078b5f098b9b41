//! go-grpc-prometheus's `grpc_server_*` families: one [`Rpc`] per method of
//! every service the member serves, each label set initialised to zero as
//! go-grpc-prometheus initialises them (every method, every code), and etcd's
//! `etcd_network_client_grpc_*_bytes_total` (message payloads, as etcd's codec
//! counts them).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::{Counter, DEF_BUCKETS, Histogram, go_float, header};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Unary,
    ServerStream,
    BidiStream,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Unary => "unary",
            Kind::ServerStream => "server_stream",
            Kind::BidiStream => "bidi_stream",
        }
    }
}

/// gRPC code names as go-grpc-prometheus writes them, by code number.
pub const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// One gRPC method and its counters.
pub struct Rpc {
    pub service: &'static str,
    pub method: &'static str,
    pub path: &'static str,
    pub kind: Kind,
    started: AtomicU64,
    received: AtomicU64,
    sent: AtomicU64,
    handled: [AtomicU64; 17],
    seconds: Histogram,
}

impl Rpc {
    const fn new(
        service: &'static str,
        method: &'static str,
        path: &'static str,
        kind: Kind,
    ) -> Self {
        Rpc {
            service,
            method,
            path,
            kind,
            started: AtomicU64::new(0),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            handled: [const { AtomicU64::new(0) }; 17],
            seconds: Histogram::new(&DEF_BUCKETS),
        }
    }

    /// A call starts; the instant is kept only with `--metrics extensive`.
    pub fn start(&self) -> Option<Instant> {
        self.started.fetch_add(1, Ordering::Relaxed);
        super::clock()
    }

    /// One request message of `len` bytes arrived.
    pub fn received(&self, len: usize) {
        self.received.fetch_add(1, Ordering::Relaxed);
        RECEIVED_BYTES.add(len as u64);
    }

    /// One response message went out (its bytes are counted by [`sent_bytes`]
    /// for unary calls, by the response body for streams).
    pub fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// The call ended with `code` (a gRPC code number).
    pub fn handled(&self, code: i32, start: Option<Instant>) {
        let i = usize::try_from(code).unwrap_or(2).min(16);
        self.handled[i].fetch_add(1, Ordering::Relaxed);
        if let Some(t) = start {
            self.seconds.observe(t.elapsed());
        }
    }

    pub fn started_count(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    pub fn handled_count(&self, code: usize) -> u64 {
        self.handled[code].load(Ordering::Relaxed)
    }

    fn labels(&self) -> String {
        format!(
            "grpc_method=\"{}\",grpc_service=\"{}\",grpc_type=\"{}\"",
            self.method,
            self.service,
            self.kind.label()
        )
    }
}

pub static RECEIVED_BYTES: Counter = Counter::new();
pub static SENT_BYTES: Counter = Counter::new();

/// Counts the payload of one unary response sent.
pub fn sent_bytes(len: usize) {
    SENT_BYTES.add(len as u64);
}

macro_rules! rpcs {
    ($( ($svc:literal, $m:literal, $k:ident) ),* $(,)?) => {
        /// Every method of every service the client port serves.
        pub static RPCS: [Rpc; [$($m),*].len()] = [
            $( Rpc::new($svc, $m, concat!("/", $svc, "/", $m), Kind::$k) ),*
        ];
    };
}

rpcs![
    ("etcdserverpb.KV", "Range", Unary),
    ("etcdserverpb.KV", "RangeStream", ServerStream),
    ("etcdserverpb.KV", "Put", Unary),
    ("etcdserverpb.KV", "DeleteRange", Unary),
    ("etcdserverpb.KV", "Txn", Unary),
    ("etcdserverpb.KV", "Compact", Unary),
    ("etcdserverpb.Watch", "Watch", BidiStream),
    ("etcdserverpb.Lease", "LeaseGrant", Unary),
    ("etcdserverpb.Lease", "LeaseRevoke", Unary),
    ("etcdserverpb.Lease", "LeaseKeepAlive", BidiStream),
    ("etcdserverpb.Lease", "LeaseTimeToLive", Unary),
    ("etcdserverpb.Lease", "LeaseLeases", Unary),
    ("etcdserverpb.Cluster", "MemberAdd", Unary),
    ("etcdserverpb.Cluster", "MemberRemove", Unary),
    ("etcdserverpb.Cluster", "MemberUpdate", Unary),
    ("etcdserverpb.Cluster", "MemberList", Unary),
    ("etcdserverpb.Cluster", "MemberPromote", Unary),
    ("etcdserverpb.Maintenance", "Alarm", Unary),
    ("etcdserverpb.Maintenance", "Status", Unary),
    ("etcdserverpb.Maintenance", "Defragment", Unary),
    ("etcdserverpb.Maintenance", "Hash", Unary),
    ("etcdserverpb.Maintenance", "HashKV", Unary),
    ("etcdserverpb.Maintenance", "Snapshot", ServerStream),
    ("etcdserverpb.Maintenance", "MoveLeader", Unary),
    ("etcdserverpb.Maintenance", "Downgrade", Unary),
    ("etcdserverpb.Auth", "AuthEnable", Unary),
    ("etcdserverpb.Auth", "AuthDisable", Unary),
    ("etcdserverpb.Auth", "AuthStatus", Unary),
    ("etcdserverpb.Auth", "Authenticate", Unary),
    ("etcdserverpb.Auth", "UserAdd", Unary),
    ("etcdserverpb.Auth", "UserGet", Unary),
    ("etcdserverpb.Auth", "UserList", Unary),
    ("etcdserverpb.Auth", "UserDelete", Unary),
    ("etcdserverpb.Auth", "UserChangePassword", Unary),
    ("etcdserverpb.Auth", "UserGrantRole", Unary),
    ("etcdserverpb.Auth", "UserRevokeRole", Unary),
    ("etcdserverpb.Auth", "RoleAdd", Unary),
    ("etcdserverpb.Auth", "RoleGet", Unary),
    ("etcdserverpb.Auth", "RoleList", Unary),
    ("etcdserverpb.Auth", "RoleDelete", Unary),
    ("etcdserverpb.Auth", "RoleGrantPermission", Unary),
    ("etcdserverpb.Auth", "RoleRevokePermission", Unary),
    ("grpc.health.v1.Health", "Check", Unary),
    ("grpc.health.v1.Health", "Watch", ServerStream),
    ("v3lockpb.Lock", "Lock", Unary),
    ("v3lockpb.Lock", "Unlock", Unary),
    ("v3electionpb.Election", "Campaign", Unary),
    ("v3electionpb.Election", "Proclaim", Unary),
    ("v3electionpb.Election", "Leader", Unary),
    ("v3electionpb.Election", "Observe", ServerStream),
    ("v3electionpb.Election", "Resign", Unary),
];

/// The method a request path names (`/etcdserverpb.KV/Put`), if served.
pub fn lookup(path: &str) -> Option<&'static Rpc> {
    static INDEX: OnceLock<HashMap<&'static str, usize>> = OnceLock::new();
    let index = INDEX.get_or_init(|| RPCS.iter().enumerate().map(|(i, r)| (r.path, i)).collect());
    index.get(path).map(|i| &RPCS[*i])
}

/// The method named by service and method (tests, and callers outside the layer).
pub fn find(service: &str, method: &str) -> Option<&'static Rpc> {
    RPCS.iter()
        .find(|r| r.service == service && r.method == method)
}

/// Rows sorted as Go's registry writes them (by label values in label-name order).
fn sorted() -> Vec<&'static Rpc> {
    let mut v: Vec<&Rpc> = RPCS.iter().collect();
    v.sort_by_key(|r| (r.method, r.service, r.kind.label()));
    v
}

pub(super) fn render(o: &mut String) {
    let rows = sorted();
    let name = "grpc_server_handled_total";
    header(
        o,
        name,
        "Total number of RPCs completed on the server, regardless of success or failure.",
        "counter",
    );
    let mut codes: Vec<(usize, &str)> = CODES.iter().copied().enumerate().collect();
    codes.sort_by_key(|(_, c)| *c);
    for (i, code) in &codes {
        for r in &rows {
            let _ = writeln!(
                o,
                "{name}{{grpc_code=\"{code}\",{}}} {}",
                r.labels(),
                go_float(r.handled[*i].load(Ordering::Relaxed) as f64)
            );
        }
    }
    if super::extensive() {
        let name = "grpc_server_handling_seconds";
        header(
            o,
            name,
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            "histogram",
        );
        for r in &rows {
            r.seconds.samples(o, name, &r.labels());
        }
    }
    for (name, help, get) in [
        (
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
            (|r: &Rpc| r.received.load(Ordering::Relaxed)) as fn(&Rpc) -> u64,
        ),
        (
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            |r: &Rpc| r.sent.load(Ordering::Relaxed),
        ),
        (
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            |r: &Rpc| r.started.load(Ordering::Relaxed),
        ),
    ] {
        header(o, name, help, "counter");
        for r in &rows {
            let _ = writeln!(o, "{name}{{{}}} {}", r.labels(), go_float(get(r) as f64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_is_found_by_its_path() {
        for r in RPCS.iter() {
            let found = lookup(r.path).map(|f| f.path);
            assert_eq!(found, Some(r.path));
        }
        assert!(lookup("/etcdserverpb.KV/Nope").is_none());
        assert_eq!(
            find("etcdserverpb.KV", "Put").map(|r| r.path),
            Some("/etcdserverpb.KV/Put")
        );
    }
}
