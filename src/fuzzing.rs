//! Entry points for the fuzz targets in `fuzz/`: one function per parser of
//! untrusted bytes, taking the bytes a fuzzer makes. Each runs the parser as
//! the member runs it and asserts what must hold whatever the input (a panic
//! is a finding). Not an API: nothing else calls these.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use prost::Message as _;
use protobuf::Message as _;

use crate::api::authz::{self, Authz, Need};
use crate::auth::jwt::{Alg, Jwt};
use crate::auth::{AuthOp, AuthStore, Caller};
use crate::lease::Lessor;
use crate::pb::authpb::{Permission, permission};

/// Runs a future that reads only from memory to its end.
fn run<F: Future>(f: F) -> F::Output {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
    .block_on(f)
}

/// Chunk sizes taken from the input's first byte, so a target sees its bytes
/// arrive in pieces as a socket delivers them.
fn chunked(data: &[u8]) -> (usize, &[u8]) {
    match data.split_first() {
        Some((&n, rest)) => (usize::from(n) + 1, rest),
        None => (1, data),
    }
}

/// A reader that hands out at most `chunk` bytes per read.
struct Trickle<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl tokio::io::AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        let (now, later) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = later;
        Poll::Ready(Ok(()))
    }
}

/// The bytes the HTTP/2 server reads through the `:authority` rewriter.
fn through_authority(data: &[u8], chunk: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut fixed = crate::api::authority::FixAuthority::new(Trickle { data, chunk });
    let mut out = Vec::new();
    run(fixed.read_to_end(&mut out)).expect("reading from memory");
    out
}

/// The `:authority` rewriter: a connection's bytes, the first byte giving the
/// size of the pieces they arrive in. What comes out does not depend on how
/// the bytes were cut, a connection that is not HTTP/2 passes unchanged, and
/// rewriting never makes a connection's bytes much longer (a Huffman-coded
/// value is written out plain: at most 8/5 of its length).
pub fn authority(data: &[u8]) {
    let (chunk, data) = chunked(data);
    let whole = through_authority(data, usize::MAX);
    let pieces = through_authority(data, chunk);
    assert_eq!(whole, pieces, "output depends on how the input was cut");
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let n = data.len().min(preface.len());
    if data[..n] != preface[..n] || data.len() < preface.len() {
        assert_eq!(whole, data, "a connection that is not HTTP/2 was changed");
    }
    assert!(whole.len() <= 2 * data.len() + 64, "output grew too much");
}

/// `etcd.conf` (environment-style) as the member reads it when it is the only
/// source of settings.
pub fn conf_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(crate::config::Command::Run(cfg)) = crate::config::from_conf_text(text) {
        // What a started member derives from the settings.
        let _ = cfg.election_ticks();
        let _ = cfg.effective_quota_backend_bytes();
        let _ = cfg.compaction();
        let _ = cfg.auto_compaction();
        let _ = cfg.initial_cluster_string();
    }
}

/// The YAML `--config-file`.
pub fn yaml_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = crate::config::from_yaml_text(text) {
        let _ = cfg.election_ticks();
        let _ = cfg.effective_quota_backend_bytes();
        let _ = cfg.compaction();
        let _ = cfg.auto_compaction();
        let _ = cfg.initial_cluster_string();
    }
}

fn providers() -> &'static [Jwt; 2] {
    static P: OnceLock<[Jwt; 2]> = OnceLock::new();
    P.get_or_init(|| {
        let ttl = Duration::from_secs(300);
        let hs = Jwt::from_keys(
            Alg::HS256,
            ttl,
            Some((Path::new("secret"), b"a shared secret".as_slice())),
            None,
        )
        .expect("an HS256 provider");
        let key = rcgen::KeyPair::generate().expect("a P-256 key");
        let pem = key.serialize_pem();
        let es = Jwt::from_keys(
            Alg::ES256,
            ttl,
            Some((Path::new("key.pem"), pem.as_bytes())),
            None,
        )
        .expect("an ES256 provider");
        [hs, es]
    })
}

