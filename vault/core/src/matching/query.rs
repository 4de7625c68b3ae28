//! One partner match query, the pure decisions: validating it into a
//! plan, deciding whether the first candidates fetched settle it, and
//! ranking candidates with the score cut-off. The server fetches
//! candidates from the store and hands them in; this module never touches
//! the store and never returns or prints a query value.

use std::ops::Deref;

use idvault_tokenizer::NormalizeOptions;
use idvault_tokenizer::matching::Level;
use idvault_tokenizer::variants::MatchField;

use super::{MatchKeyring, MatchModel, QueryPlan, decode_signature};
use crate::rowmac::StoredMac;
use crate::subject::{SubjectId, validate_fields};

/// Most candidates one query may ask for.
pub const MAX_RESULTS: u32 = 10;
/// Candidates scored per query (those with the highest weight bound).
pub const CANDIDATE_LIMIT: u32 = 64;
/// Candidates whose signatures are read first: enough when the best of
/// them beats anything a lower-ranked candidate could score (see
/// [`PlannedQuery::settled_by`]); the rest of the [`CANDIDATE_LIMIT`]
/// best are read only when that is not so.
pub const FIRST_CANDIDATES: u32 = 8;
/// Lowest `min_score` a query may set: the vault's match threshold.
pub const MIN_SCORE: f64 = 0.5;
/// Longest `query_id`.
pub const MAX_QUERY_ID: usize = 128;

/// One match query as received.
#[derive(Debug, Clone, Default)]
pub struct MatchQuery {
    /// `(catalogue name, value)` pairs.
    pub fields: Vec<(String, String)>,
    /// Most candidates (0 means 1).
    pub max_results: u32,
    /// Lowest score (0 means [`MIN_SCORE`]).
    pub min_score: f64,
    /// Caller reference, echoed.
    pub query_id: String,
}

/// A candidate of a query as the store found it: a subject holding at
/// least one of the query's blocking indexes.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The subject.
    pub subject: SubjectId,
    /// Which fields it has indexes for (bit n = field code n).
    pub present: u16,
    /// Its packed signature ([`super::encode_signature`]).
    pub signature: Vec<u8>,
    /// Its rank: over the fields (and compound keys) of its blocking hits,
    /// the sum of each one's best gain ([`QueryPlan::blocking`]).
    pub gain: f64,
    /// The signature row's MAC as stored ([`crate::rowmac::match_signature`]),
    /// checked by the server for the candidates it answers with.
    pub mac: StoredMac,
}

/// A stored signature that does not decode: a corrupt index row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a stored match signature does not decode")]
pub struct BadSignature;

/// A scored candidate that passed the query's cut-off.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The subject.
    pub subject: SubjectId,
    /// Score in \[0, 1\].
    pub score: f64,
    /// Total weight in bits, which ranks hits: the score is a logistic of
    /// it that rounds to exactly 1.0 above about 69 bits, so two strong
    /// candidates can share score 1.0 while one holds far more evidence.
    pub bits: f64,
    /// Fields that agreed, and how.
    pub agreements: Vec<(MatchField, Level)>,
}

/// Slack, in bits, when a candidate's weight is compared with an upper
/// bound of unread ones: the bound and the weight add the same field
/// weights in different orders, so a candidate at the bound can come out
/// a few ulps above it. Counting it as beating the bound could settle a
/// query an unread candidate would still join; the slack only ever keeps
/// reading.
const BOUND_SLACK_BITS: f64 = 1e-9;

/// A validated query, ready to run.
#[derive(Debug, Clone)]
pub struct PlannedQuery {
    /// The probes.
    pub plan: QueryPlan,
    /// Most hits to answer.
    pub max_results: usize,
    /// The score cut-off.
    pub min_score: f64,
}

