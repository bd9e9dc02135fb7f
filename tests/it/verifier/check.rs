//! `/verify` and Envoy ext_authz checks, asked directly: the answer for a
//! good token, refusals identical to the layer's, deny by default, path
//! tricks, and a client naming its request twice.

use reqwest::Method;
use serde_json::Value;

use super::*;

/// What a refusal looks like to a client: status, challenge, JSON body.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    challenge: Option<String>,
    body: Value,
}

async fn answer(res: reqwest::Response) -> Answer {
    let status = res.status().as_u16();
    let challenge = res
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    Answer {
        status,
        challenge,
        body: res.json().await.unwrap_or(Value::Null),
    }
}

/// The same request to the layer-protected example API and, as a check
/// naming it, to the verifier.
async fn both(
    v: &TestVerifier,
    api: &str,
    method: Method,
    path: &str,
    authorization: &[&str],
) -> (Answer, Answer) {
    let mut direct = client().request(method.clone(), format!("{api}{path}"));
    let mut checked = client()
        .get(format!("{}/verify", v.url))
        .header("x-original-method", method.as_str())
        .header("x-original-uri", path);
    for a in authorization {
        direct = direct.header("authorization", *a);
        checked = checked.header("authorization", *a);
    }
    (
        answer(direct.send().await.unwrap()).await,
        answer(checked.send().await.unwrap()).await,
    )
}

#[tokio::test]
async fn a_good_token_gets_200_with_who_it_speaks_for() {
    let s = spawn_sidecar(Options::default()).await;
    let v = spawn_verifier(&s, &[]).await;
    let t = token(&s, None).await;
    let claims = part(&t, 1);
    for (method, uri) in [
        ("GET", "/environment"),
        ("GET", "/environment?verbose=1"),
        ("HEAD", "/environment"),
        ("POST", "/tasks/send-report/runs"),
        ("DELETE", "/tasks/send-report/runs/run-1"),
    ] {
        let res = check(&v, method, uri, Some(&t)).await;
        assert_eq!(res.status(), 200, "{method} {uri}");
        let h = res.headers();
        assert_eq!(h["x-auth-subject"], "app/web");
        assert_eq!(h["x-auth-environment"], "main");
        assert_eq!(h["x-auth-scope"], claims["scope"].as_str().unwrap());
        assert_eq!(h["x-auth-token-id"], claims["jti"].as_str().unwrap());
    }
}

/// DESIGN §11: "401/403 exactly as the layer" — same status, same
/// `WWW-Authenticate`, same JSON, for every kind of refusal.
#[tokio::test]
async fn refusals_are_exactly_the_layers() {
    let s = spawn_sidecar(Options::default()).await;
    let v = spawn_verifier(&s, &[]).await;
    let auth = authorizer_for(&s).await;
    let (api, _stop) = serve(crate::environment_api::app(&auth, "main")).await;
    let all = format!("Bearer {}", token(&s, None).await);
    let task_only = format!(
        "Bearer {}",
        token(&s, Some("task:operate:send-report")).await
    );
    let expired = format!(
        "Bearer {}",
        token_from_root(&s, "main", AUDIENCE, "env:view", now() - 7200)
    );
    let other_env = format!(
        "Bearer {}",
        token_from_root(&s, "staging", AUDIENCE, "env:view", now())
    );
    let tampered = format!("Bearer {}", tampered(&token(&s, None).await));
    for (method, path, authorization, status) in [
        (Method::GET, "/environment", &[][..], 401),
        (Method::GET, "/environment", &["Basic YTpi"][..], 401),
        (
            Method::GET,
            "/environment",
            &["Bearer not-a-token"][..],
            401,
        ),
        (Method::GET, "/environment", &[expired.as_str()][..], 401),
        (Method::GET, "/environment", &[other_env.as_str()][..], 401),
        (Method::GET, "/environment", &[tampered.as_str()][..], 401),
        (Method::GET, "/environment", &[task_only.as_str()][..], 403),
        (Method::POST, "/tasks/notify/runs", &[all.as_str()][..], 403),
        (Method::POST, "/tasks/NOTIFY/runs", &[all.as_str()][..], 403),
        (
            Method::GET,
            "/environment",
            &[all.as_str(), all.as_str()][..],
            400,
        ),
    ] {
        let (direct, checked) = both(&v, &api, method.clone(), path, authorization).await;
        assert_eq!(direct.status, status, "{method} {path}: {direct:?}");
        assert_eq!(checked, direct, "{method} {path} {authorization:?}");
    }
}

