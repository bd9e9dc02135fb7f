//! The issuer's configuration (DESIGN §8): `config/issuer.toml` through the
//! `config` crate, overridden by `AUTHPROXY__SECTION__KEY` environment
//! variables, then parsed into typed values. Every error names the file, the
//! key and the problem, so `authproxy issuer serve` can refuse to start
//! (exit status 64) before it binds a port or opens the store.
//!
//! Sections used by later slices of the issuer (`[keys]`, `[credentials]`)
//! are parsed and validated now, so the shipped file is valid and a typo in
//! them fails today.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use authproxy_core::duration::parse_in as duration_in;

use authproxy_core::grant::MAX_GRANT_LIFETIME;
use authproxy_core::pat::MAX_PAT_LIFETIME;
use authproxy_core::{Environment, WorkloadId};
use serde::Deserialize;

use crate::store::PostgresUrl;

/// Default `[server] listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8400";
/// Default `[issuer] url`.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8400";
/// Default `[issuer] state_dir`.
pub const DEFAULT_STATE_DIR: &str = ".authproxy-issuer";
/// Shortest grant lifetime a config may set.
pub const MIN_GRANT_TTL: Duration = Duration::from_secs(60);
/// Longest grant lifetime a config may set (what verifiers accept).
pub const MAX_GRANT_TTL: Duration = Duration::from_secs(MAX_GRANT_LIFETIME);
/// Default and highest `[pats] max_valid_minutes`: 366 days, the longest
/// lifetime verifiers accept for a PAT.
pub const MAX_PAT_VALID_MINUTES: u64 = MAX_PAT_LIFETIME / 60;

const DAY: u64 = 24 * 3600;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file is missing, not TOML, has an unknown key or a value of the wrong kind.
    #[error("{file}: {message}")]
    Load {
        /// The config file.
        file: PathBuf,
        /// What the loader said.
        message: String,
    },
    /// A key has a value outside what it allows.
    #[error("{file}: `{key}` {problem}")]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// The dotted key, e.g. `issuer.grant_ttl` or `kubernetes.bindings[0].workload`.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// The whole issuer configuration, validated.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IssuerConfig {
    /// The file it was loaded from.
    pub file: PathBuf,
    /// `[server]`
    pub server: ServerConfig,
    /// `[issuer]`
    pub issuer: IssuerSection,
    /// `[store]`
    pub store: StoreConfig,
    /// `[keys]`: root-key rotation (DESIGN §10).
    pub keys: KeysConfig,
    /// `[tokens]`: tokens exchanged from PATs.
    pub tokens: TokensConfig,
    /// `[credentials]`: workload-credential rotation and its provider (DESIGN §10).
    pub credentials: CredentialsConfig,
    /// `[pats]`: personal access tokens.
    pub pats: PatsConfig,
    /// `[kubernetes]`, if sidecars may bootstrap with service-account tokens.
    pub kubernetes: Option<KubernetesConfig>,
}

/// `[server]`
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Address to bind (default `127.0.0.1:8400`).
    pub listen: SocketAddr,
    /// Header-read timeout of the serve loop (1 s – 10 s), if not its default.
    pub header_read_timeout: Option<Duration>,
    /// Most connections open at once, if not the serve loop's default.
    pub max_connections: Option<usize>,
    /// How long shutdown waits for in-flight requests (0 – 5 min), if not the default.
    pub shutdown_grace: Option<Duration>,
}

/// `[issuer]`
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IssuerSection {
    /// The public URL: `iss` of every grant, the RFC 8414 `issuer`, and the
    /// base of `jwks_uri` and `token_endpoint`. http(s), no trailing slash.
    pub url: String,
    /// This node's private directory: its root key and the admin token (0600).
    pub state_dir: PathBuf,
    /// Lifetime of the grants it issues, 1 min – 7 days.
    pub grant_ttl: Duration,
}

/// `[store]`
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoreConfig {
    /// Where the issuer's state lives.
    pub url: StoreUrl,
}

/// A store location.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreUrl {
    /// `sqlite://PATH`: a SQLite database file, created on first start.
    /// One node.
    Sqlite(PathBuf),
    /// `postgres://…`: a PostgreSQL database (which must exist) shared by
    /// every issuer node.
    Postgres(PostgresUrl),
}

