//! `etcd-bench`: a load generator for etcd v3 endpoints (ours or any other),
//! speaking gRPC through the crate's generated clients.
//!
//! Closed-loop workloads (`put`, `range`, `txn-put`, `mixed`, `lease`) run
//! `--clients` tasks spread over `--conns` HTTP/2 connections, each issuing one
//! request at a time, for `--duration` or until `--total` requests were sent
//! (or until interrupted: SIGINT ends a run early and it is reported as one
//! that ran its course).
//! `watch` runs open-loop: one writer puts at `--rate` while watchers count
//! events and measure the put-to-event latency from a timestamp in the value.
//! `wait` polls until a linearizable Range succeeds (restart timing).
//! With `--gateway`, `put` and `range` go through etcd's HTTP/JSON gateway
//! instead (`POST /v3/kv/put`, `/v3/kv/range` with JSON bodies over
//! HTTP/1.1, one keep-alive connection per client), as Patroni or etcd3gw
//! send them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use etcd_rs::pb::etcdserverpb::kv_client::KvClient;
use etcd_rs::pb::etcdserverpb::lease_client::LeaseClient;
use etcd_rs::pb::etcdserverpb::watch_client::WatchClient;
use etcd_rs::pb::etcdserverpb::{
    Compare, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest, compare,
    request_op, response_op, watch_request,
};

/// The allocator of the server binary: the load generator shares the host's
/// CPUs with the server it measures, so it takes as little of them as it can.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "etcd-bench",
    about = "Load generator for etcd v3 gRPC endpoints",
    version
)]
struct Cli {
    /// Comma-separated client URLs (http://host:port or host:port).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    endpoints: Vec<String>,
    /// Number of gRPC connections (HTTP/2 channels), assigned to endpoints round-robin.
    #[arg(long, global = true, default_value_t = 1)]
    conns: usize,
    /// Number of concurrent clients, spread over the connections.
    #[arg(long, global = true, default_value_t = 1)]
    clients: usize,
    /// How long to run (e.g. 10s, 500ms, 2m); ignored when --total is given.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop after this many requests (for `watch`: this many puts).
    #[arg(long, global = true)]
    total: Option<u64>,
    /// Cap on the total request rate of closed-loop workloads, per second (0 = none).
    #[arg(long, global = true, default_value_t = 0.0)]
    max_rate: f64,
    /// Per-request timeout; a request exceeding it counts as an error.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print one JSON object instead of the text report.
    #[arg(long, global = true)]
    json: bool,
    /// Send `put` and `range` through the HTTP/JSON gateway (plain http
    /// endpoints only; one HTTP/1.1 connection per client, --conns unused).
    #[arg(long, global = true)]
    gateway: bool,
    /// No progress line on stderr.
    #[arg(long, global = true)]
    quiet: bool,
    /// CA bundle to verify https endpoints with (as etcdctl's --cacert).
    #[arg(long, global = true)]
    cacert: Option<std::path::PathBuf>,
    /// Client certificate for https endpoints (as etcdctl's --cert).
    #[arg(
        long = "cert",
        id = "client_cert",
        global = true,
        requires = "client_key"
    )]
    cert: Option<std::path::PathBuf>,
    /// Client certificate's key (as etcdctl's --key).
    #[arg(
        long = "key",
        id = "client_key",
        global = true,
        requires = "client_cert"
    )]
    key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand, Debug)]
enum Workload {
    /// Put requests.
    Put(PutArgs),
    /// Range requests on one key, or on a prefix of 100 keys with --prefix.
    Range(RangeArgs),
    /// Optimistic update: Txn(mod_revision == last seen) then Put, else Get.
    TxnPut(TxnArgs),
    /// Reads and writes mixed by --read-ratio.
    Mixed(MixedArgs),
    /// Watchers on a prefix while a writer puts at --rate.
    Watch(WatchArgs),
    /// Lease churn: each operation is LeaseGrant, one keep-alive round trip, LeaseRevoke.
    Lease(LeaseArgs),
    /// Polls until a linearizable Range succeeds; reports how long it took.
    Wait(WaitArgs),
}

#[derive(Args, Debug, Clone)]
struct KeyArgs {
    /// Key size in bytes (zero-padded decimal index after --key-prefix).
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000)]
    key_space: u64,
    /// Walk the key space in order (shared by all clients) instead of at random.
    #[arg(long)]
    sequential_keys: bool,
    /// First index of --sequential-keys (to extend an earlier load).
    #[arg(long, default_value_t = 0)]
    key_start: u64,
    /// Prefix for every key.
    #[arg(long, default_value = "")]
    key_prefix: String,
}

