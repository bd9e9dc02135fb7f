//! The verifier's configuration (DESIGN §11): `config/verifier.toml` through
//! the `config` crate, overridden by `AUTHPROXY__SECTION__KEY` environment
//! variables, then parsed into typed values. Every error names the file, the
//! key (`routes[2].scope`) and the problem, so `authproxy verifier serve`
//! refuses to start (exit status 64) before it binds a port or fetches a key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use authproxy_core::Environment;
use authproxy_core::duration::parse_in as duration_in;
use serde::Deserialize;

use super::introspect::Secret;
use super::routes::{RouteError, Routes};

/// `server.listen` when not configured.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8500";
/// `ext_authz.path_prefix` when not configured.
pub const DEFAULT_EXT_AUTHZ_PREFIX: &str = "/ext_authz";
/// Paths the verifier serves itself; an ext_authz prefix may not shadow them.
const OWN_PATHS: [&str; 4] = ["/verify", "/introspect", "/healthz", "/metrics"];
/// Shortest introspection secret accepted, in bytes.
const MIN_SECRET_BYTES: usize = 16;

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
        /// The dotted key, e.g. `trust.audience` or `routes[1].scope`.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// The whole verifier configuration, validated.
#[derive(Debug)]
#[non_exhaustive]
pub struct VerifierConfig {
    /// The file it was loaded from.
    pub file: PathBuf,
    /// `[server]`
    pub server: ServerConfig,
    /// `[trust]`: what the layer's `Authorizer` is built from.
    pub trust: TrustConfig,
    /// `[introspection]`
    pub introspection: IntrospectionConfig,
    /// `[ext_authz]`
    pub ext_authz: ExtAuthzConfig,
    /// `[[routes]]`, in file order; deny by default.
    pub routes: Routes,
}

/// `[server]`
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Addresses to bind (default `127.0.0.1:8500`).
    pub listen: Vec<SocketAddr>,
    /// Connection limits. Unlike the sidecar's, peers that are not
    /// loopback get every slot by default: the proxy asking may run in
    /// another container.
    pub limits: crate::serve::Limits,
}

/// Where the root keys come from (one source: see [`TrustConfig::keys`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySource {
    /// `trust.issuers = [URL, …]`: the platform issuer's nodes — each
    /// `URL/.well-known/jwks.json`, merged, and their revocation feed.
    Issuers(Vec<String>),
    /// `trust.jwks_url`.
    JwksUrl(String),
    /// `trust.jwks_file`.
    JwksFile(PathBuf),
}

impl KeySource {
    /// The JWKS URL or file this source reads.
    pub fn describe(&self) -> String {
        match self {
            Self::Issuers(urls) => urls
                .iter()
                .map(|u| format!("{u}/.well-known/jwks.json"))
                .collect::<Vec<_>>()
                .join(", "),
            Self::JwksUrl(url) => url.clone(),
            Self::JwksFile(path) => path.display().to_string(),
        }
    }
}

/// `[trust]`
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TrustConfig {
    /// Exactly one of `issuers` (one URL today: the layer takes one key
    /// source), `jwks_url`, `jwks_file`.
    pub keys: KeySource,
    /// RFC 7638 thumbprints of the only roots trusted, if pinned.
    pub pinned_roots: Option<Vec<String>>,
    /// The upstream API's identifier: the `aud` tokens must carry.
    pub audience: String,
    /// The environment the upstream serves.
    pub environment: Environment,
    /// Clock-skew tolerance (default 30 s, at most 5 min).
    pub leeway: Duration,
    /// How long keys that cannot be refreshed stay trusted (default 24 h).
    pub max_stale: Duration,
    /// The revocation feed, when it is not the issuer's (`trust.revocation_url`;
    /// with `trust.issuers` the issuer's own feed is read).
    pub revocation_url: Option<String>,
    /// How long the feed may be unreadable before personal access tokens
    /// are refused (`trust.revocations_max_stale`, default 30 s).
    pub revocations_max_stale: Duration,
}

