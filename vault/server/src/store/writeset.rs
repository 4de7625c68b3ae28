//! Write sets: the rows a request only inserts, applied for many requests
//! at once.
//!
//! Most writes (a new subject, its packets and blind indexes, a pairwise
//! token, every audit leaf) are plain inserts that read nothing back. An
//! [`super::AuditedTx`] keeps them here instead of sending each statement
//! at once; a request that never needs to read inside its transaction
//! hands its whole write set to the [`Applier`] at commit. The applier
//! takes every write set waiting, applies them with one multi-row
//! statement per table, commits, and answers each request once the commit
//! is durable. A statement costs a round trip (on SQLite a hand-off to
//! the connection's worker thread, on PostgreSQL a parse, plan and
//! network turn), so this turns about eight round trips per request into
//! about eight per batch.
//!
//! A request that does read (an update, a delete, a consent) takes a
//! connection as before; its pending rows are flushed on it before the
//! first statement, so it always reads its own writes.
//!
//! Failure isolation: if a batch's statements fail, the batch is undone
//! and each write set is applied again on its own, so one bad request
//! fails alone. A failed COMMIT fails every member (its outcome is
//! unknown, and a retry could write a request twice).

use std::sync::Arc;

use sqlx::any::AnyArguments;
use sqlx::{Any, AnyConnection, AnyPool};
use tokio::sync::{Mutex, OwnedSemaphorePermit, mpsc, oneshot};
use tokio::time::Instant;

use super::writer::GroupWriter;
use super::{Backend, StoreError};

/// Write sets applied together at most (also the SQLite batch bound).
const MAX_GROUP: usize = super::writer::MAX_BATCH;

/// Rows per statement. Parameters stay far below both backends' limits
/// (SQLite 32,766, PostgreSQL 65,535), and a few fixed sizes keep the
/// number of distinct prepared statements small.
const ROWS_PER_STATEMENT: usize = 64;

/// Most bound values of a SQLite write script kept prepared on the writer
/// connection (sqlx's statement cache, 100 statements per connection).
/// Parsing the script was a fifth of the writer thread's time, and the
/// scripts of lone requests and small groups repeat (a Match's leaf, a
/// Release's challenge use, receipt and leaf), so those are prepared once:
/// +17 % full releases/s (docs/BENCHMARKS.md, "The writer's scripts
/// prepared once"). The bound keeps the cache's memory small (about
/// 110 bytes of prepared statement per value, so at most about 11 MB)
/// and keeps the one-off shapes of big groups, which never repeat, from
/// pushing the writer's other statements out of the cache.
const CACHED_SCRIPT_VALUES: usize = 1000;

/// PostgreSQL appliers running at once, each on its own connection:
/// batches still commit in parallel, as the requests did.
const POSTGRES_APPLIERS: usize = 4;

/// One bound value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Value {
    Int(i64),
    OptInt(Option<i64>),
    Text(String),
    OptText(Option<String>),
    Bytes(Vec<u8>),
}

/// A table a write set inserts into (one, [`Table::ChallengeUses`],
/// updates), in the order they are applied (parents before children, for
/// foreign keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Table {
    Subjects,
    Packets,
    MatchSubjects,
    /// [`Table::MatchSubjects`] of a subject the same write set creates.
    NewMatchSubjects,
    MatchIndex,
    /// [`Table::MatchIndex`] of a subject the same write set creates.
    NewMatchIndex,
    Pairwise,
    /// [`Table::Pairwise`] of a subject the same write set creates.
    NewPairwise,
    Challenges,
    Consents,
    ChallengeUses,
    Receipts,
    Leaves,
}

impl Table {
    const ALL: [Self; 13] = [
        Self::Subjects,
        Self::Packets,
        Self::MatchSubjects,
        Self::NewMatchSubjects,
        Self::MatchIndex,
        Self::NewMatchIndex,
        Self::Pairwise,
        Self::NewPairwise,
        Self::Challenges,
        Self::Consents,
        Self::ChallengeUses,
        Self::Receipts,
        Self::Leaves,
    ];

