//! Rewrap: moving everything stored forward to the current root key
//! version, online, in audited batches (docs/keys.md, "Rewrap and
//! retire").
//!
//! Four passes, each resumable because each selects only what is still
//! below the target version (a crash loses at most the batch in flight,
//! which rolled back whole):
//!
//! 1. subjects: the data key is unwrapped and wrapped again, and every
//!    match index and signature is recomputed from the decrypted values
//!    under the new keyring (so a lookup needs to probe one version once
//!    the old one is retired); packets and command payloads are sealed
//!    under the data key, which does not change;
//! 2. cross-reference links: each identifier is opened, re-indexed with
//!    its owner's new blind-index key and sealed under the new seal key;
//! 3. row MACs of every MACed table; a row whose MAC fails is left as it
//!    is (never re-MACed: that would bless a forgery);
//! 4. audit leaf MACs (the leaf bytes, and so the tree, do not change).
//!
//! Each batch is one transaction through the same writer as requests
//! (one audit leaf per batch), so requests keep flowing between batches;
//! each subject is read locked, so a concurrent update waits for the
//! batch or the batch sees the update.

use idvault_core::keys::{self as ckeys};
use idvault_core::tlog::leaf as tlog_leaf;
use idvault_core::tlog::merkle;
use idvault_core::{crypto, packet, xref};
use idvault_tokenizer::ident::IdentifierType;

use super::{Caller, Vault, VaultError};
use crate::store::{MAC_WALK_WINDOW, MacKeys, MacTable, Remac, RemacBatch};

/// Items per batch transaction.
pub const REWRAP_BATCH: u32 = 100;

/// Packet bytes one batch of subjects holds in memory (at least one
/// subject's, whatever its size); the rest of its page is left to the
/// next batch
/// ([`AuditedTx::subjects_for_rewrap`](crate::store::AuditedTx::subjects_for_rewrap)).
pub const REWRAP_BATCH_BYTES: usize = 32 << 20;

/// What a rewrap pass reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrapProgress {
    /// `subjects`, `links`, `row-macs` or `audit-leaves`.
    pub phase: &'static str,
    /// Items of this phase handled so far in this run.
    pub done: u64,
    /// Items of this phase below the target when the run started.
    pub total: u64,
}

/// What a rewrap run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewrapReport {
    /// The version everything moved to.
    pub target: u32,
    /// Subjects rewrapped and re-indexed.
    pub subjects: u64,
    /// Subjects left behind: their data key or packets did not open.
    pub damaged_subjects: u64,
    /// Cross-reference links moved.
    pub links: u64,
    /// Links whose sealed identifier did not open.
    pub damaged_links: u64,
    /// Rows re-MACed.
    pub row_macs: u64,
    /// Rows whose MAC did not verify (left as they are).
    pub forged_rows: u64,
    /// Audit leaves re-MACed.
    pub leaves: u64,
    /// Leaves whose MAC did not verify (left as they are).
    pub forged_leaves: u64,
    /// Batches committed (one audit leaf each).
    pub batches: u64,
}

impl RewrapReport {
    /// Whether anything was left under an older version.
    pub fn left_behind(&self) -> u64 {
        self.damaged_subjects + self.damaged_links + self.forged_rows + self.forged_leaves
    }
}

/// The audit action name of rewrap batches.
pub const REWRAP_ACTION: &str = "KeyRewrap";

impl Vault {
    /// Moves everything below the current root key version forward to it.
    /// `progress` is called after every batch.
    pub async fn rewrap(
        &self,
        actor: &Caller,
        mut progress: impl FnMut(&RewrapProgress),
    ) -> Result<RewrapReport, VaultError> {
        let metrics = std::sync::Arc::clone(self.metrics());
        metrics.rewrap_running(true);
        let r = self
            .rewrap_all(actor, &mut |p: &RewrapProgress| {
                metrics.rewrap_progress(p.phase, p.done, p.total);
                progress(p);
            })
            .await;
        metrics.rewrap_running(false);
        r
    }

