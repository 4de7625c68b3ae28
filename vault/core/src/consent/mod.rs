//! Consent-signed release, the pure part: device keys, signature checks,
//! grant validation, enrollment codes, device requests and the HPKE seal of
//! a release (docs/consent.md is the specification).
//!
//! "Sign the bytes, send the bytes": a device signs a context string and
//! the exact serialized message; the vault verifies those bytes first and
//! only then decodes them, and it decodes only the canonical encoding
//! (see `crate::wire::decode_canonical`) so that no two readers of a signed message
//! can disagree on what it says. The decoding itself lives in the crate's
//! `wire` module; this module and its submodules work on the decoded
//! domain types and must never touch protobuf types, the clock or the OS
//! RNG (time comes in as Unix seconds, randomness as a [`Rng`](crate::Rng)).
//!
//! Submodules, each re-exported here:
//! - `device_key`: device public keys, device ids and the one ECDSA
//!   verifier.
//! - `grant`: consent grants, their limits and time window.
//! - `enrollment`: device enrollment and enrollment codes.
//! - `records`: the consent state the vault keeps (devices, codes,
//!   challenges, consents, receipts) and the pure checks on it.
//! - `release`: the HPKE seal of released fields to a partner.

mod device_key;
mod enrollment;
mod grant;
mod records;
mod release;

pub use device_key::{
    DevicePublicKey, device_id, normalize_low_s, p1363_from_der, valid_device_id, verify,
};
pub use enrollment::{Enrollment, enrollment_code_hash, generate_enrollment_code};
pub use grant::{ConsentLimits, Grant, grant_hash, parse_field_names, valid_purpose};
pub use records::{Challenge, Consent, Device, EnrollmentCode, Receipt};
pub use release::{
    CREDENTIAL_SEAL_INFO, MAX_RELEASE_NONCE, ReleasePublicKey, ReleaseSecretKey, ReleaseSigner,
    ReleaseVerifier, credential_aad, release_aad, release_signed_bytes, seal_credential,
    seal_release,
};

pub(crate) use enrollment::{UnverifiedEnrollment, check_enrollment};
pub(crate) use grant::valid_audience;

/// Signing context of a consent grant (`idvault.v1.ConsentGrant`).
pub const GRANT_CONTEXT: &[u8] = b"idvault/v1/consent-grant\0";
/// Signing context of a device enrollment (`idvault.v1.DeviceEnrollment`).
pub const ENROLL_CONTEXT: &[u8] = b"idvault/v1/device-enrollment\0";
/// Signing context of a device request (`idvault.v1.DeviceRequest`).
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
    /// A rule's target is a partner the policies do not let receive
    /// commands: its share of the outbox would fill and never drain.
    #[error("a rule's target may not receive commands")]
    TargetCannotReceive,
    /// No outstanding transaction of this person has that code (the
    /// attempt is counted against their outstanding codes).
    #[error("the code does not match a transaction of this person")]
    WrongCode,
    /// The transaction's code has expired.
    #[error("the transaction code has expired")]
    CodeExpired,
    /// The transaction was already answered or has ended.
    #[error("the transaction has already been answered or has ended")]
    CodeUsed,
    /// The code belongs to another person's transaction (which ends).
    #[error("the code belongs to another person; that transaction is ended")]
    WrongPerson,
    /// Too many wrong codes: this device may not enter codes for a while,
    /// or the transaction died of them.
    #[error("too many wrong codes; try again later")]
    TooManyAttempts,
    /// The answer's digest of what the phone showed does not match the
    /// transaction (the lookup's answer was altered on its way).
    #[error("the answer is not to the transaction as the vault holds it")]
    ShownMismatch,
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
            Self::TargetCannotReceive => "target_cannot_receive",
            Self::WrongCode => "wrong_code",
            Self::CodeExpired => "code_expired",
            Self::CodeUsed => "code_used",
            Self::WrongPerson => "wrong_person",
            Self::TooManyAttempts => "too_many_attempts",
            Self::ShownMismatch => "shown_mismatch",
        }
    }
}
