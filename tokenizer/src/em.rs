//! Fellegi–Sunter m/u estimation by expectation–maximisation (EM).
//!
//! Given the comparison outcomes of many record pairs, [`estimate`] fits the
//! two-class Fellegi–Sunter mixture: each pair is either a *match* (two
//! records of the same person, with share `p` of all pairs) or a
//! *non-match*, and per field and outcome `k`
//!
//! - `m[f][k]` is the probability of outcome `k` on field `f` for a match,
//! - `u[f][k]` is the probability of outcome `k` on field `f` for a non-match.
//!
//! From these, scoring derives the usual log-likelihood-ratio weights
//! `log2(m/u)` (see [`matching`](crate::matching)). This module does no I/O:
//! it takes the outcomes as plain data and returns the parameters.
//!
//! # Model and its independence assumption
//!
//! The model assumes *conditional independence*: given the class (match or
//! non-match), the outcomes of different fields are independent, so the
//! likelihood of a pair is `p·Π m[f][o_f] + (1-p)·Π u[f][o_f]`. Fields whose
//! outcome is `None` (either record lacks the field) give no evidence and
//! are left out of both products; missingness is thereby assumed to be
//! unrelated to the class. Correlated fields (e.g. a given name and its
//! phonetic code) violate the assumption and make EM over-confident; compare
//! such fields as one field with several outcome levels instead.
//!
//! # Why a prior
//!
//! In a deduplicated population almost every candidate pair is a
//! non-match, so the data say a great deal about `u` and little about `m`:
//! with few true matches, `m` is weakly identified and plain maximum
//! likelihood can wander (or swap the classes). Each field therefore carries
//! a [`FieldPrior`], a Dirichlet-style prior given as probabilities and a
//! strength in pseudo-counts, and the M-step computes the maximum a
//! posteriori (MAP) update
//!
//! ```text
//! m[f][k] = (Σ g·[o_f = k] + s·prior_m[f][k]) / (Σ g·[f present] + s)
//! u[f][k] = (Σ (1-g)·[o_f = k] + s·prior_u[f][k]) / (Σ (1-g)·[f present] + s)
//! p       = (Σ g + a - 1) / (N + a + b - 2)
//! ```
//!
//! where `g` is a pair's posterior match probability and `Beta(a, b)` is the
//! prior on `p` ([`EmOptions::match_share_prior`]). Where matches are rare,
//! `Σ g` is small against `s` and `m` stays near its prior, while `u`,
//! backed by nearly every pair, is learned from the data.
//!
//! # Speed: identical comparison vectors are grouped
//!
//! The pairs are first grouped by their whole comparison vector (a hash map
//! from vector to count), and each EM iteration visits every *distinct*
//! vector once, weighted by its count. With `F` fields of `L_f` levels there
//! are at most `Π (L_f + 1)` distinct vectors, so millions of pairs cost one
//! hashing pass and then each iteration is proportional to the few distinct
//! patterns, not to the number of pairs. The distinct vectors are processed
//! in sorted order, so the result does not depend on the order of `pairs`.

use std::collections::HashMap;

/// Comparison outcome of one field for one record pair: `None` = no evidence
/// (either side lacks the field), `Some(k)` = outcome index `k` in
/// `0..levels(field)` where the LAST index is "disagree".
pub type Outcome = Option<u8>;

/// Smallest value any estimated probability may take (before the final
/// renormalisation), so that no outcome ever gets weight `±∞`.
const MIN_PROBABILITY: f64 = 1e-12;
/// `p` is kept in `[MIN_MATCH_SHARE, 1 - MIN_MATCH_SHARE]`.
const MIN_MATCH_SHARE: f64 = 1e-9;
/// How far a prior's `m` or `u` may sum from 1 before it is rejected (within
/// it, the prior is renormalised).
const PRIOR_SUM_TOLERANCE: f64 = 1e-2;
/// Outcome indexes are `u8`, so a field has at most 256 outcomes.
const MAX_LEVELS: usize = 1 << u8::BITS;

