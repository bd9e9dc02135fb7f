//! The PAT exchange (DESIGN §9): `POST /oauth2/token` with a personal
//! access token as the client secret returns a short-lived access token,
//! for OAuth2 client libraries.
//!
//! The token is what a sidecar would mint, with a one-use key: a fresh
//! Ed25519 key, a grant binding it to `pat:<name>` (its `pat` claim names
//! the PAT's version, so revoking the PAT ends the token through the same
//! feed), the token signed with that key, and the key dropped. The grant
//! and the token live at most 5 minutes, never past the PAT.

use authproxy_core::grant::{Grant, PatGrantRequest};
use authproxy_core::keys::{RootKeys, SigningKey, random_id};
use authproxy_core::pat::{self, VerifiedPat};
use authproxy_core::token::{self, MintRequest};
use authproxy_core::{Authorization, Environment, ScopeSet, Subject, WorkloadId};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{Issuer, rfc3339};
use crate::error::ExchangeError;
use crate::secret::Secret;
use crate::store::{BootstrapKind, GrantRecord, PatRecord};

/// Longest lifetime of an exchanged token (and of its grant), in seconds.
pub const EXCHANGED_TOKEN_TTL: u64 = 300;

/// Clock skew tolerated on the PAT's `iat` between issuer nodes, in seconds.
const LEEWAY: u64 = 30;

/// What the client asks for, parsed.
#[derive(Debug, Clone, Default)]
pub struct ExchangeRequest {
    /// `scope`: exact authorizations, each covered by the PAT; absent: all
    /// the PAT covers in its environment.
    pub scope: Option<ScopeSet>,
    /// RFC 8707 `resource`: the token's `aud`; absent: `[tokens] audience`.
    pub resource: Option<String>,
}

/// An access token exchanged from a PAT.
#[derive(Debug, Clone)]
pub struct Exchanged {
    /// The access token (compact JWS). Its `Debug` is redacted.
    pub access_token: Secret,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// Its scopes.
    pub scope: ScopeSet,
}

impl Issuer {
    /// Exchanges the PAT `value` for an access token at `now`.
    pub async fn exchange_pat(
        &self,
        value: &str,
        request: &ExchangeRequest,
        now: u64,
    ) -> Result<Exchanged, ExchangeError> {
        let (record, verified) = self.current_pat(value, now).await?;
        let remaining = verified.claims.exp.saturating_sub(now);
        if remaining == 0 {
            return Err(invalid_client(&record, "expired"));
        }
        let catalogue = self.catalogue(&record.environment).await?;
        let allowed = verified.scopes.expand(&catalogue);
        let scope = match &request.scope {
            None if allowed.is_empty() => {
                return Err(ExchangeError::InvalidScope(format!(
                    "personal access token `{}` covers no authorization in environment `{}`",
                    record.name, record.environment
                )));
            }
            None => allowed,
            Some(requested) => {
                let beyond: Vec<String> = requested
                    .iter()
                    .filter(|a| !allowed.covers(a))
                    .map(ToString::to_string)
                    .collect();
                if !beyond.is_empty() {
                    return Err(ExchangeError::InvalidScope(format!(
                        "not covered by personal access token `{}` in environment `{}`: {}",
                        record.name,
                        record.environment,
                        beyond.join(" ")
                    )));
                }
                requested.clone()
            }
        };
        let audience = request
            .resource
            .as_deref()
            .unwrap_or(&self.config.tokens.audience);
        let ttl_secs = remaining.min(EXCHANGED_TOKEN_TTL);

        // A one-use key: it signs this one token and is dropped with it.
        let key = SigningKey::generate().map_err(|e| ExchangeError::Internal(e.to_string()))?;
        let grant_id = random_id();
        let root = self
            .ring
            .signing_key(now)
            .ok_or_else(|| ExchangeError::Internal("no active root key on this node".into()))?;
        let grant = Grant::issue_for_pat(
            &root,
            PatGrantRequest {
                issuer: &self.config.issuer.url,
                pat: &record.name,
                pat_id: &record.jti,
                environment: &record.environment,
                ceiling: &scope,
                token_key: key.public(),
                ttl_secs,
            },
            now,
            grant_id.clone(),
        )
        .map_err(|e| ExchangeError::Internal(e.to_string()))?;
        let minted = token::mint(
            &key,
            &grant,
            MintRequest {
                audience,
                scope: &scope,
                ttl_secs,
            },
            now,
            random_id(),
        )
        .map_err(|e| ExchangeError::Internal(e.to_string()))?;
        drop(key);

        let subject = Subject::Pat(record.name.clone());
        self.store
            .record_grant(&GrantRecord {
                jti: grant_id.clone(),
                environment: record.environment.clone(),
                identity: subject.to_string(),
                subject,
                bootstrap: BootstrapKind::Pat,
                root_kid: root.public().thumbprint().to_owned(),
                issued_at: now,
                expires_at: grant.claims().exp,
            })
            .await?;
        self.store
            .touch_pats(std::slice::from_ref(&record.jti), now)
            .await?;
        let claims = &minted.claims;
        tracing::info!(
            pat = %record.name,
            pat_id = %record.jti,
            grant = %grant_id,
            jti = %claims.jti,
            environment = %record.environment,
            scope = %claims.scope,
            aud = %claims.aud,
            expires_at = %rfc3339(claims.exp),
            "PAT exchanged for an access token"
        );
        Ok(Exchanged {
            expires_in: claims.exp.saturating_sub(now),
            access_token: Secret::issued(minted.token),
            scope,
        })
    }

