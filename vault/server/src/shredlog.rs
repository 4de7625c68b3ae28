//! The deletion journal's file: appended after every committed deletion,
//! read by `idvault restore` (the line format and its MAC are
//! [`idvault_core::shred`]).
//!
//! Appends are serialised in this process, and across processes by an
//! exclusive lock on the file, and each is on disk (`fsync`) before the
//! deletion is answered. Several processes (PostgreSQL replicas) each keep
//! their own file or share one per host; a restore reads them all.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};

use idvault_core::keys::KeyHierarchy;
use idvault_core::shred::{MAX_LINE, ShredEntry};
use idvault_core::subject::SubjectId;

/// An append-only deletion journal file (clones share the file and its
/// append lock).
#[derive(Debug, Clone)]
pub struct ShredLog {
    path: PathBuf,
    lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl ShredLog {
    /// The journal at `path` (created on the first deletion, mode 0600).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            lock: std::sync::Arc::default(),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `line` and waits until it is on disk.
    pub async fn append(&self, line: String) -> std::io::Result<()> {
        let _one_at_a_time = self.lock.lock().await;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || append_blocking(&path, line.as_bytes()))
            .await
            .map_err(std::io::Error::other)?
    }
}

fn append_blocking(path: &Path, line: &[u8]) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let created = !path.exists();
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).read(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    // Exclusive for the whole check-and-append, across processes: several
    // vault processes on one host may share one journal, and one that
    // read the file while another's line was half written would take that
    // line for a torn one and cut it off after it was acknowledged.
    // (Released when `f` is closed.)
    lock_for_append(&f, path)?;
    // A crash during an earlier append may have left a line cut short (it
    // was never on disk whole, so its deletion was not yet answered: the
    // database's audit log holds it). Cut it off, so this line starts
    // clean and the journal stays all whole lines.
    let len = f.metadata()?.len();
    if len > 0 {
        f.seek(SeekFrom::Start(len - 1))?;
        let mut last = [0u8; 1];
        f.read_exact(&mut last)?;
        if last[0] != b'\n' {
            // Back to just after the last newline, however far: a tail
            // longer than a line (damage, not a torn append) must not be
            // left for this line to be glued onto and lost with it.
            let mut end = len;
            let mut keep = 0;
            let mut chunk = vec![0u8; 4096];
            while end > 0 {
                let start = end.saturating_sub(chunk.len() as u64);
                let part = chunk
                    .get_mut(..usize::try_from(end - start).unwrap_or(0))
                    .unwrap_or_default();
                f.seek(SeekFrom::Start(start))?;
                f.read_exact(part)?;
                if let Some(i) = part.iter().rposition(|b| *b == b'\n') {
                    keep = start + u64::try_from(i).unwrap_or(0) + 1;
                    break;
                }
                end = start;
            }
            f.set_len(keep)?;
        }
    }
    f.write_all(line)?;
    f.sync_data()?;
    if created {
        // The new file's directory entry must survive a crash too.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(())
}

/// How long an append waits for another process's append to end.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Takes the journal's exclusive lock, waiting at most [`LOCK_WAIT`] (a
/// holder that hangs must not stop every deletion's answer forever). A
/// file system without locks (some network mounts) gets the append
/// unlocked, as before locks were taken, with a warning: a journal that
/// refused every append would quietly lose every deletion's line.
fn lock_for_append(f: &std::fs::File, path: &Path) -> std::io::Result<()> {
    // Counted in tries (the workspace reads no clock outside a `Clock`).
    const TRY_EVERY: std::time::Duration = std::time::Duration::from_millis(5);
    let mut tries = LOCK_WAIT.as_millis() / TRY_EVERY.as_millis();
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if tries > 0 => {
                tries -= 1;
                std::thread::sleep(TRY_EVERY);
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "another process held the deletion journal's lock for 10 s",
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                tracing::warn!(
                    journal = %path.display(),
                    error = %e,
                    "the deletion journal's file system takes no locks: appending without one (give each process its own journal)"
                );
                return Ok(());
            }
        }
    }
}

/// What reading journals found.
#[derive(Debug, Default)]
pub struct JournalRead {
    /// Each deleted subject once, with its latest deletion time.
    pub deleted: BTreeMap<SubjectId, i64>,
    /// Every accepted line's deletion time, request id and audit leaf
    /// hash (a restore checks the replaced database's log holds them).
    pub leaves: Vec<(i64, [u8; 16], [u8; 32])>,
    /// Lines accepted.
    pub lines: u64,
    /// A last line cut short (a crash during an append): skipped.
    pub torn_tail: u64,
    /// Lines refused, with why (file and line number; never the line).
    pub refused: Vec<String>,
    /// Accepted lines MACed under a retired root key version, kept apart
    /// (not in `deleted` or `leaves`): a retired version's journal key
    /// stays in the key file so its lines verify, but a copy of that
    /// version's root key left somewhere could also write new ones, so a
    /// restore applies them only where another record agrees.
    pub retired: Vec<ShredEntry>,
}

/// Reads journal `path` into `into`, authenticating every line with
/// `keys`. A file that cannot be read is an error; a refused line is
/// recorded in [`JournalRead::refused`] and skipped.
pub fn read_journal(
    path: &Path,
    keys: &KeyHierarchy,
    into: &mut JournalRead,
) -> std::io::Result<()> {
    let mut r = std::io::BufReader::new(std::fs::File::open(path)?);
    read_journal_from(&mut r, &path.display().to_string(), keys, into)
}

