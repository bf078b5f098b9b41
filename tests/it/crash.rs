//! Durability: kill -9 under a concurrent write load, then restart. Every
//! acknowledged write must survive with the revision its acknowledgement reported,
//! nothing that was never written may appear, and the restarted member's history,
//! replayed on a fresh member, must hash identically (HashKV). Also: SIGTERM exits
//! with status 0 and keeps everything.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, GetOptions, WatchOptions};

use crate::harness::Server;

const TASKS: usize = 8;

/// A small xorshift generator seeded from the clock (or CRASH_TEST_SEED), for the
/// kill points.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("CRASH_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("crash test seed: {seed} (set CRASH_TEST_SEED to repeat)");
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

async fn connect(endpoint: &str) -> Client {
    Client::connect([endpoint], None)
        .await
        .expect("connect etcd-client")
}

/// What one writer did: every key it sent (with its value) and every put that was
/// acknowledged, with the revision in the response header.
#[derive(Default)]
struct Written {
    attempted: HashMap<String, String>,
    acked: Vec<(String, String, i64)>,
}

/// Runs `TASKS` writers against `endpoint` until a put fails (the member died) or
/// `stop` is set.
fn start_load(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
    round: usize,
    acks: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Written>> {
    let client = rt.block_on(connect(endpoint));
    (0..TASKS)
        .map(|task| {
            let mut c = client.clone();
            let acks = acks.clone();
            let stop = stop.clone();
            rt.spawn(async move {
                let mut w = Written::default();
                for n in 0u64.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let key = format!("crash/{round}/{task}/{n}");
                    let value = n.to_string();
                    w.attempted.insert(key.clone(), value.clone());
                    match c.put(key.clone(), value.clone(), None).await {
                        Ok(r) => {
                            let rev = r.header().expect("put header").revision();
                            w.acked.push((key, value, rev));
                            acks.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => break,
                    }
                }
                w
            })
        })
        .collect()
}

/// Polls `cond` (on the load's progress) every millisecond until it holds.
fn wait_for(what: &str, timeout: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Every event of the member's history, from revision 1 to its current revision, in
/// order; the current revision.
async fn history(c: &mut Client) -> (Vec<(i64, String, String)>, i64) {
    let cur = c
        .get(
            "\0",
            Some(GetOptions::new().with_from_key().with_count_only()),
        )
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    let mut out = Vec::new();
    if cur <= 1 {
        return (out, cur);
    }
    let mut stream = c
        .watch(
            "\0",
            Some(WatchOptions::new().with_from_key().with_start_revision(1)),
        )
        .await
        .expect("watch");
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.last().map(|e: &(i64, String, String)| e.0) != Some(cur) {
        assert!(Instant::now() < deadline, "history not delivered in 60s");
        let msg = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("watch response within 30s")
            .expect("watch stream")
            .expect("watch stream open");
        assert!(!msg.canceled(), "watch canceled: {}", msg.cancel_reason());
        for ev in msg.events() {
            assert_eq!(ev.event_type(), EventType::Put, "only puts were made");
            let kv = ev.kv().expect("event kv");
            out.push((
                kv.mod_revision(),
                kv.key_str().expect("utf-8 key").to_string(),
                kv.value_str().expect("utf-8 value").to_string(),
            ));
        }
    }
    (out, cur)
}

/// (a) acknowledged writes survive with their revisions, (b) nothing unattempted
/// exists; returns the number of keys present.
async fn check_state(c: &mut Client, written: &[Written]) -> usize {
    let all = c
        .get("crash/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get crash/");
    let present: HashMap<String, (String, i64, i64, i64)> = all
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().expect("utf-8 key").to_string(),
                (
                    kv.value_str().expect("utf-8 value").to_string(),
                    kv.mod_revision(),
                    kv.create_revision(),
                    kv.version(),
                ),
            )
        })
        .collect();
    let mut attempted: HashMap<&str, &str> = HashMap::new();
    for w in written {
        for (k, v) in &w.attempted {
            attempted.insert(k, v);
        }
        for (k, v, rev) in &w.acked {
            let got = present
                .get(k)
                .unwrap_or_else(|| panic!("acknowledged put {k}={v} at revision {rev} was lost"));
            assert_eq!(
                got,
                &(v.clone(), *rev, *rev, 1),
                "acknowledged put {k} (value, mod, create, version)"
            );
        }
    }
    for (k, (v, ..)) in &present {
        match attempted.get(k.as_str()) {
            Some(want) => assert_eq!(v, want, "value of {k}"),
            None => panic!("{k}={v} exists but was never written"),
        }
    }
    present.len()
}

