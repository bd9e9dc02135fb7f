//! The credential lifecycle's use cases (DESIGN §10): credentials with
//! their versions, their tasks, manual rotation and cancellation, and the
//! registration of credentials — this node's root keys at start, workload
//! credentials after a sync, PAT versions through [`Issuer::record_pat_version`].
//! The tasks themselves run in [`crate::tasks::worker`].

use authproxy_core::Environment;
use authproxy_core::root_key::load_or_create_root_key;
use serde::Serialize;

use super::{Issuer, OpenError, rfc3339};
use crate::config::{IssuerConfig, ProviderConfig};
use crate::error::IssuerError;
use crate::root_keys::RootKeyRing;
use crate::store::{
    CredentialRecord, CredentialRegistration, RootKeyRecord, RootKeyState, Store, TaskRecord,
    VersionRecord,
};
use crate::tasks::model::{
    CredentialKind, Event, Refused, TaskError, TaskStatus, TaskType, Trigger, VersionState,
    VersionTimes, transition, version_state,
};

/// The id of a node's root-key credential.
pub fn root_key_credential_id(node: &str) -> String {
    format!("rk.{node}")
}

/// The id of an identity's workload-credential credential. Identity names
/// are workload ids (`[a-z0-9_-]` names joined by `/`), so `.` joins
/// unambiguously and the id needs no escaping in a URL.
pub fn workload_credential_id(environment: &Environment, identity: &str) -> String {
    format!("wc.{environment}.{}", identity.replace('/', "."))
}

/// The id of a PAT's credential.
pub fn pat_credential_id(name: &str) -> String {
    format!("pat.{name}")
}

/// A credential as `GET /v1/credentials` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CredentialView {
    /// Its id.
    pub id: String,
    /// `root_key`, `workload_credential` or `pat`.
    pub kind: CredentialKind,
    /// The node, the identity, or the PAT's name.
    pub name: String,
    /// Root keys: the node holding them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Workload credentials and PATs: the environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Its versions, oldest first.
    pub versions: Vec<VersionView>,
}

/// One version, as shown.
#[derive(Debug, Clone, Serialize)]
pub struct VersionView {
    /// Its number.
    pub version: u32,
    /// `pending`, `active`, `retiring` or `retired`, at the time asked.
    pub state: VersionState,
    /// Created (a root key: published in the JWKS).
    pub created_at: String,
    /// In use from (a root key: signs from).
    pub activates_at: String,
    /// Superseded at (a root key: stops signing; a workload credential:
    /// its grace starts), once known.
    pub retires_at: Option<String>,
    /// Stops being valid at (end of grace, PAT expiry), once known.
    pub expires_at: Option<String>,
    /// Removed (retired) at.
    pub removed_at: Option<String>,
    /// Root keys: the `kid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
}

/// A task as the API shows it (DESIGN §10, plus `version`, `run_at`,
/// `attempts`).
#[derive(Debug, Clone, Serialize)]
pub struct TaskView {
    /// Its id.
    pub id: String,
    /// Its credential.
    pub credential_id: String,
    /// `create_credentials` or `delete_credentials`.
    #[serde(rename = "type")]
    pub task_type: TaskType,
    /// Where it is.
    pub status: TaskStatus,
    /// Why it exists.
    pub trigger: Trigger,
    /// Created at.
    pub created_at: String,
    /// Last changed at.
    pub updated_at: String,
    /// Why attempts failed.
    pub errors: Vec<TaskError>,
    /// The version it created or deletes.
    pub version: Option<u32>,
    /// When it is due (queued), or was last due.
    pub run_at: String,
    /// Attempts started.
    pub attempts: u32,
}

impl From<&TaskRecord> for TaskView {
    fn from(t: &TaskRecord) -> Self {
        Self {
            id: t.id.clone(),
            credential_id: t.credential_id.clone(),
            task_type: t.task_type,
            status: t.status,
            trigger: t.trigger,
            created_at: rfc3339(t.created_at),
            updated_at: rfc3339(t.updated_at),
            errors: t.errors.clone(),
            version: t.version,
            run_at: rfc3339(t.run_at),
            attempts: t.attempts,
        }
    }
}

