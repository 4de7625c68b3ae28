//! Storage adapter: one store over SQLite (embedded default) or PostgreSQL.
//!
//! Thin on purpose: it moves rows, it does not decide. Both backends run the
//! same SQL through sqlx's `Any` driver (positional `$n` parameters work on
//! both); schemas and migrations are kept per backend in `migrations/`.
//!
//! Every write is one [`AuditedTx`] that ends by writing its request's
//! audit leaf (and any record of the vault's own it added,
//! [`AuditedTx::add_leaf`]) and committing: if the leaf cannot be
//! written, nothing is (the request fails closed). No shared row is touched on the way: SQLite
//! requests share group commits ([`writer`]), PostgreSQL requests commit
//! in parallel and a subject's writes are ordered by its own row lock.
//! Transactions that only insert are applied many at a time by
//! [`writeset`]. Reads that need no write go to the pool, never through
//! the writer.

/// Column list of `subjects` (the owner's row MAC and its version last),
/// as read and as inserted; a macro so queries stay string literals (sqlx
/// refuses dynamically built SQL).
macro_rules! subject_columns {
    () => {
        "subject_id, created_by, wrapped_dek, kek_version, head_seq, head_hash, created_at_ms, \
         updated_at_ms, mac_version, mac"
    };
}

/// The storage key of subject `$1` (migration 0026), as a scalar
/// subquery: the one the subject was created with, or its id for a
/// subject created before keys were kept. Every statement on packets by
/// key also asks for `subject_id = $1`: a row moved to another key is
/// not returned (it would fail to open anyway), and a key a database
/// writer copied from another subject reaches none of that subject's
/// rows (a deletion would otherwise destroy them, and count them).
macro_rules! key_of_subject {
    () => {
        "(SELECT COALESCE(subject_key, subject_id) FROM subjects WHERE subject_id = $1)"
    };
}

/// Column list of `consents` (the row MAC and its version last), as
/// read and as inserted.
macro_rules! consent_columns {
    () => {
        "consent_id, subject_id, device_id, audience, purpose, fields, standing, issued_at, \
         expires_at, grant_hash, presented_at_ms, revoked_at_ms, grant_bytes, grant_signature, \
         mac_version, mac"
    };
}

/// The distinct values of `$col`, the first column of `$table`'s primary
/// key, by a loose index scan: one seek per value (`MIN` above the last),
/// so a handful of domains or partners cost a handful of seeks however
/// many rows they hold. A `SELECT` to use in `IN (…)`, on both backends.
/// (On PostgreSQL, right after a domain's rows were purged and before
/// VACUUM, the first seek past them walks their dead index entries once:
/// bounded, and gone at the next VACUUM.)
macro_rules! loose_scan {
    ($table:ident, $col:ident) => {
        concat!(
            "WITH RECURSIVE v(x) AS (SELECT MIN(",
            stringify!($col),
            ") FROM ",
            stringify!($table),
            " UNION ALL SELECT (SELECT MIN(",
            stringify!($col),
            ") FROM ",
            stringify!($table),
            " WHERE ",
            stringify!($col),
            " > v.x) FROM v WHERE v.x IS NOT NULL) SELECT x FROM v WHERE x IS NOT NULL"
        )
    };
}

/// A `SELECT` that locks its rows until the transaction ends on
/// PostgreSQL; on SQLite the writer already orders writes. The parts are
/// string literals (or macros giving them), so the query stays a literal.
///
/// `FOR NO KEY UPDATE`: it excludes every other locker as `FOR UPDATE`
/// did, except `FOR KEY SHARE`, which only a pairwise token's insert takes
/// (its subject may change meanwhile, not disappear). So a match's
/// batched token insert never waits behind a subject's update, and a
/// deletion still orders against it (`DELETE` takes `FOR UPDATE`).
macro_rules! locked {
    ($backend:expr, $($sql:tt)+) => {
        match $backend {
            $crate::store::Backend::Postgres => concat!($($sql)+, " FOR NO KEY UPDATE"),
            $crate::store::Backend::Sqlite => concat!($($sql)+),
        }
    };
}

mod audit;
mod consent;
mod credentials;
mod events;
mod matching;
mod rekey;
mod retention;
mod rows;
mod transactions;
mod wal;
mod writer;
mod writeset;

use std::collections::HashMap;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Executor, Row};

pub use audit::{
    CheckpointRow, LeafColumns, LeafRow, NewLeaf, SequencerLease, SequencerTx, SubjectSnapshot,
};
pub use consent::{ConsentRevocation, GrantClaim, GrantClaimRows, Withdrawal};
pub use events::{IGNORED_UNLINKED, SuggestionInputs};
pub(crate) use matching::check_signature;
pub use matching::{BenchLoader, LoadedSubject, MatchRow, PairwiseRead, Ranked};
pub use rekey::{
    LeafMacRow, LinkRow, MAC_WALK_WINDOW, MacCursor, MacKeys, MacPage, MacTable, Remac, RemacBatch,
    RewrapBatch,
};
pub use retention::{Prunable, Pruned};
pub use wal::{WAL_CHECKPOINT_EVERY, WalCheckpoint};
pub use writer::MAX_BATCH;

use rows::{i64_to_u64, u64_to_i64};
use writer::{GroupWriter, TxConn};
use writeset::{Applier, Table, Value, WriteSet};

use idvault_core::crypto::HASH_LEN;
use idvault_core::packet::{ChainHead, NewPacket};
use idvault_core::records::SubjectRecord;
use idvault_core::rowmac::{RowBytes, RowMac};
use idvault_core::subject::SubjectId;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Storage failures. Messages name tables and columns, never values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database refused or failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored column holds an impossible value.
    #[error("stored data is corrupt: {0}")]
    Corrupt(&'static str),
    /// The database URL names no supported backend.
    #[error("unsupported database URL (use sqlite:… or postgres://…)")]
    UnsupportedUrl,
    /// SQLite durability settings did not take effect.
    #[error("SQLite durability check failed: {0}")]
    Durability(String),
    /// The group commit this write joined did not become durable.
    #[error("the write batch failed: {0}")]
    Batch(String),
    /// The COMMIT of this write failed: it may or may not have taken
    /// effect (a connection lost during it, an I/O error while syncing).
    #[error("the commit failed and its outcome is unknown: {0}")]
    CommitUnknown(String),
    /// The writer queue is full (this many writes queued or running).
    #[error("the writer queue is full ({0} writes)")]
    QueueFull(usize),
    /// The request's deadline passed while its write waited; nothing of it
    /// was written.
    #[error("the deadline passed while the write was queued")]
    Deadline,
    /// A row that authorises something failed its MAC check (written or
    /// edited by someone without the root key), or the store has no row
    /// key to check it with. Names the row kind only.
    #[error("a {0} row failed its integrity check")]
    Forged(&'static str),
}

impl From<idvault_core::rowmac::RowMacError> for StoreError {
    fn from(e: idvault_core::rowmac::RowMacError) -> Self {
        match e {
            idvault_core::rowmac::RowMacError::Forged(kind) => Self::Forged(kind),
        }
    }
}

/// Checks a row's stored MAC (its `mac_version` and `mac` columns).
pub(crate) fn check_row(keys: &RowMac, row: &RowBytes, r: &AnyRow) -> Result<(), StoreError> {
    let version: Option<i64> = r.try_get("mac_version")?;
    let mac: Option<Vec<u8>> = r.try_get("mac")?;
    keys.check(row, version, mac.as_deref())?;
    Ok(())
}

/// The MAC of a row about to be written: `(mac_version, mac)` to bind.
pub(crate) fn seal_row(keys: &RowMac, row: &RowBytes) -> (i64, Vec<u8>) {
    let (v, mac) = keys.seal(row);
    (i64::from(v), mac.to_vec())
}

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite.
    Sqlite,
    /// PostgreSQL (or a compatible distributed engine).
    Postgres,
}

/// The store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite only: the group-commit writer (see [`writer`]). SQLite's own
    /// busy handler sleeps and retries with growing back-off, so writers
    /// of this process queue here instead, and share each fsync.
    writer: Option<std::sync::Arc<GroupWriter>>,
    /// Applies the write sets of requests that only insert, in batches
    /// (see [`writeset`]). Set once connected.
    applier: Option<std::sync::Arc<Applier>>,
    /// Bounds the writes queued or running (admission control): a write
    /// beyond it is refused at once instead of waiting.
    queue: std::sync::Arc<tokio::sync::Semaphore>,
    /// PostgreSQL: the pool's connections partners' transactions may hold
    /// together, all but [`RESERVED_CONNECTIONS`] (see
    /// [`Store::connections_per_partner`]).
    partner_txs: std::sync::Arc<tokio::sync::Semaphore>,
    /// Keys of the MACs on rows that authorise something (devices,
    /// enrollment codes, consents, links, rules): every such row written
    /// carries one and every one read is checked. Without keys (never set)
    /// those rows can be neither written nor trusted.
    row_mac: Option<std::sync::Arc<RowMac>>,
    /// SQLite: this process's WAL checkpoints (see [`wal`]).
    wal: std::sync::Arc<wal::WalJobs>,
    /// A deletion wants a VACUUM (PostgreSQL), and whether one runs.
    vacuum_due: std::sync::Arc<std::sync::atomic::AtomicBool>,
    vacuum_running: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Requests per committed batch (a metric; shared with the writers).
    batch_sizes: prometheus_client::metrics::histogram::Histogram,
}

/// Writes queued for or holding the writer, at most.
pub const WRITE_QUEUE: usize = 1024;

/// PostgreSQL: the pool's connections.
const POSTGRES_CONNECTIONS: u32 = 16;

/// PostgreSQL: connections of the pool partners' transactions never hold,
/// left to the batch applier (which commits every insert-only request,
/// its audit leaf included), the sequencer, jobs and reads.
pub const RESERVED_CONNECTIONS: u32 = 4;

/// SQLite settings applied to every connection. `synchronous=FULL` with WAL
/// makes an acknowledged commit survive power loss; `secure_delete`
/// overwrites deleted rows so a shredded DEK does not linger in free pages.
///
/// Readers keep a small page cache (4 MiB; the writer has its own, see
/// [`SQLITE_WRITER_PRAGMAS`]). In WAL mode a connection drops its whole
/// page cache when it starts a read after another connection committed,
/// and every audited request commits, so readers' caches almost never
/// survive from one read to the next, and dropping one takes time in
/// proportion to the most pages it ever held (`pcache1TruncateUnsafe` was
/// the top function of a match lookup). The pages come back from the OS
/// page cache.
///
/// WAL checkpoints run on a task of their own ([`Store::checkpoint_wal`],
/// every [`WAL_CHECKPOINT_EVERY`]): SQLite otherwise copies the WAL into
/// the database, and fsyncs it, inside the COMMIT that crossed 1,000
/// pages, so every few hundredth request waited milliseconds for it. A
/// connection that commits still checkpoints itself past 8,192 pages
/// (32 MiB), so the WAL stays bounded in a process that runs no background
/// task (the CLI's maintenance commands); and the WAL file is cut back to
/// 32 MiB when it restarts, after a reader held it back and it grew.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; \
     PRAGMA synchronous = FULL; \
     PRAGMA busy_timeout = 10000; \
     PRAGMA secure_delete = ON; \
     PRAGMA foreign_keys = ON; \
     PRAGMA cache_size = -4096; \
     PRAGMA wal_autocheckpoint = 8192; \
     PRAGMA journal_size_limit = 33554432;";

/// How long a SQLite connection waits for a lock another connection
/// holds (`busy_timeout` in [`SQLITE_PRAGMAS`]).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the batch writer connection. It commits, so its page cache
/// survives its own transactions, and 64 MiB keeps the upper levels and
/// recently written pages of the blind-matching index at millions of
/// rows. Below 1 GiB of database it has a cost: after a B-tree split
/// SQLite walks the whole page cache at COMMIT (the balancer renumbers
/// pages through the lock-byte page's number, and the cache is then
/// truncated above the database's size), so a 16 MiB cache measured
/// 6–11 % more creates/s on a small database (docs/BENCHMARKS.md, "a
/// page-cache walk after B-tree splits"). Above 1 GiB the walk does not
/// happen.
const SQLITE_WRITER_PRAGMAS: &str = "PRAGMA cache_size = -65536";

