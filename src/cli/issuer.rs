//! The platform-side verbs (DESIGN §7, §8): `authproxy issuer serve` runs
//! an issuer node (the `authproxy-issuer` crate, behind the default cargo
//! feature `issuer`); `authproxy issuer sync` is a client of its management
//! API and needs nothing of it but HTTP, so it is always built.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use authproxy_core::declarations::{Declarations, MAX_FILE_BYTES};
use authproxy_core::oauth::ErrorBody;
use serde::Deserialize;

use super::{failure, usage_error};
use crate::telemetry::describe;

/// How long one management request may take (a sync writes to the store).
const MANAGEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// `authproxy issuer serve`: loads and validates the configuration (exit
/// 64 naming the file and key), opens the node (root key, admin token,
/// store; exit 64 when its state directory or store cannot be used), binds
/// `server.listen` (exit 64 when it cannot), and serves the issuer's routes
/// with the sidecar's hardened loop until SIGTERM or SIGINT.
#[cfg(feature = "issuer")]
pub fn serve(config_file: &Path) -> ExitCode {
    use std::sync::Arc;

    use authproxy_core::clock;
    use authproxy_issuer::{Issuer, IssuerConfig};

    let config = match IssuerConfig::load(config_file) {
        Ok(c) => c,
        Err(e) => return usage_error(&e),
    };
    // Many sidecars renew against one issuer: use every core.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return failure(&format!("cannot start a runtime: {e}")),
    };
    runtime.block_on(async {
        let file = config.file.clone();
        let listen = config.server.listen;
        let limits = issuer_limits(&config.server);
        let issuer = match Issuer::open(config, clock::now()).await {
            Ok(i) => Arc::new(i),
            Err(e) => return usage_error(&format!("{}: {e}", file.display())),
        };
        let listeners = match crate::serve::bind_all(&[listen], false).await {
            Ok(l) => l,
            Err(e) => {
                return usage_error(&format!(
                    "{}: `server.listen` = {}: cannot listen there: {}",
                    file.display(),
                    e.addr,
                    e.source
                ));
            }
        };
        // Expired revocations are never served; deleting them only keeps
        // the store small. Dropped with the runtime at shutdown.
        let pruner = Arc::clone(&issuer);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(
                authproxy_issuer::issuer::revocations::PRUNE_EVERY,
            );
            loop {
                every.tick().await;
                if let Err(e) = pruner.prune_revocations(clock::now()).await {
                    tracing::warn!(error = %e, "cannot prune expired revocations; trying again later");
                }
            }
        });
        // The credential lifecycle's worker (DESIGN §10): runs the tasks
        // due, reading the clock once per tick; stopped with the runtime.
        tokio::spawn(
            authproxy_issuer::tasks::worker::Worker::new(
                Arc::clone(&issuer),
                authproxy_issuer::tasks::worker::WorkerOptions::default(),
            )
            .run(std::future::pending()),
        );
        let shutdown = super::shutdown_signal();
        for l in &listeners {
            match l.local_addr() {
                Ok(addr) => tracing::info!(listen = %addr, "authproxy issuer listening"),
                Err(e) => return failure(&format!("no local address: {e}")),
            }
        }
        // A request whose body trickles in is cut, as the sidecar cuts a
        // slow token request: the serve loop bounds headers, not bodies.
        let app = authproxy_issuer::router(issuer).layer(
            tower_http::timeout::TimeoutLayer::with_status_code(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                limits.body_read_timeout,
            ),
        );
        match crate::serve::serve(listeners, app, limits, shutdown).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// The serve loop's limits for an issuer node. Its clients are sidecars in
/// other containers, not loopback callers: every peer is remote, so the
/// budget for remote peers is the whole budget (the sidecar keeps a small
/// one so that remote peers cannot crowd out its own workload).
#[cfg(feature = "issuer")]
fn issuer_limits(server: &authproxy_issuer::config::ServerConfig) -> crate::serve::Limits {
    let mut limits = crate::serve::Limits::default();
    if let Some(t) = server.header_read_timeout {
        limits.header_read_timeout = t;
    }
    if let Some(n) = server.max_connections {
        limits.max_connections = n;
    }
    if let Some(g) = server.shutdown_grace {
        limits.shutdown_grace = g;
    }
    limits.max_remote_connections = limits.max_connections;
    // The whole request, body and sync included, within this.
    limits.body_read_timeout = Duration::from_secs(30);
    limits
}

/// What `authproxy issuer sync` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanFormat {
    /// One line per workload and change.
    Table,
    /// The plan object `POST /v1/sync` answers.
    Json,
}

