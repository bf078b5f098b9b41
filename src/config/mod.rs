//! Server configuration: etcd 3.5's command-line flags, `ETCD_*` environment
//! variables, the environment-style conf file (`/etc/etcd/etcd.conf`) and the
//! YAML `--config-file`.
//!
//! Precedence is command-line flag > environment variable > conf file >
//! built-in default. When a YAML configuration file is given (with
//! `--config-file`, `ETCD_CONFIG_FILE` in the environment or in the conf
//! file), it is the only source of settings, as in etcd: every other flag,
//! variable and conf file entry is ignored, and a line in
//! [`Config::warnings`] says so.
//!
//! [`parse`] never prints anything. The caller prints [`Command::PrintHelp`]
//! and [`Command::PrintVersion`] texts to stdout (they end with a newline),
//! logs each [`Config::warnings`] line at warning level once logging is set
//! up, and on error prints the [`ConfigError`] (its `Display` text is
//! complete, e.g. `/etc/etcd/etcd.conf:4: unknown key ETCD_FOO`) to stderr
//! and exits with a non-zero status.

mod conffile;
mod flags;
mod gates;
pub(crate) mod values;
mod yaml;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flags::{FlagSpec, Support};

pub use values::parse_go_duration;

/// etcd release whose behaviour and API this server reproduces.
pub const SERVER_VERSION: &str = "3.5.17";
/// Cluster version announced to clients and peers.
pub const CLUSTER_VERSION: &str = "3.5.0";
/// The conf file read when neither `--conf-file` nor `ETCD_CONF_FILE` names one.
pub const DEFAULT_CONF_FILE: &str = "/etc/etcd/etcd.conf";

/// Default quota applied when `quota_backend_bytes` is 0.
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// etcd refuses election timeouts above this many milliseconds.
pub const MAX_ELECTION_TIMEOUT_MS: u64 = 50_000;

/// `ETCD_*` variables etcd reads directly rather than through a flag; they
/// are accepted (and unused) in the environment and in the conf file.
const OTHER_ETCD_VARIABLES: &[&str] = &["ETCD_UNSUPPORTED_ARCH"];

const DEFAULT_COMPACTION_BATCH_LIMIT: i64 = 1000;
const DEFAULT_COMPACTION_SLEEP_INTERVAL: Duration = Duration::from_millis(10);
/// The longest time between two durable commits of the database when
/// `--backend-batch-interval` is not set (etcd: 100ms). Applies wait while
/// one runs; the log holds everything after the last one, so a longer
/// interval only lengthens what a restart after a crash applies again.
pub const DEFAULT_BACKEND_BATCH_INTERVAL: Duration = Duration::from_secs(1);
/// The most writes applied between two durable commits of the database when
/// `--backend-batch-limit` is not set or 0 (etcd's default). The Raft log
/// keeps the entries above the last durable commit in memory, so this bounds
/// that memory under a load the interval alone would let grow.
pub const DEFAULT_BACKEND_BATCH_LIMIT: u64 = 10_000;
const DEFAULT_WATCH_PROGRESS_NOTIFY_MS: u64 = 10 * 60 * 1000;
const DEFAULT_BCRYPT_COST: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

impl ClusterState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompactionMode {
    Periodic,
    Revision,
}

impl AutoCompactionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AutoCompactionMode::Periodic => "periodic",
            AutoCompactionMode::Revision => "revision",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
    Panic,
    Fatal,
}

impl LogLevel {
    /// Accepts the level names etcd (zap) accepts, in lower or upper case.
    /// `dpanic` maps to [`LogLevel::Panic`]; an empty string means info.
    pub fn parse(v: &str) -> Result<LogLevel, String> {
        Ok(match v.to_ascii_lowercase().as_str() {
            "debug" => LogLevel::Debug,
            "info" | "" => LogLevel::Info,
            "warn" => LogLevel::Warn,
            "error" => LogLevel::Error,
            "dpanic" | "panic" => LogLevel::Panic,
            "fatal" => LogLevel::Fatal,
            _ => return Err("expected one of debug, info, warn, error, panic, fatal".to_string()),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::Panic => "panic",
            LogLevel::Fatal => "fatal",
        }
    }
}

/// TLS settings of the client or the peer listeners.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
    pub auto_tls: bool,
    pub crl_file: Option<PathBuf>,
    /// Comma-separated list of accepted certificate common names; see [`TlsInfo::allowed_cns`].
    pub allowed_cn: Option<String>,
    /// Comma-separated list of accepted SAN host names; see [`TlsInfo::allowed_hostnames`].
    pub allowed_hostname: Option<String>,
}

