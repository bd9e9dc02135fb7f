//! The `authproxy` binary: parse arguments, load the configuration,
//! initialise logging, dispatch to a verb in [`authproxy::cli`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use authproxy::cli::admin::{OutputFormat, Target};
use authproxy::cli::credentials::Verb;
use authproxy::cli::issuer::{PlanFormat, SyncArgs};
use authproxy::cli::{self, TokenFormat};
use authproxy::config::Config;
use authproxy::telemetry::{LogFormat, init_logging};

/// The shipped sidecar configuration.
const DEFAULT_CONFIG: &str = "config/authproxy.toml";
/// The shipped issuer configuration.
#[cfg(feature = "issuer")]
const DEFAULT_ISSUER_CONFIG: &str = "config/issuer.toml";
/// The shipped verifier configuration.
const DEFAULT_VERIFIER_CONFIG: &str = "config/verifier.toml";
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
    /// Forward auth and token introspection for upstreams that are not Rust.
    Verifier {
        #[command(subcommand)]
        command: VerifierCommand,
    },
    /// Personal access tokens on an issuer: for people and automation
    /// outside the platform (CI, a laptop).
    Pat {
        #[command(subcommand)]
        command: PatCommand,
    },
}

/// Where a management verb sends its request, and what it prints.
#[derive(clap::Args)]
struct ManagementArgs {
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

impl ManagementArgs {
    fn target(self) -> Target {
        Target {
            issuer: self.issuer,
            admin_token_file: self.admin_token_file,
            format: match self.format {
                PlanFormatArg::Table => OutputFormat::Table,
                PlanFormatArg::Json => OutputFormat::Json,
            },
        }
    }
}

#[derive(Subcommand)]
enum PatCommand {
    /// Create a PAT and print its value, once.
    Create {
        /// Its name: 1-64 of a-z 0-9 _ . - (starting with a letter or digit), unique.
        #[arg(long)]
        name: String,
        /// The environment it works in.
        #[arg(long)]
        environment: String,
        /// How long it is valid, from 1 to the issuer's `pats.max_valid_minutes` (default 527040, 366 days).
        #[arg(long)]
        valid_minutes: u64,
        /// A scope (repeatable): task:operate:NAME, env:view, or a wildcard
        /// task:operate:*, task:*, env:*, *.
        #[arg(long = "scopes", required = true)]
        scopes: Vec<String>,
        #[command(flatten)]
        management: ManagementArgs,
    },
    /// Give a PAT a new value (printed once) and revoke the previous one;
    /// optionally change its validity (from now) and scopes.
    Update {
        /// The PAT.
        #[arg(long)]
        name: String,
        /// A new validity from now; without it the value expires when the previous one would have.
        #[arg(long)]
        valid_minutes: Option<u64>,
        /// New scopes (repeatable); without them the scopes stay.
        #[arg(long = "scopes")]
        scopes: Vec<String>,
        #[command(flatten)]
        management: ManagementArgs,
    },
    /// Print a PAT's properties (never its value).
    Show {
        /// The PAT.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        management: ManagementArgs,
    },
    /// Print every PAT's properties (never a value).
    List {
        #[command(flatten)]
        management: ManagementArgs,
    },
    /// Delete a PAT: it and the tokens exchanged from it are revoked.
    Delete {
        /// The PAT.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        management: ManagementArgs,
    },
}

#[derive(Subcommand)]
enum VerifierCommand {
    /// Serve `/verify` (nginx, Traefik, Caddy), Envoy ext_authz checks and
    /// `/introspect` (RFC 7662).
    Serve {
        /// The verifier's TOML configuration.
        #[arg(long, short, default_value = DEFAULT_VERIFIER_CONFIG)]
        config: PathBuf,
        /// Log format; default: text on a terminal, json otherwise.
        #[arg(long, value_enum)]
        log_format: Option<LogFormatArg>,
    },
}

#[derive(Subcommand)]
enum GrantsCommand {
    /// Revoke every live grant of a workload: every layer refuses its
    /// tokens from its next revocation poll.
    Revoke {
        /// The environment.
        #[arg(long, short)]
        environment: String,
        /// The workload (app/NAME, worker/APP/NAME, task/NAME).
        #[arg(long, short)]
        workload: String,
        #[command(flatten)]
        management: ManagementArgs,
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
    /// Grants of workloads.
    Grants {
        #[command(subcommand)]
        command: GrantsCommand,
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
        admin: ManagementArgs,
    },
    /// Queue a rotation (a new version) of a credential.
    Rotate {
        /// The credential's id (see `credentials list`).
        #[arg(long)]
        credential: String,
        #[command(flatten)]
        admin: ManagementArgs,
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
        admin: ManagementArgs,
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
        admin: ManagementArgs,
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
        admin: ManagementArgs,
    },
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
    // A command line that does not parse is a usage error: 64, as for
    // every other usage error (clap's own status would be 2).
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(cli::EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
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
        Command::Verifier {
            command:
                VerifierCommand::Serve {
                    config,
                    log_format: format,
                },
        } => {
            init_logging(log_format(format));
            cli::verifier::serve(&config)
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
            command:
                IssuerCommand::Grants {
                    command:
                        GrantsCommand::Revoke {
                            environment,
                            workload,
                            management,
                        },
                },
        } => cli::issuer::revoke_grants(&management.target(), &environment, &workload),
        Command::Pat { command } => match command {
            PatCommand::Create {
                name,
                environment,
                valid_minutes,
                scopes,
                management,
            } => cli::pat::create(
                &management.target(),
                &name,
                &environment,
                valid_minutes,
                &scopes,
            ),
            PatCommand::Update {
                name,
                valid_minutes,
                scopes,
                management,
            } => cli::pat::update(&management.target(), &name, valid_minutes, &scopes),
            PatCommand::Show { name, management } => cli::pat::show(&management.target(), &name),
            PatCommand::List { management } => cli::pat::list(&management.target()),
            PatCommand::Delete { name, management } => {
                cli::pat::delete(&management.target(), &name)
            }
        },
        Command::Issuer {
            command: IssuerCommand::Credentials { command },
        } => match command {
            CredentialsCommand::List { admin } => {
                cli::credentials::run(&admin.target(), &Verb::ListCredentials)
            }
            CredentialsCommand::Rotate { credential, admin } => {
                cli::credentials::run(&admin.target(), &Verb::Rotate { credential })
            }
        },
        Command::Issuer {
            command: IssuerCommand::Tasks { command },
        } => match command {
            TasksCommand::List { credential, admin } => {
                cli::credentials::run(&admin.target(), &Verb::ListTasks { credential })
            }
            TasksCommand::Show {
                credential,
                task,
                admin,
            } => cli::credentials::run(&admin.target(), &Verb::ShowTask { credential, task }),
            TasksCommand::Cancel {
                credential,
                task,
                admin,
            } => cli::credentials::run(&admin.target(), &Verb::CancelTask { credential, task }),
        },
    }
}
