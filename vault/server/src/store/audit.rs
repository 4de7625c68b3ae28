//! The audit log's rows: leaves written by requests, the tree's perfect
//! nodes and the signed checkpoints written by the sequencer.
//!
//! A leaf row keeps the canonical leaf bytes (what the tree commits to)
//! beside a few columns decoded from them for queries; `idvault audit
//! verify` checks that the two agree.

use sqlx::any::AnyRow;
use sqlx::{Any, Connection, Row, Transaction};

use super::matching::placeholders;
use super::rows::{fixed, i64_to_u64, opt_fixed, u64_to_i64};
use super::writeset::Value;
use super::{AuditedTx, Backend, Store, StoreError};
use idvault_core::crypto::HASH_LEN;
use idvault_core::tlog::leaf::{AuditLeaf, ROW_NONCE_LEN};
use idvault_core::tlog::merkle::{Hash, NodeId};

/// A leaf as a request writes it.
#[derive(Debug)]
pub struct NewLeaf<'a> {
    /// The decoded leaf (for the query columns).
    pub leaf: &'a AuditLeaf,
    /// Its canonical bytes.
    pub bytes: &'a [u8],
    /// Version of the audit MAC key.
    pub key_version: u32,
    /// The row's nonce (`idvault_core::tlog::leaf::row_nonce`).
    pub nonce: [u8; ROW_NONCE_LEN],
    /// The row's MAC (`idvault_core::tlog::leaf::row_mac`) under that key.
    pub mac: [u8; HASH_LEN],
}

/// A stored leaf.
#[derive(Debug, Clone)]
pub struct LeafRow {
    /// Insertion order (not the tree index).
    pub id: i64,
    /// Tree index, once sequenced.
    pub idx: Option<u64>,
    /// Query columns as stored: actor, action, subject, outcome, detail.
    pub columns: LeafColumns,
    /// Request id column.
    pub request_id: Vec<u8>,
    /// Chain-head sequence column.
    pub head_seq: Option<i64>,
    /// Canonical leaf bytes.
    pub bytes: Vec<u8>,
    /// MAC key version.
    pub key_version: u32,
    /// The row's nonce; `None` on rows written before migration 0035.
    pub nonce: Option<[u8; ROW_NONCE_LEN]>,
    /// MAC.
    pub mac: [u8; HASH_LEN],
}

/// The decoded columns of a leaf row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafColumns {
    /// Milliseconds since the epoch.
    pub time_ms: i64,
    /// Caller.
    pub actor: String,
    /// Action name.
    pub action: String,
    /// Subject id text.
    pub subject: Option<String>,
    /// Outcome word.
    pub outcome: String,
    /// Detail text.
    pub detail: String,
}

impl LeafColumns {
    /// The columns a leaf is stored with.
    pub fn of(leaf: &AuditLeaf) -> Self {
        Self {
            time_ms: leaf.time_ms,
            actor: leaf.actor.clone(),
            action: leaf.action.clone(),
            subject: leaf.subject.clone(),
            outcome: leaf.outcome.clone(),
            detail: leaf.detail.clone(),
        }
    }
}

const LEAF_COLUMNS: &str = "id, idx, time_ms, actor, action, subject, outcome, detail, request_id, \
     head_seq, leaf, key_version, nonce, mac";

/// The newest chain-changing leaf of subject `$1` (its id as text) other
/// than its creation: index `audit_log_subject_update` (migration 0030),
/// which holds only the leaves the subject's own writes add.
fn update_leaf_sql() -> String {
    format!(
        "SELECT {LEAF_COLUMNS} FROM audit_log WHERE subject = $1 AND head_seq IS NOT NULL \
         AND action <> 'CreateSubject' ORDER BY id DESC LIMIT 1"
    )
}

