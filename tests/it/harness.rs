//! Starting and stopping servers for tests: ours (the binary under test) and, for
//! comparisons, Debian's etcd. Every server gets free loopback ports and a fresh
//! data directory, and is killed when dropped.

#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Which implementation a [`Server`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ours,
    Reference,
}

/// Our server as cargo built it for the tests; ETCDRS_TEST_SERVER names
/// another build (a release binary, for a measurement by hand).
pub fn ours_bin() -> PathBuf {
    std::env::var_os("ETCDRS_TEST_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_etcd")))
}

/// Debian's etcd (package etcd-server); override with ETCD_REFERENCE_BIN.
pub fn reference_bin() -> PathBuf {
    std::env::var_os("ETCD_REFERENCE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// Debian's etcdctl (package etcd-client); override with ETCDCTL_BIN.
pub fn etcdctl_bin() -> PathBuf {
    std::env::var_os("ETCDCTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcdctl"))
}

/// A free TCP port on 127.0.0.1, below the ephemeral range (see [`free_listener`]).
pub fn free_port() -> u16 {
    free_listener().local_addr().expect("local addr").port()
}

static USED_PORTS: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// A loopback port below the kernel's ephemeral range (32768 and up), so that no
/// outgoing connection of any process (clients, peers, proxies) can take it between
/// now and the server's bind, and never the same one twice in this process. The
/// listener is returned still bound.
pub fn free_listener() -> TcpListener {
    let mut used = USED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let seed = std::process::id() as usize * 7919 + used.len() * 104_729;
    for k in 0..12_000usize {
        let port = (20_000 + (seed + k * 6151) % 12_000) as u16;
        if used.contains(&port) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            used.push(port);
            return l;
        }
    }
    panic!("no free loopback port in 20000..32000");
}

/// Whether a server's log shows that it stopped because one of its ports was
/// taken when it bound it.
fn exited_on_taken_port(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("address already in use")
}

/// What holds loopback `ports` right now (`ss`), for a failure message.
pub fn port_holders(ports: &[u16]) -> String {
    let filter = ports
        .iter()
        .map(|p| format!("sport = :{p}"))
        .collect::<Vec<_>>()
        .join(" or ");
    Command::new("ss")
        .args(["-tanpe", &filter])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("ss: {e}"))
}

/// How many times a server that found one of its ports taken at start is
/// started again (a port is checked free, then released for the server to
/// bind: another process can take it in between).
const TAKEN_PORT_RETRIES: usize = 5;

