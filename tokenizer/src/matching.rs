//! Record-linkage scoring for blind matching (Fellegi–Sunter).
//!
//! A stored subject is represented only by blind indexes of its
//! [`variants`](crate::variants). A query is turned into *probes*: a value
//! to be blind-indexed under one variant kind's key, and the agreement
//! [`Level`] a hit on it proves. Comparing a candidate then needs no
//! plaintext: the vault checks which probe indexes the candidate holds.
//!
//! Each field contributes the weight of the best level hit, the disagreement
//! weight when the candidate has the field but nothing agrees, or nothing
//! when either side lacks the field. The weights are Fellegi–Sunter
//! log-likelihood ratios `log2(m/u)` (agreement) and `log2((1-m)/(1-u))`
//! (disagreement), where `m` is the probability of the outcome for two
//! records of the same person and `u` for two different people; the table
//! is [`WEIGHTS`], with the reasoning for each figure in
//! `docs/blind-matching.md`. The total weight `W` (bits) becomes a score in
//! \[0, 1\] by `1 / (1 + 2^(THRESHOLD_BITS - W))`, so the match threshold
//! [`THRESHOLD_BITS`] is score 0.5.
//!
//! A query is answerable only when it could reach the threshold at all (the
//! sum of its fields' best agreement weights) and names at least one
//! *blocking* field, whose indexes select candidates: see [`assess`].

use crate::ident::NormalizeOptions;
use crate::variants::{MatchField, variants};

/// What a probe hit proves about a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Level {
    /// Same normalised value.
    Exact,
    /// Given names with a common canonical form (Bill / William).
    Nickname,
    /// Names one typo apart or sounding alike.
    Similar,
    /// Date of birth with day and month exchanged.
    Swapped,
    /// Same year of birth only.
    Year,
    /// Same last four characters of the national id only.
    Last4,
    /// Partial agreement: similar q-gram sets (Dice coefficient of the
    /// keyed bigram Bloom filters at least [`PARTIAL_DICE`]).
    Partial,
}

/// Dice coefficient of two bigram Bloom filters from which a field counts
/// as partially agreeing.
pub const PARTIAL_DICE: f64 = 0.75;

impl Level {
    /// Every level, in storage-code order (append only).
    pub const ALL: [Level; 7] = [
        Level::Exact,
        Level::Nickname,
        Level::Similar,
        Level::Swapped,
        Level::Year,
        Level::Last4,
        Level::Partial,
    ];

    /// The level's storage code (its position in [`Level::ALL`]).
    pub fn code(self) -> u8 {
        Self::ALL
            .iter()
            .position(|l| *l == self)
            .and_then(|i| u8::try_from(i).ok())
            .unwrap_or(u8::MAX)
    }

    /// The level of a storage code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// Name used in answers and documentation.
    pub fn name(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Nickname => "nickname",
            Self::Similar => "similar",
            Self::Swapped => "swapped",
            Self::Year => "year",
            Self::Last4 => "last4",
            Self::Partial => "partial",
        }
    }
}

/// One value to blind-index under the key of `(stored, kind)` and look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The query field a hit is evidence about.
    pub field: MatchField,
    /// The stored field whose indexes are looked up: `field` itself, or
    /// the other name for swapped given and family names.
    pub stored: MatchField,
    /// The variant kind whose key indexes `value`.
    pub kind: &'static str,
    /// The value.
    pub value: String,
    /// What a hit proves.
    pub level: Level,
    /// Whether this probe selects candidates (selective enough to look up
    /// without scanning a large share of the vault).
    pub block: bool,
}

/// Fields of which a query must give at least one (the identifying fields:
/// each is close to unique per person, a date of birth is shared by about
/// 1 in 25,000 people); their exact indexes select candidates.
pub const BLOCKING_FIELDS: [MatchField; 5] = [
    MatchField::DateOfBirth,
    MatchField::NationalId,
    MatchField::Phone,
    MatchField::Email,
    MatchField::StreetAddress,
];

/// Whether stored variants of `kind` on `field` are looked up by blocking
/// probes. Only these need an index by value; the others are compared
/// within the candidates a blocking probe selected.
/// Compound blocking keys ([`crate::variants::compound_variants`]) are
/// always looked up by value.
pub fn is_blocking_kind(field: MatchField, kind: &str) -> bool {
    BLOCKING_FIELDS.contains(&field)
        && matches!(
            kind,
            "dob.iso.v1"
                | "dob.swapped.v1"
                | "nid.full.v1"
                | "nid.edit1.v1"
                | "phone.e164.v1"
                | "email.canonical.v1"
                | "address.folded.v1"
                | "address.near.v1"
        )
}

