//! Blind-matching rows: variant indexes, indexed domains, pairwise tokens.
//!
//! Lists of values go into `IN (…)` with numbered placeholders only; every
//! value is bound (see `lookup_chunk` in the parent module for why the
//! text is formatted by hand).

use std::collections::HashMap;

use sqlx::{Any, Executor};

use super::rows::u64_to_i64;
use super::writeset::{Table, Value};
use super::{AuditedTx, Store, StoreError};
use idvault_core::matching::Candidate;
use idvault_core::rowmac::{self, RowMac};
use idvault_core::subject::SubjectId;

/// A benchmark fixture subject: blocking `(field code, index)` rows,
/// presence mask, signature.
pub type LoadedSubject = (SubjectId, Vec<(u8, i64)>, u16, Vec<u8>);

/// A stored model row: domain, estimate time, bytes, MAC version, MAC.
type ModelRow = (String, i64, Vec<u8>, Option<i64>, Option<Vec<u8>>);

/// One index row to write: `(domain, field code, key version, blind index)`.
pub type MatchRow<'a> = (&'a str, u8, u32, i64);

/// Rows per multi-row INSERT (5 parameters each). Kept small because
/// sqlx's SQLite driver looks every `$n` up by name, at a cost that grows
/// with the square of a statement's parameter count.
const INSERT_CHUNK: usize = 20;
/// Values per `IN (…)` list.
pub(super) const IN_CHUNK: usize = 500;

pub(super) fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn subject_of(bytes: &[u8], col: &'static str) -> Result<SubjectId, StoreError> {
    SubjectId::from_slice(bytes).ok_or(StoreError::Corrupt(col))
}

/// A storage key column (migration 0027) as read.
fn storage_key_of(bytes: &[u8], col: &'static str) -> Result<[u8; 16], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt(col))
}

