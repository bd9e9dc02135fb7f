//! The sidecar's configuration (DESIGN §6): a TOML file through the `config`
//! crate, overridden by `AUTHPROXY__SECTION__KEY` environment variables, then
//! parsed into typed values. Every error names the file, the key and the
//! problem; the daemon refuses to start on any of them (exit status 64).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use authproxy_core::duration::parse_in as duration_in;

use serde::Deserialize;

use authproxy_core::grant::MAX_GRANT_LIFETIME;
use authproxy_core::token::MAX_TOKEN_LIFETIME;
use authproxy_core::{Environment, WorkloadId};

/// Shortest access-token lifetime a config may set.
pub const MIN_TOKEN_TTL: Duration = Duration::from_secs(30);
/// Longest access-token lifetime a config may set (what verifiers accept).
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(MAX_TOKEN_LIFETIME);
/// Shortest grant lifetime a config may set.
pub const MIN_GRANT_TTL: Duration = Duration::from_secs(60);
/// Longest grant lifetime a config may set (what verifiers accept).
pub const MAX_GRANT_TTL: Duration = Duration::from_secs(MAX_GRANT_LIFETIME);
/// `server.listen` when not configured: both loopback addresses (DESIGN §4),
/// so clients that resolve `localhost` to `::1` first also connect.
pub const DEFAULT_LISTEN: [&str; 2] = ["127.0.0.1:8200", "[::1]:8200"];

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
    /// An `AUTHPROXY__SECTION__KEY` environment variable names no key.
    #[error(
        "environment variable {variable}: `{key}` is not a configuration key{}",
        suggestion.as_ref().map(|k| format!(" (did you mean `{k}`?)")).unwrap_or_default()
    )]
    UnknownVariable {
        /// The variable, as set.
        variable: String,
        /// The dotted key it maps to, e.g. `tokens.tll`.
        key: String,
        /// The key it probably meant.
        suggestion: Option<String>,
    },
    /// A key has a value outside what it allows.
    #[error("{file}: `{key}` {problem}")]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// The dotted key, e.g. `tokens.ttl`.
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// The whole sidecar configuration, validated.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The file it was loaded from (for error messages on reload).
    pub file: PathBuf,
    /// `[server]`
    pub server: ServerConfig,
    /// `[workload]`
    pub workload: WorkloadConfig,
    /// `[tokens]`
    pub tokens: TokensConfig,
    /// `[trust]`
    pub trust: TrustConfig,
    /// `[proxy]`, if forward-proxy mode is on.
    pub proxy: Option<ProxyConfig>,
    /// `[sink]`, if a token file is kept.
    pub sink: Option<SinkConfig>,
}

/// `[proxy]`: forward `/api/*` to an upstream with a token attached.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProxyConfig {
    /// Base URL of the upstream (http or https, no query or fragment).
    pub upstream: reqwest::Url,
    /// How long to wait for the upstream's response headers (default 30 s).
    pub timeout: Duration,
    /// How long a response body may go without sending anything before
    /// the client's connection is cut (default 30 s).
    pub idle_timeout: Duration,
    /// Require `X-Authproxy-Request: 1` on `/api/*` (default on).
    pub require_header: bool,
}

/// `[sink]`: keep a valid token in a file.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SinkConfig {
    /// The token file.
    pub path: PathBuf,
    /// Its permission bits (default 0640).
    pub mode: u32,
}

/// `[server]`
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Addresses to bind, at least one; by default [`DEFAULT_LISTEN`].
    pub listen: Vec<SocketAddr>,
    /// `listen` is the default, not configured: an IPv6 address in it that
    /// this machine cannot bind (no IPv6) is skipped with a warning. A
    /// configured address that cannot be bound is an error.
    pub listen_is_default: bool,
    /// Answer token requests from non-loopback peers. Off by default: the
    /// sidecar serves the code in its own container only.
    pub allow_remote_peers: bool,
    /// Connection limits and shutdown grace.
    pub limits: crate::serve::Limits,
    /// Token requests per second (and burst), if limited.
    pub rate_limit: Option<u32>,
    /// Require `X-Authproxy-Request: 1` on the token endpoint too (default
    /// off: stock OAuth2 clients cannot add it).
    pub require_header: bool,
}

/// `[workload]`
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkloadConfig {
    /// Which workload this sidecar serves.
    pub id: WorkloadId,
    /// The environment its tokens are bound to.
    pub environment: Environment,
    /// The project's declarations file: required in embedded mode; in
    /// remote mode the issuer holds the declarations and the sidecar reads
    /// no such file (one set here is ignored by `serve`, and used by
    /// `authproxy check --config`).
    pub declarations: Option<PathBuf>,
}

