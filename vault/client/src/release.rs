//! Opening a consented release on the partner side (HPKE, docs/consent.md).

/// Errors opening a release.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// The key text is not a PKCS#8 P-256 private key.
    #[error("not a PKCS#8 PEM P-256 private key")]
    KeyFormat,
    /// The response does not name the consent or subject the caller expected.
    #[error("the release is for another consent or subject")]
    Mismatch,
    /// The response's ids are malformed.
    #[error("the release response is malformed")]
    Malformed,
    /// HPKE open failed: not sealed to this key, or altered.
    #[error("the release does not open with this key")]
    Open,
    /// The release is not signed by a vault key the partner trusts: it
    /// may have been sealed by anyone holding the partner's public key.
    #[error("the release is not signed by the vault")]
    Unsigned,
}

/// A partner's release key: consented releases are sealed to its public
/// half (registered as `release_key` in the vault's partner registry).
pub struct ReleaseKey(idvault_core::consent::ReleaseSecretKey, p256::SecretKey);

impl std::fmt::Debug for ReleaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReleaseKey(redacted)")
    }
}

/// One released field.
pub type ReleasedField = (String, zeroize::Zeroizing<String>);

/// What a partner asked for, checked against the signed release: a
/// release answering another request (another consent or subject, or an
/// older answer replayed by a proxy) is refused.
#[derive(Debug, Default, Clone, Copy)]
pub struct Expected<'a> {
    /// The subject the consent is about, when known.
    pub subject: Option<&'a str>,
    /// The consent presented (the grant's id, or the standing consent id).
    pub consent_id: Option<&'a [u8]>,
    /// The `ReleaseRequest.nonce` sent (empty if none was).
    pub nonce: &'a [u8],
}

/// A fresh nonce for a `ReleaseRequest` (16 random bytes).
pub fn release_nonce(
    rng: &dyn idvault_core::Rng,
) -> Result<[u8; 16], idvault_core::crypto::CryptoError> {
    let mut n = [0u8; 16];
    rng.fill(&mut n)?;
    Ok(n)
}

impl ReleaseKey {
    /// A fresh key from `rng`.
    pub fn generate(
        rng: &dyn idvault_core::Rng,
    ) -> Result<Self, idvault_core::crypto::CryptoError> {
        loop {
            let mut b = zeroize::Zeroizing::new([0u8; 32]);
            rng.fill(b.as_mut())?;
            if let Ok(k) = Self::from_scalar(b.as_ref()) {
                return Ok(k);
            }
        }
    }

    fn from_scalar(b: &[u8]) -> Result<Self, ReleaseError> {
        let sk = p256::SecretKey::from_slice(b).map_err(|_| ReleaseError::KeyFormat)?;
        let hpke = idvault_core::consent::ReleaseSecretKey::from_scalar(&sk.to_bytes())
            .ok_or(ReleaseError::KeyFormat)?;
        Ok(Self(hpke, sk))
    }

    /// From PKCS#8 PEM, as `openssl genpkey -algorithm EC -pkeyopt
    /// ec_paramgen_curve:P-256` writes it.
    pub fn from_pem(pem: &str) -> Result<Self, ReleaseError> {
        use p256::pkcs8::DecodePrivateKey;
        let sk = p256::SecretKey::from_pkcs8_pem(pem).map_err(|_| ReleaseError::KeyFormat)?;
        Self::from_scalar(&sk.to_bytes())
    }

    /// PKCS#8 PEM.
    pub fn to_pem(&self) -> Result<zeroize::Zeroizing<String>, ReleaseError> {
        use p256::pkcs8::{EncodePrivateKey, LineEnding};
        self.1
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|_| ReleaseError::KeyFormat)
    }

    /// The public key to register: hex of the SEC1 uncompressed point.
    pub fn public_hex(&self) -> String {
        hex::encode(self.0.public_key().to_sec1())
    }

    /// Opens a `ReleaseResponse`: checks it names the `expected` subject
    /// and consent (when given), checks the vault's signature over the
    /// whole response and the request's nonce with `vault` (the keys
    /// `idvault keys release-public-key` prints), opens the HPKE
    /// ciphertext bound to its consent id and subject, and returns the
    /// released fields. An unsigned, forged or replayed release is refused
    /// before anything is decrypted.
    pub fn open(
        &self,
        r: &idvault_proto::v1::ReleaseResponse,
        expected: &Expected<'_>,
        vault: &idvault_core::consent::ReleaseVerifier,
    ) -> Result<Vec<ReleasedField>, ReleaseError> {
        use prost::Message;
        if expected.subject.is_some_and(|s| s != r.subject_id)
            || expected
                .consent_id
                .is_some_and(|c| c != r.consent_id.as_slice())
        {
            return Err(ReleaseError::Mismatch);
        }
        let consent_id: [u8; 16] = r
            .consent_id
            .as_slice()
            .try_into()
            .map_err(|_| ReleaseError::Malformed)?;
        let subject = idvault_core::subject::SubjectId::parse(&r.subject_id)
            .map_err(|_| ReleaseError::Malformed)?;
        let grant_hash: [u8; 32] = r
            .grant_hash
            .as_slice()
            .try_into()
            .map_err(|_| ReleaseError::Malformed)?;
        let signed = idvault_core::consent::release_signed_bytes(
            &consent_id,
            &subject,
            &grant_hash,
            expected.nonce,
            &r.receipt_id,
            &r.enc,
            &r.ciphertext,
        )
        .map_err(|_| ReleaseError::Malformed)?;
        if !vault.verify(&signed, &r.signature) {
            return Err(ReleaseError::Unsigned);
        }
        let plain = self
            .0
            .open_release(&consent_id, &subject, &r.enc, &r.ciphertext)
            .map_err(|_| ReleaseError::Open)?;
        let fields = idvault_proto::v1::ReleasedFields::decode(plain.as_slice())
            .map_err(|_| ReleaseError::Malformed)?;
        Ok(fields
            .fields
            .into_iter()
            .map(|f| (f.name, zeroize::Zeroizing::new(f.value)))
            .collect())
    }
}
