//! The sidecar's HTTP contract (DESIGN §4–5), against a real server on 127.0.0.1:0.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should panic loudly

use std::collections::BTreeSet;

use crate::common::*;
use jsonwebtoken::jwk::{Jwk, JwkSet, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};

#[tokio::test]
async fn a_token_request_returns_a_bearer_token_with_every_declared_scope() {
    let s = spawn_sidecar(Options::default()).await;
    let res = post_form(&s.token_url(), "grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert_eq!(res.headers()["pragma"], "no-cache");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["scope"], "task:operate:send-report env:view");
    let token = body["access_token"].as_str().unwrap();
    let header = part(token, 0);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "EdDSA");
    let claims = part(token, 1);
    for k in [
        "iss",
        "sub",
        "client_id",
        "aud",
        "env",
        "scope",
        "iat",
        "nbf",
        "exp",
        "jti",
        "grant",
    ] {
        assert!(claims.get(k).is_some(), "claim {k} missing");
    }
    assert_eq!(claims["sub"], "app/web");
    assert_eq!(claims["client_id"], "app/web");
    assert_eq!(claims["aud"], AUDIENCE);
    assert_eq!(claims["env"], "main");
    assert_eq!(claims["iss"], "urn:authproxy:test");
}

/// The chain verified with nothing but the JWKS and `jsonwebtoken`.
#[tokio::test]
async fn the_chain_verifies_from_the_jwks_alone() {
    let s = spawn_sidecar(Options::default()).await;
    let token = token(&s, Some("env:view")).await;
    let jwks: JwkSet = serde_json::from_value(jwks_json(&s).await).unwrap();

    // 1. The root signs the grant.
    let claims = part(&token, 1);
    let grant = claims["grant"].as_str().unwrap();
    let gh = decode_header(grant).unwrap();
    assert_eq!(gh.typ.as_deref(), Some("grant+jwt"));
    let root = jwks
        .find(gh.kid.as_deref().unwrap())
        .expect("grant kid is a root key");
    let mut v = Validation::new(Algorithm::EdDSA);
    v.validate_aud = false;
    let g = decode::<serde_json::Value>(grant, &DecodingKey::from_jwk(root).unwrap(), &v)
        .unwrap()
        .claims;

    // 2. The grant's cnf.jkt is the thumbprint of the key in the token header.
    let th = decode_header(&token).unwrap();
    assert_eq!(th.typ.as_deref(), Some("at+jwt"));
    let sidecar_jwk: Jwk = th.jwk.clone().unwrap();
    let jkt = sidecar_jwk.thumbprint(ThumbprintHash::SHA256).unwrap();
    assert_eq!(g["cnf"]["jkt"], jkt.as_str());
    assert_eq!(th.kid.as_deref(), Some(jkt.as_str()));

    // 3. The token's signature verifies with that key.
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_audience(&[AUDIENCE]);
    let t = decode::<serde_json::Value>(&token, &DecodingKey::from_jwk(&sidecar_jwk).unwrap(), &v)
        .unwrap()
        .claims;

    // 4. Scopes within the ceiling; env, sub and iss agree; exp within the grant's.
    let set = |s: &serde_json::Value| -> BTreeSet<String> {
        s.as_str().unwrap().split(' ').map(str::to_owned).collect()
    };
    assert!(set(&t["scope"]).is_subset(&set(&g["scope"])));
    assert_eq!(t["env"], g["env"]);
    assert_eq!(t["sub"], g["sub"]);
    assert_eq!(t["iss"], g["iss"]);
    assert!(t["exp"].as_u64() <= g["exp"].as_u64());

    // 5. The sidecar key is not a root key: it could not sign a grant.
    assert!(jwks.find(&jkt).is_none());
}

#[tokio::test]
async fn jwks_publishes_public_root_keys_only() {
    let s = spawn_sidecar(Options::default()).await;
    let body: serde_json::Value = jwks_json(&s).await;
    let keys = body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let k = &keys[0];
    assert_eq!(k["kty"], "OKP");
    assert_eq!(k["crv"], "Ed25519");
    assert!(k.get("d").is_none(), "private part published: {k}");
    let root_pem = std::fs::read_to_string(s.state_dir.join("root-key.pem")).unwrap();
    let root = authproxy_core::keys::SigningKey::from_pkcs8_pem(root_pem.as_bytes()).unwrap();
    assert_eq!(k["kid"], root.public().thumbprint());
}

