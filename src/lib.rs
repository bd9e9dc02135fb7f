//! The `authproxy` binary's library: the sidecar daemon and the CLI verbs.
//! Nothing outside this repository depends on it: upstream APIs use the
//! `authproxy-layer` crate, and the vocabulary lives in `authproxy-core`.
//! It is a library only so that the binary, its examples and its end-to-end
//! tests share one code path.
//!
//! # Layout
//! - [`cli`] — the verbs: `serve`, `check`, `token`, `health`, `jwks`;
//!   [`cli::issuer`]: `issuer serve` (the platform issuer, cargo feature
//!   `issuer`, on by default) and `issuer sync` (its management client).
//! - [`config`] — the sidecar's TOML configuration, validated into typed values.
//! - [`daemon`] — start-up, grant renewal (and its backoff), the token file, reload.
//! - [`grant_source`] — where the grant comes from: the embedded issuer, or
//!   the platform issuer ([`grant_source::remote`]: remote mode).
//! - [`sidecar`] — the ephemeral key, the one grant slot, the reuse cache.
//! - [`server`] — the HTTP routes: token endpoint, proxy, discovery, probes,
//!   and the checks on who may call them (caller policy, Fetch Metadata).
//! - [`serve`] — binding the listen addresses; serving a router on them with
//!   connection limits (a smaller budget for non-loopback peers) and a
//!   bounded drain.
//! - [`proxy`] — forward-proxy mode: `/api/*` to the upstream, token
//!   attached, paths kept under the upstream's base, stalled bodies cut.
//! - [`sink`] — the token file, replaced atomically.
//! - [`client`] — a client of the sidecar (`authproxy token`, `authproxy health`).
//! - [`verifier`] — `authproxy verifier serve`: the layer as a forward-auth
//!   and RFC 7662 introspection service, for upstreams that are not Rust.
//! - [`telemetry`] — metrics, request ids, log setup, error chains.
//!
//! Dependencies point down this list's order of use: `cli` → `daemon` →
//! `server` / `grant_source` / `sink` / `proxy` → `sidecar` → the core crate.
//! `verifier` stands beside the sidecar: `cli` → `verifier` → the layer
//! crate, borrowing only `serve`, the proxy's path normaliser and the
//! sidecar's local-caller rule.

pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod grant_source;
pub mod proxy;
pub mod serve;
pub mod server;
pub mod sidecar;
pub mod sink;
pub mod telemetry;
pub mod verifier;

/// Entry points for the fuzz targets in `fuzz/` (built with `--cfg fuzzing`).
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    /// Parses a token request body as the token endpoint does.
    pub fn token_form(body: &[u8]) -> bool {
        crate::server::parse_form(body)
    }
}
