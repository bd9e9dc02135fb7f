//! Refusals, answered per RFC 6750 §3 (`WWW-Authenticate` and a JSON body),
//! and the [`Principal`] extractor for handlers.

use authproxy_core::oauth::ErrorBody;
use authproxy_core::verify::InvalidToken;

use crate::principal::Principal;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

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

impl Rejection {
    /// The label of this outcome in metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::BadRequest(_) => "invalid_request",
            Self::Invalid(_) => "invalid_token",
            Self::InsufficientScope(_) => "insufficient_scope",
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let (status, challenge, body) = match &self {
            Self::Missing => (
                StatusCode::UNAUTHORIZED,
                "Bearer".to_owned(),
                ErrorBody::new("invalid_token", "a bearer token is required"),
            ),
            Self::BadRequest(why) => (
                StatusCode::BAD_REQUEST,
                "Bearer error=\"invalid_request\"".to_owned(),
                ErrorBody::new("invalid_request", *why),
            ),
            Self::Invalid(reason) => {
                let d = reason.public_description();
                (
                    StatusCode::UNAUTHORIZED,
                    format!("Bearer error=\"invalid_token\", error_description=\"{d}\""),
                    ErrorBody::new("invalid_token", d),
                )
            }
            Self::InsufficientScope(scope) => (
                StatusCode::FORBIDDEN,
                format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\""),
                ErrorBody::new(
                    "insufficient_scope",
                    format!("the token does not grant {scope}"),
                )
                .with_scope(scope.as_str()),
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

/// A handler asked for a [`Principal`] on a route the layer does not guard.
#[derive(Debug, thiserror::Error)]
#[error("route is not protected by an authproxy layer")]
pub struct NoPrincipal;

impl IntoResponse for NoPrincipal {
    fn into_response(self) -> Response {
        tracing::error!("a handler asked for a Principal on a route without Authorizer::require");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(ErrorBody::new(
                "server_error",
                "the route is not protected by an authproxy layer",
            )),
        )
            .into_response()
    }
}

/// The extractor: a handler behind [`crate::RequireScopeLayer`] takes the
/// verified [`Principal`] as an argument.
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
