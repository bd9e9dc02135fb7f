//! Which request a forward-auth check is about: the original method and
//! path, from the headers nginx (`X-Original-Method`/`X-Original-URI`) or
//! Traefik and Caddy (`X-Forwarded-Method`/`X-Forwarded-Uri`) set, or from
//! an Envoy ext_authz check's own request line; then the path made
//! canonical, or refused.
//!
//! Two rules keep a client from choosing what is checked:
//! - **Exactly one source.** Proxies forward the client's own headers to
//!   the verifier (nginx's auth subrequest carries them all; Traefik's
//!   `forwardAuth` too). Each proxy overwrites its own pair, but not the
//!   other proxy's: behind Traefik a client could add `X-Original-URI:
//!   /healthz`. A check naming its request in two ways, or one header
//!   twice, is refused rather than resolved by a precedence rule.
//! - **No path that must be resolved.** The upstream receives the path as
//!   the client sent it (nginx passes `$request_uri`, Envoy the `:path`), and
//!   the verifier cannot know whether the upstream resolves `..`, `%2e%2e`,
//!   backslashes or `%2f` as it would. So a path that
//!   [`confine_path`](crate::proxy::confine_path) — the forward
//!   proxy's normaliser — would change, or that holds an encoded slash, is
//!   refused: a path checked under one route's rule can never be served by
//!   another route. Clients send canonical paths; only tricks are refused.

use axum::http::{HeaderMap, Method};

use crate::proxy::confine_path;

/// nginx `auth_request`: `proxy_set_header X-Original-URI $request_uri`.
const NGINX: [&str; 2] = ["x-original-method", "x-original-uri"];
/// Traefik `forwardAuth`, Caddy `forward_auth`.
const FORWARDED: [&str; 2] = ["x-forwarded-method", "x-forwarded-uri"];

/// The request a check is about.
#[derive(Debug, PartialEq, Eq)]
pub struct Original<'a> {
    /// Its method.
    pub method: Method,
    /// Its path: canonical, without the query.
    pub path: &'a str,
}

/// Why a check is not answered with a route's rule.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Return `400 Bad Request`, `invalid_request`: the check does not say
    /// which request it is about (a proxy misconfiguration, or a client
    /// adding headers of its own).
    Unknown(&'static str),
    /// Return `403 Forbidden`, `access_denied`: a path whose meaning
    /// depends on how the upstream would resolve it.
    Path(&'static str),
}

/// The original request of a `/verify` check, from its headers.
pub fn from_headers(headers: &HeaderMap) -> Result<Original<'_>, Refusal> {
    let nginx = pair(headers, NGINX)?;
    let forwarded = pair(headers, FORWARDED)?;
    let (method, target) = match (nginx, forwarded) {
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => {
            return Err(Refusal::Unknown(
                "the check names no request: send X-Original-Method and X-Original-URI (nginx) or X-Forwarded-Method and X-Forwarded-Uri (Traefik, Caddy)",
            ));
        }
        (Some(_), Some(_)) => {
            return Err(Refusal::Unknown(
                "the check names its request with both X-Original-* and X-Forwarded-* headers",
            ));
        }
    };
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| Refusal::Unknown("the original method is not an HTTP method"))?;
    canonical(method, target)
}

/// The original request of an Envoy ext_authz check: Envoy sends the
/// original method as the check's method and the original path (with its
/// query) after `prefix` (`http_service.path_prefix`). `target` is the
/// check's path and query as received.
pub fn from_ext_authz<'a>(
    method: &Method,
    target: &'a str,
    prefix: &str,
    headers: &HeaderMap,
) -> Result<Original<'a>, Refusal> {
    if pair(headers, NGINX)?.is_some() || pair(headers, FORWARDED)?.is_some() {
        return Err(Refusal::Unknown(
            "an ext_authz check names its request by its own path; it carries X-Original-* or X-Forwarded-* headers too",
        ));
    }
    let rest = target.strip_prefix(prefix).unwrap_or_default();
    canonical(method.clone(), rest)
}

/// Both headers of a pair, once each, as text; `None` when neither is there.
fn pair<'h>(
    headers: &'h HeaderMap,
    names: [&str; 2],
) -> Result<Option<(&'h str, &'h str)>, Refusal> {
    let one = |name: &str| -> Result<Option<&'h str>, Refusal> {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (None, _) => Ok(None),
            (Some(_), Some(_)) => Err(Refusal::Unknown(
                "a header naming the original request is repeated",
            )),
            (Some(v), None) => v.to_str().map(Some).map_err(|_| {
                Refusal::Unknown("a header naming the original request is not ASCII text")
            }),
        }
    };
    match (one(names[0])?, one(names[1])?) {
        (Some(method), Some(target)) => Ok(Some((method.trim(), target.trim()))),
        (None, None) => Ok(None),
        _ => Err(Refusal::Unknown(
            "the original method and URI headers come in pairs; one is missing",
        )),
    }
}

