//! The token endpoint (DESIGN §4): RFC 6749 §4.4 client credentials for the
//! code in this container.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use authproxy_core::ScopeSet;
use authproxy_core::clock;
use authproxy_core::oauth::ErrorBody;
use authproxy_core::token::MintError;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{AppState, no_store_json};
use crate::sidecar::Sidecar;

/// Largest token request body accepted (413 above).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Shortest lifetime a caller may ask for with `x-token-ttl`.
pub const MIN_REQUESTED_TTL: u64 = 30;

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
    /// Return `405 Method Not Allowed`, `invalid_request`, with `Allow: POST`.
    #[error("the token endpoint accepts POST only")]
    MethodNotAllowed,
    /// Return `408 Request Timeout`, `invalid_request`, and close the
    /// connection: the body did not arrive within `server.body_read_timeout`.
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
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
    pub(crate) fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::UnsupportedGrantType(_) => (StatusCode::BAD_REQUEST, "unsupported_grant_type"),
            Self::InvalidScope(_) => (StatusCode::BAD_REQUEST, "invalid_scope"),
            Self::AccessDenied(_) => (StatusCode::FORBIDDEN, "access_denied"),
            Self::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request"),
            Self::Framing => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "invalid_request"),
            Self::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "invalid_request"),
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
        let mut res = no_store_json(status, &ErrorBody::new(code, self.to_string()));
        match self {
            Self::Framing | Self::BodyTimeout(_) => {
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Self::RateLimited(secs) => {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            Self::MethodNotAllowed => {
                res.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            _ => {}
        }
        res
    }
}

/// The RFC 6749 §5.1 success body, written straight into one buffer: the
/// 1.4 KiB token needs no escaping (a compact JWS is base64url and dots),
/// so it is copied once instead of being scanned by a JSON serializer.
fn token_response(access_token: &str, expires_in: u64, scope: &str) -> Response {
    let mut body = Vec::with_capacity(access_token.len() + scope.len() + 96);
    body.extend_from_slice(b"{\"access_token\":\"");
    body.extend_from_slice(access_token.as_bytes());
    body.extend_from_slice(b"\",\"token_type\":\"Bearer\",\"expires_in\":");
    body.extend_from_slice(expires_in.to_string().as_bytes());
    body.extend_from_slice(b",\"scope\":");
    // Writing a string to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut body, scope);
    body.push(b'}');
    let mut res = Response::new(Body::from(body));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // RFC 6749 §5.1: token responses must not be cached.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    res
}

pub(crate) async fn token(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let started = std::time::Instant::now();
    let result = token_inner(&state, peer, req).await;
    let label = match &result {
        Ok((_, true)) => "reused",
        Ok((_, false)) => "issued",
        Err(e) => e.parts().1,
    };
    state
        .metrics
        .token_result(&state.workload_label, label, started.elapsed());
    match result {
        Ok((res, _)) => res,
        Err(e) => e.into_response(),
    }
}

/// Any method but POST on the token endpoint: the JSON error body every
/// other refusal has, rather than axum's empty 405.
pub(crate) async fn wrong_method() -> Response {
    TokenError::MethodNotAllowed.into_response()
}

/// The token endpoint proper; returns the response and whether the token was reused.
async fn token_inner(
    state: &AppState,
    peer: SocketAddr,
    req: Request,
) -> Result<(Response, bool), TokenError> {
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    // Everything that can refuse the request is decided on its head, before
    // a byte of body is read: a refused caller is answered at once and its
    // connection closed (hyper does not keep a connection whose body was
    // left unread), instead of holding a slot by never sending the body.
    state
        .caller
        .check(peer, headers)
        .map_err(TokenError::AccessDenied)?;
    if state.token_requires_header {
        super::caller::require_request_header(headers, "the token endpoint")
            .map_err(TokenError::AccessDenied)?;
    }
    if let Some(limiter) = &state.limiter {
        limiter
            .check(std::time::Instant::now())
            .map_err(TokenError::RateLimited)?;
    }
    // A token request is a small form sent with Content-Length. A chunked
    // one is refused (and its connection closed): together with a
    // Content-Length it is the classic request-smuggling shape.
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(TokenError::Framing);
    }
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(TokenError::TooLarge);
    }
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
    let body = read_body(body, state.body_read_timeout).await?;
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

    let sidecar = &state.sidecar;
    let ttl_secs = requested_ttl(headers, form.ttl.as_deref(), state.max_ttl)?;
    let scope = requested_scope(form.scope.as_deref(), sidecar, &state.workload_label)?;

    let at = clock::now();
    if !state.is_ready(at) {
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
    debug_assert!(
        issued
            .minted
            .token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    );
    let res = token_response(&issued.minted.token, c.exp.saturating_sub(at), &c.scope);
    Ok((res, issued.reused))
}

/// The body, at most [`MAX_BODY_BYTES`], within `timeout`: a client that
/// announces a body and never sends it is cut off.
async fn read_body(body: Body, timeout: Duration) -> Result<Bytes, TokenError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Err(_) => Err(TokenError::BodyTimeout(timeout)),
        Ok(Err(e)) => Err(TokenError::InvalidRequest(format!(
            "could not read the request body: {e}"
        ))),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

/// The parameters of a token request that authproxy reads.
#[derive(Debug, Default)]
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
fn requested_ttl(headers: &HeaderMap, form_ttl: Option<&str>, max: u64) -> Result<u64, TokenError> {
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
fn requested_scope(
    scope: Option<&str>,
    sidecar: &Sidecar,
    id: &str,
) -> Result<Arc<ScopeSet>, TokenError> {
    let ceiling = sidecar.ceiling();
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
