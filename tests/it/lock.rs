//! The Lock and Election services, side by side with Debian's etcd 3.4: the
//! same scenarios through the etcd-client crate's lock and election clients
//! on both (lock contention, unlock by key, a holder whose lease expires, a
//! waiter that gives up, campaigns of two candidates, proclamations, Observe
//! across a change of leader), with transcripts of revisions and values that
//! must be equal; the same bad requests and refused callers on both, with
//! equal codes and texts; and Debian's `etcdctl lock` and `etcdctl elect`.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, ConnectOptions, GetOptions, LeaderKey, LockOptions, ProclaimOptions, ResignOptions,
};
use etcd_rs::pb::etcdserverpb::auth_client::AuthClient;
use etcd_rs::pb::etcdserverpb::lease_client::LeaseClient;
use etcd_rs::pb::etcdserverpb::{AuthenticateRequest, LeaseGrantRequest};
use etcd_rs::pb::v3electionpb::election_client::ElectionClient;
use etcd_rs::pb::v3electionpb::{
    self as epb, CampaignRequest, LeaderRequest, ProclaimRequest, ResignRequest,
};
use etcd_rs::pb::v3lockpb::lock_client::LockClient;
use etcd_rs::pb::v3lockpb::{LockRequest, UnlockRequest};
use tonic::transport::Channel;

use crate::harness::{Server, etcdctl_bin, grpc_channel as channel, runtime, with_token as req};
use crate::security::{setup_users, sh_ok};

const WAIT: Duration = Duration::from_secs(20);

fn both() -> [Server; 2] {
    [Server::start(&[]), Server::start_reference(&[])]
}

async fn connect(srv: &Server) -> Client {
    Client::connect([srv.endpoint()], None)
        .await
        .expect("connect")
}

async fn grant(c: &mut Client, ttl: i64) -> i64 {
    c.lease_grant(ttl, None).await.expect("lease grant").id()
}

