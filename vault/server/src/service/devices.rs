//! Devices: enrollment codes, enrolling a phone's P-256 key (proof of
//! possession plus a one-time code), and the person's own device-signed
//! calls (receipts, devices, revocation, and the rules actions that
//! [`super::events`] serves). docs/consent.md specifies the formats.

use idvault_policies::Action;
use zeroize::Zeroizing;

use super::consent::refused;
use crate::service::{Caller, Vault, VaultError};
use crate::store::{AuditedTx, ConsentRevocation, Withdrawal};
use idvault_core::consent::{
    self as c, DEVICE_REQUEST_CONTEXT, Device, DevicePublicKey, EnrollmentCode, Receipt, Refusal,
};
use idvault_core::device_request::DeviceAction;
use idvault_core::keys::KeyError;

pub use super::consent::Signed;

/// Most receipts a device listing returns.
pub const MAX_RECEIPTS: u32 = 1000;

/// Most consents one device may have withdrawn before presentation at a
/// time (each is a row kept for `ConsentLimits::withdrawal_secs`, about
/// 9 minutes by default): a phone cannot grow the table without bound,
/// and a stolen one, once revoked, does not hold the person's other
/// phones back.
pub const MAX_WITHDRAWALS_PER_DEVICE: u32 = 64;
const _: () = assert!(
    MAX_WITHDRAWALS_PER_DEVICE == 64,
    "the refusal's message says 64"
);

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
    /// RevokeCredential.
    RevokeCredential,
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
                | (Self::RevokeCredential, DeviceAction::RevokeCredential(_))
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
            Self::RevokeCredential => "revoke_credential",
        }
    }
}

/// Answer to a device call.
#[derive(Debug, Clone)]
pub enum DeviceOutcome {
    /// The subject's receipts, newest first.
    Receipts(Vec<Receipt>),
    /// The subject's devices.
    Devices(Vec<Device>),
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

impl Vault {
    /// Issues a one-time enrollment code for `subject`; returns the code
    /// and its expiry (Unix seconds).
    pub async fn issue_enrollment_code(
        &self,
        caller: &Caller,
        subject: &str,
    ) -> Result<(Zeroizing<String>, i64), VaultError> {
        self.handle(caller, Action::IssueEnrollmentCode, async |req| {
            let id = req.subject_id(subject)?;
            req.about(id);
            // Only the partner that created the subject (and so verified
            // the person) may let a phone enroll to it; another partner's
            // subject reads as absent, as everywhere else, whatever policy
            // names it (ownership is checked before the policy is asked).
            let (mut tx, _) = self.open_owned(req, &id).await?;
            req.decide_on_subject(&id, &[])?;
            let code = c::generate_enrollment_code(self.rng()).map_err(KeyError::from)?;
            let ttl = i64::from(self.consent_settings().enrollment_code_ttl_seconds);
            let expires = self.now_secs() + ttl;
            tx.insert_enrollment_code(
                &c::enrollment_code_hash(&code),
                &id,
                &req.partner.name,
                expires * 1000,
            )
            .await?;
            self.commit(tx, req, Some(&id), format!("expires_at={expires}"))
                .await?;
            Ok((code, expires))
        })
        .await
    }

    /// Enrolls a device key with a signed enrollment (proof of possession)
    /// and a one-time code. Called by a wallet app.
    pub async fn enroll_device(
        &self,
        caller: &Caller,
        enrollment: &[u8],
        signature: &[u8],
    ) -> Result<String, VaultError> {
        self.handle(caller, Action::DeviceCall, async |req| {
            let e =
                idvault_core::wire::verify_enrollment(enrollment, signature).map_err(refused)?;
            req.about(e.subject);
            let now = self.now_millis();
            let hash = c::enrollment_code_hash(&e.code);
            let mut tx = self.begin().await?;
            // Unknown, used, expired and other-subject codes, and a deleted
            // subject, are one refusal: the answer must not help guess
            // codes. The code is checked before the subject's row is
            // locked (PostgreSQL): anyone can sign an enrollment naming any
            // subject, and one without that subject's code must not get to
            // hold the person's row and stall the writes of its owner. The
            // read takes no lock, so the order below still holds.
            let code = tx.enrollment_code(&hash).await?;
            EnrollmentCode::check(code.as_ref(), &e.subject, now).map_err(refused)?;
            let Some(code) = code else {
                return Err(refused(Refusal::EnrollmentCodeInvalid));
            };
            // Then the subject row (PostgreSQL), as every call writing a
            // person's rows takes it before them: a deletion running
            // meanwhile cannot deadlock with this enrollment. The code's
            // use is conditional (unused), so a code used since the read
            // above is refused here.
            let subject_exists = tx.subject(&e.subject).await?.is_some();
            if !subject_exists || !tx.use_enrollment_code(&hash, &code, now).await? {
                return Err(refused(Refusal::EnrollmentCodeInvalid));
            }
            let sec1 = e.key.to_sec1();
            let device_id = c::device_id(&sec1);
            let row = Device {
                device_id: device_id.clone(),
                subject: e.subject,
                public_key: sec1,
                enrolled_by: code.issued_to,
                enrolled_at_ms: now,
                revoked_at_ms: None,
            };
            if !tx.insert_device(&row).await? {
                return Err(refused(Refusal::DeviceAlreadyEnrolled));
            }
            let detail = format!("op=enroll device={device_id}");
            self.commit(tx, req, Some(&e.subject), detail).await?;
            Ok(device_id)
        })
        .await
    }

