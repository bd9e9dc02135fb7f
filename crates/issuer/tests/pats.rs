//! Personal access tokens over real HTTP (DESIGN §9): the `/v1/pats` verbs
//! and their refusals, the revocation feed, the layers' "used" reports,
//! grant revocation, and the exchange at `POST /oauth2/token` — the router
//! served on 127.0.0.1:0 with a fresh state directory, spoken to with reqwest.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use authproxy_core::clock;
use authproxy_core::keys::{Jwks, RootKeys, SigningKey};
use authproxy_core::pat::{self, PatName, PatRequest};
use authproxy_core::root_key::load_or_create_root_key;
use authproxy_core::verify::Verifier;
use authproxy_core::{Environment, Scopes, Subject};
use authproxy_issuer::{ADMIN_TOKEN_FILE, Cursor, Issuer, IssuerConfig, PatChange, router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const AUDIENCE: &str = "https://api.example.test";

const PROJECT: &str = "\
applications:
  web:
    authorizations:
      - { type: task, action: operate, resource: send-report }
      - { type: env, action: view }
tasks:
  send-report:
    authorizations:
      - { type: task, action: operate, resource: notify }
  notify: {}
";

/// One running issuer.
struct Node {
    base: String,
    state_dir: PathBuf,
    admin: String,
    issuer: Arc<Issuer>,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// An answer: status, headers, JSON body (Null when empty).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    text: String,
}

impl Answer {
    async fn of(r: reqwest::Response) -> Self {
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Self {
            status,
            headers,
            body,
            text,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    #[track_caller]
    fn expect(&self, status: u16, error: Option<&str>) -> &Self {
        assert_eq!(self.status.as_u16(), status, "{}", self.text);
        if let Some(error) = error {
            assert_eq!(self.body["error"], error, "{}", self.text);
            assert!(
                !self.body["error_description"].as_str().unwrap().is_empty(),
                "{}",
                self.text
            );
        }
        self
    }
}

/// Starts an issuer; `extra` is appended to its config.
async fn spawn(extra: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state_dir = dir.path().join("state");
    let config_file = dir.path().join("issuer.toml");
    std::fs::write(
        &config_file,
        format!(
            "[issuer]\nurl = \"{base}\"\nstate_dir = \"{}\"\ngrant_ttl = \"1h\"\n\
             [tokens]\naudience = \"{AUDIENCE}\"\n{extra}",
            state_dir.display()
        ),
    )
    .unwrap();
    let config = IssuerConfig::load_with_env(&config_file, Some(HashMap::new())).unwrap();
    let issuer = Arc::new(Issuer::open(config, clock::now()).await.unwrap());
    let admin = std::fs::read_to_string(state_dir.join(ADMIN_TOKEN_FILE))
        .unwrap()
        .trim()
        .to_owned();
    let app = router(Arc::clone(&issuer));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Node {
        base,
        state_dir,
        admin,
        issuer,
        client: reqwest::Client::new(),
        _dir: dir,
    }
}

impl Node {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `method path` with the admin token and an optional JSON body.
    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.call(method, path, Some(&self.admin.clone()), body)
            .await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = self.client.request(method, self.url(path));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        Answer::of(req.send().await.unwrap()).await
    }

    async fn create(&self, name: &str, environment: &str, minutes: u64, scopes: &[&str]) -> Answer {
        self.admin(
            Method::POST,
            "/v1/pats",
            Some(json!({
                "name": name, "environment": environment,
                "valid_minutes": minutes, "scopes": scopes,
            })),
        )
        .await
    }

    /// Creates a PAT and returns (its props, its value).
    async fn created(&self, name: &str, environment: &str, scopes: &[&str]) -> (Value, String) {
        let a = self.create(name, environment, 60, scopes).await;
        a.expect(201, None);
        (
            a.body["pat"].clone(),
            a.body["value"].as_str().unwrap().to_owned(),
        )
    }

    async fn update(&self, name: &str, body: Value) -> Answer {
        self.admin(Method::PATCH, &format!("/v1/pats/{name}"), Some(body))
            .await
    }

    async fn feed(&self, query: &str) -> Answer {
        Answer::of(
            self.client
                .get(self.url(&format!("/v1/revocations{query}")))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// `POST /oauth2/token` with `form` and, if given, Basic `id:secret`.
    async fn exchange(&self, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> Answer {
        let mut req = self
            .client
            .post(self.url("/oauth2/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(form).unwrap());
        if let Some((id, secret)) = basic {
            // RFC 6749 §2.3.1: each part form-urlencoded, then base64.
            let enc = |s: &str| serde_urlencoded::to_string([("", s)]).unwrap()[1..].to_owned();
            let credentials = STANDARD.encode(format!("{}:{}", enc(id), enc(secret)));
            req = req.header("authorization", format!("Basic {credentials}"));
        }
        Answer::of(req.send().await.unwrap()).await
    }

    /// Exchanges `value` (form `client_secret`) with extra parameters.
    async fn exchange_value(&self, value: &str, extra: &[(&str, &str)]) -> Answer {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_secret", value),
        ];
        form.extend_from_slice(extra);
        self.exchange(&form, None).await
    }

    async fn sync(&self, environment: &str, yaml: &str) -> Value {
        let r = self
            .client
            .post(self.url(&format!("/v1/sync?environment={environment}")))
            .bearer_auth(&self.admin)
            .body(yaml.to_owned())
            .send()
            .await
            .unwrap();
        let a = Answer::of(r).await;
        a.expect(200, None);
        a.body
    }

    async fn roots(&self) -> RootKeys {
        let r = self
            .client
            .get(self.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap();
        Jwks::from_json(&r.bytes().await.unwrap())
            .unwrap()
            .usable_keys()
    }

    /// The feed's entries as (kind, id).
    async fn revoked(&self) -> Vec<(String, String)> {
        let a = self.feed("").await;
        a.expect(200, None);
        entries(&a.body)
    }
}

fn entries(feed: &Value) -> Vec<(String, String)> {
    feed["revocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// An RFC 3339 UTC string as unix seconds.
fn secs(v: &Value) -> u64 {
    let t = humantime::parse_rfc3339(v.as_str().unwrap()).unwrap();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn pats_are_created_listed_shown_updated_and_deleted() {
    let node = spawn("").await;
    let before = clock::now();
    let a = node
        .create("ci.deploy", "main", 90, &["task:operate:*", "env:view"])
        .await;
    a.expect(201, None);
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let pat = &a.body["pat"];
    assert_eq!(pat["name"], "ci.deploy");
    assert_eq!(pat["environment"], "main");
    assert_eq!(strings(&pat["scopes"]), ["env:view", "task:operate:*"]);
    assert_eq!(pat["last_used_at"], Value::Null);
    assert_eq!(pat["created_at"], pat["updated_at"]);
    let expires = secs(&pat["expires_at"]);
    assert!((before + 90 * 60..=clock::now() + 90 * 60).contains(&expires));
    assert!(pat["expires_at"].as_str().unwrap().ends_with('Z'));
    let value = a.body["value"].as_str().unwrap();
    assert!(value.starts_with("ap_pat_"));
    // Its id is the value's version id.
    let root = load_or_create_root_key(&node.state_dir).unwrap();
    let roots = RootKeys::from([(root.public().thumbprint().to_owned(), root.public().clone())]);
    let env = Environment::parse("main").unwrap();
    let verified = pat::verify(value, &roots, &env, 0, clock::now()).unwrap();
    assert_eq!(pat["id"], verified.claims.jti.as_str());
    assert_eq!(verified.claims.exp, expires);

    node.created("a-first", "staging", &["env:*"]).await;
    let list = node.admin(Method::GET, "/v1/pats", None).await;
    list.expect(200, None);
    let names: Vec<&str> = list.body["pats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a-first", "ci.deploy"]);
    assert_eq!(list.body["pats"][1], *pat);

    let show = node.admin(Method::GET, "/v1/pats/ci.deploy", None).await;
    show.expect(200, None);
    assert_eq!(show.body, *pat);

    // Scopes change; without valid_minutes the expiry stays.
    let u = node
        .update("ci.deploy", json!({"scopes": ["task:operate:notify"]}))
        .await;
    u.expect(200, None);
    assert_eq!(u.header("cache-control"), Some("no-store"));
    let updated = &u.body["pat"];
    assert_eq!(strings(&updated["scopes"]), ["task:operate:notify"]);
    assert_eq!(updated["expires_at"], pat["expires_at"]);
    assert_eq!(updated["created_at"], pat["created_at"]);
    assert_ne!(updated["id"], pat["id"]);
    let new_value = u.body["value"].as_str().unwrap();
    assert_ne!(new_value, value);
    // valid_minutes restarts the clock; the scopes stay.
    let u = node.update("ci.deploy", json!({"valid_minutes": 5})).await;
    u.expect(200, None);
    assert_eq!(strings(&u.body["pat"]["scopes"]), ["task:operate:notify"]);
    assert!(secs(&u.body["pat"]["expires_at"]) <= clock::now() + 300);
    // An empty change gives a new value only.
    let again = node.admin(Method::PATCH, "/v1/pats/ci.deploy", None).await;
    again.expect(200, None);
    assert_ne!(again.body["pat"]["id"], u.body["pat"]["id"]);

    let d = node.admin(Method::DELETE, "/v1/pats/ci.deploy", None).await;
    d.expect(204, None);
    assert!(d.text.is_empty());
    node.admin(Method::GET, "/v1/pats/ci.deploy", None)
        .await
        .expect(404, Some("not_found"));
    let list = node.admin(Method::GET, "/v1/pats", None).await;
    assert_eq!(list.body["pats"].as_array().unwrap().len(), 1);
    // The name is free again.
    node.created("ci.deploy", "main", &["env:view"]).await;
}

#[tokio::test]
async fn the_metadata_advertises_the_exchange() {
    let node = spawn("").await;
    let r = node
        .client
        .get(node.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap();
    let meta = Answer::of(r).await;
    meta.expect(200, None);
    assert_eq!(meta.body["token_endpoint"], node.url("/oauth2/token"));
    assert_eq!(
        meta.body["grant_types_supported"],
        json!(["client_credentials"])
    );
    assert_eq!(
        meta.body["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"])
    );
}

#[tokio::test]
async fn an_expired_pat_is_updated_only_with_a_new_validity() {
    let node = spawn("").await;
    node.created("ci", "main", &["env:view"]).await;
    let name = PatName::parse("ci").unwrap();
    let later = clock::now() + 2 * 3600;
    let e = node
        .issuer
        .update_pat(&name, &PatChange::default(), later)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("give `valid_minutes`"), "{e}");
    let renewed = node
        .issuer
        .update_pat(
            &name,
            &PatChange {
                valid_minutes: Some(10),
                ..PatChange::default()
            },
            later,
        )
        .await
        .unwrap();
    assert_eq!(renewed.pat.expires_at, later + 600);
    assert!(
        format!("{renewed:?}").contains("redacted"),
        "the value is never printed"
    );
    assert!(!format!("{renewed:?}").contains("ap_pat_"));
}

#[tokio::test]
async fn create_refuses_a_taken_name_bad_scopes_names_and_validities() {
    let node = spawn("").await;
    node.created("ci", "main", &["env:view"]).await;
    let taken = node.create("ci", "staging", 60, &["env:view"]).await;
    taken.expect(409, Some("name_taken"));
    assert!(taken.text.contains("`ci`"), "{}", taken.text);

    for (name, env, minutes, scopes, needle) in [
        ("x", "main", 60, &["task:operate:x*"][..], "task:operate:x*"),
        ("x", "main", 60, &["db:view"][..], "db:view"),
        ("x", "main", 60, &["env:view:*"][..], "env:view:*"),
        ("x", "main", 60, &["task:operate"][..], "needs a resource"),
        ("x", "main", 60, &[][..], "at least one"),
        ("x", "main", 527_041, &["env:view"][..], "1 to 527040"),
        ("x", "main", 0, &["env:view"][..], "valid_minutes"),
        (
            "Bad",
            "main",
            60,
            &["env:view"][..],
            "`Bad` is not a valid PAT name",
        ),
        (".x", "main", 60, &["env:view"][..], "not a valid PAT name"),
        ("x", "Main", 60, &["env:view"][..], "environment"),
    ] {
        let a = node.create(name, env, minutes, scopes).await;
        a.expect(400, Some("invalid_request"));
        assert!(a.text.contains(needle), "{needle}: {}", a.text);
    }
    let long = "a".repeat(65);
    node.create(&long, "main", 60, &["env:view"])
        .await
        .expect(400, Some("invalid_request"));
    // Unknown members and wrong types are refused, not ignored.
    for body in [
        json!({"name": "x", "environment": "main", "valid_minutes": 60, "scopes": ["env:view"], "value": "ap_pat_x"}),
        json!({"name": "x", "environment": "main", "valid_minutes": -1, "scopes": ["env:view"]}),
        json!({"name": "x", "environment": "main", "scopes": ["env:view"]}),
        json!({"name": "x", "environment": "main", "valid_minutes": 60, "scopes": "env:view"}),
    ] {
        node.admin(Method::POST, "/v1/pats", Some(body.clone()))
            .await
            .expect(400, Some("invalid_request"));
    }
    let list = node.admin(Method::GET, "/v1/pats", None).await;
    assert_eq!(
        list.body["pats"].as_array().unwrap().len(),
        1,
        "nothing else was created"
    );

    // A lower `pats.max_valid_minutes` is the limit.
    let short = spawn("[pats]\nmax_valid_minutes = 60\n").await;
    short
        .create("x", "main", 60, &["env:view"])
        .await
        .expect(201, None);
    let a = short.create("y", "main", 61, &["env:view"]).await;
    a.expect(400, Some("invalid_request"));
    assert!(a.text.contains("pats.max_valid_minutes"), "{}", a.text);
    let u = short.update("x", json!({"valid_minutes": 61})).await;
    u.expect(400, Some("invalid_request"));
}

#[tokio::test]
async fn unknown_names_are_404_and_malformed_names_400_for_show_update_and_delete() {
    let node = spawn("").await;
    for method in [Method::GET, Method::PATCH, Method::DELETE] {
        let body = (method == Method::PATCH).then(|| json!({}));
        let a = node
            .admin(method.clone(), "/v1/pats/nope", body.clone())
            .await;
        a.expect(404, Some("not_found"));
        assert!(a.text.contains("`nope`"), "{}", a.text);
        node.admin(method.clone(), "/v1/pats/No.pe", body.clone())
            .await
            .expect(400, Some("invalid_request"));
    }
    // An update is checked before anything is signed.
    node.created("ci", "main", &["env:view"]).await;
    for (body, needle) in [
        (json!({"scopes": []}), "at least one"),
        (json!({"scopes": ["task:operate:x*"]}), "task:operate:x*"),
        (json!({"valid_minutes": 0}), "valid_minutes"),
        (json!({"name": "other"}), "name"),
    ] {
        let a = node.update("ci", body).await;
        a.expect(400, Some("invalid_request"));
        assert!(a.text.contains(needle), "{needle}: {}", a.text);
    }
    assert!(
        node.revoked().await.is_empty(),
        "no refused update revoked anything"
    );
}

#[tokio::test]
async fn the_management_routes_need_the_admin_token_and_the_feed_does_not() {
    let node = spawn("").await;
    node.created("ci", "main", &["env:view"]).await;
    node.sync("main", PROJECT).await;
    let wrong = format!("ap_admin_{}", "A".repeat(43));
    for bearer in [None, Some("garbage"), Some(wrong.as_str())] {
        for (method, path, body) in [
            (
                Method::POST,
                "/v1/pats",
                Some(
                    json!({"name": "x", "environment": "main", "valid_minutes": 1, "scopes": ["env:view"]}),
                ),
            ),
            (Method::GET, "/v1/pats", None),
            (Method::GET, "/v1/pats/ci", None),
            (Method::PATCH, "/v1/pats/ci", Some(json!({}))),
            (Method::DELETE, "/v1/pats/ci", None),
            (Method::GET, "/v1/pats/used", None),
            (
                Method::POST,
                "/v1/grants/revoke",
                Some(json!({"environment": "main", "workload": "app/web"})),
            ),
        ] {
            let a = node.call(method.clone(), path, bearer, body).await;
            a.expect(401, Some("invalid_token"));
            assert!(a.header("www-authenticate").unwrap().starts_with("Bearer"));
        }
    }
    // Nothing changed.
    assert!(node.revoked().await.is_empty());
    node.admin(Method::GET, "/v1/pats/ci", None)
        .await
        .expect(200, None);
    node.feed("").await.expect(200, None);
}

#[tokio::test]
async fn the_value_appears_only_in_create_and_update_answers() {
    let node = spawn("").await;
    let (_, value) = node.created("ci", "main", &["env:view"]).await;
    let u = node.update("ci", json!({})).await;
    let updated = u.body["value"].as_str().unwrap().to_owned();
    node.exchange_value(&updated, &[]).await.expect(200, None);
    node.exchange_value(&value, &[])
        .await
        .expect(401, Some("invalid_client"));
    for path in [
        "/v1/pats",
        "/v1/pats/ci",
        "/v1/revocations",
        "/.well-known/jwks.json",
    ] {
        let a = node.admin(Method::GET, path, None).await;
        a.expect(200, None);
        assert!(!a.text.contains("ap_pat_"), "{path}: {}", a.text);
    }
    // Nor do refusals echo it.
    let a = node.create("ci", "main", 60, &["env:view"]).await;
    assert!(!a.text.contains("ap_pat_"), "{}", a.text);
    let typo = {
        let (head, last) = updated.split_at(updated.len() - 1);
        format!("{head}{}", if last == "x" { "y" } else { "x" })
    };
    let a = node.exchange_value(&typo, &[]).await;
    a.expect(401, Some("invalid_client"));
    assert!(
        !a.text.contains(&updated[7..40]) && !a.text.contains("ap_pat_"),
        "{}",
        a.text
    );
}

#[tokio::test]
async fn update_revokes_the_previous_value() {
    let node = spawn("").await;
    node.sync("main", PROJECT).await;
    let (props, old) = node.created("ci", "main", &["task:operate:*"]).await;
    node.exchange_value(&old, &[]).await.expect(200, None);
    let u = node
        .update("ci", json!({"scopes": ["env:view"], "valid_minutes": 30}))
        .await;
    u.expect(200, None);
    let new = u.body["value"].as_str().unwrap().to_owned();
    let feed = node.feed("").await;
    assert_eq!(
        entries(&feed.body),
        [("pat".to_owned(), props["id"].as_str().unwrap().to_owned())]
    );
    // The entry lives as long as the old version would have.
    assert_eq!(
        feed.body["revocations"][0]["expires_at"],
        props["expires_at"]
    );
    let refused = node.exchange_value(&old, &[]).await;
    refused.expect(401, Some("invalid_client"));
    let ok = node.exchange_value(&new, &[]).await;
    ok.expect(200, None);
    assert_eq!(ok.body["scope"], "env:view");
}

#[tokio::test]
async fn the_revocation_feed_gives_a_snapshot_then_what_follows_a_cursor() {
    let node = spawn("").await;
    let empty = node.feed("").await;
    empty.expect(200, None);
    assert_eq!(empty.header("cache-control"), Some("no-store"));
    assert_eq!(empty.body, json!({"cursor": "0", "revocations": []}));

    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        let (props, _) = node.created(name, "main", &["env:view"]).await;
        ids.push(props["id"].as_str().unwrap().to_owned());
        node.admin(Method::DELETE, &format!("/v1/pats/{name}"), None)
            .await
            .expect(204, None);
    }
    let snapshot = node.feed("").await;
    assert_eq!(snapshot.body["cursor"], "3");
    let listed: Vec<String> = entries(&snapshot.body)
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    assert_eq!(listed, ids);
    for e in snapshot.body["revocations"].as_array().unwrap() {
        assert_eq!(e["kind"], "pat");
        assert!(secs(&e["expires_at"]) > clock::now());
    }

    let after = node.feed("?since=1").await;
    assert_eq!(after.body["cursor"], "3");
    assert_eq!(entries(&after.body).len(), 2);
    let none = node.feed("?since=3").await;
    assert_eq!(none.body, json!({"cursor": "3", "revocations": []}));

    // A cursor this store never gave: a snapshot, and its cursor.
    let foreign = node.feed("?since=1000").await;
    assert_eq!(foreign.body, snapshot.body);

    for bad in [
        "?since=",
        "?since=-1",
        "?since=abc",
        "?since=1.5",
        "?since=99999999999999999999",
        "?cursor=1",
    ] {
        node.feed(bad).await.expect(400, Some("invalid_request"));
    }

    // Entries leave the feed when what they name expires (the use case, at
    // a later `now`: nothing sleeps).
    let later = node
        .issuer
        .revocations(None, clock::now() + 2 * 3600)
        .await
        .unwrap();
    assert!(later.entries.is_empty());
    assert_eq!(later.cursor.to_string(), "3");
    let since = node
        .issuer
        .revocations(Cursor::parse("1"), clock::now() + 2 * 3600)
        .await
        .unwrap();
    assert!(since.entries.is_empty());
    assert_eq!(since.cursor.to_string(), "1");
    // Pruned, the newest stays, so a fresh snapshot's cursor never goes back.
    assert_eq!(
        node.issuer
            .prune_revocations(clock::now() + 2 * 3600)
            .await
            .unwrap(),
        2
    );
    assert_eq!(node.feed("").await.body["cursor"], "3");
}

#[tokio::test]
async fn used_reports_set_last_used_of_current_versions() {
    let node = spawn("").await;
    let (props, _) = node.created("ci", "main", &["env:view"]).await;
    let id = props["id"].as_str().unwrap();
    let report = |ids: Value| {
        node.client
            .post(node.url("/v1/pats/used"))
            .json(&json!({ "ids": ids }))
            .send()
    };
    let before = clock::now();
    let r = report(json!([id, "unknown-id"])).await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let shown = node.admin(Method::GET, "/v1/pats/ci", None).await;
    assert!(secs(&shown.body["last_used_at"]) >= before);

    let too_many: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
    let r = Answer::of(report(json!(too_many)).await.unwrap()).await;
    r.expect(400, Some("invalid_request"));
    for body in [json!({"ids": "x"}), json!({"id": ["x"]}), json!([])] {
        let r = node
            .client
            .post(node.url("/v1/pats/used"))
            .json(&body)
            .send()
            .await
            .unwrap();
        Answer::of(r).await.expect(400, Some("invalid_request"));
    }
    let big = format!("{{\"ids\": [\"{}\"]}}", "x".repeat(70 * 1024));
    let r = node
        .client
        .post(node.url("/v1/pats/used"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_pat_named_used_is_an_ordinary_pat() {
    let node = spawn("").await;
    let (props, _) = node.created("used", "main", &["env:view"]).await;
    let shown = node.admin(Method::GET, "/v1/pats/used", None).await;
    shown.expect(200, None);
    assert_eq!(shown.body, props);
    let u = node.update("used", json!({"scopes": ["env:*"]})).await;
    u.expect(200, None);
    assert_eq!(strings(&u.body["pat"]["scopes"]), ["env:*"]);
    node.admin(Method::DELETE, "/v1/pats/used", None)
        .await
        .expect(204, None);
    node.admin(Method::GET, "/v1/pats/used", None)
        .await
        .expect(404, Some("not_found"));
}

#[tokio::test]
async fn a_pat_is_exchanged_with_basic_or_form_credentials_for_a_token_that_verifies() {
    let node = spawn("").await;
    node.sync("main", PROJECT).await;
    let (props, value) = node
        .created("ci.deploy", "main", &["task:operate:send-report"])
        .await;
    let pat_id = props["id"].as_str().unwrap();
    let roots = node.roots().await;
    let verifier = Verifier::new(AUDIENCE.into(), Environment::parse("main").unwrap(), 0, 16);
    let grant = [("grant_type", "client_credentials")];

    let by_form = node
        .exchange_value(&value, &[("client_id", "ci.deploy")])
        .await;
    let by_basic = node.exchange(&grant, Some(("ci.deploy", &value))).await;
    let by_basic_any_id = node.exchange(&grant, Some(("", &value))).await;
    for a in [&by_form, &by_basic, &by_basic_any_id] {
        a.expect(200, None);
        assert_eq!(a.header("cache-control"), Some("no-store"));
        assert_eq!(a.body["token_type"], "Bearer");
        assert_eq!(a.body["scope"], "task:operate:send-report");
        let expires_in = a.body["expires_in"].as_u64().unwrap();
        assert!((290..=300).contains(&expires_in), "{expires_in}");
        let token = a.body["access_token"].as_str().unwrap();
        let v = verifier.verify(token, &roots, clock::now()).unwrap();
        assert_eq!(*v.sub(), "pat:ci.deploy".parse::<Subject>().unwrap());
        assert_eq!(v.pat_id(), Some(pat_id));
        assert_eq!(v.scopes().to_string(), "task:operate:send-report");
        assert_eq!(v.iss(), node.base);
    }
    // Each exchange is its own grant and key.
    let grant_of = |a: &Answer| {
        let token = a.body["access_token"].as_str().unwrap();
        verifier
            .verify(token, &roots, clock::now())
            .unwrap()
            .grant_id()
            .to_owned()
    };
    assert_ne!(grant_of(&by_form), grant_of(&by_basic));

    // The exchange counts as a use.
    let shown = node.admin(Method::GET, "/v1/pats/ci.deploy", None).await;
    assert!(shown.body["last_used_at"].is_string(), "{}", shown.text);

    // RFC 8707 `resource` is the audience.
    let other = node
        .exchange_value(&value, &[("resource", "https://other.example")])
        .await;
    other.expect(200, None);
    let token = other.body["access_token"].as_str().unwrap();
    assert!(verifier.verify(token, &roots, clock::now()).is_err());
    let other_verifier = Verifier::new(
        "https://other.example".into(),
        Environment::parse("main").unwrap(),
        0,
        16,
    );
    other_verifier.verify(token, &roots, clock::now()).unwrap();

    // A PAT expiring in 2 minutes gives a token for 2 minutes.
    let short = node.create("short", "main", 2, &["env:view"]).await;
    short.expect(201, None);
    let a = node
        .exchange_value(short.body["value"].as_str().unwrap(), &[])
        .await;
    a.expect(200, None);
    assert!(a.body["expires_in"].as_u64().unwrap() <= 120);
}

#[tokio::test]
async fn exchange_scopes_are_the_pats_expanded_against_the_synced_tasks() {
    let node = spawn("").await;
    node.sync("main", PROJECT).await;
    node.sync("staging", "tasks:\n  only-here: {}\n").await;
    let (_, all) = node.created("all", "main", &["*"]).await;
    let (_, tasks) = node
        .created("tasks", "main", &["task:*", "task:operate:zzz"])
        .await;
    let (_, env) = node.created("env", "main", &["env:*"]).await;

    let scope_of = |a: &Answer| a.body["scope"].as_str().unwrap().to_owned();
    let a = node.exchange_value(&all, &[]).await;
    a.expect(200, None);
    assert_eq!(
        scope_of(&a),
        "task:operate:notify task:operate:send-report env:view"
    );
    let a = node.exchange_value(&tasks, &[]).await;
    assert_eq!(
        scope_of(&a),
        "task:operate:notify task:operate:send-report task:operate:zzz"
    );
    assert_eq!(scope_of(&node.exchange_value(&env, &[]).await), "env:view");

    // A subset, exactly.
    let a = node
        .exchange_value(&all, &[("scope", "task:operate:notify")])
        .await;
    a.expect(200, None);
    assert_eq!(scope_of(&a), "task:operate:notify");
    for (value, scope, needle) in [
        (&tasks, "env:view", "env:view"),
        (&env, "task:operate:notify", "task:operate:notify"),
        // Covered by a wildcard but not a synced task of `main`.
        (&all, "task:operate:only-here", "only-here"),
        (&all, "task:operate:*", "exact"),
        (&all, "db:view", "db"),
    ] {
        let a = node.exchange_value(value, &[("scope", scope)]).await;
        a.expect(400, Some("invalid_scope"));
        assert!(a.text.contains(needle), "{scope}: {}", a.text);
    }

    // A task removed by a later sync leaves the expansion.
    node.sync("main", "tasks:\n  notify: {}\n").await;
    assert_eq!(
        scope_of(&node.exchange_value(&tasks, &[]).await),
        "task:operate:notify task:operate:zzz"
    );
    // Nothing to cover: no token.
    let (_, nothing) = node.created("nothing", "empty-env", &["task:*"]).await;
    node.exchange_value(&nothing, &[])
        .await
        .expect(400, Some("invalid_scope"));
}

#[tokio::test]
async fn exchange_refuses_revoked_updated_deleted_expired_other_environment_and_mistyped_pats() {
    let node = spawn("").await;
    node.sync("main", PROJECT).await;
    let grant = [("grant_type", "client_credentials")];
    let (_, deleted) = node.created("deleted", "main", &["env:view"]).await;
    node.admin(Method::DELETE, "/v1/pats/deleted", None)
        .await
        .expect(204, None);
    let (_, replaced) = node.created("replaced", "main", &["env:view"]).await;
    node.update("replaced", json!({})).await.expect(200, None);
    let (props, current) = node.created("current", "main", &["env:view"]).await;
    node.exchange_value(&current, &[]).await.expect(200, None);

    // Values this issuer's root signed for the current version, but expired
    // or for another environment than the PAT's record.
    let root = load_or_create_root_key(&node.state_dir).unwrap();
    let resign = |environment: &str, iat: u64, ttl: u64| {
        pat::issue(
            &root,
            PatRequest {
                issuer: &node.base,
                name: &PatName::parse("current").unwrap(),
                environment: &Environment::parse(environment).unwrap(),
                scopes: &Scopes::parse("env:view").unwrap(),
                ttl_secs: ttl,
            },
            iat,
            props["id"].as_str().unwrap().to_owned(),
        )
        .unwrap()
        .0
    };
    let expired = resign("main", clock::now() - 3600, 60);
    let other_env = resign("staging", clock::now(), 600);
    // And a PAT of another issuer (another root), with the same id.
    let foreign_root = SigningKey::generate().unwrap();
    let (foreign, _) = pat::issue(
        &foreign_root,
        PatRequest {
            issuer: &node.base,
            name: &PatName::parse("current").unwrap(),
            environment: &Environment::parse("main").unwrap(),
            scopes: &Scopes::parse("*").unwrap(),
            ttl_secs: 600,
        },
        clock::now(),
        props["id"].as_str().unwrap().to_owned(),
    )
    .unwrap();
    let typo = {
        let mut b = current.clone().into_bytes();
        let i = b.len() / 2;
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).unwrap()
    };
    let truncated = current[..current.len() - 1].to_owned();
    let not_a_pat = "ap_wc_aaaaaaaaaaaaaaaaaaaaaaaa".to_owned();

    for (what, value) in [
        ("deleted", &deleted),
        ("replaced", &replaced),
        ("expired", &expired),
        ("other environment", &other_env),
        ("other root", &foreign),
        ("checksum typo", &typo),
        ("truncated", &truncated),
        ("not a PAT", &not_a_pat),
    ] {
        let form = node.exchange_value(value, &[]).await;
        form.expect(401, Some("invalid_client"));
        assert_eq!(form.header("www-authenticate"), None, "{what}");
        assert_eq!(form.header("cache-control"), Some("no-store"), "{what}");
        let basic = node.exchange(&grant, Some(("x", value))).await;
        basic.expect(401, Some("invalid_client"));
        assert_eq!(
            basic.header("www-authenticate"),
            Some("Basic realm=\"authproxy\""),
            "{what}"
        );
        // One answer whatever the reason.
        assert_eq!(form.body, basic.body, "{what}");
    }
    // No credentials at all.
    node.exchange(&grant, None)
        .await
        .expect(401, Some("invalid_client"));
    let bearer = node
        .client
        .post(node.url("/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .bearer_auth(&current)
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    Answer::of(bearer).await.expect(401, Some("invalid_client"));
    // The current one still works.
    node.exchange_value(&current, &[]).await.expect(200, None);
}

#[tokio::test]
async fn exchange_request_errors_are_oauth_errors() {
    let node = spawn("").await;
    node.sync("main", PROJECT).await;
    let (_, value) = node.created("ci", "main", &["env:view"]).await;
    let v = value.as_str();
    for (form, basic, status, error) in [
        (vec![("client_secret", v)], None, 400, "invalid_request"),
        (
            vec![("grant_type", "password"), ("client_secret", v)],
            None,
            400,
            "unsupported_grant_type",
        ),
        (
            vec![("grant_type", "client_credentials"), ("client_secret", v)],
            Some(("ci", v)),
            400,
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_secret", v),
                ("scope", "env:view"),
                ("scope", "env:view"),
            ],
            None,
            400,
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_secret", v),
                ("resource", "not-a-uri"),
            ],
            None,
            400,
            "invalid_target",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_secret", v),
                ("resource", "https://api.example#x"),
            ],
            None,
            400,
            "invalid_target",
        ),
    ] {
        let a = node.exchange(&form, basic).await;
        a.expect(status, Some(error));
        assert_eq!(a.header("cache-control"), Some("no-store"));
        assert!(!a.text.contains("ap_pat_"), "{}", a.text);
    }
    // Not a form.
    let r = node
        .client
        .post(node.url("/oauth2/token"))
        .json(&json!({"grant_type": "client_credentials", "client_secret": v}))
        .send()
        .await
        .unwrap();
    Answer::of(r).await.expect(400, Some("invalid_request"));
    // Too large.
    let r = node
        .client
        .post(node.url("/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=client_credentials&x={}",
            "a".repeat(20_000)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Unknown parameters are ignored.
    node.exchange_value(v, &[("audience", "x"), ("client_id", "whatever")])
        .await
        .expect(200, None);
}

#[tokio::test]
async fn grants_revoke_puts_a_workloads_live_grants_on_the_feed() {
    let node = spawn("").await;
    let plan = node.sync("main", PROJECT).await;
    let credential = plan["credentials"]["app/web"].as_str().unwrap().to_owned();
    let mut grant_ids = Vec::new();
    let roots = node.roots().await;
    let env = Environment::parse("main").unwrap();
    for _ in 0..2 {
        let key = SigningKey::generate().unwrap();
        let a = node
            .call(
                Method::POST,
                "/v1/grants",
                Some(&credential),
                Some(json!({"workload": "app/web", "environment": "main", "public_key": key.public().bare_jwk()})),
            )
            .await;
        a.expect(200, None);
        let grant = authproxy_core::grant::Grant::verify(
            a.body["grant"].as_str().unwrap(),
            &roots,
            &env,
            0,
            clock::now(),
        )
        .unwrap();
        grant_ids.push(grant.claims().jti.clone());
    }
    // A PAT exchange's grant is no workload's.
    let (_, value) = node.created("web", "main", &["env:view"]).await;
    node.exchange_value(&value, &[]).await.expect(200, None);

    let revoke = |body: Value| node.admin(Method::POST, "/v1/grants/revoke", Some(body));
    let a = revoke(json!({"environment": "main", "workload": "app/web"})).await;
    a.expect(200, None);
    assert_eq!(a.body, json!({"revoked": 2}));
    let feed = node.feed("").await;
    let mut expected: Vec<(String, String)> = grant_ids
        .iter()
        .map(|id| ("grant".to_owned(), id.clone()))
        .collect();
    expected.sort();
    // Grants issued in the same second come in no particular order.
    let mut revoked = entries(&feed.body);
    revoked.sort();
    assert_eq!(revoked, expected);
    for e in feed.body["revocations"].as_array().unwrap() {
        // A grant's entry lives as long as the grant (1 h here).
        let left = secs(&e["expires_at"]).saturating_sub(clock::now());
        assert!((3500..=3600).contains(&left), "{left}");
    }
    // Again: nothing new.
    let a = revoke(json!({"environment": "main", "workload": "app/web"})).await;
    assert_eq!(a.body, json!({"revoked": 0}));
    // A synced workload without grants, an unknown one, another environment.
    let a = revoke(json!({"environment": "main", "workload": "task/notify"})).await;
    assert_eq!(a.body, json!({"revoked": 0}));
    for body in [
        json!({"environment": "main", "workload": "app/nope"}),
        json!({"environment": "staging", "workload": "app/web"}),
    ] {
        revoke(body).await.expect(404, Some("unknown_workload"));
    }
    for body in [
        json!({"environment": "main", "workload": "cron/web/x"}),
        json!({"environment": "Main", "workload": "app/web"}),
        json!({"environment": "main"}),
    ] {
        revoke(body).await.expect(400, Some("invalid_request"));
    }
}