/// Inserts rows `(domain, subject, field code, key version, index)` of
/// [`BenchLoader`]'s stand-in subjects, each under its id as storage key
/// (as a subject from before migration 0026 is stored).
async fn insert_rows<'e>(
    ex: impl Executor<'e, Database = Any>,
    rows: &[(&str, SubjectId, u8, u32, i64)],
) -> Result<(), StoreError> {
    let values: Vec<String> = (0..rows.len())
        .map(|i| format!("({}, ${})", placeholders(i * 5 + 1, 5), i * 5 + 3))
        .collect();
    // Conflicts are a re-index of the same value (or a 2^-64 chance
    // collision inside one key): the row already says what it would say.
    let sql = format!(
        "INSERT INTO match_index (domain, bidx, subject_id, field, key_version, subject_key) \
         VALUES {} ON CONFLICT DO NOTHING",
        values.join(", ")
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (domain, subject, field, version, bidx) in rows {
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

/// Adds `partner`'s pairwise tokens of at most [`IN_CHUNK`] subjects to
/// `out`, each row's MAC checked (a row that fails it fails the read).
async fn pairwise_chunk<'e>(
    ex: impl Executor<'e, Database = Any>,
    keys: &RowMac,
    partner: &str,
    part: &[SubjectId],
    out: &mut HashMap<SubjectId, String>,
    forged: &mut Vec<SubjectId>,
) -> Result<(), StoreError> {
    if part.is_empty() {
        return Ok(());
    }
    let sql = pairwise_sql(part.len());
    let mut q = sqlx::query_as::<_, (Vec<u8>, String, Option<i64>, Option<Vec<u8>>)>(
        sqlx::AssertSqlSafe(sql),
    )
    .bind(partner.to_owned());
    for s in part {
        q = q.bind(s.as_bytes().to_vec());
    }
    for (s, t, v, mac) in q.fetch_all(ex).await? {
        let subject = subject_of(&s, "pairwise_tokens.subject_id")?;
        match check_pairwise(keys, partner, &subject, &t, v, mac.as_deref()) {
            Ok(()) => {
                out.insert(subject, t);
            }
            // Named, not failed: the caller refuses what rests on it alone.
            Err(StoreError::Forged(_)) => forged.push(subject),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The SQL of [`pairwise_chunk`] over `n` subjects (`$1` the partner):
/// each token sought under its subject's storage key (migration 0028),
/// the id named beside it, so a row a database writer moved under another
/// subject's key answers for nobody.
fn pairwise_sql(n: usize) -> String {
    format!(
        "SELECT t.subject_id, t.token, t.mac_version, t.mac FROM subjects s \
         JOIN pairwise_tokens t ON t.partner = $1 \
         AND t.subject_key = COALESCE(s.subject_key, s.subject_id) AND t.subject_id = s.subject_id \
         WHERE s.subject_id IN ({})",
        placeholders(2, n)
    )
}

/// Pairwise tokens read from the pool ([`Store::pairwise_tokens_of`]).
#[derive(Debug, Default)]
pub struct PairwiseRead {
    /// The tokens whose rows passed their MAC check (absent ones left out).
    pub tokens: HashMap<SubjectId, String>,
    /// Subjects whose token row failed its MAC (forged, or never sealed):
    /// nothing may be answered with them.
    pub forged: Vec<SubjectId>,
}

/// Checks the MAC of a candidate's signature row in `domain`
/// (`rowmac::match_signature`). The lookups read rows without checking
/// them, since most candidates are only scored; each candidate a query
/// answers with is checked before its token is revealed, so an answer
/// never rests on a row the vault did not write as it is (a signature
/// copied onto another subject would name that subject's token).
pub(crate) fn check_signature(
    keys: &RowMac,
    domain: &str,
    c: &Candidate,
) -> Result<(), StoreError> {
    keys.check(
        &rowmac::match_signature(domain, &c.subject, c.present, &c.signature),
        c.mac.version,
        c.mac.mac.as_deref(),
    )?;
    Ok(())
}

/// Checks a pairwise token row's MAC (`rowmac::pairwise_token`).
pub(super) fn check_pairwise(
    keys: &RowMac,
    partner: &str,
    subject: &SubjectId,
    token: &str,
    version: Option<i64>,
    mac: Option<&[u8]>,
) -> Result<(), StoreError> {
    keys.check(
        &rowmac::pairwise_token(partner, subject, token),
        version,
        mac,
    )?;
    Ok(())
}

impl AuditedTx {
    /// `new` when this transaction's pending rows create `subject` (its
    /// plain-insert form, `store/writeset.rs`), else `existing`.
    fn table_for(&self, subject: &SubjectId, existing: Table, new: Table) -> Table {
        if self.pending.creates(subject.as_bytes()) {
            new
        } else {
            existing
        }
    }

    /// Adds the blind indexes of a subject this transaction created or
    /// read by row, under its storage key (migration 0027).
    pub fn match_insert(
        &mut self,
        subject: &SubjectId,
        rows: &[MatchRow<'_>],
    ) -> Result<(), StoreError> {
        let key = self.subject_key(subject)?;
        let table = self.table_for(subject, Table::MatchIndex, Table::NewMatchIndex);
        for (domain, field, version, bidx) in rows {
            self.pending.push(
                table,
                vec![
                    Value::Text((*domain).to_owned()),
                    Value::Int(*bidx),
                    Value::Bytes(subject.as_bytes().to_vec()),
                    Value::Int(i64::from(*field)),
                    Value::Int(i64::from(*version)),
                    Value::Bytes(key.to_vec()),
                ],
            );
        }
        Ok(())
    }

    /// Removes a subject's blind-index rows in every domain (before they
    /// are written again whole; its signatures are overwritten).
    pub async fn match_delete_subject(&mut self, subject: &SubjectId) -> Result<(), StoreError> {
        let key = self.subject_key(subject)?;
        sqlx::query("DELETE FROM match_index WHERE subject_key = $1 AND subject_id = $2")
            .bind(key.to_vec())
            .bind(subject.as_bytes().to_vec())
            .execute(self.conn().await?)
            .await?;
        Ok(())
    }

    /// Removes a subject's blind-index rows in one domain.
    pub async fn match_delete_domain_subject(
        &mut self,
        domain: &str,
        subject: &SubjectId,
    ) -> Result<(), StoreError> {
        let key = self.subject_key(subject)?;
        sqlx::query(
            "DELETE FROM match_index WHERE subject_key = $1 AND domain = $2 AND subject_id = $3",
        )
        .bind(key.to_vec())
        .bind(domain.to_owned())
        .bind(subject.as_bytes().to_vec())
        .execute(self.conn().await?)
        .await?;
        Ok(())
    }

    /// Sets `subject`'s presence mask and signature in each domain of
    /// `by_domain` `(domain, mask, signature)`, in one statement, each row
    /// with its MAC (`rowmac::match_signature`), under its storage key (a
    /// subject this transaction created or read by row).
    pub fn match_set_subject(
        &mut self,
        subject: &SubjectId,
        by_domain: &[(&str, u16, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let key = self.subject_key(subject)?;
        let keys = self.store.row_keys()?;
        let table = self.table_for(subject, Table::MatchSubjects, Table::NewMatchSubjects);
        for (domain, present, signature) in by_domain {
            let (v, mac) = super::seal_row(
                &keys,
                &rowmac::match_signature(domain, subject, *present, signature),
            );
            self.pending.push(
                table,
                vec![
                    Value::Text((*domain).to_owned()),
                    Value::Bytes(subject.as_bytes().to_vec()),
                    Value::Int(i64::from(*present)),
                    Value::Bytes(signature.clone()),
                    Value::Int(v),
                    Value::Bytes(mac),
                    Value::Bytes(key.to_vec()),
                ],
            );
        }
        Ok(())
    }

    /// `partner`'s pairwise tokens of `subjects` (absent ones left out).
    pub async fn pairwise_tokens(
        &mut self,
        partner: &str,
        subjects: &[SubjectId],
    ) -> Result<HashMap<SubjectId, String>, StoreError> {
        let keys = self.store.row_keys()?;
        let mut out = HashMap::new();
        let mut forged = Vec::new();
        for part in subjects.chunks(IN_CHUNK) {
            pairwise_chunk(
                self.conn().await?,
                &keys,
                partner,
                part,
                &mut out,
                &mut forged,
            )
            .await?;
        }
        if !forged.is_empty() {
            return Err(StoreError::Forged("pairwise-token"));
        }
        Ok(out)
    }

    /// Records `partner`'s pairwise tokens `(subject, token)` where it has
    /// none yet and the subject exists when the write is applied: a
    /// concurrent match may have made one first, and the subject may have
    /// been deleted since the caller read it. Read back whichever was
    /// stored, if any (in the same transaction with
    /// [`Self::pairwise_tokens`], or after the commit).
    /// Each row carries its MAC (`rowmac::pairwise_token`).
    pub fn pairwise_insert(
        &mut self,
        partner: &str,
        tokens: &[(SubjectId, String)],
    ) -> Result<(), StoreError> {
        let keys = self.store.row_keys()?;
        for (subject, token) in tokens {
            let (v, mac) = super::seal_row(&keys, &rowmac::pairwise_token(partner, subject, token));
            let table = self.table_for(subject, Table::Pairwise, Table::NewPairwise);
            let mut row = vec![
                Value::Bytes(subject.as_bytes().to_vec()),
                Value::Text(partner.to_owned()),
                Value::Text(token.clone()),
                Value::Int(v),
                Value::Bytes(mac),
            ];
            // A subject this transaction creates has its storage key here;
            // any other's is read from its row by the statement
            // (migration 0028).
            if table == Table::NewPairwise {
                row.push(Value::Bytes(self.subject_key(subject)?.to_vec()));
            }
            self.pending.push(table, row);
        }
        Ok(())
    }

    /// Drops up to `limit` index rows and up to `limit` signatures of
    /// `domain` (before it is indexed again under a newer scheme, or once
    /// it is no longer configured); returns how many of each it dropped.
    /// Called until both are under `limit`: a domain of millions of
    /// subjects dropped in one transaction would hold the writer for
    /// minutes and journal every page it changes at once (SQLite's
    /// sub-journal is in memory).
    pub async fn match_clear_domain_part(
        &mut self,
        domain: &str,
        limit: u32,
    ) -> Result<(u64, u64), StoreError> {
        let index = sqlx::query(
            "DELETE FROM match_index WHERE (domain, bidx, subject_id) IN \
             (SELECT domain, bidx, subject_id FROM match_index WHERE domain = $1 LIMIT $2)",
        )
        .bind(domain.to_owned())
        .bind(i64::from(limit))
        .execute(self.conn().await?)
        .await?
        .rows_affected();
        let signatures = sqlx::query(
            "DELETE FROM match_subjects WHERE (domain, subject_key, subject_id) IN \
             (SELECT domain, subject_key, subject_id FROM match_subjects \
              WHERE domain = $1 LIMIT $2)",
        )
        .bind(domain.to_owned())
        .bind(i64::from(limit))
        .execute(self.conn().await?)
        .await?
        .rows_affected();
        Ok((index, signatures))
    }

    /// Forgets `domain` (no longer configured) once its rows are dropped
    /// ([`Self::match_clear_domain_part`]).
    pub async fn match_forget_domain(&mut self, domain: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM match_domains WHERE domain = $1")
            .bind(domain.to_owned())
            .execute(self.conn().await?)
            .await?;
        Ok(())
    }

    /// Stores `domain`'s learned weights (replacing older ones), sealed
    /// with the row MAC.
    pub async fn match_model_put(
        &mut self,
        domain: &str,
        estimated_at_ms: i64,
        model: &[u8],
    ) -> Result<(), StoreError> {
        let row = idvault_core::rowmac::match_model(domain, estimated_at_ms, model);
        let (v, mac) = super::seal_row(&*self.store.row_keys()?, &row);
        sqlx::query("DELETE FROM match_models WHERE domain = $1")
            .bind(domain.to_owned())
            .execute(self.conn().await?)
            .await?;
        sqlx::query(
            "INSERT INTO match_models (domain, estimated_at_ms, model, mac_version, mac) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(domain.to_owned())
        .bind(estimated_at_ms)
        .bind(model.to_vec())
        .bind(v)
        .bind(mac)
        .execute(self.conn().await?)
        .await?;
        Ok(())
    }
}

impl Store {
    /// The candidates of one query in one round trip, from the pool (not
    /// through the writer): the at most `limit` subjects of `domain` with
    /// the highest rank over the `blocking` `(index, gain)` pairs, with
    /// their presence masks and signatures, best ranked first; and
    /// `partner`'s pairwise token of each one (`None`: it has none).
    pub async fn match_candidates(
        &self,
        domain: &str,
        partner: &str,
        blocking: &[(i64, f64)],
        limit: u32,
    ) -> Result<(Vec<Candidate>, HashMap<SubjectId, Option<String>>), StoreError> {
        candidates(
            self.pool(),
            &*self.row_keys()?,
            domain,
            partner,
            blocking,
            limit,
        )
        .await
    }

    /// The ranks of one query's candidates, without their signatures,
    /// from the pool; see [`ranks`].
    pub async fn match_ranks(
        &self,
        domain: &str,
        blocking: &[(i64, f64)],
        limit: u32,
    ) -> Result<Vec<Ranked>, StoreError> {
        ranks(self.pool(), domain, blocking, limit).await
    }

    /// The signatures of ranked candidates (at most [`IN_CHUNK`]), from
    /// the pool, as candidates in the order given; see [`signatures`].
    pub async fn match_signatures(
        &self,
        domain: &str,
        ranked: &[Ranked],
    ) -> Result<Vec<Candidate>, StoreError> {
        signatures(self.pool(), domain, ranked).await
    }

    /// The candidates of a query's wide compound keys, from the pool, with
    /// their signatures, each key read up to [`WIDE_KEY_CAP`] subjects
    /// (see [`wide_candidates`]).
    pub async fn match_wide_candidates(
        &self,
        domain: &str,
        wide: &[(i64, f64)],
        limit: u32,
    ) -> Result<Vec<Candidate>, StoreError> {
        wide_candidates(self.pool(), domain, wide, limit).await
    }

    /// `partner`'s pairwise tokens of `subjects` (absent ones left out),
    /// from the pool. A row that fails its MAC is named in
    /// [`PairwiseRead::forged`] rather than failing the read, so a batch
    /// refuses only the queries that would answer with that subject.
    pub async fn pairwise_tokens_of(
        &self,
        partner: &str,
        subjects: &[SubjectId],
    ) -> Result<PairwiseRead, StoreError> {
        let keys = self.row_keys()?;
        let mut out = PairwiseRead::default();
        let mut conn = self.pool().acquire().await?;
        for part in subjects.chunks(IN_CHUNK) {
            pairwise_chunk(
                &mut *conn,
                &keys,
                partner,
                part,
                &mut out.tokens,
                &mut out.forged,
            )
            .await?;
        }
        Ok(out)
    }

    /// A loader of benchmark fixtures (`idvault bench match` fills a
    /// scratch vault with it); see [`BenchLoader`].
    pub async fn bench_loader(
        &self,
        domain: &str,
        version: u32,
    ) -> Result<BenchLoader, StoreError> {
        // Detached from the pool at once, whether the load completes or
        // not: see [`BenchLoader::finish`].
        let mut conn = self.pool().acquire().await?.detach();
        let sqlite = self.backend() == super::Backend::Sqlite;
        if sqlite {
            // One transaction for the whole load, held in memory: each
            // commit of a big random-keyed index otherwise rewrites most
            // of its pages.
            sqlx::query("PRAGMA cache_size = -6291456")
                .execute(&mut conn)
                .await?;
            // Multi-row inserts keep a statement journal; in memory, not a
            // temporary file.
            sqlx::query("PRAGMA temp_store = MEMORY")
                .execute(&mut conn)
                .await?;
        }
        sqlx::query("BEGIN").execute(&mut conn).await?;
        Ok(BenchLoader {
            conn,
            store: self.clone(),
            domain: domain.to_owned(),
            version,
            sqlite,
        })
    }

    /// Records `domain` as being indexed under index `scheme` (`now_ms` 0:
    /// backfill under way; otherwise the time it came to cover every
    /// subject). Bookkeeping only, no personal data. Recording before the
    /// backfill means a domain whose backfill was interrupted is still
    /// known, so its rows are dropped if it leaves the configuration.
    pub async fn mark_match_domain(
        &self,
        domain: &str,
        now_ms: i64,
        scheme: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO match_domains (domain, indexed_at_ms, scheme) VALUES ($1, $2, $3) \
             ON CONFLICT (domain) DO UPDATE SET indexed_at_ms = excluded.indexed_at_ms, \
             scheme = excluded.scheme",
        )
        .bind(domain.to_owned())
        .bind(now_ms)
        .bind(scheme)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Recorded match domains: `(domain, complete, index scheme)`.
    pub async fn match_domains(&self) -> Result<Vec<(String, bool, i64)>, StoreError> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT domain, indexed_at_ms, scheme FROM match_domains ORDER BY domain",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|(d, t, s)| (d, t > 0, s)).collect())
    }

    /// Up to `limit` signatures of `domain`'s subjects, drawn at random
    /// (for estimating its weights), each row's MAC checked: weights
    /// learned from rows a database writer made would decide matches. Only
    /// rows under their subject's own storage key, of a subject that
    /// exists, and one per subject: the MAC does not cover the storage
    /// key, so a writer could otherwise copy one genuine row under many
    /// made-up keys (or leave a deleted subject's) and have it counted
    /// many times, skewing the learned weights and the value frequencies.
    pub async fn match_signature_sample(
        &self,
        domain: &str,
        limit: u32,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let keys = self.row_keys()?;
        let rows: Vec<SignatureRow> = sqlx::query_as(
            "SELECT m.subject_id, m.fields, m.signature, m.mac_version, m.mac \
             FROM match_subjects m JOIN subjects s ON s.subject_id = m.subject_id \
             WHERE m.domain = $1 AND COALESCE(s.subject_key, s.subject_id) = m.subject_key \
             ORDER BY random() LIMIT $2",
        )
        .bind(domain.to_owned())
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        let mut seen = std::collections::HashSet::with_capacity(rows.len());
        let mut out = Vec::with_capacity(rows.len());
        for (s, mask, signature, v, mac) in rows {
            let c = candidate(
                subject_of(&s, "match_subjects.subject_id")?,
                mask,
                signature,
                (v, mac),
                0.0,
            )?;
            check_signature(&keys, domain, &c)?;
            if seen.insert(c.subject) {
                out.push(c.signature);
            }
        }
        Ok(out)
    }

    /// Every stored model `(domain, estimated at, bytes)`, each checked
    /// against its row MAC: a row that fails is reported as `Err` in its
    /// place (it must not set any weight).
    pub async fn match_models(
        &self,
    ) -> Result<Vec<(String, Result<(i64, Vec<u8>), StoreError>)>, StoreError> {
        let keys = self.row_keys()?;
        let rows: Vec<ModelRow> = sqlx::query_as(
            "SELECT domain, estimated_at_ms, model, mac_version, mac FROM match_models ORDER BY domain",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(domain, at, model, v, mac)| {
                let row = idvault_core::rowmac::match_model(&domain, at, &model);
                let checked = keys
                    .check(&row, v, mac.as_deref())
                    .map(|()| (at, model))
                    .map_err(StoreError::from);
                (domain, checked)
            })
            .collect())
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

/// Writes `(subject, field code, index)` rows of one domain and key version
/// in a single unaudited transaction, for benchmark fixtures only.
#[derive(Debug)]
pub struct BenchLoader {
    /// Its own connection, never returned to the pool: SQLite never
    /// shrinks a cache's hash table, and a connection that held gigabytes
    /// of pages would scan millions of empty buckets each time another
    /// connection's commit makes it drop its cache (milliseconds per read
    /// transaction).
    conn: sqlx::AnyConnection,
    store: Store,
    domain: String,
    version: u32,
    sqlite: bool,
}

impl BenchLoader {
    /// Adds subjects: each with its blocking `(field code, index)` rows
    /// (sorted here by index, so inserts land near each other), presence
    /// mask and signature.
    pub async fn load(&mut self, subjects: &[LoadedSubject]) -> Result<(), StoreError> {
        let mut rows: Vec<_> = subjects
            .iter()
            .flat_map(|(s, rows, _, _)| {
                rows.iter()
                    .map(|(f, i)| (self.domain.as_str(), *s, *f, self.version, *i))
            })
            .collect();
        rows.sort_unstable_by_key(|r| r.4);
        for part in rows.chunks(INSERT_CHUNK) {
            insert_rows(&mut self.conn, part).await?;
        }
        let mut order: Vec<&LoadedSubject> = subjects.iter().collect();
        order.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let keys = self.store.row_keys()?;
        for part in order.chunks(INSERT_CHUNK) {
            // The id as storage key, as for the stand-in subject rows below.
            let values: Vec<String> = (0..part.len())
                .map(|i| format!("({}, ${})", placeholders(i * 6 + 1, 6), i * 6 + 2))
                .collect();
            let sql = format!(
                "INSERT INTO match_subjects (domain, subject_id, fields, signature, mac_version, \
                 mac, subject_key) VALUES {}",
                values.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (s, _, mask, sig) in part {
                let (v, mac) =
                    super::seal_row(&keys, &rowmac::match_signature(&self.domain, s, *mask, sig));
                q = q
                    .bind(self.domain.clone())
                    .bind(s.as_bytes().to_vec())
                    .bind(i64::from(*mask))
                    .bind(sig.clone())
                    .bind(v)
                    .bind(mac);
            }
            q.execute(&mut self.conn).await?;
            // A stand-in subject row for each (no data key, no packets):
            // Match answers only subjects that exist.
            let values: Vec<String> = (0..part.len())
                .map(|i| format!("(${}, 'bench-loader', $1, 0, 0, $2, 0, 0)", i + 3))
                .collect();
            let sql = format!(
                "INSERT INTO subjects (subject_id, created_by, wrapped_dek, kek_version, head_seq, \
                 head_hash, created_at_ms, updated_at_ms) VALUES {} ON CONFLICT (subject_id) DO NOTHING",
                values.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(Vec::<u8>::new())
                .bind(vec![0u8; 32]);
            for (s, _, _, _) in part {
                q = q.bind(s.as_bytes().to_vec());
            }
            q.execute(&mut self.conn).await?;
        }
        Ok(())
    }

    /// Commits and closes the connection.
    pub async fn finish(mut self) -> Result<(), StoreError> {
        sqlx::query("COMMIT").execute(&mut self.conn).await?;
        sqlx::Connection::close(self.conn).await?;
        if self.sqlite && !self.store.truncate_wal().await? {
            // Reads then look pages up in a multi-gigabyte WAL index until
            // the checkpoint task catches up: slower, not wrong.
            tracing::warn!("the loaded fixtures stay in the WAL for now (a reader held it)");
        }
        Ok(())
    }
}

/// A candidate row with the partner's pairwise token row, if any:
/// subject, presence mask, signature, its MAC version and MAC, rank,
/// token, its MAC version and MAC.
type CandidateWithToken = (
    Vec<u8>,
    i64,
    Vec<u8>,
    Option<i64>,
    Option<Vec<u8>>,
    f64,
    Option<String>,
    Option<i64>,
    Option<Vec<u8>>,
);

/// The candidates of one query in one round trip: the at most `limit`
/// subjects of `domain` with the highest rank, with their presence masks
/// and signatures, best first. A subject's rank is, over the fields (and
/// compound keys) of its rows among `blocking`, the sum of each one's best
/// gain: a national id hit through its exact form and through its one-edit
/// neighbours counts once.
///
/// `partner`'s pairwise tokens of the candidates come in the same read
/// (`None`: the candidate has none), so that answering them needs no read
/// before the commit (a first answer still reads back the stored token
/// after it): a query's answer is nearly always among them, and each read
/// from the pool costs a hand-off to a connection's thread and back, more
/// than the join. A token whose row fails its MAC is left out of the map,
/// as if not read.
pub(super) async fn candidates<'e>(
    ex: impl sqlx::Executor<'e, Database = sqlx::Any>,
    keys: &RowMac,
    domain: &str,
    partner: &str,
    blocking: &[(i64, f64)],
    limit: u32,
) -> Result<(Vec<Candidate>, HashMap<SubjectId, Option<String>>), StoreError> {
    if blocking.is_empty() {
        return Ok((Vec::new(), HashMap::new()));
    }
    let sql = candidates_sql(blocking.len(), limit);
    let q = sqlx::query_as::<_, CandidateWithToken>(sqlx::AssertSqlSafe(sql));
    let rows = bind_ranking(q, domain, blocking)
        .bind(partner.to_owned())
        .fetch_all(ex)
        .await?;
    let mut tokens = HashMap::new();
    let mut out = Vec::with_capacity(rows.len());
    for (s, mask, signature, sv, smac, gain, token, v, mac) in rows {
        let subject = subject_of(&s, "match_subjects.subject_id")?;
        match &token {
            Some(t) => match check_pairwise(keys, partner, &subject, t, v, mac.as_deref()) {
                Ok(()) => {
                    tokens.insert(subject, token);
                }
                // Left unknown rather than failing the lookup: the answer
                // reads it again (`Store::pairwise_tokens_of`), and only a
                // query answering with this subject is refused. A
                // candidate that is merely scored refuses nothing.
                Err(StoreError::Forged(_)) => {}
                Err(e) => return Err(e),
            },
            None => {
                tokens.insert(subject, None);
            }
        }
        out.push(candidate(subject, mask, signature, (sv, smac), gain)?);
    }
    Ok((out, tokens))
}

/// The SQL of [`candidates`] over `n` blocking keys: the ranking's
/// placeholders run to $(1 + 2n); the partner comes next. Each ranked
/// subject's signature row is sought by its full primary key, the storage
/// key carried from the blocking row (migration 0027).
fn candidates_sql(n: usize, limit: u32) -> String {
    format!(
        "SELECT s.subject_id, s.fields, s.signature, s.mac_version, s.mac, c.g, \
         t.token, t.mac_version, t.mac FROM match_subjects s \
         JOIN ({}) c ON c.subject_key = s.subject_key AND c.subject_id = s.subject_id \
         LEFT JOIN pairwise_tokens t ON t.partner = ${} AND t.subject_key = s.subject_key \
         AND t.subject_id = s.subject_id \
         WHERE s.domain = $1 ORDER BY c.g DESC, s.subject_id",
        ranking_sql(n, limit),
        2 + 2 * n,
    )
}

/// Most subjects read per blocking key of the first lookup
/// ([`ranking_sql`]). A blocking key is held by few people in real data
/// (an identifier, a date of birth: about 27 people per date at 1,000,000
/// subjects), but a value can be common by accident (a placeholder date,
/// a care home's address) or on purpose (a partner creating many people
/// with one value): without a cap, every query with that value would group
/// every row holding it, on the reader connections all partners share,
/// in time proportional to their number. With it a query reads at most
/// this many rows per key (in index order), like the wide keys'
/// [`WIDE_KEY_CAP`]; a duplicate beyond the cap of a crowded key is found
/// through its other keys.
pub(super) const BLOCKING_KEY_CAP: u32 = 1024;

/// The ranking of [`candidates`] and [`ranks`]: `(subject_id, subject_key,
/// g)`, the at most `limit` subjects of domain `$1` with the highest rank
/// over `n` blocking indexes, best first (the storage key comes along to
/// find the signature row by, migration 0027): for each field, the gain
/// of its best key the subject holds, summed over fields. Each key is one sub-select on
/// the (domain, bidx) key capped at [`BLOCKING_KEY_CAP`] subjects, with
/// its gain beside it. Only placeholders and integer constants are
/// formatted in; [`bind_ranking`] binds the placeholders: the domain,
/// then each key's index and gain.
///
/// The limit is written into the text, not bound: SQLite reads a bound
/// `LIMIT` when it plans a statement, so each new binding of it marks the
/// statement expired and its next step parses and plans the whole query
/// again (`sqlite3Reprepare`), about a seventh of the vault's CPU under a
/// Match load. As a literal, one cached statement serves each
/// (n, limit), and the limits are a few constants.
fn ranking_sql(n: usize, limit: u32) -> String {
    // SQLite allows no ORDER BY or LIMIT on a member of a compound
    // SELECT, hence each capped read in a sub-select of its own.
    let parts: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "SELECT k{i}.subject_id, k{i}.subject_key, k{i}.field, \
                 CAST(${} AS DOUBLE PRECISION) AS g FROM \
                 (SELECT subject_id, subject_key, field FROM match_index \
                  WHERE domain = $1 AND bidx = ${} \
                  ORDER BY subject_id LIMIT {BLOCKING_KEY_CAP}) k{i}",
                3 + 2 * i,
                2 + 2 * i
            )
        })
        .collect();
    format!(
        "SELECT h.subject_id, h.subject_key, SUM(h.g) AS g FROM \
           (SELECT u.subject_id, u.subject_key, u.field, MAX(u.g) AS g FROM ({}) u \
            GROUP BY u.subject_id, u.subject_key, u.field) h \
         GROUP BY h.subject_id, h.subject_key \
         ORDER BY SUM(h.g) DESC, h.subject_id LIMIT {limit}",
        parts.join(" UNION ALL "),
    )
}

/// Binds [`ranking_sql`]'s parameters, in its order.
fn bind_ranking<'q, O>(
    mut q: sqlx::query::QueryAs<'q, Any, O, sqlx::any::AnyArguments>,
    domain: &str,
    blocking: &[(i64, f64)],
) -> sqlx::query::QueryAs<'q, Any, O, sqlx::any::AnyArguments> {
    q = q.bind(domain.to_owned());
    for (b, g) in blocking {
        q = q.bind(*b).bind(*g);
    }
    q
}

/// A candidate ranked without its signature ([`ranks`]): the subject,
/// its rank, and the storage key its signature row is found by, which
/// stays inside the store (its `Debug` leaves it out).
#[derive(Clone, Copy)]
pub struct Ranked {
    /// The subject.
    pub subject: SubjectId,
    /// Its rank over the query's blocking keys.
    pub gain: f64,
    key: [u8; 16],
}

impl std::fmt::Debug for Ranked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ranked")
            .field("subject", &self.subject)
            .field("gain", &self.gain)
            .finish_non_exhaustive()
    }
}

/// The ranks of one query's candidates, without their signatures: the at
/// most `limit` subjects of `domain` ranked highest by [`candidates`],
/// best first. Read when the first candidates do not settle a query, to
/// read the signatures of the others ([`signatures`]) in parts side by
/// side.
pub(super) async fn ranks<'e>(
    ex: impl sqlx::Executor<'e, Database = sqlx::Any>,
    domain: &str,
    blocking: &[(i64, f64)],
    limit: u32,
) -> Result<Vec<Ranked>, StoreError> {
    if blocking.is_empty() {
        return Ok(Vec::new());
    }
    let sql = ranking_sql(blocking.len(), limit);
    let q = sqlx::query_as::<_, (Vec<u8>, Vec<u8>, f64)>(sqlx::AssertSqlSafe(sql));
    bind_ranking(q, domain, blocking)
        .fetch_all(ex)
        .await?
        .into_iter()
        .map(|(s, key, gain)| {
            Ok(Ranked {
                subject: subject_of(&s, "match_index.subject_id")?,
                gain,
                key: storage_key_of(&key, "match_index.subject_key")?,
            })
        })
        .collect()
}

/// The presence masks and signatures of `ranked` subjects of `domain`
/// (at most [`IN_CHUNK`]), as candidates in the order given; a subject
/// without a signature row under its key (deleted meanwhile) is left out.
pub(super) async fn signatures<'e>(
    ex: impl sqlx::Executor<'e, Database = sqlx::Any>,
    domain: &str,
    ranked: &[Ranked],
) -> Result<Vec<Candidate>, StoreError> {
    debug_assert!(ranked.len() <= IN_CHUNK, "one IN list per call");
    if ranked.is_empty() {
        return Ok(Vec::new());
    }
    let sql = signatures_sql(ranked.len());
    let mut q =
        sqlx::query_as::<_, KeyedSignatureRow>(sqlx::AssertSqlSafe(sql)).bind(domain.to_owned());
    for r in ranked {
        q = q.bind(r.key.to_vec());
    }
    let mut found: HashMap<(SubjectId, [u8; 16]), SignatureFields> =
        HashMap::with_capacity(ranked.len());
    for (s, key, mask, signature, v, mac) in q.fetch_all(ex).await? {
        found.insert(
            (
                subject_of(&s, "match_subjects.subject_id")?,
                storage_key_of(&key, "match_subjects.subject_key")?,
            ),
            (mask, signature, (v, mac)),
        );
    }
    ranked
        .iter()
        .filter_map(|r| {
            found
                .remove(&(r.subject, r.key))
                .map(|(mask, signature, mac)| candidate(r.subject, mask, signature, mac, r.gain))
        })
        .collect()
}

/// The SQL of [`signatures`] for `n` subjects: by key, the primary key's
/// second column (the domain `$1` its first); each row's id is then
/// matched to the one ranked under that key. Not by `(key, id)` pairs:
/// SQLite seeks a row value `IN (VALUES …)` by the domain alone (a scan
/// of it), and a second `IN` list by every key and id combination. A key
/// holds one row of a domain; the limit (a literal, as at
/// [`ranking_sql`]) bounds what rows a database writer piled under one
/// key could make a lookup read.
fn signatures_sql(n: usize) -> String {
    format!(
        "SELECT subject_id, subject_key, fields, signature, mac_version, mac \
         FROM match_subjects WHERE domain = $1 AND subject_key IN ({}) LIMIT {}",
        placeholders(2, n),
        2 * n
    )
}

/// Most subjects read per wide compound key (`QueryPlan::wide`): a key
/// shared by more people than this (a common name pair) is too common to
/// select candidates, and reading all of it would let one query scan a
/// large share of the vault.
pub(super) const WIDE_KEY_CAP: u32 = 256;

/// [`candidates`] over wide compound keys: each key contributes at most
/// [`WIDE_KEY_CAP`] subjects (in index order), each with the key's gain.
pub(super) async fn wide_candidates<'e>(
    ex: impl sqlx::Executor<'e, Database = sqlx::Any>,
    domain: &str,
    wide: &[(i64, f64)],
    limit: u32,
) -> Result<Vec<Candidate>, StoreError> {
    if wide.is_empty() {
        return Ok(Vec::new());
    }
    let sql = wide_sql(wide.len(), limit);
    let mut q = sqlx::query_as::<_, CandidateRow>(sqlx::AssertSqlSafe(sql)).bind(domain.to_owned());
    for (b, g) in wide {
        q = q.bind(*b).bind(*g);
    }
    candidate_rows(q.fetch_all(ex).await?)
}

