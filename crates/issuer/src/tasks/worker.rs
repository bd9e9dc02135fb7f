//! The worker: claims the tasks that are due and runs them. One runs in
//! every `issuer serve` (a tokio task, [`Worker::run`]); [`Worker::step`]
//! takes `now`, so tests drive every schedule without waiting.
//!
//! What each task does:
//!
//! | credential | create | delete |
//! |---|---|---|
//! | root key | a new key in `state_dir/root-keys/<kid>.pem` (0600), published at once, **active `keys.publish_ahead` later**; the previous version retires then; its removal and the next rotation are queued | once the last grant the key signed has expired (+ the layers' leeway; deferred until then, whatever its `run_at`): out of the JWKS, private key deleted |
//! | workload credential | a new value, valid at once; handed to the provider; then the previous one ends after `credentials.grace`; its expiry and the next rotation are queued | the value is revoked (it already stopped authenticating at its `expires_at`); the provider is told |
//! | PAT | — (`pat update`) | the version is marked retired (the PAT store revokes) |
//!
//! A failed attempt goes back to the queue with its error, `retry_base`
//! doubling up to `retry_max`, until `max_attempts`; then the task fails.
//! Every write is fenced by the task's claim: a task cancelled while it
//! runs writes nothing more, and what the attempt began is undone.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use authproxy_core::keys::random_id;
use authproxy_core::root_key::{create_root_key_version, remove_root_key_version};

use crate::config::ProviderConfig;
use crate::error::IssuerError;
use crate::issuer::Issuer;
use crate::issuer::credentials::next_rotation;
use crate::secret::{Secret, WORKLOAD_CREDENTIAL_PREFIX};
use crate::store::{
    CredentialRecord, NewWorkloadCredential, RootKeyRecord, RootKeyState, TaskChanges, TaskRecord,
    VersionRecord, VersionUpdate,
};
use crate::tasks::model::{
    CredentialKind, Event, TaskError, TaskStatus, TaskType, Trigger, VersionTimes, retry_delay,
    transition,
};
use crate::tasks::provider::{self, Action, Delivery, Outcome};

/// How a worker runs; the defaults suit production, tests shorten them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerOptions {
    /// How often [`Worker::run`] looks for due tasks.
    pub tick: Duration,
    /// Attempts before a task fails for good.
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubles each time.
    pub retry_base: Duration,
    /// Longest wait between attempts.
    pub retry_max: Duration,
    /// How often a running provider's task is checked for cancellation.
    pub cancel_poll: Duration,
    /// Added to the last grant's expiry before a retired root key leaves
    /// the JWKS: the clock skew layers tolerate on a grant's `exp`.
    pub removal_leeway: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            max_attempts: 5,
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
            cancel_poll: Duration::from_secs(1),
            removal_leeway: Duration::from_secs(30),
        }
    }
}

impl WorkerOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Most tasks one [`Worker::step`] runs: a step always ends.
const MAX_TASKS_PER_STEP: usize = 64;

/// What an attempt came to.
#[derive(Debug)]
enum Attempt {
    /// Done: these changes, with the task succeeded.
    Done(TaskChanges),
    /// Failed; retried if attempts remain. Changes undo what it began.
    Failed(TaskError, TaskChanges),
    /// Failed; not worth retrying (a missing provider, a PAT rotation).
    Fatal(TaskError),
    /// Not due yet after all (a root key whose grants are still live):
    /// queued again for then, no error.
    NotYet(u64),
    /// Cancelled while it ran: nothing more to write.
    Cancelled,
}

/// The worker of one node.
#[derive(Debug, Clone)]
pub struct Worker {
    issuer: Arc<Issuer>,
    options: WorkerOptions,
    /// `<node>/<random>`: whose claim a task is under.
    id: String,
}

impl Worker {
    /// A worker for `issuer`'s node.
    pub fn new(issuer: Arc<Issuer>, options: WorkerOptions) -> Self {
        let id = format!("{}/{}", issuer.node(), random_id());
        Self {
            issuer,
            options,
            id,
        }
    }

