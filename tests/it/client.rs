//! Every RPC through the `etcd-client` crate (and, where that crate hides a field,
//! through the generated tonic clients), asserting exact results: revisions,
//! versions, counts, error codes and texts, watch event streams.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use etcd_client::{
    AlarmAction, AlarmOptions, AlarmType, Client, CompactionOptions, Compare, CompareOp,
    DeleteOptions, Event, EventType, GetOptions, GetResponse, KeyValue, LeaseGrantOptions,
    LeaseTimeToLiveOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
    WatchFilterType, WatchOptions, WatchResponse, WatchStream,
};
use tonic::Code;

use crate::harness::{Server, wait_until};

const WAIT: Duration = Duration::from_secs(20);

async fn connect(srv: &Server) -> Client {
    Client::connect([srv.endpoint()], None)
        .await
        .expect("connect etcd-client")
}

/// The gRPC status of a failed call; panics when the call succeeded.
fn status<T: std::fmt::Debug>(r: Result<T, etcd_client::Error>) -> tonic::Status {
    match r {
        Err(etcd_client::Error::GRpcStatus(s)) => s,
        other => panic!("expected a gRPC error status, got {other:?}"),
    }
}

fn assert_err<T: std::fmt::Debug>(r: Result<T, etcd_client::Error>, code: Code, msg: &str) {
    let s = status(r);
    assert_eq!((s.code(), s.message()), (code, msg), "status {s:?}");
}

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// (key, value, create_revision, mod_revision, version)
fn kv_t(kv: &KeyValue) -> (String, String, i64, i64, i64) {
    (
        s(kv.key()),
        s(kv.value()),
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
    )
}

/// A Range that must succeed.
async fn get(c: &mut Client, key: &str, opts: GetOptions) -> GetResponse {
    c.get(key, Some(opts)).await.expect("get")
}

fn keys(r: &GetResponse) -> Vec<String> {
    r.kvs().iter().map(|kv| s(kv.key())).collect()
}

fn rev_of(r: &GetResponse) -> i64 {
    r.header().expect("header").revision()
}

fn file_size(srv: &Server) -> u64 {
    std::fs::metadata(srv.data_dir().join("member/snap/db.redb"))
        .expect("db file")
        .len()
}

/// (type, key, mod_revision, value)
type Ev = (EventType, String, i64, String);

fn ev(e: &Event) -> Ev {
    let kv = e.kv().expect("event kv");
    (
        e.event_type(),
        s(kv.key()),
        kv.mod_revision(),
        s(kv.value()),
    )
}

fn put_ev(k: &str, rev: i64, v: &str) -> Ev {
    (EventType::Put, k.into(), rev, v.into())
}

fn del_ev(k: &str, rev: i64) -> Ev {
    (EventType::Delete, k.into(), rev, String::new())
}

async fn next_msg(w: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(WAIT, w.message())
        .await
        .expect("a watch response in time")
        .expect("watch stream error")
        .expect("watch stream closed")
}

/// Reads the response to a create request and returns its watch ID.
async fn created(w: &mut WatchStream) -> i64 {
    let r = next_msg(w).await;
    assert!(r.created(), "expected a created response, got {r:?}");
    assert!(!r.canceled(), "watch refused: {r:?}");
    r.watch_id()
}

/// Reads until `want` events in total arrived; returns them per watch ID.
async fn collect_raw(w: &mut WatchStream, want: usize) -> BTreeMap<i64, Vec<Event>> {
    let mut out: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
    let mut n = 0;
    while n < want {
        let r = next_msg(w).await;
        assert!(
            !r.created() && !r.canceled(),
            "unexpected control response {r:?}"
        );
        for e in r.events() {
            out.entry(r.watch_id()).or_default().push(e.clone());
            n += 1;
        }
    }
    out
}

