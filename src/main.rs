//! The `authproxy` binary: parse arguments, load and validate configuration,
//! then hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use authproxy::config::Config;
use authproxy::declarations::Declarations;
use authproxy::sidecar::Sidecar;
use authproxy::telemetry::{LogFormat, init_logging};

/// BSD `EX_USAGE`: the configuration is wrong (linkerd and sysexits convention).
const EX_USAGE: u8 = 64;

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
        #[arg(long, short, default_value = "config/authproxy.toml")]
        config: PathBuf,
        /// Log format; default: text on a terminal, json otherwise.
        #[arg(long, value_enum)]
        log_format: Option<LogFormatArg>,
    },
    /// Exit 0 when the sidecar answers ready, 1 otherwise (container health checks).
    Health {
        /// The sidecar's base URL.
        #[arg(
            long,
            default_value = "http://127.0.0.1:8200",
            env = "AUTHPROXY_ENDPOINT"
        )]
        endpoint: String,
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
        /// The sidecar's base URL.
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
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, log_format } => serve(&config, log_format),
        Command::Health { endpoint } => health(&endpoint),
        Command::Check {
            config,
            declarations,
        } => check(config, declarations),
        Command::Token {
            endpoint,
            scopes,
            format,
        } => token(&endpoint, &scopes, format),
    }
}

fn serve(config_path: &std::path::Path, log_format: Option<LogFormatArg>) -> ExitCode {
    let format = match log_format {
        Some(LogFormatArg::Text) => LogFormat::Text,
        Some(LogFormatArg::Json) => LogFormat::Json,
        None if std::io::IsTerminal::is_terminal(&std::io::stderr()) => LogFormat::Text,
        None => LogFormat::Json,
    };
    init_logging(format);
    // Everything that can be wrong with the configuration is found before any
    // port is bound, and reported as a usage error.
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => return fail_usage(&e),
    };
    let sidecar = match Sidecar::start(config, jsonwebtoken::get_current_timestamp()) {
        Ok(s) => Arc::new(s),
        Err(e) => return fail_usage(&e),
    };
    match run(sidecar) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn fail_usage(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("authproxy: {e}");
    ExitCode::from(EX_USAGE)
}

#[tokio::main(flavor = "current_thread")]
async fn run(sidecar: Arc<Sidecar>) -> anyhow::Result<()> {
    let addr = sidecar.config().server.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let reloader = tokio::spawn(reload_on_sighup(Arc::clone(&sidecar)));
    authproxy::server::run(listener, sidecar, shutdown_signal()).await?;
    reloader.abort();
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: re-read the declarations; on error keep serving the old ones.
async fn reload_on_sighup(sidecar: Arc<Sidecar>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload disabled");
        return;
    };
    while hup.recv().await.is_some() {
        match sidecar.reload(jsonwebtoken::get_current_timestamp()) {
            Ok(true) => {
                tracing::info!(scope = %sidecar.ceiling(), "declarations reloaded; new grant issued")
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

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

fn check(config: Option<PathBuf>, declarations: Option<PathBuf>) -> ExitCode {
    let (path, workload) = match (config, declarations) {
        (_, Some(d)) => (d, None),
        (c, None) => {
            let c = c.unwrap_or_else(|| PathBuf::from("config/authproxy.toml"));
            match Config::load(&c) {
                Ok(cfg) => (cfg.workload.declarations.clone(), Some(cfg)),
                Err(e) => {
                    eprintln!("authproxy: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let decl = match Declarations::load(&path) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("authproxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", decl.table());
    if let Some(cfg) = workload {
        if decl.get(&cfg.workload.id).is_none() {
            eprintln!(
                "authproxy: {}: `workload.id` = {} is not declared in {}",
                cfg.file.display(),
                cfg.workload.id,
                path.display()
            );
            return ExitCode::FAILURE;
        }
        println!(
            "\n{}: OK (this sidecar serves {})",
            path.display(),
            cfg.workload.id
        );
    } else {
        println!("\n{}: OK", path.display());
    }
    ExitCode::SUCCESS
}

fn token(endpoint: &str, scopes: &[String], format: Format) -> ExitCode {
    let Some(runtime) = client_runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(authproxy::client::fetch_token(endpoint, scopes)) {
        Ok((t, raw)) => {
            match format {
                Format::Raw => println!("{}", t.access_token),
                Format::Json => println!("{raw}"),
                Format::Header => println!("Authorization: Bearer {}", t.access_token),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("authproxy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn health(endpoint: &str) -> ExitCode {
    let url = format!("{}/readyz", endpoint.trim_end_matches('/'));
    let check = async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(3))
            .build()?;
        client.get(&url).send().await.map(|r| r.status())
    };
    let Some(runtime) = client_runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(check) {
        Ok(s) if s.is_success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("authproxy: {url}: not ready (HTTP {s})");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("authproxy: {url}: unreachable: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A single-threaded runtime for the client verbs (`token`, `health`).
fn client_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("authproxy: cannot start a runtime: {e}");
            None
        }
    }
}
