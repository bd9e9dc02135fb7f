//! The layer in front of an axum router, driven with `tower::ServiceExt::oneshot`:
//! real tokens minted in memory, no sockets.
#![allow(
    missing_docs,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)] // test code: a failure should panic loudly

use authproxy_core::clock;
use authproxy_core::grant::{Grant, GrantRequest};
use authproxy_core::keys::{SigningKey, random_id};
use authproxy_core::token::{MintRequest, mint};
use authproxy_layer::{
    Authorizer, BuildError, Environment, InvalidToken, Jwks, Part, Principal, Requirement,
    ScopeSet, WorkloadId,
};
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, header};
use axum::routing::{get, post};
use tower::ServiceExt as _;

const AUD: &str = "https://api.example.internal";
const T0: u64 = 1_700_000_000;

/// A root key and a sidecar key whose grant (for `app/web`) it signs.
struct Chain {
    root: SigningKey,
    sidecar: SigningKey,
    grant: Grant,
}

impl Chain {
    /// A grant for `app/web` in `environment`, issued at `issued_at` for a day.
    fn new(environment: &str, ceiling: &str, issued_at: u64) -> Self {
        let root = SigningKey::generate().unwrap();
        let sidecar = SigningKey::generate().unwrap();
        let workload: WorkloadId = "app/web".parse().unwrap();
        let grant = Grant::issue(
            &root,
            GrantRequest {
                issuer: "authproxy-root",
                workload: &workload,
                environment: &Environment::parse(environment).unwrap(),
                ceiling: &ScopeSet::parse(ceiling).unwrap(),
                sidecar_key: sidecar.public(),
                ttl_secs: 24 * 3600,
            },
            issued_at,
            random_id(),
        )
        .unwrap();
        Self {
            root,
            sidecar,
            grant,
        }
    }

    fn main(ceiling: &str) -> Self {
        Self::new("main", ceiling, clock::now())
    }

    fn token_at(&self, scope: &str, ttl_secs: u64, now: u64) -> String {
        let req = MintRequest {
            audience: AUD,
            scope: &ScopeSet::parse(scope).unwrap(),
            ttl_secs,
        };
        mint(&self.sidecar, &self.grant, req, now, random_id())
            .unwrap()
            .token
    }

    /// A token valid for five minutes from the real clock.
    fn token(&self, scope: &str) -> String {
        self.token_at(scope, 300, clock::now())
    }

    async fn authorizer(&self) -> Authorizer {
        Authorizer::builder()
            .keys(Jwks::publish([self.root.public()]))
            .audience(AUD)
            .environment("main")
            .build()
            .await
            .unwrap()
    }
}

async fn whoami(p: Principal) -> String {
    p.sub().to_string()
}

fn app(auth: &Authorizer) -> Router {
    Router::new()
        .route(
            "/environment",
            get(whoami).route_layer(auth.require("env:view")),
        )
        .route(
            "/tasks/{name}/runs",
            post(whoami).route_layer(auth.require("task:operate:{name}")),
        )
        .route("/unguarded", get(whoami))
}

fn request(method: Method, uri: &str, authorization: &[&str]) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(uri);
    for value in authorization {
        req = req.header(header::AUTHORIZATION, *value);
    }
    req.body(Body::empty()).unwrap()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn send(app: Router, req: Request<Body>) -> Response<Body> {
    app.oneshot(req).await.unwrap()
}

async fn text(res: Response<Body>) -> String {
    let bytes = axum::body::to_bytes(res.into_body(), 64 * 1024)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn challenge(res: &Response<Body>) -> &str {
    res.headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap())
        .unwrap_or_default()
}

/// The JSON error body, checked to carry `error` and `error_description`.
async fn error_body(res: Response<Body>) -> serde_json::Value {
    assert_eq!(
        res.headers().get(header::CONTENT_TYPE),
        Some(&HeaderValue::from_static("application/json"))
    );
    let body: serde_json::Value = serde_json::from_str(&text(res).await).unwrap();
    assert!(body["error"].is_string(), "{body}");
    assert!(body["error_description"].is_string(), "{body}");
    body
}

