//! The table of every flag accepted by `etcd` 3.5, with its default, help
//! text and the setter that validates a textual value and stores it.

use std::path::PathBuf;

use super::values::{
    UrlUse, duration_ms, parse_bool, parse_choice, parse_go_duration, parse_i64,
    parse_initial_cluster, parse_string_list, parse_uint, parse_url_list,
};
use super::{AutoCompactionMode, ClusterState, Draft, LogLevel};

/// Validates a textual value and stores it into the draft configuration.
pub(super) type Setter = fn(&mut Draft, &str) -> Result<(), String>;

/// How a flag takes its value on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arg {
    /// `--flag` alone means true; a value must be attached with `=`.
    Bool,
    /// A value, attached with `=` or given as the next argument.
    Value,
    /// A Go duration value (numbers in a YAML config file are nanoseconds).
    Duration,
    /// A comma-separated URL list (an empty string in a YAML file keeps the default).
    Urls,
}

/// How far etcd-rs honours a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Support {
    /// Stored in [`super::Config`].
    Yes,
    /// Accepted and validated, but the setting has no effect; a warning is emitted when set.
    No,
    /// A flag etcd itself only accepts for backward compatibility and ignores.
    Legacy,
    /// Handled by the argument parser itself (`--version`, `--config-file`, `--conf-file`).
    Special,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    General,
    Member,
    Clustering,
    Security,
    Auth,
    Monitoring,
    Logging,
    Tracing,
    Proxy,
    Experimental,
    Unsafe,
    Hidden,
}

impl Section {
    pub(super) const ORDER: [Section; 11] = [
        Section::General,
        Section::Member,
        Section::Clustering,
        Section::Security,
        Section::Auth,
        Section::Monitoring,
        Section::Logging,
        Section::Tracing,
        Section::Proxy,
        Section::Experimental,
        Section::Unsafe,
    ];

    pub(super) fn title(self) -> &'static str {
        match self {
            Section::General => "General",
            Section::Member => "Member",
            Section::Clustering => "Clustering",
            Section::Security => "Security",
            Section::Auth => "Auth",
            Section::Monitoring => "Profiling and monitoring",
            Section::Logging => "Logging",
            Section::Tracing => "Distributed tracing (experimental)",
            Section::Proxy => "v2 proxy (deprecated)",
            Section::Experimental => "Experimental",
            Section::Unsafe => "Unsafe",
            Section::Hidden => "",
        }
    }
}

pub(super) struct FlagSpec {
    pub name: &'static str,
    pub section: Section,
    pub arg: Arg,
    pub support: Support,
    /// Default as shown in the help text.
    pub default: &'static str,
    pub help: &'static str,
    pub set: Setter,
}

impl FlagSpec {
    /// The environment variable for this flag: `--foo-bar` is `ETCD_FOO_BAR`.
    pub fn env_name(&self) -> String {
        env_name(self.name)
    }
}

pub(super) fn env_name(flag: &str) -> String {
    format!("ETCD_{}", flag.replace('-', "_").to_ascii_uppercase())
}

pub(super) fn lookup(name: &str) -> Option<&'static FlagSpec> {
    FLAGS.iter().find(|f| f.name == name)
}

pub(super) fn lookup_env(key: &str) -> Option<&'static FlagSpec> {
    FLAGS.iter().find(|f| f.env_name() == key)
}

macro_rules! flag {
    ($name:literal, $section:ident, $arg:ident, $support:ident, $default:literal, $help:literal, $set:expr $(,)?) => {
        FlagSpec {
            name: $name,
            section: Section::$section,
            arg: Arg::$arg,
            support: Support::$support,
            default: $default,
            help: $help,
            set: $set,
        }
    };
}

macro_rules! legacy {
    ($name:literal) => {
        flag!($name, Hidden, Bool, Legacy, "", "", accept_anything)
    };
}

const MS: &str = " (milliseconds)";

fn accept_anything(_: &mut Draft, _: &str) -> Result<(), String> {
    Ok(())
}
fn accept_bool(_: &mut Draft, v: &str) -> Result<(), String> {
    parse_bool(v).map(|_| ())
}
fn accept_uint(_: &mut Draft, v: &str) -> Result<(), String> {
    parse_uint::<u64>(v, "").map(|_| ())
}
fn accept_ms(_: &mut Draft, v: &str) -> Result<(), String> {
    parse_uint::<u64>(v, MS).map(|_| ())
}
fn accept_duration(_: &mut Draft, v: &str) -> Result<(), String> {
    parse_go_duration(v).map(|_| ())
}
fn accept_bind_urls(_: &mut Draft, v: &str) -> Result<(), String> {
    parse_url_list(v, UrlUse::Bind, true).map(|_| ())
}
fn opt_path(v: &str) -> Option<PathBuf> {
    (!v.is_empty()).then(|| PathBuf::from(v))
}
fn opt_list(v: &str) -> Option<String> {
    let items = parse_string_list(v);
    (!items.is_empty()).then(|| items.join(","))
}
fn tls_version(v: &str) -> Result<Option<String>, String> {
    match v {
        "" => Ok(None),
        "TLS1.2" | "TLS1.3" => Ok(Some(v.to_string())),
        _ => Err("expected TLS1.2 or TLS1.3".to_string()),
    }
}

