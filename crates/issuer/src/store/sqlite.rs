//! [`Store`] on SQLite: one database file, created on first start, schema
//! from `migrations/sqlite/` (embedded in the binary) applied at open.
//!
//! WAL journal (readers never wait for the writer), `synchronous = FULL` (a
//! credential shown once must not vanish in a power cut), foreign keys on,
//! and a busy timeout so that concurrent writers queue instead of failing.

use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use authproxy_core::pat::PatName;
use authproxy_core::{Environment, Scopes, WorkloadId};
use sqlx::Row as _;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use super::sql::{corrupt, from_ts, ts};
use super::{
    CredentialOwner, GrantRecord, PatCreated, PatRecord, PatUpdate, PatUpdated, RevocationKind,
    RevocationRecord, RevocationsAfter, RootKeyRecord, Store, StoreError, StoreFuture, SyncApplied,
    SyncChanges, SyncState, WorkloadRecord, sql,
};
use crate::secret::SecretHash;

mod credentials;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens the database at `path`, creating it (and a missing parent
    /// directory, 0700) on first start, and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let location = path.display().to_string();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| StoreError::Open {
                    location: location.clone(),
                    source: sqlx::Error::Io(e),
                })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open { location, source })?;
        MIGRATOR.run(&pool).await?;
        Ok(Self {
            pool,
            path: path.to_owned(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
fn environment(s: &str) -> Result<Environment, StoreError> {
    Environment::parse(s).map_err(|e| corrupt("environment", e))
}

fn pat_record(row: &SqliteRow) -> Result<PatRecord, StoreError> {
    let name: String = row.try_get("name")?;
    let scopes: String = row.try_get("scopes")?;
    let last_used_at: Option<i64> = row.try_get("last_used_at")?;
    Ok(PatRecord {
        name: PatName::parse(&name).map_err(|e| corrupt("PAT name", e))?,
        environment: environment(row.try_get("environment")?)?,
        scopes: Scopes::parse(&scopes).map_err(|e| corrupt("PAT scopes", e))?,
        jti: row.try_get("jti")?,
        created_at: from_ts(row.try_get("created_at")?),
        updated_at: from_ts(row.try_get("updated_at")?),
        expires_at: from_ts(row.try_get("expires_at")?),
        last_used_at: last_used_at.map(from_ts),
    })
}

const SELECT_PATS: &str = "SELECT name, environment, scopes, jti, created_at, updated_at, \
     expires_at, last_used_at FROM pats";

/// How often at most a PAT's `last_used_at` is written.
const TOUCH_INTERVAL: u64 = 60;

/// How every transaction begins: `BEGIN IMMEDIATE` takes SQLite's write
/// lock at once, so a transaction that reads then writes waits for another
/// writer (the busy timeout) instead of failing with "database is locked"
/// when it upgrades — which a deferred `BEGIN` does, the busy handler being
/// skipped to avoid a deadlock. The task worker writes while requests do.
pub(super) const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

impl Store for SqliteStore {
    fn record_root_key<'a>(&'a self, key: &'a RootKeyRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            sql::root_key_insert(key)?
                .query()
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn live_root_keys(&self, _now: u64) -> StoreFuture<'_, Vec<RootKeyRecord>> {
        Box::pin(async move {
            let rows = sqlx::query_as::<_, sql::RootKeyRow>(sql::LIVE_ROOT_KEYS)
                .fetch_all(&self.pool)
                .await?;
            sql::records(rows)
        })
    }

    fn add_admin_token<'a>(&'a self, hash: &'a SecretHash, now: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query(sql::INSERT_ADMIN_TOKEN)
                .bind(hash.as_bytes().as_slice())
                .bind(sql::ts(now))
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn admin_token_hashes(&self, _now: u64) -> StoreFuture<'_, Vec<SecretHash>> {
        Box::pin(async move {
            let rows: Vec<Vec<u8>> = sqlx::query_scalar(sql::ADMIN_TOKEN_HASHES)
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map(|h| sql::secret_hash(h)).collect()
        })
    }

    fn sync_state<'a>(&'a self, env: &'a Environment) -> StoreFuture<'a, SyncState> {
        Box::pin(async move {
            // One read transaction: SQLite reads it from one snapshot.
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            let version: Option<i64> = sqlx::query_scalar(sql::ENVIRONMENT_VERSION)
                .bind(env.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            let identities = sqlx::query_as::<_, sql::IdentityRow>(sql::IDENTITIES)
                .bind(env.as_str())
                .fetch_all(&mut *tx)
                .await?;
            let workloads = sqlx::query_as::<_, sql::WorkloadRow>(sql::WORKLOADS)
                .bind(env.as_str())
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(SyncState::from_records(
                env.clone(),
                version.unwrap_or(0),
                sql::records(identities)?,
                sql::records(workloads)?,
            ))
        })
    }

    fn apply_sync<'a>(
        &'a self,
        changes: &'a SyncChanges,
        now: u64,
    ) -> StoreFuture<'a, SyncApplied> {
        Box::pin(async move {
            let env = changes.environment.as_str();
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            // The first statement writes, so SQLite takes the write lock
            // here (other writers wait for the busy timeout) and the
            // version check below sees every committed sync.
            sqlx::query(sql::ENSURE_ENVIRONMENT)
                .bind(env)
                .execute(&mut *tx)
                .await?;
            let bumped = sqlx::query(sql::BUMP_VERSION)
                .bind(env)
                .bind(changes.expected_version)
                .execute(&mut *tx)
                .await?;
            if bumped.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok(SyncApplied::Conflict);
            }
            for write in sql::sync_writes(changes, now) {
                write.query().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(SyncApplied::Applied)
        })
    }

    fn credential_owner<'a>(
        &'a self,
        hash: &'a SecretHash,
        now: u64,
    ) -> StoreFuture<'a, Option<CredentialOwner>> {
        Box::pin(async move {
            let row = sqlx::query_as::<_, sql::OwnerRow>(sql::CREDENTIAL_OWNER)
                .bind(hash.as_bytes().as_slice())
                .bind(ts(now))
                .fetch_optional(&self.pool)
                .await?;
            row.map(CredentialOwner::try_from).transpose()
        })
    }

    fn workload<'a>(
        &'a self,
        env: &'a Environment,
        workload: &'a WorkloadId,
    ) -> StoreFuture<'a, Option<WorkloadRecord>> {
        Box::pin(async move {
            let row = sqlx::query_as::<_, sql::WorkloadRow>(sql::WORKLOAD)
                .bind(env.as_str())
                .bind(workload.to_string())
                .fetch_optional(&self.pool)
                .await?;
            row.map(WorkloadRecord::try_from).transpose()
        })
    }

    fn record_grant<'a>(&'a self, grant: &'a GrantRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            sql::grant_insert(grant).query().execute(&self.pool).await?;
            Ok(())
        })
    }

    fn create_pat<'a>(&'a self, pat: &'a PatRecord) -> StoreFuture<'a, PatCreated> {
        Box::pin(async move {
            let inserted = sqlx::query(
                "INSERT INTO pats \
                 (name, environment, scopes, jti, created_at, updated_at, expires_at, last_used_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, NULL) ON CONFLICT (name) DO NOTHING",
            )
            .bind(pat.name.as_str())
            .bind(pat.environment.as_str())
            .bind(pat.scopes.to_string())
            .bind(&pat.jti)
            .bind(ts(pat.created_at))
            .bind(ts(pat.updated_at))
            .bind(ts(pat.expires_at))
            .execute(&self.pool)
            .await?;
            Ok(if inserted.rows_affected() == 1 {
                PatCreated::Created
            } else {
                PatCreated::NameTaken
            })
        })
    }

    fn pat<'a>(&'a self, name: &'a PatName) -> StoreFuture<'a, Option<PatRecord>> {
        Box::pin(async move {
            let row = sqlx::query(&format!("{SELECT_PATS} WHERE name = ?"))
                .bind(name.as_str())
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(pat_record).transpose()
        })
    }

    fn pats(&self) -> StoreFuture<'_, Vec<PatRecord>> {
        Box::pin(async move {
            let rows = sqlx::query(&format!("{SELECT_PATS} ORDER BY name"))
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map(pat_record).collect()
        })
    }

    fn pat_by_jti<'a>(&'a self, jti: &'a str) -> StoreFuture<'a, Option<PatRecord>> {
        Box::pin(async move {
            let row = sqlx::query(&format!("{SELECT_PATS} WHERE jti = ?"))
                .bind(jti)
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(pat_record).transpose()
        })
    }

    fn update_pat<'a>(&'a self, update: &'a PatUpdate, now: u64) -> StoreFuture<'a, PatUpdated> {
        Box::pin(async move {
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            let previous_expiry: Option<i64> =
                sqlx::query_scalar("SELECT expires_at FROM pats WHERE name = ? AND jti = ?")
                    .bind(update.name.as_str())
                    .bind(&update.previous_jti)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(previous_expiry) = previous_expiry else {
                tx.rollback().await?;
                return Ok(PatUpdated::Changed);
            };
            // Guarded by the version it replaces: of two concurrent updates
            // one writes, the other changes nothing (and its value is never
            // handed out).
            let updated = sqlx::query(
                "UPDATE pats SET jti = ?, scopes = ?, expires_at = ?, updated_at = ? \
                 WHERE name = ? AND jti = ?",
            )
            .bind(&update.jti)
            .bind(update.scopes.to_string())
            .bind(ts(update.expires_at))
            .bind(ts(now))
            .bind(update.name.as_str())
            .bind(&update.previous_jti)
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok(PatUpdated::Changed);
            }
            insert_revocation(
                &mut tx,
                RevocationKind::Pat,
                &update.previous_jti,
                previous_expiry,
                now,
            )
            .await?;
            tx.commit().await?;
            Ok(PatUpdated::Updated)
        })
    }

    fn delete_pat<'a>(&'a self, name: &'a PatName, now: u64) -> StoreFuture<'a, Option<PatRecord>> {
        Box::pin(async move {
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            let row = sqlx::query(&format!("{SELECT_PATS} WHERE name = ?"))
                .bind(name.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            let Some(record) = row.as_ref().map(pat_record).transpose()? else {
                tx.rollback().await?;
                return Ok(None);
            };
            let deleted = sqlx::query("DELETE FROM pats WHERE name = ? AND jti = ?")
                .bind(name.as_str())
                .bind(&record.jti)
                .execute(&mut *tx)
                .await?;
            if deleted.rows_affected() != 1 {
                // Updated or deleted since the read: nothing to answer for.
                tx.rollback().await?;
                return Ok(None);
            }
            insert_revocation(
                &mut tx,
                RevocationKind::Pat,
                &record.jti,
                ts(record.expires_at),
                now,
            )
            .await?;
            tx.commit().await?;
            Ok(Some(record))
        })
    }

    fn touch_pats<'a>(&'a self, jtis: &'a [String], now: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if jtis.is_empty() {
                return Ok(());
            }
            // One transaction: one commit (one fsync) per report, not per id.
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            for jti in jtis {
                sqlx::query(
                    "UPDATE pats SET last_used_at = ? \
                     WHERE jti = ? AND (last_used_at IS NULL OR last_used_at <= ?)",
                )
                .bind(ts(now))
                .bind(jti)
                .bind(ts(now.saturating_sub(TOUCH_INTERVAL)))
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn revocations_after(&self, after: u64, now: u64) -> StoreFuture<'_, RevocationsAfter> {
        Box::pin(async move {
            // One read transaction: the entries and the newest seq agree.
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            let rows = sqlx::query(
                "SELECT seq, kind, id, expires_at FROM revocations \
                 WHERE seq > ? AND expires_at > ? ORDER BY seq",
            )
            .bind(ts(after))
            .bind(ts(now))
            .fetch_all(&mut *tx)
            .await?;
            let newest: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM revocations")
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            let entries = rows
                .iter()
                .map(|row| {
                    let kind: String = row.try_get("kind")?;
                    Ok(RevocationRecord {
                        seq: from_ts(row.try_get("seq")?),
                        kind: RevocationKind::parse(&kind)
                            .ok_or_else(|| corrupt("revocation kind", kind))?,
                        id: row.try_get("id")?,
                        expires_at: from_ts(row.try_get("expires_at")?),
                    })
                })
                .collect::<Result<_, StoreError>>()?;
            Ok(RevocationsAfter {
                entries,
                newest: from_ts(newest),
            })
        })
    }

    fn revoke_workload_grants<'a>(
        &'a self,
        env: &'a Environment,
        workload: &'a WorkloadId,
        now: u64,
    ) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            // One statement: atomic on its own.
            let revoked = sqlx::query(
                "INSERT INTO revocations (kind, id, expires_at, revoked_at) \
                 SELECT 'grant', g.jti, g.expires_at, ? FROM grants g \
                 WHERE g.environment = ? AND g.workload = ? AND g.expires_at > ? \
                 AND NOT EXISTS (SELECT 1 FROM revocations r \
                                 WHERE r.kind = 'grant' AND r.id = g.jti) \
                 ORDER BY g.issued_at, g.jti",
            )
            .bind(ts(now))
            .bind(env.as_str())
            .bind(workload.to_string())
            .bind(ts(now))
            .execute(&self.pool)
            .await?;
            Ok(revoked.rows_affected())
        })
    }

    fn prune_revocations(&self, now: u64) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let pruned = sqlx::query(
                "DELETE FROM revocations WHERE expires_at <= ? \
                 AND seq < (SELECT MAX(seq) FROM revocations)",
            )
            .bind(ts(now))
            .execute(&self.pool)
            .await?;
            Ok(pruned.rows_affected())
        })
    }
}

/// Appends one entry to the revocation feed, inside `tx`.
async fn insert_revocation(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    kind: RevocationKind,
    id: &str,
    expires_at: i64,
    now: u64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO revocations (kind, id, expires_at, revoked_at) VALUES (?, ?, ?, ?)")
        .bind(kind.as_str())
        .bind(id)
        .bind(expires_at)
        .bind(ts(now))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[tokio::test]
    async fn the_database_and_a_missing_parent_are_created_on_first_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/issuer.db");
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.path(), path);
        assert!(path.is_file());
        let mode = std::fs::metadata(dir.path().join("sub"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        // Opened again (a restart): migrations already applied, nothing lost.
        drop(store);
        SqliteStore::open(&path).await.unwrap();
    }
}
