//! Blind matching use cases: index subjects' variants on write, answer
//! match queries with pairwise tokens, pace partners, backfill domains.
//!
//! Index rows are written in the same transaction as the packets they
//! describe, for every configured match domain, under the current key
//! version; a query probes every live version. Every query runs inside an
//! audited transaction, so a subject deleted before it is never answered,
//! and the audit record lists which subjects were revealed to whom.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, PoisonError};

use idvault_policies::Action;
use idvault_tokenizer::NormalizeOptions;
use idvault_tokenizer::matching::Level;
use idvault_tokenizer::variants::MatchField;

use crate::config::Partner;
use crate::service::{Caller, Vault, VaultError};
use crate::store::{AuditedTx, MatchRow};
use idvault_core::keys::KeyError;
use idvault_core::matching::{
    BadSignature, CANDIDATE_LIMIT, FIRST_CANDIDATES, Hit, MatchKeyring, PlannedQuery,
    decode_signature, encode_signature, field_mask, plan_query,
};
pub use idvault_core::matching::{MAX_QUERY_ID, MAX_RESULTS, MIN_SCORE, MatchQuery};
use idvault_core::subject::{FieldName, FieldValue, SubjectId};

/// Most queries in one batch message.
pub const MAX_BATCH: usize = 100;
/// Validates and plans `q` as the service does, without a store: for the
/// fuzz target over decoded requests. Returns the blocking probe count.
pub fn check_query(
    q: MatchQuery,
    keyrings: &[Arc<MatchKeyring>],
    opts: &NormalizeOptions,
) -> Result<usize, String> {
    plan_query(q, keyrings, opts).map(|p| p.plan.blocking_indexes().len())
}

impl From<BadSignature> for VaultError {
    fn from(_: BadSignature) -> Self {
        VaultError::Integrity("match_subjects.signature")
    }
}

/// Candidates of one planned query in the partner's domain scoring at
/// least its cut-off, best first: the few best-ranked first, all of them
/// only when those do not settle it (`PlannedQuery::settled_by`).
async fn best_candidates(
    store: &crate::store::Store,
    partner: &Partner,
    p: &PlannedQuery,
) -> Result<Vec<Hit>, VaultError> {
    let blocking = p.plan.blocking_indexes();
    let domain = partner.match_domain.as_str();
    let mut candidates = store
        .match_candidates(domain, &blocking, FIRST_CANDIDATES)
        .await?;
    if !p.settled_by(&candidates)? {
        candidates = store
            .match_candidates(domain, &blocking, CANDIDATE_LIMIT)
            .await?;
    }
    Ok(p.rank(candidates)?)
}

/// Prefix of pairwise tokens.
pub const PAIRWISE_PREFIX: &str = "pw_";

/// One answer candidate: no PII, only this partner's token for the subject.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchCandidate {
    /// The partner's pairwise token.
    pub pairwise_token: String,
    /// Score in \[0, 1\].
    pub score: f64,
    /// Fields that agreed, and how.
    pub agreements: Vec<(MatchField, Level)>,
}

/// The answer to one query of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryAnswer {
    /// Answered (possibly with no candidate).
    Answered(Vec<MatchCandidate>),
    /// Refused; the reason names fields and figures, never values.
    Refused(String),
}

/// How a batch meets the partner's rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// Refuse when the budget is spent (unary calls).
    Refuse,
    /// Wait for the budget (streams: a bulk job runs at the allowed rate).
    Wait,
}

/// A subject's blind indexes in one match domain: `(field, index,
/// blocking)` entries at key `version`.
#[derive(Debug, Clone)]
pub(crate) struct DomainIndexes {
    domain: String,
    version: u32,
    entries: Vec<(MatchField, i64, bool)>,
}

/// Whether `s` has the shape of a pairwise token: `pw_` and 26 lower-case
/// base32 characters.
pub fn valid_pairwise_token(s: &str) -> bool {
    s.len() == PAIRWISE_PREFIX.len() + 26
        && s.strip_prefix(PAIRWISE_PREFIX).is_some_and(|t| {
            t.bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
        })
}

/// A new random pairwise token: `pw_` and 26 base32 characters (128 bits).
fn new_pairwise_token(rng: &dyn idvault_core::Rng) -> Result<String, VaultError> {
    let mut b = [0u8; 16];
    rng.fill(&mut b).map_err(KeyError::from)?;
    let mut out = String::from(PAIRWISE_PREFIX);
    idvault_tokenizer::token::base32_lower_into(&b, &mut out);
    Ok(out)
}

