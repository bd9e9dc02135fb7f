//! A client of the sidecar's token endpoint, for scripts and crons
//! (`authproxy token`) and for Rust code that wants a token.

use authproxy_core::oauth::ErrorBody;
use serde::{Deserialize, Serialize};

use crate::telemetry::describe;

/// The token endpoint's success response (RFC 6749 §5.1).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The access token. A secret: do not log it.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds of life left.
    pub expires_in: u64,
    /// The granted scopes, space-separated.
    pub scope: String,
}

/// Why no token was obtained.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The sidecar could not be reached.
    #[error("cannot reach the sidecar at {endpoint}: {message}")]
    Unreachable {
        /// The endpoint tried.
        endpoint: String,
        /// Why.
        message: String,
    },
    /// The sidecar refused (RFC 6749 §5.2 error).
    #[error("the sidecar refused (HTTP {status}): {error}: {description}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// OAuth2 `error`.
        error: String,
        /// OAuth2 `error_description`.
        description: String,
    },
    /// The sidecar answered `/readyz` with an error status.
    #[error("{url}: not ready (HTTP {status})")]
    NotReady {
        /// The URL asked.
        url: String,
        /// HTTP status.
        status: u16,
    },
    /// The answer was not a token response.
    #[error("unexpected answer from the sidecar: {0}")]
    BadResponse(String),
}

/// Asks the sidecar at `endpoint` (e.g. `http://127.0.0.1:8200`) for a token
/// with `scopes` (all declared when empty). Returns the parsed response and
/// the body as received.
pub async fn fetch_token(
    endpoint: &str,
    scopes: &[String],
) -> Result<(TokenResponse, String), ClientError> {
    let url = format!("{}/oauth2/token", endpoint.trim_end_matches('/'));
    let mut form = vec![("grant_type", "client_credentials".to_owned())];
    if !scopes.is_empty() {
        form.push(("scope", scopes.join(" ")));
    }
    let body =
        serde_urlencoded::to_string(&form).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    let unreachable = |e: reqwest::Error| ClientError::Unreachable {
        endpoint: endpoint.to_owned(),
        message: describe(&e),
    };
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(unreachable)?;
    let res = client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(unreachable)?;
    let status = res.status().as_u16();
    let text = res.text().await.map_err(unreachable)?;
    if status != 200 {
        return Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(e) => ClientError::Refused {
                status,
                error: e.error,
                description: e.error_description,
            },
            Err(_) => ClientError::BadResponse(format!("HTTP {status}")),
        });
    }
    let parsed: TokenResponse =
        serde_json::from_str(&text).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    Ok((parsed, text))
}

/// Asks the sidecar at `endpoint` whether it is ready
/// (`GET /readyz?nonce=…`); returns the proof it answers with.
pub async fn check_ready(endpoint: &str, nonce: &str) -> Result<Option<String>, ClientError> {
    let url = format!("{}/readyz?nonce={nonce}", endpoint.trim_end_matches('/'));
    let unreachable = |e: reqwest::Error| ClientError::Unreachable {
        endpoint: endpoint.to_owned(),
        message: describe(&e),
    };
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(3))
        .build()
        .map_err(unreachable)?;
    let res = client.get(&url).send().await.map_err(unreachable)?;
    if res.status().is_success() {
        #[derive(Deserialize)]
        struct Ready {
            proof: Option<String>,
        }
        let text = res.text().await.map_err(unreachable)?;
        let body: Ready =
            serde_json::from_str(&text).map_err(|e| ClientError::BadResponse(e.to_string()))?;
        Ok(body.proof)
    } else {
        Err(ClientError::NotReady {
            url,
            status: res.status().as_u16(),
        })
    }
}
