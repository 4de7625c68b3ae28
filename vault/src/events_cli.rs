//! `idvault partner publish-event|commands` and `idvault device
//! link|unlink|rules|set-rules|suggest|adopt` (docs/events.md).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use idvault::core::SystemRng;
use idvault::device::unix_now;
use idvault_proto::v1 as pb;
use idvault_proto::v1::command_service_client::CommandServiceClient;
use idvault_proto::v1::event_service_client::EventServiceClient;

use super::ConnectArgs;
use super::consent_cli::{DeviceArgs, load_key};

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
        #[arg(long = "field", value_parser = super::parse_field)]
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

/// Rule commands of `idvault device`.
#[derive(Subcommand, Debug)]
pub(crate) enum DeviceRulesCommand {
    /// Link a trusted entity (a partner's SPIFFE id) to the person.
    Link {
        #[arg(long)]
        key: PathBuf,
        entity: String,
    },
    /// Unlink an entity; rules naming it are removed.
    Unlink {
        #[arg(long)]
        key: PathBuf,
        entity: String,
    },
    /// List linked entities and rules.
    Rules {
        #[arg(long)]
        key: PathBuf,
    },
    /// Replace the person's rules. Each --rule is
    /// "SOURCE EVENT_TYPE TARGET COMMAND [FIELD,FIELD…]"; no --rule clears them.
    SetRules {
        #[arg(long)]
        key: PathBuf,
        #[arg(long = "rule")]
        rules: Vec<String>,
    },
    /// Rule sets similar people adopted (nothing is applied).
    Suggest {
        #[arg(long)]
        key: PathBuf,
    },
    /// Sign the person's current rules plus suggestion N (from `suggest`).
    Adopt {
        #[arg(long)]
        key: PathBuf,
        number: usize,
    },
}

fn parse_rule(s: &str) -> anyhow::Result<pb::Rule> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let (source, event_type, target, command, fields) = match parts.as_slice() {
        [a, b, c, d] => (*a, *b, *c, *d, ""),
        [a, b, c, d, e] => (*a, *b, *c, *d, *e),
        _ => bail!("a rule is \"SOURCE EVENT_TYPE TARGET COMMAND [FIELD,FIELD…]\""),
    };
    Ok(pb::Rule {
        rule_id: String::new(),
        source: source.into(),
        event_type: event_type.into(),
        target: target.into(),
        command: command.into(),
        fields: fields
            .split(',')
            .filter(|f| !f.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

fn print_rule(r: &pb::Rule) {
    println!(
        "{} when {} reports {} send {} [{}] to {}",
        r.rule_id,
        r.source,
        r.event_type,
        r.command,
        r.fields.join(","),
        r.target
    );
}

pub(crate) async fn device(args: &DeviceArgs, command: &DeviceRulesCommand) -> anyhow::Result<()> {
    use pb::device_request::Action;
    let rng = SystemRng::default();
    let signed = |key: &PathBuf, action: Action| -> anyhow::Result<pb::SignedDeviceRequest> {
        Ok(load_key(key)?.sign_request(action, unix_now(), &rng)?)
    };
    let mut client = args.client().await?;
    match command {
        DeviceRulesCommand::Link { key, entity } => {
            let req = signed(
                key,
                Action::LinkEntity(pb::LinkEntity {
                    entity: entity.clone(),
                }),
            )?;
            let r = client.link_entity(req).await?.into_inner();
            println!("{}", if r.linked { "linked" } else { "already linked" });
        }
        DeviceRulesCommand::Unlink { key, entity } => {
            let req = signed(
                key,
                Action::UnlinkEntity(pb::UnlinkEntity {
                    entity: entity.clone(),
                }),
            )?;
            let r = client.unlink_entity(req).await?.into_inner();
            println!(
                "{} rules_removed={}",
                if r.unlinked {
                    "unlinked"
                } else {
                    "was not linked"
                },
                r.rules_removed
            );
        }
        DeviceRulesCommand::Rules { key } => {
            let req = signed(key, Action::ListRules(pb::ListRules {}))?;
            let r = client.list_rules(req).await?.into_inner();
            for e in &r.entities {
                println!("linked {} at_ms={}", e.entity, e.linked_at_ms);
            }
            r.rules.iter().for_each(print_rule);
        }
        DeviceRulesCommand::SetRules { key, rules } => {
            let rules = rules
                .iter()
                .map(|r| parse_rule(r))
                .collect::<anyhow::Result<_>>()?;
            let req = signed(key, Action::SetRules(pb::SetRules { rules }))?;
            let r = client.set_rules(req).await?.into_inner();
            println!("{} rules stored", r.rules.len());
            r.rules.iter().for_each(print_rule);
        }
        DeviceRulesCommand::Suggest { key } => {
            let req = signed(key, Action::SuggestRules(pb::SuggestRules {}))?;
            let r = client.suggest_rules(req).await?.into_inner();
            if r.suggestions.is_empty() {
                println!("no suggestions");
            }
            for (i, s) in r.suggestions.iter().enumerate() {
                println!(
                    "{}: confidence={:.2} support={} rules={}",
                    i + 1,
                    s.confidence,
                    s.support,
                    s.rules.len()
                );
                s.rules.iter().for_each(print_rule);
            }
        }
        DeviceRulesCommand::Adopt { key, number } => {
            let req = signed(key, Action::SuggestRules(pb::SuggestRules {}))?;
            let s = client.suggest_rules(req).await?.into_inner();
            let chosen = number
                .checked_sub(1)
                .and_then(|i| s.suggestions.get(i))
                .with_context(|| {
                    format!("no suggestion {number} (see `idvault device suggest`)")
                })?;
            let req = signed(key, Action::ListRules(pb::ListRules {}))?;
            let mut rules = client.list_rules(req).await?.into_inner().rules;
            rules.extend(chosen.rules.iter().cloned());
            // The person's signature over the whole new set is what applies it.
            let req = signed(key, Action::SetRules(pb::SetRules { rules }))?;
            let r = client.set_rules(req).await?.into_inner();
            println!("{} rules stored", r.rules.len());
            r.rules.iter().for_each(print_rule);
        }
    }
    Ok(())
}
