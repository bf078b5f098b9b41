//! Acceptance tests with Debian's etcdctl 3.4: every scenario runs the same
//! etcdctl commands against our server and against Debian's etcd, and compares
//! what a user sees (stdout, the error line, the exit code) after normalising
//! what legitimately differs: member, cluster and lease IDs, raft terms and
//! indexes, database sizes, version strings, ports and timings.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Server, etcdctl_bin, wait_until};

const WAIT: Duration = Duration::from_secs(20);

/// What one etcdctl run showed the user.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ctl {
    code: i32,
    out: String,
    /// stderr without etcdctl's own JSON log lines (retry warnings and the
    /// like, which carry timestamps and random client names).
    err: String,
}

fn ctl_in(s: &Server, args: &[&str], stdin: Option<&str>) -> Ctl {
    let o = s.etcdctl_stdin(args, stdin);
    let err = String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| !l.trim_start().starts_with('{'))
        .map(|l| format!("{l}\n"))
        .collect();
    Ctl {
        code: o.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&o.stdout).into_owned(),
        err,
    }
}

fn ctl(s: &Server, args: &[&str]) -> Ctl {
    ctl_in(s, args, None)
}

/// Starts ours and Debian's etcd with the same extra flags (in parallel).
fn pair(extra: &[&str]) -> (Server, Server) {
    let extra_ref: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let reference = std::thread::spawn(move || {
        let a: Vec<&str> = extra_ref.iter().map(|s| s.as_str()).collect();
        Server::start_reference(&a)
    });
    let ours = Server::start(extra);
    let reference = reference.join().expect("start reference etcd");
    (ours, reference)
}

