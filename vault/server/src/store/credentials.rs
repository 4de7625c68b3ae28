//! Digital-ID status rows: status lists and one entry per issued
//! credential (docs/digital-id.md, "Revocation").
//!
//! Both carry row MACs. A list's `next_seq` is only ever advanced by a
//! conditional `UPDATE … WHERE next_seq = $old` under the list's row lock,
//! so two issuers never take one index; an entry is only ever written
//! towards revoked.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::rows::subject_col;
use super::{AuditedTx, Store, StoreError, check_row, seal_row};
use idvault_core::rowmac::{self, RowMac};
use idvault_core::sdjwt::status::{CredentialEntry, StatusListState};
use idvault_core::subject::SubjectId;

macro_rules! select_lists {
    () => {
        "SELECT list_id, log2, key_version, next_seq, mac_version, mac FROM status_lists"
    };
}

macro_rules! select_entries {
    () => {
        "SELECT list_id, idx, seq, subject_id, device_id, expires_at, revoked_at_ms, mac_version, mac \
         FROM credentials"
    };
}

pub(super) fn list_row(keys: &RowMac, r: &AnyRow) -> Result<StatusListState, StoreError> {
    let int = |col: &'static str| -> Result<u32, StoreError> {
        u32::try_from(r.try_get::<i64, _>(col)?).map_err(|_| StoreError::Corrupt(col))
    };
    let l = StatusListState {
        list_id: r.try_get("list_id")?,
        log2: int("log2")?,
        key_version: int("key_version")?,
        next_seq: r.try_get("next_seq")?,
    };
    check_row(keys, &rowmac::status_list(&l), r)?;
    Ok(l)
}

/// An entry and whether its MAC verified (a list is built from every row,
/// verified or not: one that fails is published as revoked).
pub(super) fn entry_row(keys: &RowMac, r: &AnyRow) -> Result<(CredentialEntry, bool), StoreError> {
    let subject = match r.try_get::<Option<Vec<u8>>, _>("subject_id")? {
        None => None,
        Some(_) => Some(subject_col(r, "subject_id")?),
    };
    let e = CredentialEntry {
        list_id: r.try_get("list_id")?,
        idx: r.try_get("idx")?,
        seq: r.try_get("seq")?,
        subject,
        device_id: r.try_get("device_id")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at_ms: r.try_get("revoked_at_ms")?,
    };
    let ok = check_row(keys, &rowmac::credential_entry(&e), r).is_ok();
    Ok((e, ok))
}

impl Store {
    /// Every status list, oldest first, each with its MAC checked on its
    /// own (one bad row does not hide the others).
    pub async fn status_lists(
        &self,
    ) -> Result<Vec<(i64, Result<StatusListState, StoreError>)>, StoreError> {
        let rows = sqlx::query(concat!(select_lists!(), " ORDER BY list_id"))
            .fetch_all(self.pool())
            .await?;
        let keys = self.row_keys()?;
        Ok(rows
            .iter()
            .map(|r| {
                let id = r.try_get::<i64, _>("list_id").unwrap_or_default();
                (id, list_row(&keys, r))
            })
            .collect())
    }

    /// Every entry of a list, each with whether its MAC verified. A row
    /// that does not even decode is left out: the list's count publishes
    /// its sequence number as revoked.
    pub async fn credential_entries(
        &self,
        list_id: i64,
    ) -> Result<Vec<(CredentialEntry, bool)>, StoreError> {
        let rows = sqlx::query(concat!(select_entries!(), " WHERE list_id = $1"))
            .bind(list_id)
            .fetch_all(self.pool())
            .await?;
        let keys = self.row_keys()?;
        Ok(rows
            .iter()
            .filter_map(|r| entry_row(&keys, r).ok())
            .collect())
    }

    /// One entry, with whether its MAC verified.
    pub async fn credential_entry(
        &self,
        list_id: i64,
        idx: i64,
    ) -> Result<Option<(CredentialEntry, bool)>, StoreError> {
        let row = sqlx::query(concat!(
            select_entries!(),
            " WHERE list_id = $1 AND idx = $2"
        ))
        .bind(list_id)
        .bind(idx)
        .fetch_optional(self.pool())
        .await?;
        let keys = self.row_keys()?;
        row.as_ref().map(|r| entry_row(&keys, r)).transpose()
    }
}

impl AuditedTx {
    /// The newest status list, MAC checked; on PostgreSQL locked until the
    /// transaction ends (issuers take indexes one at a time).
    pub async fn newest_status_list(&mut self) -> Result<Option<StatusListState>, StoreError> {
        let sql = locked!(
            self.store.backend,
            select_lists!(),
            " ORDER BY list_id DESC LIMIT 1"
        );
        let row = sqlx::query(sql).fetch_optional(self.conn().await?).await?;
        row.as_ref()
            .map(|r| list_row(&*self.store.row_keys()?, r))
            .transpose()
    }

