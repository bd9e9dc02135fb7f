//! The upstream side: a tower layer that verifies authproxy access tokens and
//! checks that their scopes cover what a route needs.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, routing::{get, post}};
//! use authproxy::layer::{Authorizer, Principal};
//!
//! let auth = Authorizer::builder()
//!     .jwks_url("http://127.0.0.1:8200/.well-known/jwks.json")
//!     .audience("https://api.example.internal")
//!     .environment("main")
//!     .build()
//!     .await?;
//! let app: Router = Router::new()
//!     .route("/environment", get(|p: Principal| async move { p.sub().to_owned() })
//!         .route_layer(auth.require("env:view")))
//!     .route("/tasks/{name}/runs", post(|| async { "queued" })
//!         .route_layer(auth.require("task:operate:{name}")));
//! # Ok(()) }
//! ```
//!
//! The layer always answers: a refused request gets an RFC 6750 response
//! (`401 invalid_token` or `403 insufficient_scope`, with
//! `WWW-Authenticate` and a JSON body), never an error from the service.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::jwk::JwkSet;
use serde_json::json;

use crate::authorization::{Authorization, Name};
use crate::jwks::{JwksError, KeySource, KeyStore};
use crate::verify::{InvalidToken, Verifier};
use crate::workload::Environment;

pub use crate::verify::Principal;

/// Default clock-skew tolerance.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Default period between JWKS refreshes.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(300);
/// Default minimum time between two fetches caused by unknown `kid`s.
pub const DEFAULT_MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// Default maximum age of root keys that could not be refreshed.
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(24 * 3600);
/// Default bound of each verification cache.
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;

/// Why an [`Authorizer`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A required setting was not given.
    #[error("authorizer: `{0}` is required")]
    Missing(&'static str),
    /// The environment name is invalid.
    #[error("authorizer: invalid environment: {0}")]
    Environment(String),
    /// The keys could not be loaded.
    #[error("authorizer: {0}")]
    Keys(#[from] JwksError),
}

/// Verifies tokens for one upstream API; hands out per-route layers with
/// [`Authorizer::require`]. Cheap to clone.
#[derive(Clone)]
pub struct Authorizer {
    inner: Arc<Inner>,
}

struct Inner {
    verifier: Verifier,
    keys: KeyStore,
    max_stale: Duration,
    metrics: Option<LayerMetrics>,
}

/// Labels of `authproxy_layer_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// What the layer records when given a registry.
#[derive(Debug, Clone)]
struct LayerMetrics {
    requests: prometheus_client::metrics::family::Family<
        ResultLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    latency: prometheus_client::metrics::histogram::Histogram,
}

impl LayerMetrics {
    fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self {
            requests: Default::default(),
            latency: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.000_001, 3.0, 12),
            ),
        };
        registry.register(
            "authproxy_layer_requests",
            "Requests seen by the authproxy layer, by result",
            m.requests.clone(),
        );
        registry.register(
            "authproxy_layer_verification_duration_seconds",
            "Time the authproxy layer spent deciding",
            m.latency.clone(),
        );
        m
    }
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("verifier", &self.inner.verifier)
            .finish_non_exhaustive()
    }
}

/// Builder of an [`Authorizer`].
#[derive(Debug)]
pub struct AuthorizerBuilder {
    source: Option<KeySource>,
    audience: Option<String>,
    environment: Option<String>,
    leeway: Duration,
    refresh_interval: Duration,
    min_refetch_interval: Duration,
    cache_capacity: usize,
    max_stale: Duration,
    metrics: Option<LayerMetrics>,
}

impl AuthorizerBuilder {
    /// Records `authproxy_layer_requests_total{result}` (`ok`, `missing`,
    /// `invalid_request`, `invalid_token`, `insufficient_scope`) and
    /// `authproxy_layer_verification_duration_seconds` in the upstream's
    /// own Prometheus registry.
    pub fn metrics(mut self, registry: &mut prometheus_client::registry::Registry) -> Self {
        self.metrics = Some(LayerMetrics::register(registry));
        self
    }

    /// Trust the root keys served at this JWKS URL (fetched at build,
    /// refreshed periodically and on unknown `kid`).
    pub fn jwks_url(mut self, url: impl Into<String>) -> Self {
        self.source = Some(KeySource::Url(url.into()));
        self
    }

