//! Personal access tokens and the revocation feed at the layer (DESIGN §9):
//! a real feed served over HTTP on 127.0.0.1:0 by a small axum app that a
//! test changes as it goes (what an issuer would answer), the layer driven
//! with `oneshot`.
#![allow(
    missing_docs,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)] // test code: a failure should panic loudly

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use authproxy_core::clock;
use authproxy_core::grant::{Grant, GrantRequest, PatGrantRequest};
use authproxy_core::keys::{SigningKey, random_id};
use authproxy_core::pat::{self, PatName, PatRequest};
use authproxy_core::token::{MintRequest, mint};
use authproxy_layer::{Authorizer, Environment, Jwks, Principal, ScopeSet, Scopes, WorkloadId};
use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{Request, StatusCode, header};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tower::ServiceExt as _;

const AUD: &str = "https://api.example.internal";

/// What the fake issuer serves: its JWKS, its feed, and what was reported.
#[derive(Default)]
struct Issuer {
    jwks: Option<Value>,
    /// (seq, kind, id, expires_at unix)
    revoked: Vec<(u64, &'static str, String, u64)>,
    /// While true, the feed answers 503.
    down: bool,
    used: Vec<String>,
    polls: u64,
    /// While true, the JWKS answers 503.
    jwks_down: bool,
}

type Shared = Arc<Mutex<Issuer>>;

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

async fn feed(
    State(s): State<Shared>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> (StatusCode, axum::Json<Value>) {
    let mut s = s.lock().unwrap();
    s.polls += 1;
    if s.down {
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({})));
    }
    let since: u64 = q.get("since").map_or(0, |c| c.parse().unwrap());
    let entries: Vec<Value> = s
        .revoked
        .iter()
        .filter(|(seq, ..)| *seq > since)
        .map(|(_, kind, id, exp)| json!({"kind": kind, "id": id, "expires_at": rfc3339(*exp)}))
        .collect();
    let cursor = s.revoked.last().map_or(since, |r| r.0.max(since));
    (
        StatusCode::OK,
        axum::Json(json!({"cursor": cursor.to_string(), "revocations": entries})),
    )
}

async fn used(State(s): State<Shared>, axum::Json(body): axum::Json<Value>) -> StatusCode {
    let ids = body["ids"].as_array().unwrap();
    s.lock()
        .unwrap()
        .used
        .extend(ids.iter().map(|v| v.as_str().unwrap().to_owned()));
    StatusCode::NO_CONTENT
}

async fn jwks(State(s): State<Shared>) -> (StatusCode, axum::Json<Value>) {
    let s = s.lock().unwrap();
    if s.jwks_down {
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({})));
    }
    (StatusCode::OK, axum::Json(s.jwks.clone().unwrap()))
}

/// Serves the fake issuer on 127.0.0.1:0; returns its base URL.
async fn serve(state: Shared) -> String {
    let app = Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/v1/revocations", get(feed))
        .route("/v1/pats/used", post(used))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

struct World {
    root: SigningKey,
    state: Shared,
    url: String,
}

impl World {
    async fn new() -> Self {
        let root = SigningKey::generate().unwrap();
        let state: Shared = Arc::default();
        state.lock().unwrap().jwks =
            Some(serde_json::to_value(Jwks::publish([root.public()])).unwrap());
        let url = serve(Arc::clone(&state)).await;
        Self { root, state, url }
    }

    fn pat(&self, name: &str, env: &str, scopes: &str) -> (String, String) {
        let (value, claims) = pat::issue(
            &self.root,
            PatRequest {
                issuer: &self.url,
                name: &PatName::parse(name).unwrap(),
                environment: &Environment::parse(env).unwrap(),
                scopes: &Scopes::parse(scopes).unwrap(),
                ttl_secs: 3600,
            },
            clock::now(),
            random_id(),
        )
        .unwrap();
        (value, claims.jti)
    }

    /// A workload token and its grant id.
    fn token(&self, scope: &str) -> (String, String) {
        let sidecar = SigningKey::generate().unwrap();
        let workload: WorkloadId = "app/web".parse().unwrap();
        let grant = Grant::issue(
            &self.root,
            GrantRequest {
                issuer: &self.url,
                workload: &workload,
                environment: &Environment::parse("main").unwrap(),
                ceiling: &ScopeSet::parse(scope).unwrap(),
                sidecar_key: sidecar.public(),
                ttl_secs: 3600,
            },
            clock::now(),
            random_id(),
        )
        .unwrap();
        let req = MintRequest {
            audience: AUD,
            scope: &ScopeSet::parse(scope).unwrap(),
            ttl_secs: 300,
        };
        let token = mint(&sidecar, &grant, req, clock::now(), random_id()).unwrap();
        (token.token, grant.claims().jti.clone())
    }

    /// A token as the issuer's exchange makes it from a PAT (`pat_id`).
    fn exchanged(&self, pat_name: &str, pat_id: &str, scope: &str) -> String {
        let key = SigningKey::generate().unwrap();
        let grant = Grant::issue_for_pat(
            &self.root,
            PatGrantRequest {
                issuer: &self.url,
                pat: &PatName::parse(pat_name).unwrap(),
                pat_id,
                environment: &Environment::parse("main").unwrap(),
                ceiling: &ScopeSet::parse(scope).unwrap(),
                token_key: key.public(),
                ttl_secs: 300,
            },
            clock::now(),
            random_id(),
        )
        .unwrap();
        let req = MintRequest {
            audience: AUD,
            scope: &ScopeSet::parse(scope).unwrap(),
            ttl_secs: 300,
        };
        mint(&key, &grant, req, clock::now(), random_id())
            .unwrap()
            .token
    }

    fn revoke(&self, kind: &'static str, id: &str) {
        let mut s = self.state.lock().unwrap();
        let seq = s.revoked.last().map_or(1, |r| r.0 + 1);
        s.revoked
            .push((seq, kind, id.to_owned(), clock::now() + 3600));
    }

    async fn authorizer(&self) -> Authorizer {
        Authorizer::builder()
            .issuer(&self.url)
            .audience(AUD)
            .environment("main")
            .revocation_poll_interval(Duration::from_millis(100))
            .revocations_max_stale(Duration::from_secs(2))
            .build()
            .await
            .unwrap()
    }
}

async fn whoami(p: Principal) -> String {
    format!("{} pat={}", p.sub(), p.is_pat())
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
}

async fn call(app: &Router, method: &str, uri: &str, token: &str) -> (StatusCode, String, String) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let challenge = res
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = axum::body::to_bytes(res.into_body(), 1 << 16)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap(), challenge)
}

