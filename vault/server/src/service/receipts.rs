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
    /// When a deletion is final on this vault's backend, as a receipt
    /// says it (SECURITY.md, "When a deletion is final").
    pub(crate) fn deletion_final_text(&self) -> &'static str {
        match self.store().backend() {
            Backend::Sqlite => {
                "now in the database: rows overwritten (secure_delete), the WAL checkpointed and \
                 truncated"
            }
            Backend::Postgres => {
                "in the database once VACUUM reclaims the rows (the vault starts one after \
                 deletions); WAL archives keep them until they expire"
            }
        }
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
