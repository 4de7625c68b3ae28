//! The protobuf boundary of the core: the one module that uses
//! `idvault_proto` and `prost`.
//!
//! It decodes the canonical bytes of signed device messages (consent
//! grants, enrollments, device requests and the rule sets they carry) and
//! converts wire rules and event fields to and from the plain domain types
//! of [`crate::consent`] and [`crate::rules`], which never see a protobuf
//! type; it also encodes the released fields a partner opens. Callers use
//! it as `idvault_core::wire::…`.
//!
//! It must never decode anything but the canonical encoding (see
//! [`decode_canonical`]) and never decide anything a domain check decides:
//! values are checked by calling the domain's own validators. The only
//! protobuf value it hands out is a rule's wire form ([`Rule::to_pb`]).
//! No I/O, no clock, no randomness.

use idvault_proto::v1 as pb;
use prost::Message;
use zeroize::Zeroizing;

use crate::consent::{
    Enrollment, Grant, MAX_DEVICE_REQUEST_LEN, MAX_SIGNED_LEN, Refusal, UnverifiedEnrollment,
    parse_field_names, valid_audience, valid_device_id, valid_purpose,
};
use crate::device_request::{DeviceAction, DeviceCall};
use crate::rules::{self, Event, EventError, MAX_RULES, Rule, validate_rule_set};
use crate::subject::{FieldName, SubjectId};

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
    if !valid_audience(&g.audience) || !valid_purpose(&g.purpose) {
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

/// The plaintext of a release: `idvault.v1.ReleasedFields` holding
/// `fields` in the order given (docs/consent.md). The values are wiped
/// from the intermediate message; the bytes wipe themselves on drop.
pub fn encode_released_fields(fields: &[(FieldName, &str)]) -> Zeroizing<Vec<u8>> {
    let mut plain = pb::ReleasedFields {
        fields: fields
            .iter()
            .map(|(name, value)| pb::Field {
                name: name.as_str().to_owned(),
                value: (*value).to_owned(),
            })
            .collect(),
    };
    let bytes = Zeroizing::new(plain.encode_to_vec());
    for f in &mut plain.fields {
        zeroize::Zeroize::zeroize(&mut f.value);
    }
    bytes
}

/// Decodes an enrollment and checks its proof of possession: the key it
/// carries signed these exact bytes.
pub fn verify_enrollment(bytes: &[u8], sig: &[u8]) -> Result<Enrollment, Refusal> {
    crate::consent::check_enrollment(decode_enrollment(bytes)?, bytes, sig)
}

/// Decodes enrollment bytes whose signature is still to be checked (by
/// [`verify_enrollment`], with the key they carry).
pub(crate) fn decode_enrollment(bytes: &[u8]) -> Result<UnverifiedEnrollment, Refusal> {
    let e: pb::DeviceEnrollment = decode_canonical(bytes).ok_or(Refusal::Malformed)?;
    Ok(UnverifiedEnrollment {
        subject_id: e.subject_id,
        code: Zeroizing::new(e.enrollment_code),
        public_key: e.public_key,
    })
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
        Action::LinkEntity(l) if rules::valid_entity(&l.entity) => {
            DeviceAction::LinkEntity(l.entity)
        }
        Action::UnlinkEntity(l) if rules::valid_entity(&l.entity) => {
            DeviceAction::UnlinkEntity(l.entity)
        }
        Action::LinkEntity(_) | Action::UnlinkEntity(_) => return Err(Refusal::Malformed),
        Action::SetRules(r) => DeviceAction::SetRules(rule_set(r.rules)?),
        Action::ListRules(_) => DeviceAction::ListRules,
        Action::SuggestRules(_) => DeviceAction::SuggestRules,
        Action::IssueCredential(c) => DeviceAction::IssueCredential {
            claims: claim_list(c.claims)?,
            response_key: crate::consent::ReleasePublicKey::from_sec1(&c.response_key)
                .ok_or(Refusal::Malformed)?,
        },
        Action::RevokeCredential(c) if crate::sdjwt::status::valid_uri(&c.status_list_uri) => {
            DeviceAction::RevokeCredential(crate::sdjwt::status::StatusRef {
                idx: c.index,
                uri: c.status_list_uri,
            })
        }
        Action::RevokeCredential(_) => return Err(Refusal::Malformed),
        Action::LookupTransaction(l) => DeviceAction::LookupTransaction(
            crate::transaction::TransactionCode::parse(&l.code).map_err(|_| Refusal::Malformed)?,
        ),
        Action::AnswerTransaction(a) => {
            if !a.approve && !a.claims.is_empty() {
                return Err(Refusal::Malformed);
            }
            DeviceAction::AnswerTransaction {
                id: crate::transaction::parse_id(&a.transaction_id).ok_or(Refusal::Malformed)?,
                code: crate::transaction::TransactionCode::parse(&a.code)
                    .map_err(|_| Refusal::Malformed)?,
                approve: a.approve,
                claims: claim_list(a.claims)?,
                shown: a.shown.try_into().map_err(|_| Refusal::Malformed)?,
            }
        }
    };
    Ok(DeviceCall {
        request_id,
        issued_at: r.issued_at,
        action,
    })
}

