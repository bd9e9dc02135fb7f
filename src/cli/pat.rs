//! `authproxy pat create|update|show|list|delete` (DESIGN §9): personal
//! access tokens on an issuer, through its management API.
//!
//! The value is printed once, by `create` and `update`: alone on standard
//! output (so `VALUE=$(authproxy pat create …)` captures it), with a
//! one-line note on standard error; `show` and `list` never print it.
//!
//! Exit statuses: 0 done; 1 the issuer refused (its `error_description`
//! is printed) or could not be reached; 64 the arguments are wrong on
//! their face (a malformed name or scope, zero minutes) or the admin token
//! file cannot be used.

use std::process::ExitCode;

use authproxy_core::Scopes;
use authproxy_core::clock;
use authproxy_core::pat::PatName;
use reqwest::Method;
use serde_json::{Value, json};

use super::admin::{self, OutputFormat, Target, columns};
use super::usage_error;

/// How close an expiry must be for `show` and `list` to point it out.
const EXPIRY_WARNING_SECS: u64 = 7 * 24 * 3600;

/// `pat create`.
pub fn create(
    target: &Target,
    name: &str,
    environment: &str,
    valid_minutes: u64,
    scopes: &[String],
) -> ExitCode {
    let checked = check_name(name)
        .and_then(|()| check_minutes(valid_minutes))
        .and_then(|()| check_scopes(scopes, true));
    let scopes = match checked {
        Ok(s) => s,
        Err(e) => return usage_error(&e),
    };
    let body = json!({
        "name": name,
        "environment": environment,
        "valid_minutes": valid_minutes,
        "scopes": scopes,
    });
    match admin::run(target, |a| async move {
        Ok(a.send(Method::POST, "/v1/pats", Some(&body)).await?.1)
    }) {
        Ok(answer) => print_issued(target.format, &answer, "created"),
        Err(code) => code,
    }
}

/// `pat update`: a new value (printed once), the previous one revoked;
/// `--valid-minutes` and `--scopes` change those too.
pub fn update(
    target: &Target,
    name: &str,
    valid_minutes: Option<u64>,
    scopes: &[String],
) -> ExitCode {
    let checked = check_name(name)
        .and_then(|()| valid_minutes.map_or(Ok(()), check_minutes))
        .and_then(|()| check_scopes(scopes, false));
    let scopes = match checked {
        Ok(s) => s,
        Err(e) => return usage_error(&e),
    };
    let mut body = serde_json::Map::new();
    if let Some(m) = valid_minutes {
        body.insert("valid_minutes".into(), json!(m));
    }
    if !scopes.is_empty() {
        body.insert("scopes".into(), json!(scopes));
    }
    let body = Value::Object(body);
    let path = format!("/v1/pats/{name}");
    match admin::run(target, |a| async move {
        Ok(a.send(Method::PATCH, &path, Some(&body)).await?.1)
    }) {
        Ok(answer) => print_issued(
            target.format,
            &answer,
            "updated; its previous value is revoked",
        ),
        Err(code) => code,
    }
}

