//! Personal access tokens (DESIGN §9): create, show, list, update, delete,
//! and the layers' "used" reports.
//!
//! A PAT's value is signed here and handed out once, in the answer to
//! create or update; the store keeps only its name, environment, scopes,
//! times and current version id (`jti`). An update signs a new version and
//! puts the previous one on the revocation feed; a delete puts the current
//! one there.

use authproxy_core::keys::{KeyError, random_id};
use authproxy_core::pat::{self, PAT_SUBJECT_PREFIX, PatName, PatRequest};
use authproxy_core::{Environment, Scopes, Subject};

use super::{Issuer, rfc3339};
use crate::error::IssuerError;
use crate::secret::Secret;
use crate::store::{BootstrapKind, GrantRecord, PatCreated, PatRecord, PatUpdate, PatUpdated};

/// How many times an update is tried again when a concurrent update
/// replaced the version it read.
const UPDATE_ATTEMPTS: usize = 3;

/// A PAT to create, parsed.
#[derive(Debug, Clone)]
pub struct NewPat {
    /// Its name.
    pub name: PatName,
    /// The environment it is bound to.
    pub environment: Environment,
    /// Its scopes (wildcards allowed); not empty.
    pub scopes: Scopes,
    /// Its lifetime in minutes, 1 to `pats.max_valid_minutes`.
    pub valid_minutes: u64,
}

/// What an update changes; anything absent is kept. The value always
/// changes.
#[derive(Debug, Clone, Default)]
pub struct PatChange {
    /// New scopes; not empty.
    pub scopes: Option<Scopes>,
    /// A new lifetime in minutes from now; absent: the current expiry stays.
    pub valid_minutes: Option<u64>,
}

/// A PAT just created or updated, with its value: shown once.
#[derive(Debug, Clone)]
pub struct IssuedPat {
    /// The PAT as stored.
    pub pat: PatRecord,
    /// The value (`ap_pat_…`). Its `Debug` is redacted.
    pub value: Secret,
}

impl Issuer {
    /// Creates a PAT and returns its value.
    pub async fn create_pat(&self, new: &NewPat, now: u64) -> Result<IssuedPat, IssuerError> {
        let ttl_secs = self.pat_lifetime(new.valid_minutes)?;
        let jti = random_id();
        let (value, expires_at, root_kid) = self.sign_pat(
            &new.name,
            &new.environment,
            &new.scopes,
            ttl_secs,
            now,
            &jti,
        )?;
        let pat = PatRecord {
            name: new.name.clone(),
            environment: new.environment.clone(),
            scopes: new.scopes.clone(),
            jti,
            created_at: now,
            updated_at: now,
            expires_at,
            last_used_at: None,
        };
        match self.store.create_pat(&pat).await? {
            PatCreated::Created => {}
            // The value just signed is dropped unseen.
            PatCreated::NameTaken => return Err(IssuerError::NameTaken(new.name.clone())),
        }
        self.record_pat_signed(&pat, root_kid, now).await?;
        tracing::info!(
            pat = %pat.name,
            id = %pat.jti,
            environment = %pat.environment,
            scopes = %pat.scopes,
            expires_at = %rfc3339(pat.expires_at),
            "PAT created"
        );
        Ok(IssuedPat { pat, value })
    }

    /// Gives a PAT a new value (and the changes asked for) and revokes the
    /// previous one. Without `valid_minutes` the new value expires when the
    /// previous one would have (an expired PAT needs `valid_minutes`).
    pub async fn update_pat(
        &self,
        name: &PatName,
        change: &PatChange,
        now: u64,
    ) -> Result<IssuedPat, IssuerError> {
        let new_ttl = change
            .valid_minutes
            .map(|m| self.pat_lifetime(m))
            .transpose()?;
        for _ in 0..UPDATE_ATTEMPTS {
            let current = self.pat(name).await?;
            let scopes = change.scopes.as_ref().unwrap_or(&current.scopes).clone();
            let ttl_secs = match new_ttl {
                Some(ttl) => ttl,
                None if current.expires_at > now => current.expires_at - now,
                None => {
                    return Err(IssuerError::InvalidRequest(format!(
                        "personal access token `{name}` expired at {}: give `valid_minutes` for its new value",
                        rfc3339(current.expires_at)
                    )));
                }
            };
            let jti = random_id();
            let (value, expires_at, root_kid) =
                self.sign_pat(name, &current.environment, &scopes, ttl_secs, now, &jti)?;
            let update = PatUpdate {
                name: name.clone(),
                previous_jti: current.jti.clone(),
                jti,
                scopes,
                expires_at,
            };
            match self.store.update_pat(&update, now).await? {
                PatUpdated::Updated => {
                    tracing::info!(
                        pat = %name,
                        id = %update.jti,
                        revoked = %update.previous_jti,
                        scopes = %update.scopes,
                        expires_at = %rfc3339(expires_at),
                        "PAT updated; its previous value is revoked"
                    );
                    let pat = PatRecord {
                        scopes: update.scopes,
                        jti: update.jti,
                        updated_at: now,
                        expires_at,
                        ..current
                    };
                    self.record_pat_signed(&pat, root_kid, now).await?;
                    return Ok(IssuedPat { pat, value });
                }
                PatUpdated::Changed => {
                    tracing::debug!(pat = %name, "PAT changed during the update; reading it again");
                }
            }
        }
        Err(IssuerError::PatConflict(name.clone()))
    }