/// The creation leaf of subject `$1` (its id), found through the creating
/// request its row names (migration 0029), by the time-ordered
/// `audit_log_request` index. The row's column is a locator only, and
/// the leaf is not selected by subject on purpose: the caller checks that
/// the leaf's MACed bytes name this subject (and agree with the columns
/// that selected it), so a column a database writer pointed at another
/// subject's creation finds that subject's leaf, which vouches for
/// nothing here, rather than no leaf at all.
fn creation_leaf_sql() -> String {
    format!(
        "SELECT {LEAF_COLUMNS} FROM audit_log WHERE request_id = \
         (SELECT created_request FROM subjects WHERE subject_id = $1) \
         AND head_seq IS NOT NULL AND action = 'CreateSubject'"
    )
}

fn leaf_row(r: &AnyRow) -> Result<LeafRow, StoreError> {
    let idx: Option<i64> = r.try_get("idx")?;
    Ok(LeafRow {
        id: r.try_get("id")?,
        idx: idx.map(|i| i64_to_u64(i, "audit_log.idx")).transpose()?,
        columns: LeafColumns {
            time_ms: r.try_get("time_ms")?,
            actor: r.try_get("actor")?,
            action: r.try_get("action")?,
            subject: r.try_get("subject")?,
            outcome: r.try_get("outcome")?,
            detail: r.try_get("detail")?,
        },
        request_id: r.try_get("request_id")?,
        head_seq: r.try_get("head_seq")?,
        bytes: r.try_get("leaf")?,
        key_version: u32::try_from(r.try_get::<i64, _>("key_version")?)
            .map_err(|_| StoreError::Corrupt("audit_log.key_version"))?,
        nonce: opt_fixed(r, "nonce")?,
        mac: fixed(r, "mac")?,
    })
}

/// One signed checkpoint as stored.
#[derive(Debug, Clone)]
pub struct CheckpointRow {
    /// Tree size.
    pub size: u64,
    /// Root hash.
    pub root: Hash,
    /// The signed note.
    pub note: String,
    /// When it was published.
    pub time_ms: i64,
}

/// The columns [`checkpoint_row`] reads.
macro_rules! checkpoint_columns {
    () => {
        "SELECT tree_size, root, note, time_ms FROM audit_checkpoints"
    };
}

fn checkpoint_row(r: &AnyRow) -> Result<CheckpointRow, StoreError> {
    Ok(CheckpointRow {
        size: i64_to_u64(r.try_get("tree_size")?, "audit_checkpoints.tree_size")?,
        root: fixed(r, "root")?,
        note: r.try_get("note")?,
        time_ms: r.try_get("time_ms")?,
    })
}

impl NewLeaf<'_> {
    /// The leaf's `audit_log` row, as the write set inserts it.
    pub(super) fn values(&self) -> Result<Vec<Value>, StoreError> {
        let l = self.leaf;
        Ok(vec![
            Value::Int(l.time_ms),
            Value::Text(l.actor.clone()),
            Value::Text(l.action.clone()),
            Value::OptText(l.subject.clone()),
            Value::Text(l.outcome.clone()),
            Value::Text(l.detail.clone()),
            Value::Bytes(l.request_id.to_vec()),
            Value::OptInt(l.head.map(|(seq, _)| u64_to_i64(seq)).transpose()?),
            Value::Bytes(self.bytes.to_vec()),
            Value::Int(i64::from(self.key_version)),
            Value::Bytes(self.nonce.to_vec()),
            Value::Bytes(self.mac.to_vec()),
        ])
    }
}

impl Store {
    /// The newest checkpoint, if any.
    pub async fn latest_checkpoint(&self) -> Result<Option<CheckpointRow>, StoreError> {
        let row = sqlx::query(concat!(
            checkpoint_columns!(),
            " ORDER BY tree_size DESC LIMIT 1"
        ))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(checkpoint_row).transpose()
    }

    /// The checkpoint of exactly `size` leaves.
    pub async fn checkpoint(&self, size: u64) -> Result<Option<CheckpointRow>, StoreError> {
        let row = sqlx::query(concat!(checkpoint_columns!(), " WHERE tree_size = $1"))
            .bind(u64_to_i64(size)?)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(checkpoint_row).transpose()
    }

