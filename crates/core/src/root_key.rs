//! The embedded issuer: a root key kept under `trust.state_dir`, used to sign
//! this sidecar's grant (DESIGN §1, embedded mode).
//!
//! The root key is the one secret that can mint any grant, so whoever can
//! choose its contents owns every workload. Hence:
//! - the state directory is created 0700, and refused if its group or
//!   others may write to it: they could plant a key before the first start,
//!   or replace it later;
//! - the key file is opened relative to that checked directory, without
//!   following a symbolic link (`O_NOFOLLOW`), and every check is made on
//!   the opened descriptor, so what is checked is what is read;
//! - it must be a regular file owned by the user authproxy runs as, or by
//!   root: a key planted by another user is refused even when authproxy runs
//!   as root;
//! - it must not be readable by others nor writable by its group, and may
//!   be group-readable only when root owns it (0440/0640). That relaxed case
//!   is PostgreSQL's rule for its key file and how a Kubernetes Secret
//!   reaches a non-root container (files owned by root, group = the pod's
//!   `fsGroup`). A Secret volume presents its files as symbolic links, so
//!   the Secret is mounted with `subPath` (see `deploy/kubernetes/`), which
//!   bind-mounts the file itself.

use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

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
    /// The state directory lets its group or others create files in it.
    #[error(
        "{path}: mode {mode:04o} lets group or others write to the state directory, so they could \
         plant or replace the root key; run `chmod 700 {path}`"
    )]
    InsecureStateDir {
        /// The state directory.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The key file is a symbolic link.
    #[error(
        "{path}: is a symbolic link; the root key must be a regular file inside the state \
         directory (links are not followed, so that no one can point it at a key of their own)"
    )]
    Symlink {
        /// The key file.
        path: PathBuf,
    },
    /// The key file is a directory, device, FIFO or socket.
    #[error("{path}: is not a regular file")]
    NotAFile {
        /// The key file.
        path: PathBuf,
    },
    /// The key file belongs to another user than the one authproxy runs as
    /// (and not to root).
    #[error(
        "{path}: owned by uid {owner}, but authproxy runs as uid {euid}; the root key must belong \
         to this user or to root (`chown {euid} {path}`)"
    )]
    WrongOwner {
        /// The key file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The effective user id of this process.
        euid: u32,
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
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(io(state_dir))?;
    let dir = open_state_dir(state_dir)?;
    let path = state_dir.join(ROOT_KEY_FILE);
    let mut file = match open_key_file(&dir, &path)? {
        Some(f) => f,
        None => {
            create_key_file(&path)?;
            open_key_file(&dir, &path)?.ok_or_else(|| RootKeyError::Io {
                path: path.clone(),
                source: std::io::ErrorKind::NotFound.into(),
            })?
        }
    };
    read_checked_key(&mut file, path)
}

/// Checks an opened key file (a regular file, a trusted owner, safe
/// permissions: see the module doc) and reads the key it holds.
fn read_checked_key(file: &mut fs::File, path: PathBuf) -> Result<SigningKey, RootKeyError> {
    let meta = file.metadata().map_err(io(&path))?;
    if !meta.file_type().is_file() {
        return Err(RootKeyError::NotAFile { path });
    }
    let euid = rustix::process::geteuid().as_raw();
    if !owner_is_trusted(meta.uid(), euid) {
        return Err(RootKeyError::WrongOwner {
            path,
            owner: meta.uid(),
            euid,
        });
    }
    let mode = meta.mode() & 0o777;
    if !permissions_are_safe(mode, meta.uid()) {
        return Err(RootKeyError::InsecurePermissions { path, mode });
    }
    let mut pem = Vec::new();
    file.read_to_end(&mut pem).map_err(io(&path))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|source| RootKeyError::BadKey { path, source })
}

/// Directory, inside an issuer's state directory, holding the root key
/// versions made by rotation: one `<kid>.pem` each (0600), beside the
/// first version, `root-key.pem`. Private keys never leave it: the store
/// holds public keys only.
pub const ROOT_KEY_VERSIONS_DIR: &str = "root-keys";

