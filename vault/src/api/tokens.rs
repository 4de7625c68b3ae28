//! `idvault.v1.TokenService`.

use std::sync::Arc;

use idvault_proto::v1::token_service_server::TokenService;
use idvault_proto::v1::{
    EntityMerge, IdentifierType as PbType, ImportBridgeRequest, ImportBridgeResponse, RecordError,
};
use idvault_tokenizer::{IdentifierType, NormalizeOptions};
use tonic::{Request, Response, Status, Streaming};

use super::{caller, status};
use crate::service::Vault;
use crate::xref::{BridgeRecord, ImportSummary};

/// The token service.
#[derive(Debug, Clone)]
pub struct TokenApi {
    vault: Arc<Vault>,
}

impl TokenApi {
    /// Serves `vault`.
    pub fn new(vault: Arc<Vault>) -> Self {
        Self { vault }
    }
}

fn id_type(t: i32) -> Option<IdentifierType> {
    match PbType::try_from(t).ok()? {
        PbType::Msisdn => Some(IdentifierType::Msisdn),
        PbType::Email => Some(IdentifierType::Email),
        PbType::Account => Some(IdentifierType::Account),
        PbType::Service => Some(IdentifierType::Service),
        PbType::Unspecified => None,
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn import_bridge(
        &self,
        req: Request<Streaming<ImportBridgeRequest>>,
    ) -> Result<Response<ImportBridgeResponse>, Status> {
        let who = caller(&req)?;
        let mut stream = req.into_inner();
        let mut total = ImportSummary::default();
        let mut offset = 0u64;
        while let Some(batch) = stream.message().await? {
            let opts = NormalizeOptions {
                default_country_code: u16::try_from(batch.default_country_code)
                    .ok()
                    .filter(|c| *c > 0),
            };
            let mut records = Vec::with_capacity(batch.records.len());
            let mut bad_types = Vec::new();
            for (i, r) in batch.records.into_iter().enumerate() {
                let mut ids = Vec::with_capacity(r.identifiers.len());
                let mut bad = false;
                for id in r.identifiers {
                    match id_type(id.r#type) {
                        Some(t) => ids.push((t, id.value)),
                        None => bad = true,
                    }
                }
                if bad {
                    // Keep positions: an empty record is refused with the reason below.
                    bad_types.push(i);
                    ids.clear();
                }
                records.push(BridgeRecord {
                    record_id: r.record_id,
                    identifiers: ids,
                    customer_location: non_empty(r.customer_location),
                    address_location: non_empty(r.address_location),
                });
            }
            let n = records.len() as u64;
            let mut s = self
                .vault
                .import_bridge(&who, records, opts)
                .await
                .map_err(status)?;
            for e in &mut s.rejected {
                if bad_types.contains(&e.index) {
                    e.reason = "identifier type unspecified or unknown".into();
                }
            }
            for e in &mut s.rejected {
                e.index += usize::try_from(offset).unwrap_or(usize::MAX);
            }
            offset += n;
            total.absorb(s);
        }
        Ok(Response::new(ImportBridgeResponse {
            records: total.records,
            entities_created: total.entities_created,
            identifiers_linked: total.identifiers_linked,
            records_unchanged: total.records_unchanged,
            merges: total
                .merges
                .into_iter()
                .map(|m| EntityMerge {
                    record_id: m.record_id,
                    surviving_token: m.surviving,
                    merged_tokens: m.merged,
                })
                .collect(),
            rejected: total
                .rejected
                .into_iter()
                .map(|e| RecordError {
                    index: e.index as u64,
                    record_id: e.record_id,
                    reason: e.reason,
                })
                .collect(),
        }))
    }
}
