//! The `authproxy` binary: parse arguments, load the configuration,
//! initialise logging, dispatch to a verb in [`authproxy::cli`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use authproxy::cli::credentials::{AdminArgs, Verb};
use authproxy::cli::issuer::{PlanFormat, SyncArgs};
use authproxy::cli::{self, TokenFormat};
use authproxy::config::Config;
use authproxy::telemetry::{LogFormat, init_logging};

/// The shipped sidecar configuration.
const DEFAULT_CONFIG: &str = "config/authproxy.toml";
/// The shipped issuer configuration.
#[cfg(feature = "issuer")]
const DEFAULT_ISSUER_CONFIG: &str = "config/issuer.toml";
/// The admin token file of the shipped issuer configuration (its
/// `issuer.state_dir` + `admin-token`).
const DEFAULT_ADMIN_TOKEN_FILE: &str = ".authproxy-issuer/admin-token";

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
    /// The platform issuer: serve it, or manage it.
    Issuer {
        #[command(subcommand)]
        command: IssuerCommand,
    },
}

#[derive(Subcommand)]
enum IssuerCommand {
    /// Run an issuer node.
    #[cfg(feature = "issuer")]
    Serve {
        /// The issuer's TOML configuration.
        #[arg(long, short, default_value = DEFAULT_ISSUER_CONFIG)]
        config: PathBuf,
        /// Log format; default: text on a terminal, json otherwise.
        #[arg(long, value_enum)]
        log_format: Option<LogFormatArg>,
    },
    /// Make the issuer's identities match a declarations file, print the
    /// plan, and hand out the workload credentials it creates (once).
    Sync {
        /// The declarations file.
        #[arg(long, short)]
        declarations: PathBuf,
        /// The environment to sync.
        #[arg(long, short)]
        environment: String,
        /// Print the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Write each new workload credential to a file (mode 0600) named
        /// after its workload (`app/web` → `app_web`) instead of printing it.
        #[arg(long)]
        credentials_dir: Option<PathBuf>,
        /// The issuer's base URL (`http://` if it has no scheme).
        #[arg(
            long,
            env = "AUTHPROXY_ISSUER",
            default_value = "http://127.0.0.1:8400"
        )]
        issuer: String,
        /// The file holding the admin token.
        #[arg(long, env = "AUTHPROXY_ADMIN_TOKEN_FILE", default_value = DEFAULT_ADMIN_TOKEN_FILE)]
        admin_token_file: PathBuf,
        /// What to print.
        #[arg(long, value_enum, default_value_t = PlanFormatArg::Table)]
        format: PlanFormatArg,
    },
    /// Credentials (root keys, workload credentials, PATs) and their versions.
    Credentials {
        #[command(subcommand)]
        command: CredentialsCommand,
    },
    /// The tasks that create and delete credential versions.
    Tasks {
        #[command(subcommand)]
        command: TasksCommand,
    },
}

/// `authproxy issuer credentials …`
#[derive(Subcommand)]
enum CredentialsCommand {
    /// Every credential with its versions: state, created, retires at.
    List {
        #[command(flatten)]
        admin: AdminOptions,
    },
    /// Queue a rotation (a new version) of a credential.
    Rotate {
        /// The credential's id (see `credentials list`).
        #[arg(long)]
        credential: String,
        #[command(flatten)]
        admin: AdminOptions,
    },
}

/// `authproxy issuer tasks …`
#[derive(Subcommand)]
enum TasksCommand {
    /// The tasks of a credential, oldest first.
    List {
        /// The credential's id.
        #[arg(long)]
        credential: String,
        #[command(flatten)]
        admin: AdminOptions,
    },
    /// One task, with its errors.
    Show {
        /// The credential's id.
        #[arg(long)]
        credential: String,
        /// The task's id.
        #[arg(long)]
        task: String,
        #[command(flatten)]
        admin: AdminOptions,
    },
    /// Cancel a task that is queued or processing (it ends `failed`, error `cancelled`).
    Cancel {
        /// The credential's id.
        #[arg(long)]
        credential: String,
        /// The task's id.
        #[arg(long)]
        task: String,
        #[command(flatten)]
        admin: AdminOptions,
    },
}