/// The agreement level a stored variant of `kind` proves when a query's
/// variant of the same kind equals it.
fn level_of(kind: &str) -> Option<Level> {
    Some(match kind {
        "name.folded.v1" | "dob.iso.v1" | "nid.full.v1" | "phone.e164.v1"
        | "email.canonical.v1" | "address.folded.v1" | "postcode.folded.v1" | "city.folded.v1" => {
            Level::Exact
        }
        "name.nickname.v1" => Level::Nickname,
        "name.phonetic.v1" | "name.edit1.v1" | "dob.edit1.v1" | "nid.edit1.v1"
        | "address.near.v1" | "postcode.edit1.v1" | "city.edit1.v1" => Level::Similar,
        "dob.year.v1" => Level::Year,
        "nid.last4.v1" => Level::Last4,
        _ => return None,
    })
}

/// The level two stored records agree at when they share a variant of
/// `kind` (for estimating weights from stored pairs); `None` for kinds
/// whose sharing proves nothing on its own (the stored day/month swap).
pub fn stored_pair_level(kind: &str) -> Option<Level> {
    level_of(kind)
}

/// The probes of one query field. Stored subjects hold [`variants`] of the
/// same value. Cross probes: the date of birth as given is looked up among
/// stored day/month-swapped forms, and each name among the other name's
/// folded, phonetic and one-typo forms (given and family exchanged).
pub fn probes(field: MatchField, value: &str, opts: &NormalizeOptions) -> Vec<Probe> {
    let mut out = Vec::new();
    let other_name = match field {
        MatchField::GivenName => Some(MatchField::FamilyName),
        MatchField::FamilyName => Some(MatchField::GivenName),
        _ => None,
    };
    for var in variants(field, value, opts) {
        // The query's own swapped form would only find stored records
        // with the same date; the swap is found by the probe below.
        let Some(level) = level_of(var.kind) else {
            continue;
        };
        if var.kind == "dob.iso.v1" {
            out.push(Probe {
                field,
                stored: field,
                kind: "dob.swapped.v1",
                value: var.value.clone(),
                level: Level::Swapped,
                block: true,
            });
        }
        if let Some(other) = other_name
            && matches!(
                var.kind,
                "name.folded.v1" | "name.phonetic.v1" | "name.edit1.v1"
            )
        {
            out.push(Probe {
                field,
                stored: other,
                kind: var.kind,
                value: var.value.clone(),
                level: Level::Swapped,
                block: false,
            });
        }
        out.push(Probe {
            field,
            stored: field,
            kind: var.kind,
            block: is_blocking_kind(field, var.kind),
            value: var.value,
            level,
        });
    }
    out
}

/// `m` and `u` probabilities of one outcome (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MU {
    /// P(outcome | same person).
    pub m: f64,
    /// P(outcome | different people).
    pub u: f64,
}

/// Agreement outcomes of one field, best level first, and its disagreement.
#[derive(Debug, Clone, Copy)]
pub struct FieldWeights {
    /// The field.
    pub field: MatchField,
    /// Agreement levels, best first.
    pub agree: &'static [(Level, MU)],
    /// Disagreement (both sides have the field, no level hit).
    pub disagree: MU,
}

const fn mu(m: f64, u: f64) -> MU {
    MU { m, u }
}

