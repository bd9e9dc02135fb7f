//! The issuer's HTTP API (DESIGN §8): [`router`] maps each route to an
//! [`Issuer`] use case. Handlers parse, call, and answer; every refusal is
//! an [`IssuerError`].
//!
//! | method, path | who |
//! |---|---|
//! | `GET /.well-known/jwks.json` | anyone |
//! | `GET /.well-known/oauth-authorization-server` | anyone |
//! | `POST /v1/sync?environment=E[&dry_run=true]` | admin token |
//! | `POST /v1/grants` | workload credential or Kubernetes service-account token |
//! | `/v1/credentials…` ([`credentials`]) | admin token |
//! | `POST /v1/grants/revoke` | admin token ([`pats`]) |
//! | `POST`, `GET /v1/pats`; `GET`, `PATCH`, `DELETE /v1/pats/{name}` | admin token ([`pats`]) |
//! | `POST /v1/pats/used` | anyone: a layer's report ([`pats`]) |
//! | `GET /v1/revocations[?since=CURSOR]` | anyone ([`pats`]) |
//! | `POST /oauth2/token` | a personal access token as client secret ([`token`]) |

mod pats;
mod token;

use std::path::Path;
use std::sync::Arc;

use authproxy_core::clock;
use authproxy_core::declarations::{Declarations, DeclarationsError};
use authproxy_core::keys::PublicKey;
use authproxy_core::{Environment, WorkloadId};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

mod credentials;
use serde::Deserialize;
use serde_json::json;

use crate::error::IssuerError;
use crate::issuer::{GrantApplication, Issuer, rfc3339};

/// Largest request body accepted: a project's declarations fit many times.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The issuer's routes, for `serve::serve` (or `axum::serve` in tests).
pub fn router(issuer: Arc<Issuer>) -> Router {
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/v1/sync", post(sync))
        .route("/v1/grants", post(grants))
        .route("/v1/grants/revoke", post(pats::revoke_grants))
        .route("/v1/pats", post(pats::create).get(pats::list))
        .route(
            "/v1/pats/{name}",
            get(pats::show).patch(pats::update).delete(pats::delete),
        )
        // A route of its own, so the PAT *named* `used` gets its verbs here.
        .route(
            "/v1/pats/used",
            post(pats::used)
                .layer(DefaultBodyLimit::max(pats::USED_BODY_BYTES))
                .merge(
                    get(pats::show_used)
                        .patch(pats::update_used)
                        .delete(pats::delete_used),
                ),
        )
        .route("/v1/revocations", get(pats::revocations))
        .route(
            "/oauth2/token",
            post(token::exchange).layer(DefaultBodyLimit::max(token::TOKEN_BODY_BYTES)),
        )
        .route("/v1/credentials", get(credentials::list))
        .route("/v1/credentials/{id}", get(credentials::show))
        .route("/v1/credentials/{id}/rotate", post(credentials::rotate))
        .route("/v1/credentials/{id}/tasks", get(credentials::tasks))
        .route(
            "/v1/credentials/{id}/tasks/{task_id}",
            get(credentials::task).delete(credentials::cancel),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(issuer)
}

async fn jwks(State(issuer): State<Arc<Issuer>>) -> Result<Response, IssuerError> {
    Ok(axum::Json(issuer.jwks(clock::now()).await?).into_response())
}

async fn metadata(State(issuer): State<Arc<Issuer>>) -> Response {
    axum::Json(issuer.metadata()).into_response()
}

/// `?environment=E[&dry_run=true]`. Unknown parameters are refused: a typo
/// such as `dryrun=true` must not turn a dry run into a real sync.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncQuery {
    environment: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

async fn sync(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
    query: Result<Query<SyncQuery>, QueryRejection>,
    body: Bytes,
) -> Result<Response, IssuerError> {
    let now = clock::now();
    // Authentication before anything else: an unauthenticated caller
    // learns nothing, not even whether its request was well formed.
    issuer.authorize_admin(bearer(&headers), now).await?;
    let Query(query) = query.map_err(|e| IssuerError::InvalidRequest(e.body_text()))?;
    let environment = query
        .environment
        .ok_or_else(|| IssuerError::InvalidRequest("`environment` is required".into()))?;
    let environment = Environment::parse(&environment)
        .map_err(|e| IssuerError::InvalidRequest(format!("environment: {e}")))?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| IssuerError::InvalidRequest("the declarations must be UTF-8 YAML".into()))?;
    // The same validation as `authproxy check`.
    let declarations = match Declarations::parse(text, Path::new("declarations")) {
        Ok(d) => d,
        Err(DeclarationsError::Invalid { problems, .. }) => {
            return Err(IssuerError::InvalidDeclarations(problems));
        }
        Err(e) => return Err(IssuerError::InvalidRequest(e.to_string())),
    };
    let report = issuer
        .sync(&environment, &declarations, query.dry_run, now)
        .await?;
    // The body may carry new credentials: never cached.
    Ok(no_store(axum::Json(report).into_response()))
}

