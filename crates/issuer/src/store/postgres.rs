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
//!
//! The URL may carry a password: it is held by [`PostgresUrl`], which only
//! ever shows it as `***`. No TLS in this build: reach PostgreSQL over a unix
//! socket or a private network (`sslmode=require` is refused at config time).

use std::fmt;
use std::str::FromStr as _;
use std::time::Duration;

use authproxy_core::{Environment, WorkloadId};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::{
    CredentialOwner, GrantRecord, RootKeyRecord, Store, StoreError, StoreFuture, SyncApplied,
    SyncChanges, SyncState, WorkloadRecord, sql,
};
use crate::secret::SecretHash;

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
            let mut tx = self
                .pool
                .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
                .await?;
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