    /// Up to `limit` checkpoints with a size above `after`, ascending.
    pub async fn checkpoints_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<CheckpointRow>, StoreError> {
        let rows = sqlx::query(concat!(
            checkpoint_columns!(),
            " WHERE tree_size > $1 ORDER BY tree_size LIMIT $2"
        ))
        .bind(u64_to_i64(after)?)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(checkpoint_row).collect()
    }

    /// Up to `limit` sequenced leaves with index `>= from`, by index.
    pub async fn leaves_from(&self, from: u64, limit: u32) -> Result<Vec<LeafRow>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {LEAF_COLUMNS} FROM audit_log WHERE idx >= $1 ORDER BY idx LIMIT $2"
        )))
        .bind(u64_to_i64(from)?)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(leaf_row).collect()
    }

    /// Up to `limit` sequenced leaves of `action` (as its query column
    /// says) with index `>= from`, by index.
    pub async fn action_leaves_from(
        &self,
        action: &str,
        from: u64,
        limit: u32,
    ) -> Result<Vec<LeafRow>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {LEAF_COLUMNS} FROM audit_log WHERE idx >= $1 AND action = $2 \
             ORDER BY idx LIMIT $3"
        )))
        .bind(u64_to_i64(from)?)
        .bind(action.to_owned())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(leaf_row).collect()
    }

    /// Up to `limit` leaves not yet sequenced with an id above `after`.
    pub async fn unsequenced_leaves(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<LeafRow>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {LEAF_COLUMNS} FROM audit_log WHERE idx IS NULL AND id > $1 ORDER BY id LIMIT $2"
        )))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(leaf_row).collect()
    }

    /// Up to `limit` leaves recording a deletion that succeeded, with an
    /// id above `after`, by id (restore reads them; their MACs are the
    /// caller's to check).
    pub async fn deletion_leaves(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<LeafRow>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {LEAF_COLUMNS} FROM audit_log \
             WHERE action = 'DeleteSubject' AND outcome = 'ok' AND id > $1 ORDER BY id LIMIT $2"
        )))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(leaf_row).collect()
    }

    /// Which of `nonces` a sequenced leaf row carries already (read in
    /// chunks, each a seek in `audit_log_nonce`).
    pub async fn sequenced_nonces(
        &self,
        nonces: &[[u8; ROW_NONCE_LEN]],
    ) -> Result<std::collections::HashSet<[u8; ROW_NONCE_LEN]>, StoreError> {
        let mut found = std::collections::HashSet::new();
        for chunk in nonces.chunks(500) {
            let list = placeholders(1, chunk.len());
            let mut q = sqlx::query_scalar::<_, Vec<u8>>(sqlx::AssertSqlSafe(format!(
                "SELECT nonce FROM audit_log WHERE nonce IN ({list}) AND idx IS NOT NULL"
            )));
            for n in chunk {
                q = q.bind(n.to_vec());
            }
            for n in q.fetch_all(&self.pool).await? {
                found.insert(
                    n.try_into()
                        .map_err(|_| StoreError::Corrupt("audit_log.nonce"))?,
                );
            }
        }
        Ok(found)
    }

    /// Whether a sequenced leaf row without a nonce (written before
    /// migration 0035) has request id column `request_id` and leaf bytes
    /// `leaf` (through `audit_log_request`).
    pub async fn signed_leaf_without_nonce(
        &self,
        request_id: &[u8],
        leaf: &[u8],
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar::<_, i64>(
            "SELECT 1 FROM audit_log WHERE request_id = $1 AND idx IS NOT NULL \
             AND nonce IS NULL AND leaf = $2 LIMIT 1",
        )
        .bind(request_id.to_vec())
        .bind(leaf.to_vec())
        .fetch_optional(&self.pool)
        .await?
        .is_some())
    }

    /// The ids of up to `limit` leaf rows that share their nonce with a row
    /// before them (sequenced rows by index first, then unsequenced ones
    /// by id): copies, the first row of each nonce being the one signed or
    /// to be signed.
    pub async fn copied_leaf_rows(&self, limit: u32) -> Result<Vec<i64>, StoreError> {
        let dups: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT nonce FROM audit_log WHERE nonce IS NOT NULL GROUP BY nonce \
             HAVING COUNT(*) > 1 LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut copies = Vec::new();
        for nonce in dups {
            let ids: Vec<i64> = sqlx::query_scalar(
                "SELECT id FROM audit_log WHERE nonce = $1 \
                 ORDER BY CASE WHEN idx IS NULL THEN 1 ELSE 0 END, idx, id",
            )
            .bind(nonce)
            .fetch_all(&self.pool)
            .await?;
            copies.extend(ids.into_iter().skip(1));
        }
        Ok(copies)
    }

    /// The time of the newest audit leaf (unix ms; 0 when none).
    pub async fn newest_leaf_ms(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MAX(time_ms), 0) FROM audit_log")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// The first `ok` CreateSubject leaf of the request that created
    /// `subject`, as its row names it (its columns as stored: the caller
    /// checks the leaf's MAC, and that its bytes name this subject).
    pub async fn creation_leaf(
        &self,
        subject: &idvault_core::subject::SubjectId,
    ) -> Result<Option<LeafRow>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{} AND outcome = 'ok' ORDER BY id LIMIT 1",
            creation_leaf_sql()
        )))
        .bind(subject.as_bytes().to_vec())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(leaf_row).transpose()
    }

    /// The newest leaf carrying `request_id`.
    pub async fn leaf_by_request(&self, request_id: &[u8]) -> Result<Option<LeafRow>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {LEAF_COLUMNS} FROM audit_log WHERE request_id = $1 ORDER BY id DESC LIMIT 1"
        )))
        .bind(request_id.to_vec())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(leaf_row).transpose()
    }

    /// The leaf at tree index `idx`.
    pub async fn leaf_at(&self, idx: u64) -> Result<Option<LeafRow>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {LEAF_COLUMNS} FROM audit_log WHERE idx = $1"
        )))
        .bind(u64_to_i64(idx)?)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(leaf_row).transpose()
    }

    /// One consistent read of a subject for chain verification, outside
    /// the writer: its row now, then its packets a page at a time
    /// ([`SubjectSnapshot::next_packets`]) and its newest subject-changing
    /// leaf ([`SubjectSnapshot::head_leaf`]), all from one snapshot (a read
    /// transaction; REPEATABLE READ on PostgreSQL), so a concurrent update
    /// cannot make them disagree. Paged so that a history of up to 10,000
    /// packets is never held in memory whole, however many verifications
    /// run at once. A subject `created_by` did not make reads as absent,
    /// and nothing more of it is read: a partner naming someone else's
    /// subject costs one row read.
    pub async fn subject_snapshot(
        &self,
        id: &idvault_core::subject::SubjectId,
        created_by: &str,
    ) -> Result<Option<SubjectSnapshot>, StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        let Some(row) = super::subject_by_id(&mut *tx, self.row_mac.as_deref(), id).await? else {
            return Ok(None);
        };
        if row.created_by != created_by {
            return Ok(None);
        }
        Ok(Some(SubjectSnapshot {
            row,
            tx,
            after: None,
        }))
    }

    /// A subject's row and the end of its chain up to the head that row
    /// names, from the oldest of its fields' newest packets on
    /// (`packets_to_head_of`; the caller checks the run links to the head
    /// and reads the newest of each field from the packets' own headers,
    /// `packet::newest_values_to_head`). What a release reads: about the
    /// number of fields, not the history. Two plain queries (no snapshot):
    /// the caller must check, in its write transaction, that the head it
    /// acts on is still the row's (a release does), since a write may land
    /// between the two reads.
    pub async fn subject_with_packets_to_head(
        &self,
        id: &idvault_core::subject::SubjectId,
    ) -> Result<
        Option<(
            idvault_core::records::SubjectRecord,
            Vec<super::StoredPacket>,
        )>,
        StoreError,
    > {
        let Some(row) = self.subject_row(id).await? else {
            return Ok(None);
        };
        let packets = super::packets_to_head_of(&self.pool, id, row.head.seq).await?;
        Ok(Some((row, packets)))
    }

    /// Stored perfect nodes among `ids` (missing ones are left out).
    pub async fn audit_nodes(&self, ids: &[NodeId]) -> Result<Vec<(NodeId, Hash)>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        nodes(&mut conn, ids).await
    }

    /// Takes the sequencer's lease: always on SQLite (one serving process);
    /// on PostgreSQL only while this process holds the advisory lock, on a
    /// connection of its own (if that connection dies, so does the lock,
    /// and another replica takes over).
    pub async fn sequencer_lease(&self) -> Result<Option<SequencerLease>, StoreError> {
        match self.backend {
            Backend::Sqlite => Ok(Some(SequencerLease { conn: None })),
            Backend::Postgres => {
                let mut conn = self.pool.acquire().await?;
                let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(SEQUENCER_LOCK)
                    .fetch_one(&mut *conn)
                    .await?;
                Ok(held.then(|| SequencerLease {
                    // Out of the pool: the lock lives as long as this
                    // connection, which no one else may use; dropping the
                    // lease closes it and so frees the lock.
                    conn: Some(conn.detach()),
                }))
            }
        }
    }
}

