//! [`CredentialStore`] on SQLite (migration `0003_tasks.sql`).
//!
//! Every transaction that writes starts with a write, so SQLite takes its
//! write lock at once and no read-then-upgrade can fail under contention;
//! fences are `WHERE` clauses on the first statement.

use std::collections::BTreeMap;

use sqlx::Row as _;
use sqlx::sqlite::SqliteRow;

use super::{BEGIN_WRITE, SqliteStore, corrupt, environment, from_ts, ts};
use crate::secret::SecretHash;
use crate::store::{
    Claim, CredentialRecord, CredentialRegistration, CredentialStore, StoreError, StoreFuture,
    TaskChanges, TaskRecord, UnregisteredWorkloadCredential, VersionRecord,
};
use crate::tasks::model::{CredentialKind, TaskError, TaskStatus, TaskType, Trigger, VersionTimes};

const TASK_COLUMNS: &str = "id, credential_id, type, status, trigger, version, node, run_at, \
     attempts, claimed_by, lease_until, errors, created_at, updated_at";

fn opt_ts(v: Option<i64>) -> Option<u64> {
    v.map(from_ts)
}

fn hash(bytes: Option<Vec<u8>>) -> Result<Option<SecretHash>, StoreError> {
    bytes
        .map(|b| {
            SecretHash::from_bytes(&b).ok_or_else(|| corrupt("credential hash", "not 32 bytes"))
        })
        .transpose()
}

fn version_number(v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| corrupt("credential version", v))
}

fn task_record(row: &SqliteRow) -> Result<TaskRecord, StoreError> {
    let text = |col: &str| -> Result<String, StoreError> { Ok(row.try_get::<String, _>(col)?) };
    let task_type = text("type")?;
    let status = text("status")?;
    let trigger = text("trigger")?;
    let errors = text("errors")?;
    Ok(TaskRecord {
        id: text("id")?,
        credential_id: text("credential_id")?,
        task_type: TaskType::parse(&task_type).ok_or_else(|| corrupt("task type", task_type))?,
        status: TaskStatus::parse(&status).ok_or_else(|| corrupt("task status", status))?,
        trigger: Trigger::parse(&trigger).ok_or_else(|| corrupt("task trigger", trigger))?,
        version: row
            .try_get::<Option<i64>, _>("version")?
            .map(version_number)
            .transpose()?,
        node: row.try_get("node")?,
        run_at: from_ts(row.try_get("run_at")?),
        attempts: version_number(row.try_get("attempts")?)?,
        claimed_by: row.try_get("claimed_by")?,
        lease_until: opt_ts(row.try_get("lease_until")?),
        errors: serde_json::from_str(&errors).map_err(|e| corrupt("task errors", e))?,
        created_at: from_ts(row.try_get("created_at")?),
        updated_at: from_ts(row.try_get("updated_at")?),
    })
}

fn version_record(row: &SqliteRow) -> Result<VersionRecord, StoreError> {
    Ok(VersionRecord {
        version: version_number(row.try_get("version")?)?,
        kid: row.try_get("kid")?,
        secret_hash: hash(row.try_get("secret_hash")?)?,
        pat_jti: row.try_get("pat_jti")?,
        created_at: from_ts(row.try_get("created_at")?),
        times: VersionTimes {
            activates_at: from_ts(row.try_get("activates_at")?),
            retires_at: opt_ts(row.try_get("retires_at")?),
            expires_at: opt_ts(row.try_get("expires_at")?),
            removed_at: opt_ts(row.try_get("removed_at")?),
        },
    })
}

fn credential_record(row: &SqliteRow) -> Result<CredentialRecord, StoreError> {
    let kind: String = row.try_get("kind")?;
    let env: Option<String> = row.try_get("environment")?;
    Ok(CredentialRecord {
        id: row.try_get("id")?,
        kind: CredentialKind::parse(&kind).ok_or_else(|| corrupt("credential kind", kind))?,
        name: row.try_get("name")?,
        node: row.try_get("node")?,
        environment: env.as_deref().map(environment).transpose()?,
        created_at: from_ts(row.try_get("created_at")?),
        versions: Vec::new(),
    })
}