/// Replaces runs of 12 or more hex digits (member and lease IDs as etcdctl
/// prints them) with `<id>`.
fn mask_hex_ids(s: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 12 {
            out.push_str("<id>");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in s.chars() {
        if c.is_ascii_hexdigit() && !c.is_ascii_uppercase() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Server-specific text: the endpoint, the ports.
fn mask_server(s: &str, srv: &Server) -> String {
    s.replace(&srv.endpoint(), "<endpoint>")
        .replace(&srv.client_port.to_string(), "<client-port>")
        .replace(&srv.peer_port.to_string(), "<peer-port>")
}

fn norm(c: &Ctl, srv: &Server) -> Ctl {
    Ctl {
        code: c.code,
        out: mask_hex_ids(&mask_server(&c.out, srv)),
        err: mask_hex_ids(&mask_server(&c.err, srv)),
    }
}

/// Runs `args` (with `stdin`) on both servers, asserts the normalised results
/// are equal and returns ours (not normalised).
fn same_in(o: &Server, r: &Server, args: &[&str], stdin: Option<&str>) -> Ctl {
    let ours = ctl_in(o, args, stdin);
    let theirs = ctl_in(r, args, stdin);
    assert_eq!(
        norm(&ours, o),
        norm(&theirs, r),
        "etcdctl {args:?} (stdin {stdin:?}) differs: ours (left) vs etcd (right)"
    );
    ours
}

fn same(o: &Server, r: &Server, args: &[&str]) -> Ctl {
    same_in(o, r, args, None)
}

/// Removes what legitimately differs from JSON output: cluster and member IDs,
/// raft terms, and (optionally) lease IDs.
fn scrub_json(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for k in ["cluster_id", "member_id", "raft_term"] {
                m.remove(k);
            }
            for (_, x) in m.iter_mut() {
                scrub_json(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(scrub_json),
        _ => {}
    }
}

fn json(c: &Ctl) -> Value {
    assert_eq!(c.code, 0, "etcdctl failed: {c:?}");
    serde_json::from_str(c.out.trim()).unwrap_or_else(|e| panic!("bad JSON {:?}: {e}", c.out))
}

/// Runs a `-w json` command on both and compares the parsed, scrubbed JSON.
fn same_json(o: &Server, r: &Server, args: &[&str], stdin: Option<&str>) -> Value {
    let mut a = json(&ctl_in(o, args, stdin));
    let mut b = json(&ctl_in(r, args, stdin));
    scrub_json(&mut a);
    scrub_json(&mut b);
    assert_eq!(a, b, "etcdctl {args:?}: ours (left) vs etcd (right)");
    a
}

/// The store revision as `get` reports it in its header.
fn revision(s: &Server) -> i64 {
    let v = json(&ctl(s, &["get", "rev-probe", "-w", "json"]));
    v["header"]["revision"].as_i64().expect("header revision")
}

/// Every key and value, as `get "" --prefix` prints them.
fn dump(s: &Server) -> String {
    s.ctl_ok(&["get", "", "--prefix"])
}

/// Asserts that ours and etcd are at the same revision with the same data.
fn same_state(o: &Server, r: &Server) {
    assert_eq!(revision(o), revision(r), "revisions differ");
    assert_eq!(dump(o), dump(r), "contents differ");
}

#[test]
fn put_and_get_options() {
    let (o, r) = pair(&[]);
    for (k, v) in [
        ("k1", "v1"),
        ("k2", "v2"),
        ("k3", "v3"),
        ("k1", "v1b"),
        ("k2", "a-value"),
        ("z", "zz"),
    ] {
        let c = same(&o, &r, &["put", k, v]);
        assert_eq!(c.out, "OK\n");
    }
    let c = same(&o, &r, &["put", "k3", "v3b", "--prev-kv"]);
    assert_eq!(c.out, "OK\nk3\nv3\n");
    same_state(&o, &r);

    let c = same(&o, &r, &["get", "k", "--prefix"]);
    assert_eq!(c.out, "k1\nv1b\nk2\na-value\nk3\nv3b\n");
    let c = same(&o, &r, &["get", "k", "--prefix", "--keys-only"]);
    assert_eq!(c.out, "k1\n\nk2\n\nk3\n\n");
    let c = same(&o, &r, &["get", "k1", "--rev", "2"]);
    assert_eq!(c.out, "k1\nv1\n");
    let c = same(&o, &r, &["get", "k1", "--rev", "1"]);
    assert_eq!(c.out, "");
    let c = same(&o, &r, &["get", "k", "--prefix", "--limit", "2"]);
    assert_eq!(c.out, "k1\nv1b\nk2\na-value\n");
    for target in ["KEY", "VERSION", "CREATE", "MODIFY", "VALUE"] {
        for order in ["ASCEND", "DESCEND"] {
            let c = same(
                &o,
                &r,
                &[
                    "get",
                    "k",
                    "--prefix",
                    "--sort-by",
                    target,
                    "--order",
                    order,
                ],
            );
            assert_eq!(c.code, 0, "{target} {order}: {c:?}");
            assert_eq!(c.out.lines().count(), 6, "{target} {order}: {c:?}");
        }
    }
    let c = same(
        &o,
        &r,
        &[
            "get",
            "k",
            "--prefix",
            "--sort-by",
            "VALUE",
            "--order",
            "DESCEND",
        ],
    );
    assert_eq!(c.out, "k3\nv3b\nk1\nv1b\nk2\na-value\n");
    let c = same(
        &o,
        &r,
        &[
            "get",
            "k",
            "--prefix",
            "--sort-by",
            "MODIFY",
            "--order",
            "DESCEND",
            "--limit",
            "1",
        ],
    );
    assert_eq!(c.out, "k3\nv3b\n");
    let c = same(&o, &r, &["get", "k2", "--from-key"]);
    assert_eq!(c.out, "k2\na-value\nk3\nv3b\nz\nzz\n");
    // `--count-only` came with etcdctl 3.5; Debian's 3.4 refuses the flag,
    // and must do so the same way against both servers.
    let c = same(&o, &r, &["get", "k", "--prefix", "--count-only"]);
    assert_ne!(c.code, 0);
    same(&o, &r, &["get", "k", "--prefix", "--print-value-only"]);

    let v = same_json(&o, &r, &["get", "k", "--prefix", "-w", "json"], None);
    assert_eq!(v["count"], 3);
    assert_eq!(v["header"]["revision"], 8);
    let v = same_json(
        &o,
        &r,
        &["get", "k", "--prefix", "--limit", "1", "-w", "json"],
        None,
    );
    assert_eq!(v["more"], true);
    same_json(&o, &r, &["get", "missing", "-w", "json"], None);

    // `get` has no table printer; both must say so the same way.
    let c = same(&o, &r, &["get", "k1", "-w", "table"]);
    assert_ne!(c.code, 0);
    assert!(c.err.contains("table"), "{c:?}");

    // The "fields" printer: header IDs and term differ, the rest must not.
    let strip = |c: Ctl| -> String {
        c.out
            .lines()
            .filter(|l| {
                !l.starts_with("\"ClusterID\"")
                    && !l.starts_with("\"MemberID\"")
                    && !l.starts_with("\"RaftTerm\"")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let a = strip(ctl(&o, &["get", "k", "--prefix", "-w", "fields"]));
    let b = strip(ctl(&r, &["get", "k", "--prefix", "-w", "fields"]));
    assert_eq!(a, b);
    assert!(a.contains("\"Revision\" : 8"), "{a}");
    same_state(&o, &r);
}

#[test]
fn delete_options() {
    let (o, r) = pair(&[]);
    for k in ["a", "b", "c", "d1", "d2", "d3", "e"] {
        same(&o, &r, &["put", k, &format!("val-{k}")]);
    }
    let c = same(&o, &r, &["del", "nothing"]);
    assert_eq!(c.out, "0\n");
    let c = same(&o, &r, &["del", "a"]);
    assert_eq!(c.out, "1\n");
    let c = same(&o, &r, &["del", "d", "--prefix", "--prev-kv"]);
    assert_eq!(c.out, "3\nd1\nval-d1\nd2\nval-d2\nd3\nval-d3\n");
    let c = same(&o, &r, &["del", "c", "--from-key"]);
    assert_eq!(c.out, "2\n");
    same_state(&o, &r);
    assert_eq!(dump(&o), "b\nval-b\n");
    let c = same(&o, &r, &["del", "b", "--prev-kv"]);
    assert_eq!(c.out, "1\nb\nval-b\n");
    same_state(&o, &r);
}

#[test]
fn txn_both_branches() {
    let (o, r) = pair(&[]);
    same(&o, &r, &["put", "k", "v"]);
    same(&o, &r, &["put", "other", "1"]);

    // Success branch: every compare holds.
    let input = "mod(\"k\") > \"0\"\nvalue(\"k\") = \"v\"\ncreate(\"new\") = \"0\"\n\n\
                 put new created\nget k\ndel other\n\nput failed yes\n\n";
    let c = same_in(&o, &r, &["txn"], Some(input));
    assert_eq!(c.out, "SUCCESS\n\nOK\n\nk\nv\n\n1\n");
    same_state(&o, &r);

    // Failure branch: one compare fails.
    let input = "value(\"k\") = \"v\"\nversion(\"k\") > \"5\"\n\n\
                 put never here\n\nput failed yes\nget new\ndel k\n\n";
    let c = same_in(&o, &r, &["txn"], Some(input));
    assert_eq!(c.out, "FAILURE\n\nOK\n\nnew\ncreated\n\n1\n");
    same_state(&o, &r);
    assert_eq!(dump(&o), "failed\nyes\nnew\ncreated\n");

    // JSON output, compared without header IDs and terms.
    let input = "create(\"k\") = \"0\"\n\nput k again\nget k\n\n\n";
    let v = same_json(&o, &r, &["txn", "-w", "json"], Some(input));
    assert_eq!(v["succeeded"], true);
    assert_eq!(v["responses"].as_array().map(|a| a.len()), Some(2));
    same_state(&o, &r);
    // Inside a txn, etcd's responses carry only the revision in their headers
    // (cluster, member and term are filled in the outer header only).
    let input = "\nget k\nput k3 x\n\n\n";
    for s in [&o, &r] {
        let v = json(&ctl_in(s, &["txn", "-w", "json"], Some(input)));
        assert!(v["header"]["member_id"].as_u64().is_some(), "{v}");
        let ops = v["responses"].as_array().expect("responses");
        assert_eq!(ops.len(), 2, "{v}");
        for op in ops {
            let inner = op["Response"]
                .as_object()
                .and_then(|m| m.values().next())
                .expect("response");
            let keys: Vec<&String> = inner["header"]
                .as_object()
                .expect("header")
                .keys()
                .collect();
            assert_eq!(keys, ["revision"], "{:?}: {v}", s.kind);
        }
    }
    same_state(&o, &r);

    // An empty txn succeeds and writes nothing.
    let before = revision(&o);
    let c = same_in(&o, &r, &["txn"], Some("\n\n\n"));
    assert_eq!(c.out, "SUCCESS\n");
    assert_eq!(revision(&o), before);
    same_state(&o, &r);
}

/// A running `etcdctl watch` whose stdout lines are collected by a thread.
struct Watcher {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(s: &Server, args: &[&str]) -> Watcher {
        let mut child = Command::new(etcdctl_bin())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", s.endpoint()))
            .arg("watch")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start etcdctl watch");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let l2 = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                l2.lock().expect("lock").push(line);
            }
        });
        Watcher {
            child,
            lines,
            reader: Some(reader),
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lock").clone()
    }

    fn wait_lines(&self, n: usize) -> Vec<String> {
        wait_until(WAIT, &format!("{n} watch output lines"), || {
            self.lines.lock().expect("lock").len() >= n
        });
        self.lines()
    }

    /// Waits for the process to end by itself; returns its exit code and
    /// stdout and stderr together.
    fn wait_exit(mut self) -> (i32, String) {
        wait_until(WAIT, "etcdctl watch to exit", || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        let code = self
            .child
            .try_wait()
            .ok()
            .flatten()
            .and_then(|s| s.code())
            .unwrap_or(-1);
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        // The reader thread ends at end of file, once the process is gone.
        if let Some(t) = self.reader.take() {
            let _ = t.join();
        }
        (code, format!("{}\n{err}", self.lines().join("\n")))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn watch_events() {
    let (o, r) = pair(&[]);
    same(&o, &r, &["put", "w/a", "1"]);
    same(&o, &r, &["put", "x", "outside"]);
    assert_eq!(revision(&r), revision(&o));
    let next = (revision(&o) + 1).to_string();

    // Watching from the next revision sees every later write, whenever the
    // watch is established.
    let wo = Watcher::start(&o, &["w/", "--prefix", "--prev-kv", "--rev", &next]);
    let wr = Watcher::start(&r, &["w/", "--prefix", "--prev-kv", "--rev", &next]);
    same(&o, &r, &["put", "w/a", "2"]);
    same(&o, &r, &["put", "w/b", "3"]);
    same(&o, &r, &["put", "x", "not watched"]);
    same(&o, &r, &["del", "w/a"]);
    // PUT w/a 2 with prev 1 (5 lines), PUT w/b 3 (3), DELETE w/a with prev (5).
    let a = wo.wait_lines(13);
    let b = wr.wait_lines(13);
    assert_eq!(a, b);
    assert_eq!(
        a[..13],
        [
            "PUT", "w/a", "1", "w/a", "2", "PUT", "w/b", "3", "DELETE", "w/a", "2", "w/a", ""
        ]
    );
    // A live write is delivered to the established watch.
    same(&o, &r, &["put", "w/c", "4"]);
    let a = wo.wait_lines(16);
    let b = wr.wait_lines(16);
    assert_eq!(a, b);
    assert_eq!(a[13..16], ["PUT", "w/c", "4"]);
    drop(wo);
    drop(wr);

    // Watching history from an old revision, without --prev-kv.
    let wo = Watcher::start(&o, &["w/", "--prefix", "--rev", "1"]);
    let wr = Watcher::start(&r, &["w/", "--prefix", "--rev", "1"]);
    let a = wo.wait_lines(15);
    let b = wr.wait_lines(15);
    assert_eq!(a, b);
    assert_eq!(
        a[..15],
        [
            "PUT", "w/a", "1", "PUT", "w/a", "2", "PUT", "w/b", "3", "DELETE", "w/a", "", "PUT",
            "w/c", "4"
        ]
    );
    // A single key, not a prefix.
    let wo2 = Watcher::start(&o, &["w/b", "--rev", "1"]);
    let wr2 = Watcher::start(&r, &["w/b", "--rev", "1"]);
    same(&o, &r, &["put", "w/b", "5"]);
    let a = wo2.wait_lines(6);
    let b = wr2.wait_lines(6);
    assert_eq!(a, b);
    assert_eq!(a, ["PUT", "w/b", "3", "PUT", "w/b", "5"]);
}

/// Parses `lease <hex> granted with TTL(<n>s)`.
fn granted(c: &Ctl) -> (String, i64) {
    assert_eq!(c.code, 0, "{c:?}");
    let words: Vec<&str> = c.out.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"lease"), "{c:?}");
    let ttl = c
        .out
        .split("TTL(")
        .nth(1)
        .and_then(|s| s.split('s').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no TTL in {c:?}"));
    (words[1].to_string(), ttl)
}

#[test]
fn lease_lifecycle() {
    let (o, r) = pair(&[]);
    // etcd raises a TTL below its minimum (1.5 election timeouts, 2s here).
    let (_, to) = granted(&ctl(&o, &["lease", "grant", "1"]));
    let (_, tr) = granted(&ctl(&r, &["lease", "grant", "1"]));
    assert_eq!(to, tr);
    let (lo, to) = granted(&ctl(&o, &["lease", "grant", "60"]));
    let (lr, tr) = granted(&ctl(&r, &["lease", "grant", "60"]));
    assert_eq!((to, tr), (60, 60));

    let c = same(&o, &r, &["lease", "list"]);
    assert!(c.out.starts_with("found 2 leases\n"), "{c:?}");
    assert!(c.out.contains(&lo), "{c:?}");

    let co = ctl(&o, &["put", "--lease", &lo, "lk", "v"]);
    let cr = ctl(&r, &["put", "--lease", &lr, "lk", "v"]);
    assert_eq!(co, cr);
    assert_eq!(co.out, "OK\n");

    let co = ctl(&o, &["lease", "keep-alive", "--once", &lo]);
    let cr = ctl(&r, &["lease", "keep-alive", "--once", &lr]);
    assert_eq!(norm(&co, &o), norm(&cr, &r));
    assert_eq!(co.out, format!("lease {lo} keepalived with TTL(60)\n"));

    // Remaining seconds are rounded down, as etcd reports them.
    let remaining = |c: &Ctl| -> i64 {
        c.out
            .split("remaining(")
            .nth(1)
            .and_then(|s| s.split('s').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no remaining TTL in {c:?}"))
    };
    let co = ctl(&o, &["lease", "timetolive", &lo, "--keys"]);
    let cr = ctl(&r, &["lease", "timetolive", &lr, "--keys"]);
    let (ro, rr) = (remaining(&co), remaining(&cr));
    assert!((50..=59).contains(&ro), "ours: {co:?}");
    assert!((50..=59).contains(&rr), "etcd: {cr:?}");
    let fix = |c: &Ctl, rem: i64| c.out.replace(&format!("remaining({rem}s)"), "remaining(N)");
    assert_eq!(
        mask_hex_ids(&fix(&co, ro)),
        mask_hex_ids(&fix(&cr, rr)),
        "timetolive --keys"
    );
    assert_eq!(
        fix(&co, ro),
        format!("lease {lo} granted with TTL(60s), remaining(N), attached keys([lk])\n")
    );
    let mut jo = json(&ctl(&o, &["lease", "timetolive", &lo, "-w", "json"]));
    let mut jr = json(&ctl(&r, &["lease", "timetolive", &lr, "-w", "json"]));
    for j in [&mut jo, &mut jr] {
        scrub_json(j);
        let m = j.as_object_mut().expect("object");
        assert!(m.remove("id").is_some());
        let ttl = m.remove("ttl").and_then(|t| t.as_i64()).expect("ttl");
        assert!((50..=59).contains(&ttl), "{ttl}");
    }
    assert_eq!(jo, jr);
    assert_eq!(jo["granted-ttl"], 60);

    // Revoke: the attached key goes with it.
    let co = ctl(&o, &["lease", "revoke", &lo]);
    let cr = ctl(&r, &["lease", "revoke", &lr]);
    assert_eq!(norm(&co, &o), norm(&cr, &r));
    assert_eq!(co.out, format!("lease {lo} revoked\n"));
    let c = same(&o, &r, &["get", "lk"]);
    assert_eq!(c.out, "");
    same_state(&o, &r);
    let co = ctl(&o, &["lease", "timetolive", &lo]);
    let cr = ctl(&r, &["lease", "timetolive", &lr]);
    assert_eq!(norm(&co, &o), norm(&cr, &r));
    assert_eq!(co.out, format!("lease {lo} already expired\n"));
    let co = ctl(&o, &["lease", "revoke", &lo]);
    let cr = ctl(&r, &["lease", "revoke", &lr]);
    assert_eq!(norm(&co, &o), norm(&cr, &r));
    assert_ne!(co.code, 0);
    assert!(
        co.err.contains("etcdserver: requested lease not found"),
        "{co:?}"
    );
    let c = same(&o, &r, &["lease", "keep-alive", "--once", "1234abcd"]);
    assert_ne!(c.code, 0);
    assert!(
        c.err.contains("etcdserver: requested lease not found"),
        "{c:?}"
    );

    // Expiry: a short lease takes its key with it on both servers.
    let (so, _) = granted(&ctl(&o, &["lease", "grant", "1"]));
    let (sr, _) = granted(&ctl(&r, &["lease", "grant", "1"]));
    assert_eq!(ctl(&o, &["put", "--lease", &so, "short", "v"]).out, "OK\n");
    assert_eq!(ctl(&r, &["put", "--lease", &sr, "short", "v"]).out, "OK\n");
    for s in [&o, &r] {
        wait_until(WAIT, "the leased key to expire", || {
            ctl(s, &["get", "short"]).out.is_empty()
        });
    }
    for s in [&o, &r] {
        wait_until(WAIT, "the expired leases to leave the list", || {
            ctl(s, &["lease", "list"]).out == "found 0 leases\n"
        });
    }
    same_state(&o, &r);
}

#[test]
fn compaction_and_history() {
    let (o, r) = pair(&[]);
    for v in ["1", "2", "3", "4", "5"] {
        same(&o, &r, &["put", "c", v]);
    }
    // Revisions 2..=6 hold c=1..5.
    let c = same(&o, &r, &["compaction", "3"]);
    assert_eq!(c.out, "compacted revision 3\n");
    let c = same(&o, &r, &["get", "c", "--rev", "2"]);
    assert_ne!(c.code, 0);
    assert_eq!(
        c.err,
        "Error: etcdserver: mvcc: required revision has been compacted\n"
    );
    let c = same(&o, &r, &["get", "c", "--rev", "3"]);
    assert_eq!(c.out, "c\n2\n");
    let c = same(&o, &r, &["compaction", "2"]);
    assert_ne!(c.code, 0);
    assert_eq!(
        c.err,
        "Error: etcdserver: mvcc: required revision has been compacted\n"
    );
    let c = same(&o, &r, &["compaction", "100"]);
    assert_ne!(c.code, 0);
    assert_eq!(
        c.err,
        "Error: etcdserver: mvcc: required revision is a future revision\n"
    );
    let c = same(&o, &r, &["compaction", "--physical", "5"]);
    assert_eq!(c.out, "compacted revision 5\n");
    let c = same(&o, &r, &["get", "c", "--rev", "4"]);
    assert_eq!(
        c.err,
        "Error: etcdserver: mvcc: required revision has been compacted\n"
    );
    let c = same(&o, &r, &["get", "c", "--rev", "5"]);
    assert_eq!(c.out, "c\n4\n");
    same_state(&o, &r);

    // A watch from a compacted revision is cancelled with the compaction error.
    let (co, eo) = Watcher::start(&o, &["c", "--rev", "1"]).wait_exit();
    let (cr, er) = Watcher::start(&r, &["c", "--rev", "1"]).wait_exit();
    assert_eq!((co, eo.clone()), (cr, er));
    assert_ne!(co, 0);
    assert!(
        eo.contains("etcdserver: mvcc: required revision has been compacted"),
        "{eo}"
    );
}

#[test]
fn defrag_and_alarms() {
    let (o, r) = pair(&[]);
    same(&o, &r, &["put", "k", "v"]);
    let c = same(&o, &r, &["defrag"]);
    assert_eq!(
        c.out,
        format!("Finished defragmenting etcd member[{}]\n", o.endpoint())
    );
    same_state(&o, &r);
    let c = same(&o, &r, &["alarm", "list"]);
    assert_eq!((c.code, c.out.as_str()), (0, ""));
    let c = same(&o, &r, &["alarm", "disarm"]);
    assert_eq!((c.code, c.out.as_str()), (0, ""));
    same_state(&o, &r);
}

/// The cells of a `-w table` output, row by row (border lines dropped).
fn table(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

#[test]
fn endpoint_and_member_tables() {
    let (o, r) = pair(&[]);
    same(&o, &r, &["put", "k", "v"]);

    let so = ctl(&o, &["endpoint", "status", "-w", "table"]);
    let sr = ctl(&r, &["endpoint", "status", "-w", "table"]);
    assert_eq!((so.code, so.err.as_str()), (0, ""), "ours: {so:?}");
    assert_eq!(sr.code, 0, "{sr:?}");
    let (to, tr) = (table(&so.out), table(&sr.out));
    assert_eq!(to[0], tr[0], "column titles");
    assert_eq!(to.len(), 2, "{so:?}");
    let col = |t: &Vec<Vec<String>>, name: &str| -> String {
        let i = t[0].iter().position(|c| c == name).expect(name);
        t[1][i].clone()
    };
    for name in ["IS LEADER", "IS LEARNER", "ERRORS"] {
        assert_eq!(col(&to, name), col(&tr, name), "{name}");
    }
    assert_eq!(col(&to, "ENDPOINT"), o.endpoint());
    assert_eq!(col(&to, "IS LEADER"), "true");
    // We report etcd 3.5; Debian's etcd is 3.4.
    assert!(col(&to, "VERSION").starts_with("3.5."), "{so:?}");
    assert!(col(&tr, "VERSION").starts_with("3.4."), "{sr:?}");
    let members = ctl(&o, &["member", "list"]);
    assert!(
        members
            .out
            .starts_with(&format!("{}, started, default,", col(&to, "ID"))),
        "{members:?} vs {so:?}"
    );
    let term: u64 = col(&to, "RAFT TERM").parse().expect("term");
    let index: u64 = col(&to, "RAFT INDEX").parse().expect("index");
    let applied: u64 = col(&to, "RAFT APPLIED INDEX").parse().expect("applied");
    assert!(term >= 1 && index >= 1 && applied >= 1, "{so:?}");
    assert!(col(&to, "DB SIZE").ends_with('B'), "{so:?}");

    let v = json(&ctl(&o, &["endpoint", "status", "-w", "json"]));
    assert_eq!(v[0]["Endpoint"], o.endpoint());
    assert_eq!(v[0]["Status"]["header"]["revision"], 2);
    assert_eq!(
        v[0]["Status"]["leader"],
        v[0]["Status"]["header"]["member_id"]
    );

    let ho = ctl(&o, &["endpoint", "health", "-w", "table"]);
    let hr = ctl(&r, &["endpoint", "health", "-w", "table"]);
    let (to, tr) = (table(&ho.out), table(&hr.out));
    assert_eq!(to[0], tr[0], "column titles");
    assert_eq!(to.len(), 2, "{ho:?}");
    assert_eq!(to[1][0], o.endpoint());
    assert_eq!((to[1][1].as_str(), to[1][3].as_str()), ("true", ""));
    assert_eq!((tr[1][1].as_str(), tr[1][3].as_str()), ("true", ""));
    // etcdctl prints the plain health line on stderr.
    for s in [&o, &r] {
        let c = ctl(s, &["endpoint", "health"]);
        assert_eq!((c.code, c.out.as_str()), (0, ""), "{:?}", s.kind);
        assert!(
            c.err.starts_with(&format!(
                "{} is healthy: successfully committed proposal: took = ",
                s.endpoint()
            )),
            "{:?}: {c:?}",
            s.kind
        );
    }

    let mo = ctl(&o, &["member", "list", "-w", "table"]);
    let mr = ctl(&r, &["member", "list", "-w", "table"]);
    let (to, tr) = (table(&mo.out), table(&mr.out));
    assert_eq!(to[0], tr[0], "column titles");
    assert_eq!(to.len(), 2, "one member: {mo:?}");
    let peer = format!("http://127.0.0.1:{}", o.peer_port);
    assert_eq!(
        to[1][1..],
        ["started", "default", &peer, &o.endpoint(), "false"]
    );
    let peer_r = format!("http://127.0.0.1:{}", r.peer_port);
    assert_eq!(
        tr[1][1..],
        ["started", "default", &peer_r, &r.endpoint(), "false"]
    );
    // etcd prints a member ID as `%x`: lower-case hex without leading zeros.
    let id = &to[1][0];
    assert!(
        u64::from_str_radix(id, 16).is_ok_and(|v| v != 0)
            && id.len() <= 16
            && !id.starts_with('0')
            && id.chars().all(|c| !c.is_ascii_uppercase()),
        "member ID {mo:?}"
    );
}

#[test]
fn snapshot_save() {
    let (o, r) = pair(&[]);
    same(&o, &r, &["put", "k", "v"]);
    for s in [&o, &r] {
        let path = s.dir.path().join("backup.db");
        let p = path.display().to_string();
        let c = ctl(s, &["snapshot", "save", &p]);
        assert_eq!(
            (c.code, c.out.as_str()),
            (0, format!("Snapshot saved at {p}\n").as_str()),
            "{:?}: {c:?}",
            s.kind
        );
        let len = std::fs::metadata(&path).expect("snapshot file").len();
        assert!(len > 0);
        // etcdctl checks that a snapshot ends with a SHA-256 after whole
        // 512-byte blocks.
        assert_eq!(len % 512, 32, "{:?}", s.kind);
    }
    same_state(&o, &r);
}

#[test]
fn bad_input_is_refused_without_change() {
    let (o, r) = pair(&["--max-request-bytes", "1024", "--max-txn-ops", "2"]);
    same(&o, &r, &["put", "k", "v"]);
    let check = |args: &[&str], stdin: Option<&str>, want: &str| {
        let before = (revision(&o), dump(&o));
        let c = same_in(&o, &r, args, stdin);
        assert_ne!(c.code, 0, "{args:?}: {c:?}");
        assert_eq!(c.out, "", "{args:?}");
        assert_eq!(c.err, format!("Error: {want}\n"), "{args:?}");
        assert_eq!((revision(&o), dump(&o)), before, "{args:?} changed state");
        same_state(&o, &r);
    };
    let big = "x".repeat(2048);
    check(
        &["put", "k", &big],
        None,
        "etcdserver: request is too large",
    );
    check(&["put", "", "v"], None, "etcdserver: key is not provided");
    check(
        &["txn"],
        Some("\nput \"\" v\n\n\n"),
        "etcdserver: key is not provided",
    );
    check(
        &["txn"],
        Some("\nput d 1\nput d 2\n\n\n"),
        "etcdserver: duplicate key given in txn request",
    );
    check(
        &["txn"],
        Some("\nput a 1\nput b 2\nput c 3\n\n\n"),
        "etcdserver: too many operations in txn request",
    );
    check(
        &["get", "k", "--rev", "1000"],
        None,
        "etcdserver: mvcc: required revision is a future revision",
    );
    check(
        &["put", "--lease=1234abcd", "k", "leased"],
        None,
        "etcdserver: requested lease not found",
    );
    // Two operations are within the limit.
    let c = same_in(&o, &r, &["txn"], Some("\nput a 1\nput b 2\n\n\n"));
    assert_eq!(c.out, "SUCCESS\n\nOK\n\nOK\n");
    same_state(&o, &r);
    same(&o, &r, &["put", "k", "v2"]);
    same(&o, &r, &["compaction", "4"]);
    check(
        &["get", "k", "--rev", "2"],
        None,
        "etcdserver: mvcc: required revision has been compacted",
    );
}

/// A plain HTTP/1.1 GET; returns (status code, body).
fn http_get(s: &Server, path: &str) -> (u16, String) {
    let mut c = TcpStream::connect(("127.0.0.1", s.client_port)).expect("connect");
    c.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
        s.client_port
    )
    .expect("send");
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("header end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[test]
fn http_endpoints() {
    let (o, r) = pair(&[]);
    same(&o, &r, &["put", "k", "v"]);
    for s in [&o, &r] {
        let (code, body) = http_get(s, "/health");
        assert_eq!(code, 200, "{:?}", s.kind);
        let v: Value = serde_json::from_str(&body).expect("health JSON");
        assert_eq!(v["health"], "true", "{:?}: {body}", s.kind);

        let (code, body) = http_get(s, "/version");
        assert_eq!(code, 200);
        let v: Value = serde_json::from_str(&body).expect("version JSON");
        let mut keys: Vec<&String> = v.as_object().expect("object").keys().collect();
        keys.sort();
        assert_eq!(keys, ["etcdcluster", "etcdserver"], "{body}");

        let (code, body) = http_get(s, "/metrics");
        assert_eq!(code, 200);
        for name in [
            "etcd_server_has_leader 1",
            "etcd_mvcc_db_total_size_in_bytes ",
            "etcd_disk_wal_fsync_duration_seconds_bucket{",
            "grpc_server_handled_total{",
            "etcd_server_proposals_committed_total ",
        ] {
            assert!(
                body.lines().any(|l| l.starts_with(name)),
                "{:?}: /metrics has no {name:?}",
                s.kind
            );
        }
    }
    // We follow etcd 3.5's /version; Debian's etcd is 3.4.
    let v: Value = serde_json::from_str(&http_get(&o, "/version").1).expect("JSON");
    assert!(
        v["etcdserver"]
            .as_str()
            .is_some_and(|s| s.starts_with("3.5."))
    );
    assert_eq!(v["etcdcluster"], "3.5.0");
}

#[test]
fn malformed_conf_file_line_stops_the_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = dir.path().join("etcd.conf");
    std::fs::write(
        &conf,
        "# comment\nETCD_NAME=\"unterminated\nETCD_DATA_DIR=/tmp/x\n",
    )
    .expect("write conf");
    let conf_s = conf.display().to_string();
    let out = Server::run_to_exit(&[], &[("ETCD_CONF_FILE", &conf_s)], dir.path());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains(&format!("{conf_s}:2: ETCD_NAME")), "{text}");
    assert!(!text.contains("panicked at"), "{text}");

    std::fs::write(&conf, "ETCD_NAME=ok\n\n\nETCD_NO_SUCH_SETTING=1\n").expect("write conf");
    let out = Server::run_to_exit(&[], &[("ETCD_CONF_FILE", &conf_s)], dir.path());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!("{conf_s}:4: unknown key ETCD_NO_SUCH_SETTING")),
        "{text}"
    );
}

/// Flips the bytes of 256-byte spans every 16 KiB through `path`, the middle
/// included. A small database file is mostly unused space (the middle alone
/// is often all zeros), so the spans make sure live pages are hit too.
fn flip_spans(path: &Path) {
    let mut data = std::fs::read(path).expect("read db");
    let mid = data.len() / 2;
    let starts: std::collections::BTreeSet<usize> =
        (8192..data.len()).step_by(16 * 1024).chain([mid]).collect();
    for start in starts {
        let end = (start + 256).min(data.len());
        for b in &mut data[start..end] {
            *b = !*b;
        }
    }
    std::fs::write(path, data).expect("write db");
}

#[test]
fn corrupt_data_file_is_reported_not_panicked_on() {
    let mut s = Server::start(&[]);
    for i in 0..200 {
        s.ctl_ok(&["put", &format!("key-{i:04}"), &"v".repeat(200)]);
    }
    let st = s.terminate().expect("stopped");
    assert!(st.success(), "SIGTERM exit: {st}\n{}", s.log());
    let db = s.data_dir().join("member").join("snap").join("db.redb");
    assert!(db.exists(), "{}", db.display());
    flip_spans(&db);

    let out = crate::harness::run_alone_to_exit(&s.data_dir(), "http", &[], s.dir.path());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "started on a corrupt file:\n{text}");
    assert!(text.contains("db.redb"), "{text}");
    assert!(text.to_lowercase().contains("corrupt"), "{text}");
    assert!(!text.contains("panicked at"), "{text}");
}