/// A subject as one snapshot saw it ([`Store::subject_snapshot`]).
#[derive(Debug)]
pub struct SubjectSnapshot {
    /// The subject row.
    pub row: idvault_core::records::SubjectRecord,
    /// The read transaction the rest is read in.
    tx: Transaction<'static, Any>,
    /// The last packet sequence number read (`None`: none yet, so the
    /// first page has no lower bound and a row a writer put at 0 or below
    /// is read, and refused, like any other).
    after: Option<i64>,
}

/// Packets per page of [`SubjectSnapshot::next_packets`]: at most about
/// 1 MiB at a time (packets are at most a few KiB).
const SNAPSHOT_PAGE: usize = 256;

impl SubjectSnapshot {
    /// The next packets `(seq, field_name column, bytes)`, ascending;
    /// empty after the last.
    pub async fn next_packets(&mut self) -> Result<Vec<(u64, String, Vec<u8>)>, StoreError> {
        // The page size in the SQL text, not bound: SQLite re-plans a
        // statement whose bound LIMIT changes (docs/BENCHMARKS.md).
        let id = self.row.id.as_bytes().to_vec();
        let rows = match self.after {
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    concat!(
                        "SELECT seq, field_name, packet FROM packets WHERE subject_key = ",
                        key_of_subject!(),
                        " AND subject_id = $1 ORDER BY seq LIMIT {}"
                    ),
                    SNAPSHOT_PAGE
                )))
                .bind(id)
                .fetch_all(&mut *self.tx)
                .await?
            }
            Some(after) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    concat!(
                        "SELECT seq, field_name, packet FROM packets WHERE subject_key = ",
                        key_of_subject!(),
                        " AND subject_id = $1 AND seq > $2 ORDER BY seq LIMIT {}"
                    ),
                    SNAPSHOT_PAGE
                )))
                .bind(id)
                .bind(after)
                .fetch_all(&mut *self.tx)
                .await?
            }
        };
        let mut page = Vec::with_capacity(rows.len());
        for r in &rows {
            let seq: i64 = r.try_get("seq")?;
            self.after = Some(seq);
            page.push((
                i64_to_u64(seq, "packets.seq")?,
                r.try_get("field_name")?,
                r.try_get("packet")?,
            ));
        }
        Ok(page)
    }

    /// The subject's newest leaf that recorded a chain head, from the same
    /// snapshot; ends the read. Its newest update's, by the index of
    /// chain-changing leaves by subject; with none, its creation's, through
    /// the request its row names (migration 0029).
    pub async fn head_leaf(mut self) -> Result<Option<LeafRow>, StoreError> {
        let mut leaf = sqlx::query(sqlx::AssertSqlSafe(update_leaf_sql()))
            .bind(self.row.id.to_string())
            .fetch_optional(&mut *self.tx)
            .await?;
        if leaf.is_none() {
            leaf = sqlx::query(sqlx::AssertSqlSafe(format!(
                "{} AND outcome = 'ok' ORDER BY id DESC LIMIT 1",
                creation_leaf_sql()
            )))
            .bind(self.row.id.as_bytes().to_vec())
            .fetch_optional(&mut *self.tx)
            .await?;
        }
        let leaf = leaf.as_ref().map(leaf_row).transpose()?;
        self.tx.commit().await?;
        Ok(leaf)
    }
}

