//! Where an upstream's trusted root keys come from: keys in memory, a JWKS
//! file, or a JWKS URL — with periodic refresh, refetch on an unknown `kid`
//! (single-flight, at most once per interval), and stale keys kept when a
//! fetch fails. A fetch adds keys at once but drops a trusted key only
//! after [`ROOT_KEY_DROP_AFTER_REFRESHES`] scheduled refreshes without it.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use authproxy_core::clock;
use authproxy_core::keys::{Jwks, RootKeys};
use authproxy_core::shared::Shared;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 64 * 1024;
/// Why a document over [`MAX_JWKS_BYTES`] is refused.
const TOO_LARGE: &str = "JWKS document too large (over 64 KiB)";

/// A trusted root key is dropped once it has been missing from this many
/// consecutive successful scheduled refreshes of a JWKS file or URL (with
/// the default 5-minute refresh interval: after 15 minutes). Keys new to
/// the JWKS are trusted at once.
///
/// The JWKS is a trust anchor: without this, one answer from whoever serves
/// it (a process squatting the sidecar's port after a restart, a hijacked
/// route) would replace the real roots. Fetches caused by requests (an
/// unknown `kid`, stale keys) add keys but never count a miss, so whoever
/// can send tokens cannot hurry a drop along.
pub const ROOT_KEY_DROP_AFTER_REFRESHES: u32 = 3;

/// First wait before the build's fetch is tried again; it doubles up to
/// [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
/// Longest wait between two attempts of the build's fetch.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Most root keys trusted at once. Keys are kept across fetches now, so a
/// hostile JWKS serving fresh keys on every unknown-`kid` refetch could
/// otherwise grow the set without bound; real sets hold a handful.
const MAX_TRUSTED_KEYS: usize = 512;

/// Why a key set could not be obtained.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// Reading the file or fetching the URL failed.
    #[error("{source_name}: {message}")]
    Fetch {
        /// The file or URL.
        source_name: String,
        /// What went wrong.
        message: String,
    },
    /// The document holds no usable Ed25519 signing key.
    #[error("{0}: no usable Ed25519 signing key (kty OKP, crv Ed25519, with a kid)")]
    NoUsableKeys(String),
    /// Roots are pinned and the document holds none of them.
    #[error(
        "{source_name}: none of the {pinned} pinned root key(s) is in the JWKS; \
         its keys' RFC 7638 thumbprints are: {}",
        .present.join(", ")
    )]
    NoPinnedKeys {
        /// The file, URL or "static keys".
        source_name: String,
        /// How many thumbprints are pinned.
        pinned: usize,
        /// The thumbprints of the usable keys the document does hold.
        present: Vec<String>,
    },
}

/// A source of root keys.
#[derive(Debug, Clone)]
pub(crate) enum KeySource {
    /// Fixed keys, never refreshed.
    Static(Jwks),
    /// A JWKS file, re-read on refresh.
    File(PathBuf),
    /// One or several JWKS URLs (http or https; e.g. one per issuer
    /// node), fetched on refresh; their keys are merged.
    Urls(Vec<String>),
}

impl KeySource {
    fn name(&self) -> String {
        match self {
            Self::Static(_) => "static keys".into(),
            Self::File(p) => p.display().to_string(),
            Self::Urls(u) => u.join(", "),
        }
    }
}

/// How a [`KeyStore`] fetches, and which keys it may trust.
#[derive(Debug, Clone)]
pub(crate) struct StoreOptions {
    /// Minimum time between two fetches caused by requests.
    pub(crate) min_refetch_interval: Duration,
    /// When set, the RFC 7638 thumbprints of the only roots ever trusted.
    pub(crate) pinned: Option<HashSet<String>>,
    /// How long [`KeyStore::open`] retries a failing first fetch of a file
    /// or URL (zero: one attempt).
    pub(crate) initial_fetch_timeout: Duration,
}

/// What successive fetches share, under the single-flight lock.
#[derive(Debug, Default)]
struct FetchState {
    /// When a request (unknown `kid`, stale keys) last caused a fetch.
    last_on_demand: Option<Instant>,
    /// Trusted kids missing from the last scheduled refreshes, with the
    /// number of consecutive misses.
    missing: HashMap<String, u32>,
}

