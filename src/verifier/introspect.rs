//! `POST /introspect`: RFC 7662 token introspection for application code.
//!
//! Who may ask: a caller presenting the configured shared secret
//! (`Authorization: Bearer SECRET`, or HTTP Basic with the secret as the
//! password, as RFC 7662 client libraries send it), or a caller on this
//! machine by the sidecar's own rule for local workloads (loopback peer,
//! loopback `Host`, not relayed by a proxy, not a browser). Anybody else
//! gets 401: an open introspection endpoint would let whoever finds a
//! token learn what it opens.
//!
//! What it says: the layer's verdict ([`authproxy_layer::Authorizer::verify`],
//! one call) — an active token's claims, or exactly `{"active":false}`
//! whatever the reason (RFC 7662 §2.2: no detail for an inactive token).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use authproxy_core::clock;
use authproxy_core::oauth::ErrorBody;
use aws_lc_rs::digest;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Serialize;

use super::Verifier;
use crate::server::CallerPolicy;

/// Largest introspection request body accepted (413 above).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The introspection secret, kept only as its SHA-256: compared in
/// constant time, never printed.
#[derive(Clone)]
pub struct Secret([u8; 32]);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// Keeps the digest of `value`.
    pub(super) fn new(value: &str) -> Self {
        Self(sha256(value.as_bytes()))
    }

    /// Whether `presented` is the secret. Both sides are hashed first, so
    /// the comparison's time says nothing about the secret's length either.
    pub fn matches(&self, presented: &[u8]) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&self.0, &sha256(presented)).is_ok()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A refused introspection request.
#[derive(Debug, thiserror::Error)]
enum IntrospectError {
    /// Return `401 Unauthorized`, `invalid_client`: neither the secret nor
    /// a local caller.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Return `400 Bad Request`, `invalid_request`.
    #[error("{0}")]
    BadRequest(String),
    /// Return `413 Payload Too Large`, `invalid_request`.
    #[error("request body exceeds {MAX_BODY_BYTES} bytes")]
    TooLarge,
    /// Return `408 Request Timeout`, `invalid_request`, and close the connection.
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    /// Return `405 Method Not Allowed` with `Allow: POST`.
    #[error("introspection accepts POST only")]
    MethodNotAllowed,
}

impl IntrospectError {
    fn label(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "unauthorized",
            _ => "invalid_request",
        }
    }
}

impl IntoResponse for IntrospectError {
    fn into_response(self) -> Response {
        tracing::debug!(reason = %self, "introspection request refused");
        let (status, code) = match &self {
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "invalid_client"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "invalid_request"),
            Self::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request"),
            Self::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "invalid_request"),
        };
        let mut res = no_store((status, axum::Json(ErrorBody::new(code, self.to_string()))));
        let h = res.headers_mut();
        match self {
            Self::Unauthorized(_) => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"authproxy introspection\""),
                );
            }
            Self::BodyTimeout(_) => {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Self::MethodNotAllowed => {
                h.insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            _ => {}
        }
        res
    }
}

/// RFC 7662 §2.2 for an active token.
#[derive(Serialize)]
struct Active<'a> {
    active: bool,
    scope: String,
    sub: String,
    client_id: String,
    exp: u64,
    iat: u64,
    aud: &'a str,
    iss: &'a str,
    token_type: &'static str,
    env: &'a str,
    jti: &'a str,
}

/// `POST /introspect`.
pub(super) async fn introspect(
    State(v): State<Arc<Verifier>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    match introspect_inner(&v, peer, req).await {
        Ok((res, label)) => {
            v.metrics.introspection(label);
            res
        }
        Err(e) => {
            v.metrics.introspection(e.label());
            e.into_response()
        }
    }
}

/// Any method but POST on `/introspect`.
pub(super) async fn wrong_method() -> Response {
    IntrospectError::MethodNotAllowed.into_response()
}

async fn introspect_inner(
    v: &Verifier,
    peer: SocketAddr,
    req: Request,
) -> Result<(Response, &'static str), IntrospectError> {
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    // Decided on the head, before a byte of body is read: a refused
    // caller holds no slot by never sending it.
    caller(v, peer, headers).map_err(IntrospectError::Unauthorized)?;
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(IntrospectError::TooLarge);
    }
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(IntrospectError::BadRequest(
            "the body must be application/x-www-form-urlencoded (token=…)".into(),
        ));
    }
    let body = read_body(body, v.body_read_timeout).await?;
    let token = token_param(&body)?;
    let res = match v.auth.verify(&token, clock::now()).await {
        Ok(p) => {
            let body = Active {
                active: true,
                scope: p.scopes().to_string(),
                sub: p.sub().to_string(),
                // An authproxy access token's client is its workload.
                client_id: p.sub().to_string(),
                exp: p.exp(),
                iat: p.iat(),
                aud: &v.audience,
                iss: p.iss(),
                token_type: "Bearer",
                env: p.env().as_str(),
                jti: p.jti(),
            };
            (no_store((StatusCode::OK, axum::Json(body))), "active")
        }
        Err(reason) => {
            tracing::debug!(%reason, "introspected token is inactive");
            (
                no_store((
                    StatusCode::OK,
                    axum::Json(serde_json::json!({"active": false})),
                )),
                "inactive",
            )
        }
    };
    Ok(res)
}

