//! What the sidecar tells about itself: the root JWKS, RFC 8414 metadata,
//! probes and metrics.
//!
//! The metadata (it lists the workload's scopes) and the metrics (token and
//! proxy activity) are for the container's own code: they pass the same
//! caller policy as the token endpoint. The JWKS stays open — public keys,
//! which tools outside the container may compare with what they trust (an
//! upstream reads its keys from a file, never from here) — and so do the
//! probes, which say only "up"/"ready" (plus a signed nonce for `authproxy
//! health`) and which orchestrators may call from outside the container.

use std::net::SocketAddr;

use authproxy_core::clock;
use authproxy_core::oauth::ErrorBody;
use authproxy_core::proof::MAX_NONCE_BYTES;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{AppState, TokenError};

pub(crate) async fn jwks(State(state): State<AppState>) -> Response {
    axum::Json(state.source.jwks()).into_response()
}

pub(crate) async fn metadata(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(why) = state.caller.check(peer, &headers) {
        return TokenError::AccessDenied(why).into_response();
    }
    let Some(base) = reached_base(&headers) else {
        return TokenError::InvalidRequest(
            "the Host header must name the sidecar (host[:port])".into(),
        )
        .into_response();
    };
    let scopes: Vec<String> = state
        .sidecar
        .ceiling()
        .iter()
        .map(ToString::to_string)
        .collect();
    // RFC 8414 §3.3: the issuer is the URL the metadata was discovered at
    // (stock clients check it), so it is the caller's URL, as are the
    // endpoints — never the bound address, which may be a wildcard. The
    // tokens' `iss` stays `tokens.issuer`: upstreams check the chain to the
    // root, not this document.
    axum::Json(json!({
        "issuer": base,
        "token_endpoint": format!("{base}/oauth2/token"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "scopes_supported": scopes,
    }))
    .into_response()
}

/// `http://<Host>`: the sidecar's URL as the caller reached it. The caller
/// policy has already required a loopback name there, unless remote peers
/// are allowed; either way only a plain `host[:port]` is used.
fn reached_base(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let authority: axum::http::uri::Authority = host.parse().ok()?;
    if authority.as_str().contains('@') {
        return None;
    }
    Some(format!("http://{authority}"))
}

pub(crate) async fn metrics(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(why) = state.caller.check(peer, &headers) {
        return TokenError::AccessDenied(why).into_response();
    }
    let m = &state.metrics;
    let exp = state.sidecar.grant().claims().exp;
    let left = i64::try_from(exp).unwrap_or(i64::MAX) - i64::try_from(clock::now()).unwrap_or(0);
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

pub(crate) async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// `/readyz?nonce=N`: with a nonce, the answer carries a proof that this
/// is the sidecar holding the key its grant binds (`authproxy health`).
#[derive(Deserialize)]
pub(crate) struct ReadyQuery {
    nonce: Option<String>,
}

pub(crate) async fn readyz(
    State(state): State<AppState>,
    Query(query): Query<ReadyQuery>,
) -> Response {
    if state.is_ready(clock::now()) {
        let proof = match query.nonce.as_deref() {
            None => None,
            Some(n) if n.is_empty() || n.len() > MAX_NONCE_BYTES => {
                return (
                    StatusCode::BAD_REQUEST,
                    axum::Json(ErrorBody::new(
                        "invalid_request",
                        format!("nonce must be 1 to {MAX_NONCE_BYTES} bytes"),
                    )),
                )
                    .into_response();
            }
            Some(n) => state.sidecar.prove(n).ok(),
        };
        axum::Json(json!({"status": "ready", "proof": proof})).into_response()
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
    use axum::http::HeaderValue;

    #[test]
    fn the_base_url_is_the_host_the_caller_reached() {
        let base = |host: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static(host));
            reached_base(&h)
        };
        assert_eq!(
            base("localhost:8200").as_deref(),
            Some("http://localhost:8200")
        );
        assert_eq!(base("127.0.0.1").as_deref(), Some("http://127.0.0.1"));
        assert_eq!(base("[::1]:8200").as_deref(), Some("http://[::1]:8200"));
        for bad in ["user@localhost:8200", "local host", "localhost/x", ""] {
            assert_eq!(base(bad), None, "{bad}");
        }
        assert_eq!(reached_base(&HeaderMap::new()), None);
    }
}