/// Why keys are fetched: only the scheduled refresh may drop a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// The periodic refresh.
    Scheduled,
    /// Build, an unknown `kid` or stale keys.
    OnDemand,
}

/// The trusted root keys and how to refresh them.
pub(crate) struct KeyStore {
    source: KeySource,
    client: Option<reqwest::Client>,
    keys: Shared<RootKeys>,
    /// Serialises fetches (single-flight); what they share.
    fetches: tokio::sync::Mutex<FetchState>,
    min_refetch_interval: Duration,
    /// When set, only these root thumbprints are ever trusted.
    pinned: Option<HashSet<String>>,
    /// Unix time of the last successful fetch.
    fetched_at: std::sync::atomic::AtomicU64,
    /// Unix time of the last "keys are stale" error line (rate-limits it).
    stale_logged_at: std::sync::atomic::AtomicU64,
}

impl KeyStore {
    /// Loads the keys; fails if none is usable. A file or URL that fails is
    /// tried again with backoff until `initial_fetch_timeout` has passed.
    pub(crate) async fn open(source: KeySource, options: StoreOptions) -> Result<Self, JwksError> {
        let client = match &source {
            KeySource::Urls(_) => Some(
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    // A JWKS endpoint that redirects elsewhere is not followed:
                    // the trust anchor is the URL configured, nothing else.
                    .redirect(reqwest::redirect::Policy::none())
                    .no_proxy()
                    .build()
                    .map_err(|e| JwksError::Fetch {
                        source_name: source.name(),
                        message: e.to_string(),
                    })?,
            ),
            _ => None,
        };
        let store = Self {
            source,
            client,
            keys: Shared::new(RootKeys::new()),
            fetches: tokio::sync::Mutex::new(FetchState::default()),
            min_refetch_interval: options.min_refetch_interval,
            pinned: options.pinned,
            fetched_at: std::sync::atomic::AtomicU64::new(0),
            stale_logged_at: std::sync::atomic::AtomicU64::new(0),
        };
        let keys = store.first_fetch(options.initial_fetch_timeout).await?;
        let keys = merge(
            &RootKeys::new(),
            keys,
            &mut HashMap::new(),
            Trigger::OnDemand,
        );
        store.replace(keys);
        // The build fetch does not count against the unknown-kid interval:
        // a root rotated just after start is picked up on its first use.
        Ok(store)
    }

    /// The build's fetch. An upstream often starts before the sidecar or
    /// issuer serving its JWKS (same pod, same compose file): rather than
    /// exit and rely on a restart loop, wait for it — with backoff, and for
    /// a bounded time, after which the last error is the build's (#11 item
    /// 16). Every attempt is cut at the deadline, so a source that never
    /// answers cannot hold the build for the HTTP client's own timeout.
    async fn first_fetch(&self, timeout: Duration) -> Result<RootKeys, JwksError> {
        // Static keys parse or do not: nothing to wait for.
        if timeout.is_zero() || !self.is_refreshable() {
            return self.fetch().await.map(|(keys, _)| keys);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = FIRST_RETRY_DELAY;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let error = match tokio::time::timeout(remaining, self.fetch()).await {
                Ok(Ok((keys, _))) => return Ok(keys),
                Ok(Err(e)) => e,
                Err(_) => {
                    return Err(JwksError::Fetch {
                        source_name: self.source.name(),
                        message: format!(
                            "no answer within the initial fetch timeout ({timeout:?})"
                        ),
                    });
                }
            };
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Err(error);
            }
            tracing::warn!(
                %error,
                retry_in_ms = delay.min(remaining).as_millis(),
                "root keys not available yet; retrying"
            );
            tokio::time::sleep(delay.min(remaining)).await;
            if tokio::time::Instant::now() >= deadline {
                return Err(error);
            }
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
    }

    /// The current keys (a cheap snapshot).
    pub(crate) fn current(&self) -> Arc<RootKeys> {
        self.keys.load()
    }

    /// True if the source can change (file or URL).
    pub(crate) fn is_refreshable(&self) -> bool {
        !matches!(self.source, KeySource::Static(_))
    }

    /// True when the keys come from a file or URL whose last successful
    /// fetch is more than `max_stale` before `now`.
    pub(crate) fn is_stale(&self, now: u64, max_stale: Duration) -> bool {
        let fetched = self.fetched_at.load(std::sync::atomic::Ordering::Relaxed);
        self.is_refreshable() && now.saturating_sub(fetched) > max_stale.as_secs()
    }