/// `[introspection]`
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct IntrospectionConfig {
    /// The shared secret callers that are not loopback present, read from
    /// `secret_file` at start; none: loopback callers only.
    pub secret: Option<Secret>,
}

/// `[ext_authz]`: Envoy's HTTP authorization service.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ExtAuthzConfig {
    /// Envoy's `http_service.path_prefix`: a request under it is a check of
    /// the request whose method it has and whose path follows the prefix.
    pub path_prefix: String,
}

// The raw shapes: strings as written, checked below so that errors can name
// the key. `deny_unknown_fields` turns a typo into an error instead of a
// silently ignored setting — here that matters twice: a misspelt `scope`
// must not leave a route without its rule.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    trust: RawTrust,
    #[serde(default)]
    introspection: RawIntrospection,
    #[serde(default)]
    ext_authz: RawExtAuthz,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<OneOrMany>,
    header_read_timeout: Option<String>,
    body_read_timeout: Option<String>,
    max_connections: Option<u32>,
    max_remote_connections: Option<u32>,
    shutdown_grace: Option<String>,
}

/// `key = "A"` or `key = ["A", …]` (from the environment: `A,B`).
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    issuers: Option<OneOrMany>,
    jwks_url: Option<String>,
    jwks_file: Option<String>,
    pinned_roots: Option<OneOrMany>,
    audience: Option<String>,
    environment: Option<String>,
    leeway: Option<String>,
    max_stale: Option<String>,
    revocation_url: Option<String>,
    revocations_max_stale: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawIntrospection {
    secret_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawExtAuthz {
    path_prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) method: Option<String>,
    pub(super) path: Option<String>,
    pub(super) scope: Option<String>,
    pub(super) public: Option<bool>,
}