    /// Starts a list; false if one with its id exists already (another
    /// replica started it first).
    pub async fn insert_status_list(
        &mut self,
        l: &StatusListState,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (v, mac) = seal_row(&*self.store.row_keys()?, &rowmac::status_list(l));
        let n = sqlx::query(
            "INSERT INTO status_lists (list_id, log2, key_version, next_seq, created_at_ms, mac_version, mac) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(l.list_id)
        .bind(i64::from(l.log2))
        .bind(i64::from(l.key_version))
        .bind(l.next_seq)
        .bind(now_ms)
        .bind(v)
        .bind(mac)
        .execute(self.conn().await?)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Counts one more credential in `l`; false if its count moved since
    /// it was read.
    pub async fn advance_status_list(&mut self, l: &StatusListState) -> Result<bool, StoreError> {
        let next = StatusListState {
            next_seq: l.next_seq + 1,
            ..*l
        };
        let (v, mac) = seal_row(&*self.store.row_keys()?, &rowmac::status_list(&next));
        let n = sqlx::query(
            "UPDATE status_lists SET next_seq = $1, mac_version = $2, mac = $3 \
             WHERE list_id = $4 AND next_seq = $5",
        )
        .bind(next.next_seq)
        .bind(v)
        .bind(mac)
        .bind(l.list_id)
        .bind(l.next_seq)
        .execute(self.conn().await?)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// How many digital IDs issued to `device_id` have not expired by
    /// `now` (revoked ones too: each took a status entry), counting up to
    /// `cap` at most.
    pub async fn unexpired_credentials_of_device(
        &mut self,
        device_id: &str,
        now: i64,
        cap: u32,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT 1 FROM credentials WHERE device_id = $1 \
             AND expires_at > $2 LIMIT $3) AS c",
        )
        .bind(device_id.to_owned())
        .bind(now)
        .bind(i64::from(cap))
        .fetch_one(self.conn().await?)
        .await?)
    }

