//! The tower pair an upstream puts on a route: [`RequireScopeLayer`] and the
//! [`RequireScope`] service it wraps around the route's handler (named as
//! tower-http names its pairs, e.g. `TimeoutLayer` / `Timeout<S>`).
//!
//! The service always answers: a refused request gets an RFC 6750 response
//! as `Ok`, never an error from the service (`type Error = S::Error`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use authproxy_core::clock;
use authproxy_core::verify::{InvalidToken, Part};
use axum::http::{HeaderMap, Request, header};
use axum::response::{IntoResponse, Response};

use crate::authorizer::Authorizer;
use crate::principal::Principal;
use crate::rejection::Rejection;
use crate::requirement::Requirement;

/// Layer requiring one authorization; made by [`Authorizer::require`].
#[derive(Clone)]
pub struct RequireScopeLayer {
    auth: Authorizer,
    requirement: Arc<Requirement>,
}

impl RequireScopeLayer {
    pub(crate) fn new(auth: Authorizer, requirement: Requirement) -> Self {
        Self {
            auth,
            requirement: Arc::new(requirement),
        }
    }
}

impl std::fmt::Debug for RequireScopeLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireScopeLayer")
            .field("requirement", &self.requirement)
            .finish_non_exhaustive()
    }
}

impl<S> tower::Layer<S> for RequireScopeLayer {
    type Service = RequireScope<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequireScope {
            inner,
            auth: self.auth.clone(),
            requirement: Arc::clone(&self.requirement),
        }
    }
}

/// The service made by [`RequireScopeLayer`]: verifies the bearer token,
/// checks its scopes, and hands the [`Principal`] to the inner service in
/// the request's extensions.
#[derive(Clone)]
pub struct RequireScope<S> {
    inner: S,
    auth: Authorizer,
    requirement: Arc<Requirement>,
}

impl<S> std::fmt::Debug for RequireScope<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireScope")
            .field("requirement", &self.requirement)
            .finish_non_exhaustive()
    }
}

impl<S, B> tower::Service<Request<B>> for RequireScope<S>
where
    S: tower::Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone that was driven to readiness is the one we call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        let requirement = Arc::clone(&self.requirement);
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let started = std::time::Instant::now();
            let value = requirement.value_in(&mut parts).await;
            let decision = decide(
                &auth,
                &parts.headers,
                &requirement,
                value.as_deref(),
                clock::now(),
            )
            .await;
            let label = decision.as_ref().map_or_else(Rejection::label, |_| "ok");
            auth.record(label, started.elapsed());
            match decision {
                Ok(principal) => {
                    parts.extensions.insert(principal);
                    inner.call(Request::from_parts(parts, body)).await
                }
                Err(rejection) => Ok(rejection.into_response()),
            }
        })
    }
}

impl Authorizer {
    /// Decides one request exactly as [`RequireScope`] does — the bearer
    /// token from `headers` (one `Authorization` header, RFC 6750 §2.1),
    /// one [`Authorizer::verify`] at `now`, `requirement` resolved with the
    /// request's path parameters `params` (name, value), and the token's
    /// scopes checked to cover it — and records the same metrics.
    ///
    /// For services that route requests themselves rather than sit in a
    /// tower stack in front of a handler, such as `authproxy verifier`
    /// (forward auth for upstreams that are not Rust). A refusal is a
    /// [`Rejection`]; its `IntoResponse` is the layer's RFC 6750 answer.
    pub async fn authorize(
        &self,
        headers: &HeaderMap,
        requirement: &Requirement,
        params: &[(&str, &str)],
        now: u64,
    ) -> Result<Principal, Rejection> {
        let started = std::time::Instant::now();
        let value = requirement.param().map(|name| {
            params
                .iter()
                .find(|(k, _)| *k == name)
                .map_or("", |(_, v)| *v)
        });
        let decision = decide(self, headers, requirement, value, now).await;
        let label = decision.as_ref().map_or_else(Rejection::label, |_| "ok");
        self.record(label, started.elapsed());
        decision
    }
}

/// Finds the bearer token of a request (RFC 6750 §2.1).
fn bearer(headers: &HeaderMap) -> Result<&str, Rejection> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(Rejection::Missing);
    };
    if values.next().is_some() {
        return Err(Rejection::BadRequest("more than one Authorization header"));
    }
    let malformed = || Rejection::Invalid(InvalidToken::Malformed(Part::Token));
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Rejection::Missing);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(malformed());
    }
    Ok(token)
}

/// The one decision, for the layer and for [`Authorizer::authorize`]:
/// `value` is the path parameter's value (`None` for a fixed requirement).
async fn decide(
    auth: &Authorizer,
    headers: &HeaderMap,
    requirement: &Requirement,
    value: Option<&str>,
    now: u64,
) -> Result<Principal, Rejection> {
    let token = bearer(headers)?;
    let principal = auth.verify(token, now).await.map_err(|reason| {
        tracing::debug!(%reason, "bearer token refused");
        Rejection::Invalid(reason)
    })?;
    let needed = requirement.resolve(value).map_err(|shown| {
        tracing::debug!(scope = %shown, "no token can cover this resource");
        Rejection::InsufficientScope(shown)
    })?;
    if !principal.covers(&needed) {
        tracing::debug!(sub = %principal.sub(), scope = %needed, "token lacks the scope");
        return Err(Rejection::InsufficientScope(needed.to_string()));
    }
    Ok(principal)
}