impl VerifierConfig {
    /// Loads `file`, applies `AUTHPROXY__SECTION__KEY` overrides from the
    /// process environment, and validates every key; reads the
    /// introspection secret file.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(file, None)
    }

    /// As [`VerifierConfig::load`], with the environment given explicitly
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
            // DESIGN §6: list values are comma-separated in the environment.
            .list_separator(",")
            .with_list_parse_key("server.listen")
            .with_list_parse_key("trust.issuers")
            .with_list_parse_key("trust.pinned_roots")
            .source(env);
        let raw: Raw = ::config::Config::builder()
            .add_source(::config::File::from(file).format(::config::FileFormat::Toml))
            .add_source(environment)
            .build()
            .and_then(::config::Config::try_deserialize)
            .map_err(|e| load_err(e.to_string()))?;
        Validator { file }.validate(raw)
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

    fn validate(&self, raw: Raw) -> Result<VerifierConfig, ConfigError> {
        Ok(VerifierConfig {
            file: self.file.to_owned(),
            server: self.server(raw.server)?,
            trust: self.trust(raw.trust)?,
            introspection: self.introspection(raw.introspection)?,
            ext_authz: self.ext_authz(raw.ext_authz)?,
            routes: Routes::parse(&raw.routes).map_err(|e| match e {
                RouteError::Empty => self.invalid(
                    "routes",
                    "is empty: every request would be refused; add [[routes]] with method, path and scope (or public = true)",
                ),
                RouteError::Invalid { index, key, problem } => {
                    self.invalid(format!("routes[{index}].{key}"), problem)
                }
            })?,
        })
    }

    fn server(&self, raw: RawServer) -> Result<ServerConfig, ConfigError> {
        let texts = raw
            .listen
            .map_or_else(|| vec![DEFAULT_LISTEN.to_owned()], OneOrMany::into_vec);
        if texts.is_empty() {
            return Err(self.invalid("server.listen", "must name at least one address"));
        }
        let mut listen: Vec<SocketAddr> = Vec::with_capacity(texts.len());
        for a in &texts {
            let addr: SocketAddr = a.parse().map_err(|_| {
                self.invalid(
                    "server.listen",
                    format!(
                        "`{a}` is not an IP:PORT socket address (IPv6 in brackets: [::1]:8500)"
                    ),
                )
            })?;
            if listen.contains(&addr) {
                return Err(self.invalid("server.listen", format!("lists {addr} twice")));
            }
            listen.push(addr);
        }
        let defaults = crate::serve::Limits::default();
        let mut limits = crate::serve::Limits {
            max_remote_connections: defaults.max_connections,
            ..defaults
        };
        if let Some(t) = &raw.header_read_timeout {
            limits.header_read_timeout = self.duration(
                "server.header_read_timeout",
                Some(t),
                "",
                Duration::from_secs(1),
                Duration::from_secs(10),
            )?;
        }
        if let Some(t) = &raw.body_read_timeout {
            limits.body_read_timeout = self.duration(
                "server.body_read_timeout",
                Some(t),
                "",
                Duration::from_secs(1),
                Duration::from_secs(60),
            )?;
        }
        if let Some(n) = raw.max_connections {
            if n == 0 {
                return Err(self.invalid("server.max_connections", "must be at least 1"));
            }
            limits.max_connections = n as usize;
            limits.max_remote_connections = n as usize;
        }
        if let Some(n) = raw.max_remote_connections {
            if n == 0 {
                return Err(self.invalid("server.max_remote_connections", "must be at least 1"));
            }
            limits.max_remote_connections = n as usize;
        }
        if let Some(t) = &raw.shutdown_grace {
            limits.shutdown_grace = self.duration(
                "server.shutdown_grace",
                Some(t),
                "",
                Duration::ZERO,
                Duration::from_secs(300),
            )?;
        }
        Ok(ServerConfig { listen, limits })
    }

    fn trust(&self, raw: RawTrust) -> Result<TrustConfig, ConfigError> {
        let issuers = raw.issuers.map(OneOrMany::into_vec);
        let jwks_url = raw.jwks_url.filter(|s| !s.trim().is_empty());
        let jwks_file = raw.jwks_file.filter(|s| !s.trim().is_empty());
        let given = [issuers.is_some(), jwks_url.is_some(), jwks_file.is_some()];
        let exactly_one = || {
            self.invalid(
                "trust.issuers",
                "or `trust.jwks_url` or `trust.jwks_file`: set exactly one (where the root public keys come from)",
            )
        };
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(exactly_one());
        }
        let keys = if let Some(list) = issuers {
            if list.is_empty() {
                return Err(self.invalid("trust.issuers", "is empty"));
            }
            // Several nodes (or issuers): their JWKS are merged and the
            // revocation feed is read from the first that answers.
            let urls = list
                .iter()
                .map(|u| http_url(u).map_err(|p| self.invalid("trust.issuers", p)))
                .collect::<Result<Vec<_>, _>>()?;
            KeySource::Issuers(urls)
        } else if let Some(url) = jwks_url {
            KeySource::JwksUrl(http_url(&url).map_err(|p| self.invalid("trust.jwks_url", p))?)
        } else if let Some(path) = jwks_file {
            KeySource::JwksFile(PathBuf::from(path))
        } else {
            return Err(exactly_one());
        };
        let pinned_roots = match raw.pinned_roots.map(OneOrMany::into_vec) {
            None => None,
            Some(pins) if pins.is_empty() => {
                return Err(self.invalid(
                    "trust.pinned_roots",
                    "is empty; pin at least one root or remove the key",
                ));
            }
            Some(pins) => {
                let base64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
                if let Some(bad) = pins
                    .iter()
                    .find(|p| p.len() != 43 || !p.bytes().all(base64url))
                {
                    return Err(self.invalid(
                        "trust.pinned_roots",
                        format!("`{bad}` is not an RFC 7638 SHA-256 thumbprint (43 base64url characters)"),
                    ));
                }
                Some(pins)
            }
        };
        let audience = raw
            .audience
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                self.invalid(
                    "trust.audience",
                    "is required: the upstream API's identifier, the sidecars' tokens.audience",
                )
            })?;
        let environment = raw
            .environment
            .filter(|e| !e.trim().is_empty())
            .ok_or_else(|| self.invalid("trust.environment", "is required"))?;
        let environment = Environment::parse(environment.trim())
            .map_err(|e| self.invalid("trust.environment", e.to_string()))?;
        let leeway = self.duration(
            "trust.leeway",
            raw.leeway.as_deref(),
            "30s",
            Duration::ZERO,
            Duration::from_secs(300),
        )?;
        let max_stale = self.duration(
            "trust.max_stale",
            raw.max_stale.as_deref(),
            "24h",
            Duration::from_secs(60),
            Duration::from_secs(7 * 24 * 3600),
        )?;
        let revocation_url = match raw.revocation_url.filter(|s| !s.trim().is_empty()) {
            None => None,
            Some(_) if matches!(keys, KeySource::Issuers(_)) => {
                return Err(self.invalid(
                    "trust.revocation_url",
                    "is the issuer's own feed with `trust.issuers`: remove one of the two",
                ));
            }
            Some(url) => Some(http_url(&url).map_err(|p| self.invalid("trust.revocation_url", p))?),
        };
        let revocations_max_stale = self.duration(
            "trust.revocations_max_stale",
            raw.revocations_max_stale.as_deref(),
            "30s",
            Duration::from_secs(1),
            Duration::from_secs(24 * 3600),
        )?;
        Ok(TrustConfig {
            keys,
            pinned_roots,
            audience,
            environment,
            leeway,
            max_stale,
            revocation_url,
            revocations_max_stale,
        })
    }

    fn introspection(&self, raw: RawIntrospection) -> Result<IntrospectionConfig, ConfigError> {
        let Some(path) = raw.secret_file.filter(|s| !s.trim().is_empty()) else {
            return Ok(IntrospectionConfig::default());
        };
        let key = "introspection.secret_file";
        let path = PathBuf::from(path);
        let meta = std::fs::metadata(&path).map_err(|e| {
            self.invalid(key, format!("= {}: cannot be read ({e})", path.display()))
        })?;
        // A secret every local user can read authenticates nobody.
        if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o004 != 0 {
            return Err(self.invalid(
                key,
                format!(
                    "= {} is readable by every local user; chmod o-r it (0600 or 0640)",
                    path.display()
                ),
            ));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| {
            self.invalid(key, format!("= {}: cannot be read ({e})", path.display()))
        })?;
        // The value is never repeated in an error: it is the secret.
        let value = text.trim();
        if value.len() < MIN_SECRET_BYTES || !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(self.invalid(
                key,
                format!(
                    "= {}: the secret must be at least {MIN_SECRET_BYTES} printable ASCII characters without spaces (e.g. `openssl rand -hex 32`)",
                    path.display()
                ),
            ));
        }
        Ok(IntrospectionConfig {
            secret: Some(Secret::new(value)),
        })
    }

    fn ext_authz(&self, raw: RawExtAuthz) -> Result<ExtAuthzConfig, ConfigError> {
        let prefix = raw
            .path_prefix
            .unwrap_or_else(|| DEFAULT_EXT_AUTHZ_PREFIX.into());
        let valid = prefix.len() > 1
            && prefix.starts_with('/')
            && !prefix.ends_with('/')
            && prefix[1..].split('/').all(|s| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                    && s != "."
                    && s != ".."
            });
        if !valid {
            return Err(self.invalid(
                "ext_authz.path_prefix",
                format!("`{prefix}` must be a path like /ext_authz: a leading /, no trailing /, segments of letters, digits, - _ ."),
            ));
        }
        if let Some(own) = OWN_PATHS
            .iter()
            .find(|own| **own == prefix || own.starts_with(&format!("{prefix}/")))
        {
            return Err(self.invalid(
                "ext_authz.path_prefix",
                format!("`{prefix}` would shadow the verifier's own {own}"),
            ));
        }
        Ok(ExtAuthzConfig {
            path_prefix: prefix,
        })
    }
}

