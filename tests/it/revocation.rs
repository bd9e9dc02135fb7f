//! Revocation end to end (issue #13): the real issuer, the example upstream
//! behind the layer built with `.issuer(url)`, personal access tokens made
//! through the management API, a remote sidecar's grant revoked. The
//! delays are measured by polling every 100 ms, as the issue asks.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::*;
use crate::remote::{Platform, remote_config, status_of};

/// The contract: refused by every layer within 5 s.
const WITHIN: Duration = Duration::from_secs(5);

struct Admin {
    url: String,
    token: String,
}

impl Admin {
    fn of(platform: &Platform) -> Self {
        let token = std::fs::read_to_string(platform.state_dir().join("admin-token")).unwrap();
        Self {
            url: platform.url.clone(),
            token: token.trim().to_owned(),
        }
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = client()
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn create_pat(&self, name: &str, scopes: &[&str]) -> String {
        let (status, body) = self
            .send(
                Method::POST,
                "/v1/pats",
                Some(json!({"name": name, "environment": "main", "valid_minutes": 60, "scopes": scopes})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["value"].as_str().unwrap().to_owned()
    }
}

async fn upstream(platform: &Platform) -> (String, Stoppable) {
    let auth = authproxy_layer::Authorizer::builder()
        .issuer(&platform.url)
        .audience(AUDIENCE)
        .environment("main")
        .build()
        .await
        .unwrap();
    serve_stoppable(crate::environment_api::app(&auth, "main")).await
}

async fn trigger(api: &str, token: &str) -> (u16, Value) {
    let (status, _, body) = call(
        Method::POST,
        &format!("{api}/tasks/send-report/runs"),
        Some(token),
    )
    .await;
    (status, body)
}

/// Polls every 100 ms until `token` is refused (401); returns how long that
/// took after `since`.
async fn refused_after(api: &str, token: &str, since: Instant) -> Duration {
    loop {
        let (status, body) = trigger(api, token).await;
        if status == 401 {
            return since.elapsed();
        }
        assert_eq!(status, 202, "{body}");
        assert!(since.elapsed() < WITHIN, "still accepted after {WITHIN:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn median_and_max(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() - 1])
}

#[tokio::test]
async fn a_deleted_pat_is_refused_by_the_upstream_within_five_seconds_over_twenty_trials() {
    let platform = Platform::start("1h");
    platform.synced(E2E_PROJECT);
    let admin = Admin::of(&platform);
    let (api, _stop) = upstream(&platform).await;

    let mut delays = Vec::new();
    for i in 0..20 {
        let name = format!("ci-{i}");
        let value = admin.create_pat(&name, &["task:operate:*"]).await;
        let (status, run) = trigger(&api, &value).await;
        assert_eq!(status, 202, "{run}");
        assert_eq!(run["triggered_by"], format!("pat:{name}"));
        let (status, body) = admin
            .send(Method::DELETE, &format!("/v1/pats/{name}"), None)
            .await;
        assert_eq!(status, 204, "{body}");
        delays.push(refused_after(&api, &value, Instant::now()).await);
    }
    let (median, max) = median_and_max(delays);
    eprintln!("PAT delete → refused at the upstream, 20 trials: median {median:?}, max {max:?}");
}

#[tokio::test]
async fn an_updated_pat_revokes_its_old_value_and_the_new_one_works() {
    let platform = Platform::start("1h");
    platform.synced(E2E_PROJECT);
    let admin = Admin::of(&platform);
    let (api, _stop) = upstream(&platform).await;

    let old = admin.create_pat("ci", &["task:*"]).await;
    assert_eq!(trigger(&api, &old).await.0, 202);
    let (status, body) = admin
        .send(
            Method::PATCH,
            "/v1/pats/ci",
            Some(json!({"scopes": ["task:operate:send-report"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let new = body["value"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    let took = refused_after(&api, &old, Instant::now()).await;
    eprintln!("PAT update → old value refused after {took:?}");
    assert_eq!(trigger(&api, &new).await.0, 202);
    // The new scopes are what the new value carries.
    let (status, _, _) = call(
        Method::POST,
        &format!("{api}/tasks/notify/runs"),
        Some(&new),
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_token_exchanged_from_a_pat_dies_with_the_pat() {
    let platform = Platform::start("1h");
    platform.synced(E2E_PROJECT);
    let admin = Admin::of(&platform);
    let (api, _stop) = upstream(&platform).await;

    let value = admin.create_pat("ci", &["task:operate:*"]).await;
    let (status, body) = request_token(
        &format!("{}/oauth2/token", platform.url),
        &[
            ("grant_type", "client_credentials"),
            ("client_secret", value.as_str()),
            ("resource", AUDIENCE),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert!(!token.starts_with("ap_pat_"));
    let (status, run) = trigger(&api, &token).await;
    assert_eq!(status, 202, "{run}");
    assert_eq!(run["triggered_by"], "pat:ci");

    assert_eq!(admin.send(Method::DELETE, "/v1/pats/ci", None).await.0, 204);
    let took = refused_after(&api, &token, Instant::now()).await;
    eprintln!("PAT delete → exchanged token refused after {took:?}");
}

#[tokio::test]
async fn revoking_a_workloads_grants_cuts_its_tokens_off_within_five_seconds() {
    let platform = Platform::start("1h");
    platform.synced(E2E_PROJECT);
    let admin = Admin::of(&platform);
    let (api, _stop) = upstream(&platform).await;

    let dir = tempfile::tempdir().unwrap();
    let web = Daemon::start(
        &remote_config(dir.path(), &platform, "app/web", "app/web"),
        "text",
        "info",
    );
    let dir2 = tempfile::tempdir().unwrap();
    let task = Daemon::start(
        &remote_config(
            dir2.path(),
            &platform,
            "task/send-report",
            "task/send-report",
        ),
        "text",
        "info",
    );
    for d in [&web, &task] {
        let started = Instant::now();
        while status_of(&format!("{}/readyz", d.url)).await != 200 {
            assert!(started.elapsed() < Duration::from_secs(10), "never ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let token_of = |d: &Daemon| format!("{}/oauth2/token", d.url);
    let (_, body) = request_token(&token_of(&web), &[("grant_type", "client_credentials")]).await;
    let web_token = body["access_token"].as_str().unwrap().to_owned();
    let (_, body) = request_token(&token_of(&task), &[("grant_type", "client_credentials")]).await;
    let task_token = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(trigger(&api, &web_token).await.0, 202);

    let (status, body) = admin
        .send(
            Method::POST,
            "/v1/grants/revoke",
            Some(json!({"environment": "main", "workload": "app/web"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["revoked"].as_u64().unwrap() >= 1, "{body}");
    let took = refused_after(&api, &web_token, Instant::now()).await;
    eprintln!("grant revoke → workload token refused after {took:?}");
    // A token minted later under the same grant is refused too.
    let (_, body) = request_token(&token_of(&web), &[("grant_type", "client_credentials")]).await;
    let fresh = body["access_token"].as_str().unwrap();
    assert_eq!(trigger(&api, fresh).await.0, 401);
    // Another workload is not touched.
    let (status, _, _) = call(
        Method::POST,
        &format!("{api}/tasks/send-report/runs"),
        Some(&task_token),
    )
    .await;
    assert_ne!(status, 401);
}

/// The verifier (issue #16) is the layer as a service: a PAT works through
/// `/verify` and is refused there within 5 s of its deletion too.
#[tokio::test]
async fn the_verifier_accepts_a_pat_and_refuses_it_once_deleted() {
    let platform = Platform::start("1h");
    platform.synced(E2E_PROJECT);
    let admin = Admin::of(&platform);
    let env = [
        ("AUTHPROXY__TRUST__ISSUERS", platform.url.as_str()),
        ("AUTHPROXY__TRUST__AUDIENCE", AUDIENCE),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let verifier = crate::verifier::spawn_verifier_with(env, "127.0.0.1:0").await;
    let value = admin.create_pat("ci", &["task:operate:*"]).await;
    let res =
        crate::verifier::check(&verifier, "POST", "/tasks/send-report/runs", Some(&value)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-auth-subject"], "pat:ci");
    assert_eq!(res.headers()["x-auth-scope"], "task:operate:*");
    let res = crate::verifier::check(&verifier, "GET", "/environment", Some(&value)).await;
    assert_eq!(res.status(), 403, "task:operate:* does not cover env:view");

    assert_eq!(admin.send(Method::DELETE, "/v1/pats/ci", None).await.0, 204);
    let since = Instant::now();
    loop {
        let res =
            crate::verifier::check(&verifier, "POST", "/tasks/send-report/runs", Some(&value))
                .await;
        if res.status() == 401 {
            break;
        }
        assert_eq!(res.status(), 200);
        assert!(since.elapsed() < WITHIN, "still accepted after {WITHIN:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "PAT delete → refused by the verifier after {:?}",
        since.elapsed()
    );
}
