//! Consent-signed release use cases: enrollment codes and device
//! enrollment, challenges, verified release sealed to the partner, and the
//! person's device-signed calls (receipts, revocation).
//!
//! Order of work for a release: authorise the partner, look the device up
//! and verify the signature over the bytes as sent, only then decode them,
//! check subject, audience, window and the partner's allowances, and in
//! one transaction claim the consent id and the challenge, decrypt the
//! consented fields, seal them, write the receipt and the audit record.
//! Any refusal rolls the transaction back and is audited on its own with
//! its reason token.

use idvault_policies::{Action, RequestContext, Resource};
use idvault_proto::v1 as pb;
use prost::Message;
use zeroize::Zeroizing;

use crate::config::Partner;
use crate::service::{Caller, Vault, VaultError};
use crate::store::{AuditedTx, ConsentRow, DeviceRow, ReceiptRow};
use idvault_core::consent::{
    self as c, CHALLENGE_LEN, DEVICE_REQUEST_CONTEXT, DeviceAction, DevicePublicKey, GRANT_CONTEXT,
    Grant, ID_LEN, Refusal,
};
use idvault_core::keys::{self, KeyError};
use idvault_core::packet;
use idvault_core::subject::{FieldName, SubjectId};

/// Most receipts a device listing returns.
pub const MAX_RECEIPTS: u32 = 1000;

/// A signed message as it arrived: bytes, signature, signing device.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The exact serialized message.
    pub bytes: Vec<u8>,
    /// P1363 signature.
    pub signature: Vec<u8>,
    /// Device id.
    pub device_id: String,
}

/// What a partner presents to Release.
#[derive(Debug, Clone)]
pub enum ReleaseInput {
    /// A signed grant, first presentation.
    Grant(Signed),
    /// A standing consent presented before.
    Standing(Vec<u8>),
}

/// A sealed release.
#[derive(Debug, Clone)]
pub struct Release {
    /// Consent id.
    pub consent_id: [u8; ID_LEN],
    /// Subject.
    pub subject: SubjectId,
    /// HPKE encapsulated key.
    pub enc: Vec<u8>,
    /// HPKE ciphertext of `ReleasedFields`.
    pub ciphertext: Vec<u8>,
    /// Receipt id.
    pub receipt_id: String,
    /// SHA-256 of the signed grant.
    pub grant_hash: [u8; 32],
}

/// Which device RPC is being served (the signed action must match).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceOp {
    /// ListReceipts.
    ListReceipts,
    /// RevokeConsent.
    RevokeConsent,
    /// ListDevices.
    ListDevices,
    /// RevokeDevice.
    RevokeDevice,
    /// LinkEntity.
    LinkEntity,
    /// UnlinkEntity.
    UnlinkEntity,
    /// SetRules.
    SetRules,
    /// ListRules.
    ListRules,
    /// SuggestRules.
    SuggestRules,
}

impl DeviceOp {
    fn matches(self, a: &DeviceAction) -> bool {
        matches!(
            (self, a),
            (Self::ListReceipts, DeviceAction::ListReceipts)
                | (Self::RevokeConsent, DeviceAction::RevokeConsent(_))
                | (Self::ListDevices, DeviceAction::ListDevices)
                | (Self::RevokeDevice, DeviceAction::RevokeDevice(_))
                | (Self::LinkEntity, DeviceAction::LinkEntity(_))
                | (Self::UnlinkEntity, DeviceAction::UnlinkEntity(_))
                | (Self::SetRules, DeviceAction::SetRules(_))
                | (Self::ListRules, DeviceAction::ListRules)
                | (Self::SuggestRules, DeviceAction::SuggestRules)
        )
    }

    fn name(self) -> &'static str {
        match self {
            Self::ListReceipts => "list_receipts",
            Self::RevokeConsent => "revoke_consent",
            Self::ListDevices => "list_devices",
            Self::RevokeDevice => "revoke_device",
            Self::LinkEntity => "link_entity",
            Self::UnlinkEntity => "unlink_entity",
            Self::SetRules => "set_rules",
            Self::ListRules => "list_rules",
            Self::SuggestRules => "suggest_rules",
        }
    }
}

