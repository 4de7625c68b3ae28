//! Learning a domain's weights from its own indexed population, without
//! decrypting anything: subjects are compared through their signatures
//! (equal blind indexes of a kind mean equal variants; Bloom filters give
//! the partial level), the m/u probabilities are estimated by expectation
//! maximisation ([`idvault_tokenizer::em`]) with the hand-set table as the
//! prior, and the exact indexes of common fields are counted for
//! frequency-based u.
//!
//! Pairs: every pair sharing a blocking index (at most
//! [`EstimateOptions::max_block`] subjects per index, so a common value
//! cannot crowd out the rest) and as many random pairs, up to
//! [`EstimateOptions::max_pairs`] in all. Random pairs are almost all
//! different people and pin u; blocked pairs hold whatever duplicates the
//! population has and move m. A vault with few duplicates teaches little
//! about m: the prior then holds, which is what its strength is for.
//!
//! Levels two stored records cannot show (a day/month swap, exchanged
//! names: their variants live under other kinds' keys) keep their prior
//! m and u; the observable levels share the rest of the probability mass.
//! Every learned weight is kept between [`EstimateOptions::max_shift_bits`]
//! below the prior's and [`MAX_STRENGTHEN_BITS`] above it: the population
//! is partly written by partners, and one that creates many crafted
//! subjects (clusters sharing an e-mail but not a name, to make name
//! disagreement look common among matches) must not be able to turn weak
//! evidence into strong, nor disagreement into no evidence.

use std::collections::{HashMap, HashSet};

use idvault_tokenizer::em::{self, EmError, EmOptions, FieldPrior, Outcome};
use idvault_tokenizer::matching::{FieldModel, Level, MU, Model, PARTIAL_DICE, stored_pair_level};
use idvault_tokenizer::variants::{self, MatchField};

use super::model::{FREQUENCY_FIELDS, Frequencies, MatchModel};
use super::{Signature, dice};

/// Tuning of [`estimate_model`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EstimateOptions {
    /// Most pairs compared (half blocked, half random at most).
    pub max_pairs: usize,
    /// Largest block whose pairs are all taken.
    pub max_block: usize,
    /// Weight of the prior, in pseudo-pairs per field.
    pub strength: f64,
    /// Most bits a learned weight may differ from the prior's.
    pub max_shift_bits: f64,
    /// Most exact indexes counted for frequencies.
    pub max_frequencies: usize,
}

impl Default for EstimateOptions {
    fn default() -> Self {
        Self {
            max_pairs: 200_000,
            max_block: 50,
            strength: 200.0,
            max_shift_bits: 4.0,
            max_frequencies: 20_000,
        }
    }
}

/// An estimate and what it was made from.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEstimate {
    /// The learned model.
    pub model: MatchModel,
    /// Subjects sampled.
    pub population: usize,
    /// Pairs sharing a blocking index.
    pub blocked_pairs: usize,
    /// Random pairs.
    pub random_pairs: usize,
    /// Estimated share of matches among the pairs.
    pub match_share: f64,
    /// EM iterations.
    pub iterations: u32,
    /// Whether EM converged.
    pub converged: bool,
}

/// A small deterministic generator for the random pairs (splitmix64): the
/// caller seeds it, so an estimate can be repeated.
struct Mix(u64);

impl Mix {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        usize::try_from(z % (n.max(1) as u64)).unwrap_or(0)
    }
}

/// The levels of `field` two stored records can show, in the prior's
/// (best first) order.
fn observable(fm: &FieldModel) -> Vec<Level> {
    fm.agree
        .iter()
        .map(|(l, _)| *l)
        .filter(|l| *l != Level::Swapped)
        .collect()
}

/// One sampled subject, indexed for comparison.
struct Indexed<'a> {
    sig: &'a Signature,
    entries: HashSet<(u8, u8, i64)>,
    fields: HashSet<u8>,
}

impl<'a> Indexed<'a> {
    fn new(sig: &'a Signature) -> Self {
        let entries = sig
            .entries
            .iter()
            .map(|e| (e.field.code(), e.kind, e.index))
            .collect();
        let mut fields: HashSet<u8> = sig.entries.iter().map(|e| e.field.code()).collect();
        fields.extend(sig.filters.iter().map(|(f, _)| f.code()));
        Self {
            sig,
            entries,
            fields,
        }
    }

    fn filter(&self, field: MatchField) -> Option<&[u8]> {
        self.sig
            .filters
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, b)| b.as_slice())
    }
}

