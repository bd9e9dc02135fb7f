//! The Kubernetes bootstrap (DESIGN §8): a sidecar proves which pod it
//! runs in with a projected service-account token (audience `authproxy`),
//! signed by the cluster's service-account issuer. No static secret.
//!
//! [`KubernetesVerifier`] checks such a token against the cluster's keys
//! ([`ClusterKeys`], from `[kubernetes] jwks_file` or `jwks_url`) and the
//! claims a kube-apiserver writes (`iss`, `aud`, `exp`/`nbf`/`iat`, `sub`
//! `system:serviceaccount:NS:NAME` and the `kubernetes.io` claim, which must
//! agree), then maps the service account to a workload through
//! `[[kubernetes.bindings]]`. Whether that binding names the workload a
//! sidecar asks for is the issuer's decision ([`crate::issuer`]): a valid
//! token of an unbound service account is authenticated, and forbidden.
//!
//! Rules, each a refusal:
//! - the algorithm comes from the trusted key, never from the token: an RSA
//!   key verifies RS256 only, a P-256 key ES256 only; `none`, HMAC and
//!   everything else are refused, and a JWKS entry of any other kind (`oct`,
//!   OKP, P-384, RSA under 2048 bits) never becomes a key;
//! - nothing named in the token (`jku`, `x5u`, `jwk`) is fetched or used;
//!   `kid` is only a map key;
//! - `crit` is refused, `typ` is absent or `JWT`, the token is at most 8 KiB
//!   and lives at most [`MAX_TOKEN_LIFETIME`];
//! - claims are typed (a duplicate claim is malformed), times are checked
//!   against `now` with [`LEEWAY_SECS`].
//!
//! A token is never logged; a refusal's reason is (at debug).

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use authproxy_core::shared::Shared;
use authproxy_core::{Environment, WorkloadId};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::{KubernetesBinding, KubernetesConfig, KubernetesJwks};

/// The audience a projected token must carry (`serviceAccountToken.audience`).
pub const AUDIENCE: &str = "authproxy";
/// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY_SECS: u64 = 30;
/// Longest lifetime (`exp - iat`) accepted. The kubelet's projected tokens
/// live 1 h by default; a token meant to live for days is not one of them,
/// and would stay useful to whoever copied it for as long.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Largest token accepted, in bytes (a real one is about 1 KiB).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The cluster keys are fetched again when they are older than this (in the
/// background: requests keep using the keys they have).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(300);
/// Fetches caused by requests (a `kid` not in the keys, a due refresh)
/// happen at most this often, however many tokens are presented.
pub const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// One fetch of `jwks_url` gives up after this long.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document accepted.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;
/// Most cluster keys trusted at once (a cluster publishes one or two).
pub const MAX_CLUSTER_KEYS: usize = 64;

const SUBJECT_PREFIX: &str = "system:serviceaccount:";