/// Reads one journal's bytes from `r` into `into`, as [`read_journal`]
/// does; `name` says where a refused line was in the report.
pub fn read_journal_from(
    r: &mut impl BufRead,
    name: &str,
    keys: &KeyHierarchy,
    into: &mut JournalRead,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(MAX_LINE + 1);
    let mut n = 0u64;
    let live = keys.versions();
    loop {
        buf.clear();
        // One line at most MAX_LINE + 1 bytes: a longer one is refused
        // without being held in memory.
        let read = Read::take(&mut *r, u64::try_from(MAX_LINE).unwrap_or(u64::MAX) + 1)
            .read_until(b'\n', &mut buf)?;
        if read == 0 {
            return Ok(());
        }
        n += 1;
        if buf.last() != Some(&b'\n') {
            if read > MAX_LINE {
                into.refused.push(format!("{name}:{n}: line too long"));
                skip_line(r)?;
                continue;
            }
            // The end of the file without a newline: a torn last append.
            into.torn_tail += 1;
            return Ok(());
        }
        buf.pop();
        let Ok(line) = std::str::from_utf8(&buf) else {
            into.refused.push(format!("{name}:{n}: not text"));
            continue;
        };
        match ShredEntry::from_line_versioned(line, keys) {
            Ok((e, version)) if !live.contains(&version) => {
                into.lines += 1;
                into.retired.push(e);
            }
            Ok((e, _)) => {
                into.lines += 1;
                into.leaves
                    .push((e.deleted_at_ms, e.request_id, e.audit_leaf));
                let t = into.deleted.entry(e.subject).or_insert(e.deleted_at_ms);
                *t = (*t).max(e.deleted_at_ms);
            }
            // Never the line itself in the report: only where and why.
            Err(e) => into.refused.push(format!("{name}:{n}: {e}")),
        }
    }
}

/// Skips to the next line in bounded steps (a long line is never held).
fn skip_line(r: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(());
        }
        if let Some(i) = chunk.iter().position(|b| *b == b'\n') {
            r.consume(i + 1);
            return Ok(());
        }
        let n = chunk.len();
        r.consume(n);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use idvault_core::keys::StaticKeyProvider;
    use idvault_core::secret::RootKey;

    fn keys() -> KeyHierarchy {
        let root = RootKey::from_bytes([0x22; 32], 1);
        KeyHierarchy::new(Box::new(StaticKeyProvider::new([root]).unwrap()))
    }

    #[tokio::test]
    async fn appended_lines_read_back_and_bad_ones_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shreds.log");
        let k = keys();
        let log = ShredLog::new(path.clone());
        for i in 0..3u8 {
            let e = ShredEntry {
                subject: SubjectId::from_bytes([i; 16]),
                deleted_at_ms: 1000 + i64::from(i),
                request_id: [i; 16],
                audit_leaf: [i; 32],
            };
            log.append(e.to_line(&k).unwrap()).await.unwrap();
        }
        // A forged line, a long line and a torn tail.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        writeln!(
            f,
            "shred1 09090909-0909-0909-0909-090909090909 1 {} {} 1 {}",
            "00".repeat(16),
            "00".repeat(32),
            "00".repeat(32)
        )
        .unwrap();
        writeln!(f, "{}", "x".repeat(20_000)).unwrap();
        write!(f, "shred1 0707").unwrap();
        drop(f);
        let mut read = JournalRead::default();
        read_journal(&path, &k, &mut read).unwrap();
        assert_eq!(read.lines, 3);
        assert_eq!(read.deleted.len(), 3);
        assert_eq!(read.torn_tail, 1);
        assert_eq!(read.refused.len(), 2, "{:?}", read.refused);
        // An append after a torn line (a crash mid-write) is kept whole.
        let e = ShredEntry {
            subject: SubjectId::from_bytes([9; 16]),
            deleted_at_ms: 5,
            request_id: [9; 16],
            audit_leaf: [9; 32],
        };
        log.append(e.to_line(&k).unwrap()).await.unwrap();
        let mut read = JournalRead::default();
        read_journal(&path, &k, &mut read).unwrap();
        assert_eq!(read.lines, 4);
        assert!(read.deleted.contains_key(&e.subject));
        assert_eq!(read.torn_tail, 0);
        // The torn line was cut off, not turned into a refused line.
        assert_eq!(read.refused.len(), 2, "{:?}", read.refused);
        assert!(read.refused[0].contains("MAC"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0);
        }
        // A damaged tail longer than any line, without a newline: cut back
        // to the last newline whole, so the next line is not glued on.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        write!(f, "{}", "z".repeat(10_000)).unwrap();
        drop(f);
        let e = ShredEntry {
            subject: SubjectId::from_bytes([8; 16]),
            deleted_at_ms: 6,
            request_id: [8; 16],
            audit_leaf: [8; 32],
        };
        log.append(e.to_line(&k).unwrap()).await.unwrap();
        let mut read = JournalRead::default();
        read_journal(&path, &k, &mut read).unwrap();
        assert_eq!(read.lines, 5);
        assert!(read.deleted.contains_key(&e.subject));
        assert_eq!(read.refused.len(), 2, "{:?}", read.refused);
    }
}