impl TlsInfo {
    /// True when no certificate or key is configured (`auto_tls` may still apply).
    pub fn is_empty(&self) -> bool {
        self.cert_file.is_none() && self.key_file.is_none()
    }

    pub fn allowed_cns(&self) -> Vec<&str> {
        split_list(self.allowed_cn.as_deref())
    }

    pub fn allowed_hostnames(&self) -> Vec<&str> {
        split_list(self.allowed_hostname.as_deref())
    }
}

fn split_list(v: Option<&str>) -> Vec<&str> {
    v.map(|s| s.split(',').filter(|x| !x.is_empty()).collect())
        .unwrap_or_default()
}

/// The server configuration after merging every source and validating it.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub wal_dir: Option<PathBuf>,
    /// Normalized URLs, sorted and de-duplicated as etcd does.
    pub listen_client_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer_urls: Vec<String>,
    pub initial_advertise_peer_urls: Vec<String>,
    /// `(member name, peer URL)` pairs in the order given; a name may repeat.
    /// Empty when bootstrapping through discovery.
    pub initial_cluster: Vec<(String, String)>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_count: u64,
    /// 0 means [`DEFAULT_QUOTA_BACKEND_BYTES`], negative disables the quota;
    /// see [`Config::effective_quota_backend_bytes`].
    pub quota_backend_bytes: i64,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub max_concurrent_streams: u32,
    /// `--grpc-keepalive-interval`: HTTP/2 pings to an idle client (zero: none).
    pub grpc_keepalive_interval: Duration,
    /// `--grpc-keepalive-timeout`: a ping unanswered this long closes the connection.
    pub grpc_keepalive_timeout: Duration,
    pub auto_compaction_mode: AutoCompactionMode,
    /// Raw retention text, already validated; use [`Config::auto_compaction`].
    pub auto_compaction_retention: String,
    pub listen_metrics_urls: Vec<String>,
    /// `basic` or `extensive` (any other value behaves as `basic`, as in etcd).
    pub metrics: String,
    pub log_level: LogLevel,
    pub logger: String,
    /// `default`, `stderr`, `stdout`, `systemd/journal` or file paths.
    pub log_outputs: Vec<String>,
    pub client_tls: TlsInfo,
    pub peer_tls: TlsInfo,
    /// `--peer-client-cert-file` and `--peer-client-key-file`: what this member
    /// presents when it connects to its peers (default: the peer certificate).
    pub peer_client_cert_file: Option<PathBuf>,
    pub peer_client_key_file: Option<PathBuf>,
    pub cipher_suites: Vec<String>,
    /// `TLS1.2` or `TLS1.3`; `None` means TLS1.2.
    pub tls_min_version: Option<String>,
    /// `TLS1.2` or `TLS1.3`; `None` means the TLS library's highest version.
    pub tls_max_version: Option<String>,
    pub auth_token: String,
    /// Seconds.
    pub auth_token_ttl: u64,
    pub bcrypt_cost: u32,
    pub strict_reconfig_check: bool,
    pub pre_vote: bool,
    pub force_new_cluster: bool,
    pub enable_pprof: bool,
    pub experimental_initial_corrupt_check: bool,
    pub experimental_watch_progress_notify_interval_ms: u64,
    /// Revisions removed per compaction batch (a configured 0 becomes 1000).
    pub experimental_compaction_batch_limit: i64,
    /// Pause between two compaction batches (a configured 0 becomes 10ms).
    pub experimental_compaction_sleep_interval: Duration,
    /// Longest time between two durable commits of the database
    /// (`--backend-batch-interval`; unset or 0: [`DEFAULT_BACKEND_BATCH_INTERVAL`]).
    pub backend_batch_interval: Duration,
    /// Most writes applied between two durable commits of the database
    /// (`--backend-batch-limit`; unset or 0: [`DEFAULT_BACKEND_BATCH_LIMIT`];
    /// negative: 1, a durable commit at every tick that follows a write,
    /// where etcd commits after every write).
    pub backend_batch_limit: u64,
    pub socket_reuse_address: bool,
    pub socket_reuse_port: bool,
    pub debug_freeze_apply: bool,
    /// One line per notable condition found while parsing (accepted flags
    /// that have no effect, ignored or unrecognized environment variables,
    /// a YAML file overriding other sources...). The caller logs them.
    pub warnings: Vec<String>,
}

