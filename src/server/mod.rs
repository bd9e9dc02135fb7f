//! The sidecar's HTTP surface (DESIGN §4): the token endpoint, the forward
//! proxy, discovery documents, probes and metrics.
//!
//! [`serve`] takes already bound listeners and any shutdown future, so
//! tests bind `127.0.0.1:0` and the binary binds the configured addresses.
//! Background work (renewal, the token file, reload) belongs to
//! [`crate::daemon`], not here.

mod caller;
mod discovery;
mod fetch_metadata;
mod guard;
mod rate_limit;
mod token;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use authproxy_core::clock;
use authproxy_core::token::Minted;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use futures_util::future::Either;
use serde::Serialize;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::grant_source::GrantSource;
use crate::proxy::{Proxy, ProxyError};
use crate::sidecar::Sidecar;
use crate::telemetry::{RandomRequestId, SidecarMetrics};

/// The rule for a local caller, which the verifier's introspection shares.
pub(crate) use caller::CallerPolicy;
pub use token::{MAX_BODY_BYTES, MIN_REQUESTED_TTL, TokenError};

/// What the routes need; built by the daemon.
#[derive(Debug, Clone)]
pub struct Services {
    /// The configuration in force.
    pub config: Arc<Config>,
    /// The key, grant and reuse cache.
    pub sidecar: Arc<Sidecar>,
    /// Where grants come from (and the root keys to publish).
    pub source: Arc<GrantSource>,
    /// The forward proxy, when `[proxy]` is configured.
    pub proxy: Option<Arc<Proxy>>,
    /// The sidecar's metrics.
    pub metrics: Arc<SidecarMetrics>,
}

impl Services {
    /// Ready: holds a valid grant, and its declarations have not been
    /// failing to reload for longer than `trust.reload_grace`.
    pub fn is_ready(&self, now: u64) -> bool {
        ready(
            &self.sidecar,
            &self.source,
            self.config.trust.reload_grace.as_secs(),
            now,
        )
    }
}

fn ready(sidecar: &Sidecar, source: &GrantSource, reload_grace: u64, now: u64) -> bool {
    sidecar.is_ready(now) && source.is_current(now, reload_grace)
}

impl AppState {
    fn is_ready(&self, now: u64) -> bool {
        ready(&self.sidecar, &self.source, self.reload_grace, now)
    }
}

#[derive(Clone)]
struct AppState {
    sidecar: Arc<Sidecar>,
    source: Arc<GrantSource>,
    proxy: Option<Arc<Proxy>>,
    metrics: Arc<SidecarMetrics>,
    caller: caller::CallerPolicy,
    token_requires_header: bool,
    limiter: Option<Arc<rate_limit::RateLimiter>>,
    max_ttl: u64,
    body_read_timeout: std::time::Duration,
    reload_grace: u64,
    workload_label: Arc<str>,
    /// The proxy's last `Authorization` value and the token it carries.
    bearer: Arc<Mutex<Option<Bearer>>>,
}

/// `Bearer <token>`, built once per token rather than once per request.
#[derive(Debug)]
struct Bearer {
    minted: Arc<Minted>,
    header: HeaderValue,
}

/// The sidecar's routes. The discovery document names the URL each caller
/// reached (its `Host`), so the router needs no address of its own.
pub fn router(services: Services) -> Router {
    routes(app_state(services))
}

fn app_state(services: Services) -> AppState {
    let config = &services.config;
    AppState {
        limiter: config
            .server
            .rate_limit
            .map(|r| Arc::new(rate_limit::RateLimiter::new(r, std::time::Instant::now()))),
        caller: caller::CallerPolicy {
            allow_remote_peers: config.server.allow_remote_peers,
        },
        token_requires_header: config.server.require_header,
        max_ttl: config.tokens.ttl.as_secs(),
        body_read_timeout: config.server.limits.body_read_timeout,
        reload_grace: config.trust.reload_grace.as_secs(),
        workload_label: config.workload.id.to_string().into(),
        bearer: Arc::default(),
        sidecar: services.sidecar,
        source: services.source,
        proxy: services.proxy,
        metrics: services.metrics,
    }
}

