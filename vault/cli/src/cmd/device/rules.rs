//! `idvault device link|unlink|rules|set-rules|suggest|adopt` (docs/events.md).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use idvault_client::device::unix_now;
use idvault_core::SystemRng;
use idvault_proto::v1 as pb;

use super::{DeviceArgs, load_key};

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
