//! The Kubernetes bootstrap over real HTTP (DESIGN §8, #12 deliverable 3):
//! a test cluster key signs projected service-account tokens the way a
//! kube-apiserver does; the issuer, served on 127.0.0.1:0 with the
//! cluster's public JWKS in a file (or at a URL), turns the bound ones into
//! grants and refuses the rest.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use authproxy_core::clock;
use authproxy_core::grant::Grant;
use authproxy_core::keys::{Jwks, SigningKey};
use authproxy_core::{Environment, ScopeSet};
use authproxy_issuer::{ADMIN_TOKEN_FILE, Issuer, IssuerConfig, OpenError, router};
use aws_lc_rs::encoding::{AsDer as _, Pkcs8V1Der};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// The cluster's service-account issuer (`--service-account-issuer`).
const CLUSTER_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

const PROJECT: &str = "\
applications:
  web:
    authorizations:
      - { type: task, action: operate, resource: send-report }
      - { type: env, action: view }
    workers:
      queue: {}
tasks:
  send-report: {}
";

/// `main:web` → app/web, `main:queue` → worker/web/queue, `main:ghost` →
/// app/ghost (never synced). `main:batch` has no binding.
const BINDINGS: &str = "
[[kubernetes.bindings]]
service_account = \"main:web\"
workload = \"app/web\"
environment = \"main\"

[[kubernetes.bindings]]
service_account = \"main:queue\"
workload = \"worker/web/queue\"
environment = \"main\"

[[kubernetes.bindings]]
service_account = \"main:ghost\"
workload = \"app/ghost\"
environment = \"main\"
";

/// A signing key of a cluster (or of someone pretending to be one).
struct ClusterKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    /// The public JWK as the cluster publishes it.
    public: Value,
}

impl ClusterKey {
    /// An RSA 2048 key, as kube-apiserver's `--service-account-signing-key-file`.
    fn rsa(kid: &str) -> Self {
        let pair = aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048).unwrap();
        let der: Pkcs8V1Der<'static> = pair.as_der().unwrap();
        // jsonwebtoken signs RSA with a PKCS#1 key; its PEM reader takes
        // PKCS#8 and finds the PKCS#1 key inside.
        let b64 = STANDARD.encode(der.as_ref());
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        );
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        let jwk =
            serde_json::to_value(Jwk::from_encoding_key(&encoding, Algorithm::RS256).unwrap())
                .unwrap();
        let public = json!({
            "use": "sig", "kty": "RSA", "kid": kid, "alg": "RS256",
            "n": jwk["n"], "e": jwk["e"],
        });
        Self {
            kid: kid.to_owned(),
            alg: Algorithm::RS256,
            encoding,
            public,
        }
    }

    /// A P-256 key (ES256).
    fn ec(kid: &str) -> Self {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let encoding = EncodingKey::from_ec_der(pair.to_pkcs8v1().unwrap().as_ref());
        let jwk =
            serde_json::to_value(Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap())
                .unwrap();
        let public = json!({
            "use": "sig", "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
            "x": jwk["x"], "y": jwk["y"],
        });
        Self {
            kid: kid.to_owned(),
            alg: Algorithm::ES256,
            encoding,
            public,
        }
    }

    /// Signs `claims` with a kube-apiserver's header: `alg` and `kid`, no `typ`.
    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.typ = None;
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// The JWKS document of `keys`.
fn jwks_of(keys: &[&ClusterKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.public.clone()).collect::<Vec<_>>()}).to_string()
}

/// The claims of a projected token for `namespace:name`, issued now and
/// valid for an hour, as the kubelet asks for with `audience: authproxy`.
fn claims(namespace: &str, name: &str) -> Value {
    let now = clock::now();
    json!({
        "aud": ["authproxy"],
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "iss": CLUSTER_ISSUER,
        "jti": "0b6f6c3e-5c5a-4f5e-9d7c-2f1f0f4b8a11",
        "kubernetes.io": {
            "namespace": namespace,
            "node": {"name": "node-1", "uid": "6a4c1f2e-0000-4000-8000-000000000001"},
            "pod": {"name": format!("{name}-5d8f7c9b4-x2x7k"), "uid": "1d2c3b4a-0000-4000-8000-000000000002"},
            "serviceaccount": {"name": name, "uid": "9f8e7d6c-0000-4000-8000-000000000003"},
        },
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
    })
}

