//! Consent rows: devices, enrollment codes, challenges, consents, receipts
//! and device request ids.
//!
//! Every "accepted once" rule is a conditional write whose affected-row
//! count says whether this caller won: `UPDATE … WHERE used_at_ms IS NULL`
//! or `INSERT … ON CONFLICT DO NOTHING`. Two vault replicas racing on
//! PostgreSQL serialise on the row, so exactly one sees a row written.
//!
//! One exception, on SQLite only: a grant's claim
//! ([`AuditedTx::claim_grant`]) is decided by reads made on the one writer,
//! which holds the database's write lock from those reads to the commit
//! that carries the claim's writes, so no other writer (of this process or
//! another) can come between; the consent id's primary key stays as a
//! backstop (a plain INSERT: a duplicate fails the request).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::rows::{fixed, list_col, list_text, subject_col};
use super::writeset::{Table, Value};
use super::{AuditedTx, Store, StoreError, check_row, seal_row};
use idvault_core::consent::{Challenge, Consent, Device, EnrollmentCode, Receipt};
use idvault_core::records::SubjectRecord;
use idvault_core::rowmac::{self, RowMac};
use idvault_core::subject::{FieldName, SubjectId};

/// A stored field list: a name outside the catalogue is a corrupt row.
fn fields_col(row: &AnyRow, col: &'static str) -> Result<Vec<FieldName>, StoreError> {
    list_col(row, col)?
        .iter()
        .map(|n| FieldName::parse(n).map_err(|_| StoreError::Corrupt(col)))
        .collect()
}

fn field_list(fields: &[FieldName]) -> String {
    list_text(fields.iter().map(FieldName::as_str))
}

/// A challenge row (`partner, subject_id, expires_at_ms, used_at_ms,
/// mac_version, mac`), its MAC checked.
fn challenge_row(keys: &RowMac, challenge: &[u8; 32], r: &AnyRow) -> Result<Challenge, StoreError> {
    let c = Challenge {
        partner: r.try_get("partner")?,
        subject: subject_col(r, "subject_id")?,
        expires_at_ms: r.try_get("expires_at_ms")?,
        used: r.try_get::<Option<i64>, _>("used_at_ms")?.is_some(),
    };
    check_row(keys, &rowmac::challenge(challenge, &c), r)?;
    Ok(c)
}

/// A presented consent's row as inserted (not revoked), MACed: the 16
/// columns of `consents` in their order.
fn consent_values(keys: &RowMac, c: &Consent) -> Vec<Value> {
    let row = Consent {
        revoked_at_ms: None,
        ..c.clone()
    };
    let (v, mac) = seal_row(keys, &rowmac::consent(&row));
    vec![
        Value::Bytes(c.consent_id.to_vec()),
        Value::Bytes(c.subject.as_bytes().to_vec()),
        Value::Text(c.device_id.clone()),
        Value::Text(c.audience.clone()),
        Value::Text(c.purpose.clone()),
        Value::Text(field_list(&c.fields)),
        Value::Int(i64::from(c.standing)),
        Value::Int(c.issued_at),
        Value::Int(c.expires_at),
        Value::Bytes(c.grant_hash.to_vec()),
        Value::Int(c.presented_at_ms),
        Value::OptInt(None),
        Value::Bytes(c.grant.clone()),
        Value::Bytes(c.signature.clone()),
        Value::Int(v),
        Value::Bytes(mac),
    ]
}

/// The rows a grant's claim is decided on ([`AuditedTx::grant_claim_rows`]).
#[derive(Debug)]
pub struct GrantClaimRows {
    /// The subject's row.
    pub subject: Option<SubjectRecord>,
    /// The device's row.
    pub device: Option<Device>,
    /// Whether the consent id was presented before.
    pub consent_presented: bool,
    /// Whether the person withdrew the consent id before it was presented
    /// ([`AuditedTx::withdraw_consent`]).
    pub withdrawn: bool,
    /// The challenge's row.
    pub challenge: Option<Challenge>,
}

/// What a person's `RevokeConsent` found ([`AuditedTx::revoke_consent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentRevocation {
    /// The person's presented consent is revoked now.
    Revoked,
    /// It was revoked before.
    AlreadyRevoked,
    /// The vault holds no consent of this person's with that id: it was
    /// not presented (yet), or it is another person's.
    NotHeld,
}

/// What withdrawing a consent not yet presented did
/// ([`AuditedTx::withdraw_consent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawal {
    /// Withdrawn now.
    Withdrawn,
    /// Already withdrawn, and still refused.
    AlreadyWithdrawn,
    /// The device has as many live withdrawals as allowed.
    Full,
}

/// How a claim ended ([`AuditedTx::claim_grant`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantClaim {
    /// The consent is recorded and the challenge used.
    Claimed,
    /// The consent id was presented before (a concurrent presentation
    /// won, on PostgreSQL).
    ConsentPresented,
    /// The challenge was used before (likewise).
    ChallengeUsed,
}