#[derive(Args, Debug)]
struct PutArgs {
    #[command(flatten)]
    keys: KeyArgs,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    val_size: usize,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Consistency {
    /// Linearizable.
    L,
    /// Serializable.
    S,
}

#[derive(Args, Debug)]
struct RangeArgs {
    /// l (linearizable) or s (serializable).
    #[arg(long, value_enum, default_value = "l")]
    consistency: Consistency,
    /// Read a range of 100 keys instead of a single key.
    #[arg(long)]
    prefix: bool,
    /// Limit for --prefix reads (0 = all 100).
    #[arg(long, default_value_t = 0)]
    limit: i64,
    /// Value size of the preloaded keys.
    #[arg(long, default_value_t = 64)]
    val_size: usize,
    /// Do not write the 100 keys first.
    #[arg(long)]
    no_preload: bool,
}

#[derive(Args, Debug)]
struct TxnArgs {
    #[command(flatten)]
    keys: KeyArgs,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    val_size: usize,
}

#[derive(Args, Debug)]
struct MixedArgs {
    #[command(flatten)]
    keys: KeyArgs,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    val_size: usize,
    /// Fraction of operations that are reads (0.0 to 1.0).
    #[arg(long, default_value_t = 0.9)]
    read_ratio: f64,
    /// Read consistency: l (linearizable) or s (serializable).
    #[arg(long, value_enum, default_value = "l")]
    consistency: Consistency,
}

#[derive(Args, Debug)]
struct WatchArgs {
    /// Number of watchers.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Number of watch streams the watchers are spread over.
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// Puts per second by the writer.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Watched prefix.
    #[arg(long, default_value = "/bench-watch/")]
    prefix: String,
    /// Number of distinct keys the writer puts under the prefix.
    #[arg(long, default_value_t = 100)]
    key_space: u64,
    /// Value size in bytes (at least 16: it carries the put timestamp).
    #[arg(long, default_value_t = 64)]
    val_size: usize,
    /// How long to wait for outstanding events after the last put.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain: Duration,
}

#[derive(Args, Debug)]
struct LeaseArgs {
    /// TTL of the granted leases, in seconds.
    #[arg(long, default_value_t = 60)]
    ttl: i64,
}

#[derive(Args, Debug)]
struct WaitArgs {
    /// Give up after this long.
    #[arg(long = "wait-timeout", default_value = "120s", value_parser = parse_duration)]
    wait_timeout: Duration,
    /// Key to read.
    #[arg(long = "probe-key", default_value = "health")]
    key: String,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?} (examples: 10s, 500ms, 2m)"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * mul))
}

/// SplitMix64: small, fast, good enough to pick keys.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ t)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Produces keys `prefix + zero-padded index` from a key space.
struct KeyGen {
    prefix: Vec<u8>,
    width: usize,
    space: u64,
    sequential: Option<Arc<AtomicU64>>,
    start: u64,
    rng: Rng,
}

impl KeyGen {
    fn new(a: &KeyArgs, seq: &Arc<AtomicU64>, seed: u64) -> KeyGen {
        let space = a.key_space.max(1);
        let digits = (space - 1).to_string().len();
        let width = a.key_size.saturating_sub(a.key_prefix.len()).max(digits);
        KeyGen {
            prefix: a.key_prefix.as_bytes().to_vec(),
            width,
            space,
            sequential: a.sequential_keys.then(|| seq.clone()),
            start: a.key_start,
            rng: Rng::new(seed),
        }
    }
    fn index(&mut self) -> u64 {
        match &self.sequential {
            Some(c) => c.fetch_add(1, Ordering::Relaxed).wrapping_add(self.start) % self.space,
            None => self.rng.below(self.space),
        }
    }
    fn key(&self, idx: u64) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(format!("{idx:0w$}", w = self.width).as_bytes());
        k
    }
}

/// Counters shared by all clients of a run.
struct Shared {
    done: AtomicU64,
    issued: AtomicU64,
    slots: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
    deadline: Option<Instant>,
    total: Option<u64>,
    timeout: Duration,
    start: Instant,
    max_rate: f64,
}

impl Shared {
    /// Claims the right to send one more request.
    fn claim(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        if let Some(d) = self.deadline
            && Instant::now() >= d
        {
            return false;
        }
        if let Some(t) = self.total {
            return self.issued.fetch_add(1, Ordering::Relaxed) < t;
        }
        true
    }
    fn error(&self, what: &str) {
        let n = self.errors.fetch_add(1, Ordering::Relaxed);
        if n < 5 {
            eprintln!("etcd-bench: request failed: {what}");
        } else if n == 5 {
            eprintln!("etcd-bench: further errors are only counted");
        }
    }
}