    /// An active device whose key signed `bytes` (under `context`), read
    /// outside the write transaction. The signature is checked before the
    /// device's revocation: whoever knows a device id (a partner it sent a
    /// grant to) but not its key gets `bad_signature` from an active and a
    /// revoked device alike, so it cannot watch for the person revoking or
    /// replacing a phone. The device itself, signing validly, is told it
    /// is revoked.
    pub(crate) async fn signed_by_active_device(
        &self,
        device_id: &str,
        context: &[u8],
        bytes: &[u8],
        signature: &[u8],
    ) -> Result<Device, VaultError> {
        if !c::valid_device_id(device_id) {
            return Err(refused(Refusal::Malformed));
        }
        let row = self
            .store()
            .device(device_id)
            .await?
            .ok_or(refused(Refusal::UnknownDevice))?;
        let key = DevicePublicKey::from_sec1(&row.public_key)
            .map_err(|_| VaultError::Integrity("stored device key"))?;
        key.verify(context, bytes, signature).map_err(refused)?;
        if row.revoked_at_ms.is_some() {
            return Err(refused(Refusal::DeviceRevoked));
        }
        Ok(row)
    }

    /// Re-checks inside `tx` that the device verified outside it is still
    /// the same, active key of the same subject.
    pub(crate) async fn still_active(
        &self,
        tx: &mut AuditedTx,
        seen: &Device,
    ) -> Result<(), VaultError> {
        tx.device(&seen.device_id)
            .await?
            .ok_or(Refusal::UnknownDevice)
            .and_then(|d| d.check_still(seen))
            .map_err(refused)
    }

    /// The checks every device-signed request passes before its action
    /// runs (docs/consent.md, "Device requests"), in this order: a known
    /// device, its signature over the bytes as sent, the device not
    /// revoked, only then decoding,
    /// the action the RPC `expects`, and the time window. The request is
    /// then about the device's subject. Replay (the request id) is checked
    /// by the caller, in its transaction.
    pub(crate) async fn verified_device_request(
        &self,
        req: &mut super::pipeline::Request<'_>,
        s: &Signed,
        expects: impl Fn(&DeviceAction) -> bool,
    ) -> Result<(Device, idvault_core::device_request::DeviceCall), VaultError> {
        let device = self
            .signed_by_active_device(&s.device_id, DEVICE_REQUEST_CONTEXT, &s.bytes, &s.signature)
            .await?;
        let call = idvault_core::wire::decode_device_request(&s.bytes).map_err(refused)?;
        req.about(device.subject);
        if !expects(&call.action) {
            return Err(refused(Refusal::WrongAction));
        }
        let skew = u64::from(self.consent_settings().clock_skew_seconds);
        if call.issued_at.abs_diff(self.now_secs()) > skew {
            return Err(refused(Refusal::RequestOutsideWindow));
        }
        Ok((device, call))
    }

