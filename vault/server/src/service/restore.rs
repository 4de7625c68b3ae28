//! Restore's half in the vault: which deletions a database's audit log
//! records, and shredding a subject again (docs/operations.md, "Backup and
//! restore"). The file work (snapshot, swap) is the CLI's.

use std::collections::{BTreeMap, HashMap};

use idvault_core::subject::SubjectId;
use idvault_core::tlog::leaf::AuditLeaf;
use idvault_policies::Action;

use super::{Caller, Vault, VaultError};
use crate::store::{LeafColumns, Store};
use idvault_core::keys::KeyHierarchy;

/// Leaves read per query.
const PAGE: u32 = 1000;

/// The deletions an audit log records.
#[derive(Debug, Default)]
pub struct RecordedDeletions {
    /// Each deleted subject once, with its latest deletion time.
    pub deleted: BTreeMap<SubjectId, i64>,
    /// Deletion rows refused: their bytes, columns or MAC do not agree
    /// (written by someone without the root key).
    pub refused: u64,
}

/// What shredding one subject again did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reshred {
    /// It was in the database and is destroyed now.
    Shredded,
    /// It was not there (deleted before the backup, or never created).
    Absent,
}

/// Every successful deletion the audit log of `store` records under a MAC
/// `keys` verifies. A row a database writer added without the root key is
/// counted in `refused`, never acted on: a restore must not delete a
/// person because of a forged row.
pub async fn recorded_deletions(
    store: &Store,
    keys: &KeyHierarchy,
) -> Result<RecordedDeletions, VaultError> {
    let mut out = RecordedDeletions::default();
    let mut mac_keys = HashMap::new();
    let mut after = 0i64;
    loop {
        let rows = store.deletion_leaves(after, PAGE).await?;
        let Some(last) = rows.last() else {
            return Ok(out);
        };
        after = last.id;
        for row in &rows {
            let leaf = AuditLeaf::decode(&row.bytes).ok().filter(|l| {
                LeafColumns::of(l) == row.columns
                    && l.action == Action::DeleteSubject.name()
                    && l.outcome == "ok"
            });
            let subject = leaf
                .filter(|_| super::audit::mac_ok(keys, &mut mac_keys, row))
                .and_then(|l| l.subject)
                .and_then(|s| SubjectId::parse(&s).ok());
            match subject {
                Some(id) => {
                    let t = out.deleted.entry(id).or_insert(row.columns.time_ms);
                    *t = (*t).max(row.columns.time_ms);
                }
                None => out.refused += 1,
            }
        }
    }
}

impl Vault {
    /// Crypto-shreds `id` again, as DeleteSubject does (wrapped data key,
    /// packets, match indexes and every row naming it; its digital IDs
    /// revoked), recorded as a `DeleteSubject` by `actor` (the restore), so
    /// the audit log and its chain-head checks agree with the database.
    pub async fn reshred(&self, actor: &Caller, id: &SubjectId) -> Result<Reshred, VaultError> {
        if self.store().subject_row(id).await?.is_none() {
            return Ok(Reshred::Absent);
        }
        let mut tx = self.begin().await?;
        let credentials = tx.forget_credentials_of(id, self.now_millis()).await?;
        let removed = tx.delete_subject(id).await?;
        let packets: u64 = removed
            .iter()
            .filter(|(w, _)| *w == "packets")
            .map(|(_, n)| *n)
            .sum();
        // The data key's row must be gone: a trigger planted in a backup
        // (`BEFORE DELETE … RAISE(IGNORE)`) would otherwise keep the person
        // while the log records the deletion. Nothing is committed then.
        let keys_removed: u64 = removed
            .iter()
            .filter(|(w, _)| *w == "data-key")
            .map(|(_, n)| *n)
            .sum();
        if keys_removed != 1 {
            return Err(VaultError::Integrity(RESHRED_KEPT));
        }
        self.commit_job_on(
            tx,
            actor,
            Action::DeleteSubject.name(),
            id,
            format!("restore: deleted after the backup; packets={packets} credentials_revoked={credentials}"),
        )
        .await?;
        if self.store().subject_row(id).await?.is_some() {
            return Err(VaultError::Integrity(RESHRED_KEPT));
        }
        Ok(Reshred::Shredded)
    }
}

/// Why a restore stops when a deletion did not remove the person.
const RESHRED_KEPT: &str =
    "a deleted subject's row is still there (a trigger or rule in the restored database keeps it)";