fn set_cluster_state(d: &mut Draft, v: &str) -> Result<(), String> {
    d.cfg.initial_cluster_state = match parse_choice(v, &["new", "existing"])? {
        "new" => ClusterState::New,
        _ => ClusterState::Existing,
    };
    Ok(())
}
fn set_compaction_mode(d: &mut Draft, v: &str) -> Result<(), String> {
    d.cfg.auto_compaction_mode = match parse_choice(v, &["periodic", "revision"])? {
        "periodic" => AutoCompactionMode::Periodic,
        _ => AutoCompactionMode::Revision,
    };
    Ok(())
}
fn accept_v2_deprecation(_: &mut Draft, v: &str) -> Result<(), String> {
    const STAGES: [&str; 4] = ["not-yet", "write-only", "write-only-drop-data", "gone"];
    parse_choice(v, &STAGES).map(|_| ())
}
fn accept_discovery_fallback(_: &mut Draft, v: &str) -> Result<(), String> {
    parse_choice(v, &["proxy", "exit"]).map(|_| ())
}
fn accept_proxy_mode(_: &mut Draft, v: &str) -> Result<(), String> {
    parse_choice(v, &["off", "readonly", "on"]).map(|_| ())
}
fn set_logger(d: &mut Draft, v: &str) -> Result<(), String> {
    match v {
        "zap" => {}
        "capnslog" => return Err("--logger=capnslog is removed in v3.5".to_string()),
        _ => return Err("expected \"zap\"".to_string()),
    }
    d.cfg.logger = v.to_string();
    Ok(())
}
fn set_log_outputs(d: &mut Draft, v: &str) -> Result<(), String> {
    let mut outs: Vec<String> = v.split(',').map(|s| s.trim().to_string()).collect();
    if outs.iter().any(String::is_empty) {
        return Err("expected a comma-separated list of log outputs".to_string());
    }
    outs.sort();
    outs.dedup();
    d.cfg.log_outputs = outs;
    Ok(())
}
fn set_watch_progress_interval(d: &mut Draft, v: &str) -> Result<(), String> {
    d.cfg.experimental_watch_progress_notify_interval_ms = duration_ms(parse_go_duration(v)?);
    Ok(())
}

