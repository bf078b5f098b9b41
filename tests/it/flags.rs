//! Flags that change how a member runs: `--force-new-cluster` (disaster
//! recovery of one survivor), `--pre-vote`, `--experimental-initial-corrupt-check`,
//! `--experimental-compaction-batch-limit` (with the sleep interval),
//! `--socket-reuse-port`, etcd 3.6's `--feature-gates` and flag names, and a long
//! `--heartbeat-interval` that must not hold writes.

use std::path::Path;
use std::time::{Duration, Instant};

use etcd_client::{CompactionOptions, GetOptions};
use redb::ReadableTable;

use crate::cluster::{Cluster, Member, connect};
use crate::harness::{Server, etcdctl_at, free_port, http_get, member_args, ours_bin, wait_until};

/// Every live key with its value and revisions: (key, value, create, mod, version).
type Dump = Vec<(String, String, i64, i64, i64)>;

/// The whole keyspace of a member (serializable: that member's own state) and
/// the revision it was read at.
fn dump(c: &Cluster, i: usize, serializable: bool) -> (i64, Dump) {
    let ep = c.members[i].endpoint();
    c.rt.block_on(async {
        let mut cl = connect(&ep).await;
        let mut opts = GetOptions::new().with_all_keys();
        if serializable {
            opts = opts.with_serializable();
        }
        let r = cl.get("", Some(opts)).await.expect("range of all keys");
        let rev = r.header().expect("header").revision();
        let kvs = r
            .kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap_or("").to_string(),
                    kv.value_str().unwrap_or("").to_string(),
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                )
            })
            .collect();
        (rev, kvs)
    })
}

