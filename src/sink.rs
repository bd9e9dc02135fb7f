//! The token file sink: keeps a valid access token in a file for tools that
//! read one from disk. The file is replaced atomically (write a temporary
//! file in the same directory, then rename), so a reader never sees a
//! partial token, once 80% of the token's life has passed.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use authproxy_core::keys::random_id;
use authproxy_core::token::Minted;

use crate::config::SinkConfig;

/// Why the token file could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// Writing or renaming failed.
    #[error("cannot write the token file {path}: {source}")]
    Io {
        /// The token file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No token could be minted.
    #[error("no token for the token file {path}: {source}")]
    Mint {
        /// The token file.
        path: PathBuf,
        /// Why.
        source: authproxy_core::token::MintError,
    },
}

/// When a token issued at `iat` expiring at `exp` should be replaced.
pub fn due_at(iat: u64, exp: u64) -> u64 {
    iat + exp.saturating_sub(iat) * 4 / 5
}

/// Replaces `path` atomically with `contents`, with permission bits `mode`.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", random_id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode at creation; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes `minted` to the token file; returns when the next write is due.
pub fn write_token(sink: &SinkConfig, minted: &Minted) -> Result<u64, SinkError> {
    let c = &minted.claims;
    write_atomically(&sink.path, minted.token.as_bytes(), sink.mode).map_err(|source| {
        SinkError::Io {
            path: sink.path.clone(),
            source,
        }
    })?;
    tracing::debug!(path = %sink.path.display(), jti = %c.jti, exp = c.exp, "token file written");
    Ok(due_at(c.iat, c.exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_replaced_at_four_fifths_of_the_life() {
        assert_eq!(due_at(1000, 1300), 1240);
        assert_eq!(due_at(1000, 1030), 1024);
    }

    #[test]
    fn writes_are_atomic_and_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        write_atomically(&path, b"one", 0o640).unwrap();
        write_atomically(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let e = write_atomically(Path::new("/nonexistent-dir/token"), b"x", 0o600);
        assert!(e.is_err());
    }
}
