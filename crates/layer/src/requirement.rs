//! What a route needs: an authorization whose resource may be a path
//! parameter (`env:view`, `task:operate:{name}`), parsed once when the
//! router is built — by [`crate::Authorizer::require`], or by a service
//! that routes on its own (`authproxy verifier`) through
//! [`Requirement::parse`] and [`crate::Authorizer::authorize`].

use std::borrow::Cow;

use authproxy_core::authorization::{Authorization, AuthorizationError, Name};
use axum::extract::{FromRequestParts as _, RawPathParams};
use axum::http::request::Parts;

/// A route requirement that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequirementError {
    /// Not `type:action` or `type:action:resource`.
    #[error("expected type:action or type:action:resource")]
    Shape,
    /// `{}`: a parameter without a name.
    #[error("empty {{}} parameter")]
    EmptyParameter,
    /// Not an entry of the authorization catalogue.
    #[error(transparent)]
    Catalogue(#[from] AuthorizationError),
}

/// What a route needs, parsed once: `env:view`, or `task:operate:{name}`
/// whose resource is the path parameter `name`.
#[derive(Debug, Clone)]
pub struct Requirement(Need);

#[derive(Debug, Clone)]
enum Need {
    /// No path parameter: resolved once at startup, not on every request.
    Fixed(Authorization),
    /// `type:action:{param}`: the resource is the path parameter `param`.
    Param {
        kind: String,
        action: String,
        param: String,
    },
}

impl Requirement {
    /// Parses a scope string in which the resource may be a path parameter
    /// (`env:view`, `task:operate:send-report`, `task:operate:{name}`); the
    /// combination must be in the authorization catalogue.
    pub fn parse(s: &str) -> Result<Self, RequirementError> {
        Need::parse(s).map(Self)
    }

    /// The path parameter the resource comes from (`name` for
    /// `task:operate:{name}`), if any.
    pub fn param(&self) -> Option<&str> {
        match &self.0 {
            Need::Fixed(_) => None,
            Need::Param { param, .. } => Some(param),
        }
    }

    /// The value of [`Self::param`] in a request axum has routed (empty when
    /// missing: never covered); `None` for a fixed requirement.
    pub(crate) async fn value_in(&self, parts: &mut Parts) -> Option<String> {
        let param = self.param()?;
        // Params exist once the router matched; under `route_layer` they
        // always do.
        Some(match RawPathParams::from_request_parts(parts, &()).await {
            Ok(params) => params
                .iter()
                .find(|(k, _)| *k == param)
                .map(|(_, v)| v.to_owned())
                .unwrap_or_default(),
            Err(_) => String::new(),
        })
    }

    /// The authorization a request needs, given the value of its path
    /// parameter, or `Err(shown)` when that value is not a valid name (no
    /// token can cover it). `shown` is then the requirement itself
    /// (`task:operate:{name}`), never the value: the value is the client's,
    /// and echoing it into `WWW-Authenticate` would let a `"` close the
    /// scope and add auth-params (#11 item 1).
    pub(crate) fn resolve(&self, value: Option<&str>) -> Result<Cow<'_, Authorization>, String> {
        let (kind, action, param) = match &self.0 {
            Need::Fixed(a) => return Ok(Cow::Borrowed(a)),
            Need::Param {
                kind,
                action,
                param,
            } => (kind, action, param),
        };
        let value = value.unwrap_or_default();
        Name::parse(value)
            .ok()
            .and_then(|_| Authorization::from_parts(kind, action, Some(value)).ok())
            .map(Cow::Owned)
            .ok_or_else(|| {
                // `?` quotes and escapes the value: no log injection either.
                tracing::debug!(%param, value = ?value, "path parameter is not a valid name");
                format!("{kind}:{action}:{{{param}}}")
            })
    }
}

impl std::fmt::Display for Requirement {
    /// The requirement as written: `env:view`, `task:operate:{name}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Need::Fixed(a) => a.fmt(f),
            Need::Param {
                kind,
                action,
                param,
            } => write!(f, "{kind}:{action}:{{{param}}}"),
        }
    }
}

impl Need {
    fn parse(s: &str) -> Result<Self, RequirementError> {
        let parts: Vec<&str> = s.split(':').collect();
        let (kind, action, resource) = match parts.as_slice() {
            [k, a] => (*k, *a, None),
            [k, a, r] => (*k, *a, Some(*r)),
            _ => return Err(RequirementError::Shape),
        };
        match resource.and_then(|r| r.strip_prefix('{').and_then(|r| r.strip_suffix('}'))) {
            Some("") => Err(RequirementError::EmptyParameter),
            Some(param) => {
                // Validate the combination now, with a placeholder resource.
                Authorization::from_parts(kind, action, Some("x"))?;
                Ok(Self::Param {
                    kind: kind.to_owned(),
                    action: action.to_owned(),
                    param: param.to_owned(),
                })
            }
            None => Ok(Self::Fixed(Authorization::from_parts(
                kind, action, resource,
            )?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_requirements_are_refused_with_their_reason() {
        assert_eq!(
            Requirement::parse("env").unwrap_err(),
            RequirementError::Shape
        );
        assert_eq!(
            Requirement::parse("a:b:c:d").unwrap_err(),
            RequirementError::Shape
        );
        assert_eq!(
            Requirement::parse("task:operate:{}").unwrap_err(),
            RequirementError::EmptyParameter
        );
        assert!(matches!(
            Requirement::parse("env:view:{x}"),
            Err(RequirementError::Catalogue(_))
        ));
        assert!(matches!(
            Requirement::parse("task:operate"),
            Err(RequirementError::Catalogue(_))
        ));
    }

    #[test]
    fn fixed_requirements_are_resolved_at_parse_time() {
        assert!(matches!(
            Requirement::parse("env:view").unwrap().0,
            Need::Fixed(Authorization::EnvView)
        ));
        assert!(matches!(
            Requirement::parse("task:operate:send-report").unwrap().0,
            Need::Fixed(Authorization::TaskOperate(_))
        ));
        assert!(matches!(
            Requirement::parse("task:operate:{name}").unwrap().0,
            Need::Param { .. }
        ));
    }

    #[test]
    fn a_requirement_names_its_parameter_and_prints_as_written() {
        let fixed = Requirement::parse("env:view").unwrap();
        assert_eq!(
            (fixed.param(), fixed.to_string().as_str()),
            (None, "env:view")
        );
        let param = Requirement::parse("task:operate:{name}").unwrap();
        assert_eq!(param.param(), Some("name"));
        assert_eq!(param.to_string(), "task:operate:{name}");
    }

    #[test]
    fn a_parameter_value_resolves_only_when_it_is_a_name() {
        let r = Requirement::parse("task:operate:{name}").unwrap();
        assert_eq!(
            r.resolve(Some("send-report")).unwrap().to_string(),
            "task:operate:send-report"
        );
        for bad in [None, Some(""), Some("Send"), Some("a\"b"), Some("x%2fy")] {
            assert_eq!(
                r.resolve(bad).unwrap_err(),
                "task:operate:{name}",
                "{bad:?}"
            );
        }
        let fixed = Requirement::parse("env:view").unwrap();
        assert_eq!(
            fixed.resolve(Some("ignored")).unwrap().to_string(),
            "env:view"
        );
    }
}
