//! The client-facing API: etcd's gRPC services and the HTTP endpoints, served on
//! the same port (HTTP/2 gRPC and HTTP/1.1 side by side, as etcd does).

pub mod auth;
pub(crate) mod authority;
pub mod authz;
mod calls;
pub mod cluster;
mod coalesce;
pub mod concurrency;
pub mod conn;
pub mod dispatch;
pub mod election;
mod front;
pub mod gateway;
mod held_flush;
pub mod http;
mod keep_alive;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub(crate) mod message;
mod msgsize;
mod range_reply;
pub mod range_stream;
pub mod status;
mod unary;
pub mod v2;
pub mod watch;
pub mod watch_out;
mod watch_outbox;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tonic::{Response, Status};

use crate::error::{Error, Result};
use crate::metrics;
use crate::pb::etcdserverpb::{
    AlarmRequest, AlarmType, ResponseHeader, alarm_request, auth_server::AuthServer,
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer,
};
use crate::pb::v3electionpb::election_server::ElectionServer;
use crate::pb::v3lockpb::lock_server::LockServer;
use crate::server::{EtcdServer, Op};

/// gRPC's allowance on top of `--max-request-bytes`, as etcd sets it.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The subject common name of a TLS client's certificate, put on every request of
/// its connection.
#[derive(Debug, Clone)]
pub struct PeerCn(pub String);

/// Completes a header that the apply loop filled with a revision.
pub(crate) fn fill(s: &EtcdServer, h: &mut Option<ResponseHeader>) {
    let rev = h.as_ref().map(|h| h.revision).unwrap_or(0);
    *h = Some(s.header(rev));
}

/// Counts a client stream that failed, as etcd counts it: not when the
/// client went away or gave up (a reset stream or connection, a deadline).
pub(crate) fn count_stream_failure(e: &Status, counter: &crate::metrics::Counter) {
    use tonic::Code;
    if !matches!(
        e.code(),
        Code::Cancelled | Code::DeadlineExceeded | Code::Unknown | Code::Unavailable
    ) {
        counter.inc();
    }
}

/// Finishes a unary call: maps the error and counts the bytes of the answer
/// (the call itself is counted by the `msgsize` layer; `svc` and `method`
/// name it for the reader).
pub(crate) fn unary<T: prost::Message>(
    svc: &'static str,
    method: &'static str,
    r: Result<T>,
) -> Result<Response<T>, Status> {
    let _ = (svc, method);
    let r = r.map(Response::new).map_err(status::to_status);
    if let Ok(m) = &r {
        metrics::grpc::sent_bytes(prost::Message::encoded_len(m.get_ref()));
    }
    r
}

/// Raises NOSPACE (through the log, as etcd does) when a write of `cost` bytes
/// would take the database over its quota, and refuses it when it would take
/// the disk under its low mark (the Raft loop then raises NOSPACE for the
/// full disk: see `storage::space`).
pub(crate) async fn quota_check(s: &EtcdServer, cost: usize) -> Result<()> {
    if !s.disk.admit(s.inflight_bytes() as u64, cost as u64) {
        return Err(Error::NoSpace);
    }
    let quota = s.quota_bytes();
    // The space the data takes, as etcd counts bbolt's: redb's file also
    // holds preallocated free space.
    if s.backend.estimated_in_use() + cost as u64 <= quota {
        s.backend.note_admitted(cost as u64);
        return Ok(());
    }
    // The measure is up to a second old: take it again before refusing (a
    // compaction or defragmentation may just have freed space).
    let b = s.backend.clone();
    let used = tokio::task::spawn_blocking(move || b.size_in_use())
        .await
        .unwrap_or(u64::MAX);
    if used + cost as u64 <= quota {
        s.backend.note_admitted(cost as u64);
        return Ok(());
    }
    crate::warn!(
        "database space exceeded; raising NOSPACE alarm",
        quota_size_bytes = quota,
        current_db_size_bytes = used
    );
    let _ = s
        .propose(Op::Alarm(AlarmRequest {
            action: alarm_request::AlarmAction::Activate as i32,
            member_id: s.member_id(),
            alarm: AlarmType::Nospace as i32,
        }))
        .await;
    Err(Error::NoSpace)
}

