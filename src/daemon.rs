//! The sidecar daemon's lifecycle: start-up, grant renewal, the token file,
//! and reload on SIGHUP. It owns the pieces ([`Sidecar`], [`GrantSource`],
//! [`Proxy`]) and hands them to the routes ([`crate::server`]); none of them
//! reaches back up.
//!
//! Grant writers (renewal and reload) are serialised, so a renewal that
//! interleaves with a reload can never install a grant for the old ceiling
//! after the reload installed the new one.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use authproxy_core::WorkloadId;
use authproxy_core::clock;
use authproxy_core::keys::{self, KeyError, SigningKey};
use authproxy_core::token::MintError;
use tokio::sync::watch;

use crate::config::{Config, SinkConfig};
use authproxy_core::grant::GrantClaims;

use crate::grant_source::{Change, GrantError, GrantSource, SourceError};
use crate::proxy::Proxy;
use crate::server::{self, Services};
use crate::sidecar::{Sidecar, TokenSettings};
use crate::sink::{SinkError, write_token};
use crate::telemetry::SidecarMetrics;

/// How often a failed grant renewal is retried.
const RENEW_RETRY: Duration = Duration::from_secs(10);
/// How long to wait before retrying a failed token file write.
const SINK_RETRY_SECS: u64 = 5;

