//! The release seal: HPKE (RFC 9180, base mode, DHKEM(P-256, HKDF-SHA256),
//! HKDF-SHA256, AES-256-GCM) of a release's plaintext to the partner's
//! registered release key, bound to the consent id and the subject.
//!
//! HPKE base mode encrypts but does not authenticate the sender: anyone
//! holding the partner's public key (it is in the config) could seal a
//! forged release. So the vault also signs every release with Ed25519
//! ([`ReleaseSigner`], key `idvault/v1/release-signing`) over
//! [`release_signed_bytes`], and a partner opens only a release whose
//! signature verifies under a vault key it trusts ([`ReleaseVerifier`]).
//!
//! The vault only seals (with ring's ECDH and the RFC's key schedule; the
//! private `seal` says why); opening, for partners and tests, is the
//! `hpke` crate's. This module never prints key bytes of a [`ReleaseSecretKey`].

use std::fmt;

use hkdf::{Hkdf, HkdfExtract};
use hpke::{Deserializable, Serializable};
use ring::agreement::{self, ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use super::{ID_LEN, PUBLIC_KEY_LEN, RELEASE_INFO};
use crate::crypto::{CryptoError, NONCE_LEN, Rng, aead_seal};
use crate::subject::SubjectId;

/// A partner's registered release key (HPKE recipient public key).
#[derive(Clone, PartialEq, Eq)]
pub struct ReleasePublicKey(<hpke::kem::DhP256HkdfSha256 as hpke::Kem>::PublicKey);

impl fmt::Debug for ReleasePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReleasePublicKey({})", hex::encode(self.to_sec1()))
    }
}

impl ReleasePublicKey {
    /// From a SEC1 uncompressed point (65 bytes).
    pub fn from_sec1(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != PUBLIC_KEY_LEN || bytes.first() != Some(&0x04) {
            return None;
        }
        <hpke::kem::DhP256HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(bytes)
            .ok()
            .map(Self)
    }

    /// SEC1 uncompressed point.
    pub fn to_sec1(&self) -> Vec<u8> {
        self.0.to_bytes().to_vec()
    }
}

/// The HPKE suite: DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
type Kem = hpke::kem::DhP256HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::AesGcm256;

/// The HPKE associated data of a release: consent id then subject id (16
/// bytes each), so a sealed release cannot be passed off as another.
pub fn release_aad(consent_id: &[u8; ID_LEN], subject: &SubjectId) -> [u8; 32] {
    let mut aad = [0u8; 32];
    let (a, b) = aad.split_at_mut(ID_LEN);
    a.copy_from_slice(consent_id);
    b.copy_from_slice(subject.as_bytes());
    aad
}

/// RFC 9180 `suite_id` of the KEM (`"KEM" ‖ I2OSP(0x0010, 2)`) and of
/// the whole suite (`"HPKE" ‖ kem 0x0010 ‖ kdf 0x0001 ‖ aead 0x0002`).
const KEM_SUITE: &[u8] = b"KEM\x00\x10";
const HPKE_SUITE: &[u8] = b"HPKE\x00\x10\x00\x01\x00\x02";

/// `LabeledExtract(salt, label, ikm)` (RFC 9180 §4): the PRK, and HKDF
/// state to expand it.
fn labeled_extract(
    suite: &[u8],
    salt: &[u8],
    label: &[u8],
    ikm: &[u8],
) -> (Zeroizing<[u8; 32]>, Hkdf<Sha256>) {
    let mut e = HkdfExtract::<Sha256>::new(Some(salt));
    for part in [b"HPKE-v1".as_slice(), suite, label, ikm] {
        e.input_ikm(part);
    }
    let (mut prk, hk) = e.finalize();
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&prk);
    prk.as_mut_slice().zeroize();
    (out, hk)
}

