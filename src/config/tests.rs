use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;

const NO_CONF: &str = "/nonexistent/etcd-rs-test/etcd.conf";

/// A file in the temporary directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(ext: &str, content: &str) -> TempFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "etcd-rs-config-test-{}-{}.{ext}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, content).expect("write temp file");
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn argv(args: &[&str]) -> Vec<OsString> {
    std::iter::once("etcd")
        .chain(args.iter().copied())
        .map(OsString::from)
        .collect()
}

fn envmap(vars: &[(&str, &str)]) -> HashMap<String, String> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Command, ConfigError> {
    parse_with_default_conf(argv(args), &envmap(env), Path::new(NO_CONF))
}

fn config(args: &[&str], env: &[(&str, &str)]) -> Config {
    match run(args, env) {
        Ok(Command::Run(c)) => *c,
        Ok(other) => panic!("expected a configuration, got {other:?}"),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn error(args: &[&str], env: &[(&str, &str)]) -> String {
    match run(args, env) {
        Err(e) => e.to_string(),
        Ok(c) => panic!("expected an error, got {c:?}"),
    }
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn defaults() {
    let c = config(&[], &[]);
    assert_eq!(c.name, "default");
    assert_eq!(c.data_dir, PathBuf::from("default.etcd"));
    assert_eq!(c.wal_dir, None);
    assert_eq!(c.listen_client_urls, ["http://localhost:2379"]);
    assert_eq!(c.advertise_client_urls, ["http://localhost:2379"]);
    assert_eq!(c.listen_peer_urls, ["http://localhost:2380"]);
    assert_eq!(c.initial_advertise_peer_urls, ["http://localhost:2380"]);
    assert_eq!(
        c.initial_cluster,
        pairs(&[("default", "http://localhost:2380")])
    );
    assert_eq!(c.initial_cluster_string(), "default=http://localhost:2380");
    assert_eq!(c.initial_cluster_state, ClusterState::New);
    assert_eq!(c.initial_cluster_token, "etcd-cluster");
    assert_eq!(c.heartbeat_interval_ms, 100);
    assert_eq!(c.election_timeout_ms, 1000);
    assert_eq!(c.election_ticks(), 10);
    assert_eq!(c.snapshot_count, 100_000);
    assert_eq!(c.quota_backend_bytes, 0);
    assert_eq!(
        c.effective_quota_backend_bytes(),
        Some(2 * 1024 * 1024 * 1024)
    );
    assert_eq!(c.max_request_bytes, 1_572_864);
    assert_eq!(c.max_txn_ops, 128);
    assert_eq!(c.max_concurrent_streams, u32::MAX);
    assert_eq!(c.auto_compaction_mode, AutoCompactionMode::Periodic);
    assert_eq!(c.auto_compaction_retention, "0");
    assert_eq!(c.auto_compaction(), CompactionRetention::Disabled);
    assert!(c.listen_metrics_urls.is_empty());
    assert_eq!(c.metrics, "basic");
    assert_eq!(c.log_level, LogLevel::Info);
    assert_eq!(c.logger, "zap");
    assert_eq!(c.log_outputs, ["default"]);
    assert_eq!(c.client_tls, TlsInfo::default());
    assert_eq!(c.peer_tls, TlsInfo::default());
    assert!(c.cipher_suites.is_empty());
    assert_eq!(c.auth_token, "simple");
    assert_eq!(c.auth_token_ttl, 300);
    assert_eq!(c.bcrypt_cost, 10);
    assert!(c.strict_reconfig_check);
    assert!(c.pre_vote);
    assert!(!c.force_new_cluster);
    assert!(!c.enable_pprof);
    assert_eq!(c.experimental_watch_progress_notify_interval_ms, 600_000);
    assert_eq!(c.experimental_compaction_batch_limit, 1000);
    assert!(!c.debug_freeze_apply);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn precedence_flag_over_env_over_file() {
    let conf = TempFile::new(
        "conf",
        "ETCD_NAME=from-file\nETCD_SNAPSHOT_COUNT=1\nETCD_HEARTBEAT_INTERVAL=50\n",
    );
    let c = config(
        &["--name=from-flag"],
        &[
            ("ETCD_CONF_FILE", conf.path()),
            ("ETCD_NAME", "from-env"),
            ("ETCD_SNAPSHOT_COUNT", "2"),
        ],
    );
    assert_eq!(c.name, "from-flag");
    assert_eq!(c.snapshot_count, 2);
    assert_eq!(c.heartbeat_interval_ms, 50);
    assert_eq!(c.data_dir, PathBuf::from("from-flag.etcd"));

    // --conf-file names the file too.
    let c = config(&["--conf-file", conf.path()], &[]);
    assert_eq!(c.name, "from-file");
    assert_eq!(c.snapshot_count, 1);
}

#[test]
fn flag_and_env_both_set() {
    let c = config(
        &["--data-dir", "/flag"],
        &[("ETCD_DATA_DIR", "/env"), ("ETCD_MAX_TXN_OPS", "7")],
    );
    assert_eq!(c.data_dir, PathBuf::from("/flag"));
    assert_eq!(c.max_txn_ops, 7);
    assert_eq!(
        c.warnings,
        [
            "environment variable ETCD_DATA_DIR is shadowed by the command-line flag --data-dir; using the flag's value"
        ]
    );
}

#[test]
fn conf_file_syntax() {
    let conf = TempFile::new(
        "conf",
        "#[Member]\n\
         ETCD_NAME=\"infra1\"\n\
         \n\
         # a comment line\n\
         export ETCD_DATA_DIR = '/srv/etcd data'\n\
         ETCD_LISTEN_PEER_URLS=http://10.0.0.1:2380 # trailing comment\n\
         ETCD_INITIAL_ADVERTISE_PEER_URLS=\"http://10.0.0.1:2380\"\n\
         ETCD_WAL_DIR=\n\
         #[Security]\n\
         ETCD_CLIENT_CERT_AUTH=true\r\n",
    );
    let c = config(&["--conf-file", conf.path()], &[]);
    assert_eq!(c.name, "infra1");
    assert_eq!(c.data_dir, PathBuf::from("/srv/etcd data"));
    assert_eq!(c.listen_peer_urls, ["http://10.0.0.1:2380"]);
    assert_eq!(c.wal_dir, None);
    assert!(c.client_tls.client_cert_auth);
    assert_eq!(
        c.initial_cluster,
        pairs(&[("infra1", "http://10.0.0.1:2380")])
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn conf_file_unknown_key() {
    let conf = TempFile::new("conf", "#[Member]\nETCD_NAME=a\n\nETCD_FOO=bar\n");
    assert_eq!(
        error(&["--conf-file", conf.path()], &[]),
        format!("{}:4: unknown key ETCD_FOO", conf.path())
    );
}

#[test]
fn conf_file_bad_value() {
    let conf = TempFile::new("conf", "# x\nETCD_HEARTBEAT_INTERVAL=\"abc\"\n");
    assert_eq!(
        error(&[], &[("ETCD_CONF_FILE", conf.path())]),
        format!(
            "{}:2: ETCD_HEARTBEAT_INTERVAL: invalid value \"abc\": expected an integer (milliseconds)",
            conf.path()
        )
    );
}

#[test]
fn conf_file_missing() {
    // A missing default file is skipped; a named one is an error.
    config(&[], &[]);
    let e = error(&["--conf-file", "/nonexistent/x.conf"], &[]);
    assert!(e.starts_with("cannot read /nonexistent/x.conf: "), "{e}");
}

#[test]
fn shipped_conf_file() {
    let conf = TempFile::new("conf", include_str!("../../conf/etcd.conf"));
    let c = config(&[], &[("ETCD_CONF_FILE", conf.path())]);
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/etcd"));
    assert_eq!(c.name, "default");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    // Every commented-out setting is valid once uncommented.
    let uncommented: String = include_str!("../../conf/etcd.conf")
        .lines()
        .map(|l| {
            l.strip_prefix('#')
                .filter(|s| s.starts_with("ETCD_"))
                .unwrap_or(l)
        })
        .filter(|l| !l.starts_with("ETCD_LISTEN_CLIENT_URLS"))
        .map(|l| format!("{l}\n"))
        .collect();
    let conf = TempFile::new("conf", &uncommented);
    let c = config(&[], &[("ETCD_CONF_FILE", conf.path())]);
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/etcd"));
}

#[test]
fn env_errors_and_warnings() {
    assert_eq!(
        error(&[], &[("ETCD_SNAPSHOT_COUNT", "lots")]),
        "ETCD_SNAPSHOT_COUNT: invalid value \"lots\": expected an integer"
    );
    let conf = TempFile::new("conf", "");
    let c = config(
        &[],
        &[
            ("ETCD_FOO", "1"),
            ("ETCDCTL_API", "3"),
            ("ETCDCTL_ENDPOINTS", "x"),
            ("ETCD_CONF_FILE", conf.path()),
            ("ETCD_NAME", ""),
            ("ETCD_UNSUPPORTED_ARCH", "arm64"),
            ("PATH", "/bin"),
        ],
    );
    assert_eq!(c.name, "default");
    assert_eq!(
        c.warnings,
        ["unrecognized environment variable ETCD_FOO=1; ignoring it"]
    );
}

#[test]
fn explicitly_missing_conf_file_from_env() {
    let e = error(&[], &[("ETCD_CONF_FILE", NO_CONF)]);
    assert!(e.starts_with(&format!("cannot read {NO_CONF}")), "{e}");
}

#[test]
fn version_text_format() {
    let Ok(Command::PrintVersion(text)) = run(&["--version"], &[]) else {
        panic!("expected the version text");
    };
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0], "etcd Version: 3.5.17");
    assert_eq!(
        lines[1],
        format!("Git SHA: etcd-rs-{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(lines[2], "Go Version: go1.22.0 (etcd-rs; rust)");
    assert!(lines[3].starts_with("Go OS/Arch: "));
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    assert_eq!(lines[3], "Go OS/Arch: linux/amd64");
    #[cfg(all(target_os = "linux", target_arch = "aarch64"))]
    assert_eq!(lines[3], "Go OS/Arch: linux/arm64");
    assert!(text.ends_with('\n'));
    assert!(matches!(
        run(&["-version"], &[]),
        Ok(Command::PrintVersion(_))
    ));
    assert!(matches!(
        run(&["--version=false"], &[]),
        Ok(Command::Run(_))
    ));
}

#[test]
fn help() {
    for a in ["-h", "--help", "-help", "--h"] {
        let Ok(Command::PrintHelp(text)) = run(&[a], &[]) else {
            panic!("expected help for {a}");
        };
        assert!(text.contains("--initial-cluster-token 'etcd-cluster'"));
        assert!(text.contains("--enable-v2 'false'"));
        assert!(!text.contains("--cluster-active-size"));
    }
}

#[test]
fn election_heartbeat_validation() {
    assert_eq!(
        error(
            &["--heartbeat-interval", "300", "--election-timeout", "1000"],
            &[]
        ),
        "--election-timeout[1000ms] should be at least as 5 times as --heartbeat-interval[300ms]"
    );
    assert_eq!(
        error(&["--heartbeat-interval=0"], &[]),
        "--heartbeat-interval must be >0 (set to 0ms)"
    );
    assert_eq!(
        error(&["--election-timeout=60000"], &[]),
        "--election-timeout[60000ms] is too long, and should be set less than 50000ms"
    );
    let c = config(
        &["--heartbeat-interval=200", "--election-timeout=1000"],
        &[],
    );
    assert_eq!(c.election_ticks(), 5);
}

#[test]
fn initial_cluster_follows_name() {
    let c = config(&["--name", "infra0"], &[]);
    assert_eq!(
        c.initial_cluster,
        pairs(&[("infra0", "http://localhost:2380")])
    );
    assert_eq!(c.data_dir, PathBuf::from("infra0.etcd"));

    let c = config(
        &[
            "--name=infra0",
            "--initial-advertise-peer-urls=http://10.0.0.2:2380,http://10.0.0.1:2380",
        ],
        &[],
    );
    assert_eq!(
        c.initial_cluster,
        pairs(&[
            ("infra0", "http://10.0.0.1:2380"),
            ("infra0", "http://10.0.0.2:2380")
        ])
    );

    let c = config(
        &[
            "--name=a",
            "--initial-cluster=a=http://10.0.0.1:2380,b=http://10.0.0.2:2380,a=http://10.0.0.3:2380",
        ],
        &[],
    );
    assert_eq!(
        c.initial_cluster,
        pairs(&[
            ("a", "http://10.0.0.1:2380"),
            ("b", "http://10.0.0.2:2380"),
            ("a", "http://10.0.0.3:2380"),
        ])
    );

    // Discovery replaces the default initial cluster, as in etcd.
    let c = config(&["--discovery-srv=example.com"], &[]);
    assert!(c.initial_cluster.is_empty());
    assert_eq!(
        error(
            &[
                "--discovery-srv=example.com",
                "--initial-cluster=a=http://h:1"
            ],
            &[]
        ),
        "multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\" or \"discovery-srv\""
    );
}

#[test]
fn go_style_flags() {
    let c = config(
        &[
            "-name",
            "n1",
            "--snapshot-count=5",
            "-max-txn-ops=9",
            "--force-new-cluster",
            "-pre-vote=false",
            "--strict-reconfig-check=0",
            "--initial-cluster-state",
            "existing",
            "--log-level",
            "DEBUG",
        ],
        &[],
    );
    assert_eq!(c.name, "n1");
    assert_eq!(c.snapshot_count, 5);
    assert_eq!(c.max_txn_ops, 9);
    assert!(c.force_new_cluster);
    assert!(!c.pre_vote);
    assert!(!c.strict_reconfig_check);
    assert_eq!(c.initial_cluster_state, ClusterState::Existing);
    assert_eq!(c.log_level, LogLevel::Debug);

    // A value after a boolean flag is not consumed; parsing stops there.
    assert_eq!(
        error(&["--force-new-cluster", "false"], &[]),
        "'false' is not a valid flag"
    );
    assert_eq!(
        error(&["--", "--name=x"], &[]),
        "'--name=x' is not a valid flag"
    );
    assert_eq!(error(&["--bogus=1"], &[]), "unknown flag --bogus");
    assert_eq!(error(&["--name"], &[]), "flag needs an argument: --name");
    assert_eq!(error(&["---name=x"], &[]), "bad flag syntax: ---name=x");
    assert_eq!(
        error(&["--heartbeat-interval", "x"], &[]),
        "invalid value \"x\" for flag --heartbeat-interval: expected an integer (milliseconds)"
    );
    assert_eq!(
        error(&["--pre-vote=maybe"], &[]),
        "invalid value \"maybe\" for flag --pre-vote: expected a boolean (true or false)"
    );
    assert_eq!(
        error(&["--initial-cluster-state=old"], &[]),
        "invalid value \"old\" for flag --initial-cluster-state: expected one of \"new\", \"existing\""
    );
    assert_eq!(
        error(&["gateway", "start"], &[]),
        "the 'gateway' subcommand of etcd is not supported by etcd-rs"
    );
}

#[test]
fn urls() {
    let c = config(
        &[
            "--listen-client-urls=http://0.0.0.0:2379,https://127.0.0.1:2379",
            "--advertise-client-urls",
            "http://node1.example.com:2379",
            "--listen-metrics-urls=http://127.0.0.1:2381",
        ],
        &[],
    );
    assert_eq!(
        c.listen_client_urls,
        ["http://0.0.0.0:2379", "https://127.0.0.1:2379"]
    );
    assert_eq!(c.advertise_client_urls, ["http://node1.example.com:2379"]);
    assert_eq!(c.listen_metrics_urls, ["http://127.0.0.1:2381"]);

    assert_eq!(
        error(&["--listen-client-urls=http://0.0.0.0:2379"], &[]),
        "--advertise-client-urls is required when --listen-client-urls is set explicitly"
    );
    assert_eq!(
        error(&["--listen-peer-urls=http://node1:2380"], &[]),
        "invalid value \"http://node1:2380\" for flag --listen-peer-urls: expected IP in URL for binding (http://node1:2380)"
    );
    let e = error(&["--advertise-client-urls=localhost:2379"], &[]);
    assert!(
        e.starts_with(
            "invalid value \"localhost:2379\" for flag --advertise-client-urls: URL scheme must be"
        ),
        "{e}"
    );
    let e = error(&["--initial-cluster=a=http://h"], &[]);
    assert!(
        e.starts_with("invalid value \"a=http://h\" for flag --initial-cluster: member \"a\""),
        "{e}"
    );
}

#[test]
fn tls_settings() {
    let c = config(
        &[
            "--cert-file=/c.pem",
            "--key-file=/k.pem",
            "--trusted-ca-file=/ca.pem",
            "--client-cert-auth",
            "--client-crl-file=/crl",
            "--client-cert-allowed-hostname=a.example.com",
            "--peer-auto-tls",
            "--peer-cert-allowed-cn=etcd,etcd2",
            "--peer-client-cert-file=/pc.pem",
            "--peer-client-key-file=/pk.pem",
            "--cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            "--tls-max-version=TLS1.3",
        ],
        &[],
    );
    assert_eq!(c.client_tls.cert_file, Some(PathBuf::from("/c.pem")));
    assert_eq!(c.client_tls.key_file, Some(PathBuf::from("/k.pem")));
    assert_eq!(c.client_tls.trusted_ca_file, Some(PathBuf::from("/ca.pem")));
    assert!(c.client_tls.client_cert_auth);
    assert_eq!(c.client_tls.crl_file, Some(PathBuf::from("/crl")));
    assert_eq!(c.client_tls.allowed_hostnames(), ["a.example.com"]);
    assert!(c.peer_tls.auto_tls);
    assert!(c.peer_tls.is_empty());
    assert_eq!(c.peer_tls.allowed_cns(), ["etcd", "etcd2"]);
    assert_eq!(c.peer_client_cert_file, Some(PathBuf::from("/pc.pem")));
    assert_eq!(c.peer_client_key_file, Some(PathBuf::from("/pk.pem")));
    assert_eq!(c.cipher_suites, ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]);
    assert_eq!(c.tls_max_version.as_deref(), Some("TLS1.3"));
    assert_eq!(
        error(
            &["--tls-min-version=TLS1.3", "--tls-max-version=TLS1.2"],
            &[]
        ),
        "min version (TLS1.3) is greater than max version (TLS1.2)"
    );
    assert_eq!(
        error(&["--tls-min-version=TLS1.3", "--cipher-suites=X"], &[]),
        "cipher suites cannot be configured when only TLS1.3 is enabled"
    );
}

#[test]
fn accepted_flags_without_effect() {
    let c = config(
        &[
            "--enable-v2",
            "--max-wals=3",
            "--grpc-keepalive-min-time=1s",
            "-snapshot",
        ],
        &[("ETCD_UNSAFE_NO_FSYNC", "true")],
    );
    assert_eq!(
        c.warnings,
        [
            "flag --max-wals is accepted but has no effect in etcd-rs",
            "flag --grpc-keepalive-min-time is accepted but has no effect in etcd-rs",
            "flag --enable-v2 is accepted but the v2 key space is not provided by etcd-rs: only the read-only v2 members API (/v2/members) is served",
            "flag --unsafe-no-fsync is accepted but has no effect in etcd-rs (set by environment variable ETCD_UNSAFE_NO_FSYNC)",
            "flag --snapshot is no longer supported; ignoring it",
        ]
    );
    assert_eq!(
        error(&["--grpc-keepalive-interval=soon"], &[]),
        "invalid value \"soon\" for flag --grpc-keepalive-interval: expected a duration such as 500ms, 10s, 5m or 1h30m"
    );
    let c = config(
        &[
            "--grpc-keepalive-interval=1m",
            "--grpc-keepalive-timeout=3s",
        ],
        &[],
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.grpc_keepalive_interval, Duration::from_secs(60));
    assert_eq!(c.grpc_keepalive_timeout, Duration::from_secs(3));
}

#[test]
fn other_values() {
    let c = config(
        &[
            "--quota-backend-bytes=-1",
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=1000",
            "--experimental-watch-progress-notify-interval=5s",
            "--experimental-compaction-batch-limit=0",
            "--max-concurrent-streams=100",
            "--log-outputs=stderr,/var/log/etcd.log",
            "--bcrypt-cost=99",
        ],
        &[],
    );
    assert_eq!(c.effective_quota_backend_bytes(), None);
    assert_eq!(c.auto_compaction(), CompactionRetention::Revisions(1000));
    assert_eq!(c.experimental_watch_progress_notify_interval_ms, 5000);
    assert_eq!(c.experimental_compaction_batch_limit, 1000);
    assert_eq!(c.max_concurrent_streams, 100);
    assert_eq!(c.log_outputs, ["/var/log/etcd.log", "stderr"]);
    assert_eq!(c.bcrypt_cost, 10);
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(
        c.warnings
            .iter()
            .any(|w| w.starts_with("--log-outputs /var/log/etcd.log has no effect")),
        "{:?}",
        c.warnings
    );
    let c = config(&["--metrics=extensive", "--enable-pprof"], &[]);
    assert_eq!(
        c.warnings,
        ["flag --enable-pprof is accepted but has no effect in etcd-rs"]
    );
    let c = config(
        &[
            "--experimental-compaction-batch-limit=-1",
            "--experimental-compaction-sleep-interval=0s",
        ],
        &[],
    );
    assert_eq!(c.compaction().batch_limit, usize::MAX);
    assert_eq!(c.compaction().sleep, Duration::from_millis(10));
    assert_eq!(
        error(&["--log-outputs=default,stderr"], &[]),
        "multi logoutput for \"default\" is not supported yet"
    );
    assert_eq!(
        error(
            &[
                "--auto-compaction-mode=revision",
                "--auto-compaction-retention=5m"
            ],
            &[]
        ),
        "invalid --auto-compaction-retention \"5m\" for --auto-compaction-mode=revision: expected a non-negative number of revisions"
    );
    assert_eq!(
        error(&["--max-concurrent-streams=4294967296"], &[]),
        "invalid value \"4294967296\" for flag --max-concurrent-streams: value out of range"
    );
}

#[test]
fn auto_compaction_retention_helper() {
    use AutoCompactionMode::*;
    let p = parse_auto_compaction_retention;
    assert_eq!(p(Periodic, "0"), Ok(CompactionRetention::Disabled));
    assert_eq!(
        p(Periodic, "1"),
        Ok(CompactionRetention::Periodic(Duration::from_secs(3600)))
    );
    assert_eq!(
        p(Periodic, "30m"),
        Ok(CompactionRetention::Periodic(Duration::from_secs(1800)))
    );
    assert_eq!(
        p(Periodic, "1h30m"),
        Ok(CompactionRetention::Periodic(Duration::from_secs(5400)))
    );
    assert_eq!(
        p(Periodic, "10s"),
        Ok(CompactionRetention::Periodic(Duration::from_secs(10)))
    );
    assert!(p(Periodic, "abc").is_err());
    assert!(p(Periodic, "-1").is_err());
    assert_eq!(p(Revision, "0"), Ok(CompactionRetention::Disabled));
    assert_eq!(p(Revision, "500"), Ok(CompactionRetention::Revisions(500)));
    assert!(p(Revision, "1h").is_err());
}

#[test]
fn yaml_config_file() {
    let yaml = TempFile::new(
        "yaml",
        "name: infra1
data-dir: /var/lib/etcd-y
listen-client-urls: http://10.0.0.1:2379,http://127.0.0.1:2379
listen-peer-urls: ''
initial-cluster: infra1=http://10.0.0.1:2380,infra2=http://10.0.0.2:2380
initial-cluster-state: existing
heartbeat-interval: 200
election-timeout: 2000
snapshot-count: 5000
quota-backend-bytes: 8589934592
auto-compaction-mode: periodic
auto-compaction-retention: \"1h\"
log-level: warn
logger: zap
log-outputs: [stderr]
experimental-watch-progress-notify-interval: 5000000000
wal-dir:
client-transport-security:
  cert-file: /c.pem
  key-file: /k.pem
  client-cert-auth: true
  trusted-ca-file: /ca.pem
  auto-tls: false
  allowed-cn: [a, b]
peer-transport-security:
  cert-file: /p.pem
  allowed-hostname: peer.example.com
socket-options:
  reuse-port: true
max-wals: 2
some-future-key: 1
",
    );
    let c = config(
        &["--config-file", yaml.path(), "--name", "ignored"],
        &[("ETCD_SNAPSHOT_COUNT", "7")],
    );
    assert_eq!(c.name, "infra1");
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/etcd-y"));
    assert_eq!(
        c.listen_client_urls,
        ["http://10.0.0.1:2379", "http://127.0.0.1:2379"]
    );
    assert_eq!(c.advertise_client_urls, ["http://localhost:2379"]);
    assert_eq!(c.listen_peer_urls, ["http://localhost:2380"]);
    assert_eq!(
        c.initial_cluster,
        pairs(&[
            ("infra1", "http://10.0.0.1:2380"),
            ("infra2", "http://10.0.0.2:2380")
        ])
    );
    assert_eq!(c.initial_cluster_state, ClusterState::Existing);
    assert_eq!(c.heartbeat_interval_ms, 200);
    assert_eq!(c.election_timeout_ms, 2000);
    assert_eq!(c.snapshot_count, 5000);
    assert_eq!(c.quota_backend_bytes, 8_589_934_592);
    assert_eq!(
        c.auto_compaction(),
        CompactionRetention::Periodic(Duration::from_secs(3600))
    );
    assert_eq!(c.log_level, LogLevel::Warn);
    assert_eq!(c.log_outputs, ["stderr"]);
    assert_eq!(c.experimental_watch_progress_notify_interval_ms, 5000);
    assert_eq!(c.wal_dir, None);
    assert_eq!(c.client_tls.cert_file, Some(PathBuf::from("/c.pem")));
    assert!(c.client_tls.client_cert_auth);
    assert_eq!(c.client_tls.allowed_cns(), ["a", "b"]);
    assert_eq!(c.peer_tls.cert_file, Some(PathBuf::from("/p.pem")));
    assert_eq!(c.peer_tls.allowed_hostnames(), ["peer.example.com"]);
    assert!(c.socket_reuse_port);
    assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
    assert_eq!(
        c.warnings[0],
        format!(
            "configuration loaded from {}; other command-line flags, ETCD_* environment variables and conf file entries are ignored (ignored: --name, ETCD_SNAPSHOT_COUNT)",
            yaml.path()
        )
    );
    assert_eq!(
        c.warnings[1],
        format!(
            "unknown key \"some-future-key\" in configuration file {}; ignoring it",
            yaml.path()
        )
    );
    assert!(
        c.warnings[2]
            .starts_with("flag --max-wals is accepted but has no effect in etcd-rs (set in ")
    );

    // ETCD_CONFIG_FILE selects the YAML file as well, also from the conf file.
    let conf = TempFile::new(
        "conf",
        &format!("ETCD_CONFIG_FILE={}\nETCD_NAME=x\n", yaml.path()),
    );
    let c = config(&["--conf-file", conf.path()], &[]);
    assert_eq!(c.name, "infra1");
    let c = config(&[], &[("ETCD_CONFIG_FILE", yaml.path())]);
    assert_eq!(c.name, "infra1");
}

#[test]
fn yaml_errors() {
    let yaml = TempFile::new("yaml", "heartbeat-interval: fast\n");
    assert_eq!(
        error(&["--config-file", yaml.path()], &[]),
        format!(
            "{}: heartbeat-interval: invalid value \"fast\": expected an integer (milliseconds)",
            yaml.path()
        )
    );
    let yaml = TempFile::new("yaml", "name: [unclosed\n");
    assert!(error(&["--config-file", yaml.path()], &[]).starts_with(&format!("{}: ", yaml.path())));
    let yaml = TempFile::new("yaml", "name: a\nheartbeat-interval: 500\n");
    assert_eq!(
        error(&["--config-file", yaml.path()], &[]),
        "--election-timeout[1000ms] should be at least as 5 times as --heartbeat-interval[500ms]"
    );
    let e = error(&["--config-file", "/nonexistent/etcd.yaml"], &[]);
    assert!(e.starts_with("cannot read /nonexistent/etcd.yaml: "), "{e}");
}

#[test]
fn backend_batch_interval_is_honoured_and_defaults_to_a_second() {
    assert_eq!(
        config(&[], &[]).backend_batch_interval,
        Duration::from_secs(1)
    );
    let c = config(&["--backend-batch-interval=250ms"], &[]);
    assert_eq!(c.backend_batch_interval, Duration::from_millis(250));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let c = config(&[], &[("ETCD_BACKEND_BATCH_INTERVAL", "2s")]);
    assert_eq!(c.backend_batch_interval, Duration::from_secs(2));
    let c = config(&["--backend-batch-interval=0"], &[]);
    assert_eq!(c.backend_batch_interval, Duration::from_secs(1));
    assert!(error(&["--backend-batch-interval=soon"], &[]).contains("backend-batch-interval"));
}

#[test]
fn backend_batch_limit_is_honoured_and_defaults_to_etcds() {
    assert_eq!(config(&[], &[]).backend_batch_limit, 10_000);
    let c = config(&["--backend-batch-limit=250"], &[]);
    assert_eq!(c.backend_batch_limit, 250);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let c = config(&[], &[("ETCD_BACKEND_BATCH_LIMIT", "40")]);
    assert_eq!(c.backend_batch_limit, 40);
    assert_eq!(
        config(&["--backend-batch-limit=0"], &[]).backend_batch_limit,
        10_000
    );
    assert_eq!(
        config(&["--backend-batch-limit=-5"], &[]).backend_batch_limit,
        1
    );
    assert!(error(&["--backend-batch-limit=many"], &[]).contains("backend-batch-limit"));
}
