//! SQLite WAL housekeeping: the periodic checkpoint that keeps the WAL
//! small and off the COMMIT path, and the truncating checkpoint a
//! shredding delete asks for.
//!
//! SQLite runs one checkpoint at a time and refuses a second at once
//! (busy, without waiting), so every checkpoint the vault starts takes
//! [`WalJobs::state`] first: the periodic one can no longer make a
//! deletion's truncation fail. (SQLite's own fallback checkpoint, inside
//! a COMMIT that crossed `wal_autocheckpoint`, does not take it; the
//! periodic task keeps the WAL far below that.)
//!
//! Each checkpoint first copies what it can on a pool connection while
//! batches go on. Only if that left little to copy does it pause the
//! writer (between batches) to finish: a reader that holds frames back
//! (a backup, a long export) shows as many frames left, and then the
//! writer is not paused at all, however large the WAL has grown.
//!
//! A truncation held back is not forgotten: deletions take a ticket after
//! their COMMIT, a completed truncation records the tickets it covered,
//! and the periodic task truncates while any is left uncovered, backing
//! off while readers keep holding it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::{Backend, Store, StoreError};

/// How often the serving process checkpoints the WAL (see
/// [`Store::checkpoint_wal`]).
pub const WAL_CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// Past this many frames (4 MiB of pages) the periodic checkpoint also
/// runs on the writer between batches. Below it, the pass on a pool
/// connection is enough: the first batch after it restarts the WAL from
/// its start. But a writer that starts batches back to back always has
/// frames that pass has not copied yet, so the WAL never restarts and
/// grows until the writer's own fallback copies it inside a COMMIT.
const WRITER_CHECKPOINT_FRAMES: i64 = 1024;

/// Past this many frames (8 MiB of pages) the writer finishes a
/// checkpoint even when the pool pass copied everything (see
/// [`WalCheckpoint::restarts`]). Below it, pausing the writer would only
/// add a wait to every request queued meanwhile: at a few hundred lone
/// requests a second the pause, every 200 ms, was the largest part of
/// their p99.
const WRITER_RESTART_FRAMES: i64 = 2048;

/// The most frames the pool pass may leave for the writer to copy. More
/// left means a reader holds them back, and pausing the writer would not
/// help. The writer's pause is then bounded by copying this much plus
/// what requests queued for the writer commit before the checkpoint's
/// turn (which it gives up if that takes long), and two fsyncs.
const WRITER_COPY_BOUND: i64 = 1024;

/// How long a truncating checkpoint waits for readers using the WAL.
/// Writers queue behind it, so this is short.
const TRUNCATE_READER_WAIT: Duration = Duration::from_millis(50);

/// Consecutive failed truncations after which a deletion no longer tries
/// one itself (its receipt says the truncation is pending) and retries
/// back off: a partner deleting in a loop while a reader holds the WAL
/// must not keep the writer paused.
const TRUNCATE_ATTEMPTS: u32 = 4;
/// The pause between a deletion's attempts (the writer runs meanwhile).
const TRUNCATE_RETRY: Duration = Duration::from_millis(25);

const PASSIVE: &str = "PRAGMA wal_checkpoint(PASSIVE)";
const TRUNCATE: &str = "PRAGMA wal_checkpoint(TRUNCATE)";

/// What a SQLite WAL checkpoint did (the row `PRAGMA wal_checkpoint`
/// returns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalCheckpoint {
    /// It did not finish: another connection was checkpointing (SQLite
    /// then refuses at once), or a reader using the WAL or another
    /// process's writer held a TRUNCATE back past its wait.
    pub busy: bool,
    /// Frames in the WAL; −1 when it could not even start.
    pub frames: i64,
    /// Of those, frames now copied into the database file; −1 likewise.
    pub copied: i64,
}

impl From<(i64, i64, i64)> for WalCheckpoint {
    fn from((busy, frames, copied): (i64, i64, i64)) -> Self {
        Self {
            busy: busy != 0,
            frames,
            copied,
        }
    }
}

impl WalCheckpoint {
    /// Whether the WAL restarts from its start without the writer's help:
    /// this pass copied every frame, so a batch that begins after it finds
    /// nothing left to copy and restarts it. Up to
    /// [`WRITER_RESTART_FRAMES`] only: if batches keep starting just
    /// before passes end, the restart keeps being missed, and past that
    /// size the writer finishes the checkpoint as under steady load.
    fn restarts(&self) -> bool {
        !self.busy && self.copied == self.frames && self.frames < WRITER_RESTART_FRAMES
    }

