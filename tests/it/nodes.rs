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
    /// The `kid` of this node's root key, from its private file.
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
                         [store]\nurl = \"{database}\"\n",
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