    /// Trust the root keys in this JWKS file (re-read like a URL).
    pub fn jwks_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.source = Some(KeySource::File(path.into()));
        self
    }

    /// Trust exactly these root keys.
    pub fn keys(mut self, set: JwkSet) -> Self {
        self.source = Some(KeySource::Static(set));
        self
    }

    /// This API's identifier; tokens must carry it as `aud`.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// The environment this API serves; grants must name it.
    pub fn environment(mut self, environment: impl Into<String>) -> Self {
        self.environment = Some(environment.into());
        self
    }

    /// Clock-skew tolerance for `exp`, `nbf` and `iat` (default 30 s).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Period of JWKS refreshes (default 5 min).
    pub fn refresh_interval(mut self, every: Duration) -> Self {
        self.refresh_interval = every;
        self
    }

    /// Minimum time between fetches triggered by unknown `kid`s (default 10 s).
    pub fn min_refetch_interval(mut self, every: Duration) -> Self {
        self.min_refetch_interval = every;
        self
    }

    /// How long keys from a file or URL stay trusted when they cannot be
    /// refreshed (default 24 h). Past it every token is refused (fail
    /// closed) until a fetch succeeds again.
    pub fn max_stale(mut self, age: Duration) -> Self {
        self.max_stale = age;
        self
    }

    /// Bound of the grant and token caches (default 10 000 each; 0 disables).
    pub fn cache_capacity(mut self, entries: usize) -> Self {
        self.cache_capacity = entries;
        self
    }

    /// Loads the keys and builds the authorizer. With a refreshable source,
    /// a background task refreshes the keys until the authorizer is dropped.
    pub async fn build(self) -> Result<Authorizer, BuildError> {
        let source = self
            .source
            .ok_or(BuildError::Missing("jwks_url, jwks_file or keys"))?;
        let audience = self.audience.ok_or(BuildError::Missing("audience"))?;
        let environment = self.environment.ok_or(BuildError::Missing("environment"))?;
        let environment =
            Environment::parse(&environment).map_err(|e| BuildError::Environment(e.to_string()))?;
        let keys = KeyStore::open(source, self.min_refetch_interval).await?;
        let refreshable = keys.is_refreshable();
        let inner = Arc::new(Inner {
            verifier: Verifier::new(
                audience,
                environment,
                self.leeway.as_secs(),
                self.cache_capacity,
            ),
            keys,
            max_stale: self.max_stale,
            metrics: self.metrics,
        });
        if refreshable && !self.refresh_interval.is_zero() {
            tokio::spawn(refresh_loop(Arc::downgrade(&inner), self.refresh_interval));
        }
        Ok(Authorizer { inner })
    }
}

async fn refresh_loop(inner: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        inner.keys.refresh().await;
    }
}

impl Authorizer {
    /// Starts building an authorizer.
    pub fn builder() -> AuthorizerBuilder {
        AuthorizerBuilder {
            source: None,
            audience: None,
            environment: None,
            leeway: DEFAULT_LEEWAY,
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            min_refetch_interval: DEFAULT_MIN_REFETCH_INTERVAL,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            max_stale: DEFAULT_MAX_STALE,
            metrics: None,
        }
    }

    /// Verifies a token at time `now` (unix seconds). On an unknown root
    /// `kid`, refetches the keys (rate-limited) and tries once more.
    pub async fn verify(&self, token: &str, now: u64) -> Result<Principal, InvalidToken> {
        let store = &self.inner.keys;
        if store.is_stale(now, self.inner.max_stale) {
            store.refetch_if_allowed().await;
            if store.is_stale(now, self.inner.max_stale) {
                store.log_stale(now);
                return Err(InvalidToken::KeysStale);
            }
        }
        let keys = self.inner.keys.current();
        match self.inner.verifier.verify(token, &keys, now) {
            Err(InvalidToken::UnknownRootKey)
                if self.inner.keys.refetch_for_unknown_kid(&keys).await =>
            {
                self.inner
                    .verifier
                    .verify(token, &self.inner.keys.current(), now)
            }
            other => other,
        }
    }

    /// A layer requiring `requirement`: a scope string in which the resource
    /// may be a path parameter, e.g. `env:view` or `task:operate:{name}`.
    ///
    /// # Panics
    /// On a malformed requirement, like axum's `route` on a malformed path:
    /// it is a programming error, found when the router is built. Use
    /// [`Authorizer::try_require`] to handle it instead.
    #[allow(clippy::panic)] // documented: a malformed route requirement is a startup bug
    pub fn require(&self, requirement: &str) -> RequireScope {
        match self.try_require(requirement) {
            Ok(layer) => layer,
            Err(e) => panic!("invalid authproxy requirement `{requirement}`: {e}"),
        }
    }

