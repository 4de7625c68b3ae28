//! Write transactions: group commit on SQLite, parallel transactions on
//! PostgreSQL.
//!
//! SQLite has one writer at a time and pays one fsync per COMMIT
//! (`synchronous=FULL`). So the process keeps one writer connection and
//! runs every request's writes as a SAVEPOINT inside a shared batch
//! transaction: a request takes the writer, opens its savepoint, does its
//! reads and writes, appends its audit leaf and RELEASEs the savepoint. If
//! no other request is waiting for the writer (or the batch is full) it
//! COMMITs the batch; otherwise it hands the writer to the next request
//! and waits for the batch's COMMIT. One fsync serves the whole batch, and
//! every request is answered only after the COMMIT that made it durable.
//! A request that fails or is dropped before its RELEASE leaves its
//! savepoint open; whoever takes the writer next rolls back to it first,
//! so only that request's writes are undone.
//!
//! Savepoints journal the pages they change (SQLite's sub-journal, emptied
//! at each RELEASE of the outer savepoint: one request's, or one applied
//! group's). The bundled SQLite is built to keep that journal in memory,
//! never in a temporary file (`.cargo/config.toml`, checked at start by
//! `Store::connect`), so its size is what one request or group changes:
//! [`MAX_BATCH`] bounds a group, and each request's own limits the rest.
//!
//! PostgreSQL needs none of this: each request is its own transaction from
//! the pool and concurrent requests commit in parallel. Per-subject order
//! comes from the subject's own row (`SELECT … FOR UPDATE`), never from a
//! shared one.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, Executor, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard, OwnedSemaphorePermit, oneshot};

use super::StoreError;
use super::wal::WalCheckpoint;
use super::writeset::{self, Submitted, WriteSet, fail_all};

/// Requests in one SQLite batch at most: bounds the work one fsync waits
/// for and the size of a batch lost to an I/O error.
pub const MAX_BATCH: usize = 256;

/// How long a request whose savepoint was released waits for a later
/// request to commit the batch before it commits it itself (covers a
/// waiter that gave up in the queue).
const HANDOVER_GRACE: Duration = Duration::from_millis(20);

/// The longest wait for the writer a checkpoint accepts (see
/// [`GroupWriter::checkpoint_between_batches`]).
const WRITER_TURN_MAX: Duration = Duration::from_millis(20);

/// The SQLite group-commit writer.
#[derive(Debug)]
pub(super) struct GroupWriter {
    batch: Arc<Mutex<Batch>>,
    /// Requests queued for the writer. A request that finds nobody queued
    /// commits at once, so a lone request never waits for company.
    queued: AtomicUsize,
}

/// The writer connection and the batch open on it.
#[derive(Debug)]
pub(super) struct Batch {
    /// Detached from the pool: it is the writer's for the life of the
    /// store, and closing the pool must not wait for it to come back.
    conn: AnyConnection,
    /// `BEGIN IMMEDIATE` issued and not yet committed.
    open: bool,
    /// A request's savepoint is open (it is running, or it ended without
    /// releasing: then it is rolled back before anything else runs).
    in_savepoint: bool,
    /// Batches ended so far; a member checks it to learn whether its batch
    /// is still open.
    generation: u64,
    /// Requests released into the open batch, waiting for its end.
    members: Vec<oneshot::Sender<Result<(), StoreError>>>,
    /// Requests per committed batch (a metric).
    sizes: prometheus_client::metrics::histogram::Histogram,
}

