//! A person's rules and actions, the use cases: partners publish events,
//! the person's rules turn them into commands in a durable outbox, and
//! receiving partners drain and acknowledge them; the person's device
//! links entities, sets rules and asks for suggestions (docs/events.md).
//!
//! Order of work for an event: authorise the publisher, validate the
//! event, find the subject the publisher knows, then in one audited
//! transaction: refuse a repeated event id, ignore (and audit) an event
//! from an entity the person has not linked or that no rule names, and
//! otherwise seal each triggered command's fields under the subject's
//! data key and write it to the outbox. The audit record commits with the
//! commands or not at all, so an acknowledged event's commands survive a
//! crash.

use idvault_policies::{Action, RequestContext, Resource};
use idvault_proto::v1 as pb;

use crate::config::Partner;
use crate::consent::DeviceOutcome;
use crate::core::consent::{DeviceAction, Refusal};
use crate::core::keys::{self, KeyError};
use crate::core::rules::{self, EventValue, Rule, Suggestion};
use crate::core::subject::SubjectId;
use crate::service::{Caller, Vault, VaultError};
use crate::store::{AuditedTx, EventRow, IGNORED_UNLINKED, NewCommand};

/// Most commands one delivery batch reads.
pub const DELIVERY_BATCH: u32 = 64;
/// Most command ids one acknowledgement takes.
pub const MAX_ACK_IDS: usize = 1000;
/// Most peers a suggestion looks at.
pub const MAX_PEERS: u32 = 1000;

/// How a publisher names the person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectRef {
    /// The subject id (the publisher created the subject).
    Id(String),
    /// The publisher's pairwise token for the person.
    Pairwise(String),
}

/// What happened to an event (audited; not told to the publisher).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// Commands were written for its rules.
    Delivered(u32),
    /// The person has not linked the publisher.
    IgnoredUnlinked,
    /// No rule of the person names this publisher and event type.
    IgnoredNoRule,
    /// This event id was accepted before; nothing was done.
    Duplicate,
}

impl EventOutcome {
    fn word(self) -> &'static str {
        match self {
            Self::Delivered(_) => "delivered",
            Self::IgnoredUnlinked => IGNORED_UNLINKED,
            Self::IgnoredNoRule => "ignored_no_rule",
            Self::Duplicate => "duplicate",
        }
    }
}

/// A command as delivered: its outbox position and the wire message.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// Outbox position (the stream's cursor).
    pub seq: u64,
    /// The command, fields opened.
    pub command: pb::Command,
}

/// `cmd_` + 32 random hex digits.
fn new_command_id(vault: &Vault) -> Result<String, VaultError> {
    let mut b = [0u8; 16];
    vault.rng().fill(&mut b).map_err(KeyError::from)?;
    Ok(format!("{}{}", rules::COMMAND_ID_PREFIX, hex::encode(b)))
}

impl Vault {
    /// Accepts an event about a person from the calling partner and turns
    /// it into commands by the person's rules.
    pub async fn publish_event(
        &self,
        caller: &Caller,
        subject: SubjectRef,
        event_type: String,
        event_id: String,
        fields: Vec<pb::EventField>,
    ) -> Result<EventOutcome, VaultError> {
        const A: Action = Action::PublishEvent;
        let partner = self.authorize(caller, A).await?;
        let event = match rules::validate_event(event_type, event_id, fields) {
            Ok(e) => e,
            Err(e) => {
                return self
                    .refuse(caller, A, None, VaultError::BadRequest(e.to_string()))
                    .await;
            }
        };
        let r = async {
            let mut tx = self.begin().await.map_err(|e| (None, e))?;
            let id = self.known_subject(&mut tx, partner, &subject).await?;
            // The decision on this subject (operator policies may hold one);
            // a refusal is audited once the transaction is dropped.
            let text = id.to_string();
            let on = Resource::Subject(&text);
            if !self.decide(caller, partner, A, on, RequestContext::default()) {
                return Err((Some(id), VaultError::Denied(A)));
            }
            let outcome = self.apply_event(&mut tx, caller, &id, &event).await;
            let outcome = match outcome {
                Ok(o) => o,
                Err(e) => return Err((Some(id), e)),
            };
            let detail = match outcome.0 {
                EventOutcome::Delivered(n) => {
                    format!("outcome=delivered commands={n} ids={}", outcome.1.join(","))
                }
                o => format!("outcome={}", o.word()),
            };
            self.commit_event(tx, caller, A, Some(&id), detail)
                .await
                .map_err(|e| (Some(id), e))?;
            if matches!(outcome.0, EventOutcome::Delivered(_)) {
                self.commands_ready().notify_waiters();
            }
            Ok(outcome.0)
        }
        .await;
        match r {
            Ok(o) => Ok(o),
            Err((subject, e)) => self.audit_failure(caller, A, subject.as_ref(), e).await,
        }
    }

