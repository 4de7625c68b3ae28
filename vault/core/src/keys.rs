//! The key hierarchy.
//!
//! ```text
//! root key (KeyProvider, versioned)
//!   └─ HKDF-SHA256(salt = SALT, ikm = root, info = label ‖ 0x00 ‖ version_be32)
//!        ├─ "idvault/v1/kek"        → key-encryption key, wraps subject DEKs
//!        ├─ "idvault/v1/audit-mac"  → audit-log record MAC key
//!        ├─ "idvault/v1/audit-signing" → Ed25519 seed signing audit checkpoints
//!        ├─ "idvault/v1/token/<domain>" → stateless token key of a token domain
//!        ├─ "idvault/v1/xref-index/<partner>", "idvault/v1/match-index/<domain>/<field>/<kind>"
//!        │                          → blind-index keys (cross-references, blind matching)
//!        └─ one label per other purpose: audit-reveal, xref-seal, bridge-seal/<partner>,
//!           release-signing, receipt-signing, row-mac, issuer-key, status-index,
//!           transaction-code, shred-log (every label: docs/keys.md)
//! subject DEK: 32 random bytes, stored only wrapped:
//!   AES-256-GCM(kek_v, nonce, aad = "idvault/v1/dek-wrap" ‖ subject_id ‖ version_be32)
//! ```
//!
//! Labels are fixed strings written down in `docs/keys.md`; two purposes
//! never share a label, so no derived key can stand in for another. A
//! derived key carries the version of the root key it came from, and the
//! wrapped DEK records it, so rotating the root never breaks old data.
//!
//! This module never reads a key file or a KMS itself (a [`KeyProvider`]
//! hands it root keys; a key file is parsed from text the caller read),
//! data keys leave it for storage only as a [`WrappedDek`], and it never
//! prints key bytes: `Debug` and [`KeyError`] show versions only.

pub mod sealed;

use std::collections::BTreeMap;
use std::fmt;

use zeroize::Zeroize;

use super::crypto::{self, CryptoError, NONCE_LEN, Rng};
use super::secret::{
    AuditKey, AuditSigningSeed, DataKey, KEY_LEN, Kek, KeyPurpose, ReleaseSigningSeed, RootKey,
    Secret, TokenKey,
};
use super::subject::SubjectId;

/// HKDF salt for every derivation from the root key.
pub const HKDF_SALT: &[u8] = b"idvault/v1/hkdf-salt";
/// HKDF label of the key-encryption key.
pub const LABEL_KEK: &str = "idvault/v1/kek";
/// HKDF label of the audit MAC key.
pub const LABEL_AUDIT_MAC: &str = "idvault/v1/audit-mac";
/// HKDF label of the key of revealed-subject tags in match records (see
/// [`crate::tlog::leaf::reveal_tag`]): a key of its own, so that whoever
/// may search the tags cannot MAC audit leaves.
pub const LABEL_AUDIT_REVEAL: &str = "idvault/v1/audit-reveal";
/// HKDF label of the audit checkpoint signing seed (Ed25519, see
/// [`crate::tlog::checkpoint`]).
pub const LABEL_AUDIT_SIGNING: &str = "idvault/v1/audit-signing";
/// HKDF label of the release signing seed (Ed25519, see
/// [`crate::consent::release`]).
pub const LABEL_RELEASE_SIGNING: &str = "idvault/v1/release-signing";
/// HKDF label of the deletion receipt signing seed (Ed25519, see
/// [`crate::receipt`]).
pub const LABEL_RECEIPT_SIGNING: &str = "idvault/v1/receipt-signing";
/// HKDF label of the digital-ID issuer key (a P-256 scalar, see
/// [`KeyHierarchy::issuer_key`]).
pub const LABEL_ISSUER_KEY: &str = "idvault/v1/issuer-key";
/// HKDF label of the key MACing one-time transaction codes.
pub const LABEL_TRANSACTION_CODE: &str = "idvault/v1/transaction-code";
/// HKDF label of a status list's index permutation key.
pub const LABEL_STATUS_INDEX: &str = "idvault/v1/status-index";
/// HKDF label of the key MACing deletion journal entries.
pub const LABEL_SHRED_LOG: &str = "idvault/v1/shred-log";
/// HKDF label prefix of token domain keys: `idvault/v1/token/<domain>`.
pub const LABEL_TOKEN_PREFIX: &str = "idvault/v1/token/";
/// AAD prefix of a wrapped DEK.
pub const DEK_WRAP_AAD: &[u8] = b"idvault/v1/dek-wrap";