    /// Records an issued credential's entry; false if its index or
    /// sequence number is taken.
    pub async fn insert_credential(&mut self, e: &CredentialEntry) -> Result<bool, StoreError> {
        let (v, mac) = seal_row(&*self.store.row_keys()?, &rowmac::credential_entry(e));
        let n = sqlx::query(
            "INSERT INTO credentials (list_id, idx, seq, subject_id, device_id, expires_at, revoked_at_ms, \
             mac_version, mac) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
        )
        .bind(e.list_id)
        .bind(e.idx)
        .bind(e.seq)
        .bind(e.subject.map(|s| s.as_bytes().to_vec()))
        .bind(e.device_id.clone())
        .bind(e.expires_at)
        .bind(e.revoked_at_ms)
        .bind(v)
        .bind(mac)
        .execute(self.conn().await?)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// One entry inside the transaction, with whether its MAC verified.
    pub async fn credential_entry(
        &mut self,
        list_id: i64,
        idx: i64,
    ) -> Result<Option<(CredentialEntry, bool)>, StoreError> {
        let sql = locked!(
            self.store.backend,
            select_entries!(),
            " WHERE list_id = $1 AND idx = $2"
        );
        let row = sqlx::query(sql)
            .bind(list_id)
            .bind(idx)
            .fetch_optional(self.conn().await?)
            .await?;
        let keys = self.store.row_keys()?;
        row.as_ref().map(|r| entry_row(&keys, r)).transpose()
    }

    /// The entry at `list_id`/`idx` if it is `subject`'s, locked on
    /// PostgreSQL like [`Self::credential_entry`]; another person's entry
    /// is neither returned nor locked (a phone naming someone else's index
    /// must not hold that row).
    pub async fn credential_entry_of(
        &mut self,
        list_id: i64,
        idx: i64,
        subject: &SubjectId,
    ) -> Result<Option<(CredentialEntry, bool)>, StoreError> {
        let sql = locked!(
            self.store.backend,
            select_entries!(),
            " WHERE list_id = $1 AND idx = $2 AND subject_id = $3"
        );
        let row = sqlx::query(sql)
            .bind(list_id)
            .bind(idx)
            .bind(subject.as_bytes().to_vec())
            .fetch_optional(self.conn().await?)
            .await?;
        let keys = self.store.row_keys()?;
        row.as_ref().map(|r| entry_row(&keys, r)).transpose()
    }

    /// Writes `e` back as revoked at `now_ms` (and, with `forget`, with its
    /// subject and device cleared). Revoking only ever moves an entry one
    /// way, so a row whose MAC failed is rewritten too: it was published
    /// as revoked already, and now it is so with a MAC.
    pub async fn revoke_credential(
        &mut self,
        e: &CredentialEntry,
        now_ms: i64,
        forget: bool,
    ) -> Result<(), StoreError> {
        let revoked = CredentialEntry {
            revoked_at_ms: Some(e.revoked_at_ms.unwrap_or(now_ms)),
            subject: if forget { None } else { e.subject },
            device_id: if forget { None } else { e.device_id.clone() },
            ..e.clone()
        };
        let (v, mac) = seal_row(
            &*self.store.row_keys()?,
            &rowmac::credential_entry(&revoked),
        );
        sqlx::query(
            "UPDATE credentials SET subject_id = $1, device_id = $2, revoked_at_ms = $3, \
             mac_version = $4, mac = $5 WHERE list_id = $6 AND idx = $7",
        )
        .bind(revoked.subject.map(|s| s.as_bytes().to_vec()))
        .bind(revoked.device_id)
        .bind(revoked.revoked_at_ms)
        .bind(v)
        .bind(mac)
        .bind(e.list_id)
        .bind(e.idx)
        .execute(self.conn().await?)
        .await?;
        Ok(())
    }

    /// Revokes every credential of a person about to be deleted and clears
    /// the person from their entries (the entries stay: an index must never
    /// name another credential). Returns how many were still valid.
    pub async fn forget_credentials_of(
        &mut self,
        subject: &SubjectId,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let sql = locked!(
            self.store.backend,
            select_entries!(),
            " WHERE subject_id = $1"
        );
        let rows = sqlx::query(sql)
            .bind(subject.as_bytes().to_vec())
            .fetch_all(self.conn().await?)
            .await?;
        self.revoke_all(&rows, now_ms, true).await
    }

    /// Revokes every credential issued to a device (it was revoked: a
    /// credential bound to its key must not outlive it). Returns how many
    /// were still valid.
    pub async fn revoke_credentials_of_device(
        &mut self,
        device_id: &str,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let sql = locked!(
            self.store.backend,
            select_entries!(),
            " WHERE device_id = $1"
        );
        let rows = sqlx::query(sql)
            .bind(device_id.to_owned())
            .fetch_all(self.conn().await?)
            .await?;
        self.revoke_all(&rows, now_ms, false).await
    }

    async fn revoke_all(
        &mut self,
        rows: &[AnyRow],
        now_ms: i64,
        forget: bool,
    ) -> Result<u64, StoreError> {
        let keys = self.store.row_keys()?;
        let rows: Vec<_> = rows
            .iter()
            .map(|r| entry_row(&keys, r))
            .collect::<Result<_, _>>()?;
        drop(keys);
        let mut n = 0;
        for (e, ok) in rows {
            let valid = ok && e.revoked_at_ms.is_none();
            // Revoked and verified already: nothing to write (unless the
            // person is being forgotten).
            if valid || !ok || forget {
                self.revoke_credential(&e, now_ms, forget).await?;
            }
            n += u64::from(valid);
        }
        Ok(n)
    }
}

impl AuditedTx {
    /// Removes the entries of at most `limit` credentials whose `exp` is
    /// before `before_secs`, oldest first (the retention job). Each row's
    /// MAC is checked on the way: one that fails (its expiry lowered by
    /// someone without the root key, say) is removed as well, since its
    /// list publishes it revoked either way, but counted, so that the
    /// batch's audit record says so instead of passing it off as routine.
    /// On PostgreSQL rows another transaction holds (a deletion, a device
    /// revocation, a rewrap) are skipped until the next run rather than
    /// waited for in another order than theirs.
    pub async fn prune_expired_credentials(
        &mut self,
        before_secs: i64,
        limit: u32,
    ) -> Result<super::Pruned, StoreError> {
        let lock = match self.store.backend {
            super::Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            super::Backend::Sqlite => "",
        };
        let sql = format!(
            "{} WHERE expires_at < $1 ORDER BY expires_at LIMIT $2{lock}",
            select_entries!()
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(before_secs)
            .bind(i64::from(limit))
            .fetch_all(self.conn().await?)
            .await?;
        if rows.is_empty() {
            return Ok(super::Pruned::default());
        }
        let keys = self.store.row_keys()?;
        let mut unverified = 0u64;
        let mut places = Vec::with_capacity(rows.len());
        for r in &rows {
            places.push((r.try_get::<i64, _>("list_id")?, r.try_get::<i64, _>("idx")?));
            if !entry_row(&keys, r).is_ok_and(|(_, ok)| ok) {
                unverified += 1;
            }
        }
        let values = (0..places.len())
            .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!("DELETE FROM credentials WHERE (list_id, idx) IN (VALUES {values})");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (list_id, idx) in places {
            q = q.bind(list_id).bind(idx);
        }
        let removed = q.execute(self.conn().await?).await?.rows_affected();
        Ok(super::Pruned {
            removed,
            unverified,
        })
    }
}
