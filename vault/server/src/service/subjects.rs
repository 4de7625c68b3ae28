//! Subjects: create, update, verify and delete a person's chained packets.
//! The packet format and chain checks are `idvault_core::packet`; this
//! module decides who may do it and writes it, audited, in one commit.

use idvault_core::keys;
use idvault_core::packet::{self, BreakReason, ChainHead, ChainReport, ChainVerifier};
use idvault_core::receipt::DeletionReceipt;
use idvault_core::subject::{FieldName, FieldValue, SubjectId, validate_fields};
use idvault_policies::{Action, Resource};

use super::pipeline::Request;
use super::{Vault, VaultError};
use crate::store::AuditedTx;
use idvault_core::records::SubjectRecord;

/// Result of a create or update.
#[derive(Debug, Clone)]
pub struct ChainUpdate {
    /// The subject.
    pub subject: SubjectId,
    /// The new head.
    pub head: ChainHead,
    /// The calling partner's pairwise token (set by create).
    pub pairwise_token: Option<String>,
}

/// Result of a chain verification.
#[derive(Debug, Clone)]
pub struct ChainVerification {
    /// Stored head.
    pub head: ChainHead,
    /// What verification found.
    pub report: ChainReport,
}

/// Whether the calling partner owns `row`: it created it, and the row's
/// MAC says so. Another partner's subject is reported as absent (no
/// existence oracle). A row naming the caller whose MAC does not verify
/// was edited by someone without the root key (or predates row MACs and
/// no audit leaf vouched for it at start): an integrity failure, never an
/// owner, since whoever set `created_by` could otherwise enroll a device
/// and have the person's data released to them.
fn owned_by(row: &SubjectRecord, req: &Request<'_>) -> Result<(), VaultError> {
    if row.created_by != req.partner.name {
        Err(VaultError::NotFound)
    } else if !row.owner_verified {
        Err(VaultError::Integrity("subject owner"))
    } else {
        Ok(())
    }
}

fn names(fields: &[(FieldName, FieldValue)]) -> Vec<&str> {
    fields.iter().map(|(f, _)| f.as_str()).collect()
}

impl Vault {
    /// Starts the request's transaction and loads the subject if the
    /// calling partner created it. Another partner's subject is reported
    /// as absent: no existence oracle.
    pub(crate) async fn open_owned(
        &self,
        req: &Request<'_>,
        id: &SubjectId,
    ) -> Result<(AuditedTx, SubjectRecord), VaultError> {
        let mut tx = self.begin().await?;
        match tx.subject_created_by(id, &req.partner.name).await? {
            Some(row) => {
                owned_by(&row, req)?;
                Ok((tx, row))
            }
            None => Err(VaultError::NotFound),
        }
    }

    /// Creates a subject holding `fields`.
    pub async fn create_subject(
        &self,
        caller: &super::Caller,
        fields: Vec<(String, String)>,
    ) -> Result<ChainUpdate, VaultError> {
        self.handle(caller, Action::CreateSubject, async |req| {
            let fields = validate_fields(fields)?;
            req.decide_on(Resource::Vault, &names(&fields))?;
            let now = self.now_millis();
            let rng = self.rng();
            let id = SubjectId::generate(rng).map_err(keys::KeyError::from)?;
            let dek = keys::generate_dek(rng)?;
            let kek = self.keys().kek(self.keys().current_version())?;
            let wrapped = keys::wrap_dek(&kek, &id, &dek, rng)?;
            let (packets, head) =
                packet::append(&id, &dek, ChainHead::genesis(&id), &fields, now, rng)
                    .map_err(|_| VaultError::Integrity("packet sealing"))?;
            let row = SubjectRecord {
                id,
                created_by: req.partner.name.clone(),
                owner_verified: true,
                wrapped_dek: wrapped,
                head,
                created_at_ms: now,
                updated_at_ms: now,
            };
            let match_rows = self.match_rows_of(&super::matching::matchable(&fields))?;
            let mut tx = self.begin().await?;
            tx.insert_subject(&row, &req.caller.request_id)?;
            tx.insert_packets(&id, &packets)?;
            self.write_match_rows(&mut tx, &id, false, &match_rows)
                .await?;
            let token = self.issue_pairwise(&mut tx, req.partner, &id).await?;
            let detail = format!("fields={}", fields.len());
            self.commit(tx, req, Some(&id), detail).await?;
            Ok(ChainUpdate {
                subject: id,
                head,
                pairwise_token: Some(token),
            })
        })
        .await
    }