/// The PostgreSQL advisory lock key of the sequencer ("idvseq" in ASCII).
const SEQUENCER_LOCK: i64 = 0x6964_7673_6571;

async fn nodes(
    conn: &mut sqlx::AnyConnection,
    ids: &[NodeId],
) -> Result<Vec<(NodeId, Hash)>, StoreError> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let row: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT hash FROM audit_nodes WHERE level = $1 AND idx = $2")
                .bind(i64::from(id.level))
                .bind(u64_to_i64(id.index)?)
                .fetch_optional(&mut *conn)
                .await?;
        if let Some((h,)) = row {
            let h: Hash = h
                .try_into()
                .map_err(|_| StoreError::Corrupt("audit_nodes.hash"))?;
            out.push((*id, h));
        }
    }
    Ok(out)
}

/// The right to run the sequencer (see [`Store::sequencer_lease`]).
#[derive(Debug)]
pub struct SequencerLease {
    conn: Option<sqlx::AnyConnection>,
}

/// One sequencer batch: a write transaction that assigns indexes, stores
/// nodes and a checkpoint, all or nothing.
#[derive(Debug)]
pub struct SequencerTx<'a> {
    conn: SeqConn<'a>,
    store: &'a Store,
}

#[derive(Debug)]
enum SeqConn<'a> {
    Sqlite(Box<AuditedTx>),
    Postgres(Transaction<'a, Any>),
}