/// Validates `q` and plans it with the keyrings of the partner's domain.
/// The error names fields and figures, never values.
pub fn plan_query(
    q: MatchQuery,
    keyrings: &[impl Deref<Target = MatchKeyring>],
    opts: &NormalizeOptions,
    model: &MatchModel,
) -> Result<PlannedQuery, String> {
    if q.query_id.len() > MAX_QUERY_ID {
        return Err(format!("query_id is longer than {MAX_QUERY_ID} bytes"));
    }
    let max_results = match q.max_results {
        0 => 1,
        n if n <= MAX_RESULTS => n,
        _ => return Err(format!("max_results must be at most {MAX_RESULTS}")),
    };
    let min_score = if q.min_score == 0.0 {
        MIN_SCORE
    } else {
        q.min_score
    };
    // NaN fails both comparisons' negation, so test the accepted range.
    if !(MIN_SCORE..=1.0).contains(&min_score) {
        return Err(format!("min_score must be in [{MIN_SCORE}, 1]"));
    }
    let fields = validate_fields(q.fields).map_err(|e| e.to_string())?;
    let mut matchable: Vec<(MatchField, &str)> = Vec::with_capacity(fields.len());
    for (name, value) in &fields {
        let Some(f) = MatchField::parse(name.as_str()) else {
            return Err(format!(
                "field '{}' is not matchable (matchable: {})",
                name.as_str(),
                MatchField::ALL.map(MatchField::name).join(", ")
            ));
        };
        matchable.push((f, value.expose()));
    }
    let plan = QueryPlan::new(keyrings, &matchable, opts, model).map_err(|e| e.to_string())?;
    Ok(PlannedQuery {
        plan,
        max_results: usize::try_from(max_results).unwrap_or(1),
        min_score,
    })
}

impl PlannedQuery {
    /// Whether the candidates read so far (best ranked first) settle the
    /// query, `next` being the rank of the best one not read yet (`None`:
    /// none is left among the [`CANDIDATE_LIMIT`] best ranked). A
    /// candidate not read ranks at most `next`, so its weight is at most
    /// [`QueryPlan::bound`] of it: the query is settled when that bound's
    /// score stays under the cut-off (no unread candidate could be
    /// answered) or when the `max_results` best read already weigh more
    /// (none could join the answer). Then the answer from the candidates
    /// read is the one reading every candidate would give.
    pub fn settled_by(&self, read: &[Candidate], next: Option<f64>) -> Result<bool, BadSignature> {
        let Some(next) = next else {
            return Ok(true);
        };
        let cap = self.plan.bound(next);
        if idvault_tokenizer::matching::score(cap) < self.min_score {
            return Ok(true);
        }
        // Compared as weights, as answers are ranked (`merge`): scores of
        // strong candidates all round to 1.0, so comparing them would
        // almost never settle a query whose answer is plain.
        let mut above = 0;
        for c in read {
            let sig = decode_signature(&c.signature).ok_or(BadSignature)?;
            if self.plan.score(c.present, &sig).bits > cap + BOUND_SLACK_BITS {
                above += 1;
            }
        }
        Ok(above >= self.max_results)
    }

    /// Whether the wide compound keys must be looked up after the
    /// blocking ones found `hits`: unless `max_results` of them already
    /// weigh more than any candidate holding no blocking index could
    /// ([`QueryPlan::base`]), one found by a wide key alone might beat or
    /// join them; never when even that most stays under the score
    /// cut-off.
    pub fn needs_wide(&self, hits: &[Hit]) -> bool {
        let cap = self.plan.base();
        if self.plan.wide().is_empty() || idvault_tokenizer::matching::score(cap) < self.min_score {
            return false;
        }
        hits.iter()
            .filter(|h| h.bits > cap + BOUND_SLACK_BITS)
            .count()
            < self.max_results
    }