    /// Appends new versions of `fields` to a subject.
    pub async fn update_subject(
        &self,
        caller: &super::Caller,
        subject: &str,
        fields: Vec<(String, String)>,
    ) -> Result<ChainUpdate, VaultError> {
        self.handle(caller, Action::UpdateSubject, async |req| {
            let fields = validate_fields(fields)?;
            let id = req.subject_id(subject)?;
            req.about(id);
            // Ownership first: another partner's subject reads as absent
            // whatever policy names it (a per-subject forbid answered
            // PERMISSION_DENIED would say that the id exists).
            let (mut tx, row) = self.open_owned(req, &id).await?;
            req.decide_on_subject(&id, &names(&fields))?;
            if row.head.seq + fields.len() as u64 > packet::MAX_CHAIN_PACKETS {
                return Err(VaultError::ChainFull(packet::MAX_CHAIN_PACKETS));
            }
            let dek = self.subject_dek(&row)?;
            let now = self.now_millis();
            // A changed matchable field re-indexes the subject whole, from
            // its newest values with the update applied (compound keys join
            // fields). Read before the new packets join the transaction.
            let reindex = !super::matching::matchable(&fields).is_empty();
            let match_rows = if reindex {
                let old = self.newest_values(&mut tx, &row).await?;
                Some(self.match_rows_of(&super::matching::matchable(fields.iter().chain(&old)))?)
            } else {
                None
            };
            let (packets, head) = packet::append(&id, &dek, row.head, &fields, now, self.rng())
                .map_err(|_| VaultError::Integrity("packet sealing"))?;
            tx.insert_packets(&id, &packets)?;
            tx.set_head(&id, head, now).await?;
            if let Some(match_rows) = match_rows {
                self.write_match_rows(&mut tx, &id, true, &match_rows)
                    .await?;
            }
            let detail = format!("fields={}", fields.len());
            self.commit(tx, req, Some(&id), detail).await?;
            Ok(ChainUpdate {
                subject: id,
                head,
                pairwise_token: None,
            })
        })
        .await
    }

