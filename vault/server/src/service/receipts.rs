//! Signed deletion receipts (idvault_core::receipt; docs/keys.md,
//! "Deletion receipts").

use idvault_core::keys::{KeyHierarchy, RetiredPurpose};
use idvault_core::receipt::receipt_key_name;
use idvault_core::tlog::checkpoint::{NoteSigner, NoteVerifier};

use super::{Vault, VaultError};
use crate::store::Backend;

/// The receipt signing key of root key `version`, for the log `origin`.
pub fn receipt_signer(
    keys: &KeyHierarchy,
    origin: &str,
    version: u32,
) -> Result<NoteSigner, VaultError> {
    let seed = keys.receipt_signing_seed(version)?;
    NoteSigner::from_seed(&receipt_key_name(origin), seed.expose())
        .map_err(|_| VaultError::Internal("receipt signing key"))
}

/// The receipt verifier keys (signed-note form), oldest first: every held
/// version's and the kept public keys of retired ones.
pub fn receipt_verifier_keys(keys: &KeyHierarchy, origin: &str) -> Result<Vec<String>, VaultError> {
    let name = receipt_key_name(origin);
    let mut out: Vec<(u32, String)> = keys
        .retired_public_keys(RetiredPurpose::ReceiptSigning)
        .into_iter()
        .map(|r| {
            NoteVerifier::from_public(&name, r.public)
                .map(|v| (r.version, v.to_vkey()))
                .map_err(|_| VaultError::Internal("retired receipt key"))
        })
        .collect::<Result<_, _>>()?;
    for v in keys.versions() {
        out.push((v, receipt_signer(keys, origin, v)?.verifier_key()));
    }
    out.sort_by_key(|(v, _)| *v);
    Ok(out.into_iter().map(|(_, k)| k).collect())
}

impl Vault {
    /// When a deletion is final, as a receipt states it (SECURITY.md,
    /// "When a deletion is final"): `compacted` says whether the database
    /// files no longer hold the rows; `kek_version` is the root key
    /// version the data key was wrapped under.
    pub(crate) fn deletion_final_text(&self, compacted: bool, kek_version: u32) -> String {
        let db = match (self.store().backend(), compacted) {
            (Backend::Sqlite, true) => {
                "the database no longer holds it: rows overwritten (secure_delete), the WAL \
                 checkpointed and truncated"
            }
            (Backend::Sqlite, false) => {
                "rows overwritten (secure_delete) in the database file; the WAL's truncation is \
                 pending (a reader held it back, or it did not finish in time) and the vault \
                 retries it until it completes"
            }
            (Backend::Postgres, _) => {
                "the rows are dead tuples until VACUUM (started after deletions) reclaims them; \
                 their bytes can stay in data files and WAL archives"
            }
        };
        format!(
            "{db}; a copy made before (a backup, a WAL archive, a disk image) holds the data key \
             wrapped under root key version {kek_version} or older, and becomes unreadable once \
             those versions are retired, provided no copy of a key file holding them survives"
        )
    }

    /// Signs a receipt with the current version's receipt key.
    pub(crate) fn sign_receipt(
        &self,
        receipt: &idvault_core::receipt::DeletionReceipt,
    ) -> Result<String, VaultError> {
        let signer = receipt_signer(
            self.keys(),
            &self.audit_settings().origin,
            self.keys().current_version(),
        )?;
        receipt
            .sign(&signer)
            .map_err(|_| VaultError::Internal("receipt signing"))
    }
}
