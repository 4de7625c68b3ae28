//! `idvault.v1.CredentialService` (relying parties) and the digital-ID
//! call of `DeviceService` (docs/digital-id.md).

use std::sync::Arc;

use idvault_proto::v1 as pb;
use idvault_proto::v1::credential_service_server::CredentialService;
use tonic::{Request, Response, Status};

use super::consent::detached;
use super::{caller, status, within};

adapter!(
    /// The relying-party credential service.
    CredentialApi
);

#[tonic::async_trait]
impl CredentialService for CredentialApi {
    async fn get_issuer_keys(
        &self,
        req: Request<pb::GetIssuerKeysRequest>,
    ) -> Result<Response<pb::GetIssuerKeysResponse>, Status> {
        let who = caller(&req)?;
        let keys = within(self.deadline, async {
            self.vault.issuer_keys(&who).await.map_err(status)
        })
        .await?;
        Ok(Response::new(pb::GetIssuerKeysResponse {
            jwks: keys.to_json(),
        }))
    }

    async fn get_status_list(
        &self,
        req: Request<pb::GetStatusListRequest>,
    ) -> Result<Response<pb::GetStatusListResponse>, Status> {
        let who = caller(&req)?;
        let uri = req.into_inner().uri;
        let vault = Arc::clone(&self.vault);
        // Detached: a rebuild a caller started is finished (and cached)
        // even if that caller stops waiting.
        let token = detached(self.deadline, async move {
            vault.status_list_token(&who, &uri).await
        })
        .await?;
        Ok(Response::new(pb::GetStatusListResponse {
            status_list_token: token.as_str().to_owned(),
        }))
    }

    async fn revoke_credential(
        &self,
        req: Request<pb::RevokeCredentialRequest>,
    ) -> Result<Response<pb::RevokeCredentialResponse>, Status> {
        let who = caller(&req)?;
        let Some(c) = req
            .into_inner()
            .credential
            .filter(|c| idvault_core::sdjwt::status::valid_uri(&c.status_list_uri))
        else {
            // Refused at the edge, gated and audited like any refusal.
            let a = idvault_policies::Action::RevokeCredential;
            return Err(self
                .malformed(&who, (a, a), "credential: a status_list_uri and an index")
                .await);
        };
        let r = idvault_core::sdjwt::status::StatusRef {
            idx: c.index,
            uri: c.status_list_uri,
        };
        let vault = Arc::clone(&self.vault);
        // Detached: once started, a revocation completes and is audited.
        let out = detached(self.deadline, async move {
            vault.revoke_credential(&who, &r).await
        })
        .await?;
        Ok(Response::new(pb::RevokeCredentialResponse {
            revoked: out.revoked,
        }))
    }

    async fn verify_presentation(
        &self,
        req: Request<pb::VerifyPresentationRequest>,
    ) -> Result<Response<pb::VerifyPresentationResponse>, Status> {
        let who = caller(&req)?;
        let m = req.into_inner();
        let vault = Arc::clone(&self.vault);
        // Detached: a verified presentation's audit record is written even
        // if the caller stops waiting.
        let v = detached(self.deadline, async move {
            vault
                .verify_credential(&who, &m.presentation, &m.audience, &m.nonce)
                .await
        })
        .await?;
        Ok(Response::new(pb::VerifyPresentationResponse {
            claims_json: serde_json::Value::Object(v.disclosed.clone()).to_string(),
            disclosed: v.disclosed.keys().cloned().collect(),
            issuer: v.issuer.clone().unwrap_or_default(),
            vct: v.vct.clone().unwrap_or_default(),
            kid: v.kid.clone().unwrap_or_default(),
            issued_at: v.issued_at.unwrap_or_default(),
            expires_at: v.expires_at,
        }))
    }
}

/// `DeviceService.IssueCredential`.
pub(crate) async fn issue_credential(
    vault: &Arc<crate::service::Vault>,
    deadline: std::time::Duration,
    req: Request<pb::SignedDeviceRequest>,
) -> Result<Response<pb::IssueCredentialResponse>, Status> {
    let who = caller(&req)?;
    let s = super::consent::signed(req.into_inner());
    let vault = Arc::clone(vault);
    let c = detached(
        deadline,
        async move { vault.issue_credential(&who, s).await },
    )
    .await?;
    Ok(Response::new(pb::IssueCredentialResponse {
        enc: c.enc,
        sealed_credential: c.sealed,
    }))
}