/// Validates the claims a device asks a credential for: known names
/// (crate::sdjwt::claims), each once; returned sorted.
fn claim_list(mut claims: Vec<String>) -> Result<Vec<String>, Refusal> {
    if claims.len() > crate::sdjwt::claims::CLAIM_NAMES.len()
        || !claims.iter().all(|c| crate::sdjwt::claims::is_claim(c))
    {
        return Err(Refusal::Malformed);
    }
    claims.sort();
    let n = claims.len();
    claims.dedup();
    if claims.len() != n {
        return Err(Refusal::Malformed);
    }
    Ok(claims)
}

impl Rule {
    /// Validates a rule from the wire (its `rule_id` is ignored: the vault
    /// derives it). Field names must be unique; they are sorted. See
    /// [`Rule::new`].
    pub fn from_pb(r: pb::Rule) -> Result<Self, Refusal> {
        Self::new(r.source, r.event_type, r.target, r.command, r.fields)
    }

    /// The wire form, with its id.
    pub fn to_pb(&self) -> pb::Rule {
        pb::Rule {
            rule_id: self.id(),
            source: self.source.clone(),
            event_type: self.event_type.clone(),
            target: self.target.clone(),
            command: self.command.clone(),
            fields: self.fields.clone(),
        }
    }
}

/// Validates a rule set from the wire: at most [`MAX_RULES`], no rule
/// twice. Sorted by id. See [`validate_rule_set`].
pub fn rule_set(rules: Vec<pb::Rule>) -> Result<Vec<Rule>, Refusal> {
    // Refused before any rule is converted, as well as after.
    if rules.len() > MAX_RULES {
        return Err(Refusal::Malformed);
    }
    let rules = rules
        .into_iter()
        .map(Rule::from_pb)
        .collect::<Result<Vec<_>, _>>()?;
    validate_rule_set(rules)
}