/// The SQL of [`wide_candidates`] over `n` wide keys: domain `$1`, then
/// each key's index and gain. The limits are literals for the reason given
/// at [`ranking_sql`].
fn wide_sql(n: usize, limit: u32) -> String {
    // One capped sub-select per key; compound keys are distinct fields,
    // so a subject's gains add up across keys.
    let parts: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "SELECT w{i}.subject_id, w{i}.subject_key, CAST(${} AS DOUBLE PRECISION) AS g \
                 FROM (SELECT subject_id, subject_key FROM match_index \
                  WHERE domain = $1 AND bidx = ${} \
                  ORDER BY subject_id LIMIT {WIDE_KEY_CAP}) w{i}",
                3 + 2 * i,
                2 + 2 * i
            )
        })
        .collect();
    format!(
        "SELECT s.subject_id, s.fields, s.signature, s.mac_version, s.mac, c.g \
         FROM match_subjects s \
         JOIN (SELECT u.subject_id, u.subject_key, SUM(u.g) AS g FROM ({}) u \
           GROUP BY u.subject_id, u.subject_key \
           ORDER BY SUM(u.g) DESC, u.subject_id LIMIT {limit}) c \
         ON c.subject_key = s.subject_key AND c.subject_id = s.subject_id \
         WHERE s.domain = $1 ORDER BY c.g DESC, s.subject_id",
        parts.join(" UNION ALL "),
    )
}

