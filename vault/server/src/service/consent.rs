//! Consent-signed release: challenges, and a verified consent released
//! sealed to the partner (docs/consent.md). Devices, enrollment and the
//! person's own signed calls are in [`super::devices`].
//!
//! Order of work for a release: gate the partner, look the device up and
//! verify the signature over the bytes as sent, only then decode them,
//! check subject, audience, window and the partner's allowances, and in
//! one transaction claim the consent id and the challenge, decrypt the
//! consented fields, seal them, write the receipt and the audit record.
//! Any refusal rolls the transaction back and is audited by the pipeline
//! with its reason token.

use idvault_policies::{Action, RequestContext, Resource};

use super::pipeline::Request;
use crate::service::{Caller, Vault, VaultError};
use crate::store::{AuditedTx, GrantClaim, StoredPacket};
use idvault_core::consent::{
    self as c, CHALLENGE_LEN, Challenge, Consent, Device, DevicePublicKey, GRANT_CONTEXT, Grant,
    ID_LEN, Receipt, Refusal,
};
use idvault_core::keys::{KeyError, KeyHierarchy};
use idvault_core::packet;
use idvault_core::subject::{FieldName, FieldValue, SubjectId, join_field_names};

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
    /// The vault's Ed25519 signature over the release
    /// ([`idvault_core::consent::release_signed_bytes`]).
    pub signature: Vec<u8>,
}

fn release_signer(keys: &KeyHierarchy, version: u32) -> Result<c::ReleaseSigner, VaultError> {
    let seed = keys.release_signing_seed(version)?;
    c::ReleaseSigner::from_seed(seed.expose())
        .map_err(|_| VaultError::Internal("release signing key"))
}

/// The release verification keys of every root key version, oldest first.
pub fn release_verifier(keys: &KeyHierarchy) -> Result<c::ReleaseVerifier, VaultError> {
    let keys = keys
        .versions()
        .into_iter()
        .map(|v| Ok(release_signer(keys, v)?.public_key()))
        .collect::<Result<Vec<_>, VaultError>>()?;
    Ok(c::ReleaseVerifier::new(keys))
}

pub(crate) fn refused(r: Refusal) -> VaultError {
    VaultError::Refused(r)
}

/// The audit record's name for the registry allowance check (it stands
/// where a policy id would).
pub(crate) const ALLOWANCE_CHECK: &str = "registry-allowance";

/// The decision on releasing `fields` of `subject` for `purpose` under a
/// verified consent (kept as the request's decision).
///
/// The partner's registered purposes and fields are checked here first,
/// and then the policies are asked: an operator `permit` broader than
/// intended cannot widen what the registry allows (deny wins).
fn release_allowed(
    req: &mut Request<'_>,
    subject: &SubjectId,
    purpose: &str,
    fields: &[FieldName],
) -> Result<(), Refusal> {
    if !req.partner.release_within_allowances(purpose, fields) {
        req.deny_in_code(ALLOWANCE_CHECK);
        return Err(req.partner.release_refusal(purpose, fields));
    }
    let names: Vec<&str> = fields.iter().map(|f| f.as_str()).collect();
    let text = subject.to_string();
    let ctx = RequestContext {
        purpose,
        fields: &names,
        consent_present: true,
        now: 0,
    };
    if req.decide(Resource::Subject(&text), ctx) {
        Ok(())
    } else {
        Err(req.partner.release_refusal(purpose, fields))
    }
}

/// The error of a read of a chain's run: rows that do not form the run
/// (missing, reordered, relabelled or from elsewhere) against a packet
/// that does not open.
fn chain_read_error(e: packet::PacketError) -> VaultError {
    match e {
        packet::PacketError::Unlinked | packet::PacketError::Malformed => {
            VaultError::Integrity("packet chain")
        }
        _ => VaultError::Integrity("packet open"),
    }
}