#[tokio::test]
async fn a_public_route_needs_no_token_and_names_nobody() {
    let s = spawn_sidecar(Options::default()).await;
    let v = spawn_verifier(&s, &[]).await;
    let res = check(&v, "GET", "/healthz", None).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("x-auth-subject").is_none());
}

#[tokio::test]
async fn a_request_no_route_takes_is_refused_whatever_the_token() {
    let s = spawn_sidecar(Options::default()).await;
    let v = spawn_verifier(&s, &[]).await;
    let t = token(&s, None).await;
    for (method, uri) in [
        ("GET", "/admin"),
        ("DELETE", "/environment"),
        ("POST", "/healthz"),
        ("GET", "/environment/"),
        ("GET", "//environment"),
        ("POST", "/tasks//runs"),
        ("GET", "/ENVIRONMENT"),
        ("GET", "/environ%6dent"),
    ] {
        let res = check(&v, method, uri, Some(&t)).await;
        assert_eq!(res.status(), 403, "{method} {uri}");
        assert!(res.headers().get("www-authenticate").is_none());
        assert!(res.headers().get("x-auth-subject").is_none());
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"], "access_denied", "{method} {uri}");
    }
}

/// A token for `task:operate:send-report` only must never get a check for
/// `/environment` (env:view) through, however the path is spelt.
#[tokio::test]
async fn path_tricks_never_reach_another_routes_rule() {
    let s = spawn_sidecar(Options::default()).await;
    let v = spawn_verifier(&s, &[]).await;
    let t = token(&s, Some("task:operate:send-report")).await;
    for uri in [
        "/tasks/send-report/runs/../../../environment",
        "/tasks/send-report/runs/%2e%2e/%2E%2E/%2e%2e/environment",
        "/tasks/send-report/runs/.%2e/.%2e/.%2e/environment",
        "/tasks/send-report/runs/..%2f..%2f..%2fenvironment",
        "/tasks/send-report/runs/..\\..\\..\\environment",
        "/tasks/send-report/runs/..%5c..%5c..%5cenvironment",
        "/tasks/send-report/runs/..;/..;/..;/environment",
        "/environment/../tasks/send-report/runs",
        "/./environment",
        "//environment",
    ] {
        let res = check(&v, "GET", uri, Some(&t)).await;
        assert_eq!(res.status(), 403, "{uri}");
        assert!(res.headers().get("x-auth-subject").is_none(), "{uri}");
    }
    // And the other way round: a path that resolves to a route the token
    // has is refused too (the upstream may not resolve it so).
    let res = check(
        &v,
        "POST",
        "/environment/../tasks/send-report/runs",
        Some(&t),
    )
    .await;
    assert_eq!(res.status(), 403);
    // The canonical spelling works.
    let res = check(&v, "POST", "/tasks/send-report/runs", Some(&t)).await;
    assert_eq!(res.status(), 200);
}

