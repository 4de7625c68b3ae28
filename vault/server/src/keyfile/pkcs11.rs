//! The PKCS#11 seal: the root key file encrypted by an AES-256 key that
//! never leaves an HSM (the approach of HashiCorp Vault's PKCS#11 seal).
//!
//! The HSM key is generated inside the token as sensitive and
//! non-extractable; the vault only ever asks the token to run AES-GCM with
//! it. A copy of the data directory (database and sealed key file) is
//! therefore useless without the HSM and its PIN.
//!
//! Every call opens the module, logs in, does one operation and finalises:
//! unsealing happens at start and when the key file changes, never on a
//! request path, and a process-wide lock keeps two callers from
//! initialising the same module at once (`C_Initialize` is per process).

use std::path::{Path, PathBuf};

use std::sync::Mutex;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use idvault_core::Rng;
use zeroize::Zeroizing;

/// Environment variable holding the token's user PIN.
pub const PIN_ENV: &str = "IDVAULT_PKCS11_PIN";

/// The seal kind written in the sealed file.
pub const SEAL_KIND: &str = "pkcs11";

const GCM_NONCE_LEN: usize = 12;
const GCM_TAG_BITS: u64 = 128;

/// Serialises every use of a PKCS#11 module in this process.
static MODULE_LOCK: Mutex<()> = Mutex::new(());

/// Errors of the PKCS#11 seal. They name the module, token and key label
/// (operator-chosen, not secret), never the PIN or key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// No PIN was given.
    #[error(
        "the PKCS#11 token needs a PIN: set {PIN_ENV} or `[keys] pin_file` (a flag value would show in the process list)"
    )]
    NoPin,
    /// The PIN file could not be read or is readable by others.
    #[error("PIN file {0}: {1}")]
    PinFile(String, String),
    /// The module could not be loaded.
    #[error("PKCS#11 module {module}: cannot load it ({reason})")]
    Module {
        /// Module path.
        module: String,
        /// Why.
        reason: String,
    },
    /// No slot holds a token with this label.
    #[error("PKCS#11: no token labelled '{0}' (tokens present: {1})")]
    NoToken(String, String),
    /// The PIN was refused.
    #[error("PKCS#11 token '{0}': login refused, the PIN is wrong or locked ({1:?})")]
    Login(String, RvError),
    /// The key is not on the token.
    #[error("PKCS#11 token '{token}': no AES key labelled '{key}'")]
    NoKey {
        /// Token label.
        token: String,
        /// Key label.
        key: String,
    },
    /// More than one key has the label.
    #[error(
        "PKCS#11 token '{token}': {count} keys are labelled '{key}'; a seal key label must be unique"
    )]
    AmbiguousKey {
        /// Token label.
        token: String,
        /// Key label.
        key: String,
        /// How many.
        count: usize,
    },
    /// The sealed file did not open under the key.
    #[error(
        "the sealed root key file did not open: it was sealed by another HSM key, or it was altered"
    )]
    Unseal,
    /// Any other PKCS#11 failure.
    #[error("PKCS#11 {0}")]
    Other(String),
}

fn other(e: CkError) -> SealError {
    SealError::Other(e.to_string())
}

/// Where the seal key lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Params {
    /// Path of the PKCS#11 module (`libsofthsm2.so`, a vendor library).
    pub module: PathBuf,
    /// Label of the token holding the key.
    pub token_label: String,
    /// Label of the AES key.
    pub key_label: String,
}

impl Pkcs11Params {
    /// The parameters as written in the sealed file, in order.
    pub fn to_file_params(&self) -> Vec<(String, String)> {
        vec![
            ("module".into(), self.module.display().to_string()),
            ("token-label".into(), self.token_label.clone()),
            ("key-label".into(), self.key_label.clone()),
        ]
    }

    /// Reads them back from a sealed file.
    pub fn from_file(file: &idvault_core::keys::sealed::SealedKeyFile) -> Result<Self, SealError> {
        let get = |name: &str| {
            file.param(name)
                .map(str::to_owned)
                .ok_or_else(|| SealError::Other(format!("sealed key file: missing '{name}'")))
        };
        Ok(Self {
            module: PathBuf::from(get("module")?),
            token_label: get("token-label")?,
            key_label: get("key-label")?,
        })
    }
}

/// The token's user PIN, wiped on drop.
pub struct Pin(Zeroizing<String>);

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pin(..)")
    }
}

