//! One-time transaction rows (docs/digital-id.md, "Transaction codes").
//!
//! A transaction changes state once, by a conditional `UPDATE … WHERE
//! state = 'pending' AND attempts = $old`: of two answers racing (or an
//! answer racing a wrong code that ends it), exactly one is written.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::rows::{fixed, list_col, list_text, subject_col};
use super::{AuditedTx, Store, StoreError, check_row, seal_row};
use idvault_core::rowmac::{self, RowMac};
use idvault_core::subject::SubjectId;
use idvault_core::transaction::{Transaction, TxState};

macro_rules! select_transactions {
    () => {
        "SELECT transaction_id, code_mac, partner, subject_id, pairwise_token, binding_message, \
         claims, created_at_ms, expires_at_ms, attempts, state, answered_by, answered_at_ms, \
         approved, mac_version, mac FROM transactions"
    };
}

/// A transaction row, its MAC checked.
pub(super) fn transaction(keys: &RowMac, r: &AnyRow) -> Result<Transaction, StoreError> {
    let state: String = r.try_get("state")?;
    let t = Transaction {
        id: fixed(r, "transaction_id")?,
        code_mac: fixed(r, "code_mac")?,
        partner: r.try_get("partner")?,
        subject: subject_col(r, "subject_id")?,
        pairwise: r.try_get("pairwise_token")?,
        binding_message: r.try_get("binding_message")?,
        claims: list_col(r, "claims")?,
        created_at_ms: r.try_get("created_at_ms")?,
        expires_at_ms: r.try_get("expires_at_ms")?,
        attempts: u32::try_from(r.try_get::<i64, _>("attempts")?)
            .map_err(|_| StoreError::Corrupt("transactions.attempts"))?,
        state: TxState::parse(&state).ok_or(StoreError::Corrupt("transactions.state"))?,
        answered_by: r.try_get("answered_by")?,
        answered_at_ms: r.try_get("answered_at_ms")?,
        approved: list_col(r, "approved")?,
    };
    check_row(keys, &rowmac::transaction(&t), r)?;
    Ok(t)
}

impl Store {
    /// A transaction by id (read outside any write).
    pub async fn transaction(&self, id: &[u8; 16]) -> Result<Option<Transaction>, StoreError> {
        self.transaction_where(
            concat!(select_transactions!(), " WHERE transaction_id = $1"),
            id.to_vec(),
        )
        .await
    }

    /// The transaction a code MAC names, read outside any write and
    /// unlocked: whose code it is, so that a write can lock the persons it
    /// touches in one order before it reads the row again, locked.
    pub async fn transaction_by_code(
        &self,
        code_mac: &[u8; 32],
    ) -> Result<Option<Transaction>, StoreError> {
        self.transaction_where(
            concat!(select_transactions!(), " WHERE code_mac = $1"),
            code_mac.to_vec(),
        )
        .await
    }

    /// The one transaction `sql` finds by its unique key `$1`, MAC checked.
    async fn transaction_where(
        &self,
        sql: &'static str,
        key: Vec<u8>,
    ) -> Result<Option<Transaction>, StoreError> {
        let row = sqlx::query(sql)
            .bind(key)
            .fetch_optional(self.pool())
            .await?;
        let keys = self.row_keys()?;
        row.as_ref().map(|r| transaction(&keys, r)).transpose()
    }

    /// Wrong codes entered on `device_id` since `since_ms`, read outside
    /// any write (a first look; [`AuditedTx::code_failures_since`] decides).
    pub async fn code_failures_since(
        &self,
        device_id: &str,
        since_ms: i64,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM code_failures WHERE device_id = $1 AND at_ms >= $2",
        )
        .bind(device_id.to_owned())
        .bind(since_ms)
        .fetch_one(self.pool())
        .await?)
    }
}

