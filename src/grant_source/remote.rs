//! Remote mode (DESIGN §8): the grant comes from the platform issuer.
//!
//! The sidecar sends its bootstrap credential and its public key to
//! `POST <issuer>/v1/grants`, trying the configured issuers in order (the
//! next one on a connection error, a timeout, a 5xx or an answer that does
//! not verify). It holds no root key and reads no declarations: the issuer
//! decides the ceiling. It still trusts nothing it is handed — the grant is
//! verified against the issuer's JWKS (fetched, cached, fetched again on an
//! unknown `kid`), must bind this sidecar's own key and name its workload
//! and environment — so a misrouted, stale or tampered answer never becomes
//! the grant its tokens carry.
//!
//! The bootstrap credential is read again at every request (a Kubernetes
//! projected token rotates under the same path) and lives only in a
//! [`Credential`], which never prints.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use authproxy_core::grant::Grant;
use authproxy_core::keys::{Jwks, PublicKey, RootKeys};
use authproxy_core::oauth::ErrorBody;
use authproxy_core::{Environment, WorkloadId};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use crate::config::{BootstrapSource, Config, RemoteTrust};
use crate::telemetry::describe;

use super::GrantError;

/// How long one request to an issuer may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to an issuer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest answer read from an issuer (a grant, a JWKS): as the layer caps
/// a JWKS, so a broken or hostile endpoint cannot make the sidecar buffer
/// an endless body.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Largest bootstrap credential read (a projected service-account token is
/// about 1 KiB).
const MAX_CREDENTIAL_BYTES: u64 = 16 * 1024;
/// Clock skew tolerated between the issuer and the sidecar when the grant
/// is checked, as the layer tolerates.
const LEEWAY_SECS: u64 = 30;

/// The bootstrap credential, as read. Never printed: `Debug` is redacted
/// and there is no `Display`.
pub struct Credential(String);

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

/// Why the bootstrap credential could not be read. No variant holds the
/// value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// `env:VAR` names a variable that is not set (or is empty).
    #[error("the environment variable {0} is not set")]
    MissingVariable(String),
    /// `file:PATH` cannot be read.
    #[error("cannot read {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file or variable is empty.
    #[error("it is empty")]
    Empty,
    /// Longer than any credential.
    #[error("it is longer than {MAX_CREDENTIAL_BYTES} bytes")]
    TooLarge,
    /// It holds characters a bearer credential cannot have.
    #[error("it holds characters a bearer credential cannot have (the value is not shown)")]
    NotACredential,
}

/// Why one issuer gave no grant (the next one is tried).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssuerFailure {
    /// No connection, or no answer in time.
    #[error("{issuer}: unreachable: {message}")]
    Unreachable {
        /// The issuer's URL.
        issuer: String,
        /// Why.
        message: String,
    },
    /// It answered an error status other than a refusal (5xx, 429, 400).
    #[error("{issuer}: HTTP {status}{}", description.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    Status {
        /// The issuer's URL.
        issuer: String,
        /// The status.
        status: u16,
        /// Its `error_description`, if it sent one.
        description: Option<String>,
    },
    /// Its answer is not a grant response, or the grant does not verify:
    /// not signed by a key of its JWKS, for another key, workload or
    /// environment, expired.
    #[error("{issuer}: the grant it answered was refused: {reason}")]
    InvalidGrant {
        /// The issuer's URL.
        issuer: String,
        /// Why.
        reason: String,
    },
}

/// A refusal of the bootstrap credential: the issuer's answer is final, so
/// the other issuers (which share its store) are not asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{issuer} refused the bootstrap credential (HTTP {status} {error}{})",
    if description.is_empty() { String::new() } else { format!(": {description}") }
)]
pub struct Refusal {
    /// The URL of the issuer that refused.
    pub issuer: String,
    /// 401 (unknown, revoked or expired credential), 403 (not bound to
    /// this workload and environment) or 404 (workload unknown there).
    pub status: u16,
    /// The OAuth2 `error` code.
    pub error: String,
    /// The `error_description`.
    pub description: String,
}

/// The platform issuer as a grant source.
#[derive(Debug)]
pub struct Remote {
    issuers: Vec<Url>,
    bootstrap: BootstrapSource,
    workload: WorkloadId,
    environment: Environment,
    client: reqwest::Client,
    /// The root keys last fetched from each issuer, by its index in
    /// `issuers`; empty until fetched.
    roots: Mutex<Vec<RootKeys>>,
    /// The last outcome that was reported: `Some` while the credential is
    /// being refused, with the refusal — so a refusal is logged once per
    /// change, not at every retry.
    refusal: Mutex<Option<Refusal>>,
}

