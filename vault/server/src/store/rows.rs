//! Storage rows (schema v1) and their conversion to domain values.
//!
//! Rows are not domain types: every column read from the database is
//! checked here (lengths, ranges) before it becomes a domain value, and a
//! bad column is reported as [`StoreError::Corrupt`] naming the column.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::StoreError;
use idvault_core::keys::WrappedDek;
use idvault_core::packet::ChainHead;
use idvault_core::records::SubjectRecord;
use idvault_core::rowmac::{self, RowMac};
use idvault_core::subject::SubjectId;

pub(super) fn i64_to_u64(v: i64, col: &'static str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(col))
}

pub(super) fn u64_to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt("value out of range"))
}

/// A subject id column (16 bytes).
pub(super) fn subject_col(row: &AnyRow, col: &'static str) -> Result<SubjectId, StoreError> {
    let b: Vec<u8> = row.try_get(col)?;
    SubjectId::from_slice(&b).ok_or(StoreError::Corrupt(col))
}

/// A fixed-length byte column.
pub(super) fn fixed<const N: usize>(
    row: &AnyRow,
    col: &'static str,
) -> Result<[u8; N], StoreError> {
    let b: Vec<u8> = row.try_get(col)?;
    b.try_into().map_err(|_| StoreError::Corrupt(col))
}

/// A nullable fixed-size bytes column: `None` when NULL, corrupt when
/// of another length.
pub(super) fn opt_fixed<const N: usize>(
    row: &AnyRow,
    col: &'static str,
) -> Result<Option<[u8; N]>, StoreError> {
    row.try_get::<Option<Vec<u8>>, _>(col)?
        .map(|b| b.try_into().map_err(|_| StoreError::Corrupt(col)))
        .transpose()
}

/// A stored list column: items joined by commas (every list stored this
/// way holds names that cannot contain one). The one reader of the encoding.
pub(super) fn list_col(row: &AnyRow, col: &'static str) -> Result<Vec<String>, StoreError> {
    let text: String = row.try_get(col)?;
    Ok(text
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

/// The stored form of a list column (see [`list_col`]): the one writer.
pub(super) fn list_text<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    items.into_iter().collect::<Vec<_>>().join(",")
}

fn array32(v: Vec<u8>, col: &'static str) -> Result<[u8; 32], StoreError> {
    v.try_into().map_err(|_| StoreError::Corrupt(col))
}

/// A `subjects` row as the domain record, its owner checked against the
/// row's MAC with `keys` (no keys: no owner).
pub(super) fn subject_record(
    r: &AnyRow,
    keys: Option<&RowMac>,
) -> Result<SubjectRecord, StoreError> {
    let id: Vec<u8> = r.try_get("subject_id")?;
    let id = SubjectId::from_slice(&id).ok_or(StoreError::Corrupt("subjects.subject_id"))?;
    let kek_version: i64 = r.try_get("kek_version")?;
    let head_seq: i64 = r.try_get("head_seq")?;
    let created_by: String = r.try_get("created_by")?;
    let created_at_ms: i64 = r.try_get("created_at_ms")?;
    let owner = rowmac::subject_owner(&id, &created_by, created_at_ms);
    let owner_verified = keys.is_some_and(|k| super::check_row(k, &owner, r).is_ok());
    Ok(SubjectRecord {
        id,
        created_by,
        owner_verified,
        wrapped_dek: WrappedDek {
            kek_version: u32::try_from(kek_version)
                .map_err(|_| StoreError::Corrupt("subjects.kek_version"))?,
            bytes: r.try_get("wrapped_dek")?,
        },
        head: ChainHead {
            seq: i64_to_u64(head_seq, "subjects.head_seq")?,
            hash: array32(r.try_get("head_hash")?, "subjects.head_hash")?,
        },
        created_at_ms,
        updated_at_ms: r.try_get("updated_at_ms")?,
    })
}