impl Pin {
    /// From `pin_file` if given (owner-only, first line), else from
    /// [`PIN_ENV`].
    pub fn from_file_or_env(pin_file: Option<&Path>) -> Result<Self, SealError> {
        if let Some(path) = pin_file {
            let shown = path.display().to_string();
            let bytes = super::read_private(path).map_err(|e| {
                SealError::PinFile(
                    shown.clone(),
                    match e {
                        super::PrivateFileError::Io(e) => e.to_string(),
                        super::PrivateFileError::Permissions => {
                            "must not be readable by group or others (chmod 600)".into()
                        }
                        super::PrivateFileError::Untrusted(why) => why.into(),
                    },
                )
            })?;
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| SealError::PinFile(shown.clone(), "is not UTF-8 text".into()))?;
            let pin = text.lines().next().unwrap_or_default().trim();
            if pin.is_empty() {
                return Err(SealError::PinFile(shown, "is empty".into()));
            }
            return Ok(Self(Zeroizing::new(pin.to_owned())));
        }
        match std::env::var(PIN_ENV) {
            Ok(p) if !p.is_empty() => Ok(Self(Zeroizing::new(p))),
            _ => Err(SealError::NoPin),
        }
    }

    /// A PIN given in code (tests).
    pub fn new(pin: &str) -> Self {
        Self(Zeroizing::new(pin.to_owned()))
    }

    fn auth(&self) -> AuthPin {
        AuthPin::from(self.0.as_str())
    }
}

/// A logged-in session on the seal's token; finalises the module on drop.
struct Open {
    session: Session,
    // Dropped after the session: finalising first would pull the session
    // out from under it.
    _ctx: Pkcs11,
}

/// Refuses a module unless it is an absolute path whose file and every
/// directory above it (symbolic links resolved) belong to root or to this
/// process's user and are writable by nobody else: loading it runs its code
/// in the vault and hands it the PIN, so only a file the operator (or the
/// system) controls is loaded. (The sealed file names the module and is
/// authenticated, but only by the module itself, after it is loaded.)
///
/// Returns the path to load: the resolved one that was checked, never the
/// name given, whose links someone could point elsewhere between the
/// check and the load.
fn check_module(module: &Path) -> Result<std::path::PathBuf, SealError> {
    let refuse = |reason: String| SealError::Module {
        module: module.display().to_string(),
        reason,
    };
    if !module.is_absolute() {
        return Err(refuse("the module path must be absolute".into()));
    }
    #[cfg(unix)]
    {
        let real = std::fs::canonicalize(module).map_err(|e| refuse(e.to_string()))?;
        // The file and every directory above it, links resolved; and the
        // directories of the path as named, where a link could be swapped
        // (a directory that is itself a link is followed there, and its
        // target is among the resolved ones).
        safe_paths(real.ancestors(), "", &refuse)?;
        safe_paths(
            module.ancestors().skip(1),
            " (on the module's path as named)",
            &refuse,
        )?;
        Ok(real)
    }
    #[cfg(not(unix))]
    Ok(module.to_path_buf())
}

/// Each of `paths` must belong to root or this process's user and be
/// writable by nobody else; `named` says which path a refusal is about.
#[cfg(unix)]
fn safe_paths<'a>(
    paths: impl Iterator<Item = &'a Path>,
    named: &str,
    refuse: &dyn Fn(String) -> SealError,
) -> Result<(), SealError> {
    use std::os::unix::fs::MetadataExt;
    // This process's user: the owner of its own /proc entry.
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    for p in paths {
        let m = std::fs::metadata(p).map_err(|e| refuse(e.to_string()))?;
        let owner_ok = m.uid() == 0 || Some(m.uid()) == me;
        if !owner_ok || m.mode() & 0o022 != 0 {
            return Err(refuse(format!(
                "{}{named} is writable by others than root or this user; refusing to load the module",
                p.display()
            )));
        }
    }
    Ok(())
}

fn open(params: &Pkcs11Params, pin: &Pin, rw: bool) -> Result<Open, SealError> {
    let module = check_module(&params.module)?;
    let ctx = Pkcs11::new(&module).map_err(|e| SealError::Module {
        module: params.module.display().to_string(),
        reason: e.to_string(),
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(other(e)),
    }
    let mut seen = Vec::new();
    let mut slot = None;
    for s in ctx.get_slots_with_token().map_err(other)? {
        let info = ctx.get_token_info(s).map_err(other)?;
        let label = info.label().trim_end().to_owned();
        if label == params.token_label {
            slot = Some(s);
            break;
        }
        seen.push(format!("'{label}'"));
    }
    let slot = slot.ok_or_else(|| {
        SealError::NoToken(
            params.token_label.clone(),
            if seen.is_empty() {
                "none".into()
            } else {
                seen.join(", ")
            },
        )
    })?;
    let session = if rw {
        ctx.open_rw_session(slot)
    } else {
        ctx.open_ro_session(slot)
    }
    .map_err(other)?;
    match session.login(UserType::User, Some(&pin.auth())) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(CkError::Pkcs11(rv, _)) => {
            return Err(SealError::Login(params.token_label.clone(), rv));
        }
        Err(e) => return Err(other(e)),
    }
    Ok(Open { session, _ctx: ctx })
}

fn key_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

