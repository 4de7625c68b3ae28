//! Consent-signed release, the pure part: device keys, signature checks,
//! strict decoding of signed messages, grant validation, enrollment codes
//! and the HPKE seal of a release (docs/consent.md is the specification).
//!
//! "Sign the bytes, send the bytes": a device signs a context string and
//! the exact serialized message; the vault verifies those bytes first and
//! only then decodes them, and it decodes only the canonical encoding
//! (see [`decode_canonical`]) so that no two readers of a signed message
//! can disagree on what it says.

use std::fmt;

use hpke::{Deserializable, Serializable};
use idvault_proto::v1 as pb;
use p256::ecdsa::signature::MultipartVerifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::elliptic_curve::scalar::IsHigh;
use prost::Message;
use zeroize::Zeroizing;

use super::crypto::{CryptoError, HASH_LEN, Rng, sha256};
use super::subject::{FieldName, SubjectId};

/// Signing context of a [`pb::ConsentGrant`].
pub const GRANT_CONTEXT: &[u8] = b"idvault/v1/consent-grant\0";
/// Signing context of a [`pb::DeviceEnrollment`].
pub const ENROLL_CONTEXT: &[u8] = b"idvault/v1/device-enrollment\0";
/// Signing context of a [`pb::DeviceRequest`].
pub const DEVICE_REQUEST_CONTEXT: &[u8] = b"idvault/v1/device-request\0";
/// HPKE `info` of every release.
pub const RELEASE_INFO: &[u8] = b"idvault/v1/release";
/// P1363 signature length: r and s, 32 bytes each.
pub const SIGNATURE_LEN: usize = 64;
/// SEC1 uncompressed P-256 point length.
pub const PUBLIC_KEY_LEN: usize = 65;
/// Consent ids and device request ids are 16 bytes.
pub const ID_LEN: usize = 16;
/// Challenges are 32 bytes.
pub const CHALLENGE_LEN: usize = 32;
/// Largest signed grant or enrollment the vault looks at.
pub const MAX_SIGNED_LEN: usize = 4096;
/// Largest signed device request (a whole rule set travels in one; the
/// DeviceService message cap of 64 KiB leaves room for the envelope).
pub const MAX_DEVICE_REQUEST_LEN: usize = 60 * 1024;
/// Longest purpose code.
pub const MAX_PURPOSE_LEN: usize = 64;
/// Longest audience (SPIFFE id).
pub const MAX_AUDIENCE_LEN: usize = 512;

/// Why a consent, enrollment or device call was refused. [`Refusal::name`]
/// is the stable reason token clients switch on (the `idvault-refusal`
/// response metadata and the audit detail). No variant carries caller data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
// Exhaustive on purpose: the API maps every variant to the wire, and a
// new one must not compile until it is mapped.
pub enum Refusal {
    /// The signed bytes are not a canonical, valid message.
    #[error("the signed message is malformed or not canonically encoded")]
    Malformed,
    /// No device with that id.
    #[error("no enrolled device has this id")]
    UnknownDevice,
    /// The device was revoked.
    #[error("the device has been revoked")]
    DeviceRevoked,
    /// The signature does not verify under the device key, is not 64
    /// bytes, or has a high S.
    #[error("the signature does not verify for this device key")]
    BadSignature,
    /// The grant names a subject the signing device is not enrolled to.
    #[error("the device is not enrolled to the grant's subject")]
    SubjectMismatch,
    /// The grant's audience is not the calling partner's identity.
    #[error("the grant's audience is not the calling partner")]
    AudienceMismatch,
    /// `issued_at` is in the future (beyond the allowed clock skew).
    #[error("the grant is not valid yet")]
    NotYetValid,
    /// `expires_at` has passed.
    #[error("the grant has expired")]
    Expired,
    /// The grant's lifetime exceeds the maximum for its kind.
    #[error("the grant's lifetime exceeds the maximum for its kind")]
    LifetimeTooLong,
    /// The challenge was never issued.
    #[error("the challenge was not issued by this vault")]
    ChallengeUnknown,
    /// The challenge was issued to another partner or for another subject.
    #[error("the challenge was issued to another partner or subject")]
    ChallengeMismatch,
    /// The challenge has expired.
    #[error("the challenge has expired")]
    ChallengeExpired,
    /// The challenge was already used.
    #[error("the challenge has already been used")]
    ChallengeReused,
    /// A grant with this consent id was already presented.
    #[error("this consent id has already been presented")]
    ConsentReplayed,
    /// The partner's allowances do not include the purpose.
    #[error("the purpose is not allowed for this partner")]
    PurposeNotAllowed,
    /// The partner's allowances do not include every requested field.
    #[error("a requested field is not allowed for this partner")]
    FieldsNotAllowed,
    /// The partner access policies refused the release for another reason
    /// than the registry allowances (an operator's own policy).
    #[error("the access policies do not permit this release")]
    PolicyDenied,
    /// No standing consent with that id for this partner.
    #[error("no standing consent with this id for this partner")]
    ConsentUnknown,
    /// The person revoked the consent.
    #[error("the consent has been revoked")]
    ConsentRevoked,
    /// The enrollment code is unknown, expired, used, or for another subject.
    #[error("the enrollment code is not valid for this subject")]
    EnrollmentCodeInvalid,
    /// The device key is already enrolled.
    #[error("this device key is already enrolled")]
    DeviceAlreadyEnrolled,
    /// The device request id was seen before.
    #[error("this device request has already been used")]
    RequestReplayed,
    /// The device request's `issued_at` is outside the accepted window.
    #[error("the device request is outside its time window")]
    RequestOutsideWindow,
    /// The signed action is not the one the RPC performs.
    #[error("the signed action does not match the call")]
    WrongAction,
    /// The entity is not a registered partner.
    #[error("no registered entity has this identity")]
    EntityUnknown,
    /// A rule names an entity the person has not linked.
    #[error("a rule names an entity the person has not linked")]
    EntityNotLinked,
}