/// The outcome of `field` for a pair: the index of the best level in
/// `levels`, `levels.len()` for disagreement, `None` when one lacks it.
fn compare(a: &Indexed<'_>, b: &Indexed<'_>, field: MatchField, levels: &[Level]) -> Outcome {
    let code = field.code();
    if !a.fields.contains(&code) || !b.fields.contains(&code) {
        return None;
    }
    let mut best = levels.len();
    for e in a.sig.entries.iter().filter(|e| e.field == field) {
        if !b.entries.contains(&(code, e.kind, e.index)) {
            continue;
        }
        let level = variants::kind_of_code(field, e.kind).and_then(stored_pair_level);
        if let Some(i) = level.and_then(|l| levels.iter().position(|x| *x == l)) {
            best = best.min(i);
        }
    }
    if let Some(i) = levels.iter().position(|l| *l == Level::Partial)
        && i < best
        && let (Some(fa), Some(fb)) = (a.filter(field), b.filter(field))
        && dice(fa, fb) >= PARTIAL_DICE
    {
        best = i;
    }
    u8::try_from(best).ok()
}

/// Pairs of sampled subjects sharing a blocking index, at most `limit`.
fn blocked_pairs(
    subjects: &[Indexed<'_>],
    opts: &EstimateOptions,
    limit: usize,
) -> Vec<(usize, usize)> {
    let mut blocks: HashMap<(u8, u8, i64), Vec<usize>> = HashMap::new();
    for (i, s) in subjects.iter().enumerate() {
        for e in &s.sig.entries {
            let blocking = variants::kind_of_code(e.field, e.kind)
                .is_some_and(|k| idvault_tokenizer::matching::is_blocking_kind(e.field, k));
            if blocking {
                blocks
                    .entry((e.field.code(), e.kind, e.index))
                    .or_default()
                    .push(i);
            }
        }
    }
    // Deterministic order: blocks sorted by key.
    let mut keys: Vec<_> = blocks.keys().copied().collect();
    keys.sort_unstable();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for k in keys {
        let Some(members) = blocks.get(&k) else {
            continue;
        };
        if members.len() < 2 || members.len() > opts.max_block {
            continue;
        }
        for (x, a) in members.iter().enumerate() {
            for b in members.iter().skip(x + 1) {
                if out.len() >= limit {
                    return out;
                }
                if seen.insert((*a, *b)) {
                    out.push((*a, *b));
                }
            }
        }
    }
    out
}

/// Counts the exact indexes of [`FREQUENCY_FIELDS`]: the commonest (held
/// by two subjects or more), at most `max` of them.
fn frequencies(signatures: &[Signature], max: usize) -> Frequencies {
    let exact: Vec<(MatchField, u8)> = FREQUENCY_FIELDS
        .iter()
        .filter_map(|f| {
            variants::kinds(*f)
                .iter()
                .position(|k| stored_pair_level(k) == Some(Level::Exact))
                .and_then(|i| u8::try_from(i).ok())
                .map(|c| (*f, c))
        })
        .collect();
    let mut counts: HashMap<i64, u32> = HashMap::new();
    for s in signatures {
        let mut mine: HashSet<i64> = HashSet::new();
        for e in &s.entries {
            if exact.contains(&(e.field, e.kind)) {
                mine.insert(e.index);
            }
        }
        for i in mine {
            *counts.entry(i).or_default() += 1;
        }
    }
    let mut common: Vec<(i64, u32)> = counts.into_iter().filter(|(_, c)| *c >= 2).collect();
    common.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    common.truncate(max);
    let floor = common.last().map_or(1, |(_, c)| *c);
    Frequencies {
        population: signatures.len() as u64,
        counts: common.into_iter().collect(),
        floor,
        // The caller passes one version's signatures.
        key_version: signatures.first().map_or(0, |s| s.version),
    }
}

/// Most bits a learned weight may be *above* the prior's: evidence may
/// weaken freely (down to [`EstimateOptions::max_shift_bits`]) but barely
/// strengthen, so crafted subjects can cost matches, not make strangers
/// match.
pub const MAX_STRENGTHEN_BITS: f64 = 0.5;

/// `mu` moved so that its weight is within `[prior - bits, prior +
/// MAX_STRENGTHEN_BITS]`.
fn clamp_weight(mu: MU, prior: MU, bits: f64) -> MU {
    let w = (mu.m / mu.u).log2();
    let p = (prior.m / prior.u).log2();
    let target = w.clamp(p - bits, p + MAX_STRENGTHEN_BITS);
    if (target - w).abs() < 1e-12 {
        return mu;
    }
    let u = mu.m / target.exp2();
    if u <= 1.0 {
        return MU {
            m: mu.m,
            u: u.max(1e-12),
        };
    }
    // u cannot exceed 1: lower m instead.
    MU {
        m: target.exp2().clamp(1e-12, 1.0),
        u: 1.0,
    }
}

/// Learns a model from `signatures` (a sample of one domain's subjects),
/// starting from `prior`; `seed` draws the random pairs.
///
/// # Errors
///
/// [`EmError::NoPairs`] when fewer than two subjects were given; the
/// other [`EmError`]s only for an unusable prior.
pub fn estimate_model(
    signatures: &[Signature],
    prior: &Model,
    seed: u64,
    opts: &EstimateOptions,
) -> Result<ModelEstimate, EmError> {
    if signatures.len() < 2 {
        return Err(EmError::NoPairs);
    }
    let subjects: Vec<Indexed<'_>> = signatures.iter().map(Indexed::new).collect();
    let blocked = blocked_pairs(&subjects, opts, opts.max_pairs / 2);
    let mut mix = Mix(seed);
    let n = subjects.len();
    let random_n = (opts.max_pairs - blocked.len())
        .min(opts.max_pairs / 2)
        .min(n * (n - 1) / 2);
    let mut pairs = blocked.clone();
    for _ in 0..random_n {
        let a = mix.below(n);
        let b = (a + 1 + mix.below(n - 1)) % n;
        pairs.push((a, b));
    }
    let fields: Vec<(&FieldModel, Vec<Level>)> =
        prior.fields.iter().map(|fm| (fm, observable(fm))).collect();
    let outcomes: Vec<Vec<Outcome>> = pairs
        .iter()
        .filter_map(|(a, b)| {
            let (a, b) = (subjects.get(*a)?, subjects.get(*b)?);
            Some(
                fields
                    .iter()
                    .map(|(fm, levels)| compare(a, b, fm.field, levels))
                    .collect(),
            )
        })
        .collect();
    // Each field's observable levels and disagreement, renormalised.
    let priors: Vec<FieldPrior> = fields
        .iter()
        .map(|(fm, levels)| {
            let pick = |f: fn(&MU) -> f64| -> Vec<f64> {
                let mut v: Vec<f64> = levels
                    .iter()
                    .filter_map(|l| fm.agree.iter().find(|(x, _)| x == l).map(|(_, mu)| f(mu)))
                    .collect();
                v.push(f(&fm.disagree));
                let total: f64 = v.iter().sum();
                v.iter().map(|x| x / total).collect()
            };
            FieldPrior {
                m: pick(|mu| mu.m),
                u: pick(|mu| mu.u),
                strength: opts.strength,
            }
        })
        .collect();
    let est = em::estimate(&outcomes, &priors, &EmOptions::default())?;
    let mut learned = Vec::with_capacity(fields.len());
    for ((fm, levels), (m, u)) in fields.iter().zip(est.m.iter().zip(&est.u)) {
        // The observable levels share the mass the unobservable ones leave.
        let hidden = |f: fn(&MU) -> f64| -> f64 {
            fm.agree
                .iter()
                .filter(|(l, _)| !levels.contains(l))
                .map(|(_, mu)| f(mu))
                .sum()
        };
        let (keep_m, keep_u) = (1.0 - hidden(|mu| mu.m), 1.0 - hidden(|mu| mu.u));
        let at = |i: usize| MU {
            m: (m.get(i).copied().unwrap_or(0.0) * keep_m).max(1e-12),
            u: (u.get(i).copied().unwrap_or(0.0) * keep_u).max(1e-12),
        };
        let agree = fm
            .agree
            .iter()
            .map(|(l, prior_mu)| {
                let mu = levels.iter().position(|x| x == l).map_or(*prior_mu, at);
                (*l, clamp_weight(mu, *prior_mu, opts.max_shift_bits))
            })
            .collect();
        let disagree = clamp_weight(at(levels.len()), fm.disagree, opts.max_shift_bits);
        learned.push(FieldModel {
            field: fm.field,
            agree,
            disagree,
        });
    }
    Ok(ModelEstimate {
        model: MatchModel {
            model: Model { fields: learned },
            frequencies: Some(frequencies(signatures, opts.max_frequencies)),
        },
        population: n,
        blocked_pairs: blocked.len(),
        random_pairs: random_n,
        match_share: est.match_share,
        iterations: est.iterations,
        converged: est.converged,
    })
}

/// Magic of a stored estimate.
const MAGIC: &[u8; 6] = b"IDVMM2";
/// Magic of an estimate stored before frequencies named their key version
/// (read with version 0, unknown).
const MAGIC_V1: &[u8; 6] = b"IDVMM1";
/// Most counted indexes a stored estimate may hold.
const MAX_STORED_FREQUENCIES: usize = 100_000;

impl ModelEstimate {
    /// The canonical bytes stored (and MACed) for the estimate:
    /// `IDVMM2 ‖ population (8) ‖ blocked (8) ‖ random (8) ‖ match share
    /// (f64) ‖ iterations (4) ‖ converged (1) ‖ field count (1) ‖ (field ‖
    /// level count (1) ‖ (level ‖ m ‖ u)* ‖ disagree m ‖ u)* ‖ has
    /// frequencies (1) [‖ key version (4) ‖ population (8) ‖ floor (4) ‖
    /// count (4) ‖ (index (8) ‖ count (4))*]`, big-endian, counts sorted by
    /// index. (`IDVMM1`, read too, has no key version.)
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(MAGIC);
        for n in [self.population, self.blocked_pairs, self.random_pairs] {
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        out.extend_from_slice(&self.match_share.to_be_bytes());
        out.extend_from_slice(&self.iterations.to_be_bytes());
        out.push(u8::from(self.converged));
        let fields = &self.model.model.fields;
        out.push(u8::try_from(fields.len()).unwrap_or(u8::MAX));
        for f in fields {
            out.push(f.field.code());
            out.push(u8::try_from(f.agree.len()).unwrap_or(u8::MAX));
            for (l, mu) in &f.agree {
                out.push(l.code());
                out.extend_from_slice(&mu.m.to_be_bytes());
                out.extend_from_slice(&mu.u.to_be_bytes());
            }
            out.extend_from_slice(&f.disagree.m.to_be_bytes());
            out.extend_from_slice(&f.disagree.u.to_be_bytes());
        }
        match &self.model.frequencies {
            None => out.push(0),
            Some(fr) => {
                out.push(1);
                out.extend_from_slice(&fr.key_version.to_be_bytes());
                out.extend_from_slice(&fr.population.to_be_bytes());
                out.extend_from_slice(&fr.floor.to_be_bytes());
                let mut counts: Vec<(&i64, &u32)> = fr.counts.iter().collect();
                counts.sort_unstable();
                out.extend_from_slice(&u32::try_from(counts.len()).unwrap_or(0).to_be_bytes());
                for (i, c) in counts {
                    out.extend_from_slice(&i.to_be_bytes());
                    out.extend_from_slice(&c.to_be_bytes());
                }
            }
        }
        out
    }

    /// Parses [`Self::encode`]'s bytes; `None` for anything else (unknown
    /// field or level, a probability outside (0, 1], a field twice, too
    /// many counts, trailing bytes).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        let magic = r.take(MAGIC.len())?;
        let versioned = match magic {
            m if m == MAGIC => true,
            m if m == MAGIC_V1 => false,
            _ => return None,
        };
        let population = usize::try_from(r.u64()?).ok()?;
        let blocked_pairs = usize::try_from(r.u64()?).ok()?;
        let random_pairs = usize::try_from(r.u64()?).ok()?;
        let match_share = r.f64()?;
        if !(0.0..=1.0).contains(&match_share) {
            return None;
        }
        let iterations = r.u32()?;
        let converged = match r.u8()? {
            0 => false,
            1 => true,
            _ => return None,
        };
        let n = usize::from(r.u8()?);
        if n > MatchField::ALL.len() {
            return None;
        }
        let mut fields: Vec<FieldModel> = Vec::with_capacity(n);
        for _ in 0..n {
            let field = MatchField::from_code(r.u8()?)?;
            if fields.iter().any(|f| f.field == field) {
                return None;
            }
            let levels = usize::from(r.u8()?);
            if levels > Level::ALL.len() {
                return None;
            }
            let mut agree: Vec<(Level, MU)> = Vec::with_capacity(levels);
            for _ in 0..levels {
                let l = Level::from_code(r.u8()?)?;
                if agree.iter().any(|(x, _)| *x == l) {
                    return None;
                }
                agree.push((l, r.mu()?));
            }
            let disagree = r.mu()?;
            fields.push(FieldModel {
                field,
                agree,
                disagree,
            });
        }
        let frequencies = match r.u8()? {
            0 => None,
            1 => {
                let key_version = if versioned { r.u32()? } else { 0 };
                let population = r.u64()?;
                let floor = r.u32()?;
                let count = usize::try_from(r.u32()?).ok()?;
                if count > MAX_STORED_FREQUENCIES {
                    return None;
                }
                let mut counts = HashMap::with_capacity(count);
                for _ in 0..count {
                    let i = i64::from_be_bytes(r.take(8)?.try_into().ok()?);
                    if counts.insert(i, r.u32()?).is_some() {
                        return None;
                    }
                }
                Some(Frequencies {
                    population,
                    counts,
                    floor,
                    key_version,
                })
            }
            _ => return None,
        };
        if !r.0.is_empty() {
            return None;
        }
        Some(Self {
            model: MatchModel {
                model: Model { fields },
                frequencies,
            },
            population,
            blocked_pairs,
            random_pairs,
            match_share,
            iterations,
            converged,
        })
    }
}

