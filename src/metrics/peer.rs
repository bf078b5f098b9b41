//! etcd's `etcd_network_*` peer families, one label set per peer (the peer's
//! member ID in hexadecimal, as etcd labels them). A peer's handle is made
//! once, when its connection starts; counting through it is an atomic add.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

use super::{Counter, Gauge, Histogram, RTT_BUCKETS, SNAP_DB_SAVE_BUCKETS, go_float, header};

pub struct PeerStats {
    pub sent_bytes: Counter,
    pub received_bytes: Counter,
    pub sent_failures: Counter,
    pub received_failures: Counter,
    pub active: Gauge,
    pub disconnected: Counter,
    rtt: Histogram,
    snapshot_send: Transfers,
    snapshot_receive: Transfers,
    /// When the last heartbeat went to the peer, in nanoseconds after `BASE`
    /// (0: none waiting for its answer).
    heartbeat_sent: AtomicU64,
}

impl PeerStats {
    fn new() -> Self {
        PeerStats {
            sent_bytes: Counter::new(),
            received_bytes: Counter::new(),
            sent_failures: Counter::new(),
            received_failures: Counter::new(),
            active: Gauge::new(),
            disconnected: Counter::new(),
            rtt: Histogram::new(&RTT_BUCKETS),
            snapshot_send: Transfers::new(),
            snapshot_receive: Transfers::new(),
            heartbeat_sent: AtomicU64::new(0),
        }
    }

    /// A heartbeat went out to the peer.
    pub fn heartbeat_sent(&self) {
        let now = base().elapsed().as_nanos() as u64;
        self.heartbeat_sent.store(now.max(1), Ordering::Relaxed);
    }

    /// The peer answered a heartbeat: one round trip.
    pub fn heartbeat_answered(&self) {
        let sent = self.heartbeat_sent.swap(0, Ordering::Relaxed);
        if sent > 0 {
            let now = base().elapsed().as_nanos() as u64;
            self.rtt
                .observe_value(now.saturating_sub(sent) as f64 / 1e9);
        }
    }

    /// A Raft snapshot starts going to the peer.
    pub fn snapshot_send_started(&self) -> Instant {
        self.snapshot_send.start()
    }

    /// The snapshot started at `start` went out (or failed to).
    pub fn snapshot_send_done(&self, start: Instant, ok: bool) {
        self.snapshot_send.done(start, ok);
    }

    /// A snapshot queued for the peer was dropped before it could be sent.
    pub fn snapshot_send_dropped(&self) {
        self.snapshot_send.failures.inc();
    }

    /// A Raft snapshot starts arriving from the peer.
    pub fn snapshot_receive_started(&self) -> Instant {
        self.snapshot_receive.start()
    }

    /// The snapshot started at `start` arrived whole (or did not).
    pub fn snapshot_receive_done(&self, start: Instant, ok: bool) {
        self.snapshot_receive.done(start, ok);
    }

    /// The connection to the peer came up.
    pub fn connected(&self) {
        self.active.set(1);
    }

    /// The connection to the peer went down.
    pub fn disconnected(&self) {
        if self.active.get() == 1 {
            self.active.set(0);
            self.disconnected.inc();
        }
    }
}

/// Snapshots going one way between this member and one peer: etcd's
/// `etcd_network_snapshot_{send,receive}_*` families.
struct Transfers {
    success: Counter,
    failures: Counter,
    inflight: Gauge,
    seconds: Histogram,
}

impl Transfers {
    fn new() -> Self {
        Transfers {
            success: Counter::new(),
            failures: Counter::new(),
            inflight: Gauge::new(),
            seconds: Histogram::new(&SNAP_DB_SAVE_BUCKETS),
        }
    }

    fn start(&self) -> Instant {
        self.inflight.add(1);
        Instant::now()
    }

    /// As etcd: the time is observed for transfers that succeeded.
    fn done(&self, start: Instant, ok: bool) {
        self.inflight.add(-1);
        if ok {
            self.success.inc();
            self.seconds.observe_value(start.elapsed().as_secs_f64());
        } else {
            self.failures.inc();
        }
    }

    /// Touched at all (etcd's vectors show a label set from its first use).
    fn used(&self) -> bool {
        self.success.get() + self.failures.get() > 0 || self.inflight.get() != 0
    }
}