/// A JWT as `Jwt::verify` reads it. The first byte picks the provider (HS256
/// or ES256) and whether the rest is a whole token or `header.claims` that
/// this target signs first, so the checks after the signature are reached.
/// Whatever the token, a provider's own token for any user verifies.
pub fn jwt_token(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let jwt = &providers()[usize::from(mode & 1)];
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if mode & 2 == 0 {
        let _ = jwt.verify(text);
    } else if let Some(token) = jwt.seal_any(text) {
        let _ = jwt.verify(&token);
    }
    if mode & 4 != 0 {
        let revision = u64::from(mode) << 40 | text.len() as u64;
        let token = jwt
            .sign(text, revision)
            .expect("a provider with a key signs");
        let claims = jwt.verify(&token).expect("a provider's own token verifies");
        assert_eq!(claims.username, text);
        assert_eq!(claims.revision, revision);
    }
}

/// JWT key files: `[algorithm][which files][private length u16 BE][private
/// file][public file]`. A provider that loads must verify its own tokens.
pub fn jwt_keys(data: &[u8]) {
    let [alg, which, hi, lo, rest @ ..] = data else {
        return;
    };
    let alg = Alg::ALL[usize::from(*alg) % Alg::ALL.len()];
    let n = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
    let (private, public) = rest.split_at(n);
    let private = (which & 1 != 0).then_some((Path::new("priv.pem"), private));
    let public = (which & 2 != 0).then_some((Path::new("pub.pem"), public));
    let Ok(jwt) = Jwt::from_keys(alg, Duration::from_secs(60), private, public) else {
        return;
    };
    if jwt.can_sign() {
        let token = jwt.sign("fuzz", 3).expect("a provider with a key signs");
        let claims = jwt.verify(&token).expect("a provider's own token verifies");
        assert_eq!(claims.username, "fuzz");
        assert_eq!(claims.revision, 3);
    }
    assert!(jwt.verify("e30.e30.").is_none());
}

/// A DER certificate (or CRL) as the TLS layer reads one: its common name, its
/// use as a leaf, its public key, serial and revocation, and the allowed
/// common name and host name checks.
pub fn certificate(data: &[u8]) {
    use crate::tls::x509;
    let _ = x509::subject_common_name(data);
    for purpose in [x509::Purpose::Client, x509::Purpose::Server] {
        let _ = x509::anchor_usable_as_leaf(data, 1_700_000_000, purpose);
    }
    let _ = x509::public_key_info(data);
    let serial = x509::serial(data).unwrap_or_default();
    let _ = x509::revoked(&serial, &[data]);
    let cert = rustls::pki_types::CertificateDer::from(data);
    let _ = crate::tls::admits(&["etcd"], &["localhost", "127.0.0.1"], Some(&cert));
}

/// A snapshot file as `etcdutl snapshot status` and `restore` read it. With
/// the first byte odd the rest is taken as it is; otherwise it is a snapshot
/// body after the magic line, and the target appends the checksum, so the
/// records are reached.
pub fn snapshot(data: &[u8]) {
    use crate::storage::snapshot;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode & 1 == 1 {
        rest.to_vec()
    } else {
        use sha2::Digest;
        let mut f = snapshot::MAGIC.to_vec();
        f.extend_from_slice(rest);
        let sum = sha2::Sha256::digest(&f);
        f.extend_from_slice(&sum);
        f
    };
    let path = Path::new("snapshot.db");
    let checked = snapshot::check(path, &file).is_ok();
    let summary = snapshot::summarise(path, &file);
    assert!(
        summary.is_err() || checked,
        "status summarised a snapshot it should refuse"
    );
    static DB: OnceLock<redb::Database> = OnceLock::new();
    let db = DB.get_or_init(|| {
        redb::Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("an in-memory database")
    });
    let Ok(txn) = db.begin_write() else {
        return;
    };
    let loaded = snapshot::load(&txn, &file).is_ok();
    // What `restore` loads, `status` can summarise.
    if loaded && checked {
        assert!(summary.is_ok(), "status refuses a snapshot restore takes");
    }
    if !loaded || txn.commit().is_err() {
        return;
    }
    // A member started on the restored data reads it back (`load` replaced
    // every table the snapshot fills, so nothing of an earlier run is left).
    if let Ok(txn) = redb::ReadableDatabase::begin_read(db) {
        restored_member(&txn);
    }
}