/// Whether a server that exited with `log` before it was ready is to be
/// started again: it found one of `ports` taken, and has been started again
/// fewer than [`TAKEN_PORT_RETRIES`] times (`retries` counts them). Says
/// what held the ports, then waits until they can be bound.
pub fn start_again_on_taken_port(who: &str, log: &str, ports: &[u16], retries: &mut usize) -> bool {
    if !exited_on_taken_port(log) || *retries >= TAKEN_PORT_RETRIES {
        return false;
    }
    *retries += 1;
    eprintln!(
        "{who} found a port taken; starting it again:\n{}",
        port_holders(ports)
    );
    wait_until(
        Duration::from_secs(10),
        "the server's ports to be free",
        || {
            ports
                .iter()
                .all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        },
    );
    true
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until<F: FnMut() -> bool>(timeout: Duration, what: &str, cond: F) {
    wait_for_value(timeout, what, true, cond);
}

/// Polls `value` every 20 ms until it gives `want` or `timeout` passes; the
/// failure says what it gave last.
pub fn wait_for_value<T: PartialEq + std::fmt::Debug>(
    timeout: Duration,
    what: &str,
    want: T,
    mut value: impl FnMut() -> T,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = value();
        if seen == want {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}: {seen:?}, not {want:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Server {
    pub kind: Kind,
    pub dir: tempfile::TempDir,
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub extra: Vec<String>,
    /// The CPUs the process may run on (`taskset -c`); all when None.
    cpus: Option<String>,
    child: Option<Child>,
    log_path: PathBuf,
}

impl Server {
    /// A server on a fresh data directory and free ports, not started.
    fn unstarted(kind: Kind, extra: &[&str], cpus: Option<String>) -> Server {
        Server {
            kind,
            dir: tempfile::tempdir().expect("temp dir"),
            name: "default".into(),
            client_port: free_port(),
            peer_port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            cpus,
            child: None,
            log_path: PathBuf::new(),
        }
    }

    /// Starts our server with `extra` flags and waits until it serves clients.
    pub fn start(extra: &[&str]) -> Server {
        Self::start_kind(Kind::Ours, extra)
    }

    /// Starts Debian's etcd with the same conventions.
    pub fn start_reference(extra: &[&str]) -> Server {
        Self::start_kind(Kind::Reference, extra)
    }

    pub fn start_kind(kind: Kind, extra: &[&str]) -> Server {
        let mut s = Self::unstarted(kind, extra, None);
        s.spawn();
        s.wait_ready();
        s
    }

    /// Starts our server on one CPU (the first this process may use), as
    /// on a host with one: its runtime then has one worker thread.
    pub fn start_on_one_cpu(extra: &[&str]) -> Server {
        let status = std::fs::read_to_string("/proc/self/status").expect("own status");
        let first = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .and_then(|l| l.trim().split([',', '-']).next())
            .expect("an allowed CPU")
            .to_string();
        let mut s = Self::unstarted(Kind::Ours, extra, Some(first));
        s.spawn();
        s.wait_ready();
        s
    }

    /// Starts our server on a data directory prepared by `prepare` (called with
    /// the directory before the first start).
    pub fn start_prepared(extra: &[&str], prepare: impl FnOnce(&Path)) -> Server {
        Self::start_prepared_kind(Kind::Ours, extra, |s| prepare(&s.data_dir()))
    }

    /// Starts `kind` on a data directory prepared by `prepare`, which is
    /// given the server (its data directory and ports) before the first start.
    pub fn start_prepared_kind(
        kind: Kind,
        extra: &[&str],
        prepare: impl FnOnce(&Server),
    ) -> Server {
        let mut s = Self::unstarted(kind, extra, None);
        prepare(&s);
        s.spawn();
        s.wait_ready();
        s
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn args(&self) -> Vec<String> {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut a = member_args(&self.name, &self.data_dir(), &self.endpoint(), &peer, None);
        a.extend(self.extra.iter().cloned());
        a
    }

    /// (Re)starts the process with the same ports, data directory and flags.
    pub fn spawn(&mut self) {
        let bin = match self.kind {
            Kind::Ours => ours_bin(),
            Kind::Reference => reference_bin(),
        };
        let n = std::fs::read_dir(self.dir.path())
            .map(|d| d.count())
            .unwrap_or(0);
        self.log_path = self.dir.path().join(format!("server-{n}.log"));
        self.child = Some(spawn_server_on(
            &bin,
            &self.args(),
            self.dir.path(),
            &self.log_path,
            self.cpus.as_deref(),
        ));
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits for etcd's "ready to serve client requests" line and a working
    /// `etcdctl endpoint health`.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut retries = 0;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                let log = self.log();
                let ports = [self.client_port, self.peer_port];
                if start_again_on_taken_port("server", &log, &ports, &mut retries) {
                    self.spawn();
                    continue;
                }
                panic!(
                    "server exited early ({status}):\n{log}\n{}",
                    port_holders(&[self.client_port, self.peer_port])
                );
            }
            if self.log().contains("ready to serve client requests") {
                let out = self.etcdctl(&["endpoint", "health"]);
                // With auth enabled (a restored snapshot), a request without
                // a user is answered with this error: the member serves.
                if out.status.success()
                    || String::from_utf8_lossy(&out.stderr).contains("user name is empty")
                {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("server not ready after 30s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs Debian's etcdctl (v3 API) against this server.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_stdin(args, None)
    }

    pub fn etcdctl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        etcdctl_at(&self.endpoint(), args, stdin)
    }

    /// etcdctl's stdout; panics with stderr when it fails.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, then wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: kill(2) with a PID we own and a valid signal number.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Restarts after a kill or stop and waits until ready.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_ready();
    }

    /// Starts the binary with the given flags (no defaults) and returns its output,
    /// for tests of refusals to start.
    pub fn run_to_exit(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Output {
        let mut cmd = Command::new(ours_bin());
        cmd.args(args).current_dir(cwd).stdin(Stdio::null());
        let none_conf = cwd.join("none.conf");
        if !none_conf.exists() {
            let _ = std::fs::write(&none_conf, "");
        }
        cmd.env("ETCD_CONF_FILE", none_conf);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return child.wait_with_output().expect("output");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait_with_output().expect("output");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// etcd's flags for a member `name` with its data in `data_dir`, listening for
/// clients on `client_urls` (comma-separated; the first one is advertised) and
/// for peers on `peer_url` (also advertised), in `initial_cluster` (the member
/// alone when `None`).
pub fn member_args(
    name: &str,
    data_dir: &Path,
    client_urls: &str,
    peer_url: &str,
    initial_cluster: Option<&str>,
) -> Vec<String> {
    let advertise = client_urls.split(',').next().unwrap_or(client_urls);
    let initial = initial_cluster
        .map(String::from)
        .unwrap_or_else(|| format!("{name}={peer_url}"));
    [
        "--name",
        name,
        "--data-dir",
        &data_dir.display().to_string(),
        "--listen-client-urls",
        client_urls,
        "--advertise-client-urls",
        advertise,
        "--listen-peer-urls",
        peer_url,
        "--initial-advertise-peer-urls",
        peer_url,
        "--initial-cluster",
        &initial,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Starts `bin` with `args`, its output in `log`. An empty conf file in `dir`
/// and the removal of `ETCD_NAME` keep the operator's conf file and
/// environment out of tests.
pub fn spawn_server(bin: &Path, args: &[String], dir: &Path, log: &Path) -> Child {
    spawn_server_on(bin, args, dir, log, None)
}

/// [`spawn_server`] on `cpus` (`taskset -c`), or on all when None.
fn spawn_server_on(
    bin: &Path,
    args: &[String],
    dir: &Path,
    log: &Path,
    cpus: Option<&str>,
) -> Child {
    // An explicitly named conf file must exist; an empty one sets nothing.
    let conf = dir.join("none.conf");
    if !conf.exists() {
        std::fs::write(&conf, "").expect("empty conf file");
    }
    let log = std::fs::File::create(log).expect("log file");
    let mut cmd = match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpus).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.args(args)
        .env("ETCD_CONF_FILE", &conf)
        .env_remove("ETCD_NAME")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("start server")
}

/// Runs our server alone on free ports (clients on `scheme`://), data in
/// `data_dir`, with `extra` flags, until it exits; see [`Server::run_to_exit`].
pub fn run_alone_to_exit(data_dir: &Path, scheme: &str, extra: &[String], cwd: &Path) -> Output {
    let client = format!("{scheme}://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let mut args = member_args("default", data_dir, &client, &peer, None);
    args.extend(extra.iter().cloned());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::run_to_exit(&refs, &[], cwd)
}

pub fn etcdctl_at(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(etcdctl_bin());
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=10s")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd
        .spawn()
        .expect("run etcdctl (is Debian's etcd-client installed?)");
    if let (Some(input), Some(mut si)) = (stdin, child.stdin.take()) {
        let _ = si.write_all(input.as_bytes());
    }
    child.wait_with_output().expect("etcdctl output")
}

/// Runs `run` again while it fails with `etcdserver: unhealthy cluster`, which
/// etcd answers to a membership change until every voter has been reachable
/// for 5 s (as an operator retries), for at most 20 s.
pub fn retry_while_unhealthy(mut run: impl FnMut() -> Output) -> Output {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = run();
        if out.status.success()
            || !String::from_utf8_lossy(&out.stderr).contains("etcdserver: unhealthy cluster")
            || Instant::now() > deadline
        {
            return out;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A kernel memory figure of a process, in kB (`VmPeak`, `VmHWM`, ...).
pub fn vm(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("memory figure")
}

/// A plain HTTP/1.1 GET on 127.0.0.1:`port`; the whole answer, headers included.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Runs openssl with `args` in `dir`, panicking with its output when it fails.
pub fn openssl_in(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A two-thread runtime for tests that drive async clients from a plain test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A gRPC channel to a client URL (plain http), with the timeouts the tests use.
pub async fn grpc_channel(endpoint: &str) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(endpoint.to_string())
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .expect("connect")
}

/// A request carrying `token` (if any) as etcd's clients send it.
pub fn with_token<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("token", t.parse().expect("token as metadata"));
    }
    r
}
