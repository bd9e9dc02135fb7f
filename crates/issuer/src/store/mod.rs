//! The issuer's state behind one trait, [`Store`]: one method per use case,
//! `now` passed in, plain data in and out.
//!
//! Decisions (who may have a grant, what a sync changes) are made by the
//! issuer from what the store returns, never inside an implementation, so a
//! backend only has to store and load. Writes that must stay consistent
//! happen in one transaction per call, and a sync is applied only if the
//! environment is still at the version it was planned against (optimistic
//! locking: a plain `UPDATE … WHERE version = $n` that works the same on
//! every SQL database, and across issuer nodes on PostgreSQL). A PAT update
//! is guarded the same way, by the version id (`jti`) it replaces.
//!
//! Backends: [`SqliteStore`] (one node, one file) and [`PostgresStore`]
//! (any number of nodes). The statements of sync, grants, root keys and
//! admin tokens are shared through `sql`; PATs, the revocation feed and the
//! credential lifecycle have a module per backend, because PostgreSQL adds
//! what several nodes need there (an advisory lock ordering the feed's
//! cursor, `FOR UPDATE SKIP LOCKED` in the task claim). The contract they
//! both meet is `tests/store_contract.rs`, run against each.

mod credentials;
mod postgres;
mod sql;
mod sqlite;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use authproxy_core::keys::PublicKey;
use authproxy_core::pat::PatName;
use authproxy_core::{Environment, ScopeSet, Scopes, Subject, WorkloadId};

use crate::secret::SecretHash;

pub use credentials::{
    Claim, CredentialRecord, CredentialRegistration, CredentialStore, NewWorkloadCredential,
    TaskChanges, TaskRecord, UnregisteredWorkloadCredential, VersionRecord, VersionUpdate,
};
pub use postgres::{PostgresStore, PostgresUrl};
pub use sqlite::SqliteStore;

/// What every store method returns: a boxed future, so that the issuer can
/// hold any backend as `Arc<dyn Store>` and pick it from the store URL.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A store failure. Never a client's fault: the HTTP layer answers 500 and
/// logs it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be opened or created.
    #[error("cannot open the store {location}: {source}")]
    Open {
        /// Where: a path, or a URL with its password shown as `***`.
        location: String,
        /// Why.
        source: sqlx::Error,
    },
    /// The schema migrations failed.
    #[error("cannot migrate the store: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("store query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// A row holds something this version cannot read.
    #[error("store holds an unreadable {what}: {detail}")]
    Corrupt {
        /// Which kind of row.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
}

/// The life stage of a root key (DESIGN §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RootKeyState {
    /// Signs grants and is published.
    Active,
    /// No longer signs, still published while grants it signed may be valid.
    Retiring,
    /// Neither signs nor is published.
    Retired,
}

impl RootKeyState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Retiring => "retiring",
            Self::Retired => "retired",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "retiring" => Some(Self::Retiring),
            "retired" => Some(Self::Retired),
            _ => None,
        }
    }
}

/// A root public key of one issuer node. The private half never leaves
/// that node's `state_dir`.
#[derive(Debug, Clone)]
pub struct RootKeyRecord {
    /// The node that holds the private key.
    pub node: String,
    /// The public key (its thumbprint is the `kid`).
    pub public_key: PublicKey,
    /// Its life stage.
    pub state: RootKeyState,
    /// When it was recorded (unix seconds).
    pub created_at: u64,
}

/// An identity of an environment: what a workload credential authenticates
/// as. Named after the workload it was created for; its ceiling is managed
/// by sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRecord {
    /// Its name (a workload id).
    pub name: String,
    /// The authorizations grants for it carry.
    pub ceiling: ScopeSet,
    /// True when no declared workload uses it any more.
    pub removed: bool,
}

/// A workload of an environment as last synced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadRecord {
    /// The workload.
    pub workload: WorkloadId,
    /// The identity it runs as.
    pub identity: String,
    /// Its identity's ceiling.
    pub ceiling: ScopeSet,
    /// True once it is no longer declared: it gets no new grants.
    pub removed: bool,
}

