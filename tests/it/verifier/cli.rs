//! The real `authproxy verifier serve`: the shipped config, exit statuses.

use std::process::Command;
use std::time::Duration;

use super::*;

// Multi-threaded: the binary fetches the JWKS from the in-process sidecar
// while this thread blocks reading its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifier_serve_runs_the_shipped_config_and_stops_on_sigterm() {
    let s = spawn_sidecar(Options::default()).await;
    let mut env = trust_env(&s);
    env.push(("AUTHPROXY__SERVER__LISTEN".into(), "127.0.0.1:0".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut d = Daemon::spawn(
        &[
            "verifier",
            "serve",
            "--config",
            SHIPPED,
            "--log-format",
            "text",
        ],
        "info",
        &env,
        "verifier listening",
    );
    let t = token(&s, None).await;
    let res = client()
        .get(format!("{}/verify", d.url))
        .header("x-original-method", "GET")
        .header("x-original-uri", "/environment")
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-auth-subject"], "app/web");
    let health = client()
        .get(format!("{}/healthz", d.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    d.signal("-TERM");
    assert!(d.wait_exit(Duration::from_secs(15)).success());
    let log = d.drain_log().join("\n");
    assert!(!log.contains(&t), "a token reached the log");
}

/// Like the sidecar: a bad configuration exits 64 (EX_USAGE) naming the
/// file and the key, before anything is bound or fetched.
#[test]
fn a_bad_config_exits_64_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(SHIPPED).unwrap();
    for (name, body, key) in [
        (
            "scope.toml",
            shipped.replace("scope = \"env:view\"", "scope = \"env:delete\""),
            "`routes[0].scope`",
        ),
        (
            "param.toml",
            shipped.replace(
                "scope = \"task:operate:{name}\"",
                "scope = \"task:operate:{task}\"",
            ),
            "`routes[1].scope`",
        ),
        (
            "public.toml",
            shipped.replace("public = true", "public = true\nscope = \"env:view\""),
            "`routes[5].public`",
        ),
        (
            "audience.toml",
            shipped.replace("audience = \"http://127.0.0.1:8300\"", ""),
            "`trust.audience`",
        ),
        (
            "issuers.toml",
            shipped.replace(
                "issuers = [\"http://127.0.0.1:8400\"]",
                "issuers = [\"http://a:8400\", \"ftp://b:8400\"]",
            ),
            "`trust.issuers`",
        ),
        ("typo.toml", shipped.replace("[server]", "[sever]"), "sever"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_authproxy"))
            .args(["verifier", "serve", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{name}: {err}");
        assert!(
            err.contains(&path.display().to_string()) && err.contains(key),
            "{name}: {err}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_authproxy"))
        .args([
            "verifier",
            "serve",
            "--config",
            "/nonexistent/verifier.toml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test]
async fn an_address_in_use_exits_64_naming_server_listen() {
    let s = spawn_sidecar(Options::default()).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut env = trust_env(&s);
    env.push(("AUTHPROXY__SERVER__LISTEN".into(), addr));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_authproxy"))
            .args(["verifier", "serve", "--config", SHIPPED])
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("`server.listen`") && err.contains("in use"),
        "{err}"
    );
}
