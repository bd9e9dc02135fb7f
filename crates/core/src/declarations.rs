//! The project's declarations (DESIGN §3): which authorizations each app,
//! worker and task may hold, with the inheritance rules applied.
//!
//! The YAML is walked by hand rather than deserialized into structs so that
//! every problem in a file is reported at once, each with its path
//! (`applications.web.crons.nightly.authorizations`) — serde stops at the
//! first error and its paths are not the ones users write.
//!
//! Rules:
//! - a worker without an `authorizations` key inherits its app's; with one it
//!   overrides them (`[]` = none);
//! - a cron runs in its app's container and always inherits: an
//!   `authorizations` key on a cron is an error;
//! - a `task:operate` resource must name a task declared in the same file;
//! - an app, worker or task may name the platform issuer's identity it
//!   reuses with `identity: <workload id>` (DESIGN §8); a cron may not, it
//!   runs under its app's identity;
//! - a name that breaks the pattern is an error, and what is declared under
//!   it is still checked (paths show the name as written), so one bad name
//!   does not hide the problems below it.
//!
//! Unknown keys: at every level authproxy reads — the top level, an
//! application, a worker, a task, an authorization entry — a key it does
//! not know is an error, with a "did you mean" when one is close. A typo
//! there is never harmless: a worker's misspelt `authorizations` would
//! silently inherit its app's authorizations instead of overriding them,
//! and a misspelt `applications` would declare nothing. This was a choice
//! (#11): the file is authproxy's declarations, and platform keys such as
//! an app's `type` or `size` do not belong in it. The one exception is the
//! body of a cron, which carries the platform's scheduling keys (`spec`,
//! `cmd`, `shutdown_timeout`, …); authproxy reads nothing there but checks
//! that `authorizations` is absent. `identity` (DESIGN §8: which platform
//! identity a workload reuses) is accepted on apps, workers and tasks; the
//! issuer's sync reads it ([`Declarations::identity`]), the sidecar does not.
//!
//! Limits: a file is at most [`MAX_FILE_BYTES`] (256 KiB) and nests at most
//! [`MAX_DEPTH`] (32) levels, both checked before the YAML parser runs: it
//! takes time quadratic in the depth of flow collections (80 KB of nested
//! `{a: …` took seconds; see `declarations/nesting.rs`). The sidecar also
//! reloads on its blocking pool, so a slow read never stalls its requests.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde_norway::{Mapping, Value};

use crate::authorization::{Authorization, Name, ScopeSet};
use crate::workload::WorkloadId;

mod nesting;

/// The keys authproxy reads at each level; anything else is an error.
const TOP_KEYS: &[&str] = &["applications", "tasks"];
const APP_KEYS: &[&str] = &["authorizations", "workers", "crons", "identity"];
const WORKER_KEYS: &[&str] = &["authorizations", "identity"];
const TASK_KEYS: &[&str] = &["authorizations", "identity"];
const AUTHORIZATION_KEYS: &[&str] = &["type", "action", "resource"];

/// The largest declarations file authproxy reads, in bytes (256 KiB: room
/// for well over a thousand workloads).
pub const MAX_FILE_BYTES: usize = 256 * 1024;

/// The deepest nesting of mappings and lists authproxy reads. Its own keys
/// nest seven deep (`applications.web.workers.queue.authorizations[0].type`);
/// the rest is headroom.
pub const MAX_DEPTH: usize = 32;

/// One broken rule, located by its path inside the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path, with `[i]` for list items.
    pub path: String,
    /// The rule broken, in words.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a declarations file could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeclarationsError {
    /// The file could not be read.
    #[error("{file}: cannot read declarations: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid YAML.
    #[error("{file}: not valid YAML: {message}")]
    Syntax {
        /// The file.
        file: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error("{file}: larger than {} KiB, the most authproxy reads from a declarations file", limit / 1024)]
    TooLarge {
        /// The file.
        file: PathBuf,
        /// The limit in bytes.
        limit: usize,
    },
    /// Mappings and lists nest deeper than [`MAX_DEPTH`].
    #[error("{file}: {at}: nested deeper than {limit} levels, the most authproxy reads")]
    TooDeep {
        /// The file.
        file: PathBuf,
        /// Where: `line N`, or the path of the first value too deep.
        at: String,
        /// The limit.
        limit: usize,
    },
    /// The file is YAML but breaks one or more rules; all are listed.
    #[error("{file}: {} problem(s) in declarations:{}", problems.len(), ProblemList(problems))]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in self.0 {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