/// Everything sync compares declarations with, for one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncState {
    /// The environment.
    pub environment: Environment,
    /// Its version: a sync applies only if it is unchanged (0 before the first).
    pub version: i64,
    /// Its identities, by name, removed ones included.
    pub identities: BTreeMap<String, IdentityRecord>,
    /// Its workloads, removed ones included.
    pub workloads: BTreeMap<WorkloadId, WorkloadRecord>,
}

impl SyncState {
    /// The state of `environment` at `version` from its records.
    pub(crate) fn from_records(
        environment: Environment,
        version: i64,
        identities: Vec<IdentityRecord>,
        workloads: Vec<WorkloadRecord>,
    ) -> Self {
        Self {
            environment,
            version,
            identities: identities
                .into_iter()
                .map(|i| (i.name.clone(), i))
                .collect(),
            workloads: workloads
                .into_iter()
                .map(|w| (w.workload.clone(), w))
                .collect(),
        }
    }
}

/// What a sync writes, computed by [`crate::sync::plan`]; applied in one
/// transaction or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncChanges {
    /// The environment.
    pub environment: Environment,
    /// The version the changes were planned against.
    pub expected_version: i64,
    /// Identities to create, with their ceilings.
    pub create_identities: Vec<(String, ScopeSet)>,
    /// Existing identities to set live with this ceiling.
    pub update_identities: Vec<(String, ScopeSet)>,
    /// Identities no declared workload uses any more.
    pub remove_identities: Vec<String>,
    /// Workloads to (re)link to an identity and set live.
    pub link_workloads: Vec<(WorkloadId, String)>,
    /// Workloads no longer declared.
    pub remove_workloads: Vec<WorkloadId>,
    /// New workload credentials (by hash) and the identity each authenticates.
    pub new_credentials: Vec<(String, SecretHash)>,
}

impl SyncChanges {
    /// True when applying would write nothing.
    pub fn is_empty(&self) -> bool {
        self.create_identities.is_empty()
            && self.update_identities.is_empty()
            && self.remove_identities.is_empty()
            && self.link_workloads.is_empty()
            && self.remove_workloads.is_empty()
            && self.new_credentials.is_empty()
    }
}

/// Whether [`Store::apply_sync`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum SyncApplied {
    /// Written; the environment's version moved on.
    Applied,
    /// Another sync changed the environment since it was read: nothing was
    /// written; plan again.
    Conflict,
}

/// Who a workload credential belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialOwner {
    /// The environment of its identity.
    pub environment: Environment,
    /// The identity.
    pub identity: String,
}

/// How a sidecar proved who it is when it asked for a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BootstrapKind {
    /// An `ap_wc_…` workload credential.
    WorkloadCredential,
    /// A Kubernetes projected service-account token.
    KubernetesServiceAccount,
    /// A personal access token, exchanged at `POST /oauth2/token`.
    Pat,
}

impl BootstrapKind {
    /// The name stored and logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WorkloadCredential => "workload_credential",
            Self::KubernetesServiceAccount => "kubernetes",
            Self::Pat => "pat",
        }
    }
}

/// A grant the issuer signed (its id is the grant's `jti`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    /// The grant id (`jti`).
    pub jti: String,
    /// The environment.
    pub environment: Environment,
    /// Who it is for: a workload, or `pat:<name>` for the grant under a
    /// token exchanged from a PAT (stored in the `workload` column).
    pub subject: Subject,
    /// The identity that asked (`pat:<name>` for a PAT).
    pub identity: String,
    /// How it proved it.
    pub bootstrap: BootstrapKind,
    /// The `kid` of the root key that signed it.
    pub root_kid: String,
    /// Issued at (unix seconds).
    pub issued_at: u64,
    /// Expiry (unix seconds).
    pub expires_at: u64,
}

