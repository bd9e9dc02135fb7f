//! A client of the sidecar's token endpoint, for scripts and crons
//! (`authproxy token`) and for Rust code that wants a token.
//!
//! An endpoint without a scheme (`127.0.0.1:8200`) means `http://`: the
//! sidecar serves plain HTTP on loopback, and "relative URL without a base"
//! helped no one.

use std::time::Duration;

use authproxy_core::oauth::ErrorBody;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::telemetry::describe;

/// The first pause between tries under `--wait`; it doubles each time.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// The longest pause between tries under `--wait`.
const MAX_RETRY: Duration = Duration::from_secs(2);
/// How long one token request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

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
        /// No connection could be made (nothing listening yet, for one).
        connect: bool,
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
    /// The sidecar answered an error status without an OAuth2 error body.
    #[error("unexpected answer from the sidecar: HTTP {status}")]
    Status {
        /// HTTP status.
        status: u16,
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
    /// `--wait` ran out while the sidecar was still not there or not ready.
    #[error("gave up after waiting {} ({attempts} tries): {last}", humantime::format_duration(*waited))]
    GaveUp {
        /// How long it waited.
        waited: Duration,
        /// How many requests were made.
        attempts: u32,
        /// The last one's error.
        last: Box<ClientError>,
    },
}

impl ClientError {
    /// Worth trying again shortly: nothing listens yet (the sidecar is
    /// starting), it has no grant yet (503) or asks to slow down (429).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { connect, .. } => *connect,
            Self::Refused { status, .. } | Self::Status { status } => {
                matches!(status, 429 | 503)
            }
            _ => false,
        }
    }
}

/// `endpoint` without a trailing `/`, with `http://` if it names no scheme.
pub fn base_url(endpoint: &str) -> String {
    let endpoint = endpoint.trim_end_matches('/');
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    }
}

/// Asks the sidecar at `endpoint` (e.g. `http://127.0.0.1:8200`) for a token
/// with `scopes` (all declared when empty). Returns the parsed response and
/// the body as received.
pub async fn fetch_token(
    endpoint: &str,
    scopes: &[String],
) -> Result<(TokenResponse, String), ClientError> {
    fetch_token_once(&client(endpoint)?, endpoint, scopes, REQUEST_TIMEOUT).await
}

/// As [`fetch_token`], trying again for up to `wait` while the error
/// [is transient](ClientError::is_transient), after 100 ms, then doubling up
/// to 2 s between tries; the last try is at the deadline. For crons that
/// start with their container, before its sidecar is up.
pub async fn fetch_token_waiting(
    endpoint: &str,
    scopes: &[String],
    wait: Duration,
) -> Result<(TokenResponse, String), ClientError> {
    let deadline = Instant::now() + wait;
    let client = client(endpoint)?;
    let mut pause = FIRST_RETRY;
    let mut attempts = 0;
    loop {
        attempts += 1;
        // A request in flight at the deadline may still take a second.
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_secs(1), REQUEST_TIMEOUT);
        let last = match fetch_token_once(&client, endpoint, scopes, timeout).await {
            Err(e) if e.is_transient() && !wait.is_zero() => e,
            done => return done,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::GaveUp {
                waited: wait,
                attempts,
                last: Box::new(last),
            });
        }
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(MAX_RETRY);
    }
}

/// An HTTP client for the sidecar: no proxy (it is local).
fn client(endpoint: &str) -> Result<reqwest::Client, ClientError> {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| ClientError::Unreachable {
            endpoint: endpoint.to_owned(),
            message: describe(&e),
            connect: false,
        })
}

async fn fetch_token_once(
    client: &reqwest::Client,
    endpoint: &str,
    scopes: &[String],
    timeout: Duration,
) -> Result<(TokenResponse, String), ClientError> {
    let url = format!("{}/oauth2/token", base_url(endpoint));
    let mut form = vec![("grant_type", "client_credentials".to_owned())];
    if !scopes.is_empty() {
        form.push(("scope", scopes.join(" ")));
    }
    let body =
        serde_urlencoded::to_string(&form).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    let unreachable = |e: reqwest::Error| ClientError::Unreachable {
        endpoint: endpoint.to_owned(),
        message: describe(&e),
        connect: e.is_connect(),
    };
    let res = client
        .post(url)
        .timeout(timeout)
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
            Err(_) => ClientError::Status { status },
        });
    }
    let parsed: TokenResponse =
        serde_json::from_str(&text).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    Ok((parsed, text))
}

/// Asks the sidecar at `endpoint` whether it is ready
/// (`GET /readyz?nonce=…`); returns the proof it answers with.
pub async fn check_ready(endpoint: &str, nonce: &str) -> Result<Option<String>, ClientError> {
    let url = format!("{}/readyz?nonce={nonce}", base_url(endpoint));
    let unreachable = |e: reqwest::Error| ClientError::Unreachable {
        endpoint: endpoint.to_owned(),
        message: describe(&e),
        connect: e.is_connect(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_without_a_scheme_means_http() {
        assert_eq!(base_url("127.0.0.1:8200"), "http://127.0.0.1:8200");
        assert_eq!(base_url("127.0.0.1:8200/"), "http://127.0.0.1:8200");
        assert_eq!(base_url("http://[::1]:8200/"), "http://[::1]:8200");
        assert_eq!(base_url("https://sidecar"), "https://sidecar");
    }

    #[test]
    fn only_a_missing_listener_429_and_503_are_worth_a_retry() {
        let refused = |status| ClientError::Refused {
            status,
            error: "e".into(),
            description: "d".into(),
        };
        let unreachable = |connect| ClientError::Unreachable {
            endpoint: "e".into(),
            message: "m".into(),
            connect,
        };
        assert!(unreachable(true).is_transient());
        assert!(!unreachable(false).is_transient());
        assert!(refused(503).is_transient());
        assert!(refused(429).is_transient());
        assert!(ClientError::Status { status: 503 }.is_transient());
        assert!(!refused(400).is_transient());
        assert!(!ClientError::Status { status: 500 }.is_transient());
        assert!(!ClientError::BadResponse("x".into()).is_transient());
    }
}
