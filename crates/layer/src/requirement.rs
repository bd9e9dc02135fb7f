//! What a route needs: an authorization whose resource may be a path
//! parameter (`env:view`, `task:operate:{name}`), parsed once when the
//! router is built.

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

/// A parsed route requirement.
#[derive(Debug)]
pub(crate) enum Requirement {
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
    pub(crate) fn parse(s: &str) -> Result<Self, RequirementError> {
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

    /// The authorization this request needs, or `Err(shown)` when the path
    /// parameter is not a valid name (no token can cover it). `shown` is
    /// then the requirement itself (`task:operate:{name}`), never the value:
    /// the value is the client's, and echoing it into `WWW-Authenticate`
    /// would let a `"` close the scope and add auth-params (#11 item 1).
    pub(crate) async fn resolve(
        &self,
        parts: &mut Parts,
    ) -> Result<Cow<'_, Authorization>, String> {
        let (kind, action, param) = match self {
            Self::Fixed(a) => return Ok(Cow::Borrowed(a)),
            Self::Param {
                kind,
                action,
                param,
            } => (kind, action, param),
        };
        // Params exist once the router matched; under `route_layer` they
        // always do. Missing means an empty resource: never covered.
        let value = match RawPathParams::from_request_parts(parts, &()).await {
            Ok(params) => params
                .iter()
                .find(|(k, _)| k == param)
                .map(|(_, v)| v.to_owned())
                .unwrap_or_default(),
            Err(_) => String::new(),
        };
        Name::parse(&value)
            .ok()
            .and_then(|_| Authorization::from_parts(kind, action, Some(&value)).ok())
            .map(Cow::Owned)
            .ok_or_else(|| {
                // `?` quotes and escapes the value: no log injection either.
                tracing::debug!(%param, value = ?value, "path parameter is not a valid name");
                format!("{kind}:{action}:{{{param}}}")
            })
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
            Requirement::parse("env:view").unwrap(),
            Requirement::Fixed(Authorization::EnvView)
        ));
        assert!(matches!(
            Requirement::parse("task:operate:send-report").unwrap(),
            Requirement::Fixed(Authorization::TaskOperate(_))
        ));
        assert!(matches!(
            Requirement::parse("task:operate:{name}").unwrap(),
            Requirement::Param { .. }
        ));
    }
}