/// Answer to a device call.
#[derive(Debug, Clone)]
pub enum DeviceOutcome {
    /// The subject's receipts, newest first.
    Receipts(Vec<ReceiptRow>),
    /// The subject's devices.
    Devices(Vec<DeviceRow>),
    /// Whether a revocation changed anything.
    Revoked(bool),
    /// Whether a link was made.
    Linked(bool),
    /// Whether a link was removed, and how many rules with it.
    Unlinked {
        /// The entity was linked.
        unlinked: bool,
        /// Rules removed with it.
        rules_removed: u32,
    },
    /// The rules now stored.
    Rules(Vec<idvault_core::rules::Rule>),
    /// Linked entities `(entity, linked_at_ms)` and rules.
    RuleList {
        /// Linked entities.
        entities: Vec<(String, i64)>,
        /// Rules.
        rules: Vec<idvault_core::rules::Rule>,
    },
    /// Suggested rule sets, best first.
    Suggestions(Vec<idvault_core::rules::Suggestion>),
}

fn refused(r: Refusal) -> VaultError {
    VaultError::Refused(r)
}

fn random_id(vault: &Vault, prefix: &str) -> Result<String, VaultError> {
    let mut b = [0u8; 16];
    vault.rng().fill(&mut b).map_err(KeyError::from)?;
    Ok(format!("{prefix}{}", hex::encode(b)))
}