fn rev(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.map(|h| h.revision()).unwrap_or(-1)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// How many keys are under `pfx`.
pub async fn count(c: &mut Client, pfx: &str) -> usize {
    c.get(pfx, Some(GetOptions::new().with_prefix()))
        .await
        .expect("get")
        .kvs()
        .len()
}

/// Polls `cond` every 20 ms until it holds; panics after [`WAIT`].
async fn until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that `task` is still waiting a moment after the state it waits in
/// was reached (it must not finish on anything but what it waits for).
async fn still_waiting<T>(task: &mut tokio::task::JoinHandle<T>, what: &str) {
    let r = tokio::time::timeout(Duration::from_millis(400), task).await;
    assert!(r.is_err(), "{what} did not wait");
}

async fn finished<T>(task: tokio::task::JoinHandle<T>, what: &str) -> T {
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap_or_else(|_| panic!("{what} never finished"))
        .expect("task")
}

/// Lock scenario: contention, unlock by key, a holder whose lease expires, a
/// waiter that gives up, a lock without a lease. Returns what happened, by
/// revision, for comparison between servers.
async fn lock_scenario(srv: &Server) -> Vec<String> {
    let mut t = Vec::new();
    let mut a = connect(srv).await;
    let mut b = connect(srv).await;
    let la = grant(&mut a, 60).await;
    let lb = grant(&mut b, 60).await;
    let with = |l| Some(LockOptions::new().with_lease(l));

    let ka = a.lock("L", with(la)).await.expect("lock a");
    assert_eq!(text(ka.key()), format!("L/{la:x}"), "{:?}", srv.kind);
    t.push(format!("a holds L at {}", rev(ka.header())));
    let again = a.lock("L", with(la)).await.expect("lock a again");
    assert_eq!(again.key(), ka.key(), "the same lease holds the same key");
    t.push(format!("a again at {}", rev(again.header())));

    let mut b2 = b.clone();
    let mut waiter = tokio::spawn(async move { b2.lock("L", with(lb)).await });
    until("b's key under L/", || {
        let mut a = a.clone();
        async move { count(&mut a, "L/").await == 2 }
    })
    .await;
    still_waiting(&mut waiter, "b's lock").await;
    // Someone else unlocks a's hold, by its key.
    let u = b.unlock(ka.key()).await.expect("unlock by key");
    t.push(format!("a's key unlocked at {}", rev(u.header())));
    let kb = finished(waiter, "b's lock").await.expect("lock b");
    assert_eq!(text(kb.key()), format!("L/{lb:x}"));
    t.push(format!("b holds L at {}", rev(kb.header())));

    // A holder whose lease expires hands the lock on.
    let lc = grant(&mut a, 2).await;
    let ld = grant(&mut b, 60).await;
    let kc = a.lock("M", with(lc)).await.expect("lock c");
    t.push(format!("c holds M at {}", rev(kc.header())));
    let mut b2 = b.clone();
    let waiter = tokio::spawn(async move { b2.lock("M", with(ld)).await });
    let kd = finished(waiter, "d's lock").await.expect("lock d");
    assert_eq!(text(kd.key()), format!("M/{ld:x}"));
    let gone = a.get(kc.key(), None).await.expect("get");
    assert!(gone.kvs().is_empty(), "c's key outlived its lease");
    t.push(format!("d holds M at {}", rev(kd.header())));

    // A waiter that gives up leaves nothing behind.
    let le = grant(&mut a, 60).await;
    let mut a2 = a.clone();
    let waiter = tokio::spawn(async move { a2.lock("M", with(le)).await });
    until("e's key under M/", || {
        let mut a = a.clone();
        async move { count(&mut a, "M/").await == 2 }
    })
    .await;
    waiter.abort();
    until("e's key removed", || {
        let mut a = a.clone();
        async move { count(&mut a, "M/").await == 1 }
    })
    .await;
    let left = a.get("M/", Some(GetOptions::new().with_prefix())).await;
    let left = left.expect("get");
    assert_eq!(left.kvs()[0].key(), kd.key());
    t.push(format!("e gave up, M/ at {}", rev(left.header())));

    // Without a lease, the lock gets one of 60 s.
    let kn = a.lock("N", None).await.expect("lock n");
    let kv = a.get(kn.key(), None).await.expect("get");
    let lease = kv.kvs().first().map(|kv| kv.lease()).unwrap_or_default();
    assert_eq!(text(kn.key()), format!("N/{lease:x}"));
    let ttl = a.lease_time_to_live(lease, None).await.expect("ttl");
    t.push(format!(
        "n holds N at {} with a lease of {} s",
        rev(kn.header()),
        ttl.granted_ttl()
    ));
    t
}

#[test]
fn lock_contention_expiry_and_cancellation_as_etcd() {
    let [ours, etcd] = both();
    let rt = runtime();
    let got = rt.block_on(lock_scenario(&ours));
    let want = rt.block_on(lock_scenario(&etcd));
    assert_eq!(got, want);
    assert!(got.last().is_some_and(|l| l.ends_with("lease of 60 s")));
}

async fn next(obs: &mut tokio::sync::mpsc::Receiver<etcd_client::LeaderResponse>) -> String {
    let m = tokio::time::timeout(WAIT, obs.recv())
        .await
        .expect("an observation")
        .expect("observe stream open");
    let kv = m.kv().expect("kv");
    format!(
        "observed {} (created {}) at {}",
        text(kv.value()),
        kv.create_revision(),
        rev(m.header())
    )
}

fn status_of(e: etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => format!("{other}"),
    }
}

