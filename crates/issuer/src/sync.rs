//! Sync (DESIGN §8): what it takes to make an environment's identities and
//! workloads match the declarations. Pure — [`plan`] compares validated
//! declarations with a [`SyncState`] read from the store and returns the
//! plan to show and the changes to write — so every rule is unit-tested
//! without a database.
//!
//! Rules:
//! - every declared workload runs as one identity: its own (named after its
//!   workload id, created on first sync with a workload credential), or the
//!   existing one it names with `identity:` — which must exist in the
//!   environment (a removed identity may be taken back);
//! - an identity belongs to at most one declared workload, whose
//!   authorizations become its ceiling;
//! - a workload no longer declared is kept as removed and gets no grants;
//!   an identity no declared workload uses is kept as removed, with its
//!   credentials, so that a later `identity:` can take it back.

use std::collections::{BTreeMap, BTreeSet};

use authproxy_core::declarations::{Declarations, Problem};
use authproxy_core::{ScopeSet, WorkloadId};
use serde::Serialize;

use crate::store::{SyncChanges, SyncState};

/// What a sync does, workload by workload (the body of `POST /v1/sync`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Workloads that were not live before.
    pub created: Vec<PlanItem>,
    /// Live workloads whose ceiling or identity changes.
    pub updated: Vec<PlanItem>,
    /// Live workloads left as they are.
    pub unchanged: Vec<PlanItem>,
    /// Live workloads no longer declared.
    pub removed: Vec<PlanItem>,
}

impl Plan {
    /// True when the sync changes nothing.
    pub fn changes_nothing(&self) -> bool {
        self.created.is_empty() && self.updated.is_empty() && self.removed.is_empty()
    }
}

/// One workload in a [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanItem {
    /// The workload id.
    pub workload: String,
    /// The identity it runs as (after the sync; before it, for removed ones).
    pub identity: String,
    /// The identity it ran as, when the sync moves it to another one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_before: Option<String>,
    /// True when the sync creates the identity, and with it a credential.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub new_identity: bool,
    /// Its ceiling before the sync; `null` when it was not live.
    pub scopes_before: Option<ScopeSet>,
    /// Its ceiling after the sync; `null` when it is removed.
    pub scopes_after: Option<ScopeSet>,
}

/// A computed sync: the plan to show and the changes to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// What to show.
    pub plan: Plan,
    /// What to write; `new_credentials` is left for the caller to fill,
    /// one per entry of `create_identities`.
    pub changes: SyncChanges,
}