/// The compile-time option `.cargo/config.toml` hands to the bundled
/// SQLite (`LIBSQLITE3_FLAGS`), as `PRAGMA compile_options` reports it:
/// the sub-journal (the pages a savepoint or a statement may have to
/// undo) stays in memory and never goes to a temporary file. The writer
/// runs every batch in savepoints, and with SQLite's default (a file past
/// 64 KiB) nearly every batch created, wrote and deleted one
/// (docs/BENCHMARKS.md, "SQLite writer: the sub-journal in memory"). A
/// threshold above 128 KiB is not an option: SQLite spills the journal in
/// one write, its unix layer cuts writes to 128 KiB and the spill fails
/// as "database or disk is full" (the 8 MiB threshold used before failed
/// every transaction past it). So the journal holds, in memory, the
/// earlier content of every page one transaction changes, and what bounds
/// it is that every transaction is bounded: a write group
/// ([`writer::MAX_BATCH`] requests, each within its message limits), an
/// ImportBridge message (1,000 records), a rewrap or prune batch, a part
/// of a match domain's clearing, one person's deletion. A build without
/// the option is slower and sends page pre-images through unlinked
/// temporary files (which `secure_delete` does not reach); durability is
/// the same, since crash recovery never reads a sub-journal. The vault
/// warns when it starts.
const SQLITE_SUBJOURNAL_OPTION: &str = "STMTJRNL_SPILL=-1";

/// Another option: no allocation statistics. They take a process-wide
/// mutex on every SQLite allocation, and the in-memory sub-journal
/// allocates a chunk of 1 KiB at a time (about 7 % of the creates/s,
/// docs/BENCHMARKS.md, "The sub-journal in memory, and why not 8 MiB").
/// Nothing in the vault reads them.
const SQLITE_MEMSTATUS_OPTION: &str = "DEFAULT_MEMSTATUS=0";

/// The other option `.cargo/config.toml` hands to the bundled SQLite: the
/// query planner stability guarantee. SQLite otherwise plans some
/// statements with the values bound to them (a bound LIMIT; with ANALYZE
/// statistics, any bound value compared with an indexed column) and then
/// parses and plans them again at every new binding, which took 14 % of
/// the CPU under a Match load (docs/BENCHMARKS.md, "The match lookup
/// planned once"). A build without it is slower, never wrong.
const SQLITE_QPSG_OPTION: &str = "ENABLE_QPSG";

/// `.cargo/config.toml`'s options for the bundled SQLite, each with what is
/// slower without it (never wrong): checked once at start.
const SQLITE_BUILD_OPTIONS: [(&str, &str); 3] = [
    (
        SQLITE_SUBJOURNAL_OPTION,
        "write batches journal to a temporary file",
    ),
    (
        SQLITE_MEMSTATUS_OPTION,
        "every SQLite allocation takes a process-wide lock",
    ),
    (
        SQLITE_QPSG_OPTION,
        "statements whose plan reads a bound value are planned again at every call",
    ),
];

impl Store {
    /// Connects, applies the backend's pragmas, runs migrations and checks
    /// SQLite durability settings by reading them back.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        let mut opts = AnyPoolOptions::new()
            .max_connections(match backend {
                // Readers. The batch writer's connection comes from the
                // pool too but is detached from it at once, and the pool
                // opens another in its place: 8 readers and the writer.
                Backend::Sqlite => 8,
                Backend::Postgres => POSTGRES_CONNECTIONS,
            })
            .acquire_timeout(Duration::from_secs(15));
        if backend == Backend::Sqlite {
            // An embedded database cannot drop a connection: skip the ping
            // sqlx otherwise sends before handing one out (a round trip to
            // the connection's worker thread on every transaction).
            opts = opts.test_before_acquire(false);
            opts = opts.after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(SQLITE_PRAGMAS).await?;
                    Ok(())
                })
            });
        }
        if backend == Backend::Sqlite {
            create_private_sqlite_file(url);
        }
        let pool = opts.connect(url).await?;
        let mut store = Self {
            pool,
            backend,
            writer: None,
            applier: None,
            queue: std::sync::Arc::new(tokio::sync::Semaphore::new(WRITE_QUEUE)),
            partner_txs: std::sync::Arc::new(tokio::sync::Semaphore::new(
                usize::try_from(POSTGRES_CONNECTIONS.saturating_sub(RESERVED_CONNECTIONS))
                    .unwrap_or(1)
                    .max(1),
            )),
            row_mac: None,
            wal: std::sync::Arc::default(),
            vacuum_due: std::sync::Arc::default(),
            vacuum_running: std::sync::Arc::default(),
            batch_sizes: crate::metrics::batch_histogram(),
        };
        match backend {
            Backend::Sqlite => {
                SQLITE_MIGRATIONS.run(&store.pool).await?;
                store.check_sqlite_durability().await?;
                let compiled = store.sqlite_compile_options().await?;
                for (option, without) in SQLITE_BUILD_OPTIONS {
                    if !compiled.iter().any(|o| o == option) {
                        tracing::warn!(
                            option,
                            without,
                            "the linked SQLite was not compiled with this option (a build \
                             outside the repository, LIBSQLITE3_FLAGS set in the environment, \
                             or a system SQLite), which makes the vault slower"
                        );
                    }
                }
                let mut conn = store.pool.acquire().await?;
                conn.execute(SQLITE_WRITER_PRAGMAS).await?;
                store.writer = Some(std::sync::Arc::new(GroupWriter::new(
                    conn,
                    store.batch_sizes.clone(),
                )));
            }
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&store.pool).await?,
        }
        store.applier = Some(std::sync::Arc::new(Applier::start(
            backend,
            &store.pool,
            store.writer.clone(),
            store.batch_sizes.clone(),
        )));
        Ok(store)
    }

    async fn check_sqlite_durability(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Durability(format!(
                "journal_mode is {mode}, not wal"
            )));
        }
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await?;
        // 2 = FULL, 3 = EXTRA: both fsync the WAL on every commit.
        if sync < 2 {
            return Err(StoreError::Durability(format!(
                "synchronous is {sync}, not FULL (2)"
            )));
        }
        Ok(())
    }

    /// The linked SQLite's compile-time options, as `PRAGMA
    /// compile_options` spells them (without the `SQLITE_` prefix).
    async fn sqlite_compile_options(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("PRAGMA compile_options")
            .fetch_all(&self.pool)
            .await?)
    }

    /// Installs the row MAC keys (done by the vault when it starts, from
    /// its key hierarchy).
    pub fn set_row_mac(&mut self, keys: RowMac) {
        self.row_mac = Some(std::sync::Arc::new(keys));
    }

    /// The row MAC keys; refused when none were installed.
    pub(crate) fn row_keys(&self) -> Result<std::sync::Arc<RowMac>, StoreError> {
        self.row_mac
            .clone()
            .ok_or(StoreError::Forged("any (no row key)"))
    }

    /// Up to `limit` subjects whose owner carries no MAC (written before
    /// owner MACs), after `after` by id: `(subject, created_by,
    /// created_at_ms)`.
    pub async fn unsealed_subjects(
        &self,
        after: Option<&SubjectId>,
        limit: u32,
    ) -> Result<Vec<(SubjectId, String, i64)>, StoreError> {
        let rows: Vec<(Vec<u8>, String, i64)> = sqlx::query_as(
            "SELECT subject_id, created_by, created_at_ms FROM subjects \
             WHERE mac IS NULL AND subject_id > $1 ORDER BY subject_id LIMIT $2",
        )
        .bind(after.map_or_else(Vec::new, |s| s.as_bytes().to_vec()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, by, at)| {
                let id =
                    SubjectId::from_slice(&id).ok_or(StoreError::Corrupt("subjects.subject_id"))?;
                Ok((id, by, at))
            })
            .collect()
    }

    /// How many rows that authorise something carry no MAC (written before
    /// row MACs existed): they authorise nothing, and the vault says so
    /// when it starts.
    pub async fn unsealed_rows(&self) -> Result<u64, StoreError> {
        let mut n = 0u64;
        for sql in [
            "SELECT COUNT(*) FROM devices WHERE mac IS NULL",
            "SELECT COUNT(*) FROM enrollment_codes WHERE mac IS NULL",
            "SELECT COUNT(*) FROM consent_challenges WHERE mac IS NULL",
            "SELECT COUNT(*) FROM consents WHERE mac IS NULL",
            "SELECT COUNT(*) FROM entity_links WHERE mac IS NULL",
            "SELECT COUNT(*) FROM subject_rules WHERE mac IS NULL",
            "SELECT COUNT(*) FROM pairwise_tokens WHERE mac IS NULL",
        ] {
            let c: i64 = sqlx::query_scalar(sql).fetch_one(&self.pool).await?;
            n += u64::try_from(c).unwrap_or(0);
        }
        Ok(n)
    }

    /// The histogram of requests per committed batch.
    pub fn batch_sizes(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.batch_sizes.clone()
    }

    /// Pool connections open, idle, and the pool's limit.
    pub fn pool_use(&self) -> (u64, u64, u64) {
        let open = u64::from(self.pool.size());
        let idle = u64::try_from(self.pool.num_idle()).unwrap_or(u64::MAX);
        let max = u64::from(self.pool.options().get_max_connections());
        (open, idle, max)
    }

    /// Writes queued for or holding the writer.
    pub fn write_queue_use(&self) -> u64 {
        let free = self.queue.available_permits();
        u64::try_from(WRITE_QUEUE.saturating_sub(free)).unwrap_or(u64::MAX)
    }

    /// Per outbox recipient: commands waiting and the oldest one's
    /// creation time (unix ms).
    pub async fn outbox_stats(&self) -> Result<Vec<(String, u64, Option<i64>)>, StoreError> {
        let rows: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT recipient, COUNT(*), MIN(created_at_ms) FROM command_outbox GROUP BY recipient",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(r, n, t)| (r, u64::try_from(n).unwrap_or(0), t))
            .collect())
    }

    /// Audit leaves written and not yet sequenced into the tree.
    pub async fn unsequenced_count(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE idx IS NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool, for operational tools and tests.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a write transaction; see the module docs. Refused at once
    /// with [`StoreError::QueueFull`] when [`WRITE_QUEUE`] writes are
    /// already queued or running. If `deadline` passes while the write
    /// waits for the writer (or in the applier's queue), it is not
    /// executed: [`StoreError::Deadline`].
    pub fn begin_audited(
        &self,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<AuditedTx, StoreError> {
        let slot = std::sync::Arc::clone(&self.queue)
            .try_acquire_owned()
            .map_err(|_| StoreError::QueueFull(WRITE_QUEUE))?;
        Ok(self.write_tx(slot, deadline))
    }

    /// [`Self::begin_audited`] that waits for a place in the writer queue
    /// instead of being refused: the vault's own jobs (the sequencer, the
    /// coalesced refusal records), never a partner's request.
    pub async fn begin_audited_waiting(&self) -> Result<AuditedTx, StoreError> {
        let slot = std::sync::Arc::clone(&self.queue)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Batch("the store is closed".into()))?;
        Ok(self.write_tx(slot, None))
    }

    fn write_tx(
        &self,
        slot: tokio::sync::OwnedSemaphorePermit,
        deadline: Option<tokio::time::Instant>,
    ) -> AuditedTx {
        AuditedTx {
            tx: None,
            pending: WriteSet::default(),
            store: self.clone(),
            deadline,
            changed: None,
            subject_keys: HashMap::new(),
            slot: Some(slot),
            share: None,
            share_held: None,
        }
    }

    /// How many connections one partner's transactions may hold at once
    /// ([`AuditedTx::limit_connections`]): half the pool on PostgreSQL,
    /// where a transaction holds a pool connection from its first read to
    /// its commit, waiting on row locks meanwhile. Without a share, one
    /// partner's requests queued on one subject's lock could hold every
    /// connection, and every other partner would wait for one. All
    /// partners' transactions together also leave
    /// [`RESERVED_CONNECTIONS`] to the applier, jobs and reads, so that two
    /// such partners stall no commit. On SQLite transactions go through
    /// the one writer (its queue is bounded and its waits end with their
    /// caller) and hold no pool connection.
    pub fn connections_per_partner(&self) -> usize {
        let max = match self.backend {
            Backend::Postgres => self.pool.options().get_max_connections() / 2,
            Backend::Sqlite => self.pool.options().get_max_connections(),
        };
        usize::try_from(max).unwrap_or(1).max(1)
    }

    /// Opens the connection of a write: the writer's savepoint on SQLite,
    /// a transaction of its own on PostgreSQL.
    async fn open_write(
        &self,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<(TxConn, tokio::sync::OwnedSemaphorePermit), StoreError> {
        Ok(match &self.writer {
            Some(w) => {
                let (batch, slot) = w.begin(slot).await?;
                (TxConn::Batch(batch), slot)
            }
            None => (TxConn::Own(self.pool.begin().await?), slot),
        })
    }

    /// Commits a write without a leaf: only the sequencer's own batches,
    /// which write the tree itself.
    async fn commit_write(&self, tx: AuditedTx) -> Result<(), StoreError> {
        tx.finish().await
    }

    /// Canonical entity tokens for blind indexes (absent ones are left out),
    /// in batches of [`LOOKUP_BATCH`] indexes per query.
    pub async fn xref_lookup(
        &self,
        owner: &str,
        indexes: &[[u8; HASH_LEN]],
    ) -> Result<HashMap<[u8; HASH_LEN], String>, StoreError> {
        let mut out = HashMap::with_capacity(indexes.len());
        let mut conn = self.pool.acquire().await?;
        for part in indexes.chunks(LOOKUP_BATCH) {
            lookup_chunk(&mut *conn, owner, part, &mut out).await?;
        }
        Ok(out)
    }

    /// `owner`'s cross-reference generation (bumped by its imports that
    /// change links; 0 before the first).
    pub async fn xref_generation(&self, owner: &str) -> Result<i64, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT value FROM xref_owner_generation WHERE owner = $1")
                .bind(owner.to_owned())
                .fetch_optional(&self.pool)
                .await?;
        Ok(v.unwrap_or(0))
    }

    /// Resolves an entity token (or an alias) to its canonical token.
    pub async fn xref_resolve(
        &self,
        owner: &str,
        token: &str,
    ) -> Result<Option<String>, StoreError> {
        resolve(&self.pool, owner, token).await
    }

    /// Resolves `token` for `owner` and reads its canonical entity's links
    /// outside any write transaction, from one snapshot (REPEATABLE READ
    /// on PostgreSQL), so a concurrent merge is seen whole or not at all.
    ///
    /// At most `cap + 1` links are read: more than `cap` means too many.
    pub async fn xref_detokenize(
        &self,
        owner: &str,
        token: &str,
        cap: u64,
    ) -> Result<Option<(String, Vec<XrefLink>)>, StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        let Some(canonical) = resolve(&mut *tx, owner, token).await? else {
            return Ok(None);
        };
        let links = links_of(&mut *tx, &canonical, cap.saturating_add(1)).await?;
        tx.commit().await?;
        Ok(Some((canonical, links)))
    }

    /// After a shredding delete: push the WAL into the main file and
    /// truncate it, so deleted pages (overwritten by `secure_delete`) do not
    /// survive in the WAL. A reader can hold it back; then the periodic
    /// checkpoint retries it (see [`wal`]).
    ///
    /// On PostgreSQL a deleted row stays in its page as a dead tuple until
    /// VACUUM reclaims it: one VACUUM of the tables holding a person's keys
    /// and data is started in the background (at most one at a time; a
    /// delete while one runs marks another as due).
    ///
    /// Returns whether the deleted rows are gone from the database files
    /// now (SQLite: the checkpoint was not held back by a reader).
    pub async fn compact_after_delete(&self) -> Result<bool, StoreError> {
        match self.backend {
            Backend::Sqlite => self.truncate_wal().await,
            Backend::Postgres => {
                use std::sync::atomic::Ordering;
                self.vacuum_due.store(true, Ordering::SeqCst);
                if self.vacuum_running.swap(true, Ordering::SeqCst) {
                    return Ok(false);
                }
                let (pool, due, running) = (
                    self.pool.clone(),
                    std::sync::Arc::clone(&self.vacuum_due),
                    std::sync::Arc::clone(&self.vacuum_running),
                );
                tokio::spawn(async move {
                    loop {
                        while due.swap(false, Ordering::SeqCst) {
                            // A second of deletes shares one VACUUM.
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            if let Err(e) = sqlx::query(
                                "VACUUM subjects, packets, match_index, match_subjects, \
                                 pairwise_tokens, device_requests, code_failures, devices, \
                                 enrollment_codes, consent_challenges, consent_withdrawals, \
                                 consents, consent_receipts, transactions, credentials, \
                                 entity_links, subject_rules, events, command_outbox, \
                                 command_counters",
                            )
                            .execute(&pool)
                            .await
                            {
                                tracing::warn!(error = %e, "VACUUM after delete failed; autovacuum reclaims the rows later");
                            }
                        }
                        running.store(false, Ordering::SeqCst);
                        // A delete that marked one due after the last check
                        // and saw this task still running is served here.
                        if !due.load(Ordering::SeqCst) || running.swap(true, Ordering::SeqCst) {
                            break;
                        }
                    }
                });
                Ok(false)
            }
        }
    }
}

