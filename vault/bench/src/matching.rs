//! `idvault bench match`: blind-matching quality on synthetic people with
//! known truth, and single-query latency against a large vault, in process.
//!
//! Quality: `originals` people are created through the full CreateSubject
//! path (packets, index rows, pairwise tokens, audit). Then one corrupted
//! duplicate of each (see [`crate::synth`]) and `strangers` people who are
//! not in the vault are matched, in batches of 100 as one partner would
//! send them. A duplicate is a true positive when the best answer is its
//! original's pairwise token; a wrong best answer is a false positive (and
//! the duplicate a false negative); no answer is a false negative. Any
//! answer to a stranger is a false positive. A refused query counts as
//! unanswered.
//!
//! Latency: a second scratch vault is filled with the index rows of
//! `subjects` synthetic people for the querying partner's match domain
//! (the rows CreateSubject would write; packets are not written, since
//! matching never reads them), then single queries (duplicates of loaded
//! people) are timed one after another through `Vault::match_one`, each
//! with its audited transaction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use idvault_tokenizer::variants::MatchField;

use crate::BenchError;
pub use crate::synth::Profile;
use crate::synth::{self, Person, Rng};
use idvault_core::subject::SubjectId;
use idvault_server::service::matching::{LinkJob, LinkRecord, MatchQuery, Pacing, QueryAnswer};
use idvault_server::service::{Caller, Vault, VaultError};

/// Partner whose identity the benchmark uses.
pub(crate) const PARTNER: &str = "partner-a";

/// What to run.
#[derive(Debug, Clone)]
pub struct MatchBenchOptions {
    /// People created in the quality run.
    pub originals: usize,
    /// People matched who are not in the vault.
    pub strangers: usize,
    /// Vault size of the latency run (0: skip it).
    pub subjects: usize,
    /// Queries timed in the latency run.
    pub queries: usize,
    /// Generator seed.
    pub seed: u64,
    /// Database URL (default: SQLite in a temporary directory).
    pub database_url: Option<String>,
    /// Learn the domain's weights (`Vault::estimate_match_model`) after
    /// creating the originals, before matching.
    pub estimate: bool,
}

/// Quality figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quality {
    /// Duplicates whose best answer was their original.
    pub true_positives: usize,
    /// Wrong best answers plus answers to strangers.
    pub false_positives: usize,
    /// Duplicates not answered with their original.
    pub false_negatives: usize,
    /// Queries refused (too little information).
    pub refused: usize,
    /// Seconds creating the originals.
    pub create_secs: f64,
    /// Queries matched per second (batches of 100, one after another).
    pub queries_per_sec: f64,
}

impl Quality {
    /// TP / (TP + FP).
    pub fn precision(&self) -> f64 {
        ratio(
            self.true_positives,
            self.true_positives + self.false_positives,
        )
    }
    /// TP / (TP + FN).
    pub fn recall(&self) -> f64 {
        ratio(
            self.true_positives,
            self.true_positives + self.false_negatives,
        )
    }
    /// Harmonic mean of precision and recall.
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Latency figures.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    /// Subjects in the vault.
    pub subjects: usize,
    /// Index rows loaded.
    pub rows: usize,
    /// Seconds loading them.
    pub load_secs: f64,
    /// Sorted per-query latencies.
    pub samples: Vec<Duration>,
    /// Queries whose best answer was the right person.
    pub correct: usize,
}

impl Latency {
    /// The `p` quantile (0..=1).
    pub fn quantile(&self, p: f64) -> Duration {
        let i =
            ((self.samples.len() as f64 * p) as usize).min(self.samples.len().saturating_sub(1));
        self.samples.get(i).copied().unwrap_or_default()
    }
}

/// A scratch vault whose benchmark partner has no practical rate limit.
pub(crate) struct Scratch {
    dir: std::path::PathBuf,
    pub(crate) vault: Arc<Vault>,
    /// The background tasks of a serving vault (sequencer, WAL
    /// checkpoints, …), so timings include their share of the writer.
    background: (
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ),
}

