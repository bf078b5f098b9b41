//! A TCP proxy in front of each cluster member's peer port, for network faults.
//!
//! Every member advertises its proxy's address as its peer URL, so every peer
//! connection to member `j` goes through proxy `j`. Member IDs are derived from the
//! advertised URLs, so a member cannot see each peer at a different address; the
//! proxy instead learns who is talking from the peer handshake: a Raft connection
//! opens with `ETCDRSP1`, the kind byte `R`, then the cluster ID, the sender's member
//! ID and the receiver's member ID (8 bytes each, big-endian). A Raft connection
//! carries messages in one direction only (from the dialling member to the member
//! behind the proxy; the reverse direction carries just the handshake answer), so a
//! rule on the ordered pair (from, to) blocks or delays exactly the messages `from`
//! sends to `to`.
//!
//! All proxies of a cluster share one [`Net`] holding the rules. Blocking a pair cuts
//! its live connections at once and refuses new ones after reading the handshake
//! (the dialler sees the connection close, as with a dead peer). Cluster-info
//! requests (kind `I`, no sender ID) pass unless the member behind the proxy is cut
//! off from everyone. A delay holds each chunk of the sender's bytes for the given
//! time before forwarding it, without limiting throughput.
//!
//! Partitioning the cluster into groups = blocking every ordered pair whose members
//! are in different groups; this is a real split (both directions, all members), not
//! just a stopped process.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 8] = b"ETCDRSP1";

#[derive(Default)]
struct Rules {
    /// Ordered (from, to) member-ID pairs whose traffic is dropped.
    blocked: HashSet<(u64, u64)>,
    /// Extra latency on (from, to).
    delay: HashMap<(u64, u64), Duration>,
    /// Member IDs behind proxies that refuse every connection.
    down: HashSet<u64>,
}

struct Conn {
    id: u64,
    from: Option<u64>,
    to: u64,
    client: TcpStream,
    upstream: TcpStream,
}

#[derive(Default)]
struct NetInner {
    rules: Mutex<Rules>,
    conns: Mutex<Vec<Conn>>,
    next_conn: AtomicU64,
    /// Connections refused by a rule (for assertions that a partition held).
    refused: AtomicU64,
    /// Per ordered (from, to) pair: when bytes last came, and the longest
    /// time between two arrivals since the last reset.
    gaps: Mutex<HashMap<(u64, u64), (Instant, Duration)>>,
    /// Per ordered (from, to) pair: the bytes `from` sent `to` so far.
    bytes: Mutex<HashMap<(u64, u64), u64>>,
}

/// The rules shared by the proxies of one cluster.
#[derive(Clone, Default)]
pub struct Net {
    inner: Arc<NetInner>,
}

impl Net {
    pub fn new() -> Net {
        Net::default()
    }

    /// Drops everything `from` sends to `to` (one direction).
    pub fn block(&self, from: u64, to: u64) {
        self.inner.rules.lock().unwrap().blocked.insert((from, to));
        self.cut_matching();
    }

    pub fn unblock(&self, from: u64, to: u64) {
        self.inner.rules.lock().unwrap().blocked.remove(&(from, to));
    }

    /// Blocks every pair across groups: members only talk within their group.
    pub fn partition(&self, groups: &[Vec<u64>]) {
        {
            let mut r = self.inner.rules.lock().unwrap();
            for (gi, g) in groups.iter().enumerate() {
                for (hi, h) in groups.iter().enumerate() {
                    if gi == hi {
                        continue;
                    }
                    for &a in g {
                        for &b in h {
                            r.blocked.insert((a, b));
                        }
                    }
                }
            }
        }
        self.cut_matching();
    }

    /// Cuts `id` off from every other member of `all`, both directions, and makes
    /// its proxy refuse even cluster-info requests.
    pub fn isolate(&self, id: u64, all: &[u64]) {
        {
            let mut r = self.inner.rules.lock().unwrap();
            for &o in all {
                if o != id {
                    r.blocked.insert((id, o));
                    r.blocked.insert((o, id));
                }
            }
            r.down.insert(id);
        }
        self.cut_matching();
    }

    /// Adds `d` of latency to what `from` sends to `to`.
    pub fn delay(&self, from: u64, to: u64, d: Duration) {
        self.inner.rules.lock().unwrap().delay.insert((from, to), d);
    }

    /// Removes every rule.
    pub fn heal(&self) {
        let mut r = self.inner.rules.lock().unwrap();
        r.blocked.clear();
        r.delay.clear();
        r.down.clear();
    }

