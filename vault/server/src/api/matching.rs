//! `idvault.v1.MatchService`.

use std::sync::Arc;

use idvault_policies::Action;
use idvault_proto::v1::match_service_server::MatchService;
use idvault_proto::v1::{
    AgreementLevel, FieldAgreement, MatchBatchRequest, MatchBatchResponse,
    MatchCandidate as PbCandidate, MatchRequest, MatchResponse, MatchResult,
};
use idvault_tokenizer::matching::Level;
use tonic::{Request, Response, Status, Streaming};

use super::subjects::pairs;
use super::{caller, status, within};
use crate::service::matching::{MatchCandidate, MatchQuery, Pacing, QueryAnswer};

adapter!(
    /// The match service.
    MatchApi, streams
);

fn query(q: idvault_proto::v1::MatchQuery) -> MatchQuery {
    MatchQuery {
        fields: pairs(q.fields),
        max_results: q.max_results,
        min_score: q.min_score,
        query_id: q.query_id,
    }
}

fn level(l: Level) -> AgreementLevel {
    match l {
        Level::Exact => AgreementLevel::Exact,
        Level::Nickname => AgreementLevel::Nickname,
        Level::Similar => AgreementLevel::Similar,
        Level::Swapped => AgreementLevel::Swapped,
        Level::Year => AgreementLevel::Year,
        Level::Last4 => AgreementLevel::Last4,
        _ => AgreementLevel::Unspecified,
    }
}

fn candidates(c: Vec<MatchCandidate>) -> Vec<PbCandidate> {
    c.into_iter()
        .map(|c| PbCandidate {
            pairwise_token: c.pairwise_token,
            score: c.score,
            agreements: c
                .agreements
                .into_iter()
                .map(|(f, l)| FieldAgreement {
                    field: f.name().to_owned(),
                    level: level(l).into(),
                })
                .collect(),
        })
        .collect()
}

#[tonic::async_trait]
impl MatchService for MatchApi {
    type MatchStreamStream = super::Replies<MatchBatchResponse>;

    async fn r#match(&self, req: Request<MatchRequest>) -> Result<Response<MatchResponse>, Status> {
        let who = caller(&req)?;
        let Some(q) = req.into_inner().query else {
            return Err(self
                .malformed(
                    &who,
                    (Action::MatchSubjects, Action::MatchSubjects),
                    "MatchRequest.query is required",
                )
                .await);
        };
        let found = within(self.deadline, async {
            self.vault.match_one(&who, query(q)).await.map_err(status)
        })
        .await?;
        Ok(Response::new(MatchResponse {
            candidates: candidates(found),
        }))
    }

    async fn match_stream(
        &self,
        req: Request<Streaming<MatchBatchRequest>>,
    ) -> Result<Response<Self::MatchStreamStream>, Status> {
        let who = caller(&req)?;
        let mut stream = req.into_inner();
        let vault = Arc::clone(&self.vault);
        // A partner holds a few streams at once, not an unbounded number
        // of tasks; a refused one gets a status, not an empty stream.
        let slot = within(self.deadline, async {
            vault.open_match_stream(&who).await.map_err(status)
        })
        .await?;
        let (tx, rx) = super::replies(4);
        let deadline = super::stream_deadline(&who, self.stream_deadline);
        tokio::spawn(async move {
            let _slot = slot;
            loop {
                let batch = match super::next_message(&mut stream, deadline, "MatchStream").await {
                    Ok(Some(m)) => m,
                    Ok(None) => return,
                    Err(e) => {
                        super::send_final(&tx, e).await;
                        return;
                    }
                };
                let ids: Vec<String> = batch.queries.iter().map(|q| q.query_id.clone()).collect();
                let queries = batch.queries.into_iter().map(query).collect();
                // Pacing waits for the rate budget; the deadline still holds.
                let answered = tokio::time::timeout_at(
                    deadline,
                    vault.match_batch(&who, queries, Pacing::Wait, false),
                )
                .await;
                let answers = match answered {
                    Ok(Ok(a)) => a,
                    Ok(Err(e)) => {
                        super::send_final(&tx, status(e)).await;
                        return;
                    }
                    Err(_) => {
                        let e = Status::deadline_exceeded("MatchStream past its deadline");
                        super::send_final(&tx, e).await;
                        return;
                    }
                };
                let results = ids
                    .into_iter()
                    .zip(answers)
                    .map(|(query_id, a)| match a {
                        QueryAnswer::Answered(c) => MatchResult {
                            query_id,
                            candidates: candidates(c),
                            refused: String::new(),
                        },
                        QueryAnswer::Refused(why) => MatchResult {
                            query_id,
                            candidates: Vec::new(),
                            refused: why,
                        },
                    })
                    .collect();
                if !super::send_within(&tx, MatchBatchResponse { results }, deadline).await {
                    return;
                }
            }
        });
        Ok(Response::new(rx))
    }
}