/// Why a service-account token was refused. Every variant answers
/// `401 invalid_token`; the reason is logged at debug, never the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidServiceAccountToken {
    /// Sidecars may present one, but `[kubernetes]` is not configured.
    #[error("a service-account token was presented but `[kubernetes]` is not configured")]
    NotConfigured,
    /// Over [`MAX_TOKEN_BYTES`].
    #[error("service-account token exceeds {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    /// Not a compact JWS with a JSON header and the claims of a projected token.
    #[error("service-account token is malformed or lacks a claim of a projected token")]
    Malformed,
    /// `typ` present and not `JWT`.
    #[error("service-account token has the wrong typ")]
    WrongType,
    /// `crit` present: no extension is understood.
    #[error("service-account token has a critical header extension")]
    CriticalHeader,
    /// No `kid` in the header.
    #[error("service-account token has no kid")]
    NoKeyId,
    /// The `kid` names no key of the cluster JWKS (after a refetch).
    #[error("service-account token is signed by a key not in the cluster JWKS")]
    UnknownKey,
    /// `alg` is not the one algorithm of the key it names.
    #[error("service-account token algorithm does not match its key")]
    AlgorithmNotAllowed,
    /// The signature does not verify with the cluster key.
    #[error("service-account token signature is invalid")]
    BadSignature,
    /// `iss` is not `[kubernetes] issuer`.
    #[error("service-account token is from another issuer")]
    WrongIssuer,
    /// `aud` does not contain [`AUDIENCE`].
    #[error("service-account token is for another audience")]
    WrongAudience,
    /// Past `exp` (plus leeway).
    #[error("service-account token expired")]
    Expired,
    /// Before `nbf` (minus leeway).
    #[error("service-account token is not yet valid")]
    NotYetValid,
    /// `iat` in the future (beyond leeway).
    #[error("service-account token is issued in the future")]
    IssuedInFuture,
    /// `exp - iat` over [`MAX_TOKEN_LIFETIME`].
    #[error("service-account token lifetime exceeds the maximum")]
    TooLongLived,
    /// `sub` is not `system:serviceaccount:NAMESPACE:NAME` with valid names.
    #[error("service-account token `sub` is not a service account")]
    BadSubject,
    /// The `kubernetes.io` claim names another namespace or service account than `sub`.
    #[error("service-account token `kubernetes.io` claim disagrees with `sub`")]
    SubjectMismatch,
}

/// Why the cluster keys could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterJwksError {
    /// Reading the file or fetching the URL failed, or the document is not a JWKS.
    #[error("{source_name}: {message}")]
    Fetch {
        /// The file or URL.
        source_name: String,
        /// What went wrong.
        message: String,
    },
    /// The document holds no key a service-account token may be verified with.
    #[error(
        "{0}: no usable cluster signing key (kty RSA of at least 2048 bits for RS256, \
         or kty EC crv P-256 for ES256; with a kid)"
    )]
    NoUsableKeys(String),
}

/// A Kubernetes service account, as a verified token names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The pod the token is bound to, if any (for the log).
    pub pod: Option<String>,
}

impl fmt::Display for ServiceAccount {
    /// `namespace:name`, as `[[kubernetes.bindings]] service_account` writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.namespace, self.name)
    }
}

/// A verified service account and the binding it has, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesCaller {
    /// Who the token is for.
    pub account: ServiceAccount,
    /// The workload and environment its binding names; `None` when no
    /// binding names it (authenticated, but bound to nothing).
    pub binding: Option<KubernetesBinding>,
}

impl KubernetesCaller {
    /// True when its binding is exactly `workload` in `environment`.
    pub fn is_bound_to(&self, workload: &WorkloadId, environment: &Environment) -> bool {
        self.binding
            .as_ref()
            .is_some_and(|b| b.workload == *workload && b.environment == *environment)
    }
}

/// Verifies service-account tokens and maps them to bindings.
#[derive(Debug)]
pub struct KubernetesVerifier {
    issuer: String,
    bindings: Vec<KubernetesBinding>,
    keys: Arc<ClusterKeys>,
}

impl KubernetesVerifier {
    /// A verifier for `config`; its keys are not loaded yet (see
    /// [`KubernetesVerifier::load_keys`]).
    pub fn new(config: &KubernetesConfig) -> Result<Self, ClusterJwksError> {
        Ok(Self {
            issuer: config.issuer.clone(),
            bindings: config.bindings.clone(),
            keys: Arc::new(ClusterKeys::new(&config.jwks)?),
        })
    }

    /// Loads the cluster keys now (at start).
    pub async fn load_keys(&self) -> Result<(), ClusterJwksError> {
        self.keys.load().await
    }

    /// The cluster keys.
    pub fn keys(&self) -> &Arc<ClusterKeys> {
        &self.keys
    }

    /// Verifies `token` at `now` and looks up the binding of its service account.
    pub async fn authenticate(
        &self,
        token: &str,
        now: u64,
    ) -> Result<KubernetesCaller, InvalidServiceAccountToken> {
        let account = self.verify(token, now).await?;
        let binding = self
            .bindings
            .iter()
            .find(|b| b.namespace == account.namespace && b.service_account == account.name)
            .cloned();
        Ok(KubernetesCaller { account, binding })
    }

