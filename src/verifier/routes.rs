//! The `[[routes]]` table: which rule guards a method and a path. Deny by
//! default — a request no route takes is refused.
//!
//! Routes are tried in file order and the first that takes the request
//! decides. A route that an earlier one takes every request of could never
//! decide anything, so it is a configuration error rather than a rule that
//! silently does not apply. Patterns match the path as received (literal
//! segments byte for byte, `{param}` a whole non-empty segment); the path
//! has been made canonical or refused before ([`super::original`]).

use authproxy_layer::{Requirement, RequirementError};
use axum::http::Method;

use super::config::RawRoute;

/// The validated `[[routes]]`.
#[derive(Debug)]
pub struct Routes(Vec<Route>);

/// One `[[routes]]` entry.
#[derive(Debug)]
pub struct Route {
    method: Method,
    segments: Vec<Segment>,
    rule: Rule,
    /// The path as configured, for logs.
    path: String,
}

/// What a matched route requires.
#[derive(Debug)]
pub enum Rule {
    /// `public = true`: no token is needed (none is verified).
    Public,
    /// `scope = "…"`: a token whose scopes cover it, checked by the layer.
    Scope(Requirement),
}

#[derive(Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A route that takes a request, and the request's path parameters.
#[derive(Debug)]
pub struct Matched<'r, 'p> {
    /// The route's rule.
    pub rule: &'r Rule,
    /// `(name, value)` of each `{param}` of the route's path.
    pub params: Vec<(&'r str, &'p str)>,
    /// The route's index in the file (`routes[i]`), for logs.
    pub index: usize,
}

/// Why `[[routes]]` was refused.
#[derive(Debug)]
pub(super) enum RouteError {
    /// No route at all: everything would be refused.
    Empty,
    /// `routes[index].key` is wrong.
    Invalid {
        index: usize,
        key: &'static str,
        problem: String,
    },
}

impl Routes {
    pub(super) fn parse(raw: &[RawRoute]) -> Result<Self, RouteError> {
        if raw.is_empty() {
            return Err(RouteError::Empty);
        }
        let mut routes: Vec<Route> = Vec::with_capacity(raw.len());
        for (index, r) in raw.iter().enumerate() {
            let invalid = |key: &'static str, problem: String| RouteError::Invalid {
                index,
                key,
                problem,
            };
            let route = Route::parse(r).map_err(|(key, problem)| invalid(key, problem))?;
            if let Some(first) = routes.iter().position(|earlier| earlier.shadows(&route)) {
                return Err(invalid(
                    "path",
                    format!(
                        "= {} {} can never match: routes[{first}] ({} {}) comes first and takes every request it would",
                        route.method, route.path, routes[first].method, routes[first].path
                    ),
                ));
            }
            routes.push(route);
        }
        Ok(Self(routes))
    }

    /// The first route that takes `method` on `path` (a canonical path,
    /// no query), with its parameters; `None`: deny.
    pub fn find<'r, 'p>(&'r self, method: &Method, path: &'p str) -> Option<Matched<'r, 'p>> {
        self.0.iter().enumerate().find_map(|(index, route)| {
            if !route.takes_method(method) {
                return None;
            }
            route.match_path(path).map(|params| Matched {
                rule: &route.rule,
                params,
                index,
            })
        })
    }
}

