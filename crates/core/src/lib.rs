//! authproxy's shared vocabulary: what the sidecar, the issuer and the
//! upstream layer all speak. No HTTP, no async runtime, no SQL.
//!
//! # Layout
//! - [`authorization`] — `type:action[:resource]` authorizations and scope sets.
//! - [`workload`] — workload ids (`app/web`, `worker/web/queue`, `task/x`) and environments.
//! - [`declarations`] — the project's YAML declarations and the inheritance
//!   rules (feature `declarations`).
//! - [`duration`] — durations as config files write them (feature `config`).
//! - [`keys`] — Ed25519 keys, JWKs and JWK sets, RFC 7638 thumbprints, signing.
//! - [`root_key`] — the embedded issuer's root key file under a state directory.
//! - [`scopes`] — exact scopes plus wildcards, and the one place coverage
//!   understands them.
//! - [`pat`] — personal access tokens: value format, issue, verify.
//! - [`grant`] — root-signed grants binding a sidecar key to a workload: issue and verify.
//! - [`token`] — RFC 9068 access tokens minted under a grant.
//! - [`verify`] — verification of a token and its grant; the [`verify::Principal`].
//! - [`oauth`] — the one OAuth2 / RFC 6750 error body.
//! - [`proof`] — a sidecar proving it holds its key (for `authproxy health`).
//! - [`clock`] — the one place that reads the wall clock.
//! - [`shared`] — a value read on every request and swapped rarely.
//! - [`suggest`] — "did you mean …?" for misspelt keys.
//!
//! Time and randomness are parameters on every token path: `Grant::issue`,
//! `mint` and `verify` take `now` (and a `jti`), so expiry, leeway and
//! rotation are tested exactly, without sleeping.

pub mod authorization;
pub mod clock;
#[cfg(feature = "declarations")]
pub mod declarations;
#[cfg(feature = "config")]
pub mod duration;
pub mod grant;
mod jws;
pub mod keys;
pub mod oauth;
pub mod pat;
pub mod proof;
pub mod root_key;
pub mod scopes;
pub mod shared;
pub mod suggest;
pub mod token;
pub mod verify;
pub mod workload;

pub use authorization::{Authorization, Name, ScopeSet};
pub use scopes::{Scopes, Wildcard};
pub use workload::{Environment, Subject, WorkloadId};
