//! Starting on a data directory that Debian's etcd wrote: the member imports
//! etcd's backend, WAL and snapshot files and runs as the same member of the
//! same cluster, with the same data (keys with their revisions and versions,
//! leases, users and roles, HashKV). Damaged files stop it, naming the file,
//! and nothing is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    Kind, Server, etcdctl_at, etcdctl_bin, free_port, member_args, ours_bin, reference_bin,
    run_alone_to_exit, runtime, spawn_server, wait_until,
};

const ROOT: &str = "root:rootpw";

fn ctl(ep: &str, user: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut a: Vec<String> = Vec::new();
    if let Some(u) = user {
        a.push(format!("--user={u}"));
    }
    a.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    etcdctl_at(ep, &refs, None)
}

fn ctl_ok(ep: &str, user: Option<&str>, args: &[&str]) -> String {
    let out = ctl(ep, user, args);
    assert!(
        out.status.success(),
        "etcdctl {args:?} at {ep} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ctl_json(ep: &str, user: Option<&str>, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-w", "json"]);
    let out = ctl_ok(ep, user, &a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("etcdctl {args:?}: {e}: {out}"))
}

/// Every file under `dir` with its contents' hash, to show a tree unchanged.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    use sha2::Digest;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.insert(p, sha2::Sha256::digest(&b).to_vec());
            }
        }
    }
    out
}

/// etcd's files only (member/wal and member/snap/db, *.snap).
fn etcd_files(data: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    tree(data)
        .into_iter()
        .filter(|(p, _)| {
            let s = p.to_string_lossy();
            s.contains("/member/wal/") || s.ends_with("/snap/db") || s.ends_with(".snap")
        })
        .collect()
}

/// The state a client sees, for comparison before and after the move:
/// every key with its revisions, version, value and lease; the revision;
/// HashKV at that revision; the IDs; the leases with their keys; users and
/// roles.
#[derive(Debug, PartialEq)]
struct Seen {
    kvs: Value,
    revision: i64,
    hash: Value,
    cluster_id: u64,
    member_id: u64,
    members: Vec<(u64, String, Value)>,
    leases: Vec<(String, i64, Value)>,
    users: Value,
    roles: Vec<Value>,
}

fn seen(ep: &str, user: Option<&str>) -> Seen {
    let get = ctl_json(ep, user, &["get", "", "--from-key"]);
    let revision = get["header"]["revision"].as_i64().expect("revision");
    let hk = ctl_json(
        ep,
        user,
        &["endpoint", "hashkv", "--rev", &revision.to_string()],
    );
    let hash = serde_json::json!({
        "hash": hk[0]["HashKV"]["hash"],
        "compact_revision": hk[0]["HashKV"]["compact_revision"],
    });
    let ml = ctl_json(ep, user, &["member", "list"]);
    let mut members: Vec<(u64, String, Value)> = ml["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["ID"].as_u64().expect("ID"),
                m["name"].as_str().unwrap_or("").to_string(),
                m["peerURLs"].clone(),
            )
        })
        .collect();
    members.sort_by_key(|m| m.0);
    let ll = ctl_json(ep, user, &["lease", "list"]);
    let mut leases = Vec::new();
    for l in ll["leases"].as_array().cloned().unwrap_or_default() {
        let id = format!("{:x}", l["id"].as_i64().expect("lease id"));
        let t = ctl_json(ep, user, &["lease", "timetolive", &id, "--keys"]);
        let mut keys = t["keys"].clone();
        if let Some(a) = keys.as_array_mut() {
            a.sort_by_key(|v| v.to_string());
        }
        leases.push((id, t["granted-ttl"].as_i64().unwrap_or(-1), keys));
    }
    leases.sort_by(|a, b| a.0.cmp(&b.0));
    let users = ctl_json(ep, user, &["user", "list"])["users"].clone();
    let mut roles = Vec::new();
    let rl = ctl_json(ep, user, &["role", "list"]);
    for r in rl["roles"].as_array().cloned().unwrap_or_default() {
        let name = r.as_str().expect("role").to_string();
        let g = ctl_json(ep, user, &["role", "get", &name]);
        roles.push(serde_json::json!({"name": name, "perm": g["perm"]}));
    }
    Seen {
        kvs: get["kvs"].clone(),
        revision,
        hash,
        cluster_id: get["header"]["cluster_id"].as_u64().expect("cluster_id"),
        member_id: get["header"]["member_id"].as_u64().expect("member_id"),
        members,
        leases,
        users,
        roles,
    }
}