impl fmt::Debug for StoreUrl {
    // Written by hand so that each variant decides what it prints: a SQLite
    // path holds no secret; a PostgreSQL URL shows its password as `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            Self::Postgres(url) => write!(f, "{url}"),
        }
    }
}

/// `[keys]`
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KeysConfig {
    /// How often a node's root key is rotated (1 h – 365 d, default 30 d).
    pub rotate_every: Duration,
    /// How long a new root key is published before it signs (0 – 24 h, default 10 min).
    pub publish_ahead: Duration,
}

/// `[tokens]`
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TokensConfig {
    /// `aud` of tokens exchanged from PATs without an RFC 8707 `resource`.
    pub audience: String,
}

/// `[credentials]`
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CredentialsConfig {
    /// How often workload credentials are rotated (1 d – 10 years, default 90 d).
    pub rotate_every: Duration,
    /// How long the previous version stays valid after a rotation (0 – 30 d, default 24 h).
    pub grace: Duration,
    /// Where new workload credential values go (the provider, DESIGN §10).
    pub provider: ProviderConfig,
}

/// Where a rotated workload credential's new value goes: `[credentials]
/// dir` (the built-in provider) or `command` (an external one). With
/// neither, workload credentials are not rotated: a new value nobody
/// receives would end the workload's access at the end of the grace.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProviderConfig {
    /// Neither `dir` nor `command`: no rotation of workload credentials.
    None,
    /// `dir`: one file per identity (`app/web` → `app_web`), 0600,
    /// replaced atomically — the layout `issuer sync --credentials-dir` writes.
    Dir(PathBuf),
    /// `command`: run with the task in its environment and the value on
    /// standard input, killed after `timeout`.
    Command {
        /// The program and its arguments.
        argv: Vec<String>,
        /// `command_timeout` (1 s – 1 h, default 10 min).
        timeout: Duration,
    },
}

/// `[pats]`
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PatsConfig {
    /// Longest lifetime a PAT may be created or updated with, in minutes
    /// (1 to 527040, the default: 366 days).
    pub max_valid_minutes: u64,
}

/// `[kubernetes]`: bootstrap with projected service-account tokens.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KubernetesConfig {
    /// The cluster's service-account token issuer (`iss`).
    pub issuer: String,
    /// Where the cluster's OIDC signing keys come from.
    pub jwks: KubernetesJwks,
    /// Which service account is which workload.
    pub bindings: Vec<KubernetesBinding>,
}

/// The source of the cluster's signing keys.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KubernetesJwks {
    /// `jwks_file`: a JWKS document on disk.
    File(PathBuf),
    /// `jwks_url`: fetched over http(s).
    Url(String),
}

/// `[[kubernetes.bindings]]`
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KubernetesBinding {
    /// Namespace of the service account.
    pub namespace: String,
    /// Name of the service account.
    pub service_account: String,
    /// The workload its tokens bootstrap.
    pub workload: WorkloadId,
    /// The environment of that workload.
    pub environment: Environment,
}

