//! The issuer's revocation feed (DESIGN §8, §9), polled: which personal
//! access tokens and grants were revoked before they expired.
//!
//! `GET <feed>?since=CURSOR` answers `{"cursor","revocations":[{"kind",
//! "id","expires_at"}]}`; the first poll (no `since`) is a snapshot of every
//! revocation still unexpired. An entry is kept until its `expires_at`: past
//! it the PAT or grant it names is refused for expiry anyway.
//!
//! Failure rule: PATs, and tokens exchanged from them, are accepted only
//! while the feed was read successfully within `max_stale` (fail closed);
//! workload tokens never depend on it — a revoked grant is refused when the
//! feed said so, and a feed outage does not take workloads down.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, Weak};
use std::time::Duration;

use serde::Deserialize;

/// Largest feed answer read, in bytes (10,000 live revocations fit in
/// about 1 MiB; a hostile or broken URL cannot make us buffer more).
const MAX_FEED_BYTES: usize = 8 * 1024 * 1024;
/// Most PAT ids reported as used in one report.
const MAX_USED_PER_REPORT: usize = 1000;
/// How often PAT usage is reported to the issuer ("last used").
const USAGE_REPORT_EVERY: u64 = 60;

/// Where the feed is and how to read it.
#[derive(Debug, Clone)]
pub(crate) struct FeedOptions {
    /// The feed of each issuer node, tried in order (they share a store).
    pub(crate) urls: Vec<String>,
    /// Where to report PAT usage (`<issuer>/v1/pats/used`), tried in order.
    pub(crate) usage_urls: Vec<String>,
    pub(crate) poll_interval: Duration,
    pub(crate) max_stale: Duration,
}

#[derive(Debug, Deserialize)]
struct FeedPage {
    cursor: String,
    revocations: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    kind: String,
    id: String,
    expires_at: String,
}

/// What the feed has said so far.
pub(crate) struct Revocations {
    options: FeedOptions,
    client: reqwest::Client,
    /// Revoked ids (PAT versions and grants share one namespace of random
    /// ids) and when each can be forgotten.
    revoked: RwLock<HashMap<String, u64>>,
    cursor: Mutex<Option<String>>,
    /// Unix time of the last successful read; 0 before the first.
    read_at: AtomicU64,
    /// PAT ids seen since the last usage report.
    used: Mutex<HashSet<String>>,
    reported_at: AtomicU64,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("urls", &self.options.urls)
            .field("read_at", &self.read_at.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Revocations {
    pub(crate) fn new(options: FeedOptions) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(options.poll_interval.max(Duration::from_secs(2)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()?;
        Ok(Self {
            options,
            client,
            revoked: RwLock::new(HashMap::new()),
            cursor: Mutex::new(None),
            read_at: AtomicU64::new(0),
            used: Mutex::new(HashSet::new()),
            reported_at: AtomicU64::new(0),
        })
    }

    /// True when the feed was read within `max_stale` of `now`.
    pub(crate) fn is_current(&self, now: u64) -> bool {
        let at = self.read_at.load(Ordering::Acquire);
        at != 0 && now.saturating_sub(at) <= self.options.max_stale.as_secs()
    }

    /// True when the feed named `id` (a PAT version or a grant).
    pub(crate) fn is_revoked(&self, id: &str) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(id)
    }

    /// Notes that a PAT version was used, for the next usage report.
    pub(crate) fn note_used(&self, id: &str) {
        if self.options.usage_urls.is_empty() {
            return;
        }
        let mut used = self
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if used.len() < MAX_USED_PER_REPORT && !used.contains(id) {
            used.insert(id.to_owned());
        }
    }

    /// Reads the feed once (from the cursor, or a snapshot first) and
    /// merges what it says; `now` is the time of the read.
    /// Reads the first feed that answers.
    pub(crate) async fn poll(&self, now: u64) -> Result<(), String> {
        let mut errors = Vec::new();
        for url in &self.options.urls {
            match self.poll_one(url, now).await {
                Ok(()) => return Ok(()),
                Err(e) => errors.push(format!("{url}: {e}")),
            }
        }
        Err(errors.join("; "))
    }

    async fn poll_one(&self, feed_url: &str, now: u64) -> Result<(), String> {
        let cursor = self
            .cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let url = match &cursor {
            Some(c) => format!("{feed_url}?since={c}"),
            None => feed_url.to_owned(),
        };
        let mut res = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !res.status().is_success() {
            return Err(format!("HTTP {}", res.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_FEED_BYTES {
                return Err(format!("answer exceeds {MAX_FEED_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let page: FeedPage = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        // The cursor goes back into a URL: decimal, as the issuer writes it.
        if page.cursor.is_empty() || !page.cursor.bytes().all(|b| b.is_ascii_digit()) {
            return Err("the cursor is not a decimal number".into());
        }
        let mut entries = Vec::with_capacity(page.revocations.len());
        for e in page.revocations {
            if e.kind != "pat" && e.kind != "grant" {
                // A kind from a newer issuer: its id still names something
                // revoked, and refusing more is the safe side.
                tracing::debug!(kind = %e.kind, "unknown revocation kind");
            }
            let until = humantime::parse_rfc3339(&e.expires_at)
                .map_err(|err| format!("bad expires_at `{}`: {err}", e.expires_at))?
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            entries.push((e.id, until));
        }
        {
            let mut revoked = self
                .revoked
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            revoked.retain(|_, until| *until > now);
            for (id, until) in entries {
                if until > now {
                    revoked.insert(id, until);
                }
            }
        }
        *self
            .cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(page.cursor);
        self.read_at.store(now.max(1), Ordering::Release);
        Ok(())
    }

    /// Sends the PAT ids seen since the last report, at most once a minute.
    async fn report_usage(&self, now: u64) {
        if self.options.usage_urls.is_empty() {
            return;
        }
        if now.saturating_sub(self.reported_at.load(Ordering::Relaxed)) < USAGE_REPORT_EVERY {
            return;
        }
        let ids: Vec<String> = self
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
            .collect();
        if ids.is_empty() {
            return;
        }
        self.reported_at.store(now, Ordering::Relaxed);
        let body = serde_json::json!({ "ids": ids }).to_string();
        for url in &self.options.usage_urls {
            let sent = self
                .client
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(_) => return,
                // Last-used is informational: the next node, then nothing.
                Err(e) => tracing::debug!(error = %e, "PAT usage report failed"),
            }
        }
    }
}

/// Polls the feed every `poll_interval` while the authorizer lives.
pub(crate) async fn poll_loop(feed: Weak<Revocations>, every: Duration) {
    let mut failing_since: Option<u64> = None;
    loop {
        tokio::time::sleep(every).await;
        let Some(feed) = feed.upgrade() else { return };
        let now = authproxy_core::clock::now();
        match feed.poll(now).await {
            Ok(()) => {
                if failing_since.take().is_some() {
                    tracing::info!("revocation feed readable again");
                }
            }
            Err(e) => {
                // Log the first failure of a run, not one line per second.
                if failing_since.is_none() {
                    failing_since = Some(now);
                    tracing::warn!(error = %e,
                        "revocation feed unreadable; personal access tokens are refused once it is stale");
                }
            }
        }
        feed.report_usage(now).await;
    }
}