/// Waits for the ready line and an answered read (with `user` when auth is on).
fn wait_serving(log: impl Fn() -> String, ep: &str, user: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let l = log();
        if l.contains("ready to serve client requests")
            && ctl(ep, user, &["get", "probe"]).status.success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "not serving after 60s:\n{l}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops Debian's etcd; returns its files as it left them.
fn stop_etcd(s: &mut Server) -> BTreeMap<PathBuf, Vec<u8>> {
    // etcd ends on SIGTERM by the signal itself.
    s.terminate().expect("etcd was running");
    etcd_files(&s.data_dir())
}

/// Starts ours with the same flags on the data etcd left.
fn start_ours(s: &mut Server, user: Option<&str>) {
    s.kind = Kind::Ours;
    s.spawn();
    let ep = s.endpoint();
    wait_serving(|| s.log(), &ep, user);
}

fn write_data(s: &Server) {
    let rt = runtime();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([s.endpoint()], None)
            .await
            .expect("connect");
        c.put(vec![0u8, 0xff, b'b'], vec![0u8, 1, 2, 0xfe, 0xff], None)
            .await
            .expect("binary put");
        c.put("big", vec![7u8; 300 * 1024], None)
            .await
            .expect("big");
        for i in 0..30 {
            c.put(format!("k{i:02}"), format!("v{i}"), None)
                .await
                .expect("put");
        }
        for round in 0..5 {
            c.put("multi", format!("r{round}"), None)
                .await
                .expect("put");
        }
        c.delete("k03", None).await.expect("delete");
        c.delete("k1", Some(etcd_client::DeleteOptions::new().with_prefix()))
            .await
            .expect("delete prefix");
        let rev = c
            .put("after-deletes", "x", None)
            .await
            .expect("put")
            .header()
            .expect("header")
            .revision();
        c.compact(
            rev - 3,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .expect("compact");
        c.put("multi", "after-compaction", None).await.expect("put");
        let l1 = c.lease_grant(600, None).await.expect("lease").id();
        c.lease_grant(900, None).await.expect("lease");
        for k in ["leased/a", "leased/b"] {
            c.put(k, "l", Some(etcd_client::PutOptions::new().with_lease(l1)))
                .await
                .expect("leased put");
        }
    });
}

fn enable_auth(ep: &str) {
    for args in [
        &["user", "add", ROOT][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "reader"],
        &["role", "grant-permission", "reader", "read", "k", "l"],
        &["role", "add", "writer"],
        &[
            "role",
            "grant-permission",
            "writer",
            "readwrite",
            "--prefix",
            "w/",
        ],
        &["user", "add", "alice:alicepw"],
        &["user", "grant-role", "alice", "reader"],
        &["user", "grant-role", "alice", "writer"],
        &["auth", "enable"],
    ] {
        ctl_ok(ep, None, args);
    }
}