/// `{"workload","environment","public_key"}`; nothing else (a `scope`
/// member, say, must not look as if it were honoured).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    workload: String,
    environment: String,
    public_key: serde_json::Value,
}

async fn grants(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, IssuerError> {
    let now = clock::now();
    let caller = issuer.authenticate_bootstrap(bearer(&headers), now).await?;
    let application = grant_application(&body)?;
    let issued = issuer.issue_grant(&caller, &application, now).await?;
    let response = axum::Json(json!({
        "grant": issued.grant,
        "expires_at": rfc3339(issued.expires_at),
    }))
    .into_response();
    Ok(no_store(response))
}

fn grant_application(body: &[u8]) -> Result<GrantApplication, IssuerError> {
    let invalid = IssuerError::InvalidRequest;
    let body: GrantBody = serde_json::from_slice(body).map_err(|e| {
        invalid(format!(
            "body must be JSON {{\"workload\", \"environment\", \"public_key\"}}: {e}"
        ))
    })?;
    let workload: WorkloadId = body
        .workload
        .parse()
        .map_err(|e| invalid(format!("workload: {e}")))?;
    let environment =
        Environment::parse(&body.environment).map_err(|e| invalid(format!("environment: {e}")))?;
    // A private JWK member means the sidecar's key has just left it.
    if body.public_key.get("d").is_some() {
        return Err(invalid(
            "public_key holds a private key (`d`): send only the public JWK".into(),
        ));
    }
    let public_key = serde_json::from_value(body.public_key)
        .ok()
        .and_then(|jwk| PublicKey::from_jwk(&jwk))
        .ok_or_else(|| {
            invalid("public_key must be an Ed25519 public JWK (kty OKP, crv Ed25519, x)".into())
        })?;
    Ok(GrantApplication {
        workload,
        environment,
        public_key,
    })
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_token_is_taken_whatever_the_scheme_case() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn a_grant_body_needs_a_workload_an_environment_and_an_ed25519_public_jwk() {
        let key = authproxy_core::keys::SigningKey::generate().unwrap();
        let jwk = serde_json::to_value(key.public().bare_jwk()).unwrap();
        let ok = json!({"workload": "app/web", "environment": "main", "public_key": jwk});
        let a = grant_application(ok.to_string().as_bytes()).unwrap();
        assert_eq!(a.public_key.thumbprint(), key.public().thumbprint());

        let mut private = jwk.clone();
        private["d"] = json!("c2VjcmV0");
        for (body, needle) in [
            (
                json!({"workload": "cron/x", "environment": "main", "public_key": jwk}),
                "workload",
            ),
            (
                json!({"workload": "app/web", "environment": "Main", "public_key": jwk}),
                "environment",
            ),
            (
                json!({"workload": "app/web", "environment": "main", "public_key": {"kty": "oct", "k": "eA"}}),
                "Ed25519",
            ),
            (
                json!({"workload": "app/web", "environment": "main", "public_key": private}),
                "private",
            ),
            (
                json!({"workload": "app/web", "environment": "main", "public_key": jwk, "scope": "env:view"}),
                "scope",
            ),
        ] {
            let e = grant_application(body.to_string().as_bytes()).unwrap_err();
            assert!(matches!(e, IssuerError::InvalidRequest(_)), "{e:?}");
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        }
    }
}
