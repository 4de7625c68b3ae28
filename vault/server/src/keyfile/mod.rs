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

fn check_owner_only(path: &Path) -> Result<(), KeyFileError> {
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
    Ok(())
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
    check_owner_only(path)?;
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io(path))?);
    if !is_sealed(&text) {
        let keys = StaticKeyProvider::parse(&text).map_err(key_err(path))?;
        return Ok((keys, Protection::Plain));
    }
    let file = SealedKeyFile::parse(&text).map_err(key_err(path))?;
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

/// Writes `text` to `path` with mode 0600. Refuses to overwrite unless
/// `replace`, which writes a temp file of a random name beside it, syncs
/// it and renames it over.
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
    let target = if replace { tmp.as_path() } else { path };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(target).map_err(io(target))?;
    let written = f.write_all(text.as_bytes()).and_then(|()| f.sync_all());
    if let Err(e) = written {
        if replace {
            let _ = std::fs::remove_file(&tmp);
        }
        return Err(io(target)(e));
    }
    if replace {
        if let Err(e) = std::fs::rename(&tmp, path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(path)(e));
        }
        // The rename is durable only once the directory is synced.
        if let Ok(d) = std::fs::File::open(parent_dir(path)) {
            let _ = d.sync_all();
        }
    }
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
