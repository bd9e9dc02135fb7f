//! The issuer node: its root key, its store, and the use cases the HTTP
//! routes call — publish keys, check the admin token, sync declarations,
//! issue grants; in [`pats`] personal access tokens, in [`exchange`] their
//! exchange for access tokens, in [`revocations`] the revocation feed and
//! grant revocation. Every method takes `now`; none reads the clock.

pub mod exchange;
pub mod pats;
pub mod revocations;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use authproxy_core::declarations::Declarations;
use authproxy_core::grant::{Grant, GrantRequest};
use authproxy_core::keys::{Jwks, KeyError, PublicKey, random_id};
use authproxy_core::root_key::{RootKeyError, load_root_key_versions};
use authproxy_core::{Environment, Subject, WorkloadId};
use serde::{Serialize, Serializer};

use crate::config::{IssuerConfig, StoreUrl};
use crate::error::IssuerError;
use crate::kubernetes::{
    ClusterJwksError, InvalidServiceAccountToken, KubernetesCaller, KubernetesVerifier,
    ServiceAccount, looks_like_jwt,
};
use crate::root_keys::RootKeyRing;
use crate::secret::{ADMIN_TOKEN_PREFIX, Secret, WORKLOAD_CREDENTIAL_PREFIX};
use crate::state_dir::{StateFileError, load_or_create_admin_token, load_or_create_node_id};
use crate::store::{
    BootstrapKind, CredentialOwner, GrantRecord, PostgresStore, SqliteStore, Store, StoreError,
    SyncApplied,
};
use crate::sync::{self, Plan};

pub mod credentials;

/// How many times a sync is planned again when a concurrent sync changed
/// the environment under it.
const SYNC_ATTEMPTS: usize = 3;

/// Why the issuer could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The root key could not be loaded or created.
    #[error(transparent)]
    RootKey(#[from] RootKeyError),
    /// The node id or the admin token file could not be used.
    #[error(transparent)]
    StateFile(#[from] StateFileError),
    /// The store could not be opened or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store lists a root key of this node as signing, or about to,
    /// whose private key is not in `state_dir` (restored from an old
    /// backup, or another node's directory).
    #[error(
        "the store lists root key {kid} of node {node} as {state}, but its private key is not in the state directory"
    )]
    MissingRootKey {
        /// The node.
        node: String,
        /// The key.
        kid: String,
        /// Its state.
        state: &'static str,
    },
    /// `[kubernetes] jwks_file` could not be read or holds no usable key.
    /// (An unreachable `jwks_url` is not fatal: it is fetched again on use.)
    #[error("`{key}`: {source}")]
    KubernetesJwks {
        /// `kubernetes.jwks_file` or `kubernetes.jwks_url`.
        key: &'static str,
        /// Why.
        source: ClusterJwksError,
    },
}

/// One issuer node.
#[derive(Debug)]
pub struct Issuer {
    config: IssuerConfig,
    store: Arc<dyn Store>,
    /// This node's root key versions; the active one signs.
    ring: RootKeyRing,
    node: String,
    kubernetes: Option<KubernetesVerifier>,
}

/// Who asked for a grant, as its bootstrap credential proved.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Bootstrap {
    /// A workload credential of this identity.
    WorkloadCredential(CredentialOwner),
    /// A Kubernetes projected service-account token of this service
    /// account, with its binding if it has one.
    KubernetesServiceAccount(KubernetesCaller),
}

impl Bootstrap {
    /// How the caller proved who it is.
    pub fn kind(&self) -> BootstrapKind {
        match self {
            Self::WorkloadCredential(_) => BootstrapKind::WorkloadCredential,
            Self::KubernetesServiceAccount(_) => BootstrapKind::KubernetesServiceAccount,
        }
    }

    /// The service account, for a Kubernetes caller.
    pub fn service_account(&self) -> Option<&ServiceAccount> {
        match self {
            Self::WorkloadCredential(_) => None,
            Self::KubernetesServiceAccount(caller) => Some(&caller.account),
        }
    }
}

/// A grant request, parsed.
#[derive(Debug, Clone)]
pub struct GrantApplication {
    /// The workload the sidecar serves.
    pub workload: WorkloadId,
    /// Its environment.
    pub environment: Environment,
    /// The sidecar's public key, which the grant binds (`cnf.jkt`).
    pub public_key: PublicKey,
}

/// A grant issued.
#[derive(Clone)]
pub struct IssuedGrant {
    /// The grant, compact JWS.
    pub grant: String,
    /// Its id (`jti`).
    pub jti: String,
    /// Its expiry (unix seconds).
    pub expires_at: u64,
}