    /// The candidates scoring at least the cut-off, best first (by weight,
    /// ties in subject order, so answers are repeatable), at most `max_results`.
    pub fn rank(&self, candidates: &[Candidate]) -> Result<Vec<Hit>, BadSignature> {
        let mut hits = Vec::new();
        for c in candidates {
            let sig = decode_signature(&c.signature).ok_or(BadSignature)?;
            let sc = self.plan.score(c.present, &sig);
            if sc.score >= self.min_score {
                hits.push(Hit {
                    subject: c.subject,
                    score: sc.score,
                    bits: sc.bits,
                    agreements: sc
                        .outcomes
                        .iter()
                        .filter_map(|o| o.level.map(|l| (o.field, l)))
                        .collect(),
                });
            }
        }
        Ok(self.merge(hits))
    }

    /// `hits` best first (most weight first, ties in subject order), at
    /// most `max_results`.
    pub fn merge(&self, mut hits: Vec<Hit>) -> Vec<Hit> {
        hits.sort_by(|a, b| {
            b.bits
                .total_cmp(&a.bits)
                .then_with(|| a.subject.as_bytes().cmp(b.subject.as_bytes()))
        });
        hits.truncate(self.max_results);
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyHierarchy, StaticKeyProvider};
    use crate::matching::{MatchModel, field_mask};
    use crate::secret::RootKey;

    fn ring() -> MatchKeyring {
        let root = RootKey::from_bytes([7; 32], 1);
        let h = KeyHierarchy::new(Box::new(StaticKeyProvider::new([root]).unwrap()));
        MatchKeyring::derive(&h, "partner-a", 1).unwrap()
    }

    fn opts() -> NormalizeOptions {
        NormalizeOptions {
            default_country_code: Some(44),
        }
    }

    fn query(fields: &[(&str, &str)]) -> MatchQuery {
        MatchQuery {
            fields: fields
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            ..MatchQuery::default()
        }
    }

    const ADA: &[(&str, &str)] = &[
        ("given_name", "Ada"),
        ("family_name", "Lovelace"),
        ("date_of_birth", "1815-12-10"),
        ("email", "ada@example.org"),
    ];

    /// A candidate as the store would return it for `fields`.
    fn candidate(ring: &MatchKeyring, id: u8, fields: &[(&str, &str)], gain: f64) -> Candidate {
        let record: Vec<(MatchField, &str)> = fields
            .iter()
            .map(|(n, v)| (MatchField::parse(n).unwrap(), *v))
            .collect();
        let idx = ring.subject_index(&record, &opts());
        Candidate {
            subject: SubjectId::from_bytes([id; 16]),
            present: field_mask(idx.entries.iter().map(|e| e.field)),
            signature: idx.signature(ring.version()),
            gain,
            mac: StoredMac::default(),
        }
    }

    fn plan(q: MatchQuery, rings: &[&MatchKeyring]) -> Result<PlannedQuery, String> {
        plan_query(q, rings, &opts(), &MatchModel::prior())
    }

    #[test]
    fn bad_queries_are_refused_by_name_never_by_value() {
        let r = ring();
        let rings = [&r];
        let refused = |q: MatchQuery| plan(q, &rings).unwrap_err();
        let mut q = query(ADA);
        q.query_id = "x".repeat(MAX_QUERY_ID + 1);
        assert!(refused(q).contains("query_id"));
        let mut q = query(ADA);
        q.max_results = MAX_RESULTS + 1;
        assert!(refused(q).contains("max_results"));
        for bad in [0.49, 1.01, f64::NAN, f64::INFINITY] {
            let mut q = query(ADA);
            q.min_score = bad;
            assert!(refused(q).contains("min_score"), "{bad}");
        }
        let e = refused(query(&[
            ("family_name", "Lovelace"),
            ("account_number", "secret-42"),
        ]));
        assert!(
            e.contains("account_number") && !e.contains("secret-42"),
            "{e}"
        );
        let e = refused(query(&[("family_name", "Lovelace")]));
        assert!(!e.contains("Lovelace"), "{e}");
        let p = plan(query(ADA), &rings).unwrap();
        assert_eq!((p.max_results, p.min_score), (1, MIN_SCORE));
    }

