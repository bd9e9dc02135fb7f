//! What the two SQL stores share, so that they cannot drift apart: every
//! statement (written once, in the SQL both SQLite and PostgreSQL accept —
//! `$N` parameters, `TRUE`/`FALSE`, `INSERT … ON CONFLICT`), the writes of
//! a sync in order, the rows the reads return and how a row becomes a
//! record. A backend adds only what differs: opening, pooling, and how its
//! transactions isolate (see each backend's module doc).

use authproxy_core::keys::PublicKey;
use authproxy_core::{Environment, ScopeSet};
use jsonwebtoken::jwk::Jwk;
use sqlx::query::Query;
use sqlx::{Database, Encode, Type};

use super::{
    CredentialOwner, GrantRecord, IdentityRecord, RootKeyRecord, RootKeyState, StoreError,
    SyncChanges, WorkloadRecord,
};
use crate::secret::SecretHash;

/// Records a root public key; a key already known is left as it is (so
/// two nodes, or one node restarting, may record it at the same time).
pub(super) const INSERT_ROOT_KEY: &str = "\
    INSERT INTO root_keys (kid, node, public_jwk, state, created_at) \
    VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kid) DO NOTHING";

pub(super) const LIVE_ROOT_KEYS: &str = "\
    SELECT node, public_jwk, state, created_at FROM root_keys \
    WHERE state IN ('active', 'retiring') ORDER BY created_at, kid";

/// Adds an admin token's hash; re-adding one does not un-revoke it.
pub(super) const INSERT_ADMIN_TOKEN: &str = "\
    INSERT INTO admin_tokens (hash, created_at) VALUES ($1, $2) \
    ON CONFLICT (hash) DO NOTHING";

pub(super) const ADMIN_TOKEN_HASHES: &str = "SELECT hash FROM admin_tokens WHERE revoked = FALSE";

pub(super) const ENVIRONMENT_VERSION: &str = "SELECT version FROM environments WHERE name = $1";

pub(super) const IDENTITIES: &str =
    "SELECT name, ceiling, removed FROM identities WHERE environment = $1";

/// The workloads of an environment, each with its identity's ceiling.
pub(super) const WORKLOADS: &str = "\
    SELECT w.workload, w.identity, w.removed, i.ceiling \
    FROM workloads w JOIN identities i ON i.environment = w.environment AND i.name = w.identity \
    WHERE w.environment = $1";

pub(super) const WORKLOAD: &str = "\
    SELECT w.workload, w.identity, w.removed, i.ceiling \
    FROM workloads w JOIN identities i ON i.environment = w.environment AND i.name = w.identity \
    WHERE w.environment = $1 AND w.workload = $2";

/// A lookup by hash through the primary-key index. Its timing can at most
/// reveal bytes of a SHA-256 of a 256-bit random secret, which does not
/// help to find the secret. A rotated value stops at the end of its grace
/// (`expires_at`, migration 0003), even if the task that revokes it never
/// runs.
pub(super) const CREDENTIAL_OWNER: &str = "\
    SELECT environment, identity FROM workload_credentials \
    WHERE hash = $1 AND revoked = FALSE AND (expires_at IS NULL OR expires_at > $2)";

pub(super) const INSERT_GRANT: &str = "\
    INSERT INTO grants \
    (jti, environment, workload, identity, bootstrap, root_kid, issued_at, expires_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// The first statement of a sync: the environment's row, created at version
/// 0 on its first sync.
pub(super) const ENSURE_ENVIRONMENT: &str = "\
    INSERT INTO environments (name, version) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING";

/// The optimistic lock: moves the version on only if it is still the one
/// the sync was planned against. One row updated, or none (a conflict).
pub(super) const BUMP_VERSION: &str =
    "UPDATE environments SET version = version + 1 WHERE name = $1 AND version = $2";

const CREATE_IDENTITY: &str = "\
    INSERT INTO identities (environment, name, ceiling, removed, created_at, updated_at) \
    VALUES ($1, $2, $3, FALSE, $4, $4)";

const UPDATE_IDENTITY: &str = "\
    UPDATE identities SET ceiling = $1, removed = FALSE, updated_at = $2 \
    WHERE environment = $3 AND name = $4";

const REMOVE_IDENTITY: &str = "\
    UPDATE identities SET removed = TRUE, updated_at = $1 WHERE environment = $2 AND name = $3";

