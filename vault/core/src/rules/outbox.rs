//! The outbox as domain values: commands waiting for their recipient and
//! the events accepted so far. The store maps its rows to and from these;
//! this module only holds them and names the header a payload is sealed
//! under.

use super::CommandHeader;
use crate::subject::SubjectId;

/// A command in the outbox: its header (bound into the payload's AAD)
/// and the sealed fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxCommand {
    /// `cmd_…` id.
    pub command_id: String,
    /// Recipient partner name.
    pub recipient: String,
    /// The person.
    pub subject: SubjectId,
    /// The recipient's pairwise token for the person.
    pub pairwise_token: String,
    /// Publisher SPIFFE id.
    pub source: String,
    /// Event type.
    pub event_type: String,
    /// Command name.
    pub command: String,
    /// Rule id.
    pub rule_id: String,
    /// Sealed fields ([`seal_payload`](super::seal_payload)).
    pub payload: Vec<u8>,
    /// When the event was accepted.
    pub created_at_ms: i64,
}

/// A command waiting in the outbox for its recipient, as delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCommand {
    /// Outbox position.
    pub seq: u64,
    /// Order within (recipient, subject), from 1.
    pub subject_seq: u64,
    /// The command.
    pub command: OutboxCommand,
    /// Deliveries so far, this one included.
    pub deliveries: u32,
}

/// An accepted event, kept so a repeated event id is a no-op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedEvent {
    /// Publisher SPIFFE id.
    pub source: String,
    /// Publisher's event id.
    pub event_id: String,
    /// The person.
    pub subject: SubjectId,
    /// Event type.
    pub event_type: String,
    /// `delivered`, `ignored_unlinked` or `ignored_no_rule`.
    pub outcome: &'static str,
    /// Commands written.
    pub commands: u32,
    /// Acceptance time.
    pub accepted_at_ms: i64,
}

impl OutboxCommand {
    /// The header the payload is sealed under (all of it is AAD).
    pub fn header(&self) -> CommandHeader<'_> {
        CommandHeader {
            command_id: &self.command_id,
            recipient: &self.recipient,
            subject: &self.subject,
            pairwise_token: &self.pairwise_token,
            source: &self.source,
            event_type: &self.event_type,
            command: &self.command,
            rule_id: &self.rule_id,
        }
    }
}
