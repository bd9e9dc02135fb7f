//! Where an upstream's trusted root keys come from: keys in memory, a JWKS
//! file, or a JWKS URL — with periodic refresh, refetch on an unknown `kid`
//! (single-flight, at most once per interval), and stale keys kept when a
//! fetch fails.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use authproxy_core::clock;
use authproxy_core::keys::{Jwks, RootKeys};
use authproxy_core::shared::Shared;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 64 * 1024;

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
}

/// A source of root keys.
#[derive(Debug, Clone)]
pub(crate) enum KeySource {
    /// Fixed keys, never refreshed.
    Static(Jwks),
    /// A JWKS file, re-read on refresh.
    File(PathBuf),
    /// A JWKS URL (http or https), fetched on refresh.
    Url(String),
}

impl KeySource {
    fn name(&self) -> String {
        match self {
            Self::Static(_) => "static keys".into(),
            Self::File(p) => p.display().to_string(),
            Self::Url(u) => u.clone(),
        }
    }
}

/// The trusted root keys and how to refresh them.
pub(crate) struct KeyStore {
    source: KeySource,
    client: Option<reqwest::Client>,
    keys: Shared<RootKeys>,
    /// Serialises fetches (single-flight) and remembers the last attempt.
    refetch: tokio::sync::Mutex<Option<Instant>>,
    min_refetch_interval: Duration,
    /// Unix time of the last successful fetch.
    fetched_at: std::sync::atomic::AtomicU64,
    /// Unix time of the last "keys are stale" error line (rate-limits it).
    stale_logged_at: std::sync::atomic::AtomicU64,
}

impl KeyStore {
    /// Loads the keys once; fails if none is usable.
    pub(crate) async fn open(
        source: KeySource,
        min_refetch_interval: Duration,
    ) -> Result<Self, JwksError> {
        let client = match &source {
            KeySource::Url(_) => Some(
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
            refetch: tokio::sync::Mutex::new(None),
            min_refetch_interval,
            fetched_at: std::sync::atomic::AtomicU64::new(0),
            stale_logged_at: std::sync::atomic::AtomicU64::new(0),
        };
        let keys = store.fetch().await?;
        store.replace(keys);
        // The build fetch does not count against the unknown-kid interval:
        // a root rotated just after start is picked up on its first use.
        Ok(store)
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
        let mut last = self.refetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.min_refetch_interval) {
            return false;
        }
        *last = Some(Instant::now());
        self.refresh_locked().await
    }

    fn replace(&self, keys: RootKeys) {
        self.fetched_at
            .store(clock::now(), std::sync::atomic::Ordering::Relaxed);
        self.keys.store(keys);
    }

    /// Refetches because a token named an unknown root `kid`. Concurrent
    /// callers wait for one fetch; and whatever the number of unknown kids
    /// presented, the source is hit at most once per `min_refetch_interval`,
    /// so a flood of forged kids cannot turn into a fetch storm.
    /// Returns true when the keys changed.
    pub(crate) async fn refetch_for_unknown_kid(&self, seen: &Arc<RootKeys>) -> bool {
        if !self.is_refreshable() {
            return false;
        }
        let mut last = self.refetch.lock().await;
        if !Arc::ptr_eq(seen, &self.current()) {
            return true; // someone refreshed while we waited
        }
        if last.is_some_and(|t| t.elapsed() < self.min_refetch_interval) {
            return false;
        }
        *last = Some(Instant::now());
        self.refresh_locked().await
    }

    /// Periodic refresh (single-flight with refetches; it does not reset
    /// the unknown-kid interval).
    pub(crate) async fn refresh(&self) -> bool {
        let _guard = self.refetch.lock().await;
        self.refresh_locked().await
    }

    async fn refresh_locked(&self) -> bool {
        match self.fetch().await {
            Ok(keys) => {
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

    async fn fetch(&self) -> Result<RootKeys, JwksError> {
        let name = self.source.name();
        let fetch_err = |message: String| JwksError::Fetch {
            source_name: name.clone(),
            message,
        };
        let set: Jwks = match &self.source {
            KeySource::Static(set) => set.clone(),
            KeySource::File(path) => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|e| fetch_err(e.to_string()))?;
                parse_jwks(&bytes).map_err(fetch_err)?
            }
            KeySource::Url(url) => {
                let client = self
                    .client
                    .as_ref()
                    .ok_or_else(|| fetch_err("no HTTP client".into()))?;
                let res = client
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
                    return Err(fetch_err("JWKS document too large".into()));
                }
                let bytes = res.bytes().await.map_err(|e| fetch_err(e.to_string()))?;
                parse_jwks(&bytes).map_err(fetch_err)?
            }
        };
        let keys = set.usable_keys();
        if keys.is_empty() {
            return Err(JwksError::NoUsableKeys(name));
        }
        Ok(keys)
    }
}

fn parse_jwks(bytes: &[u8]) -> Result<Jwks, String> {
    if bytes.len() > MAX_JWKS_BYTES {
        return Err("JWKS document too large".into());
    }
    Jwks::from_json(bytes).map_err(|e| format!("not a JWKS document: {e}"))
}
