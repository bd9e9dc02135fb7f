//! `authproxy verifier` (DESIGN §11): the layer's verification as an HTTP
//! service, for upstreams that are not Rust — forward auth for nginx
//! `auth_request`, Traefik `forwardAuth`, Caddy `forward_auth` and Envoy
//! `ext_authz` (HTTP), and RFC 7662 introspection for application code.
//!
//! It is not a second verifier: every token goes through the layer's
//! [`Authorizer`] — `/verify` through [`Authorizer::authorize`] (bearer
//! extraction, one verification, the route's [`Requirement`] resolved and
//! covered, exactly as `RequireScope` decides), `/introspect` through
//! [`Authorizer::verify`] — with the layer's caches, key refresh and
//! metrics. What is the verifier's own is the routing a Rust upstream gets
//! from axum: which request a check is about, and which rule guards it.
//!
//! # Layout
//! - [`config`] — `config/verifier.toml`, validated (exit 64 on a bad key).
//! - [`routes`] — the `[[routes]]` table; deny by default.
//! - [`original`] — the request a check is about, its path canonical or refused.
//! - [`introspect`] — `POST /introspect` and who may call it.
//! - this module — the [`Verifier`], its router, `/verify` and ext_authz checks.
//!
//! [`Requirement`]: authproxy_layer::Requirement

pub mod config;
pub mod introspect;
pub mod original;
pub mod routes;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use authproxy_core::clock;
use authproxy_core::oauth::ErrorBody;
use authproxy_layer::{Authorizer, BuildError, Principal, Rejection};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use self::config::{KeySource, VerifierConfig};
use self::introspect::Secret;
use self::original::{Original, Refusal};
use self::routes::{Routes, Rule};

/// The headers a `200` to a check carries, for the proxy to pass upstream.
pub const SUBJECT: HeaderName = HeaderName::from_static("x-auth-subject");
/// The token's environment.
pub const ENVIRONMENT: HeaderName = HeaderName::from_static("x-auth-environment");
/// The token's scopes, space-separated.
pub const SCOPE: HeaderName = HeaderName::from_static("x-auth-scope");
/// The token's id (`jti`).
pub const TOKEN_ID: HeaderName = HeaderName::from_static("x-auth-token-id");

/// The verifier: the layer's authorizer, the route table, the metrics.
#[derive(Debug)]
pub struct Verifier {
    auth: Authorizer,
    routes: Routes,
    ext_authz_prefix: String,
    secret: Option<Secret>,
    audience: String,
    body_read_timeout: Duration,
    metrics: Metrics,
}

impl Verifier {
    /// Builds the layer's [`Authorizer`] from `[trust]` — loading the root
    /// keys, waiting for a JWKS URL or file as the layer does (30 s) — and
    /// takes the routes. [`BuildError::Keys`] means the keys could not be
    /// loaded; any other error is the configuration's.
    pub async fn build(config: VerifierConfig) -> Result<Self, BuildError> {
        let trust = config.trust;
        let mut registry = Registry::default();
        let mut builder = Authorizer::builder()
            .audience(trust.audience.clone())
            .environment(trust.environment.as_str())
            .leeway(trust.leeway)
            .max_stale(trust.max_stale)
            .metrics(&mut registry);
        builder = match trust.keys {
            // DESIGN §8: an issuer URL names its JWKS and its revocation
            // feed (so personal access tokens work).
            KeySource::Issuers(urls) => urls.into_iter().fold(builder, |b, url| b.issuer(url)),
            KeySource::JwksUrl(url) => builder.jwks_url(url),
            KeySource::JwksFile(path) => builder.jwks_file(path),
        };
        if let Some(feed) = trust.revocation_url {
            builder = builder.revocation_feed(feed);
        }
        builder = builder.revocations_max_stale(trust.revocations_max_stale);
        if let Some(pins) = trust.pinned_roots {
            builder = builder.pinned_roots(pins);
        }
        let metrics = Metrics::new(registry);
        let auth = builder.build().await?;
        Ok(Self {
            auth,
            routes: config.routes,
            ext_authz_prefix: config.ext_authz.path_prefix,
            secret: config.introspection.secret,
            audience: trust.audience,
            body_read_timeout: config.server.limits.body_read_timeout,
            metrics,
        })
    }

    /// Answers a check about `original`: its route's rule, decided by the
    /// layer, or a refusal.
    async fn check(
        &self,
        original: Result<Original<'_>, Refusal>,
        headers: &HeaderMap,
    ) -> Response {
        let original = match original {
            Ok(o) => o,
            Err(Refusal::Unknown(why)) => {
                self.metrics.check("unknown_request");
                return refusal(StatusCode::BAD_REQUEST, "invalid_request", why);
            }
            Err(Refusal::Path(why)) => {
                self.metrics.check("path_refused");
                return refusal(StatusCode::FORBIDDEN, "access_denied", why);
            }
        };
        let Some(matched) = self.routes.find(&original.method, original.path) else {
            self.metrics.check("no_route");
            tracing::debug!(method = %original.method, path = ?original.path, "no route takes the request");
            return refusal(
                StatusCode::FORBIDDEN,
                "access_denied",
                "no route allows this request",
            );
        };
        let requirement = match matched.rule {
            Rule::Public => {
                self.metrics.check("public");
                return StatusCode::OK.into_response();
            }
            Rule::Scope(requirement) => requirement,
        };
        match self
            .auth
            .authorize(headers, requirement, &matched.params, clock::now())
            .await
        {
            Ok(principal) => {
                self.metrics.check("allowed");
                allowed(&principal)
            }
            Err(rejection) => {
                self.metrics.check(label(&rejection));
                tracing::debug!(route = matched.index, %rejection, "check refused");
                rejection.into_response()
            }
        }
    }
}

