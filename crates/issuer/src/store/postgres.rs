//! [`Store`] on PostgreSQL: the state every issuer node shares (DESIGN
//! §8), schema from `migrations/postgres/` (embedded in the binary),
//! applied at open under PostgreSQL's advisory lock — so nodes starting at
//! once migrate once.
//!
//! The statements are SQLite's ([`super::sql`]); what keeps two nodes from
//! losing each other's writes is how they run here:
//! - a sync runs in one `READ COMMITTED` transaction whose first write is
//!   the version check `UPDATE environments … WHERE version = $planned`.
//!   That takes the environment's row lock, so the syncs of one environment
//!   queue behind each other whatever node they come through; and when the
//!   lock is granted PostgreSQL re-reads the row, so the loser of a race
//!   sees the winner's version, updates nothing and writes nothing (a
//!   conflict: the issuer plans again). Asked for explicitly, because under
//!   a server whose default isolation is `SERIALIZABLE` the loser would get
//!   a serialization error instead of a conflict;
//! - the state a sync plans against is read in one `REPEATABLE READ` read-only
//!   transaction: one snapshot, never half of another node's sync;
//! - records that may be written twice (a node's root key at every start, an
//!   admin token) are `INSERT … ON CONFLICT DO NOTHING`, atomic on its own.
//! - a PAT update or delete is guarded by the version it read (`WHERE jti =
//!   $previous`): the row lock makes the second of two racing nodes re-read
//!   the row, update nothing and report the change;
//! - the revocation feed's cursor is one sequence for every node, and every
//!   transaction that appends to the feed takes one advisory lock
//!   ([`REVOCATION_FEED_LOCK`]) before it draws a number, so numbers commit
//!   in order and a layer polling any node never skips an entry;
//! - the task worker's claim ([`credentials`]) locks the credential, then the
//!   task, with `FOR UPDATE SKIP LOCKED`: one task runs on one node, one
//!   task at a time per credential, and workers never queue behind each
//!   other; every later write of a worker is fenced by its claim.
//!
//! The URL may carry a password: it is held by [`PostgresUrl`], which only
//! ever shows it as `***`. No TLS in this build: reach PostgreSQL over a unix
//! socket or a private network (`sslmode=require` is refused at config time).

use std::fmt;
use std::str::FromStr as _;
use std::time::Duration;

use authproxy_core::pat::PatName;
use authproxy_core::{Environment, Scopes, WorkloadId};
use sqlx::Row as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};

use super::sql::{corrupt, from_ts, ts};
use super::{
    CredentialOwner, GrantRecord, PatCreated, PatRecord, PatUpdate, PatUpdated, RevocationKind,
    RevocationRecord, RevocationsAfter, RootKeyRecord, Store, StoreError, StoreFuture, SyncApplied,
    SyncChanges, SyncState, WorkloadRecord, sql,
};
use crate::secret::SecretHash;

mod credentials;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections per node. A grant takes three short queries; a sync holds
/// one connection for its transaction.
const MAX_CONNECTIONS: u32 = 16;
/// How long a request waits for a free connection (or a new one) before it
/// fails with a 500 — and its sidecar asks the next issuer.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Server-side bounds for each session: no statement runs longer, and no
/// transaction left open by a node that vanished mid-sync holds the
/// environment's row lock longer.
const SESSION_SETTINGS: [(&str, &str); 2] = [
    ("statement_timeout", "60s"),
    ("idle_in_transaction_session_timeout", "60s"),
];

/// The connection parameters `[store] url` may carry; anything else is
/// refused, so that a typo is not silently ignored.
const PARAMETERS: [&str; 8] = [
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "sslmode",
];

/// A `postgres://` store URL. It may hold a password, so it never prints
/// whole: `Debug` and `Display` show it with the password as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl {
    url: String,
    shown: String,
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl PostgresUrl {
    /// Parses `postgres://[user[:password]@][host][:port]/database[?param=value…]`
    /// (or `postgresql://`). A unix socket directory goes in `?host=/path`.
    /// The error never repeats the URL: it may hold a password.
    pub fn parse(url: &str) -> Result<Self, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("is not a URL ({e})"))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err("must start with postgres:// or postgresql://".into());
        }
        let mut shown = parsed.clone();
        if parsed.password().is_some() {
            // Cannot fail: the URL has a host, or it would have no password.
            let _ = shown.set_password(Some("***"));
        }
        let mut has_database = !parsed.path().trim_start_matches('/').is_empty();
        for (key, value) in parsed.query_pairs() {
            if !PARAMETERS.contains(&key.as_ref()) {
                return Err(format!(
                    "has the parameter `{key}`, which is not one of {}",
                    PARAMETERS.join(", ")
                ));
            }
            if key == "sslmode" && !matches!(value.as_ref(), "disable" | "allow" | "prefer") {
                return Err(format!(
                    "asks for sslmode={value}, but this build has no TLS to PostgreSQL: reach it \
                     over a unix socket (?host=/run/postgresql) or a private network"
                ));
            }
            has_database |= key == "dbname";
        }
        if !has_database {
            return Err("names no database (postgres://user@host/DATABASE)".into());
        }
        if parsed.query_pairs().any(|(k, _)| k == "password") {
            let hidden: Vec<(String, String)> = parsed
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k == "password" { "***".into() } else { v };
                    (k.into_owned(), v.into_owned())
                })
                .collect();
            shown.query_pairs_mut().clear().extend_pairs(hidden);
        }
        Ok(Self {
            url: url.to_owned(),
            shown: shown.to_string(),
        })
    }

    /// The URL with its password, for the driver only.
    fn expose(&self) -> &str {
        &self.url
    }
}