    async fn rewrap_all(
        &self,
        actor: &Caller,
        mut progress: impl FnMut(&RewrapProgress),
    ) -> Result<RewrapReport, VaultError> {
        let target = self.keys().current_version();
        // From here on no process without `target` can write (its audit
        // leaves fall below the floor): nothing new is written under a
        // version this run moves away from.
        let floor = self.store().key_floor().await?;
        if floor > target {
            return Err(VaultError::Busy(
                "the database was moved past this process's current root key version; restart with the current key file",
            ));
        }
        self.store().raise_key_floor(target).await?;
        self.store().analyze_for_rewrap().await?;
        let mut report = RewrapReport {
            target,
            ..RewrapReport::default()
        };
        let backlog = self.store().rewrap_backlog(target).await?;
        let total = |i: usize| backlog.get(i).map_or(0, |(_, n)| *n);
        self.rewrap_subjects(actor, target, total(0), &mut report, &mut progress)
            .await?;
        self.rewrap_links(actor, target, total(1), &mut report, &mut progress)
            .await?;
        self.rewrap_row_macs(actor, target, total(2), &mut report, &mut progress)
            .await?;
        self.rewrap_leaves(actor, target, total(3), &mut report, &mut progress)
            .await?;
        Ok(report)
    }

    async fn rewrap_subjects(
        &self,
        actor: &Caller,
        target: u32,
        total: u64,
        report: &mut RewrapReport,
        progress: &mut impl FnMut(&RewrapProgress),
    ) -> Result<(), VaultError> {
        let kek = self.keys().kek(target)?;
        let mut after = None;
        let mut done = 0;
        loop {
            let ids = self
                .store()
                .subjects_below(after.as_ref(), target, REWRAP_BATCH)
                .await?;
            let mut tx = self.begin().await?;
            // Two reads, one update and one delete per batch (the match
            // rows go in with the commit): per-subject statements made the
            // PostgreSQL rewrap round-trip bound.
            let Some(batch) = tx
                .subjects_for_rewrap(&ids, target, REWRAP_BATCH_BYTES)
                .await?
            else {
                break;
            };
            after = Some(batch.through);
            let covered = ids.iter().filter(|id| **id <= batch.through).count();
            let mut damaged = batch.damaged;
            let mut moves = Vec::with_capacity(batch.found.len());
            let mut indexes = Vec::with_capacity(batch.found.len());
            for (row, packets) in batch.found {
                let Ok(dek) = self.subject_dek(&row) else {
                    damaged += 1;
                    continue;
                };
                // The indexes are made from the newest values of a chain
                // that links up to the stored head: a newer packet a
                // database writer deleted or relabelled makes the subject
                // damaged (left, counted), never indexed under an older
                // value with a fresh MAC.
                let Ok(values) = packet::newest_values_to_head(
                    &row.id,
                    &dek,
                    row.head,
                    packets.iter().map(|(f, b)| (f.as_str(), b.as_slice())),
                ) else {
                    damaged += 1;
                    continue;
                };
                let values: Vec<_> = values.into_iter().collect();
                let wrapped = ckeys::wrap_dek(&kek, &row.id, &dek, self.rng())?;
                drop(dek);
                indexes.push(self.match_rows_of(&super::matching::matchable(&values))?);
                moves.push((row.id, row.wrapped_dek.kek_version, wrapped));
            }
            let moved = tx.rewrap_subject_keys(&moves).await?;
            let moved_ids: Vec<_> = moves
                .iter()
                .map(|(id, _, _)| *id)
                .filter(|id| moved.contains(id))
                .collect();
            tx.match_delete_subjects(&moved_ids).await?;
            for ((id, _, _), idx) in moves.iter().zip(&indexes) {
                if moved.contains(id) {
                    self.write_match_rows(&mut tx, id, false, idx).await?;
                }
            }
            let moved = moved.len() as u64;
            let detail = format!("rewrap to=v{target} subjects={moved} damaged={damaged}");
            self.commit_job_as(tx, actor, REWRAP_ACTION, detail).await?;
            report.subjects += moved;
            report.damaged_subjects += damaged;
            report.batches += 1;
            done += covered as u64;
            progress(&RewrapProgress {
                phase: "subjects",
                done,
                total,
            });
        }
        Ok(())
    }