    /// The statement up to `VALUES`, the number of columns, and what
    /// follows the rows.
    fn shape(self, backend: Backend) -> (&'static str, usize, &'static str) {
        match self {
            // The storage key and the creating request last: the id stays
            // first ([`WriteSet::creates`]).
            Self::Subjects => (
                concat!(
                    "INSERT INTO subjects (",
                    subject_columns!(),
                    ", subject_key, created_request) VALUES "
                ),
                12,
                "",
            ),
            Self::Packets => (
                "INSERT INTO packets (subject_key, subject_id, seq, field_name, packet) VALUES ",
                5,
                "",
            ),
            // The storage key last (migration 0027), so that the first
            // two values stay the (domain, subject) that [`statements`]
            // dedupes by.
            Self::MatchSubjects => (
                "INSERT INTO match_subjects (domain, subject_id, fields, signature, mac_version, \
                 mac, subject_key) VALUES ",
                7,
                " ON CONFLICT (domain, subject_key, subject_id) DO UPDATE \
                 SET fields = excluded.fields, signature = excluded.signature, \
                 mac_version = excluded.mac_version, mac = excluded.mac",
            ),
            // The rows of a subject created in the same write set: no
            // other transaction can hold or lock a row naming it, so they
            // are plain inserts. A conflict clause costs PostgreSQL a
            // speculative insertion (a unique-index probe before the
            // insert, another after), and the pairwise token's `EXISTS`
            // a row lock on the subject just inserted: together about a
            // sixth of its time per create (docs/BENCHMARKS.md, "Fewer
            // statements per create on PostgreSQL"). [`statements`] drops
            // a new subject's repeated keys, which the conflict clause
            // skipped.
            Self::NewMatchSubjects => (
                "INSERT INTO match_subjects (domain, subject_id, fields, signature, mac_version, \
                 mac, subject_key) VALUES ",
                7,
                "",
            ),
            Self::NewMatchIndex => (
                "INSERT INTO match_index (domain, bidx, subject_id, field, key_version, \
                 subject_key) VALUES ",
                6,
                "",
            ),
            // The storage key last (migration 0028), so that the first
            // two values stay the (subject, partner) [`statements`]
            // dedupes by.
            Self::NewPairwise => (
                "INSERT INTO pairwise_tokens (subject_id, partner, token, mac_version, mac, \
                 subject_key) VALUES ",
                6,
                "",
            ),
            // Conflicts are a re-index of the same value (or a 2^-64
            // chance collision inside one key): the row already says what
            // it would say.
            Self::MatchIndex => (
                "INSERT INTO match_index (domain, bidx, subject_id, field, key_version, \
                 subject_key) VALUES ",
                6,
                " ON CONFLICT DO NOTHING",
            ),
            // Only for a live subject: a match reveals candidates it found
            // before its write, and a deletion may have committed since.
            // On PostgreSQL the subject's row is locked too (KEY SHARE,
            // which a deletion's FOR UPDATE waits for): a deletion
            // committing before is seen, one starting later removes the
            // token with the rest, and a subject whose deletion is under
            // way (its row held FOR UPDATE, which only a deletion takes)
            // counts as deleted: SKIP LOCKED, because this insert runs in
            // a batch of every partner's writes, and waiting for a
            // deletion of a person with a long history (its events,
            // commands and receipts go in the same transaction) would
            // stall all of them, which a partner could bring about on
            // purpose. If that deletion rolls back, the match simply did
            // not answer with that person. A
            // concurrent match may have made the token first; the request
            // reads back whichever was stored. The subject comes first, so
            // PostgreSQL's sorted rows lock subjects in ascending order,
            // as every other multi-subject locker does.
            // The storage key is the subject row's (migration 0028): the
            // subject was read from the pool, not by this transaction.
            Self::Pairwise => (
                "INSERT INTO pairwise_tokens (subject_id, partner, token, mac_version, mac, \
                 subject_key) \
                 SELECT v.column1, v.column2, v.column3, v.column4, v.column5, \
                 (SELECT COALESCE(k.subject_key, k.subject_id) FROM subjects k \
                  WHERE k.subject_id = v.column1) FROM (VALUES ",
                5,
                match backend {
                    Backend::Sqlite => {
                        ") v WHERE EXISTS (SELECT 1 FROM subjects s \
                         WHERE s.subject_id = v.column1) \
                         ON CONFLICT (partner, subject_key, subject_id) DO NOTHING"
                    }
                    Backend::Postgres => {
                        ") v WHERE EXISTS (SELECT 1 FROM subjects s \
                         WHERE s.subject_id = v.column1 FOR KEY SHARE SKIP LOCKED) \
                         ON CONFLICT (partner, subject_key, subject_id) DO NOTHING"
                    }
                },
            ),
            // A fresh random key: a conflict fails the request (alone).
            Self::Challenges => (
                "INSERT INTO consent_challenges (challenge, partner, subject_id, expires_at_ms, \
                 mac_version, mac) VALUES ",
                6,
                "",
            ),
            // A presented consent: a conflict (the id presented before)
            // fails the request, never passes silently.
            Self::Consents => (
                concat!("INSERT INTO consents (", consent_columns!(), ") VALUES "),
                16,
                "",
            ),
            // A challenge marked used (re-MACed as used). Queued only by
            // a SQLite request that read it unused on the writer in the
            // same transaction (`AuditedTx::claim_grant` refuses
            // otherwise), so the condition always holds there. It cannot
            // refuse anything: a row it does not match is skipped, not an
            // error.
            Self::ChallengeUses => (
                "UPDATE consent_challenges SET used_at_ms = v.column1, mac_version = v.column2, \
                 mac = v.column3 FROM (VALUES ",
                4,
                ") AS v WHERE consent_challenges.challenge = v.column4 \
                 AND consent_challenges.used_at_ms IS NULL",
            ),
            Self::Receipts => (
                "INSERT INTO consent_receipts (receipt_id, consent_id, subject_id, partner, \
                 purpose, fields, released_at_ms, grant_hash) VALUES ",
                8,
                "",
            ),
            Self::Leaves => (
                "INSERT INTO audit_log (time_ms, actor, action, subject, outcome, detail, \
                 request_id, head_seq, leaf, key_version, nonce, mac) VALUES ",
                12,
                "",
            ),
        }
    }

