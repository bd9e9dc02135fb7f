//! Credential rotation (DESIGN §10, issue #14) with everything running:
//! an issuer and its task worker, remote sidecars minting, an upstream
//! verifying with the layer — every interval shortened to seconds through
//! the configuration, so several root rotations and workload-credential
//! rotations happen while requests flow. Then the task history of one
//! rotation cycle, through the CLI.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use authproxy_issuer::tasks::worker::{Worker, WorkerOptions};
use authproxy_issuer::{Issuer, IssuerConfig};
use base64::Engine as _;
use reqwest::Method;

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_authproxy");

/// The header and claims of a compact JWS, not verified.
fn jws_parts(compact: &str) -> (serde_json::Value, serde_json::Value) {
    let mut it = compact.split('.');
    let mut next = || {
        let part = it.next().unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    };
    let header = next();
    (header, next())
}

/// An in-process issuer for `dir` whose config is `tune`d, serving on
/// 127.0.0.1:0, synced with [`E2E_PROJECT`]; its credentials written to
/// `dir/creds` as `issuer sync --credentials-dir` does.
async fn issuer(
    dir: &Path,
    extra: &str,
    tune: impl FnOnce(&mut IssuerConfig),
) -> (Arc<Issuer>, String, tokio::sync::oneshot::Sender<()>) {
    let state = dir.join("state");
    let file = dir.join("issuer.toml");
    std::fs::write(
        &file,
        format!("[issuer]\nstate_dir = \"{}\"\n{extra}", state.display()),
    )
    .unwrap();
    let mut config = IssuerConfig::load_with_env(&file, Some(Default::default())).unwrap();
    tune(&mut config);
    let issuer = Arc::new(Issuer::open(config, now()).await.unwrap());
    let (url, stop) = serve(authproxy_issuer::router(Arc::clone(&issuer))).await;
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
    let creds = dir.join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    for (workload, value) in plan["credentials"].as_object().unwrap() {
        std::fs::write(
            creds.join(workload.replace('/', "_")),
            format!("{}\n", value.as_str().unwrap()),
        )
        .unwrap();
    }
    (issuer, url, stop)
}

fn admin_get(dir: &Path, url: &str, path: &str) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["issuer"])
        .args(path.split(' '))
        .args([
            "--format",
            "json",
            "--issuer",
            url,
            "--admin-token-file",
            dir.join("state/admin-token").to_str().unwrap(),
        ])
        .env_remove("AUTHPROXY_ISSUER")
        .env_remove("AUTHPROXY_ADMIN_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn secs(rfc3339: &serde_json::Value) -> Option<u64> {
    let t = humantime::parse_rfc3339(rfc3339.as_str()?).unwrap();
    Some(t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs())
}

