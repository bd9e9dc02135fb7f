//! `authproxy verifier` (#16): forward auth and introspection for upstreams
//! that are not Rust, against real sidecars, the shipped config, a real
//! nginx, and the Node and Python example verifiers.

mod check;
mod cli;
mod examples;
mod introspect;
mod nginx;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use authproxy::verifier::Verifier;
use authproxy::verifier::config::VerifierConfig;
use authproxy_core::grant::{Grant, GrantRequest};
use authproxy_core::keys::{SigningKey, random_id};
use authproxy_core::root_key::load_or_create_root_key;
use authproxy_core::token::{MintRequest, mint};
use authproxy_core::{Environment, ScopeSet, WorkloadId};
use tokio::sync::oneshot;

use crate::common::*;

/// The shipped configuration: every test runs it, with the trust settings
/// of its sidecar put in by environment variables.
pub const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/verifier.toml");
/// The examples directory of the verifier.
pub const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/verifier");

/// A verifier served in this process, stopped on drop.
pub struct TestVerifier {
    pub url: String,
    pub port: u16,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for TestVerifier {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The environment overrides that point the shipped config at `sidecar`.
pub fn trust_env(sidecar: &TestSidecar) -> Vec<(String, String)> {
    vec![
        ("AUTHPROXY__TRUST__ISSUERS".into(), sidecar.url.clone()),
        ("AUTHPROXY__TRUST__AUDIENCE".into(), AUDIENCE.into()),
    ]
}

/// Serves the shipped config, trusting `sidecar`'s root, with `extra`
/// overrides, bound to `bind` (`url` always names 127.0.0.1).
pub async fn spawn_verifier_on(
    sidecar: &TestSidecar,
    bind: &str,
    extra: &[(&str, &str)],
) -> TestVerifier {
    let mut env: HashMap<String, String> = trust_env(sidecar).into_iter().collect();
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    spawn_verifier_with(env, bind).await
}

/// Serves the shipped config with these environment overrides.
pub async fn spawn_verifier_with(env: HashMap<String, String>, bind: &str) -> TestVerifier {
    let config = VerifierConfig::load_with_env(Path::new(SHIPPED), Some(env)).unwrap();
    let limits = config.server.limits;
    let verifier = Arc::new(Verifier::build(config).await.unwrap());
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(authproxy::verifier::serve(
        vec![listener],
        verifier,
        limits,
        async move {
            let _ = rx.await;
        },
    ));
    TestVerifier {
        url: format!("http://127.0.0.1:{port}"),
        port,
        stop: Some(tx),
    }
}

/// [`spawn_verifier_on`] loopback.
pub async fn spawn_verifier(sidecar: &TestSidecar, extra: &[(&str, &str)]) -> TestVerifier {
    spawn_verifier_on(sidecar, "127.0.0.1:0", extra).await
}

/// A token for `app/web` under a grant from `sidecar`'s own root (its state
/// dir, as a second sidecar sharing it would have), with the given
/// environment, audience and issue time: the chain is honest, only the
/// values differ from what the verifier accepts.
pub fn token_from_root(
    sidecar: &TestSidecar,
    environment: &str,
    audience: &str,
    scope: &str,
    issued_at: u64,
) -> String {
    let root = load_or_create_root_key(&sidecar.state_dir).unwrap();
    let key = SigningKey::generate().unwrap();
    let workload: WorkloadId = "app/web".parse().unwrap();
    let scope = ScopeSet::parse(scope).unwrap();
    let grant = Grant::issue(
        &root,
        GrantRequest {
            issuer: "urn:authproxy:test",
            workload: &workload,
            environment: &Environment::parse(environment).unwrap(),
            ceiling: &scope,
            sidecar_key: key.public(),
            ttl_secs: 3600,
        },
        issued_at,
        random_id(),
    )
    .unwrap();
    mint(
        &key,
        &grant,
        MintRequest {
            audience,
            scope: &scope,
            ttl_secs: 300,
        },
        issued_at,
        random_id(),
    )
    .unwrap()
    .token
}

/// `token` with one character of its payload changed (the signature no
/// longer matches).
pub fn tampered(token: &str) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let payload = &mut parts[1];
    let c = if payload.as_bytes()[10] == b'A' {
        "B"
    } else {
        "A"
    };
    payload.replace_range(10..11, c);
    parts.join(".")
}

/// A check as nginx sends it: `X-Original-Method`, `X-Original-URI`, and
/// the client's Authorization header.
pub async fn check(
    verifier: &TestVerifier,
    method: &str,
    uri: &str,
    token: Option<&str>,
) -> reqwest::Response {
    let mut req = client()
        .get(format!("{}/verify", verifier.url))
        .header("x-original-method", method)
        .header("x-original-uri", uri);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}
