//! A member whose disk fills up: on a small tmpfs the test mounts (tests run as
//! root), writes are refused with etcd's NOSPACE once the disk is nearly full,
//! every acknowledged write stays readable, reads and `/health` (reporting the
//! alarm) keep being served, a restart on the full disk comes up read-only with
//! the alarm, and writes resume by themselves once space is freed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use etcd_client::Client;

use super::harness::{Server, wait_until};

const WAIT: Duration = Duration::from_secs(30);
const VALUE_BYTES: usize = 120 * 1024;
const NOSPACE: &str = "etcdserver: mvcc: database space exceeded";
const HEALTH_NOSPACE: &str = r#"{"health":"false","reason":"ALARM NOSPACE"}"#;
const HEALTH_OK: &str = r#"{"health":"true","reason":""}"#;

/// A size-limited tmpfs, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_mib: u64) -> Tmpfs {
        // SAFETY: geteuid(2) has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "the disk-full test mounts a tmpfs and must run as root (euid is {euid})"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let t = Tmpfs { dir };
        std::fs::create_dir(t.root()).expect("mount point");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m,mode=0700")])
            .arg("tmpfs")
            .arg(t.root())
            .status()
            .expect("run mount");
        assert!(st.success(), "mount -t tmpfs failed: {st}");
        t
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn available(&self) -> u64 {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.root().as_os_str().as_bytes()).expect("path");
        // SAFETY: statvfs(3) with a NUL-terminated path and a zeroed out-struct.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid for the call.
        let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
        assert_eq!(rc, 0, "statvfs: {}", std::io::Error::last_os_error());
        st.f_bavail as u64 * st.f_frsize as u64
    }

    /// A file of `bytes` zeros (really allocated).
    fn ballast(&self, name: &str, bytes: usize) -> PathBuf {
        let p = self.root().join(name);
        std::fs::write(&p, vec![0u8; bytes]).expect("ballast file");
        p
    }

    /// Writes zeros into `name` until the filesystem refuses: the disk is full.
    fn fill(&self, name: &str) -> PathBuf {
        let p = self.root().join(name);
        let mut f = std::fs::File::create(&p).expect("filler file");
        let block = vec![0u8; 4096];
        loop {
            match f.write_all(&block) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        // tmpfs has no delayed allocation: what was written is allocated.
        assert!(
            self.available() < 4096,
            "the disk is not full: {}",
            self.available()
        );
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.root()).status();
    }
}

/// `/health` on the client port: (status code, body).
fn health(port: u16) -> (u16, String) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(
        c,
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, text)
}

fn value(i: usize) -> Vec<u8> {
    let mut v = vec![b'a' + (i % 26) as u8; VALUE_BYTES];
    v[..8].copy_from_slice(&(i as u64).to_be_bytes());
    v
}

/// Every acknowledged key holds its value.
async fn check_acked(c: &mut Client, acked: &[usize]) {
    for &i in acked {
        let r = c
            .get(format!("k{i:05}"), None)
            .await
            .unwrap_or_else(|e| panic!("get k{i:05}: {e}"));
        assert_eq!(r.kvs().len(), 1, "acknowledged key k{i:05} is missing");
        assert!(
            r.kvs()[0].value() == value(i).as_slice(),
            "acknowledged key k{i:05} has another value"
        );
    }
}

/// Whether `e` is etcd's NOSPACE refusal (gRPC ResourceExhausted).
fn is_nospace(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::ResourceExhausted && s.message() == NOSPACE
        }
        _ => false,
    }
}

