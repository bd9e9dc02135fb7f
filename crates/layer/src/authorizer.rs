//! The [`Authorizer`]: one upstream's verification rules, trusted root
//! keys and caches, and its builder.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Weak};

use authproxy_core::pat;
use std::time::Duration;

use authproxy_core::authorization::AuthorizationError;
use authproxy_core::keys::Jwks;
use authproxy_core::verify::{InvalidToken, Verifier};

use crate::principal::Principal;
use authproxy_core::workload::Environment;

use crate::metrics::LayerMetrics;
use crate::require::RequireScopeLayer;
use crate::requirement::{Requirement, RequirementError};
use crate::revocations::{FeedOptions, Revocations, poll_loop};
use crate::trust::{JwksError, KeySource, KeyStore, StoreOptions};

/// Default clock-skew tolerance.
pub(crate) const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Default period between JWKS refreshes.
pub(crate) const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(300);
/// Default minimum time between two fetches caused by unknown `kid`s.
pub(crate) const DEFAULT_MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// Default maximum age of root keys that could not be refreshed.
pub(crate) const DEFAULT_MAX_STALE: Duration = Duration::from_secs(24 * 3600);
/// Default time the build keeps trying to load a JWKS file or URL.
pub(crate) const DEFAULT_INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Default period between two reads of the revocation feed.
pub(crate) const DEFAULT_REVOCATION_POLL: Duration = Duration::from_secs(1);
/// Default age past which an unreadable feed makes PATs refused.
pub(crate) const DEFAULT_REVOCATIONS_MAX_STALE: Duration = Duration::from_secs(30);
/// Default bound of each verification cache.
pub(crate) const DEFAULT_CACHE_CAPACITY: usize = 10_000;

