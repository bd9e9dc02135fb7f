//! The one error of the issuer's API, and how each answers over HTTP.
//!
//! Client mistakes are 4xx with the `{"error","error_description"}` body of
//! [`ErrorBody`]; server faults are a bare 500 whose detail goes to the log
//! only. Every authentication failure answers the same 401, whatever the
//! reason (logged at debug), so a caller learns nothing about which
//! credentials exist.

use authproxy_core::declarations::Problem;
use authproxy_core::oauth::ErrorBody;
use authproxy_core::pat::PatName;
use authproxy_core::{Environment, WorkloadId};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::kubernetes::InvalidServiceAccountToken;
use crate::store::StoreError;

/// Why the issuer refused or failed a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssuerError {
    /// No bearer secret, or one that is malformed, unknown or revoked.
    /// Return `401 Unauthorized` (`invalid_token`, `WWW-Authenticate: Bearer`).
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// A Kubernetes service-account token that does not verify (signature,
    /// issuer, audience, times, subject). Answers exactly as
    /// [`IssuerError::Unauthenticated`]: `401 invalid_token`.
    #[error("unauthenticated: {0}")]
    InvalidServiceAccountToken(#[from] InvalidServiceAccountToken),
    /// The credential is valid but not bound to that workload and
    /// environment. Return `403 Forbidden` (`access_denied`).
    #[error("the credential is not bound to workload `{workload}` in environment `{environment}`")]
    NotBound {
        /// The workload asked for.
        workload: WorkloadId,
        /// The environment asked for.
        environment: Environment,
    },
    /// The workload is unknown, not synced, or removed.
    /// Return `404 Not Found` (`unknown_workload`).
    #[error(
        "workload `{workload}` is unknown, not synced or removed in environment `{environment}`"
    )]
    UnknownWorkload {
        /// The workload asked for.
        workload: WorkloadId,
        /// The environment asked for.
        environment: Environment,
    },
    /// The request is malformed. Return `400 Bad Request` (`invalid_request`).
    #[error("{0}")]
    InvalidRequest(String),
    /// The declarations break rules; nothing was applied.
    /// Return `400 Bad Request` (`invalid_declarations`, with every problem).
    #[error("{} problem(s) in the declarations; nothing was applied", .0.len())]
    InvalidDeclarations(Vec<Problem>),
    /// Concurrent syncs of the environment kept changing it under this one.
    /// Return `409 Conflict` (`conflict`).
    #[error("the environment kept changing during sync; nothing was applied, try again")]
    SyncConflict,
    /// A PAT of that name exists. Return `409 Conflict` (`name_taken`).
    #[error(
        "a personal access token named `{0}` exists; choose another name, or update or delete it"
    )]
    NameTaken(PatName),
    /// No PAT of that name. Return `404 Not Found` (`not_found`).
    #[error("no personal access token named `{0}`")]
    PatNotFound(PatName),
    /// Concurrent updates of the PAT kept replacing its version under this
    /// one. Return `409 Conflict` (`conflict`).
    #[error(
        "personal access token `{0}` kept changing during the update; nothing was applied, try again"
    )]
    PatConflict(PatName),
    /// No such credential or task. Return `404 Not Found` (`not_found`).
    #[error("{0}")]
    NotFound(String),
    /// The task is final (`credentials_created`, `credentials_deleted`,
    /// `failed`) and accepts no update. Return `409 Conflict` (`conflict`).
    #[error("the task is {0}, which is final: it can no longer be cancelled or changed")]
    TaskFinal(crate::tasks::model::TaskStatus),
    /// The store failed. Return `500 Internal Server Error`.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing or the random number generator failed. Return `500 Internal Server Error`.
    #[error("internal error: {0}")]
    Internal(String),
}

