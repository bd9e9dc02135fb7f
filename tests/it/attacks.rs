//! The attack suite: each forged, altered or misused token is refused by the
//! example upstream with the RFC 6750 answer (401 + `Bearer
//! error="invalid_token"`). The "compromised sidecar" cases sign grants with
//! the root key read from the state dir, as an attacker holding it would.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::*;
use authproxy_core::keys::SigningKey;
use authproxy_core::verify::{InvalidToken, Part};
use authproxy_layer::Authorizer;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use reqwest::Method;
use serde_json::{Value, json};

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// Signs `header.payload` (given as raw JSON text) with an Ed25519 PEM key.
fn sign_raw(header: &str, payload: &str, pem: &str) -> String {
    let msg = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let key = EncodingKey::from_ed_pem(pem.as_bytes()).unwrap();
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &key, Algorithm::EdDSA).unwrap();
    format!("{msg}.{sig}")
}

fn sign(header: &Value, claims: &Value, pem: &str) -> String {
    sign_raw(&header.to_string(), &claims.to_string(), pem)
}

struct Key {
    pem: String,
    kid: String,
    jwk: Value,
}

impl Key {
    fn new(k: &SigningKey) -> Self {
        Self {
            pem: k.to_pkcs8_pem().unwrap(),
            kid: k.public().thumbprint().to_owned(),
            jwk: serde_json::to_value(k.public().bare_jwk()).unwrap(),
        }
    }
    fn generate() -> Self {
        Self::new(&SigningKey::generate().unwrap())
    }
}

/// A chain whose every part a test may alter before signing.
struct Chain {
    root: Key,
    sidecar: Key,
    grant_header: Value,
    grant: Value,
    token_header: Value,
    token: Value,
}

impl Chain {
    fn honest(root: Key) -> Self {
        let sidecar = Key::generate();
        let t = now();
        Self {
            grant_header: json!({"alg": "EdDSA", "typ": "grant+jwt", "kid": root.kid}),
            grant: json!({
                "iss": "urn:authproxy:test", "sub": "app/web", "env": "main",
                "scope": "task:operate:send-report env:view",
                "cnf": {"jkt": sidecar.kid},
                "iat": t, "nbf": t, "exp": t + 3600, "jti": "g1",
            }),
            token_header: json!({"alg": "EdDSA", "typ": "at+jwt", "kid": sidecar.kid, "jwk": sidecar.jwk}),
            token: json!({
                "iss": "urn:authproxy:test", "sub": "app/web", "client_id": "app/web",
                "aud": AUDIENCE, "env": "main", "scope": "env:view",
                "iat": t, "nbf": t, "exp": t + 300, "jti": "t1",
            }),
            root,
            sidecar,
        }
    }

    fn grant_jwt(&self) -> String {
        sign(&self.grant_header, &self.grant, &self.root.pem)
    }

    fn with_grant(&self, grant: &str) -> String {
        let mut claims = self.token.clone();
        claims["grant"] = json!(grant);
        sign(&self.token_header, &claims, &self.sidecar.pem)
    }

    fn build(&self) -> String {
        self.with_grant(&self.grant_jwt())
    }
}