/// A bbolt file as `etcdutl snapshot status` and `restore` read an etcd
/// snapshot: opened, checked as `bbolt check` does, summarised, imported
/// into our tables. Whatever the bytes, no panic; what the check accepts,
/// the summary reads.
pub fn bbolt(data: &[u8]) {
    use crate::bbolt::Reader;
    use crate::storage::{etcd_schema, etcd_snapshot};
    static FILE: OnceLock<std::path::PathBuf> = OnceLock::new();
    let path = FILE.get_or_init(|| {
        std::env::temp_dir().join(format!("etcd-rs-fuzz-bbolt-{}.db", std::process::id()))
    });
    if std::fs::write(path, data).is_err() {
        return;
    }
    let Ok(reader) = Reader::open(path) else {
        return;
    };
    let checked = reader.check().is_ok();
    let status = etcd_snapshot::status_of(&reader);
    if checked {
        assert!(status.is_ok(), "status fails on a file the check accepts");
    }
    if !checked {
        return;
    }
    static DB: OnceLock<redb::Database> = OnceLock::new();
    let db = DB.get_or_init(|| {
        let db = redb::Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("an in-memory database");
        let txn = db.begin_write().expect("a write transaction");
        {
            let _ = txn.open_table(crate::storage::KV);
            let _ = txn.open_table(crate::storage::META);
            let _ = txn.open_table(crate::storage::LEASES);
            let _ = txn.open_table(crate::storage::MEMBERS);
            let _ = txn.open_table(crate::storage::ALARMS);
            let _ = txn.open_table(crate::storage::AUTH_USERS);
            let _ = txn.open_table(crate::storage::AUTH_ROLES);
        }
        txn.commit().expect("commit");
        db
    });
    let Ok(txn) = db.begin_write() else {
        return;
    };
    if etcd_schema::import_txn(&reader, &txn).is_ok()
        && txn.commit().is_ok()
        && let Ok(txn) = redb::ReadableDatabase::begin_read(db)
    {
        restored_member(&txn);
    }
}

/// What a member starting on restored data reads: the key index (compacted
/// at the stored compaction revision, then read at every revision), leases,
/// members, auth.
fn restored_member(txn: &redb::ReadTransaction) {
    use crate::storage::{LEASES, MEMBERS};
    use redb::ReadableTable;
    let Ok((mut st, _leased)) = crate::mvcc::Store::scan_txn(txn) else {
        return;
    };
    let _ = crate::mvcc::Store::resume(&mut st);
    for at in [st.compact_rev, st.rev, i64::MAX] {
        st.index.range(b"\0", b"\0", at, |k, v| {
            let _ = st.index.before(k, v.modified);
            true
        });
    }
    let _ = crate::server::apply::load_auth(txn);
    if let Ok(t) = txn.open_table(MEMBERS)
        && let Ok(items) = t.iter()
    {
        for (_, v) in items.flatten() {
            let _ = crate::pb::etcdserverpb::Member::decode(v.value());
        }
    }
    if let Ok(t) = txn.open_table(LEASES)
        && let Ok(items) = t.iter()
    {
        let lessor = Lessor::new(1);
        for (k, v) in items.flatten() {
            if let Ok(ttl) = <[u8; 8]>::try_from(v.value()) {
                lessor.restore(k.value(), i64::from_be_bytes(ttl));
            }
        }
    }
}

struct AuthzWorld {
    auth: AuthStore,
    lessor: Lessor,
    rows: Vec<authz::Check>,
}