    /// Logs that the keys are too old — at most once a minute.
    pub(crate) fn log_stale(&self, now: u64) {
        let last = self
            .stale_logged_at
            .load(std::sync::atomic::Ordering::Relaxed);
        if now.saturating_sub(last) >= 60 {
            self.stale_logged_at
                .store(now, std::sync::atomic::Ordering::Relaxed);
            let fetched = self.fetched_at.load(std::sync::atomic::Ordering::Relaxed);
            tracing::error!(
                source = %self.source.name(),
                last_fetch_age_secs = now.saturating_sub(fetched),
                "root keys are older than the allowed staleness and cannot be refreshed; refusing all tokens"
            );
        }
    }

    /// Refetches (rate-limited like unknown kids) because the keys are stale.
    pub(crate) async fn refetch_if_allowed(&self) -> bool {
        let mut state = self.fetches.lock().await;
        if state
            .last_on_demand
            .is_some_and(|t| t.elapsed() < self.min_refetch_interval)
        {
            return false;
        }
        state.last_on_demand = Some(Instant::now());
        self.refresh_locked(&mut state, Trigger::OnDemand).await
    }

    fn replace(&self, keys: RootKeys) {
        self.fetched_at
            .store(clock::now(), std::sync::atomic::Ordering::Relaxed);
        self.keys.store(keys);
    }

    /// Refetches because a token named an unknown root `kid`. Concurrent
    /// callers wait for one fetch; and whatever the number of unknown kids
    /// presented, the source is hit at most once per `min_refetch_interval`,
    /// so a flood of forged kids cannot turn into a fetch storm. Such a
    /// fetch adds keys but never drops one (see [`merge`]).
    /// Returns true when the keys may have changed.
    pub(crate) async fn refetch_for_unknown_kid(&self, seen: &Arc<RootKeys>) -> bool {
        if !self.is_refreshable() {
            return false;
        }
        let mut state = self.fetches.lock().await;
        if !Arc::ptr_eq(seen, &self.current()) {
            return true; // someone refreshed while we waited
        }
        if state
            .last_on_demand
            .is_some_and(|t| t.elapsed() < self.min_refetch_interval)
        {
            return false;
        }
        state.last_on_demand = Some(Instant::now());
        self.refresh_locked(&mut state, Trigger::OnDemand).await
    }

    /// Periodic refresh (single-flight with refetches; it does not reset
    /// the unknown-kid interval). The only fetch that counts a trusted key
    /// missing towards [`ROOT_KEY_DROP_AFTER_REFRESHES`].
    pub(crate) async fn refresh(&self) -> bool {
        let mut state = self.fetches.lock().await;
        self.refresh_locked(&mut state, Trigger::Scheduled).await
    }

    async fn refresh_locked(&self, state: &mut FetchState, trigger: Trigger) -> bool {
        match self.fetch().await {
            Ok((fetched, complete)) => {
                // A fetch some of whose URLs failed may add keys but never
                // drops one: the missing keys may be those of the node
                // that did not answer.
                let trigger = if complete { trigger } else { Trigger::OnDemand };
                let keys = merge(&self.current(), fetched, &mut state.missing, trigger);
                tracing::debug!(source = %self.source.name(), keys = keys.len(), "root keys refreshed");
                self.replace(keys);
                true
            }
            Err(e) => {
                // Keep serving with the keys we have: an issuer outage must
                // not take every upstream down with it.
                tracing::warn!(error = %e, "root key refresh failed; keeping the current keys");
                false
            }
        }
    }