/// A subject's newest values and the chain head they were read at.
type FieldsAt = (packet::ChainHead, Vec<(FieldName, FieldValue)>);

/// A release sealed to its partner, before its receipt is written.
struct Sealed {
    enc: Vec<u8>,
    ciphertext: Vec<u8>,
    released: Vec<FieldName>,
    /// The subject's chain head the values were read at.
    head: idvault_core::packet::ChainHead,
}

/// Challenges one partner may hold open (unused and unexpired) at once.
/// A challenge is issued for any subject id, existing or not, so without
/// this a partner could grow the table without end; each open one stays
/// a row until the retention job removes it after its expiry and grace.
pub const MAX_OPEN_CHALLENGES_PER_PARTNER: u32 = 10_000;

/// Challenges one partner may hold open for one subject: a person's
/// deletion removes every row naming them in one transaction, so no
/// partner may pile rows onto one person.
pub const MAX_OPEN_CHALLENGES_PER_PERSON: u32 = 8;

// The refusals name the caps in words (`VaultError::Limit` takes a
// constant message): keep them in step.
const _: () = assert!(MAX_OPEN_CHALLENGES_PER_PARTNER == 10_000);
const _: () = assert!(MAX_OPEN_CHALLENGES_PER_PERSON == 8);

/// Seal-then-record attempts of one release when the subject keeps
/// changing in between.
const RELEASE_TRIES: u32 = 3;

/// The wait before sealing a release again, times the attempt. Longer
/// than the SQLite writer's hand-over grace (20 ms): an update of the same
/// person can sit in a batch left open for the release queued behind it,
/// visible to the writer but not yet to the pool the seal reads from;
/// once the release steps aside, the batch commits within the grace and
/// the next seal reads the update.
const RELEASE_BACKOFF: std::time::Duration = std::time::Duration::from_millis(25);

/// The most packets a release's last attempt reads under the writer to
/// catch up with a person updated since its previous read (each update
/// writes at most a request's fields).
const MAX_CATCH_UP_PACKETS: u64 = 512;

/// The refusal of a release whose subject changed under every attempt.
const RELEASE_RACED: VaultError = VaultError::Busy(
    "the person's data changed while the release was prepared, on every attempt; \
     nothing was released; retry",
);

impl Vault {
    pub(crate) fn now_secs(&self) -> i64 {
        self.now_millis().div_euclid(1000)
    }

    /// Issues a single-use challenge bound to the calling partner and
    /// `subject`; returns it and its expiry (Unix seconds).
    pub async fn issue_challenge(
        &self,
        caller: &Caller,
        subject: &str,
    ) -> Result<([u8; CHALLENGE_LEN], i64), VaultError> {
        self.handle(caller, Action::RequestChallenge, async |req| {
            let id = req.subject_id(subject)?;
            req.decide_on_subject(&id, &[])?;
            // Issued whether or not the subject exists: the answer must
            // not tell a partner which subject ids exist (a grant for a
            // subject that does not exist is refused when presented). So
            // the caps count this partner's own open challenges only,
            // and say the same whatever the subject.
            let now = self.now_millis();
            let (all, this) = self
                .store()
                .open_challenges(
                    &req.partner.name,
                    &id,
                    now,
                    (MAX_OPEN_CHALLENGES_PER_PARTNER, MAX_OPEN_CHALLENGES_PER_PERSON),
                )
                .await?;
            if all >= i64::from(MAX_OPEN_CHALLENGES_PER_PARTNER) {
                return Err(VaultError::Limit(
                    "this partner has 10000 challenges open; use them or let them expire",
                ));
            }
            if this >= i64::from(MAX_OPEN_CHALLENGES_PER_PERSON) {
                return Err(VaultError::Limit(
                    "this partner has 8 challenges open for this subject; use them or let them expire",
                ));
            }
            let mut tx = self.begin().await?;
            let challenge = self.new_challenge()?;
            let ttl = i64::from(self.consent_settings().challenge_ttl_seconds);
            let expires_ms = now + ttl * 1000;
            tx.insert_challenge(&challenge, &req.partner.name, &id, expires_ms)?;
            let expires = expires_ms.div_euclid(1000);
            self.commit(tx, req, Some(&id), format!("expires_at={expires}"))
                .await?;
            Ok((challenge, expires))
        })
        .await
    }