    /// The PAT of `value`, if the value verifies (checksum, root signature,
    /// time, the environment its record names) and is the PAT's *current*
    /// version: not replaced by an update, not deleted.
    async fn current_pat(
        &self,
        value: &str,
        now: u64,
    ) -> Result<(PatRecord, VerifiedPat), ExchangeError> {
        let id = claimed_id(value)?;
        let record = self.store.pat_by_jti(&id).await?.ok_or_else(|| {
            ExchangeError::InvalidClient(format!(
                "PAT version {id} is not current (revoked, replaced or deleted) or unknown"
            ))
        })?;
        let keys = self.store.live_root_keys(now).await?;
        let roots: RootKeys = keys
            .into_iter()
            .map(|k| (k.public_key.thumbprint().to_owned(), k.public_key))
            .collect();
        // Its environment is the store's: a value signed for another
        // environment under a current id does not pass.
        let verified = pat::verify(value, &roots, &record.environment, LEEWAY, now)
            .map_err(|e| invalid_client(&record, &e.to_string()))?;
        if verified.name() != Some(&record.name) || verified.claims.jti != record.jti {
            return Err(invalid_client(
                &record,
                "name or id differs from the store's",
            ));
        }
        Ok((record, verified))
    }

    /// What a PAT's wildcards expand to in `environment`: `env:view` and
    /// `task:operate:<t>` for every live task synced there.
    async fn catalogue(&self, environment: &Environment) -> Result<ScopeSet, ExchangeError> {
        let state = self.store.sync_state(environment).await?;
        let tasks = state
            .workloads
            .values()
            .filter(|w| !w.removed)
            .filter_map(|w| match &w.workload {
                WorkloadId::Task(name) => Some(Authorization::TaskOperate(name.clone())),
                WorkloadId::App(_) | WorkloadId::Worker(..) => None,
            });
        Ok(std::iter::once(Authorization::EnvView)
            .chain(tasks)
            .collect())
    }
}

fn invalid_client(record: &PatRecord, reason: &str) -> ExchangeError {
    ExchangeError::InvalidClient(format!("PAT `{}` ({}): {reason}", record.name, record.jti))
}

/// The version id (`jti`) a PAT value claims, read *without* verifying
/// anything but its checksum: only a key to find the PAT's record, whose
/// environment the value is then verified in. A typo or a truncated value
/// is refused here, before any crypto.
fn claimed_id(value: &str) -> Result<String, ExchangeError> {
    #[derive(serde::Deserialize)]
    struct Id {
        jti: String,
    }
    let body = pat::body(value).map_err(|e| ExchangeError::InvalidClient(e.to_string()))?;
    body.split('.')
        .nth(1)
        .and_then(|payload| URL_SAFE_NO_PAD.decode(payload).ok())
        .and_then(|json| serde_json::from_slice::<Id>(&json).ok())
        .map(|id| id.jti)
        .ok_or_else(|| ExchangeError::InvalidClient("PAT body is malformed".into()))
}
