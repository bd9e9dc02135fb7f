//! The sidecar's HTTP surface (DESIGN §4): the token endpoint, discovery
//! documents and health probes.
//!
//! [`run`] takes an already bound listener and any shutdown future, so tests
//! bind `127.0.0.1:0` and the binary binds the configured address.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde::Serialize;
use serde_json::json;

use crate::authorization::ScopeSet;
use crate::proxy::ProxyError;
use crate::sidecar::Sidecar;
use crate::telemetry::RandomRequestId;
use crate::token::MintError;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// Largest token request body accepted (413 above).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Shortest lifetime a caller may ask for with `x-token-ttl`.
pub const MIN_REQUESTED_TTL: u64 = 30;
/// How often a failed grant renewal is retried.
const RENEW_RETRY: Duration = Duration::from_secs(10);

/// A refused token request, mapped to RFC 6749 §5.2 JSON.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Return `400 Bad Request`, `invalid_request`.
    #[error("{0}")]
    InvalidRequest(String),
    /// Return `400 Bad Request`, `unsupported_grant_type`.
    #[error("{0}")]
    UnsupportedGrantType(String),
    /// Return `400 Bad Request`, `invalid_scope`.
    #[error("{0}")]
    InvalidScope(String),
    /// Return `403 Forbidden`, `access_denied`: the request does not come
    /// from a local workload (proxied, from a browser, or a remote peer).
    #[error("{0}")]
    AccessDenied(String),
    /// Return `400 Bad Request`, `invalid_request`, and close the connection:
    /// a chunked token request.
    #[error("chunked token requests are not accepted; send Content-Length")]
    Framing,
    /// Return `429 Too Many Requests` with `Retry-After` (`server.rate_limit`).
    #[error("too many token requests; retry after {0} s")]
    RateLimited(u64),
    /// Return `413 Payload Too Large`, `invalid_request`.
    #[error("request body exceeds {MAX_BODY_BYTES} bytes")]
    TooLarge,
    /// Return `503 Service Unavailable`, `temporarily_unavailable`: no valid grant.
    #[error("the sidecar holds no valid grant right now; retry shortly")]
    Unavailable,
    /// Return `500 Internal Server Error`, `server_error`; the detail is
    /// logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl TokenError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::UnsupportedGrantType(_) => (StatusCode::BAD_REQUEST, "unsupported_grant_type"),
            Self::InvalidScope(_) => (StatusCode::BAD_REQUEST, "invalid_scope"),
            Self::AccessDenied(_) => (StatusCode::FORBIDDEN, "access_denied"),
            Self::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request"),
            Self::Framing => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "slow_down"),
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        }
    }
}

impl IntoResponse for TokenError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        if let Self::Internal(detail) = &self {
            tracing::error!(%detail, "token endpoint failure");
        } else {
            tracing::debug!(error = code, reason = %self, "token request refused");
        }
        let mut res = no_store_json(
            status,
            &json!({"error": code, "error_description": self.to_string()}),
        );
        match self {
            Self::Framing => {
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Self::RateLimited(secs) => {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            _ => {}
        }
        res
    }
}

/// A token bucket for `server.rate_limit`: up to `rate` requests a second,
/// bursts of up to `rate`. Answers 429 instead of queueing: a workload in a
/// loop should back off, not pile up.
#[derive(Debug)]
struct RateLimiter {
    rate: f64,
    state: std::sync::Mutex<(f64, std::time::Instant)>,
}

impl RateLimiter {
    fn new(rate: u32, now: std::time::Instant) -> Self {
        Self {
            rate: f64::from(rate),
            state: std::sync::Mutex::new((f64::from(rate), now)),
        }
    }

    fn check(&self, now: std::time::Instant) -> Result<(), TokenError> {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, last) = *st;
        let refilled =
            (tokens + now.saturating_duration_since(last).as_secs_f64() * self.rate).min(self.rate);
        if refilled >= 1.0 {
            *st = (refilled - 1.0, now);
            Ok(())
        } else {
            *st = (refilled, now);
            let wait = ((1.0 - refilled) / self.rate).ceil().max(1.0);
            // `wait` is a small positive whole number of seconds.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Err(TokenError::RateLimited(wait as u64))
        }
    }
}

#[derive(Clone)]
struct AppState {
    sidecar: Arc<Sidecar>,
    base_url: Arc<str>,
    limiter: Option<Arc<RateLimiter>>,
}

