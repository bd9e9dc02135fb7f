//! Who a token is for: workload ids (`app/web`, `worker/web/queue`,
//! `task/send-report`) and environment names.

use std::fmt;
use std::str::FromStr;

use crate::authorization::{AuthorizationError, Name};
use crate::pat::{PAT_SUBJECT_PREFIX, PatName};

/// The identity of one container kind of a project (DESIGN §3).
///
/// Crons have no workload of their own: they run in their app's container
/// and use its sidecar, so there is no `Cron` variant on purpose.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkloadId {
    /// `app/NAME`
    App(Name),
    /// `worker/APP/NAME`
    Worker(Name, Name),
    /// `task/NAME`
    Task(Name),
}

/// A workload id string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a workload id (expected app/NAME, worker/APP/NAME or task/NAME)")]
pub struct InvalidWorkloadId(pub String);

impl fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::App(n) => write!(f, "app/{n}"),
            Self::Worker(a, n) => write!(f, "worker/{a}/{n}"),
            Self::Task(n) => write!(f, "task/{n}"),
        }
    }
}

impl FromStr for WorkloadId {
    type Err = InvalidWorkloadId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidWorkloadId(s.to_owned());
        let name = |p: &str| Name::parse(p).map_err(|_| bad());
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            ["app", n] => Ok(Self::App(name(n)?)),
            ["worker", a, n] => Ok(Self::Worker(name(a)?, name(n)?)),
            ["task", n] => Ok(Self::Task(name(n)?)),
            _ => Err(bad()),
        }
    }
}

/// Who a grant or a token speaks for: a workload, or — for a token
/// exchanged from a personal access token — that PAT (`pat:<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A workload of the project.
    Workload(WorkloadId),
    /// A personal access token, by name.
    Pat(PatName),
}

impl Subject {
    /// The workload, when it is one.
    pub fn workload(&self) -> Option<&WorkloadId> {
        match self {
            Self::Workload(w) => Some(w),
            Self::Pat(_) => None,
        }
    }

    /// The PAT name, when it is one.
    pub fn pat(&self) -> Option<&PatName> {
        match self {
            Self::Pat(p) => Some(p),
            Self::Workload(_) => None,
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Workload(w) => w.fmt(f),
            Self::Pat(p) => write!(f, "{PAT_SUBJECT_PREFIX}{p}"),
        }
    }
}

impl FromStr for Subject {
    type Err = InvalidWorkloadId;
    /// `pat:<name>` or a workload id.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix(PAT_SUBJECT_PREFIX) {
            Some(name) => PatName::parse(name)
                .map(Self::Pat)
                .map_err(|_| InvalidWorkloadId(s.to_owned())),
            None => s.parse().map(Self::Workload),
        }
    }
}

impl PartialEq<WorkloadId> for Subject {
    fn eq(&self, other: &WorkloadId) -> bool {
        self.workload() == Some(other)
    }
}

/// An environment name (`main`, `staging`, `pr-42`): same rule as [`Name`].
///
/// A token minted in one environment never verifies in another, so this is
/// compared exactly everywhere.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Environment(Name);

impl Environment {
    /// Parses an environment name.
    pub fn parse(s: &str) -> Result<Self, AuthorizationError> {
        Name::parse(s).map(Self)
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_ids_round_trip() {
        for s in ["app/web", "worker/web/queue", "task/send-report"] {
            assert_eq!(s.parse::<WorkloadId>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn malformed_workload_ids_are_refused() {
        for s in [
            "",
            "app",
            "app/",
            "app/Web",
            "cron/web/x",
            "worker/web",
            "task/a/b",
            "app/web/",
        ] {
            assert!(s.parse::<WorkloadId>().is_err(), "{s:?}");
        }
    }
}
