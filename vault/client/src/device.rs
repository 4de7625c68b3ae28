//! The device side of consent-signed release: what a phone must do, as a
//! small library used by `idvault device …` and the tests.
//!
//! A device holds one P-256 key. It signs three kinds of message, each a
//! protobuf serialized once and signed as those exact bytes after a
//! context string (docs/consent.md):
//! - an enrollment ([`DeviceKey::enrollment`]), proving it holds the key;
//! - a consent grant ([`DeviceKey::sign_grant`]);
//! - a device request ([`DeviceKey::sign_request`]) to list receipts or
//!   devices, or to revoke a consent or a device.
//!
//! Signatures are deterministic (RFC 6979) and normalised to low S, so the
//! vault's verifier accepts them and test vectors are reproducible.

use std::fmt;

use idvault_proto::v1 as pb;
use p256::ecdsa::signature::MultipartSigner;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use prost::Message;
use zeroize::Zeroizing;

use idvault_core::Rng;
use idvault_core::consent::{
    DEVICE_REQUEST_CONTEXT, ENROLL_CONTEXT, GRANT_CONTEXT, ID_LEN, SIGNATURE_LEN, device_id,
};
use idvault_core::crypto::CryptoError;

/// Errors of the device library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The key text is not a PKCS#8 P-256 private key.
    #[error("not a PKCS#8 PEM P-256 private key")]
    KeyFormat,
    /// Signing failed.
    #[error("signing failed")]
    Sign,
    /// The random number generator failed.
    #[error(transparent)]
    Rng(#[from] CryptoError),
    /// A credential did not parse, or lacks a claim asked for.
    #[error(transparent)]
    Credential(idvault_core::sdjwt::SdJwtError),
}

/// A device's P-256 signing key.
#[derive(Clone)]
pub struct DeviceKey(SigningKey);

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceKey({}, secret redacted)", self.device_id())
    }
}

/// What a grant says; the device fills in ids and times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRequest {
    /// Subject id (UUID text).
    pub subject_id: String,
    /// The partner's SPIFFE id.
    pub audience: String,
    /// Purpose code.
    pub purpose: String,
    /// Catalogue field names.
    pub fields: Vec<String>,
    /// The challenge the partner obtained.
    pub challenge: Vec<u8>,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Standing (true) or single-use.
    pub standing: bool,
}

fn random_id(rng: &dyn Rng) -> Result<Vec<u8>, DeviceError> {
    let mut b = [0u8; ID_LEN];
    rng.fill(&mut b)?;
    Ok(b.to_vec())
}

impl DeviceKey {
    /// A fresh key from `rng`.
    pub fn generate(rng: &dyn Rng) -> Result<Self, DeviceError> {
        loop {
            let mut b = Zeroizing::new([0u8; 32]);
            rng.fill(b.as_mut())?;
            // A 32-byte string is a valid scalar except with probability
            // about 2^-32 (zero or not below the group order): draw again.
            if let Ok(k) = SigningKey::from_slice(b.as_ref()) {
                return Ok(Self(k));
            }
        }
    }

    /// From a 32-byte scalar (test vectors).
    pub fn from_scalar(bytes: &[u8]) -> Result<Self, DeviceError> {
        SigningKey::from_slice(bytes)
            .map(Self)
            .map_err(|_| DeviceError::KeyFormat)
    }

    /// From PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as `openssl genpkey
    /// -algorithm EC -pkeyopt ec_paramgen_curve:P-256` writes it.
    pub fn from_pem(pem: &str) -> Result<Self, DeviceError> {
        let sk = p256::SecretKey::from_pkcs8_pem(pem).map_err(|_| DeviceError::KeyFormat)?;
        Ok(Self(SigningKey::from(&sk)))
    }

