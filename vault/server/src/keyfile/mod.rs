//! Root key file I/O: the file-backed [`KeyProvider`](idvault_core::keys::KeyProvider).
//!
//! The file must be readable by its owner only; a key file that group or
//! others can read is refused, because anyone who reads it can decrypt
//! every subject. It is either plain (`idvault-root-keys v1`, the dev
//! default) or sealed (`idvault-sealed-root-keys v1`): the same text
//! encrypted by a [`Seal`], today an HSM key through PKCS#11
//! ([`pkcs11`]). A sealed file is unsealed into memory at start; its plain
//! text never touches the disk.
//!
//! Another seal (a cloud KMS's Encrypt/Decrypt, say) is one more
//! implementation of [`Seal`] and one more arm in [`seal_for`]; nothing
//! else in the vault changes (docs/keys.md, "Seals").

pub mod pkcs11;

use std::io::Write;
use std::path::Path;

use idvault_core::Rng;
use idvault_core::keys::sealed::{SealedKeyFile, is_sealed};
use idvault_core::keys::{KeyError, KeyProvider, StaticKeyProvider};
use zeroize::Zeroizing;

pub use pkcs11::SealError;

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
    /// The file is not one this process may trust with keys: not a
    /// regular file, owned by another user, or too large.
    #[error("{path}: {why}")]
    Untrusted {
        /// Which file.
        path: String,
        /// Why.
        why: &'static str,
    },
    /// Content did not parse.
    #[error("{path}: {source}")]
    Key {
        /// Which file.
        path: String,
        /// Why.
        source: KeyError,
    },
    /// The seal refused (HSM missing, wrong PIN, wrong key, altered file).
    #[error("{path}: {source}")]
    Seal {
        /// Which file.
        path: String,
        /// Why.
        source: SealError,
    },
}

/// What encrypts a sealed key file: an HSM key (PKCS#11) today.
pub trait Seal: std::fmt::Debug {
    /// The kind written on the file's `seal` line.
    fn kind(&self) -> &'static str;
    /// Non-secret parameters written (and authenticated) in the file.
    fn params(&self) -> Vec<(String, String)>;
    /// Encrypts `plaintext` bound to `aad`.
    fn seal(&self, aad: &[u8], plaintext: &[u8], rng: &dyn Rng) -> Result<Vec<u8>, SealError>;
    /// Decrypts what [`Seal::seal`] produced; fails closed.
    fn unseal(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError>;
}

/// The PKCS#11 seal: parameters plus the PIN to log in with.
#[derive(Debug)]
pub struct Pkcs11Seal {
    /// Module, token and key label.
    pub params: pkcs11::Pkcs11Params,
    /// The token's user PIN.
    pub pin: pkcs11::Pin,
}

impl Seal for Pkcs11Seal {
    fn kind(&self) -> &'static str {
        pkcs11::SEAL_KIND
    }
    fn params(&self) -> Vec<(String, String)> {
        self.params.to_file_params()
    }
    fn seal(&self, aad: &[u8], plaintext: &[u8], rng: &dyn Rng) -> Result<Vec<u8>, SealError> {
        pkcs11::seal(&self.params, &self.pin, aad, plaintext, rng)
    }
    fn unseal(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        pkcs11::unseal(&self.params, &self.pin, aad, sealed)
    }
}

/// The seal a sealed file names, with its PIN from `pin_file` or the
/// environment.
pub fn seal_for(file: &SealedKeyFile, pin_file: Option<&Path>) -> Result<Box<dyn Seal>, SealError> {
    match file.seal.as_str() {
        pkcs11::SEAL_KIND => Ok(Box::new(Pkcs11Seal {
            params: pkcs11::Pkcs11Params::from_file(file)?,
            pin: pkcs11::Pin::from_file_or_env(pin_file)?,
        })),
        other => Err(SealError::Other(format!(
            "unknown seal '{other}' (this build knows: {})",
            pkcs11::SEAL_KIND
        ))),
    }
}