    /// Verifies `token` at `now`: signature with a cluster key, issuer,
    /// audience, times, subject.
    pub async fn verify(
        &self,
        token: &str,
        now: u64,
    ) -> Result<ServiceAccount, InvalidServiceAccountToken> {
        use InvalidServiceAccountToken as E;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(E::TooLarge);
        }
        // `alg` values outside the library's list (`none` among them) fail here.
        let header = jsonwebtoken::decode_header(token).map_err(|_| E::Malformed)?;
        if header
            .typ
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("JWT"))
        {
            return Err(E::WrongType);
        }
        if header.crit.is_some() {
            return Err(E::CriticalHeader);
        }
        let kid = header.kid.as_deref().ok_or(E::NoKeyId)?;
        let key = self.keys.key(kid).await.ok_or(E::UnknownKey)?;
        // The key decides the algorithm; the header only has to agree.
        if header.alg != key.alg {
            return Err(E::AlgorithmNotAllowed);
        }
        let mut validation = Validation::new(key.alg);
        // Time, audience and issuer are checked below, with our clock.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => E::BadSignature,
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => E::AlgorithmNotAllowed,
                _ => E::Malformed,
            })?;
        if claims.iss != self.issuer {
            return Err(E::WrongIssuer);
        }
        if !claims.aud.contains(AUDIENCE) {
            return Err(E::WrongAudience);
        }
        if now >= claims.exp.saturating_add(LEEWAY_SECS) {
            return Err(E::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECS))
        {
            return Err(E::NotYetValid);
        }
        if claims.iat > now.saturating_add(LEEWAY_SECS) {
            return Err(E::IssuedInFuture);
        }
        if claims.exp.saturating_sub(claims.iat) > MAX_TOKEN_LIFETIME.as_secs() {
            return Err(E::TooLongLived);
        }
        let (namespace, name) = parse_subject(&claims.sub).ok_or(E::BadSubject)?;
        let k8s = &claims.kubernetes;
        if k8s.namespace != namespace || k8s.serviceaccount.name != name {
            return Err(E::SubjectMismatch);
        }
        Ok(ServiceAccount {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            pod: k8s.pod.as_ref().map(|p| p.name.clone()),
        })
    }
}

/// `system:serviceaccount:NAMESPACE:NAME` → (namespace, name), both valid
/// Kubernetes names.
fn parse_subject(sub: &str) -> Option<(&str, &str)> {
    let (namespace, name) = sub.strip_prefix(SUBJECT_PREFIX)?.split_once(':')?;
    (crate::config::is_dns_label(namespace) && crate::config::is_dns_subdomain(name))
        .then_some((namespace, name))
}

/// True when `bearer` has the shape of a compact JWS (three base64url
/// segments; the last may be empty, as in an `alg: none` token, which the
/// verifier then refuses with its reason).
pub fn looks_like_jwt(bearer: &str) -> bool {
    let b64url = |s: &str| {
        s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    };
    let mut parts = bearer.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => {
            !h.is_empty() && !p.is_empty() && b64url(h) && b64url(p) && b64url(s)
        }
        _ => false,
    }
}

/// The claims of a projected service-account token that are checked. Other
/// claims (`jti`, `kubernetes.io.node`, …) are ignored; a duplicate of any
/// of these is malformed (serde refuses duplicate fields).
#[derive(Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Audience,
    exp: u64,
    iat: u64,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesClaim,
}

/// `aud`: one string or an array of them (RFC 7519 §4.1.3; Kubernetes
/// writes an array).
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, audience: &str) -> bool {
        match self {
            Self::One(a) => a == audience,
            Self::Many(all) => all.iter().any(|a| a == audience),
        }
    }
}

