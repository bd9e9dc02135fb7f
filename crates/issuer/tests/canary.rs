//! The canary: open, sync, grants and refusals run with every crate logging
//! at TRACE into a buffer; afterwards no workload credential, admin token or
//! grant may appear in it.
//!
//! Its own test binary: it installs the process-wide log subscriber, which
//! must capture this test's flows and nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use authproxy_core::clock;
use authproxy_core::keys::SigningKey;
use authproxy_issuer::{ADMIN_TOKEN_FILE, Issuer, IssuerConfig, router};
use serde_json::{Value, json};

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_secret_reaches_the_log() {
    let buffer = Capture(Arc::new(Mutex::new(Vec::new())));
    let writer = buffer.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let config_file = dir.path().join("issuer.toml");
    std::fs::write(
        &config_file,
        format!(
            "[issuer]\nurl = \"{base}\"\nstate_dir = \"{}\"\n",
            state_dir.display()
        ),
    )
    .unwrap();
    let config = IssuerConfig::load_with_env(&config_file, Some(HashMap::new())).unwrap();
    let issuer = Arc::new(Issuer::open(config, clock::now()).await.unwrap());
    let app = router(issuer);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let admin = std::fs::read_to_string(state_dir.join(ADMIN_TOKEN_FILE)).unwrap();
    let admin = admin.trim();
    let client = reqwest::Client::new();

    let plan: Value = client
        .post(format!("{base}/v1/sync?environment=main"))
        .bearer_auth(admin)
        .body("applications:\n  web:\n    authorizations: [{ type: env, action: view }]\n")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let credential = plan["credentials"]["app/web"].as_str().unwrap().to_owned();
    let key = SigningKey::generate().unwrap();
    let mut grants = Vec::new();
    for (bearer, workload) in [
        (credential.as_str(), "app/web"),
        (credential.as_str(), "app/other"),
        (admin, "app/web"),
    ] {
        let r = client
            .post(format!("{base}/v1/grants"))
            .bearer_auth(bearer)
            .json(&json!({
                "workload": workload,
                "environment": "main",
                "public_key": key.public().bare_jwk(),
            }))
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        if let Some(g) = body["grant"].as_str() {
            grants.push(g.to_owned());
        }
    }
    let wrong_admin = format!("{admin}x");
    let r = client
        .post(format!("{base}/v1/sync?environment=main"))
        .bearer_auth(&wrong_admin)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(grants.len(), 1, "the flows ran");

    let log = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("grant issued"), "the log was captured");
    for secret in [credential.as_str(), admin, wrong_admin.as_str(), &grants[0]] {
        let tail = &secret[secret.len() - 20..];
        assert!(!log.contains(tail), "a secret reached the log");
    }
    for marker in ["ap_wc_", "ap_admin_", "eyJ"] {
        let line = log.lines().find(|l| l.contains(marker));
        assert!(line.is_none(), "`{marker}` reached the log: {line:?}");
    }
}
