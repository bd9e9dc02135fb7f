//! The CLI verbs (`serve`, `check`, `token`, `health`, `jwks`; in
//! [`issuer`] `issuer serve`, `issuer sync` and `issuer grants revoke`; in
//! [`pat`] the personal access token verbs, with [`admin`] their client; in
//! [`verifier`] `verifier serve`). Each returns the process exit status;
//! `main` only parses arguments, loads the configuration, initialises
//! logging and dispatches.
//!
//! Exit statuses: 0 success; 1 the verb's check failed (not ready, no
//! token, invalid declarations, a runtime failure); 64 (`EX_USAGE`, the
//! linkerd and sysexits convention) the configuration is wrong, under every
//! verb — for `serve` that includes a `server.listen` address it cannot
//! bind (already in use, not local, privileged), since only a change of
//! configuration (or of what else runs there) fixes it. In remote mode a
//! bootstrap credential that cannot be read or that the issuer refuses is
//! 64 too; issuers that stay unreachable for `trust.initial_grant_timeout`
//! are 1 (a later restart may succeed). The management verbs (`issuer
//! sync`, `issuer grants revoke`, `pat …`) exit 1 when the issuer refuses
//! (its `error_description` printed) or cannot be reached, and 64 when an
//! argument is malformed or the admin token file cannot be used; so does
//! any verb whose command line does not parse.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use authproxy_core::clock;
use authproxy_core::declarations::Declarations;
use authproxy_core::keys::{Jwks, RootKeys, random_id};
use authproxy_core::proof;
use authproxy_core::root_key::{load_or_create_root_key, load_root_public_key};

use crate::config::Config;
use crate::daemon::Daemon;

pub mod admin;
pub mod credentials;
pub mod issuer;
pub mod pat;
pub mod verifier;

/// BSD `EX_USAGE`: the configuration is wrong.
pub const EX_USAGE: u8 = 64;

/// Prints `e` and returns [`EX_USAGE`].
pub fn usage_error(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("authproxy: {e}");
    ExitCode::from(EX_USAGE)
}

fn failure(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("authproxy: {e}");
    ExitCode::FAILURE
}

/// `authproxy serve`: everything that can be wrong with the configuration
/// is found before any port is bound, and reported as a usage error.
pub fn serve(config: Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return failure(&format!("cannot start a runtime: {e}")),
    };
    runtime.block_on(async {
        let daemon = match Daemon::start(config, clock::now()).await {
            Ok(d) => Arc::new(d),
            Err(e) if e.is_usage() => return usage_error(&e),
            Err(e) => return failure(&e),
        };
        let server = &daemon.config().server;
        let listeners = match crate::serve::bind_all(&server.listen, server.listen_is_default).await
        {
            Ok(l) => l,
            // In use, not a local address, a privileged port: all are
            // for whoever wrote the configuration to fix.
            Err(e) => {
                let problem = match e.source.kind() {
                    std::io::ErrorKind::AddrInUse => "the address is already in use".to_owned(),
                    _ => format!("cannot listen there: {}", e.source),
                };
                return usage_error(&format!(
                    "{}: `server.listen` = {}: {problem}",
                    daemon.config().file.display(),
                    e.addr
                ));
            }
        };
        match daemon.run(listeners, shutdown_signal()).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Completes on SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: a signal that arrives
/// between the "listening" log line and the serve loop's first poll must
/// shut down gracefully, not kill the process. Call it inside the runtime.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).ok();
    let mut term = signal(SignalKind::terminate()).ok();
    async move {
        let int = async {
            match int.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let term = async {
            match term.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = int => {},
            () = term => {},
        }
        tracing::info!("shutting down");
    }
}

/// `authproxy check`: validates `declarations` and prints every workload's
/// effective authorizations; with a sidecar `config`, also checks that its
/// workload is declared.
pub fn check(declarations: &Path, config: Option<&Config>) -> ExitCode {
    let decl = match Declarations::load(declarations) {
        Ok(d) => d,
        Err(e) => return failure(&e),
    };
    print!("{}", decl.table());
    match config {
        Some(cfg) => {
            if let Err(e) = crate::grant_source::declared_ceiling(cfg, &decl, declarations) {
                return failure(&e);
            }
            println!(
                "\n{}: OK (this sidecar serves {})",
                declarations.display(),
                cfg.workload.id
            );
        }
        None => println!("\n{}: OK", declarations.display()),
    }
    ExitCode::SUCCESS
}

/// `authproxy jwks`: the root public keys as a JWKS, for an upstream to
/// read from a file it mounts read-only — its trust anchor then never comes
/// from a workload's network namespace.
pub fn jwks(config: &Config, out: Option<&Path>) -> ExitCode {
    if let Some(remote) = config.trust.remote() {
        return usage_error(&format!(
            "{}: `trust.mode` = \"remote\": this sidecar has no root key; upstreams take the issuer's JWKS ({}/.well-known/jwks.json)",
            config.file.display(),
            remote
                .issuers
                .first()
                .map(|u| u.as_str().trim_end_matches('/'))
                .unwrap_or_default()
        ));
    }
    let root = match load_or_create_root_key(&config.trust.state_dir) {
        Ok(k) => k,
        Err(e) => return usage_error(&e),
    };
    let text = match serde_json::to_string(&Jwks::publish([root.public()])) {
        Ok(t) => t,
        Err(e) => return failure(&e),
    };
    match out {
        None => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        // Public keys: readable by the upstream's user.
        Some(path) => match crate::sink::write_atomically(path, text.as_bytes(), 0o644) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => failure(&format!("{}: {e}", path.display())),
        },
    }
}

/// What `authproxy token` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFormat {
    /// The token alone.
    Raw,
    /// The token endpoint's JSON response.
    Json,
    /// `Authorization: Bearer <token>`.
    Header,
}

