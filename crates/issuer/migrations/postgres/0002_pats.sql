-- Personal access tokens and the revocation feed (DESIGN §9): the same
-- tables, keys and columns as migrations/sqlite/0002_pats.sql, in
-- PostgreSQL's types. Times are unix seconds.

-- A PAT as the issuer keeps it: never its value, only what recognises and
-- revokes it. `jti` is the current version's id (an update issues a new
-- one); the exchange looks PATs up by it.
CREATE TABLE pats (
    name         TEXT    PRIMARY KEY,
    environment  TEXT    NOT NULL,
    scopes       TEXT    NOT NULL,
    jti          TEXT    NOT NULL UNIQUE,
    created_at   BIGINT  NOT NULL,
    updated_at   BIGINT  NOT NULL,
    expires_at   BIGINT  NOT NULL,
    last_used_at BIGINT
);

-- The revocation feed: PAT versions (updated or deleted) and grants (revoked
-- by an operator) still within their lifetime. `seq` is the feed's cursor,
-- global across issuer nodes. A sequence hands out numbers in the order
-- they are drawn, not the order their transactions commit, so every
-- transaction that appends here first takes one transaction-scoped advisory
-- lock (src/store/postgres.rs, REVOCATION_FEED_LOCK): numbers then commit in
-- order, and a layer's cursor never passes an entry not yet visible.
CREATE TABLE revocations (
    seq        BIGSERIAL PRIMARY KEY,
    kind       TEXT    NOT NULL CHECK (kind IN ('pat', 'grant')),
    id         TEXT    NOT NULL,
    expires_at BIGINT  NOT NULL,
    revoked_at BIGINT  NOT NULL,
    UNIQUE (kind, id)
);

CREATE INDEX revocations_by_expiry ON revocations (expires_at);

-- `authproxy issuer grants revoke`: the live grants of one workload. The
-- `workload` column holds the grant's subject: a workload id, or
-- `pat:<name>` for a grant made by the PAT exchange.
CREATE INDEX grants_by_workload ON grants (environment, workload, expires_at);