impl Route {
    fn parse(r: &RawRoute) -> Result<Self, (&'static str, String)> {
        let method = r
            .method
            .as_deref()
            .map(str::trim)
            .ok_or(("method", "is required (GET, POST, …)".to_owned()))?;
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err((
                "method",
                format!("`{method}` must be an HTTP method in capitals, like GET or POST"),
            ));
        }
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|e| ("method", format!("`{method}`: {e}")))?;
        let path = r
            .path
            .as_deref()
            .map(str::trim)
            .ok_or(("path", "is required (e.g. /tasks/{name}/runs)".to_owned()))?;
        let segments = parse_path(path).map_err(|p| ("path", p))?;
        let rule = match (r.public, r.scope.as_deref().map(str::trim)) {
            (Some(true), Some(_)) => {
                return Err((
                    "public",
                    "= true takes no scope: remove one of them".to_owned(),
                ));
            }
            (Some(true), None) => Rule::Public,
            (_, None) => {
                return Err((
                    "scope",
                    "is required (e.g. \"env:view\", \"task:operate:{name}\"), or set public = true"
                        .to_owned(),
                ));
            }
            (_, Some(scope)) => {
                let requirement = Requirement::parse(scope)
                    .map_err(|e| ("scope", format!("`{scope}`: {}", describe(&e))))?;
                if let Some(param) = requirement.param()
                    && !segments.contains(&Segment::Param(param.to_owned()))
                {
                    return Err((
                        "scope",
                        format!(
                            "`{scope}` takes `{{{param}}}`, which is not a parameter of the path {path}"
                        ),
                    ));
                }
                Rule::Scope(requirement)
            }
        };
        Ok(Self {
            method,
            segments,
            rule,
            path: path.to_owned(),
        })
    }

    /// A `GET` route takes `HEAD` too, as axum's `get` does: the same
    /// resource, without its body.
    fn takes_method(&self, method: &Method) -> bool {
        self.method == method || (self.method == Method::GET && method == Method::HEAD)
    }

    fn match_path<'r, 'p>(&'r self, path: &'p str) -> Option<Vec<(&'r str, &'p str)>> {
        if !path.starts_with('/') {
            return None;
        }
        let mut given = segments_of(path);
        let mut params = Vec::new();
        for segment in &self.segments {
            let value = given.next()?;
            match segment {
                Segment::Literal(l) if l == value => {}
                Segment::Param(name) if !value.is_empty() => params.push((name.as_str(), value)),
                _ => return None,
            }
        }
        given.next().is_none().then_some(params)
    }

    /// Whether this route takes every request `later` would.
    fn shadows(&self, later: &Route) -> bool {
        let methods = self.method == later.method
            || (self.method == Method::GET && later.method == Method::HEAD);
        methods
            && self.segments.len() == later.segments.len()
            && self
                .segments
                .iter()
                .zip(&later.segments)
                .all(|(a, b)| matches!(a, Segment::Param(_)) || a == b)
    }
}

/// `/` is no segment; `/a/b` is `a`, `b`; `/a/` is `a`, `` (never matched).
fn segments_of(path: &str) -> impl Iterator<Item = &str> {
    path.strip_prefix('/')
        .filter(|rest| !rest.is_empty())
        .into_iter()
        .flat_map(|rest| rest.split('/'))
}

/// A route pattern: `/`, or `/`-separated segments, each a literal of
/// unreserved and sub-delimiter characters (no `%`, `;`, `.`/`..`, empty
/// segment), or a whole-segment `{param}`.
fn parse_path(path: &str) -> Result<Vec<Segment>, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("`{path}` must start with /"));
    };
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let mut segments = Vec::new();
    for s in rest.split('/') {
        let segment = if let Some(name) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let valid = name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !valid {
                return Err(format!(
                    "`{path}`: `{{{name}}}` is not a parameter name (lower-case letters, digits, _)"
                ));
            }
            if segments.contains(&Segment::Param(name.to_owned())) {
                return Err(format!("`{path}` names `{{{name}}}` twice"));
            }
            Segment::Param(name.to_owned())
        } else {
            let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@".contains(&b);
            if s.is_empty() || s == "." || s == ".." || !s.bytes().all(allowed) {
                return Err(format!(
                    "`{path}`: segment `{s}` must be non-empty, not . or .., and hold only letters, digits and -._~!$&'()*+,=:@ (a parameter is a whole segment: {{name}})"
                ));
            }
            Segment::Literal(s.to_owned())
        };
        segments.push(segment);
    }
    Ok(segments)
}

