//! Transport security and authentication: client and peer mutual TLS with real
//! certificates (generated here), certificate and CA bundle rotation on disk,
//! refusals to start on bad certificate files, and etcd's users, roles, tokens and
//! certificate common names, compared with Debian's etcd where the texts matter.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SerialNumber,
};

use crate::harness::{
    Server, etcdctl_at, free_port, member_args, ours_bin, run_alone_to_exit, spawn_server,
    wait_until,
};

// ---------------------------------------------------------------------------
// Certificates

/// A certificate authority: its certificate file and what signs with it.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    path: PathBuf,
}

/// A certificate and key pair on disk.
#[derive(Clone)]
struct Pair {
    cert: String,
    key: String,
}

impl Pair {
    /// etcdctl's TLS flags for this client certificate and `ca` as server root.
    fn ctl_flags(&self, ca: &Path) -> Vec<String> {
        vec![
            format!("--cacert={}", ca.display()),
            format!("--cert={}", self.cert),
            format!("--key={}", self.key),
        ]
    }
}

fn make_ca(dir: &Path, name: &str) -> Ca {
    let key = KeyPair::generate().expect("CA key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).expect("self-signed CA");
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, cert.pem()).expect("write CA");
    Ca { cert, key, path }
}

/// A leaf certificate signed by `ca` for 127.0.0.1/localhost, usable as server and
/// client certificate, with common name `cn` and serial `serial`; `expired` dates
/// it in the past.
fn make_leaf(dir: &Path, file: &str, ca: &Ca, cn: &str, serial: u64, expired: bool) -> Pair {
    make_leaf_for(
        dir,
        file,
        ca,
        cn,
        serial,
        expired,
        &["localhost", "127.0.0.1"],
    )
}