    /// The subject `r` names, if the partner knows it: by id when the
    /// partner holds a pairwise token for it (creator or matcher), or by
    /// the partner's own pairwise token. Anything else reads as absent.
    async fn known_subject(
        &self,
        tx: &mut AuditedTx,
        partner: &Partner,
        r: &SubjectRef,
    ) -> Result<SubjectId, (Option<SubjectId>, VaultError)> {
        let found = match r {
            SubjectRef::Id(s) => {
                let id = SubjectId::parse(s).map_err(|e| (None, e.into()))?;
                let known = tx
                    .pairwise_tokens(&partner.name, &[id])
                    .await
                    .map_err(|e| (None, e.into()))?;
                known.contains_key(&id).then_some(id)
            }
            SubjectRef::Pairwise(t) => tx
                .subject_of_pairwise(&partner.name, t)
                .await
                .map_err(|e| (None, e.into()))?,
        };
        found.ok_or((None, VaultError::NotFound))
    }

    /// Inside `tx`: the event's outcome, and the ids of the commands it
    /// wrote.
    async fn apply_event(
        &self,
        tx: &mut AuditedTx,
        caller: &Caller,
        id: &SubjectId,
        event: &rules::Event,
    ) -> Result<(EventOutcome, Vec<String>), VaultError> {
        if tx.event_seen(&caller.spiffe_id, &event.event_id).await? {
            return Ok((EventOutcome::Duplicate, Vec::new()));
        }
        let now = self.now_millis();
        let mut ids = Vec::new();
        let outcome = if tx.is_linked(id, &caller.spiffe_id).await? {
            let stored = tx
                .rules_for_event(id, &caller.spiffe_id, &event.event_type)
                .await?;
            let hits = rules::triggered(&stored, &caller.spiffe_id, event);
            if hits.is_empty() {
                EventOutcome::IgnoredNoRule
            } else {
                let subject = tx.subject(id).await?.ok_or(VaultError::NotFound)?;
                let kek = self.keys().kek(subject.wrapped_dek.kek_version)?;
                let dek = keys::unwrap_dek(&kek, id, &subject.wrapped_dek)
                    .map_err(|_| VaultError::Integrity("data key unwrap"))?;
                for hit in hits {
                    // A target removed from the registry gets nothing.
                    let Some(target) = self.registry().by_spiffe_id(&hit.rule.target) else {
                        continue;
                    };
                    let token = self.pairwise_for(tx, target, id).await?;
                    let command_id = new_command_id(self)?;
                    let payload = rules::seal_payload(
                        &dek,
                        &command_id,
                        &target.name,
                        id,
                        &hit.fields,
                        self.rng(),
                    )
                    .map_err(|_| VaultError::Internal("command sealing"))?;
                    tx.enqueue_command(&NewCommand {
                        command_id: command_id.clone(),
                        recipient: target.name.clone(),
                        subject: *id,
                        pairwise_token: token,
                        source: caller.spiffe_id.clone(),
                        event_type: event.event_type.clone(),
                        command: hit.rule.command.clone(),
                        rule_id: hit.rule.id(),
                        payload,
                        created_at_ms: now,
                    })
                    .await?;
                    ids.push(command_id);
                }
                EventOutcome::Delivered(u32::try_from(ids.len()).unwrap_or(u32::MAX))
            }
        } else {
            EventOutcome::IgnoredUnlinked
        };
        let row = EventRow {
            source: caller.spiffe_id.clone(),
            event_id: event.event_id.clone(),
            subject: *id,
            event_type: event.event_type.clone(),
            outcome: outcome.word(),
            commands: u32::try_from(ids.len()).unwrap_or(u32::MAX),
            accepted_at_ms: now,
        };
        if !tx.insert_event(&row).await? {
            return Ok((EventOutcome::Duplicate, Vec::new()));
        }
        Ok((outcome, ids))
    }

