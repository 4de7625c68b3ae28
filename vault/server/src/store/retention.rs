//! Deleting spent single-use rows and old processed events, a bounded
//! batch per statement (the retention job decides what is old).

use super::{AuditedTx, StoreError};

/// What the retention job removes, with the time column and key that
/// select a batch. Table and column names are constants (never input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prunable {
    /// `consent_challenges` by expiry.
    Challenges,
    /// `enrollment_codes` by expiry.
    EnrollmentCodes,
    /// `device_requests` (replay ids) by the time they were accepted.
    DeviceRequests,
    /// `events` by the time they were accepted.
    Events,
    /// `transactions` (one-time codes) by expiry.
    Transactions,
    /// `code_failures` (wrong codes entered) by time.
    CodeFailures,
    /// `consent_withdrawals` by expiry.
    Withdrawals,
    /// `credentials` (digital IDs' status entries) by expiry.
    Credentials,
}

impl Prunable {
    /// All kinds, in the order the job runs them.
    pub const ALL: [Self; 8] = [
        Self::Challenges,
        Self::EnrollmentCodes,
        Self::DeviceRequests,
        Self::Events,
        Self::Transactions,
        Self::CodeFailures,
        Self::Withdrawals,
        Self::Credentials,
    ];

    /// The name the audit record uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Challenges => "challenges",
            Self::EnrollmentCodes => "enrollment_codes",
            Self::DeviceRequests => "device_requests",
            Self::Events => "events",
            Self::Transactions => "transactions",
            Self::CodeFailures => "code_failures",
            Self::Withdrawals => "consent_withdrawals",
            Self::Credentials => "credentials",
        }
    }

    /// One batch's statement, up to its subquery's locking clause and
    /// closing parenthesis ([`Self::Credentials`] has its own path).
    fn sql(self) -> Option<&'static str> {
        // One batch: the oldest rows before the cut-off, by their key (the
        // time column is indexed, migration 0009).
        Some(match self {
            Self::Challenges => {
                "DELETE FROM consent_challenges WHERE challenge IN \
                 (SELECT challenge FROM consent_challenges WHERE expires_at_ms < $1 \
                  ORDER BY expires_at_ms LIMIT $2"
            }
            Self::EnrollmentCodes => {
                "DELETE FROM enrollment_codes WHERE code_hash IN \
                 (SELECT code_hash FROM enrollment_codes WHERE expires_at_ms < $1 \
                  ORDER BY expires_at_ms LIMIT $2"
            }
            Self::DeviceRequests => {
                "DELETE FROM device_requests WHERE request_id IN \
                 (SELECT request_id FROM device_requests WHERE at_ms < $1 \
                  ORDER BY at_ms LIMIT $2"
            }
            Self::Events => {
                "DELETE FROM events WHERE (source, event_id) IN \
                 (SELECT source, event_id FROM events WHERE accepted_at_ms < $1 \
                  ORDER BY accepted_at_ms LIMIT $2"
            }
            Self::Transactions => {
                "DELETE FROM transactions WHERE transaction_id IN \
                 (SELECT transaction_id FROM transactions WHERE expires_at_ms < $1 \
                  ORDER BY expires_at_ms LIMIT $2"
            }
            Self::CodeFailures => {
                "DELETE FROM code_failures WHERE (device_id, at_ms, id) IN \
                 (SELECT device_id, at_ms, id FROM code_failures WHERE at_ms < $1 \
                  ORDER BY at_ms LIMIT $2"
            }
            Self::Withdrawals => {
                "DELETE FROM consent_withdrawals WHERE (consent_id, subject_id) IN \
                 (SELECT consent_id, subject_id FROM consent_withdrawals WHERE expires_at_ms < $1 \
                  ORDER BY expires_at_ms LIMIT $2"
            }
            Self::Credentials => return None,
        })
    }
}

/// What one batch of the retention job removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    /// Rows removed.
    pub removed: u64,
    /// Of them, rows whose MAC did not verify (edited by someone without
    /// the root key): removed all the same, and named in the batch's
    /// audit record.
    pub unverified: u64,
}

impl AuditedTx {
    /// Deletes at most `limit` rows of `kind` older than `before_ms`;
    /// returns how many.
    pub async fn prune(
        &mut self,
        kind: Prunable,
        before_ms: i64,
        limit: u32,
    ) -> Result<Pruned, StoreError> {
        let Some(sql) = kind.sql() else {
            return self
                .prune_expired_credentials(before_ms.div_euclid(1000), limit)
                .await;
        };
        // On PostgreSQL rows another transaction holds are left for the
        // next run: this delete takes its rows in time order, a subject's
        // deletion (or a rewrap) takes the same rows in another, and
        // waiting could deadlock one of them.
        let lock = match self.store.backend {
            super::Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            super::Backend::Sqlite => "",
        };
        Ok(Pruned {
            removed: sqlx::query(sqlx::AssertSqlSafe(format!("{sql}{lock})")))
                .bind(before_ms)
                .bind(i64::from(limit))
                .execute(self.conn().await?)
                .await?
                .rows_affected(),
            unverified: 0,
        })
    }
}
