//! The routes of personal access tokens (DESIGN §9) and of the revocation
//! feed: `/v1/pats…` (admin), `POST /v1/pats/used` (layers),
//! `GET /v1/revocations` (anyone), `POST /v1/grants/revoke` (admin).
//!
//! A PAT's value appears in exactly two answers, create and update, both
//! `Cache-Control: no-store`; the properties ([`PatProps`]) never hold it.

use std::sync::Arc;

use authproxy_core::clock;
use authproxy_core::pat::PatName;
use authproxy_core::{Environment, Scopes, WorkloadId};
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{bearer, no_store};
use crate::error::IssuerError;
use crate::issuer::{Issuer, rfc3339};
use crate::store::PatRecord;
use crate::{Cursor, IssuedPat, NewPat, PatChange};

/// Largest body of `POST /v1/pats/used`.
pub(super) const USED_BODY_BYTES: usize = 64 * 1024;
/// Most ids in one `POST /v1/pats/used`.
pub(super) const MAX_USED_IDS: usize = 1000;

/// The name a `POST /v1/pats/used` route shadows: `GET`, `PATCH` and
/// `DELETE /v1/pats/used` are about the PAT of that name.
pub(super) const USED: &str = "used";

/// What the API shows of a PAT: never its value.
#[derive(Debug, Serialize)]
struct PatProps<'a> {
    name: &'a str,
    environment: &'a str,
    scopes: &'a Scopes,
    /// The current version's id: what the revocation feed names.
    id: &'a str,
    created_at: String,
    updated_at: String,
    expires_at: String,
    last_used_at: Option<String>,
}

impl<'a> From<&'a PatRecord> for PatProps<'a> {
    fn from(p: &'a PatRecord) -> Self {
        Self {
            name: p.name.as_str(),
            environment: p.environment.as_str(),
            scopes: &p.scopes,
            id: &p.jti,
            created_at: rfc3339(p.created_at),
            updated_at: rfc3339(p.updated_at),
            expires_at: rfc3339(p.expires_at),
            last_used_at: p.last_used_at.map(rfc3339),
        }
    }
}

/// `{"pat": PROPS, "value": "ap_pat_…"}`, never cached.
fn issued(status: StatusCode, issued: &IssuedPat) -> Response {
    let body = json!({
        "pat": PatProps::from(&issued.pat),
        "value": issued.value.expose(),
    });
    no_store((status, axum::Json(body)).into_response())
}

fn invalid(message: String) -> IssuerError {
    IssuerError::InvalidRequest(message)
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, IssuerError> {
    serde_json::from_slice(body).map_err(|e| invalid(format!("body must be JSON {shape}: {e}")))
}

fn pat_name(name: &str) -> Result<PatName, IssuerError> {
    PatName::parse(name).map_err(|e| invalid(e.to_string()))
}

fn path_name(path: Result<Path<String>, PathRejection>) -> Result<PatName, IssuerError> {
    let Path(name) = path.map_err(|e| invalid(e.body_text()))?;
    pat_name(&name)
}

/// A list of scope strings (wildcards allowed), each one scope, at least one.
fn scopes(list: &[String]) -> Result<Scopes, IssuerError> {
    if list.is_empty() {
        return Err(invalid("`scopes`: give at least one scope".into()));
    }
    for s in list {
        if s.is_empty() || s.contains(char::is_whitespace) {
            return Err(invalid(format!("`scopes`: `{s}` is not one scope")));
        }
        Scopes::parse(s).map_err(|e| invalid(format!("`scopes`: `{s}` is refused: {e}")))?;
    }
    Scopes::parse(&list.join(" ")).map_err(|e| invalid(format!("`scopes`: {e}")))
}

/// `POST /v1/pats` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    environment: String,
    valid_minutes: u64,
    scopes: Vec<String>,
}