/// The `kubernetes.io` claim of a projected token.
#[derive(Deserialize)]
struct KubernetesClaim {
    namespace: String,
    serviceaccount: ObjectRef,
    #[serde(default)]
    pod: Option<ObjectRef>,
}

#[derive(Deserialize)]
struct ObjectRef {
    name: String,
}

/// One trusted cluster key: its algorithm is decided here, from the key.
#[derive(Clone)]
pub(crate) struct ClusterKey {
    alg: Algorithm,
    decoding: DecodingKey,
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// The keys held, and when they were fetched (`None`: never).
#[derive(Debug, Default)]
struct Snapshot {
    keys: HashMap<String, ClusterKey>,
    fetched_at: Option<Instant>,
}

impl Snapshot {
    fn is_due(&self) -> bool {
        self.fetched_at
            .is_none_or(|t| t.elapsed() >= REFRESH_INTERVAL)
    }
}

/// Where the cluster keys come from.
#[derive(Debug)]
enum Source {
    File(PathBuf),
    Url {
        url: String,
        client: reqwest::Client,
    },
}

impl Source {
    fn name(&self) -> String {
        match self {
            Self::File(p) => p.display().to_string(),
            Self::Url { url, .. } => url.clone(),
        }
    }
}

/// What fetches share, under the single-flight lock.
#[derive(Debug, Default)]
struct FetchState {
    /// When a request last caused a fetch (unknown `kid` or due refresh).
    last_on_demand: Option<Instant>,
}

/// The cluster's service-account signing keys: a JWKS file or URL, read at
/// start, refreshed every [`REFRESH_INTERVAL`] in the background, and
/// refetched when a token names an unknown `kid` (single-flight, at most
/// once per [`MIN_REFETCH_INTERVAL`]).
///
/// The configured source is authoritative: a successful fetch replaces the
/// keys, so a key the cluster withdrew stops bootstrapping at once. A failed
/// fetch (or one without a usable key) keeps the keys held.
#[derive(Debug)]
pub struct ClusterKeys {
    source: Source,
    keys: Shared<Snapshot>,
    fetches: Arc<tokio::sync::Mutex<FetchState>>,
}

impl ClusterKeys {
    /// Keys from `source`, none loaded yet.
    pub fn new(source: &KubernetesJwks) -> Result<Self, ClusterJwksError> {
        let source = match source {
            KubernetesJwks::File(path) => Source::File(path.clone()),
            KubernetesJwks::Url(url) => Source::Url {
                url: url.clone(),
                client: reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    // The trust anchor is the URL configured: a redirect
                    // elsewhere is not followed, nor a proxy taken.
                    .redirect(reqwest::redirect::Policy::none())
                    .no_proxy()
                    .build()
                    .map_err(|e| ClusterJwksError::Fetch {
                        source_name: url.clone(),
                        message: e.to_string(),
                    })?,
            },
        };
        Ok(Self {
            source,
            keys: Shared::new(Snapshot::default()),
            fetches: Arc::new(tokio::sync::Mutex::new(FetchState::default())),
        })
    }

    /// True when the source is `jwks_file`.
    pub fn is_file(&self) -> bool {
        matches!(self.source, Source::File(_))
    }

    /// The kids of the keys held, sorted.
    pub fn kids(&self) -> Vec<String> {
        let mut kids: Vec<_> = self.keys.load().keys.keys().cloned().collect();
        kids.sort();
        kids
    }

    /// Fetches the keys now and holds them; on failure keeps what it has.
    /// Does not count against the on-demand interval.
    pub async fn load(&self) -> Result<(), ClusterJwksError> {
        let _state = self.fetches.lock().await;
        self.fetch_and_store().await
    }

    /// The key named `kid`: from the keys held, or after one refetch when
    /// it is unknown (rate-limited). Starts a background refresh when the
    /// keys are due.
    pub(crate) async fn key(self: &Arc<Self>, kid: &str) -> Option<ClusterKey> {
        let snapshot = self.keys.load();
        if let Some(key) = snapshot.keys.get(kid) {
            if snapshot.is_due() {
                self.refresh_in_background();
            }
            return Some(key.clone());
        }
        self.refetch_for_unknown_kid(&snapshot).await;
        self.keys.load().keys.get(kid).cloned()
    }

