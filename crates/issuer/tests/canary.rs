//! The canary: open, sync, grants, personal access tokens (create, update,
//! exchange, delete) and refusals run with every crate logging at TRACE
//! into a buffer — on SQLite, then on PostgreSQL through a URL that carries
//! a password; afterwards no workload credential, Kubernetes
//! service-account token, admin token, grant, PAT value, exchanged access
//! token or store password may appear in it, nor in any refusal's body.
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
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
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

    let (mut secrets, mut refusals) = flows("").await;
    // Trust authentication ignores the password; the driver still holds it.
    let password = "canary-store-password";
    let url = authproxy_test_support::fresh_database().replacen(
        "://authproxy@",
        &format!("://authproxy:{password}@"),
        1,
    );
    let (more, more_refusals) = flows(&format!("[store]\nurl = \"{url}\"\n")).await;
    secrets.extend(more);
    refusals.extend(more_refusals);
    secrets.push(password.to_owned());

    let log = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("grant issued"), "the log was captured");
    assert!(
        log.contains("bootstrap=\"kubernetes\"") || log.contains("bootstrap=kubernetes"),
        "the Kubernetes grant was logged"
    );
    assert!(
        log.contains("service_account=main:web") && log.contains("pod=\"web-0\""),
        "with its service account and pod"
    );
    assert!(
        log.contains("PAT exchanged for an access token") && log.contains("pat=ci"),
        "the exchange was logged, by name"
    );
    assert!(
        log.contains("store=postgres://authproxy:***@localhost/"),
        "the store was logged, hidden"
    );
    for secret in &secrets {
        let tail = &secret[secret.len() - 20..];
        assert!(!log.contains(tail), "a secret reached the log");
        for body in &refusals {
            assert!(!body.contains(tail), "a secret reached a refusal: {body}");
        }
    }
    for marker in ["ap_wc_", "ap_admin_", "ap_pat_", "eyJ"] {
        let line = log.lines().find(|l| l.contains(marker));
        assert!(line.is_none(), "`{marker}` reached the log: {line:?}");
        let body = refusals.iter().find(|b| b.contains(marker));
        assert!(body.is_none(), "`{marker}` reached a refusal: {body:?}");
    }
}

