//! The store's half of the credential lifecycle (DESIGN §10): credentials,
//! their versions, and the tasks that create and delete versions.
//!
//! A separate trait, [`CredentialStore`], that every [`super::Store`] also
//! implements: the lifecycle's methods live beside each other, and a new
//! backend implements them in one place. As for the rest of the store,
//! decisions are the issuer's ([`crate::tasks::worker`]); an implementation
//! stores and loads, and fences every write a worker makes by its
//! [`Claim`], so a worker whose task was cancelled or taken over writes
//! nothing.

use authproxy_core::Environment;

use super::{RootKeyRecord, StoreFuture};
use crate::secret::SecretHash;
use crate::tasks::model::{CredentialKind, TaskError, TaskStatus, TaskType, Trigger, VersionTimes};

/// A credential as stored, with its versions (oldest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRecord {
    /// `rk.<node>`, `wc.<environment>.<identity>` or `pat.<name>`.
    pub id: String,
    /// What it is.
    pub kind: CredentialKind,
    /// The node id, the identity, or the PAT's name.
    pub name: String,
    /// Root keys: the node that holds the private keys.
    pub node: Option<String>,
    /// Workload credentials and PATs: their environment.
    pub environment: Option<Environment>,
    /// Registered at (unix seconds).
    pub created_at: u64,
    /// Its versions, by number.
    pub versions: Vec<VersionRecord>,
}

/// One version of a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    /// 1, 2, … within the credential.
    pub version: u32,
    /// Root keys: the kid.
    pub kid: Option<String>,
    /// Workload credentials: the hash of the value.
    pub secret_hash: Option<SecretHash>,
    /// PATs: the version's jti.
    pub pat_jti: Option<String>,
    /// Created (a root key: published) at.
    pub created_at: u64,
    /// The times its state is derived from.
    pub times: VersionTimes,
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    /// Its id.
    pub id: String,
    /// The credential it works on.
    pub credential_id: String,
    /// Create or delete.
    pub task_type: TaskType,
    /// Where it is.
    pub status: TaskStatus,
    /// Why it exists.
    pub trigger: Trigger,
    /// The version it created or deletes (none: not known yet, or all).
    pub version: Option<u32>,
    /// Only this node may run it (root keys: where the private keys are).
    pub node: Option<String>,
    /// When it is due: first run, or next attempt.
    pub run_at: u64,
    /// Attempts started so far.
    pub attempts: u32,
    /// The worker holding it while processing.
    pub claimed_by: Option<String>,
    /// Until when that worker's claim holds.
    pub lease_until: Option<u64>,
    /// Why attempts failed, oldest first.
    pub errors: Vec<TaskError>,
    /// Created at.
    pub created_at: u64,
    /// Last changed at.
    pub updated_at: u64,
}

impl TaskRecord {
    /// A new queued task, due at `run_at`.
    pub fn queued(
        credential_id: &str,
        task_type: TaskType,
        trigger: Trigger,
        node: Option<&str>,
        run_at: u64,
        now: u64,
    ) -> Self {
        Self {
            id: authproxy_core::keys::random_id(),
            credential_id: credential_id.to_owned(),
            task_type,
            status: TaskStatus::Queued,
            trigger,
            version: None,
            node: node.map(str::to_owned),
            run_at,
            attempts: 0,
            claimed_by: None,
            lease_until: None,
            errors: Vec::new(),
            created_at: now,
            updated_at: now,
        }
    }

    /// The fence a worker holding this task writes with.
    pub fn claim(&self) -> Claim {
        Claim {
            task_id: self.id.clone(),
            claimed_by: self.claimed_by.clone().unwrap_or_default(),
            attempts: self.attempts,
        }
    }
}

/// What fences a worker's writes: the task, who claimed it, and which
/// attempt. A write under a stale claim (the task was cancelled, or its
/// lease expired and another worker took it) changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The task.
    pub task_id: String,
    /// The worker (`<node>/<random>`).
    pub claimed_by: String,
    /// The attempt the claim started.
    pub attempts: u32,
}

/// A credential to register with the versions and tasks it starts with.
/// Registering an id already known writes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRegistration {
    /// The credential (its `versions` are written too).
    pub credential: CredentialRecord,
    /// Its first tasks.
    pub tasks: Vec<TaskRecord>,
}

/// A change to a version's times (`Some` fields are written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionUpdate {
    /// The credential.
    pub credential_id: String,
    /// The version.
    pub version: u32,
    /// New `retires_at`.
    pub retires_at: Option<u64>,
    /// New `expires_at`.
    pub expires_at: Option<u64>,
    /// New `removed_at`.
    pub removed_at: Option<u64>,
}

/// A workload credential value (by hash) to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWorkloadCredential {
    /// Its environment.
    pub environment: Environment,
    /// The identity it authenticates.
    pub identity: String,
    /// The hash of the value.
    pub hash: SecretHash,
    /// When it stops authenticating, if it has an end.
    pub expires_at: Option<u64>,
}

