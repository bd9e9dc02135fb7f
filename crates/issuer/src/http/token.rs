//! `POST /oauth2/token`: the PAT exchange (DESIGN §9), RFC 6749 §4.4 client
//! credentials with the personal access token as the client secret — in
//! HTTP Basic (RFC 6749 §2.3.1: `client_id:client_secret`, each
//! form-urlencoded, then base64) or as the form field `client_secret`. The
//! `client_id` may be anything (the PAT's name, say): the secret alone
//! says which PAT it is.

use std::sync::Arc;

use authproxy_core::{ScopeSet, clock};
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use serde_json::json;

use super::no_store;
use crate::ExchangeRequest;
use crate::error::ExchangeError;
use crate::issuer::Issuer;
use crate::secret::Secret;

/// Largest token request body: a PAT is at most 8 KiB.
pub(super) const TOKEN_BODY_BYTES: usize = 16 * 1024;

/// Longest `resource` accepted.
const MAX_RESOURCE_BYTES: usize = 2048;

pub(super) async fn exchange(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"));
    match exchange_inner(&issuer, &headers, body).await {
        Ok(response) => response,
        Err(e) => {
            let invalid_client = matches!(e, ExchangeError::InvalidClient(_));
            let mut response = e.into_response();
            // RFC 6749 §5.2: a client that authenticated with the
            // Authorization header is told which scheme to use.
            if invalid_client && basic {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"authproxy\""),
                );
            }
            response
        }
    }
}

async fn exchange_inner(
    issuer: &Issuer,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ExchangeError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ExchangeError::TooLarge
        } else {
            ExchangeError::InvalidRequest(format!("could not read the request body: {e}"))
        }
    })?;
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form_type {
        return Err(ExchangeError::InvalidRequest(
            "the body must be application/x-www-form-urlencoded".into(),
        ));
    }
    let form = Form::parse(&body)?;
    match form.grant_type.as_deref() {
        None => return Err(ExchangeError::InvalidRequest("missing grant_type".into())),
        Some("client_credentials") => {}
        Some(other) => {
            return Err(ExchangeError::UnsupportedGrantType(format!(
                "grant_type `{other}` is not supported; use client_credentials"
            )));
        }
    }
    let secret = client_secret(headers, form.client_secret)?;
    let request = ExchangeRequest {
        scope: form
            .scope
            .as_deref()
            .map(requested_scope)
            .transpose()?
            .flatten(),
        resource: form.resource.as_deref().map(resource).transpose()?,
    };
    let exchanged = issuer
        .exchange_pat(secret.expose(), &request, clock::now())
        .await?;
    let body = json!({
        "access_token": exchanged.access_token.expose(),
        "token_type": "Bearer",
        "expires_in": exchanged.expires_in,
        "scope": exchanged.scope.to_string(),
    });
    Ok(no_store(axum::Json(body).into_response()))
}

/// The parameters of a token request the exchange reads.
#[derive(Debug, Default)]
struct Form {
    grant_type: Option<String>,
    scope: Option<String>,
    client_secret: Option<Secret>,
    resource: Option<String>,
}

impl Form {
    fn parse(body: &[u8]) -> Result<Self, ExchangeError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
            .map_err(|_| ExchangeError::InvalidRequest("malformed form body".into()))?;
        let mut form = Self::default();
        let mut seen = std::collections::HashSet::new();
        for (k, v) in pairs {
            // RFC 6749 §3.2: no parameter twice. A second `scope` or
            // `resource` silently winning is the ambiguity that gets
            // exploited, so refuse it.
            let known = matches!(
                k.as_str(),
                "grant_type" | "scope" | "client_id" | "client_secret" | "resource"
            );
            if known && !seen.insert(k.clone()) {
                return Err(ExchangeError::InvalidRequest(format!(
                    "parameter `{k}` is repeated"
                )));
            }
            match k.as_str() {
                "grant_type" => form.grant_type = Some(v),
                "scope" => form.scope = Some(v),
                "client_secret" => form.client_secret = Some(Secret::issued(v)),
                "resource" => form.resource = Some(v),
                // client_id says nothing the secret does not; unknown
                // parameters are ignored (RFC 6749 §3.2).
                _ => {}
            }
        }
        Ok(form)
    }
}

/// The PAT: from HTTP Basic or the form's `client_secret`, never both
/// (RFC 6749 §2.3: one authentication method per request).
fn client_secret(headers: &HeaderMap, form: Option<Secret>) -> Result<Secret, ExchangeError> {
    let header = headers.get(header::AUTHORIZATION);
    match (header, form) {
        (Some(_), Some(_)) => Err(ExchangeError::InvalidRequest(
            "the client authenticated twice (Authorization header and client_secret)".into(),
        )),
        (Some(value), None) => basic_secret(value),
        (None, Some(secret)) => Ok(secret),
        (None, None) => Err(ExchangeError::InvalidClient(
            "no client authentication".into(),
        )),
    }
}