/// `[tokens]`
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TokensConfig {
    /// `iss` of grants and tokens.
    pub issuer: String,
    /// `aud` of access tokens: the upstream API's identifier.
    pub audience: String,
    /// Access-token lifetime, 30 s – 1 h.
    pub ttl: Duration,
    /// Hand out the same token again for the same scopes while at least half
    /// of its lifetime remains.
    pub reuse: bool,
}

/// Where the sidecar's grant comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrustMode {
    /// A root key under `state_dir`; the sidecar issues its own grant.
    Embedded,
    /// The platform issuer grants it (DESIGN §8); no root key, no
    /// declarations file on this side.
    Remote(RemoteTrust),
}

/// `[trust]` in remote mode.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteTrust {
    /// Base URLs of the issuer's nodes, tried in order (no trailing `/`).
    pub issuers: Vec<reqwest::Url>,
    /// Where the bootstrap credential is read, at start and at every renewal.
    pub bootstrap: BootstrapSource,
    /// How long start-up keeps trying to obtain the first grant from an
    /// issuer that is unreachable or failing before it gives up (default 30 s).
    pub initial_grant_timeout: Duration,
}

/// `trust.bootstrap`: where the bootstrap credential is. The spec names a
/// variable or a file, never the credential, so it may be printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapSource {
    /// `env:VAR`: the value of an environment variable.
    Env(String),
    /// `file:PATH`: the contents of a file, re-read at every renewal (a
    /// Kubernetes projected token rotates under the same path).
    File(PathBuf),
}

impl std::fmt::Display for BootstrapSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env(v) => write!(f, "env:{v}"),
            Self::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

impl BootstrapSource {
    /// Parses `env:VAR` or `file:PATH`. The error never repeats the value:
    /// someone may have pasted the credential itself.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let spec = spec.trim();
        if let Some(var) = spec.strip_prefix("env:") {
            let valid = var
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            return if valid {
                Ok(Self::Env(var.to_owned()))
            } else {
                Err("must be env:VARIABLE with a variable name of letters, digits and `_`".into())
            };
        }
        if let Some(path) = spec.strip_prefix("file:") {
            return if path.trim().is_empty() {
                Err("must be file:PATH with a path".into())
            } else {
                Ok(Self::File(PathBuf::from(path)))
            };
        }
        Err(
            "must be env:VARIABLE or file:PATH (the value is not shown: it may be a credential)"
                .into(),
        )
    }
}

/// `[trust]`
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TrustConfig {
    /// Where the grant comes from.
    pub mode: TrustMode,
    /// Directory holding the embedded root key.
    pub state_dir: PathBuf,
    /// Grant lifetime, 1 m – 7 d.
    pub grant_ttl: Duration,
    /// How long unreadable or invalid declarations are survived on the
    /// previous ones before the sidecar turns not-ready (default 10 min).
    pub reload_grace: Duration,
}

impl TrustConfig {
    /// The remote-mode settings, if the sidecar runs in remote mode.
    pub fn remote(&self) -> Option<&RemoteTrust> {
        match &self.mode {
            TrustMode::Remote(r) => Some(r),
            TrustMode::Embedded => None,
        }
    }
}

// The raw shapes: strings as written, checked below so that errors can name
// the key. `deny_unknown_fields` turns a typo into an error instead of a
// silently ignored setting.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    server: RawServer,
    workload: Option<RawWorkload>,
    #[serde(default)]
    tokens: RawTokens,
    #[serde(default)]
    trust: RawTrust,
    proxy: Option<RawProxy>,
    sink: Option<RawSink>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    upstream: Option<String>,
    timeout: Option<String>,
    idle_timeout: Option<String>,
    require_header: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSink {
    path: Option<String>,
    mode: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<RawListen>,
    allow_remote_peers: Option<bool>,
    header_read_timeout: Option<String>,
    body_read_timeout: Option<String>,
    max_connections: Option<u32>,
    max_remote_connections: Option<u32>,
    shutdown_grace: Option<String>,
    rate_limit: Option<u32>,
    require_header: Option<bool>,
}

/// `listen = "ADDR"` or `listen = ["ADDR", …]` (from the environment:
/// `ADDR,ADDR`); the same shape for `trust.issuers`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawListen {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    id: Option<String>,
    environment: Option<String>,
    declarations: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    issuer: Option<String>,
    audience: Option<String>,
    ttl: Option<String>,
    reuse: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    mode: Option<String>,
    state_dir: Option<String>,
    grant_ttl: Option<String>,
    reload_grace: Option<String>,
    issuers: Option<RawListen>,
    bootstrap: Option<String>,
    initial_grant_timeout: Option<String>,
}