/// The effective authorizations of one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    /// What the workload may be granted.
    pub authorizations: ScopeSet,
    /// The workload these were inherited from, if any.
    pub inherited_from: Option<WorkloadId>,
}

/// A validated declarations file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declarations {
    workloads: BTreeMap<WorkloadId, Effective>,
    crons: Vec<(Name, Name)>,
    identities: BTreeMap<WorkloadId, WorkloadId>,
}

impl Declarations {
    /// Reads and validates a declarations file. Reads at most one byte
    /// more than [`MAX_FILE_BYTES`], whatever the file is.
    pub fn load(path: &Path) -> Result<Self, DeclarationsError> {
        use std::io::Read as _;
        let read = |source| DeclarationsError::Read {
            file: path.to_owned(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(read)?
            .take(MAX_FILE_BYTES as u64 + 1)
            .read_to_string(&mut text)
            .map_err(read)?;
        Self::parse(&text, path)
    }

    /// Validates declarations given as text; `file` is used in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self, DeclarationsError> {
        let too_deep = |at: String| DeclarationsError::TooDeep {
            file: file.to_owned(),
            at,
            limit: MAX_DEPTH,
        };
        if text.len() > MAX_FILE_BYTES {
            return Err(DeclarationsError::TooLarge {
                file: file.to_owned(),
                limit: MAX_FILE_BYTES,
            });
        }
        // Flow nesting first, before the parser spends time on it.
        nesting::check(text, MAX_DEPTH).map_err(|line| too_deep(format!("line {line}")))?;
        let root: Value = serde_norway::from_str(text).map_err(|e| {
            // Block nesting past serde_norway's own limit (128) ends here.
            match e.location() {
                Some(at) if e.to_string().starts_with("recursion limit exceeded") => {
                    too_deep(format!("line {}", at.line()))
                }
                _ => DeclarationsError::Syntax {
                    file: file.to_owned(),
                    message: e.to_string(),
                },
            }
        })?;
        if let Some(path) = deeper_than(&root, MAX_DEPTH, "") {
            return Err(too_deep(path));
        }
        let mut walker = Walker::default();
        let decl = walker.root(&root);
        if walker.problems.is_empty() {
            Ok(decl)
        } else {
            Err(DeclarationsError::Invalid {
                file: file.to_owned(),
                problems: walker.problems,
            })
        }
    }

    /// The effective authorizations of a workload, or `None` if undeclared.
    pub fn get(&self, id: &WorkloadId) -> Option<&Effective> {
        self.workloads.get(id)
    }

    /// Every declared workload with its effective authorizations.
    pub fn workloads(&self) -> impl Iterator<Item = (&WorkloadId, &Effective)> {
        self.workloads.iter()
    }

    /// The identity a workload declares it reuses (`identity: app/web`), if
    /// any. Identities live in the platform issuer, named after the workload
    /// they were created for; without this key a workload has its own.
    pub fn identity(&self, id: &WorkloadId) -> Option<&WorkloadId> {
        self.identities.get(id)
    }

    /// Every cron as `(app, cron)`; a cron uses `app/<app>`'s authorizations.
    pub fn crons(&self) -> impl Iterator<Item = (&Name, &Name)> {
        self.crons.iter().map(|(a, c)| (a, c))
    }

    /// A human-readable table of every workload and cron, as `check` prints.
    pub fn table(&self) -> String {
        let mut rows = vec![(
            "WORKLOAD".to_owned(),
            "INHERITS FROM".to_owned(),
            "AUTHORIZATIONS".to_owned(),
        )];
        let show = |s: &ScopeSet| {
            if s.is_empty() {
                "(none)".to_owned()
            } else {
                s.to_string()
            }
        };
        for (id, eff) in &self.workloads {
            let from = eff
                .inherited_from
                .as_ref()
                .map_or_else(|| "-".to_owned(), ToString::to_string);
            rows.push((id.to_string(), from, show(&eff.authorizations)));
        }
        for (app, cron) in &self.crons {
            let app_id = WorkloadId::App(app.clone());
            let auths = self
                .workloads
                .get(&app_id)
                .map(|e| show(&e.authorizations))
                .unwrap_or_default();
            rows.push((format!("cron {app}/{cron}"), app_id.to_string(), auths));
        }
        let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(a, b, c)| format!("{a:<w0$}  {b:<w1$}  {c}\n"))
            .collect()
    }
}