/// Why the sidecar could not start. Every variant is a problem with the
/// configuration or what it points at (exit status 64).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartupError {
    /// The grant source (declarations, root key) could not be set up.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Key generation or the crypto self-test failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// No first grant.
    #[error(transparent)]
    Grant(#[from] GrantError),
    /// The first token file could not be written.
    #[error("{config}: `sink.path`: {source}")]
    Sink {
        /// The config file.
        config: PathBuf,
        /// Why.
        source: SinkError,
    },
    /// `[sink]` is set but the workload declares no authorizations.
    #[error(
        "{config}: `sink.path` is set but {id} declares no authorizations, so there is no token to write"
    )]
    SinkWithoutScopes {
        /// The config file.
        config: PathBuf,
        /// The workload.
        id: WorkloadId,
    },
    /// The forward proxy's HTTP client could not be built.
    #[error("{config}: `proxy.upstream`: {source}")]
    Proxy {
        /// The config file.
        config: PathBuf,
        /// Why.
        source: reqwest::Error,
    },
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The declarations are unreadable or invalid, or no longer declare
    /// this workload.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// No grant for the new ceiling.
    #[error(transparent)]
    Grant(#[from] GrantError),
    /// The token file could not be rewritten.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// A running sidecar daemon.
#[derive(Debug)]
pub struct Daemon {
    services: Services,
    /// Serialises grant writers (renewal, reload).
    grant_writer: tokio::sync::Mutex<()>,
    /// When the token file is next due (unix seconds); the token file task
    /// waits on it, and a reload moves it.
    token_file_due: watch::Sender<u64>,
}

impl Daemon {
    /// Builds the daemon from a validated configuration: crypto self-test,
    /// grant source, an in-memory sidecar key, the first grant, the proxy,
    /// and the first token file (so a wrong path stops it at start).
    pub async fn start(config: Config, now: u64) -> Result<Self, StartupError> {
        keys::self_test()?;
        let source = GrantSource::from_config(&config)?;
        // The sidecar key lives in memory only: it is never written
        // anywhere, so it dies with the process.
        let key = SigningKey::generate()?;
        let grant = source.obtain(key.public(), now).await?;
        let sidecar = Sidecar::new(
            key,
            grant,
            TokenSettings {
                audience: config.tokens.audience.clone(),
                reuse: config.tokens.reuse,
            },
        );
        let proxy = match &config.proxy {
            Some(p) => Some(Arc::new(Proxy::new(p).map_err(|source| {
                StartupError::Proxy {
                    config: config.file.clone(),
                    source,
                }
            })?)),
            None => None,
        };
        let daemon = Self {
            services: Services {
                config: Arc::new(config),
                sidecar: Arc::new(sidecar),
                source: Arc::new(source),
                proxy,
                metrics: Arc::new(SidecarMetrics::default()),
            },
            grant_writer: tokio::sync::Mutex::new(()),
            token_file_due: watch::Sender::new(0),
        };
        if let Some(sink) = &daemon.services.config.sink {
            if daemon.sidecar().ceiling().is_empty() {
                return Err(StartupError::SinkWithoutScopes {
                    config: daemon.config().file.clone(),
                    id: daemon.config().workload.id.clone(),
                });
            }
            daemon
                .write_token_file(sink, now)
                .map_err(|source| StartupError::Sink {
                    config: daemon.config().file.clone(),
                    source,
                })?;
        }
        Ok(daemon)
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.services.config
    }

    /// The key, grant and reuse cache.
    pub fn sidecar(&self) -> &Arc<Sidecar> {
        &self.services.sidecar
    }

    /// What the routes are built from.
    pub fn services(&self) -> Services {
        self.services.clone()
    }

    /// When the token file is next due (unix seconds; 0 without `[sink]`),
    /// as a channel that changes at every write.
    pub fn token_file_due(&self) -> watch::Receiver<u64> {
        self.token_file_due.subscribe()
    }

    /// Makes the token file due now: the token file task rewrites it at
    /// once (e.g. after rotating what it should hold).
    pub fn rewrite_token_file(&self) {
        self.token_file_due.send_replace(0);
    }

    /// Serves on every listener until `shutdown`, renewing the grant,
    /// keeping the token file fresh and reloading on SIGHUP meanwhile.
    pub async fn run(
        self: Arc<Self>,
        listeners: Vec<tokio::net::TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let mut tasks = vec![
            tokio::spawn(Arc::clone(&self).renew_forever()),
            tokio::spawn(Arc::clone(&self).reload_on_sighup()),
        ];
        if let Some(sink) = self.config().sink.clone() {
            tasks.push(tokio::spawn(Arc::clone(&self).keep_token_file(sink)));
        }
        let served = server::serve(listeners, self.services(), shutdown).await;
        for t in tasks {
            t.abort();
        }
        served
    }

    /// Ready means: holds a valid grant, and the declarations behind it
    /// have not been failing to reload for longer than `trust.reload_grace`.
    pub fn is_ready(&self, now: u64) -> bool {
        self.services.is_ready(now)
    }

    /// Replaces the grant with a fresh one from the source. The embedded
    /// source re-reads the declarations first, so a renewal never re-issues
    /// authorizations the project withdrew; if they cannot be read, the
    /// renewal goes on with the ceiling in force (within the grace).
    pub async fn renew(&self, now: u64) -> Result<(), GrantError> {
        let _writer = self.grant_writer.lock().await;
        let change = match self.services.source.reload(now).await {
            Ok(change) => change,
            Err(e) => {
                self.reload_failed(&e, now);
                Change::default()
            }
        };
        let grant = self.replace_grant(change, now).await?;
        tracing::info!(jti = %grant.jti, exp = grant.exp, "grant renewed");
        Ok(())
    }

    /// Re-reads the declarations. If they are valid, new tokens use them at
    /// once: a new grant is installed when the ceiling changed — under a new
    /// sidecar key when something was withdrawn, so the wider grant is bound
    /// to no live key — and the token file is rewritten. A workload no
    /// longer declared drops to no authorizations. If they cannot be read,
    /// nothing changes (the error says why) until `trust.reload_grace` has
    /// passed; then the sidecar turns not-ready. Returns whether the ceiling
    /// changed.
    pub async fn reload(&self, now: u64) -> Result<bool, ReloadError> {
        let _writer = self.grant_writer.lock().await;
        let change = self
            .services
            .source
            .reload(now)
            .await
            .inspect_err(|e| self.reload_failed(e, now))?;
        if change.changed {
            self.replace_grant(change, now).await?;
            if let Some(sink) = &self.services.config.sink {
                self.write_token_file(sink, now)?;
            }
        }
        Ok(change.changed)
    }

    /// Obtains and installs a grant for the current ceiling; under a fresh
    /// key when the ceiling narrowed. Callers hold `grant_writer`.
    async fn replace_grant(&self, change: Change, now: u64) -> Result<GrantClaims, GrantError> {
        let sidecar = self.sidecar();
        let source = &self.services.source;
        if change.narrowed {
            let key = SigningKey::generate()?;
            let grant = source.obtain(key.public(), now).await?;
            let claims = grant.claims().clone();
            sidecar.rotate(key, grant);
            tracing::info!(kid = %claims.cnf.jkt, "authorizations narrowed; sidecar key rotated");
            Ok(claims)
        } else {
            let grant = source.obtain(&sidecar.public_key(), now).await?;
            let claims = grant.claims().clone();
            sidecar.install(grant);
            Ok(claims)
        }
    }

    /// Counts a failed reload, and logs the first of a run of failures
    /// (the SIGHUP handler reports each one it triggers).
    fn reload_failed(&self, e: &SourceError, now: u64) {
        self.services.metrics.reload_failures.inc();
        let error = e.to_string().replace("\n  - ", " | ");
        if self.services.source.failing_since() == Some(now) {
            let grace = self.config().trust.reload_grace.as_secs();
            tracing::warn!(%error, not_ready_at = now.saturating_add(grace), "declarations cannot be reloaded; the previous ones stay in force until trust.reload_grace runs out");
        } else {
            tracing::debug!(%error, "declarations still cannot be reloaded");
        }
    }

    /// Mints a token for the whole ceiling, writes it, and schedules the
    /// next write.
    fn write_token_file(&self, sink: &SinkConfig, now: u64) -> Result<(), SinkError> {
        let sidecar = self.sidecar();
        let issued = sidecar
            .mint_fresh(&sidecar.ceiling(), self.config().tokens.ttl.as_secs(), now)
            .map_err(|source: MintError| SinkError::Mint {
                path: sink.path.clone(),
                source,
            })?;
        let due = write_token(sink, &issued.minted)?;
        self.token_file_due.send_replace(due);
        Ok(())
    }

    /// Renews the grant when it asks to be ([`authproxy_core::grant::Grant::renew_at`]),
    /// forever; retries every [`RENEW_RETRY`] on failure.
    async fn renew_forever(self: Arc<Self>) {
        loop {
            let now = clock::now();
            let due = self.sidecar().grant().renew_at();
            if due > now {
                tokio::time::sleep(Duration::from_secs(due - now)).await;
                continue;
            }
            if let Err(e) = self.renew(now).await {
                tracing::error!(error = %e, "grant renewal failed; retrying");
                tokio::time::sleep(RENEW_RETRY).await;
            }
        }
    }

    /// Keeps the token file fresh: waits until it is due, or until a
    /// reload moved its due time, then rewrites it.
    async fn keep_token_file(self: Arc<Self>, sink: SinkConfig) {
        let mut due = self.token_file_due.subscribe();
        loop {
            let next = *due.borrow_and_update();
            let now = clock::now();
            if next > now {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(next - now)) => {}
                    changed = due.changed() => if changed.is_err() { return },
                }
                continue;
            }
            if let Err(e) = self.write_token_file(&sink, now) {
                tracing::error!(error = %e, "token file not refreshed; retrying");
                self.token_file_due.send_replace(now + SINK_RETRY_SECS);
            }
        }
    }

    /// SIGHUP: re-read the declarations; on error keep serving the old ones.
    async fn reload_on_sighup(self: Arc<Self>) {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload disabled");
            return;
        };
        while hup.recv().await.is_some() {
            match self.reload(clock::now()).await {
                Ok(true) => {
                    tracing::info!(scope = %self.sidecar().ceiling(), "declarations reloaded; new grant issued");
                }
                Ok(false) => tracing::info!("declarations reloaded; authorizations unchanged"),
                Err(e) => {
                    // One log line per event: fold the problem list.
                    let error = e.to_string().replace("\n  - ", " | ");
                    tracing::error!(%error, "reload refused; keeping the previous declarations");
                }
            }
        }
    }
}