/// An http(s) URL with a host and no query, fragment or credentials; its
/// trailing `/` removed.
fn http_url(s: &str) -> Result<String, String> {
    let trimmed = s.trim().trim_end_matches('/');
    let url = reqwest::Url::parse(trimmed).map_err(|e| format!("`{s}` is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https")
        || url.host().is_none()
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(format!(
            "`{s}` must be an http(s) URL with a host and no credentials, query or fragment"
        ));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const MINIMAL: &str = "[trust]\njwks_url = \"http://127.0.0.1:8200/.well-known/jwks.json\"\naudience = \"https://api\"\nenvironment = \"main\"\n[[routes]]\nmethod = \"GET\"\npath = \"/environment\"\nscope = \"env:view\"\n";

    fn write(body: &str) -> tempfile::NamedTempFile {
        let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::fs::write(f.path(), body).unwrap();
        f
    }

    fn load(body: &str, env: &[(&str, &str)]) -> Result<VerifierConfig, ConfigError> {
        let f = write(body);
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        VerifierConfig::load_with_env(f.path(), Some(env))
    }

    fn error_of(body: &str, env: &[(&str, &str)]) -> String {
        load(body, env).unwrap_err().to_string()
    }

    #[test]
    fn the_shipped_config_is_valid() {
        let c =
            VerifierConfig::load_with_env(Path::new("config/verifier.toml"), Some(HashMap::new()))
                .unwrap();
        assert_eq!(
            c.server.listen,
            ["127.0.0.1:8500".parse().unwrap()] as [SocketAddr; 1]
        );
        assert_eq!(
            c.trust.keys,
            KeySource::Issuers(vec!["http://127.0.0.1:8400".into()])
        );
        assert_eq!(
            c.trust.keys.describe(),
            "http://127.0.0.1:8400/.well-known/jwks.json"
        );
        assert_eq!(c.trust.environment.as_str(), "main");
        assert_eq!(c.ext_authz.path_prefix, "/ext_authz");
        assert!(c.introspection.secret.is_none());
    }

    #[test]
    fn defaults_fill_what_is_not_set() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.trust.leeway, Duration::from_secs(30));
        assert_eq!(c.trust.max_stale, Duration::from_secs(24 * 3600));
        assert!(c.trust.pinned_roots.is_none());
        // Proxies may call from other containers: no small remote budget.
        assert_eq!(
            c.server.limits.max_remote_connections,
            c.server.limits.max_connections
        );
    }

    #[test]
    fn environment_variables_override_the_file_and_lists_are_comma_separated() {
        let c = load(
            MINIMAL,
            &[
                ("AUTHPROXY__TRUST__AUDIENCE", "https://other"),
                ("AUTHPROXY__SERVER__LISTEN", "127.0.0.1:9000,[::1]:9000"),
            ],
        )
        .unwrap();
        assert_eq!(c.trust.audience, "https://other");
        assert_eq!(c.server.listen.len(), 2);
    }

    #[test]
    fn exactly_one_key_source_is_required() {
        let none = MINIMAL.replace(
            "jwks_url = \"http://127.0.0.1:8200/.well-known/jwks.json\"\n",
            "",
        );
        assert!(error_of(&none, &[]).contains("set exactly one"));
        let two = MINIMAL.replace("[trust]\n", "[trust]\njwks_file = \"/x\"\n");
        assert!(error_of(&two, &[]).contains("set exactly one"));
    }

    #[test]
    fn several_issuers_are_all_kept_and_a_bad_one_named() {
        let body = MINIMAL.replace(
            "jwks_url = \"http://127.0.0.1:8200/.well-known/jwks.json\"",
            "issuers = [\"http://a:8400\", \"http://b:8400\"]",
        );
        let c = load(&body, &[]).unwrap();
        assert_eq!(
            c.trust.keys,
            KeySource::Issuers(vec!["http://a:8400".into(), "http://b:8400".into()])
        );
        let bad = body.replace("http://b:8400", "ftp://b");
        assert!(error_of(&bad, &[]).contains("`trust.issuers`"));
    }

    #[test]
    fn every_error_names_the_file_and_the_key() {
        for (env, key) in [
            (
                ("AUTHPROXY__TRUST__ENVIRONMENT", "Main!"),
                "`trust.environment`",
            ),
            (("AUTHPROXY__TRUST__LEEWAY", "1h"), "`trust.leeway`"),
            (
                ("AUTHPROXY__TRUST__JWKS_URL", "ftp://x"),
                "`trust.jwks_url`",
            ),
            (
                ("AUTHPROXY__SERVER__LISTEN", "localhost"),
                "`server.listen`",
            ),
            (
                ("AUTHPROXY__TRUST__PINNED_ROOTS", "abc"),
                "`trust.pinned_roots`",
            ),
            (
                ("AUTHPROXY__EXT_AUTHZ__PATH_PREFIX", "/verify"),
                "`ext_authz.path_prefix`",
            ),
            (
                ("AUTHPROXY__EXT_AUTHZ__PATH_PREFIX", "x/"),
                "`ext_authz.path_prefix`",
            ),
        ] {
            let e = error_of(MINIMAL, &[env]);
            assert!(e.contains(".toml: ") && e.contains(key), "{env:?}: {e}");
        }
        let e = error_of(&MINIMAL.replace("audience = \"https://api\"\n", ""), &[]);
        assert!(e.contains("`trust.audience` is required"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = error_of(&MINIMAL.replace("scope =", "scopes ="), &[]);
        assert!(e.contains("scopes"), "{e}");
        let e = error_of(&format!("{MINIMAL}[proxy]\nupstream = \"x\"\n"), &[]);
        assert!(e.contains("proxy"), "{e}");
    }

    #[test]
    fn route_errors_name_the_route_and_its_key() {
        let e = error_of(
            &format!(
                "{MINIMAL}[[routes]]\nmethod = \"POST\"\npath = \"/tasks/{{name}}/runs\"\nscope = \"task:operate:{{task}}\"\n"
            ),
            &[],
        );
        assert!(e.contains("`routes[1].scope`"), "{e}");
        let no_routes = MINIMAL.split("[[routes]]").next().unwrap().to_owned();
        assert!(error_of(&no_routes, &[]).contains("`routes` is empty"));
    }

    #[test]
    fn the_secret_file_must_be_private_and_long_and_is_never_echoed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let with_secret = |mode: u32, value: &str| {
            std::fs::write(&path, value).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .unwrap();
            load(
                &format!(
                    "{MINIMAL}[introspection]\nsecret_file = \"{}\"\n",
                    path.display()
                ),
                &[],
            )
        };
        let good = "0123456789abcdef0123456789abcdef";
        let c = with_secret(0o600, &format!("{good}\n")).unwrap();
        assert!(c.introspection.secret.unwrap().matches(good.as_bytes()));
        let e = with_secret(0o644, good).unwrap_err().to_string();
        assert!(
            e.contains("readable by every local user") && !e.contains(good),
            "{e}"
        );
        let e = with_secret(0o600, "short-secret").unwrap_err().to_string();
        assert!(
            e.contains("at least 16") && !e.contains("short-secret"),
            "{e}"
        );
        std::fs::remove_file(&path).unwrap();
        let e = load(
            &format!(
                "{MINIMAL}[introspection]\nsecret_file = \"{}\"\n",
                path.display()
            ),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`introspection.secret_file`") && e.contains("cannot be read"),
            "{e}"
        );
    }
}