    /// Fetches the keys: for several URLs the union of those that
    /// answered, with `false` when some did not (an error only when none
    /// did).
    async fn fetch(&self) -> Result<(RootKeys, bool), JwksError> {
        let name = self.source.name();
        let fetch_err = |message: String| JwksError::Fetch {
            source_name: name.clone(),
            message,
        };
        let set: Jwks = match &self.source {
            KeySource::Static(set) => set.clone(),
            KeySource::File(path) => {
                let bytes = read_file_capped(path)
                    .await
                    .map_err(|e| fetch_err(e.to_string()))?;
                parse_jwks(&bytes).map_err(fetch_err)?
            }
            KeySource::Urls(urls) => {
                let mut union = RootKeys::new();
                let mut last_error = None;
                for url in urls {
                    match self.fetch_url(url).await.and_then(|set| {
                        let keys = set.usable_keys();
                        if keys.is_empty() {
                            Err(JwksError::NoUsableKeys(url.clone()))
                        } else {
                            Ok(keys)
                        }
                    }) {
                        Ok(keys) => union.extend(keys),
                        Err(e) => {
                            if urls.len() > 1 {
                                tracing::warn!(error = %e, "one JWKS URL failed; using the others");
                            }
                            last_error = Some(e);
                        }
                    }
                }
                if union.is_empty() {
                    return Err(last_error.unwrap_or(JwksError::NoUsableKeys(name)));
                }
                let complete = last_error.is_none();
                return self.pin(union, &name).map(|keys| (keys, complete));
            }
        };
        let keys = set.usable_keys();
        if keys.is_empty() {
            return Err(JwksError::NoUsableKeys(name));
        }
        self.pin(keys, &name).map(|keys| (keys, true))
    }

    /// Keeps only the pinned roots, when roots are pinned.
    fn pin(&self, mut keys: RootKeys, name: &str) -> Result<RootKeys, JwksError> {
        let name = name.to_owned();
        if let Some(pinned) = &self.pinned {
            // With pins the JWKS only says which pinned roots are live:
            // whoever serves it cannot introduce a root of their own
            // (#11 item 2b). A set without any pinned root is a failed
            // fetch, so the keys already trusted stay.
            let present = keys.values().map(|k| k.thumbprint().to_owned()).collect();
            keys.retain(|_, k| pinned.contains(k.thumbprint()));
            if keys.is_empty() {
                return Err(JwksError::NoPinnedKeys {
                    source_name: name,
                    pinned: pinned.len(),
                    present,
                });
            }
        }
        Ok(keys)
    }

    /// One JWKS URL, read up to the cap.
    async fn fetch_url(&self, url: &str) -> Result<Jwks, JwksError> {
        let fetch_err = |message: String| JwksError::Fetch {
            source_name: url.to_owned(),
            message,
        };
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| fetch_err("no HTTP client".into()))?;
        let mut res = client
            .get(url)
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
            return Err(fetch_err(TOO_LARGE.into()));
        }
        // Content-Length may be absent (chunked) or a lie: read
        // chunk by chunk and stop at the cap, so a hostile or broken
        // JWKS URL cannot make us buffer an endless body (#11 item 5).
        let mut bytes = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(|e| fetch_err(e.to_string()))? {
            if bytes.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(fetch_err(TOO_LARGE.into()));
            }
            bytes.extend_from_slice(&chunk);
        }
        parse_jwks(&bytes).map_err(fetch_err)
    }
}

/// The keys to trust after a successful fetch of `fetched` (#11 item 2a;
/// why: [`ROOT_KEY_DROP_AFTER_REFRESHES`]).
///
/// A key new to the set is trusted at once, so a rotated root works on its
/// first unknown `kid`. A trusted key missing from `fetched` stays until a
/// scheduled refresh has missed it `ROOT_KEY_DROP_AFTER_REFRESHES` times in
/// a row; seeing it again starts the count over. A key is present only with
/// the same material under the same `kid`: while a key is trusted its `kid`
/// cannot be rebound to another key (that would be a drop at once).
fn merge(
    current: &RootKeys,
    fetched: RootKeys,
    missing: &mut HashMap<String, u32>,
    trigger: Trigger,
) -> RootKeys {
    let mut next = RootKeys::with_capacity(current.len().max(fetched.len()));
    let mut still_missing = HashMap::new();
    for (kid, key) in current {
        let present = fetched
            .get(kid)
            .is_some_and(|k| k.thumbprint() == key.thumbprint());
        let before = missing.get(kid).copied().unwrap_or(0);
        let misses = match (present, trigger) {
            (true, _) => 0,
            (false, Trigger::Scheduled) => before + 1,
            (false, Trigger::OnDemand) => before,
        };
        if misses >= ROOT_KEY_DROP_AFTER_REFRESHES {
            tracing::info!(%kid, misses, "root key dropped: missing from the JWKS");
            continue;
        }
        if misses > 0 {
            tracing::debug!(%kid, misses, "trusted root key missing from the JWKS; kept");
            still_missing.insert(kid.clone(), misses);
        }
        next.insert(kid.clone(), key.clone());
    }
    for (kid, key) in fetched {
        match next.get(&kid) {
            Some(held) if held.thumbprint() != key.thumbprint() => {
                tracing::warn!(%kid, "the JWKS binds a trusted kid to another key; keeping the trusted one");
            }
            Some(_) => {}
            None if next.len() >= MAX_TRUSTED_KEYS => {
                tracing::warn!(%kid, limit = MAX_TRUSTED_KEYS, "too many root keys; new key ignored");
            }
            None => {
                tracing::info!(%kid, "root key added");
                next.insert(kid, key);
            }
        }
    }
    *missing = still_missing;
    next
}