/// What each closed-loop client does per operation.
enum Worker {
    Put {
        kv: KvClient<Channel>,
        keys: KeyGen,
        value: Vec<u8>,
    },
    Range {
        kv: KvClient<Channel>,
        req: RangeRequest,
    },
    Txn {
        kv: KvClient<Channel>,
        keys: KeyGen,
        value: Vec<u8>,
        /// Last mod_revision seen per key, shared by all clients like an
        /// API server's watch cache: conflicts come from real races only.
        last: Arc<Vec<AtomicI64>>,
        conflicts: u64,
    },
    Mixed {
        kv: KvClient<Channel>,
        keys: KeyGen,
        value: Vec<u8>,
        read_ratio: f64,
        serializable: bool,
        rng: Rng,
        reads: u64,
    },
    Lease {
        lease: LeaseClient<Channel>,
        ttl: i64,
        stream: Option<KeepAlive>,
    },
    /// A JSON request to the gateway: a put of a key from `keys` (its
    /// base64 value ready), or one fixed request.
    Gateway {
        http: Gw,
        path: &'static str,
        keys: Option<KeyGen>,
        value: String,
        body: String,
    },
}

/// One HTTP/1.1 keep-alive connection to a member's JSON gateway, made
/// again when the server closed it.
struct Gw {
    /// host:port
    addr: String,
    sender: Option<hyper::client::conn::http1::SendRequest<axum::body::Body>>,
}

impl Gw {
    fn new(endpoint: &str) -> Gw {
        let url = normalize(endpoint);
        let addr = url
            .split_once("://")
            .map(|(_, rest)| rest)
            .unwrap_or(&url)
            .trim_end_matches('/')
            .to_string();
        Gw { addr, sender: None }
    }

    async fn post(&mut self, path: &'static str, body: String) -> Result<(), String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let tcp = tokio::net::TcpStream::connect(&self.addr)
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", self.addr))?;
            tcp.set_nodelay(true)
                .map_err(|e| format!("TCP_NODELAY: {e}"))?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .map_err(|e| format!("HTTP/1.1 to {}: {e}", self.addr))?;
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        let Some(sender) = self.sender.as_mut() else {
            return Err("no connection".into());
        };
        sender.ready().await.map_err(|e| e.to_string())?;
        let req = http::Request::post(path)
            .header(http::header::HOST, &self.addr)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(body))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = axum::body::to_bytes(axum::body::Body::new(resp.into_body()), 64 << 20)
            .await
            .map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
        }
        Ok(())
    }
}

fn b64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

struct KeepAlive {
    tx: mpsc::Sender<LeaseKeepAliveRequest>,
    rx: tonic::Streaming<LeaseKeepAliveResponse>,
}

