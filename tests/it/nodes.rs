//! Several issuer nodes on one PostgreSQL (DESIGN §8, issue #15), with real
//! processes only: `authproxy issuer serve` twice, each node with its own
//! `state_dir` (root key, admin token) and the same `[store] url`, on a
//! PostgreSQL server these tests start (`authproxy_test_support`); remote
//! sidecars (the real binary) listing the nodes in `trust.issuers`; and the
//! example upstream trusting a node's JWKS — which is the union of every
//! node's live keys, so trusting either node is trusting both.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use authproxy_core::keys::SigningKey;
use reqwest::Method;

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_authproxy");
/// The platform's one public address (`iss` of grants), the same on every
/// node as behind a load balancer; the tests reach each node directly.
const PLATFORM: &str = "http://issuer.platform.test";

/// Issuer nodes sharing one fresh PostgreSQL database.
struct Cluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

struct Node {
    state_dir: PathBuf,
    url: String,
    daemon: Option<Daemon>,
}

impl Node {
    /// The `kid` of this node's root key, from its private file (its
    /// first key: no rotation runs in these tests).
    fn kid(&self) -> String {
        let pem = std::fs::read(self.state_dir.join("root-key.pem")).unwrap();
        SigningKey::from_pkcs8_pem(&pem)
            .unwrap()
            .public()
            .thumbprint()
            .to_owned()
    }

    fn admin_token_file(&self) -> PathBuf {
        self.state_dir.join("admin-token")
    }

    fn jwks_url(&self) -> String {
        format!("{}/.well-known/jwks.json", self.url)
    }

    /// SIGKILL: an outage, not a shutdown.
    fn kill(&mut self) {
        self.daemon = None;
    }
}

impl Cluster {
    /// `nodes` issuer nodes on one new database, each on 127.0.0.1:0.
    fn start(nodes: usize, grant_ttl: &str) -> Self {
        Self::start_with(nodes, grant_ttl, "")
    }

    /// As [`start`](Self::start), with `extra` appended to every node's
    /// config.
    fn start_with(nodes: usize, grant_ttl: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let database = authproxy_test_support::fresh_database();
        let nodes = (0..nodes)
            .map(|i| {
                let state_dir = dir.path().join(format!("node-{i}"));
                let config = dir.path().join(format!("issuer-{i}.toml"));
                std::fs::write(
                    &config,
                    format!(
                        "[server]\nlisten = \"127.0.0.1:0\"\n\
                         [issuer]\nurl = \"{PLATFORM}\"\nstate_dir = \"{}\"\ngrant_ttl = \"{grant_ttl}\"\n\
                         [store]\nurl = \"{database}\"\n{extra}",
                        state_dir.display()
                    ),
                )
                .unwrap();
                let daemon = Daemon::issuer(&config, &[]);
                Node {
                    state_dir,
                    url: daemon.url.clone(),
                    daemon: Some(daemon),
                }
            })
            .collect();
        Self { dir, nodes }
    }

    fn credentials_dir(&self) -> PathBuf {
        self.dir.path().join("credentials")
    }