impl CredentialView {
    /// The view of `c` at `now`.
    pub fn of(c: &CredentialRecord, now: u64) -> Self {
        Self {
            id: c.id.clone(),
            kind: c.kind,
            name: c.name.clone(),
            node: c.node.clone(),
            environment: c.environment.as_ref().map(ToString::to_string),
            versions: c
                .versions
                .iter()
                .map(|v| VersionView {
                    version: v.version,
                    state: version_state(&v.times, now),
                    created_at: rfc3339(v.created_at),
                    activates_at: rfc3339(v.times.activates_at),
                    retires_at: v.times.retires_at.map(rfc3339),
                    expires_at: v.times.expires_at.map(rfc3339),
                    removed_at: v.times.removed_at.map(rfc3339),
                    kid: v.kid.clone(),
                })
                .collect(),
        }
    }
}

/// A task that is already done: how a creation the issuer makes inline (a
/// node's first root key, the credential a sync creates) is recorded.
fn completed(
    credential_id: &str,
    trigger: Trigger,
    version: u32,
    node: Option<&str>,
    now: u64,
) -> TaskRecord {
    let mut t = TaskRecord::queued(
        credential_id,
        TaskType::CreateCredentials,
        trigger,
        node,
        now,
        now,
    );
    t.status = TaskStatus::CredentialsCreated;
    t.version = Some(version);
    t.attempts = 1;
    t
}

/// When a credential whose newest version activates at `activates_at`
/// is next rotated, for a root key (whose successor is published
/// `publish_ahead` before it takes over) or a workload credential.
pub(crate) fn next_rotation(
    config: &IssuerConfig,
    kind: CredentialKind,
    activates_at: u64,
) -> Option<u64> {
    match kind {
        CredentialKind::RootKey => Some(
            activates_at
                .saturating_add(config.keys.rotate_every.as_secs())
                .saturating_sub(config.keys.publish_ahead.as_secs()),
        ),
        // Without a provider no one would receive the new value.
        CredentialKind::WorkloadCredential
            if config.credentials.provider != ProviderConfig::None =>
        {
            Some(activates_at.saturating_add(config.credentials.rotate_every.as_secs()))
        }
        CredentialKind::WorkloadCredential | CredentialKind::Pat => None,
    }
}

/// At start: makes sure this node has a root key and that the store knows
/// every version it holds, and brings the ring in line with the store.
/// On the very first start the key is created (`root-key.pem`, as before
/// versions existed) and registered with a completed creation task.
pub(super) async fn open_root_keys(
    config: &IssuerConfig,
    store: &dyn Store,
    ring: &RootKeyRing,
    node: &str,
    now: u64,
) -> Result<(), OpenError> {
    let id = root_key_credential_id(node);
    let mut record = store.credential(&id).await?;
    if record.is_none() {
        // First start of this node, or first start of this version of the
        // issuer on an existing key: one version, active now.
        let key = match ring.kids().first() {
            Some(kid) => ring.private_key(kid),
            None => None,
        };
        let key = match key {
            Some(k) => k,
            None => {
                let k = load_or_create_root_key(&config.issuer.state_dir)?;
                let kid = k.public().thumbprint().to_owned();
                ring.add(k);
                ring.private_key(&kid)
                    .ok_or_else(|| OpenError::MissingRootKey {
                        node: node.to_owned(),
                        kid,
                        state: "active",
                    })?
            }
        };
        let kid = key.public().thumbprint().to_owned();
        let mut tasks = vec![completed(
            &id,
            Trigger::CredentialCreation,
            1,
            Some(node),
            now,
        )];
        if let Some(at) = next_rotation(config, CredentialKind::RootKey, now) {
            tasks.push(TaskRecord::queued(
                &id,
                TaskType::CreateCredentials,
                Trigger::AutomaticRotation,
                Some(node),
                at,
                now,
            ));
        }
        store
            .register_credential(&CredentialRegistration {
                credential: CredentialRecord {
                    id: id.clone(),
                    kind: CredentialKind::RootKey,
                    name: node.to_owned(),
                    node: Some(node.to_owned()),
                    environment: None,
                    created_at: now,
                    versions: vec![VersionRecord {
                        version: 1,
                        kid: Some(kid),
                        secret_hash: None,
                        pat_jti: None,
                        created_at: now,
                        times: VersionTimes {
                            activates_at: now,
                            ..VersionTimes::default()
                        },
                    }],
                },
                tasks,
            })
            .await?;
        record = store.credential(&id).await?;
    }
    let Some(record) = record else {
        return Ok(());
    };
    for v in &record.versions {
        let Some(kid) = v.kid.as_deref() else {
            continue;
        };
        let state = version_state(&v.times, now);
        match (ring.private_key(kid), state) {
            (_, VersionState::Retired) => {}
            (Some(key), _) => {
                // Recording a key already known changes nothing.
                store
                    .record_root_key(&RootKeyRecord {
                        node: node.to_owned(),
                        public_key: key.public().clone(),
                        state: RootKeyState::Active,
                        created_at: v.created_at,
                    })
                    .await?;
            }
            // A retiring key no longer signs: its public half stays
            // published from the store, which is all it is needed for.
            (None, VersionState::Retiring) => {
                tracing::warn!(
                    kid,
                    "the private key of a retiring root key is missing; it no longer signs, so this is harmless"
                );
            }
            (None, state) => {
                return Err(OpenError::MissingRootKey {
                    node: node.to_owned(),
                    kid: kid.to_owned(),
                    state: state.as_str(),
                });
            }
        }
    }
    for kid in ring.kids() {
        if !record
            .versions
            .iter()
            .any(|v| v.kid.as_deref() == Some(&kid))
        {
            // A key file written by a creation that was never recorded
            // (the node stopped in between): it never signs.
            tracing::warn!(
                kid,
                "a root key file in the state directory is not a version in the store; it is ignored"
            );
        }
    }
    ring.sync(&record);
    Ok(())
}