    /// PKCS#8 PEM.
    pub fn to_pem(&self) -> Result<Zeroizing<String>, DeviceError> {
        p256::SecretKey::from(&self.0)
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|_| DeviceError::KeyFormat)
    }

    /// SEC1 uncompressed public key (65 bytes).
    pub fn public_key(&self) -> Vec<u8> {
        self.0
            .verifying_key()
            .to_sec1_point(false)
            .as_bytes()
            .to_vec()
    }

    /// The device id the vault will give this key.
    pub fn device_id(&self) -> String {
        device_id(&self.public_key())
    }

    /// Signs `context || msg`: deterministic ECDSA P-256 / SHA-256, low S,
    /// P1363 encoding.
    pub fn sign(&self, context: &[u8], msg: &[u8]) -> Result<[u8; SIGNATURE_LEN], DeviceError> {
        let sig: Signature = self
            .0
            .try_multipart_sign(&[context, msg])
            .map_err(|_| DeviceError::Sign)?;
        Ok(sig.normalize_s().to_bytes().into())
    }

    /// A signed enrollment for `subject_id` with the one-time `code`.
    pub fn enrollment(
        &self,
        subject_id: &str,
        code: &str,
    ) -> Result<pb::EnrollRequest, DeviceError> {
        let bytes = pb::DeviceEnrollment {
            subject_id: subject_id.to_owned(),
            enrollment_code: code.to_owned(),
            public_key: self.public_key(),
        }
        .encode_to_vec();
        let signature = self.sign(ENROLL_CONTEXT, &bytes)?.to_vec();
        Ok(pb::EnrollRequest {
            enrollment: bytes,
            signature,
        })
    }

    /// Signs a grant with the given consent id: the bytes put in
    /// `SignedConsent.grant` are exactly the bytes signed.
    pub fn sign_grant_with_id(
        &self,
        consent_id: Vec<u8>,
        g: &GrantRequest,
    ) -> Result<pb::SignedConsent, DeviceError> {
        let kind = if g.standing {
            pb::ConsentKind::Standing
        } else {
            pb::ConsentKind::SingleUse
        };
        let grant = pb::ConsentGrant {
            consent_id,
            subject_id: g.subject_id.clone(),
            audience: g.audience.clone(),
            purpose: g.purpose.clone(),
            fields: g.fields.clone(),
            challenge: g.challenge.clone(),
            issued_at: g.issued_at,
            expires_at: g.expires_at,
            kind: kind.into(),
        }
        .encode_to_vec();
        let signature = self.sign(GRANT_CONTEXT, &grant)?.to_vec();
        Ok(pb::SignedConsent {
            grant,
            signature,
            device_id: self.device_id(),
        })
    }

    /// Signs a grant under a fresh random consent id.
    pub fn sign_grant(
        &self,
        g: &GrantRequest,
        rng: &dyn Rng,
    ) -> Result<pb::SignedConsent, DeviceError> {
        self.sign_grant_with_id(random_id(rng)?, g)
    }

    /// Signs a device request (fresh request id, `issued_at` in Unix seconds).
    pub fn sign_request(
        &self,
        action: pb::device_request::Action,
        issued_at: i64,
        rng: &dyn Rng,
    ) -> Result<pb::SignedDeviceRequest, DeviceError> {
        self.sign_request_with_id(action, random_id(rng)?, issued_at)
    }

    /// A signed request for a digital ID with `claims` (empty: all), and
    /// the one-time key its answer is sealed to (docs/digital-id.md).
    pub fn request_credential(
        &self,
        claims: &[String],
        issued_at: i64,
        rng: &dyn Rng,
    ) -> Result<(pb::SignedDeviceRequest, CredentialRequest), DeviceError> {
        let secret = one_time_key(rng)?;
        let action = pb::device_request::Action::IssueCredential(pb::IssueCredential {
            claims: claims.to_vec(),
            response_key: secret.public_key().to_sec1(),
        });
        let mut request_id = [0u8; ID_LEN];
        rng.fill(&mut request_id)?;
        let signed = self.sign_request_with_id(action, request_id.to_vec(), issued_at)?;
        let holder = idvault_core::sdjwt::EcJwk::new(*self.0.verifying_key());
        Ok((
            signed,
            CredentialRequest {
                secret,
                request_id,
                device_id: self.device_id(),
                holder,
                asked: claims.to_vec(),
            },
        ))
    }

    fn sign_request_with_id(
        &self,
        action: pb::device_request::Action,
        request_id: Vec<u8>,
        issued_at: i64,
    ) -> Result<pb::SignedDeviceRequest, DeviceError> {
        let request = pb::DeviceRequest {
            request_id,
            issued_at,
            action: Some(action),
        }
        .encode_to_vec();
        let signature = self.sign(DEVICE_REQUEST_CONTEXT, &request)?.to_vec();
        Ok(pb::SignedDeviceRequest {
            request,
            signature,
            device_id: self.device_id(),
        })
    }
}

