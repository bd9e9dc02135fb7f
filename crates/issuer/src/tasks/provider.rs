//! Where a rotated workload credential goes: the pluggable provider
//! (DESIGN §10, as IBM Secrets Manager's custom credentials providers).
//!
//! - **Built-in** (`[credentials] dir`): the new value is written to
//!   `<dir>/<identity with / as _>` (`app/web` → `app_web`), mode 0600,
//!   through a temporary file renamed into place, so a reader sees the old
//!   value or the new one, never half of one — the layout `authproxy issuer
//!   sync --credentials-dir` writes, which the platform mounts into the
//!   container (the sidecar re-reads `bootstrap = "file:…"` at each renewal).
//! - **External** (`[credentials] command`): the program runs with
//!   `AUTHPROXY_TASK_ID`, `AUTHPROXY_ACTION` (`create` or `delete`),
//!   `AUTHPROXY_CREDENTIAL_ID`, `AUTHPROXY_ENVIRONMENT`,
//!   `AUTHPROXY_IDENTITY` and `AUTHPROXY_VERSION` in its environment and,
//!   for `create`, the new value and a newline on standard input — never in
//!   its arguments or environment, which other local users can read from
//!   `/proc`. Exit 0: delivered. Anything else, or no exit within
//!   `command_timeout`, is an error recorded on the task (its stderr's last
//!   line, with the value blanked out if it echoed it). It runs in its own
//!   process group, killed whole on timeout or cancel, so a stuck child
//!   cannot outlive it. A provider that is killed must leave the previous
//!   value in place: the issuer revokes the value it was handed.
//!
//! The value is never logged, here or by the worker.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::config::ProviderConfig;
use crate::secret::Secret;
use crate::tasks::model::TaskError;

/// Most of a provider's stderr kept (its last line goes into the error).
const MAX_STDERR_BYTES: usize = 8 * 1024;
/// Longest description taken from a provider's stderr.
const MAX_DESCRIPTION_CHARS: usize = 300;

/// What the provider is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Take a new value into use.
    Create,
    /// A version has ended (the value it was given is no longer valid).
    Delete,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Delete => "delete",
        }
    }
}

/// One call of the provider.
#[derive(Debug)]
pub struct Delivery<'a> {
    /// The task (`AUTHPROXY_TASK_ID`).
    pub task_id: &'a str,
    /// What to do.
    pub action: Action,
    /// The credential.
    pub credential_id: &'a str,
    /// Its environment.
    pub environment: &'a str,
    /// Its identity (a workload id).
    pub identity: &'a str,
    /// The version concerned.
    pub version: u32,
    /// The new value (for `create`).
    pub value: Option<&'a Secret>,
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Delivered,
    /// Not done; why.
    Failed(TaskError),
    /// The task was cancelled meanwhile; the provider was stopped.
    Cancelled,
}

/// The file the built-in provider writes for `identity`.
pub fn file_name(identity: &str) -> String {
    identity.replace('/', "_")
}

/// Runs the provider for `delivery`. `cancelled` is asked every `poll`
/// while an external provider runs; a `true` stops it.
pub async fn deliver<F, Fut>(
    config: &ProviderConfig,
    delivery: &Delivery<'_>,
    poll: Duration,
    cancelled: F,
) -> Outcome
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    match config {
        ProviderConfig::None => Outcome::Failed(TaskError::new(
            "no_provider",
            "workload credentials cannot be rotated: set `credentials.dir` or `credentials.command`",
        )),
        ProviderConfig::Dir(dir) => match (delivery.action, delivery.value) {
            (Action::Create, Some(value)) => {
                let path = dir.join(file_name(delivery.identity));
                match write_private_atomically(dir, &path, value) {
                    Ok(()) => Outcome::Delivered,
                    Err(e) => Outcome::Failed(TaskError::new(
                        "provider_failed",
                        format!("cannot write {}: {e}", path.display()),
                    )),
                }
            }
            // The file already holds the newer value.
            _ => Outcome::Delivered,
        },
        ProviderConfig::Command { argv, timeout } => {
            run_command(argv, *timeout, delivery, poll, cancelled).await
        }
    }
}