    /// How many connections rules refused or cut so far.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    fn allowed(&self, from: Option<u64>, to: u64) -> bool {
        let r = self.inner.rules.lock().unwrap();
        if r.down.contains(&to) {
            return false;
        }
        match from {
            Some(f) => !r.blocked.contains(&(f, to)),
            None => true,
        }
    }

    /// Forgets the gaps recorded so far.
    pub fn reset_gaps(&self) {
        self.inner.gaps.lock().unwrap().clear();
    }

    /// The longest time between two arrivals of `from`'s bytes for `to`
    /// since the last reset, and the time since the last one (a sender that
    /// stopped altogether shows there).
    pub fn longest_gap(&self, from: u64, to: u64) -> Duration {
        match self.inner.gaps.lock().unwrap().get(&(from, to)) {
            Some((last, longest)) => (*longest).max(last.elapsed()),
            None => Duration::MAX,
        }
    }

    /// The bytes of Raft messages `from` has sent `to` through the proxies.
    pub fn bytes(&self, from: u64, to: u64) -> u64 {
        let b = self.inner.bytes.lock().unwrap();
        b.get(&(from, to)).copied().unwrap_or(0)
    }

    fn record_arrival(&self, from: Option<u64>, to: u64, n: usize) {
        let Some(f) = from else {
            return;
        };
        *self.inner.bytes.lock().unwrap().entry((f, to)).or_default() += n as u64;
        let now = Instant::now();
        let mut g = self.inner.gaps.lock().unwrap();
        let e = g.entry((f, to)).or_insert((now, Duration::ZERO));
        e.1 = e.1.max(now - e.0);
        e.0 = now;
    }

    fn delay_of(&self, from: Option<u64>, to: u64) -> Duration {
        let Some(f) = from else {
            return Duration::ZERO;
        };
        self.inner
            .rules
            .lock()
            .unwrap()
            .delay
            .get(&(f, to))
            .copied()
            .unwrap_or_default()
    }

    fn cut_matching(&self) {
        let mut conns = self.inner.conns.lock().unwrap();
        conns.retain(|c| {
            if self.allowed(c.from, c.to) {
                true
            } else {
                let _ = c.client.shutdown(Shutdown::Both);
                let _ = c.upstream.shutdown(Shutdown::Both);
                self.inner.refused.fetch_add(1, Ordering::Relaxed);
                false
            }
        });
    }

    fn forget(&self, id: u64) {
        self.inner.conns.lock().unwrap().retain(|c| c.id != id);
    }
}

/// One proxy: listens on its own port and forwards to one member's peer port.
pub struct Proxy {
    pub port: u16,
    pub target: SocketAddr,
    /// The member ID behind this proxy (0 until known).
    member: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    net: Net,
}

impl Proxy {
    /// Starts a proxy on a fresh loopback port that forwards to `target_port`.
    pub fn start(net: &Net, target_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy port");
        Self::start_with(net, listener, target_port)
    }

    /// Starts a proxy on `listener` that forwards to `target_port`.
    pub fn start_with(net: &Net, listener: TcpListener, target_port: u16) -> Proxy {
        let port = listener.local_addr().expect("proxy addr").port();
        let target: SocketAddr = format!("127.0.0.1:{target_port}").parse().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let member = Arc::new(AtomicU64::new(0));
        {
            let stop = stop.clone();
            let net = net.clone();
            let member = member.clone();
            std::thread::Builder::new()
                .name(format!("proxy-{port}"))
                .spawn(move || {
                    for s in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let Ok(s) = s else { continue };
                        let net = net.clone();
                        let member = member.clone();
                        let _ = std::thread::Builder::new()
                            .name("proxy-conn".into())
                            .spawn(move || handle(net, member, s, target));
                    }
                })
                .expect("spawn proxy thread");
        }
        Proxy {
            port,
            target,
            member,
            stop,
            net: net.clone(),
        }
    }

    /// Tells the proxy which member it fronts (needed to refuse cluster-info
    /// requests to an isolated member before any Raft connection named it).
    pub fn set_member(&self, id: u64) {
        self.member.store(id, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn handle(net: Net, member: Arc<AtomicU64>, mut client: TcpStream, target: SocketAddr) {
    let _ = client.set_nodelay(true);
    // Read the handshake to learn who is talking (time-boxed: a silent client
    // is not a peer).
    let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = [0u8; 9];
    if client.read_exact(&mut head).is_err() {
        return;
    }
    let mut hello = head.to_vec();
    let (from, to) = if &head[..8] == MAGIC && head[8] == b'R' {
        let mut ids = [0u8; 24];
        if client.read_exact(&mut ids).is_err() {
            return;
        }
        hello.extend_from_slice(&ids);
        let from = u64::from_be_bytes(ids[8..16].try_into().unwrap());
        let to = u64::from_be_bytes(ids[16..24].try_into().unwrap());
        (Some(from), to)
    } else {
        (None, member.load(Ordering::SeqCst))
    };
    let _ = client.set_read_timeout(None);
    if !net.allowed(from, to) {
        net.inner.refused.fetch_add(1, Ordering::Relaxed);
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let Ok(mut upstream) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
        return;
    };
    let _ = upstream.set_nodelay(true);
    if upstream.write_all(&hello).is_err() {
        return;
    }
    let id = net.inner.next_conn.fetch_add(1, Ordering::Relaxed);
    {
        let (Ok(c), Ok(u)) = (client.try_clone(), upstream.try_clone()) else {
            return;
        };
        let mut conns = net.inner.conns.lock().unwrap();
        // A rule may have changed while connecting.
        if !net.allowed(from, to) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
            return;
        }
        conns.push(Conn {
            id,
            from,
            to,
            client: c,
            upstream: u,
        });
    }
    // Upstream -> client: the handshake answer (and cluster-info replies).
    let back = {
        let (Ok(mut u), Ok(mut c)) = (upstream.try_clone(), client.try_clone()) else {
            return;
        };
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut u, &mut c);
            let _ = c.shutdown(Shutdown::Both);
            let _ = u.shutdown(Shutdown::Both);
        })
    };
    // Client -> upstream through a timed queue, so a delay adds latency only.
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = {
        let Ok(mut u) = upstream.try_clone() else {
            return;
        };
        std::thread::spawn(move || {
            while let Ok((due, buf)) = rx.recv() {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if u.write_all(&buf).is_err() {
                    break;
                }
            }
            let _ = u.shutdown(Shutdown::Both);
        })
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                net.record_arrival(from, to, n);
                let due = Instant::now() + net.delay_of(from, to);
                if tx.send((due, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
    let _ = client.shutdown(Shutdown::Both);
    let _ = upstream.shutdown(Shutdown::Both);
    let _ = back.join();
    net.forget(id);
}