/// The weight table; reasoning per row in `docs/blind-matching.md`. It is
/// the prior of the estimate learned from a vault's own population (see
/// [`crate::em`]) and what is used until one exists.
pub const WEIGHTS: [FieldWeights; 9] = [
    FieldWeights {
        field: MatchField::GivenName,
        agree: &[
            (Level::Exact, mu(0.86, 0.015)),
            (Level::Swapped, mu(0.015, 0.0004)),
            (Level::Nickname, mu(0.05, 0.004)),
            (Level::Similar, mu(0.04, 0.008)),
            (Level::Partial, mu(0.01, 0.003)),
        ],
        disagree: mu(0.025, 0.9696),
    },
    FieldWeights {
        field: MatchField::FamilyName,
        agree: &[
            (Level::Exact, mu(0.86, 0.003)),
            (Level::Swapped, mu(0.015, 0.0002)),
            (Level::Similar, mu(0.08, 0.006)),
            (Level::Partial, mu(0.015, 0.003)),
        ],
        disagree: mu(0.03, 0.9878),
    },
    FieldWeights {
        field: MatchField::DateOfBirth,
        agree: &[
            (Level::Exact, mu(0.86, 0.00004)),
            (Level::Swapped, mu(0.04, 0.00004)),
            (Level::Similar, mu(0.05, 0.004)),
            (Level::Year, mu(0.02, 0.015)),
        ],
        disagree: mu(0.03, 0.98092),
    },
    FieldWeights {
        field: MatchField::NationalId,
        agree: &[
            (Level::Exact, mu(0.94, 0.000_000_1)),
            (Level::Similar, mu(0.04, 0.000_05)),
            (Level::Last4, mu(0.005, 0.0001)),
        ],
        disagree: mu(0.015, 0.999_849_9),
    },
    FieldWeights {
        field: MatchField::Phone,
        agree: &[(Level::Exact, mu(0.75, 0.000_001))],
        disagree: mu(0.25, 0.999_999),
    },
    FieldWeights {
        field: MatchField::Email,
        agree: &[(Level::Exact, mu(0.85, 0.000_001))],
        disagree: mu(0.15, 0.999_999),
    },
    FieldWeights {
        field: MatchField::StreetAddress,
        agree: &[
            (Level::Exact, mu(0.68, 0.0001)),
            (Level::Similar, mu(0.08, 0.0003)),
            (Level::Partial, mu(0.04, 0.002)),
        ],
        disagree: mu(0.2, 0.9976),
    },
    FieldWeights {
        field: MatchField::Postcode,
        agree: &[
            (Level::Exact, mu(0.8, 0.001)),
            (Level::Similar, mu(0.06, 0.01)),
        ],
        disagree: mu(0.14, 0.989),
    },
    FieldWeights {
        field: MatchField::City,
        agree: &[
            (Level::Exact, mu(0.88, 0.04)),
            (Level::Similar, mu(0.05, 0.005)),
            (Level::Partial, mu(0.02, 0.01)),
        ],
        disagree: mu(0.05, 0.945),
    },
];

/// Total weight (bits) at which a candidate scores 0.5: the match threshold.
pub const THRESHOLD_BITS: f64 = 16.0;

/// Weights of a field absent from [`WEIGHTS`] (none is; a test checks): no evidence.
const NEUTRAL: FieldWeights = FieldWeights {
    field: MatchField::City,
    agree: &[],
    disagree: mu(0.5, 0.5),
};

/// The weight-table row of `field`.
pub fn weights_of(field: MatchField) -> &'static FieldWeights {
    WEIGHTS
        .iter()
        .find(|w| w.field == field)
        .unwrap_or(&NEUTRAL)
}

/// Weight in bits of `level` on `field`, or of disagreement (`None`).
pub fn weight(field: MatchField, level: Option<Level>) -> f64 {
    let w = weights_of(field);
    let MU { m, u } = match level {
        None => w.disagree,
        Some(l) => w
            .agree
            .iter()
            .find(|(x, _)| *x == l)
            .map_or(w.disagree, |(_, mu)| *mu),
    };
    (m / u).log2()
}

/// The weights of one field in a [`Model`]: agreement levels best first,
/// and disagreement.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldModel {
    /// The field.
    pub field: MatchField,
    /// Agreement levels, best first.
    pub agree: Vec<(Level, MU)>,
    /// Disagreement.
    pub disagree: MU,
}

impl FieldModel {
    /// Weight in bits of `level`, or of disagreement (`None`).
    pub fn weight(&self, level: Option<Level>) -> f64 {
        let MU { m, u } = match level {
            None => self.disagree,
            Some(l) => self
                .agree
                .iter()
                .find(|(x, _)| *x == l)
                .map_or(self.disagree, |(_, mu)| *mu),
        };
        (m / u).log2()
    }

    /// The best level among `hits` (in the order of [`Self::agree`]).
    pub fn best(&self, hits: &[Level]) -> Option<Level> {
        self.agree
            .iter()
            .map(|(l, _)| *l)
            .find(|l| hits.contains(l))
    }
}

/// m and u of every field: the hand-set [`WEIGHTS`] ([`Model::prior`]) or
/// an estimate learned from a vault's population.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// One entry per field, in [`MatchField::ALL`] order.
    pub fields: Vec<FieldModel>,
}

impl Default for Model {
    fn default() -> Self {
        Self::prior()
    }
}

impl Model {
    /// The hand-set table.
    pub fn prior() -> Self {
        Self {
            fields: WEIGHTS
                .iter()
                .map(|w| FieldModel {
                    field: w.field,
                    agree: w.agree.to_vec(),
                    disagree: w.disagree,
                })
                .collect(),
        }
    }

