//! `idvault match estimate|model`: a match domain's learned weights
//! (docs/blind-matching.md, "Learned weights").

use anyhow::bail;
use clap::Subcommand;
use idvault_core::matching::ModelEstimate;
use idvault_server::service::matching::ModelReport;
use idvault_tokenizer::matching::{Level, Model};

use super::DataDir;

#[derive(Subcommand, Debug)]
pub(crate) enum MatchCommand {
    /// Learn a domain's m/u weights from its own indexed subjects
    /// (expectation maximisation, the hand-set table as prior) and the
    /// commonest values' frequencies, without decrypting anything; store
    /// them (a running vault picks them up within 30 s) and print them.
    Estimate {
        #[command(flatten)]
        dir: DataDir,
        /// The match domain (default: every configured one).
        #[arg(long)]
        domain: Option<String>,
        /// Subjects sampled at random (at most 100000).
        #[arg(long, default_value_t = 20_000)]
        sample: u32,
        /// Database URL (overrides the config).
        #[arg(long, env = "IDVAULT_DATABASE_URL")]
        database_url: Option<String>,
    },
    /// Show the weights each domain scores with: the stored estimate and
    /// its date, or the hand-set table.
    Model {
        #[command(flatten)]
        dir: DataDir,
        /// The match domain (default: every configured one).
        #[arg(long)]
        domain: Option<String>,
        /// Database URL (overrides the config).
        #[arg(long, env = "IDVAULT_DATABASE_URL")]
        database_url: Option<String>,
    },
}

fn date(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// The table: per field and level, m, u and the weight next to the prior's.
fn print_model(model: &Model) {
    let prior = Model::prior();
    println!(
        "  {:<15} {:<9} {:>9} {:>11} {:>8} {:>8}",
        "field", "level", "m", "u", "bits", "prior"
    );
    for f in &model.fields {
        let p = prior.field(f.field);
        let rows = f
            .agree
            .iter()
            .map(|(l, mu)| (Some(*l), *mu))
            .chain(std::iter::once((None, f.disagree)));
        for (l, mu) in rows {
            let name = l.map_or("disagree", Level::name);
            let prior_bits = p.map_or(0.0, |p| p.weight(l));
            println!(
                "  {:<15} {:<9} {:>9.5} {:>11.3e} {:>8.2} {:>8.2}",
                f.field.name(),
                name,
                mu.m,
                mu.u,
                f.weight(l),
                prior_bits
            );
        }
    }
}

fn print_estimate(domain: &str, at: i64, e: &ModelEstimate) {
    println!(
        "{domain}: estimated {} from {} subjects ({} blocked and {} random pairs; match share {:.2e}; {} EM iterations, {})",
        date(at),
        e.population,
        e.blocked_pairs,
        e.random_pairs,
        e.match_share,
        e.iterations,
        if e.converged {
            "converged"
        } else {
            "NOT converged"
        }
    );
    if let Some(fr) = &e.model.frequencies {
        println!(
            "  frequencies: {} common exact values counted among {} subjects (rarest kept: {})",
            fr.counts.len(),
            fr.population,
            fr.floor
        );
    }
    print_model(&e.model.model);
}

fn print_report(r: &ModelReport) {
    match (&r.estimate, &r.problem) {
        (Some((at, e)), _) => print_estimate(&r.domain, *at, e),
        (None, Some(problem)) => {
            println!(
                "{}: stored estimate NOT used ({problem}); scoring with the hand-set table",
                r.domain
            );
            print_model(&Model::prior());
        }
        (None, None) => {
            println!(
                "{}: no estimate yet (`idvault match estimate`); scoring with the hand-set table",
                r.domain
            );
            print_model(&Model::prior());
        }
    }
}

/// The vault of `dir` (not during a restore: the data dir lock is held
/// shared while it is open).
async fn open(
    dir: &DataDir,
    database_url: Option<String>,
) -> anyhow::Result<(
    idvault_server::service::Vault,
    Option<idvault_server::backup::DataDirLock>,
)> {
    let cfg = dir.load()?;
    let url = database_url.unwrap_or_else(|| cfg.database_url());
    let lock =
        idvault_server::backup::DataDirLock::shared(&cfg.base_dir).map_err(anyhow::Error::msg)?;
    let vault = idvault_server::app::open_vault(&cfg, &url).await?;
    Ok((vault, lock))
}

pub(crate) async fn run(command: MatchCommand) -> anyhow::Result<()> {
    match command {
        MatchCommand::Estimate {
            dir,
            domain,
            sample,
            database_url,
        } => {
            let (vault, _lock) = open(&dir, database_url).await?;
            let domains: Vec<String> = match domain {
                Some(d) => vec![d],
                None => vault.match_domains().to_vec(),
            };
            let mut failed = 0usize;
            for d in &domains {
                match vault.estimate_match_model(d, sample).await {
                    Ok(e) => {
                        let at = vault.now_millis();
                        print_estimate(d, at, &e);
                    }
                    Err(e) => {
                        eprintln!("{d}: {e}");
                        failed += 1;
                    }
                }
            }
            vault.store().close().await;
            if failed > 0 {
                bail!(
                    "estimating failed for {failed} of {} domains",
                    domains.len()
                );
            }
            Ok(())
        }
        MatchCommand::Model {
            dir,
            domain,
            database_url,
        } => {
            let (vault, _lock) = open(&dir, database_url).await?;
            let reports = vault.match_model_reports().await?;
            vault.store().close().await;
            let mut shown = 0;
            for r in reports
                .iter()
                .filter(|r| domain.as_deref().is_none_or(|d| d == r.domain))
            {
                print_report(r);
                shown += 1;
            }
            if shown == 0 {
                bail!("no such match domain");
            }
            Ok(())
        }
    }
}