    /// Verifies a consent and releases the consented fields sealed to the
    /// calling partner's release key.
    pub async fn release(
        &self,
        caller: &Caller,
        input: ReleaseInput,
        nonce: &[u8],
    ) -> Result<Release, VaultError> {
        if nonce.len() > c::MAX_RELEASE_NONCE {
            // Caught at the edge (audited there); a direct caller gets the
            // same answer.
            return Err(VaultError::BadRequest(format!(
                "the nonce is at most {} bytes",
                c::MAX_RELEASE_NONCE
            )));
        }
        let mut r = self.release_unsigned(caller, input).await?;
        let signed = c::release_signed_bytes(
            &r.consent_id,
            &r.subject,
            &r.grant_hash,
            nonce,
            &r.receipt_id,
            &r.enc,
            &r.ciphertext,
        )
        .map_err(|_| VaultError::Internal("release too large to sign"))?;
        r.signature = self.release_signer()?.sign(&signed);
        Ok(r)
    }

    async fn release_unsigned(
        &self,
        caller: &Caller,
        input: ReleaseInput,
    ) -> Result<Release, VaultError> {
        // The gate: may this partner present consents at all? (Checked
        // before any signature work.) The release itself is decided once
        // the consent verified.
        self.handle_gated(
            caller,
            Action::PresentConsent,
            Action::ReleaseConsented,
            async |req| match input {
                ReleaseInput::Grant(s) => {
                    let (g, device, hash) = self.verify_grant(req, &s).await?;
                    self.release_grant(req, &s, &g, &device, hash).await
                }
                ReleaseInput::Standing(id) => self.release_standing(req, &id).await,
            },
        )
        .await
    }

    /// Signature first, then decoding, then the checks that need no store.
    /// Once the signature verified, the request names the subject.
    async fn verify_grant(
        &self,
        req: &mut Request<'_>,
        s: &Signed,
    ) -> Result<(Grant, Device, [u8; 32]), VaultError> {
        let device = self
            .signed_by_active_device(&s.device_id, GRANT_CONTEXT, &s.bytes, &s.signature)
            .await?;
        req.about(device.subject);
        let g = idvault_core::wire::decode_grant(&s.bytes).map_err(refused)?;
        if g.subject != device.subject {
            return Err(refused(Refusal::SubjectMismatch));
        }
        if g.audience != req.caller.spiffe_id {
            return Err(refused(Refusal::AudienceMismatch));
        }
        g.check_window(self.now_secs(), &self.consent_settings().limits())
            .map_err(refused)?;
        release_allowed(req, &g.subject, &g.purpose, &g.fields).map_err(refused)?;
        let hash = c::grant_hash(&s.bytes);
        Ok((g, device, hash))
    }

