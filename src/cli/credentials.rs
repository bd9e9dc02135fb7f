//! `authproxy issuer credentials list|rotate` and `authproxy issuer tasks
//! list|show|cancel` (DESIGN §10): clients of the issuer's
//! `/v1/credentials…` routes with the admin token, always built (they need
//! nothing of the issuer but HTTP).
//!
//! Exit statuses: 0 success; 1 the issuer refused (unknown credential or
//! task: 404; a final task cannot be cancelled: 409) or cannot be reached;
//! 64 the admin token file cannot be used.

use std::process::ExitCode;

use serde_json::Value;

use super::admin::{OutputFormat, Target, columns};

/// What a verb asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    /// `credentials list`
    ListCredentials,
    /// `credentials rotate --credential ID`
    Rotate {
        /// The credential.
        credential: String,
    },
    /// `tasks list --credential ID`
    ListTasks {
        /// The credential.
        credential: String,
    },
    /// `tasks show --credential ID --task ID`
    ShowTask {
        /// The credential.
        credential: String,
        /// The task.
        task: String,
    },
    /// `tasks cancel --credential ID --task ID`
    CancelTask {
        /// The credential.
        credential: String,
        /// The task.
        task: String,
    },
}

impl Verb {
    fn request(&self) -> (reqwest::Method, String) {
        let seg = |s: &str| {
            // Ids are URL-safe by construction; anything else is escaped
            // rather than allowed to change the path.
            s.bytes()
                .map(|b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        };
        match self {
            Self::ListCredentials => (reqwest::Method::GET, "/v1/credentials".into()),
            Self::Rotate { credential } => (
                reqwest::Method::POST,
                format!("/v1/credentials/{}/rotate", seg(credential)),
            ),
            Self::ListTasks { credential } => (
                reqwest::Method::GET,
                format!("/v1/credentials/{}/tasks", seg(credential)),
            ),
            Self::ShowTask { credential, task } => (
                reqwest::Method::GET,
                format!("/v1/credentials/{}/tasks/{}", seg(credential), seg(task)),
            ),
            Self::CancelTask { credential, task } => (
                reqwest::Method::DELETE,
                format!("/v1/credentials/{}/tasks/{}", seg(credential), seg(task)),
            ),
        }
    }
}

/// Runs `verb` against the issuer (the shared management client:
/// [`super::admin`]) and prints its answer.
pub fn run(target: &Target, verb: &Verb) -> ExitCode {
    let (method, path) = verb.request();
    let body = match super::admin::run(target, |admin| async move {
        admin.send(method, &path, None).await.map(|(_, body)| body)
    }) {
        Ok(b) => b,
        Err(code) => return code,
    };
    match target.format {
        OutputFormat::Json => println!("{body}"),
        OutputFormat::Table => print!("{}", table(verb, &body)),
    }
    ExitCode::SUCCESS
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn task_rows(tasks: &[Value]) -> String {
    let mut rows = vec![
        [
            "TASK", "TYPE", "STATUS", "TRIGGER", "VERSION", "CREATED", "UPDATED", "ERRORS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for t in tasks {
        let errors = t["errors"]
            .as_array()
            .map(|e| {
                e.iter()
                    .map(|e| s(&e["code"]))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "-".into());
        rows.push(vec![
            s(&t["id"]),
            s(&t["type"]),
            s(&t["status"]),
            s(&t["trigger"]),
            s(&t["version"]),
            s(&t["created_at"]),
            s(&t["updated_at"]),
            errors,
        ]);
    }
    columns(&rows)
}

fn task_detail(t: &Value) -> String {
    let mut out = String::new();
    for key in [
        "id",
        "credential_id",
        "type",
        "status",
        "trigger",
        "version",
        "attempts",
        "created_at",
        "updated_at",
        "run_at",
    ] {
        out.push_str(&format!("{key:<14} {}\n", s(&t[key])));
    }
    match t["errors"].as_array() {
        Some(errors) if !errors.is_empty() => {
            out.push_str("errors\n");
            for e in errors {
                out.push_str(&format!("  {}: {}\n", s(&e["code"]), s(&e["description"])));
            }
        }
        _ => out.push_str("errors         -\n"),
    }
    out
}

/// The answer as a table.
fn table(verb: &Verb, body: &Value) -> String {
    match verb {
        Verb::ListCredentials => {
            let mut rows = vec![
                [
                    "CREDENTIAL",
                    "KIND",
                    "NAME",
                    "VERSION",
                    "STATE",
                    "CREATED",
                    "RETIRES",
                    "EXPIRES",
                ]
                .map(String::from)
                .to_vec(),
            ];
            for c in body["credentials"].as_array().into_iter().flatten() {
                let name = match c["environment"].as_str() {
                    Some(env) => format!("{} ({env})", s(&c["name"])),
                    None => s(&c["name"]),
                };
                let versions = c["versions"].as_array().cloned().unwrap_or_default();
                if versions.is_empty() {
                    rows.push(vec![s(&c["id"]), s(&c["kind"]), name.clone()]);
                }
                for (i, v) in versions.iter().enumerate() {
                    let (id, kind, name) = if i == 0 {
                        (s(&c["id"]), s(&c["kind"]), name.clone())
                    } else {
                        (String::new(), String::new(), String::new())
                    };
                    rows.push(vec![
                        id,
                        kind,
                        name,
                        s(&v["version"]),
                        s(&v["state"]),
                        s(&v["created_at"]),
                        s(&v["retires_at"]),
                        s(&v["expires_at"]),
                    ]);
                }
            }
            columns(&rows)
        }
        Verb::ListTasks { .. } => task_rows(body["tasks"].as_array().map_or(&[], Vec::as_slice)),
        Verb::Rotate { .. } => format!("rotation queued\n{}", task_detail(body)),
        Verb::ShowTask { .. } => task_detail(body),
        Verb::CancelTask { .. } => format!("cancelled\n{}", task_detail(body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_escape_what_an_id_cannot_hold() {
        let v = Verb::ShowTask {
            credential: "wc.main.app.web".into(),
            task: "../x".into(),
        };
        assert_eq!(
            v.request().1,
            "/v1/credentials/wc.main.app.web/tasks/..%2Fx"
        );
    }

    #[test]
    fn the_credential_table_has_a_line_per_version() {
        let body = json!({"credentials": [{
        "id": "rk.n1", "kind": "root_key", "name": "n1", "node": "n1",
        "versions": [
            {"version": 1, "state": "retiring", "created_at": "2025-01-01T00:00:00Z",
             "retires_at": "2025-01-31T00:00:00Z", "expires_at": null},
            {"version": 2, "state": "active", "created_at": "2025-01-30T23:50:00Z",
             "retires_at": null, "expires_at": null}
        ]}]});
        let t = table(&Verb::ListCredentials, &body);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("CREDENTIAL  KIND"), "{t}");
        assert!(
            lines[1].starts_with("rk.n1       root_key  n1    1        retiring"),
            "{t}"
        );
        assert!(lines[2].trim_start().starts_with("2        active"), "{t}");
    }

    #[test]
    fn a_task_shows_its_errors() {
        let t = json!({"id": "t1", "credential_id": "wc.main.app.web", "type": "create_credentials",
            "status": "failed", "trigger": "manual_rotation", "version": 2, "attempts": 1,
            "created_at": "x", "updated_at": "y", "run_at": "z",
            "errors": [{"code": "cancelled", "description": "cancelled through the API"}]});
        let d = task_detail(&t);
        assert!(d.contains("status         failed\n"), "{d}");
        assert!(
            d.contains("  cancelled: cancelled through the API\n"),
            "{d}"
        );
    }
}
