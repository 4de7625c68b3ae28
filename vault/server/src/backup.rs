//! Backups of the SQLite database and putting one back (docs/operations.md,
//! "Backup and restore"). The shredding again of people deleted after the
//! backup is [`crate::service::restore`]'s; PostgreSQL is backed up and
//! restored with its own tools (`pg_dump`, `pg_restore`), then shredded
//! again the same way.
//!
//! The snapshot is SQLite's `VACUUM INTO`: it runs in one read
//! transaction, so it is a consistent snapshot taken while the vault keeps
//! serving (WAL mode: writers go on), the same guarantee as the online
//! backup API, without the `unsafe` FFI that API needs from Rust (this
//! workspace forbids `unsafe`). It also writes only live rows: the pages
//! freed by crypto-shredding (already overwritten with `secure_delete`)
//! are not carried into the backup.
//!
//! The root key is never in a backup: it is not in the database.

use std::path::{Path, PathBuf};

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

/// Why a backup or a restore's file step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The database URL is not a SQLite file.
    #[error(
        "`idvault backup` snapshots SQLite; back PostgreSQL up with pg_dump or pg_basebackup (docs/operations.md, \"Backup and restore\")"
    )]
    NotSqlite,
    /// The output exists already.
    #[error("{0} exists already; choose a new file (a backup never overwrites one)")]
    Exists(PathBuf),
    /// A file is not a usable idvault SQLite database.
    #[error("{path} is not an intact idvault database: {why}")]
    NotABackup {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// SQLite refused.
    #[error("SQLite: {0}")]
    Sqlite(#[from] sqlx::Error),
    /// A file step failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What a snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Subjects in it.
    pub subjects: u64,
    /// Audit leaves in it (sequenced or not).
    pub audit_leaves: u64,
    /// Size of its newest checkpoint.
    pub tree_size: u64,
    /// Time of its newest audit leaf (unix ms; 0 when none): deletions
    /// after it are the ones a restore of it must apply again.
    pub newest_leaf_ms: i64,
}

/// The file path of a `sqlite:` URL; `None` for other URLs or an
/// in-memory database.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackupError {
    let path = path.to_owned();
    move |source| BackupError::Io { what, path, source }
}

/// Opens the SQLite file at `path` (never creating it): built from the
/// path itself, not a URL, so no character of the path is read as URL
/// syntax.
async fn open(path: &Path, immutable: bool) -> Result<SqliteConnection, BackupError> {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        // A file nothing else writes (a backup) is read without creating
        // `-wal` or `-shm` files beside it.
        .immutable(immutable)
        .create_if_missing(false)
        // Wait for a writer's checkpoint rather than fail at once.
        .busy_timeout(std::time::Duration::from_secs(10));
    Ok(SqliteConnection::connect_with(&opts).await?)
}

/// A unique temporary name beside `path`.
fn temp_beside(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{tag}-{}", uuid::Uuid::new_v4().simple()))
}

/// Removes copies of a backup [`install`] left beside `db` when it was
/// stopped (named by [`temp_beside`] with the tag `restoring`).
fn remove_stale_copies(db: &Path) {
    let (Some(dir), Some(name)) = (db.parent(), db.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!(".{}.restoring-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn sync_dir(path: &Path) -> Result<(), BackupError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing the directory of", path))
}

/// Takes a consistent snapshot of the SQLite database at `db_url` into
/// `out` (a new file, mode 0600), while the vault may be serving; the
/// snapshot is checked before it gets its name.
pub async fn snapshot(db_url: &str, out: &Path) -> Result<SnapshotInfo, BackupError> {
    let db = sqlite_path(db_url).ok_or(BackupError::NotSqlite)?;
    if !db.exists() {
        return Err(BackupError::NotABackup {
            path: db,
            why: "no such database".into(),
        });
    }
    if out.exists() {
        return Err(BackupError::Exists(out.to_owned()));
    }
    let tmp = temp_beside(out, "partial");
    let result = async {
        // Made empty with mode 0600 first (VACUUM INTO fills an empty
        // file), so the snapshot is never readable by others, not even
        // while it is written.
        create_private(&tmp)?;
        let mut conn = open(&db, false).await?;
        sqlx::query("VACUUM INTO $1")
            .bind(tmp.to_string_lossy().into_owned())
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io("syncing", &tmp))?;
        let info = check(&tmp).await?;
        // Refuses to replace a file that appeared meanwhile.
        std::fs::hard_link(&tmp, out).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                BackupError::Exists(out.to_owned())
            } else {
                io("naming the backup", out)(e)
            }
        })?;
        sync_dir(out)?;
        Ok(info)
    }
    .await;
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Creates `path` new and empty, readable by its owner only.
fn create_private(path: &Path) -> Result<std::fs::File, BackupError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path).map_err(io("creating", path))
}