impl Scratch {
    pub(crate) async fn start(database_url: Option<&str>) -> Result<Self, BenchError> {
        let dir = crate::inprocess::dev_data_dir()?;
        let path = dir.join(idvault_server::config::CONFIG_FILE);
        let text = std::fs::read_to_string(&path)?.replace(
            &format!("name = \"{PARTNER}\"\n"),
            &format!(
                "name = \"{PARTNER}\"\nmatch_queries_per_second = 1000000\nmatch_burst = 1000000\n"
            ),
        );
        std::fs::write(&path, text)?;
        let cfg = idvault_server::config::Config::load(&path)?;
        let url = database_url.map_or_else(|| cfg.database_url(), str::to_owned);
        let loaded = idvault_server::app::load(&cfg, &url).await?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let job = tokio::spawn(Arc::clone(&loaded.vault).run_background(stopped));
        Ok(Self {
            dir,
            vault: loaded.vault,
            background: (stop, job),
        })
    }

    pub(crate) async fn stop(self) {
        let (stop, job) = self.background;
        let _ = stop.send(true);
        let _ = job.await;
        self.vault.store().close().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn caller() -> Caller {
    Caller::new(format!(
        "spiffe://{}/partner/{PARTNER}",
        idvault_server::devinit::DEV_TRUST_DOMAIN
    ))
}

fn pairs(p: &Person) -> Vec<(String, String)> {
    p.iter()
        .map(|(f, v)| ((*f).to_owned(), v.clone()))
        .collect()
}

fn best(a: &QueryAnswer) -> Option<&str> {
    match a {
        QueryAnswer::Answered(c) => c.first().map(|c| c.pairwise_token.as_str()),
        QueryAnswer::Refused(_) => None,
    }
}

/// Creates one subject per field list as the benchmark partner, with eight
/// writers (the crypto of one overlaps the commit of another); each one's
/// pairwise token or refusal, in order.
pub(crate) async fn create_all(
    vault: &Arc<Vault>,
    people: Vec<Vec<(String, String)>>,
) -> Result<Vec<Result<String, VaultError>>, BenchError> {
    let mut tasks = Vec::new();
    for chunk in people.chunks(people.len().div_ceil(8).max(1)) {
        let vault = Arc::clone(vault);
        let chunk = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(chunk.len());
            for fields in chunk {
                let created = vault.create_subject(&caller(), fields).await;
                out.push(created.map(|c| c.pairwise_token.unwrap_or_default()));
            }
            out
        }));
    }
    let mut all = Vec::with_capacity(people.len());
    for task in tasks {
        all.extend(task.await?);
    }
    Ok(all)
}

/// Quality of one corruption profile.
#[derive(Debug, Clone, Copy)]
pub struct ProfileQuality {
    /// The profile.
    pub profile: Profile,
    /// Its figures.
    pub quality: Quality,
}

/// Dataset-linking figures (the default profile's duplicates and the
/// strangers linked as one file through `Vault::link_batch`).
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkFigures {
    /// Records linked.
    pub records: usize,
    /// Records per second, best candidate per record.
    pub best_per_sec: f64,
    /// Records per second, one-to-one (lookups, assignment, answers).
    pub one_to_one_per_sec: f64,
    /// Quality of the one-to-one links.
    pub one_to_one: Quality,
}

/// The whole quality run.
#[derive(Debug, Clone, Default)]
pub struct QualityReport {
    /// Seconds creating the originals.
    pub create_secs: f64,
    /// One entry per profile run.
    pub profiles: Vec<ProfileQuality>,
    /// Dataset linking.
    pub link: LinkFigures,
    /// Seconds estimating and the estimate, when asked for.
    pub estimate: Option<(f64, idvault_core::matching::ModelEstimate)>,
}

/// Tallies one answer: `truth` is the duplicate's original token (`None`
/// for a stranger), `best` the answer's token, if any.
pub(crate) fn tally(q: &mut Quality, truth: Option<&str>, best: Option<&str>) {
    match (truth, best) {
        (Some(t), Some(b)) if t == b => q.true_positives += 1,
        (Some(_), Some(_)) => {
            q.false_positives += 1;
            q.false_negatives += 1;
        }
        (Some(_), None) => q.false_negatives += 1,
        (None, Some(_)) => q.false_positives += 1,
        (None, None) => {}
    }
}

