//! Checks every request passes before any route sees it: things that are
//! wrong whatever the path, so no route can forget them — a second `Host`,
//! and browsers' cross-site requests ([`super::fetch_metadata`]).

use axum::extract::Request;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::TokenError;

/// The middleware: refuses a request whose head is unacceptable on every
/// route, else passes it on.
pub(crate) async fn every_request(req: Request, next: Next) -> Response {
    if let Err(e) = check(req.headers()) {
        return e.into_response();
    }
    next.run(req).await
}

/// Why a request head is refused on every route.
pub(crate) fn check(headers: &HeaderMap) -> Result<(), TokenError> {
    // RFC 9112 §3.2: more than one Host is a 400. With two, the loopback
    // check could read one name and something downstream the other.
    if headers.get_all(header::HOST).iter().nth(1).is_some() {
        return Err(TokenError::InvalidRequest(
            "more than one Host header".into(),
        ));
    }
    super::fetch_metadata::check(headers).map_err(|why| TokenError::AccessDenied(why.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn one_host_passes_and_two_are_refused() {
        let mut h = HeaderMap::new();
        assert!(check(&h).is_ok());
        h.append(header::HOST, HeaderValue::from_static("127.0.0.1"));
        assert!(check(&h).is_ok());
        h.append(header::HOST, HeaderValue::from_static("127.0.0.1"));
        assert!(matches!(check(&h), Err(TokenError::InvalidRequest(_))));
    }
}