fn member_lines(m: &Member) -> Vec<String> {
    m.ctl_ok(&["member", "list"])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

fn put(c: &Cluster, i: usize, k: &str, v: &str) -> i64 {
    let ep = c.members[i].endpoint();
    c.rt.block_on(async {
        let mut cl = connect(&ep).await;
        let r = cl.put(k, v, None).await.expect("put");
        r.header().expect("header").revision()
    })
}

fn cluster_id(c: &Cluster, i: usize) -> u64 {
    let ep = c.members[i].endpoint();
    c.rt.block_on(async {
        let mut cl = connect(&ep).await;
        let s = cl.status().await.expect("status");
        s.header().expect("header").cluster_id()
    })
}

/// The member ID `etcdctl member add` printed.
fn added_id(out: &str) -> u64 {
    let hex = out
        .split_whitespace()
        .skip_while(|w| *w != "Member")
        .nth(1)
        .expect("member id in the member add output");
    u64::from_str_radix(hex, 16).expect("hex member id")
}

#[test]
fn force_new_cluster_recovers_a_lone_survivor() {
    let mut c = Cluster::start(3, &[]);
    c.wait_leader(&[0, 1, 2], Duration::from_secs(10));
    for i in 0..30 {
        put(&c, i % 3, &format!("key/{i:02}"), &format!("v{i}"));
    }
    for i in 0..5 {
        put(&c, 0, &format!("key/{i:02}"), &format!("again{i}"));
    }
    c.members[0].ctl_ok(&["del", "key/29"]);
    let (rev, before) = dump(&c, 0, false);
    assert_eq!(before.len(), 29);
    let cid = cluster_id(&c, 0);
    let survivor = 2;
    wait_until(
        Duration::from_secs(10),
        "the survivor has everything",
        || dump(&c, survivor, true) == (rev, before.clone()),
    );

    // Disaster: two members are lost for good, the third one stops.
    c.members[0].kill9();
    c.members[1].kill9();
    c.members[survivor].kill9();
    c.members[survivor]
        .args
        .push("--force-new-cluster".to_string());
    c.members[survivor].spawn();
    c.members[survivor].wait_ready(Duration::from_secs(30));
    let log = c.members[survivor].log();
    assert!(log.contains("forcing restart member"), "{log}");

    let list = member_lines(&c.members[survivor]);
    assert_eq!(list.len(), 1, "{list:?}");
    assert!(
        list[0].starts_with(&format!("{:x}, started, m2,", c.members[survivor].id)),
        "{list:?}"
    );
    // Every key, with the same revisions; the same cluster ID.
    assert_eq!(dump(&c, survivor, false), (rev, before.clone()));
    assert_eq!(cluster_id(&c, survivor), cid);
    assert_eq!(put(&c, survivor, "after/force", "x"), rev + 1);

    // Restarted without the flag, it stays a one-member cluster.
    c.members[survivor].terminate();
    c.members[survivor]
        .args
        .retain(|a| a != "--force-new-cluster");
    c.members[survivor].spawn();
    c.members[survivor].wait_ready(Duration::from_secs(30));
    assert!(
        !c.members[survivor].log().contains("forcing restart member"),
        "{}",
        c.members[survivor].log()
    );
    assert_eq!(member_lines(&c.members[survivor]).len(), 1);
    let (rev2, now) = dump(&c, survivor, false);
    assert_eq!(rev2, rev + 1);
    assert_eq!(now.len(), before.len() + 1);

    // A new member joins and catches up.
    let net = c.net.clone();
    let mut newm = Member::new(3, &net);
    let out = c.members[survivor].ctl_ok(&[
        "member",
        "add",
        "m3",
        &format!("--peer-urls={}", newm.peer_url()),
    ]);
    newm.id = added_id(&out);
    newm.proxy.set_member(newm.id);
    let initial = format!(
        "m2={},m3={}",
        c.members[survivor].peer_url(),
        newm.peer_url()
    );
    let (token, extra) = (c.token.clone(), c.extra.clone());
    newm.set_args(&initial, "existing", &token, &extra);
    newm.spawn();
    c.members.push(newm);
    c.members[3].wait_ready(Duration::from_secs(30));
    wait_until(Duration::from_secs(10), "the new member caught up", || {
        dump(&c, 3, true) == (rev2, now.clone())
    });
    let rev3 = put(&c, 3, "after/join", "y");
    wait_until(Duration::from_secs(10), "both members agree", || {
        dump(&c, survivor, true) == dump(&c, 3, true) && dump(&c, 3, true).0 == rev3
    });
    let list = member_lines(&c.members[3]);
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list.iter().all(|l| l.contains(", started, ")), "{list:?}");
    c.wait_converged(&[survivor, 3], Duration::from_secs(20));
    c.check_hash_kv(&[survivor, 3]);
}

/// (term, leader) as member `i` reports them.
fn term_and_leader(c: &Cluster, i: usize) -> Option<(u64, u64)> {
    let ep = c.members[i].endpoint();
    c.rt.block_on(async {
        let fut = async {
            let mut cl = connect(&ep).await;
            cl.status().await.ok().map(|s| (s.raft_term(), s.leader()))
        };
        tokio::time::timeout(Duration::from_secs(2), fut)
            .await
            .ok()
            .flatten()
    })
}

