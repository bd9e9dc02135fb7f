//! The embedded issuer: a root key kept under `trust.state_dir`, used to sign
//! this sidecar's grant (DESIGN §1, embedded mode).
//!
//! The root key is the one secret that can mint any grant, so its file is
//! created 0600 inside a 0700 directory, and the sidecar refuses to start if
//! the file is readable by others, writable by its group, or readable by its
//! group while owned by anyone but root. The root-owned, group-readable case
//! (0440/0640) is allowed as PostgreSQL allows it for its key file: it is how
//! a Kubernetes Secret reaches a non-root container (files owned by root,
//! group = the pod's `fsGroup`).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::keys::{KeyError, SigningKey};

/// File name of the root key inside the state directory.
pub const ROOT_KEY_FILE: &str = "root-key.pem";

/// Why the root key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RootKeyError {
    /// The state directory or key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file's permissions let others read it.
    #[error(
        "{path}: mode {mode:04o} lets group or others read the root key; run `chmod 600 {path}`"
    )]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The key file does not hold an Ed25519 PKCS#8 key.
    #[error("{path}: {source}")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: KeyError,
    },
}

/// Loads the root key from `state_dir/root-key.pem`, creating the directory
/// (0700) and the key (0600) on first start.
pub fn load_or_create_root_key(state_dir: &Path) -> Result<SigningKey, RootKeyError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| RootKeyError::Io { path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(io(state_dir))?;
    let path = state_dir.join(ROOT_KEY_FILE);
    if !path.exists() {
        create_key_file(&path)?;
    }
    let meta = fs::metadata(&path).map_err(io(&path))?;
    let mode = meta.permissions().mode() & 0o777;
    if !permissions_are_safe(mode, std::os::unix::fs::MetadataExt::uid(&meta)) {
        return Err(RootKeyError::InsecurePermissions { path, mode });
    }
    let pem = fs::read(&path).map_err(io(&path))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|source| RootKeyError::BadKey { path, source })
}

/// The public half of the root key in `state_dir/root-key.pem`, without
/// creating one (for checks that must not change the state, such as
/// `authproxy health`).
pub fn load_root_public_key(state_dir: &Path) -> Result<crate::keys::PublicKey, RootKeyError> {
    let path = state_dir.join(ROOT_KEY_FILE);
    let pem = fs::read(&path).map_err(|source| RootKeyError::Io {
        path: path.clone(),
        source,
    })?;
    SigningKey::from_pkcs8_pem(&pem)
        .map(|k| k.public().clone())
        .map_err(|source| RootKeyError::BadKey { path, source })
}

/// Never readable by others, never writable by the group; readable by the
/// group only when root owns the file (see the module doc).
fn permissions_are_safe(mode: u32, owner: u32) -> bool {
    let others = mode & 0o007;
    let group_write_exec = mode & 0o030;
    let group_read = mode & 0o040;
    others == 0 && group_write_exec == 0 && (group_read == 0 || owner == 0)
}

/// Writes a new key to a private temporary file, then hard-links it into
/// place: the link fails if another process won the race, so two sidecars
/// starting together end up sharing one complete key, never a half-written one.
fn create_key_file(path: &Path) -> Result<(), RootKeyError> {
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| RootKeyError::Io { path: p, source }
    };
    let key = SigningKey::generate().map_err(|source| RootKeyError::BadKey {
        path: path.to_owned(),
        source,
    })?;
    let pem = key.to_pkcs8_pem().map_err(|source| RootKeyError::BadKey {
        path: path.to_owned(),
        source,
    })?;
    let tmp = path.with_extension(format!("pem.{}.tmp", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(pem.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(RootKeyError::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_key_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let a = load_or_create_root_key(&state).unwrap();
        let mode = fs::metadata(state.join(ROOT_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let b = load_or_create_root_key(&state).unwrap();
        assert_eq!(a.public().thumbprint(), b.public().thumbprint());
    }

    #[test]
    fn a_key_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create_root_key(dir.path()).unwrap();
        let path = dir.path().join(ROOT_KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create_root_key(dir.path()).unwrap_err();
        assert!(
            matches!(e, RootKeyError::InsecurePermissions { mode: 0o644, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 600"));
    }

    #[test]
    fn group_read_is_allowed_only_for_root_owned_keys() {
        for (mode, owner, ok) in [
            (0o600, 1000, true),
            (0o400, 1000, true),
            (0o640, 0, true),
            (0o440, 0, true),
            (0o640, 1000, false),
            (0o660, 0, false),
            (0o604, 0, false),
            (0o644, 0, false),
            (0o610, 0, false),
        ] {
            assert_eq!(
                permissions_are_safe(mode, owner),
                ok,
                "{mode:o} owned by {owner}"
            );
        }
    }

    #[test]
    fn a_corrupt_key_file_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ROOT_KEY_FILE);
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .unwrap()
            .write_all(b"not a key")
            .unwrap();
        let e = load_or_create_root_key(dir.path()).unwrap_err();
        assert!(e.to_string().contains(ROOT_KEY_FILE), "{e}");
    }
}