// The raw shapes: strings as written, checked below so that errors can name
// the key. `deny_unknown_fields` turns a typo into an error instead of a
// silently ignored setting.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    issuer: RawIssuer,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    keys: RawKeys,
    #[serde(default)]
    tokens: RawTokens,
    #[serde(default)]
    credentials: RawCredentials,
    #[serde(default)]
    pats: RawPats,
    kubernetes: Option<RawKubernetes>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    header_read_timeout: Option<String>,
    max_connections: Option<u32>,
    shutdown_grace: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    url: Option<String>,
    state_dir: Option<String>,
    grant_ttl: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    rotate_every: Option<String>,
    publish_ahead: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    audience: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    rotate_every: Option<String>,
    grace: Option<String>,
    dir: Option<String>,
    command: Option<Vec<String>>,
    command_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPats {
    max_valid_minutes: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKubernetes {
    issuer: Option<String>,
    jwks_file: Option<String>,
    jwks_url: Option<String>,
    #[serde(default)]
    bindings: Vec<RawBinding>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBinding {
    service_account: Option<String>,
    workload: Option<String>,
    environment: Option<String>,
}

impl IssuerConfig {
    /// Loads `file`, applies `AUTHPROXY__SECTION__KEY` overrides from the
    /// process environment, and validates every key.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(file, None)
    }

    /// As [`IssuerConfig::load`], with the environment given explicitly
    /// (`Some(map)`; tests) instead of the process's (`None`).
    pub fn load_with_env(
        file: &Path,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let load_err = |message: String| ConfigError::Load {
            file: file.to_owned(),
            message,
        };
        if !file.is_file() {
            return Err(load_err("config file not found".into()));
        }
        let environment = ::config::Environment::with_prefix("AUTHPROXY")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(env);
        let raw: Raw = ::config::Config::builder()
            .add_source(::config::File::from(file).format(::config::FileFormat::Toml))
            .add_source(environment)
            .build()
            .and_then(::config::Config::try_deserialize)
            .map_err(|e| load_err(e.to_string()))?;
        Validator { file }.validate(raw)
    }

    /// The admin token file, `<state_dir>/admin-token`.
    pub fn admin_token_file(&self) -> PathBuf {
        self.issuer.state_dir.join(crate::ADMIN_TOKEN_FILE)
    }

    /// `<issuer url>/.well-known/jwks.json`.
    pub fn jwks_uri(&self) -> String {
        format!("{}/.well-known/jwks.json", self.issuer.url)
    }

    /// `<issuer url>/oauth2/token`: the PAT exchange (DESIGN §9).
    pub fn token_endpoint(&self) -> String {
        format!("{}/oauth2/token", self.issuer.url)
    }
}

struct Validator<'a> {
    file: &'a Path,
}