impl Config {
    /// Loads `file`, applies `AUTHPROXY__SECTION__KEY` overrides from the
    /// process environment, and validates every key.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(file, None)
    }

    /// As [`Config::load`], with the environment given explicitly (tests).
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
        // An override that maps to no key would otherwise be reported as an
        // unknown field "in" the file, which does not have it.
        check_variables(env.as_ref())?;
        let environment = ::config::Environment::with_prefix("AUTHPROXY")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            // DESIGN §6: list values are comma-separated in the environment.
            .list_separator(",")
            .with_list_parse_key("server.listen")
            .with_list_parse_key("trust.issuers")
            .source(env);
        let raw: Raw = ::config::Config::builder()
            .add_source(::config::File::from(file).format(::config::FileFormat::Toml))
            .add_source(environment)
            .build()
            .and_then(::config::Config::try_deserialize)
            .map_err(|e| load_err(e.to_string()))?;
        Self::validate(file, raw)
    }

    fn validate(file: &Path, raw: Raw) -> Result<Self, ConfigError> {
        let invalid = |key: &'static str, problem: String| ConfigError::Invalid {
            file: file.to_owned(),
            key,
            problem,
        };
        let required = |key: &'static str, v: Option<String>| {
            v.filter(|s| !s.trim().is_empty())
                .ok_or_else(|| invalid(key, "is required".into()))
        };

        let listen_is_default = raw.server.listen.is_none();
        let listen_text = match raw.server.listen {
            None => DEFAULT_LISTEN.iter().map(|a| (*a).to_owned()).collect(),
            Some(RawListen::One(a)) => vec![a],
            Some(RawListen::Many(list)) => list,
        };
        if listen_text.is_empty() {
            return Err(invalid(
                "server.listen",
                "must name at least one address".into(),
            ));
        }
        let mut listen: Vec<SocketAddr> = Vec::with_capacity(listen_text.len());
        for a in &listen_text {
            let addr: SocketAddr = a.trim().parse().map_err(|_| {
                invalid(
                    "server.listen",
                    format!(
                        "`{a}` is not an IP:PORT socket address (IPv6 in brackets: [::1]:8200)"
                    ),
                )
            })?;
            if listen.contains(&addr) {
                return Err(invalid("server.listen", format!("lists {addr} twice")));
            }
            listen.push(addr);
        }

        let mut limits = crate::serve::Limits::default();
        if let Some(t) = &raw.server.header_read_timeout {
            limits.header_read_timeout =
                duration_in(t, Duration::from_secs(1), Duration::from_secs(10))
                    .map_err(|p| invalid("server.header_read_timeout", p))?;
        }
        if let Some(t) = &raw.server.body_read_timeout {
            limits.body_read_timeout =
                duration_in(t, Duration::from_secs(1), Duration::from_secs(60))
                    .map_err(|p| invalid("server.body_read_timeout", p))?;
        }
        if let Some(n) = raw.server.max_connections {
            if n == 0 {
                return Err(invalid(
                    "server.max_connections",
                    "must be at least 1".into(),
                ));
            }
            limits.max_connections = n as usize;
        }
        if let Some(n) = raw.server.max_remote_connections {
            if n == 0 {
                return Err(invalid(
                    "server.max_remote_connections",
                    "must be at least 1".into(),
                ));
            }
            limits.max_remote_connections = n as usize;
        }
        if let Some(t) = &raw.server.shutdown_grace {
            limits.shutdown_grace = duration_in(t, Duration::ZERO, Duration::from_secs(300))
                .map_err(|p| invalid("server.shutdown_grace", p))?;
        }

        let w = raw.workload.unwrap_or_default();
        let id = required("workload.id", w.id)?;
        let id = id
            .parse::<WorkloadId>()
            .map_err(|e| invalid("workload.id", e.to_string()))?;
        let environment = required("workload.environment", w.environment)?;
        let environment = Environment::parse(&environment)
            .map_err(|e| invalid("workload.environment", e.to_string()))?;
        let declarations = w
            .declarations
            .filter(|s| !s.trim().is_empty())
            .map(PathBuf::from);

        let issuer = raw
            .tokens
            .issuer
            .unwrap_or_else(|| "urn:authproxy:dev".into());
        if issuer.trim().is_empty() {
            return Err(invalid("tokens.issuer", "must not be empty".into()));
        }
        let audience = required("tokens.audience", raw.tokens.audience)?;
        let ttl = duration_in(
            raw.tokens.ttl.as_deref().unwrap_or("5m"),
            MIN_TOKEN_TTL,
            MAX_TOKEN_TTL,
        )
        .map_err(|p| invalid("tokens.ttl", p))?;

        let remote_keys_set = raw.trust.issuers.is_some()
            || raw.trust.bootstrap.is_some()
            || raw.trust.initial_grant_timeout.is_some();
        let mode = match raw.trust.mode.as_deref().unwrap_or("embedded") {
            "embedded" => {
                // A remote setting in an embedded config is a mistake that
                // would otherwise go unnoticed: the sidecar would quietly
                // hold a root key where remote mode was meant.
                if remote_keys_set {
                    let key = if raw.trust.issuers.is_some() {
                        "trust.issuers"
                    } else if raw.trust.bootstrap.is_some() {
                        "trust.bootstrap"
                    } else {
                        "trust.initial_grant_timeout"
                    };
                    return Err(invalid(
                        key,
                        "is a remote-mode key: set `trust.mode = \"remote\"` or remove it".into(),
                    ));
                }
                if declarations.is_none() {
                    return Err(invalid("workload.declarations", "is required".into()));
                }
                TrustMode::Embedded
            }
            "remote" => TrustMode::Remote(
                remote_trust(
                    raw.trust.issuers,
                    raw.trust.bootstrap,
                    raw.trust.initial_grant_timeout,
                )
                .map_err(|(key, problem)| invalid(key, problem))?,
            ),
            other => {
                return Err(invalid(
                    "trust.mode",
                    format!("`{other}` is not one of: embedded, remote"),
                ));
            }
        };
        let grant_ttl = duration_in(
            raw.trust.grant_ttl.as_deref().unwrap_or("24h"),
            MIN_GRANT_TTL,
            MAX_GRANT_TTL,
        )
        .map_err(|p| invalid("trust.grant_ttl", p))?;
        let reload_grace = duration_in(
            raw.trust.reload_grace.as_deref().unwrap_or("10m"),
            Duration::ZERO,
            MAX_GRANT_TTL,
        )
        .map_err(|p| invalid("trust.reload_grace", p))?;

        let proxy = match raw.proxy {
            None => None,
            Some(p) => {
                let upstream = required("proxy.upstream", p.upstream)?;
                let url = reqwest::Url::parse(&upstream).map_err(|e| {
                    invalid("proxy.upstream", format!("`{upstream}` is not a URL ({e})"))
                })?;
                if !matches!(url.scheme(), "http" | "https")
                    || url.host().is_none()
                    || url.query().is_some()
                    || url.fragment().is_some()
                {
                    return Err(invalid(
                        "proxy.upstream",
                        format!(
                            "`{upstream}` must be an http(s) URL with a host and no query or fragment"
                        ),
                    ));
                }
                let timeout = duration_in(
                    p.timeout.as_deref().unwrap_or("30s"),
                    Duration::from_secs(1),
                    Duration::from_secs(3600),
                )
                .map_err(|e| invalid("proxy.timeout", e))?;
                let idle_timeout = duration_in(
                    p.idle_timeout.as_deref().unwrap_or("30s"),
                    Duration::from_secs(1),
                    Duration::from_secs(3600),
                )
                .map_err(|e| invalid("proxy.idle_timeout", e))?;
                Some(ProxyConfig {
                    upstream: url,
                    timeout,
                    idle_timeout,
                    require_header: p.require_header.unwrap_or(true),
                })
            }
        };
        let sink = match raw.sink {
            None => None,
            Some(s) => {
                let path = PathBuf::from(required("sink.path", s.path)?);
                let mode_text = s.mode.unwrap_or_else(|| "0640".into());
                let mode = u32::from_str_radix(mode_text.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| {
                        invalid(
                            "sink.mode",
                            format!("`{mode_text}` is not an octal file mode like \"0640\""),
                        )
                    })?;
                if mode & 0o007 != 0 {
                    return Err(invalid(
                        "sink.mode",
                        format!(
                            "= {mode_text} lets every local user read the token; drop the \"other\" bits"
                        ),
                    ));
                }
                Some(SinkConfig { path, mode })
            }
        };

        Ok(Self {
            file: file.to_owned(),
            server: ServerConfig {
                listen,
                listen_is_default,
                allow_remote_peers: raw.server.allow_remote_peers.unwrap_or(false),
                limits,
                rate_limit: match raw.server.rate_limit {
                    Some(0) => {
                        return Err(invalid(
                            "server.rate_limit",
                            "must be at least 1 request per second".into(),
                        ));
                    }
                    r => r,
                },
                require_header: raw.server.require_header.unwrap_or(false),
            },
            workload: WorkloadConfig {
                id,
                environment,
                declarations,
            },
            tokens: TokensConfig {
                issuer,
                audience,
                ttl,
                reuse: raw.tokens.reuse.unwrap_or(true),
            },
            trust: TrustConfig {
                mode,
                state_dir: PathBuf::from(
                    raw.trust.state_dir.unwrap_or_else(|| ".authproxy".into()),
                ),
                grant_ttl,
                reload_grace,
            },
            proxy,
            sink,
        })
    }
}

