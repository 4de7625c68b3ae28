//! Device keys: the P-256 public key a device enrolls, the device id
//! derived from it, and the project's one ECDSA verifier (P1363, low S).
//!
//! Verification only: the vault never holds a device's private key, and
//! this module must never accept a DER signature or a high-S twin.

use std::fmt;

use p256::ecdsa::{Signature, VerifyingKey};
use p256::elliptic_curve::scalar::IsHigh;

use super::{PUBLIC_KEY_LEN, Refusal, SIGNATURE_LEN};
use crate::crypto::sha256;

/// An enrolled device's public key (P-256).
#[derive(Clone, PartialEq, Eq)]
pub struct DevicePublicKey(VerifyingKey);

impl fmt::Debug for DevicePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DevicePublicKey({})", device_id(&self.to_sec1()))
    }
}

impl DevicePublicKey {
    /// From a SEC1 uncompressed point (65 bytes); compressed points and
    /// points not on the curve are refused.
    pub fn from_sec1(bytes: &[u8]) -> Result<Self, Refusal> {
        if bytes.len() != PUBLIC_KEY_LEN || bytes.first() != Some(&0x04) {
            return Err(Refusal::Malformed);
        }
        VerifyingKey::from_sec1_bytes(bytes)
            .map(Self)
            .map_err(|_| Refusal::Malformed)
    }

    /// SEC1 uncompressed point.
    pub fn to_sec1(&self) -> Vec<u8> {
        self.0.to_sec1_point(false).as_bytes().to_vec()
    }

    /// The underlying key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.0
    }

    /// Verifies a P1363 signature over `context || msg`; see [`verify`].
    pub fn verify(&self, context: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), Refusal> {
        verify(&self.0, context, msg, sig)
    }
}

/// `dev_` + hex of the first 16 bytes of SHA-256 of the SEC1 public key:
/// a device can compute its id before enrolling.
pub fn device_id(sec1: &[u8]) -> String {
    let h = sha256(&[sec1]);
    format!("dev_{}", hex::encode(h.get(..16).unwrap_or_default()))
}

/// Whether `s` has the shape of a device id.
pub fn valid_device_id(s: &str) -> bool {
    s.len() == 36
        && s.starts_with("dev_")
        && s.bytes()
            .skip(4)
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The project's ECDSA verifier: P-256, SHA-256 over `context || msg`,
/// a 64-byte IEEE P1363 signature (r || s), and S in the lower half of the
/// group order.
///
/// One encoding only: P1363 is fixed-length, so there is no length or
/// padding variant to parse (DER has several ways to go wrong), and it is
/// the JOSE/ES256 form the digital-ID issue uses too. ECDSA is malleable:
/// (r, n − s) verifies whenever (r, s) does, so a replay cache keyed on
/// signature bytes could be dodged; refusing high S leaves one valid
/// signature per (key, message, nonce).
pub fn verify(key: &VerifyingKey, context: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), Refusal> {
    if sig.len() != SIGNATURE_LEN {
        return Err(Refusal::BadSignature);
    }
    // Refuses r or s of zero or not below the group order.
    let sig = Signature::from_slice(sig).map_err(|_| Refusal::BadSignature)?;
    if bool::from(sig.s().is_high()) {
        return Err(Refusal::BadSignature);
    }
    // The arithmetic is ring's (about four times faster than the pure-Rust
    // verifier here, which matters on every grant and device request); the
    // encoding and low-S policy are checked above.
    let mut signed = Vec::with_capacity(context.len() + msg.len());
    signed.extend_from_slice(context);
    signed.extend_from_slice(msg);
    let point = key.to_sec1_point(false);
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        point.as_bytes(),
    )
    .verify(&signed, &sig.to_bytes())
    .map_err(|_| Refusal::BadSignature)
}

/// Converts a strict-DER ECDSA signature (what Android Keystore, iOS
/// `derRepresentation` and most platform APIs emit) to P1363, unchanged.
/// For device code and tests; the vault itself never accepts DER. A
/// device must also apply [`normalize_low_s`] before sending.
pub fn p1363_from_der(der: &[u8]) -> Option<[u8; SIGNATURE_LEN]> {
    let sig = Signature::from_der(der).ok()?;
    Some(sig.to_bytes().into())
}

/// Replaces S by n − S when S is high: the low-S twin the vault accepts.
/// Platform signers (Android Keystore, iOS CryptoKit) do not normalise.
pub fn normalize_low_s(sig: &[u8]) -> Option<[u8; SIGNATURE_LEN]> {
    let sig = Signature::from_slice(sig).ok()?;
    Some(sig.normalize_s().to_bytes().into())
}

#[cfg(test)]
mod tests {
    use super::super::{DEVICE_REQUEST_CONTEXT, GRANT_CONTEXT};
    use super::*;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::{MultipartSigner, Verifier};

    fn key() -> SigningKey {
        SigningKey::from_slice(&[7u8; 32]).unwrap()
    }

    #[test]
    fn high_s_is_refused_though_it_verifies_mathematically() {
        let k = key();
        let vk = *k.verifying_key();
        let mut checked = 0;
        for i in 0..16u8 {
            let msg = [i; 8];
            let sig: Signature = k.try_multipart_sign(&[GRANT_CONTEXT, &msg]).unwrap();
            let low = sig.normalize_s();
            let high = Signature::from_scalars(low.r().to_bytes(), (-*low.s()).to_bytes()).unwrap();
            assert!(verify(&vk, GRANT_CONTEXT, &msg, &low.to_bytes()).is_ok());
            // The plain verifier accepts the twin; ours does not.
            let mut whole = GRANT_CONTEXT.to_vec();
            whole.extend_from_slice(&msg);
            assert!(vk.verify(&whole, &high).is_ok());
            assert_eq!(
                verify(&vk, GRANT_CONTEXT, &msg, &high.to_bytes()),
                Err(Refusal::BadSignature)
            );
            // Another context does not verify.
            assert!(verify(&vk, DEVICE_REQUEST_CONTEXT, &msg, &low.to_bytes()).is_err());
            checked += 1;
        }
        assert_eq!(checked, 16);
        assert_eq!(verify(&vk, b"", b"m", &[0; 64]), Err(Refusal::BadSignature));
        assert_eq!(verify(&vk, b"", b"m", &[1; 63]), Err(Refusal::BadSignature));
    }

    #[test]
    fn device_ids() {
        let sec1 = key()
            .verifying_key()
            .to_sec1_point(false)
            .as_bytes()
            .to_vec();
        let id = device_id(&sec1);
        assert!(valid_device_id(&id), "{id}");
        assert!(!valid_device_id("dev_XYZ"));
        assert!(DevicePublicKey::from_sec1(&sec1[..33]).is_err());
        let compressed = key()
            .verifying_key()
            .to_sec1_point(true)
            .as_bytes()
            .to_vec();
        assert!(DevicePublicKey::from_sec1(&compressed).is_err());
    }
}