    #[test]
    fn rank_cuts_at_min_score_orders_best_first_and_truncates() {
        let r = ring();
        let mut q = query(ADA);
        q.max_results = 2;
        let p = plan(q, &[&r]).unwrap();
        let same = candidate(&r, 9, ADA, 40.0);
        let twin = candidate(&r, 3, ADA, 40.0);
        let near = candidate(
            &r,
            5,
            &[("given_name", "Ada"), ("family_name", "Lovelace")],
            2.0,
        );
        let stranger = candidate(
            &r,
            1,
            &[("family_name", "Babbage"), ("given_name", "Charles")],
            1.0,
        );
        let hits = p
            .rank(&[stranger.clone(), near, same.clone(), twin.clone()])
            .unwrap();
        // Two equal best scores: subject order breaks the tie; the
        // stranger is under the cut-off; at most max_results.
        assert_eq!(
            hits.iter().map(|h| h.subject).collect::<Vec<_>>(),
            [twin.subject, same.subject]
        );
        assert!(hits.iter().all(|h| h.score >= MIN_SCORE));
        assert!(p.rank(&[stranger]).unwrap().is_empty());
        let mut corrupt = candidate(&r, 2, ADA, 40.0);
        corrupt.signature = vec![1, 2, 3];
        assert_eq!(p.rank(&[corrupt]), Err(BadSignature));
    }

    #[test]
    fn a_short_first_page_or_a_clear_winner_settles_the_query() {
        let r = ring();
        let p = plan(query(ADA), &[&r]).unwrap();
        assert_eq!(p.settled_by(&[], None), Ok(true));
        let full = |c: &Candidate| vec![c.clone(); FIRST_CANDIDATES as usize];
        // The gain of the e-mail alone: what a candidate holding only it ranks at.
        let email_gain = p
            .plan
            .blocking()
            .iter()
            .map(|(_, g)| *g)
            .fold(0.0, f64::max);
        // A page of weak candidates ranked at that gain: a lower-ranked one
        // might still score as well, so not settled…
        let weak = candidate(&r, 1, &[("family_name", "Lovelace")], email_gain);
        // Nobody left unread: settled whatever was read.
        assert_eq!(p.settled_by(&full(&weak)[..1], None), Ok(true));
        assert_eq!(p.settled_by(&full(&weak), Some(email_gain)), Ok(false));
        // …but a full match beats anything ranked at a small gain, so the
        // first page settles it.
        let mut page = full(&candidate(&r, 1, &[("family_name", "Lovelace")], 0.5));
        page[0] = candidate(&r, 2, ADA, 40.0);
        assert_eq!(p.settled_by(&page, Some(0.5)), Ok(true));
        // What counts is the rank of the next unread candidate, not of
        // the last one read: the same page with a strong one still unread
        // is not settled.
        assert_eq!(p.settled_by(&page, Some(40.0)), Ok(false));
    }

    #[test]
    fn a_page_ranked_under_the_cut_off_settles_the_query() {
        use idvault_tokenizer::matching::score;
        let r = ring();
        // A strict partner: with the vault's own cut-off a candidate with
        // no ranked hit at all could still be answered (partial names,
        // one-typo keys), so only a higher one settles early.
        let mut q = query(ADA);
        q.min_score = 0.99;
        let p = plan(q, &[&r]).unwrap();
        assert!(score(p.plan.bound(0.0)) < p.min_score);
        // The highest rank whose bound still stays under the cut-off.
        let (mut under, mut over) = (0.0, 64.0);
        assert!(score(p.plan.bound(over)) >= p.min_score);
        for _ in 0..40 {
            let mid = f64::midpoint(under, over);
            if score(p.plan.bound(mid)) < p.min_score {
                under = mid;
            } else {
                over = mid;
            }
        }
        let page = |gain| {
            let weak = candidate(&r, 1, &[("family_name", "Lovelace")], gain);
            vec![weak; FIRST_CANDIDATES as usize]
        };
        // Nobody ranked below the page could be answered: settled, though
        // none of the page beats the bound either…
        assert_eq!(p.settled_by(&page(under), Some(under)), Ok(true));
        // …and just above, one might be: not settled.
        assert_eq!(p.settled_by(&page(over), Some(over)), Ok(false));
    }