/// The arguments of `authproxy issuer sync`.
#[derive(Debug, Clone)]
pub struct SyncArgs {
    /// The declarations file.
    pub declarations: PathBuf,
    /// The environment to sync.
    pub environment: String,
    /// Compute the plan only.
    pub dry_run: bool,
    /// Write each new workload credential to a file here instead of
    /// printing it.
    pub credentials_dir: Option<PathBuf>,
    /// The issuer's base URL (`http://` if it has no scheme).
    pub issuer: String,
    /// The file holding the admin token.
    pub admin_token_file: PathBuf,
    /// Output format.
    pub format: PlanFormat,
}

/// `POST /v1/sync`'s answer: the plan, and the credentials it created.
#[derive(Debug, Deserialize)]
struct SyncAnswer {
    environment: String,
    dry_run: bool,
    created: Vec<PlanItem>,
    updated: Vec<PlanItem>,
    unchanged: Vec<PlanItem>,
    removed: Vec<PlanItem>,
    /// Workload id → `ap_wc_…`, for each identity created.
    #[serde(default)]
    credentials: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct PlanItem {
    workload: String,
    identity: String,
    #[serde(default)]
    identity_before: Option<String>,
    #[serde(default)]
    new_identity: bool,
    scopes_before: Option<Vec<String>>,
    scopes_after: Option<Vec<String>>,
}

/// `authproxy issuer sync`: validates the declarations as `authproxy
/// check` does, sends them to `POST /v1/sync`, prints the plan, and hands
/// out the workload credentials the sync created — once: written to
/// `--credentials-dir` (one 0600 file per workload, `/` → `_`), or printed.
/// Exit 0 on success; 1 when the declarations are invalid or the issuer
/// refuses or cannot be reached; 64 when the admin token file or the
/// credentials directory cannot be used.
pub fn sync(args: &SyncArgs) -> ExitCode {
    let text = match read_declarations(&args.declarations) {
        Ok(t) => t,
        Err(e) => return failure(&e),
    };
    let token = match read_admin_token(&args.admin_token_file) {
        Ok(t) => t,
        Err(e) => return usage_error(&e),
    };
    // Before the sync, not after: the issuer shows the new credentials
    // once, and a directory that turns out unwritable would lose them.
    if let Some(dir) = args.credentials_dir.as_ref().filter(|_| !args.dry_run)
        && let Err(e) = prepare_credentials_dir(dir)
    {
        return usage_error(&format!("--credentials-dir {}: {e}", dir.display()));
    }
    let answer = match super::client_runtime().and_then(|rt| {
        rt.block_on(post_sync(args, &token, text))
            .map_err(|e| e.to_string())
    }) {
        Ok(a) => a,
        Err(e) => return failure(&e),
    };
    let (mut raw, plan) = answer;
    let mut written = BTreeMap::new();
    let mut unwritten = BTreeMap::new();
    match &args.credentials_dir {
        Some(dir) if !plan.credentials.is_empty() => {
            for (workload, credential) in &plan.credentials {
                let path = dir.join(credential_file_name(workload));
                let mut contents = credential.clone().into_bytes();
                contents.push(b'\n');
                match crate::sink::write_atomically(&path, &contents, 0o600) {
                    Ok(()) => {
                        written.insert(workload.clone(), path);
                    }
                    Err(e) => {
                        eprintln!(
                            "authproxy: cannot write {} ({e}); its credential is printed below instead",
                            path.display()
                        );
                        unwritten.insert(workload.clone(), credential.clone());
                    }
                }
            }
        }
        _ => unwritten = plan.credentials.clone(),
    }
    match args.format {
        PlanFormat::Json => {
            if let Some(object) = raw.as_object_mut() {
                object.insert(
                    "credentials".into(),
                    serde_json::to_value(&unwritten).unwrap_or_default(),
                );
                if args.credentials_dir.is_some() {
                    object.insert(
                        "credential_files".into(),
                        serde_json::to_value(&written).unwrap_or_default(),
                    );
                }
            }
            println!("{raw}");
        }
        PlanFormat::Table => {
            print!("{}", plan_table(&plan));
            for (workload, path) in &written {
                println!(
                    "credential of {workload} written to {} (mode 0600)",
                    path.display()
                );
            }
            if !unwritten.is_empty() {
                println!(
                    "\nNew workload credentials, shown once (give each to its workload's sidecar, e.g. as AUTHPROXY_BOOTSTRAP):"
                );
                for (workload, credential) in &unwritten {
                    println!("{workload}  {credential}");
                }
            }
        }
    }
    // A credential that should have gone to a file was printed instead:
    // the sync is done, but not as asked.
    if args.credentials_dir.is_some() && !unwritten.is_empty() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// `authproxy issuer grants revoke`: revokes every live grant of a
/// workload (`POST /v1/grants/revoke`), so that every layer refuses its
/// tokens within seconds. Exit 0 done (even when it had no live grant), 1
/// refused (an unknown workload, say) or unreachable, 64 the workload id is
/// malformed or the admin token file cannot be used.
pub fn revoke_grants(target: &super::admin::Target, environment: &str, workload: &str) -> ExitCode {
    if let Err(e) = workload.parse::<authproxy_core::WorkloadId>() {
        return usage_error(&format!("--workload: {e}"));
    }
    let body = serde_json::json!({"environment": environment, "workload": workload});
    let answer = super::admin::run(target, |a| async move {
        Ok(
            a.send(reqwest::Method::POST, "/v1/grants/revoke", Some(&body))
                .await?
                .1,
        )
    });
    match answer {
        Ok(answer) => {
            match target.format {
                super::admin::OutputFormat::Json => println!("{answer}"),
                super::admin::OutputFormat::Table => println!(
                    "revoked {} live grant(s) of {workload} in {environment}; layers refuse their tokens from their next revocation poll. Its sidecar gets a new grant when it renews (SIGHUP renews at once).",
                    answer["revoked"]
                ),
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// The file a workload's credential is written to: its id with `/` → `_`
/// (`app/web` → `app_web`). Workload ids are `[a-z0-9_-]` names joined by
/// `/`, so the name is a plain file name.
pub fn credential_file_name(workload: &str) -> String {
    workload.replace('/', "_")
}

fn read_declarations(path: &Path) -> Result<String, String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES as u64 + 1).read_to_string(&mut text))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // The same validation as `authproxy check`, before anything is sent.
    Declarations::parse(&text, path).map_err(|e| e.to_string())?;
    Ok(text)
}

pub(super) fn read_admin_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "admin token file {}: {e} (--admin-token-file or AUTHPROXY_ADMIN_TOKEN_FILE; the issuer writes it to <state_dir>/admin-token)",
            path.display()
        )
    })?;
    let token = text.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "admin token file {}: not an admin token",
            path.display()
        ));
    }
    Ok(token.to_owned())
}