#[test]
fn etcd_member_continues_as_ours() {
    // Snapshots every 25 entries: the import starts from etcd's newest .snap.
    let mut s = Server::start_reference(&["--snapshot-count", "25"]);
    let ep = s.endpoint();
    write_data(&s);
    enable_auth(&ep);
    // A write after auth, through a user's token.
    ctl_ok(&ep, Some("alice:alicepw"), &["put", "w/x", "by-alice"]);
    let before = seen(&ep, Some(ROOT));
    assert!(before.revision > 40, "{before:?}");
    let files = stop_etcd(&mut s);
    assert!(
        files.keys().any(|p| p.to_string_lossy().ends_with(".wal")),
        "{files:?}"
    );
    start_ours(&mut s, Some(ROOT));
    let log = s.log();
    assert!(log.contains("imported etcd data directory"), "{log}");
    assert!(log.contains(&format!("{:x}", before.member_id)), "{log}");
    assert!(log.contains(".snap\","), "no snapshot file imported: {log}");
    let after = seen(&ep, Some(ROOT));
    assert_eq!(after, before);
    // Users keep their passwords and permissions.
    ctl_ok(&ep, Some("alice:alicepw"), &["get", "k00"]);
    let denied = ctl(&ep, Some("alice:alicepw"), &["put", "k00", "no"]);
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("permission denied"),
        "{denied:?}"
    );
    let wrong = ctl(&ep, Some("alice:wrong"), &["get", "k00"]);
    assert!(!wrong.status.success());
    let anonymous = ctl(&ep, None, &["get", "k00"]);
    assert!(!anonymous.status.success());
    // The member goes on from etcd's revision.
    let put = ctl_json(&ep, Some(ROOT), &["put", "new", "ours"]);
    assert_eq!(
        put["header"]["revision"].as_i64(),
        Some(before.revision + 1),
        "{put}"
    );
    // etcd's files were only read.
    assert_eq!(etcd_files(&s.data_dir()), files);
    // A restart uses our database: no second import.
    s.terminate();
    s.spawn();
    wait_serving(|| s.log(), &ep, Some(ROOT));
    assert!(
        !s.log().contains("imported etcd data directory"),
        "{}",
        s.log()
    );
    let v = ctl_json(&ep, Some(ROOT), &["get", "new"]);
    assert_eq!(
        v["kvs"][0]["mod_revision"].as_i64(),
        Some(before.revision + 1)
    );
}

#[test]
fn etcd_killed_during_writes_loses_no_acknowledged_write() {
    let mut s = Server::start_reference(&["--snapshot-count", "100"]);
    let ep = s.endpoint();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (acked, stop, ep) = (acked.clone(), stop.clone(), ep.clone());
        writers.push(std::thread::spawn(move || {
            let rt = runtime();
            rt.block_on(async {
                let Ok(mut c) = etcd_client::Client::connect([ep], None).await else {
                    return;
                };
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let n = w * 1_000_000 + i;
                    let put = c.put(format!("acked/{n}"), format!("v{n}"), None);
                    match tokio::time::timeout(Duration::from_secs(2), put).await {
                        Ok(Ok(_)) => acked.lock().expect("lock").push(n),
                        _ => break,
                    }
                    i += 1;
                }
            });
        }));
    }
    wait_until(Duration::from_secs(60), "400 acknowledged writes", || {
        acked.lock().expect("lock").len() >= 400
    });
    // Killed while the writers are still writing.
    s.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        let _ = w.join();
    }
    let acked = acked.lock().expect("lock").clone();
    s.kind = Kind::Ours;
    s.spawn();
    s.wait_ready();
    let log = s.log();
    assert!(log.contains("imported etcd data directory"), "{log}");
    let got = ctl_json(&ep, None, &["get", "acked/", "--prefix", "--keys-only"]);
    let keys: std::collections::HashSet<String> = got["kvs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|kv| {
            use base64::Engine;
            let k = base64::engine::general_purpose::STANDARD
                .decode(kv["key"].as_str().expect("key"))
                .expect("base64");
            String::from_utf8_lossy(&k).into_owned()
        })
        .collect();
    let missing: Vec<&u64> = acked
        .iter()
        .filter(|n| !keys.contains(&format!("acked/{n}")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes missing, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}

/// One member process of a three-member cluster, first Debian's etcd, then ours.
struct Member {
    name: String,
    dir: tempfile::TempDir,
    client: String,
    peer: String,
    child: Option<Child>,
    runs: usize,
}

impl Member {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("server-{}.log", self.runs))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self, bin: &Path, initial: &str) {
        self.runs += 1;
        let mut args = member_args(
            &self.name,
            &self.data(),
            &self.client,
            &self.peer,
            Some(initial),
        );
        args.extend(["--initial-cluster-token".into(), "import-test".into()]);
        self.child = Some(spawn_server(bin, &args, self.dir.path(), &self.log_path()));
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) with a PID this test started.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
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