    /// `authproxy issuer sync` of `declarations` into `main` through node
    /// `through`, with the admin token of node `token_of`; its plan (JSON).
    fn sync(&self, through: usize, token_of: usize, declarations: &str) -> serde_json::Value {
        let file = self.dir.path().join("project.yaml");
        std::fs::write(&file, declarations).unwrap();
        let out = Command::new(BIN)
            .args([
                "issuer",
                "sync",
                "--environment",
                "main",
                "--format",
                "json",
            ])
            .arg("--declarations")
            .arg(&file)
            .args(["--issuer", &self.nodes[through].url])
            .arg("--admin-token-file")
            .arg(self.nodes[token_of].admin_token_file())
            .arg("--credentials-dir")
            .arg(self.credentials_dir())
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// A remote sidecar for `workload` (the real binary) asking `issuers`
    /// in order, with the credential sync wrote for it.
    fn sidecar(&self, workload: &str, issuers: &[&str]) -> Sidecar {
        let dir = tempfile::tempdir().unwrap();
        let list = issuers
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let credential = self.credentials_dir().join(workload.replace('/', "_"));
        let trust = format!(
            "mode = \"remote\"\nissuers = [{list}]\nbootstrap = \"file:{}\"\n",
            credential.display()
        );
        let config = write_config(
            dir.path(),
            &Options {
                workload,
                trust_extra: &trust,
                // Every request mints: the load must reach the grant.
                tokens_extra: "reuse = false",
                ..Options::default()
            },
        );
        // Remote mode reads no declarations.
        std::fs::remove_file(dir.path().join("project.yaml")).unwrap();
        Sidecar {
            daemon: Daemon::start(&config, "text", "info"),
            _dir: dir,
        }
    }
}

struct Sidecar {
    daemon: Daemon,
    _dir: tempfile::TempDir,
}

impl Sidecar {
    fn url(&self) -> &str {
        &self.daemon.url
    }