fn routes(state: AppState) -> Router {
    Router::new()
        .route(
            "/oauth2/token",
            post(token::token).fallback(token::wrong_method),
        )
        .route("/.well-known/jwks.json", get(discovery::jwks))
        .route(
            "/.well-known/oauth-authorization-server",
            get(discovery::metadata),
        )
        .route("/healthz", get(discovery::healthz))
        .route("/readyz", get(discovery::readyz))
        .route("/metrics", get(discovery::metrics))
        .route("/api", any(proxy))
        .route("/api/", any(proxy))
        .route("/api/{*rest}", any(proxy))
        .with_state(state)
        .layer(axum::middleware::from_fn(guard::every_request))
        .layer(every_request())
}

/// What every request passes through, outermost first: its id (the
/// client's `x-request-id` or a random one), its span, and the id echoed
/// in the response. (Then the guard, [`guard::every_request`].)
type EveryRequest = tower::layer::util::Stack<
    PropagateRequestIdLayer,
    tower::layer::util::Stack<
        TraceLayer<SharedClassifier<ServerErrorsAsFailures>, MakeRequestSpan>,
        tower::layer::util::Stack<SetRequestIdLayer<RandomRequestId>, tower::layer::util::Identity>,
    >,
>;

type MakeRequestSpan = fn(&axum::http::Request<Body>) -> tracing::Span;

fn every_request() -> tower::ServiceBuilder<EveryRequest> {
    tower::ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(RandomRequestId))
        .layer(TraceLayer::new_for_http().make_span_with(request_span as MakeRequestSpan))
        .layer(PropagateRequestIdLayer::x_request_id())
}

/// `/api/*` when the proxy is on: the guard and the proxy, without the
/// router (whose matching, middleware and extractors cost a proxied request
/// about a sixth of its instructions, bench/PROFILE.md). The router's
/// `/api` routes call the same [`proxy`], behind the same layers.
#[derive(Clone)]
struct ProxyLane(AppState);

impl tower::Service<Request<Body>> for ProxyLane {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            if let Err(e) = guard::check(req.headers()) {
                return Ok(e.into_response());
            }
            // `serve` gives every request its peer.
            let Some(&peer) = req.extensions().get::<ConnectInfo<SocketAddr>>() else {
                return Ok(TokenError::Internal("no peer address".into()).into_response());
            };
            Ok(proxy(State(state), peer, req).await)
        })
    }
}

/// The lane behind the same layers as the router, its response body made
/// an axum `Body` as the router makes it.
type Lane = tower::util::MapResponse<
    <EveryRequest as tower::Layer<ProxyLane>>::Service,
    fn(axum::http::Response<LaneBody>) -> Response,
>;

type LaneBody = tower_http::trace::ResponseBody<
    Body,
    tower_http::classify::NeverClassifyEos<tower_http::classify::ServerErrorsFailureClass>,
>;

fn lane_response(res: axum::http::Response<LaneBody>) -> Response {
    res.map(Body::new)
}

/// The sidecar's front door: the router, and the proxy lane for `/api/*`.
#[derive(Clone)]
struct Front {
    router: Router,
    lane: Option<Lane>,
}

impl tower::Service<Request<Body>> for Front {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<
        <Router as tower::Service<Request<Body>>>::Future,
        <Lane as tower::Service<Request<Body>>>::Future,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both are always ready (the router says so; the lane's layers pass
        // readiness through to `ProxyLane`, which is).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let path = req.uri().path();
        match &mut self.lane {
            // The paths the router's `/api` routes match.
            Some(lane) if path == "/api" || path.starts_with("/api/") => {
                Either::Right(lane.call(req))
            }
            _ => Either::Left(self.router.call(req)),
        }
    }
}