impl std::fmt::Debug for IssuedGrant {
    // The compact grant is half of a sidecar's signing authority: not logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedGrant")
            .field("jti", &self.jti)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The result of a sync: the plan, and the workload credentials it created
/// (shown once, here, and stored only as hashes).
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    /// The environment synced.
    pub environment: String,
    /// True when nothing was applied on purpose.
    pub dry_run: bool,
    /// What changed, or would.
    #[serde(flatten)]
    pub plan: Plan,
    /// Workload id → its new `ap_wc_…` credential, for each identity the
    /// sync created (an identity created by sync is named after its
    /// workload). Empty on a dry run.
    #[serde(serialize_with = "expose_all")]
    pub credentials: BTreeMap<String, Secret>,
}

fn expose_all<S: Serializer>(map: &BTreeMap<String, Secret>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(map.iter().map(|(k, v)| (k, v.expose())))
}

/// RFC 8414 authorization server metadata.
#[derive(Debug, Clone, Serialize)]
pub struct Metadata {
    /// The issuer URL (`iss` of grants).
    pub issuer: String,
    /// Where the root public keys are.
    pub jwks_uri: String,
    /// The PAT exchange endpoint (DESIGN §9).
    pub token_endpoint: String,
    /// How a client presents its PAT there: HTTP Basic or the form's
    /// `client_secret` (RFC 8414 §2; the default would be Basic only).
    pub token_endpoint_auth_methods_supported: Vec<&'static str>,
    /// `["client_credentials"]`.
    pub grant_types_supported: Vec<&'static str>,
    /// Empty: no authorization endpoint (required member, RFC 8414 §2).
    pub response_types_supported: Vec<&'static str>,
}

