//! Where a write is made durable: on a single member, a client's write that
//! is alone in flight is written, synced, applied and answered on the thread
//! that received it; writes that arrive together go through the Raft loop's
//! thread and share one sync. Both ways must answer every write, in
//! revision order, and keep it across a SIGKILL.

use etcd_client::{Compare, CompareOp, DeleteOptions, Txn, TxnOp};

use crate::cluster::connect;
use crate::harness::Server;
use crate::lock::count;

/// Voluntary context switches of the server's Raft loop thread (named
/// "raft"), from /proc.
fn raft_thread_switches(srv: &Server) -> u64 {
    raft_thread_switches_of(srv.pid().expect("server running"))
}

/// Voluntary context switches of the Raft loop thread of process `pid`.
pub fn raft_thread_switches_of(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("task list");
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() != "raft" {
            continue;
        }
        let status = std::fs::read_to_string(t.path().join("status")).expect("thread status");
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("voluntary_ctxt_switches:") {
                return v.trim().parse().expect("a count");
            }
        }
    }
    panic!("no thread named raft in the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_clients_writes_do_not_wake_the_raft_thread_and_survive_a_kill() {
    // Ticks (and the durable commits they start) wake the loop's thread
    // once a second, not ten times, so that its switches count the writes.
    let mut srv = Server::start(&[
        "--heartbeat-interval",
        "1000",
        "--election-timeout",
        "10000",
    ]);
    let mut c = connect(&srv.endpoint()).await;
    // The first write opens the connection's streams.
    let first = c
        .put("w/0", "v0", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    let before = raft_thread_switches(&srv);
    const N: i64 = 300;
    for i in 1..=N {
        let r = c
            .put(format!("w/{i}"), format!("v{i}"), None)
            .await
            .expect("put");
        assert_eq!(r.header().expect("header").revision(), first + i, "put {i}");
    }
    let switches = raft_thread_switches(&srv) - before;
    // Through the loop's thread, each write wakes it at least once and
    // sleeps in its sync (three switches or more per write).
    assert!(
        switches < (N as u64) / 3,
        "the Raft thread switched {switches} times for {N} writes made one at a time"
    );

    // Kubernetes' update, a txn comparing the key's mod revision then
    // putting it, takes the same path.
    let before = raft_thread_switches(&srv);
    const T: i64 = 100;
    for i in 1..=T {
        let key = format!("w/{i}");
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                first + i,
            )])
            .and_then([TxnOp::put(key, "updated", None)]);
        let r = c.txn(txn).await.expect("txn");
        assert!(r.succeeded(), "txn {i} compared the key's mod revision");
        assert_eq!(r.header().expect("header").revision(), first + N + i);
    }
    let switches = raft_thread_switches(&srv) - before;
    assert!(
        switches < (T as u64) / 3,
        "the Raft thread switched {switches} times for {T} txns made one at a time"
    );

    // A range delete (work without a bound) goes through the loop's thread.
    let before = raft_thread_switches(&srv);
    for i in 0..20 {
        c.delete(
            format!("none/{i}/"),
            Some(DeleteOptions::new().with_prefix()),
        )
        .await
        .expect("delete");
    }
    let switches = raft_thread_switches(&srv) - before;
    assert!(
        switches >= 20,
        "20 range deletes switched the Raft thread {switches} times"
    );

    // Writes in flight together: all answered, each with its own revision.
    let mut tasks = Vec::new();
    for t in 0..20 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..25 {
                let r = c.put(format!("m/{t}/{i}"), "x", None).await.expect("put");
                revs.push(r.header().expect("header").revision());
            }
            revs
        }));
    }
    let mut revs = Vec::new();
    for t in tasks {
        revs.extend(t.await.expect("task"));
    }
    revs.sort_unstable();
    revs.dedup();
    assert_eq!(
        revs.len(),
        500,
        "every concurrent write has a revision of its own"
    );
    assert_eq!(*revs.last().expect("revs"), first + N + T + 500);

    // Answered writes are durable: a SIGKILL loses none.
    drop(c);
    srv.kill9();
    srv.spawn();
    srv.wait_ready();
    let mut c = connect(&srv.endpoint()).await;
    assert_eq!(count(&mut c, "w/").await, N as usize + 1);
    assert_eq!(count(&mut c, "m/").await, 500);
    let last = c.get(format!("w/{N}"), None).await.expect("get");
    assert_eq!(last.kvs()[0].value(), format!("v{N}").as_bytes());
}

/// Syncs of the log so far, from the server's `etcd_disk_wal_fsync_duration_seconds`.
fn wal_syncs(srv: &Server) -> u64 {
    crate::harness::http_get(srv.client_port, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix("etcd_disk_wal_fsync_duration_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the wal fsync count in /metrics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_cpu_writes_in_flight_together_share_syncs() {
    // One CPU, so one runtime worker: each write it decodes is alone in
    // flight while the others wait behind it, undecoded. Synced on that
    // worker one by one, they would share no sync.
    let srv = Server::start_on_one_cpu(&[]);
    const CLIENTS: usize = 40;
    const EACH: usize = 10;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(connect(&srv.endpoint()).await);
    }
    let before = wal_syncs(&srv);
    let mut tasks = Vec::new();
    for (t, mut c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                c.put(format!("g/{t}/{i}"), "x", None).await.expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let syncs = wal_syncs(&srv) - before;
    let writes = (CLIENTS * EACH) as u64;
    // Synced one by one on the worker they took 361 syncs; taken by the loop
    // as soon as it woke, before the worker had decoded the others, 200 to
    // 225; the loop letting the worker run first, 42 to 65.
    assert!(
        syncs * 4 <= writes,
        "{writes} writes from {CLIENTS} clients at once took {syncs} syncs"
    );
    let mut c = connect(&srv.endpoint()).await;
    assert_eq!(count(&mut c, "g/").await, CLIENTS * EACH);
}
