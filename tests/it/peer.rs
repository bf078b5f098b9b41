//! The peer port under hostile input: after a valid member handshake, a peer that
//! announces a 3 GiB chunk, one that sends more than a message may hold, one that
//! sends garbage, and one that sends deeply nested groups (the pattern of
//! RUSTSEC-2024-0437); and many idle connections. Each test runs a
//! three-member cluster under client load and ends with the member attacked still
//! healthy, the cluster converged, and every acknowledged write present
//! (`Cluster::final_checks`, which also checks the histories are linearizable).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, Load, connect};
use crate::harness::wait_until;

const KEYS: usize = 4;

/// The cluster ID, from a response header.
fn cluster_id(c: &Cluster) -> u64 {
    let ep = c.members[0].endpoint();
    c.rt.block_on(async {
        let mut cl = connect(&ep).await;
        let st = cl.status().await.expect("status");
        st.header().expect("header").cluster_id()
    })
}

/// A connection to member `to`'s peer port that passed the member handshake as
/// member `from`. The real `from` is cut off from `to` first (at the proxy), so
/// that its own connection does not replace this one.
fn handshake(c: &Cluster, to: usize, from: usize) -> TcpStream {
    c.net.block(c.members[from].id, c.members[to].id);
    let mut s = TcpStream::connect(("127.0.0.1", c.members[to].peer_port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut hello = b"ETCDRSP1R".to_vec();
    hello.extend_from_slice(&cluster_id(c).to_be_bytes());
    hello.extend_from_slice(&c.members[from].id.to_be_bytes());
    hello.extend_from_slice(&c.members[to].id.to_be_bytes());
    s.write_all(&hello).expect("hello");
    let mut ans = [9u8; 1];
    s.read_exact(&mut ans).expect("handshake answer");
    assert_eq!(ans[0], 0, "handshake refused");
    s
}

/// One chunk: `[len u32 BE][last u8][bytes]`.
fn chunk(body: &[u8], last: bool) -> Vec<u8> {
    let mut b = (body.len() as u32).to_be_bytes().to_vec();
    b.push(last as u8);
    b.extend_from_slice(body);
    b
}

/// `msg` in chunks of at most 1 MiB.
fn chunks(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let parts: Vec<&[u8]> = msg.chunks(1 << 20).collect();
    for (i, p) in parts.iter().enumerate() {
        out.extend(chunk(p, i + 1 == parts.len()));
    }
    out
}

/// Whether the server closes `s` within `timeout` (end of stream or reset),
/// sending nothing.
fn closed_by_server(s: &mut TcpStream, timeout: Duration) -> bool {
    s.set_read_timeout(Some(timeout)).expect("timeout");
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(n) => panic!("the peer port answered {n} bytes"),
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
        ),
    }
}

/// The log line of member `i` closing the connection from local port `port`.
fn wait_closed_logged(c: &Cluster, i: usize, port: u16) -> String {
    let remote = format!("127.0.0.1:{port}");
    let mut line = String::new();
    wait_until(
        Duration::from_secs(10),
        "the log line of the closed connection",
        || {
            let log = c.members[i].log();
            match log.lines().find(|l| {
                l.contains("closed peer connection that sent invalid data") && l.contains(&remote)
            }) {
                Some(l) => {
                    line = l.to_string();
                    true
                }
                None => false,
            }
        },
    );
    line
}

/// Starts three members under load; returns them with the load running.
fn cluster_under_load() -> (Cluster, Load) {
    let c = Cluster::start(3, &[]);
    c.wait_converged(&[0, 1, 2], Duration::from_secs(20));
    let load = Load::start(&c, &[0, 1, 2], KEYS);
    wait_progress(&load, 30);
    (c, load)
}

fn wait_progress(load: &Load, more: usize) {
    let target = load.progress() + more;
    wait_until(Duration::from_secs(30), "client progress", || {
        load.progress() >= target
    });
}

/// The load goes on, then stops; every check a fault test ends with.
fn finish(mut c: Cluster, load: Load) {
    c.net.heal();
    wait_progress(&load, 50);
    let report = load.stop(&c);
    assert!(
        c.members[0].is_running(),
        "member 0 died:\n{}",
        c.members[0].log()
    );
    c.members[0].ctl_ok(&["endpoint", "health"]);
    c.final_checks(&[0, 1, 2], &report, KEYS);
}

