//! End-to-end flows: real sidecars and the example upstream on 127.0.0.1:0.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use crate::common::*;
use reqwest::Method;

async fn sidecar(workload: &'static str) -> TestSidecar {
    spawn_sidecar(Options {
        workload,
        declarations: E2E_PROJECT,
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn an_app_triggers_a_task_and_reads_its_run() {
    let web = sidecar("app/web").await;
    let auth = authorizer_for(&web).await;
    let (api, _stop) = serve(crate::environment_api::app(&auth, "main")).await;
    let token = token(&web, None).await;

    let (st, _, run) = call(
        Method::POST,
        &format!("{api}/tasks/send-report/runs"),
        Some(&token),
    )
    .await;
    assert_eq!(st, 202, "{run}");
    assert_eq!(run["status"], "queued");
    assert_eq!(run["task"], "send-report");
    assert_eq!(run["triggered_by"], "app/web");
    let id = run["id"].as_str().unwrap();

    let (st, _, got) = call(
        Method::GET,
        &format!("{api}/tasks/send-report/runs/{id}"),
        Some(&token),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(got["id"], id);
    let (st, _, list) = call(
        Method::GET,
        &format!("{api}/tasks/send-report/runs"),
        Some(&token),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (st, _, cancelled) = call(
        Method::DELETE,
        &format!("{api}/tasks/send-report/runs/{id}"),
        Some(&token),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(cancelled["status"], "cancelled");

    let (st, _, env) = call(Method::GET, &format!("{api}/environment"), Some(&token)).await;
    assert_eq!(st, 200);
    assert_eq!(env["environment"], "main");
    assert_eq!(env["principal"], "app/web");
}

#[tokio::test]
async fn a_task_triggers_the_task_it_declared_and_no_other() {
    let task = sidecar("task/send-report").await;
    let auth = authorizer_for(&task).await;
    let (api, _stop) = serve(crate::environment_api::app(&auth, "main")).await;
    let token = token(&task, None).await;

    let (st, _, run) = call(
        Method::POST,
        &format!("{api}/tasks/notify/runs"),
        Some(&token),
    )
    .await;
    assert_eq!(st, 202, "{run}");
    assert_eq!(run["triggered_by"], "task/send-report");

    let (st, www, body) = call(
        Method::POST,
        &format!("{api}/tasks/send-report/runs"),
        Some(&token),
    )
    .await;
    assert_eq!(st, 403);
    assert_eq!(
        www.as_deref(),
        Some("Bearer error=\"insufficient_scope\", scope=\"task:operate:send-report\"")
    );
    assert_eq!(body["error"], "insufficient_scope");
    assert_eq!(body["scope"], "task:operate:send-report");
}

#[tokio::test]
async fn an_inheriting_worker_views_the_environment_and_an_overriding_one_cannot() {
    let queue = sidecar("worker/web/queue").await;
    let mailer = spawn_sidecar(Options {
        workload: "worker/web/mailer",
        declarations: E2E_PROJECT,
        state_dir: Some(queue.state_dir.clone()),
        ..Options::default()
    })
    .await;
    let auth = authorizer_for(&queue).await;
    let (api, _stop) = serve(crate::environment_api::app(&auth, "main")).await;

    let t = token(&queue, None).await;
    let (st, _, env) = call(Method::GET, &format!("{api}/environment"), Some(&t)).await;
    assert_eq!(st, 200);
    assert_eq!(env["principal"], "worker/web/queue");

    let t = token(&mailer, None).await;
    let (st, www, _) = call(Method::GET, &format!("{api}/environment"), Some(&t)).await;
    assert_eq!(st, 403);
    assert!(www.unwrap().contains("scope=\"env:view\""));
    // …and what it did declare works.
    let (st, _, _) = call(Method::POST, &format!("{api}/tasks/notify/runs"), Some(&t)).await;
    assert_eq!(st, 202);
}

#[tokio::test]
async fn a_narrowed_token_does_only_what_it_names() {
    let web = sidecar("app/web").await;
    let auth = authorizer_for(&web).await;
    let (api, _stop) = serve(crate::environment_api::app(&auth, "main")).await;
    let t = token(&web, Some("env:view")).await;
    assert_eq!(
        call(Method::GET, &format!("{api}/environment"), Some(&t))
            .await
            .0,
        200
    );
    assert_eq!(
        call(
            Method::POST,
            &format!("{api}/tasks/send-report/runs"),
            Some(&t)
        )
        .await
        .0,
        403
    );
}

#[tokio::test]
async fn a_token_from_another_environment_under_the_same_root_is_refused() {
    let main = sidecar("app/web").await;
    let staging = spawn_sidecar(Options {
        environment: "staging",
        declarations: E2E_PROJECT,
        state_dir: Some(main.state_dir.clone()),
        ..Options::default()
    })
    .await;
    // Same root key: both sidecars publish the same JWKS.
    let a = jwks_json(&main).await;
    let b = jwks_json(&staging).await;
    assert_eq!(a, b);

    let auth = authorizer_for(&main).await;
    let (api, _stop) = serve(crate::environment_api::app(&auth, "main")).await;
    let t = token(&staging, None).await;
    let (st, www, body) = call(Method::GET, &format!("{api}/environment"), Some(&t)).await;
    assert_eq!(st, 401);
    assert!(www.unwrap().starts_with("Bearer error=\"invalid_token\""));
    assert_eq!(body["error"], "invalid_token");
    assert_eq!(
        auth.verify(&t, now()).await.unwrap_err(),
        authproxy_core::verify::InvalidToken::WrongEnvironment
    );
}

#[tokio::test]
async fn requests_without_a_usable_token_get_rfc_6750_answers() {
    let web = sidecar("app/web").await;
    let auth = authorizer_for(&web).await;
    let (api, _stop) = serve(crate::environment_api::app(&auth, "main")).await;
    let url = format!("{api}/environment");

    // No credentials at all: a bare challenge, no error code (RFC 6750 §3.1).
    let (st, www, body) = call(Method::GET, &url, None).await;
    assert_eq!(st, 401);
    assert_eq!(www.as_deref(), Some("Bearer"));
    assert!(body["error_description"].is_string());

    let (st, www, body) = call(Method::GET, &url, Some("not-a-jwt")).await;
    assert_eq!(st, 401);
    assert!(www.unwrap().starts_with("Bearer error=\"invalid_token\""));
    assert_eq!(body["error"], "invalid_token");

    // Basic credentials are not bearer credentials.
    let res = client()
        .get(&url)
        .basic_auth("u", Some("p"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    // Two Authorization headers: malformed request.
    let t = token(&web, None).await;
    let res = client()
        .get(&url)
        .header("authorization", format!("Bearer {t}"))
        .header("authorization", format!("Bearer {t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);

    // The open route needs nothing.
    assert_eq!(
        call(Method::GET, &format!("{api}/healthz"), None).await.0,
        200
    );

    // A resource that is not a valid name can never be covered.
    let (st, www, _) = call(
        Method::POST,
        &format!("{api}/tasks/Send%20Report/runs"),
        Some(&t),
    )
    .await;
    assert_eq!(st, 403);
    assert!(www.unwrap().contains("insufficient_scope"));
}

#[tokio::test]
async fn a_refusal_never_echoes_the_token() {
    let web = sidecar("app/web").await;
    let auth = authorizer_for(&web).await;
    let (api, _stop) = serve(crate::environment_api::app(&auth, "main")).await;
    let t = token(&web, Some("env:view")).await;
    let res = client()
        .post(format!("{api}/tasks/send-report/runs"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    let www = res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = res.text().await.unwrap();
    for part in t.split('.') {
        assert!(!body.contains(part) && !www.contains(part));
    }
}