fn find_key(open: &Open, params: &Pkcs11Params) -> Result<Option<ObjectHandle>, SealError> {
    let found = open
        .session
        .find_objects(&key_template(&params.key_label))
        .map_err(other)?;
    match found.as_slice() {
        [] => Ok(None),
        [k] => {
            // A key someone made extractable (or not sensitive) could have
            // left the HSM: it does not protect the root key.
            let attrs = open
                .session
                .get_attributes(
                    *k,
                    &[
                        AttributeType::Extractable,
                        AttributeType::Sensitive,
                        AttributeType::NeverExtractable,
                        AttributeType::AlwaysSensitive,
                        AttributeType::Private,
                        AttributeType::Token,
                        AttributeType::ValueLen,
                    ],
                )
                .map_err(other)?;
            // Not extractable now, and never was: a key exported once and
            // then locked down does not count. Private: a public object
            // may be used by any session on the slot without the PIN (and
            // SoftHSM2 stores its value unencrypted). On the token, and
            // AES-256 as documented.
            let safe = attrs.iter().all(|a| match a {
                Attribute::Extractable(x) => !*x,
                Attribute::Sensitive(s) | Attribute::AlwaysSensitive(s) => *s,
                Attribute::NeverExtractable(n) => *n,
                Attribute::Private(p) | Attribute::Token(p) => *p,
                Attribute::ValueLen(n) => **n == 32,
                _ => true,
            }) && attrs.len() == 7;
            if !safe {
                return Err(SealError::Other(format!(
                    "token '{}': key '{}' is extractable, not sensitive, not private, not on the \
                     token or not AES-256; a seal key must never leave the HSM nor be usable \
                     without the PIN",
                    params.token_label, params.key_label
                )));
            }
            Ok(Some(*k))
        }
        more => Err(SealError::AmbiguousKey {
            token: params.token_label.clone(),
            key: params.key_label.clone(),
            count: more.len(),
        }),
    }
}

/// Finds the seal key, or generates it inside the token: AES-256, a token
/// object, private, sensitive and never extractable, usable only to
/// encrypt and decrypt. Returns whether it was generated.
pub fn ensure_key(params: &Pkcs11Params, pin: &Pin) -> Result<bool, SealError> {
    let _guard = MODULE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let open = open(params, pin, true)?;
    if find_key(&open, params)?.is_some() {
        return Ok(false);
    }
    let mut template = key_template(&params.key_label);
    template.extend([
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
    ]);
    open.session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .map_err(other)?;
    Ok(true)
}

fn the_key(open: &Open, params: &Pkcs11Params) -> Result<ObjectHandle, SealError> {
    find_key(open, params)?.ok_or_else(|| SealError::NoKey {
        token: params.token_label.clone(),
        key: params.key_label.clone(),
    })
}

/// Encrypts `plaintext` with the seal key: `nonce ‖ ciphertext ‖ tag`.
pub fn seal(
    params: &Pkcs11Params,
    pin: &Pin,
    aad: &[u8],
    plaintext: &[u8],
    rng: &dyn Rng,
) -> Result<Vec<u8>, SealError> {
    let _guard = MODULE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let open = open(params, pin, false)?;
    let key = the_key(&open, params)?;
    let mut nonce = [0u8; GCM_NONCE_LEN];
    rng.fill(&mut nonce)
        .map_err(|e| SealError::Other(e.to_string()))?;
    let mut iv = nonce;
    let gcm = GcmParams::new(&mut iv, aad, GCM_TAG_BITS.into()).map_err(other)?;
    let ct = open
        .session
        .encrypt(&Mechanism::AesGcm(gcm), key, plaintext)
        .map_err(other)?;
    let mut out = Vec::with_capacity(GCM_NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Decrypts what [`seal`] produced. A wrong key or an altered file or
/// header is [`SealError::Unseal`].
pub fn unseal(
    params: &Pkcs11Params,
    pin: &Pin,
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let _guard = MODULE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let open = open(params, pin, false)?;
    let key = the_key(&open, params)?;
    let (nonce, ct) = sealed
        .split_first_chunk::<GCM_NONCE_LEN>()
        .ok_or(SealError::Unseal)?;
    let mut iv = *nonce;
    let gcm = GcmParams::new(&mut iv, aad, GCM_TAG_BITS.into()).map_err(other)?;
    match open.session.decrypt(&Mechanism::AesGcm(gcm), key, ct) {
        Ok(pt) => Ok(Zeroizing::new(pt)),
        // Tokens report a failed GCM tag differently: SoftHSM2 says
        // CKR_GENERAL_ERROR, others CKR_ENCRYPTED_DATA_INVALID or
        // CKR_FUNCTION_FAILED. With the key found and logged in, each
        // means the ciphertext did not authenticate.
        Err(CkError::Pkcs11(
            RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            | RvError::DataInvalid
            | RvError::DataLenRange
            | RvError::GeneralError
            | RvError::FunctionFailed,
            _,
        )) => Err(SealError::Unseal),
        Err(e) => Err(other(e)),
    }
}

#[cfg(all(test, unix))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::check_module;

    /// A link to a safe library, in a directory others can write (they
    /// could point it elsewhere between the check and the load), is
    /// refused; the library itself, named by its resolved path, is not.
    #[test]
    fn a_module_reached_through_a_writable_directory_is_refused() {
        let target = std::fs::canonicalize("/bin/sh").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let link = dir.path().join("libmodule.so");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        // In a world-writable directory: refused, whatever the target.
        assert!(check_module(&link).is_err());
        assert_eq!(check_module(&target).unwrap(), target);
        assert!(check_module(std::path::Path::new("relative.so")).is_err());
    }
}
