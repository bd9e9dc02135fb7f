//! `authproxy token` for scripts and crons, and the token file sink.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output};

use crate::common::*;

async fn cli(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_authproxy"))
            .args(&args)
            .env_remove("AUTHPROXY_ENDPOINT")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[tokio::test]
async fn token_prints_raw_json_and_header_formats() {
    let s = spawn_sidecar(Options::default()).await;
    let auth = authorizer_for(&s).await;

    let raw = cli(&["token", "--endpoint", &s.url]).await;
    assert!(raw.status.success(), "{raw:?}");
    let token = stdout(&raw).trim().to_owned();
    assert_eq!(
        auth.verify(&token, now()).await.unwrap().sub().to_string(),
        "app/web"
    );

    let json = cli(&[
        "token",
        "--endpoint",
        &s.url,
        "--format",
        "json",
        "--scope",
        "env:view",
    ])
    .await;
    assert!(json.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["scope"], "env:view");

    let header = cli(&[
        "token",
        "--endpoint",
        &s.url,
        "--format",
        "header",
        "--scope",
        "env:view",
        "--scope",
        "task:operate:send-report",
    ])
    .await;
    let line = stdout(&header);
    let t = line.trim().strip_prefix("Authorization: Bearer ").unwrap();
    let p = auth.verify(t, now()).await.unwrap();
    assert_eq!(p.scopes().to_string(), "task:operate:send-report env:view");
}

#[tokio::test]
async fn token_explains_a_refusal_and_exits_non_zero() {
    let s = spawn_sidecar(Options::default()).await;
    let out = cli(&[
        "token",
        "--endpoint",
        &s.url,
        "--scope",
        "task:operate:notify",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("invalid_scope") && err.contains("task:operate:notify"),
        "{err}"
    );
}

#[tokio::test]
async fn token_explains_an_unreachable_sidecar_and_exits_non_zero() {
    let closed = closed_addr();
    let url = format!("http://{closed}");
    let out = cli(&["token", "--endpoint", &url]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!("cannot reach the sidecar at {url}")),
        "{err}"
    );
}

/// #11 item 17a: `--endpoint 127.0.0.1:8200` means http:// (the sidecar
/// speaks plain HTTP on loopback), for `token` and `health` alike.
#[tokio::test]
async fn an_endpoint_without_a_scheme_means_http() {
    let s = spawn_sidecar(Options::default()).await;
    let bare = s.url.strip_prefix("http://").unwrap();
    let out = cli(&["token", "--endpoint", bare]).await;
    assert!(out.status.success(), "{out:?}");
    let auth = authorizer_for(&s).await;
    assert!(auth.verify(stdout(&out).trim(), now()).await.is_ok());
    let config = s.config_path.to_str().unwrap();
    let out = cli(&["health", "--endpoint", bare, "--config", config]).await;
    assert!(out.status.success(), "{out:?}");
}

/// #11 item 17b: a cron that starts with its container waits for the
/// sidecar: `--wait 10` against a port where the sidecar starts a second
/// later succeeds.
#[test]
fn token_wait_outlasts_a_sidecar_that_starts_later() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &Options::default());
    let addr = closed_addr().to_string();
    let waiting = Command::new(env!("CARGO_BIN_EXE_authproxy"))
        .args([
            "token",
            "--endpoint",
            &format!("http://{addr}"),
            "--wait",
            "10",
        ])
        .env_remove("AUTHPROXY_ENDPOINT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let _sidecar = Daemon::start_with(
        &cfg,
        "text",
        "info",
        &[("AUTHPROXY__SERVER__LISTEN", &addr)],
    );
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out).trim().split('.').count(), 3, "{out:?}");
}

/// #11 item 17b: `--wait` gives up at its deadline, saying so.
#[tokio::test]
async fn token_wait_gives_up_at_its_deadline_with_a_clear_message() {
    let url = format!("http://{}", closed_addr());
    let started = std::time::Instant::now();
    let out = cli(&["token", "--endpoint", &url, "--wait", "1"]).await;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        took >= std::time::Duration::from_millis(900) && took < std::time::Duration::from_secs(5),
        "{took:?}"
    );
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("gave up after waiting 1s"), "{err}");
    assert!(
        err.contains(&format!("cannot reach the sidecar at {url}")),
        "{err}"
    );
}