/// How a key file is kept at rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protection {
    /// Plain text, mode 0600 (development, or a disk the operator trusts).
    Plain,
    /// Sealed by an HSM key through PKCS#11.
    Pkcs11(pkcs11::Pkcs11Params),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn key_err(path: &Path) -> impl FnOnce(KeyError) -> KeyFileError + '_ {
    move |source| KeyFileError::Key {
        path: path.display().to_string(),
        source,
    }
}

fn seal_err(path: &Path) -> impl FnOnce(SealError) -> KeyFileError + '_ {
    move |source| KeyFileError::Seal {
        path: path.display().to_string(),
        source,
    }
}

/// Largest key or PIN file read (a key file holds a few hundred bytes per
/// version).
pub const MAX_SECRET_FILE_BYTES: u64 = 1024 * 1024;

/// Why [`read_private`] refused a file.
#[derive(Debug)]
pub enum PrivateFileError {
    /// Opening, inspecting or reading it failed.
    Io(std::io::Error),
    /// Group or others may read it.
    Permissions,
    /// Not a regular file, owned by another user, or too large.
    Untrusted(&'static str),
}

/// Reads a file holding secrets into a buffer wiped on drop, through one
/// open: the checks are made on the open file (`fstat`), so what is
/// checked is what is read. It must be a regular file (a FIFO would hang
/// the start), owned by this process's user or by root (as OpenSSH
/// demands of its keys: a file another user owns could be read or
/// replaced by them), unreadable by group and others, and at most
/// [`MAX_SECRET_FILE_BYTES`]. Symbolic links are followed (secrets are
/// often mounted through them); the checks apply to the file read.
pub fn read_private(path: &Path) -> Result<Zeroizing<Vec<u8>>, PrivateFileError> {
    use std::io::Read;
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    // Opening a FIFO would block until someone writes to it: opened
    // without waiting, it is then refused by the check on what was opened.
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
    }
    let mut f = opts.open(path).map_err(PrivateFileError::Io)?;
    let meta = f.metadata().map_err(PrivateFileError::Io)?;
    if !meta.is_file() {
        return Err(PrivateFileError::Untrusted("is not a regular file"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if meta.mode() & 0o077 != 0 {
            return Err(PrivateFileError::Permissions);
        }
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me && meta.uid() != 0 {
            return Err(PrivateFileError::Untrusted(
                "is owned by another user (it must be this user's, or root's)",
            ));
        }
    }
    if meta.len() > MAX_SECRET_FILE_BYTES {
        return Err(PrivateFileError::Untrusted("is too large for a key file"));
    }
    // A buffer of its final size, filled in place: no reallocation leaves
    // an unwiped copy behind.
    let cap = usize::try_from(meta.len()).unwrap_or(0) + 1;
    let mut buf = Zeroizing::new(vec![0u8; cap]);
    let mut n = 0;
    while n < buf.len() {
        let Some(rest) = buf.get_mut(n..) else { break };
        match f.read(rest) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(PrivateFileError::Io(e)),
        }
    }
    if n == buf.len() {
        // It grew while being read.
        return Err(PrivateFileError::Untrusted("changed while it was read"));
    }
    buf.truncate(n);
    Ok(buf)
}

fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    read_private(path).map_err(|e| match e {
        PrivateFileError::Io(source) => io(path)(source),
        PrivateFileError::Permissions => KeyFileError::Permissions(path.display().to_string()),
        PrivateFileError::Untrusted(why) => KeyFileError::Untrusted {
            path: path.display().to_string(),
            why,
        },
    })
}

/// Loads a root key file, checking its permissions; a sealed file is
/// unsealed with the PIN from `pin_file` or `IDVAULT_PKCS11_PIN`.
pub fn load(path: &Path, pin_file: Option<&Path>) -> Result<StaticKeyProvider, KeyFileError> {
    Ok(load_with_protection(path, pin_file)?.0)
}