/// A device row, its MAC checked.
pub(super) fn device(keys: &RowMac, r: &AnyRow) -> Result<Device, StoreError> {
    let d = Device {
        device_id: r.try_get("device_id")?,
        subject: subject_col(r, "subject_id")?,
        public_key: r.try_get("public_key")?,
        enrolled_by: r.try_get("enrolled_by")?,
        enrolled_at_ms: r.try_get("enrolled_at_ms")?,
        revoked_at_ms: r.try_get("revoked_at_ms")?,
    };
    check_row(keys, &rowmac::device(&d), r)?;
    Ok(d)
}

/// A consent row, its MAC checked. (The grant it keeps is verified by the
/// caller, against the device it names.)
pub(super) fn consent(keys: &RowMac, r: &AnyRow) -> Result<Consent, StoreError> {
    let c = Consent {
        consent_id: fixed(r, "consent_id")?,
        subject: subject_col(r, "subject_id")?,
        device_id: r.try_get("device_id")?,
        audience: r.try_get("audience")?,
        purpose: r.try_get("purpose")?,
        fields: fields_col(r, "fields")?,
        standing: r.try_get::<i64, _>("standing")? == 1,
        issued_at: r.try_get("issued_at")?,
        expires_at: r.try_get("expires_at")?,
        grant_hash: fixed(r, "grant_hash")?,
        presented_at_ms: r.try_get("presented_at_ms")?,
        revoked_at_ms: r.try_get("revoked_at_ms")?,
        grant: r
            .try_get::<Option<Vec<u8>>, _>("grant_bytes")?
            .unwrap_or_default(),
        signature: r
            .try_get::<Option<Vec<u8>>, _>("grant_signature")?
            .unwrap_or_default(),
    };
    check_row(keys, &rowmac::consent(&c), r)?;
    Ok(c)
}

fn receipt(r: &AnyRow) -> Result<Receipt, StoreError> {
    Ok(Receipt {
        receipt_id: r.try_get("receipt_id")?,
        consent_id: fixed(r, "consent_id")?,
        subject: subject_col(r, "subject_id")?,
        partner: r.try_get("partner")?,
        purpose: r.try_get("purpose")?,
        fields: fields_col(r, "fields")?,
        released_at_ms: r.try_get("released_at_ms")?,
        grant_hash: fixed(r, "grant_hash")?,
    })
}

/// `SELECT` of every device column, as a macro so queries stay string
/// literals.
macro_rules! device_columns {
    () => {
        "device_id, subject_id, public_key, enrolled_by, enrolled_at_ms, revoked_at_ms, \
         mac_version, mac"
    };
}

macro_rules! select_devices {
    () => {
        concat!("SELECT ", device_columns!(), " FROM devices")
    };
}

/// Column list of a challenge row as [`challenge_row`] reads it.
macro_rules! challenge_columns {
    () => {
        "partner, subject_id, expires_at_ms, used_at_ms, mac_version, mac"
    };
}

async fn consent_by_id<'e>(
    keys: &RowMac,
    ex: impl sqlx::Executor<'e, Database = sqlx::Any>,
    id: &[u8; 16],
    lock: bool,
) -> Result<Option<Consent>, StoreError> {
    macro_rules! select {
        () => {
            concat!(
                "SELECT ",
                consent_columns!(),
                " FROM consents WHERE consent_id = $1"
            )
        };
    }
    // Locked (PostgreSQL): a revocation racing a release waits for it, or
    // the release sees the revocation; never both acknowledged.
    let row = sqlx::query(if lock {
        concat!(select!(), " FOR UPDATE")
    } else {
        select!()
    })
    .bind(id.to_vec())
    .fetch_optional(ex)
    .await?;
    row.as_ref().map(|r| consent(keys, r)).transpose()
}

/// The two counts of [`Store::open_challenges`]: `partner`'s open
/// challenges (`$1`, unexpired after `$2`, up to `$3`) and those it holds
/// for person `$4` (up to `$5`). Each seeks a partial index of unused
/// challenges, ordered by expiry (by partner, migration 0023; by person
/// and partner, migration 0025), so neither reads the used and expired
/// rows kept until retention drops them, nor another partner's.
const OPEN_CHALLENGES_SQL: &str = "SELECT \
     (SELECT count(*) FROM (SELECT 1 FROM consent_challenges WHERE partner = $1 \
       AND used_at_ms IS NULL AND expires_at_ms > $2 LIMIT $3) AS p), \
     (SELECT count(*) FROM (SELECT 1 FROM consent_challenges WHERE subject_id = $4 \
       AND partner = $1 AND used_at_ms IS NULL AND expires_at_ms > $2 LIMIT $5) AS s)";