/// The client secret of `Authorization: Basic base64(id:secret)`, each part
/// form-urlencoded (RFC 6749 §2.3.1).
fn basic_secret(value: &HeaderValue) -> Result<Secret, ExchangeError> {
    let malformed = |why: &str| ExchangeError::InvalidClient(format!("Authorization: {why}"));
    let value = value.to_str().map_err(|_| malformed("not text"))?;
    let (scheme, encoded) = value
        .split_once(' ')
        .ok_or_else(|| malformed("no scheme"))?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(malformed("not Basic client authentication"));
    }
    let encoded = encoded.trim();
    let decoded = STANDARD
        .decode(encoded)
        .or_else(|_| STANDARD_NO_PAD.decode(encoded))
        .map_err(|_| malformed("Basic credentials are not base64"))?;
    let decoded =
        String::from_utf8(decoded).map_err(|_| malformed("Basic credentials are not UTF-8"))?;
    let (_client_id, secret) = decoded
        .split_once(':')
        .ok_or_else(|| malformed("Basic credentials have no `:`"))?;
    form_decode(secret)
        .map(Secret::issued)
        .ok_or_else(|| malformed("the client secret is not form-urlencoded"))
}

/// One form-urlencoded component, decoded (`+` is a space, `%XX` a byte).
fn form_decode(component: &str) -> Option<String> {
    if component.contains(['&', '=']) {
        return None;
    }
    let mut pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(&format!("v={component}")).ok()?;
    match pairs.pop() {
        Some((k, v)) if k == "v" && pairs.is_empty() => Some(v),
        _ => None,
    }
}

/// `scope`: exact authorizations, space-separated; blank is absent.
fn requested_scope(scope: &str) -> Result<Option<ScopeSet>, ExchangeError> {
    let scope = scope.trim();
    if scope.is_empty() {
        return Ok(None);
    }
    if scope.contains('*') {
        return Err(ExchangeError::InvalidScope(
            "a token's scope is exact: ask for authorizations such as task:operate:NAME, or leave `scope` out for all the personal access token covers".into(),
        ));
    }
    ScopeSet::parse(scope)
        .map(Some)
        .map_err(|e| ExchangeError::InvalidScope(e.to_string()))
}

/// RFC 8707 `resource`: an absolute URI without a fragment (the token's `aud`).
fn resource(value: &str) -> Result<String, ExchangeError> {
    let invalid = || {
        ExchangeError::InvalidTarget(
            "`resource` must be an absolute URI without a fragment, such as https://api.example"
                .into(),
        )
    };
    let (scheme, rest) = value.split_once(':').ok_or_else(invalid)?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let rest_ok =
        !rest.is_empty() && !rest.contains('#') && rest.chars().all(|c| c.is_ascii_graphic());
    if scheme_ok && rest_ok && value.len() <= MAX_RESOURCE_BYTES {
        Ok(value.to_owned())
    } else {
        Err(invalid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(id: &str, secret: &str) -> HeaderValue {
        HeaderValue::from_str(&format!(
            "Basic {}",
            STANDARD.encode(format!("{id}:{secret}"))
        ))
        .unwrap()
    }

    #[test]
    fn basic_credentials_are_form_decoded_and_other_schemes_refused() {
        let s = basic_secret(&basic("ci", "ap_pat_abc.def-_x")).unwrap();
        assert_eq!(s.expose(), "ap_pat_abc.def-_x");
        let s = basic_secret(&basic("a%3Ab", "p%2Bq+r")).unwrap();
        assert_eq!(s.expose(), "p+q r");
        // Without padding, and with an empty client id.
        let v = HeaderValue::from_str(&format!("basic {}", STANDARD_NO_PAD.encode(":x"))).unwrap();
        assert_eq!(basic_secret(&v).unwrap().expose(), "x");
        for bad in [
            HeaderValue::from_static("Bearer ap_pat_x"),
            HeaderValue::from_static("Basic !!!"),
            HeaderValue::from_static("Basic"),
            HeaderValue::from_str(&format!("Basic {}", STANDARD.encode("no-colon"))).unwrap(),
            basic("ci", "a&b"),
        ] {
            assert!(
                matches!(basic_secret(&bad), Err(ExchangeError::InvalidClient(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_repeated_parameter_is_refused_and_unknown_ones_ignored() {
        let f = Form::parse(b"grant_type=client_credentials&client_id=x&foo=1&foo=2").unwrap();
        assert_eq!(f.grant_type.as_deref(), Some("client_credentials"));
        for body in [
            "scope=env:view&scope=task:operate:a",
            "resource=https://a&resource=https://b",
            "client_id=a&client_id=b",
        ] {
            let e = Form::parse(body.as_bytes()).unwrap_err();
            assert!(matches!(e, ExchangeError::InvalidRequest(_)), "{body}: {e}");
        }
    }

    #[test]
    fn scopes_asked_for_are_exact() {
        assert_eq!(requested_scope("  ").unwrap(), None);
        assert_eq!(
            requested_scope("env:view task:operate:a")
                .unwrap()
                .unwrap()
                .to_string(),
            "task:operate:a env:view"
        );
        for bad in ["task:operate:*", "*", "db:view", "task:operate:A"] {
            assert!(
                matches!(requested_scope(bad), Err(ExchangeError::InvalidScope(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_resource_is_an_absolute_uri_without_fragment() {
        for ok in [
            "https://api.example",
            "http://127.0.0.1:8300",
            "urn:example:api",
        ] {
            assert_eq!(resource(ok).unwrap(), ok);
        }
        for bad in [
            "",
            "api.example",
            "://x",
            "https://a#frag",
            "https://a b",
            "1http://x",
            "https:",
        ] {
            assert!(
                matches!(resource(bad), Err(ExchangeError::InvalidTarget(_))),
                "{bad:?}"
            );
        }
    }
}