/// [`load`], also saying how the file is protected (so a rewrite keeps it so).
pub fn load_with_protection(
    path: &Path,
    pin_file: Option<&Path>,
) -> Result<(StaticKeyProvider, Protection), KeyFileError> {
    let bytes = read_key_file(path)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| key_err(path)(KeyError::Malformed("key file is not UTF-8 text")))?;
    if !is_sealed(text) {
        let keys = StaticKeyProvider::parse(text).map_err(key_err(path))?;
        return Ok((keys, Protection::Plain));
    }
    let file = SealedKeyFile::parse(text).map_err(key_err(path))?;
    let seal = seal_for(&file, pin_file).map_err(seal_err(path))?;
    let plain = seal
        .unseal(&file.aad(), &file.sealed)
        .map_err(seal_err(path))?;
    let plain = std::str::from_utf8(&plain)
        .map_err(|_| key_err(path)(KeyError::Malformed("sealed content is not text")))?;
    let keys = StaticKeyProvider::parse(plain).map_err(key_err(path))?;
    let protection = match file.seal.as_str() {
        pkcs11::SEAL_KIND => {
            Protection::Pkcs11(pkcs11::Pkcs11Params::from_file(&file).map_err(seal_err(path))?)
        }
        _ => Protection::Plain,
    };
    Ok((keys, protection))
}

/// The bytes to write for `provider` under `protection`.
fn file_text(
    path: &Path,
    provider: &StaticKeyProvider,
    protection: &Protection,
    pin_file: Option<&Path>,
    rng: &dyn Rng,
) -> Result<Zeroizing<String>, KeyFileError> {
    let plain = provider.to_key_file();
    match protection {
        Protection::Plain => Ok(plain),
        Protection::Pkcs11(params) => {
            let seal = Pkcs11Seal {
                params: params.clone(),
                pin: pkcs11::Pin::from_file_or_env(pin_file).map_err(seal_err(path))?,
            };
            // The header is fixed before sealing so that it is what the
            // AEAD authenticates.
            let header = SealedKeyFile::new(seal.kind(), seal.params(), Vec::new())
                .map_err(key_err(path))?;
            let sealed = seal
                .seal(&header.aad(), plain.as_bytes(), rng)
                .map_err(seal_err(path))?;
            let file = SealedKeyFile { sealed, ..header };
            // Prove the file opens before it replaces anything.
            let back = seal
                .unseal(&file.aad(), &file.sealed)
                .map_err(seal_err(path))?;
            if back.as_slice() != plain.as_bytes() {
                return Err(seal_err(path)(SealError::Unseal));
            }
            Ok(Zeroizing::new(file.to_text()))
        }
    }
}

/// Writes `text` to `path` with mode 0600, durably: a temp file of a
/// random name beside it is written and synced, then renamed over `path`
/// (`replace`) or, for a new file, linked to it or renamed without
/// replacing (both fail if `path` exists, so nothing is overwritten), and
/// the directory is synced. A failure at any step is an error (a rotation
/// reported done whose file a power loss takes back would leave rows under
/// a version no key file holds). Only on a file system that supports
/// neither hard links nor no-replace renames is a new file written in
/// place, where a crash mid-write can leave it partial.
fn write_text(path: &Path, text: &str, replace: bool) -> Result<(), KeyFileError> {
    let mut salt = [0u8; 8];
    idvault_core::SystemRng::default()
        .fill(&mut salt)
        .map_err(|e| io(path)(std::io::Error::other(e.to_string())))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", hex::encode(salt)));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(io(&tmp))?;
    let written = f.write_all(text.as_bytes()).and_then(|()| f.sync_all());
    drop(f);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(&tmp)(e));
    }
    let placed = if replace {
        std::fs::rename(&tmp, path)
    } else {
        let linked = match std::fs::hard_link(&tmp, path) {
            // A file system without hard links (vfat, some network and
            // object-store mounts): an atomic rename that refuses to
            // replace, or failing that the file written in place, never
            // over an existing one, and removed if that fails.
            #[cfg(target_os = "linux")]
            Err(e)
                if e.kind() != std::io::ErrorKind::AlreadyExists
                    && rustix::fs::renameat_with(
                        rustix::fs::CWD,
                        &tmp,
                        rustix::fs::CWD,
                        path,
                        rustix::fs::RenameFlags::NOREPLACE,
                    )
                    .is_ok() =>
            {
                Ok(())
            }
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                let mut direct = opts.clone();
                direct.create_new(true);
                match direct.open(path) {
                    Ok(mut f) => f
                        .write_all(text.as_bytes())
                        .and_then(|()| f.sync_all())
                        .inspect_err(|_| {
                            let _ = std::fs::remove_file(path);
                        }),
                    Err(e2) if e2.kind() == std::io::ErrorKind::AlreadyExists => Err(e2),
                    Err(_) => Err(e),
                }
            }
            other => other,
        };
        let _ = std::fs::remove_file(&tmp);
        linked
    };
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(path)(e));
    }
    // The new name is durable only once the directory is synced.
    let dir = parent_dir(path);
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| {
            io(path)(std::io::Error::new(
                e.kind(),
                format!("written, but its directory could not be synced ({e}): it may not survive a power loss"),
            ))
        })?;
    Ok(())
}