/// The path of `target` (origin form, `/path?query`) if it is canonical.
fn canonical(method: Method, target: &str) -> Result<Original<'_>, Refusal> {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if !path.starts_with('/') {
        return Err(Refusal::Unknown(
            "the original URI is not a path (/path?query)",
        ));
    }
    if path.contains('#') {
        return Err(Refusal::Path("a fragment in a request path"));
    }
    // `%2f` splits a segment for some upstreams and not for others.
    if path
        .as_bytes()
        .windows(3)
        .any(|w| w.eq_ignore_ascii_case(b"%2f"))
    {
        return Err(Refusal::Path("an encoded slash in the path"));
    }
    match confine_path(path) {
        Ok(resolved) if resolved == path => Ok(Original { method, path }),
        Ok(_) => Err(Refusal::Path(
            "dot segments or backslashes in the path (the upstream might resolve them differently)",
        )),
        Err(why) => Err(Refusal::Path(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn ok(method: Method, path: &str) -> Result<Original<'_>, Refusal> {
        Ok(Original { method, path })
    }

    #[test]
    fn nginx_headers_name_the_request_and_the_query_is_dropped() {
        let h = headers(&[
            ("x-original-method", "POST"),
            ("x-original-uri", "/tasks/a/runs?x=1"),
        ]);
        assert_eq!(from_headers(&h), ok(Method::POST, "/tasks/a/runs"));
    }

    #[test]
    fn traefik_and_caddy_headers_name_the_request() {
        let h = headers(&[
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/environment"),
            ("x-forwarded-host", "api.example"),
        ]);
        assert_eq!(from_headers(&h), ok(Method::GET, "/environment"));
    }

    #[test]
    fn an_ext_authz_check_names_the_request_with_its_own_method_and_path() {
        let h = HeaderMap::new();
        assert_eq!(
            from_ext_authz(
                &Method::DELETE,
                "/ext_authz/tasks/a/runs/r1?q",
                "/ext_authz",
                &h
            ),
            ok(Method::DELETE, "/tasks/a/runs/r1")
        );
        assert_eq!(
            from_ext_authz(&Method::GET, "/ext_authz/", "/ext_authz", &h),
            ok(Method::GET, "/")
        );
        assert!(matches!(
            from_ext_authz(&Method::GET, "/ext_authz", "/ext_authz", &h),
            Err(Refusal::Unknown(_))
        ));
        let spoofed = headers(&[("x-original-method", "GET"), ("x-original-uri", "/healthz")]);
        assert!(matches!(
            from_ext_authz(
                &Method::POST,
                "/ext_authz/tasks/a/runs",
                "/ext_authz",
                &spoofed
            ),
            Err(Refusal::Unknown(_))
        ));
    }

    #[test]
    fn a_check_naming_its_request_twice_or_by_halves_is_refused() {
        for pairs in [
            &[][..],
            // A client behind Traefik adding nginx's pair (or the reverse).
            &[
                ("x-forwarded-method", "POST"),
                ("x-forwarded-uri", "/tasks/a/runs"),
                ("x-original-method", "GET"),
                ("x-original-uri", "/healthz"),
            ][..],
            &[("x-original-uri", "/environment")][..],
            &[("x-forwarded-method", "GET")][..],
            &[
                ("x-original-method", "GET"),
                ("x-original-uri", "/healthz"),
                ("x-original-uri", "/environment"),
            ][..],
            &[("x-original-method", "G(T"), ("x-original-uri", "/healthz")][..],
            &[
                ("x-original-method", "GET"),
                ("x-original-uri", "http://h/healthz"),
            ][..],
            &[("x-original-method", "OPTIONS"), ("x-original-uri", "*")][..],
        ] {
            assert!(
                matches!(from_headers(&headers(pairs)), Err(Refusal::Unknown(_))),
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn paths_that_would_need_resolving_are_refused_in_every_spelling() {
        for path in [
            "/environment/../tasks/x/runs",
            "/environment/%2e%2e/tasks/x/runs",
            "/environment/%2E%2e/tasks/x/runs",
            "/environment/.%2e/tasks/x/runs",
            "/./environment",
            "/environment/.",
            "/tasks/x/runs/..",
            "/..",
            "/../environment",
            "/environment\\..\\tasks",
            "/environment%5c..%5ctasks",
            "/tasks/a%2fb/runs",
            "/tasks/a%2Fb/runs",
            "/environment/..;/tasks/x/runs",
            "/environment#x",
        ] {
            let h = HeaderMap::from_iter([
                (
                    "x-original-method".parse().unwrap(),
                    HeaderValue::from_static("GET"),
                ),
                (
                    "x-original-uri".parse().unwrap(),
                    HeaderValue::from_str(path).unwrap(),
                ),
            ]);
            assert!(
                matches!(from_headers(&h), Err(Refusal::Path(_))),
                "{path}: {:?}",
                from_headers(&h)
            );
        }
    }

    #[test]
    fn canonical_paths_pass_as_they_are() {
        for path in [
            "/",
            "/environment",
            "/tasks/send-report/runs",
            "//environment",
            "/a;b",
            "/..a",
            "/a%20b",
        ] {
            assert_eq!(
                canonical(Method::GET, path),
                ok(Method::GET, path),
                "{path}"
            );
        }
    }
}