struct Fx {
    sidecar: TestSidecar,
    auth: Authorizer,
    api: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Fx {
    async fn new() -> Self {
        let sidecar = spawn_sidecar(Options::default()).await;
        let auth = authorizer_for(&sidecar).await;
        let (api, stop) = serve(crate::environment_api::app(&auth, "main")).await;
        Self {
            sidecar,
            auth,
            api,
            _stop: stop,
        }
    }

    /// The real root key, as a thief of the state dir would have it.
    fn root(&self) -> Key {
        let pem = std::fs::read_to_string(self.sidecar.state_dir.join("root-key.pem")).unwrap();
        Key::new(&SigningKey::from_pkcs8_pem(pem.as_bytes()).unwrap())
    }

    fn chain(&self) -> Chain {
        Chain::honest(self.root())
    }

    /// Asserts the upstream refuses `token` with 401 invalid_token, and that
    /// the verifier's reason is `reason` (when given).
    async fn refused(&self, token: &str, reason: Option<InvalidToken>) {
        let (st, www, body) = call(
            Method::GET,
            &format!("{}/environment", self.api),
            Some(token),
        )
        .await;
        assert_eq!(st, 401, "{body}");
        assert!(
            www.as_deref()
                .unwrap()
                .starts_with("Bearer error=\"invalid_token\""),
            "{www:?}"
        );
        assert_eq!(body["error"], "invalid_token");
        if let Some(reason) = reason {
            assert_eq!(self.auth.verify(token, now()).await.unwrap_err(), reason);
        }
    }
}

#[tokio::test]
async fn the_honest_chain_built_here_is_accepted() {
    // Guards the suite itself: every attack below is one change away from this.
    let fx = Fx::new().await;
    let t = fx.chain().build();
    let (st, _, body) = call(Method::GET, &format!("{}/environment", fx.api), Some(&t)).await;
    assert_eq!(st, 200, "{body}");
}

#[tokio::test]
async fn alg_none_is_refused() {
    let fx = Fx::new().await;
    let c = fx.chain();
    let mut claims = c.token.clone();
    claims["grant"] = json!(c.grant_jwt());
    let mut header = c.token_header.clone();
    header["alg"] = json!("none");
    fx.refused(&format!("{}.{}.", b64(&header), b64(&claims)), None)
        .await;
    // A grant with alg none inside an otherwise honest token.
    let mut gh = c.grant_header.clone();
    gh["alg"] = json!("none");
    let grant = format!("{}.{}.", b64(&gh), b64(&c.grant));
    fx.refused(
        &c.with_grant(&grant),
        Some(InvalidToken::Malformed(Part::Grant)),
    )
    .await;
}

#[tokio::test]
async fn hmac_keyed_with_the_root_public_key_is_refused() {
    let fx = Fx::new().await;
    let c = fx.chain();
    let root_x = URL_SAFE_NO_PAD
        .decode(c.root.jwk["x"].as_str().unwrap())
        .unwrap();
    let hmac = EncodingKey::from_secret(&root_x);
    // The grant, re-signed HS256 with the public key as secret.
    let mut gh = c.grant_header.clone();
    gh["alg"] = json!("HS256");
    let msg = format!("{}.{}", b64(&gh), b64(&c.grant));
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &hmac, Algorithm::HS256).unwrap();
    let grant = format!("{msg}.{sig}");
    fx.refused(
        &c.with_grant(&grant),
        Some(InvalidToken::AlgorithmNotAllowed(Part::Grant)),
    )
    .await;
    // The token itself HS256 with an embedded `oct` key.
    let mut th = c.token_header.clone();
    th["alg"] = json!("HS256");
    th["jwk"] = json!({"kty": "oct", "k": URL_SAFE_NO_PAD.encode(&root_x)});
    let mut claims = c.token.clone();
    claims["grant"] = json!(c.grant_jwt());
    let msg = format!("{}.{}", b64(&th), b64(&claims));
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &hmac, Algorithm::HS256).unwrap();
    fx.refused(
        &format!("{msg}.{sig}"),
        Some(InvalidToken::AlgorithmNotAllowed(Part::Token)),
    )
    .await;
}

#[tokio::test]
async fn a_tampered_payload_is_refused() {
    let fx = Fx::new().await;
    let honest = fx.chain().build();
    let mut parts: Vec<String> = honest.split('.').map(str::to_owned).collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    claims["scope"] = json!("task:operate:send-report env:view");
    parts[1] = b64(&claims);
    fx.refused(
        &parts.join("."),
        Some(InvalidToken::BadSignature(Part::Token)),
    )
    .await;

    // Tampering with the grant inside (widening its ceiling) breaks the root signature.
    let c = fx.chain();
    let g = c.grant_jwt();
    let mut gp: Vec<String> = g.split('.').map(str::to_owned).collect();
    let mut gc = c.grant.clone();
    gc["scope"] = json!("task:operate:send-report task:operate:notify env:view");
    gp[1] = b64(&gc);
    fx.refused(
        &c.with_grant(&gp.join(".")),
        Some(InvalidToken::BadSignature(Part::Grant)),
    )
    .await;
}

#[tokio::test]
async fn an_unknown_root_is_refused() {
    let fx = Fx::new().await;
    let c = Chain::honest(Key::generate());
    fx.refused(&c.build(), Some(InvalidToken::UnknownRootKey))
        .await;
}

#[tokio::test]
async fn a_token_claiming_more_than_its_grant_is_refused() {
    let fx = Fx::new().await;
    let mut c = fx.chain();
    c.grant["scope"] = json!("env:view");
    c.token["scope"] = json!("env:view task:operate:send-report");
    fx.refused(&c.build(), Some(InvalidToken::BeyondGrant))
        .await;
}

