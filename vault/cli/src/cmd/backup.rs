//! `idvault backup` and `idvault restore` (docs/operations.md, "Backup and
//! restore").

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use idvault_core::subject::SubjectId;
use idvault_core::tlog::checkpoint::NoteVerifier;
use idvault_server::backup;
use idvault_server::service::audit::AuditVerdict;
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
    /// Go on although some deletion records cannot be verified (journal
    /// lines under a key version this key file lacks or with a bad MAC,
    /// or a replaced database whose audit log does not verify); the
    /// deletions they would prove are not applied again.
    #[arg(long)]
    accept_unverified_deletions: bool,
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
    // No vault may serve from this data directory meanwhile, and none
    // starts before the restore ends.
    let _lock = backup::DataDirLock::restoring(&cfg.base_dir).map_err(anyhow::Error::msg)?;
    let marker = cfg.base_dir.join(backup::RESTORE_PENDING);
    // An unfinished restore left the database it replaced aside: read it.
    let mut replaced: Vec<String> = args.replaced_database.iter().cloned().collect();
    if let Ok(text) = std::fs::read_to_string(&marker) {
        replaced.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("replaced-database "))
                .map(str::to_owned),
        );
        println!("finishing the restore {} describes", marker.display());
    }
    if args.from.is_some()
        && args.replaced_database.is_none()
        && let Some(p) = backup::sqlite_path(&url).filter(|p| p.exists())
    {
        replaced.push(format!("sqlite://{}", p.display()));
    }

    // Who was deleted: every journal, and the audit log of the database
    // being replaced. Read before anything is moved.
    let mut journals = JournalRead::default();
    let mut sources = Vec::new();
    let mut unverified = Vec::new();
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
        unverified.push(format!("deletion journal line refused: {r}"));
    }
    if journals.torn_tail > 0 {
        eprintln!(
            "note: {} journal(s) end in a line cut short (a crash while appending): skipped; \
             the database's audit log still records that deletion",
            journals.torn_tail
        );
    }
    let mut deleted: BTreeMap<SubjectId, i64> = journals.deleted.clone();
    replaced.sort();
    replaced.dedup();
    for u in &replaced {
        let store = idvault_server::store::Store::connect(u)
            .await
            .with_context(|| {
                format!(
                    "opening the replaced database {}, to read its deletions",
                    redact(u)
                )
            })?;
        // Its log must verify first: a row removed or edited by someone
        // without the root key could hide a deletion.
        let origin = cfg.file.audit.origin.clone();
        let verifiers: Vec<NoteVerifier> =
            idvault_server::service::audit::verifier_keys(&keys, &origin)?
                .iter()
                .map(|k| NoteVerifier::parse(k))
                .collect::<Result<_, _>>()?;
        let verdict = idvault_server::service::audit::verify_audit_log(
            &store,
            &verifiers,
            &origin,
            Some(&keys),
        )
        .await;
        let rec = recorded_deletions(&store, &keys).await;
        store.close().await;
        if let AuditVerdict::Broken(f) = verdict? {
            unverified.push(format!(
                "the audit log of the replaced database {} does not verify: {f}",
                redact(u)
            ));
        }
        let rec = rec?;
        if rec.refused > 0 {
            unverified.push(format!(
                "{} deletion records in the audit log of {} do not verify",
                rec.refused,
                redact(u)
            ));
        }
        for (id, t) in rec.deleted {
            let e = deleted.entry(id).or_insert(t);
            *e = (*e).max(t);
        }
        sources.push(format!("the audit log of {}", redact(u)));
    }
    if !unverified.is_empty() {
        for u in &unverified {
            eprintln!("warning: {u}");
        }
        if !args.accept_unverified_deletions {
            bail!(
                "some deletion records cannot be verified (above): a person they record could come \
                 back. Use the key file that wrote them, or pass --accept-unverified-deletions"
            );
        }
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
        write_marker(&marker, &replaced)?;
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
            // From here on the replaced database lives under this name: a
            // restore that stops before the end finds it in the marker.
            replaced.retain(|u| backup::sqlite_path(u).as_deref() != Some(db.as_path()));
            replaced.push(format!("sqlite://{}", a.display()));
            write_marker(&marker, &replaced)?;
            println!(
                "the replaced database is kept as {} (delete it once you no longer need it)",
                a.display()
            );
        }
    } else {
        write_marker(&marker, &replaced)?;
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
            "shredding again stopped after {shredded} subjects: {e}. The vault will not start \
             until `idvault restore` (without --from) finishes; {} names the sources",
            marker.display()
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
    match verdict? {
        AuditVerdict::Intact {
            leaves, pending, ..
        } => {
            std::fs::remove_file(&marker)
                .with_context(|| format!("removing {}", marker.display()))?;
            println!(
                "audit log intact: {leaves} leaves ({sequenced} sequenced now, {pending} pending)"
            );
            Ok(())
        }
        AuditVerdict::Broken(f) => bail!(
            "the restored audit log does not verify: {f}; the vault will not start while {} exists",
            marker.display()
        ),
    }
}

/// Writes the restore-pending marker durably: the sources a rerun needs.
fn write_marker(path: &std::path::Path, replaced: &[String]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut text = String::from(
        "# An `idvault restore` has not finished: the vault refuses to start until\n\
         # `idvault restore` (without --from) ends. Sources it reads:\n",
    );
    for u in replaced {
        text.push_str(&format!("replaced-database {u}\n"));
    }
    let mut f =
        std::fs::File::create(path).with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// A database URL without its password.
fn redact(url: &str) -> String {
    super::serve::redact_url(url)
}