#[test]
fn etcd_cluster_continues_as_ours() {
    let (mut members, initial) = three_members();
    for m in &mut members {
        m.spawn(&reference_bin(), &initial);
    }
    let last = write_cluster_data(&members);
    let before: Vec<Seen> = members.iter().map(|m| seen(&m.client, None)).collect();
    for m in &mut members {
        m.stop();
    }
    for m in &mut members {
        m.spawn(&ours_bin(), &initial);
    }
    for m in &members {
        wait_serving(|| m.log(), &m.client, None);
        assert!(
            m.log().contains("imported etcd data directory"),
            "{}",
            m.log()
        );
    }
    for (m, b) in members.iter().zip(&before) {
        let a = seen(&m.client, None);
        assert_eq!(&a, b, "member {}", m.name);
    }
    // The cluster works: a write reaches every member.
    let rev = ctl_json(&members[1].client, None, &["put", "after", "ours"])["header"]["revision"]
        .as_i64()
        .expect("revision");
    assert_eq!(rev, last + 1);
    for m in &members {
        wait_until(Duration::from_secs(20), "the new write everywhere", || {
            let v = ctl_json(&m.client, None, &["get", "after", "--consistency=s"]);
            v["kvs"][0]["mod_revision"].as_i64() == Some(rev)
        });
    }
    let h: Vec<Value> = members
        .iter()
        .map(|m| {
            ctl_json(
                &m.client,
                None,
                &["endpoint", "hashkv", "--rev", &rev.to_string()],
            )[0]["HashKV"]["hash"]
                .clone()
        })
        .collect();
    assert!(h.iter().all(|x| *x == h[0]), "{h:?}");
}

/// Three members on free loopback ports, not started, and their
/// `--initial-cluster`.
fn three_members() -> (Vec<Member>, String) {
    let members: Vec<Member> = (0..3)
        .map(|i| Member {
            name: format!("m{i}"),
            dir: tempfile::tempdir().expect("dir"),
            client: format!("http://127.0.0.1:{}", free_port()),
            peer: format!("http://127.0.0.1:{}", free_port()),
            child: None,
            runs: 0,
        })
        .collect();
    let initial = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer))
        .collect::<Vec<_>>()
        .join(",");
    (members, initial)
}

/// Waits for the started members to serve, writes keys, a deletion and a
/// leased key, and waits until every member applied the last write; returns
/// its revision.
fn write_cluster_data(members: &[Member]) -> i64 {
    for m in members {
        wait_serving(|| m.log(), &m.client, None);
    }
    let ep0 = members[0].client.clone();
    for i in 0..50 {
        ctl_ok(&ep0, None, &["put", &format!("c{i:02}"), &format!("v{i}")]);
    }
    ctl_ok(&ep0, None, &["del", "c0", "--prefix"]);
    let lease = ctl_ok(&ep0, None, &["lease", "grant", "600"]);
    let lease = lease
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    ctl_ok(&ep0, None, &["put", "leased", "x", "--lease", &lease]);
    let last = ctl_json(&ep0, None, &["put", "last", "x"])["header"]["revision"]
        .as_i64()
        .expect("revision");
    wait_applied_everywhere(members, last);
    last
}

fn wait_applied_everywhere(members: &[Member], rev: i64) {
    for m in members {
        wait_until(Duration::from_secs(20), "the last write everywhere", || {
            let v = ctl_json(
                &m.client,
                None,
                &["get", "", "--from-key", "--consistency=s"],
            );
            v["header"]["revision"].as_i64() == Some(rev)
        });
    }
}