/// Writes `provider` to `path` (mode 0600) under `protection`.
pub fn write(
    path: &Path,
    provider: &StaticKeyProvider,
    protection: &Protection,
    pin_file: Option<&Path>,
    rng: &dyn Rng,
    replace: bool,
) -> Result<(), KeyFileError> {
    let text = file_text(path, provider, protection, pin_file, rng)?;
    write_text(path, &text, replace)
}

/// Creates a new key file with one fresh root key (version 1). With a
/// PKCS#11 seal, the HSM key is generated in the token first if it is not
/// there yet.
pub fn create(
    path: &Path,
    protection: &Protection,
    pin_file: Option<&Path>,
    rng: &dyn Rng,
) -> Result<StaticKeyProvider, KeyFileError> {
    if let Protection::Pkcs11(params) = protection {
        let pin = pkcs11::Pin::from_file_or_env(pin_file).map_err(seal_err(path))?;
        pkcs11::ensure_key(params, &pin).map_err(seal_err(path))?;
    }
    let key = StaticKeyProvider::generate_key(rng, 1).map_err(key_err(path))?;
    let provider = StaticKeyProvider::new([key]).map_err(key_err(path))?;
    write(path, &provider, protection, pin_file, rng, false)?;
    Ok(provider)
}

/// Rewrites the key file with `change` applied, keeping its protection.
/// Returns the new provider. An exclusive lock on `<key file>.lock` is
/// held from the read to the rename, so two commands editing the file
/// (a rotation and a retirement, say) never lose each other's change.
pub fn update(
    path: &Path,
    pin_file: Option<&Path>,
    rng: &dyn Rng,
    change: impl FnOnce(&StaticKeyProvider) -> Result<StaticKeyProvider, KeyError>,
) -> Result<StaticKeyProvider, KeyFileError> {
    let _lock = lock(path)?;
    let (current, protection) = load_with_protection(path, pin_file)?;
    let next = change(&current).map_err(key_err(path))?;
    write(path, &next, &protection, pin_file, rng, true)?;
    Ok(next)
}

/// Takes the exclusive lock on `<key file>.lock` (released when the
/// returned file is dropped, or the process dies) and removes temp files a
/// crashed writer left beside the key file (they may hold key text).
fn lock(path: &Path) -> Result<std::fs::File, KeyFileError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lock_path = path.with_file_name(format!("{name}.lock"));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let lock = opts.open(&lock_path).map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    let dir = parent_dir(path);
    if let Ok(entries) = std::fs::read_dir(dir) {
        let prefix = format!(".{name}.");
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix) && n.ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(lock)
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Adds a new root key version to the file; old versions stay readable.
/// Every domain of `token_domains` not pinned yet is pinned to the
/// version it used, so a root rotation changes no domain's tokens; returns
/// the new version and the domains it pinned.
pub fn rotate(
    path: &Path,
    pin_file: Option<&Path>,
    rng: &dyn Rng,
    token_domains: &[String],
) -> Result<(u32, Vec<String>), KeyFileError> {
    let mut pinned = Vec::new();
    let next = update(path, pin_file, rng, |cur| {
        pinned = token_domains
            .iter()
            .filter(|d| cur.token_domain_version(d).is_none())
            .cloned()
            .collect();
        cur.clone_pins_then_rotate(token_domains, rng)
    })?;
    Ok((next.current_version(), pinned))
}

/// What a token domain rotation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainRotation {
    /// The domain's version before.
    pub from: u32,
    /// Its version now.
    pub to: u32,
    /// Whether a root key version was added for it.
    pub added_root_version: bool,
}

