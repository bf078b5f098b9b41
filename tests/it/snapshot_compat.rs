//! Snapshots in etcd's format, both ways, side by side with Debian's etcd 3.4
//! and etcdctl: the same data written to ours and to etcd; ours -> `etcdctl
//! snapshot status`/`restore` -> etcd serving it; etcd's snapshot -> our
//! `etcdutl snapshot restore` -> our server; Go's bbolt checks our files;
//! damaged and foreign files are refused with nothing written.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use etcd_client::{
    Client, CompactionOptions, ConnectOptions, DeleteOptions, GetOptions, LeaseGrantOptions,
    LeaseTimeToLiveOptions, Permission, PutOptions,
};

use crate::harness::{Kind, Server, etcdctl_bin, runtime};

/// The 1.5 MiB value.
const BIG: usize = 1_572_864;
const LIMIT: &[&str] = &["--max-request-bytes", "2097152"];
const ROOT: (&str, &str) = ("root", "rootpw");
const LEASE_A: i64 = 0x1234_5678;
const LEASE_B: i64 = 0x2345_6789;

fn etcdutl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_etcdutl"))
        .args(args)
        .output()
        .expect("run etcdutl")
}

fn etcdctl(args: &[&str]) -> Output {
    Command::new(etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .args(args)
        .output()
        .expect("run etcdctl")
}

fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Go's bbolt (Debian's golang-github-coreos-bbolt-dev), built once per run
/// into a program that checks and dumps bbolt files. The program and Go's
/// build cache live in cargo's directory for integration tests' files
/// (`target/tmp`), under fixed names, so runs leave nothing in `/tmp`: each
/// run builds under a name of its own and renames it over the fixed one (a
/// concurrent run keeps executing the file it has).
fn bboltcheck() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let out = dir.join("bboltcheck");
        let building = dir.join(format!("bboltcheck.building-{}", std::process::id()));
        let cache = dir.join("bboltcheck-gocache");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/bboltcheck");
        let r = Command::new("go")
            .args(["build", "-o", p(&building), "."])
            .current_dir(&src)
            .env("GOPATH", "/usr/share/gocode")
            .env("GO111MODULE", "off")
            .env("GOCACHE", &cache)
            .output()
            .expect("run go (Debian's golang-go) to build the bbolt checker");
        if !r.status.success() {
            let _ = std::fs::remove_file(&building);
        }
        ok(r, "go build bboltcheck");
        std::fs::rename(&building, &out).expect("rename the bbolt checker into place");
        out
    })
}

/// `bboltcheck dump` of one bucket: its (key, value) lines.
fn dump_bucket(file: &Path, bucket: &str) -> Vec<String> {
    let out = ok(
        Command::new(bboltcheck())
            .args(["dump", p(file)])
            .output()
            .expect("run bboltcheck"),
        "bboltcheck dump",
    );
    let mut lines = Vec::new();
    let mut inside = false;
    for l in out.lines() {
        if let Some(name) = l.strip_prefix("bucket ") {
            inside = name == bucket;
        } else if inside {
            lines.push(l.to_string());
        }
    }
    lines
}

async fn connect(s: &Server, auth: bool) -> Client {
    let opts = auth.then(|| ConnectOptions::new().with_user(ROOT.0, ROOT.1));
    Client::connect([s.endpoint()], opts)
        .await
        .expect("connect etcd-client")
}

fn bin_key(i: u8) -> Vec<u8> {
    vec![0, i, 0xff, b'k']
}

