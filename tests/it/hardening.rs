//! Hostile clients against the real server: slowloris, idle connections,
//! oversized headers, connection floods, ambiguous framing, DNS rebinding,
//! CORS preflights, request floods, stale keys.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::time::{Duration, Instant};

use crate::common::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

fn addr(s: &TestSidecar) -> String {
    s.url.trim_start_matches("http://").to_owned()
}

async fn fast_sidecar() -> TestSidecar {
    spawn_sidecar(Options {
        server_extra: "header_read_timeout = \"1s\"",
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn a_slowloris_client_is_disconnected_and_others_are_unaffected() {
    let s = fast_sidecar().await;
    let mut slow = TcpStream::connect(addr(&s)).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // Meanwhile a normal client is served at once.
    let ok = client()
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // …well before the slow connection's 1 s deadline has even passed.
    assert!(started.elapsed() < Duration::from_secs(1));
    // Trickle a header byte every 200 ms: the deadline is for the whole head.
    for _ in 0..10 {
        if slow.write_all(b"X").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, closed) = read_all(&mut slow, Duration::from_secs(2)).await;
    assert!(closed, "slowloris connection still open");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let s = fast_sidecar().await;
    let mut c = TcpStream::connect(addr(&s)).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = c.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let started = Instant::now();
    let (_, closed) = read_all(&mut c, Duration::from_secs(3)).await;
    assert!(closed, "idle keep-alive connection was never closed");
    assert!(started.elapsed() < Duration::from_millis(2500));
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let s = spawn_sidecar(Options::default()).await;
    let res = client()
        .get(format!("{}/healthz", s.url))
        .header("x-big", "a".repeat(20 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 431);
    // Just under the cap is fine.
    let res = client()
        .get(format!("{}/healthz", s.url))
        .header("x-big", "a".repeat(12 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_a_slot_frees() {
    let s = spawn_sidecar(Options {
        server_extra: "max_connections = 2",
        ..Options::default()
    })
    .await;
    let a = TcpStream::connect(addr(&s)).await.unwrap();
    let _b = TcpStream::connect(addr(&s)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let c = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    assert!(
        c.get(format!("{}/healthz", s.url)).send().await.is_err(),
        "served beyond the cap"
    );
    drop(a);
    let res = client()
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

async fn raw(s: &TestSidecar, request: &[u8]) -> (String, bool) {
    let mut c = TcpStream::connect(addr(s)).await.unwrap();
    c.write_all(request).await.unwrap();
    read_all(&mut c, Duration::from_secs(3)).await
}

#[tokio::test]
async fn ambiguous_framing_is_refused_and_the_connection_closed() {
    let s = spawn_sidecar(Options::default()).await;
    let body = b"grant_type=client_credentials";
    // Two different Content-Lengths.
    let mut req = b"POST /oauth2/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 29\r\nContent-Length: 5\r\n\r\n".to_vec();
    req.extend_from_slice(body);
    let (res, closed) = raw(&s, &req).await;
    assert!(res.starts_with("HTTP/1.1 400"), "{res}");
    assert!(closed);

    // Content-Length and Transfer-Encoding, with a smuggled request behind.
    let smuggle = b"POST /oauth2/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n1d\r\ngrant_type=client_credentials\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let (res, closed) = raw(&s, smuggle).await;
    assert!(res.starts_with("HTTP/1.1 400"), "{res}");
    assert!(!res.contains("access_token"));
    assert!(closed);
    assert_eq!(
        res.matches("HTTP/1.1 ").count(),
        1,
        "the smuggled request was answered: {res}"
    );

    // Elsewhere hyper frames by Transfer-Encoding (RFC 9112 §6.3) and closes.
    let (res, closed) = raw(
        &s,
        b"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    )
    .await;
    assert!(closed);
    assert_eq!(res.matches("HTTP/1.1 ").count(), 1, "{res}");
}

#[tokio::test]
async fn a_non_loopback_host_header_gets_no_token_and_no_proxy() {
    let (up, _stop) = serve(axum::Router::new().fallback(|| async { "upstream" })).await;
    let s = spawn_sidecar(Options {
        sections: proxy_to(&up),
        ..Options::default()
    })
    .await;
    let port = s.url.rsplit(':').next().unwrap().to_owned();
    for host in [
        format!("evil.example:{port}"),
        "evil.example".into(),
        format!("10.0.0.1:{port}"),
    ] {
        let res = client()
            .post(s.token_url())
            .header("host", &host)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "{host}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"], "access_denied");
        let res = api_client()
            .get(format!("{}/api/x", s.url))
            .header("host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "proxy, {host}");
    }
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let res = client()
            .post(s.token_url())
            .header("host", &host)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{host}");
    }
    // Public documents are served whatever the Host.
    let res = client()
        .get(format!("{}/.well-known/jwks.json", s.url))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn preflights_get_no_cors_headers() {
    let s = spawn_sidecar(Options::default()).await;
    let res = client()
        .request(reqwest::Method::OPTIONS, s.token_url())
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(!res.status().is_success());
    for (name, _) in res.headers() {
        assert!(!name.as_str().starts_with("access-control-"), "{name}");
    }
    assert!(!res.text().await.unwrap().contains("access_token"));
}

#[tokio::test]
async fn the_optional_rate_limit_answers_429_with_retry_after() {
    // The bucket arithmetic is unit-tested with a time parameter
    // (server.rs); here only what holds however slow the machine is.
    let s = spawn_sidecar(Options {
        server_extra: "rate_limit = 1",
        ..Options::default()
    })
    .await;
    let started = Instant::now();
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..6 {
        let res = post_form(&s.token_url(), "grant_type=client_credentials")
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            200 => ok += 1,
            429 => {
                limited += 1;
                let retry: u64 = res.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry >= 1);
                let body: serde_json::Value = res.json().await.unwrap();
                assert_eq!(body["error"], "slow_down");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // A burst of 1, then 1 a second.
    assert!(
        ok >= 1 && f64::from(ok) <= 1.0 + elapsed.ceil(),
        "{ok} allowed in {elapsed:.2}s"
    );
    if elapsed < 4.0 {
        assert!(limited >= 1, "no 429 in {elapsed:.2}s");
    }
    // Without the setting there is no limit.
    let open = spawn_sidecar(Options::default()).await;
    for _ in 0..20 {
        assert_eq!(
            request_token(&open.token_url(), &[("grant_type", "client_credentials")])
                .await
                .0,
            200
        );
    }
}

#[tokio::test]
async fn stale_keys_keep_working_up_to_the_limit_then_fail_closed() {
    let s = spawn_sidecar(Options::default()).await;
    let jwks: serde_json::Value = jwks_json(&s).await;
    let key_server = axum::Router::new().fallback(move || {
        let j = jwks.clone();
        async move { axum::Json(j) }
    });
    let (url, key_server) = serve_stoppable(key_server).await;
    let built_at = now();
    let auth = authproxy_layer::Authorizer::builder()
        .jwks_url(url)
        .audience(AUDIENCE)
        .environment("main")
        .max_stale(Duration::from_secs(60))
        .min_refetch_interval(Duration::ZERO)
        .build()
        .await
        .unwrap();
    key_server.stop().await;
    let t = token(&s, None).await;
    // Time is a parameter: 30 s after the last fetch, the cached keys serve.
    assert!(auth.verify(&t, built_at + 30).await.is_ok());
    // Past the limit, with the key server still down: refused.
    assert_eq!(
        auth.verify(&t, built_at + 62).await.unwrap_err(),
        authproxy_core::verify::InvalidToken::KeysStale
    );
}

/// Issue #11, item 10(c): RFC 9112 §3.2 — a request with more than one
/// `Host` is a 400, whichever the checks would have read.
#[tokio::test]
async fn two_host_headers_are_a_400_on_every_route() {
    let s = spawn_sidecar(Options::default()).await;
    let body = "grant_type=client_credentials";
    for (first, second) in [
        ("127.0.0.1", "evil.example"),
        ("evil.example", "127.0.0.1"),
        ("127.0.0.1", "127.0.0.1"),
    ] {
        let req = format!(
            "POST /oauth2/token HTTP/1.1\r\nHost: {first}\r\nHost: {second}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        let (res, _) = raw(&s, req.as_bytes()).await;
        assert!(res.starts_with("HTTP/1.1 400"), "{first}, {second}: {res}");
        assert!(res.contains("invalid_request"), "{res}");
        assert!(!res.contains("access_token"), "{res}");
    }
    let (res, _) = raw(
        &s,
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 400"), "{res}");
}

/// The head of a token request whose body never comes.
fn bodiless_token_request(extra_headers: &str) -> String {
    format!(
        "POST /oauth2/token HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra_headers}\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
    )
}

/// Issue #11, item 3: a refused caller is answered on its request head and
/// its connection closed — it cannot hold a slot by never sending the body
/// it announced — and loopback callers keep getting tokens.
#[tokio::test]
async fn refused_callers_are_answered_before_their_body_and_free_their_slots() {
    let s = spawn_sidecar(Options {
        server_extra: "max_connections = 8",
        ..Options::default()
    })
    .await;
    let mut evil = Vec::new();
    for _ in 0..8 {
        let mut c = TcpStream::connect(addr(&s)).await.unwrap();
        c.write_all(bodiless_token_request("Origin: http://evil.example\r\n").as_bytes())
            .await
            .unwrap();
        evil.push(c);
    }
    let started = Instant::now();
    for c in &mut evil {
        let (res, closed) = read_all(c, Duration::from_secs(2)).await;
        assert!(
            res.starts_with("HTTP/1.1 403"),
            "no answer without the body after {:?}: {res:?}",
            started.elapsed()
        );
        assert!(res.contains("access_denied"), "{res}");
        assert!(closed, "the refused connection stays open");
    }
    let res = tokio::time::timeout(
        Duration::from_secs(2),
        post_form(&s.token_url(), "grant_type=client_credentials").send(),
    )
    .await
    .expect("a loopback caller waited for a slot")
    .unwrap();
    assert_eq!(res.status(), 200);
}

/// Issue #11, item 3: a body that never arrives times out
/// (`server.body_read_timeout`) with 408 and a closed connection.
#[tokio::test]
async fn a_token_request_body_that_never_arrives_gets_408() {
    let s = spawn_sidecar(Options {
        server_extra: "body_read_timeout = \"1s\"",
        ..Options::default()
    })
    .await;
    let mut c = TcpStream::connect(addr(&s)).await.unwrap();
    c.write_all(bodiless_token_request("").as_bytes())
        .await
        .unwrap();
    c.write_all(b"grant_type=").await.unwrap();
    let started = Instant::now();
    let (res, closed) = read_all(&mut c, Duration::from_secs(4)).await;
    assert!(res.starts_with("HTTP/1.1 408"), "{res:?}");
    assert!(res.contains("invalid_request"), "{res}");
    assert!(closed);
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// This machine's address on its default route, if it has one that is not
/// loopback (no packet is sent: a UDP "connect" only picks the route).
fn non_loopback_ipv4() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9")
        .or_else(|_| s.connect("8.8.8.8:53"))
        .ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// Issue #11, item 3: peers that are not loopback have their own small
/// connection budget (`server.max_remote_connections`, 16): beyond it they
/// are closed at once, and they never take loopback callers' slots.
#[tokio::test]
async fn non_loopback_peers_cannot_exhaust_the_connection_slots() {
    let Some(ip) = non_loopback_ipv4() else {
        eprintln!(
            "NOT RUN: this machine has no non-loopback IPv4 address; \
             serve.rs unit tests cover the remote budget"
        );
        return;
    };
    let s = spawn_sidecar(Options {
        bind: "0.0.0.0:0",
        server_extra: "max_connections = 20",
        ..Options::default()
    })
    .await;
    let port = s.url.rsplit(':').next().unwrap().to_owned();
    let remote = format!("{ip}:{port}");
    let mut conns = Vec::new();
    for _ in 0..20 {
        conns.push(TcpStream::connect(&remote).await.unwrap());
    }
    // Loopback callers are still served at once.
    let res = tokio::time::timeout(
        Duration::from_secs(2),
        post_form(&s.token_url(), "grant_type=client_credentials").send(),
    )
    .await
    .expect("remote peers took every slot")
    .unwrap();
    assert_eq!(res.status(), 200);
    // Exactly 16 remote connections are served; the others were closed.
    let mut closed = 0;
    for c in &mut conns {
        if read_all(c, Duration::from_millis(200)).await.1 {
            closed += 1;
        }
    }
    assert_eq!(closed, 4, "remote connections beyond the budget");
}

/// Issue #11, item 10(a): the discovery metadata and the metrics are for
/// the container's own code, like tokens: not for other machines, not for a
/// page that rebound a name to 127.0.0.1. The JWKS (public keys an upstream
/// in another container reads) and the probes (no information, used by
/// orchestrators from outside) stay open.
#[tokio::test]
async fn metadata_and_metrics_are_for_local_callers_only() {
    use axum::extract::connect_info::MockConnectInfo;
    use tower::ServiceExt as _;
    let s = spawn_sidecar(Options::default()).await;
    let guarded = ["/.well-known/oauth-authorization-server", "/metrics"];
    let open = ["/.well-known/jwks.json", "/healthz", "/readyz"];
    for path in guarded {
        for (h, v) in [("host", "evil.example"), ("origin", "https://evil.example")] {
            let res = client()
                .get(format!("{}{path}", s.url))
                .header(h, v)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 403, "{path} with {h}");
            let body: serde_json::Value = res.json().await.unwrap();
            assert_eq!(body["error"], "access_denied");
        }
        let ok = client()
            .get(format!("{}{path}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200, "{path}");
    }
    for path in open {
        let res = client()
            .get(format!("{}{path}", s.url))
            .header("host", "evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }
    // Another machine.
    let remote: std::net::SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let app = authproxy::server::router(s.daemon.services()).layer(MockConnectInfo(remote));
    let get = |path: &str| {
        axum::http::Request::get(path)
            .header("host", "127.0.0.1")
            .body(axum::body::Body::empty())
            .unwrap()
    };
    for path in guarded {
        let res = app.clone().oneshot(get(path)).await.unwrap();
        assert_eq!(res.status(), 403, "remote {path}");
    }
    for path in open {
        let res = app.clone().oneshot(get(path)).await.unwrap();
        assert_eq!(res.status(), 200, "remote {path}");
    }
}
