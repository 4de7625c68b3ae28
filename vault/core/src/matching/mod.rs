//! Blind matching (pure part): blind indexes of variants, keyed q-gram
//! Bloom filters, query plans and candidate scoring.
//!
//! A variant is stored only as its blind index
//! `trunc64(HMAC-SHA256(K[domain, field, kind, v], value))`, where the key
//! is derived per match domain (one per partner unless partners are
//! configured to share one), field and variant kind from root key `v`
//! (label `idvault/v1/match-index/<domain>/<field>/<kind>`; compound
//! blocking keys use `block` as the field). Keys separate kinds, so the
//! MAC input is the bare value. 64 bits are kept: enough that chance
//! collisions inside one key stay below one in a million for a billion
//! stored values, and a collision only adds a candidate that is then
//! scored on every field.
//!
//! Names, street and city also get a *q-gram Bloom filter*: each bigram of
//! the folded value sets [`BLOOM_HASHES`] bits chosen by
//! `HMAC-SHA256(K[domain, field, qgram.bloom.v1, v], bigram)`, in a filter of
//! [`bloom_bits`] bits. Two values' filters are compared by their Dice
//! coefficient, which counts partial agreement (two typos, a changed
//! syllable) that no exact index can see.
//!
//! A query becomes a [`QueryPlan`]: the blind index of each probe under
//! every live key version, tagged with the field and agreement level it
//! proves, and the query's own Bloom filters. Candidates are the subjects
//! holding a *blocking* probe, ranked by an upper bound of their weight;
//! each is scored from its signature ([`QueryPlan::score`]). The `query`
//! submodule validates a partner's query into a [`PlannedQuery`] and ranks
//! its candidates with the score cut-off.
//!
//! Values come in only to be turned into blind indexes: this module must
//! never store, return or print a cleartext value or a key, and it never
//! touches the store (the server looks the indexes up).

use std::collections::HashMap;

mod estimate;
mod link;
mod model;
mod query;

pub use estimate::{EstimateOptions, MAX_STRENGTHEN_BITS, ModelEstimate, estimate_model};
pub use link::assign_one_to_one;

pub use model::{
    FREQUENCY_FIELDS, Frequencies, MAX_FREQUENCY_GAIN_BITS, MAX_FREQUENCY_SHIFT_BITS,
    MIN_FREQUENCY_POPULATION, MatchModel,
};
pub use query::{
    BadSignature, CANDIDATE_LIMIT, Candidate, FIRST_CANDIDATES, Hit, MAX_QUERY_ID, MAX_RESULTS,
    MIN_SCORE, MatchQuery, PlannedQuery, plan_query,
};

use idvault_tokenizer::NormalizeOptions;
use idvault_tokenizer::matching::{self, FieldModel, FieldOutcome, Level, QueryRefusal};
use idvault_tokenizer::variants::{self, MatchField};
use ring::hmac;
use zeroize::Zeroize;

use super::keys::{KeyError, KeyHierarchy};
use super::secret::{MatchIndexMaterial, Secret};

/// HKDF label prefix of blind-matching index keys.
pub const LABEL_MATCH_INDEX: &str = "idvault/v1/match-index";
/// Bytes of HMAC output kept in a blind index.
pub const BLIND_INDEX_BYTES: usize = 8;
/// The "field" of compound blocking keys in key labels.
pub const COMPOUND_LABEL: &str = "block";
/// The kind name of q-gram Bloom filter keys.
pub const BLOOM_KIND: &str = "qgram.bloom.v1";
/// Bits set per bigram in a q-gram Bloom filter.
pub const BLOOM_HASHES: usize = 2;
/// `match_index.field` of compound key `i` ([`variants::COMPOUND_KINDS`]):
/// above every field code, one per compound kind, so that a candidate's
/// hits group by field or compound.
pub const COMPOUND_FIELD_BASE: u8 = 16;

/// The storage version of the indexes this code writes. A domain indexed
/// under an older scheme is indexed again at start (`match_domains.scheme`).
/// 1: the first variant kinds; 2: one-edit neighbourhoods, near addresses,
/// compound blocking keys, q-gram Bloom filters, kind codes in signatures;
/// 3: signature rows carry a row MAC (`rowmac::match_signature`), so rows
/// of scheme 2 are rebuilt from the packets rather than sealed as found.
pub const INDEX_SCHEME: i64 = 3;

/// Bits of the q-gram Bloom filter of `field` (0: none).
pub fn bloom_bits(field: MatchField) -> usize {
    match field {
        MatchField::GivenName | MatchField::FamilyName | MatchField::City => 128,
        MatchField::StreetAddress => 256,
        _ => 0,
    }
}

/// One blind-matching index key (before it is turned into HMAC state).
pub type MatchIndexKey = Secret<MatchIndexMaterial>;

/// The label of the key of `(domain, field, kind)`.
pub fn key_label(domain: &str, field: MatchField, kind: &str) -> String {
    format!("{LABEL_MATCH_INDEX}/{domain}/{}/{kind}", field.name())
}

/// The label of the key of compound blocking key `kind` in `domain`.
pub fn compound_key_label(domain: &str, kind: &str) -> String {
    format!("{LABEL_MATCH_INDEX}/{domain}/{COMPOUND_LABEL}/{kind}")
}

/// The HMAC states of every key of one match domain and root key version.
/// ring keeps only the pad states, not the raw key; the derived bytes are
/// wiped as soon as the state is built.
///
/// Keys sit in slots found by position (field code, then the kind's place
/// in [`variants::kinds`]), not in a map: a query plan takes about a
/// hundred of them, and hashing a key name for each cost about a quarter
/// of the HMAC it selects.
pub struct MatchKeyring {
    domain: String,
    version: u32,
    /// By field code, then kind position.
    kinds: Vec<Vec<hmac::Key>>,
    /// By position in [`variants::COMPOUND_KINDS`].
    compounds: Vec<hmac::Key>,
    /// By field code; `None` for fields without a Bloom filter.
    blooms: Vec<Option<hmac::Key>>,
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

/// One blind index of a subject: field, kind code ([`variants::kind_code`])
/// and index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    /// The field.
    pub field: MatchField,
    /// The kind's storage code within the field.
    pub kind: u8,
    /// The blind index.
    pub index: i64,
}