impl Refusal {
    /// Stable reason token.
    pub fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownDevice => "unknown_device",
            Self::DeviceRevoked => "device_revoked",
            Self::BadSignature => "bad_signature",
            Self::SubjectMismatch => "subject_mismatch",
            Self::AudienceMismatch => "audience_mismatch",
            Self::NotYetValid => "not_yet_valid",
            Self::Expired => "expired",
            Self::LifetimeTooLong => "lifetime_too_long",
            Self::ChallengeUnknown => "challenge_unknown",
            Self::ChallengeMismatch => "challenge_mismatch",
            Self::ChallengeExpired => "challenge_expired",
            Self::ChallengeReused => "challenge_reused",
            Self::ConsentReplayed => "consent_replayed",
            Self::PurposeNotAllowed => "purpose_not_allowed",
            Self::FieldsNotAllowed => "fields_not_allowed",
            Self::PolicyDenied => "policy_denied",
            Self::ConsentUnknown => "consent_unknown",
            Self::ConsentRevoked => "consent_revoked",
            Self::EnrollmentCodeInvalid => "enrollment_code_invalid",
            Self::DeviceAlreadyEnrolled => "device_already_enrolled",
            Self::RequestReplayed => "request_replayed",
            Self::RequestOutsideWindow => "request_outside_window",
            Self::WrongAction => "wrong_action",
            Self::EntityUnknown => "entity_unknown",
            Self::EntityNotLinked => "entity_not_linked",
        }
    }
}

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
    key.multipart_verify(&[context, msg], &sig)
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

/// Decodes `bytes` only if they are the canonical encoding of the message:
/// re-encoding must give the same bytes. This refuses unknown fields,
/// repeated occurrences of a singular field (protobuf parsers disagree on
/// which one wins), explicitly encoded defaults and non-minimal varints.
pub fn decode_canonical<M: Message + Default>(bytes: &[u8]) -> Option<M> {
    decode_canonical_within(bytes, MAX_SIGNED_LEN)
}

/// [`decode_canonical`] with its own size limit.
fn decode_canonical_within<M: Message + Default>(bytes: &[u8], max: usize) -> Option<M> {
    if bytes.len() > max {
        return None;
    }
    let m = M::decode(bytes).ok()?;
    (m.encoded_len() == bytes.len() && m.encode_to_vec() == bytes).then_some(m)
}

/// Limits applied to grants and device requests (`[consent]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsentLimits {
    /// Longest lifetime of a single-use grant, seconds.
    pub max_single_use_secs: i64,
    /// Longest lifetime of a standing grant, seconds.
    pub max_standing_secs: i64,
    /// Clock skew tolerated on `issued_at`, seconds.
    pub skew_secs: i64,
}

impl Default for ConsentLimits {
    fn default() -> Self {
        Self {
            max_single_use_secs: 600,
            max_standing_secs: 365 * 24 * 3600,
            skew_secs: 120,
        }
    }
}

