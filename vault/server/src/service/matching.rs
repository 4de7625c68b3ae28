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
use crate::service::pipeline::JOB_ACTOR;
use crate::service::{Caller, Vault, VaultError};
use crate::store::{AuditedTx, MatchRow};
use idvault_core::keys::KeyError;
use idvault_core::matching::{
    BadSignature, CANDIDATE_LIMIT, EstimateOptions, FIRST_CANDIDATES, Hit, INDEX_SCHEME,
    MatchKeyring, MatchModel, ModelEstimate, PlannedQuery, PreparedRecord, SubjectIndex,
    assign_one_to_one, decode_signature, estimate_model, plan_query,
};
pub use idvault_core::matching::{MAX_QUERY_ID, MAX_RESULTS, MIN_SCORE, MatchQuery};
use idvault_core::subject::{FieldName, FieldValue, SubjectId};
use idvault_core::tlog::leaf::reveal_tag;

/// Most queries in one batch message.
pub const MAX_BATCH: usize = 100;

/// Index rows (and signatures) a domain's clearing drops per transaction:
/// each is a random page of the subject-keyed indexes, so this bounds the
/// pages one transaction journals (SQLite keeps that journal in memory) and
/// how long it holds the writer.
const CLEAR_PART: u32 = 2_000;

/// Validates and plans `q` as the service does, without a store: for the
/// fuzz target over decoded requests. Returns the blocking probe count.
pub fn check_query(
    q: MatchQuery,
    keyrings: &[Arc<MatchKeyring>],
    opts: &NormalizeOptions,
) -> Result<usize, String> {
    plan_query(q, keyrings, opts, &MatchModel::prior()).map(|p| p.plan.blocking().len())
}

impl From<BadSignature> for VaultError {
    fn from(_: BadSignature) -> Self {
        VaultError::Integrity("match_subjects.signature")
    }
}

/// Candidates of one planned query in the partner's domain scoring at
/// least its cut-off, best first. The [`FIRST_CANDIDATES`] best ranked by
/// their blocking hits are read with their signatures in one query. Only
/// if those do not settle the query (`PlannedQuery::settled_by`) are the
/// [`CANDIDATE_LIMIT`] best ranked again, without signatures, and the
/// signatures of all the others read, in two halves side by side on two
/// pool connections: the answer is then the one reading all of them
/// gives. The partner's pairwise tokens of the first candidates come with
/// them, into `tokens` (`None`: the subject had none).
async fn best_candidates(
    store: &crate::store::Store,
    partner: &Partner,
    p: &PlannedQuery,
    tokens: &mut KnownTokens,
) -> Result<Vec<Hit>, VaultError> {
    let blocking = p.plan.blocking();
    let domain = partner.match_domain.as_str();
    // Monotonic, for the debug phase timings only (never a decision).
    let started = tokio::time::Instant::now();
    let (mut read, first_tokens) = store
        .match_candidates(domain, &partner.name, blocking, FIRST_CANDIDATES)
        .await?;
    tokens.extend(first_tokens);
    let first = started.elapsed();
    // A short first page holds every candidate; otherwise the unread rank
    // at most as high as the last one read (the page holds at most
    // FIRST_CANDIDATES).
    let next = read.get(FIRST_CANDIDATES as usize - 1).map(|c| c.gain);
    let settled = p.settled_by(&read, next)?;
    let mut ranked = first;
    if !settled {
        // Read the rest at once rather than a page at a time: at
        // 1,000,000 subjects 138 of the 139 queries (of 2,000) the first
        // page left open went on to the last page anyway, each page a
        // round trip of its own (docs/BENCHMARKS.md, "The rest of the
        // candidates at once"). Two halves on two connections, since a
        // signature read is mostly page reads (a reader's page cache does
        // not outlive another connection's commit), which two cores do
        // side by side.
        let seen: std::collections::HashSet<SubjectId> = read.iter().map(|c| c.subject).collect();
        // At most CANDIDATE_LIMIT in all, even if the first page's
        // subjects left the best ranked meanwhile.
        let budget = (CANDIDATE_LIMIT as usize).saturating_sub(read.len());
        let rest: Vec<crate::store::Ranked> = store
            .match_ranks(domain, blocking, CANDIDATE_LIMIT)
            .await?
            .into_iter()
            .filter(|r| !seen.contains(&r.subject))
            .take(budget)
            .collect();
        ranked = started.elapsed();
        let (front, back) = rest.split_at(rest.len().div_ceil(2));
        let (front, back) = tokio::try_join!(
            store.match_signatures(domain, front),
            store.match_signatures(domain, back)
        )?;
        read.extend(front);
        read.extend(back);
    }
    let read_time = started.elapsed();
    let candidates = read.len();
    let hits = p.rank(&read)?;
    let wide = p.needs_wide(&hits);
    tracing::debug!(
        keys = blocking.len(),
        settled,
        candidates,
        wide,
        first_us = first.as_micros(),
        ranks_us = (ranked - first).as_micros(),
        read_us = read_time.as_micros(),
        rank_us = (started.elapsed() - read_time).as_micros(),
        "match lookup timings"
    );
    if !wide {
        check_answered(store, domain, &hits, &read)?;
        return Ok(hits);
    }
    // Wide keys (a name pair, a family name and birth year): a duplicate
    // whose identifying fields are all corrupted is only found this way.
    let mut all = store
        .match_wide_candidates(domain, p.plan.wide(), CANDIDATE_LIMIT)
        .await?;
    // Every subject is scored once, from the row read first: a subject
    // read again here (a later read, outside the first one's snapshot)
    // scores as it did, unless its row changed in between, and then the
    // row scored and the row checked would differ.
    let seen: std::collections::HashSet<SubjectId> = read.iter().map(|c| c.subject).collect();
    all.retain(|c| !seen.contains(&c.subject));
    let mut merged = hits;
    merged.extend(p.rank(&all)?);
    let hits = p.merge(merged);
    read.extend(all);
    check_answered(store, domain, &hits, &read)?;
    Ok(hits)
}

/// Checks the signature row MAC of every candidate in `hits` (the ones a
/// query answers with, at most `MAX_RESULTS`), among the candidates read:
/// a row that fails refuses the query as an integrity failure, before any
/// token is revealed. Only these are checked, not every candidate scored:
/// a forged row can then only push real candidates out of an answer
/// (which deleting them does too), never stand in one. Every row read
/// for an answered subject is checked, should one have been read twice.
fn check_answered(
    store: &crate::store::Store,
    domain: &str,
    hits: &[Hit],
    read: &[idvault_core::matching::Candidate],
) -> Result<(), VaultError> {
    if hits.is_empty() {
        return Ok(());
    }
    check_answered_with(&*store.row_keys()?, domain, hits, read)
}