impl Default for Config {
    /// etcd's defaults, with `data_dir` and `initial_cluster` derived from the default name.
    fn default() -> Config {
        Config {
            name: "default".to_string(),
            data_dir: PathBuf::from("default.etcd"),
            wal_dir: None,
            listen_client_urls: vec!["http://localhost:2379".to_string()],
            advertise_client_urls: vec!["http://localhost:2379".to_string()],
            listen_peer_urls: vec!["http://localhost:2380".to_string()],
            initial_advertise_peer_urls: vec!["http://localhost:2380".to_string()],
            initial_cluster: vec![("default".to_string(), "http://localhost:2380".to_string())],
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "etcd-cluster".to_string(),
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1000,
            snapshot_count: 100_000,
            quota_backend_bytes: 0,
            max_request_bytes: 1_572_864,
            max_txn_ops: 128,
            max_concurrent_streams: u32::MAX,
            grpc_keepalive_interval: Duration::from_secs(2 * 3600),
            grpc_keepalive_timeout: Duration::from_secs(20),
            auto_compaction_mode: AutoCompactionMode::Periodic,
            auto_compaction_retention: "0".to_string(),
            listen_metrics_urls: Vec::new(),
            metrics: "basic".to_string(),
            log_level: LogLevel::Info,
            logger: "zap".to_string(),
            log_outputs: vec!["default".to_string()],
            client_tls: TlsInfo::default(),
            peer_tls: TlsInfo::default(),
            peer_client_cert_file: None,
            peer_client_key_file: None,
            cipher_suites: Vec::new(),
            tls_min_version: None,
            tls_max_version: None,
            auth_token: "simple".to_string(),
            auth_token_ttl: 300,
            bcrypt_cost: DEFAULT_BCRYPT_COST,
            strict_reconfig_check: true,
            pre_vote: true,
            force_new_cluster: false,
            enable_pprof: false,
            experimental_initial_corrupt_check: false,
            experimental_watch_progress_notify_interval_ms: DEFAULT_WATCH_PROGRESS_NOTIFY_MS,
            experimental_compaction_batch_limit: DEFAULT_COMPACTION_BATCH_LIMIT,
            experimental_compaction_sleep_interval: DEFAULT_COMPACTION_SLEEP_INTERVAL,
            backend_batch_interval: DEFAULT_BACKEND_BATCH_INTERVAL,
            backend_batch_limit: DEFAULT_BACKEND_BATCH_LIMIT,
            socket_reuse_address: false,
            socket_reuse_port: false,
            debug_freeze_apply: false,
            warnings: Vec::new(),
        }
    }
}

impl Config {
    /// Election timeout in heartbeat ticks.
    pub fn election_ticks(&self) -> u64 {
        self.election_timeout_ms / self.heartbeat_interval_ms.max(1)
    }

    /// The backend quota in bytes, or `None` when quotas are disabled.
    pub fn effective_quota_backend_bytes(&self) -> Option<u64> {
        match self.quota_backend_bytes {
            0 => Some(DEFAULT_QUOTA_BACKEND_BYTES),
            n if n < 0 => None,
            n => Some(n as u64),
        }
    }

    /// How the background compactor batches its work.
    pub fn compaction(&self) -> crate::mvcc::CompactionConfig {
        crate::mvcc::CompactionConfig {
            // As etcd (bbolt's range limit): a negative limit means no limit.
            batch_limit: usize::try_from(self.experimental_compaction_batch_limit)
                .unwrap_or(usize::MAX),
            sleep: self.experimental_compaction_sleep_interval,
        }
    }

    /// The auto-compaction policy (validated by [`parse`]).
    pub fn auto_compaction(&self) -> CompactionRetention {
        parse_auto_compaction_retention(self.auto_compaction_mode, &self.auto_compaction_retention)
            .unwrap_or(CompactionRetention::Disabled)
    }

    /// `initial_cluster` in etcd's `name=url,name=url` notation.
    pub fn initial_cluster_string(&self) -> String {
        values::format_initial_cluster(&self.initial_cluster)
    }
}

/// Auto-compaction policy derived from the mode and the retention text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactionRetention {
    Disabled,
    /// Keep this much history (periodic mode).
    Periodic(Duration),
    /// Keep this many revisions (revision mode).
    Revisions(u64),
}

/// Interprets `--auto-compaction-retention` as etcd does: in periodic mode a
/// bare integer counts hours (`"1"` is one hour) and anything else is a Go
/// duration (`"30m"`, `"1h30m"`, `"10s"`); in revision mode it is a number
/// of revisions. Zero (and an empty string) disables auto-compaction.
pub fn parse_auto_compaction_retention(
    mode: AutoCompactionMode,
    retention: &str,
) -> Result<CompactionRetention, String> {
    let retention = retention.trim();
    if retention.is_empty() {
        return Ok(CompactionRetention::Disabled);
    }
    match mode {
        AutoCompactionMode::Periodic => {
            let d = match retention.parse::<u64>() {
                Ok(hours) => Duration::from_secs(hours.saturating_mul(3600)),
                Err(_) => parse_go_duration(retention).map_err(|e| {
                    format!("expected a number of hours or a duration such as 30m or 1h30m ({e})")
                })?,
            };
            Ok(if d.is_zero() {
                CompactionRetention::Disabled
            } else {
                CompactionRetention::Periodic(d)
            })
        }
        AutoCompactionMode::Revision => {
            let n = retention
                .parse::<u64>()
                .map_err(|_| "expected a non-negative number of revisions".to_string())?;
            Ok(if n == 0 {
                CompactionRetention::Disabled
            } else {
                CompactionRetention::Revisions(n)
            })
        }
    }
}

