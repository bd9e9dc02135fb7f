//! Authorizations (`type` / `action` / optional `resource`) and scope sets.
//!
//! An [`Authorization`] can only be built through its constructors, which
//! enforce the catalogue of DESIGN §2: `task:operate:<task>` needs a resource,
//! `env:view` forbids one, and nothing else exists. Everything downstream
//! (declarations, grants, tokens, the layer) takes these types, never raw
//! strings, so an invalid scope cannot travel far.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// Maximum length of a [`Name`], in bytes.
pub const NAME_MAX_LEN: usize = 64;

/// Why a name, an authorization or a scope string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorizationError {
    /// The string is not a valid name (`[a-z0-9][a-z0-9_-]{0,63}`).
    #[error(
        "`{0}` is not a valid name: use 1-64 characters of a-z, 0-9, `_` and `-`, starting with a letter or digit"
    )]
    InvalidName(String),
    /// The `type` is not one authproxy knows.
    #[error("unknown type `{0}` (known types: task, env)")]
    UnknownType(String),
    /// The `action` does not exist for that `type`.
    #[error("action `{action}` does not exist for type `{kind}` (allowed: {allowed})")]
    UnknownAction {
        /// The type given.
        kind: String,
        /// The action given.
        action: String,
        /// The actions that type allows.
        allowed: &'static str,
    },
    /// The combination needs a resource and none was given.
    #[error("`{0}` needs a resource (the name of a declared task)")]
    MissingResource(&'static str),
    /// The combination forbids a resource and one was given.
    #[error("`{0}` takes no resource")]
    UnexpectedResource(&'static str),
    /// The scope string does not have the `type:action[:resource]` shape.
    #[error("`{0}` is not a scope of the form type:action or type:action:resource")]
    Malformed(String),
}

/// A validated name: `[a-z0-9][a-z0-9_-]{0,63}`.
///
/// Used for task, application, worker and cron names and for resources.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    /// Parses a name, refusing anything outside `[a-z0-9][a-z0-9_-]{0,63}`.
    pub fn parse(s: &str) -> Result<Self, AuthorizationError> {
        let bytes = s.as_bytes();
        let first_ok = bytes
            .first()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let rest_ok = bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-');
        if first_ok && rest_ok && bytes.len() <= NAME_MAX_LEN {
            Ok(Self(s.to_owned()))
        } else {
            Err(AuthorizationError::InvalidName(s.to_owned()))
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Name {
    type Err = AuthorizationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// One entry of the authorization catalogue (DESIGN §2).
///
/// The variants *are* the table of valid combinations: there is no way to
/// build `env:view:something` or `task:operate` without a task.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Authorization {
    /// `task:operate:<task>` — trigger and manage that task's runs.
    TaskOperate(Name),
    /// `env:view` — read-only access to the environment API.
    EnvView,
}

impl Authorization {
    /// Builds an authorization from its three declared parts.
    pub fn from_parts(
        kind: &str,
        action: &str,
        resource: Option<&str>,
    ) -> Result<Self, AuthorizationError> {
        match (kind, action) {
            ("task", "operate") => match resource {
                Some(r) => Ok(Self::TaskOperate(Name::parse(r)?)),
                None => Err(AuthorizationError::MissingResource("task:operate")),
            },
            ("env", "view") => match resource {
                None => Ok(Self::EnvView),
                Some(_) => Err(AuthorizationError::UnexpectedResource("env:view")),
            },
            ("task", other) => Err(AuthorizationError::UnknownAction {
                kind: "task".into(),
                action: other.into(),
                allowed: "operate",
            }),
            ("env", other) => Err(AuthorizationError::UnknownAction {
                kind: "env".into(),
                action: other.into(),
                allowed: "view",
            }),
            (other, _) => Err(AuthorizationError::UnknownType(other.into())),
        }
    }

    /// The `type` part.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TaskOperate(_) => "task",
            Self::EnvView => "env",
        }
    }

    /// The `action` part.
    pub fn action(&self) -> &'static str {
        match self {
            Self::TaskOperate(_) => "operate",
            Self::EnvView => "view",
        }
    }

    /// The `resource` part, if the combination has one.
    pub fn resource(&self) -> Option<&Name> {
        match self {
            Self::TaskOperate(name) => Some(name),
            Self::EnvView => None,
        }
    }
}

impl fmt::Display for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.resource() {
            Some(r) => write!(f, "{}:{}:{}", self.kind(), self.action(), r),
            None => write!(f, "{}:{}", self.kind(), self.action()),
        }
    }
}

impl serde::Serialize for Authorization {
    /// As its scope string (`task:operate:x`), written without allocating.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl FromStr for Authorization {
    type Err = AuthorizationError;

    /// Parses a scope string `type:action` or `type:action:resource`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(':');
        let (Some(kind), Some(action)) = (parts.next(), parts.next()) else {
            return Err(AuthorizationError::Malformed(s.to_owned()));
        };
        let resource = parts.next();
        if parts.next().is_some() || kind.is_empty() || action.is_empty() {
            return Err(AuthorizationError::Malformed(s.to_owned()));
        }
        Self::from_parts(kind, action, resource)
    }
}

