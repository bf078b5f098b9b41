//! Patroni (Debian's `patroni` package), the most common etcd user outside
//! Kubernetes, which talks to etcd only through the JSON gateway: it manages
//! two PostgreSQL 15 instances on loopback with a three-member cluster of
//! ours as its `etcd3` DCS. The first node bootstraps a primary, the second
//! becomes a replica streaming from it (`pg_stat_replication`, a row written
//! on the primary read on the replica); then the primary's Patroni and its
//! postmaster are killed with SIGKILL, and the replica must be promoted once
//! the leader key's lease runs out (Patroni's `ttl`), with the row. Once with
//! client TLS and client certificates, once with etcd auth (a user and
//! password in Patroni's config, a role limited to Patroni's namespace).
//!
//! PostgreSQL refuses to run as root: when the tests run as root, Patroni
//! runs as the `postgres` user (`setpriv`), in a temporary directory it owns.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::gateway::{pki, tls_cluster};
use crate::harness::{etcdctl_at, free_port, wait_until};

const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// Patroni's leader key TTL, HA loop interval and retry timeout (its rule:
/// `loop_wait + 2 * retry_timeout <= ttl`).
const TTL: u64 = 10;
const LOOP_WAIT: u64 = 1;
const RETRY_TIMEOUT: u64 = 4;
/// Bootstrapping (initdb) and cloning (pg_basebackup) on a loaded machine.
const START: Duration = Duration::from_secs(180);

