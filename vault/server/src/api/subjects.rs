//! `idvault.v1.SubjectService`.

use idvault_proto::v1::subject_service_server::SubjectService;
use idvault_proto::v1::{
    ChainBreakReason, CreateSubjectRequest, CreateSubjectResponse, DeleteSubjectRequest,
    DeleteSubjectResponse, Field, UpdateSubjectRequest, UpdateSubjectResponse,
    VerifySubjectChainRequest, VerifySubjectChainResponse,
};
use tonic::{Request, Response, Status};

use super::{caller, status, within};
use idvault_core::packet::BreakReason;

adapter!(
    /// The subject service.
    SubjectApi
);

pub(super) fn pairs(fields: Vec<Field>) -> Vec<(String, String)> {
    fields.into_iter().map(|f| (f.name, f.value)).collect()
}

fn reason(r: BreakReason) -> ChainBreakReason {
    match r {
        BreakReason::Malformed => ChainBreakReason::Malformed,
        BreakReason::WrongSubject => ChainBreakReason::WrongSubject,
        BreakReason::SequenceGap => ChainBreakReason::SequenceGap,
        BreakReason::PreviousHashMismatch => ChainBreakReason::PreviousHashMismatch,
        BreakReason::DecryptionFailed => ChainBreakReason::DecryptionFailed,
        BreakReason::HeadMismatch => ChainBreakReason::HeadMismatch,
    }
}

#[tonic::async_trait]
impl SubjectService for SubjectApi {
    async fn create_subject(
        &self,
        req: Request<CreateSubjectRequest>,
    ) -> Result<Response<CreateSubjectResponse>, Status> {
        let who = caller(&req)?;
        let r = within(self.deadline, async {
            self.vault
                .create_subject(&who, pairs(req.into_inner().fields))
                .await
                .map_err(status)
        })
        .await?;
        Ok(Response::new(CreateSubjectResponse {
            subject_id: r.subject.to_string(),
            chain_length: r.head.seq,
            chain_head: hex::encode(r.head.hash),
            pairwise_token: r.pairwise_token.unwrap_or_default(),
        }))
    }

    async fn update_subject(
        &self,
        req: Request<UpdateSubjectRequest>,
    ) -> Result<Response<UpdateSubjectResponse>, Status> {
        let who = caller(&req)?;
        let m = req.into_inner();
        let r = within(self.deadline, async {
            self.vault
                .update_subject(&who, &m.subject_id, pairs(m.fields))
                .await
                .map_err(status)
        })
        .await?;
        Ok(Response::new(UpdateSubjectResponse {
            chain_length: r.head.seq,
            chain_head: hex::encode(r.head.hash),
        }))
    }

    async fn verify_subject_chain(
        &self,
        req: Request<VerifySubjectChainRequest>,
    ) -> Result<Response<VerifySubjectChainResponse>, Status> {
        let who = caller(&req)?;
        let v = within(self.deadline, async {
            self.vault
                .verify_subject_chain(&who, &req.into_inner().subject_id)
                .await
                .map_err(status)
        })
        .await?;
        Ok(Response::new(VerifySubjectChainResponse {
            intact: v.report.intact(),
            packets_checked: v.report.checked,
            first_broken_sequence: v.report.first_break.map(|(s, _)| s),
            reason: v
                .report
                .first_break
                .map_or(ChainBreakReason::Unspecified, |(_, r)| reason(r))
                .into(),
            chain_head: hex::encode(v.head.hash),
        }))
    }

    async fn delete_subject(
        &self,
        req: Request<DeleteSubjectRequest>,
    ) -> Result<Response<DeleteSubjectResponse>, Status> {
        let who = caller(&req)?;
        let subject = req.into_inner().subject_id;
        let vault = std::sync::Arc::clone(&self.vault);
        // Detached: once committed, a deletion is journaled for restores
        // (service::subjects) even if the caller stops waiting; shutdown
        // waits for it (the job guard).
        let job = self.vault.detached_job();
        let n = super::consent::detached(self.deadline, async move {
            let _job = job;
            vault.delete_subject(&who, &subject).await
        })
        .await?;
        Ok(Response::new(DeleteSubjectResponse {
            packets_destroyed: n.packets,
            receipt: n.receipt,
        }))
    }
}