fn authz_world() -> &'static AuthzWorld {
    static W: OnceLock<AuthzWorld> = OnceLock::new();
    W.get_or_init(|| {
        let auth = AuthStore::new(Duration::from_secs(300), 4);
        let perm = |t: permission::Type, key: &[u8], end: &[u8]| Permission {
            perm_type: t as i32,
            key: key.to_vec(),
            range_end: end.to_vec(),
        };
        let ops = [
            AuthOp::UserAdd {
                name: "root".into(),
                hash: String::new(),
                no_password: true,
            },
            AuthOp::RoleAdd {
                name: "root".into(),
            },
            AuthOp::UserGrantRole {
                user: "root".into(),
                role: "root".into(),
            },
            AuthOp::UserAdd {
                name: "alice".into(),
                hash: String::new(),
                no_password: true,
            },
            AuthOp::RoleAdd {
                name: "reader".into(),
            },
            AuthOp::RoleGrantPermission {
                name: "reader".into(),
                perm: perm(permission::Type::Read, b"a", b"m"),
            },
            AuthOp::RoleAdd {
                name: "writer".into(),
            },
            AuthOp::RoleGrantPermission {
                name: "writer".into(),
                perm: perm(permission::Type::Readwrite, b"k", b""),
            },
            AuthOp::RoleGrantPermission {
                name: "writer".into(),
                perm: perm(permission::Type::Write, b"\0", b"\0"),
            },
            AuthOp::UserGrantRole {
                user: "alice".into(),
                role: "reader".into(),
            },
            AuthOp::UserGrantRole {
                user: "alice".into(),
                role: "writer".into(),
            },
            AuthOp::Enable,
        ];
        for op in &ops {
            auth.apply(op).expect("setting up auth");
        }
        let lessor = Lessor::new(1);
        lessor.grant(1, 60);
        lessor.grant(2, 60);
        lessor.attach(b"a1", 1);
        lessor.attach(b"k", 1);
        lessor.attach(b"z", 2);
        let rows = authz::TABLE
            .iter()
            .filter_map(|(_, need, _)| match need {
                Need::Request(chk) => Some(*chk),
                _ => None,
            })
            .collect();
        AuthzWorld { auth, lessor, rows }
    })
}

/// The authorization layer's request decoding: `[method][caller][chunk size]`
/// then a gRPC request body (5-byte prefix and message) as it arrives in HTTP/2
/// DATA frames. The layer reads the first message and hands on a body that
/// replays exactly what it read, then decodes the message and checks it.
pub fn authz(data: &[u8]) {
    let [method, who, chunk, body @ ..] = data else {
        return;
    };
    let w = authz_world();
    let chk = w.rows[usize::from(*method) % w.rows.len()];
    let caller = match who % 5 {
        0 => Caller::User("root".into()),
        1 => Caller::User("alice".into()),
        2 => Caller::User(String::new()),
        3 => Caller::User("mallory".into()),
        _ => Caller::Anyone,
    };
    let chunk = usize::from(*chunk) + 1;
    let pieces: Vec<Result<axum::body::Bytes, std::io::Error>> = body
        .chunks(chunk)
        .map(|c| Ok(axum::body::Bytes::copy_from_slice(c)))
        .collect();
    let stream = futures::stream::iter(pieces);
    let limit = 1_572_864 + 512 * 1024;
    let (first, replay) = run(crate::api::message::first_message(
        axum::body::Body::from_stream(stream),
        limit,
    ))
    .expect("reading from memory");
    let replayed = run(axum::body::to_bytes(replay, usize::MAX)).expect("replaying");
    assert_eq!(&replayed[..], body, "the body handed on differs");
    if let Some(m) = &first {
        assert!(m.len() <= limit);
        assert_eq!(&body[5..5 + m.len()], &m[..]);
    }
    let ctx = Authz {
        auth: &w.auth,
        lessor: &w.lessor,
        max_txn_ops: 128,
    };
    if let Some(m) = first {
        let _ = chk(&ctx, &caller, &m);
    }
}

/// A stream's request messages (a lease keep-alive stream): `[chunk size]
/// [limit]` then the body as it arrives in HTTP/2 DATA frames. The reader
/// hands out each message whole and in order, never one over its limit, and
/// ends cleanly only when it has taken the whole body.
pub fn grpc_messages(data: &[u8]) {
    let [chunk, limit, body @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk) + 1;
    let limit = usize::from(*limit) * 16;
    let pieces: Vec<Result<axum::body::Bytes, std::io::Error>> = body
        .chunks(chunk)
        .map(|c| Ok(axum::body::Bytes::copy_from_slice(c)))
        .collect();
    let mut r = crate::api::message::Reader::new(
        axum::body::Body::from_stream(futures::stream::iter(pieces)),
        limit,
    );
    let mut at = 0;
    loop {
        match run(r.next()) {
            Ok(Some(m)) => {
                assert!(m.len() <= limit, "a message over the limit");
                assert_eq!(body[at], 0, "a compressed message handed out");
                assert_eq!(&body[at + 5..at + 5 + m.len()], &m[..]);
                at += 5 + m.len();
            }
            Ok(None) => {
                assert_eq!(at, body.len(), "ended before the body did");
                return;
            }
            Err(_) => return,
        }
    }
}