/// A fresh HPKE P-256 key: a random scalar, drawn again in the ~2^-32
/// case it is not one.
fn one_time_key(rng: &dyn Rng) -> Result<idvault_core::consent::ReleaseSecretKey, DeviceError> {
    for _ in 0..8 {
        let mut b = Zeroizing::new([0u8; 32]);
        rng.fill(b.as_mut())?;
        if let Some(k) = idvault_core::consent::ReleaseSecretKey::from_scalar(b.as_ref()) {
            return Ok(k);
        }
    }
    Err(DeviceError::Sign)
}

/// A digital-ID request in flight: opens the vault's sealed answer. Its
/// one-time key is wiped when it is dropped; drop it once the answer is
/// opened.
#[derive(Debug)]
pub struct CredentialRequest {
    secret: idvault_core::consent::ReleaseSecretKey,
    request_id: [u8; ID_LEN],
    device_id: String,
    holder: idvault_core::sdjwt::EcJwk,
    asked: Vec<String>,
}

impl CredentialRequest {
    /// The credential `<jwt>~<disclosure>~…~` from the vault's answer, and
    /// its parsed form. Refused: an answer sealed for another request,
    /// altered on the way, bound to another key, holding claims that were
    /// not asked for, or (with `issuer_keys` pinned) not signed by the
    /// vault. HPKE base mode does not say who sealed the answer, so without
    /// pinned keys a forged credential is caught only by a relying party.
    pub fn open(
        &self,
        r: &pb::IssueCredentialResponse,
        issuer_keys: Option<&idvault_core::sdjwt::Jwks>,
    ) -> Result<(Zeroizing<String>, idvault_core::sdjwt::Credential), DeviceError> {
        use idvault_core::sdjwt::{Credential, SdJwtError};
        let pt = self
            .secret
            .open_credential(
                &self.request_id,
                &self.device_id,
                &r.enc,
                &r.sealed_credential,
            )
            .map_err(|_| {
                DeviceError::Credential(SdJwtError::Malformed("sealed credential does not open"))
            })?;
        let text = std::str::from_utf8(&pt)
            .map_err(|_| DeviceError::Credential(SdJwtError::Malformed("credential")))?;
        let text = Zeroizing::new(text.to_owned());
        let parsed = Credential::parse(&text).map_err(DeviceError::Credential)?;
        parsed
            .check_issued(issuer_keys, &self.holder, &self.asked)
            .map_err(DeviceError::Credential)?;
        Ok((text, parsed))
    }
}

impl DeviceKey {
    /// Presents a digital ID: keeps the disclosures of `disclose` only and
    /// appends a Key Binding JWT for `audience` and `nonce`, signed with
    /// this device key at `issued_at` (docs/digital-id.md, "Presenting").
    /// A name the credential does not hold is an error.
    pub fn present_credential(
        &self,
        credential: &str,
        disclose: &[&str],
        audience: &str,
        nonce: &str,
        issued_at: i64,
    ) -> Result<zeroize::Zeroizing<String>, DeviceError> {
        use idvault_core::sdjwt;
        let c = sdjwt::Credential::parse(credential).map_err(DeviceError::Credential)?;
        let sd = c.disclose(disclose).map_err(DeviceError::Credential)?;
        let input = sdjwt::key_binding_input(&sd, audience, nonce, issued_at);
        // Plain ES256 over the JWS signing input: no context prefix, as JOSE
        // requires. It cannot be taken for one of the vault's own signed
        // messages, whose signed bytes always begin with an "idvault/"
        // context, where this begins with base64url of '{"'.
        let sig = self.sign(b"", input.as_bytes())?;
        Ok(zeroize::Zeroizing::new(sdjwt::with_key_binding(
            &sd, &input, &sig,
        )))
    }
}

