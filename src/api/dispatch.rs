//! The service behind every client connection. A call to one of etcd's gRPC
//! services goes straight to that service, picked by the service name in its
//! path, through the steps of [`super::front`]; anything else (the HTTP
//! endpoints, the JSON gateway, the health service, a service etcd does not
//! have) goes through the HTTP router, which holds every route. The direct
//! path costs a call a boxed future and a reference count of its own, where
//! the router's matching, its boxed route clones and its path captures cost
//! several allocations and shared counters per call. Behind the front steps,
//! the unary calls of the KV and Lease services and lease keep-alive streams
//! are answered by the services' own methods without tonic's server
//! machinery ([`super::unary`], [`super::keep_alive`]); the short calls run
//! in their connection's task ([`Which::runs_here`], [`super::calls`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use tonic::server::NamedService;
use tower::ServiceExt;

use super::{auth, cluster, election, kv, lease, lock, maintenance, watch};
use crate::pb::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer,
};
use crate::pb::v3electionpb::election_server::ElectionServer;
use crate::pb::v3lockpb::lock_server::LockServer;
use crate::server::EtcdServer;

/// etcd's gRPC services, each reached by its name.
pub struct Services {
    pub kv: KvServer<kv::KvService>,
    /// The services whose unary calls [`super::unary`] answers, as their
    /// servers above hold them.
    pub kv_calls: Arc<kv::KvService>,
    pub lease_calls: Arc<lease::LeaseService>,
    pub watch: super::watch_out::WatchServer<watch::WatchService>,
    pub lease: LeaseServer<lease::LeaseService>,
    pub cluster: ClusterServer<cluster::ClusterService>,
    pub maintenance: MaintenanceServer<maintenance::MaintenanceService>,
    pub auth: AuthServer<auth::AuthService>,
    pub lock: LockServer<lock::LockService>,
    pub election: ElectionServer<election::ElectionService>,
}

#[derive(Clone, Copy)]
enum Which {
    Kv,
    Watch,
    Lease,
    Cluster,
    Maintenance,
    Auth,
    Lock,
    Election,
}

impl Which {
    /// The service a gRPC path (`/package.Service/Method`) names.
    fn of(path: &str) -> Option<Which> {
        let name = path.strip_prefix('/')?.split_once('/')?.0;
        Some(match name {
            n if n == KvServer::<kv::KvService>::NAME => Which::Kv,
            n if n == super::watch_out::WatchServer::<watch::WatchService>::NAME => Which::Watch,
            n if n == LeaseServer::<lease::LeaseService>::NAME => Which::Lease,
            n if n == ClusterServer::<cluster::ClusterService>::NAME => Which::Cluster,
            n if n == MaintenanceServer::<maintenance::MaintenanceService>::NAME => {
                Which::Maintenance
            }
            n if n == AuthServer::<auth::AuthService>::NAME => Which::Auth,
            n if n == LockServer::<lock::LockService>::NAME => Which::Lock,
            n if n == ElectionServer::<election::ElectionService>::NAME => Which::Election,
            _ => return None,
        })
    }

    /// Whether a call to this service runs in its connection's task
    /// ([`super::calls`]): the key-value, lease, cluster and auth calls,
    /// which do little work on a CPU before they wait or answer (a large
    /// Range reply is produced off the connection, by
    /// [`super::range_reply`]). Watch streams, whose events fan out to many
    /// watchers, maintenance (snapshots, hashes, defragmentation), and locks
    /// and elections run in tasks of their own.
    fn runs_here(self) -> bool {
        matches!(
            self,
            Which::Kv | Which::Lease | Which::Cluster | Which::Auth
        )
    }
}

struct Grpc {
    s: Arc<EtcdServer>,
    /// The largest request message, gRPC's allowance included.
    max: usize,
    services: Services,
}

/// What a listener serves: etcd's gRPC services (on client URLs) and the
/// HTTP router.
#[derive(Clone)]
pub struct App {
    grpc: Option<Arc<Grpc>>,
    http: axum::Router,
}

impl App {
    /// Client URLs: the gRPC services, and `http` for everything else.
    pub fn new(s: Arc<EtcdServer>, max: usize, services: Services, http: axum::Router) -> App {
        App {
            grpc: Some(Arc::new(Grpc { s, max, services })),
            http,
        }
    }

    /// A listener of HTTP endpoints only (`--listen-metrics-urls`).
    pub fn http_only(http: axum::Router) -> App {
        App { grpc: None, http }
    }

    /// The service for one connection; `cn` is its TLS client certificate's
    /// subject common name, put on each of its requests.
    pub fn connection(&self, cn: Option<String>, exec: super::calls::Calls) -> Connection {
        Connection {
            grpc: self.grpc.clone().map(|g| Arc::new(Local(g))),
            http: self.http.clone(),
            cn,
            exec,
        }
    }
}

/// The service of one connection.
pub struct Connection {
    http: axum::Router,
    /// The gRPC services behind a reference count of this connection's own:
    /// each call holds it, and counting every call of every connection on
    /// the member's one count made the CPUs serving them pass its cache
    /// line back and forth.
    grpc: Option<Arc<Local>>,
    cn: Option<String>,
    exec: super::calls::Calls,
}

/// The member's gRPC services as one connection holds them.
struct Local(Arc<Grpc>);

