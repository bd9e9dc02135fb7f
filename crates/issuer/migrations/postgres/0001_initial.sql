-- The issuer's state (DESIGN §8), shared by every issuer node: the same
-- tables, keys and columns as migrations/sqlite/0001_initial.sql (the
-- statements in src/store/sql.rs run on both), in PostgreSQL's types.
-- Times are unix seconds. Secrets are never stored: credentials and admin
-- tokens by SHA-256 only.

-- Root public keys of every issuer node: the JWKS is the union of the live
-- ones. A node's private key never leaves its state_dir.
CREATE TABLE root_keys (
    kid        TEXT    PRIMARY KEY,
    node       TEXT    NOT NULL,
    public_jwk TEXT    NOT NULL,
    state      TEXT    NOT NULL CHECK (state IN ('active', 'retiring', 'retired')),
    created_at BIGINT  NOT NULL
);

CREATE TABLE admin_tokens (
    hash       BYTEA   PRIMARY KEY CHECK (octet_length(hash) = 32),
    created_at BIGINT  NOT NULL,
    revoked    BOOLEAN NOT NULL DEFAULT FALSE
);

-- One row per synced environment; `version` moves on with every applied
-- sync, which is applied only if it still has the version it was planned
-- on. Its row lock serialises the syncs of one environment across nodes.
CREATE TABLE environments (
    name    TEXT   PRIMARY KEY,
    version BIGINT NOT NULL
);

CREATE TABLE identities (
    environment TEXT    NOT NULL REFERENCES environments (name),
    name        TEXT    NOT NULL,
    ceiling     TEXT    NOT NULL,
    removed     BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (environment, name)
);

CREATE TABLE workloads (
    environment TEXT    NOT NULL,
    workload    TEXT    NOT NULL,
    identity    TEXT    NOT NULL,
    removed     BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (environment, workload),
    FOREIGN KEY (environment, identity) REFERENCES identities (environment, name)
);

CREATE TABLE workload_credentials (
    hash        BYTEA   PRIMARY KEY CHECK (octet_length(hash) = 32),
    environment TEXT    NOT NULL,
    identity    TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    revoked     BOOLEAN NOT NULL DEFAULT FALSE,
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
    issued_at   BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL
);

CREATE INDEX grants_by_expiry ON grants (expires_at);