/// Every root key version in `state_dir`: `root-key.pem` if it exists, and
/// each `root-keys/<kid>.pem`, each opened and checked as
/// [`load_or_create_root_key`] does (the `root-keys` directory is held to
/// the state directory's rules). Creates nothing but the directories.
/// A file whose key does not match its name (`<kid>.pem`) is refused: the
/// name is how a version is found again.
pub fn load_root_key_versions(state_dir: &Path) -> Result<Vec<SigningKey>, RootKeyError> {
    let versions = versions_dir(state_dir)?;
    let mut keys = Vec::new();
    let state = open_state_dir(state_dir)?;
    let first = state_dir.join(ROOT_KEY_FILE);
    if let Some(mut f) = open_named(&state, ROOT_KEY_FILE, &first)? {
        keys.push(read_checked_key(&mut f, first)?);
    }
    let dir = open_state_dir(&versions)?;
    let mut names: Vec<String> = fs::read_dir(&versions)
        .map_err(io(&versions))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".pem"))
        .collect();
    names.sort();
    for name in names {
        let path = versions.join(&name);
        let Some(mut f) = open_named(&dir, &name, &path)? else {
            continue; // removed meanwhile
        };
        let key = read_checked_key(&mut f, path.clone())?;
        if name != format!("{}.pem", key.public().thumbprint()) {
            return Err(RootKeyError::Io {
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the key in this file is not the one its name (<kid>.pem) says",
                ),
            });
        }
        keys.push(key);
    }
    Ok(keys)
}

/// Creates a new root key version: `state_dir/root-keys/<kid>.pem`, 0600,
/// written whole or not at all (see [`create_private_file_once`]).
pub fn create_root_key_version(state_dir: &Path) -> Result<SigningKey, RootKeyError> {
    let versions = versions_dir(state_dir)?;
    let key = SigningKey::generate().map_err(|source| RootKeyError::BadKey {
        path: versions.clone(),
        source,
    })?;
    let path = versions.join(format!("{}.pem", key.public().thumbprint()));
    let pem = key.to_pkcs8_pem().map_err(|source| RootKeyError::BadKey {
        path: path.clone(),
        source,
    })?;
    create_private_file_once(&path, pem.as_bytes()).map_err(io(&path))?;
    Ok(key)
}

/// Deletes the private key of a removed version, wherever it is
/// (`root-key.pem` or `root-keys/<kid>.pem`): a key that will never sign
/// again should not stay on disk to be stolen. `Ok` when it is not there.
pub fn remove_root_key_version(state_dir: &Path, kid: &str) -> Result<(), RootKeyError> {
    let versioned = state_dir
        .join(ROOT_KEY_VERSIONS_DIR)
        .join(format!("{kid}.pem"));
    let first = state_dir.join(ROOT_KEY_FILE);
    let path = match load_root_public_key(state_dir) {
        Ok(public) if public.thumbprint() == kid => first,
        _ => versioned,
    };
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
        _ => Ok(()),
    }
}

/// `state_dir/root-keys`, created 0700 (with `state_dir`) if missing.
fn versions_dir(state_dir: &Path) -> Result<PathBuf, RootKeyError> {
    let versions = state_dir.join(ROOT_KEY_VERSIONS_DIR);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&versions)
        .map_err(io(&versions))?;
    Ok(versions)
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

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RootKeyError + use<> {
    let path = path.to_owned();
    move |source| RootKeyError::Io { path, source }
}

/// Opens the state directory and refuses it if its group or others may
/// write to it (sticky or not: a name that does not exist yet can be
/// taken by anyone who may write).
fn open_state_dir(state_dir: &Path) -> Result<fs::File, RootKeyError> {
    let fd = rustix::fs::open(
        state_dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io(state_dir)(e.into()))?;
    let dir = fs::File::from(fd);
    let mode = dir.metadata().map_err(io(state_dir))?.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(RootKeyError::InsecureStateDir {
            path: state_dir.to_owned(),
            mode,
        });
    }
    Ok(dir)
}

/// Opens the key file inside `dir` without following a symbolic link;
/// `None` if it does not exist. `O_NONBLOCK` so that a FIFO planted there
/// cannot hang the start; it is then refused as not a regular file.
fn open_key_file(dir: &fs::File, path: &Path) -> Result<Option<fs::File>, RootKeyError> {
    open_named(dir, ROOT_KEY_FILE, path)
}

/// [`open_key_file`] for any file name inside `dir`.
fn open_named(dir: &fs::File, name: &str, path: &Path) -> Result<Option<fs::File>, RootKeyError> {
    match rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fs::File::from(fd))),
        Err(Errno::NOENT) => Ok(None),
        Err(Errno::LOOP) => Err(RootKeyError::Symlink {
            path: path.to_owned(),
        }),
        Err(e) => Err(io(path)(e.into())),
    }
}

/// The key file must belong to the user authproxy runs as, or to root (a
/// file root provided, such as a mounted Secret). Any other owner could
/// have chosen its contents.
fn owner_is_trusted(owner: u32, euid: u32) -> bool {
    owner == euid || owner == 0
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
    let key = SigningKey::generate().map_err(|source| RootKeyError::BadKey {
        path: path.to_owned(),
        source,
    })?;
    let pem = key.to_pkcs8_pem().map_err(|source| RootKeyError::BadKey {
        path: path.to_owned(),
        source,
    })?;
    create_private_file_once(path, pem.as_bytes()).map_err(io(path))
}