/// One running issuer.
struct Node {
    base: String,
    admin_token: String,
    client: reqwest::Client,
    server: JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Writes the issuer's config under `dir` with `kubernetes` appended.
fn write_config(dir: &Path, base: &str, kubernetes: &str) -> PathBuf {
    let config_file = dir.join("issuer.toml");
    std::fs::write(
        &config_file,
        format!(
            "[issuer]\nurl = \"{base}\"\nstate_dir = \"{}\"\ngrant_ttl = \"1h\"\n{kubernetes}",
            dir.join("state").display()
        ),
    )
    .unwrap();
    config_file
}

/// Opens an issuer under `dir` whose `[kubernetes]` section is `kubernetes`.
async fn open(dir: &Path, kubernetes: &str) -> Result<Node, OpenError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let config_file = write_config(dir, &base, kubernetes);
    let config = IssuerConfig::load_with_env(&config_file, Some(HashMap::new())).unwrap();
    let issuer = Arc::new(Issuer::open(config, clock::now()).await?);
    let admin_token = std::fs::read_to_string(dir.join("state").join(ADMIN_TOKEN_FILE))
        .unwrap()
        .trim()
        .to_owned();
    let app = router(issuer);
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Ok(Node {
        base,
        admin_token,
        client: reqwest::Client::new(),
        server,
    })
}

/// `[kubernetes]` with the cluster JWKS in a file.
fn file_section(jwks_file: &Path) -> String {
    format!(
        "[kubernetes]\nissuer = \"{CLUSTER_ISSUER}\"\njwks_file = \"{}\"\n{BINDINGS}",
        jwks_file.display()
    )
}

/// An issuer trusting `keys` through a JWKS file, with PROJECT synced into `main`.
async fn cluster_issuer(dir: &Path, keys: &[&ClusterKey]) -> Node {
    let jwks_file = dir.join("cluster-jwks.json");
    std::fs::write(&jwks_file, jwks_of(keys)).unwrap();
    let node = open(dir, &file_section(&jwks_file)).await.unwrap();
    node.sync_project().await;
    node
}

impl Node {
    async fn sync_project(&self) {
        let r = self
            .client
            .post(format!("{}/v1/sync?environment=main", self.base))
            .bearer_auth(&self.admin_token)
            .body(PROJECT)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }

    async fn grant(
        &self,
        bearer: &str,
        workload: &str,
        environment: &str,
        key: &SigningKey,
    ) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/grants", self.base))
            .bearer_auth(bearer)
            .json(&json!({
                "workload": workload,
                "environment": environment,
                "public_key": key.public().bare_jwk(),
            }))
            .send()
            .await
            .unwrap()
    }

    /// Asks for a grant for app/web in main and returns the status.
    async fn web_status(&self, bearer: &str) -> StatusCode {
        let key = SigningKey::generate().unwrap();
        self.grant(bearer, "app/web", "main", &key).await.status()
    }

    async fn jwks(&self) -> Jwks {
        let r = self
            .client
            .get(format!("{}/.well-known/jwks.json", self.base))
            .send()
            .await
            .unwrap();
        Jwks::from_json(&r.bytes().await.unwrap()).unwrap()
    }
}

/// Asserts a 401 with the bearer challenge and the `invalid_token` body.
async fn assert_unauthorized(r: reqwest::Response, what: &str) {
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\"",
        "{what}"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_token", "{what}");
}

