//! Rule suggestions: rule sets that people with similar engagement
//! histories adopted, offered to a person for the entities they linked.
//!
//! A suggestion must never reveal one person's rules: sets adopted by
//! fewer than the minimum support are dropped, and confidence and support
//! are reported coarsely. Nothing here reads the store.

use std::collections::{BTreeSet, HashMap};

use super::Rule;

/// What is known of a person's engagements: the entities they linked and
/// the (entity, event type) pairs reported about them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Linked entities.
    pub linked: BTreeSet<String>,
    /// `(source, event_type)` of events reported about them.
    pub events: BTreeSet<(String, String)>,
}

impl History {
    fn features(&self) -> BTreeSet<(u8, &str, &str)> {
        self.linked
            .iter()
            .map(|e| (0, e.as_str(), ""))
            .chain(self.events.iter().map(|(s, t)| (1, s.as_str(), t.as_str())))
            .collect()
    }

    /// Jaccard similarity of two histories' features, in 0..=1.
    pub fn similarity(&self, other: &Self) -> f64 {
        let (a, b) = (self.features(), other.features());
        let union = a.union(&b).count();
        if union == 0 {
            return 0.0;
        }
        #[allow(clippy::cast_precision_loss)] // counts are far below 2^52
        let s = a.intersection(&b).count() as f64 / union as f64;
        s
    }
}

/// Another person: history and adopted rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// Their history.
    pub history: History,
    /// Their rules.
    pub rules: Vec<Rule>,
}

/// A suggested rule set.
#[derive(Debug, Clone, PartialEq)]
pub struct Suggestion {
    /// The rules, sorted by id.
    pub rules: Vec<Rule>,
    /// Similarity-weighted share of similar people who adopted them.
    pub confidence: f64,
    /// How many similar people adopted them.
    pub support: usize,
}

/// Support buckets: a suggestion reports the largest bucket its support
/// reaches, not the exact count.
const SUPPORT_BUCKETS: &[usize] = &[1000, 500, 200, 100, 50, 20, 10, 5, 3, 2, 1];

fn support_bucket(n: usize) -> usize {
    SUPPORT_BUCKETS
        .iter()
        .copied()
        .find(|b| n >= *b)
        .unwrap_or(0)
}

/// Confidence to one decimal: exact similarity sums would let a person
/// who links and unlinks entities between queries read peers' histories.
fn coarse(confidence: f64) -> f64 {
    ((confidence * 10.0).round() / 10.0).clamp(0.0, 1.0)
}

