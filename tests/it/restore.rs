//! Backup and restore: `etcdctl snapshot save` against our server, then our
//! `etcdutl snapshot status` and `snapshot restore`, and a new member started on
//! the restored directory serves the same data.

use std::process::Command;

use crate::harness::Server;

fn etcdutl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_etcdutl"))
        .args(args)
        .output()
        .expect("run etcdutl")
}

#[test]
fn snapshot_save_status_restore() {
    let src = Server::start(&[]);
    for i in 0..20 {
        src.ctl_ok(&["put", &format!("k{i:02}"), &format!("v{i}")]);
    }
    src.ctl_ok(&["del", "k00"]);
    let lease = src.ctl_ok(&["lease", "grant", "600"]);
    let lease_id = lease
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    src.ctl_ok(&["put", "leased", "x", "--lease", &lease_id]);
    let rev_before = src.ctl_ok(&["get", "k01", "-w", "json"]);
    let file = src.dir.path().join("backup.db");
    let out = src.ctl_ok(&["snapshot", "save", file.to_str().expect("path")]);
    assert!(out.contains("Snapshot saved at"), "{out}");

    let st = etcdutl(&[
        "snapshot",
        "status",
        file.to_str().expect("path"),
        "-w",
        "json",
    ]);
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let st = String::from_utf8_lossy(&st.stdout).to_string();
    // 20 puts, 1 delete (tombstone), 1 leased put: revisions 2..=23.
    assert!(st.contains("\"revision\":23"), "{st}");
    // The file is in etcd's format: etcdctl summarises it as we do.
    let theirs = Command::new(crate::harness::etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .args([
            "snapshot",
            "status",
            file.to_str().expect("path"),
            "-w",
            "json",
        ])
        .output()
        .expect("run etcdctl");
    assert!(
        theirs.status.success(),
        "{}",
        String::from_utf8_lossy(&theirs.stderr)
    );
    assert_eq!(st.trim(), String::from_utf8_lossy(&theirs.stdout).trim());

    // A damaged file is refused.
    let bad = src.dir.path().join("bad.db");
    let mut bytes = std::fs::read(&file).expect("read snapshot");
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0xff;
    std::fs::write(&bad, &bytes).expect("write");
    let r = etcdutl(&["snapshot", "status", bad.to_str().expect("path")]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("checksum"));

    let file2 = file.clone();
    let restored = Server::start_prepared(&[], move |dir| {
        let r = etcdutl(&[
            "snapshot",
            "restore",
            file2.to_str().expect("path"),
            "--data-dir",
            dir.to_str().expect("path"),
        ]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    });
    let got = restored.ctl_ok(&["get", "k", "--prefix", "--keys-only"]);
    let keys: Vec<&str> = got.split_whitespace().collect();
    assert_eq!(keys.len(), 19, "{got}");
    assert!(!keys.contains(&"k00"));
    assert_eq!(
        restored
            .ctl_ok(&["get", "k05", "--print-value-only"])
            .trim(),
        "v5"
    );
    // Revisions carry over: the next write is revision 24.
    let put = restored.ctl_ok(&["put", "after", "1", "-w", "json"]);
    assert!(put.contains("\"revision\":24"), "{put}");
    // The lease and its key carry over.
    let ttl = restored.ctl_ok(&["lease", "timetolive", &lease_id, "--keys"]);
    assert!(ttl.contains("leased"), "{ttl}");
    // Same mod revision for an untouched key as before the backup.
    let a: serde_json::Value = serde_json::from_str(&rev_before).expect("json");
    let b: serde_json::Value =
        serde_json::from_str(&restored.ctl_ok(&["get", "k01", "-w", "json"])).expect("json");
    assert_eq!(a["kvs"][0]["mod_revision"], b["kvs"][0]["mod_revision"]);
    // Restoring into a non-empty directory is refused.
    let r = etcdutl(&[
        "snapshot",
        "restore",
        file.to_str().expect("path"),
        "--data-dir",
        restored.data_dir().to_str().expect("path"),
    ]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("not empty"));
}
