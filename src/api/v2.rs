//! The read-only part of etcd's v2 API that health checks still use:
//! `GET /v2/members` and `GET /v2/members/leader` in etcd's v2 JSON (what
//! `ETCDCTL_API=2 etcdctl member list` and `cluster-health` read), served by
//! default as etcd 3.3 served them. The v2 key space is not provided:
//! `/v2/keys` answers as an empty v2 store does, and refuses writes with etcd's
//! v2 error object.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde::Serialize;

use crate::pb::etcdserverpb::Member;
use crate::server::EtcdServer;

pub fn router(s: Arc<EtcdServer>) -> axum::Router {
    axum::Router::new()
        .route("/v2/members", any(members))
        .route("/v2/members/", any(members))
        .route("/v2/members/leader", any(leader))
        .route("/v2/keys", any(keys))
        .route("/v2/keys/", any(keys))
        .route("/v2/keys/{*key}", any(keys))
        .with_state(s)
}

/// A member as etcd's v2 API writes it.
#[derive(Serialize)]
struct V2Member {
    id: String,
    name: String,
    #[serde(rename = "peerURLs")]
    peer_urls: Vec<String>,
    #[serde(rename = "clientURLs")]
    client_urls: Vec<String>,
}

impl From<Member> for V2Member {
    fn from(m: Member) -> Self {
        V2Member {
            id: format!("{:x}", m.id),
            name: m.name,
            peer_urls: m.peer_ur_ls,
            client_urls: m.client_ur_ls,
        }
    }
}

#[derive(Serialize)]
struct Members {
    members: Vec<V2Member>,
}

/// A JSON body as Go's encoder writes it (with a final newline), with the
/// cluster ID header etcd's v2 handlers set.
fn json(s: &EtcdServer, code: StatusCode, body: &impl Serialize) -> Response {
    let mut text = serde_json::to_string(body).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    let mut r = (code, [(header::CONTENT_TYPE, "application/json")], text).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{:x}", s.cluster.cluster_id)) {
        r.headers_mut().insert("x-etcd-cluster-id", v);
    }
    r
}

#[derive(Serialize)]
struct Message<'a> {
    message: &'a str,
}

/// The v2 members API is read-only here: anything but GET and HEAD is
/// refused as etcd refuses a method it does not allow.
fn read_only(req: &Request) -> Option<Response> {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return None;
    }
    Some(
        (
            StatusCode::METHOD_NOT_ALLOWED,
            [
                (header::ALLOW, "GET, HEAD"),
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            "Method Not Allowed\n",
        )
            .into_response(),
    )
}

async fn members(State(s): State<Arc<EtcdServer>>, req: Request) -> Response {
    if let Some(r) = read_only(&req) {
        return r;
    }
    let members = s
        .cluster
        .members()
        .into_iter()
        .map(V2Member::from)
        .collect();
    json(&s, StatusCode::OK, &Members { members })
}

async fn leader(State(s): State<Arc<EtcdServer>>, req: Request) -> Response {
    if let Some(r) = read_only(&req) {
        return r;
    }
    let id = s.status.leader.load(Ordering::Relaxed);
    match s.cluster.get(id).filter(|_| id != 0) {
        Some(m) => json(&s, StatusCode::OK, &V2Member::from(m)),
        None => json(
            &s,
            StatusCode::SERVICE_UNAVAILABLE,
            &Message {
                message: "During election",
            },
        ),
    }
}

/// etcd's v2 error object.
#[derive(Serialize)]
struct V2Error<'a> {
    #[serde(rename = "errorCode")]
    error_code: u32,
    message: &'a str,
    cause: &'a str,
    index: u64,
}

#[derive(Serialize)]
struct Dir {
    dir: bool,
}

#[derive(Serialize)]
struct Get {
    action: &'static str,
    node: Dir,
}

async fn keys(State(s): State<Arc<EtcdServer>>, req: Request) -> Response {
    let key = req
        .uri()
        .path()
        .strip_prefix("/v2/keys")
        .unwrap_or("")
        .trim_end_matches('/')
        .to_string();
    let read = req.method() == Method::GET || req.method() == Method::HEAD;
    if !read {
        // Read the form (bounded) before answering: an HTTP/2 client whose
        // body is still unread when the answer ends sees its stream reset.
        let _ = axum::body::to_bytes(req.into_body(), 64 * 1024).await;
    }
    let mut r = if read {
        if key.is_empty() {
            // The root of an empty v2 store.
            json(
                &s,
                StatusCode::OK,
                &Get {
                    action: "get",
                    node: Dir { dir: true },
                },
            )
        } else {
            json(
                &s,
                StatusCode::NOT_FOUND,
                &V2Error {
                    error_code: 100,
                    message: "Key not found",
                    cause: &key,
                    index: 0,
                },
            )
        }
    } else {
        json(
            &s,
            StatusCode::INTERNAL_SERVER_ERROR,
            &V2Error {
                error_code: 300,
                message: "Raft Internal Error",
                cause: "the v2 key space is not provided; use the v3 API",
                index: 0,
            },
        )
    };
    r.headers_mut()
        .insert("x-etcd-index", HeaderValue::from_static("0"));
    r
}