impl Worker {
    async fn step(&mut self) -> Result<(), String> {
        match self {
            Worker::Put { kv, keys, value } => {
                let i = keys.index();
                let req = PutRequest {
                    key: keys.key(i),
                    value: value.clone(),
                    ..Default::default()
                };
                kv.put(req).await.map_err(status_text)?;
                Ok(())
            }
            Worker::Range { kv, req } => {
                kv.range(req.clone()).await.map_err(status_text)?;
                Ok(())
            }
            Worker::Txn {
                kv,
                keys,
                value,
                last,
                conflicts,
            } => {
                let i = keys.index();
                let key = keys.key(i);
                let slot = &last[i as usize];
                let seen = slot.load(Ordering::Relaxed);
                let req = TxnRequest {
                    compare: vec![Compare {
                        result: compare::CompareResult::Equal as i32,
                        target: compare::CompareTarget::Mod as i32,
                        key: key.clone(),
                        range_end: vec![],
                        target_union: Some(compare::TargetUnion::ModRevision(seen)),
                    }],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: key.clone(),
                            value: value.clone(),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![RequestOp {
                        request: Some(request_op::Request::RequestRange(RangeRequest {
                            key,
                            ..Default::default()
                        })),
                    }],
                };
                let resp = kv.txn(req).await.map_err(status_text)?.into_inner();
                if resp.succeeded {
                    let rev = resp.header.map(|h| h.revision).unwrap_or(0);
                    slot.fetch_max(rev, Ordering::Relaxed);
                } else {
                    *conflicts += 1;
                    let rev = resp
                        .responses
                        .into_iter()
                        .find_map(|r| match r.response {
                            Some(response_op::Response::ResponseRange(rr)) => {
                                Some(rr.kvs.first().map(|kv| kv.mod_revision).unwrap_or(0))
                            }
                            _ => None,
                        })
                        .unwrap_or(0);
                    slot.fetch_max(rev, Ordering::Relaxed);
                }
                Ok(())
            }
            Worker::Mixed {
                kv,
                keys,
                value,
                read_ratio,
                serializable,
                rng,
                reads,
            } => {
                let i = keys.index();
                let key = keys.key(i);
                if rng.unit() < *read_ratio {
                    *reads += 1;
                    let req = RangeRequest {
                        key,
                        serializable: *serializable,
                        ..Default::default()
                    };
                    kv.range(req).await.map_err(status_text)?;
                } else {
                    let req = PutRequest {
                        key,
                        value: value.clone(),
                        ..Default::default()
                    };
                    kv.put(req).await.map_err(status_text)?;
                }
                Ok(())
            }
            Worker::Lease { lease, ttl, stream } => {
                let id = lease
                    .lease_grant(LeaseGrantRequest { ttl: *ttl, id: 0 })
                    .await
                    .map_err(status_text)?
                    .into_inner()
                    .id;
                let ka = LeaseKeepAliveRequest { id };
                match stream {
                    Some(s) => {
                        s.tx.send(ka)
                            .await
                            .map_err(|_| "keep-alive stream closed".to_string())?;
                    }
                    None => {
                        // The first request goes in before the call: a server
                        // may send response headers only with its first message.
                        let (tx, rx) = mpsc::channel(4);
                        tx.send(ka)
                            .await
                            .map_err(|_| "keep-alive stream closed".to_string())?;
                        let rx = lease
                            .lease_keep_alive(ReceiverStream::new(rx))
                            .await
                            .map_err(status_text)?
                            .into_inner();
                        *stream = Some(KeepAlive { tx, rx });
                    }
                }
                let s = stream
                    .as_mut()
                    .ok_or_else(|| "keep-alive stream missing".to_string())?;
                match s.rx.message().await {
                    Ok(Some(r)) if r.id == id && r.ttl > 0 => {}
                    Ok(Some(r)) => {
                        *stream = None;
                        return Err(format!("unexpected keep-alive response {r:?}"));
                    }
                    Ok(None) => {
                        *stream = None;
                        return Err("keep-alive stream ended".into());
                    }
                    Err(e) => {
                        *stream = None;
                        return Err(status_text(e));
                    }
                }
                lease
                    .lease_revoke(LeaseRevokeRequest { id })
                    .await
                    .map_err(status_text)?;
                Ok(())
            }
            Worker::Gateway {
                http,
                path,
                keys,
                value,
                body,
            } => {
                let body = match keys {
                    Some(keys) => {
                        let i = keys.index();
                        format!(r#"{{"key":"{}","value":"{value}"}}"#, b64(&keys.key(i)))
                    }
                    None => body.clone(),
                };
                http.post(path, body).await
            }
        }
    }

    fn extra(&self) -> Vec<(&'static str, u64)> {
        match self {
            Worker::Txn { conflicts, .. } => vec![("conflicts", *conflicts)],
            Worker::Mixed { reads, .. } => vec![("reads", *reads)],
            _ => vec![],
        }
    }
}

fn status_text(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

fn normalize(ep: &str) -> String {
    if ep.contains("://") {
        ep.to_string()
    } else {
        format!("http://{ep}")
    }
}

/// TLS settings for https endpoints, from --cacert, --cert and --key.
fn tls_config(cli: &Cli) -> Result<Option<ClientTlsConfig>, String> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    if cli.cacert.is_none() && cli.cert.is_none() {
        return Ok(None);
    }
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = &cli.cacert {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let (Some(cert), Some(key)) = (&cli.cert, &cli.key) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(tls))
}

async fn connect(
    url: &str,
    timeout: Duration,
    tls: Option<&ClientTlsConfig>,
) -> Result<Channel, String> {
    let mut ep = Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("bad endpoint {url:?}: {e}"))?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    if let Some(tls) = tls.filter(|_| url.starts_with("https://")) {
        ep = ep
            .tls_config(tls.clone())
            .map_err(|e| format!("TLS settings for {url}: {e}"))?;
    }
    ep.connect()
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))
}

async fn connect_all(cli: &Cli) -> Result<Vec<Channel>, String> {
    let eps: Vec<String> = cli
        .endpoints
        .iter()
        .filter(|e| !e.trim().is_empty())
        .map(|e| normalize(e.trim()))
        .collect();
    if eps.is_empty() {
        return Err("no endpoints".into());
    }
    let tls = tls_config(cli)?;
    let mut chans = Vec::new();
    for i in 0..cli.conns.max(1) {
        chans.push(connect(&eps[i % eps.len()], cli.timeout, tls.as_ref()).await?);
    }
    Ok(chans)
}

fn fail(msg: &str) -> ! {
    eprintln!("etcd-bench: {msg}");
    std::process::exit(2);
}

/// Latency summary of a sorted list of nanosecond samples.
fn percentiles(sorted: &[u64]) -> Value {
    let pick = |q: f64| -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1] as f64 / 1e6
    };
    let mean = if sorted.is_empty() {
        0.0
    } else {
        sorted.iter().map(|&v| v as f64).sum::<f64>() / sorted.len() as f64 / 1e6
    };
    json!({
        "mean_ms": round3(mean),
        "p50_ms": round3(pick(0.50)),
        "p90_ms": round3(pick(0.90)),
        "p99_ms": round3(pick(0.99)),
        "p999_ms": round3(pick(0.999)),
        "max_ms": round3(sorted.last().map(|&v| v as f64 / 1e6).unwrap_or(0.0)),
    })
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Prints a progress line on stderr once a second until `stop` is set.
fn spawn_progress(
    shared: Arc<Shared>,
    what: &'static str,
    quiet: bool,
) -> Option<tokio::task::JoinHandle<()>> {
    if quiet {
        return None;
    }
    Some(tokio::spawn(async move {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut prev = 0u64;
        loop {
            tick.tick().await;
            if shared.stop.load(Ordering::Relaxed) {
                break;
            }
            let n = shared.done.load(Ordering::Relaxed);
            eprintln!(
                "etcd-bench: {:>5.0}s {:>10} {what} {:>9} {what}/s (last 1s) {:>6} errors",
                start.elapsed().as_secs_f64(),
                n,
                n - prev,
                shared.errors.load(Ordering::Relaxed)
            );
            prev = n;
        }
    }))
}

