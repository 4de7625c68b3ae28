//! Events and what they trigger: validated events, their field values
//! (personal data, never printed), and the commands a person's rules make
//! of an event.
//!
//! A triggered command must never carry an event field its rule does not
//! name. Nothing here reads the store or decides who may publish.

use std::fmt;

use zeroize::Zeroizing;

use super::{MAX_EVENT_FIELDS, MAX_EVENT_VALUE_LEN, Rule, valid_code, valid_event_id};

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
    /// A value (no checks; see [`Event::new`]).
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

impl Event {
    /// Validates an event's type, id and `(name, value)` fields; the
    /// fields are sorted by name.
    pub fn new(
        event_type: String,
        event_id: String,
        fields: Vec<(String, String)>,
    ) -> Result<Self, EventError> {
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
        for (name, value) in fields {
            if !valid_code(&name) {
                return Err(EventError::FieldName);
            }
            if value.is_empty()
                || value.len() > MAX_EVENT_VALUE_LEN
                || value.chars().any(char::is_control)
            {
                return Err(EventError::FieldValue);
            }
            out.push((name, EventValue::new(value)));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        if out.windows(2).any(|w| matches!(w, [a, b] if a.0 == b.0)) {
            return Err(EventError::DuplicateField);
        }
        Ok(Self {
            event_type,
            event_id,
            fields: out,
        })
    }
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

#[cfg(test)]
mod tests {
    use super::super::test_support::{A, B, C, rule};
    use super::*;
    use crate::wire::validate_event;
    use idvault_proto::v1 as pb;

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
}
