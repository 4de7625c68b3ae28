//! The weights a domain's queries are scored with: the hand-set table, or
//! m/u learned from the domain's own population by expectation
//! maximisation (`idvault_tokenizer::em`), and value frequencies for
//! frequency-based u.
//!
//! Frequency-based u: an exact agreement on a common family name is weaker
//! evidence than on a rare one. For the fields in [`FREQUENCY_FIELDS`], the
//! estimate counts how many subjects hold each exact blind index (no value
//! is decrypted: equal values have equal indexes). A query whose exact
//! index is counted uses `u = count / population` for its exact level; a
//! value rarer than every counted one uses at most the rarest count's
//! share. A common value weakens the weight by up to
//! [`MAX_FREQUENCY_SHIFT_BITS`], a rare one strengthens it by
//! [`MAX_FREQUENCY_GAIN_BITS`] at most: relatives share rare family names,
//! so rarity must not outweigh the other fields, and the counts come from
//! a population partners write.

use std::collections::HashMap;

use idvault_tokenizer::matching::{FieldModel, Level, MU, Model};
use idvault_tokenizer::variants::MatchField;

/// Fields whose exact agreement is weighted by the value's frequency.
pub const FREQUENCY_FIELDS: [MatchField; 4] = [
    MatchField::GivenName,
    MatchField::FamilyName,
    MatchField::Postcode,
    MatchField::City,
];

/// Most bits frequency lowers an exact agreement weight (a common value).
pub const MAX_FREQUENCY_SHIFT_BITS: f64 = 3.0;
/// Most bits frequency raises an exact agreement weight (a rare value).
pub const MAX_FREQUENCY_GAIN_BITS: f64 = 1.0;

/// Smallest population for which frequencies are used: below it, counts
/// say more about chance than about the population.
pub const MIN_FREQUENCY_POPULATION: u64 = 1000;

/// How many subjects hold each counted exact blind index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frequencies {
    /// Subjects in the domain when counted.
    pub population: u64,
    /// Counted exact indexes (the commonest values) and their counts.
    pub counts: HashMap<i64, u32>,
    /// The smallest count kept: every value not counted is at most this common.
    pub floor: u32,
    /// The key version whose blind indexes were counted; 0 if unknown (an
    /// estimate stored before it was recorded). Counts of a version no
    /// longer live match no query's index, and every value would then
    /// look rarer than every counted one: see
    /// [`MatchModel::without_stale_frequencies`].
    pub key_version: u32,
}

/// A domain's scoring weights.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MatchModel {
    /// m and u per field and level.
    pub model: Model,
    /// Value frequencies, if estimated.
    pub frequencies: Option<Frequencies>,
}

impl MatchModel {
    /// The hand-set table, no frequencies.
    pub fn prior() -> Self {
        Self::default()
    }

    /// The model with its frequencies dropped if they were not counted
    /// under one of the `live` key versions (retired since, or unknown),
    /// and whether they were dropped. Without this, after a rotation's
    /// rewrap and retire every value's count reads 0 and every exact
    /// agreement on a frequency field gains the rare-value bit, common
    /// family names and cities included.
    pub fn without_stale_frequencies(mut self, live: &[u32]) -> (Self, bool) {
        let stale = self
            .frequencies
            .as_ref()
            .is_some_and(|f| !live.contains(&f.key_version));
        if stale {
            self.frequencies = None;
        }
        (self, stale)
    }

