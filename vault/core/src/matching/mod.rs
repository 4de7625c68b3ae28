//! Blind matching (pure part): blind indexes of variants, query plans and
//! candidate scoring.
//!
//! A variant is stored only as its blind index
//! `trunc64(HMAC-SHA256(K[domain, field, kind, v], value))`, where the key
//! is derived per match domain (one per partner unless partners are
//! configured to share one), field and variant kind from root key `v`
//! (label `idvault/v1/match-index/<domain>/<field>/<kind>`). Keys separate
//! kinds, so the MAC input is the bare value. 64 bits are kept: enough that
//! chance collisions inside one key stay below one in a million for a
//! billion stored values, and a collision only adds a candidate that is
//! then scored on every field.
//!
//! A query becomes a [`QueryPlan`]: the blind index of each probe under
//! every live key version, tagged with the field and agreement level it
//! proves. Candidates are the subjects holding a *blocking* probe; each is
//! scored from the indexes it holds ([`QueryPlan::score`]). The `query`
//! submodule validates a partner's query into a [`PlannedQuery`] and ranks
//! its candidates with the score cut-off.
//!
//! Values come in only to be turned into blind indexes: this module must
//! never store, return or print a cleartext value or a key, and it never
//! touches the store (the server looks the indexes up).

use std::collections::HashMap;

mod query;

pub use query::{
    BadSignature, CANDIDATE_LIMIT, Candidate, FIRST_CANDIDATES, Hit, MAX_QUERY_ID, MAX_RESULTS,
    MIN_SCORE, MatchQuery, PlannedQuery, plan_query,
};

use idvault_tokenizer::NormalizeOptions;
use idvault_tokenizer::matching::{self, FieldOutcome, Level, QueryRefusal};
use idvault_tokenizer::variants::{self, MatchField};
use ring::hmac;
use zeroize::Zeroize;

use super::keys::{KeyError, KeyHierarchy};
use super::secret::{MatchIndexMaterial, Secret};

/// HKDF label prefix of blind-matching index keys.
pub const LABEL_MATCH_INDEX: &str = "idvault/v1/match-index";
/// Bytes of HMAC output kept in a blind index.
pub const BLIND_INDEX_BYTES: usize = 8;

/// One blind-matching index key (before it is turned into HMAC state).
pub type MatchIndexKey = Secret<MatchIndexMaterial>;

/// The label of the key of `(domain, field, kind)`.
pub fn key_label(domain: &str, field: MatchField, kind: &str) -> String {
    format!("{LABEL_MATCH_INDEX}/{domain}/{}/{kind}", field.name())
}

/// The HMAC states of every `(field, kind)` key of one match domain and
/// root key version. ring keeps only the pad states, not the raw key; the
/// derived bytes are wiped as soon as the state is built.
pub struct MatchKeyring {
    domain: String,
    version: u32,
    keys: HashMap<(MatchField, &'static str), hmac::Key>,
}

impl std::fmt::Debug for MatchKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MatchKeyring({} v{}, redacted)",
            self.domain, self.version
        )
    }
}

impl MatchKeyring {
    /// Derives the keyring of `domain` (a validated name) at `version`.
    pub fn derive(keys: &KeyHierarchy, domain: &str, version: u32) -> Result<Self, KeyError> {
        let mut map = HashMap::new();
        for field in MatchField::ALL {
            for kind in variants::kinds(field) {
                let k: MatchIndexKey = keys.derive(&key_label(domain, field, kind), version)?;
                let mut bytes = *k.expose();
                map.insert((field, *kind), hmac::Key::new(hmac::HMAC_SHA256, &bytes));
                bytes.zeroize();
            }
        }
        Ok(Self {
            domain: domain.to_owned(),
            version,
            keys: map,
        })
    }

