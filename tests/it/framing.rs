//! How a client frames its gRPC calls over HTTP/2, written frame by frame:
//! a unary call is answered once its request message is whole, without
//! waiting for the client to end its side of the stream (tonic's and hyper's
//! clients end it in a frame of their own; Go's send it with the message);
//! and how the answers are written: calls that arrive together on one
//! connection are answered in a few writes, not one each.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::Server;
use crate::limits::{PREFACE, frame};

/// An HPACK header field, a literal not indexed, its name given in full.
fn literal(name: &str, value: &str) -> Vec<u8> {
    assert!(name.len() < 127 && value.len() < 127);
    let mut f = vec![0x00, name.len() as u8];
    f.extend_from_slice(name.as_bytes());
    f.push(value.len() as u8);
    f.extend_from_slice(value.as_bytes());
    f
}

/// HEADERS (END_HEADERS) of a unary call to `path`, then its one message in
/// a DATA frame that ends the stream.
fn unary_call(stream: u32, path: &str, msg: &[u8]) -> Vec<u8> {
    let mut block = vec![0x83, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend(literal(":authority", "127.0.0.1"));
    block.extend(literal("content-type", "application/grpc"));
    block.extend(literal("te", "trailers"));
    let mut out = frame(0x1, 0x4, stream, &block);
    let mut data = vec![0u8];
    data.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    data.extend_from_slice(msg);
    out.extend(frame(0x0, 0x1, stream, &data));
    out
}

/// The data segments this socket has received so far (the kernel's
/// `tcpi_data_segs_in`).
fn data_segments_in(s: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain data, valid when zeroed; getsockopt writes at
    // most `len` bytes into it and the descriptor stays open while `s` is
    // borrowed.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info.tcpi_data_segs_in
}

/// A connection to `srv`'s client port whose reads time out after 10 s, and
/// the bytes that open HTTP/2 on it (the preface and an empty SETTINGS), to
/// send with what follows them.
fn open(srv: &Server) -> (TcpStream, Vec<u8>) {
    let s = TcpStream::connect(("127.0.0.1", srv.client_port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    (s, out)
}

/// A connection to `srv` past the SETTINGS exchange: ours sent, the
/// server's read and acknowledged, and its acknowledgement of ours read.
fn settled(srv: &Server) -> TcpStream {
    let (mut s, out) = open(srv);
    s.write_all(&out).expect("send the preface");
    let (mut theirs, mut acked) = (false, false);
    while !(theirs && acked) {
        let (kind, flags, _, _) = read_frame(&mut s).expect("settings");
        match (kind, flags & 0x1) {
            (0x4, 0) => {
                s.write_all(&frame(0x4, 0x1, 0, &[])).expect("settings ack");
                theirs = true;
            }
            (0x4, _) => acked = true,
            _ => {}
        }
    }
    s
}

/// Reads one frame: (type, flags, stream, payload).
fn read_frame(s: &mut TcpStream) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head)?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload)?;
    Ok((head[3], head[4], stream, payload))
}