async fn collect(w: &mut WatchStream, want: usize) -> BTreeMap<i64, Vec<Ev>> {
    collect_raw(w, want)
        .await
        .into_iter()
        .map(|(id, evs)| (id, evs.iter().map(ev).collect()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_range_options() {
    let srv = Server::start(&[]);
    let mut c = connect(&srv).await;
    for (i, (k, v)) in [
        ("a", "1"),
        ("b", "2"),
        ("c", "3"),
        ("d", "4"),
        ("foo", "x"),
        ("foo1", "y"),
        ("foo2", "z"),
        ("a", "10"),
        ("c", "0"),
    ]
    .iter()
    .enumerate()
    {
        let r = c.put(*k, *v, None).await.expect("put");
        assert_eq!(r.header().expect("header").revision(), i as i64 + 2);
    }

    // Single key.
    let r = c.get("a", None).await.expect("get");
    assert_eq!(r.kvs().len(), 1);
    assert_eq!(kv_t(&r.kvs()[0]), ("a".into(), "10".into(), 2, 9, 2));
    assert_eq!((r.count(), r.more(), rev_of(&r)), (1, false, 10));
    let r = c.get("nope", None).await.expect("get");
    assert_eq!((r.kvs().len(), r.count(), rev_of(&r)), (0, 0, 10));

    // Reads at past revisions.
    let r = get(&mut c, "a", GetOptions::new().with_revision(2)).await;
    assert_eq!(kv_t(&r.kvs()[0]), ("a".into(), "1".into(), 2, 2, 1));
    assert_eq!(rev_of(&r), 10);
    let r = get(&mut c, "a", GetOptions::new().with_revision(1)).await;
    assert_eq!((r.kvs().len(), r.count()), (0, 0));
    let r = get(
        &mut c,
        "",
        GetOptions::new().with_all_keys().with_revision(5),
    )
    .await;
    assert_eq!(keys(&r), ["a", "b", "c", "d"]);
    assert_eq!(kv_t(&r.kvs()[2]), ("c".into(), "3".into(), 4, 4, 1));
    let r = get(
        &mut c,
        "",
        GetOptions::new()
            .with_all_keys()
            .with_revision(5)
            .with_limit(3),
    )
    .await;
    assert_eq!(keys(&r), ["a", "b", "c"]);
    assert_eq!((r.count(), r.more()), (4, true));

    // Ranges.
    let r = get(&mut c, "a", GetOptions::new().with_range("c")).await;
    assert_eq!((keys(&r), r.count()), (vec!["a".into(), "b".into()], 2));
    let r = get(&mut c, "foo", GetOptions::new().with_prefix()).await;
    assert_eq!(keys(&r), ["foo", "foo1", "foo2"]);
    assert_eq!(r.count(), 3);
    let r = get(&mut c, "c", GetOptions::new().with_from_key()).await;
    assert_eq!(keys(&r), ["c", "d", "foo", "foo1", "foo2"]);
    let r = get(&mut c, "c", GetOptions::new().with_range(vec![0u8])).await;
    assert_eq!(keys(&r), ["c", "d", "foo", "foo1", "foo2"]);
    assert_eq!(r.count(), 5);

    // Limits, `more` and `count`.
    let all = || GetOptions::new().with_all_keys();
    let r = get(&mut c, "", all().with_limit(2)).await;
    assert_eq!(keys(&r), ["a", "b"]);
    assert_eq!((r.count(), r.more()), (7, true));
    let r = get(&mut c, "", all().with_limit(7)).await;
    assert_eq!((r.kvs().len(), r.count(), r.more()), (7, 7, false));
    let r = get(&mut c, "", all().with_limit(6)).await;
    assert_eq!((r.kvs().len(), r.count(), r.more()), (6, 7, true));

    // Sorting (a target other than KEY with order NONE sorts ascending).
    let by_value = ["c", "a", "b", "d", "foo", "foo1", "foo2"];
    let descending = ["foo2", "foo1", "foo", "d", "c", "b", "a"];
    for (target, order, want) in [
        (
            SortTarget::Mod,
            SortOrder::Descend,
            ["c", "a", "foo2", "foo1", "foo", "d", "b"],
        ),
        (SortTarget::Key, SortOrder::Descend, descending),
        (SortTarget::Value, SortOrder::Ascend, by_value),
        (SortTarget::Value, SortOrder::None, by_value),
        (SortTarget::Create, SortOrder::Descend, descending),
    ] {
        let r = get(&mut c, "", all().with_sort(target, order)).await;
        assert_eq!(keys(&r), want, "{target:?} {order:?}");
    }
    let r = get(
        &mut c,
        "",
        all()
            .with_sort(SortTarget::Mod, SortOrder::Descend)
            .with_limit(3),
    )
    .await;
    assert_eq!(keys(&r), ["c", "a", "foo2"]);
    assert_eq!((r.count(), r.more()), (7, true));
    let r = get(
        &mut c,
        "",
        all()
            .with_sort(SortTarget::Version, SortOrder::Descend)
            .with_limit(2),
    )
    .await;
    let top: BTreeSet<String> = keys(&r).into_iter().collect();
    assert_eq!(top, ["a".to_string(), "c".to_string()].into());
    assert_eq!((r.count(), r.more()), (7, true));

    // Serializable, keys only, count only.
    let r = get(&mut c, "a", GetOptions::new().with_serializable()).await;
    assert_eq!(kv_t(&r.kvs()[0]), ("a".into(), "10".into(), 2, 9, 2));
    assert_eq!(rev_of(&r), 10);
    let r = get(&mut c, "", all().with_keys_only()).await;
    assert_eq!(keys(&r), ["a", "b", "c", "d", "foo", "foo1", "foo2"]);
    assert!(r.kvs().iter().all(|kv| kv.value().is_empty()));
    assert_eq!(kv_t(&r.kvs()[0]), ("a".into(), "".into(), 2, 9, 2));
    let r = get(&mut c, "", all().with_count_only()).await;
    assert_eq!((r.kvs().len(), r.count(), r.more()), (0, 7, false));
    let r = get(
        &mut c,
        "foo",
        GetOptions::new().with_prefix().with_count_only(),
    )
    .await;
    assert_eq!((r.kvs().len(), r.count()), (0, 3));

    // Revision filters; `count` is the size of the range before filtering.
    let r = get(&mut c, "", all().with_min_mod_revision(7)).await;
    assert_eq!(keys(&r), ["a", "c", "foo1", "foo2"]);
    assert_eq!(r.count(), 7);
    let r = get(&mut c, "", all().with_max_mod_revision(5)).await;
    assert_eq!(keys(&r), ["b", "d"]);
    let r = get(
        &mut c,
        "",
        all()
            .with_min_create_revision(4)
            .with_max_create_revision(6),
    )
    .await;
    assert_eq!(keys(&r), ["c", "d", "foo"]);
    let r = get(&mut c, "", all().with_min_mod_revision(7).with_limit(2)).await;
    assert_eq!(keys(&r), ["a", "c"]);
    assert_eq!((r.count(), r.more()), (7, true));

    // Errors.
    assert_err(
        c.get("a", Some(GetOptions::new().with_revision(11))).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    assert_err(
        c.get("", None).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_delete_options() {
    let srv = Server::start(&[]);
    let mut c = connect(&srv).await;
    let l = 0x1234;
    let g = c
        .lease_grant(60, Some(LeaseGrantOptions::new().with_id(l)))
        .await
        .expect("grant");
    assert_eq!((g.id(), g.ttl()), (l, 60));

    let r = c
        .put("k", "v1", Some(PutOptions::new().with_lease(l)))
        .await
        .expect("put");
    assert_eq!(r.header().expect("header").revision(), 2);
    assert!(r.prev_key().is_none());
    let got = c.get("k", None).await.expect("get");
    assert_eq!(got.kvs()[0].lease(), l);

    let r = c
        .put("k", "v2", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put");
    assert_eq!(r.header().expect("header").revision(), 3);
    let prev = r.prev_key().expect("prev kv");
    assert_eq!(kv_t(prev), ("k".into(), "v1".into(), 2, 2, 1));
    assert_eq!(prev.lease(), l);
    // A put without a lease detaches the key.
    let got = c.get("k", None).await.expect("get");
    assert_eq!(got.kvs()[0].lease(), 0);
    let ttl = c
        .lease_time_to_live(l, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("ttl");
    assert!(ttl.keys().is_empty(), "keys {:?}", ttl.keys());

    // ignore_value: keeps the value, takes the new lease.
    let r = c
        .put(
            "k",
            "",
            Some(PutOptions::new().with_ignore_value().with_lease(l)),
        )
        .await
        .expect("put");
    assert_eq!(r.header().expect("header").revision(), 4);
    let got = c.get("k", None).await.expect("get");
    assert_eq!(kv_t(&got.kvs()[0]), ("k".into(), "v2".into(), 2, 4, 3));
    assert_eq!(got.kvs()[0].lease(), l);

    // ignore_lease: keeps the lease, takes the new value.
    let r = c
        .put(
            "k",
            "v4",
            Some(PutOptions::new().with_ignore_lease().with_prev_key()),
        )
        .await
        .expect("put");
    assert_eq!(r.header().expect("header").revision(), 5);
    assert_eq!(
        kv_t(r.prev_key().expect("prev")),
        ("k".into(), "v2".into(), 2, 4, 3)
    );
    let got = c.get("k", None).await.expect("get");
    assert_eq!(kv_t(&got.kvs()[0]), ("k".into(), "v4".into(), 2, 5, 4));
    assert_eq!(got.kvs()[0].lease(), l);
    let ttl = c
        .lease_time_to_live(l, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("ttl");
    assert_eq!(ttl.keys(), [b"k".to_vec()]);

    // Both flags at once keep value and lease.
    let r = c
        .put(
            "k",
            "",
            Some(PutOptions::new().with_ignore_lease().with_ignore_value()),
        )
        .await
        .expect("put");
    assert_eq!(r.header().expect("header").revision(), 6);
    let got = c.get("k", None).await.expect("get");
    assert_eq!(kv_t(&got.kvs()[0]), ("k".into(), "v4".into(), 2, 6, 5));
    assert_eq!(got.kvs()[0].lease(), l);

    // Errors, none of which writes anything.
    assert_err(
        c.put("missing", "", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    assert_err(
        c.put("missing", "v", Some(PutOptions::new().with_ignore_lease()))
            .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    assert_err(
        c.put("k", "v", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    assert_err(
        c.put(
            "k",
            "v",
            Some(PutOptions::new().with_ignore_lease().with_lease(l)),
        )
        .await,
        Code::InvalidArgument,
        "etcdserver: lease is provided",
    );
    assert_err(
        c.put("k", "v", Some(PutOptions::new().with_lease(0x999)))
            .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    assert_err(
        c.put("", "v", None).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    let got = c.get("missing", None).await.expect("get");
    assert_eq!((got.count(), rev_of(&got)), (0, 6));

    // DeleteRange with and without prev_kv.
    for (i, k) in ["x1", "x2", "x3", "y"].iter().enumerate() {
        let r = c.put(*k, format!("v{i}"), None).await.expect("put");
        assert_eq!(r.header().expect("header").revision(), 7 + i as i64);
    }
    let d = c
        .delete(
            "x",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("delete");
    assert_eq!(d.deleted(), 3);
    assert_eq!(d.header().expect("header").revision(), 11);
    let prevs: Vec<_> = d.prev_kvs().iter().map(kv_t).collect();
    assert_eq!(
        prevs,
        [
            ("x1".into(), "v0".into(), 7, 7, 1),
            ("x2".into(), "v1".into(), 8, 8, 1),
            ("x3".into(), "v2".into(), 9, 9, 1),
        ]
    );
    let d = c.delete("y", None).await.expect("delete");
    assert_eq!((d.deleted(), d.prev_kvs().len()), (1, 0));
    assert_eq!(d.header().expect("header").revision(), 12);
    // Deleting nothing does not create a revision.
    let d = c
        .delete(
            "x",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("delete");
    assert_eq!((d.deleted(), d.prev_kvs().len()), (0, 0));
    assert_eq!(d.header().expect("header").revision(), 12);
    // A deleted leased key leaves its lease.
    let d = c
        .delete("k", Some(DeleteOptions::new().with_prev_key()))
        .await
        .expect("delete");
    assert_eq!(d.prev_kvs()[0].lease(), l);
    assert_eq!(d.header().expect("header").revision(), 13);
    let ttl = c
        .lease_time_to_live(l, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("ttl");
    assert!(ttl.keys().is_empty());
    // Range deletes, from-key deletes.
    for k in ["r1", "r2", "r3"] {
        c.put(k, "v", None).await.expect("put");
    }
    let d = c
        .delete("r1", Some(DeleteOptions::new().with_range("r3")))
        .await
        .expect("delete");
    assert_eq!(d.deleted(), 2);
    assert_eq!(d.header().expect("header").revision(), 17);
    let d = c
        .delete("r", Some(DeleteOptions::new().with_from_key()))
        .await
        .expect("delete");
    assert_eq!(d.deleted(), 1);
    let r = get(&mut c, "", GetOptions::new().with_all_keys()).await;
    assert_eq!((r.count(), rev_of(&r)), (0, 18));
}

async fn txn_ok(c: &mut Client, cmp: Compare) -> bool {
    let r = c
        .txn(Txn::new().when([cmp]).and_then([TxnOp::get("t1", None)]))
        .await
        .expect("txn");
    r.succeeded()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_compares_and_revisions() {
    let srv = Server::start(&["--max-txn-ops", "3"]);
    let mut c = connect(&srv).await;
    let l = c
        .lease_grant(100, Some(LeaseGrantOptions::new().with_id(77)))
        .await
        .expect("grant")
        .id();
    c.put("t1", "a", None).await.expect("put"); // 2
    c.put("t1", "b", None).await.expect("put"); // 3
    c.put("t2", "c", Some(PutOptions::new().with_lease(l)))
        .await
        .expect("put"); // 4
    use CompareOp::*;
    let cases: Vec<(Compare, bool)> = vec![
        (Compare::version("t1", Equal, 2), true),
        (Compare::version("t1", NotEqual, 2), false),
        (Compare::version("t1", NotEqual, 3), true),
        (Compare::version("t1", Greater, 1), true),
        (Compare::version("t1", Greater, 2), false),
        (Compare::version("t1", Less, 3), true),
        (Compare::version("t1", Less, 2), false),
        (Compare::create_revision("t1", Equal, 2), true),
        (Compare::create_revision("t1", Greater, 2), false),
        (Compare::create_revision("t1", Greater, 1), true),
        (Compare::create_revision("t1", Less, 3), true),
        (Compare::create_revision("t1", NotEqual, 2), false),
        (Compare::mod_revision("t1", Equal, 3), true),
        (Compare::mod_revision("t1", NotEqual, 3), false),
        (Compare::mod_revision("t1", Greater, 2), true),
        (Compare::mod_revision("t1", Less, 3), false),
        (Compare::mod_revision("t1", Less, 4), true),
        (Compare::value("t1", Equal, "b"), true),
        (Compare::value("t1", Equal, "a"), false),
        (Compare::value("t1", NotEqual, "b"), false),
        (Compare::value("t1", NotEqual, "a"), true),
        (Compare::value("t1", Greater, "a"), true),
        (Compare::value("t1", Greater, "b"), false),
        (Compare::value("t1", Less, "c"), true),
        (Compare::value("t1", Less, "b"), false),
        (Compare::lease("t2", Equal, l), true),
        (Compare::lease("t2", NotEqual, l), false),
        (Compare::lease("t2", Greater, l - 1), true),
        (Compare::lease("t2", Less, l), false),
        (Compare::lease("t2", Less, l + 1), true),
        (Compare::lease("t1", Equal, 0), true),
        // A missing key compares as a zero KeyValue, except on its value.
        (Compare::version("missing", Equal, 0), true),
        (Compare::create_revision("missing", Equal, 0), true),
        (Compare::mod_revision("missing", Less, 1), true),
        (Compare::lease("missing", Equal, 0), true),
        (Compare::value("missing", Equal, ""), false),
        (Compare::value("missing", NotEqual, "x"), false),
    ];
    for (cmp, want) in cases {
        let d = format!("{cmp:?}");
        assert_eq!(txn_ok(&mut c, cmp).await, want, "{d}");
    }
    // Read-only txns do not create revisions.
    let r = c.get("t1", None).await.expect("get");
    assert_eq!(rev_of(&r), 4);

    // Several compares: all must hold.
    let r = c
        .txn(
            Txn::new()
                .when([
                    Compare::version("t1", Equal, 2),
                    Compare::value("t2", Equal, "c"),
                    Compare::lease("t2", Equal, l),
                ])
                .and_then([TxnOp::get("t1", None)])
                .or_else([TxnOp::get("t2", None)]),
        )
        .await
        .expect("txn");
    assert!(r.succeeded());
    let r = c
        .txn(
            Txn::new()
                .when([
                    Compare::version("t1", Equal, 2),
                    Compare::value("t2", Equal, "nope"),
                ])
                .and_then([TxnOp::get("t1", None)])
                .or_else([TxnOp::get("t2", None)]),
        )
        .await
        .expect("txn");
    assert!(!r.succeeded());
    match &r.op_responses()[..] {
        [TxnOpResponse::Get(g)] => assert_eq!(keys(g), ["t2"]),
        other => panic!("unexpected responses {other:?}"),
    }

    // Compares over a range.
    c.put("r/1", "1", None).await.expect("put"); // 5
    c.put("r/2", "1", None).await.expect("put"); // 6
    c.put("r/3", "1", None).await.expect("put"); // 7
    assert!(txn_ok(&mut c, Compare::version("r/", Equal, 1).with_prefix()).await);
    assert!(txn_ok(&mut c, Compare::value("r/", Equal, "1").with_prefix()).await);
    assert!(
        txn_ok(
            &mut c,
            Compare::mod_revision("r/1", Less, 7).with_range("r/3")
        )
        .await
    );
    assert!(
        !txn_ok(
            &mut c,
            Compare::mod_revision("r/1", Less, 7).with_range("r/4")
        )
        .await
    );
    assert!(
        txn_ok(
            &mut c,
            Compare::create_revision("r/2", Greater, 5).with_range("s")
        )
        .await
    );
    // "\0" as range end: every key from r/2 on, t1 (created at 2) included.
    assert!(
        txn_ok(
            &mut c,
            Compare::create_revision("r/2", Greater, 1).with_range(vec![0u8])
        )
        .await
    );
    assert!(
        !txn_ok(
            &mut c,
            Compare::create_revision("r/2", Greater, 2).with_range(vec![0u8])
        )
        .await
    );
    c.put("r/2", "2", None).await.expect("put"); // 8
    assert!(!txn_ok(&mut c, Compare::version("r/", Equal, 1).with_prefix()).await);
    assert!(txn_ok(&mut c, Compare::version("r/", Greater, 0).with_prefix()).await);
    assert!(!txn_ok(&mut c, Compare::value("r/", Equal, "1").with_prefix()).await);
    // An empty range compares as a missing key.
    assert!(txn_ok(&mut c, Compare::version("s/", Equal, 0).with_prefix()).await);
    assert!(!txn_ok(&mut c, Compare::value("s/", Equal, "").with_prefix()).await);

    // One revision per txn: every write shares it; reads see the txn's own writes.
    let r = c
        .txn(
            Txn::new()
                .when([Compare::version("t1", Equal, 2)])
                .and_then([
                    TxnOp::put("t3", "x", None),
                    TxnOp::put("t4", "y", Some(PutOptions::new().with_prev_key())),
                    TxnOp::get("t", Some(GetOptions::new().with_prefix())),
                ]),
        )
        .await
        .expect("txn");
    assert!(r.succeeded());
    assert_eq!(r.header().expect("header").revision(), 9);
    let ops = r.op_responses();
    assert_eq!(ops.len(), 3);
    match &ops[..] {
        [
            TxnOpResponse::Put(p1),
            TxnOpResponse::Put(p2),
            TxnOpResponse::Get(g),
        ] => {
            assert_eq!(p1.header().expect("header").revision(), 9);
            assert_eq!(p2.header().expect("header").revision(), 9);
            assert!(p2.prev_key().is_none());
            assert_eq!(keys(g), ["t1", "t2", "t3", "t4"]);
            assert_eq!(kv_t(&g.kvs()[2]), ("t3".into(), "x".into(), 9, 9, 1));
            assert_eq!(kv_t(&g.kvs()[3]), ("t4".into(), "y".into(), 9, 9, 1));
            assert_eq!(rev_of(g), 9);
        }
        other => panic!("unexpected responses {other:?}"),
    }
    let g = get(&mut c, "t3", GetOptions::new().with_range("t5")).await;
    let mods: Vec<i64> = g.kvs().iter().map(|kv| kv.mod_revision()).collect();
    assert_eq!(mods, [9, 9]);

    // The failure branch runs when a compare fails.
    let r = c
        .txn(
            Txn::new()
                .when([Compare::value("t1", Equal, "zzz")])
                .and_then([TxnOp::put("t5", "then", None)])
                .or_else([
                    TxnOp::put("t5", "else", None),
                    TxnOp::delete("t4", Some(DeleteOptions::new().with_prev_key())),
                ]),
        )
        .await
        .expect("txn");
    assert!(!r.succeeded());
    assert_eq!(r.header().expect("header").revision(), 10);
    match &r.op_responses()[..] {
        [TxnOpResponse::Put(_), TxnOpResponse::Delete(d)] => {
            assert_eq!(d.deleted(), 1);
            assert_eq!(kv_t(&d.prev_kvs()[0]), ("t4".into(), "y".into(), 9, 9, 1));
        }
        other => panic!("unexpected responses {other:?}"),
    }
    let g = c.get("t5", None).await.expect("get");
    assert_eq!(kv_t(&g.kvs()[0]), ("t5".into(), "else".into(), 10, 10, 1));

    // Nested txns: compares of the inner txn see the state before the outer one.
    let inner = Txn::new()
        .when([Compare::version("t3", Equal, 1)])
        .and_then([TxnOp::put("n1", "inner-then", None)])
        .or_else([TxnOp::put("n2", "inner-else", None)]);
    let inner_fail = Txn::new()
        .when([Compare::value("t3", Equal, "nope")])
        .and_then([TxnOp::put("n3", "x", None)])
        .or_else([TxnOp::get("t3", None)]);
    // With --max-txn-ops 3, a nested txn may use what its parent leaves over.
    let r = c
        .txn(
            Txn::new()
                .when([Compare::value("t1", Equal, "b")])
                .and_then([TxnOp::txn(inner), TxnOp::put("n0", "outer", None)]),
        )
        .await
        .expect("txn");
    assert!(r.succeeded());
    assert_eq!(r.header().expect("header").revision(), 11);
    match &r.op_responses()[..] {
        [TxnOpResponse::Txn(t1), TxnOpResponse::Put(_)] => {
            assert!(t1.succeeded());
            assert!(matches!(&t1.op_responses()[..], [TxnOpResponse::Put(_)]));
        }
        other => panic!("unexpected responses {other:?}"),
    }
    let r = c
        .txn(Txn::new().and_then([TxnOp::txn(inner_fail)]))
        .await
        .expect("txn");
    assert!(r.succeeded());
    assert_eq!(r.header().expect("header").revision(), 11);
    match &r.op_responses()[..] {
        [TxnOpResponse::Txn(t2)] => {
            assert!(!t2.succeeded());
            match &t2.op_responses()[..] {
                [TxnOpResponse::Get(g)] => assert_eq!(keys(g), ["t3"]),
                other => panic!("unexpected nested responses {other:?}"),
            }
        }
        other => panic!("unexpected responses {other:?}"),
    }
    assert_err(
        c.txn(Txn::new().and_then([
            TxnOp::put("m1", "1", None),
            TxnOp::put("m2", "1", None),
            TxnOp::txn(Txn::new().and_then([TxnOp::put("m3", "1", None)])),
        ]))
        .await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    assert_err(
        c.txn(Txn::new().and_then([
            TxnOp::put("m1", "1", None),
            TxnOp::txn(
                Txn::new().and_then([TxnOp::put("m2", "1", None), TxnOp::put("m3", "1", None)]),
            ),
        ]))
        .await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    let g = get(&mut c, "n", GetOptions::new().with_prefix()).await;
    assert_eq!(keys(&g), ["n0", "n1"]);
    assert!(g.kvs().iter().all(|kv| kv.mod_revision() == 11));

    // Errors.
    assert_err(
        c.txn(Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]))
            .await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    assert_err(
        c.txn(Txn::new().and_then([
            TxnOp::put("m1", "1", None),
            TxnOp::put("m2", "1", None),
            TxnOp::put("m3", "1", None),
            TxnOp::put("m4", "1", None),
        ]))
        .await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    assert_err(
        c.txn(
            Txn::new()
                .when([
                    Compare::version("a", Equal, 0),
                    Compare::version("b", Equal, 0),
                    Compare::version("c", Equal, 0),
                    Compare::version("d", Equal, 0),
                ])
                .and_then([TxnOp::put("m1", "1", None)]),
        )
        .await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    assert_err(
        c.txn(Txn::new().and_then([TxnOp::get("t1", Some(GetOptions::new().with_revision(100)))]))
            .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    // Three ops is the limit, not over it.
    let r = c
        .txn(Txn::new().and_then([
            TxnOp::put("m1", "1", None),
            TxnOp::put("m2", "1", None),
            TxnOp::put("m3", "1", None),
        ]))
        .await
        .expect("txn of max-txn-ops ops");
    assert_eq!(r.header().expect("header").revision(), 12);
    let g = c.get("m1", None).await.expect("get");
    assert_eq!(rev_of(&g), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction() {
    let srv = Server::start(&[]);
    let mut c = connect(&srv).await;
    for i in 0..5 {
        c.put("c", format!("v{i}"), None).await.expect("put"); // 2..=6
    }
    c.put("other", "o", None).await.expect("put"); // 7
    c.delete("other", None).await.expect("delete"); // 8
    let r = c
        .compact(4, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    assert_eq!(r.header().expect("header").revision(), 8);
    const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
    const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";
    assert_err(
        c.get("c", Some(GetOptions::new().with_revision(3))).await,
        Code::OutOfRange,
        COMPACTED,
    );
    assert_err(
        c.get("c", Some(GetOptions::new().with_revision(1))).await,
        Code::OutOfRange,
        COMPACTED,
    );
    let g = c
        .get("c", Some(GetOptions::new().with_revision(4)))
        .await
        .expect("get at the compacted revision");
    assert_eq!(kv_t(&g.kvs()[0]), ("c".into(), "v2".into(), 2, 4, 3));
    let g = get(&mut c, "c", GetOptions::new().with_revision(5)).await;
    assert_eq!(kv_t(&g.kvs()[0]), ("c".into(), "v3".into(), 2, 5, 4));
    let g = c.get("c", None).await.expect("get");
    assert_eq!(kv_t(&g.kvs()[0]), ("c".into(), "v4".into(), 2, 6, 5));
    let g = get(&mut c, "other", GetOptions::new().with_revision(7)).await;
    assert_eq!(keys(&g), ["other"]);
    assert_err(
        c.get(
            "c",
            Some(GetOptions::new().with_revision(3).with_serializable()),
        )
        .await,
        Code::OutOfRange,
        COMPACTED,
    );
    assert_err(
        c.txn(Txn::new().and_then([TxnOp::get("c", Some(GetOptions::new().with_revision(2)))]))
            .await,
        Code::OutOfRange,
        COMPACTED,
    );
    assert_err(c.compact(4, None).await, Code::OutOfRange, COMPACTED);
    assert_err(c.compact(3, None).await, Code::OutOfRange, COMPACTED);
    assert_err(c.compact(9, None).await, Code::OutOfRange, FUTURE);
    assert_err(c.hash_kv(3).await, Code::OutOfRange, COMPACTED);
    assert_err(c.hash_kv(9).await, Code::OutOfRange, FUTURE);
    // Compacting at the current revision works and keeps the live values.
    let r = c
        .compact(8, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    assert_eq!(r.header().expect("header").revision(), 8);
    let g = get(&mut c, "", GetOptions::new().with_all_keys()).await;
    assert_eq!(keys(&g), ["c"]);
    assert_eq!(kv_t(&g.kvs()[0]), ("c".into(), "v4".into(), 2, 6, 5));
    assert_err(
        c.get("other", Some(GetOptions::new().with_revision(7)))
            .await,
        Code::OutOfRange,
        COMPACTED,
    );
    // Revisions go on from where they were.
    let p = c.put("c", "v5", None).await.expect("put");
    assert_eq!(p.header().expect("header").revision(), 9);
    let g = c.get("c", None).await.expect("get");
    assert_eq!(kv_t(&g.kvs()[0]), ("c".into(), "v5".into(), 2, 9, 6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_many_watchers_on_one_stream() {
    let srv = Server::start(&[]);
    let mut c = connect(&srv).await;
    c.put("w/pre", "p", None).await.expect("put"); // 2

    let mut w = c
        .watch("w/a", Some(WatchOptions::new()))
        .await
        .expect("watch");
    // Server-chosen IDs start at 0.
    assert_eq!(created(&mut w).await, 0);
    w.watch("w/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    assert_eq!(created(&mut w).await, 1);
    w.watch("w/a", Some(WatchOptions::new().with_range("w/c")))
        .await
        .expect("watch");
    assert_eq!(created(&mut w).await, 2);
    w.watch(
        "w/b",
        Some(WatchOptions::new().with_watch_id(100).with_prev_key()),
    )
    .await
    .expect("watch");
    assert_eq!(created(&mut w).await, 100);
    w.watch(
        "w/",
        Some(
            WatchOptions::new()
                .with_prefix()
                .with_filters([WatchFilterType::NoPut]),
        ),
    )
    .await
    .expect("watch");
    assert_eq!(created(&mut w).await, 3);
    w.watch(
        "w/",
        Some(
            WatchOptions::new()
                .with_prefix()
                .with_filters([WatchFilterType::NoDelete]),
        ),
    )
    .await
    .expect("watch");
    assert_eq!(created(&mut w).await, 4);
    w.watch("w/", Some(WatchOptions::new().with_from_key()))
        .await
        .expect("watch");
    assert_eq!(created(&mut w).await, 5);
    // A client-chosen ID that is taken is refused.
    w.watch("w/x", Some(WatchOptions::new().with_watch_id(100)))
        .await
        .expect("watch");
    let r = next_msg(&mut w).await;
    assert!(r.created() && r.canceled(), "{r:?}");
    assert_eq!(r.watch_id(), -1);
    assert_eq!(
        r.cancel_reason(),
        "mvcc: duplicate watch ID provided on the WatchStream"
    );

    c.put("w/a", "1", None).await.expect("put"); // 3
    c.put("w/b", "2", None).await.expect("put"); // 4
    c.delete("w/a", None).await.expect("delete"); // 5
    c.put("w/c", "3", None).await.expect("put"); // 6
    c.put("w/b", "4", None).await.expect("put"); // 7
    c.put("x", "5", None).await.expect("put"); // 8
    let raw = collect_raw(&mut w, 24).await;
    let got: BTreeMap<i64, Vec<Ev>> = raw
        .iter()
        .map(|(id, evs)| (*id, evs.iter().map(ev).collect()))
        .collect();
    let want: BTreeMap<i64, Vec<Ev>> = [
        (0, vec![put_ev("w/a", 3, "1"), del_ev("w/a", 5)]),
        (
            1,
            vec![
                put_ev("w/a", 3, "1"),
                put_ev("w/b", 4, "2"),
                del_ev("w/a", 5),
                put_ev("w/c", 6, "3"),
                put_ev("w/b", 7, "4"),
            ],
        ),
        (
            2,
            vec![
                put_ev("w/a", 3, "1"),
                put_ev("w/b", 4, "2"),
                del_ev("w/a", 5),
                put_ev("w/b", 7, "4"),
            ],
        ),
        (100, vec![put_ev("w/b", 4, "2"), put_ev("w/b", 7, "4")]),
        (3, vec![del_ev("w/a", 5)]),
        (
            4,
            vec![
                put_ev("w/a", 3, "1"),
                put_ev("w/b", 4, "2"),
                put_ev("w/c", 6, "3"),
                put_ev("w/b", 7, "4"),
            ],
        ),
        (
            5,
            vec![
                put_ev("w/a", 3, "1"),
                put_ev("w/b", 4, "2"),
                del_ev("w/a", 5),
                put_ev("w/c", 6, "3"),
                put_ev("w/b", 7, "4"),
                put_ev("x", 8, "5"),
            ],
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);
    // prev_kv only where asked for; a create has none.
    let p = &raw[&100];
    assert!(p[0].prev_kv().is_none());
    assert_eq!(
        kv_t(p[1].prev_kv().expect("prev kv")),
        ("w/b".into(), "2".into(), 4, 4, 1)
    );
    assert!(raw[&1].iter().all(|e| e.prev_kv().is_none()));
    // Event kvs carry versions and create revisions; deletes carry only the key.
    assert_eq!(
        kv_t(raw[&1][4].kv().expect("kv")),
        ("w/b".into(), "4".into(), 4, 7, 2)
    );
    assert_eq!(
        kv_t(raw[&1][2].kv().expect("kv")),
        ("w/a".into(), "".into(), 0, 5, 0)
    );

    // Cancel: the watcher says so and gets nothing more.
    w.cancel(0).await.expect("cancel");
    let r = next_msg(&mut w).await;
    assert!(r.canceled() && !r.created(), "{r:?}");
    assert_eq!(r.watch_id(), 0);
    c.put("w/a", "6", None).await.expect("put"); // 9
    let got = collect(&mut w, 4).await;
    let ids: Vec<i64> = got.keys().copied().collect();
    assert_eq!(ids, [1, 2, 4, 5]);
    assert!(got.values().all(|v| v == &[put_ev("w/a", 9, "6")]));

    // Replay from history, with prev_kv, on another stream.
    let mut h = c
        .watch(
            "w/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(2)
                    .with_prev_key(),
            ),
        )
        .await
        .expect("watch");
    assert_eq!(created(&mut h).await, 0);
    let raw = collect_raw(&mut h, 7).await;
    let evs: Vec<Ev> = raw[&0].iter().map(ev).collect();
    assert_eq!(
        evs,
        [
            put_ev("w/pre", 2, "p"),
            put_ev("w/a", 3, "1"),
            put_ev("w/b", 4, "2"),
            del_ev("w/a", 5),
            put_ev("w/c", 6, "3"),
            put_ev("w/b", 7, "4"),
            put_ev("w/a", 9, "6"),
        ]
    );
    let prevs: Vec<Option<String>> = raw[&0]
        .iter()
        .map(|e| e.prev_kv().map(|kv| s(kv.value())))
        .collect();
    assert_eq!(
        prevs,
        [
            None,
            None,
            None,
            Some("1".into()),
            None,
            Some("2".into()),
            None
        ]
    );
    // Live events follow the replay without a gap.
    c.put("w/d", "7", None).await.expect("put"); // 10
    let got = collect(&mut h, 1).await;
    assert_eq!(got[&0], [put_ev("w/d", 10, "7")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_progress_and_compaction() {
    let srv = Server::start(&["--experimental-watch-progress-notify-interval", "1s"]);
    let mut c = connect(&srv).await;
    for i in 0..5 {
        c.put("k", format!("{i}"), None).await.expect("put"); // 2..=6
    }
    let mut w = c
        .watch("p", Some(WatchOptions::new().with_progress_notify()))
        .await
        .expect("watch");
    let id = created(&mut w).await;
    assert_eq!(id, 0);
    // A periodic progress notification: no events, the current revision.
    let r = next_msg(&mut w).await;
    assert!(
        !r.created() && !r.canceled() && r.events().is_empty(),
        "{r:?}"
    );
    assert_eq!(r.watch_id(), id);
    assert_eq!(r.header().expect("header").revision(), 6);

    // On request: watch ID -1, the revision everything up to has been sent.
    let mut q = c.watch("q", None).await.expect("watch");
    assert_eq!(created(&mut q).await, 0);
    c.put("q", "v", None).await.expect("put"); // 7
    let got = collect(&mut q, 1).await;
    assert_eq!(got[&0], [put_ev("q", 7, "v")]);
    q.request_progress().await.expect("progress");
    let r = next_msg(&mut q).await;
    assert!(
        !r.created() && !r.canceled() && r.events().is_empty(),
        "{r:?}"
    );
    assert_eq!(r.watch_id(), -1);
    assert_eq!(r.header().expect("header").revision(), 7);

    // A start revision below the compaction: created, then cancelled with
    // compact_revision set.
    c.compact(5, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    let mut old = c
        .watch("k", Some(WatchOptions::new().with_start_revision(3)))
        .await
        .expect("watch");
    let r = next_msg(&mut old).await;
    assert!(r.created(), "{r:?}");
    let r = next_msg(&mut old).await;
    assert!(r.canceled(), "{r:?}");
    assert_eq!(r.compact_revision(), 5);
    // The same stream still serves other watchers; the compacted revision itself
    // can be watched from.
    old.watch("k", Some(WatchOptions::new().with_start_revision(5)))
        .await
        .expect("watch");
    let id = created(&mut old).await;
    let got = collect(&mut old, 2).await;
    assert_eq!(got[&id], [put_ev("k", 5, "3"), put_ev("k", 6, "4")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_fragments() {
    use etcd_rs::pb::etcdserverpb::{WatchCreateRequest, WatchRequest, watch_request};
    // etcd splits a fragmenting watcher's responses at --max-request-bytes plus
    // 512 KiB of gRPC overhead: 624288 bytes here.
    let srv = Server::start(&["--max-request-bytes", "100000"]);
    let mut c = connect(&srv).await;
    let mut raw = etcd_rs::pb::etcdserverpb::watch_client::WatchClient::connect(srv.endpoint())
        .await
        .expect("connect");
    for i in 0..8 {
        c.put(format!("g/{i}"), vec![b'v'; 90_000], None)
            .await
            .expect("put");
    }
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let create = |key: &str, fragment: bool| WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: key.into(),
                range_end: b"g0".to_vec(),
                fragment,
                prev_kv: true,
                ..Default::default()
            },
        )),
    };
    tx.send(create("g/", true)).await.expect("send");
    let mut resp = raw
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    let r = tokio::time::timeout(WAIT, resp.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("open");
    assert!(r.created);
    tx.send(create("g/", false)).await.expect("send");
    let r = tokio::time::timeout(WAIT, resp.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("open");
    assert!(r.created);
    assert_eq!(r.watch_id, 1);
    // Ten 1000-byte values in one revision: more than 4096 bytes of events.
    // One revision with eight events of about 90000 bytes each (their prev_kvs).
    let d = c
        .delete("g/", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete");
    assert_eq!(d.deleted(), 8);
    let rev = d.header().expect("header").revision();
    let mut frags: HashMap<i64, Vec<(usize, bool)>> = HashMap::new();
    let mut n = 0;
    while n < 16 {
        let r = tokio::time::timeout(WAIT, resp.message())
            .await
            .expect("in time")
            .expect("ok")
            .expect("open");
        assert!(
            r.events
                .iter()
                .all(|e| e.kv.as_ref().map(|kv| kv.mod_revision) == Some(rev))
        );
        n += r.events.len();
        frags
            .entry(r.watch_id)
            .or_default()
            .push((r.events.len(), r.fragment));
    }
    // The fragmenting watcher: six events fit below the limit, the rest follow
    // in the last (unmarked) response.
    assert_eq!(frags[&0], [(6, true), (2, false)]);
    // The other one got one whole response.
    assert_eq!(frags[&1], [(8, false)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_burst_in_order() {
    const TASKS: usize = 4;
    const PER: usize = 500;
    const TOTAL: usize = TASKS * PER;
    let srv = Server::start(&[]);
    let mut c = connect(&srv).await;
    let mut live = c
        .watch("b/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    assert_eq!(created(&mut live).await, 0);
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let mut kv = c.kv_client();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER {
                kv.put(format!("b/{}", (t * 7 + i) % 50), format!("{t}-{i}"), None)
                    .await
                    .expect("put");
            }
        }));
    }
    // A second stream joins mid-burst from the beginning of history.
    let mut seen = Vec::with_capacity(TOTAL);
    let mut late: Option<WatchStream> = None;
    while seen.len() < TOTAL {
        let r = next_msg(&mut live).await;
        assert_eq!(r.watch_id(), 0);
        seen.extend(r.events().iter().map(ev));
        if late.is_none() && seen.len() >= TOTAL / 3 {
            let mut l = c
                .watch(
                    "b/",
                    Some(WatchOptions::new().with_prefix().with_start_revision(2)),
                )
                .await
                .expect("watch");
            assert_eq!(created(&mut l).await, 0);
            late = Some(l);
        }
    }
    for t in tasks {
        t.await.expect("task");
    }
    let check = |evs: &[Ev]| {
        let revs: Vec<i64> = evs.iter().map(|e| e.2).collect();
        let want: Vec<i64> = (2..2 + TOTAL as i64).collect();
        assert_eq!(revs, want, "events out of order, duplicated or skipped");
        assert!(evs.iter().all(|e| e.0 == EventType::Put));
    };
    check(&seen);
    let mut late = late.expect("late watcher");
    let mut seen2 = Vec::with_capacity(TOTAL);
    while seen2.len() < TOTAL {
        let r = next_msg(&mut late).await;
        seen2.extend(r.events().iter().map(ev));
    }
    check(&seen2);
    assert_eq!(seen, seen2);
    // Values match the store.
    let g = get(&mut c, "b/", GetOptions::new().with_prefix()).await;
    assert_eq!(rev_of(&g), 1 + TOTAL as i64);
    let mut last: HashMap<String, (i64, String)> = HashMap::new();
    for e in &seen {
        last.insert(e.1.clone(), (e.2, e.3.clone()));
    }
    for kv in g.kvs() {
        assert_eq!(
            last[&s(kv.key())],
            (kv.mod_revision(), s(kv.value())),
            "key {}",
            s(kv.key())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases() {
    let srv = Server::start(&[]);
    let mut c = connect(&srv).await;
    let g = c.lease_grant(60, None).await.expect("grant");
    let auto = g.id();
    assert!(auto > 0, "server-chosen lease ID {auto}");
    assert_eq!(g.ttl(), 60);
    assert!(g.error().is_empty());
    let g = c
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x77)))
        .await
        .expect("grant");
    assert_eq!((g.id(), g.ttl()), (0x77, 30));
    assert_err(
        c.lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x77)))
            .await,
        Code::FailedPrecondition,
        "etcdserver: lease already exists",
    );
    assert_err(
        c.lease_grant(9_000_000_001, None).await,
        Code::OutOfRange,
        "etcdserver: too large lease TTL",
    );
    // TTLs are raised to the minimum (1.5 election timeouts, rounded up: 2s).
    let short = c
        .lease_grant(1, Some(LeaseGrantOptions::new().with_id(0x78)))
        .await
        .expect("grant");
    assert_eq!(short.ttl(), 2);
    // Grants do not create revisions.
    let r = c.get("x", None).await.expect("get");
    assert_eq!(rev_of(&r), 1);

    let ids: BTreeSet<i64> = c
        .leases()
        .await
        .expect("leases")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert_eq!(ids, [auto, 0x77, 0x78].into());

    c.put("l/1", "a", Some(PutOptions::new().with_lease(0x77)))
        .await
        .expect("put"); // 2
    c.put("l/2", "b", Some(PutOptions::new().with_lease(0x77)))
        .await
        .expect("put"); // 3
    c.put("l/3", "c", None).await.expect("put"); // 4
    let t = c
        .lease_time_to_live(0x77, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("ttl");
    assert_eq!((t.id(), t.granted_ttl()), (0x77, 30));
    assert!(t.ttl() > 0 && t.ttl() <= 30, "ttl {}", t.ttl());
    let ks: BTreeSet<Vec<u8>> = t.keys().iter().cloned().collect();
    assert_eq!(ks, [b"l/1".to_vec(), b"l/2".to_vec()].into());
    let t = c.lease_time_to_live(0x77, None).await.expect("ttl");
    assert!(t.keys().is_empty());
    let t = c.lease_time_to_live(0x999, None).await.expect("ttl");
    assert_eq!((t.id(), t.ttl()), (0x999, -1));

    // Keep-alive: every renewal answers with the full TTL. The client reads the
    // first answer itself and refuses a TTL of 0.
    let (mut keeper, mut stream) = c.lease_keep_alive(0x77).await.expect("keep alive");
    assert_eq!(keeper.id(), 0x77);
    for i in 0..3 {
        keeper.keep_alive().await.expect("keep alive");
        let r = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap_or_else(|_| panic!("keep-alive response {i} in time"))
            .expect("ok")
            .expect("open");
        assert_eq!((r.id(), r.ttl()), (0x77, 30));
        assert!(r.header().expect("header").revision() >= 4);
    }
    // An unknown lease renews to TTL 0, which the client reports as not found.
    match c.lease_keep_alive(0x999).await {
        Err(etcd_client::Error::LeaseKeepAliveError(m)) => assert_eq!(m, "lease not found"),
        other => panic!("keep-alive of an unknown lease: {other:?}"),
    }

    // Revoke deletes the attached keys in one revision.
    let r = c.lease_revoke(0x77).await.expect("revoke");
    assert_eq!(r.header().expect("header").revision(), 5);
    let g = get(&mut c, "l/", GetOptions::new().with_prefix()).await;
    assert_eq!(keys(&g), ["l/3"]);
    assert_eq!(rev_of(&g), 5);
    let t = c.lease_time_to_live(0x77, None).await.expect("ttl");
    assert_eq!(t.ttl(), -1);
    assert_err(
        c.lease_revoke(0x77).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    // A lease without keys revokes without a revision.
    let r = c.lease_revoke(auto).await.expect("revoke");
    assert_eq!(r.header().expect("header").revision(), 5);
    let ids: BTreeSet<i64> = c
        .leases()
        .await
        .expect("leases")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert_eq!(ids, [0x78].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_deletes_keys_in_one_revision() {
    let srv = Server::start(&[]);
    let mut c = connect(&srv).await;
    let l = c.lease_grant(2, None).await.expect("grant").id();
    for k in ["e/1", "e/2", "e/3"] {
        c.put(k, "v", Some(PutOptions::new().with_lease(l)))
            .await
            .expect("put"); // 2, 3, 4
    }
    c.put("e/4", "kept", None).await.expect("put"); // 5
    let mut w = c
        .watch("e/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    assert_eq!(created(&mut w).await, 0);
    let got = collect(&mut w, 3).await;
    assert_eq!(
        got[&0],
        [del_ev("e/1", 6), del_ev("e/2", 6), del_ev("e/3", 6)]
    );
    let g = get(&mut c, "e/", GetOptions::new().with_prefix()).await;
    assert_eq!(keys(&g), ["e/4"]);
    assert_eq!(rev_of(&g), 6);
    let t = c.lease_time_to_live(l, None).await.expect("ttl");
    assert_eq!(t.ttl(), -1);
    assert!(c.leases().await.expect("leases").leases().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_restart() {
    let mut srv = Server::start(&[]);
    let mut c = connect(&srv).await;
    let l = c
        .lease_grant(100, Some(LeaseGrantOptions::new().with_id(4242)))
        .await
        .expect("grant")
        .id();
    c.put("rk", "v", Some(PutOptions::new().with_lease(l)))
        .await
        .expect("put");
    drop(c);
    srv.restart();
    let mut c = connect(&srv).await;
    let t = c
        .lease_time_to_live(l, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("ttl");
    assert_eq!((t.id(), t.granted_ttl()), (4242, 100));
    assert!(t.ttl() > 90 && t.ttl() <= 100, "ttl {}", t.ttl());
    assert_eq!(t.keys(), [b"rk".to_vec()]);
    let g = c.get("rk", None).await.expect("get");
    assert_eq!(g.kvs()[0].lease(), l);
    // Still revocable after the restart, and its keys go with it.
    c.lease_revoke(l).await.expect("revoke");
    let g = c.get("rk", None).await.expect("get");
    assert_eq!(g.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_status_hash_alarms() {
    let mut srv = Server::start(&[]);
    let mut c = connect(&srv).await;
    let st = c.status().await.expect("status");
    let h = st.header().expect("header");
    assert!(st.version().starts_with("3.5"), "version {}", st.version());
    assert!(st.db_size() > 0);
    assert_eq!(st.leader(), h.member_id());
    assert!(st.raft_term() >= 1);
    assert!(
        st.raft_index() >= st.raft_applied_index() && st.raft_applied_index() > 0,
        "raft_index {} applied {}",
        st.raft_index(),
        st.raft_applied_index()
    );
    assert!(!st.is_learner());
    assert!(st.errors().is_empty());
    let member = h.member_id();

    for i in 0..5 {
        c.put(format!("h{i}"), "v", None).await.expect("put"); // 2..=6
    }
    let h1 = c.hash().await.expect("hash");
    assert_eq!(h1.header().expect("header").revision(), 6);
    assert_eq!(c.hash().await.expect("hash").hash(), h1.hash());
    let kv6 = c.hash_kv(0).await.expect("hash kv");
    assert_eq!(kv6.header().expect("header").revision(), 6);
    assert_eq!(c.hash_kv(6).await.expect("hash kv").hash(), kv6.hash());
    let kv4 = c.hash_kv(4).await.expect("hash kv").hash();
    assert_ne!(kv4, kv6.hash());
    c.put("h9", "v", None).await.expect("put"); // 7
    assert_ne!(c.hash_kv(0).await.expect("hash kv").hash(), kv6.hash());
    assert_eq!(c.hash_kv(6).await.expect("hash kv").hash(), kv6.hash());
    let kv7 = c.hash_kv(7).await.expect("hash kv").hash();
    // Stable across a restart at the same revision.
    drop(c);
    srv.restart();
    let mut c = connect(&srv).await;
    assert_eq!(c.hash_kv(6).await.expect("hash kv").hash(), kv6.hash());
    assert_eq!(c.hash_kv(4).await.expect("hash kv").hash(), kv4);
    let r = c.hash_kv(0).await.expect("hash kv");
    assert_eq!(r.header().expect("header").revision(), 7);
    assert_eq!(r.hash(), kv7);
    let st2 = c.status().await.expect("status");
    assert_eq!(st2.header().expect("header").member_id(), member);
    assert!(st2.raft_applied_index() >= st.raft_applied_index());

    // Alarms: list, activate, deactivate.
    let a = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarm list");
    assert!(a.alarms().is_empty());
    let mut opts = AlarmOptions::new();
    opts.with_member(member);
    let a = c
        .alarm(
            AlarmAction::Activate,
            AlarmType::Nospace,
            Some(opts.clone()),
        )
        .await
        .expect("activate");
    assert_eq!(a.alarms().len(), 1);
    assert_eq!(
        (a.alarms()[0].member_id(), a.alarms()[0].alarm()),
        (member, AlarmType::Nospace)
    );
    let a = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarm list");
    assert_eq!(a.alarms().len(), 1);
    assert_eq!(a.alarms()[0].alarm(), AlarmType::Nospace);
    assert_err(
        c.put("blocked", "v", None).await,
        Code::ResourceExhausted,
        "etcdserver: mvcc: database space exceeded",
    );
    let st = c.status().await.expect("status");
    assert_eq!(st.errors().len(), 1, "{:?}", st.errors());
    // Alarms persist across a restart.
    drop(c);
    srv.restart();
    let mut c = connect(&srv).await;
    let a = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarm list");
    assert_eq!(a.alarms().len(), 1);
    let a = c
        .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(opts))
        .await
        .expect("deactivate");
    assert_eq!(a.alarms().len(), 1);
    let a = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarm list");
    assert!(a.alarms().is_empty());
    let p = c.put("unblocked", "v", None).await.expect("put");
    assert_eq!(p.header().expect("header").revision(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nospace_and_recovery() {
    // An empty member's file is about half a MiB; the quota sits a bit above it.
    let probe = Server::start(&[]);
    let initial = file_size(&probe);
    drop(probe);
    let quota = initial + 512 * 1024;
    let quota_s = quota.to_string();
    let srv = Server::start(&["--quota-backend-bytes", &quota_s]);
    let mut c = connect(&srv).await;
    let st = c.status().await.expect("status");
    assert_eq!(st.db_size_quota(), quota as i64);
    let member = st.header().expect("header").member_id();
    let value = vec![b'x'; 8 * 1024];
    let mut written = 0;
    let err = loop {
        match c
            .put(format!("big/{written:05}"), value.clone(), None)
            .await
        {
            Ok(_) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 2000, "quota never tripped");
    };
    let s = status::<()>(Err(err));
    assert_eq!(
        (s.code(), s.message()),
        (
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded"
        )
    );
    assert!(written > 0);
    let a = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarm list");
    assert_eq!(a.alarms().len(), 1);
    assert_eq!(
        (a.alarms()[0].member_id(), a.alarms()[0].alarm()),
        (member, AlarmType::Nospace)
    );
    // Puts (and txns that put, and lease grants) fail; reads, deletes and
    // compaction work.
    assert_err(
        c.put("small", "v", None).await,
        Code::ResourceExhausted,
        "etcdserver: mvcc: database space exceeded",
    );
    assert_err(
        c.txn(Txn::new().and_then([TxnOp::put("small", "v", None)]))
            .await,
        Code::ResourceExhausted,
        "etcdserver: mvcc: database space exceeded",
    );
    assert_err(
        c.lease_grant(10, None).await,
        Code::ResourceExhausted,
        "etcdserver: mvcc: database space exceeded",
    );
    let g = get(
        &mut c,
        "big/",
        GetOptions::new().with_prefix().with_count_only(),
    )
    .await;
    assert_eq!(g.count(), written);
    let d = c
        .delete("big/", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete");
    assert_eq!(d.deleted(), written);
    let rev = d.header().expect("header").revision();
    c.compact(rev, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    // Still refused until the alarm is disarmed.
    assert_err(
        c.put("small", "v", None).await,
        Code::ResourceExhausted,
        "etcdserver: mvcc: database space exceeded",
    );
    c.defragment().await.expect("defragment");
    let mut opts = AlarmOptions::new();
    opts.with_member(member);
    c.alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(opts))
        .await
        .expect("disarm");
    let p = c.put("small", "v", None).await.expect("put after recovery");
    assert_eq!(p.header().expect("header").revision(), rev + 1);
    let a = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarm list");
    assert!(a.alarms().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defragment_shrinks_file() {
    let srv = Server::start(&[]);
    let c = connect(&srv).await;
    let mut tasks = Vec::new();
    for t in 0..4 {
        let mut kv = c.kv_client();
        tasks.push(tokio::spawn(async move {
            for i in 0..150 {
                kv.put(format!("d/{t}/{i}"), vec![b'z'; 8 * 1024], None)
                    .await
                    .expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let mut c = c;
    let full = file_size(&srv);
    let d = c
        .delete("d/", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete");
    assert_eq!(d.deleted(), 600);
    let rev = d.header().expect("header").revision();
    assert_eq!(rev, 602);
    c.compact(rev, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    let before = file_size(&srv);
    c.defragment().await.expect("defragment");
    let after = file_size(&srv);
    assert!(
        after < before && after < full / 2,
        "file sizes: full {full}, before defragment {before}, after {after}"
    );
    let st = c.status().await.expect("status");
    assert_eq!(st.db_size(), after as i64);
    // The store is intact.
    let p = c.put("d/after", "v", None).await.expect("put");
    assert_eq!(p.header().expect("header").revision(), rev + 1);
    let g = get(&mut c, "d/", GetOptions::new().with_prefix()).await;
    assert_eq!(keys(&g), ["d/after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_stream() {
    use sha2::{Digest, Sha256};
    let srv = Server::start(&[]);
    let mut c = connect(&srv).await;
    for i in 0..100 {
        c.put(format!("s/{i}"), vec![b'q'; 1024], None)
            .await
            .expect("put");
    }
    let mut stream = c.snapshot().await.expect("snapshot");
    let mut blob = Vec::new();
    let mut last_remaining = None;
    let mut parts = 0;
    while let Some(r) = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("in time")
        .expect("snapshot stream")
    {
        blob.extend_from_slice(r.blob());
        last_remaining = Some(r.remaining_bytes());
        parts += 1;
    }
    assert!(parts > 1, "a 100 KiB snapshot comes in several messages");
    assert_eq!(last_remaining, Some(0));
    // etcd's format: a bbolt file (its first meta page's magic number).
    assert_eq!(blob.get(16..20), Some(&0xED0C_DAEDu32.to_le_bytes()[..]));
    assert!(blob.len() > 100 * 1024);
    let (body, sum) = blob.split_at(blob.len() - 32);
    assert_eq!(Sha256::digest(body).as_slice(), sum);
    // No temporary files are left behind.
    wait_until(WAIT, "snapshot temp file removed", || {
        std::fs::read_dir(srv.data_dir().join("member"))
            .map(|d| {
                d.flatten()
                    .all(|e| !e.file_name().to_string_lossy().starts_with("snapshot-"))
            })
            .unwrap_or(false)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_member_list() {
    let mut srv = Server::start(&[]);
    let mut c = connect(&srv).await;
    let m = c.member_list().await.expect("member list");
    let h = m.header().expect("header");
    let (cluster, member) = (h.cluster_id(), h.member_id());
    assert_ne!(cluster, 0);
    assert_ne!(member, 0);
    assert_eq!(m.members().len(), 1);
    let me = &m.members()[0];
    assert_eq!(me.id(), member);
    assert_eq!(me.name(), "default");
    assert_eq!(
        me.peer_urls(),
        [format!("http://127.0.0.1:{}", srv.peer_port)]
    );
    assert_eq!(me.client_urls(), [srv.endpoint()]);
    assert!(!me.is_learner());
    let st = c.status().await.expect("status");
    assert_eq!(st.leader(), member);
    let g = c.get("k", None).await.expect("get");
    let gh = g.header().expect("header");
    assert_eq!((gh.cluster_id(), gh.member_id()), (cluster, member));
    assert!(gh.raft_term() >= 1);
    drop(c);
    srv.restart();
    let mut c = connect(&srv).await;
    let m = c.member_list().await.expect("member list");
    let h = m.header().expect("header");
    assert_eq!((h.cluster_id(), h.member_id()), (cluster, member));
    assert_eq!(m.members()[0].id(), member);
    let p = c.put("k", "v", None).await.expect("put");
    let ph = p.header().expect("header");
    assert_eq!((ph.cluster_id(), ph.member_id()), (cluster, member));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_serving() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let srv = Server::start(&[]);
    let ch = tonic::transport::Endpoint::from_shared(srv.endpoint())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut h = HealthClient::new(ch);
    let r = h
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("check")
        .into_inner();
    assert_eq!(r.status(), ServingStatus::Serving);
}