/// The counters of a run starting at `start`. An interrupt (SIGINT, Ctrl-C)
/// ends the run early, reported like one that ran its course.
fn make_shared(cli: &Cli, start: Instant) -> Arc<Shared> {
    let shared = Arc::new(Shared {
        done: AtomicU64::new(0),
        issued: AtomicU64::new(0),
        slots: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        deadline: if cli.total.is_some() {
            None
        } else {
            Some(start + cli.duration)
        },
        total: cli.total,
        timeout: cli.timeout,
        start,
        max_rate: cli.max_rate,
    });
    let on_interrupt = Arc::downgrade(&shared);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok()
            && let Some(s) = on_interrupt.upgrade()
        {
            s.stop.store(true, Ordering::Relaxed);
        }
    });
    shared
}

/// Runs closed-loop workers until the deadline or total is reached.
async fn run_closed(cli: &Cli, name: &str, workers: Vec<Worker>) -> (Value, u64) {
    let start = Instant::now();
    let shared = make_shared(cli, start);
    let progress = spawn_progress(shared.clone(), "ops", cli.quiet);
    let mut handles = Vec::new();
    for mut w in workers {
        let sh = shared.clone();
        handles.push(tokio::spawn(async move {
            let mut lat: Vec<u64> = Vec::with_capacity(4096);
            while sh.claim() {
                if sh.max_rate > 0.0 {
                    let n = sh.slots.fetch_add(1, Ordering::Relaxed);
                    let at = sh.start + Duration::from_secs_f64(n as f64 / sh.max_rate);
                    tokio::time::sleep_until(at.into()).await;
                }
                let t0 = Instant::now();
                match tokio::time::timeout(sh.timeout, w.step()).await {
                    Ok(Ok(())) => {
                        lat.push(t0.elapsed().as_nanos() as u64);
                        sh.done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => sh.error(&e),
                    Err(_) => sh.error("timed out"),
                }
            }
            (lat, w.extra())
        }));
    }
    let mut all = Vec::new();
    let mut extra: HashMap<&'static str, u64> = HashMap::new();
    for h in handles {
        match h.await {
            Ok((lat, ex)) => {
                all.extend(lat);
                for (k, v) in ex {
                    *extra.entry(k).or_default() += v;
                }
            }
            Err(e) => shared.error(&format!("client task failed: {e}")),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    shared.stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        p.abort();
    }
    all.sort_unstable();
    let ops = all.len() as u64;
    let errors = shared.errors.load(Ordering::Relaxed);
    let mut report = json!({
        "workload": name,
        "endpoints": cli.endpoints,
        "conns": cli.conns.max(1),
        "clients": cli.clients.max(1),
        "ops": ops,
        "errors": errors,
        "elapsed_s": round3(elapsed),
        "ops_per_s": round3(if elapsed > 0.0 { ops as f64 / elapsed } else { 0.0 }),
        "latency": percentiles(&all),
    });
    if let Some(obj) = report.as_object_mut() {
        for (k, v) in extra {
            obj.insert(k.to_string(), json!(v));
        }
    }
    (report, errors)
}

async fn preload_range(chan: &Channel, val_size: usize, timeout: Duration) -> Result<(), String> {
    let mut kv = KvClient::new(chan.clone());
    for i in 0..100 {
        let req = PutRequest {
            key: format!("/bench-range/{i:03}").into_bytes(),
            value: vec![b'r'; val_size],
            ..Default::default()
        };
        match tokio::time::timeout(timeout, kv.put(req)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("preload: {}", status_text(e))),
            Err(_) => return Err("preload: timed out".into()),
        }
    }
    Ok(())
}

/// Workers that send `put` or `range` through the JSON gateway, one
/// connection each, spread over the endpoints.
fn gateway_workers(cli: &Cli) -> Result<(String, Vec<Worker>), String> {
    let seq = Arc::new(AtomicU64::new(0));
    let eps: Vec<&String> = cli.endpoints.iter().filter(|e| !e.is_empty()).collect();
    if eps.is_empty() {
        return Err("no endpoints".into());
    }
    if eps.iter().any(|e| e.starts_with("https://")) {
        return Err("--gateway takes http endpoints only".into());
    }
    let mut ws = Vec::new();
    for i in 0..cli.clients.max(1) {
        let http = Gw::new(eps[i % eps.len()]);
        ws.push(match &cli.workload {
            Workload::Put(a) => Worker::Gateway {
                http,
                path: "/v3/kv/put",
                keys: Some(KeyGen::new(&a.keys, &seq, i as u64)),
                value: b64(&vec![b'v'; a.val_size]),
                body: String::new(),
            },
            Workload::Range(a) => {
                let body = if a.prefix {
                    format!(
                        r#"{{"key":"{}","range_end":"{}","limit":"{}","serializable":{}}}"#,
                        b64(b"/bench-range/"),
                        b64(b"/bench-range0"),
                        a.limit,
                        matches!(a.consistency, Consistency::S)
                    )
                } else {
                    format!(
                        r#"{{"key":"{}","serializable":{}}}"#,
                        b64(b"/bench-range/000"),
                        matches!(a.consistency, Consistency::S)
                    )
                };
                Worker::Gateway {
                    http,
                    path: "/v3/kv/range",
                    keys: None,
                    value: String::new(),
                    body,
                }
            }
            _ => return Err("--gateway runs put and range only".into()),
        });
    }
    let name = match &cli.workload {
        Workload::Put(_) => "gateway-put",
        _ => "gateway-range",
    };
    Ok((name.to_string(), ws))
}

fn build_workers(cli: &Cli, chans: &[Channel]) -> (String, Vec<Worker>) {
    let seq = Arc::new(AtomicU64::new(0));
    let n = cli.clients.max(1);
    let chan = |i: usize| chans[i % chans.len()].clone();
    let mut ws = Vec::with_capacity(n);
    let name = match &cli.workload {
        Workload::Put(a) => {
            for i in 0..n {
                ws.push(Worker::Put {
                    kv: KvClient::new(chan(i)),
                    keys: KeyGen::new(&a.keys, &seq, i as u64),
                    value: vec![b'v'; a.val_size],
                });
            }
            "put"
        }
        Workload::Range(a) => {
            let req = if a.prefix {
                RangeRequest {
                    key: b"/bench-range/".to_vec(),
                    range_end: b"/bench-range0".to_vec(),
                    limit: a.limit,
                    serializable: matches!(a.consistency, Consistency::S),
                    ..Default::default()
                }
            } else {
                RangeRequest {
                    key: b"/bench-range/000".to_vec(),
                    serializable: matches!(a.consistency, Consistency::S),
                    ..Default::default()
                }
            };
            for i in 0..n {
                ws.push(Worker::Range {
                    kv: KvClient::new(chan(i)),
                    req: req.clone(),
                });
            }
            "range"
        }
        Workload::TxnPut(a) => {
            let space = a.keys.key_space.clamp(1, 100_000_000);
            let last: Arc<Vec<AtomicI64>> =
                Arc::new((0..space).map(|_| AtomicI64::new(0)).collect());
            let mut keys = a.keys.clone();
            keys.key_space = space;
            for i in 0..n {
                ws.push(Worker::Txn {
                    kv: KvClient::new(chan(i)),
                    keys: KeyGen::new(&keys, &seq, i as u64),
                    value: vec![b't'; a.val_size],
                    last: last.clone(),
                    conflicts: 0,
                });
            }
            "txn-put"
        }
        Workload::Mixed(a) => {
            for i in 0..n {
                ws.push(Worker::Mixed {
                    kv: KvClient::new(chan(i)),
                    keys: KeyGen::new(&a.keys, &seq, i as u64),
                    value: vec![b'm'; a.val_size],
                    read_ratio: a.read_ratio.clamp(0.0, 1.0),
                    serializable: matches!(a.consistency, Consistency::S),
                    rng: Rng::new(1_000_003 + i as u64),
                    reads: 0,
                });
            }
            "mixed"
        }
        Workload::Lease(a) => {
            for i in 0..n {
                ws.push(Worker::Lease {
                    lease: LeaseClient::new(chan(i)),
                    ttl: a.ttl,
                    stream: None,
                });
            }
            "lease"
        }
        Workload::Watch(_) | Workload::Wait(_) => "",
    };
    (name.to_string(), ws)
}

/// Value layout for the watch workload: 16 hex digits of nanoseconds since
/// the run's start, padded with 'w'.
fn stamp_value(start: Instant, size: usize) -> Vec<u8> {
    let ns = start.elapsed().as_nanos() as u64;
    let mut v = format!("{ns:016x}").into_bytes();
    v.resize(size.max(16), b'w');
    v
}

fn read_stamp(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v.get(..16)?).ok()?;
    u64::from_str_radix(s, 16).ok()
}

