//! The vault's consent state as domain values: enrolled devices, one-time
//! enrollment codes, challenges, presented consents and release receipts,
//! with the pure checks made on them before anything is released or
//! enrolled. The store maps its rows to and from these (rows never leave
//! it); this module must never read the clock (times come in) or decide
//! anything from a value it was not given.

use super::{ID_LEN, Refusal};
use crate::subject::{FieldName, SubjectId};

/// An enrolled device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// `dev_…` id.
    pub device_id: String,
    /// Its subject.
    pub subject: SubjectId,
    /// SEC1 uncompressed public key.
    pub public_key: Vec<u8>,
    /// Partner that issued the enrollment code.
    pub enrolled_by: String,
    /// Enrollment time (Unix milliseconds).
    pub enrolled_at_ms: i64,
    /// Revocation time, if revoked.
    pub revoked_at_ms: Option<i64>,
}

impl Device {
    /// Whether this device is still the active key of `subject`: not
    /// revoked, same subject. An unknown device is the caller's `None`.
    pub fn check_active_for(&self, subject: &SubjectId) -> Result<(), Refusal> {
        if self.subject != *subject {
            Err(Refusal::UnknownDevice)
        } else if self.revoked_at_ms.is_some() {
            Err(Refusal::DeviceRevoked)
        } else {
            Ok(())
        }
    }

    /// Re-checks, inside a write, that this stored device is still the one
    /// verified outside it: same subject and key, not revoked.
    pub fn check_still(&self, seen: &Device) -> Result<(), Refusal> {
        if self.public_key != seen.public_key {
            return Err(Refusal::UnknownDevice);
        }
        self.check_active_for(&seen.subject)
    }
}

/// A one-time enrollment code's state (the code itself is stored only as
/// a hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentCode {
    /// Subject it enrolls to.
    pub subject: SubjectId,
    /// Partner it was issued to.
    pub issued_to: String,
    /// Expiry (Unix milliseconds).
    pub expires_at_ms: i64,
    /// Whether it was used.
    pub used: bool,
}

impl EnrollmentCode {
    /// Whether the code may enroll a device to `subject` at `now_ms`.
    /// Unknown, used, expired and other-subject codes are one refusal: the
    /// answer must not help guess codes.
    pub fn check(code: Option<&Self>, subject: &SubjectId, now_ms: i64) -> Result<(), Refusal> {
        match code {
            Some(c) if !c.used && c.subject == *subject && now_ms < c.expires_at_ms => Ok(()),
            _ => Err(Refusal::EnrollmentCodeInvalid),
        }
    }
}

/// A challenge's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Name of the partner it was issued to.
    pub partner: String,
    /// Subject it is for.
    pub subject: SubjectId,
    /// Expiry (Unix milliseconds).
    pub expires_at_ms: i64,
    /// Whether it was used.
    pub used: bool,
}

impl Challenge {
    /// Whether `challenge` (as stored, or `None` when unknown) may back a
    /// grant presented by `partner` about `subject` at `now_ms`: issued to
    /// that partner for that subject, unused, unexpired.
    pub fn check(
        challenge: Option<&Self>,
        partner: &str,
        subject: &SubjectId,
        now_ms: i64,
    ) -> Result<(), Refusal> {
        match challenge {
            None => Err(Refusal::ChallengeUnknown),
            Some(c) if c.partner != partner || c.subject != *subject => {
                Err(Refusal::ChallengeMismatch)
            }
            Some(c) if c.used => Err(Refusal::ChallengeReused),
            Some(c) if now_ms >= c.expires_at_ms => Err(Refusal::ChallengeExpired),
            Some(_) => Ok(()),
        }
    }
}

/// A presented consent (a verified grant, as kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consent {
    /// Consent id.
    pub consent_id: [u8; ID_LEN],
    /// Subject.
    pub subject: SubjectId,
    /// Device that signed.
    pub device_id: String,
    /// The audience: the receiving partner's SPIFFE id.
    pub audience: String,
    /// Purpose code.
    pub purpose: String,
    /// Consented catalogue fields.
    pub fields: Vec<FieldName>,
    /// Standing (reusable until expiry) or single-use.
    pub standing: bool,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// SHA-256 of the signed grant bytes.
    pub grant_hash: [u8; 32],
    /// When it was presented (Unix milliseconds).
    pub presented_at_ms: i64,
    /// Revocation time, if revoked.
    pub revoked_at_ms: Option<i64>,
    /// The signed grant bytes as presented (kept so that every later use
    /// can verify the person's signature again, not trust this row).
    pub grant: Vec<u8>,
    /// The device's signature over [`Self::grant`].
    pub signature: Vec<u8>,
}

