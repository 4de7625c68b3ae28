//! `idvault backup` and `idvault restore` (docs/operations.md, "Backup and
//! restore").

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use idvault_core::subject::SubjectId;
use idvault_server::backup;
use idvault_server::service::restore::{Reshred, recorded_deletions};
use idvault_server::shredlog::{JournalRead, read_journal};

use super::DataDir;

#[derive(Args, Debug)]
pub(crate) struct BackupArgs {
    #[command(flatten)]
    dir: DataDir,
    /// The backup file to write; it must not exist.
    #[arg(long)]
    out: PathBuf,
    /// Database URL (overrides the config); only SQLite is snapshotted here.
    #[arg(long, env = "IDVAULT_DATABASE_URL")]
    database_url: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct RestoreArgs {
    #[command(flatten)]
    dir: DataDir,
    /// A backup written by `idvault backup` (SQLite): it replaces the
    /// database, whose files are kept aside. Without it, the database was
    /// restored by other means (pg_restore) and only the deletions made
    /// after the backup are applied again.
    #[arg(long)]
    from: Option<PathBuf>,
    /// Database URL (overrides the config).
    #[arg(long, env = "IDVAULT_DATABASE_URL")]
    database_url: Option<String>,
    /// A deletion journal to read besides the configured one (repeatable:
    /// one per vault process that ever served).
    #[arg(long = "shred-log")]
    shred_logs: Vec<PathBuf>,
    /// A database whose audit log's deletions also count (e.g. the
    /// PostgreSQL database this restore replaces). With --from on SQLite
    /// the database being replaced is read by default.
    #[arg(long)]
    replaced_database: Option<String>,
    /// Restore even though no deletion journal and no replaced database
    /// can say who was deleted after the backup (they would come back).
    #[arg(long)]
    without_deletion_record: bool,
}

pub(crate) async fn backup(args: &BackupArgs) -> anyhow::Result<()> {
    let cfg = args.dir.load()?;
    let url = args
        .database_url
        .clone()
        .unwrap_or_else(|| cfg.database_url());
    let info = backup::snapshot(&url, &args.out).await?;
    println!(
        "backup written to {}: {} subjects, {} audit leaves, newest checkpoint {} leaves",
        args.out.display(),
        info.subjects,
        info.audit_leaves,
        info.tree_size
    );
    println!(
        "the root key is not in it: keep a copy of {} apart from the backup (docs/keys.md)",
        cfg.resolve(&cfg.file.keys.root_key_file).display()
    );
    Ok(())
}

pub(crate) async fn restore(args: &RestoreArgs) -> anyhow::Result<()> {
    let cfg = args.dir.load()?;
    let url = args
        .database_url
        .clone()
        .unwrap_or_else(|| cfg.database_url());
    let keys = idvault_server::app::open_keys(&cfg)?;

    // Who was deleted: every journal, and the audit log of the database
    // being replaced. Read before anything is moved.
    let mut journals = JournalRead::default();
    let mut sources = Vec::new();
    if let Some(p) = cfg.shred_log_path().filter(|p| p.exists()) {
        read_journal(&p, &keys, &mut journals)
            .with_context(|| format!("reading the deletion journal {}", p.display()))?;
        sources.push(p.display().to_string());
    }
    for p in &args.shred_logs {
        read_journal(p, &keys, &mut journals)
            .with_context(|| format!("reading the deletion journal {}", p.display()))?;
        sources.push(p.display().to_string());
    }
    for r in &journals.refused {
        eprintln!("warning: deletion journal line refused: {r}");
    }
    if journals.torn_tail > 0 {
        eprintln!(
            "warning: {} journal(s) end in a line cut short (a crash while appending): skipped",
            journals.torn_tail
        );
    }
    let mut deleted: BTreeMap<SubjectId, i64> = journals.deleted.clone();
    let replaced = match (&args.replaced_database, &args.from) {
        (Some(u), _) => Some(u.clone()),
        (None, Some(_)) => backup::sqlite_path(&url)
            .filter(|p| p.exists())
            .map(|_| url.clone()),
        (None, None) => None,
    };
    if let Some(u) = &replaced {
        let store = idvault_server::store::Store::connect(u)
            .await
            .context("opening the database being replaced, to read its deletions")?;
        let rec = recorded_deletions(&store, &keys).await;
        store.close().await;
        let rec = rec?;
        if rec.refused > 0 {
            eprintln!(
                "warning: {} deletion records in the replaced database's audit log do not verify (not written by this vault): ignored",
                rec.refused
            );
        }
        for (id, t) in rec.deleted {
            let e = deleted.entry(id).or_insert(t);
            *e = (*e).max(t);
        }
        sources.push("the replaced database's audit log".to_owned());
    }
    if sources.is_empty() && !args.without_deletion_record {
        bail!(
            "no deletion journal ({}) and no database being replaced: whoever was deleted after \
             the backup was taken would come back. Pass the journals with --shred-log (or \
             --replaced-database), or --without-deletion-record if you accept that",
            cfg.shred_log_path()
                .map_or_else(|| "turned off".to_owned(), |p| p.display().to_string())
        );
    }

    if let Some(from) = &args.from {
        let db = backup::sqlite_path(&url).with_context(|| {
            "--from restores a SQLite backup; for PostgreSQL use pg_restore, then `idvault restore` without --from (docs/operations.md)"
        })?;
        let info = backup::check(from).await?;
        let now_ms = idvault_core::Clock::now_millis(&idvault_server::clock::SystemClock);
        let aside = backup::install(from, &db, now_ms).await?;
        println!(
            "restored {} ({} subjects, {} audit leaves) to {}",
            from.display(),
            info.subjects,
            info.audit_leaves,
            db.display()
        );
        if let Some(a) = aside {
            println!(
                "the replaced database is kept as {} (delete it once you no longer need it)",
                a.display()
            );
        }
    }

    // Shred again, in the restored database, everyone deleted.
    let vault = idvault_server::app::open_vault(&cfg, &url).await?;
    let actor = idvault_server::service::Caller::new("idvault restore");
    let (mut shredded, mut absent) = (0u64, 0u64);
    let mut failed = None;
    for id in deleted.keys() {
        match vault.reshred(&actor, id).await {
            Ok(Reshred::Shredded) => shredded += 1,
            Ok(Reshred::Absent) => absent += 1,
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let mut st = idvault_server::service::audit::SequencerState::default();
    let sequenced = if failed.is_none() {
        vault
            .sequence_once(&mut st)
            .await
            .map(Option::unwrap_or_default)
    } else {
        Ok(0)
    };
    let verdict = vault.verify_own_audit_log().await;
    vault.store().close().await;
    if let Some(e) = failed {
        bail!(
            "shredding again stopped after {shredded} subjects: {e}. Nothing is half done; run \
             `idvault restore` again without --from to finish (the vault must not serve before)"
        );
    }
    let sequenced = sequenced?;
    println!(
        "deletions after the backup applied again: {shredded} subjects shredded, {absent} already \
         absent (from {} deletions in {})",
        deleted.len(),
        if sources.is_empty() {
            "no source".to_owned()
        } else {
            sources.join(", ")
        }
    );
    use idvault_server::service::audit::AuditVerdict;
    match verdict? {
        AuditVerdict::Intact {
            leaves, pending, ..
        } => {
            println!(
                "audit log intact: {leaves} leaves ({sequenced} sequenced now, {pending} pending)"
            );
            Ok(())
        }
        AuditVerdict::Broken(f) => bail!("the restored audit log does not verify: {f}"),
    }
}