async fn run_watch(cli: &Cli, a: &WatchArgs, chans: &[Channel]) -> (Value, u64) {
    let start = Instant::now();
    let streams = a.streams.clamp(1, a.watchers.max(1));
    let watchers = a.watchers.max(1);
    let prefix = a.prefix.as_bytes().to_vec();
    let mut range_end = prefix.clone();
    if let Some(last) = range_end.last_mut() {
        *last = last.wrapping_add(1);
    }
    let events = Arc::new(AtomicU64::new(0));
    let created = Arc::new(AtomicU64::new(0));
    let last_event = Arc::new(AtomicU64::new(0));
    let finish = Arc::new(AtomicBool::new(false));
    let shared = make_shared(cli, start);
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    for s in 0..streams {
        let n = watchers / streams + usize::from(s < watchers % streams);
        let (tx, rx) = mpsc::channel(n + 16);
        for _ in 0..n {
            let req = WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(
                    WatchCreateRequest {
                        key: prefix.clone(),
                        range_end: range_end.clone(),
                        ..Default::default()
                    },
                )),
            };
            if tx.send(req).await.is_err() {
                fail("watch request channel closed");
            }
        }
        let mut wc = WatchClient::new(chans[s % chans.len()].clone());
        let mut stream =
            match tokio::time::timeout(cli.timeout, wc.watch(ReceiverStream::new(rx))).await {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(e)) => fail(&format!("watch: {}", status_text(e))),
                Err(_) => fail("watch: timed out opening the stream"),
            };
        senders.push(tx);
        let (events, created, last_event, finish, sh) = (
            events.clone(),
            created.clone(),
            last_event.clone(),
            finish.clone(),
            shared.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while !finish.load(Ordering::Relaxed) {
                let msg = match tokio::time::timeout(Duration::from_millis(100), stream.message())
                    .await
                {
                    Err(_) => continue,
                    Ok(m) => m,
                };
                match msg {
                    Ok(Some(r)) => {
                        if r.created {
                            created.fetch_add(1, Ordering::Relaxed);
                        }
                        if r.canceled {
                            sh.error(&format!("watch canceled: {}", r.cancel_reason));
                        }
                        let now = start.elapsed().as_nanos() as u64;
                        for ev in &r.events {
                            if let Some(ts) = ev.kv.as_ref().and_then(|kv| read_stamp(&kv.value)) {
                                lat.push(now.saturating_sub(ts));
                            }
                        }
                        if !r.events.is_empty() {
                            events.fetch_add(r.events.len() as u64, Ordering::Relaxed);
                            sh.done.fetch_add(r.events.len() as u64, Ordering::Relaxed);
                            last_event.fetch_max(now, Ordering::Relaxed);
                        }
                    }
                    Ok(None) => {
                        sh.error("watch stream ended");
                        break;
                    }
                    Err(e) => {
                        sh.error(&format!("watch stream: {}", status_text(e)));
                        break;
                    }
                }
            }
            lat
        }));
    }
    // All watchers must exist before the first put.
    let created_by = Instant::now() + Duration::from_secs(60);
    while created.load(Ordering::Relaxed) < watchers as u64 {
        if Instant::now() > created_by {
            fail(&format!(
                "only {} of {watchers} watchers created after 60s",
                created.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let progress = spawn_progress(shared.clone(), "events", cli.quiet);

    // The writer: open loop at the given rate.
    let rate = if a.rate > 0.0 { a.rate } else { 100.0 };
    let puts = cli
        .total
        .unwrap_or_else(|| (rate * cli.duration.as_secs_f64()).round() as u64);
    let put_start_ns = start.elapsed().as_nanos() as u64;
    let put_start = Instant::now();
    let sem = Arc::new(Semaphore::new(256));
    let put_lat = Arc::new(parking_lot::Mutex::new(Vec::with_capacity(puts as usize)));
    let mut put_tasks = Vec::new();
    for i in 0..puts {
        let at = put_start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let permit = match sem.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => fail("writer semaphore closed"),
        };
        let mut kv = KvClient::new(chans[i as usize % chans.len()].clone());
        let key = [
            prefix.clone(),
            format!("{:06}", i % a.key_space.max(1)).into_bytes(),
        ]
        .concat();
        let val_size = a.val_size;
        let (sh, put_lat) = (shared.clone(), put_lat.clone());
        put_tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let req = PutRequest {
                key,
                value: stamp_value(start, val_size),
                ..Default::default()
            };
            match tokio::time::timeout(sh.timeout, kv.put(req)).await {
                Ok(Ok(_)) => put_lat.lock().push(t0.elapsed().as_nanos() as u64),
                Ok(Err(e)) => sh.error(&format!("put: {}", status_text(e))),
                Err(_) => sh.error("put: timed out"),
            }
            drop(permit);
        }));
    }
    for t in put_tasks {
        let _ = t.await;
    }
    let puts_ok = put_lat.lock().len() as u64;
    let expected = puts_ok * watchers as u64;
    let drain_by = Instant::now() + a.drain;
    while events.load(Ordering::Relaxed) < expected && Instant::now() < drain_by {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    finish.store(true, Ordering::Relaxed);
    shared.stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        p.abort();
    }
    let mut all = Vec::new();
    for r in readers {
        if let Ok(l) = r.await {
            all.extend(l);
        }
    }
    drop(senders);
    all.sort_unstable();
    let mut pl = std::mem::take(&mut *put_lat.lock());
    pl.sort_unstable();
    let got = events.load(Ordering::Relaxed);
    let span = (last_event
        .load(Ordering::Relaxed)
        .saturating_sub(put_start_ns)) as f64
        / 1e9;
    let errors = shared.errors.load(Ordering::Relaxed);
    let report = json!({
        "workload": "watch",
        "endpoints": cli.endpoints,
        "conns": cli.conns.max(1),
        "watchers": watchers,
        "streams": streams,
        "rate": rate,
        "puts": puts_ok,
        "expected_events": expected,
        "ops": got,
        "missing_events": expected.saturating_sub(got),
        "errors": errors,
        "elapsed_s": round3(span),
        "ops_per_s": round3(if span > 0.0 { got as f64 / span } else { 0.0 }),
        "latency": percentiles(&all),
        "put_latency": percentiles(&pl),
    });
    (report, errors)
}

