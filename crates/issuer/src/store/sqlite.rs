//! [`Store`] on SQLite: one database file, created on first start, schema
//! from `migrations/sqlite/` (embedded in the binary) applied at open.
//!
//! WAL journal (readers never wait for the writer), `synchronous = FULL` (a
//! credential shown once must not vanish in a power cut), foreign keys on,
//! and a busy timeout so that concurrent writers queue instead of failing.

use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use authproxy_core::{Environment, WorkloadId};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::{
    CredentialOwner, GrantRecord, RootKeyRecord, Store, StoreError, StoreFuture, SyncApplied,
    SyncChanges, SyncState, WorkloadRecord, sql,
};
use crate::secret::SecretHash;

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
            let mut tx = self.pool.begin().await?;
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
            let mut tx = self.pool.begin().await?;
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
        _now: u64,
    ) -> StoreFuture<'a, Option<CredentialOwner>> {
        Box::pin(async move {
            let row = sqlx::query_as::<_, sql::OwnerRow>(sql::CREDENTIAL_OWNER)
                .bind(hash.as_bytes().as_slice())
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
