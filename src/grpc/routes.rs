//! The gRPC listener's services, chosen by the path's service name (`/{service}/{method}`).
//!
//! tonic's own `Routes` is an axum router: a path pattern match, a boxed service per route, the
//! request body boxed into axum's and the response body wrapped twice, and a middleware future
//! on top, for a choice among four names. On a login that cost about 4,400 instructions
//! (callgrind, `scripts/cpu-per-login`; docs/bench/history.md, section 15). Here the request
//! goes to the generated service as hyper delivered it, and the answer comes back with one
//! check ([`damaged_frames_are_malformed`]) and, for a known service, no allocation of its own.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::BodyExt as _;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, http};
use tonic::server::NamedService;

use super::damaged_frames_are_malformed;
use crate::listen::BodyError;

/// A request body as the generated services read it: the listener's, with its refusals as
/// statuses.
pub type RequestBody = http_body_util::combinators::MapErr<
    crate::listen::Body,
    fn(BodyError) -> tonic::codegen::StdError,
>;

/// The listener's body errors as tonic takes them: a status it answers as it is, or the
/// transport's own error (tonic maps it as it always did).
fn body_error(error: BodyError) -> tonic::codegen::StdError {
    match error {
        BodyError::Spent => Box::new(tonic::Status::resource_exhausted(error.to_string())),
        BodyError::TooLarge { .. } => Box::new(tonic::Status::out_of_range(error.to_string())),
        BodyError::Transport(error) => Box::new(error),
    }
}

/// What every generated service returns.
type Answer = Result<http::Response<Body>, Infallible>;

/// The service (agentauth.v1), health and the two versions of reflection: an unknown service,
/// or a path without a method, is UNIMPLEMENTED as tonic answers it.
#[derive(Clone)]
pub struct Routes<A, H, R1, R2> {
    auth: A,
    health: H,
    reflection_v1: R1,
    reflection_v1alpha: R2,
}

impl<A, H, R1, R2> Routes<A, H, R1, R2> {
    pub fn new(auth: A, health: H, reflection_v1: R1, reflection_v1alpha: R2) -> Self {
        Self {
            auth,
            health,
            reflection_v1,
            reflection_v1alpha,
        }
    }
}

/// The service name of a gRPC path, if it has a method after it.
fn service_of(path: &str) -> Option<&str> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!method.is_empty()).then_some(service)
}

/// A generated tonic service, as it answers any request body.
pub trait Generated<B>:
    tower::Service<
        http::Request<B>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future = BoxFuture<http::Response<Body>, Infallible>,
    > + NamedService
{
}

impl<S, B> Generated<B> for S where
    S: tower::Service<
            http::Request<B>,
            Response = http::Response<Body>,
            Error = Infallible,
            Future = BoxFuture<http::Response<Body>, Infallible>,
        > + NamedService
{
}

impl<A, H, R1, R2> tower::Service<http::Request<crate::listen::Body>> for Routes<A, H, R1, R2>
where
    A: Generated<RequestBody>,
    H: Generated<RequestBody>,
    R1: Generated<RequestBody>,
    R2: Generated<RequestBody>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = RoutesFuture;

    /// Always ready: generated services are (they take no back-pressure; the process-wide
    /// limiter sheds instead).
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<crate::listen::Body>) -> RoutesFuture {
        let request = request.map(|body| body.map_err(body_error as fn(_) -> _));
        let service = service_of(request.uri().path());
        RoutesFuture(match service {
            Some(name) if name == A::NAME => self.auth.call(request),
            Some(name) if name == H::NAME => self.health.call(request),
            Some(name) if name == R1::NAME => self.reflection_v1.call(request),
            Some(name) if name == R2::NAME => self.reflection_v1alpha.call(request),
            _ => Box::pin(std::future::ready(Ok(unimplemented()))),
        })
    }
}

/// tonic's answer for a path no service serves.
fn unimplemented() -> http::Response<Body> {
    tonic::Status::unimplemented("").into_http()
}

/// A service's answer, with a damaged request frame's INTERNAL made INVALID_ARGUMENT.
pub struct RoutesFuture(BoxFuture<http::Response<Body>, Infallible>);

impl Future for RoutesFuture {
    type Output = Answer;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        self.0
            .as_mut()
            .poll(cx)
            .map(|answer| answer.map(damaged_frames_are_malformed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_names_its_service_only_with_a_method() {
        assert_eq!(
            service_of("/agentauth.v1.AgentAuth/Authenticate"),
            Some("agentauth.v1.AgentAuth")
        );
        assert_eq!(
            service_of("/grpc.health.v1.Health/Check"),
            Some("grpc.health.v1.Health")
        );
        assert_eq!(service_of("/agentauth.v1.AgentAuth/"), None);
        assert_eq!(service_of("/agentauth.v1.AgentAuth"), None);
        assert_eq!(service_of("agentauth.v1.AgentAuth/Authenticate"), None);
        assert_eq!(service_of("/"), None);
        assert_eq!(service_of(""), None);
    }
}