fn base() -> Instant {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

static LOCAL: AtomicU64 = AtomicU64::new(0);
static PEERS: Mutex<BTreeMap<u64, Arc<PeerStats>>> = Mutex::new(BTreeMap::new());

pub fn set_local(id: u64) {
    LOCAL.store(id, Ordering::Relaxed);
}

/// The handle of peer `id`, made on first use.
pub fn of(id: u64) -> Arc<PeerStats> {
    PEERS
        .lock()
        .entry(id)
        .or_insert_with(|| Arc::new(PeerStats::new()))
        .clone()
}

pub(super) fn render(o: &mut String) {
    let peers: Vec<(u64, Arc<PeerStats>)> =
        PEERS.lock().iter().map(|(k, v)| (*k, v.clone())).collect();
    if peers.is_empty() {
        return;
    }
    let local = format!("{:x}", LOCAL.load(Ordering::Relaxed));
    header(
        o,
        "etcd_network_active_peers",
        "The current number of active peer connections.",
        "gauge",
    );
    for (id, p) in &peers {
        let _ = writeln!(
            o,
            "etcd_network_active_peers{{Local=\"{local}\",Remote=\"{id:x}\"}} {}",
            p.active.get()
        );
    }
    let disconnected: Vec<_> = peers
        .iter()
        .filter(|(_, p)| p.disconnected.get() > 0)
        .collect();
    if !disconnected.is_empty() {
        header(
            o,
            "etcd_network_disconnected_peers_total",
            "The total number of disconnected peers.",
            "counter",
        );
        for (id, p) in disconnected {
            let _ = writeln!(
                o,
                "etcd_network_disconnected_peers_total{{Local=\"{local}\",Remote=\"{id:x}\"}} {}",
                p.disconnected.get()
            );
        }
    }
    type Get = fn(&PeerStats) -> u64;
    let families: [(&str, &str, &str, Get); 4] = [
        (
            "etcd_network_peer_received_bytes_total",
            "The total number of bytes received from peers.",
            "From",
            |p| p.received_bytes.get(),
        ),
        (
            "etcd_network_peer_received_failures_total",
            "The total number of receive failures from peers.",
            "From",
            |p| p.received_failures.get(),
        ),
        (
            "etcd_network_peer_sent_bytes_total",
            "The total number of bytes sent to peers.",
            "To",
            |p| p.sent_bytes.get(),
        ),
        (
            "etcd_network_peer_sent_failures_total",
            "The total number of send failures from peers.",
            "To",
            |p| p.sent_failures.get(),
        ),
    ];
    for (name, help, label, get) in families {
        // As etcd's vectors: a label set appears once it has been counted.
        let rows: Vec<_> = peers.iter().filter(|(_, p)| get(p) > 0).collect();
        if rows.is_empty() {
            continue;
        }
        header(o, name, help, "counter");
        for (id, p) in rows {
            let _ = writeln!(
                o,
                "{name}{{{label}=\"{id:x}\"}} {}",
                go_float(get(p) as f64)
            );
        }
    }
    let rows: Vec<_> = peers.iter().filter(|(_, p)| p.rtt.count() > 0).collect();
    if !rows.is_empty() {
        let name = "etcd_network_peer_round_trip_time_seconds";
        header(
            o,
            name,
            "Round-Trip-Time histogram between peers",
            "histogram",
        );
        for (id, p) in rows {
            p.rtt.samples(o, name, &format!("To=\"{id:x}\""));
        }
    }
    render_transfers(o, &peers, "receive", "From", |p| &p.snapshot_receive);
    render_transfers(o, &peers, "send", "To", |p| &p.snapshot_send);
}

/// etcd's snapshot families for one direction, in etcd's name order.
fn render_transfers(
    o: &mut String,
    peers: &[(u64, Arc<PeerStats>)],
    way: &str,
    label: &str,
    of: fn(&PeerStats) -> &Transfers,
) {
    let used: Vec<_> = peers.iter().filter(|(_, p)| of(p).used()).collect();
    if used.is_empty() {
        return;
    }
    let what = if way == "send" { "sends" } else { "receives" };
    type Row = (String, String, fn(&Transfers) -> f64, &'static str);
    let counters: [Row; 3] = [
        (
            format!("etcd_network_snapshot_{way}_failures"),
            format!("Total number of snapshot {way} failures"),
            |t| t.failures.get() as f64,
            "counter",
        ),
        (
            format!("etcd_network_snapshot_{way}_inflights_total"),
            format!("Total number of inflight snapshot {what}"),
            |t| t.inflight.get() as f64,
            "gauge",
        ),
        (
            format!("etcd_network_snapshot_{way}_success"),
            format!("Total number of successful snapshot {what}"),
            |t| t.success.get() as f64,
            "counter",
        ),
    ];
    for (name, help, get, kind) in &counters {
        // A counter's label set appears once counted; the gauge once touched.
        let rows: Vec<_> = used
            .iter()
            .filter(|(_, p)| *kind == "gauge" || get(of(p)) > 0.0)
            .collect();
        if rows.is_empty() {
            continue;
        }
        header(o, name, help, kind);
        for (id, p) in rows {
            let _ = writeln!(o, "{name}{{{label}=\"{id:x}\"}} {}", go_float(get(of(p))));
        }
    }
    let rows: Vec<_> = used
        .iter()
        .filter(|(_, p)| of(p).seconds.count() > 0)
        .collect();
    if !rows.is_empty() {
        let name = format!("etcd_network_snapshot_{way}_total_duration_seconds");
        header(
            o,
            &name,
            &format!("Total latency distributions of v3 snapshot {what}"),
            "histogram",
        );
        for (id, p) in rows {
            of(p)
                .seconds
                .samples(o, &name, &format!("{label}=\"{id:x}\""));
        }
    }
}