    /// Whether the writer may finish what this pass (on a pool
    /// connection) left: it completed, and left at most
    /// [`WRITER_COPY_BOUND`] frames.
    fn left_little(&self) -> bool {
        !self.busy && self.frames - self.copied <= WRITER_COPY_BOUND
    }
}

/// The state of this process's checkpoints, shared by the store's clones.
#[derive(Debug)]
pub(super) struct WalJobs {
    /// Held by whichever checkpoint the vault runs.
    state: tokio::sync::Mutex<Truncations>,
    /// Truncation tickets handed out. Starts at 1, as if a deletion had
    /// asked: a truncation a previous process left pending (the tickets
    /// live in memory only) is done by the first periodic checkpoint.
    asked: AtomicU64,
}

impl Default for WalJobs {
    fn default() -> Self {
        Self {
            state: tokio::sync::Mutex::default(),
            asked: AtomicU64::new(1),
        }
    }
}

/// Truncations done and held back.
#[derive(Debug, Default)]
struct Truncations {
    /// The highest ticket a completed truncation covered.
    covered: u64,
    /// Consecutive truncations held back since the last that completed.
    failures: u32,
    /// No retry before this: after [`TRUNCATE_ATTEMPTS`] failures, the
    /// checkpoint interval doubled per further failure, 6.4 s at most.
    not_before: Option<Instant>,
}

impl Truncations {
    fn record(&mut self, covers: u64, done: &WalCheckpoint) {
        if done.busy {
            self.failures = self.failures.saturating_add(1);
            if self.failures >= TRUNCATE_ATTEMPTS {
                let doublings = (self.failures - TRUNCATE_ATTEMPTS).min(5);
                let wait = WAL_CHECKPOINT_EVERY * 2u32.pow(doublings);
                self.not_before = Some(Instant::now() + wait);
            }
        } else {
            self.covered = self.covered.max(covers);
            self.failures = 0;
            self.not_before = None;
        }
    }

    /// Whether a retry is allowed now.
    fn may_retry(&self) -> bool {
        self.not_before.is_none_or(|t| Instant::now() >= t)
    }
}

impl Store {
    /// The periodic checkpoint (SQLite; nothing to do on PostgreSQL):
    /// copies committed WAL frames into the database file on a pool
    /// connection, without waiting for readers or the writer; if the WAL
    /// has grown past [`WRITER_CHECKPOINT_FRAMES`] and little but not
    /// nothing is left ([`WalCheckpoint::restarts`]), finishes on the
    /// writer between batches so the next batch restarts it. If a
    /// deletion's truncation is pending, truncates instead (with back-off
    /// while readers hold it).
    ///
    /// A checkpoint held back (another process checkpointing, readers
    /// using the WAL) comes back `busy`; the next one catches up.
    pub async fn checkpoint_wal(&self) -> Result<Option<WalCheckpoint>, StoreError> {
        if self.backend != Backend::Sqlite {
            return Ok(None);
        }
        let mut st = self.wal.state.lock().await;
        if self.wal.asked.load(Ordering::SeqCst) > st.covered && st.may_retry() {
            return self.truncate(&mut st).await.map(Some);
        }
        let first = self.checkpoint_on_pool().await?;
        if first.frames < WRITER_CHECKPOINT_FRAMES || !first.left_little() || first.restarts() {
            return Ok(Some(first));
        }
        let last = self
            .writer()?
            .checkpoint_between_batches(PASSIVE, None)
            .await?;
        Ok(Some(last.unwrap_or(first)))
    }

    async fn checkpoint_on_pool(&self) -> Result<WalCheckpoint, StoreError> {
        Ok(sqlx::query_as::<_, (i64, i64, i64)>(PASSIVE)
            .fetch_one(&self.pool)
            .await?
            .into())
    }

    fn writer(&self) -> Result<&std::sync::Arc<super::GroupWriter>, StoreError> {
        self.writer
            .as_ref()
            .ok_or_else(|| StoreError::Batch("no SQLite writer".into()))
    }

