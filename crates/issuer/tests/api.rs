//! The issuer over real HTTP: the router served on 127.0.0.1:0 with a
//! fresh state directory (SQLite store inside), spoken to with reqwest.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use authproxy_core::clock;
use authproxy_core::grant::Grant;
use authproxy_core::keys::{Jwks, SigningKey};
use authproxy_core::{Environment, ScopeSet};
use authproxy_issuer::{ADMIN_TOKEN_FILE, Issuer, IssuerConfig, router};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One running issuer node.
struct Node {
    base: String,
    state_dir: PathBuf,
    admin_token: String,
    issuer: Arc<Issuer>,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

/// Starts an issuer whose state lives under `dir` (created on first start,
/// reused after).
async fn spawn(dir: &Path) -> Node {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state_dir = dir.join("state");
    let config_file = dir.join("issuer.toml");
    std::fs::write(
        &config_file,
        format!(
            "[issuer]\nurl = \"{base}\"\nstate_dir = \"{}\"\ngrant_ttl = \"1h\"\n",
            state_dir.display()
        ),
    )
    .unwrap();
    let config = IssuerConfig::load_with_env(&config_file, Some(HashMap::new())).unwrap();
    let issuer = Arc::new(Issuer::open(config, clock::now()).await.unwrap());
    let admin_token = std::fs::read_to_string(state_dir.join(ADMIN_TOKEN_FILE))
        .unwrap()
        .trim()
        .to_owned();
    let (stop, stopped) = oneshot::channel::<()>();
    let app = router(Arc::clone(&issuer));
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Node {
        base,
        state_dir,
        admin_token,
        issuer,
        client: reqwest::Client::new(),
        stop: Some(stop),
        server: Some(server),
    }
}

impl Node {
    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get_json(&self, path: &str) -> Value {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        r.json().await.unwrap()
    }

    async fn jwks(&self) -> Jwks {
        let r = self
            .client
            .get(self.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        Jwks::from_json(&r.bytes().await.unwrap()).unwrap()
    }

    async fn sync_raw(&self, token: Option<&str>, query: &str, yaml: &str) -> reqwest::Response {
        let mut req = self
            .client
            .post(self.url(&format!("/v1/sync{query}")))
            .header("content-type", "application/yaml")
            .body(yaml.to_owned());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    /// Syncs (or plans) `yaml` into `environment` with the admin token.
    async fn sync(&self, environment: &str, yaml: &str, dry_run: bool) -> (StatusCode, Value) {
        let query = format!("?environment={environment}&dry_run={dry_run}");
        let r = self.sync_raw(Some(&self.admin_token), &query, yaml).await;
        let status = r.status();
        (status, r.json().await.unwrap())
    }

    /// Syncs and expects success.
    async fn synced(&self, environment: &str, yaml: &str) -> Value {
        let (status, body) = self.sync(environment, yaml, false).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn grant(
        &self,
        credential: Option<&str>,
        workload: &str,
        environment: &str,
        key: &SigningKey,
    ) -> reqwest::Response {
        let mut req = self.client.post(self.url("/v1/grants")).json(&json!({
            "workload": workload,
            "environment": environment,
            "public_key": key.public().bare_jwk(),
        }));
        if let Some(c) = credential {
            req = req.bearer_auth(c);
        }
        req.send().await.unwrap()
    }
}

/// The workloads of a plan section, by id.
fn workloads(plan: &Value, section: &str) -> Vec<String> {
    plan[section]
        .as_array()
        .unwrap_or_else(|| panic!("no {section} in {plan}"))
        .iter()
        .map(|i| i["workload"].as_str().unwrap().to_owned())
        .collect()
}

fn item<'a>(plan: &'a Value, section: &str, workload: &str) -> &'a Value {
    plan[section]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["workload"] == workload)
        .unwrap_or_else(|| panic!("{workload} not in {section}: {plan}"))
}

fn credential<'a>(plan: &'a Value, workload: &str) -> &'a str {
    plan["credentials"][workload]
        .as_str()
        .unwrap_or_else(|| panic!("no credential for {workload}: {plan}"))
}

const PROJECT: &str = "\
applications:
  web:
    authorizations:
      - { type: task, action: operate, resource: send-report }
      - { type: env, action: view }
    workers:
      queue: {}
      mailer:
        authorizations: []
tasks:
  send-report:
    authorizations:
      - { type: task, action: operate, resource: notify }
  notify: {}
";