/// Creates `path` (mode 0600) holding `contents`, unless it exists: writes
/// a private temporary file, syncs it, then hard-links it into place. The
/// link fails if another process won the race, so processes starting
/// together end up sharing one complete file, never a half-written one.
/// `Ok` when the file already existed.
pub fn create_private_file_once(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::hard_link(&tmp, path)
    })();
    let _ = fs::remove_file(&tmp);
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

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

    /// Tests cannot chown without root, so the owner rule is a pure
    /// function, tried here against every combination that matters.
    #[test]
    fn the_key_must_belong_to_this_user_or_to_root() {
        for (owner, euid, ok) in [
            (1000, 1000, true),   // our own key
            (0, 1000, true),      // root-provided (a mounted Secret)
            (0, 0, true),         // root's own key, running as root
            (65534, 1000, false), // another user's file
            (1000, 0, false),     // running as root, key planted by a user
            (1000, 65534, false),
        ] {
            assert_eq!(
                owner_is_trusted(owner, euid),
                ok,
                "key owned by {owner}, running as {euid}"
            );
        }
    }

    /// A key file that is a symbolic link is refused, wherever it points:
    /// whoever can plant a link in the state directory could otherwise make
    /// any file the root key.
    #[test]
    fn a_symlinked_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        load_or_create_root_key(&elsewhere).unwrap();
        let state = dir.path().join("state");
        fs::DirBuilder::new().mode(0o700).create(&state).unwrap();
        std::os::unix::fs::symlink(elsewhere.join(ROOT_KEY_FILE), state.join(ROOT_KEY_FILE))
            .unwrap();
        let e = load_or_create_root_key(&state).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(e.to_string().contains(ROOT_KEY_FILE), "{e}");
    }

    /// A state directory that others may write to is refused: anyone who
    /// can create files there can plant a root key before the first start.
    #[test]
    fn a_state_dir_writable_by_group_or_others_is_refused() {
        for mode in [0o777, 0o770, 0o1777, 0o702] {
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path().join("state");
            load_or_create_root_key(&state).unwrap();
            fs::set_permissions(&state, fs::Permissions::from_mode(mode)).unwrap();
            let e = load_or_create_root_key(&state).unwrap_err();
            let text = e.to_string();
            assert!(
                text.contains(&format!("chmod 700 {}", state.display())),
                "{mode:o}: {text}"
            );
        }
    }

    /// Tests run as root in CI: there the owner check is tried for real
    /// with a key handed to `nobody`.
    #[test]
    fn a_key_owned_by_another_user_is_refused_when_running_as_root() {
        let dir = tempfile::tempdir().unwrap();
        let running_as_root =
            std::os::unix::fs::MetadataExt::uid(&fs::metadata(dir.path()).unwrap()) == 0;
        if !running_as_root {
            eprintln!("skipped: chown needs root");
            return;
        }
        load_or_create_root_key(dir.path()).unwrap();
        std::os::unix::fs::chown(dir.path().join(ROOT_KEY_FILE), Some(65534), None).unwrap();
        let e = load_or_create_root_key(dir.path()).unwrap_err();
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
    }

    #[test]
    fn root_key_versions_are_found_checked_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = load_or_create_root_key(&state).unwrap();
        let second = create_root_key_version(&state).unwrap();
        let kid = second.public().thumbprint().to_owned();
        let file = state.join(ROOT_KEY_VERSIONS_DIR).join(format!("{kid}.pem"));
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let kids: Vec<String> = load_root_key_versions(&state)
            .unwrap()
            .iter()
            .map(|k| k.public().thumbprint().to_owned())
            .collect();
        assert_eq!(kids, [first.public().thumbprint().to_owned(), kid.clone()]);

        // A version readable by others is refused, as the first key is.
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_root_key_versions(&state),
            Err(RootKeyError::InsecurePermissions { .. })
        ));
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        // A file whose name does not say its key is refused.
        fs::copy(&file, state.join(ROOT_KEY_VERSIONS_DIR).join("other.pem")).unwrap();
        assert!(load_root_key_versions(&state).is_err());
        fs::remove_file(state.join(ROOT_KEY_VERSIONS_DIR).join("other.pem")).unwrap();

        remove_root_key_version(&state, first.public().thumbprint()).unwrap();
        assert!(!state.join(ROOT_KEY_FILE).exists());
        remove_root_key_version(&state, &kid).unwrap();
        assert!(!file.exists());
        assert!(load_root_key_versions(&state).unwrap().is_empty());
        remove_root_key_version(&state, &kid).unwrap();
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