/// Isolates a follower until it has lost its leader; returns the cluster's term
/// before, the follower's term once it campaigns (after `hold` more), and the
/// term after healing.
fn isolate_a_follower(pre_vote: bool, hold: Duration) -> (u64, u64, u64) {
    let flag = format!("--pre-vote={pre_vote}");
    let c = Cluster::start(3, &[&flag]);
    let all = [0usize, 1, 2];
    let leader = c.wait_leader(&all, Duration::from_secs(10));
    let rows = c.wait_converged(&all, Duration::from_secs(10));
    let term0 = rows[0].term;
    let f = (leader + 1) % 3;
    c.net.isolate(c.members[f].id, &c.ids());
    wait_until(
        Duration::from_secs(10),
        "the isolated follower loses its leader",
        || matches!(term_and_leader(&c, f), Some((_, 0))),
    );
    // Its campaigns go on meanwhile; without pre-vote each one raises the term.
    let deadline = Instant::now() + hold;
    let mut during = term0;
    while Instant::now() < deadline {
        if let Some((t, _)) = term_and_leader(&c, f) {
            during = during.max(t);
        }
        if !pre_vote && during > term0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    c.net.heal();
    let rows = c.wait_converged(&all, Duration::from_secs(20));
    (term0, during, rows[0].term)
}

#[test]
fn pre_vote_keeps_an_isolated_follower_from_raising_the_term() {
    // Four election timeouts (500 ms in cluster tests) of campaigning.
    let hold = Duration::from_secs(2);
    let (before, during, after) = isolate_a_follower(true, hold);
    assert_eq!(
        (during, after),
        (before, before),
        "with --pre-vote the term moved (before {before}, isolated {during}, healed {after})"
    );
    // The same partition without pre-vote raises the term, and the rejoining
    // member disrupts the cluster: the flag has an effect.
    let (before, during, after) = isolate_a_follower(false, Duration::from_secs(10));
    assert!(
        during > before && after > before,
        "with --pre-vote=false the term did not move (before {before}, isolated {during}, healed {after})"
    );
}

/// Changes the stored value of `key`'s latest record in a stopped member's
/// data directory, as a damaged disk or a bug could.
fn plant_divergence(data_dir: &Path, key: &[u8]) {
    let backend = etcd_rs::storage::Backend::open(data_dir).expect("open the member's data");
    let txn = backend.write().expect("write transaction");
    {
        let mut t = txn.open_table(etcd_rs::storage::KV).expect("kv table");
        let mut found = None;
        for item in t.iter().expect("iterate") {
            let (k, v) = item.expect("record");
            let (kv, tomb) = etcd_rs::mvcc::decode_record(k.value(), v.value()).expect("decode");
            if kv.key == key && !tomb {
                found = Some((k.value(), kv));
            }
        }
        let (rev, mut kv) = found.expect("the key is stored");
        kv.value = b"planted".to_vec();
        t.insert(rev, etcd_rs::mvcc::encode_record(&kv, false).as_slice())
            .expect("rewrite the record");
    }
    txn.commit().expect("commit");
}

#[test]
fn initial_corrupt_check_refuses_a_diverged_member() {
    let mut c = Cluster::start(3, &[]);
    let all = [0usize, 1, 2];
    c.wait_leader(&all, Duration::from_secs(10));
    for i in 0..20 {
        put(&c, 0, &format!("key/{i:02}"), &format!("v{i}"));
    }
    c.wait_converged(&all, Duration::from_secs(20));
    c.check_hash_kv(&all);

    // A member whose data differs from its peers' at the same revision exits.
    c.members[2].terminate();
    plant_divergence(&c.members[2].data_dir(), b"key/07");
    c.members[2]
        .args
        .push("--experimental-initial-corrupt-check".to_string());
    c.members[2].spawn();
    let st = c.members[2].wait_exit(Duration::from_secs(30));
    let log = c.members[2].log();
    assert!(
        matches!(st, Some(s) if !s.success()),
        "the diverged member did not exit with an error ({st:?}):\n{log}"
    );
    let id = format!("{:x}", c.members[2].id);
    assert!(
        log.contains(&format!("{id} found data inconsistency with peers")),
        "{log}"
    );
    assert!(
        log.contains("found different hash values from remote peer"),
        "{log}"
    );
    assert!(!log.contains("ready to serve client requests"), "{log}");

    // A member that matches its peers starts as usual with the check, here
    // asked for as etcd 3.6 asks for it.
    c.members[1].terminate();
    c.members[1]
        .args
        .push("--feature-gates=InitialCorruptCheck=true".to_string());
    c.members[1].spawn();
    c.members[1].wait_ready(Duration::from_secs(30));
    let log = c.members[1].log();
    assert!(
        log.contains("initial corruption checking passed; no corruption"),
        "{log}"
    );
    c.wait_converged(&[0, 1], Duration::from_secs(20));
}

/// `etcd_debugging_mvcc_db_compaction_keys_total` of the server.
fn compacted_keys(srv: &Server) -> u64 {
    let body = http_get(srv.client_port, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_db_compaction_keys_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no compaction counter in /metrics:\n{body}"))
}

/// kv records of keys under `prefix` at or below `rev` in a stopped server's
/// data directory.
fn records_up_to(data_dir: &Path, prefix: &[u8], rev: u64) -> usize {
    let backend = etcd_rs::storage::Backend::open(data_dir).expect("open data");
    let txn = backend.read().expect("read transaction");
    let t = txn.open_table(etcd_rs::storage::KV).expect("kv table");
    t.range(..=(rev, u64::MAX))
        .expect("range")
        .filter(|item| {
            let (k, v) = item.as_ref().expect("record");
            let (kv, _) = etcd_rs::mvcc::decode_record(k.value(), v.value()).expect("decode");
            kv.key.starts_with(prefix)
        })
        .count()
}

const KEYS: usize = 10;

fn put_rounds(rt: &tokio::runtime::Runtime, ep: &str, rounds: usize, tag: &str) -> i64 {
    rt.block_on(async {
        let mut cl = connect(ep).await;
        let mut rev = 0;
        for r in 0..rounds {
            for k in 0..KEYS {
                let resp = cl
                    .put(format!("c/{k}"), format!("{tag}{r}"), None)
                    .await
                    .expect("put");
                rev = resp.header().expect("header").revision();
            }
        }
        rev
    })
}

#[test]
fn compaction_runs_in_batches_while_clients_are_served() {
    let rt = crate::cluster::runtime();
    let mut srv = Server::start(&[
        "--experimental-compaction-batch-limit=2",
        "--experimental-compaction-sleep-interval=20ms",
    ]);
    let ep = srv.endpoint();
    let rounds = 40;
    let rev = put_rounds(&rt, &ep, rounds, "a");
    let doomed = ((rounds - 1) * KEYS) as u64;
    assert_eq!(compacted_keys(&srv), 0);
    // A compaction returns at once; its records go in batches of two.
    rt.block_on(async {
        let mut cl = connect(&ep).await;
        cl.compact(rev, None).await.expect("compact");
    });
    let mut served_meanwhile = 0;
    let mut n = 0;
    loop {
        let c1 = compacted_keys(&srv);
        let (vals, put_rev) = rt.block_on(async {
            let mut cl = connect(&ep).await;
            let r = cl
                .get("c/", Some(GetOptions::new().with_prefix()))
                .await
                .expect("range during compaction");
            let vals: Vec<String> = r
                .kvs()
                .iter()
                .map(|kv| kv.value_str().unwrap_or("").to_string())
                .collect();
            let p = cl
                .put(format!("other/{n}"), "x", None)
                .await
                .expect("put during compaction");
            (vals, p.header().expect("header").revision())
        });
        n += 1;
        let c2 = compacted_keys(&srv);
        assert_eq!(vals.len(), KEYS);
        assert!(
            vals.iter().all(|v| *v == format!("a{}", rounds - 1)),
            "{vals:?}"
        );
        assert!(put_rev > rev);
        if c1 > 0 && c2 < doomed {
            served_meanwhile += 1;
        }
        if c2 >= doomed {
            assert_eq!(c2, doomed, "more records removed than compacted");
            break;
        }
    }
    assert!(
        served_meanwhile > 0,
        "no read or write was served while the compaction ran"
    );
    // History below the compaction is gone, the latest values stay.
    let out = srv.etcdctl(&["get", "c/0", &format!("--rev={}", rev - 1)]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("etcdserver: mvcc: required revision has been compacted"),
        "{out:?}"
    );
    assert_eq!(
        srv.ctl_ok(&["get", "c/3", &format!("--rev={rev}"), "--print-value-only"]),
        format!("a{}\n", rounds - 1)
    );

    // A compaction interrupted by a crash finishes after the restart; a
    // physical compaction answers once its records are gone.
    let rev2 = put_rounds(&rt, &ep, rounds, "b");
    let before = compacted_keys(&srv);
    rt.block_on(async {
        let mut cl = connect(&ep).await;
        cl.compact(rev2, None).await.expect("compact");
        // The next durable write makes the applied compaction durable, so the
        // restart resumes it rather than applying it again from the log.
        cl.put("other/last", "x", None).await.expect("put");
    });
    wait_until(Duration::from_secs(10), "the compaction started", || {
        compacted_keys(&srv) > before
    });
    assert!(compacted_keys(&srv) < before + doomed + KEYS as u64);
    srv.kill9();
    // Larger batches after the restart, so the physical compaction below
    // answers within the client's timeout.
    srv.extra = vec!["--experimental-compaction-batch-limit=100".to_string()];
    srv.spawn();
    srv.wait_ready();
    wait_until(Duration::from_secs(10), "the compaction resumed", || {
        srv.log().contains(&format!(
            "\"msg\":\"finished scheduled compaction\",\"compact_revision\":\"{rev2}\""
        ))
    });
    let rev3 = put_rounds(&rt, &ep, 2, "c");
    rt.block_on(async {
        let mut cl = connect(&ep).await;
        cl.compact(rev3, Some(CompactionOptions::new().with_physical()))
            .await
            .expect("physical compact");
    });
    srv.terminate();
    assert_eq!(
        records_up_to(&srv.data_dir(), b"c/", rev3 as u64),
        KEYS,
        "records below the compaction revision {rev3} remain:\n{}",
        srv.log()
    );
    srv.spawn();
    srv.wait_ready();
    for k in 0..KEYS {
        assert_eq!(
            srv.ctl_ok(&["get", &format!("c/{k}"), "--print-value-only"]),
            "c1\n"
        );
    }
}

/// Starts our server with client port `client` and waits until it serves or exits.
fn start_on(client: u16, extra: &[&str], dir: &Path) -> (std::process::Child, std::path::PathBuf) {
    let peer = format!("http://127.0.0.1:{}", free_port());
    let mut args = member_args(
        "default",
        &dir.join("data"),
        &format!("http://127.0.0.1:{client}"),
        &peer,
        None,
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    let log = dir.join("server.log");
    let child = crate::harness::spawn_server(&ours_bin(), &args, dir, &log);
    (child, log)
}

/// Waits until the server either logs that it serves clients (true) or exits (false).
fn serves_or_exits(child: &mut std::process::Child, log: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("ready to serve client requests") {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "neither served nor exited:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn socket_reuse_port_lets_two_servers_share_a_client_port() {
    let first = Server::start(&["--socket-reuse-port"]);
    let port = first.client_port;

    // Without the flag the port is taken.
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut child, log) = start_on(port, &["--socket-reuse-address"], dir.path());
    let served = serves_or_exits(&mut child, &log);
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !served,
        "a second server bound the port without SO_REUSEPORT"
    );
    assert!(text.contains("failed to listen on client URL"), "{text}");

    // With it both listen on the same port.
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut child, log) = start_on(port, &["--socket-reuse-port"], dir.path());
    let served = serves_or_exits(&mut child, &log);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let health = etcdctl_at(&first.endpoint(), &["endpoint", "health"], None);
    let _ = child.kill();
    let _ = child.wait();
    assert!(served, "the second server did not start:\n{text}");
    assert!(health.status.success(), "{health:?}");
}

/// A manifest written for etcd 3.6/3.7 (kubeadm's newer flags) starts a
/// member: the gate that maps is taken, the others are reported at start, and
/// etcd's refusals keep their texts.
#[test]
fn etcd_3_6_flags_and_feature_gates_start_a_member() {
    let srv = Server::start(&[
        "--feature-gates=InitialCorruptCheck=true,StopGRPCServiceOnDefrag=true",
        "--watch-progress-notify-interval=5s",
        "--compaction-batch-limit=100",
        "--warning-apply-duration=200ms",
    ]);
    srv.ctl_ok(&["put", "k", "v"]);
    assert!(srv.ctl_ok(&["get", "k"]).contains('v'));
    let log = srv.log();
    assert!(
        log.contains("feature gate StopGRPCServiceOnDefrag=true has no effect in etcd-rs"),
        "{log}"
    );
    assert!(
        log.contains("flag --warning-apply-duration is accepted but has no effect"),
        "{log}"
    );
    assert!(
        !log.contains("InitialCorruptCheck=true has no effect"),
        "{log}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    for (args, text) in [
        (
            vec!["--feature-gates=Nope=true"],
            "invalid value \"Nope=true\" for flag --feature-gates: unrecognized feature gate: Nope",
        ),
        (
            vec!["--feature-gates=InitialCorruptCheck"],
            "missing bool value for InitialCorruptCheck",
        ),
        (
            vec![
                "--experimental-initial-corrupt-check",
                "--feature-gates=InitialCorruptCheck=false",
            ],
            "cannot specify both flags: --experimental-initial-corrupt-check=true and --feature-gates=InitialCorruptCheck=false at the same time, please just use --feature-gates=InitialCorruptCheck=false",
        ),
    ] {
        let out = Server::run_to_exit(&args, &[], dir.path());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(err.contains(text), "{args:?}: {err}");
    }
}

/// A long `--heartbeat-interval` does not hold writes: the database's
/// durable commit starts at a tick, and the writes committed while it runs
/// are applied and answered when it ends, not at the next tick (which they
/// once waited for: a heartbeat interval, here a second).
#[test]
fn writes_are_not_held_until_the_next_heartbeat() {
    let rt = crate::cluster::runtime();
    let srv = Server::start(&["--heartbeat-interval=1000", "--election-timeout=10000"]);
    let ep = srv.endpoint();
    let (slowest, puts) = rt.block_on(async {
        let mut cl = connect(&ep).await;
        cl.put("warm", "x", None).await.expect("put");
        let start = Instant::now();
        let mut slowest = Duration::ZERO;
        let mut n = 0u64;
        // Several ticks, each with a durable commit, while one client writes
        // without a pause.
        while start.elapsed() < Duration::from_millis(3500) {
            let t = Instant::now();
            cl.put(format!("k{}", n % 100), "v", None)
                .await
                .expect("put");
            slowest = slowest.max(t.elapsed());
            n += 1;
        }
        (slowest, n)
    });
    assert!(puts > 50, "only {puts} puts in 3.5 s");
    assert!(
        slowest < Duration::from_millis(500),
        "a put took {slowest:?} with a heartbeat of 1 s ({puts} puts)"
    );
}

/// `--backend-batch-limit` makes applied writes durable in the database
/// without waiting for `--backend-batch-interval`: with an hour's interval, a
/// member killed after 1,000 puts has most of them in its database file with
/// a limit of 100, and none with etcd's default limit of 10,000 (so the count
/// can fail).
#[test]
fn backend_batch_limit_starts_durable_commits_before_the_interval() {
    let rt = crate::cluster::runtime();
    let durable = |limit: &str| {
        let limit = format!("--backend-batch-limit={limit}");
        let mut srv = Server::start(&["--backend-batch-interval=1h", &limit]);
        let ep = srv.endpoint();
        let rev = rt.block_on(async {
            let mut cl = connect(&ep).await;
            let mut rev = 0;
            for i in 0..1000 {
                let resp = cl.put(format!("bl/{i}"), "v", None).await.expect("put");
                rev = resp.header().expect("header").revision();
            }
            rev
        });
        srv.kill9();
        records_up_to(&srv.data_dir(), b"bl/", rev as u64)
    };
    let limited = durable("100");
    let default = durable("0");
    assert!(
        limited >= 500,
        "with a limit of 100, {limited} of 1,000 puts were durable in the database"
    );
    assert!(
        default < 100,
        "with etcd's default limit, {default} of 1,000 puts were durable in the database"
    );
}