/// The same history on any server: binary keys and values, a 1.5 MiB value,
/// many revisions of one key, tombstones, a compaction and writes after it,
/// leases with keys, users and roles, then auth enabled. Returns the revision.
async fn fill(s: &Server) -> i64 {
    let c = &mut connect(s, false).await;
    for i in 0u8..20 {
        let value: Vec<u8> = (0..=255u8).map(|b| b ^ i).collect();
        c.put(bin_key(i), value, None).await.expect("put binary");
    }
    for i in 0..40 {
        c.put("multi", format!("v{i}"), None)
            .await
            .expect("put multi");
    }
    c.put("big", vec![0x5au8; BIG], None)
        .await
        .expect("put big");
    for i in 0..5 {
        c.put(format!("gone{i}"), "x", None)
            .await
            .expect("put gone");
    }
    c.delete("gone", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete prefix");
    c.delete(bin_key(3), None).await.expect("delete binary");
    let rev = c
        .put("mark", "m", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    c.compact(rev - 10, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    // Keys written before the compaction change after it.
    for i in 40..45 {
        c.put("multi", format!("v{i}"), None)
            .await
            .expect("put multi");
    }
    c.put(bin_key(1), "again", None).await.expect("put again");
    c.delete(bin_key(2), None).await.expect("delete");
    c.put(bin_key(3), "back", None).await.expect("put back");
    c.lease_grant(600, Some(LeaseGrantOptions::new().with_id(LEASE_A)))
        .await
        .expect("lease a");
    c.lease_grant(900, Some(LeaseGrantOptions::new().with_id(LEASE_B)))
        .await
        .expect("lease b");
    for k in ["leased/a", "leased/b"] {
        c.put(k, "l", Some(PutOptions::new().with_lease(LEASE_A)))
            .await
            .expect("put leased");
    }
    c.user_add(ROOT.0, ROOT.1, None).await.expect("user root");
    c.role_add("root").await.expect("role root");
    c.user_grant_role(ROOT.0, "root").await.expect("grant root");
    c.role_add("reader").await.expect("role reader");
    c.role_grant_permission("reader", Permission::read("multi"))
        .await
        .expect("perm");
    c.role_grant_permission("reader", Permission::read_write("leased/").with_prefix())
        .await
        .expect("perm prefix");
    c.user_add("alice", "alicepw", None)
        .await
        .expect("user alice");
    c.user_grant_role("alice", "reader")
        .await
        .expect("grant reader");
    c.auth_enable().await.expect("auth enable");
    let mut c = connect(s, true).await;
    c.get("mark", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision()
}

/// (key, value, create revision, mod revision, version, lease)
type Kv = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);
/// (permission type, key, range end)
type Perm = (i32, Vec<u8>, Vec<u8>);

/// Everything a client can see of the keyspace, leases and auth.
#[derive(Debug, PartialEq)]
struct Seen {
    kvs: Vec<Kv>,
    leases: Vec<(i64, i64, Vec<Vec<u8>>)>,
    users: Vec<(String, Vec<String>)>,
    roles: Vec<(String, Vec<Perm>)>,
    auth: bool,
    revision: i64,
}

async fn seen(s: &Server) -> Seen {
    let c = &mut connect(s, true).await;
    let r = c
        .get(vec![0u8], Some(GetOptions::new().with_all_keys()))
        .await
        .expect("get all");
    let revision = r.header().expect("header").revision();
    let kvs = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect();
    let mut leases = Vec::new();
    let mut ids: Vec<i64> = c
        .leases()
        .await
        .expect("leases")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    ids.sort();
    for id in ids {
        let t = c
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .expect("time to live");
        let mut keys: Vec<Vec<u8>> = t.keys().to_vec();
        keys.sort();
        leases.push((id, t.granted_ttl(), keys));
    }
    let mut users = Vec::new();
    let mut names = c.user_list().await.expect("users").users().to_vec();
    names.sort();
    for u in names {
        let mut roles = c.user_get(u.as_str()).await.expect("user").roles().to_vec();
        roles.sort();
        users.push((u, roles));
    }
    let mut roles = Vec::new();
    let mut names = c.role_list().await.expect("roles").roles().to_vec();
    names.sort();
    for r in names {
        let perms = c
            .role_get(r.as_str())
            .await
            .expect("role")
            .permissions()
            .iter()
            .map(|p| (p.get_type(), p.key().to_vec(), p.range_end().to_vec()))
            .collect();
        roles.push((r, perms));
    }
    // Auth is on when a client without a user is refused.
    let auth = connect(s, false).await.get("multi", None).await.is_err();
    Seen {
        kvs,
        leases,
        users,
        roles,
        auth,
        revision,
    }
}

async fn hash_at(c: &mut Client, rev: i64) -> u32 {
    c.hash_kv(rev).await.expect("hash kv").hash()
}

fn status_json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).expect("status json")
}

fn save(s: &Server, file: &Path) {
    ok(
        etcdctl(&[
            "--endpoints",
            &s.endpoint(),
            "--user",
            &format!("{}:{}", ROOT.0, ROOT.1),
            "snapshot",
            "save",
            p(file),
        ]),
        "etcdctl snapshot save",
    );
}

/// The `restore` flags for a member alone in a new cluster.
fn restore_flags(s: &Server) -> Vec<String> {
    let peer = format!("http://127.0.0.1:{}", s.peer_port);
    vec![
        "--data-dir".into(),
        p(&s.data_dir()).into(),
        "--name".into(),
        s.name.clone(),
        "--initial-cluster".into(),
        format!("{}={peer}", s.name),
        "--initial-cluster-token".into(),
        "etcd-cluster".into(),
        "--initial-advertise-peer-urls".into(),
        peer,
    ]
}

#[test]
fn snapshots_both_ways_with_debian_etcd() {
    let rt = runtime();
    let ours = Server::start(LIMIT);
    let mut etcd = Server::start_reference(LIMIT);
    let rev = rt.block_on(fill(&ours));
    let etcd_rev = rt.block_on(fill(&etcd));
    assert_eq!(rev, etcd_rev, "the same history makes the same revision");
    let (ours_seen, etcd_seen, ours_hash, etcd_hash) = rt.block_on(async {
        let (mut a, mut b) = (connect(&ours, true).await, connect(&etcd, true).await);
        (
            seen(&ours).await,
            seen(&etcd).await,
            hash_at(&mut a, rev).await,
            hash_at(&mut b, rev).await,
        )
    });
    assert_eq!(ours_seen, etcd_seen, "the same data on both");
    assert_eq!(ours_seen.kvs.len(), 19 + 3 + 2);
    assert_eq!(ours_hash, etcd_hash, "HashKV as etcd computes it");

    let tmp = tempfile::tempdir().expect("temp dir");
    let ours_file = tmp.path().join("ours.db");
    let etcd_file = tmp.path().join("etcd.db");
    save(&ours, &ours_file);
    save(&etcd, &etcd_file);

    // Go's bbolt accepts our file and reads the same records etcd wrote.
    let check = Command::new(bboltcheck())
        .args(["check", p(&ours_file)])
        .output()
        .expect("run bboltcheck");
    assert_eq!(ok(check, "bbolt check").trim(), "OK");
    for bucket in ["key", "lease", "authRoles", "auth"] {
        let (a, b) = (
            dump_bucket(&ours_file, bucket),
            dump_bucket(&etcd_file, bucket),
        );
        assert!(!a.is_empty(), "bucket {bucket} is empty");
        assert_eq!(a, b, "bucket {bucket} differs from etcd's");
    }

    // The cluster version is ours (etcd 3.4 writes its own, 3.4.0).
    assert_eq!(
        dump_bucket(&ours_file, "cluster"),
        ["636c757374657256657273696f6e 332e352e30"]
    );

    // etcdctl's status of our file agrees with its status of etcd's: the
    // same revision, and the same keys but for the two records etcd 3.5
    // added to `meta` (term, confState), which etcd 3.4 does not write.
    let status = |file: &Path| {
        status_json(&ok(
            etcdctl(&["snapshot", "status", p(file), "-w", "json"]),
            "etcdctl snapshot status",
        ))
    };
    let (st_ours, st_etcd) = (status(&ours_file), status(&etcd_file));
    assert_eq!(st_ours["revision"], rev);
    assert_eq!(st_etcd["revision"], rev);
    assert_eq!(
        st_ours["totalKey"].as_u64().expect("totalKey"),
        st_etcd["totalKey"].as_u64().expect("totalKey") + 2,
        "ours {st_ours} etcd {st_etcd}"
    );
    // Our etcdutl reads both files as etcdctl does, to the last field.
    for (file, theirs) in [(&ours_file, &st_ours), (&etcd_file, &st_etcd)] {
        let mine = status_json(&ok(
            etcdutl(&["snapshot", "status", p(file), "-w", "json"]),
            "etcdutl snapshot status",
        ));
        assert_eq!(&mine, theirs, "status of {}", file.display());
    }
    let table = ok(
        etcdctl(&["snapshot", "status", p(&ours_file), "-w", "table"]),
        "etcdctl status table",
    );
    let mine = ok(
        etcdutl(&["snapshot", "status", p(&ours_file), "-w", "table"]),
        "etcdutl status table",
    );
    assert_eq!(mine, table);

    // Ours -> etcdctl snapshot restore -> Debian's etcd serves it.
    let f = ours_file.clone();
    let restored_etcd = Server::start_prepared_kind(Kind::Reference, LIMIT, |s| {
        let mut args = vec!["snapshot".to_string(), "restore".into(), p(&f).into()];
        args.extend(restore_flags(s));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(etcdctl(&args), "etcdctl snapshot restore");
    });
    // Ours <- our etcdutl snapshot restore <- etcd's snapshot.
    let f = etcd_file.clone();
    let restored_ours = Server::start_prepared_kind(Kind::Ours, LIMIT, |s| {
        let mut args = vec!["snapshot".to_string(), "restore".into(), p(&f).into()];
        args.extend(restore_flags(s));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(etcdutl(&args), "etcdutl snapshot restore");
    });
    rt.block_on(async {
        for (what, s) in [
            ("etcd on our snapshot", &restored_etcd),
            ("ours on etcd's snapshot", &restored_ours),
        ] {
            let mut c = connect(s, true).await;
            let got = seen(s).await;
            assert_eq!(got, etcd_seen, "{what}");
            assert_eq!(hash_at(&mut c, rev).await, etcd_hash, "{what}: HashKV");
        }
    });

    // A member/snap/db copied from a stopped etcd member (no checksum).
    etcd.terminate();
    let bare = tmp.path().join("member-db");
    std::fs::copy(etcd.data_dir().join("member/snap/db"), &bare).expect("copy etcd's db");
    let from_member = Server::start_prepared_kind(Kind::Ours, LIMIT, |s| {
        let mut args = vec!["snapshot".to_string(), "restore".into(), p(&bare).into()];
        args.push("--skip-hash-check".into());
        args.extend(restore_flags(s));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(etcdutl(&args), "etcdutl snapshot restore --skip-hash-check");
    });
    rt.block_on(async {
        let mut c = connect(&from_member, true).await;
        assert_eq!(
            seen(&from_member).await,
            etcd_seen,
            "ours on etcd's member db"
        );
        assert_eq!(
            hash_at(&mut c, rev).await,
            etcd_hash,
            "ours on etcd's member db: HashKV"
        );
    });
}

/// `etcdutl snapshot status` and `restore` of `file` both fail, naming the
/// file and `problem`, and leave no data directory behind.
fn refused(file: &Path, extra: &[&str], problem: &str) {
    let st = etcdutl(&["snapshot", "status", p(file)]);
    let dir = file.with_extension("restored");
    let mut args = vec!["snapshot", "restore", p(file), "--data-dir", p(&dir)];
    args.extend_from_slice(extra);
    let rs = etcdutl(&args);
    for (what, o) in [("status", &st), ("restore", &rs)] {
        let err = String::from_utf8_lossy(&o.stderr);
        if what == "status" && !extra.is_empty() {
            // status has no --skip-hash-check: only restore is judged.
            continue;
        }
        assert!(
            !o.status.success(),
            "{what} of {} succeeded",
            file.display()
        );
        assert!(
            err.contains(p(file)),
            "{what}: {err} does not name {}",
            file.display()
        );
        assert!(
            err.contains(problem),
            "{what}: {err} does not say {problem:?}"
        );
    }
    assert!(!dir.exists(), "restore left {}", dir.display());
}

#[test]
fn damaged_and_foreign_snapshots_are_refused() {
    let s = Server::start(&[]);
    for i in 0..300 {
        s.ctl_ok(&["put", &format!("key{i:04}"), &"v".repeat(100)]);
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let good = tmp.path().join("good.db");
    s.ctl_ok(&["snapshot", "save", p(&good)]);
    let bytes = std::fs::read(&good).expect("read snapshot");
    assert_eq!(bytes.len() % 512, 32, "the database then its SHA-256");
    // The good file restores (the cases below are refused for what they say).
    let dir = tmp.path().join("good.restored");
    ok(
        etcdutl(&["snapshot", "restore", p(&good), "--data-dir", p(&dir)]),
        "restore",
    );

    let write = |name: &str, data: &[u8]| {
        let f = tmp.path().join(name);
        std::fs::write(&f, data).expect("write");
        f
    };
    let with_hash = |db: &[u8]| {
        use sha2::Digest;
        let mut f = db.to_vec();
        f.extend_from_slice(&sha2::Sha256::digest(db));
        f
    };
    let db = &bytes[..bytes.len() - 32];

    // A wrong checksum.
    let mut b = bytes.clone();
    b[bytes.len() / 2] ^= 0x55;
    refused(&write("flipped.db", &b), &[], "sha256 checksum mismatch");
    // Truncated: no checksum left; with --skip-hash-check, the pages are missing.
    let cut = write("cut.db", &bytes[..bytes.len() / 2]);
    refused(&cut, &["--skip-hash-check"], "truncated");
    let st = etcdutl(&["snapshot", "status", p(&cut)]);
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains("truncated"));
    let dir = tmp.path().join("cut.restored");
    let rs = etcdutl(&["snapshot", "restore", p(&cut), "--data-dir", p(&dir)]);
    assert!(!rs.status.success());
    let err = String::from_utf8_lossy(&rs.stderr);
    assert!(
        err.contains("snapshot missing hash but --skip-hash-check=false"),
        "{err}"
    );
    assert!(!dir.exists());
    // A corrupt page under a correct checksum: a leaf page that says it is
    // another page, and one whose element points past its end.
    let mut b = db.to_vec();
    b[3 * 4096] ^= 0x01;
    refused(&write("page-id.db", &with_hash(&b)), &[], "page 3");
    let mut b = db.to_vec();
    // Page 3: the first leaf of the `key` bucket (the buckets before it are
    // small, inline in the root bucket's leaf).
    let at = 3 * 4096 + 16 + 4;
    b[at..at + 4].copy_from_slice(&60_000u32.to_le_bytes());
    refused(&write("element.db", &with_hash(&b)), &[], "out of bounds");
    // A damaged meta page (both copies): not a database any more.
    let mut b = db.to_vec();
    b[16 + 60] ^= 0xff;
    b[4096 + 16 + 60] ^= 0xff;
    refused(&write("meta.db", &with_hash(&b)), &[], "checksum");
    // A bare member/snap/db copied from a member is read with --skip-hash-check.
    let bare = write("bare.db", db);
    ok(
        etcdutl(&[
            "snapshot",
            "restore",
            p(&bare),
            "--skip-hash-check",
            "--data-dir",
            p(&tmp.path().join("bare.restored")),
        ]),
        "restore of a bare db",
    );
    // Foreign files.
    refused(
        &write("text.db", &b"not a database\n".repeat(5000)),
        &[],
        "not an etcd snapshot",
    );
    refused(&write("empty.db", b""), &[], "not an etcd snapshot");
}

#[test]
fn restore_bumps_the_revision_and_marks_it_compacted() {
    let s = Server::start(&[]);
    for i in 0..10 {
        s.ctl_ok(&["put", &format!("k{i}"), "v"]);
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let file = tmp.path().join("snap.db");
    s.ctl_ok(&["snapshot", "save", p(&file)]);
    // --mark-compacted alone is refused, as etcd refuses it.
    let r = etcdutl(&[
        "snapshot",
        "restore",
        p(&file),
        "--mark-compacted",
        "--data-dir",
        p(&tmp.path().join("refused")),
    ]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("--bump-revision"));
    assert!(!tmp.path().join("refused").exists());
    let f = file.clone();
    let restored = Server::start_prepared(&[], move |dir| {
        ok(
            etcdutl(&[
                "snapshot",
                "restore",
                p(&f),
                "--bump-revision",
                "1000",
                "--mark-compacted",
                "--data-dir",
                p(dir),
            ]),
            "restore with --bump-revision",
        );
    });
    // Revisions 2..=11 were written; the restored store is at 1011, compacted there.
    let got = restored.ctl_ok(&["get", "k1", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&got).expect("json");
    assert_eq!(v["header"]["revision"], 1011, "{got}");
    assert_eq!(v["kvs"][0]["mod_revision"], 3, "{got}");
    let old = restored.etcdctl(&["get", "k1", "--rev", "5"]);
    assert!(!old.status.success());
    assert!(
        String::from_utf8_lossy(&old.stderr).contains("required revision has been compacted"),
        "{}",
        String::from_utf8_lossy(&old.stderr)
    );
    let put = restored.ctl_ok(&["put", "after", "1", "-w", "json"]);
    assert!(put.contains("\"revision\":1012"), "{put}");
}