/// `LabeledExpand(prk, label, info, L)` with `info` in parts, `L` =
/// `out.len()`.
fn labeled_expand(
    hk: &Hkdf<Sha256>,
    suite: &[u8],
    label: &[u8],
    info: &[&[u8]],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    let len = u16::try_from(out.len())
        .map_err(|_| CryptoError::InvalidLength)?
        .to_be_bytes();
    let mut parts: Vec<&[u8]> = vec![&len, b"HPKE-v1", suite, label];
    parts.extend_from_slice(info);
    hk.expand_multi_info(&parts, out)
        .map_err(|_| CryptoError::InvalidLength)
}

/// Seals `plaintext` to `pk` in HPKE base mode (RFC 9180 §5.1, single
/// shot: sequence number 0), with an ephemeral key ring draws from `rng`.
///
/// Why not the `hpke` crate, which opens (see [`ReleaseSecretKey::open`]):
/// its sender spends three P-256 scalar multiplications in the `p256`
/// crate (the ephemeral public key twice, then the Diffie-Hellman), and
/// moving them to ring's ECDH (the two it needs, several times faster)
/// cut a full consented release's CPU by about a fifth
/// (docs/BENCHMARKS.md, "The release seal on ring"). What remains is the
/// key schedule, a few lines of HKDF. The known-answer tests check the
/// output byte for byte against RFC 9180's vector, and every round-trip
/// test opens with the `hpke` crate, an independent implementation.
///
/// ring consumes the ephemeral key in the agreement, so one key can never
/// seal twice (that would reuse the AES-GCM key and nonce). The key comes
/// from `rng`'s `ring` view ([`Rng::ring`]); a source without one is
/// refused. The HKDF states are wiped on drop (`sha2`'s `zeroize`
/// feature, set in the workspace); not wiped: `ring`'s ephemeral scalar
/// and the shared x coordinate it hands to the closure, and the last
/// output block `hkdf` leaves on the stack (SECURITY.md, "Secrets in
/// memory").
fn seal(
    pk: &ReleasePublicKey,
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
    rng: &dyn Rng,
) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
    let eph = EphemeralPrivateKey::generate(&ECDH_P256, rng.ring().ok_or(CryptoError::Rng)?)
        .map_err(|_| CryptoError::Rng)?;
    let enc = eph
        .compute_public_key()
        .map_err(|_| CryptoError::InvalidLength)?
        .as_ref()
        .to_vec();
    let pk_rm = pk.to_sec1();
    // Encap: shared_secret = ExtractAndExpand(DH(skE, pkR), enc ‖ pkRm).
    let shared_secret = agreement::agree_ephemeral(
        eph,
        &UnparsedPublicKey::new(&ECDH_P256, pk_rm.as_slice()),
        |dh| {
            let (_, eae) = labeled_extract(KEM_SUITE, b"", b"eae_prk", dh);
            let mut ss = Zeroizing::new([0u8; 32]);
            labeled_expand(
                &eae,
                KEM_SUITE,
                b"shared_secret",
                &[&enc, &pk_rm],
                ss.as_mut(),
            )
            .map(|()| ss)
        },
    )
    // The recipient key was checked when it was parsed.
    .map_err(|_| CryptoError::InvalidLength)??;
    // KeySchedule(mode_base, shared_secret, info, psk = "", psk_id = "").
    let (psk_id_hash, _) = labeled_extract(HPKE_SUITE, b"", b"psk_id_hash", b"");
    let (info_hash, _) = labeled_extract(HPKE_SUITE, b"", b"info_hash", info);
    let context: [&[u8]; 3] = [&[0x00], psk_id_hash.as_ref(), info_hash.as_ref()];
    let (_, secret) = labeled_extract(HPKE_SUITE, shared_secret.as_ref(), b"secret", b"");
    let mut key = Zeroizing::new([0u8; 32]);
    labeled_expand(&secret, HPKE_SUITE, b"key", &context, key.as_mut())?;
    let mut base_nonce = [0u8; NONCE_LEN];
    labeled_expand(
        &secret,
        HPKE_SUITE,
        b"base_nonce",
        &context,
        &mut base_nonce,
    )?;
    // The first (and only) message: its nonce is the base nonce.
    let ct = aead_seal(&key, &base_nonce, aad, plaintext)?;
    Ok((enc, ct))
}