#[tokio::test]
async fn jwks_and_metadata_are_public() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(dir.path()).await;

    let keys = node.jwks().await.usable_keys();
    assert_eq!(keys.len(), 1);
    assert!(keys.contains_key(&node.issuer.root_kid()));

    let meta = node
        .get_json("/.well-known/oauth-authorization-server")
        .await;
    assert_eq!(meta["issuer"], node.base);
    assert_eq!(
        meta["jwks_uri"],
        format!("{}/.well-known/jwks.json", node.base)
    );
    assert_eq!(
        meta["token_endpoint"],
        format!("{}/oauth2/token", node.base)
    );
    // The advertised JWKS is the one served.
    let via_meta = node
        .client
        .get(meta["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(via_meta.status(), StatusCode::OK);
    node.shutdown().await;
}

#[tokio::test]
async fn sync_requires_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(dir.path()).await;
    let query = "?environment=main";
    let wrong = format!("ap_admin_{}", "A".repeat(43));
    for token in [None, Some("garbage"), Some(wrong.as_str())] {
        let r = node.sync_raw(token, query, PROJECT).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{token:?}");
        assert!(
            r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_token");
    }
    // Even a malformed request is refused as unauthenticated first.
    let r = node.sync_raw(None, "?bogus=1", "[").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Nothing was applied.
    let (_, plan) = node.sync("main", PROJECT, true).await;
    assert_eq!(workloads(&plan, "created").len(), 5);
    node.shutdown().await;
}

#[tokio::test]
async fn sync_plans_each_change_kind_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(dir.path()).await;

    let first = node.synced("main", PROJECT).await;
    assert_eq!(first["environment"], "main");
    assert_eq!(first["dry_run"], false);
    assert_eq!(
        workloads(&first, "created"),
        [
            "app/web",
            "worker/web/mailer",
            "worker/web/queue",
            "task/notify",
            "task/send-report"
        ]
    );
    let web = item(&first, "created", "app/web");
    assert_eq!(web["identity"], "app/web");
    assert_eq!(web["scopes_before"], Value::Null);
    assert_eq!(
        web["scopes_after"],
        json!(["task:operate:send-report", "env:view"])
    );
    // One credential per created identity, shown once.
    let creds = first["credentials"].as_object().unwrap();
    assert_eq!(creds.len(), 5);
    assert!(
        creds
            .values()
            .all(|c| c.as_str().unwrap().starts_with("ap_wc_"))
    );

    // Idempotent: the same declarations again change nothing, create no credential.
    let again = node.synced("main", PROJECT).await;
    assert_eq!(workloads(&again, "unchanged").len(), 5);
    assert!(workloads(&again, "created").is_empty());
    assert!(workloads(&again, "updated").is_empty());
    assert!(workloads(&again, "removed").is_empty());
    assert_eq!(again["credentials"], json!({}));

    // web narrows (its inheriting worker follows), mailer goes away.
    let changed = PROJECT
        .replace("      - { type: env, action: view }\n", "")
        .replace("      mailer:\n        authorizations: []\n", "");
    let third = node.synced("main", &changed).await;
    assert_eq!(
        workloads(&third, "updated"),
        ["app/web", "worker/web/queue"]
    );
    let web = item(&third, "updated", "app/web");
    assert_eq!(
        web["scopes_before"],
        json!(["task:operate:send-report", "env:view"])
    );
    assert_eq!(web["scopes_after"], json!(["task:operate:send-report"]));
    assert_eq!(workloads(&third, "removed"), ["worker/web/mailer"]);
    let mailer = item(&third, "removed", "worker/web/mailer");
    assert_eq!(mailer["scopes_before"], json!([]));
    assert_eq!(mailer["scopes_after"], Value::Null);
    assert_eq!(
        workloads(&third, "unchanged"),
        ["task/notify", "task/send-report"]
    );
    assert_eq!(third["credentials"], json!({}));
    node.shutdown().await;
}

#[tokio::test]
async fn a_dry_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(dir.path()).await;

    let (status, dry) = node.sync("main", PROJECT, true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(workloads(&dry, "created").len(), 5);
    assert_eq!(dry["credentials"], json!({}), "no credential on a dry run");
    assert!(item(&dry, "created", "app/web")["new_identity"] == true);

    // The real sync still has everything to create: the dry run wrote nothing.
    let real = node.synced("main", PROJECT).await;
    assert_eq!(workloads(&real, "created").len(), 5);

    let (_, dry) = node.sync("main", "tasks:\n  notify: {}\n", true).await;
    assert_eq!(workloads(&dry, "removed").len(), 4);
    let (_, after) = node.sync("main", PROJECT, true).await;
    assert_eq!(workloads(&after, "unchanged").len(), 5);
    node.shutdown().await;
}