#[test]
fn a_unary_call_is_answered_before_the_client_ends_its_stream() {
    let srv = Server::start(&[]);
    // Without the answer, a read ends in the stream's timeout and the test fails.
    let (mut s, mut out) = open(&srv);
    // HEADERS (END_HEADERS, not END_STREAM): POST http /etcdserverpb.KV/Put.
    let path = "/etcdserverpb.KV/Put";
    let mut block = vec![0x83, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend(literal(":authority", "127.0.0.1"));
    block.extend(literal("content-type", "application/grpc"));
    block.extend(literal("te", "trailers"));
    out.extend(frame(0x1, 0x4, 1, &block));
    // DATA without END_STREAM: PutRequest { key: "early", value: "v" }.
    let msg = [0x0a, 5, b'e', b'a', b'r', b'l', b'y', 0x12, 1, b'v'];
    let mut data = vec![0u8];
    data.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    data.extend_from_slice(&msg);
    out.extend(frame(0x0, 0, 1, &data));
    s.write_all(&out).expect("send the call");

    // The answer ends with trailers (HEADERS with END_STREAM) on stream 1.
    let mut got_message = false;
    loop {
        let (kind, flags, stream, payload) = read_frame(&mut s)
            .unwrap_or_else(|e| panic!("no answer while the request stream stays open: {e}"));
        match (kind, stream) {
            (0x4, 0) if flags & 0x1 == 0 => {
                s.write_all(&frame(0x4, 0x1, 0, &[])).expect("settings ack");
            }
            (0x0, 1) if !payload.is_empty() => got_message = true,
            (0x3, 1) => panic!("stream reset: {payload:?}"),
            (0x7, _) => panic!("connection closed by GOAWAY: {payload:?}"),
            (0x1, 1) if flags & 0x1 != 0 => break,
            _ => {}
        }
    }
    assert!(got_message, "trailers without a PutResponse");
    let get = srv.etcdctl(&["get", "early", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "v");
}

/// A connection the server ends on a protocol error is logged at debug
/// level with the error: a client whose calls were cancelled with it can be
/// matched to a cause in the member's log.
#[test]
fn a_connection_ended_by_a_protocol_error_is_logged_at_debug_level() {
    let srv = Server::start(&["--log-level=debug"]);
    let mut s = TcpStream::connect(("127.0.0.1", srv.client_port)).expect("connect");
    let ours = format!(
        "\"remote-addr\":\"{}\"",
        s.local_addr().expect("local address")
    );
    let ended = |log: &str| {
        log.lines().any(|l| {
            l.contains("client connection ended with an error")
                && l.contains(&ours)
                && l.contains("protocol error")
        })
    };
    assert!(!ended(&srv.log()), "logged before the bad frame");
    let mut out = PREFACE.to_vec();
    // A SETTINGS frame of 5 bytes (not a multiple of 6): a connection error.
    out.extend(frame(0x4, 0, 0, &[0u8; 5]));
    s.write_all(&out).expect("send");
    crate::harness::wait_until(
        Duration::from_secs(10),
        "the connection's end, with its cause, in the log",
        || ended(&srv.log()),
    );
}

/// Reads sent together on one connection are answered together: the
/// connection counts a call from when it accepts it, so it waits for the
/// calls it has accepted and still has to run, and writes their answers in
/// a few writes instead of one write (one TCP segment, one wake-up of the
/// client) each.
#[test]
fn calls_that_arrive_together_are_answered_in_a_few_writes() {
    const CALLS: u32 = 40;
    let srv = Server::start(&[]);
    let mut s = settled(&srv);
    let before = data_segments_in(&s);
    // CALLS serializable Ranges of key "k", in one write.
    let range = [0x0a, 1, b'k', 0x38, 1]; // key "k", serializable
    let mut calls = Vec::new();
    for i in 0..CALLS {
        calls.extend(unary_call(1 + 2 * i, "/etcdserverpb.KV/Range", &range));
    }
    s.write_all(&calls).expect("send the calls");
    let mut ended = 0;
    while ended < CALLS {
        let (kind, flags, stream, payload) = read_frame(&mut s).expect("answers");
        match kind {
            0x1 if flags & 0x1 != 0 && stream % 2 == 1 => ended += 1,
            0x3 => panic!("stream {stream} reset: {payload:?}"),
            0x7 => panic!("connection closed by GOAWAY: {payload:?}"),
            _ => {}
        }
    }
    let segments = data_segments_in(&s) - before;
    // One write per answer made CALLS segments; the answers of calls that
    // run on the member's two worker threads leave in a few.
    assert!(
        segments <= CALLS / 4,
        "{CALLS} answers came in {segments} TCP segments"
    );
}

/// A PING that comes with a call (Go's gRPC clients send one, to estimate
/// the connection's bandwidth, in front of most calls) is acknowledged in
/// the write that carries the call's answer: one TCP segment, one wake-up
/// of the client, not two. A PING alone is acknowledged at once.
#[test]
fn a_ping_sent_with_a_call_is_acknowledged_in_the_answers_write() {
    const ROUNDS: u32 = 20;
    let srv = Server::start(&[]);
    let mut s = settled(&srv);
    // Waits for the PING ACK carrying `ping` and, if `stream` is given,
    // that stream's trailers.
    let answered = |s: &mut TcpStream, ping: [u8; 8], stream: Option<u32>| {
        let (mut pong, mut ended) = (false, stream.is_none());
        while !(pong && ended) {
            let (kind, flags, id, payload) = read_frame(s).expect("answer");
            match kind {
                0x6 if flags & 0x1 != 0 => {
                    assert_eq!(payload, ping, "a PING ACK echoes its PING");
                    pong = true;
                }
                0x1 if flags & 0x1 != 0 && Some(id) == stream => ended = true,
                0x3 => panic!("stream {id} reset: {payload:?}"),
                0x7 => panic!("connection closed by GOAWAY: {payload:?}"),
                _ => {}
            }
        }
    };

    let alone = [7u8; 8];
    s.write_all(&frame(0x6, 0, 0, &alone)).expect("ping");
    answered(&mut s, alone, None);

    let before = data_segments_in(&s);
    let range = [0x0a, 1, b'k', 0x38, 1]; // key "k", serializable
    for round in 0..ROUNDS {
        let ping = u64::from(round).to_be_bytes();
        let stream = 1 + 2 * round;
        let mut out = frame(0x6, 0, 0, &ping);
        out.extend(unary_call(stream, "/etcdserverpb.KV/Range", &range));
        s.write_all(&out).expect("send the call");
        answered(&mut s, ping, Some(stream));
    }
    let segments = data_segments_in(&s) - before;
    // Acknowledged on its own, each PING made a segment of its own.
    assert!(
        segments <= ROUNDS + ROUNDS / 4,
        "{ROUNDS} calls, each with a PING, answered in {segments} TCP segments"
    );
}