#[tokio::test]
async fn discovery_and_probes_answer() {
    let s = spawn_sidecar(Options::default()).await;
    let m: serde_json::Value = client()
        .get(format!("{}/.well-known/oauth-authorization-server", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["issuer"], s.url);
    assert_eq!(m["token_endpoint"], format!("{}/oauth2/token", s.url));
    assert_eq!(m["jwks_uri"], format!("{}/.well-known/jwks.json", s.url));
    assert_eq!(
        m["grant_types_supported"],
        serde_json::json!(["client_credentials"])
    );
    assert_eq!(
        m["scopes_supported"],
        serde_json::json!(["task:operate:send-report", "env:view"])
    );
    for p in ["/healthz", "/readyz"] {
        let r = client().get(format!("{}{p}", s.url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{p}");
    }
}

#[tokio::test]
async fn a_narrower_scope_is_granted_as_asked() {
    let s = spawn_sidecar(Options::default()).await;
    let (status, body) = request_token(
        &s.token_url(),
        &[("grant_type", "client_credentials"), ("scope", "env:view")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["scope"], "env:view");
    assert_eq!(
        part(body["access_token"].as_str().unwrap(), 1)["scope"],
        "env:view"
    );
}

async fn assert_error(s: &TestSidecar, form: &[(&str, &str)], status: u16, error: &str) -> String {
    let (st, body) = request_token(&s.token_url(), form).await;
    assert_eq!(st.as_u16(), status, "{form:?} -> {body}");
    assert_eq!(body["error"], error, "{form:?} -> {body}");
    assert!(body.get("access_token").is_none());
    body["error_description"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn each_token_endpoint_error_has_its_rfc_6749_code() {
    let s = spawn_sidecar(Options::default()).await;
    let cc = ("grant_type", "client_credentials");
    assert_error(&s, &[], 400, "invalid_request").await;
    assert_error(
        &s,
        &[("grant_type", "password")],
        400,
        "unsupported_grant_type",
    )
    .await;
    assert_error(
        &s,
        &[("grant_type", "authorization_code")],
        400,
        "unsupported_grant_type",
    )
    .await;
    let d = assert_error(
        &s,
        &[cc, ("scope", "task:operate:notify")],
        400,
        "invalid_scope",
    )
    .await;
    assert!(d.contains("task:operate:notify"), "{d}");
    assert_error(&s, &[cc, ("scope", "env:edit")], 400, "invalid_scope").await;
    assert_error(&s, &[cc, ("scope", "env:view:x")], 400, "invalid_scope").await;
    assert_error(&s, &[cc, ("scope", "nonsense")], 400, "invalid_scope").await;
    // A repeated parameter is ambiguous: refuse rather than pick one.
    assert_error(
        &s,
        &[
            cc,
            ("scope", "env:view"),
            ("scope", "task:operate:send-report"),
        ],
        400,
        "invalid_request",
    )
    .await;
    assert_error(&s, &[cc, cc], 400, "invalid_request").await;
    assert_error(&s, &[cc, ("x-token-ttl", "soon")], 400, "invalid_request").await;
}

#[tokio::test]
async fn a_body_that_is_not_a_form_is_an_invalid_request() {
    let s = spawn_sidecar(Options::default()).await;
    let res = client()
        .post(s.token_url())
        .header("content-type", "application/json")
        .body(r#"{"grant_type":"client_credentials"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");
}

/// Issue #11, item 13: a wrong method gets the same JSON error body as
/// every other refusal, and `Allow: POST`.
#[tokio::test]
async fn only_post_is_allowed_and_other_methods_get_a_json_405() {
    let s = spawn_sidecar(Options::default()).await;
    for m in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let res = client()
            .request(m.clone(), s.token_url())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 405, "{m}");
        assert_eq!(
            res.headers().get("allow").map(|v| v.to_str().unwrap()),
            Some("POST"),
            "{m}"
        );
        let text = res.text().await.unwrap();
        let body: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{m}: body {text:?} is not JSON: {e}"));
        assert_eq!(body["error"], "invalid_request", "{m}");
        let d = body["error_description"].as_str().unwrap();
        assert!(d.contains("POST"), "{m}: {d}");
    }
}

#[tokio::test]
async fn proxied_and_browser_requests_get_no_token() {
    let s = spawn_sidecar(Options::default()).await;
    for (h, v) in [
        ("forwarded", "for=10.0.0.1"),
        ("x-forwarded-for", "10.0.0.1"),
        ("origin", "https://evil.example"),
        ("origin", "null"),
    ] {
        let res = client()
            .post(s.token_url())
            .header(h, v)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "{h}");
        assert!(res.headers().get("access-control-allow-origin").is_none());
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"], "access_denied");
        assert!(body.get("access_token").is_none());
    }
}

#[tokio::test]
async fn a_body_over_16_kib_is_refused_with_413() {
    let s = spawn_sidecar(Options::default()).await;
    let big = format!(
        "grant_type=client_credentials&pad={}",
        "a".repeat(17 * 1024)
    );
    let res = client()
        .post(s.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");
}

#[tokio::test]
async fn client_credentials_are_accepted_and_ignored_but_not_twice() {
    let s = spawn_sidecar(Options::default()).await;
    let post = |body: &'static str, basic: bool| {
        let mut r = client()
            .post(s.token_url())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if basic {
            r = r.basic_auth("app", Some("whatever"));
        }
        r.send()
    };
    assert_eq!(
        post("grant_type=client_credentials", true)
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        post(
            "grant_type=client_credentials&client_id=a&client_secret=b",
            false
        )
        .await
        .unwrap()
        .status(),
        200
    );
    let both = post(
        "grant_type=client_credentials&client_id=a&client_secret=b",
        true,
    )
    .await
    .unwrap();
    assert_eq!(both.status(), 400);
    let body: serde_json::Value = both.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");
}

#[tokio::test]
async fn a_workload_without_authorizations_gets_invalid_scope() {
    let s = spawn_sidecar(Options {
        workload: "worker/web/mailer",
        ..Options::default()
    })
    .await;
    let d = assert_error(
        &s,
        &[("grant_type", "client_credentials")],
        400,
        "invalid_scope",
    )
    .await;
    assert!(
        d.contains("worker/web/mailer declares no authorizations"),
        "{d}"
    );
}

#[tokio::test]
async fn x_token_ttl_is_clamped_and_expires_in_tells_the_truth() {
    let s = spawn_sidecar(Options::default()).await;
    let cc = ("grant_type", "client_credentials");
    for (asked, expected) in [("60", 60), ("5", 30), ("99999", 300)] {
        let (st, body) = request_token(&s.token_url(), &[cc, ("x-token-ttl", asked)]).await;
        assert_eq!(st, 200);
        assert_eq!(body["expires_in"], expected, "asked {asked}");
        let c = part(body["access_token"].as_str().unwrap(), 1);
        assert_eq!(
            c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
            expected
        );
    }
    let res = client()
        .post(s.token_url())
        .header("x-token-ttl", "45")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["expires_in"], 45);
}

#[tokio::test]
async fn reuse_hands_out_the_same_token_per_scope_set() {
    let s = spawn_sidecar(Options::default()).await;
    let a = token(&s, Some("env:view")).await;
    let b = token(&s, Some("env:view")).await;
    let all = token(&s, None).await;
    // Same set written in another order is the same set.
    let all2 = token(&s, Some("env:view task:operate:send-report")).await;
    assert_eq!(a, b);
    assert_ne!(a, all);
    assert_eq!(all, all2);
}

#[tokio::test]
async fn without_reuse_every_request_mints_a_new_token() {
    let s = spawn_sidecar(Options {
        tokens_extra: "reuse = false",
        ..Options::default()
    })
    .await;
    let a = token(&s, Some("env:view")).await;
    let b = token(&s, Some("env:view")).await;
    assert_ne!(a, b);
    assert_ne!(part(&a, 1)["jti"], part(&b, 1)["jti"]);
}

/// Time is a parameter: reuse ends when less than half the life remains.
#[tokio::test]
async fn a_reused_token_is_replaced_once_half_its_life_has_passed() {
    let s = spawn_sidecar(Options::default()).await;
    let scope = authproxy_core::ScopeSet::parse("env:view").unwrap();
    let t0 = now();
    let first = s.sidecar.issue(&scope, 300, t0).unwrap();
    assert!(!first.reused);
    let at_half = s.sidecar.issue(&scope, 300, t0 + 150).unwrap();
    assert!(at_half.reused);
    assert_eq!(at_half.minted.token, first.minted.token);
    let past_half = s.sidecar.issue(&scope, 300, t0 + 151).unwrap();
    assert!(!past_half.reused);
    assert_ne!(past_half.minted.token, first.minted.token);
}

#[tokio::test]
async fn a_token_never_outlives_its_grant() {
    let s = spawn_sidecar(Options {
        tokens_extra: "ttl = \"1h\"",
        trust_extra: "grant_ttl = \"1m\"",
        ..Options::default()
    })
    .await;
    let scope = authproxy_core::ScopeSet::parse("env:view").unwrap();
    let grant_exp = s.sidecar.grant().claims().exp;
    let issued = s.sidecar.issue(&scope, 3600, now()).unwrap();
    assert_eq!(issued.minted.claims.exp, grant_exp);
    // Past the grant, the sidecar mints nothing until it holds a new grant.
    assert!(s.sidecar.issue(&scope, 3600, grant_exp).is_err());
    assert!(!s.sidecar.is_ready(grant_exp));
    s.daemon.renew(grant_exp).await.unwrap();
    assert!(s.sidecar.is_ready(grant_exp));
    assert!(s.sidecar.grant().claims().exp > grant_exp);
}

#[tokio::test]
async fn the_grant_is_renewed_two_thirds_into_its_life() {
    let s = spawn_sidecar(Options::default()).await;
    let g = s.sidecar.grant();
    let c = g.claims();
    assert_eq!(c.exp - c.iat, 24 * 3600);
    assert_eq!(g.renew_at(), c.iat + 16 * 3600);
}

#[tokio::test]
async fn a_remote_peer_gets_no_token_unless_configured() {
    use axum::extract::connect_info::MockConnectInfo;
    use tower::ServiceExt as _;
    let s = spawn_sidecar(Options::default()).await;
    let remote: std::net::SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let app = authproxy::server::router(s.daemon.services()).layer(MockConnectInfo(remote));
    let req = || {
        axum::http::Request::post("/oauth2/token")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(axum::body::Body::from("grant_type=client_credentials"))
            .unwrap()
    };
    let res = app.oneshot(req()).await.unwrap();
    assert_eq!(res.status(), 403);

    let open = spawn_sidecar(Options {
        server_extra: "allow_remote_peers = true",
        ..Options::default()
    })
    .await;
    let app = authproxy::server::router(open.daemon.services()).layer(MockConnectInfo(remote));
    assert_eq!(app.oneshot(req()).await.unwrap().status(), 200);
}

/// Issue #11, item 4: `server.require_header = true` (opt-in) makes the
/// token endpoint require `X-Authproxy-Request: 1` too.
#[tokio::test]
async fn the_token_endpoint_requires_the_request_header_when_configured() {
    let s = spawn_sidecar(Options {
        server_extra: "require_header = true",
        ..Options::default()
    })
    .await;
    let res = post_form(&s.token_url(), "grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "access_denied");
    let d = body["error_description"].as_str().unwrap();
    assert!(d.contains("X-Authproxy-Request: 1"), "{d}");
    let res = post_form(&s.token_url(), "grant_type=client_credentials")
        .header(REQUEST_HEADER.0, REQUEST_HEADER.1)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// Issue #11, item 12: RFC 8414 — the metadata's issuer is the origin the
/// client discovered it at (stock clients such as openid-client compare
/// them), and the endpoints are on that origin, never a wildcard address.
#[tokio::test]
async fn metadata_urls_are_the_ones_the_caller_reached() {
    let s = spawn_sidecar(Options::default()).await;
    let port = s.url.rsplit(':').next().unwrap().to_owned();
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let m: serde_json::Value = client()
            .get(format!("{}/.well-known/oauth-authorization-server", s.url))
            .header("host", &host)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let base = format!("http://{host}");
        assert_eq!(m["issuer"], base, "{m}");
        assert_eq!(m["token_endpoint"], format!("{base}/oauth2/token"), "{m}");
        assert_eq!(
            m["jwks_uri"],
            format!("{base}/.well-known/jwks.json"),
            "{m}"
        );
    }
}

/// Issue #11, item 12: bound to a wildcard, the metadata still names the
/// address the caller used, never `0.0.0.0`.
#[tokio::test]
async fn metadata_never_advertises_a_wildcard_address() {
    let s = spawn_sidecar(Options {
        bind: "0.0.0.0:0",
        ..Options::default()
    })
    .await;
    let text = client()
        .get(format!("{}/.well-known/oauth-authorization-server", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("0.0.0.0"), "{text}");
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(m["token_endpoint"], format!("{}/oauth2/token", s.url));
}
