//! Checking the vault's audit log from the partner's side (docs/audit.md):
//! verify the newest signed checkpoint with the vault's pinned public key,
//! prove it extends the last checkpoint this partner kept (a rolled-back or
//! forked log is caught), and prove one of the partner's own requests is
//! in it.

use idvault_core::tlog::checkpoint::{Checkpoint, NoteVerifier, open_checkpoint};
use idvault_core::tlog::leaf::AuditLeaf;
use idvault_core::tlog::merkle::{self, Hash};
use idvault_proto::v1 as pb;
use idvault_proto::v1::audit_service_client::AuditServiceClient;
use tonic::transport::Channel;

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditCheckError {
    /// The vault answered with an error.
    #[error("vault: {0}")]
    Rpc(#[from] tonic::Status),
    /// A signed note did not verify with the pinned keys, or is malformed.
    #[error("checkpoint signature: {0}")]
    Signature(#[from] idvault_core::tlog::checkpoint::NoteError),
    /// The log is smaller than a checkpoint seen before: it was rolled back.
    #[error(
        "ROLLBACK: the vault's log has {now} leaves, but a checkpoint of {kept} was seen before"
    )]
    Rollback {
        /// Size kept.
        kept: u64,
        /// Size now.
        now: u64,
    },
    /// The log does not extend the kept checkpoint: it was forked or rewritten.
    #[error("FORK: the checkpoint of {now} leaves does not extend the kept checkpoint of {kept}")]
    Fork {
        /// Size kept.
        kept: u64,
        /// Size now.
        now: u64,
    },
    /// An inclusion proof did not verify.
    #[error("the inclusion proof for the request does not verify")]
    NotIncluded,
    /// A hash in an answer is not 32 bytes.
    #[error("malformed proof")]
    Malformed,
}

/// What a successful check established.
#[derive(Debug, Clone)]
pub struct AuditCheck {
    /// The newest checkpoint, verified (store its note for next time).
    pub checkpoint: Checkpoint,
    /// Its signed note.
    pub note: String,
    /// The size of the kept checkpoint it was proven to extend, if any.
    pub extends: Option<u64>,
    /// The leaf of the request proven included, with its index.
    pub included: Option<(u64, AuditLeaf)>,
}

fn hashes(v: &[Vec<u8>]) -> Result<Vec<Hash>, AuditCheckError> {
    v.iter()
        .map(|h| {
            h.as_slice()
                .try_into()
                .map_err(|_| AuditCheckError::Malformed)
        })
        .collect()
}

/// Checks the vault's log: the newest checkpoint verifies with `keys`
/// (for the log named `origin`), extends `kept` (the note of a checkpoint
/// seen before, itself re-verified), and includes request `request_id`
/// (32 hex digits) when given.
pub async fn check(
    channel: Channel,
    keys: &[NoteVerifier],
    origin: &str,
    kept: Option<&str>,
    request_id: Option<&str>,
) -> Result<AuditCheck, AuditCheckError> {
    let mut c = AuditServiceClient::new(channel);
    let newest = c
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await?
        .into_inner();
    let mut cp = open_checkpoint(&newest.note, keys, origin)?;
    let mut note = newest.note;
    let mut extends = None;
    if let Some(kept) = kept {
        let old = open_checkpoint(kept, keys, origin)?;
        if old.size > cp.size {
            return Err(AuditCheckError::Rollback {
                kept: old.size,
                now: cp.size,
            });
        }
        if old.size == cp.size {
            if !idvault_core::crypto::ct_eq(&old.root, &cp.root) {
                return Err(AuditCheckError::Fork {
                    kept: old.size,
                    now: cp.size,
                });
            }
        } else {
            let p = c
                .get_consistency_proof(pb::GetConsistencyProofRequest {
                    old_size: old.size,
                    new_size: cp.size,
                })
                .await?
                .into_inner();
            let new = open_checkpoint(&p.checkpoint, keys, origin)?;
            merkle::verify_consistency(
                old.size,
                new.size,
                &old.root,
                &new.root,
                &hashes(&p.hashes)?,
            )
            .map_err(|_| AuditCheckError::Fork {
                kept: old.size,
                now: new.size,
            })?;
            if new.size != cp.size || !idvault_core::crypto::ct_eq(&new.root, &cp.root) {
                return Err(AuditCheckError::Fork {
                    kept: cp.size,
                    now: new.size,
                });
            }
            cp = new;
            note = p.checkpoint;
        }
        extends = Some(old.size);
    }
    let included = match request_id {
        None => None,
        Some(id) => Some(included(&mut c, &cp, id).await?),
    };
    Ok(AuditCheck {
        checkpoint: cp,
        note,
        extends,
        included,
    })
}

/// Proves that request `request_id` (32 hex digits) is a leaf of the tree
/// `cp` (a checkpoint already verified, e.g. by [`check`]): its index and
/// leaf.
pub async fn check_included(
    channel: Channel,
    cp: &Checkpoint,
    request_id: &str,
) -> Result<(u64, AuditLeaf), AuditCheckError> {
    included(&mut AuditServiceClient::new(channel), cp, request_id).await
}

async fn included(
    c: &mut AuditServiceClient<Channel>,
    cp: &Checkpoint,
    id: &str,
) -> Result<(u64, AuditLeaf), AuditCheckError> {
    let p = c
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            leaf: Some(pb::get_inclusion_proof_request::Leaf::RequestId(
                id.to_owned(),
            )),
            tree_size: cp.size,
        })
        .await?
        .into_inner();
    let leaf_hash = merkle::leaf_hash(&p.leaf);
    merkle::verify_inclusion(
        p.leaf_index,
        cp.size,
        &leaf_hash,
        &hashes(&p.hashes)?,
        &cp.root,
    )
    .map_err(|_| AuditCheckError::NotIncluded)?;
    let leaf = AuditLeaf::decode(&p.leaf).map_err(|_| AuditCheckError::Malformed)?;
    if hex::encode(leaf.request_id) != id.to_ascii_lowercase() {
        return Err(AuditCheckError::NotIncluded);
    }
    Ok((p.leaf_index, leaf))
}