/// Walks the YAML tree, collecting problems instead of stopping at the first.
#[derive(Default)]
struct Walker {
    problems: Vec<Problem>,
}

impl Walker {
    fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    /// A mapping, or `None` (with a problem recorded) if it is something else.
    /// A YAML null (`notify:` or `notify: ~`) counts as an empty mapping.
    fn mapping<'v>(&mut self, v: &'v Value, path: &str) -> Option<MappingView<'v>> {
        match v {
            Value::Mapping(m) => Some(MappingView(Some(m))),
            Value::Null => Some(MappingView(None)),
            _ => {
                self.problem(path, format!("expected a mapping, found {}", kind_of(v)));
                None
            }
        }
    }

    /// Reports every key of `m` that is not in `known`, at its own path.
    fn unknown_keys(&mut self, m: &MappingView<'_>, path: &str, known: &[&str]) {
        for (k, _) in m.iter() {
            let key = key_text(k);
            if !known.contains(&key.as_str()) {
                self.problem(&join(path, &key), unknown_key(&key, known));
            }
        }
    }

    /// The entries of a mapping whose keys must be names: each with its
    /// name (`None`, and a problem recorded, if the key is not a valid
    /// name), its body, and its path with the key as written.
    fn named_entries<'v>(&mut self, v: &'v Value, path: &str) -> Vec<Entry<'v>> {
        let Some(m) = self.mapping(v, path) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, body) in m.iter() {
            let key = match k {
                Value::String(s) => s.clone(),
                other => {
                    self.problem(
                        path,
                        format!("keys must be names, found {}", kind_of(other)),
                    );
                    continue;
                }
            };
            let entry_path = join(path, &key);
            let name = match Name::parse(&key) {
                Ok(n) => Some(n),
                Err(e) => {
                    self.problem(&entry_path, e.to_string());
                    None
                }
            };
            out.push(Entry {
                name,
                written: key,
                body,
                path: entry_path,
            });
        }
        out
    }

    fn root(&mut self, root: &Value) -> Declarations {
        let mut decl = Declarations {
            workloads: BTreeMap::new(),
            crons: Vec::new(),
            identities: BTreeMap::new(),
        };
        let Some(top) = self.mapping(root, "") else {
            return decl;
        };
        self.unknown_keys(&top, "", TOP_KEYS);
        // Task names first: resources anywhere in the file refer to them.
        let tasks = top
            .get("tasks")
            .map(|v| self.named_entries(v, "tasks"))
            .unwrap_or_default();
        let task_names: BTreeSet<Name> = tasks.iter().filter_map(|e| e.name.clone()).collect();

        if let Some(apps) = top.get("applications") {
            for app in self.named_entries(apps, "applications") {
                self.application(&mut decl, app, &task_names);
            }
        }
        for task in tasks {
            let Some(m) = self.mapping(task.body, &task.path) else {
                continue;
            };
            self.unknown_keys(&m, &task.path, TASK_KEYS);
            let auths = match m.get("authorizations") {
                Some(v) => self.authorizations(v, &join(&task.path, "authorizations"), &task_names),
                None => ScopeSet::new(),
            };
            if let Some(name) = task.name {
                let id = WorkloadId::Task(name);
                self.identity(&mut decl, &id, &m, &task.path);
                decl.workloads.insert(
                    id,
                    Effective {
                        authorizations: auths,
                        inherited_from: None,
                    },
                );
            }
        }
        decl
    }

    /// An application, its workers and its crons. Under an invalid app
    /// name everything is checked but nothing is declared.
    fn application(&mut self, decl: &mut Declarations, app: Entry<'_>, tasks: &BTreeSet<Name>) {
        let path = app.path.as_str();
        let Some(m) = self.mapping(app.body, path) else {
            return;
        };
        self.unknown_keys(&m, path, APP_KEYS);
        let app_auths = match m.get("authorizations") {
            Some(v) => self.authorizations(v, &join(path, "authorizations"), tasks),
            None => ScopeSet::new(),
        };
        let app_id = app.name.clone().map(WorkloadId::App);
        if let Some(workers) = m.get("workers") {
            for worker in self.named_entries(workers, &join(path, "workers")) {
                let Some(wm) = self.mapping(worker.body, &worker.path) else {
                    continue;
                };
                self.unknown_keys(&wm, &worker.path, WORKER_KEYS);
                let effective = match wm.get("authorizations") {
                    Some(v) => Effective {
                        authorizations: self.authorizations(
                            v,
                            &join(&worker.path, "authorizations"),
                            tasks,
                        ),
                        inherited_from: None,
                    },
                    None => Effective {
                        authorizations: app_auths.clone(),
                        inherited_from: app_id.clone(),
                    },
                };
                if let (Some(a), Some(w)) = (&app.name, worker.name) {
                    let id = WorkloadId::Worker(a.clone(), w);
                    self.identity(decl, &id, &wm, &worker.path);
                    decl.workloads.insert(id, effective);
                }
            }
        }
        if let Some(crons) = m.get("crons") {
            for cron in self.named_entries(crons, &join(path, "crons")) {
                let Some(cm) = self.mapping(cron.body, &cron.path) else {
                    continue;
                };
                // The rest of a cron's keys are the platform's.
                if cm.get("authorizations").is_some() {
                    self.problem(
                        &join(&cron.path, "authorizations"),
                        format!(
                            "a cron runs in its app's container and always inherits app/{}'s \
                             authorizations; remove this key (or declare them on the app)",
                            app.written
                        ),
                    );
                }
                if cm.get("identity").is_some() {
                    self.problem(
                        &join(&cron.path, "identity"),
                        format!(
                            "a cron runs in its app's container under app/{}'s identity; \
                             remove this key (or declare it on the app)",
                            app.written
                        ),
                    );
                }
                if let (Some(a), Some(c)) = (&app.name, cron.name) {
                    decl.crons.push((a.clone(), c));
                }
            }
        }
        if let Some(id) = app_id {
            self.identity(decl, &id, &m, path);
            decl.workloads.insert(
                id,
                Effective {
                    authorizations: app_auths,
                    inherited_from: None,
                },
            );
        }
    }

    /// Records the optional `identity` key of the workload `id`.
    fn identity(
        &mut self,
        decl: &mut Declarations,
        id: &WorkloadId,
        m: &MappingView<'_>,
        path: &str,
    ) {
        let Some(v) = m.get("identity") else {
            return;
        };
        let path = join(path, "identity");
        match v {
            Value::String(s) => match s.parse::<WorkloadId>() {
                Ok(identity) => {
                    decl.identities.insert(id.clone(), identity);
                }
                Err(e) => self.problem(
                    &path,
                    format!("{e}: an identity is named after the workload it was created for"),
                ),
            },
            other => self.problem(
                &path,
                format!(
                    "expected the name of an identity (a workload id such as app/web), found {}",
                    kind_of(other)
                ),
            ),
        }
    }

    fn authorizations(&mut self, v: &Value, path: &str, tasks: &BTreeSet<Name>) -> ScopeSet {
        let mut set = ScopeSet::new();
        let Value::Sequence(items) = v else {
            self.problem(
                path,
                format!("expected a list of authorizations, found {}", kind_of(v)),
            );
            return set;
        };
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{path}[{i}]");
            if let Some(a) = self.authorization(item, &ipath, tasks)
                && !set.insert(a.clone())
            {
                self.problem(&ipath, format!("duplicate authorization `{a}`"));
            }
        }
        set
    }

    fn authorization(
        &mut self,
        v: &Value,
        path: &str,
        tasks: &BTreeSet<Name>,
    ) -> Option<Authorization> {
        let Value::Mapping(m) = v else {
            self.problem(
                path,
                format!(
                    "expected an authorization {{ type, action, resource }}, found {}",
                    kind_of(v)
                ),
            );
            return None;
        };
        let mut ok = true;
        let mut field = |this: &mut Self, key: &str, required: bool| -> Option<String> {
            match m.get(key) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    this.problem(
                        &join(path, key),
                        format!("expected a string, found {}", kind_of(other)),
                    );
                    ok = false;
                    None
                }
                None if required => {
                    this.problem(path, format!("missing required key `{key}`"));
                    ok = false;
                    None
                }
                None => None,
            }
        };
        let kind = field(self, "type", true);
        let action = field(self, "action", true);
        let resource = field(self, "resource", false);
        for k in m.keys() {
            let key = key_text(k);
            if !AUTHORIZATION_KEYS.contains(&key.as_str()) {
                self.problem(path, unknown_key(&key, AUTHORIZATION_KEYS));
                ok = false;
            }
        }
        let (Some(kind), Some(action), true) = (kind, action, ok) else {
            return None;
        };
        match Authorization::from_parts(&kind, &action, resource.as_deref()) {
            Ok(a) => {
                if let Authorization::TaskOperate(t) = &a
                    && !tasks.contains(t)
                {
                    self.problem(
                        &join(path, "resource"),
                        format!("`{t}` is not a task declared under `tasks`"),
                    );
                    return None;
                }
                Some(a)
            }
            Err(e) => {
                self.problem(path, e.to_string());
                None
            }
        }
    }
}