/// What the binary does after parsing: run the server, or print the
/// version/help text (to stdout) and exit 0.
#[derive(Debug)]
pub enum Command {
    Run(Box<Config>),
    PrintVersion(String),
    PrintHelp(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown flag --{0}")]
    UnknownFlag(String),
    #[error("flag needs an argument: --{0}")]
    MissingFlagValue(String),
    #[error("bad flag syntax: {0}")]
    BadFlagSyntax(String),
    #[error("'{0}' is not a valid flag")]
    UnexpectedArgument(String),
    #[error("the '{0}' subcommand of etcd is not supported by etcd-rs")]
    UnsupportedSubcommand(String),
    #[error("command-line argument is not valid UTF-8: {0:?}")]
    NonUtf8Argument(OsString),
    #[error("invalid value {value:?} for flag --{flag}: {reason}")]
    InvalidFlagValue {
        flag: String,
        value: String,
        reason: String,
    },
    #[error("{key}: invalid value {value:?}: {reason}")]
    InvalidEnvValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error("{}:{line}: {key}: invalid value {value:?}: {reason}", path.display())]
    InvalidFileValue {
        path: PathBuf,
        line: usize,
        key: String,
        value: String,
        reason: String,
    },
    #[error("{}:{line}: unknown key {key}", path.display())]
    UnknownFileKey {
        path: PathBuf,
        line: usize,
        key: String,
    },
    #[error("{}:{line}: {reason}", path.display())]
    MalformedFileLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    ConfigFileSyntax { path: PathBuf, message: String },
    #[error("{}: {key}: invalid value {value:?}: {reason}", path.display())]
    InvalidConfigFileValue {
        path: PathBuf,
        key: String,
        value: String,
        reason: String,
    },
    /// A combination of settings etcd rejects; the message is etcd's.
    #[error("{0}")]
    Invalid(String),
}

/// Where a setting came from.
#[derive(Debug, Clone)]
enum Origin {
    Flag,
    Env(String),
    File { path: PathBuf, line: usize },
    Yaml(PathBuf),
}

impl Origin {
    fn describe(&self) -> String {
        match self {
            Origin::Flag => String::new(),
            Origin::Env(key) => format!(" (set by environment variable {key})"),
            Origin::File { path, line } => format!(" (set in {}:{line})", path.display()),
            Origin::Yaml(path) => format!(" (set in {})", path.display()),
        }
    }
}

/// A configuration being assembled, with the settings that are only needed
/// for validation.
struct Draft {
    cfg: Config,
    data_dir: Option<PathBuf>,
    initial_cluster: Option<Vec<(String, String)>>,
    discovery: String,
    discovery_srv: String,
    lease_checkpoint: bool,
    lease_checkpoint_persist: bool,
    compact_hash_check_time: Duration,
    tracing: bool,
    tracing_rate: i64,
    log_rotation: bool,
    /// `--feature-gates` as given, and its pairs in order.
    feature_gates_text: String,
    feature_gates: Vec<(String, bool)>,
    set: BTreeMap<&'static str, Origin>,
}

impl Draft {
    fn new() -> Draft {
        Draft {
            cfg: Config::default(),
            data_dir: None,
            initial_cluster: None,
            discovery: String::new(),
            discovery_srv: String::new(),
            lease_checkpoint: false,
            lease_checkpoint_persist: false,
            compact_hash_check_time: Duration::from_secs(60),
            tracing: false,
            tracing_rate: 0,
            log_rotation: false,
            feature_gates_text: String::new(),
            feature_gates: Vec::new(),
            set: BTreeMap::new(),
        }
    }

    fn apply(
        &mut self,
        spec: &'static FlagSpec,
        value: &str,
        origin: Origin,
    ) -> Result<(), String> {
        (spec.set)(self, value)?;
        self.set.insert(spec.name, origin);
        Ok(())
    }

    fn is_set(&self, flag: &str) -> bool {
        self.set.contains_key(flag)
    }
}

