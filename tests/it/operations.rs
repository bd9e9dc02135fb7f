//! Operability: metrics, reload on SIGHUP, graceful shutdown, `authproxy
//! health`, JSON logs and request ids — against the real daemon binary.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use axum::Router;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const BIN: &str = env!("CARGO_BIN_EXE_authproxy");

async fn metrics(url: &str) -> String {
    client()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_name_and_count_tokens_grant_and_proxy() {
    let closed = closed_addr();
    let ok = Router::new().fallback(|| async { "fine" });
    let (up, _stop) = serve(ok).await;
    let good = spawn_sidecar(Options {
        sections: proxy_to(&up),
        ..Options::default()
    })
    .await;
    let bad = spawn_sidecar(Options {
        sections: proxy_to(&format!("http://{closed}")),
        ..Options::default()
    })
    .await;
    let cc = ("grant_type", "client_credentials");
    request_token(&good.token_url(), &[cc]).await;
    request_token(&good.token_url(), &[cc]).await;
    request_token(&good.token_url(), &[cc, ("scope", "task:operate:nope")]).await;
    assert_eq!(
        api_client()
            .get(format!("{}/api/x", good.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        api_client()
            .get(format!("{}/api/x", bad.url))
            .send()
            .await
            .unwrap()
            .status(),
        502
    );

    let res = client()
        .get(format!("{}/metrics", good.url))
        .send()
        .await
        .unwrap();
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let m = res.text().await.unwrap();
    assert_eq!(
        metric(
            &m,
            "authproxy_tokens_total{workload=\"app/web\",result=\"issued\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "authproxy_tokens_total{workload=\"app/web\",result=\"reused\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "authproxy_tokens_total{workload=\"app/web\",result=\"invalid_scope\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&m, "authproxy_token_request_duration_seconds_count"),
        3.0
    );
    let left = metric(&m, "authproxy_grant_expiry_seconds");
    assert!((86_000.0..=86_400.0).contains(&left), "{left}");
    assert_eq!(
        metric(&m, "authproxy_proxy_requests_total{status=\"2xx\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "authproxy_proxy_request_duration_seconds_count"),
        1.0
    );

    let m = metrics(&bad.url).await;
    assert_eq!(
        metric(
            &m,
            "authproxy_proxy_upstream_errors_total{kind=\"unreachable\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&m, "authproxy_proxy_requests_total{status=\"5xx\"}"),
        1.0
    );
    // No token or grant material in the exposition.
    assert!(!m.contains("eyJ"));
}

#[tokio::test]
async fn the_layer_reports_into_the_upstreams_registry() {
    let s = spawn_sidecar(Options::default()).await;
    let mut registry = prometheus_client::registry::Registry::default();
    let auth = authproxy_layer::Authorizer::builder()
        .jwks_url(format!("{}/.well-known/jwks.json", s.url))
        .audience(AUDIENCE)
        .environment("main")
        .metrics(&mut registry)
        .build()
        .await
        .unwrap();
    let app = Router::new().route(
        "/e",
        axum::routing::get(|| async { "ok" }).route_layer(auth.require("env:view")),
    );
    let (api, _stop) = serve(app).await;
    let t = token(&s, None).await;
    call(reqwest::Method::GET, &format!("{api}/e"), Some(&t)).await;
    call(reqwest::Method::GET, &format!("{api}/e"), None).await;
    call(reqwest::Method::GET, &format!("{api}/e"), Some("x.y.z")).await;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert_eq!(
        metric(&text, "authproxy_layer_requests_total{result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "authproxy_layer_requests_total{result=\"missing\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "authproxy_layer_requests_total{result=\"invalid_token\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&text, "authproxy_layer_verification_duration_seconds_count"),
        3.0
    );
}

async fn scope_of(url: &str) -> (u16, serde_json::Value) {
    let (st, body) = request_token(
        &format!("{url}/oauth2/token"),
        &[("grant_type", "client_credentials")],
    )
    .await;
    (st.as_u16(), body)
}

#[tokio::test]
async fn sighup_reloads_good_declarations_and_keeps_the_old_on_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &Options::default());
    let decl = dir.path().join("project.yaml");
    let mut d = Daemon::start(&cfg, "text", "info,authproxy=debug");
    let (_, before) = scope_of(&d.url).await;
    assert_eq!(before["scope"], "task:operate:send-report env:view");
    let grant_before = part(before["access_token"].as_str().unwrap(), 1)["grant"].clone();

    // Good: web loses task:operate:send-report.
    std::fs::write(
        &decl,
        "applications:\n  web:\n    authorizations: [{ type: env, action: view }]\n",
    )
    .unwrap();
    d.signal("-HUP");
    d.wait_log("declarations reloaded; new grant issued");
    let (st, after) = scope_of(&d.url).await;
    assert_eq!(st, 200);
    assert_eq!(
        after["scope"], "env:view",
        "reuse cache must be dropped on reload"
    );
    let grant_after = part(after["access_token"].as_str().unwrap(), 1)["grant"].clone();
    assert_ne!(grant_before, grant_after);
    assert_eq!(part(grant_after.as_str().unwrap(), 1)["scope"], "env:view");

    // Bad: a cron with authorizations. The sidecar keeps serving env:view.
    std::fs::write(
        &decl,
        "applications:\n  web:\n    authorizations: []\n    crons:\n      n: { authorizations: [] }\n",
    )
    .unwrap();
    d.signal("-HUP");
    let line = d.wait_log("reload refused");
    assert!(
        line.contains("applications.web.crons.n.authorizations"),
        "{line}"
    );
    let (st, still) = scope_of(&d.url).await;
    assert_eq!(st, 200);
    assert_eq!(still["scope"], "env:view");

    // Valid declarations without this workload: it drops to no
    // authorizations (issue #11: reload must not fail open).
    std::fs::write(&decl, "applications:\n  other: {}\n").unwrap();
    d.signal("-HUP");
    d.wait_log("declarations reloaded; new grant issued");
    let (st, none) = scope_of(&d.url).await;
    assert_eq!(st, 400, "{none}");
    assert_eq!(none["error"], "invalid_scope");
    d.signal("-TERM");
    assert!(d.wait_exit(Duration::from_secs(10)).success());
}

/// A reload reads and parses the declarations off the runtime thread (#11
/// item 9): while it waits on a file that is slow to come — a FIFO no one
/// writes to yet — the sidecar, on its one runtime thread, keeps answering.
#[tokio::test]
async fn a_slow_reload_does_not_stall_the_sidecar() {
    let s = spawn_sidecar(Options::default()).await;
    let decl = s.dir.path().join("project.yaml");
    std::fs::remove_file(&decl).unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(&decl)
            .status()
            .unwrap()
            .success()
    );
    let written = Arc::new(AtomicBool::new(false));
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let writer = {
        let (decl, written) = (decl.clone(), Arc::clone(&written));
        std::thread::spawn(move || {
            // When told to, or after 5 s: a stalled runtime then fails the
            // test instead of hanging it.
            let _ = wait.recv_timeout(Duration::from_secs(5));
            written.store(true, Ordering::SeqCst);
            std::fs::write(&decl, PROJECT).unwrap();
        })
    };
    let daemon = Arc::clone(&s.daemon);
    let reload = tokio::spawn(async move { daemon.reload(now()).await });
    // Let the reload start and wait on the FIFO.
    tokio::task::yield_now().await;
    let res = client()
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        !written.load(Ordering::SeqCst),
        "the sidecar answered only once the reload had finished"
    );
    go.send(()).unwrap();
    assert!(!reload.await.unwrap().unwrap(), "same declarations");
    writer.join().unwrap();
}

#[tokio::test]
async fn sigterm_during_a_slow_proxied_request_still_returns_it_whole() {
    let body = "x".repeat(64 * 1024);
    let b = body.clone();
    let arrived = std::sync::Arc::new(tokio::sync::Notify::new());
    let upstream_saw_it = std::sync::Arc::clone(&arrived);
    let slow = Router::new().fallback(move || {
        let b = b.clone();
        let arrived = std::sync::Arc::clone(&upstream_saw_it);
        async move {
            arrived.notify_one();
            tokio::time::sleep(Duration::from_millis(800)).await;
            b
        }
    });
    let (up, _stop) = serve(slow).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &Options {
            sections: proxy_to(&up),
            ..Options::default()
        },
    );
    let mut d = Daemon::start(&cfg, "text", "info,authproxy=debug");
    let url = format!("{}/api/slow", d.url);
    let pending = tokio::spawn(async move {
        api_client()
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    // SIGTERM once the request is in flight: the upstream has it.
    arrived.notified().await;
    d.signal("-TERM");
    let got = pending.await.unwrap();
    assert_eq!(got.len(), body.len());
    assert_eq!(got, body);
    assert!(d.wait_exit(Duration::from_secs(10)).success());
}

#[tokio::test]
async fn shutdown_completes_with_idle_keep_alive_connections_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &Options::default());
    let mut d = Daemon::start(&cfg, "text", "info,authproxy=debug");
    let addr = d.url.trim_start_matches("http://").to_owned();
    // Three keep-alive connections, each having completed one request.
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        conns.push(s);
    }
    let started = Instant::now();
    d.signal("-TERM");
    assert!(d.wait_exit(Duration::from_secs(5)).success());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "idle connections held shutdown for {:?}",
        started.elapsed()
    );
}

async fn health(url: &str, config: &std::path::Path) -> bool {
    let url = url.to_owned();
    let config = config.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["health", "--endpoint", &url, "--config"])
            .arg(config)
            .output()
            .unwrap()
            .status
            .success()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn health_is_zero_when_ready_and_non_zero_when_down() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &Options::default());
    let mut d = Daemon::start(&cfg, "text", "info,authproxy=debug");
    assert!(health(&d.url, &cfg).await);
    d.signal("-TERM");
    d.wait_exit(Duration::from_secs(10));
    assert!(!health(&d.url, &cfg).await);
}

#[tokio::test]
async fn json_logs_carry_request_ids_and_the_audit_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &Options::default());
    let d = Daemon::start(&cfg, "json", "info,authproxy=debug");
    let res = client()
        .post(format!("{}/oauth2/token", d.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-request-id", "req-abc-123")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "req-abc-123");
    let line = d.wait_log("token issued");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["fields"]["message"], "token issued");
    assert_eq!(v["fields"]["sub"], "app/web");
    assert_eq!(v["span"]["id"], "req-abc-123");
    assert!(!line.contains("eyJ"));

    // Without one, the sidecar makes one up and returns it.
    let res = client()
        .get(format!("{}/healthz", d.url))
        .send()
        .await
        .unwrap();
    assert!(!res.headers()["x-request-id"].is_empty());
}