    async fn release_grant(
        &self,
        req: &Request<'_>,
        s: &Signed,
        g: &Grant,
        device: &Device,
        grant_hash: [u8; 32],
    ) -> Result<Release, VaultError> {
        let mut row = Consent {
            consent_id: g.consent_id,
            subject: g.subject,
            device_id: s.device_id.clone(),
            audience: g.audience.clone(),
            purpose: g.purpose.clone(),
            fields: g.fields.clone(),
            standing: g.standing,
            issued_at: g.issued_at,
            expires_at: g.expires_at,
            grant_hash,
            presented_at_ms: 0,
            revoked_at_ms: None,
            // Kept, so a standing consent is verified again on every use.
            grant: s.bytes.clone(),
            signature: s.signature.clone(),
        };
        // Decrypt and seal outside the writer; the claim (consent row,
        // challenge) and the receipt are one transaction. The last
        // attempt catches up and seals inside it (`seal_in`), from the
        // previous attempt's values and their head (`read`).
        let mut read: Option<FieldsAt> = None;
        for attempt in 0..RELEASE_TRIES {
            if attempt > 0 {
                super::pipeline::back_off(RELEASE_BACKOFF * attempt).await?;
            }
            let last = attempt + 1 == RELEASE_TRIES;
            let early = match read.take() {
                Some(r) if last => Err(r),
                _ => Ok(self.seal(req, &row).await?),
            };
            let mut tx = self.begin().await?;
            // Every row the claim is decided on, in one read (see
            // `AuditedTx::grant_claim_rows`); on PostgreSQL the subject's
            // row is locked first: the lock order of every call that
            // writes a person's rows, so a release cannot deadlock with a
            // revocation or an issuance from the same phone.
            let rows = tx
                .grant_claim_rows(&g.subject, &device.device_id, &g.consent_id, &g.challenge)
                .await?;
            let subject = rows.subject.ok_or(VaultError::NotFound)?;
            let head = subject.head;
            let now = self.now_millis();
            row.presented_at_ms = now;
            rows.device
                .ok_or(Refusal::UnknownDevice)
                .and_then(|d| d.check_still(device))
                .map_err(refused)?;
            if rows.consent_presented {
                return Err(refused(Refusal::ConsentReplayed));
            }
            // The person withdrew it before it was presented.
            if rows.withdrawn {
                return Err(refused(Refusal::ConsentRevoked));
            }
            Challenge::check(rows.challenge.as_ref(), &req.partner.name, &g.subject, now)
                .map_err(refused)?;
            let Some(challenge) = rows.challenge else {
                return Err(refused(Refusal::ChallengeUnknown));
            };
            match tx.claim_grant(&row, &g.challenge, &challenge, now).await? {
                GrantClaim::Claimed => {}
                GrantClaim::ConsentPresented => return Err(refused(Refusal::ConsentReplayed)),
                GrantClaim::ChallengeUsed => return Err(refused(Refusal::ChallengeReused)),
            }
            let sealed = match early {
                Ok((sealed, r)) => {
                    read = Some(r);
                    sealed
                }
                Err(r) => match self.seal_in(&mut tx, req, &row, &subject, r).await? {
                    Some(sealed) => sealed,
                    None => break,
                },
            };
            if let Some(r) = self.commit_release(tx, req, &row, head, sealed).await? {
                return Ok(r);
            }
        }
        Err(RELEASE_RACED)
    }