    /// A person's `RevokeConsent`: a consent a partner presented is
    /// revoked; one the vault holds no row of (not presented yet) is
    /// withdrawn, so that presenting it is refused (`consent_revoked`).
    /// Either way the answer is true when the consent can no longer be
    /// used and was usable before. The second element says which, for
    /// the audit record.
    async fn revoke_or_withdraw(
        &self,
        tx: &mut AuditedTx,
        id: &[u8; idvault_core::consent::ID_LEN],
        device: &Device,
        now: i64,
    ) -> Result<(bool, &'static str), VaultError> {
        let subject = &device.subject;
        Ok(match tx.revoke_consent(id, subject, now).await? {
            ConsentRevocation::Revoked => (true, "presented"),
            ConsentRevocation::AlreadyRevoked => (false, "presented"),
            // Another person's consent with this id is untouched: the
            // withdrawal names this person, and only refuses a grant for
            // them. So the answer says nothing of other people's ids.
            ConsentRevocation::NotHeld => {
                let lasts = self.consent_settings().limits().withdrawal_secs();
                let expires = now.saturating_add(lasts.saturating_mul(1000));
                match tx
                    .withdraw_consent(
                        id,
                        subject,
                        &device.device_id,
                        now,
                        expires,
                        MAX_WITHDRAWALS_PER_DEVICE,
                    )
                    .await?
                {
                    Withdrawal::Withdrawn => (true, "withdrawn"),
                    Withdrawal::AlreadyWithdrawn => (false, "withdrawn"),
                    Withdrawal::Full => {
                        return Err(VaultError::Limit(
                            "this device has 64 consents withdrawn in the last minutes; \
                             wait for them to lapse",
                        ));
                    }
                }
            }
        })
    }

    /// Serves a device-signed call for the person's own records.
    pub async fn device_call(
        &self,
        caller: &Caller,
        op: DeviceOp,
        s: Signed,
    ) -> Result<DeviceOutcome, VaultError> {
        let out = self
            .handle(caller, Action::DeviceCall, async |req| {
                let (device, call) = self
                    .verified_device_request(req, &s, |a| op.matches(a))
                    .await?;
                let subject = device.subject;
                let now = self.now_millis();
                // Read from the pool before the transaction: what it reads
                // grows with what publishers sent, and must not hold the
                // writer. Discarded if the checks below refuse the call.
                let suggestion_inputs = match &call.action {
                    DeviceAction::SuggestRules => {
                        // A replayed request is refused before the read,
                        // not after it.
                        if self.store().device_request_used(&call.request_id).await? {
                            return Err(refused(Refusal::RequestReplayed));
                        }
                        let wait = self.suggestion_reads.acquire();
                        let _place = match super::pipeline::current_deadline() {
                            Some(d) => tokio::time::timeout_at(d, wait)
                                .await
                                .map_err(|_| VaultError::DeadlineExceeded)?,
                            None => wait.await,
                        }
                        .map_err(|_| VaultError::Internal("suggestion reads"))?;
                        Some(
                            self.store()
                                .suggestion_inputs(&subject, super::events::MAX_PEERS)
                                .await?,
                        )
                    }
                    _ => None,
                };
                let mut tx = self.begin().await?;
                // Subject, then device, then the rows the action writes:
                // the order every call writing a person's rows locks them
                // in (PostgreSQL), so none of them can deadlock with
                // another (a revocation with a release or a deletion).
                tx.subject(&subject).await?.ok_or(VaultError::NotFound)?;
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
                        let (done, what) =
                            self.revoke_or_withdraw(&mut tx, id, &device, now).await?;
                        (
                            DeviceOutcome::Revoked(done),
                            format!("consent={} revoked={done} {what}", hex::encode(id)),
                        )
                    }
                    DeviceAction::RevokeDevice(id) => {
                        let done = tx.revoke_device(id, &subject, now).await?;
                        // A digital ID bound to the revoked device's key goes
                        // with it.
                        let credentials = if done {
                            tx.revoke_credentials_of_device(id, now).await?
                        } else {
                            0
                        };
                        (
                            DeviceOutcome::Revoked(done),
                            format!("target={id} revoked={done} credentials_revoked={credentials}"),
                        )
                    }
                    DeviceAction::RevokeCredential(r) => {
                        let (out, _) = self.revoke_entry(&mut tx, r, Some(&subject)).await?;
                        (
                            DeviceOutcome::Revoked(out.revoked),
                            format!("list={} idx={} revoked={}", r.uri, r.idx, out.revoked),
                        )
                    }
                    DeviceAction::SuggestRules => {
                        self.suggest_rules(suggestion_inputs.unwrap_or_default())
                    }
                    other => self
                        .rules_action(&mut tx, &subject, other)
                        .await?
                        .ok_or(VaultError::Internal("unhandled device action"))?,
                };
                let detail = format!("op={} device={} {detail}", op.name(), device.device_id);
                self.commit(tx, req, Some(&subject), detail).await?;
                Ok(out)
            })
            .await;
        if matches!(op, DeviceOp::RevokeDevice | DeviceOp::RevokeCredential) {
            self.status_maybe_changed(&out, |o| matches!(o, DeviceOutcome::Revoked(true)));
        }
        out
    }
}
