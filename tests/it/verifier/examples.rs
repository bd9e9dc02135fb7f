//! The chain verifiers in `examples/verifier/` for upstreams that want no
//! extra process — Node with `jose` (locked in package-lock.json, installed
//! with `npm ci`) and Python with PyJWT — run against real sidecar tokens.
//! They need node, npm and `pyjwt[crypto]` (`.ci/run` installs them): without
//! them the tests fail, they never skip.

use std::path::Path;
use std::process::{Command, Output};

use super::*;

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {:?} ({e}): the example verifiers need node, npm and python3",
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

/// The cases every example verifier must get right, against `sidecar`:
/// `(what, token, audience, environment, scope, accepted)`.
async fn cases(
    s: &TestSidecar,
) -> Vec<(
    &'static str,
    String,
    &'static str,
    &'static str,
    &'static str,
    bool,
)> {
    let good = token(s, None).await;
    let staging = spawn_sidecar(Options {
        environment: "staging",
        state_dir: Some(s.state_dir.clone()),
        ..Options::default()
    })
    .await;
    let other_root = spawn_sidecar(Options::default()).await;
    vec![
        (
            "a good token",
            good.clone(),
            AUDIENCE,
            "main",
            "env:view",
            true,
        ),
        (
            "a good token, no scope asked",
            good.clone(),
            AUDIENCE,
            "main",
            "",
            true,
        ),
        (
            "insufficient scope",
            good.clone(),
            AUDIENCE,
            "main",
            "task:operate:notify",
            false,
        ),
        (
            "another audience",
            good.clone(),
            "https://other.example",
            "main",
            "",
            false,
        ),
        (
            "another environment (same root)",
            token(&staging, None).await,
            AUDIENCE,
            "main",
            "",
            false,
        ),
        (
            "the same token judged for its environment",
            token(&staging, None).await,
            AUDIENCE,
            "staging",
            "",
            true,
        ),
        (
            "another root",
            token(&other_root, None).await,
            AUDIENCE,
            "main",
            "",
            false,
        ),
        ("tampered", tampered(&good), AUDIENCE, "main", "", false),
        (
            "expired",
            token_from_root(s, "main", AUDIENCE, "env:view", now() - 7200),
            AUDIENCE,
            "main",
            "",
            false,
        ),
        ("garbage", "not-a-token".into(), AUDIENCE, "main", "", false),
    ]
}

async fn check_example(program: &str, script: &Path, s: &TestSidecar) {
    let jwks = format!("{}/.well-known/jwks.json", s.url);
    for (what, token, audience, environment, scope, accepted) in cases(s).await {
        let mut cmd = Command::new(program);
        cmd.arg(script)
            .args([token.as_str(), jwks.as_str(), audience, environment]);
        if !scope.is_empty() {
            cmd.arg(scope);
        }
        let out = tokio::task::spawn_blocking(move || run(&mut cmd))
            .await
            .unwrap();
        assert_eq!(
            out.status.success(),
            accepted,
            "{program} {}: {what}:\n{}",
            script.display(),
            text(&out)
        );
        if accepted {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
            assert_eq!(v["sub"], "app/web", "{what}");
            assert_eq!(v["env"], environment, "{what}");
            assert_eq!(v["jti"], part(&token, 1)["jti"], "{what}");
        } else {
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("refused"),
                "{what}: {}",
                text(&out)
            );
        }
    }
}

#[tokio::test]
async fn the_node_jose_example_accepts_good_chains_and_refuses_the_rest() {
    // A copy, so that `npm ci` leaves no node_modules in the repository.
    let dir = tempfile::tempdir().unwrap();
    for f in ["package.json", "package-lock.json", "verify.mjs"] {
        std::fs::copy(Path::new(EXAMPLES).join(f), dir.path().join(f)).unwrap();
    }
    let at = dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefer-offline"])
            .current_dir(at))
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "npm could not install jose (is the registry reachable?):\n{}",
        text(&out)
    );
    let s = spawn_sidecar(Options::default()).await;
    check_example("node", &dir.path().join("verify.mjs"), &s).await;
}

#[tokio::test]
async fn the_python_pyjwt_example_accepts_good_chains_and_refuses_the_rest() {
    let probe = run(Command::new("python3").args(["-c", "import jwt, cryptography"]));
    assert!(
        probe.status.success(),
        "the Python example needs PyJWT with its crypto extra: pip install 'pyjwt[crypto]'\n{}",
        text(&probe)
    );
    let s = spawn_sidecar(Options::default()).await;
    check_example("python3", &Path::new(EXAMPLES).join("verify.py"), &s).await;
}
