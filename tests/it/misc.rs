//! Server features without a module of their own: periodic auto-compaction and
//! `--listen-metrics-urls`.

use std::time::Duration;

use crate::harness::{Server, free_port, http_get, wait_until};

#[test]
fn periodic_auto_compaction_and_metrics_listener() {
    let mport = free_port();
    let metrics_url = format!("http://127.0.0.1:{mport}");
    let srv = Server::start(&[
        "--auto-compaction-mode",
        "periodic",
        "--auto-compaction-retention",
        "1s",
        "--listen-metrics-urls",
        &metrics_url,
    ]);
    for i in 0..10 {
        srv.ctl_ok(&["put", "k", &i.to_string()]);
    }
    // Revision 2 is the first put; once a compaction passed it, reading it fails
    // with etcd's compacted error.
    wait_until(
        Duration::from_secs(20),
        "auto compaction past revision 2",
        || {
            let out = srv.etcdctl(&["get", "k", "--rev", "2"]);
            String::from_utf8_lossy(&out.stderr).contains("required revision has been compacted")
        },
    );
    assert!(srv.log().contains("completed auto compaction"));
    assert_eq!(srv.ctl_ok(&["get", "k", "--print-value-only"]), "9\n");
    let m = http_get(mport, "/metrics");
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(m.contains("etcd_server_has_leader 1"), "{m}");
    assert!(m.contains("etcd_mvcc_put_total 10"), "{m}");
    let h = http_get(mport, "/health");
    assert!(h.contains(r#""health":"true""#), "{h}");
}