/// Where the sequencer reads: a pool connection on SQLite, the lease's own
/// connection on PostgreSQL.
enum SeqReader<'a> {
    Pool(sqlx::pool::PoolConnection<Any>),
    Lease(&'a mut sqlx::AnyConnection),
}

impl std::ops::Deref for SeqReader<'_> {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        match self {
            Self::Pool(c) => c,
            Self::Lease(c) => c,
        }
    }
}

impl std::ops::DerefMut for SeqReader<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self {
            Self::Pool(c) => c,
            Self::Lease(c) => c,
        }
    }
}

impl SequencerLease {
    /// Whether the lease still holds: on PostgreSQL its connection (and
    /// with it the advisory lock) answers; on SQLite it always does.
    pub async fn alive(&mut self) -> bool {
        match &mut self.conn {
            None => true,
            Some(c) => sqlx::query("SELECT 1").execute(&mut *c).await.is_ok(),
        }
    }

    /// The sequencer reads the tree and the waiting leaves before it
    /// starts its batch, outside the writer (on SQLite, every request's
    /// commit waits while a batch holds it). It is the only one that
    /// assigns indexes, so what it read stays true; `assign` refuses a
    /// leaf sequenced meanwhile all the same, and the batch then fails
    /// whole.
    async fn reader(&mut self, store: &Store) -> Result<SeqReader<'_>, StoreError> {
        Ok(match &mut self.conn {
            None => SeqReader::Pool(store.pool.acquire().await?),
            Some(c) => SeqReader::Lease(c),
        })
    }

    /// The newest checkpoint's signed note (`None` before the first) and
    /// the right-edge nodes of its size. The caller checks the note and
    /// that the nodes hash to its root before extending the tree: neither
    /// row is trusted by itself.
    pub async fn tree_state(
        &mut self,
        store: &Store,
        edge: impl Fn(u64) -> Vec<NodeId>,
    ) -> Result<(u64, Option<String>, Vec<(NodeId, Hash)>), StoreError> {
        let mut conn = self.reader(store).await?;
        let newest: Option<(i64, String)> = sqlx::query_as(
            "SELECT tree_size, note FROM audit_checkpoints ORDER BY tree_size DESC LIMIT 1",
        )
        .fetch_optional(&mut *conn)
        .await?;
        let (size, note) = match newest {
            Some((s, note)) => (i64_to_u64(s, "audit_checkpoints.tree_size")?, Some(note)),
            None => (0, None),
        };
        let ids = edge(size);
        let found = nodes(&mut conn, &ids).await?;
        if found.len() != ids.len() {
            return Err(StoreError::Corrupt(
                "audit_nodes: right edge of the newest checkpoint missing",
            ));
        }
        Ok((size, note, found))
    }

    /// Up to `limit` leaves waiting for an index, in insertion order.
    pub async fn pending(&mut self, store: &Store, limit: u32) -> Result<Vec<LeafRow>, StoreError> {
        let mut conn = self.reader(store).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {LEAF_COLUMNS} FROM audit_log WHERE idx IS NULL ORDER BY id LIMIT $1"
        )))
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(leaf_row).collect()
    }

    /// Starts a batch.
    pub async fn begin<'a>(&'a mut self, store: &'a Store) -> Result<SequencerTx<'a>, StoreError> {
        let conn = match &mut self.conn {
            None => {
                // The sequencer waits for its place instead of being refused.
                SeqConn::Sqlite(Box::new(store.begin_audited_waiting().await?))
            }
            Some(c) => SeqConn::Postgres(c.begin().await?),
        };
        Ok(SequencerTx { conn, store })
    }
}