/// Why an [`Authorizer`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A required setting was not given.
    #[error("authorizer: `{0}` is required")]
    Missing(&'static str),
    /// The environment name is invalid.
    #[error("authorizer: invalid environment")]
    Environment(#[source] AuthorizationError),
    /// The keys could not be loaded.
    #[error("authorizer: {0}")]
    Keys(#[from] JwksError),
    /// The pinned root thumbprints are empty or malformed.
    #[error("authorizer: pinned_roots: {0}")]
    PinnedRoots(String),
    /// The issuer or revocation feed URL is not an http(s) URL.
    #[error("authorizer: `{0}` is not an http(s) URL")]
    Url(String),
    /// The HTTP client for the revocation feed could not be made.
    #[error("authorizer: revocation feed client: {0}")]
    FeedClient(String),
}

/// Verifies tokens for one upstream API; hands out per-route layers with
/// [`Authorizer::require`]. Cheap to clone.
#[derive(Clone)]
pub struct Authorizer {
    inner: Arc<Inner>,
}

struct Inner {
    verifier: Verifier,
    keys: KeyStore,
    max_stale: Duration,
    metrics: Option<LayerMetrics>,
    revocations: Option<Arc<Revocations>>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("verifier", &self.inner.verifier)
            .finish_non_exhaustive()
    }
}

/// Builder of an [`Authorizer`].
#[derive(Debug)]
pub struct AuthorizerBuilder {
    source: Option<KeySource>,
    audience: Option<String>,
    environment: Option<String>,
    leeway: Duration,
    refresh_interval: Duration,
    min_refetch_interval: Duration,
    cache_capacity: usize,
    max_stale: Duration,
    metrics: Option<LayerMetrics>,
    pinned_roots: Option<Vec<String>>,
    initial_fetch_timeout: Duration,
    /// Revocation feeds (tried in order) and where to report PAT usage.
    feed: Vec<(String, Option<String>)>,
    revocation_poll: Duration,
    revocations_max_stale: Duration,
}

impl AuthorizerBuilder {
    /// Trust the issuer at `url` (e.g. `http://issuer:8400`): its root keys
    /// (`<url>/.well-known/jwks.json`, as [`jwks_url`](Self::jwks_url)) and
    /// its revocation feed (`<url>/v1/revocations`, as
    /// [`revocation_feed`](Self::revocation_feed)), and report the personal
    /// access tokens seen to `<url>/v1/pats/used` at most once a minute (the
    /// issuer's "last used").
    ///
    /// Call it once per issuer node to list several (DESIGN §8): their
    /// JWKS are fetched and merged (see [`jwks_url`](Self::jwks_url)), and
    /// the feed is read from the first node that answers — the nodes share
    /// one store, so its cursor is the same on each.
    pub fn issuer(mut self, url: impl Into<String>) -> Self {
        let url: String = url.into();
        let base = url.trim_end_matches('/');
        self = self.jwks_url(format!("{base}/.well-known/jwks.json"));
        self.feed.push((
            format!("{base}/v1/revocations"),
            Some(format!("{base}/v1/pats/used")),
        ));
        self
    }

    /// Read revoked PATs and grants from this feed (the issuer's
    /// `/v1/revocations`), every [`revocation_poll_interval`](Self::revocation_poll_interval).
    /// Without a feed, personal access tokens and tokens exchanged from
    /// them are refused: nothing could revoke them before they expire.
    /// Call it again to list more feeds of the same store, tried in order.
    pub fn revocation_feed(mut self, url: impl Into<String>) -> Self {
        self.feed.push((url.into(), None));
        self
    }

    /// Period of revocation feed reads (default 1 s): a revoked PAT or
    /// grant is refused within about this long.
    pub fn revocation_poll_interval(mut self, every: Duration) -> Self {
        self.revocation_poll = every;
        self
    }

    /// How long the revocation feed may be unreadable before PATs (and
    /// tokens exchanged from them) are refused (default 30 s). Workload
    /// tokens keep working whatever the feed does.
    pub fn revocations_max_stale(mut self, age: Duration) -> Self {
        self.revocations_max_stale = age;
        self
    }

    /// Records `authproxy_layer_requests_total{result}` (`ok`, `missing`,
    /// `invalid_request`, `invalid_token`, `insufficient_scope`) and
    /// `authproxy_layer_verification_duration_seconds` in the upstream's
    /// own Prometheus registry.
    #[cfg(feature = "prometheus")]
    pub fn metrics(mut self, registry: &mut prometheus_client::registry::Registry) -> Self {
        self.metrics = Some(LayerMetrics::register(registry));
        self
    }

    /// Trust the root keys served at this JWKS URL (fetched at build,
    /// refreshed periodically and on unknown `kid`; at most 64 KiB).
    ///
    /// A fetch adds new keys at once, but a key already trusted is dropped
    /// only after it has been missing from
    /// [`ROOT_KEY_DROP_AFTER_REFRESHES`](crate::ROOT_KEY_DROP_AFTER_REFRESHES)
    /// (3) consecutive scheduled refreshes: whoever answers at the URL for a
    /// moment cannot take the real roots away. Fetches caused by unknown
    /// `kid`s never drop a key.
    ///
    /// Call it again to add more URLs (several issuer nodes, several
    /// issuers): their keys are merged; a refresh some URLs of which fail
    /// keeps the keys it cannot see and drops nothing.
    pub fn jwks_url(mut self, url: impl Into<String>) -> Self {
        match &mut self.source {
            Some(KeySource::Urls(urls)) => urls.push(url.into()),
            _ => self.source = Some(KeySource::Urls(vec![url.into()])),
        }
        self
    }

    /// Trust the root keys in this JWKS file (re-read like a URL, with the
    /// same rule for dropping keys; at most 64 KiB).
    pub fn jwks_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.source = Some(KeySource::File(path.into()));
        self
    }

    /// Trust exactly these root keys (a JWKS document, e.g. a sidecar's
    /// `/.well-known/jwks.json` read once).
    pub fn keys(mut self, set: Jwks) -> Self {
        self.source = Some(KeySource::Static(set));
        self
    }

    /// Trust only the root keys with these RFC 7638 SHA-256 thumbprints
    /// (base64url, 43 characters — the `kid` authproxy publishes for each
    /// root), whatever the JWKS says.
    ///
    /// The JWKS then only tells which pinned roots are live: a key it adds
    /// is never trusted unless pinned, so whoever serves it cannot sign
    /// grants with a root of their own. A JWKS holding none of the pinned
    /// roots fails [`build`](Self::build) (naming the thumbprints it holds)
    /// and, later, counts as a failed refresh. An empty set or a string that
    /// is not a thumbprint fails the build too.
    pub fn pinned_roots(
        mut self,
        thumbprints: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.pinned_roots = Some(thumbprints.into_iter().map(Into::into).collect());
        self
    }

    /// This API's identifier; tokens must carry it as `aud`.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// The environment this API serves; grants must name it.
    pub fn environment(mut self, environment: impl Into<String>) -> Self {
        self.environment = Some(environment.into());
        self
    }

    /// Clock-skew tolerance for `exp`, `nbf` and `iat` (default 30 s).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Period of JWKS refreshes (default 5 min). A root key removed from the
    /// JWKS stops being trusted after
    /// [`ROOT_KEY_DROP_AFTER_REFRESHES`](crate::ROOT_KEY_DROP_AFTER_REFRESHES)
    /// refreshes (15 min by default). Zero disables the refresh: new keys
    /// still arrive on unknown `kid`s, but no key is ever dropped until the
    /// upstream restarts.
    pub fn refresh_interval(mut self, every: Duration) -> Self {
        self.refresh_interval = every;
        self
    }

    /// Minimum time between fetches triggered by unknown `kid`s (default 10 s).
    pub fn min_refetch_interval(mut self, every: Duration) -> Self {
        self.min_refetch_interval = every;
        self
    }

    /// How long keys from a file or URL stay trusted when they cannot be
    /// refreshed (default 24 h). Past it every token is refused (fail
    /// closed) until a fetch succeeds again.
    pub fn max_stale(mut self, age: Duration) -> Self {
        self.max_stale = age;
        self
    }

    /// How long [`build`](Self::build) keeps trying to load a JWKS file or
    /// URL that is not there yet (default 30 s; zero: one attempt). An
    /// upstream often starts before the sidecar serving its JWKS: a failed
    /// first fetch is retried with backoff (100 ms, doubling up to 2 s);
    /// each attempt is cut at the deadline; past it the build fails with
    /// the last error, naming the source. Keys given with
    /// [`keys`](Self::keys) are not retried.
    pub fn initial_fetch_timeout(mut self, timeout: Duration) -> Self {
        self.initial_fetch_timeout = timeout;
        self
    }

    /// Bound of the grant and token caches (default 10 000 each; 0 disables).
    pub fn cache_capacity(mut self, entries: usize) -> Self {
        self.cache_capacity = entries;
        self
    }

    /// Loads the keys (waiting up to
    /// [`initial_fetch_timeout`](Self::initial_fetch_timeout) for a file or
    /// URL) and builds the authorizer. With a refreshable source, a
    /// background task refreshes the keys until the authorizer is dropped.
    pub async fn build(self) -> Result<Authorizer, BuildError> {
        let source = self
            .source
            .ok_or(BuildError::Missing("jwks_url, jwks_file or keys"))?;
        let audience = self.audience.ok_or(BuildError::Missing("audience"))?;
        let environment = self.environment.ok_or(BuildError::Missing("environment"))?;
        let environment = Environment::parse(&environment).map_err(BuildError::Environment)?;
        let pinned = self.pinned_roots.map(parse_pins).transpose()?;
        let options = StoreOptions {
            min_refetch_interval: self.min_refetch_interval,
            pinned,
            initial_fetch_timeout: self.initial_fetch_timeout,
        };
        let revocations = if self.feed.is_empty() {
            None
        } else {
            for u in self
                .feed
                .iter()
                .flat_map(|(f, u)| std::iter::once(f).chain(u))
            {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(BuildError::Url(u.clone()));
                }
            }
            let (urls, usage_urls) = self.feed.into_iter().unzip::<_, _, Vec<_>, Vec<_>>();
            let feed = Revocations::new(FeedOptions {
                urls,
                usage_urls: usage_urls.into_iter().flatten().collect(),
                poll_interval: self.revocation_poll,
                max_stale: self.revocations_max_stale,
            })
            .map_err(|e| BuildError::FeedClient(e.to_string()))?;
            Some(Arc::new(feed))
        };
        let keys = KeyStore::open(source, options).await?;
        if let Some(feed) = &revocations {
            // One read now, so PATs work from the start when the issuer is
            // up; if it is not, PATs wait for the poll loop (fail closed)
            // while workload tokens are served at once.
            if let Err(e) = feed.poll(authproxy_core::clock::now()).await {
                tracing::warn!(error = %e, "revocation feed unreadable at start; personal access tokens are refused until it is read");
            }
            tokio::spawn(poll_loop(Arc::downgrade(feed), self.revocation_poll));
        }
        let refreshable = keys.is_refreshable();
        let inner = Arc::new(Inner {
            verifier: Verifier::new(
                audience,
                environment,
                self.leeway.as_secs(),
                self.cache_capacity,
            ),
            keys,
            max_stale: self.max_stale,
            metrics: self.metrics,
            revocations,
        });
        if refreshable && !self.refresh_interval.is_zero() {
            tokio::spawn(refresh_loop(Arc::downgrade(&inner), self.refresh_interval));
        }
        Ok(Authorizer { inner })
    }
}

