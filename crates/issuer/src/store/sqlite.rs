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
use authproxy_core::pat::PatName;
use authproxy_core::{Environment, ScopeSet, Scopes, WorkloadId};
use jsonwebtoken::jwk::Jwk;
use sqlx::Row as _;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use super::{
    CredentialOwner, GrantRecord, IdentityRecord, PatCreated, PatRecord, PatUpdate, PatUpdated,
    RevocationKind, RevocationRecord, RevocationsAfter, RootKeyRecord, RootKeyState, Store,
    StoreError, StoreFuture, SyncApplied, SyncChanges, SyncState, WorkloadRecord,
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
            .bind(grant.subject.to_string())
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
            let mut tx = self.pool.begin().await?;
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
            let mut tx = self.pool.begin().await?;
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
            let mut tx = self.pool.begin().await?;
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
            let mut tx = self.pool.begin().await?;
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

#[cfg(test)]
mod pat_tests {
    use super::*;
    use crate::store::BootstrapKind;
    use authproxy_core::Subject;

    const T0: u64 = 1_700_000_000;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("issuer.db"))
            .await
            .unwrap();
        (dir, store)
    }

    fn pat(name: &str, jti: &str, expires_at: u64) -> PatRecord {
        PatRecord {
            name: PatName::parse(name).unwrap(),
            environment: Environment::parse("main").unwrap(),
            scopes: Scopes::parse("task:operate:* env:view").unwrap(),
            jti: jti.into(),
            created_at: T0,
            updated_at: T0,
            expires_at,
            last_used_at: None,
        }
    }

    async fn create(store: &SqliteStore, pat: &PatRecord) {
        assert_eq!(store.create_pat(pat).await.unwrap(), PatCreated::Created);
    }

    fn ids(feed: &RevocationsAfter) -> Vec<(u64, &str, &str)> {
        feed.entries
            .iter()
            .map(|e| (e.seq, e.kind.as_str(), e.id.as_str()))
            .collect()
    }

    #[tokio::test]
    async fn a_name_is_taken_once_and_a_pat_is_found_by_name_and_current_id() {
        let (_dir, store) = store().await;
        let ci = pat("ci", "j1", T0 + 600);
        assert_eq!(store.create_pat(&ci).await.unwrap(), PatCreated::Created);
        let again = pat("ci", "j2", T0 + 600);
        assert_eq!(
            store.create_pat(&again).await.unwrap(),
            PatCreated::NameTaken
        );
        create(&store, &pat("a.b", "j3", T0 + 60)).await;

        assert_eq!(store.pat(&ci.name).await.unwrap(), Some(ci.clone()));
        assert_eq!(store.pat_by_jti("j1").await.unwrap(), Some(ci.clone()));
        assert_eq!(store.pat_by_jti("j2").await.unwrap(), None);
        let names: Vec<String> = store
            .pats()
            .await
            .unwrap()
            .iter()
            .map(|p| p.name.to_string())
            .collect();
        assert_eq!(names, ["a.b", "ci"]);
    }

    #[tokio::test]
    async fn an_update_replaces_the_version_it_read_and_puts_that_one_on_the_feed() {
        let (_dir, store) = store().await;
        let ci = pat("ci", "v1", T0 + 600);
        create(&store, &ci).await;
        let update = |previous: &str, jti: &str| PatUpdate {
            name: ci.name.clone(),
            previous_jti: previous.into(),
            jti: jti.into(),
            scopes: Scopes::parse("env:view").unwrap(),
            expires_at: T0 + 900,
        };
        assert_eq!(
            store
                .update_pat(&update("v1", "v2"), T0 + 10)
                .await
                .unwrap(),
            PatUpdated::Updated
        );
        // A concurrent update that read v1 too writes nothing.
        assert_eq!(
            store
                .update_pat(&update("v1", "v3"), T0 + 11)
                .await
                .unwrap(),
            PatUpdated::Changed
        );
        let now = store.pat(&ci.name).await.unwrap().unwrap();
        assert_eq!((now.jti.as_str(), now.expires_at), ("v2", T0 + 900));
        assert_eq!((now.created_at, now.updated_at), (T0, T0 + 10));
        assert_eq!(now.scopes.to_string(), "env:view");
        assert_eq!(store.pat_by_jti("v1").await.unwrap(), None);

        let feed = store.revocations_after(0, T0 + 20).await.unwrap();
        assert_eq!(ids(&feed), [(1, "pat", "v1")]);
        // It expires with the version it names.
        assert_eq!(feed.entries[0].expires_at, T0 + 600);
        let unknown = PatUpdate {
            name: PatName::parse("nope").unwrap(),
            ..update("v2", "v4")
        };
        assert_eq!(
            store.update_pat(&unknown, T0).await.unwrap(),
            PatUpdated::Changed
        );
    }

    #[tokio::test]
    async fn a_delete_removes_the_pat_and_puts_its_version_on_the_feed() {
        let (_dir, store) = store().await;
        let ci = pat("ci", "v1", T0 + 600);
        create(&store, &ci).await;
        assert_eq!(
            store.delete_pat(&ci.name, T0 + 5).await.unwrap(),
            Some(ci.clone())
        );
        assert_eq!(store.delete_pat(&ci.name, T0 + 6).await.unwrap(), None);
        assert_eq!(store.pat(&ci.name).await.unwrap(), None);
        let feed = store.revocations_after(0, T0 + 7).await.unwrap();
        assert_eq!(ids(&feed), [(1, "pat", "v1")]);
        // The name is free again.
        let again = pat("ci", "v2", T0 + 600);
        assert_eq!(store.create_pat(&again).await.unwrap(), PatCreated::Created);
    }

    #[tokio::test]
    async fn last_used_is_written_at_most_once_a_minute_and_only_for_current_versions() {
        let (_dir, store) = store().await;
        let ci = pat("ci", "v1", T0 + 6000);
        create(&store, &ci).await;
        let last_used = || async { store.pat(&ci.name).await.unwrap().unwrap().last_used_at };
        let reported = |ids: &[&str]| ids.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

        store
            .touch_pats(&reported(&["v1", "unknown"]), T0 + 100)
            .await
            .unwrap();
        assert_eq!(last_used().await, Some(T0 + 100));
        store
            .touch_pats(&reported(&["v1"]), T0 + 159)
            .await
            .unwrap();
        assert_eq!(last_used().await, Some(T0 + 100), "within the minute");
        store
            .touch_pats(&reported(&["v1"]), T0 + 160)
            .await
            .unwrap();
        assert_eq!(last_used().await, Some(T0 + 160));
        store.touch_pats(&[], T0 + 999).await.unwrap();
        assert_eq!(last_used().await, Some(T0 + 160));

        let update = PatUpdate {
            name: ci.name.clone(),
            previous_jti: "v1".into(),
            jti: "v2".into(),
            scopes: ci.scopes.clone(),
            expires_at: ci.expires_at,
        };
        assert_eq!(
            store.update_pat(&update, T0 + 200).await.unwrap(),
            PatUpdated::Updated
        );
        store
            .touch_pats(&reported(&["v1"]), T0 + 1000)
            .await
            .unwrap();
        assert_eq!(
            last_used().await,
            Some(T0 + 160),
            "a revoked version touches nothing"
        );
    }

    #[tokio::test]
    async fn the_feed_reads_after_a_cursor_without_expired_entries_and_pruning_keeps_the_newest() {
        let (_dir, store) = store().await;
        let empty = store.revocations_after(0, T0).await.unwrap();
        assert_eq!((empty.entries.len(), empty.newest), (0, 0));
        for (name, expires_at) in [("a", T0 + 100), ("b", T0 + 300), ("c", T0 + 200)] {
            create(&store, &pat(name, name, expires_at)).await;
            store
                .delete_pat(&PatName::parse(name).unwrap(), T0)
                .await
                .unwrap();
        }
        let all = store.revocations_after(0, T0 + 1).await.unwrap();
        assert_eq!(
            ids(&all),
            [(1, "pat", "a"), (2, "pat", "b"), (3, "pat", "c")]
        );
        assert_eq!(all.newest, 3);
        let after_one = store.revocations_after(1, T0 + 1).await.unwrap();
        assert_eq!(ids(&after_one), [(2, "pat", "b"), (3, "pat", "c")]);
        // `a` expired at T0 + 100, `c` at T0 + 200: gone from the feed.
        let later = store.revocations_after(0, T0 + 200).await.unwrap();
        assert_eq!(ids(&later), [(2, "pat", "b")]);
        assert_eq!(later.newest, 3);

        // Pruning at T0 + 200 deletes `a` but keeps `c`, the newest, so the
        // newest seq never goes back.
        assert_eq!(store.prune_revocations(T0 + 200).await.unwrap(), 1);
        assert_eq!(store.revocations_after(0, T0 + 1).await.unwrap().newest, 3);
        assert_eq!(store.prune_revocations(T0 + 10_000).await.unwrap(), 1);
        let pruned = store.revocations_after(0, T0).await.unwrap();
        assert_eq!((ids(&pruned), pruned.newest), (vec![(3, "pat", "c")], 3));
        // A later entry still gets a higher seq.
        create(&store, &pat("d", "d", T0 + 500)).await;
        store
            .delete_pat(&PatName::parse("d").unwrap(), T0)
            .await
            .unwrap();
        assert_eq!(
            ids(&store.revocations_after(3, T0).await.unwrap()),
            [(4, "pat", "d")]
        );
    }

    #[tokio::test]
    async fn a_workloads_live_grants_are_revoked_once() {
        let (_dir, store) = store().await;
        let main = Environment::parse("main").unwrap();
        let web: WorkloadId = "app/web".parse().unwrap();
        let grant = |jti: &str, environment: &str, subject: &str, expires_at: u64| GrantRecord {
            jti: jti.into(),
            environment: Environment::parse(environment).unwrap(),
            subject: subject.parse::<Subject>().unwrap(),
            identity: subject.into(),
            bootstrap: BootstrapKind::WorkloadCredential,
            root_kid: "kid".into(),
            issued_at: T0,
            expires_at,
        };
        for g in [
            grant("live1", "main", "app/web", T0 + 100),
            grant("live2", "main", "app/web", T0 + 200),
            grant("expired", "main", "app/web", T0 + 10),
            grant("other-env", "staging", "app/web", T0 + 100),
            grant("other-workload", "main", "task/x", T0 + 100),
            grant("a-pat", "main", "pat:web", T0 + 100),
        ] {
            store.record_grant(&g).await.unwrap();
        }
        assert_eq!(
            store
                .revoke_workload_grants(&main, &web, T0 + 50)
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            store
                .revoke_workload_grants(&main, &web, T0 + 51)
                .await
                .unwrap(),
            0,
            "already revoked"
        );
        let feed = store.revocations_after(0, T0 + 50).await.unwrap();
        assert_eq!(ids(&feed), [(1, "grant", "live1"), (2, "grant", "live2")]);
        assert_eq!(feed.entries[1].expires_at, T0 + 200);
    }
}
