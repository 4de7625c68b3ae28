//! Rules: a validated [`Rule`], its content-derived id, and validated rule
//! sets.
//!
//! A `Rule` names entities, an event type, a command and field names, all
//! checked here; the rule's id is derived, never taken from a caller. This
//! module never decides whether an entity is linked or registered.

use super::{MAX_EVENT_FIELDS, MAX_RULES, RULE_ID_PREFIX, lp, valid_code, valid_entity};
use crate::consent::Refusal;
use crate::crypto;

const RULE_ID_LABEL: &[u8] = b"idvault/v1/rule";

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
    /// Validates a rule: `source` and `target` are entity ids, the event
    /// type, command and field names are codes, and there are at most
    /// [`MAX_EVENT_FIELDS`] field names, each once; they are sorted.
    pub fn new(
        source: String,
        event_type: String,
        target: String,
        command: String,
        mut fields: Vec<String>,
    ) -> Result<Self, Refusal> {
        if !valid_entity(&source)
            || !valid_entity(&target)
            || !valid_code(&event_type)
            || !valid_code(&command)
            || fields.len() > MAX_EVENT_FIELDS
            || !fields.iter().all(|f| valid_code(f))
        {
            return Err(Refusal::Malformed);
        }
        fields.sort();
        let n = fields.len();
        fields.dedup();
        if fields.len() != n {
            return Err(Refusal::Malformed);
        }
        Ok(Self {
            source,
            event_type,
            target,
            command,
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

    /// The entities the rule names.
    pub fn entities(&self) -> [&str; 2] {
        [&self.source, &self.target]
    }
}

/// Checks a set of already validated rules: at most [`MAX_RULES`], no rule
/// twice. Sorted by id.
pub fn validate_rule_set(mut rules: Vec<Rule>) -> Result<Vec<Rule>, Refusal> {
    if rules.len() > MAX_RULES {
        return Err(Refusal::Malformed);
    }
    rules.sort_by_cached_key(Rule::id);
    let n = rules.len();
    rules.dedup_by(|a, b| a == b);
    if rules.len() != n {
        return Err(Refusal::Malformed);
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{A, B, rule};
    use super::*;
    use crate::wire::rule_set;
    use idvault_proto::v1 as pb;

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
}