/// The PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database at `url` (which must exist: creating
    /// databases is the DBA's job), applies pending migrations, and names
    /// its sessions `application_name` (default `authproxy-issuer`) for
    /// `pg_stat_activity`.
    pub async fn open(url: &PostgresUrl) -> Result<Self, StoreError> {
        let location = url.to_string();
        let open_error = |source| StoreError::Open {
            location: location.clone(),
            source,
        };
        let mut options = PgConnectOptions::from_str(url.expose()).map_err(open_error)?;
        if options.get_application_name().is_none() {
            options = options.application_name("authproxy-issuer");
        }
        let options = options.options(SESSION_SETTINGS);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(open_error)?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }
}

/// How every transaction that writes begins: explicitly, whatever the
/// server's default (see the module doc).
const READ_COMMITTED: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";

/// The key of the transaction-scoped advisory lock every transaction that
/// appends to the revocation feed takes before it draws a `seq` (an
/// arbitrary constant, "authrevo" in ASCII; nothing else in the database
/// uses advisory locks but the migrator, whose key differs).
const REVOCATION_FEED_LOCK: i64 = 0x6175_7468_7265_766F;

fn environment(s: &str) -> Result<Environment, StoreError> {
    Environment::parse(s).map_err(|e| corrupt("environment", e))
}

fn pat_record(row: &PgRow) -> Result<PatRecord, StoreError> {
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

impl Store for PostgresStore {
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
            // One snapshot for the three reads (see the module doc).
            let mut tx = self
                .pool
                .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?;
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
            let mut tx = self.pool.begin_with(READ_COMMITTED).await?;
            // A first sync of the environment creates its row; a concurrent
            // first sync waits here for that insert to commit or roll back.
            sqlx::query(sql::ENSURE_ENVIRONMENT)
                .bind(env)
                .execute(&mut *tx)
                .await?;
            // The row lock, then the check against the latest committed
            // version (see the module doc).
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
                 VALUES ($1, $2, $3, $4, $5, $6, $7, NULL) ON CONFLICT (name) DO NOTHING",
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
            let row = sqlx::query(&format!("{SELECT_PATS} WHERE name = $1"))
                .bind(name.as_str())
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(pat_record).transpose()
        })
    }

    fn pats(&self) -> StoreFuture<'_, Vec<PatRecord>> {
        Box::pin(async move {
            let rows = sqlx::query(&format!("{SELECT_PATS} ORDER BY name COLLATE \"C\""))
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map(pat_record).collect()
        })
    }

    fn pat_by_jti<'a>(&'a self, jti: &'a str) -> StoreFuture<'a, Option<PatRecord>> {
        Box::pin(async move {
            let row = sqlx::query(&format!("{SELECT_PATS} WHERE jti = $1"))
                .bind(jti)
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(pat_record).transpose()
        })
    }

    fn update_pat<'a>(&'a self, update: &'a PatUpdate, now: u64) -> StoreFuture<'a, PatUpdated> {
        Box::pin(async move {
            let mut tx = self.pool.begin_with(READ_COMMITTED).await?;
            let previous_expiry: Option<i64> =
                sqlx::query_scalar("SELECT expires_at FROM pats WHERE name = $1 AND jti = $2")
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
                "UPDATE pats SET jti = $1, scopes = $2, expires_at = $3, updated_at = $4 \
                 WHERE name = $5 AND jti = $6",
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
            let mut tx = self.pool.begin_with(READ_COMMITTED).await?;
            let row = sqlx::query(&format!("{SELECT_PATS} WHERE name = $1"))
                .bind(name.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            let Some(record) = row.as_ref().map(pat_record).transpose()? else {
                tx.rollback().await?;
                return Ok(None);
            };
            let deleted = sqlx::query("DELETE FROM pats WHERE name = $1 AND jti = $2")
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
            let mut tx = self.pool.begin_with(READ_COMMITTED).await?;
            for jti in jtis {
                sqlx::query(
                    "UPDATE pats SET last_used_at = $1 \
                     WHERE jti = $2 AND (last_used_at IS NULL OR last_used_at <= $3)",
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
            // One snapshot: the entries and the newest seq agree. Appends
            // commit in `seq` order (REVOCATION_FEED_LOCK), so a snapshot
            // that holds an entry holds every entry before it.
            let mut tx = self
                .pool
                .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?;
            let rows = sqlx::query(
                "SELECT seq, kind, id, expires_at FROM revocations \
                 WHERE seq > $1 AND expires_at > $2 ORDER BY seq",
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
            let mut tx = self.pool.begin_with(READ_COMMITTED).await?;
            // The feed's lock first: the statement below then reads (READ
            // COMMITTED: a snapshot taken after the lock) every entry a
            // concurrent revocation appended, so it appends each grant once.
            lock_feed(&mut tx).await?;
            let revoked = sqlx::query(
                "INSERT INTO revocations (kind, id, expires_at, revoked_at) \
                 SELECT 'grant', g.jti, g.expires_at, $1 FROM grants g \
                 WHERE g.environment = $2 AND g.workload = $3 AND g.expires_at > $4 \
                 AND NOT EXISTS (SELECT 1 FROM revocations r \
                                 WHERE r.kind = 'grant' AND r.id = g.jti) \
                 ORDER BY g.issued_at, g.jti",
            )
            .bind(ts(now))
            .bind(env.as_str())
            .bind(workload.to_string())
            .bind(ts(now))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(revoked.rows_affected())
        })
    }

    fn prune_revocations(&self, now: u64) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let pruned = sqlx::query(
                "DELETE FROM revocations WHERE expires_at <= $1 \
                 AND seq < (SELECT MAX(seq) FROM revocations)",
            )
            .bind(ts(now))
            .execute(&self.pool)
            .await?;
            Ok(pruned.rows_affected())
        })
    }
}