/// Decrements the queue count when the wait ends, however it ends.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl GroupWriter {
    pub(super) fn new(
        conn: PoolConnection<Any>,
        sizes: prometheus_client::metrics::histogram::Histogram,
    ) -> Self {
        Self {
            batch: Arc::new(Mutex::new(Batch {
                conn: conn.detach(),
                open: false,
                in_savepoint: false,
                generation: 0,
                members: Vec::new(),
                sizes,
            })),
            queued: AtomicUsize::new(0),
        }
    }

    /// Takes the writer and opens a savepoint for one request.
    ///
    /// The writer's own steps (BEGIN, SAVEPOINT, RELEASE, COMMIT and the
    /// bookkeeping beside them) run on a task of their own: a request
    /// cancelled mid-step (its deadline, the client going away) cannot
    /// leave the connection and this record of it disagreeing. The task
    /// finishes the step; a savepoint left open is rolled back by the next
    /// holder.
    ///
    /// `slot` (the request's place in the writer queue) travels with the
    /// task and comes back with the writer. The wait for the writer is the
    /// one part of the task that may be cut short: if the caller gives up
    /// while queued (its deadline, the client going away), the task stops
    /// waiting at once and its place in the queue is freed. Otherwise a
    /// partner calling with deadlines shorter than the writer's turn would
    /// leave a waiting task behind per call, each holding a place and
    /// counted as queued, and fill the queue every other partner's writes
    /// need (its in-flight limit counts calls, which return at their
    /// deadline).
    pub(super) async fn begin(
        self: &Arc<Self>,
        slot: OwnedSemaphorePermit,
    ) -> Result<(OwnedMutexGuard<Batch>, OwnedSemaphorePermit), StoreError> {
        let me = Arc::clone(self);
        let (mut tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let mut b = {
                me.queued.fetch_add(1, Ordering::SeqCst);
                let _q = Queued(&me.queued);
                // Cancel-safe: a lock not yet taken is simply not taken.
                tokio::select! {
                    b = Arc::clone(&me.batch).lock_owned() => b,
                    () = tx.closed() => return,
                }
            };
            if tx.is_closed() {
                return;
            }
            let opened = b.open_savepoint().await.map(|()| (b, slot));
            // If the caller left meanwhile, the writer comes back here and
            // is dropped: its open savepoint is rolled back by the next
            // holder.
            let _ = tx.send(opened);
        });
        rx.await
            .map_err(|_| StoreError::Batch("the writer task failed".into()))?
    }

    /// Writes the request's remaining rows (`rest`), releases its
    /// savepoint into the batch and waits until the batch is durable (or
    /// failed). A failure of the request's own rows comes back as
    /// [`StoreError::Database`], with the request undone and the batch
    /// going on; a failure of the batch as [`StoreError::Batch`].
    pub(super) async fn commit(
        self: &Arc<Self>,
        b: OwnedMutexGuard<Batch>,
        rest: WriteSet,
    ) -> Result<(), StoreError> {
        let me = Arc::clone(self);
        // The release and the wait for the batch's end both run on the
        // task, so the grace period's fallback (ending the batch if nobody
        // else did) runs even when the caller is cancelled meanwhile (its
        // deadline, the client going away): otherwise a batch whose next
        // holder also left would stay open, its rows uncommitted and the
        // database's write lock held, until some later write came.
        tokio::spawn(async move {
            let (generation, mut rx) = me.release_step(b, rest).await?;
            let res = match tokio::time::timeout(HANDOVER_GRACE, &mut rx).await {
                Ok(r) => r,
                Err(_) => {
                    // Nobody ended the batch in time: end it ourselves.
                    {
                        let mut b = Arc::clone(&me.batch).lock_owned().await;
                        if b.generation == generation {
                            b.undo_abandoned().await;
                            b.end().await;
                        }
                    }
                    rx.await
                }
            };
            match res {
                Ok(r) => r,
                Err(_) => Err(StoreError::Batch("the batch writer went away".into())),
            }
        })
        .await
        .map_err(|_| StoreError::Batch("the writer task failed".into()))?
    }

    /// Applies a group of write sets (see [`super::writeset`]) as members
    /// of the open batch: one savepoint and one statement per table for
    /// the whole group; if those fail, a savepoint per write set, so only
    /// the failing ones are undone. Each member is answered when the batch
    /// ends. Runs on the applier's task, which no request can cancel.
    pub(super) async fn apply_group(self: &Arc<Self>, group: Vec<Submitted>) {
        if group.is_empty() {
            return;
        }
        let mut b = {
            self.queued.fetch_add(1, Ordering::SeqCst);
            let _q = Queued(&self.queued);
            Arc::clone(&self.batch).lock_owned().await
        };
        // Waiting for the writer may have taken a member past its deadline.
        let group: Vec<Submitted> = group.into_iter().filter_map(Submitted::expired).collect();
        if group.is_empty() {
            // Nothing to add; still end the batch if nobody else will.
            if self.queued.load(Ordering::SeqCst) == 0 {
                b.undo_abandoned().await;
                b.end().await;
            }
            return;
        }
        b.undo_abandoned().await;
        let sets: Vec<&WriteSet> = group.iter().map(|s| &s.set).collect();
        // BEGIN (if needed), the savepoint, every insert and its release in
        // one call to the connection (see `writeset::apply_script`).
        let before = if b.open {
            "SAVEPOINT request"
        } else {
            // IMMEDIATE: see `open_savepoint`.
            "BEGIN IMMEDIATE; SAVEPOINT request"
        };
        // Nobody is waiting to add to the batch: the COMMIT ends the same
        // script, saving the connection a hand-off per batch (the writer's
        // thread hand-offs, not its SQL, are most of a small batch's time).
        // If an insert fails, the script stops before the RELEASE and the
        // COMMIT, and the members are applied one by one as below.
        let commit_too =
            self.queued.load(Ordering::SeqCst) == 0 || b.members.len() + sets.len() >= MAX_BATCH;
        let after = if commit_too {
            "RELEASE request; COMMIT"
        } else {
            "RELEASE request"
        };
        let together = writeset::apply_script(&mut b.conn, before, &sets, after).await;
        drop(sets);
        if together.is_ok() {
            b.open = true;
            b.members.extend(group.into_iter().map(|s| s.done));
            if commit_too {
                b.committed();
                return;
            }
        } else {
            // Undo the group's statements, keep its savepoint, and apply
            // each write set alone inside it.
            tracing::debug!(
                members = group.len(),
                "a write-set batch failed; applying its members one by one"
            );
            // No savepoint to roll back to: the script failed before
            // opening it, or at its COMMIT. Either way the batch is in an
            // unknown state and is ended as failed.
            if b.conn.execute("ROLLBACK TO request").await.is_err() {
                if commit_too {
                    // The script may have failed at its COMMIT, which a
                    // failed sync can leave written: the members (and the
                    // earlier ones) are told the outcome is unknown, never
                    // that nothing was done (a retried create would make a
                    // second subject).
                    if let Err(e) = &together {
                        tracing::error!(error = %e, "batch commit failed");
                    }
                    b.abort_unknown("the batch commit failed").await;
                    return writeset::fail_all_unknown(group, "the batch commit failed");
                }
                b.abort("the batch could not be continued").await;
                return fail_all(group, "the batch was rolled back");
            }
            b.open = true;
            let mut rest = group.into_iter();
            while let Some(s) = rest.next() {
                match b.apply_alone(&s.set).await {
                    Ok(()) => b.members.push(s.done),
                    Err(e) => {
                        let _ = s.done.send(Err(e));
                        if !b.open {
                            // The batch itself is gone (an undo failed).
                            return fail_all(rest.collect(), "the batch was rolled back");
                        }
                    }
                }
            }
            if b.conn.execute("RELEASE request").await.is_err() {
                b.abort("a batch member's release failed").await;
                return;
            }
        }
        if self.queued.load(Ordering::SeqCst) == 0 || b.members.len() >= MAX_BATCH {
            b.end().await;
        } else {
            // A request is waiting for the writer and will end the batch;
            // if it gives up, end it after the grace period.
            let generation = b.generation;
            let me = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(HANDOVER_GRACE).await;
                let mut b = Arc::clone(&me.batch).lock_owned().await;
                if b.generation == generation {
                    b.undo_abandoned().await;
                    b.end().await;
                }
            });
        }
    }

    /// Runs a WAL checkpoint (`sql`, a `PRAGMA wal_checkpoint(…)`) on the
    /// writer connection between batches: the open batch is committed
    /// first and none opens until the checkpoint is done, so nothing of
    /// this process writes meanwhile. A PASSIVE one then copies every
    /// frame no reader still needs, and the next batch restarts the WAL
    /// from its start; a TRUNCATE one waits at most `reader_wait` for
    /// readers of older snapshots (SQLite's busy handler) instead of the
    /// connection's usual 10 s, since writers queue behind it.
    ///
    /// The caller has just copied the WAL on another connection and
    /// wants the pause bounded by what was committed since. Requests
    /// queued for the writer go first, though, and commit more: if taking
    /// the writer took longer than [`WRITER_TURN_MAX`], nothing is done
    /// and `None` comes back.
    ///
    /// On a task of its own, like the writer's other steps: a caller that
    /// gives up cannot leave the connection mid-statement.
    pub(super) async fn checkpoint_between_batches(
        self: &Arc<Self>,
        sql: &'static str,
        reader_wait: Option<Duration>,
    ) -> Result<Option<WalCheckpoint>, StoreError> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            // Monotonic, for the bound only.
            let asked = tokio::time::Instant::now();
            let mut b = Arc::clone(&me.batch).lock_owned().await;
            if asked.elapsed() > WRITER_TURN_MAX {
                return Ok(None);
            }
            b.undo_abandoned().await;
            b.end().await;
            if let Some(wait) = reader_wait {
                // Numbers only: nothing outside reaches this SQL.
                let pragma = format!("PRAGMA busy_timeout = {}", wait.as_millis());
                sqlx::query(sqlx::AssertSqlSafe(pragma))
                    .execute(&mut b.conn)
                    .await?;
            }
            let row = sqlx::query_as::<_, (i64, i64, i64)>(sql)
                .fetch_one(&mut b.conn)
                .await;
            if reader_wait.is_some() {
                // Back to the usual wait (a constant, not the value read
                // before: a restore that failed once must not stick). Only
                // a dead connection fails here, and then every batch does.
                let pragma = format!("PRAGMA busy_timeout = {}", super::BUSY_TIMEOUT.as_millis());
                sqlx::query(sqlx::AssertSqlSafe(pragma))
                    .execute(&mut b.conn)
                    .await?;
            }
            Ok(Some(WalCheckpoint::from(row?)))
        })
        .await
        .map_err(|_| StoreError::Batch("the writer task failed".into()))?
    }

    async fn release_step(
        &self,
        mut b: OwnedMutexGuard<Batch>,
        rest: WriteSet,
    ) -> Result<(u64, oneshot::Receiver<Result<(), StoreError>>), StoreError> {
        // The rows, the release and, if nobody waits to add to the batch,
        // its COMMIT in one call to the connection: each call is a
        // hand-off to its thread and back, made while holding the writer.
        let end_now = self.queued.load(Ordering::SeqCst) == 0 || b.members.len() + 1 >= MAX_BATCH;
        let after = if end_now {
            "RELEASE request; COMMIT"
        } else {
            "RELEASE request"
        };
        if let Err(e) = writeset::apply_script(&mut b.conn, "", &[&rest], after).await {
            // The savepoint is still open only if the request's own rows
            // failed (the script stops at the failing statement): then
            // undoing it keeps the batch, and the failure is the
            // request's. If it cannot be undone, the RELEASE or the COMMIT
            // failed: the batch is ended as failed.
            if b.roll_back_request().await.is_err() {
                tracing::error!(error = %e, "batch release or commit failed");
                if !end_now {
                    // No COMMIT in the script: the RELEASE failed, and the
                    // rollback undoes everything, known not done.
                    b.abort("a batch member's release failed").await;
                    return Err(StoreError::Batch(format!("the release failed: {e}")));
                }
                b.abort_unknown("the batch commit failed").await;
                return Err(StoreError::CommitUnknown(e.to_string()));
            }
            if self.queued.load(Ordering::SeqCst) == 0 {
                // Earlier members would otherwise wait out their grace.
                b.end().await;
            }
            return Err(e);
        }
        b.in_savepoint = false;
        let (tx, rx) = oneshot::channel();
        b.members.push(tx);
        let generation = b.generation;
        if end_now {
            b.committed();
        }
        Ok((generation, rx))
    }
}