/// Prior for one field: `m` and `u` per outcome (same length, each summing to
/// ~1), and the prior strength (pseudo-count, e.g. 50.0) with which it pulls
/// the estimate.
///
/// The number of outcomes of the field is `m.len()`; the last one is
/// "disagree". A prior is accepted when `m` and `u` have the same length
/// between 1 and 256, their entries are finite and non-negative, each sums to
/// 1 within 0.01 (it is then renormalised), and `strength` is finite and
/// non-negative.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldPrior {
    /// Prior probability of each outcome for a match.
    pub m: Vec<f64>,
    /// Prior probability of each outcome for a non-match.
    pub u: Vec<f64>,
    /// Pseudo-count weight of the prior against the observed pairs.
    pub strength: f64,
}

/// The estimated parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// Per field, per outcome: probability of the outcome for a match.
    pub m: Vec<Vec<f64>>,
    /// Per field, per outcome: probability of the outcome for a non-match.
    pub u: Vec<Vec<f64>>,
    /// Estimated proportion `p` of pairs that are matches.
    pub match_share: f64,
    /// EM iterations run (each one E-step and one M-step).
    pub iterations: u32,
    /// Whether the largest parameter change fell below the tolerance before
    /// the iteration limit.
    pub converged: bool,
    /// Number of pairs the estimate is based on.
    pub pairs: usize,
}

/// Tuning of [`estimate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmOptions {
    /// Upper bound on EM iterations; 0 returns the priors unchanged.
    pub max_iterations: u32,
    /// Stop once no parameter (any `m`, `u` or `p`) moves by this much or
    /// more in one iteration.
    pub tolerance: f64,
    /// Starting value of `p` (clamped to `[1e-9, 1 - 1e-9]`; a non-finite
    /// value is replaced by the default 0.01).
    pub initial_match_share: f64,
    /// `Beta(a, b)` prior on `p`, as pseudo-counts: `p` is updated to
    /// `(Σ g + a - 1) / (N + a + b - 2)`. `(1.0, 1.0)` is the flat prior
    /// (plain maximum likelihood for `p`). Values below 1 or not finite are
    /// taken as 1, so the update is always a proper mode.
    pub match_share_prior: (f64, f64),
}

impl Default for EmOptions {
    fn default() -> Self {
        Self {
            max_iterations: 200,
            tolerance: 1e-6,
            initial_match_share: 0.01,
            match_share_prior: (1.0, 1.0),
        }
    }
}

/// Why no estimate could be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmError {
    /// `pairs` is empty.
    #[error("no record pairs to estimate from")]
    NoPairs,
    /// A pair has a different number of fields than there are priors
    /// (`field` is then the first index where one of the two ends), or an
    /// outcome index out of range for `field`.
    #[error("a comparison vector does not fit the fields (field {field})")]
    ShapeMismatch {
        /// Index of the offending field.
        field: usize,
    },
    /// The prior of `field` is unusable (lengths differ or are out of range,
    /// an entry is negative or not finite, a vector does not sum to ~1, or
    /// the strength is negative or not finite).
    #[error("unusable prior for field {field}")]
    BadPrior {
        /// Index of the offending field.
        field: usize,
    },
}

/// Per field, per outcome probabilities (or expected counts).
type Table = Vec<Vec<f64>>;

/// One distinct comparison vector: its present `(field, outcome)` pairs and
/// how many input pairs have it.
#[derive(Debug)]
struct Pattern {
    observed: Vec<(usize, usize)>,
    weight: f64,
}