/// A Raft log record: the first byte picks what the rest is, as the log table
/// and the meta table hold it: an entry (whose data is a request, a
/// membership change and its member context), the hard state or the conf
/// state. A request that decodes encodes to bytes that decode to it again.
pub fn raft_entry(data: &[u8]) {
    use crate::pb::etcdserverpb::Member;
    use crate::server::InternalRequest;
    use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, HardState};
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 4 {
        0 => {
            let Ok(e) = Entry::parse_from_bytes(rest) else {
                return;
            };
            match e.get_entry_type() {
                EntryType::EntryNormal => request(&e.data),
                EntryType::EntryConfChange => {
                    if let Ok(cc) = ConfChange::parse_from_bytes(&e.data) {
                        let _ = Member::decode(&cc.context[..]);
                    }
                }
                EntryType::EntryConfChangeV2 => {
                    let _ = ConfChangeV2::parse_from_bytes(&e.data);
                }
            }
        }
        1 => request(rest),
        2 => {
            let _ = HardState::parse_from_bytes(rest);
        }
        _ => {
            let _ = ConfState::parse_from_bytes(rest);
        }
    }

    fn request(data: &[u8]) {
        if let Ok(r) = InternalRequest::decode(data) {
            let again = InternalRequest::decode(r.encode_to_vec().as_slice())
                .expect("an encoded request decodes");
            assert_eq!(again, r);
        }
    }
}

/// One segment of the Raft log's files, read as the newest segment (a torn
/// tail is cut) and as an older one (it is an error). The written part ends
/// inside the file; a segment that reads as an older one reads the same as
/// the newest; folded into a log, the entries follow each other from the
/// base.
pub fn raft_wal(data: &[u8]) {
    use crate::raft::wal;
    let path = std::path::Path::new("fuzz.log");
    let newest = wal::parse_segment(path, data, true);
    let older = wal::parse_segment(path, data, false);
    if let Ok(p) = &newest {
        assert!(p.end as usize <= data.len(), "the end is inside the file");
    }
    if let Ok(o) = older {
        let n = newest
            .as_ref()
            .expect("an older segment's bytes read as the newest");
        assert_eq!(o.records.len(), n.records.len());
        assert_eq!(o.end, n.end);
        assert!(!o.torn);
    }
    if let Ok(p) = newest {
        let mut log = wal::Loaded::default();
        if wal::fold(path, &mut log, p.records, true).is_ok() {
            for (i, e) in log.entries.iter().enumerate() {
                assert_eq!(
                    e.index,
                    log.base.0 + 1 + i as u64,
                    "entries follow each other"
                );
            }
        }
    }
}

/// The peer port: the bytes of one Raft message as a peer sends them, decoded
/// as the transport decodes them (never by protobuf 2). A message that decodes
/// encodes again, and decodes back to the same message.
pub fn peer_stream(data: &[u8]) {
    use crate::raft::wire;
    let _ = wire::leading_msg_type(data);
    let _ = crate::raft::transport::whole_message_at(data);
    if let Ok(m) = wire::decode(prost::bytes::Bytes::copy_from_slice(data)) {
        let again = wire::encode(&m).expect("a decoded message encodes");
        let back = wire::decode(prost::bytes::Bytes::from(again)).expect("and decodes again");
        assert_eq!(back, m);
    }
}