/// An unsigned token (`alg: none`) with these claims.
fn unsigned(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

#[tokio::test]
async fn a_bound_service_account_gets_a_grant_with_the_stored_ceiling() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterKey::rsa("cluster-key-1");
    let node = cluster_issuer(dir.path(), &[&cluster]).await;
    let key = SigningKey::generate().unwrap();
    let token = cluster.sign(&claims("main", "web"));

    let r = node.grant(&token, "app/web", "main", &key).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.unwrap();
    let roots = node.jwks().await.usable_keys();
    let main = Environment::parse("main").unwrap();
    let grant = Grant::verify(
        body["grant"].as_str().unwrap(),
        &roots,
        &main,
        0,
        clock::now(),
    )
    .unwrap();
    assert_eq!(grant.subject().to_string(), "app/web");
    assert_eq!(grant.claims().iss, node.base);
    assert_eq!(grant.claims().env, "main");
    assert_eq!(grant.claims().cnf.jkt, key.public().thumbprint());
    // The ceiling is the store's, synced from the declarations.
    assert_eq!(
        grant.scope(),
        &ScopeSet::parse("task:operate:send-report env:view").unwrap()
    );

    // Another bound service account gets its own workload's ceiling.
    let queue = cluster.sign(&claims("main", "queue"));
    let r = node.grant(&queue, "worker/web/queue", "main", &key).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let grant = Grant::verify(
        body["grant"].as_str().unwrap(),
        &roots,
        &main,
        0,
        clock::now(),
    )
    .unwrap();
    assert_eq!(grant.subject().to_string(), "worker/web/queue");
    assert_eq!(
        grant.scope(),
        &ScopeSet::parse("task:operate:send-report env:view").unwrap()
    );

    // `aud` may also be a single string (RFC 7519 §4.1.3), among others.
    let mut single = claims("main", "web");
    single["aud"] = json!("authproxy");
    assert_eq!(
        node.web_status(&cluster.sign(&single)).await,
        StatusCode::OK
    );
    let mut several = claims("main", "web");
    several["aud"] = json!(["https://kubernetes.default.svc", "authproxy"]);
    assert_eq!(
        node.web_status(&cluster.sign(&several)).await,
        StatusCode::OK
    );
    // A `typ: JWT` header is fine too.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(cluster.kid.clone());
    let typed = jsonwebtoken::encode(&header, &claims("main", "web"), &cluster.encoding).unwrap();
    assert_eq!(node.web_status(&typed).await, StatusCode::OK);
}

#[tokio::test]
async fn a_token_for_another_audience_is_unauthorized() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterKey::rsa("cluster-key-1");
    let node = cluster_issuer(dir.path(), &[&cluster]).await;
    let key = SigningKey::generate().unwrap();
    for aud in [
        json!(["https://kubernetes.default.svc.cluster.local"]),
        json!("vault"),
        json!(["authproxy-other"]),
        json!([]),
    ] {
        let mut c = claims("main", "web");
        c["aud"] = aud.clone();
        let r = node.grant(&cluster.sign(&c), "app/web", "main", &key).await;
        assert_unauthorized(r, &aud.to_string()).await;
    }
    let mut c = claims("main", "web");
    c.as_object_mut().unwrap().remove("aud");
    let r = node.grant(&cluster.sign(&c), "app/web", "main", &key).await;
    assert_unauthorized(r, "no aud").await;
}