type Answer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for Connection {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Answer {
        let mut req = req.map(Body::new);
        if let Some(cn) = &self.cn {
            req.extensions_mut().insert(super::PeerCn(cn.clone()));
        }
        let grpc = self
            .grpc
            .as_ref()
            .and_then(|g| Some((g.clone(), Which::of(req.uri().path())?)));
        match grpc {
            Some((g, which)) => {
                // hyper hands an HTTP/2 call's future to the connection's
                // executor right after this; HTTP/1.1 runs it in place.
                if which.runs_here() && req.version() == http::Version::HTTP_2 {
                    self.exec.run_next_here();
                }
                // One call to one of etcd's services, through the front steps.
                Box::pin(async move {
                    let g = &*g.0;
                    let service = |req| service(&g.services, g.max, which, req);
                    Ok(super::front::steps(&g.s, g.max, req, service).await)
                })
            }
            None if req.version() == http::Version::HTTP_2 => {
                let answer = self.http.clone().oneshot(req);
                Box::pin(async move { answer.await.map(with_date) })
            }
            None => Box::pin(self.http.clone().oneshot(req)),
        }
    }
}

/// An HTTP answer with a `date` header, which hyper adds to HTTP/1.1
/// answers only (its HTTP/2 connections leave it to gRPC, which has none).
fn with_date(mut resp: Response) -> Response {
    if !resp.headers().contains_key(http::header::DATE)
        && let Ok(v) =
            http::HeaderValue::from_str(&httpdate::fmt_http_date(std::time::SystemTime::now()))
    {
        resp.headers_mut().insert(http::header::DATE, v);
    }
    resp
}

/// The service's answer to one call: a unary call of the key-value and
/// lease services by [`super::unary`], a lease keep-alive stream by
/// [`super::keep_alive`], any other through tonic.
async fn service(svc: &Services, max: usize, which: Which, req: Request) -> Response {
    use super::unary::call;
    use crate::pb::etcdserverpb::{kv_server::Kv, lease_server::Lease};
    let (kv, lease) = (&svc.kv_calls, &svc.lease_calls);
    let method = req.uri().path().rsplit('/').next().unwrap_or("");
    let answered = match (which, method) {
        (Which::Kv, "Range") => call(req, max, |r| kv.range(r)).await,
        (Which::Kv, "Put") => call(req, max, |r| kv.put(r)).await,
        (Which::Kv, "DeleteRange") => call(req, max, |r| kv.delete_range(r)).await,
        (Which::Kv, "Txn") => call(req, max, |r| kv.txn(r)).await,
        (Which::Kv, "Compact") => call(req, max, |r| kv.compact(r)).await,
        (Which::Lease, "LeaseGrant") => call(req, max, |r| lease.lease_grant(r)).await,
        (Which::Lease, "LeaseRevoke") => call(req, max, |r| lease.lease_revoke(r)).await,
        (Which::Lease, "LeaseTimeToLive") => call(req, max, |r| lease.lease_time_to_live(r)).await,
        (Which::Lease, "LeaseLeases") => call(req, max, |r| lease.lease_leases(r)).await,
        (Which::Lease, "LeaseKeepAlive") => super::keep_alive::call(req, max, lease.clone()).await,
        _ => Err(req),
    };
    match answered {
        Ok(resp) => resp,
        Err(req) => Box::pin(through_tonic(svc, which, req)).await,
    }
}

/// The calls tonic's services answer. [`service`] boxes their future, many
/// times the size of the calls answered without tonic, which would
/// otherwise take that room in every call's future.
async fn through_tonic(svc: &Services, which: Which, req: Request) -> Response {
    let resp = match which {
        Which::Kv => svc.kv.clone().oneshot(req).await,
        Which::Watch => svc.watch.clone().oneshot(req).await,
        Which::Lease => svc.lease.clone().oneshot(req).await,
        Which::Cluster => svc.cluster.clone().oneshot(req).await,
        Which::Maintenance => svc.maintenance.clone().oneshot(req).await,
        Which::Auth => svc.auth.clone().oneshot(req).await,
        Which::Lock => svc.lock.clone().oneshot(req).await,
        Which::Election => svc.election.clone().oneshot(req).await,
    };
    match resp {
        Ok(r) => r.map(Body::new),
        Err(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::Which;

    #[test]
    fn a_path_names_its_service() {
        assert!(matches!(
            Which::of("/etcdserverpb.KV/Range"),
            Some(Which::Kv)
        ));
        assert!(matches!(
            Which::of("/etcdserverpb.Lease/LeaseKeepAlive"),
            Some(Which::Lease)
        ));
        assert!(matches!(
            Which::of("/v3electionpb.Election/Campaign"),
            Some(Which::Election)
        ));
        assert!(matches!(
            Which::of("/v3lockpb.Lock/Lock"),
            Some(Which::Lock)
        ));
        assert!(Which::of("/grpc.health.v1.Health/Check").is_none());
        assert!(Which::of("/etcdserverpb.KV").is_none());
        assert!(Which::of("/v3/kv/range").is_none());
        assert!(Which::of("/health").is_none());
        assert!(Which::of("").is_none());
    }

    #[test]
    fn short_calls_run_in_the_connection_and_streams_and_maintenance_do_not() {
        let here = |p: &str| Which::of(p).is_some_and(Which::runs_here);
        assert!(here("/etcdserverpb.KV/Put"));
        assert!(here("/etcdserverpb.Lease/LeaseGrant"));
        assert!(here("/etcdserverpb.Cluster/MemberList"));
        assert!(here("/etcdserverpb.Auth/Authenticate"));
        assert!(!here("/etcdserverpb.Watch/Watch"));
        assert!(!here("/etcdserverpb.Maintenance/Snapshot"));
        assert!(!here("/v3lockpb.Lock/Lock"));
        assert!(!here("/v3electionpb.Election/Campaign"));
    }
}
