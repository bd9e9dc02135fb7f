//! The `authproxy` binary: startup refusals (exit 64), serving, SIGTERM,
//! logs that never carry a secret, and `check`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should panic loudly

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_authproxy");

fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .envs(envs.iter().copied())
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn serve_fails(config: &Path, envs: &[(&str, &str)]) -> String {
    let out = run(&["serve", "--config", config.to_str().unwrap()], envs);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn a_bad_config_refuses_to_start_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &Options::default());
    let c = cfg.to_str().unwrap();
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("AUTHPROXY__TOKENS__TTL", "2h")],
            "`tokens.ttl` = 2h is out of range",
        ),
        (
            &[("AUTHPROXY__TOKENS__TTL", "10s")],
            "`tokens.ttl` = 10s is out of range",
        ),
        (
            &[("AUTHPROXY__WORKLOAD__ID", "app/nope")],
            "`workload.id` = app/nope is not declared",
        ),
        (
            &[("AUTHPROXY__WORKLOAD__ID", "cron/web/nightly")],
            "`workload.id`",
        ),
        (
            &[("AUTHPROXY__SERVER__LISTEN", "everywhere")],
            "`server.listen`",
        ),
        (
            &[("AUTHPROXY__TRUST__MODE", "remote")],
            "`trust.issuers` is required",
        ),
        (&[("AUTHPROXY__TRUST__MODE", "cloud")], "`trust.mode`"),
        (
            &[("AUTHPROXY__TRUST__GRANT_TTL", "90d")],
            "`trust.grant_ttl`",
        ),
    ];
    for (envs, expected) in cases {
        let err = serve_fails(&cfg, envs);
        assert!(err.contains(c), "{envs:?}: {err}");
        assert!(err.contains(expected), "{envs:?}: {err}");
    }
    let err = serve_fails(Path::new("/nonexistent.toml"), &[]);
    assert!(
        err.contains("/nonexistent.toml: config file not found"),
        "{err}"
    );
}

#[test]
fn unknown_config_keys_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &Options::default());
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[tokens]", "[tokens]\nttll = \"5m\"");
    std::fs::write(&cfg, text).unwrap();
    let err = serve_fails(&cfg, &[]);
    assert!(err.contains("ttll") && err.contains("tokens"), "{err}");
}

#[test]
fn invalid_declarations_refuse_to_start_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &Options {
            declarations: "applications:\n  web:\n    crons:\n      n: { authorizations: [] }\n",
            ..Options::default()
        },
    );
    let err = serve_fails(&cfg, &[]);
    assert!(err.contains("project.yaml"), "{err}");
    assert!(
        err.contains("applications.web.crons.n.authorizations"),
        "{err}"
    );
}

#[test]
fn a_root_key_readable_by_others_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &Options::default());
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let key = authproxy_core::keys::SigningKey::generate().unwrap();
    let path = state.join("root-key.pem");
    std::fs::write(&path, key.to_pkcs8_pem().unwrap()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = serve_fails(&cfg, &[]);
    assert!(
        err.contains("root-key.pem") && err.contains("chmod 600"),
        "{err}"
    );
}

#[tokio::test]
async fn the_daemon_serves_then_stops_cleanly_on_sigterm_and_sigint() {
    for sig in ["-TERM", "-INT"] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), &Options::default());
        let mut d = Daemon::start(&cfg, "text", "info");
        let ready = client()
            .get(format!("{}/readyz", d.url))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
        d.signal(sig);
        let st = d.wait_exit(Duration::from_secs(10));
        assert!(st.success(), "{sig}: {st:?}");
        let log: Vec<String> = d.drain_log();
        assert!(log.iter().any(|l| l.contains("stopped")), "{log:#?}");
    }
}

