//! The credential lifecycle (DESIGN §10, issue #14) against a real issuer
//! served on 127.0.0.1:0: the API over HTTP, the worker driven by
//! `step(now)` with the clock as a parameter — a month of rotations in
//! milliseconds, and every schedule checked to the second.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use authproxy_core::clock;
use authproxy_core::keys::{Jwks, SigningKey};
use authproxy_core::{Environment, WorkloadId};
use authproxy_issuer::issuer::GrantApplication;
use authproxy_issuer::tasks::model::version_state;
use authproxy_issuer::tasks::worker::{Worker, WorkerOptions};
use authproxy_issuer::{ADMIN_TOKEN_FILE, Issuer, IssuerConfig, router};
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::oneshot;

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

const PROJECT: &str = "\
applications:
  web:
    authorizations:
      - { type: env, action: view }
";

struct Node {
    base: String,
    dir: PathBuf,
    admin_token: String,
    issuer: Arc<Issuer>,
    client: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

/// An issuer whose config is `extra` appended to the basics, then `tune`d.
async fn spawn(dir: &Path, extra: &str, tune: impl FnOnce(&mut IssuerConfig)) -> Node {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state_dir = dir.join("state");
    let config_file = dir.join("issuer.toml");
    std::fs::write(
        &config_file,
        format!(
            "[issuer]\nurl = \"{base}\"\nstate_dir = \"{}\"\ngrant_ttl = \"1h\"\n{extra}",
            state_dir.display()
        ),
    )
    .unwrap();
    let mut config = IssuerConfig::load_with_env(&config_file, Some(HashMap::new())).unwrap();
    tune(&mut config);
    let issuer = Arc::new(Issuer::open(config, clock::now()).await.unwrap());
    let admin_token = std::fs::read_to_string(state_dir.join(ADMIN_TOKEN_FILE))
        .unwrap()
        .trim()
        .to_owned();
    let (stop, stopped) = oneshot::channel::<()>();
    let app = router(Arc::clone(&issuer));
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Node {
        base,
        dir: dir.to_owned(),
        admin_token,
        issuer,
        client: reqwest::Client::new(),
        _stop: stop,
    }
}

impl Node {
    fn worker(&self, tune: impl FnOnce(&mut WorkerOptions)) -> Worker {
        let mut options = WorkerOptions::default();
        tune(&mut options);
        Worker::new(Arc::clone(&self.issuer), options)
    }

