-- Credential lifecycle as tasks (DESIGN §10): the same tables, keys and
-- columns as migrations/sqlite/0003_tasks.sql, in PostgreSQL's types
-- (BIGINT for every integer, BYTEA for BLOB). Times are unix seconds.
-- Several nodes run the task worker on these tables: the claim
-- (src/store/postgres/credentials.rs) locks the credential and the task it
-- picks with FOR UPDATE SKIP LOCKED, so one task runs on one node.

CREATE TABLE credentials (
    id          TEXT    PRIMARY KEY,
    kind        TEXT    NOT NULL CHECK (kind IN ('root_key', 'workload_credential', 'pat')),
    name        TEXT    NOT NULL,
    node        TEXT,
    environment TEXT,
    created_at  BIGINT  NOT NULL
);

CREATE TABLE credential_versions (
    credential_id TEXT    NOT NULL REFERENCES credentials (id),
    version       BIGINT  NOT NULL,
    kid           TEXT,
    secret_hash   BYTEA,
    pat_jti       TEXT,
    created_at    BIGINT  NOT NULL,
    activates_at  BIGINT  NOT NULL,
    retires_at    BIGINT,
    expires_at    BIGINT,
    removed_at    BIGINT,
    PRIMARY KEY (credential_id, version)
);

CREATE TABLE credential_tasks (
    id            TEXT    PRIMARY KEY,
    credential_id TEXT    NOT NULL REFERENCES credentials (id),
    type          TEXT    NOT NULL CHECK (type IN ('create_credentials', 'delete_credentials')),
    status        TEXT    NOT NULL CHECK (status IN
        ('queued', 'processing', 'credentials_created', 'credentials_deleted', 'failed')),
    trigger       TEXT    NOT NULL CHECK (trigger IN ('credential_creation', 'manual_rotation',
        'automatic_rotation', 'version_expiration', 'credential_deletion')),
    version       BIGINT,
    node          TEXT,
    run_at        BIGINT  NOT NULL,
    attempts      BIGINT  NOT NULL DEFAULT 0,
    claimed_by    TEXT,
    lease_until   BIGINT,
    errors        TEXT    NOT NULL DEFAULT '[]',
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL
);

CREATE INDEX credential_tasks_due ON credential_tasks (status, run_at);
CREATE INDEX credential_tasks_by_credential ON credential_tasks (credential_id, created_at);

ALTER TABLE workload_credentials ADD COLUMN expires_at BIGINT;

CREATE INDEX grants_by_root_kid ON grants (root_kid, expires_at);