/// A set of authorizations, as carried in a token's or a grant's `scope`.
///
/// Ordered, so its string form is canonical: the same set always formats to
/// the same string (which the token reuse cache relies on).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScopeSet(BTreeSet<Authorization>);

impl ScopeSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a space-separated scope string (RFC 6749 §3.3). Runs of spaces
    /// are tolerated; an empty string is the empty set.
    pub fn parse(s: &str) -> Result<Self, AuthorizationError> {
        s.split(' ')
            .filter(|p| !p.is_empty())
            .map(Authorization::from_str)
            .collect()
    }

    /// True when this set holds exactly the required authorization.
    ///
    /// Coverage is equality of type, action and resource (DESIGN §2); there
    /// are no wildcards at this level.
    pub fn covers(&self, required: &Authorization) -> bool {
        self.0.contains(required)
    }

    /// True when every member of `self` is in `other`.
    pub fn is_subset(&self, other: &ScopeSet) -> bool {
        self.0.is_subset(&other.0)
    }

    /// True when the set holds nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of authorizations in the set.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Iterates in canonical order.
    pub fn iter(&self) -> impl Iterator<Item = &Authorization> {
        self.0.iter()
    }

    /// Adds one authorization; returns false if it was already there.
    pub fn insert(&mut self, authorization: Authorization) -> bool {
        self.0.insert(authorization)
    }
}

impl serde::Serialize for ScopeSet {
    /// As a list of scope strings in canonical order.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl FromIterator<Authorization> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Authorization>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_follow_the_documented_pattern() {
        assert!(Name::parse("send-report").is_ok());
        assert!(Name::parse("a").is_ok());
        assert!(Name::parse("0_x").is_ok());
        assert!(Name::parse(&"a".repeat(64)).is_ok());
        for bad in [
            "",
            "-x",
            "_x",
            "A",
            "send report",
            "x:y",
            "é",
            &"a".repeat(65),
        ] {
            assert!(Name::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn the_catalogue_is_enforced() {
        assert_eq!(
            "task:operate:notify".parse::<Authorization>(),
            Ok(Authorization::TaskOperate(Name::parse("notify").unwrap()))
        );
        assert_eq!(
            "env:view".parse::<Authorization>(),
            Ok(Authorization::EnvView)
        );
        assert!(matches!(
            "task:operate".parse::<Authorization>(),
            Err(AuthorizationError::MissingResource(_))
        ));
        assert!(matches!(
            "env:view:x".parse::<Authorization>(),
            Err(AuthorizationError::UnexpectedResource(_))
        ));
        assert!(matches!(
            "env:edit".parse::<Authorization>(),
            Err(AuthorizationError::UnknownAction { .. })
        ));
        assert!(matches!(
            "db:view".parse::<Authorization>(),
            Err(AuthorizationError::UnknownType(_))
        ));
        for bad in [
            "",
            "env",
            ":view",
            "env:",
            "task:operate:a:b",
            "task:operate:Bad",
        ] {
            assert!(bad.parse::<Authorization>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scope_sets_serialize_as_lists_of_scope_strings() {
        let s = ScopeSet::parse("env:view task:operate:a").unwrap();
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"["task:operate:a","env:view"]"#
        );
    }

    #[test]
    fn scope_sets_format_canonically() {
        let s = ScopeSet::parse("task:operate:b  env:view task:operate:a env:view").unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s.to_string(), "task:operate:a task:operate:b env:view");
        assert!(ScopeSet::parse("").unwrap().is_empty());
    }

    fn any_authorization() -> impl Strategy<Value = Authorization> {
        prop_oneof![
            Just(Authorization::EnvView),
            "[a-z0-9][a-z0-9_-]{0,63}"
                .prop_map(|n| Authorization::TaskOperate(Name::parse(&n).unwrap())),
        ]
    }

    proptest! {
        #[test]
        fn authorization_round_trips(a in any_authorization()) {
            prop_assert_eq!(a.to_string().parse::<Authorization>(), Ok(a));
        }

        #[test]
        fn scope_set_round_trips(v in proptest::collection::vec(any_authorization(), 0..8)) {
            let set: ScopeSet = v.into_iter().collect();
            prop_assert_eq!(ScopeSet::parse(&set.to_string()), Ok(set));
        }

        #[test]
        fn a_set_covers_exactly_its_members(
            v in proptest::collection::vec(any_authorization(), 0..8),
            probe in any_authorization(),
        ) {
            let set: ScopeSet = v.iter().cloned().collect();
            prop_assert_eq!(set.covers(&probe), v.contains(&probe));
            let single: ScopeSet = std::iter::once(probe.clone()).collect();
            prop_assert_eq!(single.is_subset(&set), set.covers(&probe));
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(s in "\\PC{0,80}") {
            let _ = ScopeSet::parse(&s);
            let _ = s.parse::<Authorization>();
        }
    }
}
