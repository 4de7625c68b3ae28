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
use crate::synth::{self, Person, Rng};
use idvault_core::subject::SubjectId;
use idvault_server::service::matching::{MatchQuery, Pacing, QueryAnswer};
use idvault_server::service::{Caller, Vault};

/// Partner whose identity the benchmark uses.
const PARTNER: &str = "partner-a";

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
struct Scratch {
    dir: std::path::PathBuf,
    vault: Arc<Vault>,
}

impl Scratch {
    async fn start(database_url: Option<&str>) -> Result<Self, BenchError> {
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
        Ok(Self {
            dir,
            vault: loaded.vault,
        })
    }

    async fn stop(self) {
        self.vault.store().close().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn caller() -> Caller {
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

/// The quality run.
pub async fn quality(o: &MatchBenchOptions) -> Result<Quality, BenchError> {
    let scratch = Scratch::start(o.database_url.as_deref()).await?;
    let vault = Arc::clone(&scratch.vault);
    let mut rng = Rng::new(o.seed);
    let originals: Vec<Person> = (0..o.originals).map(|_| synth::person(&mut rng)).collect();
    let t = Instant::now();
    // Eight writers: commits are serialised by the audit chain anyway, but
    // the crypto of one overlaps the commit of another.
    let mut tasks = Vec::new();
    for (w, chunk) in originals.chunks(o.originals.div_ceil(8).max(1)).enumerate() {
        let vault = Arc::clone(&vault);
        let chunk: Vec<Person> = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut tokens = Vec::with_capacity(chunk.len());
            for p in &chunk {
                let r = vault.create_subject(&caller(), pairs(p)).await?;
                tokens.push(r.pairwise_token.unwrap_or_default());
            }
            Ok::<_, idvault_server::service::VaultError>((w, tokens))
        }));
    }
    let mut parts = Vec::new();
    for t in tasks {
        parts.push(t.await??);
    }
    parts.sort_by_key(|(w, _)| *w);
    let tokens: Vec<String> = parts.into_iter().flat_map(|(_, t)| t).collect();
    let create_secs = t.elapsed().as_secs_f64();

    let duplicates: Vec<Person> = originals
        .iter()
        .map(|p| synth::duplicate(&mut rng, p))
        .collect();
    let mut stranger_rng = Rng::new(o.seed ^ 0x005E_ED0F_574A_6EE5);
    let strangers: Vec<Person> = (0..o.strangers)
        .map(|_| synth::person(&mut stranger_rng))
        .collect();
    let mut q = Quality {
        create_secs,
        ..Quality::default()
    };
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
            match (truth, best(a)) {
                (Some(t), Some(b)) if t.as_str() == b => q.true_positives += 1,
                (Some(_), Some(_)) => {
                    q.false_positives += 1;
                    q.false_negatives += 1;
                }
                (Some(_), None) => q.false_negatives += 1,
                (None, Some(_)) => q.false_positives += 1,
                (None, None) => {}
            }
        }
    }
    q.queries_per_sec = all.len() as f64 / t.elapsed().as_secs_f64();
    scratch.stop().await;
    Ok(q)
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
    let truth = vault.store().pairwise_tokens_of(PARTNER, &ids).await?;
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
