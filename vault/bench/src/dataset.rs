//! `idvault bench match --records FILE --queries-file FILE`: blind-matching
//! quality on a dataset of the user's own (a public record-linkage
//! benchmark, a labelled sample of production data), in process.
//!
//! Every row of the records file is created through the full
//! CreateSubject path; every row of the queries file is then matched in
//! batches of 100 (as `MatchService.Match` would receive them), and the
//! queries file is linked one-to-one as one dataset (as
//! `MatchService.Link` would). Truth comes from an entity column: a
//! record and a query with the same entity are the same person; a query
//! whose entity no record has is a stranger. Tallied as in the synthetic
//! run ([`super::matching`]): the best answer being a record of the
//! query's entity is a true positive; any other answer is a false
//! positive (and, for a duplicate, a false negative too).
//!
//! Columns are taken as in `idvault partner link`: a column named like a
//! matchable catalogue field is that field, `--map FIELD=COLUMN` takes
//! another column as FIELD, every other column is ignored; cells are
//! trimmed. One-to-one linking gives no subject to two queries, so when
//! the queries hold an entity more than once, the extra ones can only be
//! false negatives there ([`DatasetReport::linkable`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use idvault_server::service::matching::{LinkJob, LinkRecord, MatchQuery, Pacing, QueryAnswer};
use idvault_tokenizer::variants::MatchField;

use crate::BenchError;
use crate::matching::{Quality, Scratch, caller, create_all, tally};

/// One labelled row.
#[derive(Debug, Clone)]
pub struct Labelled {
    /// The row's reference (its id column, or its line number).
    pub id: String,
    /// The person it belongs to.
    pub entity: String,
    /// Catalogue field name and value, empty cells left out.
    pub fields: Vec<(String, String)>,
}

/// Which columns are read.
#[derive(Debug, Clone)]
pub struct DatasetColumns {
    /// Column naming each row's entity.
    pub entity: String,
    /// Column naming each row (default: the line number).
    pub id: Option<String>,
    /// `(field, column)`: the column read as the catalogue field.
    pub map: Vec<(String, String)>,
}

/// Reads a CSV file with a header row (cells trimmed, so `a, b` reads as
/// `a,b`). Errors name the file and the row, never a cell's content.
pub fn read_csv(path: &Path, columns: &DatasetColumns) -> Result<Vec<Labelled>, BenchError> {
    let fields = MatchField::columns(&columns.map)?;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut r = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(file);
    let header: Vec<String> = r
        .headers()
        .map_err(|e| format!("{}: reading the header row: {e}", path.display()))?
        .iter()
        .map(str::to_owned)
        .collect();
    let Some(entity_at) = header.iter().position(|h| *h == columns.entity) else {
        return Err(format!(
            "{}: no entity column {:?} (set it with --entity-column)",
            path.display(),
            columns.entity
        )
        .into());
    };
    let id_at = match &columns.id {
        Some(c) => Some(
            header
                .iter()
                .position(|h| h == c)
                .ok_or_else(|| format!("{}: no id column {c:?}", path.display()))?,
        ),
        None => None,
    };
    let used: Vec<(usize, &String)> = header
        .iter()
        .enumerate()
        .filter_map(|(i, h)| fields.get(h).map(|f| (i, f)))
        .collect();
    if used.is_empty() {
        return Err(format!(
            "{}: no column is a matchable field (name them like one, or --map FIELD=COLUMN)",
            path.display()
        )
        .into());
    }
    let mut out = Vec::new();
    for (n, row) in r.records().enumerate() {
        // The CSV parser's message may quote a cell: report the row's
        // position only (and a field count, which holds no data).
        let row = row.map_err(|e| {
            let at = e.position().map_or_else(
                || format!("row {}", n + 1),
                |p| format!("line {}", p.line()),
            );
            match e.kind() {
                csv::ErrorKind::UnequalLengths {
                    expected_len, len, ..
                } => format!(
                    "{}: {at} has {len} cells where the header has {expected_len}",
                    path.display()
                ),
                _ => format!("{}: {at} is not valid CSV", path.display()),
            }
        })?;
        let line = row.position().map_or(n as u64 + 2, csv::Position::line);
        let cell = |i: usize| row.get(i).unwrap_or_default().to_owned();
        let entity = cell(entity_at);
        if entity.is_empty() {
            // Unlabelled rows would all count as one person.
            return Err(format!(
                "{}: line {line} has no value in the entity column {:?}",
                path.display(),
                columns.entity
            )
            .into());
        }
        out.push(Labelled {
            id: id_at.map_or_else(|| line.to_string(), cell),
            entity,
            fields: used
                .iter()
                .map(|(i, f)| ((*f).clone(), cell(*i)))
                .filter(|(_, v)| !v.is_empty())
                .collect(),
        });
    }
    Ok(out)
}

/// A query answered wrongly or not at all.
#[derive(Debug, Clone)]
pub struct Miss {
    /// The query's id.
    pub query: String,
    /// The id of a record of its entity (`None`: a stranger).
    pub expected: Option<String>,
    /// The id of the record answered (`None`: no answer).
    pub answered: Option<String>,
    /// The answer's score.
    pub score: Option<f64>,
}

