//! Remote mode end to end (DESIGN §8, issue #12): the real `authproxy
//! issuer serve`, `authproxy issuer sync` writing workload credentials,
//! remote sidecars (the real binary, or in process where the test needs the
//! daemon's time parameters) and the example upstream trusting the issuer's
//! JWKS.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use authproxy::grant_source::GrantError;
use authproxy_core::grant::{Grant, GrantRequest};
use authproxy_core::keys::{SigningKey, random_id};
use authproxy_core::{Environment, WorkloadId};
use reqwest::Method;

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_authproxy");

/// Runs the binary to completion, with none of the caller's authproxy
/// variables.
fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("AUTHPROXY_ISSUER")
        .env_remove("AUTHPROXY_ADMIN_TOKEN_FILE")
        .envs(envs.iter().copied())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// The platform side: a real issuer process with its state directory and
/// store, on a fixed loopback port so that it can be restarted where the
/// sidecars look for it.
pub(crate) struct Platform {
    dir: tempfile::TempDir,
    config: PathBuf,
    pub(crate) url: String,
    issuer: Option<Daemon>,
}

impl Platform {
    pub(crate) fn start(grant_ttl: &str) -> Self {
        Self::start_with(grant_ttl, "")
    }

    /// As [`Platform::start`], with `extra` appended to the issuer's config.
    fn start_with(grant_ttl: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addr = closed_addr();
        let url = format!("http://{addr}");
        let config = dir.path().join("issuer.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"{addr}\"\n[issuer]\nurl = \"{url}\"\nstate_dir = \"{}\"\ngrant_ttl = \"{grant_ttl}\"\n{extra}",
                dir.path().join("state").display()
            ),
        )
        .unwrap();
        let issuer = Daemon::issuer(&config, &[]);
        assert_eq!(issuer.url, url);
        Self {
            dir,
            config,
            url,
            issuer: Some(issuer),
        }
    }

    pub(crate) fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn credentials_dir(&self) -> PathBuf {
        self.dir.path().join("credentials")
    }

    fn credential_file(&self, workload: &str) -> PathBuf {
        self.credentials_dir().join(workload.replace('/', "_"))
    }

    fn jwks_url(&self) -> String {
        format!("{}/.well-known/jwks.json", self.url)
    }

    /// `authproxy issuer sync` of `declarations` into `main`, with `extra`
    /// arguments.
    fn sync(&self, declarations: &str, extra: &[&str]) -> Output {
        let file = self
            .dir
            .path()
            .join(format!("project-{}.yaml", random_id()));
        std::fs::write(&file, declarations).unwrap();
        let admin = self.state_dir().join("admin-token");
        let mut args = vec![
            "issuer",
            "sync",
            "--declarations",
            file.to_str().unwrap(),
            "--environment",
            "main",
            "--issuer",
            &self.url,
            "--admin-token-file",
            admin.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run(&args, &[])
    }

    /// Syncs `declarations`, writing the credentials to [`Self::credentials_dir`].
    pub(crate) fn synced(&self, declarations: &str) {
        let dir = self.credentials_dir();
        let out = self.sync(declarations, &["--credentials-dir", dir.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
    }

    fn kill(&mut self) {
        // Drop kills the process (SIGKILL: an outage, not a shutdown).
        self.issuer = None;
    }

    fn restart(&mut self) {
        assert!(self.issuer.is_none());
        self.issuer = Some(Daemon::issuer(&self.config, &[]));
    }
}

/// `[trust]` of a remote sidecar asking `platform` with the credential of
/// `credential_of`.
fn remote_trust(platform: &Platform, credential_of: &str) -> String {
    format!(
        "mode = \"remote\"\nissuers = [\"{}\"]\nbootstrap = \"file:{}\"\n",
        platform.url,
        platform.credential_file(credential_of).display()
    )
}

/// A remote sidecar's config for `workload` in `dir`, with no declarations
/// file on disk: remote mode must not need one.
pub(crate) fn remote_config(
    dir: &Path,
    platform: &Platform,
    workload: &str,
    credential_of: &str,
) -> PathBuf {
    let trust = remote_trust(platform, credential_of);
    let cfg = write_config(
        dir,
        &Options {
            workload,
            trust_extra: &trust,
            ..Options::default()
        },
    );
    std::fs::remove_file(dir.join("project.yaml")).unwrap();
    cfg
}

pub(crate) async fn status_of(url: &str) -> u16 {
    client().get(url).send().await.unwrap().status().as_u16()
}

async fn metrics(url: &str) -> String {
    client()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The `grant` inside an access token, decoded (not verified).
fn grant_claims(token: &str) -> serde_json::Value {
    let grant = part(token, 1)["grant"].as_str().unwrap().to_owned();
    part(&grant, 1)
}

/// Issue #12's first end-to-end flow, with real processes only: the
/// issuer, `sync --credentials-dir`, a remote sidecar bootstrapping from
/// the file, and the example upstream trusting the issuer's JWKS.
#[tokio::test]
async fn a_remote_sidecar_mints_tokens_the_upstream_verifies_with_the_issuers_keys() {
    let platform = Platform::start("1h");
    platform.synced(E2E_PROJECT);
    let dir = tempfile::tempdir().unwrap();
    let cfg = remote_config(dir.path(), &platform, "app/web", "app/web");

    let started = Instant::now();
    let sidecar = Daemon::start(&cfg, "text", "info");
    while status_of(&format!("{}/readyz", sidecar.url)).await != 200 {
        assert!(started.elapsed() < Duration::from_secs(10), "never ready");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    eprintln!(
        "remote sidecar: exec → ready in {:?} (one issuer round trip included)",
        started.elapsed()
    );
    // No root key on this side.
    assert!(!dir.path().join("state").join("root-key.pem").exists());

    let auth = authproxy_layer::Authorizer::builder()
        .jwks_url(platform.jwks_url())
        .audience(AUDIENCE)
        .environment("main")
        .build()
        .await
        .unwrap();
    let (api, _stop) = serve(crate::environment_api::app(&auth, "main")).await;
    let (status, body) = request_token(
        &format!("{}/oauth2/token", sidecar.url),
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap();
    let (st, _, queued) = call(
        Method::POST,
        &format!("{api}/tasks/send-report/runs"),
        Some(token),
    )
    .await;
    assert_eq!(st, 202, "{queued}");
    assert_eq!(queued["triggered_by"], "app/web");
    // The ceiling is the issuer's, from the synced declarations.
    let (st, _, _) = call(
        Method::POST,
        &format!("{api}/tasks/notify/runs"),
        Some(token),
    )
    .await;
    assert_eq!(st, 403);
    let grant = grant_claims(token);
    assert_eq!(grant["iss"], platform.url.as_str());
    assert_eq!(grant["sub"], "app/web");

    // The JWKS a remote sidecar serves is the issuer's.
    let ours: serde_json::Value = client()
        .get(format!("{}/.well-known/jwks.json", sidecar.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let theirs: serde_json::Value = client()
        .get(platform.jwks_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ours, theirs);

    // `authproxy health` checks the proof against the issuer's keys.
    let out = run(
        &[
            "health",
            "--endpoint",
            &sidecar.url,
            "--config",
            cfg.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    // …and `authproxy jwks` says where the keys are instead.
    let out = run(&["jwks", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(stderr(&out).contains(&platform.jwks_url()), "{out:?}");
}

/// A credential is bound to its workload and environment: used by a
/// sidecar configured as another workload it gets no grant, so that
/// sidecar never starts and no token for that workload can exist.
#[tokio::test]
async fn a_credential_gets_no_grant_for_another_workload() {
    let platform = Platform::start("1h");
    platform.synced(E2E_PROJECT);
    let credential = std::fs::read_to_string(platform.credential_file("app/web")).unwrap();
    for (workload, env, status) in [
        ("task/send-report", "main", "HTTP 403"),
        ("worker/web/queue", "main", "HTTP 403"),
        // Not synced in that environment.
        ("app/web", "staging", "HTTP 404"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = remote_config(dir.path(), &platform, workload, "app/web");
        let out = run(
            &["serve", "--config", cfg.to_str().unwrap()],
            &[
                ("AUTHPROXY__SERVER__LISTEN", "127.0.0.1:0"),
                ("AUTHPROXY__WORKLOAD__ENVIRONMENT", env),
            ],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(64), "{workload}: {err}");
        assert!(
            err.contains(&format!(
                "`trust.bootstrap` = file:{}: {} refused the bootstrap credential ({status}",
                platform.credential_file("app/web").display(),
                platform.url
            )),
            "{workload}: {err}"
        );
        assert!(!err.contains(credential.trim()), "{err}");
    }
    // An unknown credential: 401, and the same refusal.
    let dir = tempfile::tempdir().unwrap();
    let cfg = remote_config(dir.path(), &platform, "app/web", "app/web");
    let forged = dir.path().join("forged");
    std::fs::write(&forged, "ap_wc_not-a-credential-the-issuer-made").unwrap();
    let out = run(
        &["serve", "--config", cfg.to_str().unwrap()],
        &[
            ("AUTHPROXY__SERVER__LISTEN", "127.0.0.1:0"),
            (
                "AUTHPROXY__TRUST__BOOTSTRAP",
                &format!("file:{}", forged.display()),
            ),
        ],
    );
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(stderr(&out).contains("HTTP 401"), "{out:?}");
    assert!(!stderr(&out).contains("not-a-credential"), "{out:?}");
}

/// The outage: with the issuer killed, tokens keep coming from the grant in
/// force; once it has expired, 503 and not ready; with the issuer back
/// (same state and store), the sidecar recovers without a restart.
#[tokio::test]
async fn an_issuer_outage_is_invisible_until_the_grant_expires() {
    let mut platform = Platform::start("1m");
    platform.synced(E2E_PROJECT);
    let trust = remote_trust(&platform, "app/web");
    let s = spawn_sidecar(Options {
        trust_extra: &trust,
        // Every request mints: the outage must not hide behind the cache.
        tokens_extra: "reuse = false",
        ..Options::default()
    })
    .await;
    let auth = authproxy_layer::Authorizer::builder()
        .jwks_url(platform.jwks_url())
        .audience(AUDIENCE)
        .environment("main")
        .build()
        .await
        .unwrap();
    let (api, _stop) = serve(crate::environment_api::app(&auth, "main")).await;
    let grant = s.sidecar.grant();
    let exp = grant.claims().exp;
    assert_eq!(exp - grant.claims().iat, 60);

    platform.kill();
    let e = s.daemon.renew(now()).await.unwrap_err();
    assert!(matches!(e, GrantError::Unavailable(_)), "{e}");
    assert!(e.to_string().contains("unreachable"), "{e}");
    // The failed renewal left the grant in force.
    assert_eq!(s.sidecar.grant().claims().jti, grant.claims().jti);

    let outage = Instant::now();
    for i in 0..40 {
        let (status, body) =
            request_token(&s.token_url(), &[("grant_type", "client_credentials")]).await;
        assert_eq!(status, 200, "request {i} during the outage: {body}");
        if i % 10 == 0 {
            let token = body["access_token"].as_str().unwrap();
            let (st, _, _) = call(Method::GET, &format!("{api}/environment"), Some(token)).await;
            assert_eq!(st, 200);
        }
    }
    eprintln!(
        "issuer down: 40 of 40 token requests served in {:?}",
        outage.elapsed()
    );
    assert_eq!(status_of(&format!("{}/readyz", s.url)).await, 200);
    assert!(
        metrics(&s.url)
            .await
            .contains("authproxy_grant_renewals_total{result=\"unavailable\"} 1"),
    );

    // Time is a parameter: ready up to the grant's expiry, not at it, and
    // nothing is minted after it.
    assert!(s.daemon.is_ready(exp - 1));
    assert!(!s.daemon.is_ready(exp));
    assert!(
        s.sidecar
            .mint_fresh(&s.sidecar.ceiling(), 300, exp)
            .is_err()
    );

    // Over HTTP, without waiting the minute: the grant the issuer's key
    // signed a minute earlier, now expired, for the sidecar's key.
    let root = SigningKey::from_pkcs8_pem(
        &std::fs::read(platform.state_dir().join("root-key.pem")).unwrap(),
    )
    .unwrap();
    let expired = Grant::issue(
        &root,
        GrantRequest {
            issuer: &platform.url,
            workload: &"app/web".parse::<WorkloadId>().unwrap(),
            environment: &Environment::parse("main").unwrap(),
            ceiling: &s.sidecar.ceiling(),
            sidecar_key: &s.sidecar.public_key(),
            ttl_secs: 60,
        },
        now() - 61,
        random_id(),
    )
    .unwrap();
    s.sidecar.install(expired);
    let (status, body) =
        request_token(&s.token_url(), &[("grant_type", "client_credentials")]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
    assert_eq!(status_of(&format!("{}/readyz", s.url)).await, 503);

    platform.restart();
    s.daemon.renew(now()).await.unwrap();
    assert_eq!(status_of(&format!("{}/readyz", s.url)).await, 200);
    let token = token(&s, None).await;
    let (st, _, queued) = call(
        Method::POST,
        &format!("{api}/tasks/send-report/runs"),
        Some(&token),
    )
    .await;
    assert_eq!(st, 202, "{queued}");
    assert!(
        metrics(&s.url)
            .await
            .contains("authproxy_grant_renewals_total{result=\"ok\"} 1"),
    );
}

/// The real sidecar through an outage: SIGHUP asks for a grant now; with
/// the issuer down it keeps the one it has (tokens still served), and once
/// the issuer is back the next SIGHUP renews — no restart.
#[tokio::test]
async fn sighup_renews_at_once_and_an_outage_only_delays_it() {
    let mut platform = Platform::start("1h");
    platform.synced(E2E_PROJECT);
    let dir = tempfile::tempdir().unwrap();
    let cfg = remote_config(dir.path(), &platform, "app/web", "app/web");
    let sidecar = Daemon::start(&cfg, "text", "info");
    let token_url = format!("{}/oauth2/token", sidecar.url);
    let form = [("grant_type", "client_credentials")];
    let (_, first) = request_token(&token_url, &form).await;
    let first_grant = grant_claims(first["access_token"].as_str().unwrap());

    platform.kill();
    sidecar.signal("-HUP");
    let line = sidecar.wait_log("SIGHUP: no new grant");
    assert!(line.contains("unreachable"), "{line}");
    let (status, body) = request_token(&token_url, &form).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(status_of(&format!("{}/readyz", sidecar.url)).await, 200);

    platform.restart();
    sidecar.signal("-HUP");
    sidecar.wait_log("grant renewed");
    let (status, body) = request_token(&token_url, &form).await;
    assert_eq!(status, 200, "{body}");
    let renewed = grant_claims(body["access_token"].as_str().unwrap());
    assert_ne!(renewed["jti"], first_grant["jti"]);
    // A fresh sidecar key per remote grant.
    assert_ne!(renewed["cnf"]["jkt"], first_grant["cnf"]["jkt"]);
    let m = metrics(&sidecar.url).await;
    assert!(
        m.contains("authproxy_grant_renewals_total{result=\"unavailable\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("authproxy_grant_renewals_total{result=\"ok\"} 1"),
        "{m}"
    );
}

/// Remote-mode configuration errors stop the sidecar before it binds,
/// with exit status 64 and the key named; an issuer that stays unreachable
/// for `trust.initial_grant_timeout` ends it with status 1.
#[test]
fn remote_mode_configuration_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let credential = dir.path().join("credential");
    std::fs::write(&credential, "ap_wc_whatever").unwrap();
    let closed = format!("http://{}", closed_addr());
    let cfg = write_config(
        dir.path(),
        &Options {
            trust_extra: &format!(
                "mode = \"remote\"\nissuers = [\"{closed}\"]\nbootstrap = \"file:{}\"\ninitial_grant_timeout = \"1s\"\n",
                credential.display()
            ),
            ..Options::default()
        },
    );
    let serve = |envs: &[(&str, &str)]| {
        let mut all = vec![("AUTHPROXY__SERVER__LISTEN", "127.0.0.1:0")];
        all.extend_from_slice(envs);
        run(&["serve", "--config", cfg.to_str().unwrap()], &all)
    };
    for (envs, expected) in [
        (
            &[("AUTHPROXY__TRUST__ISSUERS", "")][..],
            "`trust.issuers` is required",
        ),
        (
            &[("AUTHPROXY__TRUST__ISSUERS", "issuer:8400")],
            "`trust.issuers`",
        ),
        (
            &[("AUTHPROXY__TRUST__BOOTSTRAP", "ap_wc_PASTED_BY_MISTAKE")],
            "`trust.bootstrap` must be env:VARIABLE or file:PATH",
        ),
        (
            &[(
                "AUTHPROXY__TRUST__BOOTSTRAP",
                "env:AUTHPROXY_TEST_VARIABLE_NOBODY_SETS",
            )],
            "`trust.bootstrap` = env:AUTHPROXY_TEST_VARIABLE_NOBODY_SETS: the environment variable AUTHPROXY_TEST_VARIABLE_NOBODY_SETS is not set",
        ),
        (
            &[(
                "AUTHPROXY__TRUST__BOOTSTRAP",
                "file:/nonexistent/credential",
            )],
            "`trust.bootstrap` = file:/nonexistent/credential: cannot read",
        ),
        (
            &[("AUTHPROXY__TRUST__MODE", "embedded")],
            "`trust.issuers` is a remote-mode key",
        ),
    ] {
        let out = serve(envs);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(64), "{envs:?}: {err}");
        assert!(err.contains(cfg.to_str().unwrap()), "{envs:?}: {err}");
        assert!(err.contains(expected), "{envs:?}: {err}");
        assert!(!err.contains("PASTED_BY_MISTAKE"), "{err}");
    }
    // Nothing listens at the issuer: retried for the timeout, then exit 1.
    let started = Instant::now();
    let out = serve(&[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no grant within `trust.initial_grant_timeout` = 1s")
            && err.contains("unreachable"),
        "{err}"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(!err.contains("ap_wc_whatever"), "{err}");
}

/// The next version of [`E2E_PROJECT`]: web loses `send-report` (web and
/// its inheriting queue worker are updated), the mailer worker is gone
/// (removed), a `cleanup` task appears (created), the tasks stay
/// (unchanged).
const E2E_PROJECT_V2: &str = "\
applications:
  web:
    authorizations:
      - { type: env, action: view }
    workers:
      queue: {}
tasks:
  send-report:
    authorizations:
      - { type: task, action: operate, resource: notify }
  notify: {}
  cleanup: {}
";

/// The row of `workload` in a plan table, split into its columns.
fn row<'a>(table: &'a str, workload: &str) -> Vec<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(workload))
        .unwrap_or_else(|| panic!("no row for {workload}:\n{table}"))
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

/// `authproxy issuer sync`: the plan for each change kind, credentials
/// written once to 0600 files or printed once, and `--dry-run` changing
/// nothing.
#[tokio::test]
async fn sync_prints_the_plan_and_hands_out_each_credential_once() {
    let platform = Platform::start("1h");
    let creds = platform.credentials_dir();
    let creds_arg = ["--credentials-dir", creds.to_str().unwrap()];

    // A dry run: the plan, no credential, nothing written, nothing applied.
    let dry: Vec<&str> = [&creds_arg[..], &["--dry-run"]].concat();
    for _ in 0..2 {
        let out = platform.sync(E2E_PROJECT, &dry);
        assert!(out.status.success(), "{out:?}");
        let table = stdout(&out);
        assert!(
            table.starts_with("environment main: dry run, nothing applied\n"),
            "{table}"
        );
        assert_eq!(
            row(&table, "app/web"),
            [
                "created",
                "app/web",
                "app/web (new)",
                "task:operate:send-report env:view"
            ]
        );
        assert!(table.contains("5 created, 0 updated, 0 unchanged, 0 removed"));
        assert!(!table.contains("ap_wc_"), "{table}");
        assert!(!creds.exists() || std::fs::read_dir(&creds).unwrap().count() == 0);
    }

    // Applied: one 0600 file per workload, named after it; nothing printed.
    let out = platform.sync(E2E_PROJECT, &creds_arg);
    assert!(out.status.success(), "{out:?}");
    let table = stdout(&out);
    assert!(table.starts_with("environment main: applied\n"), "{table}");
    assert!(!table.contains("ap_wc_"), "{table}");
    let mut files: Vec<String> = std::fs::read_dir(&creds)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "app_web",
            "task_notify",
            "task_send-report",
            "worker_web_mailer",
            "worker_web_queue"
        ]
    );
    for f in &files {
        let path = creds.join(f);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600,
            "{f}"
        );
        let value = std::fs::read_to_string(&path).unwrap();
        assert!(value.starts_with("ap_wc_") && value.ends_with('\n'), "{f}");
        assert!(
            table.contains(&format!("written to {}", path.display())),
            "{table}"
        );
    }
    let app_web = std::fs::read_to_string(creds.join("app_web")).unwrap();

    // Idempotent: everything unchanged, no credential.
    let out = platform.sync(E2E_PROJECT, &creds_arg);
    let table = stdout(&out);
    assert!(
        table.contains("0 created, 0 updated, 5 unchanged, 0 removed"),
        "{table}"
    );
    assert_eq!(
        std::fs::read_to_string(creds.join("app_web")).unwrap(),
        app_web
    );

    // The next version, planned: each change kind; then applied without
    // --credentials-dir: the one new credential is printed, once.
    let out = platform.sync(E2E_PROJECT_V2, &["--dry-run"]);
    let planned = stdout(&out);
    let out = platform.sync(E2E_PROJECT_V2, &[]);
    assert!(out.status.success(), "{out:?}");
    let table = stdout(&out);
    assert_eq!(
        planned.replace("dry run, nothing applied", "applied"),
        table.split("\nNew workload credentials").next().unwrap()
    );
    assert_eq!(
        row(&table, "app/web"),
        [
            "updated",
            "app/web",
            "app/web",
            "task:operate:send-report env:view → env:view"
        ]
    );
    assert_eq!(row(&table, "worker/web/queue")[0], "updated");
    assert_eq!(
        row(&table, "task/cleanup"),
        ["created", "task/cleanup", "task/cleanup (new)", "(none)"]
    );
    assert_eq!(
        row(&table, "task/send-report"),
        [
            "unchanged",
            "task/send-report",
            "task/send-report",
            "task:operate:notify"
        ]
    );
    assert_eq!(
        row(&table, "worker/web/mailer"),
        [
            "removed",
            "worker/web/mailer",
            "worker/web/mailer",
            "task:operate:notify"
        ]
    );
    assert!(
        table.contains("1 created, 2 updated, 2 unchanged, 1 removed"),
        "{table}"
    );
    let printed: Vec<&str> = table.lines().filter(|l| l.contains("ap_wc_")).collect();
    assert_eq!(printed.len(), 1, "{table}");
    assert!(printed[0].starts_with("task/cleanup  ap_wc_"), "{table}");

    // JSON: the issuer's plan object.
    let out = platform.sync(E2E_PROJECT_V2, &["--format", "json"]);
    assert!(out.status.success(), "{out:?}");
    let plan: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(plan["environment"], "main");
    assert_eq!(plan["dry_run"], false);
    assert_eq!(plan["created"], serde_json::json!([]));
    assert_eq!(plan["unchanged"].as_array().unwrap().len(), 5);
    assert_eq!(plan["credentials"], serde_json::json!({}));
}

/// The sync verb's refusals: invalid declarations (checked before anything
/// is sent), a missing admin token file (64), a wrong admin token (1).
#[tokio::test]
async fn sync_refusals_say_what_is_wrong() {
    let platform = Platform::start("1h");
    let out = platform.sync("applications:\n  Web: {}\n", &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains("project-"), "{out:?}");
    assert!(stderr(&out).contains("Web"), "{out:?}");

    let out = run(
        &[
            "issuer",
            "sync",
            "--declarations",
            "config/project.yaml",
            "--environment",
            "main",
            "--issuer",
            &platform.url,
        ],
        &[("AUTHPROXY_ADMIN_TOKEN_FILE", "/nonexistent/admin-token")],
    );
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(stderr(&out).contains("/nonexistent/admin-token"), "{out:?}");

    let wrong = platform.dir.path().join("wrong-token");
    std::fs::write(&wrong, "ap_admin_not-the-token").unwrap();
    let out = run(
        &[
            "issuer",
            "sync",
            "--declarations",
            "config/project.yaml",
            "--environment",
            "main",
            "--admin-token-file",
            wrong.to_str().unwrap(),
        ],
        &[(
            "AUTHPROXY_ISSUER",
            platform.url.trim_start_matches("http://"),
        )],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains("refused the admin token"), "{out:?}");
}

/// `authproxy issuer serve` refuses a bad configuration naming file and
/// key, and stops on SIGTERM.
#[test]
fn the_issuer_refuses_a_bad_config_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("issuer.toml");
    std::fs::write(&config, "[issuer]\ngrant_ttl = \"30d\"\n").unwrap();
    let out = run(
        &["issuer", "serve", "--config", config.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains(config.to_str().unwrap()) && err.contains("`issuer.grant_ttl`"),
        "{err}"
    );
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[issuer]\nstate_dir = \"{}\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let mut issuer = Daemon::issuer(&config, &[]);
    issuer.signal("-TERM");
    assert!(issuer.wait_exit(Duration::from_secs(10)).success());
    // The admin token and the root key stay in the state directory, 0600.
    for f in ["admin-token", "root-key.pem"] {
        let mode = std::fs::metadata(dir.path().join("state").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
}

/// How a fake issuer answers `POST /v1/grants`.
#[derive(Clone, Copy, Debug)]
enum Fake {
    /// A grant for another workload, binding the sidecar's key.
    OtherWorkload,
    /// A grant for this workload, binding another key.
    OtherKey,
    /// A grant for this workload and key, in another environment.
    OtherEnvironment,
    /// A grant signed by a root key its JWKS does not publish.
    ForeignRoot,
    /// 503.
    Down,
}

/// An issuer that answers grants that must not be used (or 503): its
/// JWKS publishes `root`, its grants are signed by `root` unless told
/// otherwise.
async fn fake_issuer(fake: Fake) -> (String, tokio::sync::oneshot::Sender<()>) {
    use axum::routing::{get, post};
    let root = std::sync::Arc::new(SigningKey::generate().unwrap());
    let jwks = serde_json::to_value(authproxy_core::keys::Jwks::publish([root.public()])).unwrap();
    let app = axum::Router::new()
        .route(
            "/.well-known/jwks.json",
            get(move || async move { axum::Json(jwks) }),
        )
        .route(
            "/v1/grants",
            post(
                move |axum::Json(body): axum::Json<serde_json::Value>| async move {
                    if matches!(fake, Fake::Down) {
                        return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
                    }
                    let jwk: jsonwebtoken::jwk::Jwk =
                        serde_json::from_value(body["public_key"].clone()).unwrap();
                    let requested = authproxy_core::keys::PublicKey::from_jwk(&jwk).unwrap();
                    let other = SigningKey::generate().unwrap();
                    let foreign = SigningKey::generate().unwrap();
                    let (workload, environment, key, signer) = match fake {
                        Fake::OtherWorkload => ("task/notify", "main", &requested, &*root),
                        Fake::OtherKey => ("app/web", "main", other.public(), &*root),
                        Fake::OtherEnvironment => ("app/web", "staging", &requested, &*root),
                        Fake::ForeignRoot | Fake::Down => ("app/web", "main", &requested, &foreign),
                    };
                    let grant = Grant::issue(
                        signer,
                        GrantRequest {
                            issuer: "http://fake",
                            workload: &workload.parse::<WorkloadId>().unwrap(),
                            environment: &Environment::parse(environment).unwrap(),
                            ceiling: &authproxy_core::ScopeSet::parse("env:view").unwrap(),
                            sidecar_key: key,
                            ttl_secs: 3600,
                        },
                        now(),
                        random_id(),
                    )
                    .unwrap();
                    Ok(axum::Json(serde_json::json!({
                        "grant": grant.compact(),
                        "expires_at": "2099-01-01T00:00:00Z",
                    })))
                },
            ),
        );
    serve(app).await
}

/// An issuer served in process, synced with [`E2E_PROJECT`]; returns its
/// URL, what stops it, and the credentials sync created.
async fn in_process_issuer(
    dir: &Path,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    serde_json::Map<String, serde_json::Value>,
) {
    let state = dir.join("issuer");
    let config = dir.join("issuer.toml");
    std::fs::write(
        &config,
        format!("[issuer]\nstate_dir = \"{}\"\n", state.display()),
    )
    .unwrap();
    let config =
        authproxy_issuer::IssuerConfig::load_with_env(&config, Some(Default::default())).unwrap();
    let issuer = std::sync::Arc::new(authproxy_issuer::Issuer::open(config, now()).await.unwrap());
    let (url, stop) = serve(authproxy_issuer::router(issuer)).await;
    let admin = std::fs::read_to_string(state.join("admin-token")).unwrap();
    let plan: serde_json::Value = client()
        .post(format!("{url}/v1/sync?environment=main"))
        .bearer_auth(admin.trim())
        .body(E2E_PROJECT)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (url, stop, plan["credentials"].as_object().unwrap().clone())
}

/// Starts a remote sidecar for app/web in process with `issuers`; the
/// error if it does not start.
async fn start_remote(
    dir: &Path,
    issuers: &[&str],
    credential: &str,
) -> Result<authproxy::daemon::Daemon, authproxy::daemon::StartupError> {
    let file = dir.join("credential");
    std::fs::write(&file, credential).unwrap();
    let list = issuers
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let cfg = write_config(
        dir,
        &Options {
            trust_extra: &format!(
                "mode = \"remote\"\nissuers = [{list}]\nbootstrap = \"file:{}\"\ninitial_grant_timeout = \"0s\"\n",
                file.display()
            ),
            ..Options::default()
        },
    );
    let config = authproxy::config::Config::load_with_env(&cfg, Some(Default::default())).unwrap();
    authproxy::daemon::Daemon::start(config, now()).await
}

/// The sidecar verifies what it is handed: a grant for another workload,
/// key or environment, or signed by a key the issuer does not publish, is
/// refused — and the next issuer asked, as after a 503 or no answer.
#[tokio::test]
async fn a_grant_that_does_not_verify_is_refused_and_the_next_issuer_asked() {
    for (fake, reason) in [
        (
            Fake::OtherWorkload,
            "it is for workload task/notify, not app/web",
        ),
        (Fake::OtherKey, "it binds another key"),
        (Fake::OtherEnvironment, "environment"),
        (Fake::ForeignRoot, "root"),
        (Fake::Down, "HTTP 503"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (url, _stop) = fake_issuer(fake).await;
        let e = start_remote(dir.path(), &[&url], "ap_wc_whatever")
            .await
            .unwrap_err();
        assert!(!e.is_usage(), "{fake:?}: {e}");
        let e = e.to_string();
        assert!(e.contains("no grant within"), "{fake:?}: {e}");
        assert!(e.contains(&url) && e.contains(reason), "{fake:?}: {e}");
    }

    // Through the list in order: nothing listening, a 503, a bad grant,
    // then the real issuer.
    let dir = tempfile::tempdir().unwrap();
    let (real, _stop, credentials) = in_process_issuer(dir.path()).await;
    let closed = format!("http://{}", closed_addr());
    let (down, _s1) = fake_issuer(Fake::Down).await;
    let (bad, _s2) = fake_issuer(Fake::OtherKey).await;
    let sidecar_dir = tempfile::tempdir().unwrap();
    let daemon = start_remote(
        sidecar_dir.path(),
        &[&closed, &down, &bad, &real],
        credentials["app/web"].as_str().unwrap(),
    )
    .await
    .unwrap();
    let grant = daemon.sidecar().grant();
    assert_eq!(grant.subject().to_string(), "app/web");
    assert!(daemon.is_ready(now()));
}

/// Kubernetes bootstrap end to end, with the real binaries: a sidecar whose
/// bootstrap file is a projected service-account token (minted here as a
/// kube-apiserver would, audience `authproxy`) gets a grant for the workload
/// its service account is bound to, and its tokens pass the upstream; a
/// token of a service account bound to nothing gets no grant.
#[tokio::test]
async fn a_projected_service_account_token_bootstraps_a_remote_sidecar() {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    let cluster = tempfile::tempdir().unwrap();
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let encoding = EncodingKey::from_ec_der(pair.to_pkcs8v1().unwrap().as_ref());
    let jwk = serde_json::to_value(
        jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap(),
    )
    .unwrap();
    let jwks = serde_json::json!({"keys": [{
        "use": "sig", "kty": "EC", "crv": "P-256", "kid": "cluster-1", "alg": "ES256",
        "x": jwk["x"], "y": jwk["y"],
    }]});
    let jwks_file = cluster.path().join("cluster-jwks.json");
    std::fs::write(&jwks_file, jwks.to_string()).unwrap();
    let sa_token = |namespace: &str, name: &str| {
        let now = now();
        let claims = serde_json::json!({
            "aud": ["authproxy"], "iss": "https://kubernetes.default.svc",
            "iat": now, "nbf": now, "exp": now + 3600,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": name, "uid": "9f8e7d6c-0000-4000-8000-000000000003"},
                "pod": {"name": format!("{name}-5d8f7c9b4-x2x7k"), "uid": "1d2c3b4a-0000-4000-8000-000000000002"},
            },
        });
        let mut header = Header::new(Algorithm::ES256);
        header.typ = None;
        header.kid = Some("cluster-1".into());
        jsonwebtoken::encode(&header, &claims, &encoding).unwrap()
    };

    let platform = Platform::start_with(
        "1h",
        &format!(
            "[kubernetes]\nissuer = \"https://kubernetes.default.svc\"\njwks_file = \"{}\"\n\
             [[kubernetes.bindings]]\nservice_account = \"main:web\"\nworkload = \"app/web\"\nenvironment = \"main\"\n",
            jwks_file.display()
        ),
    );
    platform.synced(E2E_PROJECT);

    // The projected token, as the kubelet writes it into the pod.
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("sa-token");
    std::fs::write(&token_file, sa_token("main", "web")).unwrap();
    let trust = format!(
        "mode = \"remote\"\nissuers = [\"{}\"]\nbootstrap = \"file:{}\"\n",
        platform.url,
        token_file.display()
    );
    let cfg = write_config(
        dir.path(),
        &Options {
            workload: "app/web",
            trust_extra: &trust,
            ..Options::default()
        },
    );
    std::fs::remove_file(dir.path().join("project.yaml")).unwrap();
    let sidecar = Daemon::start(&cfg, "text", "info");
    let started = Instant::now();
    while status_of(&format!("{}/readyz", sidecar.url)).await != 200 {
        assert!(started.elapsed() < Duration::from_secs(10), "never ready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let auth = authproxy_layer::Authorizer::builder()
        .jwks_url(platform.jwks_url())
        .audience(AUDIENCE)
        .environment("main")
        .build()
        .await
        .unwrap();
    let (api, _stop) = serve(crate::environment_api::app(&auth, "main")).await;
    let (status, body) = request_token(
        &format!("{}/oauth2/token", sidecar.url),
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (st, _, queued) = call(
        Method::POST,
        &format!("{api}/tasks/send-report/runs"),
        Some(body["access_token"].as_str().unwrap()),
    )
    .await;
    assert_eq!(st, 202, "{queued}");
    assert_eq!(queued["triggered_by"], "app/web");
    drop(sidecar);

    // A service account bound to nothing: no grant, the sidecar refuses to
    // start (the bootstrap was refused: a usage error naming the key).
    std::fs::write(&token_file, sa_token("main", "intruder")).unwrap();
    // (`timeout`: were it granted, it would serve until killed.)
    let out = Command::new("timeout")
        .args(["20", BIN, "serve", "--config", cfg.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(stderr(&out).contains("trust.bootstrap"), "{}", stderr(&out));
}