/// Creates the directory (0700) if needed and checks a file can be
/// written in it.
fn prepare_credentials_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let probe = dir.join(format!(
        ".authproxy-probe-{}",
        authproxy_core::keys::random_id()
    ));
    crate::sink::write_atomically(&probe, b"", 0o600)?;
    std::fs::remove_file(&probe)
}

/// Why a sync request failed.
#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("cannot reach the issuer at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("the issuer refused the admin token from {file} (HTTP 401)")]
    Unauthorized { file: PathBuf },
    #[error("{file}: the issuer refused the declarations:{problems}")]
    Invalid { file: PathBuf, problems: String },
    #[error("the issuer answered HTTP {status}: {error}: {description}")]
    Refused {
        status: u16,
        error: String,
        description: String,
    },
    #[error("unexpected answer from the issuer (HTTP {status}): {message}")]
    BadAnswer { status: u16, message: String },
}

/// The answer of an `invalid_declarations` refusal.
#[derive(Deserialize)]
struct InvalidAnswer {
    #[serde(default)]
    problems: Vec<Problem>,
}

#[derive(Deserialize)]
struct Problem {
    path: String,
    message: String,
}

async fn post_sync(
    args: &SyncArgs,
    token: &str,
    declarations: String,
) -> Result<(serde_json::Value, SyncAnswer), SyncError> {
    let base = crate::client::base_url(&args.issuer);
    let query = serde_urlencoded::to_string([
        ("environment", args.environment.as_str()),
        ("dry_run", if args.dry_run { "true" } else { "false" }),
    ])
    .map_err(|e| SyncError::BadAnswer {
        status: 0,
        message: e.to_string(),
    })?;
    let url = format!("{base}/v1/sync?{query}");
    let unreachable = |e: reqwest::Error| SyncError::Unreachable {
        url: base.clone(),
        message: describe(&e),
    };
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(MANAGEMENT_TIMEOUT)
        .build()
        .map_err(unreachable)?;
    let res = client
        .post(&url)
        .bearer_auth(token)
        .header("content-type", "application/yaml")
        .body(declarations)
        .send()
        .await
        .map_err(unreachable)?;
    let status = res.status().as_u16();
    let text = res.text().await.map_err(unreachable)?;
    let bad = |message: String| SyncError::BadAnswer { status, message };
    if status == 401 {
        return Err(SyncError::Unauthorized {
            file: args.admin_token_file.clone(),
        });
    }
    if status != 200 {
        let body: ErrorBody = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if body.error == "invalid_declarations" {
            let problems = serde_json::from_str::<InvalidAnswer>(&text)
                .map(|a| a.problems)
                .unwrap_or_default()
                .iter()
                .map(|p| format!("\n  - {}: {}", p.path, p.message))
                .collect();
            return Err(SyncError::Invalid {
                file: args.declarations.clone(),
                problems,
            });
        }
        return Err(SyncError::Refused {
            status,
            error: body.error,
            description: body.error_description,
        });
    }
    let raw: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let plan: SyncAnswer = serde_json::from_value(raw.clone()).map_err(|e| bad(e.to_string()))?;
    Ok((raw, plan))
}

