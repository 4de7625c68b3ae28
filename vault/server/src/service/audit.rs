//! Verifying the audit log: walk every record, check the chain and MACs,
//! name the first bad record.

use idvault_core::audit;
use idvault_core::keys::KeyHierarchy;

use super::VaultError;
use crate::store::Store;

/// Outcome of [`verify_audit_log`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditVerdict {
    /// Every record verified.
    Intact {
        /// Records checked.
        records: u64,
    },
    /// The first bad record.
    Broken {
        /// Its sequence number.
        seq: u64,
        /// What is wrong.
        fault: audit::AuditFault,
    },
}

/// Walks the whole audit log in pages and names the first bad record.
pub async fn verify_audit_log(
    store: &Store,
    keys: &KeyHierarchy,
) -> Result<AuditVerdict, VaultError> {
    let mut verifier = audit::AuditVerifier::default();
    let mut after = 0u64;
    let mut key_cache: Vec<idvault_core::secret::AuditKey> = Vec::new();
    loop {
        let page = store.audit_page(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in &page {
            if !key_cache.iter().any(|k| k.version() == r.key_version)
                && let Ok(k) = keys.audit_key(r.key_version)
            {
                key_cache.push(k);
            }
            let key = key_cache.iter().find(|k| k.version() == r.key_version);
            if let Err((seq, fault)) = verifier.check(r, key) {
                return Ok(AuditVerdict::Broken { seq, fault });
            }
        }
    }
    let (head_seq, head_hash) = store.audit_head().await?;
    Ok(match verifier.finish(head_seq, &head_hash) {
        Ok(records) => AuditVerdict::Intact { records },
        Err((seq, fault)) => AuditVerdict::Broken { seq, fault },
    })
}
