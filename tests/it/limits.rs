//! What one client can make a member hold, and that it stays healthy: a header
//! block that never ends, thousands of idle connections, a flood of proposals,
//! 100,000 watchers on one stream, and a connection that stops answering
//! HTTP/2 pings. Each case ends with the member healthy and every acknowledged
//! write readable.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, WatchOptions};

use crate::harness::Server;

pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The server's resident memory in KiB.
fn rss_kib(srv: &Server) -> u64 {
    let pid = srv.pid().expect("server running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn assert_healthy(srv: &Server) {
    let out = srv.etcdctl(&["endpoint", "health"]);
    assert!(
        out.status.success(),
        "member unhealthy: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        srv.log()
    );
}

/// Reads until the server closes the connection (or resets it); false if it
/// is still open after `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain calls on a struct owned by this frame.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

#[test]
fn a_header_block_that_never_ends_is_not_buffered() {
    let srv = Server::start(&[]);
    let before = rss_kib(&srv);
    let mut s = TcpStream::connect(("127.0.0.1", srv.client_port)).expect("connect");
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let mut head = PREFACE.to_vec();
    head.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    // HEADERS without END_HEADERS: :method POST, then CONTINUATION frames
    // forever (64 MiB in all, unless the server closes first).
    head.extend(frame(0x1, 0, 1, &[0x83]));
    let _ = s.write_all(&head);
    let cont = frame(0x9, 0, 1, &[0x82; 16_384]);
    let mut sent = 0usize;
    for _ in 0..4096 {
        if s.write_all(&cont).is_err() {
            break;
        }
        sent += cont.len();
    }
    assert!(
        closed_within(&mut s, Duration::from_secs(10)),
        "the connection stays open after {sent} bytes of one header block"
    );
    assert_healthy(&srv);
    let after = rss_kib(&srv);
    assert!(
        after < before + 32 * 1024,
        "resident memory grew from {before} KiB to {after} KiB"
    );
}

#[test]
fn thousands_of_idle_connections() {
    let limit = raise_fd_limit();
    let n = 10_000.min(limit.saturating_sub(2_000) as usize / 2);
    assert!(n >= 1_000, "open file limit {limit} too low for this test");
    let srv = Server::start(&[]);
    let mut idle: Vec<TcpStream> = (0..n)
        .map(|i| {
            TcpStream::connect(("127.0.0.1", srv.client_port))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"))
        })
        .collect();
    // Served meanwhile.
    assert_eq!(srv.ctl_ok(&["put", "k", "v"]).trim(), "OK");
    assert_healthy(&srv);
    // A connection that never says anything is closed after the first-byte
    // deadline (10 s).
    for s in idle.iter_mut().step_by(n / 10) {
        assert!(
            closed_within(s, Duration::from_secs(30)),
            "an idle connection stays open"
        );
    }
    drop(idle);
    assert_eq!(srv.ctl_ok(&["get", "k", "--print-value-only"]).trim(), "v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_proposals_is_refused_not_queued() {
    let srv = Server::start(&[]);
    let total = 80_000usize;
    let concurrent = 24_000usize;
    let before = rss_kib(&srv);
    let clients: Vec<Client> = {
        let mut v = Vec::new();
        // A channel queues at most 1,024 calls: enough channels to have
        // `concurrent` calls at the server at once.
        for _ in 0..32 {
            v.push(
                Client::connect([srv.endpoint()], None)
                    .await
                    .expect("connect"),
            );
        }
        v
    };
    // The most proposals the member held at once, sampled during the flood.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        let port = srv.client_port;
        std::thread::spawn(move || {
            let mut most = 0i64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let text = crate::harness::http_get(port, "/metrics");
                if let Some(v) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("etcd_server_proposals_pending "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                {
                    most = most.max(v as i64);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            most
        })
    };
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrent));
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let permit = sem.clone().acquire_owned().await.expect("permit");
        let mut c = clients[i % clients.len()].clone();
        tasks.push(tokio::spawn(async move {
            let _p = permit;
            let r = c.put(format!("flood/{i:06}"), "x", None).await;
            (i, r.map(|_| ()).map_err(|e| e.to_string()))
        }));
    }
    let (mut ok, mut refused) = (Vec::new(), 0usize);
    for t in tasks {
        let (i, r) = t.await.expect("task");
        match r {
            Ok(()) => ok.push(i),
            Err(e) if e.contains("etcdserver: too many requests") => refused += 1,
            Err(e) => panic!("put {i}: unexpected error {e}"),
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let most_pending = sampler.join().expect("sampler");
    assert_eq!(ok.len() + refused, total);
    // Every acknowledged write is there.
    let mut c = clients[0].clone();
    let got = c
        .get(
            "flood/",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .expect("range");
    let keys: std::collections::BTreeSet<String> = got
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect();
    for i in &ok {
        assert!(
            keys.contains(&format!("flood/{i:06}")),
            "acknowledged put {i} lost"
        );
    }
    eprintln!(
        "{} of {total} puts acknowledged, {refused} refused with too many requests; at most {most_pending} proposals pending",
        ok.len()
    );
    // Either the flood met the bound, or the member kept up with it and
    // never held more than the bound's 10,000 requests.
    assert!(
        refused > 0 || most_pending <= 10_000,
        "{concurrent} concurrent puts never hit the bound, yet {most_pending} proposals were pending"
    );
    assert!(most_pending > 0, "the sampler saw no proposal pending");
    assert!(!ok.is_empty());
    let after = rss_kib(&srv);
    assert!(
        after < before + 512 * 1024,
        "resident memory grew from {before} KiB to {after} KiB"
    );
    assert_healthy(&srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_watchers_on_one_stream() {
    let srv = Server::start(&[]);
    let mut c = Client::connect([srv.endpoint()], None)
        .await
        .expect("connect");
    let stream = c
        .watch_client()
        .watch("w/0", None)
        .await
        .expect("first watch");
    let (mut tx, mut rx) = stream.split();
    const N: usize = 100_000;
    let sender = tokio::spawn(async move {
        for i in 1..N + 10 {
            tx.watch(format!("w/{i}"), Some(WatchOptions::new()))
                .await
                .expect("watch request");
        }
        tx
    });
    let (mut created, mut refused) = (0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(240);
    // The first watch's answer, N + 9 more creates: N created, 10 refused.
    while created + refused < N + 10 {
        assert!(
            Instant::now() < deadline,
            "{created} created, {refused} refused"
        );
        let r = tokio::time::timeout(Duration::from_secs(60), rx.message())
            .await
            .expect("watch response in time")
            .expect("watch stream")
            .expect("stream open");
        if r.created() && r.canceled() {
            assert_eq!(
                r.cancel_reason(),
                "etcdserver: too many watchers on this stream"
            );
            refused += 1;
        } else if r.created() {
            created += 1;
        }
    }
    let _tx = sender.await.expect("sender");
    assert_eq!((created, refused), (N, 10));
    // The watchers still work, and the member serves others.
    c.put("w/77777", "v", None).await.expect("put");
    let ev = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let r = rx.message().await.expect("stream").expect("open");
            if let Some(e) = r.events().first() {
                return e.kv().map(|kv| kv.key().to_vec());
            }
        }
    })
    .await
    .expect("event in time");
    assert_eq!(ev.as_deref(), Some(&b"w/77777"[..]));
    assert_healthy(&srv);
}

#[test]
fn a_client_that_stops_answering_pings_is_closed() {
    let srv = Server::start(&[
        "--grpc-keepalive-interval=1s",
        "--grpc-keepalive-timeout=1s",
    ]);
    let mut s = TcpStream::connect(("127.0.0.1", srv.client_port)).expect("connect");
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(0x4, 0, 0, &[]));
    s.write_all(&hello).expect("preface");
    // We read what the server sends (its SETTINGS, its PINGs) and answer
    // nothing, as the far end of a half-open connection would.
    assert!(
        closed_within(&mut s, Duration::from_secs(20)),
        "a connection that answers no ping stays open"
    );
    assert_healthy(&srv);

    // Without the flags (etcd's 2 h default), the same connection stays.
    let srv = Server::start(&[]);
    let mut s = TcpStream::connect(("127.0.0.1", srv.client_port)).expect("connect");
    s.write_all(&hello).expect("preface");
    assert!(!closed_within(&mut s, Duration::from_secs(4)));
}
