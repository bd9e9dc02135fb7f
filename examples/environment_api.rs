//! A reference upstream API protected by the authproxy layer.
//!
//! ```sh
//! target/release/examples/environment_api --listen 127.0.0.1:8300 \
//!     --jwks-url http://127.0.0.1:8200/.well-known/jwks.json \
//!     --audience http://127.0.0.1:8300 --environment main \
//!     --pinned-root "$(curl -s http://127.0.0.1:8200/.well-known/jwks.json \
//!         | python3 -c 'import sys,json;print(json.load(sys.stdin)["keys"][0]["kid"])')"
//! ```
//!
//! `--pinned-root` (repeatable, optional) trusts only the roots with these
//! RFC 7638 thumbprints, whatever the JWKS says.
//!
//! Behind a platform issuer, `--issuer http://127.0.0.1:8400` takes the root
//! keys from the issuer's JWKS and polls its revocation feed, so personal
//! access tokens (`Authorization: Bearer ap_pat_…`) are accepted too and
//! refused within a second of their revocation.
//!
//! Routes: `GET /healthz` (open); `GET /environment` (`env:view`);
//! `POST|GET /tasks/{name}/runs`, `GET|DELETE /tasks/{name}/runs/{id}`
//! (`task:operate:{name}`). Runs live in memory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use authproxy_layer::{Authorizer, Principal};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;

/// One task run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    id: String,
    task: String,
    status: &'static str,
    triggered_by: String,
}

#[derive(Clone, Default)]
struct Store {
    runs: Arc<Mutex<HashMap<String, Vec<Run>>>>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Clone)]
struct AppState {
    // Arc: the state is cloned for every request.
    environment: Arc<str>,
    store: Store,
}

/// The API's routes, each guarded by the scope it needs.
pub fn app(auth: &Authorizer, environment: &str) -> Router {
    let state = AppState {
        environment: environment.into(),
        store: Store::default(),
    };
    let task_scope = || auth.require("task:operate:{name}");
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route(
            "/environment",
            get(show_environment).route_layer(auth.require("env:view")),
        )
        .route(
            "/tasks/{name}/runs",
            get(list_runs).post(trigger_run).route_layer(task_scope()),
        )
        .route(
            "/tasks/{name}/runs/{id}",
            get(show_run).delete(cancel_run).route_layer(task_scope()),
        )
        .with_state(state)
}

/// `GET /environment`.
#[derive(Serialize)]
struct EnvironmentView<'a> {
    environment: &'a str,
    principal: String,
    scopes: &'a authproxy_layer::Scopes,
}

async fn show_environment(State(s): State<AppState>, p: Principal) -> Response {
    Json(EnvironmentView {
        environment: &s.environment,
        principal: p.sub().to_string(),
        scopes: p.scopes(),
    })
    .into_response()
}

fn lock(store: &Store) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Run>>> {
    store
        .runs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn trigger_run(
    State(s): State<AppState>,
    Path(name): Path<String>,
    p: Principal,
) -> Response {
    let n = s
        .store
        .next
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        + 1;
    let run = Run {
        id: format!("run-{n}"),
        task: name.clone(),
        status: "queued",
        triggered_by: p.sub().to_string(),
    };
    lock(&s.store).entry(name).or_default().push(run.clone());
    (StatusCode::ACCEPTED, Json(run)).into_response()
}

async fn list_runs(State(s): State<AppState>, Path(name): Path<String>) -> Json<Vec<Run>> {
    Json(lock(&s.store).get(&name).cloned().unwrap_or_default())
}

async fn show_run(State(s): State<AppState>, Path((name, id)): Path<(String, String)>) -> Response {
    match lock(&s.store)
        .get(&name)
        .and_then(|runs| runs.iter().find(|r| r.id == id))
    {
        Some(run) => Json(run.clone()).into_response(),
        None => not_found(),
    }
}

async fn cancel_run(
    State(s): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    let mut runs = lock(&s.store);
    match runs
        .get_mut(&name)
        .and_then(|runs| runs.iter_mut().find(|r| r.id == id))
    {
        Some(run) => {
            run.status = "cancelled";
            Json(run.clone()).into_response()
        }
        None => not_found(),
    }
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "not_found", "error_description": "no such run"})),
    )
        .into_response()
}

#[derive(clap::Parser)]
#[command(about = "Reference upstream API protected by the authproxy layer")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8300")]
    listen: std::net::SocketAddr,
    /// The platform issuer's URL: its JWKS and its revocation feed
    /// (personal access tokens are accepted only with a feed).
    #[arg(long, conflicts_with_all = ["jwks_url", "jwks_file"])]
    issuer: Option<String>,
    /// JWKS URL of the trusted root keys (e.g. the sidecar's).
    #[arg(
        long,
        conflicts_with = "jwks_file",
        required_unless_present_any = ["jwks_file", "issuer"]
    )]
    jwks_url: Option<String>,
    /// JWKS file of the trusted root keys.
    #[arg(long)]
    jwks_file: Option<PathBuf>,
    /// This API's identifier (`aud` of accepted tokens).
    #[arg(long)]
    audience: String,
    /// The environment this API serves.
    #[arg(long)]
    environment: String,
    /// Trust only the root key with this RFC 7638 thumbprint (its `kid`),
    /// whatever the JWKS says; repeat for several roots.
    #[arg(long = "pinned-root", value_name = "THUMBPRINT")]
    pinned_roots: Vec<String>,
}

#[allow(dead_code)] // unused when the tests include this file as a module
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use clap::Parser as _;
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut builder = Authorizer::builder()
        .audience(&args.audience)
        .environment(&args.environment);
    if !args.pinned_roots.is_empty() {
        builder = builder.pinned_roots(args.pinned_roots);
    }
    let builder = match (args.issuer, args.jwks_url, args.jwks_file) {
        (Some(issuer), _, _) => builder.issuer(issuer),
        (None, Some(url), _) => builder.jwks_url(url),
        (None, None, Some(file)) => builder.jwks_file(file),
        (None, None, None) => anyhow::bail!("--issuer, --jwks-url or --jwks-file is required"),
    };
    let auth = builder.build().await?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "environment API listening");
    // The same connection limits as the sidecar: header-read timeout,
    // header cap, connection cap, bounded graceful drain. An upstream's
    // callers are other machines, so they get every slot, not the sidecar's
    // small budget for non-loopback peers.
    let defaults = authproxy::serve::Limits::default();
    authproxy::serve::serve(
        vec![listener],
        app(&auth, &args.environment),
        authproxy::serve::Limits {
            max_remote_connections: defaults.max_connections,
            ..defaults
        },
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    )
    .await?;
    Ok(())
}