/// Errors of the key hierarchy. They name versions, never key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The provider has no root key of this version.
    #[error("no root key with version {0}")]
    UnknownVersion(u32),
    /// The provider holds no key at all.
    #[error("the key provider holds no root key")]
    Empty,
    /// A key file did not parse.
    #[error("malformed key file: {0}")]
    Malformed(&'static str),
    /// A wrapped key was altered, or belongs to another subject.
    #[error("wrapped data key failed to unwrap")]
    Unwrap,
    /// A cryptographic primitive failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// Where root keys come from: a key file (plain, or sealed by an HSM)
/// today; a KMS-backed provider implements the same trait.
pub trait KeyProvider: Send + Sync + fmt::Debug {
    /// The version new data is protected under.
    fn current_version(&self) -> u32;
    /// The root key of `version`.
    fn root_key(&self, version: u32) -> Result<RootKey, KeyError>;
    /// Every version held, oldest first (retired versions are gone).
    fn versions(&self) -> Vec<u32> {
        (1..=self.current_version())
            .filter(|v| self.root_key(*v).is_ok())
            .collect()
    }
    /// The version token domain `domain` is pinned to, if any (a domain
    /// not pinned follows the current version).
    fn token_domain_version(&self, _domain: &str) -> Option<u32> {
        None
    }
    /// Public keys of retired versions kept for checking what those
    /// versions signed (audit checkpoints, deletion receipts).
    fn retired_public_keys(&self) -> Vec<RetiredPublicKey> {
        Vec::new()
    }
    /// The deletion-journal MAC key kept from retired version `version`
    /// (`idvault/v1/shred-log`), if the provider kept it.
    fn retired_shred_log_key(&self, _version: u32) -> Option<ShredLogKey> {
        None
    }
}

/// The key MACing deletion-journal lines.
pub type ShredLogKey = super::secret::Secret<super::secret::ShredLogMaterial>;

/// The word of a `retired` line keeping a version's deletion-journal MAC
/// key.
const RETIRED_SHRED_LOG: &str = "shred-log";

/// What a retired version's kept public key verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum RetiredPurpose {
    /// Audit checkpoints (Ed25519, `idvault/v1/audit-signing`).
    AuditSigning,
    /// Deletion receipts (Ed25519, `idvault/v1/receipt-signing`).
    ReceiptSigning,
}

impl RetiredPurpose {
    /// The word in the key file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuditSigning => "audit-signing",
            Self::ReceiptSigning => "receipt-signing",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "audit-signing" => Some(Self::AuditSigning),
            "receipt-signing" => Some(Self::ReceiptSigning),
            _ => None,
        }
    }
}

/// The public half of a retired version's signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredPublicKey {
    /// The retired root key version.
    pub version: u32,
    /// What it verifies.
    pub purpose: RetiredPurpose,
    /// The Ed25519 public key.
    pub public: [u8; 32],
}

/// Appends `bytes` as lower-case hex, one character at a time, so no
/// temporary copy of them is left unwiped.
fn push_hex(out: &mut String, bytes: &[u8]) {
    let digit = |n: u8| char::from(if n < 10 { b'0' + n } else { b'a' + n - 10 });
    for b in bytes {
        out.push(digit(b >> 4));
        out.push(digit(b & 0x0f));
    }
}

/// Root keys held in memory, parsed from the key-file format.
///
/// Key file format (text, one item per line, `#` comments allowed):
/// ```text
/// idvault-root-keys v1
/// 2 <64 hex digits>
/// 3 <64 hex digits>
/// token-domain logs 2
/// retired 1 audit-signing <64 hex digits: Ed25519 public key>
/// ```
/// The highest version is current. `token-domain D V` pins token domain
/// `D` to version `V` (docs/keys.md, "Token domains"); `retired` lines
/// keep the public keys of a retired version so what it signed stays
/// verifiable.
pub struct StaticKeyProvider {
    keys: BTreeMap<u32, RootKey>,
    domains: BTreeMap<String, u32>,
    retired: Vec<RetiredPublicKey>,
    /// Retired versions' deletion-journal MAC keys: a journal outlives
    /// the versions that wrote it, and a restore must still tell its
    /// lines from forgeries. The key opens nothing (it only MACs lines),
    /// so keeping it leaves a retired version's data unreadable.
    retired_shred: BTreeMap<u32, ShredLogKey>,
}

impl fmt::Debug for StaticKeyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKeyProvider")
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .field("token_domains", &self.domains)
            .field("retired", &self.retired.len())
            .field("retired_shred_log_keys", &self.retired_shred.len())
            .finish()
    }
}

impl Clone for StaticKeyProvider {
    fn clone(&self) -> Self {
        self.clone_all()
    }
}

