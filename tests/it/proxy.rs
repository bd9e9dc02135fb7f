//! Forward-proxy mode against real upstreams on 127.0.0.1:0.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::IntoResponse;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// An upstream that echoes what it received and records every request.
async fn echo_upstream() -> (
    String,
    Arc<Mutex<Vec<Value>>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let router = Router::new().fallback(move |req: Request| {
        let s = Arc::clone(&s);
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            let headers: serde_json::Map<String, Value> = parts
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap())))
                .collect();
            let v = json!({
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
                "query": parts.uri.query(),
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
            });
            s.lock().unwrap().push(v.clone());
            (
                [("x-upstream", "yes"), ("connection", "keep-alive")],
                axum::Json(v),
            )
        }
    });
    let (url, stop) = serve(router).await;
    (url, seen, stop)
}

async fn proxied_sidecar(upstream: &str, extra: &str) -> TestSidecar {
    let sections = format!("[proxy]\nupstream = \"{upstream}\"\n{extra}");
    spawn_sidecar(Options {
        sections: Box::leak(sections.into_boxed_str()),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn get_and_post_are_forwarded_with_the_sidecar_token_replacing_the_clients() {
    let (up, _seen, _stop) = echo_upstream().await;
    let s = proxied_sidecar(&format!("{up}/base"), "").await;
    let auth = authorizer_for(&s).await;

    let res = api_client()
        .get(format!("{}/api/things/a%20b?x=1&y=two", s.url))
        .header("authorization", "Bearer client-supplied")
        .header("x-custom", "kept")
        .header("connection", "x-hop")
        .header("x-hop", "dropped")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-upstream"], "yes");
    // The upstream's hop-by-hop `Connection: keep-alive` is not passed on.
    assert!(res.headers().get("connection").is_none());
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/base/things/a%20b");
    assert_eq!(v["query"], "x=1&y=two");
    assert_eq!(v["headers"]["x-custom"], "kept");
    assert!(v["headers"].get("x-hop").is_none(), "{v}");
    let bearer = v["headers"]["authorization"].as_str().unwrap();
    let token = bearer.strip_prefix("Bearer ").unwrap();
    assert_ne!(token, "client-supplied");
    let p = auth.verify(token, now()).await.unwrap();
    assert_eq!(p.sub().to_string(), "app/web");
    assert_eq!(p.scopes().to_string(), "task:operate:send-report env:view");

    let res = api_client()
        .post(format!("{}/api/submit", s.url))
        .header("content-type", "application/json")
        .body(r#"{"hello":"world"}"#)
        .send()
        .await
        .unwrap();
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["body"], r#"{"hello":"world"}"#);
    assert_eq!(v["headers"]["content-type"], "application/json");
}

/// The proxy lane (which skips the router) keeps what every request gets:
/// an id, the client's or a new one, echoed and forwarded upstream.
#[tokio::test]
async fn proxied_requests_carry_their_request_id_both_ways() {
    let (up, _seen, _stop) = echo_upstream().await;
    let s = proxied_sidecar(&up, "").await;
    let res = api_client()
        .get(format!("{}/api/x", s.url))
        .header("x-request-id", "req-proxied-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "req-proxied-1");
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["headers"]["x-request-id"], "req-proxied-1");

    let res = api_client()
        .get(format!("{}/api/x", s.url))
        .send()
        .await
        .unwrap();
    let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(!id.is_empty());
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["headers"]["x-request-id"], id.as_str());
}

/// How the hand-written upstream below ends each response.
#[derive(Clone, Copy)]
enum Ending {
    /// `Content-Length`, connection kept.
    Length,
    /// Chunked, connection kept.
    Chunked,
    /// `Content-Length`, then the connection closed without a word, as an
    /// upstream's keep-alive timeout does.
    SilentClose,
}

/// An HTTP/1.1 upstream that answers every request `ok` and counts the
/// connections it accepted.
async fn counting_upstream(ending: Ending) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    let answer: &[u8] = match ending {
                        Ending::Length | Ending::SilentClose => {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                        }
                        Ending::Chunked => {
                            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                        }
                    };
                    sock.write_all(answer).await.unwrap();
                    if matches!(ending, Ending::SilentClose) {
                        return;
                    }
                }
            });
        }
    });
    (url, accepted)
}