/// Seals a release's plaintext to the partner's key: returns `(enc, ciphertext)`.
/// Fails with [`CryptoError::Rng`] if `rng` has no `ring` view
/// ([`Rng::ring`]; [`crate::SystemRng`] has one).
pub fn seal_release(
    pk: &ReleasePublicKey,
    consent_id: &[u8; ID_LEN],
    subject: &SubjectId,
    plaintext: &[u8],
    rng: &dyn Rng,
) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
    seal(
        pk,
        RELEASE_INFO,
        &release_aad(consent_id, subject),
        plaintext,
        rng,
    )
}

/// The HPKE associated data of a sealed digital ID: the device request id
/// (16 bytes) then the device id, so a sealed credential answers exactly
/// one request of one device.
pub fn credential_aad(request_id: &[u8; ID_LEN], device_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(ID_LEN + device_id.len());
    aad.extend_from_slice(request_id);
    aad.extend_from_slice(device_id.as_bytes());
    aad
}

/// Seals an issued digital ID to the one-time key the phone put in its
/// signed request (docs/digital-id.md, "Issuing"): the wallet app relaying
/// the answer, and any TLS-terminating proxy, see only ciphertext.
/// Returns `(enc, ciphertext)`; fails with [`CryptoError::Rng`] if `rng`
/// has no `ring` view, as [`seal_release`] does.
pub fn seal_credential(
    pk: &ReleasePublicKey,
    request_id: &[u8; ID_LEN],
    device_id: &str,
    credential: &[u8],
    rng: &dyn Rng,
) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
    seal(
        pk,
        CREDENTIAL_SEAL_INFO,
        &credential_aad(request_id, device_id),
        credential,
        rng,
    )
}

/// HPKE `info` of a sealed digital ID.
pub const CREDENTIAL_SEAL_INFO: &[u8] = b"idvault/v1/credential-seal";

/// A partner's release private key (HPKE recipient).
pub struct ReleaseSecretKey(<Kem as hpke::Kem>::PrivateKey);

impl fmt::Debug for ReleaseSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReleaseSecretKey(redacted)")
    }
}

impl ReleaseSecretKey {
    /// From the 32-byte big-endian scalar.
    pub fn from_scalar(bytes: &[u8]) -> Option<Self> {
        <Kem as hpke::Kem>::PrivateKey::from_bytes(bytes)
            .ok()
            .map(Self)
    }

    /// RFC 9180 DeriveKeyPair (for known-answer tests).
    pub fn derive(ikm: &[u8]) -> Self {
        Self(<Kem as hpke::Kem>::derive_keypair(ikm).0)
    }

    /// The matching public key.
    pub fn public_key(&self) -> ReleasePublicKey {
        ReleasePublicKey(<Kem as hpke::Kem>::sk_to_pk(&self.0))
    }

    /// Opens an HPKE base-mode ciphertext.
    pub fn open(
        &self,
        enc: &[u8],
        info: &[u8],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc)
            .map_err(|_| CryptoError::Authentication)?;
        hpke::single_shot_open::<Aead, Kdf, Kem>(
            &hpke::OpModeR::Base,
            &self.0,
            &enc,
            info,
            ciphertext,
            aad,
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Authentication)
    }

    /// Opens a digital ID sealed by [`seal_credential`].
    pub fn open_credential(
        &self,
        request_id: &[u8; ID_LEN],
        device_id: &str,
        enc: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.open(
            enc,
            CREDENTIAL_SEAL_INFO,
            &credential_aad(request_id, device_id),
            ciphertext,
        )
    }

    /// Opens a release sealed by [`seal_release`].
    pub fn open_release(
        &self,
        consent_id: &[u8; ID_LEN],
        subject: &SubjectId,
        enc: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.open(
            enc,
            RELEASE_INFO,
            &release_aad(consent_id, subject),
            ciphertext,
        )
    }
}

/// Domain separation of the release signature.
const RELEASE_SIGNATURE_DST: &[u8] = b"idvault/v1/release-signature\x00";