/// Whether `d` is a token domain name (`[a-z0-9-]{1,32}`; the tokenizer
/// crate's rule, repeated here because the core does not depend on it).
fn valid_domain(d: &str) -> bool {
    (1..=32).contains(&d.len())
        && d.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// First line of a root key file.
pub const KEY_FILE_HEADER: &str = "idvault-root-keys v1";

impl StaticKeyProvider {
    /// Builds a provider from keys; fails if empty.
    pub fn new(keys: impl IntoIterator<Item = RootKey>) -> Result<Self, KeyError> {
        let keys: BTreeMap<u32, RootKey> = keys.into_iter().map(|k| (k.version(), k)).collect();
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Self {
            keys,
            domains: BTreeMap::new(),
            retired: Vec::new(),
            retired_shred: BTreeMap::new(),
        })
    }

    /// Checks the cross-line rules: every pinned domain names a held
    /// version.
    fn checked(self) -> Result<Self, KeyError> {
        if self.domains.values().any(|v| !self.keys.contains_key(v)) {
            return Err(KeyError::Malformed(
                "a token domain is pinned to a version the file does not hold",
            ));
        }
        if self
            .retired
            .iter()
            .any(|r| self.keys.contains_key(&r.version))
        {
            return Err(KeyError::Malformed("a version is both held and retired"));
        }
        if self.retired_shred.keys().any(|v| self.keys.contains_key(v)) {
            return Err(KeyError::Malformed("a version is both held and retired"));
        }
        Ok(self)
    }

    /// The token domains pinned to a version, by name.
    pub fn token_domains(&self) -> &BTreeMap<String, u32> {
        &self.domains
    }

    /// A copy with a new current version, every domain of `domains` not
    /// pinned yet first pinned to the version it used (the old current),
    /// so that adding the version changes none of their tokens.
    pub fn clone_pins_then_rotate(
        &self,
        domains: &[String],
        rng: &dyn Rng,
    ) -> Result<Self, KeyError> {
        let mut next = self.rotated(rng)?;
        for d in domains {
            if !self.domains.contains_key(d) {
                next = next.with_token_domain(d, self.current_version())?;
            }
        }
        Ok(next)
    }

    /// A copy with token domain `domain` pinned to `version` (which the
    /// file must hold).
    pub fn with_token_domain(&self, domain: &str, version: u32) -> Result<Self, KeyError> {
        if !valid_domain(domain) {
            return Err(KeyError::Malformed("invalid token domain name"));
        }
        let mut next = self.clone_all();
        next.domains.insert(domain.to_owned(), version);
        next.checked()
    }

    /// A copy without version `version`, keeping `public` (the retired
    /// version's verification keys) and its deletion-journal MAC key.
    /// Refuses to remove the current version.
    pub fn without_version(
        &self,
        version: u32,
        public: Vec<RetiredPublicKey>,
    ) -> Result<Self, KeyError> {
        if version == self.current_version() {
            return Err(KeyError::Malformed("the current version cannot be retired"));
        }
        let root = self
            .keys
            .get(&version)
            .ok_or(KeyError::UnknownVersion(version))?;
        let shred: ShredLogKey = derive_from_root(root, LABEL_SHRED_LOG)?;
        let mut next = self.clone_all();
        next.keys.remove(&version);
        next.retired_shred.insert(version, shred);
        next.retired.extend(public);
        next.retired.sort_by_key(|r| (r.version, r.purpose));
        next.checked()
    }

    fn clone_all(&self) -> Self {
        Self {
            keys: self.keys.clone(),
            domains: self.domains.clone(),
            retired: self.retired.clone(),
            retired_shred: self.retired_shred.clone(),
        }
    }

    /// Parses the key-file format. Error messages never contain key text.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        if lines.next() != Some(KEY_FILE_HEADER) {
            return Err(KeyError::Malformed("missing 'idvault-root-keys v1' header"));
        }
        let mut keys = BTreeMap::new();
        let mut domains = BTreeMap::new();
        let mut retired: Vec<RetiredPublicKey> = Vec::new();
        let mut retired_shred = BTreeMap::new();
        for line in lines {
            let (ver, hex_key) = line
                .split_once(char::is_whitespace)
                .ok_or(KeyError::Malformed("expected '<version> <hex key>'"))?;
            if ver == "token-domain" {
                let mut parts = hex_key.split_whitespace();
                let (Some(d), Some(v), None) = (parts.next(), parts.next(), parts.next()) else {
                    return Err(KeyError::Malformed(
                        "expected 'token-domain <domain> <version>'",
                    ));
                };
                let v: u32 = v
                    .parse()
                    .map_err(|_| KeyError::Malformed("token-domain version is not a number"))?;
                if !valid_domain(d) {
                    return Err(KeyError::Malformed("invalid token domain name"));
                }
                if domains.insert(d.to_owned(), v).is_some() {
                    return Err(KeyError::Malformed("duplicate token-domain line"));
                }
                continue;
            }
            if ver == "retired" {
                let mut parts = hex_key.split_whitespace();
                let (Some(v), Some(purpose), Some(public), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(KeyError::Malformed(
                        "expected 'retired <version> <purpose> <hex public key>'",
                    ));
                };
                let version: u32 = v
                    .parse()
                    .map_err(|_| KeyError::Malformed("retired version is not a number"))?;
                if purpose == RETIRED_SHRED_LOG {
                    let mut bytes = [0u8; KEY_LEN];
                    let parsed = hex::decode_to_slice(public, &mut bytes);
                    let key = ShredLogKey::from_bytes(bytes, version);
                    bytes.zeroize();
                    parsed.map_err(|_| {
                        KeyError::Malformed("retired shred-log key is not 64 hex digits")
                    })?;
                    if retired_shred.insert(version, key).is_some() {
                        return Err(KeyError::Malformed("duplicate retired line"));
                    }
                    continue;
                }
                let purpose = RetiredPurpose::parse(purpose)
                    .ok_or(KeyError::Malformed("unknown retired key purpose"))?;
                let mut key = [0u8; 32];
                hex::decode_to_slice(public, &mut key)
                    .map_err(|_| KeyError::Malformed("retired public key is not 64 hex digits"))?;
                if retired
                    .iter()
                    .any(|r| r.version == version && r.purpose == purpose)
                {
                    return Err(KeyError::Malformed("duplicate retired line"));
                }
                retired.push(RetiredPublicKey {
                    version,
                    purpose,
                    public: key,
                });
                continue;
            }
            let version: u32 = ver
                .parse()
                .map_err(|_| KeyError::Malformed("version is not a number"))?;
            if version == 0 {
                return Err(KeyError::Malformed("version 0 is reserved"));
            }
            let mut bytes = [0u8; KEY_LEN];
            hex::decode_to_slice(hex_key.trim(), &mut bytes)
                .map_err(|_| KeyError::Malformed("key is not 64 hex digits"))?;
            let key = RootKey::from_bytes(bytes, version);
            bytes.zeroize();
            if keys.insert(version, key).is_some() {
                return Err(KeyError::Malformed("duplicate key version"));
            }
        }
        let mut p = Self::new(keys.into_values())?;
        p.domains = domains;
        p.retired = retired;
        p.retired_shred = retired_shred;
        p.checked()
    }

    /// Serialises to the key-file format. The result holds key material:
    /// it is wiped on drop and must only be written to a 0600 file.
    pub fn to_key_file(&self) -> zeroize::Zeroizing<String> {
        use std::fmt::Write as _;
        // Sized once and written in place: a buffer that grew by
        // reallocation, or a `format!` temporary, would leave copies of
        // key hex in freed memory that nothing wipes.
        let line = 12 + 2 * KEY_LEN;
        let capacity = KEY_FILE_HEADER.len()
            + 1
            + self.keys.len() * line
            + self.domains.keys().map(|d| d.len() + 26).sum::<usize>()
            + (self.retired.len() + self.retired_shred.len()) * (line + 32);
        let mut out = zeroize::Zeroizing::new(String::with_capacity(capacity));
        out.push_str(KEY_FILE_HEADER);
        out.push('\n');
        for (v, k) in &self.keys {
            // Writing to a String cannot fail.
            let _ = write!(out, "{v} ");
            push_hex(&mut out, k.expose());
            out.push('\n');
        }
        for (d, v) in &self.domains {
            let _ = writeln!(out, "token-domain {d} {v}");
        }
        for r in &self.retired {
            let _ = write!(out, "retired {} {} ", r.version, r.purpose.as_str());
            push_hex(&mut out, &r.public);
            out.push('\n');
        }
        for (v, k) in &self.retired_shred {
            let _ = write!(out, "retired {v} {RETIRED_SHRED_LOG} ");
            push_hex(&mut out, k.expose());
            out.push('\n');
        }
        debug_assert!(out.len() <= capacity, "the key file outgrew its buffer");
        out
    }

    /// Draws a fresh root key of `version` from `rng`.
    pub fn generate_key(rng: &dyn Rng, version: u32) -> Result<RootKey, KeyError> {
        let mut bytes = [0u8; KEY_LEN];
        rng.fill(&mut bytes)?;
        let key = RootKey::from_bytes(bytes, version);
        bytes.zeroize();
        Ok(key)
    }

    /// Returns a provider with a new current version appended (rotation).
    pub fn rotated(&self, rng: &dyn Rng) -> Result<Self, KeyError> {
        // Never past the last version: a saturating add would replace the
        // current key with a fresh one, and everything under it would be
        // lost.
        let next = self
            .current_version()
            .checked_add(1)
            .ok_or(KeyError::Malformed(
                "the root key version cannot go past 4294967295",
            ))?;
        let new = Self::generate_key(rng, next)?;
        let mut out = self.clone_all();
        out.keys.insert(next, new);
        // A hand-edited file can name a retired version above the current
        // one: refused here, rather than written and then unreadable.
        out.checked()
    }
}