/// Writes `value` to `path` (0600) through a temporary file in `dir`,
/// created 0700 if missing, renamed into place.
fn write_private_atomically(dir: &Path, path: &Path, value: &Secret) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("credential"),
        authproxy_core::keys::random_id()
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(value.expose().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

async fn run_command<F, Fut>(
    argv: &[String],
    timeout: Duration,
    d: &Delivery<'_>,
    poll: Duration,
    cancelled: F,
) -> Outcome
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let Some((program, args)) = argv.split_first() else {
        return Outcome::Failed(TaskError::new("provider_failed", "no command configured"));
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env("AUTHPROXY_TASK_ID", d.task_id)
        .env("AUTHPROXY_ACTION", d.action.as_str())
        .env("AUTHPROXY_CREDENTIAL_ID", d.credential_id)
        .env("AUTHPROXY_ENVIRONMENT", d.environment)
        .env("AUTHPROXY_IDENTITY", d.identity)
        .env("AUTHPROXY_VERSION", d.version.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group: a timeout or cancel kills every process
        // it started, not only the first.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Failed(TaskError::new(
                "provider_failed",
                format!("cannot start {program}: {e}"),
            ));
        }
    };
    let group = child.id();
    let kill = || {
        if let Some(pid) = group
            .and_then(|p| i32::try_from(p).ok())
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    };
    // The value on stdin, then EOF. A provider that does not read it
    // gets EPIPE here, which is its business: only its exit status counts.
    if let Some(mut stdin) = child.stdin.take() {
        let mut input = d
            .value
            .map(|v| v.expose().as_bytes().to_vec())
            .unwrap_or_default();
        if d.value.is_some() {
            input.push(b'\n');
        }
        tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
        });
    }
    let stderr = child.stderr.take().map(|mut err| {
        tokio::spawn(async move {
            let mut kept = Vec::new();
            let mut buf = [0u8; 1024];
            while let Ok(n) = err.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > MAX_STDERR_BYTES {
                    kept.drain(..kept.len() - MAX_STDERR_BYTES);
                }
            }
            kept
        })
    });
    let deadline = tokio::time::Instant::now() + timeout;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            () = tokio::time::sleep_until(deadline) => {
                kill();
                let _ = child.wait().await;
                return Outcome::Failed(TaskError::new(
                    "provider_timeout",
                    format!(
                        "the provider did not finish within {}; it was killed",
                        humantime::format_duration(timeout)
                    ),
                ));
            }
            () = tokio::time::sleep(poll) => {
                if cancelled().await {
                    kill();
                    let _ = child.wait().await;
                    return Outcome::Cancelled;
                }
            }
        }
    };
    // Whatever it left running in its group goes too.
    kill();
    let stderr = match stderr {
        Some(handle) => tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default(),
        None => Vec::new(),
    };
    match status {
        Ok(s) if s.success() => Outcome::Delivered,
        Ok(s) => {
            let how = match s.code() {
                Some(code) => format!("exit status {code}"),
                None => "killed by a signal".to_owned(),
            };
            let said = last_line(&stderr, d.value);
            Outcome::Failed(TaskError::new(
                "provider_failed",
                if said.is_empty() {
                    format!("the provider failed ({how})")
                } else {
                    format!("the provider failed ({how}): {said}")
                },
            ))
        }
        Err(e) => Outcome::Failed(TaskError::new(
            "provider_failed",
            format!("cannot wait for the provider: {e}"),
        )),
    }
}