#[test]
fn peer_announcing_3_gib_is_closed_without_allocating() {
    let (c, load) = cluster_under_load();
    let pid = c.members[0].pid().expect("pid");
    let peak_before = crate::harness::vm(pid, "VmPeak");
    let mut s = handshake(&c, 0, 1);
    let port = s.local_addr().expect("addr").port();
    // A chunk header announcing 3 GiB, then a little of it.
    let mut head = (3u32 << 30).to_be_bytes().to_vec();
    head.push(1);
    s.write_all(&head).expect("header");
    let _ = s.write_all(&[0u8; 4096]);
    assert!(closed_by_server(&mut s, Duration::from_secs(10)));
    let line = wait_closed_logged(&c, 0, port);
    assert!(line.contains("3221225472"), "{line}");
    let peak_after = crate::harness::vm(pid, "VmPeak");
    assert!(
        peak_after < peak_before + (1 << 20),
        "address space grew from {peak_before} kB to {peak_after} kB"
    );

    // Chunks within the chunk limit that add up to more than a message may hold
    // (1 MiB + 4 x 1.5 MiB by default) are refused once past the limit.
    let mut s = handshake(&c, 0, 1);
    let port = s.local_addr().expect("addr").port();
    let part = chunk(&vec![0u8; 1 << 20], false);
    let mut sent = 0usize;
    for _ in 0..64 {
        if s.write_all(&part).is_err() {
            break;
        }
        sent += 1;
    }
    assert!(sent < 64, "64 MiB of one message were accepted");
    let line = wait_closed_logged(&c, 0, port);
    assert!(
        line.contains("message exceeds the limit of 7340032 bytes"),
        "{line}"
    );
    finish(c, load);
}

#[test]
fn peer_sending_garbage_after_the_handshake_is_closed() {
    let (c, load) = cluster_under_load();
    // Not a protobuf message at all.
    let mut s = handshake(&c, 0, 2);
    let port = s.local_addr().expect("addr").port();
    s.write_all(&chunk(&[0xFF; 64], true)).expect("garbage");
    assert!(closed_by_server(&mut s, Duration::from_secs(10)));
    let line = wait_closed_logged(&c, 0, port);
    assert!(line.contains("undecodable raft message"), "{line}");

    // A chunk flag that is neither 0 nor 1.
    let mut s = handshake(&c, 0, 2);
    let port = s.local_addr().expect("addr").port();
    let mut bad = chunk(&[0x08, 0x08], true);
    bad[4] = 7;
    s.write_all(&bad).expect("garbage");
    assert!(closed_by_server(&mut s, Duration::from_secs(10)));
    let line = wait_closed_logged(&c, 0, port);
    assert!(line.contains("invalid chunk flag 7"), "{line}");

    // A well-formed message that claims to come from another member.
    let mut s = handshake(&c, 0, 2);
    let port = s.local_addr().expect("addr").port();
    let mut msg = vec![0x08, 0x08, 0x10]; // MsgHeartbeat, to:
    msg.extend(varint(c.members[0].id));
    msg.push(0x18); // from:
    msg.extend(varint(c.members[1].id));
    s.write_all(&chunk(&msg, true)).expect("misrouted");
    assert!(closed_by_server(&mut s, Duration::from_secs(10)));
    let line = wait_closed_logged(&c, 0, port);
    assert!(line.contains("on the connection of member"), "{line}");
    finish(c, load);
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

/// RUSTSEC-2024-0437: a million nested groups in an unknown field, which made
/// protobuf's parser recurse once per level. The member's own decoder (not
/// protobuf 2's) must refuse them, say so, and stay up.
#[test]
fn nested_groups_from_a_peer_do_not_reach_protobuf_2() {
    let (mut c, load) = cluster_under_load();
    let mut s = handshake(&c, 0, 1);
    let port = s.local_addr().expect("addr").port();
    let depth = 1_000_000;
    let mut msg = vec![0x08, 0x03]; // MsgAppend
    for _ in 0..depth {
        msg.extend_from_slice(&[0xA3, 0x01]); // field 20: start group
    }
    for _ in 0..depth {
        msg.extend_from_slice(&[0xA4, 0x01]); // field 20: end group
    }
    s.write_all(&chunks(&msg)).expect("nested groups");
    assert!(closed_by_server(&mut s, Duration::from_secs(10)));
    // A crash closes the connection too: the member must still be running.
    assert!(
        c.members[0].is_running(),
        "member 0 died:\n{}",
        c.members[0].log()
    );
    let line = wait_closed_logged(&c, 0, port);
    assert!(line.contains("undecodable raft message"), "{line}");
    finish(c, load);
}

#[test]
fn many_idle_peer_connections() {
    let (mut c, load) = cluster_under_load();
    // Member 2 goes down, so that it has to connect again while the idle
    // connections hold member 0's handshake slots.
    c.members[2].kill9();
    let opened = Instant::now();
    let mut idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(("127.0.0.1", c.members[0].peer_port)).expect("connect"))
        .collect();
    // Writes keep being acknowledged by members 0 and 1.
    wait_progress(&load, 50);
    // Beyond the 64 handshake slots, connections are closed at once.
    let refused = idle
        .iter_mut()
        .skip(100)
        .map(|s| closed_by_server(s, Duration::from_millis(200)))
        .filter(|&closed| closed)
        .count();
    assert_eq!(refused, 100, "connections beyond the limit stayed open");
    wait_until(Duration::from_secs(10), "the refusal logged", || {
        c.members[0]
            .log()
            .contains("too many peer connections in their handshake")
    });
    c.members[2].spawn();
    // The idle ones are closed after the handshake timeout (5 s).
    for s in idle.iter_mut().take(64) {
        assert!(closed_by_server(s, Duration::from_secs(15)));
    }
    assert!(
        opened.elapsed() >= Duration::from_secs(4),
        "closed before the timeout"
    );
    c.members[2].wait_ready(Duration::from_secs(30));
    finish(c, load);
}

