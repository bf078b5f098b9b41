//! Identity from certificates, side by side with Debian's etcd: certificates
//! crafted (with openssl) to spoof a user name, and a self-signed CA
//! certificate used as the server's, the client's and the peers' own
//! certificate. Whatever Go's crypto/x509 reads, ours must read.

use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::Duration;

use crate::harness::{
    etcdctl_at, free_port, member_args, openssl_in, ours_bin, reference_bin, spawn_server,
    wait_until,
};

/// A certificate and its key, as files.
struct Pair {
    cert: PathBuf,
    key: PathBuf,
}

impl Pair {
    /// etcdctl's flags presenting this pair, with `ca` as the server's root.
    fn ctl_flags(&self, ca: &Path) -> Vec<String> {
        vec![
            format!("--cacert={}", ca.display()),
            format!("--cert={}", self.cert.display()),
            format!("--key={}", self.key.display()),
        ]
    }
}

/// A self-signed CA certificate `name`, with `extensions` (openssl `-addext`
/// values) on top of the CA basics.
fn self_signed(dir: &Path, name: &str, subject: &str, extensions: &[&str]) -> Pair {
    let (cert, key) = (format!("{name}.crt"), format!("{name}.key"));
    let mut args = vec![
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &cert,
        "-days",
        "3650",
        "-subj",
        subject,
    ];
    for e in extensions {
        args.push("-addext");
        args.push(e);
    }
    openssl_in(dir, &args);
    Pair {
        cert: dir.join(cert),
        key: dir.join(key),
    }
}

/// A leaf `name` with `subject`, signed by `ca`, valid for 127.0.0.1 and
/// localhost as server and client, plus the `extra` lines of an openssl
/// extension section (the section is `ext`; `[dir]` may follow).
fn leaf(dir: &Path, ca: &Pair, name: &str, subject: &str, extra: &str) -> Pair {
    let (cert, key, csr, ext) = (
        format!("{name}.crt"),
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.ext"),
    );
    let section = format!(
        "[ext]\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth,clientAuth\n{extra}\n"
    );
    let section = if section.contains("subjectAltName") {
        section
    } else {
        section.replacen(
            "[ext]\n",
            "[ext]\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
            1,
        )
    };
    std::fs::write(dir.join(&ext), section).expect("write extension file");
    openssl_in(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            subject,
        ],
    );
    openssl_in(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca.cert.display().to_string(),
            "-CAkey",
            &ca.key.display().to_string(),
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "3650",
            "-extfile",
            &ext,
            "-extensions",
            "ext",
        ],
    );
    Pair {
        cert: dir.join(cert),
        key: dir.join(key),
    }
}