/// A cursor over stored bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn f64(&mut self) -> Option<f64> {
        let v = f64::from_be_bytes(self.take(8)?.try_into().ok()?);
        v.is_finite().then_some(v)
    }
    fn mu(&mut self) -> Option<MU> {
        let (m, u) = (self.f64()?, self.f64()?);
        let ok = |p: f64| p > 0.0 && p <= 1.0;
        (ok(m) && ok(u)).then_some(MU { m, u })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::{Entry, MatchKeyring};

    fn sig(entries: &[(MatchField, &str, i64)], filters: Vec<(MatchField, Vec<u8>)>) -> Signature {
        Signature {
            version: 1,
            entries: entries
                .iter()
                .map(|(f, k, i)| Entry {
                    field: *f,
                    kind: variants::kind_code(*f, k).unwrap(),
                    index: *i,
                })
                .collect(),
            filters,
        }
    }

    #[test]
    fn pairs_compare_at_the_best_shared_level() {
        use MatchField::*;
        let a = sig(
            &[
                (FamilyName, "name.folded.v1", 1),
                (FamilyName, "name.phonetic.v1", 2),
                (DateOfBirth, "dob.iso.v1", 3),
                (DateOfBirth, "dob.year.v1", 4),
            ],
            vec![(City, vec![0b1111_0000, 0])],
        );
        let b = sig(
            &[
                (FamilyName, "name.folded.v1", 9),
                (FamilyName, "name.phonetic.v1", 2),
                (DateOfBirth, "dob.iso.v1", 8),
                (DateOfBirth, "dob.year.v1", 4),
                (Email, "email.canonical.v1", 5),
            ],
            vec![(City, vec![0b1111_0000, 1])],
        );
        let (ia, ib) = (Indexed::new(&a), Indexed::new(&b));
        let prior = Model::prior();
        let levels = |f| observable(prior.field(f).unwrap());
        let at = |f: MatchField, o: Outcome| o.map(|i| levels(f).get(usize::from(i)).copied());
        // Phonetic match only: similar.
        assert_eq!(
            at(
                FamilyName,
                compare(&ia, &ib, FamilyName, &levels(FamilyName))
            ),
            Some(Some(Level::Similar))
        );
        assert_eq!(
            at(
                DateOfBirth,
                compare(&ia, &ib, DateOfBirth, &levels(DateOfBirth))
            ),
            Some(Some(Level::Year))
        );
        // a has no email: no evidence.
        assert_eq!(compare(&ia, &ib, Email, &levels(Email)), None);
        // Filters 4 bits of 5: dice 8/9 >= 0.75: partial.
        assert_eq!(
            at(City, compare(&ia, &ib, City, &levels(City))),
            Some(Some(Level::Partial))
        );
    }

    /// A population with known duplicates: the estimate keeps every weight
    /// within the cap of the prior, learns u of exact date of birth from
    /// the random pairs, and round-trips through its stored form.
    #[test]
    fn estimate_from_a_keyed_population_round_trips() {
        use crate::keys::{KeyHierarchy, StaticKeyProvider};
        use crate::secret::RootKey;
        let provider = StaticKeyProvider::new([RootKey::from_bytes([3; 32], 1)]).unwrap();
        let keys = KeyHierarchy::new(Box::new(provider));
        let ring = MatchKeyring::derive(&keys, "est", 1).unwrap();
        let opts = idvault_tokenizer::NormalizeOptions::default();
        let given = [
            "Anna", "Ben", "Carla", "Dmitri", "Eve", "Farid", "Gita", "Hugo",
        ];
        let family = [
            "Smith", "Jones", "Novak", "Okafor", "Larsen", "Ito", "Ruiz", "Kowalski",
        ];
        let mut sigs = Vec::new();
        for i in 0..400usize {
            let dob = format!("19{:02}-{:02}-{:02}", 40 + i % 60, 1 + i % 12, 1 + i % 28);
            let email = format!("p{i}@example.org");
            let rec = [
                (MatchField::GivenName, given[i % 8]),
                (MatchField::FamilyName, family[(i / 8) % 8]),
                (MatchField::DateOfBirth, dob.as_str()),
                (MatchField::Email, email.as_str()),
            ];
            let idx = ring.subject_index(&rec, &opts);
            sigs.push(decode_sig(&idx.signature(1)));
            if i % 10 == 0 {
                // A duplicate with a new e-mail address.
                let email2 = format!("q{i}@example.net");
                let dup = [rec[0], rec[1], rec[2], (MatchField::Email, email2.as_str())];
                sigs.push(decode_sig(&ring.subject_index(&dup, &opts).signature(1)));
            }
        }
        let prior = Model::prior();
        let o = EstimateOptions::default();
        let e = estimate_model(&sigs, &prior, 7, &o).unwrap();
        assert!(e.blocked_pairs >= 40, "{}", e.blocked_pairs);
        assert!(e.random_pairs > 0);
        for f in &e.model.model.fields {
            let p = prior.field(f.field).unwrap();
            for (l, _) in &f.agree {
                let d = f.weight(Some(*l)) - p.weight(Some(*l));
                assert!(
                    d.abs() <= o.max_shift_bits + 1e-9,
                    "{:?} {l:?} moved {d}",
                    f.field
                );
            }
        }
        let fr = e.model.frequencies.as_ref().unwrap();
        assert_eq!(fr.population, sigs.len() as u64);
        // Every family name is held by about 55 subjects: all counted.
        assert!(fr.counts.len() >= 16, "{}", fr.counts.len());
        // Counted under the signatures' key version, which is stored.
        assert_eq!(fr.key_version, 1);
        let back = ModelEstimate::decode(&e.encode()).unwrap();
        assert_eq!(back, e);
        // An estimate stored before the version was recorded reads back
        // with version 0 (unknown): the same bytes without it.
        let mut v1 = e.encode();
        v1[..6].copy_from_slice(b"IDVMM1");
        let at = v1.len() - (fr.counts.len() * 12 + 4 + 4 + 8 + 4);
        assert_eq!(v1.drain(at..at + 4).collect::<Vec<_>>(), 1u32.to_be_bytes());
        let old = ModelEstimate::decode(&v1).unwrap();
        assert_eq!(old.model.frequencies.as_ref().unwrap().key_version, 0);
        assert_eq!(old.model.frequencies.as_ref().unwrap().counts, fr.counts);
        // Same seed, same estimate.
        assert_eq!(estimate_model(&sigs, &prior, 7, &o).unwrap(), e);
    }

    fn decode_sig(b: &[u8]) -> Signature {
        crate::matching::decode_signature(b).unwrap()
    }

    #[test]
    fn stored_estimates_reject_bad_bytes() {
        let e = ModelEstimate {
            model: MatchModel::prior(),
            population: 3,
            blocked_pairs: 1,
            random_pairs: 2,
            match_share: 0.1,
            iterations: 4,
            converged: true,
        };
        let good = e.encode();
        assert_eq!(ModelEstimate::decode(&good), Some(e));
        assert_eq!(ModelEstimate::decode(&good[..good.len() - 1]), None);
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(ModelEstimate::decode(&trailing), None);
        // A probability above 1 (the first field's first m).
        let mut bad = good.clone();
        let at = MAGIC.len() + 24 + 8 + 4 + 1 + 1 + 2 + 1;
        bad.splice(at..at + 8, 2.0f64.to_be_bytes());
        assert_eq!(ModelEstimate::decode(&bad), None);
        assert_eq!(ModelEstimate::decode(b"nonsense"), None);
    }
}