/// Behind Traefik a client can add nginx's headers (and the reverse): a
/// check naming its request twice is refused, never resolved by precedence.
#[tokio::test]
async fn a_check_naming_two_requests_is_refused() {
    let s = spawn_sidecar(Options::default()).await;
    let v = spawn_verifier(&s, &[]).await;
    let t = token(&s, Some("task:operate:send-report")).await;
    let res = client()
        .get(format!("{}/verify", v.url))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/environment")
        .header("x-original-method", "GET")
        .header("x-original-uri", "/healthz")
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");
    // Traefik's and Caddy's pair alone is a check like nginx's.
    let res = client()
        .get(format!("{}/verify", v.url))
        .header("x-forwarded-method", "POST")
        .header("x-forwarded-uri", "/tasks/send-report/runs")
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // No pair at all: nothing to check.
    let res = client()
        .get(format!("{}/verify", v.url))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

/// Envoy's ext_authz HTTP service: the check is the original method on the
/// original path under `path_prefix`.
#[tokio::test]
async fn an_envoy_check_is_the_original_request_line_under_the_prefix() {
    let s = spawn_sidecar(Options::default()).await;
    let v = spawn_verifier(&s, &[]).await;
    let t = token(&s, Some("task:operate:send-report")).await;
    let res = client()
        .post(format!("{}/ext_authz/tasks/send-report/runs?x=1", v.url))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-auth-subject"], "app/web");
    let res = client()
        .get(format!("{}/ext_authz/environment", v.url))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(
        res.headers()["www-authenticate"],
        "Bearer error=\"insufficient_scope\", scope=\"env:view\""
    );
    let res = client()
        .delete(format!("{}/ext_authz/environment", v.url))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "no DELETE route");
    // Dot segments as Envoy would forward them unnormalised (reqwest would
    // resolve them, so the request is written by hand).
    let raw = format!(
        "POST /ext_authz/environment/../tasks/send-report/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {t}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let (res, _) = raw_exchange(&v.url, raw.as_bytes(), std::time::Duration::from_secs(5)).await;
    assert!(res.starts_with("HTTP/1.1 403"), "{res}");
    // A custom prefix.
    let v2 = spawn_verifier(&s, &[("AUTHPROXY__EXT_AUTHZ__PATH_PREFIX", "/authz")]).await;
    let res = client()
        .post(format!("{}/authz/tasks/send-report/runs", v2.url))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// Not a second verifier: every checked request is exactly one decision
/// of the layer (its own metric counts them), public routes none.
#[tokio::test]
async fn every_checked_request_is_one_layer_decision() {
    let s = spawn_sidecar(Options::default()).await;
    let v = spawn_verifier(&s, &[]).await;
    let t = token(&s, None).await;
    for _ in 0..3 {
        assert_eq!(
            check(&v, "GET", "/environment", Some(&t)).await.status(),
            200
        );
    }
    assert_eq!(check(&v, "GET", "/environment", None).await.status(), 401);
    assert_eq!(
        check(&v, "POST", "/tasks/notify/runs", Some(&t))
            .await
            .status(),
        403
    );
    assert_eq!(check(&v, "GET", "/healthz", Some(&t)).await.status(), 200);
    assert_eq!(check(&v, "GET", "/admin", Some(&t)).await.status(), 403);
    let metrics = client()
        .get(format!("{}/metrics", v.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |line: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next())
            .map_or(0, |n| n.parse().unwrap())
    };
    assert_eq!(
        count("authproxy_layer_requests_total{result=\"ok\"}"),
        3,
        "{metrics}"
    );
    assert_eq!(
        count("authproxy_layer_requests_total{result=\"missing\"}"),
        1
    );
    assert_eq!(
        count("authproxy_layer_requests_total{result=\"insufficient_scope\"}"),
        1
    );
    assert_eq!(
        count("authproxy_layer_verification_duration_seconds_count"),
        5
    );
    assert_eq!(
        count("authproxy_verifier_checks_total{result=\"allowed\"}"),
        3
    );
    assert_eq!(
        count("authproxy_verifier_checks_total{result=\"public\"}"),
        1
    );
    assert_eq!(
        count("authproxy_verifier_checks_total{result=\"no_route\"}"),
        1
    );
}
