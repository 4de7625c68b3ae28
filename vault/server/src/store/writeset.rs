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
    MatchIndex,
    Pairwise,
    Challenges,
    Consents,
    ChallengeUses,
    Receipts,
    Leaves,
}

impl Table {
    const ALL: [Self; 10] = [
        Self::Subjects,
        Self::Packets,
        Self::MatchSubjects,
        Self::MatchIndex,
        Self::Pairwise,
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
            Self::Subjects => (
                concat!("INSERT INTO subjects (", subject_columns!(), ") VALUES "),
                10,
                "",
            ),
            Self::Packets => (
                "INSERT INTO packets (subject_id, seq, field_name, packet) VALUES ",
                4,
                "",
            ),
            Self::MatchSubjects => (
                "INSERT INTO match_subjects (domain, subject_id, fields, signature) VALUES ",
                4,
                " ON CONFLICT (domain, subject_id) DO UPDATE \
                 SET fields = excluded.fields, signature = excluded.signature",
            ),
            // Conflicts are a re-index of the same value (or a 2^-64
            // chance collision inside one key): the row already says what
            // it would say.
            Self::MatchIndex => (
                "INSERT INTO match_index (domain, bidx, subject_id, field, key_version) VALUES ",
                5,
                " ON CONFLICT DO NOTHING",
            ),
            // Only for a live subject: a match reveals candidates it found
            // before its write, and a deletion may have committed since.
            // On PostgreSQL the subject's row is locked too (KEY SHARE,
            // which a deletion's FOR UPDATE waits for and which waits for
            // it): a deletion committing meanwhile is seen, and one
            // starting later removes the token with the rest. A
            // concurrent match may have made the token first; the request
            // reads back whichever was stored. The subject comes first, so
            // PostgreSQL's sorted rows lock subjects in ascending order,
            // as every other multi-subject locker does.
            Self::Pairwise => (
                "INSERT INTO pairwise_tokens (subject_id, partner, token) \
                 SELECT v.column1, v.column2, v.column3 FROM (VALUES ",
                3,
                match backend {
                    Backend::Sqlite => {
                        ") v WHERE EXISTS (SELECT 1 FROM subjects s \
                         WHERE s.subject_id = v.column1) \
                         ON CONFLICT (partner, subject_id) DO NOTHING"
                    }
                    Backend::Postgres => {
                        ") v WHERE EXISTS (SELECT 1 FROM subjects s \
                         WHERE s.subject_id = v.column1 FOR KEY SHARE) \
                         ON CONFLICT (partner, subject_id) DO NOTHING"
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
                 request_id, head_seq, leaf, key_version, mac) VALUES ",
                11,
                "",
            ),
        }
    }

    /// Whether rows of this table may wait on a concurrent transaction's
    /// uncommitted row (a conflict clause): on PostgreSQL such rows are
    /// inserted in key order, so two batches never wait on each other in
    /// a cycle.
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
    match_index: Vec<Vec<Value>>,
    pairwise: Vec<Vec<Value>>,
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
            Table::MatchIndex => &self.match_index,
            Table::Pairwise => &self.pairwise,
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
            Table::MatchIndex => self.match_index.push(row),
            Table::Pairwise => self.pairwise.push(row),
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
}

/// The rows of `sets`, by table in the fixed order, in chunks of at most
/// [`ROWS_PER_STATEMENT`] (sorted where they may wait on another
/// transaction, on PostgreSQL).
fn statements<'s>(backend: Backend, sets: &[&'s WriteSet]) -> Vec<(Table, Vec<&'s Vec<Value>>)> {
    let mut out = Vec::new();
    for t in Table::ALL {
        let mut rows: Vec<&Vec<Value>> = sets.iter().flat_map(|s| s.rows(t)).collect();
        if t == Table::MatchSubjects {
            // An upsert: one statement may not touch a key twice on
            // PostgreSQL. The last row of a key is the one that counts.
            let mut seen = std::collections::HashSet::new();
            rows.reverse();
            rows.retain(|r| seen.insert(r.get(..2)));
            rows.reverse();
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

/// Inserts the rows of `sets` on `conn`: one multi-row statement per
/// table (and per [`ROWS_PER_STATEMENT`] rows), tables in a fixed order.
pub(super) async fn apply(
    conn: &mut AnyConnection,
    backend: Backend,
    sets: &[&WriteSet],
) -> Result<(), StoreError> {
    for (t, rows) in statements(backend, sets) {
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

/// PostgreSQL: the group in one transaction; if its statements fail,
/// each member in a transaction of its own.
async fn apply_own_transactions(
    pool: &AnyPool,
    group: Vec<Submitted>,
    sizes: &prometheus_client::metrics::histogram::Histogram,
) {
    if group.is_empty() {
        return;
    }
    let mut tx = match pool.begin().await {
        Ok(t) => t,
        Err(e) => return fail_all(group, &e.to_string()),
    };
    // Waiting for a connection may have taken a member past its deadline.
    let group: Vec<Submitted> = group.into_iter().filter_map(Submitted::expired).collect();
    let sets: Vec<&WriteSet> = group.iter().map(|s| &s.set).collect();
    if apply(&mut tx, Backend::Postgres, &sets).await.is_ok() {
        match tx.commit().await {
            Ok(()) => {
                #[allow(clippy::cast_precision_loss)] // at most MAX_GROUP
                sizes.observe(group.len() as f64);
                for s in group {
                    let _ = s.done.send(Ok(()));
                }
            }
            Err(e) => fail_all_unknown(group, &e.to_string()),
        }
        return;
    }
    drop(tx);
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
