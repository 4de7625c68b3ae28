//! A person's rules and actions, the pure part: rule validation and ids,
//! event validation, which rules an event triggers and which fields each
//! command carries, the sealing of command payloads in the outbox, and
//! rule suggestions from engagement histories (docs/events.md).
//!
//! Nothing here touches the store, the network or protobuf types (the
//! crate's `wire` module converts `idvault.v1.Rule` and `EventField` to
//! the types here). It must never let a command carry an event field its
//! rule does not name, and never suggest a rule set fewer than the minimum
//! number of other people adopted.
//!
//! Submodules, each re-exported here:
//! - `rule`: a validated [`Rule`], its id, and rule sets.
//! - `event`: validated events and the commands they trigger.
//! - `outbox`: commands waiting for their recipient and accepted events.
//! - `payload`: the sealed command payloads of the outbox.
//! - `suggest`: rule suggestions from similar people's adoptions.

mod event;
mod outbox;
mod payload;
mod rule;
mod suggest;
#[cfg(test)]
mod test_support;

pub use event::{Event, EventError, EventValue, Triggered, triggered};
pub use outbox::{AcceptedEvent, OutboxCommand, PendingCommand};
pub use payload::{CommandHeader, open_payload, seal_payload};
pub use rule::{Rule, validate_rule_set};
pub use suggest::{History, Peer, Suggestion, suggest};

use crate::consent::{MAX_AUDIENCE_LEN, valid_purpose};

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

/// Appends `s` with its length as a 4-byte big-endian prefix (the
/// encoding of rule ids, payload AADs and payloads).
fn lp(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(s);
}

#[cfg(test)]
mod tests {
    use super::test_support::A;
    use super::*;

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
    }
}
