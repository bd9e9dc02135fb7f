//! [`Store`] on SQLite: one database file, created on first start, schema
//! from `migrations/sqlite/` (embedded in the binary) applied at open.
//!
//! WAL journal (readers never wait for the writer), `synchronous = FULL` (a
//! credential shown once must not vanish in a power cut), foreign keys on,
//! and a busy timeout so that concurrent writers queue instead of failing.

use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use authproxy_core::keys::PublicKey;
use authproxy_core::{Environment, ScopeSet, WorkloadId};
use jsonwebtoken::jwk::Jwk;
use sqlx::Row as _;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use super::{
    CredentialOwner, GrantRecord, IdentityRecord, RootKeyRecord, RootKeyState, Store, StoreError,
    StoreFuture, SyncApplied, SyncChanges, SyncState, WorkloadRecord,
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

/// Unix seconds as SQL integers (PostgreSQL has no unsigned type either).
fn ts(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX)
}

fn from_ts(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn corrupt(what: &'static str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: detail.to_string(),
    }
}

fn scopes(s: &str) -> Result<ScopeSet, StoreError> {
    ScopeSet::parse(s).map_err(|e| corrupt("ceiling", e))
}

fn workload_id(s: &str) -> Result<WorkloadId, StoreError> {
    s.parse().map_err(|e| corrupt("workload id", e))
}

fn environment(s: &str) -> Result<Environment, StoreError> {
    Environment::parse(s).map_err(|e| corrupt("environment", e))
}

fn root_key(row: &SqliteRow) -> Result<RootKeyRecord, StoreError> {
    let jwk: String = row.try_get("public_jwk")?;
    let jwk: Jwk = serde_json::from_str(&jwk).map_err(|e| corrupt("root key", e))?;
    let public_key =
        PublicKey::from_jwk(&jwk).ok_or_else(|| corrupt("root key", "not an Ed25519 JWK"))?;
    let state: String = row.try_get("state")?;
    Ok(RootKeyRecord {
        node: row.try_get("node")?,
        public_key,
        state: RootKeyState::parse(&state).ok_or_else(|| corrupt("root key state", state))?,
        created_at: from_ts(row.try_get("created_at")?),
    })
}

fn workload_record(row: &SqliteRow) -> Result<WorkloadRecord, StoreError> {
    Ok(WorkloadRecord {
        workload: workload_id(row.try_get("workload")?)?,
        identity: row.try_get("identity")?,
        ceiling: scopes(row.try_get("ceiling")?)?,
        removed: row.try_get("removed")?,
    })
}

/// The workloads of an environment, each with its identity's ceiling.
macro_rules! select_workloads {
    ($($more:literal)?) => {
        concat!(
            "SELECT w.workload, w.identity, w.removed, i.ceiling ",
            "FROM workloads w JOIN identities i ",
            "ON i.environment = w.environment AND i.name = w.identity ",
            "WHERE w.environment = ?",
            $($more)?
        )
    };
}

