//! A throwaway PostgreSQL server: `initdb` into a temporary directory, then
//! `postgres` listening on a unix socket in that directory only — no TCP
//! port, so there is no port to race other tests for — with trust
//! authentication for its one superuser, `authproxy`.
//!
//! **Root.** `initdb` and `postgres` refuse to run as root. When the tests
//! run as root (containers, CI), both run as the `postgres` user (Debian's
//! package creates it), else as `nobody`, through `setpriv`, and the
//! directory is handed over to that user first. Otherwise they run as the
//! caller.
//!
//! **Cleanup.** A small `sh` supervisor owns the server. It stops it (fast
//! shutdown) and removes the directory as soon as its stdin closes: when the
//! [`TempPostgres`] is dropped, or — for the one shared by a test binary, a
//! static that is never dropped — when the test process exits, however it
//! exits (the kernel closes the pipe). No server or directory outlives its
//! tests.
//!
//! **Binaries.** `$AUTHPROXY_PG_BIN` when set; else the directory of
//! `initdb` found on `PATH` (symlinks followed); else the newest
//! `/usr/lib/postgresql/<major>/bin` (Debian and Ubuntu install there and put
//! only wrappers on `PATH`).
//!
//! A test that needs PostgreSQL must fail, never skip, when it cannot be
//! started: [`TempPostgres::shared`] panics with the reason.

use std::ffi::OsString;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The superuser `initdb` creates; trust authentication, so no password.
pub const SUPERUSER: &str = "authproxy";
/// Names the socket file (`.s.PGSQL.5432`); nothing listens on TCP.
const PORT: &str = "5432";
/// How long the server may take to accept connections after `initdb`.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// Runs the server (`$2…`) in the background, stops it (SIGINT: fast
/// shutdown) when stdin reaches end of file, and removes the directory
/// (`$1`) once it has stopped; prints the server's log on stderr if it
/// stopped with an error. The watcher reads a copy of stdin (fd 3) because
/// a background job's own stdin is /dev/null in a non-interactive shell.
const SUPERVISOR: &str = r#"
dir=$1; shift
"$@" >"$dir/postgres.log" 2>&1 &
pg=$!
exec 3<&0
{ read -r _ <&3; kill -INT "$pg" 2>/dev/null; } &
watcher=$!
exec 3<&-
wait "$pg"
status=$?
kill "$watcher" 2>/dev/null
[ "$status" -eq 0 ] || cat "$dir/postgres.log" >&2
rm -rf "$dir"
exit "$status"
"#;

/// Why the server could not be started or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresError {
    /// No PostgreSQL binaries were found.
    #[error(
        "PostgreSQL is not installed: no initdb in $AUTHPROXY_PG_BIN, on PATH or in \
         /usr/lib/postgresql/*/bin (apt-get install -y postgresql, or set AUTHPROXY_PG_BIN \
         to the directory holding initdb and postgres)"
    )]
    NotInstalled,
    /// Running as root, and neither `postgres` nor `nobody` exists to run
    /// the server as.
    #[error("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as")]
    NoUser,
    /// A program could not be run at all.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// A program ran and failed.
    #[error("{program} failed ({status}):\n{output}")]
    Failed {
        /// The program.
        program: String,
        /// Its exit status.
        status: String,
        /// What it printed.
        output: String,
    },
    /// The temporary directory could not be made ready.
    #[error("temporary directory {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The server did not accept connections in time.
    #[error("PostgreSQL did not accept connections within {READY_WITHIN:?}; its log:\n{log}")]
    NotReady {
        /// The server's log so far.
        log: String,
    },
}

/// How much durability the server keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// `fsync`, full-page writes and synchronous commit off: the data dies
    /// with the tests, so the tests need not wait for the disk.
    Off,
    /// PostgreSQL's defaults, for measurements that must compare with a
    /// real deployment (`bench/scale.py`).
    Full,
}

/// A running throwaway server. Dropping it stops the server and removes its
/// directory.
#[derive(Debug)]
pub struct TempPostgres {
    dir: PathBuf,
    bin: PathBuf,
    supervisor: Child,
    /// Closing it stops the server (see the module doc).
    lifeline: Option<ChildStdin>,
    databases: AtomicUsize,
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        drop(self.lifeline.take());
        let _ = self.supervisor.wait();
    }
}