    /// Waits until it has a grant; returns a token.
    async fn token(&self) -> String {
        let started = Instant::now();
        loop {
            let (status, body) = request_token(
                &format!("{}/oauth2/token", self.url()),
                &[("grant_type", "client_credentials")],
            )
            .await;
            if status == 200 {
                return body["access_token"].as_str().unwrap().to_owned();
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no token: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `authproxy_grant_renewals_total` by result.
    async fn renewals(&self) -> Vec<(String, u64)> {
        let text = client()
            .get(format!("{}/metrics", self.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix("authproxy_grant_renewals_total{result=\""))
            .map(|l| {
                let (result, count) = l.split_once("\"} ").unwrap();
                (result.to_owned(), count.trim().parse().unwrap())
            })
            .collect()
    }
}

/// The `kid` of the root key that signed the grant inside `token`.
fn grant_kid(token: &str) -> String {
    let grant = part(token, 1)["grant"].as_str().unwrap().to_owned();
    part(&grant, 0)["kid"].as_str().unwrap().to_owned()
}

async fn jwks_kids(url: &str) -> Vec<String> {
    let jwks: serde_json::Value = client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut kids: Vec<String> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    kids.sort();
    kids
}

/// An upstream (the example API) whose layer trusts `jwks_url`.
async fn upstream(jwks_url: &str) -> (String, tokio::sync::oneshot::Sender<()>) {
    let auth = authproxy_layer::Authorizer::builder()
        .jwks_url(jwks_url)
        .audience(AUDIENCE)
        .environment("main")
        .build()
        .await
        .unwrap();
    serve(crate::environment_api::app(&auth, "main")).await
}

/// Two nodes on one database: each publishes both root keys at once; a
/// sync through node A (with node B's admin token: admin tokens live in the
/// store) is what node B grants from; sidecars of one workload get their
/// grants from either node, and an upstream trusting either node's JWKS
/// verifies the tokens of both.
#[tokio::test]
async fn a_sync_through_one_node_serves_grants_from_the_other() {
    let cluster = Cluster::start(2, "1h");
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut both = vec![a.kid(), b.kid()];
    both.sort();
    assert_ne!(both[0], both[1], "each node has its own root key");
    // B started after A recorded its key, and A serves from the store: no
    // waiting for either to see the other.
    assert_eq!(jwks_kids(&a.jwks_url()).await, both);
    assert_eq!(jwks_kids(&b.jwks_url()).await, both);

    let plan = cluster.sync(0, 1, E2E_PROJECT);
    assert_eq!(plan["created"].as_array().unwrap().len(), 5, "{plan}");
    // The same declarations through B: the state A wrote, nothing to do.
    let again = cluster.sync(1, 0, E2E_PROJECT);
    assert_eq!(again["unchanged"].as_array().unwrap().len(), 5, "{again}");

    let via_b = cluster.sidecar("app/web", &[&b.url]);
    let via_a = cluster.sidecar("app/web", &[&a.url]);
    let token_b = via_b.token().await;
    let token_a = via_a.token().await;
    assert_eq!(grant_kid(&token_b), b.kid(), "B signed with its own key");
    assert_eq!(grant_kid(&token_a), a.kid());
    assert_eq!(part(&token_b, 1)["sub"], "app/web");

    for node in [a, b] {
        let (api, _stop) = upstream(&node.jwks_url()).await;
        for token in [&token_a, &token_b] {
            let (st, _, body) = call(
                Method::POST,
                &format!("{api}/tasks/send-report/runs"),
                Some(token),
            )
            .await;
            assert_eq!(st, 202, "{body}");
            assert_eq!(body["triggered_by"], "app/web");
            // The ceiling is the store's, whichever node signed.
            let (st, _, _) = call(
                Method::POST,
                &format!("{api}/tasks/notify/runs"),
                Some(token),
            )
            .await;
            assert_eq!(st, 403);
        }
    }
}

/// Node A is killed (SIGKILL) while workloads request tokens without a
/// pause from sidecars listing `[A, B]` with one-minute grants: every token
/// request is answered, every renewal — all due after the kill — succeeds
/// through B, a sidecar started after the kill gets its first grant from B,
/// and the upstream (trusting B's JWKS) accepts every token it is shown.
#[tokio::test]
async fn killing_a_node_mid_load_fails_no_renewal_and_no_token_request() {
    let mut cluster = Cluster::start(2, "1m");
    cluster.sync(0, 0, E2E_PROJECT);
    let (a_url, b_url) = (cluster.nodes[0].url.clone(), cluster.nodes[1].url.clone());
    let (a_kid, b_kid) = (cluster.nodes[0].kid(), cluster.nodes[1].kid());
    let issuers = [a_url.as_str(), b_url.as_str()];
    let workloads = ["app/web", "worker/web/queue", "worker/web/mailer"];
    let mut sidecars: Vec<Sidecar> = workloads
        .iter()
        .map(|w| cluster.sidecar(w, &issuers))
        .collect();
    for s in &sidecars {
        assert_eq!(grant_kid(&s.token().await), a_kid, "first in the list");
    }
    let (api, _stop) = upstream(&cluster.nodes[1].jwks_url()).await;
    let started = Instant::now();

    // The load: one client per sidecar, back to back; every 20th token is
    // shown to the upstream, on a route its workload may call.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let load = |url: String, workload: &str| {
        let (method, route, expected) = if workload == "worker/web/mailer" {
            (Method::POST, "tasks/notify/runs", 202)
        } else {
            (Method::GET, "environment", 200)
        };
        let (stop, served, api) = (Arc::clone(&stop), Arc::clone(&served), api.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut n = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                let (status, body) = request_token(
                    &format!("{url}/oauth2/token"),
                    &[("grant_type", "client_credentials")],
                )
                .await;
                n += 1;
                if status != 200 {
                    failures.push(format!("token {n}: {status} {body}"));
                    continue;
                }
                served.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(20) {
                    let token = body["access_token"].as_str().unwrap();
                    let (st, _, body) =
                        call(method.clone(), &format!("{api}/{route}"), Some(token)).await;
                    if st != expected {
                        failures.push(format!("upstream {n}: {st} {body}"));
                    }
                }
            }
            failures
        })
    };
    let mut clients: Vec<_> = sidecars
        .iter()
        .zip(workloads)
        .map(|(s, w)| load(s.url().to_owned(), w))
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.nodes[0].kill();
    let killed_at = started.elapsed();
    // A sidecar started now: A refuses connections, B grants.
    let late = cluster.sidecar("app/web", &issuers);
    assert_eq!(grant_kid(&late.token().await), b_kid);
    clients.push(load(late.url().to_owned(), "app/web"));
    sidecars.push(late);

    // Renewals fall at 45–55 % of the minute, all after the kill: wait
    // until every sidecar started before it has renewed once.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut renewed = 0;
        for s in &sidecars[..workloads.len()] {
            let counts = s.renewals().await;
            assert!(
                counts.iter().all(|(result, n)| result == "ok" || *n == 0),
                "a renewal failed: {counts:?}"
            );
            renewed += usize::from(counts.iter().any(|(r, n)| r == "ok" && *n > 0));
        }
        if renewed == workloads.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{renewed} of {} sidecars renewed within a minute",
            workloads.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    let served = served.load(Ordering::Relaxed);
    eprintln!(
        "node A killed at {killed_at:?}; {served} tokens served over {:?}, {} failures",
        started.elapsed(),
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(served > 100, "the load ran: {served}");
    for s in &sidecars {
        assert_eq!(grant_kid(&s.token().await), b_kid, "renewed by B");
        let counts = s.renewals().await;
        assert!(
            counts.iter().all(|(result, n)| result == "ok" || *n == 0),
            "{counts:?}"
        );
    }
}

/// Node A's admin API, with A's admin token.
async fn admin(
    node: &Node,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let token = std::fs::read_to_string(node.admin_token_file()).unwrap();
    let mut req = client()
        .request(method, format!("{}{path}", node.url))
        .bearer_auth(token.trim());
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_default())
}

/// The revocation feed's cursor is global: a PAT created and deleted
/// through node A is refused within 5 s by an upstream whose layer polls
/// node B (`Authorizer::builder().issuer(B)`), over several trials.
#[tokio::test]
async fn a_pat_deleted_through_one_node_is_refused_by_a_layer_polling_the_other() {
    const WITHIN: Duration = Duration::from_secs(5);
    let cluster = Cluster::start(2, "1h");
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    cluster.sync(0, 0, E2E_PROJECT);
    let auth = authproxy_layer::Authorizer::builder()
        .issuer(&b.url)
        .audience(AUDIENCE)
        .environment("main")
        .build()
        .await
        .unwrap();
    let (api, _stop) = serve_stoppable(crate::environment_api::app(&auth, "main")).await;
    let trigger = |token: String| {
        let api = api.clone();
        async move {
            let (status, _, body) = call(
                Method::POST,
                &format!("{api}/tasks/send-report/runs"),
                Some(&token),
            )
            .await;
            (status, body)
        }
    };

    let mut delays = Vec::new();
    for i in 0..5 {
        let name = format!("ci-{i}");
        let (status, created) = admin(
            a,
            Method::POST,
            "/v1/pats",
            Some(serde_json::json!({
                "name": name, "environment": "main", "valid_minutes": 60,
                "scopes": ["task:operate:*"],
            })),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        let value = created["value"].as_str().unwrap().to_owned();
        let (status, run) = trigger(value.clone()).await;
        assert_eq!(status, 202, "{run}");
        assert_eq!(run["triggered_by"], format!("pat:{name}"));

        let (status, body) = admin(a, Method::DELETE, &format!("/v1/pats/{name}"), None).await;
        assert_eq!(status, 204, "{body}");
        let deleted = Instant::now();
        loop {
            let (status, body) = trigger(value.clone()).await;
            if status == 401 {
                break;
            }
            assert_eq!(status, 202, "{body}");
            assert!(
                deleted.elapsed() < WITHIN,
                "still accepted through B after {WITHIN:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        delays.push(deleted.elapsed());
    }
    delays.sort();
    eprintln!(
        "PAT deleted through A → refused by a layer polling B: median {:?}, max {:?}",
        delays[delays.len() / 2],
        delays[delays.len() - 1]
    );
}

/// Both nodes run the task worker (every `issuer serve` does) on one
/// store: rotations queued through either node each run once — the
/// provider, shared by both nodes, appends every task id it is run for to
/// one file, and no id appears twice.
#[tokio::test]
async fn two_nodes_running_the_task_worker_never_run_one_task_twice() {
    const ROTATIONS: usize = 4;
    let scratch = tempfile::tempdir().unwrap();
    let ran = scratch.path().join("ran");
    let script = scratch.path().join("provider.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat >/dev/null\n\
             echo \"$AUTHPROXY_TASK_ID $AUTHPROXY_ACTION $AUTHPROXY_CREDENTIAL_ID\" >> {}\n",
            ran.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let cluster = Cluster::start_with(
        2,
        "1h",
        &format!("[credentials]\ncommand = [\"{}\"]\n", script.display()),
    );
    let nodes = &cluster.nodes;
    cluster.sync(0, 0, E2E_PROJECT);
    let credentials = ["wc.main.app.web", "wc.main.worker.web.queue"];

    // Sync's values become credentials once a worker has registered them.
    let start = Instant::now();
    for id in credentials {
        while admin(
            &nodes[1],
            Method::GET,
            &format!("/v1/credentials/{id}"),
            None,
        )
        .await
        .0 != 200
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{id} never registered"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Rotations queued at once, through both nodes.
    let mut queued = Vec::new();
    for r in 0..ROTATIONS {
        for (c, id) in credentials.iter().enumerate() {
            let node = &nodes[(r + c) % 2];
            let (status, task) = admin(
                node,
                Method::POST,
                &format!("/v1/credentials/{id}/rotate"),
                None,
            )
            .await;
            assert_eq!(status, 202, "{task}");
            queued.push((id.to_string(), task["id"].as_str().unwrap().to_owned()));
        }
    }
    // Every one reaches credentials_created.
    let start = Instant::now();
    for (id, task) in &queued {
        loop {
            let (status, t) = admin(
                &nodes[0],
                Method::GET,
                &format!("/v1/credentials/{id}/tasks/{task}"),
                None,
            )
            .await;
            assert_eq!(status, 200, "{t}");
            if t["status"] == "credentials_created" {
                break;
            }
            assert_ne!(t["status"], "failed", "{t}");
            assert!(start.elapsed() < Duration::from_secs(90), "{t}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let log = std::fs::read_to_string(&ran).unwrap();
    let runs: Vec<&str> = log.lines().collect();
    let mut ids: Vec<&str> = runs.iter().map(|l| l.split(' ').next().unwrap()).collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), before, "a task ran twice:\n{log}");
    for (_, task) in &queued {
        assert!(ids.contains(&task.as_str()), "{task} never ran:\n{log}");
    }
    assert_eq!(runs.len(), queued.len(), "{log}");
}

/// Reads the password-free form of a store URL out of a log line (for
/// the operator, the issuer logs where its store is at start).
fn logged_store(line: &str) -> &str {
    line.split_once("store=")
        .map(|(_, rest)| rest.split_whitespace().next().unwrap())
        .unwrap()
}

/// A node started with a password in its store URL logs the URL with the
/// password hidden; one whose server cannot be reached stops with status
/// 64, naming the store, without the password.
#[test]
fn a_store_password_never_reaches_the_log_or_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let database = authproxy_test_support::fresh_database();
    let with_password = database.replacen("://authproxy@", "://authproxy:s3cret-pw@", 1);
    let config = write_issuer_config(dir.path(), &with_password);
    let mut node = Daemon::issuer(&config, &[]);
    node.signal("-TERM");
    assert!(node.wait_exit(Duration::from_secs(10)).success());
    let log = node.drain_log();
    let ready = log
        .iter()
        .find(|l| l.contains("issuer node ready"))
        .unwrap();
    assert!(
        logged_store(ready).starts_with("postgres://authproxy:***@localhost/"),
        "{ready}"
    );
    assert!(!log.iter().any(|l| l.contains("s3cret-pw")), "{log:#?}");

    let unreachable = "postgres://authproxy:s3cret-pw@localhost/x?host=/nonexistent-authproxy";
    let config = write_issuer_config(dir.path(), unreachable);
    let out = Command::new(BIN)
        .args(["issuer", "serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("cannot open the store postgres://authproxy:***@localhost/x"),
        "{err}"
    );
    assert!(!err.contains("s3cret-pw"), "{err}");
}

fn write_issuer_config(dir: &Path, store: &str) -> PathBuf {
    let config = dir.join("issuer.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[issuer]\nstate_dir = \"{}\"\n[store]\nurl = \"{store}\"\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    config
}