/// The plan as a table: one line per workload, grouped by change.
fn plan_table(plan: &SyncAnswer) -> String {
    let mut rows: Vec<[String; 4]> = vec![[
        "CHANGE".into(),
        "WORKLOAD".into(),
        "IDENTITY".into(),
        "SCOPES".into(),
    ]];
    let scopes = |s: &Option<Vec<String>>| match s {
        None => "-".to_owned(),
        Some(list) if list.is_empty() => "(none)".to_owned(),
        Some(list) => list.join(" "),
    };
    for (change, items) in [
        ("created", &plan.created),
        ("updated", &plan.updated),
        ("unchanged", &plan.unchanged),
        ("removed", &plan.removed),
    ] {
        for item in items {
            let identity = match (&item.identity_before, item.new_identity) {
                (Some(before), _) => format!("{before} → {}", item.identity),
                (None, true) => format!("{} (new)", item.identity),
                (None, false) => item.identity.clone(),
            };
            let scope = match change {
                "updated" if item.scopes_before != item.scopes_after => format!(
                    "{} → {}",
                    scopes(&item.scopes_before),
                    scopes(&item.scopes_after)
                ),
                "removed" => scopes(&item.scopes_before),
                _ => scopes(&item.scopes_after),
            };
            rows.push([change.into(), item.workload.clone(), identity, scope]);
        }
    }
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
    let (w0, w1, w2) = (width(0), width(1), width(2));
    let mut out = format!(
        "environment {}: {}\n",
        plan.environment,
        if plan.dry_run {
            "dry run, nothing applied"
        } else {
            "applied"
        }
    );
    for r in &rows {
        let line = format!("{:<w0$}  {:<w1$}  {:<w2$}  {}", r[0], r[1], r[2], r[3]);
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(&format!(
        "{} created, {} updated, {} unchanged, {} removed\n",
        plan.created.len(),
        plan.updated.len(),
        plan.unchanged.len(),
        plan.removed.len()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_files_are_named_after_the_workload() {
        assert_eq!(credential_file_name("app/web"), "app_web");
        assert_eq!(credential_file_name("worker/web/queue"), "worker_web_queue");
        assert_eq!(credential_file_name("task/send-report"), "task_send-report");
    }

    #[test]
    fn the_table_shows_each_change_kind() {
        let plan: SyncAnswer = serde_json::from_value(serde_json::json!({
            "environment": "main",
            "dry_run": false,
            "created": [{"workload": "app/web", "identity": "app/web", "new_identity": true,
                          "scopes_before": null, "scopes_after": ["env:view"]}],
            "updated": [{"workload": "task/a", "identity": "task/a",
                          "scopes_before": ["env:view"], "scopes_after": []}],
            "unchanged": [{"workload": "task/b", "identity": "task/b",
                          "scopes_before": ["env:view"], "scopes_after": ["env:view"]}],
            "removed": [{"workload": "task/c", "identity": "task/c",
                          "scopes_before": ["task:operate:b"], "scopes_after": null}],
            "credentials": {"app/web": "ap_wc_x"}
        }))
        .unwrap();
        let t = plan_table(&plan);
        assert!(t.starts_with("environment main: applied\n"), "{t}");
        assert!(
            t.contains("\nCHANGE     WORKLOAD  IDENTITY       SCOPES\n"),
            "{t}"
        );
        assert!(
            t.contains("\ncreated    app/web   app/web (new)  env:view\n"),
            "{t}"
        );
        assert!(
            t.contains("\nupdated    task/a    task/a         env:view → (none)\n"),
            "{t}"
        );
        assert!(
            t.contains("\nunchanged  task/b    task/b         env:view\n"),
            "{t}"
        );
        assert!(
            t.contains("\nremoved    task/c    task/c         task:operate:b\n"),
            "{t}"
        );
        assert!(
            t.ends_with("1 created, 1 updated, 1 unchanged, 1 removed\n"),
            "{t}"
        );
        assert!(!t.contains("ap_wc_"), "{t}");
    }
}