/// Each test runs three members, two PostgreSQL servers and two Patronis:
/// one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The user Patroni runs as: `postgres` (uid, gid) when the tests run as
/// root, else the current user (`None`).
fn run_as() -> Option<(String, String)> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let id = |flag: &str| {
        let o = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        assert!(o.status.success(), "no postgres user: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    Some((id("-u"), id("-g")))
}

/// A directory Patroni's user owns, removed at the end.
struct Workdir {
    dir: tempfile::TempDir,
    user: Option<(String, String)>,
}

impl Workdir {
    fn new() -> Workdir {
        let dir = tempfile::Builder::new()
            .prefix("patroni")
            .tempdir()
            .expect("temp dir");
        let w = Workdir {
            dir,
            user: run_as(),
        };
        w.hand_over(w.path());
        w
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Gives `p` (and what it holds) to Patroni's user.
    fn hand_over(&self, p: &Path) {
        if let Some((uid, gid)) = &self.user {
            let o = Command::new("chown")
                .args(["-R", &format!("{uid}:{gid}")])
                .arg(p)
                .output()
                .expect("run chown");
            assert!(o.status.success(), "chown: {}", text(&o));
        }
    }

    /// Copies `from` in as `name`, readable by Patroni's user only.
    fn copy_in(&self, from: &str, name: &str) -> String {
        let to = self.path().join(name);
        std::fs::copy(from, &to).expect("copy a file in");
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        self.hand_over(&to);
        to.display().to_string()
    }
}

/// A GET on 127.0.0.1:`port`: the status code, `None` when nothing answers.
fn get_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 32];
    let n = s.read(&mut head).ok()?;
    let line = String::from_utf8_lossy(&head[..n]).into_owned();
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Whether a process runs (a zombie waiting for its parent does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Whether `pid` runs PostgreSQL's server (a PID from a stale
/// `postmaster.pid` may have been reused).
fn is_postgres(pid: i32) -> bool {
    alive(pid)
        && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.ends_with("postgres"))
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a PID read from a process we started (or its
    // postmaster.pid) and a valid signal number.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// One Patroni node and the PostgreSQL it runs.
struct Node {
    name: String,
    api: u16,
    pg: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Writes the node's configuration: `dcs` is its `etcd3` section.
    fn new(w: &Workdir, name: &str, scope: &str, dcs: &str) -> Node {
        let dir = w.path().join(name);
        std::fs::create_dir(&dir).expect("node dir");
        let (api, pg) = (free_port(), free_port());
        let d = dir.display();
        let yaml = format!(
            r#"scope: {scope}
namespace: /service/
name: {name}
restapi:
  listen: 127.0.0.1:{api}
  connect_address: 127.0.0.1:{api}
{dcs}
bootstrap:
  dcs:
    ttl: {TTL}
    loop_wait: {LOOP_WAIT}
    retry_timeout: {RETRY_TIMEOUT}
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: false
      parameters:
        wal_level: replica
        hot_standby: "on"
        max_wal_senders: 5
        max_replication_slots: 5
  initdb:
  - encoding: UTF8
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {d}/data
  bin_dir: {BIN_DIR}
  pgpass: {d}/pgpass
  authentication:
    superuser:
      username: postgres
      password: pg-secret
    replication:
      username: replicator
      password: rep-secret
  parameters:
    unix_socket_directories: '{d}'
    shared_buffers: 16MB
    max_connections: 20
    fsync: "off"
  pg_hba:
  - local all all trust
  - host all all 127.0.0.1/32 trust
  - host replication all 127.0.0.1/32 trust
"#
        );
        std::fs::write(dir.join("patroni.yml"), yaml).expect("write patroni.yml");
        w.hand_over(&dir);
        Node {
            name: name.to_string(),
            api,
            pg,
            dir,
            child: None,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("patroni.log")).unwrap_or_default()
    }

    fn start(&mut self, w: &Workdir) {
        let log = std::fs::File::create(self.dir.join("patroni.log")).expect("log file");
        let mut cmd = match &w.user {
            Some(_) => {
                let mut c = Command::new("setpriv");
                c.args([
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--init-groups",
                    "--",
                    "patroni",
                ]);
                c
            }
            None => Command::new("patroni"),
        };
        cmd.arg(self.dir.join("patroni.yml"))
            .current_dir(&self.dir)
            .env("HOME", &self.dir)
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        self.child = Some(
            cmd.spawn()
                .expect("start patroni (is Debian's patroni installed?)"),
        );
    }

    /// Waits until the REST API answers 200 on `path`.
    fn wait_for(&mut self, path: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("{}'s Patroni exited ({st}):\n{}", self.name, self.log());
            }
            if get_status(self.api, path) == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never answered 200 on {path}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The postmaster's PID, from its `postmaster.pid`.
    fn postmaster(&self) -> Option<i32> {
        let s = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).ok()?;
        s.lines().next()?.trim().parse().ok()
    }

    /// SIGKILL to Patroni and its postmaster, at once.
    fn kill9(&mut self) {
        let pm = self.postmaster().filter(|&pm| is_postgres(pm));
        if let Some(c) = &self.child {
            signal(c.id() as i32, libc::SIGKILL);
        }
        if let Some(pm) = pm {
            signal(pm, libc::SIGKILL);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        if let Some(pm) = pm {
            wait_until(Duration::from_secs(20), "the postmaster gone", || {
                !alive(pm)
            });
        }
    }

    /// Runs SQL with psql as the superuser: its output.
    fn sql(&self, query: &str) -> Result<String, String> {
        let o = Command::new(Path::new(BIN_DIR).join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.pg.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-Atqc", query])
            .env("PGCONNECT_TIMEOUT", "5")
            .env("PGPASSWORD", "pg-secret")
            .output()
            .map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
        } else {
            Err(text(&o))
        }
    }
}

impl Drop for Node {
    /// Stops Patroni, then PostgreSQL if Patroni left it (immediate
    /// shutdown: SIGQUIT), and waits for both.
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            signal(c.id() as i32, libc::SIGKILL);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        if let Some(pm) = self.postmaster().filter(|&pm| is_postgres(pm)) {
            signal(pm, libc::SIGQUIT);
            let deadline = Instant::now() + Duration::from_secs(20);
            while alive(pm) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if alive(pm) {
                signal(pm, libc::SIGKILL);
            }
        }
    }
}

/// How the test reaches the DCS with etcdctl: endpoint and flags.
struct Dcs {
    endpoint: String,
    flags: Vec<String>,
}

impl Dcs {
    fn get(&self, key: &str) -> Result<String, String> {
        let mut args: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        args.extend(["get", "--print-value-only", key]);
        let o = etcdctl_at(&self.endpoint, &args, None);
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
        } else {
            Err(text(&o))
        }
    }
}

/// Bootstrap, replication, then the primary killed and the replica
/// promoted; `etcd3` is Patroni's DCS section.
fn failover(w: &Workdir, etcd3: &str, dcs: &Dcs) {
    let scope = format!("pg{}", free_port());
    let leader_key = format!("/service/{scope}/leader");
    let mut n1 = Node::new(w, "node1", &scope, etcd3);
    let mut n2 = Node::new(w, "node2", &scope, etcd3);

    n1.start(w);
    n1.wait_for("/primary", START);
    assert_eq!(dcs.get(&leader_key).as_deref(), Ok("node1"));
    n1.sql("CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
        .expect("a write on the primary");

    n2.start(w);
    n2.wait_for("/replica", START);
    wait_until(START, "node2 streaming from node1", || {
        n1.sql("SELECT application_name || ' ' || state FROM pg_stat_replication")
            .is_ok_and(|s| s.lines().any(|l| l == "node2 streaming"))
    });
    wait_until(START, "the row on the replica", || {
        n2.sql("SELECT x FROM t").is_ok_and(|s| s == "42")
    });
    n2.wait_for("/health", START);
    assert_eq!(dcs.get(&leader_key).as_deref(), Ok("node1"));

    // The primary's Patroni and PostgreSQL die at once.
    let killed = Instant::now();
    n1.kill9();
    let mut expired = None;
    let deadline = killed + Duration::from_secs(TTL + 60);
    loop {
        if expired.is_none() && dcs.get(&leader_key).is_ok_and(|v| v != "node1") {
            expired = Some(killed.elapsed());
        }
        if get_status(n2.api, "/primary") == Some(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node2 not promoted {:?} after the kill:\n{}",
            killed.elapsed(),
            n2.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let promoted = killed.elapsed();
    let expired = expired.unwrap_or(promoted);
    eprintln!("leader key released after {expired:?}, node2 promoted after {promoted:?}");
    // The leader key lives as long as its lease: at most the TTL after the
    // last refresh (one HA loop before the kill at most).
    assert!(
        expired <= Duration::from_secs(TTL + LOOP_WAIT + 2),
        "the leader key outlived its TTL: {expired:?}"
    );
    // Promotion follows within an HA loop or two.
    assert!(
        promoted <= Duration::from_secs(TTL + LOOP_WAIT + 15),
        "promotion took {promoted:?}"
    );
    wait_until(Duration::from_secs(30), "node2's leader key", || {
        dcs.get(&leader_key).as_deref() == Ok("node2")
    });
    assert_eq!(n2.sql("SELECT x FROM t").as_deref(), Ok("42"));
    // Patroni answers /primary once it has promoted; PostgreSQL leaves
    // recovery a moment later.
    wait_until(
        Duration::from_secs(30),
        "a write on the promoted replica",
        || n2.sql("INSERT INTO t VALUES (43)").is_ok(),
    );
    assert_eq!(
        n2.sql("SELECT count(*) FROM t WHERE x = 43").as_deref(),
        Ok("1")
    );
}

#[test]
fn patroni_fails_over_with_client_certificates() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let w = Workdir::new();
    let p = pki();
    let members = tls_cluster(&p, 3, &[]);
    let ca = w.copy_in(&p.ca, "ca.pem");
    let cert = w.copy_in(&p.root.0, "client.crt");
    let key = w.copy_in(&p.root.1, "client.key");
    let hosts = members
        .iter()
        .map(|m| format!("127.0.0.1:{}", m.client))
        .collect::<Vec<_>>()
        .join(",");
    let etcd3 = format!(
        "etcd3:\n  hosts: {hosts}\n  protocol: https\n  cacert: {ca}\n  cert: {cert}\n  key: {key}"
    );
    let dcs = Dcs {
        endpoint: format!("https://127.0.0.1:{}", members[0].client),
        flags: vec![
            format!("--cacert={}", p.ca),
            format!("--cert={}", p.root.0),
            format!("--key={}", p.root.1),
        ],
    };
    failover(&w, &etcd3, &dcs);
}

#[test]
fn patroni_fails_over_with_auth() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let w = Workdir::new();
    let c = Cluster::start(3, &[]);
    let m = &c.members[0];
    for args in [
        &["user", "add", "root:root-secret"][..],
        &["role", "add", "patroni"],
        &[
            "role",
            "grant-permission",
            "patroni",
            "--prefix=true",
            "readwrite",
            "/service/",
        ],
        &["user", "add", "patroni:patroni-secret"],
        &["user", "grant-role", "patroni", "patroni"],
        &["auth", "enable"],
    ] {
        m.ctl_ok(args);
    }
    let hosts = c
        .members
        .iter()
        .map(|m| format!("127.0.0.1:{}", m.client_port))
        .collect::<Vec<_>>()
        .join(",");
    let etcd3 =
        format!("etcd3:\n  hosts: {hosts}\n  username: patroni\n  password: patroni-secret");
    let dcs = Dcs {
        endpoint: m.endpoint(),
        flags: vec!["--user=root:root-secret".to_string()],
    };
    failover(&w, &etcd3, &dcs);
    // Without a user, the DCS is closed.
    let o = m.ctl(&["get", "--prefix", "/service/"]);
    assert!(!o.status.success(), "{}", text(&o));
}