/// The command line after splitting, before values are applied.
struct Args {
    values: Vec<(&'static FlagSpec, String)>,
    names: HashSet<&'static str>,
    version: bool,
    config_file: Option<String>,
    conf_file: Option<String>,
}

enum ArgsOutcome {
    Help,
    Parsed(Args),
}

/// Splits argv the way Go's `flag` package does: `-name`, `--name`,
/// `-name=value`, `--name value`; boolean flags never take the next argument;
/// parsing stops at `--` or at the first non-flag argument, which is an error.
fn split_args(args: &[OsString]) -> Result<ArgsOutcome, ConfigError> {
    let mut out = Args {
        values: Vec::new(),
        names: HashSet::new(),
        version: false,
        config_file: None,
        conf_file: None,
    };
    let mut strs = Vec::with_capacity(args.len());
    for a in args.iter().skip(1) {
        strs.push(
            a.to_str()
                .ok_or_else(|| ConfigError::NonUtf8Argument(a.clone()))?,
        );
    }
    if let Some(first) = strs.first()
        && matches!(*first, "gateway" | "grpc-proxy")
    {
        return Err(ConfigError::UnsupportedSubcommand(first.to_string()));
    }
    let mut i = 0;
    while i < strs.len() {
        let arg = strs[i];
        if arg.len() < 2 || !arg.starts_with('-') {
            break;
        }
        let mut body = &arg[1..];
        if let Some(rest) = body.strip_prefix('-') {
            if rest.is_empty() {
                i += 1;
                break;
            }
            body = rest;
        }
        if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
            return Err(ConfigError::BadFlagSyntax(arg.to_string()));
        }
        i += 1;
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        if name == "h" || name == "help" {
            return Ok(ArgsOutcome::Help);
        }
        let spec = flags::lookup(name).ok_or_else(|| ConfigError::UnknownFlag(name.to_string()))?;
        let value = match (inline, spec.arg) {
            (Some(v), _) => v.to_string(),
            (None, flags::Arg::Bool) => "true".to_string(),
            (None, _) => {
                let v = strs
                    .get(i)
                    .ok_or_else(|| ConfigError::MissingFlagValue(name.to_string()))?;
                i += 1;
                v.to_string()
            }
        };
        let invalid = |reason: String| ConfigError::InvalidFlagValue {
            flag: spec.name.to_string(),
            value: value.clone(),
            reason,
        };
        match spec.name {
            "version" => out.version = values::parse_bool(&value).map_err(invalid)?,
            "config-file" => out.config_file = Some(value).filter(|v| !v.is_empty()),
            "conf-file" => out.conf_file = Some(value).filter(|v| !v.is_empty()),
            _ => {
                out.names.insert(spec.name);
                out.values.push((spec, value));
            }
        }
    }
    if let Some(rest) = strs.get(i) {
        return Err(ConfigError::UnexpectedArgument(rest.to_string()));
    }
    Ok(ArgsOutcome::Parsed(out))
}