#[tokio::test]
async fn an_expired_or_not_yet_valid_token_is_unauthorized() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterKey::rsa("cluster-key-1");
    let node = cluster_issuer(dir.path(), &[&cluster]).await;
    let key = SigningKey::generate().unwrap();
    let now = clock::now();
    let at = |iat: u64, nbf: u64, exp: u64| {
        let mut c = claims("main", "web");
        c["iat"] = json!(iat);
        c["nbf"] = json!(nbf);
        c["exp"] = json!(exp);
        cluster.sign(&c)
    };
    for (what, token) in [
        ("expired", at(now - 3720, now - 3720, now - 120)),
        ("not yet valid", at(now, now + 600, now + 3600)),
        ("issued in the future", at(now + 600, now, now + 3600)),
        ("lives over 24 h", at(now, now, now + 48 * 3600)),
    ] {
        let r = node.grant(&token, "app/web", "main", &key).await;
        assert_unauthorized(r, what).await;
    }
    // Within the 30 s leeway: accepted.
    let skewed = at(now - 3610, now - 3610, now - 10);
    assert_eq!(node.web_status(&skewed).await, StatusCode::OK);
    // `exp` and `iat` are required.
    for claim in ["exp", "iat"] {
        let mut c = claims("main", "web");
        c.as_object_mut().unwrap().remove(claim);
        let r = node.grant(&cluster.sign(&c), "app/web", "main", &key).await;
        assert_unauthorized(r, claim).await;
    }
}

#[tokio::test]
async fn an_unbound_service_account_is_forbidden() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterKey::rsa("cluster-key-1");
    let node = cluster_issuer(dir.path(), &[&cluster]).await;
    let key = SigningKey::generate().unwrap();

    // A valid token of a service account no binding names.
    let batch = cluster.sign(&claims("main", "batch"));
    let r = node.grant(&batch, "app/web", "main", &key).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "access_denied");
    // The same name in another namespace is another service account.
    let other_ns = cluster.sign(&claims("staging", "web"));
    let r = node.grant(&other_ns, "app/web", "main", &key).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_service_account_bound_to_another_workload_is_forbidden() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterKey::rsa("cluster-key-1");
    let node = cluster_issuer(dir.path(), &[&cluster]).await;
    let key = SigningKey::generate().unwrap();
    let queue = cluster.sign(&claims("main", "queue"));
    // Bound to worker/web/queue in main: not app/web, nor queue in staging.
    for (workload, environment) in [
        ("app/web", "main"),
        ("worker/web/queue", "staging"),
        ("task/send-report", "main"),
    ] {
        let r = node.grant(&queue, workload, environment, &key).await;
        assert_eq!(
            r.status(),
            StatusCode::FORBIDDEN,
            "{workload} in {environment}"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "access_denied");
    }
}

#[tokio::test]
async fn a_bound_workload_that_is_not_synced_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterKey::rsa("cluster-key-1");
    let node = cluster_issuer(dir.path(), &[&cluster]).await;
    let key = SigningKey::generate().unwrap();
    let ghost = cluster.sign(&claims("main", "ghost"));
    let r = node.grant(&ghost, "app/ghost", "main", &key).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unknown_workload");
}

#[tokio::test]
async fn a_token_signed_by_a_foreign_key_is_unauthorized() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterKey::rsa("cluster-key-1");
    let node = cluster_issuer(dir.path(), &[&cluster]).await;
    let key = SigningKey::generate().unwrap();
    // Under its own kid (not in the cluster JWKS) and under the cluster's.
    for kid in ["attacker-key", "cluster-key-1"] {
        let foreign = ClusterKey::rsa(kid);
        let token = foreign.sign(&claims("main", "web"));
        let r = node.grant(&token, "app/web", "main", &key).await;
        assert_unauthorized(r, kid).await;
    }
    // A tampered payload under the cluster's signature.
    let token = cluster.sign(&claims("main", "batch"));
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims("main", "web").to_string()),
        parts[2]
    );
    let r = node.grant(&forged, "app/web", "main", &key).await;
    assert_unauthorized(r, "tampered").await;
    // No kid at all.
    let mut header = Header::new(Algorithm::RS256);
    header.typ = None;
    let no_kid = jsonwebtoken::encode(&header, &claims("main", "web"), &cluster.encoding).unwrap();
    let r = node.grant(&no_kid, "app/web", "main", &key).await;
    assert_unauthorized(r, "no kid").await;
}

