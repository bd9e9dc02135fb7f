//! The node's private files under `state_dir`, beside its root key: the
//! node id and the admin token, each created once, 0600.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use authproxy_core::keys::random_id;
use authproxy_core::root_key::create_private_file_once;

use crate::secret::{ADMIN_TOKEN_PREFIX, Secret};

/// File name of the admin token inside the state directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// File name of the node id inside the state directory.
pub const NODE_ID_FILE: &str = "node-id";

/// Why a file of the state directory could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateFileError {
    /// It could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Its permissions let group or others read it.
    #[error("{path}: mode {mode:04o} lets group or others read it; run `chmod 600 {path}`")]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// It does not hold what it should.
    #[error("{path}: {problem}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: &'static str,
    },
}

/// This node's id, created on first start: it names the node that holds
/// each root key in the shared store.
pub(crate) fn load_or_create_node_id(state_dir: &Path) -> Result<String, StateFileError> {
    let path = state_dir.join(NODE_ID_FILE);
    let id = load_or_create(&path, || Ok(random_id()))?;
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(StateFileError::Malformed {
            path,
            problem: "not a node id (1 to 64 printable characters)",
        });
    }
    Ok(id)
}

/// The admin token, created on first start. The store keeps only its hash.
pub(crate) fn load_or_create_admin_token(state_dir: &Path) -> Result<Secret, StateFileError> {
    let path = state_dir.join(ADMIN_TOKEN_FILE);
    let text = load_or_create(&path, || {
        Secret::generate(ADMIN_TOKEN_PREFIX)
            .map(|s| s.expose().to_owned())
            .map_err(|_| StateFileError::Malformed {
                path: path.clone(),
                problem: "cannot create: the OS random number generator failed",
            })
    })?;
    Secret::presented(&text, ADMIN_TOKEN_PREFIX).ok_or(StateFileError::Malformed {
        path,
        problem: "not an authproxy admin token (ap_admin_…)",
    })
}

/// Reads `path` (trimmed), first creating it with `make()` if it does not
/// exist. Refuses a file that group or others can read.
fn load_or_create(
    path: &Path,
    make: impl FnOnce() -> Result<String, StateFileError>,
) -> Result<String, StateFileError> {
    let io = |source| StateFileError::Io {
        path: path.to_owned(),
        source,
    };
    if !path.exists() {
        create_once(path, &format!("{}\n", make()?))?;
    }
    let mode = fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(StateFileError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(fs::read_to_string(path).map_err(io)?.trim().to_owned())
}

/// Writes a private temporary file, then hard-links it into place: the link
/// fails if another process won the race, so two nodes starting on one
/// state directory share one complete file, never a half-written one.
fn create_once(path: &Path, contents: &str) -> Result<(), StateFileError> {
    create_private_file_once(path, contents.as_bytes()).map_err(|source| StateFileError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_token_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_admin_token(dir.path()).unwrap();
        let path = dir.path().join(ADMIN_TOKEN_FILE);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(a.expose().starts_with(ADMIN_TOKEN_PREFIX));
        let b = load_or_create_admin_token(dir.path()).unwrap();
        assert_eq!(a.expose(), b.expose());
    }

    #[test]
    fn a_readable_or_foreign_admin_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create_admin_token(dir.path()).unwrap();
        let path = dir.path().join(ADMIN_TOKEN_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let e = load_or_create_admin_token(dir.path()).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "hunter2\n").unwrap();
        let e = load_or_create_admin_token(dir.path()).unwrap_err();
        assert!(
            e.to_string().contains("not an authproxy admin token"),
            "{e}"
        );
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn the_node_id_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_node_id(dir.path()).unwrap();
        assert_eq!(a, load_or_create_node_id(dir.path()).unwrap());
        assert!(!a.is_empty());
    }
}