/// Election scenario: two candidates, proclamations, a stale leader key,
/// resignation, a campaign again with the same lease, and Observe throughout.
async fn election_scenario(srv: &Server) -> Vec<String> {
    let mut t = Vec::new();
    let mut a = connect(srv).await;
    let mut b = connect(srv).await;
    let la = grant(&mut a, 60).await;
    let lb = grant(&mut b, 60).await;
    // etcd answers Observe's headers with its first message: read it aside.
    let (tx, mut obs) = tokio::sync::mpsc::channel(16);
    let mut a2 = a.clone();
    let observer = tokio::spawn(async move {
        let mut s = a2.observe("E").await.expect("observe");
        while let Ok(Some(m)) = s.message().await {
            if tx.send(m).await.is_err() {
                break;
            }
        }
    });

    let ca = a.campaign("E", "a1", la).await.expect("campaign a");
    let lead_a = ca.leader().expect("leader key").clone();
    assert_eq!(text(lead_a.key()), format!("E/{la:x}"));
    assert_eq!(lead_a.name(), b"E");
    assert_eq!(lead_a.lease(), la);
    assert_eq!(lead_a.rev(), rev(ca.header()));
    t.push(format!("a leads at {}", rev(ca.header())));
    t.push(next(&mut obs).await);
    let l = a.leader("E").await.expect("leader");
    t.push(format!(
        "leader {} at {}",
        text(l.kv().expect("kv").value()),
        rev(l.header())
    ));

    let mut b2 = b.clone();
    let mut waiter = tokio::spawn(async move { b2.campaign("E", "b1", lb).await });
    until("b's key under E/", || {
        let mut a = a.clone();
        async move { count(&mut a, "E/").await == 2 }
    })
    .await;
    still_waiting(&mut waiter, "b's campaign").await;

    let p = a
        .proclaim(
            "a2",
            Some(ProclaimOptions::new().with_leader(lead_a.clone())),
        )
        .await
        .expect("proclaim");
    t.push(format!("a proclaims at {}", rev(p.header())));
    t.push(next(&mut obs).await);
    let stale = LeaderKey::new()
        .with_name("E")
        .with_key(lead_a.key())
        .with_rev(lead_a.rev() + 1)
        .with_lease(la);
    let e = a
        .proclaim("x", Some(ProclaimOptions::new().with_leader(stale)))
        .await
        .expect_err("a stale leader key");
    t.push(format!("stale proclaim: {}", status_of(e)));

    let r = a
        .resign(Some(ResignOptions::new().with_leader(lead_a)))
        .await
        .expect("resign");
    t.push(format!("a resigns at {}", rev(r.header())));
    let cb = finished(waiter, "b's campaign").await.expect("campaign b");
    let lead_b = cb.leader().expect("leader key").clone();
    assert_eq!(text(lead_b.key()), format!("E/{lb:x}"));
    t.push(format!(
        "b leads at {} created {}",
        rev(cb.header()),
        lead_b.rev()
    ));
    t.push(next(&mut obs).await);

    // The same lease campaigns again: the same key, with the new value.
    let again = b.campaign("E", "b2", lb).await.expect("campaign again");
    assert_eq!(again.leader().map(|l| l.key()), Some(lead_b.key()));
    t.push(format!("b again at {}", rev(again.header())));
    t.push(next(&mut obs).await);

    // A candidate that gives up while it waits withdraws its key.
    let lc = grant(&mut a, 60).await;
    let mut a2 = a.clone();
    let waiter = tokio::spawn(async move { a2.campaign("E", "c", lc).await });
    until("c's key under E/", || {
        let mut a = a.clone();
        async move { count(&mut a, "E/").await == 2 }
    })
    .await;
    waiter.abort();
    until("c's key withdrawn", || {
        let mut a = a.clone();
        async move { count(&mut a, "E/").await == 1 }
    })
    .await;
    let left = a.get("E/", Some(GetOptions::new().with_prefix())).await;
    t.push(format!(
        "c gave up, E/ at {}",
        rev(left.expect("get").header())
    ));
    let r = b
        .resign(Some(ResignOptions::new().with_leader(lead_b)))
        .await
        .expect("resign b");
    t.push(format!("b resigns at {}", rev(r.header())));
    let e = b.leader("E").await.expect_err("no leader left");
    t.push(format!("leader: {}", status_of(e)));
    observer.abort();
    t
}

#[test]
fn election_with_two_candidates_as_etcd() {
    let [ours, etcd] = both();
    let rt = runtime();
    let got = rt.block_on(election_scenario(&ours));
    let want = rt.block_on(election_scenario(&etcd));
    assert_eq!(got, want);
    assert!(got.contains(&"leader: Unknown: election: no leader".to_string()));
}

