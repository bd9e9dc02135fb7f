//! `temp-postgres [--durable]`: starts a throwaway PostgreSQL server (see
//! `authproxy_test_support::postgres`), prints `url=<URL of database
//! authproxy>` and `bin=<directory of psql>` on stdout, and keeps it until
//! its stdin closes; then stops it and removes its directory. For
//! `bench/scale.py`, and for trying the issuer on PostgreSQL by hand:
//!
//! ```text
//! cargo run -p authproxy-test-support --bin temp-postgres
//! ```
//!
//! `--durable` keeps PostgreSQL's default durability (fsync on), for
//! measurements; without it the server is as fast and as fragile as the
//! tests' server.

use std::io::Write as _;
use std::process::ExitCode;

use authproxy_test_support::postgres::{Durability, TempPostgres};

fn main() -> ExitCode {
    let durability = if std::env::args().skip(1).any(|a| a == "--durable") {
        Durability::Full
    } else {
        Durability::Off
    };
    let server = match TempPostgres::start(durability) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("temp-postgres: {e}");
            return ExitCode::FAILURE;
        }
    };
    let created = server.psql("postgres", "CREATE DATABASE authproxy");
    if let Err(e) = created {
        eprintln!("temp-postgres: {e}");
        return ExitCode::FAILURE;
    }
    let mut out = std::io::stdout().lock();
    let printed = writeln!(out, "url={}", server.url("authproxy"))
        .and_then(|()| writeln!(out, "bin={}", server.bin_dir().display()))
        .and_then(|()| out.flush());
    drop(out);
    if printed.is_ok() {
        // Until whoever started us closes our stdin (or exits).
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    }
    drop(server);
    ExitCode::SUCCESS
}