    async fn release_standing(
        &self,
        req: &mut Request<'_>,
        id: &[u8],
    ) -> Result<Release, VaultError> {
        let id: [u8; ID_LEN] = id.try_into().map_err(|_| refused(Refusal::Malformed))?;
        // Checked and sealed outside the writer, from the pool …
        let stored = self.store().consent(&id).await?;
        // Another partner's consent is reported as unknown.
        let first =
            Consent::check_standing(stored.as_ref(), &req.caller.spiffe_id, self.now_secs())
                .map_err(refused)?
                .clone();
        req.about(first.subject);
        let device = self
            .store()
            .device(&first.device_id)
            .await?
            .ok_or(refused(Refusal::UnknownDevice))?;
        device.check_active_for(&first.subject).map_err(refused)?;
        // The row is MACed, but the person's own signature is what
        // authorises: the kept grant must verify under the device's key
        // and say what the row says.
        let key = DevicePublicKey::from_sec1(&device.public_key)
            .map_err(|_| VaultError::Integrity("stored device key"))?;
        if !first.kept_grant_matches(&key) {
            return Err(VaultError::Integrity("kept consent grant"));
        }
        // The registry may have narrowed since the grant was presented.
        release_allowed(req, &first.subject, &first.purpose, &first.fields).map_err(refused)?;
        // The previous attempt's values and their head.
        let mut read: Option<FieldsAt> = None;
        for attempt in 0..RELEASE_TRIES {
            if attempt > 0 {
                super::pipeline::back_off(RELEASE_BACKOFF * attempt).await?;
            }
            // The last attempt catches up and seals inside the
            // transaction (`seal_in`).
            let last = attempt + 1 == RELEASE_TRIES;
            let early = match read.take() {
                Some(r) if last => Err(r),
                _ => Ok(self.seal(req, &first).await?),
            };
            // … then checked again in the transaction that records the
            // receipt, with the consent and device rows locked: a
            // revocation that landed meanwhile wins.
            let mut tx = self.begin().await?;
            // The subject row first, as above.
            let subject = tx
                .subject(&first.subject)
                .await?
                .ok_or(VaultError::NotFound)?;
            let head = subject.head;
            let stored = tx.consent(&id).await?;
            let row =
                Consent::check_standing(stored.as_ref(), &req.caller.spiffe_id, self.now_secs())
                    .map_err(refused)?;
            // What was sealed must be what is recorded.
            if row.subject != first.subject
                || row.device_id != first.device_id
                || row.fields != first.fields
                || row.purpose != first.purpose
                || row.grant_hash != first.grant_hash
            {
                return Err(refused(Refusal::ConsentUnknown));
            }
            tx.device(&row.device_id)
                .await?
                .ok_or(Refusal::UnknownDevice)
                .and_then(|d| d.check_still(&device))
                .map_err(refused)?;
            let sealed = match early {
                Ok((sealed, r)) => {
                    read = Some(r);
                    sealed
                }
                Err(r) => match self.seal_in(&mut tx, req, row, &subject, r).await? {
                    Some(sealed) => sealed,
                    None => break,
                },
            };
            if let Some(r) = self.commit_release(tx, req, row, head, sealed).await? {
                return Ok(r);
            }
        }
        Err(RELEASE_RACED)
    }

    /// Decrypts the consented fields and seals them to the partner,
    /// reading from the pool: the decrypt and the HPKE seal never run
    /// under the writer.
    /// Returns the values read with their head too, for the next attempt
    /// to catch up from ([`Vault::seal_in`]).
    async fn seal(
        &self,
        req: &Request<'_>,
        consent: &Consent,
    ) -> Result<(Sealed, FieldsAt), VaultError> {
        // `commit_release` re-checks the head the values were read at.
        let (head, mut values) = self.newest_fields(&consent.subject).await?;
        // Only the consented fields' plaintext is kept past this call.
        values.retain(|(name, _)| consent.fields.contains(name));
        let sealed = self.seal_values(req, consent, head, &values)?;
        Ok((sealed, (head, values)))
    }

    /// A release's last attempt: the values its previous attempt read at
    /// `read.0` (from the pool), brought up to the head `subject` names
    /// with what changed since, read inside `tx`, whose read of the subject
    /// (its row locked on PostgreSQL, the writer held on SQLite) keeps the
    /// chain where it is until the commit, and sealed there. So one
    /// partner updating a person without pause cannot starve another's
    /// consented releases. Under the writer only the packets written in
    /// between are read (a few, at most [`MAX_CATCH_UP_PACKETS`]: a
    /// person's whole history would hold every other partner's writes);
    /// past that, `None`, and the release is refused as raced.
    async fn seal_in(
        &self,
        tx: &mut crate::store::AuditedTx,
        req: &Request<'_>,
        consent: &Consent,
        subject: &idvault_core::records::SubjectRecord,
        read: FieldsAt,
    ) -> Result<Option<Sealed>, VaultError> {
        let (from, mut values) = read;
        let head = subject.head;
        if head != from {
            let Some(gap) = head.seq.checked_sub(from.seq) else {
                return Err(VaultError::Integrity("packet chain"));
            };
            if gap > MAX_CATCH_UP_PACKETS {
                return Ok(None);
            }
            let packets = tx.packets_between(&subject.id, from.seq, head.seq).await?;
            let dek = self.subject_dek(subject)?;
            let changed = packet::newest_values_since(
                &subject.id,
                &dek,
                from,
                head,
                packets.iter().map(StoredPacket::labelled),
            )
            .map_err(chain_read_error)?;
            // Only consented fields, as in `seal`.
            let changed = changed
                .into_iter()
                .filter(|(field, _)| consent.fields.contains(field));
            for (field, value) in changed {
                match values.iter_mut().find(|(f, _)| *f == field) {
                    Some(slot) => slot.1 = value,
                    None => values.push((field, value)),
                }
            }
            // In name order, as every read gives them (the receipt and the
            // sealed plaintext list them so).
            values.sort_by_key(|(name, _)| *name);
        }
        self.seal_values(req, consent, head, &values).map(Some)
    }