/// [`make_leaf`] with the given subject alternative names.
fn make_leaf_for(
    dir: &Path,
    file: &str,
    ca: &Ca,
    cn: &str,
    serial: u64,
    expired: bool,
    sans: &[&str],
) -> Pair {
    let key = KeyPair::generate().expect("leaf key");
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("leaf params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.serial_number = Some(SerialNumber::from(serial));
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    if expired {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    } else {
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(2099, 1, 1);
    }
    let cert = p.signed_by(&key, &ca.cert, &ca.key).expect("sign leaf");
    let cert_path = dir.join(format!("{file}.crt"));
    let key_path = dir.join(format!("{file}.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    Pair {
        cert: cert_path.display().to_string(),
        key: key_path.display().to_string(),
    }
}

/// Two unrelated CAs and the certificates the tests use.
struct Pki {
    dir: tempfile::TempDir,
    ca1: Ca,
    ca2: Ca,
    server: Pair,
    root: Pair,
    alice: Pair,
    other_ca_client: Pair,
    expired: Pair,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("pki dir");
        let d = dir.path();
        let ca1 = make_ca(d, "ca1");
        let ca2 = make_ca(d, "ca2");
        let server = make_leaf(d, "server", &ca1, "server", 0x0A, false);
        let root = make_leaf(d, "root", &ca1, "root", 0x10, false);
        let alice = make_leaf(d, "alice", &ca1, "alice", 0x11, false);
        let other_ca_client = make_leaf(d, "other", &ca2, "root", 0x20, false);
        let expired = make_leaf(d, "expired", &ca1, "root", 0x12, true);
        Pki {
            dir,
            ca1,
            ca2,
            server,
            root,
            alice,
            other_ca_client,
            expired,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

// ---------------------------------------------------------------------------
// Processes

/// One etcd process with an arbitrary command line, killed on drop.
struct Proc {
    _dir: tempfile::TempDir,
    child: Option<Child>,
    log_path: PathBuf,
    client_port: u16,
}

impl Proc {
    fn spawn(bin: &Path, args: &[String], dir: tempfile::TempDir, client_port: u16) -> Proc {
        let log_path = dir.path().join("server.log");
        let child = spawn_server(bin, args, dir.path(), &log_path);
        Proc {
            _dir: dir,
            child: Some(child),
            log_path,
            client_port,
        }
    }

    fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_port)
    }

    fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Waits until `etcdctl endpoint health` with `tls` succeeds.
    fn wait_healthy(&mut self, tls: &[String]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(!self.exited(), "server exited early:\n{}", self.log());
            if ctl(&self.endpoint(), tls, &["endpoint", "health"])
                .status
                .success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server not healthy after 30s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts a single member of ours serving https clients (plain http peers) with
/// the given TLS flags.
fn start_tls(tls_flags: &[String]) -> Proc {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cp, pp) = (free_port(), free_port());
    let mut args = member_args(
        "default",
        &dir.path().join("data"),
        &format!("https://127.0.0.1:{cp}"),
        &format!("http://127.0.0.1:{pp}"),
        None,
    );
    args.extend(tls_flags.iter().cloned());
    Proc::spawn(&ours_bin(), &args, dir, cp)
}

fn server_flags(cert: &Pair, ca: &Path, client_cert_auth: bool) -> Vec<String> {
    let mut f = vec![
        format!("--cert-file={}", cert.cert),
        format!("--key-file={}", cert.key),
        format!("--trusted-ca-file={}", ca.display()),
    ];
    if client_cert_auth {
        f.push("--client-cert-auth".into());
    }
    f
}

/// etcdctl against `endpoint` with TLS flags `tls` and then `args`.
fn ctl(endpoint: &str, tls: &[String], args: &[&str]) -> Output {
    let mut all: Vec<&str> = tls.iter().map(|s| s.as_str()).collect();
    all.push("--dial-timeout=3s");
    all.extend_from_slice(args);
    etcdctl_at(endpoint, &all, None)
}

fn ctl_ok(endpoint: &str, tls: &[String], args: &[&str]) -> String {
    let out = ctl(endpoint, tls, args);
    assert!(
        out.status.success(),
        "etcdctl {args:?} at {endpoint} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts a log shows no certificate or key material.
fn assert_no_pem(log: &str) {
    assert!(!log.contains("BEGIN"), "PEM material in the log:\n{log}");
    assert!(!log.contains("PRIVATE"), "key material in the log:\n{log}");
}

// ---------------------------------------------------------------------------
// 1. Client mutual TLS on one member

#[test]
fn client_mtls_single_member() {
    let pki = Pki::new();
    let mut s = start_tls(&server_flags(&pki.server, &pki.ca1.path, true));
    let good = pki.root.ctl_flags(&pki.ca1.path);
    s.wait_healthy(&good);
    let ep = s.endpoint();

    assert_eq!(ctl_ok(&ep, &good, &["put", "k", "v"]).trim(), "OK");
    assert_eq!(ctl_ok(&ep, &good, &["get", "k"]), "k\nv\n");
    let health = text(&ctl(&ep, &good, &["endpoint", "health"]));
    assert!(health.contains("is healthy"), "{health}");

    // Refused clients, side by side (each waits out its command timeout): no
    // client certificate, one from another CA, an expired one from the right CA,
    // and plain http to the https port.
    let mut refused: Vec<(&str, Vec<String>, String)> = vec![
        (
            "no client cert",
            vec![format!("--cacert={}", pki.ca1.path.display())],
            ep.clone(),
        ),
        (
            "other CA",
            pki.other_ca_client.ctl_flags(&pki.ca1.path),
            ep.clone(),
        ),
        ("expired", pki.expired.ctl_flags(&pki.ca1.path), ep.clone()),
        (
            "plain http",
            vec![],
            format!("http://127.0.0.1:{}", s.client_port),
        ),
    ];
    std::thread::scope(|sc| {
        let handles: Vec<_> = refused
            .iter_mut()
            .map(|(what, flags, endpoint)| {
                sc.spawn(move || {
                    flags.push("--command-timeout=3s".into());
                    let out = ctl(endpoint, flags, &["get", "k"]);
                    assert!(!out.status.success(), "{what} accepted: {}", text(&out));
                })
            })
            .collect();
        for h in handles {
            h.join().expect("refused client");
        }
    });

    wait_until(Duration::from_secs(5), "rejected connection logs", || {
        let log = s.log();
        log.matches("rejected connection").count() >= 3 && log.contains("remote-addr")
    });
    let log = s.log();
    let rejected: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("rejected connection"))
        .collect();
    // etcd's (Go's) words.
    for reason in [
        "tls: client didn't provide a certificate",
        "tls: failed to verify client certificate: x509: certificate signed by unknown authority",
        "tls: failed to verify client certificate: x509: certificate has expired or is not yet valid",
    ] {
        assert!(
            rejected.iter().any(|l| l.contains(reason)),
            "no rejection says {reason:?}:\n{}",
            rejected.join("\n")
        );
    }
    assert!(
        rejected
            .iter()
            .any(|l| l.to_lowercase().contains("expired")),
        "no rejection names the expired certificate:\n{}",
        rejected.join("\n")
    );
    assert_no_pem(&log);
}

// ---------------------------------------------------------------------------
// 2. A cluster with client and peer mutual TLS

struct TlsMember {
    name: String,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    proc: Option<Proc>,
}

impl TlsMember {
    fn new(name: &str) -> TlsMember {
        TlsMember {
            name: name.into(),
            client_port: free_port(),
            peer_port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            proc: None,
        }
    }

    fn peer_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.peer_port)
    }

    fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_port)
    }

    fn start(&mut self, pki: &Pki, initial: &str, state: &str, peer: &Pair, peer_ca: &Path) {
        let dir = tempfile::tempdir_in(self.dir.path()).expect("run dir");
        let args: Vec<String> = vec![
            "--name".into(),
            self.name.clone(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--listen-client-urls".into(),
            self.endpoint(),
            "--advertise-client-urls".into(),
            self.endpoint(),
            "--listen-peer-urls".into(),
            self.peer_url(),
            "--initial-advertise-peer-urls".into(),
            self.peer_url(),
            "--initial-cluster".into(),
            initial.into(),
            "--initial-cluster-state".into(),
            state.into(),
            "--initial-cluster-token".into(),
            "tls-cluster".into(),
            "--heartbeat-interval".into(),
            "50".into(),
            "--election-timeout".into(),
            "500".into(),
            format!("--cert-file={}", pki.server.cert),
            format!("--key-file={}", pki.server.key),
            format!("--trusted-ca-file={}", pki.ca1.path.display()),
            "--client-cert-auth".into(),
            format!("--peer-cert-file={}", peer.cert),
            format!("--peer-key-file={}", peer.key),
            format!("--peer-trusted-ca-file={}", peer_ca.display()),
            "--peer-client-cert-auth".into(),
            // Every member's peer certificate names localhost; the check is
            // exercised by every peer connection of the cluster.
            "--peer-cert-allowed-hostname=localhost".into(),
        ];
        self.proc = Some(Proc::spawn(&ours_bin(), &args, dir, self.client_port));
    }

    fn proc(&mut self) -> &mut Proc {
        self.proc.as_mut().expect("started")
    }
}

#[test]
fn cluster_with_client_and_peer_mtls() {
    let pki = Pki::new();
    let d = pki.dir.path();
    let peers: Vec<Pair> = (0..3)
        .map(|i| {
            make_leaf(
                d,
                &format!("peer{i}"),
                &pki.ca1,
                &format!("m{i}"),
                0x30 + i,
                false,
            )
        })
        .collect();
    let bad_peer = make_leaf(d, "peer-bad", &pki.ca2, "m3", 0x40, false);
    let tls = pki.root.ctl_flags(&pki.ca1.path);

    let mut ms: Vec<TlsMember> = (0..3).map(|i| TlsMember::new(&format!("m{i}"))).collect();
    let initial = ms
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url()))
        .collect::<Vec<_>>()
        .join(",");
    for (i, m) in ms.iter_mut().enumerate() {
        m.start(&pki, &initial, "new", &peers[i], &pki.ca1.path);
    }
    for m in ms.iter_mut() {
        m.proc().wait_healthy(&tls);
    }
    let eps = ms
        .iter()
        .map(|m| m.endpoint())
        .collect::<Vec<_>>()
        .join(",");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = ctl(&eps, &tls, &["endpoint", "status", "-w", "fields"]);
        let table = text(&out);
        let leaders = table
            .lines()
            .filter(|l| l.starts_with("\"Leader\""))
            .map(|l| l.to_string())
            .collect::<Vec<_>>();
        let ids = table
            .lines()
            .filter(|l| l.starts_with("\"MemberID\""))
            .map(|l| l.replace("MemberID", "Leader"))
            .collect::<Vec<_>>();
        // Three answers, all naming the same leader, which is one of them.
        if out.status.success()
            && leaders.len() == 3
            && leaders.iter().all(|l| *l == leaders[0])
            && ids.contains(&leaders[0])
        {
            break;
        }
        assert!(Instant::now() < deadline, "no single leader:\n{table}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A write on one member is read on every member (serializable reads).
    assert_eq!(
        ctl_ok(&ms[0].endpoint(), &tls, &["put", "tls-key", "v1"]).trim(),
        "OK"
    );
    for m in &ms {
        let ep = m.endpoint();
        wait_until(Duration::from_secs(10), "replicated write", || {
            let out = ctl(&ep, &tls, &["get", "tls-key", "--consistency=s"]);
            String::from_utf8_lossy(&out.stdout) == "tls-key\nv1\n"
        });
    }

    // A fourth member with a peer certificate from another CA cannot join.
    let mut m3 = TlsMember::new("m3");
    let peer = format!("--peer-urls={}", m3.peer_url());
    let added = crate::harness::retry_while_unhealthy(|| {
        ctl(&ms[1].endpoint(), &tls, &["member", "add", "m3", &peer])
    });
    assert!(added.status.success(), "member add: {added:?}");
    let added = String::from_utf8_lossy(&added.stdout).into_owned();
    assert!(added.contains("ETCD_INITIAL_CLUSTER_STATE"), "{added}");
    let initial4 = format!("{initial},m3={}", m3.peer_url());
    m3.start(&pki, &initial4, "existing", &bad_peer, &pki.ca2.path);
    let m3_ep = m3.endpoint();
    wait_until(
        Duration::from_secs(10),
        "rejected peer connections from the foreign member",
        || {
            ms.iter()
                .filter_map(|m| m.proc.as_ref())
                .any(|p| p.log().contains("\"msg\":\"rejected connection\""))
        },
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let out = ctl(
            &m3_ep,
            &tls,
            &["endpoint", "health", "--command-timeout=1s"],
        );
        assert!(
            !out.status.success(),
            "member with a foreign peer certificate became healthy:\n{}",
            m3.proc().log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A peer certificate from the right CA but for another host name is refused
    // by --peer-cert-allowed-hostname after the handshake.
    let elsewhere = make_leaf_for(
        d,
        "peer-elsewhere",
        &pki.ca1,
        "m9",
        0x41,
        false,
        &["elsewhere.example"],
    );
    let peer_port = ms[0].peer_port;
    let got = handshake(
        peer_port,
        &pki.ca1.path,
        Some(&elsewhere),
        &[&rustls::version::TLS13],
        &[],
    );
    assert!(got.is_ok(), "handshake with the CA's certificate: {got:?}");
    let p0 = ms[0].proc.as_ref().expect("started");
    wait_until(
        Duration::from_secs(10),
        "the peer refusing a certificate for another host name",
        || {
            p0.log()
                .contains("has none of the allowed common names or host names")
        },
    );
    assert!(p0.log().contains("common name \\\"m9\\\""), "{}", p0.log());
    // The cluster keeps serving writes with a quorum of three.
    assert_eq!(
        ctl_ok(&ms[2].endpoint(), &tls, &["put", "tls-key", "v2"]).trim(),
        "OK"
    );
    for m in &ms {
        assert_no_pem(&m.proc.as_ref().expect("started").log());
    }
    assert_no_pem(&m3.proc().log());
}

/// With peer TLS and `--peer-client-cert-auth`, the peer port answers nothing,
/// not even the cluster-info request a joining member sends, before the peer's
/// certificate chain is verified: not without a client certificate, not with one
/// of another CA, not in plain TCP. With the CA's certificate it answers.
#[test]
fn peer_port_answers_nothing_before_the_certificate_is_verified() {
    use std::io::Write;
    let pki = Pki::new();
    let peer = make_leaf(pki.dir.path(), "peer0", &pki.ca1, "m0", 0x50, false);
    let tls = pki.root.ctl_flags(&pki.ca1.path);
    let mut m = TlsMember::new("m0");
    let initial = format!("m0={}", m.peer_url());
    m.start(&pki, &initial, "new", &peer, &pki.ca1.path);
    m.proc().wait_healthy(&tls);

    // What the peer port sends back to a cluster-info request over TLS.
    let ask = |client: Option<&Pair>, version: &'static rustls::SupportedProtocolVersion| {
        let (conn, sock) = tls_client(m.peer_port, &pki.ca1.path, client, &[version], &[], &[])
            .expect("TLS client");
        let mut s = rustls::StreamOwned::new(conn, sock);
        let mut out = Vec::new();
        if s.write_all(b"ETCDRSP1I").is_ok() {
            let _ = s.read_to_end(&mut out);
        }
        out
    };
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let got = ask(None, version);
        assert!(
            got.is_empty(),
            "answered without a client certificate: {got:?}"
        );
        let got = ask(Some(&pki.other_ca_client), version);
        assert!(got.is_empty(), "answered another CA's certificate: {got:?}");
        let got = ask(Some(&peer), version);
        assert!(got.len() > 4, "no cluster information for a peer: {got:?}");
        let len = u32::from_be_bytes([got[0], got[1], got[2], got[3]]) as usize;
        assert_eq!(len, got.len() - 4, "{got:?}");
    }
    // Plain TCP: at most a TLS alert record, never an answer.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", m.peer_port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"ETCDRSP1I").expect("request");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        got.is_empty() || got[0] == 0x15,
        "plain TCP was answered: {got:?}"
    );
    let log = m.proc().log();
    // Refused handshakes in etcd's words.
    assert!(log.contains("\"msg\":\"rejected connection\""), "{log}");
    assert!(
        log.contains("tls: client didn't provide a certificate")
            && log.contains("x509: certificate signed by unknown authority"),
        "{log}"
    );
    assert_no_pem(&log);
}