/// Everything stored for one subject in one domain: its signature entries,
/// its blocking rows (looked up by value) and its Bloom filters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectIndex {
    /// Every blind index of its variants.
    pub entries: Vec<Entry>,
    /// The rows looked up by value: `(match_index.field, index)` — blocking
    /// kinds under their field code, compound keys under
    /// [`COMPOUND_FIELD_BASE`] + their position.
    pub blocking: Vec<(u8, i64)>,
    /// Q-gram Bloom filters by field.
    pub filters: Vec<(MatchField, Vec<u8>)>,
}

impl SubjectIndex {
    /// Which fields it has indexes for (see [`field_mask`]).
    pub fn present(&self) -> u16 {
        field_mask(self.entries.iter().map(|e| e.field))
    }

    /// Its packed signature at key `version`.
    pub fn signature(&self, version: u32) -> Vec<u8> {
        encode_signature(version, &self.entries, &self.filters)
    }
}

impl MatchKeyring {
    /// Derives the keyring of `domain` (a validated name) at `version`.
    pub fn derive(keys: &KeyHierarchy, domain: &str, version: u32) -> Result<Self, KeyError> {
        let key = |label: String| -> Result<hmac::Key, KeyError> {
            let k: MatchIndexKey = keys.derive(&label, version)?;
            let mut bytes = *k.expose();
            let key = hmac::Key::new(hmac::HMAC_SHA256, &bytes);
            bytes.zeroize();
            Ok(key)
        };
        // Each field's keys go in the slot of its code, whatever order the
        // codes run in (a field missing a slot has no keys: no index).
        let slots = MatchField::ALL
            .iter()
            .map(|f| usize::from(f.code()) + 1)
            .max()
            .unwrap_or(0);
        let mut kinds: Vec<Vec<hmac::Key>> = Vec::new();
        kinds.resize_with(slots, Vec::new);
        let mut blooms: Vec<Option<hmac::Key>> = Vec::new();
        blooms.resize_with(slots, || None);
        for field in MatchField::ALL {
            let code = usize::from(field.code());
            if let Some(slot) = kinds.get_mut(code) {
                *slot = variants::kinds(field)
                    .iter()
                    .map(|kind| key(key_label(domain, field, kind)))
                    .collect::<Result<Vec<_>, _>>()?;
            }
            if bloom_bits(field) > 0
                && let Some(slot) = blooms.get_mut(code)
            {
                *slot = Some(key(key_label(domain, field, BLOOM_KIND))?);
            }
        }
        let compounds = variants::COMPOUND_KINDS
            .iter()
            .map(|kind| key(compound_key_label(domain, kind)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            domain: domain.to_owned(),
            version,
            kinds,
            compounds,
            blooms,
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

    fn mac(key: &hmac::Key, value: &str) -> Option<i64> {
        let tag = hmac::sign(key, value.as_bytes());
        let head: [u8; BLIND_INDEX_BYTES] =
            tag.as_ref().get(..BLIND_INDEX_BYTES)?.try_into().ok()?;
        Some(i64::from_be_bytes(head))
    }

    /// The blind index of `value` as variant `kind` of `field`.
    pub fn index(&self, field: MatchField, kind: &str, value: &str) -> Option<i64> {
        let pos = variants::kinds(field).iter().position(|k| *k == kind)?;
        let key = self.kinds.get(usize::from(field.code()))?.get(pos)?;
        Self::mac(key, value)
    }

    /// The blind index of compound blocking key `kind` of `value`.
    pub fn compound_index(&self, kind: &str, value: &str) -> Option<i64> {
        let pos = variants::COMPOUND_KINDS.iter().position(|k| *k == kind)?;
        Self::mac(self.compounds.get(pos)?, value)
    }

    /// The keyed Bloom filter of `field`'s bigrams of `value` (`None` for
    /// fields without one, or a value without letters).
    pub fn bloom(&self, field: MatchField, value: &str) -> Option<Vec<u8>> {
        if bloom_bits(field) == 0 {
            return None;
        }
        let mut grams = variants::qgrams(field, value);
        let filter = self.bloom_of(field, &grams);
        grams.zeroize();
        filter
    }

    /// The keyed Bloom filter of `field` over its bigrams `grams`.
    fn bloom_of(&self, field: MatchField, grams: &[String]) -> Option<Vec<u8>> {
        let bits = bloom_bits(field);
        let key = self.blooms.get(usize::from(field.code()))?.as_ref()?;
        if bits == 0 || grams.is_empty() {
            return None;
        }
        let mut filter = vec![0u8; bits / 8];
        for g in grams {
            let tag = hmac::sign(key, g.as_bytes());
            for pair in tag.as_ref().chunks_exact(2).take(BLOOM_HASHES) {
                let pos = usize::from(u16::from_be_bytes([
                    pair.first().copied().unwrap_or(0),
                    pair.get(1).copied().unwrap_or(0),
                ])) % bits;
                if let Some(byte) = filter.get_mut(pos / 8) {
                    *byte |= 1 << (pos % 8);
                }
            }
        }
        Some(filter)
    }

    /// Everything stored for a subject whose matchable fields are `record`
    /// (each field at most once). To index one record in several domains,
    /// prepare it once ([`PreparedRecord`]) and use [`Self::index_prepared`].
    pub fn subject_index(
        &self,
        record: &[(MatchField, &str)],
        opts: &NormalizeOptions,
    ) -> SubjectIndex {
        self.index_prepared(&PreparedRecord::new(record, opts))
    }

    /// [`Self::subject_index`] of a prepared record: only the keyed part
    /// (the HMACs) is computed here.
    pub fn index_prepared(&self, record: &PreparedRecord) -> SubjectIndex {
        let mut out = SubjectIndex::default();
        for (field, forms, grams) in &record.fields {
            for v in forms {
                let (Some(index), Some(kind)) = (
                    self.index(*field, v.kind, &v.value),
                    variants::kind_code(*field, v.kind),
                ) else {
                    continue;
                };
                out.entries.push(Entry {
                    field: *field,
                    kind,
                    index,
                });
                if matching::is_blocking_kind(*field, v.kind) {
                    out.blocking.push((field.code(), index));
                }
            }
            if let Some(f) = self.bloom_of(*field, grams) {
                out.filters.push((*field, f));
            }
        }
        for v in &record.compounds {
            if let (Some(index), Some(pos)) = (
                self.compound_index(v.kind, &v.value),
                variants::COMPOUND_KINDS.iter().position(|k| *k == v.kind),
            ) {
                let code = COMPOUND_FIELD_BASE + u8::try_from(pos).unwrap_or(0);
                out.blocking.push((code, index));
            }
        }
        out.entries.sort_unstable();
        out.entries.dedup();
        out.blocking.sort_unstable();
        out.blocking.dedup();
        out.filters.sort_by_key(|(f, _)| *f);
        out.filters.dedup_by_key(|(f, _)| *f);
        out
    }
}

/// The part of a subject's indexes that no key enters: each field's
/// variants and bigrams, and the compound values. A record indexed in
/// several match domains (every create, one per partner domain) is
/// prepared once and keyed once per domain; normalising, phonetic codes
/// and edit neighbourhoods cost about as much as the HMACs. Holds
/// normalised personal values: wiped on drop, never printed.
pub struct PreparedRecord {
    /// `(field, variants, bigrams)`, in the record's order.
    fields: Vec<(MatchField, Vec<variants::Variant>, Vec<String>)>,
    compounds: Vec<variants::Variant>,
}

impl PreparedRecord {
    /// Prepares `record` (each field at most once).
    pub fn new(record: &[(MatchField, &str)], opts: &NormalizeOptions) -> Self {
        Self {
            fields: record
                .iter()
                .map(|(field, value)| {
                    (
                        *field,
                        variants::variants(*field, value, opts),
                        variants::qgrams(*field, value),
                    )
                })
                .collect(),
            compounds: variants::compound_variants(record, false),
        }
    }
}

impl Drop for PreparedRecord {
    fn drop(&mut self) {
        for (_, forms, grams) in &mut self.fields {
            forms.iter_mut().for_each(|v| v.value.zeroize());
            grams.zeroize();
        }
        self.compounds.iter_mut().for_each(|v| v.value.zeroize());
    }
}

impl std::fmt::Debug for PreparedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PreparedRecord({} fields, redacted)", self.fields.len())
    }
}

/// First byte of a version-2 signature (a version-1 signature starts with
/// a field code, at most 8).
const SIGNATURE_V2: u8 = 0xF2;
/// Bytes per signature entry: field code, kind code, big-endian index.
const SIGNATURE_ENTRY: usize = 10;
/// Most entries or filters a signature may hold (bounds what a corrupt
/// row can make a reader allocate).
const MAX_SIGNATURE_ENTRIES: usize = 4096;

/// A subject's decoded signature in one domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signature {
    /// The root key version its indexes and filters were made under.
    pub version: u32,
    /// Every blind index of its variants.
    pub entries: Vec<Entry>,
    /// Its q-gram Bloom filters.
    pub filters: Vec<(MatchField, Vec<u8>)>,
}