/// "ok" or the status, as code and text.
fn out<T>(r: Result<tonic::Response<T>, tonic::Status>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

fn leader_key(name: &str, key: &str, rev: i64, lease: i64) -> Option<epb::LeaderKey> {
    Some(epb::LeaderKey {
        name: name.into(),
        key: key.into(),
        rev,
        lease,
    })
}

/// The first answer of an Observe stream: a message, its end, or its error;
/// "waiting" when there is none within 1.5 s (etcd sends the response headers
/// with the first message only).
async fn observe_first(e: &mut ElectionClient<Channel>, name: &str, token: Option<&str>) -> String {
    let r = LeaderRequest { name: name.into() };
    let first = async {
        let mut stream = e.observe(req(r, token)).await?.into_inner();
        stream.message().await
    };
    match tokio::time::timeout(Duration::from_millis(1500), first).await {
        Err(_) => "waiting".into(),
        Ok(Ok(None)) => "ended".into(),
        Ok(Ok(Some(m))) => format!(
            "message {}",
            text(&m.kv.map(|kv| kv.value).unwrap_or_default())
        ),
        Ok(Err(s)) => format!("{:?}: {}", s.code(), s.message()),
    }
}

/// Requests that fail (or do nothing), as etcd answers them.
async fn bad_requests(srv: &Server) -> Vec<(&'static str, String)> {
    let ch = channel(&srv.endpoint()).await;
    let mut l = LockClient::new(ch.clone());
    let mut e = ElectionClient::new(ch.clone());
    let lease = LeaseClient::new(ch)
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .expect("grant")
        .into_inner()
        .id;
    let lock = |name: &str, lease| LockRequest {
        name: name.into(),
        lease,
    };
    vec![
        (
            "lock with a lease that does not exist",
            out(l.lock(lock("n", 12345)).await),
        ),
        (
            "unlock without a key",
            out(l.unlock(UnlockRequest { key: vec![] }).await),
        ),
        (
            "unlock of a key that does not exist",
            out(l.unlock(UnlockRequest { key: "n/1".into() }).await),
        ),
        (
            "leader of an election without candidates",
            out(e.leader(LeaderRequest { name: "e".into() }).await),
        ),
        (
            "campaign with a lease that does not exist",
            out(e
                .campaign(CampaignRequest {
                    name: "e".into(),
                    lease: 999,
                    value: "v".into(),
                })
                .await),
        ),
        (
            "proclaim without a leader key",
            out(e
                .proclaim(ProclaimRequest {
                    leader: None,
                    value: "v".into(),
                })
                .await),
        ),
        (
            "proclaim with a leader key that does not lead",
            out(e
                .proclaim(ProclaimRequest {
                    leader: leader_key("e", "e/1", 5, lease),
                    value: "v".into(),
                })
                .await),
        ),
        (
            "proclaim with an empty leader key",
            out(e
                .proclaim(ProclaimRequest {
                    leader: leader_key("e", "", 5, lease),
                    value: "v".into(),
                })
                .await),
        ),
        (
            "resign without a leader key",
            out(e.resign(ResignRequest { leader: None }).await),
        ),
        (
            "resign with a leader key that does not lead",
            out(e
                .resign(ResignRequest {
                    leader: leader_key("e", "e/1", 5, lease),
                })
                .await),
        ),
        (
            "resign with an empty leader key",
            out(e
                .resign(ResignRequest {
                    leader: leader_key("e", "", 5, lease),
                })
                .await),
        ),
        ("observe of an empty election", {
            observe_first(&mut e, "e", None).await
        }),
    ]
}

#[test]
fn bad_requests_are_answered_as_etcd_answers_them() {
    let [ours, etcd] = both();
    let rt = runtime();
    let got = rt.block_on(bad_requests(&ours));
    let want = rt.block_on(bad_requests(&etcd));
    assert_eq!(got, want);
    let get = |k: &str| got.iter().find(|(w, _)| *w == k).map(|(_, o)| o.as_str());
    assert_eq!(
        get("lock with a lease that does not exist"),
        Some("Unknown: etcdserver: requested lease not found")
    );
    assert_eq!(
        get("proclaim without a leader key"),
        Some("Unknown: \"leader\" field must be provided")
    );
    assert_eq!(
        get("proclaim with a leader key that does not lead"),
        Some("Unknown: election: not leader")
    );
}

async fn token(endpoint: &str, user: &str, password: &str) -> String {
    AuthClient::new(channel(endpoint).await)
        .authenticate(AuthenticateRequest {
            name: user.into(),
            password: password.into(),
        })
        .await
        .expect("authenticate")
        .into_inner()
        .token
}

/// Every method as a caller: alice (read and write under /app/, read under
/// /ro/), nobody (no token), or a token that is not valid.
async fn refusals(srv: &Server) -> Vec<(String, String)> {
    let ch = channel(&srv.endpoint()).await;
    let alice = token(&srv.endpoint(), "alice", "pw").await;
    let mut out_all = Vec::new();
    for (who, t) in [
        ("alice", Some(alice.as_str())),
        ("nobody", None),
        ("bad token", Some("bogus.token")),
    ] {
        let mut l = LockClient::new(ch.clone());
        let mut e = ElectionClient::new(ch.clone());
        for name in ["/app", "/ro", "/no"] {
            let mut r = |what: &str, o: String| out_all.push((format!("{who} {what} {name}"), o));
            let locked = l
                .lock(req(
                    LockRequest {
                        name: name.into(),
                        lease: 0,
                    },
                    t,
                ))
                .await;
            let key = locked
                .as_ref()
                .map(|k| k.get_ref().key.clone())
                .unwrap_or_else(|_| format!("{name}/x").into_bytes());
            r("lock", out(locked));
            r("unlock", out(l.unlock(req(UnlockRequest { key }, t)).await));
            r(
                "leader",
                out(e.leader(req(LeaderRequest { name: name.into() }, t)).await),
            );
            let other = format!("{name}/x");
            r(
                "proclaim",
                out(e
                    .proclaim(req(
                        ProclaimRequest {
                            leader: leader_key(name, &other, 5, 0),
                            value: "v".into(),
                        },
                        t,
                    ))
                    .await),
            );
            r(
                "resign",
                out(e
                    .resign(req(
                        ResignRequest {
                            leader: leader_key(name, &other, 5, 0),
                        },
                        t,
                    ))
                    .await),
            );
            r("observe", observe_first(&mut e, name, t).await);
            // A campaign that may run leads at once (nobody else is a
            // candidate) and resigns.
            let c = e
                .campaign(req(
                    CampaignRequest {
                        name: name.into(),
                        lease: 0,
                        value: "v".into(),
                    },
                    t,
                ))
                .await;
            if let Ok(c) = &c {
                let resign = ResignRequest {
                    leader: c.get_ref().leader.clone(),
                };
                e.resign(req(resign, t)).await.expect("resign");
            }
            r("campaign", out(c));
        }
    }
    out_all
}

#[test]
fn callers_without_permission_are_refused_as_etcd_refuses_them() {
    let [ours, etcd] = both();
    for srv in [&ours, &etcd] {
        setup_users(srv);
        let root = Some("root:pw");
        sh_ok(srv, root, &["role", "add", "reader"]);
        sh_ok(
            srv,
            root,
            &[
                "role",
                "grant-permission",
                "reader",
                "--prefix=true",
                "read",
                "/ro/",
            ],
        );
        sh_ok(srv, root, &["user", "grant-role", "alice", "reader"]);
    }
    let rt = runtime();
    let got = rt.block_on(refusals(&ours));
    let want = rt.block_on(refusals(&etcd));
    assert_eq!(got, want);
    let get = |k: &str| got.iter().find(|(w, _)| w == k).map(|(_, o)| o.as_str());
    assert_eq!(get("alice lock /app"), Some("ok"));
    assert_eq!(
        get("alice lock /no"),
        Some("Unknown: etcdserver: permission denied")
    );
    assert_eq!(
        get("alice lock /ro"),
        Some("Unknown: etcdserver: permission denied")
    );
    assert_eq!(
        get("alice leader /ro"),
        Some("Unknown: election: no leader")
    );
    assert_eq!(get("alice observe /no"), Some("ended"));
    assert_eq!(get("alice observe /ro"), Some("waiting"));
    assert_eq!(
        get("nobody lock /app"),
        Some("Unknown: etcdserver: user name is empty")
    );
    // Our refusals came before any work: no lease was granted for them.
    rt.block_on(async {
        let opts = ConnectOptions::new().with_user("root", "pw");
        let mut c = Client::connect([ours.endpoint()], Some(opts))
            .await
            .expect("connect");
        let leases = c.leases().await.expect("leases");
        // alice's Lock, Campaign, Proclaim and Resign on /app without a
        // lease, each given one (as etcd gives them).
        assert_eq!(leases.leases().len(), 4, "{:?}", leases.leases());
    });
}

/// Runs etcdctl with `args` against `srv`, its stdout read line by line.
struct Ctl {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Ctl {
    fn start(srv: &Server, args: &[&str]) -> Ctl {
        let mut child = Command::new(etcdctl_bin())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", srv.endpoint()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run etcdctl");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ctl { child, lines }
    }

    fn line(&self) -> String {
        self.lines.recv_timeout(WAIT).expect("a line from etcdctl")
    }

    fn no_line_yet(&self) -> bool {
        self.lines.recv_timeout(Duration::from_millis(400)).is_err()
    }

    /// SIGINT (etcdctl then ends its session), and the exit.
    fn interrupt(&mut self) {
        // SAFETY: kill(2) with a PID we own and a valid signal number.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Ctl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `etcdctl lock` and `etcdctl elect` (clientv3's concurrency package on the
/// client side): what they print, with lease IDs replaced by their order.
fn etcdctl_transcript(srv: &Server) -> Vec<String> {
    let mut t = Vec::new();
    let mut leases: Vec<String> = Vec::new();
    let mut name = |line: String| -> String {
        match line.split_once('/') {
            Some((p, hex)) if hex.chars().all(|c| c.is_ascii_hexdigit()) && !hex.is_empty() => {
                if !leases.iter().any(|l| l == hex) {
                    leases.push(hex.to_string());
                }
                let i = leases.iter().position(|l| l == hex).unwrap_or(0);
                format!("{p}/<lease {i}>")
            }
            _ => line,
        }
    };
    let mut holder = Ctl::start(srv, &["lock", "L"]);
    t.push(name(holder.line()));
    let second = Ctl::start(srv, &["lock", "L", "echo", "second"]);
    assert!(second.no_line_yet(), "the second lock did not wait");
    holder.interrupt();
    t.push(name(second.line()));

    let mut leader = Ctl::start(srv, &["elect", "E", "one"]);
    t.push(name(leader.line()));
    t.push(name(leader.line()));
    let observer = Ctl::start(srv, &["elect", "-l", "E"]);
    t.push(name(observer.line()));
    t.push(name(observer.line()));
    let follower = Ctl::start(srv, &["elect", "E", "two"]);
    assert!(follower.no_line_yet(), "the second candidate did not wait");
    leader.interrupt();
    t.push(name(follower.line()));
    t.push(name(follower.line()));
    t.push(name(observer.line()));
    t.push(name(observer.line()));
    t
}

#[test]
fn etcdctl_lock_and_elect_as_with_etcd() {
    let [ours, etcd] = both();
    let got = etcdctl_transcript(&ours);
    let want = etcdctl_transcript(&etcd);
    assert_eq!(got, want);
    assert_eq!(got[1], "second");
}

/// A waiter whose own lease expires while it waits is not given the lock
/// once the holder lets go (etcd 3.5's answer; etcd 3.4 answers success with
/// a key that no longer exists).
#[test]
fn a_waiter_whose_lease_expired_is_not_given_the_lock() {
    let srv = Server::start(&[]);
    runtime().block_on(async {
        let mut a = connect(&srv).await;
        let holder = grant(&mut a, 60).await;
        let short = grant(&mut a, 2).await;
        let held = a
            .lock("X", Some(LockOptions::new().with_lease(holder)))
            .await
            .expect("lock");
        let mut a2 = a.clone();
        let mut waiter = tokio::spawn(async move {
            a2.lock("X", Some(LockOptions::new().with_lease(short)))
                .await
        });
        until("the waiter's key to come and go with its lease", || {
            let mut a = a.clone();
            async move {
                let ttl = a.lease_time_to_live(short, None).await.expect("ttl");
                ttl.ttl() < 0 && count(&mut a, "X/").await == 1
            }
        })
        .await;
        still_waiting(&mut waiter, "the waiter").await;
        a.unlock(held.key()).await.expect("unlock");
        let r = finished(waiter, "the waiter").await;
        assert_eq!(
            r.map(|_| ()).map_err(status_of),
            Err("Unknown: mutex: session is expired".to_string())
        );
    });
}

/// Locks and campaigns through followers and the leader of a three-member
/// cluster: waits follow deletions applied on another member, and Observe on
/// a follower sees the leader change.
#[test]
fn locks_and_elections_across_members() {
    let c = crate::cluster::Cluster::start(3, &[]);
    let leader = c.wait_leader(&[0, 1, 2], WAIT);
    let f: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let ep = |i: usize| c.members[i].endpoint();
    c.rt.block_on(async {
        let mut a = crate::cluster::connect(&ep(f[0])).await;
        let mut b = crate::cluster::connect(&ep(f[1])).await;
        let mut l = crate::cluster::connect(&ep(leader)).await;
        let la = grant(&mut a, 60).await;
        let lb = grant(&mut b, 60).await;

        let held = a
            .lock("L", Some(LockOptions::new().with_lease(la)))
            .await
            .expect("lock on a follower");
        let mut b2 = b.clone();
        let mut waiter =
            tokio::spawn(
                async move { b2.lock("L", Some(LockOptions::new().with_lease(lb))).await },
            );
        until("b's key", || {
            let mut b = b.clone();
            async move { count(&mut b, "L/").await == 2 }
        })
        .await;
        still_waiting(&mut waiter, "the lock on the other follower").await;
        l.unlock(held.key()).await.expect("unlock on the leader");
        let got = finished(waiter, "the lock on the other follower")
            .await
            .expect("lock");
        assert_eq!(text(got.key()), format!("L/{lb:x}"));

        let (tx, mut obs) = tokio::sync::mpsc::channel(16);
        let mut b3 = b.clone();
        let observer = tokio::spawn(async move {
            let mut s = b3.observe("E").await.expect("observe");
            while let Ok(Some(m)) = s.message().await {
                if tx.send(m).await.is_err() {
                    break;
                }
            }
        });
        let ca = a.campaign("E", "a", la).await.expect("campaign");
        assert!(next(&mut obs).await.starts_with("observed a "));
        let mut l2 = l.clone();
        let mut waiter = tokio::spawn(async move { l2.campaign("E", "l", lb).await });
        until("the second candidate's key", || {
            let mut l = l.clone();
            async move { count(&mut l, "E/").await == 2 }
        })
        .await;
        still_waiting(&mut waiter, "the campaign on the leader").await;
        let lead = ca.leader().expect("leader key").clone();
        a.resign(Some(ResignOptions::new().with_leader(lead)))
            .await
            .expect("resign");
        let cl = finished(waiter, "the campaign on the leader")
            .await
            .expect("campaign");
        assert_eq!(
            cl.leader().map(|k| text(k.key())),
            Some(format!("E/{lb:x}"))
        );
        assert!(next(&mut obs).await.starts_with("observed l "));
        let seen = b.leader("E").await.expect("leader");
        assert_eq!(seen.kv().map(|kv| text(kv.value())), Some("l".into()));
        observer.abort();
    });
}
