//! The client of the issuer's management API shared by the `pat` verbs
//! and `issuer grants revoke`: the issuer URL (`--issuer`, `http://` when
//! it has no scheme), the admin token read from `--admin-token-file`, one
//! JSON request, and the issuer's refusals turned into one line that says
//! what it said (`error_description`).

use std::path::PathBuf;
use std::time::Duration;

use authproxy_core::oauth::ErrorBody;
use reqwest::Method;
use serde_json::Value;

use crate::telemetry::describe;

/// How long one management request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What a management verb prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Aligned columns or `key  value` lines.
    Table,
    /// The issuer's JSON.
    Json,
}

/// Where a management verb sends its request.
#[derive(Debug, Clone)]
pub struct Target {
    /// The issuer's base URL (`http://` if it has no scheme).
    pub issuer: String,
    /// The file holding the admin token.
    pub admin_token_file: PathBuf,
    /// What to print.
    pub format: OutputFormat,
}

/// Why a management request failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum AdminError {
    /// The issuer could not be reached or did not answer.
    #[error("cannot reach the issuer at {url}: {message}")]
    Unreachable { url: String, message: String },
    /// The issuer refused the admin token.
    #[error("the issuer refused the admin token from {file} (HTTP 401)")]
    Unauthorized { file: PathBuf },
    /// The issuer refused the request: its description, its status and code.
    #[error("{description} (HTTP {status} {error})")]
    Refused {
        status: u16,
        error: String,
        description: String,
    },
    /// The issuer answered something that is not its API.
    #[error("unexpected answer from the issuer (HTTP {status}): {message}")]
    BadAnswer { status: u16, message: String },
}

/// A management client with its admin token loaded.
pub(super) struct Admin {
    base: String,
    token: String,
    file: PathBuf,
    client: reqwest::Client,
}

impl Admin {
    /// Reads the admin token; an unreadable file is the caller's usage error.
    pub(super) fn new(target: &Target) -> Result<Self, String> {
        let token = super::issuer::read_admin_token(&target.admin_token_file)?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {}", describe(&e)))?;
        Ok(Self {
            base: crate::client::base_url(&target.issuer),
            token,
            file: target.admin_token_file.clone(),
            client,
        })
    }

    /// Sends `method path` with the admin token (and `body` as JSON);
    /// returns the status and the JSON answer (`Null` when empty) of a
    /// 2xx, or what the refusal said.
    pub(super) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), AdminError> {
        let unreachable = |e: reqwest::Error| AdminError::Unreachable {
            url: self.base.clone(),
            message: describe(&e),
        };
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(unreachable)?;
        let bad = |message: String| AdminError::BadAnswer { status, message };
        if status == 401 {
            return Err(AdminError::Unauthorized {
                file: self.file.clone(),
            });
        }
        if !(200..300).contains(&status) {
            let body: ErrorBody = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            return Err(AdminError::Refused {
                status,
                error: body.error,
                description: body.error_description,
            });
        }
        if text.trim().is_empty() {
            return Ok((status, Value::Null));
        }
        let value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        Ok((status, value))
    }
}

/// Runs `f` with a management client on a one-thread runtime: exit 64 when
/// the admin token file cannot be used, 1 when the request fails.
pub(super) fn run<F, Fut>(target: &Target, f: F) -> Result<Value, std::process::ExitCode>
where
    F: FnOnce(Admin) -> Fut,
    Fut: std::future::Future<Output = Result<Value, AdminError>>,
{
    let admin = Admin::new(target).map_err(|e| super::usage_error(&e))?;
    let runtime = super::client_runtime().map_err(|e| super::failure(&e))?;
    runtime.block_on(f(admin)).map_err(|e| super::failure(&e))
}

/// Aligned columns: a header row, then one row per item; trailing spaces cut.
pub(super) fn columns(rows: &[Vec<String>]) -> String {
    let width = |i: usize| {
        rows.iter()
            .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len)).map(width).collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_trim() {
        let rows = vec![
            vec!["NAME".into(), "ENV".into(), "X".into()],
            vec!["a-long-name".into(), "main".into(), String::new()],
        ];
        assert_eq!(columns(&rows), "NAME         ENV   X\na-long-name  main\n");
    }
}