/// The blind indexes of a subject's `fields` under `ring`: `(field,
/// index, blocking)`. The one place indexes are built, for a create or an
/// update as for a re-index.
fn subject_entries(
    ring: &MatchKeyring,
    fields: &[(FieldName, FieldValue)],
    opts: &NormalizeOptions,
) -> Vec<(MatchField, i64, bool)> {
    let mut entries = Vec::new();
    for (name, value) in fields {
        if let Some(f) = MatchField::parse(name.as_str()) {
            for (i, blocking) in ring.subject_indexes(f, value.expose(), opts) {
                entries.push((f, i, blocking));
            }
        }
    }
    entries
}

impl Vault {
    /// The keyrings of `domain`, newest version first (cached).
    fn keyrings(&self, domain: &str) -> Result<Vec<Arc<MatchKeyring>>, VaultError> {
        let versions = self.keys().versions();
        let mut cache = self
            .matching()
            .keyrings
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        versions
            .into_iter()
            .rev()
            .map(|v| {
                if let Some(k) = cache.get(&(domain.to_owned(), v)) {
                    return Ok(Arc::clone(k));
                }
                let k = Arc::new(MatchKeyring::derive(self.keys(), domain, v)?);
                cache.insert((domain.to_owned(), v), Arc::clone(&k));
                Ok(k)
            })
            .collect()
    }

    /// The current keyring of `domain` (benchmarks load fixtures with it).
    pub fn current_keyring(&self, domain: &str) -> Result<Arc<MatchKeyring>, VaultError> {
        self.keyrings(domain)?
            .into_iter()
            .next()
            .ok_or(VaultError::Internal("no key version"))
    }

    /// The country code phone numbers without one are read in.
    pub fn match_options(&self) -> &NormalizeOptions {
        &self.matching().opts
    }

    /// The blind indexes of `fields` in every match domain, current key
    /// version (computed before the transaction). Non-matchable fields give
    /// none.
    pub(crate) fn match_rows_of(
        &self,
        fields: &[(FieldName, FieldValue)],
    ) -> Result<Vec<DomainIndexes>, VaultError> {
        let st = self.matching();
        let mut out = Vec::with_capacity(st.domains.len());
        for domain in &st.domains {
            let ring = self.current_keyring(domain)?;
            out.push(DomainIndexes {
                domain: domain.clone(),
                version: ring.version(),
                entries: subject_entries(&ring, fields, &st.opts),
            });
        }
        Ok(out)
    }

    /// Writes a subject's indexes in `tx`. With `replace` (an update), the
    /// subject's old indexes of those fields are dropped first and its
    /// other fields' indexes kept.
    pub(crate) async fn write_match_rows(
        &self,
        tx: &mut AuditedTx,
        subject: &SubjectId,
        replace: &[(FieldName, FieldValue)],
        indexes: &[DomainIndexes],
    ) -> Result<(), VaultError> {
        let codes: Vec<u8> = replace
            .iter()
            .filter_map(|(n, _)| MatchField::parse(n.as_str()).map(MatchField::code))
            .collect();
        let update = !replace.is_empty();
        if update && codes.is_empty() {
            // An update of fields that are never matched: nothing changes.
            return Ok(());
        }
        let mut old = if update {
            tx.match_delete_fields(subject, &codes).await?;
            tx.match_signatures(subject).await?
        } else {
            HashMap::new()
        };
        // One statement for every domain's signature, one for every
        // domain's blocking rows: each statement is a round trip inside the
        // write lock.
        let mut signatures = Vec::with_capacity(indexes.len());
        let mut rows: Vec<MatchRow<'_>> = Vec::new();
        for d in indexes {
            let mut entries: Vec<(MatchField, i64)> = match old.remove(&d.domain) {
                Some(sig) => decode_signature(&sig)
                    .ok_or(VaultError::Integrity("match_subjects.signature"))?
                    .into_iter()
                    .filter(|(f, _)| !codes.contains(&f.code()))
                    .collect(),
                None => Vec::new(),
            };
            entries.extend(d.entries.iter().map(|(f, i, _)| (*f, *i)));
            let present = field_mask(entries.iter().map(|(f, _)| *f));
            signatures.push((d.domain.as_str(), present, encode_signature(&entries)));
            rows.extend(
                d.entries
                    .iter()
                    .filter(|(_, _, blocking)| *blocking)
                    .map(|(f, i, _)| (d.domain.as_str(), f.code(), d.version, *i)),
            );
        }
        tx.match_set_subject(subject, &signatures);
        tx.match_insert(subject, &rows);
        Ok(())
    }

    /// Records the creator's pairwise token of a new subject; returns it.
    pub(crate) async fn issue_pairwise(
        &self,
        tx: &mut AuditedTx,
        partner: &Partner,
        subject: &SubjectId,
    ) -> Result<String, VaultError> {
        let token = new_pairwise_token(self.rng())?;
        tx.pairwise_insert(&partner.name, &[(*subject, token.clone())]);
        Ok(token)
    }