    /// The weights of `field` for a query whose exact blind indexes of it
    /// (one per live key version) are `exact`: the model's, with exact
    /// agreement weighted by the value's frequency where it is known.
    pub fn field_for_query(&self, field: MatchField, exact: &[i64]) -> Option<FieldModel> {
        let mut fm = self.model.field(field)?.clone();
        let Some(freq) = &self.frequencies else {
            return Some(fm);
        };
        if !FREQUENCY_FIELDS.contains(&field) || freq.population < MIN_FREQUENCY_POPULATION {
            return Some(fm);
        }
        let n = freq.population as f64;
        let count: u32 = exact
            .iter()
            .filter_map(|i| freq.counts.get(i))
            .copied()
            .max()
            .unwrap_or(0);
        // The strongest agreement short of exact: exact agreement on a
        // common value must never weigh less than a near miss on any value
        // ("London" agreeing is not weaker than "Londn" against "London").
        let below_exact = fm
            .agree
            .iter()
            .filter(|(l, _)| *l != Level::Exact)
            .map(|(_, x)| (x.m / x.u).log2())
            .fold(f64::NEG_INFINITY, f64::max);
        if let Some((_, mu)) = fm.agree.iter_mut().find(|(l, _)| *l == Level::Exact) {
            let share = if count > 0 {
                f64::from(count) / n
            } else {
                // Rarer than every counted value.
                (f64::from(freq.floor.max(1)) / n).min(mu.u)
            };
            // Common values weaken the evidence by up to 3 bits; rare ones
            // strengthen it by 1 bit at most (counts come from a
            // population partners write).
            let u = share.max(1.0 / n.max(1.0)).clamp(
                mu.u / MAX_FREQUENCY_GAIN_BITS.exp2(),
                mu.u * MAX_FREQUENCY_SHIFT_BITS.exp2(),
            );
            // In whole bits: a partner reads its answers' scores exactly,
            // and the difference a field makes would otherwise give the
            // value's count among every partner's subjects; rounded, it
            // tells only its share to within a factor of two or so, about
            // what public name-frequency tables tell.
            // (The population's floor applies before the rounding: after
            // it, a rare value's weight would read out the population.)
            let u = mu.u * (u / mu.u).log2().round().exp2();
            let u = if below_exact.is_finite() {
                u.min(mu.m / below_exact.exp2())
            } else {
                u
            };
            *mu = MU { m: mu.m, u };
        }
        Some(fm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_values_weigh_less_and_rare_ones_more_within_the_cap() {
        let prior = MatchModel::prior();
        let table = prior
            .field_for_query(MatchField::FamilyName, &[7])
            .unwrap()
            .weight(Some(Level::Exact));
        let freq = Frequencies {
            population: 100_000,
            counts: HashMap::from([(7, 2_000), (8, 50)]),
            floor: 50,
            key_version: 1,
        };
        let m = MatchModel {
            frequencies: Some(freq),
            ..MatchModel::prior()
        };
        let w = |i: i64| {
            m.field_for_query(MatchField::FamilyName, &[i])
                .unwrap()
                .weight(Some(Level::Exact))
        };
        // 2 % of the population: weaker than the table's 0.3 %.
        assert!(w(7) < table - 1.0, "{} {table}", w(7));
        // Not counted, so rarer than 0.05 %: stronger, but capped.
        assert!(w(9) > table && w(9) <= table + MAX_FREQUENCY_GAIN_BITS + 1e-9);
        // Very common: weaker by at most the cap.
        assert!(w(7) >= table - MAX_FREQUENCY_SHIFT_BITS - 1e-9);
        // Disagreement and other levels are untouched.
        let f = m.field_for_query(MatchField::FamilyName, &[7]).unwrap();
        let t = prior.field_for_query(MatchField::FamilyName, &[7]).unwrap();
        assert_eq!(f.weight(None), t.weight(None));
        assert_eq!(
            f.weight(Some(Level::Similar)),
            t.weight(Some(Level::Similar))
        );
        // Fields without frequencies keep the table.
        assert_eq!(
            m.field_for_query(MatchField::Phone, &[7]),
            prior.field_for_query(MatchField::Phone, &[7])
        );
        // A value so common that its exact weight would fall below the
        // field's next level is held at that level's weight.
        let everywhere = MatchModel {
            frequencies: Some(Frequencies {
                population: 100_000,
                counts: HashMap::from([(7, 60_000)]),
                floor: 50,
                key_version: 1,
            }),
            ..MatchModel::prior()
        };
        for field in FREQUENCY_FIELDS {
            let Some(f) = everywhere.field_for_query(field, &[7]) else {
                continue;
            };
            let exact = f.weight(Some(Level::Exact));
            for (level, _) in f.agree.iter().filter(|(l, _)| *l != Level::Exact) {
                assert!(
                    exact >= f.weight(Some(*level)) - 1e-9,
                    "{field:?}: exact {exact} below {level:?}"
                );
            }
        }
    }

    /// Frequency moves a weight by whole bits only: counts that differ by
    /// a few subjects give the same weight, so exact scores do not read
    /// out how many subjects (of every partner) hold a value.
    #[test]
    fn frequency_shifts_are_whole_bits() {
        let table = MatchModel::prior()
            .field_for_query(MatchField::FamilyName, &[7])
            .unwrap()
            .weight(Some(Level::Exact));
        // The exact weight of `field`'s value with index 7 when the
        // estimate counted `counts` among `population` subjects.
        let exact = |field, population, counts: (i64, u32), floor| {
            MatchModel {
                frequencies: Some(Frequencies {
                    population,
                    counts: HashMap::from([counts]),
                    floor,
                    key_version: 1,
                }),
                ..MatchModel::prior()
            }
            .field_for_query(field, &[7])
            .unwrap()
            .weight(Some(Level::Exact))
        };
        let weight = |count: u32| exact(MatchField::FamilyName, 100_000, (7, count), 2);
        // (Past about 1 % the field's next level holds the weight up: a
        // bound set by the model, not by the count.)
        for count in [40, 100, 200, 400] {
            let shift = weight(count) - table;
            assert!(
                (shift - shift.round()).abs() < 1e-9,
                "{count}: shift {shift}"
            );
        }
        assert_eq!(weight(150), weight(160));
        assert_eq!(weight(1_500), weight(1_520));
        // A rare value's weight does not read out the population either.
        let rare = |population: u64| exact(MatchField::Postcode, population, (8, 3), 1);
        assert_eq!(rare(1_200), rare(1_300));
    }

    #[test]
    fn frequencies_of_a_key_version_no_longer_live_are_dropped() {
        let m = MatchModel {
            frequencies: Some(Frequencies {
                population: 100_000,
                counts: HashMap::from([(7, 60_000)]),
                floor: 50,
                key_version: 1,
            }),
            ..MatchModel::prior()
        };
        let (kept, dropped) = m.clone().without_stale_frequencies(&[1, 2]);
        assert!(!dropped && kept.frequencies.is_some());
        let (gone, dropped) = m.clone().without_stale_frequencies(&[2]);
        assert!(dropped && gone.frequencies.is_none());
        // An estimate that does not say its version (stored before it was
        // recorded) is not trusted either.
        let unknown = MatchModel {
            frequencies: m.frequencies.map(|f| Frequencies {
                key_version: 0,
                ..f
            }),
            ..MatchModel::prior()
        };
        assert!(unknown.without_stale_frequencies(&[1]).1);
        // Without frequencies nothing is dropped.
        assert!(!MatchModel::prior().without_stale_frequencies(&[]).1);
    }
}