/// Where the management verbs find the issuer, and what they print.
#[derive(clap::Args)]
struct AdminOptions {
    /// The issuer's base URL (`http://` if it has no scheme).
    #[arg(
        long,
        env = "AUTHPROXY_ISSUER",
        default_value = "http://127.0.0.1:8400"
    )]
    issuer: String,
    /// The file holding the admin token.
    #[arg(long, env = "AUTHPROXY_ADMIN_TOKEN_FILE", default_value = DEFAULT_ADMIN_TOKEN_FILE)]
    admin_token_file: PathBuf,
    /// What to print.
    #[arg(long, value_enum, default_value_t = PlanFormatArg::Table)]
    format: PlanFormatArg,
}

impl AdminOptions {
    fn args(self) -> AdminArgs {
        AdminArgs {
            issuer: self.issuer,
            admin_token_file: self.admin_token_file,
            format: match self.format {
                PlanFormatArg::Table => PlanFormat::Table,
                PlanFormatArg::Json => PlanFormat::Json,
            },
        }
    }
}

/// `--format` of the management verbs.
#[derive(Clone, Copy, clap::ValueEnum)]
enum PlanFormatArg {
    /// Aligned columns.
    Table,
    /// The issuer's JSON.
    Json,
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

/// The log format `--log-format` asks for, or the default.
fn log_format(arg: Option<LogFormatArg>) -> LogFormat {
    match arg {
        Some(LogFormatArg::Text) => LogFormat::Text,
        Some(LogFormatArg::Json) => LogFormat::Json,
        None if std::io::IsTerminal::is_terminal(&std::io::stderr()) => LogFormat::Text,
        None => LogFormat::Json,
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve {
            config,
            log_format: format,
        } => {
            init_logging(log_format(format));
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
            Ok(c) => match c.workload.declarations.clone() {
                Some(declarations) => cli::check(&declarations, Some(&c)),
                None => cli::usage_error(&format!(
                    "{}: `workload.declarations` is not set (in remote mode the issuer holds the declarations); use --declarations FILE",
                    c.file.display()
                )),
            },
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
        #[cfg(feature = "issuer")]
        Command::Issuer {
            command:
                IssuerCommand::Serve {
                    config,
                    log_format: format,
                },
        } => {
            init_logging(log_format(format));
            cli::issuer::serve(&config)
        }
        Command::Issuer {
            command:
                IssuerCommand::Sync {
                    declarations,
                    environment,
                    dry_run,
                    credentials_dir,
                    issuer,
                    admin_token_file,
                    format,
                },
        } => cli::issuer::sync(&SyncArgs {
            declarations,
            environment,
            dry_run,
            credentials_dir,
            issuer,
            admin_token_file,
            format: match format {
                PlanFormatArg::Table => PlanFormat::Table,
                PlanFormatArg::Json => PlanFormat::Json,
            },
        }),
        Command::Issuer {
            command: IssuerCommand::Credentials { command },
        } => match command {
            CredentialsCommand::List { admin } => {
                cli::credentials::run(&admin.args(), &Verb::ListCredentials)
            }
            CredentialsCommand::Rotate { credential, admin } => {
                cli::credentials::run(&admin.args(), &Verb::Rotate { credential })
            }
        },
        Command::Issuer {
            command: IssuerCommand::Tasks { command },
        } => match command {
            TasksCommand::List { credential, admin } => {
                cli::credentials::run(&admin.args(), &Verb::ListTasks { credential })
            }
            TasksCommand::Show {
                credential,
                task,
                admin,
            } => cli::credentials::run(&admin.args(), &Verb::ShowTask { credential, task }),
            TasksCommand::Cancel {
                credential,
                task,
                admin,
            } => cli::credentials::run(&admin.args(), &Verb::CancelTask { credential, task }),
        },
    }
}
