//! Root key file I/O: the file-backed [`KeyProvider`](idvault_core::keys::KeyProvider).
//!
//! The file must be readable by its owner only; a key file that group or
//! others can read is refused, because anyone who reads it can decrypt
//! every subject.

use std::io::Write;
use std::path::Path;

use idvault_core::Rng;
use idvault_core::keys::{KeyError, KeyProvider, StaticKeyProvider};

/// Key file errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// I/O failure.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is readable by group or others.
    #[error("{0}: key file must not be readable by group or others (chmod 600)")]
    Permissions(String),
    /// Content did not parse.
    #[error("{path}: {source}")]
    Key {
        /// Which file.
        path: String,
        /// Why.
        source: KeyError,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Loads a root key file, checking its permissions.
pub fn load(path: &Path) -> Result<StaticKeyProvider, KeyFileError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(io(path))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions(path.display().to_string()));
        }
    }
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(io(path))?);
    StaticKeyProvider::parse(&text).map_err(|source| KeyFileError::Key {
        path: path.display().to_string(),
        source,
    })
}

/// Writes `provider` to `path` with mode 0600. Refuses to overwrite unless
/// `replace` (used by rotation, which writes a temp file and renames it).
pub fn write(path: &Path, provider: &StaticKeyProvider, replace: bool) -> Result<(), KeyFileError> {
    let text = provider.to_key_file();
    let tmp = path.with_extension("tmp");
    let target = if replace { tmp.as_path() } else { path };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    if replace {
        let _ = std::fs::remove_file(&tmp);
    }
    let mut f = opts.open(target).map_err(io(target))?;
    f.write_all(text.as_bytes()).map_err(io(target))?;
    f.sync_all().map_err(io(target))?;
    if replace {
        std::fs::rename(&tmp, path).map_err(io(path))?;
    }
    Ok(())
}

/// Creates a new key file with one fresh root key (version 1).
pub fn create(path: &Path, rng: &dyn Rng) -> Result<StaticKeyProvider, KeyFileError> {
    let key = StaticKeyProvider::generate_key(rng, 1).map_err(|source| KeyFileError::Key {
        path: path.display().to_string(),
        source,
    })?;
    let provider = StaticKeyProvider::new([key]).map_err(|source| KeyFileError::Key {
        path: path.display().to_string(),
        source,
    })?;
    write(path, &provider, false)?;
    Ok(provider)
}

/// Adds a new root key version to the file; old versions stay readable.
pub fn rotate(path: &Path, rng: &dyn Rng) -> Result<u32, KeyFileError> {
    let current = load(path)?;
    let next = current.rotated(rng).map_err(|source| KeyFileError::Key {
        path: path.display().to_string(),
        source,
    })?;
    write(path, &next, true)?;
    Ok(next.current_version())
}