/// All gRPC services and the HTTP endpoints: etcd's gRPC services are reached
/// directly ([`dispatch`]), everything else through one router that also
/// holds every gRPC route (the JSON gateway calls them in-process, and the
/// health service is only there).
pub async fn router(s: Arc<EtcdServer>) -> dispatch::App {
    let max = s.cfg.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let kv_calls = Arc::new(kv::KvService { s: s.clone() });
    let lease_calls = Arc::new(lease::LeaseService {
        s: s.clone(),
        leader: parking_lot::Mutex::new(None),
    });
    let services = dispatch::Services {
        kv: KvServer::from_arc(kv_calls.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(usize::MAX),
        kv_calls,
        watch: watch_out::WatchServer::new(watch::WatchService { s: s.clone() })
            .max_decoding_message_size(max),
        lease: LeaseServer::from_arc(lease_calls.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(usize::MAX),
        lease_calls,
        cluster: ClusterServer::new(cluster::ClusterService { s: s.clone() })
            .max_decoding_message_size(max),
        maintenance: MaintenanceServer::new(maintenance::MaintenanceService { s: s.clone() })
            .max_decoding_message_size(max)
            .max_encoding_message_size(usize::MAX),
        auth: AuthServer::new(auth::AuthService { s: s.clone() }).max_decoding_message_size(max),
        lock: LockServer::new(lock::LockService::new(s.clone())).max_decoding_message_size(max),
        election: ElectionServer::new(election::ElectionService::new(s.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(usize::MAX),
    };
    let routes = tonic::service::Routes::builder()
        .add_service(services.kv.clone())
        .add_service(services.watch.clone())
        .add_service(services.lease.clone())
        .add_service(services.cluster.clone())
        .add_service(services.maintenance.clone())
        .add_service(services.auth.clone())
        .add_service(services.lock.clone())
        .add_service(services.election.clone())
        .add_service(health_svc)
        .clone()
        .routes();
    // Every gRPC call passes the authorization layer first; the HTTP
    // endpoints are not gRPC and need no caller. The JSON gateway calls the
    // gRPC router in-process, so its calls pass the same layers.
    let grpc = routes
        .into_axum_router()
        .layer(front::Front::new(s.clone(), max));
    let http = grpc
        .clone()
        .merge(http::router(s.clone()))
        .merge(v2::router(s.clone()))
        .merge(gateway::router(grpc, max));
    dispatch::App::new(s, max, services, http)
}

/// Resolves a listen URL's host and port to a socket address (IPv4 preferred, as
/// etcd binds `localhost` to 127.0.0.1).
pub async fn resolve(url: &str) -> std::io::Result<SocketAddr> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(url)
        .trim_end_matches('/');
    let hostport = rest.split('/').next().unwrap_or(rest);
    // "localhost" is the loopback address (RFC 6761), also on hosts without an
    // /etc/hosts entry for it.
    if let Some((host, port)) = hostport.rsplit_once(':')
        && host.eq_ignore_ascii_case("localhost")
        && let Ok(port) = port.parse::<u16>()
    {
        return Ok(SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)));
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(hostport).await?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| std::io::Error::other(format!("{url}: no address")))
}

/// Serves `app` on `listener` (TCP or Unix) until `shutdown` fires; with `tls`, every connection
/// is a TLS connection (the handshake uses the certificates current at that moment).
/// Connections beyond the member's cap are closed at once; see [`conn`].
pub async fn serve(
    listener: crate::net::Listener,
    app: dispatch::App,
    limits: conn::Limits,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    tls: Option<Arc<crate::tls::ServerTls>>,
) {
    let mut last_refusal: Option<std::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, remote) = match accepted {
            Ok(x) => x,
            Err(e) => {
                crate::warn!("accept failed", error = e);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = limits.admit() else {
            if last_refusal.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1)) {
                last_refusal = Some(std::time::Instant::now());
                crate::warn!(
                    "rejected connection: too many open client connections",
                    remote_addr = remote
                );
            }
            continue;
        };
        let app = app.clone();
        let tls = tls.clone();
        let exec = calls::Calls::default();
        let b = limits.builder(exec.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => {
                    let stream = conn::FirstByte::new(stream, conn::FIRST_BYTE_DEADLINE);
                    let calls = coalesce::InFlight::default();
                    let hold = held_flush::Hold::default();
                    let io = held_flush::HeldFlush::new(
                        coalesce::write_buffer(authority::FixAuthority::new(stream)),
                        hold.clone(),
                    );
                    let end = coalesce::Coalesced::new(
                        calls::Serving::new(
                            b.serve_connection_with_upgrades(
                                TokioIo::new(io),
                                calls.track(app.connection(None, exec.clone()), exec.clone()),
                            ),
                            exec,
                            hold,
                        ),
                        calls,
                    )
                    .await;
                    log_connection_end(&remote, end);
                }
                Some(tls) => {
                    let hs = tokio::time::timeout(
                        conn::FIRST_BYTE_DEADLINE,
                        crate::tls::accept(&tls, stream),
                    )
                    .await;
                    match hs {
                        Ok(Ok(s)) => {
                            let leaf = s.get_ref().1.peer_certificates().and_then(|c| c.first());
                            if let Err(why) = tls.admits(leaf) {
                                crate::log::emit(
                                    crate::log::Level::Warn,
                                    "rejected connection",
                                    &[("remote-addr", remote.to_string()), ("error", why)],
                                );
                                return;
                            }
                            let cn = leaf.and_then(|c| crate::tls::x509::subject_common_name(c));
                            let svc = app.connection(cn, exec.clone());
                            let s = conn::FirstByte::new(s, conn::FIRST_BYTE_DEADLINE);
                            let calls = coalesce::InFlight::default();
                            let hold = held_flush::Hold::default();
                            let io = held_flush::HeldFlush::new(
                                coalesce::write_buffer(authority::FixAuthority::new(s)),
                                hold.clone(),
                            );
                            let end = coalesce::Coalesced::new(
                                calls::Serving::new(
                                    b.serve_connection_with_upgrades(
                                        TokioIo::new(io),
                                        calls.track(svc, exec.clone()),
                                    ),
                                    exec,
                                    hold,
                                ),
                                calls,
                            )
                            .await;
                            log_connection_end(&remote, end);
                        }
                        Ok(Err((server_name, e))) => {
                            crate::tls::log_handshake_failure(&remote, &server_name, &e);
                        }
                        Err(_) => {
                            crate::log::emit(
                                crate::log::Level::Warn,
                                "rejected connection",
                                &[
                                    ("remote-addr", remote.to_string()),
                                    ("error", "TLS handshake timed out".to_string()),
                                ],
                            );
                        }
                    }
                }
            }
        });
    }
}

/// Logs, at debug level, a client connection that ended with an error (a
/// protocol error, a reset, a ping the client left unanswered): the calls
/// still open on it fail on the client's side, as cancelled, and this line
/// says why. Clients that close their connections cleanly are not logged.
fn log_connection_end(
    remote: &impl std::fmt::Display,
    end: Result<(), Box<dyn std::error::Error + Send + Sync>>,
) {
    if let Err(e) = end {
        // hyper's error names its kind; its sources say what happened.
        let mut error = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            error.push_str(": ");
            error.push_str(&s.to_string());
            source = s.source();
        }
        crate::log::emit(
            crate::log::Level::Debug,
            "client connection ended with an error",
            &[("remote-addr", remote.to_string()), ("error", error)],
        );
    }
}