impl IssuerError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) | Self::InvalidServiceAccountToken(_) => {
                StatusCode::UNAUTHORIZED
            }
            Self::NotBound { .. } => StatusCode::FORBIDDEN,
            Self::UnknownWorkload { .. } | Self::PatNotFound(_) | Self::NotFound(_) => {
                StatusCode::NOT_FOUND
            }
            Self::TaskFinal(_) => StatusCode::CONFLICT,
            Self::InvalidRequest(_) | Self::InvalidDeclarations(_) => StatusCode::BAD_REQUEST,
            Self::SyncConflict | Self::NameTaken(_) | Self::PatConflict(_) => StatusCode::CONFLICT,
            Self::Store(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for IssuerError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = |code: &str, description: String| {
            axum::Json(ErrorBody::new(code, description)).into_response()
        };
        let mut response = match &self {
            Self::Unauthenticated(_) | Self::InvalidServiceAccountToken(_) => {
                // The reason, never the credential.
                tracing::debug!(reason = %self, "request refused: unauthenticated");
                let mut r = body(
                    "invalid_token",
                    "missing, malformed, unknown or revoked bearer credential".into(),
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
                r
            }
            Self::NotBound { .. } => body("access_denied", self.to_string()),
            Self::UnknownWorkload { .. } => body("unknown_workload", self.to_string()),
            Self::InvalidRequest(_) => body("invalid_request", self.to_string()),
            Self::InvalidDeclarations(problems) => {
                let listed: Vec<_> = problems
                    .iter()
                    .map(|p| json!({"path": p.path, "message": p.message}))
                    .collect();
                axum::Json(json!({
                    "error": "invalid_declarations",
                    "error_description": self.to_string(),
                    "problems": listed,
                }))
                .into_response()
            }
            Self::SyncConflict | Self::PatConflict(_) | Self::TaskFinal(_) => {
                body("conflict", self.to_string())
            }
            Self::NameTaken(_) => body("name_taken", self.to_string()),
            Self::PatNotFound(_) | Self::NotFound(_) => body("not_found", self.to_string()),
            Self::Store(_) | Self::Internal(_) => {
                tracing::error!(error = %self, "request failed");
                body(
                    "server_error",
                    "internal error; the issuer's log has the detail".into(),
                )
            }
        };
        *response.status_mut() = status;
        response
    }
}

/// Why the PAT exchange (`POST /oauth2/token`) refused or failed: the
/// RFC 6749 §5.2 vocabulary of a token endpoint, answered with
/// `Cache-Control: no-store` like every token endpoint answer.
///
/// Every client-authentication failure answers the same
/// [`ExchangeError::InvalidClient`], whatever the reason (logged at debug
/// with the PAT's name and id when known, never its value), so a caller
/// learns nothing about which PATs exist.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExchangeError {
    /// The request is malformed (not a form, a repeated parameter, two
    /// client authentications, no `grant_type`).
    /// Return `400 Bad Request` (`invalid_request`).
    #[error("{0}")]
    InvalidRequest(String),
    /// The body is over the limit. Return `413 Payload Too Large` (`invalid_request`).
    #[error("the request body is too large")]
    TooLarge,
    /// `grant_type` is not `client_credentials`.
    /// Return `400 Bad Request` (`unsupported_grant_type`).
    #[error("{0}")]
    UnsupportedGrantType(String),
    /// No PAT, or one that is malformed, mistyped, unknown, revoked,
    /// replaced by an update, expired, or bound to another environment.
    /// Return `401 Unauthorized` (`invalid_client`; the route adds
    /// `WWW-Authenticate: Basic` when the client authenticated with Basic).
    #[error("client authentication failed: {0}")]
    InvalidClient(String),
    /// A requested scope is malformed or not covered by the PAT, or the PAT
    /// covers nothing in its environment.
    /// Return `400 Bad Request` (`invalid_scope`).
    #[error("{0}")]
    InvalidScope(String),
    /// `resource` is not an absolute URI (RFC 8707 §2).
    /// Return `400 Bad Request` (`invalid_target`).
    #[error("{0}")]
    InvalidTarget(String),
    /// The store failed. Return `500 Internal Server Error` (`server_error`).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing or the random number generator failed.
    /// Return `500 Internal Server Error` (`server_error`).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ExchangeError {
    /// The HTTP status and the RFC 6749 §5.2 error code.
    pub fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request"),
            Self::UnsupportedGrantType(_) => (StatusCode::BAD_REQUEST, "unsupported_grant_type"),
            Self::InvalidClient(_) => (StatusCode::UNAUTHORIZED, "invalid_client"),
            Self::InvalidScope(_) => (StatusCode::BAD_REQUEST, "invalid_scope"),
            Self::InvalidTarget(_) => (StatusCode::BAD_REQUEST, "invalid_target"),
            Self::Store(_) | Self::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "server_error")
            }
        }
    }
}

impl IntoResponse for ExchangeError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let description = match &self {
            Self::InvalidClient(_) => {
                // The reason, never the PAT.
                tracing::debug!(reason = %self, "PAT exchange refused: invalid client");
                "missing, malformed, unknown, revoked or expired personal access token".to_owned()
            }
            Self::Store(_) | Self::Internal(_) => {
                tracing::error!(error = %self, "PAT exchange failed");
                "internal error; the issuer's log has the detail".to_owned()
            }
            _ => {
                tracing::debug!(error = code, reason = %self, "PAT exchange refused");
                self.to_string()
            }
        };
        let mut response = (status, axum::Json(ErrorBody::new(code, description))).into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}