#[rustfmt::skip]
pub(super) static FLAGS: &[FlagSpec] = &[
    // Handled by the argument parser.
    flag!("config-file", General, Value, Special, "",
        "YAML configuration file in etcd's format. When given, all other flags and ETCD_* variables are ignored.",
        accept_anything),
    flag!("conf-file", General, Value, Special, "/etc/etcd/etcd.conf",
        "Environment-style file of ETCD_KEY=value lines; lowest precedence (flag > environment > this file). Also ETCD_CONF_FILE.",
        accept_anything),
    flag!("version", General, Bool, Special, "false",
        "Print the version and exit.",
        accept_bool),

    // Member.
    flag!("name", Member, Value, Yes, "default",
        "Name of this member, unique within the cluster.",
        |d, v| { d.cfg.name = v.to_string(); Ok(()) }),
    flag!("data-dir", Member, Value, Yes, "${name}.etcd",
        "Directory holding the member's data.",
        |d, v| { d.data_dir = Some(PathBuf::from(v)); Ok(()) }),
    flag!("wal-dir", Member, Value, Yes, "",
        "Path to the dedicated wal directory (the Raft log's segment files; default <data-dir>/member/log).",
        |d, v| { d.cfg.wal_dir = opt_path(v); Ok(()) }),
    flag!("snapshot-count", Member, Value, Yes, "100000",
        "Committed entries between two snapshots of the state machine.",
        |d, v| { d.cfg.snapshot_count = parse_uint(v, "")?; Ok(()) }),
    flag!("heartbeat-interval", Member, Value, Yes, "100",
        "Leader heartbeat period, in milliseconds.",
        |d, v| { d.cfg.heartbeat_interval_ms = parse_uint(v, MS)?; Ok(()) }),
    flag!("election-timeout", Member, Value, Yes, "1000",
        "Time without a leader before a follower starts an election, in milliseconds.",
        |d, v| { d.cfg.election_timeout_ms = parse_uint(v, MS)?; Ok(()) }),
    flag!("initial-election-tick-advance", Member, Bool, No, "true",
        "Fast-forward election ticks at boot to elect a leader sooner.",
        accept_bool),
    flag!("listen-peer-urls", Member, Urls, Yes, "http://localhost:2380",
        "Comma-separated URLs to accept peer (raft) traffic on; hosts must be IP addresses or localhost.",
        |d, v| { d.cfg.listen_peer_urls = parse_url_list(v, UrlUse::Bind, false)?; Ok(()) }),
    flag!("listen-client-urls", Member, Urls, Yes, "http://localhost:2379",
        "Comma-separated URLs to accept client gRPC and HTTP traffic on; hosts must be IP addresses or localhost.",
        |d, v| { d.cfg.listen_client_urls = parse_url_list(v, UrlUse::Bind, false)?; Ok(()) }),
    flag!("listen-client-http-urls", Member, Urls, No, "",
        "Comma-separated URLs to serve client HTTP (non-gRPC) traffic on.",
        accept_bind_urls),
    flag!("max-snapshots", Member, Value, No, "5",
        "Snapshot files to keep (0 keeps all).",
        accept_uint),
    flag!("max-wals", Member, Value, No, "5",
        "WAL files to keep (0 keeps all).",
        accept_uint),
    flag!("quota-backend-bytes", Member, Value, Yes, "0",
        "Backend size that raises a NOSPACE alarm; 0 means 2 GiB, negative disables the quota.",
        |d, v| { d.cfg.quota_backend_bytes = parse_i64(v, " (bytes)")?; Ok(()) }),
    flag!("backend-bbolt-freelist-type", Member, Value, No, "map",
        "bbolt freelist type (array or map).",
        accept_anything),
    flag!("backend-batch-interval", Member, Duration, Yes, "1s",
        "Longest time between two durable commits of the backend (0 means 1s).",
        |d, v| { d.cfg.backend_batch_interval = parse_go_duration(v)?; Ok(()) }),
    flag!("backend-batch-limit", Member, Value, Yes, "0",
        "Most writes applied between two durable commits of the backend (0 means 10000).",
        |d, v| {
            d.cfg.backend_batch_limit = match parse_i64(v, "")? {
                0 => crate::config::DEFAULT_BACKEND_BATCH_LIMIT,
                n if n < 0 => 1,
                n => n as u64,
            };
            Ok(())
        }),
    flag!("max-txn-ops", Member, Value, Yes, "128",
        "Most operations allowed in one transaction.",
        |d, v| { d.cfg.max_txn_ops = parse_uint(v, "")?; Ok(()) }),
    flag!("max-request-bytes", Member, Value, Yes, "1572864",
        "Largest client request accepted, in bytes.",
        |d, v| { d.cfg.max_request_bytes = parse_uint(v, " (bytes)")?; Ok(()) }),
    flag!("max-concurrent-streams", Member, Value, Yes, "4294967295",
        "Concurrent HTTP/2 streams allowed per client connection.",
        |d, v| { d.cfg.max_concurrent_streams = parse_uint(v, "")?; Ok(()) }),
    flag!("enable-grpc-gateway", Member, Bool, No, "true",
        "Serve the JSON/HTTP gateway to the gRPC API.",
        accept_bool),
    flag!("grpc-keepalive-min-time", Member, Duration, No, "5s",
        "Shortest interval a client may ping the server at (not enforced: client pings are answered at any rate).",
        accept_duration),
    flag!("grpc-keepalive-interval", Member, Duration, Yes, "2h",
        "Interval of server-to-client keepalive pings (0 disables).",
        |d, v| { d.cfg.grpc_keepalive_interval = parse_go_duration(v)?; Ok(()) }),
    flag!("grpc-keepalive-timeout", Member, Duration, Yes, "20s",
        "Time to wait for a keepalive answer before closing the connection (0 disables).",
        |d, v| { d.cfg.grpc_keepalive_timeout = parse_go_duration(v)?; Ok(()) }),
    flag!("socket-reuse-port", Member, Bool, Yes, "false",
        "Set SO_REUSEPORT on client, peer and metrics listeners (several processes may listen on one port).",
        |d, v| { d.cfg.socket_reuse_port = parse_bool(v)?; Ok(()) }),
    flag!("socket-reuse-address", Member, Bool, Yes, "false",
        "Set SO_REUSEADDR on listeners (always set, as Go sets it on every listener).",
        |d, v| { d.cfg.socket_reuse_address = parse_bool(v)?; Ok(()) }),
    flag!("raft-read-timeout", Member, Duration, No, "5s",
        "Read timeout on peer connections.",
        accept_duration),
    flag!("raft-write-timeout", Member, Duration, No, "5s",
        "Write timeout on peer connections.",
        accept_duration),

    // Clustering.
    flag!("initial-advertise-peer-urls", Clustering, Urls, Yes, "http://localhost:2380",
        "Comma-separated peer URLs this member announces to the cluster.",
        |d, v| { d.cfg.initial_advertise_peer_urls = parse_url_list(v, UrlUse::Advertise, false)?; Ok(()) }),
    flag!("initial-cluster", Clustering, Value, Yes, "default=http://localhost:2380",
        "Bootstrap membership as name=peer-url pairs, comma-separated (default: <name>=<initial-advertise-peer-urls>).",
        |d, v| { d.initial_cluster = Some(parse_initial_cluster(v)?); Ok(()) }),
    flag!("initial-cluster-state", Clustering, Value, Yes, "new",
        "'new' to bootstrap a cluster, 'existing' to join one; ignored once the member has data.",
        set_cluster_state),
    flag!("initial-cluster-token", Clustering, Value, Yes, "etcd-cluster",
        "Token that keeps separate clusters from joining each other during bootstrap.",
        |d, v| { d.cfg.initial_cluster_token = v.to_string(); Ok(()) }),
    flag!("advertise-client-urls", Clustering, Urls, Yes, "http://localhost:2379",
        "Comma-separated client URLs this member announces; required when --listen-client-urls is set.",
        |d, v| { d.cfg.advertise_client_urls = parse_url_list(v, UrlUse::Advertise, false)?; Ok(()) }),
    flag!("discovery", Clustering, Value, No, "",
        "Discovery service URL used to bootstrap the cluster.",
        |d, v| { d.discovery = v.to_string(); Ok(()) }),
    flag!("discovery-fallback", Clustering, Value, No, "proxy",
        "What to do when the discovery service fails: 'exit' or 'proxy'.",
        accept_discovery_fallback),
    flag!("discovery-proxy", Clustering, Value, No, "",
        "HTTP proxy for discovery service traffic.",
        accept_anything),
    flag!("discovery-srv", Clustering, Value, No, "",
        "DNS domain whose SRV records list the initial cluster.",
        |d, v| { d.discovery_srv = v.to_string(); Ok(()) }),
    flag!("discovery-srv-name", Clustering, Value, No, "",
        "Suffix appended to the SRV service name during DNS discovery.",
        accept_anything),
    flag!("strict-reconfig-check", Clustering, Bool, Yes, "true",
        "Refuse membership changes that could lose quorum.",
        |d, v| { d.cfg.strict_reconfig_check = parse_bool(v)?; Ok(()) }),
    flag!("pre-vote", Clustering, Bool, Yes, "true",
        "Run the raft pre-vote phase before elections, so a member cut off from the others does not raise the term (default true as in etcd 3.5; etcd 3.4's default was false).",
        |d, v| { d.cfg.pre_vote = parse_bool(v)?; Ok(()) }),
    flag!("auto-compaction-retention", Clustering, Value, Yes, "0",
        "History to keep when compacting automatically; 0 disables. Hours or a duration (periodic), or revisions (revision).",
        |d, v| { d.cfg.auto_compaction_retention = v.to_string(); Ok(()) }),
    flag!("auto-compaction-mode", Clustering, Value, Yes, "periodic",
        "How --auto-compaction-retention is read: 'periodic' or 'revision'.",
        set_compaction_mode),
    flag!("enable-v2", Clustering, Bool, No, "false",
        "Serve the deprecated v2 API (etcd-rs: the v2 key space is not provided; the read-only v2 members API is always served).",
        accept_bool),
    flag!("experimental-enable-v2v3", Clustering, Value, No, "",
        "Serve the v2 API from the v3 store under this prefix (deprecated).",
        accept_anything),
    flag!("v2-deprecation", Clustering, Value, No, "not-yet",
        "v2 store deprecation stage: not-yet, write-only, write-only-drop-data or gone.",
        accept_v2_deprecation),

    // Security.
    flag!("cert-file", Security, Value, Yes, "",
        "TLS certificate for client connections.",
        |d, v| { d.cfg.client_tls.cert_file = opt_path(v); Ok(()) }),
    flag!("key-file", Security, Value, Yes, "",
        "TLS private key for client connections.",
        |d, v| { d.cfg.client_tls.key_file = opt_path(v); Ok(()) }),
    flag!("client-cert-auth", Security, Bool, Yes, "false",
        "Require clients to present a certificate signed by --trusted-ca-file.",
        |d, v| { d.cfg.client_tls.client_cert_auth = parse_bool(v)?; Ok(()) }),
    flag!("client-cert-file", Security, Value, No, "",
        "Certificate used when this server acts as a client (default: --cert-file).",
        accept_anything),
    flag!("client-key-file", Security, Value, No, "",
        "Key used when this server acts as a client (default: --key-file).",
        accept_anything),
    flag!("client-crl-file", Security, Value, Yes, "",
        "Certificate revocation list for client certificates.",
        |d, v| { d.cfg.client_tls.crl_file = opt_path(v); Ok(()) }),
    flag!("client-cert-allowed-hostname", Security, Value, Yes, "",
        "Comma-separated SAN hostnames a client certificate must carry.",
        |d, v| { d.cfg.client_tls.allowed_hostname = opt_list(v); Ok(()) }),
    flag!("trusted-ca-file", Security, Value, Yes, "",
        "CA bundle used to verify client certificates.",
        |d, v| { d.cfg.client_tls.trusted_ca_file = opt_path(v); Ok(()) }),
    flag!("auto-tls", Security, Bool, Yes, "false",
        "Use a generated self-signed certificate for client connections.",
        |d, v| { d.cfg.client_tls.auto_tls = parse_bool(v)?; Ok(()) }),
    flag!("peer-cert-file", Security, Value, Yes, "",
        "TLS certificate for peer connections.",
        |d, v| { d.cfg.peer_tls.cert_file = opt_path(v); Ok(()) }),
    flag!("peer-key-file", Security, Value, Yes, "",
        "TLS private key for peer connections.",
        |d, v| { d.cfg.peer_tls.key_file = opt_path(v); Ok(()) }),
    flag!("peer-client-cert-auth", Security, Bool, Yes, "false",
        "Require peers to present a certificate signed by --peer-trusted-ca-file.",
        |d, v| { d.cfg.peer_tls.client_cert_auth = parse_bool(v)?; Ok(()) }),
    flag!("peer-trusted-ca-file", Security, Value, Yes, "",
        "CA bundle used to verify peer certificates.",
        |d, v| { d.cfg.peer_tls.trusted_ca_file = opt_path(v); Ok(()) }),
    flag!("peer-cert-allowed-cn", Security, Value, Yes, "",
        "Comma-separated common names a peer certificate must carry.",
        |d, v| { d.cfg.peer_tls.allowed_cn = opt_list(v); Ok(()) }),
    flag!("peer-cert-allowed-hostname", Security, Value, Yes, "",
        "Comma-separated SAN hostnames a peer certificate must carry.",
        |d, v| { d.cfg.peer_tls.allowed_hostname = opt_list(v); Ok(()) }),
    flag!("peer-auto-tls", Security, Bool, Yes, "false",
        "Use a generated self-signed certificate for peer connections when no peer certificate is given.",
        |d, v| { d.cfg.peer_tls.auto_tls = parse_bool(v)?; Ok(()) }),
    flag!("peer-client-cert-file", Security, Value, Yes, "",
        "Certificate presented to other peers (default: --peer-cert-file).",
        |d, v| { d.cfg.peer_client_cert_file = opt_path(v); Ok(()) }),
    flag!("peer-client-key-file", Security, Value, Yes, "",
        "Key presented to other peers (default: --peer-key-file).",
        |d, v| { d.cfg.peer_client_key_file = opt_path(v); Ok(()) }),
    flag!("self-signed-cert-validity", Security, Value, No, "1",
        "Validity of generated certificates, in years.",
        accept_uint),
    flag!("peer-crl-file", Security, Value, Yes, "",
        "Certificate revocation list for peer certificates.",
        |d, v| { d.cfg.peer_tls.crl_file = opt_path(v); Ok(()) }),
    flag!("cipher-suites", Security, Value, Yes, "",
        "Comma-separated TLS cipher suites for client and peer connections (empty: library defaults).",
        |d, v| { d.cfg.cipher_suites = parse_string_list(v); Ok(()) }),
    flag!("cors", Security, Value, No, "*",
        "Comma-separated origins allowed for CORS (* allows all).",
        accept_anything),
    flag!("host-whitelist", Security, Value, No, "*",
        "Comma-separated Host header values accepted on plain HTTP (* allows all).",
        accept_anything),
    flag!("tls-min-version", Security, Value, Yes, "TLS1.2",
        "Lowest TLS version accepted: TLS1.2 or TLS1.3.",
        |d, v| { d.cfg.tls_min_version = tls_version(v)?; Ok(()) }),
    flag!("tls-max-version", Security, Value, Yes, "",
        "Highest TLS version accepted: TLS1.2 or TLS1.3 (empty: library default).",
        |d, v| { d.cfg.tls_max_version = tls_version(v)?; Ok(()) }),
    flag!("experimental-peer-skip-client-san-verification", Security, Bool, No, "false",
        "Do not verify the SAN field of peer client certificates.",
        accept_bool),

    // Auth.
    flag!("auth-token", Auth, Value, Yes, "simple",
        "Auth token type and options: 'simple' or 'jwt,pub-key=...,priv-key=...,sign-method=...'.",
        |d, v| { d.cfg.auth_token = v.to_string(); Ok(()) }),
    flag!("bcrypt-cost", Auth, Value, Yes, "10",
        "bcrypt cost for password hashing (4 to 31).",
        |d, v| { d.cfg.bcrypt_cost = parse_uint(v, "")?; Ok(()) }),
    flag!("auth-token-ttl", Auth, Value, Yes, "300",
        "Lifetime of simple auth tokens, in seconds.",
        |d, v| { d.cfg.auth_token_ttl = parse_uint(v, " (seconds)")?; Ok(()) }),

    // Profiling and monitoring.
    flag!("enable-pprof", Monitoring, Bool, No, "false",
        "Serve runtime profiling data under /debug/pprof/ on the client URLs.",
        |d, v| { d.cfg.enable_pprof = parse_bool(v)?; Ok(()) }),
    flag!("metrics", Monitoring, Value, Yes, "basic",
        "Metrics detail: 'basic' or 'extensive' ('extensive' adds the gRPC latency histograms, grpc_server_handling_seconds).",
        |d, v| { d.cfg.metrics = v.to_string(); Ok(()) }),
    flag!("listen-metrics-urls", Monitoring, Urls, Yes, "",
        "Extra comma-separated URLs serving only /metrics and /health.",
        |d, v| { d.cfg.listen_metrics_urls = parse_url_list(v, UrlUse::Bind, true)?; Ok(()) }),

    // Logging.
    flag!("logger", Logging, Value, Yes, "zap",
        "Logger implementation; only 'zap' is accepted.",
        set_logger),
    flag!("log-outputs", Logging, Value, Yes, "default",
        "Comma-separated log targets: default, stderr, stdout, systemd/journal or file paths (etcd-rs logs to stderr, or to the journal when stderr is the journal; other targets warn).",
        set_log_outputs),
    flag!("log-level", Logging, Value, Yes, "info",
        "Lowest level logged: debug, info, warn, error, panic or fatal.",
        |d, v| { d.cfg.log_level = LogLevel::parse(v)?; Ok(()) }),
    flag!("enable-log-rotation", Logging, Bool, No, "false",
        "Rotate a single file log output.",
        |d, v| { d.log_rotation = parse_bool(v)?; Ok(()) }),
    flag!("log-rotation-config-json", Logging, Value, No, "{\"maxsize\": 100, \"maxage\": 0, \"maxbackups\": 0, \"localtime\": false, \"compress\": false}",
        "JSON log rotation settings used with --enable-log-rotation.",
        accept_anything),

    // Distributed tracing.
    flag!("experimental-enable-distributed-tracing", Tracing, Bool, No, "false",
        "Export OpenTelemetry traces.",
        |d, v| { d.tracing = parse_bool(v)?; Ok(()) }),
    flag!("experimental-distributed-tracing-address", Tracing, Value, No, "localhost:4317",
        "Trace collector address.",
        accept_anything),
    flag!("experimental-distributed-tracing-service-name", Tracing, Value, No, "etcd",
        "Service name attached to traces.",
        accept_anything),
    flag!("experimental-distributed-tracing-instance-id", Tracing, Value, No, "",
        "Instance ID attached to traces, unique per member.",
        accept_anything),
    flag!("experimental-distributed-tracing-sampling-rate", Tracing, Value, No, "0",
        "Spans sampled per million.",
        |d, v| { d.tracing_rate = parse_i64(v, "")?; Ok(()) }),
    // v2 proxy.
    flag!("proxy", Proxy, Value, No, "off",
        "v2 proxy mode: 'off', 'readonly' or 'on'.",
        accept_proxy_mode),
    flag!("proxy-failure-wait", Proxy, Value, No, "5000",
        "Milliseconds a failed endpoint stays excluded.",
        accept_ms),
    flag!("proxy-refresh-interval", Proxy, Value, No, "30000",
        "Milliseconds between endpoint refreshes.",
        accept_ms),
    flag!("proxy-dial-timeout", Proxy, Value, No, "1000",
        "Dial timeout in milliseconds.",
        accept_ms),
    flag!("proxy-write-timeout", Proxy, Value, No, "5000",
        "Write timeout in milliseconds.",
        accept_ms),
    flag!("proxy-read-timeout", Proxy, Value, No, "0",
        "Read timeout in milliseconds.",
        accept_ms),

    // Experimental.
    flag!("experimental-initial-corrupt-check", Experimental, Bool, Yes, "false",
        "On restart, compare the local HashKV with the peers' at the same revision before serving; a mismatch stops the member.",
        |d, v| { d.cfg.experimental_initial_corrupt_check = parse_bool(v)?; Ok(()) }),
    flag!("experimental-corrupt-check-time", Experimental, Duration, No, "0s",
        "Interval between cluster-wide corruption checks.",
        accept_duration),
    flag!("experimental-compact-hash-check-enabled", Experimental, Bool, No, "false",
        "Let the leader compare compaction hashes with followers.",
        accept_bool),
    flag!("experimental-compact-hash-check-time", Experimental, Duration, No, "1m",
        "Interval between compaction hash checks.",
        |d, v| { d.compact_hash_check_time = parse_go_duration(v)?; Ok(()) }),
    flag!("experimental-enable-lease-checkpoint", Experimental, Bool, No, "false",
        "Let the leader checkpoint remaining lease TTLs to the followers.",
        |d, v| { d.lease_checkpoint = parse_bool(v)?; Ok(()) }),
    flag!("experimental-enable-lease-checkpoint-persist", Experimental, Bool, No, "false",
        "Persist checkpointed lease TTLs; needs --experimental-enable-lease-checkpoint.",
        |d, v| { d.lease_checkpoint_persist = parse_bool(v)?; Ok(()) }),
    flag!("experimental-compaction-batch-limit", Experimental, Value, Yes, "1000",
        "Records visited per compaction batch, one write transaction each (0 means 1000; negative: no limit).",
        |d, v| { d.cfg.experimental_compaction_batch_limit = parse_i64(v, "")?; Ok(()) }),
    flag!("experimental-compaction-sleep-interval", Experimental, Duration, Yes, "10ms",
        "Pause between compaction batches (0 means 10ms).",
        |d, v| { d.cfg.experimental_compaction_sleep_interval = parse_go_duration(v)?; Ok(()) }),
    flag!("experimental-watch-progress-notify-interval", Experimental, Duration, Yes, "10m",
        "Interval of progress notifications sent to watchers that asked for them (0 means 10m).",
        set_watch_progress_interval),
    flag!("experimental-downgrade-check-time", Experimental, Duration, No, "5s",
        "Interval between downgrade status checks.",
        accept_duration),
    flag!("experimental-warning-apply-duration", Experimental, Duration, No, "100ms",
        "Log a warning for requests whose apply takes longer than this.",
        accept_duration),
    flag!("experimental-memory-mlock", Experimental, Bool, No, "false",
        "Lock backend pages in RAM.",
        accept_bool),
    flag!("experimental-txn-mode-write-with-shared-buffer", Experimental, Bool, No, "true",
        "Let write transactions use a shared read buffer.",
        accept_bool),
    flag!("experimental-bootstrap-defrag-threshold-megabytes", Experimental, Value, No, "0",
        "Defragment at startup when at least this many megabytes would be freed (0 disables).",
        accept_uint),
    flag!("experimental-stop-grpc-service-on-defrag", Experimental, Bool, No, "false",
        "Report the gRPC health service as not serving while defragmenting.",
        accept_bool),
    flag!("experimental-max-learners", Experimental, Value, No, "1",
        "Most learners the cluster may have.",
        accept_uint),
    flag!("experimental-warning-unary-request-duration", Experimental, Duration, No, "300ms",
        "Log a warning for unary requests that take longer than this.",
        accept_duration),
    flag!("experimental-snapshot-catchup-entries", Experimental, Value, No, "5000",
        "Entries kept after a snapshot so slow followers can catch up.",
        accept_uint),

    // etcd 3.6 and 3.7: feature gates, and the names the former experimental flags took.
    flag!("feature-gates", Experimental, Value, Yes, "",
        "Comma-separated Name=true|false pairs of etcd 3.6's feature gates (AllAlpha, AllBeta, CompactHashCheck, FastLeaseKeepAlive, InitialCorruptCheck, LeaseCheckpoint, LeaseCheckpointPersist, SetMemberLocalAddr, StopGRPCServiceOnDefrag, TxnModeWriteWithSharedBuffer). InitialCorruptCheck is --experimental-initial-corrupt-check; the others have no effect and say so at start.",
        super::gates::set),
    flag!("corrupt-check-time", Experimental, Duration, No, "0s",
        "etcd 3.6's name of --experimental-corrupt-check-time.",
        accept_duration),
    flag!("compact-hash-check-time", Experimental, Duration, No, "1m",
        "etcd 3.6's name of --experimental-compact-hash-check-time.",
        |d, v| { d.compact_hash_check_time = parse_go_duration(v)?; Ok(()) }),
    flag!("compaction-batch-limit", Experimental, Value, Yes, "1000",
        "etcd 3.6's name of --experimental-compaction-batch-limit.",
        |d, v| { d.cfg.experimental_compaction_batch_limit = parse_i64(v, "")?; Ok(()) }),
    flag!("compaction-sleep-interval", Experimental, Duration, Yes, "10ms",
        "etcd 3.6's name of --experimental-compaction-sleep-interval.",
        |d, v| { d.cfg.experimental_compaction_sleep_interval = parse_go_duration(v)?; Ok(()) }),
    flag!("watch-progress-notify-interval", Experimental, Duration, Yes, "10m",
        "etcd 3.6's name of --experimental-watch-progress-notify-interval.",
        set_watch_progress_interval),
    flag!("downgrade-check-time", Experimental, Duration, No, "5s",
        "etcd 3.6's name of --experimental-downgrade-check-time.",
        accept_duration),
    flag!("warning-apply-duration", Experimental, Duration, No, "100ms",
        "etcd 3.6's name of --experimental-warning-apply-duration.",
        accept_duration),
    flag!("warning-unary-request-duration", Experimental, Duration, No, "300ms",
        "Log a warning for unary requests that take longer than this.",
        accept_duration),
    flag!("memory-mlock", Experimental, Bool, No, "false",
        "etcd 3.6's name of --experimental-memory-mlock.",
        accept_bool),
    flag!("bootstrap-defrag-threshold-megabytes", Experimental, Value, No, "0",
        "etcd 3.6's name of --experimental-bootstrap-defrag-threshold-megabytes.",
        accept_uint),
    flag!("snapshot-catchup-entries", Experimental, Value, No, "5000",
        "etcd 3.6's name of --experimental-snapshot-catchup-entries.",
        accept_uint),
    flag!("max-learners", Experimental, Value, No, "1",
        "Most learners the cluster may have.",
        accept_uint),
    flag!("peer-skip-client-san-verification", Security, Bool, No, "false",
        "etcd 3.6's name of --experimental-peer-skip-client-san-verification.",
        accept_bool),
    flag!("enable-distributed-tracing", Tracing, Bool, No, "false",
        "etcd 3.6's name of --experimental-enable-distributed-tracing.",
        |d, v| { d.tracing = parse_bool(v)?; Ok(()) }),
    flag!("distributed-tracing-address", Tracing, Value, No, "localhost:4317",
        "etcd 3.6's name of --experimental-distributed-tracing-address.",
        accept_anything),
    flag!("distributed-tracing-service-name", Tracing, Value, No, "etcd",
        "etcd 3.6's name of --experimental-distributed-tracing-service-name.",
        accept_anything),
    flag!("distributed-tracing-instance-id", Tracing, Value, No, "",
        "etcd 3.6's name of --experimental-distributed-tracing-instance-id.",
        accept_anything),
    flag!("distributed-tracing-sampling-rate", Tracing, Value, No, "0",
        "etcd 3.6's name of --experimental-distributed-tracing-sampling-rate.",
        |d, v| { d.tracing_rate = parse_i64(v, "")?; Ok(()) }),

    // Unsafe.
    flag!("force-new-cluster", Unsafe, Bool, Yes, "false",
        "Restart a member that has data as a one-member cluster with all its data and its cluster ID, removing the other members (disaster recovery; restart without it afterwards).",
        |d, v| { d.cfg.force_new_cluster = parse_bool(v)?; Ok(()) }),
    flag!("unsafe-no-fsync", Unsafe, Bool, No, "false",
        "Skip fsync; data may be lost on a crash.",
        accept_bool),

    // Flags etcd keeps accepting for compatibility with old releases, and ignores.
    legacy!("cluster-active-size"),
    legacy!("cluster-remove-delay"),
    legacy!("cluster-sync-interval"),
    legacy!("config"),
    legacy!("force"),
    legacy!("max-result-buffer"),
    legacy!("max-retry-attempts"),
    legacy!("peer-heartbeat-interval"),
    legacy!("peer-election-timeout"),
    legacy!("retry-interval"),
    legacy!("snapshot"),
    legacy!("v"),
    legacy!("vv"),
    legacy!("test.coverprofile"),
    legacy!("test.outputdir"),

    // Test aid: freeze the apply loop once `<data-dir>/member/freeze-apply` exists.
    flag!("debug-freeze-apply", Hidden, Bool, Yes, "false", "",
        |d, v| { d.cfg.debug_freeze_apply = parse_bool(v)?; Ok(()) }),
];

/// Builds the `--help` text from the table.
pub(super) fn help_text() -> String {
    let mut out = String::from(
        "Usage:

  etcd [flags]
      Start an etcd-rs server.
  etcd --version
      Print the version and exit.
  etcd -h | --help
      Print this help and exit.

Flags take the form --flag value, --flag=value, -flag value or -flag=value;
boolean flags may be given alone (--flag) or as --flag=true|false.
Every flag --some-flag can also be set with the environment variable
ETCD_SOME_FLAG or in the conf file (default /etc/etcd/etcd.conf).
Precedence: command line > environment > conf file > built-in default.
Flags marked [no effect] are accepted for compatibility with etcd but
are not used by etcd-rs.
",
    );
    for section in Section::ORDER {
        out.push('\n');
        out.push_str(section.title());
        out.push_str(":\n");
        for f in FLAGS.iter().filter(|f| f.section == section) {
            out.push_str("  --");
            out.push_str(f.name);
            out.push_str(&format!(" '{}'", f.default));
            out.push_str("\n      ");
            out.push_str(f.help);
            if f.support == Support::No {
                out.push_str(" [no effect]");
            }
            out.push('\n');
        }
    }
    out
}
