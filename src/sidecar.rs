//! The sidecar's token state: its ephemeral key, its one grant slot, and the
//! token reuse cache. No I/O and no clock: the daemon ([`crate::daemon`])
//! brings grants and the time.
//!
//! There is one slot, holding the key and the grant that binds it, and the
//! ceiling *is* the grant's scope: a renewal and a reload cannot leave a
//! ceiling and a grant that disagree, nor a key its grant does not bind.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use authproxy_core::ScopeSet;
use authproxy_core::grant::Grant;
use authproxy_core::keys::{KeyError, PublicKey, SigningKey, random_id};
use authproxy_core::proof;
use authproxy_core::shared::Shared;
use authproxy_core::token::{MintError, MintRequest, Minted, Minter};

/// Most distinct (scope, ttl) entries the reuse cache holds before it sweeps.
const CACHE_SWEEP_AT: usize = 64;

/// How the sidecar mints.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// `aud` of every token.
    pub audience: String,
    /// Hand out the same token again while at least half its life remains.
    pub reuse: bool,
}

/// A sidecar's key, grant and reuse cache. Cheap to share behind an `Arc`.
///
/// The key and the grant that binds it are swapped together, as one
/// [`Minter`] (which also holds what they fix in every token, rendered).
pub struct Sidecar {
    settings: TokenSettings,
    signer: Shared<Minter>,
    cache: Mutex<Vec<Cached>>,
}

/// A token in the reuse cache, with the scope and lifetime it was asked for.
///
/// The cache is a short list searched in order (a sidecar asks for a few
/// distinct scopes at most): a lookup compares sets instead of formatting
/// the scope into a string key, which the proxy would do on every request.
#[derive(Debug)]
struct Cached {
    scope: ScopeSet,
    ttl_secs: u64,
    minted: Arc<Minted>,
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecar")
            .field("signer", &self.signer.load())
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
    /// A sidecar signing with `key` under `grant` (which must bind `key`).
    pub fn new(key: SigningKey, grant: Grant, settings: TokenSettings) -> Self {
        Self {
            settings,
            signer: Shared::new(Minter::new(Arc::new(key), Arc::new(grant))),
            cache: Mutex::new(Vec::new()),
        }
    }

    /// The public half of the current sidecar key, which grants bind.
    pub fn public_key(&self) -> PublicKey {
        self.signer.load().key().public().clone()
    }

    /// The current grant.
    pub fn grant(&self) -> Arc<Grant> {
        Arc::clone(self.signer.load().grant())
    }

    /// The workload's authorizations: the current grant's scope.
    pub fn ceiling(&self) -> Arc<ScopeSet> {
        self.signer.load().grant().shared_scope()
    }

    /// Installs a new grant for the current key; tokens minted under the
    /// old one are no longer handed out.
    pub fn install(&self, grant: Grant) {
        let key = Arc::clone(self.signer.load().key());
        self.store(key, grant);
    }

    /// Replaces the key and its grant together (the old key is dropped, so
    /// nothing can sign under the old grant any more); tokens minted under
    /// the old pair are no longer handed out.
    pub fn rotate(&self, key: SigningKey, grant: Grant) {
        self.store(Arc::new(key), grant);
    }

    fn store(&self, key: Arc<SigningKey>, grant: Grant) {
        self.signer.store(Minter::new(key, Arc::new(grant)));
        self.lock_cache().clear();
    }

    /// Signs `nonce` with the current key, next to the grant binding it
    /// (see [`authproxy_core::proof`]).
    pub fn prove(&self, nonce: &str) -> Result<String, KeyError> {
        let signer = self.signer.load();
        proof::prove(signer.key(), signer.grant(), nonce)
    }

    /// Ready means: holds a grant valid now.
    pub fn is_ready(&self, now: u64) -> bool {
        self.signer.load().grant().is_valid_at(now)
    }