#[tokio::test]
async fn environment_mismatches_are_refused() {
    let fx = Fx::new().await;
    let mut c = fx.chain();
    c.token["env"] = json!("staging");
    fx.refused(&c.build(), Some(InvalidToken::ClaimMismatch("env")))
        .await;
    let mut c = fx.chain();
    c.grant["env"] = json!("staging");
    c.token["env"] = json!("staging");
    fx.refused(&c.build(), Some(InvalidToken::WrongEnvironment))
        .await;
}

#[tokio::test]
async fn subject_mismatches_are_refused() {
    let fx = Fx::new().await;
    let mut c = fx.chain();
    c.token["sub"] = json!("task/notify");
    fx.refused(&c.build(), Some(InvalidToken::ClaimMismatch("sub")))
        .await;
    let mut c = fx.chain();
    c.token["client_id"] = json!("task/notify");
    fx.refused(&c.build(), Some(InvalidToken::ClaimMismatch("client_id")))
        .await;
    let mut c = fx.chain();
    c.token["iss"] = json!("urn:evil");
    fx.refused(&c.build(), Some(InvalidToken::ClaimMismatch("iss")))
        .await;
}

#[tokio::test]
async fn a_token_outliving_its_grant_is_refused() {
    let fx = Fx::new().await;
    let mut c = fx.chain();
    let t = now();
    c.grant["exp"] = json!(t + 60);
    c.token["exp"] = json!(t + 300);
    fx.refused(&c.build(), Some(InvalidToken::OutlivesGrant))
        .await;
}

#[tokio::test]
async fn a_token_living_longer_than_the_maximum_is_refused() {
    let fx = Fx::new().await;
    let mut c = fx.chain();
    let t = now();
    c.grant["exp"] = json!(t + 86400);
    c.token["exp"] = json!(t + 7200);
    fx.refused(&c.build(), Some(InvalidToken::TooLongLived))
        .await;
}

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_and_grants_are_refused() {
    let fx = Fx::new().await;
    let t = now();
    let cases: Vec<(&str, &str, Value, InvalidToken)> = vec![
        (
            "token",
            "exp",
            json!(t - 120),
            InvalidToken::Expired(Part::Token),
        ),
        (
            "token",
            "nbf",
            json!(t + 120),
            InvalidToken::NotYetValid(Part::Token),
        ),
        (
            "token",
            "iat",
            json!(t + 120),
            InvalidToken::IssuedInFuture(Part::Token),
        ),
        (
            "grant",
            "exp",
            json!(t - 120),
            InvalidToken::Expired(Part::Grant),
        ),
        (
            "grant",
            "nbf",
            json!(t + 120),
            InvalidToken::NotYetValid(Part::Grant),
        ),
        (
            "grant",
            "iat",
            json!(t + 120),
            InvalidToken::IssuedInFuture(Part::Grant),
        ),
    ];
    for (which, claim, value, reason) in cases {
        let mut c = fx.chain();
        if which == "token" {
            c.token[claim] = value;
        } else {
            c.grant[claim] = value;
            if claim == "exp" {
                c.token["exp"] = json!(t - 120);
            }
        }
        let tok = c.build();
        let got = fx.auth.verify(&tok, t).await.unwrap_err();
        // An expired grant also makes its (shorter) token expired; either
        // way the token is refused for time.
        assert!(
            got == reason || (which == "grant" && got == InvalidToken::Expired(Part::Token)),
            "{which}.{claim}: {got:?}"
        );
        fx.refused(&tok, None).await;
    }
}

#[tokio::test]
async fn clock_skew_within_the_leeway_is_accepted_and_beyond_it_refused() {
    let fx = Fx::new().await;
    let c = fx.chain();
    let tok = c.build();
    let exp = c.token["exp"].as_u64().unwrap();
    let iat = c.token["iat"].as_u64().unwrap();
    assert!(fx.auth.verify(&tok, exp + 29).await.is_ok());
    assert_eq!(
        fx.auth.verify(&tok, exp + 30).await.unwrap_err(),
        InvalidToken::Expired(Part::Token)
    );
    // Fresh authorizer: nothing cached.
    let fresh = authorizer_for(&fx.sidecar).await;
    assert!(fresh.verify(&tok, iat - 30).await.is_ok());
    let fresh = authorizer_for(&fx.sidecar).await;
    assert!(fresh.verify(&tok, iat - 31).await.is_err());
}

