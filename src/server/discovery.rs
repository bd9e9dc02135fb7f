//! What the sidecar tells about itself: the root JWKS, RFC 8414 metadata,
//! probes and metrics.

use authproxy_core::clock;
use authproxy_core::oauth::ErrorBody;
use authproxy_core::proof::MAX_NONCE_BYTES;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;

pub(crate) async fn jwks(State(state): State<AppState>) -> Response {
    axum::Json(state.source.jwks()).into_response()
}

pub(crate) async fn metadata(State(state): State<AppState>) -> Response {
    let base = &state.base_url;
    let scopes: Vec<String> = state
        .sidecar
        .ceiling()
        .iter()
        .map(ToString::to_string)
        .collect();
    axum::Json(json!({
        "issuer": state.config.tokens.issuer,
        "token_endpoint": format!("{base}/oauth2/token"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "scopes_supported": scopes,
    }))
    .into_response()
}

pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
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