#[tokio::test]
async fn an_identity_can_be_reused_and_both_its_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(dir.path()).await;
    let first = node
        .synced(
            "main",
            "applications:\n  web:\n    authorizations: [{ type: env, action: view }]\n",
        )
        .await;
    let web_credential = credential(&first, "app/web").to_owned();

    // Unknown identity: refused, naming the workload and the identity.
    let (status, body) = node
        .sync(
            "main",
            "applications:\n  site:\n    identity: app/nope\n",
            false,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_declarations");
    let problem = &body["problems"][0];
    assert_eq!(problem["path"], "applications.site.identity");
    let message = problem["message"].as_str().unwrap();
    assert!(
        message.contains("`app/site`") && message.contains("`app/nope`"),
        "{message}"
    );

    // An identity still claimed by its own workload: refused too.
    let (status, body) = node
        .sync(
            "main",
            "applications:\n  web: {}\n  site:\n    identity: app/web\n",
            false,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = body["problems"][0]["message"].as_str().unwrap();
    assert!(message.contains("identity `app/web`"), "{message}");

    // Neither applied anything.
    let (_, plan) = node
        .sync(
            "main",
            "applications:\n  web:\n    authorizations: [{ type: env, action: view }]\n",
            true,
        )
        .await;
    assert_eq!(workloads(&plan, "unchanged"), ["app/web"]);

    // A rename: app/site takes over app/web's identity and credential.
    let renamed = node
        .synced(
            "main",
            "applications:\n  site:\n    identity: app/web\n    authorizations: [{ type: task, action: operate, resource: notify }]\ntasks:\n  notify: {}\n",
        )
        .await;
    let site = item(&renamed, "created", "app/site");
    assert_eq!(site["identity"], "app/web");
    assert!(site.get("new_identity").is_none());
    assert_eq!(workloads(&renamed, "removed"), ["app/web"]);
    assert!(renamed["credentials"].get("app/site").is_none());
    assert!(renamed["credentials"].get("task/notify").is_some());

    let key = SigningKey::generate().unwrap();
    let r = node
        .grant(Some(&web_credential), "app/site", "main", &key)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let roots = node.jwks().await.usable_keys();
    let main = Environment::parse("main").unwrap();
    let grant = Grant::verify(
        body["grant"].as_str().unwrap(),
        &roots,
        &main,
        0,
        clock::now(),
    )
    .unwrap();
    assert_eq!(grant.subject().to_string(), "app/site");
    assert_eq!(grant.scope().to_string(), "task:operate:notify");
    // The old workload is removed: no grant for it, even with its credential.
    let r = node
        .grant(Some(&web_credential), "app/web", "main", &key)
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_syncs_create_each_credential_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(dir.path()).await;
    let (a, b) = tokio::join!(
        node.sync("main", PROJECT, false),
        node.sync("main", PROJECT, false)
    );
    assert_eq!(
        (a.0, b.0),
        (StatusCode::OK, StatusCode::OK),
        "{} {}",
        a.1,
        b.1
    );
    let created = a.1["credentials"].as_object().unwrap().len()
        + b.1["credentials"].as_object().unwrap().len();
    assert_eq!(
        created, 5,
        "one sync created them, the other found them: {} {}",
        a.1, b.1
    );
    node.shutdown().await;
}

#[tokio::test]
async fn invalid_declarations_apply_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(dir.path()).await;
    let broken = format!(
        "{PROJECT}  cleanup:\n    authorizations:\n      - {{ type: env, action: edit }}\n      - {{ type: task, action: operate, resource: nope }}\n"
    );
    let (status, body) = node.sync("main", &broken, false).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_declarations");
    let paths: Vec<&str> = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "tasks.cleanup.authorizations[0]",
            "tasks.cleanup.authorizations[1].resource"
        ]
    );

    let (status, body) = node.sync("main", "applications: [", false).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_request");

    for query in ["", "?environment=Main", "?environment=main&dryrun=true"] {
        let r = node.sync_raw(Some(&node.admin_token), query, PROJECT).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{query}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request", "{query}");
    }

    let (_, plan) = node.sync("main", PROJECT, true).await;
    assert_eq!(workloads(&plan, "created").len(), 5, "nothing was applied");
    node.shutdown().await;
}