/// The sidecar's routes, for a sidecar reachable at `base_url`
/// (e.g. `http://127.0.0.1:8200`), used in the discovery document.
pub fn router(sidecar: Arc<Sidecar>, base_url: &str) -> Router {
    let limiter = sidecar
        .config()
        .server
        .rate_limit
        .map(|r| Arc::new(RateLimiter::new(r, std::time::Instant::now())));
    let state = AppState {
        sidecar,
        base_url: base_url.trim_end_matches('/').into(),
        limiter,
    };
    Router::new()
        .route(
            "/oauth2/token",
            post(token).layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api", any(proxy))
        .route("/api/", any(proxy))
        .route("/api/{*rest}", any(proxy))
        .with_state(state)
        .layer(
            tower::ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(RandomRequestId))
                .layer(TraceLayer::new_for_http().make_span_with(request_span))
                .layer(PropagateRequestIdLayer::x_request_id()),
        )
}

/// Serves the sidecar on `listener` until `shutdown` completes, then drains
/// in-flight requests. Also runs grant renewal for as long as it serves.
pub async fn run(
    listener: tokio::net::TcpListener,
    sidecar: Arc<Sidecar>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let renewal = tokio::spawn(Arc::clone(&sidecar).renew_forever(RENEW_RETRY));
    let sink = sidecar.config().sink.clone().map(|cfg| {
        tokio::spawn(crate::sink::run(
            Arc::clone(&sidecar),
            cfg,
            sidecar.sink_due(),
        ))
    });
    let limits = sidecar.config().server.limits;
    let app = router(sidecar, &format!("http://{addr}"));
    tracing::info!(listen = %addr, "authproxy sidecar listening");
    let served = crate::serve::serve(listener, app, limits, shutdown).await;
    renewal.abort();
    if let Some(s) = sink {
        s.abort();
    }
    served
}

/// One span per request, carrying its id (never headers: they may hold
/// tokens). Only the id: at the default `info` level, formatting method and
/// path into every request's span cost /healthz ~40% of its throughput; the
/// id is echoed to the client and forwarded upstream by the proxy, which is
/// enough to correlate.
fn request_span<B>(req: &axum::http::Request<B>) -> tracing::Span {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!("request", id)
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn no_store_json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let mut res = (status, axum::Json(body)).into_response();
    let h = res.headers_mut();
    // RFC 6749 §5.1: token responses (and their errors) must not be cached.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    res
}

#[derive(Serialize)]
struct TokenResponse<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: u64,
    scope: &'a str,
}

async fn token(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = std::time::Instant::now();
    let result = token_inner(&state, peer, &headers, body);
    let label = match &result {
        Ok((_, true)) => "reused",
        Ok((_, false)) => "issued",
        Err(e) => e.parts().1,
    };
    let sidecar = &state.sidecar;
    sidecar.metrics().token_result(
        &sidecar.config().workload.id.to_string(),
        label,
        started.elapsed(),
    );
    match result {
        Ok((res, _)) => res,
        Err(e) => e.into_response(),
    }
}

/// The token endpoint proper; returns the response and whether the token was reused.
fn token_inner(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Response, bool), TokenError> {
    let sidecar = &state.sidecar;
    local_caller(sidecar, peer, headers).map_err(TokenError::AccessDenied)?;
    if let Some(limiter) = &state.limiter {
        limiter.check(std::time::Instant::now())?;
    }
    // A token request is a small form sent with Content-Length. A chunked
    // one is refused (and its connection closed): together with a
    // Content-Length it is the classic request-smuggling shape.
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(TokenError::Framing);
    }

    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            TokenError::TooLarge
        } else {
            TokenError::InvalidRequest(format!("could not read the request body: {e}"))
        }
    })?;
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if form_type != Some(true) {
        return Err(TokenError::InvalidRequest(
            "the body must be application/x-www-form-urlencoded".into(),
        ));
    }
    let form = Form::parse(&body)?;

    match form.grant_type.as_deref() {
        None => return Err(TokenError::InvalidRequest("missing grant_type".into())),
        Some("client_credentials") => {}
        Some(other) => {
            return Err(TokenError::UnsupportedGrantType(format!(
                "grant_type `{other}` is not supported; use client_credentials"
            )));
        }
    }
    // Client credentials are accepted and ignored (the workload is known by
    // where the request comes from), but RFC 6749 §2.3.1 forbids using two
    // authentication methods at once: that is a malformed request.
    if form.client_secret.is_some() && headers.contains_key(header::AUTHORIZATION) {
        return Err(TokenError::InvalidRequest(
            "client authenticated twice (Authorization header and client_secret)".into(),
        ));
    }

    let ttl_secs = requested_ttl(headers, form.ttl.as_deref(), sidecar)?;
    let scope = requested_scope(form.scope.as_deref(), sidecar)?;

    let at = now();
    if !sidecar.is_ready(at) {
        return Err(TokenError::Unavailable);
    }
    let issued = sidecar.issue(&scope, ttl_secs, at).map_err(|e| match e {
        MintError::GrantNotValid => TokenError::Unavailable,
        MintError::BeyondGrant => TokenError::InvalidScope("scope exceeds the grant".into()),
        other => TokenError::Internal(other.to_string()),
    })?;
    let c = &issued.minted.claims;
    if issued.reused {
        tracing::debug!(jti = %c.jti, sub = %c.sub, scope = %c.scope, exp = c.exp, "token reused");
    }
    let res = no_store_json(
        StatusCode::OK,
        &TokenResponse {
            access_token: &issued.minted.token,
            token_type: "Bearer",
            expires_in: c.exp.saturating_sub(at),
            scope: &c.scope,
        },
    );
    Ok((res, issued.reused))
}