/// After the handshake a member keeps one connection per known peer: a second
/// one of the same member replaces the first, and a member it does not know is
/// turned away (answer 3), as etcd turns away an unknown sender.
#[test]
fn one_peer_connection_per_known_member() {
    let (c, load) = cluster_under_load();
    let mut first = handshake(&c, 0, 1);
    let _second = handshake(&c, 0, 1);
    assert!(
        closed_by_server(&mut first, Duration::from_secs(10)),
        "the older connection of a member stayed open"
    );

    let mut s = TcpStream::connect(("127.0.0.1", c.members[0].peer_port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let stranger = c.ids().iter().fold(0x5eed_u64, |a, id| a ^ id) | 1;
    let mut hello = b"ETCDRSP1R".to_vec();
    hello.extend_from_slice(&cluster_id(&c).to_be_bytes());
    hello.extend_from_slice(&stranger.to_be_bytes());
    hello.extend_from_slice(&c.members[0].id.to_be_bytes());
    s.write_all(&hello).expect("hello");
    let mut ans = [9u8; 1];
    s.read_exact(&mut ans).expect("answer");
    assert_eq!(ans[0], 3, "an unknown member was let in");
    assert!(closed_by_server(&mut s, Duration::from_secs(10)));
    assert!(
        c.members[0]
            .log()
            .contains("rejected connection from an unknown member"),
        "{}",
        c.members[0].log()
    );
    finish(c, load);
}

/// A snapshot's body travels after the message that announces its length,
/// in chunks flagged 2 (more) and 3 (last), written to a file as they come.
/// A body nobody announced, one longer than announced, a second snapshot
/// during a body, and data that names a file of the member's own (which
/// only the member itself may write) each close the connection with a log
/// line, and leave no file behind.
#[test]
fn snapshot_bodies_outside_the_protocol_are_refused() {
    let (c, load) = cluster_under_load();
    let (to, from) = (c.members[0].id, c.members[1].id);
    let snapshot = |data: &[u8]| -> Vec<u8> {
        let mut snap = vec![0x0A]; // Snapshot.data
        snap.extend(varint(data.len() as u64));
        snap.extend_from_slice(data);
        let mut m = vec![0x08, 0x07, 0x10]; // MsgSnapshot, to:
        m.extend(varint(to));
        m.push(0x18); // from:
        m.extend(varint(from));
        m.push(0x4A); // snapshot:
        m.extend(varint(snap.len() as u64));
        m.extend(snap);
        m
    };
    let announce = |len: u64| {
        let mut d = b"etcd-rs streamed snapshot\n".to_vec();
        d.extend_from_slice(&len.to_be_bytes());
        snapshot(&d)
    };
    let body = |bytes: &[u8], last: bool| {
        let mut b = chunk(bytes, false);
        b[4] = if last { 3 } else { 2 };
        b
    };
    let snap_dir = c.members[0].data_dir().join("member").join("snap");
    let leftovers = || {
        std::fs::read_dir(&snap_dir)
            .expect("snap dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("raft-"))
            .collect::<Vec<_>>()
    };
    let cases: [(Vec<u8>, &str); 4] = [
        (
            body(&[0u8; 100], true),
            "snapshot: a body chunk with no snapshot announced",
        ),
        (
            [chunk(&announce(100), true), body(&[0u8; 200], true)].concat(),
            "snapshot: a body longer than announced",
        ),
        (
            [
                chunk(&announce(100), true),
                body(&[0u8; 50], false),
                chunk(&announce(100), true),
            ]
            .concat(),
            "snapshot: a snapshot while another one's body arrives",
        ),
        (
            chunk(
                &snapshot(b"etcd-rs local snapshot file\n0123456789abcdef/etc/passwd"),
                true,
            ),
            "snapshot: data that names a local file",
        ),
    ];
    for (bytes, refusal) in cases {
        let mut s = handshake(&c, 0, 1);
        let port = s.local_addr().expect("addr").port();
        s.write_all(&bytes).expect("send");
        assert!(
            closed_by_server(&mut s, Duration::from_secs(10)),
            "{refusal}"
        );
        let line = wait_closed_logged(&c, 0, port);
        assert!(line.contains(refusal), "{line}");
        assert_eq!(leftovers(), Vec::<String>::new(), "after: {refusal}");
    }
    finish(c, load);
}
