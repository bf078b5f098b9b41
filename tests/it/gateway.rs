//! The HTTP/JSON gateway and the v2 members API, side by side with Debian's
//! etcd 3.4: the same requests in the same order to both, answers compared
//! byte for byte once the values that differ between any two clusters (IDs,
//! terms, ports, tokens, hashes) are masked; the streaming methods; TLS with
//! client certificates and auth; `ETCDCTL_API=2 etcdctl cluster-health` and
//! `member list` on a three-member TLS cluster; OpenStack's etcd3gw client
//! (installed from PyPI into a virtual environment under the target directory).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::harness::{Server, etcdctl_bin, free_port, ours_bin, spawn_server, wait_until};

// ---------------------------------------------------------------------------
// A plain HTTP/1.1 client

/// One answer: status code and body.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    status: u16,
    body: String,
}

/// Decodes a chunked body.
fn unchunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&raw[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        raw = &raw[eol + 2..];
        if size == 0 || raw.len() < size {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[(size + 2).min(raw.len())..];
    }
}

/// Sends one request on a new connection and reads the whole answer.
fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let sent = std::time::Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("write head");
    // A server may answer (and close) before a body over its limit is sent.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no HTTP answer to {path} from port {port} after {:?} ({read:?}): {:?}",
                sent.elapsed(),
                String::from_utf8_lossy(&raw)
            )
        });
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let rest = &raw[split + 4..];
    let body = if head.contains("transfer-encoding: chunked") {
        unchunk(rest)
    } else {
        rest.to_vec()
    };
    Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn post(port: u16, path: &str, body: &str, token: Option<&str>) -> Answer {
    let auth: Vec<(&str, &str)> = token.map(|t| ("Authorization", t)).into_iter().collect();
    request(port, "POST", path, &auth, body.as_bytes())
}

// ---------------------------------------------------------------------------
// Masking what differs between any two clusters

/// Keys whose values differ between clusters (IDs, terms, tokens, hashes,
/// remaining TTLs, the v2 store's index).
const MASKED: &[&str] = &[
    "cluster_id",
    "member_id",
    "raft_term",
    "ID",
    "id",
    "leader",
    "token",
    "hash",
    "TTL",
    "index",
];

/// Replaces the scalar value after each `"key":` of [`MASKED`] with `*`, and
/// every loopback port with `PORT`, keeping everything else byte for byte.
fn mask(text: &str) -> String {
    let mut out = text.to_string();
    for key in MASKED {
        let pat = format!("\"{key}\":");
        let mut from = 0;
        while let Some(i) = out[from..].find(&pat) {
            let start = from + i + pat.len();
            let bytes = out.as_bytes();
            // Objects (an election's `leader` key) are compared as they are.
            if matches!(bytes.get(start), Some(b'{' | b'[')) {
                from = start;
                continue;
            }
            let end = if bytes.get(start) == Some(&b'"') {
                let mut j = start + 1;
                while j < bytes.len() && bytes[j] != b'"' {
                    j += if bytes[j] == b'\\' { 2 } else { 1 };
                }
                j + 1
            } else {
                let mut j = start;
                while j < bytes.len() && !matches!(bytes[j], b',' | b'}' | b']') {
                    j += 1;
                }
                j
            };
            out.replace_range(start..end.min(out.len()), "*");
            from = start + 1;
        }
    }
    let mut masked = String::new();
    let mut rest = out.as_str();
    while let Some(i) = rest.find("127.0.0.1:") {
        masked.push_str(&rest[..i + 10]);
        rest = rest[i + 10..].trim_start_matches(|c: char| c.is_ascii_digit());
        masked.push_str("PORT");
    }
    masked.push_str(rest);
    masked
}

/// The string value of the first `"key":"..."` in `json`.
fn field(json: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":\"");
    let i = json.find(&pat)? + pat.len();
    let end = json[i..].find('"')?;
    Some(json[i..i + end].to_string())
}

/// The `code` of a gateway error object.
fn code(json: &str) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v.get("code")?.as_i64()
}

// ---------------------------------------------------------------------------
// The table

/// How an answer of ours is compared with etcd 3.4's.
#[derive(Clone, Copy, PartialEq)]
enum Cmp {
    /// Status and masked body equal.
    Exact,
    /// Status and the error object's code equal (the text is Go's JSON
    /// decoder's, which says the same in other words).
    Code,
    /// Status, the masked `member` and the number of `members` equal (the
    /// list is sorted by the new member's random ID).
    Added,
    /// Not served by etcd 3.4 (etcd 3.5 paths): ours must answer 200 with
    /// a body holding each of these keys.
    Ours(&'static [&'static str]),
}

struct Step {
    method: &'static str,
    path: &'static str,
    /// The body; `{lease}`, `{member}` and `{crev}` (the revision of the
    /// first campaign) are filled in from earlier answers of the same server.
    body: String,
    /// The user whose token goes in the `Authorization` header.
    token: Option<&'static str>,
    cmp: Cmp,
}

/// One POST per row `(path, body)`, with `user`'s token (none for `None`),
/// compared as `cmp`.
fn posts(user: Option<&'static str>, cmp: Cmp, rows: &[(&'static str, &str)]) -> Vec<Step> {
    rows.iter()
        .map(|(path, body)| Step {
            method: "POST",
            path,
            body: body.to_string(),
            token: user,
            cmp,
        })
        .collect()
}

/// A request with another method, compared exactly.
fn other(method: &'static str, path: &'static str, body: &str) -> Vec<Step> {
    vec![Step {
        method,
        path,
        body: body.to_string(),
        token: None,
        cmp: Exact,
    }]
}