/// One entry of a mapping keyed by names (an app, worker, cron or task).
struct Entry<'v> {
    /// The name, if the key is a valid one.
    name: Option<Name>,
    /// The key as written.
    written: String,
    body: &'v Value,
    /// Its path, with the key as written.
    path: String,
}

/// "unknown key `x` (did you mean `y`?)", or the keys allowed there.
fn unknown_key(key: &str, known: &[&str]) -> String {
    match crate::suggest::closest(key, known) {
        Some(k) => format!("unknown key `{key}` (did you mean `{k}`?)"),
        None => format!("unknown key `{key}` (allowed here: {})", known.join(", ")),
    }
}

/// A mapping key as a user would write it.
fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => "~".to_owned(),
        other => kind_of(other).to_owned(),
    }
}

/// A mapping, or the empty mapping that a YAML null stands for.
struct MappingView<'v>(Option<&'v Mapping>);

impl<'v> MappingView<'v> {
    fn get(&self, key: &str) -> Option<&'v Value> {
        self.0.and_then(|m| m.get(key))
    }

    fn iter(&self) -> impl Iterator<Item = (&'v Value, &'v Value)> {
        self.0.into_iter().flat_map(|m| m.iter())
    }
}

/// The path of the first collection nested deeper than `limit` inside `v`
/// (which is itself at depth 1 if a collection), if any.
fn deeper_than(v: &Value, limit: usize, path: &str) -> Option<String> {
    let children: Vec<(String, &Value)> = match v {
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| (format!("{path}[{i}]"), item))
            .collect(),
        Value::Mapping(m) => m
            .iter()
            .map(|(k, item)| (join(path, &key_text(k)), item))
            .collect(),
        Value::Tagged(t) => return deeper_than(&t.value, limit, path),
        _ => return None,
    };
    if limit == 0 {
        return Some(if path.is_empty() {
            "the top level".to_owned()
        } else {
            path.to_owned()
        });
    }
    children
        .into_iter()
        .find_map(|(child_path, child)| deeper_than(child, limit - 1, &child_path))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../config/project.yaml");

    fn parse(text: &str) -> Result<Declarations, DeclarationsError> {
        Declarations::parse(text, Path::new("project.yaml"))
    }

    fn problems(text: &str) -> Vec<Problem> {
        match parse(text) {
            Err(DeclarationsError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    fn scopes(d: &Declarations, id: &str) -> String {
        d.get(&id.parse().unwrap())
            .unwrap()
            .authorizations
            .to_string()
    }

    #[test]
    fn the_shipped_example_applies_the_inheritance_rules() {
        let d = parse(EXAMPLE).unwrap();
        assert_eq!(scopes(&d, "app/web"), "task:operate:send-report env:view");
        assert_eq!(
            scopes(&d, "worker/web/queue"),
            "task:operate:send-report env:view"
        );
        assert_eq!(scopes(&d, "worker/web/mailer"), "");
        assert_eq!(scopes(&d, "task/send-report"), "task:operate:notify");
        assert_eq!(scopes(&d, "task/notify"), "");
        assert_eq!(d.crons().count(), 1);
        assert!(d.table().contains("cron web/nightly"));
    }

    #[test]
    fn a_crons_platform_keys_are_left_alone() {
        let d = parse(
            "applications:\n  web:\n    crons:\n      n: { spec: \"0 3 * * *\", cmd: ./x, timeout: 5 }\n",
        )
        .unwrap();
        assert_eq!(d.crons().count(), 1);
    }

    #[test]
    fn an_empty_file_declares_nothing() {
        assert_eq!(parse("").unwrap().workloads().count(), 0);
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_path() {
        let p = problems(
            "applications:\n  web:\n    authorizations:\n      - { type: env, action: edit }\n    crons:\n      nightly: { authorizations: [] }\ntasks:\n  Bad: {}\n",
        );
        let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "tasks.Bad",
                "applications.web.authorizations[0]",
                "applications.web.crons.nightly.authorizations"
            ]
        );
    }

    /// A file over the size limit is refused before it is parsed.
    #[test]
    fn a_file_over_256_kib_is_refused_naming_the_limit() {
        let mut text = String::from("applications:\n");
        let mut i = 0;
        while text.len() < 300_000 {
            text.push_str(&format!("  app-{i}: {{}}\n"));
            i += 1;
        }
        let e = parse(&text).unwrap_err();
        assert!(
            matches!(
                e,
                DeclarationsError::TooLarge {
                    limit: MAX_FILE_BYTES,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().starts_with("project.yaml: "), "{e}");
        assert!(e.to_string().contains("256 KiB"), "{e}");
    }

    /// `load` stops reading past the limit, whatever the file is.
    #[test]
    fn load_reads_no_more_than_the_limit() {
        let e = Declarations::load(Path::new("/dev/zero")).unwrap_err();
        assert!(matches!(e, DeclarationsError::TooLarge { .. }), "{e}");
    }

    /// 10,000 levels of flow nesting, sequences and mappings: refused
    /// before the YAML parser sees them (its scanner is quadratic in the
    /// depth of flow collections).
    #[test]
    fn ten_thousand_levels_of_nesting_are_refused() {
        for text in [
            format!("applications: {}{}", "[".repeat(10_000), "]".repeat(10_000)),
            format!("tasks: {}{}", "{a: ".repeat(10_000), "}".repeat(10_000)),
        ] {
            let e = parse(&text).unwrap_err();
            assert!(
                matches!(&e, DeclarationsError::TooDeep { at, limit: 32, .. } if at == "line 1"),
                "{e}"
            );
            assert!(e.to_string().contains("nested deeper than 32"), "{e}");
        }
    }

    /// Block nesting is cheap to parse; past 32 levels it is refused with
    /// the path of the first value too deep, and past serde_norway's own
    /// limit (128) with the line.
    #[test]
    fn deep_block_nesting_is_refused() {
        let block = |levels: usize| -> String {
            (0..levels)
                .map(|i| format!("{}k:\n", " ".repeat(i)))
                .collect()
        };
        let e = parse(&block(40)).unwrap_err();
        let path = vec!["k"; 32].join(".");
        assert!(
            matches!(&e, DeclarationsError::TooDeep { at, .. } if *at == path),
            "{e}"
        );
        let e = parse(&block(200)).unwrap_err();
        assert!(
            matches!(&e, DeclarationsError::TooDeep { at, .. } if at.starts_with("line ")),
            "{e}"
        );
        // 32 levels are read (and `k` is then an unknown key).
        assert!(
            matches!(parse(&block(32)), Err(DeclarationsError::Invalid { .. })),
            "32 levels"
        );
    }

    #[test]
    fn a_workload_may_name_the_identity_it_reuses() {
        let d = parse(
            "applications:\n  site:\n    identity: app/web\n    workers:\n      q: { identity: worker/web/queue }\ntasks:\n  t: { identity: task/old }\n  u: {}\n",
        )
        .unwrap();
        let identity = |w: &str| d.identity(&w.parse().unwrap()).map(ToString::to_string);
        assert_eq!(identity("app/site").as_deref(), Some("app/web"));
        assert_eq!(
            identity("worker/site/q").as_deref(),
            Some("worker/web/queue")
        );
        assert_eq!(identity("task/t").as_deref(), Some("task/old"));
        assert_eq!(identity("task/u"), None);
    }

    #[test]
    fn a_malformed_identity_or_one_on_a_cron_is_a_problem() {
        let p = problems(
            "applications:\n  web:\n    identity: Web\n    crons:\n      nightly: { identity: app/web }\ntasks:\n  t: { identity: [x] }\n",
        );
        let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "applications.web.crons.nightly.identity",
                "applications.web.identity",
                "tasks.t.identity"
            ]
        );
    }

    #[test]
    fn a_syntax_error_names_the_file() {
        let e = parse("applications: [").unwrap_err();
        assert!(matches!(e, DeclarationsError::Syntax { .. }));
        assert!(e.to_string().starts_with("project.yaml: not valid YAML"));
    }
}
