//! `idvault.v1.AuditService`: checkpoints and proofs (docs/audit.md).

use idvault_policies::Action;
use idvault_proto::v1 as pb;
use idvault_proto::v1::audit_service_server::AuditService;
use tonic::{Request, Response, Status};

use super::{caller, status, within};
use crate::service::audit::LeafRef;

adapter!(
    /// The audit log service.
    AuditApi
);

/// A malformed proof request is refused and recorded like any other
/// (`api::malformed`), under the action a well-formed one is gated by.
const READ: (Action, Action) = (Action::ReadAudit, Action::ReadAudit);

fn hashes(v: Vec<[u8; 32]>) -> Vec<Vec<u8>> {
    v.into_iter().map(|h| h.to_vec()).collect()
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn get_checkpoint(
        &self,
        req: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::SignedCheckpoint>, Status> {
        let who = caller(&req)?;
        let cp = within(self.deadline, async {
            self.vault.audit_checkpoint(&who).await.map_err(status)
        })
        .await?;
        Ok(Response::new(pb::SignedCheckpoint {
            note: cp.note,
            tree_size: cp.size,
            root_hash: cp.root.to_vec(),
        }))
    }

    async fn get_inclusion_proof(
        &self,
        req: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        use pb::get_inclusion_proof_request::Leaf;
        let who = caller(&req)?;
        let m = req.into_inner();
        let leaf = match m.leaf {
            Some(Leaf::LeafIndex(i)) => LeafRef::Index(i),
            Some(Leaf::RequestId(text)) => {
                let mut id = [0u8; 16];
                if text.len() != 32 || hex::decode_to_slice(&text, &mut id).is_err() {
                    return Err(self
                        .malformed(&who, READ, "request_id must be 32 hex digits")
                        .await);
                }
                LeafRef::Request(id)
            }
            None => {
                return Err(self
                    .malformed(&who, READ, "name the leaf: leaf_index or request_id")
                    .await);
            }
        };
        let p = within(self.deadline, async {
            self.vault
                .audit_inclusion(&who, leaf, m.tree_size)
                .await
                .map_err(status)
        })
        .await?;
        Ok(Response::new(pb::InclusionProof {
            leaf_index: p.index,
            tree_size: p.size,
            hashes: hashes(p.hashes),
            leaf: p.leaf,
            checkpoint: p.checkpoint,
        }))
    }

    async fn get_consistency_proof(
        &self,
        req: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProof>, Status> {
        let who = caller(&req)?;
        let m = req.into_inner();
        let p = within(self.deadline, async {
            self.vault
                .audit_consistency(&who, m.old_size, m.new_size)
                .await
                .map_err(status)
        })
        .await?;
        Ok(Response::new(pb::ConsistencyProof {
            old_size: p.old_size,
            new_size: p.new_size,
            hashes: hashes(p.hashes),
            checkpoint: p.checkpoint,
        }))
    }
}