/// A personal access token as the issuer keeps it: never its value, only
/// what it needs to show, recognise and revoke it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatRecord {
    /// Its name, unique within the issuer.
    pub name: PatName,
    /// The environment it is bound to.
    pub environment: Environment,
    /// Its scopes, wildcards included.
    pub scopes: Scopes,
    /// The current version's id (the value's `jti`); an update issues a new one.
    pub jti: String,
    /// Created at (unix seconds).
    pub created_at: u64,
    /// Last given a new value (unix seconds).
    pub updated_at: u64,
    /// Expiry of the current version (unix seconds).
    pub expires_at: u64,
    /// Last reported used (unix seconds, at most once a minute), if ever.
    pub last_used_at: Option<u64>,
}

/// Whether [`Store::create_pat`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum PatCreated {
    /// Stored.
    Created,
    /// A PAT of that name exists: nothing was written.
    NameTaken,
}

/// A new version of a PAT, replacing the version `previous_jti`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatUpdate {
    /// The PAT.
    pub name: PatName,
    /// The version it replaces, as read before the new value was signed.
    pub previous_jti: String,
    /// The new version's id.
    pub jti: String,
    /// The new version's scopes.
    pub scopes: Scopes,
    /// The new version's expiry (unix seconds).
    pub expires_at: u64,
}

/// Whether [`Store::update_pat`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum PatUpdated {
    /// The new version is current; the previous one is on the revocation feed.
    Updated,
    /// The PAT is gone, or its current version is no longer `previous_jti`
    /// (a concurrent update): nothing was written.
    Changed,
}

/// What a revocation entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum RevocationKind {
    /// A PAT version, by its `jti` (and so every token exchanged from it).
    Pat,
    /// A grant, by its `jti` (and so every token minted under it).
    Grant,
}

impl RevocationKind {
    /// The name stored and published.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pat => "pat",
            Self::Grant => "grant",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "pat" => Some(Self::Pat),
            "grant" => Some(Self::Grant),
            _ => None,
        }
    }
}

/// One entry of the revocation feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationRecord {
    /// Its place in the feed (the cursor).
    pub seq: u64,
    /// What it names.
    pub kind: RevocationKind,
    /// The revoked PAT version's or grant's `jti`.
    pub id: String,
    /// When what it names expires anyway (unix seconds): after that the
    /// entry leaves the feed.
    pub expires_at: u64,
}

/// A read of the revocation feed: [`Store::revocations_after`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationsAfter {
    /// The entries after the cursor that are unexpired, in `seq` order.
    pub entries: Vec<RevocationRecord>,
    /// The highest `seq` in the store, expired entries included (0 when
    /// there has never been one), read in the same snapshot.
    pub newest: u64,
}

/// The issuer's state. See the module doc for the rules implementations
/// follow; the credential lifecycle's methods are in [`CredentialStore`].
pub trait Store: CredentialStore + Send + Sync + std::fmt::Debug {
    /// Records a node's root public key as active; recording a key already
    /// known changes nothing.
    fn record_root_key<'a>(&'a self, key: &'a RootKeyRecord) -> StoreFuture<'a, ()>;

    /// Every root public key whose grants may still be valid at `now`
    /// (active and retiring), from every node: the JWKS.
    fn live_root_keys(&self, now: u64) -> StoreFuture<'_, Vec<RootKeyRecord>>;

    /// Adds an admin token (by hash); adding one already known changes
    /// nothing, in particular it does not un-revoke it.
    fn add_admin_token<'a>(&'a self, hash: &'a SecretHash, now: u64) -> StoreFuture<'a, ()>;

    /// The hashes of every admin token valid at `now`, for a constant-time
    /// comparison by the caller.
    fn admin_token_hashes(&self, now: u64) -> StoreFuture<'_, Vec<SecretHash>>;

    /// An environment's identities and workloads, for sync to plan against.
    fn sync_state<'a>(&'a self, environment: &'a Environment) -> StoreFuture<'a, SyncState>;