/// The answer to a transaction the phone looked up and showed (docs/
/// digital-id.md, "Transaction codes"): binds the digest of exactly what
/// `shown` said, so an answer to an altered lookup is refused. `claims`
/// are the ones the person chose to share (none is allowed).
pub fn transaction_answer(
    shown: &pb::LookupTransactionResponse,
    code: &str,
    approve: bool,
    claims: &[String],
) -> pb::device_request::Action {
    let digest = idvault_core::transaction::shown_digest(
        &shown.transaction_id,
        &shown.requester,
        &shown.binding_message,
        &shown.claims,
        shown.expires_at,
    );
    pb::device_request::Action::AnswerTransaction(pb::AnswerTransaction {
        transaction_id: shown.transaction_id.clone(),
        code: code.to_owned(),
        approve,
        claims: if approve { claims.to_vec() } else { Vec::new() },
        shown: digest.to_vec(),
    })
}

/// Unix seconds now, for `issued_at`.
#[allow(clippy::disallowed_methods)] // the device's clock: it dates what it signs
pub fn unix_now() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use idvault_core::consent::DevicePublicKey;
    use idvault_core::wire::decode_grant;

    /// The vectors published in docs/consent.md ("Test vectors"); if this
    /// test changes, so must the document.
    const DOC_DEVICE_SCALAR: &str =
        "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20";
    const DOC_SUBJECT: &str = "6f1c2b9e-8a41-4d3c-9b7e-2a5f0c1d3e4f";

    fn doc_grant() -> GrantRequest {
        GrantRequest {
            subject_id: DOC_SUBJECT.into(),
            audience: "spiffe://idvault.dev/partner/partner-b".into(),
            purpose: "kyc".into(),
            fields: vec!["given_name".into(), "email".into()],
            challenge: vec![0xa5; 32],
            issued_at: 1_795_000_000,
            expires_at: 1_795_000_300,
            standing: false,
        }
    }

    #[test]
    fn doc_vectors() {
        let k = DeviceKey::from_scalar(&hex::decode(DOC_DEVICE_SCALAR).unwrap()).unwrap();
        let consent_id: Vec<u8> = (0u8..16).collect();
        let s = k
            .sign_grant_with_id(consent_id.clone(), &doc_grant())
            .unwrap();
        assert_eq!(
            hex::encode(k.public_key()),
            "04515c3d6eb9e396b904d3feca7f54fdcd0cc1e997bf375dca515ad0a6c3b4035f4536be3a50f318fbf9a5475902a221502bef0d57e08c53b2cc0a56f17d9f9354"
        );
        assert_eq!(k.device_id(), "dev_4269889431e3131966fcaf6a45714194");
        assert_eq!(
            hex::encode(&s.grant),
            "0a10000102030405060708090a0b0c0d0e0f122436663163326239652d386134312d346433632d396237652d3261356630633164336534661a267370696666653a2f2f69647661756c742e6465762f706172746e65722f706172746e65722d6222036b79632a0a676976656e5f6e616d652a05656d61696c3220a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a538c08df6d70640ec8ff6d7064801"
        );
        assert_eq!(
            hex::encode(&s.signature),
            "47ca627e8f01624718e791f97cfd02fce82646f1aa1be5029061364e9a9b93fb0cef6c9f462fbc5eb84c390ab269fd098a5c69cae91db44f0fde7a346fd39b24"
        );
        assert_eq!(
            hex::encode(idvault_core::consent::grant_hash(&s.grant)),
            "0d2e5d5b16599232142a91b3f49c2cd9f64f44422d7033b1b1400b5d4b4f1ec0"
        );
        let key = DevicePublicKey::from_sec1(&k.public_key()).unwrap();
        key.verify(GRANT_CONTEXT, &s.grant, &s.signature).unwrap();
        decode_grant(&s.grant).unwrap();
    }
}