/// Opens an issuer with `store` (a `[store]` section, or none: SQLite),
/// syncs, asks for grants with good and bad credentials and a bad admin
/// token, creates, updates, exchanges and deletes a PAT; returns every
/// secret that went through it and the body of every refusal.
async fn flows(store: &str) -> (Vec<String>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    // A test cluster (P-256: quick to generate) whose service account
    // main:web bootstraps app/web.
    let cluster = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let cluster = EncodingKey::from_ec_der(cluster.to_pkcs8v1().unwrap().as_ref());
    let jwk =
        serde_json::to_value(Jwk::from_encoding_key(&cluster, Algorithm::ES256).unwrap()).unwrap();
    let jwks_file = dir.path().join("cluster-jwks.json");
    std::fs::write(
        &jwks_file,
        json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "x": jwk["x"], "y": jwk["y"]}]})
            .to_string(),
    )
    .unwrap();
    let config_file = dir.path().join("issuer.toml");
    std::fs::write(
        &config_file,
        format!(
            "{store}[issuer]\nurl = \"{base}\"\nstate_dir = \"{}\"\n\
             [kubernetes]\nissuer = \"https://k8s.test\"\njwks_file = \"{}\"\n\
             [[kubernetes.bindings]]\nservice_account = \"main:web\"\n\
             workload = \"app/web\"\nenvironment = \"main\"\n",
            state_dir.display(),
            jwks_file.display()
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
    let now = clock::now();
    let sa_token = |sub: &str, aud: &str| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        let (ns, name) = sub.split_once(':').unwrap();
        let claims = json!({
            "iss": "https://k8s.test", "aud": [aud], "iat": now, "nbf": now, "exp": now + 600,
            "sub": format!("system:serviceaccount:{sub}"),
            "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": name, "uid": "u"},
                              "pod": {"name": "web-0", "uid": "p"}},
        });
        jsonwebtoken::encode(&header, &claims, &cluster).unwrap()
    };
    let web_sa = sa_token("main:web", "authproxy");
    let batch_sa = sa_token("main:batch", "authproxy");
    let wrong_aud_sa = sa_token("main:web", "vault");
    let mut grants = Vec::new();
    for (bearer, workload) in [
        (credential.as_str(), "app/web"),
        (credential.as_str(), "app/other"),
        (admin, "app/web"),
        (web_sa.as_str(), "app/web"),
        (batch_sa.as_str(), "app/web"),
        (wrong_aud_sa.as_str(), "app/web"),
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
    assert_eq!(grants.len(), 2, "the flows ran");

    // Personal access tokens: every call's status is asserted, so the
    // flows really ran; every refusal's body is kept to be searched too.
    let mut refusals: Vec<String> = Vec::new();
    let mut pat_values = Vec::new();
    let r = client
        .post(format!("{base}/v1/pats"))
        .bearer_auth(admin)
        .json(&json!({"name": "ci", "environment": "main", "valid_minutes": 60, "scopes": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    pat_values.push(created["value"].as_str().unwrap().to_owned());
    let r = client
        .patch(format!("{base}/v1/pats/ci"))
        .bearer_auth(admin)
        .json(&json!({"scopes": ["env:view"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let updated: Value = r.json().await.unwrap();
    pat_values.push(updated["value"].as_str().unwrap().to_owned());
    let (old, current) = (pat_values[0].clone(), pat_values[1].clone());
    let typo = {
        let (head, last) = current.split_at(current.len() - 1);
        format!("{head}{}", if last == "A" { "B" } else { "A" })
    };
    let mut access_tokens = Vec::new();
    for (secret, basic, status) in [
        (current.as_str(), false, 200),
        (current.as_str(), true, 200),
        (old.as_str(), false, 401),
        (old.as_str(), true, 401),
        (typo.as_str(), false, 401),
        (typo.as_str(), true, 401),
    ] {
        let mut req = client
            .post(format!("{base}/oauth2/token"))
            .header("content-type", "application/x-www-form-urlencoded");
        req = if basic {
            req.basic_auth("ci", Some(secret))
                .body("grant_type=client_credentials")
        } else {
            req.body(format!(
                "grant_type=client_credentials&client_secret={secret}"
            ))
        };
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), status);
        let text = r.text().await.unwrap();
        if status == 200 {
            let body: Value = serde_json::from_str(&text).unwrap();
            access_tokens.push(body["access_token"].as_str().unwrap().to_owned());
        } else {
            refusals.push(text);
        }
    }
    // A refused scope, with a good PAT.
    let r = client
        .post(format!("{base}/oauth2/token"))
        .basic_auth("ci", Some(&current))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&scope=task:operate:nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    refusals.push(r.text().await.unwrap());
    let r = client
        .post(format!("{base}/v1/pats/used"))
        .json(&json!({"ids": [updated["pat"]["id"]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = client
        .delete(format!("{base}/v1/pats/ci"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = client
        .post(format!("{base}/oauth2/token"))
        .basic_auth("ci", Some(&current))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    refusals.push(r.text().await.unwrap());
    let r = client
        .get(format!("{base}/v1/revocations"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let feed: Value = r.json().await.unwrap();
    assert_eq!(feed["revocations"].as_array().unwrap().len(), 2);
    assert_eq!(access_tokens.len(), 2, "the exchanges ran");

    let mut secrets = vec![credential, admin.to_owned(), wrong_admin, typo];
    secrets.extend(grants);
    secrets.extend([web_sa, batch_sa, wrong_aud_sa]);
    secrets.extend(pat_values);
    secrets.extend(access_tokens);
    (secrets, refusals)
}
