//! `idvault bench …`: the benchmarks (idvault-bench) and their reports.
use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub(crate) enum BenchCommand {
    /// Seal, open and chain-verify packets in memory.
    Packets {
        /// Packets to seal.
        #[arg(long, default_value_t = 200_000)]
        count: u64,
    },
    /// Stateless `tokenize` versus a bare parse-and-HMAC loop on a synthetic log;
    /// with `--mode xref`, the TokenizeLog stream against an in-process vault.
    Tokenize {
        /// Log lines to generate.
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        /// Threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// `stateless` (local, with baseline) or `xref` (through the vault, warm cache).
        #[arg(long, default_value = "stateless", value_parser = ["stateless", "xref"])]
        mode: String,
    },
    /// Blind-matching quality (precision, recall, F1 on synthetic people with
    /// corrupted duplicates) and single-query latency at a large vault size.
    Match {
        /// People created in the vault for the quality run.
        #[arg(long, default_value_t = 5_000)]
        originals: usize,
        /// People not in the vault, matched alongside the duplicates.
        #[arg(long, default_value_t = 5_000)]
        strangers: usize,
        /// Vault size for the latency run (0 skips it).
        #[arg(long, default_value_t = 1_000_000)]
        subjects: usize,
        /// Single queries timed in the latency run.
        #[arg(long, default_value_t = 2_000)]
        queries: usize,
        /// Generator seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Database URL (default: SQLite in a fresh temporary directory).
        #[arg(long)]
        database_url: Option<String>,
        /// Corruption profiles to measure (repeatable; default all):
        /// default, swapped-names, identifier-typos, place-typos,
        /// multi-field, hardest.
        #[arg(long = "profile", value_parser = parse_profile)]
        profiles: Vec<idvault_bench::matching::Profile>,
        /// Learn the domain's weights from the originals (`idvault match
        /// estimate`) before matching, instead of the hand-set table.
        #[arg(long)]
        estimate: bool,
        /// A dataset of your own instead of synthetic people: these rows
        /// (CSV with a header row) are created, then `--queries-file` matched
        /// and linked one-to-one against them.
        #[arg(
            long,
            value_name = "FILE",
            requires = "queries_file",
            conflicts_with_all = ["originals", "strangers", "subjects", "queries", "seed", "profiles"]
        )]
        records: Option<std::path::PathBuf>,
        /// The rows matched against `--records` (CSV with a header row).
        #[arg(long, value_name = "FILE", requires = "records")]
        queries_file: Option<std::path::PathBuf>,
        /// Column naming the person a row belongs to (records and queries
        /// with the same value are the same person) [default: entity].
        #[arg(long, value_name = "COLUMN", requires = "records")]
        entity_column: Option<String>,
        /// Column naming each row in the list of misses (default: its
        /// line number). It is printed: choose a reference, not a
        /// person's data.
        #[arg(long, value_name = "COLUMN", requires = "records")]
        id_column: Option<String>,
        /// Read COLUMN as the catalogue field FIELD, e.g.
        /// `--map family_name=surname` (repeatable).
        #[arg(long = "map", value_name = "FIELD=COLUMN", value_parser = crate::cmd::parse_field, requires = "records")]
        map: Vec<(String, String)>,
        /// Print each query answered wrongly or not at all (row ids and
        /// scores only).
        #[arg(long, requires = "records")]
        misses: bool,
    },
    /// Consent verifications/s (against a bare ECDSA baseline) and full
    /// consented releases/s (challenge, verify, decrypt, HPKE seal, audit).
    Consent {
        /// Releases to time (each with its own challenge).
        #[arg(long, default_value_t = 2_000)]
        count: usize,
        /// Grant verifications in the in-memory run.
        #[arg(long, default_value_t = 20_000)]
        verifications: usize,
        /// Concurrent callers.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Database URL (default: SQLite in a fresh temporary directory).
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Events to delivered commands over mTLS: ignored events/s as the
    /// baseline, then events that each trigger one command, drained and
    /// acknowledged by the receiving partner (commands/s end to end, latency).
    Events {
        /// People set up (enrolled phone, two links, one rule each).
        #[arg(long, default_value_t = 200)]
        subjects: usize,
        /// Events published in each phase.
        #[arg(long, default_value_t = 5_000)]
        events: usize,
        /// Concurrent publishers.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Database URL (default: SQLite in a fresh temporary directory).
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Partner access policy decisions per second on one thread, with the
    /// built-in policy set or a policy directory.
    Policy {
        /// Decisions to time.
        #[arg(long, default_value_t = 1_000_000)]
        decisions: usize,
        /// Policy directory (default: the built-in set).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// RPC throughput over real mTLS in one run: health Check (baseline),
    /// CreateSubject, Match and a full consented Release, each with RPC/s,
    /// p50/p99 and the ratio to the baseline; then the audit log's
    /// checkpoint lag and a durability count.
    Rpc {
        /// Concurrent mTLS connections (one call in flight on each).
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Seconds per phase.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Calls per phase instead of `--seconds`.
        #[arg(long)]
        count: Option<usize>,
        /// People created (CreateSubject, before the timed phases) for the Match phase.
        #[arg(long, default_value_t = 10_000)]
        subjects: usize,
        /// Database URL (default: SQLite in a fresh temporary directory).
        #[arg(long)]
        database_url: Option<String>,
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Digital IDs: issue, present and verify in process, and
    /// IssueCredential / VerifyPresentation over mTLS against the
    /// Health/Check baseline.
    Credentials {
        /// Operations per in-process measurement.
        #[arg(long, default_value_t = 2_000)]
        count: usize,
        /// Concurrent mTLS connections (one call in flight on each).
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Seconds per RPC phase.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Database URL (default: SQLite in a fresh temporary directory).
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Rewrap after a root key rotation: subjects/s, and CreateSubject and
    /// Match over mTLS during it as ratios to a baseline of the same run.
    Rewrap {
        /// People created (CreateSubject) before the rotation.
        #[arg(long, default_value_t = 20_000)]
        subjects: usize,
        /// Concurrent mTLS connections of the load (half each call).
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Seconds of each baseline phase.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Database URL (default: SQLite in a fresh temporary directory).
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Hash manifests: build, diff and summary diff of two exports of the
    /// same people written differently, with a fraction differing.
    Manifest {
        /// Records in each export.
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        /// Fraction of records that differ (0.0001 = 0.01 %).
        #[arg(long, default_value_t = 0.0001)]
        differ: f64,
        /// Directory for the exports and manifests (default: a temporary
        /// one, removed afterwards).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// CreateSubject RPCs over real mTLS against an in-process server.
    Subjects {
        /// RPCs to send.
        #[arg(long, default_value_t = 5_000)]
        count: usize,
        /// Concurrent client connections.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Database URL (default: SQLite in a fresh temporary directory).
        #[arg(long)]
        database_url: Option<String>,
    },
}

pub(crate) async fn bench_consent(
    o: idvault_bench::consent::ConsentBenchOptions,
) -> anyhow::Result<()> {
    let r = idvault_bench::consent::run(&o)
        .await
        .map_err(anyhow::Error::from_boxed)?;
    println!(
        "consent verification (one thread): {:>8.0} grants/s  (bare ECDSA P-256 verify: {:.0}/s, ratio {:.2})",
        r.verifications_per_sec,
        r.baseline_per_sec,
        r.verifications_per_sec / r.baseline_per_sec
    );
    println!(
        "full releases, {} {}, {} at a time: {:>8.0} releases/s  (challenges alone {:.0}/s)",
        o.count, r.backend, o.concurrency, r.releases_per_sec, r.challenges_per_sec
    );
    println!(
        "  release latency p50 {:?}  p99 {:?}; partner open {:?} each",
        r.quantile(0.5),
        r.quantile(0.99),
        r.open_mean
    );
    Ok(())
}

pub(crate) async fn bench_match(
    o: idvault_bench::matching::MatchBenchOptions,
    profiles: Vec<idvault_bench::matching::Profile>,
) -> anyhow::Result<()> {
    use idvault_bench::matching::{Profile, latency, quality};
    if o.originals > 0 {
        let profiles: Vec<Profile> = if profiles.is_empty() {
            Profile::ALL.to_vec()
        } else {
            profiles
        };
        let r = quality(&o, &profiles)
            .await
            .map_err(anyhow::Error::from_boxed)?;
        println!(
            "quality: {} originals created in {:.1} s; per profile {} corrupted duplicates and {} strangers matched (seed {}, threshold score 0.5 = {} bits)",
            o.originals,
            r.create_secs,
            o.originals,
            o.strangers,
            o.seed,
            idvault_tokenizer::matching::THRESHOLD_BITS,
        );
        match &r.estimate {
            Some((secs, e)) => println!(
                "  weights: learned in {secs:.1} s from {} subjects ({} blocked and {} random pairs, {} EM iterations, {}), {} common values counted",
                e.population,
                e.blocked_pairs,
                e.random_pairs,
                e.iterations,
                if e.converged {
                    "converged"
                } else {
                    "not converged"
                },
                e.model.frequencies.as_ref().map_or(0, |f| f.counts.len())
            ),
            None => println!("  weights: the hand-set table (--estimate learns them first)"),
        }
        println!(
            "  {:<17} {:>9} {:>9} {:>9} {:>6} {:>6} {:>6} {:>7} {:>10}",
            "profile", "precision", "recall", "F1", "TP", "FP", "FN", "refused", "queries/s"
        );
        for p in &r.profiles {
            quality_row(p.profile.name(), 17, &p.quality, p.quality.queries_per_sec);
        }
        for p in &r.profiles {
            println!("  {}: {}", p.profile.name(), p.profile.describe());
        }
        if r.link.records > 0 {
            let l = &r.link;
            println!(
                "link: {} records (default profile + strangers): {:.0} records/s best candidate, {:.0} records/s one-to-one (precision {:.4} recall {:.4} F1 {:.4})",
                l.records,
                l.best_per_sec,
                l.one_to_one_per_sec,
                l.one_to_one.precision(),
                l.one_to_one.recall(),
                l.one_to_one.f1()
            );
        }
    }
    if o.subjects > 0 {
        let bar = crate::progress::progress_bar();
        let l = latency(&o, |n| {
            if let Some(b) = &bar {
                b.set_message(format!("{n} of {} subjects indexed", o.subjects));
            }
        })
        .await
        .map_err(anyhow::Error::from_boxed)?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        println!(
            "latency: {} subjects ({} blocking index rows and signatures loaded in {:.0} s), {} single queries",
            l.subjects,
            l.rows,
            l.load_secs,
            l.samples.len()
        );
        println!(
            "  p50 {:?}  p99 {:?}  max {:?}  (best answer right for {} of {})",
            l.quantile(0.50),
            l.quantile(0.99),
            l.samples.last().copied().unwrap_or_default(),
            l.correct,
            l.samples.len()
        );
    }
    Ok(())
}

/// One line of a quality table: the label in a column `width` wide, then
/// precision, recall, F1, TP, FP, FN, refused and queries/s.
fn quality_row(label: &str, width: usize, q: &idvault_bench::matching::Quality, per_sec: f64) {
    println!(
        "  {label:<width$} {:>9.4} {:>9.4} {:>9.4} {:>6} {:>6} {:>6} {:>7} {:>10.0}",
        q.precision(),
        q.recall(),
        q.f1(),
        q.true_positives,
        q.false_positives,
        q.false_negatives,
        q.refused,
        per_sec
    );
}

pub(crate) async fn bench_dataset(
    database_url: Option<&str>,
    estimate: bool,
    (records, queries, columns): (
        &std::path::Path,
        &std::path::Path,
        &idvault_bench::dataset::DatasetColumns,
    ),
    misses: bool,
) -> anyhow::Result<()> {
    use idvault_bench::dataset::{read_csv, run};
    let recs = read_csv(records, columns).map_err(anyhow::Error::from_boxed)?;
    let qs = read_csv(queries, columns).map_err(anyhow::Error::from_boxed)?;
    let r = run(database_url, estimate, &recs, &qs)
        .await
        .map_err(anyhow::Error::from_boxed)?;
    println!(
        "dataset: {} of {} records created in {:.1} s; {} queries, {} of them of an entity among the created records",
        r.created,
        recs.len(),
        r.create_secs,
        qs.len(),
        r.duplicates
    );
    if r.linkable < r.duplicates {
        println!(
            "  those queries hold {} distinct entities: one-to-one linking gives no subject to two queries, so it can find at most {}",
            r.linkable, r.linkable
        );
    }
    for (why, n) in &r.refused_records {
        println!("  {n} records refused: {why}");
    }
    if let Some((secs, e)) = &r.estimate {
        println!(
            "  weights: learned in {secs:.1} s from {} subjects ({} EM iterations, {})",
            e.population,
            e.iterations,
            if e.converged {
                "converged"
            } else {
                "not converged"
            },
        );
    }
    println!(
        "  {:<22} {:>9} {:>9} {:>9} {:>6} {:>6} {:>6} {:>7} {:>10}",
        "run", "precision", "recall", "F1", "TP", "FP", "FN", "refused", "queries/s"
    );
    for (name, q, rate) in [
        ("best answer (Match)", &r.best, r.best.queries_per_sec),
        ("one-to-one (Link)", &r.one_to_one, r.one_to_one_per_sec),
    ] {
        quality_row(name, 22, q, rate);
    }
    if misses {
        for m in &r.misses {
            println!(
                "  miss: query {} expected {} answered {} score {}",
                m.query,
                m.expected.as_deref().unwrap_or("-"),
                m.answered.as_deref().unwrap_or("-"),
                m.score
                    .map_or_else(|| "-".to_owned(), |s| format!("{s:.4}"))
            );
        }
    }
    Ok(())
}

pub(crate) async fn bench_rpc(
    o: idvault_bench::rpc::RpcBenchOptions,
    json: bool,
) -> anyhow::Result<()> {
    use idvault_bench::rpc::quantile;
    if o.subjects == 0 {
        anyhow::bail!("--subjects must be at least 1 (the Match phase queries them)");
    }
    if o.count.is_none() && (!o.seconds.is_finite() || o.seconds <= 0.0) {
        anyhow::bail!("--seconds must be positive");
    }
    let bar = crate::progress::progress_bar();
    let r = idvault_bench::rpc::run(&o, &|m: &str| {
        if let Some(b) = &bar {
            b.set_message(m.to_owned());
        }
    })
    .await
    .map_err(anyhow::Error::from_boxed)?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if json {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let phases: Vec<serde_json::Value> = r
            .phases
            .iter()
            .map(|p| {
                serde_json::json!({
                    "call": p.name,
                    "calls": p.ok,
                    "errors": p.errors,
                    "first_error": p.first_error,
                    "seconds": p.secs,
                    "rpc_per_sec": p.rate(),
                    "p50_ms": ms(p.quantile(0.5)),
                    "p99_ms": ms(p.quantile(0.99)),
                    "ratio_to_baseline": r.ratio(p),
                    "cpu": p.cpu.as_ref().map(|c| c.to_json(p.ok)),
                })
            })
            .collect();
        let v = serde_json::json!({
            "backend": r.backend,
            "connections": r.connections,
            "seconds_per_phase": o.count.is_none().then_some(o.seconds),
            "count_per_phase": o.count,
            "subjects_loaded": r.subjects_loaded,
            "load_seconds": r.load_secs,
            "phases": phases,
            "match_hits": r.match_hits,
            "release_rpc_alone": {
                "p50_ms": ms(quantile(&r.release_rpc, 0.5)),
                "p99_ms": ms(quantile(&r.release_rpc, 0.99)),
            },
            "releases_opened": r.releases_opened,
            "partner_open_mean_ms": ms(r.open_mean),
            "checkpoint_lag_ms": {
                "leaves": r.lag_ms.len(),
                "p50": quantile(&r.lag_ms, 0.5),
                "p99": quantile(&r.lag_ms, 0.99),
                "max": r.lag_ms.last().copied().unwrap_or_default(),
            },
            "checkpoints": r.checkpoints,
            "sequenced_wait_seconds": r.sequenced_wait_secs,
            "creates_acknowledged": r.creates_acknowledged,
            "subjects_stored": r.subjects_stored,
            "durable": r.durable(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{r}");
    }
    if !r.durable() {
        anyhow::bail!(
            "{} subjects stored but {} creates acknowledged",
            r.subjects_stored,
            r.creates_acknowledged
        );
    }
    Ok(())
}

/// Runs a `bench` subcommand.
pub(crate) async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Consent {
            count,
            verifications,
            concurrency,
            database_url,
        } => {
            bench_consent(idvault_bench::consent::ConsentBenchOptions {
                count,
                verifications,
                concurrency,
                database_url,
            })
            .await
        }
        BenchCommand::Events {
            subjects,
            events,
            concurrency,
            database_url,
        } => {
            let r = idvault_bench::events::run(&idvault_bench::events::EventsBenchOptions {
                subjects,
                events,
                concurrency,
                database_url,
            })
            .await
            .map_err(anyhow::Error::from_boxed)?;
            print!("{r}");
            Ok(())
        }
        BenchCommand::Policy { decisions, dir } => {
            let src = match &dir {
                Some(d) => idvault_server::policy::read_dir(d),
                None => Ok(idvault_policies::PolicySource::builtin()),
            };
            let compiled = src
                .and_then(|s| idvault_policies::compile(&s))
                .map_err(|d| anyhow::anyhow!(idvault_server::policy::report(&d)))?;
            let ids = compiled.ids().len();
            let (rate, allowed) = idvault_policies::bench_decisions(compiled, decisions)?;
            println!(
                "policy decisions (one thread, {ids} policies, {decisions} decisions, {:.0}% allowed): {rate:.0}/s",
                allowed * 100.0
            );
            Ok(())
        }
        BenchCommand::Packets { count } => {
            idvault_bench::packets::run(count).map_err(anyhow::Error::from_boxed)
        }
        BenchCommand::Match {
            originals,
            strangers,
            subjects,
            queries,
            seed,
            database_url,
            profiles,
            estimate,
            records,
            queries_file,
            entity_column,
            id_column,
            map,
            misses,
        } => {
            if let (Some(records), Some(queries)) = (records, queries_file) {
                let columns = idvault_bench::dataset::DatasetColumns {
                    entity: entity_column.unwrap_or_else(|| "entity".to_owned()),
                    id: id_column,
                    map,
                };
                return bench_dataset(
                    database_url.as_deref(),
                    estimate,
                    (&records, &queries, &columns),
                    misses,
                )
                .await;
            }
            bench_match(
                idvault_bench::matching::MatchBenchOptions {
                    originals,
                    strangers,
                    subjects,
                    queries,
                    seed,
                    database_url,
                    estimate,
                },
                profiles,
            )
            .await
        }
        BenchCommand::Tokenize { records, mode, .. } if mode == "xref" => {
            idvault_bench::tokenize::xref(records)
                .await
                .map_err(anyhow::Error::from_boxed)
        }
        BenchCommand::Tokenize {
            records, threads, ..
        } => {
            let threads = threads
                .unwrap_or_else(|| idvault_tokenizer::pipeline::PipelineOptions::default().threads);
            let dir = std::env::temp_dir().join(format!("idvault-bench-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir)?;
            let r = idvault_bench::tokenize::tokenize(&dir, records, threads);
            let _ = std::fs::remove_dir_all(&dir);
            let r = r?;
            let rate = |d: std::time::Duration| r.records as f64 / d.as_secs_f64();
            println!(
                "synthetic usage log: {} records, {:.1} MiB, 2 identifier fields, {} threads",
                r.records,
                r.bytes as f64 / 1048576.0,
                r.threads
            );
            println!(
                "idvault tokenize (stateless, file to file): {:>12.0} records/s",
                rate(r.tokenize)
            );
            println!(
                "bare loop (read, parse, normalise, HMAC):   {:>12.0} records/s",
                rate(r.bare)
            );
            println!(
                "ratio tokenize / bare loop:                 {:>12.2}",
                rate(r.tokenize) / rate(r.bare)
            );
            Ok(())
        }
        BenchCommand::Rpc {
            connections,
            seconds,
            count,
            subjects,
            database_url,
            json,
        } => {
            bench_rpc(
                idvault_bench::rpc::RpcBenchOptions {
                    connections,
                    seconds,
                    count,
                    subjects,
                    database_url,
                },
                json,
            )
            .await
        }
        BenchCommand::Credentials {
            count,
            connections,
            seconds,
            database_url,
        } => {
            let o = idvault_bench::credentials::CredentialBenchOptions {
                count,
                connections,
                seconds,
                database_url,
            };
            let r = idvault_bench::credentials::run(&o, &|m| eprintln!("{m}"))
                .await
                .map_err(anyhow::Error::from_boxed)?;
            print!("{r}");
            Ok(())
        }
        BenchCommand::Manifest {
            records,
            differ,
            dir,
        } => {
            let o = idvault_bench::manifest::ManifestBenchOptions {
                records,
                differ,
                dir,
            };
            let r = tokio::task::spawn_blocking(move || {
                idvault_bench::manifest::run(&o, &|m| eprintln!("{m}"))
            })
            .await?
            .map_err(anyhow::Error::from_boxed)?;
            let rate = |n: u64, s: f64| n as f64 / s.max(1e-9);
            let mib = |b: u64| b as f64 / 1048576.0;
            println!(
                "exports: A {} records ({:.0} MiB CSV), B {} records ({:.0} MiB JSON Lines); made {} missing in B, {} changed, {} extra in B",
                r.records_a,
                mib(r.export_bytes.0),
                r.records_b,
                mib(r.export_bytes.1),
                r.made.0,
                r.made.1,
                r.made.2
            );
            println!(
                "baseline  read+parse A (CSV)      {:>10.0} records/s  ({:.1} s)",
                rate(r.records_a, r.parse_secs),
                r.parse_secs
            );
            println!(
                "build A (CSV)                     {:>10.0} records/s  ({:.1} s, ratio to baseline {:.2}), manifest {:.0} MiB",
                rate(r.records_a, r.build_secs.0),
                r.build_secs.0,
                r.parse_secs / r.build_secs.0.max(1e-9),
                mib(r.manifest_bytes.0)
            );
            println!(
                "build B (JSON Lines)              {:>10.0} records/s  ({:.1} s), manifest {:.0} MiB",
                rate(r.records_b, r.build_secs.1),
                r.build_secs.1,
                mib(r.manifest_bytes.1)
            );
            println!(
                "diff A B (full manifests)         {:>10.0} records/s  ({:.1} s); bytes shipped: B's manifest, {} ({:.0} MiB)",
                rate(r.records_a + r.records_b, r.diff_secs),
                r.diff_secs,
                r.manifest_bytes.1,
                mib(r.manifest_bytes.1)
            );
            println!(
                "summary of B ({} cells)       {:>10.0} records/s  ({:.1} s); bytes shipped: the summary, {} ({:.2} MiB, {:.4} of the manifest)",
                r.summary_cells,
                rate(r.records_b, r.summary_secs),
                r.summary_secs,
                r.summary_bytes,
                mib(r.summary_bytes),
                r.summary_bytes as f64 / r.manifest_bytes.1.max(1) as f64
            );
            println!(
                "diff A against B's summary        {:>10.0} records/s  ({:.1} s; A read twice)",
                rate(r.records_a, r.summary_diff_secs),
                r.summary_diff_secs
            );
            println!(
                "found: {} missing in B, {} missing in A, {} differ (both methods, as made); peak memory {:.0} MiB",
                r.found.missing_in_b, r.found.missing_in_a, r.found.differ, r.peak_rss_mib
            );
            Ok(())
        }
        BenchCommand::Rewrap {
            subjects,
            connections,
            seconds,
            database_url,
        } => {
            let o = idvault_bench::rekey::RewrapBenchOptions {
                subjects,
                connections,
                seconds,
                database_url,
            };
            let r = idvault_bench::rekey::run(&o, &|m| eprintln!("{m}"))
                .await
                .map_err(anyhow::Error::from_boxed)?;
            println!(
                "{}: {} people created in {:.1} s; rewrap of {} subjects (those, and the baseline's) and {} audit leaf MACs in {:.1} s = {:.0} subjects/s",
                r.backend,
                o.subjects,
                r.load_secs,
                r.subjects,
                r.leaves,
                r.rewrap_secs,
                r.rate()
            );
            for (b, d) in r.baseline.iter().zip(&r.during) {
                println!(
                    "{:<14} baseline {:>7.0}/s p99 {:>6.1} ms | during rewrap {:>7.0}/s p99 {:>6.1} ms | ratio {:.2}{}",
                    b.name,
                    b.rate(),
                    b.quantile(0.99).as_secs_f64() * 1e3,
                    d.rate(),
                    d.quantile(0.99).as_secs_f64() * 1e3,
                    if b.rate() > 0.0 {
                        d.rate() / b.rate()
                    } else {
                        0.0
                    },
                    if b.errors + d.errors > 0 {
                        format!(
                            " ({} errors: {:?})",
                            b.errors + d.errors,
                            d.first_error.as_ref().or(b.first_error.as_ref())
                        )
                    } else {
                        String::new()
                    }
                );
            }
            Ok(())
        }
        BenchCommand::Subjects {
            count,
            concurrency,
            database_url,
        } => idvault_bench::subjects::run(count, concurrency, database_url)
            .await
            .map_err(anyhow::Error::from_boxed),
    }
}

fn parse_profile(s: &str) -> Result<idvault_bench::matching::Profile, String> {
    idvault_bench::matching::Profile::parse(s).ok_or_else(|| {
        format!(
            "unknown profile {s:?} (one of {})",
            idvault_bench::matching::Profile::ALL
                .map(|p| p.name())
                .join(", ")
        )
    })
}