    /// One fetch for every unknown `kid` presented meanwhile, and none when
    /// the last on-demand fetch is more recent than [`MIN_REFETCH_INTERVAL`]:
    /// a flood of forged kids cannot become a fetch storm.
    async fn refetch_for_unknown_kid(&self, seen: &Arc<Snapshot>) {
        let mut state = self.fetches.lock().await;
        if !Arc::ptr_eq(seen, &self.keys.load()) {
            return; // another request fetched while this one waited
        }
        if !on_demand_allowed(&mut state) {
            return;
        }
        if let Err(error) = self.fetch_and_store().await {
            tracing::warn!(%error, "cluster JWKS refetch failed; keeping the current keys");
        }
    }

    fn refresh_in_background(self: &Arc<Self>) {
        // Only one refresh at a time; if a fetch is under way, it is enough.
        let Ok(mut state) = Arc::clone(&self.fetches).try_lock_owned() else {
            return;
        };
        if !on_demand_allowed(&mut state) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(error) = this.fetch_and_store().await {
                tracing::warn!(%error, "cluster JWKS refresh failed; keeping the current keys");
            }
            drop(state);
        });
    }

    async fn fetch_and_store(&self) -> Result<(), ClusterJwksError> {
        let keys = self.fetch().await?;
        let before = self.kids();
        let snapshot = Snapshot {
            keys,
            fetched_at: Some(Instant::now()),
        };
        let mut after: Vec<_> = snapshot.keys.keys().cloned().collect();
        after.sort();
        if before != after {
            tracing::info!(source = %self.source.name(), kids = ?after, "cluster keys loaded");
        }
        self.keys.store(snapshot);
        Ok(())
    }

    async fn fetch(&self) -> Result<HashMap<String, ClusterKey>, ClusterJwksError> {
        let name = self.source.name();
        let fetch_err = |message: String| ClusterJwksError::Fetch {
            source_name: name.clone(),
            message,
        };
        let bytes = match &self.source {
            Source::File(path) => read_file_capped(path)
                .await
                .map_err(|e| fetch_err(e.to_string()))?,
            Source::Url { url, client } => {
                let mut res = client
                    .get(url)
                    .header(reqwest::header::ACCEPT, "application/json")
                    .send()
                    .await
                    .map_err(|e| fetch_err(e.to_string()))?;
                if !res.status().is_success() {
                    return Err(fetch_err(format!("HTTP {}", res.status())));
                }
                if res
                    .content_length()
                    .is_some_and(|l| l > MAX_JWKS_BYTES as u64)
                {
                    return Err(fetch_err(too_large()));
                }
                // The length may be absent or a lie: stop at the cap.
                let mut bytes = Vec::new();
                while let Some(chunk) = res.chunk().await.map_err(|e| fetch_err(e.to_string()))? {
                    if bytes.len() + chunk.len() > MAX_JWKS_BYTES {
                        return Err(fetch_err(too_large()));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                bytes
            }
        };
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(fetch_err(too_large()));
        }
        let keys = parse_cluster_jwks(&bytes).map_err(fetch_err)?;
        if keys.is_empty() {
            return Err(ClusterJwksError::NoUsableKeys(name));
        }
        Ok(keys)
    }
}

/// Records an on-demand fetch unless one happened within
/// [`MIN_REFETCH_INTERVAL`].
fn on_demand_allowed(state: &mut FetchState) -> bool {
    if state
        .last_on_demand
        .is_some_and(|t| t.elapsed() < MIN_REFETCH_INTERVAL)
    {
        return false;
    }
    state.last_on_demand = Some(Instant::now());
    true
}

fn too_large() -> String {
    format!(
        "JWKS document too large (over {} KiB)",
        MAX_JWKS_BYTES / 1024
    )
}

