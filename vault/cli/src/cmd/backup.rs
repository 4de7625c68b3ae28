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
    // Not during a restore (a snapshot of half-restored data).
    let _lock = backup::DataDirLock::shared(&cfg.base_dir).map_err(anyhow::Error::msg)?;
    let pending = cfg.base_dir.join(backup::RESTORE_PENDING);
    if pending.exists() {
        bail!(
            "{} exists: an `idvault restore` did not finish; finish it before taking a backup",
            pending.display()
        );
    }
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
    let _lock = backup::DataDirLock::exclusive(&cfg.base_dir).map_err(anyhow::Error::msg)?;
    let marker = cfg.base_dir.join(backup::RESTORE_PENDING);
    // Resolved (see `resolved_path`): the set-aside names derive from it,
    // and a relative path would name other files from another directory.
    let db = backup::sqlite_path(&url).map(|p| resolved_path(&p));
    let target_path = db.clone();
    let origin = cfg.file.audit.origin.clone();
    let verifiers: Vec<NoteVerifier> =
        idvault_server::service::audit::verifier_keys(&keys, &origin)?
            .iter()
            .map(|k| NoteVerifier::parse(k))
            .collect::<Result<_, _>>()?;
    // The backup is an intact idvault database (read-only; it says why
    // not), then one of this vault's.
    let backup_info = match &args.from {
        Some(from) => Some(backup::check(from).await?),
        None => None,
    };
    if let Some(from) = &args.from
        && let Some(note) = backup::newest_checkpoint_note(from).await?
        && let Err(e) = idvault_core::tlog::checkpoint::open_checkpoint(&note, &verifiers, &origin)
    {
        // First, before any database is opened (reading a replaced one's
        // deletions opens it as a store) and before anything moves: a
        // backup of another vault (or made under another key file, or
        // altered) would otherwise be put in place and only found out by
        // the final check, the current database already set aside.
        bail!(
            "the backup's newest audit checkpoint does not verify with this vault's audit keys \
             ({e}): it is not a backup of this vault under this key file. Nothing was changed"
        );
    }

    // The databases whose audit logs say who was deleted.
    let mut replaced: Vec<String> = args.replaced_database.iter().cloned().collect();
    // The deletion journals this run reads (the configured one if it
    // exists, and those named), by their canonical paths.
    let journal_paths: Vec<PathBuf> = cfg
        .shred_log_path()
        .filter(|p| p.exists())
        .into_iter()
        .chain(args.shred_logs.iter().cloned())
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
        .collect();
    // An unfinished restore: the database it set aside is a source (and
    // files it left half moved go back first).
    let mut swapped_before = false;
    let marker_text = match std::fs::read_to_string(&marker) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        // One that exists but cannot be read must not be passed over.
        Err(e) => return Err(e).with_context(|| format!("reading {}", marker.display())),
    };
    if let Some(text) = marker_text {
        println!("finishing the restore {} describes", marker.display());
        let m = Marker::parse(&text);
        // It is finished on the database it restored, from at least the
        // sources it read: a rerun on another database, or without a
        // journal or replaced database that recorded deletions, would end
        // the restore with those people back.
        m.check_rerun(
            &redact(&url),
            target_path.as_deref(),
            &journal_paths,
            args.replaced_database.as_slice(),
        )?;
        // Where that restore was to move the current database itself (a
        // marker written before this line existed: its last set-aside).
        // Only that file may be moved back into place: the others are
        // databases an operator named, or earlier restores left.
        let swap: Option<PathBuf> = m.swap.clone().or_else(|| m.asides.last().cloned());
        for aside in &m.asides {
            let own = swap.as_ref() == Some(aside);
            if let Some(db) = &db
                && backup::recover_interrupted(db, aside, own)?
            {
                println!("put the old database's files back in place (the swap had not finished)");
            }
            if aside.exists() {
                swapped_before = true;
                replaced.push(format!("sqlite://{}", aside.display()));
            }
        }
        // There was no database to set aside: whatever is in its place now
        // is the backup that restore put there.
        if m.db_absent
            && let Some(p) = db.as_ref().filter(|p| p.exists())
        {
            // Unless it is not: a database made since (any command that
            // opens the configured URL makes an empty one) holds fewer
            // audit records than the backup did.
            let held = backup::audit_leaf_count(p)
                .await
                .with_context(|| format!("reading {}", p.display()))?;
            if m.backup_leaves.is_some_and(|n| held < n) {
                bail!(
                    "{} is not the backup the unfinished restore put there (it holds {held} audit \
                     records, the backup {}): move it aside and run `idvault restore --from FILE` \
                     again",
                    p.display(),
                    m.backup_leaves.unwrap_or_default()
                );
            }
            swapped_before = true;
        }
        // A `--from` restore (it named where the old database would go)
        // that never swapped: nothing to finish. (A restore without
        // `--from`, PostgreSQL's, names none and is simply run again.)
        if !m.asides.is_empty() && !swapped_before && args.from.is_none() {
            std::fs::remove_file(&marker)?;
            bail!(
                "the last restore stopped before it put the backup in place (the database is as \
                 it was): run `idvault restore --from FILE` again"
            );
        }
    }
    if args.from.is_some()
        && let Some(p) = db.as_ref().filter(|p| p.exists())
    {
        replaced.push(format!("sqlite://{}", p.display()));
    }
    replaced.sort();
    replaced.dedup();

    // Deletions after the backup are the ones to check closely.
    let backup_time = match &backup_info {
        Some(i) => i.newest_leaf_ms,
        None => {
            let store = idvault_server::store::Store::connect(&url)
                .await
                .context("opening the restored database")?;
            let t = store.newest_leaf_ms().await;
            store.close().await;
            t?
        }
    };

    // Who was deleted: every journal, and the audit log of each database
    // being replaced. Read before anything is moved.
    let mut journals = JournalRead::default();
    let mut sources = Vec::new();
    let mut unverified = Vec::new();
    if let Some(p) = cfg.shred_log_path().filter(|p| !p.exists()) {
        // Made at the first deletion, so its absence may be right; but it
        // may also be a volume that is not mounted.
        eprintln!(
            "warning: the configured deletion journal {} does not exist: either this vault never \
             deleted anyone, or the journal's storage is missing (is it mounted?); deletions it \
             would record are then known only from a replaced database",
            p.display()
        );
    }
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
    // Journal lines after the backup, not yet found in a replaced log.
    let mut unseen: Vec<&(i64, [u8; 16], [u8; 32])> = journals
        .leaves
        .iter()
        .filter(|(t, _, _)| *t > backup_time)
        .collect();
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
        let verdict = idvault_server::service::audit::verify_audit_log(
            &store,
            &verifiers,
            &origin,
            Some(&keys),
        )
        .await;
        let rec = recorded_deletions(&store, &keys).await;
        // Each journal line after the backup must be in a replaced log: a
        // log whose newest records were cut off still verifies on its own.
        let mut still = Vec::with_capacity(unseen.len());
        for l in unseen {
            let found = store.leaf_by_request(&l.1).await?.is_some_and(|row| {
                idvault_core::crypto::ct_eq(
                    &idvault_core::tlog::merkle::leaf_hash(&row.bytes),
                    &l.2,
                )
            });
            if !found {
                still.push(l);
            }
        }
        unseen = still;
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
    // Lines under a retired key version are applied only where another
    // record (a line under a live version, a verified replaced log) says
    // the same person was deleted: the version's journal key stays in the
    // key file so its lines verify, but anyone holding a copy of that
    // retired root key could also write new ones. Uncorroborated lines
    // about people the restored database does not hold change nothing;
    // about people it holds, they could destroy them, so they stop the
    // restore like any other record that does not verify.
    let mut doubtful: Vec<SubjectId> = journals
        .retired
        .iter()
        .map(|e| e.subject)
        .filter(|s| !deleted.contains_key(s))
        .collect();
    doubtful.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    doubtful.dedup();
    if !doubtful.is_empty() {
        let present = match &args.from {
            Some(from) => backup::subjects_present(from, &doubtful).await?,
            None => {
                let store = idvault_server::store::Store::connect(&url)
                    .await
                    .context("opening the restored database")?;
                let mut present = Vec::new();
                for id in &doubtful {
                    match store.subject_row(id).await {
                        Ok(Some(_)) => present.push(*id),
                        Ok(None) => {}
                        Err(e) => {
                            store.close().await;
                            return Err(e.into());
                        }
                    }
                }
                store.close().await;
                present
            }
        };
        if !present.is_empty() {
            unverified.push(format!(
                "{} deletion journal lines under a retired root key version name people the \
                 restored database holds, and no other record (a line under a live version, a \
                 replaced database's audit log) says they were deleted: a copy of the retired key \
                 could have written them; they are not applied",
                present.len()
            ));
        }
    }
    if !replaced.is_empty() && !unseen.is_empty() {
        unverified.push(format!(
            "{} deletions the journals record after the backup are missing from the replaced \
             database's audit log (its newest records were removed?); they are applied again \
             from the journals",
            unseen.len()
        ));
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

    if let (Some(from), Some(info)) = (&args.from, &backup_info) {
        let db = db.as_ref().with_context(|| {
            "--from restores a SQLite backup; for PostgreSQL use pg_restore, then `idvault restore` without --from (docs/operations.md)"
        })?;
        let now_ms = idvault_core::Clock::now_millis(&idvault_server::clock::SystemClock);
        let aside = backup::aside_name(db, now_ms);
        // Before anything moves: where the old database will be, so a
        // restore that stops midway is finished from it.
        let mut asides: Vec<PathBuf> = replaced
            .iter()
            .filter_map(|u| backup::sqlite_path(u))
            .map(|p| resolved_path(&p))
            .filter(|p| p != db)
            .collect();
        asides.push(aside.clone());
        Marker {
            asides,
            swap: Some(aside.clone()),
            db_absent: !db.exists(),
            backup_leaves: Some(info.audit_leaves),
            target: Some(redact(&url)),
            target_path: target_path.clone(),
            journals: journal_paths.clone(),
            replaced: args.replaced_database.iter().map(|u| redact(u)).collect(),
        }
        .write(&marker)?;
        match backup::install(from, db, &aside).await {
            Ok(set_aside) => {
                println!(
                    "restored {} ({} subjects, {} audit leaves) to {}",
                    from.display(),
                    info.subjects,
                    info.audit_leaves,
                    db.display()
                );
                if set_aside {
                    println!(
                        "the replaced database is kept as {} (delete it once you no longer need it)",
                        aside.display()
                    );
                }
            }
            Err(e) => {
                // Rolled back: nothing is half done, no marker needed
                // (unless an earlier restore's still stands).
                if !aside.exists() && !swapped_before {
                    let _ = std::fs::remove_file(&marker);
                }
                return Err(e.into());
            }
        }
    } else if !marker.exists() {
        Marker {
            target: Some(redact(&url)),
            target_path: target_path.clone(),
            journals: journal_paths.clone(),
            replaced: args.replaced_database.iter().map(|u| redact(u)).collect(),
            ..Marker::default()
        }
        .write(&marker)?;
    }

    // Shred again, in the restored database, everyone deleted.
    let vault = idvault_server::app::open_vault_restoring(&cfg, &url).await?;
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
        // The operator's own tool: an integrity failure names its cause.
        let e = match &e {
            idvault_server::service::VaultError::Integrity(why) => format!("{e}: {why}"),
            _ => e.to_string(),
        };
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

/// What the restore-pending marker records: the set-aside database files
/// a rerun reads, and what the restore ran on and read, which a rerun must
/// name again. Only file paths and database URLs without their password
/// ([`redact`]).
#[derive(Debug, Default)]
struct Marker {
    /// Databases set aside (`set-aside`).
    asides: Vec<PathBuf>,
    /// Where that restore moved the current database (`swap-aside`).
    swap: Option<PathBuf>,
    /// There was no database to move aside (`db-absent`): a database in
    /// its place is the backup.
    db_absent: bool,
    /// The backup's audit leaves (`backup-leaves`): a database put in
    /// place by the restore holds at least as many.
    backup_leaves: Option<u64>,
    /// The database restored (`target`).
    target: Option<String>,
    /// A SQLite database restored, by its resolved path (`target-path`):
    /// the URL's text alone names another file when the path in it is
    /// relative and the rerun starts elsewhere.
    target_path: Option<PathBuf>,
    /// The deletion journals read (`shred-log`).
    journals: Vec<PathBuf>,
    /// The replaced databases named (`replaced-database`).
    replaced: Vec<String>,
}

impl Marker {
    /// Reads a marker; lines it does not know (and those of markers
    /// written before a line existed) are skipped.
    fn parse(text: &str) -> Self {
        let mut m = Self::default();
        for l in text.lines() {
            if let Some(p) = l.strip_prefix("set-aside ") {
                m.asides.push(PathBuf::from(p));
            } else if let Some(p) = l.strip_prefix("swap-aside ") {
                m.swap = Some(PathBuf::from(p));
            } else if l == "db-absent" {
                m.db_absent = true;
            } else if let Some(n) = l.strip_prefix("backup-leaves ") {
                m.backup_leaves = n.parse().ok();
            } else if let Some(t) = l.strip_prefix("target ") {
                m.target = Some(t.to_owned());
            } else if let Some(p) = l.strip_prefix("target-path ") {
                m.target_path = Some(PathBuf::from(p));
            } else if let Some(p) = l.strip_prefix("shred-log ") {
                m.journals.push(PathBuf::from(p));
            } else if let Some(u) = l.strip_prefix("replaced-database ") {
                m.replaced.push(u.to_owned());
            }
        }
        m
    }

    /// Refuses a rerun on another database than the one restored, or
    /// without a journal or replaced database the restore read.
    fn check_rerun(
        &self,
        target: &str,
        target_path: Option<&std::path::Path>,
        journals: &[PathBuf],
        replaced: &[String],
    ) -> anyhow::Result<()> {
        // A SQLite file by where it is; a marker from before `target-path`
        // (or a server database) by the URL's text.
        if let (Some(was), Some(now)) = (&self.target_path, target_path) {
            if was != now {
                bail!(
                    "the unfinished restore was of the database {}, not {}: finish it with \
                     --database-url naming that database",
                    was.display(),
                    now.display()
                );
            }
        } else if let Some(t) = &self.target
            && t != target
        {
            bail!(
                "the unfinished restore was of the database {t}, not {target}: finish it with \
                 --database-url naming that database"
            );
        }
        for j in &self.journals {
            if !journals.contains(j) {
                bail!(
                    "the unfinished restore read the deletion journal {}, which this run does not: \
                     pass it again with --shred-log (the people it records as deleted would \
                     otherwise come back)",
                    j.display()
                );
            }
        }
        let named: Vec<String> = replaced.iter().map(|u| redact(u)).collect();
        for r in &self.replaced {
            if !named.contains(r) {
                bail!(
                    "the unfinished restore read the deletions of the replaced database {r}: pass \
                     it again with --replaced-database"
                );
            }
        }
        Ok(())
    }

    /// Writes the marker durably and atomically (mode 0600).
    fn write(&self, path: &std::path::Path) -> anyhow::Result<()> {
        use std::io::Write;
        let mut text = String::from(
            "# An `idvault restore` has not finished: the vault refuses to start until\n\
             # `idvault restore` (without --from) ends, on the same database and with the\n\
             # same journals and replaced databases. The old database it set aside:\n",
        );
        for a in &self.asides {
            text.push_str(&format!("set-aside {}\n", a.display()));
        }
        if let Some(a) = &self.swap {
            text.push_str(&format!("swap-aside {}\n", a.display()));
        }
        if self.db_absent {
            text.push_str("db-absent\n");
        }
        if let Some(n) = self.backup_leaves {
            text.push_str(&format!("backup-leaves {n}\n"));
        }
        if let Some(t) = &self.target {
            text.push_str(&format!("target {t}\n"));
        }
        if let Some(p) = &self.target_path {
            text.push_str(&format!("target-path {}\n", p.display()));
        }
        for j in &self.journals {
            text.push_str(&format!("shred-log {}\n", j.display()));
        }
        for r in &self.replaced {
            text.push_str(&format!("replaced-database {r}\n"));
        }
        let tmp = path.with_extension("tmp");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// `path` made absolute with its links resolved: the file's own links
/// followed even to a target that does not exist (as SQLite names the file
/// it opens, and as a restore interrupted after it set the database aside
/// leaves a link), then its directory's. Every path the restore works on
/// and writes into its marker is one of these, so a rerun started in
/// another directory, or naming the data directory another way, finds the
/// same files and is compared by them.
fn resolved_path(path: &std::path::Path) -> PathBuf {
    let mut p = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    // Bounded, as the kernel bounds a chain of links (a loop stops here).
    for _ in 0..40 {
        let is_link = std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink());
        let Some(target) = is_link.then(|| std::fs::read_link(&p).ok()).flatten() else {
            break;
        };
        p = match p.parent() {
            Some(dir) => dir.join(target),
            None => target,
        };
    }
    match (p.parent(), p.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir)
            .map(|d| d.join(name))
            .unwrap_or(p),
        _ => p,
    }
}

/// A database URL without its password.
fn redact(url: &str) -> String {
    super::serve::redact_url(url)
}

#[cfg(test)]
mod tests {
    use super::resolved_path;

    /// A database named through a link resolves to the link's target,
    /// whether the target exists (a database in place) or not (one a
    /// restore set aside before it was interrupted), and the same through
    /// a relative spelling of the directory.
    #[test]
    fn paths_resolve_through_links_even_dangling() {
        let tmp = std::env::temp_dir().join(format!("idvault-resolve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("disk")).unwrap();
        let real = std::fs::canonicalize(tmp.join("disk"))
            .unwrap()
            .join("real.db");
        let link = tmp.join("vault.db");
        std::os::unix::fs::symlink("disk/real.db", &link).unwrap();
        assert_eq!(resolved_path(&link), real, "dangling");
        std::fs::write(&real, b"").unwrap();
        assert_eq!(resolved_path(&link), real, "in place");
        let dotted = tmp.join("disk/../vault.db");
        assert_eq!(resolved_path(&dotted), real);
        let missing = tmp.join("disk/new.db");
        assert_eq!(
            resolved_path(&missing),
            real.with_file_name("new.db"),
            "a file not made yet"
        );
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink("vault.db", &link).unwrap();
        assert_eq!(
            resolved_path(&link),
            std::fs::canonicalize(&tmp).unwrap().join("vault.db"),
            "a loop ends"
        );
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