/// The quality run: the originals are created once, then every profile in
/// `profiles` is matched (its duplicates and the same strangers), then the
/// default profile is linked as a dataset.
pub async fn quality(
    o: &MatchBenchOptions,
    profiles: &[Profile],
) -> Result<QualityReport, BenchError> {
    let scratch = Scratch::start(o.database_url.as_deref()).await?;
    let vault = Arc::clone(&scratch.vault);
    let mut rng = Rng::new(o.seed);
    let originals: Vec<Person> = (0..o.originals).map(|_| synth::person(&mut rng)).collect();
    let t = Instant::now();
    let tokens = create_all(&vault, originals.iter().map(pairs).collect())
        .await?
        .into_iter()
        .collect::<Result<Vec<String>, _>>()?;
    let mut report = QualityReport {
        create_secs: t.elapsed().as_secs_f64(),
        ..QualityReport::default()
    };
    if o.estimate {
        let t = Instant::now();
        let e = vault.estimate_match_model(PARTNER, 100_000).await?;
        report.estimate = Some((t.elapsed().as_secs_f64(), e));
    }
    let mut stranger_rng = Rng::new(o.seed ^ 0x005E_ED0F_574A_6EE5);
    let strangers: Vec<Person> = (0..o.strangers)
        .map(|_| synth::person(&mut stranger_rng))
        .collect();
    let mut default_dups = None;
    for (i, profile) in profiles.iter().enumerate() {
        // Each profile its own stream, so adding one leaves the others'
        // duplicates as they were.
        let mut dup_rng = Rng::new(o.seed.wrapping_add(0x9E37_79B9 * (i as u64 + 1)));
        let duplicates: Vec<Person> = originals
            .iter()
            .map(|p| synth::duplicate_with(&mut dup_rng, p, *profile))
            .collect();
        let quality = match_all(&vault, &duplicates, &tokens, &strangers).await?;
        report.profiles.push(ProfileQuality {
            profile: *profile,
            quality,
        });
        if *profile == Profile::Default {
            default_dups = Some(duplicates);
        }
    }
    if let Some(dups) = default_dups {
        report.link = link_all(&vault, &dups, &tokens, &strangers).await?;
    }
    scratch.stop().await;
    Ok(report)
}

/// Matches the duplicates and the strangers in batches of 100, as one
/// partner would send them.
async fn match_all(
    vault: &Vault,
    duplicates: &[Person],
    tokens: &[String],
    strangers: &[Person],
) -> Result<Quality, BenchError> {
    let mut q = Quality::default();
    let all: Vec<(&Person, Option<&String>)> = duplicates
        .iter()
        .zip(tokens.iter().map(Some))
        .chain(strangers.iter().map(|p| (p, None)))
        .collect();
    let t = Instant::now();
    for batch in all.chunks(idvault_server::service::matching::MAX_BATCH) {
        let queries = batch
            .iter()
            .map(|(p, _)| MatchQuery {
                fields: pairs(p),
                ..MatchQuery::default()
            })
            .collect();
        let answers = vault
            .match_batch(&caller(), queries, Pacing::Wait, false)
            .await?;
        for ((_, truth), a) in batch.iter().zip(&answers) {
            if matches!(a, QueryAnswer::Refused(_)) {
                q.refused += 1;
            }
            tally(&mut q, truth.map(String::as_str), best(a));
        }
    }
    q.queries_per_sec = all.len() as f64 / t.elapsed().as_secs_f64();
    Ok(q)
}

/// Links the duplicates and strangers as one dataset: best candidate per
/// record, then one-to-one.
async fn link_all(
    vault: &Vault,
    duplicates: &[Person],
    tokens: &[String],
    strangers: &[Person],
) -> Result<LinkFigures, BenchError> {
    let records: Vec<(LinkRecord, Option<&String>)> = duplicates
        .iter()
        .zip(tokens.iter().map(Some))
        .chain(strangers.iter().map(|p| (p, None)))
        .enumerate()
        .map(|(i, (p, truth))| {
            (
                LinkRecord {
                    record_id: i.to_string(),
                    fields: pairs(p),
                },
                truth,
            )
        })
        .collect();
    let mut figures = LinkFigures {
        records: records.len(),
        ..LinkFigures::default()
    };
    for one_to_one in [false, true] {
        let t = Instant::now();
        let mut job = LinkJob::new(one_to_one, 0.0)?;
        let mut answers = Vec::with_capacity(records.len());
        for batch in records.chunks(idvault_server::service::matching::MAX_BATCH) {
            let recs = batch.iter().map(|(r, _)| r.clone()).collect();
            answers.extend(vault.link_batch(&caller(), &mut job, recs).await?);
        }
        if one_to_one {
            for chunk in job.assign().0 {
                answers.extend(vault.link_reveal(&caller(), chunk).await?);
            }
        }
        let per_sec = records.len() as f64 / t.elapsed().as_secs_f64();
        if one_to_one {
            figures.one_to_one_per_sec = per_sec;
            for ((_, truth), a) in records.iter().zip(&answers) {
                let best = match &a.answer {
                    Ok(Some(c)) => Some(c.pairwise_token.as_str()),
                    _ => None,
                };
                tally(&mut figures.one_to_one, truth.map(String::as_str), best);
            }
        } else {
            figures.best_per_sec = per_sec;
        }
    }
    Ok(figures)
}