/// Most bytes of a release request's nonce.
pub const MAX_RELEASE_NONCE: usize = 64;

/// The bytes the vault signs for one release: `"idvault/v1/release-signature"
/// ‖ 0x00 ‖ consent_id[16] ‖ subject[16] ‖ grant_hash[32] ‖ u16be(len) ‖
/// nonce ‖ u16be(len) ‖ receipt_id ‖ u16be(len) ‖ enc ‖ u32be(len) ‖
/// ciphertext`. Every field of the response a partner acts on is covered,
/// and the nonce of the request it answers; each variable field is
/// length-prefixed so no two responses share signed bytes.
pub fn release_signed_bytes(
    consent_id: &[u8; ID_LEN],
    subject: &SubjectId,
    grant_hash: &[u8; 32],
    nonce: &[u8],
    receipt_id: &str,
    enc: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if nonce.len() > MAX_RELEASE_NONCE {
        return Err(CryptoError::InvalidLength);
    }
    let short = |n: usize| u16::try_from(n).map_err(|_| CryptoError::InvalidLength);
    let long = |n: usize| u32::try_from(n).map_err(|_| CryptoError::InvalidLength);
    let mut out = Vec::with_capacity(
        RELEASE_SIGNATURE_DST.len() + 64 + 8 + receipt_id.len() + enc.len() + ciphertext.len(),
    );
    out.extend_from_slice(RELEASE_SIGNATURE_DST);
    out.extend_from_slice(consent_id);
    out.extend_from_slice(subject.as_bytes());
    out.extend_from_slice(grant_hash);
    out.extend_from_slice(&short(nonce.len())?.to_be_bytes());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&short(receipt_id.len())?.to_be_bytes());
    out.extend_from_slice(receipt_id.as_bytes());
    out.extend_from_slice(&short(enc.len())?.to_be_bytes());
    out.extend_from_slice(enc);
    out.extend_from_slice(&long(ciphertext.len())?.to_be_bytes());
    out.extend_from_slice(ciphertext);
    Ok(out)
}

/// Signs releases (Ed25519, RFC 8032) with the vault's release key.
pub struct ReleaseSigner(ring::signature::Ed25519KeyPair);

impl fmt::Debug for ReleaseSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ReleaseSigner({}, redacted)",
            hex::encode(self.public_key())
        )
    }
}

impl ReleaseSigner {
    /// From a 32-byte seed, e.g.
    /// [`crate::keys::KeyHierarchy::release_signing_seed`].
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, CryptoError> {
        ring::signature::Ed25519KeyPair::from_seed_unchecked(seed)
            .map(Self)
            .map_err(|_| CryptoError::InvalidLength)
    }

    /// The raw Ed25519 public key partners verify with.
    pub fn public_key(&self) -> [u8; 32] {
        use ring::signature::KeyPair as _;
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.public_key().as_ref());
        out
    }

    /// The signature (64 bytes) over `signed` ([`release_signed_bytes`]).
    pub fn sign(&self, signed: &[u8]) -> Vec<u8> {
        self.0.sign(signed).as_ref().to_vec()
    }
}

/// The vault release keys a partner trusts (one per root key version it
/// was given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseVerifier(Vec<[u8; 32]>);

impl ReleaseVerifier {
    /// From raw Ed25519 public keys.
    pub fn new(keys: Vec<[u8; 32]>) -> Self {
        Self(keys)
    }