#[tokio::test]
async fn keys_named_in_the_token_are_never_used_or_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterKey::rsa("cluster-key-1");
    let node = cluster_issuer(dir.path(), &[&cluster]).await;
    let attacker = ClusterKey::rsa("attacker-key");
    let attacker_jwks = jwks_server(jwks_of(&[&attacker])).await;
    let jwk: Jwk = serde_json::from_value(attacker.public.clone()).unwrap();
    for kid in ["attacker-key", "cluster-key-1"] {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        header.jku = Some(attacker_jwks.url.clone());
        header.x5u = Some(attacker_jwks.url.clone());
        header.jwk = Some(jwk.clone());
        let token =
            jsonwebtoken::encode(&header, &claims("main", "web"), &attacker.encoding).unwrap();
        assert_eq!(
            node.web_status(&token).await,
            StatusCode::UNAUTHORIZED,
            "{kid}"
        );
    }
    assert_eq!(attacker_jwks.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_token_from_another_issuer_is_unauthorized() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterKey::rsa("cluster-key-1");
    let node = cluster_issuer(dir.path(), &[&cluster]).await;
    let key = SigningKey::generate().unwrap();
    for iss in [
        "https://kubernetes.default.svc",
        "https://oidc.eks.eu-west-1.amazonaws.com/id/OTHER",
        "kubernetes/serviceaccount",
        "",
    ] {
        let mut c = claims("main", "web");
        c["iss"] = json!(iss);
        let r = node.grant(&cluster.sign(&c), "app/web", "main", &key).await;
        assert_unauthorized(r, iss).await;
    }
}

#[tokio::test]
async fn alg_none_and_hmac_keyed_with_the_cluster_public_key_are_unauthorized() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterKey::rsa("cluster-key-1");
    let node = cluster_issuer(dir.path(), &[&cluster]).await;
    let key = SigningKey::generate().unwrap();
    let c = claims("main", "web");

    for alg in ["none", "None", "NONE"] {
        let token = unsigned(&json!({"alg": alg, "kid": cluster.kid}), &c);
        let r = node.grant(&token, "app/web", "main", &key).await;
        assert_unauthorized(r, alg).await;
    }

    // HMAC keyed with what an attacker can read of the public key: the
    // modulus, the JWK document, the whole JWKS.
    let n = URL_SAFE_NO_PAD
        .decode(cluster.public["n"].as_str().unwrap())
        .unwrap();
    let secrets: [Vec<u8>; 3] = [
        n,
        cluster.public.to_string().into_bytes(),
        jwks_of(&[&cluster]).into_bytes(),
    ];
    for secret in &secrets {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let mut header = Header::new(alg);
            header.kid = Some(cluster.kid.clone());
            let token =
                jsonwebtoken::encode(&header, &c, &EncodingKey::from_secret(secret)).unwrap();
            let r = node.grant(&token, "app/web", "main", &key).await;
            assert_unauthorized(r, &format!("{alg:?}")).await;
        }
    }
    // Another algorithm than the key's: the header cannot choose PS256.
    let mut header = Header::new(Algorithm::PS256);
    header.kid = Some(cluster.kid.clone());
    let ps = jsonwebtoken::encode(&header, &c, &cluster.encoding).unwrap();
    let r = node.grant(&ps, "app/web", "main", &key).await;
    assert_unauthorized(r, "PS256").await;
}

#[tokio::test]
async fn the_subject_and_the_kubernetes_claim_must_name_the_same_service_account() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterKey::rsa("cluster-key-1");
    let node = cluster_issuer(dir.path(), &[&cluster]).await;
    let key = SigningKey::generate().unwrap();
    let tweak = |f: &dyn Fn(&mut Value)| {
        let mut c = claims("main", "web");
        f(&mut c);
        cluster.sign(&c)
    };
    for (what, token) in [
        (
            "kubernetes.io names another service account",
            tweak(&|c| c["kubernetes.io"]["serviceaccount"]["name"] = json!("batch")),
        ),
        (
            "kubernetes.io names another namespace",
            tweak(&|c| c["kubernetes.io"]["namespace"] = json!("staging")),
        ),
        (
            "no kubernetes.io claim",
            tweak(&|c| {
                c.as_object_mut().unwrap().remove("kubernetes.io");
            }),
        ),
        (
            "sub of a user",
            tweak(&|c| c["sub"] = json!("system:node:node-1")),
        ),
        (
            "sub with an extra segment",
            tweak(&|c| c["sub"] = json!("system:serviceaccount:main:web:x")),
        ),
    ] {
        let r = node.grant(&token, "app/web", "main", &key).await;
        assert_unauthorized(r, what).await;
    }
}