async fn run_wait(cli: &Cli, a: &WaitArgs) -> (Value, u64) {
    let start = Instant::now();
    let url = cli
        .endpoints
        .first()
        .map(|e| normalize(e.trim()))
        .unwrap_or_else(|| fail("no endpoints"));
    let tls = tls_config(cli).unwrap_or_else(|e| fail(&e));
    let mut tries = 0u64;
    let mut last_err = String::new();
    while start.elapsed() < a.wait_timeout {
        tries += 1;
        let attempt = async {
            let ch = connect(&url, Duration::from_secs(1), tls.as_ref()).await?;
            let mut kv = KvClient::new(ch);
            kv.range(RangeRequest {
                key: a.key.as_bytes().to_vec(),
                ..Default::default()
            })
            .await
            .map_err(status_text)?;
            Ok::<(), String>(())
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(())) => {
                let ms = start.elapsed().as_secs_f64() * 1000.0;
                return (
                    json!({"workload": "wait", "ready_ms": round3(ms), "tries": tries, "errors": 0}),
                    0,
                );
            }
            Ok(Err(e)) => last_err = e,
            Err(_) => last_err = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "etcd-bench: not serving after {:?}: {last_err}",
        a.wait_timeout
    );
    (
        json!({"workload": "wait", "ready_ms": Value::Null, "tries": tries, "errors": 1, "last_error": last_err}),
        1,
    )
}