/// Checks pinned thumbprints: a typo must fail the build, not silently pin
/// nothing (which would refuse every token) or the wrong thing.
fn parse_pins(pins: Vec<String>) -> Result<HashSet<String>, BuildError> {
    if pins.is_empty() {
        return Err(BuildError::PinnedRoots(
            "no thumbprint given; pin at least one root".into(),
        ));
    }
    let base64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    pins.into_iter()
        .map(|p| {
            if p.len() == 43 && p.bytes().all(base64url) {
                Ok(p)
            } else {
                Err(BuildError::PinnedRoots(format!(
                    "`{p}` is not an RFC 7638 SHA-256 thumbprint (43 base64url characters)"
                )))
            }
        })
        .collect()
}

async fn refresh_loop(inner: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        inner.keys.refresh().await;
    }
}

impl Authorizer {
    /// Starts building an authorizer.
    pub fn builder() -> AuthorizerBuilder {
        AuthorizerBuilder {
            source: None,
            audience: None,
            environment: None,
            leeway: DEFAULT_LEEWAY,
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            min_refetch_interval: DEFAULT_MIN_REFETCH_INTERVAL,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            max_stale: DEFAULT_MAX_STALE,
            metrics: None,
            pinned_roots: None,
            initial_fetch_timeout: DEFAULT_INITIAL_FETCH_TIMEOUT,
            feed: Vec::new(),
            revocation_poll: DEFAULT_REVOCATION_POLL,
            revocations_max_stale: DEFAULT_REVOCATIONS_MAX_STALE,
        }
    }