/// A subject's *signature* in one domain: `0xF2 ‖ key version (4) ‖ entry
/// count (2) ‖ (field code ‖ kind code ‖ index (8, BE))* ‖ filter count (1)
/// ‖ (field code ‖ length (1) ‖ filter)*`. Scoring a candidate reads this
/// one value instead of one row per variant.
pub fn encode_signature(
    version: u32,
    entries: &[Entry],
    filters: &[(MatchField, Vec<u8>)],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + entries.len() * SIGNATURE_ENTRY + filters.len() * 34);
    out.push(SIGNATURE_V2);
    out.extend_from_slice(&version.to_be_bytes());
    let n = u16::try_from(entries.len().min(MAX_SIGNATURE_ENTRIES)).unwrap_or(0);
    out.extend_from_slice(&n.to_be_bytes());
    for e in entries.iter().take(usize::from(n)) {
        out.push(e.field.code());
        out.push(e.kind);
        out.extend_from_slice(&e.index.to_be_bytes());
    }
    let fs: Vec<&(MatchField, Vec<u8>)> = filters.iter().filter(|(_, f)| f.len() <= 255).collect();
    out.push(u8::try_from(fs.len().min(255)).unwrap_or(0));
    for (field, f) in fs.into_iter().take(255) {
        out.push(field.code());
        out.push(u8::try_from(f.len()).unwrap_or(0));
        out.extend_from_slice(f);
    }
    out
}

/// Unpacks [`encode_signature`] output; `None` if it is malformed (wrong
/// version byte, truncated, trailing bytes, an unknown field or kind).
pub fn decode_signature(bytes: &[u8]) -> Option<Signature> {
    let (&tag, rest) = bytes.split_first()?;
    if tag != SIGNATURE_V2 {
        return None;
    }
    let (version, rest) = rest.split_at_checked(4)?;
    let version = u32::from_be_bytes(version.try_into().ok()?);
    let (n, mut rest) = rest.split_at_checked(2)?;
    let n = usize::from(u16::from_be_bytes(n.try_into().ok()?));
    if n > MAX_SIGNATURE_ENTRIES {
        return None;
    }
    let (body, tail) = rest.split_at_checked(n.checked_mul(SIGNATURE_ENTRY)?)?;
    let mut entries = Vec::with_capacity(n);
    for e in body.chunks_exact(SIGNATURE_ENTRY) {
        let (&field, e) = e.split_first()?;
        let (&kind, index) = e.split_first()?;
        let field = MatchField::from_code(field)?;
        variants::kind_of_code(field, kind)?;
        entries.push(Entry {
            field,
            kind,
            index: i64::from_be_bytes(index.try_into().ok()?),
        });
    }
    rest = tail;
    let (&nf, mut rest) = rest.split_first()?;
    let mut filters = Vec::with_capacity(usize::from(nf));
    for _ in 0..nf {
        let (&field, r) = rest.split_first()?;
        let (&len, r) = r.split_first()?;
        let (f, r) = r.split_at_checked(usize::from(len))?;
        let field = MatchField::from_code(field)?;
        if f.len() * 8 != bloom_bits(field) {
            return None;
        }
        filters.push((field, f.to_vec()));
        rest = r;
    }
    rest.is_empty().then_some(Signature {
        version,
        entries,
        filters,
    })
}

/// Dice coefficient of two equally long bit sets: `2|A∩B| / (|A|+|B|)`.
pub fn dice(a: &[u8], b: &[u8]) -> f64 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut both, mut total) = (0u32, 0u32);
    for (x, y) in a.iter().zip(b) {
        both += (x & y).count_ones();
        total += x.count_ones() + y.count_ones();
    }
    if total == 0 {
        0.0
    } else {
        f64::from(2 * both) / f64::from(total)
    }
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
    /// The query field it is evidence about.
    pub field: MatchField,
    /// The stored field whose entries it is compared with.
    pub stored: MatchField,
    /// Level proved by a hit.
    pub level: Level,
    /// Whether it selects candidates.
    pub block: bool,
}