fn print_text(r: &Value) {
    let g = |k: &str| r.get(k).cloned().unwrap_or(Value::Null);
    let w = g("workload");
    if w == json!("wait") {
        println!("ready after {} ms ({} tries)", g("ready_ms"), g("tries"));
        return;
    }
    println!(
        "workload {}  endpoints {}  conns {}  clients {}",
        w.as_str().unwrap_or("?"),
        g("endpoints"),
        g("conns"),
        r.get("clients")
            .or(r.get("watchers"))
            .unwrap_or(&Value::Null)
    );
    println!(
        "ops {}  errors {}  elapsed {} s  throughput {} ops/s",
        g("ops"),
        g("errors"),
        g("elapsed_s"),
        g("ops_per_s")
    );
    let lat = |label: &str, v: &Value| {
        let f = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        println!(
            "{label}: p50 {:.3} ms  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
            f("p50_ms"),
            f("p90_ms"),
            f("p99_ms"),
            f("p999_ms"),
            f("max_ms"),
            f("mean_ms")
        );
    };
    if w == json!("watch") {
        println!(
            "puts {}  expected events {}  missing {}",
            g("puts"),
            g("expected_events"),
            g("missing_events")
        );
        lat("put-to-event latency", &g("latency"));
        lat("put latency", &g("put_latency"));
    } else {
        lat("latency", &g("latency"));
    }
    for k in ["conflicts", "reads"] {
        if let Some(v) = r.get(k) {
            println!("{k} {v}");
        }
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let (report, errors) = match &cli.workload {
        Workload::Wait(a) => run_wait(&cli, a).await,
        Workload::Watch(a) => {
            let chans = connect_all(&cli).await.unwrap_or_else(|e| fail(&e));
            run_watch(&cli, a, &chans).await
        }
        _ => {
            let chans = connect_all(&cli).await.unwrap_or_else(|e| fail(&e));
            if let Workload::Range(a) = &cli.workload
                && !a.no_preload
                && let Err(e) = preload_range(&chans[0], a.val_size, cli.timeout).await
            {
                fail(&e);
            }
            let (name, workers) = if cli.gateway {
                gateway_workers(&cli).unwrap_or_else(|e| fail(&e))
            } else {
                build_workers(&cli, &chans)
            };
            run_closed(&cli, &name, workers).await
        }
    };
    if cli.json {
        println!("{report}");
    } else {
        print_text(&report);
    }
    if errors > 0 {
        std::process::exit(1);
    }
}