    /// The HPKE seal of `values` (read at `head`) to the partner.
    fn seal_values(
        &self,
        req: &Request<'_>,
        consent: &Consent,
        head: packet::ChainHead,
        values: &[(FieldName, FieldValue)],
    ) -> Result<Sealed, VaultError> {
        let id = consent.subject;
        // Only consented names are copied out: a field the person did not
        // sign for cannot reach the plaintext.
        let chosen: Vec<(FieldName, &str)> = values
            .iter()
            .filter(|(name, _)| consent.fields.contains(name))
            .map(|(name, value)| (*name, value.expose()))
            .collect();
        let released: Vec<FieldName> = chosen.iter().map(|(n, _)| *n).collect();
        let bytes = idvault_core::wire::encode_released_fields(&chosen);
        let key = req
            .partner
            .release_key
            .as_ref()
            .ok_or(VaultError::Internal("partner has no release key"))?;
        let (enc, ciphertext) = c::seal_release(key, &consent.consent_id, &id, &bytes, self.rng())
            .map_err(|_| VaultError::Internal("release sealing"))?;
        Ok(Sealed {
            enc,
            ciphertext,
            released,
            head,
        })
    }

    /// The subject's newest value of each field and the chain head they
    /// were read at, from the pool (never under the writer): two plain
    /// reads, then one decrypt per field. The packets read must link up to
    /// that head, and the newest of each field is decided by their
    /// authenticated headers, so a database writer cannot have an older
    /// value released or issued by hiding a newer packet
    /// (`packet::newest_values_to_head`).
    pub(crate) async fn newest_fields(
        &self,
        id: &SubjectId,
    ) -> Result<(packet::ChainHead, Vec<(FieldName, FieldValue)>), VaultError> {
        let (row, packets) = self
            .store()
            .subject_with_packets_to_head(id)
            .await?
            .ok_or(VaultError::NotFound)?;
        match self.values_to_head(&row, &packets) {
            Ok(values) => Ok((row.head, values)),
            // A run broken by the subject's deletion between the two reads
            // is not a tamper: the subject is gone.
            Err(VaultError::Integrity(_)) if self.store().subject_row(id).await?.is_none() => {
                Err(VaultError::NotFound)
            }
            Err(e) => Err(e),
        }
    }

    /// The newest value of each field from `packets`, the run of the
    /// subject's chain up to the head `row` names
    /// (`packet::newest_values_to_head`).
    fn values_to_head(
        &self,
        row: &idvault_core::records::SubjectRecord,
        packets: &[StoredPacket],
    ) -> Result<Vec<(FieldName, FieldValue)>, VaultError> {
        let dek = self.subject_dek(row)?;
        let values = packet::newest_values_to_head(
            &row.id,
            &dek,
            row.head,
            packets.iter().map(StoredPacket::labelled),
        )
        .map_err(chain_read_error)?;
        Ok(values.into_iter().collect())
    }