impl KeyProvider for StaticKeyProvider {
    fn current_version(&self) -> u32 {
        self.keys.keys().next_back().copied().unwrap_or(0)
    }

    fn root_key(&self, version: u32) -> Result<RootKey, KeyError> {
        self.keys
            .get(&version)
            .cloned()
            .ok_or(KeyError::UnknownVersion(version))
    }

    fn versions(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    fn token_domain_version(&self, domain: &str) -> Option<u32> {
        self.domains.get(domain).copied()
    }

    fn retired_public_keys(&self) -> Vec<RetiredPublicKey> {
        self.retired.clone()
    }

    fn retired_shred_log_key(&self, version: u32) -> Option<ShredLogKey> {
        self.retired_shred.get(&version).cloned()
    }
}

/// Derives purpose keys from a [`KeyProvider`]'s root keys.
#[derive(Debug)]
pub struct KeyHierarchy {
    provider: Box<dyn KeyProvider>,
}

impl KeyHierarchy {
    /// Wraps a provider.
    pub fn new(provider: Box<dyn KeyProvider>) -> Self {
        Self { provider }
    }

    /// The version new keys are derived under.
    pub fn current_version(&self) -> u32 {
        self.provider.current_version()
    }

    /// Every version held, oldest first: lookups that must find data
    /// written under any live version probe exactly these.
    pub fn versions(&self) -> Vec<u32> {
        self.provider.versions()
    }

