//! The steps every gRPC call passes before its service ([`steps`]), also as a
//! tower layer for the calls that reach a service through the HTTP router:
//! the message limit and call counting ([`super::msgsize`]), authorization
//! ([`super::authz`]), and unary Range replies built from the stored records
//! ([`super::range_reply`]), in that order. Each step is a function that
//! passes the request on or answers it, run one after the other in one
//! future, so a call costs one boxed future and one clone of the inner
//! service, however many steps there are.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use tower::{Layer, Service, ServiceExt};

use crate::server::EtcdServer;

/// Puts the steps in front of a service.
#[derive(Clone)]
pub struct Front {
    s: Arc<EtcdServer>,
    /// The largest request message, gRPC's allowance included.
    max: usize,
}

impl Front {
    pub fn new(s: Arc<EtcdServer>, max: usize) -> Self {
        Front { s, max }
    }
}

impl<S> Layer<S> for Front {
    type Service = FrontService<S>;

    fn layer(&self, inner: S) -> FrontService<S> {
        FrontService {
            front: self.clone(),
            inner,
        }
    }
}

/// A service behind the steps.
#[derive(Clone)]
pub struct FrontService<S> {
    front: Front,
    inner: S,
}

impl<S> Service<Request> for FrontService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The inner service is made ready when the call reaches it.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let inner = self.inner.clone();
        let Front { s, max } = self.front.clone();
        Box::pin(async move {
            let service = |req: Request| async move {
                match inner.oneshot(req).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                }
            };
            Ok(steps(&s, max, req, service).await)
        })
    }
}

/// Takes one call through the steps to `service`.
pub async fn steps<N, F>(s: &Arc<EtcdServer>, max: usize, req: Request, service: N) -> Response
where
    N: FnOnce(Request) -> F,
    F: Future<Output = Response>,
{
    // One step after the other in this one future, which holds one of
    // theirs at a time: a future nested in each step's would carry the
    // state of every step behind it.
    let (req, call) = super::msgsize::begin(max, req);
    let req = match super::authz::admit(s, req).await {
        Ok(req) => req,
        Err(refused) => return super::msgsize::end(call, refused),
    };
    let req = match super::range_reply::answer(s, req).await {
        Ok(resp) => return super::msgsize::end(call, resp),
        Err(req) => req,
    };
    let resp = service(req).await;
    super::msgsize::end(call, resp)
}