/// [`newest_packets_of`]: `$1` the subject id, `$2` the head's sequence.
const NEWEST_PACKETS_SQL: &str = concat!(
    "SELECT p.seq, p.packet FROM packets p \
         JOIN (SELECT subject_key, field_name, max(seq) AS seq FROM packets \
               WHERE subject_key = ",
    key_of_subject!(),
    " AND subject_id = $1 AND seq <= $2 GROUP BY subject_key, field_name) n \
         ON p.subject_key = n.subject_key AND p.seq = n.seq ORDER BY p.seq"
);

/// [`packets_to_head_of`]: `$1` the subject id, `$2` the head's sequence.
/// The run starts at the oldest of the fields' newest packets (by the
/// `field_name` column, which only chooses where to start: the packets'
/// own headers decide, see `packet::newest_values_to_head`).
const PACKETS_TO_HEAD_SQL: &str = concat!(
    "SELECT seq, field_name, packet FROM packets WHERE subject_key = ",
    key_of_subject!(),
    " AND subject_id = $1 AND seq <= $2 AND seq >= \
         (SELECT min(n.seq) FROM (SELECT max(seq) AS seq FROM packets WHERE subject_key = ",
    key_of_subject!(),
    " AND subject_id = $1 AND seq <= $2 GROUP BY field_name) n) ORDER BY seq"
);

/// [`AuditedTx::packets_between`]: `$1` the subject id, `$2` and `$3`
/// the sequences after which and up to which.
const PACKETS_BETWEEN_SQL: &str = concat!(
    "SELECT seq, field_name, packet FROM packets WHERE subject_key = ",
    key_of_subject!(),
    " AND subject_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq"
);

/// The end of a subject's chain up to `head_seq`, ascending, from the
/// oldest of its fields' newest packets (by the `field_name` column) on:
/// with the `field_name` column beside each: what
/// `packet::newest_values_to_head` checks and reads. As many rows as
/// the fields when each was written once; a field written long ago and
/// another updated often since make it longer (at most the chain, 10,000
/// packets).
pub(crate) async fn packets_to_head_of<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &SubjectId,
    head_seq: u64,
) -> Result<Vec<StoredPacket>, StoreError> {
    let rows: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(PACKETS_TO_HEAD_SQL)
        .bind(id.as_bytes().to_vec())
        .bind(u64_to_i64(head_seq)?)
        .fetch_all(ex)
        .await?;
    stored_packets(rows)
}

/// Packet rows as read (`seq, field_name, packet`).
fn stored_packets(rows: Vec<(i64, String, Vec<u8>)>) -> Result<Vec<StoredPacket>, StoreError> {
    rows.into_iter()
        .map(|(seq, field, packet)| {
            Ok(StoredPacket {
                seq: i64_to_u64(seq, "packets.seq")?,
                field,
                packet,
            })
        })
        .collect()
}

/// A packet row as stored: its sequence, the field name kept beside it
/// (unauthenticated; the packet's header is what counts) and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPacket {
    /// The `seq` column.
    pub seq: u64,
    /// The `field_name` column.
    pub field: String,
    /// The packet.
    pub packet: Vec<u8>,
}

impl StoredPacket {
    /// The field name column and the bytes, as
    /// `packet::newest_values_to_head` takes them.
    pub fn labelled(&self) -> (&str, &[u8]) {
        (&self.field, &self.packet)
    }
}

/// Up to `head_seq`, the newest packet of each of a subject's fields (by
/// the `field_name` column), ascending (see `AuditedTx::newest_packets`).
async fn newest_packets_of<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &SubjectId,
    head_seq: u64,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(NEWEST_PACKETS_SQL)
        .bind(id.as_bytes().to_vec())
        .bind(u64_to_i64(head_seq)?)
        .fetch_all(ex)
        .await?;
    rows.into_iter()
        .map(|(seq, b)| Ok((i64_to_u64(seq, "packets.seq")?, b)))
        .collect()
}

/// A subject row, without a lock, its owner checked with `keys`.
async fn subject_by_id<'e>(
    ex: impl Executor<'e, Database = Any>,
    keys: Option<&RowMac>,
    id: &SubjectId,
) -> Result<Option<SubjectRecord>, StoreError> {
    let row: Option<AnyRow> = sqlx::query(concat!(
        "SELECT ",
        subject_columns!(),
        " FROM subjects WHERE subject_id = $1"
    ))
    .bind(id.as_bytes().to_vec())
    .fetch_optional(ex)
    .await?;
    row.as_ref()
        .map(|r| rows::subject_record(r, keys))
        .transpose()
}

/// Blind indexes per lookup query.
pub const LOOKUP_BATCH: usize = 500;

/// Looks up at most [`LOOKUP_BATCH`] blind indexes of `owner` in one
/// query and adds the canonical token of each one found to `out`. Blind
/// indexes are keyed per owner, so the owner filters never drop a row the
/// vault wrote; they keep a row a database writer moved to another
/// partner's entity from joining that partner's lookups or imports.
async fn lookup_chunk<'e>(
    ex: impl Executor<'e, Database = Any>,
    owner: &str,
    part: &[[u8; HASH_LEN]],
    out: &mut HashMap<[u8; HASH_LEN], String>,
) -> Result<(), StoreError> {
    if part.is_empty() {
        return Ok(());
    }
    let placeholders: Vec<String> = (2..=part.len() + 1).map(|n| format!("${n}")).collect();
    // Only numbered placeholders are formatted into the text; every value
    // is bound. (sqlx's QueryBuilder would emit `?` for the Any driver,
    // which PostgreSQL does not accept.)
    let sql = format!(
        "SELECT l.blind_index, e.token, e.alias_of FROM xref_links l \
         JOIN xref_entities e ON e.token = l.token \
         LEFT JOIN xref_entities c ON c.token = e.alias_of \
         WHERE l.owner = $1 AND e.owner = $1 AND (e.alias_of IS NULL OR c.owner = $1) \
         AND l.blind_index IN ({})",
        placeholders.join(", ")
    );
    let mut q = sqlx::query_as::<_, (Vec<u8>, String, Option<String>)>(sqlx::AssertSqlSafe(sql))
        .bind(owner.to_owned());
    for bi in part {
        q = q.bind(bi.to_vec());
    }
    for (bi, token, alias) in q.fetch_all(ex).await? {
        let bi: [u8; HASH_LEN] = bi
            .try_into()
            .map_err(|_| StoreError::Corrupt("xref_links.blind_index"))?;
        out.insert(bi, alias.unwrap_or(token));
    }
    Ok(())
}

/// One stored link: `(id_type, key_version, blind_index, sealed identifier)`.
pub type XrefLink = (String, u32, [u8; HASH_LEN], Vec<u8>);

