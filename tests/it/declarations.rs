//! One test per declaration rule (DESIGN §3): each broken rule is reported
//! with the file, the path inside it and the rule.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should panic loudly

use std::path::Path;

use authproxy_core::declarations::{Declarations, DeclarationsError};

fn problems(yaml: &str) -> Vec<String> {
    match Declarations::parse(yaml, Path::new("project.yaml")) {
        Err(DeclarationsError::Invalid { problems, .. }) => {
            problems.iter().map(ToString::to_string).collect()
        }
        other => panic!("expected problems, got {other:?}"),
    }
}

fn one_problem(yaml: &str) -> String {
    let p = problems(yaml);
    assert_eq!(p.len(), 1, "{p:#?}");
    p.into_iter().next().unwrap()
}

fn auths(d: &Declarations, id: &str) -> String {
    d.get(&id.parse().unwrap())
        .unwrap()
        .authorizations
        .to_string()
}

const TASKS: &str = "tasks:\n  notify: {}\n";

#[test]
fn a_worker_without_the_key_inherits_and_with_it_overrides() {
    let d = Declarations::parse(
        &format!(
            "applications:\n  web:\n    authorizations: [{{type: env, action: view}}]\n    workers:\n      a: {{}}\n      b: ~\n      c: {{authorizations: []}}\n      d: {{authorizations: [{{type: task, action: operate, resource: notify}}]}}\n{TASKS}"
        ),
        Path::new("p.yaml"),
    )
    .unwrap();
    assert_eq!(auths(&d, "worker/web/a"), "env:view");
    assert_eq!(auths(&d, "worker/web/b"), "env:view");
    assert_eq!(auths(&d, "worker/web/c"), "");
    assert_eq!(auths(&d, "worker/web/d"), "task:operate:notify");
    assert_eq!(
        d.get(&"worker/web/a".parse().unwrap())
            .unwrap()
            .inherited_from,
        Some("app/web".parse().unwrap())
    );
}

#[test]
fn a_cron_may_not_declare_authorizations() {
    let p = one_problem(
        "applications:\n  web:\n    crons:\n      nightly: { spec: \"0 3 * * *\", authorizations: [] }\n",
    );
    assert!(
        p.starts_with("applications.web.crons.nightly.authorizations: "),
        "{p}"
    );
    assert!(p.contains("always inherits app/web"), "{p}");
}

#[test]
fn a_task_resource_must_name_a_declared_task() {
    let p = one_problem(&format!(
        "applications:\n  web:\n    authorizations:\n      - {{ type: task, action: operate, resource: nope }}\n{TASKS}"
    ));
    assert!(
        p.starts_with("applications.web.authorizations[0].resource: "),
        "{p}"
    );
    assert!(p.contains("`nope` is not a task declared"), "{p}");
}

#[test]
fn a_task_may_name_itself_or_another_task() {
    let d = Declarations::parse(
        "tasks:\n  a: { authorizations: [{type: task, action: operate, resource: b}, {type: task, action: operate, resource: a}] }\n  b: {}\n",
        Path::new("p.yaml"),
    )
    .unwrap();
    assert_eq!(auths(&d, "task/a"), "task:operate:a task:operate:b");
}

#[test]
fn an_unknown_key_in_an_authorization_is_an_error() {
    let p = one_problem(
        "applications:\n  web:\n    authorizations:\n      - { type: env, action: view, resorce: x }\n",
    );
    assert!(
        p.starts_with("applications.web.authorizations[0]: unknown key `resorce`"),
        "{p}"
    );
}

#[test]
fn combinations_outside_the_catalogue_are_errors() {
    let cases = [
        (
            "{ type: env, action: edit }",
            "action `edit` does not exist for type `env`",
        ),
        ("{ type: db, action: view }", "unknown type `db`"),
        ("{ type: task, action: operate }", "needs a resource"),
        (
            "{ type: env, action: view, resource: x }",
            "takes no resource",
        ),
        (
            "{ type: task, action: view, resource: notify }",
            "does not exist for type `task`",
        ),
        ("{ action: view }", "missing required key `type`"),
        ("{ type: env }", "missing required key `action`"),
        ("{ type: env, action: 3 }", "expected a string"),
        ("env:view", "expected an authorization"),
    ];
    for (entry, expected) in cases {
        let p = one_problem(&format!(
            "applications:\n  web:\n    authorizations:\n      - {entry}\n{TASKS}"
        ));
        assert!(
            p.starts_with("applications.web.authorizations[0]"),
            "{entry}: {p}"
        );
        assert!(p.contains(expected), "{entry}: {p}");
    }
}

#[test]
fn names_must_follow_the_pattern() {
    for (yaml, path) in [
        ("applications:\n  Web: {}\n", "applications.Web"),
        (
            "applications:\n  web:\n    workers:\n      \"my worker\": {}\n",
            "applications.web.workers.my worker",
        ),
        (
            "applications:\n  web:\n    crons:\n      -x: {}\n",
            "applications.web.crons.-x",
        ),
        ("tasks:\n  send_report!: {}\n", "tasks.send_report!"),
    ] {
        let p = one_problem(yaml);
        assert!(p.starts_with(&format!("{path}: ")), "{p}");
        assert!(p.contains("not a valid name"), "{p}");
    }
}

