//! Dataset linking: assigning a whole batch of records to subjects so that
//! no subject is given to two records.
//!
//! The assignment is *greedy by weight*: every (record, candidate) pair is
//! taken in descending order of its weight in bits (the evidence its score
//! is a logistic of; scores of strong pairs all round to 1.0), ties to the
//! earlier record, then the better candidate rank, and kept when neither
//! its record nor its subject is taken yet. A record whose best subject
//! went to a heavier pair falls back to its next candidate, or to none.
//! Greedy is what record-linkage tools use for one-to-one links (e.g.
//! Splink's and the `recordlinkage` toolkit's one-to-one filters): it
//! never keeps a pair while a heavier conflicting one exists, which is the
//! property a partner can check. A maximum-total-weight assignment
//! (Hungarian) can differ only when two records compete for two subjects
//! and the lower pair is kept to raise the sum; with match probabilities
//! that trade would link a worse pair, so greedy is the documented choice.

use std::collections::HashSet;

use crate::subject::SubjectId;

use super::Hit;

/// For each record, the index of the candidate it is assigned (into its
/// own `candidates` list), or `None`.
pub fn assign_one_to_one(candidates: &[Vec<Hit>]) -> Vec<Option<usize>> {
    let mut pairs: Vec<(f64, usize, usize)> = candidates
        .iter()
        .enumerate()
        .flat_map(|(r, hits)| hits.iter().enumerate().map(move |(c, h)| (h.bits, r, c)))
        .collect();
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut out = vec![None; candidates.len()];
    let mut taken: HashSet<SubjectId> = HashSet::new();
    for (_, r, c) in pairs {
        let Some(slot) = out.get_mut(r) else { continue };
        if slot.is_some() {
            continue;
        }
        let Some(hit) = candidates.get(r).and_then(|h| h.get(c)) else {
            continue;
        };
        if taken.insert(hit.subject) {
            *slot = Some(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hit(subject: u8, bits: f64) -> Hit {
        Hit {
            subject: SubjectId::from_bytes([subject; 16]),
            score: idvault_tokenizer::matching::score(bits),
            bits,
            agreements: Vec::new(),
        }
    }

    #[test]
    fn heavier_pair_wins_and_the_loser_falls_back() {
        // Records 0 and 1 both want subject 1; record 1 weighs more.
        let c = vec![
            vec![hit(1, 40.0), hit(2, 30.0)],
            vec![hit(1, 90.0)],
            vec![hit(2, 20.0)],
        ];
        // 1 takes subject 1, 0 falls back to subject 2, 2 is left out.
        assert_eq!(assign_one_to_one(&c), vec![Some(1), Some(0), None]);
    }

    #[test]
    fn weight_decides_where_scores_round_alike() {
        // Both pairs score 1.0; record 1's holds more evidence.
        let c = vec![vec![hit(1, 80.0)], vec![hit(1, 120.0)]];
        assert!((c[0][0].score - c[1][0].score).abs() < f64::EPSILON);
        assert_eq!(assign_one_to_one(&c), vec![None, Some(0)]);
    }

    #[test]
    fn ties_go_to_the_earlier_record() {
        let c = vec![vec![hit(1, 30.0)], vec![hit(1, 30.0)]];
        assert_eq!(assign_one_to_one(&c), vec![Some(0), None]);
    }

    #[test]
    fn records_without_candidates_stay_unassigned() {
        let c = vec![Vec::new(), vec![hit(3, 25.0)]];
        assert_eq!(assign_one_to_one(&c), vec![None, Some(0)]);
    }

    fn batch() -> impl Strategy<Value = Vec<Vec<Hit>>> {
        prop::collection::vec(
            prop::collection::vec((0u8..12, 16.0f64..120.0), 0..4)
                .prop_map(|v| v.into_iter().map(|(s, p)| hit(s, p)).collect()),
            0..40,
        )
    }

    proptest! {
        /// No subject twice; an assigned pair is the record's own
        /// candidate; and no pair left out beats a kept pair it conflicts
        /// with (the greedy invariant): a record left without a subject
        /// has every candidate taken by a pair weighing at least as much.
        #[test]
        fn one_to_one_holds(c in batch()) {
            let a = assign_one_to_one(&c);
            prop_assert_eq!(a.len(), c.len());
            let mut seen = HashSet::new();
            let mut owner_score = std::collections::HashMap::new();
            for (r, choice) in a.iter().enumerate() {
                if let Some(i) = choice {
                    let h = &c[r][*i];
                    prop_assert!(seen.insert(h.subject), "subject assigned twice");
                    owner_score.insert(h.subject, h.bits);
                }
            }
            for (r, choice) in a.iter().enumerate() {
                let limit = choice.map_or(f64::INFINITY, |i| c[r][i].bits);
                for h in &c[r] {
                    if h.bits > limit || choice.is_none() {
                        let owner = owner_score.get(&h.subject);
                        prop_assert!(
                            owner.is_some_and(|s| *s >= h.bits) || choice.is_some_and(|i| c[r][i].subject == h.subject),
                            "a better pair was passed over"
                        );
                    }
                }
            }
        }
    }
}
