//! `idvault.v1.MatchService`.

use std::sync::Arc;

use idvault_policies::Action;
use idvault_proto::v1::match_service_server::MatchService;
use idvault_proto::v1::{
    AgreementLevel, FieldAgreement, LinkRequest, LinkResponse, LinkResult, MatchBatchRequest,
    MatchBatchResponse, MatchCandidate as PbCandidate, MatchRequest, MatchResponse, MatchResult,
};
use idvault_tokenizer::matching::Level;
use tonic::{Request, Response, Status, Streaming};

use super::subjects::pairs;
use super::{caller, status, within};
use crate::service::matching::{
    LinkAnswer, LinkJob, LinkRecord, MatchCandidate, MatchQuery, Pacing, QueryAnswer,
};

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
        Level::Partial => AgreementLevel::Partial,
        _ => AgreementLevel::Unspecified,
    }
}

fn agreements(a: Vec<(idvault_tokenizer::variants::MatchField, Level)>) -> Vec<FieldAgreement> {
    a.into_iter()
        .map(|(f, l)| FieldAgreement {
            field: f.name().to_owned(),
            level: level(l).into(),
        })
        .collect()
}

fn candidates(c: Vec<MatchCandidate>) -> Vec<PbCandidate> {
    c.into_iter()
        .map(|c| PbCandidate {
            pairwise_token: c.pairwise_token,
            score: c.score,
            agreements: agreements(c.agreements),
        })
        .collect()
}

fn link_results(answers: Vec<LinkAnswer>) -> Vec<LinkResult> {
    answers
        .into_iter()
        .map(|a| match a.answer {
            Ok(Some(c)) => LinkResult {
                record_id: a.record_id,
                pairwise_token: c.pairwise_token,
                score: c.score,
                agreements: agreements(c.agreements),
                refused: String::new(),
            },
            Ok(None) => LinkResult {
                record_id: a.record_id,
                ..LinkResult::default()
            },
            Err(why) => LinkResult {
                record_id: a.record_id,
                refused: why,
                ..LinkResult::default()
            },
        })
        .collect()
}

/// Runs one step of a stream's work within the stream's `deadline`: its
/// answer, or `None` after ending the stream with the step's error (or
/// DEADLINE_EXCEEDED naming the `rpc`).
async fn until<T>(
    tx: &super::ReplyTx<impl Send>,
    deadline: tokio::time::Instant,
    rpc: &str,
    step: impl Future<Output = Result<T, crate::service::VaultError>>,
) -> Option<T> {
    match tokio::time::timeout_at(deadline, step).await {
        Ok(Ok(a)) => Some(a),
        Ok(Err(e)) => {
            super::send_final(tx, status(e)).await;
            None
        }
        Err(_) => {
            let e = Status::deadline_exceeded(format!("{rpc} past its deadline"));
            super::send_final(tx, e).await;
            None
        }
    }
}

fn link_records(r: Vec<idvault_proto::v1::LinkRecord>) -> Vec<LinkRecord> {
    r.into_iter()
        .map(|r| LinkRecord {
            record_id: r.record_id,
            fields: pairs(r.fields),
        })
        .collect()
}

#[tonic::async_trait]
impl MatchService for MatchApi {
    type MatchStreamStream = super::Replies<MatchBatchResponse>;
    type LinkStream = super::Replies<LinkResponse>;

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
                let answered = vault.match_batch(&who, queries, Pacing::Wait, false);
                let Some(answers) = until(&tx, deadline, "MatchStream", answered).await else {
                    return;
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

    async fn link(
        &self,
        req: Request<Streaming<LinkRequest>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        let who = caller(&req)?;
        let mut stream = req.into_inner();
        let vault = Arc::clone(&self.vault);
        // A Link job is a match stream: the same per-partner slots.
        let slot = within(self.deadline, async {
            vault.open_match_stream(&who).await.map_err(status)
        })
        .await?;
        let (tx, rx) = super::replies(4);
        let deadline = super::stream_deadline(&who, self.stream_deadline);
        tokio::spawn(async move {
            let _slot = slot;
            let mut job: Option<LinkJob> = None;
            loop {
                let msg = match super::next_message(&mut stream, deadline, "Link").await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        super::send_final(&tx, e).await;
                        return;
                    }
                };
                let job = match &mut job {
                    Some(j) => j,
                    None => {
                        let o = msg.options.unwrap_or_default();
                        match LinkJob::new(o.one_to_one, o.min_score) {
                            Ok(j) => job.insert(j),
                            Err(e) => {
                                let e = vault
                                    .reject(&who, Action::MatchSubjects, Action::MatchSubjects, e)
                                    .await;
                                super::send_final(&tx, status(e)).await;
                                return;
                            }
                        }
                    }
                };
                // Pacing waits for the rate budget; the deadline still holds.
                let answered = vault.link_batch(&who, job, link_records(msg.records));
                let Some(answers) = until(&tx, deadline, "Link", answered).await else {
                    return;
                };
                let results = link_results(answers);
                let reply = LinkResponse {
                    received: job.received() as u64,
                    results,
                };
                if !super::send_within(&tx, reply, deadline).await {
                    return;
                }
            }
            let Some(job) = job.filter(LinkJob::one_to_one) else {
                return;
            };
            let received = job.received() as u64;
            let (chunks, _held) = job.assign();
            // Every chunk is revealed (its audit record committed) before
            // the first answer goes out. The assignment is decided over the
            // whole job, so what an early record gets depends on later
            // ones: a client that read the first answers and then went
            // away would otherwise have learnt about subjects named by
            // later chunks that no audit record would name.
            let mut replies = Vec::with_capacity(chunks.len());
            for chunk in chunks {
                let answered = vault.link_reveal(&who, chunk);
                let Some(answers) = until(&tx, deadline, "Link", answered).await else {
                    return;
                };
                replies.push(link_results(answers));
            }
            for results in replies {
                if !super::send_within(&tx, LinkResponse { received, results }, deadline).await {
                    return;
                }
            }
        });
        Ok(Response::new(rx))
    }
}