/// The body of a 200 from `POST /v1/grants`.
#[derive(Deserialize)]
struct GrantAnswer {
    grant: String,
}

/// What asking one issuer came to.
enum Asked {
    // Boxed: the other outcomes are small, and this one is returned once.
    Granted(Box<Grant>),
    Refused(Refusal),
    Failed(IssuerFailure),
}

impl Remote {
    /// A source asking `remote.issuers` for grants for `config`'s workload.
    /// Reads nothing yet: the first [`Remote::obtain`] reads the credential.
    pub(super) fn open(config: &Config, remote: &RemoteTrust) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            // The issuer is a platform service reached directly; a proxy
            // from the environment would see every bootstrap credential.
            .no_proxy()
            // A redirect could carry the credential elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        Ok(Self {
            roots: Mutex::new(vec![RootKeys::new(); remote.issuers.len()]),
            issuers: remote.issuers.clone(),
            bootstrap: remote.bootstrap.clone(),
            workload: config.workload.id.clone(),
            environment: config.workload.environment.clone(),
            client,
            refusal: Mutex::new(None),
        })
    }

    /// A grant binding `key`, from the first issuer that gives one that
    /// verifies at `now`. A refusal (401/403/404) ends the round: the
    /// issuers share one store, so the next would say the same.
    pub(super) async fn obtain(&self, key: &PublicKey, now: u64) -> Result<Grant, GrantError> {
        let credential = self
            .read_credential()
            .await
            .map_err(|source| GrantError::Bootstrap {
                spec: self.bootstrap.to_string(),
                source,
            })?;
        let mut failures = Vec::new();
        for index in 0..self.issuers.len() {
            match self.ask(index, &credential, key, now).await {
                Asked::Granted(grant) => {
                    tracing::debug!(issuer = %shown(&self.issuers[index]), jti = %grant.claims().jti, "grant verified");
                    self.note_refusal(None);
                    return Ok(*grant);
                }
                Asked::Refused(refusal) => {
                    self.note_refusal(Some(&refusal));
                    return Err(GrantError::Refused(refusal));
                }
                Asked::Failed(failure) => {
                    if let IssuerFailure::InvalidGrant { issuer, reason } = &failure {
                        // Not an outage: an issuer answering grants that do
                        // not verify is misconfigured or not the issuer.
                        tracing::error!(%issuer, %reason, "an issuer answered a grant that does not verify; trying the next");
                    }
                    failures.push(failure);
                }
            }
        }
        Err(GrantError::Unavailable(failures))
    }

    /// The root keys of every issuer, as last fetched: what the sidecar's
    /// JWKS endpoint serves in remote mode.
    pub(super) fn jwks(&self) -> Jwks {
        let roots = self.roots.lock().unwrap_or_else(PoisonError::into_inner);
        let mut union = RootKeys::new();
        for set in roots.iter() {
            union.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let mut keys: Vec<&PublicKey> = union.values().collect();
        keys.sort_by(|a, b| a.thumbprint().cmp(b.thumbprint()));
        Jwks::publish(keys)
    }

    /// Reads the credential where `trust.bootstrap` says, now.
    async fn read_credential(&self) -> Result<Credential, BootstrapError> {
        let raw =
            match &self.bootstrap {
                BootstrapSource::Env(var) => std::env::var(var)
                    .ok()
                    .filter(|v| !v.trim().is_empty())
                    .ok_or_else(|| BootstrapError::MissingVariable(var.clone()))?,
                BootstrapSource::File(path) => read_capped(path).await?,
            };
        let value = raw.trim();
        if value.is_empty() {
            return Err(BootstrapError::Empty);
        }
        if value.len() as u64 > MAX_CREDENTIAL_BYTES {
            return Err(BootstrapError::TooLarge);
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(BootstrapError::NotACredential);
        }
        Ok(Credential(value.to_owned()))
    }

    /// One `POST /v1/grants` to issuer `index`, and the check of its answer.
    async fn ask(&self, index: usize, credential: &Credential, key: &PublicKey, now: u64) -> Asked {
        let url = &self.issuers[index];
        let issuer = &shown(url);
        let unreachable = |e: &reqwest::Error| {
            Asked::Failed(IssuerFailure::Unreachable {
                issuer: issuer.clone(),
                message: describe(e),
            })
        };
        let body = serde_json::json!({
            "workload": self.workload.to_string(),
            "environment": self.environment.to_string(),
            "public_key": key.bare_jwk(),
        })
        .to_string();
        let sent = self
            .client
            .post(endpoint(url, "v1/grants"))
            // `bearer_auth` marks the header sensitive.
            .bearer_auth(&credential.0)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let res = match sent {
            Ok(r) => r,
            Err(e) => return unreachable(&e),
        };
        let status = res.status();
        let text = match read_body(res).await {
            Ok(t) => t,
            Err(ReadError::Http(e)) => return unreachable(&e),
            Err(ReadError::TooLarge) => {
                return Asked::Failed(IssuerFailure::InvalidGrant {
                    issuer: issuer.clone(),
                    reason: format!("the answer is longer than {MAX_ANSWER_BYTES} bytes"),
                });
            }
        };
        match status {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
                let body = serde_json::from_slice::<ErrorBody>(&text).ok();
                return Asked::Refused(Refusal {
                    issuer: issuer.clone(),
                    status: status.as_u16(),
                    error: body
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), |b| b.error.clone()),
                    description: body.map(|b| b.error_description).unwrap_or_default(),
                });
            }
            _ => {
                return Asked::Failed(IssuerFailure::Status {
                    issuer: issuer.clone(),
                    status: status.as_u16(),
                    description: serde_json::from_slice::<ErrorBody>(&text)
                        .ok()
                        .map(|b| b.error_description),
                });
            }
        }
        let invalid = |reason: String| {
            Asked::Failed(IssuerFailure::InvalidGrant {
                issuer: issuer.clone(),
                reason,
            })
        };
        let answer: GrantAnswer = match serde_json::from_slice(&text) {
            Ok(a) => a,
            Err(e) => return invalid(format!("not a grant response: {e}")),
        };
        match self.verify(index, &answer.grant, key, now).await {
            Ok(grant) => Asked::Granted(Box::new(grant)),
            Err(reason) => invalid(reason),
        }
    }

    /// Verifies `compact` as a grant from issuer `index` for this sidecar:
    /// signed by one of the issuer's root keys (fetched once more when its
    /// `kid` is unknown: the issuer may have rotated), in time, for this
    /// environment, this workload and `key`.
    async fn verify(
        &self,
        index: usize,
        compact: &str,
        key: &PublicKey,
        now: u64,
    ) -> Result<Grant, String> {
        let cached = self.roots.lock().unwrap_or_else(PoisonError::into_inner)[index].clone();
        let verified = match Grant::verify(compact, &cached, &self.environment, LEEWAY_SECS, now) {
            Err(authproxy_core::verify::InvalidToken::UnknownRootKey) => {
                let fresh = self.fetch_roots(index).await?;
                Grant::verify(compact, &fresh, &self.environment, LEEWAY_SECS, now)
            }
            other => other,
        };
        let grant = verified.map_err(|e| e.to_string())?;
        // The proof of possession: a grant binding another key would let
        // this sidecar mint tokens no upstream accepts — or be someone
        // else's grant.
        if grant.claims().cnf.jkt != key.thumbprint() {
            return Err("it binds another key (cnf.jkt), not this sidecar's".into());
        }
        if grant.workload() != Some(&self.workload) {
            return Err(format!(
                "it is for workload {}, not {}",
                grant.subject(),
                self.workload
            ));
        }
        if !grant.is_valid_at(now) {
            return Err("it is not valid now".into());
        }
        Ok(grant)
    }

    /// Fetches issuer `index`'s JWKS and caches its usable keys.
    async fn fetch_roots(&self, index: usize) -> Result<RootKeys, String> {
        let issuer = &self.issuers[index];
        let url = endpoint(issuer, ".well-known/jwks.json");
        let roots = fetch_roots(&self.client, &url).await?;
        self.roots.lock().unwrap_or_else(PoisonError::into_inner)[index] = roots.clone();
        tracing::debug!(%issuer, keys = roots.len(), "issuer root keys fetched");
        Ok(roots)
    }

    /// Logs a refusal of the credential once per change of outcome: the
    /// first refusal, a different one, and the first success after them.
    /// Retries that meet the same refusal are logged at debug only.
    fn note_refusal(&self, now: Option<&Refusal>) {
        let mut last = self.refusal.lock().unwrap_or_else(PoisonError::into_inner);
        match (last.as_ref(), now) {
            (None, None) => {}
            (Some(_), None) => {
                tracing::info!(bootstrap = %self.bootstrap, "the issuer accepts the bootstrap credential again");
            }
            (Some(prev), Some(r)) if prev == r => {
                tracing::debug!(issuer = %r.issuer, status = r.status, "bootstrap credential still refused");
            }
            (_, Some(r)) => {
                tracing::error!(
                    issuer = %r.issuer,
                    status = r.status,
                    error = %r.error,
                    description = %r.description,
                    bootstrap = %self.bootstrap,
                    workload = %self.workload,
                    environment = %self.environment,
                    "the issuer refused the bootstrap credential: no grant until a credential for this workload and environment is accepted (logged once until the outcome changes)"
                );
            }
        }
        *last = now.cloned();
    }
}