#[tokio::test]
async fn a_pat_is_verified_and_its_wildcards_cover_routes() {
    let w = World::new().await;
    let app = app(&w.authorizer().await);
    let (value, _) = w.pat("ci.deploy", "main", "task:operate:*");
    let (status, body, _) = call(&app, "POST", "/tasks/send-report/runs", &value).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "pat:ci.deploy pat=true")
    );
    let (status, _, challenge) = call(&app, "GET", "/environment", &value).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(challenge.contains(r#"scope="env:view""#), "{challenge}");

    let (all, _) = w.pat("admin", "main", "*");
    assert_eq!(
        call(&app, "GET", "/environment", &all).await.0,
        StatusCode::OK
    );
    let (env, _) = w.pat("viewer", "main", "env:*");
    assert_eq!(
        call(&app, "GET", "/environment", &env).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&app, "POST", "/tasks/x/runs", &env).await.0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn a_pat_of_another_environment_or_with_a_typo_is_refused() {
    let w = World::new().await;
    let app = app(&w.authorizer().await);
    let (staging, _) = w.pat("ci", "staging", "*");
    assert_eq!(
        call(&app, "GET", "/environment", &staging).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (value, _) = w.pat("ci", "main", "*");
    let mut typo = value.clone().into_bytes();
    let i = typo.len() / 2;
    typo[i] = if typo[i] == b'x' { b'y' } else { b'x' };
    let (status, body, challenge) = call(
        &app,
        "GET",
        "/environment",
        &String::from_utf8(typo).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenge.contains("invalid_token"), "{challenge}");
    assert!(body.contains("checksum"), "{body}");
    assert!(
        !body.contains("ap_pat_"),
        "the value is never echoed: {body}"
    );
    let truncated = &value[..value.len() - 1];
    assert_eq!(
        call(&app, "GET", "/environment", truncated).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn without_a_revocation_feed_pats_are_refused() {
    let w = World::new().await;
    let auth = Authorizer::builder()
        .jwks_url(format!("{}/.well-known/jwks.json", w.url))
        .audience(AUD)
        .environment("main")
        .build()
        .await
        .unwrap();
    let app = app(&auth);
    let (value, _) = w.pat("ci", "main", "*");
    assert_eq!(
        call(&app, "GET", "/environment", &value).await.0,
        StatusCode::UNAUTHORIZED
    );
    let exchanged = w.exchanged("ci", "some-pat-id", "env:view");
    assert_eq!(
        call(&app, "GET", "/environment", &exchanged).await.0,
        StatusCode::UNAUTHORIZED,
        "a token exchanged from a PAT cannot be revoked without a feed either"
    );
    let (token, _) = w.token("env:view");
    assert_eq!(
        call(&app, "GET", "/environment", &token).await.0,
        StatusCode::OK
    );
}

/// Polls every 20 ms until the request is refused; returns how long it took.
async fn refused_within(app: &Router, token: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (status, ..) = call(app, "GET", "/environment", token).await;
        if status == StatusCode::UNAUTHORIZED {
            return start.elapsed();
        }
        assert_eq!(status, StatusCode::OK);
        assert!(start.elapsed() < limit, "still accepted after {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_revoked_pat_its_exchanged_tokens_and_a_revoked_grant_are_refused_within_a_second() {
    let w = World::new().await;
    let app = app(&w.authorizer().await);
    let (value, pat_id) = w.pat("ci", "main", "env:view");
    let exchanged = w.exchanged("ci", &pat_id, "env:view");
    let (token, grant_id) = w.token("env:view");
    let (other, _) = w.token("env:view");
    for t in [&value, &exchanged, &token, &other] {
        assert_eq!(call(&app, "GET", "/environment", t).await.0, StatusCode::OK);
    }
    w.revoke("pat", &pat_id);
    let took = refused_within(&app, &value, Duration::from_secs(1)).await;
    eprintln!("PAT refused {took:?} after its revocation");
    assert_eq!(
        call(&app, "GET", "/environment", &exchanged).await.0,
        StatusCode::UNAUTHORIZED
    );
    w.revoke("grant", &grant_id);
    refused_within(&app, &token, Duration::from_secs(1)).await;
    assert_eq!(
        call(&app, "GET", "/environment", &other).await.0,
        StatusCode::OK,
        "another grant of the same workload is not touched"
    );
}

#[tokio::test]
async fn a_stale_feed_refuses_pats_and_keeps_workload_tokens() {
    let w = World::new().await;
    let app = app(&w.authorizer().await);
    let (value, _) = w.pat("ci", "main", "env:view");
    let (token, _) = w.token("env:view");
    assert_eq!(
        call(&app, "GET", "/environment", &value).await.0,
        StatusCode::OK
    );
    w.state.lock().unwrap().down = true;
    // max_stale is 2 s (whole seconds): refused within 2-3 s of the outage.
    refused_within(&app, &value, Duration::from_secs(4)).await;
    assert_eq!(
        call(&app, "GET", "/environment", &token).await.0,
        StatusCode::OK,
        "workload tokens do not depend on the feed"
    );
    w.state.lock().unwrap().down = false;
    let start = Instant::now();
    while call(&app, "GET", "/environment", &value).await.0 != StatusCode::OK {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "PATs back once the feed is"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_feed_is_read_from_its_cursor_and_keeps_what_it_said() {
    let w = World::new().await;
    let app = app(&w.authorizer().await);
    let (value, pat_id) = w.pat("ci", "main", "env:view");
    w.revoke("grant", "unrelated-1");
    w.revoke("pat", "unrelated-2");
    let polls = w.state.lock().unwrap().polls;
    let start = Instant::now();
    while w.state.lock().unwrap().polls < polls + 3 {
        assert!(start.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        call(&app, "GET", "/environment", &value).await.0,
        StatusCode::OK
    );
    w.revoke("pat", &pat_id);
    refused_within(&app, &value, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn pats_seen_are_reported_for_last_used() {
    let w = World::new().await;
    // The report goes out at most once a minute, the first one at once.
    let app = app(&w.authorizer().await);
    let (value, pat_id) = w.pat("ci", "main", "env:view");
    assert_eq!(
        call(&app, "GET", "/environment", &value).await.0,
        StatusCode::OK
    );
    let start = Instant::now();
    loop {
        if w.state.lock().unwrap().used.contains(&pat_id) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(2), "no usage report");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Several issuer nodes (#15): `.issuer(a).issuer(b)` trusts the roots of
/// both (their JWKS merged), keeps a node's keys while only that node is
/// down (a partial refresh drops nothing), and reads the revocation feed
/// from the first node that answers.
#[tokio::test]
async fn several_issuer_nodes_keys_are_merged_and_the_feed_fails_over() {
    let a = World::new().await;
    let b = World::new().await;
    let auth = Authorizer::builder()
        .issuer(&a.url)
        .issuer(&b.url)
        .audience(AUD)
        .environment("main")
        .refresh_interval(Duration::from_millis(50))
        .revocation_poll_interval(Duration::from_millis(100))
        .revocations_max_stale(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let app = app(&auth);
    let (from_a, _) = a.token("env:view");
    let (from_b, _) = b.token("env:view");
    for t in [&from_a, &from_b] {
        assert_eq!(call(&app, "GET", "/environment", t).await.0, StatusCode::OK);
    }
    // Node A down, JWKS and feed: many scheduled refreshes later its root
    // is still trusted, and B's feed is read instead.
    {
        let mut s = a.state.lock().unwrap();
        s.jwks_down = true;
        s.down = true;
    }
    let (pat, pat_id) = b.pat("ci", "main", "env:view");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        call(&app, "GET", "/environment", &from_a).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&app, "GET", "/environment", &pat).await.0,
        StatusCode::OK
    );
    b.revoke("pat", &pat_id);
    let start = Instant::now();
    while call(&app, "GET", "/environment", &pat).await.0 != StatusCode::UNAUTHORIZED {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "B's feed not read"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