/// The remote-mode keys of `[trust]`, validated; an error is the key and
/// the problem.
fn remote_trust(
    issuers: Option<RawListen>,
    bootstrap: Option<String>,
    initial_grant_timeout: Option<String>,
) -> Result<RemoteTrust, (&'static str, String)> {
    let texts = match issuers {
        None => Vec::new(),
        Some(RawListen::One(u)) => vec![u],
        Some(RawListen::Many(list)) => list,
    };
    let texts: Vec<String> = texts
        .into_iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    if texts.is_empty() {
        return Err((
            "trust.issuers",
            "is required in remote mode: the issuer URLs to ask for grants, e.g. [\"http://127.0.0.1:8400\"]".into(),
        ));
    }
    let mut urls: Vec<reqwest::Url> = Vec::with_capacity(texts.len());
    for text in &texts {
        let url = reqwest::Url::parse(text.trim_end_matches('/'))
            .map_err(|e| ("trust.issuers", format!("`{text}` is not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https")
            || url.host().is_none()
            || url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err((
                "trust.issuers",
                format!(
                    "`{text}` must be an http(s) URL with a host and no credentials, query or fragment"
                ),
            ));
        }
        if urls.contains(&url) {
            return Err(("trust.issuers", format!("lists {url} twice")));
        }
        urls.push(url);
    }
    let bootstrap = bootstrap
        .filter(|s| !s.trim().is_empty())
        .ok_or((
            "trust.bootstrap",
            "is required in remote mode: env:VARIABLE or file:PATH holding the bootstrap credential".into(),
        ))
        .and_then(|spec| BootstrapSource::parse(&spec).map_err(|p| ("trust.bootstrap", p)))?;
    let initial_grant_timeout = duration_in(
        initial_grant_timeout.as_deref().unwrap_or("30s"),
        Duration::ZERO,
        Duration::from_secs(600),
    )
    .map_err(|p| ("trust.initial_grant_timeout", p))?;
    Ok(RemoteTrust {
        issuers: urls,
        bootstrap,
        initial_grant_timeout,
    })
}

/// Prefix of the environment variables that override the file.
const ENV_PREFIX: &str = "AUTHPROXY__";

/// Every dotted key the file and the environment may set, read from the
/// raw shapes themselves so that it cannot drift from them.
fn known_keys() -> Vec<String> {
    [
        ("server", fields_of::<RawServer>()),
        ("workload", fields_of::<RawWorkload>()),
        ("tokens", fields_of::<RawTokens>()),
        ("trust", fields_of::<RawTrust>()),
        ("proxy", fields_of::<RawProxy>()),
        ("sink", fields_of::<RawSink>()),
    ]
    .into_iter()
    .flat_map(|(section, keys)| keys.iter().map(move |k| format!("{section}.{k}")))
    .collect()
}

/// Refuses the first `AUTHPROXY__…` variable (in name order) that maps to
/// no key, as the `config` crate maps them: prefix matched ignoring case,
/// then lower-cased, `__` → `.`.
fn check_variables(
    env: Option<&std::collections::HashMap<String, String>>,
) -> Result<(), ConfigError> {
    let mut names: Vec<String> = match env {
        Some(map) => map.keys().cloned().collect(),
        None => std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect(),
    };
    names.sort();
    let known = known_keys();
    for variable in names {
        let Some(rest) = variable
            .get(..ENV_PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
            .map(|_| &variable[ENV_PREFIX.len()..])
        else {
            continue;
        };
        let key = rest.to_lowercase().replace("__", ".");
        if !known.contains(&key) {
            let candidates: Vec<&str> = known.iter().map(String::as_str).collect();
            let suggestion = authproxy_core::suggest::closest(&key, &candidates).map(str::to_owned);
            return Err(ConfigError::UnknownVariable {
                variable,
                key,
                suggestion,
            });
        }
    }
    Ok(())
}

/// The field names of a `#[derive(Deserialize)]` struct, as serde sees
/// them: the struct hands them to a deserializer that records them and
/// stops.
fn fields_of<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(serde::de::Error::custom("fields recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
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

    const MINIMAL: &str = "[workload]\nid = \"app/web\"\nenvironment = \"main\"\ndeclarations = \"p.yaml\"\n[tokens]\naudience = \"https://api\"\n";

    fn load(body: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let f = write(body);
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_with_env(f.path(), Some(env))
    }

    fn error_of(body: &str, env: &[(&str, &str)]) -> String {
        load(body, env).unwrap_err().to_string()
    }

    #[test]
    fn defaults_fill_what_is_not_set() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(
            c.server.listen,
            [
                "127.0.0.1:8200".parse().unwrap(),
                "[::1]:8200".parse().unwrap()
            ] as [SocketAddr; 2]
        );
        assert!(c.server.listen_is_default);
        assert!(!c.server.allow_remote_peers);
        assert_eq!(c.tokens.ttl, Duration::from_secs(300));
        assert!(c.tokens.reuse);
        assert_eq!(c.trust.grant_ttl, Duration::from_secs(86400));
        assert_eq!(c.trust.reload_grace, Duration::from_secs(600));
    }

    #[test]
    fn the_shipped_config_is_valid() {
        let c = Config::load_with_env(Path::new("config/authproxy.toml"), Some(HashMap::new()))
            .unwrap();
        assert_eq!(c.workload.id.to_string(), "app/web");
    }

    #[test]
    fn environment_variables_override_the_file() {
        let c = load(
            MINIMAL,
            &[
                ("AUTHPROXY__WORKLOAD__ID", "task/notify"),
                ("AUTHPROXY__TOKENS__TTL", "90s"),
            ],
        )
        .unwrap();
        assert_eq!(c.workload.id.to_string(), "task/notify");
        assert_eq!(c.tokens.ttl, Duration::from_secs(90));
    }

    #[test]
    fn ttl_outside_30s_to_1h_is_refused_naming_the_key() {
        for ttl in ["29s", "2h", "0"] {
            let e = error_of(MINIMAL, &[("AUTHPROXY__TOKENS__TTL", ttl)]);
            assert!(
                e.contains("`tokens.ttl`") && e.contains("out of range"),
                "{e}"
            );
        }
        let e = error_of(MINIMAL, &[("AUTHPROXY__TOKENS__TTL", "soon")]);
        assert!(
            e.contains("`tokens.ttl`") && e.contains("not a duration"),
            "{e}"
        );
    }

    #[test]
    fn missing_and_malformed_keys_are_named() {
        let e = error_of("[tokens]\naudience = \"x\"\n", &[]);
        assert!(e.contains("`workload.id` is required"), "{e}");
        let e = error_of(MINIMAL, &[("AUTHPROXY__WORKLOAD__ID", "cron/web/x")]);
        assert!(e.contains("`workload.id`"), "{e}");
        let e = error_of(MINIMAL, &[("AUTHPROXY__SERVER__LISTEN", "localhost")]);
        assert!(e.contains("`server.listen`"), "{e}");
        let e = error_of(MINIMAL, &[("AUTHPROXY__TRUST__MODE", "cloud")]);
        assert!(e.contains("`trust.mode`"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = error_of(&format!("{MINIMAL}ttl_typo = 1\n"), &[]);
        assert!(e.contains("ttl_typo"), "{e}");
        let e = error_of(&format!("{MINIMAL}[proxyy]\nupstream = \"x\"\n"), &[]);
        assert!(e.contains("proxyy"), "{e}");
    }

    /// #11 item 15c: an override that maps to no key names the variable
    /// (not the file) and the key it probably meant.
    #[test]
    fn an_unknown_override_names_the_variable_and_suggests_the_key() {
        for (var, key, suggestion) in [
            ("AUTHPROXY__TOKENS__TLL", "tokens.tll", "tokens.ttl"),
            ("AUTHPROXY__TOKEN__TTL", "token.ttl", "tokens.ttl"),
            ("authproxy__server__listn", "server.listn", "server.listen"),
        ] {
            let e = load(MINIMAL, &[(var, "5m")]).unwrap_err();
            assert!(
                matches!(&e, ConfigError::UnknownVariable { variable, key: k, suggestion: Some(s) }
                    if variable == var && k == key && s == suggestion),
                "{e}"
            );
            assert_eq!(
                e.to_string(),
                format!(
                    "environment variable {var}: `{key}` is not a configuration key (did you mean `{suggestion}`?)"
                )
            );
        }
        let e = error_of(MINIMAL, &[("AUTHPROXY__PLUGINS__X", "1")]);
        assert!(!e.contains("did you mean"), "{e}");
        // Variables of other tools, and the client's AUTHPROXY_ENDPOINT, are not overrides.
        load(MINIMAL, &[("AUTHPROXY_ENDPOINT", "x"), ("PATH", "/bin")]).unwrap();
    }

    /// The known keys are read from the raw shapes: every section is there.
    #[test]
    fn every_section_has_its_keys_known() {
        let sections: Vec<&str> = fields_of::<Raw>().to_vec();
        assert_eq!(
            sections,
            ["server", "workload", "tokens", "trust", "proxy", "sink"]
        );
        let known = known_keys();
        for section in sections {
            assert!(
                known.iter().any(|k| k.starts_with(&format!("{section}."))),
                "{section}"
            );
        }
        assert!(known.contains(&"server.max_connections".to_owned()));
    }

    #[test]
    fn proxy_and_sink_sections_are_validated() {
        let c = load(
            &format!("{MINIMAL}[proxy]\nupstream = \"http://127.0.0.1:8300/v1\"\n[sink]\npath = \"/tmp/t\"\n"),
            &[],
        )
        .unwrap();
        let p = c.proxy.unwrap();
        assert_eq!(p.upstream.as_str(), "http://127.0.0.1:8300/v1");
        assert_eq!(p.timeout, Duration::from_secs(30));
        assert!(p.require_header);
        assert_eq!(p.idle_timeout, Duration::from_secs(30));
        assert!(!c.server.require_header);
        assert_eq!(c.sink.unwrap().mode, 0o640);
        for (extra, key) in [
            ("[proxy]\nupstream = \"ftp://x\"\n", "`proxy.upstream`"),
            (
                "[proxy]\nupstream = \"http://x/?a=1\"\n",
                "`proxy.upstream`",
            ),
            ("[proxy]\n", "`proxy.upstream` is required"),
            (
                "[proxy]\nupstream = \"http://x\"\ntimeout = \"0s\"\n",
                "`proxy.timeout`",
            ),
            (
                "[proxy]\nupstream = \"http://x\"\nidle_timeout = \"2h\"\n",
                "`proxy.idle_timeout`",
            ),
            (
                "[sink]\npath = \"/tmp/t\"\nmode = \"0644\"\n",
                "`sink.mode`",
            ),
            ("[sink]\npath = \"/tmp/t\"\nmode = \"rw\"\n", "`sink.mode`"),
        ] {
            let e = error_of(&format!("{MINIMAL}{extra}"), &[]);
            assert!(e.contains(key), "{extra}: {e}");
        }
    }

    /// Issue #11, item 11: a string or a list in the file.
    #[test]
    fn listen_is_an_address_or_a_list_of_them() {
        let with = |listen: &str| format!("[server]\nlisten = {listen}\n{MINIMAL}");
        let c = load(&with("\"127.0.0.1:9000\""), &[]).unwrap();
        assert_eq!(
            c.server.listen,
            ["127.0.0.1:9000".parse().unwrap()] as [SocketAddr; 1]
        );
        assert!(!c.server.listen_is_default);
        let c = load(&with("[\"127.0.0.1:9000\", \"[::1]:9000\"]"), &[]).unwrap();
        assert_eq!(
            c.server.listen,
            [
                "127.0.0.1:9000".parse().unwrap(),
                "[::1]:9000".parse().unwrap()
            ] as [SocketAddr; 2]
        );
        for (bad, problem) in [
            ("[]", "at least one"),
            (
                "[\"127.0.0.1:9000\", \"::1:9000\"]",
                "`::1:9000` is not an IP:PORT",
            ),
            ("[\"127.0.0.1:9000\", \"127.0.0.1:9000\"]", "twice"),
        ] {
            let e = error_of(&with(bad), &[]);
            assert!(
                e.contains("`server.listen`") && e.contains(problem),
                "{bad}: {e}"
            );
        }
    }

    /// Issue #11, item 11: DESIGN §6, a comma-separated list in the environment.
    #[test]
    fn listen_from_the_environment_is_comma_separated() {
        let c = load(
            MINIMAL,
            &[("AUTHPROXY__SERVER__LISTEN", "127.0.0.1:8200,[::1]:8200")],
        )
        .unwrap();
        assert_eq!(
            c.server.listen,
            [
                "127.0.0.1:8200".parse().unwrap(),
                "[::1]:8200".parse().unwrap()
            ] as [SocketAddr; 2]
        );
        assert!(!c.server.listen_is_default);
        let c = load(MINIMAL, &[("AUTHPROXY__SERVER__LISTEN", "0.0.0.0:8200")]).unwrap();
        assert_eq!(
            c.server.listen,
            ["0.0.0.0:8200".parse().unwrap()] as [SocketAddr; 1]
        );
        // Other values are not split on commas.
        let c = load(MINIMAL, &[("AUTHPROXY__TOKENS__AUDIENCE", "a,b")]).unwrap();
        assert_eq!(c.tokens.audience, "a,b");
    }

    #[test]
    fn body_timeout_and_remote_budget_are_validated() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.server.limits.body_read_timeout, Duration::from_secs(10));
        assert_eq!(c.server.limits.max_remote_connections, 16);
        let c = load(
            MINIMAL,
            &[
                ("AUTHPROXY__SERVER__BODY_READ_TIMEOUT", "2s"),
                ("AUTHPROXY__SERVER__MAX_REMOTE_CONNECTIONS", "4"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.limits.body_read_timeout, Duration::from_secs(2));
        assert_eq!(c.server.limits.max_remote_connections, 4);
        let e = error_of(MINIMAL, &[("AUTHPROXY__SERVER__BODY_READ_TIMEOUT", "0s")]);
        assert!(e.contains("`server.body_read_timeout`"), "{e}");
        let e = error_of(
            MINIMAL,
            &[("AUTHPROXY__SERVER__MAX_REMOTE_CONNECTIONS", "0")],
        );
        assert!(e.contains("`server.max_remote_connections`"), "{e}");
    }

    const REMOTE: &str = "[workload]\nid = \"app/web\"\nenvironment = \"main\"\n[tokens]\naudience = \"https://api\"\n[trust]\nmode = \"remote\"\nissuers = [\"http://127.0.0.1:8400\", \"https://issuer.example/base/\"]\nbootstrap = \"file:/run/authproxy/credential\"\n";

    #[test]
    fn remote_mode_needs_issuers_and_a_bootstrap_but_no_declarations() {
        let c = load(REMOTE, &[]).unwrap();
        let r = c.trust.remote().unwrap();
        assert_eq!(
            r.issuers
                .iter()
                .map(reqwest::Url::as_str)
                .collect::<Vec<_>>(),
            ["http://127.0.0.1:8400/", "https://issuer.example/base"]
        );
        assert_eq!(
            r.bootstrap,
            BootstrapSource::File("/run/authproxy/credential".into())
        );
        assert_eq!(r.initial_grant_timeout, Duration::from_secs(30));
        assert_eq!(c.workload.declarations, None);

        // DESIGN §6: a list override is comma-separated.
        let c = load(
            REMOTE,
            &[
                ("AUTHPROXY__TRUST__ISSUERS", "http://a:8400,http://b:8400"),
                ("AUTHPROXY__TRUST__BOOTSTRAP", "env:AUTHPROXY_BOOTSTRAP"),
                ("AUTHPROXY__TRUST__INITIAL_GRANT_TIMEOUT", "0s"),
            ],
        )
        .unwrap();
        let r = c.trust.remote().unwrap();
        assert_eq!(r.issuers.len(), 2);
        assert_eq!(r.issuers[1].host_str(), Some("b"));
        assert_eq!(
            r.bootstrap,
            BootstrapSource::Env("AUTHPROXY_BOOTSTRAP".into())
        );
        assert_eq!(r.initial_grant_timeout, Duration::ZERO);
    }

    #[test]
    fn remote_mode_errors_name_the_key() {
        for (env, key) in [
            (
                ("AUTHPROXY__TRUST__ISSUERS", ""),
                "`trust.issuers` is required",
            ),
            (
                ("AUTHPROXY__TRUST__ISSUERS", "issuer:8400"),
                "`trust.issuers`",
            ),
            (("AUTHPROXY__TRUST__ISSUERS", "ftp://x"), "`trust.issuers`"),
            (
                ("AUTHPROXY__TRUST__ISSUERS", "http://u:p@x"),
                "`trust.issuers`",
            ),
            (("AUTHPROXY__TRUST__ISSUERS", "http://x,http://x"), "twice"),
            (("AUTHPROXY__TRUST__BOOTSTRAP", "env:"), "`trust.bootstrap`"),
            (
                ("AUTHPROXY__TRUST__BOOTSTRAP", "env:A-B"),
                "`trust.bootstrap`",
            ),
            (
                ("AUTHPROXY__TRUST__BOOTSTRAP", "file:"),
                "`trust.bootstrap`",
            ),
            (
                ("AUTHPROXY__TRUST__INITIAL_GRANT_TIMEOUT", "1h"),
                "`trust.initial_grant_timeout`",
            ),
        ] {
            let e = error_of(REMOTE, &[env]);
            assert!(e.contains(key), "{env:?}: {e}");
        }
        let without_bootstrap =
            REMOTE.replace("bootstrap = \"file:/run/authproxy/credential\"\n", "");
        let e = error_of(&without_bootstrap, &[]);
        assert!(e.contains("`trust.bootstrap` is required"), "{e}");
    }

    /// Someone may paste the credential itself where its location belongs:
    /// the error must not repeat it.
    #[test]
    fn a_bootstrap_that_is_no_spec_is_not_echoed() {
        let e = error_of(
            REMOTE,
            &[("AUTHPROXY__TRUST__BOOTSTRAP", "ap_wc_SECRETVALUE")],
        );
        assert!(e.contains("`trust.bootstrap`"), "{e}");
        assert!(!e.contains("SECRETVALUE"), "{e}");
    }

    #[test]
    fn embedded_mode_needs_declarations_and_refuses_remote_keys() {
        let e = error_of(&MINIMAL.replace("declarations = \"p.yaml\"\n", ""), &[]);
        assert!(e.contains("`workload.declarations` is required"), "{e}");
        let e = error_of(MINIMAL, &[("AUTHPROXY__TRUST__ISSUERS", "http://x")]);
        assert!(e.contains("`trust.issuers` is a remote-mode key"), "{e}");
        let e = error_of(MINIMAL, &[("AUTHPROXY__TRUST__BOOTSTRAP", "env:X")]);
        assert!(e.contains("`trust.bootstrap`"), "{e}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = Config::load(Path::new("/nonexistent/authproxy.toml")).unwrap_err();
        assert!(
            e.to_string().starts_with("/nonexistent/authproxy.toml:"),
            "{e}"
        );
    }
}