    /// As [`Authorizer::require`], returning an error on a malformed requirement.
    pub fn try_require(&self, requirement: &str) -> Result<RequireScope, String> {
        Ok(RequireScope {
            auth: self.clone(),
            requirement: Arc::new(Requirement::parse(requirement)?),
        })
    }
}

/// A parsed route requirement.
#[derive(Debug)]
struct Requirement {
    kind: String,
    action: String,
    resource: Option<Resource>,
    /// The authorization itself when no path parameter is involved,
    /// resolved once at startup instead of on every request.
    fixed: Option<Authorization>,
}

#[derive(Debug)]
enum Resource {
    Literal(String),
    Param(String),
}

impl Requirement {
    fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let (kind, action, resource) = match parts.as_slice() {
            [k, a] => (*k, *a, None),
            [k, a, r] => (*k, *a, Some(*r)),
            _ => return Err("expected type:action or type:action:resource".into()),
        };
        let resource =
            resource.map(
                |r| match r.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                    Some(param) => Resource::Param(param.to_owned()),
                    None => Resource::Literal(r.to_owned()),
                },
            );
        // Validate the combination now, with a placeholder for a parameter.
        let probe = match &resource {
            None => None,
            Some(Resource::Literal(l)) => Some(l.as_str()),
            Some(Resource::Param(p)) if p.is_empty() => return Err("empty {} parameter".into()),
            Some(Resource::Param(_)) => Some("x"),
        };
        let probed = Authorization::from_parts(kind, action, probe).map_err(|e| e.to_string())?;
        let fixed = match &resource {
            Some(Resource::Param(_)) => None,
            _ => Some(probed),
        };
        Ok(Self {
            kind: kind.to_owned(),
            action: action.to_owned(),
            resource,
            fixed,
        })
    }

    /// The authorization this request needs, or `Err(display)` when the path
    /// parameter is not a valid name (no token can cover it).
    async fn resolve(
        &self,
        parts: &mut Parts,
    ) -> Result<std::borrow::Cow<'_, Authorization>, String> {
        if let Some(fixed) = &self.fixed {
            return Ok(std::borrow::Cow::Borrowed(fixed));
        }
        let resource = match &self.resource {
            None => None,
            Some(Resource::Literal(l)) => Some(l.clone()),
            Some(Resource::Param(p)) => {
                // Params exist once the router matched; under `route_layer`
                // they always do. Missing means "no resource": never covered.
                let value = match RawPathParams::from_request_parts(parts, &()).await {
                    Ok(params) => params
                        .iter()
                        .find(|(k, _)| k == p)
                        .map(|(_, v)| v.to_owned())
                        .unwrap_or_default(),
                    Err(_) => String::new(),
                };
                Some(value)
            }
        };
        // Only built when refusing: the scope as the client should ask for it.
        let shown = || match &resource {
            Some(r) => format!("{}:{}:{r}", self.kind, self.action),
            None => format!("{}:{}", self.kind, self.action),
        };
        if let Some(r) = &resource
            && Name::parse(r).is_err()
        {
            return Err(shown());
        }
        Authorization::from_parts(&self.kind, &self.action, resource.as_deref())
            .map(std::borrow::Cow::Owned)
            .map_err(|_| shown())
    }
}

/// A refused request, answered per RFC 6750 §3.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// Return `401 Unauthorized` with a bare `WWW-Authenticate: Bearer`
    /// (RFC 6750 §3.1: no error code when no credentials were sent).
    #[error("no bearer token")]
    Missing,
    /// Return `400 Bad Request`, `invalid_request` (e.g. two Authorization headers).
    #[error("{0}")]
    BadRequest(&'static str),
    /// Return `401 Unauthorized`, `invalid_token`.
    #[error("{0}")]
    Invalid(InvalidToken),
    /// Return `403 Forbidden`, `insufficient_scope` naming the scope needed.
    #[error("token lacks scope {0}")]
    InsufficientScope(String),
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let (status, challenge, body) = match &self {
            Self::Missing => (
                StatusCode::UNAUTHORIZED,
                "Bearer".to_owned(),
                json!({"error": "invalid_token", "error_description": "a bearer token is required"}),
            ),
            Self::BadRequest(why) => (
                StatusCode::BAD_REQUEST,
                "Bearer error=\"invalid_request\"".to_owned(),
                json!({"error": "invalid_request", "error_description": why}),
            ),
            Self::Invalid(reason) => {
                let d = reason.public_description();
                (
                    StatusCode::UNAUTHORIZED,
                    format!("Bearer error=\"invalid_token\", error_description=\"{d}\""),
                    json!({"error": "invalid_token", "error_description": d}),
                )
            }
            Self::InsufficientScope(scope) => (
                StatusCode::FORBIDDEN,
                format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\""),
                json!({
                    "error": "insufficient_scope",
                    "error_description": format!("the token does not grant {scope}"),
                    "scope": scope,
                }),
            ),
        };
        let mut res = (status, axum::Json(body)).into_response();
        // The scope comes from a validated name or a fixed string; if it
        // somehow could not be a header value, fall back to the bare scheme.
        let value = HeaderValue::from_str(&challenge).unwrap_or(HeaderValue::from_static("Bearer"));
        res.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        res
    }
}