fn errors_json(errors: &[TaskError]) -> Result<String, StoreError> {
    serde_json::to_string(errors).map_err(|e| corrupt("task errors", e))
}

async fn insert_task(
    conn: &mut sqlx::SqliteConnection,
    task: &TaskRecord,
) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO credential_tasks ({TASK_COLUMNS}) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(&task.id)
    .bind(&task.credential_id)
    .bind(task.task_type.as_str())
    .bind(task.status.as_str())
    .bind(task.trigger.as_str())
    .bind(task.version.map(i64::from))
    .bind(&task.node)
    .bind(ts(task.run_at))
    .bind(i64::from(task.attempts))
    .bind(&task.claimed_by)
    .bind(task.lease_until.map(ts))
    .bind(errors_json(&task.errors)?)
    .bind(ts(task.created_at))
    .bind(ts(task.updated_at))
    .execute(conn)
    .await?;
    Ok(())
}

async fn insert_version(
    conn: &mut sqlx::SqliteConnection,
    credential_id: &str,
    v: &VersionRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO credential_versions (credential_id, version, kid, secret_hash, pat_jti, \
         created_at, activates_at, retires_at, expires_at, removed_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(credential_id)
    .bind(i64::from(v.version))
    .bind(&v.kid)
    .bind(v.secret_hash.map(|h| h.as_bytes().to_vec()))
    .bind(&v.pat_jti)
    .bind(ts(v.created_at))
    .bind(ts(v.times.activates_at))
    .bind(v.times.retires_at.map(ts))
    .bind(v.times.expires_at.map(ts))
    .bind(v.times.removed_at.map(ts))
    .execute(conn)
    .await?;
    Ok(())
}

impl CredentialStore for SqliteStore {
    fn register_credential<'a>(
        &'a self,
        registration: &'a CredentialRegistration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let c = &registration.credential;
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            let inserted = sqlx::query(
                "INSERT INTO credentials (id, kind, name, node, environment, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&c.id)
            .bind(c.kind.as_str())
            .bind(&c.name)
            .bind(&c.node)
            .bind(c.environment.as_ref().map(|e| e.as_str().to_owned()))
            .bind(ts(c.created_at))
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            for v in &c.versions {
                insert_version(&mut tx, &c.id, v).await?;
            }
            for t in &registration.tasks {
                insert_task(&mut tx, t).await?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    fn credentials(&self) -> StoreFuture<'_, Vec<CredentialRecord>> {
        Box::pin(async move {
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            let rows = sqlx::query("SELECT * FROM credentials ORDER BY id")
                .fetch_all(&mut *tx)
                .await?;
            let versions =
                sqlx::query("SELECT * FROM credential_versions ORDER BY credential_id, version")
                    .fetch_all(&mut *tx)
                    .await?;
            tx.commit().await?;
            let mut by_id = BTreeMap::new();
            for row in &rows {
                let c = credential_record(row)?;
                by_id.insert(c.id.clone(), c);
            }
            for row in &versions {
                let id: String = row.try_get("credential_id")?;
                if let Some(c) = by_id.get_mut(&id) {
                    c.versions.push(version_record(row)?);
                }
            }
            Ok(by_id.into_values().collect())
        })
    }

    fn credential<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<CredentialRecord>> {
        Box::pin(async move {
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            let row = sqlx::query("SELECT * FROM credentials WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let versions = sqlx::query(
                "SELECT * FROM credential_versions WHERE credential_id = ? ORDER BY version",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            let Some(row) = row else { return Ok(None) };
            let mut c = credential_record(&row)?;
            c.versions = versions
                .iter()
                .map(version_record)
                .collect::<Result<_, _>>()?;
            Ok(Some(c))
        })
    }

    fn unregistered_workload_credentials(
        &self,
    ) -> StoreFuture<'_, Vec<UnregisteredWorkloadCredential>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT w.hash, w.environment, w.identity, w.created_at, w.revoked \
                 FROM workload_credentials w \
                 WHERE NOT EXISTS (SELECT 1 FROM credential_versions v WHERE v.secret_hash = w.hash) \
                 ORDER BY w.environment, w.identity, w.created_at",
            )
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(UnregisteredWorkloadCredential {
                        environment: environment(row.try_get("environment")?)?,
                        identity: row.try_get("identity")?,
                        hash: hash(row.try_get("hash")?)?
                            .ok_or_else(|| corrupt("credential hash", "missing"))?,
                        created_at: from_ts(row.try_get("created_at")?),
                        revoked: row.try_get("revoked")?,
                    })
                })
                .collect()
        })
    }

    fn insert_task<'a>(&'a self, task: &'a TaskRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await?;
            insert_task(&mut conn, task).await
        })
    }

    fn tasks<'a>(&'a self, credential_id: &'a str) -> StoreFuture<'a, Vec<TaskRecord>> {
        Box::pin(async move {
            let rows = sqlx::query(&format!(
                "SELECT {TASK_COLUMNS} FROM credential_tasks WHERE credential_id = ? \
                 ORDER BY created_at, run_at, id"
            ))
            .bind(credential_id)
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(task_record).collect()
        })
    }

    fn task<'a>(&'a self, task_id: &'a str) -> StoreFuture<'a, Option<TaskRecord>> {
        Box::pin(async move {
            let row = sqlx::query(&format!(
                "SELECT {TASK_COLUMNS} FROM credential_tasks WHERE id = ?"
            ))
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(task_record).transpose()
        })
    }

    fn claim_task<'a>(
        &'a self,
        node: &'a str,
        claimed_by: &'a str,
        now: u64,
        lease_until: u64,
    ) -> StoreFuture<'a, Option<TaskRecord>> {
        Box::pin(async move {
            let now = ts(now);
            // One statement: the pick and the claim are atomic. PostgreSQL
            // adds FOR UPDATE SKIP LOCKED to the sub-select.
            let row = sqlx::query(&format!(
                "UPDATE credential_tasks SET status = 'processing', claimed_by = ?, \
                 lease_until = ?, attempts = attempts + 1, updated_at = ? \
                 WHERE id = (SELECT t.id FROM credential_tasks t \
                   WHERE ((t.status = 'queued' AND t.run_at <= ?) \
                          OR (t.status = 'processing' AND t.lease_until <= ?)) \
                     AND (t.node IS NULL OR t.node = ?) \
                     AND NOT EXISTS (SELECT 1 FROM credential_tasks p \
                       WHERE p.credential_id = t.credential_id AND p.status = 'processing' \
                         AND p.lease_until > ?) \
                   ORDER BY t.run_at, t.created_at, t.id LIMIT 1) \
                 RETURNING {TASK_COLUMNS}"
            ))
            .bind(claimed_by)
            .bind(ts(lease_until))
            .bind(now)
            .bind(now)
            .bind(now)
            .bind(node)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(task_record).transpose()
        })
    }

    fn apply_task<'a>(
        &'a self,
        claim: &'a Claim,
        changes: &'a TaskChanges,
        now: u64,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let now = ts(now);
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            let still_processing = changes.status == TaskStatus::Processing;
            let fenced = sqlx::query(
                "UPDATE credential_tasks SET status = ?, run_at = ?, errors = ?, \
                 version = COALESCE(?, version), updated_at = ?, \
                 lease_until = CASE WHEN ? THEN lease_until ELSE NULL END \
                 WHERE id = ? AND status = 'processing' AND claimed_by = ? AND attempts = ?",
            )
            .bind(changes.status.as_str())
            .bind(ts(changes.run_at))
            .bind(errors_json(&changes.errors)?)
            .bind(changes.version.map(i64::from))
            .bind(now)
            .bind(still_processing)
            .bind(&claim.task_id)
            .bind(&claim.claimed_by)
            .bind(i64::from(claim.attempts))
            .execute(&mut *tx)
            .await?;
            if fenced.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            for (credential_id, v) in &changes.new_versions {
                insert_version(&mut tx, credential_id, v).await?;
            }
            for u in &changes.version_updates {
                sqlx::query(
                    "UPDATE credential_versions SET retires_at = COALESCE(?, retires_at), \
                     expires_at = COALESCE(?, expires_at), removed_at = COALESCE(?, removed_at) \
                     WHERE credential_id = ? AND version = ?",
                )
                .bind(u.retires_at.map(ts))
                .bind(u.expires_at.map(ts))
                .bind(u.removed_at.map(ts))
                .bind(&u.credential_id)
                .bind(i64::from(u.version))
                .execute(&mut *tx)
                .await?;
            }
            for key in &changes.publish_root_keys {
                let jwk = serde_json::to_string(&key.public_key.bare_jwk())
                    .map_err(|e| corrupt("root key", e))?;
                sqlx::query(
                    "INSERT INTO root_keys (kid, node, public_jwk, state, created_at) \
                     VALUES (?, ?, ?, ?, ?) ON CONFLICT (kid) DO NOTHING",
                )
                .bind(key.public_key.thumbprint())
                .bind(&key.node)
                .bind(jwk)
                .bind(key.state.as_str())
                .bind(ts(key.created_at))
                .execute(&mut *tx)
                .await?;
            }
            for kid in &changes.unpublish_root_keys {
                sqlx::query("UPDATE root_keys SET state = 'retired' WHERE kid = ?")
                    .bind(kid)
                    .execute(&mut *tx)
                    .await?;
            }
            for c in &changes.new_workload_credentials {
                sqlx::query(
                    "INSERT INTO workload_credentials \
                     (hash, environment, identity, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                )
                .bind(c.hash.as_bytes().as_slice())
                .bind(c.environment.as_str())
                .bind(&c.identity)
                .bind(now)
                .bind(c.expires_at.map(ts))
                .execute(&mut *tx)
                .await?;
            }
            for (h, at) in &changes.expire_workload_credentials {
                sqlx::query("UPDATE workload_credentials SET expires_at = ? WHERE hash = ?")
                    .bind(ts(*at))
                    .bind(h.as_bytes().as_slice())
                    .execute(&mut *tx)
                    .await?;
            }
            for h in &changes.revoke_workload_credentials {
                sqlx::query("UPDATE workload_credentials SET revoked = 1 WHERE hash = ?")
                    .bind(h.as_bytes().as_slice())
                    .execute(&mut *tx)
                    .await?;
            }
            for t in &changes.new_tasks {
                insert_task(&mut tx, t).await?;
            }
            for (id, run_at) in &changes.reschedule {
                sqlx::query(
                    "UPDATE credential_tasks SET run_at = ?, updated_at = ? \
                     WHERE id = ? AND status = 'queued'",
                )
                .bind(ts(*run_at))
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    fn cancel_task<'a>(
        &'a self,
        task_id: &'a str,
        expected: TaskStatus,
        attempts: u32,
        errors: &'a [TaskError],
        now: u64,
    ) -> StoreFuture<'a, Option<TaskRecord>> {
        Box::pin(async move {
            let row = sqlx::query(&format!(
                "UPDATE credential_tasks SET status = 'failed', errors = ?, lease_until = NULL, \
                 updated_at = ? WHERE id = ? AND status = ? AND attempts = ? \
                 RETURNING {TASK_COLUMNS}"
            ))
            .bind(errors_json(errors)?)
            .bind(ts(now))
            .bind(task_id)
            .bind(expected.as_str())
            .bind(i64::from(attempts))
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(task_record).transpose()
        })
    }

    fn last_grant_expiry<'a>(&'a self, kid: &'a str) -> StoreFuture<'a, Option<u64>> {
        Box::pin(async move {
            let max: Option<i64> =
                sqlx::query_scalar("SELECT MAX(expires_at) FROM grants WHERE root_kid = ?")
                    .bind(kid)
                    .fetch_one(&self.pool)
                    .await?;
            Ok(max.map(from_ts))
        })
    }
}