/// A fresh, empty database on the test binary's shared server; its URL.
/// Panics (failing the test) when PostgreSQL cannot be started.
#[allow(clippy::panic)] // for tests: failing loudly is the point
pub fn fresh_database() -> String {
    TempPostgres::shared()
        .create_database()
        .unwrap_or_else(|e| panic!("cannot create a test database: {e}"))
}

impl TempPostgres {
    /// The server of this test binary, started on first use and stopped
    /// when the process exits. Panics with the reason when it cannot be
    /// started: a test that needs PostgreSQL fails, it is never skipped.
    #[allow(clippy::panic)] // for tests: failing loudly is the point
    pub fn shared() -> &'static Self {
        static SHARED: OnceLock<TempPostgres> = OnceLock::new();
        SHARED.get_or_init(|| {
            Self::start(Durability::Off).unwrap_or_else(|e| {
                panic!("cannot start PostgreSQL for the tests (they need a real server): {e}")
            })
        })
    }

    /// Starts a new server (`initdb` takes about a second).
    pub fn start(durability: Durability) -> Result<Self, PostgresError> {
        let bin = bin_dir()?;
        let user = server_user()?;
        let dir = tempfile::Builder::new()
            .prefix("authproxy-pg-")
            .tempdir()
            .map_err(|source| PostgresError::Directory {
                path: std::env::temp_dir(),
                source,
            })?
            // Removed by the supervisor (or below), not by TempDir's drop:
            // the shared server's directory must go when the process exits.
            .keep();
        Self::start_in(dir.clone(), bin, user, durability).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&dir);
        })
    }

    fn start_in(
        dir: PathBuf,
        bin: PathBuf,
        user: Option<(u32, u32)>,
        durability: Durability,
    ) -> Result<Self, PostgresError> {
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|source| {
                PostgresError::Directory {
                    path: dir.clone(),
                    source,
                }
            })?;
        }
        let data = dir.join("data");
        let mut initdb = as_server_user(user, &bin.join("initdb"));
        initdb
            .arg("--pgdata")
            .arg(&data)
            .args([
                "--username",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .current_dir(&dir);
        run(&mut initdb, "initdb")?;

        let mut server: Vec<OsString> = Vec::new();
        if let Some((uid, gid)) = user {
            server.extend(setpriv_args(uid, gid));
        }
        server.push(bin.join("postgres").into());
        server.extend(["-D".into(), data.into_os_string()]);
        server.extend(["-k".into(), dir.clone().into_os_string()]);
        server.extend(["-p", PORT].map(OsString::from));
        let mut settings = vec![
            "listen_addresses=",
            "max_connections=400",
            // Dynamic shared memory in the data directory: containers often
            // have a small /dev/shm.
            "dynamic_shared_memory_type=mmap",
        ];
        if durability == Durability::Off {
            settings.extend([
                "fsync=off",
                "full_page_writes=off",
                "synchronous_commit=off",
            ]);
        }
        for setting in settings {
            server.extend(["-c", setting].map(OsString::from));
        }
        let mut supervisor = Command::new("sh")
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("sh")
            .arg(&dir)
            .args(&server)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| PostgresError::Spawn {
                program: "sh".into(),
                source,
            })?;
        let lifeline = supervisor.stdin.take();
        // From here on, dropping `this` stops the server and cleans up.
        let mut this = Self {
            dir,
            bin,
            supervisor,
            lifeline,
            databases: AtomicUsize::new(0),
        };
        this.wait_ready()?;
        Ok(this)
    }

    fn wait_ready(&mut self) -> Result<(), PostgresError> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(Some(status)) = self.supervisor.try_wait() {
                let mut output = String::new();
                if let Some(mut stderr) = self.supervisor.stderr.take() {
                    let _ = stderr.read_to_string(&mut output);
                }
                return Err(PostgresError::Failed {
                    program: "postgres".into(),
                    status: status.to_string(),
                    output,
                });
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .arg("--quiet")
                .arg("--host")
                .arg(&self.dir)
                .args([
                    "--port",
                    PORT,
                    "--username",
                    SUPERUSER,
                    "--dbname",
                    "postgres",
                ])
                .status()
                .map_err(|source| PostgresError::Spawn {
                    program: "pg_isready".into(),
                    source,
                })?;
            if ready.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
                return Err(PostgresError::NotReady { log });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The directory holding the socket (and the data, under `data/`).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of the PostgreSQL programs (`psql`, …).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The URL of `database` on this server, as `[store] url` takes it.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@localhost/{database}?host={}",
            self.dir.display()
        )
    }

    /// Creates a new, empty database (`test_N`) and returns its URL.
    pub fn create_database(&self) -> Result<String, PostgresError> {
        let name = format!("test_{}", self.databases.fetch_add(1, Ordering::Relaxed));
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(self.url(&name))
    }

    /// Runs `sql` in `database` with `psql` as the superuser; returns its
    /// unaligned, tuples-only output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, PostgresError> {
        let mut psql = Command::new(self.bin.join("psql"));
        psql.args(["--no-psqlrc", "--quiet", "--no-align", "--tuples-only"])
            .args(["--set", "ON_ERROR_STOP=1", "--host"])
            .arg(&self.dir)
            .args([
                "--port",
                PORT,
                "--username",
                SUPERUSER,
                "--dbname",
                database,
            ])
            .args(["--command", sql]);
        run(&mut psql, "psql")
    }
}