    /// The version token domain `domain` issues tokens under: its pin, or
    /// the current version.
    pub fn token_version(&self, domain: &str) -> u32 {
        self.provider
            .token_domain_version(domain)
            .unwrap_or_else(|| self.current_version())
    }

    /// Public keys kept from retired versions for `purpose`.
    pub fn retired_public_keys(&self, purpose: RetiredPurpose) -> Vec<RetiredPublicKey> {
        self.provider
            .retired_public_keys()
            .into_iter()
            .filter(|r| r.purpose == purpose)
            .collect()
    }

    /// Derives the key labelled `label` from root key `version`.
    pub fn derive<P: KeyPurpose>(&self, label: &str, version: u32) -> Result<Secret<P>, KeyError> {
        let root = self.provider.root_key(version)?;
        derive_from_root(&root, label)
    }

    /// The key-encryption key of `version`.
    pub fn kek(&self, version: u32) -> Result<Kek, KeyError> {
        self.derive(LABEL_KEK, version)
    }

    /// The audit MAC key of `version`.
    pub fn audit_key(&self, version: u32) -> Result<AuditKey, KeyError> {
        self.derive(LABEL_AUDIT_MAC, version)
    }

    /// The key of revealed-subject tags in match records, of `version`.
    pub fn audit_reveal_key(
        &self,
        version: u32,
    ) -> Result<super::secret::AuditRevealKey, KeyError> {
        self.derive(LABEL_AUDIT_REVEAL, version)
    }

    /// The Ed25519 seed that signs audit checkpoints, of `version`.
    pub fn audit_signing_seed(&self, version: u32) -> Result<AuditSigningSeed, KeyError> {
        self.derive(LABEL_AUDIT_SIGNING, version)
    }

    /// The Ed25519 seed the vault signs consented releases with, of
    /// `version`: a partner checks a release came from the vault, not from
    /// whoever holds the partner's public release key.
    pub fn release_signing_seed(&self, version: u32) -> Result<ReleaseSigningSeed, KeyError> {
        self.derive(LABEL_RELEASE_SIGNING, version)
    }

    /// The Ed25519 seed the vault signs deletion receipts with, of `version`.
    pub fn receipt_signing_seed(
        &self,
        version: u32,
    ) -> Result<super::secret::ReceiptSigningSeed, KeyError> {
        self.derive(LABEL_RECEIPT_SIGNING, version)
    }

    /// The P-256 key the vault signs digital IDs with, of `version`.
    ///
    /// HKDF output is a P-256 scalar only if it is non-zero and below the
    /// group order (all but about 2^-32 of outputs). Rather than reduce
    /// modulo the order (a bias), a refused candidate is followed by the
    /// next label: `idvault/v1/issuer-key`, then `…/1`, `…/2`, up to `…/7`.
    pub fn issuer_key(&self, version: u32) -> Result<crate::sdjwt::IssuerKey, KeyError> {
        for attempt in 0..8u32 {
            let label = if attempt == 0 {
                LABEL_ISSUER_KEY.to_owned()
            } else {
                format!("{LABEL_ISSUER_KEY}/{attempt}")
            };
            let seed: super::secret::IssuerKeySeed = self.derive(&label, version)?;
            if let Some(k) = crate::sdjwt::IssuerKey::from_scalar(seed.expose()) {
                return Ok(k);
            }
        }
        Err(KeyError::Malformed(
            "no issuer key candidate is a P-256 scalar",
        ))
    }