/// A stored MAC's `(mac_version, mac)` columns.
type StoredMacRow = (Option<i64>, Option<Vec<u8>>);

/// A signature row: subject, presence mask, signature, MAC version, MAC.
type SignatureRow = (Vec<u8>, i64, Vec<u8>, Option<i64>, Option<Vec<u8>>);

/// A signature row's presence mask, signature and MAC columns.
type SignatureFields = (i64, Vec<u8>, StoredMacRow);

/// A signature row with its storage key after the subject.
type KeyedSignatureRow = (Vec<u8>, Vec<u8>, i64, Vec<u8>, Option<i64>, Option<Vec<u8>>);

/// A candidate row: subject, presence mask, signature, MAC version, MAC,
/// rank.
type CandidateRow = (Vec<u8>, i64, Vec<u8>, Option<i64>, Option<Vec<u8>>, f64);

/// Candidate rows as read.
fn candidate_rows(rows: Vec<CandidateRow>) -> Result<Vec<Candidate>, StoreError> {
    rows.into_iter()
        .map(|(s, mask, signature, v, mac, gain)| {
            candidate(
                subject_of(&s, "match_subjects.subject_id")?,
                mask,
                signature,
                (v, mac),
                gain,
            )
        })
        .collect()
}

fn candidate(
    subject: SubjectId,
    mask: i64,
    signature: Vec<u8>,
    (version, mac): StoredMacRow,
    gain: f64,
) -> Result<Candidate, StoreError> {
    Ok(Candidate {
        subject,
        present: u16::try_from(mask).map_err(|_| StoreError::Corrupt("match_subjects.fields"))?,
        signature,
        gain,
        mac: rowmac::StoredMac { version, mac },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bound LIMIT makes SQLite plan the statement again at every call
    /// (see `ranking_sql`); the match lookups write theirs into the text.
    #[test]
    fn match_lookups_do_not_bind_their_limits() {
        for sql in [ranking_sql(3, 8), wide_sql(2, 64)] {
            assert!(!sql.contains("LIMIT $"), "{sql}");
        }
        assert!(ranking_sql(3, 8).ends_with("LIMIT 8"));
        assert!(wide_sql(2, 64).contains("LIMIT 64)"));
        // Placeholders are numbered from $1 without a gap (domain, then
        // (index, gain) pairs: 1 + 2n for the ranking and for the wide
        // keys), and exactly that many values are bound: a
        // short bind count would bind NULLs on SQLite and find nothing.
        let has = |sql: &str, i: usize| {
            let p = format!("${i}");
            sql.match_indices(&p).any(|(at, _)| {
                !sql.get(at + p.len()..)
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            })
        };
        let blocking = [(11, 0.5), (12, 1.5), (13, 2.5)];
        let sql = ranking_sql(blocking.len(), 8);
        assert!((1..=7).all(|i| has(&sql, i)), "{sql}");
        assert!(!has(&sql, 8), "{sql}");
        assert_eq!(
            sql.matches(&format!("LIMIT {BLOCKING_KEY_CAP})")).count(),
            blocking.len(),
            "each key capped: {sql}"
        );
        let mut q = bind_ranking(
            sqlx::query_as::<_, (Vec<u8>, Vec<u8>, f64)>(sqlx::AssertSqlSafe(sql)),
            "d",
            &blocking,
        );
        let bound = sqlx::Execute::take_arguments(&mut q)
            .expect("arguments")
            .expect("some arguments");
        assert_eq!(sqlx::Arguments::len(&bound), 7);
        let sql = wide_sql(2, 64);
        assert!((1..=5).all(|i| has(&sql, i)), "{sql}");
        assert!(!has(&sql, 6), "{sql}");
    }

    /// The lookups reach a candidate's signature row by its whole primary
    /// key, the storage key carried from its blocking row (migration
    /// 0027), never by a scan of the domain; and a partner's pairwise
    /// tokens by their whole key, under the storage key (migration 0028).
    #[tokio::test]
    async fn signature_rows_are_sought_by_storage_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("v.db").display());
        let store = super::super::Store::connect(&url).await.expect("connect");
        let plan = async |sql: String, binds: usize| {
            let mut q = sqlx::query_as::<_, (i64, i64, i64, String)>(sqlx::AssertSqlSafe(format!(
                "EXPLAIN QUERY PLAN {sql}"
            )));
            for i in 0..binds {
                q = q.bind(i64::try_from(i).expect("small"));
            }
            let rows = q.fetch_all(store.pool()).await.expect("plan");
            rows.into_iter().map(|(_, _, _, d)| d).collect::<Vec<_>>()
        };
        for (sql, binds, seek) in [
            (
                candidates_sql(2, 8),
                6,
                "SEARCH s USING PRIMARY KEY (domain=? AND subject_key=? AND subject_id=?)",
            ),
            (
                wide_sql(2, 8),
                5,
                "SEARCH s USING PRIMARY KEY (domain=? AND subject_key=? AND subject_id=?)",
            ),
            (
                signatures_sql(3),
                4,
                "SEARCH match_subjects USING PRIMARY KEY (domain=? AND subject_key=?)",
            ),
            (
                candidates_sql(2, 8),
                6,
                "SEARCH t USING INDEX pairwise_tokens_key (partner=? AND subject_key=? AND subject_id=?)",
            ),
            (
                pairwise_sql(3),
                4,
                "SEARCH t USING INDEX pairwise_tokens_key (partner=? AND subject_key=? AND subject_id=?)",
            ),
        ] {
            let steps = plan(sql, binds).await;
            // A left join says so after the step.
            assert!(
                steps
                    .iter()
                    .any(|d| d.strip_suffix(" LEFT-JOIN").unwrap_or(d) == seek),
                "{steps:?}"
            );
            assert!(
                !steps
                    .iter()
                    .any(|d| d.starts_with("SCAN match_") || d.starts_with("SCAN t")),
                "{steps:?}"
            );
        }
        store.close().await;
    }

    /// A key held by more subjects than [`BLOCKING_KEY_CAP`] reads only
    /// that many of them, and a subject beyond the cap is still ranked
    /// through its other keys.
    #[tokio::test]
    async fn a_crowded_blocking_key_reads_at_most_its_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("v.db").display());
        let store = super::super::Store::connect(&url).await.expect("connect");
        let crowd = BLOCKING_KEY_CAP as usize + 100;
        let mut conn = store.pool().acquire().await.expect("conn");
        sqlx::query("BEGIN")
            .execute(&mut *conn)
            .await
            .expect("begin");
        for i in 0..crowd {
            // Big-endian: index order is creation order.
            let mut id = [0u8; 16];
            id[12..].copy_from_slice(&u32::try_from(i).expect("small").to_be_bytes());
            sqlx::query(
                "INSERT INTO match_index (domain, bidx, subject_id, field, key_version, \
                 subject_key) VALUES ('d', 7, $1, 2, 1, $1)",
            )
            .bind(id.to_vec())
            .execute(&mut *conn)
            .await
            .expect("index row");
        }
        // The last of the crowd also holds a key of its own.
        let mut last = [0u8; 16];
        last[12..].copy_from_slice(&u32::try_from(crowd - 1).expect("small").to_be_bytes());
        sqlx::query(
            "INSERT INTO match_index (domain, bidx, subject_id, field, key_version, \
             subject_key) VALUES ('d', 9, $1, 5, 1, $1)",
        )
        .bind(last.to_vec())
        .execute(&mut *conn)
        .await
        .expect("index row");
        sqlx::query("COMMIT")
            .execute(&mut *conn)
            .await
            .expect("commit");
        drop(conn);

        let limit = u32::try_from(crowd).expect("small");
        let one = store
            .match_ranks("d", &[(7, 1.0)], limit)
            .await
            .expect("ranks");
        assert_eq!(one.len(), BLOCKING_KEY_CAP as usize);
        assert!(one.iter().all(|r| r.subject.as_bytes() != &last));

        let both = store
            .match_ranks("d", &[(7, 1.0), (9, 2.0)], 8)
            .await
            .expect("ranks");
        assert_eq!(
            both[0].subject.as_bytes(),
            &last,
            "found through its own key"
        );
        assert!(
            (both[0].gain - 2.0).abs() < 1e-9,
            "beyond the cap: key 9 only"
        );
        assert!(both[1..].iter().all(|r| (r.gain - 1.0).abs() < 1e-9));
        // A field's gain counts once: the best of its keys.
        let same_field = store
            .match_ranks("d", &[(7, 1.0), (7, 1.0)], 2)
            .await
            .expect("ranks");
        assert!((same_field[0].gain - 1.0).abs() < 1e-9);
    }
}