/// Everything one step of a worker writes, in one transaction, fenced by
/// its [`Claim`]: the task's new status and what the step did.
#[derive(Debug, Clone)]
pub struct TaskChanges {
    /// The task's new status.
    pub status: TaskStatus,
    /// When it is due next (for a retry).
    pub run_at: u64,
    /// Its errors, the new one(s) included.
    pub errors: Vec<TaskError>,
    /// The version it created or deletes.
    pub version: Option<u32>,
    /// Versions to add.
    pub new_versions: Vec<(String, VersionRecord)>,
    /// Versions whose times change.
    pub version_updates: Vec<VersionUpdate>,
    /// Root public keys to publish (recorded as `root_keys` rows).
    pub publish_root_keys: Vec<RootKeyRecord>,
    /// Root keys (by kid) to take out of the JWKS.
    pub unpublish_root_keys: Vec<String>,
    /// Workload credential values to store.
    pub new_workload_credentials: Vec<NewWorkloadCredential>,
    /// Workload credential values (by hash) whose validity ends then.
    pub expire_workload_credentials: Vec<(SecretHash, u64)>,
    /// Workload credential values (by hash) to revoke now.
    pub revoke_workload_credentials: Vec<SecretHash>,
    /// Tasks to add (the next rotation, a version's expiry).
    pub new_tasks: Vec<TaskRecord>,
    /// Queued tasks (by id) to move to another time.
    pub reschedule: Vec<(String, u64)>,
}

impl TaskChanges {
    /// Changes nothing but the task's status, due time and errors.
    pub fn status(status: TaskStatus, run_at: u64, errors: Vec<TaskError>) -> Self {
        Self {
            status,
            run_at,
            errors,
            version: None,
            new_versions: Vec::new(),
            version_updates: Vec::new(),
            publish_root_keys: Vec::new(),
            unpublish_root_keys: Vec::new(),
            new_workload_credentials: Vec::new(),
            expire_workload_credentials: Vec::new(),
            revoke_workload_credentials: Vec::new(),
            new_tasks: Vec::new(),
            reschedule: Vec::new(),
        }
    }
}

/// A stored workload credential value that no credential version names
/// yet (made by sync, or before this version of the issuer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnregisteredWorkloadCredential {
    /// Its environment.
    pub environment: Environment,
    /// The identity it authenticates.
    pub identity: String,
    /// Its hash.
    pub hash: SecretHash,
    /// Created at.
    pub created_at: u64,
    /// Revoked already.
    pub revoked: bool,
}

/// The store's half of the credential lifecycle (see the module doc).
pub trait CredentialStore {
    /// Writes a credential, its versions and its first tasks in one
    /// transaction, unless a credential of that id exists; true if written.
    fn register_credential<'a>(
        &'a self,
        registration: &'a CredentialRegistration,
    ) -> StoreFuture<'a, bool>;

    /// Every credential with its versions, by id.
    fn credentials(&self) -> StoreFuture<'_, Vec<CredentialRecord>>;

    /// One credential with its versions.
    fn credential<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<CredentialRecord>>;

    /// Workload credential values that no version names yet.
    fn unregistered_workload_credentials(
        &self,
    ) -> StoreFuture<'_, Vec<UnregisteredWorkloadCredential>>;

    /// Adds a task.
    fn insert_task<'a>(&'a self, task: &'a TaskRecord) -> StoreFuture<'a, ()>;

    /// The tasks of a credential, oldest first.
    fn tasks<'a>(&'a self, credential_id: &'a str) -> StoreFuture<'a, Vec<TaskRecord>>;

    /// One task.
    fn task<'a>(&'a self, task_id: &'a str) -> StoreFuture<'a, Option<TaskRecord>>;

    /// Claims the next task due at `now` that `node` may run — queued with
    /// `run_at <= now`, or processing under a lease expired by `now` —
    /// skipping credentials that have a task processing under a live lease
    /// (one task at a time per credential). Sets it processing for
    /// `claimed_by` until `lease_until` and counts the attempt, atomically:
    /// two workers never claim the same task. (PostgreSQL: the sub-select
    /// `FOR UPDATE SKIP LOCKED`.)
    fn claim_task<'a>(
        &'a self,
        node: &'a str,
        claimed_by: &'a str,
        now: u64,
        lease_until: u64,
    ) -> StoreFuture<'a, Option<TaskRecord>>;

    /// Applies a worker's step in one transaction if `claim` still holds
    /// (the task is processing, claimed by `claim.claimed_by` at attempt
    /// `claim.attempts`); true if written, false if the claim is stale.
    fn apply_task<'a>(
        &'a self,
        claim: &'a Claim,
        changes: &'a TaskChanges,
        now: u64,
    ) -> StoreFuture<'a, bool>;

    /// Cancels a task if it is still as read (`expected` status, queued or
    /// processing, at attempt `attempts`): sets it failed with `errors`
    /// (those read plus the cancellation). The cancelled task, or `None`
    /// when it changed meanwhile (or does not exist): read it again.
    fn cancel_task<'a>(
        &'a self,
        task_id: &'a str,
        expected: TaskStatus,
        attempts: u32,
        errors: &'a [TaskError],
        now: u64,
    ) -> StoreFuture<'a, Option<TaskRecord>>;

    /// The latest expiry of the grants a root key signed, if it signed any.
    fn last_grant_expiry<'a>(&'a self, kid: &'a str) -> StoreFuture<'a, Option<u64>>;
}