impl Validator<'_> {
    fn invalid(&self, key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            key: key.into(),
            problem: problem.into(),
        }
    }

    fn duration(
        &self,
        key: &str,
        value: Option<&str>,
        default: &str,
        min: Duration,
        max: Duration,
    ) -> Result<Duration, ConfigError> {
        duration_in(value.unwrap_or(default), min, max).map_err(|p| self.invalid(key, p))
    }

    fn validate(&self, raw: Raw) -> Result<IssuerConfig, ConfigError> {
        let server = self.server(raw.server)?;
        let issuer = self.issuer(raw.issuer)?;
        let store = self.store(raw.store, &issuer.state_dir)?;

        let keys = KeysConfig {
            rotate_every: self.duration(
                "keys.rotate_every",
                raw.keys.rotate_every.as_deref(),
                "30d",
                Duration::from_secs(3600),
                Duration::from_secs(365 * DAY),
            )?,
            publish_ahead: self.duration(
                "keys.publish_ahead",
                raw.keys.publish_ahead.as_deref(),
                "10m",
                Duration::ZERO,
                Duration::from_secs(DAY),
            )?,
        };
        if keys.publish_ahead >= keys.rotate_every {
            return Err(self.invalid(
                "keys.publish_ahead",
                "must be shorter than `keys.rotate_every`",
            ));
        }

        let audience = raw
            .tokens
            .audience
            .unwrap_or_else(|| "http://127.0.0.1:8300".into());
        if audience.trim().is_empty() {
            return Err(self.invalid("tokens.audience", "must not be empty"));
        }

        let credentials = CredentialsConfig {
            rotate_every: self.duration(
                "credentials.rotate_every",
                raw.credentials.rotate_every.as_deref(),
                "90d",
                Duration::from_secs(DAY),
                Duration::from_secs(3650 * DAY),
            )?,
            grace: self.duration(
                "credentials.grace",
                raw.credentials.grace.as_deref(),
                "24h",
                Duration::ZERO,
                Duration::from_secs(30 * DAY),
            )?,
            provider: self.provider(
                raw.credentials.dir,
                raw.credentials.command,
                raw.credentials.command_timeout,
            )?,
        };

        let max_valid_minutes = raw.pats.max_valid_minutes.unwrap_or(MAX_PAT_VALID_MINUTES);
        if !(1..=MAX_PAT_VALID_MINUTES).contains(&max_valid_minutes) {
            return Err(self.invalid(
                "pats.max_valid_minutes",
                format!(
                    "= {max_valid_minutes} is out of range: 1 to {MAX_PAT_VALID_MINUTES} (366 days, the longest a PAT lives)"
                ),
            ));
        }

        let kubernetes = raw.kubernetes.map(|k| self.kubernetes(k)).transpose()?;

        Ok(IssuerConfig {
            file: self.file.to_owned(),
            server,
            issuer,
            store,
            keys,
            tokens: TokensConfig { audience },
            credentials,
            pats: PatsConfig { max_valid_minutes },
            kubernetes,
        })
    }

    fn provider(
        &self,
        dir: Option<String>,
        command: Option<Vec<String>>,
        timeout: Option<String>,
    ) -> Result<ProviderConfig, ConfigError> {
        let timeout = self.duration(
            "credentials.command_timeout",
            timeout.as_deref(),
            "10m",
            Duration::from_secs(1),
            Duration::from_secs(3600),
        )?;
        match (dir, command) {
            (Some(_), Some(_)) => Err(self.invalid(
                "credentials.dir",
                "and `credentials.command` are exclusive: set one",
            )),
            (Some(d), None) if d.trim().is_empty() => {
                Err(self.invalid("credentials.dir", "must not be empty"))
            }
            (Some(d), None) => Ok(ProviderConfig::Dir(PathBuf::from(d))),
            (None, Some(argv)) if argv.first().is_none_or(|p| p.trim().is_empty()) => Err(self
                .invalid(
                    "credentials.command",
                    "must name a program: [\"/path\", \"arg\", …]",
                )),
            (None, Some(argv)) => Ok(ProviderConfig::Command { argv, timeout }),
            (None, None) => Ok(ProviderConfig::None),
        }
    }

    fn server(&self, raw: RawServer) -> Result<ServerConfig, ConfigError> {
        let listen = raw.listen.unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen: SocketAddr = listen.parse().map_err(|_| {
            self.invalid(
                "server.listen",
                format!("`{listen}` is not an IP:PORT socket address"),
            )
        })?;
        let header_read_timeout = raw
            .header_read_timeout
            .map(|t| {
                duration_in(&t, Duration::from_secs(1), Duration::from_secs(10))
                    .map_err(|p| self.invalid("server.header_read_timeout", p))
            })
            .transpose()?;
        let max_connections = match raw.max_connections {
            Some(0) => return Err(self.invalid("server.max_connections", "must be at least 1")),
            n => n.map(|n| n as usize),
        };
        let shutdown_grace = raw
            .shutdown_grace
            .map(|t| {
                duration_in(&t, Duration::ZERO, Duration::from_secs(300))
                    .map_err(|p| self.invalid("server.shutdown_grace", p))
            })
            .transpose()?;
        Ok(ServerConfig {
            listen,
            header_read_timeout,
            max_connections,
            shutdown_grace,
        })
    }

    fn issuer(&self, raw: RawIssuer) -> Result<IssuerSection, ConfigError> {
        let url = raw.url.unwrap_or_else(|| DEFAULT_URL.into());
        let url = http_url(&url).map_err(|p| self.invalid("issuer.url", p))?;
        let state_dir = raw.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        if state_dir.trim().is_empty() {
            return Err(self.invalid("issuer.state_dir", "must not be empty"));
        }
        let grant_ttl = self.duration(
            "issuer.grant_ttl",
            raw.grant_ttl.as_deref(),
            "24h",
            MIN_GRANT_TTL,
            MAX_GRANT_TTL,
        )?;
        Ok(IssuerSection {
            url,
            state_dir: PathBuf::from(state_dir),
            grant_ttl,
        })
    }

    fn store(&self, raw: RawStore, state_dir: &Path) -> Result<StoreConfig, ConfigError> {
        let Some(url) = raw.url else {
            return Ok(StoreConfig {
                url: StoreUrl::Sqlite(state_dir.join("issuer.db")),
            });
        };
        let key = "store.url";
        if let Some(rest) = url.strip_prefix("sqlite://") {
            if rest.is_empty() || rest.contains('?') || rest.contains('#') {
                return Err(self.invalid(
                    key,
                    format!("`{url}` must be sqlite://PATH to a database file, without options"),
                ));
            }
            return Ok(StoreConfig {
                url: StoreUrl::Sqlite(PathBuf::from(rest)),
            });
        }
        // Never echo a postgres URL: it may carry a password.
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let url = PostgresUrl::parse(&url)
                .map_err(|problem| self.invalid(key, format!("the PostgreSQL URL {problem}")))?;
            return Ok(StoreConfig {
                url: StoreUrl::Postgres(url),
            });
        }
        Err(self.invalid(
            key,
            "must be sqlite://PATH (one node) or postgres://[USER@]HOST/DATABASE (several nodes)",
        ))
    }

    fn kubernetes(&self, raw: RawKubernetes) -> Result<KubernetesConfig, ConfigError> {
        let issuer = raw
            .issuer
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| self.invalid("kubernetes.issuer", "is required"))?;
        let jwks = match (raw.jwks_file, raw.jwks_url) {
            (Some(_), Some(_)) => {
                return Err(self.invalid(
                    "kubernetes.jwks_file",
                    "and `kubernetes.jwks_url` are exclusive: set one",
                ));
            }
            (None, None) => {
                return Err(self.invalid(
                    "kubernetes.jwks_file",
                    "or `kubernetes.jwks_url` is required",
                ));
            }
            (Some(f), None) if f.trim().is_empty() => {
                return Err(self.invalid("kubernetes.jwks_file", "must not be empty"));
            }
            (Some(f), None) => KubernetesJwks::File(PathBuf::from(f)),
            (None, Some(u)) => KubernetesJwks::Url(
                http_url(&u).map_err(|p| self.invalid("kubernetes.jwks_url", p))?,
            ),
        };
        let mut bindings: Vec<KubernetesBinding> = Vec::with_capacity(raw.bindings.len());
        for (i, b) in raw.bindings.into_iter().enumerate() {
            let key = |field: &str| format!("kubernetes.bindings[{i}].{field}");
            let required = |field: &str, v: Option<String>| {
                v.filter(|s| !s.trim().is_empty())
                    .ok_or_else(|| self.invalid(key(field), "is required"))
            };
            let sa = required("service_account", b.service_account)?;
            let (namespace, name) = sa
                .split_once(':')
                .filter(|(ns, name)| is_dns_label(ns) && is_dns_subdomain(name))
                .ok_or_else(|| {
                    self.invalid(
                        key("service_account"),
                        format!(
                            "`{sa}` is not NAMESPACE:NAME of a Kubernetes service account \
                             (lowercase DNS names)"
                        ),
                    )
                })?;
            let workload = required("workload", b.workload)?;
            let workload: WorkloadId =
                workload
                    .parse()
                    .map_err(|e: authproxy_core::workload::InvalidWorkloadId| {
                        self.invalid(key("workload"), e.to_string())
                    })?;
            let environment = required("environment", b.environment)?;
            let environment = Environment::parse(&environment)
                .map_err(|e| self.invalid(key("environment"), e.to_string()))?;
            let binding = KubernetesBinding {
                namespace: namespace.to_owned(),
                service_account: name.to_owned(),
                workload,
                environment,
            };
            // One service account bootstraps one workload: two bindings for
            // it would make the grant it gets depend on the file's order.
            if let Some(j) = bindings.iter().position(|o| {
                o.namespace == binding.namespace && o.service_account == binding.service_account
            }) {
                return Err(self.invalid(
                    key("service_account"),
                    format!("`{sa}` is already bound by kubernetes.bindings[{j}]"),
                ));
            }
            bindings.push(binding);
        }
        Ok(KubernetesConfig {
            issuer,
            jwks,
            bindings,
        })
    }
}