/// Validates an event's type, id and wire fields. See [`Event::new`].
pub fn validate_event(
    event_type: String,
    event_id: String,
    fields: Vec<pb::EventField>,
) -> Result<Event, EventError> {
    Event::new(
        event_type,
        event_id,
        fields.into_iter().map(|f| (f.name, f.value)).collect(),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid single-use grant, as a device would sign it.
    pub(crate) fn sample_grant() -> pb::ConsentGrant {
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

    fn request(action: pb::device_request::Action) -> pb::DeviceRequest {
        pb::DeviceRequest {
            request_id: vec![7; 16],
            issued_at: 1_795_000_000,
            action: Some(action),
        }
    }

    #[test]
    fn device_requests_decode_strictly() {
        use pb::device_request::Action;
        let entity = "spiffe://idvault.dev/partner/bank";
        let ok = request(Action::LinkEntity(pb::LinkEntity {
            entity: entity.into(),
        }));
        assert_eq!(
            decode_device_request(&ok.encode_to_vec()),
            Ok(DeviceCall {
                request_id: [7; 16],
                issued_at: 1_795_000_000,
                action: DeviceAction::LinkEntity(entity.into()),
            })
        );
        // A rule set arrives validated and sorted by id.
        let wire_rule = |command: &str| pb::Rule {
            rule_id: "ignored".into(),
            source: entity.into(),
            event_type: "address.changed".into(),
            target: "spiffe://idvault.dev/partner/telco".into(),
            command: command.into(),
            fields: vec!["postcode".into(), "address".into()],
        };
        let set = request(Action::SetRules(pb::SetRules {
            rules: vec![wire_rule("b"), wire_rule("a")],
        }));
        let Ok(DeviceCall {
            action: DeviceAction::SetRules(rules),
            ..
        }) = decode_device_request(&set.encode_to_vec())
        else {
            panic!("a valid rule set did not decode");
        };
        assert_eq!(rules.len(), 2);
        assert!(rules.windows(2).all(|w| w[0].id() < w[1].id()));
        assert!(rules.iter().all(|r| r.fields == ["address", "postcode"]));
        let revoke = |uri: &str| {
            request(Action::RevokeCredential(pb::RevokeCredential {
                status_list_uri: uri.into(),
                index: 42,
            }))
        };
        assert_eq!(
            decode_device_request(&revoke("https://v.example/statuslists/1").encode_to_vec())
                .map(|c| c.action),
            Ok(DeviceAction::RevokeCredential(
                crate::sdjwt::status::StatusRef {
                    idx: 42,
                    uri: "https://v.example/statuslists/1".into()
                }
            ))
        );
        for bad in ["", "has space", &"u".repeat(513)] {
            assert!(decode_device_request(&revoke(bad).encode_to_vec()).is_err());
        }
        let answer = |id: &str, code: &str, approve: bool, claims: &[&str]| {
            request(Action::AnswerTransaction(pb::AnswerTransaction {
                transaction_id: id.into(),
                code: code.into(),
                approve,
                claims: claims.iter().map(|c| (*c).into()).collect(),
                shown: vec![9; 32],
            }))
        };
        let id = "tx_00112233445566778899aabbccddeeff";
        let Ok(DeviceCall {
            action:
                DeviceAction::AnswerTransaction {
                    approve: true,
                    claims,
                    ..
                },
            ..
        }) = decode_device_request(
            &answer(id, "abcd-efgh", true, &["given_name", "age_over_18"]).encode_to_vec(),
        )
        else {
            panic!("a valid answer did not decode");
        };
        assert_eq!(claims, ["age_over_18", "given_name"]);
        for bad in [
            answer("tx_00", "abcd-efgh", true, &[]),
            answer(id, "abcd-efg", true, &[]),
            answer(id, "abcd-efgh", false, &["given_name"]),
            answer(id, "abcd-efgh", true, &["shoe_size"]),
            request(Action::AnswerTransaction(pb::AnswerTransaction {
                transaction_id: id.into(),
                code: "abcd-efgh".into(),
                approve: true,
                claims: Vec::new(),
                shown: vec![9; 31],
            })),
            request(Action::LookupTransaction(pb::LookupTransaction {
                code: "UUUU-UUUU".into(),
            })),
        ] {
            assert!(decode_device_request(&bad.encode_to_vec()).is_err());
        }
        // Refused: no action, a short id, a bad device id or entity, a bad
        // rule, a non-canonical encoding, an oversized request.
        let mut none = request(Action::ListReceipts(pb::ListReceipts {}));
        none.action = None;
        let mut short = request(Action::ListDevices(pb::ListDevices {}));
        short.request_id = vec![7; 15];
        let bad = [
            none,
            short,
            request(Action::RevokeDevice(pb::RevokeDevice {
                device_id: "dev_XYZ".into(),
            })),
            request(Action::RevokeConsent(pb::RevokeConsent {
                consent_id: vec![1; 17],
            })),
            request(Action::UnlinkEntity(pb::UnlinkEntity {
                entity: "partner-a".into(),
            })),
            request(Action::SetRules(pb::SetRules {
                rules: vec![wire_rule("Not A Code")],
            })),
            request(Action::SetRules(pb::SetRules {
                rules: vec![wire_rule("a"), wire_rule("a")],
            })),
        ];
        for r in bad {
            assert_eq!(
                decode_device_request(&r.encode_to_vec()),
                Err(Refusal::Malformed),
                "{r:?}"
            );
        }
        let mut unknown = ok.encode_to_vec();
        unknown.extend_from_slice(&[0xf8, 0x01, 0x01]);
        assert_eq!(decode_device_request(&unknown), Err(Refusal::Malformed));
        let huge = request(Action::SetRules(pb::SetRules {
            rules: vec![wire_rule(&"c".repeat(60)); 1024],
        }));
        assert!(huge.encoded_len() > MAX_DEVICE_REQUEST_LEN);
        assert_eq!(
            decode_device_request(&huge.encode_to_vec()),
            Err(Refusal::Malformed)
        );
    }
}