impl Issuer {
    /// At start: registers workload credentials made before this version,
    /// and queues the next automatic rotation of every credential this node
    /// is responsible for that has none (a chain broken by a crash, a
    /// provider configured since).
    pub(super) async fn open_credentials(&self, now: u64) -> Result<(), OpenError> {
        self.register_workload_credentials(now)
            .await
            .map_err(|e| match e {
                IssuerError::Store(s) => OpenError::Store(s),
                other => OpenError::Store(crate::store::StoreError::Corrupt {
                    what: "workload credentials",
                    detail: other.to_string(),
                }),
            })?;
        for c in self.store.credentials().await? {
            let mine = match c.kind {
                CredentialKind::RootKey => c.node.as_deref() == Some(self.node.as_str()),
                CredentialKind::WorkloadCredential => true,
                CredentialKind::Pat => false,
            };
            let Some(newest) = c
                .versions
                .iter()
                .filter(|v| v.times.removed_at.is_none())
                .max_by_key(|v| v.version)
            else {
                continue;
            };
            if !mine {
                continue;
            }
            let Some(at) = next_rotation(&self.config, c.kind, newest.times.activates_at) else {
                continue;
            };
            let tasks = self.store.tasks(&c.id).await?;
            let scheduled = tasks
                .iter()
                .any(|t| t.task_type == TaskType::CreateCredentials && !t.status.is_final());
            if !scheduled {
                let task = TaskRecord::queued(
                    &c.id,
                    TaskType::CreateCredentials,
                    Trigger::AutomaticRotation,
                    c.node.as_deref(),
                    at.max(now),
                    now,
                );
                self.store.insert_task(&task).await?;
                tracing::info!(credential = %c.id, run_at = %rfc3339(task.run_at), "automatic rotation scheduled");
            }
        }
        Ok(())
    }

    /// Registers, as credentials with versions, the workload credential
    /// values no version names yet (those sync created), each with a
    /// completed creation task and, when a provider is configured, its
    /// first automatic rotation.
    pub async fn register_workload_credentials(&self, now: u64) -> Result<(), IssuerError> {
        let rows = self.store.unregistered_workload_credentials().await?;
        let mut groups: Vec<(Environment, String, Vec<_>)> = Vec::new();
        for row in rows {
            match groups
                .iter_mut()
                .find(|(e, i, _)| *e == row.environment && *i == row.identity)
            {
                Some((_, _, list)) => list.push(row),
                None => groups.push((row.environment.clone(), row.identity.clone(), vec![row])),
            }
        }
        for (environment, identity, rows) in groups {
            let id = workload_credential_id(&environment, &identity);
            let versions: Vec<VersionRecord> = rows
                .iter()
                .enumerate()
                .map(|(i, r)| VersionRecord {
                    version: u32::try_from(i + 1).unwrap_or(u32::MAX),
                    kid: None,
                    secret_hash: Some(r.hash),
                    pat_jti: None,
                    created_at: r.created_at,
                    times: VersionTimes {
                        activates_at: r.created_at,
                        removed_at: r.revoked.then_some(r.created_at),
                        ..VersionTimes::default()
                    },
                })
                .collect();
            let newest = versions.last().map_or(now, |v| v.times.activates_at);
            let mut tasks = vec![completed(
                &id,
                Trigger::CredentialCreation,
                u32::try_from(versions.len()).unwrap_or(u32::MAX),
                None,
                now,
            )];
            if let Some(at) =
                next_rotation(&self.config, CredentialKind::WorkloadCredential, newest)
            {
                tasks.push(TaskRecord::queued(
                    &id,
                    TaskType::CreateCredentials,
                    Trigger::AutomaticRotation,
                    None,
                    at.max(now),
                    now,
                ));
            }
            let registered = self
                .store
                .register_credential(&CredentialRegistration {
                    credential: CredentialRecord {
                        id: id.clone(),
                        kind: CredentialKind::WorkloadCredential,
                        name: identity.clone(),
                        node: None,
                        environment: Some(environment.clone()),
                        created_at: now,
                        versions,
                    },
                    tasks,
                })
                .await?;
            if !registered {
                tracing::warn!(credential = %id, "a workload credential value of an already registered identity is not a version of it; it keeps working until revoked");
            }
        }
        Ok(())
    }

