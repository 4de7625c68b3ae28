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

use std::collections::BTreeMap;

use idvault_policies::{Action, RequestContext, Resource};

use super::streams::{StreamKind, StreamSlot};
use crate::config::Partner;
use crate::service::devices::DeviceOutcome;
use crate::service::{Caller, Vault, VaultError};
use crate::store::{AuditedTx, IGNORED_UNLINKED};
use idvault_core::consent::Refusal;
use idvault_core::device_request::DeviceAction;
use idvault_core::keys::KeyError;
use idvault_core::rules::{self, Rule, Suggestion};
use idvault_core::rules::{AcceptedEvent, OutboxCommand, PendingCommand};
use idvault_core::subject::SubjectId;

/// Most commands one delivery batch reads.
pub const DELIVERY_BATCH: u32 = 64;
/// Most command ids one acknowledgement takes.
pub const MAX_ACK_IDS: usize = 1000;
/// Most peers a suggestion looks at.
pub const MAX_PEERS: u32 = 1000;

/// Rule suggestions that may read histories at once, in the whole process:
/// every phone asks through the wallet app's identity, and each read goes
/// to the pool every partner's reads share, so a few are let through at a
/// time and the rest wait their turn within their deadline.
pub const MAX_SUGGESTION_READS: usize = 2;
/// How a publisher names the person. `Debug` shows which form, never the
/// id or token.
#[derive(Clone, PartialEq, Eq)]
pub enum SubjectRef {
    /// The subject id (the publisher created the subject).
    Id(String),
    /// The publisher's pairwise token for the person.
    Pairwise(String),
}

impl std::fmt::Debug for SubjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Id(_) => "SubjectRef::Id(redacted)",
            Self::Pairwise(_) => "SubjectRef::Pairwise(redacted)",
        })
    }
}

/// The action of the vault's record of what an event did.
pub const EVENT_OUTCOME_ACTION: &str = "EventOutcome";

/// What happened to an event (audited in the vault's own record; not told
/// to the publisher).
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
/// `Debug` shows the id only: the command carries personal data.
#[derive(Clone)]
pub struct Delivered {
    /// Outbox position.
    pub seq: u64,
    /// The command as it waits in the outbox.
    pub command: PendingCommand,
    /// Its fields, opened (wiped on drop).
    pub fields: Vec<(String, rules::EventValue)>,
}

impl std::fmt::Debug for Delivered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Delivered({}, fields redacted)",
            self.command.command.command_id
        )
    }
}

/// One delivery batch: the commands that opened, and the outbox position
/// to continue after (past any command that could not be opened).
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Commands to send, oldest first.
    pub commands: Vec<Delivered>,
    /// The stream's new cursor.
    pub next_after: u64,
}

/// `cmd_` + 32 random hex digits.
fn new_command_id(vault: &Vault) -> Result<String, VaultError> {
    let mut b = [0u8; 16];
    vault.rng().fill(&mut b).map_err(KeyError::from)?;
    Ok(format!("{}{}", rules::COMMAND_ID_PREFIX, hex::encode(b)))
}

