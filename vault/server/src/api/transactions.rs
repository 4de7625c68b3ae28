//! `idvault.v1.TransactionService` (third parties) and the transaction
//! calls of `DeviceService` (docs/digital-id.md, "Transaction codes").

use std::sync::Arc;
use std::time::Duration;

use idvault_proto::v1 as pb;
use idvault_proto::v1::transaction_service_server::TransactionService;
use tonic::{Request, Response, Status};

use super::caller;
use super::consent::detached;

adapter!(
    /// The third parties' transaction service.
    TransactionApi,
    streams
);

#[tonic::async_trait]
impl TransactionService for TransactionApi {
    async fn request_code(
        &self,
        req: Request<pb::RequestCodeRequest>,
    ) -> Result<Response<pb::RequestCodeResponse>, Status> {
        let who = caller(&req)?;
        let m = req.into_inner();
        let vault = Arc::clone(&self.vault);
        // Detached: a code, once made, is on the record.
        let issued = detached(self.deadline, async move {
            vault
                .request_code(
                    &who,
                    &m.pairwise_token,
                    &m.binding_message,
                    m.claims,
                    m.ttl_seconds,
                )
                .await
        })
        .await?;
        Ok(Response::new(pb::RequestCodeResponse {
            transaction_id: issued.transaction_id,
            code: issued.code.display(),
            expires_at: issued.expires_at,
        }))
    }

    async fn await_transaction(
        &self,
        req: Request<pb::AwaitTransactionRequest>,
    ) -> Result<Response<pb::AwaitTransactionResponse>, Status> {
        let who = caller(&req)?;
        let m = req.into_inner();
        // A wait ends a second before the call's own deadline (the longer
        // stream deadline: this call is meant to wait), and at 30 s.
        let limit = self.stream_deadline;
        let wait = Duration::from_secs(u64::from(m.wait_seconds))
            .min(limit.saturating_sub(Duration::from_secs(1)));
        let vault = Arc::clone(&self.vault);
        // Detached: an outcome read (and the assertion it may carry) is on
        // the record even if the caller stops waiting.
        let out = detached(limit, async move {
            vault.await_transaction(&who, &m.transaction_id, wait).await
        })
        .await?;
        Ok(Response::new(pb::AwaitTransactionResponse {
            state: out.state.to_owned(),
            assertion: out.assertion.map(|a| a.to_string()).unwrap_or_default(),
            approved: out.approved,
        }))
    }
}

/// `DeviceService.LookupTransaction`.
pub(crate) async fn lookup_transaction(
    vault: &Arc<crate::service::Vault>,
    deadline: Duration,
    req: Request<pb::SignedDeviceRequest>,
) -> Result<Response<pb::LookupTransactionResponse>, Status> {
    let who = caller(&req)?;
    let s = super::consent::signed(req.into_inner());
    let vault = Arc::clone(vault);
    let l = detached(
        deadline,
        async move { vault.lookup_transaction(&who, s).await },
    )
    .await?;
    Ok(Response::new(pb::LookupTransactionResponse {
        transaction_id: l.transaction_id,
        requester: l.requester,
        binding_message: l.binding_message,
        claims: l.claims,
        expires_at: l.expires_at,
    }))
}

/// `DeviceService.AnswerTransaction`.
pub(crate) async fn answer_transaction(
    vault: &Arc<crate::service::Vault>,
    deadline: Duration,
    req: Request<pb::SignedDeviceRequest>,
) -> Result<Response<pb::AnswerTransactionResponse>, Status> {
    let who = caller(&req)?;
    let s = super::consent::signed(req.into_inner());
    let vault = Arc::clone(vault);
    let state = detached(
        deadline,
        async move { vault.answer_transaction(&who, s).await },
    )
    .await?;
    Ok(Response::new(pb::AnswerTransactionResponse {
        state: state.to_owned(),
    }))
}