    /// The key of the permutation placing credentials in a status list
    /// (whose row names the `version` it was made under).
    pub fn status_index_key(
        &self,
        version: u32,
    ) -> Result<super::secret::Secret<super::secret::StatusIndexMaterial>, KeyError> {
        self.derive(LABEL_STATUS_INDEX, version)
    }

    /// The key MACing deletion journal entries, of `version`
    /// ([`crate::shred`]).
    pub fn shred_log_key(&self, version: u32) -> Result<ShredLogKey, KeyError> {
        match self.derive(LABEL_SHRED_LOG, version) {
            // A retired version's key, kept for its journal lines.
            Err(KeyError::UnknownVersion(_)) => self
                .provider
                .retired_shred_log_key(version)
                .ok_or(KeyError::UnknownVersion(version)),
            r => r,
        }
    }

    /// The key MACing one-time transaction codes, of `version`: stored
    /// codes are MACs, so 40-bit codes cannot be recovered from a copy of
    /// the database by trying them all.
    pub fn transaction_code_key(
        &self,
        version: u32,
    ) -> Result<super::secret::Secret<super::secret::TransactionCodeMaterial>, KeyError> {
        self.derive(LABEL_TRANSACTION_CODE, version)
    }

    /// Partner `owner`'s cross-reference blind-index key of `version`
    /// (`owner` is a validated partner name). One key per partner: the same
    /// identifier has unrelated blind indexes in two partners' tables.
    pub fn xref_index_key(
        &self,
        owner: &str,
        version: u32,
    ) -> Result<super::xref::XrefIndexKey, KeyError> {
        self.derive(
            &format!("{}/{owner}", super::xref::LABEL_XREF_INDEX),
            version,
        )
    }

    /// The cross-reference identifier seal key of `version`.
    pub fn xref_seal_key(&self, version: u32) -> Result<super::xref::XrefSealKey, KeyError> {
        self.derive(super::xref::LABEL_XREF_SEAL, version)
    }

    /// The key `partner`'s sending platform seals its identity-bridge
    /// identifiers with, of `version` (one per partner: a file sealed for
    /// one partner opens for no other).
    pub fn bridge_seal_key(
        &self,
        partner: &str,
        version: u32,
    ) -> Result<super::xref::BridgeSealKey, KeyError> {
        self.derive(
            &format!("{}/{partner}", super::xref::LABEL_BRIDGE_SEAL),
            version,
        )
    }

    /// The HMAC key of token domain `domain` (validated by the caller) at `version`.
    pub fn token_key(&self, domain: &str, version: u32) -> Result<TokenKey, KeyError> {
        self.derive(&format!("{LABEL_TOKEN_PREFIX}{domain}"), version)
    }
}

/// HKDF-SHA256 derivation of one labelled key from a root key.
pub fn derive_from_root<P: KeyPurpose>(root: &RootKey, label: &str) -> Result<Secret<P>, KeyError> {
    let mut info = Vec::with_capacity(label.len() + 5);
    info.extend_from_slice(label.as_bytes());
    info.push(0);
    info.extend_from_slice(&root.version().to_be_bytes());
    // Derived straight into the key's own (heap) storage: no copy of the
    // output stays on the stack.
    let mut key = Secret::from_bytes([0u8; KEY_LEN], root.version());
    crypto::hkdf_sha256(HKDF_SALT, root.expose(), &info, key.expose_mut())?;
    Ok(key)
}

/// A DEK wrapped under a KEK: `nonce ‖ ciphertext ‖ tag`, with the KEK version.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedDek {
    /// Version of the KEK (root key) that wrapped it.
    pub kek_version: u32,
    /// `nonce ‖ ciphertext ‖ tag`.
    pub bytes: Vec<u8>,
}

impl fmt::Debug for WrappedDek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "WrappedDek(kek v{}, {} bytes)",
            self.kek_version,
            self.bytes.len()
        )
    }
}

fn wrap_aad(subject: &SubjectId, kek_version: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(DEK_WRAP_AAD.len() + 20);
    aad.extend_from_slice(DEK_WRAP_AAD);
    aad.extend_from_slice(subject.as_bytes());
    aad.extend_from_slice(&kek_version.to_be_bytes());
    aad
}

/// Draws a fresh random DEK (version 1: DEKs are never re-derived).
pub fn generate_dek(rng: &dyn Rng) -> Result<DataKey, KeyError> {
    let mut bytes = [0u8; KEY_LEN];
    rng.fill(&mut bytes)?;
    let dek = DataKey::from_bytes(bytes, 1);
    bytes.zeroize();
    Ok(dek)
}