impl Batch {
    /// Opens a request's savepoint (and the batch, if none is open).
    async fn open_savepoint(&mut self) -> Result<(), StoreError> {
        self.undo_abandoned().await;
        // IMMEDIATE: take the write lock now, so no statement of the batch
        // ever has to upgrade a read lock (which can fail busy). One call
        // for both statements (each call is a hand-off to the connection's
        // thread, made while holding the writer).
        let sql = if self.open {
            "SAVEPOINT request"
        } else {
            "BEGIN IMMEDIATE; SAVEPOINT request"
        };
        if let Err(e) = self.conn.execute(sql).await {
            if self.open {
                self.abort("savepoint failed").await;
            } else {
                // The BEGIN failed (busy, I/O), or it ran and the
                // SAVEPOINT failed: no member waits on this batch yet, so
                // undo whatever began, quietly (the usual "no transaction"
                // answer is the BEGIN-failed case).
                let _ = self.conn.execute("ROLLBACK").await;
            }
            return Err(e.into());
        }
        self.open = true;
        self.in_savepoint = true;
        Ok(())
    }

    /// Applies one write set in a savepoint of its own (inside the group's).
    /// On failure its rows are undone and the error returned; if even the
    /// undo fails the batch is aborted (then `open` is false).
    async fn apply_alone(&mut self, set: &WriteSet) -> Result<(), StoreError> {
        match writeset::apply_script(&mut self.conn, "SAVEPOINT one", &[set], "RELEASE one").await {
            Ok(()) => Ok(()),
            Err(e) => {
                let undone = async {
                    self.conn.execute("ROLLBACK TO one").await?;
                    self.conn.execute("RELEASE one").await
                }
                .await;
                if undone.is_err() {
                    self.abort("a batch member's rollback failed").await;
                }
                Err(e)
            }
        }
    }