    /// Whether this table's statement may run beside the others of a
    /// batch in one PostgreSQL statement ([`joined_sql`]): its
    /// sub-statements share one snapshot and none sees another's rows, so
    /// only a statement that reads no row the batch writes may join. A
    /// challenge use updates a row a challenge insert could have made, so
    /// it runs on its own. A pairwise token's `EXISTS` reads its subject,
    /// which another member cannot have created: a subject's id is known
    /// only after its create committed, and its creator's own token is a
    /// [`Table::NewPairwise`] row. (Were it so, the token would be left
    /// out and the match read back none and not answer: never a token for
    /// nobody.) PostgreSQL has no foreign keys here whose checks would need
    /// the parents first.
    fn joins_one_statement(self) -> bool {
        self != Self::ChallengeUses
    }

    /// Whether rows of this table may wait on a concurrent transaction's
    /// uncommitted row (a conflict clause): on PostgreSQL such rows are
    /// inserted in key order, so two batches never wait on each other in
    /// a cycle within one table. Across tables the order is the fixed
    /// order of [`Table::ALL`] for batches run statement by statement, and
    /// PostgreSQL's own for one statement ([`joined_sql`]); no two write
    /// sets share keys in two such tables today, and should a cycle form,
    /// PostgreSQL ends it with a deadlock error (an `ERROR`), after which
    /// the members go one by one.
    fn may_conflict(self) -> bool {
        !self.shape(Backend::Postgres).2.is_empty()
    }
}

/// Rows one request inserts, by table.
#[derive(Debug, Default)]
pub(super) struct WriteSet {
    subjects: Vec<Vec<Value>>,
    packets: Vec<Vec<Value>>,
    match_subjects: Vec<Vec<Value>>,
    new_match_subjects: Vec<Vec<Value>>,
    match_index: Vec<Vec<Value>>,
    new_match_index: Vec<Vec<Value>>,
    pairwise: Vec<Vec<Value>>,
    new_pairwise: Vec<Vec<Value>>,
    challenges: Vec<Vec<Value>>,
    consents: Vec<Vec<Value>>,
    challenge_uses: Vec<Vec<Value>>,
    receipts: Vec<Vec<Value>>,
    leaves: Vec<Vec<Value>>,
}

impl WriteSet {
    fn rows(&self, t: Table) -> &[Vec<Value>] {
        match t {
            Table::Subjects => &self.subjects,
            Table::Packets => &self.packets,
            Table::MatchSubjects => &self.match_subjects,
            Table::NewMatchSubjects => &self.new_match_subjects,
            Table::MatchIndex => &self.match_index,
            Table::NewMatchIndex => &self.new_match_index,
            Table::Pairwise => &self.pairwise,
            Table::NewPairwise => &self.new_pairwise,
            Table::Challenges => &self.challenges,
            Table::Consents => &self.consents,
            Table::ChallengeUses => &self.challenge_uses,
            Table::Receipts => &self.receipts,
            Table::Leaves => &self.leaves,
        }
    }

    /// Adds a row of `t` (as many values as its columns, in their order).
    pub(super) fn push(&mut self, t: Table, row: Vec<Value>) {
        debug_assert_eq!(row.len(), t.shape(Backend::Sqlite).1, "{t:?}");
        match t {
            Table::Subjects => self.subjects.push(row),
            Table::Packets => self.packets.push(row),
            Table::MatchSubjects => self.match_subjects.push(row),
            Table::NewMatchSubjects => self.new_match_subjects.push(row),
            Table::MatchIndex => self.match_index.push(row),
            Table::NewMatchIndex => self.new_match_index.push(row),
            Table::Pairwise => self.pairwise.push(row),
            Table::NewPairwise => self.new_pairwise.push(row),
            Table::Challenges => self.challenges.push(row),
            Table::Consents => self.consents.push(row),
            Table::ChallengeUses => self.challenge_uses.push(row),
            Table::Receipts => self.receipts.push(row),
            Table::Leaves => self.leaves.push(row),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        Table::ALL.iter().all(|t| self.rows(*t).is_empty())
    }

    /// Whether this write set inserts subject `id`'s row (then its other
    /// rows go to the `New…` tables). Once a set is flushed to its
    /// connection it is empty and says no: the rows that follow take the
    /// conflict-checked tables, which are always right, only slower.
    pub(super) fn creates(&self, id: &[u8]) -> bool {
        self.subjects
            .iter()
            .any(|r| matches!(r.first(), Some(Value::Bytes(b)) if b.as_slice() == id))
    }
}

/// The rows of `sets`, by table in the fixed order, in chunks of at most
/// [`ROWS_PER_STATEMENT`] (sorted where they may wait on another
/// transaction, on PostgreSQL).
fn statements<'s>(backend: Backend, sets: &[&'s WriteSet]) -> Vec<(Table, Vec<&'s Vec<Value>>)> {
    let mut out = Vec::new();
    for t in Table::ALL {
        let mut rows: Vec<&Vec<Value>> = sets.iter().flat_map(|s| s.rows(t)).collect();
        match t {
            // An upsert: one statement may not touch a key twice on
            // PostgreSQL. The last row of a key (domain, subject) counts.
            Table::MatchSubjects | Table::NewMatchSubjects => {
                rows.reverse();
                keep_first_of_each_key(&mut rows, 2);
                rows.reverse();
            }
            // Plain inserts of a new subject may repeat a key (domain,
            // index, subject; subject, partner); the first row stays, as
            // the conflict clauses of the other forms keep it.
            Table::NewMatchIndex => keep_first_of_each_key(&mut rows, 3),
            Table::NewPairwise => keep_first_of_each_key(&mut rows, 2),
            _ => {}
        }
        if backend == Backend::Postgres && t.may_conflict() {
            rows.sort();
        }
        for part in rows.chunks(ROWS_PER_STATEMENT) {
            out.push((t, part.to_vec()));
        }
    }
    out
}