    /// Verifies a subject's chain, decrypting every packet.
    pub async fn verify_subject_chain(
        &self,
        caller: &super::Caller,
        subject: &str,
    ) -> Result<ChainVerification, VaultError> {
        self.handle(caller, Action::VerifySubjectChain, async |req| {
            let id = req.subject_id(subject)?;
            req.about(id);
            // At most a few at a time per partner: each reads and
            // decrypts a whole history (up to 10,000 packets) on a pool
            // connection, and the pool's readers serve every partner.
            let slot = self
                .chain_check_slot(&req.partner.name, req.caller.deadline)
                .await?;
            // Read outside the writer, from one snapshot, a page at a time;
            // only the leaf goes through it.
            let Some(mut snap) = self
                .store()
                .subject_snapshot(&id, &req.partner.name)
                .await?
            else {
                return Err(VaultError::NotFound);
            };
            owned_by(&snap.row, req)?;
            // Decided once ownership is known (see `update_subject`).
            req.decide_on_subject(&id, &[])?;
            let row = snap.row.clone();
            let mut report = match self.subject_dek(&row) {
                Ok(dek) => {
                    let mut v = ChainVerifier::new(&id, &dek);
                    'pages: loop {
                        let page = snap.next_packets().await?;
                        if page.is_empty() {
                            break;
                        }
                        for (seq, field, bytes) in &page {
                            if !v.push_labelled(*seq, field, bytes) {
                                break 'pages;
                            }
                        }
                    }
                    v.finish(row.head)
                }
                // A DEK that does not unwrap makes every packet unreadable.
                Err(VaultError::Integrity(_)) => ChainReport {
                    checked: 0,
                    first_break: Some((1, BreakReason::DecryptionFailed)),
                },
                Err(e) => return Err(e),
            };
            // The stored head must be the one the subject's newest leaf
            // recorded (a leaf whose MAC verifies): otherwise the chain was
            // rolled back (newest packets dropped, head reset).
            if report.first_break.is_none() {
                let leaf = snap.head_leaf().await?;
                if !self.head_matches_leaf(&row, leaf.as_ref()) {
                    report.first_break = Some((row.head.seq + 1, BreakReason::HeadMismatch));
                }
            } else {
                // The snapshot's connection goes back before the leaf waits
                // for the writer (or, on PostgreSQL, for a connection).
                drop(snap);
            }
            // The reads are done: the record does not hold a place.
            drop(slot);
            let tx = self.begin().await?;
            let detail = match report.first_break {
                None => format!("intact packets={}", report.checked),
                Some((seq, r)) => format!("broken seq={seq} reason={}", r.name()),
            };
            self.commit(tx, req, Some(&id), detail).await?;
            Ok(ChainVerification {
                head: row.head,
                report,
            })
        })
        .await
    }

    /// Deletes a subject: its wrapped DEK and packets (crypto-shredding),
    /// and everything else naming it; answers with a signed receipt.
    pub async fn delete_subject(
        &self,
        caller: &super::Caller,
        subject: &str,
    ) -> Result<Deletion, VaultError> {
        let done = self
            .handle(caller, Action::DeleteSubject, async |req| {
                let id = req.subject_id(subject)?;
                req.about(id);
                // Ownership first (see `update_subject`).
                let (mut tx, row) = self.open_owned(req, &id).await?;
                req.decide_on_subject(&id, &[])?;
                // Their digital IDs are revoked and the status entries
                // forget them (the entries stay: an index is never reused).
                let credentials = tx.forget_credentials_of(&id, self.now_millis()).await?;
                let removed = tx.delete_subject(&id).await?;
                let count = |what: &str| {
                    removed
                        .iter()
                        .filter(|(w, _)| *w == what)
                        .map(|(_, n)| *n)
                        .sum::<u64>()
                };
                let packets = count("packets");
                let leaf = self
                    .commit_leaf(
                        tx,
                        req,
                        Some(&id),
                        format!("packets={packets} credentials_revoked={credentials}"),
                    )
                    .await?;
                // The person's own data by kind; everything else (other
                // partners' tokens, consents, commands) as one total, so
                // the deleting partner learns nothing of the others.
                let own = ["packets", "data-key", "match-index", "match-signatures"];
                let related: u64 = removed
                    .iter()
                    .filter(|(w, _)| !own.contains(w))
                    .map(|(_, n)| *n)
                    .sum::<u64>();
                let receipt = DeletionReceipt {
                    vault: self.audit_settings().origin.clone(),
                    subject: id.to_string(),
                    deleted_by: req.caller.spiffe_id.clone(),
                    deleted_at_ms: self.now_millis(),
                    request_id: req.caller.request_id,
                    audit_leaf: leaf,
                    destroyed: vec![
                        ("packets".to_owned(), packets),
                        ("data-key".to_owned(), count("data-key")),
                        (
                            "match-index".to_owned(),
                            count("match-index") + count("match-signatures"),
                        ),
                        ("related-rows".to_owned(), related),
                        // Revoked and cleared of the person, not removed
                        // (until they expire: the retention job's): a
                        // status list index is never reused.
                        ("credentials-revoked".to_owned(), credentials),
                    ],
                    final_when: String::new(),
                };
                Ok((packets, credentials, receipt, row.wrapped_dek.kek_version))
            })
            .await;
        self.status_maybe_changed(&done, |d| d.1 > 0);
        let (packets, credentials_revoked, mut receipt, kek_version) = done?;
        self.journal_deletion(&receipt).await;
        // Compacted before the receipt says how final the deletion is; a
        // checkpoint held up by readers is not waited for (the committed
        // deletion's receipt must reach the caller within its deadline).
        let compacted = match tokio::time::timeout(
            std::time::Duration::from_secs(2),
            self.store().compact_after_delete(),
        )
        .await
        {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "compaction after delete failed; deleted rows stay in the WAL or as dead tuples until a later truncating checkpoint or VACUUM");
                false
            }
            Err(_) => false,
        };
        receipt.final_when = self.deletion_final_text(compacted, kek_version);
        // The deletion is committed: a receipt that cannot be signed is
        // logged, and the caller still learns of the deletion (an empty
        // receipt), never that it failed.
        let receipt = self.sign_receipt(&receipt).unwrap_or_else(|e| {
            tracing::error!(error = %e, "deletion receipt not signed");
            String::new()
        });
        Ok(Deletion {
            packets,
            credentials_revoked,
            receipt,
        })
    }
}