/// [`check_answered`] with the row MAC keys at hand.
fn check_answered_with(
    keys: &idvault_core::rowmac::RowMac,
    domain: &str,
    hits: &[Hit],
    read: &[idvault_core::matching::Candidate],
) -> Result<(), VaultError> {
    for h in hits {
        let mut rows = read.iter().filter(|c| c.subject == h.subject).peekable();
        if rows.peek().is_none() {
            return Err(VaultError::Internal("an answered candidate was not read"));
        }
        for c in rows {
            crate::store::check_signature(keys, domain, c)?;
        }
    }
    Ok(())
}

/// Pairwise tokens a lookup read: `None` when the subject had none.
type KnownTokens = HashMap<SubjectId, Option<String>>;

/// The queries of a lookup refused because a row they would have
/// answered with failed its MAC: how many, and the first one's row kind.
#[derive(Debug, Default)]
struct Forged {
    count: usize,
    first: Option<&'static str>,
}

/// Why a query is refused whose answer's pairwise token row failed its
/// MAC (the name `VaultError` gives the row kind).
const PAIRWISE_FORGED: &str = "pairwise token row MAC";

/// Why a query is refused whose answer's new token, made and committed,
/// could not be read back: asking again answers it (with that token).
const UNREADABLE: &str = "unavailable: the answer's pairwise token could not be read; ask again";

/// Refuses each answered query of `kept` that would answer with one of
/// `subjects`, with `why` (prefixed `integrity: ` for a row that failed its
/// MAC, and then logged as an error naming the partner and the row kind,
/// never a value); returns how many it refused.
fn refuse_resting_on(
    kept: &mut [Result<Vec<Hit>, String>],
    subjects: &[SubjectId],
    why: &'static str,
    partner: &Partner,
) -> usize {
    let integrity = why == PAIRWISE_FORGED;
    let mut n = 0;
    for k in kept.iter_mut() {
        if matches!(k, Ok(hits) if hits.iter().any(|h| subjects.contains(&h.subject))) {
            *k = Err(if integrity {
                format!("integrity: {why}")
            } else {
                why.to_owned()
            });
            n += 1;
        }
    }
    if integrity && n > 0 {
        tracing::error!(
            partner = %partner.name,
            what = why,
            queries = n,
            "match queries were refused: a stored row failed its integrity check"
        );
    }
    n
}

/// The action of the records `idvault keys seal-upgraded-tokens` writes.
pub const SEAL_TOKENS_ACTION: &str = "SealUpgradedTokens";

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

/// Most records of a one-to-one Link job: their candidates are held until
/// the client closes its side (at most [`LINK_CANDIDATES`] each).
pub const MAX_LINK_RECORDS: usize = 100_000;
/// Records all one-to-one Link jobs together hold at most (about 450
/// bytes each with their candidates, so about 450 MB): each partner's jobs
/// are bounded by [`MAX_LINK_RECORDS`] and its stream limit, and this
/// bounds the sum over partners. A message that would pass it ends its
/// job with RESOURCE_EXHAUSTED (nothing was revealed yet; the partner
/// runs the job again later).
pub const MAX_HELD_LINK_RECORDS: usize = 1_000_000;
/// Candidates kept per record of a one-to-one Link job, so that a record
/// whose best subject goes to another can fall back to its next.
pub const LINK_CANDIDATES: u32 = 3;

/// One record of a Link job.
#[derive(Debug, Clone)]
pub struct LinkRecord {
    /// The partner's reference, echoed in the answer (at most
    /// [`MAX_QUERY_ID`] bytes).
    pub record_id: String,
    /// Field name and value pairs.
    pub fields: Vec<(String, String)>,
}

/// The answer to one Link record.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkAnswer {
    /// The record's reference.
    pub record_id: String,
    /// Its best (one-to-one: assigned) candidate, if any; `Err` when the
    /// record was refused (the reason names fields, never values).
    pub answer: Result<Option<MatchCandidate>, String>,
}