    #[test]
    fn weights_whose_scores_round_alike_rank_and_settle_by_weight() {
        use idvault_tokenizer::matching::score;
        const FULL: &[(&str, &str)] = &[
            ("given_name", "Ada"),
            ("family_name", "Lovelace"),
            ("date_of_birth", "1815-12-10"),
            ("email", "ada@example.org"),
            ("phone", "07700 900123"),
            ("national_id", "AB123456C"),
            ("postcode", "W1K 3AB"),
            ("street_address", "12 St James's Square"),
            ("city", "London"),
        ];
        let r = ring();
        let p = plan(query(FULL), &[&r]).unwrap();
        let best = candidate(&r, 2, FULL, 0.0);
        let weigh = |c: &Candidate| {
            p.plan
                .score(c.present, &decode_signature(&c.signature).unwrap())
                .bits
        };
        let bits = weigh(&best);
        assert!((score(bits) - 1.0).abs() < f64::EPSILON, "rounds to 1.0");
        // A lesser match (no address) whose score rounds to 1.0 as well,
        // on a subject that sorts first: the heavier one is the answer.
        let lesser = candidate(&r, 1, &FULL[..6], 0.0);
        assert!(weigh(&lesser) < bits);
        assert!((score(weigh(&lesser)) - 1.0).abs() < f64::EPSILON);
        let hits = p.rank(&[lesser, best.clone()]).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].subject, best.subject);
        assert!((hits[0].bits - bits).abs() < f64::EPSILON);
        // The highest rank whose weight bound stays under the full match's
        // weight: its bound rounds to a score of 1.0 too.
        let (mut under, mut over) = (0.0, 512.0);
        assert!(p.plan.bound(under) < bits && p.plan.bound(over) >= bits);
        for _ in 0..60 {
            let mid = f64::midpoint(under, over);
            if p.plan.bound(mid) < bits {
                under = mid;
            } else {
                over = mid;
            }
        }
        assert!((score(p.plan.bound(under)) - 1.0).abs() < f64::EPSILON);
        // Heavier than anything unread could be, though the scores are
        // equal: settled. An unread candidate that could weigh as much
        // (`over`), or within the float slack of it (`under`): not settled.
        let page = vec![best; FIRST_CANDIDATES as usize];
        assert_eq!(p.settled_by(&page, Some(under - 1e-6)), Ok(true));
        assert_eq!(p.settled_by(&page, Some(under)), Ok(false));
        assert_eq!(p.settled_by(&page, Some(over)), Ok(false));
    }

    #[test]
    fn wide_keys_are_skipped_when_they_cannot_reach_the_cut_off() {
        use idvault_tokenizer::matching::score;
        let r = ring();
        let mut q = query(ADA);
        let p = plan(q.clone(), &[&r]).unwrap();
        assert!(!p.plan.wide().is_empty());
        // With the vault's cut-off one found by the wide keys alone might
        // be answered: needed while the blocking keys found nobody.
        assert!(score(p.plan.base()) >= p.min_score);
        assert!(p.needs_wide(&[]));
        // A strict partner: such a candidate scores at most the base,
        // under its cut-off, so looking the wide keys up cannot add an
        // answer.
        q.min_score = 0.99;
        let strict = plan(q, &[&r]).unwrap();
        assert!(score(strict.plan.base()) < strict.min_score);
        assert!(!strict.needs_wide(&[]));
    }
}
