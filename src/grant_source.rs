//! Where the sidecar's grant comes from. Today: the embedded issuer (a root
//! key under `trust.state_dir` and the declarations file); the platform
//! issuer (remote mode) comes next. The daemon asks its source for a grant
//! at start, at renewal and after a reload.

use std::path::{Path, PathBuf};

use authproxy_core::declarations::{Declarations, DeclarationsError};
use authproxy_core::grant::{Grant, GrantRequest};
use authproxy_core::keys::{Jwks, KeyError, PublicKey, SigningKey, random_id};
use authproxy_core::root_key::{RootKeyError, load_or_create_root_key};
use authproxy_core::shared::Shared;
use authproxy_core::{Environment, ScopeSet, WorkloadId};

use crate::config::{Config, TrustMode};

/// Why a grant source could not be set up, or could not read its declarations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The declarations file is unreadable or invalid.
    #[error(transparent)]
    Declarations(#[from] DeclarationsError),
    /// `workload.id` is not declared.
    #[error("{config}: `workload.id` = {id} is not declared in {declarations}")]
    Undeclared {
        /// The config file.
        config: PathBuf,
        /// The workload id.
        id: WorkloadId,
        /// The declarations file.
        declarations: PathBuf,
    },
    /// The root key could not be loaded or created.
    #[error(transparent)]
    RootKey(#[from] RootKeyError),
    /// The thread reading the declarations failed (it panicked, or the
    /// runtime is shutting down).
    #[error("{declarations}: reading the declarations did not finish: {source}")]
    Interrupted {
        /// The declarations file.
        declarations: PathBuf,
        /// Why.
        source: tokio::task::JoinError,
    },
}

/// Why no grant was obtained.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// Signing failed.
    #[error("grant signing failed: {0}")]
    Sign(#[from] KeyError),
}

/// A source of grants for one workload.
#[derive(Debug)]
#[non_exhaustive]
pub enum GrantSource {
    /// The sidecar signs its own grant with an embedded root key.
    Embedded(Embedded),
}

impl GrantSource {
    /// The source `config.trust.mode` names.
    pub fn from_config(config: &Config) -> Result<Self, SourceError> {
        match config.trust.mode {
            TrustMode::Embedded => Embedded::open(config).map(Self::Embedded),
        }
    }

    /// A grant binding `key`, valid from `now`.
    pub async fn obtain(&self, key: &PublicKey, now: u64) -> Result<Grant, GrantError> {
        match self {
            Self::Embedded(e) => e.issue(key, now),
        }
    }

    /// Re-reads what decides the ceiling (the declarations file), off the
    /// runtime's threads. On error nothing changes. Returns whether the
    /// ceiling changed.
    pub async fn reload(&self) -> Result<bool, SourceError> {
        match self {
            Self::Embedded(e) => e.reload().await,
        }
    }

    /// The root public keys an upstream needs to verify this source's grants.
    pub fn jwks(&self) -> Jwks {
        match self {
            Self::Embedded(e) => Jwks::publish([e.root.public()]),
        }
    }
}

/// The embedded issuer: root key + declarations, on this machine.
#[derive(Debug)]
pub struct Embedded {
    root: SigningKey,
    issuer: String,
    workload: WorkloadId,
    environment: Environment,
    config_file: PathBuf,
    declarations: PathBuf,
    ttl_secs: u64,
    ceiling: Shared<ScopeSet>,
}

impl Embedded {
    fn open(config: &Config) -> Result<Self, SourceError> {
        let ceiling = load_ceiling(
            &config.file,
            &config.workload.declarations,
            &config.workload.id,
        )?;
        Ok(Self {
            root: load_or_create_root_key(&config.trust.state_dir)?,
            issuer: config.tokens.issuer.clone(),
            workload: config.workload.id.clone(),
            environment: config.workload.environment.clone(),
            config_file: config.file.clone(),
            declarations: config.workload.declarations.clone(),
            ttl_secs: config.trust.grant_ttl.as_secs(),
            ceiling: Shared::new(ceiling),
        })
    }

    fn issue(&self, key: &PublicKey, now: u64) -> Result<Grant, GrantError> {
        Ok(Grant::issue(
            &self.root,
            GrantRequest {
                issuer: &self.issuer,
                workload: &self.workload,
                environment: &self.environment,
                ceiling: &self.ceiling.load(),
                sidecar_key: key,
                ttl_secs: self.ttl_secs,
            },
            now,
            random_id(),
        )?)
    }

    /// Reading and parsing run on the blocking pool: the sidecar runs on
    /// one runtime thread, and a slow disk or a large file must not stop it
    /// answering meanwhile.
    async fn reload(&self) -> Result<bool, SourceError> {
        let (config, declarations, workload) = (
            self.config_file.clone(),
            self.declarations.clone(),
            self.workload.clone(),
        );
        let ceiling =
            tokio::task::spawn_blocking(move || load_ceiling(&config, &declarations, &workload))
                .await
                .map_err(|source| SourceError::Interrupted {
                    declarations: self.declarations.clone(),
                    source,
                })??;
        let changed = *self.ceiling.load() != ceiling;
        self.ceiling.store(ceiling);
        Ok(changed)
    }
}

/// The workload's declared authorizations, from the declarations file.
fn load_ceiling(
    config: &Path,
    declarations: &Path,
    id: &WorkloadId,
) -> Result<ScopeSet, SourceError> {
    ceiling_in(&Declarations::load(declarations)?, config, declarations, id)
}

/// `config`'s workload's authorizations in `declarations`, or why it has none.
pub fn declared_ceiling(
    config: &Config,
    declarations: &Declarations,
) -> Result<ScopeSet, SourceError> {
    ceiling_in(
        declarations,
        &config.file,
        &config.workload.declarations,
        &config.workload.id,
    )
}

fn ceiling_in(
    d: &Declarations,
    config: &Path,
    declarations: &Path,
    id: &WorkloadId,
) -> Result<ScopeSet, SourceError> {
    let effective = d.get(id).ok_or_else(|| SourceError::Undeclared {
        config: config.to_owned(),
        id: id.clone(),
        declarations: declarations.to_owned(),
    })?;
    Ok(effective.authorizations.clone())
}