/// A query ready to run: probe indexes under every live key version, its
/// Bloom filters per version, and the weights of its fields.
#[derive(Debug, Clone)]
pub struct QueryPlan {
    probes: Vec<PlannedProbe>,
    /// `(index, position in probes)`, sorted: a candidate's entries are
    /// sought here by binary search (scoring reads one per entry, up to 64
    /// candidates a query; a hash map cost more per lookup, and a vector
    /// per key to build).
    by_index: Vec<(i64, usize)>,
    fields: Vec<FieldModel>,
    /// `(version, field, filter)`.
    filters: Vec<(u32, MatchField, Vec<u8>)>,
    /// Blocking indexes with the most weight a hit on each can add above
    /// [`Self::base`].
    blocking: Vec<(i64, f64)>,
    /// Wide compound keys ([`WIDE_COMPOUNDS`]) with their ranking gain:
    /// looked up only when the blocking ones do not settle the query.
    wide: Vec<(i64, f64)>,
    /// The most weight a candidate can score without any blocking hit.
    base: f64,
    /// The most the one-typo keys among `wide` can add above `base`.
    second_gain: f64,
}

/// Compound kinds shared by many people at once (a common name pair, a
/// family name and a birth year): a lookup on them reads up to a cap of
/// subjects each, and only when the other blocking keys found no answer
/// that a candidate holding none of them could beat.
pub const WIDE_COMPOUNDS: [&str; 3] = [
    "block.names.v1",
    "block.family_year.v1",
    "block.given_mmdd.v1",
];

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

/// The levels a compound key hit suggests, for ranking candidates: the
/// fields it joins, each at the level a shared key needs at least.
fn compound_levels(kind: &str) -> &'static [(MatchField, Level)] {
    match kind {
        "block.names.v1" => &[
            (MatchField::GivenName, Level::Similar),
            (MatchField::FamilyName, Level::Similar),
        ],
        "block.family_year.v1" => &[
            (MatchField::FamilyName, Level::Similar),
            (MatchField::DateOfBirth, Level::Year),
        ],
        "block.given_mmdd.v1" => &[
            (MatchField::GivenName, Level::Similar),
            (MatchField::DateOfBirth, Level::Similar),
        ],
        "block.postcode_house.v1" => &[
            (MatchField::Postcode, Level::Exact),
            (MatchField::StreetAddress, Level::Similar),
        ],
        _ => &[],
    }
}

/// The levels a candidate's hits prove, per field: a bit per level (its
/// [`Level::code`]) for each field code.
#[derive(Default)]
struct Hits([u8; MatchField::ALL.len()]);

// Every level has a bit of a `u8`, every field code a slot of `Hits`
// (the codes are pinned 0…8 by the tokenizer's catalogue test; a test
// below checks both).
const _: () = assert!(Level::ALL.len() <= 8);

impl Hits {
    fn bit(level: Level) -> u8 {
        1u8.checked_shl(u32::from(level.code())).unwrap_or(0)
    }

    fn add(&mut self, field: MatchField, level: Level) {
        if let Some(set) = self.0.get_mut(usize::from(field.code())) {
            *set |= Self::bit(level);
        }
    }

    fn has(&self, field: MatchField, level: Level) -> bool {
        self.0
            .get(usize::from(field.code()))
            .is_some_and(|set| set & Self::bit(level) != 0)
    }

    fn remove(&mut self, field: MatchField, level: Level) {
        if let Some(set) = self.0.get_mut(usize::from(field.code())) {
            *set &= !Self::bit(level);
        }
    }

    /// The field's levels, each once: the first `n` of the array.
    fn levels(&self, field: MatchField) -> ([Level; Level::ALL.len()], usize) {
        let mut out = [Level::Exact; Level::ALL.len()];
        let mut n = 0;
        for l in Level::ALL {
            if self.has(field, l)
                && let Some(slot) = out.get_mut(n)
            {
                *slot = l;
                n += 1;
            }
        }
        (out, n)
    }
}