    /// Runs [`Self::step`] every `tick` until `shutdown` completes. A
    /// failing step is logged and tried again at the next tick.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.step(authproxy_core::clock::now()).await {
                tracing::error!(error = %e, "credential task worker step failed");
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(self.options.tick) => {}
            }
        }
    }

    /// Claims and runs every task due at `now` that this node may run;
    /// returns them as they ended up.
    pub async fn step(&self, now: u64) -> Result<Vec<TaskRecord>, IssuerError> {
        let mut ran = Vec::new();
        for _ in 0..MAX_TASKS_PER_STEP {
            let Some(task) = self
                .issuer
                .store()
                .claim_task(
                    self.issuer.node(),
                    &self.id,
                    now,
                    now + self.lease().as_secs(),
                )
                .await?
            else {
                break;
            };
            tracing::debug!(task = %task.id, credential = %task.credential_id, r#type = %task.task_type, trigger = %task.trigger, attempt = task.attempts, "task claimed");
            self.run_task(&task, now).await?;
            if let Some(t) = self.issuer.store().task(&task.id).await? {
                ran.push(t);
            }
        }
        Ok(ran)
    }

    /// How long a claim holds: longer than any provider may run.
    fn lease(&self) -> Duration {
        let provider = match &self.issuer.config().credentials.provider {
            ProviderConfig::Command { timeout, .. } => *timeout,
            _ => Duration::ZERO,
        };
        provider + Duration::from_secs(300)
    }

    async fn run_task(&self, task: &TaskRecord, now: u64) -> Result<(), IssuerError> {
        let store = self.issuer.store();
        let attempt = match store.credential(&task.credential_id).await? {
            None => Attempt::Fatal(TaskError::new(
                "unknown_credential",
                format!("credential `{}` does not exist", task.credential_id),
            )),
            Some(record) => match (record.kind, task.task_type) {
                (CredentialKind::RootKey, TaskType::CreateCredentials) => {
                    self.create_root_key(task, &record, now).await?
                }
                (CredentialKind::RootKey, TaskType::DeleteCredentials) => {
                    self.remove_root_key(task, &record, now).await?
                }
                (CredentialKind::WorkloadCredential, TaskType::CreateCredentials) => {
                    self.rotate_workload_credential(task, &record, now).await?
                }
                (
                    CredentialKind::WorkloadCredential | CredentialKind::Pat,
                    TaskType::DeleteCredentials,
                ) => self.end_versions(task, &record, now).await?,
                (CredentialKind::Pat, TaskType::CreateCredentials) => {
                    Attempt::Fatal(TaskError::new(
                        "not_supported",
                        "a PAT is given a new value with `authproxy pat update`",
                    ))
                }
            },
        };
        // What a root-key attempt did on disk, to keep or undo below.
        let (created, removed) = match &attempt {
            Attempt::Done(c) => (
                c.publish_root_keys
                    .first()
                    .map(|k| k.public_key.thumbprint().to_owned()),
                c.unpublish_root_keys.first().cloned(),
            ),
            _ => (None, None),
        };
        let event = self.finish(task, attempt, now).await?;
        let succeeded = event == Some(Event::Succeed);
        if let Some(kid) = created.filter(|_| !succeeded) {
            // Written to disk, never recorded: it must never sign.
            self.delete_root_key_file(&kid).await?;
        }
        if let Some(kid) = removed.filter(|_| succeeded) {
            self.delete_root_key_file(&kid).await?;
        }
        if task.credential_id
            == crate::issuer::credentials::root_key_credential_id(self.issuer.node())
            && let Some(record) = self.issuer.store().credential(&task.credential_id).await?
        {
            self.issuer.root_keys().sync(&record);
        }
        Ok(())
    }

    /// Writes the attempt's outcome through the state machine; the event
    /// written, or `None` if nothing was (cancelled, or taken over).
    async fn finish(
        &self,
        task: &TaskRecord,
        attempt: Attempt,
        now: u64,
    ) -> Result<Option<Event>, IssuerError> {
        let claim = task.claim();
        let next = |event| transition(task.task_type, TaskStatus::Processing, event);
        let (changes, event, error) = match attempt {
            Attempt::Cancelled => return Ok(None),
            Attempt::Done(mut changes) => {
                changes.status = next(Event::Succeed).map_err(internal)?;
                changes.run_at = task.run_at;
                changes.errors = task.errors.clone();
                (changes, Event::Succeed, None)
            }
            Attempt::NotYet(at) => {
                let changes = TaskChanges::status(
                    next(Event::Retry).map_err(internal)?,
                    at,
                    task.errors.clone(),
                );
                (changes, Event::Retry, None)
            }
            Attempt::Failed(error, mut changes) => {
                let mut errors = task.errors.clone();
                errors.push(error.clone());
                let event = if task.attempts >= self.options.max_attempts {
                    Event::Fail
                } else {
                    Event::Retry
                };
                let delay = retry_delay(
                    task.attempts,
                    self.options.retry_base,
                    self.options.retry_max,
                );
                changes.status = next(event).map_err(internal)?;
                changes.run_at = now + delay.as_secs();
                changes.errors = errors;
                (changes, event, Some(error))
            }
            Attempt::Fatal(error) => {
                let mut errors = task.errors.clone();
                errors.push(error.clone());
                let changes =
                    TaskChanges::status(next(Event::Fail).map_err(internal)?, task.run_at, errors);
                (changes, Event::Fail, Some(error))
            }
        };
        let written = self
            .issuer
            .store()
            .apply_task(&claim, &changes, now)
            .await?;
        if !written {
            tracing::info!(task = %task.id, "the task was cancelled or taken over while it ran; its outcome is dropped");
            return Ok(None);
        }
        if event == Event::Fail && task.trigger == Trigger::AutomaticRotation {
            self.keep_schedule(task, now).await?;
        }
        match (&error, event) {
            (Some(e), Event::Retry) => tracing::warn!(
                task = %task.id, credential = %task.credential_id, attempt = task.attempts,
                code = %e.code, error = %e.description, retry_at = %crate::issuer::rfc3339(changes.run_at),
                "credential task attempt failed; it will be retried"
            ),
            (Some(e), _) => tracing::error!(
                task = %task.id, credential = %task.credential_id, attempts = task.attempts,
                code = %e.code, error = %e.description,
                "credential task failed"
            ),
            (None, Event::Retry) => {
                tracing::debug!(task = %task.id, run_at = changes.run_at, "task not due yet; queued again")
            }
            (None, _) => tracing::info!(
                task = %task.id, credential = %task.credential_id, r#type = %task.task_type,
                trigger = %task.trigger, status = %changes.status, version = ?changes.version,
                "credential task done"
            ),
        }
        Ok(Some(event))
    }

    /// A failed automatic rotation does not end the schedule: the next one
    /// is queued one period later (an operator can rotate by hand sooner).
    async fn keep_schedule(&self, task: &TaskRecord, now: u64) -> Result<(), IssuerError> {
        let Some(record) = self.issuer.store().credential(&task.credential_id).await? else {
            return Ok(());
        };
        let config = self.issuer.config();
        let period = match record.kind {
            CredentialKind::RootKey => config.keys.rotate_every,
            _ => config.credentials.rotate_every,
        };
        let next = TaskRecord::queued(
            &task.credential_id,
            TaskType::CreateCredentials,
            Trigger::AutomaticRotation,
            task.node.as_deref(),
            now.saturating_add(period.as_secs()),
            now,
        );
        self.issuer.store().insert_task(&next).await?;
        Ok(())
    }

    /// Queues the credential's next automatic rotation at `at`: moves the
    /// queued one if there is one (a manual rotation resets the clock),
    /// else adds one.
    async fn schedule_next(
        &self,
        task: &TaskRecord,
        record: &CredentialRecord,
        at: Option<u64>,
        changes: &mut TaskChanges,
        now: u64,
    ) -> Result<(), IssuerError> {
        let Some(at) = at else { return Ok(()) };
        let queued = self
            .issuer
            .store()
            .tasks(&record.id)
            .await?
            .into_iter()
            .find(|t| {
                t.id != task.id
                    && t.status == TaskStatus::Queued
                    && t.trigger == Trigger::AutomaticRotation
            });
        match queued {
            Some(t) => changes.reschedule.push((t.id, at)),
            None => changes.new_tasks.push(TaskRecord::queued(
                &record.id,
                TaskType::CreateCredentials,
                Trigger::AutomaticRotation,
                record.node.as_deref(),
                at,
                now,
            )),
        }
        Ok(())
    }

    fn next_version(record: &CredentialRecord) -> u32 {
        record.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1
    }

    /// A new root key: written to `state_dir`, published now, active
    /// `publish_ahead` later — when every layer refreshing its JWKS at
    /// least that often has it — and the previous version retires at
    /// that same instant, so exactly one version signs at any time.
    async fn create_root_key(
        &self,
        task: &TaskRecord,
        record: &CredentialRecord,
        now: u64,
    ) -> Result<Attempt, IssuerError> {
        let config = self.issuer.config();
        let state_dir = config.issuer.state_dir.clone();
        let key = match tokio::task::spawn_blocking(move || create_root_key_version(&state_dir))
            .await
            .map_err(|e| IssuerError::Internal(e.to_string()))?
        {
            Ok(k) => k,
            Err(e) => {
                return Ok(Attempt::Failed(
                    TaskError::new("key_creation_failed", e.to_string()),
                    TaskChanges::status(TaskStatus::Queued, now, Vec::new()),
                ));
            }
        };
        let kid = key.public().thumbprint().to_owned();
        let public_key = key.public().clone();
        let activates_at = now + config.keys.publish_ahead.as_secs();
        let n = Self::next_version(record);
        let mut changes = TaskChanges::status(TaskStatus::Processing, now, Vec::new());
        changes.version = Some(n);
        changes.new_versions.push((
            record.id.clone(),
            VersionRecord {
                version: n,
                kid: Some(kid.clone()),
                secret_hash: None,
                pat_jti: None,
                created_at: now,
                times: VersionTimes {
                    activates_at,
                    ..VersionTimes::default()
                },
            },
        ));
        changes.publish_root_keys.push(RootKeyRecord {
            node: self.issuer.node().to_owned(),
            public_key,
            state: RootKeyState::Active,
            created_at: now,
        });
        for v in record
            .versions
            .iter()
            .filter(|v| v.times.removed_at.is_none() && v.times.retires_at.is_none())
        {
            changes.version_updates.push(VersionUpdate {
                credential_id: record.id.clone(),
                version: v.version,
                retires_at: Some(activates_at),
                expires_at: None,
                removed_at: None,
            });
            // Its grants live at most `grant_ttl` past its retirement;
            // the task checks the store again before it removes anything.
            let mut removal = TaskRecord::queued(
                &record.id,
                TaskType::DeleteCredentials,
                Trigger::VersionExpiration,
                record.node.as_deref(),
                activates_at
                    + config.issuer.grant_ttl.as_secs()
                    + self.options.removal_leeway.as_secs(),
                now,
            );
            removal.version = Some(v.version);
            changes.new_tasks.push(removal);
        }
        let next = next_rotation(config, CredentialKind::RootKey, activates_at);
        self.schedule_next(task, record, next, &mut changes, now)
            .await?;
        self.issuer.root_keys().add(key);
        Ok(Attempt::Done(changes))
    }

    /// Removes a retired root key from the JWKS once no grant it signed
    /// can still verify: its last grant's expiry (from the store, so a
    /// changed `grant_ttl` cannot fool it) plus the layers' leeway, and
    /// never before its retirement + `grant_ttl`. Earlier, the task waits.
    async fn remove_root_key(
        &self,
        task: &TaskRecord,
        record: &CredentialRecord,
        now: u64,
    ) -> Result<Attempt, IssuerError> {
        let Some(v) = task
            .version
            .and_then(|n| record.versions.iter().find(|v| v.version == n))
        else {
            return Ok(Attempt::Fatal(TaskError::new(
                "unknown_version",
                "root keys are removed one version at a time",
            )));
        };
        let Some(kid) = v.kid.clone() else {
            return Ok(Attempt::Fatal(TaskError::new("unknown_version", "no kid")));
        };
        if v.times.removed_at.is_some() {
            return Ok(Attempt::Done(TaskChanges::status(
                TaskStatus::Processing,
                now,
                Vec::new(),
            )));
        }
        let Some(retires_at) = v.times.retires_at else {
            return Ok(Attempt::Fatal(TaskError::new(
                "version_active",
                "this version has no successor: it still signs",
            )));
        };
        let config = self.issuer.config();
        let leeway = self.options.removal_leeway.as_secs();
        let last_grant = self
            .issuer
            .store()
            .last_grant_expiry(&kid)
            .await?
            .unwrap_or(0);
        let due = last_grant
            .max(retires_at + config.issuer.grant_ttl.as_secs())
            .saturating_add(leeway);
        if now < due {
            return Ok(Attempt::NotYet(due));
        }
        let mut changes = TaskChanges::status(TaskStatus::Processing, now, Vec::new());
        changes.version = Some(v.version);
        changes.version_updates.push(VersionUpdate {
            credential_id: record.id.clone(),
            version: v.version,
            retires_at: None,
            expires_at: Some(now),
            removed_at: Some(now),
        });
        changes.unpublish_root_keys.push(kid);
        Ok(Attempt::Done(changes))
    }

    /// Ends versions of a workload credential or PAT: the one the task
    /// names (expiry), or all of them (deletion). A workload credential's
    /// value is revoked and the provider told.
    async fn end_versions(
        &self,
        task: &TaskRecord,
        record: &CredentialRecord,
        now: u64,
    ) -> Result<Attempt, IssuerError> {
        let targets: Vec<&VersionRecord> = record
            .versions
            .iter()
            .filter(|v| v.times.removed_at.is_none())
            .filter(|v| task.version.is_none_or(|n| n == v.version))
            .collect();
        if task.trigger == Trigger::VersionExpiration
            && let Some(later) = targets
                .iter()
                .filter_map(|v| v.times.expires_at)
                .filter(|e| *e > now)
                .max()
        {
            return Ok(Attempt::NotYet(later));
        }
        let mut changes = TaskChanges::status(TaskStatus::Processing, now, Vec::new());
        changes.version = task.version;
        for v in &targets {
            if record.kind == CredentialKind::WorkloadCredential {
                if let Some(failed) = self.tell_provider(task, record, v.version, now).await? {
                    return Ok(failed);
                }
                if let Some(h) = v.secret_hash {
                    changes.revoke_workload_credentials.push(h);
                }
            }
            changes.version_updates.push(VersionUpdate {
                credential_id: record.id.clone(),
                version: v.version,
                retires_at: v.times.retires_at.is_none().then_some(now),
                expires_at: v.times.expires_at.is_none().then_some(now),
                removed_at: Some(now),
            });
        }
        Ok(Attempt::Done(changes))
    }

    /// Tells an external provider that a version ended; `Some` if that failed.
    async fn tell_provider(
        &self,
        task: &TaskRecord,
        record: &CredentialRecord,
        version: u32,
        _now: u64,
    ) -> Result<Option<Attempt>, IssuerError> {
        let config = &self.issuer.config().credentials.provider;
        if !matches!(config, ProviderConfig::Command { .. }) {
            return Ok(None);
        }
        let environment = record
            .environment
            .as_ref()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let delivery = Delivery {
            task_id: &task.id,
            action: Action::Delete,
            credential_id: &record.id,
            environment: &environment,
            identity: &record.name,
            version,
            value: None,
        };
        Ok(match self.deliver(task, config, &delivery).await {
            Outcome::Delivered => None,
            Outcome::Cancelled => Some(Attempt::Cancelled),
            Outcome::Failed(e) => Some(Attempt::Failed(
                e,
                TaskChanges::status(TaskStatus::Queued, 0, Vec::new()),
            )),
        })
    }

    async fn deliver(
        &self,
        task: &TaskRecord,
        config: &ProviderConfig,
        delivery: &Delivery<'_>,
    ) -> Outcome {
        let store = Arc::clone(self.issuer.store());
        let id = task.id.clone();
        let claimed_by = task.claimed_by.clone();
        let attempts = task.attempts;
        provider::deliver(config, delivery, self.options.cancel_poll, move || {
            let store = Arc::clone(&store);
            let id = id.clone();
            let claimed_by = claimed_by.clone();
            async move {
                // Cancelled, or taken over: either way no longer ours. A
                // store error is not a cancellation.
                match store.task(&id).await {
                    Ok(Some(t)) => {
                        t.status != TaskStatus::Processing
                            || t.claimed_by != claimed_by
                            || t.attempts != attempts
                    }
                    Ok(None) => true,
                    Err(_) => false,
                }
            }
        })
        .await
    }

    /// A new workload credential value: stored (valid at once, so the
    /// platform can use it the moment the provider hands it over), handed
    /// to the provider, and only then is the previous value given its end,
    /// `credentials.grace` from now. If the provider fails, times out or
    /// the task is cancelled, the new value is revoked and the previous one
    /// stays as it was.
    async fn rotate_workload_credential(
        &self,
        task: &TaskRecord,
        record: &CredentialRecord,
        now: u64,
    ) -> Result<Attempt, IssuerError> {
        let config = self.issuer.config();
        if config.credentials.provider == ProviderConfig::None {
            return Ok(Attempt::Fatal(TaskError::new(
                "no_provider",
                "workload credentials cannot be rotated: set `credentials.dir` or `credentials.command`",
            )));
        }
        let Some(environment) = record.environment.clone() else {
            return Ok(Attempt::Fatal(TaskError::new(
                "unknown_credential",
                "no environment",
            )));
        };
        let secret = Secret::generate(WORKLOAD_CREDENTIAL_PREFIX)
            .map_err(|_| IssuerError::Internal("the OS random number generator failed".into()))?;
        let hash = secret.hash();
        let n = Self::next_version(record);
        // 1. The new value, valid from now.
        let mut begin =
            TaskChanges::status(TaskStatus::Processing, task.run_at, task.errors.clone());
        begin.version = Some(n);
        begin.new_workload_credentials.push(NewWorkloadCredential {
            environment: environment.clone(),
            identity: record.name.clone(),
            hash,
            expires_at: None,
        });
        begin.new_versions.push((
            record.id.clone(),
            VersionRecord {
                version: n,
                kid: None,
                secret_hash: Some(hash),
                pat_jti: None,
                created_at: now,
                times: VersionTimes {
                    activates_at: now,
                    ..VersionTimes::default()
                },
            },
        ));
        let claim = task.claim();
        if !self.issuer.store().apply_task(&claim, &begin, now).await? {
            return Ok(Attempt::Cancelled);
        }
        // 2. Handed over.
        let env = environment.to_string();
        let delivery = Delivery {
            task_id: &task.id,
            action: Action::Create,
            credential_id: &record.id,
            environment: &env,
            identity: &record.name,
            version: n,
            value: Some(&secret),
        };
        let undo = |changes: &mut TaskChanges| {
            changes.revoke_workload_credentials.push(hash);
            changes.version_updates.push(VersionUpdate {
                credential_id: record.id.clone(),
                version: n,
                retires_at: Some(now),
                expires_at: Some(now),
                removed_at: Some(now),
            });
        };
        match self
            .deliver(task, &config.credentials.provider, &delivery)
            .await
        {
            Outcome::Delivered => {}
            Outcome::Failed(e) => {
                let mut changes = TaskChanges::status(TaskStatus::Queued, now, Vec::new());
                changes.version = Some(n);
                undo(&mut changes);
                return Ok(Attempt::Failed(e, changes));
            }
            Outcome::Cancelled => {
                // The task is no longer ours: the undo is written without
                // the claim's fence, by the one worker that made the value.
                self.abandon(record, n, hash, now).await?;
                return Ok(Attempt::Cancelled);
            }
        }
        // 3. The previous values end after the grace.
        let grace_end = now + config.credentials.grace.as_secs();
        let mut changes = TaskChanges::status(TaskStatus::Processing, now, Vec::new());
        changes.version = Some(n);
        for v in record
            .versions
            .iter()
            .filter(|v| v.times.removed_at.is_none() && v.times.expires_at.is_none())
        {
            changes.version_updates.push(VersionUpdate {
                credential_id: record.id.clone(),
                version: v.version,
                retires_at: v.times.retires_at.is_none().then_some(now),
                expires_at: Some(grace_end),
                removed_at: None,
            });
            if let Some(h) = v.secret_hash {
                changes.expire_workload_credentials.push((h, grace_end));
            }
            let mut expiry = TaskRecord::queued(
                &record.id,
                TaskType::DeleteCredentials,
                Trigger::VersionExpiration,
                None,
                grace_end,
                now,
            );
            expiry.version = Some(v.version);
            changes.new_tasks.push(expiry);
        }
        let next = next_rotation(config, CredentialKind::WorkloadCredential, now);
        self.schedule_next(task, record, next, &mut changes, now)
            .await?;
        Ok(Attempt::Done(changes))
    }

    /// Revokes a value made by an attempt that was cancelled before its
    /// provider finished (the provider was stopped; the previous value
    /// stays in force).
    async fn abandon(
        &self,
        record: &CredentialRecord,
        version: u32,
        hash: crate::secret::SecretHash,
        now: u64,
    ) -> Result<(), IssuerError> {
        // A one-off fenced write on a task of its own: the cleanup is
        // recorded like every other change.
        let mut cleanup = TaskRecord::queued(
            &record.id,
            TaskType::DeleteCredentials,
            Trigger::CredentialDeletion,
            None,
            now,
            now,
        );
        cleanup.status = TaskStatus::Processing;
        cleanup.claimed_by = Some(self.id.clone());
        cleanup.attempts = 1;
        cleanup.version = Some(version);
        self.issuer.store().insert_task(&cleanup).await?;
        let mut changes = TaskChanges::status(
            transition(
                TaskType::DeleteCredentials,
                TaskStatus::Processing,
                Event::Succeed,
            )
            .map_err(internal)?,
            now,
            Vec::new(),
        );
        changes.version = Some(version);
        changes.revoke_workload_credentials.push(hash);
        changes.version_updates.push(VersionUpdate {
            credential_id: record.id.clone(),
            version,
            retires_at: Some(now),
            expires_at: Some(now),
            removed_at: Some(now),
        });
        self.issuer
            .store()
            .apply_task(&cleanup.claim(), &changes, now)
            .await?;
        tracing::info!(credential = %record.id, version, "the value of a cancelled rotation was revoked");
        Ok(())
    }

    /// Deletes a root key's private key from disk and memory: a removed
    /// version, or one created by an attempt that was not recorded.
    async fn delete_root_key_file(&self, kid: &str) -> Result<(), IssuerError> {
        let state_dir = self.issuer.config().issuer.state_dir.clone();
        let kid_owned = kid.to_owned();
        let removed =
            tokio::task::spawn_blocking(move || remove_root_key_version(&state_dir, &kid_owned))
                .await
                .map_err(|e| IssuerError::Internal(e.to_string()))?;
        if let Err(e) = removed {
            tracing::warn!(kid, error = %e, "cannot delete a root key's private key file");
        }
        self.issuer.root_keys().forget(kid);
        Ok(())
    }
}

fn internal(e: crate::tasks::model::Refused) -> IssuerError {
    IssuerError::Internal(e.to_string())
}