/// The `--version` output, in etcd's format.
pub fn version_text() -> String {
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        other => other,
    };
    format!(
        "etcd Version: {SERVER_VERSION}\nGit SHA: etcd-rs-{}\nGo Version: go1.22.0 (etcd-rs; rust)\nGo OS/Arch: {os}/{arch}\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// The `--help` output.
pub fn help_text() -> String {
    flags::help_text()
}

/// Parses the command line (`args[0]` is the program name), the process
/// environment and the conf file, and returns what to do.
pub fn parse(args: Vec<OsString>, env: &HashMap<String, String>) -> Result<Command, ConfigError> {
    parse_with_default_conf(args, env, Path::new(DEFAULT_CONF_FILE))
}

/// [`parse`] with another default conf file location.
fn parse_with_default_conf(
    args: Vec<OsString>,
    env: &HashMap<String, String>,
    default_conf: &Path,
) -> Result<Command, ConfigError> {
    let args = match split_args(&args)? {
        ArgsOutcome::Help => return Ok(Command::PrintHelp(help_text())),
        ArgsOutcome::Parsed(a) => a,
    };
    if args.version {
        return Ok(Command::PrintVersion(version_text()));
    }
    let env_value = |key: &str| env.get(key).filter(|v| !v.is_empty()).cloned();

    let (conf_path, conf_required) = match args
        .conf_file
        .clone()
        .or_else(|| env_value("ETCD_CONF_FILE"))
    {
        Some(p) => (PathBuf::from(p), true),
        None => (default_conf.to_path_buf(), false),
    };
    let conf_entries = conffile::read(&conf_path, conf_required)?.unwrap_or_default();
    from_sources(&args, env, &conf_path, &conf_entries)
}

/// The configuration from the split command line, the environment and the
/// conf file's entries (a YAML file named by one of them is read here).
fn from_sources(
    args: &Args,
    env: &HashMap<String, String>,
    conf_path: &Path,
    conf_entries: &[conffile::Entry],
) -> Result<Command, ConfigError> {
    let env_value = |key: &str| env.get(key).filter(|v| !v.is_empty()).cloned();
    for e in conf_entries {
        if flags::lookup_env(&e.key).is_none() && !OTHER_ETCD_VARIABLES.contains(&e.key.as_str()) {
            return Err(ConfigError::UnknownFileKey {
                path: conf_path.to_path_buf(),
                line: e.line,
                key: e.key.clone(),
            });
        }
    }

    let yaml_file = args
        .config_file
        .clone()
        .or_else(|| env_value("ETCD_CONFIG_FILE"))
        .or_else(|| {
            conf_entries
                .iter()
                .rev()
                .find(|e| e.key == "ETCD_CONFIG_FILE" && !e.value.is_empty())
                .map(|e| e.value.clone())
        });
    if let Some(yaml_file) = yaml_file {
        return from_yaml(Path::new(&yaml_file), args, env, conf_path, conf_entries);
    }

    let mut draft = Draft::new();
    let mut warnings = Vec::new();

    for e in conf_entries {
        let Some(spec) = flags::lookup_env(&e.key) else {
            continue;
        };
        match spec.name {
            "config-file" => continue,
            "conf-file" => {
                warnings.push(format!(
                    "{}:{}: ETCD_CONF_FILE has no effect inside a conf file; ignoring it",
                    conf_path.display(),
                    e.line
                ));
                continue;
            }
            "version" => {
                warnings.push(format!(
                    "{}:{}: cannot set special variable ETCD_VERSION; ignoring it",
                    conf_path.display(),
                    e.line
                ));
                continue;
            }
            _ => {}
        }
        if e.value.is_empty() {
            continue;
        }
        let origin = Origin::File {
            path: conf_path.to_path_buf(),
            line: e.line,
        };
        draft
            .apply(spec, &e.value, origin)
            .map_err(|reason| ConfigError::InvalidFileValue {
                path: conf_path.to_path_buf(),
                line: e.line,
                key: e.key.clone(),
                value: e.value.clone(),
                reason,
            })?;
    }

    let mut keys: Vec<&String> = env.keys().filter(|k| k.starts_with("ETCD_")).collect();
    keys.sort();
    for key in keys {
        let value = &env[key];
        let Some(spec) = flags::lookup_env(key) else {
            if OTHER_ETCD_VARIABLES.contains(&key.as_str()) {
                continue;
            }
            warnings.push(format!(
                "unrecognized environment variable {key}={value}; ignoring it"
            ));
            continue;
        };
        match spec.name {
            "config-file" | "conf-file" => continue,
            "version" => {
                if !value.is_empty() {
                    warnings.push(format!(
                        "cannot set special environment variable {key}={value}; ignoring it"
                    ));
                }
                continue;
            }
            _ => {}
        }
        if args.names.contains(spec.name) {
            if !value.is_empty() {
                warnings.push(format!(
                    "environment variable {key} is shadowed by the command-line flag --{}; using the flag's value",
                    spec.name
                ));
            }
            continue;
        }
        if value.is_empty() {
            continue;
        }
        draft
            .apply(spec, value, Origin::Env(key.clone()))
            .map_err(|reason| ConfigError::InvalidEnvValue {
                key: key.clone(),
                value: value.clone(),
                reason,
            })?;
    }

    for (spec, value) in &args.values {
        draft
            .apply(spec, value, Origin::Flag)
            .map_err(|reason| ConfigError::InvalidFlagValue {
                flag: spec.name.to_string(),
                value: value.clone(),
                reason,
            })?;
    }

    // As in etcd, setting --listen-client-urls drops the default advertised URL.
    if draft.is_set("listen-client-urls") && !draft.is_set("advertise-client-urls") {
        return Err(ConfigError::Invalid(
            "--advertise-client-urls is required when --listen-client-urls is set explicitly"
                .to_string(),
        ));
    }

    draft.cfg.warnings = warnings;
    finalize(draft).map(|c| Command::Run(Box::new(c)))
}

fn from_yaml(
    path: &Path,
    args: &Args,
    env: &HashMap<String, String>,
    conf_path: &Path,
    conf_entries: &[conffile::Entry],
) -> Result<Command, ConfigError> {
    let mut ignored: Vec<String> = Vec::new();
    for (spec, _) in &args.values {
        let f = format!("--{}", spec.name);
        if !ignored.contains(&f) {
            ignored.push(f);
        }
    }
    let mut keys: Vec<&String> = env
        .iter()
        .filter(|(k, v)| {
            k.starts_with("ETCD_")
                && !v.is_empty()
                && !matches!(k.as_str(), "ETCD_CONFIG_FILE" | "ETCD_CONF_FILE")
        })
        .map(|(k, _)| k)
        .collect();
    keys.sort();
    ignored.extend(keys.into_iter().cloned());
    for e in conf_entries {
        if e.key != "ETCD_CONFIG_FILE" && !e.value.is_empty() {
            ignored.push(format!("{} ({}:{})", e.key, conf_path.display(), e.line));
        }
    }
    let mut note = format!(
        "configuration loaded from {}; other command-line flags, ETCD_* environment variables and conf file entries are ignored",
        path.display()
    );
    if !ignored.is_empty() {
        note.push_str(&format!(" (ignored: {})", ignored.join(", ")));
    }

    let mut draft = Draft::new();
    draft.cfg.warnings.push(note);
    yaml::load(path, &mut draft)?;
    finalize(draft).map(|c| Command::Run(Box::new(c)))
}

/// The configuration a conf file holding `text` gives, with no flags and no
/// environment (for the fuzz targets). An `ETCD_CONFIG_FILE` entry is left
/// out, so no file is read.
pub(crate) fn from_conf_text(text: &str) -> Result<Command, ConfigError> {
    let path = Path::new(DEFAULT_CONF_FILE);
    let mut entries = conffile::parse_text(path, text)?;
    entries.retain(|e| e.key != "ETCD_CONFIG_FILE");
    let args = Args {
        values: Vec::new(),
        names: HashSet::new(),
        version: false,
        config_file: None,
        conf_file: None,
    };
    from_sources(&args, &HashMap::new(), path, &entries)
}

/// The configuration a YAML configuration file holding `text` gives (for the
/// fuzz targets).
pub(crate) fn from_yaml_text(text: &str) -> Result<Config, ConfigError> {
    let mut draft = Draft::new();
    yaml::load_str(Path::new("etcd.conf.yml"), text, &mut draft)?;
    finalize(draft)
}

/// Applies derived defaults and etcd's consistency checks.
fn finalize(mut d: Draft) -> Result<Config, ConfigError> {
    let invalid = |m: String| ConfigError::Invalid(m);
    gates::finish(&mut d).map_err(invalid)?;
    let mut cfg = d.cfg;

    cfg.data_dir = match d.data_dir {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => PathBuf::from(format!("{}.etcd", cfg.name)),
    };

    cfg.initial_cluster = match d.initial_cluster {
        Some(c) => c,
        None if !d.discovery.is_empty() || !d.discovery_srv.is_empty() => Vec::new(),
        None => {
            let name = if cfg.name.is_empty() {
                "default"
            } else {
                &cfg.name
            };
            cfg.initial_advertise_peer_urls
                .iter()
                .map(|u| (name.to_string(), u.clone()))
                .collect()
        }
    };

    if cfg.log_outputs.is_empty() {
        cfg.log_outputs = vec!["default".to_string()];
    }
    if cfg.log_outputs.len() > 1 {
        if cfg.log_outputs.iter().any(|o| o == "default") {
            return Err(invalid(
                "multi logoutput for \"default\" is not supported yet".to_string(),
            ));
        }
        if cfg.log_outputs.iter().any(|o| o == "systemd/journal") {
            return Err(invalid(format!(
                "running with systemd/journal but other '--log-outputs' values ({:?}) are configured with 'default'; override 'default' value with something else",
                cfg.log_outputs
            )));
        }
    }

    let bootstrap = [
        !d.discovery.is_empty(),
        !cfg.initial_cluster.is_empty(),
        !d.discovery_srv.is_empty(),
    ];
    if bootstrap.iter().filter(|b| **b).count() > 1 {
        return Err(invalid(
            "multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\" or \"discovery-srv\"".to_string(),
        ));
    }

    if cfg.heartbeat_interval_ms == 0 {
        return Err(invalid(format!(
            "--heartbeat-interval must be >0 (set to {}ms)",
            cfg.heartbeat_interval_ms
        )));
    }
    if cfg.election_timeout_ms == 0 {
        return Err(invalid(format!(
            "--election-timeout must be >0 (set to {}ms)",
            cfg.election_timeout_ms
        )));
    }
    if cfg.heartbeat_interval_ms.saturating_mul(5) > cfg.election_timeout_ms {
        return Err(invalid(format!(
            "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
            cfg.election_timeout_ms, cfg.heartbeat_interval_ms
        )));
    }
    if cfg.election_timeout_ms > MAX_ELECTION_TIMEOUT_MS {
        return Err(invalid(format!(
            "--election-timeout[{}ms] is too long, and should be set less than {}ms",
            cfg.election_timeout_ms, MAX_ELECTION_TIMEOUT_MS
        )));
    }

    if d.lease_checkpoint_persist && !d.lease_checkpoint {
        return Err(invalid(
            "setting experimental-enable-lease-checkpoint-persist requires experimental-enable-lease-checkpoint".to_string(),
        ));
    }
    if d.compact_hash_check_time.is_zero() {
        return Err(invalid(
            "--experimental-compact-hash-check-time must be >0 (set to 0s)".to_string(),
        ));
    }

    let tls_rank = |v: &Option<String>| match v.as_deref() {
        Some("TLS1.3") => 13,
        Some(_) => 12,
        None => 0,
    };
    let min_rank = tls_rank(&cfg.tls_min_version).max(12);
    let max_rank = tls_rank(&cfg.tls_max_version);
    if max_rank != 0 && min_rank > max_rank {
        return Err(invalid(format!(
            "min version ({}) is greater than max version ({})",
            cfg.tls_min_version.as_deref().unwrap_or("TLS1.2"),
            cfg.tls_max_version.as_deref().unwrap_or("")
        )));
    }
    if min_rank == 13 && !cfg.cipher_suites.is_empty() {
        return Err(invalid(
            "cipher suites cannot be configured when only TLS1.3 is enabled".to_string(),
        ));
    }

    if d.tracing {
        if d.tracing_rate < 0 {
            return Err(invalid(
                "distributed tracing configurition is not valid: (tracing sampling rate must be positive)".to_string(),
            ));
        }
        if d.tracing_rate > 1_000_000 {
            return Err(invalid(
                "distributed tracing configurition is not valid: (tracing sampling rate must be less than 1000000)".to_string(),
            ));
        }
    }

    if cfg.auto_compaction_retention.trim().is_empty() {
        cfg.auto_compaction_retention = "0".to_string();
    }
    if let Err(e) =
        parse_auto_compaction_retention(cfg.auto_compaction_mode, &cfg.auto_compaction_retention)
    {
        return Err(invalid(format!(
            "invalid --auto-compaction-retention {:?} for --auto-compaction-mode={}: {e}",
            cfg.auto_compaction_retention,
            cfg.auto_compaction_mode.as_str()
        )));
    }

    if !(4..=31).contains(&cfg.bcrypt_cost) {
        cfg.warnings.push(format!(
            "--bcrypt-cost {} is outside the valid range 4..31; using the default {DEFAULT_BCRYPT_COST}",
            cfg.bcrypt_cost
        ));
        cfg.bcrypt_cost = DEFAULT_BCRYPT_COST;
    }
    if cfg.experimental_compaction_batch_limit == 0 {
        cfg.experimental_compaction_batch_limit = DEFAULT_COMPACTION_BATCH_LIMIT;
    }
    if cfg.experimental_compaction_sleep_interval.is_zero() {
        cfg.experimental_compaction_sleep_interval = DEFAULT_COMPACTION_SLEEP_INTERVAL;
    }
    if cfg.backend_batch_interval.is_zero() {
        cfg.backend_batch_interval = DEFAULT_BACKEND_BATCH_INTERVAL;
    }
    if cfg.experimental_watch_progress_notify_interval_ms == 0 {
        cfg.experimental_watch_progress_notify_interval_ms = DEFAULT_WATCH_PROGRESS_NOTIFY_MS;
    }
    if d.log_rotation && cfg.log_outputs.len() != 1 {
        return Err(invalid(
            "--log-outputs requires a single file path when --log-rotate-config-json is defined"
                .to_string(),
        ));
    }

    // Flags honoured only in part: a value that would change nothing says so.
    let ignored: Vec<&str> = cfg
        .log_outputs
        .iter()
        .map(String::as_str)
        .filter(|o| !matches!(*o, "default" | "stderr" | "systemd/journal"))
        .collect();
    if !ignored.is_empty() {
        cfg.warnings.push(format!(
            "--log-outputs {} has no effect in etcd-rs: logging to stderr (or to the journal when stderr is the journal)",
            ignored.join(",")
        ));
    }

    for spec in flags::FLAGS {
        let Some(origin) = d.set.get(spec.name) else {
            continue;
        };
        match spec.support {
            Support::No if spec.name == "enable-v2" => cfg.warnings.push(format!(
                "flag --enable-v2 is accepted but the v2 key space is not provided by etcd-rs: only the read-only v2 members API (/v2/members) is served{}",
                origin.describe()
            )),
            Support::No => cfg.warnings.push(format!(
                "flag --{} is accepted but has no effect in etcd-rs{}",
                spec.name,
                origin.describe()
            )),
            Support::Legacy => cfg.warnings.push(format!(
                "flag --{} is no longer supported; ignoring it{}",
                spec.name,
                origin.describe()
            )),
            Support::Yes | Support::Special => {}
        }
    }
    Ok(cfg)
}