#[test]
fn kill9_under_load_keeps_acknowledged_writes() {
    let rt = crate::harness::runtime();
    let mut rng = Rng::new();
    // A small snapshot count makes the member compact its Raft log often, so
    // restarts also start from a compacted log.
    let mut srv = Server::start(&["--snapshot-count", "64"]);
    let mut fresh: Option<Server> = None;
    let mut replayed = 1i64;
    let mut written: Vec<Written> = Vec::new();
    let mut checkpoints: Vec<i64> = Vec::new();
    for round in 0..3 {
        let acks = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = start_load(&rt, &srv.endpoint(), round, acks.clone(), stop.clone());
        // The kill point: 200-800 ms into the load, measured in acknowledgements at
        // the rate of the first 50.
        let t0 = Instant::now();
        wait_for("50 acknowledged puts", Duration::from_secs(30), || {
            acks.load(Ordering::SeqCst) >= 50
        });
        let rate = 50.0 / t0.elapsed().as_secs_f64();
        let delay_ms = rng.between(200, 800);
        let target = ((rate * delay_ms as f64 / 1000.0) as usize).max(60);
        wait_for("the kill point", Duration::from_secs(60), || {
            acks.load(Ordering::SeqCst) >= target
        });
        srv.kill9();
        stop.store(true, Ordering::SeqCst);
        let mut round_acks = 0;
        for t in tasks {
            let w = rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(30), t).await })
                .expect("writer ends after the kill")
                .expect("writer task");
            round_acks += w.acked.len();
            written.push(w);
        }
        eprintln!(
            "round {round}: killed after {round_acks} acknowledged puts (target {target}, ~{delay_ms} ms)"
        );
        assert!(round_acks >= target, "acks before the kill");

        srv.restart();
        rt.block_on(async {
            let mut c = connect(&srv.endpoint()).await;
            let present = check_state(&mut c, &written).await;
            let total_acks: usize = written.iter().map(|w| w.acked.len()).sum();
            assert!(present >= total_acks, "{present} keys < {total_acks} acks");

            // (c) the history, replayed on a fresh member, hashes the same.
            let (events, cur) = history(&mut c).await;
            let revs: Vec<i64> = events.iter().map(|e| e.0).collect();
            let want: Vec<i64> = (2..=cur).collect();
            assert_eq!(revs, want, "one put per revision, no gaps");
            let latest: BTreeMap<&str, &str> = events
                .iter()
                .map(|(_, k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert_eq!(latest.len(), present, "history and state disagree");

            let f = fresh.get_or_insert_with(|| Server::start(&[]));
            let mut fc = connect(&f.endpoint()).await;
            for (rev, k, v) in events.iter().filter(|e| e.0 > replayed) {
                let r = fc
                    .put(k.as_str(), v.as_str(), None)
                    .await
                    .expect("replay put");
                assert_eq!(
                    r.header().expect("header").revision(),
                    *rev,
                    "replay of {k}"
                );
            }
            replayed = cur;
            checkpoints.push(cur);
            for &rev in &checkpoints {
                let a = c.hash_kv(rev).await.expect("hash_kv restarted");
                let b = fc.hash_kv(rev).await.expect("hash_kv fresh");
                assert_eq!(
                    a.hash(),
                    b.hash(),
                    "HashKV at {rev}: restarted member vs replay on a fresh member"
                );
                assert_eq!(a.compact_version(), b.compact_version());
            }
        });
    }
}

#[test]
fn sigterm_exits_zero_and_keeps_data() {
    let rt = crate::harness::runtime();
    let mut srv = Server::start(&[]);
    let acked: Vec<(String, i64)> = rt.block_on(async {
        let mut c = connect(&srv.endpoint()).await;
        let mut out = Vec::new();
        for i in 0..50 {
            let key = format!("term/{i}");
            let r = c
                .put(key.as_str(), format!("v{i}"), None)
                .await
                .expect("put");
            out.push((key, r.header().expect("header").revision()));
        }
        c.delete("term/7", None).await.expect("delete");
        out
    });
    let status = srv.terminate().expect("server was running");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    srv.restart();
    rt.block_on(async {
        let mut c = connect(&srv.endpoint()).await;
        let all = c
            .get("term/", Some(GetOptions::new().with_prefix()))
            .await
            .expect("get");
        assert_eq!(all.header().expect("header").revision(), 52);
        let got: HashMap<&str, (&str, i64)> = all
            .kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().expect("key"),
                    (kv.value_str().expect("value"), kv.mod_revision()),
                )
            })
            .collect();
        assert_eq!(got.len(), 49);
        for (i, (k, rev)) in acked.iter().enumerate() {
            if i == 7 {
                assert!(!got.contains_key(k.as_str()), "deleted key is back");
                continue;
            }
            let want = format!("v{i}");
            assert_eq!(got.get(k.as_str()), Some(&(want.as_str(), *rev)), "{k}");
        }
    });
}