/// `200` with who the token speaks for, for the proxy to pass upstream.
fn allowed(p: &Principal) -> Response {
    let mut res = StatusCode::OK.into_response();
    let h = res.headers_mut();
    // Workload ids, environments and scope sets are parsed types whose
    // characters are all header-safe; the jti is the token's own string,
    // so a value a header cannot carry is left out rather than trusted.
    for (name, value) in [
        (SUBJECT, p.sub().to_string()),
        (ENVIRONMENT, p.env().to_string()),
        (SCOPE, p.scopes().to_string()),
        (TOKEN_ID, p.jti().to_owned()),
    ] {
        match HeaderValue::from_str(&value) {
            Ok(v) => {
                h.insert(name, v);
            }
            Err(_) => {
                tracing::warn!(header = %name, "a verified token's value is not a header value; not passed on")
            }
        }
    }
    res
}

/// The metrics label of a layer refusal (as the layer's own metrics name it).
fn label(r: &Rejection) -> &'static str {
    match r {
        Rejection::Missing => "missing",
        Rejection::BadRequest(_) => "invalid_request",
        Rejection::Invalid(_) => "invalid_token",
        Rejection::InsufficientScope(_) => "insufficient_scope",
        _ => "refused",
    }
}

/// A refusal that is not about the token: no `WWW-Authenticate` (no token
/// would change the answer), the one OAuth error body.
fn refusal(status: StatusCode, code: &str, why: &str) -> Response {
    tracing::debug!(%status, why, "check refused");
    (status, axum::Json(ErrorBody::new(code, why))).into_response()
}

/// `/verify` (any method): nginx, Traefik, Caddy name the request in headers.
async fn verify(State(v): State<Arc<Verifier>>, req: Request) -> Response {
    let headers = req.headers();
    v.check(original::from_headers(headers), headers).await
}

/// `<ext_authz.path_prefix>/…` (any method): an Envoy ext_authz check.
async fn ext_authz(State(v): State<Arc<Verifier>>, req: Request) -> Response {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    let original =
        original::from_ext_authz(req.method(), target, &v.ext_authz_prefix, req.headers());
    v.check(original, req.headers()).await
}

async fn healthz() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

/// Counts by result only: no workload, path or token in any label.
async fn metrics(State(v): State<Arc<Verifier>>) -> Response {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &v.metrics.registry);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

async fn not_found() -> Response {
    refusal(
        StatusCode::NOT_FOUND,
        "not_found",
        "the verifier serves /verify, the ext_authz prefix, /introspect, /healthz and /metrics",
    )
}

/// The verifier's routes.
pub fn router(v: Arc<Verifier>) -> Router {
    let prefix = v.ext_authz_prefix.clone();
    Router::new()
        .route("/verify", any(verify))
        .route(
            "/introspect",
            post(introspect::introspect).fallback(introspect::wrong_method),
        )
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route(&prefix, any(ext_authz))
        .route(&format!("{prefix}/"), any(ext_authz))
        .route(&format!("{prefix}/{{*original}}"), any(ext_authz))
        .fallback(not_found)
        .with_state(v)
}

/// Serves the verifier on every listener until `shutdown` completes, then
/// drains in-flight requests (the sidecar's serve loop: header-read
/// timeout, connection cap, bounded drain).
pub async fn serve(
    listeners: Vec<tokio::net::TcpListener>,
    verifier: Arc<Verifier>,
    limits: crate::serve::Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if listeners.is_empty() {
        return Err(std::io::Error::other("no listener to serve on"));
    }
    for l in &listeners {
        tracing::info!(listen = %l.local_addr()?, "authproxy verifier listening");
    }
    crate::serve::serve(listeners, router(verifier), limits, shutdown).await
}

/// Labels of the verifier's counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The layer's metrics (`authproxy_layer_*`, registered by the authorizer)
/// and the verifier's own.
#[derive(Debug)]
struct Metrics {
    registry: Registry,
    /// `authproxy_verifier_checks_total{result}`.
    checks: Family<ResultLabels, Counter>,
    /// `authproxy_verifier_introspections_total{result}`.
    introspections: Family<ResultLabels, Counter>,
}

impl Metrics {
    /// Registers the verifier's counters beside what `registry` holds.
    fn new(mut registry: Registry) -> Self {
        let checks = Family::<ResultLabels, Counter>::default();
        registry.register(
            "authproxy_verifier_checks",
            "Forward-auth checks by result: allowed, public, no_route, path_refused, unknown_request, missing, invalid_token, insufficient_scope, invalid_request",
            checks.clone(),
        );
        let introspections = Family::<ResultLabels, Counter>::default();
        registry.register(
            "authproxy_verifier_introspections",
            "Introspection requests by result: active, inactive, unauthorized, invalid_request",
            introspections.clone(),
        );
        Self {
            registry,
            checks,
            introspections,
        }
    }

    fn check(&self, result: &'static str) {
        self.checks.get_or_create(&ResultLabels { result }).inc();
    }

    fn introspection(&self, result: &'static str) {
        self.introspections
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}
