-- Credential lifecycle as tasks (DESIGN §10). Times are unix seconds.
-- Portable SQL: the PostgreSQL schema mirrors this one (BYTEA for BLOB);
-- there the worker's claim adds FOR UPDATE SKIP LOCKED to its sub-select.

-- A credential: the root keys of one node, the workload credentials of one
-- identity, or one PAT. Its id is derived from what it is (`rk.<node>`,
-- `wc.<environment>.<identity with / as .>`, `pat.<name>`), so registering
-- it twice is a no-op on every node.
CREATE TABLE credentials (
    id          TEXT    PRIMARY KEY,
    kind        TEXT    NOT NULL CHECK (kind IN ('root_key', 'workload_credential', 'pat')),
    name        TEXT    NOT NULL,
    -- Root keys: the node holding the private keys (only it runs their tasks).
    node        TEXT,
    -- Workload credentials and PATs.
    environment TEXT,
    created_at  INTEGER NOT NULL
);

-- The versions of a credential. Their state is derived from the times
-- (see tasks::model::version_state): pending before activates_at, active,
-- retiring from retires_at (superseded; a root key stops signing, a
-- workload credential is in its grace), retired once removed_at is set or
-- expires_at has passed.
CREATE TABLE credential_versions (
    credential_id TEXT    NOT NULL REFERENCES credentials (id),
    version       INTEGER NOT NULL,
    -- Root keys: the key's kid (root_keys.kid). Workload credentials: the
    -- hash (workload_credentials.hash). PATs: the version's jti.
    kid           TEXT,
    secret_hash   BLOB,
    pat_jti       TEXT,
    created_at    INTEGER NOT NULL,
    activates_at  INTEGER NOT NULL,
    retires_at    INTEGER,
    expires_at    INTEGER,
    removed_at    INTEGER,
    PRIMARY KEY (credential_id, version)
);

-- Every creation and deletion of a version, as a task. `run_at` is when it
-- is due (its next attempt after a failure); a claim sets `claimed_by` and
-- `lease_until` and counts `attempts`, and every later write by the worker
-- is fenced by (claimed_by, attempts), so a worker whose lease was taken
-- over can no longer write. `errors` is a JSON array of {code, description}.
CREATE TABLE credential_tasks (
    id            TEXT    PRIMARY KEY,
    credential_id TEXT    NOT NULL REFERENCES credentials (id),
    type          TEXT    NOT NULL CHECK (type IN ('create_credentials', 'delete_credentials')),
    status        TEXT    NOT NULL CHECK (status IN
        ('queued', 'processing', 'credentials_created', 'credentials_deleted', 'failed')),
    trigger       TEXT    NOT NULL CHECK (trigger IN ('credential_creation', 'manual_rotation',
        'automatic_rotation', 'version_expiration', 'credential_deletion')),
    -- The version it created, or the version it deletes (NULL: all of them).
    version       INTEGER,
    -- Only this node may run it (root keys); NULL: any node.
    node          TEXT,
    run_at        INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    claimed_by    TEXT,
    lease_until   INTEGER,
    errors        TEXT    NOT NULL DEFAULT '[]',
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

CREATE INDEX credential_tasks_due ON credential_tasks (status, run_at);
CREATE INDEX credential_tasks_by_credential ON credential_tasks (credential_id, created_at);

-- A workload credential version stops authenticating at its end of grace
-- even if the task that revokes it never runs (cancelled, issuer down).
ALTER TABLE workload_credentials ADD COLUMN expires_at INTEGER;

-- Which root key signed which grant, for "the last grant it signed".
CREATE INDEX grants_by_root_kid ON grants (root_kid, expires_at);
