//! A stock OAuth2 client library — openid-client v6 on Node — discovers the
//! sidecar (RFC 8414) and gets a token with the client credentials grant
//! (issue #11, item 12). Needs `node` and `npm` (`.ci/run` installs them)
//! and the npm registry or a warm npm cache: without them the test fails,
//! it never skips.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;

const NODE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node");

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {:?} ({e}): this test needs node and npm (apt-get install -y nodejs npm)",
            cmd.get_program()
        )
    })
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Copies tests/node to a temp dir and installs the locked packages there.
fn install() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "package.json",
        "package-lock.json",
        "client_credentials.mjs",
    ] {
        std::fs::copy(Path::new(NODE_DIR).join(f), dir.path().join(f)).unwrap();
    }
    let out = run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefer-offline"])
        .current_dir(dir.path()));
    assert!(
        out.status.success(),
        "npm could not install openid-client (is the registry reachable?):\n{}",
        text(&out)
    );
    dir
}

#[tokio::test]
async fn stock_openid_client_discovers_the_sidecar_and_gets_a_token() {
    let node = run(Command::new("node").arg("--version"));
    assert!(node.status.success(), "node: {}", text(&node));
    let dir = tokio::task::spawn_blocking(install).await.unwrap();
    let s = spawn_sidecar(Options::default()).await;
    let base = s.url.clone();
    let script = dir.path().join("client_credentials.mjs");
    let out = tokio::task::spawn_blocking(move || run(Command::new("node").arg(script).arg(base)))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "openid-client failed:\n{}",
        text(&out)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["issuer"], s.url, "{v}");
    assert_eq!(
        v["token_endpoint"],
        format!("{}/oauth2/token", s.url),
        "{v}"
    );
    assert_eq!(v["got_token"], true, "{v}");
    assert_eq!(v["scope"], "env:view", "{v}");
    assert_eq!(
        v["token_type"].as_str().map(str::to_lowercase).as_deref(),
        Some("bearer")
    );
}
