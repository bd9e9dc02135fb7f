//! The platform issuer (DESIGN §8): it holds the root keys, knows every
//! workload's ceiling, and hands grants to sidecars that prove who they
//! are — so that no sidecar holds a root private key. A library: the
//! `authproxy issuer serve` verb binds a listener and serves [`router`].
//!
//! # Layout
//! - [`config`] — `config/issuer.toml` (+ `AUTHPROXY__SECTION__KEY`), validated; errors name file and key.
//! - [`issuer`] — [`Issuer`]: one node; open (root key, node id, admin
//!   token, store) and the use cases: JWKS, metadata, admin check, sync, grants.
//! - [`http`] — [`router`]: the routes, mapping requests to use cases.
//! - [`error`] — [`IssuerError`]: every refusal and failure, and its HTTP answer.
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
//!   tokens: generated, shown once, stored as SHA-256, compared in constant time.
//! - [`state_dir`] — the node's private files beside its root key: node id, admin token.
//!
//! Time is a parameter: every use case takes `now`; only the HTTP handlers
//! read `authproxy_core::clock`.

pub mod config;
pub mod error;
pub mod http;
pub mod issuer;
pub mod kubernetes;
pub mod secret;
pub mod state_dir;
pub mod store;
pub mod sync;

pub use config::IssuerConfig;
pub use error::IssuerError;
pub use http::router;
pub use issuer::{Issuer, OpenError};
pub use state_dir::ADMIN_TOKEN_FILE;