/// Reads at most `MAX_JWKS_BYTES + 1` bytes of a file: one byte more than
/// allowed is enough to refuse it, and a "file" without end (`/dev/zero`, a
/// FIFO fed forever) cannot exhaust memory (#11 item 5).
async fn read_file_capped(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let file = tokio::fs::File::open(path).await?;
    let mut bytes = Vec::new();
    file.take(MAX_JWKS_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .await?;
    Ok(bytes)
}

fn parse_jwks(bytes: &[u8]) -> Result<Jwks, String> {
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(TOO_LARGE.into());
    }
    Jwks::from_json(bytes).map_err(|e| format!("not a JWKS document: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use authproxy_core::keys::SigningKey;

    const HOUR: Duration = Duration::from_secs(3600);

    fn key() -> SigningKey {
        SigningKey::generate().unwrap()
    }

    fn jwks_bytes(keys: &[&SigningKey]) -> Vec<u8> {
        serde_json::to_vec(&Jwks::publish(keys.iter().map(|k| k.public()))).unwrap()
    }

    fn write_jwks(path: &Path, keys: &[&SigningKey]) {
        std::fs::write(path, jwks_bytes(keys)).unwrap();
    }

    fn opts(min_refetch_interval: Duration) -> StoreOptions {
        StoreOptions {
            min_refetch_interval,
            pinned: None,
            initial_fetch_timeout: Duration::ZERO,
        }
    }

    async fn open_file(path: &Path, min_refetch_interval: Duration) -> Result<KeyStore, JwksError> {
        KeyStore::open(KeySource::File(path.to_owned()), opts(min_refetch_interval)).await
    }

    #[tokio::test]
    async fn a_jwks_file_is_read_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let (a, b) = (key(), key());
        write_jwks(&path, &[&a, &b]);
        let store = open_file(&path, HOUR).await.unwrap();
        let keys = store.current();
        assert_eq!(keys.len(), 2);
        assert!(keys.contains_key(a.public().thumbprint()));
        assert!(keys.contains_key(b.public().thumbprint()));
        assert!(store.is_refreshable());
    }

    #[tokio::test]
    async fn a_file_without_a_usable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        // An HMAC secret with a kid, and an Ed25519 key without one.
        let bare = serde_json::to_value(key().public().bare_jwk()).unwrap();
        let doc = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            bare,
        ]});
        std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        match open_file(&path, HOUR).await {
            Err(JwksError::NoUsableKeys(name)) => assert_eq!(name, path.display().to_string()),
            other => panic!(
                "expected NoUsableKeys, got {:?}",
                other.map(|s| s.current())
            ),
        }
    }

    #[tokio::test]
    async fn an_oversize_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        // A valid document, made too large by trailing whitespace only.
        let mut bytes = jwks_bytes(&[&key()]);
        bytes.resize(MAX_JWKS_BYTES + 1, b' ');
        assert!(Jwks::from_json(&bytes).is_ok());
        std::fs::write(&path, &bytes).unwrap();
        match open_file(&path, HOUR).await {
            Err(JwksError::Fetch { message, .. }) => {
                assert!(message.contains("too large"), "{message}");
            }
            other => panic!(
                "expected a size error, got {:?}",
                other.map(|s| s.current())
            ),
        }
    }

    /// How many scheduled refreshes must miss a key before it goes (the
    /// tests name the number, so that changing it is a visible decision).
    const DROP_AFTER: u32 = 3;

    // #11 item 2a: a JWKS fetch may add keys at once, but removes a trusted
    // key only after it has been missing from DROP_AFTER consecutive refreshes.
    #[tokio::test]
    async fn a_key_missing_from_fewer_than_n_refreshes_stays_trusted_then_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let (a, b) = (key(), key());
        write_jwks(&path, &[&a, &b]);
        let store = open_file(&path, HOUR).await.unwrap();

        write_jwks(&path, &[&b]);
        for missed in 1..DROP_AFTER {
            assert!(store.refresh().await);
            assert!(
                store.current().contains_key(a.public().thumbprint()),
                "dropped after {missed} refresh(es)"
            );
        }
        assert!(store.refresh().await);
        let keys = store.current();
        assert!(!keys.contains_key(a.public().thumbprint()));
        assert!(keys.contains_key(b.public().thumbprint()));
    }

    #[tokio::test]
    async fn a_new_key_is_trusted_at_once_and_the_old_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let (old, new) = (key(), key());
        write_jwks(&path, &[&old]);
        let store = open_file(&path, Duration::ZERO).await.unwrap();

        // A set that replaces `old` by `new`: `new` at once, `old` kept.
        write_jwks(&path, &[&new]);
        assert!(store.refetch_for_unknown_kid(&store.current()).await);
        let keys = store.current();
        assert!(keys.contains_key(new.public().thumbprint()));
        assert!(keys.contains_key(old.public().thumbprint()));
    }

    #[tokio::test]
    async fn a_key_seen_again_starts_its_count_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let (a, b) = (key(), key());
        write_jwks(&path, &[&a, &b]);
        let store = open_file(&path, HOUR).await.unwrap();
        for _ in 1..DROP_AFTER {
            write_jwks(&path, &[&b]);
            assert!(store.refresh().await);
        }
        write_jwks(&path, &[&a, &b]);
        assert!(store.refresh().await);
        // Missing again: the earlier misses no longer count.
        write_jwks(&path, &[&b]);
        for _ in 1..DROP_AFTER {
            assert!(store.refresh().await);
        }
        assert!(store.current().contains_key(a.public().thumbprint()));
    }

    // The attack of #11 item 2a: whoever serves the JWKS after a restart
    // presents tokens with unknown kids, each forcing a refetch of a set
    // without the real root. Those refetches never drop a key; only the
    // scheduled refresh counts misses, so the attacker cannot speed it up.
    #[tokio::test]
    async fn unknown_kid_refetches_never_drop_a_trusted_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let (real, impostor) = (key(), key());
        write_jwks(&path, &[&real]);
        let store = open_file(&path, Duration::ZERO).await.unwrap();
        write_jwks(&path, &[&impostor]);
        for _ in 0..(DROP_AFTER * 4) {
            assert!(store.refetch_for_unknown_kid(&store.current()).await);
        }
        assert!(store.current().contains_key(real.public().thumbprint()));
    }

    #[tokio::test]
    async fn a_trusted_kid_cannot_be_rebound_to_another_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let (real, impostor) = (key(), key());
        write_jwks(&path, &[&real]);
        let store = open_file(&path, Duration::ZERO).await.unwrap();
        // The impostor's key published under the real key's kid.
        let mut jwk = serde_json::to_value(impostor.public().published_jwk()).unwrap();
        jwk["kid"] = serde_json::json!(real.public().thumbprint());
        let doc = serde_json::json!({ "keys": [jwk] });
        std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        assert!(store.refetch_for_unknown_kid(&store.current()).await);
        let keys = store.current();
        let held = keys.get(real.public().thumbprint()).unwrap();
        assert_eq!(held.thumbprint(), real.public().thumbprint());
    }

    // Keys now outlive the fetch that brought them: a hostile JWKS with
    // fresh keys on every refetch must not grow the set without bound.
    #[tokio::test]
    async fn the_trusted_set_is_bounded_however_many_keys_are_served() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let first = key();
        write_jwks(&path, &[&first]);
        let store = open_file(&path, Duration::ZERO).await.unwrap();
        for _ in 0..2 {
            let batch: Vec<SigningKey> = (0..300).map(|_| key()).collect();
            write_jwks(&path, &batch.iter().collect::<Vec<_>>());
            assert!(store.refetch_for_unknown_kid(&store.current()).await);
        }
        let keys = store.current();
        assert_eq!(keys.len(), MAX_TRUSTED_KEYS);
        assert!(keys.contains_key(first.public().thumbprint()));
    }

    // #11 item 2b: with pins, a refresh trusts only pinned roots, and a set
    // without any of them is a failed fetch that keeps the trusted keys.
    #[tokio::test]
    async fn with_pins_a_refresh_trusts_only_pinned_roots() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let (pinned, impostor) = (key(), key());
        write_jwks(&path, &[&pinned, &impostor]);
        let options = StoreOptions {
            pinned: Some(HashSet::from([pinned.public().thumbprint().to_owned()])),
            ..opts(Duration::ZERO)
        };
        let store = KeyStore::open(KeySource::File(path.clone()), options)
            .await
            .unwrap();
        assert_eq!(store.current().len(), 1);
        assert!(store.current().contains_key(pinned.public().thumbprint()));

        write_jwks(&path, &[&impostor]);
        assert!(!store.refresh().await);
        assert!(!store.refetch_for_unknown_kid(&store.current()).await);
        let keys = store.current();
        assert_eq!(keys.len(), 1);
        assert!(keys.contains_key(pinned.public().thumbprint()));
    }

    /// Bytes a hostile JWKS server writes at most before giving up — far
    /// beyond the cap, so that a client that buffers shows it.
    const HOSTILE_BODY_LIMIT: usize = 64 * 1024 * 1024;

    /// A raw HTTP/1.1 server answering every request with a chunked body
    /// (no Content-Length) that never ends: chunks until the client goes
    /// away or HOSTILE_BODY_LIMIT bytes are out, then holds the connection
    /// open. Returns its URL and the bytes it managed to write.
    async fn endless_jwks_server() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let w = Arc::clone(&written);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let w = Arc::clone(&w);
                tokio::spawn(async move {
                    let mut head = [0u8; 4096];
                    let _ = conn.read(&mut head).await;
                    let start = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                 transfer-encoding: chunked\r\n\r\n";
                    if conn.write_all(start.as_bytes()).await.is_err() {
                        return;
                    }
                    // `{"keys":[` then whitespace forever: valid JSON so far.
                    let mut chunk = format!("{:x}\r\n{{\"keys\":[\r\n", 9).into_bytes();
                    let filler = vec![b' '; 16 * 1024];
                    loop {
                        if conn.write_all(&chunk).await.is_err() {
                            return;
                        }
                        let n = w.fetch_add(chunk.len(), std::sync::atomic::Ordering::SeqCst);
                        if n + chunk.len() >= HOSTILE_BODY_LIMIT {
                            break;
                        }
                        chunk = format!("{:x}\r\n", filler.len()).into_bytes();
                        chunk.extend_from_slice(&filler);
                        chunk.extend_from_slice(b"\r\n");
                    }
                    // Never finish the body: a buffering client waits for
                    // its own timeout.
                    std::future::pending::<()>().await;
                });
            }
        });
        (url, written)
    }

    // #11 item 5: a hostile JWKS URL streams a body without end; the fetch
    // stops reading at the cap instead of buffering it.
    #[tokio::test]
    async fn an_endless_jwks_url_body_is_refused_at_the_cap_without_buffering_it() {
        let (url, written) = endless_jwks_server().await;
        let opened = tokio::time::timeout(
            Duration::from_secs(60),
            KeyStore::open(KeySource::Urls(vec![url]), opts(HOUR)),
        )
        .await
        .expect("the fetch must end");
        // The server could only push what the socket buffers hold beyond
        // the cap before the client hung up.
        let out = written.load(std::sync::atomic::Ordering::SeqCst);
        assert!(out < HOSTILE_BODY_LIMIT, "the client read {out} bytes");
        match opened {
            Err(JwksError::Fetch { message, .. }) => {
                assert!(message.contains("too large"), "{message}");
            }
            other => panic!(
                "expected a size error, got {:?}",
                other.map(|s| s.current())
            ),
        }
    }

    // #11 item 5: a JWKS "file" that never ends is read up to the cap only.
    #[tokio::test]
    async fn a_jwks_file_that_never_ends_is_refused_at_the_cap() {
        let opened = tokio::time::timeout(
            Duration::from_secs(60),
            open_file(Path::new("/dev/zero"), HOUR),
        )
        .await
        .expect("the read must end");
        match opened {
            Err(JwksError::Fetch { message, .. }) => {
                assert!(message.contains("too large"), "{message}");
            }
            other => panic!(
                "expected a size error, got {:?}",
                other.map(|s| s.current())
            ),
        }
    }

    #[tokio::test]
    async fn a_missing_file_is_a_fetch_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.json");
        assert!(matches!(
            open_file(&path, HOUR).await,
            Err(JwksError::Fetch { .. })
        ));
    }

    #[tokio::test]
    async fn refresh_picks_up_a_changed_file_and_keeps_keys_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let (old, new) = (key(), key());
        write_jwks(&path, &[&old]);
        let store = open_file(&path, HOUR).await.unwrap();

        write_jwks(&path, &[&new]);
        assert!(store.refresh().await);
        let keys = store.current();
        assert!(keys.contains_key(new.public().thumbprint()));
        // `old` stays a while: a_key_missing_from_fewer_than_n_refreshes_...
        assert!(keys.contains_key(old.public().thumbprint()));

        // A broken file: the last good keys stay.
        std::fs::write(&path, b"not json").unwrap();
        assert!(!store.refresh().await);
        assert!(store.current().contains_key(new.public().thumbprint()));
    }

    #[tokio::test]
    async fn keys_are_stale_only_long_after_their_last_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        write_jwks(&path, &[&key()]);
        let store = open_file(&path, HOUR).await.unwrap();
        let now = clock::now();
        assert!(!store.is_stale(now, HOUR));
        assert!(!store.is_stale(now + 3600, HOUR));
        assert!(store.is_stale(now + 3600 + 60, HOUR));
        assert!(store.is_stale(now + 365 * 24 * 3600, HOUR));
    }

    #[tokio::test]
    async fn static_keys_are_never_stale_nor_refetched() {
        let k = key();
        let store = KeyStore::open(KeySource::Static(Jwks::publish([k.public()])), opts(HOUR))
            .await
            .unwrap();
        assert!(store.current().contains_key(k.public().thumbprint()));
        assert!(!store.is_refreshable());
        assert!(!store.is_stale(clock::now() + 365 * 24 * 3600, HOUR));
        assert!(!store.refetch_for_unknown_kid(&store.current()).await);
    }

    #[tokio::test]
    async fn unknown_kid_refetches_respect_the_minimum_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let (a, b, c) = (key(), key(), key());
        write_jwks(&path, &[&a]);
        let store = open_file(&path, HOUR).await.unwrap();

        // The first unknown kid after open fetches at once.
        write_jwks(&path, &[&a, &b]);
        assert!(store.refetch_for_unknown_kid(&store.current()).await);
        assert!(store.current().contains_key(b.public().thumbprint()));

        // A second one within the interval does not touch the source.
        write_jwks(&path, &[&a, &b, &c]);
        assert!(!store.refetch_for_unknown_kid(&store.current()).await);
        assert!(!store.current().contains_key(c.public().thumbprint()));
    }

    #[tokio::test]
    async fn a_caller_holding_an_older_snapshot_is_told_the_keys_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let (a, b) = (key(), key());
        write_jwks(&path, &[&a]);
        let store = open_file(&path, HOUR).await.unwrap();
        let seen = store.current();
        write_jwks(&path, &[&a, &b]);
        assert!(store.refresh().await);
        // Within the interval, yet true: the keys are newer than `seen`.
        assert!(store.refetch_for_unknown_kid(&seen).await);
        assert!(store.current().contains_key(b.public().thumbprint()));
    }

    #[tokio::test]
    async fn without_a_minimum_interval_every_unknown_kid_refetches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let (a, b, c) = (key(), key(), key());
        write_jwks(&path, &[&a]);
        let store = open_file(&path, Duration::ZERO).await.unwrap();
        write_jwks(&path, &[&b]);
        assert!(store.refetch_for_unknown_kid(&store.current()).await);
        write_jwks(&path, &[&c]);
        assert!(store.refetch_for_unknown_kid(&store.current()).await);
        assert!(store.current().contains_key(c.public().thumbprint()));
    }
}