    /// Applies a planned sync in one transaction, if the environment is
    /// still at `changes.expected_version`.
    fn apply_sync<'a>(&'a self, changes: &'a SyncChanges, now: u64)
    -> StoreFuture<'a, SyncApplied>;

    /// The owner of a workload credential valid at `now` (not revoked), by
    /// hash.
    fn credential_owner<'a>(
        &'a self,
        hash: &'a SecretHash,
        now: u64,
    ) -> StoreFuture<'a, Option<CredentialOwner>>;

    /// A workload of an environment, removed or not, with its identity's
    /// ceiling.
    fn workload<'a>(
        &'a self,
        environment: &'a Environment,
        workload: &'a WorkloadId,
    ) -> StoreFuture<'a, Option<WorkloadRecord>>;

    /// Records a grant issued (for the log of grants and for
    /// [`Store::revoke_workload_grants`]).
    fn record_grant<'a>(&'a self, grant: &'a GrantRecord) -> StoreFuture<'a, ()>;

    /// Stores a new PAT, unless one of that name exists.
    fn create_pat<'a>(&'a self, pat: &'a PatRecord) -> StoreFuture<'a, PatCreated>;

    /// A PAT by name.
    fn pat<'a>(&'a self, name: &'a PatName) -> StoreFuture<'a, Option<PatRecord>>;

    /// Every PAT, by name.
    fn pats(&self) -> StoreFuture<'_, Vec<PatRecord>>;

    /// The PAT whose *current* version is `jti` (none for a version
    /// replaced by an update, or deleted).
    fn pat_by_jti<'a>(&'a self, jti: &'a str) -> StoreFuture<'a, Option<PatRecord>>;

    /// Makes `update` the PAT's current version (`updated_at` = `now`) and
    /// appends the version it replaces to the revocation feed (expiring
    /// with that version), in one transaction, only if the current version
    /// is still `update.previous_jti`.
    fn update_pat<'a>(&'a self, update: &'a PatUpdate, now: u64) -> StoreFuture<'a, PatUpdated>;

    /// Deletes a PAT and appends its current version to the revocation
    /// feed, in one transaction; returns what was deleted (none: no such PAT).
    fn delete_pat<'a>(&'a self, name: &'a PatName, now: u64) -> StoreFuture<'a, Option<PatRecord>>;

    /// Sets `last_used_at` = `now` on the PATs whose current version is one
    /// of `jtis`, unless it was set less than a minute ago (the store is
    /// written at most once a minute per PAT, however often it is used).
    /// Unknown ids are ignored.
    fn touch_pats<'a>(&'a self, jtis: &'a [String], now: u64) -> StoreFuture<'a, ()>;

    /// The revocation feed after `after` (0: from the start): entries with
    /// a greater `seq`, unexpired at `now`, in `seq` order, and the newest
    /// `seq`, in one consistent read.
    ///
    /// The cursor must never pass an entry that is not visible yet: an
    /// entry committed later with a *smaller* `seq` would never be
    /// delivered. SQLite has one writer at a time, so `seq` order is commit
    /// order; a backend whose sequence can commit out of order (PostgreSQL)
    /// must serialise the transactions that append to the feed (e.g. a
    /// transaction-scoped advisory lock taken first).
    fn revocations_after(&self, after: u64, now: u64) -> StoreFuture<'_, RevocationsAfter>;

    /// Appends every grant of the workload that is still unexpired at `now`
    /// and not yet revoked to the revocation feed, in one transaction;
    /// returns how many it appended.
    fn revoke_workload_grants<'a>(
        &'a self,
        environment: &'a Environment,
        workload: &'a WorkloadId,
        now: u64,
    ) -> StoreFuture<'a, u64>;

    /// Deletes the revocation entries that expired by `now` (they name
    /// nothing that could still verify), keeping the newest entry so that
    /// the newest `seq` never goes back; returns how many it deleted.
    fn prune_revocations(&self, now: u64) -> StoreFuture<'_, u64>;
}