fn field_list(fields: &[FieldName]) -> String {
    fields
        .iter()
        .map(|f| f.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Why the policies refused a release: the registry allowance it breaks,
/// or a policy of the operator's own.
fn release_refusal(partner: &Partner, purpose: &str, fields: &[FieldName]) -> Refusal {
    if !partner.release_purposes.iter().any(|p| p == purpose) {
        Refusal::PurposeNotAllowed
    } else if !fields.iter().all(|f| partner.release_fields.contains(f)) {
        Refusal::FieldsNotAllowed
    } else {
        Refusal::PolicyDenied
    }
}

impl Vault {
    /// The policy decision on releasing `fields` of `subject` for
    /// `purpose` under a verified consent.
    fn release_allowed(
        &self,
        caller: &Caller,
        partner: &Partner,
        subject: &SubjectId,
        purpose: &str,
        fields: &[FieldName],
    ) -> Result<(), Refusal> {
        let names: Vec<&str> = fields.iter().map(|f| f.as_str()).collect();
        let subject = subject.to_string();
        let ctx = RequestContext {
            purpose,
            fields: &names,
            consent_present: true,
            now: 0,
        };
        if self.decide(
            caller,
            partner,
            Action::ReleaseConsented,
            Resource::Subject(&subject),
            ctx,
        ) {
            Ok(())
        } else {
            Err(release_refusal(partner, purpose, fields))
        }
    }

    fn now_secs(&self) -> i64 {
        self.now_millis().div_euclid(1000)
    }

    /// Starts an audited transaction; failing to is an audit failure.
    pub(crate) async fn begin(&self) -> Result<AuditedTx, VaultError> {
        self.store()
            .begin_audited()
            .await
            .map_err(VaultError::AuditUnavailable)
    }

    /// Runs `f` and audits its failure (if any) under `action`.
    async fn audited<T>(
        &self,
        caller: &Caller,
        action: Action,
        subject: Option<&SubjectId>,
        r: Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        match r {
            Ok(v) => Ok(v),
            Err(e) => self.audit_failure(caller, action, subject, e).await,
        }
    }

    /// Issues a one-time enrollment code for `subject`; returns the code
    /// and its expiry (Unix seconds).
    pub async fn issue_enrollment_code(
        &self,
        caller: &Caller,
        subject: &str,
    ) -> Result<(Zeroizing<String>, i64), VaultError> {
        const A: Action = Action::IssueEnrollmentCode;
        let partner = self.authorize(caller, A).await?;
        let id = self.parse_subject_id(caller, A, subject).await?;
        self.authorize_subject(caller, partner, A, &id, &[]).await?;
        let r = async {
            // Only the partner that created the subject (and so verified
            // the person) may let a phone enroll to it; another partner's
            // subject reads as absent, as everywhere else.
            let (mut tx, _) = self.open_owned(partner, &id).await?;
            let code = c::generate_enrollment_code(self.rng()).map_err(KeyError::from)?;
            let ttl = i64::from(self.consent_settings().enrollment_code_ttl_seconds);
            let expires = self.now_secs() + ttl;
            tx.insert_enrollment_code(
                &c::enrollment_code_hash(&code),
                &id,
                &partner.name,
                expires * 1000,
            )
            .await?;
            self.commit_event(tx, caller, A, Some(&id), format!("expires_at={expires}"))
                .await?;
            Ok((code, expires))
        }
        .await;
        self.audited(caller, A, Some(&id), r).await
    }

    /// Enrolls a device key with a signed enrollment (proof of possession)
    /// and a one-time code. Called by a wallet app.
    pub async fn enroll_device(
        &self,
        caller: &Caller,
        enrollment: &[u8],
        signature: &[u8],
    ) -> Result<String, VaultError> {
        const A: Action = Action::DeviceCall;
        self.authorize(caller, A).await?;
        let e = match c::verify_enrollment(enrollment, signature) {
            Ok(e) => e,
            Err(r) => return self.refuse(caller, A, None, refused(r)).await,
        };
        let r = async {
            let now = self.now_millis();
            let hash = c::enrollment_code_hash(&e.code);
            let mut tx = self.begin().await?;
            // Unknown, used, expired and other-subject codes are one
            // refusal: the answer must not help guess codes.
            let issued_to = match tx.enrollment_code(&hash).await? {
                Some(row) if !row.used && row.subject == e.subject && now < row.expires_at_ms => {
                    row.issued_to
                }
                _ => return Err(refused(Refusal::EnrollmentCodeInvalid)),
            };
            if !tx.use_enrollment_code(&hash, now).await? || tx.subject(&e.subject).await?.is_none()
            {
                return Err(refused(Refusal::EnrollmentCodeInvalid));
            }
            let sec1 = e.key.to_sec1();
            let device_id = c::device_id(&sec1);
            let row = DeviceRow {
                device_id: device_id.clone(),
                subject: e.subject,
                public_key: sec1,
                enrolled_by: issued_to,
                enrolled_at_ms: now,
                revoked_at_ms: None,
            };
            if !tx.insert_device(&row).await? {
                return Err(refused(Refusal::DeviceAlreadyEnrolled));
            }
            self.commit_event(
                tx,
                caller,
                A,
                Some(&e.subject),
                format!("op=enroll device={device_id}"),
            )
            .await?;
            Ok(device_id)
        }
        .await;
        self.audited(caller, A, Some(&e.subject), r).await
    }

    /// Issues a single-use challenge bound to the calling partner and
    /// `subject`; returns it and its expiry (Unix seconds).
    pub async fn issue_challenge(
        &self,
        caller: &Caller,
        subject: &str,
    ) -> Result<([u8; CHALLENGE_LEN], i64), VaultError> {
        const A: Action = Action::RequestChallenge;
        let partner = self.authorize(caller, A).await?;
        let id = self.parse_subject_id(caller, A, subject).await?;
        self.authorize_subject(caller, partner, A, &id, &[]).await?;
        let r = async {
            let mut tx = self.begin().await?;
            if tx.subject(&id).await?.is_none() {
                return Err(VaultError::NotFound);
            }
            let mut challenge = [0u8; CHALLENGE_LEN];
            self.rng().fill(&mut challenge).map_err(KeyError::from)?;
            let ttl = i64::from(self.consent_settings().challenge_ttl_seconds);
            let expires_ms = self.now_millis() + ttl * 1000;
            tx.insert_challenge(&challenge, &partner.name, &id, expires_ms)
                .await?;
            let expires = expires_ms.div_euclid(1000);
            self.commit_event(tx, caller, A, Some(&id), format!("expires_at={expires}"))
                .await?;
            Ok((challenge, expires))
        }
        .await;
        self.audited(caller, A, Some(&id), r).await
    }

    /// An active device and its key, read outside the write transaction.
    async fn active_device(
        &self,
        device_id: &str,
    ) -> Result<(DeviceRow, DevicePublicKey), VaultError> {
        if !c::valid_device_id(device_id) {
            return Err(refused(Refusal::Malformed));
        }
        let row = self
            .store()
            .device(device_id)
            .await?
            .ok_or(refused(Refusal::UnknownDevice))?;
        if row.revoked_at_ms.is_some() {
            return Err(refused(Refusal::DeviceRevoked));
        }
        let key = DevicePublicKey::from_sec1(&row.public_key)
            .map_err(|_| VaultError::Integrity("stored device key"))?;
        Ok((row, key))
    }

    /// Re-checks inside `tx` that the device verified outside it is still
    /// the same, active key of the same subject.
    async fn still_active(&self, tx: &mut AuditedTx, seen: &DeviceRow) -> Result<(), VaultError> {
        match tx.device(&seen.device_id).await? {
            Some(d) if d.subject != seen.subject || d.public_key != seen.public_key => {
                Err(refused(Refusal::UnknownDevice))
            }
            Some(d) if d.revoked_at_ms.is_none() => Ok(()),
            Some(_) => Err(refused(Refusal::DeviceRevoked)),
            None => Err(refused(Refusal::UnknownDevice)),
        }
    }

    /// Verifies a consent and releases the consented fields sealed to the
    /// calling partner's release key.
    pub async fn release(
        &self,
        caller: &Caller,
        input: ReleaseInput,
    ) -> Result<Release, VaultError> {
        const A: Action = Action::ReleaseConsented;
        // The gate: may this partner present consents at all? (Checked
        // before any signature work.) The release itself is decided once
        // the consent verified.
        let partner = self.authorize(caller, Action::PresentConsent).await?;
        match input {
            ReleaseInput::Grant(s) => {
                let r = match self.verify_grant(caller, partner, &s).await {
                    Ok((g, device, hash)) => self
                        .release_grant(caller, partner, &s, &g, &device, hash)
                        .await
                        .map_err(|e| (Some(g.subject), e)),
                    Err(e) => Err(e),
                };
                match r {
                    Ok(v) => Ok(v),
                    // Once the signature verified, the record names the subject.
                    Err((subject, e)) => self.audited(caller, A, subject.as_ref(), Err(e)).await,
                }
            }
            ReleaseInput::Standing(id) => {
                let r = self.release_standing(caller, partner, &id).await;
                let subject = r.as_ref().ok().map(|r| r.subject);
                self.audited(caller, A, subject.as_ref(), r).await
            }
        }
    }

    /// Signature first, then decoding, then the checks that need no store.
    /// An error carries the subject once the signature has verified.
    async fn verify_grant(
        &self,
        caller: &Caller,
        partner: &Partner,
        s: &Signed,
    ) -> Result<(Grant, DeviceRow, [u8; 32]), (Option<SubjectId>, VaultError)> {
        let (device, key) = self
            .active_device(&s.device_id)
            .await
            .map_err(|e| (None, e))?;
        key.verify(GRANT_CONTEXT, &s.bytes, &s.signature)
            .map_err(|r| (None, refused(r)))?;
        let known = Some(device.subject);
        let g = c::decode_grant(&s.bytes).map_err(|r| (known, refused(r)))?;
        let check = || {
            if g.subject != device.subject {
                return Err(Refusal::SubjectMismatch);
            }
            if g.audience != caller.spiffe_id {
                return Err(Refusal::AudienceMismatch);
            }
            g.check_window(self.now_secs(), &self.consent_settings().limits())?;
            self.release_allowed(caller, partner, &g.subject, &g.purpose, &g.fields)
        };
        check().map_err(|r| (known, refused(r)))?;
        let hash = c::grant_hash(&s.bytes);
        Ok((g, device, hash))
    }

    async fn release_grant(
        &self,
        caller: &Caller,
        partner: &Partner,
        s: &Signed,
        g: &Grant,
        device: &DeviceRow,
        grant_hash: [u8; 32],
    ) -> Result<Release, VaultError> {
        let now = self.now_millis();
        let mut tx = self.begin().await?;
        self.still_active(&mut tx, device).await?;
        let row = ConsentRow {
            consent_id: g.consent_id,
            subject: g.subject,
            device_id: s.device_id.clone(),
            audience: g.audience.clone(),
            purpose: g.purpose.clone(),
            fields: field_list(&g.fields),
            standing: g.standing,
            issued_at: g.issued_at,
            expires_at: g.expires_at,
            grant_hash,
            presented_at_ms: now,
            revoked_at_ms: None,
        };
        if !tx.insert_consent(&row).await? {
            return Err(refused(Refusal::ConsentReplayed));
        }
        match tx.challenge(&g.challenge).await? {
            None => return Err(refused(Refusal::ChallengeUnknown)),
            Some(ch) if ch.partner != partner.name || ch.subject != g.subject => {
                return Err(refused(Refusal::ChallengeMismatch));
            }
            Some(ch) if ch.used => return Err(refused(Refusal::ChallengeReused)),
            Some(ch) if now >= ch.expires_at_ms => {
                return Err(refused(Refusal::ChallengeExpired));
            }
            Some(_) => {}
        }
        if !tx.use_challenge(&g.challenge, now).await? {
            return Err(refused(Refusal::ChallengeReused));
        }
        self.seal_and_commit(tx, caller, partner, &row).await
    }

    async fn release_standing(
        &self,
        caller: &Caller,
        partner: &Partner,
        id: &[u8],
    ) -> Result<Release, VaultError> {
        let id: [u8; ID_LEN] = id.try_into().map_err(|_| refused(Refusal::Malformed))?;
        let mut tx = self.begin().await?;
        let row = match tx.consent(&id).await? {
            // Another partner's consent is reported as unknown.
            Some(r) if r.audience == caller.spiffe_id => r,
            _ => return Err(refused(Refusal::ConsentUnknown)),
        };
        if !row.standing {
            return Err(refused(Refusal::ConsentReplayed));
        }
        if row.revoked_at_ms.is_some() {
            return Err(refused(Refusal::ConsentRevoked));
        }
        if self.now_secs() >= row.expires_at {
            return Err(refused(Refusal::Expired));
        }
        match tx.device(&row.device_id).await? {
            Some(d) if d.subject == row.subject && d.revoked_at_ms.is_none() => {}
            Some(_) => return Err(refused(Refusal::DeviceRevoked)),
            None => return Err(refused(Refusal::UnknownDevice)),
        }
        // The registry may have narrowed since the grant was presented.
        let fields = c::parse_field_names(&row.fields.split(',').collect::<Vec<_>>())
            .ok_or(VaultError::Integrity("stored consent fields"))?;
        self.release_allowed(caller, partner, &row.subject, &row.purpose, &fields)
            .map_err(refused)?;
        self.seal_and_commit(tx, caller, partner, &row).await
    }

    /// Decrypts the consented fields, seals them to the partner, writes
    /// the receipt and commits with the audit record.
    async fn seal_and_commit(
        &self,
        mut tx: AuditedTx,
        caller: &Caller,
        partner: &Partner,
        consent: &ConsentRow,
    ) -> Result<Release, VaultError> {
        let id = consent.subject;
        let subject = tx.subject(&id).await?.ok_or(VaultError::NotFound)?;
        let stored = tx.packets(&id).await?;
        let kek = self.keys().kek(subject.wrapped_dek.kek_version)?;
        let dek = keys::unwrap_dek(&kek, &id, &subject.wrapped_dek)
            .map_err(|_| VaultError::Integrity("data key unwrap"))?;
        let values = packet::newest_values(&id, &dek, stored.iter().map(|(_, b)| b.as_slice()))
            .map_err(|_| VaultError::Integrity("packet"))?;
        let consented: Vec<&str> = consent.fields.split(',').collect();
        // Only consented names are copied out: a field the person did not
        // sign for cannot reach the plaintext.
        let mut plain = pb::ReleasedFields::default();
        let mut released = Vec::new();
        for (name, value) in &values {
            if consented.contains(&name.as_str()) {
                plain.fields.push(pb::Field {
                    name: name.as_str().to_owned(),
                    value: value.expose().to_owned(),
                });
                released.push(name.as_str());
            }
        }
        let bytes = Zeroizing::new(plain.encode_to_vec());
        for f in &mut plain.fields {
            zeroize::Zeroize::zeroize(&mut f.value);
        }
        let key = partner
            .release_key
            .as_ref()
            .ok_or(VaultError::Internal("partner has no release key"))?;
        let (enc, ciphertext) = c::seal_release(key, &consent.consent_id, &id, &bytes, self.rng())
            .map_err(|_| VaultError::Internal("release sealing"))?;
        let receipt = ReceiptRow {
            receipt_id: random_id(self, "rcp_")?,
            consent_id: consent.consent_id,
            subject: id,
            partner: caller.spiffe_id.clone(),
            purpose: consent.purpose.clone(),
            // What was released: consented fields the subject has.
            fields: released.join(","),
            released_at_ms: self.now_millis(),
            grant_hash: consent.grant_hash,
        };
        tx.insert_receipt(&receipt).await?;
        let detail = format!(
            "consent={} purpose={} consented={} released={} receipt={}",
            hex::encode(consent.consent_id),
            consent.purpose,
            consent.fields,
            receipt.fields,
            receipt.receipt_id
        );
        self.commit_event(tx, caller, Action::ReleaseConsented, Some(&id), detail)
            .await?;
        Ok(Release {
            consent_id: consent.consent_id,
            subject: id,
            enc,
            ciphertext,
            receipt_id: receipt.receipt_id,
            grant_hash: consent.grant_hash,
        })
    }

    /// Serves a device-signed call for the person's own records.
    pub async fn device_call(
        &self,
        caller: &Caller,
        op: DeviceOp,
        s: Signed,
    ) -> Result<DeviceOutcome, VaultError> {
        const A: Action = Action::DeviceCall;
        self.authorize(caller, A).await?;
        let checked = async {
            let (device, key) = self.active_device(&s.device_id).await?;
            key.verify(DEVICE_REQUEST_CONTEXT, &s.bytes, &s.signature)
                .map_err(refused)?;
            let call = c::decode_device_request(&s.bytes).map_err(refused)?;
            Ok::<_, VaultError>((device, call))
        }
        .await;
        let (device, call) = match checked {
            Ok(v) => v,
            Err(e) => return self.audited(caller, A, None, Err(e)).await,
        };
        let subject = device.subject;
        let r = async {
            if !op.matches(&call.action) {
                return Err(refused(Refusal::WrongAction));
            }
            let skew = u64::from(self.consent_settings().clock_skew_seconds);
            if call.issued_at.abs_diff(self.now_secs()) > skew {
                return Err(refused(Refusal::RequestOutsideWindow));
            }
            let now = self.now_millis();
            let mut tx = self.begin().await?;
            self.still_active(&mut tx, &device).await?;
            if !tx
                .insert_device_request(&call.request_id, &device.device_id, now)
                .await?
            {
                return Err(refused(Refusal::RequestReplayed));
            }
            let (out, detail) = match &call.action {
                DeviceAction::ListReceipts => {
                    let r = tx.receipts_of(&subject, MAX_RECEIPTS).await?;
                    let n = r.len();
                    (DeviceOutcome::Receipts(r), format!("receipts={n}"))
                }
                DeviceAction::ListDevices => {
                    let d = tx.devices_of(&subject).await?;
                    let n = d.len();
                    (DeviceOutcome::Devices(d), format!("devices={n}"))
                }
                DeviceAction::RevokeConsent(id) => {
                    let done = tx.revoke_consent(id, &subject, now).await?;
                    (
                        DeviceOutcome::Revoked(done),
                        format!("consent={} revoked={done}", hex::encode(id)),
                    )
                }
                DeviceAction::RevokeDevice(id) => {
                    let done = tx.revoke_device(id, &subject, now).await?;
                    (
                        DeviceOutcome::Revoked(done),
                        format!("target={id} revoked={done}"),
                    )
                }
                other => self
                    .rules_action(&mut tx, &subject, other)
                    .await?
                    .ok_or(VaultError::Internal("unhandled device action"))?,
            };
            let detail = format!("op={} device={} {detail}", op.name(), device.device_id);
            self.commit_event(tx, caller, A, Some(&subject), detail)
                .await?;
            Ok(out)
        }
        .await;
        self.audited(caller, A, Some(&subject), r).await
    }
}