/// Saves a snapshot through `ep`, stops the members, and restores it into
/// each member's (emptied) data directory with `restore`, as the operator
/// does for each member of a cluster.
fn snapshot_and_restore(
    members: &mut [Member],
    ep: &str,
    initial: &str,
    restore: &dyn Fn(&[&str]) -> std::process::Output,
) {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("cluster.db");
    let file = file.to_str().expect("utf-8 path").to_string();
    ctl_ok(ep, None, &["snapshot", "save", &file]);
    for m in members.iter_mut() {
        m.stop();
        std::fs::remove_dir_all(m.data()).expect("remove the data directory");
    }
    for m in members.iter() {
        let data = m.data();
        let args = [
            "snapshot",
            "restore",
            &file,
            "--name",
            &m.name,
            "--initial-cluster",
            initial,
            "--initial-cluster-token",
            "import-test",
            "--initial-advertise-peer-urls",
            &m.peer,
            "--data-dir",
            data.to_str().expect("utf-8 path"),
        ];
        let o = restore(&args);
        assert!(
            o.status.success(),
            "restore for {}: {}",
            m.name,
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// A snapshot of a three-member cluster, both ways: Debian's etcd cluster,
/// `etcdctl snapshot save`, our `etcdutl snapshot restore` for each member,
/// and our three members serve what etcd's served (members and their IDs,
/// keys with their revisions, leases with their keys, HashKV); then a write
/// through ours, `etcdctl snapshot save` from ours, `etcdctl snapshot
/// restore` for each member, and Debian's etcd cluster serves it all again.
#[test]
fn three_member_cluster_snapshots_both_ways() {
    let (mut members, initial) = three_members();
    for m in &mut members {
        m.spawn(&reference_bin(), &initial);
    }
    let last = write_cluster_data(&members);
    let etcds: Vec<Seen> = members.iter().map(|m| seen(&m.client, None)).collect();
    let ep0 = members[0].client.clone();
    let etcdutl = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_etcdutl"))
            .args(args)
            .output()
            .expect("run etcdutl")
    };
    snapshot_and_restore(&mut members, &ep0, &initial, &etcdutl);
    for m in &mut members {
        m.spawn(&ours_bin(), &initial);
    }
    for m in &members {
        wait_serving(|| m.log(), &m.client, None);
    }
    wait_applied_everywhere(&members, last);
    for (m, e) in members.iter().zip(&etcds) {
        assert_eq!(&seen(&m.client, None), e, "ours, member {}", m.name);
    }
    let rev = ctl_json(&members[2].client, None, &["put", "by", "ours"])["header"]["revision"]
        .as_i64()
        .expect("revision");
    assert_eq!(rev, last + 1);
    wait_applied_everywhere(&members, rev);
    let ours: Vec<Seen> = members.iter().map(|m| seen(&m.client, None)).collect();
    let etcdctl = |args: &[&str]| {
        std::process::Command::new(etcdctl_bin())
            .env("ETCDCTL_API", "3")
            .args(args)
            .output()
            .expect("run etcdctl")
    };
    snapshot_and_restore(&mut members, &ep0, &initial, &etcdctl);
    for m in &mut members {
        m.spawn(&reference_bin(), &initial);
    }
    for m in &members {
        wait_serving(|| m.log(), &m.client, None);
    }
    wait_applied_everywhere(&members, rev);
    for (m, o) in members.iter().zip(&ours) {
        assert_eq!(&seen(&m.client, None), o, "etcd again, member {}", m.name);
    }
}

/// Debian's etcd writes a few keys and stops; returns its data directory's
/// parent (kept) and the data directory.
fn etcd_data() -> (tempfile::TempDir, PathBuf) {
    let mut s = Server::start_reference(&[]);
    for i in 0..10 {
        s.ctl_ok(&["put", &format!("k{i}"), "v"]);
    }
    s.terminate();
    let keep = tempfile::tempdir().expect("dir");
    let data = keep.path().join("data");
    let status = std::process::Command::new("cp")
        .args(["-a"])
        .arg(s.data_dir())
        .arg(&data)
        .status()
        .expect("cp");
    assert!(status.success());
    (keep, data)
}

fn refused(data: &Path, cwd: &Path) -> String {
    let out = run_alone_to_exit(data, "http", &[], cwd);
    assert!(!out.status.success(), "started on damaged etcd data");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn damaged_etcd_files_stop_the_member() {
    // A flipped byte in a WAL record that is not the last: CRC mismatch.
    let (keep, data) = etcd_data();
    let wal = std::fs::read_dir(data.join("member/wal"))
        .expect("wal dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "wal"))
        .expect("a wal file");
    let mut b = std::fs::read(&wal).expect("read wal");
    // Walk etcd's framing to the fourth record (the first entry).
    let mut off = 0usize;
    for _ in 0..3 {
        let word = u64::from_le_bytes(b[off..off + 8].try_into().expect("word"));
        let len = (word & !(0xff << 56)) as usize;
        let pad = if word >> 63 == 1 {
            ((word >> 56) & 7) as usize
        } else {
            0
        };
        off += 8 + len + pad;
    }
    let word = u64::from_le_bytes(b[off..off + 8].try_into().expect("word"));
    let len = (word & !(0xff << 56)) as usize;
    b[off + 8 + len - 1] ^= 0x20;
    std::fs::write(&wal, &b).expect("write wal");
    let before = tree(&data);
    let out = refused(&data, keep.path());
    let name = wal
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(out.contains(&name) && out.contains("CRC mismatch"), "{out}");
    assert!(out.contains(&format!("offset {off}")), "{out}");
    assert_eq!(tree(&data), before, "files were written");

    // A truncated backend.
    let (keep, data) = etcd_data();
    let db = data.join("member/snap/db");
    let len = std::fs::metadata(&db).expect("db").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .expect("open db");
    f.set_len(len / 3).expect("truncate");
    drop(f);
    let before = tree(&data);
    let out = refused(&data, keep.path());
    assert!(out.contains("member/snap/db"), "{out}");
    assert_eq!(tree(&data), before, "files were written");

    // The backend without its WAL.
    let (keep, data) = etcd_data();
    std::fs::remove_dir_all(data.join("member/wal")).expect("rm wal");
    let before = tree(&data);
    let out = refused(&data, keep.path());
    assert!(
        out.contains("member/wal") && out.contains("no WAL files"),
        "{out}"
    );
    assert_eq!(tree(&data), before, "files were written");
}

#[test]
fn etcd_wal_dir_is_imported() {
    let wal = tempfile::tempdir().expect("dir");
    let waldir = wal.path().join("wal");
    let w = waldir.to_str().expect("path");
    let mut s = Server::start_reference(&["--wal-dir", w]);
    for i in 0..5 {
        s.ctl_ok(&["put", &format!("w{i}"), "v"]);
    }
    let rev = ctl_json(&s.endpoint(), None, &["get", "w4"])["header"]["revision"].as_i64();
    stop_etcd(&mut s);
    assert!(!s.data_dir().join("member/wal").exists());
    start_ours(&mut s, None);
    let got = ctl_json(&s.endpoint(), None, &["get", "w", "--prefix"]);
    assert_eq!(got["count"].as_i64(), Some(5), "{got}");
    assert_eq!(got["header"]["revision"].as_i64(), rev);
}

/// The end of the records in an etcd WAL file (where its preallocated zeros
/// begin), walking etcd's framing.
fn records_end(b: &[u8]) -> usize {
    let mut off = 0usize;
    while off + 8 <= b.len() {
        let word = u64::from_le_bytes(b[off..off + 8].try_into().expect("word"));
        if word == 0 {
            break;
        }
        let len = (word & !(0xff << 56)) as usize;
        let pad = if word >> 63 == 1 {
            ((word >> 56) & 7) as usize
        } else {
            0
        };
        off += 8 + len + pad;
    }
    off
}

#[test]
fn torn_wal_tail_is_cut_as_etcd_cuts_it() {
    let (keep, data) = etcd_data();
    let wal = std::fs::read_dir(data.join("member/wal"))
        .expect("wal dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "wal"))
        .expect("a wal file");
    let mut b = std::fs::read(&wal).expect("read wal");
    let end = records_end(&b);
    // A record whose write stopped after its first bytes: the sectors after
    // them are still the file's zeros.
    b[end..end + 8].copy_from_slice(&2000u64.to_le_bytes());
    for x in &mut b[end + 8..end + 72] {
        *x = 0x5a;
    }
    std::fs::write(&wal, &b).expect("write wal");
    let peer = format!("http://127.0.0.1:{}", free_port());
    let client = format!("http://127.0.0.1:{}", free_port());
    let args = member_args("default", &data, &client, &peer, None);
    let log_path = keep.path().join("ours.log");
    let mut child = spawn_server(&ours_bin(), &args, keep.path(), &log_path);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_until(Duration::from_secs(30), "serving", || {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("exited {st}: {}", log());
        }
        log().contains("ready to serve client requests")
    });
    let got = ctl_json(&client, None, &["get", "k", "--prefix"]);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(got["count"].as_i64(), Some(10), "{got}");
    let l = log();
    assert!(
        l.contains("ignored a torn record") && l.contains(&format!("\"offset\":\"{end}\"")),
        "{l}"
    );
    // The file itself was not repaired.
    assert_eq!(std::fs::read(&wal).expect("read wal"), b);
}

#[test]
fn etcdctl_snapshot_restore_directory_is_imported() {
    let s = Server::start_reference(&[]);
    for i in 0..5 {
        s.ctl_ok(&["put", &format!("r{i}"), &format!("v{i}")]);
    }
    let keep = tempfile::tempdir().expect("dir");
    let snap = keep.path().join("backup.db");
    s.ctl_ok(&["snapshot", "save", snap.to_str().expect("path")]);
    let rev = ctl_json(&s.endpoint(), None, &["get", "r4"])["header"]["revision"].as_i64();
    drop(s);
    // Debian's etcdctl restores the snapshot as a data directory of etcd's.
    let mut m = Server::start_prepared(&[], |data| {
        let out = std::process::Command::new(etcdctl_bin())
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(&snap)
            .arg("--data-dir")
            .arg(data)
            .output()
            .expect("etcdctl snapshot restore");
        assert!(out.status.success(), "{out:?}");
    });
    assert!(
        m.log().contains("imported etcd data directory"),
        "{}",
        m.log()
    );
    let got = ctl_json(&m.endpoint(), None, &["get", "r", "--prefix"]);
    assert_eq!(got["count"].as_i64(), Some(5), "{got}");
    assert_eq!(got["header"]["revision"].as_i64(), rev);
    m.terminate();
}

/// Runs the package's `keep_etcd_server_member` (debian/postinst) against a
/// root directory; returns what it printed.
fn keep_member(root: &Path) -> String {
    let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/debian/postinst"))
        .expect("debian/postinst");
    let start = script
        .find("keep_etcd_server_member() {")
        .expect("the function");
    let end = start + script[start..].find("\n}\n").expect("its end") + 3;
    let f = root.join("keep.sh");
    std::fs::write(&f, &script[start..end]).expect("write");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(". {}; keep_etcd_server_member", f.display()))
        .env("DPKG_ROOT", root)
        .output()
        .expect("sh");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn package_keeps_the_member_of_etcd_server() {
    let root = tempfile::tempdir().expect("dir");
    let r = root.path();
    let dropin = r.join("etc/systemd/system/etcd.service.d/etcd-server-member.conf");
    std::fs::create_dir_all(r.join("etc/default")).expect("mkdir");
    std::fs::write(r.join("etc/default/etcd"), "# ETCD_DATA_DIR=/nowhere\n").expect("write");
    // No etcd data: nothing written.
    assert_eq!(keep_member(r), "");
    assert!(!dropin.exists());
    // etcd-server's member in its default place.
    std::fs::create_dir_all(r.join("var/lib/etcd/default/member/wal")).expect("mkdir");
    assert_eq!(keep_member(r), dropin.display().to_string());
    let d = std::fs::read_to_string(&dropin).expect("drop-in");
    assert!(
        d.contains(
            "[Service]\nEnvironment=ETCD_NAME=%H\nEnvironment=ETCD_DATA_DIR=/var/lib/etcd/default\n"
        ),
        "{d}"
    );
    assert!(!d.contains("ReadWritePaths"), "{d}");
    // Run again (an upgrade): left as it is.
    assert_eq!(keep_member(r), "");
    // A data directory named in /etc/default/etcd, outside /var/lib/etcd.
    std::fs::remove_file(&dropin).expect("rm");
    std::fs::write(r.join("etc/default/etcd"), "ETCD_DATA_DIR=\"/srv/etcd\"\n").expect("write");
    std::fs::create_dir_all(r.join("srv/etcd/member/snap")).expect("mkdir");
    std::fs::write(r.join("srv/etcd/member/snap/db"), b"").expect("write");
    assert_eq!(keep_member(r), dropin.display().to_string());
    let d = std::fs::read_to_string(&dropin).expect("drop-in");
    assert!(
        d.contains("Environment=ETCD_DATA_DIR=/srv/etcd\nReadWritePaths=/srv/etcd\n"),
        "{d}"
    );
    // Already imported: nothing to keep.
    std::fs::remove_file(&dropin).expect("rm");
    std::fs::write(r.join("srv/etcd/member/snap/db.redb"), b"x").expect("write");
    assert_eq!(keep_member(r), "");
    assert!(!dropin.exists());
}