/// The state of one Link stream.
#[derive(Debug)]
pub struct LinkJob {
    one_to_one: bool,
    min_score: f64,
    received: usize,
    /// One-to-one: each record's reference and candidates, in order.
    pending: Vec<(String, Result<Vec<Hit>, String>)>,
    /// One-to-one: a permit per record in `pending`, from the vault-wide
    /// bound ([`MAX_HELD_LINK_RECORDS`]); given back when the job ends or
    /// is dropped.
    held: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl LinkJob {
    /// A job; refuses a `min_score` outside \[[`MIN_SCORE`], 1\] (0 means
    /// the threshold).
    pub fn new(one_to_one: bool, min_score: f64) -> Result<Self, VaultError> {
        if min_score != 0.0 && !(MIN_SCORE..=1.0).contains(&min_score) {
            return Err(VaultError::BadRequest(format!(
                "LinkOptions.min_score must be 0 or in [{MIN_SCORE}, 1]"
            )));
        }
        Ok(Self {
            one_to_one,
            min_score,
            received: 0,
            pending: Vec::new(),
            held: None,
        })
    }

    /// Takes `n` of the vault-wide permits for records a job will hold
    /// ([`MAX_HELD_LINK_RECORDS`]); refused at once when they are all
    /// taken. Given back when dropped, unless kept by [`Self::keep`].
    fn reserve(
        all: &Arc<tokio::sync::Semaphore>,
        n: usize,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, VaultError> {
        u32::try_from(n)
            .ok()
            .and_then(|n| Arc::clone(all).try_acquire_many_owned(n).ok())
            .ok_or(VaultError::Limit(
                "one-to-one Link jobs hold as many records as the vault keeps; run the job \
                 again later",
            ))
    }

    /// Keeps the permits of records now held, until the job ends.
    fn keep(&mut self, more: tokio::sync::OwnedSemaphorePermit) {
        match &mut self.held {
            Some(p) => p.merge(more),
            None => self.held = Some(more),
        }
    }

    /// Records received so far.
    pub fn received(&self) -> usize {
        self.received
    }

    /// Whether records are assigned one-to-one at the end.
    pub fn one_to_one(&self) -> bool {
        self.one_to_one
    }

    /// Ends a one-to-one job: assigns its records (see
    /// [`assign_one_to_one`]) and returns them in record order, in chunks
    /// of [`MAX_BATCH`] for [`Vault::link_reveal`], with the job's permits
    /// ([`LinkHeld`]: keep it until the answers are sent). Nothing is
    /// revealed until a chunk is.
    pub fn assign(self) -> (Vec<LinkChunk>, LinkHeld) {
        let held = LinkHeld {
            _permits: self.held,
        };
        let (ids, kept): (Vec<String>, Vec<Result<Vec<Hit>, String>>) =
            self.pending.into_iter().unzip();
        let candidates: Vec<Vec<Hit>> = kept
            .iter()
            .map(|k| k.as_ref().map_or_else(|_| Vec::new(), Clone::clone))
            .collect();
        let chosen = assign_one_to_one(&candidates);
        // For each subject assigned, how many other records of the job held
        // it as a candidate: each of them learns from what it is given (or
        // not) that a heavier record took that subject, so a job of many
        // variants of one person probes them all for one reveal. Their
        // count goes into the record that reveals the subject.
        // A record counts for a subject it ranked above what it was given
        // (or when it was given nothing): one given a better candidate of
        // its own lost nothing to the other record.
        let mut held_by: HashMap<SubjectId, usize> = HashMap::new();
        for (hits, choice) in candidates.iter().zip(&chosen) {
            let given = choice.unwrap_or(hits.len());
            for h in hits.iter().take(given.saturating_add(1)) {
                *held_by.entry(h.subject).or_default() += 1;
            }
        }
        let mut contested = kept
            .iter()
            .zip(&candidates)
            .zip(&chosen)
            .map(|((k, c), choice)| {
                let won = choice.filter(|_| k.is_ok()).and_then(|i| c.get(i));
                won.and_then(|h| {
                    let others = held_by.get(&h.subject).copied().unwrap_or(1) - 1;
                    (others > 0).then_some((h.subject, others))
                })
            })
            .collect::<Vec<_>>()
            .into_iter();
        let mut assigned = kept
            .into_iter()
            .zip(candidates)
            .zip(chosen)
            .map(|((k, c), choice)| {
                k.map(|_| {
                    choice
                        .and_then(|i| c.into_iter().nth(i))
                        .into_iter()
                        .collect()
                })
            });
        let mut ids = ids.into_iter().peekable();
        let mut out = Vec::new();
        while ids.peek().is_some() {
            let ids: Vec<String> = ids.by_ref().take(MAX_BATCH).collect();
            let assigned = assigned.by_ref().take(ids.len()).collect();
            let contested = contested.by_ref().take(ids.len()).flatten().collect();
            out.push(LinkChunk {
                ids,
                assigned,
                contested,
            });
        }
        (out, held)
    }
}

/// The permits of an ended one-to-one job's records: its answers stay in
/// memory until sent, so they count against [`MAX_HELD_LINK_RECORDS`]
/// until this is dropped.
#[derive(Debug)]
pub struct LinkHeld {
    _permits: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Up to [`MAX_BATCH`] assigned records of a one-to-one Link job.
#[derive(Debug)]
pub struct LinkChunk {
    ids: Vec<String>,
    assigned: Vec<Result<Vec<Hit>, String>>,
    /// The chunk's assigned subjects that other records of the job held
    /// as candidates, with how many such records.
    contested: HashMap<SubjectId, usize>,
}

/// How long a one-to-one job's answer chunk keeps trying while the vault
/// is too busy to take it.
const LINK_REVEAL_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Which call a reveal's audit record is for.
#[derive(Debug, Clone, Copy)]
enum RevealKind<'a> {
    /// A unary `Match` or a `MatchStream` batch.
    Match,
    /// A best-candidate `Link` message.
    Link,
    /// A chunk of a one-to-one `Link` job's answers, with its contested
    /// subjects ([`LinkChunk`]).
    OneToOne(&'a HashMap<SubjectId, usize>),
}

impl RevealKind<'_> {
    /// The record's detail starts with this.
    fn prefix(self) -> &'static str {
        match self {
            Self::Match => "",
            Self::Link => "link ",
            Self::OneToOne(_) => "link one_to_one ",
        }
    }
}

fn link_answers(ids: Vec<String>, answers: Vec<QueryAnswer>) -> Vec<LinkAnswer> {
    ids.into_iter()
        .zip(answers)
        .map(|(record_id, a)| LinkAnswer {
            record_id,
            answer: match a {
                QueryAnswer::Answered(c) => Ok(c.into_iter().next()),
                QueryAnswer::Refused(why) => Err(why),
            },
        })
        .collect()
}

/// Most subjects sampled for an estimate of a domain's weights.
pub const MAX_ESTIMATE_SAMPLE: u32 = 100_000;
/// How often a serving vault reloads the stored weights (another process,
/// `idvault match estimate`, may have learned new ones).
const MODEL_RELOAD: std::time::Duration = std::time::Duration::from_secs(30);

/// A domain's weights as the operator sees them.
#[derive(Debug, Clone)]
pub struct ModelReport {
    /// The match domain.
    pub domain: String,
    /// The stored estimate and when it was made (unix ms); `None`: the
    /// hand-set table is in use.
    pub estimate: Option<(i64, ModelEstimate)>,
    /// Why a stored estimate is not used (fails its MAC, unreadable).
    pub problem: Option<String>,
}

/// Everything a subject stores in one match domain, at key `version`.
#[derive(Debug, Clone)]
pub(crate) struct DomainIndexes {
    domain: String,
    version: u32,
    index: SubjectIndex,
}

/// The matchable fields of `fields`, each once (the first occurrence
/// wins), as the record blind indexes are built from.
pub(crate) fn matchable<'a>(
    fields: impl IntoIterator<Item = &'a (FieldName, FieldValue)>,
) -> Vec<(MatchField, &'a str)> {
    let mut out: Vec<(MatchField, &str)> = Vec::new();
    for (name, value) in fields {
        if let Some(f) = MatchField::parse(name.as_str())
            && !out.iter().any(|(g, _)| *g == f)
        {
            out.push((f, value.expose()));
        }
    }
    out
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

    /// The weights `domain`'s queries are scored with.
    pub fn match_model(&self, domain: &str) -> Arc<MatchModel> {
        self.matching()
            .models
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(domain)
            .cloned()
            .unwrap_or_default()
    }

    /// The current keyring of `domain` (benchmarks load fixtures with it).
    pub fn current_keyring(&self, domain: &str) -> Result<Arc<MatchKeyring>, VaultError> {
        self.keyrings(domain)?
            .into_iter()
            .next()
            .ok_or(VaultError::Internal("no key version"))
    }

    /// The configured match domains.
    pub fn match_domains(&self) -> &[String] {
        &self.matching().domains
    }

    /// The country code phone numbers without one are read in.
    pub fn match_options(&self) -> &NormalizeOptions {
        &self.matching().opts
    }

    /// What a subject whose matchable fields are `record` stores in every
    /// match domain, current key version (computed before the transaction).
    pub(crate) fn match_rows_of(
        &self,
        record: &[(MatchField, &str)],
    ) -> Result<Vec<DomainIndexes>, VaultError> {
        let st = self.matching();
        let mut out = Vec::with_capacity(st.domains.len());
        if st.domains.is_empty() {
            return Ok(out);
        }
        // Normalised once, keyed once per domain.
        let prepared = PreparedRecord::new(record, &st.opts);
        for domain in &st.domains {
            let ring = self.current_keyring(domain)?;
            out.push(DomainIndexes {
                domain: domain.clone(),
                version: ring.version(),
                index: ring.index_prepared(&prepared),
            });
        }
        Ok(out)
    }

    /// Writes a subject's indexes in `tx`, whole: with `replace` (an
    /// update, a re-index) its old rows are dropped first, and its
    /// signatures are overwritten either way. Compound blocking keys join
    /// several fields, so a subject is always indexed from all its newest
    /// values, never field by field.
    pub(crate) async fn write_match_rows(
        &self,
        tx: &mut AuditedTx,
        subject: &SubjectId,
        replace: bool,
        indexes: &[DomainIndexes],
    ) -> Result<(), VaultError> {
        if replace {
            tx.match_delete_subject(subject).await?;
        }
        // One statement for every domain's signature, one for every
        // domain's blocking rows: each statement is a round trip inside the
        // write lock.
        let mut signatures = Vec::with_capacity(indexes.len());
        let mut rows: Vec<MatchRow<'_>> = Vec::new();
        for d in indexes {
            signatures.push((
                d.domain.as_str(),
                d.index.present(),
                d.index.signature(d.version),
            ));
            rows.extend(
                d.index
                    .blocking
                    .iter()
                    .map(|(code, i)| (d.domain.as_str(), *code, d.version, *i)),
            );
        }
        tx.match_set_subject(subject, &signatures)?;
        tx.match_insert(subject, &rows)?;
        Ok(())
    }

    /// `idvault keys seal-upgraded-tokens`: seals the pairwise tokens that
    /// carry no MAC, as they are, in audited batches of 1,000 (each a
    /// record of the vault's own, `SealUpgradedTokens sealed=N`); returns
    /// how many. The operator runs it once, right after upgrading a
    /// database from before token MACs (migration 0019), and may run it
    /// again if it was interrupted. The vault never does this on its own:
    /// whatever it decided from would be in the database, which a writer
    /// without the root key could set up to have forged tokens sealed.
    pub async fn seal_upgraded_pairwise_tokens(&self) -> Result<u64, VaultError> {
        const BATCH: u32 = 1000;
        let actor = Caller::new(JOB_ACTOR);
        let mut total = 0;
        loop {
            let mut tx = self.begin().await?;
            let n = tx.seal_unsealed_pairwise_tokens(BATCH).await?;
            if n == 0 {
                return Ok(total);
            }
            self.commit_job_as(tx, &actor, SEAL_TOKENS_ACTION, format!("sealed={n}"))
                .await?;
            total += n;
        }
    }

    /// Records the creator's pairwise token of a new subject; returns it.
    pub(crate) async fn issue_pairwise(
        &self,
        tx: &mut AuditedTx,
        partner: &Partner,
        subject: &SubjectId,
    ) -> Result<String, VaultError> {
        let token = new_pairwise_token(self.rng())?;
        tx.pairwise_insert(&partner.name, &[(*subject, token.clone())])?;
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
            let model = self.match_model(&partner.match_domain);
            let planned: Vec<Result<PlannedQuery, String>> = queries
                .into_iter()
                .map(|q| plan_query(q, &keyrings, opts, &model))
                .collect();
            if refusal_is_error && let [Err(why)] = planned.as_slice() {
                return Err(VaultError::BadRequest(why.clone()));
            }
            self.run_batch(req, planned, refusal_is_error).await
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

    /// Looks up and answers a batch. With `refusal_is_error`, a batch of
    /// one query that failed an integrity check fails as a whole (the
    /// unary call's DATA_LOSS and its error record).
    async fn run_batch(
        &self,
        req: &super::pipeline::Request<'_>,
        planned: Vec<Result<PlannedQuery, String>>,
        refusal_is_error: bool,
    ) -> Result<Vec<QueryAnswer>, VaultError> {
        let (kept, tokens, forged) = self.lookup(req.partner, planned).await?;
        if refusal_is_error
            && kept.len() == 1
            && let Some(kind) = forged.first
        {
            return Err(VaultError::Integrity(kind));
        }
        self.reveal(
            req,
            kept,
            tokens,
            RevealKind::Match,
            forged.count,
            refusal_is_error,
        )
        .await
    }

    /// `made`'s tokens after the commit that stored them, from the pool;
    /// a failed read is tried twice more (a pool timeout, a connection
    /// lost), since the answer's record is committed already.
    async fn read_back(
        &self,
        partner: &str,
        made: &[SubjectId],
    ) -> Result<crate::store::PairwiseRead, crate::store::StoreError> {
        let mut tries = 0;
        loop {
            match self.store().pairwise_tokens_of(partner, made).await {
                Ok(read) => return Ok(read),
                Err(e) if tries >= 2 => return Err(e),
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50 * tries)).await;
                }
            }
        }
    }

    /// The candidates of each planned query, read from the pool, outside
    /// the writer: nothing is revealed or written yet. Also the partner's
    /// pairwise tokens read with them (of some candidates, not all; `None`:
    /// read, and the subject had none). A query whose answer would rest on
    /// a row that fails its MAC is refused alone (`integrity: …`), and
    /// counted: the batch's other queries are still answered, so one
    /// forged row cannot take a whole batch or Link job down with it.
    async fn lookup(
        &self,
        partner: &Partner,
        planned: Vec<Result<PlannedQuery, String>>,
    ) -> Result<(Vec<Result<Vec<Hit>, String>>, KnownTokens, Forged), VaultError> {
        let mut kept = Vec::with_capacity(planned.len());
        let mut tokens = HashMap::new();
        let mut forged = Forged::default();
        for p in planned {
            kept.push(match p {
                Ok(p) => match best_candidates(self.store(), partner, &p, &mut tokens).await {
                    Ok(hits) => Ok(hits),
                    Err(VaultError::Integrity(kind)) => {
                        tracing::error!(
                            partner = %partner.name,
                            what = kind,
                            "a match query was refused: a stored row failed its integrity check"
                        );
                        forged.count += 1;
                        forged.first.get_or_insert(kind);
                        Err(format!("integrity: {kind}"))
                    }
                    Err(e) => return Err(e),
                },
                Err(why) => Err(why),
            });
        }
        Ok((kept, tokens, forged))
    }

    /// Answers `kept` with the partner's pairwise tokens, issuing the ones
    /// it lacks, in one audited transaction whose record lists every
    /// subject revealed (`kind` prefixes the record's detail). `known`
    /// holds tokens the lookup read already (`None`: it read that the
    /// subject had none); the rest are read here. `forged` of the refused
    /// queries failed an integrity check (`integrity=N` in the record).
    ///
    /// With `whole` (a unary Match), a lone query that cannot be answered
    /// for a stored row failing its MAC, or for its new token not reading
    /// back, fails the call instead of being refused in its answer.
    async fn reveal(
        &self,
        req: &super::pipeline::Request<'_>,
        kept: Vec<Result<Vec<Hit>, String>>,
        mut known: KnownTokens,
        kind: RevealKind<'_>,
        forged: usize,
        whole: bool,
    ) -> Result<Vec<QueryAnswer>, VaultError> {
        let partner = req.partner;
        // Monotonic, for the debug phase timings only (never a decision).
        let started = tokio::time::Instant::now();
        let mut subjects: Vec<SubjectId> = kept
            .iter()
            .flat_map(|k| k.iter().flatten().map(|h| h.subject))
            .collect();
        subjects.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        subjects.dedup();
        // A token read before a concurrent deletion of its subject is
        // still answered (as one read an instant earlier would be): the
        // partner was given it before, and the answer is as of the lookup.
        // A subject the lookup found without a token is not read again: if
        // a concurrent match made one since, the read back after the
        // commit finds it in place of ours.
        let mut tokens: HashMap<SubjectId, String> = HashMap::with_capacity(subjects.len());
        let mut unknown = Vec::new();
        for s in &subjects {
            match known.remove(s) {
                Some(Some(t)) => {
                    tokens.insert(*s, t);
                }
                Some(None) => {}
                None => unknown.push(*s),
            }
        }
        let mut kept = kept;
        let mut forged = forged;
        if !unknown.is_empty() {
            let read = self
                .store()
                .pairwise_tokens_of(&partner.name, &unknown)
                .await?;
            tokens.extend(read.tokens);
            if !read.forged.is_empty() {
                // Refused alone, before anything is revealed or made: a
                // token row that fails its MAC names nobody.
                if whole && kept.len() == 1 {
                    return Err(VaultError::Integrity(PAIRWISE_FORGED));
                }
                forged += refuse_resting_on(&mut kept, &read.forged, PAIRWISE_FORGED, partner);
                // Only the subjects a query still answers with get tokens
                // and are listed as revealed: a refused query's other
                // candidates are not revealed.
                subjects.retain(|s| {
                    kept.iter()
                        .any(|k| matches!(k, Ok(hits) if hits.iter().any(|h| h.subject == *s)))
                });
            }
        }
        // First answer to this partner about a subject: make its token
        // (or take the one a concurrent match made first).
        let mut fresh = Vec::new();
        for s in &subjects {
            if !tokens.contains_key(s) {
                fresh.push((*s, new_pairwise_token(self.rng())?));
            }
        }
        let looked_up = started.elapsed();
        // Only written, never read inside the transaction, so the request
        // joins the writer's next batch instead of holding the writer for
        // its reads; the token of a subject deleted since the lookup is
        // not stored (`pairwise_insert`), and then it is not answered.
        let mut tx = self.begin().await?;
        tx.pairwise_insert(&partner.name, &fresh)?;
        let refused = kept.iter().filter(|k| k.is_err()).count();
        let matched = kept
            .iter()
            .filter(|k| matches!(k, Ok(c) if !c.is_empty()))
            .count();
        // Every subject about to be answered: the record never leaves out
        // a subject answered. One deleted since the lookup is listed; it
        // is answered only with a token read before the deletion (see
        // above), never with a new one. Listed as keyed tags, not ids: a
        // partner reads its own records back (GetInclusionProof), and the
        // vault's ids of the people it was answered with would tie its
        // pairwise tokens to them, so partners could join their records
        // through them. The operator finds a subject's tags with the key
        // (`idvault audit revealed`). A record of the vault's own beside
        // this one would cost a second leaf per query, sequenced and
        // hashed: about a sixth of Match's throughput (docs/BENCHMARKS.md).
        let key = self
            .keys()
            .audit_reveal_key(self.keys().current_version())?;
        // Each subject's tag once, in tag order (not subject order).
        let mut tagged: Vec<(String, &SubjectId)> = subjects
            .iter()
            .map(|s| {
                let tag = reveal_tag(&key, &req.caller.request_id, s.as_bytes());
                (hex::encode(tag), s)
            })
            .collect();
        tagged.sort_unstable();
        let tags: Vec<&str> = tagged.iter().map(|(t, _)| t.as_str()).collect();
        let mut detail = format!(
            "{}queries={} refused={refused} matched={matched} revealed=v{}:[{}]",
            kind.prefix(),
            kept.len(),
            key.version(),
            tags.join(",")
        );
        if let RevealKind::OneToOne(contested) = kind {
            // The same tags as in `revealed`, each with how many other
            // records of the job wanted that subject and did not get it
            // (`audit revealed` reports them).
            let held: Vec<String> = tagged
                .iter()
                .filter_map(|(t, s)| Some(format!("{t}*{}", contested.get(*s)?)))
                .collect();
            if !held.is_empty() {
                detail.push_str(&format!(" contested=[{}]", held.join(",")));
            }
        }
        if forged > 0 {
            detail.push_str(&format!(" integrity={forged}"));
        }
        let tokens_done = started.elapsed();
        self.commit(tx, req, None, detail).await?;
        let committed = started.elapsed();
        if !fresh.is_empty() {
            // Durable now: ours, or the one a concurrent match stored first.
            // The record is committed, so nothing here fails a batch (a
            // caller told "failed" would ask again and reveal twice): a
            // read that fails is tried again, and the queries resting on a
            // token that still cannot be read, or whose row fails its MAC,
            // are refused alone. A unary Match's lone query fails the call
            // with that error instead, and the pipeline records nothing
            // more (its record is the committed one).
            let made: Vec<SubjectId> = fresh.iter().map(|(s, _)| *s).collect();
            match self.read_back(&partner.name, &made).await {
                Ok(read) => {
                    tokens.extend(read.tokens);
                    if !read.forged.is_empty() {
                        if whole && kept.len() == 1 {
                            return Err(VaultError::Integrity(PAIRWISE_FORGED));
                        }
                        // After the commit: logged, not counted in the
                        // record (a writer swapped the row since it was made).
                        refuse_resting_on(&mut kept, &read.forged, PAIRWISE_FORGED, partner);
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        partner = %partner.name,
                        error = %e,
                        "a match's new pairwise tokens could not be read back after its commit"
                    );
                    if whole && kept.len() == 1 {
                        return Err(VaultError::from(e));
                    }
                    refuse_resting_on(&mut kept, &made, UNREADABLE, partner);
                }
            }
        }
        // Phase timings for latency work
        // (`RUST_LOG=idvault_server::service::matching=debug`).
        tracing::debug!(
            // Reading the tokens the lookup did not, and making new ones.
            before_tx_us = looked_up.as_micros(),
            tokens_us = (tokens_done - looked_up).as_micros(),
            commit_us = (committed - tokens_done).as_micros(),
            read_back_us = (started.elapsed() - committed).as_micros(),
            "match batch timings"
        );
        Ok(kept
            .into_iter()
            .map(|k| match k {
                Err(why) => QueryAnswer::Refused(why),
                Ok(c) => QueryAnswer::Answered(
                    c.into_iter()
                        // A subject without a token (deleted before its
                        // token was read or made) is no answer.
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

    /// Matches one message of a Link job (1 to [`MAX_BATCH`] records),
    /// paced to the partner's rate limit. Without one-to-one the records
    /// are answered at once with their best candidate. With it, their
    /// candidates are kept in `job` (nothing is revealed, the lookup is
    /// audited with counts only) and the answer is empty: the records are
    /// answered by [`Self::link_finish`].
    pub async fn link_batch(
        &self,
        caller: &Caller,
        job: &mut LinkJob,
        records: Vec<LinkRecord>,
    ) -> Result<Vec<LinkAnswer>, VaultError> {
        self.handle(caller, Action::MatchSubjects, async |req| {
            let partner = req.partner;
            let n = records.len();
            if n == 0 {
                return Ok(Vec::new());
            }
            if n > MAX_BATCH {
                return Err(VaultError::BadRequest(format!(
                    "a Link message holds at most {MAX_BATCH} records"
                )));
            }
            // Checked before anything is kept: a one-to-one job holds its
            // records' ids until the end.
            if records.iter().any(|r| r.record_id.len() > MAX_QUERY_ID) {
                return Err(VaultError::BadRequest(format!(
                    "a record_id holds at most {MAX_QUERY_ID} bytes"
                )));
            }
            if job.one_to_one && job.pending.len() + n > MAX_LINK_RECORDS {
                return Err(VaultError::BadRequest(format!(
                    "a one-to-one Link job holds at most {MAX_LINK_RECORDS} records"
                )));
            }
            // Before the rate is spent and anything is looked up; given
            // back if this message fails.
            let reserved = if job.one_to_one {
                Some(LinkJob::reserve(&self.matching().held_link_records, n)?)
            } else {
                None
            };
            self.spend_rate(partner, n, Pacing::Wait).await?;
            let keyrings = self.keyrings(&partner.match_domain)?;
            let opts = &self.matching().opts;
            let model = self.match_model(&partner.match_domain);
            let mut ids = Vec::with_capacity(n);
            let planned: Vec<Result<PlannedQuery, String>> = records
                .into_iter()
                .map(|r| {
                    ids.push(r.record_id.clone());
                    let q = MatchQuery {
                        fields: r.fields,
                        max_results: if job.one_to_one { LINK_CANDIDATES } else { 1 },
                        min_score: job.min_score,
                        query_id: r.record_id,
                    };
                    plan_query(q, &keyrings, opts, &model)
                })
                .collect();
            let (kept, tokens, forged) = self.lookup(partner, planned).await?;
            job.received += n;
            if !job.one_to_one {
                let answers = self
                    .reveal(req, kept, tokens, RevealKind::Link, forged.count, false)
                    .await?;
                return Ok(link_answers(ids, answers));
            }
            // Nothing revealed yet: the record says what was looked up,
            // not how many records found someone. The partner reads its
            // records back (`GetInclusionProof`), and a job it abandons
            // before its end reveals nothing: a count of records with
            // candidates would tell it, per message, whether a guessed
            // record is someone in the vault, with no reveal recorded.
            let refused = kept.iter().filter(|k| k.is_err()).count();
            let tx = self.begin().await?;
            let mut detail = format!("link lookup one_to_one queries={n} refused={refused}");
            if forged.count > 0 {
                detail.push_str(&format!(" integrity={}", forged.count));
            }
            self.commit(tx, req, None, detail).await?;
            job.pending.extend(ids.into_iter().zip(kept));
            if let Some(r) = reserved {
                job.keep(r);
            }
            Ok(Vec::new())
        })
        .await
    }

    /// Answers one chunk of an ended one-to-one Link job (see
    /// [`LinkJob::assign`]) in one audited transaction listing the subjects
    /// revealed.
    pub async fn link_reveal(
        &self,
        caller: &Caller,
        chunk: LinkChunk,
    ) -> Result<Vec<LinkAnswer>, VaultError> {
        let LinkChunk {
            ids,
            assigned,
            contested,
        } = chunk;
        // A full writer queue (or the partner's requests in flight at
        // their limit) refuses a chunk before anything is written or
        // revealed; it is tried again, backing off, rather than throwing
        // the whole job away with its earlier chunks recorded as revealed
        // but never sent. The stream's deadline still bounds the wait (the
        // caller drops this future), and so does `LINK_REVEAL_PATIENCE`.
        let mut pause = std::time::Duration::from_millis(10);
        let mut waited = std::time::Duration::ZERO;
        let answers = loop {
            let attempt = assigned.clone();
            let answered = self
                .handle(caller, Action::MatchSubjects, async |req| {
                    // Tokens read now: the lookup was long ago.
                    let kind = RevealKind::OneToOne(&contested);
                    self.reveal(req, attempt, HashMap::new(), kind, 0, false)
                        .await
                })
                .await;
            match answered {
                Err(VaultError::Overloaded(_)) if waited < LINK_REVEAL_PATIENCE => {
                    tokio::time::sleep(pause).await;
                    waited += pause;
                    pause = (pause * 2).min(std::time::Duration::from_secs(1));
                }
                other => break other?,
            }
        };
        Ok(link_answers(ids, answers))
    }

    /// Learns `domain`'s weights from a random sample of at most `sample`
    /// of its subjects (see [`estimate_model`]), stores them sealed with
    /// the row MAC in an audited transaction, and scores with them from
    /// now on (other processes reload them within [`MODEL_RELOAD`]).
    pub async fn estimate_match_model(
        &self,
        domain: &str,
        sample: u32,
    ) -> Result<ModelEstimate, VaultError> {
        if !self.matching().domains.iter().any(|d| d == domain) {
            return Err(VaultError::BadRequest(format!(
                "{domain} is not a configured match domain"
            )));
        }
        let sample = sample.clamp(2, MAX_ESTIMATE_SAMPLE);
        let raw = self.store().match_signature_sample(domain, sample).await?;
        let total = raw.len();
        let mut signatures: Vec<_> = raw.iter().filter_map(|b| decode_signature(b)).collect();
        let unreadable = total - signatures.len();
        // One key version only: indexes of two versions never agree, and
        // counts would split between them (after a rotation, until rewrap).
        let mut by_version: HashMap<u32, usize> = HashMap::new();
        for s in &signatures {
            *by_version.entry(s.version).or_default() += 1;
        }
        if let Some((v, _)) = by_version.iter().max_by_key(|(v, n)| (**n, **v)) {
            let v = *v;
            signatures.retain(|s| s.version == v);
        }
        let mut seed = [0u8; 8];
        self.rng().fill(&mut seed).map_err(KeyError::from)?;
        let seed = u64::from_be_bytes(seed);
        // Seconds of CPU for a large sample: off the async workers.
        let est = tokio::task::spawn_blocking(move || {
            estimate_model(
                &signatures,
                &idvault_tokenizer::matching::Model::prior(),
                seed,
                &EstimateOptions::default(),
            )
        })
        .await
        .map_err(|_| VaultError::Internal("estimate task failed"))?
        .map_err(|e| VaultError::BadRequest(format!("cannot estimate {domain}'s weights: {e}")))?;
        let now = self.now_millis();
        let mut tx = self.begin().await?;
        tx.match_model_put(domain, now, &est.encode()).await?;
        let detail = format!(
            "estimate domain={domain} subjects={} unreadable={unreadable} blocked_pairs={} random_pairs={} converged={}",
            est.population, est.blocked_pairs, est.random_pairs, est.converged
        );
        self.commit_job(tx, &Caller::new(JOB_ACTOR), Action::MatchSubjects, detail)
            .await?;
        let model = self.live_model(domain, est.model.clone());
        self.matching()
            .models
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(domain.to_owned(), Arc::new(model));
        Ok(est)
    }

    /// `model` without value frequencies counted under a key version this
    /// process no longer holds (see
    /// [`MatchModel::without_stale_frequencies`]), said once per load.
    fn live_model(&self, domain: &str, model: MatchModel) -> MatchModel {
        let (model, dropped) = model.without_stale_frequencies(&self.keys().versions());
        if dropped {
            tracing::warn!(domain = %domain, "the stored value frequencies were counted under a key version no longer live (or an unknown one): scoring without them; run `idvault match estimate` again");
        }
        model
    }

    /// Every configured domain's weights: the stored estimate, or the
    /// hand-set table.
    pub async fn match_model_reports(&self) -> Result<Vec<ModelReport>, VaultError> {
        let stored = self.store().match_models().await?;
        Ok(self
            .matching()
            .domains
            .iter()
            .map(|d| {
                let found = stored.iter().find(|(x, _)| x == d).map(|(_, r)| r);
                let (estimate, problem) = match found {
                    None => (None, None),
                    Some(Err(e)) => (None, Some(e.to_string())),
                    Some(Ok((at, bytes))) => match ModelEstimate::decode(bytes) {
                        Some(e) => (Some((*at, e)), None),
                        None => (None, Some("the stored estimate is unreadable".to_owned())),
                    },
                };
                ModelReport {
                    domain: d.clone(),
                    estimate,
                    problem,
                }
            })
            .collect())
    }

    /// Loads the stored weights of every configured domain; a domain whose
    /// row fails its MAC or cannot be read is scored with the hand-set
    /// table (and the problem logged, never the row).
    pub async fn refresh_match_models(&self) -> Result<(), VaultError> {
        let reports = self.match_model_reports().await?;
        let mut models = HashMap::new();
        for r in reports {
            if let Some(problem) = &r.problem {
                tracing::error!(domain = %r.domain, problem = %problem, "stored match weights not used; scoring with the hand-set table");
            }
            if let Some((_, e)) = r.estimate {
                let model = self.live_model(&r.domain, e.model);
                models.insert(r.domain, Arc::new(model));
            }
        }
        *self
            .matching()
            .models
            .write()
            .unwrap_or_else(PoisonError::into_inner) = models;
        Ok(())
    }

    /// Reloads the stored weights every [`MODEL_RELOAD`] until `stop`.
    pub(crate) async fn run_match_models(
        self: Arc<Self>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let (this, first) = (&self, tokio::time::Instant::now());
        super::periodic::every(first, MODEL_RELOAD, stop, || async move {
            if let Err(e) = this.refresh_match_models().await {
                tracing::warn!(error = %e, "reloading match weights failed");
            }
        })
        .await;
    }

    /// Makes every configured match domain cover every subject under the
    /// current index scheme: forgets domains no longer configured, and
    /// indexes existing subjects (decrypting each subject's newest values)
    /// for new domains and for domains built under an older scheme (new
    /// variant kinds are backfilled this way). Run at start.
    pub async fn prepare_matching(&self) -> Result<(), VaultError> {
        let st = self.matching();
        let recorded = self.store().match_domains().await?;
        let indexed: Vec<&String> = recorded
            .iter()
            .filter(|(_, done, scheme)| *done && *scheme == INDEX_SCHEME)
            .map(|(d, _, _)| d)
            .collect();
        let system = Caller::new(JOB_ACTOR);
        for (domain, _, scheme) in recorded.iter().filter(|(d, _, _)| !st.domains.contains(d)) {
            // Forgotten only once its rows are gone: a start interrupted
            // part way drops the rest at the next. Marked incomplete first,
            // so that if the operator configures it again meanwhile, it is
            // indexed again whole rather than served half cleared.
            self.store().mark_match_domain(domain, 0, *scheme).await?;
            let rows = self.clear_domain(&system, domain).await?;
            let mut tx = self.begin().await?;
            tx.match_forget_domain(domain).await?;
            let detail = format!("reindex dropped_domain={domain} rows={rows}");
            self.commit_job(tx, &system, Action::MatchSubjects, detail)
                .await?;
        }
        for domain in st.domains.iter().filter(|d| !indexed.contains(d)) {
            let older = recorded
                .iter()
                .any(|(d, _, scheme)| d == domain && *scheme != INDEX_SCHEME);
            if older {
                // Rows of the older scheme: dropped before the rebuild. The
                // domain keeps its older scheme until they are all gone, so
                // a start interrupted part way drops the rest at the next.
                self.clear_domain(&system, domain).await?;
            }
            self.store()
                .mark_match_domain(domain, 0, INDEX_SCHEME)
                .await?;
            let n = self.backfill(&system, domain).await?;
            // Bookkeeping only (no personal data): not an audited write.
            self.store()
                .mark_match_domain(domain, self.now_millis(), INDEX_SCHEME)
                .await?;
            tracing::info!(domain = %domain, subjects = n, scheme = INDEX_SCHEME, "match domain indexed");
        }
        self.refresh_match_models().await
    }

    /// Drops every index row and signature of `domain`, a bounded part per
    /// audited transaction ([`CLEAR_PART`] rows of each table); returns the
    /// index rows dropped.
    async fn clear_domain(&self, system: &Caller, domain: &str) -> Result<u64, VaultError> {
        let mut total = 0;
        loop {
            let mut tx = self.begin().await?;
            let (index, signatures) = tx.match_clear_domain_part(domain, CLEAR_PART).await?;
            total += index;
            let detail = format!(
                "reindex domain={domain} cleared_rows={index} cleared_signatures={signatures}"
            );
            self.commit_job(tx, system, Action::MatchSubjects, detail)
                .await?;
            if index < u64::from(CLEAR_PART) && signatures < u64::from(CLEAR_PART) {
                return Ok(total);
            }
        }
    }

    /// Indexes every subject for `domain`, a page per audited transaction;
    /// returns subjects indexed. A subject indexed before an interrupted
    /// backfill is indexed again whole. A subject whose data key or packets
    /// do not open (damaged, or tampered with) is left without blocking rows
    /// in the domain and counted (`damaged=N` in the page's record, and a
    /// warning), as a rewrap leaves one behind: an upgrade rebuilds every
    /// domain, and one such subject must not keep the vault from starting.
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
            let mut damaged = 0u64;
            for id in &ids {
                // Deleted since the page was read: nothing to index.
                let Some(row) = tx.subject(id).await? else {
                    continue;
                };
                let values = match self.newest_values(&mut tx, &row).await {
                    Ok(v) => v,
                    Err(VaultError::Integrity(_) | VaultError::Key(_)) => {
                        damaged += 1;
                        tx.match_delete_domain_subject(domain, id).await?;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let indexes = [DomainIndexes {
                    domain: domain.to_owned(),
                    version: ring.version(),
                    index: ring.subject_index(&matchable(&values), opts),
                }];
                tx.match_delete_domain_subject(domain, id).await?;
                self.write_match_rows(&mut tx, id, false, &indexes).await?;
                total += 1;
            }
            let detail = format!(
                "reindex domain={domain} subjects={} damaged={damaged}",
                ids.len()
            );
            self.commit_job(tx, system, Action::MatchSubjects, detail)
                .await?;
            if damaged > 0 {
                tracing::warn!(
                    domain = %domain,
                    damaged,
                    "subjects whose data key or packets do not open were left unindexed"
                );
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::{LinkJob, VaultError, check_answered_with};
    use idvault_core::matching::{Candidate, Hit};
    use idvault_core::rowmac::{self, RowMac, StoredMac};
    use idvault_core::secret::Secret;
    use idvault_core::subject::SubjectId;
    use std::sync::Arc;

    /// Only answered candidates are checked, and every row read for one:
    /// a subject read twice (its row changed between two reads) is refused
    /// if either row fails, whichever was scored.
    #[test]
    fn every_row_of_an_answered_candidate_is_checked() {
        let keys = RowMac::from_keys([Secret::from_bytes([0x42; 32], 1)]).expect("keys");
        let row = |id: u8, signature: &[u8], sealed: bool| {
            let subject = SubjectId::from_bytes([id; 16]);
            let (v, mac) = keys.seal(&rowmac::match_signature("d", &subject, 3, signature));
            Candidate {
                subject,
                present: 3,
                signature: signature.to_vec(),
                gain: 1.0,
                mac: if sealed {
                    StoredMac {
                        version: Some(i64::from(v)),
                        mac: Some(mac.to_vec()),
                    }
                } else {
                    StoredMac::default()
                },
            }
        };
        let hit = |id: u8| Hit {
            subject: SubjectId::from_bytes([id; 16]),
            score: 0.9,
            bits: 10.0,
            agreements: Vec::new(),
        };
        let genuine = row(1, &[1, 2], true);
        let mut copied = row(1, &[9, 9], true);
        // Another subject's MAC pasted beside the copied signature.
        copied.mac = row(2, &[9, 9], true).mac;
        let unsealed = row(3, &[1], false);
        let forged = |e: Result<(), VaultError>| {
            assert!(
                matches!(e, Err(VaultError::Integrity("match signature row MAC"))),
                "{e:?}"
            );
        };
        assert!(check_answered_with(&keys, "d", &[hit(1)], std::slice::from_ref(&genuine)).is_ok());
        forged(check_answered_with(
            &keys,
            "e",
            &[hit(1)],
            std::slice::from_ref(&genuine),
        ));
        forged(check_answered_with(
            &keys,
            "d",
            &[hit(1)],
            &[genuine.clone(), copied.clone()],
        ));
        forged(check_answered_with(
            &keys,
            "d",
            &[hit(1)],
            &[copied, genuine.clone()],
        ));
        forged(check_answered_with(
            &keys,
            "d",
            &[hit(3)],
            std::slice::from_ref(&unsealed),
        ));
        // A forged row that is only scored, not answered, is not read here.
        assert!(check_answered_with(&keys, "d", &[hit(1)], &[genuine, unsealed]).is_ok());
        assert!(matches!(
            check_answered_with(&keys, "d", &[hit(4)], &[]),
            Err(VaultError::Internal(_))
        ));
    }

    /// A subject's contested count is the records that wanted it and did
    /// not get it: not the winner, not a record given a candidate it
    /// ranked higher.
    #[test]
    fn contested_counts_only_the_records_that_lost_the_subject() {
        let h = |s: u8, bits: f64| Hit {
            subject: SubjectId::from_bytes([s; 16]),
            score: idvault_tokenizer::matching::score(bits),
            bits,
            agreements: Vec::new(),
        };
        let mut job = LinkJob::new(true, 0.0).expect("job");
        job.pending = vec![
            ("r0".into(), Ok(vec![h(1, 90.0)])),
            // Gets subject 2, which it ranks above 1: lost nothing.
            ("r1".into(), Ok(vec![h(2, 50.0), h(1, 40.0)])),
            // Wanted 1, got nothing.
            ("r2".into(), Ok(vec![h(1, 30.0)])),
            // Wanted 1 first, falls back to 3.
            ("r3".into(), Ok(vec![h(1, 35.0), h(3, 20.0)])),
            ("r4".into(), Err("refused".into())),
        ];
        let (chunks, _held) = job.assign();
        let contested = &chunks[0].contested;
        assert_eq!(contested.get(&SubjectId::from_bytes([1; 16])), Some(&2));
        assert_eq!(contested.get(&SubjectId::from_bytes([2; 16])), None);
        assert_eq!(contested.get(&SubjectId::from_bytes([3; 16])), None);
    }

    /// One-to-one jobs together hold at most the vault-wide number of
    /// records: a message past it is refused, and a job's records come
    /// back when it ends, or when its message fails before they are kept.
    #[test]
    fn held_link_records_are_bounded_across_jobs() {
        let all = Arc::new(tokio::sync::Semaphore::new(10));
        let mut a = LinkJob::new(true, 0.0).expect("job");
        let mut b = LinkJob::new(true, 0.0).expect("job");
        a.keep(LinkJob::reserve(&all, 6).expect("room"));
        b.keep(LinkJob::reserve(&all, 3).expect("room"));
        assert!(matches!(
            LinkJob::reserve(&all, 2),
            Err(VaultError::Limit(_))
        ));
        // A message that failed after reserving gives its records back.
        drop(LinkJob::reserve(&all, 1).expect("room"));
        assert_eq!(all.available_permits(), 1);
        drop(a);
        assert_eq!(all.available_permits(), 7);
        b.keep(LinkJob::reserve(&all, 7).expect("room"));
        assert_eq!(all.available_permits(), 0);
        drop(b);
        assert_eq!(all.available_permits(), 10);
    }
}
