//! Unix domain sockets as client and peer URLs (`unix://`, `unixs://`): etcdctl
//! over a socket file against ours and Debian's etcd side by side, stale socket
//! files, and a three-member cluster whose members talk over peer sockets.
//! etcd names a socket file by the URL's host:port, relative to the member's
//! working directory, so every process here runs in the test's temp dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::harness::{Kind, etcdctl_bin, ours_bin, reference_bin, wait_until};

/// A member process started in `cwd`, killed when dropped.
struct Member {
    child: Option<Child>,
    log: PathBuf,
}

impl Member {
    fn start(kind: Kind, cwd: &Path, name: &str, args: &[String]) -> Member {
        let bin = match kind {
            Kind::Ours => ours_bin(),
            Kind::Reference => reference_bin(),
        };
        let conf = cwd.join("none.conf");
        std::fs::write(&conf, "").expect("empty conf file");
        let log = cwd.join(format!("{name}.log"));
        let f = std::fs::File::create(&log).expect("log file");
        let child = Command::new(bin)
            .args(args)
            .current_dir(cwd)
            .env("ETCD_CONF_FILE", &conf)
            .env_remove("ETCD_NAME")
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log file"))
            .stderr(f)
            .spawn()
            .expect("start server");
        Member {
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the member with SIGTERM and waits for it.
    fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the pid of a child this test owns.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let _ = c.wait();
        }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// etcd's flags for member `name` with client and peer URLs.
fn args(name: &str, client: &str, peer: &str, cluster: &str) -> Vec<String> {
    [
        "--name",
        name,
        "--data-dir",
        &format!("{name}.etcd"),
        "--listen-client-urls",
        client,
        "--advertise-client-urls",
        client,
        "--listen-peer-urls",
        peer,
        "--initial-advertise-peer-urls",
        peer,
        "--initial-cluster",
        cluster,
        "--logger",
        "zap",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// etcdctl run in `cwd` against `endpoint` with `extra` flags.
fn ctl(cwd: &Path, endpoint: &str, extra: &[String], a: &[&str]) -> Output {
    Command::new(etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .current_dir(cwd)
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=5s")
        .args(extra)
        .args(a)
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl")
}

fn ctl_ok(cwd: &Path, endpoint: &str, extra: &[String], a: &[&str]) -> String {
    let o = ctl(cwd, endpoint, extra, a);
    assert!(
        o.status.success(),
        "etcdctl {a:?} at {endpoint}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn wait_healthy(m: &mut Member, cwd: &Path, endpoint: &str, extra: &[String]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = m.exited() {
            panic!("member exited ({st}):\n{}", m.log());
        }
        let o = ctl(cwd, endpoint, extra, &["endpoint", "health"]);
        if o.status.success() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{endpoint} not healthy after 30 s: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            m.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What etcdctl prints for a fixed script run over `unix://localhost:2379`
/// against one member of `kind`, plus whether both socket files were gone
/// after the member stopped.
fn unix_script(kind: Kind) -> (Vec<String>, bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let cwd = dir.path();
    let client = "unix://localhost:2379";
    let peer = "unix://localhost:2380";
    let mut m = Member::start(
        kind,
        cwd,
        "m",
        &args("m", client, peer, "m=unix://localhost:2380"),
    );
    wait_healthy(&mut m, cwd, client, &[]);
    assert!(
        cwd.join("localhost:2379").exists() && cwd.join("localhost:2380").exists(),
        "socket files named by host:port in the working directory"
    );
    let mut out = Vec::new();
    for a in [
        &["put", "a", "1"][..],
        &["put", "b", "2"],
        &["get", "a", "b"],
        &["get", "", "--prefix", "--keys-only"],
        &["member", "list"],
        &["del", "a"],
        &["get", "a", "--print-value-only"],
    ] {
        out.push(ctl_ok(cwd, client, &[], a));
    }
    let status = ctl_ok(cwd, client, &[], &["endpoint", "status"]);
    // The version and database size differ; the endpoint and member ID do not.
    out.push(status.split(", ").take(2).collect::<Vec<_>>().join(", "));
    let lease = ctl_ok(cwd, client, &[], &["lease", "grant", "60"]);
    // The lease ID is the member's choice.
    let words: Vec<&str> = lease.split_whitespace().collect();
    out.push(format!("{} {}", words[0], words[2..].join(" ")));
    m.terminate();
    let gone = !cwd.join("localhost:2379").exists() && !cwd.join("localhost:2380").exists();
    (out, gone)
}

#[test]
fn etcdctl_over_a_unix_socket_as_against_etcd() {
    let (ours, ours_gone) = unix_script(Kind::Ours);
    let (theirs, theirs_gone) = unix_script(Kind::Reference);
    assert_eq!(ours, theirs);
    assert!(theirs_gone, "etcd removes its socket files when it stops");
    assert!(ours_gone, "ours removes its socket files when it stops");
}

/// Starts a member of `kind` with a stale file where a socket goes; returns
/// whether it started (served etcdctl) and its log.
fn start_over_stale_file(kind: Kind, stale: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let cwd = dir.path();
    std::fs::write(cwd.join(stale), b"").expect("stale file");
    let client = "unix://localhost:2379";
    let mut m = Member::start(
        kind,
        cwd,
        "m",
        &args(
            "m",
            client,
            "unix://localhost:2380",
            "m=unix://localhost:2380",
        ),
    );
    let mut served = false;
    wait_until(Duration::from_secs(30), "start or exit", || {
        if m.exited().is_some() {
            return true;
        }
        served = ctl(cwd, client, &[], &["endpoint", "health"])
            .status
            .success();
        served
    });
    (served, m.log())
}

#[test]
fn stale_socket_files_as_etcd_treats_them() {
    // A file where the client socket goes: etcd refuses to start.
    for kind in [Kind::Reference, Kind::Ours] {
        let (served, log) = start_over_stale_file(kind, "localhost:2379");
        assert!(!served, "{kind:?} started over a stale client socket file");
        assert!(
            log.contains("address already in use") || log.contains("Address already in use"),
            "{kind:?}: {log}"
        );
    }
    // A file where the peer socket goes: removed, and the member starts.
    for kind in [Kind::Reference, Kind::Ours] {
        let (served, log) = start_over_stale_file(kind, "localhost:2380");
        assert!(
            served,
            "{kind:?} did not start over a stale peer socket file: {log}"
        );
    }
}

#[test]
fn unix_urls_with_a_path_are_refused_as_etcd_refuses_them() {
    for kind in [Kind::Reference, Kind::Ours] {
        let dir = tempfile::tempdir().expect("temp dir");
        let sock = format!("unix://{}", dir.path().join("etcd.sock").display());
        let bin = match kind {
            Kind::Ours => ours_bin(),
            Kind::Reference => reference_bin(),
        };
        let o = Command::new(bin)
            .current_dir(dir.path())
            .args(["--listen-client-urls", &sock])
            .args(["--advertise-client-urls", "http://127.0.0.1:2379"])
            .stdin(Stdio::null())
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{kind:?} started");
        assert!(
            err.contains("URL address does not have the form \"host:port\""),
            "{kind:?}: {err}"
        );
    }
}

/// A CA and a certificate for `localhost` (server and client) in `dir`:
/// (ca, cert, key).
fn localhost_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.distinguished_name.push(DnType::CommonName, "unix-ca");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = p.self_signed(&ca_key).expect("CA");
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    p.distinguished_name.push(DnType::CommonName, "localhost");
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = p.signed_by(&key, &ca, &ca_key).expect("sign");
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).expect("write");
    std::fs::write(&paths.1, cert.pem()).expect("write");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write");
    paths
}

/// etcdctl over `unixs://localhost:2379` against a member of `kind`: what a
/// client trusting the CA and one that does not see.
fn unixs_script(kind: Kind) -> Vec<String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let cwd = dir.path();
    let (ca, cert, key) = localhost_cert(cwd);
    let client = "unixs://localhost:2379";
    let mut a = args(
        "m",
        client,
        "unix://localhost:2380",
        "m=unix://localhost:2380",
    );
    a.extend([
        format!("--cert-file={}", cert.display()),
        format!("--key-file={}", key.display()),
    ]);
    let mut m = Member::start(kind, cwd, "m", &a);
    let tls = vec![format!("--cacert={}", ca.display())];
    wait_healthy(&mut m, cwd, client, &tls);
    let mut out = vec![
        ctl_ok(cwd, client, &tls, &["put", "k", "v"]),
        ctl_ok(cwd, client, &tls, &["get", "k"]),
    ];
    // Without the CA the server is not trusted.
    let o = ctl(cwd, client, &[], &["get", "k"]);
    out.push(format!("untrusted ok: {}", o.status.success()));
    // Plain gRPC on the TLS socket is refused too.
    let o = ctl(cwd, "unix://localhost:2379", &[], &["get", "k"]);
    out.push(format!("plain ok: {}", o.status.success()));
    // Both refusals are logged, the remote address of a socket's client
    // being "@".
    for (server_name, error) in [
        ("localhost", "remote error: tls: bad certificate"),
        ("", "tls: first record does not look like a TLS handshake"),
    ] {
        let want = [
            "\"msg\":\"rejected connection\"".to_string(),
            "\"level\":\"warn\"".to_string(),
            "\"remote-addr\":\"@\"".to_string(),
            format!("\"server-name\":\"{server_name}\""),
            format!("\"error\":\"{error}\""),
        ];
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let logged = loop {
            let log = m.log();
            if log
                .lines()
                .any(|l| want.iter().all(|w| l.contains(w.as_str())))
            {
                break true;
            }
            if std::time::Instant::now() >= deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        out.push(format!("logged {error:?}: {logged}"));
    }
    m.terminate();
    out
}

#[test]
fn etcdctl_over_tls_on_a_unix_socket_as_against_etcd() {
    let ours = unixs_script(Kind::Ours);
    let theirs = unixs_script(Kind::Reference);
    assert_eq!(ours, theirs);
    assert_eq!(theirs[1], "k\nv\n");
    assert!(
        theirs[4..].iter().all(|l| l.ends_with("true")),
        "{theirs:?}"
    );
}

#[test]
fn three_members_over_unix_peer_sockets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cwd = dir.path();
    let names = ["m1", "m2", "m3"];
    let cluster = names
        .iter()
        .map(|n| format!("{n}=unix://{n}:2380"))
        .collect::<Vec<_>>()
        .join(",");
    let mut members: Vec<Member> = names
        .iter()
        .map(|n| {
            Member::start(
                Kind::Ours,
                cwd,
                n,
                &args(
                    n,
                    &format!("unix://{n}:2379"),
                    &format!("unix://{n}:2380"),
                    &cluster,
                ),
            )
        })
        .collect();
    for (m, n) in members.iter_mut().zip(names) {
        wait_healthy(m, cwd, &format!("unix://{n}:2379"), &[]);
    }
    let list = ctl_ok(cwd, "unix://m2:2379", &[], &["member", "list"]);
    for n in names {
        assert!(
            list.contains(&format!("{n}, unix://{n}:2380, unix://{n}:2379")),
            "{list}"
        );
    }
    // Writes through one member reach the others' local stores.
    for i in 0..20 {
        ctl_ok(
            cwd,
            &format!("unix://{}:2379", names[i % 3]),
            &[],
            &["put", &format!("k{i}"), &format!("v{i}")],
        );
    }
    for n in names {
        let ep = format!("unix://{n}:2379");
        wait_until(
            Duration::from_secs(10),
            &format!("replication to {n}"),
            || {
                ctl_ok(
                    cwd,
                    &ep,
                    &[],
                    &["get", "k", "--prefix", "--consistency=s", "--keys-only"],
                )
                .lines()
                .filter(|l| !l.is_empty())
                .count()
                    == 20
            },
        );
    }
    // A keep-alive sent to every member reaches the leader (followers forward
    // it to the leader's unix client URL).
    let grant = ctl_ok(cwd, "unix://m1:2379", &[], &["lease", "grant", "60"]);
    let id = grant.split_whitespace().nth(1).expect("lease id");
    for n in names {
        let out = ctl_ok(
            cwd,
            &format!("unix://{n}:2379"),
            &[],
            &["lease", "keep-alive", "--once", id],
        );
        assert!(out.contains("keepalived with TTL"), "{n}: {out}");
    }
    for m in &mut members {
        m.terminate();
    }
    for n in names {
        assert!(
            !cwd.join(format!("{n}:2380")).exists(),
            "{n}'s peer socket left"
        );
    }
}

/// Two members of `kind` whose peers talk TLS over Unix sockets
/// (`unixs://localhost:<n>`, the TLS server name `localhost`) with peer
/// client-certificate auth: what `member list` says once a write reached the
/// second member.
fn tls_peer_sockets(kind: Kind) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let cwd = dir.path();
    let (ca, cert, key) = localhost_cert(cwd);
    let peers = ["unixs://localhost:23801", "unixs://localhost:23802"];
    let cluster = format!("m1={},m2={}", peers[0], peers[1]);
    let mut members = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        let name = format!("m{}", i + 1);
        let mut a = args(&name, &format!("unix://{name}:2379"), peer, &cluster);
        a.extend([
            format!("--peer-cert-file={}", cert.display()),
            format!("--peer-key-file={}", key.display()),
            format!("--peer-trusted-ca-file={}", ca.display()),
            "--peer-client-cert-auth".to_string(),
            // etcd 3.4 checks a peer's client certificate against the address
            // it connects from, which a Unix socket's client does not have
            // ("address @: missing port in address"); ours makes no such check.
            "--experimental-peer-skip-client-san-verification".to_string(),
        ]);
        members.push(Member::start(kind, cwd, &name, &a));
    }
    for (i, m) in members.iter_mut().enumerate() {
        wait_healthy(m, cwd, &format!("unix://m{}:2379", i + 1), &[]);
    }
    ctl_ok(cwd, "unix://m1:2379", &[], &["put", "k", "over unixs"]);
    wait_until(Duration::from_secs(10), "the write on m2", || {
        ctl_ok(
            cwd,
            "unix://m2:2379",
            &[],
            &["get", "k", "--consistency=s", "--print-value-only"],
        ) == "over unixs\n"
    });
    let list = ctl_ok(cwd, "unix://m2:2379", &[], &["member", "list"]);
    for m in &mut members {
        m.terminate();
    }
    list
}

#[test]
fn two_members_over_tls_on_unix_peer_sockets_as_etcd() {
    let ours = tls_peer_sockets(Kind::Ours);
    let theirs = tls_peer_sockets(Kind::Reference);
    assert_eq!(ours, theirs);
    assert!(
        ours.contains("m2, unixs://localhost:23802, unix://m2:2379"),
        "{ours}"
    );
}
