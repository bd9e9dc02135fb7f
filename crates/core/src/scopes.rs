//! What a principal may do: exact authorizations plus, for personal access
//! tokens only, wildcards (DESIGN §9).
//!
//! Wildcards exist in one type, [`Scopes`], and coverage understands them
//! in one function, [`Wildcard::covers`]. Grants and access tokens carry a
//! [`ScopeSet`], which cannot hold a wildcard: declarations stay exact, and a
//! token exchanged from a PAT carries the wildcards already expanded.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::authorization::{Authorization, AuthorizationError, ScopeSet};

/// A scope pattern naming every authorization of a part of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Wildcard {
    /// `task:operate:*` — operate every task of the environment.
    TaskOperateAny,
    /// `task:*` — every action on every task.
    TaskAny,
    /// `env:*` — every action on the environment.
    EnvAny,
    /// `*` — everything in the catalogue.
    All,
}

impl Wildcard {
    /// The one place wildcards are understood: true when `authorization`
    /// is among the ones this wildcard names.
    pub fn covers(self, authorization: &Authorization) -> bool {
        match (self, authorization) {
            (Self::All, _) => true,
            (Self::TaskOperateAny | Self::TaskAny, Authorization::TaskOperate(_)) => true,
            (Self::EnvAny, Authorization::EnvView) => true,
            (Self::TaskOperateAny | Self::TaskAny, Authorization::EnvView)
            | (Self::EnvAny, Authorization::TaskOperate(_)) => false,
        }
    }

    /// The scope string (`task:operate:*`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TaskOperateAny => "task:operate:*",
            Self::TaskAny => "task:*",
            Self::EnvAny => "env:*",
            Self::All => "*",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "task:operate:*" => Some(Self::TaskOperateAny),
            "task:*" => Some(Self::TaskAny),
            "env:*" => Some(Self::EnvAny),
            "*" => Some(Self::All),
            _ => None,
        }
    }
}

impl fmt::Display for Wildcard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Exact authorizations and wildcards: what a verified principal may do.
///
/// An access token's scopes are exact (`Scopes::from(ScopeSet)` costs
/// nothing); a personal access token's may hold wildcards, expanded at check
/// time by [`Scopes::covers`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Scopes {
    exact: ScopeSet,
    wildcards: BTreeSet<Wildcard>,
}

impl Scopes {
    /// Parses a space-separated list of scope strings and wildcards
    /// (`task:operate:x env:* task:operate:*`). A `*` anywhere else, such as
    /// `task:operate:x*` or `env:view:*`, is refused.
    pub fn parse(s: &str) -> Result<Self, AuthorizationError> {
        let mut scopes = Self::default();
        for part in s.split(' ').filter(|p| !p.is_empty()) {
            match Wildcard::parse(part) {
                Some(w) => {
                    scopes.wildcards.insert(w);
                }
                None if part.contains('*') => {
                    return Err(AuthorizationError::Malformed(part.to_owned()));
                }
                None => {
                    scopes.exact.insert(Authorization::from_str(part)?);
                }
            }
        }
        Ok(scopes)
    }

    /// True when an exact member or a wildcard covers `required`.
    pub fn covers(&self, required: &Authorization) -> bool {
        self.exact.covers(required) || self.wildcards.iter().any(|w| w.covers(required))
    }

    /// True when every member of `set` is covered.
    pub fn covers_all(&self, set: &ScopeSet) -> bool {
        set.iter().all(|a| self.covers(a))
    }

    /// The exact authorizations.
    pub fn exact(&self) -> &ScopeSet {
        &self.exact
    }

    /// The wildcards (empty for anything but a personal access token).
    pub fn wildcards(&self) -> impl Iterator<Item = Wildcard> + '_ {
        self.wildcards.iter().copied()
    }

    /// True when it holds a wildcard.
    pub fn has_wildcards(&self) -> bool {
        !self.wildcards.is_empty()
    }

    /// True when it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcards.is_empty()
    }

    /// The members of `catalogue`, plus the exact members, that these
    /// scopes cover: what a token exchanged from a PAT may carry. Never a
    /// wildcard.
    pub fn expand(&self, catalogue: &ScopeSet) -> ScopeSet {
        catalogue
            .iter()
            .filter(|a| self.covers(a))
            .chain(self.exact.iter())
            .cloned()
            .collect()
    }
}

impl From<ScopeSet> for Scopes {
    fn from(exact: ScopeSet) -> Self {
        Self {
            exact,
            wildcards: BTreeSet::new(),
        }
    }
}

impl fmt::Display for Scopes {
    /// Exact members in canonical order, then wildcards.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.exact, f)?;
        for (i, w) in self.wildcards.iter().enumerate() {
            if i > 0 || !self.exact.is_empty() {
                f.write_str(" ")?;
            }
            f.write_str(w.as_str())?;
        }
        Ok(())
    }
}