/// Drops each row whose first `key` values an earlier row already had.
fn keep_first_of_each_key(rows: &mut Vec<&Vec<Value>>, key: usize) {
    let mut seen = std::collections::HashSet::new();
    rows.retain(|r| seen.insert(r.get(..key)));
}

/// Appends one multi-row INSERT of `rows` rows of `t` to `sql`; `n` counts
/// the placeholders so far (PostgreSQL numbers them).
fn push_insert(sql: &mut String, backend: Backend, t: Table, rows: usize, n: &mut usize) {
    let (head, width, tail) = t.shape(backend);
    sql.push_str(head);
    push_value_rows(sql, backend, rows, width, n);
    sql.push_str(tail);
}

/// Appends `rows` parenthesised rows of `width` placeholders to `sql`; `n`
/// counts the placeholders so far.
pub(super) fn push_value_rows(
    sql: &mut String,
    backend: Backend,
    rows: usize,
    width: usize,
    n: &mut usize,
) {
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..width {
            if c > 0 {
                sql.push_str(", ");
            }
            *n += 1;
            match backend {
                // Anonymous: sqlx's SQLite driver binds them by position.
                // A `$n` is a named parameter to SQLite, looked up among
                // the statement's others as it is parsed (quadratic in a
                // statement's parameters).
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => {
                    sql.push('$');
                    sql.push_str(&n.to_string());
                }
            }
        }
        sql.push(')');
    }
}

fn bind_rows<'q>(
    mut q: sqlx::query::Query<'q, Any, AnyArguments>,
    rows: &[&Vec<Value>],
) -> sqlx::query::Query<'q, Any, AnyArguments> {
    for row in rows {
        for v in row.iter() {
            q = v.bind_to(q);
        }
    }
    q
}

impl Value {
    /// Binds this value as the query's next argument.
    pub(super) fn bind_to<'q>(
        &self,
        q: sqlx::query::Query<'q, Any, AnyArguments>,
    ) -> sqlx::query::Query<'q, Any, AnyArguments> {
        match self {
            Self::Int(x) => q.bind(*x),
            Self::OptInt(x) => q.bind(*x),
            Self::Text(x) => q.bind(x.clone()),
            Self::OptText(x) => q.bind(x.clone()),
            Self::Bytes(x) => q.bind(x.clone()),
        }
    }
}

/// Most bound values of one PostgreSQL statement joining a batch's
/// inserts ([`joined_sql`]): far below its 65,535, and small enough that
/// the statement stays a modest parse.
const JOINED_VALUES: usize = 4096;

/// PostgreSQL: `parts` as one statement, every insert but the last in a
/// `WITH` clause (`WITH w0 AS (INSERT …), w1 AS (INSERT …) INSERT …`),
/// placeholders numbered on across them, or `None` when a part may not
/// join ([`Table::joins_one_statement`]) or the values pass
/// [`JOINED_VALUES`]. Every statement is a round trip, a parse and an
/// executor start on both sides, and a batch of creates has six inserts;
/// the statement is as atomic as a transaction.
///
/// A table's rows make one sub-statement, not one per
/// [`ROWS_PER_STATEMENT`] chunk: PostgreSQL runs the sub-statements in an
/// order of its own (the main one first, then the `WITH` clauses from the
/// last), so chunks of one table would take their keys out of the sorted
/// order that keeps concurrent batches from waiting on each other in a
/// cycle. `parts` holds the chunks of a table next to each other, so the
/// rows bound in `parts` order match.
fn joined_sql(parts: &[(Table, Vec<&Vec<Value>>)]) -> Option<String> {
    let values: usize = parts
        .iter()
        .flat_map(|(_, r)| r.iter())
        .map(|r| r.len())
        .sum();
    if parts.is_empty()
        || values > JOINED_VALUES
        || !parts.iter().all(|(t, _)| t.joins_one_statement())
        || token_of_a_batch_subject(parts)
    {
        return None;
    }
    let mut tables: Vec<(Table, usize)> = Vec::new();
    for (t, rows) in parts {
        match tables.last_mut() {
            Some((last, n)) if last == t => *n += rows.len(),
            _ => tables.push((*t, rows.len())),
        }
    }
    let mut sql = String::new();
    let mut n = 0;
    let last = tables.len() - 1;
    for (i, (t, rows)) in tables.iter().enumerate() {
        if i < last {
            sql.push_str(if i == 0 { "WITH " } else { ", " });
            sql.push_str(&format!("w{i} AS ("));
            push_insert(&mut sql, Backend::Postgres, *t, *rows, &mut n);
            sql.push_str(") ");
        } else {
            push_insert(&mut sql, Backend::Postgres, *t, *rows, &mut n);
        }
    }
    Some(sql)
}

