//! `idvault audit …`: verify the audit log, print its verifier key.

use anyhow::{Context, bail};
use clap::Subcommand;

use super::DataDir;
use idvault_core::tlog::checkpoint::NoteVerifier;
use idvault_server::service::audit::{self, AuditVerdict};

#[derive(Subcommand, Debug)]
pub(crate) enum AuditCommand {
    /// Verify the audit log: every checkpoint's signature, every leaf
    /// against the signed roots, subject chain heads against their newest
    /// leaves; with the root key (no --public-key) also every leaf's MAC.
    /// Names the first bad leaf or checkpoint; exits 1 if there is one.
    Verify {
        #[command(flatten)]
        dir: DataDir,
        /// Database URL (overrides the config).
        #[arg(long, env = "IDVAULT_DATABASE_URL")]
        database_url: Option<String>,
        /// Verify with the public key alone: a file holding verifier keys
        /// (`idvault audit public-key`), one per line. The root key and
        /// config are then not needed (give --database-url).
        #[arg(long, value_name = "FILE")]
        public_key: Option<std::path::PathBuf>,
    },
    /// List the match answers that revealed a subject to a partner (its
    /// pairwise token): tree index, time, partner and request id, one per
    /// line, from the sequenced log. Match records carry keyed tags, not
    /// subject ids (docs/audit.md), so this needs the root key; records
    /// whose MAC fails are counted and make it exit 1.
    Revealed {
        #[command(flatten)]
        dir: DataDir,
        /// Database URL (overrides the config).
        #[arg(long, env = "IDVAULT_DATABASE_URL")]
        database_url: Option<String>,
        /// The subject id.
        subject: String,
    },
    /// Print the audit log's verifier key in signed-note form
    /// (`name+keyid+base64`); with --all, one per root key version.
    PublicKey {
        #[command(flatten)]
        dir: DataDir,
        /// Every version's key, oldest first (the last is current).
        #[arg(long)]
        all: bool,
    },
}

/// Reads verifier keys, one per line (blank lines and `#` comments
/// skipped), and the log origin they name (the signed-note key name is the
/// log's origin, docs/audit.md).
pub(crate) fn read_verifiers(
    path: &std::path::Path,
) -> anyhow::Result<(Vec<NoteVerifier>, String)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let keys = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .enumerate()
        .map(|(n, l)| {
            NoteVerifier::parse(l)
                .with_context(|| format!("{} line {}: not a verifier key", path.display(), n + 1))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let Some(origin) = keys.first().map(|k| k.name().to_owned()) else {
        bail!("{}: no verifier key in it", path.display());
    };
    Ok((keys, origin))
}

async fn verify(
    dir: &DataDir,
    database_url: Option<String>,
    public_key: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let (verifiers, keys, origin, url) = match public_key {
        Some(path) => {
            let (verifiers, origin) = read_verifiers(path)?;
            let url = match database_url {
                Some(u) => u,
                None => dir.load()?.database_url(),
            };
            (verifiers, None, origin, url)
        }
        None => {
            let cfg = dir.load()?;
            let keys = idvault_server::app::open_keys(&cfg)?;
            let origin = cfg.file.audit.origin.clone();
            let verifiers = audit::verifier_keys(&keys, &origin)?
                .iter()
                .map(|k| NoteVerifier::parse(k))
                .collect::<Result<Vec<_>, _>>()?;
            let url = database_url.unwrap_or_else(|| cfg.database_url());
            (verifiers, Some(keys), origin, url)
        }
    };
    let store = idvault_server::store::Store::connect(&url).await?;
    let verdict = audit::verify_audit_log(&store, &verifiers, &origin, keys.as_ref()).await?;
    store.close().await;
    match verdict {
        AuditVerdict::Intact {
            leaves,
            checkpoints,
            pending,
        } => {
            let macs = if keys.is_some() {
                "signatures and MACs"
            } else {
                "signatures (public key only)"
            };
            println!(
                "audit log intact: {leaves} leaves, {checkpoints} checkpoints, {pending} leaves not yet checkpointed; {macs} verified"
            );
            Ok(())
        }
        AuditVerdict::Broken(fault) => {
            println!("audit log BROKEN: {fault}");
            std::process::exit(1);
        }
    }
}

/// Runs an `audit` subcommand.
pub(crate) async fn run(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify {
            dir,
            database_url,
            public_key,
        } => verify(&dir, database_url, public_key.as_deref()).await,
        AuditCommand::Revealed {
            dir,
            database_url,
            subject,
        } => {
            let id = idvault_core::subject::SubjectId::parse(&subject)
                .context("SUBJECT is not a subject id")?;
            let cfg = dir.load()?;
            let keys = idvault_server::app::open_keys(&cfg)?;
            let url = database_url.unwrap_or_else(|| cfg.database_url());
            let store = idvault_server::store::Store::connect(&url).await?;
            let report = audit::revealed_to_partners(&store, &keys, &id).await;
            store.close().await;
            let report = report?;
            for r in &report.found {
                println!("{}\t{}\t{}\t{}", r.index, r.time_ms, r.actor, r.request_id);
            }
            eprintln!("{} match answers revealed this subject", report.found.len());
            for r in report.found.iter().filter(|r| r.contested > 0) {
                eprintln!(
                    "leaf {}: {} more records of that one-to-one link job wanted this subject and \
                     did not get it (each learned a heavier record took it)",
                    r.index, r.contested
                );
            }
            if report.unsearchable > 0 {
                eprintln!(
                    "{} match records are under retired key versions: their tags cannot be searched",
                    report.unsearchable
                );
            }
            if report.bad_mac > 0 {
                eprintln!(
                    "{} match records failed their MAC and were not read (run `idvault audit verify`)",
                    report.bad_mac
                );
                std::process::exit(1);
            }
            Ok(())
        }
        AuditCommand::PublicKey { dir, all } => {
            let cfg = dir.load()?;
            let keys = idvault_server::app::open_keys(&cfg)?;
            let all_keys = audit::verifier_keys(&keys, &cfg.file.audit.origin)?;
            let skip = if all {
                0
            } else {
                all_keys.len().saturating_sub(1)
            };
            for k in all_keys.iter().skip(skip) {
                println!("{k}");
            }
            Ok(())
        }
    }
}