    /// `partner`'s pairwise token for the subject, issued if it has none.
    async fn pairwise_for(
        &self,
        tx: &mut AuditedTx,
        partner: &Partner,
        id: &SubjectId,
    ) -> Result<String, VaultError> {
        match tx.pairwise_tokens(&partner.name, &[*id]).await?.remove(id) {
            Some(t) => Ok(t),
            None => self.issue_pairwise(tx, partner, id).await,
        }
    }

    /// Authorises a command receiver (audited when refused).
    pub async fn authorize_receiver(&self, caller: &Caller) -> Result<(), VaultError> {
        self.authorize(caller, Action::ReceiveCommands)
            .await
            .map(|_| ())
    }

    /// The calling partner's next unacknowledged commands after outbox
    /// position `after`, fields opened; the delivery is audited.
    pub async fn next_commands(
        &self,
        caller: &Caller,
        after: u64,
    ) -> Result<Vec<Delivered>, VaultError> {
        const A: Action = Action::ReceiveCommands;
        let partner = self.authorize(caller, A).await?;
        let r = async {
            if !self
                .store()
                .has_pending_commands(&partner.name, after)
                .await?
            {
                return Ok(Vec::new());
            }
            let mut tx = self.begin().await?;
            let rows = tx
                .take_commands(&partner.name, after, DELIVERY_BATCH)
                .await?;
            if rows.is_empty() {
                // Nothing read, nothing to audit: the empty transaction
                // rolls back (the audit head bump with it).
                return Ok(Vec::new());
            }
            let mut out = Vec::with_capacity(rows.len());
            let mut deks: Vec<(SubjectId, crate::core::secret::DataKey)> = Vec::new();
            for row in rows {
                let c = row.command;
                if !deks.iter().any(|(s, _)| *s == c.subject) {
                    let subject = tx
                        .subject(&c.subject)
                        .await?
                        .ok_or(VaultError::Integrity("command subject"))?;
                    let kek = self.keys().kek(subject.wrapped_dek.kek_version)?;
                    let dek = keys::unwrap_dek(&kek, &c.subject, &subject.wrapped_dek)
                        .map_err(|_| VaultError::Integrity("data key unwrap"))?;
                    deks.push((c.subject, dek));
                }
                let dek = deks
                    .iter()
                    .find(|(s, _)| *s == c.subject)
                    .map(|(_, d)| d)
                    .ok_or(VaultError::Internal("data key cache"))?;
                let fields =
                    rules::open_payload(dek, &c.command_id, &c.recipient, &c.subject, &c.payload)
                        .map_err(|_| VaultError::Integrity("command payload"))?;
                out.push(Delivered {
                    seq: row.seq,
                    command: pb::Command {
                        command_id: c.command_id,
                        pairwise_token: c.pairwise_token,
                        subject_seq: row.subject_seq,
                        command: c.command,
                        event_type: c.event_type,
                        source: c.source,
                        fields: fields
                            .iter()
                            .map(|(n, v): &(String, EventValue)| pb::EventField {
                                name: n.clone(),
                                value: v.expose().to_owned(),
                            })
                            .collect(),
                        created_at_ms: c.created_at_ms,
                        rule_id: c.rule_id,
                        delivery_attempt: row.deliveries,
                    },
                });
            }
            let ids: Vec<&str> = out.iter().map(|d| d.command.command_id.as_str()).collect();
            let detail = format!("delivered={} ids={}", out.len(), ids.join(","));
            self.commit_with(tx, caller, A, detail).await?;
            Ok(out)
        }
        .await;
        self.audited_failure(caller, A, r).await
    }