    async fn rewrap_links(
        &self,
        actor: &Caller,
        target: u32,
        total: u64,
        report: &mut RewrapReport,
        progress: &mut impl FnMut(&RewrapProgress),
    ) -> Result<(), VaultError> {
        let seal = self.keys().xref_seal_key(target)?;
        let mut after: Option<[u8; 32]> = None;
        let mut done = 0;
        loop {
            let rows = self
                .store()
                .links_below(after.as_ref(), target, REWRAP_BATCH)
                .await?;
            let Some(last) = rows.last() else {
                break;
            };
            after = Some(last.blind_index);
            let mut tx = self.begin().await?;
            // The owners' import locks before any link moves, in one order
            // (an import takes just its own): a concurrent import's merge
            // would otherwise skip a link moved under it, leaving it on an
            // alias, or deadlock with the move on the rows (PostgreSQL).
            let mut owners: Vec<&str> = rows.iter().map(|r| r.owner.as_str()).collect();
            owners.sort_unstable();
            owners.dedup();
            for owner in &owners {
                tx.xref_lock_owner(owner).await?;
            }
            let (mut moved, mut damaged) = (0u64, 0u64);
            for row in &rows {
                // The owner and type columns are not sealed: the row is
                // moved only if its blind index is the one its owner's key
                // gives for the identifier it seals and its type, so an
                // edited owner or type (a database writer's) never makes
                // the vault compute another partner's index.
                let opened = self
                    .keys()
                    .xref_seal_key(row.key_version)
                    .ok()
                    .and_then(|k| xref::open_identifier(&k, &row.blind_index, &row.sealed).ok());
                let ty = IdentifierType::parse(&row.id_type);
                let old_index_key = self.keys().xref_index_key(&row.owner, row.key_version).ok();
                let (Some(value), Some(ty), Some(old_index_key)) = (opened, ty, old_index_key)
                else {
                    damaged += 1;
                    continue;
                };
                let recomputed = xref::blind_index(&old_index_key, ty, &value);
                if !crypto::ct_eq(&recomputed, &row.blind_index) {
                    damaged += 1;
                    continue;
                }
                let index_key = self.keys().xref_index_key(&row.owner, target)?;
                let index = xref::blind_index(&index_key, ty, &value);
                let sealed = xref::seal_identifier(&seal, &index, &value, self.rng())
                    .map_err(ckeys::KeyError::from)?;
                if tx.relink(row, &index, target, sealed).await? {
                    moved += 1;
                }
            }
            // Every replica's cache of these owners' lookups is stale.
            for owner in &owners {
                tx.xref_bump_generation(owner).await?;
            }
            let detail = format!("rewrap to=v{target} links={moved} damaged={damaged}");
            self.commit_job_as(tx, actor, REWRAP_ACTION, detail).await?;
            report.links += moved;
            report.damaged_links += damaged;
            report.batches += 1;
            done += rows.len() as u64;
            progress(&RewrapProgress {
                phase: "links",
                done,
                total,
            });
        }
        Ok(())
    }

    async fn rewrap_row_macs(
        &self,
        actor: &Caller,
        target: u32,
        total: u64,
        report: &mut RewrapReport,
        progress: &mut impl FnMut(&RewrapProgress),
    ) -> Result<(), VaultError> {
        let mut done = 0;
        for table in MacTable::ALL {
            // One walk in primary-key order, a window of keys at a time
            // read from the pool, each window after the last key the one
            // before read: every row is visited once, forged ones (left as
            // they are) included, and rows written meanwhile are MACed
            // under the current version already. A window's rows below the
            // target are re-read and updated in batches under the writer.
            // What is left below the target afterwards did not verify.
            let mut after = None;
            loop {
                let page = self
                    .store()
                    .mac_rows_page(table, target, MAC_WALK_WINDOW, after.as_ref())
                    .await?;
                for batch in page.chunks(REWRAP_BATCH as usize) {
                    // Rows another transaction holds are skipped
                    // (`Remac::SkipHeld`: a batch that waited for one
                    // while holding the rows before it could close a
                    // cycle), then taken one at a time, each waiting for
                    // its holder while holding nothing else.
                    let b = self
                        .remac_batch(actor, batch, target, Remac::SkipHeld)
                        .await?;
                    let mut tally = |b: &RemacBatch| {
                        report.row_macs += b.moved;
                        done += b.seen;
                    };
                    tally(&b);
                    for i in &b.missed {
                        if let Some(one) = batch.one(*i) {
                            tally(&self.remac_batch(actor, one, target, Remac::Wait).await?);
                        }
                    }
                    report.batches += 1;
                    progress(&RewrapProgress {
                        phase: "row-macs",
                        done,
                        total,
                    });
                }
                if page.last() {
                    break;
                }
                after = page.next;
            }
            report.forged_rows += self.store().mac_rows_below(table, target).await?;
        }
        Ok(())
    }