/// Plans the sync of `declarations` onto `state`, or lists every problem
/// that stops it (nothing is applied then).
pub fn plan(declarations: &Declarations, state: &SyncState) -> Result<Planned, Vec<Problem>> {
    let env = &state.environment;
    let mut problems = Vec::new();

    // Which identity each declared workload runs as.
    let mut desired: BTreeMap<&WorkloadId, (String, &ScopeSet)> = BTreeMap::new();
    let mut explicit: BTreeSet<&WorkloadId> = BTreeSet::new();
    for (workload, effective) in declarations.workloads() {
        let identity = match declarations.identity(workload) {
            Some(named) if named != workload => {
                let name = named.to_string();
                if !state.identities.contains_key(&name) {
                    problems.push(Problem {
                        path: identity_path(workload),
                        message: format!(
                            "workload `{workload}` names identity `{name}`, which does not exist \
                             in environment `{env}`; an identity is created by the first sync \
                             of its workload (remove `identity:` to give `{workload}` its own)"
                        ),
                    });
                    continue;
                }
                explicit.insert(workload);
                name
            }
            _ => workload.to_string(),
        };
        desired.insert(workload, (identity, &effective.authorizations));
    }

    // One declared workload per identity: its declarations set the ceiling.
    let mut claims: BTreeMap<&str, Vec<&WorkloadId>> = BTreeMap::new();
    for (workload, (identity, _)) in &desired {
        claims.entry(identity.as_str()).or_default().push(workload);
    }
    for (identity, workloads) in &claims {
        if workloads.len() < 2 {
            continue;
        }
        let all = workloads
            .iter()
            .map(|w| format!("`{w}`"))
            .collect::<Vec<_>>()
            .join(", ");
        for workload in workloads.iter().filter(|w| explicit.contains(**w)) {
            problems.push(Problem {
                path: identity_path(workload),
                message: format!(
                    "identity `{identity}` is claimed by more than one workload ({all}); an \
                     identity belongs to one workload (to move it, stop declaring the other)"
                ),
            });
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }

    let mut plan = Plan::default();
    let mut changes = SyncChanges {
        environment: env.clone(),
        expected_version: state.version,
        create_identities: Vec::new(),
        update_identities: Vec::new(),
        remove_identities: Vec::new(),
        link_workloads: Vec::new(),
        remove_workloads: Vec::new(),
        new_credentials: Vec::new(),
    };

    for (workload, (identity, ceiling)) in &desired {
        let before = state.workloads.get(*workload).filter(|r| !r.removed);
        let new_identity = match state.identities.get(identity) {
            None => {
                changes
                    .create_identities
                    .push((identity.clone(), (*ceiling).clone()));
                true
            }
            Some(record) => {
                if record.removed || &record.ceiling != *ceiling {
                    changes
                        .update_identities
                        .push((identity.clone(), (*ceiling).clone()));
                }
                false
            }
        };
        let moved = before.is_some_and(|b| &b.identity != identity);
        if before.is_none() || moved {
            changes
                .link_workloads
                .push(((*workload).clone(), identity.clone()));
        }
        let item = PlanItem {
            workload: workload.to_string(),
            identity: identity.clone(),
            identity_before: before.filter(|_| moved).map(|b| b.identity.clone()),
            new_identity,
            scopes_before: before.map(|b| b.ceiling.clone()),
            scopes_after: Some((*ceiling).clone()),
        };
        match before {
            None => plan.created.push(item),
            Some(b) if moved || &b.ceiling != *ceiling => plan.updated.push(item),
            Some(_) => plan.unchanged.push(item),
        }
    }

    for (workload, record) in &state.workloads {
        if record.removed || desired.contains_key(workload) {
            continue;
        }
        changes.remove_workloads.push(workload.clone());
        plan.removed.push(PlanItem {
            workload: workload.to_string(),
            identity: record.identity.clone(),
            identity_before: None,
            new_identity: false,
            scopes_before: Some(record.ceiling.clone()),
            scopes_after: None,
        });
    }
    for (name, record) in &state.identities {
        if !record.removed && !claims.contains_key(name.as_str()) {
            changes.remove_identities.push(name.clone());
        }
    }

    Ok(Planned { plan, changes })
}

/// Where a workload's `identity:` key is in the declarations.
fn identity_path(workload: &WorkloadId) -> String {
    match workload {
        WorkloadId::App(app) => format!("applications.{app}.identity"),
        WorkloadId::Worker(app, worker) => format!("applications.{app}.workers.{worker}.identity"),
        WorkloadId::Task(task) => format!("tasks.{task}.identity"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{IdentityRecord, WorkloadRecord};
    use authproxy_core::Environment;
    use std::path::Path;

    fn decl(yaml: &str) -> Declarations {
        Declarations::parse(yaml, Path::new("project.yaml")).unwrap()
    }

    fn scopes(s: &str) -> ScopeSet {
        ScopeSet::parse(s).unwrap()
    }

    fn empty() -> SyncState {
        SyncState {
            environment: Environment::parse("main").unwrap(),
            version: 0,
            identities: BTreeMap::new(),
            workloads: BTreeMap::new(),
        }
    }

    /// A state as a previous sync would have left it: each workload with
    /// its identity and ceiling; removed ones flagged.
    fn state(rows: &[(&str, &str, &str, bool)]) -> SyncState {
        let mut s = empty();
        s.version = 3;
        for (workload, identity, ceiling, removed) in rows {
            s.workloads.insert(
                workload.parse().unwrap(),
                WorkloadRecord {
                    workload: workload.parse().unwrap(),
                    identity: (*identity).to_owned(),
                    ceiling: scopes(ceiling),
                    removed: *removed,
                },
            );
            s.identities.insert(
                (*identity).to_owned(),
                IdentityRecord {
                    name: (*identity).to_owned(),
                    ceiling: scopes(ceiling),
                    removed: *removed,
                },
            );
        }
        s
    }

    fn names(items: &[PlanItem]) -> Vec<&str> {
        items.iter().map(|i| i.workload.as_str()).collect()
    }

    const TASKS: &str = "tasks:\n  report: {}\n  notify: {}\n";

    #[test]
    fn a_first_sync_creates_every_workload_with_its_own_identity() {
        let d = decl(&format!(
            "applications:\n  web:\n    authorizations: [{{ type: env, action: view }}]\n    workers:\n      queue: {{}}\n{TASKS}"
        ));
        let p = plan(&d, &empty()).unwrap();
        assert_eq!(
            names(&p.plan.created),
            ["app/web", "worker/web/queue", "task/notify", "task/report"]
        );
        assert!(p.plan.updated.is_empty() && p.plan.unchanged.is_empty());
        assert!(p.plan.removed.is_empty());
        let web = &p.plan.created[0];
        assert_eq!(web.identity, "app/web");
        assert!(web.new_identity);
        assert_eq!(web.scopes_before, None);
        assert_eq!(web.scopes_after, Some(scopes("env:view")));
        // The worker inherits its app's authorizations.
        assert_eq!(p.plan.created[1].scopes_after, Some(scopes("env:view")));
        assert_eq!(p.changes.create_identities.len(), 4);
        assert_eq!(p.changes.link_workloads.len(), 4);
        assert_eq!(p.changes.expected_version, 0);
        assert!(p.changes.new_credentials.is_empty(), "left to the caller");
    }

    #[test]
    fn a_second_identical_sync_changes_nothing() {
        let d = decl(&format!("applications:\n  web: {{}}\n{TASKS}"));
        let s = state(&[
            ("app/web", "app/web", "", false),
            ("task/report", "task/report", "", false),
            ("task/notify", "task/notify", "", false),
        ]);
        let p = plan(&d, &s).unwrap();
        assert_eq!(
            names(&p.plan.unchanged),
            ["app/web", "task/notify", "task/report"]
        );
        assert!(p.plan.changes_nothing());
        assert!(p.changes.is_empty());
        assert_eq!(p.changes.expected_version, 3);
    }

    #[test]
    fn a_changed_ceiling_is_an_update_from_before_to_after() {
        let d = decl(&format!(
            "applications:\n  web:\n    authorizations: [{{ type: task, action: operate, resource: report }}]\n{TASKS}"
        ));
        let s = state(&[
            ("app/web", "app/web", "env:view", false),
            ("task/report", "task/report", "", false),
            ("task/notify", "task/notify", "", false),
        ]);
        let p = plan(&d, &s).unwrap();
        assert_eq!(names(&p.plan.updated), ["app/web"]);
        let item = &p.plan.updated[0];
        assert_eq!(item.scopes_before, Some(scopes("env:view")));
        assert_eq!(item.scopes_after, Some(scopes("task:operate:report")));
        assert_eq!(item.identity_before, None);
        assert_eq!(
            p.changes.update_identities,
            [("app/web".to_owned(), scopes("task:operate:report"))]
        );
        assert!(p.changes.link_workloads.is_empty());
        assert!(p.changes.create_identities.is_empty());
    }

    #[test]
    fn an_undeclared_workload_is_removed_and_its_identity_too() {
        let d = decl("tasks:\n  report: {}\n");
        let s = state(&[
            ("app/web", "app/web", "env:view", false),
            ("task/report", "task/report", "", false),
            ("task/old", "task/old", "", true),
        ]);
        let p = plan(&d, &s).unwrap();
        assert_eq!(
            names(&p.plan.removed),
            ["app/web"],
            "already removed: not again"
        );
        let item = &p.plan.removed[0];
        assert_eq!(item.scopes_before, Some(scopes("env:view")));
        assert_eq!(item.scopes_after, None);
        assert_eq!(p.changes.remove_workloads, ["app/web".parse().unwrap()]);
        assert_eq!(p.changes.remove_identities, ["app/web"]);
    }

    #[test]
    fn a_removed_workload_declared_again_is_created_and_gets_its_identity_back() {
        let d = decl("tasks:\n  old: {}\n");
        let s = state(&[("task/old", "task/old", "", true)]);
        let p = plan(&d, &s).unwrap();
        assert_eq!(names(&p.plan.created), ["task/old"]);
        assert!(
            !p.plan.created[0].new_identity,
            "its credentials still work"
        );
        assert_eq!(
            p.changes.update_identities,
            [("task/old".to_owned(), scopes(""))]
        );
        assert_eq!(
            p.changes.link_workloads,
            [("task/old".parse().unwrap(), "task/old".to_owned())]
        );
    }

    #[test]
    fn a_renamed_workload_takes_over_the_old_identity() {
        let d = decl(
            "applications:\n  site:\n    identity: app/web\n    authorizations: [{ type: env, action: view }]\n",
        );
        let s = state(&[("app/web", "app/web", "", false)]);
        let p = plan(&d, &s).unwrap();
        assert_eq!(names(&p.plan.created), ["app/site"]);
        assert_eq!(p.plan.created[0].identity, "app/web");
        assert!(!p.plan.created[0].new_identity);
        assert_eq!(names(&p.plan.removed), ["app/web"]);
        assert!(p.changes.create_identities.is_empty());
        assert!(p.changes.remove_identities.is_empty(), "app/site uses it");
        assert_eq!(
            p.changes.update_identities,
            [("app/web".to_owned(), scopes("env:view"))]
        );
    }

    #[test]
    fn moving_a_live_workload_to_another_identity_is_an_update() {
        let d = decl("applications:\n  site:\n    identity: app/web\n");
        let s = state(&[
            ("app/site", "app/site", "", false),
            ("app/web", "app/web", "", true),
        ]);
        let p = plan(&d, &s).unwrap();
        assert_eq!(names(&p.plan.updated), ["app/site"]);
        let item = &p.plan.updated[0];
        assert_eq!(item.identity, "app/web");
        assert_eq!(item.identity_before.as_deref(), Some("app/site"));
        assert_eq!(p.changes.remove_identities, ["app/site"]);
        assert_eq!(
            p.changes.update_identities,
            [("app/web".to_owned(), scopes(""))]
        );
    }

    #[test]
    fn naming_your_own_identity_is_the_same_as_not_naming_one() {
        let d = decl("applications:\n  web:\n    identity: app/web\n");
        let p = plan(&d, &empty()).unwrap();
        assert_eq!(names(&p.plan.created), ["app/web"]);
        assert!(p.plan.created[0].new_identity);
    }

    #[test]
    fn an_unknown_identity_is_refused_naming_the_workload_and_the_identity() {
        let d = decl("applications:\n  site:\n    identity: app/nope\n");
        let problems = plan(&d, &empty()).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "applications.site.identity");
        let m = &problems[0].message;
        assert!(
            m.contains("`app/site`") && m.contains("`app/nope`") && m.contains("`main`"),
            "{m}"
        );
    }

    #[test]
    fn an_identity_claimed_by_two_workloads_is_refused() {
        let d = decl("applications:\n  web: {}\n  site:\n    identity: app/web\n");
        let s = state(&[("app/web", "app/web", "", false)]);
        let problems = plan(&d, &s).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "applications.site.identity");
        let m = &problems[0].message;
        assert!(m.contains("`app/site`, `app/web`"), "{m}");
    }

    #[test]
    fn identity_paths_follow_the_declarations() {
        assert_eq!(
            identity_path(&"worker/web/queue".parse().unwrap()),
            "applications.web.workers.queue.identity"
        );
        assert_eq!(
            identity_path(&"task/x".parse().unwrap()),
            "tasks.x.identity"
        );
    }
}
