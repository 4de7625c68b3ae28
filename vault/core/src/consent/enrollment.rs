//! Device enrollment: the proof of possession a new device key gives, and
//! the one-time enrollment codes that tie it to a subject.
//!
//! Enrollment codes are secrets: they are wiped on drop, never printed, and
//! only their hash is stored. This module never decodes wire bytes itself
//! (the `wire` module does) and never draws randomness except from the
//! [`Rng`] it is given.

use std::fmt;

use zeroize::Zeroizing;

use super::{DevicePublicKey, ENROLL_CONTEXT, Refusal};
use crate::crypto::{CryptoError, HASH_LEN, Rng, sha256};
use crate::subject::SubjectId;

/// A verified device enrollment.
pub struct Enrollment {
    /// Subject to enroll to.
    pub subject: SubjectId,
    /// The enrollment code as typed (normalised by [`enrollment_code_hash`]).
    pub code: Zeroizing<String>,
    /// The new device key.
    pub key: DevicePublicKey,
}

impl fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Enrollment({:?}, code redacted, {:?})",
            self.subject, self.key
        )
    }
}

/// A decoded enrollment whose signature has not been checked yet: the
/// fields of `idvault.v1.DeviceEnrollment`, as read from the signed bytes.
pub(crate) struct UnverifiedEnrollment {
    /// Subject id, as sent.
    pub(crate) subject_id: String,
    /// The enrollment code, as typed.
    pub(crate) code: Zeroizing<String>,
    /// SEC1 public key, as sent.
    pub(crate) public_key: Vec<u8>,
}

/// Checks a decoded enrollment's proof of possession: the key it carries
/// signed `bytes`, the exact bytes it was decoded from (the key has to be
/// read from the message first; the message is still refused unless those
/// bytes verify). [`crate::wire::verify_enrollment`] decodes and calls this.
pub(crate) fn check_enrollment(
    e: UnverifiedEnrollment,
    bytes: &[u8],
    sig: &[u8],
) -> Result<Enrollment, Refusal> {
    let key = DevicePublicKey::from_sec1(&e.public_key)?;
    key.verify(ENROLL_CONTEXT, bytes, sig)?;
    let subject = SubjectId::parse(&e.subject_id).map_err(|_| Refusal::Malformed)?;
    Ok(Enrollment {
        subject,
        code: e.code,
        key,
    })
}

/// Characters of an enrollment code (Crockford base32: no I, L, O, U).
const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters in an enrollment code: 100 bits.
const CODE_CHARS: usize = 20;

/// A fresh enrollment code, `XXXXX-XXXXX-XXXXX-XXXXX` (100 random bits).
pub fn generate_enrollment_code(rng: &dyn Rng) -> Result<Zeroizing<String>, CryptoError> {
    let mut raw = Zeroizing::new([0u8; CODE_CHARS]);
    rng.fill(raw.as_mut())?;
    let mut s = Zeroizing::new(String::with_capacity(CODE_CHARS + 3));
    for (i, b) in raw.iter().enumerate() {
        if i > 0 && i % 5 == 0 {
            s.push('-');
        }
        let c = CODE_ALPHABET
            .get(usize::from(b & 31))
            .copied()
            .unwrap_or(b'0');
        s.push(char::from(c));
    }
    Ok(s)
}

/// What is stored for an enrollment code: SHA-256 of its normalised form
/// (upper case, no separators), so a database reader cannot enroll.
pub fn enrollment_code_hash(code: &str) -> [u8; HASH_LEN] {
    // Crockford decoding: case-insensitive, I and L read as 1, O as 0.
    let norm: Zeroizing<String> = Zeroizing::new(
        code.chars()
            .filter(|c| !matches!(c, '-' | ' '))
            .map(|c| match c.to_ascii_uppercase() {
                'I' | 'L' => '1',
                'O' => '0',
                c => c,
            })
            .collect(),
    );
    sha256(&[b"idvault/v1/enrollment-code\0", norm.as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SystemRng;

    #[test]
    fn enrollment_codes() {
        let code = generate_enrollment_code(&SystemRng::default()).unwrap();
        assert_eq!(code.len(), 23);
        assert!(code.split('-').all(|p| p.len() == 5));
        let typed = code.replace('-', " ").to_lowercase();
        assert_eq!(enrollment_code_hash(&code), enrollment_code_hash(&typed));
        assert_ne!(
            enrollment_code_hash(&code),
            enrollment_code_hash("00000-00000-00000-00000")
        );
        assert_eq!(
            enrollment_code_hash("1O1L0-00000-00000-00000"),
            enrollment_code_hash("10110-00000-00000-0000o")
        );
    }

    #[test]
    fn enrollments_verify_with_the_key_they_carry() {
        use idvault_proto::v1 as pb;
        use p256::ecdsa::signature::MultipartSigner;
        use p256::ecdsa::{Signature, SigningKey};
        use prost::Message;

        let sign = |k: &SigningKey, msg: &[u8]| -> Vec<u8> {
            let sig: Signature = k.try_multipart_sign(&[ENROLL_CONTEXT, msg]).unwrap();
            sig.normalize_s().to_bytes().to_vec()
        };
        let k = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let other = SigningKey::from_slice(&[8u8; 32]).unwrap();
        let sec1 = k.verifying_key().to_sec1_point(false).as_bytes().to_vec();
        let subject = "6f1c2b9e-8a41-4d3c-9b7e-2a5f0c1d3e4f";
        let enrollment = |subject_id: &str, public_key: Vec<u8>| {
            pb::DeviceEnrollment {
                subject_id: subject_id.into(),
                enrollment_code: "ABCDE-FGHJK-MNPQR-STVWX".into(),
                public_key,
            }
            .encode_to_vec()
        };
        let bytes = enrollment(subject, sec1.clone());
        let e = crate::wire::verify_enrollment(&bytes, &sign(&k, &bytes)).unwrap();
        assert_eq!(e.subject, SubjectId::parse(subject).unwrap());
        assert_eq!(e.code.as_str(), "ABCDE-FGHJK-MNPQR-STVWX");
        assert_eq!(e.key.to_sec1(), sec1);
        // The code never shows in Debug output.
        assert!(!format!("{e:?}").contains("ABCDE"));
        // Signed by another key, or the signature of other bytes.
        assert_eq!(
            crate::wire::verify_enrollment(&bytes, &sign(&other, &bytes)).map(|_| ()),
            Err(Refusal::BadSignature)
        );
        let moved = enrollment("7f1c2b9e-8a41-4d3c-9b7e-2a5f0c1d3e4f", sec1.clone());
        assert_eq!(
            crate::wire::verify_enrollment(&moved, &sign(&k, &bytes)).map(|_| ()),
            Err(Refusal::BadSignature)
        );
        // A bad key, a bad subject (even when signed), bytes that are not
        // an enrollment.
        let bad_key = enrollment(subject, sec1[..33].to_vec());
        assert_eq!(
            crate::wire::verify_enrollment(&bad_key, &sign(&k, &bad_key)).map(|_| ()),
            Err(Refusal::Malformed)
        );
        let bad_subject = enrollment("nope", sec1);
        assert_eq!(
            crate::wire::verify_enrollment(&bad_subject, &sign(&k, &bad_subject)).map(|_| ()),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            crate::wire::verify_enrollment(&[0xff; 8], &[0; 64]).map(|_| ()),
            Err(Refusal::Malformed)
        );
    }
}