    /// The root key version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The match domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The blind index of `value` as variant `kind` of `field`.
    pub fn index(&self, field: MatchField, kind: &str, value: &str) -> Option<i64> {
        let key = self.keys.get(&(field, kind))?;
        let tag = hmac::sign(key, value.as_bytes());
        let head: [u8; BLIND_INDEX_BYTES] =
            tag.as_ref().get(..BLIND_INDEX_BYTES)?.try_into().ok()?;
        Some(i64::from_be_bytes(head))
    }

    /// The blind indexes stored for a subject's `field` holding `value`,
    /// each flagged when it is of a blocking kind (looked up by value).
    pub fn subject_indexes(
        &self,
        field: MatchField,
        value: &str,
        opts: &NormalizeOptions,
    ) -> Vec<(i64, bool)> {
        let mut out: Vec<(i64, bool)> = variants::variants(field, value, opts)
            .iter()
            .filter_map(|v| {
                self.index(field, v.kind, &v.value)
                    .map(|i| (i, matching::is_blocking_kind(field, v.kind)))
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Bytes per signature entry: field code and big-endian blind index.
const SIGNATURE_ENTRY: usize = 9;

/// A subject's *signature* in one domain: every blind index of its
/// variants with its field, packed as `field code ‖ index (8 bytes, BE)`
/// entries. Scoring a candidate reads this one value instead of one row
/// per variant.
pub fn encode_signature(entries: &[(MatchField, i64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * SIGNATURE_ENTRY);
    for (f, i) in entries {
        out.push(f.code());
        out.extend_from_slice(&i.to_be_bytes());
    }
    out
}

/// Unpacks [`encode_signature`] output; `None` if it is malformed (a
/// length that is not a whole number of entries, or an unknown field).
pub fn decode_signature(bytes: &[u8]) -> Option<Vec<(MatchField, i64)>> {
    if !bytes.len().is_multiple_of(SIGNATURE_ENTRY) {
        return None;
    }
    bytes
        .chunks_exact(SIGNATURE_ENTRY)
        .map(|e| {
            let (code, index) = e.split_first()?;
            let index: [u8; 8] = index.try_into().ok()?;
            Some((MatchField::from_code(*code)?, i64::from_be_bytes(index)))
        })
        .collect()
}

/// The bit of `field` in a presence mask (bit n = field code n).
pub fn field_bit(field: MatchField) -> u16 {
    1 << field.code()
}

/// The presence mask of `fields`: which fields a subject has indexes for.
pub fn field_mask(fields: impl IntoIterator<Item = MatchField>) -> u16 {
    fields.into_iter().fold(0, |m, f| m | field_bit(f))
}

/// One probe's blind index and what a hit on it proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedProbe {
    /// Blind index.
    pub index: i64,
    /// Field.
    pub field: MatchField,
    /// Level proved by a hit.
    pub level: Level,
    /// Whether it selects candidates.
    pub block: bool,
}

/// A query ready to run: probe indexes under every live key version.
#[derive(Debug, Clone)]
pub struct QueryPlan {
    probes: Vec<PlannedProbe>,
    by_index: HashMap<i64, Vec<usize>>,
    fields: Vec<MatchField>,
}

/// How a candidate compared with the query.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// Score in \[0, 1\].
    pub score: f64,
    /// Total weight in bits.
    pub bits: f64,
    /// Per-field outcomes (fields both sides hold).
    pub outcomes: Vec<FieldOutcome>,
}

impl QueryPlan {
    /// Plans a query of `fields` with the keyrings of the partner's domain
    /// (one per live version). Refuses queries that carry too little
    /// information (see [`matching::assess`]).
    pub fn new(
        keyrings: &[impl std::ops::Deref<Target = MatchKeyring>],
        fields: &[(MatchField, &str)],
        opts: &NormalizeOptions,
    ) -> Result<Self, QueryRefusal> {
        let probes: Vec<matching::Probe> = fields
            .iter()
            .flat_map(|(f, v)| matching::probes(*f, v, opts))
            .collect();
        matching::assess(&probes)?;
        let mut planned = Vec::with_capacity(probes.len() * keyrings.len());
        for ring in keyrings {
            for p in &probes {
                if let Some(index) = ring.index(p.field, p.kind, &p.value) {
                    planned.push(PlannedProbe {
                        index,
                        field: p.field,
                        level: p.level,
                        block: p.block,
                    });
                }
            }
        }
        let mut by_index: HashMap<i64, Vec<usize>> = HashMap::new();
        for (i, p) in planned.iter().enumerate() {
            by_index.entry(p.index).or_default().push(i);
        }
        let mut fields: Vec<MatchField> = probes.iter().map(|p| p.field).collect();
        fields.sort_unstable();
        fields.dedup();
        Ok(Self {
            probes: planned,
            by_index,
            fields,
        })
    }

    /// Distinct indexes of blocking probes: candidates hold one of these.
    pub fn blocking_indexes(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self
            .probes
            .iter()
            .filter(|p| p.block)
            .map(|p| p.index)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Every probe index (what a candidate's rows are filtered by).
    pub fn probe_indexes(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self.probes.iter().map(|p| p.index).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The most bits a candidate holding at most `blocking_hits` blocking
    /// indexes could score: every field at its best level, except that at
    /// most `blocking_hits` blocking fields reach a blocking level (exact,
    /// or a swapped date); the others get at most their best non-blocking
    /// level (a year of birth, the last four of a national id). Lets a
    /// lookup stop after the best-ranked candidates when they beat it.
    pub fn bound_with_blocking_hits(&self, blocking_hits: u32) -> f64 {
        let levels = |f: MatchField| {
            matching::WEIGHTS
                .iter()
                .find(|w| w.field == f)
                .map_or(&[][..], |w| w.agree)
        };
        let best = |f: MatchField, blocking_level: Option<bool>| {
            levels(f)
                .iter()
                .filter(|(l, _)| {
                    blocking_level.is_none_or(|b| b == matches!(l, Level::Exact | Level::Swapped))
                })
                .map(|(l, _)| matching::weight(f, Some(*l)))
                .fold(0.0, f64::max)
        };
        let mut total = 0.0;
        let mut gains = Vec::new();
        for f in &self.fields {
            if matching::BLOCKING_FIELDS.contains(f) {
                let without = best(*f, Some(false));
                total += without;
                gains.push(best(*f, Some(true)) - without);
            } else {
                total += best(*f, None);
            }
        }
        gains.sort_by(|a, b| b.total_cmp(a));
        total
            + gains
                .iter()
                .take(usize::try_from(blocking_hits).unwrap_or(usize::MAX))
                .sum::<f64>()
    }

    /// Scores a candidate from the fields it has indexes for (`present`,
    /// see [`field_mask`]) and those of its `(field, index)` rows that are
    /// probe indexes (other rows are ignored).
    pub fn score(&self, present: u16, rows: &[(MatchField, i64)]) -> Scored {
        let mut hits: HashMap<MatchField, Vec<Level>> = HashMap::new();
        for (field, index) in rows {
            for i in self.by_index.get(index).into_iter().flatten() {
                if let Some(p) = self.probes.get(*i)
                    && p.field == *field
                {
                    hits.entry(p.field).or_default().push(p.level);
                }
            }
        }
        let mut outcomes = Vec::new();
        for f in &self.fields {
            let has = present & field_bit(*f) != 0;
            let levels = hits.get(f).map_or(&[][..], Vec::as_slice);
            if let Some(o) = matching::field_outcome(*f, levels, has) {
                outcomes.push(o);
            }
        }
        let bits: f64 = outcomes.iter().map(|o| o.weight).sum();
        Scored {
            score: matching::score(bits),
            bits,
            outcomes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyHierarchy, StaticKeyProvider};
    use crate::secret::RootKey;

    fn hierarchy(versions: u32) -> KeyHierarchy {
        let keys = (1..=versions).map(|v| RootKey::from_bytes([v as u8; 32], v));
        KeyHierarchy::new(Box::new(StaticKeyProvider::new(keys).unwrap()))
    }

    fn opts() -> NormalizeOptions {
        NormalizeOptions {
            default_country_code: Some(44),
        }
    }

    /// A stored subject: presence mask and index rows.
    fn stored(ring: &MatchKeyring, fields: &[(MatchField, &str)]) -> (u16, Vec<(MatchField, i64)>) {
        let rows: Vec<(MatchField, i64)> = fields
            .iter()
            .flat_map(|(f, v)| {
                ring.subject_indexes(*f, v, &opts())
                    .into_iter()
                    .map(|(i, _)| (*f, i))
            })
            .collect();
        (field_mask(rows.iter().map(|(f, _)| *f)), rows)
    }

    #[test]
    fn blind_index_known_answer() {
        // HMAC-SHA256 with the key derived for this label from root key
        // 0x01…01, first 8 bytes big-endian: pins label, derivation and
        // truncation (a change here orphans every stored index).
        let h = hierarchy(1);
        let ring = MatchKeyring::derive(&h, "partner-a", 1).unwrap();
        let key: MatchIndexKey = h
            .derive(
                &key_label("partner-a", MatchField::FamilyName, "name.folded.v1"),
                1,
            )
            .unwrap();
        let tag = crate::crypto::hmac_sha256(key.expose(), &[b"lovelace"]);
        let want = i64::from_be_bytes(tag[..8].try_into().unwrap());
        assert_eq!(
            ring.index(MatchField::FamilyName, "name.folded.v1", "lovelace"),
            Some(want)
        );
        assert_eq!(
            key_label("partner-a", MatchField::FamilyName, "name.folded.v1"),
            "idvault/v1/match-index/partner-a/family_name/name.folded.v1"
        );
    }

    #[test]
    fn signatures_round_trip_and_reject_garbage() {
        let e = vec![(MatchField::City, -5), (MatchField::GivenName, i64::MAX)];
        assert_eq!(decode_signature(&encode_signature(&e)), Some(e));
        assert_eq!(decode_signature(&[]), Some(vec![]));
        assert_eq!(decode_signature(&[0; 8]), None);
        assert_eq!(decode_signature(&[42, 0, 0, 0, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn domains_fields_and_kinds_have_unrelated_indexes() {
        let h = hierarchy(1);
        let a = MatchKeyring::derive(&h, "partner-a", 1).unwrap();
        let b = MatchKeyring::derive(&h, "partner-b", 1).unwrap();
        let v = "lovelace";
        let x = a.index(MatchField::FamilyName, "name.folded.v1", v);
        assert_ne!(x, b.index(MatchField::FamilyName, "name.folded.v1", v));
        assert_ne!(x, a.index(MatchField::GivenName, "name.folded.v1", v));
        assert_ne!(x, a.index(MatchField::FamilyName, "name.edit1.v1", v));
        assert_eq!(a.index(MatchField::Phone, "name.folded.v1", v), None);
    }

    #[test]
    fn a_corrupted_duplicate_scores_above_and_a_stranger_below() {
        let h = hierarchy(1);
        let ring = MatchKeyring::derive(&h, "partner-a", 1).unwrap();
        let ada = stored(
            &ring,
            &[
                (MatchField::GivenName, "William"),
                (MatchField::FamilyName, "Smith"),
                (MatchField::DateOfBirth, "1990-03-07"),
                (MatchField::Postcode, "SW1A 1AA"),
            ],
        );
        let plan = QueryPlan::new(
            &[&ring],
            &[
                (MatchField::GivenName, "Bill"),
                (MatchField::FamilyName, "Smtih"),
                (MatchField::DateOfBirth, "07/03/1990"),
                (MatchField::Phone, "+44 7700 900123"),
            ],
            &opts(),
        )
        .unwrap();
        let s = plan.score(ada.0, &ada.1);
        assert!(s.score > 0.5, "{s:?}");
        let level = |f| {
            s.outcomes
                .iter()
                .find(|o| o.field == f)
                .and_then(|o| o.level)
        };
        assert_eq!(level(MatchField::GivenName), Some(Level::Nickname));
        assert_eq!(level(MatchField::FamilyName), Some(Level::Similar));
        // 07/03/1990 is day-first, so 7 March: the same date.
        assert_eq!(level(MatchField::DateOfBirth), Some(Level::Exact));
        // The stored subject has no phone: no evidence either way.
        assert!(!s.outcomes.iter().any(|o| o.field == MatchField::Phone));

        // Month-first writer: 03/07/1990 reads as 3 July, the swap of 7 March.
        let swapped = QueryPlan::new(
            &[&ring],
            &[
                (MatchField::GivenName, "William"),
                (MatchField::DateOfBirth, "03/07/1990"),
            ],
            &opts(),
        )
        .unwrap()
        .score(ada.0, &ada.1);
        assert!(
            swapped
                .outcomes
                .iter()
                .any(|o| o.field == MatchField::DateOfBirth && o.level == Some(Level::Swapped)),
            "{swapped:?}"
        );

        let stranger = QueryPlan::new(
            &[&ring],
            &[
                (MatchField::GivenName, "Grace"),
                (MatchField::FamilyName, "Hopper"),
                (MatchField::DateOfBirth, "1990-03-07"),
            ],
            &opts(),
        )
        .unwrap()
        .score(ada.0, &ada.1);
        assert!(stranger.score < 0.5, "{stranger:?}");
    }

    #[test]
    fn the_bound_caps_every_candidate_with_that_many_blocking_hits() {
        let h = hierarchy(1);
        let ring = MatchKeyring::derive(&h, "d", 1).unwrap();
        let query = [
            (MatchField::GivenName, "Ada"),
            (MatchField::FamilyName, "Lovelace"),
            (MatchField::DateOfBirth, "1815-12-10"),
            (MatchField::NationalId, "AB123456C"),
            (MatchField::Email, "ada@example.org"),
        ];
        let plan = QueryPlan::new(&[&ring], &query, &opts()).unwrap();
        // One blocking hit (the e-mail), plus the year and last four that
        // are not blocking: the bound must still cover it.
        let one_hit = stored(
            &ring,
            &[
                (MatchField::GivenName, "Ada"),
                (MatchField::FamilyName, "Lovelace"),
                (MatchField::DateOfBirth, "1815-01-01"),
                (MatchField::NationalId, "ZZ993456C"),
                (MatchField::Email, "ada@example.org"),
            ],
        );
        let s = plan.score(one_hit.0, &one_hit.1);
        assert!(s.bits <= plan.bound_with_blocking_hits(1), "{s:?}");
        let exact = stored(&ring, &query);
        let s = plan.score(exact.0, &exact.1);
        assert!(s.bits <= plan.bound_with_blocking_hits(3) + 1e-9);
        assert!(s.bits > plan.bound_with_blocking_hits(1));
    }

    #[test]
    fn old_key_versions_still_find_old_indexes() {
        let h = hierarchy(2);
        let v1 = MatchKeyring::derive(&h, "d", 1).unwrap();
        let v2 = MatchKeyring::derive(&h, "d", 2).unwrap();
        let old = stored(&v1, &[(MatchField::Email, "ada@example.org")]);
        let plan = QueryPlan::new(
            &[&v2, &v1],
            &[(MatchField::Email, "ADA@example.org")],
            &opts(),
        )
        .unwrap();
        assert!(plan.blocking_indexes().contains(&old.1[0].1));
        assert!(plan.score(old.0, &old.1).score > 0.5);
        let only_new =
            QueryPlan::new(&[&v2], &[(MatchField::Email, "ada@example.org")], &opts()).unwrap();
        assert!(only_new.score(old.0, &old.1).score < 0.5);
    }
}