    /// Matches one query. A query with too little information is refused
    /// with [`VaultError::BadRequest`]; a spent rate budget with
    /// [`VaultError::RateLimited`]. Both are audited.
    pub async fn match_one(
        &self,
        caller: &Caller,
        query: MatchQuery,
    ) -> Result<Vec<MatchCandidate>, VaultError> {
        match self
            .match_batch(caller, vec![query], Pacing::Refuse, true)
            .await?
            .pop()
        {
            Some(QueryAnswer::Answered(c)) => Ok(c),
            // Refusals end the unary call (already audited in the batch).
            Some(QueryAnswer::Refused(why)) => Err(VaultError::BadRequest(why)),
            None => Err(VaultError::Internal("no answer")),
        }
    }

    /// Matches a batch of queries (1 to [`MAX_BATCH`]), answering each in
    /// order; a query with too little information gets a refusal in its
    /// place. With `refusal_is_error`, a batch whose only query is refused
    /// is audited as refused.
    pub async fn match_batch(
        &self,
        caller: &Caller,
        queries: Vec<MatchQuery>,
        pacing: Pacing,
        refusal_is_error: bool,
    ) -> Result<Vec<QueryAnswer>, VaultError> {
        self.handle(caller, Action::MatchSubjects, async |req| {
            let partner = req.partner;
            let n = queries.len();
            if n == 0 || n > MAX_BATCH {
                return Err(VaultError::BadRequest(format!(
                    "a batch holds 1 to {MAX_BATCH} queries"
                )));
            }
            self.spend_rate(partner, n, pacing).await?;
            let keyrings = self.keyrings(&partner.match_domain)?;
            let opts = &self.matching().opts;
            let planned: Vec<Result<PlannedQuery, String>> = queries
                .into_iter()
                .map(|q| plan_query(q, &keyrings, opts))
                .collect();
            if refusal_is_error && let [Err(why)] = planned.as_slice() {
                return Err(VaultError::BadRequest(why.clone()));
            }
            self.run_batch(req, planned).await
        })
        .await
    }

    /// Spends `n` queries of the partner's rate budget: waits for it or
    /// refuses, as `pacing` says.
    async fn spend_rate(
        &self,
        partner: &Partner,
        n: usize,
        pacing: Pacing,
    ) -> Result<(), VaultError> {
        let Some(limiter) = self.matching().limiters.get(&partner.name) else {
            return Err(VaultError::Internal("no rate limiter"));
        };
        let cells =
            NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
        let outcome = match pacing {
            Pacing::Refuse => limiter.check_n(cells).map(|r| r.is_ok()),
            Pacing::Wait => limiter.until_n_ready(cells).await.map(|()| true),
        };
        match outcome {
            Ok(true) => Ok(()),
            Ok(false) => Err(VaultError::RateLimited(partner.match_rate.per_second)),
            Err(_) => {
                let burst = partner.match_rate.burst;
                Err(VaultError::BadRequest(format!(
                    "a batch of {n} queries exceeds this partner's match burst of {burst}"
                )))
            }
        }
    }

