//! The HTTP endpoints on the client port: `/health`, `/livez`, `/readyz`,
//! `/version`, `/metrics`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::config::{CLUSTER_VERSION, SERVER_VERSION};
use crate::pb::etcdserverpb::RangeRequest;
use crate::server::EtcdServer;

pub fn router(s: Arc<EtcdServer>) -> axum::Router {
    metrics_router(s).route("/version", get(version))
}

/// What a `--listen-metrics-urls` listener serves, as etcd's metrics
/// listener: `/metrics` and the health endpoints, no gRPC.
pub fn metrics_router(s: Arc<EtcdServer>) -> axum::Router {
    axum::Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/livez/{check}", get(livez_one))
        .route("/readyz", get(readyz))
        .route("/readyz/{check}", get(readyz_one))
        .route("/metrics", get(metrics))
        .with_state(s)
}

/// The values of `key` in a query string, as Go's `url.Values` holds them.
fn query_values<'a>(query: &'a str, key: &str) -> Vec<std::borrow::Cow<'a, str>> {
    query
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key).then(|| percent_decode(v))
        })
        .collect()
}

fn percent_decode(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['%', '+']) {
        return std::borrow::Cow::Borrowed(v);
    }
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match u8::from_str_radix(&v[i + 1..i + 3], 16) {
                Ok(c) => {
                    out.push(c);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn has_key(query: &str, key: &str) -> bool {
    query
        .split('&')
        .any(|kv| kv.split_once('=').map_or(kv, |(k, _)| k) == key)
}

/// Why the member is unhealthy for `/health`, or None: etcd 3.5's checks
/// (alarms not named by `exclude`, a leader unless `serializable=true`, a
/// range read, serializable with `serializable=true`).
pub async fn check(s: &EtcdServer, query: &str) -> Option<String> {
    let excluded = query_values(query, "exclude");
    for a in s.alarms.list() {
        let name = if a.alarm == 1 { "NOSPACE" } else { "CORRUPT" };
        if excluded.iter().any(|e| e == name) {
            continue;
        }
        return Some(format!("ALARM {name}"));
    }
    let serializable = query_values(query, "serializable")
        .first()
        .is_some_and(|v| v == "true");
    if !serializable && s.status.leader.load(Ordering::Relaxed) == 0 {
        return Some("RAFT NO LEADER".into());
    }
    read_check(s, serializable)
        .await
        .err()
        .map(|e| format!("RANGE ERROR:{e}"))
}

/// A range read of one key, linearizable unless `serializable`.
async fn read_check(s: &EtcdServer, serializable: bool) -> Result<(), String> {
    let read = async {
        if !serializable {
            s.read_barrier().await?;
        }
        s.store.range(&RangeRequest {
            key: b"health".to_vec(),
            keys_only: true,
            limit: 1,
            ..Default::default()
        })
    };
    match tokio::time::timeout(s.request_timeout, read).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(crate::error::Error::Timeout.to_string()),
    }
}

async fn health(State(s): State<Arc<EtcdServer>>, RawQuery(q): RawQuery) -> impl IntoResponse {
    let q = q.unwrap_or_default();
    let (code, body) = match check(&s, &q).await {
        None => {
            crate::metrics::HEALTH_SUCCESS.inc();
            (
                StatusCode::OK,
                r#"{"health":"true","reason":""}"#.to_string(),
            )
        }
        Some(reason) => {
            crate::metrics::HEALTH_FAILURES.inc();
            crate::warn!("serving /health false", reason = reason);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(r#"{{"health":"false","reason":"{reason}"}}"#),
            )
        }
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body)
}

const LIVEZ: &[&str] = &["serializable_read"];
const READYZ: &[&str] = &[
    "data_corruption",
    "serializable_read",
    "linearizable_read",
    "non_learner",
];

/// One check of `/livez` or `/readyz`, as etcd 3.5 names them.
async fn run_check(s: &EtcdServer, name: &str) -> Result<(), String> {
    match name {
        "serializable_read" => read_check(s, true).await,
        "linearizable_read" => read_check(s, false).await,
        "data_corruption" => match s.alarms.list().iter().any(|a| a.alarm == 2) {
            true => Err("alarm activated: CORRUPT".into()),
            false => Ok(()),
        },
        "non_learner" => match crate::metrics::IS_LEARNER.get() == 1 {
            true => Err("is learner".into()),
            false => Ok(()),
        },
        _ => Ok(()),
    }
}

/// etcd's `/livez` and `/readyz`: every check not named by `exclude`, the
/// failed ones always listed, all of them with `verbose`.
async fn probe(s: &EtcdServer, kind: &str, checks: &[&str], q: &str) -> (StatusCode, String) {
    let excluded = query_values(q, "exclude");
    let mut failed = false;
    let mut report = String::new();
    for name in checks.iter().filter(|c| !excluded.iter().any(|e| e == *c)) {
        let r = run_check(s, name).await;
        crate::metrics::health_check(kind, name, r.is_ok());
        match r {
            Ok(()) => report.push_str(&format!("[+]{name} ok\n")),
            Err(e) => {
                failed = true;
                report.push_str(&format!("[-]{name} failed: {e}\n"));
            }
        }
    }
    if failed {
        crate::error!(
            "Health check error",
            path = format!("/{kind}"),
            reason = report
        );
        return (StatusCode::SERVICE_UNAVAILABLE, report + "\n");
    }
    let mut body = String::new();
    if has_key(q, "verbose") {
        body.push_str(&report);
    }
    body.push_str("ok\n");
    (StatusCode::OK, body)
}

async fn livez(State(s): State<Arc<EtcdServer>>, RawQuery(q): RawQuery) -> impl IntoResponse {
    probe(&s, "livez", LIVEZ, &q.unwrap_or_default()).await
}

async fn readyz(State(s): State<Arc<EtcdServer>>, RawQuery(q): RawQuery) -> impl IntoResponse {
    probe(&s, "readyz", READYZ, &q.unwrap_or_default()).await
}

async fn one(
    s: &EtcdServer,
    kind: &str,
    all: &[&str],
    check: &str,
    q: &str,
) -> (StatusCode, String) {
    match all.iter().find(|c| **c == check) {
        Some(c) => probe(s, kind, &[c], q).await,
        None => (StatusCode::NOT_FOUND, "404 page not found\n".into()),
    }
}

async fn livez_one(
    State(s): State<Arc<EtcdServer>>,
    axum::extract::Path(check): axum::extract::Path<String>,
    RawQuery(q): RawQuery,
) -> impl IntoResponse {
    one(&s, "livez", LIVEZ, &check, &q.unwrap_or_default()).await
}

async fn readyz_one(
    State(s): State<Arc<EtcdServer>>,
    axum::extract::Path(check): axum::extract::Path<String>,
    RawQuery(q): RawQuery,
) -> impl IntoResponse {
    one(&s, "readyz", READYZ, &check, &q.unwrap_or_default()).await
}

async fn version() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"etcdserver":"{SERVER_VERSION}","etcdcluster":"{CLUSTER_VERSION}"}}"#),
    )
}

async fn metrics(State(s): State<Arc<EtcdServer>>) -> impl IntoResponse {
    crate::metrics::MVCC_CURRENT_REV.set(s.store.current_rev());
    crate::metrics::KEYS_TOTAL.set(s.store.key_count() as i64);
    crate::metrics::AUTH_REVISION.set(i64::try_from(s.auth.revision()).unwrap_or(i64::MAX));
    let compacted = s.store.compact_rev();
    crate::metrics::MVCC_COMPACT_REV.set(if compacted > 0 { compacted } else { -1 });
    crate::metrics::DB_SIZE_IN_USE.set(i64::try_from(s.size_in_use().await).unwrap_or(i64::MAX));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(SERVER_VERSION, CLUSTER_VERSION),
    )
}