async fn links_of<'e>(
    ex: impl Executor<'e, Database = Any>,
    token: &str,
    limit: u64,
) -> Result<Vec<XrefLink>, StoreError> {
    let rows: Vec<(String, i64, Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT id_type, key_version, blind_index, sealed FROM xref_links WHERE token = $1 \
         ORDER BY id_type, blind_index LIMIT $2",
    )
    .bind(token.to_owned())
    .bind(u64_to_i64(limit)?)
    .fetch_all(ex)
    .await?;
    rows.into_iter()
        .map(|(t, v, bi, sealed)| {
            let v = u32::try_from(v).map_err(|_| StoreError::Corrupt("xref_links.key_version"))?;
            let bi: [u8; HASH_LEN] = bi
                .try_into()
                .map_err(|_| StoreError::Corrupt("xref_links.blind_index"))?;
            Ok((t, v, bi, sealed))
        })
        .collect()
}

async fn resolve<'e>(
    ex: impl Executor<'e, Database = Any>,
    owner: &str,
    token: &str,
) -> Result<Option<String>, StoreError> {
    // An alias is followed only to an entity of the same owner (a row a
    // database writer pointed elsewhere resolves to nothing).
    let row: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT e.token, e.alias_of FROM xref_entities e \
         LEFT JOIN xref_entities c ON c.token = e.alias_of \
         WHERE e.token = $1 AND e.owner = $2 AND (e.alias_of IS NULL OR c.owner = $2)",
    )
    .bind(token.to_owned())
    .bind(owner.to_owned())
    .fetch_optional(ex)
    .await?;
    Ok(row.map(|(t, a)| a.unwrap_or(t)))
}

/// The PostgreSQL advisory lock `(class, key)` that orders one owner's
/// cross-reference imports ([`AuditedTx::xref_lock_owner`]): class `idvx`,
/// key the first 4 bytes of a SHA-256 of the owner.
pub fn xref_import_lock(owner: &str) -> (i32, i32) {
    advisory_key(*b"idvx", b"idvault/v1/xref-import-lock\0", owner.as_bytes())
}

/// The PostgreSQL advisory lock `(class, key)` a subject's deletion holds
/// exclusively from its first statement to its commit, and an ignored
/// event shared ([`AuditedTx::subject_kept`]): class `idvs`, key the
/// first 4 bytes of a SHA-256 of the subject id. Two people sharing a key
/// (one pair in 2^32) only order their deletions and ignored events
/// together: an event about the one while the other is being deleted
/// reads as NOT_FOUND, and the publisher may send it again.
pub fn subject_lock(id: &SubjectId) -> (i32, i32) {
    advisory_key(*b"idvs", b"idvault/v1/subject-lock\0", id.as_bytes())
}

/// A two-int advisory lock key: `class` names what the lock orders (so
/// the vault's kinds never meet), the key is the first 4 bytes of a
/// SHA-256 of `label` and `data`.
fn advisory_key(class: [u8; 4], label: &[u8], data: &[u8]) -> (i32, i32) {
    let digest = idvault_core::crypto::sha256(&[label, data]);
    (
        i32::from_be_bytes(class),
        i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]),
    )
}

/// A database error of a COMMIT, as [`StoreError::CommitUnknown`]: unlike
/// a failed statement, it is not the request's own failure, and its
/// outcome is unknown, so the pipeline must neither record it as a
/// refusal nor tell the caller nothing was done.
pub(super) fn commit_failed(e: StoreError) -> StoreError {
    match e {
        StoreError::Database(e) => StoreError::CommitUnknown(e.to_string()),
        e => e,
    }
}

/// A write transaction that ends by appending its request's audit leaf
/// (after any the vault added of its own).
/// Dropping it without [`AuditedTx::commit`] rolls its writes back.
///
/// It takes a connection only when a statement needs one (a read, an
/// update, a delete); plain inserts wait in its write set until then, or
/// until the commit, where a transaction that never needed a connection
/// is handed whole to the batch applier ([`writeset`]).
#[derive(Debug)]
pub struct AuditedTx {
    tx: Option<TxConn>,
    pending: WriteSet,
    store: Store,
    deadline: Option<tokio::time::Instant>,
    changed: Option<(SubjectId, ChainHead)>,
    /// The storage keys (migrations 0026, 0027) of the subjects this
    /// transaction created or read by row, so that their packets and match
    /// rows can be written under them. One for most requests; a re-index
    /// or rewrap batch, a page of subjects.
    subject_keys: HashMap<SubjectId, [u8; 16]>,
    /// Its place in the writer queue, given back when it ends (while its
    /// connection is being opened, the opening task holds it).
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The requesting partner's share of the pool's connections, taken
    /// (with one of all partners' connections) before a transaction of
    /// its own opens on PostgreSQL, and held until its connection is free
    /// again ([`AuditedTx::limit_connections`]).
    share: Option<std::sync::Arc<tokio::sync::Semaphore>>,
    share_held: Option<SharePermits>,
}

/// A partner's permits for one connection: its own share's and all
/// partners'.
#[derive(Debug)]
struct SharePermits {
    _partner: tokio::sync::OwnedSemaphorePermit,
    _all: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for AuditedTx {
    /// A transaction dropped with its connection (a request that failed,
    /// or was cancelled while a statement waited on a row lock) keeps its
    /// partner's permits until the connection is free: sqlx hands the
    /// connection back to the pool only once the statement in flight has
    /// answered, so releasing them at once would let a partner that
    /// cancels its calls hold more connections than its share.
    fn drop(&mut self) {
        let Some(permits) = self.share_held.take() else {
            return;
        };
        if let Some(TxConn::Own(t)) = self.tx.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                // Waits for the statement in flight, then rolls back.
                let _ = t.rollback().await;
                drop(permits);
            });
        }
    }
}

impl AuditedTx {
    /// The subject chain head this transaction wrote last (its leaf
    /// records it, so a rolled-back chain is detected).
    pub fn changed_head(&self) -> Option<(SubjectId, ChainHead)> {
        self.changed
    }

    /// Adds one more leaf, written with this transaction's own at
    /// [`AuditedTx::commit`] (the vault's record of what the request did
    /// that its caller's record must not say).
    pub(crate) fn add_leaf(&mut self, leaf: &NewLeaf<'_>) -> Result<(), StoreError> {
        self.pending.push(Table::Leaves, leaf.values()?);
        Ok(())
    }

    /// Appends the leaf and commits; returns once the write is durable.
    pub async fn commit(mut self, leaf: &NewLeaf<'_>) -> Result<(), StoreError> {
        self.pending.push(Table::Leaves, leaf.values()?);
        if self.tx.is_none()
            && let Some(applier) = self.store.applier.clone()
            && let Some(slot) = self.slot.take()
        {
            let set = std::mem::take(&mut self.pending);
            return applier.submit(set, self.deadline, slot).await;
        }
        self.finish().await
    }

    /// The transaction's connection, opened on first use; rows waiting in
    /// the write set are written on it first, so reads see them.
    async fn conn(&mut self) -> Result<&mut sqlx::AnyConnection, StoreError> {
        self.open().await?;
        let Some(tx) = self.tx.as_mut() else {
            return Err(StoreError::Batch("the write has no connection".into()));
        };
        if !self.pending.is_empty() {
            let set = std::mem::take(&mut self.pending);
            writeset::apply(tx, self.store.backend, &[&set]).await?;
        }
        Ok(tx)
    }

    /// Counts this transaction's connection against `share`, its
    /// partner's ([`Store::connections_per_partner`]): on PostgreSQL it
    /// waits for a permit before it takes a pool connection, within its
    /// deadline, and keeps it until it ends. The request pipeline sets
    /// this for every partner's request; the vault's own jobs have none.
    pub(crate) fn limit_connections(&mut self, share: std::sync::Arc<tokio::sync::Semaphore>) {
        self.share = Some(share);
    }

    /// Opens the transaction's connection if it has none yet.
    async fn open(&mut self) -> Result<(), StoreError> {
        if self.tx.is_none() {
            let slot = self
                .slot
                .take()
                .ok_or(StoreError::Batch("the write lost its queue place".into()))?;
            let share = match &self.share {
                Some(s) if self.store.writer.is_none() && self.share_held.is_none() => {
                    Some(std::sync::Arc::clone(s))
                }
                _ => None,
            };
            let store = &self.store;
            let open = async move {
                let closed = |_| StoreError::Batch("the store is closed".into());
                let held = match share {
                    Some(s) => Some(SharePermits {
                        _partner: s.acquire_owned().await.map_err(closed)?,
                        _all: std::sync::Arc::clone(&store.partner_txs)
                            .acquire_owned()
                            .await
                            .map_err(closed)?,
                    }),
                    None => None,
                };
                let (tx, slot) = store.open_write(slot).await?;
                Ok::<_, StoreError>((tx, slot, held))
            };
            let opened = match self.deadline {
                Some(d) => tokio::time::timeout_at(d, open)
                    .await
                    .map_err(|_| StoreError::Deadline)?,
                None => open.await,
            }?;
            self.tx = Some(opened.0);
            self.slot = Some(opened.1);
            if opened.2.is_some() {
                self.share_held = opened.2;
            }
        }
        Ok(())
    }

    /// Writes the rows still waiting and commits. A failure of those rows
    /// is the request's ([`StoreError::Database`]); a failed COMMIT is not
    /// (its outcome may be unknown): [`StoreError::Batch`].
    async fn finish(mut self) -> Result<(), StoreError> {
        if !self.pending.is_empty() {
            self.open().await?;
        }
        let _slot = self.slot.take();
        let rest = std::mem::take(&mut self.pending);
        match (self.tx.take(), &self.store.writer) {
            // Nothing was ever written: nothing to commit.
            (None, _) => Ok(()),
            (Some(TxConn::Own(mut t)), _) => {
                writeset::apply(&mut t, self.store.backend, &[&rest]).await?;
                t.commit().await.map_err(|e| commit_failed(e.into()))
            }
            // The rows ride with the release (see `GroupWriter::commit`).
            (Some(TxConn::Batch(b)), Some(w)) => w.commit(b, rest).await,
            (Some(TxConn::Batch(_)), None) => Err(StoreError::Corrupt("batch without a writer")),
        }
    }

    /// Loads a subject row. On PostgreSQL it also locks the row until the
    /// transaction ends: the per-subject guard that orders concurrent
    /// writes to one subject (on SQLite the writer already orders them).
    pub async fn subject(&mut self, id: &SubjectId) -> Result<Option<SubjectRecord>, StoreError> {
        let sql = locked!(
            self.store.backend,
            "SELECT ",
            subject_columns!(),
            ", COALESCE(subject_key, subject_id) AS subject_key FROM subjects WHERE subject_id = $1"
        );
        self.subject_by(sql, id, None).await
    }

    /// Whether the subject exists, kept from being deleted until the
    /// transaction ends. For a call that writes rows naming the person
    /// without changing the person (an ignored event): it takes neither
    /// the person's row (where the person's own calls wait, `FOR NO KEY
    /// UPDATE`) nor any row lock at all, so a partner repeating such a
    /// call cannot stall the person. On PostgreSQL it takes the person's
    /// deletion lock ([`subject_lock`]) shared, and only if it is free:
    /// a deletion takes it exclusively first ([`Self::delete_subject`]),
    /// so it waits for the calls holding it and then finds their rows
    /// committed, and a call that comes while a deletion holds or waits
    /// for the lock reads the person as absent. PostgreSQL refuses a
    /// shared try-lock while an exclusive request waits, so these calls
    /// cannot starve a deletion, as shared row locks could.
    pub async fn subject_kept(&mut self, id: &SubjectId) -> Result<bool, StoreError> {
        if self.store.backend == Backend::Postgres {
            let (class, key) = subject_lock(id);
            let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock_shared($1, $2)")
                .bind(class)
                .bind(key)
                .fetch_one(self.conn().await?)
                .await?;
            if !held {
                return Ok(false);
            }
            // A statement of its own, after the lock: its snapshot then
            // sees a deletion that committed before the lock was free. In
            // the statement that takes the lock, the snapshot is older
            // than the lock and could still see the row of a person whose
            // deletion has committed (and has deleted their events).
        }
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM subjects WHERE subject_id = $1")
            .bind(id.as_bytes().to_vec())
            .fetch_optional(self.conn().await?)
            .await?;
        Ok(found.is_some())
    }