/// Whether a [`Table::Pairwise`] row names a subject the batch inserts:
/// its `EXISTS` would not see that row from a sibling sub-statement, and
/// the token would be left out. No caller does that today (a new
/// subject's token is a [`Table::NewPairwise`] row); should one, the
/// batch runs statement by statement instead.
fn token_of_a_batch_subject(parts: &[(Table, Vec<&Vec<Value>>)]) -> bool {
    let created: std::collections::HashSet<&Value> = parts
        .iter()
        .filter(|(t, _)| *t == Table::Subjects)
        .flat_map(|(_, rows)| rows.iter().filter_map(|r| r.first()))
        .collect();
    !created.is_empty()
        && parts
            .iter()
            .filter(|(t, _)| *t == Table::Pairwise)
            .flat_map(|(_, rows)| rows.iter().filter_map(|r| r.first()))
            .any(|s| created.contains(s))
}

/// [`joined_sql`]'s statement with `rows` bound. Kept prepared on its
/// connection (sqlx's statement cache) up to [`CACHED_SCRIPT_VALUES`]
/// values, as the SQLite scripts are: the shapes of small batches repeat,
/// those of big ones hardly ever, and each would hold a prepared statement
/// on a PostgreSQL backend until pushed out.
fn joined_query<'q>(
    sql: String,
    rows: &[&Vec<Value>],
) -> sqlx::query::Query<'q, Any, AnyArguments> {
    let values: usize = rows.iter().map(|r| r.len()).sum();
    bind_rows(sqlx::query(sqlx::AssertSqlSafe(sql)), rows)
        .persistent(values <= CACHED_SCRIPT_VALUES)
}

/// Inserts the rows of `sets` on `conn`: one multi-row statement per
/// table (and per [`ROWS_PER_STATEMENT`] rows), tables in a fixed order;
/// on PostgreSQL one statement for all when they may ([`joined_sql`]).
pub(super) async fn apply(
    conn: &mut AnyConnection,
    backend: Backend,
    sets: &[&WriteSet],
) -> Result<(), StoreError> {
    let parts = statements(backend, sets);
    if backend == Backend::Postgres
        && let Some(sql) = joined_sql(&parts)
    {
        let all: Vec<&Vec<Value>> = parts.iter().flat_map(|(_, r)| r.iter().copied()).collect();
        // Only placeholders are formatted in; every value is bound.
        joined_query(sql, &all).execute(&mut *conn).await?;
        return Ok(());
    }
    for (t, rows) in parts {
        let mut sql = String::new();
        push_insert(&mut sql, backend, t, rows.len(), &mut 0);
        // Only placeholders are formatted in; every value is bound.
        let q = bind_rows(sqlx::query(sqlx::AssertSqlSafe(sql)), &rows);
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// SQLite only: runs `before` (may be empty), the inserts of `sets` and
/// `after` as one script, in one call to the connection's worker thread
/// (every call is a hand-off between threads, which costs more than the
/// inserts). It stops at the first statement that fails; the caller
/// undoes the rest with the savepoint it opened.
pub(super) async fn apply_script(
    conn: &mut AnyConnection,
    before: &str,
    sets: &[&WriteSet],
    after: &str,
) -> Result<(), StoreError> {
    let parts = statements(Backend::Sqlite, sets);
    let mut sql = String::from(before);
    for (t, rows) in &parts {
        if !sql.is_empty() {
            sql.push_str("; ");
        }
        push_insert(&mut sql, Backend::Sqlite, *t, rows.len(), &mut 0);
    }
    if !sql.is_empty() {
        sql.push_str("; ");
    }
    sql.push_str(after);
    let all: Vec<&Vec<Value>> = parts.iter().flat_map(|(_, r)| r.iter().copied()).collect();
    // Only placeholders are formatted in; every value is bound, in order
    // across the script's statements. A small script is prepared once and
    // kept (see [`CACHED_SCRIPT_VALUES`]); a big one is prepared for this
    // batch only.
    let q = bind_rows(sqlx::query(sqlx::AssertSqlSafe(sql)), &all)
        .persistent(all.iter().map(|r| r.len()).sum::<usize>() <= CACHED_SCRIPT_VALUES);
    q.execute(conn).await?;
    Ok(())
}

/// A write set handed to the applier, with whom to answer.
#[derive(Debug)]
pub(super) struct Submitted {
    pub(super) set: WriteSet,
    /// Not applied if it is still queued when this passes.
    pub(super) deadline: Option<Instant>,
    pub(super) done: oneshot::Sender<Result<(), StoreError>>,
    /// The request's place in the writer queue, held until its rows are
    /// applied (a batch waiting for its commit is bounded by its size).
    pub(super) _slot: OwnedSemaphorePermit,
}

impl Submitted {
    /// Answers a request whose deadline passed while it was queued; the
    /// rest go on.
    pub(super) fn expired(self) -> Option<Self> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = self.done.send(Err(StoreError::Deadline));
            None
        } else {
            Some(self)
        }
    }
}