/// The audit line names jti, sub, scope and exp; no log line at any level
/// carries a token, a grant or a key.
#[tokio::test]
async fn logs_carry_the_audit_line_but_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &Options::default());
    let mut d = Daemon::start(&cfg, "text", "trace");
    let res: serde_json::Value = post_form(
        &format!("{}/oauth2/token", d.url),
        "grant_type=client_credentials&scope=env:view",
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let token = res["access_token"].as_str().unwrap().to_owned();
    let claims = part(&token, 1);
    d.signal("-TERM");
    d.wait_exit(Duration::from_secs(10));
    let log = d.drain_log().join("\n");
    let audit = log
        .lines()
        .find(|l| l.contains("token issued"))
        .expect("audit line");
    for field in [
        format!("jti={}", claims["jti"].as_str().unwrap()),
        "sub=app/web".to_owned(),
        "scope=env:view".to_owned(),
        format!("exp={}", claims["exp"]),
    ] {
        assert!(audit.contains(&field), "{field} missing from {audit}");
    }
    let grant = claims["grant"].as_str().unwrap();
    let root = std::fs::read_to_string(dir.path().join("state/root-key.pem")).unwrap();
    let root_body: String = root.lines().filter(|l| !l.starts_with("-----")).collect();
    for (what, secret) in [
        ("token", token.as_str()),
        ("grant", grant),
        ("root key", &root_body),
    ] {
        assert!(!log.contains(secret), "{what} leaked into the log");
    }
    for part in token.split('.') {
        assert!(!log.contains(part), "a token segment leaked into the log");
    }
    assert!(
        !log.contains("eyJ"),
        "a JWT fragment leaked into the log:\n{log}"
    );
}

#[test]
fn check_prints_every_workload_for_the_shipped_example() {
    let out = run(&["check", "--config", "config/authproxy.toml"], &[]);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8(out.stdout).unwrap();
    for row in [
        "app/web            -              task:operate:send-report env:view",
        "worker/web/queue   app/web        task:operate:send-report env:view",
        "worker/web/mailer  -              (none)",
        "task/send-report   -              task:operate:notify",
        "task/notify        -              (none)",
        "cron web/nightly   app/web        task:operate:send-report env:view",
    ] {
        assert!(table.contains(row), "missing {row:?} in\n{table}");
    }
}

#[test]
fn check_fails_clearly_on_each_broken_rule() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "applications:\n  web:\n    crons:\n      n: { authorizations: [] }\n",
            "applications.web.crons.n.authorizations",
        ),
        (
            "applications:\n  web:\n    authorizations: [{ type: task, action: operate, resource: x }]\n",
            "applications.web.authorizations[0].resource",
        ),
        (
            "applications:\n  web:\n    authorizations: [{ type: env, action: view, scope: all }]\n",
            "unknown key `scope`",
        ),
        (
            "tasks:\n  t: { authorizations: [{ type: env, action: delete }] }\n",
            "tasks.t.authorizations[0]",
        ),
        ("applications: [", "not valid YAML"),
    ];
    for (yaml, expected) in cases {
        let f = dir.path().join("p.yaml");
        std::fs::write(&f, yaml).unwrap();
        let out = run(&["check", "--declarations", f.to_str().unwrap()], &[]);
        assert_eq!(out.status.code(), Some(1), "{yaml}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(f.to_str().unwrap()), "{err}");
        assert!(err.contains(expected), "{expected}: {err}");
    }
}

/// #11 item 15c: a misspelt override names the environment variable, not
/// the config file, and suggests the key.
#[test]
fn a_misspelt_environment_override_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &Options::default());
    for (var, suggestion) in [
        ("AUTHPROXY__TOKENS__TLL", "`tokens.ttl`"),
        ("AUTHPROXY__TOKEN__TTL", "`tokens.ttl`"),
    ] {
        let err = serve_fails(&cfg, &[(var, "5m")]);
        assert!(
            err.contains(&format!("environment variable {var}")),
            "{err}"
        );
        assert!(
            err.contains(&format!("did you mean {suggestion}?")),
            "{err}"
        );
        let out = run(
            &["check", "--config", cfg.to_str().unwrap()],
            &[(var, "5m")],
        );
        assert_eq!(out.status.code(), Some(64), "{out:?}");
    }
}

/// #11 item 15d: a token file that cannot be written at start names the
/// config file and `sink.path`.
#[test]
fn an_unwritable_token_file_names_sink_path() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &Options {
            sections: "[sink]\npath = \"/nonexistent-dir/token\"\n",
            ..Options::default()
        },
    );
    let err = serve_fails(&cfg, &[]);
    assert!(
        err.contains(&format!("{}: `sink.path`", cfg.display())),
        "{err}"
    );
    assert!(err.contains("/nonexistent-dir/token"), "{err}");
}

/// #11 item 15e: a listen address already in use is a configuration
/// problem: exit 64, naming `server.listen` and the address.
#[test]
fn a_listen_address_in_use_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &Options::default());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = serve_fails(&cfg, &[("AUTHPROXY__SERVER__LISTEN", &addr)]);
    assert!(
        err.contains(&format!("{}: `server.listen` = {addr}", cfg.display())),
        "{err}"
    );
    assert!(err.contains("in use"), "{err}");
}