/// `pat show`: the properties, never the value.
pub fn show(target: &Target, name: &str) -> ExitCode {
    if let Err(e) = check_name(name) {
        return usage_error(&e);
    }
    let path = format!("/v1/pats/{name}");
    match admin::run(target, |a| async move {
        Ok(a.send(Method::GET, &path, None).await?.1)
    }) {
        Ok(pat) => {
            match target.format {
                OutputFormat::Json => println!("{pat}"),
                OutputFormat::Table => print!("{}", properties(&pat, clock::now())),
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `pat list`: every PAT's properties, never a value.
pub fn list(target: &Target) -> ExitCode {
    match admin::run(target, |a| async move {
        Ok(a.send(Method::GET, "/v1/pats", None).await?.1)
    }) {
        Ok(answer) => {
            match target.format {
                OutputFormat::Json => println!("{answer}"),
                OutputFormat::Table => print!("{}", table(&answer, clock::now())),
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `pat delete`: revoked everywhere through the revocation feed.
pub fn delete(target: &Target, name: &str) -> ExitCode {
    if let Err(e) = check_name(name) {
        return usage_error(&e);
    }
    let path = format!("/v1/pats/{name}");
    match admin::run(target, |a| async move {
        Ok(a.send(Method::DELETE, &path, None).await?.1)
    }) {
        Ok(_) => {
            match target.format {
                OutputFormat::Json => println!("{}", json!({"name": name, "deleted": true})),
                OutputFormat::Table => println!(
                    "personal access token `{name}` deleted: it and the tokens exchanged from it are revoked"
                ),
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn check_name(name: &str) -> Result<(), String> {
    PatName::parse(name)
        .map(|_| ())
        .map_err(|e| format!("--name: {e}"))
}

fn check_minutes(minutes: u64) -> Result<(), String> {
    if minutes == 0 {
        Err("--valid-minutes: a personal access token is valid for at least 1 minute".into())
    } else {
        Ok(())
    }
}

/// The scopes of `--scopes` (repeatable; each may also hold several,
/// separated by spaces or commas), each checked with the issuer's parser.
fn check_scopes(values: &[String], required: bool) -> Result<Vec<String>, String> {
    let scopes: Vec<String> = values
        .iter()
        .flat_map(|v| v.split(|c: char| c == ',' || c.is_whitespace()))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if required && scopes.is_empty() {
        return Err(
            "--scopes: give at least one scope (e.g. --scopes env:view --scopes 'task:operate:*')"
                .into(),
        );
    }
    if !values.is_empty() && scopes.is_empty() {
        return Err("--scopes: give at least one scope".into());
    }
    for s in &scopes {
        Scopes::parse(s).map_err(|e| format!("--scopes: `{s}` is refused: {e}"))?;
    }
    Ok(scopes)
}

/// Prints the answer of create or update: the value alone on standard
/// output and a note on standard error (table), or the whole answer (json).
fn print_issued(format: OutputFormat, answer: &Value, what: &str) -> ExitCode {
    let (Some(value), Some(name)) = (answer["value"].as_str(), answer["pat"]["name"].as_str())
    else {
        return super::failure(&format!("unexpected answer from the issuer: {answer}"));
    };
    match format {
        OutputFormat::Json => println!("{answer}"),
        OutputFormat::Table => {
            println!("{value}");
            eprintln!(
                "authproxy: personal access token `{name}` {what}; it expires at {}. Its value (above) is shown once: store it now.",
                answer["pat"]["expires_at"].as_str().unwrap_or("?")
            );
        }
    }
    ExitCode::SUCCESS
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("-").to_owned()
}

fn scopes_text(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// An expiry, with `(expired)` or `(in N days)` when it is past or near.
fn expiry(v: &Value, now: u64) -> String {
    let shown = text(v);
    let Some(at) = v
        .as_str()
        .and_then(|s| humantime::parse_rfc3339(s).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
    else {
        return shown;
    };
    if at <= now {
        format!("{shown} (expired)")
    } else if at - now < EXPIRY_WARNING_SECS {
        let left = at - now;
        let left = match left {
            l if l >= 2 * 86_400 => format!("{} days", l / 86_400),
            l if l >= 2 * 3600 => format!("{} hours", l / 3600),
            l => format!("{} minutes", l.div_ceil(60)),
        };
        format!("{shown} (in {left})")
    } else {
        shown
    }
}

fn last_used(v: &Value) -> String {
    v.as_str().map_or_else(|| "never".to_owned(), str::to_owned)
}

/// `show` as `key  value` lines.
fn properties(pat: &Value, now: u64) -> String {
    columns(&[
        vec!["name".into(), text(&pat["name"])],
        vec!["environment".into(), text(&pat["environment"])],
        vec!["scopes".into(), scopes_text(&pat["scopes"])],
        vec!["id".into(), text(&pat["id"])],
        vec!["created".into(), text(&pat["created_at"])],
        vec!["updated".into(), text(&pat["updated_at"])],
        vec!["expires".into(), expiry(&pat["expires_at"], now)],
        vec!["last used".into(), last_used(&pat["last_used_at"])],
    ])
}

/// `list` as columns.
fn table(answer: &Value, now: u64) -> String {
    let pats = answer["pats"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if pats.is_empty() {
        return "no personal access tokens\n".into();
    }
    let mut rows = vec![
        [
            "NAME",
            "ENVIRONMENT",
            "SCOPES",
            "CREATED",
            "EXPIRES",
            "LAST USED",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for p in pats {
        rows.push(vec![
            text(&p["name"]),
            text(&p["environment"]),
            scopes_text(&p["scopes"]),
            text(&p["created_at"]),
            expiry(&p["expires_at"], now),
            last_used(&p["last_used_at"]),
        ]);
    }
    columns(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z

    fn pat(name: &str, expires_at: &str, last_used: Value) -> Value {
        json!({
            "name": name, "environment": "main", "scopes": ["env:view", "task:operate:*"],
            "id": "abc", "created_at": "2025-12-01T00:00:00Z", "updated_at": "2025-12-02T00:00:00Z",
            "expires_at": expires_at, "last_used_at": last_used,
        })
    }

    #[test]
    fn scopes_may_be_repeated_or_listed_and_are_checked_before_sending() {
        let ok = check_scopes(&["env:view".into(), "task:operate:a, task:*".into()], true).unwrap();
        assert_eq!(ok, ["env:view", "task:operate:a", "task:*"]);
        assert_eq!(check_scopes(&[], false).unwrap(), Vec::<String>::new());
        for bad in [
            &[][..],
            &["".into()][..],
            &["task:operate:x*".into()][..],
            &["db:view".into()][..],
        ] {
            assert!(check_scopes(bad, true).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn show_and_list_print_properties_and_point_out_near_expiries() {
        let shown = properties(&pat("ci", "2026-01-03T12:00:00Z", Value::Null), NOW);
        assert!(
            shown.contains("\nscopes       env:view task:operate:*\n"),
            "{shown}"
        );
        assert!(
            shown.contains("\nexpires      2026-01-03T12:00:00Z (in 2 days)\n"),
            "{shown}"
        );
        assert!(shown.ends_with("\nlast used    never\n"), "{shown}");

        let list = json!({"pats": [
            pat("ci", "2027-01-01T00:00:00Z", json!("2025-12-31T23:00:00Z")),
            pat("old", "2025-12-31T00:00:00Z", Value::Null),
            pat("soon", "2026-01-01T00:30:00Z", Value::Null),
        ]});
        let t = table(&list, NOW);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "NAME  ENVIRONMENT  SCOPES                   CREATED               EXPIRES                               LAST USED"
        );
        assert!(lines[1].starts_with("ci    main         env:view task:operate:*  2025-12-01T00:00:00Z  2027-01-01T00:00:00Z "), "{t}");
        assert!(lines[1].ends_with("  2025-12-31T23:00:00Z"), "{t}");
        assert!(lines[2].contains("2025-12-31T00:00:00Z (expired)"), "{t}");
        assert!(lines[3].contains("(in 30 minutes)"), "{t}");
        assert_eq!(
            table(&json!({"pats": []}), NOW),
            "no personal access tokens\n"
        );
    }
}