#[tokio::test]
async fn a_good_token_reaches_the_handler_with_its_principal() {
    let chain = Chain::main("env:view task:operate:send-report");
    let app = app(&chain.authorizer().await);
    let token = chain.token("env:view task:operate:send-report");

    let res = send(
        app.clone(),
        request(Method::GET, "/environment", &[&bearer(&token)]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(text(res).await, "app/web");

    let res = send(
        app,
        request(Method::POST, "/tasks/send-report/runs", &[&bearer(&token)]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(text(res).await, "app/web");
}

#[tokio::test]
async fn no_authorization_header_gets_a_bare_bearer_challenge() {
    let chain = Chain::main("env:view");
    let app = app(&chain.authorizer().await);
    let res = send(app, request(Method::GET, "/environment", &[])).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&res), "Bearer");
    error_body(res).await;
}

#[tokio::test]
async fn another_authorization_scheme_gets_a_bare_bearer_challenge() {
    let chain = Chain::main("env:view");
    let app = app(&chain.authorizer().await);
    let res = send(
        app,
        request(Method::GET, "/environment", &["Basic dXNlcjpwYXNz"]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&res), "Bearer");
}

#[tokio::test]
async fn a_garbage_token_is_an_invalid_token() {
    let chain = Chain::main("env:view");
    let app = app(&chain.authorizer().await);
    let res = send(
        app,
        request(Method::GET, "/environment", &["Bearer not.a.jwt"]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge(&res),
        "Bearer error=\"invalid_token\", error_description=\"the access token is invalid\""
    );
    let body = error_body(res).await;
    assert_eq!(body["error"], "invalid_token");
    assert_eq!(body["error_description"], "the access token is invalid");
}

#[tokio::test]
async fn an_expired_token_is_told_it_expired() {
    let issued = clock::now() - 1000;
    let chain = Chain::new("main", "env:view", issued);
    let app = app(&chain.authorizer().await);
    // Sixty seconds of life, a thousand seconds ago: past any leeway.
    let token = chain.token_at("env:view", 60, issued);
    let res = send(
        app,
        request(Method::GET, "/environment", &[&bearer(&token)]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let c = challenge(&res).to_owned();
    assert!(c.contains("error=\"invalid_token\""), "{c}");
    assert!(
        c.contains("error_description=\"the access token expired\""),
        "{c}"
    );
    let body = error_body(res).await;
    assert_eq!(body["error"], "invalid_token");
    assert_eq!(body["error_description"], "the access token expired");
}

#[tokio::test]
async fn a_token_from_another_environment_is_refused() {
    let staging = Chain::new("staging", "env:view", clock::now());
    let app = app(&staging.authorizer().await); // the authorizer serves "main"
    let res = send(
        app,
        request(
            Method::GET,
            "/environment",
            &[&bearer(&staging.token("env:view"))],
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_body(res).await["error"], "invalid_token");
}

#[tokio::test]
async fn two_authorization_headers_are_an_invalid_request() {
    let chain = Chain::main("env:view");
    let app = app(&chain.authorizer().await);
    let good = bearer(&chain.token("env:view"));
    let res = send(app, request(Method::GET, "/environment", &[&good, &good])).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(challenge(&res), "Bearer error=\"invalid_request\"");
    assert_eq!(error_body(res).await["error"], "invalid_request");
}

#[tokio::test]
async fn a_token_without_the_task_gets_insufficient_scope_naming_it() {
    let chain = Chain::main("env:view task:operate:send-report");
    let app = app(&chain.authorizer().await);
    let token = chain.token("env:view task:operate:send-report");
    let res = send(
        app,
        request(Method::POST, "/tasks/other/runs", &[&bearer(&token)]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let c = challenge(&res).to_owned();
    assert!(c.contains("error=\"insufficient_scope\""), "{c}");
    assert!(c.contains("scope=\"task:operate:other\""), "{c}");
    let body = error_body(res).await;
    assert_eq!(body["error"], "insufficient_scope");
    assert_eq!(body["scope"], "task:operate:other");
}

#[tokio::test]
async fn a_token_without_env_view_gets_insufficient_scope() {
    let chain = Chain::main("env:view task:operate:send-report");
    let app = app(&chain.authorizer().await);
    let token = chain.token("task:operate:send-report");
    let res = send(
        app,
        request(Method::GET, "/environment", &[&bearer(&token)]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(challenge(&res).contains("scope=\"env:view\""));
    assert_eq!(error_body(res).await["scope"], "env:view");
}

#[tokio::test]
async fn a_path_parameter_that_is_not_a_name_is_forbidden() {
    let chain = Chain::main("env:view task:operate:send-report");
    let app = app(&chain.authorizer().await);
    let token = chain.token("env:view task:operate:send-report");
    let res = send(
        app.clone(),
        request(Method::POST, "/tasks/Bad%20Name/runs", &[&bearer(&token)]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(challenge(&res).contains("error=\"insufficient_scope\""));
    assert_eq!(error_body(res).await["error"], "insufficient_scope");

    // Not a name either, though it looks like one the token holds.
    let res = send(
        app,
        request(Method::POST, "/tasks/Send-Report/runs", &[&bearer(&token)]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_body(res).await["error"], "insufficient_scope");
}

#[tokio::test]
async fn a_handler_asking_for_a_principal_on_an_unguarded_route_gets_a_server_error() {
    let chain = Chain::main("env:view");
    let app = app(&chain.authorizer().await);
    let token = chain.token("env:view");
    let res = send(app, request(Method::GET, "/unguarded", &[&bearer(&token)])).await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error_body(res).await["error"], "server_error");
}

#[tokio::test]
async fn authorizer_verify_judges_at_the_time_it_is_given() {
    let chain = Chain::new("main", "env:view task:operate:send-report", T0);
    let auth = chain.authorizer().await;
    let token = chain.token_at("env:view", 300, T0);
    let exp = T0 + 300;

    let p = auth.verify(&token, T0 + 1).await.unwrap();
    assert_eq!(p.sub().to_string(), "app/web");
    assert_eq!(p.env().as_str(), "main");
    assert_eq!(p.scopes().exact(), &ScopeSet::parse("env:view").unwrap());
    assert_eq!(p.exp(), exp);
    assert!(!p.jti().is_empty());

    // Default leeway: 30 s.
    assert!(auth.verify(&token, exp + 29).await.is_ok());
    assert_eq!(
        auth.verify(&token, exp + 30).await.unwrap_err(),
        InvalidToken::Expired(Part::Token)
    );
}

#[tokio::test]
async fn authorizer_verify_refuses_a_grant_from_an_untrusted_root() {
    let trusted = Chain::new("main", "env:view", T0);
    let stranger = Chain::new("main", "env:view", T0);
    let auth = trusted.authorizer().await;
    let token = stranger.token_at("env:view", 300, T0);
    assert_eq!(
        auth.verify(&token, T0).await.unwrap_err(),
        InvalidToken::UnknownRootKey
    );
}

#[tokio::test]
async fn an_authorizer_needs_keys_an_audience_and_an_environment() {
    let root = SigningKey::generate().unwrap();
    let keys = || Jwks::publish([root.public()]);
    assert!(matches!(
        Authorizer::builder()
            .audience(AUD)
            .environment("main")
            .build()
            .await,
        Err(BuildError::Missing(_))
    ));
    assert!(matches!(
        Authorizer::builder()
            .keys(keys())
            .environment("main")
            .build()
            .await,
        Err(BuildError::Missing("audience"))
    ));
    assert!(matches!(
        Authorizer::builder()
            .keys(keys())
            .audience(AUD)
            .build()
            .await,
        Err(BuildError::Missing("environment"))
    ));
    assert!(matches!(
        Authorizer::builder()
            .keys(keys())
            .audience(AUD)
            .environment("Not An Env")
            .build()
            .await,
        Err(BuildError::Environment(_))
    ));
}

// #11 item 1: a path value that is not a name must never be echoed into
// `WWW-Authenticate`: `"` would close the scope and add auth-params.
#[tokio::test]
async fn a_path_parameter_cannot_inject_into_the_challenge() {
    let chain = Chain::main("env:view task:operate:send-report");
    let app = app(&chain.authorizer().await);
    let token = chain.token("env:view task:operate:send-report");
    let res = send(
        app,
        request(
            Method::POST,
            "/tasks/x%22,%20error=%22invalid_token/runs",
            &[&bearer(&token)],
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // The route's requirement is named, not the value.
    assert_eq!(
        challenge(&res),
        "Bearer error=\"insufficient_scope\", scope=\"task:operate:{name}\""
    );
    let body = error_body(res).await;
    assert_eq!(body["error"], "insufficient_scope");
    assert_eq!(body["scope"], "task:operate:{name}");
    assert!(!body.to_string().contains("invalid_token"), "{body}");
}

/// `Authorizer::authorize` (for services that route on their own, like
/// `authproxy verifier`) decides exactly as the layer in front of a route:
/// same principal, same refusal, same RFC 6750 response.
#[tokio::test]
async fn authorize_answers_what_the_layer_answers() {
    use axum::response::IntoResponse as _;
    // Granted two hours ago (for a day), so that a token can have expired.
    let two_hours_ago = clock::now() - 7200;
    let chain = Chain::new("main", "env:view task:operate:send-report", two_hours_ago);
    let auth = chain.authorizer().await;
    let app = app(&auth);
    let all = bearer(&chain.token("env:view task:operate:send-report"));
    let task_only = bearer(&chain.token("task:operate:send-report"));
    let expired = bearer(&chain.token_at("env:view", 300, two_hours_ago));
    let env_view = Requirement::parse("env:view").unwrap();
    let task = Requirement::parse("task:operate:{name}").unwrap();
    for (method, uri, requirement, name, authorization) in [
        (
            Method::GET,
            "/environment",
            &env_view,
            None,
            vec![all.as_str()],
        ),
        (Method::GET, "/environment", &env_view, None, vec![]),
        (
            Method::GET,
            "/environment",
            &env_view,
            None,
            vec!["Basic YTpi"],
        ),
        (
            Method::GET,
            "/environment",
            &env_view,
            None,
            vec!["Bearer x.y.z"],
        ),
        (
            Method::GET,
            "/environment",
            &env_view,
            None,
            vec![expired.as_str()],
        ),
        (
            Method::GET,
            "/environment",
            &env_view,
            None,
            vec![task_only.as_str()],
        ),
        (
            Method::GET,
            "/environment",
            &env_view,
            None,
            vec![all.as_str(), all.as_str()],
        ),
        (
            Method::POST,
            "/tasks/send-report/runs",
            &task,
            Some("send-report"),
            vec![task_only.as_str()],
        ),
        (
            Method::POST,
            "/tasks/notify/runs",
            &task,
            Some("notify"),
            vec![all.as_str()],
        ),
        (
            Method::POST,
            "/tasks/NOTIFY/runs",
            &task,
            Some("NOTIFY"),
            vec![all.as_str()],
        ),
    ] {
        let layer = send(app.clone(), request(method.clone(), uri, &authorization)).await;
        let mut headers = axum::http::HeaderMap::new();
        for a in &authorization {
            headers.append(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        let params: Vec<(&str, &str)> = name.map(|n| ("name", n)).into_iter().collect();
        let decided = auth
            .authorize(&headers, requirement, &params, clock::now())
            .await;
        let service = match decided {
            Ok(p) => {
                assert_eq!(p.sub().to_string(), "app/web");
                (StatusCode::OK, String::new(), "app/web".to_owned())
            }
            Err(r) => {
                let res = r.into_response();
                (res.status(), challenge(&res).to_owned(), text(res).await)
            }
        };
        let layered = (
            layer.status(),
            challenge(&layer).to_owned(),
            text(layer).await,
        );
        assert_eq!(service, layered, "{method} {uri} {authorization:?}");
    }
}

fn write_jwks(path: &std::path::Path, roots: &[&SigningKey]) {
    let set = Jwks::publish(roots.iter().map(|k| k.public()));
    std::fs::write(path, serde_json::to_vec(&set).unwrap()).unwrap();
}

// #11 item 2a: after a restart, whoever serves the JWKS serves a set
// without the real root and presents tokens under its own root: each is an
// unknown kid forcing a refetch. The real root must stay trusted.
#[tokio::test]
async fn an_impostor_jwks_cannot_drop_the_real_root_through_refetches() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    let honest = Chain::main("env:view");
    write_jwks(&file, &[&honest.root]);
    let auth = Authorizer::builder()
        .jwks_file(&file)
        .audience(AUD)
        .environment("main")
        .min_refetch_interval(std::time::Duration::ZERO)
        .build()
        .await
        .unwrap();

    // Ten impostor roots in turn: ten unknown kids, ten refetches of a set
    // without the real root.
    for _ in 0..10 {
        let impostor = Chain::main("env:view");
        write_jwks(&file, &[&impostor.root]);
        // Accepted: a new root is trusted at once (2a does not stop that;
        // pinning does, item 2b).
        auth.verify(&impostor.token("env:view"), clock::now())
            .await
            .unwrap();
    }
    let p = auth
        .verify(&honest.token("env:view"), clock::now())
        .await
        .unwrap();
    assert_eq!(p.sub().to_string(), "app/web");
}

// #11 item 2b: with pinned roots, a JWKS is a list of candidates; only a
// key whose RFC 7638 thumbprint is pinned is ever trusted.
#[tokio::test]
async fn a_pinned_root_is_trusted_and_another_root_in_the_same_jwks_is_not() {
    let honest = Chain::main("env:view");
    let other = Chain::main("env:view");
    let auth = Authorizer::builder()
        .keys(Jwks::publish([honest.root.public(), other.root.public()]))
        .pinned_roots([honest.root.public().thumbprint()])
        .audience(AUD)
        .environment("main")
        .build()
        .await
        .unwrap();
    let app = app(&auth);
    let res = send(
        app.clone(),
        request(
            Method::GET,
            "/environment",
            &[&bearer(&honest.token("env:view"))],
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);

    let stranger = other.token("env:view");
    assert_eq!(
        auth.verify(&stranger, clock::now()).await.unwrap_err(),
        InvalidToken::UnknownRootKey
    );
    let res = send(
        app,
        request(Method::GET, "/environment", &[&bearer(&stranger)]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_unpinned_root_served_later_is_never_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    let honest = Chain::main("env:view");
    let impostor = Chain::main("env:view");
    write_jwks(&file, &[&honest.root]);
    let auth = Authorizer::builder()
        .jwks_file(&file)
        .pinned_roots([honest.root.public().thumbprint()])
        .audience(AUD)
        .environment("main")
        .min_refetch_interval(std::time::Duration::ZERO)
        .build()
        .await
        .unwrap();
    let forged = impostor.token("env:view");

    // Beside the real root, then alone: refused either way.
    write_jwks(&file, &[&honest.root, &impostor.root]);
    assert_eq!(
        auth.verify(&forged, clock::now()).await.unwrap_err(),
        InvalidToken::UnknownRootKey
    );
    write_jwks(&file, &[&impostor.root]);
    assert_eq!(
        auth.verify(&forged, clock::now()).await.unwrap_err(),
        InvalidToken::UnknownRootKey
    );
    assert!(
        auth.verify(&honest.token("env:view"), clock::now())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_jwks_without_any_pinned_root_fails_the_build() {
    let honest = SigningKey::generate().unwrap();
    let other = SigningKey::generate().unwrap();
    let err = Authorizer::builder()
        .keys(Jwks::publish([other.public()]))
        .pinned_roots([honest.public().thumbprint()])
        .audience(AUD)
        .environment("main")
        .build()
        .await
        .unwrap_err();
    let shown = err.to_string();
    assert!(shown.contains("none of the 1 pinned root key"), "{shown}");
    // The operator sees what the JWKS holds instead.
    assert!(shown.contains(other.public().thumbprint()), "{shown}");
}

#[tokio::test]
async fn malformed_or_empty_pins_fail_the_build() {
    let root = SigningKey::generate().unwrap();
    let build = |pins: Vec<String>| {
        Authorizer::builder()
            .keys(Jwks::publish([root.public()]))
            .pinned_roots(pins)
            .audience(AUD)
            .environment("main")
            .build()
    };
    for pins in [
        vec![],
        vec!["not-a-thumbprint".to_owned()],
        vec![format!("{}=", root.public().thumbprint())],
    ] {
        let err = build(pins.clone()).await.unwrap_err();
        assert!(err.to_string().contains("pinned_roots"), "{pins:?}: {err}");
    }
    assert!(
        build(vec![root.public().thumbprint().to_owned()])
            .await
            .is_ok()
    );
}

/// A raw HTTP/1.1 server on `127.0.0.1:0`: `answer(n)` is the reply to its
/// n-th request (from 0) as status line and JSON body, or `None` to hold the
/// connection open without a word. Returns its URL and the request count.
async fn raw_server(
    answer: impl Fn(usize) -> Option<(&'static str, Vec<u8>)> + Send + Sync + 'static,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let answer = Arc::clone(&answer);
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = conn.read(&mut head).await;
                let Some((status, body)) = answer(n) else {
                    std::future::pending::<()>().await;
                    return;
                };
                let mut reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                reply.extend_from_slice(&body);
                let _ = conn.write_all(&reply).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (url, hits)
}

// #11 item 16: an upstream started before the sidecar waits for its JWKS.
#[tokio::test]
async fn build_waits_for_a_jwks_file_that_appears_later() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    let chain = Chain::main("env:view");
    let root = chain.root.public().clone();
    let later = file.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let set = Jwks::publish([&root]);
        std::fs::write(later, serde_json::to_vec(&set).unwrap()).unwrap();
    });
    let auth = Authorizer::builder()
        .jwks_file(&file)
        .initial_fetch_timeout(std::time::Duration::from_secs(30))
        .audience(AUD)
        .environment("main")
        .build()
        .await
        .unwrap();
    assert!(
        auth.verify(&chain.token("env:view"), clock::now())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn build_retries_a_failing_jwks_url_until_it_answers() {
    let chain = Chain::main("env:view");
    let body = serde_json::to_vec(&Jwks::publish([chain.root.public()])).unwrap();
    let (url, hits) = raw_server(move |n| {
        Some(if n < 2 {
            ("503 Service Unavailable", b"{}".to_vec())
        } else {
            ("200 OK", body.clone())
        })
    })
    .await;
    let auth = Authorizer::builder()
        .jwks_url(url)
        .initial_fetch_timeout(std::time::Duration::from_secs(30))
        .audience(AUD)
        .environment("main")
        .build()
        .await
        .unwrap();
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert!(
        auth.verify(&chain.token("env:view"), clock::now())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn build_gives_up_on_a_silent_jwks_url_at_the_initial_fetch_timeout() {
    let (url, hits) = raw_server(|_| None).await;
    let started = std::time::Instant::now();
    let err = Authorizer::builder()
        .jwks_url(&url)
        .initial_fetch_timeout(std::time::Duration::from_millis(500))
        .audience(AUD)
        .environment("main")
        .build()
        .await
        .unwrap_err();
    let took = started.elapsed();
    let shown = err.to_string();
    assert!(shown.contains(&url), "the error names the source: {shown}");
    assert!(shown.contains("initial fetch timeout"), "{shown}");
    assert!(hits.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    // Bounded by the timeout, not by the HTTP client's own 10 s (generous:
    // the machine may be loaded).
    assert!(took < std::time::Duration::from_secs(8), "took {took:?}");
}

#[tokio::test]
async fn a_zero_initial_fetch_timeout_makes_one_attempt() {
    let (url, hits) = raw_server(|_| Some(("503 Service Unavailable", b"{}".to_vec()))).await;
    let err = Authorizer::builder()
        .jwks_url(&url)
        .initial_fetch_timeout(std::time::Duration::ZERO)
        .audience(AUD)
        .environment("main")
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("HTTP 503"), "{err}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}