/// An absolute http(s) URL with a host and no query or fragment, returned
/// without a trailing slash so that `{url}/.well-known/…` is well formed.
fn http_url(s: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "`{s}` must be an http(s) URL with a host and no query or fragment, e.g. {DEFAULT_URL}"
        )
    };
    let uri: axum::http::Uri = s.parse().map_err(|_| bad())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let host_ok = uri.host().is_some_and(|h| !h.is_empty());
    let userinfo = uri.authority().is_some_and(|a| a.as_str().contains('@'));
    if !scheme_ok || !host_ok || userinfo || uri.query().is_some() || s.contains('#') {
        return Err(bad());
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// RFC 1123 label: what Kubernetes allows for a namespace.
pub(crate) fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.first().is_some_and(|c| *c != b'-')
        && b.last().is_some_and(|c| *c != b'-')
}

/// RFC 1123 subdomain: what Kubernetes allows for a service-account name.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn write(body: &str) -> tempfile::NamedTempFile {
        let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::fs::write(f.path(), body).unwrap();
        f
    }

    fn load(body: &str, env: &[(&str, &str)]) -> Result<IssuerConfig, ConfigError> {
        let f = write(body);
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        IssuerConfig::load_with_env(f.path(), Some(env))
    }

    fn error_of(body: &str, env: &[(&str, &str)]) -> String {
        load(body, env).unwrap_err().to_string()
    }

    const K8S: &str = "[kubernetes]\nissuer = \"https://kubernetes.default.svc\"\njwks_file = \"/etc/authproxy/cluster-jwks.json\"\n";

    #[test]
    fn an_empty_file_takes_every_default() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8400");
        assert_eq!(c.issuer.url, "http://127.0.0.1:8400");
        assert_eq!(c.issuer.state_dir, Path::new(".authproxy-issuer"));
        assert_eq!(c.issuer.grant_ttl, Duration::from_secs(86_400));
        assert_eq!(
            c.store.url,
            StoreUrl::Sqlite(PathBuf::from(".authproxy-issuer/issuer.db"))
        );
        assert_eq!(c.keys.rotate_every, Duration::from_secs(30 * DAY));
        assert_eq!(c.keys.publish_ahead, Duration::from_secs(600));
        assert_eq!(c.credentials.rotate_every, Duration::from_secs(90 * DAY));
        assert_eq!(c.credentials.grace, Duration::from_secs(DAY));
        assert_eq!(c.pats.max_valid_minutes, 527_040);
        assert!(c.kubernetes.is_none());
        assert_eq!(c.jwks_uri(), "http://127.0.0.1:8400/.well-known/jwks.json");
        assert_eq!(
            c.admin_token_file(),
            Path::new(".authproxy-issuer/admin-token")
        );
    }

    #[test]
    fn the_shipped_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/issuer.toml");
        let c = IssuerConfig::load_with_env(&path, Some(HashMap::new())).unwrap();
        assert_eq!(c.issuer.url, "http://127.0.0.1:8400");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8400");
    }

    #[test]
    fn the_shipped_kubernetes_example_is_valid_once_uncommented() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/issuer.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let start = text
            .find("\n# [kubernetes]\n")
            .expect("a commented [kubernetes] example");
        let example: String = text[start + 1..]
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .or_else(|| l.strip_prefix('#'))
                    .unwrap_or(l)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let c = load(&example, &[]).unwrap_or_else(|e| panic!("{e}\n{example}"));
        let k = c.kubernetes.expect("the [kubernetes] section");
        assert_eq!(k.issuer, "https://kubernetes.default.svc.cluster.local");
        assert!(matches!(k.jwks, KubernetesJwks::File(_)));
        assert_eq!(k.bindings.len(), 2);
        assert_eq!(k.bindings[0].service_account, "web");
    }

    #[test]
    fn the_default_store_follows_an_overridden_state_dir() {
        let c = load("", &[("AUTHPROXY__ISSUER__STATE_DIR", "/var/lib/issuer")]).unwrap();
        assert_eq!(
            c.store.url,
            StoreUrl::Sqlite(PathBuf::from("/var/lib/issuer/issuer.db"))
        );
        let c = load("[store]\nurl = \"sqlite:///data/x.db\"\n", &[]).unwrap();
        assert_eq!(c.store.url, StoreUrl::Sqlite(PathBuf::from("/data/x.db")));
    }

    #[test]
    fn the_issuer_url_must_be_http_or_https_and_loses_its_trailing_slash() {
        let c = load("[issuer]\nurl = \"https://issuer.example/\"\n", &[]).unwrap();
        assert_eq!(c.issuer.url, "https://issuer.example");
        for bad in [
            "urn:authproxy:dev",
            "ftp://x",
            "http://",
            "https://x/?a=1",
            "https://x/#f",
            "https://user:pw@x",
            "issuer.example",
        ] {
            let e = error_of(&format!("[issuer]\nurl = \"{bad}\"\n"), &[]);
            assert!(e.contains("`issuer.url`"), "{bad}: {e}");
        }
    }

    #[test]
    fn grant_ttl_outside_one_minute_to_seven_days_is_refused_naming_the_key() {
        for ttl in ["59s", "8d", "0"] {
            let e = error_of("", &[("AUTHPROXY__ISSUER__GRANT_TTL", ttl)]);
            assert!(
                e.contains("`issuer.grant_ttl`") && e.contains("out of range"),
                "{e}"
            );
        }
        let e = error_of("[issuer]\ngrant_ttl = \"soon\"\n", &[]);
        assert!(
            e.contains("`issuer.grant_ttl`") && e.contains("not a duration"),
            "{e}"
        );
    }

    #[test]
    fn every_error_names_the_file() {
        let f = write("[server]\nlisten = \"localhost\"\n");
        let e = IssuerConfig::load_with_env(f.path(), Some(HashMap::new())).unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!("{}:", f.path().display())),
            "{shown}"
        );
        assert!(shown.contains("`server.listen`"), "{shown}");
        let e = IssuerConfig::load(Path::new("/nonexistent/issuer.toml")).unwrap_err();
        assert!(
            e.to_string().starts_with("/nonexistent/issuer.toml:"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_and_sections_are_refused() {
        let e = error_of("[issuer]\ngrant_tll = \"1h\"\n", &[]);
        assert!(e.contains("grant_tll"), "{e}");
        let e = error_of("[trust]\nmode = \"remote\"\n", &[]);
        assert!(e.contains("trust"), "{e}");
    }

    #[test]
    fn the_store_url_is_sqlite_or_postgres_and_a_postgres_password_is_never_echoed() {
        let c = load("[store]\nurl = \"postgres://u:hunter2@db/issuer\"\n", &[]).unwrap();
        assert_eq!(
            format!("{:?}", c.store.url),
            "postgres://u:***@db/issuer",
            "as logged at start"
        );
        let c = load(
            "",
            &[(
                "AUTHPROXY__STORE__URL",
                "postgresql:///issuer?host=/run/postgresql",
            )],
        )
        .unwrap();
        assert!(matches!(c.store.url, StoreUrl::Postgres(_)));
        for bad in [
            "postgres://u:hunter2@db/issuer?sslmode=verify-full",
            "postgres://u:hunter2@db/issuer?pasword=hunter2",
            "postgres://u:hunter2@db",
        ] {
            let e = error_of(&format!("[store]\nurl = \"{bad}\"\n"), &[]);
            assert!(e.contains("`store.url`") && e.contains("PostgreSQL"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        for bad in ["sqlite://", "sqlite://x.db?mode=ro", "mysql://db", "x.db"] {
            let e = error_of(&format!("[store]\nurl = \"{bad}\"\n"), &[]);
            assert!(e.contains("`store.url`"), "{bad}: {e}");
        }
    }

    #[test]
    fn later_sections_are_validated_now() {
        for (body, key) in [
            ("[keys]\nrotate_every = \"1m\"\n", "`keys.rotate_every`"),
            (
                "[keys]\nrotate_every = \"1h\"\npublish_ahead = \"2h\"\n",
                "`keys.publish_ahead`",
            ),
            ("[tokens]\naudience = \"\"\n", "`tokens.audience`"),
            ("[credentials]\ngrace = \"40d\"\n", "`credentials.grace`"),
            (
                "[credentials]\nrotate_every = \"1h\"\n",
                "`credentials.rotate_every`",
            ),
            (
                "[pats]\nmax_valid_minutes = 0\n",
                "`pats.max_valid_minutes`",
            ),
            (
                "[pats]\nmax_valid_minutes = 527041\n",
                "`pats.max_valid_minutes` = 527041 is out of range",
            ),
            (
                "[server]\nmax_connections = 0\n",
                "`server.max_connections`",
            ),
            (
                "[server]\nheader_read_timeout = \"1m\"\n",
                "`server.header_read_timeout`",
            ),
        ] {
            let e = error_of(body, &[]);
            assert!(e.contains(key), "{body}: {e}");
        }
    }

    #[test]
    fn the_credential_provider_is_a_directory_or_a_command() {
        assert_eq!(
            load("", &[]).unwrap().credentials.provider,
            ProviderConfig::None
        );
        let c = load("[credentials]\ndir = \"/run/creds\"\n", &[]).unwrap();
        assert_eq!(
            c.credentials.provider,
            ProviderConfig::Dir(PathBuf::from("/run/creds"))
        );
        let c = load(
            "[credentials]\ncommand = [\"/bin/provider\", \"--x\"]\ncommand_timeout = \"30s\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            c.credentials.provider,
            ProviderConfig::Command {
                argv: vec!["/bin/provider".into(), "--x".into()],
                timeout: Duration::from_secs(30)
            }
        );
        let c = load("[credentials]\ncommand = [\"p\"]\n", &[]).unwrap();
        assert!(matches!(
            c.credentials.provider,
            ProviderConfig::Command { timeout, .. } if timeout == Duration::from_secs(600)
        ));
        for (body, key) in [
            (
                "[credentials]\ndir = \"d\"\ncommand = [\"p\"]\n",
                "exclusive",
            ),
            ("[credentials]\ncommand = []\n", "`credentials.command`"),
            ("[credentials]\ndir = \"\"\n", "`credentials.dir`"),
            (
                "[credentials]\ncommand_timeout = \"2h\"\n",
                "`credentials.command_timeout`",
            ),
        ] {
            let e = error_of(body, &[]);
            assert!(e.contains(key), "{body}: {e}");
        }
    }

    #[test]
    fn kubernetes_bindings_are_parsed() {
        let c = load(
            &format!(
                "{K8S}[[kubernetes.bindings]]\nservice_account = \"main:web\"\nworkload = \"app/web\"\nenvironment = \"main\"\n"
            ),
            &[],
        )
        .unwrap();
        let k = c.kubernetes.unwrap();
        assert_eq!(k.issuer, "https://kubernetes.default.svc");
        assert_eq!(
            k.jwks,
            KubernetesJwks::File(PathBuf::from("/etc/authproxy/cluster-jwks.json"))
        );
        let b = &k.bindings[0];
        assert_eq!(
            (b.namespace.as_str(), b.service_account.as_str()),
            ("main", "web")
        );
        assert_eq!(b.workload.to_string(), "app/web");
        assert_eq!(b.environment.as_str(), "main");
    }

    #[test]
    fn kubernetes_errors_name_the_binding_and_its_key() {
        let binding = |sa: &str, w: &str, e: &str| {
            format!(
                "[[kubernetes.bindings]]\nservice_account = \"{sa}\"\nworkload = \"{w}\"\nenvironment = \"{e}\"\n"
            )
        };
        let ok = binding("main:web", "app/web", "main");
        for (body, key) in [
            (
                "[kubernetes]\njwks_file = \"x\"\n".to_owned(),
                "`kubernetes.issuer` is required",
            ),
            (
                "[kubernetes]\nissuer = \"i\"\n".to_owned(),
                "`kubernetes.jwks_file` or",
            ),
            (
                "[kubernetes]\nissuer = \"i\"\njwks_file = \"x\"\njwks_url = \"https://k/jwks\"\n"
                    .to_owned(),
                "exclusive",
            ),
            (
                "[kubernetes]\nissuer = \"i\"\njwks_url = \"file:///x\"\n".to_owned(),
                "`kubernetes.jwks_url`",
            ),
            (
                format!("{K8S}{ok}{}", binding("main_ns:web", "app/web", "main")),
                "`kubernetes.bindings[1].service_account`",
            ),
            (
                format!("{K8S}{}", binding("main", "app/web", "main")),
                "`kubernetes.bindings[0].service_account`",
            ),
            (
                format!("{K8S}{}", binding("main:web", "cron/web/x", "main")),
                "`kubernetes.bindings[0].workload`",
            ),
            (
                format!("{K8S}{}", binding("main:web", "app/web", "Main")),
                "`kubernetes.bindings[0].environment`",
            ),
            (
                format!("{K8S}{ok}{ok}"),
                "`kubernetes.bindings[1].service_account` `main:web` is already bound by kubernetes.bindings[0]",
            ),
        ] {
            let e = error_of(&body, &[]);
            assert!(e.contains(key), "{body}: {e}");
        }
    }
}
