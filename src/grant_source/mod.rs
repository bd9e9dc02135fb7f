//! Where the sidecar's grant comes from: the embedded issuer (a root key
//! under `trust.state_dir` and the declarations file), or the platform
//! issuer ([`remote`]: remote mode, no root key and no declarations on this
//! side). The daemon asks its source for a grant at start, at renewal and
//! after a reload.

pub mod remote;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use authproxy_core::declarations::{Declarations, DeclarationsError};
use authproxy_core::grant::{Grant, GrantRequest};
use authproxy_core::keys::{Jwks, KeyError, PublicKey, SigningKey, random_id};
use authproxy_core::root_key::{RootKeyError, load_or_create_root_key};
use authproxy_core::shared::Shared;
use authproxy_core::{Environment, ScopeSet, WorkloadId};

use crate::config::{Config, TrustMode};

pub use remote::{BootstrapError, IssuerFailure, Refusal, Remote};

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
    /// The HTTP client for the issuer could not be built (remote mode).
    #[error("{config}: `trust.issuers`: cannot build an HTTP client: {source}")]
    Client {
        /// The config file.
        config: PathBuf,
        /// Why.
        source: reqwest::Error,
    },
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
    /// Signing, or generating a new sidecar key, failed.
    #[error("grant signing failed: {0}")]
    Sign(#[from] KeyError),
    /// Remote mode: the bootstrap credential could not be read.
    #[error("`trust.bootstrap` = {spec}: {source}")]
    Bootstrap {
        /// `trust.bootstrap` as written (a variable name or a path, never
        /// the credential).
        spec: String,
        /// Why.
        source: BootstrapError,
    },
    /// Remote mode: the issuer refused the bootstrap credential.
    #[error(transparent)]
    Refused(Refusal),
    /// Remote mode: no issuer answered with a grant that verifies; why,
    /// issuer by issuer.
    #[error("no grant from any issuer: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Unavailable(Vec<IssuerFailure>),
}

impl GrantError {
    /// The `result` label of `authproxy_grant_renewals_total` for this failure.
    pub fn result_label(&self) -> &'static str {
        match self {
            Self::Refused(_) => "refused",
            Self::Unavailable(_) => "unavailable",
            Self::Bootstrap { .. } => "bootstrap_unreadable",
            Self::Sign(_) => "error",
        }
    }

    /// Trying again as it is cannot help: the credential, or where it is
    /// read from, must change first. At start this is a configuration
    /// error; at renewal the retries go on (the platform may fix it).
    pub fn needs_new_credential(&self) -> bool {
        matches!(self, Self::Refused(_) | Self::Bootstrap { .. })
    }
}

/// A source of grants for one workload.
#[derive(Debug)]
#[non_exhaustive]
pub enum GrantSource {
    /// The sidecar signs its own grant with an embedded root key.
    Embedded(Embedded),
    /// The platform issuer grants it.
    Remote(Remote),
}

impl GrantSource {
    /// The source `config.trust.mode` names.
    pub fn from_config(config: &Config) -> Result<Self, SourceError> {
        match &config.trust.mode {
            TrustMode::Embedded => Embedded::open(config).map(Self::Embedded),
            TrustMode::Remote(remote) => {
                Remote::open(config, remote)
                    .map(Self::Remote)
                    .map_err(|source| SourceError::Client {
                        config: config.file.clone(),
                        source,
                    })
            }
        }
    }

    /// A grant binding `key`, valid from `now`.
    pub async fn obtain(&self, key: &PublicKey, now: u64) -> Result<Grant, GrantError> {
        match self {
            Self::Embedded(e) => e.issue(key, now),
            Self::Remote(r) => r.obtain(key, now).await,
        }
    }

    /// Every grant is obtained for a fresh sidecar key. True in remote
    /// mode: the issuer may have narrowed the ceiling since the last grant
    /// without the sidecar knowing beforehand, and a fresh key per grant
    /// leaves the wider grant bound to no live key (the embedded source
    /// knows when it narrows, and rotates then).
    pub fn fresh_key_per_grant(&self) -> bool {
        matches!(self, Self::Remote(_))
    }