/// Checks that `path` is an intact idvault SQLite database and says what
/// it holds.
pub async fn check(path: &Path) -> Result<SnapshotInfo, BackupError> {
    let not = |why: String| BackupError::NotABackup {
        path: path.to_owned(),
        why,
    };
    if !path.is_file() {
        return Err(not("no such file".into()));
    }
    let mut conn = open(path, true)
        .await
        .map_err(|e| not(format!("does not open ({e})")))?;

    let verdict: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| not(format!("integrity check failed ({e})")))?;
    if verdict != "ok" {
        return Err(not("SQLite's integrity check failed".into()));
    }
    let subjects = count(&mut conn, "SELECT COUNT(*) FROM subjects")
        .await
        .map_err(|_| not("it has no idvault tables".into()))?;
    let audit_leaves = count(&mut conn, "SELECT COUNT(*) FROM audit_log")
        .await
        .map_err(|_| not("it has no audit log".into()))?;
    let tree_size = count(
        &mut conn,
        "SELECT COALESCE(MAX(tree_size), 0) FROM audit_checkpoints",
    )
    .await
    .map_err(|_| not("it has no audit checkpoints table".into()))?;
    let newest_leaf_ms: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(time_ms), 0) FROM audit_log")
        .fetch_one(&mut conn)
        .await
        .map_err(|_| not("it has no audit log".into()))?;
    conn.close().await?;
    Ok(SnapshotInfo {
        subjects,
        audit_leaves,
        tree_size,
        newest_leaf_ms,
    })
}

/// The signed note of the newest checkpoint in the SQLite backup at
/// `path`, if it holds one.
pub async fn newest_checkpoint_note(path: &Path) -> Result<Option<String>, BackupError> {
    let mut conn = open(path, true).await?;
    let note: Option<String> =
        sqlx::query_scalar("SELECT note FROM audit_checkpoints ORDER BY tree_size DESC LIMIT 1")
            .fetch_optional(&mut conn)
            .await?;
    conn.close().await?;
    Ok(note)
}

/// How many audit leaves the SQLite database at `path` holds, its WAL
/// included (0 if it has no audit log table; a database that cannot be
/// read is an error, not "none").
pub async fn audit_leaf_count(path: &Path) -> Result<u64, BackupError> {
    let mut conn = open(path, false).await?;
    let has_log: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_log'",
    )
    .fetch_optional(&mut conn)
    .await?;
    let n = match has_log {
        Some(_) => count(&mut conn, "SELECT COUNT(*) FROM audit_log").await?,
        None => 0,
    };
    conn.close().await?;
    Ok(n)
}

/// Which of `ids` the SQLite backup at `path` holds (read-only).
pub async fn subjects_present(
    path: &Path,
    ids: &[idvault_core::subject::SubjectId],
) -> Result<Vec<idvault_core::subject::SubjectId>, BackupError> {
    let mut conn = open(path, true).await?;
    let mut out = Vec::new();
    for id in ids {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM subjects WHERE subject_id = ?")
            .bind(id.as_bytes().to_vec())
            .fetch_optional(&mut conn)
            .await?;
        if found.is_some() {
            out.push(*id);
        }
    }
    conn.close().await?;
    Ok(out)
}

