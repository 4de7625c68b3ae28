//! A person's rules and actions, the pure part: rule validation and ids,
//! event validation, which rules an event triggers and which fields each
//! command carries, the sealing of command payloads in the outbox, and
//! rule suggestions from engagement histories (docs/events.md).
//!
//! Nothing here touches the store or the network. It must never let a
//! command carry an event field its rule does not name, and never suggest
//! a rule set fewer than the minimum number of other people adopted.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use idvault_proto::v1 as pb;
use zeroize::Zeroizing;

use super::consent::{MAX_AUDIENCE_LEN, Refusal, valid_purpose};
use super::crypto::{self, CryptoError, NONCE_LEN, Rng};
use super::secret::DataKey;
use super::subject::SubjectId;

/// Most rules a person may hold.
pub const MAX_RULES: usize = 64;
/// Most fields an event (or a rule) may name.
pub const MAX_EVENT_FIELDS: usize = 32;
/// Longest event field value, bytes.
pub const MAX_EVENT_VALUE_LEN: usize = 1024;
/// Longest publisher event id.
pub const MAX_EVENT_ID_LEN: usize = 128;
/// Fewest other people who must have adopted a rule set before it is
/// suggested: below this a suggestion could reveal one person's rules.
pub const DEFAULT_MIN_SUPPORT: usize = 3;
/// Most suggestions returned.
pub const MAX_SUGGESTIONS: usize = 10;
/// Prefix of rule ids.
pub const RULE_ID_PREFIX: &str = "rul_";
/// Prefix of command ids.
pub const COMMAND_ID_PREFIX: &str = "cmd_";

const RULE_ID_LABEL: &[u8] = b"idvault/v1/rule";
const PAYLOAD_KEY_LABEL: &[u8] = b"idvault/v1/command-payload";
const PAYLOAD_AAD_LABEL: &[u8] = b"idvault/v1/command\0";

/// Whether `s` is an event type, command name or event field name: 1-64
/// of `a-z 0-9 . _ -` (the alphabet of consent purposes).
pub fn valid_code(s: &str) -> bool {
    valid_purpose(s)
}

/// Whether `s` is a publisher event id: 1-128 printable ASCII characters.
pub fn valid_event_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_EVENT_ID_LEN && s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// Whether `s` could name an entity: a SPIFFE id, `spiffe://` then a trust
/// domain and path of letters, digits and `. - _ /` only (no spaces,
/// control characters or `=`: entity ids end up in audit details).
/// Whether it is a registered partner is the registry's question.
pub fn valid_entity(s: &str) -> bool {
    s.len() <= MAX_AUDIENCE_LEN
        && s.strip_prefix("spiffe://").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
        })
}

