-- Personal access tokens and the revocation feed (DESIGN §9). Times are unix
-- seconds. Portable SQL: the PostgreSQL schema mirrors this one (there,
-- `seq` is a BIGSERIAL / identity column).

-- A PAT as the issuer keeps it: never its value, only what recognises and
-- revokes it. `jti` is the current version's id (an update issues a new
-- one); the exchange looks PATs up by it.
CREATE TABLE pats (
    name         TEXT    PRIMARY KEY,
    environment  TEXT    NOT NULL,
    scopes       TEXT    NOT NULL,
    jti          TEXT    NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    last_used_at INTEGER
);

-- The revocation feed: PAT versions (updated or deleted) and grants (revoked
-- by an operator) still within their lifetime. `seq` is the feed's cursor:
-- it only grows (AUTOINCREMENT never reuses a value, even after pruning).
CREATE TABLE revocations (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT    NOT NULL CHECK (kind IN ('pat', 'grant')),
    id         TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER NOT NULL,
    UNIQUE (kind, id)
);

CREATE INDEX revocations_by_expiry ON revocations (expires_at);

-- `authproxy issuer grants revoke`: the live grants of one workload. The
-- `workload` column holds the grant's subject: a workload id, or
-- `pat:<name>` for a grant made by the PAT exchange.
CREATE INDEX grants_by_workload ON grants (environment, workload, expires_at);