    /// Every credential with its versions' states at `now`.
    pub async fn list_credentials(&self, now: u64) -> Result<Vec<CredentialView>, IssuerError> {
        let all = self.store.credentials().await?;
        Ok(all.iter().map(|c| CredentialView::of(c, now)).collect())
    }

    async fn known_credential(&self, id: &str) -> Result<CredentialRecord, IssuerError> {
        self.store
            .credential(id)
            .await?
            .ok_or_else(|| IssuerError::NotFound(format!("no credential `{id}`")))
    }

    /// The tasks of a credential, oldest first.
    pub async fn credential_tasks(&self, id: &str) -> Result<Vec<TaskRecord>, IssuerError> {
        self.known_credential(id).await?;
        Ok(self.store.tasks(id).await?)
    }

    /// One task of a credential.
    pub async fn credential_task(
        &self,
        id: &str,
        task_id: &str,
    ) -> Result<TaskRecord, IssuerError> {
        self.store
            .task(task_id)
            .await?
            .filter(|t| t.credential_id == id)
            .ok_or_else(|| {
                IssuerError::NotFound(format!("no task `{task_id}` of credential `{id}`"))
            })
    }

    /// Cancels a task while it is queued or processing: it ends `failed`
    /// with the error `cancelled` (a worker running it stops its provider
    /// and undoes what it began). A final task is refused
    /// ([`IssuerError::TaskFinal`], 409).
    pub async fn cancel_task(
        &self,
        id: &str,
        task_id: &str,
        now: u64,
    ) -> Result<TaskRecord, IssuerError> {
        // A task that changes between the read and the write is read
        // again; it can change only a bounded number of times before it
        // is final.
        for _ in 0..8 {
            let task = self.credential_task(id, task_id).await?;
            match transition(task.task_type, task.status, Event::Cancel) {
                Ok(_) => {}
                Err(Refused::Final(status)) => return Err(IssuerError::TaskFinal(status)),
                Err(e @ Refused::NotNow { .. }) => {
                    return Err(IssuerError::Internal(e.to_string()));
                }
            }
            let mut errors = task.errors.clone();
            errors.push(TaskError::cancelled());
            if let Some(cancelled) = self
                .store
                .cancel_task(task_id, task.status, task.attempts, &errors, now)
                .await?
            {
                tracing::info!(credential = id, task = task_id, was = %task.status, "task cancelled");
                self.after_cancel(&cancelled, now).await?;
                return Ok(cancelled);
            }
        }
        Err(IssuerError::Internal(
            "the task kept changing while it was cancelled".into(),
        ))
    }

    /// A cancelled automatic rotation does not end the schedule: the next
    /// one is queued one period later.
    async fn after_cancel(&self, task: &TaskRecord, now: u64) -> Result<(), IssuerError> {
        if task.trigger != Trigger::AutomaticRotation {
            return Ok(());
        }
        let record = self.known_credential(&task.credential_id).await?;
        let period = match record.kind {
            CredentialKind::RootKey => self.config.keys.rotate_every,
            _ => self.config.credentials.rotate_every,
        };
        let next = TaskRecord::queued(
            &task.credential_id,
            TaskType::CreateCredentials,
            Trigger::AutomaticRotation,
            task.node.as_deref(),
            task.run_at.max(now).saturating_add(period.as_secs()),
            now,
        );
        self.store.insert_task(&next).await?;
        Ok(())
    }

