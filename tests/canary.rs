//! The canary: the daemon's routes, the layer and the proxy run through their
//! flows with every crate logging at TRACE into a buffer; afterwards no
//! access token, grant, private key, or `eyJ…` JWT fragment may appear in it.
//!
//! Its own test binary: it installs the process-wide log subscriber, which
//! must capture this test's flows and nothing else.
#![allow(
    missing_docs,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)] // test code

#[path = "it/common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../examples/environment_api.rs"]
mod environment_api;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use reqwest::Method;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_even_at_trace() {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let capture = Capture(Arc::clone(&buf));
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || capture.clone())
        .init();
    let mut secrets: Vec<(String, String)> = Vec::new();

    // A sidecar whose upstream is the example API behind the layer.
    let first = spawn_sidecar(Options {
        declarations: E2E_PROJECT,
        ..Options::default()
    })
    .await;
    let auth = authorizer_for(&first).await;
    let (api, _stop) = serve(environment_api::app(&auth, "main")).await;
    let sink_dir = tempfile::tempdir().unwrap();
    let sink = sink_dir.path().join("token");
    let s = spawn_sidecar(Options {
        declarations: E2E_PROJECT,
        state_dir: Some(first.state_dir.clone()),
        sections: Box::leak(
            format!(
                "[proxy]\nupstream = \"{api}\"\n[sink]\npath = \"{}\"\n",
                sink.display()
            )
            .into_boxed_str(),
        ),
        ..Options::default()
    })
    .await;

    // Token endpoint: issue, reuse, narrow, refuse. Every call's status is
    // asserted, so the flows really ran (a 500-everywhere API fails here).
    for (scope, status) in [
        (None, 200),
        (None, 200),
        (Some("env:view"), 200),
        (Some("task:operate:notify"), 400),
    ] {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(sc) = scope {
            form.push(("scope", sc));
        }
        let (got, body) = request_token(&s.token_url(), &form).await;
        assert_eq!(got, status, "{scope:?}: {body}");
        if let Some(t) = body["access_token"].as_str() {
            secrets.push(("access token".into(), t.to_owned()));
        }
    }
    let t = token(&s, None).await;
    // The layer: accept, refuse for scope, refuse forged.
    let mut forged = t.clone();
    forged.push('x');
    for (method, path, token, status) in [
        (Method::GET, "/environment", &t, 200),
        (Method::POST, "/tasks/send-report/runs", &t, 202),
        (Method::POST, "/tasks/notify/runs", &t, 403),
        (Method::GET, "/environment", &forged, 401),
    ] {
        let (got, _, body) = call(method, &format!("{api}{path}"), Some(token)).await;
        assert_eq!(got, status, "{path}: {body}");
    }
    // The proxy, with a client Authorization to drop.
    let res = api_client()
        .get(format!("{}/api/environment", s.url))
        .header("authorization", format!("Bearer {t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (got, _, body) = call_api(
        Method::POST,
        &format!("{}/api/tasks/send-report/runs", s.url),
    )
    .await;
    assert_eq!(got, 202, "{body}");
    // Reload and the sink.
    assert!(!s.daemon.reload(now()).await.unwrap(), "nothing changed");
    secrets.push(("sink token".into(), std::fs::read_to_string(&sink).unwrap()));
    secrets.push(("grant".into(), s.sidecar.grant().compact().to_owned()));
    let root = std::fs::read_to_string(first.state_dir.join("root-key.pem")).unwrap();
    for line in root.lines().filter(|l| !l.starts_with("-----")) {
        secrets.push(("root key".into(), line.to_owned()));
    }
    secrets.push(("token".into(), t));

    remote_mode(&mut secrets).await;

    let log = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
    // The capture worked and saw the flows at trace level.
    assert!(log.contains("token issued"), "nothing captured");
    assert!(
        log.contains("refused the bootstrap credential"),
        "the remote flows did not run"
    );
    assert!(log.contains("TRACE"), "trace level not captured");
    for (what, secret) in &secrets {
        for part in secret.split('.').filter(|p| p.len() > 16) {
            assert!(
                !log.contains(part),
                "a fragment of a {what} reached the logs"
            );
        }
    }
    assert!(!log.contains("eyJ"), "a JWT fragment reached the logs");
}

/// Remote mode's flows: an issuer in process, a sync, a remote sidecar
/// bootstrapping from a credential file, a renewal, a refused credential at
/// start and at renewal. Every credential, the admin token, the issuer's
/// root key and the remote grant join `secrets`.
async fn remote_mode(secrets: &mut Vec<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("issuer");
    let config = dir.path().join("issuer.toml");
    std::fs::write(
        &config,
        format!(
            "[issuer]\nurl = \"http://issuer.test\"\nstate_dir = \"{}\"\n",
            state.display()
        ),
    )
    .unwrap();
    let config =
        authproxy_issuer::IssuerConfig::load_with_env(&config, Some(Default::default())).unwrap();
    let issuer = std::sync::Arc::new(authproxy_issuer::Issuer::open(config, now()).await.unwrap());
    let (url, _stop) = serve(authproxy_issuer::router(issuer)).await;
    let admin = std::fs::read_to_string(state.join("admin-token")).unwrap();
    secrets.push(("admin token".into(), admin.trim().to_owned()));
    let root = std::fs::read_to_string(state.join("root-key.pem")).unwrap();
    for line in root.lines().filter(|l| !l.starts_with("-----")) {
        secrets.push(("issuer root key".into(), line.to_owned()));
    }
    let plan: serde_json::Value = client()
        .post(format!("{url}/v1/sync?environment=main"))
        .bearer_auth(admin.trim())
        .body(E2E_PROJECT)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let credentials = plan["credentials"].as_object().unwrap();
    assert_eq!(credentials.len(), 5, "{plan}");
    for (workload, value) in credentials {
        secrets.push((
            format!("credential of {workload}"),
            value.as_str().unwrap().to_owned(),
        ));
    }
    let file = dir.path().join("app_web");
    std::fs::write(&file, credentials["app/web"].as_str().unwrap()).unwrap();
    let trust = format!(
        "mode = \"remote\"\nissuers = [\"{url}\"]\nbootstrap = \"file:{}\"\n",
        file.display()
    );
    let s = spawn_sidecar(Options {
        trust_extra: &trust,
        ..Options::default()
    })
    .await;
    token(&s, None).await;
    s.daemon.renew(now()).await.unwrap();
    secrets.push((
        "remote grant".into(),
        s.sidecar.grant().compact().to_owned(),
    ));

    // Refused at start: the credential of another workload.
    let other = tempfile::tempdir().unwrap();
    let cfg = write_config(
        other.path(),
        &Options {
            workload: "task/send-report",
            trust_extra: &trust,
            ..Options::default()
        },
    );
    let config = authproxy::config::Config::load_with_env(&cfg, Some(Default::default())).unwrap();
    assert!(
        authproxy::daemon::Daemon::start(config, now())
            .await
            .is_err()
    );
    // Refused at renewal: the file now holds another workload's credential.
    std::fs::write(&file, credentials["task/notify"].as_str().unwrap()).unwrap();
    assert!(s.daemon.renew(now()).await.is_err());
}