/// An issuer URL as configured: without the `/` `Url` adds to a bare host.
fn shown(issuer: &Url) -> String {
    issuer.as_str().trim_end_matches('/').to_owned()
}

/// `<issuer>/<path>`, keeping a base path the issuer URL may have.
fn endpoint(issuer: &Url, path: &str) -> String {
    format!("{}/{path}", issuer.as_str().trim_end_matches('/'))
}

/// Fetches a JWKS at `url` and returns its usable keys (at least one).
pub async fn fetch_roots(client: &reqwest::Client, url: &str) -> Result<RootKeys, String> {
    let res = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url}: {}", describe(&e)))?;
    if !res.status().is_success() {
        return Err(format!("{url}: HTTP {}", res.status().as_u16()));
    }
    let bytes = read_body(res).await.map_err(|e| match e {
        ReadError::Http(e) => format!("{url}: {}", describe(&e)),
        ReadError::TooLarge => format!("{url}: longer than {MAX_ANSWER_BYTES} bytes"),
    })?;
    let keys = Jwks::from_json(&bytes)
        .map_err(|e| format!("{url}: not a JWKS: {e}"))?
        .usable_keys();
    if keys.is_empty() {
        return Err(format!("{url}: no Ed25519 signing key with a kid"));
    }
    Ok(keys)
}