/// Refuses callers that are not the code in this container. A non-loopback
/// peer is someone else on the network; a relayed request (`Forwarded`,
/// `X-Forwarded-For`) is on behalf of someone else; an `Origin` header means
/// a browser page — possibly hostile, via DNS rebinding or CSRF — is making
/// the call. None may obtain a token or use one through the proxy.
fn local_caller(sidecar: &Sidecar, peer: SocketAddr, headers: &HeaderMap) -> Result<(), String> {
    if !sidecar.config().server.allow_remote_peers {
        if !peer.ip().is_loopback() {
            return Err("tokens are issued to local workloads only".into());
        }
        // DNS rebinding: a page at evil.example whose name now resolves to
        // 127.0.0.1 reaches us from a loopback peer, but its Host header
        // still says evil.example. Only loopback names are accepted.
        if !headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(is_loopback_host)
        {
            return Err(
                "the Host header must name a loopback address (127.0.0.1, localhost, [::1])".into(),
            );
        }
    }
    for h in ["forwarded", "x-forwarded-for"] {
        if headers.contains_key(h) {
            return Err(format!(
                "proxied requests ({h} header) are refused: tokens are issued to local workloads only"
            ));
        }
    }
    if headers.contains_key(header::ORIGIN) {
        return Err("requests from browsers (Origin header) are refused".into());
    }
    Ok(())
}

/// `127.0.0.1[:port]` (any 127/8), `localhost[:port]`, `[::1][:port]`.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, port)) if port.is_empty() || port.starts_with(':') => {
                return ip == "::1" && valid_port(port);
            }
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if valid_port(&format!(":{port}")) => name,
            Some(_) => return false,
            None => host,
        }
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Empty, or `:` followed by a port number.
fn valid_port(p: &str) -> bool {
    p.is_empty()
        || p.strip_prefix(':')
            .is_some_and(|n| n.parse::<u16>().is_ok())
}

async fn proxy(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
) -> Response {
    let sidecar = &state.sidecar;
    if let Err(why) = local_caller(sidecar, peer, req.headers()) {
        return TokenError::AccessDenied(why).into_response();
    }
    let Some(p) = sidecar.proxy() else {
        return ProxyError::NotConfigured.into_response();
    };
    let started = std::time::Instant::now();
    let res = match p.forward(sidecar, req).await {
        Ok(res) => res,
        Err(e) => {
            match &e {
                ProxyError::Unreachable(_) => sidecar.metrics().upstream_error("unreachable"),
                ProxyError::Timeout(_) => sidecar.metrics().upstream_error("timeout"),
                _ => {}
            }
            e.into_response()
        }
    };
    sidecar
        .metrics()
        .proxy_result(res.status().as_u16(), started.elapsed());
    res
}

/// The parameters of a token request that authproxy reads.
#[derive(Default)]
pub(crate) struct Form {
    grant_type: Option<String>,
    scope: Option<String>,
    client_secret: Option<String>,
    ttl: Option<String>,
}

impl Form {
    pub(crate) fn parse(body: &[u8]) -> Result<Self, TokenError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
            .map_err(|e| TokenError::InvalidRequest(format!("malformed form body: {e}")))?;
        let mut form = Self::default();
        for (k, v) in pairs {
            let slot = match k.as_str() {
                "grant_type" => &mut form.grant_type,
                "scope" => &mut form.scope,
                "client_secret" => &mut form.client_secret,
                "x-token-ttl" => &mut form.ttl,
                // client_id and unknown parameters are ignored (RFC 6749 §3.2).
                _ => continue,
            };
            // RFC 6749 §3.2: parameters must not be repeated. A second
            // `scope` silently winning is exactly the ambiguity that gets
            // exploited, so refuse it.
            if slot.replace(v).is_some() {
                return Err(TokenError::InvalidRequest(format!(
                    "parameter `{k}` is repeated"
                )));
            }
        }
        Ok(form)
    }
}