    /// Re-MACs one batch of a walk in its own audited transaction; one
    /// that found none of its rows (all gone, or held) records nothing.
    async fn remac_batch(
        &self,
        actor: &Caller,
        batch: MacKeys<'_>,
        target: u32,
        how: Remac,
    ) -> Result<RemacBatch, VaultError> {
        let mut tx = self.begin().await?;
        let b = tx
            .remac_rows(batch, target, how)
            .await
            .map_err(VaultError::from)?;
        if b.seen > 0 {
            let detail = format!(
                "rewrap to=v{target} table={} row_macs={} forged={}",
                batch.table().name(),
                b.moved,
                b.forged
            );
            self.commit_job_as(tx, actor, REWRAP_ACTION, detail).await?;
        }
        Ok(b)
    }

    async fn rewrap_leaves(
        &self,
        actor: &Caller,
        target: u32,
        total: u64,
        report: &mut RewrapReport,
        progress: &mut impl FnMut(&RewrapProgress),
    ) -> Result<(), VaultError> {
        let key = self.keys().audit_key(target)?;
        let mut old_keys = std::collections::HashMap::new();
        let mut after = 0i64;
        let mut done = 0;
        loop {
            // Larger batches: a leaf costs two HMACs.
            let rows = self
                .store()
                .leaf_macs_below(after, target, REWRAP_BATCH * 10)
                .await?;
            let Some(last) = rows.last() else {
                break;
            };
            after = last.id;
            let mut tx = self.begin().await?;
            let (mut moved, mut forged) = (0u64, 0u64);
            for row in &rows {
                let hash = merkle::leaf_hash(&row.leaf);
                if let std::collections::hash_map::Entry::Vacant(e) =
                    old_keys.entry(row.key_version)
                {
                    e.insert(self.keys().audit_key(row.key_version).ok());
                }
                let nonce = row.nonce.as_ref();
                let ok = old_keys
                    .get(&row.key_version)
                    .and_then(Option::as_ref)
                    .is_some_and(|old| tlog_leaf::row_mac_ok(old, &hash, nonce, &row.mac));
                if !ok {
                    forged += 1;
                    continue;
                }
                let mac = tlog_leaf::row_mac(&key, &hash, nonce);
                if tx
                    .remac_leaf(row, target, &mac)
                    .await
                    .map_err(VaultError::from)?
                {
                    moved += 1;
                }
            }
            let detail = format!("rewrap to=v{target} leaves={moved} forged={forged}");
            self.commit_job_as(tx, actor, REWRAP_ACTION, detail).await?;
            report.leaves += moved;
            report.forged_leaves += forged;
            report.batches += 1;
            done += rows.len() as u64;
            progress(&RewrapProgress {
                phase: "audit-leaves",
                done,
                total,
            });
        }
        Ok(())
    }

    /// `KeyService.Rewrap`: checks the caller may (`RewrapKeys`, refusals
    /// audited), then runs [`Self::rewrap`] on a task of its own, so it
    /// ends even if the caller goes away. Progress goes to `progress`
    /// (dropped when the receiver is slow); the task's result is the
    /// report. One rewrap per process at a time ([`VaultError::Busy`]).
    pub async fn start_rewrap(
        self: &std::sync::Arc<Self>,
        caller: &Caller,
        progress: tokio::sync::mpsc::Sender<RewrapProgress>,
    ) -> Result<tokio::task::JoinHandle<Result<RewrapReport, VaultError>>, VaultError> {
        self.handle(caller, idvault_policies::Action::RewrapKeys, async |_| {
            Ok(())
        })
        .await?;
        let running = std::sync::Arc::clone(&self.rewrap_running);
        if running.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(VaultError::Busy("a rewrap is already running"));
        }
        let vault = std::sync::Arc::clone(self);
        // The batches' audit records name the operator who asked.
        let actor = Caller::new(&caller.spiffe_id);
        Ok(tokio::spawn(async move {
            let r = vault
                .rewrap(&actor, |p| {
                    let _ = progress.try_send(p.clone());
                })
                .await;
            running.store(false, std::sync::atomic::Ordering::SeqCst);
            r
        }))
    }

    /// What still names root key version `version` in the database, with
    /// a non-zero count each (the key file's token domain pins are the
    /// caller's to add).
    pub async fn version_references(&self, version: u32) -> Result<Vec<(String, u64)>, VaultError> {
        let now_s = self.now_millis() / 1000;
        Ok(self.store().version_references(version, now_s).await?)
    }

    /// Work left below the current version: `(what, rows)`.
    pub async fn rewrap_backlog(&self) -> Result<Vec<(String, u64)>, VaultError> {
        Ok(self
            .store()
            .rewrap_backlog(self.keys().current_version())
            .await?)
    }
}