fn describe(e: &RequirementError) -> String {
    match e {
        RequirementError::Catalogue(c) => format!("not in the authorization catalogue ({c})"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(method: &str, path: &str, scope: Option<&str>, public: Option<bool>) -> RawRoute {
        RawRoute {
            method: Some(method.into()),
            path: Some(path.into()),
            scope: scope.map(Into::into),
            public,
        }
    }

    /// The shipped table's shape.
    fn table() -> Routes {
        Routes::parse(&[
            raw("GET", "/environment", Some("env:view"), None),
            raw(
                "POST",
                "/tasks/{name}/runs",
                Some("task:operate:{name}"),
                None,
            ),
            raw(
                "GET",
                "/tasks/{name}/runs/{id}",
                Some("task:operate:{name}"),
                None,
            ),
            raw("GET", "/healthz", None, Some(true)),
            raw("GET", "/", None, Some(true)),
        ])
        .unwrap()
    }

    fn scope_of(routes: &Routes, method: Method, path: &str) -> Option<String> {
        routes.find(&method, path).map(|m| match m.rule {
            Rule::Public => "public".to_owned(),
            Rule::Scope(r) => r.to_string(),
        })
    }

    #[test]
    fn a_route_matches_its_method_and_path_and_hands_out_its_parameters() {
        let t = table();
        let m = t.find(&Method::POST, "/tasks/send-report/runs").unwrap();
        assert_eq!(m.index, 1);
        assert_eq!(m.params, [("name", "send-report")]);
        let m = t.find(&Method::GET, "/tasks/a/runs/run-1").unwrap();
        assert_eq!(m.params, [("name", "a"), ("id", "run-1")]);
        assert_eq!(
            scope_of(&t, Method::GET, "/environment").as_deref(),
            Some("env:view")
        );
        assert_eq!(scope_of(&t, Method::GET, "/").as_deref(), Some("public"));
    }

    #[test]
    fn whatever_no_route_takes_is_denied() {
        let t = table();
        for (method, path) in [
            (Method::POST, "/environment"), // another method
            (Method::DELETE, "/tasks/a/runs"),
            (Method::GET, "/environment/"), // trailing slash: another path
            (Method::GET, "//environment"),
            (Method::GET, "/environment/x"), // longer
            (Method::POST, "/tasks//runs"),  // empty parameter
            (Method::POST, "/tasks/runs"),   // shorter
            (Method::GET, "/Environment"),   // case matters
            (Method::GET, "/environment;x"), // path parameters are not stripped
            (Method::GET, "/environ%6dent"), // nor percent-decoded
            (Method::GET, ""),
        ] {
            assert!(t.find(&method, path).is_none(), "{method} {path}");
        }
    }

    #[test]
    fn head_is_taken_by_a_get_route_but_no_other_method_is() {
        let t = table();
        assert!(t.find(&Method::HEAD, "/environment").is_some());
        assert!(t.find(&Method::OPTIONS, "/environment").is_none());
    }

    #[test]
    fn the_first_route_that_takes_a_request_decides() {
        let t = Routes::parse(&[
            raw("POST", "/tasks/public/runs", None, Some(true)),
            raw(
                "POST",
                "/tasks/{name}/runs",
                Some("task:operate:{name}"),
                None,
            ),
        ])
        .unwrap();
        assert_eq!(
            scope_of(&t, Method::POST, "/tasks/public/runs").as_deref(),
            Some("public")
        );
        assert_eq!(
            scope_of(&t, Method::POST, "/tasks/other/runs").as_deref(),
            Some("task:operate:{name}")
        );
    }

    #[test]
    fn a_route_an_earlier_one_shadows_is_a_configuration_error() {
        for (first, second) in [
            (
                raw(
                    "POST",
                    "/tasks/{name}/runs",
                    Some("task:operate:{name}"),
                    None,
                ),
                raw("POST", "/tasks/public/runs", None, Some(true)),
            ),
            (
                raw("GET", "/environment", Some("env:view"), None),
                raw("GET", "/environment", None, Some(true)),
            ),
            (
                raw("GET", "/environment", Some("env:view"), None),
                raw("HEAD", "/environment", None, Some(true)),
            ),
        ] {
            match Routes::parse(&[first, second]) {
                Err(RouteError::Invalid {
                    index: 1,
                    key: "path",
                    problem,
                }) => {
                    assert!(problem.contains("routes[0]"), "{problem}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn malformed_routes_are_refused_naming_the_key() {
        for (route, key) in [
            (raw("get", "/x", Some("env:view"), None), "method"),
            (raw("G E T", "/x", Some("env:view"), None), "method"),
            (raw("GET", "x", Some("env:view"), None), "path"),
            (raw("GET", "/a//b", Some("env:view"), None), "path"),
            (raw("GET", "/a/../b", Some("env:view"), None), "path"),
            (raw("GET", "/a/%2e", Some("env:view"), None), "path"),
            (raw("GET", "/a;b", Some("env:view"), None), "path"),
            (raw("GET", "/a/", Some("env:view"), None), "path"),
            (raw("GET", "/x{name}", Some("env:view"), None), "path"),
            (raw("GET", "/{Name}", Some("env:view"), None), "path"),
            (raw("GET", "/{a}/{a}", Some("env:view"), None), "path"),
            (raw("GET", "/x", None, None), "scope"),
            (raw("GET", "/x", None, Some(false)), "scope"),
            (raw("GET", "/x", Some("env:view"), Some(true)), "public"),
            (raw("GET", "/x", Some("env:delete"), None), "scope"),
            (raw("GET", "/x", Some("task:operate:{name}"), None), "scope"),
            (
                raw("GET", "/x/{id}", Some("task:operate:{name}"), None),
                "scope",
            ),
        ] {
            match Routes::parse(&[route]) {
                Err(RouteError::Invalid {
                    index: 0, key: k, ..
                }) => assert_eq!(k, key),
                other => panic!("expected an error on {key}: {other:?}"),
            }
        }
        assert!(matches!(Routes::parse(&[]), Err(RouteError::Empty)));
    }
}
