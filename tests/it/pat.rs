//! `authproxy pat …` and `authproxy issuer grants revoke` (DESIGN §9,
//! issue #13): the real binary against the real `authproxy issuer serve`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::path::PathBuf;
use std::process::{Command, Output};

use authproxy_core::keys::{Jwks, SigningKey};
use authproxy_core::verify::Verifier;
use authproxy_core::{Environment, Subject};
use serde_json::{Value, json};

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_authproxy");

/// `aud` of tokens the issuer exchanges without `resource`.
const PAT_AUDIENCE: &str = "https://api.pat.test";

/// A real issuer process with its own state directory.
struct Issuer {
    dir: tempfile::TempDir,
    daemon: Daemon,
}

impl Issuer {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("issuer.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[issuer]\nurl = \"http://issuer.test:8400\"\n\
                 state_dir = \"{}\"\n[tokens]\naudience = \"{PAT_AUDIENCE}\"\n",
                dir.path().join("state").display()
            ),
        )
        .unwrap();
        let daemon = Daemon::issuer(&config, &[]);
        Self { dir, daemon }
    }

    fn url(&self) -> &str {
        &self.daemon.url
    }

    fn admin_token_file(&self) -> PathBuf {
        self.dir.path().join("state").join("admin-token")
    }

    /// Runs the binary with `args`, then `--issuer` and `--admin-token-file`.
    fn cli(&self, args: &[&str]) -> Output {
        let admin = self.admin_token_file();
        let mut all = args.to_vec();
        all.extend([
            "--issuer",
            self.url(),
            "--admin-token-file",
            admin.to_str().unwrap(),
        ]);
        run(&all, &[])
    }

    /// `pat create` with 60 minutes; expects success and returns the value.
    fn created(&self, name: &str, scopes: &[&str]) -> String {
        let mut args = vec![
            "pat",
            "create",
            "--name",
            name,
            "--environment",
            "main",
            "--valid-minutes",
            "60",
        ];
        for s in scopes {
            args.extend(["--scopes", s]);
        }
        let out = self.cli(&args);
        assert!(out.status.success(), "{out:?}");
        stdout(&out).trim().to_owned()
    }

    async fn get(&self, path: &str) -> Value {
        client()
            .get(format!("{}{path}", self.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn exchange(&self, value: &str) -> (u16, Value) {
        let res = client()
            .post(format!("{}/oauth2/token", self.url()))
            .basic_auth("ci", Some(value))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }
}

/// Runs the binary to completion, with none of the caller's authproxy variables.
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

#[track_caller]
fn fails(out: &Output, code: i32, needle: &str) {
    assert_eq!(out.status.code(), Some(code), "{out:?}");
    assert!(stderr(out).contains(needle), "{needle:?} not in {out:?}");
    assert!(!stdout(out).contains("ap_pat_"), "{out:?}");
}

/// Create prints the value once (table: alone on stdout, a note on stderr;
/// json: the issuer's answer); list and show never print one; update
/// prints a new one and revokes the old; delete revokes. The values work at
/// the issuer's exchange until revoked.
#[tokio::test]
async fn the_pat_verbs_print_a_value_only_on_create_and_update() {
    let issuer = Issuer::start();
    let out = issuer.cli(&[
        "pat",
        "create",
        "--name",
        "ci.deploy",
        "--environment",
        "main",
        "--valid-minutes",
        "90",
        "--scopes",
        "task:operate:*",
        "--scopes",
        "env:view",
    ]);
    assert!(out.status.success(), "{out:?}");
    let value = stdout(&out);
    assert_eq!(value.lines().count(), 1, "{value}");
    let value = value.trim().to_owned();
    assert!(value.starts_with("ap_pat_"), "{value}");
    let note = stderr(&out);
    assert_eq!(note.lines().count(), 1, "{note}");
    assert!(
        note.contains("shown once") && note.contains("ci.deploy"),
        "{note}"
    );
    assert!(!note.contains("ap_pat_"), "{note}");

    let out = issuer.cli(&[
        "pat",
        "create",
        "--name",
        "laptop",
        "--environment",
        "main",
        "--valid-minutes",
        "60",
        "--scopes",
        "env:*",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let created: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(created["value"].as_str().unwrap().starts_with("ap_pat_"));
    assert_eq!(created["pat"]["name"], "laptop");
    assert_eq!(created["pat"]["scopes"], json!(["env:*"]));

    for args in [
        &["pat", "list"][..],
        &["pat", "list", "--format", "json"][..],
        &["pat", "show", "--name", "ci.deploy"][..],
        &["pat", "show", "--name", "ci.deploy", "--format", "json"][..],
    ] {
        let out = issuer.cli(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        let printed = stdout(&out);
        assert!(!printed.contains("ap_pat_"), "{args:?}: {printed}");
        assert!(printed.contains("ci.deploy"), "{args:?}: {printed}");
    }
    let table = stdout(&issuer.cli(&["pat", "list"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME       ENVIRONMENT  SCOPES"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("ci.deploy  main         env:view task:operate:*  "),
        "{table}"
    );
    assert!(lines[1].ends_with("never"), "{table}");
    assert!(lines[2].starts_with("laptop "), "{table}");
    let shown = stdout(&issuer.cli(&["pat", "show", "--name", "ci.deploy"]));
    assert!(
        shown.starts_with("name         ci.deploy\nenvironment  main\n"),
        "{shown}"
    );

    // The value works at the issuer's exchange, and the token verifies.
    let (status, token) = issuer.exchange(&value).await;
    assert_eq!(status, 200, "{token}");
    let jwks = client()
        .get(format!("{}/.well-known/jwks.json", issuer.url()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let roots = Jwks::from_json(&jwks).unwrap().usable_keys();
    let verifier = Verifier::new(
        PAT_AUDIENCE.into(),
        Environment::parse("main").unwrap(),
        0,
        8,
    );
    let verified = verifier
        .verify(token["access_token"].as_str().unwrap(), &roots, now())
        .unwrap();
    assert_eq!(*verified.sub(), "pat:ci.deploy".parse::<Subject>().unwrap());
    let shown: Value = serde_json::from_str(&stdout(&issuer.cli(&[
        "pat",
        "show",
        "--name",
        "ci.deploy",
        "--format",
        "json",
    ])))
    .unwrap();
    assert_eq!(verified.pat_id(), shown["id"].as_str());
    assert!(
        shown["last_used_at"].is_string(),
        "the exchange is a use: {shown}"
    );

    // Update: a new value, the old one revoked; the scopes changed.
    let out = issuer.cli(&[
        "pat",
        "update",
        "--name",
        "ci.deploy",
        "--scopes",
        "env:view",
    ]);
    assert!(out.status.success(), "{out:?}");
    let new_value = stdout(&out).trim().to_owned();
    assert!(new_value.starts_with("ap_pat_") && new_value != value);
    assert!(
        stderr(&out).contains("previous value is revoked"),
        "{out:?}"
    );
    let feed = issuer.get("/v1/revocations").await;
    assert_eq!(feed["revocations"][0]["id"], shown["id"]);
    assert_eq!(issuer.exchange(&value).await.0, 401);
    let (status, token) = issuer.exchange(&new_value).await;
    assert_eq!((status, token["scope"].as_str()), (200, Some("env:view")));
    let out = issuer.cli(&[
        "pat",
        "update",
        "--name",
        "ci.deploy",
        "--valid-minutes",
        "5",
        "--format",
        "json",
    ]);
    let updated: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(updated["pat"]["scopes"], json!(["env:view"]));
    let newest = updated["value"].as_str().unwrap().to_owned();

    // Delete: revoked.
    let out = issuer.cli(&["pat", "delete", "--name", "ci.deploy"]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("deleted"), "{out:?}");
    assert_eq!(issuer.exchange(&newest).await.0, 401);
    let out = issuer.cli(&["pat", "delete", "--name", "laptop", "--format", "json"]);
    let deleted: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(deleted, json!({"name": "laptop", "deleted": true}));
    assert_eq!(
        stdout(&issuer.cli(&["pat", "list"])),
        "no personal access tokens\n"
    );
    let feed = issuer.get("/v1/revocations").await;
    assert_eq!(feed["revocations"].as_array().unwrap().len(), 4, "{feed}");
}

/// Every refusal says why: 64 for what is wrong on its face, 1 for what the
/// issuer refuses (with its description).
#[tokio::test]
async fn the_pat_verbs_refuse_with_the_reason() {
    let issuer = Issuer::start();
    issuer.created("ci", &["env:view"]);
    let create = |name: &str, minutes: &str, scopes: &[&str]| {
        let mut args = vec![
            "pat",
            "create",
            "--name",
            name,
            "--environment",
            "main",
            "--valid-minutes",
            minutes,
        ];
        for s in scopes {
            args.extend(["--scopes", s]);
        }
        issuer.cli(&args)
    };
    fails(&create("ci", "60", &["env:view"]), 1, "named `ci` exists");
    fails(&create("ci", "60", &["env:view"]), 1, "HTTP 409 name_taken");
    fails(
        &create("x", "60", &["task:operate:x*"]),
        64,
        "task:operate:x*",
    );
    fails(&create("x", "60", &["db:view"]), 64, "db:view");
    fails(
        &create("x", "527041", &["env:view"]),
        1,
        "1 to 527040 minutes",
    );
    fails(&create("x", "0", &["env:view"]), 64, "--valid-minutes");
    fails(&create("x", "-5", &["env:view"]), 64, "valid-minutes");
    fails(
        &create("Bad_Name", "60", &["env:view"]),
        64,
        "not a valid PAT name",
    );
    fails(&create("x", "60", &[]), 64, "--scopes");
    fails(
        &issuer.cli(&[
            "pat",
            "create",
            "--name",
            "x",
            "--environment",
            "Main",
            "--valid-minutes",
            "1",
            "--scopes",
            "env:view",
        ]),
        1,
        "environment",
    );

    for verb in ["show", "update", "delete"] {
        fails(
            &issuer.cli(&["pat", verb, "--name", "nope"]),
            1,
            "no personal access token named `nope`",
        );
        fails(
            &issuer.cli(&["pat", verb, "--name", "No!"]),
            64,
            "not a valid PAT name",
        );
    }
    fails(
        &issuer.cli(&["pat", "update", "--name", "ci", "--valid-minutes", "0"]),
        64,
        "--valid-minutes",
    );
    fails(
        &issuer.cli(&["pat", "update", "--name", "ci", "--scopes", "env:view:*"]),
        64,
        "env:view:*",
    );
    fails(
        &issuer.cli(&["pat", "update", "--name", "ci", "--valid-minutes", "600000"]),
        1,
        "pats.max_valid_minutes",
    );

    // The admin token file: missing (64), wrong (1); the issuer unreachable (1).
    let out = run(
        &["pat", "list", "--issuer", issuer.url()],
        &[("AUTHPROXY_ADMIN_TOKEN_FILE", "/nonexistent/admin-token")],
    );
    fails(&out, 64, "/nonexistent/admin-token");
    let wrong = issuer.dir.path().join("wrong-token");
    std::fs::write(&wrong, "ap_admin_not-the-token").unwrap();
    let out = run(
        &["pat", "list", "--admin-token-file", wrong.to_str().unwrap()],
        &[(
            "AUTHPROXY_ISSUER",
            issuer.url().trim_start_matches("http://"),
        )],
    );
    fails(&out, 1, "refused the admin token");
    let admin = issuer.admin_token_file();
    let closed = format!("http://{}", closed_addr());
    let out = run(
        &[
            "pat",
            "list",
            "--issuer",
            &closed,
            "--admin-token-file",
            admin.to_str().unwrap(),
        ],
        &[],
    );
    fails(&out, 1, "cannot reach the issuer");
    // Nothing but `ci` was created.
    let list: Value =
        serde_json::from_str(&stdout(&issuer.cli(&["pat", "list", "--format", "json"]))).unwrap();
    assert_eq!(list["pats"].as_array().unwrap().len(), 1, "{list}");
}

/// `authproxy issuer grants revoke` puts a workload's live grants on the feed.
#[tokio::test]
async fn grants_revoke_puts_a_workloads_grants_on_the_feed() {
    let issuer = Issuer::start();
    let declarations = issuer.dir.path().join("project.yaml");
    std::fs::write(&declarations, E2E_PROJECT).unwrap();
    let credentials = issuer.dir.path().join("credentials");
    let out = issuer.cli(&[
        "issuer",
        "sync",
        "--declarations",
        declarations.to_str().unwrap(),
        "--environment",
        "main",
        "--credentials-dir",
        credentials.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let credential = std::fs::read_to_string(credentials.join("app_web")).unwrap();
    let key = SigningKey::generate().unwrap();
    let res = client()
        .post(format!("{}/v1/grants", issuer.url()))
        .bearer_auth(credential.trim())
        .json(&json!({"workload": "app/web", "environment": "main", "public_key": key.public().bare_jwk()}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let grant: Value = res.json().await.unwrap();
    let grant_id = part(grant["grant"].as_str().unwrap(), 1)["jti"].clone();

    let revoke = |args: &[&str]| {
        let mut all = vec!["issuer", "grants", "revoke"];
        all.extend_from_slice(args);
        issuer.cli(&all)
    };
    let out = revoke(&["--environment", "main", "--workload", "app/web"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).starts_with("revoked 1 live grant(s) of app/web in main"),
        "{out:?}"
    );
    let feed = issuer.get("/v1/revocations").await;
    assert_eq!(
        feed["revocations"],
        json!([{
            "kind": "grant", "id": grant_id, "expires_at": grant["expires_at"],
        }])
    );
    let out = revoke(&["-e", "main", "-w", "app/web", "--format", "json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&out)).unwrap(),
        json!({"revoked": 0})
    );
    fails(&revoke(&["-e", "main", "-w", "app/nope"]), 1, "app/nope");
    fails(
        &revoke(&["-e", "main", "-w", "cron/web/nightly"]),
        64,
        "--workload",
    );
    fails(&revoke(&["-e", "main"]), 64, "--workload");
}
