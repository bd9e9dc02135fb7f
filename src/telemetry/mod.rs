//! Metrics (Prometheus text format via `prometheus-client`), request ids,
//! and log setup. Nothing here ever records a token, a grant or a key:
//! labels are workload ids, results and error codes.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Request};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tower_http::request_id::{MakeRequestId, RequestId};

mod json_log;

pub use json_log::{JsonLine, JsonSpanFields};

/// Labels of `authproxy_tokens_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// The workload id.
    pub workload: String,
    /// `issued`, `reused`, or the OAuth2 error code.
    pub result: String,
}

/// Labels of `authproxy_proxy_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProxyLabels {
    /// Status class of the answer: `2xx`, `4xx`, `5xx`, …
    pub status: String,
}

/// Labels of `authproxy_proxy_upstream_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    /// `unreachable` or `timeout`.
    pub kind: String,
}

/// Labels of `authproxy_grant_renewals_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RenewalLabels {
    /// `ok`, `refused` (the issuer refused the bootstrap credential),
    /// `unavailable` (no issuer answered with a grant that verifies),
    /// `bootstrap_unreadable`, or `error`.
    pub result: String,
}

/// The sidecar's metrics.
#[derive(Debug)]
pub struct SidecarMetrics {
    registry: Registry,
    /// Token requests by workload and result.
    pub tokens: Family<TokenLabels, Counter>,
    /// Token endpoint latency, seconds.
    pub token_latency: Histogram,
    /// Seconds until the current grant expires (set at scrape).
    pub grant_expiry: Gauge,
    /// Proxied requests by status class.
    pub proxy_requests: Family<ProxyLabels, Counter>,
    /// Proxy latency to response headers, seconds.
    pub proxy_latency: Histogram,
    /// Upstream failures by kind.
    pub proxy_upstream_errors: Family<UpstreamErrorLabels, Counter>,
    /// Reloads of the declarations that failed (SIGHUP or renewal).
    pub reload_failures: Counter,
    /// Grant renewals by result.
    pub grant_renewals: Family<RenewalLabels, Counter>,
    /// `proxy_requests` by status class (index 1 for `1xx`, …), looked up
    /// once: the family's lookup builds and hashes a label per request.
    proxy_by_class: [std::sync::OnceLock<Counter>; 10],
}

/// Latency buckets from 10 µs to ~5 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_01, 3.0, 12)
}

impl Default for SidecarMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("authproxy");
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "tokens",
            "Token requests by workload and result",
            tokens.clone(),
        );
        let token_latency = Histogram::new(latency_buckets());
        registry.register(
            "token_request_duration_seconds",
            "Token endpoint latency",
            token_latency.clone(),
        );
        let grant_expiry = Gauge::default();
        registry.register(
            "grant_expiry_seconds",
            "Seconds until the sidecar's grant expires",
            grant_expiry.clone(),
        );
        let proxy_requests = Family::<ProxyLabels, Counter>::default();
        registry.register(
            "proxy_requests",
            "Proxied requests by status class",
            proxy_requests.clone(),
        );
        let proxy_latency = Histogram::new(latency_buckets());
        registry.register(
            "proxy_request_duration_seconds",
            "Proxy latency until the upstream's response headers",
            proxy_latency.clone(),
        );
        let proxy_upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "proxy_upstream_errors",
            "Upstream failures by kind",
            proxy_upstream_errors.clone(),
        );
        let reload_failures = Counter::default();
        registry.register(
            "reload_failures",
            "Reloads of the declarations that failed (the previous ones stay in force within trust.reload_grace)",
            reload_failures.clone(),
        );
        let grant_renewals = Family::<RenewalLabels, Counter>::default();
        registry.register(
            "grant_renewals",
            "Grant renewals by result (remote mode: ok, refused, unavailable, bootstrap_unreadable)",
            grant_renewals.clone(),
        );
        Self {
            proxy_by_class: Default::default(),
            grant_renewals,
            reload_failures,
            registry,
            tokens,
            token_latency,
            grant_expiry,
            proxy_requests,
            proxy_latency,
            proxy_upstream_errors,
        }
    }
}

impl SidecarMetrics {
    /// Counts one token request.
    pub fn token_result(&self, workload: &str, result: &str, took: Duration) {
        self.tokens
            .get_or_create(&TokenLabels {
                workload: workload.to_owned(),
                result: result.to_owned(),
            })
            .inc();
        self.token_latency.observe(took.as_secs_f64());
    }

    /// Counts one grant renewal.
    pub fn grant_renewal(&self, result: &str) {
        self.grant_renewals
            .get_or_create(&RenewalLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts one proxied request.
    pub fn proxy_result(&self, status: u16, took: Duration) {
        let class = usize::from(status / 100).min(9);
        self.proxy_by_class[class]
            .get_or_init(|| {
                self.proxy_requests
                    .get_or_create(&ProxyLabels {
                        status: format!("{class}xx"),
                    })
                    .clone()
            })
            .inc();
        self.proxy_latency.observe(took.as_secs_f64());
    }

    /// Counts one upstream failure.
    pub fn upstream_error(&self, kind: &str) {
        self.proxy_upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The request id header.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Random request ids (`x-request-id`), unless the client sent one: 128
/// bits, base64url, like [`authproxy_core::keys::random_id`].
///
/// Not drawn from the CSPRNG per request (aws-lc's DRBG, 1.6 k instructions
/// with its fork and reseed checks): a request id is a correlation handle,
/// not a secret. SipHash under a key drawn once per process, over a
/// counter: unique in the process, unguessable without the key, 0.2 k
/// instructions.
#[derive(Clone, Copy, Debug, Default)]
pub struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&request_id())
            .ok()
            .map(RequestId::new)
    }
}

fn request_id() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static KEY: OnceLock<std::hash::RandomState> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let key = KEY.get_or_init(std::hash::RandomState::new);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut bytes = [0u8; 16];
    for (half, chunk) in [0u8, 1].into_iter().zip(bytes.chunks_exact_mut(8)) {
        let mut h = key.build_hasher();
        h.write_u64(n);
        h.write_u8(half);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global tracing subscriber: `RUST_LOG` filter (default
/// `info`), to stderr, colours only on a terminal.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(ansi).init(),
        // The stock `json()` line, written by a leaner formatter.
        LogFormat::Json => builder
            .fmt_fields(JsonSpanFields)
            .event_format(JsonLine)
            .init(),
    }
}

/// An error with its chain of causes ("connection refused" is in a source).
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_128_bit_base64url() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| request_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert_eq!(id.len(), 22, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
        }
    }
}