/// Estimates m and u from `pairs` (each a slice of one Outcome per field, in
/// the order of `priors`).
///
/// Starts from the priors and `opts.initial_match_share`, then alternates
/// E-steps (posterior match probability of each distinct comparison vector,
/// in log space) and MAP M-steps (see the [module documentation](self))
/// until the largest change of any parameter is below `opts.tolerance` or
/// `opts.max_iterations` is reached. Every probability is floored at 1e-12
/// and each field's vector renormalised to sum to 1.
///
/// # Errors
///
/// [`EmError::BadPrior`] for an unusable prior (checked first),
/// [`EmError::NoPairs`] for no pairs, and [`EmError::ShapeMismatch`] for a
/// pair of the wrong length or with an outcome index out of range.
pub fn estimate(
    pairs: &[Vec<Outcome>],
    priors: &[FieldPrior],
    opts: &EmOptions,
) -> Result<Estimate, EmError> {
    let (prior_m, prior_u) = validate_priors(priors)?;
    if pairs.is_empty() {
        return Err(EmError::NoPairs);
    }
    let levels: Vec<usize> = prior_m.iter().map(Vec::len).collect();
    let patterns = group(pairs, &levels)?;
    let strengths: Vec<f64> = priors.iter().map(|prior| prior.strength).collect();

    let (a, b) = opts.match_share_prior;
    let a = beta_pseudo_count(a);
    let b = beta_pseudo_count(b);
    let total: f64 = patterns.iter().map(|pattern| pattern.weight).sum();

    let mut m = prior_m.clone();
    let mut u = prior_u.clone();
    let mut p = if opts.initial_match_share.is_finite() {
        clamp_share(opts.initial_match_share)
    } else {
        clamp_share(EmOptions::default().initial_match_share)
    };
    let mut iterations = 0;
    let mut converged = false;

    while iterations < opts.max_iterations {
        iterations += 1;
        let sums = expectation(&patterns, &m, &u, p);
        let new_m = maximise(&sums.m, &sums.m_present, &prior_m, &strengths, &m);
        let new_u = maximise(&sums.u, &sums.u_present, &prior_u, &strengths, &u);
        let denominator = total + a + b - 2.0;
        let new_p = clamp_share((sums.match_weight + a - 1.0) / denominator);

        let change = max_abs_change(&m, &new_m)
            .max(max_abs_change(&u, &new_u))
            .max((new_p - p).abs());
        m = new_m;
        u = new_u;
        p = new_p;
        if change < opts.tolerance {
            converged = true;
            break;
        }
    }

    Ok(Estimate {
        m,
        u,
        match_share: p,
        iterations,
        converged,
        pairs: pairs.len(),
    })
}

/// Checks every prior and returns its `m` and `u` floored and renormalised.
fn validate_priors(priors: &[FieldPrior]) -> Result<(Table, Table), EmError> {
    let mut all_m = Vec::with_capacity(priors.len());
    let mut all_u = Vec::with_capacity(priors.len());
    for (field, prior) in priors.iter().enumerate() {
        let bad = EmError::BadPrior { field };
        let levels = prior.m.len();
        if levels != prior.u.len() || levels == 0 || levels > MAX_LEVELS {
            return Err(bad);
        }
        if !prior.strength.is_finite() || prior.strength < 0.0 {
            return Err(bad);
        }
        for vector in [&prior.m, &prior.u] {
            if vector.iter().any(|x| !x.is_finite() || *x < 0.0) {
                return Err(bad);
            }
            let sum: f64 = vector.iter().sum();
            if (sum - 1.0).abs() > PRIOR_SUM_TOLERANCE {
                return Err(bad);
            }
        }
        let mut m = prior.m.clone();
        let mut u = prior.u.clone();
        normalise(&mut m);
        normalise(&mut u);
        all_m.push(m);
        all_u.push(u);
    }
    Ok((all_m, all_u))
}

/// Groups identical comparison vectors, checks each distinct one against
/// `levels`, and returns them in sorted order (so the floating-point sums do
/// not depend on the order of the input).
fn group(pairs: &[Vec<Outcome>], levels: &[usize]) -> Result<Vec<Pattern>, EmError> {
    let mut counts: HashMap<&[Outcome], u64> = HashMap::new();
    for pair in pairs {
        *counts.entry(pair.as_slice()).or_insert(0) += 1;
    }
    let mut distinct: Vec<(&[Outcome], u64)> = counts.into_iter().collect();
    distinct.sort_unstable_by(|x, y| x.0.cmp(y.0));

    distinct
        .into_iter()
        .map(|(vector, count)| {
            if vector.len() != levels.len() {
                return Err(EmError::ShapeMismatch {
                    field: vector.len().min(levels.len()),
                });
            }
            let mut observed = Vec::with_capacity(vector.len());
            for (field, (outcome, &field_levels)) in vector.iter().zip(levels).enumerate() {
                if let Some(k) = outcome {
                    let k = usize::from(*k);
                    if k >= field_levels {
                        return Err(EmError::ShapeMismatch { field });
                    }
                    observed.push((field, k));
                }
            }
            Ok(Pattern {
                observed,
                // Exact for any count below 2^53.
                weight: count as f64,
            })
        })
        .collect()
}