/// Serves the sidecar's routes on every listener until `shutdown`
/// completes, then drains in-flight requests.
pub async fn serve(
    listeners: Vec<tokio::net::TcpListener>,
    services: Services,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut addrs = Vec::with_capacity(listeners.len());
    for l in &listeners {
        addrs.push(l.local_addr()?);
    }
    if addrs.is_empty() {
        return Err(std::io::Error::other("no listener to serve on"));
    }
    let limits = services.config.server.limits;
    let state = app_state(services);
    let front = Front {
        lane: state.proxy.is_some().then(|| {
            let lane = every_request().service(ProxyLane(state.clone()));
            tower::ServiceExt::map_response(lane, lane_response as fn(_) -> _)
        }),
        router: routes(state),
    };
    for addr in &addrs {
        tracing::info!(listen = %addr, "authproxy sidecar listening");
    }
    crate::serve::serve(listeners, front, limits, shutdown).await
}

/// One span per request, carrying its id (never headers: they may hold
/// tokens). Only the id: formatting method and path into every request's
/// span was measured to cost /healthz ~40% of its throughput (see
/// bench/PROFILE.md); the id is echoed to the client and forwarded upstream
/// by the proxy, which is enough to correlate.
fn request_span<B>(req: &axum::http::Request<B>) -> tracing::Span {
    let id = req
        .headers()
        .get(crate::telemetry::X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!("request", id)
}

fn no_store_json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let mut res = (status, axum::Json(body)).into_response();
    let h = res.headers_mut();
    // RFC 6749 §5.1: token responses (and their errors) must not be cached.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    res
}

/// `/api/*`: the forward proxy, with a reused token for the whole ceiling.
async fn proxy(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response {
    if let Err(why) = state.caller.check(peer, req.headers()) {
        return TokenError::AccessDenied(why).into_response();
    }
    let Some(p) = &state.proxy else {
        return ProxyError::NotConfigured.into_response();
    };
    if p.requires_header()
        && let Err(why) = caller::require_request_header(req.headers(), "/api")
    {
        return TokenError::AccessDenied(why).into_response();
    }
    let started = std::time::Instant::now();
    let forwarded = match bearer_header(&state) {
        Ok(authorization) => p.forward(authorization, req).await,
        Err(e) => Err(e),
    };
    let res = match forwarded {
        Ok(res) => res,
        Err(e) => {
            match &e {
                ProxyError::Unreachable(_) => state.metrics.upstream_error("unreachable"),
                ProxyError::Timeout(_) => state.metrics.upstream_error("timeout"),
                _ => {}
            }
            e.into_response()
        }
    };
    state
        .metrics
        .proxy_result(res.status().as_u16(), started.elapsed());
    res
}

/// `Bearer <token>` for the proxy: the workload's whole ceiling, reused.
fn bearer_header(state: &AppState) -> Result<HeaderValue, ProxyError> {
    let sidecar = &state.sidecar;
    let ceiling = sidecar.ceiling();
    // An empty-scope token is no credential: refuse as the token endpoint does.
    if ceiling.is_empty() {
        return Err(ProxyError::NoAuthorizations(
            state.workload_label.to_string(),
        ));
    }
    let issued = sidecar
        .issue_reusing(&ceiling, state.max_ttl, clock::now())
        .map_err(ProxyError::NoToken)?;
    // A poisoned lock holds a whole value or none: each write is one assignment.
    let mut cached = state.bearer.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(b) = cached
        .as_ref()
        .filter(|b| Arc::ptr_eq(&b.minted, &issued.minted))
    {
        return Ok(b.header.clone());
    }
    let mut value = Vec::with_capacity(7 + issued.minted.token.len());
    value.extend_from_slice(b"Bearer ");
    value.extend_from_slice(issued.minted.token.as_bytes());
    // A compact JWS is base64url and dots: always a valid header value.
    let mut header = HeaderValue::from_maybe_shared(axum::body::Bytes::from(value))
        .map_err(|_| ProxyError::BadRequest("the token is not a header value"))?;
    header.set_sensitive(true);
    *cached = Some(Bearer {
        minted: issued.minted,
        header: header.clone(),
    });
    Ok(header)
}

/// Parses a token request body as the token endpoint does (fuzzing).
#[cfg(fuzzing)]
pub(crate) fn parse_form(body: &[u8]) -> bool {
    token::Form::parse(body).is_ok()
}