impl Store {
    /// `partner`'s open challenges (unused, unexpired at `now_ms`): in all,
    /// and for `subject`; each count stops at its `cap` (read from the
    /// pool, so the cost of a check is bounded by the caps too).
    pub async fn open_challenges(
        &self,
        partner: &str,
        subject: &SubjectId,
        now_ms: i64,
        caps: (u32, u32),
    ) -> Result<(i64, i64), StoreError> {
        Ok(sqlx::query_as(OPEN_CHALLENGES_SQL)
            .bind(partner.to_owned())
            .bind(now_ms)
            .bind(i64::from(caps.0))
            .bind(subject.as_bytes().to_vec())
            .bind(i64::from(caps.1))
            .fetch_one(self.pool())
            .await?)
    }

    /// Whether a device request id was used already, read from the pool:
    /// a cheap early refusal only, the insert in the call's transaction
    /// decides ([`AuditedTx::insert_device_request`]).
    pub async fn device_request_used(&self, request_id: &[u8; 16]) -> Result<bool, StoreError> {
        Ok(
            sqlx::query_scalar::<_, i64>("SELECT 1 FROM device_requests WHERE request_id = $1")
                .bind(request_id.to_vec())
                .fetch_optional(self.pool())
                .await?
                .is_some(),
        )
    }

    /// A consent by id (read outside any write transaction).
    pub async fn consent(&self, id: &[u8; 16]) -> Result<Option<Consent>, StoreError> {
        consent_by_id(&*self.row_keys()?, self.pool(), id, false).await
    }

    /// A device by id (read outside any write transaction, so signature
    /// checks do not hold the write lock).
    pub async fn device(&self, device_id: &str) -> Result<Option<Device>, StoreError> {
        let row = sqlx::query(concat!(select_devices!(), " WHERE device_id = $1"))
            .bind(device_id.to_owned())
            .fetch_optional(self.pool())
            .await?;
        row.as_ref()
            .map(|r| device(&*self.row_keys()?, r))
            .transpose()
    }

    /// Whether a device request id was accepted before: a pool read, so a
    /// replayed request is turned away before any costly work. The insert
    /// in the request's own transaction stays the authority.
    pub async fn device_request_seen(&self, request_id: &[u8; 16]) -> Result<bool, StoreError> {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM device_requests WHERE request_id = $1")
                .bind(request_id.to_vec())
                .fetch_one(self.pool())
                .await?;
        Ok(n > 0)
    }
}

impl AuditedTx {
    /// A device by id, inside the transaction; on PostgreSQL locked until
    /// it ends, so a revocation and a use of the device are ordered.
    pub async fn device(&mut self, device_id: &str) -> Result<Option<Device>, StoreError> {
        let sql = locked!(
            self.store.backend,
            select_devices!(),
            " WHERE device_id = $1"
        );
        let row = sqlx::query(sql)
            .bind(device_id.to_owned())
            .fetch_optional(self.conn().await?)
            .await?;
        row.as_ref()
            .map(|r| device(&*self.store.row_keys()?, r))
            .transpose()
    }

    /// `subject`'s device `device_id`, locked on PostgreSQL like
    /// [`Self::device`]. Another person's device is neither returned nor
    /// locked: a phone naming someone else's device must not get to hold
    /// that row (and stall its owner) for the length of a call that then
    /// finds it is not theirs.
    pub async fn device_of(
        &mut self,
        device_id: &str,
        subject: &SubjectId,
    ) -> Result<Option<Device>, StoreError> {
        let sql = locked!(
            self.store.backend,
            select_devices!(),
            " WHERE device_id = $1 AND subject_id = $2"
        );
        let row = sqlx::query(sql)
            .bind(device_id.to_owned())
            .bind(subject.as_bytes().to_vec())
            .fetch_optional(self.conn().await?)
            .await?;
        row.as_ref()
            .map(|r| device(&*self.store.row_keys()?, r))
            .transpose()
    }

    /// A subject's devices, oldest first.
    pub async fn devices_of(&mut self, subject: &SubjectId) -> Result<Vec<Device>, StoreError> {
        let rows = sqlx::query(concat!(
            select_devices!(),
            " WHERE subject_id = $1 ORDER BY enrolled_at_ms, device_id"
        ))
        .bind(subject.as_bytes().to_vec())
        .fetch_all(self.conn().await?)
        .await?;
        let keys = self.store.row_keys()?;
        rows.iter().map(|r| device(&keys, r)).collect()
    }