#[tokio::test]
async fn a_credential_gets_a_grant_bound_to_the_posted_key_with_the_stored_ceiling() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(dir.path()).await;
    let plan = node.synced("main", PROJECT).await;
    let queue = credential(&plan, "worker/web/queue");

    let key = SigningKey::generate().unwrap();
    let before = clock::now();
    let r = node
        .grant(Some(queue), "worker/web/queue", "main", &key)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.unwrap();

    let roots = node.jwks().await.usable_keys();
    let main = Environment::parse("main").unwrap();
    let grant = Grant::verify(
        body["grant"].as_str().unwrap(),
        &roots,
        &main,
        0,
        clock::now(),
    )
    .unwrap();
    let claims = grant.claims();
    assert_eq!(claims.iss, node.base);
    assert_eq!(claims.sub, "worker/web/queue");
    assert_eq!(claims.env, "main");
    assert_eq!(claims.cnf.jkt, key.public().thumbprint());
    assert_eq!(
        grant.scope(),
        &ScopeSet::parse("task:operate:send-report env:view").unwrap()
    );
    assert_eq!(grant.root_kid(), node.issuer.root_kid());
    assert!(claims.iat >= before && claims.exp == claims.iat + 3600);
    let expires_at = humantime::parse_rfc3339(body["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        expires_at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        claims.exp
    );
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));

    // A task with no authorizations gets a grant with an empty ceiling.
    let notify = credential(&plan, "task/notify");
    let r = node.grant(Some(notify), "task/notify", "main", &key).await;
    assert_eq!(r.status(), StatusCode::OK);
    node.shutdown().await;
}

#[tokio::test]
async fn another_workloads_credential_is_forbidden() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(dir.path()).await;
    let main = node.synced("main", PROJECT).await;
    let staging = node.synced("staging", PROJECT).await;
    let key = SigningKey::generate().unwrap();

    let notify = credential(&main, "task/notify");
    let r = node.grant(Some(notify), "app/web", "main", &key).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "access_denied");

    // The same workload in another environment is another identity.
    let web_main = credential(&main, "app/web");
    let r = node.grant(Some(web_main), "app/web", "staging", &key).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let web_staging = credential(&staging, "app/web");
    assert_ne!(web_main, web_staging);
    let r = node
        .grant(Some(web_staging), "app/web", "staging", &key)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    node.shutdown().await;
}

#[tokio::test]
async fn garbage_or_unknown_credentials_are_unauthorized() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(dir.path()).await;
    node.synced("main", PROJECT).await;
    let key = SigningKey::generate().unwrap();
    let unknown = format!("ap_wc_{}", "A".repeat(43));
    let admin = node.admin_token.clone();
    for credential in [None, Some("garbage"), Some(unknown.as_str()), Some(&admin)] {
        let r = node.grant(credential, "app/web", "main", &key).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{credential:?}");
        assert!(r.headers().contains_key("www-authenticate"));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_token");
    }
    // Authentication comes before the body is even read.
    let r = node
        .client
        .post(node.url("/v1/grants"))
        .bearer_auth("garbage")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    node.shutdown().await;
}

#[tokio::test]
async fn removed_or_unknown_workloads_get_no_grant() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(dir.path()).await;
    let plan = node.synced("main", PROJECT).await;
    let mailer = credential(&plan, "worker/web/mailer").to_owned();
    let key = SigningKey::generate().unwrap();
    let r = node
        .grant(Some(&mailer), "worker/web/mailer", "main", &key)
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    let without_mailer = PROJECT.replace("      mailer:\n        authorizations: []\n", "");
    node.synced("main", &without_mailer).await;
    let r = node
        .grant(Some(&mailer), "worker/web/mailer", "main", &key)
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unknown_workload");

    let r = node.grant(Some(&mailer), "app/nope", "main", &key).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = node
        .grant(Some(&mailer), "worker/web/mailer", "nowhere", &key)
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // A malformed request from an authenticated caller is a 400, not a 500.
    let r = node
        .client
        .post(node.url("/v1/grants"))
        .bearer_auth(&mailer)
        .body("{\"workload\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    node.shutdown().await;
}

#[tokio::test]
async fn the_store_is_created_on_first_start_and_reused_on_the_second() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state").join("issuer.db");
    assert!(!db.exists());

    let first = spawn(dir.path()).await;
    assert!(db.is_file(), "created on first start");
    let token_file = first.state_dir.join(ADMIN_TOKEN_FILE);
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let kid = first.issuer.root_kid().to_owned();
    let admin_token = first.admin_token.clone();
    let plan = first.synced("main", PROJECT).await;
    let web = credential(&plan, "app/web").to_owned();
    first.shutdown().await;

    let second = spawn(dir.path()).await;
    assert_eq!(second.issuer.root_kid(), kid, "same root key");
    assert_eq!(second.admin_token, admin_token, "same admin token");
    let keys = second.jwks().await.usable_keys();
    assert_eq!(keys.keys().collect::<Vec<_>>(), [&kid]);
    // The store kept the identities and the credential's hash.
    let again = second.synced("main", PROJECT).await;
    assert_eq!(workloads(&again, "unchanged").len(), 5);
    let key = SigningKey::generate().unwrap();
    let r = second.grant(Some(&web), "app/web", "main", &key).await;
    assert_eq!(r.status(), StatusCode::OK);
    second.shutdown().await;
}