/// Moves token domain `domain` to a newer version: the current root
/// version if it is behind, else a new root version (every other domain
/// of `token_domains` first pinned where it is, so none of their tokens
/// change).
pub fn rotate_token_domain(
    path: &Path,
    pin_file: Option<&Path>,
    rng: &dyn Rng,
    domain: &str,
    token_domains: &[String],
) -> Result<DomainRotation, KeyFileError> {
    let (mut from, mut added) = (0, false);
    let next = update(path, pin_file, rng, |cur| {
        let current = cur.current_version();
        from = cur.token_domain_version(domain).unwrap_or(current);
        if from < current {
            return cur.with_token_domain(domain, current);
        }
        added = true;
        let p = cur.clone_pins_then_rotate(token_domains, rng)?;
        let v = p.current_version();
        p.with_token_domain(domain, v)
    })?;
    Ok(DomainRotation {
        from,
        to: next
            .token_domain_version(domain)
            .unwrap_or_else(|| next.current_version()),
        added_root_version: added,
    })
}

/// Seals an existing plain key file in place with a PKCS#11 key (made in
/// the token if missing). The plain text is replaced by rename, so no
/// half-written file is ever left.
pub fn seal_existing(
    path: &Path,
    params: &pkcs11::Pkcs11Params,
    pin_file: Option<&Path>,
    rng: &dyn Rng,
) -> Result<(), KeyFileError> {
    let _lock = lock(path)?;
    let (keys, protection) = load_with_protection(path, pin_file)?;
    if protection != Protection::Plain {
        return Err(key_err(path)(KeyError::Malformed(
            "the key file is already sealed",
        )));
    }
    let pin = pkcs11::Pin::from_file_or_env(pin_file).map_err(seal_err(path))?;
    pkcs11::ensure_key(params, &pin).map_err(seal_err(path))?;
    write(
        path,
        &keys,
        &Protection::Pkcs11(params.clone()),
        pin_file,
        rng,
        true,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn rng() -> idvault_core::SystemRng {
        idvault_core::SystemRng::default()
    }

    #[test]
    fn a_new_key_file_is_private_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        let made = create(&path, &Protection::Plain, None, &rng()).unwrap();
        let before = std::fs::read(&path).unwrap();
        assert_eq!(
            load(&path, None).unwrap().current_version(),
            made.current_version()
        );
        // A second create leaves the first untouched, and no temp file.
        assert!(matches!(
            create(&path, &Protection::Plain, None, &rng()),
            Err(KeyFileError::Io { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), before);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("root.key")]);
    }

    #[cfg(unix)]
    #[test]
    fn only_a_private_regular_file_of_this_user_is_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        create(&path, &Protection::Plain, None, &rng()).unwrap();
        let good = std::fs::read(&path).unwrap();
        let set_mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        };

        set_mode(&path, 0o644);
        assert!(matches!(
            load(&path, None),
            Err(KeyFileError::Permissions(_))
        ));
        set_mode(&path, 0o600);

        // Another user's file: refused (unless we are root and cannot
        // give it away, which only root can).
        let me = rustix::process::geteuid().as_raw();
        if me == 0 {
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            let e = load(&path, None).unwrap_err();
            assert!(e.to_string().contains("owned by another user"), "{e}");
            std::os::unix::fs::chown(&path, Some(0), None).unwrap();
        }

        // A FIFO is refused at once instead of blocking the start.
        let fifo = dir.path().join("fifo.key");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        set_mode(&fifo, 0o600);
        let e = load(&fifo, None).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");

        // Too large, and not text: refused with an error, never a panic.
        let big = dir.path().join("big.key");
        std::fs::write(&big, vec![b'#'; 1024 * 1024 + 1]).unwrap();
        set_mode(&big, 0o600);
        let e = load(&big, None).unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
        let mut bad = good.clone();
        bad.extend_from_slice(b"# \xff\n");
        std::fs::write(&path, &bad).unwrap();
        let e = load(&path, None).unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");

        // A symbolic link to a private file is followed (mounted secrets).
        std::fs::write(&path, &good).unwrap();
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(load(&link, None).is_ok());
    }
}