#[test]
fn authorizations_must_be_a_list_without_duplicates() {
    let p = one_problem("applications:\n  web:\n    authorizations: { type: env, action: view }\n");
    assert!(
        p.starts_with("applications.web.authorizations: expected a list"),
        "{p}"
    );
    let p = one_problem(
        "applications:\n  web:\n    authorizations:\n      - { type: env, action: view }\n      - { type: env, action: view }\n",
    );
    assert!(
        p.starts_with("applications.web.authorizations[1]: duplicate"),
        "{p}"
    );
}

#[test]
fn sections_of_the_wrong_shape_are_errors() {
    let p = one_problem("applications: [web]\n");
    assert!(p.starts_with("applications: expected a mapping"), "{p}");
    let p = one_problem("applications:\n  web:\n    workers: [queue]\n");
    assert!(
        p.starts_with("applications.web.workers: expected a mapping"),
        "{p}"
    );
}

#[test]
fn every_problem_in_a_file_is_reported_together() {
    let p = problems(
        "applications:\n  web:\n    authorizations:\n      - { type: env, action: view, extra: 1 }\n    crons:\n      a: { authorizations: [] }\n      b: { authorizations: [] }\ntasks:\n  t: { authorizations: [{ type: task, action: operate, resource: missing }] }\n",
    );
    assert_eq!(p.len(), 4, "{p:#?}");
}

#[test]
fn errors_name_the_file() {
    let e =
        Declarations::parse("applications: { Web: {} }", Path::new("config/x.yaml")).unwrap_err();
    assert!(
        e.to_string().starts_with("config/x.yaml: 1 problem(s)"),
        "{e}"
    );
    let e = Declarations::load(Path::new("/nonexistent/p.yaml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/p.yaml: cannot read"),
        "{e}"
    );
}

#[test]
fn yaml_duplicate_keys_are_refused() {
    let e = Declarations::parse("tasks:\n  a: {}\n  a: {}\n", Path::new("p.yaml")).unwrap_err();
    assert!(matches!(e, DeclarationsError::Syntax { .. }), "{e}");
}

/// #11 item 15a: a name that breaks the pattern is reported, and the body
/// under it is still checked, with the name as written in the paths.
#[test]
fn an_invalid_name_does_not_hide_the_problems_under_it() {
    let mut p: Vec<String> = problems(
        "applications:\n  Web:\n    authorizations: [{ type: env, action: edit }]\n    workers:\n      Q: { authorizations: [{ type: env, action: view, x: 1 }] }\n    crons:\n      n: { authorizations: [] }\ntasks:\n  T!: { authorizations: [{ type: db, action: view }] }\n",
    )
    .iter()
    .map(|p| p.split(": ").next().unwrap().to_owned())
    .collect();
    p.sort();
    assert_eq!(
        p,
        [
            "applications.Web",
            "applications.Web.authorizations[0]",
            "applications.Web.crons.n.authorizations",
            "applications.Web.workers.Q",
            "applications.Web.workers.Q.authorizations[0]",
            "tasks.T!",
            "tasks.T!.authorizations[0]",
        ]
    );
}

/// #11 item 15b: a misspelt key at a level authproxy reads is an error
/// (a worker's misspelt `authorizations` would silently inherit the
/// app's instead of overriding them), with the likely intended key.
#[test]
fn misspelt_keys_are_reported_with_a_suggestion() {
    for (yaml, path, suggestion) in [
        ("application:\n  web: {}\n", "application", "applications"),
        ("task:\n  t: {}\n", "task", "tasks"),
        (
            "applications:\n  web:\n    authorization: []\n",
            "applications.web.authorization",
            "authorizations",
        ),
        (
            "applications:\n  web:\n    worker:\n      q: {}\n",
            "applications.web.worker",
            "workers",
        ),
        (
            "applications:\n  web:\n    cron:\n      n: {}\n",
            "applications.web.cron",
            "crons",
        ),
        (
            "applications:\n  web:\n    workers:\n      q: { authorisations: [] }\n",
            "applications.web.workers.q.authorisations",
            "authorizations",
        ),
        (
            "tasks:\n  t:\n    Authorizations: []\n",
            "tasks.t.Authorizations",
            "authorizations",
        ),
        (
            "applications:\n  web:\n    authorizations:\n      - { type: env, action: view, resorce: x }\n",
            "applications.web.authorizations[0]",
            "resource",
        ),
    ] {
        let p = one_problem(yaml);
        assert!(p.starts_with(&format!("{path}: unknown key")), "{p}");
        assert!(p.contains(&format!("did you mean `{suggestion}`?")), "{p}");
    }
}

/// #11 item 15b: every level authproxy reads reports unknown keys; a cron
/// keeps its platform keys (`spec`, `cmd`, …), which authproxy never reads.
#[test]
fn unknown_keys_are_errors_except_inside_a_cron() {
    let p = problems(
        "name: x\napplications:\n  web:\n    size: L\n    crons:\n      n: { spec: \"0 3 * * *\", cmd: ./x, shutdown_timeout: 5 }\n    workers:\n      q: { commands: x }\ntasks:\n  t: { timeout: 5 }\n",
    );
    assert_eq!(
        p,
        [
            "name: unknown key `name` (allowed here: applications, tasks)",
            "applications.web.size: unknown key `size` (allowed here: authorizations, workers, crons, identity)",
            "applications.web.workers.q.commands: unknown key `commands` (allowed here: authorizations, identity)",
            "tasks.t.timeout: unknown key `timeout` (allowed here: authorizations, identity)",
        ]
    );
}
