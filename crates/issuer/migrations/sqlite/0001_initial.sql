-- The issuer's state (DESIGN §8). Times are unix seconds; booleans 0/1.
-- Secrets are never stored: credentials and admin tokens by SHA-256 only.
-- Natural keys throughout, so the PostgreSQL schema can mirror this one.

-- Root public keys of every issuer node: the JWKS is the union of the live
-- ones. A node's private key never leaves its state_dir.
CREATE TABLE root_keys (
    kid        TEXT    PRIMARY KEY,
    node       TEXT    NOT NULL,
    public_jwk TEXT    NOT NULL,
    state      TEXT    NOT NULL CHECK (state IN ('active', 'retiring', 'retired')),
    created_at INTEGER NOT NULL
);

CREATE TABLE admin_tokens (
    hash       BLOB    PRIMARY KEY,
    created_at INTEGER NOT NULL,
    revoked    INTEGER NOT NULL DEFAULT 0
);

-- One row per synced environment; `version` moves on with every applied
-- sync, which is applied only if it still has the version it was planned on.
CREATE TABLE environments (
    name    TEXT    PRIMARY KEY,
    version INTEGER NOT NULL
);

-- What a workload credential authenticates as; named after the workload it
-- was created for. Its ceiling is managed by sync.
CREATE TABLE identities (
    environment TEXT    NOT NULL REFERENCES environments (name),
    name        TEXT    NOT NULL,
    ceiling     TEXT    NOT NULL,
    removed     INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (environment, name)
);

CREATE TABLE workloads (
    environment TEXT    NOT NULL,
    workload    TEXT    NOT NULL,
    identity    TEXT    NOT NULL,
    removed     INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (environment, workload),
    FOREIGN KEY (environment, identity) REFERENCES identities (environment, name)
);

CREATE TABLE workload_credentials (
    hash        BLOB    PRIMARY KEY,
    environment TEXT    NOT NULL,
    identity    TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked     INTEGER NOT NULL DEFAULT 0,
    FOREIGN KEY (environment, identity) REFERENCES identities (environment, name)
);

-- Every grant issued; its id is the grant's jti.
CREATE TABLE grants (
    jti         TEXT    PRIMARY KEY,
    environment TEXT    NOT NULL,
    workload    TEXT    NOT NULL,
    identity    TEXT    NOT NULL,
    bootstrap   TEXT    NOT NULL,
    root_kid    TEXT    NOT NULL,
    issued_at   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);

CREATE INDEX grants_by_expiry ON grants (expires_at);