/// The latency run.
pub async fn latency(
    o: &MatchBenchOptions,
    progress: impl Fn(usize),
) -> Result<Latency, BenchError> {
    const CHUNK: usize = 100_000;
    let scratch = Scratch::start(o.database_url.as_deref()).await?;
    let vault = Arc::clone(&scratch.vault);
    let ring = vault.current_keyring(PARTNER)?;
    let opts = *vault.match_options();
    let mut rng = Rng::new(o.seed.wrapping_add(1));
    let every = (o.subjects / o.queries.max(1)).max(1);
    let mut sampled: Vec<(SubjectId, Person)> = Vec::new();
    let mut lat = Latency {
        subjects: o.subjects,
        ..Latency::default()
    };
    let t = Instant::now();
    let mut loader = vault.store().bench_loader(PARTNER, ring.version()).await?;
    let mut done = 0;
    while done < o.subjects {
        let n = CHUNK.min(o.subjects - done);
        let people: Vec<(SubjectId, Person)> = (0..n)
            .map(|_| {
                let id = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
                (
                    SubjectId::from_bytes(id.to_be_bytes()),
                    synth::person(&mut rng),
                )
            })
            .collect();
        // Variants and HMACs on every core.
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        let subjects: Vec<idvault_server::store::LoadedSubject> = std::thread::scope(|s| {
            let handles: Vec<_> = people
                .chunks(n.div_ceil(threads).max(1))
                .map(|part| {
                    let ring = &ring;
                    let opts = &opts;
                    s.spawn(move || {
                        let mut out = Vec::with_capacity(part.len());
                        for (id, p) in part {
                            let record: Vec<(MatchField, &str)> = p
                                .iter()
                                .filter_map(|(name, value)| {
                                    Some((MatchField::parse(name)?, value.as_str()))
                                })
                                .collect();
                            let idx = ring.subject_index(&record, opts);
                            out.push((
                                *id,
                                idx.blocking.clone(),
                                idx.present(),
                                idx.signature(ring.version()),
                            ));
                        }
                        out
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        lat.rows += subjects.iter().map(|s| s.1.len()).sum::<usize>();
        loader.load(&subjects).await?;
        for (i, p) in people.into_iter().enumerate() {
            if (done + i) % every == 0 && sampled.len() < o.queries {
                sampled.push(p);
            }
        }
        done += n;
        progress(done);
    }
    loader.finish().await?;
    lat.load_secs = t.elapsed().as_secs_f64();
    // Warm up as a running vault would be: untimed queries first.
    let mut warm = Rng::new(o.seed.wrapping_add(2));
    for _ in 0..o.queries.min(500) {
        let query = MatchQuery {
            fields: pairs(&synth::person(&mut warm)),
            ..MatchQuery::default()
        };
        let _ = vault.match_one(&caller(), query).await;
    }
    // Tokens are made on first answer: look them up afterwards by subject.
    let mut samples = Vec::with_capacity(sampled.len());
    let mut answered = Vec::with_capacity(sampled.len());
    for (_, p) in &sampled {
        let query = MatchQuery {
            fields: pairs(&synth::duplicate(&mut rng, p)),
            ..MatchQuery::default()
        };
        let t = Instant::now();
        let r = vault.match_one(&caller(), query).await;
        samples.push(t.elapsed());
        answered.push(
            r.ok()
                .and_then(|c| c.into_iter().next())
                .map(|c| c.pairwise_token),
        );
    }
    let ids: Vec<SubjectId> = sampled.iter().map(|(id, _)| *id).collect();
    let truth = vault
        .store()
        .pairwise_tokens_of(PARTNER, &ids)
        .await?
        .tokens;
    lat.correct = sampled
        .iter()
        .zip(&answered)
        .filter(|((id, _), a)| a.is_some() && truth.get(id) == a.as_ref())
        .count();
    samples.sort();
    lat.samples = samples;
    scratch.stop().await;
    Ok(lat)
}
