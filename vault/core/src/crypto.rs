//! The project's only wrappers around its cryptographic primitives.
//!
//! One implementation per job: AES-256-GCM from `aes-gcm`, HKDF-SHA256
//! from `hkdf`, HMAC-SHA256 and SHA-256 from `ring`. Everything else in the
//! vault calls these functions, and the known-answer tests (Wycheproof)
//! exercise exactly these functions. One exception: the HPKE seal
//! (`consent::release`) runs RFC 9180's labeled HKDF steps on `hkdf`
//! itself, and its P-256 Diffie-Hellman is `ring`'s, while opening (for
//! partners and tests) is the `hpke` crate's on `p256`; the reason and the
//! checks are written there.
//!
//! It must never bring in a second implementation of a primitive, compare
//! a MAC or tag with `==` (use [`ct_eq`] or [`hmac_sha256_verify`]), or
//! print key bytes. The clock and the RNG are traits ([`Clock`], [`Rng`])
//! so that callers pass them in; [`SystemRng`] is for the binary only.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use ring::{digest, hmac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// AES-GCM nonce length.
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// SHA-256 / HMAC-SHA256 output length.
pub const HASH_LEN: usize = 32;

/// Errors from the cryptographic wrappers. They carry no key or data bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// AEAD authentication failed: wrong key, or altered data or header.
    #[error("authentication failed")]
    Authentication,
    /// An input had an unusable length (for example an HKDF output over 8160 bytes).
    #[error("invalid length")]
    InvalidLength,
    /// The random number generator failed.
    #[error("random number generator failure")]
    Rng,
}

/// Source of cryptographically secure randomness, passed in as a parameter.
pub trait Rng: Send + Sync {
    /// Fills `buf` with random bytes.
    fn fill(&self, buf: &mut [u8]) -> Result<(), CryptoError>;

    /// The same source as `ring` sees it, for the `ring` operations that
    /// draw their randomness themselves (the HPKE seal's ephemeral key).
    /// `ring` lets no one else implement its trait, so a source that is not
    /// `ring`'s (a fixed one in a test) answers `None`, and those
    /// operations refuse rather than fall back to the OS's source behind
    /// the caller's back.
    fn ring(&self) -> Option<&dyn ring::rand::SecureRandom> {
        None
    }
}

/// The operating system's CSPRNG (through `ring`).
#[derive(Debug)]
pub struct SystemRng(ring::rand::SystemRandom);

impl Default for SystemRng {
    fn default() -> Self {
        Self(ring::rand::SystemRandom::new())
    }
}

impl Rng for SystemRng {
    fn fill(&self, buf: &mut [u8]) -> Result<(), CryptoError> {
        ring::rand::SecureRandom::fill(&self.0, buf).map_err(|_| CryptoError::Rng)
    }

    fn ring(&self) -> Option<&dyn ring::rand::SecureRandom> {
        Some(&self.0)
    }
}

/// Source of wall-clock time, passed in as a parameter.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_millis(&self) -> i64;
}

impl std::fmt::Debug for dyn Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

impl std::fmt::Debug for dyn Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rng")
    }
}

/// SHA-256 over the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> [u8; HASH_LEN] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// HMAC-SHA256 of the concatenation of `parts` under `key`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; HASH_LEN] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// Verifies a whole (32-byte) HMAC-SHA256 tag in constant time. The vault
/// writes only whole tags, so a shorter one is refused: accepting a
/// truncated tag would let a database writer store a 16-byte MAC and
/// halve the margin of every check reading it.
pub fn hmac_sha256_verify(key: &[u8], msg: &[u8], tag: &[u8]) -> bool {
    tag.len() == HASH_LEN && ct_eq(&hmac_sha256(key, &[msg]), tag)
}

/// Constant-time equality of two byte strings (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// HKDF-SHA256 (RFC 5869): extract with `salt`, expand with `info` into `okm`.
pub fn hkdf_sha256(
    salt: &[u8],
    ikm: &[u8],
    info: &[u8],
    okm: &mut [u8],
) -> Result<(), CryptoError> {
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, okm)
        .map_err(|_| CryptoError::InvalidLength)
}

/// AES-256-GCM seal: returns `ciphertext || tag`.
pub fn aead_seal(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let cipher = Aes256Gcm::new(key.into());
    cipher
        .encrypt(
            &Nonce::from(*nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| CryptoError::InvalidLength)
}

/// AES-256-GCM open of `ciphertext || tag`. The plaintext is wiped on drop.
pub fn aead_open(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ciphertext_and_tag: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if ciphertext_and_tag.len() < TAG_LEN {
        return Err(CryptoError::Authentication);
    }
    let cipher = Aes256Gcm::new(key.into());
    cipher
        .decrypt(
            &Nonce::from(*nonce),
            Payload {
                msg: ciphertext_and_tag,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Authentication)
}

/// Draws a fresh random nonce.
pub fn random_nonce(rng: &dyn Rng) -> Result<[u8; NONCE_LEN], CryptoError> {
    let mut n = [0u8; NONCE_LEN];
    rng.fill(&mut n)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_aad_binding() {
        let key = [7u8; 32];
        let nonce = [1u8; NONCE_LEN];
        let ct = aead_seal(&key, &nonce, b"hdr", b"secret").unwrap();
        assert_eq!(
            &aead_open(&key, &nonce, b"hdr", &ct).unwrap()[..],
            b"secret"
        );
        assert_eq!(
            aead_open(&key, &nonce, b"hdX", &ct),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            aead_open(&key, &nonce, b"hdr", &ct[..3]),
            Err(CryptoError::Authentication)
        );
    }

    #[test]
    fn ct_eq_compares_content_and_length() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