/// A verified and validated consent grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Consent id.
    pub consent_id: [u8; ID_LEN],
    /// Subject.
    pub subject: SubjectId,
    /// Audience: the partner's SPIFFE id.
    pub audience: String,
    /// Purpose code.
    pub purpose: String,
    /// Consented fields, sorted, each once.
    pub fields: Vec<FieldName>,
    /// Challenge.
    pub challenge: [u8; CHALLENGE_LEN],
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Standing (true) or single-use.
    pub standing: bool,
}

/// Whether `p` is a purpose code: 1-64 of `a-z 0-9 . _ -`.
pub fn valid_purpose(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= MAX_PURPOSE_LEN
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Parses field names: catalogue names, at least one, each once; sorted.
pub fn parse_field_names<S: AsRef<str>>(names: &[S]) -> Option<Vec<FieldName>> {
    if names.is_empty() || names.len() > super::subject::MAX_FIELDS_PER_REQUEST {
        return None;
    }
    let mut out = names
        .iter()
        .map(|n| FieldName::parse(n.as_ref()).ok())
        .collect::<Option<Vec<_>>>()?;
    out.sort();
    let n = out.len();
    out.dedup();
    (out.len() == n).then_some(out)
}

/// Decodes verified grant bytes. Call only after the signature verified.
pub fn decode_grant(bytes: &[u8]) -> Result<Grant, Refusal> {
    let g: pb::ConsentGrant = decode_canonical(bytes).ok_or(Refusal::Malformed)?;
    let standing = match pb::ConsentKind::try_from(g.kind) {
        Ok(pb::ConsentKind::SingleUse) => false,
        Ok(pb::ConsentKind::Standing) => true,
        _ => return Err(Refusal::Malformed),
    };
    let consent_id = g.consent_id.try_into().map_err(|_| Refusal::Malformed)?;
    let challenge = g.challenge.try_into().map_err(|_| Refusal::Malformed)?;
    let subject = SubjectId::parse(&g.subject_id).map_err(|_| Refusal::Malformed)?;
    if g.audience.is_empty() || g.audience.len() > MAX_AUDIENCE_LEN || !valid_purpose(&g.purpose) {
        return Err(Refusal::Malformed);
    }
    let fields = parse_field_names(&g.fields).ok_or(Refusal::Malformed)?;
    Ok(Grant {
        consent_id,
        subject,
        audience: g.audience,
        purpose: g.purpose,
        fields,
        challenge,
        issued_at: g.issued_at,
        expires_at: g.expires_at,
        standing,
    })
}

impl Grant {
    /// Checks the grant's window at `now` (Unix seconds): issued no later
    /// than `now + skew`, not expired, and no longer-lived than its kind
    /// allows.
    pub fn check_window(&self, now: i64, limits: &ConsentLimits) -> Result<(), Refusal> {
        let lifetime = self.expires_at.saturating_sub(self.issued_at);
        let max = if self.standing {
            limits.max_standing_secs
        } else {
            limits.max_single_use_secs
        };
        if lifetime <= 0 || lifetime > max {
            return Err(Refusal::LifetimeTooLong);
        }
        if self.issued_at > now.saturating_add(limits.skew_secs) {
            return Err(Refusal::NotYetValid);
        }
        if now >= self.expires_at {
            return Err(Refusal::Expired);
        }
        Ok(())
    }
}

/// SHA-256 of the signed grant bytes: the receipt's `grant_hash`.
pub fn grant_hash(grant_bytes: &[u8]) -> [u8; HASH_LEN] {
    sha256(&[grant_bytes])
}

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

/// Decodes an enrollment and checks its proof of possession: the key it
/// carries signed it. (The key has to be read from the message first;
/// the message is still refused unless those exact bytes verify.)
pub fn verify_enrollment(bytes: &[u8], sig: &[u8]) -> Result<Enrollment, Refusal> {
    let e: pb::DeviceEnrollment = decode_canonical(bytes).ok_or(Refusal::Malformed)?;
    let key = DevicePublicKey::from_sec1(&e.public_key)?;
    key.verify(ENROLL_CONTEXT, bytes, sig)?;
    let subject = SubjectId::parse(&e.subject_id).map_err(|_| Refusal::Malformed)?;
    Ok(Enrollment {
        subject,
        code: Zeroizing::new(e.enrollment_code),
        key,
    })
}

/// What a device asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceAction {
    /// List the subject's release receipts.
    ListReceipts,
    /// Revoke a consent.
    RevokeConsent([u8; ID_LEN]),
    /// List the subject's devices.
    ListDevices,
    /// Revoke a device of the same subject.
    RevokeDevice(String),
    /// Link a trusted entity (SPIFFE id) to the person's profile.
    LinkEntity(String),
    /// Unlink an entity, removing the rules that name it.
    UnlinkEntity(String),
    /// Replace the person's rules (validated, sorted by id).
    SetRules(Vec<super::rules::Rule>),
    /// List linked entities and rules.
    ListRules,
    /// Suggest rule sets from similar people's adoptions.
    SuggestRules,
}