/// Reads at most one byte more than [`MAX_JWKS_BYTES`]: enough to refuse a
/// larger file, and a file without end cannot exhaust memory.
async fn read_file_capped(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let file = tokio::fs::File::open(path).await?;
    let mut bytes = Vec::new();
    file.take(MAX_JWKS_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .await?;
    Ok(bytes)
}

/// One JWKS entry, as far as it is read. Each entry is parsed on its own,
/// so that an entry this version does not know skips only itself.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    alg: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

/// The usable keys of a JWKS document, by `kid`; an error only when it is
/// not a JWKS at all. A `kid` listed twice is dropped: which key it means
/// would be a guess.
fn parse_cluster_jwks(bytes: &[u8]) -> Result<HashMap<String, ClusterKey>, String> {
    let set: RawJwks =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = HashMap::new();
    let mut ambiguous = Vec::new();
    for entry in set.keys {
        let Ok(jwk) = serde_json::from_value::<RawJwk>(entry) else {
            continue;
        };
        let Some((kid, key)) = usable(jwk) else {
            continue;
        };
        if keys.contains_key(&kid) {
            ambiguous.push(kid);
            continue;
        }
        if keys.len() >= MAX_CLUSTER_KEYS {
            tracing::warn!(
                limit = MAX_CLUSTER_KEYS,
                "too many cluster keys; the rest ignored"
            );
            break;
        }
        keys.insert(kid, key);
    }
    for kid in ambiguous {
        tracing::warn!(%kid, "the cluster JWKS lists this kid twice; not trusted");
        keys.remove(&kid);
    }
    Ok(keys)
}

/// The key of one JWKS entry, if it may verify service-account tokens:
/// RSA (at least 2048 bits) for RS256, or EC P-256 for ES256; a `kid`; `use`
/// absent or `sig`; `alg` absent or the one its type allows. Built from its
/// public components only: no other key type ever becomes a key (an `oct`
/// entry would become an HMAC secret).
fn usable(jwk: RawJwk) -> Option<(String, ClusterKey)> {
    let kid = jwk.kid.filter(|k| !k.is_empty())?;
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let decoded_len = |s: &str| URL_SAFE_NO_PAD.decode(s).ok().map(|b| b.len());
    let (alg, decoding) = match jwk.kty.as_str() {
        "RSA" => {
            if jwk.alg.as_deref().is_some_and(|a| a != "RS256") {
                return None;
            }
            let (n, e) = (jwk.n?, jwk.e?);
            let modulus = URL_SAFE_NO_PAD.decode(&n).ok()?;
            let bits = modulus
                .iter()
                .position(|b| *b != 0)
                .map_or(0, |first| (modulus.len() - first) * 8);
            if bits < 2048 || decoded_len(&e)? == 0 {
                return None;
            }
            (
                Algorithm::RS256,
                DecodingKey::from_rsa_components(&n, &e).ok()?,
            )
        }
        "EC" => {
            if jwk.crv.as_deref() != Some("P-256")
                || jwk.alg.as_deref().is_some_and(|a| a != "ES256")
            {
                return None;
            }
            let (x, y) = (jwk.x?, jwk.y?);
            if decoded_len(&x)? != 32 || decoded_len(&y)? != 32 {
                return None;
            }
            (
                Algorithm::ES256,
                DecodingKey::from_ec_components(&x, &y).ok()?,
            )
        }
        _ => return None,
    };
    Some((kid, ClusterKey { alg, decoding }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rsa_n(bytes: usize) -> String {
        let mut n = vec![0xC5u8; bytes];
        n[bytes - 1] = 0x01;
        URL_SAFE_NO_PAD.encode(n)
    }

    fn p256() -> (String, String) {
        // A valid P-256 point is checked at verification; here only shapes.
        (
            URL_SAFE_NO_PAD.encode([7u8; 32]),
            URL_SAFE_NO_PAD.encode([9u8; 32]),
        )
    }

    fn kids(doc: serde_json::Value) -> Vec<(String, Algorithm)> {
        let mut out: Vec<_> = parse_cluster_jwks(doc.to_string().as_bytes())
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.alg))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn only_rsa_2048_and_p256_signature_keys_with_a_kid_are_usable() {
        let (x, y) = p256();
        let doc = json!({"keys": [
            {"kty": "RSA", "kid": "rsa", "use": "sig", "alg": "RS256", "n": rsa_n(256), "e": "AQAB"},
            {"kty": "RSA", "kid": "rsa-no-alg", "n": rsa_n(512), "e": "AQAB"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": x, "y": y},
            {"kty": "RSA", "kid": "small", "n": rsa_n(128), "e": "AQAB"},
            {"kty": "RSA", "kid": "leading-zeros", "n": URL_SAFE_NO_PAD.encode([vec![0u8; 200], vec![1u8; 100]].concat()), "e": "AQAB"},
            {"kty": "RSA", "kid": "ps256", "alg": "PS256", "n": rsa_n(256), "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": rsa_n(256), "e": "AQAB"},
            {"kty": "RSA", "n": rsa_n(256), "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": x},
            {"kty": "EC", "kid": "p384", "crv": "P-384", "x": x, "y": y},
            {"kty": "EC", "kid": "es384", "crv": "P-256", "alg": "ES384", "x": x, "y": y},
            {"kty": "RSA", "kid": "hs-alg", "alg": "HS256", "n": rsa_n(256), "e": "AQAB"},
            {"kty": "RSA", "kid": 7},
            "not an object",
        ]});
        assert_eq!(
            kids(doc),
            [
                ("ec".to_owned(), Algorithm::ES256),
                ("rsa".to_owned(), Algorithm::RS256),
                ("rsa-no-alg".to_owned(), Algorithm::RS256),
            ]
        );
    }

    #[test]
    fn a_kid_listed_twice_is_not_trusted() {
        let doc = json!({"keys": [
            {"kty": "RSA", "kid": "a", "n": rsa_n(256), "e": "AQAB"},
            {"kty": "RSA", "kid": "a", "n": rsa_n(300), "e": "AQAB"},
            {"kty": "RSA", "kid": "b", "n": rsa_n(256), "e": "AQAB"},
        ]});
        assert_eq!(kids(doc), [("b".to_owned(), Algorithm::RS256)]);
    }

    #[test]
    fn a_document_that_is_not_a_jwks_is_an_error() {
        for bad in ["", "[]", "{}", "{\"keys\": 1}", "<html>"] {
            assert!(parse_cluster_jwks(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(parse_cluster_jwks(b"{\"keys\": []}").unwrap().is_empty());
    }

    #[test]
    fn subjects_are_service_accounts_with_valid_names() {
        assert_eq!(
            parse_subject("system:serviceaccount:main:web"),
            Some(("main", "web"))
        );
        assert_eq!(
            parse_subject("system:serviceaccount:kube-system:a.b-c"),
            Some(("kube-system", "a.b-c"))
        );
        for bad in [
            "system:serviceaccount:main",
            "system:serviceaccount:main:web:x",
            "system:serviceaccount::web",
            "system:serviceaccount:Main:web",
            "system:serviceaccounts:main",
            "system:node:main:web",
            "main:web",
            "",
        ] {
            assert_eq!(parse_subject(bad), None, "{bad}");
        }
    }

    /// Bytes a hostile JWKS server writes at most: far beyond the cap, so
    /// that a client that buffers shows it.
    const HOSTILE_BODY_LIMIT: usize = 64 * 1024 * 1024;

    /// A raw HTTP/1.1 server on 127.0.0.1:0 running `answer` on each
    /// connection once its request head is read.
    async fn raw_server<F, Fut>(answer: F) -> String
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/openid/v1/jwks", listener.local_addr().unwrap());
        let answer = Arc::new(answer);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let answer = Arc::clone(&answer);
                tokio::spawn(async move {
                    let mut head = [0u8; 4096];
                    let _ = conn.read(&mut head).await;
                    answer(conn).await;
                });
            }
        });
        url
    }

    fn url_keys(url: &str) -> ClusterKeys {
        ClusterKeys::new(&KubernetesJwks::Url(url.to_owned())).unwrap()
    }

    #[tokio::test]
    async fn an_endless_jwks_url_body_is_refused_at_the_cap_without_buffering_it() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::AsyncWriteExt as _;
        let written = Arc::new(AtomicUsize::new(0));
        let w = Arc::clone(&written);
        let url = raw_server(move |mut conn| {
            let w = Arc::clone(&w);
            async move {
                let start = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                             transfer-encoding: chunked\r\n\r\n";
                if conn.write_all(start.as_bytes()).await.is_err() {
                    return;
                }
                // `{"keys":[` then whitespace for ever: valid JSON so far.
                let mut chunk = b"9\r\n{\"keys\":[\r\n".to_vec();
                let filler = vec![b' '; 16 * 1024];
                loop {
                    if conn.write_all(&chunk).await.is_err() {
                        return;
                    }
                    if w.fetch_add(chunk.len(), Ordering::SeqCst) >= HOSTILE_BODY_LIMIT {
                        break;
                    }
                    chunk = format!("{:x}\r\n", filler.len()).into_bytes();
                    chunk.extend_from_slice(&filler);
                    chunk.extend_from_slice(b"\r\n");
                }
                std::future::pending::<()>().await;
            }
        })
        .await;
        let keys = url_keys(&url);
        let e = keys.load().await.unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
        let out = written.load(Ordering::SeqCst);
        assert!(out < HOSTILE_BODY_LIMIT, "the client read {out} bytes");
        assert!(keys.kids().is_empty());
    }

    #[tokio::test]
    async fn a_silent_jwks_url_gives_up_at_the_fetch_timeout() {
        // Holds the connection open and never answers.
        let url = raw_server(|conn| async move {
            let _held = conn;
            std::future::pending::<()>().await;
        })
        .await;
        let started = Instant::now();
        let e = url_keys(&url).load().await.unwrap_err();
        let took = started.elapsed();
        assert!(
            took >= FETCH_TIMEOUT && took < FETCH_TIMEOUT + Duration::from_secs(5),
            "{took:?}: {e}"
        );
    }

    #[tokio::test]
    async fn a_redirecting_jwks_url_is_not_followed() {
        use tokio::io::AsyncWriteExt as _;
        let target = raw_server(|mut conn| async move {
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"keys\":[]}")
                .await;
        })
        .await;
        let redirect =
            format!("HTTP/1.1 302 Found\r\nlocation: {target}\r\ncontent-length: 0\r\n\r\n");
        let url = raw_server(move |mut conn| {
            let redirect = redirect.clone();
            async move {
                let _ = conn.write_all(redirect.as_bytes()).await;
            }
        })
        .await;
        let e = url_keys(&url).load().await.unwrap_err();
        assert!(e.to_string().contains("HTTP 302"), "{e}");
    }

    #[tokio::test]
    async fn a_jwks_file_that_never_ends_is_refused_at_the_cap() {
        let keys = ClusterKeys::new(&KubernetesJwks::File("/dev/zero".into())).unwrap();
        let e = tokio::time::timeout(Duration::from_secs(30), keys.load())
            .await
            .expect("the read must end")
            .unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
    }

    #[test]
    fn jwt_shapes_are_recognised() {
        assert!(looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(
            looks_like_jwt("eyJh.eyJz."),
            "alg none: refused later, with its reason"
        );
        for not in [
            "ap_wc_abc",
            "eyJh.eyJz",
            "eyJh..c2ln",
            ".eyJz.c2ln",
            "a.b.c.d",
            "eyJh.eyJz.c2ln=",
            "eyJh.ey Jz.c2ln",
            "",
        ] {
            assert!(!looks_like_jwt(not), "{not}");
        }
    }
}
