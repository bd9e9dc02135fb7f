//! The sidecar's state: its ephemeral key, its current grant, the token
//! reuse cache, and grant renewal. HTTP lives in [`crate::server`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;

use crate::authorization::ScopeSet;
use crate::config::{Config, TrustMode};
use crate::declarations::{Declarations, DeclarationsError};
use crate::grant::{Grant, GrantRequest};
use crate::issuer::{IssuerError, load_or_create_root_key};
use crate::keys::{KeyError, SigningKey, jwk_set};
use crate::proxy::Proxy;
use crate::shared::Shared;
use crate::sink::SinkError;
use crate::telemetry::SidecarMetrics;
use crate::token::{MintError, Minted, mint};

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartupError {
    /// The declarations file is unreadable or invalid.
    #[error(transparent)]
    Declarations(#[from] DeclarationsError),
    /// `workload.id` is not declared.
    #[error("{config}: `workload.id` = {id} is not declared in {declarations}")]
    Undeclared {
        /// The config file.
        config: PathBuf,
        /// The workload id.
        id: String,
        /// The declarations file.
        declarations: PathBuf,
    },
    /// The root key could not be loaded or created.
    #[error(transparent)]
    Issuer(#[from] IssuerError),
    /// Key generation or the crypto self-test failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The token file could not be written, or there is nothing to write.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// `[sink]` is set but the workload declares no authorizations.
    #[error(
        "{config}: `sink.path` is set but {id} declares no authorizations, so there is no token to write"
    )]
    SinkWithoutScopes {
        /// The config file.
        config: PathBuf,
        /// The workload.
        id: String,
    },
    /// The forward proxy's HTTP client could not be built.
    #[error("{config}: `proxy.upstream`: {message}")]
    Proxy {
        /// The config file.
        config: PathBuf,
        /// Why.
        message: String,
    },
}

/// Most distinct (scope, ttl) entries the reuse cache holds before it sweeps.
const CACHE_SWEEP_AT: usize = 64;

/// A running sidecar's state. Cheap to share behind an `Arc`.
pub struct Sidecar {
    config: Config,
    ceiling: Shared<ScopeSet>,
    root: SigningKey,
    key: SigningKey,
    grant: Shared<Grant>,
    cache: Mutex<HashMap<(String, u64), Arc<Minted>>>,
    proxy: Option<Proxy>,
    sink_due: std::sync::atomic::AtomicU64,
    metrics: SidecarMetrics,
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecar")
            .field("workload", &self.config.workload.id.to_string())
            .finish_non_exhaustive()
    }
}

/// The outcome of a token request.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The token and its claims.
    pub minted: Arc<Minted>,
    /// True when a cached token was handed out again.
    pub reused: bool,
}