/// Whether the caller may introspect: the secret, or a local caller.
fn caller(v: &Verifier, peer: SocketAddr, headers: &HeaderMap) -> Result<(), &'static str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    match (values.next(), values.next()) {
        (Some(_), Some(_)) => Err("more than one Authorization header"),
        // A credential that is sent must be right, even from loopback: a
        // wrong one is a misconfiguration worth a clear 401.
        (Some(value), None) => match &v.secret {
            None => Err("no introspection secret is configured; only local callers may introspect"),
            Some(secret) if presented(value).is_some_and(|p| secret.matches(&p)) => Ok(()),
            Some(_) => Err("the introspection secret does not match"),
        },
        (None, _) => CallerPolicy {
            allow_remote_peers: false,
        }
        .check(peer, headers)
        .map_err(|why| {
            tracing::debug!(%peer, %why, "introspection without the secret from a caller that is not local");
            "send the introspection secret (Authorization: Bearer SECRET, or Basic with it as the password), or call from this machine"
        }),
    }
}

/// The secret in `Bearer SECRET` or `Basic base64(id:SECRET)`.
fn presented(value: &HeaderValue) -> Option<Vec<u8>> {
    let text = value.to_str().ok()?;
    let (scheme, rest) = text.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(rest.as_bytes().to_vec())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let colon = decoded.iter().position(|b| *b == b':')?;
        Some(decoded[colon + 1..].to_vec())
    } else {
        None
    }
}

/// The `token` parameter (RFC 7662 §2.1), once; `token_type_hint` is
/// allowed once and ignored (there is one kind of token here).
fn token_param(body: &[u8]) -> Result<String, IntrospectError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|e| IntrospectError::BadRequest(format!("malformed form body: {e}")))?;
    let mut token = None;
    let mut hint = false;
    for (k, v) in pairs {
        let repeated = match k.as_str() {
            "token" => token.replace(v).is_some(),
            "token_type_hint" => std::mem::replace(&mut hint, true),
            _ => false,
        };
        if repeated {
            return Err(IntrospectError::BadRequest(format!(
                "parameter `{k}` is repeated"
            )));
        }
    }
    token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| IntrospectError::BadRequest("missing token".into()))
}

/// The body, at most [`MAX_BODY_BYTES`], within `timeout`.
async fn read_body(body: Body, timeout: Duration) -> Result<Bytes, IntrospectError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Err(_) => Err(IntrospectError::BodyTimeout(timeout)),
        Ok(Err(_)) => Err(IntrospectError::TooLarge),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

/// RFC 7662 §2.2 refers to RFC 6749 §5.1: no caching of what is said about a token.
fn no_store(res: impl IntoResponse) -> Response {
    let mut res = res.into_response();
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_compared_by_value_and_never_printed() {
        let s = Secret::new("0123456789abcdef0123");
        assert!(s.matches(b"0123456789abcdef0123"));
        assert!(!s.matches(b"0123456789abcdef012"));
        assert!(!s.matches(b""));
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn the_secret_comes_as_a_bearer_token_or_a_basic_password() {
        let bearer = HeaderValue::from_static("Bearer s3cret-value");
        assert_eq!(presented(&bearer).unwrap(), b"s3cret-value");
        // base64("api:s3cret:with-colon")
        let basic = HeaderValue::from_static("Basic YXBpOnMzY3JldDp3aXRoLWNvbG9u");
        assert_eq!(presented(&basic).unwrap(), b"s3cret:with-colon");
        for bad in ["Basic !!!", "Basic YXBp", "Digest x", "Bearer"] {
            assert!(presented(&HeaderValue::from_static(bad)).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_token_parameter_is_required_once() {
        assert_eq!(
            token_param(b"token=abc&token_type_hint=access_token").unwrap(),
            "abc"
        );
        for bad in [
            &b"token=a&token=b"[..],
            b"",
            b"token=",
            b"token_type_hint=x&token_type_hint=y&token=a",
        ] {
            assert!(
                token_param(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
