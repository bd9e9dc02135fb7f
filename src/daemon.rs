//! The sidecar daemon's lifecycle: start-up, grant renewal, the token file,
//! and reload on SIGHUP. It owns the pieces ([`Sidecar`], [`GrantSource`],
//! [`Proxy`]) and hands them to the routes ([`crate::server`]); none of them
//! reaches back up.
//!
//! Grant writers (renewal and reload) are serialised, so a renewal that
//! interleaves with a reload can never install a grant for the old ceiling
//! after the reload installed the new one.
//!
//! Renewal: embedded grants two thirds into their life
//! ([`Grant::renew_at`]); remote grants at a random point between 45 % and
//! 55 % of their life, so that sidecars started together do not renew
//! together, with half the life left as margin for an issuer outage. A
//! failed renewal is retried after 1 s, doubling to 5 min, each pause drawn
//! between half and all of it; tokens keep being minted from the current
//! grant meanwhile, until it expires.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use authproxy_core::WorkloadId;
use authproxy_core::clock;
use authproxy_core::grant::Grant;
use authproxy_core::keys::{self, KeyError, PublicKey, SigningKey};
use authproxy_core::token::MintError;
use tokio::sync::watch;

use crate::config::{Config, SinkConfig};
use authproxy_core::grant::GrantClaims;

use crate::grant_source::{Change, GrantError, GrantSource, Refusal, SourceError};
use crate::proxy::Proxy;
use crate::server::{self, Services};
use crate::sidecar::{Sidecar, TokenSettings};
use crate::sink::{SinkError, write_token};
use crate::telemetry::SidecarMetrics;

/// The first pause after a failed grant request; it doubles each time.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest pause between grant requests that keep failing.
pub const MAX_RETRY: Duration = Duration::from_secs(300);
/// Remote grants are renewed at a random point of their life in
/// `[RENEW_FROM, RENEW_FROM + RENEW_SPREAD)`.
const RENEW_FROM: f64 = 0.45;
/// See [`RENEW_FROM`].
const RENEW_SPREAD: f64 = 0.10;
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
    /// No first grant: signing failed.
    #[error(transparent)]
    Grant(#[from] GrantError),
    /// Remote mode: the bootstrap credential cannot be read.
    #[error("{config}: {source}")]
    Bootstrap {
        /// The config file.
        config: PathBuf,
        /// Why ([`GrantError::Bootstrap`]).
        source: GrantError,
    },
    /// Remote mode: the issuer refused the bootstrap credential (401, 403,
    /// 404): it is not one the issuer knows, or not for this workload and
    /// environment.
    #[error("{config}: `trust.bootstrap` = {spec}: {source}")]
    Refused {
        /// The config file.
        config: PathBuf,
        /// `trust.bootstrap` (where the credential is, never the credential).
        spec: String,
        /// The refusal.
        source: Refusal,
    },
    /// Remote mode: no issuer gave a grant within `trust.initial_grant_timeout`.
    #[error("{config}: no grant within `trust.initial_grant_timeout` = {}: {source}", humantime::format_duration(*waited))]
    NoFirstGrant {
        /// The config file.
        config: PathBuf,
        /// How long it tried.
        waited: Duration,
        /// The last attempt's failure.
        source: GrantError,
    },
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
        source: crate::proxy::SetupError,
    },
}