/// The first issuer's root keys that can be fetched, for `authproxy
/// health` in remote mode.
pub async fn issuer_roots(remote: &RemoteTrust) -> Result<RootKeys, String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| describe(&e))?;
    let mut errors = Vec::new();
    for issuer in &remote.issuers {
        match fetch_roots(&client, &endpoint(issuer, ".well-known/jwks.json")).await {
            Ok(keys) => return Ok(keys),
            Err(e) => errors.push(e),
        }
    }
    Err(errors.join("; "))
}

enum ReadError {
    Http(reqwest::Error),
    TooLarge,
}

/// Reads a body of at most [`MAX_ANSWER_BYTES`], chunk by chunk.
async fn read_body(mut res: reqwest::Response) -> Result<Vec<u8>, ReadError> {
    if res
        .content_length()
        .is_some_and(|l| l > MAX_ANSWER_BYTES as u64)
    {
        return Err(ReadError::TooLarge);
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(ReadError::Http)? {
        if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(ReadError::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Reads at most [`MAX_CREDENTIAL_BYTES`] + 1 bytes of `path`.
async fn read_capped(path: &std::path::Path) -> Result<String, BootstrapError> {
    use tokio::io::AsyncReadExt as _;
    let unreadable = |source| BootstrapError::Unreadable {
        path: path.to_owned(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(unreadable)?;
    let mut bytes = Vec::new();
    file.take(MAX_CREDENTIAL_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_CREDENTIAL_BYTES {
        return Err(BootstrapError::TooLarge);
    }
    String::from_utf8(bytes).map_err(|_| BootstrapError::NotACredential)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_keep_the_issuers_base_path() {
        let u = Url::parse("http://127.0.0.1:8400").unwrap();
        assert_eq!(endpoint(&u, "v1/grants"), "http://127.0.0.1:8400/v1/grants");
        let u = Url::parse("https://platform.example/issuer/").unwrap();
        assert_eq!(
            endpoint(&u, ".well-known/jwks.json"),
            "https://platform.example/issuer/.well-known/jwks.json"
        );
    }

    #[test]
    fn a_credential_never_prints() {
        let c = Credential("ap_wc_secret".into());
        assert!(!format!("{c:?}").contains("secret"));
    }
}