    /// Re-reads what decides the ceiling (the declarations file) at `now`,
    /// off the runtime's threads.
    /// A workload no longer declared drops to no authorizations. On error
    /// nothing changes, and the failure is remembered until a reload
    /// succeeds (see [`GrantSource::is_current`]).
    pub async fn reload(&self, now: u64) -> Result<Change, SourceError> {
        match self {
            Self::Embedded(e) => e.reload(now).await,
            // Nothing to read: the issuer decides the ceiling, and the
            // credential is read at every request.
            Self::Remote(_) => Ok(Change::default()),
        }
    }

    /// False once reloads have been failing for longer than `grace`: the
    /// ceiling in force may then be one the project withdrew, and a sidecar
    /// must stop serving it rather than fail open.
    pub fn is_current(&self, now: u64, grace: u64) -> bool {
        self.failing_since()
            .is_none_or(|t| now < t.saturating_add(grace))
    }

    /// When the reloads failing since the last success began, if they are.
    pub fn failing_since(&self) -> Option<u64> {
        match self {
            Self::Embedded(e) => e.failing_since(),
            Self::Remote(_) => None,
        }
    }

    /// The root public keys an upstream needs to verify this source's
    /// grants: in remote mode the issuer's, as last fetched.
    pub fn jwks(&self) -> Jwks {
        match self {
            Self::Embedded(e) => Jwks::publish([e.root.public()]),
            Self::Remote(r) => r.jwks(),
        }
    }
}

/// What a reload did to the ceiling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Change {
    /// The ceiling is different.
    pub changed: bool,
    /// Something was withdrawn (the new ceiling is not a superset).
    pub narrowed: bool,
}

/// The embedded issuer: root key + declarations, on this machine.
#[derive(Debug)]
pub struct Embedded {
    root: SigningKey,
    issuer: String,
    workload: WorkloadId,
    environment: Environment,
    declarations: PathBuf,
    ttl_secs: u64,
    ceiling: Shared<ScopeSet>,
    /// Unix time of the first of the reloads failing since the last success.
    failing_since: Mutex<Option<u64>>,
}

impl Embedded {
    fn open(config: &Config) -> Result<Self, SourceError> {
        let declarations = embedded_declarations(config);
        let ceiling = load_ceiling(&config.file, &declarations, &config.workload.id)?;
        Ok(Self {
            root: load_or_create_root_key(&config.trust.state_dir)?,
            issuer: config.tokens.issuer.clone(),
            workload: config.workload.id.clone(),
            environment: config.workload.environment.clone(),
            declarations,
            ttl_secs: config.trust.grant_ttl.as_secs(),
            ceiling: Shared::new(ceiling),
            failing_since: Mutex::new(None),
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
    async fn reload(&self, now: u64) -> Result<Change, SourceError> {
        let path = self.declarations.clone();
        let loaded = tokio::task::spawn_blocking(move || Declarations::load(&path))
            .await
            .map_err(|source| SourceError::Interrupted {
                declarations: self.declarations.clone(),
                source,
            })
            .and_then(|r| r.map_err(SourceError::from));
        let mut failing = self
            .failing_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let declarations = match loaded {
            Ok(d) => d,
            Err(e) => {
                failing.get_or_insert(now);
                return Err(e);
            }
        };
        *failing = None;
        // Valid declarations that no longer name this workload withdraw
        // everything it had: fail closed, not open.
        let ceiling = declarations
            .get(&self.workload)
            .map(|e| e.authorizations.clone())
            .unwrap_or_default();
        let old = self.ceiling.load();
        let change = Change {
            changed: *old != ceiling,
            narrowed: !old.is_subset(&ceiling),
        };
        self.ceiling.store(ceiling);
        Ok(change)
    }

    fn failing_since(&self) -> Option<u64> {
        *self
            .failing_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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

/// `workload.declarations`, which configuration validation requires in
/// embedded mode.
fn embedded_declarations(config: &Config) -> PathBuf {
    config.workload.declarations.clone().unwrap_or_default()
}

/// `config`'s workload's authorizations in `declarations` (read from
/// `path`), or why it has none.
pub fn declared_ceiling(
    config: &Config,
    declarations: &Declarations,
    path: &Path,
) -> Result<ScopeSet, SourceError> {
    ceiling_in(declarations, &config.file, path, &config.workload.id)
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