const LINK_WORKLOAD: &str = "\
    INSERT INTO workloads (environment, workload, identity, removed, created_at, updated_at) \
    VALUES ($1, $2, $3, FALSE, $4, $4) \
    ON CONFLICT (environment, workload) DO UPDATE SET \
    identity = excluded.identity, removed = FALSE, updated_at = excluded.updated_at";

const REMOVE_WORKLOAD: &str = "\
    UPDATE workloads SET removed = TRUE, updated_at = $1 WHERE environment = $2 AND workload = $3";

const INSERT_CREDENTIAL: &str = "\
    INSERT INTO workload_credentials (hash, environment, identity, created_at) \
    VALUES ($1, $2, $3, $4)";

/// A value bound to a statement parameter.
#[derive(Debug)]
pub(super) enum Param<'a> {
    /// Borrowed text.
    Text(&'a str),
    /// Text made for the statement (a rendered ceiling or workload id).
    String(String),
    /// An integer (unix seconds).
    Int(i64),
    /// Bytes (a hash).
    Bytes(&'a [u8]),
}

/// One statement with its parameters.
#[derive(Debug)]
pub(super) struct Statement<'a> {
    pub(super) sql: &'static str,
    pub(super) params: Vec<Param<'a>>,
}

impl<'a> Statement<'a> {
    fn new(sql: &'static str, params: Vec<Param<'a>>) -> Self {
        Self { sql, params }
    }

    /// The statement as a query with its parameters bound, for any backend.
    pub(super) fn query<DB: Database>(&'a self) -> Query<'a, DB, DB::Arguments<'a>>
    where
        &'a str: Encode<'a, DB> + Type<DB>,
        i64: Encode<'a, DB> + Type<DB>,
        &'a [u8]: Encode<'a, DB> + Type<DB>,
    {
        self.params
            .iter()
            .fold(sqlx::query(self.sql), |query, param| match param {
                Param::Text(s) => query.bind(*s),
                Param::String(s) => query.bind(s.as_str()),
                Param::Int(i) => query.bind(*i),
                Param::Bytes(b) => query.bind(*b),
            })
    }
}

/// What a sync writes once the version check has passed, in order:
/// identities before the workloads and credentials that refer to them.
pub(super) fn sync_writes(changes: &SyncChanges, now: u64) -> Vec<Statement<'_>> {
    use Param::{Bytes, Int, String, Text};
    let env = changes.environment.as_str();
    let now = ts(now);
    let mut writes = Vec::new();
    for (name, ceiling) in &changes.create_identities {
        writes.push(Statement::new(
            CREATE_IDENTITY,
            vec![Text(env), Text(name), String(ceiling.to_string()), Int(now)],
        ));
    }
    for (name, ceiling) in &changes.update_identities {
        writes.push(Statement::new(
            UPDATE_IDENTITY,
            vec![String(ceiling.to_string()), Int(now), Text(env), Text(name)],
        ));
    }
    for name in &changes.remove_identities {
        writes.push(Statement::new(
            REMOVE_IDENTITY,
            vec![Int(now), Text(env), Text(name)],
        ));
    }
    for (workload, identity) in &changes.link_workloads {
        writes.push(Statement::new(
            LINK_WORKLOAD,
            vec![
                Text(env),
                String(workload.to_string()),
                Text(identity),
                Int(now),
            ],
        ));
    }
    for workload in &changes.remove_workloads {
        writes.push(Statement::new(
            REMOVE_WORKLOAD,
            vec![Int(now), Text(env), String(workload.to_string())],
        ));
    }
    for (identity, hash) in &changes.new_credentials {
        writes.push(Statement::new(
            INSERT_CREDENTIAL,
            vec![Bytes(hash.as_bytes()), Text(env), Text(identity), Int(now)],
        ));
    }
    writes
}

/// The parameters of [`INSERT_ROOT_KEY`].
pub(super) fn root_key_insert(key: &RootKeyRecord) -> Result<Statement<'_>, StoreError> {
    let jwk =
        serde_json::to_string(&key.public_key.bare_jwk()).map_err(|e| corrupt("root key", e))?;
    Ok(Statement::new(
        INSERT_ROOT_KEY,
        vec![
            Param::Text(key.public_key.thumbprint()),
            Param::Text(&key.node),
            Param::String(jwk),
            Param::Text(key.state.as_str()),
            Param::Int(ts(key.created_at)),
        ],
    ))
}