use Cmp::{Added, Code, Exact, Ours};

fn table(big: &str) -> Vec<Step> {
    let exact = |rows: &[(&'static str, &str)]| posts(None, Exact, rows);
    let code = |rows: &[(&'static str, &str)]| posts(None, Code, rows);
    let ours = |keys, rows: &[(&'static str, &str)]| posts(None, Ours(keys), rows);
    let exact_as = |user, rows: &[(&'static str, &str)]| posts(Some(user), Exact, rows);
    vec![
        // KV
        exact(&[
            ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#),
            ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmF6","prev_kv":true}"#),
            ("/v3/kv/put", r#"{"key":"Zm9vMg==","value":"PGI+Jg=="}"#),
            ("/v3/kv/range", r#"{"key":"Zm9v"}"#),
            (
                "/v3/kv/range",
                r#"{"key":"Zm9v","range_end":"Zm9w","sort_order":"DESCEND","sort_target":"KEY","limit":"1"}"#,
            ),
            ("/v3/kv/range", r#"{"key":"AA==","range_end":"AA==","count_only":true}"#),
            (
                "/v3/kv/range",
                r#"{"key":"Zm9v","range_end":"Zm9w","keys_only":true,"serializable":true}"#,
            ),
            ("/v3/kv/range", r#"{"key":"bm9uZQ=="}"#),
            ("/v3/kv/range", r#"{"foo":1}"#),
            ("/v3/kv/range", ""),
            ("/v3/kv/range", "null"),
            ("/v3/kv/range", "[]"),
            ("/v3/kv/range", r#""key""#),
            ("/v3/kv/range", r#"{"key":"Zm9v"} trailing"#),
            ("/v3/kv/range", r#"{"key":1}"#),
            ("/v3/kv/range", r#"{"key":"Zm9v","range_end":true}"#),
        ]),
        code(&[("/v3/kv/range", "{bad")]),
        exact(&[
            ("/v3/kv/range", r#"{"key":"!!"}"#),
            ("/v3/kv/range", r#"{"key":"Zm9v-w=="}"#),
        ]),
        code(&[
            ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy","lease":"x"}"#),
            ("/v3/kv/range", r#"{"key":"Zm9v","sort_order":"NOPE"}"#),
            ("/v3/kv/range", r#"{"key":"Zm9v","limit":"x"}"#),
        ]),
        exact(&[
            (
                "/v3/kv/txn",
                r#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":"VALUE","value":"YmF6"}],"success":[{"request_range":{"key":"Zm9v"}},{"request_put":{"key":"dHg=","value":"MQ=="}}],"failure":[{"request_delete_range":{"key":"Zm9v"}}]}"#,
            ),
            (
                "/v3/kv/txn",
                r#"{"compare":[{"key":"Zm9v","target":"VERSION","result":"GREATER","version":"5"}],"failure":[{"request_delete_range":{"key":"dHg=","prev_kv":true}}]}"#,
            ),
            (
                "/v3/kv/txn",
                r#"{"success":[{"request_put":{"key":"YQ=="}},{"request_put":{"key":"YQ=="}}]}"#,
            ),
            ("/v3/kv/deleterange", r#"{"key":"Zm9vMg==","prev_kv":true}"#),
            ("/v3/kv/deleterange", r#"{"key":"bm9uZQ=="}"#),
            ("/v3/kv/compaction", r#"{"revision":"100"}"#),
            ("/v3/kv/compaction", r#"{"revision":"3","physical":true}"#),
            ("/v3/kv/range", r#"{"key":"Zm9v","revision":"2"}"#),
            // Lease
            ("/v3/lease/grant", r#"{"TTL":"60","ID":"1000"}"#),
            ("/v3/lease/grant", r#"{"TTL":"60","ID":"1000"}"#),
            ("/v3/kv/put", r#"{"key":"bGVhc2Vk","value":"MQ==","lease":"1000"}"#),
            ("/v3/lease/timetolive", r#"{"ID":"1000","keys":true}"#),
            ("/v3/kv/lease/timetolive", r#"{"ID":"1000"}"#),
            ("/v3/lease/timetolive", r#"{"ID":"99"}"#),
            ("/v3/lease/leases", "{}"),
            ("/v3/kv/lease/leases", "{}"),
            ("/v3/lease/revoke", r#"{"ID":"1000"}"#),
            ("/v3/kv/lease/revoke", r#"{"ID":"1000"}"#),
            ("/v3/lease/grant", r#"{"TTL":"30"}"#),
            ("/v3/lease/revoke", r#"{"ID":"{lease}"}"#),
            // Lock: held by lease 4000 (fa0), so the keys are the same on
            // both servers.
            ("/v3/lease/grant", r#"{"TTL":"600","ID":"4000"}"#),
            ("/v3/lock/lock", r#"{"name":"bA==","lease":"4000"}"#),
            ("/v3/lock/lock", r#"{"name":"bA==","lease":"4000"}"#),
            ("/v3/kv/range", r#"{"key":"bC8=","range_end":"bDA="}"#),
            ("/v3/lock/lock", r#"{"name":"bA==","lease":"1"}"#),
            ("/v3/lock/lock", r#"{"name":1}"#),
            ("/v3/lock/unlock", r#"{"key":"bC9mYTA="}"#),
            ("/v3/lock/unlock", r#"{"key":"bm9uZQ=="}"#),
            ("/v3/lock/unlock", "{}"),
            ("/v3beta/lock/lock", r#"{"name":"bA==","lease":"4000"}"#),
            ("/v3beta/lock/unlock", r#"{"key":"bC9mYTA="}"#),
            // Election
            (
                "/v3/election/campaign",
                r#"{"name":"ZQ==","lease":"4000","value":"djE="}"#,
            ),
            ("/v3/election/leader", r#"{"name":"ZQ=="}"#),
            ("/v3/election/leader", r#"{"name":"bm8="}"#),
            (
                "/v3/election/proclaim",
                r#"{"leader":{"name":"ZQ==","key":"ZS9mYTA=","rev":"{crev}","lease":"4000"},"value":"djI="}"#,
            ),
            ("/v3beta/election/leader", r#"{"name":"ZQ=="}"#),
            (
                "/v3/election/proclaim",
                r#"{"leader":{"name":"ZQ==","key":"ZS9mYTA=","rev":"1","lease":"4000"},"value":"djM="}"#,
            ),
            ("/v3/election/proclaim", "{}"),
            ("/v3/election/proclaim", r#"{"leader":"x"}"#),
            ("/v3/election/resign", r#"{"leader":5}"#),
            ("/v3/election/resign", r#"{"leader":null}"#),
            ("/v3/kv/txn", r#"{"compare":"x"}"#),
            ("/v3/kv/txn", r#"{"compare":[1]}"#),
            ("/v3/kv/txn", r#"{"success":[{"request_put":true}]}"#),
            (
                "/v3/election/campaign",
                r#"{"name":"ZQ==","lease":"1","value":"djE="}"#,
            ),
            ("/v3/election/observe", r#"{"name":1}"#),
            ("/v3/election/observe", "[]"),
            (
                "/v3/election/resign",
                r#"{"leader":{"name":"ZQ==","key":"ZS9mYTA=","rev":"{crev}","lease":"4000"}}"#,
            ),
            (
                "/v3/election/resign",
                r#"{"leader":{"name":"ZQ==","key":"ZS9mYTA=","rev":"{crev}","lease":"4000"}}"#,
            ),
            ("/v3/election/resign", "{}"),
            ("/v3/election/leader", r#"{"name":"ZQ=="}"#),
            // Cluster
            ("/v3/cluster/member/list", "{}"),
        ]),
        posts(
            None,
            Added,
            &[(
                "/v3/cluster/member/add",
                r#"{"peerURLs":["http://127.0.0.1:1"],"isLearner":true}"#,
            )],
        ),
        exact(&[
            ("/v3/cluster/member/remove", r#"{"ID":"{member}"}"#),
            ("/v3/cluster/member/remove", r#"{"ID":"1"}"#),
            (
                "/v3/cluster/member/update",
                r#"{"ID":"1","peerURLs":["http://127.0.0.1:2"]}"#,
            ),
            ("/v3/cluster/member/promote", r#"{"ID":"1"}"#),
            // Maintenance
            ("/v3/maintenance/alarm", r#"{"action":"GET"}"#),
            ("/v3/maintenance/alarm", r#"{"action":"DEACTIVATE","alarm":"NOSPACE"}"#),
            ("/v3/maintenance/defragment", "{}"),
            ("/v3/maintenance/transfer-leadership", r#"{"targetID":"1"}"#),
        ]),
        ours(
            &["header", "version", "dbSize", "leader", "raftIndex"],
            &[("/v3/maintenance/status", "{}")],
        ),
        ours(
            &["header", "hash"],
            &[
                ("/v3/maintenance/hashkv", r#"{"revision":"0"}"#),
                ("/v3/maintenance/hash", "{}"),
            ],
        ),
        // Auth: users, roles, permissions, then enabled.
        exact(&[
            ("/v3/auth/user/add", r#"{"name":"root","password":"pw"}"#),
            ("/v3/auth/user/add", r#"{"name":"root","password":"pw"}"#),
            ("/v3/auth/user/add", r#"{"name":"alice","password":"apw"}"#),
            ("/v3/auth/user/get", r#"{"name":"root"}"#),
            ("/v3/auth/user/get", r#"{"name":"nobody"}"#),
            ("/v3/auth/role/add", r#"{"name":"root"}"#),
            ("/v3/auth/role/add", r#"{"name":"r"}"#),
            ("/v3/auth/role/add", r#"{"name":""}"#),
            ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
            ("/v3/auth/user/grant", r#"{"user":"alice","role":"r"}"#),
            (
                "/v3/auth/role/grant",
                r#"{"name":"r","perm":{"permType":"READ","key":"YQ==","range_end":"Yg=="}}"#,
            ),
            ("/v3/auth/role/get", r#"{"role":"r"}"#),
            ("/v3/auth/role/get", r#"{"role":"root"}"#),
            ("/v3/auth/user/list", "{}"),
            ("/v3/auth/role/list", "{}"),
            ("/v3/auth/user/revoke", r#"{"name":"alice","role":"nope"}"#),
            ("/v3/auth/role/revoke", r#"{"role":"r","key":"eg=="}"#),
            ("/v3/auth/user/changepw", r#"{"name":"alice","password":"apw2"}"#),
            ("/v3/auth/role/add", r#"{"name":"gone"}"#),
            ("/v3/auth/role/delete", r#"{"role":"gone"}"#),
            ("/v3/auth/user/add", r#"{"name":"bob","password":"b"}"#),
            ("/v3/auth/user/delete", r#"{"name":"bob"}"#),
            ("/v3/auth/enable", "{}"),
            ("/v3/kv/range", r#"{"key":"Zm9v"}"#),
            ("/v3/lock/lock", r#"{"name":"YQ==","lease":"4000"}"#),
            ("/v3/election/leader", r#"{"name":"YQ=="}"#),
            ("/v3/auth/authenticate", r#"{"name":"root","password":"wrong"}"#),
            ("/v3/auth/authenticate", r#"{"name":"root","password":"pw"}"#),
            ("/v3/auth/authenticate", r#"{"name":"alice","password":"apw2"}"#),
        ]),
        exact_as("root", &[("/v3/kv/range", r#"{"key":"Zm9v"}"#)]),
        exact_as(
            "alice",
            &[
                ("/v3/kv/range", r#"{"key":"Zm9v"}"#),
                ("/v3/kv/range", r#"{"key":"YQ=="}"#),
                ("/v3/kv/put", r#"{"key":"YQ==","value":"MQ=="}"#),
                ("/v3/auth/user/list", "{}"),
                // Alice may read under a/ but not write there.
                ("/v3/lock/lock", r#"{"name":"YQ==","lease":"4000"}"#),
                ("/v3/election/leader", r#"{"name":"YQ=="}"#),
                ("/v3/election/leader", r#"{"name":"eg=="}"#),
                (
                    "/v3/election/campaign",
                    r#"{"name":"YQ==","lease":"4000","value":"djE="}"#,
                ),
                ("/v3/election/observe", r#"{"name":"eg=="}"#),
                ("/v3/lock/unlock", r#"{"key":"YS9mYTA="}"#),
            ],
        ),
        exact_as(
            "root",
            &[
                ("/v3/lock/lock", r#"{"name":"YQ==","lease":"4000"}"#),
                ("/v3/election/leader", r#"{"name":"YQ=="}"#),
                ("/v3/lock/unlock", r#"{"key":"YS9mYTA="}"#),
            ],
        ),
        exact_as(
            "bogus",
            &[
                ("/v3/kv/put", r#"{"key":"YQ==","value":"MQ=="}"#),
                ("/v3/lock/lock", r#"{"name":"YQ==","lease":"4000"}"#),
            ],
        ),
        exact_as("alice", &[("/v3/auth/disable", "{}")]),
        exact_as("root", &[("/v3/auth/disable", "{}")]),
        ours(&["header"], &[("/v3/auth/status", "{}")]),
        // Paths, methods, aliases, size.
        exact(&[
            ("/v3beta/kv/range", r#"{"key":"Zm9v"}"#),
            ("/v3alpha/kv/range", r#"{"key":"Zm9v"}"#),
            ("/v3/kv/nothing", "{}"),
            ("/v3/lock/nothing", "{}"),
            ("/v3/election", "{}"),
        ]),
        other("GET", "/v3/kv/range", ""),
        other("PUT", "/v3/kv/range", "{}"),
        other("GET", "/v3/election/leader", ""),
        exact(&[
            ("/v3/kv/put", big),
            ("/v3/kv/range", r#"{"key":"Zm9v"}"#),
        ]),
        // v2
        other("GET", "/v2/members", ""),
        other("GET", "/v2/members/leader", ""),
        other("GET", "/v2/keys/nothing", ""),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Runs the table against one server; returns each step's answer.
fn run_table(port: u16, steps: &[Step]) -> Vec<Answer> {
    let mut lease = String::new();
    let mut member = String::new();
    let mut crev = String::new();
    let mut tokens: Vec<(String, String)> = vec![("bogus".into(), "bogus.1".into())];
    let mut out = Vec::new();
    for s in steps {
        let body = s
            .body
            .replace("{lease}", &lease)
            .replace("{member}", &member)
            .replace("{crev}", &crev);
        let token = s
            .token
            .and_then(|u| tokens.iter().find(|(n, _)| n == u).map(|(_, t)| t.clone()));
        let a = if s.method == "POST" {
            post(port, s.path, &body, token.as_deref())
        } else {
            request(port, s.method, s.path, &[], body.as_bytes())
        };
        if s.path == "/v3/lease/grant" && body.contains("\"30\"") {
            lease = field(&a.body, "ID").unwrap_or_default();
        }
        if s.path == "/v3/election/campaign" && crev.is_empty() {
            crev = field(&a.body, "rev").unwrap_or_default();
        }
        if s.path == "/v3/cluster/member/add" {
            let v: serde_json::Value = serde_json::from_str(&a.body).unwrap_or_default();
            member = v["member"]["ID"].as_str().unwrap_or_default().to_string();
        }
        if s.path == "/v3/auth/authenticate"
            && let Some(t) = field(&a.body, "token")
        {
            let user = field(&body, "name").unwrap_or_default();
            tokens.push((user, t));
        }
        out.push(a);
    }
    out
}

#[test]
fn gateway_answers_as_etcd_3_4() {
    let flags = ["--enable-v2"];
    let ours = Server::start(&flags);
    let etcd = Server::start_reference(&flags);
    eprintln!(
        "ours on port {}, etcd on port {}",
        ours.client_port, etcd.client_port
    );
    // A value over the request limit once encoded (1.5 MiB + 512 KiB).
    let big = format!(
        r#"{{"key":"Zm9v","value":"{}"}}"#,
        base64_of(&vec![0u8; 2_500_000])
    );
    let mut steps = table(&big);
    // A body far over the limit: refused as gRPC refuses the message (ours
    // without reading it; the text names the body's size, not the message's).
    let huge = format!(
        r#"{{"key":"Zm9v","value":"{}"}}"#,
        base64_of(&vec![0u8; 5_500_000])
    );
    steps.extend(posts(None, Code, &[("/v3/kv/put", &huge)]));
    let a = run_table(ours.client_port, &steps);
    let b = run_table(etcd.client_port, &steps);
    let mut diffs = Vec::new();
    for ((s, ours), etcd) in steps.iter().zip(&a).zip(&b) {
        let what = format!("{} {} {}", s.method, s.path, truncate(&s.body));
        match s.cmp {
            Exact => {
                let (x, y) = (mask(&ours.body), mask(&etcd.body));
                if ours.status != etcd.status || x != y {
                    diffs.push(format!(
                        "{what}\n  ours: {} {}\n  etcd: {} {}",
                        ours.status,
                        truncate(&x),
                        etcd.status,
                        truncate(&y)
                    ));
                }
            }
            Code => {
                if ours.status != etcd.status || code(&ours.body) != code(&etcd.body) {
                    diffs.push(format!(
                        "{what}\n  ours: {} {}\n  etcd: {} {}",
                        ours.status, ours.body, etcd.status, etcd.body
                    ));
                }
            }
            Added => {
                let shape = |a: &Answer| {
                    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap_or_default();
                    (
                        a.status,
                        mask(&v["member"].to_string()),
                        v["members"].as_array().map(Vec::len),
                    )
                };
                if shape(ours) != shape(etcd) {
                    diffs.push(format!(
                        "{what}\n  ours: {}\n  etcd: {}",
                        ours.body, etcd.body
                    ));
                }
            }
            Ours(keys) => {
                let v: serde_json::Value = serde_json::from_str(&ours.body).unwrap_or_default();
                if ours.status != 200 || keys.iter().any(|k| v.get(k).is_none()) {
                    diffs.push(format!("{what}\n  ours: {} {}", ours.status, ours.body));
                }
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "{} of {} answers differ from etcd 3.4's:\n{}",
        diffs.len(),
        steps.len(),
        diffs.join("\n")
    );
    // The member kept serving through the bad input.
    assert_eq!(
        post(ours.client_port, "/v3/kv/range", r#"{"key":"Zm9v"}"#, None).status,
        200
    );

    // ETCDCTL_API=2 on both: the same lines, IDs and ports aside.
    for cmd in ["cluster-health", "member list"] {
        let x = v2ctl(&ours.endpoint(), &[], cmd);
        let y = v2ctl(&etcd.endpoint(), &[], cmd);
        assert!(x.status.success(), "{cmd}: {}", text(&x));
        assert_eq!(mask_ids(&text(&x)), mask_ids(&text(&y)), "{cmd}");
    }
}

fn truncate(s: &str) -> String {
    if s.len() > 300 {
        format!("{}…", &s[..300])
    } else {
        s.to_string()
    }
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Member IDs (16 hex digits at most) and ports masked.
fn mask_ids(s: &str) -> String {
    let s = mask(s);
    s.split(' ')
        .map(|w| {
            let t = w.trim_end_matches(':');
            if (6..=16).contains(&t.len()) && t.chars().all(|c| c.is_ascii_hexdigit()) {
                w.replace(t, "ID")
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Debian's etcdctl with the v2 API.
fn v2ctl(endpoints: &str, tls: &[String], cmd: &str) -> Output {
    Command::new(etcdctl_bin())
        .env("ETCDCTL_API", "2")
        .arg(format!("--endpoints={endpoints}"))
        .args(tls)
        .args(cmd.split(' '))
        .output()
        .expect("run etcdctl")
}

// ---------------------------------------------------------------------------
// Streams

/// A streaming POST on a raw connection: the request goes out whole, the
/// answer is read line by line as it comes.
struct Stream {
    reader: BufReader<TcpStream>,
    status: u16,
    chunked: bool,
    pending: String,
}

impl Stream {
    fn open(port: u16, path: &str, body: &str) -> Stream {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let mut reader = BufReader::new(s);
        let mut status = 0;
        let mut chunked = false;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header line");
            let l = line.trim_end().to_lowercase();
            if l.starts_with("http/1.1 ") {
                status = l[9..12].parse().expect("status");
            }
            if l == "transfer-encoding: chunked" {
                chunked = true;
            }
            if l.is_empty() {
                break;
            }
        }
        Stream {
            reader,
            status,
            chunked,
            pending: String::new(),
        }
    }

    /// The next line of the answer (without its newline); `None` at its end.
    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.pending.find('\n') {
                let l = self.pending[..i].to_string();
                self.pending.drain(..=i);
                return Some(l);
            }
            if !self.chunked {
                let mut rest = String::new();
                let _ = self.reader.read_to_string(&mut rest);
                self.pending.push_str(&rest);
                if self.pending.is_empty() {
                    return None;
                }
                return Some(std::mem::take(&mut self.pending));
            }
            let mut size = String::new();
            if self.reader.read_line(&mut size).ok()? == 0 {
                return None;
            }
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            if n == 0 {
                if self.pending.is_empty() {
                    return None;
                }
                return Some(std::mem::take(&mut self.pending));
            }
            let mut buf = vec![0; n + 2];
            self.reader.read_exact(&mut buf).ok()?;
            self.pending.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
}

/// Watch and keep-alive streams on one server: the lines it answers, masked.
fn stream_lines(port: u16) -> Vec<String> {
    let mut lines = Vec::new();
    assert_eq!(
        post(port, "/v3/kv/put", r#"{"key":"dw==","value":"MA=="}"#, None).status,
        200
    );
    // Two create requests in one body: both watchers are created.
    let mut w = Stream::open(
        port,
        "/v3/watch",
        r#"{"create_request":{"key":"dw==","prev_kv":true}} {"create_request":{"key":"dw==","start_revision":"1"}}"#,
    );
    lines.push(format!("watch status {}", w.status));
    for _ in 0..3 {
        lines.push(mask(&w.line().expect("a watch line")));
    }
    // The watch outlives the end of the request body.
    assert_eq!(
        post(port, "/v3/kv/put", r#"{"key":"dw==","value":"MQ=="}"#, None).status,
        200
    );
    let mut events = vec![
        mask(&w.line().expect("an event")),
        mask(&w.line().expect("an event")),
    ];
    events.sort();
    lines.extend(events);
    // Keep-alives: one answer per request object, then the end.
    assert_eq!(
        post(port, "/v3/lease/grant", r#"{"TTL":"20","ID":"3000"}"#, None).status,
        200
    );
    let mut k = Stream::open(port, "/v3/lease/keepalive", r#"{"ID":"3000"}{"ID":"3000"}"#);
    lines.push(format!("keepalive status {}", k.status));
    while let Some(l) = k.line() {
        lines.push(mask(&l));
    }
    let mut k = Stream::open(port, "/v3/lease/keepalive", r#"{"ID":"12345"}"#);
    lines.push(format!("keepalive status {}", k.status));
    while let Some(l) = k.line() {
        lines.push(mask(&l));
    }
    let mut k = Stream::open(port, "/v3/watch", r#"{"create_request":{"key":1}}"#);
    lines.push(format!("bad watch status {}", k.status));
    lines.push(
        k.line()
            .map(|l| code(&l).unwrap_or(-1).to_string())
            .unwrap_or_default(),
    );
    // Observe: the leader at once, then each proclamation, until it resigns.
    assert_eq!(
        post(port, "/v3/lease/grant", r#"{"TTL":"60","ID":"3001"}"#, None).status,
        200
    );
    let c = post(
        port,
        "/v3/election/campaign",
        r#"{"name":"bw==","lease":"3001","value":"djE="}"#,
        None,
    );
    lines.push(mask(&c.body));
    let leader = format!(
        r#"{{"name":"bw==","key":"by9iYjk=","rev":"{}","lease":"3001"}}"#,
        field(&c.body, "rev").unwrap_or_default()
    );
    let mut o = Stream::open(port, "/v3/election/observe", r#"{"name":"bw=="}"#);
    lines.push(format!("observe status {}", o.status));
    lines.push(mask(&o.line().expect("the leader")));
    let p = post(
        port,
        "/v3/election/proclaim",
        &format!(r#"{{"leader":{leader},"value":"djI="}}"#),
        None,
    );
    lines.push(mask(&p.body));
    lines.push(mask(&o.line().expect("a proclamation")));
    let r = post(
        port,
        "/v3/election/resign",
        &format!(r#"{{"leader":{leader}}}"#),
        None,
    );
    lines.push(mask(&r.body));
    // A new leader after the resignation is observed too.
    let c = post(
        port,
        "/v3/election/campaign",
        r#"{"name":"bw==","lease":"3001","value":"djM="}"#,
        None,
    );
    lines.push(mask(&c.body));
    lines.push(mask(&o.line().expect("the next leader")));
    lines
}

#[test]
fn watch_and_keepalive_streams_as_etcd_3_4() {
    let ours = Server::start(&[]);
    let etcd = Server::start_reference(&[]);
    let a = stream_lines(ours.client_port);
    let b = stream_lines(etcd.client_port);
    assert_eq!(a, b);
    // Snapshot: result lines of blobs (the files differ between the two).
    let mut s = Stream::open(ours.client_port, "/v3/maintenance/snapshot", "{}");
    assert_eq!(s.status, 200);
    let first = s.line().expect("a snapshot line");
    assert!(first.starts_with("{\"result\":{\"header\":"), "{first}");
    assert!(first.contains("\"blob\":"), "{first}");
    let mut last = first;
    while let Some(l) = s.line() {
        last = l;
    }
    assert!(!last.contains("\"error\""), "{last}");
}

// ---------------------------------------------------------------------------
// TLS, client certificates, auth; v2 cluster health on a TLS cluster

pub(crate) struct Pki {
    /// Holds the files for the test's duration.
    _dir: tempfile::TempDir,
    pub(crate) ca: String,
    pub(crate) server: (String, String),
    /// A client certificate for the user `root`.
    pub(crate) root: (String, String),
}

pub(crate) fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("pki dir");
    let ca_key = KeyPair::generate().expect("CA key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.distinguished_name.push(DnType::CommonName, "gateway-ca");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = p.self_signed(&ca_key).expect("CA");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).expect("write CA");
    let leaf = |name: &str, cn: &str| {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let cert = p.signed_by(&key, &ca, &ca_key).expect("sign");
        let c = dir.path().join(format!("{name}.crt"));
        let k = dir.path().join(format!("{name}.key"));
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c.display().to_string(), k.display().to_string())
    };
    let server = leaf("server", "server");
    let root = leaf("root", "root");
    Pki {
        ca: ca_path.display().to_string(),
        server,
        root,
        _dir: dir,
    }
}

/// curl over TLS: status code and body.
fn curl(
    url: &str,
    ca: &str,
    cert: Option<&(String, String)>,
    headers: &[&str],
    body: &str,
) -> Result<Answer, String> {
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "--max-time",
        "20",
        "--cacert",
        ca,
        "-w",
        "\n%{http_code}",
        "-X",
        "POST",
        "--data-binary",
        body,
    ]);
    if let Some((crt, key)) = cert {
        c.args(["--cert", crt, "--key", key]);
    }
    for h in headers {
        c.args(["-H", h]);
    }
    let out = c.arg(url).output().expect("run curl");
    if !out.status.success() {
        return Err(text(&out));
    }
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = s.rsplit_once('\n').unwrap_or(("", "0"));
    Ok(Answer {
        status: status.trim().parse().unwrap_or(0),
        body: body.to_string(),
    })
}

pub(crate) struct Member {
    name: String,
    pub(crate) client: u16,
    peer: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A cluster of `n` members with client and peer TLS and client
/// certificates required, every member serving.
pub(crate) fn tls_cluster(p: &Pki, n: usize, extra: &[&str]) -> Vec<Member> {
    let mut ms: Vec<Member> = (0..n)
        .map(|i| Member {
            name: format!("m{i}"),
            client: free_port(),
            peer: free_port(),
            dir: tempfile::tempdir().expect("member dir"),
            child: None,
        })
        .collect();
    let initial = ms
        .iter()
        .map(|m| format!("{}=https://127.0.0.1:{}", m.name, m.peer))
        .collect::<Vec<_>>()
        .join(",");
    for m in ms.iter_mut() {
        let client = format!("https://127.0.0.1:{}", m.client);
        let peer = format!("https://127.0.0.1:{}", m.peer);
        let mut args: Vec<String> = [
            "--name",
            &m.name,
            "--data-dir",
            &m.dir.path().join("data").display().to_string(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &initial,
            "--initial-cluster-token",
            "gateway-tls",
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            "--cert-file",
            &p.server.0,
            "--key-file",
            &p.server.1,
            "--trusted-ca-file",
            &p.ca,
            "--client-cert-auth",
            "--peer-cert-file",
            &p.server.0,
            "--peer-key-file",
            &p.server.1,
            "--peer-trusted-ca-file",
            &p.ca,
            "--peer-client-cert-auth",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        m.child = Some(spawn_server(
            &ours_bin(),
            &args,
            m.dir.path(),
            &m.dir.path().join("log"),
        ));
    }
    for m in &ms {
        let url = format!("https://127.0.0.1:{}/v3/kv/range", m.client);
        wait_until(
            Duration::from_secs(40),
            "a TLS member serving the gateway",
            || {
                curl(&url, &p.ca, Some(&p.root), &[], r#"{"key":"eA=="}"#)
                    .is_ok_and(|a| a.status == 200)
            },
        );
    }
    ms
}

#[test]
fn gateway_over_tls_with_client_certificates_and_auth() {
    let p = pki();
    let ms = tls_cluster(&p, 1, &[]);
    let base = format!("https://127.0.0.1:{}", ms[0].client);
    let url = |path: &str| format!("{base}{path}");
    // No client certificate: the handshake is refused, as for gRPC.
    assert!(curl(&url("/v3/kv/range"), &p.ca, None, &[], r#"{"key":"eA=="}"#).is_err());
    let ok = |path: &str, body: &str, headers: &[&str]| {
        curl(&url(path), &p.ca, Some(&p.root), headers, body).expect("curl")
    };
    assert_eq!(
        ok("/v3/kv/put", r#"{"key":"eA==","value":"MQ=="}"#, &[]).status,
        200
    );
    assert_eq!(
        ok(
            "/v3/auth/user/add",
            r#"{"name":"root","password":"pw"}"#,
            &[]
        )
        .status,
        200
    );
    assert_eq!(
        ok(
            "/v3/auth/user/add",
            r#"{"name":"bob","password":"bpw"}"#,
            &[]
        )
        .status,
        200
    );
    assert_eq!(
        ok(
            "/v3/auth/user/grant",
            r#"{"user":"root","role":"root"}"#,
            &[]
        )
        .status,
        200
    );
    assert_eq!(ok("/v3/auth/enable", "{}", &[]).status, 200);
    // The certificate's common name (root) is the user.
    let r = ok("/v3/kv/range", r#"{"key":"eA=="}"#, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(r#""value":"MQ==""#), "{}", r.body);
    // Lock and Election through the gateway, as that user.
    let r = ok("/v3/lease/grant", r#"{"TTL":"60","ID":"4000"}"#, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = ok("/v3/lock/lock", r#"{"name":"eA==","lease":"4000"}"#, &[]);
    assert_eq!(
        (r.status, field(&r.body, "key").as_deref()),
        (200, Some("eC9mYTA=")),
        "{}",
        r.body
    );
    let r = ok(
        "/v3/election/campaign",
        r#"{"name":"eQ==","lease":"4000","value":"MQ=="}"#,
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // A token in the Authorization header wins over the certificate.
    let a = ok(
        "/v3/auth/authenticate",
        r#"{"name":"bob","password":"bpw"}"#,
        &[],
    );
    let token = field(&a.body, "token").expect("a token");
    let h = format!("Authorization: {token}");
    let r = ok("/v3/kv/range", r#"{"key":"eA=="}"#, &[&h]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            403,
            r#"{"error":"etcdserver: permission denied","message":"etcdserver: permission denied","code":7}"#
        )
    );
    // Bob may not write under x/: etcd's services fail with code Unknown.
    let r = ok("/v3/lock/lock", r#"{"name":"eA==","lease":"4000"}"#, &[&h]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            500,
            r#"{"error":"etcdserver: permission denied","message":"etcdserver: permission denied","code":2}"#
        )
    );
    // grpc-gateway's metadata headers carry it too.
    let g = format!("Grpc-Metadata-Token: {token}");
    let r = ok("/v3/kv/range", r#"{"key":"eA=="}"#, &[&g]);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = ok(
        "/v3/kv/range",
        r#"{"key":"eA=="}"#,
        &["Authorization: nonsense"],
    );
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            401,
            r#"{"error":"etcdserver: invalid auth token","message":"etcdserver: invalid auth token","code":16}"#
        )
    );
    let a = ok(
        "/v3/auth/authenticate",
        r#"{"name":"root","password":"pw"}"#,
        &[],
    );
    let root = format!(
        "Authorization: {}",
        field(&a.body, "token").expect("a token")
    );
    let r = ok("/v3/auth/disable", "{}", &[&h]);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = ok("/v3/auth/disable", "{}", &[&root]);
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn v2_cluster_health_and_member_list_on_a_tls_cluster() {
    let p = pki();
    let ms = tls_cluster(&p, 3, &[]);
    let tls = vec![
        format!("--ca-file={}", p.ca),
        format!("--cert-file={}", p.root.0),
        format!("--key-file={}", p.root.1),
    ];
    let eps = ms
        .iter()
        .map(|m| format!("https://127.0.0.1:{}", m.client))
        .collect::<Vec<_>>()
        .join(",");
    // The IDs and the leader, from the gateway.
    let list = curl(
        &format!("https://127.0.0.1:{}/v3/cluster/member/list", ms[0].client),
        &p.ca,
        Some(&p.root),
        &[],
        "{}",
    )
    .expect("member list");
    let v: serde_json::Value = serde_json::from_str(&list.body).expect("JSON");
    let mut members: Vec<(u64, String, String, String)> = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["ID"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("an ID"),
                m["name"].as_str().unwrap_or_default().to_string(),
                m["peerURLs"][0].as_str().unwrap_or_default().to_string(),
                m["clientURLs"][0].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    members.sort();
    assert_eq!(members.len(), 3, "{}", list.body);
    let deadline = Instant::now() + Duration::from_secs(20);
    let health = loop {
        let out = v2ctl(&eps, &tls, "cluster-health");
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut want: Vec<String> = members
        .iter()
        .map(|(id, _, _, c)| format!("member {id:x} is healthy: got healthy result from {c}"))
        .collect();
    want.push("cluster is healthy".into());
    assert_eq!(
        text(&health).lines().collect::<Vec<_>>(),
        want,
        "{}",
        text(&health)
    );

    let status = curl(
        &format!("https://127.0.0.1:{}/v3/maintenance/status", ms[0].client),
        &p.ca,
        Some(&p.root),
        &[],
        "{}",
    )
    .expect("status");
    let leader: u64 = field(&status.body, "leader")
        .and_then(|l| l.parse().ok())
        .expect("a leader");
    let out = v2ctl(&eps, &tls, "member list");
    assert!(out.status.success(), "{}", text(&out));
    let want: Vec<String> = members
        .iter()
        .map(|(id, name, p, c)| {
            format!(
                "{id:x}: name={name} peerURLs={p} clientURLs={c} isLeader={}",
                *id == leader
            )
        })
        .collect();
    assert_eq!(text(&out).lines().collect::<Vec<_>>(), want);

    // /v2/keys is not served: etcd's v2 error object.
    let k = Command::new("curl")
        .args([
            "-sS", "--cacert", &p.ca, "--cert", &p.root.0, "--key", &p.root.1, "-X", "PUT", "-d",
            "value=1",
        ])
        .arg(format!("https://127.0.0.1:{}/v2/keys/x", ms[0].client))
        .output()
        .expect("curl");
    assert!(
        String::from_utf8_lossy(&k.stdout).starts_with(r#"{"errorCode":300,"#),
        "{}",
        text(&k)
    );
    drop(ms);
    assert!(Path::new(&p.ca).exists());
}

// ---------------------------------------------------------------------------
// etcd3gw (OpenStack's gateway client, from PyPI)

/// A virtual environment with etcd3gw, made once per target directory
/// (needs python3's venv module and PyPI).
fn etcd3gw_python() -> std::path::PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("etcd3gw-venv");
    let python = venv.join("bin/python");
    let has = |p: &Path| {
        Command::new(p)
            .args(["-c", "import etcd3gw"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has(&python) {
        let out = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .output()
            .expect("run python3 -m venv");
        assert!(out.status.success(), "python3 -m venv: {}", text(&out));
        let out = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "etcd3gw"])
            .output()
            .expect("run pip");
        assert!(out.status.success(), "pip install etcd3gw: {}", text(&out));
        assert!(
            has(&python),
            "etcd3gw does not import after its installation"
        );
    }
    python
}

#[test]
fn etcd3gw_as_with_etcd_3_4() {
    let python = etcd3gw_python();
    let dir = tempfile::tempdir().expect("script dir");
    let script = dir.path().join("etcd3gw_check.py");
    std::fs::write(&script, include_str!("etcd3gw.py")).expect("write script");
    let run = |port: u16| {
        let out = Command::new(&python)
            .arg(&script)
            .arg(port.to_string())
            .output()
            .expect("run the etcd3gw script");
        assert!(out.status.success(), "etcd3gw script: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ours = Server::start(&[]);
    let etcd = Server::start_reference(&[]);
    let a = run(ours.client_port);
    let b = run(etcd.client_port);
    assert!(a.contains("event: ('DELETE', b'w', None)"), "{a}");
    assert_eq!(a, b);
}