    /// Loads a subject row only if `created_by` made it, locking it on
    /// PostgreSQL as [`AuditedTx::subject`] does. Another partner's row is
    /// neither returned nor locked: a partner naming someone else's subject
    /// must not get to hold that person's row (and stall its owner's
    /// writes) for the length of a call that then finds it absent.
    pub async fn subject_created_by(
        &mut self,
        id: &SubjectId,
        created_by: &str,
    ) -> Result<Option<SubjectRecord>, StoreError> {
        let sql = locked!(
            self.store.backend,
            "SELECT ",
            subject_columns!(),
            ", COALESCE(subject_key, subject_id) AS subject_key \
             FROM subjects WHERE subject_id = $1 AND created_by = $2"
        );
        self.subject_by(sql, id, Some(created_by)).await
    }

    /// Runs one of the subject row reads above (`$1` the id, `$2` the
    /// creator when given), keeping the row's storage key for its packets
    /// and match rows ([`AuditedTx::subject_key`]).
    async fn subject_by(
        &mut self,
        sql: &'static str,
        id: &SubjectId,
        created_by: Option<&str>,
    ) -> Result<Option<SubjectRecord>, StoreError> {
        let mut q = sqlx::query(sql).bind(id.as_bytes().to_vec());
        if let Some(c) = created_by {
            q = q.bind(c.to_owned());
        }
        let row: Option<AnyRow> = q.fetch_optional(self.conn().await?).await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let keys = self.store.row_mac.clone();
        let record = rows::subject_record(&row, keys.as_deref())?;
        self.keep_subject_key(*id, rows::fixed(&row, "subject_key")?);
        Ok(Some(record))
    }

    pub(super) fn keep_subject_key(&mut self, id: SubjectId, key: [u8; 16]) {
        self.subject_keys.entry(id).or_insert(key);
    }

    /// The storage key of a subject this transaction created or read by
    /// row ([`AuditedTx::subject`], [`AuditedTx::subject_created_by`]);
    /// any other subject is refused: a request that has not read the
    /// subject has not checked it either.
    pub(super) fn subject_key(&self, id: &SubjectId) -> Result<[u8; 16], StoreError> {
        self.subject_keys
            .get(id)
            .copied()
            .ok_or(StoreError::Corrupt(
                "rows for a subject this transaction did not read",
            ))
    }

    /// Up to `head_seq`, the newest packet of each of a subject's fields
    /// (by the `field_name` column; the caller opens them, and the header
    /// each authenticates is what counts), ascending: the number of
    /// fields, not the history. An update reads them on the SQLite writer,
    /// where reading a long history (up to 10,000 packets) would hold
    /// every other partner's writes.
    pub async fn newest_packets(
        &mut self,
        id: &SubjectId,
        head_seq: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        newest_packets_of(self.conn().await?, id, head_seq).await
    }

    /// A subject's packets after sequence `after` up to `head_seq`,
    /// ascending, with their `field_name` column (what
    /// `packet::newest_values_since` checks): a release's last attempt
    /// reads, under the writer, only what changed since its previous
    /// read. The caller bounds `head_seq - after`.
    pub async fn packets_between(
        &mut self,
        id: &SubjectId,
        after: u64,
        head_seq: u64,
    ) -> Result<Vec<StoredPacket>, StoreError> {
        let rows: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(PACKETS_BETWEEN_SQL)
            .bind(id.as_bytes().to_vec())
            .bind(u64_to_i64(after)?)
            .bind(u64_to_i64(head_seq)?)
            .fetch_all(self.conn().await?)
            .await?;
        stored_packets(rows)
    }

    /// Seals up to `limit` pairwise tokens that carry no MAC, as they are;
    /// returns how many. Only for `idvault keys seal-upgraded-tokens`, run
    /// by the operator once after upgrading from before token MACs
    /// (migration 0019 says why the table is then trusted as it is). At
    /// any other time a token without a MAC was put there by hand, and
    /// the vault never seals one on its own.
    pub async fn seal_unsealed_pairwise_tokens(&mut self, limit: u32) -> Result<u64, StoreError> {
        let keys = self.store.row_keys()?;
        let rows: Vec<(Vec<u8>, String, String)> = sqlx::query_as(
            "SELECT subject_id, partner, token FROM pairwise_tokens WHERE mac IS NULL \
             ORDER BY partner, subject_id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(self.conn().await?)
        .await?;
        let mut sealed = 0u64;
        for (s, partner, token) in rows {
            let subject = matching::subject_of(&s, "pairwise_tokens.subject_id")?;
            let (v, mac) = seal_row(
                &keys,
                &idvault_core::rowmac::pairwise_token(&partner, &subject, &token),
            );
            sealed += sqlx::query(
                "UPDATE pairwise_tokens SET mac_version = $1, mac = $2 \
                 WHERE partner = $3 AND subject_id = $4 AND token = $5 AND mac IS NULL",
            )
            .bind(v)
            .bind(mac)
            .bind(partner)
            .bind(s)
            .bind(token)
            .execute(self.conn().await?)
            .await?
            .rows_affected();
        }
        Ok(sealed)
    }

    /// Seals the owners of subjects written before owner MACs `(subject,
    /// created_by, created_at_ms)`, each only if its row still says that
    /// and has no MAC; returns how many were sealed. The caller vouches
    /// for each owner with the subject's CreateSubject audit leaf.
    pub async fn seal_subject_owners(
        &mut self,
        owners: &[(SubjectId, String, i64)],
    ) -> Result<u64, StoreError> {
        let keys = self.store.row_keys()?;
        let mut sealed = 0;
        for (id, by, at) in owners {
            let (v, mac) = seal_row(&keys, &idvault_core::rowmac::subject_owner(id, by, *at));
            sealed += sqlx::query(
                "UPDATE subjects SET mac_version = $1, mac = $2 WHERE subject_id = $3 \
                 AND mac IS NULL AND created_by = $4 AND created_at_ms = $5",
            )
            .bind(v)
            .bind(mac)
            .bind(id.as_bytes().to_vec())
            .bind(by.clone())
            .bind(*at)
            .execute(self.conn().await?)
            .await?
            .rows_affected();
        }
        Ok(sealed)
    }

    /// Inserts a new subject row, its owner sealed with the row MAC, under
    /// a fresh time-ordered storage key (migration 0026: its packets then
    /// land on the last pages of their B-tree, beside the rest of its
    /// group commit's). The key is internal: it never leaves the store.
    /// `request` is the id of the creating request, whose audit leaf
    /// (this transaction's) chain verification finds by it while the
    /// subject has no later one (migration 0029).
    pub fn insert_subject(
        &mut self,
        s: &SubjectRecord,
        request: &[u8; 16],
    ) -> Result<(), StoreError> {
        let key = crate::clock::time_ordered_id();
        let (mac_version, mac) = seal_row(
            &*self.store.row_keys()?,
            &idvault_core::rowmac::subject_owner(&s.id, &s.created_by, s.created_at_ms),
        );
        self.pending.push(
            Table::Subjects,
            vec![
                Value::Bytes(s.id.as_bytes().to_vec()),
                Value::Text(s.created_by.clone()),
                Value::Bytes(s.wrapped_dek.bytes.clone()),
                Value::Int(i64::from(s.wrapped_dek.kek_version)),
                Value::Int(u64_to_i64(s.head.seq)?),
                Value::Bytes(s.head.hash.to_vec()),
                Value::Int(s.created_at_ms),
                Value::Int(s.updated_at_ms),
                Value::Int(mac_version),
                Value::Bytes(mac),
                Value::Bytes(key.to_vec()),
                Value::Bytes(request.to_vec()),
            ],
        );
        self.keep_subject_key(s.id, key);
        self.changed = Some((s.id, s.head));
        Ok(())
    }

    /// Appends packets to a subject this transaction created or read by
    /// row ([`AuditedTx::subject`], [`AuditedTx::subject_created_by`]),
    /// under its storage key; any other subject is refused (a request
    /// that has not read the subject has not checked its head either).
    pub fn insert_packets(
        &mut self,
        id: &SubjectId,
        packets: &[NewPacket],
    ) -> Result<(), StoreError> {
        let key = self.subject_key(id)?;
        for p in packets {
            self.pending.push(
                Table::Packets,
                vec![
                    Value::Bytes(key.to_vec()),
                    Value::Bytes(id.as_bytes().to_vec()),
                    Value::Int(u64_to_i64(p.seq)?),
                    Value::Text(p.field.as_str().to_owned()),
                    Value::Bytes(p.packet.as_bytes().to_vec()),
                ],
            );
        }
        Ok(())
    }

    /// Moves a subject's chain head.
    pub async fn set_head(
        &mut self,
        id: &SubjectId,
        head: ChainHead,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE subjects SET head_seq = $1, head_hash = $2, updated_at_ms = $3 WHERE subject_id = $4")
            .bind(u64_to_i64(head.seq)?)
            .bind(head.hash.to_vec())
            .bind(now_ms)
            .bind(id.as_bytes().to_vec())
            .execute(self.conn().await?)
            .await?;
        self.changed = Some((*id, head));
        Ok(())
    }

    /// Deletes a subject's wrapped DEK, packets, blind-matching indexes,
    /// pairwise tokens, consent rows, links, rules, events and pending
    /// commands; returns what it removed, `(what, rows)` in this order,
    /// `packets` first (a deletion receipt lists them).
    pub async fn delete_subject(
        &mut self,
        id: &SubjectId,
    ) -> Result<Vec<(&'static str, u64)>, StoreError> {
        // Calls that write rows naming the person without its row lock
        // (`subject_kept`) hold this lock shared: waiting for them here,
        // before anything is deleted, leaves none of their rows behind.
        self.advisory_xact_lock(subject_lock(id)).await?;
        // The storage key (migrations 0026–0028), read before its row
        // goes: the packets, match rows and tokens are found by it, each
        // beside the subject id.
        let key = match self.subject_keys.get(id) {
            Some(k) => k.to_vec(),
            None => {
                let k: Option<Vec<u8>> = sqlx::query_scalar(
                    "SELECT COALESCE(subject_key, subject_id) FROM subjects WHERE subject_id = $1",
                )
                .bind(id.as_bytes().to_vec())
                .fetch_optional(self.conn().await?)
                .await?;
                k.unwrap_or_else(|| id.as_bytes().to_vec())
            }
        };
        // Pending commands are locked in id order first (PostgreSQL), as
        // acknowledgements take them (`ack_commands`): a recipient
        // acknowledging some of them meanwhile then waits for this, or this
        // for it, never each for the other.
        let commands = match self.store.backend {
            Backend::Postgres => {
                "DELETE FROM command_outbox WHERE command_id IN \
                 (SELECT command_id FROM command_outbox WHERE subject_id = $1 \
                  ORDER BY command_id FOR UPDATE)"
            }
            Backend::Sqlite => "DELETE FROM command_outbox WHERE subject_id = $1",
        };
        let mut out = Vec::with_capacity(19);
        // `$1` the subject id; `$2`, in the statements marked keyed, its
        // storage key.
        for (what, sql, keyed) in [
            (
                "packets",
                "DELETE FROM packets WHERE subject_key = $2 AND subject_id = $1",
                true,
            ),
            (
                "data-key",
                "DELETE FROM subjects WHERE subject_id = $1",
                false,
            ),
            // No longer matchable, and no partner's token points at it.
            (
                "match-index",
                "DELETE FROM match_index WHERE subject_key = $2 AND subject_id = $1",
                true,
            ),
            // Keyed by (domain, key, subject) and (partner, key, subject),
            // with no index by subject alone (migrations 0024, 0027,
            // 0028): a loose index scan names the few domains and partners
            // present, one seek each, and the rows go by key. Every value present is
            // named, so nothing is left behind whatever `match_domains` or
            // the configuration say.
            (
                "match-signatures",
                concat!(
                    "DELETE FROM match_subjects WHERE subject_key = $2 AND subject_id = $1 \
                     AND domain IN (",
                    loose_scan!(match_subjects, domain),
                    ")"
                ),
                true,
            ),
            (
                "pairwise-tokens",
                concat!(
                    "DELETE FROM pairwise_tokens WHERE subject_key = $2 AND subject_id = $1 \
                     AND partner IN (",
                    loose_scan!(pairwise_tokens, partner),
                    ")"
                ),
                true,
            ),
            // Its devices (and their request ids), codes, challenges,
            // consents and receipts.
            (
                "device-requests",
                "DELETE FROM device_requests WHERE device_id IN \
                 (SELECT device_id FROM devices WHERE subject_id = $1)",
                false,
            ),
            (
                "code-failures",
                "DELETE FROM code_failures WHERE device_id IN \
                 (SELECT device_id FROM devices WHERE subject_id = $1)",
                false,
            ),
            // Its one-time transactions (their third parties see NotFound).
            (
                "transactions",
                "DELETE FROM transactions WHERE subject_id = $1",
                false,
            ),
            (
                "devices",
                "DELETE FROM devices WHERE subject_id = $1",
                false,
            ),
            (
                "enrollment-codes",
                "DELETE FROM enrollment_codes WHERE subject_id = $1",
                false,
            ),
            (
                "consent-challenges",
                "DELETE FROM consent_challenges WHERE subject_id = $1",
                false,
            ),
            (
                "consents",
                "DELETE FROM consents WHERE subject_id = $1",
                false,
            ),
            (
                "consent-receipts",
                "DELETE FROM consent_receipts WHERE subject_id = $1",
                false,
            ),
            (
                "consent-withdrawals",
                "DELETE FROM consent_withdrawals WHERE subject_id = $1",
                false,
            ),
            // Its links, rules, event history and pending commands (whose
            // payloads its data key sealed).
            (
                "entity-links",
                "DELETE FROM entity_links WHERE subject_id = $1",
                false,
            ),
            (
                "rules",
                "DELETE FROM subject_rules WHERE subject_id = $1",
                false,
            ),
            ("events", "DELETE FROM events WHERE subject_id = $1", false),
            ("commands", commands, false),
            (
                "command-counters",
                "DELETE FROM command_counters WHERE subject_id = $1",
                false,
            ),
        ] {
            let mut q = sqlx::query(sql).bind(id.as_bytes().to_vec());
            if keyed {
                q = q.bind(key.clone());
            }
            let n = q.execute(self.conn().await?).await?.rows_affected();
            out.push((what, n));
        }
        Ok(out)
    }

    /// Orders this transaction's cross-reference changes after every
    /// other import of `owner` still running: on PostgreSQL a transaction
    /// advisory lock per owner, held until the commit (on SQLite the
    /// writer already orders them). Without it two imports could each
    /// read a link set the other is changing and merge on stale reads
    /// (an alias pointing to an alias, which lookups, following one hop,
    /// would not resolve), or both insert one new identifier and fail.
    /// Owners' namespaces are separate, so owners never wait for each
    /// other. The two-int key (class `idvx`, then a hash of the owner)
    /// cannot meet the vault's single-bigint advisory locks.
    pub async fn xref_lock_owner(&mut self, owner: &str) -> Result<(), StoreError> {
        self.advisory_xact_lock(xref_import_lock(owner)).await
    }

    /// Takes the advisory lock `(class, key)` exclusively until the
    /// transaction ends, waiting for its holders (PostgreSQL; on SQLite
    /// the writer already orders every write transaction).
    async fn advisory_xact_lock(&mut self, (class, key): (i32, i32)) -> Result<(), StoreError> {
        if self.store.backend != Backend::Postgres {
            return Ok(());
        }
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(class)
            .bind(key)
            .execute(self.conn().await?)
            .await?;
        Ok(())
    }

    /// Canonical tokens for blind indexes, inside the transaction.
    pub async fn xref_lookup(
        &mut self,
        owner: &str,
        indexes: &[[u8; HASH_LEN]],
    ) -> Result<HashMap<[u8; HASH_LEN], String>, StoreError> {
        let mut out = HashMap::with_capacity(indexes.len());
        for part in indexes.chunks(LOOKUP_BATCH) {
            lookup_chunk(self.conn().await?, owner, part, &mut out).await?;
        }
        Ok(out)
    }

    /// Resolves an entity token (or alias) inside the transaction.
    pub async fn xref_resolve(
        &mut self,
        owner: &str,
        token: &str,
    ) -> Result<Option<String>, StoreError> {
        resolve(self.conn().await?, owner, token).await
    }

    /// Bumps `owner`'s cross-reference generation (its links or merges
    /// changed).
    pub async fn xref_bump_generation(&mut self, owner: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO xref_owner_generation (owner, value) VALUES ($1, 1) \
             ON CONFLICT (owner) DO UPDATE SET value = xref_owner_generation.value + 1",
        )
        .bind(owner.to_owned())
        .execute(self.conn().await?)
        .await?;
        Ok(())
    }