/// Takes write sets from requests and applies them in batches.
#[derive(Debug)]
pub(super) struct Applier {
    queue: mpsc::Sender<Submitted>,
}

impl Applier {
    /// Starts the applier tasks: on SQLite one, on the group-commit
    /// writer; on PostgreSQL a few, each with its own transactions from
    /// the pool. They end when the last store handle is dropped.
    pub(super) fn start(
        backend: Backend,
        pool: &AnyPool,
        writer: Option<Arc<GroupWriter>>,
        sizes: prometheus_client::metrics::histogram::Histogram,
    ) -> Self {
        // The writer queue's own bound (every submitted set holds a place
        // in it) also bounds this channel.
        let (queue, rx) = mpsc::channel(super::WRITE_QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        match (backend, writer) {
            (Backend::Sqlite, Some(w)) => {
                tokio::spawn(async move {
                    while let Some(group) = next_group(&rx).await {
                        w.apply_group(group).await;
                    }
                });
            }
            _ => {
                for _ in 0..POSTGRES_APPLIERS {
                    let rx = Arc::clone(&rx);
                    let pool = pool.clone();
                    let sizes = sizes.clone();
                    tokio::spawn(async move {
                        while let Some(group) = next_group(&rx).await {
                            apply_own_transactions(&pool, group, &sizes).await;
                        }
                    });
                }
            }
        }
        Self { queue }
    }

    /// Queues `set` and waits until it is durable (or failed).
    pub(super) async fn submit(
        &self,
        set: WriteSet,
        deadline: Option<Instant>,
        slot: OwnedSemaphorePermit,
    ) -> Result<(), StoreError> {
        let (done, answer) = oneshot::channel();
        let item = Submitted {
            set,
            deadline,
            done,
            _slot: slot,
        };
        self.queue.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::QueueFull(super::WRITE_QUEUE),
            // The applier task is gone: an alarm, not a busy vault.
            mpsc::error::TrySendError::Closed(_) => {
                StoreError::Batch("the write applier went away".into())
            }
        })?;
        answer
            .await
            .map_err(|_| StoreError::Batch("the write applier went away".into()))?
    }
}

/// Waits for one write set, then takes every other one already waiting
/// (up to [`MAX_GROUP`]); `None` once no store handle is left.
async fn next_group(rx: &Mutex<mpsc::Receiver<Submitted>>) -> Option<Vec<Submitted>> {
    let mut rx = rx.lock().await;
    let first = rx.recv().await?;
    let mut group = Vec::with_capacity(16);
    group.extend(first.expired());
    while group.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(s) => group.extend(s.expired()),
            Err(_) => break,
        }
    }
    Some(group)
}

/// How a PostgreSQL batch ended.
enum BatchEnd {
    Committed,
    /// Certainly not committed: each member goes on its own.
    RolledBack,
    /// Nothing was sent, or it failed before doing anything.
    Failed(String),
    /// It may have committed: never retried.
    Unknown(String),
}

/// PostgreSQL: the group as one statement when its inserts make one
/// ([`joined_sql`]), otherwise in one transaction; if that fails before
/// its commit, each member in a transaction of its own.
async fn apply_own_transactions(
    pool: &AnyPool,
    group: Vec<Submitted>,
    sizes: &prometheus_client::metrics::histogram::Histogram,
) {
    if group.is_empty() {
        return;
    }
    let mut conn = match pool.acquire().await {
        Ok(c) => c,
        Err(e) => return fail_all(group, &e.to_string()),
    };
    // Waiting for a connection may have taken a member past its deadline.
    let group: Vec<Submitted> = group.into_iter().filter_map(Submitted::expired).collect();
    if group.is_empty() {
        return;
    }
    let sets: Vec<&WriteSet> = group.iter().map(|s| &s.set).collect();
    let parts = statements(Backend::Postgres, &sets);
    let end = match joined_sql(&parts) {
        Some(sql) => one_statement(&mut conn, sql, &parts).await,
        None => in_transaction(&mut conn, &sets).await,
    };
    drop(parts);
    drop(sets);
    match end {
        BatchEnd::Committed => {
            #[allow(clippy::cast_precision_loss)] // at most MAX_GROUP
            sizes.observe(group.len() as f64);
            for s in group {
                let _ = s.done.send(Ok(()));
            }
        }
        BatchEnd::RolledBack => {
            drop(conn);
            apply_one_by_one(pool, group).await;
        }
        BatchEnd::Failed(why) => fail_all(group, &why),
        BatchEnd::Unknown(why) => fail_all_unknown(group, &why),
    }
}

/// The batch's inserts statement by statement in a transaction of their
/// own on `conn`.
async fn in_transaction(conn: &mut AnyConnection, sets: &[&WriteSet]) -> BatchEnd {
    let mut tx = match sqlx::Connection::begin(&mut *conn).await {
        Ok(t) => t,
        Err(e) => return BatchEnd::Failed(e.to_string()),
    };
    if apply(&mut tx, Backend::Postgres, sets).await.is_err() {
        return BatchEnd::RolledBack;
    }
    match tx.commit().await {
        Ok(()) => BatchEnd::Committed,
        Err(e) => BatchEnd::Unknown(e.to_string()),
    }
}