    /// Enrolls a device; false when its id or key is already enrolled.
    pub async fn insert_device(&mut self, d: &Device) -> Result<bool, StoreError> {
        let row = Device {
            revoked_at_ms: None,
            ..d.clone()
        };
        let (v, mac) = seal_row(&*self.store.row_keys()?, &rowmac::device(&row));
        let n = sqlx::query(
            "INSERT INTO devices (device_id, subject_id, public_key, enrolled_by, enrolled_at_ms, revoked_at_ms, \
             mac_version, mac) VALUES ($1, $2, $3, $4, $5, NULL, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(d.device_id.clone())
        .bind(d.subject.as_bytes().to_vec())
        .bind(d.public_key.clone())
        .bind(d.enrolled_by.clone())
        .bind(d.enrolled_at_ms)
        .bind(v)
        .bind(mac)
        .execute(self.conn().await?)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Revokes a device of `subject`; false if absent or already revoked.
    /// The row is read (MAC checked, locked on PostgreSQL) and written
    /// back with its new MAC.
    pub async fn revoke_device(
        &mut self,
        device_id: &str,
        subject: &SubjectId,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let Some(d) = self.device_of(device_id, subject).await? else {
            // Not this person's, or not there: read, unlocked, to tell a
            // row whose MAC fails (its owner moved by a database writer)
            // from another person's, as before the owner was in the read.
            self.store.device(device_id).await?;
            return Ok(false);
        };
        if d.subject != *subject || d.revoked_at_ms.is_some() {
            return Ok(false);
        }
        let revoked = Device {
            revoked_at_ms: Some(now_ms),
            ..d
        };
        let (v, mac) = seal_row(&*self.store.row_keys()?, &rowmac::device(&revoked));
        let n = sqlx::query(
            "UPDATE devices SET revoked_at_ms = $1, mac_version = $2, mac = $3 \
             WHERE device_id = $4 AND subject_id = $5 AND revoked_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(v)
        .bind(mac)
        .bind(device_id.to_owned())
        .bind(subject.as_bytes().to_vec())
        .execute(self.conn().await?)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Stores an enrollment code's hash.
    pub async fn insert_enrollment_code(
        &mut self,
        code_hash: &[u8; 32],
        subject: &SubjectId,
        issued_to: &str,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let code = EnrollmentCode {
            subject: *subject,
            issued_to: issued_to.to_owned(),
            expires_at_ms,
            used: false,
        };
        let (v, mac) = seal_row(
            &*self.store.row_keys()?,
            &rowmac::enrollment_code(code_hash, &code),
        );
        sqlx::query(
            "INSERT INTO enrollment_codes (code_hash, subject_id, issued_to, expires_at_ms, used_at_ms, \
             mac_version, mac) VALUES ($1, $2, $3, $4, NULL, $5, $6)",
        )
        .bind(code_hash.to_vec())
        .bind(subject.as_bytes().to_vec())
        .bind(issued_to.to_owned())
        .bind(expires_at_ms)
        .bind(v)
        .bind(mac)
        .execute(self.conn().await?)
        .await?;
        Ok(())
    }

    /// An enrollment code's state.
    pub async fn enrollment_code(
        &mut self,
        code_hash: &[u8; 32],
    ) -> Result<Option<EnrollmentCode>, StoreError> {
        let row = sqlx::query(
            "SELECT subject_id, issued_to, expires_at_ms, used_at_ms, mac_version, mac \
             FROM enrollment_codes WHERE code_hash = $1",
        )
        .bind(code_hash.to_vec())
        .fetch_optional(self.conn().await?)
        .await?;
        let keys = self.store.row_keys()?;
        row.map(|r| {
            let code = EnrollmentCode {
                subject: subject_col(&r, "subject_id")?,
                issued_to: r.try_get("issued_to")?,
                expires_at_ms: r.try_get("expires_at_ms")?,
                used: r.try_get::<Option<i64>, _>("used_at_ms")?.is_some(),
            };
            check_row(&keys, &rowmac::enrollment_code(code_hash, &code), &r)?;
            Ok(code)
        })
        .transpose()
    }

    /// Marks a code used (its state as read, `code`, re-MACed as used);
    /// false if someone else used it first.
    pub async fn use_enrollment_code(
        &mut self,
        code_hash: &[u8; 32],
        code: &EnrollmentCode,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let used = EnrollmentCode {
            used: true,
            ..code.clone()
        };
        let (v, mac) = seal_row(
            &*self.store.row_keys()?,
            &rowmac::enrollment_code(code_hash, &used),
        );
        let n = sqlx::query(
            "UPDATE enrollment_codes SET used_at_ms = $1, mac_version = $2, mac = $3 \
             WHERE code_hash = $4 AND used_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(v)
        .bind(mac)
        .bind(code_hash.to_vec())
        .execute(self.conn().await?)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Stores a new challenge, unused. Only written, never read back in
    /// the transaction: the row joins the write set, so a request that
    /// issues a challenge never holds the writer.
    pub fn insert_challenge(
        &mut self,
        challenge: &[u8; 32],
        partner: &str,
        subject: &SubjectId,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let row = Challenge {
            partner: partner.to_owned(),
            subject: *subject,
            expires_at_ms,
            used: false,
        };
        let (v, mac) = seal_row(
            &*self.store.row_keys()?,
            &rowmac::challenge(challenge, &row),
        );
        self.pending.push(
            Table::Challenges,
            vec![
                Value::Bytes(challenge.to_vec()),
                Value::Text(partner.to_owned()),
                Value::Bytes(subject.as_bytes().to_vec()),
                Value::Int(expires_at_ms),
                Value::Int(v),
                Value::Bytes(mac),
            ],
        );
        Ok(())
    }

    /// A challenge's state.
    pub async fn challenge(
        &mut self,
        challenge: &[u8; 32],
    ) -> Result<Option<Challenge>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            challenge_columns!(),
            " FROM consent_challenges WHERE challenge = $1"
        ))
        .bind(challenge.to_vec())
        .fetch_optional(self.conn().await?)
        .await?;
        let keys = self.store.row_keys()?;
        row.map(|r| challenge_row(&keys, challenge, &r)).transpose()
    }

    /// Records a presented consent; false if its id was presented before.
    async fn insert_consent(&mut self, c: &Consent) -> Result<bool, StoreError> {
        let mut q = sqlx::query(concat!(
            "INSERT INTO consents (",
            consent_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
             ON CONFLICT DO NOTHING"
        ));
        for v in consent_values(&*self.store.row_keys()?, c) {
            q = v.bind_to(q);
        }
        let n = q.execute(self.conn().await?).await?.rows_affected();
        Ok(n == 1)
    }

    /// The rows a grant's claim is decided on, read inside its
    /// transaction (see [`Self::claim_grant`]).
    ///
    /// On SQLite the transaction holds the one writer (and the database's
    /// write lock, `BEGIN IMMEDIATE`) from here to its commit, so nothing
    /// can change these rows before the claim's writes: the four reads go
    /// to the connection in one call, and the writes ride in the commit's.
    /// On PostgreSQL the subject's row, then the device's, are locked
    /// (the lock order of every call that writes a person's rows), and the
    /// claim's conditional writes stay the authority.
    pub async fn grant_claim_rows(
        &mut self,
        subject_id: &SubjectId,
        device_id: &str,
        consent_id: &[u8; 16],
        challenge: &[u8; 32],
    ) -> Result<GrantClaimRows, StoreError> {
        if self.store.backend == super::Backend::Postgres {
            let subject = self.subject(subject_id).await?;
            let device = self.device(device_id).await?;
            let consent_presented = sqlx::query("SELECT 1 FROM consents WHERE consent_id = $1")
                .bind(consent_id.to_vec())
                .fetch_optional(self.conn().await?)
                .await?
                .is_some();
            let withdrawn = sqlx::query(
                "SELECT 1 FROM consent_withdrawals WHERE consent_id = $1 AND subject_id = $2",
            )
            .bind(consent_id.to_vec())
            .bind(subject_id.as_bytes().to_vec())
            .fetch_optional(self.conn().await?)
            .await?
            .is_some();
            let challenge = self.challenge(challenge).await?;
            return Ok(GrantClaimRows {
                subject,
                device,
                consent_presented,
                withdrawn,
                challenge,
            });
        }
        // One script, five statements; each row says which it is.
        let rows = sqlx::query(concat!(
            "SELECT 'subject' AS claim_row, ",
            subject_columns!(),
            " FROM subjects WHERE subject_id = $1; ",
            "SELECT 'device' AS claim_row, ",
            device_columns!(),
            " FROM devices WHERE device_id = $2; ",
            "SELECT 'consent' AS claim_row FROM consents WHERE consent_id = $3; ",
            "SELECT 'withdrawn' AS claim_row FROM consent_withdrawals \
             WHERE consent_id = $3 AND subject_id = $1; ",
            "SELECT 'challenge' AS claim_row, ",
            challenge_columns!(),
            " FROM consent_challenges WHERE challenge = $4"
        ))
        .bind(subject_id.as_bytes().to_vec())
        .bind(device_id.to_owned())
        .bind(consent_id.to_vec())
        .bind(challenge.to_vec())
        .fetch_all(self.conn().await?)
        .await?;
        let keys = self.store.row_keys()?;
        let mut out = GrantClaimRows {
            subject: None,
            device: None,
            consent_presented: false,
            withdrawn: false,
            challenge: None,
        };
        for r in &rows {
            match r.try_get::<String, _>("claim_row")?.as_str() {
                "subject" => out.subject = Some(super::rows::subject_record(r, Some(&keys))?),
                "device" => out.device = Some(device(&keys, r)?),
                "consent" => out.consent_presented = true,
                "withdrawn" => out.withdrawn = true,
                "challenge" => out.challenge = Some(challenge_row(&keys, challenge, r)?),
                _ => return Err(StoreError::Corrupt("claim_row")),
            }
        }
        Ok(out)
    }

    /// Records a presented consent and marks its challenge used (`row`,
    /// its state as read by [`Self::grant_claim_rows`] and checked by the
    /// caller, re-MACed as used).
    ///
    /// On SQLite the outcome was decided by those reads, made on the
    /// exclusive writer in this same transaction: the two writes are
    /// queued for the commit's one call, and a plain INSERT of the consent
    /// fails the request (never passes) should its id exist after all. On
    /// PostgreSQL the conditional writes run here and their affected-row
    /// counts decide, as the module docs say.
    pub async fn claim_grant(
        &mut self,
        consent: &Consent,
        challenge: &[u8; 32],
        row: &Challenge,
        now_ms: i64,
    ) -> Result<GrantClaim, StoreError> {
        let used = Challenge {
            used: true,
            ..row.clone()
        };
        let (v, mac) = seal_row(
            &*self.store.row_keys()?,
            &rowmac::challenge(challenge, &used),
        );
        if self.store.backend == super::Backend::Sqlite {
            // Queued only behind reads made on the writer in this same
            // transaction (`grant_claim_rows`): without them the rows
            // would go to the batch applier, where nothing decided them.
            if self.tx.is_none() {
                return Err(StoreError::Batch(
                    "a grant's claim without its reads on the writer".into(),
                ));
            }
            let values = consent_values(&*self.store.row_keys()?, consent);
            self.pending.push(Table::Consents, values);
            self.pending.push(
                Table::ChallengeUses,
                vec![
                    Value::Int(now_ms),
                    Value::Int(v),
                    Value::Bytes(mac),
                    Value::Bytes(challenge.to_vec()),
                ],
            );
            return Ok(GrantClaim::Claimed);
        }
        if !self.insert_consent(consent).await? {
            return Ok(GrantClaim::ConsentPresented);
        }
        let n = sqlx::query(
            "UPDATE consent_challenges SET used_at_ms = $1, mac_version = $2, mac = $3 \
             WHERE challenge = $4 AND used_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(v)
        .bind(mac)
        .bind(challenge.to_vec())
        .execute(self.conn().await?)
        .await?
        .rows_affected();
        Ok(if n == 1 {
            GrantClaim::Claimed
        } else {
            GrantClaim::ChallengeUsed
        })
    }

    /// A consent by id, inside the transaction.
    pub async fn consent(&mut self, id: &[u8; 16]) -> Result<Option<Consent>, StoreError> {
        let lock = self.store.backend == super::Backend::Postgres;
        let keys = self.store.row_keys()?;
        consent_by_id(&keys, self.conn().await?, id, lock).await
    }

    /// Revokes a presented consent of `subject`. The row is read (MAC
    /// checked, locked on PostgreSQL) and written back with its new MAC.
    pub async fn revoke_consent(
        &mut self,
        id: &[u8; 16],
        subject: &SubjectId,
        now_ms: i64,
    ) -> Result<ConsentRevocation, StoreError> {
        // Only this person's row is read and locked: another person's
        // consent with this id is not theirs to hold (see `device_of`).
        let sql = match self.store.backend {
            super::Backend::Postgres => concat!(
                "SELECT ",
                consent_columns!(),
                " FROM consents WHERE consent_id = $1 AND subject_id = $2 FOR UPDATE"
            ),
            super::Backend::Sqlite => concat!(
                "SELECT ",
                consent_columns!(),
                " FROM consents WHERE consent_id = $1 AND subject_id = $2"
            ),
        };
        let row = sqlx::query(sql)
            .bind(id.to_vec())
            .bind(subject.as_bytes().to_vec())
            .fetch_optional(self.conn().await?)
            .await?;
        let keys = self.store.row_keys()?;
        let Some(c) = row.as_ref().map(|r| consent(&keys, r)).transpose()? else {
            // Not this person's, or not there: read, unlocked, so that a
            // row whose MAC fails (its owner moved by a database writer)
            // is refused as forged rather than taken for another person's.
            self.store.consent(id).await?;
            return Ok(ConsentRevocation::NotHeld);
        };
        if c.subject != *subject {
            return Ok(ConsentRevocation::NotHeld);
        }
        if c.revoked_at_ms.is_some() {
            return Ok(ConsentRevocation::AlreadyRevoked);
        }
        let revoked = Consent {
            revoked_at_ms: Some(now_ms),
            ..c
        };
        let (v, mac) = seal_row(&*self.store.row_keys()?, &rowmac::consent(&revoked));
        let n = sqlx::query(
            "UPDATE consents SET revoked_at_ms = $1, mac_version = $2, mac = $3 \
             WHERE consent_id = $4 AND subject_id = $5 AND revoked_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(v)
        .bind(mac)
        .bind(id.to_vec())
        .bind(subject.as_bytes().to_vec())
        .execute(self.conn().await?)
        .await?
        .rows_affected();
        Ok(if n == 1 {
            ConsentRevocation::Revoked
        } else {
            ConsentRevocation::AlreadyRevoked
        })
    }

    /// Withdraws consent id `id` of `subject`, asked by its device
    /// `device_id`, before any partner presented it: a grant with that id
    /// for that subject is refused until `expires_ms`
    /// ([`GrantClaimRows::withdrawn`]). At most `cap` live withdrawals
    /// per device; the person's expired ones are removed first, so the
    /// rows a person holds stay bounded whatever the retention job's
    /// schedule. Run after the subject's row is read in the same
    /// transaction (locked on PostgreSQL; the writer held on SQLite), so
    /// it is ordered against a presentation of the same grant.
    pub async fn withdraw_consent(
        &mut self,
        id: &[u8; 16],
        subject: &SubjectId,
        device_id: &str,
        now_ms: i64,
        expires_ms: i64,
        cap: u32,
    ) -> Result<Withdrawal, StoreError> {
        sqlx::query("DELETE FROM consent_withdrawals WHERE subject_id = $1 AND expires_at_ms < $2")
            .bind(subject.as_bytes().to_vec())
            .bind(now_ms)
            .execute(self.conn().await?)
            .await?;
        let already = sqlx::query(
            "SELECT 1 FROM consent_withdrawals WHERE consent_id = $1 AND subject_id = $2",
        )
        .bind(id.to_vec())
        .bind(subject.as_bytes().to_vec())
        .fetch_optional(self.conn().await?)
        .await?
        .is_some();
        if already {
            return Ok(Withdrawal::AlreadyWithdrawn);
        }
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT 1 FROM consent_withdrawals \
             WHERE subject_id = $1 AND device_id = $2 LIMIT $3) AS live",
        )
        .bind(subject.as_bytes().to_vec())
        .bind(device_id.to_owned())
        .bind(i64::from(cap))
        .fetch_one(self.conn().await?)
        .await?;
        if live >= i64::from(cap) {
            return Ok(Withdrawal::Full);
        }
        sqlx::query(
            "INSERT INTO consent_withdrawals \
             (consent_id, subject_id, device_id, withdrawn_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id.to_vec())
        .bind(subject.as_bytes().to_vec())
        .bind(device_id.to_owned())
        .bind(now_ms)
        .bind(expires_ms)
        .execute(self.conn().await?)
        .await?;
        Ok(Withdrawal::Withdrawn)
    }

    /// Appends a receipt (written with the transaction's leaf).
    pub fn insert_receipt(&mut self, r: &Receipt) {
        self.pending.push(
            Table::Receipts,
            vec![
                Value::Text(r.receipt_id.clone()),
                Value::Bytes(r.consent_id.to_vec()),
                Value::Bytes(r.subject.as_bytes().to_vec()),
                Value::Text(r.partner.clone()),
                Value::Text(r.purpose.clone()),
                Value::Text(field_list(&r.fields)),
                Value::Int(r.released_at_ms),
                Value::Bytes(r.grant_hash.to_vec()),
            ],
        );
    }

    /// A subject's newest `limit` receipts, newest first.
    pub async fn receipts_of(
        &mut self,
        subject: &SubjectId,
        limit: u32,
    ) -> Result<Vec<Receipt>, StoreError> {
        let rows = sqlx::query(
            "SELECT receipt_id, consent_id, subject_id, partner, purpose, fields, released_at_ms, grant_hash \
             FROM consent_receipts WHERE subject_id = $1 ORDER BY released_at_ms DESC, receipt_id DESC LIMIT $2",
        )
        .bind(subject.as_bytes().to_vec())
        .bind(i64::from(limit))
        .fetch_all(self.conn().await?)
        .await?;
        rows.iter().map(receipt).collect()
    }

    /// Records a device request id; false if it was seen before.
    pub async fn insert_device_request(
        &mut self,
        request_id: &[u8; 16],
        device_id: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "INSERT INTO device_requests (request_id, device_id, at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(request_id.to_vec())
        .bind(device_id.to_owned())
        .bind(now_ms)
        .execute(self.conn().await?)
        .await?
        .rows_affected();
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idvault_core::secret::Secret;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("v.db").display());
        let mut store = Store::connect(&url).await.expect("connect");
        store.set_row_mac(RowMac::from_keys([Secret::from_bytes([7; 32], 1)]).expect("key"));
        (dir, store)
    }

    /// The open-challenge counts read open rows only: a person's used and
    /// expired challenges (kept until retention drops them) and another
    /// partner's are neither counted nor, on SQLite, walked (each count
    /// seeks its partial index; before migration 0025 the per-person one
    /// walked every challenge row the person had, of every partner).
    #[tokio::test]
    async fn open_challenge_counts_seek_open_rows_only() {
        let (_dir, store) = store().await;
        let person = SubjectId::from_bytes([1; 16]);
        let other = SubjectId::from_bytes([2; 16]);
        let now = 1_000_000;
        let mut n = 0u8;
        let mut add = |partner: &'static str, subject: SubjectId, expires: i64| {
            n += 1;
            ([n; 32], partner, subject, expires)
        };
        let rows = [
            add("partner-b", person, now + 60_000),
            add("partner-b", person, now + 60_000),
            add("partner-b", person, now + 60_000), // used below
            add("partner-b", person, now - 1),      // expired
            add("partner-b", other, now + 60_000),
            add("partner-c", person, now + 60_000),
        ];
        let mut tx = store.begin_audited(None).expect("queue");
        for (challenge, partner, subject, expires) in &rows {
            tx.insert_challenge(challenge, partner, subject, *expires)
                .expect("challenge");
        }
        store.commit_write(tx).await.expect("commit");
        sqlx::query("UPDATE consent_challenges SET used_at_ms = 1 WHERE challenge = $1")
            .bind([3u8; 32].to_vec())
            .execute(store.pool())
            .await
            .expect("use");
        assert_eq!(
            store
                .open_challenges("partner-b", &person, now, (100, 100))
                .await
                .expect("counts"),
            (3, 2)
        );
        assert_eq!(
            store
                .open_challenges("partner-b", &person, now, (2, 1))
                .await
                .expect("counts"),
            (2, 1),
            "each count stops at its cap"
        );

        let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "EXPLAIN QUERY PLAN {OPEN_CHALLENGES_SQL}"
        )))
        .bind("partner-b")
        .bind(now)
        .bind(100i64)
        .bind(person.as_bytes().to_vec())
        .bind(100i64)
        .fetch_all(store.pool())
        .await
        .expect("plan");
        let steps: Vec<&str> = plan.iter().map(|(_, _, _, d)| d.as_str()).collect();
        for want in [
            "USING INDEX consent_challenges_open (partner=? AND expires_at_ms>?)",
            "USING INDEX consent_challenges_open_subject (subject_id=? AND partner=? AND expires_at_ms>?)",
        ] {
            assert!(steps.iter().any(|d| d.ends_with(want)), "{want}: {steps:?}");
        }
    }

    /// On SQLite a grant's claim is decided by its reads on the writer
    /// (`grant_claim_rows`): the four reads come back from one call, MACs
    /// checked, and a claim queued without them is refused, since its rows
    /// would otherwise reach the batch applier undecided.
    #[tokio::test]
    async fn sqlite_claim_is_decided_by_reads_on_the_writer() {
        let (_dir, store) = store().await;
        let subject = SubjectId::from_bytes([1; 16]);
        let (challenge, consent_id) = ([2u8; 32], [3u8; 16]);

        let mut tx = store.begin_audited(None).expect("queue");
        tx.insert_challenge(&challenge, "partner-b", &subject, i64::MAX)
            .expect("challenge");
        store.commit_write(tx).await.expect("commit");

        let mut tx = store.begin_audited(None).expect("queue");
        let row = Challenge {
            partner: "partner-b".into(),
            subject,
            expires_at_ms: i64::MAX,
            used: false,
        };
        let consent = Consent {
            consent_id,
            subject,
            device_id: "dev_0".into(),
            audience: "spiffe://idvault.test/partner/partner-b".into(),
            purpose: "kyc".into(),
            fields: vec![],
            standing: false,
            issued_at: 1,
            expires_at: 2,
            grant_hash: [4; 32],
            presented_at_ms: 5,
            revoked_at_ms: None,
            grant: vec![6],
            signature: vec![7],
        };
        // No reads on the writer yet: refused, nothing queued.
        assert!(matches!(
            tx.claim_grant(&consent, &challenge, &row, 10).await,
            Err(StoreError::Batch(_))
        ));
        let rows = tx
            .grant_claim_rows(&subject, "dev_0", &consent_id, &challenge)
            .await
            .expect("reads");
        assert!(rows.subject.is_none() && rows.device.is_none() && !rows.consent_presented);
        assert_eq!(rows.challenge.as_ref(), Some(&row));
        assert_eq!(
            tx.claim_grant(&consent, &challenge, &row, 10)
                .await
                .expect("claim"),
            GrantClaim::Claimed
        );
        store.commit_write(tx).await.expect("commit");

        // Both writes landed with the commit: the next claim sees them.
        let mut tx = store.begin_audited(None).expect("queue");
        let rows = tx
            .grant_claim_rows(&subject, "dev_0", &consent_id, &challenge)
            .await
            .expect("reads");
        assert!(rows.consent_presented);
        assert!(rows.challenge.expect("challenge").used);
        // A consent id queued twice fails its request (the key is the
        // backstop), never passes.
        tx.claim_grant(&consent, &challenge, &row, 11)
            .await
            .expect("queued");
        assert!(store.commit_write(tx).await.is_err());

        // A challenge row edited without the key is refused as forged.
        sqlx::query("UPDATE consent_challenges SET expires_at_ms = 1")
            .execute(store.pool())
            .await
            .expect("edit");
        let mut tx = store.begin_audited(None).expect("queue");
        assert!(matches!(
            tx.grant_claim_rows(&subject, "dev_0", &consent_id, &challenge)
                .await,
            Err(StoreError::Forged(_))
        ));
    }
}