    /// Writes the receipt of a sealed release and commits with the audit
    /// record, if the subject is still as sealed: `head` is its chain head
    /// as `tx` read it first (its row locked on PostgreSQL, which orders
    /// this against a concurrent delete; the writer held on SQLite). If
    /// the chain moved since the seal, `None` (nothing written; seal
    /// again).
    async fn commit_release(
        &self,
        mut tx: AuditedTx,
        req: &Request<'_>,
        consent: &Consent,
        head: idvault_core::packet::ChainHead,
        sealed: Sealed,
    ) -> Result<Option<Release>, VaultError> {
        let id = consent.subject;
        if head != sealed.head {
            return Ok(None);
        }
        let receipt = Receipt {
            receipt_id: self.new_receipt_id()?,
            consent_id: consent.consent_id,
            subject: id,
            partner: req.caller.spiffe_id.clone(),
            purpose: consent.purpose.clone(),
            // What was released: consented fields the subject has.
            fields: sealed.released,
            released_at_ms: self.now_millis(),
            grant_hash: consent.grant_hash,
        };
        tx.insert_receipt(&receipt);
        let detail = format!(
            "consent={} purpose={} consented={} released={} receipt={}",
            hex::encode(consent.consent_id),
            consent.purpose,
            join_field_names(&consent.fields),
            join_field_names(&receipt.fields),
            receipt.receipt_id
        );
        self.commit(tx, req, Some(&id), detail).await?;
        Ok(Some(Release {
            consent_id: consent.consent_id,
            subject: id,
            enc: sealed.enc,
            ciphertext: sealed.ciphertext,
            receipt_id: receipt.receipt_id,
            grant_hash: consent.grant_hash,
            signature: Vec::new(),
        }))
    }

    /// The signer of releases (the current root key version's), made once
    /// per version.
    fn release_signer(&self) -> Result<std::sync::Arc<c::ReleaseSigner>, VaultError> {
        let v = self.keys().current_version();
        super::per_version(&self.release_signer, v, || release_signer(self.keys(), v))
    }

    /// The release verification keys of every root key version, oldest
    /// first (`idvault keys release-public-key`).
    pub fn release_verifier(&self) -> Result<c::ReleaseVerifier, VaultError> {
        release_verifier(self.keys())
    }

    /// A fresh single-use challenge: a version-7 UUID (the time in
    /// milliseconds, then 74 random bits), then 16 more random bytes, all
    /// from the vault's generator. Time first, so that the challenges of
    /// a write batch go on the last pages of the challenge index instead
    /// of a random page each (a WAL frame each at COMMIT on SQLite); its
    /// 202 random bits keep it unguessable. The time tells the partner
    /// and the phone it goes to only when it was issued, which they see.
    fn new_challenge(&self) -> Result<[u8; CHALLENGE_LEN], VaultError> {
        let mut challenge = [0u8; CHALLENGE_LEN];
        let (time, random) = challenge
            .split_first_chunk_mut::<16>()
            .ok_or(VaultError::Integrity("challenge length"))?;
        *time = self.time_ordered_id()?;
        self.rng().fill(random).map_err(KeyError::from)?;
        Ok(challenge)
    }

    /// A fresh receipt id: `rcp_` and a version-7 UUID in hex, time first
    /// for the reason [`Self::new_challenge`] gives; a receipt states when
    /// the release happened anyway.
    fn new_receipt_id(&self) -> Result<String, VaultError> {
        Ok(format!("rcp_{}", hex::encode(self.time_ordered_id()?)))
    }

    /// A version-7 UUID whose random bits come from the vault's generator.
    fn time_ordered_id(&self) -> Result<[u8; 16], VaultError> {
        let mut random = [0u8; 10];
        self.rng().fill(&mut random).map_err(KeyError::from)?;
        Ok(crate::clock::time_ordered_id_from(&random))
    }
}