/// Refuses the event, before anything is written, when it would take a
/// target's outbox past `outbox_per_source` commands from `source`. Each
/// publisher has its own share of each outbox: a publisher that floods one
/// (it can make up a person, enroll a phone it holds and set 64 rules to
/// one recipient) fills only its own share, and other publishers' events
/// are never refused for it. Refused whole, so nothing is half delivered
/// and the same event can be sent again once the target has acknowledged
/// some. Call with the targets' outbox rows taken
/// ([`AuditedTx::lock_outboxes`]), so the counts are exact; it stops at
/// the first target without room.
async fn check_outbox_room(
    tx: &mut AuditedTx,
    source: &str,
    targets: &[&Partner],
) -> Result<(), VaultError> {
    // In name order, as `lock_outboxes` takes them: which share is checked
    // first does not vary from call to call.
    let mut adding: BTreeMap<&str, (u32, u64)> = BTreeMap::new();
    for t in targets {
        adding
            .entry(t.name.as_str())
            .or_insert((t.outbox_per_source, 0))
            .1 += 1;
    }
    for (name, (cap, n)) in adding {
        let waiting = tx.outbox_waiting(name, source, cap).await?;
        if waiting.saturating_add(n) > u64::from(cap) {
            return Err(VaultError::Limit(
                "a recipient of this event has no room for more of your commands (its \
                 outbox_per_source); nothing was written: send the event again once it has \
                 acknowledged some",
            ));
        }
    }
    Ok(())
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
        fields: Vec<(String, String)>,
    ) -> Result<EventOutcome, VaultError> {
        self.handle(caller, Action::PublishEvent, async |req| {
            let event = rules::Event::new(event_type, event_id, fields)
                .map_err(|e| VaultError::BadRequest(e.to_string()))?;
            let mut tx = self.begin().await?;
            if matches!(subject, SubjectRef::Pairwise(_)) {
                // A matcher that knows the person by its token only must
                // not learn the vault's id from its records.
                req.hide_subject();
            }
            let id = self.known_subject(&mut tx, req.partner, &subject).await?;
            // The decision on this subject (operator policies may hold one);
            // a refusal is audited once the transaction is dropped.
            req.decide_on_subject(&id, &[])?;
            let (outcome, ids, skipped) =
                match self.apply_event(&mut tx, req.caller, &id, &event).await? {
                    Some(applied) => applied,
                    None => {
                        // The same event (a retry) committed first: this
                        // one's commands are rolled back with `tx`, and
                        // the call is answered as the duplicate it is.
                        drop(tx);
                        tx = self.begin().await?;
                        (EventOutcome::Duplicate, Vec::new(), Vec::new())
                    }
                };
            let mut detail = format!("request={} ", hex::encode(req.caller.request_id));
            detail.push_str(&match outcome {
                EventOutcome::Delivered(n) => {
                    format!("outcome=delivered commands={n} ids={}", ids.join(","))
                }
                o => format!("outcome={}", o.word()),
            });
            if !skipped.is_empty() {
                detail.push_str(&format!(" skipped_unregistered={}", skipped.join(",")));
            }
            // What the event did is the vault's record, not the
            // publisher's: a partner reads its own records back
            // (GetInclusionProof), and whether the person linked it or
            // holds a rule is not its to learn (docs/events.md, "What
            // leaks"). Its own record says only that the event was taken.
            // The vault's record has a fresh random request id of its own
            // (`add_job_leaf`): it is often the sibling in the publisher's
            // inclusion proof, and an id the publisher could derive would
            // let it test the few possible details against that hash.
            self.add_job_leaf(&mut tx, EVENT_OUTCOME_ACTION, Some(&id), detail)?;
            self.commit(tx, req, Some(&id), "accepted".to_owned())
                .await?;
            if matches!(outcome, EventOutcome::Delivered(n) if n > 0) {
                self.commands_ready().notify_waiters();
            }
            Ok(outcome)
        })
        .await
    }

    /// The subject `r` names, if the partner knows it: by id when the
    /// partner created it, or by the partner's own pairwise token.
    /// Anything else reads as absent.
    async fn known_subject(
        &self,
        tx: &mut AuditedTx,
        partner: &Partner,
        r: &SubjectRef,
    ) -> Result<SubjectId, VaultError> {
        let found = match r {
            // By id only for its creator: a partner that knows the person
            // by its token (a matcher, a receiver) and was handed the id
            // by another must not be able to test which ids it knows.
            SubjectRef::Id(s) => {
                let id = SubjectId::parse(s)?;
                match self.store().subject_row(&id).await? {
                    Some(row) if row.created_by == partner.name => {
                        if !row.owner_verified {
                            return Err(VaultError::Integrity("subject owner"));
                        }
                        Some(id)
                    }
                    _ => None,
                }
            }
            // A token of the wrong shape names no one (and never reaches
            // the database).
            SubjectRef::Pairwise(t) if !crate::service::matching::valid_pairwise_token(t) => None,
            SubjectRef::Pairwise(t) => tx.subject_of_pairwise(&partner.name, t).await?,
        };
        found.ok_or(VaultError::NotFound)
    }

    /// Inside `tx`: the event's outcome, the ids of the commands it wrote,
    /// and the ids of triggered rules whose target is no longer registered;
    /// `None` when the same event was committed concurrently (its commands
    /// must then be rolled back with `tx`).
    async fn apply_event(
        &self,
        tx: &mut AuditedTx,
        caller: &Caller,
        id: &SubjectId,
        event: &rules::Event,
    ) -> Result<Option<(EventOutcome, Vec<String>, Vec<String>)>, VaultError> {
        if tx.event_seen(&caller.spiffe_id, &event.event_id).await? {
            return Ok(Some((EventOutcome::Duplicate, Vec::new(), Vec::new())));
        }
        let now = self.now_millis();
        // Whether the event does anything is read first, without the
        // person's row: any partner holding the person's token may publish,
        // and an event that only gets ignored must not queue on that row
        // (where the person's own calls wait for it). Its one write, the
        // event's row, only needs the person not deleted meanwhile
        // (`subject_kept`). Both cost the same, unlinked or without a rule
        // (docs/events.md, "What leaks").
        let (mut linked, mut stored) = Self::event_rules(tx, id, caller, event).await?;
        let fires = !rules::triggered(&stored, &caller.spiffe_id, event).is_empty();
        let row = if !fires {
            if !tx.subject_kept(id).await? {
                return Err(VaultError::NotFound);
            }
            None
        } else {
            // Commands to write: the person's row now (locked on
            // PostgreSQL), as every call that changes their links or
            // rules takes it, and the links and rules read again under
            // it. An unlink or a rule change that committed meanwhile is
            // seen, and one that comes after waits (its clean-up then
            // removes what this wrote); from the first read alone, this
            // could write a command the person had just withdrawn.
            let row = tx.subject(id).await?.ok_or(VaultError::NotFound)?;
            // A retry of this event may have committed while this waited.
            if tx.event_seen(&caller.spiffe_id, &event.event_id).await? {
                return Ok(None);
            }
            (linked, stored) = Self::event_rules(tx, id, caller, event).await?;
            Some(row)
        };
        let hits = rules::triggered(&stored, &caller.spiffe_id, event);
        let (mut ids, mut skipped) = (Vec::new(), Vec::new());
        let outcome = match row {
            // (Rules are triggered only for a linked publisher.)
            Some(row) if !hits.is_empty() => {
                let dek = self.subject_dek(&row)?;
                // Outbox positions of a recipient commit in order (no stream
                // passes one that commits later).
                let targets: Vec<&Partner> = hits
                    .iter()
                    .filter_map(|h| self.registry().by_spiffe_id(&h.rule.target))
                    .collect();
                let recipients: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
                tx.lock_outboxes(&recipients).await?;
                if let Err(full) = check_outbox_room(tx, &caller.spiffe_id, &targets).await {
                    // On PostgreSQL a concurrent attempt at this same event may
                    // have committed while this one waited for the outbox rows,
                    // and filled the share itself: that is a duplicate, not a
                    // refusal.
                    if tx.event_seen(&caller.spiffe_id, &event.event_id).await? {
                        return Ok(None);
                    }
                    return Err(full);
                }
                for hit in hits {
                    // A target removed from the registry gets nothing (audited).
                    let Some(target) = self.registry().by_spiffe_id(&hit.rule.target) else {
                        skipped.push(hit.rule.id());
                        continue;
                    };
                    let token = self.pairwise_for(tx, target, id).await?;
                    let command = OutboxCommand {
                        command_id: new_command_id(self)?,
                        recipient: target.name.clone(),
                        subject: *id,
                        pairwise_token: token,
                        source: caller.spiffe_id.clone(),
                        event_type: event.event_type.clone(),
                        command: hit.rule.command.clone(),
                        rule_id: hit.rule.id(),
                        payload: Vec::new(),
                        created_at_ms: now,
                    };
                    let payload =
                        rules::seal_payload(&dek, &command.header(), &hit.fields, self.rng())
                            .map_err(|_| VaultError::Internal("command sealing"))?;
                    let command = OutboxCommand { payload, ..command };
                    tx.enqueue_command(&command).await?;
                    ids.push(command.command_id);
                }
                EventOutcome::Delivered(u32::try_from(ids.len()).unwrap_or(u32::MAX))
            }
            _ if linked => EventOutcome::IgnoredNoRule,
            _ => EventOutcome::IgnoredUnlinked,
        };
        let row = AcceptedEvent {
            source: caller.spiffe_id.clone(),
            event_id: event.event_id.clone(),
            subject: *id,
            event_type: event.event_type.clone(),
            outcome: outcome.word(),
            commands: u32::try_from(ids.len()).unwrap_or(u32::MAX),
            accepted_at_ms: now,
        };
        // On SQLite the writer orders audited transactions, so the id
        // cannot have been taken since `event_seen`. On PostgreSQL a
        // concurrent retry of the same event can: this insert waits for
        // it and, once it committed, inserts nothing. Then nothing of this
        // call may commit (its commands would be delivered twice).
        if !tx.insert_event(&row).await? {
            return Ok(None);
        }
        Ok(Some((outcome, ids, skipped)))
    }

    /// Whether the person linked the publisher, and the person's rules
    /// for this publisher and event type (none when not linked). Both
    /// lookups run whatever the first finds, so an unlinked publisher and
    /// a linked one without a rule cost the same (docs/events.md, "What
    /// leaks").
    async fn event_rules(
        tx: &mut AuditedTx,
        id: &SubjectId,
        caller: &Caller,
        event: &rules::Event,
    ) -> Result<(bool, Vec<Rule>), VaultError> {
        let linked = tx.is_linked(id, &caller.spiffe_id).await?;
        let stored = tx
            .rules_for_event(id, &caller.spiffe_id, &event.event_type)
            .await?;
        Ok((linked, if linked { stored } else { Vec::new() }))
    }

    /// Whether the policies let `p` open a command stream now (the gate
    /// its `StreamCommands` and `AckCommands` calls pass).
    fn may_receive_commands(&self, p: &Partner) -> bool {
        self.decision(
            p,
            Action::ReceiveCommands,
            Resource::Vault,
            RequestContext::default(),
        )
        .allowed
    }

    /// `partner`'s pairwise token for the subject, issued if it has none.
    async fn pairwise_for(
        &self,
        tx: &mut AuditedTx,
        partner: &Partner,
        id: &SubjectId,
    ) -> Result<String, VaultError> {
        if let Some(t) = tx.pairwise_tokens(&partner.name, &[*id]).await?.remove(id) {
            return Ok(t);
        }
        self.issue_pairwise(tx, partner, id).await?;
        // Read back the stored one: on PostgreSQL a match may store the
        // partner's token between the read above and this insert (this
        // transaction's lock on the subject does not hold its insert off),
        // and then ours is not stored; a command carrying it would name a
        // token that resolves to nobody.
        tx.pairwise_tokens(&partner.name, &[*id])
            .await?
            .remove(id)
            .ok_or(VaultError::Internal("a pairwise token was not stored"))
    }

    /// Authorises a command receiver and takes one of its stream slots
    /// (refusals audited).
    pub async fn open_command_stream(
        self: &std::sync::Arc<Self>,
        caller: &Caller,
    ) -> Result<StreamSlot, VaultError> {
        self.handle(caller, Action::ReceiveCommands, async |req| {
            self.take_stream_slot(StreamKind::Commands, &req.partner.name)
        })
        .await
    }

    /// Ends every following command stream (server shutdown).
    pub fn stop_streams(&self) {
        self.streams_stop.send_replace(true);
    }

    /// Whether streams must end, and a receiver to wait for it.
    pub fn streams_stop_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.streams_stop.subscribe()
    }

    /// The calling partner's next unacknowledged commands after outbox
    /// position `after`, fields opened; the delivery is audited.
    ///
    /// Rows are read and opened outside the write lock; only the delivery
    /// count and the audit record are written under it. A command that
    /// cannot be opened (a tampered row, a missing key) is not sent: it is
    /// named in the audit record and logged by id, and the cursor moves
    /// past it, so one bad row cannot stop the partner's other commands.
    pub async fn next_commands(&self, caller: &Caller, after: u64) -> Result<Batch, VaultError> {
        self.handle(caller, Action::ReceiveCommands, async |req| {
            let partner = req.partner;
            let rows = self
                .store()
                .pending_commands(&partner.name, after, DELIVERY_BATCH)
                .await?;
            let Some(last) = rows.last() else {
                return Ok(Batch {
                    commands: Vec::new(),
                    next_after: after,
                });
            };
            let next_after = match last {
                Ok(row) => row.seq,
                Err(bad) => bad.seq,
            };
            let mut out = Vec::with_capacity(rows.len());
            let mut unreadable = Vec::new();
            let mut deks: Vec<(SubjectId, idvault_core::secret::DataKey)> = Vec::new();
            for row in rows {
                let row = match row {
                    Ok(row) => row,
                    Err(bad) => {
                        tracing::error!(seq = bad.seq, "outbox row does not decode; skipped");
                        unreadable.push(bad.command_id);
                        continue;
                    }
                };
                match self.open_command(&row, &mut deks).await {
                    Ok(Some(d)) => out.push(d),
                    // Its subject was deleted since the read: gone.
                    Ok(None) => {}
                    // What cannot be opened now will not be on the next
                    // try either (a failed MAC or AEAD, a data key under a
                    // version this process lacks, a subject row that does
                    // not decode): skipped and audited, so one bad row
                    // does not stop every stream of the recipient at it.
                    // A storage fault that may pass ends the batch instead.
                    Err(
                        e @ (VaultError::Integrity(_)
                        | VaultError::Key(_)
                        | VaultError::Storage(crate::store::StoreError::Corrupt(_))),
                    ) => {
                        tracing::error!(command_id = %row.command.command_id, error = %e, "outbox command cannot be opened; skipped");
                        unreadable.push(row.command.command_id);
                    }
                    Err(e) => return Err(e),
                }
            }
            let mut tx = self.begin().await?;
            let seqs: Vec<u64> = out.iter().map(|d| d.seq).collect();
            tx.count_deliveries(&partner.name, &seqs).await?;
            let ids: Vec<&str> = out
                .iter()
                .map(|d| d.command.command.command_id.as_str())
                .collect();
            let mut detail = format!("delivered={} ids={}", out.len(), ids.join(","));
            if !unreadable.is_empty() {
                detail.push_str(&format!(" unreadable={}", unreadable.join(",")));
            }
            self.commit(tx, req, None, detail).await?;
            Ok(Batch {
                commands: out,
                next_after,
            })
        })
        .await
    }

    /// Opens one outbox row; `None` when its subject is gone. `deks`
    /// caches the batch's data keys.
    async fn open_command(
        &self,
        row: &PendingCommand,
        deks: &mut Vec<(SubjectId, idvault_core::secret::DataKey)>,
    ) -> Result<Option<Delivered>, VaultError> {
        let c = &row.command;
        if !deks.iter().any(|(s, _)| *s == c.subject) {
            let Some(subject) = self.store().subject_row(&c.subject).await? else {
                return Ok(None);
            };
            let dek = self.subject_dek(&subject)?;
            deks.push((c.subject, dek));
        }
        let dek = deks
            .iter()
            .find(|(s, _)| *s == c.subject)
            .map(|(_, d)| d)
            .ok_or(VaultError::Internal("data key cache"))?;
        let fields = rules::open_payload(dek, &c.header(), &c.payload)
            .map_err(|_| VaultError::Integrity("command payload"))?;
        Ok(Some(Delivered {
            seq: row.seq,
            command: row.clone(),
            fields,
        }))
    }

    /// Acknowledges the calling partner's commands; returns how many this
    /// call acknowledged.
    pub async fn ack_commands(&self, caller: &Caller, ids: Vec<String>) -> Result<u32, VaultError> {
        self.handle(caller, Action::ReceiveCommands, async |req| {
            if ids.len() > MAX_ACK_IDS {
                return Err(VaultError::BadRequest(format!(
                    "at most {MAX_ACK_IDS} command ids per call"
                )));
            }
            let mut tx = self.begin().await?;
            // Ids of another shape name no command (and never reach the
            // database).
            let ids: Vec<String> = ids
                .into_iter()
                .filter(|i| rules::valid_command_id(i))
                .collect();
            let n = tx.ack_commands(&req.partner.name, &ids).await?;
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            self.commit(tx, req, None, format!("acknowledged={n}"))
                .await?;
            Ok(n)
        })
        .await
    }

    /// Rule suggestions from `inputs`, read from the pool before the
    /// call's transaction (never under the writer), and the audit detail.
    pub(crate) fn suggest_rules(
        &self,
        inputs: crate::store::SuggestionInputs,
    ) -> (DeviceOutcome, String) {
        // Peers' rules to targets that may not receive commands (set
        // before SetRules refused them, or whose target lost the right)
        // could not be adopted: they are not suggested. One decision per
        // target, not per rule (up to 1000 peers of 64 rules each).
        let mut receives: std::collections::HashMap<String, bool> =
            std::collections::HashMap::new();
        let peers: Vec<rules::Peer> = inputs
            .peers
            .into_iter()
            .map(|(history, mut rules)| {
                rules.retain(|r| {
                    *receives.entry(r.target.clone()).or_insert_with(|| {
                        self.registry()
                            .by_spiffe_id(&r.target)
                            .is_some_and(|t| self.may_receive_commands(t))
                    })
                });
                rules::Peer { history, rules }
            })
            .collect();
        let s: Vec<Suggestion> = rules::suggest(
            &inputs.me,
            &inputs.mine,
            &peers,
            rules::DEFAULT_MIN_SUPPORT,
            rules::MAX_SUGGESTIONS,
        );
        let detail = format!("peers={} suggestions={}", peers.len(), s.len());
        (DeviceOutcome::Suggestions(s), detail)
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
                // Withdrawing trust withdraws what still waits for it.
                let recipient = self.registry().by_spiffe_id(e).map(|p| p.name.as_str());
                let (unlinked, removed, withdrawn) =
                    tx.unlink_entity(subject, e, recipient).await?;
                let removed = u32::try_from(removed).unwrap_or(u32::MAX);
                (
                    DeviceOutcome::Unlinked {
                        unlinked,
                        rules_removed: removed,
                    },
                    format!(
                        "entity={e} unlinked={unlinked} rules_removed={removed} commands_withdrawn={withdrawn}"
                    ),
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
                // A target that may not drain its outbox would keep every
                // command sent to it, and once its share from a publisher
                // is full that publisher's events for the people with such
                // rules would be refused (docs/events.md, "Bounds"). The
                // policies are asked as its own stream would be.
                for r in rules.iter() {
                    match self.registry().by_spiffe_id(&r.target) {
                        None => return Err(VaultError::Refused(Refusal::EntityUnknown)),
                        Some(t) if !self.may_receive_commands(t) => {
                            return Err(VaultError::Refused(Refusal::TargetCannotReceive));
                        }
                        Some(_) => {}
                    }
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
            _ => return Ok(None),
        }))
    }
}