#[test]
fn full_disk_degrades_to_read_only_and_recovers() {
    let fs = Tmpfs::mount(64);
    // Space that will be freed later, as an operator would.
    let ballast = fs.ballast("ballast", 16 << 20);
    let data = fs.root().join("data");
    std::fs::create_dir(&data).expect("data dir");
    let mut s = Server::start_prepared(&[], |d| {
        std::os::unix::fs::symlink(&data, d).expect("data dir link");
    });
    let port = s.client_port;
    let rt = crate::harness::runtime();
    let mut c = rt
        .block_on(Client::connect([s.endpoint()], None))
        .expect("connect");

    // 1. Write until refused; reads and /health are served throughout.
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..2_000 {
        match rt.block_on(c.put(format!("k{i:05}"), value(i), None)) {
            Ok(_) => acked.push(i),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
        if i % 25 == 0 {
            let (code, body) = health(port);
            assert!(
                code == 200 && body.contains(HEALTH_OK) || body.contains(HEALTH_NOSPACE),
                "health while writing: {body}"
            );
            rt.block_on(check_acked(&mut c, &acked[acked.len().saturating_sub(3)..]));
        }
    }
    let e = refused.expect("writes were never refused on a 64 MiB filesystem");
    assert!(is_nospace(&e), "refused with {e:?}, not NOSPACE");
    assert!(
        acked.len() > 20,
        "only {} writes before NOSPACE: the member stops far too early",
        acked.len()
    );
    eprintln!(
        "{} writes of {VALUE_BYTES} bytes acknowledged; {} bytes left on the disk",
        acked.len(),
        fs.available()
    );
    let refused_at = Instant::now();
    wait_until(WAIT, "/health to report ALARM NOSPACE", || {
        let (code, body) = health(port);
        code == 503 && body.contains(HEALTH_NOSPACE)
    });
    eprintln!(
        "/health reported the alarm {:?} after the first refusal",
        refused_at.elapsed()
    );
    let alarms = s.ctl_ok(&["alarm", "list"]);
    assert!(alarms.contains("alarm:NOSPACE"), "alarm list: {alarms}");
    // Refused again, also a small write; and through etcdctl with etcd's text.
    let e = rt
        .block_on(c.put("small", "v", None))
        .expect_err("write accepted under NOSPACE");
    assert!(is_nospace(&e), "{e:?}");
    let out = s.etcdctl(&["put", "small", "v"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(NOSPACE),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    rt.block_on(check_acked(&mut c, &acked));
    // Deletes are not writes that add data: etcd takes them under NOSPACE.
    s.ctl_ok(&["del", "no-such-key"]);

    // 2. Restart on a completely full disk: read-only, with the alarm.
    let status = s.terminate().expect("server was running");
    assert!(status.success(), "stopped with {status}");
    let filler = fs.fill("filler");
    s.spawn();
    s.wait_ready();
    let (code, body) = health(port);
    assert!(
        code == 503 && body.contains(HEALTH_NOSPACE),
        "health after a restart on a full disk: {body}"
    );
    let alarms = s.ctl_ok(&["alarm", "list"]);
    assert!(alarms.contains("alarm:NOSPACE"), "alarm list: {alarms}");
    let mut c = rt
        .block_on(Client::connect([s.endpoint()], None))
        .expect("connect");
    rt.block_on(check_acked(&mut c, &acked));
    let e = rt
        .block_on(c.put("after-restart", "v", None))
        .expect_err("write accepted on a full disk");
    assert!(is_nospace(&e), "{e:?}");
    // Disarming does not make a full disk writable: the member goes on
    // refusing and raises the alarm again.
    let disarmed = s.ctl_ok(&["alarm", "disarm"]);
    assert!(disarmed.contains("alarm:NOSPACE"), "disarm: {disarmed}");
    let e = rt
        .block_on(c.put("after-disarm", "v", None))
        .expect_err("write accepted on a full disk after a disarm");
    assert!(is_nospace(&e), "{e:?}");
    wait_until(WAIT, "NOSPACE raised again on the full disk", || {
        s.ctl_ok(&["alarm", "list"]).contains("alarm:NOSPACE")
    });

    // 3. Space is freed: the member lifts its alarm and takes writes again.
    std::fs::remove_file(&filler).expect("remove filler");
    std::fs::remove_file(&ballast).expect("remove ballast");
    let start = Instant::now();
    wait_until(WAIT, "a write to be accepted after space was freed", || {
        rt.block_on(c.put("resumed", "v", None)).is_ok()
    });
    eprintln!("writes resumed {:?} after space was freed", start.elapsed());
    let (code, body) = health(port);
    assert!(code == 200 && body.contains(HEALTH_OK), "health: {body}");
    let alarms = s.ctl_ok(&["alarm", "list"]);
    assert!(alarms.trim().is_empty(), "alarm list: {alarms}");
    let next = acked.last().map(|i| i + 1).unwrap_or(0);
    rt.block_on(c.put(format!("k{next:05}"), value(next), None))
        .expect("a large write after space was freed");
    acked.push(next);
    rt.block_on(check_acked(&mut c, &acked));
    drop(c);
    s.kill9();
}

/// One member of three runs out of disk: the cluster turns read-only with that
/// member's NOSPACE alarm, it never acknowledges what it could not store, all
/// three keep serving reads and health, and once its space is freed it lifts
/// the alarm, writes resume and it catches up.
#[test]
fn one_full_member_makes_the_cluster_read_only_until_freed() {
    use super::cluster::{Cluster, connect};
    let fs = Tmpfs::mount(64);
    let ballast = fs.ballast("ballast", 16 << 20);
    let full = 2;
    let mut c = Cluster::start_prepared(3, &[], |i, d| {
        if i == full {
            let data = fs.root().join("data");
            std::fs::create_dir(&data).expect("data dir");
            std::os::unix::fs::symlink(&data, d).expect("data dir link");
        }
    });
    let full_id = c.members[full].id;
    let eps: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    let mut cl = c.rt.block_on(connect(&eps[0]));
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..2_000 {
        match c.rt.block_on(cl.put(format!("k{i:05}"), value(i), None)) {
            Ok(_) => acked.push(i),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("writes were never refused with a member on 64 MiB");
    assert!(is_nospace(&e), "refused with {e:?}, not NOSPACE");
    assert!(acked.len() > 20, "only {} writes", acked.len());
    eprintln!("{} writes acknowledged by the cluster", acked.len());
    let alarms = super::harness::etcdctl_at(&eps[0], &["alarm", "list"], None);
    let alarms = String::from_utf8_lossy(&alarms.stdout).into_owned();
    assert_eq!(
        alarms.trim(),
        format!("memberID:{full_id} alarm:NOSPACE"),
        "the full member's alarm"
    );
    // Every member serves health (with the cluster's alarm) and reads; the
    // full member holds every acknowledged write once it has caught up.
    for m in &c.members {
        wait_until(WAIT, "/health to report ALARM NOSPACE", || {
            let (code, body) = health(m.client_port);
            code == 503 && body.contains(HEALTH_NOSPACE)
        });
    }
    let mut on_full = c.rt.block_on(connect(&eps[full]));
    let last = format!("k{:05}", acked.last().copied().unwrap_or(0));
    wait_until(
        WAIT,
        "the full member to hold the last acknowledged write",
        || {
            let opts = etcd_client::GetOptions::new().with_serializable();
            c.rt.block_on(on_full.get(last.as_str(), Some(opts)))
                .is_ok_and(|r| r.kvs().len() == 1)
        },
    );
    c.rt.block_on(check_acked(&mut on_full, &acked));
    c.rt.block_on(check_acked(&mut cl, &acked));
    // The full member's process is still up and serving.
    let e =
        c.rt.block_on(on_full.put("small", "v", None))
            .expect_err("write accepted under NOSPACE");
    assert!(is_nospace(&e), "{e:?}");

    // Killed, and restarted on a disk with no byte left: it comes back
    // read-only with everything it held.
    drop(on_full);
    c.members[full].kill9();
    let filler = fs.fill("filler");
    c.members[full].spawn();
    c.members[full].wait_ready(WAIT);
    let (code, body) = health(c.members[full].client_port);
    assert!(
        code == 503 && body.contains(HEALTH_NOSPACE),
        "health after a restart on a full disk: {body}"
    );
    let mut on_full = c.rt.block_on(connect(&eps[full]));
    c.rt.block_on(check_acked(&mut on_full, &acked));

    // Space is freed on the full member: writes resume and it catches up.
    std::fs::remove_file(&filler).expect("remove filler");
    std::fs::remove_file(&ballast).expect("remove ballast");
    wait_until(WAIT, "a write to be accepted after space was freed", || {
        c.rt.block_on(cl.put("resumed", "v", None)).is_ok()
    });
    wait_until(WAIT, "the full member to catch up", || {
        let opts = etcd_client::GetOptions::new().with_serializable();
        c.rt.block_on(on_full.get("resumed", Some(opts)))
            .is_ok_and(|r| r.kvs().len() == 1)
    });
    let alarms = super::harness::etcdctl_at(&eps[full], &["alarm", "list"], None);
    assert!(
        String::from_utf8_lossy(&alarms.stdout).trim().is_empty(),
        "alarms after space was freed: {}",
        String::from_utf8_lossy(&alarms.stdout)
    );
    for m in &c.members {
        let mut last = String::new();
        let start = Instant::now();
        while start.elapsed() < WAIT {
            let (code, body) = health(m.client_port);
            if code == 200 && body.contains(HEALTH_OK) {
                break;
            }
            last = body;
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            start.elapsed() < WAIT,
            "{} unhealthy after space was freed: {last}",
            m.name
        );
        if !last.is_empty() {
            eprintln!("{} was unhealthy for {:?}: {last}", m.name, start.elapsed());
        }
    }
    drop(c);
}