/// Upstream connections are kept and reused once a response has been read
/// to the end, whatever its framing; one the upstream closed while idle is
/// replaced without the workload noticing.
#[tokio::test]
async fn upstream_connections_are_reused_and_closed_ones_replaced() {
    for (ending, connections) in [
        (Ending::Length, 1),
        (Ending::Chunked, 1),
        (Ending::SilentClose, 5),
    ] {
        let (up, accepted) = counting_upstream(ending).await;
        let s = proxied_sidecar(&up, "").await;
        for _ in 0..5 {
            let res = api_client()
                .get(format!("{}/api/x", s.url))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            assert_eq!(res.text().await.unwrap(), "ok");
            // Let a silent close reach the sidecar before the next request
            // (without it, the request that finds the connection closed is
            // sent again on a new one: also fine, but not what is tested).
            if matches!(ending, Ending::SilentClose) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            connections
        );
    }
}

#[tokio::test]
async fn connection_authorization_cannot_strip_the_injected_token() {
    let (up, _seen, _stop) = echo_upstream().await;
    let s = proxied_sidecar(&up, "").await;
    let res = api_client()
        .get(format!("{}/api/x", s.url))
        .header("connection", "authorization, close")
        .send()
        .await
        .unwrap();
    let v: Value = res.json().await.unwrap();
    assert!(
        v["headers"]["authorization"]
            .as_str()
            .unwrap()
            .starts_with("Bearer ey")
    );
}

#[tokio::test]
async fn the_example_upstream_answers_through_the_proxy_and_refusals_pass_through() {
    let web = spawn_sidecar(Options {
        declarations: E2E_PROJECT,
        ..Options::default()
    })
    .await;
    let auth = authorizer_for(&web).await;
    let (api, _stop) = serve(crate::environment_api::app(&auth, "main")).await;
    let s = spawn_sidecar(Options {
        workload: "worker/web/mailer",
        declarations: E2E_PROJECT,
        state_dir: Some(web.state_dir.clone()),
        sections: proxy_to(&api),
        ..Options::default()
    })
    .await;
    let (st, _, run) = call_api(
        reqwest::Method::POST,
        &format!("{}/api/tasks/notify/runs", s.url),
    )
    .await;
    assert_eq!(st, 202, "{run}");
    assert_eq!(run["triggered_by"], "worker/web/mailer");
    // The upstream's 403 comes back unchanged, challenge included.
    let (st, www, body) =
        call_api(reqwest::Method::GET, &format!("{}/api/environment", s.url)).await;
    assert_eq!(st, 403);
    assert_eq!(
        www.as_deref(),
        Some("Bearer error=\"insufficient_scope\", scope=\"env:view\"")
    );
    assert_eq!(body["scope"], "env:view");
}