/// The dataset run's figures.
#[derive(Debug, Clone, Default)]
pub struct DatasetReport {
    /// Records created.
    pub created: usize,
    /// Records the vault refused to create, by reason.
    pub refused_records: Vec<(String, usize)>,
    /// Seconds creating them.
    pub create_secs: f64,
    /// Queries whose entity some created record has (a record the vault
    /// refused makes its queries strangers).
    pub duplicates: usize,
    /// Distinct entities among them: the most true positives one-to-one
    /// linking can give (it gives no subject to two queries).
    pub linkable: usize,
    /// Best answer per query (`MatchService.Match`, batches of 100).
    pub best: Quality,
    /// One-to-one linking of the whole query file (`MatchService.Link`).
    pub one_to_one: Quality,
    /// One-to-one records linked per second.
    pub one_to_one_per_sec: f64,
    /// The best-answer run's mistakes.
    pub misses: Vec<Miss>,
    /// Seconds estimating and the estimate, when asked for.
    pub estimate: Option<(f64, idvault_core::matching::ModelEstimate)>,
}

/// Creates `records`, then matches and links `queries`.
pub async fn run(
    database_url: Option<&str>,
    estimate: bool,
    records: &[Labelled],
    queries: &[Labelled],
) -> Result<DatasetReport, BenchError> {
    let most = idvault_server::service::matching::MAX_LINK_RECORDS;
    if queries.len() > most {
        // Checked first: Link would refuse the file after the Match pass.
        return Err(format!(
            "{} queries: one Link stream takes at most {most}; split the file",
            queries.len()
        )
        .into());
    }
    let scratch = Scratch::start(database_url).await?;
    let result = run_in(&scratch, estimate, records, queries).await;
    scratch.stop().await;
    result
}

async fn run_in(
    scratch: &Scratch,
    estimate: bool,
    records: &[Labelled],
    queries: &[Labelled],
) -> Result<DatasetReport, BenchError> {
    let vault = Arc::clone(&scratch.vault);
    let mut report = DatasetReport::default();
    let t = Instant::now();
    let created = create_all(&vault, records.iter().map(|r| r.fields.clone()).collect()).await?;
    // Token to (record id, entity).
    let mut by_token: HashMap<String, (String, String)> = HashMap::new();
    let mut example: HashMap<String, String> = HashMap::new();
    let mut refused: HashMap<String, usize> = HashMap::new();
    for (r, created) in records.iter().zip(created) {
        match created {
            Ok(token) => {
                example.entry(r.entity.clone()).or_insert(r.id.clone());
                by_token.insert(token, (r.id.clone(), r.entity.clone()));
            }
            // Error texts name the field and the rule, never the value.
            Err(e) => *refused.entry(e.to_string()).or_default() += 1,
        }
    }
    report.created = by_token.len();
    report.refused_records = refused.into_iter().collect();
    report.refused_records.sort();
    report.create_secs = t.elapsed().as_secs_f64();
    if estimate {
        let t = Instant::now();
        let e = vault
            .estimate_match_model(crate::matching::PARTNER, 100_000)
            .await?;
        report.estimate = Some((t.elapsed().as_secs_f64(), e));
    }
    fn truth<'q>(example: &HashMap<String, String>, q: &'q Labelled) -> Option<&'q str> {
        example.contains_key(&q.entity).then_some(q.entity.as_str())
    }
    let truth = |q| truth(&example, q);
    report.duplicates = queries.iter().filter(|q| truth(q).is_some()).count();
    report.linkable = queries
        .iter()
        .filter_map(truth)
        .collect::<std::collections::HashSet<_>>()
        .len();
    let entity_of = |token: &str| by_token.get(token).map_or("", |(_, e)| e.as_str());

    let t = Instant::now();
    for batch in queries.chunks(idvault_server::service::matching::MAX_BATCH) {
        let asked = batch
            .iter()
            .map(|q| MatchQuery {
                fields: q.fields.clone(),
                ..MatchQuery::default()
            })
            .collect();
        let answers = vault
            .match_batch(&caller(), asked, Pacing::Wait, false)
            .await?;
        for (q, a) in batch.iter().zip(&answers) {
            let best = match a {
                QueryAnswer::Answered(c) => c.first(),
                QueryAnswer::Refused(_) => {
                    report.best.refused += 1;
                    None
                }
            };
            let got = best.map(|c| entity_of(&c.pairwise_token));
            tally(&mut report.best, truth(q), got);
            if got != truth(q) {
                report.misses.push(Miss {
                    query: q.id.clone(),
                    expected: truth(q).and_then(|e| example.get(e).cloned()),
                    answered: best
                        .and_then(|c| by_token.get(&c.pairwise_token))
                        .map(|(id, _)| id.clone()),
                    score: best.map(|c| c.score),
                });
            }
        }
    }
    report.best.queries_per_sec = queries.len() as f64 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut job = LinkJob::new(true, 0.0)?;
    let mut answers = Vec::with_capacity(queries.len());
    let mut done = 0;
    for batch in queries.chunks(idvault_server::service::matching::MAX_BATCH) {
        let recs = batch
            .iter()
            .enumerate()
            .map(|(i, q)| LinkRecord {
                record_id: (done + i).to_string(),
                fields: q.fields.clone(),
            })
            .collect();
        answers.extend(vault.link_batch(&caller(), &mut job, recs).await?);
        done += batch.len();
    }
    for chunk in job.assign().0 {
        answers.extend(vault.link_reveal(&caller(), chunk).await?);
    }
    report.one_to_one_per_sec = queries.len() as f64 / t.elapsed().as_secs_f64();
    let mut linked: HashMap<usize, Option<&str>> = HashMap::new();
    for a in &answers {
        match (a.record_id.parse::<usize>(), &a.answer) {
            (Ok(i), Ok(Some(c))) => {
                linked.insert(i, Some(entity_of(&c.pairwise_token)));
            }
            (_, Err(_)) => report.one_to_one.refused += 1,
            _ => {}
        }
    }
    for (i, q) in queries.iter().enumerate() {
        tally(
            &mut report.one_to_one,
            truth(q),
            linked.get(&i).copied().flatten(),
        );
    }
    Ok(report)
}