/// Finds the bearer token of a request (RFC 6750 §2.1).
fn bearer(parts: &Parts) -> Result<&str, Rejection> {
    let mut values = parts.headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(Rejection::Missing);
    };
    if values.next().is_some() {
        return Err(Rejection::BadRequest("more than one Authorization header"));
    }
    let value = value
        .to_str()
        .map_err(|_| Rejection::Invalid(InvalidToken::Malformed(crate::verify::Part::Token)))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Rejection::Missing);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(Rejection::Invalid(InvalidToken::Malformed(
            crate::verify::Part::Token,
        )));
    }
    Ok(token)
}

async fn authorize(
    auth: &Authorizer,
    requirement: &Requirement,
    parts: &mut Parts,
) -> Result<Principal, Rejection> {
    let token = bearer(parts)?;
    let now = jsonwebtoken::get_current_timestamp();
    let principal = auth.verify(token, now).await.map_err(|reason| {
        tracing::debug!(%reason, "bearer token refused");
        Rejection::Invalid(reason)
    })?;
    let needed = requirement.resolve(parts).await.map_err(|shown| {
        tracing::debug!(scope = %shown, "no token can cover this resource");
        Rejection::InsufficientScope(shown)
    })?;
    if !principal.scopes().covers(&needed) {
        tracing::debug!(sub = %principal.sub(), scope = %needed, "token lacks the scope");
        return Err(Rejection::InsufficientScope(needed.to_string()));
    }
    Ok(principal)
}

/// Layer requiring one authorization; made by [`Authorizer::require`].
#[derive(Clone)]
pub struct RequireScope {
    auth: Authorizer,
    requirement: Arc<Requirement>,
}

impl std::fmt::Debug for RequireScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireScope")
            .field("requirement", &self.requirement)
            .finish_non_exhaustive()
    }
}

impl<S> tower::Layer<S> for RequireScope {
    type Service = RequireScopeService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequireScopeService {
            inner,
            auth: self.auth.clone(),
            requirement: Arc::clone(&self.requirement),
        }
    }
}

/// The service made by [`RequireScope`].
#[derive(Clone)]
pub struct RequireScopeService<S> {
    inner: S,
    auth: Authorizer,
    requirement: Arc<Requirement>,
}

impl<S> std::fmt::Debug for RequireScopeService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireScopeService")
            .field("requirement", &self.requirement)
            .finish_non_exhaustive()
    }
}

impl<S, B> tower::Service<Request<B>> for RequireScopeService<S>
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
            let decision = authorize(&auth, &requirement, &mut parts).await;
            if let Some(m) = &auth.inner.metrics {
                let result = match &decision {
                    Ok(_) => "ok",
                    Err(Rejection::Missing) => "missing",
                    Err(Rejection::BadRequest(_)) => "invalid_request",
                    Err(Rejection::Invalid(_)) => "invalid_token",
                    Err(Rejection::InsufficientScope(_)) => "insufficient_scope",
                };
                m.requests.get_or_create(&ResultLabels { result }).inc();
                m.latency.observe(started.elapsed().as_secs_f64());
            }
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

/// A handler asked for a [`Principal`] on a route the layer does not guard.
#[derive(Debug, thiserror::Error)]
#[error("route is not protected by an authproxy layer")]
pub struct NoPrincipal;

impl IntoResponse for NoPrincipal {
    fn into_response(self) -> Response {
        tracing::error!("a handler asked for a Principal on a route without Authorizer::require");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": "server_error"})),
        )
            .into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = NoPrincipal;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or(NoPrincipal)
    }
}