#[tokio::test]
async fn an_es256_cluster_key_is_accepted_and_its_algorithm_cannot_be_swapped() {
    let dir = tempfile::tempdir().unwrap();
    let ec = ClusterKey::ec("cluster-ec");
    let rsa = ClusterKey::rsa("cluster-rsa");
    let node = cluster_issuer(dir.path(), &[&ec, &rsa]).await;
    assert_eq!(
        node.web_status(&ec.sign(&claims("main", "web"))).await,
        StatusCode::OK
    );
    assert_eq!(
        node.web_status(&rsa.sign(&claims("main", "web"))).await,
        StatusCode::OK
    );
    // The RSA key's signature presented under the EC key's kid.
    let mut header = Header::new(Algorithm::RS256);
    header.typ = None;
    header.kid = Some(ec.kid.clone());
    let swapped = jsonwebtoken::encode(&header, &claims("main", "web"), &rsa.encoding).unwrap();
    assert_eq!(node.web_status(&swapped).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn without_a_kubernetes_section_a_service_account_token_is_unauthorized() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterKey::rsa("cluster-key-1");
    let node = open(dir.path(), "").await.unwrap();
    node.sync_project().await;
    let key = SigningKey::generate().unwrap();
    let r = node
        .grant(
            &cluster.sign(&claims("main", "web")),
            "app/web",
            "main",
            &key,
        )
        .await;
    assert_unauthorized(r, "no [kubernetes]").await;
}

#[tokio::test]
async fn a_rotated_jwks_file_is_picked_up_on_the_first_unknown_kid() {
    let dir = tempfile::tempdir().unwrap();
    let old = ClusterKey::rsa("old");
    let node = cluster_issuer(dir.path(), &[&old]).await;
    let new = ClusterKey::rsa("new");
    assert_eq!(
        node.web_status(&old.sign(&claims("main", "web"))).await,
        StatusCode::OK
    );
    // The cluster rotates: the file now holds only the new key.
    std::fs::write(dir.path().join("cluster-jwks.json"), jwks_of(&[&new])).unwrap();
    assert_eq!(
        node.web_status(&new.sign(&claims("main", "web"))).await,
        StatusCode::OK
    );
    // The source is authoritative: the withdrawn key bootstraps no more.
    assert_eq!(
        node.web_status(&old.sign(&claims("main", "web"))).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_missing_or_useless_jwks_file_stops_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let e = open(dir.path(), &file_section(&missing))
        .await
        .err()
        .expect("refused");
    let shown = e.to_string();
    assert!(
        shown.contains("`kubernetes.jwks_file`") && shown.contains("nope.json"),
        "{shown}"
    );

    // A JWKS with only keys that must never verify a token: HMAC, Ed25519, small RSA.
    let useless = dir.path().join("useless.json");
    let small = URL_SAFE_NO_PAD.encode([0xC5u8; 128]);
    std::fs::write(
        &useless,
        json!({"keys": [
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "OKP", "kid": "e", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([1u8; 32])},
            {"kty": "RSA", "kid": "r", "n": small, "e": "AQAB"},
        ]})
        .to_string(),
    )
    .unwrap();
    let e = open(dir.path(), &file_section(&useless))
        .await
        .err()
        .expect("refused");
    let shown = e.to_string();
    assert!(
        shown.contains("`kubernetes.jwks_file`") && shown.contains("no usable cluster signing key"),
        "{shown}"
    );
}

/// A JWKS URL whose document can be swapped and whose hits are counted.
struct JwksServer {
    url: String,
    document: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    server: JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn jwks_server(document: String) -> JwksServer {
    let document = Arc::new(Mutex::new(document));
    let hits = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/openid/v1/jwks", listener.local_addr().unwrap());
    let (d, h) = (Arc::clone(&document), Arc::clone(&hits));
    let app = axum::Router::new().route(
        "/openid/v1/jwks",
        axum::routing::get(move || {
            let (d, h) = (Arc::clone(&d), Arc::clone(&h));
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                let body = d.lock().unwrap().clone();
                ([("content-type", "application/json")], body)
            }
        }),
    );
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    JwksServer {
        url,
        document,
        hits,
        server,
    }
}

fn url_section(url: &str) -> String {
    format!("[kubernetes]\nissuer = \"{CLUSTER_ISSUER}\"\njwks_url = \"{url}\"\n{BINDINGS}")
}

#[tokio::test]
async fn a_jwks_url_is_fetched_and_unknown_kids_refetch_at_most_once_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let old = ClusterKey::rsa("old");
    let jwks = jwks_server(jwks_of(&[&old])).await;
    let node = open(dir.path(), &url_section(&jwks.url)).await.unwrap();
    node.sync_project().await;
    assert_eq!(jwks.hits.load(Ordering::SeqCst), 1, "fetched at start");
    assert_eq!(
        node.web_status(&old.sign(&claims("main", "web"))).await,
        StatusCode::OK
    );
    assert_eq!(jwks.hits.load(Ordering::SeqCst), 1, "then cached");

    // The cluster rotates: the first token under the new kid refetches.
    let new = ClusterKey::rsa("new");
    *jwks.document.lock().unwrap() = jwks_of(&[&old, &new]);
    assert_eq!(
        node.web_status(&new.sign(&claims("main", "web"))).await,
        StatusCode::OK
    );
    assert_eq!(jwks.hits.load(Ordering::SeqCst), 2);

    // A flood of forged kids right after: no further fetch.
    let forger = ClusterKey::rsa("unused");
    let c = claims("main", "web");
    for i in 0..40 {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(format!("forged-{i}"));
        let token = jsonwebtoken::encode(&header, &c, &forger.encoding).unwrap();
        assert_eq!(node.web_status(&token).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        jwks.hits.load(Ordering::SeqCst),
        2,
        "unknown kids within the interval fetch nothing"
    );
}

#[tokio::test]
async fn an_unreachable_jwks_url_does_not_stop_the_start_and_is_fetched_when_needed() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterKey::rsa("cluster-key-1");
    // A port nothing listens on yet.
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let url = format!("http://{addr}/openid/v1/jwks");
    let node = open(dir.path(), &url_section(&url)).await.unwrap();
    node.sync_project().await;

    // Now the cluster answers on that address.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let document = jwks_of(&[&cluster]);
    let app = axum::Router::new().route(
        "/openid/v1/jwks",
        axum::routing::get(move || {
            let body = document.clone();
            async move { body }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    assert_eq!(
        node.web_status(&cluster.sign(&claims("main", "web"))).await,
        StatusCode::OK
    );
    server.abort();
}

#[tokio::test]
async fn a_jwks_url_body_over_64_kib_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterKey::rsa("cluster-key-1");
    // A valid JWKS padded past 64 KiB with whitespace.
    let padded = format!("{}{}", jwks_of(&[&cluster]), " ".repeat(70 * 1024));
    let jwks = jwks_server(padded).await;
    let node = open(dir.path(), &url_section(&jwks.url)).await.unwrap();
    node.sync_project().await;
    assert_eq!(
        node.web_status(&cluster.sign(&claims("main", "web"))).await,
        StatusCode::UNAUTHORIZED,
        "a JWKS over the cap is not used"
    );
}