    async fn run_batch(
        &self,
        req: &super::pipeline::Request<'_>,
        planned: Vec<Result<PlannedQuery, String>>,
    ) -> Result<Vec<QueryAnswer>, VaultError> {
        let partner = req.partner;
        // Monotonic, for the debug phase timings only (never a decision).
        let started = tokio::time::Instant::now();
        // Candidates and known tokens are read from the pool, outside the
        // writer; only new tokens and the leaf go through it.
        let began = started.elapsed();
        let mut kept: Vec<Result<Vec<Hit>, String>> = Vec::with_capacity(planned.len());
        for p in planned {
            kept.push(match p {
                Ok(p) => Ok(best_candidates(self.store(), partner, &p).await?),
                Err(why) => Err(why),
            });
        }
        let looked_up = started.elapsed();
        let mut subjects: Vec<SubjectId> = kept
            .iter()
            .flat_map(|k| k.iter().flatten().map(|h| h.subject))
            .collect();
        subjects.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        subjects.dedup();
        let mut tokens = if subjects.is_empty() {
            HashMap::new()
        } else {
            self.store()
                .pairwise_tokens_of(&partner.name, &subjects)
                .await?
        };
        // First answer to this partner about a subject: make its token
        // (or take the one a concurrent match made first).
        let mut fresh = Vec::new();
        for s in &subjects {
            if !tokens.contains_key(s) {
                fresh.push((*s, new_pairwise_token(self.rng())?));
            }
        }
        let mut tx = self.begin().await?;
        // A subject deleted since the lookup gets no token (on PostgreSQL
        // the row lock also orders this against a concurrent delete).
        let mut live = Vec::with_capacity(fresh.len());
        for (s, t) in fresh {
            if tx.subject(&s).await?.is_some() {
                live.push((s, t));
            }
        }
        let fresh = live;
        if !fresh.is_empty() {
            tx.pairwise_insert(&partner.name, &fresh);
            let made: Vec<SubjectId> = fresh.iter().map(|(s, _)| *s).collect();
            tokens.extend(tx.pairwise_tokens(&partner.name, &made).await?);
        }
        let refused = kept.iter().filter(|k| k.is_err()).count();
        let matched = kept
            .iter()
            .filter(|k| matches!(k, Ok(c) if !c.is_empty()))
            .count();
        let detail = format!(
            "queries={} refused={refused} matched={matched} subjects=[{}]",
            kept.len(),
            subjects
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        let tokens_done = started.elapsed();
        self.commit(tx, req, None, detail).await?;
        // Phase timings for latency work (`RUST_LOG=idvault::matching=debug`).
        tracing::debug!(
            begin_us = began.as_micros(),
            lookup_us = (looked_up - began).as_micros(),
            tokens_us = (tokens_done - looked_up).as_micros(),
            commit_us = (started.elapsed() - tokens_done).as_micros(),
            "match batch timings"
        );
        Ok(kept
            .into_iter()
            .map(|k| match k {
                Err(why) => QueryAnswer::Refused(why),
                Ok(c) => QueryAnswer::Answered(
                    c.into_iter()
                        // A subject deleted since the lookup has no token:
                        // it is no longer an answer.
                        .filter_map(|h| {
                            Some(MatchCandidate {
                                pairwise_token: tokens.get(&h.subject)?.clone(),
                                score: h.score,
                                agreements: h.agreements,
                            })
                        })
                        .collect(),
                ),
            })
            .collect())
    }

    /// Makes every configured match domain cover every subject: forgets
    /// domains no longer configured, and indexes existing subjects for new
    /// ones (decrypting each subject's newest values). Run at start.
    pub async fn prepare_matching(&self) -> Result<(), VaultError> {
        let st = self.matching();
        let recorded = self.store().match_domains().await?;
        let indexed: Vec<&String> = recorded
            .iter()
            .filter(|(_, done)| *done)
            .map(|(d, _)| d)
            .collect();
        let system = Caller::new("idvault");
        let stale = recorded
            .iter()
            .filter(|(d, _)| !st.domains.contains(d))
            .count();
        if stale > 0 {
            let mut tx = self.begin().await?;
            let rows = tx.match_drop_domains_except(&st.domains).await?;
            let detail = format!("reindex dropped_domains={stale} rows={rows}");
            self.commit_job(tx, &system, Action::MatchSubjects, detail)
                .await?;
        }
        for domain in st.domains.iter().filter(|d| !indexed.contains(d)) {
            self.store().mark_match_domain(domain, 0).await?;
            let n = self.backfill(&system, domain).await?;
            // Bookkeeping only (no personal data): not an audited write.
            self.store()
                .mark_match_domain(domain, self.now_millis())
                .await?;
            tracing::info!(domain = %domain, subjects = n, "match domain indexed");
        }
        Ok(())
    }

    /// Indexes every subject for `domain`, a page per audited transaction;
    /// returns subjects indexed.
    async fn backfill(&self, system: &Caller, domain: &str) -> Result<u64, VaultError> {
        const PAGE: u32 = 200;
        let ring = self
            .keyrings(domain)?
            .into_iter()
            .next()
            .ok_or(VaultError::Internal("no key version"))?;
        let opts = &self.matching().opts;
        let mut after: Option<SubjectId> = None;
        let mut total = 0u64;
        loop {
            let ids = self.store().subject_ids_after(after.as_ref(), PAGE).await?;
            let Some(last) = ids.last().copied() else {
                break;
            };
            after = Some(last);
            let mut tx = self.begin().await?;
            for id in &ids {
                // Deleted since the page was read: nothing to index.
                let Some(row) = tx.subject(id).await? else {
                    continue;
                };
                let values = self.newest_values(&mut tx, &row).await?;
                let indexes = [DomainIndexes {
                    domain: domain.to_owned(),
                    version: ring.version(),
                    entries: subject_entries(&ring, &values, opts),
                }];
                self.write_match_rows(&mut tx, id, &[], &indexes).await?;
                total += 1;
            }
            let detail = format!("reindex domain={domain} subjects={}", ids.len());
            self.commit_job(tx, system, Action::MatchSubjects, detail)
                .await?;
        }
        Ok(total)
    }
}
