//! `idvault partner publish-event|commands|ack` (docs/events.md).

use clap::Subcommand;
use idvault_proto::v1 as pb;
use idvault_proto::v1::command_service_client::CommandServiceClient;
use idvault_proto::v1::event_service_client::EventServiceClient;

use crate::cmd::ConnectArgs;

/// Event and command commands of `idvault partner`.
#[derive(Subcommand, Debug)]
pub(crate) enum PartnerEventCommand {
    /// Report an event about a person (subject id, or your pairwise token
    /// `pw_…`).
    PublishEvent {
        subject: String,
        /// Event type, e.g. address.changed.
        #[arg(long = "type")]
        event_type: String,
        /// Your id for the event (retrying with the same id is safe).
        #[arg(long = "id")]
        event_id: String,
        /// An event field name=value (repeatable).
        #[arg(long = "field", value_parser = crate::cmd::parse_field)]
        fields: Vec<(String, String)>,
    },
    /// Receive your pending commands, one JSON object a line; with --ack
    /// each is acknowledged after it is printed.
    Commands {
        /// Wait for new commands until the server ends the stream.
        #[arg(long)]
        follow: bool,
        /// Acknowledge each command once printed.
        #[arg(long)]
        ack: bool,
    },
    /// Acknowledge commands by id.
    Ack {
        #[arg(required = true)]
        command_ids: Vec<String>,
    },
}

pub(crate) async fn partner(
    conn: &ConnectArgs,
    command: PartnerEventCommand,
) -> anyhow::Result<()> {
    match command {
        PartnerEventCommand::PublishEvent {
            subject,
            event_type,
            event_id,
            fields,
        } => {
            use pb::publish_event_request::Subject;
            let subject = if subject.starts_with("pw_") {
                Subject::PairwiseToken(subject)
            } else {
                Subject::SubjectId(subject)
            };
            let r = EventServiceClient::new(conn.channel().await?)
                .publish_event(pb::PublishEventRequest {
                    subject: Some(subject),
                    event_type,
                    event_id,
                    fields: fields
                        .into_iter()
                        .map(|(name, value)| pb::EventField { name, value })
                        .collect(),
                })
                .await?
                .into_inner();
            println!(
                "event_id={} {}",
                r.event_id,
                if r.duplicate {
                    "duplicate (already accepted)"
                } else {
                    "accepted"
                }
            );
        }
        PartnerEventCommand::Commands { follow, ack } => {
            let mut c = CommandServiceClient::new(conn.channel().await?);
            let mut stream = c
                .stream_commands(pb::StreamCommandsRequest { follow })
                .await?
                .into_inner();
            let mut n = 0u64;
            while let Some(m) = stream.message().await? {
                let Some(cmd) = m.command else { continue };
                println!("{}", command_json(&cmd));
                n += 1;
                if ack {
                    c.ack_commands(pb::AckCommandsRequest {
                        command_ids: vec![cmd.command_id],
                    })
                    .await?;
                }
            }
            eprintln!(
                "{n} commands received{}",
                if ack { " and acknowledged" } else { "" }
            );
        }
        PartnerEventCommand::Ack { command_ids } => {
            let r = CommandServiceClient::new(conn.channel().await?)
                .ack_commands(pb::AckCommandsRequest { command_ids })
                .await?
                .into_inner();
            println!("acknowledged={}", r.acknowledged);
        }
    }
    Ok(())
}

/// One command as a JSON object (values as sent: the receiver asked for them).
fn command_json(c: &pb::Command) -> serde_json::Value {
    let fields: serde_json::Map<String, serde_json::Value> = c
        .fields
        .iter()
        .map(|f| (f.name.clone(), serde_json::Value::String(f.value.clone())))
        .collect();
    serde_json::json!({
        "command_id": c.command_id,
        "pairwise_token": c.pairwise_token,
        "subject_seq": c.subject_seq,
        "command": c.command,
        "event_type": c.event_type,
        "source": c.source,
        "fields": fields,
        "rule_id": c.rule_id,
        "created_at_ms": c.created_at_ms,
        "delivery_attempt": c.delivery_attempt,
    })
}