/// Whether `s` has the shape of a command id: `cmd_` and 32 lower-case
/// hex digits.
pub fn valid_command_id(s: &str) -> bool {
    s.len() == COMMAND_ID_PREFIX.len() + 32
        && s.strip_prefix(COMMAND_ID_PREFIX).is_some_and(|h| {
            h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

fn lp(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(s);
}

/// A validated rule: "when `source` reports `event_type` about me, send
/// `command` with `fields` to `target`".
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule {
    /// Publishing entity (SPIFFE id).
    pub source: String,
    /// Event type.
    pub event_type: String,
    /// Receiving entity (SPIFFE id).
    pub target: String,
    /// Command name.
    pub command: String,
    /// Event field names the command carries, sorted, each once.
    pub fields: Vec<String>,
}

impl Rule {
    /// Validates a rule from the wire (its `rule_id` is ignored: the vault
    /// derives it). Field names must be unique; they are sorted.
    pub fn from_pb(r: pb::Rule) -> Result<Self, Refusal> {
        if !valid_entity(&r.source)
            || !valid_entity(&r.target)
            || !valid_code(&r.event_type)
            || !valid_code(&r.command)
            || r.fields.len() > MAX_EVENT_FIELDS
            || !r.fields.iter().all(|f| valid_code(f))
        {
            return Err(Refusal::Malformed);
        }
        let mut fields = r.fields;
        fields.sort();
        let n = fields.len();
        fields.dedup();
        if fields.len() != n {
            return Err(Refusal::Malformed);
        }
        Ok(Self {
            source: r.source,
            event_type: r.event_type,
            target: r.target,
            command: r.command,
            fields,
        })
    }

    /// `rul_` + hex of the first 16 bytes of SHA-256 over
    /// `"idvault/v1/rule"` and the length-prefixed source, event type,
    /// target, command, field count and fields: the same rule has the same
    /// id for everyone.
    pub fn id(&self) -> String {
        let mut b = Vec::with_capacity(128);
        for s in [&self.source, &self.event_type, &self.target, &self.command] {
            lp(&mut b, s.as_bytes());
        }
        b.extend_from_slice(
            &u32::try_from(self.fields.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        for f in &self.fields {
            lp(&mut b, f.as_bytes());
        }
        let h = crypto::sha256(&[RULE_ID_LABEL, &b]);
        format!(
            "{RULE_ID_PREFIX}{}",
            hex::encode(h.get(..16).unwrap_or_default())
        )
    }

    /// The wire form, with its id.
    pub fn to_pb(&self) -> pb::Rule {
        pb::Rule {
            rule_id: self.id(),
            source: self.source.clone(),
            event_type: self.event_type.clone(),
            target: self.target.clone(),
            command: self.command.clone(),
            fields: self.fields.clone(),
        }
    }

    /// The entities the rule names.
    pub fn entities(&self) -> [&str; 2] {
        [&self.source, &self.target]
    }
}

/// Validates a rule set: at most [`MAX_RULES`], no rule twice. Sorted by
/// id.
pub fn rule_set(rules: Vec<pb::Rule>) -> Result<Vec<Rule>, Refusal> {
    if rules.len() > MAX_RULES {
        return Err(Refusal::Malformed);
    }
    let mut out = rules
        .into_iter()
        .map(Rule::from_pb)
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_by_cached_key(Rule::id);
    let n = out.len();
    out.dedup_by(|a, b| a == b);
    if out.len() != n {
        return Err(Refusal::Malformed);
    }
    Ok(out)
}

/// Why a published event is refused. Messages quote nothing the caller
/// sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// The event type is not 1-64 of `a-z 0-9 . _ -`.
    #[error("event_type must be 1-64 characters of a-z 0-9 . _ -")]
    EventType,
    /// The event id is missing or too long.
    #[error("event_id must be 1-128 printable ASCII characters")]
    EventId,
    /// Too many fields.
    #[error("an event carries at most 32 fields")]
    TooManyFields,
    /// A field name is not 1-64 of `a-z 0-9 . _ -`.
    #[error("event field names must be 1-64 characters of a-z 0-9 . _ -")]
    FieldName,
    /// A field name appears twice.
    #[error("an event field name appears more than once")]
    DuplicateField,
    /// A field value is empty, too long, or holds control characters.
    #[error("event field values are 1-1024 bytes without control characters")]
    FieldValue,
}

/// An event field value: personal data, wiped on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct EventValue(Zeroizing<String>);

impl fmt::Debug for EventValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EventValue(redacted)")
    }
}

impl EventValue {
    /// A value (no checks; see [`validate_event`]).
    pub fn new(v: String) -> Self {
        Self(Zeroizing::new(v))
    }

    /// The value, to put on the wire to the rule's target.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A validated event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Event type.
    pub event_type: String,
    /// The publisher's event id.
    pub event_id: String,
    /// Fields by name, sorted.
    pub fields: Vec<(String, EventValue)>,
}

/// Validates an event's type, id and fields.
pub fn validate_event(
    event_type: String,
    event_id: String,
    fields: Vec<pb::EventField>,
) -> Result<Event, EventError> {
    if !valid_code(&event_type) {
        return Err(EventError::EventType);
    }
    if !valid_event_id(&event_id) {
        return Err(EventError::EventId);
    }
    if fields.len() > MAX_EVENT_FIELDS {
        return Err(EventError::TooManyFields);
    }
    let mut out = Vec::with_capacity(fields.len());
    for f in fields {
        if !valid_code(&f.name) {
            return Err(EventError::FieldName);
        }
        if f.value.is_empty()
            || f.value.len() > MAX_EVENT_VALUE_LEN
            || f.value.chars().any(char::is_control)
        {
            return Err(EventError::FieldValue);
        }
        out.push((f.name, EventValue::new(f.value)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    if out.windows(2).any(|w| matches!(w, [a, b] if a.0 == b.0)) {
        return Err(EventError::DuplicateField);
    }
    Ok(Event {
        event_type,
        event_id,
        fields: out,
    })
}

/// A command an event triggers: the rule, and the event fields it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Triggered<'r> {
    /// The rule.
    pub rule: &'r Rule,
    /// The named fields the event carried, in the rule's order.
    pub fields: Vec<(String, EventValue)>,
}

/// The rules of a person that `source` reporting `event` triggers, in rule
/// id order, each with only the fields it names. A rule naming a field the
/// event lacks still fires, without that field.
pub fn triggered<'r>(rules: &'r [Rule], source: &str, event: &Event) -> Vec<Triggered<'r>> {
    let mut hits: Vec<Triggered<'r>> = rules
        .iter()
        .filter(|r| r.source == source && r.event_type == event.event_type)
        .map(|rule| Triggered {
            rule,
            fields: rule
                .fields
                .iter()
                .filter_map(|name| {
                    event
                        .fields
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(n, v)| (n.clone(), v.clone()))
                })
                .collect(),
        })
        .collect();
    hits.sort_by_cached_key(|t| t.rule.id());
    hits
}

fn payload_key(dek: &DataKey) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let mut k = Zeroizing::new([0u8; 32]);
    crypto::hkdf_sha256(&[], dek.expose(), PAYLOAD_KEY_LABEL, k.as_mut())?;
    Ok(k)
}