/// #11 item 17b: 503 (no grant yet) and 429 (rate limited) are retried
/// under `--wait`; without it the first refusal is final.
#[tokio::test]
async fn token_wait_retries_503_and_429() {
    use axum::http::StatusCode;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    fn stub(calls: Arc<AtomicUsize>) -> axum::Router {
        axum::Router::new().route(
            "/oauth2/token",
            axum::routing::post(move || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    let (status, body) = match n {
                        0 => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            r#"{"error":"temporarily_unavailable","error_description":"no grant"}"#,
                        ),
                        1 => (
                            StatusCode::TOO_MANY_REQUESTS,
                            r#"{"error":"slow_down","error_description":"rate limited"}"#,
                        ),
                        _ => (
                            StatusCode::OK,
                            r#"{"access_token":"a.b.c","token_type":"Bearer","expires_in":300,"scope":"env:view"}"#,
                        ),
                    };
                    (status, [("content-type", "application/json")], body)
                }
            }),
        )
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let (url, _stop) = serve(stub(Arc::clone(&calls))).await;
    let out = cli(&["token", "--endpoint", &url, "--wait", "10"]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out).trim(), "a.b.c");
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let calls = Arc::new(AtomicUsize::new(0));
    let (url, _stop) = serve(stub(Arc::clone(&calls))).await;
    let out = cli(&["token", "--endpoint", &url]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("temporarily_unavailable")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

fn sink_options(path: &std::path::Path, mode: Option<&str>) -> Options<'static> {
    let mode = mode
        .map(|m| format!("mode = \"{m}\"\n"))
        .unwrap_or_default();
    let sections = format!("[sink]\npath = \"{}\"\n{mode}", path.display());
    Options {
        tokens_extra: "ttl = \"30s\"",
        sections: Box::leak(sections.into_boxed_str()),
        ..Options::default()
    }
}

#[tokio::test]
async fn the_sink_writes_a_valid_token_with_the_configured_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let s = spawn_sidecar(sink_options(&path, None)).await;
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    let token = std::fs::read_to_string(&path).unwrap();
    let auth = authorizer_for(&s).await;
    let p = auth.verify(&token, now()).await.unwrap();
    assert_eq!(p.scopes().to_string(), "task:operate:send-report env:view");

    let path2 = dir.path().join("token2");
    let _s2 = spawn_sidecar(sink_options(&path2, Some("0600"))).await;
    assert_eq!(
        std::fs::metadata(&path2).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// Time is a parameter: the next write is due at 80% of the token's life,
/// and a due write replaces the file with a new, valid token.
#[tokio::test]
async fn the_sink_replaces_the_token_at_four_fifths_of_its_life() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let s = spawn_sidecar(sink_options(&path, None)).await;
    let first = std::fs::read_to_string(&path).unwrap();
    let c = part(&first, 1);
    let (iat, exp) = (c["iat"].as_u64().unwrap(), c["exp"].as_u64().unwrap());
    assert_eq!(exp - iat, 30);
    let mut due = s.daemon.token_file_due();
    assert_eq!(*due.borrow_and_update(), iat + 24);

    // The background task, once the write is due, rewrites the file and
    // schedules the next write.
    s.daemon.rewrite_token_file();
    // Each write publishes its next due time: wait for that event.
    let second = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            due.changed().await.unwrap();
            if *due.borrow_and_update() != 0 {
                return std::fs::read_to_string(&path).unwrap();
            }
        }
    })
    .await
    .expect("the token file task rewrote the file");
    assert_ne!(second, first, "the token file was not replaced");
    assert_ne!(part(&second, 1)["jti"], c["jti"]);
    let auth = authorizer_for(&s).await;
    assert!(auth.verify(&second, now()).await.is_ok());
    // No temporary file is left beside it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[tokio::test]
async fn a_reload_that_narrows_the_authorizations_rewrites_the_token_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let s = spawn_sidecar(sink_options(&path, None)).await;
    let before = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        part(&before, 1)["scope"],
        "task:operate:send-report env:view"
    );
    std::fs::write(
        s.dir.path().join("project.yaml"),
        "applications:\n  web:\n    authorizations: [{ type: env, action: view }]\n",
    )
    .unwrap();
    assert!(s.daemon.reload(now()).await.unwrap());
    let after = std::fs::read_to_string(&path).unwrap();
    assert_eq!(part(&after, 1)["scope"], "env:view");
}

#[test]
fn a_sink_that_cannot_be_written_or_has_nothing_to_write_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    for (opts, expected) in [
        (
            sink_options(std::path::Path::new("/nonexistent-dir/token"), None),
            "`sink.path`: cannot write the token file /nonexistent-dir/token",
        ),
        (
            Options {
                workload: "worker/web/mailer",
                ..sink_options(&dir.path().join("t"), None)
            },
            "declares no authorizations",
        ),
    ] {
        let sub = tempfile::tempdir().unwrap();
        let cfg = write_config(sub.path(), &opts);
        let out = Command::new(env!("CARGO_BIN_EXE_authproxy"))
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64));
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(expected), "{err}");
    }
}