#[tokio::test]
async fn wrong_typ_on_either_is_refused() {
    let fx = Fx::new().await;
    for typ in [json!("JWT"), json!("grant+jwt"), Value::Null] {
        let mut c = fx.chain();
        c.token_header["typ"] = typ.clone();
        fx.refused(&c.build(), Some(InvalidToken::WrongType(Part::Token)))
            .await;
    }
    for typ in [json!("JWT"), json!("at+jwt")] {
        let mut c = fx.chain();
        c.grant_header["typ"] = typ;
        fx.refused(&c.build(), Some(InvalidToken::WrongType(Part::Grant)))
            .await;
    }
}

#[tokio::test]
async fn a_wrong_audience_is_refused() {
    let fx = Fx::new().await;
    let mut c = fx.chain();
    c.token["aud"] = json!("https://other.example.internal");
    fx.refused(&c.build(), Some(InvalidToken::WrongAudience))
        .await;
    let mut c = fx.chain();
    c.token["aud"] = json!([AUDIENCE, "https://other"]);
    fx.refused(&c.build(), Some(InvalidToken::Malformed(Part::Token)))
        .await;
}

#[tokio::test]
async fn a_header_key_the_grant_does_not_bind_is_refused() {
    let fx = Fx::new().await;
    let mut c = fx.chain();
    // Token signed by another key, embedded honestly in the header; the grant binds the first.
    let other = Key::generate();
    c.token_header["kid"] = json!(other.kid);
    c.token_header["jwk"] = other.jwk.clone();
    c.sidecar = other;
    fx.refused(&c.build(), Some(InvalidToken::KeyNotBound))
        .await;

    // kid that is not the embedded key's thumbprint.
    let mut c = fx.chain();
    c.token_header["kid"] = json!(c.root.kid);
    fx.refused(&c.build(), Some(InvalidToken::EmbeddedKey))
        .await;

    // No embedded key at all.
    let mut c = fx.chain();
    c.token_header.as_object_mut().unwrap().remove("jwk");
    fx.refused(&c.build(), Some(InvalidToken::EmbeddedKey))
        .await;
}

#[tokio::test]
async fn the_grant_presented_as_an_access_token_is_refused() {
    let fx = Fx::new().await;
    let grant = fx.sidecar.sidecar.grant().compact().to_owned();
    fx.refused(&grant, Some(InvalidToken::WrongType(Part::Token)))
        .await;
}

#[tokio::test]
async fn duplicate_claims_crit_headers_and_oversized_tokens_are_refused() {
    let fx = Fx::new().await;
    let c = fx.chain();
    // Two `scope` members: a lenient parser would keep the last (wider) one.
    let mut claims = c.token.clone();
    claims["grant"] = json!(c.grant_jwt());
    let text = claims.to_string();
    let dup = format!("{{\"scope\":\"task:operate:send-report\",{}", &text[1..]);
    let tok = sign_raw(&c.token_header.to_string(), &dup, &c.sidecar.pem);
    fx.refused(&tok, Some(InvalidToken::Malformed(Part::Token)))
        .await;

    let mut c = fx.chain();
    c.token_header["crit"] = json!(["exp"]);
    c.token_header["exp"] = json!(1);
    fx.refused(&c.build(), Some(InvalidToken::CriticalHeader(Part::Token)))
        .await;

    let mut c = fx.chain();
    c.token["pad"] = json!("x".repeat(9000));
    fx.refused(&c.build(), Some(InvalidToken::TooLarge)).await;
}

/// A JWKS server that counts its hits.
async fn counting_jwks(body: Value) -> (String, Arc<AtomicUsize>, Stoppable) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&hits);
    let router = axum::Router::new().fallback(move || {
        let h = Arc::clone(&h);
        let body = body.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            axum::Json(body)
        }
    });
    let (url, server) = serve_stoppable(router).await;
    (url, hits, server)
}

