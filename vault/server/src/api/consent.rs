//! `idvault.v1.ConsentService` (partners) and `idvault.v1.DeviceService`
//! (wallet apps relaying device-signed calls).

use std::sync::Arc;

use idvault_policies::Action;
use idvault_proto::v1 as pb;
use idvault_proto::v1::consent_service_server::ConsentService;
use idvault_proto::v1::device_service_server::DeviceService;
use tonic::{Request, Response, Status};

use super::{caller, status, within};
use crate::service::consent::{ReleaseInput, Signed};
use crate::service::devices::{DeviceOp, DeviceOutcome};
use idvault_core::rules::Rule;

/// Runs a use case on its own task and waits for it within `deadline`.
/// A client that cancels or times out stops waiting, but the use case
/// still finishes: a release's claim, receipt and audit record, or a
/// refusal's audit record, are never cut off halfway.
pub(crate) async fn detached<T, F>(deadline: std::time::Duration, f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: Future<Output = Result<T, crate::service::VaultError>> + Send + 'static,
{
    // Nothing is started after the server stopped waiting for it (what
    // started finishes: see above).
    let until = tokio::time::Instant::now() + deadline;
    let task = tokio::spawn(crate::service::pipeline::scoped_deadline(until, f));
    within(deadline, async {
        task.await
            .map_err(|_| Status::internal("internal error"))?
            .map_err(status)
    })
    .await
}

adapter!(
    /// The partner-facing consent service.
    ConsentApi
);

#[tonic::async_trait]
impl ConsentService for ConsentApi {
    async fn issue_enrollment_code(
        &self,
        req: Request<pb::IssueEnrollmentCodeRequest>,
    ) -> Result<Response<pb::IssueEnrollmentCodeResponse>, Status> {
        let who = caller(&req)?;
        let vault = Arc::clone(&self.vault);
        let subject = req.into_inner().subject_id;
        let (code, expires_at) = detached(self.deadline, async move {
            vault.issue_enrollment_code(&who, &subject).await
        })
        .await?;
        Ok(Response::new(pb::IssueEnrollmentCodeResponse {
            enrollment_code: code.to_string(),
            expires_at,
        }))
    }

    async fn request_challenge(
        &self,
        req: Request<pb::RequestChallengeRequest>,
    ) -> Result<Response<pb::RequestChallengeResponse>, Status> {
        let who = caller(&req)?;
        let vault = Arc::clone(&self.vault);
        let subject = req.into_inner().subject_id;
        let (challenge, expires_at) = detached(self.deadline, async move {
            vault.issue_challenge(&who, &subject).await
        })
        .await?;
        Ok(Response::new(pb::RequestChallengeResponse {
            challenge: challenge.to_vec(),
            expires_at,
        }))
    }

    async fn release(
        &self,
        req: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        use pb::release_request::Consent;
        let who = caller(&req)?;
        let req = req.into_inner();
        let nonce = req.nonce;
        if nonce.len() > idvault_core::consent::MAX_RELEASE_NONCE {
            return Err(self
                .malformed(
                    &who,
                    (Action::PresentConsent, Action::ReleaseConsented),
                    "ReleaseRequest.nonce is at most 64 bytes",
                )
                .await);
        }
        let input = match req.consent {
            Some(Consent::Signed(s)) => ReleaseInput::Grant(Signed {
                bytes: s.grant,
                signature: s.signature,
                device_id: s.device_id,
            }),
            Some(Consent::StandingConsentId(id)) => ReleaseInput::Standing(id),
            None => {
                return Err(self
                    .malformed(
                        &who,
                        (Action::PresentConsent, Action::ReleaseConsented),
                        "a signed grant or a standing consent id is required",
                    )
                    .await);
            }
        };
        let vault = Arc::clone(&self.vault);
        let r = detached(self.deadline, async move {
            vault.release(&who, input, &nonce).await
        })
        .await?;
        Ok(Response::new(pb::ReleaseResponse {
            consent_id: r.consent_id.to_vec(),
            subject_id: r.subject.to_string(),
            enc: r.enc,
            ciphertext: r.ciphertext,
            receipt_id: r.receipt_id,
            grant_hash: r.grant_hash.to_vec(),
            signature: r.signature,
        }))
    }
}

adapter!(
    /// The wallet-facing device service.
    DeviceApi
);

impl DeviceApi {
    async fn call(
        &self,
        req: Request<pb::SignedDeviceRequest>,
        op: DeviceOp,
    ) -> Result<DeviceOutcome, Status> {
        let who = caller(&req)?;
        let s = signed(req.into_inner());
        let vault = Arc::clone(&self.vault);
        detached(self.deadline, async move {
            vault.device_call(&who, op, s).await
        })
        .await
    }
}

/// A signed device request as it arrived, for the service.
pub(crate) fn signed(m: pb::SignedDeviceRequest) -> Signed {
    Signed {
        bytes: m.request,
        signature: m.signature,
        device_id: m.device_id,
    }
}

fn unexpected() -> Status {
    Status::internal("unexpected device call outcome")
}

#[tonic::async_trait]
impl DeviceService for DeviceApi {
    async fn enroll(
        &self,
        req: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let who = caller(&req)?;
        let m = req.into_inner();
        let vault = Arc::clone(&self.vault);
        let device_id = detached(self.deadline, async move {
            vault.enroll_device(&who, &m.enrollment, &m.signature).await
        })
        .await?;
        Ok(Response::new(pb::EnrollResponse { device_id }))
    }

    async fn list_receipts(
        &self,
        req: Request<pb::SignedDeviceRequest>,
    ) -> Result<Response<pb::ListReceiptsResponse>, Status> {
        let DeviceOutcome::Receipts(rows) = self.call(req, DeviceOp::ListReceipts).await? else {
            return Err(unexpected());
        };
        Ok(Response::new(pb::ListReceiptsResponse {
            receipts: rows
                .into_iter()
                .map(|r| pb::Receipt {
                    receipt_id: r.receipt_id,
                    consent_id: r.consent_id.to_vec(),
                    partner: r.partner,
                    purpose: r.purpose,
                    fields: r.fields.iter().map(|f| f.as_str().to_owned()).collect(),
                    released_at_ms: r.released_at_ms,
                    grant_hash: r.grant_hash.to_vec(),
                })
                .collect(),
        }))
    }

    async fn revoke_consent(
        &self,
        req: Request<pb::SignedDeviceRequest>,
    ) -> Result<Response<pb::RevokeConsentResponse>, Status> {
        let DeviceOutcome::Revoked(revoked) = self.call(req, DeviceOp::RevokeConsent).await? else {
            return Err(unexpected());
        };
        Ok(Response::new(pb::RevokeConsentResponse { revoked }))
    }

    async fn list_devices(
        &self,
        req: Request<pb::SignedDeviceRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let DeviceOutcome::Devices(rows) = self.call(req, DeviceOp::ListDevices).await? else {
            return Err(unexpected());
        };
        Ok(Response::new(pb::ListDevicesResponse {
            devices: rows
                .into_iter()
                .map(|d| pb::Device {
                    device_id: d.device_id,
                    enrolled_at_ms: d.enrolled_at_ms,
                    revoked_at_ms: d.revoked_at_ms.unwrap_or(0),
                })
                .collect(),
        }))
    }

    async fn revoke_device(
        &self,
        req: Request<pb::SignedDeviceRequest>,
    ) -> Result<Response<pb::RevokeDeviceResponse>, Status> {
        let DeviceOutcome::Revoked(revoked) = self.call(req, DeviceOp::RevokeDevice).await? else {
            return Err(unexpected());
        };
        Ok(Response::new(pb::RevokeDeviceResponse { revoked }))
    }

    async fn revoke_credential(
        &self,
        req: Request<pb::SignedDeviceRequest>,
    ) -> Result<Response<pb::RevokeCredentialResponse>, Status> {
        let DeviceOutcome::Revoked(revoked) = self.call(req, DeviceOp::RevokeCredential).await?
        else {
            return Err(unexpected());
        };
        Ok(Response::new(pb::RevokeCredentialResponse { revoked }))
    }

    async fn link_entity(
        &self,
        req: Request<pb::SignedDeviceRequest>,
    ) -> Result<Response<pb::LinkEntityResponse>, Status> {
        let DeviceOutcome::Linked(linked) = self.call(req, DeviceOp::LinkEntity).await? else {
            return Err(unexpected());
        };
        Ok(Response::new(pb::LinkEntityResponse { linked }))
    }

    async fn unlink_entity(
        &self,
        req: Request<pb::SignedDeviceRequest>,
    ) -> Result<Response<pb::UnlinkEntityResponse>, Status> {
        let DeviceOutcome::Unlinked {
            unlinked,
            rules_removed,
        } = self.call(req, DeviceOp::UnlinkEntity).await?
        else {
            return Err(unexpected());
        };
        Ok(Response::new(pb::UnlinkEntityResponse {
            unlinked,
            rules_removed,
        }))
    }

    async fn set_rules(
        &self,
        req: Request<pb::SignedDeviceRequest>,
    ) -> Result<Response<pb::SetRulesResponse>, Status> {
        let DeviceOutcome::Rules(rules) = self.call(req, DeviceOp::SetRules).await? else {
            return Err(unexpected());
        };
        Ok(Response::new(pb::SetRulesResponse {
            rules: rules.iter().map(Rule::to_pb).collect(),
        }))
    }

    async fn list_rules(
        &self,
        req: Request<pb::SignedDeviceRequest>,
    ) -> Result<Response<pb::ListRulesResponse>, Status> {
        let DeviceOutcome::RuleList { entities, rules } =
            self.call(req, DeviceOp::ListRules).await?
        else {
            return Err(unexpected());
        };
        Ok(Response::new(pb::ListRulesResponse {
            entities: entities
                .into_iter()
                .map(|(entity, linked_at_ms)| pb::LinkedEntity {
                    entity,
                    linked_at_ms,
                })
                .collect(),
            rules: rules.iter().map(Rule::to_pb).collect(),
        }))
    }

    async fn suggest_rules(
        &self,
        req: Request<pb::SignedDeviceRequest>,
    ) -> Result<Response<pb::SuggestRulesResponse>, Status> {
        let DeviceOutcome::Suggestions(s) = self.call(req, DeviceOp::SuggestRules).await? else {
            return Err(unexpected());
        };
        Ok(Response::new(pb::SuggestRulesResponse {
            suggestions: s
                .into_iter()
                .map(|s| pb::RuleSuggestion {
                    rules: s.rules.iter().map(Rule::to_pb).collect(),
                    confidence: s.confidence,
                    support: u32::try_from(s.support).unwrap_or(u32::MAX),
                })
                .collect(),
        }))
    }

    async fn issue_credential(
        &self,
        req: Request<pb::SignedDeviceRequest>,
    ) -> Result<Response<pb::IssueCredentialResponse>, Status> {
        super::credentials::issue_credential(&self.vault, self.deadline, req).await
    }

    async fn lookup_transaction(
        &self,
        req: Request<pb::SignedDeviceRequest>,
    ) -> Result<Response<pb::LookupTransactionResponse>, Status> {
        super::transactions::lookup_transaction(&self.vault, self.deadline, req).await
    }

    async fn answer_transaction(
        &self,
        req: Request<pb::SignedDeviceRequest>,
    ) -> Result<Response<pb::AnswerTransactionResponse>, Status> {
        super::transactions::answer_transaction(&self.vault, self.deadline, req).await
    }
}