    /// Rolls back and closes the request's savepoint; fails if there is
    /// none (then the batch is in an unknown state).
    async fn roll_back_request(&mut self) -> Result<(), sqlx::Error> {
        self.in_savepoint = false;
        self.conn.execute("ROLLBACK TO request").await?;
        self.conn.execute("RELEASE request").await?;
        Ok(())
    }

    /// Rolls back a savepoint its request left open (failed or dropped).
    async fn undo_abandoned(&mut self) {
        if !self.in_savepoint {
            return;
        }
        if self.roll_back_request().await.is_err() {
            // SQLite rolled the whole transaction back (an I/O error, a
            // full disk): the batch's earlier members are lost with it and
            // must not be acknowledged.
            self.abort("a batch member's rollback failed").await;
        }
    }

    /// Commits the batch and answers every member.
    async fn end(&mut self) {
        if !self.open {
            return;
        }
        match self.conn.execute("COMMIT").await {
            Ok(_) => self.committed(),
            Err(e) => {
                tracing::error!(error = %e, "batch commit failed");
                self.abort_unknown("the batch commit failed").await;
            }
        }
    }

    /// The batch's COMMIT succeeded: answers every member.
    fn committed(&mut self) {
        // Batch sizes, for group-commit tuning
        // (`RUST_LOG=idvault_server::store=trace`).
        tracing::trace!(members = self.members.len(), "batch committed");
        #[allow(clippy::cast_precision_loss)] // at most MAX_BATCH
        self.sizes.observe(self.members.len() as f64);
        self.open = false;
        self.generation += 1;
        for m in self.members.drain(..) {
            let _ = m.send(Ok(()));
        }
    }