/// Suggests rule sets for a person from peers' adoptions.
///
/// A peer is similar when its history shares anything with the person's
/// (Jaccard similarity above zero). From each similar peer's rules the
/// candidate set keeps those naming only entities the person linked; each
/// candidate rule counts alone, and the peer's whole candidate set counts
/// as one set too. Sets are counted before the person's own rules are
/// taken out, so what a person holds cannot be varied to isolate one
/// peer's set. A set's confidence is the similarity-weighted share of
/// similar peers who hold it; sets held by fewer than `min_support` peers
/// are dropped (one peer's rules are never revealed), and the rules the
/// person already holds are removed from what is shown (a set left empty
/// is not shown). Confidence is reported to one decimal and support as a
/// bucket (3, 5, 10, 20, …). Best `max` first: confidence, then larger
/// sets, then support.
pub fn suggest(
    me: &History,
    mine: &[Rule],
    peers: &[Peer],
    min_support: usize,
    max: usize,
) -> Vec<Suggestion> {
    let held: BTreeSet<&Rule> = mine.iter().collect();
    let mut total = 0.0;
    let mut sets: HashMap<Vec<&Rule>, (f64, usize)> = HashMap::new();
    for p in peers {
        let sim = me.similarity(&p.history);
        if sim <= 0.0 {
            continue;
        }
        total += sim;
        let mut cand: Vec<&Rule> = p
            .rules
            .iter()
            .filter(|r| r.entities().iter().all(|e| me.linked.contains(*e)))
            .collect();
        cand.sort();
        cand.dedup();
        let mut keys: BTreeSet<Vec<&Rule>> = cand.iter().map(|r| vec![*r]).collect();
        if cand.len() > 1 {
            keys.insert(cand);
        }
        for k in keys {
            let e = sets.entry(k).or_insert((0.0, 0));
            e.0 += sim;
            e.1 += 1;
        }
    }
    if total <= 0.0 {
        return Vec::new();
    }
    let mut ranked: Vec<(Vec<Rule>, f64, usize)> = sets
        .into_iter()
        .filter(|(_, (_, n))| *n >= min_support.max(1))
        .filter_map(|(rules, (w, n))| {
            let mut rules: Vec<Rule> = rules
                .into_iter()
                .filter(|r| !held.contains(r))
                .cloned()
                .collect();
            rules.sort_by_cached_key(Rule::id);
            (!rules.is_empty()).then_some((rules, (w / total).min(1.0), n))
        })
        .collect();
    ranked.sort_by(|a, b| {
        b.1.total_cmp(&a.1)
            .then_with(|| b.0.len().cmp(&a.0.len()))
            .then_with(|| b.2.cmp(&a.2))
            .then_with(|| {
                let ids = |r: &[Rule]| r.iter().map(Rule::id).collect::<Vec<_>>();
                ids(&a.0).cmp(&ids(&b.0))
            })
    });
    // Taking held rules out can make two sets show the same rules: the
    // better-ranked one stays.
    let mut out: Vec<Suggestion> = Vec::new();
    for (rules, confidence, n) in ranked {
        if out.iter().any(|s| s.rules == rules) {
            continue;
        }
        out.push(Suggestion {
            rules,
            confidence: coarse(confidence),
            support: support_bucket(n),
        });
        if out.len() == max {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{A, B, C, rule};
    use super::*;

    fn history(linked: &[&str], events: &[(&str, &str)]) -> History {
        History {
            linked: linked.iter().map(|s| (*s).to_owned()).collect(),
            events: events
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn support_and_confidence_are_coarse() {
        assert_eq!(support_bucket(2), 2);
        assert_eq!(support_bucket(4), 3);
        assert_eq!(support_bucket(19), 10);
        assert!((coarse(0.66) - 0.7).abs() < 1e-12);
    }

    #[test]
    fn similarity_is_jaccard() {
        let a = history(&[A, B], &[(A, "x")]);
        let b = history(&[A, B], &[(A, "y")]);
        assert!((a.similarity(&b) - 0.5).abs() < 1e-12);
        assert!((a.similarity(&a) - 1.0).abs() < 1e-12);
        assert_eq!(a.similarity(&History::default()), 0.0);
    }

    #[test]
    fn suggestions_need_support_linked_entities_and_similarity() {
        let fwd = rule(A, "address.changed", B, "update_address", &["address"]);
        let block = rule(A, "card.lost", B, "block", &[]);
        let to_c = rule(A, "address.changed", C, "notify", &[]);
        let me = history(&[A, B], &[(A, "address.changed")]);
        let similar = |rules: Vec<Rule>| Peer {
            history: history(&[A, B], &[(A, "address.changed")]),
            rules,
        };
        let peers = vec![
            similar(vec![fwd.clone(), block.clone()]),
            similar(vec![fwd.clone(), block.clone()]),
            similar(vec![fwd.clone(), block.clone(), to_c.clone()]),
            similar(vec![fwd.clone()]),
            similar(vec![to_c.clone()]),
            // Nothing in common: not similar, whatever it adopted.
            Peer {
                history: history(&[C], &[]),
                rules: vec![block.clone(); 1],
            },
        ];
        let s = suggest(&me, &[], &peers, 3, 10);
        // fwd: 4 of 5 similar peers; the {fwd, block} set: 3 of 5; block: 3 of 5.
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[0].rules, vec![fwd.clone()]);
        assert_eq!(s[0].support, 3, "4 adopters, reported as the bucket 3");
        assert!((s[0].confidence - 0.8).abs() < 1e-9);
        assert_eq!(
            s[1].rules.len(),
            2,
            "the larger set ranks first at equal confidence"
        );
        assert_eq!(s[1].support, 3);
        assert_eq!(s[2].rules, vec![block.clone()]);
        // Rules naming an entity I did not link are never suggested.
        assert!(s.iter().all(|x| !x.rules.contains(&to_c)));
        // What I already hold is not suggested; the {fwd, block} set shows
        // as {block}, once.
        let s = suggest(&me, std::slice::from_ref(&fwd), &peers, 3, 10);
        assert!(s.iter().all(|x| !x.rules.contains(&fwd)));
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].rules, vec![block.clone()]);
        // Below the minimum support nothing is revealed.
        assert!(suggest(&me, &[], &peers[..2], 3, 10).is_empty());
    }
}