/// The newest segment of the log files in `dir`, and where its written part
/// ends (found by walking the records' length prefixes after the magic).
fn newest_segment(dir: &std::path::Path) -> (std::path::PathBuf, usize, Vec<usize>) {
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .expect("log dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segs.sort();
    let seg = segs.pop().expect("a log segment");
    let data = std::fs::read(&seg).expect("read segment");
    let mut pos = 8;
    let mut starts = Vec::new();
    loop {
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        if len == 0 {
            break;
        }
        starts.push(pos);
        pos += 8 + len;
    }
    (seg, pos, starts)
}

/// The Raft log's files with `--wal-dir`: a member killed with SIGKILL
/// restarts from them; a record a crash cut short at their end is cut (it
/// was never acknowledged) and every acknowledged write is still there; a
/// damaged record in the middle stops the member, naming the file and the
/// offset; a database whose log directory is gone is refused.
#[test]
fn log_files_torn_tail_cut_damage_refused() {
    let wal = tempfile::tempdir().expect("temp dir");
    let wal_dir = wal.path().join("wal");
    let wal_arg = wal_dir.display().to_string();
    let mut srv = Server::start(&["--wal-dir", &wal_arg]);
    for i in 0..30 {
        srv.ctl_ok(&["put", &format!("t/{i:02}"), &format!("v{i}")]);
    }
    srv.kill9();
    assert!(
        !srv.data_dir().join("member").join("log").exists(),
        "the log went to --wal-dir, not the data directory"
    );
    let (seg, end, starts) = newest_segment(&wal_dir);
    assert!(starts.len() > 30, "{} records", starts.len());
    // A batch that was being written when the machine went down: its
    // header and first bytes reached the disk, the sectors after did not.
    let mut data = std::fs::read(&seg).expect("read");
    let mut torn = Vec::new();
    torn.extend_from_slice(&3000u32.to_le_bytes());
    torn.extend_from_slice(&0x1234_5678u32.to_le_bytes());
    torn.extend_from_slice(&[1u8; 40]);
    data[end..end + torn.len()].copy_from_slice(&torn);
    std::fs::write(&seg, &data).expect("write");
    srv.spawn();
    srv.wait_ready();
    assert!(
        srv.log().contains("cut a torn record"),
        "no warning:\n{}",
        srv.log()
    );
    let got = srv.ctl_ok(&["get", "t/", "--prefix", "--print-value-only"]);
    let want: Vec<String> = (0..30).map(|i| format!("v{i}")).collect();
    assert_eq!(got.lines().collect::<Vec<_>>(), want);
    srv.ctl_ok(&["put", "t/after", "x"]);
    srv.kill9();
    // A flipped byte inside a record in the middle.
    let (seg, _, starts) = newest_segment(&wal_dir);
    let at = starts[starts.len() / 2] + 12;
    let mut data = std::fs::read(&seg).expect("read");
    data[at] ^= 0x55;
    std::fs::write(&seg, &data).expect("write");
    srv.spawn();
    crate::harness::wait_until(Duration::from_secs(20), "the member to stop", || {
        srv.log().contains("corrupt")
    });
    let log = srv.log();
    assert!(log.contains(&seg.display().to_string()), "{log}");
    assert!(log.contains("offset"), "{log}");
    srv.kill9();
    data[at] ^= 0x55;
    std::fs::write(&seg, &data).expect("write");
    srv.spawn();
    srv.wait_ready();
    assert!(srv.ctl_ok(&["get", "t/after"]).contains('x'));
    srv.kill9();
    // Started without its --wal-dir: refused, not started empty.
    srv.extra.clear();
    srv.spawn();
    crate::harness::wait_until(Duration::from_secs(20), "the member to stop", || {
        srv.log().contains("holds no log segment")
    });
    srv.kill9();
}
