//! Reload fails closed (issue #11, item 6): a workload dropped from valid
//! declarations loses its authorizations; unreadable or invalid declarations
//! are survived for `trust.reload_grace`, then the sidecar turns not-ready;
//! failures are counted; narrowing rotates the sidecar key.

use crate::common::*;

const WEB_ENV_ONLY: &str =
    "applications:\n  web:\n    authorizations: [{ type: env, action: view }]\n";
const NO_WEB: &str = "tasks:\n  notify: {}\n";

async fn metric(s: &TestSidecar, name: &str) -> f64 {
    let text = client()
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test]
async fn a_workload_removed_from_valid_declarations_drops_to_no_authorizations() {
    let s = spawn_sidecar(Options::default()).await;
    std::fs::write(s.dir.path().join("project.yaml"), NO_WEB).unwrap();
    assert!(s.daemon.reload(now()).await.unwrap(), "the ceiling changed");
    assert!(s.sidecar.ceiling().is_empty());
    let (status, body) =
        request_token(&s.token_url(), &[("grant_type", "client_credentials")]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_scope");
}

#[tokio::test]
async fn broken_declarations_are_survived_for_the_grace_then_the_sidecar_turns_not_ready() {
    let s = spawn_sidecar(Options {
        trust_extra: "reload_grace = \"10m\"",
        ..Options::default()
    })
    .await;
    let t0 = now();
    std::fs::write(s.dir.path().join("project.yaml"), "applications: [").unwrap();
    assert!(s.daemon.reload(t0).await.is_err());
    // Within the grace: the previous declarations serve.
    assert!(s.daemon.is_ready(t0 + 599));
    assert!(!token(&s, Some("env:view")).await.is_empty());
    assert_eq!(metric(&s, "authproxy_reload_failures_total").await, 1.0);
    // Past it: not ready, and no token.
    assert!(!s.daemon.is_ready(t0 + 601));
    // A deleted file is the same: the grace runs from the first failure.
    std::fs::remove_file(s.dir.path().join("project.yaml")).unwrap();
    assert!(s.daemon.reload(t0 + 100).await.is_err());
    assert!(!s.daemon.is_ready(t0 + 601));
    assert_eq!(metric(&s, "authproxy_reload_failures_total").await, 2.0);
    // Fixed: ready again, whatever the time.
    std::fs::write(s.dir.path().join("project.yaml"), WEB_ENV_ONLY).unwrap();
    assert!(s.daemon.reload(t0 + 700).await.unwrap());
    assert!(s.daemon.is_ready(t0 + 701));
}

#[tokio::test]
async fn past_the_grace_readyz_and_the_token_endpoint_answer_503() {
    let s = spawn_sidecar(Options {
        trust_extra: "reload_grace = \"0s\"",
        ..Options::default()
    })
    .await;
    std::fs::write(s.dir.path().join("project.yaml"), "applications: [").unwrap();
    assert!(s.daemon.reload(now()).await.is_err());
    let ready = client()
        .get(format!("{}/readyz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let (status, body) =
        request_token(&s.token_url(), &[("grant_type", "client_credentials")]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
}

#[tokio::test]
async fn renewal_rereads_the_declarations_instead_of_reissuing_the_old_ceiling() {
    let s = spawn_sidecar(Options::default()).await;
    assert_eq!(
        s.sidecar.ceiling().to_string(),
        "task:operate:send-report env:view"
    );
    // Narrowed on disk, no SIGHUP: the next renewal must not re-issue the
    // wider grant.
    std::fs::write(s.dir.path().join("project.yaml"), WEB_ENV_ONLY).unwrap();
    s.daemon.renew(now()).await.unwrap();
    assert_eq!(s.sidecar.grant().claims().scope, "env:view");
}

#[tokio::test]
async fn narrowing_rotates_the_sidecar_key_so_the_wider_grant_has_no_live_key() {
    let s = spawn_sidecar(Options::default()).await;
    let before = s.sidecar.grant();
    let wide = token(&s, None).await;
    std::fs::write(s.dir.path().join("project.yaml"), WEB_ENV_ONLY).unwrap();
    assert!(s.daemon.reload(now()).await.unwrap());
    let after = s.sidecar.grant();
    assert_ne!(after.claims().cnf.jkt, before.claims().cnf.jkt);
    let narrow = token(&s, None).await;
    assert_ne!(part(&narrow, 0)["kid"], part(&wide, 0)["kid"]);
    // Widening again keeps the key: nothing was withdrawn.
    std::fs::write(s.dir.path().join("project.yaml"), PROJECT).unwrap();
    assert!(s.daemon.reload(now()).await.unwrap());
    assert_eq!(s.sidecar.grant().claims().cnf.jkt, after.claims().cnf.jkt);
}