// ---------------------------------------------------------------------------
// TLS versions and cipher suites

/// A TLS client connected to 127.0.0.1:`port` as "localhost", trusting `ca`,
/// offering `versions` and `suites` (every suite rustls has when empty) and the
/// ALPN protocols `alpn`, presenting `client` if given. Nothing is sent yet.
fn tls_client(
    port: u16,
    ca: &Path,
    client: Option<&Pair>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    suites: &[rustls::CipherSuite],
    alpn: &[&[u8]],
) -> Result<(rustls::ClientConnection, std::net::TcpStream), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut provider = rustls::crypto::ring::default_provider();
    if !suites.is_empty() {
        provider
            .cipher_suites
            .retain(|s| suites.contains(&s.suite()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(c.expect("CA cert")).expect("add CA");
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_protocol_versions(versions)
        .map_err(|e| format!("client config: {e}"))?
        .with_root_certificates(roots);
    let mut config = match client {
        Some(p) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&p.cert)
                    .expect("cert file")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("certs"),
                PrivateKeyDer::from_pem_file(&p.key).expect("key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from("localhost").expect("server name");
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
        .map_err(|e| e.to_string())?;
    let sock = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    Ok((conn, sock))
}

/// A TLS handshake (see [`tls_client`]); the negotiated version and cipher suite.
fn handshake(
    port: u16,
    ca: &Path,
    client: Option<&Pair>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    suites: &[rustls::CipherSuite],
) -> Result<(rustls::ProtocolVersion, rustls::CipherSuite), String> {
    let (mut conn, mut sock) = tls_client(port, ca, client, versions, suites, &[])?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    Ok((
        conn.protocol_version().expect("version"),
        conn.negotiated_cipher_suite().expect("suite").suite(),
    ))
}

/// GET `path` over https on 127.0.0.1:`port` (HTTP/1.1), presenting `client` if
/// given; the status line and body, or the TLS/IO error.
fn https_get(port: u16, ca: &Path, client: Option<&Pair>, path: &str) -> Result<String, String> {
    use std::io::Write;
    let versions: &[&'static rustls::SupportedProtocolVersion] =
        &[&rustls::version::TLS12, &rustls::version::TLS13];
    let (conn, sock) = tls_client(port, ca, client, versions, &[], &[b"http/1.1"])?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) => {}
        // Some servers end without close_notify; what arrived is the answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    if out.is_empty() {
        return Err("connection closed without an answer".into());
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn http_get_plain(port: u16, path: &str) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn https_and_http_listeners_side_by_side() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let (tls_port, plain_port, peer_port) = (free_port(), free_port(), free_port());
    // The deployment guides' shape: TLS on the public address, plain on
    // loopback for local tools; the https URL is advertised.
    let mut args = member_args(
        "default",
        &dir.path().join("data"),
        &format!("https://127.0.0.1:{tls_port},http://127.0.0.1:{plain_port}"),
        &format!("http://127.0.0.1:{peer_port}"),
        None,
    );
    args.extend(server_flags(&pki.server, &pki.ca1.path, true));
    let mut p = Proc::spawn(&ours_bin(), &args, dir, tls_port);
    let tls = pki.root.ctl_flags(&pki.ca1.path);
    p.wait_healthy(&tls);
    let plain_ep = format!("http://127.0.0.1:{plain_port}");
    assert_eq!(
        ctl_ok(&p.endpoint(), &tls, &["put", "k", "over-tls"]).trim(),
        "OK"
    );
    assert_eq!(ctl_ok(&plain_ep, &[], &["get", "k"]), "k\nover-tls\n");
    assert_eq!(ctl_ok(&plain_ep, &[], &["put", "k", "plain"]).trim(), "OK");
    assert_eq!(ctl_ok(&p.endpoint(), &tls, &["get", "k"]), "k\nplain\n");

    // HTTP endpoints follow the listener's TLS rules: on https a client
    // certificate is needed, on the plain listener none.
    let health = https_get(tls_port, &pki.ca1.path, Some(&pki.root), "/health")
        .expect("/health over https with a client certificate");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("\"health\":\"true\""), "{health}");
    let metrics = https_get(tls_port, &pki.ca1.path, Some(&pki.root), "/metrics")
        .expect("/metrics over https");
    assert!(metrics.contains("etcd_server_has_leader 1"), "{metrics}");
    let refused = https_get(tls_port, &pki.ca1.path, None, "/health");
    assert!(
        refused.is_err(),
        "/health without a client certificate: {refused:?}"
    );
    let refused = https_get(
        tls_port,
        &pki.ca1.path,
        Some(&pki.other_ca_client),
        "/metrics",
    );
    assert!(
        refused.is_err(),
        "/metrics with another CA's certificate: {refused:?}"
    );
    let plain = http_get_plain(plain_port, "/health");
    assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");
    // Plain HTTP on the TLS port gets no answer.
    let wrong = http_get_plain(tls_port, "/health");
    assert!(!wrong.contains("\"health\""), "{wrong}");
    assert_no_pem(&p.log());
}

#[test]
fn auto_tls_for_clients_and_peers() {
    let names = ["a0", "a1", "a2"];
    let ports: Vec<(u16, u16)> = names.iter().map(|_| (free_port(), free_port())).collect();
    let initial = names
        .iter()
        .zip(&ports)
        .map(|(n, (_, pp))| format!("{n}=https://127.0.0.1:{pp}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs: Vec<Proc> = names
        .iter()
        .zip(&ports)
        .map(|(n, (cp, pp))| {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut args = member_args(
                n,
                &dir.path().join("data"),
                &format!("https://127.0.0.1:{cp}"),
                &format!("https://127.0.0.1:{pp}"),
                Some(&initial),
            );
            args.extend(
                [
                    "--initial-cluster-token",
                    "auto-tls",
                    "--heartbeat-interval",
                    "50",
                    "--election-timeout",
                    "500",
                    "--auto-tls",
                    "--peer-auto-tls",
                ]
                .iter()
                .map(|s| s.to_string()),
            );
            Proc::spawn(&ours_bin(), &args, dir, *cp)
        })
        .collect();
    // Self-signed: etcdctl must skip verification, as with etcd's auto TLS.
    let skip = vec![
        "--insecure-transport=false".to_string(),
        "--insecure-skip-tls-verify".to_string(),
    ];
    for p in procs.iter_mut() {
        p.wait_healthy(&skip);
    }
    let verified = ctl(&procs[0].endpoint(), &skip[..1], &["get", "k"]);
    assert!(
        !verified.status.success(),
        "a self-signed certificate passed verification: {}",
        text(&verified)
    );
    assert_eq!(
        ctl_ok(&procs[0].endpoint(), &skip, &["put", "k", "auto"]).trim(),
        "OK"
    );
    // The write crossed the auto-TLS peer links.
    let last = procs[2].endpoint();
    wait_until(
        Duration::from_secs(10),
        "the write on the third member",
        || {
            let out = ctl(&last, &skip, &["get", "k", "--consistency=s"]);
            String::from_utf8_lossy(&out.stdout) == "k\nauto\n"
        },
    );
    let members = ctl_ok(&last, &skip, &["member", "list"]);
    assert_eq!(members.matches(", started, ").count(), 3, "{members}");
    // The generated keys are private to the member.
    for p in &procs {
        let data = p._dir.path().join("data");
        for sub in ["client", "peer"] {
            let key = data.join("fixtures").join(sub).join("key.pem");
            let mode = std::fs::metadata(&key)
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
                .unwrap_or_else(|e| panic!("{}: {e}", key.display()));
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        assert_no_pem(&p.log());
    }
}

#[test]
fn tls_versions_and_cipher_suites() {
    use rustls::CipherSuite as C;
    use rustls::ProtocolVersion as V;
    use rustls::version::{TLS12, TLS13};
    let pki = Pki::new();
    let ctl_tls = pki.root.ctl_flags(&pki.ca1.path);
    let both: &[&'static rustls::SupportedProtocolVersion] = &[&TLS12, &TLS13];

    // TLS 1.2 at most, and one suite.
    let mut flags = server_flags(&pki.server, &pki.ca1.path, false);
    flags.push("--tls-max-version=TLS1.2".into());
    flags.push("--cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384".into());
    let mut p = start_tls(&flags);
    p.wait_healthy(&ctl_tls);
    let port = p.client_port;
    assert_eq!(
        handshake(port, &pki.ca1.path, None, both, &[]),
        Ok((V::TLSv1_2, C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384))
    );
    let e = handshake(port, &pki.ca1.path, None, &[&TLS13], &[]);
    assert!(e.is_err(), "TLS 1.3 accepted: {e:?}");
    let e = handshake(
        port,
        &pki.ca1.path,
        None,
        &[&TLS12],
        &[C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256],
    );
    assert!(
        e.is_err(),
        "a suite outside --cipher-suites accepted: {e:?}"
    );
    // Go's TLS (etcdctl) works with it.
    assert_eq!(
        ctl_ok(&p.endpoint(), &ctl_tls, &["put", "k", "v"]).trim(),
        "OK"
    );
    drop(p);

    // TLS 1.3 at least.
    let mut flags = server_flags(&pki.server, &pki.ca1.path, false);
    flags.push("--tls-min-version=TLS1.3".into());
    let mut p = start_tls(&flags);
    p.wait_healthy(&ctl_tls);
    let got = handshake(p.client_port, &pki.ca1.path, None, both, &[]);
    assert_eq!(got.map(|g| g.0), Ok(V::TLSv1_3));
    let e = handshake(p.client_port, &pki.ca1.path, None, &[&TLS12], &[]);
    assert!(e.is_err(), "TLS 1.2 accepted: {e:?}");
    assert_eq!(
        ctl_ok(&p.endpoint(), &ctl_tls, &["put", "k", "v"]).trim(),
        "OK"
    );
    drop(p);

    // Impossible or unknown settings stop the server with a clear message.
    for (flag, expect) in [
        (
            vec!["--cipher-suites=TLS_RSA_WITH_RC4_128_SHA"],
            "TLS_RSA_WITH_RC4_128_SHA",
        ),
        (vec!["--tls-min-version=TLS1.4"], "TLS1.4"),
        (
            vec!["--tls-min-version=TLS1.3", "--tls-max-version=TLS1.2"],
            "min version (TLS1.3) is greater than max version (TLS1.2)",
        ),
        (
            vec![
                "--tls-min-version=TLS1.3",
                "--cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            ],
            "cipher suites cannot be configured",
        ),
    ] {
        let mut flags = server_flags(&pki.server, &pki.ca1.path, false);
        flags.extend(flag.iter().map(|s| s.to_string()));
        let run = tempfile::tempdir().expect("run dir");
        let out = run_tls_to_exit(run.path(), &flags);
        let all = text(&out);
        assert!(!out.status.success(), "{flag:?} started:\n{all}");
        assert!(all.contains(expect), "{flag:?}: {all}");
        assert!(!all.contains("panicked"), "{flag:?}: {all}");
    }
}

/// A CRL signed by `ca` revoking `serials`, written as PEM to `path`.
fn write_crl(path: &Path, ca: &Ca, serials: &[u64]) {
    use rcgen::{
        CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams,
    };
    let params = CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2025, 1, 1),
        next_update: rcgen::date_time_ymd(2099, 1, 1),
        crl_number: SerialNumber::from(serials.len() as u64 + 1),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from(*s),
                revocation_time: rcgen::date_time_ymd(2025, 1, 1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&ca.cert, &ca.key).expect("sign CRL");
    std::fs::write(path, crl.pem().expect("CRL PEM")).expect("write CRL");
}

#[test]
fn client_certificates_for_other_host_names_are_refused() {
    let pki = Pki::new();
    let elsewhere = make_leaf_for(
        pki.dir.path(),
        "client-elsewhere",
        &pki.ca1,
        "root",
        0x42,
        false,
        &["elsewhere.example"],
    );
    let mut flags = server_flags(&pki.server, &pki.ca1.path, true);
    flags.push("--client-cert-allowed-hostname=localhost".into());
    let root = pki.root.ctl_flags(&pki.ca1.path);
    let mut p = start_tls(&flags);
    p.wait_healthy(&root);
    let ep = p.endpoint();
    assert_eq!(ctl_ok(&ep, &root, &["put", "k", "v"]).trim(), "OK");
    let out = ctl(&ep, &elsewhere.ctl_flags(&pki.ca1.path), &["get", "k"]);
    assert!(
        !out.status.success(),
        "a certificate for another host name was served: {}",
        text(&out)
    );
    wait_until(Duration::from_secs(5), "the refusal in the log", || {
        p.log()
            .contains("has none of the allowed common names or host names")
    });
    assert_no_pem(&p.log());
}

#[test]
fn revoked_client_certificates_are_refused() {
    let pki = Pki::new();
    let crl = pki.path("revoked.crl");
    // alice (serial 0x11) is revoked; root (0x10) is not.
    write_crl(&crl, &pki.ca1, &[0x11]);
    let mut flags = server_flags(&pki.server, &pki.ca1.path, true);
    flags.push(format!("--client-crl-file={}", crl.display()));
    let root = pki.root.ctl_flags(&pki.ca1.path);
    let alice = pki.alice.ctl_flags(&pki.ca1.path);
    let mut p = start_tls(&flags);
    p.wait_healthy(&root);
    let ep = p.endpoint();
    assert_eq!(ctl_ok(&ep, &root, &["put", "k", "v"]).trim(), "OK");
    let out = ctl(&ep, &alice, &["get", "k"]);
    assert!(
        !out.status.success(),
        "revoked certificate served: {}",
        text(&out)
    );
    // A new list on disk is honoured without a restart: revoke root too, and
    // alice's refusal stays.
    write_crl(&crl, &pki.ca1, &[0x10, 0x11]);
    wait_until(
        Duration::from_secs(10),
        "the new CRL to refuse root's certificate",
        || !ctl(&ep, &root, &["get", "k"]).status.success(),
    );
    assert!(!ctl(&ep, &alice, &["get", "k"]).status.success());
    assert_no_pem(&p.log());
    drop(p);

    // A CRL file that is not one stops the server, naming it.
    std::fs::write(&crl, "garbage\n").expect("write");
    let run = tempfile::tempdir().expect("run dir");
    let out = run_tls_to_exit(run.path(), &flags);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&crl.display().to_string()),
        "{}",
        text(&out)
    );
}

// ---------------------------------------------------------------------------
// 3. Rotation of certificates and CA bundles on disk

/// The serial number of the certificate a fresh TLS connection to `port` sees.
fn served_serial(port: u16) -> String {
    let sc = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "localhost",
            "-showcerts",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output()
        .expect("openssl s_client");
    let mut x = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl x509");
    {
        use std::io::Write;
        let mut si = x.stdin.take().expect("stdin");
        let _ = si.write_all(&sc.stdout);
    }
    let out = x.wait_with_output().expect("openssl x509 output");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn copy_pair(from: &Pair, to: &Pair) {
    // The key first: until the certificate follows, the pair does not match and
    // the server keeps the previous one.
    std::fs::copy(&from.key, &to.key).expect("copy key");
    std::fs::copy(&from.cert, &to.cert).expect("copy cert");
}

#[test]
fn certificate_rotation_without_restart() {
    let pki = Pki::new();
    let d = pki.dir.path();
    let a = make_leaf(d, "rot-a", &pki.ca1, "server", 0x0A, false);
    let b = make_leaf(d, "rot-b", &pki.ca1, "server", 0x0B, false);
    let live = Pair {
        cert: pki.path("live.crt").display().to_string(),
        key: pki.path("live.key").display().to_string(),
    };
    copy_pair(&a, &live);
    let mut s = start_tls(&server_flags(&live, &pki.ca1.path, false));
    let tls = vec![format!("--cacert={}", pki.ca1.path.display())];
    s.wait_healthy(&tls);
    assert_eq!(served_serial(s.client_port), "serial=0A");

    copy_pair(&b, &live);
    wait_until(
        Duration::from_secs(10),
        "the new certificate served",
        || served_serial(s.client_port) == "serial=0B",
    );
    // Clients verifying against the CA keep working with the new certificate.
    assert_eq!(ctl_ok(&s.endpoint(), &tls, &["put", "r", "1"]).trim(), "OK");
    assert!(s.log().contains("reloaded TLS certificates"), "{}", s.log());

    // A broken replacement keeps the last good certificate.
    std::fs::write(&live.cert, "not a certificate").expect("write garbage");
    // Files are looked at when connections come in.
    wait_until(Duration::from_secs(10), "a failed reload attempt", || {
        assert_eq!(served_serial(s.client_port), "serial=0B");
        s.log().contains("cannot reload TLS certificates")
    });
    assert_eq!(served_serial(s.client_port), "serial=0B");
    assert_no_pem(&s.log());
}

#[test]
fn ca_bundle_rotation_without_restart() {
    let pki = Pki::new();
    let bundle = pki.path("bundle.pem");
    std::fs::copy(&pki.ca1.path, &bundle).expect("bundle");
    let mut s = start_tls(&server_flags(&pki.server, &bundle, true));
    let ca1_client = pki.root.ctl_flags(&pki.ca1.path);
    let ca2_client = pki.other_ca_client.ctl_flags(&pki.ca1.path);
    s.wait_healthy(&ca1_client);
    let out = ctl(&s.endpoint(), &ca2_client, &["get", "x"]);
    assert!(!out.status.success(), "CA2 client accepted: {}", text(&out));

    let both = format!(
        "{}{}",
        std::fs::read_to_string(&pki.ca1.path).expect("ca1"),
        std::fs::read_to_string(&pki.ca2.path).expect("ca2")
    );
    std::fs::write(&bundle, both).expect("write bundle");
    let ep = s.endpoint();
    wait_until(Duration::from_secs(15), "CA2 client accepted", || {
        ctl(&ep, &ca2_client, &["put", "x", "1"]).status.success()
    });
    // CA1 clients still work.
    assert_eq!(ctl_ok(&ep, &ca1_client, &["get", "x"]), "x\n1\n");
}

// ---------------------------------------------------------------------------
// 4. Bad certificate files stop the server

fn run_tls_to_exit(dir: &Path, flags: &[String]) -> Output {
    run_alone_to_exit(&dir.join("data"), "https", flags, dir)
}

#[test]
fn bad_certificate_files_stop_the_server() {
    let pki = Pki::new();
    let d = pki.dir.path();
    let other = make_leaf(d, "mismatch", &pki.ca1, "server", 0x50, false);
    let garbage = pki.path("garbage.key");
    std::fs::write(&garbage, "this is not a key\n").expect("garbage");
    let missing = pki.path("missing.crt").display().to_string();
    let cases: Vec<(&str, Vec<String>, String)> = vec![
        (
            "missing certificate",
            vec![
                format!("--cert-file={missing}"),
                format!("--key-file={}", pki.server.key),
            ],
            missing.clone(),
        ),
        (
            "key is a directory",
            vec![
                format!("--cert-file={}", pki.server.cert),
                format!("--key-file={}", d.display()),
            ],
            d.display().to_string(),
        ),
        (
            "garbage key",
            vec![
                format!("--cert-file={}", pki.server.cert),
                format!("--key-file={}", garbage.display()),
            ],
            garbage.display().to_string(),
        ),
        (
            "mismatched pair",
            vec![
                format!("--cert-file={}", pki.server.cert),
                format!("--key-file={}", other.key),
            ],
            other.key.clone(),
        ),
        (
            "missing trusted CA",
            vec![
                format!("--cert-file={}", pki.server.cert),
                format!("--key-file={}", pki.server.key),
                format!("--trusted-ca-file={missing}"),
                "--client-cert-auth".into(),
            ],
            missing.clone(),
        ),
        (
            "missing peer certificate",
            vec![
                format!("--peer-cert-file={missing}"),
                format!("--peer-key-file={}", pki.server.key),
                format!("--cert-file={}", pki.server.cert),
                format!("--key-file={}", pki.server.key),
            ],
            missing.clone(),
        ),
    ];
    for (what, flags, path) in cases {
        let run = tempfile::tempdir().expect("run dir");
        let out = run_tls_to_exit(run.path(), &flags);
        let all = text(&out);
        assert!(
            matches!(out.status.code(), Some(c) if c != 0),
            "{what}: expected a non-zero exit, got {:?}:\n{all}",
            out.status
        );
        assert!(
            all.contains(&path),
            "{what}: output does not name {path}:\n{all}"
        );
        assert_no_pem(&all);
    }
}

// ---------------------------------------------------------------------------
// 5. Users, roles, permissions and tokens

fn sh_ctl(srv: &Server, user: Option<&str>, args: &[&str]) -> Output {
    let mut all: Vec<String> = Vec::new();
    if let Some(u) = user {
        all.push(format!("--user={u}"));
    }
    all.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
    srv.etcdctl(&refs)
}

pub(crate) fn sh_ok(srv: &Server, user: Option<&str>, args: &[&str]) -> String {
    let out = sh_ctl(srv, user, args);
    assert!(
        out.status.success(),
        "{:?} etcdctl {args:?} failed: {}",
        srv.kind,
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The error line etcdctl prints for a failed command.
pub(crate) fn sh_err(srv: &Server, user: Option<&str>, args: &[&str]) -> String {
    let out = sh_ctl(srv, user, args);
    assert!(
        !out.status.success(),
        "{:?} etcdctl {args:?} unexpectedly worked: {}",
        srv.kind,
        text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines()
        .find(|l| l.starts_with("Error:"))
        .unwrap_or(&err)
        .trim()
        .to_string()
}

/// etcdctl's stdout when it works, else its error line.
fn outcome(srv: &Server, user: Option<&str>, args: &[&str]) -> String {
    let out = sh_ctl(srv, user, args);
    if out.status.success() {
        return format!("ok: {}", String::from_utf8_lossy(&out.stdout));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines()
        .find(|l| l.starts_with("Error:"))
        .unwrap_or(&err)
        .trim()
        .to_string()
}

/// The guides' auth set-up as etcdctl commands: user root with the root role,
/// role app with readwrite on the /app/ prefix, user alice (added by
/// `add_alice`) with role app, then auth enabled.
pub(crate) fn auth_setup<'a>(add_alice: &[&'a str]) -> Vec<Vec<&'a str>> {
    vec![
        vec!["user", "add", "root:pw"],
        vec!["role", "add", "root"],
        vec!["user", "grant-role", "root", "root"],
        vec!["role", "add", "app"],
        vec![
            "role",
            "grant-permission",
            "app",
            "--prefix=true",
            "readwrite",
            "/app/",
        ],
        add_alice.to_vec(),
        vec!["user", "grant-role", "alice", "app"],
        vec!["auth", "enable"],
    ]
}

pub(crate) fn setup_users(srv: &Server) {
    for args in auth_setup(&["user", "add", "alice:pw"]) {
        sh_ok(srv, None, &args);
    }
}

/// Runs `etcdctl watch` for up to `limit` and returns its output and whether it
/// exited on its own.
fn watch_for(endpoint: &str, extra: &[String], args: &[&str], limit: Duration) -> (String, bool) {
    let mut cmd = Command::new(crate::harness::etcdctl_bin());
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(extra)
        .arg("watch")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("etcdctl watch");
    let deadline = Instant::now() + limit;
    let mut exited = false;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            exited = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("watch output");
    (text(&out), exited)
}

/// The auth flow on one server; returns the error lines that must match etcd's.
fn auth_flow(srv: &Server) -> Vec<String> {
    setup_users(srv);
    let alice = Some("alice:pw");
    let root = Some("root:pw");
    let mut errs = Vec::new();

    errs.push(sh_err(srv, None, &["get", "/app/x"]));
    assert_eq!(sh_ok(srv, alice, &["put", "/app/x", "1"]).trim(), "OK");
    assert_eq!(sh_ok(srv, alice, &["get", "/app/x"]), "/app/x\n1\n");
    assert_eq!(sh_ok(srv, alice, &["del", "/app/x"]).trim(), "1");
    errs.push(sh_err(srv, alice, &["put", "/other", "1"]));
    errs.push(sh_err(srv, alice, &["get", "/other"]));
    // A transaction reading /app/ but writing /other.
    let out = srv.etcdctl_stdin(
        &["--user=alice:pw", "txn"],
        Some("value(\"/app/x\") = \"1\"\n\nput /other 2\n\nput /other 3\n\n"),
    );
    assert!(
        !out.status.success(),
        "txn on /other allowed: {}",
        text(&out)
    );
    errs.push(
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .find(|l| l.starts_with("Error:"))
            .unwrap_or_default()
            .to_string(),
    );
    errs.push(sh_err(srv, Some("alice:wrong"), &["get", "/app/x"]));
    errs.push(sh_err(srv, Some("nobody:pw"), &["get", "/app/x"]));
    errs.push(sh_err(srv, alice, &["user", "list"]));
    // Users may read their own user and roles (etcd's rule), nothing else.
    errs.push(outcome(srv, alice, &["role", "get", "app"]));
    errs.push(outcome(srv, alice, &["user", "get", "alice"]));
    errs.push(sh_err(srv, alice, &["role", "get", "root"]));
    errs.push(sh_err(srv, alice, &["user", "get", "root"]));
    errs.push(sh_err(srv, alice, &["auth", "disable"]));

    // Root can do everything.
    assert_eq!(sh_ok(srv, root, &["put", "/other", "r"]).trim(), "OK");
    let users = sh_ok(srv, root, &["user", "list"]);
    assert_eq!(users, "alice\nroot\n");
    let role = sh_ok(srv, root, &["role", "get", "app"]);
    assert!(role.contains("[/app/, /app0)"), "{role}");
    let members = sh_ok(srv, root, &["member", "list"]);
    assert!(members.contains("default"), "{members}");

    // Watches: /other is refused, /app/ delivers events.
    let tls: Vec<String> = vec!["--user=alice:pw".into()];
    let (out, exited) = watch_for(&srv.endpoint(), &tls, &["/other"], Duration::from_secs(5));
    assert!(exited, "watch on /other was not refused:\n{out}");
    assert!(out.contains("permission denied"), "{out}");
    errs.push(
        out.lines()
            .find(|l| l.contains("permission denied"))
            .unwrap_or_default()
            .to_string(),
    );
    let ep = srv.endpoint();
    let put_later = std::thread::spawn({
        let ep = ep.clone();
        move || {
            // Keep writing until the watcher is gone (it is killed at its limit).
            let deadline = Instant::now() + Duration::from_secs(4);
            while Instant::now() < deadline {
                etcdctl_at(&ep, &["--user=alice:pw", "put", "/app/w", "seen"], None);
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    });
    let (out, exited) = watch_for(&ep, &tls, &["--prefix", "/app/"], Duration::from_secs(3));
    put_later.join().expect("writer");
    assert!(!exited, "watch on /app/ ended:\n{out}");
    assert!(out.contains("PUT\n/app/w\nseen"), "{out}");

    errs
}

#[test]
fn auth_users_roles_and_errors_match_etcd() {
    let ours = Server::start(&["--auth-token-ttl", "2"]);
    let reference = Server::start_reference(&["--auth-token-ttl", "2"]);
    let a = std::thread::scope(|sc| {
        let r = sc.spawn(|| auth_flow(&reference));
        let o = auth_flow(&ours);
        let r = r.join().expect("reference flow");
        (o, r)
    });
    let (o, r) = a;
    assert_eq!(
        o[0], "Error: etcdserver: user name is empty",
        "no user: {o:?}"
    );
    assert_eq!(o[1], "Error: etcdserver: permission denied");
    assert_eq!(
        o[4],
        "Error: etcdserver: authentication failed, invalid user ID or password"
    );
    assert_eq!(o, r, "ours vs Debian's etcd error texts");

    // Leases: revoking one needs write permission on its keys (both servers);
    // reading one with its keys needs read permission on them (etcd since
    // 3.4.26/3.5.9; Debian's 3.4.23 predates that, so ours only).
    let mut revoke_errs = Vec::new();
    for srv in [&ours, &reference] {
        let granted = sh_ok(srv, Some("root:pw"), &["lease", "grant", "100"]);
        let id = granted
            .split_whitespace()
            .nth(1)
            .expect("lease id")
            .to_string();
        sh_ok(
            srv,
            Some("root:pw"),
            &["put", "--lease", &id, "/other/leased", "x"],
        );
        revoke_errs.push(sh_err(srv, Some("alice:pw"), &["lease", "revoke", &id]));
        if srv.kind == crate::harness::Kind::Ours {
            assert_eq!(
                sh_err(
                    srv,
                    Some("alice:pw"),
                    &["lease", "timetolive", &id, "--keys"]
                ),
                "Error: etcdserver: permission denied"
            );
            let ttl = sh_ok(
                srv,
                Some("root:pw"),
                &["lease", "timetolive", &id, "--keys"],
            );
            assert!(ttl.contains("/other/leased"), "{ttl}");
        }
        sh_ok(srv, Some("root:pw"), &["lease", "revoke", &id]);
    }
    assert_eq!(
        revoke_errs[0],
        "Error: failed to revoke lease (etcdserver: permission denied)"
    );
    assert_eq!(revoke_errs[0], revoke_errs[1]);

    // Token expiry with etcd-client: the same for both servers. etcd-client keeps
    // using its token unless told to refresh it, so a request after the TTL fails
    // with etcd's error; a client with automatic refresh authenticates again and
    // the request works (the old token is gone, so that proves a new one).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (eo, er) = rt.block_on(async {
        let opts = || {
            ConnectOptions::new()
                .with_user("alice", "pw")
                .with_connect_timeout(Duration::from_secs(3))
                .with_timeout(Duration::from_secs(5))
        };
        let mut co = Client::connect([ours.endpoint()], Some(opts()))
            .await
            .expect("connect ours");
        let mut cr = Client::connect([reference.endpoint()], Some(opts()))
            .await
            .expect("connect reference");
        let mut auto = Client::connect(
            [ours.endpoint()],
            Some(opts().with_auto_token_refresh(true)),
        )
        .await
        .expect("connect ours with refresh");
        co.put("/app/t", "1", None).await.expect("put with token");
        cr.put("/app/t", "1", None).await.expect("put with token");
        auto.get("/app/t", None).await.expect("get with token");
        let idle = Instant::now();
        while idle.elapsed() < Duration::from_millis(3500) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let eo = co.get("/app/t", None).await.err().map(|e| e.to_string());
        let er = cr.get("/app/t", None).await.err().map(|e| e.to_string());
        // With refresh enabled, the client authenticates again and the request works.
        let got = auto.get("/app/t", None).await.expect("get after refresh");
        assert_eq!(got.kvs().len(), 1);
        (eo, er)
    });
    let eo = eo.expect("request with an expired token worked on ours");
    assert!(eo.contains("etcdserver: invalid auth token"), "{eo}");
    let er = er.expect("request with an expired token worked on etcd");
    assert!(er.contains("etcdserver: invalid auth token"), "{er}");

    // auth disable restores open access.
    for srv in [&ours, &reference] {
        sh_ok(srv, Some("root:pw"), &["auth", "disable"]);
        assert_eq!(sh_ok(srv, None, &["put", "/other", "open"]).trim(), "OK");
        assert_eq!(sh_ok(srv, None, &["get", "/other"]), "/other\nopen\n");
    }
}

// ---------------------------------------------------------------------------
// 6. Client certificate common names as users

#[test]
fn certificate_common_name_is_the_user() {
    let pki = Pki::new();
    let mut s = start_tls(&server_flags(&pki.server, &pki.ca1.path, true));
    let root = pki.root.ctl_flags(&pki.ca1.path);
    let alice = pki.alice.ctl_flags(&pki.ca1.path);
    s.wait_healthy(&root);
    let ep = s.endpoint();
    // A certificate-only user, as the guides create them.
    for args in auth_setup(&["user", "add", "alice", "--no-password"]) {
        ctl_ok(&ep, &root, &args);
    }
    // CN=root: admin operations without --user.
    assert_eq!(ctl_ok(&ep, &root, &["user", "list"]), "alice\nroot\n");
    assert!(ctl_ok(&ep, &root, &["member", "list"]).contains("default"));
    assert_eq!(ctl_ok(&ep, &root, &["put", "/other", "r"]).trim(), "OK");
    assert!(ctl_ok(&ep, &root, &["role", "get", "app"]).contains("/app/"));

    // CN=alice: only /app/.
    assert_eq!(ctl_ok(&ep, &alice, &["put", "/app/a", "1"]).trim(), "OK");
    assert_eq!(ctl_ok(&ep, &alice, &["get", "/app/a"]), "/app/a\n1\n");
    for args in [
        vec!["put", "/other", "1"],
        vec!["get", "/other"],
        vec!["user", "list"],
    ] {
        let out = ctl(&ep, &alice, &args);
        assert!(!out.status.success(), "alice {args:?}: {}", text(&out));
        assert!(
            text(&out).contains("etcdserver: permission denied"),
            "alice {args:?}: {}",
            text(&out)
        );
    }
    // A user without a password cannot log in with one.
    let mut alice_pw = alice.clone();
    alice_pw.push("--user=alice:pw".into());
    let out = ctl(&ep, &alice_pw, &["get", "/app/a"]);
    assert!(
        text(&out).contains("etcdserver: authentication failed, invalid user ID or password"),
        "{}",
        text(&out)
    );
    // A password still overrides the certificate's name.
    let mut alice_as_root = alice.clone();
    alice_as_root.push("--user=root:pw".into());
    assert_eq!(
        ctl_ok(&ep, &alice_as_root, &["user", "list"]),
        "alice\nroot\n"
    );
    assert_no_pem(&s.log());
}

// ---------------------------------------------------------------------------
// Peer certificates from another CA: what each side logs

/// The log lines of `log` that report a refused handshake with `error`, in
/// etcd's shape: level warn, message "rejected connection", the remote
/// address, the server name asked for (none: peers dial IP addresses).
fn refusals<'a>(log: &'a str, error: &str) -> Vec<&'a str> {
    let error = format!("\"error\":\"{error}\"");
    log.lines()
        .filter(|l| {
            l.contains("\"msg\":\"rejected connection\"")
                && l.contains(&error)
                && l.contains("\"level\":\"warn\"")
                && l.contains("\"remote-addr\":\"127.0.0.1:")
                && l.contains("\"server-name\":\"\"")
        })
        .collect()
}

const REFUSING: &str =
    "tls: failed to verify client certificate: x509: certificate signed by unknown authority";
const REFUSED: &str = "remote error: tls: bad certificate";

/// Two members of `bin` that both trust only ca1, the second with a peer
/// certificate from ca2. The first refuses the second's client certificate
/// when the second dials; the second hears the first refuse its server
/// certificate when the first dials. Returns both once both have logged it,
/// and (for ours) after `observe` more.
fn peer_refusal(bin: &Path, pki: &Pki, observe: Duration) -> (Proc, Proc) {
    let ports: Vec<(u16, u16)> = (0..2).map(|_| (free_port(), free_port())).collect();
    let initial = format!(
        "m1=https://127.0.0.1:{},m2=https://127.0.0.1:{}",
        ports[0].1, ports[1].1
    );
    let mut procs = Vec::new();
    for (i, peer) in [&pki.server, &pki.other_ca_client].into_iter().enumerate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cp, pp) = ports[i];
        let mut args = member_args(
            &format!("m{}", i + 1),
            &dir.path().join("data"),
            &format!("http://127.0.0.1:{cp}"),
            &format!("https://127.0.0.1:{pp}"),
            Some(&initial),
        );
        args.extend([
            format!("--peer-cert-file={}", peer.cert),
            format!("--peer-key-file={}", peer.key),
            format!("--peer-trusted-ca-file={}", pki.ca1.path.display()),
            "--peer-client-cert-auth".into(),
            "--logger=zap".into(),
        ]);
        procs.push(Proc::spawn(bin, &args, dir, cp));
    }
    let m2 = procs.pop().expect("m2");
    let m1 = procs.pop().expect("m1");
    wait_until(Duration::from_secs(20), "both refusals logged", || {
        !refusals(&m1.log(), REFUSING).is_empty() && !refusals(&m2.log(), REFUSED).is_empty()
    });
    std::thread::sleep(observe);
    (m1, m2)
}

#[test]
fn peer_certificate_refusals_are_logged_as_etcd_logs_them() {
    let pki = Pki::new();
    // Debian's etcd: every refused handshake is one line on each side.
    let (m1, m2) = peer_refusal(&crate::harness::reference_bin(), &pki, Duration::ZERO);
    drop((m1, m2));
    // Ours: the same lines, and a peer that keeps reconnecting (every second
    // at most) is logged once per ten seconds and reason.
    let (m1, m2) = peer_refusal(&ours_bin(), &pki, Duration::from_secs(3));
    let (l1, l2) = (m1.log(), m2.log());
    assert_eq!(refusals(&l1, REFUSING).len(), 1, "{l1}");
    assert_eq!(refusals(&l2, REFUSED).len(), 1, "{l2}");
    // The member whose certificate was refused says why it cannot reach its
    // peer, in etcd's words too.
    assert!(
        l2.lines()
            .any(|l| l.contains("cannot reach peer") && l.contains(REFUSED)),
        "{l2}"
    );
    assert!(
        l1.lines().any(|l| l.contains("cannot reach peer")
            && l.contains("x509: certificate signed by unknown authority")),
        "{l1}"
    );
}