    /// `POST /v1/credentials/{id}/rotate`: queues a `create_credentials`
    /// task with trigger `manual_rotation`, due now. A root key's task runs
    /// on the node that holds it. PATs are rotated by `pat update`.
    pub async fn rotate(&self, id: &str, now: u64) -> Result<TaskRecord, IssuerError> {
        let record = self.known_credential(id).await?;
        match record.kind {
            CredentialKind::Pat => {
                return Err(IssuerError::InvalidRequest(
                    "a PAT is given a new value with `authproxy pat update`".into(),
                ));
            }
            CredentialKind::WorkloadCredential
                if self.config.credentials.provider == ProviderConfig::None =>
            {
                return Err(IssuerError::InvalidRequest(
                    "workload credentials cannot be rotated: no provider would receive the new value \
                     (set `credentials.dir` or `credentials.command`)"
                        .into(),
                ));
            }
            _ => {}
        }
        let task = TaskRecord::queued(
            id,
            TaskType::CreateCredentials,
            Trigger::ManualRotation,
            record.node.as_deref(),
            now,
            now,
        );
        self.store.insert_task(&task).await?;
        tracing::info!(credential = id, task = %task.id, "manual rotation queued");
        Ok(task)
    }

    /// The hook the PAT store calls when it makes a PAT version (create or
    /// update): records the version (jti) of `pat.<name>` and queues its
    /// `delete_credentials` task with trigger `version_expiration` at
    /// `expires_at`. The previous versions, which an update revokes, are
    /// marked retired by the same call.
    pub async fn record_pat_version(
        &self,
        name: &str,
        environment: &Environment,
        jti: &str,
        expires_at: u64,
        now: u64,
    ) -> Result<(), IssuerError> {
        let id = pat_credential_id(name);
        let version = |n: u32| VersionRecord {
            version: n,
            kid: None,
            secret_hash: None,
            pat_jti: Some(jti.to_owned()),
            created_at: now,
            times: VersionTimes {
                activates_at: now,
                expires_at: Some(expires_at),
                ..VersionTimes::default()
            },
        };
        let expiry = |n: u32| {
            let mut t = TaskRecord::queued(
                &id,
                TaskType::DeleteCredentials,
                Trigger::VersionExpiration,
                None,
                expires_at,
                now,
            );
            t.version = Some(n);
            t
        };
        let first = CredentialRegistration {
            credential: CredentialRecord {
                id: id.clone(),
                kind: CredentialKind::Pat,
                name: name.to_owned(),
                node: None,
                environment: Some(environment.clone()),
                created_at: now,
                versions: vec![version(1)],
            },
            tasks: vec![
                completed(&id, Trigger::CredentialCreation, 1, None, now),
                expiry(1),
            ],
        };
        if self.store.register_credential(&first).await? {
            return Ok(());
        }
        // An update: a new version through a completed task, the old ones
        // retired (the PAT store has put them on the revocation feed).
        let record = self.known_credential(&id).await?;
        let n = record.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
        let mut task = completed(&id, Trigger::ManualRotation, n, None, now);
        task.status = TaskStatus::Processing;
        task.claimed_by = Some(format!("{}/pat", self.node));
        let claim = task.claim();
        self.store.insert_task(&task).await?;
        let mut changes =
            crate::store::TaskChanges::status(TaskStatus::CredentialsCreated, now, Vec::new());
        changes.version = Some(n);
        changes.new_versions.push((id.clone(), version(n)));
        for v in record
            .versions
            .iter()
            .filter(|v| v.times.removed_at.is_none())
        {
            changes.version_updates.push(crate::store::VersionUpdate {
                credential_id: id.clone(),
                version: v.version,
                retires_at: Some(now),
                expires_at: None,
                removed_at: Some(now),
            });
        }
        changes.new_tasks.push(expiry(n));
        self.store.apply_task(&claim, &changes, now).await?;
        Ok(())
    }

    /// The hook the PAT store calls when it deletes a PAT: queues a
    /// `delete_credentials` task with trigger `credential_deletion` for
    /// every version of `pat.<name>` (run by the worker, which marks them
    /// retired). Unknown PATs are ignored.
    pub async fn record_pat_deletion(&self, name: &str, now: u64) -> Result<(), IssuerError> {
        let id = pat_credential_id(name);
        if self.store.credential(&id).await?.is_none() {
            return Ok(());
        }
        let task = TaskRecord::queued(
            &id,
            TaskType::DeleteCredentials,
            Trigger::CredentialDeletion,
            None,
            now,
            now,
        );
        self.store.insert_task(&task).await?;
        Ok(())
    }
}