/// The parameters of [`INSERT_GRANT`].
pub(super) fn grant_insert(grant: &GrantRecord) -> Statement<'_> {
    Statement::new(
        INSERT_GRANT,
        vec![
            Param::Text(&grant.jti),
            Param::Text(grant.environment.as_str()),
            Param::String(grant.subject.to_string()),
            Param::Text(&grant.identity),
            Param::Text(grant.bootstrap.as_str()),
            Param::Text(&grant.root_kid),
            Param::Int(ts(grant.issued_at)),
            Param::Int(ts(grant.expires_at)),
        ],
    )
}

/// A row of [`LIVE_ROOT_KEYS`].
#[derive(sqlx::FromRow)]
pub(super) struct RootKeyRow {
    node: String,
    public_jwk: String,
    state: String,
    created_at: i64,
}

impl TryFrom<RootKeyRow> for RootKeyRecord {
    type Error = StoreError;

    fn try_from(row: RootKeyRow) -> Result<Self, StoreError> {
        let jwk: Jwk = serde_json::from_str(&row.public_jwk).map_err(|e| corrupt("root key", e))?;
        let public_key =
            PublicKey::from_jwk(&jwk).ok_or_else(|| corrupt("root key", "not an Ed25519 JWK"))?;
        Ok(Self {
            node: row.node,
            public_key,
            state: RootKeyState::parse(&row.state)
                .ok_or_else(|| corrupt("root key state", &row.state))?,
            created_at: from_ts(row.created_at),
        })
    }
}

/// A row of [`IDENTITIES`].
#[derive(sqlx::FromRow)]
pub(super) struct IdentityRow {
    name: String,
    ceiling: String,
    removed: bool,
}

impl TryFrom<IdentityRow> for IdentityRecord {
    type Error = StoreError;

    fn try_from(row: IdentityRow) -> Result<Self, StoreError> {
        Ok(Self {
            ceiling: scopes(&row.ceiling)?,
            name: row.name,
            removed: row.removed,
        })
    }
}

/// A row of [`WORKLOADS`] and [`WORKLOAD`].
#[derive(sqlx::FromRow)]
pub(super) struct WorkloadRow {
    workload: String,
    identity: String,
    removed: bool,
    ceiling: String,
}

impl TryFrom<WorkloadRow> for WorkloadRecord {
    type Error = StoreError;

    fn try_from(row: WorkloadRow) -> Result<Self, StoreError> {
        Ok(Self {
            workload: row
                .workload
                .parse()
                .map_err(|e| corrupt("workload id", e))?,
            identity: row.identity,
            ceiling: scopes(&row.ceiling)?,
            removed: row.removed,
        })
    }
}

/// A row of [`CREDENTIAL_OWNER`].
#[derive(sqlx::FromRow)]
pub(super) struct OwnerRow {
    environment: String,
    identity: String,
}

impl TryFrom<OwnerRow> for CredentialOwner {
    type Error = StoreError;

    fn try_from(row: OwnerRow) -> Result<Self, StoreError> {
        Ok(Self {
            environment: Environment::parse(&row.environment)
                .map_err(|e| corrupt("environment", e))?,
            identity: row.identity,
        })
    }
}

/// A hash read back from the store.
pub(super) fn secret_hash(bytes: &[u8]) -> Result<SecretHash, StoreError> {
    SecretHash::from_bytes(bytes).ok_or_else(|| corrupt("secret hash", "not 32 bytes"))
}

/// Every row converted, or the first that cannot be.
pub(super) fn records<R, T>(rows: Vec<R>) -> Result<Vec<T>, StoreError>
where
    T: TryFrom<R, Error = StoreError>,
{
    rows.into_iter().map(T::try_from).collect()
}

/// Unix seconds as SQL integers (PostgreSQL has no unsigned type).
pub(super) fn ts(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX)
}

pub(super) fn from_ts(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn corrupt(what: &'static str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: detail.to_string(),
    }
}

fn scopes(s: &str) -> Result<ScopeSet, StoreError> {
    ScopeSet::parse(s).map_err(|e| corrupt("ceiling", e))
}
