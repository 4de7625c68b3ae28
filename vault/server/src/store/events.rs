//! Rows of a person's rules and actions: linked entities, rules, accepted
//! events, and the command outbox (docs/events.md).
//!
//! The outbox is drained by `seq`, which grows in commit order because
//! every audited transaction first takes the audit head; acknowledging a
//! command deletes it, so acknowledging twice is a no-op.

use std::collections::HashMap;

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::matching::{IN_CHUNK, placeholders};
use super::rows::{i64_to_u64, list_col, list_text, subject_col, u64_to_i64};
use super::{AuditedTx, StoreError, check_row, seal_row};
use idvault_core::records::SubjectRecord;
use idvault_core::rowmac::{self, RowMac};
use idvault_core::rules::{AcceptedEvent, History, OutboxCommand, PendingCommand, Rule};
use idvault_core::subject::SubjectId;

/// The outcome word below, as a macro so queries can `concat!` it.
macro_rules! ignored_unlinked {
    () => {
        "ignored_unlinked"
    };
}

/// What suggesting rules reads ([`super::Store::suggestion_inputs`]).
#[derive(Debug, Clone, Default)]
pub struct SuggestionInputs {
    /// The person's history.
    pub me: History,
    /// The person's rules.
    pub mine: Vec<Rule>,
    /// Peers' histories and rules.
    pub peers: Vec<(History, Vec<Rule>)>,
}

/// Outcome word of an event whose publisher the person has not linked.
pub const IGNORED_UNLINKED: &str = ignored_unlinked!();

/// A rule row of `subject`, its MAC checked.
pub(super) fn rule_from_row(
    keys: &RowMac,
    subject: &SubjectId,
    r: &AnyRow,
) -> Result<Rule, StoreError> {
    let rule = Rule {
        source: r.try_get("source")?,
        event_type: r.try_get("event_type")?,
        target: r.try_get("target")?,
        command: r.try_get("command")?,
        fields: list_col(r, "fields")?,
    };
    check_row(keys, &rowmac::rule(subject, &rule), r)?;
    // The MAC covers the rule, and its id is derived from the rule; the
    // stored id (half the row's key) must be that one, or a writer could
    // copy a rule under a second id and have every event trigger it twice.
    let id: String = r.try_get("rule_id")?;
    if id != rule.id() {
        return Err(StoreError::Forged("rule"));
    }
    Ok(rule)
}

/// A link row `(entity, linked_at_ms)` of `subject`, its MAC checked.
pub(super) fn link_from_row(
    keys: &RowMac,
    subject: &SubjectId,
    r: &AnyRow,
) -> Result<(String, i64), StoreError> {
    let entity: String = r.try_get("entity")?;
    let at: i64 = r.try_get("linked_at_ms")?;
    check_row(keys, &rowmac::entity_link(subject, &entity, at), r)?;
    Ok((entity, at))
}

/// A row that failed its MAC as `None` (logged, without values), any
/// other error as itself.
fn verified<T>(r: Result<T, StoreError>) -> Result<Option<T>, StoreError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(StoreError::Forged(kind)) => {
            tracing::warn!(
                kind,
                "a row failed its MAC check and was left out of suggestions"
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

impl super::Store {
    /// What suggesting rules for `subject` reads, from the pool (never
    /// under the writer: a publisher can grow the events read here): the
    /// person's history and rules, and up to `max_peers` peers who linked
    /// one of the same entities, with theirs.
    pub async fn suggestion_inputs(
        &self,
        subject: &SubjectId,
        max_peers: u32,
    ) -> Result<SuggestionInputs, StoreError> {
        let keys = self.row_keys()?;
        let mut conn = self.pool().acquire().await?;
        let me = history_of(&mut conn, &keys, subject).await?;
        let mine = rules_of(&mut conn, &keys, subject).await?;
        let entities: Vec<String> = me.linked.iter().cloned().collect();
        let peers = peers(&mut conn, &keys, subject, &entities, max_peers).await?;
        Ok(SuggestionInputs { me, mine, peers })
    }

    /// Up to `limit` commands of `recipient` after outbox position
    /// `after`, oldest first. Read outside any write transaction: opening
    /// them (key unwrap, decryption) does not hold the write lock. A row
    /// whose columns do not decode (edited behind the vault's back) comes
    /// back as [`UnreadableCommand`], in its place: one bad row must not
    /// stop every stream of the recipient at it.
    pub async fn pending_commands(
        &self,
        recipient: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Result<PendingCommand, UnreadableCommand>>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, command_id, subject_id, subject_seq, pairwise_token, source, event_type, \
             command, rule_id, payload, created_at_ms, deliveries FROM command_outbox \
             WHERE recipient = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(recipient.to_owned())
        .bind(u64_to_i64(after)?)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            // `seq > after` (after ≥ 0) selects only positions that fit.
            let seq = i64_to_u64(r.try_get("seq")?, "command_outbox.seq")?;
            out.push(
                pending_command(recipient, seq, r).map_err(|_| UnreadableCommand {
                    seq,
                    command_id: r.try_get("command_id").unwrap_or_default(),
                }),
            );
        }
        Ok(out)
    }

    /// A subject row, read outside any write transaction.
    pub async fn subject_row(&self, id: &SubjectId) -> Result<Option<SubjectRecord>, StoreError> {
        super::subject_by_id(self.pool(), self.row_mac.as_deref(), id).await
    }

    /// Whether `recipient` has unacknowledged commands after outbox
    /// position `after` (a read outside any write transaction, so idle
    /// command streams do not queue for the write lock).
    pub async fn has_pending_commands(
        &self,
        recipient: &str,
        after: u64,
    ) -> Result<bool, StoreError> {
        let n: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM command_outbox WHERE recipient = $1 AND seq > $2 LIMIT 1",
        )
        .bind(recipient.to_owned())
        .bind(u64_to_i64(after)?)
        .fetch_optional(self.pool())
        .await?;
        Ok(n.is_some())
    }
}