    /// Acknowledges the calling partner's commands; returns how many this
    /// call acknowledged.
    pub async fn ack_commands(&self, caller: &Caller, ids: Vec<String>) -> Result<u32, VaultError> {
        const A: Action = Action::ReceiveCommands;
        let partner = self.authorize(caller, A).await?;
        if ids.len() > MAX_ACK_IDS {
            return self
                .refuse(
                    caller,
                    A,
                    None,
                    VaultError::BadRequest(format!("at most {MAX_ACK_IDS} command ids per call")),
                )
                .await;
        }
        let r = async {
            let mut tx = self.begin().await?;
            let n = tx.ack_commands(&partner.name, &ids).await?;
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            self.commit_with(tx, caller, A, format!("acknowledged={n}"))
                .await?;
            Ok(n)
        }
        .await;
        self.audited_failure(caller, A, r).await
    }

    async fn audited_failure<T>(
        &self,
        caller: &Caller,
        action: Action,
        r: Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        match r {
            Ok(v) => Ok(v),
            Err(e) => self.audit_failure(caller, action, None, e).await,
        }
    }

    /// A device action on the person's links and rules, inside the device
    /// call's transaction; returns the outcome and the audit detail (ids
    /// and counts only).
    pub(crate) async fn rules_action(
        &self,
        tx: &mut AuditedTx,
        subject: &SubjectId,
        action: &DeviceAction,
    ) -> Result<Option<(DeviceOutcome, String)>, VaultError> {
        let now = self.now_millis();
        Ok(Some(match action {
            DeviceAction::LinkEntity(e) => {
                if self.registry().by_spiffe_id(e).is_none() {
                    return Err(VaultError::Refused(Refusal::EntityUnknown));
                }
                let linked = tx.link_entity(subject, e, now).await?;
                (
                    DeviceOutcome::Linked(linked),
                    format!("entity={e} linked={linked}"),
                )
            }
            DeviceAction::UnlinkEntity(e) => {
                let (unlinked, removed) = tx.unlink_entity(subject, e).await?;
                let removed = u32::try_from(removed).unwrap_or(u32::MAX);
                (
                    DeviceOutcome::Unlinked {
                        unlinked,
                        rules_removed: removed,
                    },
                    format!("entity={e} unlinked={unlinked} rules_removed={removed}"),
                )
            }
            DeviceAction::SetRules(rules) => {
                let linked: Vec<String> = tx
                    .links_of(subject)
                    .await?
                    .into_iter()
                    .map(|(e, _)| e)
                    .collect();
                if rules
                    .iter()
                    .any(|r| r.entities().iter().any(|e| !linked.iter().any(|l| l == e)))
                {
                    return Err(VaultError::Refused(Refusal::EntityNotLinked));
                }
                tx.set_rules(subject, rules).await?;
                let ids: Vec<String> = rules.iter().map(Rule::id).collect();
                (
                    DeviceOutcome::Rules(rules.clone()),
                    format!("rules={} ids={}", rules.len(), ids.join(",")),
                )
            }
            DeviceAction::ListRules => {
                let entities = tx.links_of(subject).await?;
                let rules = tx.rules_of(subject).await?;
                let detail = format!("entities={} rules={}", entities.len(), rules.len());
                (DeviceOutcome::RuleList { entities, rules }, detail)
            }
            DeviceAction::SuggestRules => {
                let me = tx.history_of(subject).await?;
                let mine = tx.rules_of(subject).await?;
                let entities: Vec<String> = me.linked.iter().cloned().collect();
                let peers: Vec<rules::Peer> = tx
                    .peers(subject, &entities, MAX_PEERS)
                    .await?
                    .into_iter()
                    .map(|(history, rules)| rules::Peer { history, rules })
                    .collect();
                let s: Vec<Suggestion> = rules::suggest(
                    &me,
                    &mine,
                    &peers,
                    rules::DEFAULT_MIN_SUPPORT,
                    rules::MAX_SUGGESTIONS,
                );
                let detail = format!("peers={} suggestions={}", peers.len(), s.len());
                (DeviceOutcome::Suggestions(s), detail)
            }
            _ => return Ok(None),
        }))
    }
}