impl StartupError {
    /// The exit status `authproxy serve` ends with: 64 (`EX_USAGE`) when the
    /// configuration or what it points at is wrong — including a bootstrap
    /// credential the issuer refuses —; 1 when the issuer stayed
    /// unreachable, which a restart later may cure.
    pub fn is_usage(&self) -> bool {
        !matches!(self, Self::NoFirstGrant { .. })
    }
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
    ///
    /// In remote mode the first grant is asked for until
    /// `trust.initial_grant_timeout` runs out, with the renewal backoff,
    /// while the issuers are unreachable or failing; a refused or
    /// unreadable bootstrap credential stops start-up at once.
    pub async fn start(config: Config, now: u64) -> Result<Self, StartupError> {
        keys::self_test()?;
        let source = GrantSource::from_config(&config)?;
        // The sidecar key lives in memory only: it is never written
        // anywhere, so it dies with the process.
        let key = SigningKey::generate()?;
        let grant = match config.trust.remote() {
            None => source.obtain(key.public(), now).await?,
            Some(remote) => first_grant(&source, key.public(), remote.initial_grant_timeout)
                .await
                .map_err(|(waited, e)| match e {
                    GrantError::Refused(source) => StartupError::Refused {
                        config: config.file.clone(),
                        spec: remote.bootstrap.to_string(),
                        source,
                    },
                    e @ GrantError::Bootstrap { .. } => StartupError::Bootstrap {
                        config: config.file.clone(),
                        source: e,
                    },
                    e => StartupError::NoFirstGrant {
                        config: config.file.clone(),
                        waited,
                        source: e,
                    },
                })
                .inspect(|g| {
                    let c = g.claims();
                    tracing::info!(jti = %c.jti, exp = c.exp, scope = %c.scope, "grant received from the issuer");
                })?,
        };
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
    /// renewal goes on with the ceiling in force (within the grace). In
    /// remote mode the bootstrap credential is read again and the issuers
    /// asked in order. On failure the current grant stays in force until
    /// it expires. Counted in `authproxy_grant_renewals_total{result}`.
    pub async fn renew(&self, now: u64) -> Result<(), GrantError> {
        let _writer = self.grant_writer.lock().await;
        let change = match self.services.source.reload(now).await {
            Ok(change) => change,
            Err(e) => {
                self.reload_failed(&e, now);
                Change::default()
            }
        };
        let renewed = self.replace_grant(change, now).await;
        let metrics = &self.services.metrics;
        match &renewed {
            Ok(grant) => {
                metrics.grant_renewal("ok");
                tracing::info!(jti = %grant.jti, exp = grant.exp, scope = %grant.scope, "grant renewed");
            }
            Err(e) => metrics.grant_renewal(e.result_label()),
        }
        renewed.map(|_| ())
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
        if change.narrowed || source.fresh_key_per_grant() {
            let key = SigningKey::generate()?;
            let grant = source.obtain(key.public(), now).await?;
            let claims = grant.claims().clone();
            sidecar.rotate(key, grant);
            if change.narrowed {
                tracing::info!(kid = %claims.cnf.jkt, "authorizations narrowed; sidecar key rotated");
            }
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

    /// When the current grant should be renewed: two thirds into its life
    /// for the embedded source, which cannot be down; a random point of
    /// 45–55 % for the issuer's (see the module doc).
    fn renewal_due(&self, grant: &Grant) -> u64 {
        match self.config().trust.remote() {
            None => grant.renew_at(),
            Some(_) => remote_renew_at(grant, random_unit()),
        }
    }

    /// Renews the grant when it is due, forever; on failure retries with
    /// [`Backoff`]. A refused credential is logged by the source once per
    /// change of outcome, so it is not logged again here.
    async fn renew_forever(self: Arc<Self>) {
        let mut backoff = Backoff::default();
        // The due time drawn for the grant in force, by its `jti`: drawn
        // once per grant, whoever installed it (a SIGHUP renews too).
        let mut scheduled: Option<(String, u64)> = None;
        loop {
            let grant = self.sidecar().grant();
            let jti = &grant.claims().jti;
            let due = match &scheduled {
                Some((j, due)) if j == jti => *due,
                _ => {
                    backoff = Backoff::default();
                    let due = self.renewal_due(&grant);
                    scheduled = Some((jti.clone(), due));
                    due
                }
            };
            let now = clock::now();
            if due > now {
                tokio::time::sleep(Duration::from_secs(due - now)).await;
                continue;
            }
            if let Err(e) = self.renew(now).await {
                let pause = backoff.next_pause();
                let left = grant.claims().exp.saturating_sub(now);
                if matches!(e, GrantError::Refused(_)) {
                    tracing::debug!(error = %e, retry_in = ?pause, "grant renewal refused; retrying");
                } else {
                    tracing::warn!(error = %e, retry_in = ?pause, grant_valid_for_secs = left, "grant renewal failed; tokens are still minted from the current grant until it expires");
                }
                tokio::time::sleep(pause).await;
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
    /// In remote mode: re-read the bootstrap credential and renew now.
    async fn reload_on_sighup(self: Arc<Self>) {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload disabled");
            return;
        };
        while hup.recv().await.is_some() {
            if self.config().trust.remote().is_some() {
                if let Err(e) = self.renew(clock::now()).await {
                    tracing::error!(error = %e, "SIGHUP: no new grant; the current one stays in force until it expires");
                }
                continue;
            }
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

/// Asks `source` for a first grant until one comes, the failure needs a
/// new credential, or `timeout` has passed (then the last failure, and how
/// long it tried). The pauses are the renewal [`Backoff`]'s, cut at the
/// deadline.
async fn first_grant(
    source: &GrantSource,
    key: &PublicKey,
    timeout: Duration,
) -> Result<Grant, (Duration, GrantError)> {
    let started = tokio::time::Instant::now();
    let mut backoff = Backoff::default();
    loop {
        let e = match source.obtain(key, clock::now()).await {
            Ok(grant) => return Ok(grant),
            Err(e) => e,
        };
        let waited = started.elapsed();
        let left = timeout.saturating_sub(waited);
        if e.needs_new_credential() || left.is_zero() {
            return Err((waited, e));
        }
        let pause = backoff.next_pause().min(left);
        tracing::warn!(error = %e, retry_in = ?pause, "no first grant yet; retrying");
        tokio::time::sleep(pause).await;
    }
}

/// When a remote grant is renewed: at `RENEW_FROM + unit × RENEW_SPREAD`
/// of its life, `unit` in `[0, 1)` (random in use, a parameter for tests).
pub fn remote_renew_at(grant: &Grant, unit: f64) -> u64 {
    let c = grant.claims();
    let life = c.exp.saturating_sub(c.iat);
    let fraction = RENEW_FROM + unit.clamp(0.0, 1.0) * RENEW_SPREAD;
    // f64 holds every lifetime a grant may have (≤ 7 days) exactly; the
    // cast saturates, and the product stays within `life`.
    let offset = (life as f64 * fraction) as u64;
    c.iat.saturating_add(offset.min(life))
}

/// Pauses between failed grant requests: [`FIRST_RETRY`], doubling up to
/// [`MAX_RETRY`], each drawn between half and all of it ("equal jitter"),
/// so that sidecars that lost their issuer together do not come back in
/// step.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: FIRST_RETRY }
    }
}

impl Backoff {
    /// The next pause, with jitter.
    pub fn next_pause(&mut self) -> Duration {
        self.next_pause_with(random_unit())
    }

    /// The next pause for a given draw `unit` in `[0, 1)`.
    pub fn next_pause_with(&mut self, unit: f64) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(MAX_RETRY);
        base.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }
}

/// A number in `[0, 1)` that differs between calls and processes: enough
/// for jitter, which needs no secrecy (std's `RandomState` is seeded from
/// the OS once per thread and moves on at each instance).
fn random_unit() -> f64 {
    use std::hash::BuildHasher as _;
    let bits = std::hash::RandomState::new().hash_one(std::time::Instant::now());
    // The top 53 bits, as an f64 in [0, 1).
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use authproxy_core::ScopeSet;
    use authproxy_core::grant::GrantRequest;
    use authproxy_core::keys::random_id;

    fn grant(iat: u64, ttl: u64) -> Grant {
        let root = SigningKey::generate().unwrap();
        let key = SigningKey::generate().unwrap();
        Grant::issue(
            &root,
            GrantRequest {
                issuer: "urn:test",
                workload: &"app/web".parse().unwrap(),
                environment: &authproxy_core::Environment::parse("main").unwrap(),
                ceiling: &ScopeSet::parse("env:view").unwrap(),
                sidecar_key: key.public(),
                ttl_secs: ttl,
            },
            iat,
            random_id(),
        )
        .unwrap()
    }

    #[test]
    fn remote_grants_are_renewed_between_45_and_55_percent_of_their_life() {
        let g = grant(1_000, 1_000);
        assert_eq!(remote_renew_at(&g, 0.0), 1_450);
        assert_eq!(remote_renew_at(&g, 0.5), 1_500);
        assert_eq!(remote_renew_at(&g, 0.999_999), 1_549);
        for _ in 0..100 {
            let at = remote_renew_at(&g, random_unit());
            assert!((1_450..1_550).contains(&at), "{at}");
        }
        // A 24 h grant: between 10.8 h and 13.2 h.
        let g = grant(0, 86_400);
        assert_eq!(remote_renew_at(&g, 0.0), 38_880);
        assert_eq!(remote_renew_at(&g, 1.0), 47_520);
    }

    #[test]
    fn retries_start_at_one_second_and_double_to_five_minutes_with_jitter() {
        let mut b = Backoff::default();
        let full: Vec<u64> = (0..12).map(|_| b.next_pause_with(1.0).as_secs()).collect();
        assert_eq!(full, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        let mut b = Backoff::default();
        assert_eq!(b.next_pause_with(0.0), Duration::from_millis(500));
        assert_eq!(b.next_pause_with(0.0), Duration::from_secs(1));
        let mut b = Backoff::default();
        for _ in 0..20 {
            let p = b.next_pause();
            assert!(p <= MAX_RETRY && p >= FIRST_RETRY / 2, "{p:?}");
        }
    }

    #[test]
    fn jitter_draws_differ() {
        let draws: std::collections::HashSet<u64> =
            (0..50).map(|_| random_unit().to_bits()).collect();
        assert!(draws.len() > 40);
        assert!((0..1000).all(|_| (0.0..1.0).contains(&random_unit())));
    }
}