/// etcd's WAL as the import reads it: the bytes of one file, read once as
/// the log's last file (a torn tail is cut) and once as an earlier one (it is
/// an error). Records come in file order inside the file; the cut or end is
/// inside the file; a file that reads as an earlier one reads the same as
/// the last one. Every entry record's entry is converted as the import
/// converts it, and the bytes are also read as a `.snap` file.
pub fn etcd_wal(data: &[u8]) {
    use crate::etcd_import::{entry::Converter, pb, snap, wal};
    let read = |last: bool| {
        let mut crc = 0u32;
        let mut records = Vec::new();
        let end = wal::decode_file(data, last, &mut crc, |off, rec| {
            records.push((off, rec));
            Ok(())
        });
        (end, records, crc)
    };
    let (end, records, crc) = read(true);
    let mut prev = None;
    for (off, _) in &records {
        assert!(
            (*off as usize) < data.len(),
            "record offset beyond the file"
        );
        assert!(prev.is_none_or(|p| p < *off), "records out of order");
        prev = Some(*off);
    }
    if let Ok(end) = end {
        assert!(end.offset() as usize <= data.len(), "end beyond the file");
        assert!(prev.is_none_or(|p| p < end.offset()), "end before a record");
    }
    let (earlier, again, crc2) = read(false);
    if let Ok(e) = earlier {
        assert_eq!(Ok(e), end, "an earlier file ends where the last one does");
        assert_eq!(again.len(), records.len());
        assert_eq!(crc, crc2);
    }
    let mut conv = Converter::new(4);
    for (_, rec) in records {
        if rec.r#type == wal::ENTRY
            && let Ok(e) = pb::Entry::decode(&rec.data[..])
            && let Ok(ours) = conv.convert(&e)
        {
            assert_eq!((ours.index, ours.term), (e.index, e.term));
        }
    }
    let _ = snap::decode(data);
}

/// The JSON gateway's request decoding: the first byte picks the method, the
/// second the size of the pieces a streamed body arrives in, the rest is the
/// body. A body that decodes gives a message whose JSON (as the gateway
/// writes it) decodes to a message with the same JSON; a streamed body gives
/// the same messages however it was cut.
pub fn gateway_json(data: &[u8]) {
    use crate::api::gateway;
    let [route, chunk, body @ ..] = data else {
        return;
    };
    let r = &gateway::ROUTES[usize::from(*route) % gateway::ROUTES.len()];
    let path = format!("/v3/{}", r.path);
    if let Some(Ok(msg)) = gateway::translate(&path, body) {
        let json = gateway::message_json(r.request, &msg).expect("a decoded message writes");
        let again = gateway::translate(&path, json.as_bytes())
            .expect("a route")
            .unwrap_or_else(|e| panic!("the gateway's own JSON {json} does not decode: {e:?}"));
        let json2 = gateway::message_json(r.request, &again).expect("a decoded message writes");
        assert_eq!(json, json2, "the JSON of a message changes when read back");
    }
    let stream = |chunk: usize| {
        let pieces: Vec<Result<axum::body::Bytes, std::io::Error>> = body
            .chunks(chunk)
            .map(|c| Ok(axum::body::Bytes::copy_from_slice(c)))
            .collect();
        run(gateway::decode_stream(
            r.request,
            axum::body::Body::from_stream(futures::stream::iter(pieces)),
            1 << 20,
        ))
    };
    let whole = stream(body.len().max(1));
    let pieces = stream(usize::from(*chunk) + 1);
    // An error's text may name where it was found; what decoded must agree.
    let ok = |v: &[Result<Vec<u8>, String>]| {
        v.iter()
            .map(|r| r.as_ref().ok().cloned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ok(&whole),
        ok(&pieces),
        "the messages depend on how the body was cut"
    );
}

#[cfg(test)]
mod tests {
    /// Every input a fuzz target once crashed on (`fuzz/regressions/TARGET/`)
    /// runs through its target again, with all the target's checks.
    #[test]
    fn past_crashes_stay_fixed() {
        type Target = (&'static str, fn(&[u8]));
        let targets: [Target; 12] = [
            ("authority", super::authority),
            ("conf_file", super::conf_file),
            ("yaml_config", super::yaml_config),
            ("jwt_token", super::jwt_token),
            ("jwt_keys", super::jwt_keys),
            ("certificate", super::certificate),
            ("snapshot", super::snapshot),
            ("authz", super::authz),
            ("raft_entry", super::raft_entry),
            ("raft_wal", super::raft_wal),
            ("peer_stream", super::peer_stream),
            ("gateway_json", super::gateway_json),
        ];
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
        let mut ran = 0;
        for (name, target) in targets {
            let Ok(dir) = std::fs::read_dir(root.join(name)) else {
                continue;
            };
            for entry in dir {
                let path = entry.expect("a directory entry").path();
                if path.extension().is_some() {
                    // Inputs of the parser itself (a key file), for its own tests.
                    continue;
                }
                let data = std::fs::read(&path).expect("a regression input");
                target(&data);
                ran += 1;
            }
        }
        assert!(ran > 0, "no regression input under {}", root.display());
    }
}
