//! Blind-matching rows: variant indexes, indexed domains, pairwise tokens.
//!
//! Lists of values go into `IN (…)` with numbered placeholders only; every
//! value is bound (see `lookup_chunk` in the parent module for why the
//! text is formatted by hand).

use std::collections::HashMap;

use sqlx::{Any, Executor};

use super::rows::u64_to_i64;
use super::{AuditedTx, Store, StoreError};
use crate::core::subject::SubjectId;

/// One index row to write: `(domain, field code, key version, blind index)`.
pub type MatchRow<'a> = (&'a str, u8, u32, i64);

/// Rows per multi-row INSERT (5 parameters each; well under SQLite's limit).
const INSERT_CHUNK: usize = 400;
/// Values per `IN (…)` list.
const IN_CHUNK: usize = 500;

fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn subject_of(bytes: &[u8], col: &'static str) -> Result<SubjectId, StoreError> {
    SubjectId::from_slice(bytes).ok_or(StoreError::Corrupt(col))
}

async fn insert_rows<'e>(
    ex: impl Executor<'e, Database = Any>,
    subject: &SubjectId,
    rows: &[MatchRow<'_>],
) -> Result<(), StoreError> {
    let values: Vec<String> = (0..rows.len())
        .map(|i| format!("({})", placeholders(i * 5 + 1, 5)))
        .collect();
    // Conflicts are a re-index of the same value (or a 2^-64 chance
    // collision inside one key): the row already says what it would say.
    let sql = format!(
        "INSERT INTO match_index (domain, bidx, subject_id, field, key_version) VALUES {} \
         ON CONFLICT DO NOTHING",
        values.join(", ")
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (domain, field, version, bidx) in rows {
        q = q
            .bind((*domain).to_owned())
            .bind(*bidx)
            .bind(subject.as_bytes().to_vec())
            .bind(i64::from(*field))
            .bind(i64::from(*version));
    }
    q.execute(ex).await?;
    Ok(())
}

impl AuditedTx {
    /// Adds a subject's blind indexes.
    pub async fn match_insert(
        &mut self,
        subject: &SubjectId,
        rows: &[MatchRow<'_>],
    ) -> Result<(), StoreError> {
        for part in rows.chunks(INSERT_CHUNK) {
            insert_rows(&mut *self.tx, subject, part).await?;
        }
        Ok(())
    }

    /// Removes a subject's blind indexes of `fields` (codes) in every domain.
    pub async fn match_delete_fields(
        &mut self,
        subject: &SubjectId,
        fields: &[u8],
    ) -> Result<(), StoreError> {
        for f in fields {
            sqlx::query("DELETE FROM match_index WHERE subject_id = $1 AND field = $2")
                .bind(subject.as_bytes().to_vec())
                .bind(i64::from(*f))
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    /// Subjects in `domain` holding any of `indexes`, most hits first, at
    /// most `limit`.
    pub async fn match_candidates(
        &mut self,
        domain: &str,
        indexes: &[i64],
        limit: u32,
    ) -> Result<Vec<SubjectId>, StoreError> {
        if indexes.is_empty() {
            return Ok(Vec::new());
        }
        let mut hits: HashMap<SubjectId, usize> = HashMap::new();
        for part in indexes.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT subject_id FROM match_index WHERE domain = $1 AND bidx IN ({})",
                placeholders(2, part.len())
            );
            let mut q =
                sqlx::query_scalar::<_, Vec<u8>>(sqlx::AssertSqlSafe(sql)).bind(domain.to_owned());
            for i in part {
                q = q.bind(*i);
            }
            for s in q.fetch_all(&mut *self.tx).await? {
                *hits
                    .entry(subject_of(&s, "match_index.subject_id")?)
                    .or_default() += 1;
            }
        }
        let mut ranked: Vec<(SubjectId, usize)> = hits.into_iter().collect();
        // Most hits first; ties in subject order, so answers are repeatable.
        ranked.sort_unstable_by(|a, b| {
            b.1.cmp(&a.1)
                .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
        });
        ranked.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(ranked.into_iter().map(|(s, _)| s).collect())
    }

    /// Every `(subject, field code, index)` row of `subjects` in `domain`.
    pub async fn match_rows(
        &mut self,
        domain: &str,
        subjects: &[SubjectId],
    ) -> Result<Vec<(SubjectId, u8, i64)>, StoreError> {
        let mut out = Vec::new();
        for part in subjects.chunks(IN_CHUNK) {
            if part.is_empty() {
                continue;
            }
            let sql = format!(
                "SELECT subject_id, field, bidx FROM match_index WHERE domain = $1 AND subject_id IN ({})",
                placeholders(2, part.len())
            );
            let mut q = sqlx::query_as::<_, (Vec<u8>, i64, i64)>(sqlx::AssertSqlSafe(sql))
                .bind(domain.to_owned());
            for s in part {
                q = q.bind(s.as_bytes().to_vec());
            }
            for (s, f, i) in q.fetch_all(&mut *self.tx).await? {
                let field =
                    u8::try_from(f).map_err(|_| StoreError::Corrupt("match_index.field"))?;
                out.push((subject_of(&s, "match_index.subject_id")?, field, i));
            }
        }
        Ok(out)
    }

    /// `partner`'s pairwise tokens of `subjects` (absent ones left out).
    pub async fn pairwise_tokens(
        &mut self,
        partner: &str,
        subjects: &[SubjectId],
    ) -> Result<HashMap<SubjectId, String>, StoreError> {
        let mut out = HashMap::new();
        for part in subjects.chunks(IN_CHUNK) {
            if part.is_empty() {
                continue;
            }
            let sql = format!(
                "SELECT subject_id, token FROM pairwise_tokens WHERE partner = $1 AND subject_id IN ({})",
                placeholders(2, part.len())
            );
            let mut q = sqlx::query_as::<_, (Vec<u8>, String)>(sqlx::AssertSqlSafe(sql))
                .bind(partner.to_owned());
            for s in part {
                q = q.bind(s.as_bytes().to_vec());
            }
            for (s, t) in q.fetch_all(&mut *self.tx).await? {
                out.insert(subject_of(&s, "pairwise_tokens.subject_id")?, t);
            }
        }
        Ok(out)
    }

    /// Records `partner`'s pairwise token of `subject`. Audited
    /// transactions are serialised by the audit head, so "read, then insert
    /// when absent" cannot race with another writer.
    pub async fn pairwise_insert(
        &mut self,
        partner: &str,
        subject: &SubjectId,
        token: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO pairwise_tokens (partner, subject_id, token) VALUES ($1, $2, $3)")
            .bind(partner.to_owned())
            .bind(subject.as_bytes().to_vec())
            .bind(token.to_owned())
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Forgets domains no longer configured, and their indexes.
    pub async fn match_drop_domains_except(&mut self, keep: &[String]) -> Result<u64, StoreError> {
        // Every domain is recorded here before it gets any row.
        let stored: Vec<String> = sqlx::query_scalar("SELECT domain FROM match_domains")
            .fetch_all(&mut *self.tx)
            .await?;
        let mut removed = 0;
        for d in stored.iter().filter(|d| !keep.contains(d)) {
            removed += sqlx::query("DELETE FROM match_index WHERE domain = $1")
                .bind(d.clone())
                .execute(&mut *self.tx)
                .await?
                .rows_affected();
            sqlx::query("DELETE FROM match_domains WHERE domain = $1")
                .bind(d.clone())
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(removed)
    }
}

impl Store {
    /// Records `domain` as being indexed (`now_ms` 0: backfill under way;
    /// otherwise the time it came to cover every subject). Bookkeeping
    /// only, no personal data. Recording before the backfill means a
    /// domain whose backfill was interrupted is still known, so its rows
    /// are dropped if it leaves the configuration.
    pub async fn mark_match_domain(&self, domain: &str, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO match_domains (domain, indexed_at_ms) VALUES ($1, $2) \
             ON CONFLICT (domain) DO UPDATE SET indexed_at_ms = excluded.indexed_at_ms",
        )
        .bind(domain.to_owned())
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Recorded match domains: `(domain, complete)`.
    pub async fn match_domains(&self) -> Result<Vec<(String, bool)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT domain, indexed_at_ms FROM match_domains ORDER BY domain")
                .fetch_all(self.pool())
                .await?;
        Ok(rows.into_iter().map(|(d, t)| (d, t > 0)).collect())
    }

    /// Up to `limit` subject ids after `after` (all from the start when
    /// `None`), ascending: for paging through every subject.
    pub async fn subject_ids_after(
        &self,
        after: Option<&SubjectId>,
        limit: u32,
    ) -> Result<Vec<SubjectId>, StoreError> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT subject_id FROM subjects WHERE subject_id > $1 ORDER BY subject_id LIMIT $2",
        )
        .bind(after.map_or_else(Vec::new, |s| s.as_bytes().to_vec()))
        .bind(u64_to_i64(u64::from(limit))?)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|s| subject_of(s, "subjects.subject_id"))
            .collect()
    }
}