#[tokio::test]
async fn concurrent_requests_share_one_token_even_with_reuse_off() {
    let (up, seen, _stop) = echo_upstream().await;
    let s = spawn_sidecar(Options {
        tokens_extra: "reuse = false",
        sections: proxy_to(&up),
        ..Options::default()
    })
    .await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let url = format!("{}/api/x", s.url);
        tasks.push(tokio::spawn(async move {
            api_client().get(url).send().await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let seen = seen.lock().unwrap();
    let tokens: std::collections::BTreeSet<&str> = seen
        .iter()
        .map(|v| v["headers"]["authorization"].as_str().unwrap())
        .collect();
    assert_eq!(seen.len(), 50);
    assert_eq!(tokens.len(), 1, "a stampede minted {} tokens", tokens.len());
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_and_a_slow_one_a_504() {
    let closed = closed_addr();
    let s = proxied_sidecar(&format!("http://{closed}"), "").await;
    let (st, _, body) = call_api(reqwest::Method::GET, &format!("{}/api/x", s.url)).await;
    assert_eq!(st, 502);
    assert_eq!(body["error"], "bad_gateway");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("unreachable")
    );

    let slow = Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        "late"
    });
    let (up, _stop) = serve(slow).await;
    let s = proxied_sidecar(&up, "timeout = \"1s\"\n").await;
    let started = std::time::Instant::now();
    let (st, _, body) = call_api(reqwest::Method::GET, &format!("{}/api/x", s.url)).await;
    assert_eq!(st, 504);
    assert_eq!(body["error"], "gateway_timeout");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn redirects_are_passed_back_never_followed_with_the_token() {
    let (elsewhere, seen_elsewhere, _s1) = echo_upstream().await;
    let target = format!("{elsewhere}/steal");
    let redirecting = Router::new().fallback(move || {
        let target = target.clone();
        async move { (axum::http::StatusCode::FOUND, [("location", target)]).into_response() }
    });
    let (up, _s2) = serve(redirecting).await;
    let s = proxied_sidecar(&up, "").await;
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .default_headers(
            [(
                reqwest::header::HeaderName::from_static(REQUEST_HEADER.0),
                reqwest::header::HeaderValue::from_static(REQUEST_HEADER.1),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    let res = c.get(format!("{}/api/x", s.url)).send().await.unwrap();
    assert_eq!(res.status(), 302);
    assert!(seen_elsewhere.lock().unwrap().is_empty());
}

async fn raw_request(url: &str, request: &str) -> String {
    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn absolute_form_targets_and_connect_are_refused() {
    let (up, seen, _stop) = echo_upstream().await;
    let s = proxied_sidecar(&up, "").await;
    let host = s.url.trim_start_matches("http://").to_owned();
    let res = raw_request(
        &s.url,
        &format!(
            "GET http://evil.example/api/x HTTP/1.1\r\nHost: {host}\r\nX-Authproxy-Request: 1\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 400"), "{res}");
    let res = raw_request(
        &s.url,
        "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 4"), "{res}");
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn browsers_and_unconfigured_sidecars_get_no_proxy() {
    let (up, seen, _stop) = echo_upstream().await;
    let s = proxied_sidecar(&up, "").await;
    let res = api_client()
        .get(format!("{}/api/x", s.url))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert!(seen.lock().unwrap().is_empty());

    let plain = spawn_sidecar(Options::default()).await;
    let (st, _, body) = call_api(reqwest::Method::GET, &format!("{}/api/x", plain.url)).await;
    assert_eq!(st, 404);
    assert_eq!(body["error"], "not_found");
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

const BIG: usize = 100 * 1024 * 1024;

/// 100 MiB up and 100 MiB down through the real daemon, whose peak RSS must
/// stay far below the body size: bodies are streamed, not buffered.
#[tokio::test]
async fn large_bodies_stream_through_with_flat_memory() {
    // Upstream: counts an upload chunk by chunk; serves a download as a stream.
    let router = Router::new()
        .route(
            "/upload",
            axum::routing::post(|body: Body| async move {
                let mut n = 0usize;
                let mut s = body.into_data_stream();
                while let Some(chunk) = s.next().await {
                    n += chunk.unwrap().len();
                }
                n.to_string()
            }),
        )
        .route(
            "/download",
            axum::routing::get(|| async {
                let chunk = bytes_of(1 << 20);
                let stream = futures_util::stream::iter(
                    (0..BIG >> 20).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
                );
                Body::from_stream(stream)
            }),
        );
    let (up, _stop) = serve(router).await;

    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &Options {
            sections: proxy_to(&up),
            ..Options::default()
        },
    );
    let d = Daemon::start(&cfg, "json", "info");
    let base = d.url.clone();
    let before = peak_rss_kib(d.child.id());

    let res = api_client()
        .post(format!("{base}/api/upload"))
        .body(vec![7u8; BIG])
        .send()
        .await
        .unwrap();
    assert_eq!(res.text().await.unwrap(), BIG.to_string());

    let mut res = api_client()
        .get(format!("{base}/api/download"))
        .send()
        .await
        .unwrap();
    let mut n = 0;
    while let Some(chunk) = res.chunk().await.unwrap() {
        n += chunk.len();
    }
    assert_eq!(n, BIG);

    let peak = peak_rss_kib(d.child.id());
    eprintln!("daemon peak RSS: {before} KiB before, {peak} KiB after 2 x 100 MiB");
    drop(d);
    assert!(
        peak - before < 32 * 1024,
        "daemon peak RSS grew {} MiB for 2 × 100 MiB bodies",
        (peak - before) / 1024
    );
}

fn bytes_of(n: usize) -> axum::body::Bytes {
    axum::body::Bytes::from(vec![1u8; n])
}

/// Issue #11, item 4: what an `<img src="http://127.0.0.1:8200/api/…">` or a
/// cross-site form sends carries Fetch Metadata; refused on every route.
#[tokio::test]
async fn browser_fetch_metadata_is_refused_on_every_route() {
    let (up, seen, _stop) = echo_upstream().await;
    let s = proxied_sidecar(&up, "").await;
    let img = [
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-mode", "no-cors"),
        ("sec-fetch-dest", "image"),
    ];
    for path in [
        "/api/x",
        "/oauth2/token",
        "/healthz",
        "/.well-known/jwks.json",
    ] {
        let mut r = api_client().get(format!("{}{path}", s.url));
        for (k, v) in img {
            r = r.header(k, v);
        }
        let res = r.send().await.unwrap();
        assert_eq!(res.status(), 403, "{path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"], "access_denied", "{path}");
    }
    for (site, mode) in [
        ("same-site", "cors"),
        ("cross-site", "cors"),
        ("same-origin", "navigate"),
        ("none", "navigate"),
        ("same-origin", "no-cors"),
    ] {
        let res = api_client()
            .get(format!("{}/api/x", s.url))
            .header("sec-fetch-site", site)
            .header("sec-fetch-mode", mode)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "{site} {mode}");
    }
    // A cross-site form posted to the token endpoint (no Origin sent).
    let res = post_form(&s.token_url(), "grant_type=client_credentials")
        .header("sec-fetch-site", "cross-site")
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert!(seen.lock().unwrap().is_empty());
    // What programs send passes: Node's fetch says `Sec-Fetch-Mode: cors`.
    for (site, mode) in [
        (None, "cors"),
        (Some("none"), "cors"),
        (Some("same-origin"), "cors"),
    ] {
        let mut r = api_client()
            .get(format!("{}/api/x", s.url))
            .header("sec-fetch-mode", mode);
        if let Some(site) = site {
            r = r.header("sec-fetch-site", site);
        }
        assert_eq!(r.send().await.unwrap().status(), 200, "{site:?} {mode}");
    }
}

/// Issue #11, item 4: `/api/*` requires `X-Authproxy-Request: 1` (as cloud
/// metadata servers require `Metadata-Flavor`): a browser cannot add it
/// without a preflight we never approve, and SSRF primitives that fetch a
/// URL cannot add it at all. `proxy.require_header = false` turns it off.
#[tokio::test]
async fn the_proxy_requires_the_request_header() {
    let (up, seen, _stop) = echo_upstream().await;
    let s = proxied_sidecar(&up, "").await;
    for value in [None, Some("0"), Some("yes")] {
        let mut r = client().get(format!("{}/api/x", s.url));
        if let Some(v) = value {
            r = r.header(REQUEST_HEADER.0, v);
        }
        let res = r.send().await.unwrap();
        assert_eq!(res.status(), 403, "{value:?}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"], "access_denied");
        let d = body["error_description"].as_str().unwrap();
        assert!(d.contains("X-Authproxy-Request: 1"), "{d}");
    }
    assert!(seen.lock().unwrap().is_empty());
    let (st, _, v) = call_api(reqwest::Method::GET, &format!("{}/api/x", s.url)).await;
    assert_eq!(st, 200);
    // The header is for the sidecar; the upstream does not see it.
    assert!(v["headers"].get(REQUEST_HEADER.0).is_none(), "{v}");

    let open = proxied_sidecar(&up, "require_header = false\n").await;
    let res = client()
        .get(format!("{}/api/x", open.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// Issue #11, item 7: dot segments — plain, percent-encoded, mixed — and
/// backslashes cannot take the token out of the upstream's base path.
/// Raw requests: an HTTP client would resolve the dots itself.
#[tokio::test]
async fn dot_segments_and_backslashes_cannot_leave_the_upstream_base_path() {
    let (up, seen, _stop) = echo_upstream().await;
    let s = proxied_sidecar(&format!("{up}/base"), "").await;
    let host = s.url.trim_start_matches("http://").to_owned();
    let get = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Authproxy-Request: 1\r\nConnection: close\r\n\r\n"
        )
    };
    for path in [
        "/api/../admin",
        "/api/%2e%2e/admin",
        "/api/.%2e/admin",
        "/api/%2E./admin",
        "/api/..%5cadmin",
        "/api/..%5Cadmin",
        "/api/..\\admin",
        "/api/a/%2E%2E/%2e%2e/admin",
        "/api/a/b/../../../admin",
        "/api/a%2f..%2f..%2fadmin",
        "/api/..",
        "/api/%2e%2e",
        "/api/..?x=1",
    ] {
        let (res, _) = raw_exchange(&s.url, get(path).as_bytes(), Duration::from_secs(5)).await;
        assert!(res.starts_with("HTTP/1.1 400"), "{path}: {res}");
        assert!(
            seen.lock().unwrap().is_empty(),
            "{path} reached the upstream: {:?}",
            seen.lock().unwrap()
        );
    }
    // Inside the base path, paths still work; dots are resolved first.
    for (path, upstream_path) in [
        ("/api/a/b", "/base/a/b"),
        ("/api/a/./b/", "/base/a/b/"),
        ("/api/a/../b", "/base/b"),
        ("/api/a/%2e%2e/b", "/base/b"),
        ("/api", "/base"),
    ] {
        let (res, _) = raw_exchange(&s.url, get(path).as_bytes(), Duration::from_secs(5)).await;
        assert!(res.starts_with("HTTP/1.1 200"), "{path}: {res}");
        let seen = seen.lock().unwrap().pop().unwrap();
        assert_eq!(seen["path"], upstream_path, "{path}");
    }
}

/// Issue #11, item 10(b): like the token endpoint (400 invalid_scope), the
/// proxy attaches no empty-scope token: a workload without authorizations
/// gets a 403 JSON error and the upstream is not contacted.
#[tokio::test]
async fn a_workload_without_authorizations_gets_no_proxied_request() {
    let (up, seen, _stop) = echo_upstream().await;
    let s = spawn_sidecar(Options {
        workload: "worker/web/mailer",
        sections: proxy_to(&up),
        ..Options::default()
    })
    .await;
    let (st, _, body) = call_api(reqwest::Method::GET, &format!("{}/api/x", s.url)).await;
    assert_eq!(st, 403, "{body}");
    assert_eq!(body["error"], "access_denied");
    let d = body["error_description"].as_str().unwrap();
    assert!(
        d.contains("worker/web/mailer declares no authorizations"),
        "{d}"
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
}

/// Issue #11, item 10(d): an upstream that stops sending in the middle of a
/// body gets the client's connection cut after `proxy.idle_timeout`.
#[tokio::test]
async fn a_stalled_upstream_body_is_cut_after_the_idle_timeout() {
    let stalling = Router::new().fallback(|| async {
        let first = futures_util::stream::once(async {
            Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"first chunk"))
        });
        Body::from_stream(first.chain(futures_util::stream::pending()))
    });
    let (up, _stop) = serve(stalling).await;
    let s = proxied_sidecar(&up, "idle_timeout = \"1s\"\n").await;
    let mut res = api_client()
        .get(format!("{}/api/stall", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(&res.chunk().await.unwrap().unwrap()[..], b"first chunk");
    let started = std::time::Instant::now();
    let rest = tokio::time::timeout(Duration::from_secs(5), res.chunk())
        .await
        .expect("the stalled body was never cut");
    assert!(rest.is_err(), "the body ended as if complete: {rest:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}