    /// Creates an entity.
    pub async fn xref_create(
        &mut self,
        owner: &str,
        token: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO xref_entities (token, owner, alias_of, created_at_ms) VALUES ($1, $2, NULL, $3)")
            .bind(token.to_owned())
            .bind(owner.to_owned())
            .bind(now_ms)
        .execute(self.conn().await?)
        .await?;
        Ok(())
    }

    /// Links a blind index to an entity.
    pub async fn xref_link(
        &mut self,
        index: &[u8; HASH_LEN],
        key_version: u32,
        id_type: &str,
        owner: &str,
        token: &str,
        sealed: Vec<u8>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO xref_links (blind_index, key_version, id_type, owner, token, sealed) VALUES ($1, $2, $3, $4, $5, $6)",
        )
            .bind(index.to_vec())
            .bind(i64::from(key_version))
            .bind(id_type.to_owned())
            .bind(owner.to_owned())
            .bind(token.to_owned())
            .bind(sealed)
            .execute(self.conn().await?)
            .await?;
        Ok(())
    }

    /// How many links the entity `token` holds, counted up to just past
    /// `cap` (the count stops there).
    pub async fn xref_link_count(&mut self, token: &str, cap: u64) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT 1 FROM xref_links WHERE token = $1 LIMIT $2) AS c",
        )
        .bind(token.to_owned())
        .bind(u64_to_i64(cap.saturating_add(1))?)
        .fetch_one(self.conn().await?)
        .await?;
        i64_to_u64(n, "xref_links count")
    }

    /// Merges `merged` entities into `survivor`: they and their aliases
    /// become aliases of `survivor`, and their links move to it.
    pub async fn xref_merge(
        &mut self,
        survivor: &str,
        merged: &[String],
    ) -> Result<(), StoreError> {
        for m in merged {
            sqlx::query("UPDATE xref_entities SET alias_of = $1 WHERE token = $2 OR alias_of = $2")
                .bind(survivor.to_owned())
                .bind(m.clone())
                .execute(self.conn().await?)
                .await?;
            sqlx::query("UPDATE xref_links SET token = $1 WHERE token = $2")
                .bind(survivor.to_owned())
                .bind(m.clone())
                .execute(self.conn().await?)
                .await?;
        }
        Ok(())
    }
}

