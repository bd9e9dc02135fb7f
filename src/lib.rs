//! authproxy: a sidecar that mints short-lived, scoped JWT access tokens for
//! the workload in its container, and the pieces an upstream API needs to
//! verify them.
//!
//! # Layout
//! - [`authorization`] — `type:action[:resource]` authorizations and scope sets.
//! - [`workload`] — workload ids (`app/web`, `worker/web/queue`, `task/x`) and environments.
//! - [`declarations`] — the project's YAML declarations and the inheritance rules.
//! - [`config`] — the sidecar's TOML configuration, validated into typed values.
//! - [`keys`] — Ed25519 keys, JWKs, RFC 7638 thumbprints, signing.
//! - [`issuer`] — the embedded issuer's root key file.
//! - [`grant`] — root-signed grants binding a sidecar key to a workload.
//! - [`token`] — RFC 9068 access tokens minted under a grant.
//! - [`sidecar`] — the sidecar's state: key, grant, reuse cache, renewal.
//! - [`server`] — the sidecar's HTTP routes and `run`.
//! - [`serve`] — serving a router with connection limits and a bounded graceful drain.
//! - [`proxy`] — forward-proxy mode: `/api/*` to the upstream, token attached.
//! - [`sink`] — keeps a valid token in a file, replaced atomically.
//! - [`client`] — a client of the token endpoint (`authproxy token`).
//! - [`telemetry`] — metrics, request ids, log setup.
//! - `shared` (private) — a value read on every request and swapped rarely.
//! - [`verify`] — verification of a token and its grant; the [`verify::Principal`].
//! - [`jwks`] — where an upstream's root keys come from, and their refresh.
//! - [`layer`] — the tower layer an upstream API puts in front of its routes.

pub mod authorization;
pub mod client;
pub mod config;
pub mod declarations;
pub mod grant;
pub mod issuer;
pub mod jwks;
pub mod keys;
pub mod layer;
pub mod proxy;
pub mod serve;
pub mod server;
mod shared;
pub mod sidecar;
pub mod sink;
pub mod telemetry;
pub mod token;
pub mod verify;
pub mod workload;

pub use authorization::{Authorization, Name, ScopeSet};
pub use workload::{Environment, WorkloadId};

/// Entry points for the fuzz targets in `fuzz/` (built with `--cfg fuzzing`).
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    /// Parses a token request body as the token endpoint does.
    pub fn token_form(body: &[u8]) -> bool {
        crate::server::Form::parse(body).is_ok()
    }
}