/// Takes the revocation feed's lock for the rest of `tx`: before a
/// transaction draws a `seq`, every transaction that drew a smaller one has
/// committed or rolled back. Without it, node A could draw 7, node B draw 8
/// and commit first, and a layer reading 8 would set its cursor past 7
/// before 7 is visible, never to see it.
async fn lock_feed(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(REVOCATION_FEED_LOCK)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Appends one entry to the revocation feed, inside `tx`, under the feed's
/// lock ([`lock_feed`]).
async fn insert_revocation(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    kind: RevocationKind,
    id: &str,
    expires_at: i64,
    now: u64,
) -> Result<(), StoreError> {
    lock_feed(tx).await?;
    sqlx::query(
        "INSERT INTO revocations (kind, id, expires_at, revoked_at) VALUES ($1, $2, $3, $4)",
    )
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

    #[test]
    fn a_url_never_shows_its_password() {
        for (url, shown) in [
            (
                "postgres://issuer:hunter2@db.internal:5433/authproxy",
                "postgres://issuer:***@db.internal:5433/authproxy",
            ),
            (
                "postgresql://issuer@db/authproxy?password=hunter2&application_name=n1",
                "postgresql://issuer@db/authproxy?password=***&application_name=n1",
            ),
            (
                "postgres://authproxy@localhost/issuer?host=/run/postgresql",
                "postgres://authproxy@localhost/issuer?host=/run/postgresql",
            ),
            ("postgres:///issuer", "postgres:///issuer"),
        ] {
            let parsed = PostgresUrl::parse(url).unwrap();
            assert_eq!(parsed.to_string(), shown, "{url}");
            assert_eq!(format!("{parsed:?}"), shown, "{url}");
            assert_eq!(parsed.expose(), url);
        }
    }

    #[test]
    fn a_bad_url_is_refused_without_repeating_it() {
        for (url, needle) in [
            ("postgres://u:hunter2@db:99999/x", "not a URL"),
            ("mysql://u:hunter2@db/x", "postgres://"),
            ("postgres://u:hunter2@db/x?passwd=hunter2", "`passwd`"),
            ("postgres://u:hunter2@db/x?sslmode=require", "no TLS"),
            ("postgres://u:hunter2@db", "no database"),
            ("postgres://u:hunter2@db/", "no database"),
        ] {
            let e = PostgresUrl::parse(url).unwrap_err();
            assert!(e.contains(needle), "{url}: {e}");
            assert!(!e.contains("hunter2"), "{url}: {e}");
        }
        assert!(PostgresUrl::parse("postgres://u@db/?dbname=x").is_ok());
    }
}