/// Runs `command` to completion; its stdout, or why it failed.
fn run(command: &mut Command, program: &str) -> Result<String, PostgresError> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| PostgresError::Spawn {
            program: program.into(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(PostgresError::Failed {
            program: program.into(),
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}

/// Where `initdb`, `postgres`, `pg_isready` and `psql` are.
fn bin_dir() -> Result<PathBuf, PostgresError> {
    if let Some(dir) = std::env::var_os("AUTHPROXY_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").is_file() {
            Ok(dir)
        } else {
            Err(PostgresError::NotInstalled)
        };
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("initdb"))
        .find(|initdb| initdb.is_file())
        // /usr/local/bin/initdb → /usr/lib/postgresql/15/bin/initdb: the
        // server and the clients sit beside the real file.
        .and_then(|initdb| std::fs::canonicalize(initdb).ok())
        .and_then(|initdb| initdb.parent().map(Path::to_path_buf));
    if let Some(dir) = on_path {
        return Ok(dir);
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| PostgresError::NotInstalled)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major);
    newest
        .map(|(_, bin)| bin)
        .ok_or(PostgresError::NotInstalled)
}

/// The (uid, gid) the server runs as: `None` (the caller) unless the caller
/// is root, which PostgreSQL refuses.
fn server_user() -> Result<Option<(u32, u32)>, PostgresError> {
    if !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    ["postgres", "nobody"]
        .into_iter()
        .find_map(|name| Some((id(name, "-u")?, id(name, "-g")?)))
        .map(Some)
        .ok_or(PostgresError::NoUser)
}

/// `id -u NAME` / `id -g NAME` (through NSS, as `setpriv` would resolve it).
fn id(name: &str, flag: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, name]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

fn setpriv_args(uid: u32, gid: u32) -> Vec<OsString> {
    [
        "setpriv".to_owned(),
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        "--clear-groups".to_owned(),
        "--".to_owned(),
    ]
    .map(OsString::from)
    .into()
}

/// `program` run as `user` (through `setpriv`), or as the caller.
fn as_server_user(user: Option<(u32, u32)>, program: &Path) -> Command {
    match user {
        None => Command::new(program),
        Some((uid, gid)) => {
            let args = setpriv_args(uid, gid);
            let mut command = Command::new(&args[0]);
            command.args(&args[1..]).arg(program);
            command
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_serves_fresh_databases_and_leaves_nothing_behind() {
        let server = TempPostgres::start(Durability::Off).unwrap();
        let dir = server.socket_dir().to_path_buf();
        let a = server.create_database().unwrap();
        let b = server.create_database().unwrap();
        assert_ne!(a, b);
        assert!(a.contains(&format!("?host={}", dir.display())), "{a}");
        let who = server.psql("test_0", "SELECT current_user").unwrap();
        assert_eq!(who.trim(), SUPERUSER);
        let e = server.psql("test_0", "SELEKT 1").unwrap_err();
        assert!(e.to_string().contains("syntax error"), "{e}");
        drop(server);
        assert!(!dir.exists(), "{} is left behind", dir.display());
    }
}
