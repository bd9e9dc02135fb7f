//! Forward-proxy mode: `/api/<path>?<query>` on the sidecar is sent to
//! `<upstream>/<path>?<query>` with the sidecar's own token attached, so
//! code in the container needs no token handling at all.
//!
//! Bodies are streamed both ways (never buffered), connections to the
//! upstream are pooled, redirects are passed back and never followed (the
//! token goes to the configured origin only), and every response — 401 and
//! 403 included — is passed through unchanged.
//!
//! The client is hyper's connection API with a pool for the one origin
//! ([`upstream`]), not reqwest: reqwest's redirect, retry and URL layers
//! cost a proxied request more than its client exchange itself
//! (bench/PROFILE.md), and a proxy to one configured origin needs none of
//! them. The upstream URI is the request's path and query under the base
//! path checked at start-up, so no URL is parsed per request.

use std::sync::Arc;
use std::time::Duration;

use authproxy_core::oauth::ErrorBody;
use axum::body::{Body, HttpBody as _};
use axum::extract::Request;
use axum::http::uri::{Authority, PathAndQuery, Scheme};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version, header};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::connect::HttpConnector;

use crate::config::ProxyConfig;

mod idle;
mod path;
mod upstream;

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

/// Why the proxy could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The upstream URL does not make an HTTP URI (scheme, host, path).
    #[error("`{0}` is not a usable upstream URI")]
    Upstream(String),
    /// The TLS client configuration (trust store) could not be built.
    #[error("TLS set-up failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// The forward proxy of one sidecar.
#[derive(Debug)]
pub struct Proxy {
    upstream: Arc<upstream::Upstream>,
    /// The upstream URL's path without its trailing `/` (`""` for the root).
    base_path: Arc<str>,
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
    // The usual message carries none of these: one pass over its names
    // (comparing, not hashing) finds that out, instead of a removal per
    // hop-by-hop name.
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in &named {
            headers.remove(n);
        }
    }
    for n in &HOP_BY_HOP {
        headers.remove(n);
    }
}

impl Proxy {
    /// A proxy to `config.upstream`.
    pub fn new(config: &ProxyConfig) -> Result<Self, SetupError> {
        let url = &config.upstream;
        let bad = || SetupError::Upstream(url.to_string());
        let scheme: Scheme = url.scheme().parse().map_err(|_| bad())?;
        let host = url.host_str().ok_or_else(bad)?;
        let authority: Authority = match url.port() {
            Some(port) => format!("{host}:{port}").parse(),
            None => host.parse(),
        }
        .map_err(|_| bad())?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?;
        let tls = if scheme == Scheme::HTTPS {
            let verifier = rustls_platform_verifier::Verifier::new(provider)?;
            tls.dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        } else {
            // Only the configured origin is ever contacted, so a plain-HTTP
            // upstream needs no trust store: none is loaded (~3 MiB and
            // start-up time in every container).
            tls.with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        // An https upstream is never spoken to in clear.
        let connector = if scheme == Scheme::HTTPS {
            connector.https_only()
        } else {
            connector.https_or_http()
        };
        let connector = connector.enable_http1().wrap_connector(http);
        let origin = Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query("/")
            .build()
            .map_err(|_| bad())?;
        let upstream = upstream::Upstream::new(connector, origin).ok_or_else(bad)?;
        Ok(Self {
            upstream: Arc::new(upstream),
            base_path: url.path().trim_end_matches('/').into(),
            timeout: config.timeout,
            idle_timeout: config.idle_timeout,
            require_header: config.require_header,
        })
    }

    /// Whether requests must carry [`REQUEST_HEADER`] (`proxy.require_header`).
    pub fn requires_header(&self) -> bool {
        self.require_header
    }

    /// The upstream request target (origin-form) for a request path under
    /// `/api` and its query: the base path followed by the confined rest.
    /// The connection is to the configured origin and only the path and
    /// query come from the request, so the token can go to the configured
    /// origin, under its base path, and nowhere else.
    fn target(&self, rest: &str, query: Option<&str>) -> Result<Uri, ProxyError> {
        let rest = confine_path(rest).map_err(ProxyError::BadRequest)?;
        let mut pq = String::with_capacity(
            self.base_path.len() + rest.len() + query.map_or(0, |q| q.len() + 1) + 1,
        );
        pq.push_str(&self.base_path);
        pq.push_str(&rest);
        if pq.is_empty() {
            pq.push('/');
        }
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        PathAndQuery::from_maybe_shared(pq)
            .map(Uri::from)
            .map_err(|_| ProxyError::BadRequest("the path does not form a valid upstream URI"))
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
        let uri = self.target(rest, parts.uri.query())?;

        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        // The upstream's own Host is set when it is sent.
        headers.remove(header::HOST);
        headers.remove(REQUEST_HEADER);
        headers.insert(header::AUTHORIZATION, authorization);

        // An empty body is sent as none at all (no chunked GET bodies).
        let body = if body.size_hint().exact() == Some(0) {
            Body::empty()
        } else {
            body
        };
        let mut request = axum::http::Request::new(body);
        *request.method_mut() = parts.method;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;

        let response = match tokio::time::timeout(self.timeout, self.upstream.send(request)).await {
            Err(_) => return Err(ProxyError::Timeout(self.timeout)),
            Ok(Err(e)) => return Err(ProxyError::Unreachable(crate::telemetry::describe(&*e))),
            Ok(Ok(r)) => r,
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body = idle::IdleTimeout::new(body, self.idle_timeout);
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(upstream: &str) -> ProxyConfig {
        ProxyConfig {
            upstream: upstream.parse().unwrap(),
            timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            require_header: true,
        }
    }

    /// An https upstream gets TLS with the platform's trust store (as with
    /// reqwest before); the target keeps the base path and the query.
    #[tokio::test]
    async fn https_and_http_upstreams_set_up_and_targets_stay_under_the_base() {
        for url in ["https://api.example:8443/v1/", "http://127.0.0.1:8300"] {
            Proxy::new(&config(url)).unwrap();
        }
        let p = Proxy::new(&config("http://127.0.0.1:8300/v1/")).unwrap();
        assert_eq!(p.target("/a/b", Some("x=1")).unwrap(), "/v1/a/b?x=1");
        assert_eq!(p.target("", None).unwrap(), "/v1");
        let root = Proxy::new(&config("http://127.0.0.1:8300")).unwrap();
        assert_eq!(root.target("", None).unwrap(), "/");
        assert_eq!(root.target("/x", None).unwrap(), "/x");
        assert!(root.target("/../x", None).is_err());
    }

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
