//! Forward-proxy mode: `/api/<path>?<query>` on the sidecar is sent to
//! `<upstream>/<path>?<query>` with the sidecar's own token attached, so
//! code in the container needs no token handling at all.
//!
//! Bodies are streamed both ways (never buffered), connections to the
//! upstream are pooled, redirects are passed back and never followed (the
//! token goes to the configured origin only), and every response — 401 and
//! 403 included — is passed through unchanged.

use std::time::Duration;

use authproxy_core::oauth::ErrorBody;
use axum::body::{Body, HttpBody as _};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::config::ProxyConfig;

mod idle;
mod path;

pub use idle::BodyIdle;
pub use path::confine_path;

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// Return `400 Bad Request`: absolute-form targets and `CONNECT` are not
    /// forward-proxy requests to our upstream.
    #[error("{0}")]
    BadRequest(&'static str),
    /// Return `404 Not Found`: `[proxy]` is not configured.
    #[error("proxy mode is not configured on this sidecar")]
    NotConfigured,
    /// Return `403 Forbidden`, `access_denied`: the workload declares no
    /// authorizations, so there is no token to attach (the token endpoint
    /// answers `invalid_scope` for the same reason).
    #[error("{0} declares no authorizations, so the proxy has no token to attach")]
    NoAuthorizations(String),
    /// Return `503 Service Unavailable`: no token could be minted.
    #[error("no token: {0}")]
    NoToken(#[source] authproxy_core::token::MintError),
    /// Return `502 Bad Gateway`: the upstream could not be reached.
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// Return `504 Gateway Timeout`: no response within `proxy.timeout`.
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::NotConfigured => (StatusCode::NOT_FOUND, "not_found"),
            Self::NoAuthorizations(_) => (StatusCode::FORBIDDEN, "access_denied"),
            Self::NoToken(_) => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
            Self::Unreachable(_) => (StatusCode::BAD_GATEWAY, "bad_gateway"),
            Self::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "gateway_timeout"),
        };
        tracing::warn!(error = code, reason = %self, "proxy request failed");
        (status, axum::Json(ErrorBody::new(code, self.to_string()))).into_response()
    }
}

/// The header a request to `/api/*` must carry, with the value `1`
/// (`proxy.require_header`); it is addressed to the sidecar and not
/// forwarded.
pub const REQUEST_HEADER: HeaderName = HeaderName::from_static("x-authproxy-request");

/// The forward proxy of one sidecar.
#[derive(Debug)]
pub struct Proxy {
    client: reqwest::Client,
    upstream: reqwest::Url,
    timeout: Duration,
    idle_timeout: Duration,
    require_header: bool,
}

/// RFC 9110 §7.6.1 hop-by-hop headers, plus the proxy-only ones.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including every header the `Connection`
/// header names. Done *before* the sidecar adds its Authorization, so a
/// client sending `Connection: authorization` cannot strip the token.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(n);
    }
}

impl Proxy {
    /// A proxy to `config.upstream`.
    pub fn new(config: &ProxyConfig) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            // Redirects go back to the caller; following one would carry the
            // token to wherever the upstream points.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(60));
        if config.upstream.scheme() == "http" {
            // Only the configured origin is ever contacted, so a plain-HTTP
            // upstream needs no trust store: skip loading the system's
            // certificates (~3 MiB and startup time in every container).
            builder = builder.tls_certs_only(std::iter::empty());
        }
        let client = builder.build()?;
        Ok(Self {
            client,
            upstream: config.upstream.clone(),
            timeout: config.timeout,
            idle_timeout: config.idle_timeout,
            require_header: config.require_header,
        })
    }

    /// Whether requests must carry [`REQUEST_HEADER`] (`proxy.require_header`).
    pub fn requires_header(&self) -> bool {
        self.require_header
    }

    /// The target URL for a request path under `/api` (and its query).
    fn target(&self, rest: &str, query: Option<&str>) -> Result<reqwest::Url, ProxyError> {
        let rest = confine_path(rest).map_err(ProxyError::BadRequest)?;
        let base = self.upstream.as_str().trim_end_matches('/');
        let url = match query {
            Some(q) => format!("{base}{rest}?{q}"),
            None => format!("{base}{rest}"),
        };
        let parsed = reqwest::Url::parse(&url)
            .map_err(|_| ProxyError::BadRequest("the path does not form a valid upstream URL"))?;
        // Defence in depth: whatever the path, the token goes to the
        // configured origin, under its base path, and nowhere else.
        let base_path = self.upstream.path().trim_end_matches('/');
        let under_base = parsed
            .path()
            .strip_prefix(base_path)
            .is_some_and(|after| after.is_empty() || after.starts_with('/'));
        if parsed.origin() != self.upstream.origin() || !under_base {
            return Err(ProxyError::BadRequest(
                "the path leaves the upstream's base path",
            ));
        }
        Ok(parsed)
    }

    /// Forwards `req` (whose path starts with `/api`) with `authorization`
    /// (`Bearer <token>`, marked sensitive) in place of the client's own.
    pub async fn forward(
        &self,
        authorization: HeaderValue,
        req: Request,
    ) -> Result<Response, ProxyError> {
        let (parts, body) = req.into_parts();
        if parts.method == Method::CONNECT {
            return Err(ProxyError::BadRequest("CONNECT is not supported"));
        }
        // `GET http://elsewhere/ HTTP/1.1`: a client trying to use us as an
        // open proxy. Only origin-form paths under /api are forwarded.
        if parts.uri.authority().is_some() {
            return Err(ProxyError::BadRequest(
                "absolute-form request targets are not supported; use /api/<path>",
            ));
        }
        let path = parts.uri.path();
        let rest = path.strip_prefix("/api").unwrap_or(path);
        let parsed = self.target(rest, parts.uri.query())?;

        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        headers.remove(header::HOST);
        headers.remove(REQUEST_HEADER);
        headers.remove(header::AUTHORIZATION);
        headers.insert(header::AUTHORIZATION, authorization);

        let mut request = self.client.request(parts.method, parsed).headers(headers);
        // An empty body is sent as none at all (no chunked GET bodies).
        if body.size_hint().exact() != Some(0) {
            request = request.body(reqwest::Body::wrap_stream(body.into_data_stream()));
        }
        let response = match tokio::time::timeout(self.timeout, request.send()).await {
            Err(_) => return Err(ProxyError::Timeout(self.timeout)),
            Ok(Err(e)) => return Err(ProxyError::Unreachable(crate::telemetry::describe(&e))),
            Ok(Ok(r)) => r,
        };
        let mut response: axum::http::Response<reqwest::Body> = response.into();
        strip_hop_by_hop(response.headers_mut());
        let (parts, body) = response.into_parts();
        let body = idle::IdleTimeout::new(body, self.idle_timeout);
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_named_in_connection_are_removed_with_the_hop_by_hop_set() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("authorization, x-secret"),
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer client"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::ACCEPT));
    }
}