/// Makes a new SQLite database file readable by its owner only before
/// SQLite opens it: SQLite would make it (and its `-wal` and `-shm`, which
/// take the database file's mode) 0644, readable by every local user. Only
/// for a URL that asks for creation (`mode=rwc`) and whose path needs no
/// decoding (anything else is left to SQLite, so no stray file is made at
/// a path SQLite would read differently).
fn create_private_sqlite_file(url: &str) {
    if !url.contains("mode=rwc") || url.contains('%') {
        return;
    }
    let Some(path) = crate::backup::sqlite_path(url) else {
        return;
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    // An existing file is left as it is; a missing directory or no
    // permission is SQLite's to report when it opens the path.
    let _ = opts.open(&path);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SQLite store in a fresh directory, with a row-MAC key.
    async fn keyed_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("v.db").display());
        let mut store = Store::connect(&url).await.expect("connect");
        store.set_row_mac(
            RowMac::from_keys([idvault_core::secret::Secret::from_bytes([7; 32], 1)]).expect("key"),
        );
        (dir, store)
    }

    fn email(
        v: &str,
    ) -> Vec<(
        idvault_core::subject::FieldName,
        idvault_core::subject::FieldValue,
    )> {
        use idvault_core::subject::{FieldName, FieldValue};
        let name = FieldName::parse("email").expect("name");
        vec![(name, FieldValue::parse(name, v.to_owned()).expect("value"))]
    }

    /// A new subject's row and its first packet (an e-mail address).
    fn sealed_subject(
        id: SubjectId,
        dek: &idvault_core::secret::DataKey,
        rng: &idvault_core::SystemRng,
    ) -> (SubjectRecord, Vec<NewPacket>) {
        let (packets, head) = idvault_core::packet::append(
            &id,
            dek,
            ChainHead::genesis(&id),
            &email("a@example.com"),
            1,
            rng,
        )
        .expect("seal");
        let row = SubjectRecord {
            id,
            created_by: "partner-a".into(),
            owner_verified: true,
            wrapped_dek: idvault_core::keys::WrappedDek {
                kek_version: 1,
                bytes: vec![0; 60],
            },
            head,
            created_at_ms: 1,
            updated_at_ms: 1,
        };
        (row, packets)
    }

    /// A storage key a database writer copies from one subject onto
    /// another reaches none of the first one's packets: deleting the
    /// second removes and counts none of them (nor its own, moved off its
    /// key: they stay behind, unreadable without the deleted data key).
    #[tokio::test]
    async fn a_copied_storage_key_reaches_none_of_its_owners_packets() {
        let (_dir, store) = keyed_store().await;
        let rng = idvault_core::SystemRng::default();
        let dek = idvault_core::keys::generate_dek(&rng).expect("dek");
        let (a, b) = (
            SubjectId::from_bytes([1; 16]),
            SubjectId::from_bytes([2; 16]),
        );
        let mut tx = store.begin_audited(None).expect("queue");
        for id in [a, b] {
            let (row, packets) = sealed_subject(id, &dek, &rng);
            tx.insert_subject(&row, &[9; 16]).expect("subject");
            tx.insert_packets(&id, &packets).expect("packets");
        }
        store.commit_write(tx).await.expect("commit");
        sqlx::query(
            "UPDATE subjects SET subject_key = \
             (SELECT subject_key FROM subjects WHERE subject_id = $1) WHERE subject_id = $2",
        )
        .bind(a.as_bytes().to_vec())
        .bind(b.as_bytes().to_vec())
        .execute(store.pool())
        .await
        .expect("copy the key");
        assert!(
            newest_packets_of(store.pool(), &b, 1)
                .await
                .expect("read")
                .is_empty(),
            "b reads none of a's packets"
        );
        let mut tx = store.begin_audited(None).expect("queue");
        let removed = tx.delete_subject(&b).await.expect("delete");
        store.commit_write(tx).await.expect("commit");
        assert_eq!(removed.first(), Some(&("packets", 0)));
        assert_eq!(
            newest_packets_of(store.pool(), &a, 1)
                .await
                .expect("read")
                .len(),
            1,
            "a's packet is still there"
        );
    }

    /// A subject's packets go under its storage key (migration 0026): a
    /// new subject's is a fresh version-7 UUID, never its id; a subject
    /// from before keeps its id as its key (`subject_key` NULL). Both
    /// read back and take updates; a row inserted by subject id alone
    /// gets the key; packets and match rows for a subject the
    /// transaction has not read are refused; the reads seek the key,
    /// never scan.
    #[tokio::test]
    async fn packets_live_under_the_subjects_storage_key() {
        use idvault_core::packet;
        let (_dir, store) = keyed_store().await;
        let rng = idvault_core::SystemRng::default();
        let dek = idvault_core::keys::generate_dek(&rng).expect("dek");
        let fields = |v: &str| email(v);
        let create = |id: SubjectId| sealed_subject(id, &dek, &rng);
        let new = SubjectId::generate(&rng).expect("id");
        let old = SubjectId::generate(&rng).expect("id");
        let mut tx = store.begin_audited(None).expect("queue");
        for id in [new, old] {
            let (row, packets) = create(id);
            tx.insert_subject(&row, &[9; 16]).expect("subject");
            tx.insert_packets(&id, &packets).expect("packets");
        }
        store.commit_write(tx).await.expect("commit");

        let key_of = |id: SubjectId| {
            sqlx::query_scalar::<_, Option<Vec<u8>>>(
                "SELECT subject_key FROM subjects WHERE subject_id = $1",
            )
            .bind(id.as_bytes().to_vec())
        };
        let key = key_of(new)
            .fetch_one(store.pool())
            .await
            .expect("key")
            .expect("set");
        assert_eq!(key.len(), 16);
        assert_eq!(key[6] >> 4, 7, "a version-7 UUID");
        assert_ne!(key.as_slice(), new.as_bytes());
        let stored: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT subject_key FROM packets WHERE subject_id = $1")
                .bind(new.as_bytes().to_vec())
                .fetch_all(store.pool())
                .await
                .expect("packets");
        assert_eq!(stored, vec![key.clone()]);
        // A row a tool inserts by subject id alone takes the subject's key.
        sqlx::query(
            "INSERT INTO packets (subject_id, seq, field_name, packet) VALUES ($1, 99, 'x', $2)",
        )
        .bind(new.as_bytes().to_vec())
        .bind(vec![0u8; 8])
        .execute(store.pool())
        .await
        .expect("insert by id");
        let given: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT subject_key FROM packets WHERE seq = 99")
                .fetch_one(store.pool())
                .await
                .expect("row");
        assert_eq!(given, Some(key));
        sqlx::query("DELETE FROM packets WHERE seq = 99")
            .execute(store.pool())
            .await
            .expect("delete");
        // As a subject created before migration 0026 is stored.
        sqlx::query("UPDATE subjects SET subject_key = NULL WHERE subject_id = $1")
            .bind(old.as_bytes().to_vec())
            .execute(store.pool())
            .await
            .expect("unkey");
        sqlx::query("UPDATE packets SET subject_key = subject_id WHERE subject_id = $1")
            .bind(old.as_bytes().to_vec())
            .execute(store.pool())
            .await
            .expect("rekey packets");
        assert_eq!(
            key_of(old).fetch_one(store.pool()).await.expect("key"),
            None
        );

        let mut tx = store.begin_audited(None).expect("queue");
        let refused = tx.insert_packets(&new, &create(new).1);
        assert!(
            matches!(refused, Err(StoreError::Corrupt(_))),
            "{refused:?}"
        );
        // So are match rows (migration 0027), written or deleted.
        let refused = tx.match_set_subject(&new, &[("d", 1, vec![1])]);
        assert!(
            matches!(refused, Err(StoreError::Corrupt(_))),
            "{refused:?}"
        );
        let refused = tx.match_insert(&new, &[("d", 1, 1, 7)]);
        assert!(
            matches!(refused, Err(StoreError::Corrupt(_))),
            "{refused:?}"
        );
        let refused = tx.match_delete_subject(&new).await;
        assert!(
            matches!(refused, Err(StoreError::Corrupt(_))),
            "{refused:?}"
        );
        let refused = tx.match_delete_domain_subject("d", &new).await;
        assert!(
            matches!(refused, Err(StoreError::Corrupt(_))),
            "{refused:?}"
        );
        let refused = tx.match_delete_subjects(&[new]).await;
        assert!(
            matches!(refused, Err(StoreError::Corrupt(_))),
            "{refused:?}"
        );
        for id in [new, old] {
            let row = tx.subject(&id).await.expect("read").expect("exists");
            let (packets, head) =
                packet::append(&id, &dek, row.head, &fields("b@example.com"), 2, &rng)
                    .expect("seal");
            tx.insert_packets(&id, &packets).expect("packets");
            tx.set_head(&id, head, 2).await.expect("head");
        }
        store.commit_write(tx).await.expect("commit");
        for id in [new, old] {
            let newest = newest_packets_of(store.pool(), &id, 2)
                .await
                .expect("newest");
            assert_eq!(
                newest.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
                vec![2],
                "{id:?}"
            );
        }

        // The steps of a statement's plan, bound to `new` and head 9.
        let plan_of = async |sql: &str| -> Vec<String> {
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                    .bind(new.as_bytes().to_vec())
                    .bind(9i64)
                    .fetch_all(store.pool())
                    .await
                    .expect("plan");
            plan.into_iter().map(|(_, _, _, d)| d).collect()
        };
        let steps = plan_of(NEWEST_PACKETS_SQL).await;
        assert!(
            steps
                .iter()
                .any(|d| d.contains("USING INDEX packets_key (subject_key=? AND seq<?)")),
            "{steps:?}"
        );
        assert!(!steps.iter().any(|d| d.starts_with("SCAN p")), "{steps:?}");
        // The run to the head: both of its reads seek the storage key.
        for id in [new, old] {
            let run = packets_to_head_of(store.pool(), &id, 2).await.expect("run");
            assert_eq!(
                run.iter().map(|p| p.seq).collect::<Vec<_>>(),
                vec![2],
                "{id:?}"
            );
        }
        let steps = plan_of(PACKETS_TO_HEAD_SQL).await;
        assert!(!steps.iter().any(|d| d.starts_with("SCAN")), "{steps:?}");
    }

    /// A partner's pairwise tokens go under the subject's storage key
    /// (migration 0028): the creator's, written with the new subject, and
    /// a later one (a match answer's, for a subject the transaction did
    /// not read) alike. A row inserted or moved by subject id alone takes
    /// the key of the subject it names; a key copied onto another subject
    /// reads none of its owner's tokens; a deletion removes the subject's
    /// own, and one a writer moved off the key, which outlives it, names
    /// nobody once the subject is gone. (The MAC walk of a key rotation, which goes by token now, is
    /// `consent::rewrap_walk_crosses_windows_and_passes_forged_rows`'s in the e2e suite.)
    #[tokio::test]
    async fn pairwise_tokens_live_under_the_subjects_storage_key() {
        let (_dir, store) = keyed_store().await;
        let rng = idvault_core::SystemRng::default();
        let dek = idvault_core::keys::generate_dek(&rng).expect("dek");
        let (a, b) = (
            SubjectId::generate(&rng).expect("id"),
            SubjectId::generate(&rng).expect("id"),
        );
        let mut tx = store.begin_audited(None).expect("queue");
        for id in [a, b] {
            let (row, packets) = sealed_subject(id, &dek, &rng);
            tx.insert_subject(&row, &[9; 16]).expect("subject");
            tx.insert_packets(&id, &packets).expect("packets");
        }
        tx.pairwise_insert("partner-a", &[(a, "pw_a".into()), (b, "pw_b".into())])
            .expect("creator's tokens");
        store.commit_write(tx).await.expect("commit");
        let mut tx = store.begin_audited(None).expect("queue");
        tx.pairwise_insert("partner-b", &[(a, "pw_a2".into())])
            .expect("a later token");
        store.commit_write(tx).await.expect("commit");

        let key_of = async |id: SubjectId| -> Vec<u8> {
            sqlx::query_scalar("SELECT subject_key FROM subjects WHERE subject_id = $1")
                .bind(id.as_bytes().to_vec())
                .fetch_one(store.pool())
                .await
                .expect("key")
        };
        let token_key = async |token: &str| -> Vec<u8> {
            sqlx::query_scalar("SELECT subject_key FROM pairwise_tokens WHERE token = $1")
                .bind(token.to_owned())
                .fetch_one(store.pool())
                .await
                .expect("token key")
        };
        let (ka, kb) = (key_of(a).await, key_of(b).await);
        assert_ne!(ka.as_slice(), a.as_bytes());
        assert_eq!(token_key("pw_a").await, ka);
        assert_eq!(token_key("pw_a2").await, ka);
        assert_eq!(token_key("pw_b").await, kb);
        let read = store
            .pairwise_tokens_of("partner-a", &[a, b])
            .await
            .expect("read");
        assert_eq!(read.tokens.get(&a).map(String::as_str), Some("pw_a"));
        assert_eq!(read.tokens.get(&b).map(String::as_str), Some("pw_b"));
        assert!(read.forged.is_empty());

        // A tool's row by subject id alone takes the subject's key, and so
        // does a row moved to another subject.
        sqlx::query(
            "INSERT INTO pairwise_tokens (partner, subject_id, token) VALUES ('partner-c', $1, 'x')",
        )
        .bind(b.as_bytes().to_vec())
        .execute(store.pool())
        .await
        .expect("insert by id");
        assert_eq!(token_key("x").await, kb);
        sqlx::query("UPDATE pairwise_tokens SET subject_id = $1 WHERE token = 'x'")
            .bind(a.as_bytes().to_vec())
            .execute(store.pool())
            .await
            .expect("move");
        assert_eq!(token_key("x").await, ka);
        sqlx::query("DELETE FROM pairwise_tokens WHERE token = 'x'")
            .execute(store.pool())
            .await
            .expect("delete");

        // b's key copied onto a: a reads none of b's tokens, b none of its
        // own (moved off its key by the copy), and the deletion of a takes
        // only a's.
        sqlx::query("UPDATE subjects SET subject_key = $1 WHERE subject_id = $2")
            .bind(kb.clone())
            .bind(a.as_bytes().to_vec())
            .execute(store.pool())
            .await
            .expect("copy the key");
        let read = store
            .pairwise_tokens_of("partner-a", &[a, b])
            .await
            .expect("read");
        assert_eq!(read.tokens.get(&b).map(String::as_str), Some("pw_b"));
        assert!(!read.tokens.contains_key(&a), "{:?}", read.tokens);
        sqlx::query("UPDATE subjects SET subject_key = $1 WHERE subject_id = $2")
            .bind(ka)
            .bind(a.as_bytes().to_vec())
            .execute(store.pool())
            .await
            .expect("put the key back");
        let delete = async |id: SubjectId| {
            let mut tx = store.begin_audited(None).expect("queue");
            let removed = tx.delete_subject(&id).await.expect("delete");
            store.commit_write(tx).await.expect("commit");
            removed
        };
        let removed = delete(a).await;
        assert!(removed.contains(&("pairwise-tokens", 2)), "{removed:?}");
        let left: Vec<String> = sqlx::query_scalar("SELECT token FROM pairwise_tokens")
            .fetch_all(store.pool())
            .await
            .expect("left");
        assert_eq!(left, vec!["pw_b".to_owned()]);

        // b's token moved off its key outlives b's deletion, MAC intact,
        // and then names nobody.
        let named = async || {
            let mut tx = store.begin_audited(None).expect("queue");
            let found = tx
                .subject_of_pairwise("partner-a", "pw_b")
                .await
                .expect("lookup");
            store.commit_write(tx).await.expect("commit");
            found
        };
        assert_eq!(named().await, Some(b));
        sqlx::query("UPDATE pairwise_tokens SET subject_key = $1 WHERE token = 'pw_b'")
            .bind(vec![0u8; 16])
            .execute(store.pool())
            .await
            .expect("move off the key");
        let removed = delete(b).await;
        assert!(removed.contains(&("pairwise-tokens", 0)), "{removed:?}");
        assert_eq!(
            named().await,
            None,
            "a token of a deleted subject names nobody"
        );
    }

    /// Migration 0026 on a database holding packets from before it: they
    /// move under their subject's id as its key and read back, and the
    /// subject (key NULL) takes new packets under the same key.
    #[tokio::test]
    async fn packets_from_before_0026_survive_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("v.db").display());
        let older = dir.path().join("migrations");
        std::fs::create_dir(&older).expect("dir");
        let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        for entry in std::fs::read_dir(&all).expect("migrations") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("name")
                .to_owned();
            if name.as_str() < "0026" {
                std::fs::copy(&path, older.join(&name)).expect("copy");
            }
        }
        sqlx::any::install_default_drivers();
        let id = SubjectId::from_bytes([5; 16]);
        {
            let pool = AnyPool::connect(&url).await.expect("pool");
            sqlx::migrate::Migrator::new(older.as_path())
                .await
                .expect("older migrations")
                .run(&pool)
                .await
                .expect("run older");
            sqlx::query(concat!(
                "INSERT INTO subjects (",
                subject_columns!(),
                ") VALUES ($1, 'partner-a', $2, 1, 2, $3, 1, 1, NULL, NULL)"
            ))
            .bind(id.as_bytes().to_vec())
            .bind(vec![0u8; 60])
            .bind(vec![0u8; 32])
            .execute(&pool)
            .await
            .expect("subject");
            for (seq, field) in [(1i64, "email"), (2, "city")] {
                sqlx::query(
                    "INSERT INTO packets (subject_id, seq, field_name, packet) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(id.as_bytes().to_vec())
                .bind(seq)
                .bind(field)
                .bind(vec![u8::try_from(seq).expect("small"); 8])
                .execute(&pool)
                .await
                .expect("packet");
            }
            pool.close().await;
        }
        let store = Store::connect(&url).await.expect("migrate to the newest");
        let newest = newest_packets_of(store.pool(), &id, 2)
            .await
            .expect("newest");
        assert_eq!(newest, vec![(1, vec![1; 8]), (2, vec![2; 8])]);
        let keys: Vec<(Vec<u8>, Vec<u8>)> =
            sqlx::query_as("SELECT subject_key, subject_id FROM packets ORDER BY seq")
                .fetch_all(store.pool())
                .await
                .expect("keys");
        assert!(
            keys.iter()
                .all(|(k, s)| k == s && s.as_slice() == id.as_bytes())
        );
        let mut tx = store.begin_audited(None).expect("queue");
        tx.subject(&id).await.expect("read").expect("exists");
        let rng = idvault_core::SystemRng::default();
        let dek = idvault_core::keys::generate_dek(&rng).expect("dek");
        let email = idvault_core::subject::FieldName::parse("email").expect("name");
        let value =
            idvault_core::subject::FieldValue::parse(email, "a@example.com".into()).expect("value");
        let head = ChainHead {
            seq: 2,
            hash: [0; 32],
        };
        let (packets, _) =
            idvault_core::packet::append(&id, &dek, head, &[(email, value)], 2, &rng)
                .expect("seal");
        tx.insert_packets(&id, &packets).expect("packets");
        store.commit_write(tx).await.expect("commit");
        let newest = newest_packets_of(store.pool(), &id, 3)
            .await
            .expect("newest");
        let sealed = packets[0].packet.as_bytes().to_vec();
        assert_eq!(newest, vec![(2, vec![2; 8]), (3, sealed)]);
        let key: Vec<u8> = sqlx::query_scalar("SELECT subject_key FROM packets WHERE seq = 3")
            .fetch_one(store.pool())
            .await
            .expect("key");
        assert_eq!(key.as_slice(), id.as_bytes());
    }

    /// The writer restores [`BUSY_TIMEOUT`] after a truncating checkpoint
    /// shortened it: it must be the value every connection starts with.
    #[test]
    fn busy_timeout_matches_the_pragmas() {
        let set = format!("PRAGMA busy_timeout = {};", BUSY_TIMEOUT.as_millis());
        assert!(SQLITE_PRAGMAS.contains(&set), "{SQLITE_PRAGMAS}");
    }

    /// The workspace's `.cargo/config.toml` reaches the bundled SQLite's
    /// build: this fails if an option is lost (the file moved, the
    /// variable renamed by a libsqlite3-sys upgrade). The sub-journal stays
    /// in memory, and no statement is planned again because a value was
    /// bound to it.
    #[tokio::test]
    async fn sqlite_is_built_with_the_repository_options() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("v.db").display());
        let store = Store::connect(&url).await.expect("connect");
        let compiled = store
            .sqlite_compile_options()
            .await
            .expect("compile options");
        for (option, _) in SQLITE_BUILD_OPTIONS {
            assert!(
                compiled.iter().any(|o| o == option),
                "the bundled SQLite lacks {option}: is LIBSQLITE3_FLAGS in .cargo/config.toml?"
            );
        }
    }

    /// A transaction whose savepoint changes far more pages than SQLite
    /// keeps of its sub-journal in memory still commits. Built with an
    /// 8 MiB threshold, SQLite spilled that journal to its file in one
    /// write of the whole 8 MiB, which its unix layer cuts to 128 KiB
    /// pieces and then fails as "database or disk is full": every
    /// ImportBridge batch failed once the cross-reference tables had grown
    /// to about 30,000 entities, and so did dropping a large match domain.
    #[tokio::test]
    async fn a_savepoint_changing_many_pages_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("v.db").display());
        let store = Store::connect(&url).await.expect("connect");
        let mut conn = store.pool.acquire().await.expect("connection");
        // About 24 MiB of rows, committed, so that changing them journals
        // every page's earlier content.
        conn.execute(
            "CREATE TABLE big (id INTEGER PRIMARY KEY, b BLOB NOT NULL); \
             INSERT INTO big (b) SELECT randomblob(3000) FROM \
             (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 8000) \
              SELECT i FROM n)",
        )
        .await
        .expect("rows");
        conn.execute(
            "BEGIN IMMEDIATE; SAVEPOINT request; UPDATE big SET b = zeroblob(3000); \
             RELEASE request; COMMIT",
        )
        .await
        .expect("a savepoint over 24 MiB of pages commits");
        let zeroed: i64 = sqlx::query_scalar("SELECT count(*) FROM big WHERE b = zeroblob(3000)")
            .fetch_one(&mut *conn)
            .await
            .expect("count");
        assert_eq!(zeroed, 8000);
    }

    /// Calls that give up while queued for the SQLite writer free their
    /// places at once: one partner calling with short deadlines while the
    /// writer is held cannot fill the queue everyone's writes need.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abandoned_writer_waits_free_their_places() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("v.db").display());
        let store = Store::connect(&url).await.expect("connect");
        let id = SubjectId::parse("00000000-0000-0000-0000-000000000000").expect("id");
        // A request holding the writer (a slow one).
        let mut holder = store.begin_audited(None).expect("holder");
        holder.subject(&id).await.expect("read on the writer");
        // More short-deadline calls than the queue has places.
        let mut gave_up = 0;
        for _ in 0..(WRITE_QUEUE / 64 + 4) {
            let calls: Vec<_> = (0..64)
                .map(|_| {
                    let s = store.clone();
                    tokio::spawn(async move {
                        let d = tokio::time::Instant::now() + Duration::from_millis(5);
                        match s.begin_audited(Some(d)) {
                            Ok(mut tx) => tx.subject(&id).await.map(|_| ()),
                            Err(e) => Err(e),
                        }
                    })
                })
                .collect();
            for c in calls {
                match c.await.expect("task") {
                    Err(StoreError::Deadline) => gave_up += 1,
                    other => panic!("expected the deadline, got {other:?}"),
                }
            }
            // Room for the writer tasks to see their callers gone (a busy
            // machine); without the fix no pause frees a place.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(gave_up, (WRITE_QUEUE / 64 + 4) * 64);
        // Their places are free while the writer is still held.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            store.write_queue_use() <= 1,
            "places held by abandoned waits: {}",
            store.write_queue_use()
        );
        assert!(
            store.begin_audited(None).is_ok(),
            "another partner's write is queued"
        );
        drop(holder);
    }

    /// The retention job's credential batches: oldest first, at most
    /// `limit`, only entries whose `exp` is before the cut-off, and a row
    /// whose MAC fails is removed but counted.
    #[tokio::test]
    async fn expired_credential_entries_go_oldest_first_forged_counted() {
        use idvault_core::sdjwt::status::CredentialEntry;
        let (_dir, store) = keyed_store().await;
        let entry = |seq: i64, expires_at: i64| CredentialEntry {
            list_id: 1,
            idx: 100 + seq,
            seq,
            subject: Some(SubjectId::from_bytes([1; 16])),
            device_id: Some("dev_a".into()),
            expires_at,
            revoked_at_ms: None,
        };
        let mut tx = store.begin_audited(None).expect("queue");
        for (seq, exp) in [(0, 300), (1, 100), (2, 200), (3, 5_000)] {
            assert!(
                tx.insert_credential(&entry(seq, exp))
                    .await
                    .expect("insert")
            );
        }
        store.commit_write(tx).await.expect("commit");
        // Someone without the root key moves the device of seq 2.
        sqlx::query("UPDATE credentials SET device_id = 'dev_b' WHERE seq = 2")
            .execute(store.pool())
            .await
            .expect("edit");
        let left = async || -> Vec<i64> {
            sqlx::query_scalar("SELECT seq FROM credentials ORDER BY seq")
                .fetch_all(store.pool())
                .await
                .expect("read")
        };
        let mut tx = store.begin_audited(None).expect("queue");
        let first = tx.prune_expired_credentials(1_000, 2).await.expect("prune");
        store.commit_write(tx).await.expect("commit");
        assert_eq!(
            first,
            Pruned {
                removed: 2,
                unverified: 1
            }
        );
        assert_eq!(left().await, vec![0, 3]);
        let mut tx = store.begin_audited(None).expect("queue");
        let second = tx.prune_expired_credentials(1_000, 2).await.expect("prune");
        store.commit_write(tx).await.expect("commit");
        assert_eq!(
            second,
            Pruned {
                removed: 1,
                unverified: 0
            }
        );
        assert_eq!(left().await, vec![3]);
    }

    /// A rewrap batch holds the packets of its subjects up to its byte
    /// budget: with a budget below one chain it covers only the first
    /// subject, and the next batch starts after it; a subject holding more
    /// packets than any chain can, or a packet longer than any the vault
    /// seals, is counted damaged, not read.
    #[tokio::test]
    async fn rewrap_batches_stop_at_their_byte_budget() {
        let (_dir, store) = keyed_store().await;
        let rng = idvault_core::SystemRng::default();
        let dek = idvault_core::keys::generate_dek(&rng).expect("dek");
        let mut ids: Vec<SubjectId> = (1u8..=3).map(|b| SubjectId::from_bytes([b; 16])).collect();
        ids.sort_unstable();
        let mut tx = store.begin_audited(None).expect("queue");
        for id in &ids {
            let (row, packets) = sealed_subject(*id, &dek, &rng);
            tx.insert_subject(&row, &[9; 16]).expect("subject");
            tx.insert_packets(id, &packets).expect("packets");
        }
        store.commit_write(tx).await.expect("commit");
        let batch = async |ids: &[SubjectId], budget: usize| {
            let mut tx = store.begin_audited(None).expect("queue");
            let b = tx
                .subjects_for_rewrap(ids, 2, budget)
                .await
                .expect("read")
                .expect("a batch");
            drop(tx);
            b
        };
        let whole = batch(&ids, usize::MAX).await;
        assert_eq!(whole.found_ids(), ids);
        assert_eq!((whole.damaged, whole.through), (0, ids[2]));
        assert!(whole.found.iter().all(|(_, p)| !p.is_empty()));
        let small = batch(&ids, 1).await;
        assert_eq!(small.found_ids(), vec![ids[0]]);
        assert_eq!((small.damaged, small.through), (0, ids[0]));
        let rest = batch(&ids[1..], 1).await;
        assert_eq!(rest.found_ids(), vec![ids[1]]);

        // The middle subject's one packet copied past any chain's length
        // (through the writer, which an abandoned batch above still holds).
        let mut tx = store.begin_audited(None).expect("queue");
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i <= $2) \
             INSERT INTO packets (subject_key, seq, subject_id, field_name, packet) \
             SELECT p.subject_key, p.seq + n.i, p.subject_id, p.field_name, p.packet \
             FROM packets p, n WHERE p.subject_id = $1",
        )
        .bind(ids[1].as_bytes().to_vec())
        .bind(i64::try_from(idvault_core::packet::MAX_CHAIN_PACKETS).expect("fits"))
        .execute(tx.conn().await.expect("writer"))
        .await
        .expect("copies");
        store.commit_write(tx).await.expect("commit");
        let forged = batch(&ids, usize::MAX).await;
        assert_eq!(forged.found_ids(), vec![ids[0], ids[2]]);
        assert_eq!((forged.damaged, forged.through), (1, ids[2]));
        // The last one's packet longer than any the vault seals.
        let mut tx = store.begin_audited(None).expect("queue");
        sqlx::query("UPDATE packets SET packet = randomblob($2) WHERE subject_id = $1")
            .bind(ids[2].as_bytes().to_vec())
            .bind(i64::try_from(idvault_core::packet::MAX_PACKET_LEN + 1).expect("fits"))
            .execute(tx.conn().await.expect("writer"))
            .await
            .expect("long packet");
        store.commit_write(tx).await.expect("commit");
        let long = batch(&ids, usize::MAX).await;
        assert_eq!(long.found_ids(), vec![ids[0]]);
        assert_eq!((long.damaged, long.through), (2, ids[2]));
    }
}
