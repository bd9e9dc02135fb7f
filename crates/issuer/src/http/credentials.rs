//! The credential lifecycle's routes (DESIGN §10), all behind the admin
//! token:
//!
//! | method, path | answer |
//! |---|---|
//! | `GET /v1/credentials` | `{"credentials":[…]}`, each with its versions |
//! | `GET /v1/credentials/{id}` | one credential |
//! | `POST /v1/credentials/{id}/rotate` | 202, the queued `manual_rotation` task |
//! | `GET /v1/credentials/{id}/tasks` | `{"tasks":[…]}`, oldest first |
//! | `GET /v1/credentials/{id}/tasks/{task_id}` | one task |
//! | `DELETE /v1/credentials/{id}/tasks/{task_id}` | cancel: 200 with the task, `failed` with error `cancelled`; 409 once final |

use std::sync::Arc;

use authproxy_core::clock;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::bearer;
use crate::error::IssuerError;
use crate::issuer::Issuer;
use crate::issuer::credentials::{CredentialView, TaskView};

pub(super) async fn list(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
) -> Result<Response, IssuerError> {
    let now = clock::now();
    issuer.authorize_admin(bearer(&headers), now).await?;
    let credentials = issuer.list_credentials(now).await?;
    Ok(axum::Json(json!({ "credentials": credentials })).into_response())
}

pub(super) async fn show(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, IssuerError> {
    let now = clock::now();
    issuer.authorize_admin(bearer(&headers), now).await?;
    let record = issuer
        .store()
        .credential(&id)
        .await?
        .ok_or_else(|| IssuerError::NotFound(format!("no credential `{id}`")))?;
    Ok(axum::Json(CredentialView::of(&record, now)).into_response())
}

pub(super) async fn rotate(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, IssuerError> {
    let now = clock::now();
    issuer.authorize_admin(bearer(&headers), now).await?;
    let task = issuer.rotate(&id, now).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(TaskView::from(&task))).into_response())
}

pub(super) async fn tasks(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, IssuerError> {
    let now = clock::now();
    issuer.authorize_admin(bearer(&headers), now).await?;
    let tasks: Vec<TaskView> = issuer
        .credential_tasks(&id)
        .await?
        .iter()
        .map(TaskView::from)
        .collect();
    Ok(axum::Json(json!({ "tasks": tasks })).into_response())
}

pub(super) async fn task(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
    Path((id, task_id)): Path<(String, String)>,
) -> Result<Response, IssuerError> {
    let now = clock::now();
    issuer.authorize_admin(bearer(&headers), now).await?;
    let task = issuer.credential_task(&id, &task_id).await?;
    Ok(axum::Json(TaskView::from(&task)).into_response())
}

pub(super) async fn cancel(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
    Path((id, task_id)): Path<(String, String)>,
) -> Result<Response, IssuerError> {
    let now = clock::now();
    issuer.authorize_admin(bearer(&headers), now).await?;
    let task = issuer.cancel_task(&id, &task_id, now).await?;
    Ok(axum::Json(TaskView::from(&task)).into_response())
}