/// One member (ours or Debian's etcd) serving https clients with client
/// certificate authentication; killed on drop.
struct Member {
    child: Child,
    endpoint: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Member {
    fn start(bin: &Path, server: &Pair, ca: &Path) -> Member {
        let dir = tempfile::tempdir().expect("temp dir");
        let endpoint = format!("https://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let mut args = member_args("default", &dir.path().join("data"), &endpoint, &peer, None);
        args.extend([
            format!("--cert-file={}", server.cert.display()),
            format!("--key-file={}", server.key.display()),
            format!("--trusted-ca-file={}", ca.display()),
            "--client-cert-auth".into(),
        ]);
        let log = dir.path().join("server.log");
        let child = spawn_server(bin, &args, dir.path(), &log);
        Member {
            child,
            endpoint,
            log,
            _dir: dir,
        }
    }

    fn ctl(&self, tls: &[String], args: &[&str]) -> Output {
        let mut all: Vec<&str> = tls.iter().map(String::as_str).collect();
        all.push("--dial-timeout=3s");
        all.extend_from_slice(args);
        etcdctl_at(&self.endpoint, &all, None)
    }

    fn ctl_ok(&self, tls: &[String], args: &[&str]) -> String {
        let out = self.ctl(tls, args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_healthy(&mut self, tls: &[String]) {
        wait_until(Duration::from_secs(30), "member healthy", || {
            assert!(
                matches!(self.child.try_wait(), Ok(None)),
                "server exited:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            self.ctl(tls, &["endpoint", "health"]).status.success()
        });
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which user a certificate acts as on `m`: `root` if it may write anywhere,
/// `alice` if only under `alice/`, `nobody` if neither.
fn acts_as(m: &Member, tls: &[String]) -> String {
    let ok = |args: &[&str]| m.ctl(tls, args).status.success();
    if ok(&["put", "/probe", "x"]) {
        "root".into()
    } else if ok(&["put", "alice/probe", "x"]) {
        "alice".into()
    } else {
        "nobody".into()
    }
}

#[test]
fn common_names_are_read_from_the_subject_as_go_reads_them() {
    let pki = tempfile::tempdir().expect("pki dir");
    let d = pki.path();
    let ca = self_signed(
        d,
        "ca",
        "/CN=test-ca",
        &["basicConstraints=critical,CA:TRUE"],
    );
    let server = leaf(d, &ca, "server", "/CN=server", "");
    let root = leaf(d, &ca, "root", "/CN=root", "");
    // CN=root inside a directoryName subject alternative name.
    let in_san = leaf(
        d,
        &ca,
        "in-san",
        "/CN=alice",
        "subjectAltName=IP:127.0.0.1,DNS:localhost,dirName:dir\n[dir]\nCN=root",
    );
    // A private extension whose bytes are a CN attribute naming root.
    let in_extension = leaf(
        d,
        &ca,
        "in-extension",
        "/CN=alice",
        "1.3.6.1.4.1.55555.1=DER:300B06035504031304726F6F74",
    );
    // Two CNs in the subject: Go takes the last.
    let two_cns = leaf(d, &ca, "two-cns", "/CN=alice/CN=root", "");
    let two_cns_reversed = leaf(d, &ca, "two-cns-reversed", "/CN=root/CN=alice", "");
    // CN=root in the issuer only: the CA's own subject.
    let root_ca = self_signed(
        d,
        "root-ca",
        "/CN=root",
        &["basicConstraints=critical,CA:TRUE"],
    );
    let issued_by_root = leaf(d, &root_ca, "issued-by-root", "/CN=alice", "");
    let bundle = d.join("bundle.crt");
    std::fs::write(
        &bundle,
        [
            std::fs::read(&ca.cert).expect("ca"),
            std::fs::read(&root_ca.cert).expect("root ca"),
        ]
        .concat(),
    )
    .expect("write bundle");

    let cases: [(&str, &Pair, &str); 6] = [
        ("root", &root, "root"),
        ("CN in a SAN directoryName", &in_san, "alice"),
        ("CN in another extension", &in_extension, "alice"),
        ("two CNs in the subject", &two_cns, "root"),
        ("two CNs, root first", &two_cns_reversed, "alice"),
        ("root in the issuer", &issued_by_root, "alice"),
    ];
    let mut seen = Vec::new();
    for bin in [reference_bin(), ours_bin()] {
        let mut m = Member::start(&bin, &server, &bundle);
        let admin = root.ctl_flags(&ca.cert);
        m.wait_healthy(&admin);
        for args in [
            vec!["user", "add", "root", "--new-user-password=pw"],
            vec!["user", "grant-role", "root", "root"],
            vec!["user", "add", "alice", "--new-user-password=pw"],
            vec!["role", "add", "app"],
            vec![
                "role",
                "grant-permission",
                "app",
                "--prefix=true",
                "readwrite",
                "alice/",
            ],
            vec!["user", "grant-role", "alice", "app"],
            vec!["auth", "enable"],
        ] {
            m.ctl_ok(&admin, &args);
        }
        let got: Vec<(String, String)> = cases
            .iter()
            .map(|(what, pair, _)| (what.to_string(), acts_as(&m, &pair.ctl_flags(&ca.cert))))
            .collect();
        seen.push((bin.display().to_string(), got));
    }
    let want: Vec<(String, String)> = cases
        .iter()
        .map(|(what, _, user)| (what.to_string(), user.to_string()))
        .collect();
    assert_eq!(
        seen[0].1, want,
        "Debian's etcd reads other names than expected"
    );
    assert_eq!(
        seen[1].1, seen[0].1,
        "ours ({}) reads other names than etcd",
        seen[1].0
    );
}

#[test]
fn a_trusted_ca_certificate_serves_as_its_own_leaf() {
    let pki = tempfile::tempdir().expect("pki dir");
    let d = pki.path();
    // One self-signed CA:TRUE certificate for everything: server, client, peers.
    let only = self_signed(
        d,
        "only",
        "/CN=root",
        &[
            "basicConstraints=critical,CA:TRUE",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
    );
    let tls = only.ctl_flags(&only.cert);
    for bin in [reference_bin(), ours_bin()] {
        let mut m = Member::start(&bin, &only, &only.cert);
        m.wait_healthy(&tls);
        assert_eq!(
            m.ctl_ok(&tls, &["put", "k", "v"]).trim(),
            "OK",
            "{}",
            bin.display()
        );
        assert_eq!(
            m.ctl_ok(&tls, &["get", "k", "--print-value-only"]).trim(),
            "v"
        );
    }
}

/// Three members of ours whose peer links all use one self-signed CA
/// certificate as server and client certificate, with peer client
/// certificate authentication.
#[test]
fn peers_with_a_ca_certificate_as_their_own() {
    let pki = tempfile::tempdir().expect("pki dir");
    let d = pki.path();
    let only = self_signed(
        d,
        "only",
        "/CN=member",
        &[
            "basicConstraints=critical,CA:TRUE",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
    );
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("m{i}=https://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
    let mut children: Vec<Child> = Vec::new();
    for (i, (c, p)) in ports.iter().enumerate() {
        let mut args = member_args(
            &format!("m{i}"),
            &dirs[i].path().join("data"),
            &format!("http://127.0.0.1:{c}"),
            &format!("https://127.0.0.1:{p}"),
            Some(&initial),
        );
        args.extend([
            format!("--peer-cert-file={}", only.cert.display()),
            format!("--peer-key-file={}", only.key.display()),
            format!("--peer-trusted-ca-file={}", only.cert.display()),
            "--peer-client-cert-auth".into(),
            "--initial-cluster-token=ca-as-leaf".into(),
        ]);
        children.push(spawn_server(
            &ours_bin(),
            &args,
            dirs[i].path(),
            &dirs[i].path().join("server.log"),
        ));
    }
    struct Kill(Vec<Child>);
    impl Drop for Kill {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let _kill = Kill(children);
    let endpoints = ports
        .iter()
        .map(|(c, _)| format!("http://127.0.0.1:{c}"))
        .collect::<Vec<_>>()
        .join(",");
    let logs = || {
        dirs.iter()
            .map(|d| std::fs::read_to_string(d.path().join("server.log")).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    wait_until(Duration::from_secs(30), "three healthy members", || {
        etcdctl_at(
            &endpoints,
            &["--dial-timeout=2s", "endpoint", "health"],
            None,
        )
        .status
        .success()
    });
    let out = etcdctl_at(&endpoints, &["put", "k", "v"], None);
    assert!(out.status.success(), "put: {:?}\n{}", out, logs());
    // Every member serves the write: the peers replicate over the CA-as-leaf links.
    for (c, _) in &ports {
        let ep = format!("http://127.0.0.1:{c}");
        wait_until(Duration::from_secs(10), "write replicated", || {
            let o = etcdctl_at(
                &ep,
                &["get", "k", "--consistency=s", "--print-value-only"],
                None,
            );
            String::from_utf8_lossy(&o.stdout).trim() == "v"
        });
    }
}
