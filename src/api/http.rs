//! The HTTP endpoints on the client port: `/health`, `/livez`, `/readyz`,
//! `/version`, `/metrics`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::config::{CLUSTER_VERSION, SERVER_VERSION};
use crate::pb::etcdserverpb::RangeRequest;
use crate::server::EtcdServer;

pub fn router(s: Arc<EtcdServer>) -> axum::Router {
    axum::Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .with_state(s)
}

/// Why the member is unhealthy, or None.
pub async fn check(s: &EtcdServer, query: &str) -> Option<String> {
    let exclude_nospace = query.contains("exclude=NOSPACE");
    for a in s.alarms.list() {
        if exclude_nospace && a.alarm == 1 {
            continue;
        }
        let name = if a.alarm == 1 { "NOSPACE" } else { "CORRUPT" };
        return Some(format!("ALARM {name}"));
    }
    if s.status.leader.load(Ordering::Relaxed) == 0 {
        return Some("RAFT NO LEADER".into());
    }
    let serializable = query.contains("serializable=true");
    let read = async {
        if !serializable {
            s.read_barrier().await?;
        }
        s.store.range(&RangeRequest {
            key: b"health".to_vec(),
            ..Default::default()
        })
    };
    match tokio::time::timeout(Duration::from_secs(2), read).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(format!("QGET ERROR:{e}")),
        Err(_) => Some("QGET ERROR:timeout".into()),
    }
}

async fn health(State(s): State<Arc<EtcdServer>>, RawQuery(q): RawQuery) -> impl IntoResponse {
    let q = q.unwrap_or_default();
    let (code, body) = match check(&s, &q).await {
        None => (
            StatusCode::OK,
            r#"{"health":"true","reason":""}"#.to_string(),
        ),
        Some(reason) => {
            crate::warn!("serving /health false", reason = reason);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(r#"{{"health":"false","reason":"{reason}"}}"#),
            )
        }
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body)
}

async fn probe(s: &EtcdServer, q: &str, name: &str) -> (StatusCode, String) {
    let verbose = q.contains("verbose");
    let failed = check(s, q).await;
    let mut body = String::new();
    match &failed {
        None => {
            if verbose {
                body.push_str(
                    "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\n",
                );
            }
            body.push_str("ok\n");
            (StatusCode::OK, body)
        }
        Some(reason) => {
            body.push_str(&format!(
                "[-]{name} failed: {reason}\n{name} check failed\n"
            ));
            (StatusCode::SERVICE_UNAVAILABLE, body)
        }
    }
}

async fn livez(State(s): State<Arc<EtcdServer>>, RawQuery(q): RawQuery) -> impl IntoResponse {
    let q = q.unwrap_or_default();
    // Liveness only asks whether the member is running, not whether it has a leader.
    if s.is_stopped() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "livez check failed\n".to_string(),
        );
    }
    let body = if q.contains("verbose") {
        "[+]serializable_read ok\nok\n"
    } else {
        "ok\n"
    };
    (StatusCode::OK, body.to_string())
}

async fn readyz(State(s): State<Arc<EtcdServer>>, RawQuery(q): RawQuery) -> impl IntoResponse {
    probe(&s, &q.unwrap_or_default(), "readyz").await
}

async fn version() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"etcdserver":"{SERVER_VERSION}","etcdcluster":"{CLUSTER_VERSION}"}}"#),
    )
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(SERVER_VERSION, CLUSTER_VERSION),
    )
}