impl Consent {
    /// Whether the kept grant is signed by `key` (the device this row
    /// names) and says exactly what this row says. A row a database
    /// writer made or edited fails here unless they hold the device key.
    pub fn kept_grant_matches(&self, key: &super::DevicePublicKey) -> bool {
        if key
            .verify(super::GRANT_CONTEXT, &self.grant, &self.signature)
            .is_err()
            || !crate::crypto::ct_eq(&super::grant_hash(&self.grant), &self.grant_hash)
        {
            return false;
        }
        crate::wire::decode_grant(&self.grant).is_ok_and(|g| {
            g.consent_id == self.consent_id
                && g.subject == self.subject
                && g.audience == self.audience
                && g.purpose == self.purpose
                && g.fields == self.fields
                && g.standing == self.standing
                && g.issued_at == self.issued_at
                && g.expires_at == self.expires_at
        })
    }

    /// Whether `consent` (as stored, or `None`) may be presented again by
    /// its id by the partner `audience` at `now_secs`. Another partner's
    /// consent reads as unknown.
    pub fn check_standing<'c>(
        consent: Option<&'c Self>,
        audience: &str,
        now_secs: i64,
    ) -> Result<&'c Self, Refusal> {
        let c = match consent {
            Some(c) if c.audience == audience => c,
            _ => return Err(Refusal::ConsentUnknown),
        };
        if !c.standing {
            Err(Refusal::ConsentReplayed)
        } else if c.revoked_at_ms.is_some() {
            Err(Refusal::ConsentRevoked)
        } else if now_secs >= c.expires_at {
            Err(Refusal::Expired)
        } else {
            Ok(c)
        }
    }
}

