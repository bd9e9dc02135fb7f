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
        Command::Serve { config } => serve(&config),
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let stderr = std::io::stderr();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&stderr))
        .with_writer(std::io::stderr)
        .init();
}

fn serve(config_path: &std::path::Path) -> ExitCode {
    init_logging();
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

#[tokio::main]
async fn run(sidecar: Arc<Sidecar>) -> anyhow::Result<()> {
    let addr = sidecar.config().server.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    authproxy::server::run(listener, sidecar, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
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
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("authproxy: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
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