    /// Verifies a bearer token at time `now` (unix seconds): a workload's
    /// access token, or a personal access token (`ap_pat_…`). On an unknown
    /// root `kid`, refetches the keys (rate-limited) and tries once more.
    /// Then asks the revocation feed, if there is one.
    pub async fn verify(&self, token: &str, now: u64) -> Result<Principal, InvalidToken> {
        let store = &self.inner.keys;
        if store.is_stale(now, self.inner.max_stale) {
            store.refetch_if_allowed().await;
            if store.is_stale(now, self.inner.max_stale) {
                store.log_stale(now);
                return Err(InvalidToken::KeysStale);
            }
        }
        let verifier = &self.inner.verifier;
        let principal = if pat::is_pat(token) {
            // Checked before any crypto: no feed, no PAT.
            self.current_feed(now)?;
            let keys = store.current();
            let verified = match verifier.verify_pat(token, &keys, now) {
                Err(InvalidToken::UnknownRootKey) if store.refetch_for_unknown_kid(&keys).await => {
                    verifier.verify_pat(token, &store.current(), now)
                }
                other => other,
            }?;
            Principal::pat(verified)
        } else {
            let keys = store.current();
            let verified = match verifier.verify(token, &keys, now) {
                Err(InvalidToken::UnknownRootKey) if store.refetch_for_unknown_kid(&keys).await => {
                    verifier.verify(token, &store.current(), now)
                }
                other => other,
            }?;
            Principal::token(verified)
        };
        self.check_revocations(&principal, now)?;
        Ok(principal)
    }

    /// The feed, when it is there and current.
    fn current_feed(&self, now: u64) -> Result<&Revocations, InvalidToken> {
        match &self.inner.revocations {
            Some(feed) if feed.is_current(now) => Ok(feed),
            _ => Err(InvalidToken::RevocationsUnavailable),
        }
    }

    /// Refuses what the feed revoked. PATs and the tokens exchanged from
    /// them need a current feed; workload tokens are checked against what
    /// the feed last said, however old.
    fn check_revocations(&self, principal: &Principal, now: u64) -> Result<(), InvalidToken> {
        let (grant_id, pat_id) = principal.revocation_ids();
        let feed = if principal.is_pat_derived() {
            Some(self.current_feed(now)?)
        } else {
            self.inner.revocations.as_deref()
        };
        let Some(feed) = feed else { return Ok(()) };
        if grant_id.is_some_and(|id| feed.is_revoked(id))
            || pat_id.is_some_and(|id| feed.is_revoked(id))
        {
            return Err(InvalidToken::Revoked);
        }
        if let Some(id) = pat_id.filter(|_| principal.is_pat()) {
            feed.note_used(id);
        }
        Ok(())
    }

    /// A layer requiring `requirement`: a scope string in which the resource
    /// may be a path parameter, e.g. `env:view` or `task:operate:{name}`.
    ///
    /// # Panics
    /// On a malformed requirement, like axum's `route` on a malformed path:
    /// it is a programming error, found when the router is built. Use
    /// [`Authorizer::try_require`] to handle it instead.
    #[allow(clippy::panic)] // documented: a malformed route requirement is a startup bug
    pub fn require(&self, requirement: &str) -> RequireScopeLayer {
        match self.try_require(requirement) {
            Ok(layer) => layer,
            Err(e) => panic!("invalid authproxy requirement `{requirement}`: {e}"),
        }
    }

    /// As [`Authorizer::require`], returning an error on a malformed requirement.
    pub fn try_require(&self, requirement: &str) -> Result<RequireScopeLayer, RequirementError> {
        Ok(RequireScopeLayer::new(
            self.clone(),
            Requirement::parse(requirement)?,
        ))
    }

    /// Records one decision, when metrics are on.
    pub(crate) fn record(&self, result: &'static str, took: Duration) {
        if let Some(m) = &self.inner.metrics {
            m.record(result, took);
        }
    }
}