    /// Rolls the batch back and fails every member: nothing of it was
    /// committed.
    async fn abort(&mut self, why: &str) {
        self.end_failed(false, why).await;
    }

    /// [`Self::abort`] after a COMMIT that failed: SQLite may have
    /// written the batch to the log before the error (a failed sync), so
    /// its members are told the outcome is unknown, not that nothing was
    /// done.
    async fn abort_unknown(&mut self, why: &str) {
        self.end_failed(true, why).await;
    }

    async fn end_failed(&mut self, unknown: bool, why: &str) {
        if let Err(e) = self.conn.execute("ROLLBACK").await {
            // No transaction left to roll back is the expected case after
            // SQLite's own rollback; anything else is logged.
            tracing::warn!(error = %e, "batch rollback");
        }
        self.open = false;
        self.in_savepoint = false;
        self.generation += 1;
        for m in self.members.drain(..) {
            let _ = m.send(Err(if unknown {
                StoreError::CommitUnknown(why.to_owned())
            } else {
                StoreError::Batch(why.to_owned())
            }));
        }
    }
}

/// The connection a write transaction runs on.
#[derive(Debug)]
pub(super) enum TxConn {
    /// PostgreSQL: the request's own transaction.
    Own(Transaction<'static, Any>),
    /// SQLite: a savepoint in the shared batch.
    Batch(OwnedMutexGuard<Batch>),
}

impl Deref for TxConn {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        match self {
            Self::Own(t) => t,
            Self::Batch(b) => &b.conn,
        }
    }
}

impl DerefMut for TxConn {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            Self::Own(t) => &mut *t,
            Self::Batch(b) => &mut b.conn,
        }
    }
}
