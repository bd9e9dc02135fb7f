//! The platform issuer (DESIGN §8): it holds the root keys, knows every
//! workload's ceiling, and hands grants to sidecars that prove who they
//! are — so that no sidecar holds a root private key. A library: the
//! `authproxy issuer serve` verb binds a listener and serves [`router`].
//!
//! # Layout
//! - [`config`] — `config/issuer.toml` (+ `AUTHPROXY__SECTION__KEY`), validated; errors name file and key.
//! - [`issuer`] — [`Issuer`]: one node; open (root key, node id, admin
//!   token, store) and the use cases: JWKS, metadata, admin check, sync,
//!   grants, personal access tokens, their exchange, the revocation feed.
//! - [`http`] — [`router`]: the routes, mapping requests to use cases.
//! - [`error`] — [`IssuerError`]: every refusal and failure, and its HTTP
//!   answer; [`error::ExchangeError`] for the PAT exchange's OAuth answers.
//! - [`kubernetes`] — the Kubernetes bootstrap: projected service-account
//!   tokens verified against the cluster's JWKS, mapped through
//!   `[[kubernetes.bindings]]`.
//! - [`sync`] — the pure sync planner: declarations vs the store's state →
//!   plan (created / updated / unchanged / removed) and the changes to write.
//! - [`store`] — the [`store::Store`] trait (one method per use case, `now`
//!   passed in) and its two implementations, sharing every statement:
//!   SQLite (one node; `migrations/sqlite/`) and PostgreSQL (any number of
//!   nodes on one database; `migrations/postgres/`). `tests/store_contract.rs`
//!   holds both to one contract.
//! - [`secret`] — `ap_wc_…` workload credentials and `ap_admin_…` admin
//!   tokens: generated, shown once, stored as SHA-256, compared in constant
//!   time; the type that keeps PAT values and access tokens out of logs.
//! - [`state_dir`] — the node's private files beside its root key: node id, admin token.
//! - [`root_keys`] — this node's root key versions in memory; the active one signs.
//! - [`tasks`] — the credential lifecycle (DESIGN §10): the pure state
//!   machine ([`tasks::model`]), the worker that runs tasks
//!   ([`tasks::worker`]) and the workload-credential providers
//!   ([`tasks::provider`]); the use cases are in [`issuer::credentials`].
//!
//! Time is a parameter: every use case takes `now`; only the HTTP handlers
//! read `authproxy_core::clock`.

pub mod config;
pub mod error;
pub mod http;
pub mod issuer;
pub mod kubernetes;
pub mod root_keys;
pub mod secret;
pub mod state_dir;
pub mod store;
pub mod sync;
pub mod tasks;

pub use config::IssuerConfig;
pub use error::IssuerError;
pub use http::router;
pub use issuer::exchange::{ExchangeRequest, Exchanged};
pub use issuer::pats::{IssuedPat, NewPat, PatChange};
pub use issuer::revocations::{Cursor, Feed};
pub use issuer::{Issuer, OpenError};
pub use state_dir::ADMIN_TOKEN_FILE;
