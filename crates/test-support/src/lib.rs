//! Test support shared by authproxy's suites and benches — never by shipped
//! code (only dev-dependencies point here).
//!
//! # Layout
//! - [`postgres`] — [`TempPostgres`]: a real PostgreSQL server in a
//!   temporary directory, started from the installed binaries, one per test
//!   binary ([`TempPostgres::shared`]) with a fresh database per test
//!   ([`fresh_database`]). Used by the issuer's store contract suite, the
//!   binary's multi-node tests and `bench/scale.py` (through the
//!   `temp-postgres` program).

pub mod postgres;

pub use postgres::{Durability, PostgresError, TempPostgres, fresh_database};