/// PostgreSQL: after a batch failed, each member in a transaction of its
/// own, so that one bad request fails alone.
async fn apply_one_by_one(pool: &AnyPool, group: Vec<Submitted>) {
    tracing::debug!(
        members = group.len(),
        "a write-set batch failed; applying its members one by one"
    );
    for s in group.into_iter().filter_map(Submitted::expired) {
        let res = async {
            // A BEGIN that fails did nothing: the batch's failure, not an
            // unknown outcome.
            let mut tx = pool
                .begin()
                .await
                .map_err(|e| StoreError::Batch(format!("the write could not begin: {e}")))?;
            apply(&mut tx, Backend::Postgres, &[&s.set]).await?;
            tx.commit()
                .await
                .map_err(|e| super::commit_failed(e.into()))?;
            Ok(())
        }
        .await;
        let _ = s.done.send(res);
    }
}

/// PostgreSQL: a batch whose inserts make one statement ([`joined_sql`]),
/// run without `BEGIN` and `COMMIT`: one statement is its own transaction,
/// so a batch is one round trip instead of three, and it is answered
/// once PostgreSQL said `ReadyForQuery`, after its commit is durable. A
/// failure that certainly rolled the statement back ([`rolled_back`], and
/// the session still answering) sends the members on their own as after
/// any failed batch; any other (a `FATAL`, the connection lost while it
/// ran) leaves every member's outcome unknown.
async fn one_statement(
    conn: &mut AnyConnection,
    sql: String,
    parts: &[(Table, Vec<&Vec<Value>>)],
) -> BatchEnd {
    let all: Vec<&Vec<Value>> = parts.iter().flat_map(|(_, r)| r.iter().copied()).collect();
    match joined_query(sql, &all).execute(&mut *conn).await {
        Ok(_) => BatchEnd::Committed,
        // The session answering again after the error proves no PANIC
        // followed it: PostgreSQL sends an error raised in a commit's
        // clean-up (out of memory, an extension's callback) and only then
        // panics, the commit already on disk.
        Err(e) if rolled_back(&e) && sqlx::Connection::ping(&mut *conn).await.is_ok() => {
            BatchEnd::RolledBack
        }
        Err(e) => BatchEnd::Unknown(e.to_string()),
    }
}

/// Whether a failed one-statement batch certainly did not commit: an
/// error PostgreSQL reported at severity `ERROR` (see [`error_rolled_back`]).
fn rolled_back(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        // The connection lost, a protocol error: it may have committed.
        return false;
    };
    let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() else {
        return false;
    };
    error_rolled_back(pg.severity(), pg.code())
}

/// Whether a PostgreSQL error of `severity` and SQLSTATE `code` ended a
/// statement that runs as its own transaction without committing it
/// (given that the session still answers afterwards, which the caller
/// checks). An `ERROR` leaves the session up with the transaction
/// aborted; deferred triggers and constraints raise theirs before the
/// commit record, and the statement timeout is off by then. A `FATAL` (a
/// shutdown's 57P01, a terminated backend) or a `PANIC` may follow the
/// commit. Whatever the severity, these say the outcome is unknown: 40003
/// "statement completion unknown" (CockroachDB sends it for a commit that
/// may have landed), class 08 (a connection failure a proxy reports as an
/// `ERROR`, such as PgBouncer's when the server went away) and class XX
/// (internal errors).
fn error_rolled_back(severity: sqlx::postgres::PgSeverity, code: &str) -> bool {
    matches!(severity, sqlx::postgres::PgSeverity::Error)
        && code != "40003"
        && !code.starts_with("08")
        && !code.starts_with("XX")
}

/// Answers every member of a group with the same failure: nothing of it
/// was committed.
pub(super) fn fail_all(group: Vec<Submitted>, why: &str) {
    tracing::error!(members = group.len(), error = why, "write batch failed");
    for s in group {
        let _ = s.done.send(Err(StoreError::Batch(why.to_owned())));
    }
}