#[tokio::test]
async fn jku_x5u_and_kid_injection_fetch_nothing_named_in_the_token() {
    let fx = Fx::new().await;
    // The attacker hosts a JWKS with their own root, and points jku/x5u at it.
    let evil_root = SigningKey::generate().unwrap();
    let evil_jwks =
        serde_json::to_value(authproxy_core::keys::Jwks::publish([evil_root.public()])).unwrap();
    let (evil_url, evil_hits, _stop) = counting_jwks(evil_jwks).await;

    let mut c = Chain::honest(Key::new(&evil_root));
    c.grant_header["jku"] = json!(format!("{evil_url}/jwks.json"));
    c.grant_header["x5u"] = json!(format!("{evil_url}/cert.pem"));
    c.token_header["jku"] = json!(format!("{evil_url}/jwks.json"));
    fx.refused(&c.build(), Some(InvalidToken::UnknownRootKey))
        .await;

    // kid injection: path-like and SQL-like kids are just unknown names.
    for kid in [
        "../../../../etc/passwd",
        "' OR 1=1 --",
        "http://127.0.0.1:1/jwks",
    ] {
        let mut c = fx.chain();
        c.grant_header["kid"] = json!(kid);
        fx.refused(&c.build(), Some(InvalidToken::UnknownRootKey))
            .await;
    }
    assert_eq!(
        evil_hits.load(Ordering::SeqCst),
        0,
        "a URL named in a token was fetched"
    );
}

#[tokio::test]
async fn unknown_kids_cause_at_most_one_refetch_per_interval() {
    let fx = Fx::new().await;
    let jwks: Value = jwks_json(&fx.sidecar).await;
    let (url, hits, _stop) = counting_jwks(jwks).await;
    let auth = Authorizer::builder()
        .jwks_url(url)
        .audience(AUDIENCE)
        .environment("main")
        .min_refetch_interval(std::time::Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 1, "fetched once at build");

    // Two floods of 200 tokens with distinct unknown kids, concurrently.
    for flood in 0..2 {
        let mut tasks = Vec::new();
        for i in 0..200 {
            let auth = auth.clone();
            let mut c = fx.chain();
            c.grant_header["kid"] = json!(format!("unknown-{flood}-{i}"));
            let tok = c.build();
            tasks.push(tokio::spawn(async move { auth.verify(&tok, now()).await }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap_err(), InvalidToken::UnknownRootKey);
        }
        assert_eq!(
            hits.load(Ordering::SeqCst),
            2,
            "one refetch in the interval (flood {flood})"
        );
    }
    // Honest tokens still verify.
    assert!(auth.verify(&fx.chain().build(), now()).await.is_ok());
}

#[tokio::test]
async fn a_rotated_root_is_picked_up_on_its_first_unknown_kid() {
    let fx = Fx::new().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    let old_root = fx.root();
    let new_root = SigningKey::generate().unwrap();
    let old = SigningKey::from_pkcs8_pem(old_root.pem.as_bytes()).unwrap();
    let write = |keys: Vec<&authproxy_core::keys::PublicKey>| {
        std::fs::write(
            &file,
            serde_json::to_vec(&authproxy_core::keys::Jwks::publish(keys)).unwrap(),
        )
        .unwrap();
    };
    write(vec![old.public()]);
    let auth = Authorizer::builder()
        .jwks_file(&file)
        .audience(AUDIENCE)
        .environment("main")
        .min_refetch_interval(std::time::Duration::ZERO)
        .build()
        .await
        .unwrap();
    let new_token = Chain::honest(Key::new(&new_root)).build();
    assert_eq!(
        auth.verify(&new_token, now()).await.unwrap_err(),
        InvalidToken::UnknownRootKey
    );
    write(vec![old.public(), new_root.public()]);
    assert!(auth.verify(&new_token, now()).await.is_ok());
}

#[tokio::test]
async fn cached_keys_keep_working_when_the_jwks_url_is_down() {
    let fx = Fx::new().await;
    let jwks: Value = jwks_json(&fx.sidecar).await;
    let (url, _hits, stop) = counting_jwks(jwks).await;
    let auth = Authorizer::builder()
        .jwks_url(url)
        .audience(AUDIENCE)
        .environment("main")
        .min_refetch_interval(std::time::Duration::ZERO)
        .build()
        .await
        .unwrap();
    stop.stop().await; // the key server goes away
    // An unknown kid forces a (failing) refetch; the known keys survive it.
    let mut c = fx.chain();
    c.grant_header["kid"] = json!("unknown");
    assert_eq!(
        auth.verify(&c.build(), now()).await.unwrap_err(),
        InvalidToken::UnknownRootKey
    );
    assert!(auth.verify(&fx.chain().build(), now()).await.is_ok());
}

#[tokio::test]
async fn a_jwks_with_only_unusable_keys_fails_the_build() {
    let bad = json!({"keys": [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "h"},
        {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
    ]});
    let set = serde_json::from_value(bad).unwrap();
    let err = Authorizer::builder()
        .keys(set)
        .audience(AUDIENCE)
        .environment("main")
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no usable Ed25519"), "{err}");
}