impl AuditedTx {
    /// Links `entity` to the person; false when it already was.
    pub async fn link_entity(
        &mut self,
        subject: &SubjectId,
        entity: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (v, mac) = seal_row(
            &*self.store.row_keys()?,
            &rowmac::entity_link(subject, entity, now_ms),
        );
        let n = sqlx::query(
            "INSERT INTO entity_links (subject_id, entity, linked_at_ms, mac_version, mac) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(subject.as_bytes().to_vec())
        .bind(entity.to_owned())
        .bind(now_ms)
        .bind(v)
        .bind(mac)
        .execute(self.conn().await?)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Unlinks `entity` and removes the rules naming it and, when it is a
    /// registered partner (`recipient`), the commands about the person
    /// still waiting for it; returns whether it was linked, how many rules
    /// and how many commands went.
    pub async fn unlink_entity(
        &mut self,
        subject: &SubjectId,
        entity: &str,
        recipient: Option<&str>,
    ) -> Result<(bool, u64, u64), StoreError> {
        let withdrawn = match recipient {
            Some(name) => {
                // Locked in id order first (PostgreSQL), as acknowledgements
                // take them: the recipient acknowledging some of these at
                // the same moment must not hold one this waits for while
                // waiting for one this holds.
                let sql = match self.store.backend {
                    super::Backend::Postgres => {
                        "DELETE FROM command_outbox WHERE command_id IN \
                         (SELECT command_id FROM command_outbox \
                          WHERE subject_id = $1 AND recipient = $2 ORDER BY command_id FOR UPDATE)"
                    }
                    super::Backend::Sqlite => {
                        "DELETE FROM command_outbox WHERE subject_id = $1 AND recipient = $2"
                    }
                };
                sqlx::query(sql)
                    .bind(subject.as_bytes().to_vec())
                    .bind(name.to_owned())
                    .execute(self.conn().await?)
                    .await?
                    .rows_affected()
            }
            None => 0,
        };
        let n = sqlx::query("DELETE FROM entity_links WHERE subject_id = $1 AND entity = $2")
            .bind(subject.as_bytes().to_vec())
            .bind(entity.to_owned())
            .execute(self.conn().await?)
            .await?
            .rows_affected();
        let r = sqlx::query(
            "DELETE FROM subject_rules WHERE subject_id = $1 AND (source = $2 OR target = $2)",
        )
        .bind(subject.as_bytes().to_vec())
        .bind(entity.to_owned())
        .execute(self.conn().await?)
        .await?
        .rows_affected();
        Ok((n == 1, r, withdrawn))
    }

    /// The person's linked entities `(entity, linked_at_ms)`, by entity.
    pub async fn links_of(
        &mut self,
        subject: &SubjectId,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT entity, linked_at_ms, mac_version, mac FROM entity_links \
             WHERE subject_id = $1 ORDER BY entity",
        )
        .bind(subject.as_bytes().to_vec())
        .fetch_all(self.conn().await?)
        .await?;
        let keys = self.store.row_keys()?;
        rows.iter()
            .map(|r| link_from_row(&keys, subject, r))
            .collect()
    }

    /// Whether the person linked `entity`.
    pub async fn is_linked(
        &mut self,
        subject: &SubjectId,
        entity: &str,
    ) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT entity, linked_at_ms, mac_version, mac FROM entity_links \
             WHERE subject_id = $1 AND entity = $2",
        )
        .bind(subject.as_bytes().to_vec())
        .bind(entity.to_owned())
        .fetch_optional(self.conn().await?)
        .await?;
        match row {
            None => Ok(false),
            Some(r) => link_from_row(&*self.store.row_keys()?, subject, &r).map(|_| true),
        }
    }

    /// Replaces the person's rules.
    pub async fn set_rules(
        &mut self,
        subject: &SubjectId,
        rules: &[Rule],
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM subject_rules WHERE subject_id = $1")
            .bind(subject.as_bytes().to_vec())
            .execute(self.conn().await?)
            .await?;
        let keys = self.store.row_keys()?;
        for r in rules {
            let (v, mac) = seal_row(&keys, &rowmac::rule(subject, r));
            sqlx::query(
                "INSERT INTO subject_rules (subject_id, rule_id, source, event_type, target, command, fields, \
                 mac_version, mac) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(subject.as_bytes().to_vec())
            .bind(r.id())
            .bind(r.source.clone())
            .bind(r.event_type.clone())
            .bind(r.target.clone())
            .bind(r.command.clone())
            .bind(list_text(r.fields.iter().map(String::as_str)))
            .bind(v)
            .bind(mac.clone())
            .execute(self.conn().await?)
            .await?;
        }
        Ok(())
    }

    /// The person's rules, by id.
    pub async fn rules_of(&mut self, subject: &SubjectId) -> Result<Vec<Rule>, StoreError> {
        let keys = self.store.row_keys()?;
        rules_of(self.conn().await?, &keys, subject).await
    }

    /// The person's rules that `source` reporting `event_type` triggers.
    pub async fn rules_for_event(
        &mut self,
        subject: &SubjectId,
        source: &str,
        event_type: &str,
    ) -> Result<Vec<Rule>, StoreError> {
        let rows = sqlx::query(
            "SELECT rule_id, source, event_type, target, command, fields, mac_version, mac FROM subject_rules \
             WHERE subject_id = $1 AND source = $2 AND event_type = $3 ORDER BY rule_id",
        )
        .bind(subject.as_bytes().to_vec())
        .bind(source.to_owned())
        .bind(event_type.to_owned())
        .fetch_all(self.conn().await?)
        .await?;
        let keys = self.store.row_keys()?;
        rows.iter()
            .map(|r| rule_from_row(&keys, subject, r))
            .collect()
    }

    /// Whether `source` already published `event_id`.
    pub async fn event_seen(&mut self, source: &str, event_id: &str) -> Result<bool, StoreError> {
        let n: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM events WHERE source = $1 AND event_id = $2")
                .bind(source.to_owned())
                .bind(event_id.to_owned())
                .fetch_optional(self.conn().await?)
                .await?;
        Ok(n.is_some())
    }

    /// Records an accepted event; false when its id was already taken.
    pub async fn insert_event(&mut self, e: &AcceptedEvent) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "INSERT INTO events (source, event_id, subject_id, event_type, outcome, commands, accepted_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(e.source.clone())
        .bind(e.event_id.clone())
        .bind(e.subject.as_bytes().to_vec())
        .bind(e.event_type.clone())
        .bind(e.outcome)
        .bind(i64::from(e.commands))
        .bind(e.accepted_at_ms)
        .execute(self.conn().await?)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Takes the outbox rows of `recipients` (sorted, so two transactions
    /// never wait on each other in opposite orders) until the transaction
    /// ends; see migration 0008. Call before [`Self::enqueue_command`].
    pub async fn lock_outboxes(&mut self, recipients: &[&str]) -> Result<(), StoreError> {
        let mut sorted = recipients.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        for r in sorted {
            sqlx::query(
                "INSERT INTO outbox_recipients (recipient, enqueued) VALUES ($1, 1) \
                 ON CONFLICT (recipient) DO UPDATE SET enqueued = outbox_recipients.enqueued + 1",
            )
            .bind(r.to_owned())
            .execute(self.conn().await?)
            .await?;
        }
        Ok(())
    }

    /// Writes a command to the outbox with the next sequence number of
    /// its (recipient, subject); returns that number.
    pub async fn enqueue_command(&mut self, c: &OutboxCommand) -> Result<u64, StoreError> {
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO command_counters (recipient, subject_id, last_seq) VALUES ($1, $2, 1) \
             ON CONFLICT (recipient, subject_id) DO UPDATE SET last_seq = command_counters.last_seq + 1 \
             RETURNING last_seq",
        )
        .bind(c.recipient.clone())
        .bind(c.subject.as_bytes().to_vec())
        .fetch_one(self.conn().await?)
        .await?;
        sqlx::query(
            "INSERT INTO command_outbox (command_id, recipient, subject_id, subject_seq, pairwise_token, \
             source, event_type, command, rule_id, payload, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(c.command_id.clone())
        .bind(c.recipient.clone())
        .bind(c.subject.as_bytes().to_vec())
        .bind(seq)
        .bind(c.pairwise_token.clone())
        .bind(c.source.clone())
        .bind(c.event_type.clone())
        .bind(c.command.clone())
        .bind(c.rule_id.clone())
        .bind(c.payload.clone())
        .bind(c.created_at_ms)
        .execute(self.conn().await?)
        .await?;
        i64_to_u64(seq, "command_counters.last_seq")
    }

    /// How many of `source`'s commands wait in `recipient`'s outbox,
    /// counted up to `cap`: the count reads at most `cap` entries of the
    /// (recipient, source) index, however many other publishers' commands
    /// wait there. Exact when called after [`Self::lock_outboxes`] took
    /// `recipient`'s row: no other transaction adds to that outbox before
    /// this one ends (acknowledgements may only lower it meanwhile).
    pub async fn outbox_waiting(
        &mut self,
        recipient: &str,
        source: &str,
        cap: u32,
    ) -> Result<u64, StoreError> {
        // Only the integer cap is formatted into the text, as a literal
        // LIMIT (see `ranking_sql` in store/matching.rs on bound LIMITs).
        let sql = format!(
            "SELECT COUNT(*) FROM (SELECT 1 FROM command_outbox \
             WHERE recipient = $1 AND source = $2 LIMIT {cap}) w"
        );
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(recipient.to_owned())
            .bind(source.to_owned())
            .fetch_one(self.conn().await?)
            .await?;
        i64_to_u64(n, "command_outbox count")
    }

    /// Counts a delivery of `recipient`'s commands at outbox positions
    /// `seqs` (rows acknowledged meanwhile are gone and not counted).
    pub async fn count_deliveries(
        &mut self,
        recipient: &str,
        seqs: &[u64],
    ) -> Result<(), StoreError> {
        // On PostgreSQL a row another transaction holds (an
        // acknowledgement from another of the recipient's consumers,
        // taking its rows in id order) is not counted rather than waited
        // for in seq order: the count is a hint, and waiting could
        // deadlock the two.
        let lock = match self.store.backend {
            super::Backend::Postgres => " FOR NO KEY UPDATE SKIP LOCKED",
            super::Backend::Sqlite => "",
        };
        for part in seqs.chunks(IN_CHUNK) {
            // Only numbered placeholders and the clause above are
            // formatted into the text.
            let sql = format!(
                "UPDATE command_outbox SET deliveries = deliveries + 1 WHERE recipient = $1 AND seq IN \
                 (SELECT seq FROM command_outbox WHERE recipient = $1 AND seq IN ({}) ORDER BY seq{lock})",
                placeholders(2, part.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(recipient.to_owned());
            for seq in part {
                q = q.bind(u64_to_i64(*seq)?);
            }
            q.execute(self.conn().await?).await?;
        }
        Ok(())
    }

    /// Acknowledges `recipient`'s commands among `ids`: they leave the
    /// outbox, sealed payload and all. Returns how many were acknowledged
    /// (an id acknowledged before is gone, so it counts zero).
    pub async fn ack_commands(
        &mut self,
        recipient: &str,
        ids: &[String],
    ) -> Result<u64, StoreError> {
        // Sorted, and each chunk's rows locked in id order before they go
        // (PostgreSQL), so two acknowledgements of overlapping ids (two of
        // the recipient's consumers) take their rows in one order.
        let mut ids: Vec<&String> = ids.iter().collect();
        ids.sort_unstable();
        ids.dedup();
        let lock = match self.store.backend {
            super::Backend::Postgres => " FOR UPDATE",
            super::Backend::Sqlite => "",
        };
        let mut n = 0;
        for part in ids.chunks(IN_CHUNK) {
            // Only numbered placeholders and the clause above are
            // formatted into the text.
            let sql = format!(
                "DELETE FROM command_outbox WHERE recipient = $1 AND command_id IN \
                 (SELECT command_id FROM command_outbox WHERE recipient = $1 \
                  AND command_id IN ({}) ORDER BY command_id{lock})",
                placeholders(2, part.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(recipient.to_owned());
            for id in part {
                q = q.bind((*id).clone());
            }
            n += q.execute(self.conn().await?).await?.rows_affected();
        }
        Ok(n)
    }

    /// The subject a partner's pairwise token names, if it still exists
    /// (else `None`, as for a token never issued). The row's MAC is
    /// checked: one pointing the token at another subject (a database
    /// writer's) fails the request rather than reach that subject's
    /// phone or rules.
    pub async fn subject_of_pairwise(
        &mut self,
        partner: &str,
        token: &str,
    ) -> Result<Option<SubjectId>, StoreError> {
        // subject id, MAC version, MAC, whether the subject still exists
        type TokenRow = (Vec<u8>, Option<i64>, Option<Vec<u8>>, i64);
        let row: Option<TokenRow> = sqlx::query_as(
            "SELECT t.subject_id, t.mac_version, t.mac, \
             CASE WHEN EXISTS (SELECT 1 FROM subjects s WHERE s.subject_id = t.subject_id) \
             THEN 1 ELSE 0 END \
             FROM pairwise_tokens t WHERE t.partner = $1 AND t.token = $2",
        )
        .bind(partner.to_owned())
        .bind(token.to_owned())
        .fetch_optional(self.conn().await?)
        .await?;
        let Some((b, v, mac, live)) = row else {
            return Ok(None);
        };
        let subject =
            SubjectId::from_slice(&b).ok_or(StoreError::Corrupt("pairwise_tokens.subject_id"))?;
        super::matching::check_pairwise(
            &*self.store.row_keys()?,
            partner,
            &subject,
            token,
            v,
            mac.as_deref(),
        )?;
        // Checked after the MAC, so that a forged row is reported as such.
        // A deletion removes a subject's tokens by storage key, so a row a
        // database writer moved off that key outlives it, MAC intact
        // (migration 0028): it names nobody.
        Ok((live == 1).then_some(subject))
    }
}

/// The person's engagement history: linked entities, and the
/// (publisher, event type) pairs of events from linked publishers.
async fn history_of(
    conn: &mut AnyConnection,
    keys: &RowMac,
    subject: &SubjectId,
) -> Result<History, StoreError> {
    let mut h = histories(conn, keys, &[*subject]).await?;
    Ok(h.remove(subject).unwrap_or_default())
}

/// Rows of `head IN (…)` for at most [`IN_CHUNK`] subjects. `head` is
/// a constant query ending in a subject id column; only numbered
/// placeholders are formatted into the text, every id is bound.
async fn rows_for(
    conn: &mut AnyConnection,
    head: &'static str,
    part: &[SubjectId],
) -> Result<Vec<AnyRow>, StoreError> {
    let sql = format!("{head} IN ({})", placeholders(1, part.len()));
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for s in part {
        q = q.bind(s.as_bytes().to_vec());
    }
    Ok(q.fetch_all(&mut *conn).await?)
}

/// An outbox row whose columns do not decode: where it is, and its id if
/// that much reads (for the audit record that says it was skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableCommand {
    /// Its outbox position.
    pub seq: u64,
    /// Its command id (empty when that does not read either).
    pub command_id: String,
}

/// One outbox row of `recipient` at position `seq`.
fn pending_command(recipient: &str, seq: u64, r: &AnyRow) -> Result<PendingCommand, StoreError> {
    let deliveries: i64 = r.try_get("deliveries")?;
    Ok(PendingCommand {
        seq,
        subject_seq: i64_to_u64(r.try_get("subject_seq")?, "command_outbox.subject_seq")?,
        deliveries: u32::try_from(deliveries.saturating_add(1)).unwrap_or(u32::MAX),
        command: OutboxCommand {
            command_id: r.try_get("command_id")?,
            recipient: recipient.to_owned(),
            subject: subject_col(r, "subject_id")?,
            pairwise_token: r.try_get("pairwise_token")?,
            source: r.try_get("source")?,
            event_type: r.try_get("event_type")?,
            command: r.try_get("command")?,
            rule_id: r.try_get("rule_id")?,
            payload: r.try_get("payload")?,
            created_at_ms: r.try_get("created_at_ms")?,
        },
    })
}

/// Most event rows a suggestion reads per chunk of people (see
/// `histories`).
const EVENT_ROWS_READ: u32 = 20_000;

/// Histories of `subjects`.
async fn histories(
    conn: &mut AnyConnection,
    keys: &RowMac,
    subjects: &[SubjectId],
) -> Result<HashMap<SubjectId, History>, StoreError> {
    let mut out: HashMap<SubjectId, History> = HashMap::new();
    for part in subjects.chunks(IN_CHUNK) {
        let links = "SELECT subject_id, entity, linked_at_ms, mac_version, mac FROM entity_links \
                         WHERE subject_id";
        for r in rows_for(conn, links, part).await? {
            let s = subject_col(&r, "subject_id")?;
            // Histories only feed suggestions: a forged link is left
            // out (it suggests nothing) rather than failing the call.
            let Some((entity, _)) = verified(link_from_row(keys, &s, &r))? else {
                continue;
            };
            out.entry(s).or_default().linked.insert(entity);
        }
        // At most EVENT_ROWS_READ rows per chunk of people, whatever they
        // hold: a publisher can send one person millions of events, and
        // this read must stay short (a partial history only makes a
        // suggestion less likely).
        let events = concat!(
            "SELECT subject_id, source, event_type FROM events ",
            "WHERE outcome <> '",
            ignored_unlinked!(),
            "' AND subject_id"
        );
        let sql = format!(
            "SELECT DISTINCT subject_id, source, event_type FROM ({events} IN ({}) LIMIT {EVENT_ROWS_READ}) e",
            placeholders(1, part.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for s in part {
            q = q.bind(s.as_bytes().to_vec());
        }
        for r in q.fetch_all(&mut *conn).await? {
            let s = subject_col(&r, "subject_id")?;
            out.entry(s)
                .or_default()
                .events
                .insert((r.try_get("source")?, r.try_get("event_type")?));
        }
    }
    Ok(out)
}

/// Up to `limit` other people who linked one of `entities` and hold
/// rules, with their histories and rules.
async fn peers(
    conn: &mut AnyConnection,
    keys: &RowMac,
    me: &SubjectId,
    entities: &[String],
    limit: u32,
) -> Result<Vec<(History, Vec<Rule>)>, StoreError> {
    if entities.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT DISTINCT l.subject_id FROM entity_links l WHERE l.entity IN ({}) \
             AND l.subject_id <> $1 AND EXISTS (SELECT 1 FROM subject_rules r WHERE r.subject_id = l.subject_id) \
             ORDER BY l.subject_id LIMIT {limit}",
        placeholders(2, entities.len())
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(me.as_bytes().to_vec());
    for e in entities {
        q = q.bind(e.clone());
    }
    let ids: Vec<SubjectId> = q
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| subject_col(r, "subject_id"))
        .collect::<Result<_, _>>()?;
    let mut histories = histories(conn, keys, &ids).await?;
    let mut rules: HashMap<SubjectId, Vec<Rule>> = HashMap::new();
    for part in ids.chunks(IN_CHUNK) {
        let rules_sql = concat!(
            "SELECT subject_id, rule_id, source, event_type, target, command, fields, mac_version, mac ",
            "FROM subject_rules WHERE subject_id"
        );
        for r in rows_for(conn, rules_sql, part).await? {
            let s = subject_col(&r, "subject_id")?;
            // Another person's rules only shape suggestions: a forged
            // one is left out.
            if let Some(rule) = verified(rule_from_row(keys, &s, &r))? {
                rules.entry(s).or_default().push(rule);
            }
        }
    }
    Ok(ids
        .iter()
        .map(|s| {
            (
                histories.remove(s).unwrap_or_default(),
                rules.remove(s).unwrap_or_default(),
            )
        })
        .collect())
}

/// The person's rules, checked against their MACs.
async fn rules_of(
    conn: &mut AnyConnection,
    keys: &RowMac,
    subject: &SubjectId,
) -> Result<Vec<Rule>, StoreError> {
    let rows = sqlx::query(
        "SELECT rule_id, source, event_type, target, command, fields, mac_version, mac FROM subject_rules \
         WHERE subject_id = $1 ORDER BY rule_id",
    )
    .bind(subject.as_bytes().to_vec())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| rule_from_row(keys, subject, r))
        .collect()
}