/// Issue #14's load test. Root keys rotate every 6 s, published 3 s
/// ahead (the upstream refreshes its JWKS every second and never refetches
/// on an unknown kid more than once an hour, so a key used before it was
/// published would be refused); grants live 12 s; workload credentials
/// rotate every 10 s with a 15 s grace, written by the built-in provider to
/// the files the sidecars bootstrap from. Two sidecars mint and the
/// upstream verifies for 32 s: not one request may be refused. A root key
/// dropped from the JWKS while a grant it signed is live would be refused
/// within three refreshes (3 s), well inside a grant's 12 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_is_refused_across_root_and_workload_credential_rotations_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    let (issuer, url, _stop) = issuer(
        dir.path(),
        &format!("[credentials]\ndir = \"{}\"\n", creds.display()),
        |c| {
            c.keys.rotate_every = Duration::from_secs(6);
            c.keys.publish_ahead = Duration::from_secs(3);
            c.issuer.grant_ttl = Duration::from_secs(12);
            c.credentials.rotate_every = Duration::from_secs(10);
            c.credentials.grace = Duration::from_secs(15);
        },
    )
    .await;
    let mut options = WorkerOptions::default();
    options.tick = Duration::from_millis(200);
    options.removal_leeway = Duration::from_secs(2);
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(Worker::new(Arc::clone(&issuer), options).run(async {
        let _ = worker_stopped.await;
    }));

    let mut sidecars = Vec::new();
    for workload in ["app/web", "worker/web/queue"] {
        let trust = format!(
            "mode = \"remote\"\nissuers = [\"{url}\"]\nbootstrap = \"file:{}\"\n",
            creds.join(workload.replace('/', "_")).display()
        );
        sidecars.push(
            spawn_sidecar(Options {
                workload,
                trust_extra: &trust,
                ..Options::default()
            })
            .await,
        );
    }
    let auth = authproxy_layer::Authorizer::builder()
        .jwks_url(format!("{url}/.well-known/jwks.json"))
        .audience(AUDIENCE)
        .environment("main")
        .refresh_interval(Duration::from_secs(1))
        .min_refetch_interval(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    let (api, _api_stop) = serve(crate::environment_api::app(&auth, "main")).await;

    let run_for = Duration::from_secs(32);
    let mut loops = Vec::new();
    for s in &sidecars {
        let token_url = s.token_url();
        let api = api.clone();
        loops.push(tokio::spawn(async move {
            let started = Instant::now();
            let (mut total, mut refused) = (0u64, Vec::new());
            // kid → the grants (iat, exp) seen signed by it
            let mut grants: BTreeMap<String, BTreeSet<(u64, u64)>> = BTreeMap::new();
            while started.elapsed() < run_for {
                total += 1;
                let (status, body) =
                    request_token(&token_url, &[("grant_type", "client_credentials")]).await;
                if status != 200 {
                    refused.push(format!("token endpoint {status}: {body}"));
                    continue;
                }
                let token = body["access_token"].as_str().unwrap();
                let (_, claims) = jws_parts(token);
                let (header, grant) = jws_parts(claims["grant"].as_str().unwrap());
                grants
                    .entry(header["kid"].as_str().unwrap().to_owned())
                    .or_default()
                    .insert((
                        grant["iat"].as_u64().unwrap(),
                        grant["exp"].as_u64().unwrap(),
                    ));
                let (st, _, answer) =
                    call(Method::GET, &format!("{api}/environment"), Some(token)).await;
                if st != 200 {
                    refused.push(format!("upstream {st}: {answer}"));
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            (total, refused, grants)
        }));
    }
    let mut total = 0;
    let mut refused = Vec::new();
    let mut per_sidecar_kids = Vec::new();
    let mut grants: BTreeMap<String, BTreeSet<(u64, u64)>> = BTreeMap::new();
    for l in loops {
        let (t, r, g) = l.await.unwrap();
        total += t;
        refused.extend(r);
        per_sidecar_kids.push(g.keys().cloned().collect::<BTreeSet<_>>());
        for (kid, set) in g {
            grants.entry(kid).or_default().extend(set);
        }
    }
    let _ = stop_worker.send(());
    worker.await.unwrap();
    println!(
        "rotation under load: {total} token+upstream rounds, {} refused",
        refused.len()
    );
    assert!(
        refused.is_empty(),
        "{} refused: {refused:#?}",
        refused.len()
    );
    assert!(total > 200, "only {total} rounds");

    let listed = admin_get(dir.path(), &url, "credentials list");
    let root = listed["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "root_key")
        .unwrap()
        .clone();
    let versions = root["versions"].as_array().unwrap();
    println!(
        "root key versions: {}",
        serde_json::to_string_pretty(versions).unwrap()
    );
    assert!(versions.len() >= 5, "several root rotations: {versions:#?}");
    assert!(
        versions.iter().any(|v| v["state"] == "retired"),
        "at least one key was removed while the load ran"
    );
    for v in versions.iter().skip(1) {
        assert_eq!(
            secs(&v["activates_at"]).unwrap() - secs(&v["created_at"]).unwrap(),
            3,
            "published publish_ahead before it signs: {v}"
        );
    }
    // Every grant seen: signed by a version that was active when it was
    // signed, and whose key stayed published until the grant expired.
    let by_kid: BTreeMap<&str, &serde_json::Value> = versions
        .iter()
        .map(|v| (v["kid"].as_str().unwrap(), v))
        .collect();
    for (kid, set) in &grants {
        let v = by_kid[kid.as_str()];
        for (iat, exp) in set {
            assert!(
                secs(&v["activates_at"]).unwrap() <= *iat,
                "signed while pending: {v}"
            );
            if let Some(retires) = secs(&v["retires_at"]) {
                assert!(*iat < retires, "signed after retiring: {v}");
            }
            if let Some(removed) = secs(&v["removed_at"]) {
                assert!(removed >= exp + 2, "removed before its grant expired: {v}");
            }
        }
    }
    // Sidecars kept their grants across root rotations and renewed under
    // the new keys.
    for kids in &per_sidecar_kids {
        assert!(kids.len() >= 3, "renewed under new root keys: {kids:?}");
    }
    // Workload credentials rotated (new values in the files the sidecars
    // re-read at each renewal), old ones retired after the grace.
    let web = listed["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "wc.main.app.web")
        .unwrap();
    let states: Vec<&str> = web["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["state"].as_str().unwrap())
        .collect();
    println!("wc.main.app.web versions: {states:?}");
    assert!(states.len() >= 3, "{web:#}");
    assert_eq!(
        states.iter().filter(|s| **s == "active").count(),
        1,
        "{web:#}"
    );
}

/// One rotation cycle of a root key, through the CLI, with the worker
/// driven by `step(now)`: created at start, rotated automatically,
/// the old version removed once its grants expired, the next rotation
/// queued. Prints the history (`tasks list --format json`) for the record.
/// (Multi-thread: the CLI blocks one thread while the issuer answers.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_history_of_one_rotation_cycle_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (issuer, url, _stop) = issuer(dir.path(), "", |_| {}).await;
    let id = format!("rk.{}", issuer.node());
    let worker = Worker::new(Arc::clone(&issuer), WorkerOptions::default());
    let record = issuer.store().credential(&id).await.unwrap().unwrap();
    let t0 = record.versions[0].times.activates_at;
    let (rotate, ahead, ttl) = (30 * 86_400, 600, 86_400);
    // The automatic rotation, then the removal of version 1 once its last
    // grant (signed just before the new key took over) has expired.
    worker.step(t0 + rotate - ahead).await.unwrap();
    let done = worker.step(t0 + rotate + ttl + 30).await.unwrap();
    assert_eq!(done.len(), 1);

    let history = admin_get(dir.path(), &url, &format!("tasks list --credential {id}"));
    println!(
        "task history of one rotation cycle of {id}:\n{}",
        serde_json::to_string_pretty(&history).unwrap()
    );
    let tasks = history["tasks"].as_array().unwrap();
    let seen: Vec<(&str, &str, &str)> = tasks
        .iter()
        .map(|t| {
            (
                t["type"].as_str().unwrap(),
                t["trigger"].as_str().unwrap(),
                t["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                "create_credentials",
                "credential_creation",
                "credentials_created"
            ),
            (
                "create_credentials",
                "automatic_rotation",
                "credentials_created"
            ),
            (
                "delete_credentials",
                "version_expiration",
                "credentials_deleted"
            ),
            ("create_credentials", "automatic_rotation", "queued"),
        ]
    );
    // `show` and `cancel` through the CLI: the queued rotation is cancelled
    // (and the schedule goes on); cancelling it again is refused.
    let queued = tasks[3]["id"].as_str().unwrap();
    let shown = admin_get(
        dir.path(),
        &url,
        &format!("tasks show --credential {id} --task {queued}"),
    );
    assert_eq!(shown["status"], "queued");
    let cancelled = admin_get(
        dir.path(),
        &url,
        &format!("tasks cancel --credential {id} --task {queued}"),
    );
    assert_eq!(cancelled["status"], "failed");
    assert_eq!(cancelled["errors"][0]["code"], "cancelled");
    let out = Command::new(BIN)
        .args([
            "issuer",
            "tasks",
            "cancel",
            "--credential",
            &id,
            "--task",
            queued,
        ])
        .args(["--issuer", &url, "--admin-token-file"])
        .arg(dir.path().join("state/admin-token"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTP 409"),
        "{out:?}"
    );
    // The table of `credentials list`, for people.
    let out = Command::new(BIN)
        .args([
            "issuer",
            "credentials",
            "list",
            "--issuer",
            &url,
            "--admin-token-file",
        ])
        .arg(dir.path().join("state/admin-token"))
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    println!("{table}");
    assert!(table.starts_with("CREDENTIAL"), "{table}");
    assert!(table.contains(&id), "{table}");
    // A manual rotation through the CLI is queued.
    let rotated = admin_get(
        dir.path(),
        &url,
        &format!("credentials rotate --credential {id}"),
    );
    assert_eq!(rotated["trigger"], "manual_rotation");
    assert_eq!(rotated["status"], "queued");
}