impl AuditedTx {
    /// Records a new transaction; false if its id or code is taken.
    pub async fn insert_transaction(&mut self, t: &Transaction) -> Result<bool, StoreError> {
        let (v, mac) = seal_row(&*self.store.row_keys()?, &rowmac::transaction(t));
        let n = sqlx::query(
            "INSERT INTO transactions (transaction_id, code_mac, partner, subject_id, pairwise_token, \
             binding_message, claims, created_at_ms, expires_at_ms, attempts, state, answered_by, \
             answered_at_ms, approved, mac_version, mac) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
             ON CONFLICT DO NOTHING",
        )
        .bind(t.id.to_vec())
        .bind(t.code_mac.to_vec())
        .bind(t.partner.clone())
        .bind(t.subject.as_bytes().to_vec())
        .bind(t.pairwise.clone())
        .bind(t.binding_message.clone())
        .bind(list_text(t.claims.iter().map(String::as_str)))
        .bind(t.created_at_ms)
        .bind(t.expires_at_ms)
        .bind(i64::from(t.attempts))
        .bind(t.state.name())
        .bind(t.answered_by.clone())
        .bind(t.answered_at_ms)
        .bind(list_text(t.approved.iter().map(String::as_str)))
        .bind(v)
        .bind(mac)
        .execute(self.conn().await?)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// The transaction a code MAC names, locked on PostgreSQL: the caller
    /// holds its person's row lock first ([`AuditedTx::subject`]), as every
    /// writer of a person's transactions does.
    pub async fn transaction_by_code(
        &mut self,
        code_mac: &[u8; 32],
    ) -> Result<Option<Transaction>, StoreError> {
        let sql = locked!(
            self.store.backend,
            select_transactions!(),
            " WHERE code_mac = $1"
        );
        let row = sqlx::query(sql)
            .bind(code_mac.to_vec())
            .fetch_optional(self.conn().await?)
            .await?;
        let keys = self.store.row_keys()?;
        row.as_ref().map(|r| transaction(&keys, r)).transpose()
    }

    /// A person's pending, unexpired transactions (at most `limit`),
    /// locked on PostgreSQL. Rows that fail their MAC are skipped: they
    /// authorise nothing, and one planted row must not stop the person's
    /// real ones from counting attempts.
    pub async fn pending_transactions_of(
        &mut self,
        subject: &SubjectId,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<Transaction>, StoreError> {
        let sql = locked!(
            self.store.backend,
            select_transactions!(),
            " WHERE subject_id = $1 AND state = 'pending' AND expires_at_ms > $2 \
             ORDER BY transaction_id LIMIT $3"
        );
        let rows = sqlx::query(sql)
            .bind(subject.as_bytes().to_vec())
            .bind(now_ms)
            .bind(i64::from(limit))
            .fetch_all(self.conn().await?)
            .await?;
        let keys = self.store.row_keys()?;
        Ok(rows
            .iter()
            .filter_map(|r| transaction(&keys, r).ok())
            .collect())
    }

    /// Pending, unexpired transactions of a partner, of a person, or of a
    /// partner for a person.
    pub async fn count_pending_transactions(
        &mut self,
        partner: Option<&str>,
        subject: Option<&SubjectId>,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        let q = match (partner, subject) {
            (Some(p), Some(s)) => sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM transactions WHERE subject_id = $1 AND partner = $2 \
                 AND state = 'pending' AND expires_at_ms > $3",
            )
            .bind(s.as_bytes().to_vec())
            .bind(p.to_owned()),
            (Some(p), None) => sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM transactions WHERE partner = $1 AND state = 'pending' \
                 AND expires_at_ms > $2",
            )
            .bind(p.to_owned()),
            (None, Some(s)) => sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM transactions WHERE subject_id = $1 AND state = 'pending' \
                 AND expires_at_ms > $2",
            )
            .bind(s.as_bytes().to_vec()),
            (None, None) => return Ok(0),
        };
        Ok(q.bind(now_ms).fetch_one(self.conn().await?).await?)
    }

    /// Writes `new` over `old` if `old` is still as read (pending, same
    /// attempts); false if another writer changed it first.
    pub async fn update_transaction(
        &mut self,
        old: &Transaction,
        new: &Transaction,
    ) -> Result<bool, StoreError> {
        let (v, mac) = seal_row(&*self.store.row_keys()?, &rowmac::transaction(new));
        let n = sqlx::query(
            "UPDATE transactions SET attempts = $1, state = $2, answered_by = $3, answered_at_ms = $4, \
             approved = $5, mac_version = $6, mac = $7 \
             WHERE transaction_id = $8 AND state = 'pending' AND attempts = $9",
        )
        .bind(i64::from(new.attempts))
        .bind(new.state.name())
        .bind(new.answered_by.clone())
        .bind(new.answered_at_ms)
        .bind(list_text(new.approved.iter().map(String::as_str)))
        .bind(v)
        .bind(mac)
        .bind(old.id.to_vec())
        .bind(i64::from(old.attempts))
        .execute(self.conn().await?)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Wrong codes entered on `device_id` since `since_ms`.
    pub async fn code_failures_since(
        &mut self,
        device_id: &str,
        since_ms: i64,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM code_failures WHERE device_id = $1 AND at_ms >= $2",
        )
        .bind(device_id.to_owned())
        .bind(since_ms)
        .fetch_one(self.conn().await?)
        .await?)
    }

    /// Records a wrong code entered on `device_id`.
    pub async fn insert_code_failure(
        &mut self,
        device_id: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO code_failures (device_id, at_ms) VALUES ($1, $2)")
            .bind(device_id.to_owned())
            .bind(at_ms)
            .execute(self.conn().await?)
            .await?;
        Ok(())
    }
}