/// Wraps `dek` for `subject` under `kek`. The subject id is bound in, so a
/// wrapped DEK copied to another subject does not unwrap.
pub fn wrap_dek(
    kek: &Kek,
    subject: &SubjectId,
    dek: &DataKey,
    rng: &dyn Rng,
) -> Result<WrappedDek, KeyError> {
    let nonce = crypto::random_nonce(rng)?;
    let ct = crypto::aead_seal(
        kek.expose(),
        &nonce,
        &wrap_aad(subject, kek.version()),
        dek.expose(),
    )?;
    let mut bytes = Vec::with_capacity(NONCE_LEN + ct.len());
    bytes.extend_from_slice(&nonce);
    bytes.extend_from_slice(&ct);
    Ok(WrappedDek {
        kek_version: kek.version(),
        bytes,
    })
}

/// Unwraps a DEK wrapped by [`wrap_dek`].
pub fn unwrap_dek(
    kek: &Kek,
    subject: &SubjectId,
    wrapped: &WrappedDek,
) -> Result<DataKey, KeyError> {
    if kek.version() != wrapped.kek_version {
        return Err(KeyError::Unwrap);
    }
    let (nonce, ct) = wrapped
        .bytes
        .split_first_chunk::<NONCE_LEN>()
        .ok_or(KeyError::Unwrap)?;
    let pt = crypto::aead_open(kek.expose(), nonce, &wrap_aad(subject, kek.version()), ct)
        .map_err(|_| KeyError::Unwrap)?;
    // Straight from the wiped plaintext buffer into the key's own storage:
    // no copy of the DEK is left on the stack.
    DataKey::from_slice(&pt, 1).ok_or(KeyError::Unwrap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> StaticKeyProvider {
        StaticKeyProvider::new([
            RootKey::from_bytes([1; 32], 1),
            RootKey::from_bytes([2; 32], 2),
        ])
        .unwrap()
    }

    #[test]
    fn rotation_stops_at_the_last_version() {
        let last = StaticKeyProvider::new([RootKey::from_bytes([1; 32], u32::MAX)]).unwrap();
        assert!(last.rotated(&crate::SystemRng::default()).is_err());
        assert_eq!(last.root_key(u32::MAX).unwrap().expose(), &[1; 32]);
    }

    #[test]
    fn key_file_round_trip() {
        let p = provider();
        let text = p.to_key_file();
        let q = StaticKeyProvider::parse(&text).unwrap();
        assert_eq!(q.current_version(), 2);
        assert_eq!(q.root_key(1).unwrap().expose(), &[1; 32]);
    }

    #[test]
    fn key_file_errors_do_not_echo_key_text() {
        let bad = format!("{KEY_FILE_HEADER}\n1 {}\n", "zz".repeat(32));
        let err = StaticKeyProvider::parse(&bad).unwrap_err().to_string();
        assert!(!err.contains("zz"), "{err}");
        assert!(StaticKeyProvider::parse("nope").is_err());
        assert!(StaticKeyProvider::parse(KEY_FILE_HEADER).is_err());
        let dup = format!("{KEY_FILE_HEADER}\n1 {h}\n1 {h}\n", h = "00".repeat(32));
        assert_eq!(
            StaticKeyProvider::parse(&dup).unwrap_err(),
            KeyError::Malformed("duplicate key version")
        );
    }

    #[test]
    fn key_file_pins_and_retired_keys() {
        let text = format!(
            "{KEY_FILE_HEADER}\n2 {k}\n3 {k}\ntoken-domain logs 2\nretired 1 audit-signing {p}\n",
            k = "11".repeat(32),
            p = "22".repeat(32)
        );
        let p = StaticKeyProvider::parse(&text).unwrap();
        assert_eq!(p.versions(), vec![2, 3]);
        assert_eq!(p.token_domain_version("logs"), Some(2));
        assert_eq!(p.token_domain_version("other"), None);
        assert_eq!(p.retired_public_keys().len(), 1);
        let h = KeyHierarchy::new(Box::new(p.clone()));
        assert_eq!((h.token_version("logs"), h.token_version("other")), (2, 3));
        assert_eq!(
            h.retired_public_keys(RetiredPurpose::AuditSigning)[0].version,
            1
        );
        let again = StaticKeyProvider::parse(&p.to_key_file()).unwrap();
        assert_eq!(again.token_domains(), p.token_domains());
        assert_eq!(
            StaticKeyProvider::parse(&format!("{text}retired 1 shred-log {}\n", "33".repeat(32)))
                .unwrap()
                .retired_shred_log_key(1)
                .map(|k| *k.expose()),
            Some([0x33; 32])
        );
        // Cross-line rules.
        for bad in [
            text.replace("token-domain logs 2", "token-domain logs 9"),
            text.replace("retired 1", "retired 2"),
            text.replace("token-domain logs 2", "token-domain LOGS 2"),
            format!("{text}token-domain logs 3\n"),
            text.replace("audit-signing", "signing"),
            format!("{text}retired 2 shred-log {}\n", "33".repeat(32)),
            format!("{text}retired 1 shred-log {}\n", "3".repeat(63)),
            format!(
                "{text}retired 1 shred-log {k}\nretired 1 shred-log {k}\n",
                k = "33".repeat(32)
            ),
        ] {
            assert!(StaticKeyProvider::parse(&bad).is_err(), "{bad}");
        }
        // Retiring: never the current version; the public keys are kept.
        assert!(p.without_version(3, vec![]).is_err());
        assert!(p.without_version(2, vec![]).is_err(), "logs is pinned to 2");
        let q = p.with_token_domain("logs", 3).unwrap();
        let r = q.without_version(2, vec![]).unwrap();
        assert_eq!(r.versions(), vec![3]);
        // Rotating pins the listed domains where they are.
        let rng = crate::SystemRng::default();
        let s = r
            .clone_pins_then_rotate(&["fresh".to_owned()], &rng)
            .unwrap();
        assert_eq!(s.current_version(), 4);
        assert_eq!(s.token_domain_version("fresh"), Some(3));
    }

    #[test]
    fn labels_and_versions_separate_keys() {
        let h = KeyHierarchy::new(Box::new(provider()));
        let kek1 = h.kek(1).unwrap();
        let kek2 = h.kek(2).unwrap();
        let audit1 = h.audit_key(1).unwrap();
        assert_ne!(
            h.token_key("logs", 1).unwrap().expose(),
            h.token_key("logz", 1).unwrap().expose()
        );
        assert_ne!(
            h.token_key("logs", 1).unwrap().expose(),
            h.token_key("logs", 2).unwrap().expose()
        );
        assert_ne!(kek1.expose(), kek2.expose());
        assert_ne!(kek1.expose(), audit1.expose());
        let signing1 = h.audit_signing_seed(1).unwrap();
        assert_ne!(signing1.expose(), audit1.expose());
        assert_ne!(signing1.expose(), h.audit_signing_seed(2).unwrap().expose());
        assert_eq!(h.kek(1).unwrap().expose(), kek1.expose());
        assert_eq!(h.kek(9).unwrap_err(), KeyError::UnknownVersion(9));
    }

    /// Vector computed with Python's `hmac`/`hashlib` HKDF; also in
    /// docs/keys.md.
    #[test]
    fn audit_reveal_key_known_answer() {
        let h = KeyHierarchy::new(Box::new(provider()));
        let k = h.audit_reveal_key(1).unwrap();
        assert_eq!(
            hex::encode(k.expose()),
            "9a38d74b3bc7321fcdc2ac5c7c8b1399fe034952736e0818cea37beb604c824c"
        );
        assert_ne!(k.expose(), h.audit_key(1).unwrap().expose());
        assert_eq!(
            hex::encode(crate::tlog::leaf::reveal_tag(&k, &[1; 16], &[2; 16])),
            "b08651f7a2886c61e7f18066178260e8"
        );
    }

    /// Vector cross-checked with Python (`hmac`/`hashlib` HKDF and
    /// `cryptography`'s `derive_private_key`); also in docs/keys.md.
    #[test]
    fn issuer_key_known_answer() {
        let h = KeyHierarchy::new(Box::new(provider()));
        let k = h.issuer_key(1).unwrap();
        assert_eq!(k.kid(), "re45oNZ7aBpzR-cOdFYVc9A__MSYm8l7fSYsa91YBpo");
        let jwk = k.jwk().to_json();
        assert_eq!(jwk["x"], "sj1QCYgnF_uDUJSMzIxpf9gVfHlxK0eDHSGTL9HtjJ8");
        assert_eq!(jwk["y"], "JZwIzs8zmcI8DEJRuRaD-lFvLwV-RsQtpqQ1aUYwGZo");
        assert_ne!(h.issuer_key(2).unwrap().kid(), k.kid());
        assert!(!format!("{k:?}").contains("299e01"));
    }

    #[test]
    fn wrapped_dek_is_bound_to_subject_and_version() {
        let rng = crate::SystemRng::default();
        let h = KeyHierarchy::new(Box::new(provider()));
        let kek = h.kek(1).unwrap();
        let s1 = SubjectId::from_bytes([1; 16]);
        let s2 = SubjectId::from_bytes([2; 16]);
        let dek = generate_dek(&rng).unwrap();
        let w = wrap_dek(&kek, &s1, &dek, &rng).unwrap();
        assert_eq!(unwrap_dek(&kek, &s1, &w).unwrap().expose(), dek.expose());
        assert_eq!(unwrap_dek(&kek, &s2, &w).unwrap_err(), KeyError::Unwrap);
        assert_eq!(
            unwrap_dek(&h.kek(2).unwrap(), &s1, &w).unwrap_err(),
            KeyError::Unwrap
        );
        let mut bad = w.clone();
        bad.bytes[20] ^= 1;
        assert_eq!(unwrap_dek(&kek, &s1, &bad).unwrap_err(), KeyError::Unwrap);
    }
}
