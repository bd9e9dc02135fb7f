//! `authproxy health` proves it reached its own sidecar (issue #11, item 2):
//! whoever binds the port after a sidecar restart cannot pass for it.

use std::process::Command;

use crate::common::*;

fn health(config: &std::path::Path, endpoint: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_authproxy"))
        .args(["health", "--config", config.to_str().unwrap()])
        .args(["--endpoint", endpoint])
        .env_remove("AUTHPROXY_ENDPOINT")
        .env_remove("AUTHPROXY_CONFIG")
        .output()
        .unwrap()
}

#[tokio::test]
async fn health_passes_for_its_own_sidecar_and_fails_for_an_impostor_on_the_port() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &Options::default());
    let d = Daemon::start(&cfg, "text", "info");
    let url = d.url.clone();
    let ok = tokio::task::spawn_blocking({
        let (cfg, url) = (cfg.clone(), url.clone());
        move || health(&cfg, &url)
    })
    .await
    .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    drop(d);

    // An impostor answers ready on another port, as one would after binding
    // the sidecar's port: it does not know the id this sidecar wrote.
    let impostor = axum::Router::new().route(
        "/readyz",
        axum::routing::get(|| async { axum::Json(serde_json::json!({"status": "ready"})) }),
    );
    let (fake, _stop) = serve(impostor).await;
    let out = tokio::task::spawn_blocking(move || health(&cfg, &fake))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("not the sidecar"), "{err}");
}

#[tokio::test]
async fn jwks_writes_the_root_public_keys_the_sidecar_trusts_and_no_secret() {
    let s = spawn_sidecar(Options::default()).await;
    let out = s.dir.path().join("jwks/root-jwks.json");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_authproxy"))
        .args(["jwks", "--config", s.config_path.to_str().unwrap(), "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(written, jwks_json(&s).await);
    assert!(written["keys"][0].get("d").is_none(), "no private part");
}

/// Issue #10: a bad configuration exits 64 under every verb that reads one.
#[test]
fn a_bad_config_exits_64_under_every_verb() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[tokens]\nttl = \"forever\"\n").unwrap();
    let bad = bad.to_str().unwrap();
    for args in [
        vec!["serve", "--config", bad],
        vec!["check", "--config", bad],
        vec!["health", "--config", bad],
        vec!["jwks", "--config", bad],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_authproxy"))
            .args(&args)
            .env_remove("AUTHPROXY_CONFIG")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains("bad.toml"), "{args:?}: {err}");
    }
}