    /// From text: one key per line as 64 hex digits (what `idvault keys
    /// release-public-key` prints); blank lines and `#` comments skipped.
    pub fn from_text(text: &str) -> Result<Self, &'static str> {
        let mut keys = Vec::new();
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let mut k = [0u8; 32];
            hex::decode_to_slice(line, &mut k)
                .map_err(|_| "a line is not a 64-hex-digit Ed25519 public key")?;
            keys.push(k);
        }
        if keys.is_empty() {
            return Err("no vault release key");
        }
        Ok(Self(keys))
    }

    /// The trusted keys.
    pub fn keys(&self) -> &[[u8; 32]] {
        &self.0
    }

    /// Whether `signature` over `signed` verifies under a trusted key.
    pub fn verify(&self, signed: &[u8], signature: &[u8]) -> bool {
        self.0.iter().any(|k| {
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, k)
                .verify(signed, signature)
                .is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SystemRng;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// Seals with the ephemeral key RFC 9180's DeriveKeyPair makes of
    /// `ikm_e` (as the vectors do), computed by the `hpke` crate and handed
    /// to ring as its randomness: ring draws exactly one 32-byte candidate
    /// and keeps it when it is a valid scalar, as these are.
    /// (The vectors' `enc` is the ephemeral public key, so matching it
    /// also proves the derived key is the vector's.)
    fn seal_with_ikm(
        pk: &ReleasePublicKey,
        ikm_e: &[u8],
        info: &[u8],
        aad: &[u8],
        plaintext: &[u8],
    ) -> (Vec<u8>, Vec<u8>) {
        let sk_e = <Kem as hpke::Kem>::derive_keypair(ikm_e).0.to_bytes();
        seal(pk, info, aad, plaintext, &Fixed::new(Some(&sk_e))).unwrap()
    }

    #[allow(deprecated)] // ring's fixed "random" source, for tests
    type FixedSlice<'a> = ring::test::rand::FixedSliceRandom<'a>;

    /// A fixed source: its `ring` view yields exactly these bytes, or it
    /// has no `ring` view at all.
    struct Fixed<'a>(Option<FixedSlice<'a>>);

    impl<'a> Fixed<'a> {
        fn new(bytes: Option<&'a [u8]>) -> Self {
            Self(bytes.map(|bytes| FixedSlice { bytes }))
        }
    }

    impl Rng for Fixed<'_> {
        fn fill(&self, buf: &mut [u8]) -> Result<(), CryptoError> {
            buf.fill(7);
            Ok(())
        }

        fn ring(&self) -> Option<&dyn ring::rand::SecureRandom> {
            self.0.as_ref().map(|r| r as &dyn ring::rand::SecureRandom)
        }
    }

    /// RFC 9180 test vector, mode 0 (base), DHKEM(P-256, HKDF-SHA256),
    /// HKDF-SHA256, AES-256-GCM (kem 0x0010, kdf 0x0001, aead 0x0002),
    /// first encryption.
    #[test]
    fn hpke_rfc9180_vector() {
        let info = h("4f6465206f6e2061204772656369616e2055726e");
        let ikm_e = h("a90d3417c3da9cb6c6ae19b4b5dd6cc9529a4cc24efb7ae0ace1f31887a8cd6c");
        let ikm_r = h("a0ce15d49e28bd47a18a97e147582d814b08cbe00109fed5ec27d1b4e9f6f5e3");
        let sk_rm = h("317f915db7bc629c48fe765587897e01e282d3e8445f79f27f65d031a88082b2");
        let pk_rm = h(
            "04abc7e49a4c6b3566d77d0304addc6ed0e98512ffccf505e6a8e3eb25c685136f853148544876de76c0f2ef99cdc3a05ccf5ded7860c7c021238f9e2073d2356c",
        );
        let enc = h(
            "04c06b4f6bebc7bb495cb797ab753f911aff80aefb86fd8b6fcc35525f3ab5f03e0b21bd31a86c6048af3cb2d98e0d3bf01da5cc4c39ff5370d331a4f1f7d5a4e0",
        );
        let aad = h("436f756e742d30");
        let pt = h("4265617574792069732074727574682c20747275746820626561757479");
        let ct = h(
            "58c61a45059d0c5704560e9d88b564a8b63f1364b8d1fcb3c4c6ddc1d291742465e902cd216f8908da49f8f96f",
        );
        // Key derivation and parsing.
        assert_eq!(
            ReleaseSecretKey::derive(&ikm_r).public_key().to_sec1(),
            pk_rm
        );
        let sk = ReleaseSecretKey::from_scalar(&sk_rm).unwrap();
        assert_eq!(sk.public_key().to_sec1(), pk_rm);
        let pk = ReleasePublicKey::from_sec1(&pk_rm).unwrap();
        // Seal with the vector's ephemeral key: byte-exact.
        let (e, c) = seal_with_ikm(&pk, &ikm_e, &info, &aad, &pt);
        assert_eq!(
            (e.as_slice(), c.as_slice()),
            (enc.as_slice(), ct.as_slice())
        );
        // Open, and refuse a changed aad, info or ciphertext.
        assert_eq!(sk.open(&enc, &info, &aad, &ct).unwrap().as_slice(), &pt[..]);
        assert!(sk.open(&enc, &info, b"Count-1", &ct).is_err());
        assert!(sk.open(&enc, b"other", &aad, &ct).is_err());
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert!(sk.open(&enc, &info, &aad, &bad).is_err());
    }

    #[test]
    fn release_round_trip_is_bound_to_consent_and_subject() {
        let rng = SystemRng::default();
        let sk = ReleaseSecretKey::derive(b"a partner release key seed, 32b!");
        let subject = SubjectId::generate(&rng).unwrap();
        let (enc, ct) =
            seal_release(&sk.public_key(), &[1; 16], &subject, b"fields", &rng).unwrap();
        assert_eq!(
            sk.open_release(&[1; 16], &subject, &enc, &ct)
                .unwrap()
                .as_slice(),
            b"fields"
        );
        assert!(sk.open_release(&[2; 16], &subject, &enc, &ct).is_err());
        let other = SubjectId::generate(&rng).unwrap();
        assert!(sk.open_release(&[1; 16], &other, &enc, &ct).is_err());
        assert!(ReleasePublicKey::from_sec1(&[4; 65]).is_none());
    }

    /// ring's seal against the `hpke` crate's open, over 24 keys and
    /// plaintext lengths (empty included), three aad lengths (empty
    /// included) and three infos (empty included); each seal has its own
    /// ephemeral key.
    #[test]
    fn rings_seal_opens_with_the_hpke_crate() {
        let system = SystemRng::default();
        for i in 0u8..24 {
            let sk = ReleaseSecretKey::derive(&[i; 32]);
            let pk = sk.public_key();
            let plain = vec![i; usize::from(i) * 97];
            let aad = vec![i; usize::from(i % 3) * 7];
            for info in [RELEASE_INFO, CREDENTIAL_SEAL_INFO, b""] {
                let (enc, ct) = seal(&pk, info, &aad, &plain, &system).unwrap();
                assert_eq!((enc.len(), ct.len()), (65, plain.len() + 16));
                assert_eq!(
                    sk.open(&enc, info, &aad, &ct).unwrap().as_slice(),
                    &plain[..]
                );
                let (enc2, ct2) = seal(&pk, info, &aad, &plain, &system).unwrap();
                assert_ne!((enc2, ct2), (enc, ct), "a fresh ephemeral key per seal");
            }
        }
    }

    /// A randomness source that never yields a valid scalar is an error,
    /// not a seal.
    #[test]
    fn no_valid_ephemeral_scalar_is_an_error() {
        let pk = ReleaseSecretKey::derive(&[9; 32]).public_key();
        let beyond_the_order = Fixed::new(Some(&[0xff; 32]));
        assert!(matches!(
            seal(&pk, RELEASE_INFO, b"", b"x", &beyond_the_order),
            Err(CryptoError::Rng)
        ));
        // A source `ring` cannot draw from is refused, not replaced by the
        // OS's behind the caller's back.
        assert!(matches!(
            seal(&pk, RELEASE_INFO, b"", b"x", &Fixed::new(None)),
            Err(CryptoError::Rng)
        ));
    }

    /// The release seal vector published in docs/consent.md ("Test
    /// vectors"); the device half is checked in idvault-client.
    #[test]
    fn doc_release_vector() {
        use idvault_proto::v1 as pb;
        use prost::Message;
        // The release seal, with a fixed partner key and ephemeral seed.
        let partner = ReleaseSecretKey::from_scalar(&[0x02; 32]).unwrap();
        let pk = ReleasePublicKey::from_sec1(&partner.public_key().to_sec1()).unwrap();
        let plain = pb::ReleasedFields {
            fields: vec![
                pb::Field {
                    name: "email".into(),
                    value: "amelie.ol@example.org".into(),
                },
                pb::Field {
                    name: "given_name".into(),
                    value: "Amélie".into(),
                },
            ],
        }
        .encode_to_vec();
        let cid: [u8; 16] = (0u8..16).collect::<Vec<u8>>().try_into().unwrap();
        let subject = SubjectId::parse("6f1c2b9e-8a41-4d3c-9b7e-2a5f0c1d3e4f").unwrap();
        let aad = release_aad(&cid, &subject);
        let (enc, ct) = seal_with_ikm(&pk, &[0x03; 32], RELEASE_INFO, &aad, &plain);
        assert_eq!(
            hex::encode(pk.to_sec1()),
            "04550f471003f3df97c3df506ac797f6721fb1a1fb7b8f6f83d224498a65c88e24136093d7012e509a73715cbd0b00a3cc0ff4b5c01b3ffa196ab1fb327036b8e6"
        );
        assert_eq!(
            hex::encode(&plain),
            "0a1e0a05656d61696c1215616d656c69652e6f6c406578616d706c652e6f72670a150a0a676976656e5f6e616d651207416dc3a96c6965"
        );
        assert_eq!(
            hex::encode(aad),
            "000102030405060708090a0b0c0d0e0f6f1c2b9e8a414d3c9b7e2a5f0c1d3e4f"
        );
        assert_eq!(
            hex::encode(&enc),
            "04d93c1e7accd3e5e7f975c204a420c269e75ae1cdd7c9272e9764f49fa5a7d9a96a340c2555220402f66b4ec409f0cf904e9ba492a7151a7c412d421efba0b27a"
        );
        assert_eq!(
            hex::encode(&ct),
            "9832c71c4f87832ad95f680b9965b937318531630aa07a779b04da1acb4ea1f4fd2a096e06b7de4249031f9925b7099178d6251a8cd01e9f40daf7e71ade5f22d7d70611398c10"
        );
        assert_eq!(
            partner
                .open_release(&cid, &subject, &enc, &ct)
                .unwrap()
                .as_slice(),
            &plain[..]
        );
    }

    /// Known answer for the release signature (Ed25519 is deterministic):
    /// fixed seed and response fields; docs/consent.md lists the same
    /// vector for partners in other languages.
    #[test]
    fn release_signature_vector() {
        let signer = ReleaseSigner::from_seed(&[0x11; 32]).unwrap();
        let subject = SubjectId::from_slice(&[0x22; 16]).unwrap();
        let signed = release_signed_bytes(
            &[0x33; 16],
            &subject,
            &[0x44; 32],
            &[0x66; 16],
            "rcp_0123",
            &[0x04; 65],
            &[0x55; 20],
        )
        .unwrap();
        let sig = signer.sign(&signed);
        assert_eq!(
            (hex::encode(signer.public_key()), hex::encode(&sig)),
            (RELEASE_PUBLIC.to_owned(), RELEASE_SIGNATURE.to_owned()),
            "update docs/consent.md with the new vector"
        );
        let v = ReleaseVerifier::from_text(&format!("# vault\n{}\n", RELEASE_PUBLIC)).unwrap();
        assert!(v.verify(&signed, &sig));
        let mut other = signed.clone();
        *other.last_mut().unwrap() ^= 1;
        assert!(!v.verify(&other, &sig));
        assert!(!ReleaseVerifier::new(vec![[9; 32]]).verify(&signed, &sig));
        assert!(ReleaseVerifier::from_text("# none\n").is_err());
        assert!(ReleaseVerifier::from_text("zz").is_err());
    }

    const RELEASE_PUBLIC: &str = "d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737";
    const RELEASE_SIGNATURE: &str = "16b07b27876ce578203c7c8fafa5471786971253bb93ba5176eefdb9d7c3c2f8bbb7f650629bff37d93ce32d8751b9af1febecaf1357abe1cf18937d8a9a7b0c";
}