    /// One truncating checkpoint: the pool pass, then, if it left little,
    /// TRUNCATE on the writer between batches. Records the outcome.
    async fn truncate(&self, st: &mut Truncations) -> Result<WalCheckpoint, StoreError> {
        // Every ticket taken by now belongs to a committed deletion.
        let covers = self.wal.asked.load(Ordering::SeqCst);
        let first = self.checkpoint_on_pool().await?;
        let held = WalCheckpoint {
            busy: true,
            ..first
        };
        let done = if !first.left_little() {
            held
        } else {
            match self
                .writer()?
                .checkpoint_between_batches(TRUNCATE, Some(TRUNCATE_READER_WAIT))
                .await?
            {
                Some(done) => done,
                // The writer was busy with queued requests: not a reader
                // holding the WAL, so not a failure to back off from.
                None => return Ok(held),
            }
        };
        st.record(covers, &done);
        Ok(done)
    }

    /// SQLite: pushes the WAL into the main file and truncates it. After a
    /// committed shredding delete, so the deleted rows' old pages (the main
    /// file's copies are overwritten by `secure_delete`) do not survive in
    /// the WAL; after a bulk load, so reads do not look every page up in a
    /// huge WAL index. Tries up to [`TRUNCATE_ATTEMPTS`] times, fewer if
    /// other truncations failed just before; one held back is left to the
    /// periodic task, which retries until one completes. Returns whether
    /// the WAL is truncated.
    pub(super) async fn truncate_wal(&self) -> Result<bool, StoreError> {
        let ticket = self.wal.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let store = self.clone();
        // On a task of its own: a caller that gives up (its deadline) must
        // not drop the lock while the checkpoint still runs.
        tokio::spawn(async move {
            for attempt in 0..TRUNCATE_ATTEMPTS {
                if attempt > 0 {
                    tokio::time::sleep(TRUNCATE_RETRY).await;
                }
                let mut st = store.wal.state.lock().await;
                if st.covered >= ticket {
                    return Ok(true);
                }
                // Failures count across deletions: a burst of them while a
                // reader holds the WAL pauses the writer a few times, not
                // a few times each.
                if st.failures >= TRUNCATE_ATTEMPTS && !st.may_retry() {
                    return Ok(false);
                }
                if !store.truncate(&mut st).await?.busy {
                    return Ok(true);
                }
            }
            Ok(false)
        })
        .await
        .map_err(|_| StoreError::Batch("the checkpoint task failed".into()))?
    }

    /// Called once the vault's background jobs have stopped: waits for a
    /// checkpoint still running (a deletion's, on its own task) and, if a
    /// truncation is pending, tries it once more.
    pub async fn settle_wal(&self) -> Result<(), StoreError> {
        if self.backend != Backend::Sqlite {
            return Ok(());
        }
        let mut st = self.wal.state.lock().await;
        if self.wal.asked.load(Ordering::SeqCst) > st.covered {
            self.truncate(&mut st).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(busy: bool) -> WalCheckpoint {
        WalCheckpoint {
            busy,
            frames: 10,
            copied: if busy { 5 } else { 10 },
        }
    }

    #[tokio::test(start_paused = true)]
    async fn held_back_truncations_back_off_then_reset() {
        let mut t = Truncations::default();
        for _ in 1..TRUNCATE_ATTEMPTS {
            t.record(7, &outcome(true));
            assert!(
                t.may_retry(),
                "no back-off before {TRUNCATE_ATTEMPTS} failures"
            );
        }
        // The 4th failure waits one interval, then two, four, … 32.
        for doublings in 0..8u32 {
            t.record(7, &outcome(true));
            let wait = WAL_CHECKPOINT_EVERY * 2u32.pow(doublings.min(5));
            assert!(!t.may_retry());
            tokio::time::advance(wait - Duration::from_millis(1)).await;
            assert!(!t.may_retry(), "after {doublings} doublings");
            tokio::time::advance(Duration::from_millis(1)).await;
            assert!(t.may_retry());
        }
        assert_eq!(t.covered, 0, "nothing covered while held back");
        t.record(7, &outcome(false));
        assert_eq!((t.covered, t.failures), (7, 0));
        assert!(t.may_retry());
        // A completed truncation never moves the mark back.
        t.record(3, &outcome(false));
        assert_eq!(t.covered, 7);
    }
}