impl QueryPlan {
    /// Plans a query of `fields` with the keyrings of the partner's domain
    /// (one per live version) and the domain's weights. Refuses queries
    /// that carry too little information (see [`matching::assess`]).
    pub fn new(
        keyrings: &[impl std::ops::Deref<Target = MatchKeyring>],
        fields: &[(MatchField, &str)],
        opts: &NormalizeOptions,
        model: &MatchModel,
    ) -> Result<Self, QueryRefusal> {
        let probes: Vec<matching::Probe> = fields
            .iter()
            .flat_map(|(f, v)| matching::probes(*f, v, opts))
            .collect();
        matching::assess(&probes)?;
        let mut planned = Vec::with_capacity(probes.len() * keyrings.len());
        let mut filters = Vec::new();
        let mut compounds: Vec<(i64, &'static str)> = Vec::new();
        for ring in keyrings {
            for p in &probes {
                if let Some(index) = ring.index(p.stored, p.kind, &p.value) {
                    planned.push(PlannedProbe {
                        index,
                        field: p.field,
                        stored: p.stored,
                        level: p.level,
                        block: p.block,
                    });
                }
            }
            for (f, v) in fields {
                if let Some(b) = ring.bloom(*f, v) {
                    filters.push((ring.version(), *f, b));
                }
            }
            for swap in [false, true] {
                for v in variants::compound_variants(fields, swap) {
                    if let (Some(i), Some(kind)) = (
                        ring.compound_index(v.kind, &v.value),
                        variants::COMPOUND_KINDS.iter().find(|k| **k == v.kind),
                    ) {
                        compounds.push((i, kind));
                    }
                }
            }
        }
        let mut by_index: Vec<(i64, usize)> = planned
            .iter()
            .enumerate()
            .map(|(i, p)| (p.index, i))
            .collect();
        by_index.sort_unstable();
        let mut names: Vec<MatchField> = probes.iter().map(|p| p.field).collect();
        names.sort_unstable();
        names.dedup();
        // Per-query weights: the model's, with the exact agreement of a
        // value whose frequency is known weighted by that frequency.
        let exact_index = |f: MatchField| {
            planned
                .iter()
                .filter(|p| p.field == f && p.stored == f && p.level == Level::Exact)
                .map(|p| p.index)
                .collect::<Vec<_>>()
        };
        let field_models: Vec<FieldModel> = names
            .iter()
            .filter_map(|f| model.field_for_query(*f, &exact_index(*f)))
            .collect();
        let weight = |f: MatchField, l: Option<Level>| {
            field_models
                .iter()
                .find(|m| m.field == f)
                .map_or(0.0, |m| m.weight(l))
        };
        // What each field can reach without a blocking hit: the best level
        // its non-blocking probes or its Bloom filter can prove.
        let mut base = 0.0;
        let mut unblocked: HashMap<MatchField, f64> = HashMap::new();
        for f in &names {
            let mut best = 0.0f64;
            for p in probes.iter().filter(|p| p.field == *f && !p.block) {
                best = best.max(weight(*f, Some(p.level)));
            }
            if bloom_bits(*f) > 0 {
                best = best.max(weight(*f, Some(Level::Partial)));
            }
            unblocked.insert(*f, best);
            base += best;
        }
        let gain = |f: MatchField, l: Level| {
            (weight(f, Some(l)) - unblocked.get(&f).copied().unwrap_or(0.0)).max(0.0)
        };
        // One-typo blocking keys (national id, house number) go to the
        // second lookup with the wide compounds: a duplicate that kept an
        // exact identifier is settled by the first, cheaper one.
        let mut blocking: HashMap<i64, f64> = HashMap::new();
        let mut wide: HashMap<i64, f64> = HashMap::new();
        let mut second_gain: HashMap<MatchField, f64> = HashMap::new();
        for p in planned.iter().filter(|p| p.block) {
            let g = gain(p.field, p.level);
            let map = if p.level == Level::Similar {
                let s = second_gain.entry(p.field).or_insert(0.0);
                *s = s.max(g);
                &mut wide
            } else {
                &mut blocking
            };
            let slot = map.entry(p.index).or_insert(0.0);
            *slot = slot.max(g);
        }
        // A compound hit ranks by the full weight of the levels it
        // suggests, not their gain over the unblocked levels (names are
        // never blocking, so that gain is often 0): among the many people
        // sharing a date of birth, the one whose names also agree must come
        // first. Ranking higher only loosens the bound, never breaks it.
        for (index, kind) in compounds {
            let g: f64 = compound_levels(kind)
                .iter()
                .map(|(f, l)| weight(*f, Some(*l)).max(0.0))
                .sum();
            let map = if WIDE_COMPOUNDS.contains(&kind) {
                &mut wide
            } else {
                &mut blocking
            };
            let slot = map.entry(index).or_insert(0.0);
            *slot = slot.max(g);
        }
        let mut blocking: Vec<(i64, f64)> = blocking.into_iter().collect();
        blocking.sort_unstable_by_key(|(i, _)| *i);
        let mut wide: Vec<(i64, f64)> = wide.into_iter().collect();
        wide.sort_unstable_by_key(|(i, _)| *i);
        Ok(Self {
            probes: planned,
            by_index,
            fields: field_models,
            filters,
            blocking,
            wide,
            base,
            second_gain: second_gain.values().sum(),
        })
    }

    /// The keys of the second lookup with their ranking gain: the wide
    /// compound keys ([`WIDE_COMPOUNDS`]) and the one-typo blocking keys.
    pub fn wide(&self) -> &[(i64, f64)] {
        &self.wide
    }

    /// The most bits a candidate holding none of the first lookup's keys
    /// can score (one found by the second lookup alone): every field at
    /// its best level reachable without a blocking hit, plus what the
    /// one-typo keys can add (compound keys add nothing over that: the
    /// levels they suggest are reachable without them).
    pub fn base(&self) -> f64 {
        self.base + self.second_gain
    }

    /// Distinct blocking indexes, each with the most weight a hit on it can
    /// add to a candidate (candidates hold at least one of these; they are
    /// ranked by the sum over fields of their best hit's gain).
    pub fn blocking(&self) -> &[(i64, f64)] {
        &self.blocking
    }

    /// Distinct indexes of blocking probes.
    pub fn blocking_indexes(&self) -> Vec<i64> {
        self.blocking.iter().map(|(i, _)| *i).collect()
    }

    /// The most bits a candidate whose blocking hits add up to `gain` (the
    /// rank the store computes) could score: every field at its best level
    /// reachable without a blocking hit, plus the gain. Lets a lookup stop
    /// after the best-ranked candidates when they beat it.
    pub fn bound(&self, gain: f64) -> f64 {
        // The one-typo keys are not in the first lookup's rank, so their
        // gain is added whether the candidate holds them or not.
        self.base + self.second_gain + gain
    }

    /// Scores a candidate from the fields it has indexes for (`present`,
    /// see [`field_mask`]) and its signature.
    pub fn score(&self, present: u16, signature: &Signature) -> Scored {
        // The levels each field's hits prove, as a set of levels per field
        // code (this runs for every candidate: no allocation).
        let mut hits = Hits::default();
        for e in &signature.entries {
            let from = self.by_index.partition_point(|(i, _)| *i < e.index);
            for (_, i) in self
                .by_index
                .iter()
                .skip(from)
                .take_while(|(i, _)| *i == e.index)
            {
                if let Some(p) = self.probes.get(*i)
                    && p.stored == e.field
                {
                    hits.add(p.field, p.level);
                }
            }
        }
        for (field, theirs) in &signature.filters {
            let ours = self
                .filters
                .iter()
                .find(|(v, f, _)| *v == signature.version && f == field);
            if let Some((_, _, ours)) = ours
                && dice(ours, theirs) >= matching::PARTIAL_DICE
            {
                hits.add(*field, Level::Partial);
            }
        }
        // Exchanged names count only when both are exchanged: one name
        // found in the other's place alone is as likely a stranger whose
        // given name sounds like the query's family name.
        let (given, family) = (MatchField::GivenName, MatchField::FamilyName);
        if hits.has(given, Level::Swapped) != hits.has(family, Level::Swapped) {
            hits.remove(given, Level::Swapped);
            hits.remove(family, Level::Swapped);
        }
        let mut outcomes = Vec::new();
        for m in &self.fields {
            let has = present & field_bit(m.field) != 0;
            let (levels, n) = hits.levels(m.field);
            let best = m.best(levels.get(..n).unwrap_or_default());
            if best.is_none() && !has {
                continue;
            }
            outcomes.push(FieldOutcome {
                field: m.field,
                level: best,
                weight: m.weight(best),
            });
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

    /// A stored subject: presence mask and decoded signature.
    fn stored(ring: &MatchKeyring, fields: &[(MatchField, &str)]) -> (u16, Signature) {
        let idx = ring.subject_index(fields, &opts());
        let sig = decode_signature(&idx.signature(ring.version())).unwrap();
        (idx.present(), sig)
    }

    fn plan(rings: &[&MatchKeyring], fields: &[(MatchField, &str)]) -> QueryPlan {
        QueryPlan::new(rings, fields, &opts(), &MatchModel::prior()).unwrap()
    }

    /// A stored subject's rank for `plan`, as the store computes it: per
    /// field (or compound key) the best gain of its blocking rows, summed.
    /// The rank the store gives a subject over `keys` (blocking or wide).
    fn rank_over(keys: &[(i64, f64)], ring: &MatchKeyring, fields: &[(MatchField, &str)]) -> f64 {
        let idx = ring.subject_index(fields, &opts());
        let mut best: HashMap<u8, f64> = HashMap::new();
        for (code, index) in &idx.blocking {
            if let Some((_, g)) = keys.iter().find(|(i, _)| i == index) {
                let slot = best.entry(*code).or_insert(0.0);
                *slot = slot.max(*g);
            }
        }
        best.values().sum()
    }

    fn gain_of(plan: &QueryPlan, ring: &MatchKeyring, fields: &[(MatchField, &str)]) -> f64 {
        let idx = ring.subject_index(fields, &opts());
        let mut best: HashMap<u8, f64> = HashMap::new();
        for (code, index) in &idx.blocking {
            if let Some((_, g)) = plan.blocking().iter().find(|(i, _)| i == index) {
                let slot = best.entry(*code).or_insert(0.0);
                *slot = slot.max(*g);
            }
        }
        best.values().sum()
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
        let e = vec![
            Entry {
                field: MatchField::City,
                kind: 1,
                index: -5,
            },
            Entry {
                field: MatchField::GivenName,
                kind: 0,
                index: i64::MAX,
            },
        ];
        let f = vec![(MatchField::City, vec![0xA5; 16])];
        let bytes = encode_signature(7, &e, &f);
        let want = Signature {
            version: 7,
            entries: e.clone(),
            filters: f,
        };
        assert_eq!(decode_signature(&bytes), Some(want));
        // Every truncation, a trailing byte, a v1 signature, an unknown
        // kind code and a filter of the wrong size are refused.
        for n in 0..bytes.len() {
            assert_eq!(decode_signature(&bytes[..n]), None, "{n}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(decode_signature(&long), None);
        assert_eq!(decode_signature(&[2, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        let bad_kind = [Entry { kind: 99, ..e[0] }];
        assert_eq!(decode_signature(&encode_signature(1, &bad_kind, &[])), None);
        let bad_filter = [(MatchField::City, vec![0; 8])];
        assert_eq!(
            decode_signature(&encode_signature(1, &[], &bad_filter)),
            None
        );
        assert_eq!(
            decode_signature(&encode_signature(1, &[], &[])),
            Some(Signature {
                version: 1,
                ..Signature::default()
            })
        );
    }

    #[test]
    fn bloom_filters_are_keyed_and_dice_counts_partial_agreement() {
        let h = hierarchy(1);
        let a = MatchKeyring::derive(&h, "partner-a", 1).unwrap();
        let b = MatchKeyring::derive(&h, "partner-b", 1).unwrap();
        let f = |r: &MatchKeyring, v| r.bloom(MatchField::FamilyName, v).unwrap();
        assert_eq!(f(&a, "Lovelace").len(), 16);
        assert_eq!(dice(&f(&a, "Lovelace"), &f(&a, "LOVELACE")), 1.0);
        // Two typos apart: no one-edit neighbour is shared, but most bigrams are.
        assert!(dice(&f(&a, "Wolstenholme"), &f(&a, "Wolstenhome")) >= 0.75);
        assert!(dice(&f(&a, "Wolstenholme"), &f(&a, "Wolsetnholmes")) >= 0.6);
        assert!(dice(&f(&a, "Lovelace"), &f(&a, "Babbage")) < 0.4);
        // Another domain's key sets other bits.
        assert!(dice(&f(&a, "Lovelace"), &f(&b, "Lovelace")) < 0.6);
        assert_eq!(a.bloom(MatchField::Phone, "07700 900123"), None);
        assert_eq!(dice(&[], &[]), 0.0);
        assert_eq!(dice(&[1], &[1, 2]), 0.0);
    }

    /// One name found in the other's place is no evidence on its own: a
    /// stranger whose family name sounds like the query's given name
    /// (Jane Smith / Mary Jayne) does not gain from it.
    #[test]
    fn one_exchanged_name_alone_counts_nothing() {
        let h = hierarchy(1);
        let ring = MatchKeyring::derive(&h, "d", 1).unwrap();
        let mary = stored(
            &ring,
            &[
                (MatchField::GivenName, "Mary"),
                (MatchField::FamilyName, "Jayne"),
                (MatchField::DateOfBirth, "1990-03-17"),
                (MatchField::City, "Leeds"),
            ],
        );
        let s = plan(
            &[&ring],
            &[
                (MatchField::GivenName, "Jane"),
                (MatchField::FamilyName, "Smith"),
                (MatchField::DateOfBirth, "1990-03-17"),
                (MatchField::City, "Leeds"),
            ],
        )
        .score(mary.0, &mary.1);
        let level = |f| {
            s.outcomes
                .iter()
                .find(|o| o.field == f)
                .and_then(|o| o.level)
        };
        assert_eq!(level(MatchField::GivenName), None, "{s:?}");
        assert_eq!(level(MatchField::FamilyName), None, "{s:?}");
        assert!(s.score < 0.5, "{s:?}");
    }

    /// Scoring keeps a candidate's levels as a bit per level and a slot
    /// per field code: each level must have a bit of its own, each field
    /// a slot, or hits would be dropped without a sound.
    #[test]
    fn every_level_and_field_has_a_place_in_a_candidates_hits() {
        let mut seen = 0u8;
        for l in Level::ALL {
            let bit = Hits::bit(l);
            assert_ne!(bit, 0, "{l:?}");
            assert_eq!(seen & bit, 0, "{l:?}");
            seen |= bit;
        }
        for f in MatchField::ALL {
            for l in Level::ALL {
                let mut h = Hits::default();
                h.add(f, l);
                assert!(h.has(f, l), "{f:?} {l:?}");
                let (levels, n) = h.levels(f);
                assert_eq!(levels.get(..n), Some(&[l][..]));
            }
        }
    }

    /// Each key slot holds the key of its own label: every kind of every
    /// field, every compound kind and every Bloom filter.
    #[test]
    fn every_key_slot_holds_its_labels_key() {
        let h = hierarchy(1);
        let ring = MatchKeyring::derive(&h, "d", 1).unwrap();
        let direct = |label: String, value: &str| {
            let k: MatchIndexKey = h.derive(&label, 1).unwrap();
            let tag = hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA256, k.expose()),
                value.as_bytes(),
            );
            let head: [u8; BLIND_INDEX_BYTES] =
                tag.as_ref()[..BLIND_INDEX_BYTES].try_into().unwrap();
            i64::from_be_bytes(head)
        };
        for field in MatchField::ALL {
            for kind in variants::kinds(field) {
                assert_eq!(
                    ring.index(field, kind, "value"),
                    Some(direct(key_label("d", field, kind), "value")),
                    "{field:?} {kind}"
                );
            }
            if bloom_bits(field) > 0 {
                let grams = vec!["ab".to_owned()];
                let filter = ring.bloom_of(field, &grams).unwrap();
                let tag = direct(key_label("d", field, BLOOM_KIND), "ab").to_be_bytes();
                let bits = bloom_bits(field);
                for pair in tag.chunks_exact(2).take(BLOOM_HASHES) {
                    let pos = usize::from(u16::from_be_bytes([pair[0], pair[1]])) % bits;
                    assert_ne!(filter[pos / 8] & (1 << (pos % 8)), 0, "{field:?}");
                }
            }
        }
        for kind in variants::COMPOUND_KINDS {
            assert_eq!(
                ring.compound_index(kind, "value"),
                Some(direct(compound_key_label("d", kind), "value")),
                "{kind}"
            );
        }
        assert_eq!(
            ring.index(MatchField::GivenName, "no.such.kind", "value"),
            None
        );
        assert_eq!(ring.compound_index("no.such.kind", "value"), None);
    }

    #[test]
    fn swapped_names_typod_ids_and_near_addresses_are_levels() {
        let h = hierarchy(1);
        let ring = MatchKeyring::derive(&h, "d", 1).unwrap();
        let stored_one = stored(
            &ring,
            &[
                (MatchField::GivenName, "Jane"),
                (MatchField::FamilyName, "Wolstenholme"),
                (MatchField::DateOfBirth, "1990-03-17"),
                (MatchField::NationalId, "4917261"),
                (MatchField::StreetAddress, "12 Kurrajong Street"),
                (MatchField::Postcode, "2615"),
                (MatchField::City, "Canberra"),
            ],
        );
        let s = plan(
            &[&ring],
            &[
                (MatchField::GivenName, "Wolstenholme"),
                (MatchField::FamilyName, "Jane"),
                (MatchField::DateOfBirth, "1990-03-71"),
                (MatchField::NationalId, "4917621"),
                (MatchField::StreetAddress, "21 Kurrajong St"),
                (MatchField::Postcode, "2651"),
                (MatchField::City, "Canbera"),
            ],
        )
        .score(stored_one.0, &stored_one.1);
        let level = |f| {
            s.outcomes
                .iter()
                .find(|o| o.field == f)
                .and_then(|o| o.level)
        };
        assert_eq!(level(MatchField::GivenName), Some(Level::Swapped));
        assert_eq!(level(MatchField::FamilyName), Some(Level::Swapped));
        assert_eq!(level(MatchField::DateOfBirth), Some(Level::Similar));
        assert_eq!(level(MatchField::NationalId), Some(Level::Similar));
        assert_eq!(level(MatchField::StreetAddress), Some(Level::Similar));
        assert_eq!(level(MatchField::Postcode), Some(Level::Similar));
        assert_eq!(level(MatchField::City), Some(Level::Similar));
        assert!(s.score > 0.99, "{s:?}");
        // One name found in the other's place alone is not a swap: the
        // given name's hit on the stored family name does not count.
        let one = plan(
            &[&ring],
            &[
                (MatchField::GivenName, "Wolstenholme"),
                (MatchField::FamilyName, "Okonkwo"),
                (MatchField::DateOfBirth, "1990-03-17"),
            ],
        )
        .score(stored_one.0, &stored_one.1);
        let given = one
            .outcomes
            .iter()
            .find(|o| o.field == MatchField::GivenName)
            .map(|o| o.level);
        assert_eq!(given, Some(None), "{one:?}");
        // A street with two typos agrees only partially (Bloom filter).
        let p = plan(
            &[&ring],
            &[
                (MatchField::NationalId, "4917261"),
                (MatchField::StreetAddress, "12 Kurajong Steet"),
            ],
        )
        .score(stored_one.0, &stored_one.1);
        assert!(
            p.outcomes
                .iter()
                .any(|o| o.field == MatchField::StreetAddress && o.level == Some(Level::Partial)),
            "{p:?}"
        );
    }

    /// Everything a subject stores in a domain, pinned: its signature
    /// (every variant's index, the Bloom filters), blocking rows and
    /// presence mask, as a SHA-256 over their bytes. The digests were
    /// computed with the code from before records were prepared once for
    /// every domain ([`PreparedRecord`]), each domain indexing the record
    /// on its own; a change of them orphans stored indexes unless
    /// [`INDEX_SCHEME`] moves too. Here one prepared record serves both
    /// domains. The sparse record has an empty name, a blank city and an
    /// impossible date.
    #[test]
    fn subject_index_known_answers_one_record_prepared_for_two_domains() {
        let h = hierarchy(1);
        let a = MatchKeyring::derive(&h, "partner-a", 1).unwrap();
        let b = MatchKeyring::derive(&h, "partner-b", 1).unwrap();
        let rec = [
            (MatchField::GivenName, "Ada"),
            (MatchField::FamilyName, "Lovelace"),
            (MatchField::DateOfBirth, "1815-12-10"),
            (MatchField::NationalId, "QQ123456C"),
            (MatchField::Postcode, "W1J 7NT"),
            (MatchField::City, "London"),
            (MatchField::StreetAddress, "12 St James's Square"),
            (MatchField::Phone, "020 7946 0018"),
            (MatchField::Email, "Ada@Example.org"),
        ];
        let sparse = [
            (MatchField::GivenName, ""),
            (MatchField::FamilyName, "O'Brien-Smith"),
            (MatchField::City, "  "),
            (MatchField::DateOfBirth, "1990-02-30"),
        ];
        let pinned = |idx: &SubjectIndex| {
            let mut bytes = idx.signature(1);
            for (code, i) in &idx.blocking {
                bytes.push(*code);
                bytes.extend_from_slice(&i.to_be_bytes());
            }
            bytes.extend_from_slice(&idx.present().to_be_bytes());
            (
                hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes)),
                idx.entries.len(),
                idx.blocking.len(),
                idx.filters.len(),
            )
        };
        let prepared = PreparedRecord::new(&rec, &opts());
        assert_eq!(
            pinned(&a.index_prepared(&prepared)),
            (
                "ebcd3a3e74736fd3b9a090f451743a12553d74c5b285e59b181b402430448a07".to_owned(),
                58,
                22,
                4
            )
        );
        assert_eq!(
            pinned(&b.index_prepared(&prepared)),
            (
                "7bf962c926028ac87c17b2190e3fd73354f7cf62a0736398d0ede45adee5c56b".to_owned(),
                58,
                22,
                4
            )
        );
        assert_eq!(
            pinned(&a.subject_index(&sparse, &opts())),
            (
                "16afc6d744f3fe4714b7ad309dd09e34299a4444a39ba460c536c5faa39e09ef".to_owned(),
                22,
                0,
                1
            )
        );
        let shown = format!("{prepared:?}");
        assert!(!shown.to_lowercase().contains("lovelace"), "{shown}");
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
        let s = plan(
            &[&ring],
            &[
                (MatchField::GivenName, "Bill"),
                (MatchField::FamilyName, "Smtih"),
                (MatchField::DateOfBirth, "07/03/1990"),
                (MatchField::Phone, "+44 7700 900123"),
            ],
        )
        .score(ada.0, &ada.1);
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
        let swapped = plan(
            &[&ring],
            &[
                (MatchField::GivenName, "William"),
                (MatchField::DateOfBirth, "03/07/1990"),
            ],
        )
        .score(ada.0, &ada.1);
        assert!(
            swapped
                .outcomes
                .iter()
                .any(|o| o.field == MatchField::DateOfBirth && o.level == Some(Level::Swapped)),
            "{swapped:?}"
        );

        let stranger = plan(
            &[&ring],
            &[
                (MatchField::GivenName, "Grace"),
                (MatchField::FamilyName, "Hopper"),
                (MatchField::DateOfBirth, "1990-03-07"),
            ],
        )
        .score(ada.0, &ada.1);
        assert!(stranger.score < 0.5, "{stranger:?}");
    }

    #[test]
    fn the_bound_caps_every_candidate_at_its_rank() {
        let h = hierarchy(1);
        let ring = MatchKeyring::derive(&h, "d", 1).unwrap();
        let query = [
            (MatchField::GivenName, "Ada"),
            (MatchField::FamilyName, "Lovelace"),
            (MatchField::DateOfBirth, "1815-12-10"),
            (MatchField::NationalId, "AB123456C"),
            (MatchField::Email, "ada@example.org"),
            (MatchField::StreetAddress, "12 St James's Square"),
            (MatchField::Postcode, "SW1Y 4JH"),
            (MatchField::City, "London"),
        ];
        let p = plan(&[&ring], &query);
        let people: [&[(MatchField, &str)]; 5] = [
            &query,
            // One blocking hit (the e-mail), the year and last four not blocking.
            &[
                (MatchField::GivenName, "Ada"),
                (MatchField::FamilyName, "Lovelace"),
                (MatchField::DateOfBirth, "1815-01-01"),
                (MatchField::NationalId, "ZZ993456C"),
                (MatchField::Email, "ada@example.org"),
            ],
            // Hits through compound keys and near neighbourhoods only.
            &[
                (MatchField::GivenName, "Ada"),
                (MatchField::FamilyName, "Lovelace"),
                (MatchField::DateOfBirth, "1815-12-01"),
                (MatchField::NationalId, "AB123465C"),
                (MatchField::StreetAddress, "21 St James's Square"),
                (MatchField::Postcode, "SW1Y 4JH"),
                (MatchField::City, "Londn"),
            ],
            // Swapped names.
            &[
                (MatchField::GivenName, "Lovelace"),
                (MatchField::FamilyName, "Ada"),
                (MatchField::DateOfBirth, "1815-12-10"),
            ],
            // A stranger on the same day.
            &[
                (MatchField::GivenName, "Charles"),
                (MatchField::FamilyName, "Babbage"),
                (MatchField::DateOfBirth, "1815-12-10"),
            ],
        ];
        let mut ranks = Vec::new();
        for person in people {
            let (present, sig) = stored(&ring, person);
            let gain = gain_of(&p, &ring, person);
            let s = p.score(present, &sig);
            assert!(
                s.bits <= p.bound(gain) + 1e-9,
                "{person:?}: {} > {}",
                s.bits,
                p.bound(gain)
            );
            // Found by wide keys alone: at most the base.
            if gain == 0.0 {
                assert!(s.bits <= p.base() + 1e-9, "{person:?}");
            }
            ranks.push(gain + rank_over(p.wide(), &ring, person));
        }
        // The exact duplicate ranks above everyone, the stranger below the
        // others (counting the wide keys that find them in a second lookup).
        assert!(ranks[1..].iter().all(|g| *g < ranks[0]), "{ranks:?}");
        assert!(ranks[..4].iter().all(|g| *g > ranks[4]), "{ranks:?}");
    }

    #[test]
    fn old_key_versions_still_find_old_indexes() {
        let h = hierarchy(2);
        let v1 = MatchKeyring::derive(&h, "d", 1).unwrap();
        let v2 = MatchKeyring::derive(&h, "d", 2).unwrap();
        let old = stored(&v1, &[(MatchField::Email, "ada@example.org")]);
        let both = plan(&[&v2, &v1], &[(MatchField::Email, "ADA@example.org")]);
        assert!(both.blocking_indexes().contains(&old.1.entries[0].index));
        assert!(both.score(old.0, &old.1).score > 0.5);
        let only_new = plan(&[&v2], &[(MatchField::Email, "ada@example.org")]);
        assert!(only_new.score(old.0, &old.1).score < 0.5);
    }
}