async fn count(conn: &mut SqliteConnection, sql: &'static str) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(sql).fetch_one(conn).await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The name the database at `db` is set aside under by a restore:
/// `<db>.replaced-<now_ms / 1000>-<random>` (chosen by the caller before
/// anything moves, so an interrupted restore can name it).
pub fn aside_name(db: &Path, now_ms: i64) -> PathBuf {
    let name = db
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tag = uuid::Uuid::new_v4().simple().to_string();
    db.with_file_name(format!(
        "{name}.replaced-{}-{}",
        now_ms / 1000,
        tag.get(..8).unwrap_or_default()
    ))
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", p.display()))
}

/// Puts the checked backup `backup` in place of the SQLite database at
/// `db`; the database's files (with its `-wal` and `-shm`) are kept aside
/// under `aside` ([`aside_name`]), never deleted (they may hold data
/// written after the backup). If a step fails, what was moved is moved
/// back. Returns whether anything was set aside. The vault must be
/// stopped (see [`DataDirLock`]).
pub async fn install(backup: &Path, db: &Path, aside: &Path) -> Result<bool, BackupError> {
    check(backup).await?;
    let tmp = temp_beside(db, "restoring");
    let result = (|| {
        let mut f = create_private(&tmp)?;
        let mut src = std::fs::File::open(backup).map_err(io("reading", backup))?;
        std::io::copy(&mut src, &mut f).map_err(io("copying the backup to", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        drop(f);
        // The WAL and shared-memory files go first: a restored file must
        // never meet the old database's WAL under its name.
        let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
        let mut step = || -> Result<(), BackupError> {
            for suffix in ["-wal", "-shm", ""] {
                let from = with_suffix(db, suffix);
                let to = with_suffix(aside, suffix);
                if from.exists() {
                    std::fs::rename(&from, &to).map_err(io("moving aside", &from))?;
                    moved.push((from, to));
                }
            }
            std::fs::rename(&tmp, db).map_err(io("putting the backup in place at", db))?;
            sync_dir(db)
        };
        match step() {
            Ok(()) => Ok(!moved.is_empty()),
            Err(e) => {
                for (from, to) in moved.iter().rev() {
                    let _ = std::fs::rename(to, from);
                }
                let _ = sync_dir(db);
                Err(e)
            }
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

/// After a restore stopped midway through [`install`]'s swap: puts the old
/// database's files back where they were, so it is read with its newest
/// transactions and the restore can be run again. Two places it can have
/// stopped:
///
/// - between moving the `-wal` (or `-shm`) aside and moving the main
///   file: they go back beside it;
/// - between moving the main file aside and putting the backup in place
///   (only when `own`: `aside` is where that restore moved the database at
///   `db`, not a database the operator named): there is no database at
///   `db` (and opening one there would create an empty one, which a
///   restore rerun would then finish on), so the old one goes back, main
///   file first, and the unfinished copy of the backup is removed.
///
/// Returns whether it moved anything.
pub fn recover_interrupted(db: &Path, aside: &Path, own: bool) -> Result<bool, BackupError> {
    if own && aside.exists() && !db.exists() {
        for suffix in ["", "-wal", "-shm"] {
            let (stray, home) = (with_suffix(aside, suffix), with_suffix(db, suffix));
            if stray.exists() && !home.exists() {
                std::fs::rename(&stray, &home).map_err(io("moving back", &stray))?;
            }
        }
        sync_dir(db)?;
        remove_stale_copies(db);
        return Ok(true);
    }
    if aside.exists() || !db.exists() {
        return Ok(false);
    }
    let mut moved = false;
    for suffix in ["-wal", "-shm"] {
        let (stray, home) = (with_suffix(aside, suffix), with_suffix(db, suffix));
        if stray.exists() && !home.exists() {
            std::fs::rename(&stray, &home).map_err(io("moving back", &stray))?;
            moved = true;
        }
    }
    if moved {
        sync_dir(db)?;
    }
    Ok(moved)
}

/// The data directory's lock: every serving process holds it shared, a
/// restore exclusively, so a restore never swaps files under a running
/// vault and no vault starts during a restore. (Several processes on one
/// machine share one data directory's lock; replicas elsewhere are the
/// operator's to stop, docs/operations.md.)
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "idvault.lock";

impl DataDirLock {
    /// Opens (or makes) the lock file. One this process may not write (made
    /// by another user, e.g. a backup run as root) is opened read-only:
    /// `flock` locks through any descriptor, so the lock still holds.
    fn open(dir: &Path) -> Result<std::fs::File, BackupError> {
        let path = dir.join(LOCK_FILE);
        match std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        {
            Ok(f) => Ok(f),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
                ) && path.is_file() =>
            {
                std::fs::File::open(&path).map_err(io("opening the lock file", &path))
            }
            Err(e) => Err(io("opening the lock file", &path)(e)),
        }
    }

    /// Taken (shared) by a serving process and by the maintenance
    /// commands; refused while a restore runs, and when the lock file can
    /// be neither opened nor made (a restore could not tell this process
    /// runs). On a file system without file locks the process goes on,
    /// with a warning.
    pub fn shared(dir: &Path) -> Result<Option<Self>, String> {
        let f = Self::open(dir).map_err(|e| {
            format!(
                "{e}: without it a restore could not tell this process runs; create {} (an \
                 empty file, in the config file's directory; on a read-only mount, put it in \
                 what is mounted) readable by this user",
                dir.join(LOCK_FILE).display()
            )
        })?;
        match f.try_lock_shared() {
            Ok(()) => Ok(Some(Self { _file: f })),
            Err(std::fs::TryLockError::WouldBlock) => Err(format!(
                "a restore holds {}: wait for it to finish",
                dir.join(LOCK_FILE).display()
            )),
            Err(std::fs::TryLockError::Error(e)) => {
                tracing::warn!(error = %e, "the data directory lock is not supported here");
                Ok(None)
            }
        }
    }

    /// Taken by a restore; refused while a vault serves from `dir`.
    pub fn exclusive(dir: &Path) -> Result<Self, String> {
        let f = Self::open(dir).map_err(|e| e.to_string())?;
        match f.try_lock() {
            Ok(()) => Ok(Self { _file: f }),
            Err(std::fs::TryLockError::WouldBlock) => Err(format!(
                "a vault process (or a maintenance command) uses {} (it holds {}): stop every vault process first",
                dir.display(),
                LOCK_FILE
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(format!(
                "cannot lock {}: {e}",
                dir.join(LOCK_FILE).display()
            )),
        }
    }
}

/// Left in the data directory while a restore is unfinished: the vault
/// refuses to start (the restored data may still hold people deleted after
/// the backup) and the next `idvault restore` reads the sources it names.
pub const RESTORE_PENDING: &str = "restore-pending";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn snapshot_install_and_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("idvault.db");
        let url = format!("sqlite://{}?mode=rwc", db.display());
        let store = crate::store::Store::connect(&url).await.unwrap();
        let out = dir.path().join("b.db");
        let info = snapshot(&url, &out).await.unwrap();
        assert_eq!(info.subjects, 0);
        // Never over an existing file; private from the start.
        assert!(matches!(
            snapshot(&url, &out).await,
            Err(BackupError::Exists(_))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&out).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0);
        }
        // A file that is no database is refused before anything moves.
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, b"not a database").unwrap();
        let aside = aside_name(&db, 1_700_000_000_000);
        assert!(install(&junk, &db, &aside).await.is_err());
        assert!(db.exists() && !aside.exists());
        store.close().await;
        // The swap: the old files aside, the backup in place.
        assert!(install(&out, &db, &aside).await.unwrap());
        assert!(aside.exists() && db.exists());
        assert!(!with_suffix(&db, "-wal").exists());
        // A restore stopped after moving only the WAL aside: it goes back.
        let other = aside_name(&db, 1_700_000_000_000);
        assert_ne!(other, aside);
        std::fs::write(with_suffix(&other, "-wal"), b"wal").unwrap();
        assert!(recover_interrupted(&db, &other, true).unwrap());
        assert!(with_suffix(&db, "-wal").exists());
        assert!(!recover_interrupted(&db, &other, true).unwrap());
        // A restore stopped after moving the main file aside too, before
        // the backup was in place (its copy left beside): the old files go
        // back, the copy goes.
        let third = aside_name(&db, 1_700_000_000_001);
        let before = std::fs::read(&db).unwrap();
        for suffix in ["-wal", ""] {
            std::fs::rename(with_suffix(&db, suffix), with_suffix(&third, suffix)).unwrap();
        }
        let copy = temp_beside(&db, "restoring");
        std::fs::write(&copy, b"half a copy").unwrap();
        // A database the restore did not set aside itself is never moved in.
        assert!(!recover_interrupted(&db, &third, false).unwrap());
        assert!(!db.exists());
        assert!(recover_interrupted(&db, &third, true).unwrap());
        assert_eq!(std::fs::read(&db).unwrap(), before);
        assert!(with_suffix(&db, "-wal").exists());
        assert!(!third.exists() && !copy.exists());
        assert!(!recover_interrupted(&db, &third, true).unwrap());
    }

    #[test]
    fn sqlite_urls() {
        assert_eq!(
            sqlite_path("sqlite:///data/idvault.db?mode=rwc"),
            Some(PathBuf::from("/data/idvault.db"))
        );
        assert_eq!(sqlite_path("sqlite:x.db"), Some(PathBuf::from("x.db")));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://u@h/db"), None);
    }
}
