//! The tower layer an upstream API puts in front of its routes: it verifies
//! authproxy access tokens (root key → grant → token, environment, audience,
//! expiry) and checks that their scopes cover what each route needs.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, routing::{get, post}};
//! use authproxy_layer::{Authorizer, Principal};
//!
//! let auth = Authorizer::builder()
//!     .jwks_file("/etc/authproxy/root-jwks.json")
//!     .audience("https://api.example.internal")
//!     .environment("main")
//!     .build()
//!     .await?;
//! let app: Router = Router::new()
//!     .route("/environment", get(|p: Principal| async move { p.sub().to_string() })
//!         .route_layer(auth.require("env:view")))
//!     .route("/tasks/{name}/runs", post(|| async { "queued" })
//!         .route_layer(auth.require("task:operate:{name}")));
//! # Ok(()) }
//! ```
//!
//! Personal access tokens (`Authorization: Bearer ap_pat_…`) are accepted
//! where the authorizer knows the issuer's revocation feed
//! ([`AuthorizerBuilder::issuer`] or [`AuthorizerBuilder::revocation_feed`]):
//! verified with the root keys alone (no call to the issuer per request),
//! refused within the poll interval (1 s) of their revocation, and refused
//! altogether while the feed is stale (fail closed).
//!
//! The layer always answers: a refused request gets an RFC 6750 response
//! (`401 invalid_token` or `403 insufficient_scope`, with
//! `WWW-Authenticate` and a JSON body), never an error from the service.
//! It is written for axum routers (`Response = axum::response::Response`;
//! path parameters through axum's `RawPathParams`).
//!
//! # Layout
//! - `authorizer` — [`Authorizer`] and its builder: rules, keys, caches.
//! - `trust` — where the root keys come from (memory, file, URL) and their refresh.
//! - `requirement` — [`Requirement`]: a route's need, parsed once (`task:operate:{name}`).
//! - `require` — [`RequireScopeLayer`] / [`RequireScope`], the tower pair,
//!   and [`Authorizer::authorize`], the same decision for a service that
//!   routes on its own (`authproxy verifier`).
//! - `principal` — [`Principal`], who a verified request speaks for.
//! - `rejection` — RFC 6750 refusals and the [`Principal`] extractor.
//! - `revocations` — the issuer's revocation feed, polled (PATs, grants).
//! - `metrics` — optional Prometheus metrics (feature `prometheus`).

mod authorizer;
mod metrics;
mod principal;
mod rejection;
mod require;
mod requirement;
mod revocations;
mod trust;

pub use authorizer::{Authorizer, AuthorizerBuilder, BuildError};
pub use authproxy_core::keys::Jwks;
pub use authproxy_core::pat::PatName;
pub use authproxy_core::verify::{InvalidToken, Part};
pub use authproxy_core::{
    Authorization, Environment, ScopeSet, Scopes, Subject, Wildcard, WorkloadId,
};
pub use principal::Principal;
pub use rejection::{NoPrincipal, Rejection};
pub use require::{RequireScope, RequireScopeLayer};
pub use requirement::{Requirement, RequirementError};
pub use trust::{JwksError, ROOT_KEY_DROP_AFTER_REFRESHES};