/// The last non-empty line of `stderr`, with the value blanked out and
/// cut to a sane length.
fn last_line(stderr: &[u8], value: Option<&Secret>) -> String {
    let text = String::from_utf8_lossy(stderr);
    let mut line = text
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .to_owned();
    if let Some(v) = value {
        line = line.replace(v.expose(), "<redacted>");
    }
    line.chars()
        .filter(|c| !c.is_control())
        .take(MAX_DESCRIPTION_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::WORKLOAD_CREDENTIAL_PREFIX;
    use std::os::unix::fs::PermissionsExt as _;

    fn delivery<'a>(value: Option<&'a Secret>) -> Delivery<'a> {
        Delivery {
            task_id: "t1",
            action: Action::Create,
            credential_id: "wc.main.app.web",
            environment: "main",
            identity: "app/web",
            version: 2,
            value,
        }
    }

    async fn never() -> bool {
        false
    }

    #[tokio::test]
    async fn the_built_in_provider_replaces_the_file_atomically_and_privately() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        let value = Secret::generate(WORKLOAD_CREDENTIAL_PREFIX).unwrap();
        let config = ProviderConfig::Dir(creds.clone());
        let out = deliver(
            &config,
            &delivery(Some(&value)),
            Duration::from_secs(1),
            never,
        )
        .await;
        assert_eq!(out, Outcome::Delivered);
        let file = creds.join("app_web");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            format!("{}\n", value.expose())
        );
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read_dir(&creds).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[tokio::test]
    async fn a_command_gets_the_task_in_its_environment_and_the_value_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let out_file = dir.path().join("out");
        let script = format!(
            "read v; echo \"$AUTHPROXY_TASK_ID $AUTHPROXY_ACTION $AUTHPROXY_CREDENTIAL_ID $AUTHPROXY_IDENTITY $AUTHPROXY_VERSION $v\" > {}",
            out_file.display()
        );
        let config = ProviderConfig::Command {
            argv: vec!["sh".into(), "-c".into(), script],
            timeout: Duration::from_secs(10),
        };
        let value = Secret::generate(WORKLOAD_CREDENTIAL_PREFIX).unwrap();
        let out = deliver(
            &config,
            &delivery(Some(&value)),
            Duration::from_secs(1),
            never,
        )
        .await;
        assert_eq!(out, Outcome::Delivered);
        assert_eq!(
            std::fs::read_to_string(&out_file).unwrap(),
            format!("t1 create wc.main.app.web app/web 2 {}\n", value.expose())
        );
    }

    #[tokio::test]
    async fn a_failing_command_is_an_error_that_never_echoes_the_value() {
        let config = ProviderConfig::Command {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "read v; echo \"vault said no to $v\" >&2; exit 3".into(),
            ],
            timeout: Duration::from_secs(10),
        };
        let value = Secret::generate(WORKLOAD_CREDENTIAL_PREFIX).unwrap();
        let Outcome::Failed(e) = deliver(
            &config,
            &delivery(Some(&value)),
            Duration::from_secs(1),
            never,
        )
        .await
        else {
            panic!("not a failure")
        };
        assert_eq!(e.code, "provider_failed");
        assert!(e.description.contains("exit status 3"), "{e:?}");
        assert!(
            e.description.contains("vault said no to <redacted>"),
            "{e:?}"
        );
        assert!(!e.description.contains(value.expose()));
    }

    #[tokio::test]
    async fn a_hung_command_is_killed_with_its_children_at_the_timeout() {
        let config = ProviderConfig::Command {
            // The shell waits on a child: killing the shell alone would
            // leave `sleep` holding stderr open.
            argv: vec!["sh".into(), "-c".into(), "sleep 600; true".into()],
            timeout: Duration::from_millis(300),
        };
        let started = std::time::Instant::now();
        let out = deliver(&config, &delivery(None), Duration::from_secs(1), never).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        let Outcome::Failed(e) = out else {
            panic!("{out:?}")
        };
        assert_eq!(e.code, "provider_timeout");
    }

    #[test]
    fn file_names_follow_sync() {
        assert_eq!(file_name("worker/web/queue"), "worker_web_queue");
    }
}