/// `x-token-ttl` (header or form field), clamped to `[30 s, tokens.ttl]`.
fn requested_ttl(
    headers: &HeaderMap,
    form_ttl: Option<&str>,
    sidecar: &Sidecar,
) -> Result<u64, TokenError> {
    let max = sidecar.config().tokens.ttl.as_secs();
    let header_ttl = match headers.get("x-token-ttl") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| TokenError::InvalidRequest("x-token-ttl is not text".into()))?,
        ),
        None => None,
    };
    let raw = match (header_ttl, form_ttl) {
        (Some(_), Some(_)) => {
            return Err(TokenError::InvalidRequest(
                "x-token-ttl given both as a header and as a form field".into(),
            ));
        }
        (Some(v), None) | (None, Some(v)) => v,
        (None, None) => return Ok(max),
    };
    let secs: u64 = raw.trim().parse().map_err(|_| {
        TokenError::InvalidRequest(format!("x-token-ttl `{raw}` is not a number of seconds"))
    })?;
    Ok(secs.clamp(MIN_REQUESTED_TTL.min(max), max))
}

/// The requested scopes, which must all be declared; absent or blank means
/// everything declared.
fn requested_scope(scope: Option<&str>, sidecar: &Sidecar) -> Result<Arc<ScopeSet>, TokenError> {
    let ceiling = sidecar.ceiling();
    let id = &sidecar.config().workload.id;
    if ceiling.is_empty() {
        return Err(TokenError::InvalidScope(format!(
            "{id} declares no authorizations, so no token can be issued for it"
        )));
    }
    let requested = match scope.map(str::trim) {
        // The usual request: the whole ceiling, shared, not copied.
        None | Some("") => return Ok(ceiling),
        Some(s) => ScopeSet::parse(s).map_err(|e| TokenError::InvalidScope(e.to_string()))?,
    };
    let beyond: Vec<String> = requested
        .iter()
        .filter(|a| !ceiling.covers(a))
        .map(ToString::to_string)
        .collect();
    if !beyond.is_empty() {
        return Err(TokenError::InvalidScope(format!(
            "not declared for {id}: {}",
            beyond.join(" ")
        )));
    }
    Ok(Arc::new(requested))
}

async fn jwks(State(state): State<AppState>) -> Response {
    axum::Json(state.sidecar.jwks()).into_response()
}

async fn metadata(State(state): State<AppState>) -> Response {
    let base = &state.base_url;
    let scopes: Vec<String> = state
        .sidecar
        .ceiling()
        .iter()
        .map(ToString::to_string)
        .collect();
    axum::Json(json!({
        "issuer": state.sidecar.config().tokens.issuer,
        "token_endpoint": format!("{base}/oauth2/token"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "scopes_supported": scopes,
    }))
    .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let m = state.sidecar.metrics();
    let exp = state.sidecar.grant().claims().exp;
    let left = i64::try_from(exp).unwrap_or(i64::MAX) - i64::try_from(now()).unwrap_or(0);
    m.grant_expiry.set(left);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.sidecar.is_ready(now()) {
        axum::Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "no valid grant"})),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_pass_the_host_check() {
        for ok in [
            "127.0.0.1:8200",
            "127.0.0.1",
            "127.1.2.3:80",
            "localhost:8200",
            "LOCALHOST",
            "[::1]:8200",
            "[::1]",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8200",
            "10.0.0.1:8200",
            "0.0.0.0:8200",
            "localhost.evil.example",
            "127.0.0.1.nip.io:8200",
            "[::2]:8200",
            "[::1]x",
            "127.0.0.1:99999",
            "127.0.0.1:port",
            "",
            "[::1",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn the_rate_limiter_allows_a_burst_then_refills_over_time() {
        let t0 = std::time::Instant::now();
        let l = RateLimiter::new(2, t0);
        assert!(l.check(t0).is_ok());
        assert!(l.check(t0).is_ok());
        assert!(matches!(l.check(t0), Err(TokenError::RateLimited(1))));
        assert!(l.check(t0 + Duration::from_millis(500)).is_ok());
        assert!(l.check(t0 + Duration::from_millis(500)).is_err());
        assert!(l.check(t0 + Duration::from_secs(5)).is_ok());
    }
}