impl Store for SqliteStore {
    fn record_root_key<'a>(&'a self, key: &'a RootKeyRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move {
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
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn live_root_keys(&self, _now: u64) -> StoreFuture<'_, Vec<RootKeyRecord>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT node, public_jwk, state, created_at FROM root_keys \
                 WHERE state IN ('active', 'retiring') ORDER BY created_at, kid",
            )
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(root_key).collect()
        })
    }

    fn add_admin_token<'a>(&'a self, hash: &'a SecretHash, now: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO admin_tokens (hash, created_at) VALUES (?, ?) \
                 ON CONFLICT (hash) DO NOTHING",
            )
            .bind(hash.as_bytes().as_slice())
            .bind(ts(now))
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn admin_token_hashes(&self, _now: u64) -> StoreFuture<'_, Vec<SecretHash>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT hash FROM admin_tokens WHERE revoked = 0")
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(|row| {
                    let bytes: Vec<u8> = row.try_get("hash")?;
                    SecretHash::from_bytes(&bytes)
                        .ok_or_else(|| corrupt("admin token hash", "not 32 bytes"))
                })
                .collect()
        })
    }

    fn sync_state<'a>(&'a self, env: &'a Environment) -> StoreFuture<'a, SyncState> {
        Box::pin(async move {
            // One read transaction: a consistent snapshot of the environment.
            let mut tx = self.pool.begin().await?;
            let version: Option<i64> =
                sqlx::query_scalar("SELECT version FROM environments WHERE name = ?")
                    .bind(env.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            let identity_rows =
                sqlx::query("SELECT name, ceiling, removed FROM identities WHERE environment = ?")
                    .bind(env.as_str())
                    .fetch_all(&mut *tx)
                    .await?;
            let workload_rows = sqlx::query(select_workloads!())
                .bind(env.as_str())
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;

            let mut identities = std::collections::BTreeMap::new();
            for row in &identity_rows {
                let name: String = row.try_get("name")?;
                let record = IdentityRecord {
                    name: name.clone(),
                    ceiling: scopes(row.try_get("ceiling")?)?,
                    removed: row.try_get("removed")?,
                };
                identities.insert(name, record);
            }
            let mut workloads = std::collections::BTreeMap::new();
            for row in &workload_rows {
                let record = workload_record(row)?;
                workloads.insert(record.workload.clone(), record);
            }
            Ok(SyncState {
                environment: env.clone(),
                version: version.unwrap_or(0),
                identities,
                workloads,
            })
        })
    }

    fn apply_sync<'a>(
        &'a self,
        changes: &'a SyncChanges,
        now: u64,
    ) -> StoreFuture<'a, SyncApplied> {
        Box::pin(async move {
            let env = changes.environment.as_str();
            let now = ts(now);
            let mut tx = self.pool.begin().await?;
            // The first statement writes, so SQLite takes the write lock
            // here and the version check below sees every committed sync.
            sqlx::query(
                "INSERT INTO environments (name, version) VALUES (?, 0) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(env)
            .execute(&mut *tx)
            .await?;
            let bumped = sqlx::query(
                "UPDATE environments SET version = version + 1 WHERE name = ? AND version = ?",
            )
            .bind(env)
            .bind(changes.expected_version)
            .execute(&mut *tx)
            .await?;
            if bumped.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok(SyncApplied::Conflict);
            }
            for (name, ceiling) in &changes.create_identities {
                sqlx::query(
                    "INSERT INTO identities \
                     (environment, name, ceiling, removed, created_at, updated_at) \
                     VALUES (?, ?, ?, 0, ?, ?)",
                )
                .bind(env)
                .bind(name)
                .bind(ceiling.to_string())
                .bind(now)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            for (name, ceiling) in &changes.update_identities {
                sqlx::query(
                    "UPDATE identities SET ceiling = ?, removed = 0, updated_at = ? \
                     WHERE environment = ? AND name = ?",
                )
                .bind(ceiling.to_string())
                .bind(now)
                .bind(env)
                .bind(name)
                .execute(&mut *tx)
                .await?;
            }
            for name in &changes.remove_identities {
                sqlx::query(
                    "UPDATE identities SET removed = 1, updated_at = ? \
                     WHERE environment = ? AND name = ?",
                )
                .bind(now)
                .bind(env)
                .bind(name)
                .execute(&mut *tx)
                .await?;
            }
            for (workload, identity) in &changes.link_workloads {
                sqlx::query(
                    "INSERT INTO workloads \
                     (environment, workload, identity, removed, created_at, updated_at) \
                     VALUES (?, ?, ?, 0, ?, ?) \
                     ON CONFLICT (environment, workload) DO UPDATE SET \
                     identity = excluded.identity, removed = 0, updated_at = excluded.updated_at",
                )
                .bind(env)
                .bind(workload.to_string())
                .bind(identity)
                .bind(now)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            for workload in &changes.remove_workloads {
                sqlx::query(
                    "UPDATE workloads SET removed = 1, updated_at = ? \
                     WHERE environment = ? AND workload = ?",
                )
                .bind(now)
                .bind(env)
                .bind(workload.to_string())
                .execute(&mut *tx)
                .await?;
            }
            for (identity, hash) in &changes.new_credentials {
                sqlx::query(
                    "INSERT INTO workload_credentials (hash, environment, identity, created_at) \
                     VALUES (?, ?, ?, ?)",
                )
                .bind(hash.as_bytes().as_slice())
                .bind(env)
                .bind(identity)
                .bind(now)
                .execute(&mut *tx)
                .await?;
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
            // A lookup by hash through the primary-key index. Its timing can
            // at most reveal bytes of a SHA-256 of a 256-bit random secret,
            // which does not help to find the secret. A rotated value stops
            // at the end of its grace (`expires_at`, migration 0003), even
            // if the task that revokes it never runs.
            let row = sqlx::query(
                "SELECT environment, identity FROM workload_credentials \
                 WHERE hash = ? AND revoked = 0 AND (expires_at IS NULL OR expires_at > ?)",
            )
            .bind(hash.as_bytes().as_slice())
            .bind(ts(now))
            .fetch_optional(&self.pool)
            .await?;
            row.map(|row| {
                Ok(CredentialOwner {
                    environment: environment(row.try_get("environment")?)?,
                    identity: row.try_get("identity")?,
                })
            })
            .transpose()
        })
    }

    fn workload<'a>(
        &'a self,
        env: &'a Environment,
        workload: &'a WorkloadId,
    ) -> StoreFuture<'a, Option<WorkloadRecord>> {
        Box::pin(async move {
            let row = sqlx::query(select_workloads!(" AND w.workload = ?"))
                .bind(env.as_str())
                .bind(workload.to_string())
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(workload_record).transpose()
        })
    }

    fn record_grant<'a>(&'a self, grant: &'a GrantRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO grants \
                 (jti, environment, workload, identity, bootstrap, root_kid, issued_at, expires_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&grant.jti)
            .bind(grant.environment.as_str())
            .bind(grant.workload.to_string())
            .bind(&grant.identity)
            .bind(grant.bootstrap.as_str())
            .bind(&grant.root_kid)
            .bind(ts(grant.issued_at))
            .bind(ts(grant.expires_at))
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::{Secret, WORKLOAD_CREDENTIAL_PREFIX};

    fn main_env() -> Environment {
        Environment::parse("main").unwrap()
    }

    fn create_web(expected_version: i64) -> SyncChanges {
        let credential = Secret::generate(WORKLOAD_CREDENTIAL_PREFIX).unwrap();
        SyncChanges {
            environment: main_env(),
            expected_version,
            create_identities: vec![("app/web".into(), ScopeSet::parse("env:view").unwrap())],
            update_identities: Vec::new(),
            remove_identities: Vec::new(),
            link_workloads: vec![("app/web".parse().unwrap(), "app/web".into())],
            remove_workloads: Vec::new(),
            new_credentials: vec![("app/web".into(), credential.hash())],
        }
    }

    #[tokio::test]
    async fn a_sync_planned_on_a_stale_version_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("sub/issuer.db"))
            .await
            .unwrap();
        let empty = store.sync_state(&main_env()).await.unwrap();
        assert_eq!(empty.version, 0);

        // Two syncs planned on the same (empty) state: the first wins.
        let first = create_web(0);
        let second = create_web(0);
        assert_eq!(
            store.apply_sync(&first, 100).await.unwrap(),
            SyncApplied::Applied
        );
        assert_eq!(
            store.apply_sync(&second, 101).await.unwrap(),
            SyncApplied::Conflict
        );

        let state = store.sync_state(&main_env()).await.unwrap();
        assert_eq!(state.version, 1);
        assert_eq!(state.identities.len(), 1);
        let web = &state.workloads[&"app/web".parse().unwrap()];
        assert_eq!(web.identity, "app/web");
        assert_eq!(web.ceiling.to_string(), "env:view");
        assert!(!web.removed);
        // Only the winner's credential was stored.
        let (_, won) = &first.new_credentials[0];
        let (_, lost) = &second.new_credentials[0];
        assert!(store.credential_owner(won, 102).await.unwrap().is_some());
        assert!(store.credential_owner(lost, 102).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn root_keys_and_admin_tokens_are_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("issuer.db"))
            .await
            .unwrap();
        let key = authproxy_core::keys::SigningKey::generate().unwrap();
        let record = RootKeyRecord {
            node: "n1".into(),
            public_key: key.public().clone(),
            state: RootKeyState::Active,
            created_at: 5,
        };
        store.record_root_key(&record).await.unwrap();
        store.record_root_key(&record).await.unwrap();
        let live = store.live_root_keys(6).await.unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].public_key.thumbprint(), key.public().thumbprint());
        assert_eq!((live[0].node.as_str(), live[0].created_at), ("n1", 5));

        let token = Secret::generate(crate::secret::ADMIN_TOKEN_PREFIX).unwrap();
        store.add_admin_token(&token.hash(), 7).await.unwrap();
        store.add_admin_token(&token.hash(), 8).await.unwrap();
        assert_eq!(store.admin_token_hashes(9).await.unwrap(), [token.hash()]);
    }
}