impl serde::Serialize for Scopes {
    /// As a list of scope strings.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            self.exact
                .iter()
                .map(|a| a.to_string())
                .chain(self.wildcards.iter().map(|w| w.as_str().to_owned())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authorization::Name;
    use proptest::prelude::*;

    fn task(n: &str) -> Authorization {
        Authorization::TaskOperate(Name::parse(n).unwrap())
    }

    #[test]
    fn each_wildcard_covers_its_part_of_the_catalogue() {
        let cases = [
            ("task:operate:*", true, false),
            ("task:*", true, false),
            ("env:*", false, true),
            ("*", true, true),
        ];
        for (s, tasks, env) in cases {
            let scopes = Scopes::parse(s).unwrap();
            assert_eq!(scopes.covers(&task("send-report")), tasks, "{s}");
            assert_eq!(scopes.covers(&Authorization::EnvView), env, "{s}");
            assert_eq!(scopes.to_string(), s);
        }
    }

    #[test]
    fn a_star_anywhere_else_is_refused() {
        for bad in [
            "task:operate:x*",
            "task:operate:**",
            "env:view:*",
            "*:*",
            "task*",
            "**",
            "env:*:*",
            "task:op*",
        ] {
            assert!(Scopes::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn exact_scopes_stay_exact_and_cost_nothing_to_wrap() {
        let set = ScopeSet::parse("task:operate:a env:view").unwrap();
        let scopes = Scopes::from(set.clone());
        assert!(!scopes.has_wildcards());
        assert_eq!(scopes.to_string(), set.to_string());
        assert!(!scopes.covers(&task("b")));
    }

    #[test]
    fn expansion_never_yields_a_wildcard_and_keeps_exact_members() {
        let catalogue = ScopeSet::parse("task:operate:a task:operate:b env:view").unwrap();
        let pat = Scopes::parse("task:operate:* task:operate:zzz").unwrap();
        assert_eq!(
            pat.expand(&catalogue).to_string(),
            "task:operate:a task:operate:b task:operate:zzz"
        );
        assert_eq!(
            Scopes::parse("*").unwrap().expand(&catalogue),
            catalogue,
            "`*` is the whole catalogue"
        );
    }

    fn any_authorization() -> impl Strategy<Value = Authorization> {
        prop_oneof![
            Just(Authorization::EnvView),
            "[a-z0-9][a-z0-9_-]{0,8}".prop_map(|n| task(&n)),
        ]
    }

    fn any_wildcard() -> impl Strategy<Value = Wildcard> {
        prop_oneof![
            Just(Wildcard::TaskOperateAny),
            Just(Wildcard::TaskAny),
            Just(Wildcard::EnvAny),
            Just(Wildcard::All),
        ]
    }

    /// The specification, written independently of `Wildcard::covers`:
    /// a wildcard `type:*` or `type:action:*` matches by string prefix.
    fn spec_covers(pattern: &str, a: &Authorization) -> bool {
        let s = a.to_string();
        match pattern.strip_suffix('*') {
            Some(prefix) => s.starts_with(prefix),
            None => pattern == s,
        }
    }

    proptest! {
        #[test]
        fn coverage_matches_the_prefix_specification(
            exact in proptest::collection::vec(any_authorization(), 0..5),
            wild in proptest::collection::vec(any_wildcard(), 0..3),
            probe in any_authorization(),
        ) {
            let text: Vec<String> = exact.iter().map(ToString::to_string)
                .chain(wild.iter().map(|w| w.as_str().to_owned())).collect();
            let scopes = Scopes::parse(&text.join(" ")).unwrap();
            let expected = text.iter().any(|p| spec_covers(p, &probe));
            prop_assert_eq!(scopes.covers(&probe), expected);
        }

        #[test]
        fn scopes_round_trip_through_their_string(
            exact in proptest::collection::vec(any_authorization(), 0..5),
            wild in proptest::collection::vec(any_wildcard(), 0..3),
        ) {
            let text: Vec<String> = exact.iter().map(ToString::to_string)
                .chain(wild.iter().map(|w| w.as_str().to_owned())).collect();
            let scopes = Scopes::parse(&text.join(" ")).unwrap();
            prop_assert_eq!(Scopes::parse(&scopes.to_string()).unwrap(), scopes);
        }

        #[test]
        fn expansion_is_covered_and_wildcard_free(
            wild in proptest::collection::vec(any_wildcard(), 0..3),
            catalogue in proptest::collection::vec(any_authorization(), 0..8),
        ) {
            let text: Vec<&str> = wild.iter().map(|w| w.as_str()).collect();
            let scopes = Scopes::parse(&text.join(" ")).unwrap();
            let catalogue: ScopeSet = catalogue.into_iter().collect();
            let expanded = scopes.expand(&catalogue);
            prop_assert!(scopes.covers_all(&expanded));
            prop_assert!(expanded.is_subset(&catalogue));
            for a in catalogue.iter() {
                prop_assert_eq!(expanded.covers(a), scopes.covers(a));
            }
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(s in "\\PC{0,80}") {
            let _ = Scopes::parse(&s);
        }
    }
}