impl Sidecar {
    /// Builds the sidecar: loads the declarations, checks the workload is
    /// declared, opens the embedded root key, generates the in-memory
    /// sidecar key and obtains the first grant.
    pub fn start(config: Config, now: u64) -> Result<Self, StartupError> {
        crate::keys::self_test()?;
        let ceiling = load_ceiling(&config)?;
        let root = match config.trust.mode {
            TrustMode::Embedded => load_or_create_root_key(&config.trust.state_dir)?,
        };
        // The sidecar key lives in memory only: it is never written anywhere,
        // so it dies with the process.
        let key = SigningKey::generate()?;
        let grant = issue_grant(&config, &ceiling, &root, &key, now)?;
        let proxy = match &config.proxy {
            Some(p) => Some(Proxy::new(p).map_err(|e| StartupError::Proxy {
                config: config.file.clone(),
                message: e.to_string(),
            })?),
            None => None,
        };
        let sidecar = Self {
            config,
            ceiling: Shared::new(ceiling),
            root,
            key,
            grant: Shared::new(grant),
            cache: Mutex::new(HashMap::new()),
            proxy,
            sink_due: std::sync::atomic::AtomicU64::new(0),
            metrics: SidecarMetrics::default(),
        };
        // The first token file is written before the sidecar reports ready,
        // so a wrong path or permission stops it at start, not later.
        if let Some(sink) = &sidecar.config.sink {
            if sidecar.ceiling().is_empty() {
                return Err(StartupError::SinkWithoutScopes {
                    config: sidecar.config.file.clone(),
                    id: sidecar.config.workload.id.to_string(),
                });
            }
            let due = crate::sink::refresh(&sidecar, sink, now)?;
            sidecar
                .sink_due
                .store(due, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(sidecar)
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The forward proxy, when `[proxy]` is configured.
    pub fn proxy(&self) -> Option<&Proxy> {
        self.proxy.as_ref()
    }

    /// When the token file is next due for replacement (unix seconds).
    pub fn sink_due(&self) -> u64 {
        self.sink_due.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The workload's declared authorizations (the grant's ceiling).
    pub fn ceiling(&self) -> Arc<ScopeSet> {
        self.ceiling.load()
    }

    /// The sidecar's metrics.
    pub fn metrics(&self) -> &SidecarMetrics {
        &self.metrics
    }

    /// Re-reads the declarations (SIGHUP). If they are valid and still
    /// declare this workload, new tokens use them: the reuse cache is
    /// dropped, and a new grant is issued when the ceiling changed. If not,
    /// nothing changes and the error says why. Returns whether the ceiling
    /// changed.
    pub fn reload(&self, now: u64) -> Result<bool, StartupError> {
        let ceiling = load_ceiling(&self.config)?;
        let changed = *self.ceiling() != ceiling;
        if changed {
            let grant = issue_grant(&self.config, &ceiling, &self.root, &self.key, now)?;
            self.ceiling.store(ceiling);
            self.grant.store(grant);
        }
        self.lock_cache().clear();
        // The token file must not keep authorizations that were just
        // withdrawn until its next scheduled rewrite.
        if changed && let Some(sink) = &self.config.sink {
            let due = crate::sink::refresh(self, sink, now)?;
            self.sink_due
                .store(due, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(changed)
    }

    /// The current grant.
    pub fn grant(&self) -> Arc<Grant> {
        self.grant.load()
    }

    /// The trusted root public keys, as an upstream needs them.
    pub fn jwks(&self) -> JwkSet {
        jwk_set([self.root.public()])
    }

    /// Ready means: holds a grant valid now.
    pub fn is_ready(&self, now: u64) -> bool {
        self.grant().is_valid_at(now)
    }

    /// Replaces the grant with a fresh one and drops the reuse cache.
    pub fn renew_grant(&self, now: u64) -> Result<(), StartupError> {
        let grant = issue_grant(&self.config, &self.ceiling(), &self.root, &self.key, now)?;
        tracing::info!(jti = %grant.claims().jti, exp = grant.claims().exp, "grant renewed");
        self.grant.store(grant);
        self.lock_cache().clear();
        Ok(())
    }

    /// Hands out a token for `scope` (already checked against the ceiling by
    /// the caller, and again by [`mint`]) with a lifetime of `ttl_secs`.
    ///
    /// With `tokens.reuse` on, a token minted earlier for the same scope and
    /// lifetime is returned again while at least half of its life remains.
    pub fn issue(&self, scope: &ScopeSet, ttl_secs: u64, now: u64) -> Result<Issued, MintError> {
        if self.config.tokens.reuse {
            self.issue_reusing(scope, ttl_secs, now)
        } else {
            self.mint_fresh(scope, ttl_secs, now)
        }
    }

    /// Like [`Sidecar::issue`] with reuse on, whatever `tokens.reuse` says:
    /// the forward proxy's tokens never reach the workload, so reusing them
    /// costs nothing in isolation and saves a signature per request.
    ///
    /// The miss path mints while holding the cache lock, so when a token
    /// needs replacing, concurrent requests wait ~50 µs for one new token
    /// instead of each minting their own (no stampede).
    pub fn issue_reusing(
        &self,
        scope: &ScopeSet,
        ttl_secs: u64,
        now: u64,
    ) -> Result<Issued, MintError> {
        let cache_key = (scope.to_string(), ttl_secs);
        let mut cache = self.lock_cache();
        if let Some(hit) = cache.get(&cache_key) {
            let c = &hit.claims;
            let life = c.exp.saturating_sub(c.iat);
            if c.exp.saturating_sub(now) * 2 >= life && now >= c.iat {
                return Ok(Issued {
                    minted: Arc::clone(hit),
                    reused: true,
                });
            }
        }
        let minted = self.mint_fresh(scope, ttl_secs, now)?.minted;
        if cache.len() >= CACHE_SWEEP_AT {
            cache.retain(|_, m| m.claims.exp > now);
            if cache.len() >= CACHE_SWEEP_AT {
                cache.clear();
            }
        }
        cache.insert(cache_key, Arc::clone(&minted));
        Ok(Issued {
            minted,
            reused: false,
        })
    }

    /// Mints a new token, bypassing the reuse cache.
    pub fn mint_fresh(
        &self,
        scope: &ScopeSet,
        ttl_secs: u64,
        now: u64,
    ) -> Result<Issued, MintError> {
        let grant = self.grant();
        let minted = mint(
            &self.key,
            &grant,
            &self.config.tokens.audience,
            scope,
            ttl_secs,
            now,
        )?;
        // The audit line: who got which scopes until when. Never the token.
        let c = &minted.claims;
        tracing::info!(jti = %c.jti, sub = %c.sub, scope = %c.scope, exp = c.exp, "token issued");
        Ok(Issued {
            minted: Arc::new(minted),
            reused: false,
        })
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), Arc<Minted>>> {
        // A panic while holding the lock cannot leave the map inconsistent
        // (every operation on it is a single call), so recover from poison.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Renews the grant two thirds into its life, forever; retries every
    /// `retry` on failure. Run it as a background task.
    pub async fn renew_forever(self: Arc<Self>, retry: Duration) {
        loop {
            let now = jsonwebtoken::get_current_timestamp();
            let due = self.grant().renew_at();
            if due > now {
                tokio::time::sleep(Duration::from_secs(due - now)).await;
                continue;
            }
            if let Err(e) = self.renew_grant(jsonwebtoken::get_current_timestamp()) {
                tracing::error!(error = %e, "grant renewal failed; retrying");
                tokio::time::sleep(retry).await;
            }
        }
    }
}

/// The workload's declared authorizations, from the declarations file.
fn load_ceiling(config: &Config) -> Result<ScopeSet, StartupError> {
    let declarations = Declarations::load(&config.workload.declarations)?;
    Ok(declarations
        .get(&config.workload.id)
        .ok_or_else(|| StartupError::Undeclared {
            config: config.file.clone(),
            id: config.workload.id.to_string(),
            declarations: config.workload.declarations.clone(),
        })?
        .authorizations
        .clone())
}

fn issue_grant(
    config: &Config,
    ceiling: &ScopeSet,
    root: &SigningKey,
    key: &SigningKey,
    now: u64,
) -> Result<Grant, KeyError> {
    Grant::issue(
        root,
        GrantRequest {
            issuer: &config.tokens.issuer,
            workload: &config.workload.id,
            environment: &config.workload.environment,
            ceiling,
            sidecar_key: key.public(),
            ttl_secs: config.trust.grant_ttl.as_secs(),
        },
        now,
    )
}