/// `authproxy token`: fetches a token from the local sidecar and prints it,
/// trying again for up to `wait` while the sidecar is not up or not ready
/// ([`crate::client::fetch_token_waiting`]).
pub fn token(
    endpoint: &str,
    scopes: &[String],
    format: TokenFormat,
    wait: std::time::Duration,
) -> ExitCode {
    match client_runtime().and_then(|rt| {
        rt.block_on(crate::client::fetch_token_waiting(endpoint, scopes, wait))
            .map_err(|e| e.to_string())
    }) {
        Ok((t, raw)) => {
            match format {
                TokenFormat::Raw => println!("{}", t.access_token),
                TokenFormat::Json => println!("{raw}"),
                TokenFormat::Header => println!("Authorization: Bearer {}", t.access_token),
            }
            ExitCode::SUCCESS
        }
        Err(e) => failure(&e),
    }
}

/// `authproxy health`: 0 when the sidecar at `endpoint` answers ready *and*
/// proves it is the sidecar of `config` — it signs a fresh nonce with the
/// key that a grant from this config's root binds to this workload and
/// environment (see [`authproxy_core::proof`]); 1 otherwise. Whoever binds
/// the port after the sidecar dies cannot pass for it. In remote mode the
/// root keys are the issuer's, fetched from its JWKS.
pub fn health(endpoint: &str, config: &Config) -> ExitCode {
    let roots = match config.trust.remote() {
        None => match load_root_public_key(&config.trust.state_dir) {
            Ok(root) => RootKeys::from([(root.thumbprint().to_owned(), root)]),
            Err(e) => return failure(&e),
        },
        Some(remote) => match client_runtime()
            .and_then(|rt| rt.block_on(crate::grant_source::remote::issuer_roots(remote)))
        {
            Ok(roots) => roots,
            Err(e) => return failure(&format!("cannot fetch the issuer's root keys: {e}")),
        },
    };
    let nonce = random_id();
    let answer = client_runtime().and_then(|rt| {
        rt.block_on(crate::client::check_ready(endpoint, &nonce))
            .map_err(|e| e.to_string())
    });
    let proof = match answer {
        Ok(Some(proof)) => proof,
        Ok(None) => {
            return failure(&format!(
                "{endpoint} answers ready but proves nothing: not the sidecar of {}",
                config.file.display()
            ));
        }
        Err(e) => return failure(&e),
    };
    let w = &config.workload;
    match proof::check(&proof, &roots, &w.environment, &w.id, &nonce, clock::now()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failure(&format!(
            "{endpoint} answers ready but is not the sidecar of {} ({e})",
            config.file.display()
        )),
    }
}

/// A single-threaded runtime for the client verbs.
fn client_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))
}