    /// The weights of `field`.
    pub fn field(&self, field: MatchField) -> Option<&FieldModel> {
        self.fields.iter().find(|f| f.field == field)
    }

    /// Weight in bits of `level` on `field`, or of disagreement (`None`);
    /// 0 for a field the model lacks.
    pub fn weight(&self, field: MatchField, level: Option<Level>) -> f64 {
        self.field(field).map_or(0.0, |f| f.weight(level))
    }
}

/// How one field of the query compared with a candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FieldOutcome {
    /// The field.
    pub field: MatchField,
    /// Best agreement level, or `None` for disagreement.
    pub level: Option<Level>,
    /// Its weight in bits.
    pub weight: f64,
}

/// The outcome of `field` given the levels of the probes the candidate
/// holds (`hits`) and whether the candidate has the field at all; `None`
/// when the candidate lacks it (no evidence either way).
pub fn field_outcome(
    field: MatchField,
    hits: &[Level],
    candidate_has_field: bool,
) -> Option<FieldOutcome> {
    let w = weights_of(field);
    let best = w.agree.iter().map(|(l, _)| *l).find(|l| hits.contains(l));
    if best.is_none() && !candidate_has_field {
        return None;
    }
    Some(FieldOutcome {
        field,
        level: best,
        weight: weight(field, best),
    })
}

/// Score in \[0, 1\] of a total weight.
pub fn score(total_bits: f64) -> f64 {
    1.0 / (1.0 + (THRESHOLD_BITS - total_bits).exp2())
}

/// Why a query cannot be answered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryRefusal {
    /// No field yields a usable variant.
    #[error("no matchable field in the query (matchable: {})", matchable_names())]
    Empty,
    /// The best possible agreement stays below the threshold.
    #[error(
        "too little information to match: at most {have:.1} bits from the given fields, \
         {need:.1} needed (add e.g. date_of_birth, national_id, phone or email)"
    )]
    TooLittle {
        /// Attainable bits.
        have: f64,
        /// Threshold.
        need: f64,
    },
    /// No blocking field: candidates cannot be selected without scanning.
    #[error(
        "the query needs at least one identifying field to find candidates: \
         date_of_birth, national_id, phone, email or street_address"
    )]
    NoBlockingField,
}

fn matchable_names() -> String {
    MatchField::ALL.map(MatchField::name).join(", ")
}

