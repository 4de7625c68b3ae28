//! Typed, fixed-size secrets that are wiped on drop and never printed.
//!
//! Each key purpose is its own type (`Secret<RootKeyMaterial>` cannot be
//! passed where a `Secret<DataKeyMaterial>` is expected). `Debug` prints the
//! purpose and the version, never the bytes. Reading the bytes is an
//! explicit [`Secret::expose`] call, so every use is greppable.

use std::fmt;
use std::marker::PhantomData;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of every symmetric key in the vault (256 bits).
pub const KEY_LEN: usize = 32;

/// Names a key purpose; implemented by zero-sized marker types.
pub trait KeyPurpose {
    /// Human-readable purpose printed by `Debug`.
    const NAME: &'static str;
}

macro_rules! purposes {
    ($($(#[$m:meta])* $ty:ident => $name:literal;)*) => {$(
        $(#[$m])*
        #[derive(Debug, Clone, Copy)]
        pub enum $ty {}
        impl KeyPurpose for $ty { const NAME: &'static str = $name; }
    )*};
}

purposes! {
    /// The root key held by a [`crate::keys::KeyProvider`].
    RootKeyMaterial => "root-key";
    /// A key-encryption key: wraps per-subject data keys.
    KekMaterial => "key-encryption-key";
    /// A per-subject data encryption key (DEK).
    DataKeyMaterial => "data-key";
    /// The audit-log MAC key.
    AuditKeyMaterial => "audit-mac-key";
    /// The key of the tags that stand for revealed subjects in match
    /// records (see [`crate::tlog::leaf::reveal_tag`]).
    AuditRevealMaterial => "audit-reveal-key";
    /// The Ed25519 seed the audit transparency log signs checkpoints with.
    AuditSigningMaterial => "audit-signing-seed";
    /// The Ed25519 seed the vault signs consented releases with.
    ReleaseSigningMaterial => "release-signing-seed";
    /// The Ed25519 seed the vault signs deletion receipts with.
    ReceiptSigningMaterial => "receipt-signing-seed";
    /// A token domain's HMAC key.
    TokenKeyMaterial => "token-key";
    /// A partner's cross-reference blind-index key.
    XrefIndexMaterial => "xref-index-key";
    /// The key sealing linked identifiers for detokenization.
    XrefSealMaterial => "xref-seal-key";
    /// The key partners seal identity-bridge identifiers with.
    BridgeSealMaterial => "bridge-seal-key";
    /// A blind-matching index key (per match domain, field and variant kind).
    MatchIndexMaterial => "match-index-key";
    /// The key MACing rows that authorise something (see [`crate::rowmac`]).
    RowMacMaterial => "row-mac-key";
    /// The P-256 scalar the vault signs digital IDs with (see
    /// [`crate::sdjwt`]).
    IssuerKeyMaterial => "issuer-key";
    /// The key of the permutation that places credentials in a status list
    /// (see [`crate::sdjwt::status`]).
    StatusIndexMaterial => "status-index-key";
    /// The key MACing one-time transaction codes (see
    /// [`crate::transaction`]).
    TransactionCodeMaterial => "transaction-code-key";
    /// The key MACing deletion journal entries (see [`crate::shred`]).
    ShredLogMaterial => "shred-log-key";
}

/// A 256-bit secret of purpose `P` with a key version.
///
/// The bytes live on the heap, in one place for the secret's life: moving
/// a `Secret` (returning it, storing it) moves a pointer, not the key, so
/// no stale copies are left in old stack frames; the one copy is wiped on
/// drop.
pub struct Secret<P: KeyPurpose> {
    bytes: Box<[u8; KEY_LEN]>,
    version: u32,
    _purpose: PhantomData<P>,
}

impl<P: KeyPurpose> Secret<P> {
    /// Wraps raw key bytes. The caller's copy should be zeroized (or use
    /// [`Self::from_slice`], which leaves none).
    pub fn from_bytes(bytes: [u8; KEY_LEN], version: u32) -> Self {
        Self {
            bytes: Box::new(bytes),
            version,
            _purpose: PhantomData,
        }
    }

    /// Copies key bytes straight into the secret's own storage (no
    /// intermediate array); `None` unless `bytes` is [`KEY_LEN`] long.
    pub fn from_slice(bytes: &[u8], version: u32) -> Option<Self> {
        if bytes.len() != KEY_LEN {
            return None;
        }
        let mut s = Self {
            bytes: Box::new([0u8; KEY_LEN]),
            version,
            _purpose: PhantomData,
        };
        s.bytes.copy_from_slice(bytes);
        Some(s)
    }

    /// The key's version number.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Exposes the key bytes to a cryptographic primitive. Never log them.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// The key's storage, for a derivation to write into in place.
    pub(crate) fn expose_mut(&mut self) -> &mut [u8; KEY_LEN] {
        &mut self.bytes
    }
}

impl<P: KeyPurpose> Clone for Secret<P> {
    fn clone(&self) -> Self {
        Self {
            bytes: Box::new(*self.bytes),
            version: self.version,
            _purpose: PhantomData,
        }
    }
}

impl<P: KeyPurpose> Drop for Secret<P> {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl<P: KeyPurpose> ZeroizeOnDrop for Secret<P> {}

impl<P: KeyPurpose> fmt::Debug for Secret<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret<{}>(v{}, redacted)", P::NAME, self.version)
    }
}

/// The root key.
pub type RootKey = Secret<RootKeyMaterial>;
/// A key-encryption key.
pub type Kek = Secret<KekMaterial>;
/// A subject's data key.
pub type DataKey = Secret<DataKeyMaterial>;
/// The audit MAC key.
pub type AuditKey = Secret<AuditKeyMaterial>;
/// The key of revealed-subject tags in match records.
pub type AuditRevealKey = Secret<AuditRevealMaterial>;
/// The audit checkpoint signing seed (an Ed25519 private key).
pub type AuditSigningSeed = Secret<AuditSigningMaterial>;
/// The release signing seed (an Ed25519 private key).
pub type ReleaseSigningSeed = Secret<ReleaseSigningMaterial>;
/// The deletion receipt signing seed (an Ed25519 private key).
pub type ReceiptSigningSeed = Secret<ReceiptSigningMaterial>;
/// A candidate digital-ID issuer scalar (P-256), see
/// [`crate::keys::KeyHierarchy::issuer_key`].
pub type IssuerKeySeed = Secret<IssuerKeyMaterial>;
/// A token domain key.
pub type TokenKey = Secret<TokenKeyMaterial>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_slice_takes_exactly_a_key() {
        let k = DataKey::from_slice(&[7; KEY_LEN], 3).unwrap();
        assert_eq!((k.expose(), k.version()), (&[7; KEY_LEN], 3));
        assert!(DataKey::from_slice(&[7; KEY_LEN - 1], 1).is_none());
        assert!(DataKey::from_slice(&[7; KEY_LEN + 1], 1).is_none());
        let c = k.clone();
        assert_eq!(c.expose(), k.expose());
    }

    #[test]
    fn debug_never_prints_bytes() {
        let k = RootKey::from_bytes([0xAB; KEY_LEN], 3);
        let s = format!("{k:?}");
        assert_eq!(s, "Secret<root-key>(v3, redacted)");
        assert!(!s.to_lowercase().contains("ab"));
    }
}
