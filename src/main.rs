//! The `authproxy` binary: parse arguments, load the configuration,
//! initialise logging, dispatch to a verb in [`authproxy::cli`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use authproxy::cli::{self, TokenFormat};
use authproxy::config::Config;
use authproxy::telemetry::{LogFormat, init_logging};

/// The shipped sidecar configuration.
const DEFAULT_CONFIG: &str = "config/authproxy.toml";

#[derive(Parser)]
#[command(
    name = "authproxy",
    version,
    about = "Short-lived, scoped tokens for platform workloads"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar daemon.
    Serve {
        /// The sidecar's TOML configuration.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Log format; default: text on a terminal, json otherwise.
        #[arg(long, value_enum)]
        log_format: Option<LogFormatArg>,
    },
    /// Exit 0 when the sidecar answers ready, 1 otherwise (container health checks).
    Health {
        /// The sidecar's base URL (`http://` if it has no scheme).
        #[arg(
            long,
            default_value = "http://127.0.0.1:8200",
            env = "AUTHPROXY_ENDPOINT"
        )]
        endpoint: String,
        /// The sidecar's configuration: its `trust.state_dir` holds the id
        /// the sidecar wrote at start, which `/readyz` must answer with.
        #[arg(long, short, default_value = DEFAULT_CONFIG, env = "AUTHPROXY_CONFIG")]
        config: PathBuf,
    },
    /// Write the root public keys (a JWKS) for upstreams to mount as a file,
    /// creating the embedded root key on first use as `serve` would.
    Jwks {
        /// The sidecar's configuration (its `trust.state_dir`).
        #[arg(long, short, default_value = DEFAULT_CONFIG, env = "AUTHPROXY_CONFIG")]
        config: PathBuf,
        /// Write here (atomically, mode 0644) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Validate declarations and print every workload's effective authorizations.
    Check {
        /// A sidecar configuration; its `workload.declarations` is checked.
        #[arg(long, short, conflicts_with = "declarations")]
        config: Option<PathBuf>,
        /// A declarations file to check directly.
        #[arg(long, short)]
        declarations: Option<PathBuf>,
    },
    /// Fetch a token from the local sidecar and print it (for scripts and crons).
    Token {
        /// The sidecar's base URL (`http://` if it has no scheme).
        #[arg(
            long,
            default_value = "http://127.0.0.1:8200",
            env = "AUTHPROXY_ENDPOINT"
        )]
        endpoint: String,
        /// A scope to ask for (repeatable); all declared when absent.
        #[arg(long = "scope", short)]
        scopes: Vec<String>,
        /// What to print.
        #[arg(long, value_enum, default_value_t = Format::Raw)]
        format: Format,
        /// Keep trying for up to SECONDS while the sidecar is not listening
        /// yet or answers 503/429 (every 100 ms, doubling to 2 s); for crons
        /// that start with their container. 0: one try.
        #[arg(long, value_name = "SECONDS", default_value_t = 0)]
        wait: u64,
    },
}

/// `--log-format`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Output of `authproxy token`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    /// The token alone.
    Raw,
    /// The token endpoint's JSON response.
    Json,
    /// `Authorization: Bearer <token>`, for `curl -H "$(authproxy token --format header)"`.
    Header,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve { config, log_format } => {
            init_logging(match log_format {
                Some(LogFormatArg::Text) => LogFormat::Text,
                Some(LogFormatArg::Json) => LogFormat::Json,
                None if std::io::IsTerminal::is_terminal(&std::io::stderr()) => LogFormat::Text,
                None => LogFormat::Json,
            });
            match Config::load(&config) {
                Ok(c) => cli::serve(c),
                Err(e) => cli::usage_error(&e),
            }
        }
        Command::Jwks { config, out } => match Config::load(&config) {
            Ok(c) => cli::jwks(&c, out.as_deref()),
            Err(e) => cli::usage_error(&e),
        },
        Command::Health { endpoint, config } => match Config::load(&config) {
            Ok(c) => cli::health(&endpoint, &c),
            Err(e) => cli::usage_error(&e),
        },
        Command::Check {
            config,
            declarations: Some(declarations),
        } => {
            debug_assert!(config.is_none(), "clap: conflicts_with");
            cli::check(&declarations, None)
        }
        Command::Check {
            config,
            declarations: None,
        } => match Config::load(&config.unwrap_or_else(|| DEFAULT_CONFIG.into())) {
            Ok(c) => cli::check(&c.workload.declarations.clone(), Some(&c)),
            Err(e) => cli::usage_error(&e),
        },
        Command::Token {
            endpoint,
            scopes,
            format,
            wait,
        } => cli::token(
            &endpoint,
            &scopes,
            match format {
                Format::Raw => TokenFormat::Raw,
                Format::Json => TokenFormat::Json,
                Format::Header => TokenFormat::Header,
            },
            Duration::from_secs(wait),
        ),
    }
}