/// Refuses a query (given as its probes) that could never reach the
/// threshold or that names no blocking field. Returns the attainable bits.
pub fn assess(probes: &[Probe]) -> Result<f64, QueryRefusal> {
    if probes.is_empty() {
        return Err(QueryRefusal::Empty);
    }
    let mut have = 0.0;
    for f in MatchField::ALL {
        let levels: Vec<Level> = probes
            .iter()
            .filter(|p| p.field == f)
            .map(|p| p.level)
            .collect();
        if let Some(o) = field_outcome(f, &levels, true)
            && o.level.is_some()
        {
            have += o.weight;
        }
    }
    if have < THRESHOLD_BITS {
        return Err(QueryRefusal::TooLittle {
            have,
            need: THRESHOLD_BITS,
        });
    }
    // A real blocking probe of an identifying field: an impossible date
    // (only its typo neighbourhood) or a bare compound key does not count.
    if !probes
        .iter()
        .any(|p| p.block && BLOCKING_FIELDS.contains(&p.field))
    {
        return Err(QueryRefusal::NoBlockingField);
    }
    Ok(have)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(fields: &[(MatchField, &str)]) -> Vec<Probe> {
        let opts = NormalizeOptions {
            default_country_code: Some(44),
        };
        fields
            .iter()
            .flat_map(|(f, v)| probes(*f, v, &opts))
            .collect()
    }

    #[test]
    fn weight_table_is_in_field_order_and_sane() {
        for (w, f) in WEIGHTS.iter().zip(MatchField::ALL) {
            assert_eq!(w.field, f);
            for (_, mu) in w.agree {
                assert!(mu.m > mu.u, "{f:?}: agreement must be evidence for");
            }
            assert!(w.disagree.m < w.disagree.u, "{f:?}");
            let m: f64 = w.agree.iter().map(|(_, x)| x.m).sum::<f64>() + w.disagree.m;
            assert!((m - 1.0).abs() < 1e-9, "{f:?}: m sums to {m}");
            let u: f64 = w.agree.iter().map(|(_, x)| x.u).sum::<f64>() + w.disagree.u;
            assert!((u - 1.0).abs() < 1e-9, "{f:?}: u sums to {u}");
        }
    }

    #[test]
    fn scores_are_probabilities_around_the_threshold() {
        assert!((score(THRESHOLD_BITS) - 0.5).abs() < 1e-12);
        assert!(score(40.0) > 0.9999);
        assert!(score(-40.0) < 1e-4);
        assert!(weight(MatchField::DateOfBirth, Some(Level::Exact)) > 14.0);
        assert!(weight(MatchField::GivenName, None) < 0.0);
    }

    #[test]
    fn swapped_date_is_a_blocking_cross_kind_probe() {
        let p = q(&[(MatchField::DateOfBirth, "1990-07-03")]);
        assert!(p.iter().any(|x| x.kind == "dob.swapped.v1"
            && x.value == "1990-07-03"
            && x.level == Level::Swapped
            && x.block));
        assert!(p.iter().any(|x| x.kind == "dob.iso.v1" && x.block));
        assert!(p.iter().any(|x| x.kind == "dob.year.v1" && !x.block));
    }

    #[test]
    fn blocking_probes_look_up_blocking_kinds_only() {
        let p = q(&[
            (MatchField::GivenName, "William"),
            (MatchField::FamilyName, "Smith"),
            (MatchField::DateOfBirth, "1990-03-07"),
            (MatchField::NationalId, "AB123456C"),
            (MatchField::Phone, "07700 900123"),
            (MatchField::Email, "a@example.org"),
            (MatchField::StreetAddress, "1 High Street"),
            (MatchField::Postcode, "SW1A 1AA"),
            (MatchField::City, "London"),
        ]);
        for x in &p {
            assert_eq!(x.block, is_blocking_kind(x.field, x.kind), "{x:?}");
        }
        assert!(p.iter().filter(|x| x.block).count() >= 6);
    }

    #[test]
    fn best_level_wins_and_missing_fields_are_neutral() {
        let o = field_outcome(MatchField::GivenName, &[Level::Similar, Level::Exact], true);
        assert_eq!(o.map(|o| o.level), Some(Some(Level::Exact)));
        let o = field_outcome(MatchField::GivenName, &[], true);
        assert_eq!(o.map(|o| o.level), Some(None));
        assert_eq!(field_outcome(MatchField::GivenName, &[], false), None);
    }

    #[test]
    fn queries_below_the_information_threshold_are_refused() {
        assert!(matches!(
            assess(&q(&[(MatchField::FamilyName, "Lovelace")])),
            Err(QueryRefusal::TooLittle { .. })
        ));
        assert!(matches!(
            assess(&q(&[
                (MatchField::GivenName, "Ada"),
                (MatchField::FamilyName, "Lovelace")
            ])),
            Err(QueryRefusal::TooLittle { .. })
        ));
        assert!(matches!(
            assess(&q(&[(MatchField::DateOfBirth, "1815-12-10")])),
            Err(QueryRefusal::TooLittle { .. })
        ));
        assert_eq!(
            assess(&q(&[(MatchField::DateOfBirth, "not a date")])),
            Err(QueryRefusal::Empty)
        );
        // Enough bits but nothing selective: refused too.
        assert_eq!(
            assess(&q(&[
                (MatchField::GivenName, "Ada"),
                (MatchField::FamilyName, "Lovelace"),
                (MatchField::City, "London"),
            ])),
            Err(QueryRefusal::NoBlockingField)
        );
        assert!(
            assess(&q(&[
                (MatchField::FamilyName, "Lovelace"),
                (MatchField::DateOfBirth, "1815-12-10")
            ]))
            .is_ok()
        );
        assert!(assess(&q(&[(MatchField::Phone, "+44 7700 900123")])).is_ok());
    }

    #[test]
    fn a_typical_corrupted_duplicate_clears_the_threshold() {
        // Nickname, swapped date, transposed family name: 3 weak agreements.
        let total = weight(MatchField::GivenName, Some(Level::Nickname))
            + weight(MatchField::FamilyName, Some(Level::Similar))
            + weight(MatchField::DateOfBirth, Some(Level::Swapped));
        assert!(score(total) > 0.5, "{total}");
        // Same date of birth, different names: not a match.
        let total = weight(MatchField::GivenName, None)
            + weight(MatchField::FamilyName, None)
            + weight(MatchField::DateOfBirth, Some(Level::Exact));
        assert!(score(total) < 0.5, "{total}");
    }
}