/// Answers every member of a group whose COMMIT failed: it may have
/// taken effect.
pub(super) fn fail_all_unknown(group: Vec<Submitted>, why: &str) {
    tracing::error!(
        members = group.len(),
        error = why,
        "write batch commit failed"
    );
    for s in group {
        let _ = s.done.send(Err(StoreError::CommitUnknown(why.to_owned())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(id: u8) -> Vec<Value> {
        let mut row = vec![Value::Bytes(vec![id; 16])];
        row.extend((1..12).map(Value::Int));
        row
    }

    fn index_row(id: u8, bidx: i64, field: i64) -> Vec<Value> {
        vec![
            Value::Text("d".into()),
            Value::Int(bidx),
            Value::Bytes(vec![id; 16]),
            Value::Int(field),
            Value::Int(1),
            Value::Bytes(vec![id ^ 0x80; 16]),
        ]
    }

    /// A new subject's rows go to the plain-insert tables, which have no
    /// conflict clause to skip a repeated key: `statements` drops the
    /// repeats (the first row stays, as the conflict clause kept it).
    #[test]
    fn a_new_subjects_repeated_keys_are_written_once() {
        let mut set = WriteSet::default();
        set.push(Table::Subjects, subject(1));
        assert!(set.creates(&[1; 16]));
        assert!(!set.creates(&[2; 16]));
        set.push(Table::NewMatchIndex, index_row(1, 7, 3));
        set.push(Table::NewMatchIndex, index_row(1, 7, 4));
        set.push(Table::NewMatchIndex, index_row(1, 8, 3));
        for backend in [Backend::Sqlite, Backend::Postgres] {
            let parts = statements(backend, &[&set]);
            let index: Vec<_> = parts
                .iter()
                .filter(|(t, _)| *t == Table::NewMatchIndex)
                .flat_map(|(_, r)| r.iter().copied())
                .collect();
            assert_eq!(index, vec![&index_row(1, 7, 3), &index_row(1, 8, 3)]);
        }
    }

    /// PostgreSQL: a batch's inserts as one statement, placeholders
    /// numbered on across its clauses, every bound value used once; not
    /// when a part reads what the batch writes, or past the value bound.
    #[test]
    fn a_batch_joins_one_statement_on_postgres() {
        let mut set = WriteSet::default();
        set.push(Table::Subjects, subject(1));
        set.push(Table::NewMatchIndex, index_row(1, 7, 3));
        set.push(Table::NewMatchIndex, index_row(1, 8, 3));
        let sql = joined_sql(&statements(Backend::Postgres, &[&set])).expect("joins");
        assert!(sql.starts_with("WITH w0 AS (INSERT INTO subjects"), "{sql}");
        assert!(sql.contains(") INSERT INTO match_index"), "{sql}");
        assert!(sql.contains("$24") && !sql.contains("$25"), "{sql}");
        let mut with_use = WriteSet::default();
        with_use.push(
            Table::ChallengeUses,
            vec![
                Value::Int(1),
                Value::Int(1),
                Value::Bytes(vec![3; 32]),
                Value::Bytes(vec![4; 32]),
            ],
        );
        assert!(joined_sql(&statements(Backend::Postgres, &[&set, &with_use])).is_none());
        let big: Vec<WriteSet> = (0..=JOINED_VALUES / 10)
            .map(|i| {
                let mut s = WriteSet::default();
                s.push(Table::Subjects, subject(u8::try_from(i % 250).unwrap_or(0)));
                s
            })
            .collect();
        let refs: Vec<&WriteSet> = big.iter().collect();
        assert!(joined_sql(&statements(Backend::Postgres, &refs)).is_none());
    }

    /// Only errors that ended the statement without its commit send a
    /// one-statement batch's members on their own; a shutdown's `FATAL`
    /// may follow its commit.
    #[test]
    fn only_statement_errors_are_known_rollbacks() {
        use sqlx::postgres::PgSeverity;
        for code in [
            "23505", "40001", "40P01", "22001", "42P01", "P0001", "57014", "55P03",
        ] {
            assert!(error_rolled_back(PgSeverity::Error, code), "{code}");
        }
        for code in ["40003", "08P01", "08006", "XX000"] {
            assert!(!error_rolled_back(PgSeverity::Error, code), "{code}");
        }
        for code in ["57P01", "57P02", "08006", "XX000"] {
            assert!(!error_rolled_back(PgSeverity::Fatal, code), "{code}");
            assert!(!error_rolled_back(PgSeverity::Panic, code), "{code}");
        }
        assert!(!rolled_back(&sqlx::Error::PoolClosed));
    }

    /// One sub-statement per table, however many chunks its rows fill,
    /// with the rows bound in the chunks' order; and no joined statement
    /// when a plain token names a subject of the same batch.
    #[test]
    fn a_tables_chunks_make_one_sub_statement() {
        let sets: Vec<WriteSet> = (0..70u8)
            .map(|i| {
                let mut s = WriteSet::default();
                s.push(Table::NewMatchIndex, index_row(i, i64::from(i), 1));
                s.push(Table::Leaves, (0..12).map(Value::Int).collect());
                s
            })
            .collect();
        let refs: Vec<&WriteSet> = sets.iter().collect();
        let parts = statements(Backend::Postgres, &refs);
        assert_eq!(parts.len(), 4, "two chunks of each table");
        let sql = joined_sql(&parts).expect("joins");
        assert_eq!(sql.matches("INSERT INTO").count(), 2, "{sql}");
        let values = 70 * 6 + 70 * 12;
        assert!(sql.contains(&format!("${values})")), "{sql}");
        assert!(!sql.contains(&format!("${}", values + 1)), "{sql}");
        let mut set = WriteSet::default();
        set.push(Table::Subjects, subject(9));
        set.push(
            Table::Pairwise,
            vec![
                Value::Bytes(vec![9; 16]),
                Value::Text("p".into()),
                Value::Text("t".into()),
                Value::Int(1),
                Value::Bytes(vec![0; 32]),
            ],
        );
        assert!(joined_sql(&statements(Backend::Postgres, &[&set])).is_none());
    }
}