/// A release receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Receipt id.
    pub receipt_id: String,
    /// Consent id.
    pub consent_id: [u8; ID_LEN],
    /// Subject.
    pub subject: SubjectId,
    /// The receiving partner's SPIFFE id.
    pub partner: String,
    /// Purpose code.
    pub purpose: String,
    /// The fields released: consented fields the subject had.
    pub fields: Vec<FieldName>,
    /// Release time (Unix milliseconds).
    pub released_at_ms: i64,
    /// SHA-256 of the signed grant bytes.
    pub grant_hash: [u8; 32],
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(b: u8) -> SubjectId {
        SubjectId::from_bytes([b; 16])
    }

    #[test]
    fn challenges_bind_partner_subject_use_and_time() {
        let c = Challenge {
            partner: "p".into(),
            subject: subject(1),
            expires_at_ms: 1000,
            used: false,
        };
        let s = subject(1);
        assert_eq!(Challenge::check(Some(&c), "p", &s, 999), Ok(()));
        assert_eq!(
            Challenge::check(None, "p", &s, 0),
            Err(Refusal::ChallengeUnknown)
        );
        assert_eq!(
            Challenge::check(Some(&c), "q", &s, 0),
            Err(Refusal::ChallengeMismatch)
        );
        assert_eq!(
            Challenge::check(Some(&c), "p", &subject(2), 0),
            Err(Refusal::ChallengeMismatch)
        );
        assert_eq!(
            Challenge::check(Some(&c), "p", &s, 1000),
            Err(Refusal::ChallengeExpired)
        );
        let used = Challenge { used: true, ..c };
        assert_eq!(
            Challenge::check(Some(&used), "p", &s, 0),
            Err(Refusal::ChallengeReused)
        );
    }

    #[test]
    fn enrollment_codes_refuse_alike() {
        let c = EnrollmentCode {
            subject: subject(1),
            issued_to: "p".into(),
            expires_at_ms: 1000,
            used: false,
        };
        assert_eq!(EnrollmentCode::check(Some(&c), &subject(1), 999), Ok(()));
        for (code, s, now) in [
            (None, subject(1), 0),
            (Some(&c), subject(2), 0),
            (Some(&c), subject(1), 1000),
        ] {
            assert_eq!(
                EnrollmentCode::check(code, &s, now),
                Err(Refusal::EnrollmentCodeInvalid)
            );
        }
        let used = EnrollmentCode { used: true, ..c };
        assert_eq!(
            EnrollmentCode::check(Some(&used), &subject(1), 0),
            Err(Refusal::EnrollmentCodeInvalid)
        );
    }

    #[test]
    fn standing_consents_are_checked_in_order() {
        let c = Consent {
            consent_id: [0; ID_LEN],
            subject: subject(1),
            device_id: "dev_x".into(),
            audience: "spiffe://a".into(),
            purpose: "kyc".into(),
            fields: Vec::new(),
            standing: true,
            issued_at: 0,
            expires_at: 100,
            grant_hash: [0; 32],
            presented_at_ms: 0,
            revoked_at_ms: None,
            grant: Vec::new(),
            signature: Vec::new(),
        };
        assert!(Consent::check_standing(Some(&c), "spiffe://a", 99).is_ok());
        let err = |c: Option<&Consent>, who, now| Consent::check_standing(c, who, now).err();
        assert_eq!(err(None, "spiffe://a", 0), Some(Refusal::ConsentUnknown));
        assert_eq!(
            err(Some(&c), "spiffe://b", 0),
            Some(Refusal::ConsentUnknown)
        );
        assert_eq!(err(Some(&c), "spiffe://a", 100), Some(Refusal::Expired));
        let single = Consent {
            standing: false,
            ..c.clone()
        };
        assert_eq!(
            err(Some(&single), "spiffe://a", 0),
            Some(Refusal::ConsentReplayed)
        );
        let revoked = Consent {
            revoked_at_ms: Some(1),
            ..c
        };
        assert_eq!(
            err(Some(&revoked), "spiffe://a", 0),
            Some(Refusal::ConsentRevoked)
        );
    }

    #[test]
    fn devices_stay_bound_to_key_and_subject() {
        let d = Device {
            device_id: "dev_x".into(),
            subject: subject(1),
            public_key: vec![4; 65],
            enrolled_by: "p".into(),
            enrolled_at_ms: 0,
            revoked_at_ms: None,
        };
        assert_eq!(d.check_still(&d), Ok(()));
        let other_key = Device {
            public_key: vec![5; 65],
            ..d.clone()
        };
        assert_eq!(other_key.check_still(&d), Err(Refusal::UnknownDevice));
        let other_subject = Device {
            subject: subject(2),
            ..d.clone()
        };
        assert_eq!(other_subject.check_still(&d), Err(Refusal::UnknownDevice));
        let revoked = Device {
            revoked_at_ms: Some(1),
            ..d.clone()
        };
        assert_eq!(revoked.check_still(&d), Err(Refusal::DeviceRevoked));
        assert_eq!(
            revoked.check_active_for(&subject(1)),
            Err(Refusal::DeviceRevoked)
        );
    }

    /// A standing consent row as the vault keeps it, signed by `key`.
    fn kept(key: &p256::ecdsa::SigningKey) -> Consent {
        use p256::ecdsa::signature::MultipartSigner;
        use prost::Message;
        let s = subject(3);
        let grant = idvault_proto::v1::ConsentGrant {
            consent_id: vec![5; ID_LEN],
            subject_id: s.to_string(),
            audience: "spiffe://idvault.test/partner-a".into(),
            purpose: "kyc".into(),
            fields: vec!["email".into(), "given_name".into()],
            challenge: vec![6; 32],
            issued_at: 1_000,
            expires_at: 2_000,
            kind: idvault_proto::v1::ConsentKind::Standing as i32,
        }
        .encode_to_vec();
        let sig: p256::ecdsa::Signature = key
            .try_multipart_sign(&[super::super::GRANT_CONTEXT, &grant])
            .unwrap();
        Consent {
            consent_id: [5; ID_LEN],
            subject: s,
            device_id: "dev_x".into(),
            audience: "spiffe://idvault.test/partner-a".into(),
            purpose: "kyc".into(),
            fields: vec![
                FieldName::parse("email").unwrap(),
                FieldName::parse("given_name").unwrap(),
            ],
            standing: true,
            issued_at: 1_000,
            expires_at: 2_000,
            grant_hash: super::super::grant_hash(&grant),
            presented_at_ms: 0,
            revoked_at_ms: None,
            grant,
            signature: sig.normalize_s().to_bytes().to_vec(),
        }
    }

    #[test]
    fn a_kept_grant_must_be_signed_and_say_what_the_row_says() {
        let k = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
        let pk = super::super::DevicePublicKey::from_sec1(
            k.verifying_key().to_sec1_point(false).as_bytes(),
        )
        .unwrap();
        let c = kept(&k);
        assert!(c.kept_grant_matches(&pk));
        // Another device's key.
        let other = p256::ecdsa::SigningKey::from_slice(&[8u8; 32]).unwrap();
        let other_pk = super::super::DevicePublicKey::from_sec1(
            other.verifying_key().to_sec1_point(false).as_bytes(),
        )
        .unwrap();
        assert!(!c.kept_grant_matches(&other_pk));
        // A row widened or redirected after the fact.
        for edited in [
            Consent {
                purpose: "marketing".into(),
                ..c.clone()
            },
            Consent {
                audience: "spiffe://idvault.test/partner-b".into(),
                ..c.clone()
            },
            Consent {
                fields: vec![FieldName::parse("phone").unwrap()],
                ..c.clone()
            },
            Consent {
                expires_at: 9_000,
                ..c.clone()
            },
            Consent {
                subject: subject(4),
                ..c.clone()
            },
            Consent {
                consent_id: [6; ID_LEN],
                ..c.clone()
            },
            Consent {
                standing: false,
                ..c.clone()
            },
            Consent {
                grant_hash: [0; 32],
                ..c.clone()
            },
            Consent {
                grant: Vec::new(),
                ..c.clone()
            },
            Consent {
                signature: Vec::new(),
                ..c.clone()
            },
        ] {
            assert!(!edited.kept_grant_matches(&pk), "{edited:?}");
        }
    }
}