    /// A PAT by name.
    pub async fn pat(&self, name: &PatName) -> Result<PatRecord, IssuerError> {
        self.store
            .pat(name)
            .await?
            .ok_or_else(|| IssuerError::PatNotFound(name.clone()))
    }

    /// Every PAT, by name.
    pub async fn pats(&self) -> Result<Vec<PatRecord>, IssuerError> {
        Ok(self.store.pats().await?)
    }

    /// Deletes a PAT; its value, and every token exchanged from it, leave
    /// service through the revocation feed.
    pub async fn delete_pat(&self, name: &PatName, now: u64) -> Result<(), IssuerError> {
        let deleted = self
            .store
            .delete_pat(name, now)
            .await?
            .ok_or_else(|| IssuerError::PatNotFound(name.clone()))?;
        tracing::info!(pat = %name, revoked = %deleted.jti, "PAT deleted; its value is revoked");
        self.record_pat_deletion(name.as_str(), now).await
    }

    /// Records that the PATs whose current version ids are `ids` were used
    /// (a layer's report; the store writes at most once a minute per PAT).
    ///
    /// Unauthenticated on purpose: a layer holds no credential for the
    /// issuer. Knowing a version id takes the value or its revocation entry
    /// (a revoked id is no longer current, so it touches nothing), and a
    /// forged report can do nothing but set a last-used time.
    pub async fn report_pats_used(&self, ids: &[String], now: u64) -> Result<(), IssuerError> {
        self.store.touch_pats(ids, now).await?;
        tracing::debug!(reported = ids.len(), "PAT use reported");
        Ok(())
    }

    /// `valid_minutes` in seconds, if within 1 to `pats.max_valid_minutes`.
    fn pat_lifetime(&self, valid_minutes: u64) -> Result<u64, IssuerError> {
        let max = self.config.pats.max_valid_minutes;
        if (1..=max).contains(&valid_minutes) {
            Ok(valid_minutes * 60)
        } else {
            Err(IssuerError::InvalidRequest(format!(
                "`valid_minutes` = {valid_minutes}: a personal access token is valid for 1 to {max} minutes (`pats.max_valid_minutes`)"
            )))
        }
    }

    /// Signs a PAT value with this node's root key; returns it and its expiry.
    fn sign_pat(
        &self,
        name: &PatName,
        environment: &Environment,
        scopes: &Scopes,
        ttl_secs: u64,
        now: u64,
        jti: &str,
    ) -> Result<(Secret, u64, String), IssuerError> {
        // The version active now signs, as for grants.
        let root = self
            .ring
            .signing_key(now)
            .ok_or_else(|| IssuerError::Internal("no active root key on this node".into()))?;
        let (value, claims) = pat::issue(
            &root,
            PatRequest {
                issuer: &self.config.issuer.url,
                name,
                environment,
                scopes,
                ttl_secs,
            },
            now,
            jti.to_owned(),
        )
        .map_err(|e: KeyError| IssuerError::Internal(e.to_string()))?;
        Ok((
            Secret::issued(value),
            claims.exp,
            root.public().thumbprint().to_owned(),
        ))
    }

    /// What the credential lifecycle needs of a new PAT version: the root
    /// key that signed it must stay published until it expires (recorded
    /// as a grant of that key), and the PAT credential gets the version
    /// and its `version_expiration` task (DESIGN §10).
    async fn record_pat_signed(
        &self,
        pat: &PatRecord,
        root_kid: String,
        now: u64,
    ) -> Result<(), IssuerError> {
        self.store
            .record_grant(&GrantRecord {
                jti: pat.jti.clone(),
                environment: pat.environment.clone(),
                subject: Subject::Pat(pat.name.clone()),
                identity: format!("{PAT_SUBJECT_PREFIX}{}", pat.name),
                bootstrap: BootstrapKind::Pat,
                root_kid,
                issued_at: now,
                expires_at: pat.expires_at,
            })
            .await?;
        self.record_pat_version(
            pat.name.as_str(),
            &pat.environment,
            &pat.jti,
            pat.expires_at,
            now,
        )
        .await
    }
}