pub(super) async fn create(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, IssuerError> {
    let now = clock::now();
    issuer.authorize_admin(bearer(&headers), now).await?;
    let body: CreateBody = json_body(
        &body,
        "{\"name\", \"environment\", \"valid_minutes\", \"scopes\"}",
    )?;
    let new = NewPat {
        name: pat_name(&body.name)?,
        environment: Environment::parse(&body.environment)
            .map_err(|e| invalid(format!("`environment`: {e}")))?,
        scopes: scopes(&body.scopes)?,
        valid_minutes: body.valid_minutes,
    };
    let created = issuer.create_pat(&new, now).await?;
    Ok(issued(StatusCode::CREATED, &created))
}

pub(super) async fn list(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
) -> Result<Response, IssuerError> {
    issuer
        .authorize_admin(bearer(&headers), clock::now())
        .await?;
    let pats = issuer.pats().await?;
    let props: Vec<PatProps<'_>> = pats.iter().map(PatProps::from).collect();
    Ok(axum::Json(json!({ "pats": props })).into_response())
}

pub(super) async fn show(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, IssuerError> {
    issuer
        .authorize_admin(bearer(&headers), clock::now())
        .await?;
    show_pat(&issuer, &path_name(path)?).await
}

async fn show_pat(issuer: &Issuer, name: &PatName) -> Result<Response, IssuerError> {
    let pat = issuer.pat(name).await?;
    Ok(axum::Json(PatProps::from(&pat)).into_response())
}

/// `PATCH /v1/pats/{name}` body: what changes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    valid_minutes: Option<u64>,
    scopes: Option<Vec<String>>,
}

pub(super) async fn update(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, IssuerError> {
    let now = clock::now();
    issuer.authorize_admin(bearer(&headers), now).await?;
    update_pat(&issuer, &path_name(path)?, &body, now).await
}

async fn update_pat(
    issuer: &Issuer,
    name: &PatName,
    body: &[u8],
    now: u64,
) -> Result<Response, IssuerError> {
    // An empty body is an empty change: a new value, nothing else.
    let body: UpdateBody = if body.iter().all(u8::is_ascii_whitespace) {
        UpdateBody {
            valid_minutes: None,
            scopes: None,
        }
    } else {
        json_body(body, "{[\"valid_minutes\"], [\"scopes\"]}")?
    };
    let change = PatChange {
        scopes: body.scopes.as_deref().map(scopes).transpose()?,
        valid_minutes: body.valid_minutes,
    };
    let updated = issuer.update_pat(name, &change, now).await?;
    Ok(issued(StatusCode::OK, &updated))
}

pub(super) async fn delete(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, IssuerError> {
    let now = clock::now();
    issuer.authorize_admin(bearer(&headers), now).await?;
    issuer.delete_pat(&path_name(path)?, now).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// `/v1/pats/used` is a route of its own (the layers' reports), so the PAT
// *named* `used` is served by these three.

pub(super) async fn show_used(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
) -> Result<Response, IssuerError> {
    issuer
        .authorize_admin(bearer(&headers), clock::now())
        .await?;
    show_pat(&issuer, &pat_name(USED)?).await
}

pub(super) async fn update_used(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, IssuerError> {
    let now = clock::now();
    issuer.authorize_admin(bearer(&headers), now).await?;
    update_pat(&issuer, &pat_name(USED)?, &body, now).await
}

pub(super) async fn delete_used(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
) -> Result<Response, IssuerError> {
    let now = clock::now();
    issuer.authorize_admin(bearer(&headers), now).await?;
    issuer.delete_pat(&pat_name(USED)?, now).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/pats/used` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsedBody {
    ids: Vec<String>,
}

/// `POST /v1/pats/used`: a layer reports the PAT versions it saw. No
/// credential (see [`Issuer::report_pats_used`] for why that is safe).
pub(super) async fn used(
    State(issuer): State<Arc<Issuer>>,
    body: Bytes,
) -> Result<Response, IssuerError> {
    let body: UsedBody = json_body(&body, "{\"ids\": [\"<PAT id>\", …]}")?;
    if body.ids.len() > MAX_USED_IDS {
        return Err(invalid(format!("`ids`: at most {MAX_USED_IDS} per report")));
    }
    issuer.report_pats_used(&body.ids, clock::now()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `?since=CURSOR`; nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FeedQuery {
    since: Option<String>,
}

/// `GET /v1/revocations[?since=CURSOR]`: public (ids and expiries only),
/// never cached, so that a revocation reaches every layer at its next poll.
pub(super) async fn revocations(
    State(issuer): State<Arc<Issuer>>,
    query: Result<Query<FeedQuery>, QueryRejection>,
) -> Result<Response, IssuerError> {
    let Query(query) = query.map_err(|e| invalid(e.body_text()))?;
    let since = query
        .since
        .map(|s| {
            Cursor::parse(&s).ok_or_else(|| {
                invalid(format!(
                    "`since` = `{s}` is not a cursor (a decimal number from an earlier answer)"
                ))
            })
        })
        .transpose()?;
    let feed = issuer.revocations(since, clock::now()).await?;
    let entries: Vec<_> = feed
        .entries
        .iter()
        .map(|e| {
            json!({
                "kind": e.kind.as_str(),
                "id": e.id,
                "expires_at": rfc3339(e.expires_at),
            })
        })
        .collect();
    let body = json!({
        "cursor": feed.cursor.to_string(),
        "revocations": entries,
    });
    Ok(no_store(axum::Json(body).into_response()))
}

/// `POST /v1/grants/revoke` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    environment: String,
    workload: String,
}

pub(super) async fn revoke_grants(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, IssuerError> {
    let now = clock::now();
    issuer.authorize_admin(bearer(&headers), now).await?;
    let body: RevokeBody = json_body(&body, "{\"environment\", \"workload\"}")?;
    let environment = Environment::parse(&body.environment)
        .map_err(|e| invalid(format!("`environment`: {e}")))?;
    let workload: WorkloadId = body
        .workload
        .parse()
        .map_err(|e| invalid(format!("`workload`: {e}")))?;
    let revoked = issuer
        .revoke_workload_grants(&environment, &workload, now)
        .await?;
    Ok(axum::Json(json!({ "revoked": revoked })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn scopes_are_one_per_item_wildcards_allowed_and_never_empty() {
        let ok = scopes(&list(&["task:operate:*", "env:view", "env:view"])).unwrap();
        assert_eq!(ok.to_string(), "env:view task:operate:*");
        for (bad, needle) in [
            (list(&[]), "at least one"),
            (list(&["task:operate:x*"]), "task:operate:x*"),
            (list(&["db:view"]), "db:view"),
            (list(&["env:view task:operate:a"]), "not one scope"),
            (list(&[""]), "not one scope"),
        ] {
            let e = scopes(&bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
    }
}