impl Vault {
    /// Appends a committed deletion to the deletion journal (see
    /// [`crate::shredlog`]) and waits until it is on disk. The deletion is
    /// committed whatever happens here: a journal that cannot be written
    /// is logged and counted, and the audit log still holds the deletion.
    async fn journal_deletion(&self, receipt: &DeletionReceipt) {
        let Some(log) = self.shred_log() else {
            return;
        };
        let Ok(subject) = idvault_core::subject::SubjectId::parse(&receipt.subject) else {
            return;
        };
        let entry = idvault_core::shred::ShredEntry {
            subject,
            deleted_at_ms: receipt.deleted_at_ms,
            request_id: receipt.request_id,
            audit_leaf: receipt.audit_leaf,
        };
        let line = match entry.to_line(self.keys()) {
            Ok(line) => line,
            Err(e) => {
                self.metrics().shred_log_failed();
                tracing::error!(error = %e, "deletion journal line not made");
                return;
            }
        };
        // (The API runs the deletion on a task of its own, so a caller
        // going away cannot cancel this append of a committed deletion.)
        if let Err(e) = log.append(line).await {
            self.metrics().shred_log_failed();
            tracing::error!(
                error = %e,
                path = %log.path().display(),
                "a committed deletion could not be written to the deletion journal; \
                 `idvault restore` still finds it in this database's audit log"
            );
        }
    }
}

/// What DeleteSubject did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// Packets destroyed.
    pub packets: u64,
    /// Digital IDs revoked.
    pub credentials_revoked: u64,
    /// The signed deletion receipt (idvault_core::receipt).
    pub receipt: String,
}

/// Subjects read per batch when sealing the owners of old rows.
const SEAL_BATCH: u32 = 500;

/// The action the sealing job's audit records carry.
const SEAL_OWNERS_ACTION: &str = "SealSubjectOwners";

impl Vault {
    /// Seals the owner of every subject written before owner MACs
    /// (migration 0016), on evidence a database writer cannot forge: the
    /// subject's CreateSubject leaf, whose MAC verifies under the audit
    /// key and whose caller is the partner the row names. A row without
    /// such a leaf stays unsealed and has no owner (it can still be
    /// matched and released; nobody may update, delete, verify it or
    /// enroll a device for it). Safe to run at every start: it never
    /// seals what a leaf does not vouch for. Returns `(sealed, left)`.
    pub async fn seal_subject_owners(&self) -> Result<(u64, u64), VaultError> {
        let system = super::Caller::new(super::pipeline::JOB_ACTOR);
        let mut audit_keys = std::collections::HashMap::new();
        let (mut sealed, mut left) = (0u64, 0u64);
        let mut after: Option<SubjectId> = None;
        loop {
            let page = self
                .store()
                .unsealed_subjects(after.as_ref(), SEAL_BATCH)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.0);
            let mut vouched = Vec::new();
            for (id, created_by, at) in &page {
                let Some(leaf) = self.store().creation_leaf(id).await? else {
                    continue;
                };
                if !super::audit::mac_ok(self.keys(), &mut audit_keys, &leaf) {
                    continue;
                }
                // The leaf's own bytes, not its query columns (those are
                // not under the MAC).
                let Ok(l) = idvault_core::tlog::leaf::AuditLeaf::decode(&leaf.bytes) else {
                    continue;
                };
                let creator = self.registry().by_spiffe_id(&l.actor).map(|p| &p.name);
                if l.action == Action::CreateSubject.name()
                    && l.outcome == "ok"
                    && l.subject.as_deref() == Some(id.to_string().as_str())
                    && creator == Some(created_by)
                {
                    vouched.push((*id, created_by.clone(), *at));
                }
            }
            let n = if vouched.is_empty() {
                0
            } else {
                let mut tx = self.begin().await?;
                let n = tx.seal_subject_owners(&vouched).await?;
                let detail = format!("subject_owners={n}");
                self.commit_job_as(tx, &system, SEAL_OWNERS_ACTION, detail)
                    .await?;
                n
            };
            sealed += n;
            left += page.len() as u64 - n;
            if page.len() < SEAL_BATCH as usize {
                break;
            }
        }
        Ok((sealed, left))
    }
}
