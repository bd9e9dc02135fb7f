//! `authproxy verifier serve`: the layer's verification as a forward-auth
//! and introspection service ([`crate::verifier`]).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use authproxy_layer::BuildError;

use super::{failure, shutdown_signal, usage_error};
use crate::verifier::Verifier;
use crate::verifier::config::VerifierConfig;

/// Loads and validates `config` before anything else (a bad key: exit 64),
/// loads the root keys (unreachable for the layer's 30 s: exit 1), binds
/// `server.listen` (exit 64 if it cannot), then serves until SIGINT or
/// SIGTERM. A multi-threaded runtime: unlike a sidecar beside one
/// workload, the verifier answers a proxy for every request of an upstream.
pub fn serve(config: &Path) -> ExitCode {
    let config = match VerifierConfig::load(config) {
        Ok(c) => c,
        Err(e) => return usage_error(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return failure(&format!("cannot start a runtime: {e}")),
    };
    runtime.block_on(async move {
        let file = config.file.clone();
        let listen = config.server.listen.clone();
        let limits = config.server.limits;
        let keys = config.trust.keys.describe();
        let verifier = match Verifier::build(config).await {
            Ok(v) => Arc::new(v),
            Err(e @ BuildError::Keys(_)) => {
                return failure(&format!("cannot load the root keys from {keys}: {e}"));
            }
            Err(e) => return usage_error(&format!("{}: {e}", file.display())),
        };
        let listeners = match crate::serve::bind_all(&listen, false).await {
            Ok(l) => l,
            Err(e) => {
                let problem = match e.source.kind() {
                    std::io::ErrorKind::AddrInUse => "the address is already in use".to_owned(),
                    _ => format!("cannot listen there: {}", e.source),
                };
                return usage_error(&format!(
                    "{}: `server.listen` = {}: {problem}",
                    file.display(),
                    e.addr
                ));
            }
        };
        tracing::info!(%keys, "verifier trusts the root keys of");
        match crate::verifier::serve(listeners, verifier, limits, shutdown_signal()).await {
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