impl Issuer {
    /// Starts a node: loads or creates its root keys, node id and admin
    /// token under `state_dir`, opens (creating on first start) the store,
    /// records the root public keys and the admin token's hash there, and
    /// registers the node's credentials and their schedules (DESIGN §10).
    pub async fn open(config: IssuerConfig, now: u64) -> Result<Self, OpenError> {
        // The root keys first: it creates `state_dir` (and `root-keys/`) 0700.
        let keys = load_root_key_versions(&config.issuer.state_dir)?;
        let node = load_or_create_node_id(&config.issuer.state_dir)?;
        let admin_token = load_or_create_admin_token(&config.issuer.state_dir)?;
        let kubernetes = match &config.kubernetes {
            Some(k8s) => Some(open_kubernetes(k8s).await?),
            None => None,
        };
        let store: Arc<dyn Store> = match &config.store.url {
            StoreUrl::Sqlite(path) => Arc::new(SqliteStore::open(path).await?),
            StoreUrl::Postgres(url) => Arc::new(PostgresStore::open(url).await?),
        };
        let ring = RootKeyRing::new(keys);
        credentials::open_root_keys(&config, store.as_ref(), &ring, &node, now).await?;
        // Re-adding the hash of an existing file is a no-op, and keeps a
        // token revoked in the store revoked.
        store.add_admin_token(&admin_token.hash(), now).await?;
        let signing = ring.signing_key(now);
        tracing::info!(
            node = %node,
            kid = ?signing.map(|k| k.public().thumbprint().to_owned()),
            store = ?config.store.url,
            admin_token_file = %config.admin_token_file().display(),
            "issuer node ready"
        );
        let issuer = Self {
            config,
            store,
            ring,
            node,
            kubernetes,
        };
        issuer.open_credentials(now).await?;
        Ok(issuer)
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &IssuerConfig {
        &self.config
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The `kid` (thumbprint) of the root key this node signs with (at the
    /// latest time it signed or started).
    pub fn root_kid(&self) -> String {
        self.ring.current_kid().unwrap_or_default()
    }

    /// This node's root key versions.
    pub fn root_keys(&self) -> &RootKeyRing {
        &self.ring
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Every live root public key of every node, as a JWKS. Read from the
    /// store at every call, never cached: each node publishes another
    /// node's new key as soon as that node has recorded it, so an upstream
    /// may trust any one node's JWKS.
    pub async fn jwks(&self, now: u64) -> Result<Jwks, IssuerError> {
        let keys = self.store.live_root_keys(now).await?;
        Ok(Jwks::publish(keys.iter().map(|k| &k.public_key)))
    }

    /// RFC 8414 metadata.
    pub fn metadata(&self) -> Metadata {
        Metadata {
            issuer: self.config.issuer.url.clone(),
            jwks_uri: self.config.jwks_uri(),
            token_endpoint: self.config.token_endpoint(),
            token_endpoint_auth_methods_supported: vec![
                "client_secret_basic",
                "client_secret_post",
            ],
            grant_types_supported: vec!["client_credentials"],
            response_types_supported: Vec::new(),
        }
    }

    /// Checks an admin bearer token against every admin token in the store.
    pub async fn authorize_admin(&self, bearer: Option<&str>, now: u64) -> Result<(), IssuerError> {
        let token = bearer
            .and_then(|b| Secret::presented(b, ADMIN_TOKEN_PREFIX))
            .ok_or(IssuerError::Unauthenticated(
                "missing or malformed admin token",
            ))?;
        let known = self.store.admin_token_hashes(now).await?;
        // Compared in constant time, against every known hash.
        if token.hash().is_one_of(&known) {
            Ok(())
        } else {
            Err(IssuerError::Unauthenticated(
                "unknown or revoked admin token",
            ))
        }
    }

    /// Makes the environment's identities and workloads match
    /// `declarations` (see [`crate::sync`]), or only computes the plan when
    /// `dry_run`. Idempotent: a second identical sync changes nothing.
    pub async fn sync(
        &self,
        environment: &Environment,
        declarations: &Declarations,
        dry_run: bool,
        now: u64,
    ) -> Result<SyncReport, IssuerError> {
        for _ in 0..SYNC_ATTEMPTS {
            let state = self.store.sync_state(environment).await?;
            let planned =
                sync::plan(declarations, &state).map_err(IssuerError::InvalidDeclarations)?;
            let mut report = SyncReport {
                environment: environment.to_string(),
                dry_run,
                plan: planned.plan,
                credentials: BTreeMap::new(),
            };
            let mut changes = planned.changes;
            if dry_run || changes.is_empty() {
                return Ok(report);
            }
            for (identity, _) in &changes.create_identities {
                let credential = Secret::generate(WORKLOAD_CREDENTIAL_PREFIX).map_err(|_| {
                    IssuerError::Internal("the OS random number generator failed".into())
                })?;
                changes
                    .new_credentials
                    .push((identity.clone(), credential.hash()));
                report.credentials.insert(identity.clone(), credential);
            }
            match self.store.apply_sync(&changes, now).await? {
                SyncApplied::Applied => {
                    // The identities it created have credentials now:
                    // versioned and scheduled for rotation (DESIGN §10).
                    self.register_workload_credentials(now).await?;
                    tracing::info!(
                        environment = %environment,
                        created = report.plan.created.len(),
                        updated = report.plan.updated.len(),
                        unchanged = report.plan.unchanged.len(),
                        removed = report.plan.removed.len(),
                        credentials_created = report.credentials.len(),
                        "sync applied"
                    );
                    return Ok(report);
                }
                SyncApplied::Conflict => {
                    tracing::debug!(environment = %environment, "sync raced another; planning again");
                }
            }
        }
        Err(IssuerError::SyncConflict)
    }

    /// Authenticates a workload credential (`Authorization: Bearer ap_wc_…`).
    pub async fn authenticate_workload(
        &self,
        bearer: Option<&str>,
        now: u64,
    ) -> Result<Bootstrap, IssuerError> {
        let credential = bearer
            .and_then(|b| Secret::presented(b, WORKLOAD_CREDENTIAL_PREFIX))
            .ok_or(IssuerError::Unauthenticated(
                "missing or malformed workload credential",
            ))?;
        self.store
            .credential_owner(&credential.hash(), now)
            .await?
            .map(Bootstrap::WorkloadCredential)
            .ok_or(IssuerError::Unauthenticated(
                "unknown or revoked workload credential",
            ))
    }

    /// Authenticates the bearer credential of `POST /v1/grants`: an
    /// `ap_wc_…` workload credential, or — anything shaped like a JWT — a
    /// Kubernetes projected service-account token (refused when
    /// `[kubernetes]` is not configured).
    pub async fn authenticate_bootstrap(
        &self,
        bearer: Option<&str>,
        now: u64,
    ) -> Result<Bootstrap, IssuerError> {
        match bearer {
            Some(token)
                if !token.starts_with(WORKLOAD_CREDENTIAL_PREFIX) && looks_like_jwt(token) =>
            {
                self.authenticate_kubernetes(token, now).await
            }
            _ => self.authenticate_workload(bearer, now).await,
        }
    }

    /// Authenticates a Kubernetes projected service-account token against
    /// the cluster keys and `[kubernetes] issuer`, and finds its binding.
    pub async fn authenticate_kubernetes(
        &self,
        token: &str,
        now: u64,
    ) -> Result<Bootstrap, IssuerError> {
        let verifier = self
            .kubernetes
            .as_ref()
            .ok_or(InvalidServiceAccountToken::NotConfigured)?;
        let caller = verifier.authenticate(token, now).await?;
        Ok(Bootstrap::KubernetesServiceAccount(caller))
    }

    /// Signs a grant for `application.workload` if `caller` is bound to it
    /// in `application.environment` and the workload is live. The ceiling
    /// comes from the store, never from the request.
    pub async fn issue_grant(
        &self,
        caller: &Bootstrap,
        application: &GrantApplication,
        now: u64,
    ) -> Result<IssuedGrant, IssuerError> {
        let GrantApplication {
            workload,
            environment,
            public_key,
        } = application;
        let not_bound = || IssuerError::NotBound {
            workload: workload.clone(),
            environment: environment.clone(),
        };
        // A service account's binding names its workload: decided from the
        // configuration, before the store is asked anything.
        if let Bootstrap::KubernetesServiceAccount(k8s) = caller
            && !k8s.is_bound_to(workload, environment)
        {
            return Err(not_bound());
        }
        let record = self
            .store
            .workload(environment, workload)
            .await?
            .ok_or_else(|| IssuerError::UnknownWorkload {
                workload: workload.clone(),
                environment: environment.clone(),
            })?;
        // Identities are per environment: the same name in another
        // environment is another identity.
        if let Bootstrap::WorkloadCredential(owner) = caller
            && (owner.environment != *environment || owner.identity != record.identity)
        {
            return Err(not_bound());
        }
        let identity = record.identity.clone();
        if record.removed {
            return Err(IssuerError::UnknownWorkload {
                workload: workload.clone(),
                environment: environment.clone(),
            });
        }
        // The version active now signs: a new key only from its
        // `activates_at`, `keys.publish_ahead` after it was published.
        let root = self
            .ring
            .signing_key(now)
            .ok_or_else(|| IssuerError::Internal("no active root key on this node".into()))?;
        let jti = random_id();
        let grant = Grant::issue(
            &root,
            GrantRequest {
                issuer: &self.config.issuer.url,
                workload,
                environment,
                ceiling: &record.ceiling,
                sidecar_key: public_key,
                ttl_secs: self.config.issuer.grant_ttl.as_secs(),
            },
            now,
            jti.clone(),
        )
        .map_err(|e: KeyError| IssuerError::Internal(e.to_string()))?;
        let expires_at = grant.claims().exp;
        self.store
            .record_grant(&GrantRecord {
                jti: jti.clone(),
                environment: environment.clone(),
                subject: Subject::Workload(workload.clone()),
                identity,
                bootstrap: caller.kind(),
                root_kid: root.public().thumbprint().to_owned(),
                issued_at: now,
                expires_at,
            })
            .await?;
        tracing::info!(
            jti = %jti,
            workload = %workload,
            environment = %environment,
            expires_at = %rfc3339(expires_at),
            bootstrap = caller.kind().as_str(),
            service_account = caller.service_account().map(tracing::field::display),
            pod = caller
                .service_account()
                .and_then(|a| a.pod.as_deref()),
            "grant issued"
        );
        Ok(IssuedGrant {
            grant: grant.compact().to_owned(),
            jti,
            expires_at,
        })
    }
}

/// The Kubernetes verifier of `config`, its keys loaded: a `jwks_file`
/// that cannot be used stops the start; an unreachable `jwks_url` does not
/// (workload credentials keep working, and the keys are fetched again when
/// a token needs them).
async fn open_kubernetes(
    config: &crate::config::KubernetesConfig,
) -> Result<KubernetesVerifier, OpenError> {
    let key = match config.jwks {
        crate::config::KubernetesJwks::File(_) => "kubernetes.jwks_file",
        crate::config::KubernetesJwks::Url(_) => "kubernetes.jwks_url",
    };
    let verifier = KubernetesVerifier::new(config)
        .map_err(|source| OpenError::KubernetesJwks { key, source })?;
    match verifier.load_keys().await {
        Ok(()) => {}
        Err(source) if verifier.keys().is_file() => {
            return Err(OpenError::KubernetesJwks { key, source });
        }
        Err(error) => {
            tracing::warn!(%error, "cluster JWKS not available yet; it is fetched again when a service-account token arrives");
        }
    }
    tracing::info!(
        issuer = %config.issuer,
        cluster_keys = ?verifier.keys().kids(),
        bindings = config.bindings.len(),
        "Kubernetes bootstrap enabled"
    );
    Ok(verifier)
}

/// Unix seconds as an RFC 3339 UTC string (`2025-01-01T00:00:00Z`).
pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}