impl SequencerTx<'_> {
    async fn conn(&mut self) -> Result<&mut sqlx::AnyConnection, StoreError> {
        match &mut self.conn {
            SeqConn::Sqlite(tx) => tx.conn().await,
            SeqConn::Postgres(t) => Ok(&mut *t),
        }
    }

    /// Gives leaf row `id` the tree index `idx`.
    pub async fn assign(&mut self, assignments: &[(i64, u64)]) -> Result<(), StoreError> {
        let backend = self.store.backend;
        for part in assignments.chunks(ASSIGN_CHUNK) {
            // One statement per chunk, values bound, only placeholders
            // formatted in.
            let mut q = match backend {
                // Joined with its `(id, idx)` rows. A `CASE id WHEN … THEN
                // …` of 200 arms compares every row with the arms: 38 µs of
                // PostgreSQL's time per leaf against 21 µs joined
                // (docs/BENCHMARKS.md, "Fewer statements per create on
                // PostgreSQL").
                Backend::Postgres => sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE audit_log SET idx = v.column2 FROM (VALUES {}) AS v \
                     WHERE audit_log.id = v.column1 AND audit_log.idx IS NULL",
                    value_rows(backend, part.len(), 2)
                ))),
                // SQLite keeps the `CASE`, the form measured on its writer
                // (docs/BENCHMARKS.md, "What holds the writer while a lone
                // query commits"); the join was not measured there. `?NNN`,
                // as each id is used twice: unlike `$NNN`, a named
                // parameter there, it is not looked up among the
                // statement's others as it is parsed.
                Backend::Sqlite => {
                    let mut sql = String::from("UPDATE audit_log SET idx = CASE id");
                    for n in 0..part.len() {
                        sql.push_str(&format!(
                            " WHEN ?{} THEN CAST(?{} AS BIGINT)",
                            2 * n + 1,
                            2 * n + 2
                        ));
                    }
                    sql.push_str(" END WHERE idx IS NULL AND id IN (");
                    let ins: Vec<String> =
                        (0..part.len()).map(|n| format!("?{}", 2 * n + 1)).collect();
                    sql.push_str(&ins.join(", "));
                    sql.push(')');
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                }
            };
            for (id, idx) in part {
                q = q.bind(*id).bind(u64_to_i64(*idx)?);
            }
            let n = q.execute(self.conn().await?).await?.rows_affected();
            if n != part.len() as u64 {
                return Err(StoreError::Corrupt("audit_log: a leaf was sequenced twice"));
            }
        }
        Ok(())
    }

    /// Stores completed perfect nodes.
    pub async fn insert_nodes(&mut self, nodes: &[(NodeId, Hash)]) -> Result<(), StoreError> {
        let backend = self.store.backend;
        for part in nodes.chunks(ASSIGN_CHUNK) {
            let sql = format!(
                "INSERT INTO audit_nodes (level, idx, hash) VALUES {}",
                value_rows(backend, part.len(), 3)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (id, h) in part {
                q = q
                    .bind(i64::from(id.level))
                    .bind(u64_to_i64(id.index)?)
                    .bind(h.to_vec());
            }
            q.execute(self.conn().await?).await?;
        }
        Ok(())
    }

    /// Stores a signed checkpoint.
    pub async fn insert_checkpoint(&mut self, cp: &CheckpointRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_checkpoints (tree_size, root, note, time_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(u64_to_i64(cp.size)?)
        .bind(cp.root.to_vec())
        .bind(cp.note.clone())
        .bind(cp.time_ms)
        .execute(self.conn().await?)
        .await?;
        Ok(())
    }

    /// Commits the batch (durably, before it returns).
    pub async fn commit(self) -> Result<(), StoreError> {
        match self.conn {
            SeqConn::Sqlite(tx) => self.store.commit_write(*tx).await,
            SeqConn::Postgres(t) => Ok(t.commit().await?),
        }
    }
}

/// Rows per multi-row statement of the sequencer (well under both
/// backends' bound-parameter limits).
const ASSIGN_CHUNK: usize = 200;

/// `rows` parenthesised rows of `width` placeholders, anonymous on SQLite
/// ([`super::writeset::push_value_rows`]: numbered `$n` there were most
/// of the sequencer's time on the writer, with 400–600 per statement).
fn value_rows(backend: Backend, rows: usize, width: usize) -> String {
    let mut sql = String::with_capacity(rows * (width * 5 + 4));
    super::writeset::push_value_rows(&mut sql, backend, rows, width, &mut 0);
    sql
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::{creation_leaf_sql, update_leaf_sql};

    /// A subject's head leaf is sought, never scanned for: its updates'
    /// by the index of chain-changing leaves by subject, which leaves
    /// creations out (migration 0030), and its creation's through the
    /// creating request (migration 0029). A create then adds no entry by
    /// subject, whose id is random.
    #[tokio::test]
    async fn head_leaves_are_sought_by_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("v.db").display());
        let store = super::super::Store::connect(&url).await.expect("connect");
        for (sql, seek) in [
            (
                update_leaf_sql(),
                "SEARCH audit_log USING INDEX audit_log_subject_update (subject=?)",
            ),
            (
                creation_leaf_sql(),
                "SEARCH audit_log USING INDEX audit_log_request (request_id=?)",
            ),
        ] {
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                    .bind(vec![0u8; 16])
                    .fetch_all(store.pool())
                    .await
                    .expect("plan");
            let steps: Vec<&str> = plan.iter().map(|(_, _, _, d)| d.as_str()).collect();
            assert!(steps.contains(&seek), "{steps:?}");
            assert!(
                !steps.iter().any(|d| d.starts_with("SCAN audit_log")),
                "{steps:?}"
            );
        }
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit_log' \
             AND sql LIKE '%subject%'",
        )
        .fetch_all(store.pool())
        .await
        .expect("indexes");
        assert_eq!(indexes, vec!["audit_log_subject_update".to_owned()]);
        store.close().await;
    }
}