/// A verified device request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCall {
    /// Request id (replay protection).
    pub request_id: [u8; ID_LEN],
    /// Unix seconds.
    pub issued_at: i64,
    /// The action.
    pub action: DeviceAction,
}

/// Decodes verified device-request bytes.
pub fn decode_device_request(bytes: &[u8]) -> Result<DeviceCall, Refusal> {
    use pb::device_request::Action;
    let r: pb::DeviceRequest =
        decode_canonical_within(bytes, MAX_DEVICE_REQUEST_LEN).ok_or(Refusal::Malformed)?;
    let request_id = r.request_id.try_into().map_err(|_| Refusal::Malformed)?;
    let action = match r.action.ok_or(Refusal::Malformed)? {
        Action::ListReceipts(_) => DeviceAction::ListReceipts,
        Action::ListDevices(_) => DeviceAction::ListDevices,
        Action::RevokeConsent(c) => {
            DeviceAction::RevokeConsent(c.consent_id.try_into().map_err(|_| Refusal::Malformed)?)
        }
        Action::RevokeDevice(d) if valid_device_id(&d.device_id) => {
            DeviceAction::RevokeDevice(d.device_id)
        }
        Action::RevokeDevice(_) => return Err(Refusal::Malformed),
        Action::LinkEntity(l) if super::rules::valid_entity(&l.entity) => {
            DeviceAction::LinkEntity(l.entity)
        }
        Action::UnlinkEntity(l) if super::rules::valid_entity(&l.entity) => {
            DeviceAction::UnlinkEntity(l.entity)
        }
        Action::LinkEntity(_) | Action::UnlinkEntity(_) => return Err(Refusal::Malformed),
        Action::SetRules(r) => DeviceAction::SetRules(super::rules::rule_set(r.rules)?),
        Action::ListRules(_) => DeviceAction::ListRules,
        Action::SuggestRules(_) => DeviceAction::SuggestRules,
    };
    Ok(DeviceCall {
        request_id,
        issued_at: r.issued_at,
        action,
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

/// Feeds the HPKE ephemeral-key derivation from bytes drawn beforehand
/// from the vault's fallible [`Rng`]: hpke wants an infallible RNG.
/// DHKEM(P-256) draws exactly one 32-byte seed (RFC 9180 §4.1,
/// DeriveKeyPair(random(Nsk))). Should it ever ask for more, `exhausted`
/// is set and the caller discards the result.
struct SeedRng {
    seed: Zeroizing<[u8; 32]>,
    used: usize,
    exhausted: bool,
}

impl hpke::rand_core::TryRng for SeedRng {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        match self.seed.get(self.used..self.used + dst.len()) {
            Some(src) => {
                dst.copy_from_slice(src);
                self.used += dst.len();
            }
            None => {
                dst.fill(0);
                self.exhausted = true;
            }
        }
        Ok(())
    }
}

impl hpke::rand_core::TryCryptoRng for SeedRng {}

/// Seals `plaintext` to `pk` in HPKE base mode with `seed` as the
/// ephemeral-key randomness. Crate-private on purpose: the same seed twice
/// would reuse the AES-GCM key and nonce. The vault calls [`seal_release`];
/// the known-answer tests call this.
pub(crate) fn seal_with_seed(
    pk: &ReleasePublicKey,
    seed: Zeroizing<[u8; 32]>,
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
    let mut rng = SeedRng {
        seed,
        used: 0,
        exhausted: false,
    };
    let (enc, ct) = hpke::single_shot_seal_with_rng::<Aead, Kdf, Kem>(
        &hpke::OpModeS::Base,
        &pk.0,
        info,
        plaintext,
        aad,
        &mut rng,
    )
    .map_err(|_| CryptoError::InvalidLength)?;
    if rng.exhausted {
        return Err(CryptoError::Rng);
    }
    Ok((enc.to_bytes().to_vec(), ct))
}

/// Seals a release's plaintext to the partner's key: returns `(enc, ciphertext)`.
pub fn seal_release(
    pk: &ReleasePublicKey,
    consent_id: &[u8; ID_LEN],
    subject: &SubjectId,
    plaintext: &[u8],
    rng: &dyn Rng,
) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
    let mut seed = Zeroizing::new([0u8; 32]);
    rng.fill(seed.as_mut())?;
    seal_with_seed(
        pk,
        seed,
        RELEASE_INFO,
        &release_aad(consent_id, subject),
        plaintext,
    )
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SystemRng;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::{MultipartSigner, Verifier};

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
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
        // Seal with the vector's ephemeral seed: byte-exact.
        let seed = Zeroizing::new(<[u8; 32]>::try_from(ikm_e).unwrap());
        let (e, c) = seal_with_seed(&pk, seed, &info, &aad, &pt).unwrap();
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

    fn sample_grant() -> pb::ConsentGrant {
        pb::ConsentGrant {
            consent_id: vec![1; 16],
            subject_id: "6f1c2b9e-8a41-4d3c-9b7e-2a5f0c1d3e4f".into(),
            audience: "spiffe://idvault.dev/partner/partner-b".into(),
            purpose: "kyc".into(),
            fields: vec!["given_name".into(), "email".into()],
            challenge: vec![0xa5; 32],
            issued_at: 1_795_000_000,
            expires_at: 1_795_000_300,
            kind: pb::ConsentKind::SingleUse.into(),
        }
    }

    #[test]
    fn only_canonical_grants_decode() {
        let bytes = sample_grant().encode_to_vec();
        let g = decode_grant(&bytes).unwrap();
        assert_eq!(
            g.fields.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
            ["email", "given_name"]
        );
        assert!(!g.standing);
        // A repeated singular field, an unknown field, an explicit default.
        let mut dup = bytes.clone();
        dup.extend_from_slice(&[0x22, 0x01, b'x']);
        assert_eq!(decode_grant(&dup), Err(Refusal::Malformed));
        let mut unknown = bytes.clone();
        unknown.extend_from_slice(&[0xf8, 0x01, 0x01]);
        assert_eq!(decode_grant(&unknown), Err(Refusal::Malformed));
        let mut explicit_zero = vec![0x50, 0x00];
        explicit_zero.extend_from_slice(&bytes);
        assert_eq!(decode_grant(&explicit_zero), Err(Refusal::Malformed));
        // Bad values.
        for f in [
            |g: &mut pb::ConsentGrant| g.consent_id = vec![1; 15],
            |g: &mut pb::ConsentGrant| g.challenge = vec![1; 31],
            |g: &mut pb::ConsentGrant| g.kind = 0,
            |g: &mut pb::ConsentGrant| g.purpose = "KYC".into(),
            |g: &mut pb::ConsentGrant| g.fields = vec![],
            |g: &mut pb::ConsentGrant| g.fields = vec!["email".into(), "email".into()],
            |g: &mut pb::ConsentGrant| g.subject_id = "nope".into(),
            |g: &mut pb::ConsentGrant| g.audience = String::new(),
        ] {
            let mut g = sample_grant();
            f(&mut g);
            assert_eq!(decode_grant(&g.encode_to_vec()), Err(Refusal::Malformed));
        }
    }

    #[test]
    fn windows() {
        let l = ConsentLimits::default();
        let g = decode_grant(&sample_grant().encode_to_vec()).unwrap();
        assert_eq!(g.check_window(1_795_000_000, &l), Ok(()));
        assert_eq!(g.check_window(1_795_000_299, &l), Ok(()));
        assert_eq!(g.check_window(1_795_000_300, &l), Err(Refusal::Expired));
        assert_eq!(g.check_window(1_794_999_880, &l), Ok(()), "within skew");
        assert_eq!(g.check_window(1_794_999_879, &l), Err(Refusal::NotYetValid));
        let mut long = g.clone();
        long.expires_at = long.issued_at + 601;
        assert_eq!(
            long.check_window(1_795_000_000, &l),
            Err(Refusal::LifetimeTooLong)
        );
        long.standing = true;
        assert_eq!(long.check_window(1_795_000_000, &l), Ok(()));
        let mut backwards = g;
        backwards.expires_at = backwards.issued_at;
        assert_eq!(
            backwards.check_window(1_795_000_000, &l),
            Err(Refusal::LifetimeTooLong)
        );
    }

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

    /// The release seal vector published in docs/consent.md ("Test
    /// vectors"); the device half is checked in idvault-client.
    #[test]
    fn doc_release_vector() {
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
        let (enc, ct) =
            seal_with_seed(&pk, Zeroizing::new([0x03; 32]), RELEASE_INFO, &aad, &plain).unwrap();
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
}