/// Expected counts from one E-step.
#[derive(Debug)]
struct Sums {
    /// Per field and outcome, `Σ g·[o = k]`.
    m: Vec<Vec<f64>>,
    /// Per field and outcome, `Σ (1-g)·[o = k]`.
    u: Vec<Vec<f64>>,
    /// Per field, `Σ g·[present]`.
    m_present: Vec<f64>,
    /// Per field, `Σ (1-g)·[present]`.
    u_present: Vec<f64>,
    /// `Σ g` over all pairs.
    match_weight: f64,
}

/// E-step: the posterior match probability `g` of each pattern (in log
/// space), accumulated into expected counts.
fn expectation(patterns: &[Pattern], m: &[Vec<f64>], u: &[Vec<f64>], p: f64) -> Sums {
    let ln_m: Vec<Vec<f64>> = m
        .iter()
        .map(|row| row.iter().map(|x| x.ln()).collect())
        .collect();
    let ln_u: Vec<Vec<f64>> = u
        .iter()
        .map(|row| row.iter().map(|x| x.ln()).collect())
        .collect();
    let ln_prior_odds = p.ln() - (1.0 - p).ln();

    let zeros = |rows: &[Vec<f64>]| -> Vec<Vec<f64>> {
        rows.iter().map(|row| vec![0.0; row.len()]).collect()
    };
    let mut sums = Sums {
        m: zeros(m),
        u: zeros(u),
        m_present: vec![0.0; m.len()],
        u_present: vec![0.0; u.len()],
        match_weight: 0.0,
    };

    for pattern in patterns {
        let ln_odds = pattern
            .observed
            .iter()
            .fold(ln_prior_odds, |acc, &(field, k)| {
                acc + lookup(&ln_m, field, k) - lookup(&ln_u, field, k)
            });
        // g and 1 - g, each computed directly so neither loses precision.
        let g = logistic(ln_odds);
        let not_g = logistic(-ln_odds);
        let match_weight = pattern.weight * g;
        let non_match_weight = pattern.weight * not_g;
        sums.match_weight += match_weight;
        for &(field, k) in &pattern.observed {
            add(&mut sums.m, field, k, match_weight);
            add(&mut sums.u, field, k, non_match_weight);
            if let Some(x) = sums.m_present.get_mut(field) {
                *x += match_weight;
            }
            if let Some(x) = sums.u_present.get_mut(field) {
                *x += non_match_weight;
            }
        }
    }
    sums
}

/// MAP M-step for one class: per field, expected counts plus prior
/// pseudo-counts, floored and renormalised. A field with neither evidence
/// nor prior weight keeps its previous values.
fn maximise(
    counts: &[Vec<f64>],
    present: &[f64],
    prior: &[Vec<f64>],
    strengths: &[f64],
    previous: &[Vec<f64>],
) -> Vec<Vec<f64>> {
    counts
        .iter()
        .zip(present)
        .zip(prior)
        .zip(strengths)
        .zip(previous)
        .map(
            |((((row, &present), prior_row), &strength), previous_row)| {
                let denominator = present + strength;
                let mut estimate: Vec<f64> = if denominator > 0.0 {
                    row.iter()
                        .zip(prior_row)
                        .map(|(count, prior)| (count + strength * prior) / denominator)
                        .collect()
                } else {
                    previous_row.clone()
                };
                normalise(&mut estimate);
                estimate
            },
        )
        .collect()
}

/// Floors every entry at [`MIN_PROBABILITY`] and scales the vector to sum 1.
fn normalise(vector: &mut [f64]) {
    for x in vector.iter_mut() {
        *x = x.max(MIN_PROBABILITY);
    }
    let sum: f64 = vector.iter().sum();
    if sum.is_finite() && sum > 0.0 {
        for x in vector.iter_mut() {
            *x /= sum;
        }
    }
}