    /// Hands out a token for `scope` (already checked against the ceiling by
    /// the caller, and again by [`mint`]) with a lifetime of `ttl_secs`.
    ///
    /// With `tokens.reuse` on, a token minted earlier for the same scope and
    /// lifetime is returned again while at least half of its life remains.
    pub fn issue(&self, scope: &ScopeSet, ttl_secs: u64, now: u64) -> Result<Issued, MintError> {
        if self.settings.reuse {
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
    /// needs replacing, concurrent requests wait for one new token instead
    /// of each minting their own (no stampede).
    pub fn issue_reusing(
        &self,
        scope: &ScopeSet,
        ttl_secs: u64,
        now: u64,
    ) -> Result<Issued, MintError> {
        let mut cache = self.lock_cache();
        if let Some(hit) = cache
            .iter()
            .find(|c| c.ttl_secs == ttl_secs && c.scope == *scope)
        {
            let c = &hit.minted.claims;
            let life = c.exp.saturating_sub(c.iat);
            if c.exp.saturating_sub(now) * 2 >= life && now >= c.iat {
                return Ok(Issued {
                    minted: Arc::clone(&hit.minted),
                    reused: true,
                });
            }
        }
        let minted = self.mint_fresh(scope, ttl_secs, now)?.minted;
        cache.retain(|c| c.ttl_secs != ttl_secs || c.scope != *scope);
        if cache.len() >= CACHE_SWEEP_AT {
            cache.retain(|c| c.minted.claims.exp > now);
            if cache.len() >= CACHE_SWEEP_AT {
                cache.clear();
            }
        }
        cache.push(Cached {
            scope: scope.clone(),
            ttl_secs,
            minted: Arc::clone(&minted),
        });
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
        let minted = self.signer.load().mint(
            MintRequest {
                audience: &self.settings.audience,
                scope,
                ttl_secs,
            },
            now,
            random_id(),
        )?;
        // The audit line: who got which scopes until when. Never the token.
        let c = &minted.claims;
        tracing::info!(jti = %c.jti, sub = %c.sub, scope = %c.scope, exp = c.exp, "token issued");
        Ok(Issued {
            minted: Arc::new(minted),
            reused: false,
        })
    }

    fn lock_cache(&self) -> MutexGuard<'_, Vec<Cached>> {
        // A panic while holding the lock cannot leave the map inconsistent
        // (every operation on it is a single call), so recover from poison.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use authproxy_core::grant::GrantRequest;
    use authproxy_core::{Environment, WorkloadId};

    const T0: u64 = 1_700_000_000;

    fn sidecar(reuse: bool, scope: &str, grant_ttl: u64) -> (Sidecar, SigningKey) {
        let root = SigningKey::generate().unwrap();
        let key = SigningKey::generate().unwrap();
        let grant = grant_for(&root, &key, scope, grant_ttl, T0);
        let s = Sidecar::new(
            key,
            grant,
            TokenSettings {
                audience: "https://api".into(),
                reuse,
            },
        );
        (s, root)
    }

    fn grant_for(root: &SigningKey, key: &SigningKey, scope: &str, ttl: u64, now: u64) -> Grant {
        Grant::issue(
            root,
            GrantRequest {
                issuer: "urn:test",
                workload: &"app/web".parse::<WorkloadId>().unwrap(),
                environment: &Environment::parse("main").unwrap(),
                ceiling: &ScopeSet::parse(scope).unwrap(),
                sidecar_key: key.public(),
                ttl_secs: ttl,
            },
            now,
            random_id(),
        )
        .unwrap()
    }

    #[test]
    fn a_token_is_reused_while_half_its_life_remains() {
        let (s, _) = sidecar(true, "env:view", 86_400);
        let scope = s.ceiling();
        let first = s.issue(&scope, 300, T0).unwrap();
        assert!(!first.reused);
        let again = s.issue(&scope, 300, T0 + 150).unwrap();
        assert!(again.reused);
        assert_eq!(again.minted.token, first.minted.token);
        let fresh = s.issue(&scope, 300, T0 + 151).unwrap();
        assert!(!fresh.reused);
    }

    #[test]
    fn with_reuse_off_every_request_mints() {
        let (s, _) = sidecar(false, "env:view", 86_400);
        let scope = s.ceiling();
        let a = s.issue(&scope, 300, T0).unwrap();
        let b = s.issue(&scope, 300, T0).unwrap();
        assert_ne!(a.minted.claims.jti, b.minted.claims.jti);
    }

    #[test]
    fn the_ceiling_is_the_installed_grants_scope_and_installing_drops_the_cache() {
        let (s, root) = sidecar(true, "env:view task:operate:x", 86_400);
        let first = s.issue(&s.ceiling(), 300, T0).unwrap();
        assert_eq!(s.ceiling().to_string(), "task:operate:x env:view");
        // A narrower grant for the same key: the ceiling follows it at once.
        let narrower = Grant::issue(
            &root,
            GrantRequest {
                issuer: "urn:test",
                workload: &"app/web".parse::<WorkloadId>().unwrap(),
                environment: &Environment::parse("main").unwrap(),
                ceiling: &ScopeSet::parse("env:view").unwrap(),
                sidecar_key: &s.public_key(),
                ttl_secs: 86_400,
            },
            T0,
            random_id(),
        )
        .unwrap();
        s.install(narrower);
        assert_eq!(s.ceiling().to_string(), "env:view");
        let wide = ScopeSet::parse("env:view task:operate:x").unwrap();
        assert!(matches!(
            s.issue(&wide, 300, T0 + 1),
            Err(MintError::BeyondGrant)
        ));
        let second = s.issue(&s.ceiling(), 300, T0 + 1).unwrap();
        assert!(!second.reused);
        assert_ne!(second.minted.token, first.minted.token);
    }

    #[test]
    fn tokens_never_outlive_the_grant_and_none_is_minted_after_it() {
        let (s, _) = sidecar(true, "env:view", 120);
        let t = s.issue(&s.ceiling(), 300, T0 + 60).unwrap();
        assert_eq!(t.minted.claims.exp, T0 + 120);
        assert!(s.is_ready(T0 + 119));
        assert!(!s.is_ready(T0 + 120));
        assert!(matches!(
            s.mint_fresh(&s.ceiling(), 300, T0 + 120),
            Err(MintError::GrantNotValid)
        ));
    }
}
