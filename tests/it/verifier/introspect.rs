//! `POST /introspect` (RFC 7662) for each token state, and who may ask.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt as _;

use base64::Engine as _;
use serde_json::{Value, json};

use super::*;

const SECRET: &str = "introspection-secret-0123456789abcdef";

async fn introspect(url: &str, form: &str, authorization: Option<&str>) -> (u16, Value) {
    let mut req = post_form(&format!("{url}/introspect"), form);
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    assert_eq!(res.headers()["cache-control"], "no-store");
    (status, res.json().await.unwrap())
}

fn form(token: &str) -> String {
    serde_urlencoded::to_string([("token", token), ("token_type_hint", "access_token")]).unwrap()
}

/// A secret file (0600) and the override that names it.
fn secret_file(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("introspection-secret");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn an_active_token_is_described_and_every_other_state_is_only_inactive() {
    let s = spawn_sidecar(Options::default()).await;
    let v = spawn_verifier(&s, &[]).await;
    let t = token(&s, None).await;
    let claims = part(&t, 1);
    let (status, body) = introspect(&v.url, &form(&t), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({
            "active": true,
            "scope": claims["scope"],
            "sub": "app/web",
            "client_id": "app/web",
            "exp": claims["exp"],
            "iat": claims["iat"],
            "aud": AUDIENCE,
            "iss": "urn:authproxy:test",
            "token_type": "Bearer",
            "env": "main",
            "jti": claims["jti"],
        })
    );

    let t0 = now();
    for (state, token) in [
        (
            "expired",
            token_from_root(&s, "main", AUDIENCE, "env:view", t0 - 7200),
        ),
        (
            "not yet valid",
            token_from_root(&s, "main", AUDIENCE, "env:view", t0 + 600),
        ),
        (
            "wrong audience",
            token_from_root(&s, "main", "https://other.example", "env:view", t0),
        ),
        (
            "wrong environment",
            token_from_root(&s, "staging", AUDIENCE, "env:view", t0),
        ),
        ("tampered", tampered(&t)),
        ("garbage", "not-a-token".to_owned()),
        ("a grant, not a token", part_raw(&t)),
    ] {
        let (status, body) = introspect(&v.url, &form(&token), None).await;
        assert_eq!((status, body), (200, json!({"active": false})), "{state}");
    }
    // The honest chain from the same root is active: the states above
    // differ from it only where they say.
    let honest = token_from_root(&s, "main", AUDIENCE, "env:view", t0);
    assert_eq!(
        introspect(&v.url, &form(&honest), None).await.1["active"],
        true
    );
}

/// The grant inside `token`, which is a JWS too.
fn part_raw(token: &str) -> String {
    part(token, 1)["grant"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn malformed_requests_are_invalid_requests() {
    let s = spawn_sidecar(Options::default()).await;
    let v = spawn_verifier(&s, &[]).await;
    for body in ["", "token=", "token=a&token=b", "x=y"] {
        let (status, body) = introspect(&v.url, body, None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request"))
        );
    }
    let res = client()
        .post(format!("{}/introspect", v.url))
        .header("content-type", "application/json")
        .body("{\"token\":\"x\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = client()
        .get(format!("{}/introspect", v.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "POST");
}

/// This machine's address on its default route (no packet is sent).
fn non_loopback_ipv4() -> IpAddr {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect("192.0.2.1:9")
        .or_else(|_| s.connect("8.8.8.8:53"))
        .unwrap();
    let ip = s.local_addr().unwrap().ip();
    assert!(
        !ip.is_loopback() && !ip.is_unspecified(),
        "this test needs a non-loopback IPv4 address to call from"
    );
    ip
}

#[tokio::test]
async fn callers_that_are_not_local_need_the_secret() {
    let s = spawn_sidecar(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(&dir);
    let t = token(&s, None).await;
    let good = form(&t);
    let remote = |port: u16| format!("http://{}:{port}", non_loopback_ipv4());

    // Without a secret configured: loopback only.
    let open = spawn_verifier_on(&s, "0.0.0.0:0", &[]).await;
    let (status, body) = introspect(&remote(open.port), &good, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    assert_eq!(introspect(&open.url, &good, None).await.0, 200);
    let (status, _) = introspect(&open.url, &good, Some(&format!("Bearer {SECRET}"))).await;
    assert_eq!(status, 401, "a secret sent where none is configured");

    // With one: the secret from anywhere, loopback without it.
    let v = spawn_verifier_on(
        &s,
        "0.0.0.0:0",
        &[("AUTHPROXY__INTROSPECTION__SECRET_FILE", &secret)],
    )
    .await;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("my-api:{SECRET}"))
    );
    for authorization in [
        None,
        Some("Bearer wrong-secret-0123456789abcdef"),
        Some("Basic bXktYXBpOndyb25n"),
        Some(&format!("Bearer {SECRET}x")),
    ] {
        let (status, body) = introspect(&remote(v.port), &good, authorization).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client")),
            "{authorization:?}"
        );
    }
    for authorization in [Some(format!("Bearer {SECRET}")), Some(basic)] {
        let (status, body) = introspect(&remote(v.port), &good, authorization.as_deref()).await;
        assert_eq!((status, body["active"].as_bool()), (200, Some(true)));
    }
    assert_eq!(introspect(&v.url, &good, None).await.1["active"], true);

    // A relayed request from loopback is not a local caller.
    let res = post_form(&format!("{}/introspect", v.url), &good)
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(
        res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
}