/// What a sealed command payload is bound to: changing any of it in the
/// outbox makes the payload fail to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandHeader<'a> {
    /// `cmd_…` id.
    pub command_id: &'a str,
    /// Recipient partner name.
    pub recipient: &'a str,
    /// The person.
    pub subject: &'a SubjectId,
    /// The recipient's pairwise token for the person.
    pub pairwise_token: &'a str,
    /// Publisher SPIFFE id.
    pub source: &'a str,
    /// Event type.
    pub event_type: &'a str,
    /// Command name.
    pub command: &'a str,
    /// Rule id.
    pub rule_id: &'a str,
}

fn payload_aad(h: &CommandHeader<'_>) -> Vec<u8> {
    let mut aad = PAYLOAD_AAD_LABEL.to_vec();
    for part in [
        h.command_id,
        h.recipient,
        h.pairwise_token,
        h.source,
        h.event_type,
        h.command,
        h.rule_id,
    ] {
        lp(&mut aad, part.as_bytes());
    }
    aad.extend_from_slice(h.subject.as_bytes());
    aad
}

/// Seals a command's fields for the outbox under a key derived from the
/// subject's data key (so shredding the subject shreds its pending
/// commands), bound to the whole [`CommandHeader`]. Returns
/// `nonce || ciphertext || tag`.
pub fn seal_payload(
    dek: &DataKey,
    header: &CommandHeader<'_>,
    fields: &[(String, EventValue)],
    rng: &dyn Rng,
) -> Result<Vec<u8>, CryptoError> {
    let mut plain = Zeroizing::new(Vec::new());
    plain.extend_from_slice(
        &u32::try_from(fields.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for (n, v) in fields {
        lp(&mut plain, n.as_bytes());
        lp(&mut plain, v.expose().as_bytes());
    }
    let key = payload_key(dek)?;
    let nonce = crypto::random_nonce(rng)?;
    let ct = crypto::aead_seal(&key, &nonce, &payload_aad(header), &plain)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    Ok(out)
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, rest) = b.split_at_checked(n)?;
    *b = rest;
    Some(head)
}

fn take_u32(b: &mut &[u8]) -> Option<usize> {
    let v: [u8; 4] = take(b, 4)?.try_into().ok()?;
    usize::try_from(u32::from_be_bytes(v)).ok()
}

fn take_str(b: &mut &[u8]) -> Option<String> {
    let n = take_u32(b)?;
    String::from_utf8(take(b, n)?.to_vec()).ok()
}

/// Opens a payload sealed by [`seal_payload`]. Any change to the bytes or
/// to the header fails.
pub fn open_payload(
    dek: &DataKey,
    header: &CommandHeader<'_>,
    sealed: &[u8],
) -> Result<Vec<(String, EventValue)>, CryptoError> {
    let (nonce, ct) = sealed
        .split_at_checked(NONCE_LEN)
        .ok_or(CryptoError::Authentication)?;
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Authentication)?;
    let key = payload_key(dek)?;
    let plain = crypto::aead_open(&key, &nonce, &payload_aad(header), ct)?;
    let mut b: &[u8] = &plain;
    let n = take_u32(&mut b).ok_or(CryptoError::Authentication)?;
    let mut out = Vec::with_capacity(n.min(MAX_EVENT_FIELDS));
    for _ in 0..n {
        let name = take_str(&mut b).ok_or(CryptoError::Authentication)?;
        let value = take_str(&mut b).ok_or(CryptoError::Authentication)?;
        out.push((name, EventValue::new(value)));
    }
    Ok(out)
}

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
    use super::*;
    use crate::crypto::SystemRng;
    use proptest::prelude::*;

    const A: &str = "spiffe://idvault.dev/partner/bank";
    const B: &str = "spiffe://idvault.dev/partner/telco";
    const C: &str = "spiffe://idvault.dev/partner/insurer";

    fn rule(source: &str, ev: &str, target: &str, cmd: &str, fields: &[&str]) -> Rule {
        Rule::from_pb(pb::Rule {
            rule_id: String::new(),
            source: source.into(),
            event_type: ev.into(),
            target: target.into(),
            command: cmd.into(),
            fields: fields.iter().map(|f| (*f).into()).collect(),
        })
        .unwrap()
    }

    fn event(ev: &str, fields: &[(&str, &str)]) -> Event {
        validate_event(
            ev.into(),
            "e-1".into(),
            fields
                .iter()
                .map(|(n, v)| pb::EventField {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
        )
        .unwrap()
    }

    /// The rule id is published in docs/events.md: if this changes, so
    /// must the document.
    #[test]
    fn rule_id_known_answer_and_field_order() {
        let r = rule(
            A,
            "address.changed",
            B,
            "update_address",
            &["postcode", "address"],
        );
        assert_eq!(r.fields, ["address", "postcode"]);
        assert_eq!(r.id(), "rul_d284457d1acfbb81812cb3cf28c3b56f");
        let same = rule(
            A,
            "address.changed",
            B,
            "update_address",
            &["address", "postcode"],
        );
        assert_eq!(same.id(), r.id());
        let other = rule(A, "address.changed", B, "update_address", &["address"]);
        assert_ne!(other.id(), r.id());
        // Length prefixes: moving a boundary changes the id.
        let shifted = rule(
            A,
            "address.change",
            B,
            "dupdate_address",
            &["address", "postcode"],
        );
        assert_ne!(shifted.id(), r.id());
    }

    #[test]
    fn rules_are_validated() {
        let good = pb::Rule {
            rule_id: "ignored".into(),
            source: A.into(),
            event_type: "x".into(),
            target: B.into(),
            command: "y".into(),
            fields: vec!["f".into()],
        };
        assert!(Rule::from_pb(good.clone()).is_ok());
        for bad in [
            pb::Rule {
                source: "partner-a".into(),
                ..good.clone()
            },
            pb::Rule {
                event_type: "Address Changed".into(),
                ..good.clone()
            },
            pb::Rule {
                command: String::new(),
                ..good.clone()
            },
            pb::Rule {
                fields: vec!["f".into(), "f".into()],
                ..good.clone()
            },
            pb::Rule {
                fields: (0..33).map(|i| format!("f{i}")).collect(),
                ..good.clone()
            },
        ] {
            assert_eq!(Rule::from_pb(bad), Err(Refusal::Malformed));
        }
        assert_eq!(
            rule_set(vec![good.clone(), good.clone()]),
            Err(Refusal::Malformed)
        );
        assert_eq!(rule_set(vec![good; MAX_RULES + 1]), Err(Refusal::Malformed));
    }

    #[test]
    fn events_are_validated() {
        let f = |n: &str, v: &str| pb::EventField {
            name: n.into(),
            value: v.into(),
        };
        let ok =
            |t: &str, id: &str, fs: Vec<pb::EventField>| validate_event(t.into(), id.into(), fs);
        assert!(ok("a.b", "id-1", vec![f("x", "1")]).is_ok());
        assert_eq!(ok("A", "id", vec![]), Err(EventError::EventType));
        assert_eq!(ok("a", "", vec![]), Err(EventError::EventId));
        assert_eq!(ok("a", "has space", vec![]), Err(EventError::EventId));
        assert_eq!(ok("a", &"x".repeat(129), vec![]), Err(EventError::EventId));
        assert_eq!(ok("a", "i", vec![f("X", "1")]), Err(EventError::FieldName));
        assert_eq!(
            ok("a", "i", vec![f("x", "1"), f("x", "2")]),
            Err(EventError::DuplicateField)
        );
        for bad in [
            "v".repeat(1025),
            String::new(),
            "a\nb".into(),
            "\u{0}".into(),
        ] {
            assert_eq!(
                ok("a", "i", vec![f("x", &bad)]),
                Err(EventError::FieldValue)
            );
        }
        assert_eq!(
            ok(
                "a",
                "i",
                (0..33).map(|i| f(&format!("f{i}"), "v")).collect()
            ),
            Err(EventError::TooManyFields)
        );
    }

    #[test]
    fn commands_carry_only_named_fields() {
        let rules = vec![
            rule(
                A,
                "address.changed",
                B,
                "update_address",
                &["address", "postcode"],
            ),
            rule(A, "address.changed", C, "notify", &[]),
            rule(A, "card.lost", B, "block", &["card"]),
            rule(C, "address.changed", B, "update_address", &["address"]),
        ];
        let ev = event(
            "address.changed",
            &[
                ("address", "1 High St"),
                ("national_id", "QQ123456C"),
                ("postcode", "AB1 2CD"),
            ],
        );
        let hits = triggered(&rules, A, &ev);
        assert_eq!(hits.len(), 2);
        for h in &hits {
            assert_eq!(h.rule.source, A);
            assert!(h.fields.iter().all(|(n, _)| h.rule.fields.contains(n)));
            assert!(!h.fields.iter().any(|(n, _)| n == "national_id"));
        }
        let to_b = hits.iter().find(|h| h.rule.target == B).unwrap();
        let names: Vec<&str> = to_b.fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["address", "postcode"]);
        assert_eq!(to_b.fields[0].1.expose(), "1 High St");
        // Unknown publisher or event type: nothing.
        assert!(triggered(&rules, B, &ev).is_empty());
        assert!(triggered(&rules, A, &event("moved", &[])).is_empty());
    }

    fn dek(b: u8) -> DataKey {
        DataKey::from_bytes([b; 32], 1)
    }

    fn header<'a>(s: &'a SubjectId, id: &'a str) -> CommandHeader<'a> {
        CommandHeader {
            command_id: id,
            recipient: "partner-b",
            subject: s,
            pairwise_token: "pw_abc",
            source: A,
            event_type: "address.changed",
            command: "update_address",
            rule_id: "rul_1",
        }
    }

    #[test]
    fn payload_round_trip_and_binding() {
        let s = SubjectId::from_bytes([9; 16]);
        let fields = vec![
            ("address".to_owned(), EventValue::new("1 High St".into())),
            ("postcode".to_owned(), EventValue::new("AB1 2CD".into())),
        ];
        let rng = SystemRng::default();
        let h = header(&s, "cmd_1");
        let sealed = seal_payload(&dek(1), &h, &fields, &rng).unwrap();
        assert_eq!(open_payload(&dek(1), &h, &sealed).unwrap(), fields);
        let other = SubjectId::from_bytes([8; 16]);
        // Every header part is bound: moving the payload to another
        // command, receiver, person, token, source, type, command or rule
        // fails, as does another key or a cut payload.
        let changed = [
            CommandHeader {
                command_id: "cmd_2",
                ..h
            },
            CommandHeader {
                recipient: "partner-a",
                ..h
            },
            CommandHeader {
                subject: &other,
                ..h
            },
            CommandHeader {
                pairwise_token: "pw_xyz",
                ..h
            },
            CommandHeader { source: B, ..h },
            CommandHeader {
                event_type: "card.lost",
                ..h
            },
            CommandHeader {
                command: "block",
                ..h
            },
            CommandHeader {
                rule_id: "rul_2",
                ..h
            },
        ];
        for c in &changed {
            assert_eq!(
                open_payload(&dek(1), c, &sealed),
                Err(CryptoError::Authentication),
                "{c:?}"
            );
        }
        assert_eq!(
            open_payload(&dek(2), &h, &sealed),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            open_payload(&dek(1), &h, &sealed[..10]),
            Err(CryptoError::Authentication)
        );
        // The value never shows in Debug output.
        assert!(!format!("{fields:?}").contains("High"));
    }

    proptest! {
        #[test]
        fn any_flipped_payload_bit_fails(byte in 0usize..64, bit in 0u8..8) {
            let s = SubjectId::from_bytes([3; 16]);
            let fields = vec![("x".to_owned(), EventValue::new("value".into()))];
            let rng = SystemRng::default();
            let h = header(&s, "cmd_9");
            let mut sealed = seal_payload(&dek(4), &h, &fields, &rng).unwrap();
            let i = byte % sealed.len();
            sealed[i] ^= 1 << bit;
            prop_assert!(open_payload(&dek(4), &h, &sealed).is_err());
        }
    }

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
    fn ids_and_entities_are_strict() {
        assert!(valid_entity(A));
        for bad in [
            "spiffe://",
            "partner-a",
            "spiffe://x y",
            "spiffe://x\nop=forged",
            "spiffe://a=b",
        ] {
            assert!(!valid_entity(bad), "{bad:?}");
        }
        assert!(valid_command_id("cmd_0123456789abcdef0123456789abcdef"));
        assert!(!valid_command_id("cmd_0123456789ABCDEF0123456789abcdef"));
        assert!(!valid_command_id("cmd_\0"));
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
