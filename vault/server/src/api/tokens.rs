//! `idvault.v1.TokenService`.

use idvault_proto::v1::token_service_server::TokenService;
use idvault_proto::v1::{
    BridgeIdentifier, DetokenizeRequest, DetokenizeResponse, EntityMerge, IdentifierType as PbType,
    ImportBridgeRequest, ImportBridgeResponse, LogFormat, RecordError, RejectedRecord,
    TokenizeLogRequest, TokenizeLogResponse, TokenizeMode,
};
use idvault_tokenizer::rewrite::{FieldSpec, Format};
use idvault_tokenizer::{IdentifierType, NormalizeOptions};
use tonic::{Request, Response, Status, Streaming};

use super::{caller, status, within};
use crate::service::tokens::bridge::{BridgeRecord, ImportSummary};

adapter!(
    /// The token service.
    TokenApi, streams
);

/// A failed ImportBridge message's status, saying that the stream's
/// earlier messages (`imported` records) were committed and stay: each
/// message is its own transaction, so the sender resumes after them
/// instead of sending them again.
fn earlier_batches_stay(mut st: Status, imported: u64) -> Status {
    if imported == 0 {
        return st;
    }
    let message = format!(
        "{} (the stream's earlier messages, {imported} records sent, were committed and stay)",
        st.message()
    );
    let metadata = std::mem::take(st.metadata_mut());
    Status::with_metadata(st.code(), message, metadata)
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

fn pb_type(t: IdentifierType) -> PbType {
    match t {
        IdentifierType::Msisdn => PbType::Msisdn,
        IdentifierType::Email => PbType::Email,
        IdentifierType::Account => PbType::Account,
        IdentifierType::Service => PbType::Service,
        // Locations are never linked identifiers.
        _ => PbType::Unspecified,
    }
}

/// The settings of a TokenizeLog stream's first message; `Err` says what
/// is wrong (never quoting the data).
fn settings(m: TokenizeLogRequest) -> Result<crate::service::tokens::log::Settings, String> {
    let s = m
        .settings
        .ok_or("the first TokenizeLog message must carry settings")?;
    let delimiter = match s.csv_delimiter {
        0 => b',',
        d => u8::try_from(d)
            .ok()
            .filter(u8::is_ascii)
            .ok_or("csv_delimiter must be one ASCII byte")?,
    };
    let format = match LogFormat::try_from(s.format) {
        Ok(LogFormat::JsonLines) => Format::JsonLines,
        Ok(LogFormat::Csv) => Format::Csv { delimiter },
        _ => {
            return Err("format must be LOG_FORMAT_JSON_LINES or LOG_FORMAT_CSV".into());
        }
    };
    let mode = match TokenizeMode::try_from(s.mode) {
        Ok(TokenizeMode::Stateless) => {
            crate::service::tokens::log::Mode::Stateless { domain: s.domain }
        }
        Ok(TokenizeMode::CrossReference) => crate::service::tokens::log::Mode::CrossReference,
        _ => {
            return Err("mode must be STATELESS or CROSS_REFERENCE".into());
        }
    };
    let fields = s
        .fields
        .iter()
        .map(|f| FieldSpec::parse(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok(crate::service::tokens::log::Settings {
        format,
        fields,
        mode,
        opts: NormalizeOptions {
            default_country_code: u16::try_from(s.default_country_code)
                .ok()
                .filter(|c| *c > 0),
        },
        csv_header: s.csv_header,
    })
}

/// Merges and refusals listed in one ImportBridge answer.
const REPORT_LIMIT: usize = 1000;
/// Bytes of rewritten data per response: rewriting can grow a record
/// (short identifiers become 43-character tokens), so one input message
/// may need several responses to stay under the message size limit.
const RESPONSE_DATA: usize = 256 * 1024;
/// Rejects per response (each under ~300 bytes).
const RESPONSE_REJECTS: usize = 1000;

/// Splits one fed chunk into responses under the size limits. Data is cut
/// anywhere: the client concatenates `data` in order.
fn responses(fed: crate::service::tokens::log::Fed) -> Vec<TokenizeLogResponse> {
    let mut out = Vec::new();
    let mut data = fed.data.as_slice();
    let mut rejects = fed.rejects.into_iter().map(|r| RejectedRecord {
        line: r.line,
        reason: r.reason,
    });
    loop {
        let (now, rest) = data.split_at(data.len().min(RESPONSE_DATA));
        data = rest;
        let rejected: Vec<RejectedRecord> = rejects.by_ref().take(RESPONSE_REJECTS).collect();
        if now.is_empty() && rejected.is_empty() {
            break;
        }
        out.push(TokenizeLogResponse {
            data: now.to_vec(),
            rejected,
            records_rewritten: 0,
        });
    }
    match out.last_mut() {
        Some(last) => last.records_rewritten = fed.rewritten,
        None if fed.rewritten > 0 => out.push(TokenizeLogResponse {
            records_rewritten: fed.rewritten,
            ..TokenizeLogResponse::default()
        }),
        None => {}
    }
    out
}

/// An `ImportBridge` message as the service takes it: its records, the
/// positions of those with an identifier of unknown type or with both or
/// neither of `value` and `sealed_value` (kept empty, so the service
/// refuses them at their place), and its normalising options.
pub fn bridge_batch(
    batch: ImportBridgeRequest,
) -> (Vec<BridgeRecord>, Vec<usize>, NormalizeOptions) {
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
            let value = match (id.value.is_empty(), id.sealed_value.is_empty()) {
                (false, true) => Some(crate::service::tokens::bridge::IdValue::Plain(id.value)),
                (true, false) => Some(crate::service::tokens::bridge::IdValue::Sealed(
                    id.sealed_value,
                )),
                // Both or neither: refuse rather than guess.
                _ => None,
            };
            match (id_type(id.r#type), value) {
                (Some(t), Some(v)) => ids.push((t, v)),
                _ => bad = true,
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
    (records, bad_types, opts)
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    type TokenizeLogStream = super::Replies<TokenizeLogResponse>;

    async fn tokenize_log(
        &self,
        req: Request<Streaming<TokenizeLogRequest>>,
    ) -> Result<Response<Self::TokenizeLogStream>, Status> {
        const A: idvault_policies::Action = idvault_policies::Action::TokenizeLog;
        let who = caller(&req)?;
        let mut stream = req.into_inner();
        let deadline = super::stream_deadline(&who, self.stream_deadline);
        let first = super::next_message(&mut stream, deadline, "TokenizeLog").await?;
        let settings = match first.as_ref().map(|m| settings(m.clone())) {
            Some(Ok(s)) => s,
            Some(Err(why)) => {
                return Err(self.malformed(&who, (A, A), &why).await);
            }
            None => {
                return Err(self
                    .malformed(&who, (A, A), "empty TokenizeLog stream")
                    .await);
            }
        };
        let data = first.map(|m| m.data).unwrap_or_default();
        let mut tok = self
            .vault
            .start_tokenize(&who, settings)
            .await
            .map_err(status)?;
        let (tx, rx) = super::replies(4);
        tokio::spawn(async move {
            let mut next = Some(data);
            loop {
                let (data, last) = match next.take() {
                    Some(d) => (d, false),
                    None => match super::next_message(&mut stream, deadline, "TokenizeLog").await {
                        Ok(Some(m)) => (m.data, false),
                        Ok(None) => (Vec::new(), true),
                        Err(e) => {
                            super::send_final(&tx, e).await;
                            return;
                        }
                    },
                };
                let fed = match tok.feed(&data, last).await {
                    Ok(fed) => fed,
                    Err(e) => {
                        super::send_final(&tx, status(e)).await;
                        return;
                    }
                };
                for reply in responses(fed) {
                    if !super::send_within(&tx, reply, deadline).await {
                        return;
                    }
                }
                if last {
                    return;
                }
            }
        });
        Ok(Response::new(rx))
    }

    async fn detokenize(
        &self,
        req: Request<DetokenizeRequest>,
    ) -> Result<Response<DetokenizeResponse>, Status> {
        let who = caller(&req)?;
        let d = within(self.deadline, async {
            self.vault
                .detokenize(&who, &req.into_inner().token)
                .await
                .map_err(status)
        })
        .await?;
        Ok(Response::new(DetokenizeResponse {
            token: d.token,
            identifiers: d
                .identifiers
                .into_iter()
                .map(|(t, v)| BridgeIdentifier {
                    r#type: pb_type(t).into(),
                    value: v.to_string(),
                    sealed_value: Vec::new(),
                })
                .collect(),
        }))
    }

    async fn import_bridge(
        &self,
        req: Request<Streaming<ImportBridgeRequest>>,
    ) -> Result<Response<ImportBridgeResponse>, Status> {
        let who = caller(&req)?;
        // Held until the stream ends: a partner has a few import streams
        // open at a time, like its other streams.
        let _slot = self.vault.open_import_stream(&who).await.map_err(status)?;
        let mut stream = req.into_inner();
        let mut total = ImportSummary::default();
        let (mut merges_total, mut rejected_total) = (0u64, 0u64);
        let mut offset = 0u64;
        let mut batches = 0u64;
        let deadline = super::stream_deadline(&who, self.stream_deadline);
        // A stream cut after some messages committed (one too large to
        // decode, the client gone silent, its deadline) says so as well:
        // otherwise the sender cannot tell them from nothing written and
        // sends the whole file again.
        while let Some(batch) = super::next_message(&mut stream, deadline, "ImportBridge")
            .await
            .map_err(|e| earlier_batches_stay(e, offset))?
        {
            batches += 1;
            let (records, bad_types, opts) = bridge_batch(batch);
            let n = records.len() as u64;
            let mut s = self
                .vault
                .import_bridge(&who, records, opts)
                .await
                .map_err(|e| earlier_batches_stay(status(e), offset))?;
            for e in &mut s.rejected {
                if bad_types.contains(&e.index) {
                    e.reason = "identifier with an unknown type, or not exactly one of value and sealed_value".into();
                }
            }
            for e in &mut s.rejected {
                e.index += usize::try_from(offset).unwrap_or(usize::MAX);
            }
            offset += n;
            // Kept bounded as the stream goes: only the first
            // REPORT_LIMIT of each list are answered anyway.
            let (m, r) = total.absorb(s, REPORT_LIMIT);
            merges_total += m;
            rejected_total += r;
        }
        if batches == 0 {
            // An empty stream is still an authorised, audited import.
            total = self
                .vault
                .import_bridge(&who, Vec::new(), NormalizeOptions::default())
                .await
                .map_err(status)?;
        }
        // Every batch is already committed: the answer must fit the
        // message limit whatever the stream held, so the lists hold the
        // first REPORT_LIMIT of each and the totals count them all.
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
            merges_total,
            rejected_total,
        }))
    }
}