/// Largest absolute difference between two equally shaped tables.
fn max_abs_change(before: &[Vec<f64>], after: &[Vec<f64>]) -> f64 {
    before
        .iter()
        .zip(after)
        .flat_map(|(x, y)| x.iter().zip(y))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// `1 / (1 + e^-x)` without overflow for large `|x|`.
fn logistic(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `table[field][k]`; the indexes are validated in [`group`], so the
/// fallback is never taken.
fn lookup(table: &[Vec<f64>], field: usize, k: usize) -> f64 {
    table
        .get(field)
        .and_then(|row| row.get(k))
        .copied()
        .unwrap_or(0.0)
}

/// `table[field][k] += amount` (indexes validated in [`group`]).
fn add(table: &mut [Vec<f64>], field: usize, k: usize, amount: f64) {
    if let Some(x) = table.get_mut(field).and_then(|row| row.get_mut(k)) {
        *x += amount;
    }
}

/// Keeps `p` strictly inside (0, 1).
fn clamp_share(p: f64) -> f64 {
    p.clamp(MIN_MATCH_SHARE, 1.0 - MIN_MATCH_SHARE)
}

/// A Beta pseudo-count, raised to at least 1 (and 1 when not finite).
fn beta_pseudo_count(x: f64) -> f64 {
    if x.is_finite() { x.max(1.0) } else { 1.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: small, deterministic, good enough for test data.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in [0, 1).
        fn unit(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }

        fn categorical(&mut self, probabilities: &[f64]) -> u8 {
            let r = self.unit();
            let mut cumulative = 0.0;
            for (k, p) in probabilities.iter().enumerate() {
                cumulative += p;
                if r < cumulative {
                    return k as u8;
                }
            }
            (probabilities.len() - 1) as u8
        }
    }

    struct Truth {
        p: f64,
        m: Vec<Vec<f64>>,
        u: Vec<Vec<f64>>,
        missing: Vec<f64>,
    }

    fn truth() -> Truth {
        Truth {
            p: 0.1,
            m: vec![vec![0.85, 0.10, 0.05], vec![0.9, 0.1], vec![0.7, 0.2, 0.1]],
            u: vec![
                vec![0.01, 0.04, 0.95],
                vec![0.05, 0.95],
                vec![0.001, 0.02, 0.979],
            ],
            missing: vec![0.1, 0.0, 0.1],
        }
    }

    fn generate(truth: &Truth, n: usize, seed: u64) -> Vec<Vec<Outcome>> {
        let mut rng = Rng(seed);
        (0..n)
            .map(|_| {
                let is_match = rng.unit() < truth.p;
                let table = if is_match { &truth.m } else { &truth.u };
                table
                    .iter()
                    .zip(&truth.missing)
                    .map(|(probabilities, &missing)| {
                        if rng.unit() < missing {
                            None
                        } else {
                            Some(rng.categorical(probabilities))
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// Deliberately wrong priors.
    fn off_priors(strength: f64) -> Vec<FieldPrior> {
        vec![
            FieldPrior {
                m: vec![0.6, 0.2, 0.2],
                u: vec![0.3, 0.3, 0.4],
                strength,
            },
            FieldPrior {
                m: vec![0.7, 0.3],
                u: vec![0.4, 0.6],
                strength,
            },
            FieldPrior {
                m: vec![0.5, 0.3, 0.2],
                u: vec![0.2, 0.3, 0.5],
                strength,
            },
        ]
    }

    fn assert_close(actual: &[Vec<f64>], expected: &[Vec<f64>], tolerance: f64, what: &str) {
        assert_eq!(actual.len(), expected.len(), "{what}: field count");
        for (f, (a_row, e_row)) in actual.iter().zip(expected).enumerate() {
            assert_eq!(a_row.len(), e_row.len(), "{what}[{f}]: outcome count");
            for (k, (a, e)) in a_row.iter().zip(e_row).enumerate() {
                assert!(
                    (a - e).abs() <= tolerance,
                    "{what}[{f}][{k}] = {a}, expected {e} ± {tolerance}"
                );
            }
        }
    }

    #[test]
    fn recovers_known_parameters() {
        let truth = truth();
        let pairs = generate(&truth, 200_000, 0x1D_7A_u64);
        let estimate = estimate(&pairs, &off_priors(1.0), &EmOptions::default()).unwrap();
        assert!(estimate.converged, "{estimate:?}");
        assert_eq!(estimate.pairs, 200_000);
        // Tolerance: 0.02 absolute on every m and u, 0.01 on p. With 20 000
        // true matches the sampling error of an m is about 0.003 (one
        // standard deviation) and of a u far less, so these bounds leave
        // ample room while still catching a wrong mode or a prior that
        // dominates.
        assert_close(&estimate.m, &truth.m, 0.02, "m");
        assert_close(&estimate.u, &truth.u, 0.02, "u");
        assert!(
            (estimate.match_share - truth.p).abs() <= 0.01,
            "p = {}",
            estimate.match_share
        );
        for row in estimate.m.iter().chain(&estimate.u) {
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            assert!(row.iter().all(|&x| x >= MIN_PROBABILITY * 0.5));
        }
    }

    #[test]
    fn strong_prior_wins() {
        let truth = truth();
        let pairs = generate(&truth, 500, 7);
        let priors = off_priors(1e9);
        let estimate = estimate(&pairs, &priors, &EmOptions::default()).unwrap();
        let prior_m: Vec<Vec<f64>> = priors.iter().map(|p| p.m.clone()).collect();
        let prior_u: Vec<Vec<f64>> = priors.iter().map(|p| p.u.clone()).collect();
        assert_close(&estimate.m, &prior_m, 1e-6, "m");
        assert_close(&estimate.u, &prior_u, 1e-6, "u");
    }

    #[test]
    fn zero_iterations_return_the_priors() {
        let pairs = generate(&truth(), 100, 3);
        let priors = off_priors(1.0);
        let opts = EmOptions {
            max_iterations: 0,
            ..EmOptions::default()
        };
        let estimate = estimate(&pairs, &priors, &opts).unwrap();
        assert_eq!(estimate.iterations, 0);
        assert!(!estimate.converged);
        assert_eq!(estimate.match_share, 0.01);
        assert_close(
            &estimate.m,
            &priors.iter().map(|p| p.m.clone()).collect::<Vec<_>>(),
            1e-15,
            "m",
        );
    }

    #[test]
    fn all_fields_missing_is_no_evidence() {
        let pairs = vec![vec![None, None, None]; 10];
        let priors = off_priors(1.0);
        let estimate = estimate(&pairs, &priors, &EmOptions::default()).unwrap();
        // Nothing observed: m and u stay at the prior.
        assert_close(
            &estimate.m,
            &priors.iter().map(|p| p.m.clone()).collect::<Vec<_>>(),
            1e-12,
            "m",
        );
        assert_close(
            &estimate.u,
            &priors.iter().map(|p| p.u.clone()).collect::<Vec<_>>(),
            1e-12,
            "u",
        );
    }

    #[test]
    fn errors() {
        let priors = off_priors(1.0);
        let opts = EmOptions::default();
        assert_eq!(estimate(&[], &priors, &opts), Err(EmError::NoPairs));

        let out_of_range = vec![vec![Some(0), Some(2), Some(1)]];
        assert_eq!(
            estimate(&out_of_range, &priors, &opts),
            Err(EmError::ShapeMismatch { field: 1 })
        );
        let too_short = vec![vec![Some(0), Some(1)]];
        assert_eq!(
            estimate(&too_short, &priors, &opts),
            Err(EmError::ShapeMismatch { field: 2 })
        );
        let too_long = vec![vec![Some(0), Some(1), None, None]];
        assert_eq!(
            estimate(&too_long, &priors, &opts),
            Err(EmError::ShapeMismatch { field: 3 })
        );

        let good = vec![vec![Some(0), Some(1), None]];
        let mut lengths_differ = priors.clone();
        lengths_differ[1].u = vec![0.2, 0.3, 0.5];
        assert_eq!(
            estimate(&good, &lengths_differ, &opts),
            Err(EmError::BadPrior { field: 1 })
        );
        let mut negative_strength = priors.clone();
        negative_strength[2].strength = -1.0;
        assert_eq!(
            estimate(&good, &negative_strength, &opts),
            Err(EmError::BadPrior { field: 2 })
        );
        let mut not_a_distribution = priors.clone();
        not_a_distribution[0].m = vec![0.6, 0.6, 0.6];
        assert_eq!(
            estimate(&good, &not_a_distribution, &opts),
            Err(EmError::BadPrior { field: 0 })
        );
        let mut nan = priors;
        nan[0].u = vec![f64::NAN, 0.5, 0.5];
        assert_eq!(
            estimate(&good, &nan, &opts),
            Err(EmError::BadPrior { field: 0 })
        );
    }

    #[test]
    fn order_of_pairs_does_not_matter() {
        let pairs = generate(&truth(), 20_000, 11);
        let mut shuffled = pairs.clone();
        let mut rng = Rng(99);
        for i in (1..shuffled.len()).rev() {
            let j = rng.below(i + 1);
            shuffled.swap(i, j);
        }
        let priors = off_priors(5.0);
        let opts = EmOptions::default();
        let a = estimate(&pairs, &priors, &opts).unwrap();
        let b = estimate(&shuffled, &priors, &opts).unwrap();
        // Distinct vectors are visited in sorted order: bit-identical.
        assert_eq!(a, b);
    }

    /// The same EM, one pair at a time with no grouping.
    fn naive(
        pairs: &[Vec<Outcome>],
        priors: &[FieldPrior],
        p0: f64,
        iterations: u32,
    ) -> (Table, Table, f64) {
        let mut m: Vec<Vec<f64>> = priors.iter().map(|p| p.m.clone()).collect();
        let mut u: Vec<Vec<f64>> = priors.iter().map(|p| p.u.clone()).collect();
        let mut p = p0;
        for _ in 0..iterations {
            let mut cm: Vec<Vec<f64>> = m.iter().map(|r| vec![0.0; r.len()]).collect();
            let mut cu = cm.clone();
            let mut dm = vec![0.0; m.len()];
            let mut du = vec![0.0; m.len()];
            let mut sg = 0.0;
            for pair in pairs {
                let (mut lm, mut lu) = (p.ln(), (1.0 - p).ln());
                for (f, o) in pair.iter().enumerate() {
                    if let Some(k) = o {
                        lm += m[f][*k as usize].ln();
                        lu += u[f][*k as usize].ln();
                    }
                }
                let g = 1.0 / (1.0 + (lu - lm).exp());
                sg += g;
                for (f, o) in pair.iter().enumerate() {
                    if let Some(k) = o {
                        cm[f][*k as usize] += g;
                        cu[f][*k as usize] += 1.0 - g;
                        dm[f] += g;
                        du[f] += 1.0 - g;
                    }
                }
            }
            for f in 0..m.len() {
                let s = priors[f].strength;
                for k in 0..m[f].len() {
                    m[f][k] = ((cm[f][k] + s * priors[f].m[k]) / (dm[f] + s)).max(1e-12);
                    u[f][k] = ((cu[f][k] + s * priors[f].u[k]) / (du[f] + s)).max(1e-12);
                }
                let (sm, su): (f64, f64) = (m[f].iter().sum(), u[f].iter().sum());
                m[f].iter_mut().for_each(|x| *x /= sm);
                u[f].iter_mut().for_each(|x| *x /= su);
            }
            p = (sg / pairs.len() as f64).clamp(1e-9, 1.0 - 1e-9);
        }
        (m, u, p)
    }

    #[test]
    fn grouping_matches_ungrouped_reference() {
        let pairs = generate(&truth(), 5_000, 5);
        let priors = off_priors(3.0);
        // Tolerance 0 never converges, so both run exactly 40 iterations.
        let opts = EmOptions {
            max_iterations: 40,
            tolerance: 0.0,
            ..EmOptions::default()
        };
        let grouped = estimate(&pairs, &priors, &opts).unwrap();
        assert_eq!(grouped.iterations, 40);
        assert!(!grouped.converged);
        let (m, u, p) = naive(&pairs, &priors, opts.initial_match_share, 40);
        assert_close(&grouped.m, &m, 1e-9, "m");
        assert_close(&grouped.u, &u, 1e-9, "u");
        assert!((grouped.match_share - p).abs() <= 1e-9);
    }
}
