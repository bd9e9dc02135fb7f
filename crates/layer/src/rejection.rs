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
                // Only a scope in RFC 6750's syntax goes into the quoted
                // string: it has no `"` or `\` to end it early, so nothing
                // can be appended to the challenge.
                if is_scope_syntax(scope) {
                    format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\"")
                } else {
                    "Bearer error=\"insufficient_scope\"".to_owned()
                },
                ErrorBody::new(
                    "insufficient_scope",
                    format!("the token does not grant {scope}"),
                )
                .with_scope(scope.as_str()),
            ),
        };
        let mut res = (status, axum::Json(body)).into_response();
        // Every part is a fixed string or checked above; should one still
        // not be a header value, fall back to the bare scheme.
        let value = HeaderValue::from_str(&challenge).unwrap_or(HeaderValue::from_static("Bearer"));
        res.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        res
    }
}

/// RFC 6750 §3: `scope = scope-token *( SP scope-token )`, `scope-token =
/// 1*( %x21 / %x23-5B / %x5D-7E )` — printable ASCII but `"` and `\`.
fn is_scope_syntax(scope: &str) -> bool {
    let token_char = |b: u8| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E);
    !scope.is_empty()
        && scope
            .split(' ')
            .all(|t| !t.is_empty() && t.bytes().all(token_char))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(r: Rejection) -> String {
        let res = r.into_response();
        res.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn a_valid_scope_is_named_in_the_challenge() {
        assert_eq!(
            challenge(Rejection::InsufficientScope("task:operate:x".into())),
            "Bearer error=\"insufficient_scope\", scope=\"task:operate:x\""
        );
    }

    // #11 item 1, defence in depth: `InsufficientScope` is public, so a
    // scope outside RFC 6750's scope syntax (a `"`, a `\`, control or
    // non-ASCII characters) is left out of the header rather than trusted.
    #[test]
    fn a_scope_outside_rfc_6750_syntax_never_reaches_the_challenge() {
        for hostile in [
            "x\", error=\"invalid_token",
            "a\\\"b",
            "a  b",
            " a",
            "",
            "caf\u{e9}",
        ] {
            assert_eq!(
                challenge(Rejection::InsufficientScope(hostile.into())),
                "Bearer error=\"insufficient_scope\"",
                "{hostile:?}"
            );
        }
    }
}