    async fn admin(&self, method: reqwest::Method, path: &str) -> (StatusCode, Value) {
        let r = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn credentials(&self) -> Vec<Value> {
        let (s, body) = self.admin(reqwest::Method::GET, "/v1/credentials").await;
        assert_eq!(s, StatusCode::OK, "{body}");
        body["credentials"].as_array().unwrap().clone()
    }

    async fn credential(&self, id: &str) -> Value {
        let (s, body) = self
            .admin(reqwest::Method::GET, &format!("/v1/credentials/{id}"))
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        body
    }

    async fn tasks(&self, id: &str) -> Vec<Value> {
        let (s, body) = self
            .admin(reqwest::Method::GET, &format!("/v1/credentials/{id}/tasks"))
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        body["tasks"].as_array().unwrap().clone()
    }

    async fn rotate(&self, id: &str) -> Value {
        let (s, body) = self
            .admin(
                reqwest::Method::POST,
                &format!("/v1/credentials/{id}/rotate"),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
        body
    }

    async fn cancel(&self, id: &str, task: &str) -> (StatusCode, Value) {
        self.admin(
            reqwest::Method::DELETE,
            &format!("/v1/credentials/{id}/tasks/{task}"),
        )
        .await
    }

    async fn jwks_kids(&self) -> Vec<String> {
        let r = self
            .client
            .get(format!("{}/.well-known/jwks.json", self.base))
            .send()
            .await
            .unwrap();
        let jwks = Jwks::from_json(&r.bytes().await.unwrap()).unwrap();
        let mut kids: Vec<String> = jwks.usable_keys().keys().cloned().collect();
        kids.sort();
        kids
    }

    /// Syncs [`PROJECT`] into `main`; the credential of `app/web`.
    async fn sync(&self) -> String {
        let r = self
            .client
            .post(format!("{}/v1/sync?environment=main", self.base))
            .bearer_auth(&self.admin_token)
            .body(PROJECT)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let plan: Value = r.json().await.unwrap();
        plan["credentials"]["app/web"].as_str().unwrap().to_owned()
    }

    /// A grant for app/web signed at `now` (the use case, so the time is ours).
    async fn grant_at(&self, credential: &str, now: u64) -> (String, u64) {
        let caller = self
            .issuer
            .authenticate_workload(Some(credential), now)
            .await
            .unwrap();
        let application = GrantApplication {
            workload: "app/web".parse::<WorkloadId>().unwrap(),
            environment: Environment::parse("main").unwrap(),
            public_key: SigningKey::generate().unwrap().public().clone(),
        };
        let issued = self
            .issuer
            .issue_grant(&caller, &application, now)
            .await
            .unwrap();
        (kid_of(&issued.grant), issued.expires_at)
    }

    fn root_credential(&self) -> String {
        format!("rk.{}", self.issuer.node())
    }
}

fn kid_of(compact: &str) -> String {
    let header = compact.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

fn states(credential: &Value) -> Vec<(u64, String)> {
    credential["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The versions' states at `now` (the API answers for the wall clock;
/// these tests move time by hand).
async fn states_at(node: &Node, id: &str, now: u64) -> Vec<(u64, String)> {
    let c = node.issuer.store().credential(id).await.unwrap().unwrap();
    c.versions
        .iter()
        .map(|v| {
            (
                u64::from(v.version),
                version_state(&v.times, now).as_str().to_owned(),
            )
        })
        .collect()
}

fn kid_of_version(credential: &Value, version: u64) -> String {
    credential["versions"][version as usize - 1]["kid"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn task<'a>(tasks: &'a [Value], trigger: &str, status: &str) -> &'a Value {
    tasks
        .iter()
        .find(|t| t["trigger"] == trigger && t["status"] == status)
        .unwrap_or_else(|| panic!("no {trigger} task {status} in {tasks:#?}"))
}

/// The whole root-key cycle with the clock as a parameter: published
/// `publish_ahead` before it signs, the old key published until the last
/// grant it signed has expired (+ leeway) — even a grant the schedule did
/// not foresee — then removed by a `version_expiration` task, its private
/// key deleted.
#[tokio::test]
async fn a_root_key_is_published_ahead_and_removed_only_after_its_last_grant() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(dir.path(), "", |_| {}).await;
    let credential = node.sync().await;
    let worker = node.worker(|_| {});
    let (rotate, ahead, ttl, leeway) = (30 * DAY, 600, HOUR, 30);
    let id = node.root_credential();

    // One version, active since the node started (t0); its next rotation
    // queued publish_ahead before rotate_every is up.
    let rk = node.credential(&id).await;
    assert_eq!(states(&rk), [(1, "active".to_owned())]);
    let k1 = kid_of_version(&rk, 1);
    let records = node.issuer.store().credential(&id).await.unwrap().unwrap();
    let t0 = records.versions[0].times.activates_at;
    let tasks = node.tasks(&id).await;
    task(&tasks, "credential_creation", "credentials_created");
    let next = task(&tasks, "automatic_rotation", "queued");
    assert_eq!(
        next["run_at"],
        authproxy_issuer::issuer::rfc3339(t0 + rotate - ahead),
        "{next}"
    );
    assert!(
        worker
            .step(t0 + rotate - ahead - 1)
            .await
            .unwrap()
            .is_empty()
    );

    // Due: a new key, published now, pending.
    let publish = t0 + rotate - ahead;
    let ran = worker.step(publish).await.unwrap();
    assert_eq!(ran.len(), 1);
    assert_eq!(ran[0].status.as_str(), "credentials_created");
    let rk = node.credential(&id).await;
    let k2 = kid_of_version(&rk, 2);
    let mut both = vec![k1.clone(), k2.clone()];
    both.sort();
    assert_eq!(node.jwks_kids().await, both, "published at once");
    assert_eq!(
        rk["versions"][1]["activates_at"],
        authproxy_issuer::issuer::rfc3339(publish + ahead)
    );
    let state_dir = node.dir.join("state");
    assert!(
        state_dir
            .join("root-keys")
            .join(format!("{k2}.pem"))
            .exists()
    );

    // Until it activates, the old key signs; the new one exactly from then.
    let activation = publish + ahead;
    let (kid, last_old_exp) = node.grant_at(&credential, activation - 1).await;
    assert_eq!(kid, k1, "a pending key never signs");
    assert_eq!(node.grant_at(&credential, activation).await.0, k2);
    assert_eq!(
        states_at(&node, &id, activation - 1).await,
        [(1, "active".to_owned()), (2, "pending".to_owned())]
    );
    assert_eq!(
        states_at(&node, &id, activation).await,
        [(1, "retiring".to_owned()), (2, "active".to_owned())]
    );

    // The old key stays published while its last grant may verify.
    assert_eq!(last_old_exp, activation - 1 + ttl);
    let removal = task(&node.tasks(&id).await, "version_expiration", "queued").clone();
    assert_eq!(removal["type"], "delete_credentials");
    assert_eq!(removal["version"], 1);
    for now in [activation, activation + ttl - 1, last_old_exp + leeway - 1] {
        worker.step(now).await.unwrap();
        assert_eq!(node.jwks_kids().await, both, "still published at {now}");
    }

    // A grant the schedule did not foresee (signed under a longer
    // grant_ttl before a restart, say) holds the key longer: the task
    // looks at the grants, not only at the clock.
    let unforeseen = last_old_exp + 2 * HOUR;
    node.issuer
        .store()
        .record_grant(&authproxy_issuer::store::GrantRecord {
            jti: "late".into(),
            environment: Environment::parse("main").unwrap(),
            subject: authproxy_core::Subject::Workload("app/web".parse().unwrap()),
            identity: "app/web".into(),
            bootstrap: authproxy_issuer::store::BootstrapKind::WorkloadCredential,
            root_kid: k1.clone(),
            issued_at: activation - 2,
            expires_at: unforeseen,
        })
        .await
        .unwrap();
    let ran = worker.step(activation + ttl + leeway).await.unwrap();
    assert_eq!(ran.len(), 1);
    assert_eq!(ran[0].status.as_str(), "queued", "deferred, not failed");
    assert!(ran[0].errors.is_empty());
    assert_eq!(ran[0].run_at, unforeseen + leeway);
    assert_eq!(node.jwks_kids().await, both);
    worker.step(unforeseen + leeway - 1).await.unwrap();
    assert_eq!(node.jwks_kids().await, both);

    // Then it goes: out of the JWKS, retired, its private key deleted.
    let ran = worker.step(unforeseen + leeway).await.unwrap();
    assert_eq!(ran[0].status.as_str(), "credentials_deleted");
    assert_eq!(node.jwks_kids().await, std::slice::from_ref(&k2));
    assert_eq!(
        states_at(&node, &id, unforeseen + leeway).await,
        [(1, "retired".to_owned()), (2, "active".to_owned())]
    );
    assert!(!state_dir.join("root-key.pem").exists());
    assert!(
        state_dir
            .join("root-keys")
            .join(format!("{k2}.pem"))
            .exists()
    );

    // The next rotation is queued rotate_every after the activation.
    let tasks = node.tasks(&id).await;
    assert_eq!(
        task(&tasks, "automatic_rotation", "queued")["run_at"],
        authproxy_issuer::issuer::rfc3339(activation + rotate - ahead)
    );

    // A restart finds its versions on disk and in the store, and signs
    // with the active one.
    drop(worker);
    let again = spawn(dir.path(), "", |_| {}).await;
    assert_eq!(again.issuer.node(), node.issuer.node());
    assert_eq!(again.grant_at(&credential, unforeseen + leeway).await.0, k2);
}

/// A workload credential rotated by hand: the new value is written by the
/// built-in provider (0600, atomically), the old one keeps working for
/// `credentials.grace`, then a `version_expiration` task revokes it.
#[tokio::test]
async fn a_rotated_workload_credential_keeps_the_old_value_for_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    let node = spawn(
        dir.path(),
        &format!("[credentials]\ndir = \"{}\"\n", creds.display()),
        |_| {},
    )
    .await;
    let old = node.sync().await;
    let worker = node.worker(|_| {});
    let id = "wc.main.app.web";
    let listed = node.credentials().await;
    assert!(
        listed
            .iter()
            .any(|c| c["id"] == id && c["kind"] == "workload_credential")
    );
    assert_eq!(
        states(&node.credential(id).await),
        [(1, "active".to_owned())]
    );

    let queued = node.rotate(id).await;
    assert_eq!(
        (
            queued["type"].as_str(),
            queued["status"].as_str(),
            queued["trigger"].as_str()
        ),
        (
            Some("create_credentials"),
            Some("queued"),
            Some("manual_rotation")
        )
    );
    let now = clock::now();
    let ran = worker.step(now).await.unwrap();
    assert_eq!(ran[0].status.as_str(), "credentials_created");
    let file = creds.join("app_web");
    let new = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert!(new.starts_with("ap_wc_") && new != old);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let grace = DAY;
    for (value, at, ok) in [
        (&new, now, true),
        (&old, now, true),
        (&old, now + grace - 1, true),
        (&old, now + grace, false),
        (&new, now + grace, true),
    ] {
        let r = node.issuer.authenticate_workload(Some(value), at).await;
        assert_eq!(
            r.is_ok(),
            ok,
            "{} at +{}",
            if value == &new { "new" } else { "old" },
            at - now
        );
    }
    assert_eq!(
        states(&node.credential(id).await),
        [(1, "retiring".to_owned()), (2, "active".to_owned())]
    );
    // The expiry task revokes it for good at the end of the grace.
    let ran = worker.step(now + grace).await.unwrap();
    assert_eq!(ran.len(), 1);
    assert_eq!(
        (
            ran[0].task_type.as_str(),
            ran[0].trigger.as_str(),
            ran[0].status.as_str()
        ),
        (
            "delete_credentials",
            "version_expiration",
            "credentials_deleted"
        )
    );
    let c = node.credential(id).await;
    assert_eq!(
        states(&c),
        [(1, "retired".to_owned()), (2, "active".to_owned())]
    );
    assert!(c["versions"][0]["removed_at"].is_string());
    // The next automatic rotation: rotate_every (90 d) after this one.
    let tasks = node.tasks(id).await;
    assert_eq!(
        task(&tasks, "automatic_rotation", "queued")["run_at"],
        authproxy_issuer::issuer::rfc3339(now + 90 * DAY)
    );
}

/// A provider script for the external provider; `body` is its shell code.
fn provider(dir: &Path, body: &str, timeout: &str) -> String {
    let script = dir.join("provider.sh");
    std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "[credentials]\ncommand = [\"{}\"]\ncommand_timeout = \"{timeout}\"\n",
        script.display()
    )
}

/// Cancelled while queued: `failed` with `cancelled`, at once; a second
/// cancel, or a cancel of any final task, is 409. Cancelled while
/// processing (the provider hangs): the provider is killed, the task ends
/// `failed` with `cancelled`, the value it was handed is revoked and the
/// old one is untouched.
#[tokio::test]
async fn a_task_is_cancelled_while_queued_and_while_processing_and_never_once_final() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("provider-ran");
    let extra = provider(
        dir.path(),
        &format!("touch {}\nexec sleep 600", marker.display()),
        "10m",
    );
    let node = spawn(dir.path(), &extra, |_| {}).await;
    let old = node.sync().await;
    let id = "wc.main.app.web";

    // While queued.
    let queued = node.rotate(id).await;
    let t = queued["id"].as_str().unwrap();
    let (s, cancelled) = node.cancel(id, t).await;
    assert_eq!(s, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "failed");
    assert_eq!(cancelled["errors"][0]["code"], "cancelled");
    let (s, again) = node.cancel(id, t).await;
    assert_eq!(s, StatusCode::CONFLICT, "{again}");
    assert_eq!(again["error"], "conflict");
    // A cancelled task is never run.
    let worker = node.worker(|o| o.cancel_poll = Duration::from_millis(50));
    let now = clock::now();
    assert!(worker.step(now).await.unwrap().is_empty());
    assert!(!marker.exists());
    // Also final: a completed task.
    let created = node
        .tasks(id)
        .await
        .into_iter()
        .find(|t| t["status"] == "credentials_created")
        .unwrap();
    let (s, _) = node.cancel(id, created["id"].as_str().unwrap()).await;
    assert_eq!(s, StatusCode::CONFLICT);
    // Unknown: 404.
    let (s, _) = node.cancel(id, "nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // While processing: the provider hangs.
    let queued = node.rotate(id).await;
    let t = queued["id"].as_str().unwrap().to_owned();
    let running = tokio::spawn({
        let worker = worker.clone();
        async move { worker.step(now).await.unwrap() }
    });
    let started = std::time::Instant::now();
    while !marker.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "provider never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, shown) = node
        .admin(
            reqwest::Method::GET,
            &format!("/v1/credentials/{id}/tasks/{t}"),
        )
        .await;
    assert_eq!(shown["status"], "processing");
    let (s, cancelled) = node.cancel(id, &t).await;
    assert_eq!(s, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "failed");
    assert_eq!(cancelled["errors"][0]["code"], "cancelled");
    // The worker notices, kills the provider, and stops.
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the worker stopped the hung provider")
        .unwrap();
    let shown = node.credential(id).await;
    assert_eq!(
        states(&shown),
        [(1, "active".to_owned()), (2, "retired".to_owned())],
        "the handed-out value is revoked, the old one untouched"
    );
    assert!(
        node.issuer
            .authenticate_workload(Some(&old), now)
            .await
            .is_ok()
    );
    let (s, _) = node.cancel(id, &t).await;
    assert_eq!(s, StatusCode::CONFLICT);
}

/// A provider that does not finish within `command_timeout` is killed;
/// the attempt is an error with code `provider_timeout`; out of attempts,
/// the task is `failed`.
#[tokio::test]
async fn a_hung_provider_times_out_and_the_task_fails_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let extra = provider(dir.path(), "exec sleep 600", "1s");
    let node = spawn(dir.path(), &extra, |_| {}).await;
    node.sync().await;
    let id = "wc.main.app.web";
    let t = node.rotate(id).await["id"].as_str().unwrap().to_owned();
    let worker = node.worker(|o| o.max_attempts = 1);
    let started = std::time::Instant::now();
    let ran = worker.step(clock::now()).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(ran[0].id, t);
    assert_eq!(ran[0].status.as_str(), "failed");
    assert_eq!(ran[0].errors.len(), 1);
    assert_eq!(ran[0].errors[0].code, "provider_timeout");
    assert!(
        ran[0].errors[0].description.contains("1s"),
        "{:?}",
        ran[0].errors
    );
    assert_eq!(
        states(&node.credential(id).await),
        [(1, "active".to_owned()), (2, "retired".to_owned())]
    );
}

/// A failing provider: each attempt's error recorded, the task queued
/// again after 30 s, 60 s, …, and `failed` after the last attempt. A
/// failed automatic rotation keeps the schedule: the next one is queued.
#[tokio::test]
async fn failed_attempts_are_retried_with_backoff_then_the_task_fails() {
    let dir = tempfile::tempdir().unwrap();
    let extra = provider(dir.path(), "echo 'vault is sealed' >&2\nexit 2", "10s");
    let node = spawn(dir.path(), &extra, |_| {}).await;
    node.sync().await;
    let id = "wc.main.app.web";
    // The automatic rotation queued at the sync, rotate_every after it.
    let worker = node.worker(|o| o.max_attempts = 3);
    let records = node.issuer.store().tasks(id).await.unwrap();
    let auto = records
        .iter()
        .find(|t| t.trigger.as_str() == "automatic_rotation")
        .unwrap();
    let created = node.issuer.store().credential(id).await.unwrap().unwrap();
    assert_eq!(auto.run_at, created.versions[0].created_at + 90 * DAY);
    let due = auto.run_at;
    // Months pass: the node's root key rotates meanwhile; only this
    // credential's tasks are looked at.
    let step = |now: u64| {
        let worker = worker.clone();
        async move {
            worker
                .step(now)
                .await
                .unwrap()
                .into_iter()
                .filter(|t| t.credential_id == id)
                .collect::<Vec<_>>()
        }
    };
    assert!(step(due - 1).await.is_empty());

    let ran = step(due).await;
    assert_eq!(ran[0].status.as_str(), "queued");
    assert_eq!(ran[0].errors.len(), 1);
    assert_eq!(ran[0].errors[0].code, "provider_failed");
    assert!(
        ran[0].errors[0]
            .description
            .contains("(exit status 2): vault is sealed"),
        "{:?}",
        ran[0].errors
    );
    assert_eq!(ran[0].run_at, due + 30);
    assert!(step(due + 29).await.is_empty(), "backoff");
    let ran = step(due + 30).await;
    assert_eq!((ran[0].status.as_str(), ran[0].errors.len()), ("queued", 2));
    assert_eq!(ran[0].run_at, due + 30 + 60, "doubled");
    assert!(step(due + 89).await.is_empty());
    let ran = step(due + 90).await;
    assert_eq!((ran[0].status.as_str(), ran[0].errors.len()), ("failed", 3));
    assert_eq!(ran[0].attempts, 3);
    // Each attempt's value was revoked; the first one still works.
    assert_eq!(
        states_at(&node, id, due + 90).await,
        [
            (1, "active".to_owned()),
            (2, "retired".to_owned()),
            (3, "retired".to_owned()),
            (4, "retired".to_owned())
        ]
    );
    // The schedule goes on.
    let tasks = node.tasks(id).await;
    assert_eq!(
        task(&tasks, "automatic_rotation", "queued")["run_at"],
        authproxy_issuer::issuer::rfc3339(due + 90 + 90 * DAY)
    );
}

/// The credential routes need the admin token; unknown ids are 404; a PAT
/// or an unprovided workload credential cannot be rotated here.
#[tokio::test]
async fn credential_routes_need_the_admin_token_and_say_what_they_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(dir.path(), "", |_| {}).await;
    node.sync().await;
    let r = node
        .client
        .get(format!("{}/v1/credentials", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (s, _) = node
        .admin(reqwest::Method::GET, "/v1/credentials/nope/tasks")
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, body) = node
        .admin(
            reqwest::Method::POST,
            "/v1/credentials/wc.main.app.web/rotate",
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("credentials.dir")
    );
    // No provider: no automatic rotation is queued for workload credentials.
    let tasks = node.tasks("wc.main.app.web").await;
    assert_eq!(tasks.len(), 1, "{tasks:#?}");
    // The PAT hook: a version with its expiry task, then an update.
    let env = Environment::parse("main").unwrap();
    let now = clock::now();
    node.issuer
        .record_pat_version("ci", &env, "jti-1", now + HOUR, now)
        .await
        .unwrap();
    node.issuer
        .record_pat_version("ci", &env, "jti-2", now + 2 * HOUR, now + 10)
        .await
        .unwrap();
    let pat = node.credential("pat.ci").await;
    assert_eq!(pat["kind"], "pat");
    assert_eq!(
        states_at(&node, "pat.ci", now + 10).await,
        [(1, "retired".to_owned()), (2, "active".to_owned())]
    );
    let (s, _) = node
        .admin(reqwest::Method::POST, "/v1/credentials/pat.ci/rotate")
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let worker = node.worker(|_| {});
    let ran = worker.step(now + 2 * HOUR).await.unwrap();
    assert!(
        ran.iter()
            .all(|t| t.status.as_str() == "credentials_deleted"),
        "{ran:#?}"
    );
    assert_eq!(
        states_at(&node, "pat.ci", now + 2 * HOUR).await[1].1,
        "retired"
    );
}
